/* builtin:balancer — Portico's bundled endpoint-selection plugin (Portico extension
 * `portico_on_upstream_select`, see plugins/README.md).
 *
 * Config (JSON): { "policy": "round_robin" | "weighted_round_robin" | "least_request" | "random" |
 *                  "ring_hash" | "maglev",
 *                  "hash_on": "header:NAME" | "cookie:NAME" | "source_ip" | "path",   (hashing policies only)
 *                  "table_size": 65537,      (maglev only, prime)
 *                  "ring_points": 100 }      (ring_hash only: ring points per unit of weight)
 *
 * Per-group state (round-robin counters, smooth-WRR current weights, cumulative weights, rings, Maglev tables)
 * lives in this instance's globals, rebuilt only when the candidate set (addresses + weights) changes. No
 * policy reads the candidate list while the set is unchanged: least_request reads the two loads it compares.
 * Each instance of the plugin keeps its own state: see "Bundled plugins" in plugins/README.md for why. */
#include <stdlib.h>
#include <string.h>

#include "common.h"

typedef enum { P_ROUND_ROBIN, P_WRR, P_LEAST_REQUEST, P_RANDOM, P_RING_HASH, P_MAGLEV } policy_t;

static const char *const POLICY_NAMES[] = {"round_robin", "weighted_round_robin", "least_request",
                                           "random",      "ring_hash",            "maglev"};

#define MAX_RING_POINTS (1u << 17) /* 2 MiB of ring per group; larger rings are scaled down */
#define MAGLEV_EMPTY 0xFFFFu
#define MAGLEV_MAX_ENDPOINTS 0xFFFEu

static struct {
  policy_t policy;
  key_spec_t key;
  uint32_t table_size;
  uint32_t ring_points;
} g_cfg;

/* One candidate line of `portico.upstream.candidates`, pointing into the host's buffer. */
typedef struct {
  const char *addr;
  size_t alen;
  uint32_t weight, active, latency;
  uint64_t h; /* hash of the address */
} cand_t;

/* An endpoint in a group's canonical (address-sorted) order. */
typedef struct {
  char *addr;
  size_t alen;
  uint32_t weight;
  uint64_t h;
  int64_t current; /* smooth WRR */
} ep_t;

typedef struct {
  uint64_t h;
  uint32_t ep;
} point_t;

typedef struct group {
  struct group *next;
  char *name;
  size_t nlen;
  uint64_t sig;
  bool built;
  bool versioned;  /* `version` holds the host's candidates_version of the set the tables were built from */
  uint64_t version;
  size_t n;
  ep_t *eps;
  uint64_t rr;
  uint64_t *cum; /* cum[i] = weights of eps[0..=i], for weighted random */
  point_t *ring;
  size_t nring;
  uint16_t *table;
  uint32_t tsize;
} group_t;

static group_t *g_groups;

/* ---------------- ABI boilerplate ---------------- */

/* The ABI marker, allocator and lifecycle callbacks both bundled plugins share are in common.c. */

/* ---------------- configuration ---------------- */

static bool is_prime(uint32_t n) {
  if (n < 2) return false;
  for (uint32_t d = 2; (uint64_t)d * d <= n; d++)
    if (n % d == 0) return false;
  return true;
}

static void free_group(group_t *g) {
  for (size_t i = 0; i < g->n; i++) free(g->eps[i].addr);
  free(g->eps);
  free(g->cum);
  free(g->ring);
  free(g->table);
  free(g->name);
  free(g);
}

static bool config_integer(const jval_t *v, const char *key, uint64_t lo, uint64_t hi, uint32_t *out) {
  if (v->type != J_NUM || v->num < (double)lo || v->num > (double)hi || v->num != (double)(uint64_t)v->num) {
    logf_level(PW_LOG_ERROR, "balancer: %s must be an integer in %llu..%llu", key, (unsigned long long)lo,
               (unsigned long long)hi);
    return false;
  }
  *out = (uint32_t)v->num;
  return true;
}

