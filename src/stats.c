/*
 * STATS: every counter and limit of the router, the bus link and the
 * sessions, gathered into one snapshot (statsfmt) that STATS, /metrics
 * and the CLI render; and the per-session and link views.
 */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <event2/buffer.h>

#include "router-int.h"
#include "statsfmt.h"

#ifndef PACKAGE_VERSION
#define PACKAGE_VERSION "unknown"
#endif

/* The bus link's stats, with the router's view of its state. */
static void
bus_stats_of(const struct router *r, struct bus_stats *st)
{
    memset(st, 0, sizeof *st);
    st->state = r->state;
    st->state_since = r->state_since;
    if (r->bus != NULL)
        bus_get_stats(r->bus, st);
}

static void
snap_bus(struct router *r, struct statsfmt *sf, time_t now)
{
    struct bus_stats st;

    bus_stats_of(r, &st);
    statsfmt_text(sf, "bus_state", bus_state_name(st.state));
    statsfmt_u64(sf, "bus_state_since", (uint64_t)st.state_since);
    statsfmt_u64(sf, "bus_connects", st.connects);
    statsfmt_u64(sf, "bus_reconnects", st.reconnects);
    statsfmt_u64(sf, "bus_auth_failures", st.auth_failures);
    statsfmt_u64(sf, "bus_protocol_errors", st.protocol_errors);
    statsfmt_u64(sf, "bus_heartbeat_timeouts", st.heartbeat_timeouts);
    statsfmt_u64(sf, "bus_heartbeats_in", st.heartbeats_in);
    if (st.last_heartbeat != 0)
        statsfmt_u64(sf, "bus_heartbeat_age",
            now > st.last_heartbeat ? (uint64_t)(now - st.last_heartbeat) : 0);
    statsfmt_text(sf, "bus_heartbeat", st.heartbeat != NULL ? st.heartbeat : "off");
    statsfmt_text(sf, "bus_confirm", st.confirm != NULL ? st.confirm : "off");
    if (st.client_id != NULL && st.client_id[0] != '\0')
        statsfmt_text(sf, "bus_client_id", st.client_id);
    statsfmt_text(sf, "bus_last_error", st.last_error[0] ? st.last_error : "-");
    statsfmt_u64(sf, "bus_msgs_in", st.msgs_in);
    statsfmt_u64(sf, "bus_msgs_out", st.msgs_out);
    statsfmt_u64(sf, "bus_bytes_in", st.bytes_in);
    statsfmt_u64(sf, "bus_bytes_out", st.bytes_out);
    statsfmt_u64(sf, "bus_output_queued", st.output_queued);
    statsfmt_u64(sf, "bus_bytes_lost", st.bytes_lost);
    statsfmt_u64(sf, "bus_congested", r->congested);
}

/* The sessions' memory budget; zeros before the first session. */
static void
snap_memory(const struct router *r, struct statsfmt *sf)
{
    struct router_memory_stats m;

    memset(&m, 0, sizeof m);
    if (r->port != NULL)
        r->port->memory(&m);
    statsfmt_u64(sf, "memory_queued", m.bytes);
    statsfmt_u64(sf, "memory_queued_peak", m.peak);
    statsfmt_u64(sf, "memory_budget_closes", m.closes);
    statsfmt_u64(sf, "memory_budget_pauses", m.pauses);
    statsfmt_u64(sf, "memory_budget_paused", m.paused);
    statsfmt_u64(sf, "memory_trims", m.trims);
    statsfmt_u64(sf, "sessions_closed_peer", m.closed[ROUTER_CLOSED_PEER]);
    statsfmt_u64(sf, "sessions_closed_quit", m.closed[ROUTER_CLOSED_QUIT]);
    statsfmt_u64(sf, "sessions_closed_error", m.closed[ROUTER_CLOSED_ERROR]);
    statsfmt_u64(sf, "sessions_closed_shutdown", m.closed[ROUTER_CLOSED_SHUTDOWN]);
    statsfmt_u64(sf, "sessions_closed_other", m.closed[ROUTER_CLOSED_OTHER]);
    statsfmt_u64(sf, "sessions_refused", m.refused);
    statsfmt_u64(sf, "sessions_msgs_in", m.cmds_in);
    statsfmt_u64(sf, "sessions_bytes_in", m.bytes_in);
    statsfmt_u64(sf, "sessions_msgs_out", m.events_out);
    statsfmt_u64(sf, "sessions_bytes_out", m.bytes_out);
}

