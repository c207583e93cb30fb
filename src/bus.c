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
 * Data sends are batched: encoded one after the other into one buffer and
 * appended to the output once, at the end of the loop turn (an event made
 * active by the first send) or before any other append, so a session
 * read's publishes cost one round of the output's callbacks, not one per
 * message. The batch counts as queued (back-pressure) and, if the link
 * fails, as data lost; a draining close takes it along.
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
 * Data waits for confirmation: with a confirmation (the probe or the
 * watchdog) on, the link takes no publishes, sends or authorization
 * answers while it is unconfirmed (bus_data_ready): a rejected login is
 * silent (defect 2), and data sent to it would vanish although the router
 * acknowledged it. The router keeps such data in its one queue for a link
 * that is not ready and hands it over whole (bus_send_encoded) once the
 * link is up. Subscription and notification requests go out at once: the
 * router replays them anyway. With neither (bus.confirm none, no
 * watchdog) a quiet bus may never confirm the link, so data goes at once.
 */
#include "bus-int.h"

uint64_t
bus_now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

void
bus_timer_arm(struct event *ev, uint64_t ms)
{
    struct timeval tv = { .tv_sec = (time_t)(ms / 1000),
        .tv_usec = (suseconds_t)(ms % 1000) * 1000 };

    evtimer_add(ev, &tv);
}

double
bus_random_unit(void)
{
    uint32_t r;

    evutil_secure_rng_get_bytes(&r, sizeof r);
    return r / 4294967296.0;
}

/* "host:port", "[::1]:port" for log lines. */
const char *
bus_target(const struct bus *bus)
{
    static char buf[300];
    const char *h = bus->cfg.host != NULL ? bus->cfg.host : "?";

    snprintf(buf, sizeof buf, strchr(h, ':') != NULL ? "[%s]:%u" : "%s:%u", h,
        (unsigned)bus->cfg.port);
    return buf;
}

/* "1.5s", "30s", "250ms" for log lines. */
void
bus_fmt_duration(uint32_t ms, char *buf, size_t len)
{
    if (ms % 1000 == 0)
        snprintf(buf, len, "%us", ms / 1000);
    else if (ms > 1000)
        snprintf(buf, len, "%u.%03us", ms / 1000, ms % 1000);
    else
        snprintf(buf, len, "%ums", ms);
}

bool
bus_wire_str_is(const struct wire_str *s, const char *lit)
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

/* The top of the backoff range for attempt: min(max, min * 2^attempt). */
uint32_t
bus_backoff_cap(uint32_t *min_ms, uint32_t max_ms, unsigned attempt)
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
    uint32_t cap = bus_backoff_cap(&min_ms, max_ms, attempt);

    if (!(rnd > 0.0)) /* also catches NaN */
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
        &c->host,
        &c->credentials_file,
        &c->token_file,
        &c->impersonating,
        &c->forwarded_for,
        &c->confirm_feed,
        &c->tls.ca_file,
        &c->tls.ca_dir,
        &c->tls.server_name,
        &c->tls.cert_file,
        &c->tls.key_file,
        &c->tls.ciphers,
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
        a->forwarded_for_host != b->forwarded_for_host || a->protocol != b->protocol ||
        !same_str(a->application, b->application) ||
        /* the heartbeat subscription is made at connect time */
        (a->heartbeat_timeout_ms == 0) != (b->heartbeat_timeout_ms == 0);
}

/* Down or trying to connect: the link is away. */
static bool
bus_away(enum bus_state state)
{
    return state == BUS_DOWN || state == BUS_CONNECTING;
}

/* Every state change goes through here, last in its caller (callbacks may
 * re-enter the bus). */
void
bus_set_state(struct bus *bus, enum bus_state state, const char *reason)
{
    if (bus->state == state)
        return;
    /* An outage cycles down <-> connecting once per retry: keep when it
     * began, so "down since" (STATS, /readyz, /metrics) says how long the
     * bus has been away, not when the latest attempt started. */
    if (!bus_away(bus->state) || !bus_away(state))
        bus->st.state_since = time(NULL);
    bus->state = state;
    bus->st.state = state;
    if (bus->cb.on_state != NULL)
        bus->cb.on_state(bus->cb_arg, state, reason);
}

/* True while retrying after failures: the per-attempt lines go to debug so
 * that a long outage does not log one line per retry. */
bool
bus_quiet(const struct bus *bus)
{
    return bus->attempt > 0;
}

/* "bus: down: reason", with identical failures in a row summarised. */
void
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

static void
bus_retry(evutil_socket_t fd, short what, void *arg)
{
    bus_connect_begin(arg);
}

/* The end of the loop turn in which the batch began. */
static void
bus_batch_cb(evutil_socket_t fd, short what, void *arg)
{
    bus_batch_flush(arg);
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

struct bus *
bus_new(struct event_base *base, struct evdns_base *dns, const struct config_bus *cfg,
    const struct bus_callbacks *cb, void *arg)
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
        (bus->done_ev = evtimer_new(base, bus_shutdown_done, bus)) == NULL ||
        (bus->batch_ev = event_new(base, -1, 0, bus_batch_cb, bus)) == NULL)
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

