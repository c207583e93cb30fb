/*
 * The router: the tables that say who wants what, and the two data paths
 * through them (bus -> local sessions, local session -> bus).
 *
 * Containers: uthash for the keyed tables (topics by (feed, topic) bytes,
 * feeds by name, sessions by pointer, remote subscriptions and pending
 * authorization requests per feed) and the <sys/queue.h> macros (from
 * libbsd's header only) for the membership lists. Each membership record
 * sits on two lists, its topic's or feed's and its session's, so a session
 * leaving costs O(its own entries) and a fan-out walks exactly the
 * receivers.
 *
 * Fan-out: a DATA event is formatted once into a scratch evbuffer, then the
 * same bytes go to every receiver: copied when small (evbuffer_add
 * coalesces them with whatever is queued for that session), shared by
 * reference when large (one block, reference counted, no copy per
 * session).
 *
 * Image cache (per subscribed topic, router.image_cache bytes): the
 * formatted DATA events of the last image and the deltas after it. A new
 * image replaces it; a delta that would overflow the bound drops the cache,
 * and nothing is cached again until the next image (a late joiner gets no
 * partial history rather than a wrong one); a stale or not-entitled event
 * (empty user and host, image, no packets) is delivered and drops the
 * cache; losing the bus link drops every cache (nothing stale is replayed
 * as current). A local subscriber joining an already-subscribed topic gets
 * the cache, after its +OK and before live data.
 *
 * Across a link drop: the remote subscriptions notifiers were told of end
 * with the link (each notifier gets the removes); pending authorization
 * requests stay, bounded in number and age (router.auth_pending[_age]),
 * because the v3 distributor never asks again. The replay on the new link
 * is a queue of topics and feeds sent in bounded batches, one per loop
 * turn and never past the bus's high-water mark; a topic or feed dropped
 * before its turn leaves the queue and sends nothing upstream.
 */
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <bsd/sys/queue.h>
#include <event2/buffer.h>
#include <event2/event.h>

#include "guid.h"
#include "log.h"
#include "router.h"
#include "session.h"

#define uthash_fatal(msg) fatalx("out of memory (%s)", msg)
#include <uthash.h>

#ifndef PACKAGE_VERSION
#define PACKAGE_VERSION "unknown"
#endif

/* Events bigger than this are shared by reference instead of copied. */
#define ROUTER_SHARE_MIN 16384
/* Upstream requests replayed per event-loop turn after a reconnect, so
 * that other sessions are served between batches. */
#define ROUTER_REPLAY_BATCH 256
/* Remote subscriptions remembered for late local notifiers, all feeds. */
#define ROUTER_MAX_REMOTES 65536

struct client;
struct topic;
struct feed;

/* One session subscribed to one topic. */
struct sub {
    struct topic *topic;
    struct client *client;
    LIST_ENTRY(sub) by_topic;
    LIST_ENTRY(sub) by_client;
};

/* One session notifying, or authorizing, one feed. */
struct role {
    struct feed *feed;
    struct client *client;
    UT_hash_handle hh;              /* its client's notify_by/authorize_by, by feed */
    LIST_ENTRY(role) by_feed;
    LIST_ENTRY(role) by_client;
};

LIST_HEAD(sub_list, sub);
LIST_HEAD(role_list, role);

/* The router's record of one session. */
struct client {
    struct session *s;
    UT_hash_handle hh;              /* r->clients, by session pointer */
    struct sub_list subs;
    struct role_list notifies;
    struct role_list authorizes;
    struct role *notify_by, *authorize_by;  /* the same roles, by feed pointer */
    uint32_t n_subs;
    uint32_t n_notifies, n_authorizes;
    bool closing;                   /* released: routed to no more */
};

/* A (feed, topic) with at least one local subscriber. */
struct topic {
    UT_hash_handle hh;              /* r->topics, by key */
    struct sub_list subs;
    uint32_t n_subs;
    struct evbuffer *cache;         /* image + deltas as DATA events; NULL: none */
    TAILQ_ENTRY(topic) replay;      /* r->replay_topics while replay_queued */
    bool replay_queued;             /* not yet subscribed upstream on this link */
    struct wire_str feed, name;     /* point into key, NUL-terminated */
    size_t keylen;
    char key[];                     /* feed length (4), feed, NUL, topic, NUL */
};

/* A remote subscription a notification told us of. */
struct remote {
    UT_hash_handle hh;              /* feed->remotes, by key */
    uint32_t count;                 /* adds minus removes */
    const uint8_t *client_id;       /* these point into key */
    struct wire_str user, host, topic;
    size_t keylen;
    char key[];
};

/* An AuthorizationRequest the bus sent us, until answered (and then as
 * "answered", so a second answer is refused). */
struct pending {
    UT_hash_handle hh;              /* feed->pending, by client id + topic */
    TAILQ_ENTRY(pending) order;     /* r->pending_order, oldest first */
    struct feed *feed;
    bool answered;
    uint64_t since_ms;              /* monotonic, when the bus asked */
    const uint8_t *client_id;       /* these point into key/extra */
    struct wire_str topic, user, host;
    size_t keylen;
    char key[];                     /* client id (16), topic, NUL, user, NUL, host, NUL */
};

TAILQ_HEAD(pending_list, pending);

/* A feed with local notifiers or authorizers, or pending requests. */
struct feed {
    UT_hash_handle hh;              /* r->feeds, by name */
    struct role_list notifiers;
    struct role_list authorizers;
    uint32_t n_notifiers, n_authorizers;
    struct remote *remotes;         /* known while it has notifiers */
    struct pending *pending;
    TAILQ_ENTRY(feed) replay;       /* r->replay_feeds while replay_queued */
    bool replay_queued;             /* notifiers not yet registered upstream on this link */
    struct wire_str name;           /* points into key */
    char key[];
};

/* A large formatted event shared by several evbuffers. */
struct shared {
    unsigned refs;
    size_t len;
    unsigned char data[];
};

struct router_counters {
    uint64_t sessions_total;
    uint64_t slow_consumers;
    uint64_t data_in;
    uint64_t data_delivered;
    uint64_t data_dropped_unwanted;
    uint64_t notifications_in;
    uint64_t notifications_unrouted;
    uint64_t auth_requests;
    uint64_t auth_requests_unrouted;
    uint64_t busdown_queued_total;
    uint64_t busdown_lost;
    uint64_t bus_other;             /* bus messages a client never receives */
    uint64_t cache_refused;         /* images not cached: router.image_cache_total */
    uint64_t remotes_dropped;       /* remote subscriptions not remembered */
};

struct router {
    struct event_base *base;
    struct bus *bus;
    struct client *clients;
    struct topic *topics;
    struct feed *feeds;
    struct pending_list pending_order;
    uint32_t n_pending;
    TAILQ_HEAD(, topic) replay_topics;  /* the replay after a reconnect, still to send */
    TAILQ_HEAD(, feed) replay_feeds;
    struct event *replay_ev;        /* the next replay batch (NULL: no event base) */
    bool replaying;
    unsigned replayed_topics, replayed_feeds;
    uint32_t n_remotes;             /* remembered remote subscriptions */
    uint64_t n_subscriptions;       /* local (session, topic) pairs */
    uint32_t n_notify_feeds;        /* feeds we notify on upstream */
    uint32_t n_authorizer_feeds;
    size_t cache_bytes;             /* all topics' caches */

