/* Shared helpers for Portico's bundled plugins (builtin:router, builtin:balancer): a small JSON parser,
 * 64-bit hashing, a PRNG, logging and header/property access over the raw proxy-wasm ABI.
 * Written as a user would write their own plugin: C + wasi-libc, no SDK. */
#ifndef PORTICO_BUILTIN_COMMON_H
#define PORTICO_BUILTIN_COMMON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proxy_wasm_abi.h"

PW_IMPORT(proxy_get_shared_data)
pw_status_t proxy_get_shared_data(const char *key, size_t key_len, char **ret_value, size_t *ret_size,
                                  uint32_t *ret_cas);
PW_IMPORT(proxy_set_shared_data)
pw_status_t proxy_set_shared_data(const char *key, size_t key_len, const char *value, size_t value_len,
                                  uint32_t cas);
/* Portico's extension: hostcalls write the values they return into this region (valid until the callback
 * returns) instead of allocating each one through proxy_on_memory_allocate. */
PW_IMPORT(portico_set_return_arena) pw_status_t portico_set_return_arena(char *ptr, size_t len);
/* Portico's extension: before each portico_on_upstream_select the host writes the candidate set's version
 * (what portico.upstream.candidates_version reads, 8 bytes little endian) at this address. */
PW_IMPORT(portico_set_select_version_slot) pw_status_t portico_set_select_version_slot(uint64_t *slot);

/* ---- JSON ---- */
typedef enum { J_NULL, J_BOOL, J_NUM, J_STR, J_ARR, J_OBJ } jtype_t;

typedef struct jval {
  jtype_t type;
  bool b;
  double num;
  char *str;          /* J_STR: NUL-terminated, decoded */
  size_t len;         /* J_STR: byte length; J_ARR/J_OBJ: element count */
  char **keys;        /* J_OBJ: keys (NUL-terminated) */
  struct jval *items; /* J_ARR/J_OBJ: values */
} jval_t;

/* Parse `len` bytes; returns NULL and writes a message into err (size errlen) on failure. */
jval_t *json_parse(const char *text, size_t len, char *err, size_t errlen);
void json_free(jval_t *v);
/* Object member by key, or NULL. */
const jval_t *json_get(const jval_t *obj, const char *key);
const char *json_type_name(jtype_t t);

/* ---- strings ---- */
typedef struct {
  const char *p;
  size_t n;
} slice_t;

char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);
bool slice_eq(slice_t a, const char *s);
bool slice_ieq(slice_t a, const char *s);

/* ---- hashing, randomness ---- */
uint64_t hash64(const void *data, size_t len); /* FNV-1a 64 + murmur3 fmix64 finalizer */
uint64_t mix64(uint64_t x);                    /* murmur3 fmix64 */
void rng_seed(void);                           /* from WASI random_get, once per VM */
uint64_t rng_next(void);                       /* xoshiro256** */
uint64_t rng_below(uint64_t n);                /* uniform in [0, n), n > 0 */

/* ---- host access ----
 * Values the host returns land in the return arena when they fit (valid until the callback returns), else in
 * memory the host allocated: release them with pw_release(), never free(). */
void logf_level(uint32_t level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Registers the return arena; called once per VM, from proxy_on_vm_start. */
void return_arena_register(void);
/* The helpers a request runs are inline: a call per helper (and a strlen of a literal name, which the
 * compiler folds only when it sees the call site) showed as a fifth of the plugins' own instructions. */
#define PW_RETURN_ARENA_SIZE 4096
extern char g_return_arena[PW_RETURN_ARENA_SIZE];
/* Frees a value the host returned, unless it lives in the return arena. NULL is fine. */
static inline void pw_release(void *value) {
  const char *p = value;
  if (p && (p < g_return_arena || p >= g_return_arena + PW_RETURN_ARENA_SIZE)) free(value);
}
/* Read the plugin configuration; NULL when empty (len set to 0). Release with pw_release. */
char *read_plugin_config(size_t config_size, size_t *len);
/* Request header value (first); release with pw_release. false when absent. */
static inline bool get_request_header(const char *name, char **val, size_t *len) {
  *val = NULL;
  *len = 0;
  if (proxy_get_header_map_value(PW_MAP_HTTP_REQUEST_HEADERS, name, strlen(name), val, len) != PW_OK) return false;
  return *val != NULL || *len == 0;
}
/* A property path as the ABI takes it: the segments separated by NUL, written by the compiler once rather
 * than split per call ("source\0address"). Use as PROP("portico\0upstream\0failed") in an argument list. */
#define PROP(path) (path), (sizeof(path) - 1)
/* Property by path (see PROP); release with pw_release. */
static inline bool get_property(const char *path, size_t path_len, char **val, size_t *len) {
  *val = NULL;
  *len = 0;
  return proxy_get_property(path, path_len, val, len) == PW_OK;
}
static inline bool set_property(const char *path, size_t path_len, const char *val, size_t len) {
  return proxy_set_property(path, path_len, val, len) == PW_OK;
}

/* "header:NAME" | "cookie:NAME" | "source_ip" | "path" */
typedef enum { KEY_NONE, KEY_HEADER, KEY_COOKIE, KEY_SOURCE_IP, KEY_PATH } key_kind_t;
typedef struct {
  key_kind_t kind;
  char *name; /* header name lowercased, or cookie name */
} key_spec_t;

/* Parse a key spec; `allowed_mask` is a bitmask of (1 << key_kind_t) kinds accepted. */
bool key_spec_parse(const char *s, unsigned allowed_mask, key_spec_t *out);
/* Extract the request's key bytes into *out; release with pw_release. false when the request has none. */
bool key_extract(const key_spec_t *spec, char **out, size_t *len);

#endif
