/*
 * The uplink: what goes upstream and when. Subscription and notification
 * requests for the first local holder, publishes, sends and authorization
 * answers, and the replay after a reconnect: a queue of topics and feeds
 * sent in bounded batches, one per loop turn and never past the bus's
 * high-water mark; a topic or feed dropped before its turn leaves the
 * queue and sends nothing upstream.
 *
 * Data for a link that is not ready waits in ONE queue, encoded for the
 * bus once and handed to it whole when it is ready (bus_data_ready: up,
 * or unconfirmed with no way to confirm). While the login is unconfirmed
 * data always waits there (a rejected login is silent: data sent to it
 * would vanish), with back-pressure past bus.output_high_water; while the
 * link is down only up to router.busdown_queue (0: refused). Both are
 * bounded by router.busdown_queue_bytes; busdown_lost counts what the
 * queue loses.
 */
#include <string.h>

#include <event2/buffer.h>
#include <event2/event.h>

#include "log.h"
#include "router-int.h"

static void pause_all(struct router *r);
static void replay_step(struct router *r);

/* Stop reading from sessions until the bus (or the queue) drains. */
static void
congest(struct router *r, const char *why)
{
    if (r->congested)
        return;
    r->congested = true;
    log_notice("%s: not reading from sessions until it drains", why);
    pause_all(r);
}

static bool
uplink_ready(const struct router *r)
{
    return r->bus != NULL && !r->freeing && rt_linked(r->state) && bus_data_ready(r->bus);
}

/* m to the bus, whose link the caller found up; back-pressure past its
 * high-water mark, which bus_send reports (asking bus_congested after
 * every publish measured the output a second time). */
static inline enum bus_send_result
send_up(struct router *r, const struct wire_msg *m)
{
    enum bus_send_result res = bus_send(r->bus, m);

    if (res != BUS_SENT_HIGH)
        return res;
    congest(r, "bus output over its high-water mark");
    return BUS_SENT;
}

/* Send upstream while the link is up; otherwise the replay at reconnect
 * does it. Returns the bus result (BUS_NOT_UP while down). */
enum bus_send_result
rt_upstream(struct router *r, const struct wire_msg *m)
{
    if (r->bus == NULL || r->freeing || !rt_linked(r->state))
        return BUS_NOT_UP;
    return send_up(r, m);
}

/* The link itself holds a subscription to this topic (the heartbeat
 * watchdog's): it is one holder among the local subscribers. */
bool
rt_link_holds(const struct router *r, const struct wire_str *feed,
    const struct wire_str *topic)
{
    return r->bus != NULL && bus_holds(r->bus, feed, topic);
}

/* The first local subscriber's add and the last one's remove; nothing for
 * a topic the link holds itself (a second add, or a remove that would end
 * the link's subscription on a distributor that counts them, defect 1). */
void
rt_upstream_subscription(struct router *r, const struct topic *t, bool add)
{
    struct wire_msg m;

    if (r->shutting_down || rt_link_holds(r, &t->feed, &t->name))
        return;
    memset(&m, 0, sizeof m);
    m.type = WIRE_SUBSCRIPTION_REQUEST;
    m.feed = t->feed;
    m.topic = t->name;
    m.is_add = add;
    rt_upstream(r, &m);
}

void
rt_upstream_notification(struct router *r, const struct feed *f, bool add)
{
    struct wire_msg m;

    if (r->shutting_down)
        return;
    memset(&m, 0, sizeof m);
    m.type = WIRE_NOTIFICATION_REQUEST;
    m.feed = f->name;
    m.is_add = add;
    rt_upstream(r, &m);
}

/* Hand the queue to a ready link, whole and in order. */
void
rt_queue_flush(struct router *r)
{
    uint32_t n = r->queue_count;
    size_t bytes;

    if (n == 0 || !uplink_ready(r))
        return; /* the common case, on every publish: nothing held */
    bytes = evbuffer_get_length(r->queue);
    if (bus_send_encoded(r->bus, r->queue, n) != BUS_SENT)
        return;
    r->queue_count = 0;
    log_info("sending %u message%s (%zu bytes) held until the bus link was ready", n,
        n == 1 ? "" : "s", bytes);
    if (bus_congested(r->bus))
        congest(r, "bus output over its high-water mark");
    else if (r->congested && !r->replaying)
        router_bus_drained(r); /* the queue itself held sessions back */
}