    struct evbuffer *scratch;       /* one formatted event, or a batch */
    struct evbuffer *one;           /* one DATA event being added to the batch */
    struct topic *batch_topic;      /* scratch holds undelivered events of it */
    uint64_t batch_count;
    struct evbuffer *queue;         /* bus-down queue: wire-encoded, in order */
    uint32_t queue_count;
    struct wire_msg qmsg;           /* decoding the queue at reconnect */
    char *key;                      /* lookup key scratch */
    size_t key_cap;

    enum bus_state state;
    time_t state_since;
    const char *announced;          /* the BUS state sessions were last told */
    bool congested;                 /* bus output over its high-water mark */
    bool shutting_down;
    bool freeing;
    time_t started;

    struct config_router cfg;       /* image_content_types: our own copy */
    int bus_protocol;
    struct config_listen listen;    /* numbers only: path/group not kept */
    uint32_t max_name, max_entitlements;
    uint32_t grace_ms;
    struct router_counters n;
};

/* ---- small helpers ---- */

static bool
linked(enum bus_state st)
{
    return st == BUS_UNCONFIRMED || st == BUS_UP;
}

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

static uint64_t
mono_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void *
xcalloc(size_t n)
{
    void *p = calloc(1, n);

    if (p == NULL)
        fatalx("out of memory (%zu bytes)", n);
    return p;
}

/* Grow the lookup-key scratch to n bytes. */
static char *
key_room(struct router *r, size_t n)
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

static struct client *
client_find(const struct router *r, const struct session *s)
{
    struct client *c;

    HASH_FIND_PTR(r->clients, &s, c);
    return c;
}

/* ---- the bus side: sending ---- */

static void pause_all(struct router *r);
static void batch_flush(struct router *r);

/* Send upstream while the link is up; otherwise the replay at reconnect
 * does it. Returns the bus result (BUS_NOT_UP while down). */
static enum bus_send_result
upstream(struct router *r, const struct wire_msg *m)
{
    enum bus_send_result res;

    if (r->bus == NULL || r->freeing || !linked(r->state))
        return BUS_NOT_UP;
    res = bus_send(r->bus, m);
    if (res == BUS_SENT && !r->congested && bus_congested(r->bus)) {
        r->congested = true;
        log_notice("bus output over its high-water mark: not reading from sessions "
            "until it drains");
        pause_all(r);
    }
    return res;
}

/* The link itself holds a subscription to this topic (the heartbeat
 * watchdog's): it is one holder among the local subscribers. */
static bool
link_holds(const struct router *r, const struct wire_str *feed, const struct wire_str *topic)
{
    return r->bus != NULL && bus_holds(r->bus, feed, topic);
}

/* The first local subscriber's add and the last one's remove; nothing for
 * a topic the link holds itself (a second add, or a remove that would end
 * the link's subscription on a distributor that counts them, defect 1). */
static void
upstream_subscription(struct router *r, const struct topic *t, bool add)
{
    struct wire_msg m;

    if (r->shutting_down || link_holds(r, &t->feed, &t->name))
        return;
    memset(&m, 0, sizeof m);
    m.type = WIRE_SUBSCRIPTION_REQUEST;
    m.feed = t->feed;
    m.topic = t->name;
    m.is_add = add;
    upstream(r, &m);
}

static void
upstream_notification(struct router *r, const struct feed *f, bool add)
{
    struct wire_msg m;

    if (r->shutting_down)
        return;
    memset(&m, 0, sizeof m);
    m.type = WIRE_NOTIFICATION_REQUEST;
    m.feed = f->name;
    m.is_add = add;
    upstream(r, &m);
}

/* ---- delivering to sessions ---- */

static void
shared_unref(const void *data, size_t len, void *arg)
{
    struct shared *sh = arg;

    if (--sh->refs == 0)
        free(sh);
}

/* Append len bytes (one or more whole events) to a session's output. */
static void
deliver_bytes(struct session *s, const void *p, size_t len, struct shared *sh)
{
    struct evbuffer *out = session_output(s);

    if (sh != NULL) {
        sh->refs++;
        if (evbuffer_add_reference(out, sh->data, sh->len, shared_unref, sh) != 0) {
            sh->refs--;
            evbuffer_add(out, p, len);
        }
    } else {
        evbuffer_add(out, p, len);
    }
    session_flush_check(s);
}

/* The scratch buffer's bytes, linear, and shared when large. */
static const unsigned char *
scratch_bytes(struct router *r, size_t *len, struct shared **sh)
{
    *len = evbuffer_get_length(r->scratch);
    *sh = NULL;
    if (*len >= ROUTER_SHARE_MIN) {
        struct shared *b = malloc(sizeof *b + *len);

        if (b != NULL) {
            b->refs = 1;
            b->len = *len;
            evbuffer_copyout(r->scratch, b->data, *len);
            *sh = b;
            return b->data;
        }
    }
    return evbuffer_pullup(r->scratch, -1);
}

static void
scratch_done(struct router *r, struct shared *sh)
{
    evbuffer_drain(r->scratch, evbuffer_get_length(r->scratch));
    if (sh != NULL)
        shared_unref(sh->data, sh->len, sh);
}

/* Send the scratch event to every live session on a feed's role list. */
static void
deliver_roles(struct router *r, struct role_list *list)
{
    const unsigned char *p;
    struct shared *sh;
    struct role *ro, *next;
    size_t len;

    p = scratch_bytes(r, &len, &sh);
    LIST_FOREACH_SAFE(ro, list, by_feed, next)
        if (!session_closing(ro->client->s))
            deliver_bytes(ro->client->s, p, len, sh);
    scratch_done(r, sh);
}

/* Every session gets the scratch event (BUS status). */
static void
deliver_all(struct router *r)
{
    const unsigned char *p;
    struct shared *sh;
    struct client *c, *tmp;
    size_t len;

    p = scratch_bytes(r, &len, &sh);
    HASH_ITER(hh, r->clients, c, tmp)
        if (!c->closing && !session_closing(c->s))
            deliver_bytes(c->s, p, len, sh);
    scratch_done(r, sh);
}

/* ---- topics and the image cache ---- */

static struct topic *
topic_find(struct router *r, const char *feed, uint32_t flen, const char *topic,
    uint32_t tlen)
{
    char *k = key_room(r, (size_t)flen + tlen + 6);
    size_t klen = topic_key(k, feed, flen, topic, tlen);
    struct topic *t;

    HASH_FIND(hh, r->topics, k, klen, t);
    return t;
}

static struct topic *
topic_new(struct router *r, const struct lp_name *feed, const struct lp_name *topic)
{
    size_t klen = (size_t)feed->len + topic->len + 6;
    struct topic *t = xcalloc(sizeof *t + klen);

    t->keylen = topic_key(t->key, feed->ptr, feed->len, topic->ptr, topic->len);
    t->feed.ptr = t->key + 4;
    t->feed.len = feed->len;
    t->name.ptr = t->key + 5 + feed->len;
    t->name.len = topic->len;
    LIST_INIT(&t->subs);
    HASH_ADD(hh, r->topics, key, t->keylen, t);
    return t;
}

static void
cache_drop(struct router *r, struct topic *t)
{
    if (t->cache == NULL)
        return;
    r->cache_bytes -= evbuffer_get_length(t->cache);
    evbuffer_free(t->cache);
    t->cache = NULL;
}

static void
topic_unqueue(struct router *r, struct topic *t)
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
        batch_flush(r);
    topic_unqueue(r, t);
    cache_drop(r, t);
    HASH_DEL(r->topics, t);
    free(t);
}