static bool configure(const char *text, size_t len) {
  char err[160];
  jval_t *root = NULL;
  bool ok = false, has_table = false, has_points = false;
  g_cfg.policy = P_ROUND_ROBIN;
  free(g_cfg.key.name);
  memset(&g_cfg.key, 0, sizeof g_cfg.key);
  g_cfg.table_size = 65537;
  g_cfg.ring_points = 100;
  if (len == 0) return true; /* no configuration: round robin */
  root = json_parse(text, len, err, sizeof err);
  if (!root) {
    logf_level(PW_LOG_ERROR, "balancer: configuration is not valid JSON: %s", err);
    return false;
  }
  if (root->type != J_OBJ) {
    logf_level(PW_LOG_ERROR, "balancer: configuration must be an object, got %s", json_type_name(root->type));
    goto out;
  }
  for (size_t i = 0; i < root->len; i++) {
    const char *k = root->keys[i];
    const jval_t *v = &root->items[i];
    if (strcmp(k, "policy") == 0) {
      if (v->type != J_STR) {
        logf_level(PW_LOG_ERROR, "balancer: policy must be a string, got %s", json_type_name(v->type));
        goto out;
      }
      size_t p = 0, np = sizeof POLICY_NAMES / sizeof *POLICY_NAMES;
      while (p < np && strcmp(POLICY_NAMES[p], v->str) != 0) p++;
      if (p == np) {
        logf_level(PW_LOG_ERROR,
                   "balancer: unknown policy \"%s\" (expected round_robin, weighted_round_robin, least_request, "
                   "random, ring_hash or maglev)",
                   v->str);
        goto out;
      }
      g_cfg.policy = (policy_t)p;
    } else if (strcmp(k, "hash_on") == 0) {
      if (v->type != J_STR ||
          !key_spec_parse(v->str, 1u << KEY_HEADER | 1u << KEY_COOKIE | 1u << KEY_SOURCE_IP | 1u << KEY_PATH,
                          &g_cfg.key)) {
        logf_level(PW_LOG_ERROR,
                   "balancer: hash_on must be \"header:NAME\", \"cookie:NAME\", \"source_ip\" or \"path\", got %s",
                   v->type == J_STR ? v->str : json_type_name(v->type));
        goto out;
      }
    } else if (strcmp(k, "table_size") == 0) {
      if (!config_integer(v, "table_size", 3, 5000011, &g_cfg.table_size)) goto out;
      if (!is_prime(g_cfg.table_size)) {
        logf_level(PW_LOG_ERROR, "balancer: table_size %u must be prime (e.g. 65537)", g_cfg.table_size);
        goto out;
      }
      has_table = true;
    } else if (strcmp(k, "ring_points") == 0) {
      if (!config_integer(v, "ring_points", 1, 10000, &g_cfg.ring_points)) goto out;
      has_points = true;
    } else {
      logf_level(PW_LOG_ERROR, "balancer: unknown option \"%s\" (expected policy, hash_on, table_size, ring_points)",
                 k);
      goto out;
    }
  }
  bool hashing = g_cfg.policy == P_RING_HASH || g_cfg.policy == P_MAGLEV;
  if (hashing && g_cfg.key.kind == KEY_NONE) {
    logf_level(PW_LOG_ERROR, "balancer: policy \"%s\" needs hash_on", POLICY_NAMES[g_cfg.policy]);
    goto out;
  }
  if (!hashing && g_cfg.key.kind != KEY_NONE) {
    logf_level(PW_LOG_ERROR, "balancer: hash_on only applies to ring_hash and maglev, not \"%s\"",
               POLICY_NAMES[g_cfg.policy]);
    goto out;
  }
  if (has_table && g_cfg.policy != P_MAGLEV) {
    logf_level(PW_LOG_ERROR, "balancer: table_size only applies to maglev");
    goto out;
  }
  if (has_points && g_cfg.policy != P_RING_HASH) {
    logf_level(PW_LOG_ERROR, "balancer: ring_points only applies to ring_hash");
    goto out;
  }
  ok = true;
out:
  json_free(root);
  return ok;
}

