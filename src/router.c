/*
 * The router: the tables that say who wants what, and the two data paths
 * through them (bus -> local sessions, local session -> bus). This file
 * holds topics and clients, command dispatch, the bus link's state and the
 * life cycle; router-int.h lists the other parts.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/buffer.h>
#include <event2/event.h>

#include "log.h"
#include "router-int.h"

#ifndef PACKAGE_VERSION
#define PACKAGE_VERSION "unknown"
#endif

/* ---- small helpers ---- */

/* The three states the line protocol knows. */
static const char *
local_state_name(enum bus_state st)
{
    switch (st) {
    case BUS_UP:
        return "up";
    case BUS_UNCONFIRMED:
        return "unconfirmed";
    default:
        return "down";
    }
}

uint64_t
rt_mono_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

void *
rt_xcalloc(size_t n)
{
    void *p = calloc(1, n);

    if (p == NULL)
        fatalx("out of memory (%zu bytes)", n);
    return p;
}

/* Grow the lookup-key scratch to n bytes. */
char *
rt_key_room(struct router *r, size_t n)
{
    if (n > r->key_cap) {
        size_t cap = r->key_cap ? r->key_cap : 256;
        char *p;

        while (cap < n)
            cap *= 2;
        if ((p = realloc(r->key, cap)) == NULL)
            fatalx("out of memory (%zu bytes)", cap);
        r->key = p;
        r->key_cap = cap;
    }
    return r->key;
}

/* (feed, topic) as one unambiguous byte string. */
static size_t
topic_key(char *k, const char *feed, uint32_t flen, const char *topic, uint32_t tlen)
{
    memcpy(k, &flen, 4);
    memcpy(k + 4, feed, flen);
    k[4 + flen] = '\0';
    memcpy(k + 5 + flen, topic, tlen);
    k[5 + flen + tlen] = '\0';
    return (size_t)flen + tlen + 6;
}

/* The opaque handle of router.h is the client record itself. */
static struct client *
client_of(struct router_client *rc)
{
    return (struct client *)(void *)rc;
}

static struct router_client *
handle_of(struct client *c)
{
    return (struct router_client *)(void *)c;
}

void
rt_reply_err(struct client *c, enum lp_error e, const char *fmt, ...)
{
    char msg[512];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    c->port->reply(c->s, e, msg);
}

/* ---- access control ---- */

/* Why a decision denies, for -ERR perm, REVOKED and the log. */
static void
deny_reason(const struct access_decision *d, char *buf, size_t len)
{
    if (d->rule != NULL)
        snprintf(buf, len, "denied by access rule %zu (line %u)", d->index, d->rule->line);
    else
        snprintf(buf, len, "no access rule allows it");
}

static struct access_decision
decide(const struct router *r, const struct client *c, enum access_verb verb,
    const char *feed, size_t feed_len)
{
    return access_check(r->access, &c->who, verb, feed, feed_len);
}

/* rt_permit's refusal: answered (-ERR perm), counted and logged; the log
 * rate-limits a flood. Out of line, so that an allowed command (nearly
 * every one) does not pay this frame's setup. */
static bool __attribute__((cold, noinline)) deny(struct router *r, struct client *c,
    enum access_verb verb, const struct lp_name *feed, const struct access_decision *d)
{
    const char *fp = feed != NULL ? feed->ptr : "";
    size_t flen = feed != NULL ? feed->len : 0;
    char why[128];

    deny_reason(d, why, sizeof why);
    c->perm_denied++;
    r->n.perm_denied++;
    log_notice("access: session %llu (%s, uid %u, pid %d%s%s) may not %s%s%.*s: %s",
        (unsigned long long)c->id, c->user, (unsigned)c->peer.uid, (int)c->peer.pid,
        c->app != NULL ? ", app " : "", c->app != NULL ? c->app : "",
        access_verb_name(verb), feed != NULL ? " " : "", (int)flen, fp, why);
    if (feed != NULL)
        rt_reply_err(c, LP_ERR_PERM, "%s %.*s: %s", access_verb_name(verb), (int)flen, fp,
            why);
    else
        rt_reply_err(c, LP_ERR_PERM, "%s: %s", access_verb_name(verb), why);
    return false;
}

