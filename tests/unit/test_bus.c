/*
 * Unit tests for src/bus.c: the backoff arithmetic, then the link itself
 * over real loopback TCP against a small in-process fake bus (no TLS; the
 * TLS paths are covered by tests/integration/test_buslink.py): credentials
 * payload, heartbeat subscription and filtering, unconfirmed -> up,
 * probable authentication failure, watchdog, protocol error, refused
 * connection, unsafe credentials file, token rotation, back-pressure,
 * shutdown flushing whole messages, reconfigure.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <unistd.h>

#include <cmocka.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>

#include "bus.h"
#include "config.h"
#include "log.h"
#include "wire.h"

#include "tmpdir.h"

/* ------------------------------------------------------------ backoff */

static void
t_backoff_first_is_min(void **state)
{
    assert_int_equal(bus_backoff_ms(500, 30000, 0, 0.0), 500);
    assert_int_equal(bus_backoff_ms(500, 30000, 0, 0.5), 500);
    assert_int_equal(bus_backoff_ms(500, 30000, 0, 0.999), 500);
}

static void
t_backoff_bounds_and_cap(void **state)
{
    const double rnds[] = { 0.0, 0.1, 0.5, 0.9, 0.999999 };

    for (unsigned a = 0; a < 64; a++) {
        uint64_t cap = 100;

        for (unsigned i = 0; i < a && cap < 30000; i++)
            cap *= 2;
        if (cap > 30000)
            cap = 30000;
        for (size_t k = 0; k < sizeof rnds / sizeof rnds[0]; k++) {
            uint32_t d = bus_backoff_ms(100, 30000, a, rnds[k]);

            assert_true(d >= 100);
            assert_true(d <= cap);
        }
        /* the top of the range is reached (to rounding) */
        assert_true(bus_backoff_ms(100, 30000, a, 0.999999) + 1 >= cap);
    }
    assert_int_equal(bus_backoff_ms(100, 30000, 1000, 0.999999), 29999);
    assert_true(bus_backoff_ms(100, 30000, UINT_MAX, 0.5) <= 30000);
}

static void
t_backoff_growth(void **state)
{
    uint32_t prev = 0;

    /* the upper bound doubles per attempt until the cap */
    for (unsigned a = 0; a < 10; a++) {
        uint32_t top = bus_backoff_ms(250, 1000000, a, 0.999999999);

        assert_true(top + 1 >= 250u << a);
        assert_true(top <= 250u << a);
        assert_true(top >= prev);
        prev = top;
    }
}

static void
t_backoff_degenerate(void **state)
{
    /* min 0 would retry in a tight loop: treated as 1 ms */
    assert_int_equal(bus_backoff_ms(0, 0, 0, 0.5), 1);
    assert_true(bus_backoff_ms(0, 100, 20, 0.5) >= 1);
    /* max below min: min wins */
    assert_int_equal(bus_backoff_ms(1000, 10, 5, 0.7), 1000);
    /* out-of-range random values are clamped */
    assert_int_equal(bus_backoff_ms(100, 1000, 10, -3.0), 100);
    assert_int_equal(bus_backoff_ms(100, 1000, 10, NAN), 100);
    assert_true(bus_backoff_ms(100, 1000, 10, 7.0) <= 1000);
    assert_true(bus_backoff_ms(100, 1000, 10, 7.0) >= 999);
}

static void
t_backoff_jitter_spreads(void **state)
{
    uint32_t lo = UINT32_MAX, hi = 0;

    srand(12345);
    for (int i = 0; i < 2000; i++) {
        uint32_t d = bus_backoff_ms(100, 30000, 5, rand() / (RAND_MAX + 1.0));

        assert_true(d >= 100 && d <= 3200);
        if (d < lo)
            lo = d;
        if (d > hi)
            hi = d;
    }
    /* full jitter: the draws cover most of [min, cap] */
    assert_true(lo < 400);
    assert_true(hi > 2900);
}

/* A close soon after the login, before anything came back, is a probable
 * authentication failure; a TLS error (a refused renegotiation, an alert)
 * never is, however soon it comes. */
static void
t_probable_auth_failure(void **state)
{
    struct bus_close_facts f = {
        .unconfirmed = true, .rx_any = false, .auth = true, .tls_error = false,
        .since_login_ms = 100, .window_ms = 2000,
    }, g;

    assert_true(bus_probable_auth_failure(&f));
    g = f, g.tls_error = true;
    assert_false(bus_probable_auth_failure(&g));
    g = f, g.unconfirmed = false;
    assert_false(bus_probable_auth_failure(&g));
    g = f, g.rx_any = true;
    assert_false(bus_probable_auth_failure(&g));
    g = f, g.auth = false;
    assert_false(bus_probable_auth_failure(&g));
    g = f, g.since_login_ms = 2001;
    assert_false(bus_probable_auth_failure(&g));
    g = f, g.since_login_ms = 2000;
    assert_true(bus_probable_auth_failure(&g));
}

static void
t_next_attempt(void **state)
{
    assert_int_equal(bus_next_attempt(0, false), 1);
    assert_int_equal(bus_next_attempt(3, false), 4);
    assert_int_equal(bus_next_attempt(0, true), BUS_AUTH_FAILURE_ATTEMPTS);
    assert_true(BUS_AUTH_FAILURE_ATTEMPTS > 1);
    assert_int_equal(bus_next_attempt(BUS_ATTEMPT_MAX, false), BUS_ATTEMPT_MAX);
    assert_int_equal(bus_next_attempt(BUS_ATTEMPT_MAX - 1, true), BUS_ATTEMPT_MAX);
    assert_int_equal(bus_next_attempt(UINT_MAX, true), BUS_ATTEMPT_MAX);
    /* an authentication failure backs off harder than a plain failure */
    assert_true(bus_backoff_ms(100, 100000, bus_next_attempt(0, true), 0.999999) >
        bus_backoff_ms(100, 100000, bus_next_attempt(0, false), 0.999999));
}

