/* builtin:router — Portico's bundled request router.
 *
 * Config (JSON): { "routes": [ { "match": {...}, "upstream": "name" | "split": [{ "upstream", "weight" }],
 *                                "sticky": "header:NAME" | "cookie:NAME", "strip_prefix": bool,
 *                                "host_rewrite": "host" }, ... ] }
 * match keys (all given must hold; none = match everything): host (exact, port stripped, case-insensitive),
 * path_prefix, path (exact, without query), method, headers { name: value }, query { param: value }.
 * First matching route wins: it sets `portico.route.upstream` (Portico extension) in
 * proxy_on_request_headers and applies the rewrites. No match: nothing is set (the listener default applies). */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

typedef struct {
  char *name;
  char *value;
} pair_t;

typedef struct {
  char *upstream;
  size_t upstream_len;
  uint64_t weight;
} split_t;

typedef struct {
  char *host, *path_prefix, *path, *method;
  /* Lengths the request path needs, measured once per configuration rather than with strlen per request. */
  size_t path_prefix_len, upstream_len;
  pair_t *headers;
  size_t nheaders;
  pair_t *query;
  size_t nquery;
  char *upstream;
  split_t *split;
  size_t nsplit;
  uint64_t total_weight;
  key_spec_t sticky;
  bool strip_prefix;
  char *host_rewrite;
} route_t;

static route_t *g_routes;
static size_t g_nroutes;
/* Which request parts some route looks at, worked out once per configuration: each part read is a hostcall
 * plus a guest allocation, so a request is only asked for what a route can match on. */
static bool g_need_host, g_need_path, g_need_method;

/* The ABI marker, allocator and lifecycle callbacks both bundled plugins share are in common.c. */

/* "host:port" -> "host", "[::1]:80" -> "[::1]"; a bare IPv6 address is kept whole. */
static slice_t strip_port(const char *h, size_t n) {
  slice_t s = {h, n};
  if (n && h[0] == '[') {
    const char *rb = memchr(h, ']', n);
    if (rb) s.n = (size_t)(rb - h) + 1;
    return s;
  }
  const char *colon = memchr(h, ':', n);
  if (colon && !memchr(colon + 1, ':', n - (size_t)(colon - h) - 1)) s.n = (size_t)(colon - h);
  return s;
}

/* ---------------- configuration ---------------- */

static void free_pairs(pair_t *p, size_t n) {
  for (size_t i = 0; i < n; i++) {
    free(p[i].name);
    free(p[i].value);
  }
  free(p);
}

static void free_routes(void) {
  for (size_t i = 0; i < g_nroutes; i++) {
    route_t *r = &g_routes[i];
    free(r->host);
    free(r->path_prefix);
    free(r->path);
    free(r->method);
    free_pairs(r->headers, r->nheaders);
    free_pairs(r->query, r->nquery);
    free(r->upstream);
    for (size_t k = 0; k < r->nsplit; k++) free(r->split[k].upstream);
    free(r->split);
    free(r->sticky.name);
    free(r->host_rewrite);
  }
  free(g_routes);
  g_routes = NULL;
  g_nroutes = 0;
  g_need_host = g_need_path = g_need_method = false;
}

static void note_needs(void) {
  for (size_t i = 0; i < g_nroutes; i++) {
    route_t *r = &g_routes[i];
    r->path_prefix_len = r->path_prefix ? strlen(r->path_prefix) : 0;
    r->upstream_len = r->upstream ? strlen(r->upstream) : 0;
    for (size_t k = 0; k < r->nsplit; k++) r->split[k].upstream_len = strlen(r->split[k].upstream);
    g_need_host |= r->host != NULL;
    g_need_method |= r->method != NULL;
    g_need_path |= r->path != NULL || r->path_prefix != NULL || r->nquery > 0 || r->strip_prefix;
  }
}

#define FAIL(...)                                 \
  do {                                            \
    logf_level(PW_LOG_ERROR, "router: " __VA_ARGS__); \
    return false;                                 \
  } while (0)

static bool nonempty_string(const jval_t *v) { return v && v->type == J_STR && v->len > 0; }

static void lower(char *s) {
  for (; *s; s++) *s = (char)tolower((unsigned char)*s);
}

