/* Minimal proxy-wasm ABI 0.2.1 guest declarations for C plugins (no SDK needed).
 * Hostcalls are imported from module "env"; callbacks are exported by name. Sizes are 32-bit on wasm32. */
#ifndef PORTICO_PROXY_WASM_ABI_H
#define PORTICO_PROXY_WASM_ABI_H

#include <stddef.h>
#include <stdint.h>

#define PW_IMPORT(name) __attribute__((import_module("env"), import_name(#name)))
#define PW_EXPORT(name) __attribute__((export_name(#name)))

typedef enum {
  PW_OK = 0, PW_NOT_FOUND = 1, PW_BAD_ARGUMENT = 2, PW_SERIALIZATION_FAILURE = 3, PW_PARSE_FAILURE = 4,
  PW_INVALID_MEMORY_ACCESS = 6, PW_EMPTY = 7, PW_CAS_MISMATCH = 8, PW_INTERNAL_FAILURE = 10, PW_UNIMPLEMENTED = 12
} pw_status_t;

enum { PW_CONTINUE = 0, PW_PAUSE = 1 };
enum { PW_LOG_TRACE = 0, PW_LOG_DEBUG, PW_LOG_INFO, PW_LOG_WARN, PW_LOG_ERROR, PW_LOG_CRITICAL };
enum {
  PW_BUFFER_HTTP_REQUEST_BODY = 0, PW_BUFFER_HTTP_RESPONSE_BODY = 1, PW_BUFFER_HTTP_CALL_RESPONSE_BODY = 4,
  PW_BUFFER_VM_CONFIGURATION = 6, PW_BUFFER_PLUGIN_CONFIGURATION = 7
};
enum {
  PW_MAP_HTTP_REQUEST_HEADERS = 0, PW_MAP_HTTP_REQUEST_TRAILERS = 1, PW_MAP_HTTP_RESPONSE_HEADERS = 2,
  PW_MAP_HTTP_RESPONSE_TRAILERS = 3, PW_MAP_HTTP_CALL_RESPONSE_HEADERS = 6
};
enum { PW_STREAM_HTTP_REQUEST = 0, PW_STREAM_HTTP_RESPONSE = 1 };
enum { PW_METRIC_COUNTER = 0, PW_METRIC_GAUGE = 1, PW_METRIC_HISTOGRAM = 2 };

PW_IMPORT(proxy_log) pw_status_t proxy_log(uint32_t level, const char *msg, size_t len);
PW_IMPORT(proxy_get_log_level) pw_status_t proxy_get_log_level(uint32_t *level);
PW_IMPORT(proxy_get_current_time_nanoseconds) pw_status_t proxy_get_current_time_nanoseconds(uint64_t *nanos);
PW_IMPORT(proxy_set_tick_period_milliseconds) pw_status_t proxy_set_tick_period_milliseconds(uint32_t ms);
PW_IMPORT(proxy_get_buffer_bytes) pw_status_t proxy_get_buffer_bytes(uint32_t type, size_t start, size_t max,
                                                                      char **ret_data, size_t *ret_size);
PW_IMPORT(proxy_set_buffer_bytes) pw_status_t proxy_set_buffer_bytes(uint32_t type, size_t start, size_t size,
                                                                      const char *data, size_t len);
PW_IMPORT(proxy_get_header_map_pairs) pw_status_t proxy_get_header_map_pairs(uint32_t map, char **ret_data,
                                                                              size_t *ret_size);
PW_IMPORT(proxy_get_header_map_value) pw_status_t proxy_get_header_map_value(uint32_t map, const char *key,
                                                                              size_t key_len, char **ret_data,
                                                                              size_t *ret_size);
PW_IMPORT(proxy_add_header_map_value) pw_status_t proxy_add_header_map_value(uint32_t map, const char *key,
                                                                              size_t key_len, const char *value,
                                                                              size_t value_len);
PW_IMPORT(proxy_replace_header_map_value) pw_status_t proxy_replace_header_map_value(uint32_t map, const char *key,
                                                                                      size_t key_len,
                                                                                      const char *value,
                                                                                      size_t value_len);
PW_IMPORT(proxy_remove_header_map_value) pw_status_t proxy_remove_header_map_value(uint32_t map, const char *key,
                                                                                    size_t key_len);
PW_IMPORT(proxy_get_property) pw_status_t proxy_get_property(const char *path, size_t path_len, char **ret_data,
                                                              size_t *ret_size);
PW_IMPORT(proxy_set_property) pw_status_t proxy_set_property(const char *path, size_t path_len, const char *value,
                                                              size_t value_len);
PW_IMPORT(proxy_send_local_response) pw_status_t proxy_send_local_response(uint32_t status, const char *details,
                                                                            size_t details_len, const char *body,
                                                                            size_t body_len, const char *headers,
                                                                            size_t headers_len, int32_t grpc_status);
PW_IMPORT(proxy_continue_stream) pw_status_t proxy_continue_stream(uint32_t stream_type);
PW_IMPORT(proxy_set_effective_context) pw_status_t proxy_set_effective_context(uint32_t context_id);
PW_IMPORT(proxy_http_call) pw_status_t proxy_http_call(const char *upstream, size_t upstream_len, const char *headers,
                                                        size_t headers_len, const char *body, size_t body_len,
                                                        const char *trailers, size_t trailers_len,
                                                        uint32_t timeout_ms, uint32_t *ret_token);
PW_IMPORT(proxy_define_metric) pw_status_t proxy_define_metric(uint32_t type, const char *name, size_t name_len,
                                                                uint32_t *ret_id);
PW_IMPORT(proxy_increment_metric) pw_status_t proxy_increment_metric(uint32_t id, int64_t delta);

#endif