/* rt_permit with access rules; a refusal goes to deny. */
bool
rt_permit_by_rules(struct router *r, struct client *c, enum access_verb verb,
    const struct lp_name *feed)
{
    struct access_decision d =
        decide(r, c, verb, feed != NULL ? feed->ptr : "", feed != NULL ? feed->len : 0);

    return d.allow || deny(r, c, verb, feed, &d);
}

/* The client's identity from its credentials and the user database. */
static void
client_identify(struct router *r, struct client *c)
{
    const struct peerid_user *u = peerid_lookup(r->ids, c->peer.uid, c->peer.gid);
    gid_t *groups = NULL;

    if (u->n_groups > 0) {
        groups = rt_xcalloc(u->n_groups * sizeof *groups);
        memcpy(groups, u->groups, u->n_groups * sizeof *groups);
    }
    free(c->user);
    free((gid_t *)c->who.groups);
    if ((c->user = strdup(u->name)) == NULL)
        fatalx("out of memory (user name)");
    c->who.uid = c->peer.uid;
    c->who.gid = c->peer.gid;
    c->who.groups = groups;
    c->who.n_groups = u->n_groups;
}

/* ---- topics ---- */

struct topic *
rt_topic_find(struct router *r, const char *feed, uint32_t flen, const char *topic,
    uint32_t tlen)
{
    char *k = rt_key_room(r, (size_t)flen + tlen + 6);
    size_t klen = topic_key(k, feed, flen, topic, tlen);
    struct topic *t;

    HASH_FIND(hh, r->topics, k, klen, t);
    return t;
}

/* Eight recent slots a topic, so that most topics have one of their own:
 * grown (and emptied: it is only a cache) as topics are added, never
 * shrunk. Without the memory it stays as it was. */
static void
recent_fit(struct router *r)
{
    size_t want = (size_t)HASH_COUNT(r->topics) * 8, n = r->recent_mask + 1;
    struct topic **a;

    if (r->recent != NULL && want <= n)
        return;
    if (n < 1024)
        n = 1024;
    while (n < want)
        n *= 2;
    if ((a = calloc(n, sizeof *a)) == NULL)
        return;
    free(r->recent);
    r->recent = a;
    r->recent_mask = n - 1;
}

static struct topic *
topic_new(struct router *r, const struct lp_name *feed, const struct lp_name *topic)
{
    size_t klen = (size_t)feed->len + topic->len + 6;
    struct wire_str f = { feed->ptr, feed->len }, n = { topic->ptr, topic->len };
    size_t plen = lp_data_prefix(NULL, &f, &n);
    struct topic *t = rt_xcalloc(sizeof *t + klen + plen);

    t->keylen = topic_key(t->key, feed->ptr, feed->len, topic->ptr, topic->len);
    t->feed.ptr = t->key + 4;
    t->feed.len = feed->len;
    t->name.ptr = t->key + 5 + feed->len;
    t->name.len = topic->len;
    t->prefix = t->key + klen;
    t->prefix_len = lp_data_prefix(t->key + klen, &t->feed, &t->name);
    LIST_INIT(&t->subs);
    HASH_ADD(hh, r->topics, key, t->keylen, t);
    recent_fit(r);
    return t;
}

void
rt_topic_unqueue(struct router *r, struct topic *t)
{
    if (t->replay_queued) {
        TAILQ_REMOVE(&r->replay_topics, t, replay);
        t->replay_queued = false;
    }
}

static void
topic_free(struct router *r, struct topic *t)
{
    if (r->batch_topic == t)
        rt_batch_flush(r);
    if (r->last_topic == t)
        r->last_topic = NULL;
    if (r->recent != NULL) {
        struct topic **slot = rt_recent(r, t->name.ptr, t->name.len);

        if (*slot == t)
            *slot = NULL;
    }
    rt_topic_unqueue(r, t);
    rt_cache_drop(r, t);
    HASH_DEL(r->topics, t);
    free(t);
}