static void
t_state_names(void **state)
{
    assert_string_equal(bus_state_name(BUS_DOWN), "down");
    assert_string_equal(bus_state_name(BUS_CONNECTING), "connecting");
    assert_string_equal(bus_state_name(BUS_UNCONFIRMED), "unconfirmed");
    assert_string_equal(bus_state_name(BUS_UP), "up");
}

/* --------------------------------------------------- a fake bus server */

enum fake_mode {
    FAKE_NORMAL,        /* read and keep everything */
    FAKE_CLOSE_ON_AUTH, /* close as soon as credentials arrive (rejected login) */
    FAKE_GARBAGE,       /* answer the credentials with an unknown message type */
    FAKE_CLOSE_FIRST,   /* reject the first login by closing, accept later ones */
    FAKE_DEAF,          /* accept, never read */
};

struct fake {
    struct evconnlistener *lis;
    int port;
    enum fake_mode mode;
    int accepted;
    int closed;               /* connections that ended (EOF/error) */
    struct bufferevent *conn; /* the latest connection */
    struct evbuffer *rx;      /* everything the latest connection sent */
};

struct obs {
    enum bus_state states[256];
    char reasons[256][300];
    int n;
    int msgs;
    char last_feed[64];
    int drained;
    int done;
};

static struct event_base *base;
static struct fake fk, fk2;
static struct obs ob;
static struct config cfg;

static void
fake_read(struct bufferevent *bev, void *arg)
{
    struct fake *f = arg;
    static const uint8_t garbage[] = { 0xee, 0x13, 0x37, 0x00 };

    if (bev != f->conn) { /* an older connection */
        evbuffer_drain(bufferevent_get_input(bev), (size_t)-1);
        return;
    }
    evbuffer_add_buffer(f->rx, bufferevent_get_input(bev));
    if (f->mode == FAKE_CLOSE_ON_AUTH ||
        (f->mode == FAKE_CLOSE_FIRST && f->accepted == 1)) {
        f->closed++;
        f->conn = NULL;
        bufferevent_free(bev);
    } else if (f->mode == FAKE_GARBAGE) {
        bufferevent_write(bev, garbage, sizeof garbage);
        f->mode = FAKE_NORMAL; /* only the first connection */
    }
}

static void
fake_event(struct bufferevent *bev, short events, void *arg)
{
    struct fake *f = arg;

    if (events & (BEV_EVENT_EOF | BEV_EVENT_ERROR)) {
        f->closed++;
        if (f->conn == bev)
            f->conn = NULL;
        bufferevent_free(bev);
    }
}

static void
fake_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int socklen,
    void *arg)
{
    struct fake *f = arg;
    struct bufferevent *bev = bufferevent_socket_new(base, fd, BEV_OPT_CLOSE_ON_FREE);

    f->accepted++;
    if (f->conn != NULL) /* the bus only ever has one link */
        bufferevent_free(f->conn);
    f->conn = bev;
    evbuffer_drain(f->rx, evbuffer_get_length(f->rx));
    bufferevent_setcb(bev, fake_read, NULL, fake_event, f);
    bufferevent_enable(bev, f->mode == FAKE_DEAF ? EV_WRITE : EV_READ | EV_WRITE);
}

/* Listen on the loopback address of family; false if it has none. */
static bool
fake_listen(struct fake *f, enum fake_mode mode, int family)
{
    struct sockaddr_storage ss;
    struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;
    socklen_t len;

    memset(f, 0, sizeof *f);
    memset(&ss, 0, sizeof ss);
    f->mode = mode;
    if (family == AF_INET6) {
        sin6->sin6_family = AF_INET6;
        sin6->sin6_addr = in6addr_loopback;
        len = sizeof *sin6;
    } else {
        sin->sin_family = AF_INET;
        sin->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        len = sizeof *sin;
    }
    f->lis = evconnlistener_new_bind(base, fake_accept, f,
        LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE, 16, (struct sockaddr *)&ss, (int)len);
    if (f->lis == NULL)
        return false;
    assert_int_equal(getsockname(evconnlistener_get_fd(f->lis), (struct sockaddr *)&ss,
                         &len),
        0);
    f->port = ntohs(family == AF_INET6 ? sin6->sin6_port : sin->sin_port);
    assert_non_null(f->rx = evbuffer_new());
    return true;
}

static void
fake_start(struct fake *f, enum fake_mode mode)
{
    assert_true(fake_listen(f, mode, AF_INET));
}

static void
fake_stop(struct fake *f)
{
    if (f->conn != NULL)
        bufferevent_free(f->conn);
    if (f->lis != NULL)
        evconnlistener_free(f->lis);
    if (f->rx != NULL)
        evbuffer_free(f->rx);
    memset(f, 0, sizeof *f);
}

/* Send one message from the fake bus to the gateway. */
static void
fake_send(struct fake *f, const char *user, const char *feed, const char *topic,
    const char *data)
{
    struct wire_msg m;
    struct wire_packet p = { .data = (const uint8_t *)data, .len = (uint32_t)strlen(data) };

    assert_non_null(f->conn);
    wire_msg_init(&m);
    m.type = WIRE_FORWARDED_MULTICAST;
    m.user.ptr = user;
    m.user.len = (uint32_t)strlen(user);
    m.host.ptr = "bushost";
    m.host.len = 7;
    m.feed.ptr = feed;
    m.feed.len = (uint32_t)strlen(feed);
    m.topic.ptr = topic;
    m.topic.len = (uint32_t)strlen(topic);
    m.is_image = true;
    if (p.len > 0) {
        m.packets = &p;
        m.n_packets = 1;
    }
    assert_int_equal(wire_encode(bufferevent_get_output(f->conn), &m), 0);
}

