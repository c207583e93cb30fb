/*
 * The one bus link. A connection attempt walks DOWN -> CONNECTING (resolve,
 * TCP connect to each address in turn, TLS handshake) -> UNCONFIRMED
 * (credentials sent; the v3 distributor never says whether it accepted
 * them) -> UP (the first message arrived). Any failure goes back to DOWN
 * and schedules the next attempt with exponential backoff and jitter,
 * forever, until bus_shutdown.
 *
 * TCP and TLS are two bufferevents in turn: a socket bufferevent connects
 * (so a refused connection is reported as such), then its descriptor is
 * handed to an OpenSSL socket bufferevent for the handshake and the rest
 * of the connection (no filter layer, no extra copy).
 *
 * Heartbeats: when the watchdog is on, the link itself subscribes to
 * __admin__/heartbeat at connect, counts the heartbeats and passes them on
 * like any data, so local subscribers of that topic receive them. The
 * subscription is the link's: bus_holds says so, and the router counts the
 * link as one holder of the topic among its local subscribers (it neither
 * subscribes a second time nor unsubscribes it while the watchdog is on).
 *
 * We only ever append whole messages to the output, so closing after the
 * output has drained closes at a message boundary (defect 8). Deliberate
 * closes (reconfigure, shutdown) drain first, bounded by a timer; a
 * failed link is closed at once, and the data it still had queued
 * (publishes, sends, authorization answers) is reported as lost. The
 * output remembers what it holds as runs of data and of requests
 * (subscription and notification requests, which the router replays on
 * the next link, and the credentials), so requests are not counted.
 *
 * Confirming the login (bus.confirm): the first message of any kind from
 * the bus proves the login was accepted (a rejected one hears nothing).
 * With the probe (busconfirm.c, the default) the link asks the bus for an
 * echo right after the credentials (the notification of a subscription of
 * its own), so even a quiet bus confirms at once;
 * nothing at all within bus.confirm_timeout is a probable authentication
 * failure, retried with the harder backoff. Traffic but no echo means the
 * login worked and the probe's roles are denied: said once, the link stays.
 *
 * Data held for confirmation: with a confirmation (the probe or the
 * watchdog) on, publishes, sends and authorization answers made while the
 * link is unconfirmed wait in a separate buffer until the first message
 * proves the login was accepted.
 * A rejected login is silent (defect 2): sent at once they would vanish
 * although the router acknowledged them. Held data moves to the next link
 * when this one fails unconfirmed (nothing reached an authenticated
 * session), and counts towards the high-water mark. Subscription and
 * notification requests go out at once: the router replays them anyway.
 * With neither (bus.confirm none, no watchdog) a quiet bus may never
 * confirm the link, so nothing is held.
 */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <linux/sockios.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/dns.h>
#include <event2/event.h>
#include <event2/util.h>
#include <openssl/ssl.h>

#include "bus.h"
#include "busconfirm.h"
#include "credentials.h"
#include "log.h"
#include "tls.h"
#include "sockread.h"

/* Identical failures in a row are logged once, then every this many. */
#define BUS_LOG_REPEAT_EVERY 10
/* Bytes moved per read or write callback (libevent's default is 16 KiB):
 * fewer wake-ups per megabyte when the bus streams. */
#define BUS_IO_CHUNK (256 * 1024)
/* Most OpenSSL error codes looked at to explain one failure. */
#define BUS_MAX_SSL_ERRORS 8

#define HEARTBEAT_FEED "__admin__"
#define HEARTBEAT_TOPIC "heartbeat"

/* A closed link still flushing its last whole messages. */
struct bus_drain {
    struct bus *bus;
    struct bufferevent *bev;
    struct event *timer;
    LIST_ENTRY(bus_drain) entry;
};

/* A pending DNS lookup; outlives the bus if cancelled (evdns calls back later). */
struct bus_resolve {
    struct bus *bus;            /* NULL once cancelled */
    struct evdns_getaddrinfo_request *req;
};

struct bus {
    struct event_base *base;
    struct evdns_base *dns;
    bool own_dns;               /* created here because the caller gave none */
    struct config_bus cfg;      /* our deep copy */
    SSL_CTX *ssl_ctx;           /* NULL without TLS (or until it can be built) */
    struct bus_callbacks cb;
    void *cb_arg;

    enum bus_state state;
    bool started;
    bool stopping;              /* bus_shutdown called: no more attempts */
    bool attempted;             /* an attempt was made before (for stats) */

    /* The current attempt or link. */
    struct bufferevent *bev;
    bool tls_phase;             /* bev is the OpenSSL one */
    struct bus_resolve *resolve;
    struct evutil_addrinfo *addrs;      /* resolved addresses */
    struct evutil_addrinfo *next_addr;  /* the next one to try */
    char peer[INET6_ADDRSTRLEN + 16];   /* "addr:port" being tried */
    int last_sys_err;
    char auth_desc[192];        /* "basic, user gw": for logs, never a secret */
    uint64_t auth_sent_ms;      /* monotonic, when the credentials went out */
    uint64_t up_since_ms;
    uint64_t last_rx_ms;
    bool rx_any;                /* something arrived on this link */
    bool hb_any;                /* a heartbeat arrived on this link */
    bool hb_warned;             /* "traffic but no heartbeat" said for this link */
    const char *hb_state;       /* for STATS: see struct bus_stats */
    bool mismatch_hinted;       /* the protocol mismatch hint is logged once */
    uint64_t msgs_at_login;     /* st.msgs_in when this link logged in */
    bool pressure;              /* output passed the high-water mark */

    struct event *retry_timer;    /* DOWN: the next attempt */
    struct event *connect_timer;  /* CONNECTING: bounds the whole attempt */
    struct event *watchdog;       /* UNCONFIRMED/UP: heartbeat timeout */
    struct event *confirm_timer;  /* UNCONFIRMED/UP: the probe's deadline */
    struct busconfirm confirm;    /* how this link's login is confirmed */
    char client_id[GUID_TEXT_LEN + 1];  /* learned from the probe, "" if not */
    bool probe_hinted;            /* the "roles may deny the probe" hint is logged once */
    struct event *done_ev;        /* bus_shutdown completion */

    unsigned attempt;             /* failures since the link was last up for long */
    unsigned streak;              /* failed attempts since the link was last up */
    unsigned retries;             /* retries scheduled since the link was last up */
    char fail_reason[256];        /* the last failure, to summarise repeats */
    unsigned fail_repeats;

    void (*shutdown_done)(void *);
    void *shutdown_arg;
    bool shutdown_pending;

    struct evbuffer *held;        /* data waiting for confirmation (see top) */
    uint64_t held_msgs;
    TAILQ_HEAD(out_run_list, out_run) runs;   /* the output's recent appends, oldest first */
    size_t runs_len;              /* bytes they cover */

    struct wire_msg msg;          /* reused for every decoded message */
    struct bus_stats st;
    LIST_HEAD(, bus_drain) drains;
};

/* A stretch of consecutive appends to the link's output of one kind. */
struct out_run {
    TAILQ_ENTRY(out_run) entry;
    size_t len;
    bool data;                  /* publishes, sends, answers: lost if the link fails */
};

static void bus_connect_begin(struct bus *bus);
static void out_runs_clear(struct bus *bus);
static void bus_link_failed(struct bus *bus, const char *reason, bool auth_failure);
static void bus_try_next_addr(struct bus *bus);
static size_t bus_queued(const struct bus *bus);
static void bus_hint_mismatch(struct bus *bus, const char *sign);

/* ---- small helpers ---- */

static uint64_t
now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void
timer_arm(struct event *ev, uint64_t ms)
{
    struct timeval tv = { .tv_sec = (time_t)(ms / 1000), .tv_usec = (suseconds_t)(ms % 1000) * 1000 };

    evtimer_add(ev, &tv);
}

static double
random_unit(void)
{
    uint32_t r;

    evutil_secure_rng_get_bytes(&r, sizeof r);
    return r / 4294967296.0;
}

/* "host:port", "[::1]:port" for log lines. */
static const char *
bus_target(const struct bus *bus)
{
    static char buf[300];
    const char *h = bus->cfg.host != NULL ? bus->cfg.host : "?";

    snprintf(buf, sizeof buf, strchr(h, ':') != NULL ? "[%s]:%u" : "%s:%u", h,
        (unsigned)bus->cfg.port);
    return buf;
}

/* "1.5s", "30s", "250ms" for log lines. */
static void
fmt_duration(uint32_t ms, char *buf, size_t len)
{
    if (ms % 1000 == 0)
        snprintf(buf, len, "%us", ms / 1000);
    else if (ms > 1000)
        snprintf(buf, len, "%u.%03us", ms / 1000, ms % 1000);
    else
        snprintf(buf, len, "%ums", ms);
}