/* ---- the bus link ---- */

void
router_bus_message(struct router *r, const struct wire_msg *msg)
{
    if (msg->type != WIRE_FORWARDED_MULTICAST && msg->type != WIRE_FORWARDED_UNICAST)
        rt_batch_flush(r);
    switch (msg->type) {
    case WIRE_FORWARDED_MULTICAST:
    case WIRE_FORWARDED_UNICAST:
        rt_route_data(r, msg);
        break;
    case WIRE_FORWARDED_SUBSCRIPTION:
        rt_route_notification(r, msg);
        break;
    case WIRE_AUTHORIZATION_REQUEST:
        rt_route_authreq(r, msg);
        break;
    default:
        r->n.bus_other++;
        log_debug("bus sent %s, which no client receives: ignored",
            wire_type_name(msg->type));
        break;
    }
}

/* The link went: what the bus told us no longer holds. Pending
 * authorization requests stay (see rt_pending_expire). */
static void
link_lost(struct router *r)
{
    struct topic *t, *ttmp;
    struct feed *f, *ftmp;

    rt_replay_cancel(r);
    HASH_ITER(hh, r->topics, t, ttmp)
        rt_cache_drop(r, t);
    HASH_ITER(hh, r->feeds, f, ftmp) {
        rt_remotes_end(r, f);
        rt_remotes_clear(r, f);
        rt_feed_maybe_free(r, f);
    }
    if (r->congested) {
        r->congested = false;
        router_bus_drained(r);
    }
}

void
router_bus_state(struct router *r, enum bus_state state, const char *reason)
{
    enum bus_state old = r->state;
    const char *name = local_state_name(state);

    rt_batch_flush(r); /* events read before the change go out first */
    /* As the link's own stamp: retries within one outage keep its start. */
    if (rt_linked(old) || rt_linked(state))
        r->state_since = time(NULL);
    r->state = state;
    if (name != r->announced) {
        r->announced = name;
        if (lp_format_bus(r->scratch, name, state == BUS_DOWN ? reason : NULL) == 0)
            rt_deliver_all(r);
        else
            evbuffer_drain(r->scratch, evbuffer_get_length(r->scratch));
    }
    if (rt_linked(old) && !rt_linked(state))
        link_lost(r); /* after BUS down: the removes it sends are its consequence */
    if (!rt_linked(old) && rt_linked(state))
        rt_replay_upstream(r);
    else if (state == BUS_UP && !r->replaying)
        rt_queue_flush(r); /* confirmed: the data held for the login */
}

void
router_set_bus(struct router *r, struct bus *bus)
{
    r->bus = bus;
}

const char *
router_bus_state_name(const struct router *r)
{
    return local_state_name(r->state);
}

/* ---- sessions ---- */

/* What a session's commands are parsed against: listen.max_payload and
 * max_packets, and the bus string and entitlement limits (a name the
 * gateway could not read back from the bus is refused up front). */
static void
lp_limits_of(const struct router *r, struct lp_limits *lim)
{
    lim->max_name = r->max_name;
    lim->max_payload = r->listen.max_payload;
    lim->max_packets = r->listen.max_packets;
    lim->max_entitlements = r->max_entitlements;
    lim->bus_protocol = (uint32_t)r->bus_protocol;
}

void
router_greeting(const struct router *r, struct evbuffer *out)
{
    struct lp_limits lim;

    lp_limits_of(r, &lim);
    lp_format_hello(out, PACKAGE_VERSION, &lim, r->listen.max_line,
        &(struct lp_session_limits){ r->listen.max_subscriptions,
            r->listen.max_notifications, r->listen.max_authorizers },
        r->listen.max_output, local_state_name(r->state));
}