/* ------------------------------------------------------- bus callbacks */

static void
on_state(void *arg, enum bus_state st, const char *reason)
{
    struct obs *o = arg;

    if (o->n < 256) {
        o->states[o->n] = st;
        snprintf(o->reasons[o->n], sizeof o->reasons[0], "%s",
            reason != NULL ? reason : "");
        o->n++;
    }
}

static void
on_message(void *arg, const struct wire_msg *m)
{
    struct obs *o = arg;

    o->msgs++;
    snprintf(o->last_feed, sizeof o->last_feed, "%.*s", (int)m->feed.len, m->feed.ptr);
}

static void
on_drained(void *arg)
{
    ((struct obs *)arg)->drained++;
}

static void
on_done(void *arg)
{
    ((struct obs *)arg)->done++;
}

static const struct bus_callbacks callbacks = { on_state, on_message, on_drained, NULL };

/* ------------------------------------------------------------- helpers */

static void
tick(evutil_socket_t fd, short what, void *arg)
{
}

/* Run the loop until pred() holds; fail after timeout_ms (generous). */
static bool
run_until(bool (*pred)(void *), void *arg, int timeout_ms)
{
    struct timeval tv = { 0, 10000 };
    struct event *t = event_new(base, -1, EV_PERSIST, tick, NULL);
    struct timespec start, now;
    bool ok = false;

    event_add(t, &tv);
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (;;) {
        if (pred(arg)) {
            ok = true;
            break;
        }
        clock_gettime(CLOCK_MONOTONIC, &now);
        if ((now.tv_sec - start.tv_sec) * 1000 + (now.tv_nsec - start.tv_nsec) / 1000000 >
            timeout_ms)
            break;
        event_base_loop(base, EVLOOP_ONCE);
    }
    event_free(t);
    return ok;
}

static int want_state;
static const char *want_reason;

/* The state was entered (with a reason containing want_reason, if set). */
static bool
saw_state(void *arg)
{
    for (int i = 0; i < ob.n; i++)
        if ((int)ob.states[i] == want_state &&
            (want_reason == NULL || strstr(ob.reasons[i], want_reason) != NULL))
            return true;
    return false;
}

static bool
expect_state(enum bus_state st, const char *reason)
{
    want_state = (int)st;
    want_reason = reason;
    if (run_until(saw_state, NULL, 10000))
        return true;
    for (int i = 0; i < ob.n; i++)
        print_message("state %s: %s\n", bus_state_name(ob.states[i]), ob.reasons[i]);
    return false;
}

static size_t want_bytes;

static bool
rx_has(void *arg)
{
    struct fake *f = arg;

    return evbuffer_get_length(f->rx) >= want_bytes;
}

static int want_int;

static bool
accepted_at_least(void *arg)
{
    return ((struct fake *)arg)->accepted >= want_int;
}

static bool
msgs_at_least(void *arg)
{
    return ob.msgs >= want_int;
}

static bool
is_done(void *arg)
{
    return ob.done > 0;
}

static bool
drained(void *arg)
{
    return ob.drained > 0;
}

static char *
write_file(const char *name, const char *text, mode_t mode)
{
    char *path = tpath(name);
    int fd;

    unlink(path);
    assert_true((fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600)) >= 0);
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    assert_int_equal(fchmod(fd, mode), 0);
    close(fd);
    return path;
}

static void
set_str(char **field, const char *value)
{
    free(*field);
    *field = value != NULL ? strdup(value) : NULL;
}

/* A plain-TCP basic-auth config pointing at port, with fast retries. */
static void
base_config(int port)
{
    config_free(&cfg);
    config_defaults(&cfg);
    set_str(&cfg.bus.host, "127.0.0.1");
    cfg.bus.port = (uint16_t)port;
    cfg.bus.tls.enabled = false;
    cfg.bus.auth = CONFIG_AUTH_BASIC;
    set_str(&cfg.bus.credentials_file,
        write_file("cred.ini", "[bus]\nusername = gw\npassword = s3cret\n", 0600));
    set_str(&cfg.bus.forwarded_for, "fwd-host");
    cfg.bus.forwarded_for_host = false;
    cfg.bus.reconnect_min_ms = 10;
    cfg.bus.reconnect_max_ms = 50;
    cfg.bus.connect_timeout_ms = 5000;
    cfg.bus.auth_fail_window_ms = 5000;
    cfg.bus.heartbeat_timeout_ms = 0;
    /* no login probe: these tests count the bytes a login sends (the
     * probe is tested end to end in tests/integration/test_confirm.py) */
    cfg.bus.confirm = CONFIG_CONFIRM_NONE;
    wire_limits_default(&cfg.bus.limits);
}

static struct bus *
start_bus(void)
{
    struct bus *bus = bus_new(base, NULL, &cfg.bus, &callbacks, &ob);

    assert_non_null(bus);
    config_free(&cfg); /* the bus keeps its own copy */
    config_defaults(&cfg);
    assert_int_equal(bus_start(bus), 0);
    return bus;
}