/* Where the host writes the set's version before each pick (Portico's select version slot), if it took the
 * registration: then a pick reads it without a hostcall. */
static uint64_t g_select_version;
static bool g_select_version_slot;

PW_EXPORT(proxy_on_configure) uint32_t proxy_on_configure(uint32_t root_id, size_t config_size) {
  (void)root_id;
  size_t len;
  char *text = read_plugin_config(config_size, &len);
  bool ok = configure(text, len);
  pw_release(text);
  g_select_version_slot = portico_set_select_version_slot(&g_select_version) == PW_OK;
  while (g_groups) {
    group_t *g = g_groups;
    g_groups = g->next;
    free_group(g);
  }
  return ok;
}

/* ---------------- candidates ---------------- */

static uint32_t parse_u32(const char **p, const char *end) {
  while (*p < end && **p == ' ') (*p)++;
  uint64_t v = 0;
  while (*p < end && **p >= '0' && **p <= '9') {
    v = v * 10 + (uint64_t)(**p - '0');
    if (v > UINT32_MAX) v = UINT32_MAX;
    (*p)++;
  }
  return (uint32_t)v;
}

/* Parse the candidates text; weight 0 counts as 1 (the host only offers endpoints meant to get traffic). */
static size_t parse_candidates(const char *buf, size_t len, cand_t **out) {
  size_t lines = 0;
  for (size_t i = 0; i < len; i++) lines += buf[i] == '\n';
  cand_t *c = malloc((lines + 1) * sizeof *c);
  size_t n = 0;
  if (!c) return 0;
  const char *p = buf, *end = buf + len;
  while (p < end) {
    const char *eol = memchr(p, '\n', (size_t)(end - p));
    if (!eol) eol = end;
    const char *sp = memchr(p, ' ', (size_t)(eol - p));
    if (sp && sp > p) {
      cand_t *x = &c[n];
      x->addr = p;
      x->alen = (size_t)(sp - p);
      const char *q = sp;
      x->weight = parse_u32(&q, eol);
      x->active = parse_u32(&q, eol);
      x->latency = parse_u32(&q, eol);
      uint32_t ejected = parse_u32(&q, eol);
      if (x->weight == 0) x->weight = 1;
      if (!ejected) n++;
    }
    p = eol + 1;
  }
  *out = c;
  return n;
}

/* ---------------- group tables ---------------- */

static int ep_cmp(const void *a, const void *b) {
  const ep_t *x = a, *y = b;
  size_t m = x->alen < y->alen ? x->alen : y->alen;
  int r = memcmp(x->addr, y->addr, m);
  if (r) return r;
  return x->alen < y->alen ? -1 : x->alen > y->alen;
}

/* Stable LSD radix sort by hash (4 passes of 16 bits): much faster than qsort for the ring sizes used here, and
 * stable, so equal hashes keep the address order the points were generated in (deterministic for a set). */
static bool sort_points(point_t *a, size_t n) {
  point_t *tmp = malloc(n * sizeof *tmp);
  uint32_t *count = malloc(65536 * sizeof *count);
  if (!tmp || !count) {
    free(tmp);
    free(count);
    return false;
  }
  point_t *src = a, *dst = tmp;
  for (int shift = 0; shift < 64; shift += 16) {
    memset(count, 0, 65536 * sizeof *count);
    for (size_t i = 0; i < n; i++) count[(src[i].h >> shift) & 0xFFFF]++;
    uint32_t sum = 0;
    for (size_t d = 0; d < 65536; d++) {
      uint32_t c = count[d];
      count[d] = sum;
      sum += c;
    }
    for (size_t i = 0; i < n; i++) dst[count[(src[i].h >> shift) & 0xFFFF]++] = src[i];
    point_t *t = src;
    src = dst;
    dst = t;
  }
  /* an even number of passes leaves the result in `a` */
  free(tmp);
  free(count);
  return true;
}

