/* A test plugin that talks to the host the way plugins built with the proxy-wasm C++ SDK do, written in C from
 * the ABI (no SDK code). Each point below is something a host has to get right for such plugins to act at all:
 *
 * 1. Behaviours register a root factory and a stream factory under a root id from static constructors. Only a
 *    host that runs `_initialize` (which runs the constructors) before any callback lets them be found.
 * 2. proxy_on_context_create(id, 0) reads the `plugin_root_id` property and aborts unless the host answers Ok
 *    (an empty root id is Ok with an empty value). The root context is built by the factory registered under
 *    that id; with none registered it is a root that does nothing, and so are all its streams.
 * 3. A stream context is built by the factory registered under its root's id.
 * 4. Every callback looks its context up by id and aborts when it is missing or of the wrong kind (the SDK
 *    dereferences a null pointer there): vm start, configure, tick and HTTP callout answers go to a root
 *    context id.
 * 5. Header callbacks return Envoy's FilterHeadersStatus: 4 (StopAllIterationAndWatermark), also right after
 *    a local reply.
 * 6. The allocator is exported as `malloc` only, and local replies without extra headers pass none (size 0).
 *
 * Behaviours, by root id:
 *   ""       denylist: a request whose `User-Token` header is missing, or is one of the whitespace-separated
 *            tokens of the configuration, gets a local 403; returns 4 after it.
 *   "reply"  every request gets a local 200 "Hello World" with `Content-Type: text/plain` and a `:status`
 *            pair among the extra headers; returns 1 after it.
 *   "auth"   asks upstream group "auth" (GET /check) through its root and returns 4; the answer, delivered to
 *            the root, makes the stream effective again, adds `x-auth-status: <callout status>` to the request
 *            and continues it (a failed callout gets a local 503).
 *   every behaviour adds `x-cpp-root: <root id>` to responses it lets through. */
#include <stdlib.h>
#include <string.h>

#include "proxy_wasm_abi.h"

PW_EXPORT(proxy_abi_version_0_2_1) void proxy_abi_version_0_2_1(void) {}

/* ---- what the SDK's intrinsics do: factories, the context map, lookups that abort ---- */

typedef struct root root_t;
typedef struct stream stream_t;

typedef struct {
  int (*on_configure)(root_t *root, size_t config_size);
} root_ops_t;

typedef struct {
  uint32_t (*on_request_headers)(stream_t *s);
  void (*on_callout)(stream_t *s, uint32_t num_headers);
} stream_ops_t;

typedef struct {
  const char *root_id;
  const root_ops_t *root;
  const stream_ops_t *stream;
} factory_t;

struct root {
  uint32_t id;
  char *root_id;
  size_t root_id_len;
  const root_ops_t *ops;
  char *config;
  size_t config_len;
  /* Callouts in flight: token -> stream context id (the SDK keeps them on the root as well). */
  uint32_t tokens[32];
  uint32_t callers[32];
};

struct stream {
  uint32_t id;
  root_t *root;
  const stream_ops_t *ops;
};

typedef struct {
  uint32_t id;
  root_t *root; /* exactly one of root and stream is set */
  stream_t *stream;
} context_t;

static factory_t *g_factories; /* allocated by the first constructor, as the SDK does */
static size_t g_factory_count;
static context_t *g_contexts;
static size_t g_context_count;

static void log_str(uint32_t level, const char *s) { proxy_log(level, s, strlen(s)); }

static void die(const char *why) {
  log_str(PW_LOG_CRITICAL, why);
  __builtin_trap();
}

static void register_factory(const char *root_id, const root_ops_t *root, const stream_ops_t *stream) {
  factory_t *grown = realloc(g_factories, (g_factory_count + 1) * sizeof *grown);
  if (!grown) die("out of memory");
  g_factories = grown;
  g_factories[g_factory_count++] = (factory_t){root_id, root, stream};
}

static const factory_t *find_factory(const char *id, size_t len) {
  for (size_t i = 0; i < g_factory_count; i++) {
    if (strlen(g_factories[i].root_id) == len && memcmp(g_factories[i].root_id, id, len) == 0) return &g_factories[i];
  }
  return NULL;
}

static context_t *find_context(uint32_t id) {
  for (size_t i = 0; i < g_context_count; i++) {
    if (g_contexts[i].id == id) return &g_contexts[i];
  }
  return NULL;
}

static void add_context(context_t c) {
  if (find_context(c.id)) die("duplicate context id");
  context_t *grown = realloc(g_contexts, (g_context_count + 1) * sizeof *grown);
  if (!grown) die("out of memory");
  g_contexts = grown;
  g_contexts[g_context_count++] = c;
}

static root_t *root_of(uint32_t id) {
  context_t *c = find_context(id);
  if (!c || !c->root) die("callback for a context id that is not a root context");
  return c->root;
}

static stream_t *stream_of(uint32_t id) {
  context_t *c = find_context(id);
  if (!c || !c->stream) die("callback for a context id that is not a stream context");
  return c->stream;
}

