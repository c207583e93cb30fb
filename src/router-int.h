/*
 * Private to the router-*.c files and stats.c (the public face is
 * router.h): the tables and what the router's parts call of each other.
 *
 * Containers: uthash for the keyed tables (topics by (feed, topic) bytes,
 * feeds by name, sessions by pointer, remote subscriptions and pending
 * authorization requests per feed) and the <sys/queue.h> macros (from
 * libbsd's header only) for the membership lists. Each membership record
 * sits on two lists, its topic's or feed's and its session's, so a session
 * leaving costs O(its own entries) and a fan-out walks exactly the
 * receivers.
 *
 * The parts: router.c (topics, clients, dispatch, bus state, life cycle),
 * router-deliver.c (one formatted event to many sessions), router-cache.c
 * (the image cache), router-feeds.c (notifiers, authorizers and pending
 * requests), router-uplink.c (what goes upstream, the replay after a
 * reconnect, the bus-down queue), stats.c (STATS).
 */
#ifndef BUSGATE_ROUTER_INT_H
#define BUSGATE_ROUTER_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#include <bsd/sys/queue.h>
#include <event2/event.h>

#include "access.h"
#include "bus.h"
#include "config.h"
#include "lineproto.h"
#include "log.h"
#include "peerid.h"
#include "router.h"
#include "siphash.h"
#include "wire.h"

/*
 * The tables' hash: SipHash-1-3 under a key drawn at start (router_new).
 * Topics and feeds are named by local apps; with an unkeyed hash one of
 * them could pick names that share a bucket and make every lookup walk
 * them all. The unkeyed multiply-and-fold hash this replaced (~30
 * instructions a lookup against ~125 for a 10-byte key) had collisions
 * that no seed folded into it would move: flip the top bit of two
 * consecutive words and the multiplies carry the flips out together.
 */
extern struct siphash_key rt_hash_key;

static inline unsigned
rt_hash(const void *key, size_t len)
{
    return (unsigned)siphash13(&rt_hash_key, key, len);
}

#define HASH_FUNCTION(keyptr, keylen, hashv) ((hashv) = rt_hash((keyptr), (keylen)))
#define uthash_fatal(msg) fatalx("out of memory (%s)", msg)
#include <uthash.h>

/* An event or a batch bigger than this is shared by reference, not copied. */
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
    UT_hash_handle hh; /* its client's notify_by/authorize_by, by feed */
    LIST_ENTRY(role) by_feed;
    LIST_ENTRY(role) by_client;
};

LIST_HEAD(sub_list, sub);
LIST_HEAD(role_list, role);

/* The router's record of one session. */
struct client {
    struct session *s; /* opaque: reached through port */
    const struct router_port *port;
    uint64_t id; /* the session's number, for STATS */
    struct peer_cred peer;
    struct access_id who; /* peer's uid, gid and groups (own copy) */
    char *user;           /* the uid's name, for logs */
    char *app;            /* what the app called itself (NAME); NULL: nothing */
    uint64_t perm_denied; /* commands the access rules refused */
    uint64_t revoked;     /* registrations a reload's rules ended */
    UT_hash_handle hh;    /* r->clients, by session pointer */
    struct sub_list subs;
    struct role_list notifies;
    struct role_list authorizes;
    struct role *notify_by, *authorize_by; /* the same roles, by feed pointer */
    uint32_t n_subs;
    uint32_t n_notifies, n_authorizes;
    bool closing; /* released: routed to no more */
};

/* A (feed, topic) with at least one local subscriber. */
struct topic {
    UT_hash_handle hh; /* r->topics, by key */
    struct sub_list subs;
    uint32_t n_subs;
    struct evbuffer *cache;     /* image + deltas as DATA events; NULL: none */
    unsigned cache_events;      /* how many events cache holds */
    TAILQ_ENTRY(topic) replay;  /* r->replay_topics while replay_queued */
    bool replay_queued;         /* not yet subscribed upstream on this link */
    struct wire_str feed, name; /* point into key, NUL-terminated */
    size_t keylen;
    const char *prefix; /* "DATA <feed> <topic>", escaped; after key */
    size_t prefix_len;
    char key[]; /* feed length (4), feed, NUL, topic, NUL */
};

/* A remote subscription a notification told us of. */
struct remote {
    UT_hash_handle hh;        /* feed->remotes, by key */
    uint32_t count;           /* adds minus removes */
    const uint8_t *client_id; /* these point into key */
    struct wire_str user, host, topic;
    size_t keylen;
    char key[];
};

/* An AuthorizationRequest the bus sent us, until answered (and then as
 * "answered", so a second answer is refused). */
struct pending {
    UT_hash_handle hh;          /* feed->pending, by client id + topic */
    TAILQ_ENTRY(pending) order; /* r->pending_order, oldest first */
    struct feed *feed;
    bool answered;
    uint64_t since_ms;        /* monotonic, when the bus asked */
    const uint8_t *client_id; /* these point into key/extra */
    struct wire_str topic, user, host;
    size_t keylen;
    char key[]; /* client id (16), topic, NUL, user, NUL, host, NUL */
};

