/*
 * The one bus link: resolve, connect, TLS, authenticate, read and write
 * messages, reconnect forever with backoff and jitter, heartbeat watchdog.
 * It tells its user (the router) "state changed", "message", "drained"; it
 * knows nothing about local clients.
 */
#ifndef BUSGATE_BUS_H
#define BUSGATE_BUS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "config.h"
#include "wire.h"

struct event_base;
struct evdns_base;
struct bus;
struct evbuffer;

enum bus_state {
    BUS_DOWN,        /* not connected; a retry is scheduled (or stopped) */
    BUS_CONNECTING,  /* resolving, TCP connect, TLS handshake */
    BUS_UNCONFIRMED, /* credentials sent, nothing received from the bus yet */
    BUS_UP,          /* traffic received: authenticated and live */
};

/* "down", "connecting", "unconfirmed", "up" */
const char *bus_state_name(enum bus_state s);

struct bus_callbacks {
    /* Every state change, once; reason is set for BUS_DOWN ("connection
     * refused", "TLS: certificate verify failed: self-signed certificate",
     * "probable authentication failure (basic, user gw)", "no heartbeat:
     * not authenticated or dead", "protocol error: ..."). */
    void (*on_state)(void *arg, enum bus_state state, const char *reason);
    /* One decoded message from the bus (valid during the call only). */
    void (*on_message)(void *arg, const struct wire_msg *msg);
    /* Output fell back below the low-water mark after back-pressure. */
    void (*on_drained)(void *arg);
    /* Every message of one read has been passed to on_message. Returns
     * the bytes this loop turn has given each local output still to be
     * written, on average (0: none waits): while that is small, a longer
     * turn makes each write carry more. */
    size_t (*on_batch_end)(void *arg);
};

struct bus_stats {
    enum bus_state state;
    time_t state_since;       /* wall clock of the last state change; down and
                               * connecting: when the outage began */
    uint64_t connects;        /* successful TCP(+TLS) connections */
    uint64_t reconnects;      /* connection attempts after the first */
    uint64_t auth_failures;   /* probable authentication failures */
    uint64_t protocol_errors; /* bad bytes from the bus */
    uint64_t heartbeat_timeouts;
    uint64_t heartbeats_in; /* heartbeats received (also passed on) */
    const char *heartbeat;  /* this link: off, waiting, receiving,
                                   * none-received, stopped (bus_heartbeat) */
    const char *confirm;    /* the login's confirmation: off, waiting,
                                   * confirmed, probe-denied, failed */
    const char *client_id;  /* this link's id on the bus, "" until learned */
    uint64_t msgs_in, bytes_in;
    uint64_t msgs_out, bytes_out;
    size_t output_queued; /* bytes waiting to go to the bus */
    uint64_t bytes_lost;  /* queued bytes a failed link or shutdown took with it */
    char last_error[256];
    /* For STATS LINK and /metrics. */
    time_t last_heartbeat;   /* wall clock of the newest heartbeat, 0: none yet */
    const char *server;      /* "addr:port" of the current attempt or link, "" if none */
    const char *tls_version; /* the link's TLS version, NULL without TLS */
    const char *tls_cipher;
    int protocol;     /* bus.protocol */
    const char *host; /* bus.host and bus.port */
    unsigned port;
};

enum bus_send_result {
    BUS_SENT = 0,      /* queued for the bus */
    BUS_SENT_HIGH = 1, /* queued, and the output is now over its high-water
                        * mark (bus_congested): the caller that feeds it
                        * need not ask again */
    BUS_NOT_UP = -1,   /* link down or connecting: nothing queued */
    BUS_ENCODE_ERROR = -2,
};

/* Create the link (not started). cfg is copied as needed. */
struct bus *bus_new(struct event_base *base, struct evdns_base *dns,
    const struct config_bus *cfg, const struct bus_callbacks *cb, void *arg);