/* Add the event just formatted (p, len; sh when shared) to the cache. */
static void
cache_update(struct router *r, struct topic *t, const struct wire_msg *m,
    const unsigned char *p, size_t len, struct shared *sh)
{
    size_t cap = r->cfg.image_cache_bytes, have;
    bool stale = m->user.len == 0 && m->host.len == 0 && m->is_image && m->n_packets == 0;

    if (stale || m->is_image)
        cache_drop(r, t);
    if (stale || cap == 0)
        return;
    if (r->cache_bytes + len > r->cfg.image_cache_total) {
        /* All topics' caches together are bounded too: this topic's late
         * joiners get live data only until its next image that fits. */
        if (m->is_image)
            r->n.cache_refused++;
        cache_drop(r, t);
        return;
    }
    if (m->is_image) {
        if (len > cap || (t->cache = evbuffer_new()) == NULL)
            return;
    } else {
        if (t->cache == NULL)
            return;     /* no image since the last overflow: nothing to build on */
        have = evbuffer_get_length(t->cache);
        if (have + len > cap) {
            log_debug("image cache of a topic over %zu bytes: dropped until the next image",
                cap);
            cache_drop(r, t);
            return;
        }
    }
    if (sh != NULL && evbuffer_add_reference(t->cache, sh->data, sh->len,
            shared_unref, sh) == 0)
        sh->refs++;
    else
        evbuffer_add(t->cache, p, len);
    r->cache_bytes += len;
}

/* Copy a topic's cached events to one new subscriber. */
static void
cache_replay(struct topic *t, struct session *s)
{
    struct evbuffer_iovec vec[16];
    struct evbuffer_ptr pos;
    struct evbuffer *out = session_output(s);
    size_t left;
    int n;

    if (t->cache == NULL || evbuffer_get_length(t->cache) == 0)
        return;
    left = evbuffer_get_length(t->cache);
    evbuffer_ptr_set(t->cache, &pos, 0, EVBUFFER_PTR_SET);
    while (left > 0) {
        n = evbuffer_peek(t->cache, (ev_ssize_t)left, &pos, vec, 16);
        if (n <= 0)
            break;
        if (n > 16)
            n = 16;
        for (int i = 0; i < n && left > 0; i++) {
            size_t l = vec[i].iov_len < left ? vec[i].iov_len : left;

            evbuffer_add(out, vec[i].iov_base, l);
            left -= l;
            evbuffer_ptr_set(t->cache, &pos, l, EVBUFFER_PTR_ADD);
        }
    }
    session_flush_check(s);
}

/* ---- bus -> sessions: data ---- */

/* Deliver the batched DATA events of one topic to its subscribers. */
static void
batch_flush(struct router *r)
{
    const unsigned char *p;
    struct shared *sh;
    struct topic *t = r->batch_topic;
    struct sub *sb, *next;
    size_t len;

    if (t == NULL)
        return;
    r->batch_topic = NULL;
    p = scratch_bytes(r, &len, &sh);
    LIST_FOREACH_SAFE(sb, &t->subs, by_topic, next) {
        if (session_closing(sb->client->s))
            continue;
        deliver_bytes(sb->client->s, p, len, sh);
        r->n.data_delivered += r->batch_count;
    }
    scratch_done(r, sh);
    r->batch_count = 0;
}

/* Consecutive DATA events of one topic are delivered together, up to this
 * many bytes, and never more than a quarter of listen.max_output, so a batch
 * cannot by itself make a reader that keeps up look slow. */
#define ROUTER_BATCH_MAX (256u << 10)

static size_t
batch_max(const struct router *r)
{
    size_t q = r->listen.max_output / 4;

    return q < ROUTER_BATCH_MAX ? q : ROUTER_BATCH_MAX;
}

/* Whether ct is one of the comma-separated content types in list. */
static bool
content_type_listed(const char *list, const struct wire_str *ct)
{
    for (const char *p = list; p != NULL && *p != '\0';) {
        const char *end = strchr(p, ',');
        size_t n = end != NULL ? (size_t)(end - p) : strlen(p);

        while (n > 0 && (*p == ' ' || *p == '\t'))
            p++, n--;
        while (n > 0 && (p[n - 1] == ' ' || p[n - 1] == '\t'))
            n--;
        if (n == ct->len && n > 0 && memcmp(p, ct->ptr, n) == 0)
            return true;
        p = end != NULL ? end + 1 : NULL;
    }
    return false;
}

/*
 * Bus protocol 6 has no image flag: a message is an image (for the cache
 * and the DATA line) if it is a unicast (the image a selectfeed publisher
 * sends a new subscriber), the distributor's stale or not-entitled form
 * (empty user and host, no packets), or of a configured image content type.
 */
static bool
image_at_6(const struct router *r, const struct wire_msg *m)
{
    return m->type == WIRE_FORWARDED_UNICAST ||
        (m->user.len == 0 && m->host.len == 0 && m->n_packets == 0) ||
        content_type_listed(r->cfg.image_content_types, &m->content_type);
}

static void
route_data(struct router *r, const struct wire_msg *m)
{
    const unsigned char *p;
    struct topic *t;
    struct wire_msg at6;
    size_t len;

    if (m->version >= WIRE_V6) {
        at6 = *m;
        at6.is_image = image_at_6(r, m);
        m = &at6;
    }
    t = topic_find(r, m->feed.ptr, m->feed.len, m->topic.ptr, m->topic.len);
    if (t == NULL && link_holds(r, &m->feed, &m->topic))
        return;     /* the link's own (heartbeats), counted there */
    r->n.data_in++;
    if (t == NULL) {
        /* Nobody local wants it; the v3 distributor keeps sending after an
         * unsubscribe (defect 1). */
        r->n.data_dropped_unwanted++;
        log_debug("data for %.*s / %.*s: no local subscriber, dropped",
            (int)m->feed.len, m->feed.ptr, (int)m->topic.len, m->topic.ptr);
        return;
    }
    if (t != r->batch_topic)
        batch_flush(r);
    if (lp_format_data(r->one, m) != 0) {
        log_error("cannot format a DATA event (out of memory)");
        evbuffer_drain(r->one, evbuffer_get_length(r->one));
        return;
    }
    len = evbuffer_get_length(r->one);
    if (t->cache != NULL || m->is_image) {
        p = evbuffer_pullup(r->one, -1);
        cache_update(r, t, m, p, len, NULL);
    }
    evbuffer_add_buffer(r->scratch, r->one);
    r->batch_topic = t;
    r->batch_count++;
    if (evbuffer_get_length(r->scratch) >= batch_max(r))
        batch_flush(r);
}

/* ---- feeds, notifications, authorization ---- */

static struct feed *
feed_find(struct router *r, const char *name, uint32_t len)
{
    struct feed *f;

    HASH_FIND(hh, r->feeds, name, len, f);
    return f;
}

static struct feed *
feed_get(struct router *r, const char *name, uint32_t len)
{
    struct feed *f = feed_find(r, name, len);

    if (f != NULL)
        return f;
    f = xcalloc(sizeof *f + (size_t)len + 1);
    memcpy(f->key, name, len);
    f->key[len] = '\0';
    f->name.ptr = f->key;
    f->name.len = len;
    LIST_INIT(&f->notifiers);
    LIST_INIT(&f->authorizers);
    HASH_ADD(hh, r->feeds, key, len, f);
    return f;
}

static void
remotes_clear(struct router *r, struct feed *f)
{
    struct remote *rm, *tmp;

    HASH_ITER(hh, f->remotes, rm, tmp) {
        HASH_DEL(f->remotes, rm);
        free(rm);
        r->n_remotes--;
    }
}

static void
pending_free(struct router *r, struct pending *pd)
{
    HASH_DEL(pd->feed->pending, pd);
    TAILQ_REMOVE(&r->pending_order, pd, order);
    r->n_pending--;
    free(pd);
}