TAILQ_HEAD(pending_list, pending);

/* A feed with local notifiers or authorizers, or pending requests. */
struct feed {
    UT_hash_handle hh; /* r->feeds, by name */
    struct role_list notifiers;
    struct role_list authorizers;
    uint32_t n_notifiers, n_authorizers;
    struct remote *remotes; /* known while it has notifiers */
    struct pending *pending;
    TAILQ_ENTRY(feed) replay; /* r->replay_feeds while replay_queued */
    bool replay_queued;       /* notifiers not yet registered upstream on this link */
    struct wire_str name;     /* points into key */
    char key[];
};

/* Formatted events shared by several evbuffers (a large event, or a
 * batch), freed with its last reference. */
struct shared {
    unsigned refs;
    size_t len;
    size_t cap; /* a batch's block: bytes at data */
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
    uint64_t bus_other;       /* bus messages a client never receives */
    uint64_t cache_refused;   /* images not cached: router.image_cache_total */
    uint64_t remotes_dropped; /* remote subscriptions not remembered */
    uint64_t perm_denied;     /* commands the access rules refused */
    uint64_t revoked;         /* registrations a reload's rules ended */
};

struct router {
    struct event_base *base;
    struct bus *bus;
    struct client *clients;
    struct topic *topics;
    struct feed *feeds;
    /* The all-feeds authorizers' roles (router-feeds.c); NULL: none. */
    struct feed *all_feeds;
    struct pending_list pending_order;
    uint32_t n_pending;
    TAILQ_HEAD(, topic) replay_topics; /* the replay after a reconnect, still to send */
    TAILQ_HEAD(, feed) replay_feeds;
    struct event *replay_ev; /* the next replay batch (NULL: no event base) */
    bool replaying;
    unsigned replayed_topics, replayed_feeds;
    uint32_t n_remotes;       /* remembered remote subscriptions */
    uint64_t n_subscriptions; /* local (session, topic) pairs */
    uint32_t n_notify_feeds;  /* feeds we notify on upstream */
    uint32_t n_authorizer_feeds;
    size_t cache_bytes; /* all topics' caches */

    struct evbuffer *scratch;   /* one formatted event for many sessions */
    struct shared *batch;       /* DATA events of batch_topic, formatted */
    struct topic *batch_topic;  /* batch holds undelivered events of it */
    struct topic *last_topic;   /* the topic of the last DATA routed */
    /* Topics of recent DATA by a cheap hash of the name (rt_recent):
     * recent_mask + 1 slots, each NULL or a live topic. */
    struct topic **recent;
    size_t recent_mask;
    uint64_t batch_count;
    struct evbuffer *queue; /* data for a link not ready: encoded, in order */
    uint32_t queue_count;
    struct wire_msg qmsg; /* re-encoding the queue (protocol change) */
    /* Every publish's message (rt_cmd_publish): zero from the start but
     * for the fields a PUB or SEND sets, all of which each one sets, so
     * it is not cleared per publish. */
    struct wire_msg pub;
    size_t bus_high_water; /* bus.output_high_water */
    char *key;             /* lookup key scratch */
    size_t key_cap;

    enum bus_state state;
    time_t state_since;
    const char *announced; /* the BUS state sessions were last told */
    bool congested;        /* bus output over its high-water mark */
    bool shutting_down;
    bool freeing;
    time_t started;      /* wall clock: start_time */
    uint64_t started_ms; /* monotonic: uptime, which a clock step must not move */
    const struct router_port *port; /* the newest session's: the memory budget */

    struct config_router cfg;    /* image_content_types: our own copy */
    struct access_rules *access; /* a reference; NULL: everyone may do everything */
    struct peerid *ids;          /* uid -> name and groups */
    int bus_protocol;
    struct config_listen listen; /* numbers only: path/group not kept */
    uint32_t max_name, max_entitlements;
    struct router_counters n;
};

/*
 * The slot of r->recent for a topic name: a multiply-and-fold hash, 8
 * bytes a round, with no key. With 1000 topics in one bus read the keyed
 * table's lookup (the key built, SipHash, the bucket walk) was a fifth of
 * a delivery: finding the topic cost ~330 instructions a message, and
 * costs ~105 with this in front (92% hits). Names chosen to collide only
 * make slots miss, and a miss is that lookup, so the table's defence
 * against flooding stands.
 */
static inline struct topic **
rt_recent(const struct router *r, const char *p, size_t n)
{
    const uint64_t mul = 0x9e3779b97f4a7c15u;
    uint64_t h = n * mul, w = 0;
    uint32_t lo, hi;

    for (; n > 8; p += 8, n -= 8) {
        memcpy(&w, p, 8);
        h = (h ^ w) * mul;
    }
    if (n >= 4) {
        memcpy(&lo, p, 4);
        memcpy(&hi, p + n - 4, 4);
        w = lo | (uint64_t)hi << 32;
    } else if (n > 0) {
        w = (uint8_t)p[0] | (uint32_t)(uint8_t)p[n / 2] << 8 |
            (uint32_t)(uint8_t)p[n - 1] << 16;
    }
    h = (h ^ w) * mul;
    return &r->recent[(h ^ h >> 32) & r->recent_mask];
}

