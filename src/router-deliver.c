/*
 * Delivery: one formatted event to many sessions.
 *
 * An event is formatted once, then the same bytes go to every receiver:
 * copied when small (evbuffer_add coalesces them with whatever is queued
 * for that session), shared by reference when large (one block, reference
 * counted, no copy per session). Consecutive DATA events of one topic from
 * one bus read are formatted one after another into one block (the
 * batch), with no libevent call per event, and delivered together; a DATA
 * line starts with the topic's escaped "DATA feed topic", made once per
 * topic. Other events are formatted into the scratch evbuffer.
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
static inline void
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

/* A block about to be shared cut to what it holds: a session's queue is
 * counted by its length (listen.max_output, the budget), and the block's
 * unused end would be held with it uncounted. */
static struct shared *
batch_fit(struct router *r, struct shared *b)
{
    struct shared *fit = realloc(b, sizeof *b + b->len);

    if (fit == NULL)
        return b;
    fit->cap = fit->len;
    return r->batch = fit;
}

/* Deliver the batched DATA events of one topic to its subscribers: a
 * large batch by reference (the block is theirs then, and the next batch
 * takes a new one), a small one copied. */
void
rt_batch_flush(struct router *r)
{
    struct topic *t = r->batch_topic;
    struct shared *b = r->batch;
    struct sub *sb, *next;

    if (t == NULL)
        return;
    r->batch_topic = NULL;
    if (b->len >= ROUTER_SHARE_MIN && b->len < b->cap)
        b = batch_fit(r, b);
    LIST_FOREACH_SAFE(sb, &t->subs, by_topic, next) {
        if (rt_closing(sb->client))
            continue;
        deliver_bytes(sb->client, b->data, b->len, b->len >= ROUTER_SHARE_MIN ? b : NULL,
            (unsigned)r->batch_count);
        r->n.data_delivered += r->batch_count;
    }
    r->batch_count = 0;
    b->len = 0;
    if (b->refs > 1) {
        b->refs--;
        r->batch = NULL;
    }
}

/* A batch block with room for at least need bytes, empty: NULL if out of
 * memory. */
static struct shared *
batch_block(struct router *r, size_t need)
{
    size_t cap = need > batch_max(r) ? need : batch_max(r);
    struct shared *b = r->batch;

    if (b != NULL && b->cap >= need)
        return b;
    free(b); /* held alone: a flush gives a shared block up */
    if ((b = r->batch = malloc(sizeof *b + cap)) != NULL) {
        b->refs = 1;
        b->len = 0;
        b->cap = cap;
    }
    return b;
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

/*
 * The event of m appended to the batch of t, which is delivered when the
 * topic changes, when it is full, and at the end of the bus read. With one
 * subscriber (many topics, one reader each: the common market-data shape)
 * a batch of one event is copied to its output, as a direct append would
 * be; a busy topic's batch goes whole, by reference.
 */
static void
route_to_batch(struct router *r, struct topic *t, const struct wire_msg *m)
{
    struct shared *b = r->batch;
    size_t n = 0;
    int rc = lp_format_data_flat(b != NULL ? (char *)b->data + b->len : NULL,
        b != NULL ? b->cap - b->len : 0, m, t->prefix, t->prefix_len, &n);

    if (rc == 1) { /* no room: the batch goes, and a block takes it */
        rt_batch_flush(r);
        if ((b = batch_block(r, n)) != NULL)
            rc = lp_format_data_flat((char *)b->data, b->cap, m, t->prefix, t->prefix_len,
                &n);
    }
    if (rc != 0) {
        log_error("cannot format a DATA event (out of memory)");
        return;
    }
    if (t->cache != NULL || m->is_image)
        rt_cache_update(r, t, m, b->data + b->len, n);
    b->len += n;
    r->batch_topic = t;
    r->batch_count++;
    if (b->len >= batch_max(r))
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
    if (t != r->batch_topic)
        rt_batch_flush(r);
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