struct router_client *
router_session_attach(struct router *r, struct session *s, const struct router_port *port,
    uint64_t id, const struct peer_cred *peer)
{
    struct client *c = rt_xcalloc(sizeof *c);

    c->s = s;
    c->port = port;
    r->port = port;
    c->id = id;
    c->peer = *peer;
    client_identify(r, c);
    LIST_INIT(&c->subs);
    LIST_INIT(&c->notifies);
    LIST_INIT(&c->authorizes);
    HASH_ADD_PTR(r->clients, s, c);
    r->n.sessions_total++;
    router_greeting(r, rt_output(c));
    if (r->congested)
        port->pause(s, true);
    return handle_of(c);
}

static void
sub_remove(struct router *r, struct sub *sb)
{
    struct topic *t = sb->topic;

    LIST_REMOVE(sb, by_topic);
    LIST_REMOVE(sb, by_client);
    t->n_subs--;
    sb->client->n_subs--;
    r->n_subscriptions--;
    free(sb);
    if (t->n_subs == 0) {
        /* Still waiting for the replay: never subscribed on this link. */
        if (!t->replay_queued)
            rt_upstream_subscription(r, t, false);
        topic_free(r, t);
    }
}

/* Drop everything a session registered, sending what the bus must know. */
static void
client_release(struct router *r, struct client *c)
{
    while (!LIST_EMPTY(&c->subs))
        sub_remove(r, LIST_FIRST(&c->subs));
    while (!LIST_EMPTY(&c->notifies))
        rt_notify_remove(r, LIST_FIRST(&c->notifies));
    while (!LIST_EMPTY(&c->authorizes))
        rt_authorizer_remove(r, LIST_FIRST(&c->authorizes));
}

void
router_session_closing(struct router *r, struct router_client *rc)
{
    struct client *c = client_of(rc);

    if (c == NULL || c->closing)
        return;
    c->closing = true;
    client_release(r, c);
}

const char *
router_session_app(const struct router_client *rc)
{
    const struct client *c = (const struct client *)(const void *)rc;

    return c != NULL ? c->app : NULL;
}

void
router_session_detach(struct router *r, struct router_client *rc)
{
    struct client *c = client_of(rc);

    if (c == NULL)
        return;
    if (!c->closing)
        client_release(r, c);
    HASH_DEL(r->clients, c);
    free(c->user);
    free(c->app);
    free((gid_t *)c->who.groups);
    free(c);
}

void
router_count_slow_consumer(struct router *r)
{
    r->n.slow_consumers++;
}

unsigned
router_session_count(const struct router *r)
{
    return HASH_COUNT(r->clients);
}

/* ---- commands ---- */

/* A session's subscription to t, walking the shorter of the two lists. */
static struct sub *
sub_find(struct client *c, struct topic *t)
{
    struct sub *sb;

    if (t == NULL)
        return NULL;
    if (c->n_subs <= t->n_subs) {
        LIST_FOREACH(sb, &c->subs, by_client)
            if (sb->topic == t)
                return sb;
    } else {
        LIST_FOREACH(sb, &t->subs, by_topic)
            if (sb->client == c)
                return sb;
    }
    return NULL;
}

/* A session's role on a feed: a hash lookup, whatever its number of roles. */
struct role *
rt_role_find(struct role *by_feed, const struct feed *f)
{
    struct role *ro;

    HASH_FIND_PTR(by_feed, &f, ro);
    return ro;
}