static const root_ops_t k_idle_root = {0};
static const stream_ops_t k_idle_stream = {0};

PW_EXPORT(proxy_on_context_create) void proxy_on_context_create(uint32_t id, uint32_t parent) {
  if (parent == 0) {
    static const char prop[] = "plugin_root_id";
    char *value = NULL;
    size_t len = 0;
    if (proxy_get_property(prop, sizeof prop - 1, &value, &len) != PW_OK) die("plugin_root_id: not Ok");
    root_t *root = calloc(1, sizeof *root);
    if (!root) die("out of memory");
    const factory_t *f = find_factory(value ? value : "", len);
    root->id = id;
    root->root_id = value;
    root->root_id_len = len;
    root->ops = f ? f->root : &k_idle_root;
    add_context((context_t){id, root, NULL});
    return;
  }
  root_t *root = root_of(parent);
  stream_t *s = calloc(1, sizeof *s);
  if (!s) die("out of memory");
  const factory_t *f = find_factory(root->root_id ? root->root_id : "", root->root_id_len);
  s->id = id;
  s->root = root;
  s->ops = f ? f->stream : &k_idle_stream;
  add_context((context_t){id, NULL, s});
}

PW_EXPORT(proxy_on_vm_start) uint32_t proxy_on_vm_start(uint32_t id, size_t vm_config_size) {
  (void)vm_config_size;
  root_of(id);
  return 1;
}

PW_EXPORT(proxy_on_configure) uint32_t proxy_on_configure(uint32_t id, size_t config_size) {
  root_t *root = root_of(id);
  return root->ops->on_configure ? (uint32_t)root->ops->on_configure(root, config_size) : 1;
}

PW_EXPORT(proxy_on_tick) void proxy_on_tick(uint32_t id) { root_of(id); }

PW_EXPORT(proxy_on_request_headers)
uint32_t proxy_on_request_headers(uint32_t id, uint32_t num_headers, uint32_t end_of_stream) {
  (void)num_headers;
  (void)end_of_stream;
  stream_t *s = stream_of(id);
  return s->ops->on_request_headers ? s->ops->on_request_headers(s) : 0;
}

PW_EXPORT(proxy_on_response_headers)
uint32_t proxy_on_response_headers(uint32_t id, uint32_t num_headers, uint32_t end_of_stream) {
  (void)num_headers;
  (void)end_of_stream;
  stream_t *s = stream_of(id);
  if (s->ops != &k_idle_stream) {
    static const char key[] = "x-cpp-root";
    proxy_add_header_map_value(PW_MAP_HTTP_RESPONSE_HEADERS, key, sizeof key - 1, s->root->root_id,
                               s->root->root_id_len);
  }
  return 0;
}

PW_EXPORT(proxy_on_http_call_response)
void proxy_on_http_call_response(uint32_t id, uint32_t token, uint32_t num_headers, size_t body_size,
                                 uint32_t num_trailers) {
  (void)body_size;
  (void)num_trailers;
  root_t *root = root_of(id);
  for (size_t i = 0; i < sizeof root->tokens / sizeof root->tokens[0]; i++) {
    if (root->tokens[i] != token || root->callers[i] == 0) continue;
    uint32_t caller = root->callers[i];
    root->callers[i] = 0;
    context_t *c = find_context(caller);
    if (!c || !c->stream) return; /* the stream ended before the answer came */
    if (proxy_set_effective_context(caller) != PW_OK) die("set_effective_context refused a live stream");
    if (c->stream->ops->on_callout) c->stream->ops->on_callout(c->stream, num_headers);
    return;
  }
}

PW_EXPORT(proxy_on_done) uint32_t proxy_on_done(uint32_t id) {
  if (!find_context(id)) die("proxy_on_done for an unknown context");
  return 1;
}

PW_EXPORT(proxy_on_log) void proxy_on_log(uint32_t id) { stream_of(id); }

PW_EXPORT(proxy_on_delete) void proxy_on_delete(uint32_t id) {
  context_t *c = find_context(id);
  if (!c) die("proxy_on_delete for an unknown context");
  free(c->stream);
  *c = g_contexts[--g_context_count];
}

/* ---- helpers the SDK's API offers ---- */

/* The ABI's header-map encoding of `n` pairs; *len gets its size. The caller frees the result. */
static char *marshal_pairs(const char *const (*pairs)[2], size_t n, size_t *len) {
  size_t size = 4;
  for (size_t i = 0; i < n; i++) size += 8 + strlen(pairs[i][0]) + strlen(pairs[i][1]) + 2;
  char *buf = malloc(size);
  if (!buf) die("out of memory");
  uint32_t count = (uint32_t)n;
  memcpy(buf, &count, 4);
  char *sizes = buf + 4, *data = buf + 4 + 8 * n;
  for (size_t i = 0; i < n; i++) {
    uint32_t k = (uint32_t)strlen(pairs[i][0]), v = (uint32_t)strlen(pairs[i][1]);
    memcpy(sizes + 8 * i, &k, 4);
    memcpy(sizes + 8 * i + 4, &v, 4);
    memcpy(data, pairs[i][0], k + 1);
    data += k + 1;
    memcpy(data, pairs[i][1], v + 1);
    data += v + 1;
  }
  *len = size;
  return buf;
}

