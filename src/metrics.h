/*
 * The optional HTTP endpoint (metrics.listen): /metrics in Prometheus text
 * format, /healthz and /readyz, served by libevent's evhttp on a loopback
 * address or a Unix socket. Read-only: it only renders the router's
 * snapshot (router_stats_snapshot) and readiness (router_ready).
 */
#ifndef BUSGATE_METRICS_H
#define BUSGATE_METRICS_H

#include <stddef.h>

#include "config.h"
#include "router.h"

struct event_base;
struct metrics;

/* The name of the socket systemd passes for the endpoint
 * (FileDescriptorName= in the .socket unit). */
#define METRICS_FD_NAME "metrics"

/* The fd systemd passed under that name (LISTEN_FDNAMES), made
 * non-blocking, or -1. */
int metrics_passed_fd(void);

/* Serve on the socket systemd passed for it, else at cfg->listen (which
 * must then be set). NULL with a reason in err. */
struct metrics *metrics_new(struct event_base *base, const struct config_metrics *cfg,
    struct router *r, char *err, size_t errlen);

/* New timeouts after a reload (the address needs a restart). */
void metrics_reconfigure(struct metrics *m, const struct config_metrics *cfg);

/* Stop serving; unlink a Unix socket we created. NULL is fine. */
void metrics_free(struct metrics *m);

#endif /* BUSGATE_METRICS_H */