static bool build_ring(group_t *g) {
  uint64_t total = 0;
  for (size_t i = 0; i < g->n; i++) total += (uint64_t)g->eps[i].weight * g_cfg.ring_points;
  /* Scale down (proportionally, at least 1 point each) when the ring would be too large. */
  double scale = total > MAX_RING_POINTS ? (double)MAX_RING_POINTS / (double)total : 1.0;
  size_t cap = 0;
  for (size_t i = 0; i < g->n; i++) {
    uint64_t pts = (uint64_t)((double)g->eps[i].weight * g_cfg.ring_points * scale);
    cap += pts ? pts : 1;
  }
  g->ring = malloc(cap * sizeof *g->ring);
  if (!g->ring) return false;
  size_t k = 0;
  for (size_t i = 0; i < g->n; i++) {
    uint64_t pts = (uint64_t)((double)g->eps[i].weight * g_cfg.ring_points * scale);
    if (!pts) pts = 1;
    for (uint64_t j = 0; j < pts; j++) {
      g->ring[k].h = mix64(g->eps[i].h + (j + 1) * 0x9E3779B97F4A7C15ULL);
      g->ring[k].ep = (uint32_t)i;
      k++;
    }
  }
  g->nring = k;
  return sort_points(g->ring, k);
}

/* Maglev (Eisenbud et al., NSDI'16) population with weights: each round an endpoint earns `weight` credit and
 * claims its next preferred free slot for every `max_weight` of credit. Endpoints are in address order, so
 * the table depends only on the set, and removing one leaves the others' preference lists unchanged. */
static bool build_maglev(group_t *g) {
  uint32_t m = g_cfg.table_size;
  if (g->n > MAGLEV_MAX_ENDPOINTS) return false;
  g->table = malloc((size_t)m * sizeof *g->table);
  uint64_t *cur = malloc(g->n * sizeof *cur), *skip = malloc(g->n * sizeof *skip);
  uint64_t *credit = calloc(g->n, sizeof *credit);
  bool ok = g->table && cur && skip && credit;
  if (ok) {
    g->tsize = m;
    memset(g->table, 0xFF, (size_t)m * sizeof *g->table);
    uint32_t maxw = 1;
    for (size_t i = 0; i < g->n; i++) {
      cur[i] = mix64(g->eps[i].h ^ 0x5851F42D4C957F2DULL) % m;
      skip[i] = mix64(g->eps[i].h ^ 0x14057B7EF767814FULL) % (m - 1) + 1;
      if (g->eps[i].weight > maxw) maxw = g->eps[i].weight;
    }
    uint32_t filled = 0;
    while (filled < m) {
      for (size_t i = 0; i < g->n && filled < m; i++) {
        credit[i] += g->eps[i].weight;
        if (credit[i] < maxw) continue;
        credit[i] -= maxw;
        uint64_t c = cur[i], s = skip[i];
        while (g->table[c] != MAGLEV_EMPTY)
          if ((c += s) >= m) c -= m;
        g->table[c] = (uint16_t)i;
        if ((c += s) >= m) c -= m;
        cur[i] = c;
        filled++;
      }
    }
  }
  free(cur);
  free(skip);
  free(credit);
  return ok;
}

static void clear_tables(group_t *g) {
  for (size_t i = 0; i < g->n; i++) free(g->eps[i].addr);
  free(g->eps);
  free(g->cum);
  free(g->ring);
  free(g->table);
  g->eps = NULL;
  g->cum = NULL;
  g->ring = NULL;
  g->table = NULL;
  g->n = g->nring = 0;
  g->tsize = 0;
  g->built = false;
}

static uint64_t signature(const cand_t *c, size_t n) {
  uint64_t sig = n; /* order-independent: the host may list endpoints in any order */
  for (size_t i = 0; i < n; i++) sig += mix64(c[i].h ^ ((uint64_t)c[i].weight * 0xD6E8FEB86659FD93ULL));
  return sig;
}