static bool
wire_str_is(const struct wire_str *s, const char *lit)
{
    size_t n = strlen(lit);

    return s->len == n && memcmp(s->ptr, lit, n) == 0;
}

/* Whether something will confirm the login in bounded time (the probe or
 * the watchdog), so that data can wait for it. */
static bool
bus_confirms(const struct bus *bus)
{
    return bus->cfg.confirm == CONFIG_CONFIRM_PROBE || bus->cfg.heartbeat_timeout_ms > 0;
}

const char *
bus_state_name(enum bus_state s)
{
    switch (s) {
    case BUS_DOWN:
        return "down";
    case BUS_CONNECTING:
        return "connecting";
    case BUS_UNCONFIRMED:
        return "unconfirmed";
    case BUS_UP:
        return "up";
    }
    return "unknown";
}

/* ---- backoff ---- */

/* The top of the backoff range for attempt: min(max, min * 2^attempt). */
static uint32_t
backoff_cap(uint32_t *min_ms, uint32_t max_ms, unsigned attempt)
{
    uint64_t cap;

    if (*min_ms == 0)
        *min_ms = 1;
    if (max_ms < *min_ms)
        max_ms = *min_ms;
    cap = *min_ms;
    for (unsigned i = 0; i < attempt && cap < max_ms; i++)
        cap *= 2;
    return cap > max_ms ? max_ms : (uint32_t)cap;
}

uint32_t
bus_backoff_ms(uint32_t min_ms, uint32_t max_ms, unsigned attempt, double rnd)
{
    uint32_t cap = backoff_cap(&min_ms, max_ms, attempt);

    if (!(rnd > 0.0))       /* also catches NaN */
        rnd = 0.0;
    if (rnd >= 1.0)
        rnd = 0.999999999;
    return min_ms + (uint32_t)((double)(cap - min_ms) * rnd);
}

unsigned
bus_next_attempt(unsigned attempt, bool auth_failure)
{
    unsigned n = attempt + (auth_failure ? BUS_AUTH_FAILURE_ATTEMPTS : 1);

    return n > BUS_ATTEMPT_MAX || n < attempt ? BUS_ATTEMPT_MAX : n;
}

/* ---- configuration copy ---- */

static int
dup_str(char **dst, const char *src)
{
    *dst = NULL;
    if (src != NULL && (*dst = strdup(src)) == NULL)
        return -1;
    return 0;
}

static void
bus_cfg_free(struct config_bus *c)
{
    char **strs[] = {
        &c->host, &c->credentials_file, &c->token_file, &c->impersonating,
        &c->forwarded_for, &c->confirm_feed, &c->tls.ca_file, &c->tls.ca_dir,
        &c->tls.server_name,
        &c->tls.cert_file, &c->tls.key_file, &c->tls.ciphers,
    };

    for (size_t i = 0; i < sizeof strs / sizeof strs[0]; i++) {
        free(*strs[i]);
        *strs[i] = NULL;
    }
}

static int
bus_cfg_copy(struct config_bus *dst, const struct config_bus *src)
{
    *dst = *src;
    if (dup_str(&dst->host, src->host) != 0 ||
        dup_str(&dst->credentials_file, src->credentials_file) != 0 ||
        dup_str(&dst->token_file, src->token_file) != 0 ||
        dup_str(&dst->impersonating, src->impersonating) != 0 ||
        dup_str(&dst->forwarded_for, src->forwarded_for) != 0 ||
        dup_str(&dst->confirm_feed, src->confirm_feed) != 0 ||
        dup_str(&dst->tls.ca_file, src->tls.ca_file) != 0 ||
        dup_str(&dst->tls.ca_dir, src->tls.ca_dir) != 0 ||
        dup_str(&dst->tls.server_name, src->tls.server_name) != 0 ||
        dup_str(&dst->tls.cert_file, src->tls.cert_file) != 0 ||
        dup_str(&dst->tls.key_file, src->tls.key_file) != 0 ||
        dup_str(&dst->tls.ciphers, src->tls.ciphers) != 0) {
        bus_cfg_free(dst);
        return -1;
    }
    return 0;
}

static bool
same_str(const char *a, const char *b)
{
    if (a == NULL || b == NULL)
        return a == b;
    return strcmp(a, b) == 0;
}

/* Whether a config change needs a new connection. */
static bool
bus_cfg_needs_reconnect(const struct config_bus *a, const struct config_bus *b)
{
    return !same_str(a->host, b->host) || a->port != b->port ||
        !tls_config_equal(&a->tls, &b->tls) || a->auth != b->auth ||
        !same_str(a->credentials_file, b->credentials_file) ||
        !same_str(a->token_file, b->token_file) ||
        !same_str(a->impersonating, b->impersonating) ||
        !same_str(a->forwarded_for, b->forwarded_for) ||
        a->forwarded_for_host != b->forwarded_for_host ||
        a->protocol != b->protocol || !same_str(a->application, b->application) ||
        /* the heartbeat subscription is made at connect time */
        (a->heartbeat_timeout_ms == 0) != (b->heartbeat_timeout_ms == 0);
}

/* ---- state and logging ---- */

/* Every state change goes through here, last in its caller (callbacks may
 * re-enter the bus). */
static void
bus_set_state(struct bus *bus, enum bus_state state, const char *reason)
{
    if (bus->state == state)
        return;
    bus->state = state;
    bus->st.state = state;
    bus->st.state_since = time(NULL);
    if (bus->cb.on_state != NULL)
        bus->cb.on_state(bus->cb_arg, state, reason);
}

/* True while retrying after failures: the per-attempt lines go to debug so
 * that a long outage does not log one line per retry. */
static bool
bus_quiet(const struct bus *bus)
{
    return bus->attempt > 0;
}

#define bus_log_attempt(bus, ...) \
    log_msg(bus_quiet(bus) ? LOG_DEBUG : LOG_INFO, NULL, __VA_ARGS__)

/* "bus: down: reason", with identical failures in a row summarised. */
static void
bus_log_down(struct bus *bus, const char *reason)
{
    if (strcmp(reason, bus->fail_reason) != 0) {
        snprintf(bus->fail_reason, sizeof bus->fail_reason, "%s", reason);
        bus->fail_repeats = 1;
        log_warn("bus: down: %s", reason);
        return;
    }
    bus->fail_repeats++;
    if (bus->fail_repeats % BUS_LOG_REPEAT_EVERY == 0)
        log_warn("bus: still failing: %s (%u attempts)", reason, bus->fail_repeats);
    else
        log_debug("bus: down: %s (%u attempts)", reason, bus->fail_repeats);
}

/* ---- tearing down ---- */

static void
bus_cancel_resolve(struct bus *bus)
{
    struct bus_resolve *r = bus->resolve;

    if (r == NULL)
        return;
    bus->resolve = NULL;
    r->bus = NULL;          /* the callback frees r when evdns calls it */
    if (r->req != NULL)
        evdns_getaddrinfo_cancel(r->req);
}

static void
bus_free_addrs(struct bus *bus)
{
    if (bus->addrs != NULL)
        evutil_freeaddrinfo(bus->addrs);
    bus->addrs = bus->next_addr = NULL;
}

static void
bus_drain_free(struct bus_drain *d)
{
    struct bus *bus = d->bus;

    LIST_REMOVE(d, entry);
    bufferevent_free(d->bev);
    event_free(d->timer);
    free(d);
    if (bus->shutdown_pending && LIST_EMPTY(&bus->drains))
        timer_arm(bus->done_ev, 0);
}

static void
bus_drain_timeout(evutil_socket_t fd, short what, void *arg)
{
    struct bus_drain *d = arg;

    log_warn("bus: closing with %zu bytes unsent (the bus did not take them in time)",
        evbuffer_get_length(bufferevent_get_output(d->bev)));
    bus_drain_free(d);
}

static void
bus_drain_written(struct bufferevent *bev, void *arg)
{
    struct bus_drain *d = arg;

    if (evbuffer_get_length(bufferevent_get_output(bev)) == 0)
        bus_drain_free(d);
}

static void
bus_drain_event(struct bufferevent *bev, short events, void *arg)
{
    bus_drain_free(arg);
}

/* Hand the link's bufferevent over to a drain that closes it once its
 * output has gone out (whole messages only), or after timeout_ms. */
