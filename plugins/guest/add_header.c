/* Sample Portico plugin written directly against the proxy-wasm ABI (no SDK).
 * - proxy_on_configure: keeps the plugin configuration (must be non-empty) and logs it.
 * - requests to /blocked* get a local 403 with a JSON body;
 * - other requests get `x-portico-seen: <request.path property>` and count into the `requests` counter;
 * - responses get `x-portico-plugin: <configuration>`;
 * - proxy_on_log writes a line to stdout (WASI fd_write). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proxy_wasm_abi.h"

static char *g_config;
static size_t g_config_len;
static uint32_t g_requests_metric;

PW_EXPORT(proxy_abi_version_0_2_1) void proxy_abi_version_0_2_1(void) {}

PW_EXPORT(proxy_on_memory_allocate) void *proxy_on_memory_allocate(size_t size) { return malloc(size); }

static void log_str(uint32_t level, const char *s) { proxy_log(level, s, strlen(s)); }

PW_EXPORT(proxy_on_context_create) void proxy_on_context_create(uint32_t context_id, uint32_t parent_id) {
  (void)context_id;
  (void)parent_id;
}

PW_EXPORT(proxy_on_vm_start) uint32_t proxy_on_vm_start(uint32_t root_id, size_t vm_config_size) {
  (void)root_id;
  (void)vm_config_size;
  return 1;
}

PW_EXPORT(proxy_on_configure) uint32_t proxy_on_configure(uint32_t root_id, size_t config_size) {
  (void)root_id;
  char *data = NULL;
  size_t len = 0;
  if (config_size == 0) return 0;
  if (proxy_get_buffer_bytes(PW_BUFFER_PLUGIN_CONFIGURATION, 0, config_size, &data, &len) != PW_OK || len == 0)
    return 0;
  free(g_config);
  g_config = data;
  g_config_len = len;
  static const char name[] = "requests";
  if (proxy_define_metric(PW_METRIC_COUNTER, name, sizeof(name) - 1, &g_requests_metric) != PW_OK) return 0;
  char msg[128];
  int n = snprintf(msg, sizeof msg, "configured with %.*s", (int)len, data);
  proxy_log(PW_LOG_INFO, msg, (size_t)n);
  return 1;
}

PW_EXPORT(proxy_on_request_headers)
uint32_t proxy_on_request_headers(uint32_t context_id, uint32_t num_headers, uint32_t end_of_stream) {
  (void)context_id;
  (void)num_headers;
  (void)end_of_stream;
  static const char path_prop[] = "request\0path"; /* no trailing NUL in the length */
  char *path = NULL;
  size_t path_len = 0;
  if (proxy_get_property(path_prop, sizeof(path_prop) - 1, &path, &path_len) != PW_OK) {
    log_str(PW_LOG_ERROR, "request.path missing");
    return PW_CONTINUE;
  }
  if (path_len >= 8 && memcmp(path, "/blocked", 8) == 0) {
    static const char body[] = "{\"error\":\"blocked by plugin\"}";
    /* one pair: content-type: application/json */
    static const char hdrs[] = "\x01\x00\x00\x00" "\x0c\x00\x00\x00" "\x10\x00\x00\x00"
                               "content-type\0application/json";
    free(path);
    proxy_send_local_response(403, "blocked", 7, body, sizeof(body) - 1, hdrs, sizeof(hdrs), -1);
    return PW_PAUSE;
  }
  proxy_add_header_map_value(PW_MAP_HTTP_REQUEST_HEADERS, "x-portico-seen", 14, path, path_len);
  proxy_increment_metric(g_requests_metric, 1);
  free(path);
  return PW_CONTINUE;
}

PW_EXPORT(proxy_on_response_headers)
uint32_t proxy_on_response_headers(uint32_t context_id, uint32_t num_headers, uint32_t end_of_stream) {
  (void)context_id;
  (void)num_headers;
  (void)end_of_stream;
  proxy_add_header_map_value(PW_MAP_HTTP_RESPONSE_HEADERS, "x-portico-plugin", 16, g_config, g_config_len);
  return PW_CONTINUE;
}

PW_EXPORT(proxy_on_done) uint32_t proxy_on_done(uint32_t context_id) {
  (void)context_id;
  return 1;
}

PW_EXPORT(proxy_on_log) void proxy_on_log(uint32_t context_id) {
  printf("request %u done\n", (unsigned)context_id);
  fflush(stdout);
}

PW_EXPORT(proxy_on_delete) void proxy_on_delete(uint32_t context_id) { (void)context_id; }