static group_t *find_group(const char *name, size_t nlen) {
  group_t *g = g_groups;
  while (g && !(g->nlen == nlen && memcmp(g->name, name, nlen) == 0)) g = g->next;
  return g;
}

/* The one group whose tables were built from the set with this version; NULL when none was, or when two
 * groups hold the same set (then only the group's name tells them apart). Saves reading the name, a hostcall
 * and an allocation, on every pick of an unchanged set. */
static group_t *group_by_version(uint64_t version) {
  group_t *found = NULL;
  for (group_t *g = g_groups; g; g = g->next) {
    if (!(g->built && g->versioned && g->version == version)) continue;
    if (found) return NULL;
    found = g;
  }
  return found;
}

static group_t *group_for(const char *name, size_t nlen, const cand_t *c, size_t n) {
  group_t *g = find_group(name, nlen);
  if (!g) {
    g = calloc(1, sizeof *g);
    if (!g) return NULL;
    g->name = xstrndup(name, nlen);
    if (!g->name) {
      free(g);
      return NULL;
    }
    g->nlen = nlen;
    g->next = g_groups;
    g_groups = g;
  }
  uint64_t sig = signature(c, n);
  if (g->built && g->sig == sig && g->n == n) return g;
  clear_tables(g);
  g->versioned = false;
  g->eps = calloc(n, sizeof *g->eps);
  if (!g->eps) return NULL;
  for (size_t i = 0; i < n; i++) {
    g->eps[i].addr = xstrndup(c[i].addr, c[i].alen);
    if (!g->eps[i].addr) {
      g->n = i;
      clear_tables(g);
      return NULL;
    }
    g->eps[i].alen = c[i].alen;
    g->eps[i].weight = c[i].weight;
    g->eps[i].h = c[i].h;
  }
  g->n = n;
  qsort(g->eps, n, sizeof *g->eps, ep_cmp);
  g->cum = malloc(n * sizeof *g->cum);
  bool ok = g->cum != NULL;
  for (size_t i = 0; ok && i < n; i++) g->cum[i] = (i ? g->cum[i - 1] : 0) + g->eps[i].weight;
  if (ok && g_cfg.policy == P_RING_HASH) ok = build_ring(g);
  if (ok && g_cfg.policy == P_MAGLEV) ok = build_maglev(g);
  if (!ok) {
    logf_level(PW_LOG_ERROR, "balancer: cannot build the %s table for %zu endpoints of %.*s",
               POLICY_NAMES[g_cfg.policy], n, (int)nlen, name);
    clear_tables(g);
    return NULL;
  }
  g->sig = sig;
  g->built = true;
  return g;
}

/* ---------------- policies ---------------- */

static bool addr_eq(const char *a, size_t an, const char *b, size_t bn) { return an == bn && memcmp(a, b, an) == 0; }

/* Weighted random over candidates, skipping index `skip` (SIZE_MAX = none). */
static size_t pick_random(const cand_t *c, size_t n, size_t skip) {
  uint64_t total = 0;
  for (size_t i = 0; i < n; i++)
    if (i != skip) total += c[i].weight;
  if (total == 0) return skip;
  uint64_t r = rng_below(total);
  for (size_t i = 0; i < n; i++) {
    if (i == skip) continue;
    if (r < c[i].weight) return i;
    r -= c[i].weight;
  }
  return skip;
}

/* Weighted random over a group's endpoints, skipping index `skip` (SIZE_MAX = none): a binary search of the
 * cumulative weights, so 1,000 endpoints cost ten steps. */
static size_t table_random(const group_t *g, size_t skip) {
  uint64_t total = g->cum[g->n - 1], before = 0, w = 0;
  if (skip < g->n) {
    before = skip ? g->cum[skip - 1] : 0;
    w = g->eps[skip].weight;
  }
  if (total == w) return skip;
  uint64_t r = rng_below(total - w);
  if (skip < g->n && r >= before) r += w; /* step over the skipped endpoint's share */
  size_t lo = 0, hi = g->n - 1;        /* the first i with cum[i] > r */
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    if (g->cum[mid] > r)
      hi = mid;
    else
      lo = mid + 1;
  }
  return lo;
}