static void
pending_clear(struct router *r, struct feed *f)
{
    struct pending *pd, *tmp;

    HASH_ITER(hh, f->pending, pd, tmp)
        pending_free(r, pd);
}

static void
feed_unqueue(struct router *r, struct feed *f)
{
    if (f->replay_queued) {
        TAILQ_REMOVE(&r->replay_feeds, f, replay);
        f->replay_queued = false;
    }
}

/* Forget a feed nobody local uses any more. */
static void
feed_maybe_free(struct router *r, struct feed *f)
{
    if (f->n_notifiers > 0 || f->n_authorizers > 0 || f->pending != NULL)
        return;
    feed_unqueue(r, f);
    remotes_clear(r, f);
    HASH_DEL(r->feeds, f);
    free(f);
}

/* Keep the remote subscription table in step with a notification. */
static void
remote_update(struct router *r, struct feed *f, const struct wire_msg *m)
{
    size_t klen = WIRE_GUID_LEN + 12 + (size_t)m->user.len + m->host.len + m->topic.len + 3;
    char *k = malloc(klen), *p;
    struct remote *rm;

    if (k == NULL)
        fatalx("out of memory (%zu bytes)", klen);
    p = k;
    memcpy(p, m->client_id, WIRE_GUID_LEN);
    p += WIRE_GUID_LEN;
    memcpy(p, &m->user.len, 4);
    memcpy(p + 4, &m->host.len, 4);
    memcpy(p + 8, &m->topic.len, 4);
    p += 12;
    memcpy(p, m->user.ptr, m->user.len);
    p[m->user.len] = '\0';
    p += m->user.len + 1;
    memcpy(p, m->host.ptr, m->host.len);
    p[m->host.len] = '\0';
    p += m->host.len + 1;
    memcpy(p, m->topic.ptr, m->topic.len);
    p[m->topic.len] = '\0';

    HASH_FIND(hh, f->remotes, k, klen, rm);
    if (m->is_add) {
        if (rm == NULL && r->n_remotes >= ROUTER_MAX_REMOTES) {
            /* Other bus users decide how many there are: bounded, counted. */
            r->n.remotes_dropped++;
            log_warn("%u remote subscriptions remembered already: not keeping more "
                "for late notifiers", r->n_remotes);
            free(k);
            return;
        }
        if (rm == NULL) {
            rm = xcalloc(sizeof *rm + klen);
            r->n_remotes++;
            memcpy(rm->key, k, klen);
            rm->keylen = klen;
            p = rm->key;
            rm->client_id = (const uint8_t *)p;
            p += WIRE_GUID_LEN + 12;
            rm->user.ptr = p;
            rm->user.len = m->user.len;
            p += m->user.len + 1;
            rm->host.ptr = p;
            rm->host.len = m->host.len;
            p += m->host.len + 1;
            rm->topic.ptr = p;
            rm->topic.len = m->topic.len;
            HASH_ADD(hh, f->remotes, key, rm->keylen, rm);
        }
        rm->count++;
    } else if (rm != NULL && --rm->count == 0) {
        HASH_DEL(f->remotes, rm);
        free(rm);
        r->n_remotes--;
    }
    free(k);
}

static void
route_notification(struct router *r, const struct wire_msg *m)
{
    struct feed *f = feed_find(r, m->feed.ptr, m->feed.len);

    r->n.notifications_in++;
    if (f == NULL || f->n_notifiers == 0) {
        r->n.notifications_unrouted++;
        log_debug("notification for feed %.*s: no local notifier", (int)m->feed.len,
            m->feed.ptr);
        return;
    }
    remote_update(r, f, m);
    if (lp_format_notification(r->scratch, m) != 0) {
        evbuffer_drain(r->scratch, evbuffer_get_length(r->scratch));
        return;
    }
    deliver_roles(r, &f->notifiers);
}

/* Forget requests older than router.auth_pending_age. They are kept across
 * reconnects (the v3 distributor never asks again, and takes an answer at
 * any time), so age is what ends one nobody answers. */
static void
pending_expire(struct router *r)
{
    uint64_t now = mono_ms();
    struct pending *pd;
    struct feed *f;
    unsigned n = 0;

    while ((pd = TAILQ_FIRST(&r->pending_order)) != NULL &&
        now - pd->since_ms > r->cfg.auth_pending_age_ms) {
        f = pd->feed;
        pending_free(r, pd);
        feed_maybe_free(r, f);
        n++;
    }
    if (n > 0)
        log_info("%u authorization request%s older than router.auth_pending_age forgotten",
            n, n == 1 ? "" : "s");
}

/* Remember a request (a repeat resets it to unanswered). The caller has
 * expired old ones already, so f stays. */
static void
pending_add(struct router *r, struct feed *f, const struct wire_msg *m)
{
    size_t klen = WIRE_GUID_LEN + (size_t)m->topic.len;
    size_t size = klen + 1 + m->user.len + 1 + m->host.len + 1;
    char *k = key_room(r, klen), *p;
    struct pending *pd;

    memcpy(k, m->client_id, WIRE_GUID_LEN);
    memcpy(k + WIRE_GUID_LEN, m->topic.ptr, m->topic.len);
    HASH_FIND(hh, f->pending, k, klen, pd);
    if (pd != NULL)
        pending_free(r, pd);    /* user/host may differ: store afresh */
    while (r->n_pending >= r->cfg.auth_pending) {
        struct pending *old = TAILQ_FIRST(&r->pending_order);
        struct feed *of = old->feed;

        pending_free(r, old);
        if (of != f)
            feed_maybe_free(r, of);
    }
    pd = xcalloc(sizeof *pd + size);
    pd->since_ms = mono_ms();
    memcpy(pd->key, m->client_id, WIRE_GUID_LEN);
    memcpy(pd->key + WIRE_GUID_LEN, m->topic.ptr, m->topic.len);
    pd->keylen = klen;
    pd->feed = f;
    pd->client_id = (const uint8_t *)pd->key;
    p = pd->key + WIRE_GUID_LEN;
    pd->topic.ptr = p;
    pd->topic.len = m->topic.len;
    p[m->topic.len] = '\0';
    p += m->topic.len + 1;
    memcpy(p, m->user.ptr, m->user.len);
    pd->user.ptr = p;
    pd->user.len = m->user.len;
    p += m->user.len + 1;
    memcpy(p, m->host.ptr, m->host.len);
    pd->host.ptr = p;
    pd->host.len = m->host.len;
    HASH_ADD(hh, f->pending, key, pd->keylen, pd);
    TAILQ_INSERT_TAIL(&r->pending_order, pd, order);
    r->n_pending++;
}

/* The AuthorizationRequest a pending entry came from, for AUTHREQ. */
static void
pending_msg(const struct pending *pd, struct wire_msg *m)
{
    memset(m, 0, sizeof *m);
    m->type = WIRE_AUTHORIZATION_REQUEST;
    memcpy(m->client_id, pd->client_id, WIRE_GUID_LEN);
    m->user = pd->user;
    m->host = pd->host;
    m->feed = pd->feed->name;
    m->topic = pd->topic;
}

static void
route_authreq(struct router *r, const struct wire_msg *m)
{
    struct feed *f;
    char id[GUID_TEXT_LEN + 1];

    r->n.auth_requests++;
    pending_expire(r);
    f = feed_get(r, m->feed.ptr, m->feed.len);
    pending_add(r, f, m);
    if (f->n_authorizers == 0) {
        r->n.auth_requests_unrouted++;
        guid_to_text(m->client_id, id);
        log_notice("authorization request from %s (%.*s@%.*s) for %.*s / %.*s: no local "
            "authorizer; kept for one that registers", id, (int)m->user.len, m->user.ptr,
            (int)m->host.len, m->host.ptr, (int)m->feed.len, m->feed.ptr,
            (int)m->topic.len, m->topic.ptr);
        return;
    }
    if (lp_format_authreq(r->scratch, m) != 0) {
        evbuffer_drain(r->scratch, evbuffer_get_length(r->scratch));
        return;
    }
    deliver_roles(r, &f->authorizers);
}