/* { "name": "value", ... } with string values; `lower_names` for header names. */
static bool parse_pairs(size_t ri, const char *what, const jval_t *v, bool lower_names, pair_t **out, size_t *n) {
  if (v->type != J_OBJ) FAIL("routes[%zu].match.%s must be an object, got %s", ri, what, json_type_name(v->type));
  if (v->len == 0) FAIL("routes[%zu].match.%s must not be empty", ri, what);
  *out = calloc(v->len, sizeof **out);
  if (!*out) FAIL("out of memory");
  for (size_t i = 0; i < v->len; i++) {
    const jval_t *val = &v->items[i];
    if (val->type != J_STR)
      FAIL("routes[%zu].match.%s.%s must be a string, got %s", ri, what, v->keys[i], json_type_name(val->type));
    if (v->keys[i][0] == 0) FAIL("routes[%zu].match.%s has an empty name", ri, what);
    (*out)[i].name = xstrdup(v->keys[i]);
    (*out)[i].value = xstrdup(val->str);
    (*n)++;
    if (!(*out)[i].name || !(*out)[i].value) FAIL("out of memory");
    if (lower_names) lower((*out)[i].name);
  }
  return true;
}

static bool parse_match(size_t ri, route_t *r, const jval_t *m) {
  if (m->type != J_OBJ) FAIL("routes[%zu].match must be an object, got %s", ri, json_type_name(m->type));
  for (size_t i = 0; i < m->len; i++) {
    const char *k = m->keys[i];
    const jval_t *v = &m->items[i];
    char **target = NULL;
    if (strcmp(k, "host") == 0)
      target = &r->host;
    else if (strcmp(k, "path_prefix") == 0)
      target = &r->path_prefix;
    else if (strcmp(k, "path") == 0)
      target = &r->path;
    else if (strcmp(k, "method") == 0)
      target = &r->method;
    if (target) {
      if (!nonempty_string(v)) FAIL("routes[%zu].match.%s must be a non-empty string", ri, k);
      if (*target) FAIL("routes[%zu].match.%s given twice", ri, k);
      *target = xstrdup(v->str);
      if (!*target) FAIL("out of memory");
      if ((target == &r->path_prefix || target == &r->path) && v->str[0] != '/')
        FAIL("routes[%zu].match.%s must start with '/'", ri, k);
      continue;
    }
    if (strcmp(k, "headers") == 0) {
      if (r->headers) FAIL("routes[%zu].match.headers given twice", ri);
      if (!parse_pairs(ri, k, v, true, &r->headers, &r->nheaders)) return false;
    } else if (strcmp(k, "query") == 0) {
      if (r->query) FAIL("routes[%zu].match.query given twice", ri);
      if (!parse_pairs(ri, k, v, false, &r->query, &r->nquery)) return false;
    } else {
      FAIL("routes[%zu].match: unknown key \"%s\" (expected host, path_prefix, path, method, headers, query)", ri,
           k);
    }
  }
  if (r->host) {
    lower(r->host);
    /* a configured port is not compared: requests are matched with the port stripped */
    r->host[strip_port(r->host, strlen(r->host)).n] = 0;
  }
  return true;
}

static bool parse_split(size_t ri, route_t *r, const jval_t *v) {
  if (v->type != J_ARR) FAIL("routes[%zu].split must be an array, got %s", ri, json_type_name(v->type));
  if (v->len == 0) FAIL("routes[%zu].split must not be empty", ri);
  r->split = calloc(v->len, sizeof *r->split);
  if (!r->split) FAIL("out of memory");
  for (size_t i = 0; i < v->len; i++) {
    const jval_t *e = &v->items[i];
    if (e->type != J_OBJ) FAIL("routes[%zu].split[%zu] must be an object", ri, i);
    for (size_t k = 0; k < e->len; k++)
      if (strcmp(e->keys[k], "upstream") != 0 && strcmp(e->keys[k], "weight") != 0)
        FAIL("routes[%zu].split[%zu]: unknown key \"%s\" (expected upstream, weight)", ri, i, e->keys[k]);
    const jval_t *up = json_get(e, "upstream"), *w = json_get(e, "weight");
    if (!nonempty_string(up)) FAIL("routes[%zu].split[%zu].upstream must be a non-empty string", ri, i);
    if (!w || w->type != J_NUM || w->num < 0 || w->num > 1e9 || w->num != (double)(uint64_t)w->num)
      FAIL("routes[%zu].split[%zu].weight must be an integer in 0..1000000000", ri, i);
    r->split[i].upstream = xstrdup(up->str);
    r->nsplit++;
    if (!r->split[i].upstream) FAIL("out of memory");
    r->split[i].weight = (uint64_t)w->num;
    r->total_weight += r->split[i].weight;
  }
  if (r->total_weight == 0) FAIL("routes[%zu].split weights must sum to > 0", ri);
  return true;
}