/* Decode the credentials the fake bus received (basic). */
static void
expect_basic_auth(struct fake *f, const char *user, const char *pass, const char *fwd)
{
    struct wire_limits lim;
    struct wire_auth a;
    const char *cause = NULL;

    wire_limits_default(&lim);
    assert_int_equal(wire_decode_auth(f->rx, WIRE_AUTH_BASIC, &lim, &a, &cause),
        WIRE_DECODED);
    assert_string_equal(a.username, user);
    assert_string_equal(a.password, pass);
    assert_null(a.impersonating);
    if (fwd != NULL)
        assert_string_equal(a.forwarded_for, fwd);
    else
        assert_null(a.forwarded_for);
    wire_auth_free(&a);
}

static int
setup(void **state)
{
    memset(&ob, 0, sizeof ob);
    if (tmpdir_make("test_bus") != 0)
        return -1;
    base = event_base_new();
    config_defaults(&cfg);
    return base == NULL ? -1 : 0;
}

static int
teardown(void **state)
{
    fake_stop(&fk);
    fake_stop(&fk2);
    config_free(&cfg);
    event_base_free(base);
    base = NULL;
    return tmpdir_remove();
}

/* ---------------------------------------------------------- link tests */

static void
t_link_up_and_messages(void **state)
{
    struct bus_stats st;
    uint64_t own_bytes;
    struct wire_msg m, got;
    struct wire_limits lim;
    const char *cause = NULL;
    struct bus *bus;

    fake_start(&fk, FAKE_NORMAL);
    base_config(fk.port);
    cfg.bus.heartbeat_timeout_ms = 5000;
    bus = start_bus();
    assert_true(expect_state(BUS_CONNECTING, NULL));
    assert_true(expect_state(BUS_UNCONFIRMED, NULL));
    assert_int_equal(bus_state(bus), BUS_UNCONFIRMED);

    /* credentials first, then the link's own heartbeat subscription */
    want_bytes = 4 + 2 + 4 + 6 + 4 + 4 + 8 + 1 + 4 + 9 + 4 + 9 + 1;
    assert_true(run_until(rx_has, &fk, 10000));
    expect_basic_auth(&fk, "gw", "s3cret", "fwd-host");
    wire_limits_default(&lim);
    wire_msg_init(&got);
    assert_int_equal(wire_decode(fk.rx, &lim, &got, &cause), WIRE_DECODED);
    assert_int_equal(got.type, WIRE_SUBSCRIPTION_REQUEST);
    assert_memory_equal(got.feed.ptr, "__admin__", 9);
    assert_memory_equal(got.topic.ptr, "heartbeat", 9);
    assert_true(got.is_add);

    /* a heartbeat confirms the link, is counted and passed on (for local
     * subscribers of the topic), like data */
    fake_send(&fk, "admin", "__admin__", "heartbeat", "");
    fake_send(&fk, "pub", "PRICES", "VOD.L", "123.4");
    want_int = 2;
    assert_true(run_until(msgs_at_least, NULL, 10000));
    assert_int_equal(bus_state(bus), BUS_UP);
    assert_string_equal(ob.last_feed, "PRICES");
    assert_int_equal(ob.msgs, 2);
    bus_get_stats(bus, &st);
    assert_int_equal(st.state, BUS_UP);
    assert_int_equal(st.msgs_in, 2);
    assert_int_equal(st.heartbeats_in, 1);
    assert_int_equal(st.connects, 1);
    assert_true(st.bytes_in > 20);

    /* sending: the link's own login and heartbeat subscription count as
     * sent (their answers count as received) */
    bus_get_stats(bus, &st);
    assert_int_equal(st.msgs_out, 2);
    own_bytes = st.bytes_out;
    assert_true(own_bytes > 20);
    wire_msg_init(&m);
    m.type = WIRE_SUBSCRIPTION_REQUEST;
    m.feed.ptr = "PRICES";
    m.feed.len = 6;
    m.topic.ptr = "VOD.L";
    m.topic.len = 5;
    m.is_add = true;
    assert_int_equal(bus_send(bus, &m), BUS_SENT);
    want_bytes = wire_encoded_size(&m);
    assert_true(run_until(rx_has, &fk, 10000));
    assert_int_equal(wire_decode(fk.rx, &lim, &got, &cause), WIRE_DECODED);
    assert_int_equal(got.type, WIRE_SUBSCRIPTION_REQUEST);
    assert_memory_equal(got.topic.ptr, "VOD.L", 5);
    bus_get_stats(bus, &st);
    assert_int_equal(st.msgs_out, 3);
    assert_int_equal(st.bytes_out, own_bytes + wire_encoded_size(&m));
    wire_msg_free(&got);

    bus_shutdown(bus, 1000, on_done, &ob);
    assert_int_equal(bus_send(bus, &m), BUS_NOT_UP);
    assert_true(run_until(is_done, NULL, 10000));
    assert_true(expect_state(BUS_DOWN, "shutting down"));
    bus_free(bus);
}

static void
t_link_auth_failure(void **state)
{
    struct bus_stats st;
    struct bus *bus;

    fake_start(&fk, FAKE_CLOSE_ON_AUTH);
    base_config(fk.port);
    bus = start_bus();
    assert_true(expect_state(BUS_DOWN, "probable authentication failure (basic, user gw)"));
    /* and it tries again */
    want_int = 2;
    assert_true(run_until(accepted_at_least, &fk, 10000));
    bus_get_stats(bus, &st);
    assert_true(st.auth_failures >= 1);
    assert_true(st.reconnects >= 1);
    assert_string_equal(st.last_error, "probable authentication failure (basic, user gw)");
    /* never the secret */
    for (int i = 0; i < ob.n; i++)
        assert_null(strstr(ob.reasons[i], "s3cret"));
    bus_free(bus);
}