/* A protocol change on reload: the queue is re-encoded for the new one. */
void
rt_queue_reencode(struct router *r, int old_version, int new_version)
{
    struct wire_limits lim = { UINT32_MAX, UINT32_MAX, UINT32_MAX, UINT32_MAX, UINT32_MAX };
    struct evbuffer *again = evbuffer_new();
    const char *cause = NULL;
    uint32_t kept = 0;

    if (r->queue_count == 0 || old_version == new_version || again == NULL) {
        if (again != NULL)
            evbuffer_free(again);
        return;
    }
    r->qmsg.version = old_version;
    while (kept < r->queue_count &&
        wire_decode(r->queue, &lim, &r->qmsg, &cause) == WIRE_DECODED) {
        r->qmsg.version = new_version;
        if (wire_encode(again, &r->qmsg) != 0)
            break;
        r->qmsg.version = old_version;
        kept++;
    }
    if (kept < r->queue_count) {
        log_error("bus protocol %d -> %d: %u held messages cannot be re-encoded; lost",
            old_version, new_version, r->queue_count - kept);
        r->n.busdown_lost += r->queue_count - kept;
    }
    evbuffer_free(r->queue);
    r->queue = again;
    r->queue_count = kept;
    r->qmsg.version = new_version;
}

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

    while (r->replaying && rt_linked(r->state) && !r->congested &&
        (r->replay_ev == NULL || n < ROUTER_REPLAY_BATCH)) {
        if ((t = TAILQ_FIRST(&r->replay_topics)) != NULL) {
            rt_topic_unqueue(r, t);
            rt_upstream_subscription(r, t, true);
            r->replayed_topics++;
        } else if ((f = TAILQ_FIRST(&r->replay_feeds)) != NULL) {
            rt_feed_unqueue(r, f);
            rt_upstream_notification(r, f, true);
            r->replayed_feeds++;
        } else {
            r->replaying = false;
            if (r->replayed_topics > 0 || r->replayed_feeds > 0)
                log_info("bus link: replayed %u subscriptions and %u notification requests",
                    r->replayed_topics, r->replayed_feeds);
            rt_queue_flush(r);
            return;
        }
        n++;
    }
    if (r->replaying && rt_linked(r->state) && !r->congested)
        replay_schedule(r);
}

void
rt_replay_cb(evutil_socket_t fd, short what, void *arg)
{
    replay_step(arg);
}

/* The link came (back): tell the bus everything we want, then the queue. */
void
rt_replay_upstream(struct router *r)
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

void
rt_replay_cancel(struct router *r)
{
    while (!TAILQ_EMPTY(&r->replay_topics))
        rt_topic_unqueue(r, TAILQ_FIRST(&r->replay_topics));
    while (!TAILQ_EMPTY(&r->replay_feeds))
        rt_feed_unqueue(r, TAILQ_FIRST(&r->replay_feeds));
    if (r->replay_ev != NULL)
        evtimer_del(r->replay_ev);
    r->replaying = false;
}

static void
pause_all(struct router *r)
{
    struct client *c, *tmp;

    HASH_ITER(hh, r->clients, c, tmp)
        c->port->pause(c->s, true);
}

void
router_bus_drained(struct router *r)
{
    struct client *c, *tmp;

    if (r->congested)
        log_notice("bus output drained: reading from sessions again");
    r->congested = false;
    HASH_ITER(hh, r->clients, c, tmp)
        c->port->pause(c->s, false);
    if (r->replaying)
        replay_schedule(r);
}

/* Keep data for a link that is not ready (see the top). Out of line: a
 * publish to a ready link then saves no registers for it. */
