/*
 * The uplink: what goes upstream and when. Subscription and notification
 * requests for the first local holder, publishes and sends, the bus-down
 * queue, and the replay after a reconnect: a queue of topics and feeds
 * sent in bounded batches, one per loop turn and never past the bus's
 * high-water mark; a topic or feed dropped before its turn leaves the
 * queue and sends nothing upstream.
 */
#include <string.h>

#include <event2/buffer.h>
#include <event2/event.h>

#include "log.h"
#include "router-int.h"

static void pause_all(struct router *r);
static void replay_step(struct router *r);

/* Send rt_upstream while the link is up; otherwise the replay at reconnect
 * does it. Returns the bus result (BUS_NOT_UP while down). */
enum bus_send_result
rt_upstream(struct router *r, const struct wire_msg *m)
{
    enum bus_send_result res;

    if (r->bus == NULL || r->freeing || !rt_linked(r->state))
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
bool
rt_link_holds(const struct router *r, const struct wire_str *feed, const struct wire_str *topic)
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

/* Send every queued publish/send, in order. */
static void
queue_flush(struct router *r)
{
    struct wire_limits lim = { UINT32_MAX, UINT32_MAX, UINT32_MAX, UINT32_MAX, UINT32_MAX };
    const char *cause = NULL;
    uint32_t sent = 0;

    while (r->queue_count > 0 && rt_linked(r->state) && r->bus != NULL) {
        if (wire_decode(r->queue, &lim, &r->qmsg, &cause) != WIRE_DECODED) {
            log_error("bus-down queue unreadable (%s): %u messages lost",
                cause != NULL ? cause : "incomplete", r->queue_count);
            r->n.busdown_lost += r->queue_count;
            evbuffer_drain(r->queue, evbuffer_get_length(r->queue));
            r->queue_count = 0;
            break;
        }
        r->queue_count--;
        if (rt_upstream(r, &r->qmsg) != BUS_SENT) {
            log_warn("a queued %s could not be sent", wire_type_name(r->qmsg.type));
            r->n.busdown_lost++;
        } else {
            sent++;
        }
    }
    if (sent > 0)
        log_info("sent %u publishes held while the bus was down", sent);
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
            queue_flush(r);
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

/* Hold a publish while the bus is down, if the queue has room. */
static void
queue_publish(struct router *r, struct client *c, const struct wire_msg *m)
{
    size_t size = wire_encoded_size(m), have = evbuffer_get_length(r->queue);

    if (r->cfg.busdown_queue == 0) {
        rt_reply_err(c, LP_ERR_BUS_DOWN, "the bus link is %s; nothing was sent",
            bus_state_name(r->state));
        return;
    }
    if (r->queue_count >= r->cfg.busdown_queue ||
        have + size > r->cfg.busdown_queue_bytes) {
        rt_reply_err(c, LP_ERR_BUS_DOWN, "the bus link is %s and the bus-down "
            "queue is full (%u messages, %zu bytes); nothing was sent",
            bus_state_name(r->state), r->queue_count, have);
        return;
    }
    if (wire_encode(r->queue, m) != 0) {
        rt_reply_err(c, LP_ERR_BAD_PACKET, "the message cannot be encoded");
        return;
    }
    r->queue_count++;
    r->n.busdown_queued_total++;
    rt_reply_ok(c);
}

void
rt_cmd_publish(struct router *r, struct client *c, const struct lp_cmd *cmd)
{
    struct wire_msg m;

    if (!rt_permit(r, c, cmd->verb == LP_SEND ? ACCESS_SEND : ACCESS_PUBLISH, &cmd->feed))
        return;
    if (cmd->n_packets == 0 && !r->cfg.allow_empty_publish) {
        rt_reply_err(c, LP_ERR_NO_PACKETS, "a publish needs at least one packet "
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
    switch (rt_upstream(r, &m)) {
    case BUS_SENT:
        rt_reply_ok(c);
        break;
    case BUS_ENCODE_ERROR:
        rt_reply_err(c, LP_ERR_BAD_PACKET, "the message cannot be encoded");
        break;
    default:
        queue_publish(r, c, &m);
        break;
    }
}