static void local_reply(uint32_t status, const char *body, const char *headers, size_t headers_len) {
  /* GrpcStatus::InvalidCode (-1) as the SDK passes it: not a gRPC reply. */
  if (proxy_send_local_response(status, "", 0, body, strlen(body), headers, headers_len, -1) != PW_OK)
    die("send_local_response refused");
}

/* ---- denylist (root id "") ---- */

static int deny_configure(root_t *root, size_t size) {
  char *data = NULL;
  size_t len = 0;
  if (proxy_get_buffer_bytes(PW_BUFFER_PLUGIN_CONFIGURATION, 0, size, &data, &len) != PW_OK) return 0;
  root->config = data;
  root->config_len = len;
  return 1;
}

static int denied(const root_t *root, const char *token, size_t len) {
  size_t i = 0;
  while (i < root->config_len) {
    while (i < root->config_len && strchr(" \f\n\r\t\v", root->config[i])) i++;
    size_t start = i;
    while (i < root->config_len && !strchr(" \f\n\r\t\v", root->config[i])) i++;
    if (i > start && i - start == len && memcmp(root->config + start, token, len) == 0) return 1;
  }
  return 0;
}

static uint32_t deny_request_headers(stream_t *s) {
  static const char key[] = "User-Token";
  char *token = NULL;
  size_t len = 0;
  pw_status_t found = proxy_get_header_map_value(PW_MAP_HTTP_REQUEST_HEADERS, key, sizeof key - 1, &token, &len);
  uint32_t action = 0;
  if (found != PW_OK || len == 0) {
    local_reply(403, "Access forbidden - token missing.\n", NULL, 0);
    action = 4;
  } else if (denied(s->root, token, len)) {
    local_reply(403, "Access forbidden.\n", NULL, 0);
    action = 4;
  }
  free(token);
  return action;
}

static const root_ops_t k_deny_root = {deny_configure};
static const stream_ops_t k_deny_stream = {deny_request_headers, NULL};

/* ---- local reply (root id "reply") ---- */

static uint32_t reply_request_headers(stream_t *s) {
  (void)s;
  static const char *const pairs[][2] = {{"Content-Type", "text/plain"}, {":status", "200"}};
  size_t len = 0;
  char *headers = marshal_pairs(pairs, 2, &len);
  local_reply(200, "Hello World", headers, len);
  free(headers);
  return 1;
}

static const stream_ops_t k_reply_stream = {reply_request_headers, NULL};

/* ---- callout through the root (root id "auth") ---- */

static uint32_t auth_request_headers(stream_t *s) {
  static const char *const pairs[][2] = {{":method", "GET"}, {":path", "/check"}, {":authority", "auth"}};
  size_t len = 0;
  char *headers = marshal_pairs(pairs, 3, &len);
  uint32_t token = 0;
  pw_status_t called = proxy_http_call("auth", 4, headers, len, NULL, 0, NULL, 0, 5000, &token);
  free(headers);
  root_t *root = s->root;
  size_t slot = sizeof root->tokens / sizeof root->tokens[0];
  for (size_t i = 0; i < sizeof root->tokens / sizeof root->tokens[0]; i++) {
    if (root->callers[i] == 0) {
      slot = i;
      break;
    }
  }
  if (called != PW_OK || slot == sizeof root->tokens / sizeof root->tokens[0]) {
    local_reply(500, "callout refused\n", NULL, 0);
    return 4;
  }
  root->tokens[slot] = token;
  root->callers[slot] = s->id;
  return 4;
}

static void auth_callout(stream_t *s, uint32_t num_headers) {
  (void)s;
  if (num_headers == 0) {
    local_reply(503, "auth unreachable\n", NULL, 0);
    return;
  }
  static const char status_key[] = ":status", out_key[] = "x-auth-status";
  char *status = NULL;
  size_t len = 0;
  if (proxy_get_header_map_value(PW_MAP_HTTP_CALL_RESPONSE_HEADERS, status_key, sizeof status_key - 1, &status,
                                 &len) != PW_OK)
    die("callout answer without :status");
  proxy_add_header_map_value(PW_MAP_HTTP_REQUEST_HEADERS, out_key, sizeof out_key - 1, status, len);
  free(status);
  if (proxy_continue_stream(PW_STREAM_HTTP_REQUEST) != PW_OK) die("continue_stream refused");
}

static const stream_ops_t k_auth_stream = {auth_request_headers, auth_callout};

/* ---- registration in static constructors, as `static RegisterContextFactory r(...)` does ---- */

__attribute__((constructor)) static void register_denylist(void) { register_factory("", &k_deny_root, &k_deny_stream); }
__attribute__((constructor)) static void register_reply(void) { register_factory("reply", &k_idle_root, &k_reply_stream); }
__attribute__((constructor)) static void register_auth(void) { register_factory("auth", &k_idle_root, &k_auth_stream); }
