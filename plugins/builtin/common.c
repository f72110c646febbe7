/* Shared helpers for the bundled plugins; see common.h. */
#include "common.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ======================= JSON ======================= */

typedef struct {
  const char *s;
  size_t n, i;
  int depth;
  char *err;
  size_t errlen;
  bool failed;
} jparser_t;

static void jfail(jparser_t *p, const char *what) {
  if (!p->failed) snprintf(p->err, p->errlen, "invalid JSON at byte %zu: %s", p->i, what);
  p->failed = true;
}

static void jws(jparser_t *p) {
  while (p->i < p->n && (p->s[p->i] == ' ' || p->s[p->i] == '\t' || p->s[p->i] == '\n' || p->s[p->i] == '\r'))
    p->i++;
}

static bool jvalue(jparser_t *p, jval_t *out);

static int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

static bool jhex4(jparser_t *p, uint32_t *cp) {
  if (p->i + 4 > p->n) return false;
  uint32_t v = 0;
  for (int k = 0; k < 4; k++) {
    int h = hexval(p->s[p->i + k]);
    if (h < 0) return false;
    v = v << 4 | (uint32_t)h;
  }
  p->i += 4;
  *cp = v;
  return true;
}

/* Decodes a string starting at the opening quote; *out is malloc'd and NUL-terminated. */
static bool jstring(jparser_t *p, char **out, size_t *outlen) {
  p->i++; /* opening quote */
  size_t cap = 16, len = 0;
  char *buf = malloc(cap);
  if (!buf) return jfail(p, "out of memory"), false;
  for (;;) {
    if (p->i >= p->n) {
      free(buf);
      return jfail(p, "unterminated string"), false;
    }
    unsigned char c = (unsigned char)p->s[p->i++];
    char tmp[4];
    size_t tn = 0;
    if (c == '"') break;
    if (c < 0x20) {
      free(buf);
      return jfail(p, "control character in string"), false;
    }
    if (c != '\\') {
      tmp[tn++] = (char)c;
    } else {
      if (p->i >= p->n) {
        free(buf);
        return jfail(p, "unterminated escape"), false;
      }
      char e = p->s[p->i++];
      switch (e) {
        case '"': tmp[tn++] = '"'; break;
        case '\\': tmp[tn++] = '\\'; break;
        case '/': tmp[tn++] = '/'; break;
        case 'b': tmp[tn++] = '\b'; break;
        case 'f': tmp[tn++] = '\f'; break;
        case 'n': tmp[tn++] = '\n'; break;
        case 'r': tmp[tn++] = '\r'; break;
        case 't': tmp[tn++] = '\t'; break;
        case 'u': {
          uint32_t cp;
          if (!jhex4(p, &cp)) {
            free(buf);
            return jfail(p, "bad \\u escape"), false;
          }
          if (cp >= 0xD800 && cp <= 0xDBFF) {
            uint32_t lo;
            if (p->i + 2 > p->n || p->s[p->i] != '\\' || p->s[p->i + 1] != 'u' || (p->i += 2, !jhex4(p, &lo)) ||
                lo < 0xDC00 || lo > 0xDFFF) {
              free(buf);
              return jfail(p, "bad surrogate pair"), false;
            }
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
          } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
            free(buf);
            return jfail(p, "lone low surrogate"), false;
          }
          if (cp < 0x80) {
            tmp[tn++] = (char)cp;
          } else if (cp < 0x800) {
            tmp[tn++] = (char)(0xC0 | cp >> 6);
            tmp[tn++] = (char)(0x80 | (cp & 0x3F));
          } else if (cp < 0x10000) {
            tmp[tn++] = (char)(0xE0 | cp >> 12);
            tmp[tn++] = (char)(0x80 | ((cp >> 6) & 0x3F));
            tmp[tn++] = (char)(0x80 | (cp & 0x3F));
          } else {
            tmp[tn++] = (char)(0xF0 | cp >> 18);
            tmp[tn++] = (char)(0x80 | ((cp >> 12) & 0x3F));
            tmp[tn++] = (char)(0x80 | ((cp >> 6) & 0x3F));
            tmp[tn++] = (char)(0x80 | (cp & 0x3F));
          }
          break;
        }
        default:
          free(buf);
          return jfail(p, "unknown escape"), false;
      }
    }
    if (len + tn + 1 > cap) {
      cap = cap * 2 + tn;
      char *nb = realloc(buf, cap);
      if (!nb) {
        free(buf);
        return jfail(p, "out of memory"), false;
      }
      buf = nb;
    }
    memcpy(buf + len, tmp, tn);
    len += tn;
  }
  buf[len] = 0;
  *out = buf;
  *outlen = len;
  return true;
}