static void
bus_drain_link(struct bus *bus, uint32_t timeout_ms)
{
    struct bufferevent *bev = bus->bev;
    struct bus_drain *d;

    bus->bev = NULL;
    if (evbuffer_get_length(bufferevent_get_output(bev)) == 0 ||
        (d = calloc(1, sizeof *d)) == NULL) {
        bufferevent_free(bev);
        return;
    }
    if ((d->timer = evtimer_new(bus->base, bus_drain_timeout, d)) == NULL) {
        free(d);
        bufferevent_free(bev);
        return;
    }
    d->bus = bus;
    d->bev = bev;
    LIST_INSERT_HEAD(&bus->drains, d, entry);
    bufferevent_disable(bev, EV_READ);
    bufferevent_setwatermark(bev, EV_WRITE, 0, 0);
    bufferevent_setcb(bev, NULL, bus_drain_written, bus_drain_event, d);
    timer_arm(d->timer, timeout_ms);
}

/* Stop the current attempt or link. drain: flush queued messages first. */
static void
bus_close_link(struct bus *bus, bool drain, uint32_t drain_ms)
{
    bus_cancel_resolve(bus);
    bus_free_addrs(bus);
    if (bus->connect_timer != NULL)
        evtimer_del(bus->connect_timer);
    if (bus->watchdog != NULL)
        evtimer_del(bus->watchdog);
    if (bus->confirm_timer != NULL)
        evtimer_del(bus->confirm_timer);
    if (bus->bev != NULL) {
        if (drain && (bus->state == BUS_UNCONFIRMED || bus->state == BUS_UP))
            bus_drain_link(bus, drain_ms);
        else
            bufferevent_free(bus->bev);
        bus->bev = NULL;
    }
    out_runs_clear(bus);
    bus->tls_phase = false;
}

/* Note len bytes just appended to the link's output. Runs the output has
 * written out already are dropped first: the output is always the last
 * bytes appended, so runs_len never needs to exceed its length. Appends
 * not noted (the credentials and requests made at connect) come before any
 * noted one and count as requests. */
static void
out_runs_note(struct bus *bus, size_t len, bool data)
{
    size_t queued = evbuffer_get_length(bufferevent_get_output(bus->bev)) - len;
    struct out_run *run;

    while ((run = TAILQ_FIRST(&bus->runs)) != NULL && bus->runs_len - run->len >= queued) {
        bus->runs_len -= run->len;
        TAILQ_REMOVE(&bus->runs, run, entry);
        free(run);
    }
    run = TAILQ_LAST(&bus->runs, out_run_list);
    if (run == NULL || run->data != data) {
        struct out_run *fresh = calloc(1, sizeof *fresh);

        if (fresh != NULL) {
            fresh->data = data;
            TAILQ_INSERT_TAIL(&bus->runs, fresh, entry);
            run = fresh;
        } else if (run == NULL) {
            return;     /* out of memory: the bytes count as requests */
        }
    }
    run->len += len;
    bus->runs_len += len;
}

/* Data bytes among the last queued bytes of the output. */
static size_t
out_runs_data(const struct bus *bus, size_t queued)
{
    const struct out_run *run;
    size_t data = 0, n;

    TAILQ_FOREACH_REVERSE(run, &bus->runs, out_run_list, entry) {
        if (queued == 0)
            break;
        n = run->len < queued ? run->len : queued;
        if (run->data)
            data += n;
        queued -= n;
    }
    return data;
}

static void
out_runs_clear(struct bus *bus)
{
    struct out_run *run;

    while ((run = TAILQ_FIRST(&bus->runs)) != NULL) {
        TAILQ_REMOVE(&bus->runs, run, entry);
        free(run);
    }
    bus->runs_len = 0;
}

/* Bytes the kernel has not had acknowledged yet on fd (0 if unknown). */
static size_t
socket_unacked(evutil_socket_t fd)
{
    int n = 0;

    if (fd < 0 || ioctl(fd, SIOCOUTQ, &n) != 0 || n < 0)
        return 0;
    return (size_t)n;
}

/* A failing link takes its queued output with it: say so and count it
 * (the router acknowledged those messages). */
static void
bus_report_lost(struct bus *bus)
{
    size_t queued, data, kernel;

    if (bus->bev == NULL || (bus->state != BUS_UNCONFIRMED && bus->state != BUS_UP))
        return;
    /* Unconfirmed with a confirmation on, the output holds only credentials
     * and requests the router replays: the data is held, not lost. */
    if (bus->state == BUS_UNCONFIRMED && bus_confirms(bus))
        return;
    queued = evbuffer_get_length(bufferevent_get_output(bus->bev));
    data = out_runs_data(bus, queued);
    kernel = socket_unacked(bufferevent_getfd(bus->bev));
    if (data == 0 && kernel == 0)
        return;
    bus->st.bytes_lost += data;
    log_warn("bus: link lost with %zu bytes of data unsent (and %zu bytes of requests, "
        "replayed on the next link; %zu bytes the bus had not acknowledged)", data,
        queued - data, kernel);
}

/* Held data that will never go out (shutdown). */
static void
bus_drop_held(struct bus *bus, const char *why)
{
    size_t n = evbuffer_get_length(bus->held);

    if (n == 0)
        return;
    log_warn("bus: %llu message%s (%zu bytes) held for an unconfirmed link discarded: %s",
        (unsigned long long)bus->held_msgs, bus->held_msgs == 1 ? "" : "s", n, why);
    bus->st.bytes_lost += n;
    evbuffer_drain(bus->held, n);
    bus->held_msgs = 0;
}

/* Back-pressure cannot outlive the link: release the router. */
static void
bus_release_pressure(struct bus *bus)
{
    if (!bus->pressure)
        return;
    bus->pressure = false;
    if (bus->cb.on_drained != NULL)
        bus->cb.on_drained(bus->cb_arg);
}

/* The attempt or link failed: close it, schedule the next attempt. */
static void
bus_link_failed(struct bus *bus, const char *reason, bool auth_failure)
{
    uint32_t delay, cap, min = bus->cfg.reconnect_min_ms;
    char d1[32], d2[32];

    if (bus->state == BUS_UP &&
        now_ms() - bus->up_since_ms >= bus->cfg.reconnect_reset_ms)
        bus->attempt = 0;
    bus_report_lost(bus);
    bus_close_link(bus, false, 0);
    snprintf(bus->st.last_error, sizeof bus->st.last_error, "%s", reason);
    bus_log_down(bus, reason);
    if (bus->state != BUS_UP)
        bus->streak++;      /* a link that was up did not fail to come up */
    if (auth_failure)
        bus->st.auth_failures++;
    if (!bus->stopping) {
        delay = bus_backoff_ms(bus->cfg.reconnect_min_ms, bus->cfg.reconnect_max_ms,
            bus->attempt, random_unit());
        cap = backoff_cap(&min, bus->cfg.reconnect_max_ms, bus->attempt);
        fmt_duration(delay, d1, sizeof d1);
        fmt_duration(cap, d2, sizeof d2);
        bus->attempt = bus_next_attempt(bus->attempt, auth_failure);
        log_debug("bus: retry %u in %s (backoff up to %s)", ++bus->retries, d1, d2);
        timer_arm(bus->retry_timer, delay);
    }
    bus_set_state(bus, BUS_DOWN, reason);
    bus_release_pressure(bus);
}

/* ---- authentication ---- */

/* Decode base64url (no padding) into out; -1 if invalid or too long. */
static int
b64url_decode(const char *in, size_t inlen, char *out, size_t outcap, size_t *outlen)
{
    uint32_t acc = 0;
    int bits = 0;
    size_t n = 0;

    for (size_t i = 0; i < inlen; i++) {
        char c = in[i];
        int v;

        if (c >= 'A' && c <= 'Z')
            v = c - 'A';
        else if (c >= 'a' && c <= 'z')
            v = c - 'a' + 26;
        else if (c >= '0' && c <= '9')
            v = c - '0' + 52;
        else if (c == '-' || c == '+')
            v = 62;
        else if (c == '_' || c == '/')
            v = 63;
        else if (c == '=')
            break;
        else
            return -1;
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            if (n + 1 >= outcap)
                return -1;
            out[n++] = (char)((acc >> bits) & 0xff);
        }
    }
    out[n] = '\0';
    *outlen = n;
    return 0;
}

/* The value of a simple claim in a JWT's (unverified) payload, for log lines
 * only: a string ("sub") or a number ("exp"). Returns 0 if found. */
