/*
 * STATS: every counter and limit of the router, the bus link and the
 * sessions, as STAT lines.
 */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <event2/buffer.h>

#include "router-int.h"

#ifndef PACKAGE_VERSION
#define PACKAGE_VERSION "unknown"
#endif

/* STAT lines are lineproto's. */
static void
stat_text(struct evbuffer *out, const char *name, const char *value)
{
    lp_format_stat_text(out, name, value);
}

static void
stat_u64(struct evbuffer *out, const char *name, uint64_t v)
{
    lp_format_stat_u64(out, name, v);
}

static void
stats_bus(struct router *r, struct evbuffer *out)
{
    struct bus_stats st;

    memset(&st, 0, sizeof st);
    st.state = r->state;
    st.state_since = r->state_since;
    if (r->bus != NULL)
        bus_get_stats(r->bus, &st);
    stat_text(out, "bus_state", bus_state_name(st.state));
    stat_u64(out, "bus_state_since", (uint64_t)st.state_since);
    stat_u64(out, "bus_connects", st.connects);
    stat_u64(out, "bus_reconnects", st.reconnects);
    stat_u64(out, "bus_auth_failures", st.auth_failures);
    stat_u64(out, "bus_protocol_errors", st.protocol_errors);
    stat_u64(out, "bus_heartbeat_timeouts", st.heartbeat_timeouts);
    stat_u64(out, "bus_heartbeats_in", st.heartbeats_in);
    stat_text(out, "bus_heartbeat", st.heartbeat != NULL ? st.heartbeat : "off");
    stat_text(out, "bus_confirm", st.confirm != NULL ? st.confirm : "off");
    if (st.client_id != NULL && st.client_id[0] != '\0')
        stat_text(out, "bus_client_id", st.client_id);
    stat_text(out, "bus_last_error", st.last_error[0] ? st.last_error : "-");
    stat_u64(out, "bus_msgs_in", st.msgs_in);
    stat_u64(out, "bus_msgs_out", st.msgs_out);
    stat_u64(out, "bus_bytes_in", st.bytes_in);
    stat_u64(out, "bus_bytes_out", st.bytes_out);
    stat_u64(out, "bus_output_queued", st.output_queued);
    stat_u64(out, "bus_bytes_lost", st.bytes_lost);
    stat_u64(out, "bus_congested", r->congested);
}

static void
stats_memory(const struct client *c, struct evbuffer *out)
{
    struct router_memory_stats m;

    c->port->memory(&m);
    stat_u64(out, "memory_queued", m.bytes);
    stat_u64(out, "memory_queued_peak", m.peak);
    stat_u64(out, "memory_budget_closes", m.closes);
    stat_u64(out, "memory_budget_pauses", m.pauses);
    stat_u64(out, "memory_budget_paused", m.paused);
    stat_u64(out, "memory_trims", m.trims);
}

static void
stats_router(struct router *r, const struct client *c, struct evbuffer *out)
{
    stat_u64(out, "sessions", HASH_COUNT(r->clients));
    stat_u64(out, "sessions_total", r->n.sessions_total);
    stat_u64(out, "slow_consumers", r->n.slow_consumers);
    stats_memory(c, out);
    stat_u64(out, "topics", HASH_COUNT(r->topics));
    stat_u64(out, "subscriptions", r->n_subscriptions);
    stat_u64(out, "notifications", r->n_notify_feeds);
    stat_u64(out, "authorizers", r->n_authorizer_feeds);
    stat_u64(out, "data_in", r->n.data_in);
    stat_u64(out, "data_delivered", r->n.data_delivered);
    stat_u64(out, "data_dropped_unwanted", r->n.data_dropped_unwanted);
    stat_u64(out, "notifications_in", r->n.notifications_in);
    stat_u64(out, "notifications_unrouted", r->n.notifications_unrouted);
    stat_u64(out, "auth_requests", r->n.auth_requests);
    stat_u64(out, "auth_requests_unrouted", r->n.auth_requests_unrouted);
    stat_u64(out, "auth_requests_pending", r->n_pending);
    stat_u64(out, "image_cache_bytes", r->cache_bytes);
    stat_u64(out, "image_cache_refused", r->n.cache_refused);
    stat_u64(out, "remote_subscriptions", r->n_remotes);
    stat_u64(out, "remote_subscriptions_dropped", r->n.remotes_dropped);
    stat_u64(out, "busdown_queued", r->queue_count);
    stat_u64(out, "busdown_queued_bytes", evbuffer_get_length(r->queue));
    stat_u64(out, "busdown_queued_total", r->n.busdown_queued_total);
    stat_u64(out, "busdown_lost", r->n.busdown_lost);
    stat_u64(out, "bus_messages_ignored", r->n.bus_other);
    stat_text(out, "access", r->access != NULL ? "rules" : "off");
    stat_u64(out, "access_rules", r->access != NULL ? r->access->n : 0);
    stat_u64(out, "access_denied", r->n.perm_denied);
    stat_u64(out, "access_revoked", r->n.revoked);
}