static void
snap_router(struct router *r, struct statsfmt *sf)
{
    statsfmt_u64(sf, "sessions", HASH_COUNT(r->clients));
    statsfmt_u64(sf, "sessions_total", r->n.sessions_total);
    statsfmt_u64(sf, "slow_consumers", r->n.slow_consumers);
    snap_memory(r, sf);
    statsfmt_u64(sf, "topics", HASH_COUNT(r->topics));
    statsfmt_u64(sf, "subscriptions", r->n_subscriptions);
    statsfmt_u64(sf, "notifications", r->n_notify_feeds);
    statsfmt_u64(sf, "authorizers", r->n_authorizer_feeds);
    statsfmt_u64(sf, "data_in", r->n.data_in);
    statsfmt_u64(sf, "data_delivered", r->n.data_delivered);
    statsfmt_u64(sf, "data_dropped_unwanted", r->n.data_dropped_unwanted);
    statsfmt_u64(sf, "notifications_in", r->n.notifications_in);
    statsfmt_u64(sf, "notifications_unrouted", r->n.notifications_unrouted);
    statsfmt_u64(sf, "auth_requests", r->n.auth_requests);
    statsfmt_u64(sf, "auth_requests_unrouted", r->n.auth_requests_unrouted);
    statsfmt_u64(sf, "auth_requests_pending", r->n_pending);
    statsfmt_u64(sf, "image_cache_bytes", r->cache_bytes);
    statsfmt_u64(sf, "image_cache_refused", r->n.cache_refused);
    statsfmt_u64(sf, "remote_subscriptions", r->n_remotes);
    statsfmt_u64(sf, "remote_subscriptions_dropped", r->n.remotes_dropped);
    statsfmt_u64(sf, "busdown_queued", r->queue_count);
    statsfmt_u64(sf, "busdown_queued_bytes", evbuffer_get_length(r->queue));
    statsfmt_u64(sf, "busdown_queued_total", r->n.busdown_queued_total);
    statsfmt_u64(sf, "busdown_lost", r->n.busdown_lost);
    statsfmt_u64(sf, "bus_messages_ignored", r->n.bus_other);
    statsfmt_text(sf, "access", r->access != NULL ? "rules" : "off");
    statsfmt_u64(sf, "access_rules", r->access != NULL ? r->access->n : 0);
    statsfmt_u64(sf, "access_denied", r->n.perm_denied);
    statsfmt_u64(sf, "access_revoked", r->n.revoked);
}

static void
snap_limits(const struct router *r, struct statsfmt *sf)
{
    statsfmt_u64(sf, "limit.max_sessions", r->listen.max_sessions);
    statsfmt_u64(sf, "limit.max_line", r->listen.max_line);
    statsfmt_u64(sf, "limit.max_payload", r->listen.max_payload);
    statsfmt_u64(sf, "limit.max_packets", r->listen.max_packets);
    statsfmt_u64(sf, "limit.max_name", r->max_name);
    statsfmt_u64(sf, "limit.max_entitlements", r->max_entitlements);
    statsfmt_u64(sf, "limit.max_subscriptions", r->listen.max_subscriptions);
    statsfmt_u64(sf, "limit.max_notifications", r->listen.max_notifications);
    statsfmt_u64(sf, "limit.max_authorizers", r->listen.max_authorizers);
    statsfmt_u64(sf, "limit.max_output", r->listen.max_output);
    statsfmt_u64(sf, "limit.max_memory", r->listen.max_memory);
    statsfmt_u64(sf, "limit.image_cache_bytes", r->cfg.image_cache_bytes);
    statsfmt_u64(sf, "limit.image_cache_total", r->cfg.image_cache_total);
    statsfmt_u64(sf, "limit.busdown_queue", r->cfg.busdown_queue);
    statsfmt_u64(sf, "limit.busdown_queue_bytes", r->cfg.busdown_queue_bytes);
    statsfmt_u64(sf, "limit.allow_empty_publish", r->cfg.allow_empty_publish);
    statsfmt_u64(sf, "limit.auth_pending", r->cfg.auth_pending);
    statsfmt_u64(sf, "limit.auth_pending_age_ms", r->cfg.auth_pending_age_ms);
}

int
router_stats_snapshot(struct router *r, struct statsfmt *sf)
{
    time_t now = time(NULL);

    rt_pending_expire(r);
    statsfmt_text(sf, "version", PACKAGE_VERSION);
    /* Monotonic: a wall clock stepped back would make now - started
     * negative (a huge unsigned), one stepped forward would jump it. */
    statsfmt_u64(sf, "uptime", (rt_mono_ms() - r->started_ms) / 1000u);
    statsfmt_u64(sf, "start_time", (uint64_t)r->started);
    snap_bus(r, sf, now);
    snap_router(r, sf);
    snap_limits(r, sf);
    return 0;
}

bool
router_ready(const struct router *r, char *reason, size_t len)
{
    struct bus_stats st;

    bus_stats_of(r, &st);
    if (st.state == BUS_UP)
        return true;
    snprintf(reason, len, "bus %s since %lld: %s", bus_state_name(st.state),
        (long long)st.state_since, st.last_error[0] ? st.last_error : "-");
    return false;
}

/* Seconds from then to now, 0 if the clock went back. */
static uint64_t
age(time_t now, time_t then)
{
    return now > then ? (uint64_t)(now - then) : 0;
}