static void
cmd_sub(struct router *r, struct client *c, const struct lp_cmd *cmd)
{
    struct topic *t =
        rt_topic_find(r, cmd->feed.ptr, cmd->feed.len, cmd->topic.ptr, cmd->topic.len);
    struct sub *sb;
    bool first = t == NULL;

    if (!rt_permit(r, c, ACCESS_SUBSCRIBE, &cmd->feed))
        return;
    if (sub_find(c, t) != NULL) {
        rt_reply_err(c, LP_ERR_ALREADY_SUBSCRIBED, "already subscribed to this topic");
        return;
    }
    if (c->n_subs >= r->listen.max_subscriptions) {
        rt_reply_err(c, LP_ERR_TOO_MANY_SUBSCRIPTIONS,
            "at most %u subscriptions per session", r->listen.max_subscriptions);
        return;
    }
    if (first)
        t = topic_new(r, &cmd->feed, &cmd->topic);
    sb = rt_xcalloc(sizeof *sb);
    sb->topic = t;
    sb->client = c;
    LIST_INSERT_HEAD(&t->subs, sb, by_topic);
    LIST_INSERT_HEAD(&c->subs, sb, by_client);
    t->n_subs++;
    c->n_subs++;
    r->n_subscriptions++;
    rt_reply_ok(c);
    if (first)
        rt_upstream_subscription(r, t, true);
    else
        rt_cache_replay(r, t, c);
}

static void
cmd_unsub(struct router *r, struct client *c, const struct lp_cmd *cmd)
{
    struct topic *t =
        rt_topic_find(r, cmd->feed.ptr, cmd->feed.len, cmd->topic.ptr, cmd->topic.len);
    struct sub *sb = sub_find(c, t);

    if (sb == NULL) {
        rt_reply_err(c, LP_ERR_NOT_SUBSCRIBED, "not subscribed to this topic");
        return;
    }
    sub_remove(r, sb);
    rt_reply_ok(c);
}

/* NAME: a label for logs and STATS; it grants nothing. */
static void
cmd_name(struct client *c, const struct lp_cmd *cmd)
{
    free(c->app);
    if ((c->app = strndup(cmd->app.ptr, cmd->app.len)) == NULL)
        fatalx("out of memory (app name)");
    rt_reply_ok(c);
}

static void
cmd_ping(struct router *r, struct client *c, const struct lp_cmd *cmd)
{
    struct evbuffer *out = rt_output(c);

    lp_format_pong(out, cmd->token.ptr, cmd->token.len);
    rt_flush(c, 0); /* a reply, not an event */
}

/* Every verb but PUB and SEND: out of line, so that the dispatch of a
 * publish needs no frame for the handlers inlined here. */
static void __attribute__((noinline))
command_other(struct router *r, struct client *c, const struct lp_cmd *cmd)
{
    switch (cmd->verb) {
    case LP_SUB:
        cmd_sub(r, c, cmd);
        break;
    case LP_UNSUB:
        cmd_unsub(r, c, cmd);
        break;
    case LP_PUB:
    case LP_SEND: /* router_command takes them; here for -Wswitch */
        rt_cmd_publish(r, c, cmd);
        break;
    case LP_NOTIFY:
        rt_cmd_notify(r, c, cmd);
        break;
    case LP_UNNOTIFY:
        rt_cmd_unnotify(r, c, cmd);
        break;
    case LP_AUTHORIZER:
        rt_cmd_authorizer(r, c, cmd);
        break;
    case LP_UNAUTHORIZER:
        rt_cmd_unauthorizer(r, c, cmd);
        break;
    case LP_AUTHORIZE:
        rt_cmd_authorize(r, c, cmd);
        break;
    case LP_NAME:
        cmd_name(c, cmd);
        break;
    case LP_PING:
        cmd_ping(r, c, cmd);
        break;
    case LP_STATS:
        if (rt_permit(r, c, ACCESS_STATS, NULL))
            rt_cmd_stats(r, c, cmd->stats_view);
        break;
    case LP_VERBOSE:
    case LP_QUIT:
        /* The session handles these itself. */
        rt_reply_ok(c);
        break;
    }
}

void
router_command(struct router *r, struct router_client *rc, const struct lp_cmd *cmd)
{
    struct client *c = client_of(rc);

    if (c == NULL || rt_closing(c))
        return;
    /* The hot verbs go straight to their handler (a tail call). */
    if (cmd->verb == LP_PUB || cmd->verb == LP_SEND)
        rt_cmd_publish(r, c, cmd);
    else
        command_other(r, c, cmd);
}