static bool parse_route(size_t ri, route_t *r, const jval_t *v) {
  if (v->type != J_OBJ) FAIL("routes[%zu] must be an object, got %s", ri, json_type_name(v->type));
  for (size_t i = 0; i < v->len; i++) {
    const char *k = v->keys[i];
    const jval_t *x = &v->items[i];
    if (strcmp(k, "match") == 0) {
      if (!parse_match(ri, r, x)) return false;
    } else if (strcmp(k, "upstream") == 0) {
      if (!nonempty_string(x)) FAIL("routes[%zu].upstream must be a non-empty string", ri);
      r->upstream = xstrdup(x->str);
      if (!r->upstream) FAIL("out of memory");
    } else if (strcmp(k, "split") == 0) {
      if (!parse_split(ri, r, x)) return false;
    } else if (strcmp(k, "sticky") == 0) {
      if (x->type != J_STR || !key_spec_parse(x->str, 1u << KEY_HEADER | 1u << KEY_COOKIE, &r->sticky))
        FAIL("routes[%zu].sticky must be \"header:NAME\" or \"cookie:NAME\"", ri);
    } else if (strcmp(k, "strip_prefix") == 0) {
      if (x->type != J_BOOL) FAIL("routes[%zu].strip_prefix must be a boolean", ri);
      r->strip_prefix = x->b;
    } else if (strcmp(k, "host_rewrite") == 0) {
      if (!nonempty_string(x)) FAIL("routes[%zu].host_rewrite must be a non-empty string", ri);
      r->host_rewrite = xstrdup(x->str);
      if (!r->host_rewrite) FAIL("out of memory");
    } else {
      FAIL("routes[%zu]: unknown key \"%s\" (expected match, upstream, split, sticky, strip_prefix, host_rewrite)",
           ri, k);
    }
  }
  if (r->upstream && r->split) FAIL("routes[%zu] has both upstream and split; give one", ri);
  if (!r->upstream && !r->split) FAIL("routes[%zu] needs upstream or split", ri);
  if (r->sticky.kind != KEY_NONE && !r->split) FAIL("routes[%zu].sticky only applies to split", ri);
  if (r->strip_prefix && !r->path_prefix) FAIL("routes[%zu].strip_prefix needs match.path_prefix", ri);
  return true;
}

static bool configure(const char *text, size_t len) {
  char err[160];
  if (len == 0) FAIL("configuration is empty; expected {\"routes\": [...]}");
  jval_t *root = json_parse(text, len, err, sizeof err);
  if (!root) FAIL("configuration is not valid JSON: %s", err);
  bool ok = false;
  const jval_t *routes = json_get(root, "routes");
  if (root->type != J_OBJ) {
    logf_level(PW_LOG_ERROR, "router: configuration must be an object, got %s", json_type_name(root->type));
  } else if (root->len != 1 || !routes) {
    for (size_t i = 0; i < root->len; i++)
      if (strcmp(root->keys[i], "routes") != 0)
        logf_level(PW_LOG_ERROR, "router: unknown option \"%s\" (expected routes)", root->keys[i]);
    if (!routes) logf_level(PW_LOG_ERROR, "router: routes is missing");
  } else if (routes->type != J_ARR || routes->len == 0) {
    logf_level(PW_LOG_ERROR, "router: routes must be a non-empty array");
  } else {
    g_routes = calloc(routes->len, sizeof *g_routes);
    if (g_routes) {
      ok = true;
      for (size_t i = 0; ok && i < routes->len; i++) {
        g_nroutes++;
        ok = parse_route(i, &g_routes[i], &routes->items[i]);
      }
    }
  }
  json_free(root);
  return ok;
}

PW_EXPORT(proxy_on_configure) uint32_t proxy_on_configure(uint32_t root_id, size_t config_size) {
  (void)root_id;
  free_routes();
  size_t len;
  char *text = read_plugin_config(config_size, &len);
  bool ok = configure(text, len);
  pw_release(text);
  if (ok)
    note_needs();
  else
    free_routes();
  return ok;
}

/* ---------------- matching ---------------- */

typedef struct {
  char *host, *path, *method;
  size_t host_len, path_len, method_len;
  slice_t host_noport, path_only, query;
} req_t;

static bool query_has(slice_t q, const char *name, const char *value) {
  size_t i = 0, nl = strlen(name);
  while (i < q.n) {
    size_t start = i;
    while (i < q.n && q.p[i] != '&') i++;
    const char *kv = q.p + start;
    size_t kvn = i - start;
    const char *eq = memchr(kv, '=', kvn);
    size_t kn = eq ? (size_t)(eq - kv) : kvn;
    if (kn == nl && memcmp(kv, name, nl) == 0) {
      slice_t v = eq ? (slice_t){eq + 1, kvn - kn - 1} : (slice_t){"", 0};
      if (slice_eq(v, value)) return true;
    }
    i++;
  }
  return false;
}