void
router_bus_message(struct router *r, const struct wire_msg *msg)
{
    if (msg->type != WIRE_FORWARDED_MULTICAST && msg->type != WIRE_FORWARDED_UNICAST)
        batch_flush(r);
    switch (msg->type) {
    case WIRE_FORWARDED_MULTICAST:
    case WIRE_FORWARDED_UNICAST:
        route_data(r, msg);
        break;
    case WIRE_FORWARDED_SUBSCRIPTION:
        route_notification(r, msg);
        break;
    case WIRE_AUTHORIZATION_REQUEST:
        route_authreq(r, msg);
        break;
    default:
        r->n.bus_other++;
        log_debug("bus sent %s, which no client receives: ignored",
            wire_type_name(msg->type));
        break;
    }
}

/* ---- bus state ---- */

/* Send every queued publish/send, in order. */
static void
queue_flush(struct router *r)
{
    struct wire_limits lim = { UINT32_MAX, UINT32_MAX, UINT32_MAX, UINT32_MAX, UINT32_MAX };
    const char *cause = NULL;
    uint32_t sent = 0;

    while (r->queue_count > 0 && linked(r->state) && r->bus != NULL) {
        if (wire_decode(r->queue, &lim, &r->qmsg, &cause) != WIRE_DECODED) {
            log_error("bus-down queue unreadable (%s): %u messages lost",
                cause != NULL ? cause : "incomplete", r->queue_count);
            r->n.busdown_lost += r->queue_count;
            evbuffer_drain(r->queue, evbuffer_get_length(r->queue));
            r->queue_count = 0;
            break;
        }
        r->queue_count--;
        if (upstream(r, &r->qmsg) != BUS_SENT) {
            log_warn("a queued %s could not be sent", wire_type_name(r->qmsg.type));
            r->n.busdown_lost++;
        } else {
            sent++;
        }
    }
    if (sent > 0)
        log_info("sent %u publishes held while the bus was down", sent);
}

static void replay_step(struct router *r);

/* Continue the replay on the next loop turn (at once without a loop). */
static void
replay_schedule(struct router *r)
{
    static const struct timeval now = { 0, 0 };

    if (r->replay_ev != NULL)
        evtimer_add(r->replay_ev, &now);
    else
        replay_step(r);
}

/* One batch of the replay: at most ROUTER_REPLAY_BATCH requests, none past
 * the bus's high-water mark. Subscriptions and notification requests go
 * first, the publishes held while down after them. A timer (not an active
 * event) carries it to the next loop turn, so sessions' I/O is polled in
 * between; back-pressure resumes it from router_bus_drained. */
static void
replay_step(struct router *r)
{
    struct topic *t;
    struct feed *f;
    unsigned n = 0;

    while (r->replaying && linked(r->state) && !r->congested &&
        (r->replay_ev == NULL || n < ROUTER_REPLAY_BATCH)) {
        if ((t = TAILQ_FIRST(&r->replay_topics)) != NULL) {
            topic_unqueue(r, t);
            upstream_subscription(r, t, true);
            r->replayed_topics++;
        } else if ((f = TAILQ_FIRST(&r->replay_feeds)) != NULL) {
            feed_unqueue(r, f);
            upstream_notification(r, f, true);
            r->replayed_feeds++;
        } else {
            r->replaying = false;
            if (r->replayed_topics > 0 || r->replayed_feeds > 0)
                log_info("bus link: replayed %u subscriptions and %u notification requests",
                    r->replayed_topics, r->replayed_feeds);
            queue_flush(r);
            return;
        }
        n++;
    }
    if (r->replaying && linked(r->state) && !r->congested)
        replay_schedule(r);
}

static void
replay_cb(evutil_socket_t fd, short what, void *arg)
{
    replay_step(arg);
}

/* The link came (back): tell the bus everything we want, then the queue. */
static void
replay_upstream(struct router *r)
{
    struct topic *t, *ttmp;
    struct feed *f, *ftmp;

    HASH_ITER(hh, r->topics, t, ttmp) {
        TAILQ_INSERT_TAIL(&r->replay_topics, t, replay);
        t->replay_queued = true;
    }
    HASH_ITER(hh, r->feeds, f, ftmp) {
        if (f->n_notifiers == 0)
            continue;
        TAILQ_INSERT_TAIL(&r->replay_feeds, f, replay);
        f->replay_queued = true;
    }
    r->replaying = true;
    r->replayed_topics = r->replayed_feeds = 0;
    replay_step(r);
}

static void
replay_cancel(struct router *r)
{
    while (!TAILQ_EMPTY(&r->replay_topics))
        topic_unqueue(r, TAILQ_FIRST(&r->replay_topics));
    while (!TAILQ_EMPTY(&r->replay_feeds))
        feed_unqueue(r, TAILQ_FIRST(&r->replay_feeds));
    if (r->replay_ev != NULL)
        evtimer_del(r->replay_ev);
    r->replaying = false;
}

/* Tell a feed's notifiers that the remote subscriptions they were told of
 * are gone (the link that saw them is), as many removes as adds, so a
 * notifier from before the drop and one from after agree. */
static void
remotes_end(struct router *r, struct feed *f)
{
    struct remote *rm, *tmp;
    struct wire_msg m;

    memset(&m, 0, sizeof m);
    m.type = WIRE_FORWARDED_SUBSCRIPTION;
    m.feed = f->name;
    m.is_add = false;
    HASH_ITER(hh, f->remotes, rm, tmp) {
        memcpy(m.client_id, rm->client_id, WIRE_GUID_LEN);
        m.user = rm->user;
        m.host = rm->host;
        m.topic = rm->topic;
        for (uint32_t i = 0; i < rm->count; i++)
            if (lp_format_notification(r->scratch, &m) != 0)
                break;
    }
    if (evbuffer_get_length(r->scratch) > 0)
        deliver_roles(r, &f->notifiers);
}

/* The link went: what the bus told us no longer holds. Pending
 * authorization requests stay (see pending_expire). */