static void
stats_limits(struct router *r, struct evbuffer *out)
{
    stat_u64(out, "limit.max_sessions", r->listen.max_sessions);
    stat_u64(out, "limit.max_line", r->listen.max_line);
    stat_u64(out, "limit.max_payload", r->listen.max_payload);
    stat_u64(out, "limit.max_packets", r->listen.max_packets);
    stat_u64(out, "limit.max_name", r->max_name);
    stat_u64(out, "limit.max_entitlements", r->max_entitlements);
    stat_u64(out, "limit.max_subscriptions", r->listen.max_subscriptions);
    stat_u64(out, "limit.max_notifications", r->listen.max_notifications);
    stat_u64(out, "limit.max_authorizers", r->listen.max_authorizers);
    stat_u64(out, "limit.max_output", r->listen.max_output);
    stat_u64(out, "limit.max_memory", r->listen.max_memory);
    stat_u64(out, "limit.image_cache_bytes", r->cfg.image_cache_bytes);
    stat_u64(out, "limit.image_cache_total", r->cfg.image_cache_total);
    stat_u64(out, "limit.busdown_queue", r->cfg.busdown_queue);
    stat_u64(out, "limit.busdown_queue_bytes", r->cfg.busdown_queue_bytes);
    stat_u64(out, "limit.allow_empty_publish", r->cfg.allow_empty_publish);
    stat_u64(out, "limit.auth_pending", r->cfg.auth_pending);
    stat_u64(out, "limit.auth_pending_age_ms", r->cfg.auth_pending_age_ms);
}

void
rt_cmd_stats(struct router *r, struct client *c)
{
    struct evbuffer *out = rt_output(c);
    struct client *o, *tmp;
    struct router_conn_stats st;

    rt_pending_expire(r);
    stat_text(out, "version", PACKAGE_VERSION);
    stat_u64(out, "uptime", (uint64_t)(time(NULL) - r->started));
    stats_bus(r, out);
    stats_router(r, c, out);
    stats_limits(r, out);
    HASH_ITER(hh, r->clients, o, tmp) {
        o->port->stats(o->s, &st);
        evbuffer_add_printf(out, "STAT session %" PRIu64 " pid=%d uid=%d gid=%d subs=%u "
            "in=%" PRIu64 " out=%" PRIu64 " queued=%zu denied=%" PRIu64 " revoked=%"
            PRIu64 " user=", o->id, (int)o->peer.pid, (int)o->peer.uid, (int)o->peer.gid,
            o->n_subs, st.cmds_in, st.events_out, st.queued, o->perm_denied, o->revoked);
        /* The name comes from the user database: written as a name token. */
        lp_put_name(out, o->user, strlen(o->user));
        if (o->app != NULL) {
            evbuffer_add(out, " app=", 5);
            lp_put_name(out, o->app, strlen(o->app));
        }
        evbuffer_add_printf(out, "%s\n", o == c ? " self" : "");
    }
    lp_format_end(out);
    rt_flush(c);
}