/* ---- a reload's access rules on live sessions ---- */

/* Tell c that the rules ended one of its registrations (topic NULL: a
 * notifier or authorizer role), before it is removed. */
static void
revoke_note(struct router *r, struct client *c, enum access_verb verb,
    const struct wire_str *feed, const struct wire_str *topic,
    const struct access_decision *d)
{
    char why[128];

    deny_reason(d, why, sizeof why);
    c->revoked++;
    r->n.revoked++;
    lp_format_revoked(rt_output(c), access_verb_name(verb), feed->ptr, feed->len,
        topic != NULL ? topic->ptr : NULL, topic != NULL ? topic->len : 0, why);
    log_notice(
        "access: reload ended %s on %.*s%s%.*s of session %llu (%s, uid %u, pid %d%s%s): "
        "%s",
        access_verb_name(verb), (int)feed->len, feed->ptr, topic != NULL ? " / " : "",
        topic != NULL ? (int)topic->len : 0, topic != NULL ? topic->ptr : "",
        (unsigned long long)c->id, c->user, (unsigned)c->peer.uid, (int)c->peer.pid,
        c->app != NULL ? ", app " : "", c->app != NULL ? c->app : "", why);
}

/* End what c holds that the rules no longer allow; the usual removal paths
 * release the upstream subscription or notification of the last holder. */
static void
client_recheck(struct router *r, struct client *c)
{
    struct sub *sb, *snext;
    struct role *ro, *rnext;
    struct access_decision d;
    uint64_t before = c->revoked;

    LIST_FOREACH_SAFE(sb, &c->subs, by_client, snext) {
        d = decide(r, c, ACCESS_SUBSCRIBE, sb->topic->feed.ptr, sb->topic->feed.len);
        if (!d.allow) {
            revoke_note(r, c, ACCESS_SUBSCRIBE, &sb->topic->feed, &sb->topic->name, &d);
            sub_remove(r, sb);
        }
    }
    LIST_FOREACH_SAFE(ro, &c->notifies, by_client, rnext) {
        d = decide(r, c, ACCESS_NOTIFY, ro->feed->name.ptr, ro->feed->name.len);
        if (!d.allow) {
            revoke_note(r, c, ACCESS_NOTIFY, &ro->feed->name, NULL, &d);
            rt_notify_remove(r, ro);
        }
    }
    LIST_FOREACH_SAFE(ro, &c->authorizes, by_client, rnext) {
        if (ro->feed == r->all_feeds)
            continue; /* its requests are checked one by one */
        d = decide(r, c, ACCESS_AUTHORIZE, ro->feed->name.ptr, ro->feed->name.len);
        if (!d.allow) {
            revoke_note(r, c, ACCESS_AUTHORIZE, &ro->feed->name, NULL, &d);
            rt_authorizer_remove(r, ro);
        }
    }
    if (c->revoked != before)
        rt_flush(c, (unsigned)(c->revoked - before)); /* one REVOKED each */
}

/* ---- life cycle ---- */

static void
router_load_config(struct router *r, const struct config *cfg)
{
    free(r->cfg.image_content_types);
    r->cfg = cfg->router;
    r->cfg.image_content_types = cfg->router.image_content_types != NULL
        ? strdup(cfg->router.image_content_types)
        : NULL;
    if (r->bus_protocol != 0)
        rt_queue_reencode(r, r->bus_protocol, cfg->bus.protocol);
    r->bus_protocol = cfg->bus.protocol;
    r->qmsg.version = cfg->bus.protocol;
    r->bus_high_water = cfg->bus.output_high_water;
    r->listen = cfg->listen;
    r->listen.path = NULL;
    r->listen.group = NULL;
    r->max_name = cfg->bus.limits.max_string;
    r->max_entitlements = cfg->bus.limits.max_entitlements;
    access_rules_free(r->access);
    r->access = access_rules_ref(cfg->access);
    if (r->access == NULL)
        log_notice("access: no access rules: every local user who can open the socket "
                   "may subscribe, publish, send, notify, authorize and read STATS");
    else
        log_notice("access: %zu access rule%s, the first matching one decides; "
                   "what none allows is refused",
            r->access->n, r->access->n == 1 ? "" : "s");
}

