/*
 * The login probe (see busconfirm.h). Two requests go out right after the
 * credentials, in this order, so that the distributor, which handles one
 * connection's messages in order, has registered the notifier before the
 * subscription it should hear of:
 *
 *   NotificationRequest(feed, add)        needs the Notify role on feed
 *   SubscriptionRequest(feed, topic, add) needs Subscribe
 *
 * The echo is the ForwardedSubscriptionRequest of our own subscription,
 * which names our client id; on a feed requiring authorization, an
 * authorizer's "not entitled" answer is an echo too (a refused one).
 *
 * No publish: those two requests are byte-identical at every bus protocol
 * (3 to 6), while a publish is not (the content type of 6), so a wrong
 * bus.protocol still shows as the mismatch it is instead of a distributor
 * choking on the probe; and no data ever goes to a login that may have
 * been rejected. The topic is unique per link (host name and a fresh
 * random Guid), so an echo can only be ours.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/util.h>

#include "busconfirm.h"

void
busconfirm_init(struct busconfirm *p)
{
    memset(p, 0, sizeof *p);
}

void
busconfirm_free(struct busconfirm *p)
{
    free(p->feed);
    p->feed = NULL;
    p->feed_w = (struct wire_str){ NULL, 0 };
}

static void
str_set(struct wire_str *w, const char *s)
{
    w->ptr = s;
    w->len = (uint32_t)strlen(s);
}

static bool
str_is(const struct wire_str *w, const char *s)
{
    return s != NULL && w->len == strlen(s) && memcmp(w->ptr, s, w->len) == 0;
}

/* "<host>/<random guid>": ours alone, and telling operators whose it is. */
static void
fresh_topic(struct busconfirm *p)
{
    uint8_t g[GUID_WIRE_LEN];
    char host[256], text[GUID_TEXT_LEN + 1];

    evutil_secure_rng_get_bytes(g, sizeof g);
    g[7] = (uint8_t)((g[7] & 0x0f) | 0x40); /* version 4 (wire order) */
    g[8] = (uint8_t)((g[8] & 0x3f) | 0x80); /* RFC 4122 variant */
    guid_to_text(g, text);
    if (gethostname(host, sizeof host) != 0)
        snprintf(host, sizeof host, "unknown");
    host[sizeof host - 1] = '\0';
    snprintf(p->topic, sizeof p->topic, "%s/%s", host, text);
}

/* Append the probe's requests (all or nothing). */
static int
probe_encode(const struct busconfirm *p, int version, struct evbuffer *out)
{
    struct evbuffer *tmp = evbuffer_new();
    struct wire_msg m;
    int r = -1;

    if (tmp == NULL)
        return -1;
    memset(&m, 0, sizeof m);
    m.version = version;
    m.feed = p->feed_w;
    str_set(&m.topic, p->topic);
    m.is_add = true;
    m.type = WIRE_NOTIFICATION_REQUEST;
    if (wire_encode(tmp, &m) != 0)
        goto out;
    m.type = WIRE_SUBSCRIPTION_REQUEST;
    if (wire_encode(tmp, &m) != 0 || evbuffer_add_buffer(out, tmp) != 0)
        goto out;
    r = 0;
out:
    evbuffer_free(tmp);
    return r;
}

int
busconfirm_begin(struct busconfirm *p, const struct config_bus *cfg, struct evbuffer *out)
{
    p->method = cfg->confirm;
    p->have_client_id = false;
    p->topic[0] = '\0';
    p->state = p->method == CONFIG_CONFIRM_NONE ? BUSCONFIRM_OFF : BUSCONFIRM_WAITING;
    if (p->method != CONFIG_CONFIRM_PROBE)
        return 0;
    free(p->feed);
    if ((p->feed = strdup(cfg->confirm_feed != NULL ? cfg->confirm_feed : "__busgate__")) ==
        NULL)
        return -1;
    str_set(&p->feed_w, p->feed);
    fresh_topic(p);
    return probe_encode(p, cfg->protocol, out);
}

/* The distributor's not-entitled answer: empty user and host, an image,
 * no packets (also its stale form; nobody publishes on the probe's topic). */
static bool
not_entitled(const struct wire_msg *m)
{
    return m->user.len == 0 && m->host.len == 0 && m->n_packets == 0;
}

/* A message on the probe's feed (busconfirm_check). */
enum busconfirm_verdict
busconfirm_check_ours(struct busconfirm *p, const struct wire_msg *m)
{
    bool waiting = p->state == BUSCONFIRM_WAITING;

    switch (m->type) {
    case WIRE_FORWARDED_SUBSCRIPTION:
        if (!str_is(&m->topic, p->topic) || !m->is_add)
            return BUSCONFIRM_CONSUMED; /* other links' probes, our own remove */
        if (!p->have_client_id) {
            memcpy(p->client_id, m->client_id, GUID_WIRE_LEN);
            p->have_client_id = true;
        }
        return waiting ? BUSCONFIRM_ECHO : BUSCONFIRM_CONSUMED;
    case WIRE_FORWARDED_MULTICAST:
    case WIRE_FORWARDED_UNICAST:
        if (!str_is(&m->topic, p->topic) || !waiting)
            return BUSCONFIRM_CONSUMED;
        /* Data there from someone else also proves the login. */
        return not_entitled(m) ? BUSCONFIRM_REFUSED : BUSCONFIRM_ECHO;
    default:
        /* An authorization request for the probe's subscription is for
         * whoever authorizes that feed here: the router decides. */
        return BUSCONFIRM_NOT_OURS;
    }
}

int
busconfirm_withdraw(const struct busconfirm *p, int version, struct evbuffer *out)
{
    struct evbuffer *tmp;
    struct wire_msg m;
    int r = -1;

    if (p->method != CONFIG_CONFIRM_PROBE || p->feed == NULL)
        return 0;
    if ((tmp = evbuffer_new()) == NULL)
        return -1;
    memset(&m, 0, sizeof m);
    m.version = version;
    m.feed = p->feed_w;
    str_set(&m.topic, p->topic);
    m.is_add = false;
    m.type = WIRE_SUBSCRIPTION_REQUEST;
    if (wire_encode(tmp, &m) == 0) {
        m.type = WIRE_NOTIFICATION_REQUEST;
        if (wire_encode(tmp, &m) == 0 && evbuffer_add_buffer(out, tmp) == 0)
            r = 0;
    }
    evbuffer_free(tmp);
    return r;
}

const char *
busconfirm_state_name(enum busconfirm_state s)
{
    switch (s) {
    case BUSCONFIRM_OFF:
        return "off";
    case BUSCONFIRM_WAITING:
        return "waiting";
    case BUSCONFIRM_CONFIRMED:
        return "confirmed";
    case BUSCONFIRM_DENIED:
        return "probe-denied";
    case BUSCONFIRM_FAILED:
        return "failed";
    }
    return "unknown";
}