static int
jwt_claim(const char *json, const char *name, char *out, size_t outlen)
{
    char key[32];
    const char *p;
    size_t n = 0;

    snprintf(key, sizeof key, "\"%s\"", name);
    if ((p = strstr(json, key)) == NULL)
        return -1;
    p += strlen(key);
    while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')
        p++;
    if (*p++ != ':')
        return -1;
    while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')
        p++;
    if (*p == '"') {
        for (p++; *p != '"' && *p != '\0'; p++) {
            /* printable ASCII only: this goes into a log line */
            if (*p == '\\' || (unsigned char)*p < 0x20 || (unsigned char)*p > 0x7e || n + 1 >= outlen)
                return -1;
            out[n++] = *p;
        }
        if (*p != '"')
            return -1;
    } else {
        for (; *p >= '0' && *p <= '9' && n + 1 < outlen; p++)
            out[n++] = *p;
    }
    out[n] = '\0';
    return n > 0 ? 0 : -1;
}

/* "token, user alice" (and the expiry if already past) from the token's
 * claims, never the token itself. */
static void
describe_token(const char *token, char *buf, size_t len)
{
    char json[2048], sub[128], exp[32];
    const char *dot1, *dot2;
    size_t n;
    time_t t;
    struct tm tm;
    char when[32];

    snprintf(buf, len, "token");
    if ((dot1 = strchr(token, '.')) == NULL || (dot2 = strchr(dot1 + 1, '.')) == NULL ||
        b64url_decode(dot1 + 1, (size_t)(dot2 - dot1 - 1), json, sizeof json, &n) != 0)
        return;
    if (jwt_claim(json, "sub", sub, sizeof sub) == 0)
        snprintf(buf, len, "token, user %s", sub);
    if (jwt_claim(json, "exp", exp, sizeof exp) == 0) {
        t = (time_t)strtoll(exp, NULL, 10);
        if (t < time(NULL) && gmtime_r(&t, &tm) != NULL &&
            strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tm) > 0) {
            n = strlen(buf);
            snprintf(buf + n, len - n, "; token expired %s", when);
        }
    }
}

/* Free a block of secret bytes once libevent is done with it, wiped. */
static void
wipe_block(const void *data, size_t len, void *arg)
{
    explicit_bzero(arg, len);
    free(arg);
}

/* Queue the authentication payload in a block of its own, so the secret is
 * wiped once written instead of left in freed evbuffer memory. */
static int
send_auth(struct bus *bus, const struct wire_auth *a)
{
    struct evbuffer *tmp = evbuffer_new();
    unsigned char *p, *block;
    size_t len;
    int r = -1;

    if (tmp == NULL)
        return -1;
    if (wire_encode_auth(tmp, a) == 0) {
        len = evbuffer_get_length(tmp);
        /* One reservation: pulling up does not copy, so wiping p is enough. */
        if (len == 0)
            r = 0;      /* auth none: nothing to send */
        else if ((p = evbuffer_pullup(tmp, -1)) != NULL && (block = malloc(len)) != NULL) {
            memcpy(block, p, len);
            explicit_bzero(p, len);
            if (evbuffer_add_reference(bufferevent_get_output(bus->bev), block, len,
                    wipe_block, block) == 0)
                r = 0;
            else
                wipe_block(block, len, block);
        } else if (p != NULL) {
            explicit_bzero(p, len);
        }
    }
    evbuffer_free(tmp);
    return r;
}

/* Read the credentials (afresh at every connect, so rotated secrets are
 * used without a restart) and queue the authentication payload. */
static int
bus_send_auth(struct bus *bus, char *err, size_t errlen)
{
    const struct config_bus *c = &bus->cfg;
    struct credentials cr;
    struct wire_auth a = { .method = WIRE_AUTH_NONE, .version = bus->cfg.protocol };
    char host[256], app[300];
    const char *cause = NULL;
    int r = -1;

    memset(&cr, 0, sizeof cr);
    snprintf(bus->auth_desc, sizeof bus->auth_desc, "none");
    if (c->auth == CONFIG_AUTH_NONE)
        return 0;
    if (c->credentials_file != NULL &&
        credentials_load(&cr, c->credentials_file, err, errlen) != 0)
        goto out;
    if (c->token_file != NULL &&
        credentials_load_token_file(&cr, c->token_file, err, errlen) != 0)
        goto out;
    if (c->auth == CONFIG_AUTH_BASIC) {
        if (cr.username == NULL || cr.password == NULL) {
            snprintf(err, errlen, "%s: auth basic needs username and password in [bus]",
                c->credentials_file != NULL ? c->credentials_file : "credentials");
            goto out;
        }
        a.method = WIRE_AUTH_BASIC;
        a.username = cr.username;
        a.password = cr.password;
        snprintf(bus->auth_desc, sizeof bus->auth_desc, "basic, user %s", cr.username);
    } else {
        if (cr.token == NULL) {
            snprintf(err, errlen, "%s: auth token needs a token",
                c->token_file != NULL ? c->token_file :
                c->credentials_file != NULL ? c->credentials_file : "credentials");
            goto out;
        }
        a.method = WIRE_AUTH_TOKEN;
        a.token = cr.token;
        describe_token(cr.token, bus->auth_desc, sizeof bus->auth_desc);
    }
    a.impersonating = c->impersonating;
    a.forwarded_for = c->forwarded_for;
    if (gethostname(host, sizeof host) != 0)
        snprintf(host, sizeof host, "unknown");
    host[sizeof host - 1] = '\0';
    if (a.forwarded_for == NULL && c->forwarded_for_host)
        a.forwarded_for = host;
    snprintf(app, sizeof app, "busgate@%s", host);
    a.application = c->application != NULL ? c->application : app;
    if (wire_auth_check(&a, &cause) != 0) {
        snprintf(err, errlen, "%s (bus.protocol %d)", cause, c->protocol);
        goto out;
    }
    if (send_auth(bus, &a) != 0) {
        snprintf(err, errlen, "cannot encode the credentials (too long?)");
        goto out;
    }
    r = 0;
out:
    credentials_free(&cr);
    return r;
}

/* ---- the live link ---- */

static void
bus_go_up(struct bus *bus)
{
    char extra[64] = "";

    bus->up_since_ms = now_ms();
    bus->fail_reason[0] = '\0';
    bus->fail_repeats = 0;
    if (bus->streak > 0)
        snprintf(extra, sizeof extra, " (after %u failed attempt%s)", bus->streak,
            bus->streak == 1 ? "" : "s");
    bus->streak = 0;
    bus->retries = 0;
    log_notice("bus: up%s", extra);
    if (bus->held_msgs > 0) {
        log_info("bus: sending %llu message%s (%zu bytes) held until the link was confirmed",
            (unsigned long long)bus->held_msgs, bus->held_msgs == 1 ? "" : "s",
            evbuffer_get_length(bus->held));
        size_t n = evbuffer_get_length(bus->held);

        evbuffer_add_buffer(bufferevent_get_output(bus->bev), bus->held);
        out_runs_note(bus, n, true);
        bus->held_msgs = 0;
    }
    bus_set_state(bus, BUS_UP, NULL);
}

static bool
bus_is_heartbeat(const struct bus *bus, const struct wire_msg *m)
{
    return bus->cfg.heartbeat_timeout_ms > 0 &&
        (m->type == WIRE_FORWARDED_MULTICAST || m->type == WIRE_FORWARDED_UNICAST) &&
        wire_str_is(&m->feed, HEARTBEAT_FEED) && wire_str_is(&m->topic, HEARTBEAT_TOPIC);
}

/* Queue requests the link makes itself: like its heartbeat subscription,
 * not counted as messages out, nor as data lost if the link fails. */
static void
bus_queue_own(struct bus *bus, struct evbuffer *tmp)
{
    size_t n = evbuffer_get_length(tmp);

    if (n == 0)
        return;
    evbuffer_add_buffer(bufferevent_get_output(bus->bev), tmp);
    out_runs_note(bus, n, false);
}

/* The probe is settled one way or the other: stop its deadline and
 * withdraw its requests. */
static void
bus_probe_settle(struct bus *bus, enum busconfirm_state state)
{
    struct evbuffer *tmp;

    evtimer_del(bus->confirm_timer);
    bus->confirm.state = state;
    if (bus->confirm.method != CONFIG_CONFIRM_PROBE || (tmp = evbuffer_new()) == NULL)
        return;
    if (busconfirm_withdraw(&bus->confirm, bus->cfg.protocol, tmp) == 0)
        bus_queue_own(bus, tmp);
    evbuffer_free(tmp);
}

/* A message came back about the probe (or a heartbeat, confirming by
 * heartbeat). */
static void
bus_probe_answered(struct bus *bus, enum busconfirm_verdict v)
{
    if (v == BUSCONFIRM_REFUSED) {
        bus_probe_settle(bus, BUSCONFIRM_DENIED);
        log_warn("bus: login confirmed, but the login probe was refused (not entitled "
            "to %s/%s): grant user %s that feed or set bus.confirm", bus->confirm.feed,
            bus->confirm.topic, bus->auth_desc);
        return;
    }
    bus_probe_settle(bus, BUSCONFIRM_CONFIRMED);
    if (bus->confirm.have_client_id) {
        guid_to_text(bus->confirm.client_id, bus->client_id);
        log_info("bus: login confirmed by the probe; this link's client id is %s",
            bus->client_id);
    } else {
        log_info("bus: login confirmed by the %s",
            bus->confirm.method == CONFIG_CONFIRM_PROBE ? "probe" : "first heartbeat");
    }
}