/* " app=<name>" when the session named itself (NAME), as a name token. */
static void
put_app(struct evbuffer *out, const struct client *o)
{
    if (o->app == NULL)
        return;
    evbuffer_add(out, " app=", 5);
    lp_put_name(out, o->app, strlen(o->app));
}

/* STATS: the snapshot, then one "STAT session" line per session. */
static void
stats_all(struct router *r, struct client *c, struct evbuffer *out)
{
    struct statsfmt *sf = statsfmt_new();
    struct client *o, *tmp;
    struct router_conn_stats st;

    if (sf != NULL && router_stats_snapshot(r, sf) == 0)
        statsfmt_render_stat(sf, out);
    statsfmt_free(sf);
    HASH_ITER(hh, r->clients, o, tmp) {
        o->port->stats(o->s, &st);
        evbuffer_add_printf(out,
            "STAT session %" PRIu64 " pid=%d uid=%d gid=%d subs=%u "
            "in=%" PRIu64 " out=%" PRIu64 " queued=%zu denied=%" PRIu64 " revoked=%" PRIu64
            " user=",
            o->id, (int)o->peer.pid, (int)o->peer.uid, (int)o->peer.gid, o->n_subs,
            st.cmds_in, st.events_out, st.queued, o->perm_denied, o->revoked);
        /* The name comes from the user database: written as a name token. */
        lp_put_name(out, o->user, strlen(o->user));
        put_app(out, o);
        evbuffer_add_printf(out, "%s\n", o == c ? " self" : "");
    }
}

/* STATS SESSIONS: one line per session, everything known of it (app=-
 * for a session that did not name itself). */
static void
stats_sessions(struct router *r, struct client *c, struct evbuffer *out)
{
    struct client *o, *tmp;
    struct router_conn_stats st;
    time_t now = time(NULL);

    HASH_ITER(hh, r->clients, o, tmp) {
        memset(&st, 0, sizeof st);
        o->port->stats(o->s, &st);
        evbuffer_add_printf(out, "STAT session %" PRIu64 " pid=%d uid=%d", o->id,
            (int)o->peer.pid, (int)o->peer.uid);
        if (o->app != NULL)
            put_app(out, o);
        else
            evbuffer_add(out, " app=-", 6);
        evbuffer_add_printf(out,
            " age=%" PRIu64 " idle=%" PRIu64 " subs=%u msgs_in=%" PRIu64
            " bytes_in=%" PRIu64 " msgs_out=%" PRIu64 " bytes_out=%" PRIu64
            " queued=%zu state=%s%s\n",
            age(now, st.started), age(now, st.last_input), o->n_subs, st.cmds_in,
            st.bytes_in, st.events_out, st.bytes_out, st.queued,
            st.state != NULL ? st.state : "open", o == c ? " self" : "");
    }
}

/* STATS LINK: the bus link as an operator debugging it wants it. */
static void
stats_link(struct router *r, struct evbuffer *out)
{
    struct statsfmt *sf = statsfmt_new();
    struct bus_stats st;
    char server[300];
    time_t now = time(NULL);

    if (sf == NULL)
        return;
    bus_stats_of(r, &st);
    snprintf(server, sizeof server, "%s:%u%s%s%s", st.host != NULL ? st.host : "-", st.port,
        st.server != NULL && st.server[0] ? " (" : "", st.server != NULL ? st.server : "",
        st.server != NULL && st.server[0] ? ")" : "");
    statsfmt_text(sf, "state", bus_state_name(st.state));
    statsfmt_u64(sf, "since", (uint64_t)st.state_since);
    statsfmt_text(sf, "server", server);
    statsfmt_text(sf, "tls_version", st.tls_version != NULL ? st.tls_version : "-");
    statsfmt_text(sf, "tls_cipher", st.tls_cipher != NULL ? st.tls_cipher : "-");
    statsfmt_u64(sf, "protocol", (uint64_t)st.protocol);
    statsfmt_u64(sf, "reconnects", st.reconnects);
    statsfmt_text(sf, "last_error", st.last_error[0] ? st.last_error : "-");
    if (st.last_heartbeat != 0)
        statsfmt_u64(sf, "heartbeat_age", age(now, st.last_heartbeat));
    else
        statsfmt_text(sf, "heartbeat_age", "-");
    statsfmt_text(sf, "heartbeat", st.heartbeat != NULL ? st.heartbeat : "off");
    statsfmt_text(sf, "confirm", st.confirm != NULL ? st.confirm : "off");
    statsfmt_render_stat(sf, out);
    statsfmt_free(sf);
}

void
rt_cmd_stats(struct router *r, struct client *c, enum lp_stats_view view)
{
    struct evbuffer *out = rt_output(c);

    switch (view) {
    case LP_STATS_SESSIONS:
        stats_sessions(r, c, out);
        break;
    case LP_STATS_LINK:
        stats_link(r, out);
        break;
    default:
        stats_all(r, c, out);
        break;
    }
    lp_format_end(out);
    rt_flush(c, 0); /* a reply, not events */
}