static bool jnumber(jparser_t *p, jval_t *out) {
  size_t start = p->i;
  if (p->i < p->n && p->s[p->i] == '-') p->i++;
  if (p->i >= p->n || !isdigit((unsigned char)p->s[p->i])) return jfail(p, "bad number"), false;
  if (p->s[p->i] == '0') {
    p->i++;
  } else {
    while (p->i < p->n && isdigit((unsigned char)p->s[p->i])) p->i++;
  }
  if (p->i < p->n && p->s[p->i] == '.') {
    p->i++;
    if (p->i >= p->n || !isdigit((unsigned char)p->s[p->i])) return jfail(p, "bad number"), false;
    while (p->i < p->n && isdigit((unsigned char)p->s[p->i])) p->i++;
  }
  if (p->i < p->n && (p->s[p->i] == 'e' || p->s[p->i] == 'E')) {
    p->i++;
    if (p->i < p->n && (p->s[p->i] == '+' || p->s[p->i] == '-')) p->i++;
    if (p->i >= p->n || !isdigit((unsigned char)p->s[p->i])) return jfail(p, "bad number"), false;
    while (p->i < p->n && isdigit((unsigned char)p->s[p->i])) p->i++;
  }
  char tmp[64];
  size_t k = p->i - start;
  if (k >= sizeof tmp) return jfail(p, "number too long"), false;
  memcpy(tmp, p->s + start, k);
  tmp[k] = 0;
  out->type = J_NUM;
  out->num = strtod(tmp, NULL);
  return true;
}

static bool jlit(jparser_t *p, const char *lit) {
  size_t k = strlen(lit);
  if (p->i + k > p->n || memcmp(p->s + p->i, lit, k) != 0) return jfail(p, "unexpected token"), false;
  p->i += k;
  return true;
}

static bool jpush(jparser_t *p, jval_t *v, size_t *cap, bool with_keys) {
  if (v->len < *cap) return true;
  size_t nc = *cap ? *cap * 2 : 4;
  jval_t *ni = realloc(v->items, nc * sizeof *ni);
  if (!ni) return jfail(p, "out of memory"), false;
  v->items = ni;
  if (with_keys) {
    char **nk = realloc(v->keys, nc * sizeof *nk);
    if (!nk) return jfail(p, "out of memory"), false;
    v->keys = nk;
  }
  *cap = nc;
  return true;
}

static void jclear(jval_t *v) {
  if (v->type == J_STR) free(v->str);
  if (v->type == J_ARR || v->type == J_OBJ) {
    for (size_t i = 0; i < v->len; i++) {
      jclear(&v->items[i]);
      if (v->type == J_OBJ) free(v->keys[i]);
    }
    free(v->items);
    free(v->keys);
  }
  memset(v, 0, sizeof *v);
}

static bool jvalue(jparser_t *p, jval_t *out) {
  memset(out, 0, sizeof *out);
  jws(p);
  if (p->i >= p->n) return jfail(p, "unexpected end"), false;
  char c = p->s[p->i];
  if (c == '{' || c == '[') {
    if (++p->depth > 32) return jfail(p, "nested too deeply"), false;
    bool obj = c == '{';
    out->type = obj ? J_OBJ : J_ARR;
    size_t cap = 0;
    p->i++;
    jws(p);
    if (p->i < p->n && p->s[p->i] == (obj ? '}' : ']')) {
      p->i++;
      p->depth--;
      return true;
    }
    for (;;) {
      if (!jpush(p, out, &cap, obj)) return false;
      char *key = NULL;
      size_t klen;
      if (obj) {
        jws(p);
        if (p->i >= p->n || p->s[p->i] != '"') return jfail(p, "expected object key"), false;
        if (!jstring(p, &key, &klen)) return false;
        jws(p);
        if (p->i >= p->n || p->s[p->i] != ':') {
          free(key);
          return jfail(p, "expected ':'"), false;
        }
        p->i++;
      }
      jval_t *slot = &out->items[out->len];
      if (!jvalue(p, slot)) {
        free(key);
        jclear(slot);
        return false;
      }
      if (obj) out->keys[out->len] = key;
      out->len++;
      jws(p);
      if (p->i < p->n && p->s[p->i] == ',') {
        p->i++;
        continue;
      }
      if (p->i < p->n && p->s[p->i] == (obj ? '}' : ']')) {
        p->i++;
        p->depth--;
        return true;
      }
      return jfail(p, obj ? "expected ',' or '}'" : "expected ',' or ']'"), false;
    }
  }
  if (c == '"') {
    out->type = J_STR;
    return jstring(p, &out->str, &out->len);
  }
  if (c == 't') return out->type = J_BOOL, out->b = true, jlit(p, "true");
  if (c == 'f') return out->type = J_BOOL, out->b = false, jlit(p, "false");
  if (c == 'n') return out->type = J_NULL, jlit(p, "null");
  return jnumber(p, out);
}