/* bus.confirm_timeout passed without the probe coming back. */
static void
bus_confirm_timeout(evutil_socket_t fd, short what, void *arg)
{
    struct bus *bus = arg;
    char reason[512], d[32];

    fmt_duration(bus->cfg.confirm_timeout_ms, d, sizeof d);
    if (bus->rx_any) {
        /* Traffic proves the login: the probe's own roles are denied. */
        bus_probe_settle(bus, BUSCONFIRM_DENIED);
        log_warn("bus: the login probe on feed %s did not come back within %s although "
            "the link carries traffic (so the login worked): the distributor's roles "
            "for %s probably deny notify or subscribe on %s, or it waits "
            "for an authorizer of that feed; grant them or set bus.confirm (STAT "
            "bus_confirm probe-denied)", bus->confirm.feed, d, bus->auth_desc,
            bus->confirm.feed);
        return;
    }
    bus->confirm.state = BUSCONFIRM_FAILED;
    bus_hint_mismatch(bus, "nothing came back after the login");
    if (!bus->probe_hinted) {
        bus->probe_hinted = true;
        log_notice("bus: if the credentials are right, the distributor may be "
            "quiet and deny %s the probe's roles (notify, subscribe) on "
            "feed %s: grant them, or set bus.confirm to heartbeat or none",
            bus->auth_desc, bus->confirm.feed);
    }
    if (bus->cfg.auth != CONFIG_AUTH_NONE)
        snprintf(reason, sizeof reason, "probable authentication failure (%s): "
            "no answer to the login probe within %s", bus->auth_desc, d);
    else
        snprintf(reason, sizeof reason, "no answer to the login probe within %s: "
            "the bus ignores this link", d);
    bus_link_failed(bus, reason, bus->cfg.auth != CONFIG_AUTH_NONE);
}

/* Decode errors this early on a link fit a wrong bus.protocol. */
#define BUS_MISMATCH_WINDOW 8

/*
 * The distributor has no version handshake: a wrong bus.protocol shows
 * only as a silent or closed login, or as garbage in the first messages.
 * Say so once, with the fix, when one of those happens.
 */
static void
bus_hint_mismatch(struct bus *bus, const char *sign)
{
    if (bus->mismatch_hinted)
        return;
    bus->mismatch_hinted = true;
    log_warn("bus: possible bus protocol mismatch (bus.protocol=%d): %s. The "
        "distributor cannot say which protocol it speaks; if its version differs, "
        "set bus.protocol to 3 (distributor 3.x), 4 (4.0.0 to 5.x) or 6 "
        "(6.0.0-alpha.6 and later)", bus->cfg.protocol, sign);
}

static void
bus_read(struct bufferevent *bev, void *arg)
{
    struct bus *bus = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    enum busconfirm_verdict v;
    const char *cause = NULL;
    char reason[300];
    size_t before;
    bool decoded = false;

    bus->rx_any = true;
    bus->msg.version = bus->cfg.protocol;   /* decode at the configured protocol */
    if (!bus->cfg.tls.enabled)
        sockread_more(bev, 1 << 20);
    for (;;) {
        before = evbuffer_get_length(in);
        switch (wire_decode(in, &bus->cfg.limits, &bus->msg, &cause)) {
        case WIRE_NEED_MORE:
            if (bus->cb.on_batch_end != NULL)
                bus->cb.on_batch_end(bus->cb_arg);
            return;
        case WIRE_ERROR:
            bus->st.protocol_errors++;
            if (bus->st.msgs_in - bus->msgs_at_login < BUS_MISMATCH_WINDOW)
                bus_hint_mismatch(bus, "a message among the first the distributor "
                    "sent could not be decoded");
            log_msg(LOG_ERR, NULL, "bus: protocol error: %s (after %llu messages)",
                cause != NULL ? cause : "invalid message",
                (unsigned long long)bus->st.msgs_in);
            snprintf(reason, sizeof reason, "protocol error: %s",
                cause != NULL ? cause : "invalid message");
            bus_link_failed(bus, reason, false);
            return;
        case WIRE_DECODED:
            break;
        }
        /* Only a whole message feeds the watchdog: a peer trickling bytes
         * that never complete one is as dead as a silent one. Once per
         * batch: the clock is read once, not per message. */
        if (!decoded) {
            decoded = true;
            bus->last_rx_ms = now_ms();
        }
        bus->st.msgs_in++;
        bus->st.bytes_in += before - evbuffer_get_length(in);
        if (bus->state == BUS_UNCONFIRMED) {
            bus_go_up(bus);
            if (bus->bev != bev)
                return;     /* on_state closed or replaced the link */
        }
        if (bus_is_heartbeat(bus, &bus->msg)) {
            bus->st.heartbeats_in++;
            bus->st.last_heartbeat = time(NULL);
            bus->hb_any = true;
            bus->hb_state = "receiving";
            if (bus->confirm.method == CONFIG_CONFIRM_HEARTBEAT &&
                bus->confirm.state == BUSCONFIRM_WAITING)
                bus_probe_answered(bus, BUSCONFIRM_ECHO);
        }
        switch ((v = busconfirm_check(&bus->confirm, &bus->msg))) {
        case BUSCONFIRM_NOT_OURS:
            break;
        case BUSCONFIRM_ECHO:
        case BUSCONFIRM_REFUSED:
            bus_probe_answered(bus, v);
            continue;
        case BUSCONFIRM_CONSUMED:
            continue;
        }
        if (bus->cb.on_message != NULL)
            bus->cb.on_message(bus->cb_arg, &bus->msg);
        if (bus->bev != bev)
            return;
    }
}

static void
bus_written(struct bufferevent *bev, void *arg)
{
    struct bus *bus = arg;

    if (bus->pressure && bus_queued(bus) <= bus->cfg.output_high_water / 2)
        bus_release_pressure(bus);
}

/* An orderly close; one that cuts a message short is worth telling apart. */
static const char *
bus_closed_reason(struct bufferevent *bev)
{
    if (evbuffer_get_length(bufferevent_get_input(bev)) > 0)
        return "connection closed by the bus in the middle of a message";
    return "connection closed by the bus";
}

/* Why an established link or a TLS handshake failed; true if it was a
 * TLS-level error (see tls_is_protocol_error). */
static bool
bus_describe_error(struct bus *bus, struct bufferevent *bev, short events,
    char *buf, size_t len)
{
    unsigned long errs[BUS_MAX_SSL_ERRORS], e;
    size_t n = 0;
    int sys_err = EVUTIL_SOCKET_ERROR();
    char why[256];

    if (!bus->tls_phase) {
        if (events & BEV_EVENT_EOF)
            snprintf(buf, len, "%s", bus_closed_reason(bev));
        else
            snprintf(buf, len, "%s", evutil_socket_error_to_string(sys_err));
        return false;
    }
    while ((e = bufferevent_get_openssl_error(bev)) != 0)
        if (n < BUS_MAX_SSL_ERRORS)
            errs[n++] = e;
    if ((events & BEV_EVENT_EOF) && n == 0)
        sys_err = 0;
    tls_describe_failure(bufferevent_openssl_get_ssl(bev), errs, n, sys_err, why, sizeof why);
    if ((events & BEV_EVENT_EOF) && strcmp(why, "connection closed") == 0)
        snprintf(buf, len, "%s", bus_closed_reason(bev));
    else
        snprintf(buf, len, "%s", why);
    return tls_is_protocol_error(errs, n);
}

bool
bus_probable_auth_failure(const struct bus_close_facts *f)
{
    return f->unconfirmed && !f->rx_any && f->auth && !f->tls_error &&
        f->since_login_ms <= f->window_ms;
}