/* An endpoint's requests in flight (`portico.upstream.active_requests.<address>`); UINT32_MAX when the host
 * does not say, so that an endpoint with a known load is preferred. */
static uint64_t active_requests(const ep_t *e) {
  static const char prefix[] = "portico\0upstream\0active_requests\0";
  char path[sizeof prefix + 256];
  if (e->alen > 256) return UINT32_MAX;
  /* The address is the last segment, dots and all. */
  memcpy(path, prefix, sizeof prefix - 1);
  memcpy(path + sizeof prefix - 1, e->addr, e->alen);
  char *v = NULL;
  size_t vlen = 0;
  uint64_t active = UINT32_MAX;
  bool found = get_property(path, sizeof prefix - 1 + e->alen, &v, &vlen) && vlen == sizeof active;
  if (found) memcpy(&active, v, sizeof active);
  pw_release(v);
  return active;
}

/* Power of two choices: two distinct random endpoints, the lower active/weight wins. Reads two loads, not the
 * list, however many endpoints the group has. */
static size_t table_least_request(const group_t *g, size_t skip) {
  size_t n = g->n, m = n - (skip < n);
  if (m == 0) return skip;
  size_t a = (size_t)rng_below(m), b = a;
  if (m > 1) {
    b = (size_t)rng_below(m - 1);
    if (b >= a) b++;
  }
  if (skip < n) { /* map [0, m) onto the endpoints without `skip` */
    if (a >= skip) a++;
    if (b >= skip) b++;
  }
  if (a == b) return a;
  uint64_t la = active_requests(&g->eps[a]) * g->eps[b].weight, lb = active_requests(&g->eps[b]) * g->eps[a].weight;
  return lb < la ? b : a;
}

static size_t wrr_step(group_t *g) {
  int64_t total = 0;
  size_t best = 0;
  for (size_t i = 0; i < g->n; i++) {
    g->eps[i].current += g->eps[i].weight;
    total += g->eps[i].weight;
    if (g->eps[i].current > g->eps[best].current) best = i;
  }
  g->eps[best].current -= total;
  return best;
}

static size_t ring_lookup(const group_t *g, uint64_t kh, size_t skip) {
  size_t lo = 0, hi = g->nring;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    if (g->ring[mid].h < kh)
      lo = mid + 1;
    else
      hi = mid;
  }
  if (lo == g->nring) lo = 0;
  for (size_t k = 0; k < g->nring; k++) {
    size_t ep = g->ring[(lo + k) % g->nring].ep;
    if (ep != skip) return ep;
  }
  return g->ring[lo].ep;
}

static size_t maglev_lookup(const group_t *g, uint64_t kh, size_t skip) {
  size_t idx = (size_t)(kh % g->tsize);
  for (size_t k = 0; k < g->tsize; k++) {
    uint16_t ep = g->table[(idx + k) % g->tsize];
    if (ep != MAGLEV_EMPTY && ep != skip) return ep;
  }
  return g->table[idx];
}

static size_t find_ep(const group_t *g, const char *addr, size_t alen) {
  for (size_t i = 0; i < g->n; i++)
    if (addr_eq(g->eps[i].addr, g->eps[i].alen, addr, alen)) return i;
  return SIZE_MAX;
}

static void select_addr(const char *addr, size_t alen) {
  set_property(PROP("portico\0upstream\0selected"), addr, alen);
}

/* The host's fingerprint of the offered set (`portico.upstream.candidates_version`, 8 bytes little endian). */
static bool candidates_version(uint64_t *version) {
  if (g_select_version_slot) {
    *version = g_select_version;
    return true;
  }
  char *v = NULL;
  size_t vlen = 0;
  bool ok = get_property(PROP("portico\0upstream\0candidates_version"), &v, &vlen) && vlen == sizeof *version;
  if (ok) memcpy(version, v, sizeof *version);
  pw_release(v);
  return ok;
}

