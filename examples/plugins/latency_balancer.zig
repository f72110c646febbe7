//! Example user plugin: a latency-aware balancer for Portico, in Zig against the raw proxy-wasm ABI
//! (same behaviour as latency_balancer.c). Keeps an EWMA of each endpoint's reported latency_ms and picks the
//! lowest, except for `explore_percent` of requests that go to a random endpoint; retries avoid the endpoint
//! that just failed. Build: see README.md next to this file.
const std = @import("std");

extern "env" fn proxy_log(level: u32, msg: [*]const u8, len: usize) u32;
extern "env" fn proxy_get_current_time_nanoseconds(ret: *u64) u32;
extern "env" fn proxy_get_property(path: [*]const u8, path_len: usize, ret_data: *?[*]u8, ret_size: *usize) u32;
extern "env" fn proxy_set_property(path: [*]const u8, path_len: usize, value: [*]const u8, value_len: usize) u32;

// Host allocations (property values) only live for one callback: a bump arena reset at each callback entry.
var arena: [1 << 20]u8 align(16) = undefined;
var arena_used: usize = 0;

export fn proxy_on_memory_allocate(size: usize) ?[*]u8 {
    const start = std.mem.alignForward(usize, arena_used, 16);
    if (start + size > arena.len) return null;
    arena_used = start + size;
    return @ptrCast(&arena[start]);
}

export fn proxy_abi_version_0_2_1() void {}
export fn proxy_on_context_create(context_id: u32, parent_id: u32) void {
    _ = context_id;
    _ = parent_id;
}

var prng = std.Random.DefaultPrng.init(0x853c49e6748fea9b);
const explore_percent: u64 = 5;

export fn proxy_on_vm_start(root_id: u32, vm_config_size: usize) u32 {
    _ = root_id;
    _ = vm_config_size;
    var now: u64 = 0;
    _ = proxy_get_current_time_nanoseconds(&now);
    prng = std.Random.DefaultPrng.init(now);
    return 1;
}

const Slot = struct { key: u64 = 0, ewma: f64 = 0 };
var table: [1024]Slot = @splat(.{});

fn observe(addr: []const u8, latency_ms: f64) f64 {
    const k = std.hash.Fnv1a_64.hash(addr) | 1;
    var i: usize = 0;
    while (i < table.len) : (i += 1) {
        const s = &table[@intCast((k +% i) % table.len)];
        if (s.key == 0) {
            s.* = .{ .key = k, .ewma = latency_ms };
            return latency_ms;
        }
        if (s.key == k) {
            s.ewma = 0.7 * s.ewma + 0.3 * latency_ms;
            return s.ewma;
        }
    }
    return latency_ms;
}

fn getProperty(path: []const u8) ?[]const u8 {
    var ptr: ?[*]u8 = null;
    var len: usize = 0;
    if (proxy_get_property(path.ptr, path.len, &ptr, &len) != 0) return null;
    const p = ptr orelse return null;
    return p[0..len];
}

export fn portico_on_upstream_select(context_id: u32, attempt: i32) i32 {
    _ = context_id;
    arena_used = 0;
    const cands = getProperty("portico\x00upstream\x00candidates") orelse return 0;
    const failed: ?[]const u8 = if (attempt > 0) getProperty("portico\x00upstream\x00failed") else null;
    const rand = prng.random();
    const explore = rand.uintLessThan(u64, 100) < explore_percent;

    var best: ?[]const u8 = null;
    var best_score: f64 = 0;
    var nth: ?[]const u8 = null;
    var count: u64 = 0;
    var lines = std.mem.tokenizeScalar(u8, cands, '\n');
    while (lines.next()) |line| {
        var fields = std.mem.tokenizeScalar(u8, line, ' ');
        const addr = fields.next() orelse continue;
        var nums: [4]u64 = .{ 0, 0, 0, 0 };
        for (&nums) |*n| n.* = std.fmt.parseInt(u64, fields.next() orelse "0", 10) catch 0;
        if (nums[3] != 0) continue; // ejected
        if (failed) |f| if (std.mem.eql(u8, f, addr)) continue;
        const score = observe(addr, @floatFromInt(nums[2]));
        count += 1;
        if (rand.uintLessThan(u64, count) == 0) nth = addr; // reservoir sample for exploration
        if (best == null or score < best_score) {
            best = addr;
            best_score = score;
        }
    }
    if (best == null) best = failed; // the failed endpoint was the only candidate
    if (explore and nth != null) best = nth;
    if (best) |b| {
        const sel = "portico\x00upstream\x00selected";
        _ = proxy_set_property(sel, sel.len, b.ptr, b.len);
    }
    return 0;
}