bool
bus_data_ready(const struct bus *bus)
{
    return bus->bev != NULL &&
        (bus->state == BUS_UP || (bus->state == BUS_UNCONFIRMED && !bus_confirms(bus)));
}

/* Bytes waiting to go to a link that is up or unconfirmed. */
static inline size_t
queued_on_link(const struct bus *bus)
{
    return evbuffer_get_length(bufferevent_get_output(bus->bev)) + bus->batch_len;
}

/* Bytes waiting to go to the bus (the batch included). */
size_t
bus_queued(const struct bus *bus)
{
    if (bus->bev != NULL && (bus->state == BUS_UNCONFIRMED || bus->state == BUS_UP))
        return queued_on_link(bus);
    return 0;
}

/* After appending to the output: back-pressure past the high-water mark.
 * Returns whether it is past it (bus_congested). */
static bool
bus_note_queued(struct bus *bus)
{
    if (bus_queued(bus) <= bus->cfg.output_high_water)
        return false;
    bus->pressure = true;
    return true;
}

/* Forget the batch (the link goes without draining). */
void
bus_batch_discard(struct bus *bus)
{
    bus->batch_len = 0;
}

static void
batch_free(const void *data, size_t len, void *arg)
{
    (void)len;
    (void)arg;
    free((void *)(uintptr_t)data);
}

/* A large batch goes to the output by reference, trimmed to its length
 * (the output frees it once written): copying it cost as many cache
 * misses as encoding it had. -1: the caller copies it instead. */
static int
batch_handover(struct bus *bus, struct evbuffer *out, size_t n)
{
    uint8_t *b = n < bus->batch_cap ? realloc(bus->batch, n) : bus->batch;

    if (b == NULL)
        return -1;
    bus->batch = b;
    bus->batch_cap = n;
    if (evbuffer_add_reference(out, b, n, batch_free, NULL) != 0)
        return -1;
    bus->batch = NULL;
    bus->batch_cap = 0;
    return 0;
}

/* Append the batch to the output: one append, one round of the output's
 * callbacks for all the data sent since the last flush. */
void
bus_batch_flush(struct bus *bus)
{
    struct evbuffer *out;
    size_t n = bus->batch_len;
    int r = 0;

    if (n == 0)
        return; /* also whenever there is no link: the batch goes with it */
    bus->batch_len = 0;
    out = bufferevent_get_output(bus->bev);
    if (n < BUS_BATCH_HANDOVER || batch_handover(bus, out, n) != 0)
        r = evbuffer_add(out, bus->batch, n);
    if (r != 0) {
        /* acknowledged already: counted like data a failed link loses */
        bus->st.bytes_lost += n;
        log_error("bus: out of memory: %zu bytes of data lost", n);
    } else {
        bus_out_runs_note(bus, n, true);
    }
    if (bus->batch_cap > BUS_BATCH_MAX) {
        free(bus->batch); /* one large message: do not keep its size */
        bus->batch = NULL;
        bus->batch_cap = 0;
    }
}

/* The link's output for anything but a data send: the batch goes first,
 * so the output keeps the order of the sends. */
struct evbuffer *
bus_output(struct bus *bus)
{
    bus_batch_flush(bus);
    return bufferevent_get_output(bus->bev);
}

/* Room for size more bytes in the batch. */
static uint8_t *
bus_batch_room(struct bus *bus, size_t size)
{
    size_t want;
    uint8_t *p;

    if (bus->batch_len > 0 && bus->batch_len + size > BUS_BATCH_MAX)
        bus_batch_flush(bus);
    if ((want = bus->batch_len + size) > bus->batch_cap) {
        if (want < BUS_BATCH_MAX)
            want = BUS_BATCH_MAX;
        if ((p = realloc(bus->batch, want)) == NULL)
            return NULL;
        bus->batch = p;
        bus->batch_cap = want;
    }
    return bus->batch + bus->batch_len;
}

/* bus_note_queued for a data send, its link known up (bus_data_ready): the
 * output is measured only when the bound batch_out gives passes the
 * high-water mark, and the result saves the caller measuring it again. */
static enum bus_send_result
bus_batch_note_queued(struct bus *bus)
{
    size_t high = bus->cfg.output_high_water;

    if (bus->batch_out + bus->batch_len <= high)
        return BUS_SENT;
    bus->batch_out = evbuffer_get_length(bufferevent_get_output(bus->bev));
    if (bus->batch_out + bus->batch_len <= high)
        return BUS_SENT;
    bus->pressure = true;
    return BUS_SENT_HIGH;
}

/* A data send, into the batch; m is at the configured bus protocol.
 * Always inline: called twice, the compiler would make the usual send a
 * call. */
