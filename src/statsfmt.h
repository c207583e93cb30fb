/*
 * One snapshot of busgated's counters, gauges and facts (built by the
 * router's stats.c, or by the CLI from STAT lines) and its three
 * renderings: STAT lines, Prometheus text format 0.0.4 and JSON. The table
 * of what each name means (kind, Prometheus family, help, unit) lives here
 * once, so STATS, /metrics and `busgate stats` cannot disagree.
 */
#ifndef BUSGATE_STATSFMT_H
#define BUSGATE_STATSFMT_H

#include <stddef.h>
#include <stdint.h>

struct evbuffer;
struct statsfmt;

struct statsfmt *statsfmt_new(void);
void statsfmt_free(struct statsfmt *sf);

/* Append one value, in STAT order. Names are copied. Return 0 or -1. */
int statsfmt_u64(struct statsfmt *sf, const char *name, uint64_t v);
int statsfmt_text(struct statsfmt *sf, const char *name, const char *value);
/* A STAT line's name and the rest of the line (the CLI): a number for the
 * names the table knows to be numeric, text otherwise. */
int statsfmt_line(struct statsfmt *sf, const char *name, const char *rest);

/* "STAT name value" lines (no END). */
int statsfmt_render_stat(const struct statsfmt *sf, struct evbuffer *out);
/* Prometheus text format 0.0.4, every family prefixed busgate_. */
int statsfmt_render_prometheus(const struct statsfmt *sf, struct evbuffer *out);
/* One JSON object, name: number or string; repeated names (session) make
 * an array. */
int statsfmt_render_json(const struct statsfmt *sf, struct evbuffer *out);

#endif /* BUSGATE_STATSFMT_H */