static void
bus_link_event(struct bufferevent *bev, short events, void *arg)
{
    struct bus *bus = arg;
    char why[300], reason[512];
    struct bus_close_facts f;
    bool auth_failure;

    if (!(events & (BEV_EVENT_EOF | BEV_EVENT_ERROR)))
        return;
    f.tls_error = bus_describe_error(bus, bev, events, why, sizeof why);
    f.unconfirmed = bus->state == BUS_UNCONFIRMED;
    f.rx_any = bus->rx_any;
    f.auth = bus->cfg.auth != CONFIG_AUTH_NONE;
    f.since_login_ms = now_ms() - bus->auth_sent_ms;
    f.window_ms = bus->cfg.auth_fail_window_ms;
    auth_failure = bus_probable_auth_failure(&f);
    if (auth_failure)
        snprintf(reason, sizeof reason, "probable authentication failure (%s)", bus->auth_desc);
    else if (f.tls_error)
        snprintf(reason, sizeof reason, "TLS error: %s", why);
    else
        snprintf(reason, sizeof reason, "%s", why);
    if (auth_failure) {
        log_debug("bus: link closed %llu ms after login: %s",
            (unsigned long long)(now_ms() - bus->auth_sent_ms), why);
        bus_hint_mismatch(bus, "the distributor closed the link right after the login");
    }
    bus_link_failed(bus, reason, auth_failure);
}

static void
bus_watchdog(evutil_socket_t fd, short what, void *arg)
{
    struct bus *bus = arg;
    uint32_t timeout = bus->cfg.heartbeat_timeout_ms;
    uint64_t idle = now_ms() - bus->last_rx_ms;
    size_t partial;
    char reason[256], d[32];

    if (timeout == 0)
        return;
    fmt_duration(timeout, d, sizeof d);
    if (bus->rx_any && !bus->hb_any && !bus->hb_warned &&
        now_ms() - bus->auth_sent_ms >= timeout) {
        /* Traffic proves the login; only the heartbeat is missing. */
        bus->hb_warned = true;
        bus->hb_state = "none-received";
        log_warn("bus: no heartbeat received in %s although the link carries traffic "
            "(so the login worked): check that the distributor has a heartbeat "
            "interval and, at bus.protocol 6 with authorization on (distributor-wide "
            "there), that an authorizer grants __admin__/heartbeat", d);
    }
    if (idle < timeout) {
        timer_arm(bus->watchdog, timeout - idle);
        return;
    }
    bus->st.heartbeat_timeouts++;
    if (bus->bev != NULL && (partial = evbuffer_get_length(bufferevent_get_input(bus->bev))) > 0) {
        snprintf(reason, sizeof reason, "no complete message within %s (%zu bytes of an "
            "unfinished one arrived): the bus is stuck or trickling", d, partial);
    } else if (!bus->rx_any) {
        snprintf(reason, sizeof reason, "no heartbeat: not authenticated or dead");
        bus_hint_mismatch(bus, "nothing came back after the login");
    } else if (!bus->hb_any) {
        bus->hb_state = "none-received";
        snprintf(reason, sizeof reason, "no heartbeat within %s, and none ever received "
            "on this link: check the distributor's heartbeat interval and (bus.protocol 6) "
            "an authorizer for __admin__/heartbeat", d);
    } else {
        bus->hb_state = "stopped";
        snprintf(reason, sizeof reason, "no heartbeat within %s: heartbeats stopped "
            "(check the distributor and the network path)", d);
    }
    bus_link_failed(bus, reason, false);
}

static int
bus_subscribe_heartbeat(struct bus *bus)
{
    struct wire_msg m;

    wire_msg_init(&m);
    m.type = WIRE_SUBSCRIPTION_REQUEST;
    m.feed.ptr = HEARTBEAT_FEED;
    m.feed.len = sizeof HEARTBEAT_FEED - 1;
    m.topic.ptr = HEARTBEAT_TOPIC;
    m.topic.len = sizeof HEARTBEAT_TOPIC - 1;
    m.is_add = true;
    return wire_encode(bufferevent_get_output(bus->bev), &m);
}

/* TCP (and TLS) are up: authenticate and start reading. */
static void
bus_link_established(struct bus *bus)
{
    char err[512], reason[600];

    evtimer_del(bus->connect_timer);
    bus->st.connects++;
    bufferevent_setcb(bus->bev, bus_read, bus_written, bus_link_event, bus);
    bufferevent_setwatermark(bus->bev, EV_WRITE, bus->cfg.output_high_water / 2, 0);
    bufferevent_set_max_single_read(bus->bev, BUS_IO_CHUNK);
    bufferevent_set_max_single_write(bus->bev, BUS_IO_CHUNK);
    bufferevent_enable(bus->bev, EV_READ | EV_WRITE);
    if (bus_send_auth(bus, err, sizeof err) != 0) {
        snprintf(reason, sizeof reason, "credentials: %s", err);
        bus_link_failed(bus, reason, false);
        return;
    }
    bus->auth_sent_ms = bus->last_rx_ms = now_ms();
    bus->rx_any = false;
    bus->hb_any = bus->hb_warned = false;
    bus->msgs_at_login = bus->st.msgs_in;
    bus->hb_state = bus->cfg.heartbeat_timeout_ms > 0 ? "waiting" : "off";
    if (bus->cfg.heartbeat_timeout_ms > 0) {
        if (bus_subscribe_heartbeat(bus) != 0) {
            bus_link_failed(bus, "cannot queue the heartbeat subscription", false);
            return;
        }
        timer_arm(bus->watchdog, bus->cfg.heartbeat_timeout_ms);
    }
    bus->client_id[0] = '\0';
    if (busconfirm_begin(&bus->confirm, &bus->cfg, bufferevent_get_output(bus->bev)) != 0) {
        bus_link_failed(bus, "cannot queue the login probe", false);
        return;
    }
    if (bus->confirm.method == CONFIG_CONFIRM_PROBE)
        timer_arm(bus->confirm_timer, bus->cfg.confirm_timeout_ms);
    bus_log_attempt(bus, "bus: connected, unconfirmed (auth %s)", bus->auth_desc);
    bus_set_state(bus, BUS_UNCONFIRMED, NULL);
}

/* ---- connecting ---- */

static void
bus_tls_event(struct bufferevent *bev, short events, void *arg)
{
    struct bus *bus = arg;
    char desc[160], why[300], reason[400];

    if (events & BEV_EVENT_CONNECTED) {
        tls_describe_session(bufferevent_openssl_get_ssl(bev), desc, sizeof desc);
        bus_log_attempt(bus, "bus: TLS up (%s)", desc);
        if (!bus->cfg.tls.verify)
            log_warn("bus: TLS certificate verification is off (bus.tls.verify: false): "
                "the bus at %s is not authenticated", bus->peer);
        bus_link_established(bus);
        return;
    }
    if (!(events & (BEV_EVENT_EOF | BEV_EVENT_ERROR)))
        return;
    bus_describe_error(bus, bev, events, why, sizeof why);
    snprintf(reason, sizeof reason, "TLS handshake with %s: %s", bus->peer, why);
    bus_link_failed(bus, reason, false);
}

/* Move the connected socket from the TCP bufferevent to an OpenSSL one. */
static void
bus_start_tls(struct bus *bus)
{
    char err[512], reason[600];
    evutil_socket_t fd;
    SSL *ssl;

    if (bus->ssl_ctx == NULL &&
        (bus->ssl_ctx = tls_ctx_new(&bus->cfg.tls, err, sizeof err)) == NULL) {
        snprintf(reason, sizeof reason, "TLS: %s", err);
        bus_link_failed(bus, reason, false);
        return;
    }
    if ((ssl = tls_ssl_new(bus->ssl_ctx, &bus->cfg.tls, bus->cfg.host, err, sizeof err)) == NULL) {
        snprintf(reason, sizeof reason, "TLS: %s", err);
        bus_link_failed(bus, reason, false);
        return;
    }
    fd = bufferevent_getfd(bus->bev);
    bufferevent_disable(bus->bev, EV_READ | EV_WRITE);
    bufferevent_setfd(bus->bev, -1);    /* keep the socket when freeing */
    bufferevent_free(bus->bev);
    bus->bev = bufferevent_openssl_socket_new(bus->base, fd, ssl,
        BUFFEREVENT_SSL_CONNECTING, BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
    if (bus->bev == NULL) {
        /* libevent freed the SSL (CLOSE_ON_FREE) but not the socket */
        evutil_closesocket(fd);
        bus_link_failed(bus, "TLS: cannot set up the connection", false);
        return;
    }
    bus->tls_phase = true;
    bufferevent_openssl_set_allow_dirty_shutdown(bus->bev, 1);
    bufferevent_setcb(bus->bev, NULL, NULL, bus_tls_event, bus);
}

static void
bus_set_sockopts(struct bus *bus, evutil_socket_t fd)
{
    int on = 1, idle = (int)bus->cfg.keepalive_s, intvl, cnt = 3;

    if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on) != 0)
        log_debug("bus: TCP_NODELAY: %s", strerror(errno));
    if (idle <= 0)
        return;
    /* Probes every idle/3 s, 3 unanswered: a dead peer shows within ~2 idle. */
    intvl = idle / 3 > 0 ? idle / 3 : 1;
    if (setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &on, sizeof on) != 0 ||
        setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof idle) != 0 ||
        setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof intvl) != 0 ||
        setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof cnt) != 0)
        log_debug("bus: TCP keepalive: %s", strerror(errno));
}