static inline __attribute__((always_inline)) enum bus_send_result
bus_batch_add(struct bus *bus, const struct wire_msg *m)
{
    size_t size;
    uint8_t *p, *end = NULL;

    /* Into the room the batch has; when too little, sized and written
     * again into the room made for it. */
    if (bus->batch != NULL) {
        p = bus->batch + bus->batch_len;
        end = wire_encode_into(p, bus->batch + bus->batch_cap, m);
    }
    if (end == NULL &&
        ((size = wire_encoded_size(m)) == 0 || (p = bus_batch_room(bus, size)) == NULL ||
            (end = wire_encode_into(p, p + size, m)) == NULL))
        return BUS_ENCODE_ERROR;
    /* The first send of a batch schedules its flush for the end of this
     * loop turn, and notes the output's length (batch_out). */
    if (bus->batch_len == 0) {
        event_active(bus->batch_ev, EV_TIMEOUT, 0);
        bus->batch_out = evbuffer_get_length(bufferevent_get_output(bus->bev));
    }
    size = (size_t)(end - p);
    bus->batch_len += size;
    bus->st.msgs_out++;
    bus->st.bytes_out += size;
    return bus_batch_note_queued(bus);
}

/* A data send built at another protocol than the configured one: a copy
 * at it. Out of line, so that the usual send has no copy's frame. */
static enum bus_send_result __attribute__((noinline))
bus_batch_add_at(struct bus *bus, const struct wire_msg *msg)
{
    struct wire_msg at = *msg;

    at.version = bus->cfg.protocol;
    return bus_batch_add(bus, &at);
}

/* msg at the configured bus protocol, whatever version it was built at.
 * Out of line for the reason bus_batch_add_at is. */
static int __attribute__((noinline))
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

    /* Data first: bus_data_ready implies the link check below. */
    if (bus_is_data(msg)) {
        if (!bus_data_ready(bus))
            return BUS_NOT_UP;
        return msg->version == bus->cfg.protocol ? bus_batch_add(bus, msg)
                                                 : bus_batch_add_at(bus, msg);
    }
    if ((bus->state != BUS_UNCONFIRMED && bus->state != BUS_UP) || bus->bev == NULL)
        return BUS_NOT_UP;
    out = bus_output(bus);
    before = evbuffer_get_length(out);
    /* wire_encode appends all of the message or nothing */
    if (bus_encode(out, &bus->cfg, msg) != 0)
        return BUS_ENCODE_ERROR;
    after = evbuffer_get_length(out);
    bus->st.msgs_out++;
    bus->st.bytes_out += after - before;
    bus_out_runs_note(bus, after - before, false);
    return bus_note_queued(bus) ? BUS_SENT_HIGH : BUS_SENT;
}

enum bus_send_result
bus_send_encoded(struct bus *bus, struct evbuffer *data, uint64_t n)
{
    size_t len = evbuffer_get_length(data);

    if (!bus_data_ready(bus))
        return BUS_NOT_UP;
    if (evbuffer_add_buffer(bus_output(bus), data) != 0)
        return BUS_ENCODE_ERROR;
    bus->st.msgs_out += n;
    bus->st.bytes_out += len;
    bus_out_runs_note(bus, len, true);
    bus_note_queued(bus);
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
    return bus->cfg.heartbeat_timeout_ms > 0 && bus_wire_str_is(feed, HEARTBEAT_FEED) &&
        bus_wire_str_is(topic, HEARTBEAT_TOPIC);
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

    if (new_tls && cfg->tls.enabled && (ctx = tls_ctx_new(&cfg->tls, err, errlen)) == NULL)
        return -1;
    if (bus_cfg_copy(&fresh, cfg) != 0) {
        tls_ctx_free(ctx);
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    bus_cfg_free(&bus->cfg);
    bus->cfg = fresh;
    if (new_tls) {
        tls_ctx_free(bus->ssl_ctx); /* live SSLs hold their own reference */
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
            bus_timer_arm(bus->watchdog, bus->cfg.heartbeat_timeout_ms);
        return 0;
    }
    log_notice("bus: connection settings changed, reconnecting to %s", bus_target(bus));
    evtimer_del(bus->retry_timer);
    bus_close_link(bus, true, bus->cfg.connect_timeout_ms);
    bus->attempt = bus->streak = bus->retries = 0;
    bus->fail_reason[0] = '\0';
    bus_set_state(bus, BUS_DOWN, "configuration changed");
    bus_release_pressure(bus);
    if (bus->state == BUS_DOWN && !bus->stopping &&
        !evtimer_pending(bus->retry_timer, NULL))
        bus_connect_begin(bus);
    return 0;
}

void
bus_shutdown(struct bus *bus, uint32_t timeout_ms, void (*done)(void *), void *arg)
{
    size_t queued;

    bus_batch_flush(bus);
    queued = bus->bev != NULL ? evbuffer_get_length(bufferevent_get_output(bus->bev)) : 0;
    bus->stopping = true;
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
        bus_timer_arm(bus->done_ev, 0);
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
    if (bus->batch_ev != NULL)
        event_free(bus->batch_ev);
    free(bus->batch);
    if (bus->own_dns)
        evdns_base_free(bus->dns, 1); /* fails (and frees) a pending lookup */
    tls_ctx_free(bus->ssl_ctx);
    bus_cfg_free(&bus->cfg);
    wire_msg_free(&bus->msg);
    busconfirm_free(&bus->confirm);
    free(bus);
}