static void
link_lost(struct router *r)
{
    struct topic *t, *ttmp;
    struct feed *f, *ftmp;

    replay_cancel(r);
    HASH_ITER(hh, r->topics, t, ttmp)
        cache_drop(r, t);
    HASH_ITER(hh, r->feeds, f, ftmp) {
        remotes_end(r, f);
        remotes_clear(r, f);
        feed_maybe_free(r, f);
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

    batch_flush(r);     /* events read before the change go out first */
    r->state = state;
    r->state_since = time(NULL);
    if (name != r->announced) {
        r->announced = name;
        if (lp_format_bus(r->scratch, name, state == BUS_DOWN ? reason : NULL) == 0)
            deliver_all(r);
        else
            evbuffer_drain(r->scratch, evbuffer_get_length(r->scratch));
    }
    if (linked(old) && !linked(state))
        link_lost(r);   /* after BUS down: the removes it sends are its consequence */
    if (!linked(old) && linked(state))
        replay_upstream(r);
}

static void
pause_all(struct router *r)
{
    struct client *c, *tmp;

    HASH_ITER(hh, r->clients, c, tmp)
        session_pause(c->s);
}

void
router_bus_drained(struct router *r)
{
    struct client *c, *tmp;

    if (r->congested)
        log_notice("bus output drained: reading from sessions again");
    r->congested = false;
    HASH_ITER(hh, r->clients, c, tmp)
        session_resume(c->s);
    if (r->replaying)
        replay_schedule(r);
}

static void
cb_state(void *arg, enum bus_state state, const char *reason)
{
    router_bus_state(arg, state, reason);
}

static void
cb_message(void *arg, const struct wire_msg *msg)
{
    router_bus_message(arg, msg);
}

static void
cb_drained(void *arg)
{
    router_bus_drained(arg);
}

void
router_bus_batch_end(struct router *r)
{
    batch_flush(r);
}

static void
cb_batch_end(void *arg)
{
    batch_flush(arg);
}

void
router_bus_callbacks(struct bus_callbacks *cb)
{
    cb->on_state = cb_state;
    cb->on_message = cb_message;
    cb->on_drained = cb_drained;
    cb->on_batch_end = cb_batch_end;
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

bool
router_session_attach(struct router *r, struct session *s)
{
    struct client *c;

    if (HASH_COUNT(r->clients) >= r->listen.max_sessions)
        return false;
    c = xcalloc(sizeof *c);
    c->s = s;
    LIST_INIT(&c->subs);
    LIST_INIT(&c->notifies);
    LIST_INIT(&c->authorizes);
    HASH_ADD_PTR(r->clients, s, c);
    r->n.sessions_total++;
    if (r->congested)
        session_pause(s);
    return true;
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
            upstream_subscription(r, t, false);
        topic_free(r, t);
    }
}

static void
notify_remove(struct router *r, struct role *ro)
{
    struct feed *f = ro->feed;

    LIST_REMOVE(ro, by_feed);
    LIST_REMOVE(ro, by_client);
    HASH_DEL(ro->client->notify_by, ro);
    ro->client->n_notifies--;
    free(ro);
    if (--f->n_notifiers == 0) {
        r->n_notify_feeds--;
        /* Still waiting for the replay: never registered on this link. */
        if (f->replay_queued)
            feed_unqueue(r, f);
        else
            upstream_notification(r, f, false);
        remotes_clear(r, f);
        feed_maybe_free(r, f);
    }
}

static void
authorizer_remove(struct router *r, struct role *ro)
{
    struct feed *f = ro->feed;

    LIST_REMOVE(ro, by_feed);
    LIST_REMOVE(ro, by_client);
    HASH_DEL(ro->client->authorize_by, ro);
    ro->client->n_authorizes--;
    free(ro);
    if (--f->n_authorizers == 0) {
        r->n_authorizer_feeds--;
        feed_maybe_free(r, f);
    }
}

/* Drop everything a session registered, sending what the bus must know. */
static void
client_release(struct router *r, struct client *c)
{
    while (!LIST_EMPTY(&c->subs))
        sub_remove(r, LIST_FIRST(&c->subs));
    while (!LIST_EMPTY(&c->notifies))
        notify_remove(r, LIST_FIRST(&c->notifies));
    while (!LIST_EMPTY(&c->authorizes))
        authorizer_remove(r, LIST_FIRST(&c->authorizes));
}

void
router_session_closing(struct router *r, struct session *s)
{
    struct client *c = client_find(r, s);

    if (c == NULL || c->closing)
        return;
    c->closing = true;
    client_release(r, c);
}

void
router_session_detach(struct router *r, struct session *s)
{
    struct client *c = client_find(r, s);

    if (c == NULL)
        return;
    if (!c->closing)
        client_release(r, c);
    HASH_DEL(r->clients, c);
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

void
router_lp_limits(const struct router *r, struct lp_limits *lim)
{
    lim->max_name = r->max_name;
    lim->max_payload = r->listen.max_payload;
    lim->max_packets = r->listen.max_packets;
    lim->max_entitlements = r->max_entitlements;
    lim->bus_protocol = (uint32_t)r->bus_protocol;
}

uint32_t
router_close_grace_ms(const struct router *r)
{
    return r->grace_ms;
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
static struct role *
role_find(struct role *by_feed, const struct feed *f)
{
    struct role *ro;

    HASH_FIND_PTR(by_feed, &f, ro);
    return ro;
}

static void
cmd_sub(struct router *r, struct client *c, const struct lp_cmd *cmd)
{
    struct topic *t = topic_find(r, cmd->feed.ptr, cmd->feed.len, cmd->topic.ptr,
        cmd->topic.len);
    struct sub *sb;
    bool first = t == NULL;

    if (sub_find(c, t) != NULL) {
        session_reply_err(c->s, LP_ERR_ALREADY_SUBSCRIBED, "already subscribed to this topic");
        return;
    }
    if (c->n_subs >= r->listen.max_subscriptions) {
        session_reply_err(c->s, LP_ERR_TOO_MANY_SUBSCRIPTIONS,
            "at most %u subscriptions per session", r->listen.max_subscriptions);
        return;
    }
    if (first)
        t = topic_new(r, &cmd->feed, &cmd->topic);
    sb = xcalloc(sizeof *sb);
    sb->topic = t;
    sb->client = c;
    LIST_INSERT_HEAD(&t->subs, sb, by_topic);
    LIST_INSERT_HEAD(&c->subs, sb, by_client);
    t->n_subs++;
    c->n_subs++;
    r->n_subscriptions++;
    session_reply_ok(c->s);
    if (first)
        upstream_subscription(r, t, true);
    else
        cache_replay(t, c->s);
}

static void
cmd_unsub(struct router *r, struct client *c, const struct lp_cmd *cmd)
{
    struct topic *t = topic_find(r, cmd->feed.ptr, cmd->feed.len, cmd->topic.ptr,
        cmd->topic.len);
    struct sub *sb = sub_find(c, t);

    if (sb == NULL) {
        session_reply_err(c->s, LP_ERR_NOT_SUBSCRIBED, "not subscribed to this topic");
        return;
    }
    sub_remove(r, sb);
    session_reply_ok(c->s);
}

static struct role *
role_new(struct feed *f, struct client *c, struct role_list *feed_list,
    struct role_list *client_list, struct role **by_feed)
{
    struct role *ro = xcalloc(sizeof *ro);

    ro->feed = f;
    ro->client = c;
    LIST_INSERT_HEAD(feed_list, ro, by_feed);
    LIST_INSERT_HEAD(client_list, ro, by_client);
    HASH_ADD_PTR(*by_feed, feed, ro);
    return ro;
}

/* Tell a late notifier of the remote subscriptions already known. */
static void
remotes_replay(struct router *r, struct feed *f, struct session *s)
{
    struct remote *rm, *tmp;
    struct wire_msg m;

    memset(&m, 0, sizeof m);
    m.type = WIRE_FORWARDED_SUBSCRIPTION;
    m.feed = f->name;
    m.is_add = true;
    HASH_ITER(hh, f->remotes, rm, tmp) {
        memcpy(m.client_id, rm->client_id, WIRE_GUID_LEN);
        m.user = rm->user;
        m.host = rm->host;
        m.topic = rm->topic;
        for (uint32_t i = 0; i < rm->count; i++)
            lp_format_notification(session_output(s), &m);
    }
    if (f->remotes != NULL)
        session_flush_check(s);
}

static void
cmd_notify(struct router *r, struct client *c, const struct lp_cmd *cmd)
{
    struct feed *f = feed_find(r, cmd->feed.ptr, cmd->feed.len);

    if (f != NULL && role_find(c->notify_by, f) != NULL) {
        session_reply_err(c->s, LP_ERR_ALREADY_NOTIFYING, "already notifying on this feed");
        return;
    }
    if (c->n_notifies >= r->listen.max_notifications) {
        session_reply_err(c->s, LP_ERR_TOO_MANY_NOTIFICATIONS,
            "at most %u notified feeds per session", r->listen.max_notifications);
        return;
    }
    if (f == NULL)
        f = feed_get(r, cmd->feed.ptr, cmd->feed.len);
    role_new(f, c, &f->notifiers, &c->notifies, &c->notify_by);
    c->n_notifies++;
    session_reply_ok(c->s);
    if (++f->n_notifiers == 1) {
        r->n_notify_feeds++;
        upstream_notification(r, f, true);
    } else {
        remotes_replay(r, f, c->s);
    }
}

static void
cmd_unnotify(struct router *r, struct client *c, const struct lp_cmd *cmd)
{
    struct feed *f = feed_find(r, cmd->feed.ptr, cmd->feed.len);
    struct role *ro = f != NULL ? role_find(c->notify_by, f) : NULL;

    if (ro == NULL) {
        session_reply_err(c->s, LP_ERR_NOT_NOTIFYING, "not notifying on this feed");
        return;
    }
    notify_remove(r, ro);
    session_reply_ok(c->s);
}

/* Tell a late authorizer of the requests nobody has answered yet. */
static void
pending_replay(struct feed *f, struct session *s)
{
    struct pending *pd, *tmp;
    struct wire_msg m;
    bool any = false;

    HASH_ITER(hh, f->pending, pd, tmp) {
        if (pd->answered)
            continue;
        pending_msg(pd, &m);
        lp_format_authreq(session_output(s), &m);
        any = true;
    }
    if (any)
        session_flush_check(s);
}

static void
cmd_authorizer(struct router *r, struct client *c, const struct lp_cmd *cmd)
{
    struct feed *f;

    pending_expire(r);
    f = feed_find(r, cmd->feed.ptr, cmd->feed.len);
    if (f != NULL && role_find(c->authorize_by, f) != NULL) {
        session_reply_err(c->s, LP_ERR_ALREADY_AUTHORIZER, "already an authorizer of this feed");
        return;
    }
    if (c->n_authorizes >= r->listen.max_authorizers) {
        session_reply_err(c->s, LP_ERR_TOO_MANY_AUTHORIZERS,
            "at most %u authorized feeds per session", r->listen.max_authorizers);
        return;
    }
    if (f == NULL)
        f = feed_get(r, cmd->feed.ptr, cmd->feed.len);
    role_new(f, c, &f->authorizers, &c->authorizes, &c->authorize_by);
    c->n_authorizes++;
    if (++f->n_authorizers == 1)
        r->n_authorizer_feeds++;
    session_reply_ok(c->s);
    pending_replay(f, c->s);
}

static void
cmd_unauthorizer(struct router *r, struct client *c, const struct lp_cmd *cmd)
{
    struct feed *f = feed_find(r, cmd->feed.ptr, cmd->feed.len);
    struct role *ro = f != NULL ? role_find(c->authorize_by, f) : NULL;

    if (ro == NULL) {
        session_reply_err(c->s, LP_ERR_NOT_AUTHORIZER, "not an authorizer of this feed");
        return;
    }
    authorizer_remove(r, ro);
    session_reply_ok(c->s);
}

static void
cmd_authorize(struct router *r, struct client *c, const struct lp_cmd *cmd)
{
    size_t klen = WIRE_GUID_LEN + (size_t)cmd->topic.len;
    struct pending *pd = NULL;
    struct feed *f;
    struct wire_msg m;
    char *k;

    pending_expire(r);
    f = feed_find(r, cmd->feed.ptr, cmd->feed.len);
    if (f == NULL || role_find(c->authorize_by, f) == NULL) {
        session_reply_err(c->s, LP_ERR_NOT_AUTHORIZER,
            "AUTHORIZER this feed before answering its requests");
        return;
    }
    k = key_room(r, klen);
    memcpy(k, cmd->client_id, WIRE_GUID_LEN);
    memcpy(k + WIRE_GUID_LEN, cmd->topic.ptr, cmd->topic.len);
    HASH_FIND(hh, f->pending, k, klen, pd);
    if (pd == NULL) {
        session_reply_err(c->s, LP_ERR_UNKNOWN_REQUEST,
            "no authorization request from that client for that topic (or it is older "
            "than router.auth_pending_age)");
        return;
    }
    if (pd->answered) {
        session_reply_err(c->s, LP_ERR_ALREADY_ANSWERED,
            "that request was already answered (the first answer counts)");
        return;
    }
    memset(&m, 0, sizeof m);
    m.type = WIRE_AUTHORIZATION_RESPONSE;
    memcpy(m.client_id, cmd->client_id, WIRE_GUID_LEN);
    m.feed = f->name;
    m.topic = pd->topic;
    m.auth_required = cmd->required;
    m.entitlements = cmd->entitlements;
    switch (upstream(r, &m)) {
    case BUS_SENT:
        pd->answered = true;
        session_reply_ok(c->s);
        break;
    case BUS_ENCODE_ERROR:
        session_reply_err(c->s, LP_ERR_SYNTAX, "the answer cannot be encoded");
        break;
    default:
        session_reply_err(c->s, LP_ERR_BUS_DOWN, "the bus link is %s; answer again "
            "when it is up", bus_state_name(r->state));
        break;
    }
}

/* Hold a publish while the bus is down, if the queue has room. */
static void
queue_publish(struct router *r, struct client *c, const struct wire_msg *m)
{
    size_t size = wire_encoded_size(m), have = evbuffer_get_length(r->queue);

    if (r->cfg.busdown_queue == 0) {
        session_reply_err(c->s, LP_ERR_BUS_DOWN, "the bus link is %s; nothing was sent",
            bus_state_name(r->state));
        return;
    }
    if (r->queue_count >= r->cfg.busdown_queue ||
        have + size > r->cfg.busdown_queue_bytes) {
        session_reply_err(c->s, LP_ERR_BUS_DOWN, "the bus link is %s and the bus-down "
            "queue is full (%u messages, %zu bytes); nothing was sent",
            bus_state_name(r->state), r->queue_count, have);
        return;
    }
    if (wire_encode(r->queue, m) != 0) {
        session_reply_err(c->s, LP_ERR_BAD_PACKET, "the message cannot be encoded");
        return;
    }
    r->queue_count++;
    r->n.busdown_queued_total++;
    session_reply_ok(c->s);
}

static void
cmd_publish(struct router *r, struct client *c, const struct lp_cmd *cmd)
{
    struct wire_msg m;

    if (cmd->n_packets == 0 && !r->cfg.allow_empty_publish) {
        session_reply_err(c->s, LP_ERR_NO_PACKETS, "a publish needs at least one packet "
            "(router.allow_empty_publish is off)");
        return;
    }
    memset(&m, 0, sizeof m);
    m.type = cmd->verb == LP_SEND ? WIRE_UNICAST_DATA : WIRE_MULTICAST_DATA;
    memcpy(m.client_id, cmd->client_id, WIRE_GUID_LEN);
    m.feed.ptr = cmd->feed.ptr;
    m.feed.len = cmd->feed.len;
    m.topic.ptr = cmd->topic.ptr;
    m.topic.len = cmd->topic.len;
    m.version = r->bus_protocol;    /* the bus-down queue keeps the content type */
    m.is_image = cmd->is_image;
    m.content_type.ptr = cmd->content_type.ptr;
    m.content_type.len = cmd->content_type.len;
    m.packets = cmd->packets;
    m.n_packets = cmd->n_packets;
    /* Queued messages go first, to keep the order. */
    if (r->queue_count > 0)
        queue_flush(r);
    if (r->queue_count > 0) {
        queue_publish(r, c, &m);
        return;
    }
    switch (upstream(r, &m)) {
    case BUS_SENT:
        session_reply_ok(c->s);
        break;
    case BUS_ENCODE_ERROR:
        session_reply_err(c->s, LP_ERR_BAD_PACKET, "the message cannot be encoded");
        break;
    default:
        queue_publish(r, c, &m);
        break;
    }
}

static void
cmd_ping(struct router *r, struct client *c, const struct lp_cmd *cmd)
{
    struct evbuffer *out = session_output(c->s);

    lp_format_pong(out, cmd->token.ptr, cmd->token.len);
    session_flush_check(c->s);
}

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
stats_router(struct router *r, struct evbuffer *out)
{
    stat_u64(out, "sessions", HASH_COUNT(r->clients));
    stat_u64(out, "sessions_total", r->n.sessions_total);
    stat_u64(out, "slow_consumers", r->n.slow_consumers);
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
    stat_u64(out, "limit.image_cache_bytes", r->cfg.image_cache_bytes);
    stat_u64(out, "limit.image_cache_total", r->cfg.image_cache_total);
    stat_u64(out, "limit.busdown_queue", r->cfg.busdown_queue);
    stat_u64(out, "limit.busdown_queue_bytes", r->cfg.busdown_queue_bytes);
    stat_u64(out, "limit.allow_empty_publish", r->cfg.allow_empty_publish);
    stat_u64(out, "limit.auth_pending", r->cfg.auth_pending);
    stat_u64(out, "limit.auth_pending_age_ms", r->cfg.auth_pending_age_ms);
}

static void
cmd_stats(struct router *r, struct client *c)
{
    struct evbuffer *out = session_output(c->s);
    struct client *o, *tmp;
    struct session_stats st;

    pending_expire(r);
    stat_text(out, "version", PACKAGE_VERSION);
    stat_u64(out, "uptime", (uint64_t)(time(NULL) - r->started));
    stats_bus(r, out);
    stats_router(r, out);
    stats_limits(r, out);
    HASH_ITER(hh, r->clients, o, tmp) {
        const struct session_peer *p = session_peer(o->s);

        session_get_stats(o->s, &st);
        evbuffer_add_printf(out, "STAT session %" PRIu64 " pid=%d uid=%d gid=%d subs=%u "
            "in=%" PRIu64 " out=%" PRIu64 " queued=%zu%s\n", session_id(o->s), (int)p->pid,
            (int)p->uid, (int)p->gid, o->n_subs, st.cmds_in, st.events_out,
            session_output_len(o->s), o == c ? " self" : "");
    }
    lp_format_end(out);
    session_flush_check(c->s);
}

void
router_command(struct router *r, struct session *s, const struct lp_cmd *cmd)
{
    struct client *c = client_find(r, s);

    if (c == NULL || c->closing || session_closing(s))
        return;
    switch (cmd->verb) {
    case LP_SUB:
        cmd_sub(r, c, cmd);
        break;
    case LP_UNSUB:
        cmd_unsub(r, c, cmd);
        break;
    case LP_PUB:
    case LP_SEND:
        cmd_publish(r, c, cmd);
        break;
    case LP_NOTIFY:
        cmd_notify(r, c, cmd);
        break;
    case LP_UNNOTIFY:
        cmd_unnotify(r, c, cmd);
        break;
    case LP_AUTHORIZER:
        cmd_authorizer(r, c, cmd);
        break;
    case LP_UNAUTHORIZER:
        cmd_unauthorizer(r, c, cmd);
        break;
    case LP_AUTHORIZE:
        cmd_authorize(r, c, cmd);
        break;
    case LP_PING:
        cmd_ping(r, c, cmd);
        break;
    case LP_STATS:
        cmd_stats(r, c);
        break;
    case LP_VERBOSE:
    case LP_QUIT:
        /* The session handles these itself. */
        session_reply_ok(s);
        break;
    }
}

/* ---- life cycle ---- */

static void
router_load_config(struct router *r, const struct config *cfg)
{
    free(r->cfg.image_content_types);
    r->cfg = cfg->router;
    r->cfg.image_content_types = cfg->router.image_content_types != NULL ?
        strdup(cfg->router.image_content_types) : NULL;
    r->bus_protocol = cfg->bus.protocol;
    r->qmsg.version = cfg->bus.protocol;
    r->listen = cfg->listen;
    r->listen.path = NULL;
    r->listen.group = NULL;
    r->max_name = cfg->bus.limits.max_string;
    r->max_entitlements = cfg->bus.limits.max_entitlements;
    r->grace_ms = cfg->daemon.shutdown_grace_ms;
}

struct router *
router_new(struct event_base *base, const struct config *cfg)
{
    struct router *r = calloc(1, sizeof *r);

    if (r == NULL)
        return NULL;
    r->base = base;
    r->scratch = evbuffer_new();
    r->one = evbuffer_new();
    r->queue = evbuffer_new();
    if (r->scratch == NULL || r->one == NULL || r->queue == NULL) {
        if (r->scratch != NULL)
            evbuffer_free(r->scratch);
        if (r->one != NULL)
            evbuffer_free(r->one);
        if (r->queue != NULL)
            evbuffer_free(r->queue);
        free(r);
        return NULL;
    }
    TAILQ_INIT(&r->pending_order);
    TAILQ_INIT(&r->replay_topics);
    TAILQ_INIT(&r->replay_feeds);
    if (base != NULL && (r->replay_ev = evtimer_new(base, replay_cb, r)) == NULL)
        fatalx("out of memory (replay timer)");
    wire_msg_init(&r->qmsg);
    router_load_config(r, cfg);
    r->state = BUS_DOWN;
    r->state_since = r->started = time(NULL);
    r->announced = local_state_name(BUS_DOWN);
    return r;
}

void
router_reconfigure(struct router *r, const struct config *cfg)
{
    struct topic *t, *ttmp;
    struct client *c, *ctmp;

    router_load_config(r, cfg);
    HASH_ITER(hh, r->topics, t, ttmp)
        if (t->cache != NULL && evbuffer_get_length(t->cache) > r->cfg.image_cache_bytes)
            cache_drop(r, t);
    HASH_ITER(hh, r->clients, c, ctmp)
        session_set_limits(c->s, &cfg->listen);
}

void
router_shutdown(struct router *r)
{
    struct client *c, *tmp;

    r->shutting_down = true;
    HASH_ITER(hh, r->clients, c, tmp)
        session_close(c->s, LP_ERR_SHUTTING_DOWN, "busgated is stopping");
}

void
router_free(struct router *r)
{
    struct feed *f, *ftmp;

    if (r == NULL)
        return;
    r->freeing = true;
    r->bus = NULL;
    replay_cancel(r);
    while (r->clients != NULL)
        session_free(r->clients->s);    /* detaches itself */
    HASH_ITER(hh, r->feeds, f, ftmp) {
        remotes_clear(r, f);
        pending_clear(r, f);
        feed_maybe_free(r, f);
    }
    if (r->queue_count > 0)
        log_warn("%u publishes held while the bus was down were never sent",
            r->queue_count);
    evbuffer_free(r->scratch);
    evbuffer_free(r->one);
    evbuffer_free(r->queue);
    wire_msg_free(&r->qmsg);
    if (r->replay_ev != NULL)
        event_free(r->replay_ev);
    free(r->cfg.image_content_types);
    free(r->key);
    free(r);
}