struct siphash_key rt_hash_key;

/* The tables' hash key, drawn once: a table keeps its key for its life,
 * and every router's tables are hashed with the same one. */
static void
rt_hash_key_init(void)
{
    static bool drawn;

    if (drawn)
        return;
    drawn = true;
    if (siphash_key_random(&rt_hash_key) < 0)
        log_warn("no random source for the topic tables' hash key: a fixed key is used");
}

struct router *
router_new(struct event_base *base, const struct config *cfg)
{
    struct router *r = calloc(1, sizeof *r);

    if (r == NULL)
        return NULL;
    rt_hash_key_init();
    r->base = base;
    r->scratch = evbuffer_new();
    r->queue = evbuffer_new();
    if (r->scratch == NULL || r->queue == NULL) {
        if (r->scratch != NULL)
            evbuffer_free(r->scratch);
        if (r->queue != NULL)
            evbuffer_free(r->queue);
        free(r);
        return NULL;
    }
    TAILQ_INIT(&r->pending_order);
    TAILQ_INIT(&r->replay_topics);
    TAILQ_INIT(&r->replay_feeds);
    if (base != NULL && (r->replay_ev = evtimer_new(base, rt_replay_cb, r)) == NULL)
        fatalx("out of memory (replay timer)");
    wire_msg_init(&r->qmsg);
    r->ids = peerid_new();
    router_load_config(r, cfg);
    r->state = BUS_DOWN;
    r->state_since = r->started = time(NULL);
    r->started_ms = rt_mono_ms();
    r->announced = local_state_name(BUS_DOWN);
    return r;
}

void
router_reconfigure(struct router *r, const struct config *cfg)
{
    struct topic *t, *ttmp;
    struct client *c, *ctmp;

    router_load_config(r, cfg);
    /* Group membership may have changed too: look every peer up again. */
    peerid_flush(r->ids);
    HASH_ITER(hh, r->clients, c, ctmp) {
        if (rt_closing(c))
            continue;
        client_identify(r, c);
        client_recheck(r, c);
    }
    HASH_ITER(hh, r->topics, t, ttmp)
        if (t->cache != NULL && evbuffer_get_length(t->cache) > r->cfg.image_cache_bytes)
            rt_cache_drop(r, t);
}

void
router_shutdown(struct router *r)
{
    struct client *c, *tmp;

    r->shutting_down = true;
    HASH_ITER(hh, r->clients, c, tmp)
        c->port->close(c->s, LP_ERR_SHUTTING_DOWN, "busgated is stopping");
}

void
router_free(struct router *r)
{
    struct feed *f, *ftmp;

    if (r == NULL)
        return;
    r->freeing = true;
    r->bus = NULL;
    rt_replay_cancel(r);
    /* The sessions are freed first (session_stop), each detaching; any
     * left only lose their records here. */
    while (r->clients != NULL)
        router_session_detach(r, handle_of(r->clients));
    HASH_ITER(hh, r->feeds, f, ftmp) {
        rt_remotes_clear(r, f);
        rt_pending_clear(r, f);
        rt_feed_maybe_free(r, f);
    }
    if (r->queue_count > 0)
        log_warn("%u messages held for the bus link were never sent (%zu bytes)",
            r->queue_count, evbuffer_get_length(r->queue));
    evbuffer_free(r->scratch);
    free(r->batch);
    evbuffer_free(r->queue);
    wire_msg_free(&r->qmsg);
    if (r->replay_ev != NULL)
        event_free(r->replay_ev);
    free(r->cfg.image_content_types);
    access_rules_free(r->access);
    peerid_free(r->ids);
    free(r->key);
    free(r->recent);
    free(r);
}
