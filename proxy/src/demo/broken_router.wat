;; The demo's faulty release of the router: a proxy-wasm filter that answers every request under /checkout
;; with 503 (the route "went missing") and lets every other request through to the listener's upstream.
;; `portico demo` rolls it out beside the bundled router; its guards roll it back.
(module
  (import "env" "proxy_get_header_map_value" (func $get_header (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_send_local_response"
    (func $local_response (param i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  ;; A bump allocator for the host's copies, reset at each request (nothing outlives a callback).
  (global $heap (mut i32) (i32.const 65536))
  (data (i32.const 1024) ":path")
  (data (i32.const 1088) "/checkout")
  (data (i32.const 1152) "router v2: no route for /checkout\n")
  ;; Where the host writes the address and length of the :path value.
  (global $value_ptr i32 (i32.const 2048))
  (global $value_len i32 (i32.const 2052))
  (func (export "proxy_on_memory_allocate") (param $n i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (i32.and (i32.add (local.get $n) (i32.const 7)) (i32.const -8))))
    (local.get $p))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (local $path i32)
    (local $i i32)
    (global.set $heap (i32.const 65536))
    ;; Request headers (map 0), key ":path".
    (if (call $get_header (i32.const 0) (i32.const 1024) (i32.const 5) (global.get $value_ptr) (global.get $value_len))
      (then (return (i32.const 0))))
    (if (i32.lt_u (i32.load (global.get $value_len)) (i32.const 9))
      (then (return (i32.const 0))))
    (local.set $path (i32.load (global.get $value_ptr)))
    (block $differs
      (loop $next
        (br_if $differs
          (i32.ne (i32.load8_u (i32.add (local.get $path) (local.get $i)))
                  (i32.load8_u (i32.add (i32.const 1088) (local.get $i)))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br_if $next (i32.lt_u (local.get $i) (i32.const 9))))
      (drop (call $local_response (i32.const 503) (i32.const 0) (i32.const 0) (i32.const 1152) (i32.const 34)
        (i32.const 0) (i32.const 0) (i32.const -1)))
      (return (i32.const 1)))
    (i32.const 0))
)