static enum bus_send_result __attribute__((noinline)) queue_data(struct router *r,
    const struct wire_msg *m, bool while_down, char *why, size_t whylen)
{
    size_t size = wire_encoded_size(m), have = evbuffer_get_length(r->queue);
    bool confirming = r->state == BUS_UNCONFIRMED;
    struct wire_msg at = *m;

    if (!confirming && (!while_down || r->cfg.busdown_queue == 0)) {
        snprintf(why, whylen, "the bus link is %s", bus_state_name(r->state));
        return BUS_NOT_UP;
    }
    if ((!confirming && r->queue_count >= r->cfg.busdown_queue) ||
        have + size > r->cfg.busdown_queue_bytes) {
        snprintf(why, whylen,
            "the bus link is %s and its queue is full "
            "(%u messages, %zu bytes)",
            bus_state_name(r->state), r->queue_count, have);
        return BUS_NOT_UP;
    }
    at.version = r->bus_protocol;
    if (wire_encode(r->queue, &at) != 0)
        return BUS_ENCODE_ERROR;
    r->queue_count++;
    r->n.busdown_queued_total++;
    if (confirming && have + size > r->bus_high_water)
        congest(r,
            "data held for an unconfirmed login over the high-water mark "
            "(bus.output_high_water)");
    return BUS_SENT;
}

/* rt_send_data, inline in rt_cmd_publish (a publish then makes one call
 * fewer). */
static inline __attribute__((always_inline)) enum bus_send_result
send_data(struct router *r, const struct wire_msg *m, bool while_down, char *why,
    size_t whylen)
{
    enum bus_send_result res;

    if (r->queue_count > 0)
        rt_queue_flush(r);
    /* uplink_ready but for bus_data_ready, which bus_send checks for data
     * (BUS_NOT_UP: queued here then) */
    if (r->queue_count == 0 && r->bus != NULL && !r->freeing && rt_linked(r->state) &&
        (res = send_up(r, m)) != BUS_NOT_UP)
        return res;
    return queue_data(r, m, while_down, why, whylen);
}

enum bus_send_result
rt_send_data(struct router *r, const struct wire_msg *m, bool while_down, char *why,
    size_t whylen)
{
    return send_data(r, m, while_down, why, whylen);
}

void
rt_cmd_publish(struct router *r, struct client *c, const struct lp_cmd *cmd)
{
    struct wire_msg *m = &r->pub; /* see struct router */
    char why[192];

    if (!rt_permit(r, c, cmd->verb == LP_SEND ? ACCESS_SEND : ACCESS_PUBLISH, &cmd->feed))
        return;
    if (cmd->n_packets == 0 && !r->cfg.allow_empty_publish) {
        rt_reply_err(c, LP_ERR_NO_PACKETS,
            "a publish needs at least one packet "
            "(router.allow_empty_publish is off)");
        return;
    }
    m->type = cmd->verb == LP_SEND ? WIRE_UNICAST_DATA : WIRE_MULTICAST_DATA;
    memcpy(m->client_id, cmd->client_id, WIRE_GUID_LEN);
    m->feed.ptr = cmd->feed.ptr;
    m->feed.len = cmd->feed.len;
    m->topic.ptr = cmd->topic.ptr;
    m->topic.len = cmd->topic.len;
    m->version = r->bus_protocol; /* the queue keeps the content type */
    m->is_image = cmd->is_image;
    m->content_type.ptr = cmd->content_type.ptr;
    m->content_type.len = cmd->content_type.len;
    m->packets = cmd->packets;
    m->n_packets = cmd->n_packets;
    switch (send_data(r, m, true, why, sizeof why)) {
    case BUS_SENT:
        rt_reply_ok(c);
        break;
    case BUS_ENCODE_ERROR:
        rt_reply_err(c, LP_ERR_BAD_PACKET, "the message cannot be encoded");
        break;
    default:
        rt_reply_err(c, LP_ERR_BUS_DOWN, "%s; nothing was sent", why);
        break;
    }
}