static bool route_matches(const route_t *r, const req_t *q) {
  if (r->host && !slice_ieq(q->host_noport, r->host)) return false;
  if (r->method && !(q->method && slice_eq((slice_t){q->method, q->method_len}, r->method))) return false;
  if (r->path && !slice_eq(q->path_only, r->path)) return false;
  if (r->path_prefix) {
    size_t pl = r->path_prefix_len;
    if (q->path_only.n < pl || memcmp(q->path_only.p, r->path_prefix, pl) != 0) return false;
  }
  for (size_t i = 0; i < r->nheaders; i++) {
    char *v = NULL;
    size_t n = 0;
    bool ok = get_request_header(r->headers[i].name, &v, &n) && slice_eq((slice_t){v ? v : "", n}, r->headers[i].value);
    pw_release(v);
    if (!ok) return false;
  }
  for (size_t i = 0; i < r->nquery; i++)
    if (!query_has(q->query, r->query[i].name, r->query[i].value)) return false;
  return true;
}

static slice_t choose_upstream(const route_t *r) {
  if (r->upstream) return (slice_t){r->upstream, r->upstream_len};
  uint64_t point;
  char *key = NULL;
  size_t klen = 0;
  if (r->sticky.kind != KEY_NONE && key_extract(&r->sticky, &key, &klen)) {
    point = hash64(key, klen) % r->total_weight;
    pw_release(key);
  } else {
    point = rng_below(r->total_weight);
  }
  for (size_t i = 0; i < r->nsplit; i++) {
    if (point < r->split[i].weight) return (slice_t){r->split[i].upstream, r->split[i].upstream_len};
    point -= r->split[i].weight;
  }
  const split_t *last = &r->split[r->nsplit - 1];
  return (slice_t){last->upstream, last->upstream_len};
}

static void strip(const route_t *r, const req_t *q) {
  size_t pl = r->path_prefix_len;
  const char *rest = q->path + pl;
  size_t rn = q->path_len - pl;
  bool slash = rn == 0 || rest[0] != '/';
  char *np = malloc(rn + 2);
  if (!np) return;
  size_t k = 0;
  if (slash) np[k++] = '/';
  memcpy(np + k, rest, rn);
  k += rn;
  proxy_replace_header_map_value(PW_MAP_HTTP_REQUEST_HEADERS, ":path", 5, np, k);
  free(np);
}

PW_EXPORT(proxy_on_request_headers)
uint32_t proxy_on_request_headers(uint32_t context_id, uint32_t num_headers, uint32_t end_of_stream) {
  (void)context_id;
  (void)num_headers;
  (void)end_of_stream;
  req_t q = {0};
  if (g_need_host && (!get_request_header(":authority", &q.host, &q.host_len) || q.host_len == 0)) {
    pw_release(q.host);
    q.host = NULL;
    get_request_header("host", &q.host, &q.host_len);
  }
  if (g_need_path) get_request_header(":path", &q.path, &q.path_len);
  if (g_need_method) get_request_header(":method", &q.method, &q.method_len);
  q.host_noport = strip_port(q.host ? q.host : "", q.host ? q.host_len : 0);
  const char *path = q.path ? q.path : "";
  size_t plen = q.path ? q.path_len : 0;
  const char *qm = memchr(path, '?', plen);
  q.path_only = (slice_t){path, qm ? (size_t)(qm - path) : plen};
  if (qm) {
    const char *hash = memchr(qm + 1, '#', plen - (size_t)(qm + 1 - path));
    q.query = (slice_t){qm + 1, (size_t)((hash ? hash : path + plen) - (qm + 1))};
  } else {
    q.query = (slice_t){"", 0};
  }
  for (size_t i = 0; i < g_nroutes; i++) {
    const route_t *r = &g_routes[i];
    if (!route_matches(r, &q)) continue;
    slice_t up = choose_upstream(r);
    set_property(PROP("portico\0route\0upstream"), up.p, up.n);
    if (r->strip_prefix && q.path) strip(r, &q);
    if (r->host_rewrite) {
      size_t hn = strlen(r->host_rewrite);
      proxy_replace_header_map_value(PW_MAP_HTTP_REQUEST_HEADERS, ":authority", 10, r->host_rewrite, hn);
      char *h = NULL;
      size_t n = 0;
      if (get_request_header("host", &h, &n))
        proxy_replace_header_map_value(PW_MAP_HTTP_REQUEST_HEADERS, "host", 4, r->host_rewrite, hn);
      pw_release(h);
    }
    break;
  }
  pw_release(q.host);
  pw_release(q.path);
  pw_release(q.method);
  return PW_CONTINUE;
}
