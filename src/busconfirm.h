/*
 * The login probe: how the bus link learns, without distributor
 * heartbeats, that its login was accepted. The distributor answers neither
 * a good nor a bad login (BUS-PROTOCOL.md, defect 2), but it must echo a
 * probe: after the credentials the link registers as a notifier of a
 * private feed (bus.confirm_feed) and subscribes to a topic unique to this
 * link. The notification of its own subscription (which also carries the
 * link's client id) proves the login; a not-entitled answer proves it
 * too, but says the probe was refused. This module builds the probe and classifies
 * what comes back; the link (bus.c) owns the deadline and the state
 * changes. No I/O.
 */
#ifndef BUSGATE_BUSCONFIRM_H
#define BUSGATE_BUSCONFIRM_H

#include <stdbool.h>
#include <stdint.h>

#include "config.h"
#include "guid.h"
#include "wire.h"

struct evbuffer;

/* What STAT bus_confirm says about the current (or last) link. */
enum busconfirm_state {
    BUSCONFIRM_OFF,       /* bus.confirm none: the first message confirms, no deadline */
    BUSCONFIRM_WAITING,   /* credentials sent; no echo (or heartbeat) yet */
    BUSCONFIRM_CONFIRMED, /* the probe came back (or a heartbeat came): logged in */
    BUSCONFIRM_DENIED,    /* logged in (the bus sent traffic), but the probe was
                             * refused (not entitled) or never came back: roles */
    BUSCONFIRM_FAILED,    /* nothing at all came back in time: probable
                             * authentication failure; the link was dropped */
};

/* What a message from the bus is to the probe. */
enum busconfirm_verdict {
    BUSCONFIRM_NOT_OURS, /* pass it on to the router */
    BUSCONFIRM_CONSUMED, /* on the probe's feed: the link's own, nothing new */
    BUSCONFIRM_ECHO,     /* the probe came back: the login is confirmed */
    BUSCONFIRM_REFUSED,  /* the probe was answered "not entitled" */
};

struct busconfirm {
    enum config_confirm method;
    enum busconfirm_state state;
    char *feed;             /* bus.confirm_feed (probe only) */
    struct wire_str feed_w; /* feed as a wire string: checked against every message */
    char topic[320];        /* this link's: "<host>/<guid>" */
    bool have_client_id;    /* learned from the notification */
    uint8_t client_id[GUID_WIRE_LEN];
};

void busconfirm_init(struct busconfirm *p);
void busconfirm_free(struct busconfirm *p);

/* How many messages the probe's requests are (a notification and a
 * subscription request), as begin and withdraw append them: for the link's
 * messages-out counter. */
#define BUSCONFIRM_REQUESTS 2

/* A new link logged in: take the method from cfg and, for the probe,
 * append its requests to out at cfg->protocol. Returns 0 or -1
 * (out of memory; nothing appended). */
int
busconfirm_begin(struct busconfirm *p, const struct config_bus *cfg, struct evbuffer *out);

enum busconfirm_verdict
busconfirm_check_ours(struct busconfirm *p, const struct wire_msg *m);

/* Classify one message from the bus (see enum busconfirm_verdict). Learns
 * the client id from the notification of the probe's subscription. Inline
 * up to the feed: every data message asks, and almost none is on the
 * probe's feed. */
static inline enum busconfirm_verdict
busconfirm_check(struct busconfirm *p, const struct wire_msg *m)
{
    if (p->method != CONFIG_CONFIRM_PROBE || p->feed == NULL ||
        !wire_str_eq(&m->feed, &p->feed_w))
        return BUSCONFIRM_NOT_OURS;
    return busconfirm_check_ours(p, m);
}

/* The probe is settled: withdraw its notification and subscription, so
 * the link is not told of other links' probes. Returns 0 or -1. */
int busconfirm_withdraw(const struct busconfirm *p, int version, struct evbuffer *out);

/* "off", "waiting", "confirmed", "probe-denied", "failed" */
const char *busconfirm_state_name(enum busconfirm_state s);

#endif /* BUSGATE_BUSCONFIRM_H */