/* Every policy keeps its tables per set of candidates. When the host's version of the set is the one this
 * group's tables were built from, the pick needs neither the candidate list nor its parsing: with 1,000
 * endpoints that is most of the cost. Least request then reads the loads of the two endpoints it compares. */
PW_EXPORT(portico_on_upstream_select) int32_t portico_on_upstream_select(uint32_t context_id, int32_t attempt) {
  (void)context_id;
  char *cbuf = NULL, *gname = NULL, *failed = NULL, *key = NULL;
  size_t clen = 0, glen = 0, flen = 0, klen = 0;
  cand_t *c = NULL;
  bool hashing = g_cfg.policy == P_RING_HASH || g_cfg.policy == P_MAGLEV;
  bool keyed = hashing && key_extract(&g_cfg.key, &key, &klen);
  if (attempt > 0) get_property(PROP("portico\0upstream\0failed"), &failed, &flen);

  uint64_t version = 0;
  bool have_version = candidates_version(&version);
  group_t *g = have_version ? group_by_version(version) : NULL;
  if (!g) {
    get_property(PROP("portico\0upstream"), &gname, &glen);
    g = find_group(gname ? gname : "", gname ? glen : 0);
    if (g && !(have_version && g->built && g->versioned && g->version == version)) g = NULL;
  }

  if (!g) {
    if (!get_property(PROP("portico\0upstream\0candidates"), &cbuf, &clen) || clen == 0) goto out;
    size_t n = parse_candidates(cbuf, clen, &c);
    if (n == 0) goto out; /* nothing to choose from: native balancing decides */
    size_t skip = SIZE_MAX; /* index in `c` of the endpoint that just failed */
    if (failed && flen)
      for (size_t i = 0; i < n; i++)
        if (addr_eq(c[i].addr, c[i].alen, failed, flen)) skip = i;
    if (n == 1) skip = SIZE_MAX; /* the only candidate: retry it rather than nothing */
    for (size_t i = 0; i < n; i++) c[i].h = hash64(c[i].addr, c[i].alen);
    g = group_for(gname ? gname : "", gname ? glen : 0, c, n);
    if (!g) {
      size_t i = pick_random(c, n, skip);
      if (i < n) select_addr(c[i].addr, c[i].alen);
      goto out;
    }
    g->versioned = have_version;
    g->version = version;
  }

  size_t gskip = failed && flen && g->n > 1 ? find_ep(g, failed, flen) : SIZE_MAX;
  size_t pick = 0;
  switch (g_cfg.policy) {
    case P_ROUND_ROBIN:
      pick = (size_t)(g->rr++ % g->n);
      if (pick == gskip) pick = (size_t)(g->rr++ % g->n);
      break;
    case P_WRR:
      pick = wrr_step(g);
      if (pick == gskip) pick = wrr_step(g);
      /* two steps in a row can return the same endpoint only when its weight dominates; walk on */
      for (size_t k = 0; pick == gskip && k < g->n; k++) pick = (pick + 1) % g->n;
      break;
    case P_RING_HASH:
    case P_MAGLEV:
      if (keyed) {
        uint64_t kh = hash64(key, klen);
        pick = g_cfg.policy == P_RING_HASH ? ring_lookup(g, kh, gskip) : maglev_lookup(g, kh, gskip);
      } else {
        pick = table_random(g, gskip); /* no key on this request: weighted random, like Envoy */
      }
      break;
    case P_LEAST_REQUEST:
      pick = table_least_request(g, gskip);
      break;
    case P_RANDOM:
      pick = table_random(g, gskip);
      break;
  }
  if (pick < g->n) select_addr(g->eps[pick].addr, g->eps[pick].alen);
out:
  if (c) free(c); /* NULL on every pick from built tables: skip the call */
  pw_release(cbuf);
  pw_release(gname);
  pw_release(failed);
  pw_release(key);
  return PW_CONTINUE;
}