static void
t_link_watchdog_silent(void **state)
{
    struct bus_stats st;
    struct bus *bus;

    fake_start(&fk, FAKE_NORMAL);
    base_config(fk.port);
    cfg.bus.heartbeat_timeout_ms = 200;
    bus = start_bus();
    assert_true(expect_state(BUS_DOWN, "no heartbeat: not authenticated or dead"));
    bus_get_stats(bus, &st);
    assert_int_equal(st.heartbeat_timeouts, 1);
    assert_int_equal(st.auth_failures, 0);
    bus_free(bus);
}

static void
t_link_watchdog_after_up(void **state)
{
    struct bus *bus;

    fake_start(&fk, FAKE_NORMAL);
    base_config(fk.port);
    cfg.bus.heartbeat_timeout_ms = 300;
    bus = start_bus();
    assert_true(expect_state(BUS_UNCONFIRMED, NULL));
    fake_send(&fk, "admin", "__admin__", "heartbeat", "");
    assert_true(expect_state(BUS_UP, NULL));
    assert_true(expect_state(BUS_DOWN, "no heartbeat within 300ms"));
    assert_int_equal(ob.msgs, 1); /* the heartbeat, passed on */
    bus_free(bus);
}

static void
t_link_protocol_error(void **state)
{
    struct bus_stats st;
    struct bus *bus;

    fake_start(&fk, FAKE_GARBAGE);
    base_config(fk.port);
    bus = start_bus();
    assert_true(expect_state(BUS_DOWN, "protocol error: "));
    want_int = 2;
    assert_true(run_until(accepted_at_least, &fk, 10000));
    assert_true(expect_state(BUS_UNCONFIRMED, NULL));
    bus_get_stats(bus, &st);
    assert_int_equal(st.protocol_errors, 1);
    assert_int_equal(ob.msgs, 0);
    bus_free(bus);
}

static void
t_link_refused(void **state)
{
    struct bus *bus;
    int port;

    /* a port that was just listening and is not any more */
    fake_start(&fk, FAKE_NORMAL);
    port = fk.port;
    fake_stop(&fk);
    base_config(port);
    bus = start_bus();
    assert_true(expect_state(BUS_DOWN, "connect to 127.0.0.1:"));
    assert_true(expect_state(BUS_DOWN, "refused"));
    assert_int_equal(bus_send(bus, &(struct wire_msg){ .type = WIRE_SUBSCRIPTION_REQUEST }),
        BUS_NOT_UP);
    bus_free(bus);
}

static void
t_link_unsafe_credentials(void **state)
{
    struct bus *bus;

    fake_start(&fk, FAKE_NORMAL);
    base_config(fk.port);
    set_str(&cfg.bus.credentials_file,
        write_file("open.ini", "[bus]\nusername = gw\npassword = s3cret\n", 0644));
    bus = start_bus();
    assert_true(expect_state(BUS_DOWN, "credentials: "));
    assert_true(expect_state(BUS_DOWN, "0644"));
    for (int i = 0; i < ob.n; i++)
        assert_null(strstr(ob.reasons[i], "s3cret"));
    bus_free(bus);
}

static void
t_link_token_file_reread(void **state)
{
    struct wire_limits lim;
    struct wire_auth a;
    const char *cause = NULL;
    struct bus *bus;
    char *tok;

    wire_limits_default(&lim);
    fake_start(&fk, FAKE_NORMAL);
    base_config(fk.port);
    cfg.bus.auth = CONFIG_AUTH_TOKEN;
    set_str(&cfg.bus.credentials_file, NULL);
    tok = write_file("token", "first.token.value\n", 0600);
    set_str(&cfg.bus.token_file, tok);
    bus = start_bus();
    want_bytes = 4 + 17 + 4 + 4 + 8;
    assert_true(run_until(rx_has, &fk, 10000));
    assert_int_equal(wire_decode_auth(fk.rx, WIRE_AUTH_TOKEN, &lim, &a, &cause),
        WIRE_DECODED);
    assert_string_equal(a.token, "first.token.value");
    wire_auth_free(&a);

    /* rotate the token, drop the link: the next connect uses the new one */
    write_file("token", "second.token.value\n", 0600);
    bufferevent_free(fk.conn);
    fk.conn = NULL;
    want_int = 2;
    assert_true(run_until(accepted_at_least, &fk, 10000));
    want_bytes = 4 + 18 + 4 + 4 + 8;
    assert_true(run_until(rx_has, &fk, 10000));
    assert_int_equal(wire_decode_auth(fk.rx, WIRE_AUTH_TOKEN, &lim, &a, &cause),
        WIRE_DECODED);
    assert_string_equal(a.token, "second.token.value");
    wire_auth_free(&a);
    bus_free(bus);
}

static void
t_link_backpressure(void **state)
{
    static uint8_t payload[1024];
    struct wire_packet p = { .data = payload, .len = sizeof payload };
    struct wire_msg m;
    struct bus *bus;

    fake_start(&fk, FAKE_NORMAL);
    base_config(fk.port);
    cfg.bus.output_high_water = 8192;
    bus = start_bus();
    assert_true(expect_state(BUS_UNCONFIRMED, NULL));
    assert_false(bus_congested(bus));
    wire_msg_init(&m);
    m.type = WIRE_MULTICAST_DATA;
    m.feed.ptr = "F";
    m.feed.len = 1;
    m.topic.ptr = "T";
    m.topic.len = 1;
    m.packets = &p;
    m.n_packets = 1;
    /* Each send says whether it left the output over the mark. */
    for (int i = 0; i < 32; i++) {
        enum bus_send_result r = bus_send(bus, &m);

        assert_int_equal(r, bus_congested(bus) ? BUS_SENT_HIGH : BUS_SENT);
        assert_int_equal(r, i < 7 ? BUS_SENT : BUS_SENT_HIGH);
    }
    assert_true(bus_congested(bus));
    assert_int_equal(ob.drained, 0);
    assert_true(run_until(drained, NULL, 10000));
    assert_false(bus_congested(bus));
    bus_free(bus);
}