/* A client's session, through its port. */
static inline struct evbuffer *
rt_output(const struct client *c)
{
    return c->port->output(c->s);
}

/* After appending to c's output: events is how many event lines were
 * appended (0 for a reply), so that the session counts events, not writes. */
static inline bool
rt_flush(struct client *c, unsigned events)
{
    return c->port->flush(c->s, events);
}

static inline bool
rt_closing(const struct client *c)
{
    return c->closing || c->port->closing(c->s);
}

/* Whether the link carries traffic (asked on every publish: inline). */
static inline bool
rt_linked(enum bus_state st)
{
    return st == BUS_UNCONFIRMED || st == BUS_UP;
}

static inline void
rt_reply_ok(struct client *c)
{
    c->port->reply(c->s, LP_ERR_NONE, NULL);
}

/* router.c */
void rt_reply_err(struct client *c, enum lp_error e, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
bool rt_permit_by_rules(struct router *r, struct client *c, enum access_verb verb,
    const struct lp_name *feed);

/* Whether c may do verb on feed (NULL for stats); a refusal is answered,
 * counted and logged. Without access rules (r->access NULL: everyone may
 * do everything) the answer needs no call: a publish pays none. */
static inline bool
rt_permit(struct router *r, struct client *c, enum access_verb verb,
    const struct lp_name *feed)
{
    return r->access == NULL || rt_permit_by_rules(r, c, verb, feed);
}
uint64_t rt_mono_ms(void);
void *rt_xcalloc(size_t n);
char *rt_key_room(struct router *r, size_t n);
struct topic *rt_topic_find(struct router *r, const char *feed, uint32_t flen,
    const char *topic, uint32_t tlen);
void rt_topic_unqueue(struct router *r, struct topic *t);
struct role *rt_role_find(struct role *by_feed, const struct feed *f);

/* router-deliver.c */
void rt_deliver_roles(struct router *r, struct role_list *list, unsigned events);
void rt_deliver_all(struct router *r);
void rt_batch_flush(struct router *r);
void rt_route_data(struct router *r, const struct wire_msg *m);

/* router-cache.c */
void rt_cache_drop(struct router *r, struct topic *t);
void rt_cache_update(struct router *r, struct topic *t, const struct wire_msg *m,
    const unsigned char *p, size_t len);
void rt_cache_replay(struct router *r, struct topic *t, struct client *c);

/* router-feeds.c */
void rt_remotes_clear(struct router *r, struct feed *f);
void rt_pending_clear(struct router *r, struct feed *f);
void rt_feed_unqueue(struct router *r, struct feed *f);
void rt_feed_maybe_free(struct router *r, struct feed *f);
void rt_route_notification(struct router *r, const struct wire_msg *m);
void rt_pending_expire(struct router *r);
void rt_route_authreq(struct router *r, const struct wire_msg *m);
void rt_remotes_end(struct router *r, struct feed *f);
void rt_notify_remove(struct router *r, struct role *ro);
void rt_authorizer_remove(struct router *r, struct role *ro);
void rt_cmd_notify(struct router *r, struct client *c, const struct lp_cmd *cmd);
void rt_cmd_unnotify(struct router *r, struct client *c, const struct lp_cmd *cmd);
void rt_cmd_authorizer(struct router *r, struct client *c, const struct lp_cmd *cmd);
void rt_cmd_unauthorizer(struct router *r, struct client *c, const struct lp_cmd *cmd);
void rt_cmd_authorize(struct router *r, struct client *c, const struct lp_cmd *cmd);

/* router-uplink.c */
enum bus_send_result rt_upstream(struct router *r, const struct wire_msg *m);
bool rt_link_holds(const struct router *r, const struct wire_str *feed,
    const struct wire_str *topic);
void rt_upstream_subscription(struct router *r, const struct topic *t, bool add);
void rt_upstream_notification(struct router *r, const struct feed *f, bool add);
enum bus_send_result rt_send_data(struct router *r, const struct wire_msg *m,
    bool while_down, char *why, size_t whylen);
void rt_queue_flush(struct router *r);
void rt_queue_reencode(struct router *r, int old_version, int new_version);
void rt_replay_cb(evutil_socket_t fd, short what, void *arg);
void rt_replay_upstream(struct router *r);
void rt_replay_cancel(struct router *r);
void rt_cmd_publish(struct router *r, struct client *c, const struct lp_cmd *cmd);

/* stats.c */
void rt_cmd_stats(struct router *r, struct client *c, enum lp_stats_view view);

#endif /* BUSGATE_ROUTER_INT_H */
