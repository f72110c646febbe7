/* Example user plugin: a latency-aware balancer for Portico, in C against the raw proxy-wasm ABI.
 *
 * Portico calls `portico_on_upstream_select` when it needs an endpoint; the plugin reads the candidates
 * (`addr weight active latency_ms ejected` per line), keeps an EWMA of each endpoint's reported latency and
 * picks the lowest, except for a small share of requests (config "explore": percent, default 5) that go to a
 * random endpoint so a recovered endpoint gets noticed. On retries it avoids the endpoint that just failed.
 *
 * Build: see README.md next to this file. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "proxy_wasm_abi.h"

PW_EXPORT(proxy_abi_version_0_2_1) void proxy_abi_version_0_2_1(void) {}
PW_EXPORT(proxy_on_memory_allocate) void *proxy_on_memory_allocate(size_t size) { return malloc(size); }
PW_EXPORT(proxy_on_context_create) void proxy_on_context_create(uint32_t context_id, uint32_t parent_id) {
  (void)context_id;
  (void)parent_id;
}

static uint64_t rng_state = 0x853c49e6748fea9bULL;
static uint32_t explore_percent = 5;

static uint64_t rng(void) { /* splitmix64 */
  uint64_t z = (rng_state += 0x9E3779B97F4A7C15ULL);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

PW_EXPORT(proxy_on_vm_start) uint32_t proxy_on_vm_start(uint32_t root_id, size_t vm_config_size) {
  (void)root_id;
  (void)vm_config_size;
  getentropy(&rng_state, sizeof rng_state);
  return 1;
}

/* Config: empty, or a JSON object like {"explore": 5} — only that one integer is read. */
PW_EXPORT(proxy_on_configure) uint32_t proxy_on_configure(uint32_t root_id, size_t config_size) {
  (void)root_id;
  char *cfg = NULL;
  size_t len = 0;
  if (config_size == 0) return 1;
  if (proxy_get_buffer_bytes(PW_BUFFER_PLUGIN_CONFIGURATION, 0, config_size, &cfg, &len) != PW_OK) return 0;
  char *end = cfg + len, *p = cfg;
  while (p + 9 <= end && memcmp(p, "\"explore\"", 9) != 0) p++;
  if (p + 9 <= end) {
    p += 9;
    while (p < end && (*p == ' ' || *p == ':')) p++;
    uint32_t v = 0;
    int digits = 0;
    while (p < end && *p >= '0' && *p <= '9' && v <= 100) v = v * 10 + (uint32_t)(*p++ - '0'), digits++;
    if (!digits || v > 100) {
      static const char msg[] = "latency_balancer: explore must be an integer percent 0..100";
      proxy_log(PW_LOG_ERROR, msg, sizeof msg - 1);
      free(cfg);
      return 0;
    }
    explore_percent = v;
  }
  free(cfg);
  return 1;
}

/* EWMA table: open addressing keyed by address hash; 1024 endpoints per VM is plenty for an example. */
#define SLOTS 1024
static struct {
  uint64_t key; /* 0 = empty */
  double ewma;
} table[SLOTS];

static uint64_t hash(const char *s, size_t n) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 0x100000001b3ULL;
  return h | 1;
}

static double observe(const char *addr, size_t n, double latency_ms) {
  uint64_t k = hash(addr, n);
  for (size_t i = 0; i < SLOTS; i++) {
    size_t s = (size_t)((k + i) % SLOTS);
    if (table[s].key == 0) {
      table[s].key = k;
      table[s].ewma = latency_ms;
      return latency_ms;
    }
    if (table[s].key == k) {
      table[s].ewma = 0.7 * table[s].ewma + 0.3 * latency_ms;
      return table[s].ewma;
    }
  }
  return latency_ms; /* table full: use the raw value */
}

PW_EXPORT(portico_on_upstream_select) int32_t portico_on_upstream_select(uint32_t context_id, int32_t attempt) {
  (void)context_id;
  static const char cand_path[] = "portico\0upstream\0candidates", failed_path[] = "portico\0upstream\0failed",
                    sel_path[] = "portico\0upstream\0selected";
  char *buf = NULL, *failed = NULL;
  size_t len = 0, flen = 0;
  if (proxy_get_property(cand_path, sizeof cand_path - 1, &buf, &len) != PW_OK || len == 0) return PW_CONTINUE;
  if (attempt > 0) proxy_get_property(failed_path, sizeof failed_path - 1, &failed, &flen);

  const char *best = NULL, *nth = NULL;
  size_t best_len = 0, nth_len = 0, count = 0;
  double best_score = 0;
  int explore = (rng() % 100) < explore_percent;
  for (char *p = buf, *end = buf + len; p < end;) {
    char *eol = memchr(p, '\n', (size_t)(end - p));
    if (!eol) eol = end;
    char *sp = memchr(p, ' ', (size_t)(eol - p));
    if (sp) {
      size_t alen = (size_t)(sp - p);
      /* fields after the address: weight active latency_ms ejected */
      unsigned long fields[4] = {0};
      char *q = sp;
      for (int f = 0; f < 4; f++) fields[f] = strtoul(q, &q, 10);
      int is_failed = failed && flen == alen && memcmp(failed, p, alen) == 0;
      if (!fields[3] && !is_failed) {
        double score = observe(p, alen, (double)fields[2]);
        count++;
        if (rng() % count == 0) nth = p, nth_len = alen; /* reservoir sample for exploration */
        if (!best || score < best_score) best = p, best_len = alen, best_score = score;
      }
    }
    p = eol + 1;
  }
  if (!best && failed) best = failed, best_len = flen; /* the failed one was the only candidate */
  if (explore && nth) best = nth, best_len = nth_len;
  if (best) proxy_set_property(sel_path, sizeof sel_path - 1, best, best_len);
  free(buf);
  free(failed);
  return PW_CONTINUE;
}