static void
t_link_shutdown_flushes_whole_messages(void **state)
{
    static uint8_t payload[4000];
    struct wire_packet p = { .data = payload, .len = sizeof payload };
    struct wire_limits lim;
    struct wire_msg m, got;
    const char *cause;
    struct bus *bus;
    int n = 0;

    fake_start(&fk, FAKE_NORMAL);
    base_config(fk.port);
    bus = start_bus();
    assert_true(expect_state(BUS_UNCONFIRMED, NULL));
    want_bytes = 1;
    assert_true(run_until(rx_has, &fk, 10000));
    wire_limits_default(&lim);
    /* the credentials arrive first: skip them */
    want_bytes = 4 + 2 + 4 + 6 + 4 + 4 + 8;
    assert_true(run_until(rx_has, &fk, 10000));
    expect_basic_auth(&fk, "gw", "s3cret", "fwd-host");

    wire_msg_init(&m);
    m.type = WIRE_MULTICAST_DATA;
    m.feed.ptr = "F";
    m.feed.len = 1;
    m.topic.ptr = "T";
    m.topic.len = 1;
    m.packets = &p;
    m.n_packets = 1;
    for (int i = 0; i < 500; i++)
        assert_int_equal(bus_send(bus, &m), BUS_SENT);
    bus_shutdown(bus, 5000, on_done, &ob);
    assert_true(run_until(is_done, NULL, 10000));
    want_int = 1;
    /* the fake bus sees every message, then the end of the connection */
    want_bytes = 500 * wire_encoded_size(&m);
    assert_true(run_until(rx_has, &fk, 10000));
    wire_msg_init(&got);
    while (wire_decode(fk.rx, &lim, &got, &cause) == WIRE_DECODED)
        n++;
    assert_int_equal(n, 500);
    assert_int_equal(evbuffer_get_length(fk.rx), 0);
    wire_msg_free(&got);
    bus_free(bus);
}

static bool
fk_closed(void *arg)
{
    return ((struct fake *)arg)->closed > 0;
}

static void
t_link_reconfigure(void **state)
{
    struct config_bus copy;
    char err[256];
    struct bus *bus;

    fake_start(&fk, FAKE_NORMAL);
    fake_start(&fk2, FAKE_NORMAL);
    base_config(fk.port);
    cfg.bus.heartbeat_timeout_ms = 0;
    bus = bus_new(base, NULL, &cfg.bus, &callbacks, &ob);
    assert_non_null(bus);
    assert_int_equal(bus_start(bus), 0);
    assert_true(expect_state(BUS_UNCONFIRMED, NULL));
    want_int = 1;
    assert_true(run_until(accepted_at_least, &fk, 10000));

    /* limits only: same connection */
    copy = cfg.bus;
    copy.limits.max_string = 100;
    copy.output_high_water = 1 << 20;
    assert_int_equal(bus_reconfigure(bus, &copy, err, sizeof err), 0);
    assert_int_equal(bus_state(bus), BUS_UNCONFIRMED);

    /* another port: the old link closes, the new one is used */
    copy.port = (uint16_t)fk2.port;
    assert_int_equal(bus_reconfigure(bus, &copy, err, sizeof err), 0);
    assert_true(expect_state(BUS_DOWN, "configuration changed"));
    assert_true(run_until(fk_closed, &fk, 10000));
    want_int = 1;
    assert_true(run_until(accepted_at_least, &fk2, 10000));
    assert_int_equal(fk.accepted, 1);

    /* a TLS setting that cannot work is refused; the old config stays */
    copy.tls.enabled = true;
    copy.tls.verify = true;
    copy.tls.ca_file = tpath("missing-ca.pem");
    assert_int_equal(bus_reconfigure(bus, &copy, err, sizeof err), -1);
    assert_non_null(strstr(err, "missing-ca.pem"));
    bus_free(bus);
}

static void
t_link_name_resolution(void **state)
{
    struct bus *bus;

    /* "localhost" through the hosts file (our own evdns base); whichever
     * address comes first, the one that listens (127.0.0.1) is reached. */
    if (access("/etc/hosts", R_OK) != 0)
        skip();
    fake_start(&fk, FAKE_NORMAL);
    base_config(fk.port);
    set_str(&cfg.bus.host, "localhost");
    bus = start_bus();
    want_int = 1;
    if (!run_until(accepted_at_least, &fk, 10000)) {
        for (int i = 0; i < ob.n; i++)
            print_message("state %s: %s\n", bus_state_name(ob.states[i]), ob.reasons[i]);
        bus_free(bus);
        skip(); /* no localhost in this system's hosts file */
    }
    assert_true(expect_state(BUS_UNCONFIRMED, NULL));
    bus_free(bus);
}

/* A publish of n bytes of payload to F/T. */
static void
data_msg(struct wire_msg *m, struct wire_packet *p, const void *data, uint32_t n)
{
    wire_msg_init(m);
    m->type = WIRE_MULTICAST_DATA;
    m->feed.ptr = "F";
    m->feed.len = 1;
    m->topic.ptr = "T";
    m->topic.len = 1;
    p->entitlements.n = 0;
    p->data = data;
    p->len = n;
    m->packets = p;
    m->n_packets = 1;
}

static void
sub_msg(struct wire_msg *m, const char *topic)
{
    wire_msg_init(m);
    m->type = WIRE_SUBSCRIPTION_REQUEST;
    m->feed.ptr = "F";
    m->feed.len = 1;
    m->topic.ptr = topic;
    m->topic.len = (uint32_t)strlen(topic);
    m->is_add = true;
}