/* Start connecting (and reconnecting forever). */
int bus_start(struct bus *bus);

/* Queue msg when the state is UNCONFIRMED or UP; data (publishes, sends,
 * authorization answers) only when bus_data_ready. BUS_SENT_HIGH when it
 * was queued and left the output over its high-water mark. */
enum bus_send_result bus_send(struct bus *bus, const struct wire_msg *msg);

/* Whether the link takes data now: up, or unconfirmed with no way to
 * confirm it (bus.confirm none and no heartbeat watchdog). Until then the
 * router keeps data in its queue. */
bool bus_data_ready(const struct bus *bus);

/* Hand n messages of data already encoded at this bus's protocol to the
 * link, whole (data is left empty), when bus_data_ready. */
enum bus_send_result bus_send_encoded(struct bus *bus, struct evbuffer *data, uint64_t n);

/* True while more than output_high_water bytes wait to go out; the router
 * stops reading from sessions until on_drained. */
bool bus_congested(const struct bus *bus);

/* True when the link itself subscribes to (feed, topic) on every
 * connection (__admin__/heartbeat while the watchdog is on): the router
 * then sends no subscribe or unsubscribe of its own for that topic, and
 * drops its data uncounted when no local session wants it. */
bool
bus_holds(const struct bus *bus, const struct wire_str *feed, const struct wire_str *topic);

enum bus_state bus_state(const struct bus *bus);
void bus_get_stats(const struct bus *bus, struct bus_stats *st);

/* Apply a new bus config (SIGHUP). If anything that matters to the
 * connection changed (host, port, TLS, auth, credentials), the link is
 * closed at a message boundary and rebuilt. Returns 0 or -1 with err. */
int
bus_reconfigure(struct bus *bus, const struct config_bus *cfg, char *err, size_t errlen);

/* Flush what is queued (whole messages), then close; done(arg) is called
 * when closed or after timeout_ms. No reconnect after this. */
void bus_shutdown(struct bus *bus, uint32_t timeout_ms, void (*done)(void *), void *arg);

void bus_free(struct bus *bus);

/* Backoff: the delay before retry number attempt (0-based), full jitter in
 * [min, min(max, min * 2^attempt)] (never below min, so a failing bus is
 * not hammered), with rnd a uniform value in [0, 1).
 * Exposed for unit tests. A probable authentication failure counts as
 * several attempts ("backs off harder"). */
uint32_t bus_backoff_ms(uint32_t min_ms, uint32_t max_ms, unsigned attempt, double rnd);

/* A probable authentication failure counts as this many attempts. */
#define BUS_AUTH_FAILURE_ATTEMPTS 4
/* The attempt counter saturates here (the cap has long been reached). */
#define BUS_ATTEMPT_MAX 32

/* The attempt number after a failed connection: +1, or
 * +BUS_AUTH_FAILURE_ATTEMPTS for a probable authentication failure. */
unsigned bus_next_attempt(unsigned attempt, bool auth_failure);

/* What is known when a link fails, to tell a rejected login from the rest. */
struct bus_close_facts {
    bool unconfirmed;        /* credentials sent, nothing confirmed them yet */
    bool rx_any;             /* some bytes came back on this link */
    bool auth;               /* credentials were sent (bus.auth is not none) */
    bool tls_error;          /* a TLS-level failure: an alert, a refused
                                 * renegotiation, a bad record */
    uint64_t since_login_ms; /* since the credentials went out */
    uint32_t window_ms;      /* bus.auth_fail_window */
};

/*
 * Whether a failed link is a probable authentication failure (backed off
 * harder). The distributor never says "wrong password": it closes the
 * connection soon after the credentials, before sending anything. A TLS
 * error is no such close (the distributor rejects a login by closing,
 * never with an alert): its own reason is the cause. Exposed for unit tests.
 */
bool bus_probable_auth_failure(const struct bus_close_facts *f);

#endif /* BUSGATE_BUS_H */