static void
bus_tcp_event(struct bufferevent *bev, short events, void *arg)
{
    struct bus *bus = arg;

    if (events & BEV_EVENT_CONNECTED) {
        bus_free_addrs(bus);
        bus_set_sockopts(bus, bufferevent_getfd(bev));
        log_debug("bus: TCP connected to %s", bus->peer);
        if (bus->cfg.tls.enabled)
            bus_start_tls(bus);
        else
            bus_link_established(bus);
        return;
    }
    if (!(events & (BEV_EVENT_EOF | BEV_EVENT_ERROR)))
        return;
    bus->last_sys_err = EVUTIL_SOCKET_ERROR();
    log_debug("bus: connect to %s: %s", bus->peer,
        evutil_socket_error_to_string(bus->last_sys_err));
    bufferevent_free(bus->bev);
    bus->bev = NULL;
    bus_try_next_addr(bus);
}

static void
format_peer(const struct evutil_addrinfo *ai, char *buf, size_t len)
{
    char addr[INET6_ADDRSTRLEN] = "?";
    int port = 0;

    if (ai->ai_family == AF_INET6) {
        const struct sockaddr_in6 *s6 = (const void *)ai->ai_addr;

        evutil_inet_ntop(AF_INET6, &s6->sin6_addr, addr, sizeof addr);
        port = ntohs(s6->sin6_port);
        snprintf(buf, len, "[%s]:%d", addr, port);
    } else {
        const struct sockaddr_in *s4 = (const void *)ai->ai_addr;

        evutil_inet_ntop(AF_INET, &s4->sin_addr, addr, sizeof addr);
        port = ntohs(s4->sin_port);
        snprintf(buf, len, "%s:%d", addr, port);
    }
}