jval_t *json_parse(const char *text, size_t len, char *err, size_t errlen) {
  jparser_t p = {.s = text, .n = len, .err = err, .errlen = errlen};
  jval_t *v = calloc(1, sizeof *v);
  if (!v) {
    snprintf(err, errlen, "out of memory");
    return NULL;
  }
  if (!jvalue(&p, v)) {
    json_free(v);
    return NULL;
  }
  jws(&p);
  if (p.i != p.n) {
    jfail(&p, "trailing characters");
    json_free(v);
    return NULL;
  }
  return v;
}

void json_free(jval_t *v) {
  if (!v) return;
  jclear(v);
  free(v);
}

const jval_t *json_get(const jval_t *obj, const char *key) {
  if (!obj || obj->type != J_OBJ) return NULL;
  for (size_t i = 0; i < obj->len; i++)
    if (strcmp(obj->keys[i], key) == 0) return &obj->items[i];
  return NULL;
}

const char *json_type_name(jtype_t t) {
  switch (t) {
    case J_NULL: return "null";
    case J_BOOL: return "a boolean";
    case J_NUM: return "a number";
    case J_STR: return "a string";
    case J_ARR: return "an array";
    case J_OBJ: return "an object";
  }
  return "?";
}

/* ======================= strings ======================= */

char *xstrndup(const char *s, size_t n) {
  char *d = malloc(n + 1);
  if (!d) return NULL;
  memcpy(d, s, n);
  d[n] = 0;
  return d;
}

char *xstrdup(const char *s) { return xstrndup(s, strlen(s)); }

bool slice_eq(slice_t a, const char *s) { return strlen(s) == a.n && memcmp(a.p, s, a.n) == 0; }

bool slice_ieq(slice_t a, const char *s) {
  if (strlen(s) != a.n) return false;
  for (size_t i = 0; i < a.n; i++)
    if (tolower((unsigned char)a.p[i]) != tolower((unsigned char)s[i])) return false;
  return true;
}

/* ======================= hashing, randomness ======================= */

uint64_t mix64(uint64_t k) {
  k ^= k >> 33;
  k *= 0xff51afd7ed558ccdULL;
  k ^= k >> 33;
  k *= 0xc4ceb9fe1a85ec53ULL;
  k ^= k >> 33;
  return k;
}

uint64_t hash64(const void *data, size_t len) {
  const unsigned char *p = data;
  uint64_t h = 0xcbf29ce484222325ULL;
  for (size_t i = 0; i < len; i++) {
    h ^= p[i];
    h *= 0x100000001b3ULL;
  }
  return mix64(h ^ len);
}

static uint64_t g_rng[4] = {0x9E3779B97F4A7C15ULL, 0xBF58476D1CE4E5B9ULL, 0x94D049BB133111EBULL, 1};

void rng_seed(void) {
  uint64_t seed[4];
  if (getentropy(seed, sizeof seed) != 0) {
    uint64_t t = 0;
    proxy_get_current_time_nanoseconds(&t);
    for (int i = 0; i < 4; i++) seed[i] = mix64(t + (uint64_t)i * 0x9E3779B97F4A7C15ULL);
  }
  if ((seed[0] | seed[1] | seed[2] | seed[3]) == 0) seed[0] = 1;
  memcpy(g_rng, seed, sizeof seed);
}

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t rng_next(void) {
  uint64_t *s = g_rng;
  uint64_t r = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
  s[2] ^= s[0];
  s[3] ^= s[1];
  s[1] ^= s[2];
  s[0] ^= s[3];
  s[2] ^= t;
  s[3] = rotl(s[3], 45);
  return r;
}

uint64_t rng_below(uint64_t n) {
  /* Lemire-free rejection: unbiased for any n. */
  uint64_t limit = UINT64_MAX - UINT64_MAX % n;
  uint64_t r;
  do r = rng_next();
  while (r >= limit);
  return r % n;
}

/* ======================= host access ======================= */

void logf_level(uint32_t level, const char *fmt, ...) {
  char buf[512];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  if (n < 0) return;
  if ((size_t)n >= sizeof buf) n = sizeof buf - 1;
  proxy_log(level, buf, (size_t)n);
}

/* 4 KiB: a request's few header values and properties, a small configuration. A candidate list at scale or a
 * larger value does not fit and is allocated as usual. */
char g_return_arena[PW_RETURN_ARENA_SIZE] __attribute__((aligned(8)));

void return_arena_register(void) { portico_set_return_arena(g_return_arena, sizeof g_return_arena); }

char *read_plugin_config(size_t config_size, size_t *len) {
  char *data = NULL;
  *len = 0;
  if (config_size == 0) return NULL;
  if (proxy_get_buffer_bytes(PW_BUFFER_PLUGIN_CONFIGURATION, 0, config_size, &data, len) != PW_OK) return NULL;
  return data;
}