/* Skip the credentials and the heartbeat subscription in fk.rx. */
static void
skip_login(struct fake *f)
{
    struct wire_limits lim;
    struct wire_msg got;
    const char *cause = NULL;

    want_bytes = 32 + 28;
    assert_true(run_until(rx_has, f, 10000));
    expect_basic_auth(f, "gw", "s3cret", "fwd-host");
    wire_limits_default(&lim);
    wire_msg_init(&got);
    assert_int_equal(wire_decode(f->rx, &lim, &got, &cause), WIRE_DECODED);
    assert_int_equal(got.type, WIRE_SUBSCRIPTION_REQUEST);
    wire_msg_free(&got);
}

/* The types of the messages in f->rx, in order, as a string of digits. */
static void
rx_types(struct fake *f, char *out, size_t len)
{
    struct wire_limits lim;
    struct wire_msg got;
    const char *cause = NULL;
    size_t n = 0;

    wire_limits_default(&lim);
    wire_msg_init(&got);
    while (n + 1 < len && wire_decode(f->rx, &lim, &got, &cause) == WIRE_DECODED)
        out[n++] = (char)('0' + got.type);
    out[n] = '\0';
    wire_msg_free(&got);
}

/* A link that confirms its login (here the watchdog) takes no data while
 * unconfirmed: the router keeps it (router-uplink.c) and hands it over
 * encoded once the link is up. Requests go at once. */
static void
t_link_takes_data_only_when_confirmed(void **state)
{
    struct wire_packet p;
    struct wire_msg m, sub;
    struct evbuffer *q = evbuffer_new();
    struct bus_stats st;
    char types[16];
    struct bus *bus;

    fake_start(&fk, FAKE_NORMAL);
    base_config(fk.port);
    cfg.bus.heartbeat_timeout_ms = 5000;
    bus = start_bus();
    assert_true(expect_state(BUS_UNCONFIRMED, NULL));
    skip_login(&fk);

    data_msg(&m, &p, "held", 4);
    sub_msg(&sub, "T");
    assert_false(bus_data_ready(bus));
    assert_int_equal(bus_send(bus, &m), BUS_NOT_UP);
    assert_int_equal(bus_send_encoded(bus, q, 0), BUS_NOT_UP);
    assert_int_equal(bus_send(bus, &sub), BUS_SENT);
    want_bytes = wire_encoded_size(&sub);
    assert_true(run_until(rx_has, &fk, 10000));
    rx_types(&fk, types, sizeof types);
    assert_string_equal(types, "5");

    /* confirmed by the first message: the queue goes whole */
    fake_send(&fk, "admin", "__admin__", "heartbeat", "");
    assert_true(expect_state(BUS_UP, NULL));
    assert_true(bus_data_ready(bus));
    assert_int_equal(wire_encode(q, &m), 0);
    assert_int_equal(wire_encode(q, &m), 0);
    assert_int_equal(bus_send_encoded(bus, q, 2), BUS_SENT);
    assert_int_equal(evbuffer_get_length(q), 0);
    want_bytes = 2 * wire_encoded_size(&m);
    assert_true(run_until(rx_has, &fk, 10000));
    rx_types(&fk, types, sizeof types);
    assert_string_equal(types, "11");
    bus_get_stats(bus, &st);
    assert_int_equal(st.bytes_lost, 0);
    bus_free(bus);
    evbuffer_free(q);
}

static bool
saw_down(void *arg)
{
    return bus_state(arg) == BUS_DOWN;
}

static void
t_link_lost_output_counted(void **state)
{
    static uint8_t payload[1 << 20];
    struct wire_packet p;
    struct wire_msg m;
    struct bus_stats st;
    struct bus *bus;

    fake_start(&fk, FAKE_DEAF);
    base_config(fk.port);
    bus = start_bus();
    assert_true(expect_state(BUS_UNCONFIRMED, NULL));
    /* more than the kernel's buffers take from a peer that never reads */
    data_msg(&m, &p, payload, sizeof payload);
    for (int i = 0; i < 48; i++) /* sent, past the high-water mark soon */
        assert_true(bus_send(bus, &m) >= BUS_SENT);
    for (int i = 0; i < 20; i++)
        event_base_loop(base, EVLOOP_NONBLOCK);
    bufferevent_free(fk.conn); /* unread data: the kernel resets */
    fk.conn = NULL;
    assert_true(run_until(saw_down, bus, 10000));
    bus_get_stats(bus, &st);
    assert_true(st.bytes_lost > 0);
    assert_true(st.bytes_lost <= 48 * wire_encoded_size(&m));
    bus_free(bus);
}

/* Data sends of one loop turn are batched (bus_batch_flush): they count
 * as queued at once, requests after them stay after them, and a
 * reconfigure that closes the link drains them. */