/* Connect to the next resolved address; all tried: the attempt failed. */
static void
bus_try_next_addr(struct bus *bus)
{
    char reason[400];

    while (bus->next_addr != NULL) {
        struct evutil_addrinfo *ai = bus->next_addr;

        bus->next_addr = ai->ai_next;
        format_peer(ai, bus->peer, sizeof bus->peer);
        bus->bev = bufferevent_socket_new(bus->base, -1,
            BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
        if (bus->bev == NULL) {
            bus->last_sys_err = ENOMEM;
            break;
        }
        bufferevent_setcb(bus->bev, NULL, NULL, bus_tcp_event, bus);
        bufferevent_set_max_single_read(bus->bev, 1 << 20);
        if (bufferevent_socket_connect(bus->bev, ai->ai_addr, (int)ai->ai_addrlen) == 0)
            return;
        bus->last_sys_err = EVUTIL_SOCKET_ERROR();
        log_debug("bus: connect to %s: %s", bus->peer,
            evutil_socket_error_to_string(bus->last_sys_err));
        bufferevent_free(bus->bev);
        bus->bev = NULL;
    }
    snprintf(reason, sizeof reason, "connect to %s: %s", bus_target(bus),
        evutil_socket_error_to_string(bus->last_sys_err));
    bus_link_failed(bus, reason, false);
}

static void
bus_resolved(int result, struct evutil_addrinfo *res, void *arg)
{
    struct bus_resolve *r = arg;
    struct bus *bus = r->bus;
    char reason[400];

    free(r);
    if (bus == NULL) {              /* cancelled */
        if (res != NULL)
            evutil_freeaddrinfo(res);
        return;
    }
    bus->resolve = NULL;
    if (result != 0 || res == NULL) {
        if (res != NULL)
            evutil_freeaddrinfo(res);
        snprintf(reason, sizeof reason, "cannot resolve %s: %s", bus->cfg.host,
            evutil_gai_strerror(result != 0 ? result : EVUTIL_EAI_NONAME));
        bus_link_failed(bus, reason, false);
        return;
    }
    bus->addrs = bus->next_addr = res;
    bus->last_sys_err = 0;
    bus_try_next_addr(bus);
}

static void
bus_connect_timeout(evutil_socket_t fd, short what, void *arg)
{
    struct bus *bus = arg;
    char reason[400], d[32];

    fmt_duration(bus->cfg.connect_timeout_ms, d, sizeof d);
    if (bus->resolve != NULL)
        snprintf(reason, sizeof reason, "timeout after %s resolving %s", d, bus->cfg.host);
    else if (bus->tls_phase)
        snprintf(reason, sizeof reason, "timeout after %s in the TLS handshake with %s",
            d, bus->peer);
    else
        snprintf(reason, sizeof reason, "timeout after %s connecting to %s", d, bus->peer);
    bus_link_failed(bus, reason, false);
}

static void
bus_connect_begin(struct bus *bus)
{
    struct evutil_addrinfo hints;
    struct evdns_getaddrinfo_request *req;
    struct bus_resolve *r;
    char port[8];

    if (bus->stopping)
        return;
    if (bus->attempted)
        bus->st.reconnects++;
    bus->attempted = true;
    bus->rx_any = false;
    bus->peer[0] = '\0';
    bus_log_attempt(bus, "bus: connecting to %s", bus_target(bus));
    bus_set_state(bus, BUS_CONNECTING, NULL);
    if (bus->state != BUS_CONNECTING)
        return;     /* on_state shut us down */
    timer_arm(bus->connect_timer, bus->cfg.connect_timeout_ms);

    if ((r = calloc(1, sizeof *r)) == NULL) {
        bus_link_failed(bus, "out of memory", false);
        return;
    }
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_protocol = IPPROTO_TCP;
    snprintf(port, sizeof port, "%u", (unsigned)bus->cfg.port);
    r->bus = bus;
    bus->resolve = r;
    /* May call bus_resolved before returning (numeric host, hosts file):
     * then it returns NULL and r is gone. */
    req = evdns_getaddrinfo(bus->dns, bus->cfg.host, port, &hints, bus_resolved, r);
    if (req != NULL)
        r->req = req;
}

static void
bus_retry(evutil_socket_t fd, short what, void *arg)
{
    bus_connect_begin(arg);
}

static void
bus_shutdown_done(evutil_socket_t fd, short what, void *arg)
{
    struct bus *bus = arg;
    void (*done)(void *) = bus->shutdown_done;

    bus->shutdown_pending = false;
    bus->shutdown_done = NULL;
    if (done != NULL)
        done(bus->shutdown_arg);
}

/* ---- public ---- */

struct bus *
bus_new(struct event_base *base, struct evdns_base *dns,
    const struct config_bus *cfg, const struct bus_callbacks *cb, void *arg)
{
    struct bus *bus;
    char err[512];

    if ((bus = calloc(1, sizeof *bus)) == NULL)
        return NULL;
    bus->base = base;
    bus->dns = dns;
    LIST_INIT(&bus->drains);
    wire_msg_init(&bus->msg);
    busconfirm_init(&bus->confirm);
    TAILQ_INIT(&bus->runs);
    if ((bus->held = evbuffer_new()) == NULL) {
        free(bus);
        return NULL;
    }
    if (cb != NULL)
        bus->cb = *cb;
    bus->cb_arg = arg;
    bus->state = bus->st.state = BUS_DOWN;
    bus->st.state_since = time(NULL);
    if (bus_cfg_copy(&bus->cfg, cfg) != 0)
        goto fail;
    if (bus->dns == NULL) {
        /* Never resolve with blocking getaddrinfo on the event loop. */
        if ((bus->dns = evdns_base_new(base, EVDNS_BASE_INITIALIZE_NAMESERVERS)) == NULL)
            goto fail;
        bus->own_dns = true;
    }
    if ((bus->retry_timer = evtimer_new(base, bus_retry, bus)) == NULL ||
        (bus->connect_timer = evtimer_new(base, bus_connect_timeout, bus)) == NULL ||
        (bus->watchdog = evtimer_new(base, bus_watchdog, bus)) == NULL ||
        (bus->confirm_timer = evtimer_new(base, bus_confirm_timeout, bus)) == NULL ||
        (bus->done_ev = evtimer_new(base, bus_shutdown_done, bus)) == NULL)
        goto fail;
    /* A bad TLS setting is reported (and retried) at connect time, where it
     * reaches the log and the sessions as the reason the bus is down. */
    if (bus->cfg.tls.enabled &&
        (bus->ssl_ctx = tls_ctx_new(&bus->cfg.tls, err, sizeof err)) == NULL)
        log_msg(LOG_ERR, NULL, "bus: TLS: %s", err);
    return bus;
fail:
    bus_free(bus);
    return NULL;
}

int
bus_start(struct bus *bus)
{
    if (bus->started || bus->stopping)
        return -1;
    bus->started = true;
    bus_connect_begin(bus);
    return 0;
}

/* Data, as opposed to subscription and notification requests (which the
 * router replays on every new link). */
static bool
bus_is_data(const struct wire_msg *msg)
{
    return msg->type == WIRE_MULTICAST_DATA || msg->type == WIRE_UNICAST_DATA ||
        msg->type == WIRE_AUTHORIZATION_RESPONSE;
}

/* Data waits for confirmation when the probe or the watchdog will provide
 * one (see the top). */
static bool
bus_hold(const struct bus *bus, const struct wire_msg *msg)
{
    return bus->state == BUS_UNCONFIRMED && bus_confirms(bus) && bus_is_data(msg);
}

/* Bytes waiting to go to the bus, held ones included. */
static size_t
bus_queued(const struct bus *bus)
{
    size_t n = evbuffer_get_length(bus->held);

    if (bus->bev != NULL && (bus->state == BUS_UNCONFIRMED || bus->state == BUS_UP))
        n += evbuffer_get_length(bufferevent_get_output(bus->bev));
    return n;
}

/* msg at the configured bus protocol, whatever version it was built at. */
static int
bus_encode(struct evbuffer *out, const struct config_bus *c, const struct wire_msg *msg)
{
    struct wire_msg at = *msg;

    at.version = c->protocol;
    return wire_encode(out, &at);
}

enum bus_send_result
bus_send(struct bus *bus, const struct wire_msg *msg)
{
    struct evbuffer *out;
    size_t before, after;
    bool hold;

    if ((bus->state != BUS_UNCONFIRMED && bus->state != BUS_UP) || bus->bev == NULL)
        return BUS_NOT_UP;
    hold = bus_hold(bus, msg);
    out = hold ? bus->held : bufferevent_get_output(bus->bev);
    before = evbuffer_get_length(out);
    /* wire_encode appends all of the message or nothing */
    if (bus_encode(out, &bus->cfg, msg) != 0)
        return BUS_ENCODE_ERROR;
    after = evbuffer_get_length(out);
    bus->st.msgs_out++;
    bus->st.bytes_out += after - before;
    if (hold)
        bus->held_msgs++;
    else
        out_runs_note(bus, after - before, bus_is_data(msg));
    if (bus_queued(bus) > bus->cfg.output_high_water)
        bus->pressure = true;
    return BUS_SENT;
}

bool
bus_congested(const struct bus *bus)
{
    return bus_queued(bus) > bus->cfg.output_high_water;
}

bool
bus_holds(const struct bus *bus, const struct wire_str *feed, const struct wire_str *topic)
{
    return bus->cfg.heartbeat_timeout_ms > 0 && wire_str_is(feed, HEARTBEAT_FEED) &&
        wire_str_is(topic, HEARTBEAT_TOPIC);
}

enum bus_state
bus_state(const struct bus *bus)
{
    return bus->state;
}

void
bus_get_stats(const struct bus *bus, struct bus_stats *st)
{
    *st = bus->st;
    st->output_queued = bus_queued(bus);
    st->heartbeat = bus->hb_state != NULL ? bus->hb_state : "off";
    st->confirm = busconfirm_state_name(bus->confirm.state);
    st->client_id = bus->client_id;
    st->server = bus->bev != NULL ? bus->peer : "";
    st->protocol = bus->cfg.protocol;
    st->host = bus->cfg.host;
    st->port = bus->cfg.port;
    st->tls_version = st->tls_cipher = NULL;
    if (bus->bev != NULL && bus->tls_phase && bus->state != BUS_CONNECTING) {
        SSL *ssl = bufferevent_openssl_get_ssl(bus->bev);

        if (ssl != NULL) {
            st->tls_version = SSL_get_version(ssl);
            st->tls_cipher = SSL_get_cipher_name(ssl);
        }
    }
}

int
bus_reconfigure(struct bus *bus, const struct config_bus *cfg, char *err, size_t errlen)
{
    struct config_bus fresh;
    SSL_CTX *ctx = NULL;
    bool reconnect = bus_cfg_needs_reconnect(&bus->cfg, cfg);
    /* Always a fresh SSL_CTX when TLS is on: certificate and key files may
     * have new contents under the same names (the next connect uses them). */
    bool new_tls = cfg->tls.enabled || !tls_config_equal(&bus->cfg.tls, &cfg->tls);
    uint32_t old_hb = bus->cfg.heartbeat_timeout_ms;

    if (new_tls && cfg->tls.enabled &&
        (ctx = tls_ctx_new(&cfg->tls, err, errlen)) == NULL)
        return -1;
    if (bus_cfg_copy(&fresh, cfg) != 0) {
        tls_ctx_free(ctx);
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    bus_cfg_free(&bus->cfg);
    bus->cfg = fresh;
    if (new_tls) {
        tls_ctx_free(bus->ssl_ctx);     /* live SSLs hold their own reference */
        bus->ssl_ctx = ctx;
    }
    if (!reconnect && bus->started && !bus->stopping && bus->state == BUS_DOWN &&
        evtimer_pending(bus->retry_timer, NULL)) {
        /* Waiting out a backoff, perhaps after bad credentials the operator
         * has just fixed: try again now with what was re-read. */
        log_notice("bus: reloaded, retrying %s now", bus_target(bus));
        evtimer_del(bus->retry_timer);
        bus->attempt = 0;
        bus_connect_begin(bus);
        return 0;
    }
    if (!reconnect || !bus->started || bus->stopping) {
        if (bus->bev != NULL && (bus->state == BUS_UNCONFIRMED || bus->state == BUS_UP))
            bufferevent_setwatermark(bus->bev, EV_WRITE, bus->cfg.output_high_water / 2, 0);
        if (old_hb != bus->cfg.heartbeat_timeout_ms && evtimer_pending(bus->watchdog, NULL))
            timer_arm(bus->watchdog, bus->cfg.heartbeat_timeout_ms);
        return 0;
    }
    log_notice("bus: connection settings changed, reconnecting to %s", bus_target(bus));
    evtimer_del(bus->retry_timer);
    bus_close_link(bus, true, bus->cfg.connect_timeout_ms);
    bus->attempt = bus->streak = bus->retries = 0;
    bus->fail_reason[0] = '\0';
    bus_set_state(bus, BUS_DOWN, "configuration changed");
    bus_release_pressure(bus);
    if (bus->state == BUS_DOWN && !bus->stopping && !evtimer_pending(bus->retry_timer, NULL))
        bus_connect_begin(bus);
    return 0;
}

void
bus_shutdown(struct bus *bus, uint32_t timeout_ms, void (*done)(void *), void *arg)
{
    size_t queued = bus->bev != NULL ?
        evbuffer_get_length(bufferevent_get_output(bus->bev)) : 0;

    bus->stopping = true;
    bus_drop_held(bus, "shutting down");
    bus->shutdown_done = done;
    bus->shutdown_arg = arg;
    bus->shutdown_pending = true;
    evtimer_del(bus->retry_timer);
    if (queued > 0 && (bus->state == BUS_UNCONFIRMED || bus->state == BUS_UP))
        log_info("bus: closing (flushing %zu bytes)", queued);
    else if (bus->state != BUS_DOWN)
        log_info("bus: closing");
    bus_close_link(bus, true, timeout_ms);
    if (LIST_EMPTY(&bus->drains))
        timer_arm(bus->done_ev, 0);
    bus_set_state(bus, BUS_DOWN, "shutting down");
    bus_release_pressure(bus);
}

void
bus_free(struct bus *bus)
{
    struct bus_drain *d;

    if (bus == NULL)
        return;
    bus->shutdown_pending = false;
    bus_close_link(bus, false, 0);
    while ((d = LIST_FIRST(&bus->drains)) != NULL)
        bus_drain_free(d);
    if (bus->retry_timer != NULL)
        event_free(bus->retry_timer);
    if (bus->connect_timer != NULL)
        event_free(bus->connect_timer);
    if (bus->watchdog != NULL)
        event_free(bus->watchdog);
    if (bus->confirm_timer != NULL)
        event_free(bus->confirm_timer);
    if (bus->done_ev != NULL)
        event_free(bus->done_ev);
    if (bus->own_dns)
        evdns_base_free(bus->dns, 1);   /* fails (and frees) a pending lookup */
    tls_ctx_free(bus->ssl_ctx);
    bus_cfg_free(&bus->cfg);
    wire_msg_free(&bus->msg);
    busconfirm_free(&bus->confirm);
    evbuffer_free(bus->held);
    free(bus);
}
