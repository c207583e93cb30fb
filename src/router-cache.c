/*
 * The image cache (per subscribed topic, router.image_cache bytes): the
 * formatted DATA events of the last image and the deltas after it. A new
 * image replaces it; a delta that would overflow the bound drops the cache,
 * and nothing is cached again until the next image (a late joiner gets no
 * partial history rather than a wrong one); a stale or not-entitled event
 * (empty user and host, image, no packets) is delivered and drops the
 * cache; losing the bus link drops every cache (nothing stale is replayed
 * as current). A local subscriber joining an already-subscribed topic gets
 * the cache, after its +OK and before live data.
 */

#include <event2/buffer.h>

#include "log.h"
#include "router-int.h"

void
rt_cache_drop(struct router *r, struct topic *t)
{
    if (t->cache == NULL)
        return;
    r->cache_bytes -= evbuffer_get_length(t->cache);
    evbuffer_free(t->cache);
    t->cache = NULL;
    t->cache_events = 0;
}

/* Add the event just formatted (p, len) to the cache. */
void
rt_cache_update(struct router *r, struct topic *t, const struct wire_msg *m,
    const unsigned char *p, size_t len)
{
    size_t cap = r->cfg.image_cache_bytes, have;
    bool stale = m->user.len == 0 && m->host.len == 0 && m->is_image && m->n_packets == 0;

    if (stale || m->is_image)
        rt_cache_drop(r, t);
    if (stale || cap == 0)
        return;
    if (r->cache_bytes + len > r->cfg.image_cache_total) {
        /* All topics' caches together are bounded too: this topic's late
         * joiners get live data only until its next image that fits. */
        if (m->is_image)
            r->n.cache_refused++;
        rt_cache_drop(r, t);
        return;
    }
    if (m->is_image) {
        if (len > cap || (t->cache = evbuffer_new()) == NULL)
            return;
    } else {
        if (t->cache == NULL)
            return; /* no image since the last overflow: nothing to build on */
        have = evbuffer_get_length(t->cache);
        if (have + len > cap) {
            log_debug("image cache of a topic over %zu bytes: dropped until the next image",
                cap);
            rt_cache_drop(r, t);
            return;
        }
    }
    evbuffer_add(t->cache, p, len);
    t->cache_events++; /* counted here, so a replay need not parse them */
    r->cache_bytes += len;
}

/* Copy a topic's cached events to one new subscriber: DATA delivered to a
 * session, counted as the live ones are. */
void
rt_cache_replay(struct router *r, struct topic *t, struct client *c)
{
    struct evbuffer_iovec vec[16];
    struct evbuffer_ptr pos;
    struct evbuffer *out = rt_output(c);
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
    r->n.data_delivered += t->cache_events;
    rt_flush(c, t->cache_events);
}