bool key_spec_parse(const char *s, unsigned allowed, key_spec_t *out) {
  memset(out, 0, sizeof *out);
  key_kind_t kind;
  const char *name = NULL;
  if (strncmp(s, "header:", 7) == 0) {
    kind = KEY_HEADER;
    name = s + 7;
  } else if (strncmp(s, "cookie:", 7) == 0) {
    kind = KEY_COOKIE;
    name = s + 7;
  } else if (strcmp(s, "source_ip") == 0) {
    kind = KEY_SOURCE_IP;
  } else if (strcmp(s, "path") == 0) {
    kind = KEY_PATH;
  } else {
    return false;
  }
  if (!(allowed & (1u << kind))) return false;
  if (name) {
    if (!*name) return false;
    out->name = xstrdup(name);
    if (!out->name) return false;
    if (kind == KEY_HEADER)
      for (char *c = out->name; *c; c++) *c = (char)tolower((unsigned char)*c);
  }
  out->kind = kind;
  return true;
}

/* Find cookie `name` in a Cookie header value ("a=1; b=2"). */
static bool cookie_find(const char *h, size_t hn, const char *name, const char **v, size_t *vn) {
  size_t nl = strlen(name), i = 0;
  while (i < hn) {
    while (i < hn && (h[i] == ' ' || h[i] == ';')) i++;
    size_t start = i;
    while (i < hn && h[i] != ';') i++;
    size_t end = i;
    while (end > start && h[end - 1] == ' ') end--;
    const char *eq = memchr(h + start, '=', end - start);
    if (eq) {
      size_t kn = (size_t)(eq - (h + start));
      while (kn > 0 && h[start + kn - 1] == ' ') kn--;
      if (kn == nl && memcmp(h + start, name, nl) == 0) {
        const char *val = eq + 1;
        while (val < h + end && *val == ' ') val++;
        *v = val;
        *vn = (size_t)(h + end - val);
        if (*vn >= 2 && val[0] == '"' && val[*vn - 1] == '"') {
          (*v)++;
          *vn -= 2;
        }
        return true;
      }
    }
  }
  return false;
}

bool key_extract(const key_spec_t *spec, char **out, size_t *len) {
  char *v = NULL;
  size_t n = 0;
  *out = NULL;
  *len = 0;
  switch (spec->kind) {
    case KEY_NONE: return false;
    case KEY_HEADER:
      if (!get_request_header(spec->name, &v, &n)) return false;
      if (n == 0) {
        pw_release(v);
        return false;
      }
      *out = v;
      *len = n;
      return true;
    case KEY_PATH:
      if (!get_request_header(":path", &v, &n) || n == 0) {
        pw_release(v);
        return false;
      }
      *out = v;
      *len = n;
      return true;
    case KEY_COOKIE: {
      if (!get_request_header("cookie", &v, &n)) return false;
      const char *cv;
      size_t cn;
      bool ok = cookie_find(v, n, spec->name, &cv, &cn) && cn > 0;
      if (ok) {
        *out = xstrndup(cv, cn);
        *len = cn;
        ok = *out != NULL;
      }
      pw_release(v);
      return ok;
    }
    case KEY_SOURCE_IP: {
      if (!get_property(PROP("source\0address"), &v, &n) || n == 0) {
        pw_release(v);
        return false;
      }
      /* strip the port: "1.2.3.4:5" -> "1.2.3.4", "[::1]:5" -> "::1" */
      size_t s = 0, e = n;
      if (v[0] == '[') {
        const char *rb = memchr(v, ']', n);
        if (rb) {
          s = 1;
          e = (size_t)(rb - v);
        }
      } else {
        const char *colon = memchr(v, ':', n);
        if (colon && !memchr(colon + 1, ':', n - (size_t)(colon - v) - 1)) e = (size_t)(colon - v);
      }
      *out = xstrndup(v + s, e - s);
      *len = e - s;
      pw_release(v);
      return *out != NULL;
    }
  }
  return false;
}

/* ---------------- ABI boilerplate shared by the bundled plugins ----------------
 * Only callbacks that do something are exported: every exported per-request callback is a wasm call per
 * request, and the host skips the ones a module does not export (proxy_on_context_create, proxy_on_done and
 * proxy_on_delete had nothing to do here, and the router and balancer keep no per-request state). */

PW_EXPORT(proxy_abi_version_0_2_1) void proxy_abi_version_0_2_1(void) {}
PW_EXPORT(proxy_on_memory_allocate) void *proxy_on_memory_allocate(size_t size) { return malloc(size); }
PW_EXPORT(proxy_on_vm_start) uint32_t proxy_on_vm_start(uint32_t root_id, size_t vm_config_size) {
  (void)root_id;
  (void)vm_config_size;
  return_arena_register();
  rng_seed();
  return 1;
}