static void
t_link_batch_order_and_drain(void **state)
{
    struct wire_packet p;
    struct wire_msg m, sub;
    struct bus_stats st;
    struct config_bus copy;
    char types[16], err[256];
    struct bus *bus;
    size_t dsize, ssize;

    fake_start(&fk, FAKE_NORMAL);
    base_config(fk.port);
    cfg.bus.heartbeat_timeout_ms = 5000;
    bus = start_bus();
    assert_true(expect_state(BUS_UNCONFIRMED, NULL));
    skip_login(&fk);
    fake_send(&fk, "admin", "__admin__", "heartbeat", "");
    assert_true(expect_state(BUS_UP, NULL));
    assert_int_equal(evbuffer_get_length(fk.rx), 0);

    data_msg(&m, &p, "batched", 7);
    sub_msg(&sub, "T");
    dsize = wire_encoded_size(&m);
    ssize = wire_encoded_size(&sub);
    assert_int_equal(bus_send(bus, &m), BUS_SENT);
    assert_int_equal(bus_send(bus, &m), BUS_SENT);
    bus_get_stats(bus, &st);
    assert_int_equal(st.output_queued, 2 * dsize); /* before the loop runs */
    assert_int_equal(bus_send(bus, &sub), BUS_SENT);
    assert_int_equal(bus_send(bus, &m), BUS_SENT);
    bus_get_stats(bus, &st);
    assert_int_equal(st.output_queued, 3 * dsize + ssize);
    want_bytes = 3 * dsize + ssize;
    assert_true(run_until(rx_has, &fk, 10000));
    rx_types(&fk, types, sizeof types);
    assert_string_equal(types, "1151");

    /* a new address: the old link drains what was batched, then closes */
    assert_int_equal(bus_send(bus, &m), BUS_SENT);
    assert_int_equal(bus_send(bus, &m), BUS_SENT);
    copy = cfg.bus;
    copy.port = (uint16_t)(copy.port == 1 ? 2 : 1); /* nothing listens there */
    assert_int_equal(bus_reconfigure(bus, &copy, err, sizeof err), 0);
    want_bytes = 2 * dsize;
    assert_true(run_until(rx_has, &fk, 10000));
    rx_types(&fk, types, sizeof types);
    assert_string_equal(types, "11");
    bus_get_stats(bus, &st);
    assert_int_equal(st.bytes_lost, 0);
    bus_free(bus);
}

static void
write_all(int fd, const void *data, size_t n)
{
    assert_int_equal(write(fd, data, n), (ssize_t)n);
}

/* A link that fails with data batched counts exactly that data as lost. */
static void
t_link_batch_lost_exact(void **state)
{
    static const uint8_t garbage[] = { 0xee, 0x13, 0x37, 0x00 };
    struct wire_packet p;
    struct wire_msg m;
    struct bus_stats st;
    struct bus *bus;

    fake_start(&fk, FAKE_NORMAL);
    base_config(fk.port);
    bus = start_bus();
    assert_true(expect_state(BUS_UNCONFIRMED, NULL));
    want_bytes = 4 + 2 + 4 + 6 + 4 + 4 + 8;
    assert_true(run_until(rx_has, &fk, 10000));
    /* the protocol error is waiting in the link's socket before the data
     * is sent, so the link fails before it writes any of it */
    write_all(bufferevent_getfd(fk.conn), garbage, sizeof garbage);
    data_msg(&m, &p, "lost", 4);
    for (int i = 0; i < 3; i++)
        assert_int_equal(bus_send(bus, &m), BUS_SENT);
    assert_true(run_until(saw_down, bus, 10000));
    bus_get_stats(bus, &st);
    assert_int_equal(st.bytes_lost, 3 * wire_encoded_size(&m));
    bus_free(bus);
}

static void
t_link_ipv6(void **state)
{
    struct bus *bus;

    if (!fake_listen(&fk, FAKE_NORMAL, AF_INET6))
        skip(); /* no IPv6 loopback here */
    base_config(fk.port);
    set_str(&cfg.bus.host, "::1");
    bus = start_bus();
    assert_true(expect_state(BUS_UNCONFIRMED, NULL));
    want_bytes = 4 + 2 + 4 + 6 + 4 + 4 + 8;
    assert_true(run_until(rx_has, &fk, 10000));
    expect_basic_auth(&fk, "gw", "s3cret", "fwd-host");
    bus_free(bus);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(t_backoff_first_is_min),
        cmocka_unit_test(t_backoff_bounds_and_cap),
        cmocka_unit_test(t_backoff_growth),
        cmocka_unit_test(t_backoff_degenerate),
        cmocka_unit_test(t_backoff_jitter_spreads),
        cmocka_unit_test(t_next_attempt),
        cmocka_unit_test(t_probable_auth_failure),
        cmocka_unit_test(t_state_names),
        cmocka_unit_test_setup_teardown(t_link_up_and_messages, setup, teardown),
        cmocka_unit_test_setup_teardown(t_link_auth_failure, setup, teardown),
        cmocka_unit_test_setup_teardown(t_link_watchdog_silent, setup, teardown),
        cmocka_unit_test_setup_teardown(t_link_watchdog_after_up, setup, teardown),
        cmocka_unit_test_setup_teardown(t_link_protocol_error, setup, teardown),
        cmocka_unit_test_setup_teardown(t_link_batch_order_and_drain, setup, teardown),
        cmocka_unit_test_setup_teardown(t_link_batch_lost_exact, setup, teardown),
        cmocka_unit_test_setup_teardown(t_link_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(t_link_unsafe_credentials, setup, teardown),
        cmocka_unit_test_setup_teardown(t_link_token_file_reread, setup, teardown),
        cmocka_unit_test_setup_teardown(t_link_backpressure, setup, teardown),
        cmocka_unit_test_setup_teardown(t_link_shutdown_flushes_whole_messages, setup,
            teardown),
        cmocka_unit_test_setup_teardown(t_link_reconfigure, setup, teardown),
        cmocka_unit_test_setup_teardown(t_link_name_resolution, setup, teardown),
        cmocka_unit_test_setup_teardown(t_link_ipv6, setup, teardown),
        cmocka_unit_test_setup_teardown(t_link_takes_data_only_when_confirmed, setup,
            teardown),
        cmocka_unit_test_setup_teardown(t_link_lost_output_counted, setup, teardown),
    };

    log_init("test_bus", LOG_DEST_STDERR, LOG_DEBUG);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
