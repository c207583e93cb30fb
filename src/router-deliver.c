/*
 * Delivery: one formatted event to many sessions.
 *
 * A DATA event is formatted once into a scratch evbuffer, then the same
 * bytes go to every receiver: copied when small (evbuffer_add coalesces
 * them with whatever is queued for that session), shared by reference when
 * large (one block, reference counted, no copy per session). Consecutive
 * events of one topic from one bus read are batched and delivered together.
 * A topic with a single subscriber skips the batch: its events are
 * formatted straight into that session's output. Either way the line
 * starts with the topic's escaped "DATA feed topic", made once per topic.
 *
 * Access rules cost nothing here: a topic's subscribers were allowed to
 * subscribe to its feed when they subscribed (and a reload ends those no
 * longer allowed), so multicast data, unicast data to the gateway's id
 * (routed to the same subscribers) and the cache replay reach only them.
 */
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>

#include "log.h"
#include "router-int.h"

static void
shared_unref(const void *data, size_t len, void *arg)
{
    struct shared *sh = arg;

    if (--sh->refs == 0)
        free(sh);
}

/* Append len bytes (events whole events) to a session's output. */
static void
deliver_bytes(struct client *c, const void *p, size_t len, struct shared *sh,
    unsigned events)
{
    struct evbuffer *out = rt_output(c);

    if (sh != NULL) {
        sh->refs++;
        if (evbuffer_add_reference(out, sh->data, sh->len, shared_unref, sh) != 0) {
            sh->refs--;
            evbuffer_add(out, p, len);
        }
    } else {
        evbuffer_add(out, p, len);
    }
    rt_flush(c, events);
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

/* Send the scratch events (events of them) to every live session on a
 * feed's role list. */
void
rt_deliver_roles(struct router *r, struct role_list *list, unsigned events)
{
    const unsigned char *p;
    struct shared *sh;
    struct role *ro, *next;
    size_t len;

    p = scratch_bytes(r, &len, &sh);
    LIST_FOREACH_SAFE(ro, list, by_feed, next)
        if (!rt_closing(ro->client))
            deliver_bytes(ro->client, p, len, sh, events);
    scratch_done(r, sh);
}

/* Every session gets the scratch event (BUS status). */
void
rt_deliver_all(struct router *r)
{
    const unsigned char *p;
    struct shared *sh;
    struct client *c, *tmp;
    size_t len;

    p = scratch_bytes(r, &len, &sh);
    HASH_ITER(hh, r->clients, c, tmp)
        if (!rt_closing(c))
            deliver_bytes(c, p, len, sh, 1);
    scratch_done(r, sh);
}

/* Deliver the batched DATA events of one topic to its subscribers. */
void
rt_batch_flush(struct router *r)
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
        if (rt_closing(sb->client))
            continue;
        deliver_bytes(sb->client, p, len, sh, (unsigned)r->batch_count);
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

/* The cache and a failed format, for an event just formatted. */
static void
formatted(struct router *r, struct topic *t, const struct wire_msg *m, int rc,
    const struct lp_bytes *at)
{
    if (rc != 0)
        log_error("cannot format a DATA event (out of memory)");
    else if (t->cache != NULL || m->is_image)
        rt_cache_update(r, t, m, at->p, at->len);
}

/* The event appended to out, at where it went: a small one formatted flat
 * in the router's buffer and added, a bigger one into a reservation. */
static int
format_event(struct router *r, struct evbuffer *out, const struct topic *t,
    const struct wire_msg *m, struct lp_bytes *at)
{
    return lp_format_data_at(out, m, t->prefix, t->prefix_len, r->small, sizeof r->small,
        at);
}

/*
 * A topic with one subscriber (many topics, one reader each: the common
 * market-data shape): the event goes straight to that session's output,
 * with no batch to copy from; the session's own buffer batches the writes
 * to its socket.
 */
static void
route_to_one(struct router *r, struct topic *t, const struct wire_msg *m)
{
    struct client *c = LIST_FIRST(&t->subs)->client;
    struct lp_bytes at;
    int rc;

    if (rt_closing(c))
        return;
    rc = format_event(r, rt_output(c), t, m, &at);
    formatted(r, t, m, rc, &at);
    if (rc == 0) {
        r->n.data_delivered++;
        rt_flush(c, 1);
    }
}

/* More subscribers: consecutive events of the topic are formatted into one
 * batch, delivered to each of them when the topic changes or it is full. */
static void
route_to_batch(struct router *r, struct topic *t, const struct wire_msg *m)
{
    struct lp_bytes at;
    int rc = format_event(r, r->scratch, t, m, &at);

    formatted(r, t, m, rc, &at);
    if (rc != 0)
        return; /* nothing was appended */
    r->batch_topic = t;
    r->batch_count++;
    if (evbuffer_get_length(r->scratch) >= batch_max(r))
        rt_batch_flush(r);
}

static inline bool
topic_is(const struct topic *t, const struct wire_msg *m)
{
    return t != NULL && wire_str_eq(&t->name, &m->topic) && wire_str_eq(&t->feed, &m->feed);
}

/* The message's topic entry. A bus read of one busy topic finds the last
 * one routed again, with no hash at all; a read of many topics finds each
 * in r->recent before it needs the keyed table. */
static struct topic *
route_topic(struct router *r, const struct wire_msg *m)
{
    struct topic **slot, *t = r->last_topic;

    if (topic_is(t, m))
        return t;
    if (r->recent == NULL)
        return NULL; /* no topic yet */
    slot = rt_recent(r, m->topic.ptr, m->topic.len);
    t = *slot;
    if (!topic_is(t, m)) {
        t = rt_topic_find(r, m->feed.ptr, m->feed.len, m->topic.ptr, m->topic.len);
        if (t != NULL)
            *slot = t;
    }
    r->last_topic = t;
    return t;
}

static inline void
route_data(struct router *r, const struct wire_msg *m)
{
    struct topic *t = route_topic(r, m);

    if (t == NULL && rt_link_holds(r, &m->feed, &m->topic))
        return; /* the link's own (heartbeats), counted there */
    r->n.data_in++;
    if (t == NULL) {
        /* Nobody local wants it; the v3 distributor keeps sending after an
         * unsubscribe (defect 1). */
        r->n.data_dropped_unwanted++;
        log_debug("data for %.*s / %.*s: no local subscriber, dropped", (int)m->feed.len,
            m->feed.ptr, (int)m->topic.len, m->topic.ptr);
        return;
    }
    if (r->batch_topic != NULL && t != r->batch_topic)
        rt_batch_flush(r); /* (no call when there is no batch: one subscriber) */
    if (t->n_subs == 1)
        route_to_one(r, t, m);
    else
        route_to_batch(r, t, m);
}

/* Bus protocol 6: the image flag worked out, on a copy (out of line: the
 * copy's frame is not paid at protocol 3). */
static void __attribute__((noinline))
route_data_v6(struct router *r, const struct wire_msg *m)
{
    struct wire_msg at6 = *m;

    at6.is_image = image_at_6(r, m);
    route_data(r, &at6);
}

void
rt_route_data(struct router *r, const struct wire_msg *m)
{
    if (m->version >= WIRE_V6)
        route_data_v6(r, m);
    else
        route_data(r, m);
}

void
router_bus_batch_end(struct router *r)
{
    rt_batch_flush(r);
}
