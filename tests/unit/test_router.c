/*
 * Router tables, with fake sessions reached through the router's port (as
 * the real ones are) and a fake bus link defined here (the linker takes it
 * instead of bus.o from the library): what goes upstream, which session
 * gets which event, the image cache, the bus-down queue, authorization
 * bookkeeping, back-pressure.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include <event2/buffer.h>
#include <event2/event.h>

#include "bus.h"
#include "config.h"
#include "lineproto.h"
#include "router.h"
#include "router-int.h"
#include "wire.h"

/* ---- fake session, reached through the router's port ---- */

struct session {
    struct evbuffer *out;
    struct router *r;
    struct router_client *rc;
    bool verbose;
    bool closing;
    bool paused;
    bool attached;
    enum lp_error close_err;
    size_t max_output;
    struct router_conn_stats st;
};

static struct evbuffer *
fake_output(struct session *s)
{
    return s->out;
}

static void
fake_close(struct session *s, enum lp_error e, const char *msg)
{
    if (s->closing)
        return;
    s->closing = true;
    s->close_err = e;
    if (e != LP_ERR_NONE)
        lp_format_err(s->out, e, "%s", msg);
}

static bool
fake_flush(struct session *s, unsigned events)
{
    if (s->closing)
        return false;
    s->st.events_out += events;
    if (evbuffer_get_length(s->out) > s->max_output) {
        router_count_slow_consumer(s->r);
        fake_close(s, LP_ERR_SLOW_CONSUMER, "slow");
        return false;
    }
    return true;
}

static void
fake_reply(struct session *s, enum lp_error e, const char *msg)
{
    if (s->closing || (e == LP_ERR_NONE && !s->verbose))
        return;
    if (e == LP_ERR_NONE)
        lp_format_ok(s->out);
    else
        lp_format_err(s->out, e, "%s", msg);
    fake_flush(s, 0);
}

static void
fake_pause(struct session *s, bool on)
{
    s->paused = on;
}

static bool
fake_closing(const struct session *s)
{
    return s->closing;
}

static void
fake_stats(const struct session *s, struct router_conn_stats *st)
{
    *st = s->st;
    st->queued = evbuffer_get_length(s->out);
}

static void
fake_memory(struct router_memory_stats *st)
{
    memset(st, 0, sizeof *st);
}

static const struct router_port fake_port = {
    .output = fake_output,
    .flush = fake_flush,
    .reply = fake_reply,
    .pause = fake_pause,
    .close = fake_close,
    .closing = fake_closing,
    .stats = fake_stats,
    .memory = fake_memory,
};

/* The session goes away (its client disconnected). */
static void
fake_free(struct session *s)
{
    if (s->attached) {
        s->attached = false;
        router_session_detach(s->r, s->rc);
    }
}

/* ---- fake bus ---- */

struct sent {
    enum wire_type type;
    char feed[64], topic[64];
    bool is_add, is_image, auth_required;
    uint32_t n_packets;
    char data[64];
    uint32_t n_ents;
};

#define FB_SENT_MAX 4096

static struct {
    enum bus_state state;
    bool congested;
    bool holds_heartbeat; /* the link's watchdog holds __admin__/heartbeat */
    bool confirms;        /* the link confirms its login: data waits for up */
    struct sent sent[FB_SENT_MAX];
    unsigned n_sent;
} fb;

static struct bus *const FAKE_BUS = (struct bus *)&fb;

const char *
bus_state_name(enum bus_state s)
{
    static const char *const names[] = { "down", "connecting", "unconfirmed", "up" };
    return names[s];
}

bool
bus_data_ready(const struct bus *bus)
{
    return fb.state == BUS_UP || (fb.state == BUS_UNCONFIRMED && !fb.confirms);
}

static void
record(const struct wire_msg *m)
{
    struct sent *x;

    assert_true(fb.n_sent < FB_SENT_MAX);
    x = &fb.sent[fb.n_sent++];
    memset(x, 0, sizeof *x);
    x->type = m->type;
    snprintf(x->feed, sizeof x->feed, "%.*s", (int)m->feed.len, m->feed.ptr);
    snprintf(x->topic, sizeof x->topic, "%.*s", (int)m->topic.len, m->topic.ptr);
    x->is_add = m->is_add;
    x->is_image = m->is_image;
    x->auth_required = m->auth_required;
    x->n_packets = m->n_packets;
    x->n_ents = m->entitlements.n;
    if (m->n_packets > 0 && m->packets[0].len > 0)
        snprintf(x->data, sizeof x->data, "%.*s", (int)m->packets[0].len,
            (const char *)m->packets[0].data);
}

static bool
is_data(const struct wire_msg *m)
{
    return m->type == WIRE_MULTICAST_DATA || m->type == WIRE_UNICAST_DATA ||
        m->type == WIRE_AUTHORIZATION_RESPONSE;
}

enum bus_send_result
bus_send(struct bus *bus, const struct wire_msg *m)
{
    assert_ptr_equal(bus, FAKE_BUS);
    if (fb.state != BUS_UP && fb.state != BUS_UNCONFIRMED)
        return BUS_NOT_UP;
    if (is_data(m) && !bus_data_ready(bus))
        return BUS_NOT_UP;
    record(m);
    return fb.congested ? BUS_SENT_HIGH : BUS_SENT;
}

/* The router's queue, handed over whole: every message in it is data. */
enum bus_send_result
bus_send_encoded(struct bus *bus, struct evbuffer *data, uint64_t n)
{
    struct wire_limits lim = { UINT32_MAX, UINT32_MAX, UINT32_MAX, UINT32_MAX, UINT32_MAX };
    struct wire_msg m;
    const char *cause;

    assert_ptr_equal(bus, FAKE_BUS);
    if (!bus_data_ready(bus))
        return BUS_NOT_UP;
    wire_msg_init(&m);
    m.version = 3;
    for (uint64_t i = 0; i < n; i++) {
        assert_int_equal(wire_decode(data, &lim, &m, &cause), WIRE_DECODED);
        assert_true(is_data(&m));
        record(&m);
    }
    assert_int_equal(evbuffer_get_length(data), 0);
    wire_msg_free(&m);
    return BUS_SENT;
}

static bool
str_is(const struct wire_str *s, const char *lit)
{
    return s->len == strlen(lit) && memcmp(s->ptr, lit, s->len) == 0;
}

bool
bus_holds(const struct bus *bus, const struct wire_str *feed, const struct wire_str *topic)
{
    return fb.holds_heartbeat && str_is(feed, "__admin__") && str_is(topic, "heartbeat");
}

bool
bus_congested(const struct bus *bus)
{
    return fb.congested;
}

void
bus_get_stats(const struct bus *bus, struct bus_stats *st)
{
    memset(st, 0, sizeof *st);
    st->state = fb.state;
    snprintf(st->last_error, sizeof st->last_error, "fake\nerror");
}

/* ---- fixture ---- */

#define NSESS 6

struct fx {
    struct config cfg;
    struct event_base *base; /* NULL unless a test needs the event loop */
    struct router *r;
    struct session s[NSESS];
    struct lp_cmd cmd;
};

static struct fx *F;

static void
fx_start(struct fx *f)
{
    memset(&fb, 0, sizeof fb);
    fb.state = BUS_UP;
    F = f;
    f->r = router_new(f->base, &f->cfg);
    assert_non_null(f->r);
    router_set_bus(f->r, FAKE_BUS);
    router_bus_state(f->r, BUS_UP, NULL);
    for (int i = 0; i < NSESS; i++) {
        struct session *s = &f->s[i];

        memset(s, 0, sizeof *s);
        s->out = evbuffer_new();
        s->r = f->r;
        s->verbose = true;
        s->max_output = f->cfg.listen.max_output;
        s->rc = router_session_attach(f->r, s, &fake_port, (uint64_t)i + 1,
            &(struct peer_cred){ .pid = 100 + i });
        s->attached = true;
        /* The router greets it. */
        assert_int_equal(evbuffer_search(s->out, "HELLO busgate ", 14, NULL).pos, 0);
        evbuffer_drain(s->out, evbuffer_get_length(s->out));
    }
    lp_cmd_init(&f->cmd);
}

static int
setup(void **state)
{
    struct fx *f = calloc(1, sizeof *f);

    config_defaults(&f->cfg);
    f->cfg.router.image_cache_bytes = 4096;
    fx_start(f);
    *state = f;
    return 0;
}

static int
teardown(void **state)
{
    struct fx *f = *state;

    router_free(f->r);
    for (int i = 0; i < NSESS; i++) {
        evbuffer_free(f->s[i].out);
    }
    lp_cmd_free(&f->cmd);
    config_free(&f->cfg);
    if (f->base != NULL)
        event_base_free(f->base);
    free(f);
    return 0;
}

/* Start again with the config as the test changed it. */
static void
fx_restart(struct fx *f)
{
    router_free(f->r);
    for (int i = 0; i < NSESS; i++)
        evbuffer_free(f->s[i].out);
    lp_cmd_free(&f->cmd);
    fx_start(f);
}

/* Parse and run a command line (payload appended for PUB/SEND). */
static void
run(int who, const char *line, const char *payload)
{
    struct lp_limits lim;
    enum lp_error e;
    char msg[256];

    lim = (struct lp_limits){ F->cfg.bus.limits.max_string, F->cfg.listen.max_payload,
        F->cfg.listen.max_packets, F->cfg.bus.limits.max_entitlements,
        (uint32_t)F->cfg.bus.protocol };
    assert_int_equal(lp_parse_command(line, strlen(line), &lim, &F->cmd, &e, msg,
                         sizeof msg),
        0);
    if (payload != NULL)
        lp_cmd_attach_payload(&F->cmd, (const uint8_t *)payload);
    router_command(F->r, F->s[who].rc, &F->cmd);
}

/* Everything queued to a session, as a string; drained. */
static char *
out(int who)
{
    struct evbuffer *b = F->s[who].out;
    size_t n = evbuffer_get_length(b);
    char *p = malloc(n + 1);

    evbuffer_remove(b, p, n);
    p[n] = '\0';
    return p;
}

static void
expect_out(int who, const char *want)
{
    char *got = out(who);

    assert_string_equal(got, want);
    free(got);
}

/* Run STATS as session who; its reply must contain each string given
 * (NULL-terminated list). */
static void
expect_stats(int who, ...)
{
    const char *want;
    va_list ap;
    char *o;

    run(who, "STATS", NULL);
    o = out(who);
    va_start(ap, who);
    while ((want = va_arg(ap, const char *)) != NULL)
        if (strstr(o, want) == NULL)
            fail_msg("STATS lacks %s in:\n%s", want, o);
    va_end(ap);
    free(o);
}

static unsigned
count_sent(enum wire_type type, const char *feed, const char *topic, bool add)
{
    unsigned n = 0;

    for (unsigned i = 0; i < fb.n_sent; i++)
        if (fb.sent[i].type == type && strcmp(fb.sent[i].feed, feed) == 0 &&
            (topic == NULL || strcmp(fb.sent[i].topic, topic) == 0) &&
            fb.sent[i].is_add == add)
            n++;
    return n;
}

/* A ForwardedMulticastData/UnicastData from the bus, within a read. */
static void
bus_data_in_read(const char *feed, const char *topic, const char *user, bool image,
    const char *data, bool unicast)
{
    struct wire_msg m;
    struct wire_packet pk = { { NULL, 0 }, (const uint8_t *)data,
        data ? (uint32_t)strlen(data) : 0 };

    memset(&m, 0, sizeof m);
    m.type = unicast ? WIRE_FORWARDED_UNICAST : WIRE_FORWARDED_MULTICAST;
    m.user.ptr = user;
    m.user.len = (uint32_t)strlen(user);
    m.host.ptr = *user ? "h1" : "";
    m.host.len = *user ? 2 : 0;
    m.feed.ptr = feed;
    m.feed.len = (uint32_t)strlen(feed);
    m.topic.ptr = topic;
    m.topic.len = (uint32_t)strlen(topic);
    m.is_image = image;
    if (data != NULL) {
        m.packets = &pk;
        m.n_packets = 1;
    }
    router_bus_message(F->r, &m);
}

/* The same, as the only message of one bus read. */
static void
bus_data(const char *feed, const char *topic, const char *user, bool image,
    const char *data, bool unicast)
{
    bus_data_in_read(feed, topic, user, image, data, unicast);
    router_bus_batch_end(F->r);
}

static const uint8_t CID[16] = { 0x33, 0x22, 0x11, 0x00, 0x55, 0x44, 0x77, 0x66, 0x88, 0x99,
    0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff };
#define CID_TEXT "00112233-4455-6677-8899-aabbccddeeff"

static void
bus_fwd_sub(const char *feed, const char *topic, bool add)
{
    struct wire_msg m;

    memset(&m, 0, sizeof m);
    m.type = WIRE_FORWARDED_SUBSCRIPTION;
    m.user = (struct wire_str){ "bob", 3 };
    m.host = (struct wire_str){ "hb", 2 };
    memcpy(m.client_id, CID, 16);
    m.feed = (struct wire_str){ feed, (uint32_t)strlen(feed) };
    m.topic = (struct wire_str){ topic, (uint32_t)strlen(topic) };
    m.is_add = add;
    router_bus_message(F->r, &m);
}

static void
bus_authreq(const char *feed, const char *topic)
{
    struct wire_msg m;

    memset(&m, 0, sizeof m);
    m.type = WIRE_AUTHORIZATION_REQUEST;
    m.user = (struct wire_str){ "bob", 3 };
    m.host = (struct wire_str){ "hb", 2 };
    memcpy(m.client_id, CID, 16);
    m.feed = (struct wire_str){ feed, (uint32_t)strlen(feed) };
    m.topic = (struct wire_str){ topic, (uint32_t)strlen(topic) };
    router_bus_message(F->r, &m);
}

/* ---- tests ---- */

static void
test_one_upstream_subscription(void **state)
{
    run(0, "SUB PRICES VOD.L", NULL);
    run(1, "SUB PRICES VOD.L", NULL);
    run(2, "SUB PRICES VOD.L", NULL);
    assert_int_equal(count_sent(WIRE_SUBSCRIPTION_REQUEST, "PRICES", "VOD.L", true), 1);
    expect_out(0, "+OK\n");
    run(0, "SUB PRICES VOD.L", NULL);
    expect_out(0, "-ERR already-subscribed already subscribed to this topic\n");
    run(0, "UNSUB PRICES VOD.L", NULL);
    run(1, "UNSUB PRICES VOD.L", NULL);
    assert_int_equal(count_sent(WIRE_SUBSCRIPTION_REQUEST, "PRICES", "VOD.L", false), 0);
    run(1, "UNSUB PRICES VOD.L", NULL);
    {
        char *o = out(1);
        assert_non_null(strstr(o, "-ERR not-subscribed"));
        free(o);
    }
    /* The last one leaves by disconnecting. */
    fake_free(&F->s[2]);
    assert_int_equal(count_sent(WIRE_SUBSCRIPTION_REQUEST, "PRICES", "VOD.L", false), 1);
    assert_int_equal(fb.n_sent, 2);
}

static void
test_fanout_and_unwanted(void **state)
{
    char *o;

    run(0, "SUB PRICES VOD.L", NULL);
    run(1, "SUB PRICES VOD.L", NULL);
    run(2, "SUB PRICES BT.L", NULL);
    for (int i = 0; i < 3; i++)
        free(out(i));
    bus_data("PRICES", "VOD.L", "pub", false, "abc", false);
    expect_out(0, "DATA PRICES VOD.L pub h1 delta multicast 3\nabc\n");
    expect_out(1, "DATA PRICES VOD.L pub h1 delta multicast 3\nabc\n");
    expect_out(2, "");
    bus_data("PRICES", "GONE", "pub", false, "x", false);
    o = out(3);
    assert_string_equal(o, "");
    free(o);
    expect_stats(3, "STAT data_in 2\n", "STAT data_delivered 2\n",
        "STAT data_dropped_unwanted 1\n", "STAT topics 2\n", "STAT subscriptions 3\n",
        "STAT bus_last_error fake?error\n", "STAT session 1 pid=100 ",
        "STAT limit.max_line ", "\nEND\n", NULL);
}

/* DATA finds its topic as the last one routed or through r->recent, a
 * cache by topic name alone: one name in two feeds shares a slot, and a
 * topic freed while it is the last or in its slot must leave both (ASan
 * catches a stale one). */
static void
test_recent_topics(void **state)
{
    run(0, "SUB PRICES VOD.L", NULL);
    run(1, "SUB PRICES VOD.X", NULL);
    run(2, "SUB PRICEX VOD.L", NULL);
    for (int i = 0; i < 3; i++)
        free(out(i));
    bus_data_in_read("PRICES", "VOD.L", "pub", false, "a", false);
    bus_data_in_read("PRICES", "VOD.X", "pub", false, "b", false);
    bus_data_in_read("PRICEX", "VOD.L", "pub", false, "c", false);
    bus_data_in_read("PRICES", "VOD.L", "pub", false, "d", false);
    router_bus_batch_end(F->r);
    expect_out(0,
        "DATA PRICES VOD.L pub h1 delta multicast 1\na\n"
        "DATA PRICES VOD.L pub h1 delta multicast 1\nd\n");
    expect_out(1, "DATA PRICES VOD.X pub h1 delta multicast 1\nb\n");
    expect_out(2, "DATA PRICEX VOD.L pub h1 delta multicast 1\nc\n");
    /* Freed while in its slot: the data is unwanted, then wanted again. */
    run(0, "UNSUB PRICES VOD.L", NULL);
    free(out(0));
    bus_data("PRICES", "VOD.L", "pub", false, "e", false);
    expect_out(0, "");
    run(0, "SUB PRICES VOD.L", NULL);
    free(out(0));
    bus_data("PRICES", "VOD.L", "pub", false, "f", false);
    expect_out(0, "DATA PRICES VOD.L pub h1 delta multicast 1\nf\n");
}

/* Many topics, more than the cache's first size: it grows (emptied) as
 * they are added, and every event still reaches only its own topic's
 * subscriber, in order, with topics freed and added between reads. */
static void
test_recent_topics_many(void **state)
{
    enum { N = 3000 };
    char line[64], topic[16], want[96];
    struct evbuffer *got[2];

    for (int i = 0; i < N; i++) {
        snprintf(line, sizeof line, "SUB F%d T%d", i % 2, i);
        run(i % 2, line, NULL);
        fb.n_sent = 0; /* (what goes upstream is not this test's) */
    }
    for (int round = 0; round < 3; round++) {
        free(out(0));
        free(out(1));
        /* Round 1 goes without every third topic, round 2 has it back. */
        for (int i = 0; i < N && round > 0; i += 3) {
            snprintf(line, sizeof line, "%s F%d T%d", round == 1 ? "UNSUB" : "SUB", i % 2,
                i);
            run(i % 2, line, NULL);
            fb.n_sent = 0;
        }
        free(out(0));
        free(out(1));
        for (int pass = 0; pass < 2; pass++)
            for (int i = 0; i < N; i++) {
                snprintf(line, sizeof line, "F%d", i % 2);
                snprintf(topic, sizeof topic, "T%d", i);
                bus_data_in_read(line, topic, "pub", false, pass ? "y" : "x", false);
                /* The other feed's topic of that name has no subscriber. */
                bus_data_in_read(i % 2 ? "F0" : "F1", topic, "pub", false, "z", false);
            }
        router_bus_batch_end(F->r);
        got[0] = evbuffer_new();
        got[1] = evbuffer_new();
        for (int pass = 0; pass < 2; pass++)
            for (int i = 0; i < N; i++) {
                if (round == 1 && i % 3 == 0)
                    continue;
                snprintf(want, sizeof want, "DATA F%d T%d pub h1 delta multicast 1\n%s\n",
                    i % 2, i, pass ? "y" : "x");
                evbuffer_add(got[i % 2], want, strlen(want));
            }
        for (int k = 0; k < 2; k++) {
            char *o = out(k);
            size_t n = evbuffer_get_length(got[k]);

            assert_int_equal(strlen(o), n);
            assert_memory_equal(o, evbuffer_pullup(got[k], -1), n);
            free(o);
            evbuffer_free(got[k]);
        }
    }
}

/* The link's heartbeat subscription is one holder of the topic: a local
 * subscriber gets the heartbeats, and neither its SUB nor its UNSUB (nor a
 * replay) reaches the bus; unheld, the topic is an ordinary one. */
static void
test_link_holds_heartbeat(void **state)
{
    fb.holds_heartbeat = true;
    bus_data("__admin__", "heartbeat", "admin", true, "", false);
    run(0, "SUB __admin__ heartbeat", NULL);
    expect_out(0, "+OK\n");
    bus_data("__admin__", "heartbeat", "admin", true, "", false);
    expect_out(0, "DATA __admin__ heartbeat admin h1 image multicast 0\n\n");
    router_bus_state(F->r, BUS_DOWN, "gone");
    router_bus_state(F->r, BUS_UP, NULL);
    free(out(0));
    run(0, "UNSUB __admin__ heartbeat", NULL);
    expect_out(0, "+OK\n");
    assert_int_equal(fb.n_sent, 0);
    expect_stats(1, "STAT data_in 1\n", "STAT data_dropped_unwanted 0\n", NULL);

    fb.holds_heartbeat = false;
    run(0, "SUB __admin__ heartbeat", NULL);
    run(0, "UNSUB __admin__ heartbeat", NULL);
    assert_int_equal(fb.n_sent, 2);
    assert_true(fb.sent[0].is_add);
    assert_false(fb.sent[1].is_add);
}

static void
test_large_event_shared(void **state)
{
    size_t n = 100000;
    char *big = malloc(n + 1), *o;

    memset(big, 'z', n);
    big[n] = '\0';
    run(0, "SUB F T", NULL);
    run(1, "SUB F T", NULL);
    free(out(0));
    free(out(1));
    bus_data("F", "T", "u", false, big, false);
    for (int i = 0; i < 2; i++) {
        o = out(i);
        assert_int_equal(strlen(o),
            strlen("DATA F T u h1 delta multicast 100000\n") + n + 1);
        assert_int_equal(o[strlen(o) - 2], 'z');
        free(o);
    }
    free(big);
}

static void
test_image_cache(void **state)
{
    run(0, "SUB F T", NULL);
    free(out(0));
    /* The selectfeed image comes to the gateway by unicast. */
    bus_data("F", "T", "pub", true, "IMG", true);
    bus_data("F", "T", "pub", false, "d1", false);
    bus_data("F", "T", "pub", false, "d2", false);
    free(out(0));
    run(1, "SUB F T", NULL);
    expect_out(1,
        "+OK\n"
        "DATA F T pub h1 image unicast 3\nIMG\n"
        "DATA F T pub h1 delta multicast 2\nd1\n"
        "DATA F T pub h1 delta multicast 2\nd2\n");
    /* A new image replaces the history. */
    bus_data("F", "T", "pub", true, "IMG2", false);
    free(out(0));
    free(out(1));
    run(2, "SUB F T", NULL);
    expect_out(2, "+OK\nDATA F T pub h1 image multicast 4\nIMG2\n");
    /* Stale: delivered to all, and the cache is gone. */
    bus_data("F", "T", "", true, NULL, false);
    expect_out(0, "DATA F T \"\" \"\" image multicast\n");
    run(3, "SUB F T", NULL);
    expect_out(3, "+OK\n");
    /* Deltas without an image are not cached. */
    bus_data("F", "T", "pub", false, "d3", false);
    run(4, "SUB F T", NULL);
    expect_out(4, "+OK\n");
}

static void
test_image_cache_overflow(void **state)
{
    char big[3000];

    memset(big, 'q', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    run(0, "SUB F T", NULL);
    bus_data("F", "T", "pub", true, "IMG", false);
    bus_data("F", "T", "pub", false, big, false); /* fits in 4096 */
    bus_data("F", "T", "pub", false, big, false); /* does not: cache dropped */
    bus_data("F", "T", "pub", false, "small", false);
    run(1, "SUB F T", NULL);
    expect_out(1, "+OK\n");
    bus_data("F", "T", "pub", true, "IMG", false);
    free(out(1));
    run(2, "SUB F T", NULL);
    expect_out(2, "+OK\nDATA F T pub h1 image multicast 3\nIMG\n");
}

static void
test_bus_down_and_replay(void **state)
{
    char *o;

    run(0, "SUB F T", NULL);
    run(0, "NOTIFY N", NULL);
    free(out(0));
    router_bus_state(F->r, BUS_DOWN, "connection refused");
    fb.state = BUS_DOWN;
    expect_out(0, "BUS down connection refused\n");
    for (int i = 1; i < NSESS; i++)
        expect_out(i, "BUS down connection refused\n");
    /* Connecting is still "down" to the sessions: no event. */
    router_bus_state(F->r, BUS_CONNECTING, NULL);
    expect_out(1, "");
    run(1, "SUB F T2", NULL);
    run(1, "UNSUB F T", NULL); /* not subscribed */
    run(0, "UNSUB F T", NULL); /* recorded only */
    run(2, "PUB F T delta 1", "x");
    o = out(2);
    assert_non_null(strstr(o, "-ERR bus-down"));
    free(o);
    fb.n_sent = 0;
    fb.state = BUS_UNCONFIRMED;
    router_bus_state(F->r, BUS_UNCONFIRMED, NULL);
    assert_int_equal(fb.n_sent, 2);
    assert_int_equal(count_sent(WIRE_SUBSCRIPTION_REQUEST, "F", "T2", true), 1);
    assert_int_equal(count_sent(WIRE_NOTIFICATION_REQUEST, "N", NULL, true), 1);
    expect_out(3, "BUS unconfirmed\n");
    fb.state = BUS_UP;
    router_bus_state(F->r, BUS_UP, NULL);
    expect_out(3, "BUS up\n");
    assert_int_equal(fb.n_sent, 2);
    assert_string_equal(router_bus_state_name(F->r), "up");
}

static void
test_busdown_queue(void **state)
{
    struct fx *f = *state;
    char *o;

    router_free(f->r);
    for (int i = 0; i < NSESS; i++)
        evbuffer_free(f->s[i].out);
    lp_cmd_free(&f->cmd);
    f->cfg.router.busdown_queue = 2;
    fx_start(f);
    fb.state = BUS_DOWN;
    router_bus_state(f->r, BUS_DOWN, "test");
    free(out(0));
    run(0, "PUB F T delta 2", "p1");
    run(0, "SEND " CID_TEXT " F T image 2", "p2");
    run(0, "PUB F T delta 2", "p3");
    o = out(0);
    assert_non_null(strstr(o, "+OK\n+OK\n-ERR bus-down"));
    assert_non_null(strstr(o, "queue is full"));
    free(o);
    fb.n_sent = 0;
    fb.state = BUS_UNCONFIRMED;
    router_bus_state(f->r, BUS_UNCONFIRMED, NULL);
    assert_int_equal(fb.n_sent, 2);
    assert_int_equal(fb.sent[0].type, WIRE_MULTICAST_DATA);
    assert_string_equal(fb.sent[0].data, "p1");
    assert_int_equal(fb.sent[1].type, WIRE_UNICAST_DATA);
    assert_string_equal(fb.sent[1].data, "p2");
    assert_true(fb.sent[1].is_image);
    run(0, "PUB F T delta 2", "p4");
    assert_string_equal(fb.sent[2].data, "p4");
}

/* A link that confirms its login takes no data while unconfirmed: the
 * router holds publishes, sends and answers (even with the bus-down queue
 * off) and hands them over, in order, once it is up. */
static void
test_unconfirmed_data_held(void **state)
{
    fb.n_sent = 0;
    fb.confirms = true;
    fb.state = BUS_UNCONFIRMED;
    router_bus_state(F->r, BUS_UNCONFIRMED, NULL);
    free(out(0));
    run(0, "SUB F T", NULL);
    run(0, "PUB F T delta 2", "h1");
    run(0, "SEND " CID_TEXT " F T image 2", "h2");
    expect_out(0, "+OK\n+OK\n+OK\n");
    assert_int_equal(fb.n_sent, 1); /* the subscription went at once */
    expect_stats(1, "STAT busdown_queued 2\n", NULL);
    fb.state = BUS_UP;
    router_bus_state(F->r, BUS_UP, NULL);
    free(out(0));
    assert_int_equal(fb.n_sent, 3);
    assert_string_equal(fb.sent[1].data, "h1");
    assert_string_equal(fb.sent[2].data, "h2");
    run(0, "PUB F T delta 2", "h3");
    assert_string_equal(fb.sent[3].data, "h3");
    expect_stats(1, "STAT busdown_queued 0\n", NULL);
}

static void
test_publish_checks(void **state)
{
    char *o;

    run(0, "PUB F T delta", NULL);
    o = out(0);
    assert_non_null(strstr(o, "-ERR no-packets"));
    free(o);
    run(0, "PUB F T image 3:1,2", "abc");
    expect_out(0, "+OK\n");
    assert_int_equal(fb.sent[0].type, WIRE_MULTICAST_DATA);
    assert_string_equal(fb.sent[0].data, "abc");
    assert_true(fb.sent[0].is_image);
    run(0, "VERBOSE off", NULL); /* router ignores: the session owns it */
    free(out(0));
    F->s[0].verbose = false;
    run(0, "PUB F T delta 1", "z");
    expect_out(0, "");
    run(0, "PING tok", NULL);
    expect_out(0, "PONG tok\n");
}

static void
test_allow_empty_publish(void **state)
{
    struct fx *f = *state;

    router_free(f->r);
    for (int i = 0; i < NSESS; i++)
        evbuffer_free(f->s[i].out);
    lp_cmd_free(&f->cmd);
    f->cfg.router.allow_empty_publish = true;
    fx_start(f);
    run(0, "PUB F T image", NULL);
    expect_out(0, "+OK\n");
    assert_int_equal(fb.n_sent, 1);
    assert_int_equal(fb.sent[0].n_packets, 0);
}

static void
test_notifications(void **state)
{
    char *o;

    run(0, "NOTIFY N", NULL);
    run(0, "NOTIFY N", NULL);
    o = out(0);
    assert_non_null(strstr(o, "+OK\n-ERR already-notifying"));
    free(o);
    assert_int_equal(count_sent(WIRE_NOTIFICATION_REQUEST, "N", NULL, true), 1);
    bus_fwd_sub("N", "t1", true);
    bus_fwd_sub("N", "t2", true);
    bus_fwd_sub("N", "t2", false);
    bus_fwd_sub("OTHER", "t", true); /* nobody notifies on it */
    expect_out(0,
        "NOTIFICATION add " CID_TEXT " bob hb N t1\n"
        "NOTIFICATION add " CID_TEXT " bob hb N t2\n"
        "NOTIFICATION remove " CID_TEXT " bob hb N t2\n");
    /* A late notifier hears of what is known, nothing goes upstream. */
    run(1, "NOTIFY N", NULL);
    expect_out(1, "+OK\nNOTIFICATION add " CID_TEXT " bob hb N t1\n");
    assert_int_equal(count_sent(WIRE_NOTIFICATION_REQUEST, "N", NULL, true), 1);
    run(2, "UNNOTIFY N", NULL);
    o = out(2);
    assert_non_null(strstr(o, "-ERR not-notifying"));
    free(o);
    run(0, "UNNOTIFY N", NULL);
    fake_free(&F->s[1]);
    assert_int_equal(count_sent(WIRE_NOTIFICATION_REQUEST, "N", NULL, false), 1);
    /* Re-registering starts from an empty table (the bus replays). */
    run(2, "NOTIFY N", NULL);
    expect_out(2, "+OK\n");
    assert_int_equal(count_sent(WIRE_NOTIFICATION_REQUEST, "N", NULL, true), 2);
}

static void
test_authorization(void **state)
{
    char *o;

    bus_authreq("A", "t"); /* nobody authorizes A yet: kept */
    run(0, "AUTHORIZER A", NULL);
    expect_out(0, "+OK\nAUTHREQ " CID_TEXT " bob hb A t\n");
    run(1, "AUTHORIZER A", NULL);
    expect_out(1, "+OK\nAUTHREQ " CID_TEXT " bob hb A t\n");
    run(0, "AUTHORIZER A", NULL);
    o = out(0);
    assert_non_null(strstr(o, "-ERR already-authorizer"));
    free(o);
    run(2, "AUTHORIZE " CID_TEXT " A t required 1,2", NULL);
    o = out(2);
    assert_non_null(strstr(o, "-ERR not-authorizer"));
    free(o);
    run(0, "AUTHORIZE " CID_TEXT " A other required 1", NULL);
    o = out(0);
    assert_non_null(strstr(o, "-ERR unknown-request"));
    free(o);
    run(0, "AUTHORIZE " CID_TEXT " A t required 1,2", NULL);
    expect_out(0, "+OK\n");
    assert_int_equal(fb.n_sent, 1);
    assert_int_equal(fb.sent[0].type, WIRE_AUTHORIZATION_RESPONSE);
    assert_true(fb.sent[0].auth_required);
    assert_int_equal(fb.sent[0].n_ents, 2);
    run(1, "AUTHORIZE " CID_TEXT " A t not-required", NULL);
    o = out(1);
    assert_non_null(strstr(o, "-ERR already-answered"));
    free(o);
    /* A repeated request can be answered again; it reaches both. */
    bus_authreq("A", "t");
    expect_out(1, "AUTHREQ " CID_TEXT " bob hb A t\n");
    run(1, "AUTHORIZE " CID_TEXT " A t not-required", NULL);
    expect_out(1, "+OK\n");
    bus_authreq("B", "t");
    expect_stats(3, "STAT auth_requests_unrouted 2\n", "STAT authorizers 1\n", NULL);
    run(0, "UNAUTHORIZER A", NULL);
    run(0, "UNAUTHORIZER A", NULL);
    o = out(0);
    assert_non_null(strstr(o, "-ERR not-authorizer"));
    free(o);
}

static void
test_backpressure(void **state)
{
    fb.congested = true;
    run(0, "PUB F T delta 1", "x");
    for (int i = 0; i < NSESS; i++)
        assert_true(F->s[i].paused);
    fb.congested = false;
    router_bus_drained(F->r);
    for (int i = 0; i < NSESS; i++)
        assert_false(F->s[i].paused);
}

static void
test_slow_consumer_skipped(void **state)
{
    F->s[1].max_output = 100;
    run(0, "SUB F T", NULL);
    run(1, "SUB F T", NULL);
    free(out(1));
    bus_data("F", "T", "u", false, "0123456789012345678901234567890123456789", false);
    bus_data("F", "T", "u", false, "0123456789012345678901234567890123456789", false);
    assert_true(F->s[1].closing);
    assert_int_equal(F->s[1].close_err, LP_ERR_SLOW_CONSUMER);
    free(out(1));
    bus_data("F", "T", "u", false, "more", false);
    expect_out(1, "");
    /* The session module then releases it; its subscription goes. */
    router_session_closing(F->r, F->s[1].rc);
    run(0, "UNSUB F T", NULL);
    assert_int_equal(count_sent(WIRE_SUBSCRIPTION_REQUEST, "F", "T", false), 1);
    expect_stats(2, "STAT slow_consumers 1\n", NULL);
}

static void
test_limits(void **state)
{
    struct fx *f = *state;
    char *o;

    router_free(f->r);
    for (int i = 0; i < NSESS; i++)
        evbuffer_free(f->s[i].out);
    lp_cmd_free(&f->cmd);
    f->cfg.listen.max_sessions = NSESS;
    f->cfg.listen.max_subscriptions = 2;
    fx_start(f);
    run(0, "SUB F a", NULL);
    run(0, "SUB F b", NULL);
    run(0, "SUB F c", NULL);
    o = out(0);
    assert_non_null(strstr(o, "+OK\n+OK\n-ERR too-many-subscriptions"));
    free(o);
    assert_int_equal(router_session_count(f->r), NSESS);
}

static void
test_shutdown(void **state)
{
    run(0, "SUB F T", NULL);
    free(out(0));
    router_shutdown(F->r);
    for (int i = 0; i < NSESS; i++)
        assert_true(F->s[i].closing);
    expect_out(0, "-ERR shutting-down busgated is stopping\n");
    /* No upstream unsubscribe while stopping: the link goes anyway. */
    router_session_closing(F->r, F->s[0].rc);
    assert_int_equal(count_sent(WIRE_SUBSCRIPTION_REQUEST, "F", "T", false), 0);
}

static void
test_names_with_bytes(void **state)
{
    run(0, "SUB f%20eed t%25op%C3%A9", NULL);
    free(out(0));
    assert_int_equal(count_sent(WIRE_SUBSCRIPTION_REQUEST, "f eed", "t%op\xc3\xa9", true),
        1);
    bus_data("f eed", "t%op\xc3\xa9", "u", false, "a\nb", false);
    expect_out(0, "DATA f%20eed t%25op\xc3\xa9 u h1 delta multicast 3\na\nb\n");
}

/* Sessions 0 and 2 on F A, session 1 on F B, their replies read. */
static void
batch_subscribers(void)
{
    run(0, "SUB F A", NULL);
    run(2, "SUB F A", NULL);
    run(1, "SUB F B", NULL);
    free(out(0));
    free(out(1));
    free(out(2));
}

/* Events of one bus read for a topic are delivered in batches, in order,
 * whether it has one subscriber or several: a change of topic or the end
 * of the read delivers what is batched. */
static void
test_batched_delivery(void **state)
{
    batch_subscribers();
    bus_data_in_read("F", "A", "u", false, "1", false);
    bus_data_in_read("F", "A", "u", false, "2", false);
    expect_out(0, "");
    bus_data_in_read("F", "B", "u", false, "3", false);
    expect_out(0,
        "DATA F A u h1 delta multicast 1\n1\nDATA F A u h1 delta multicast 1\n2\n");
    expect_out(2,
        "DATA F A u h1 delta multicast 1\n1\nDATA F A u h1 delta multicast 1\n2\n");
    expect_out(1, ""); /* one subscriber: batched all the same */
    bus_data_in_read("F", "A", "u", false, "4", false);
    expect_out(1, "DATA F B u h1 delta multicast 1\n3\n");
    expect_out(0, "");
    router_bus_batch_end(F->r);
    expect_out(0, "DATA F A u h1 delta multicast 1\n4\n");
    expect_out(1, "");
}

/* A batch big enough to be shared goes to its sessions by reference, and
 * the next batch is formatted into a block of its own: the events queued
 * for a session that has not read them yet stay as they were. */
static void
test_shared_batch_kept(void **state)
{
    enum { N = 10000 };
    static char pay[3][N + 1];
    static const char head[] = "DATA F A u h1 delta multicast 10000\n";
    char *want = malloc(3 * (sizeof head + N + 1));
    size_t w = 0;

    for (int i = 0; i < 3; i++) {
        memset(pay[i], 'a' + i, N);
        w += (size_t)sprintf(want + w, "%s%s\n", head, pay[i]);
    }
    batch_subscribers();
    bus_data_in_read("F", "A", "u", false, pay[0], false);
    bus_data_in_read("F", "A", "u", false, pay[1], false); /* 20 KB: shared */
    bus_data_in_read("F", "B", "u", false, "x", false);
    bus_data_in_read("F", "A", "u", false, pay[2], false);
    router_bus_batch_end(F->r);
    expect_out(0, want);
    expect_out(2, want);
    expect_out(1, "DATA F B u h1 delta multicast 1\nx\n");
    free(want);
}

/* All topics' caches together stay within router.image_cache_total. */
static void
test_image_cache_total(void **state)
{
    router_free(F->r);
    for (int i = 0; i < NSESS; i++)
        evbuffer_free(F->s[i].out);
    lp_cmd_free(&F->cmd);
    F->cfg.router.image_cache_total = 80; /* room for one small image */
    fx_start(F);
    run(0, "SUB F A", NULL);
    run(0, "SUB F B", NULL);
    bus_data("F", "A", "pub", true, "IMAGE-A", false);
    bus_data("F", "B", "pub", true, "IMAGE-B", false); /* over the total */
    free(out(0));
    run(1, "SUB F A", NULL);
    expect_out(1, "+OK\nDATA F A pub h1 image multicast 7\nIMAGE-A\n");
    run(1, "SUB F B", NULL);
    expect_out(1, "+OK\n");
    expect_stats(1, "STAT image_cache_refused 1\n", "STAT limit.image_cache_total 80\n",
        NULL);
}

/* Remote subscriptions kept for late notifiers are bounded and counted. */
static void
test_remote_subscriptions_bounded(void **state)
{
    char topic[32];

    run(0, "NOTIFY N", NULL);
    for (int i = 0; i <= 65536; i++) {
        snprintf(topic, sizeof topic, "t%d", i);
        bus_fwd_sub("N", topic, true);
        if (i % 4096 == 0)
            free(out(0));
    }
    free(out(0));
    expect_stats(0, "STAT remote_subscriptions 65536\n",
        "STAT remote_subscriptions_dropped 1\n", NULL);
    run(0, "UNNOTIFY N", NULL);
    expect_stats(0, "STAT remote_subscriptions 0\n", NULL);
}

/* A link drop ends every remote subscription a notifier was told of, as
 * many removes as adds, after BUS down; late notifiers then agree. */
static void
test_link_drop_ends_notifications(void **state)
{
    run(0, "NOTIFY N", NULL);
    bus_fwd_sub("N", "t1", true);
    bus_fwd_sub("N", "t1", true);
    bus_fwd_sub("N", "t2", true);
    run(1, "NOTIFY N", NULL);
    expect_out(1,
        "+OK\nNOTIFICATION add " CID_TEXT " bob hb N t1\n"
        "NOTIFICATION add " CID_TEXT " bob hb N t1\n"
        "NOTIFICATION add " CID_TEXT " bob hb N t2\n");
    free(out(0));
    fb.state = BUS_DOWN;
    router_bus_state(F->r, BUS_DOWN, "gone");
    for (int i = 0; i < 2; i++)
        expect_out(i,
            "BUS down gone\n"
            "NOTIFICATION remove " CID_TEXT " bob hb N t1\n"
            "NOTIFICATION remove " CID_TEXT " bob hb N t1\n"
            "NOTIFICATION remove " CID_TEXT " bob hb N t2\n");
    expect_out(2, "BUS down gone\n");
    expect_stats(2, "STAT remote_subscriptions 0\n", NULL);
    run(2, "NOTIFY N", NULL);
    expect_out(2, "+OK\n");
}

/* NOTIFY and AUTHORIZER: bounded per session, found by hash, and the
 * bookkeeping stays right through many registrations. */
static void
test_role_limits(void **state)
{
    struct fx *f = *state;
    char line[64];
    char *o;

    f->cfg.listen.max_notifications = 3000;
    f->cfg.listen.max_authorizers = 2;
    fx_restart(f);
    for (int i = 0; i < 3000; i++) {
        snprintf(line, sizeof line, "NOTIFY g%08d", i);
        run(0, line, NULL);
    }
    free(out(0));
    assert_int_equal(fb.n_sent, 3000);
    fb.n_sent = 0;
    run(0, "NOTIFY extra", NULL);
    expect_out(0, "-ERR too-many-notifications at most 3000 notified feeds per session\n");
    run(0, "NOTIFY g00001234", NULL);
    o = out(0);
    assert_non_null(strstr(o, "-ERR already-notifying"));
    free(o);
    for (int i = 0; i < 3000; i += 2) {
        snprintf(line, sizeof line, "UNNOTIFY g%08d", i);
        run(0, line, NULL);
    }
    free(out(0));
    expect_stats(0, "STAT notifications 1500\n", "STAT limit.max_notifications 3000\n",
        NULL);
    run(0, "UNNOTIFY g00000002", NULL);
    o = out(0);
    assert_non_null(strstr(o, "-ERR not-notifying"));
    free(o);
    run(0, "NOTIFY extra", NULL);
    expect_out(0, "+OK\n");
    run(1, "NOTIFY g00000001", NULL); /* another session's own limit */
    expect_out(1, "+OK\n");

    run(0, "AUTHORIZER A1", NULL);
    run(0, "AUTHORIZER A2", NULL);
    run(0, "AUTHORIZER A3", NULL);
    expect_out(0,
        "+OK\n+OK\n-ERR too-many-authorizers at most 2 authorized feeds per "
        "session\n");
    run(0, "UNAUTHORIZER A1", NULL);
    run(0, "AUTHORIZER A3", NULL);
    run(0, "PING", NULL);
    expect_out(0, "+OK\n+OK\nPONG\n");
    bus_authreq("A3", "x");
    run(0, "AUTHORIZE " CID_TEXT " A3 x not-required", NULL);
    o = out(0);
    assert_non_null(strstr(o, "AUTHREQ " CID_TEXT " bob hb A3 x\n+OK\n"));
    free(o);
    fake_free(&F->s[0]);
    expect_stats(1, "STAT notifications 1\n", "STAT authorizers 0\n", NULL);
}

/* Pending requests survive a link drop and are answered afterwards;
 * router.auth_pending bounds them, oldest first. */
static void
test_pending_across_reconnect(void **state)
{
    struct fx *f = *state;
    char *o;

    f->cfg.router.auth_pending = 2;
    fx_restart(f);
    run(0, "AUTHORIZER S", NULL);
    bus_authreq("S", "a");
    bus_authreq("S", "b");
    bus_authreq("S", "c"); /* pushes out "a" */
    free(out(0));
    fb.state = BUS_DOWN;
    router_bus_state(F->r, BUS_DOWN, "gone");
    run(0, "AUTHORIZE " CID_TEXT " S b not-required", NULL);
    o = out(0);
    assert_non_null(strstr(o, "-ERR bus-down"));
    free(o);
    fb.state = BUS_UP;
    router_bus_state(F->r, BUS_UP, NULL);
    free(out(0));
    fb.n_sent = 0;
    run(0, "AUTHORIZE " CID_TEXT " S b required 4", NULL);
    run(0, "AUTHORIZE " CID_TEXT " S a required 4", NULL);
    o = out(0);
    assert_non_null(strstr(o, "+OK\n-ERR unknown-request"));
    free(o);
    assert_int_equal(fb.n_sent, 1);
    assert_int_equal(fb.sent[0].type, WIRE_AUTHORIZATION_RESPONSE);
    assert_string_equal(fb.sent[0].topic, "b");
    /* A session registering after the reconnect is given what is unanswered. */
    free(out(1));
    run(1, "AUTHORIZER S", NULL);
    expect_out(1, "+OK\nAUTHREQ " CID_TEXT " bob hb S c\n");
    expect_stats(1, "STAT auth_requests_pending 2\n", "STAT limit.auth_pending 2\n", NULL);
}

static unsigned
count_type(enum wire_type type)
{
    unsigned n = 0;

    for (unsigned i = 0; i < fb.n_sent; i++)
        n += fb.sent[i].type == type;
    return n;
}

/* Run the event loop once without waiting: one replay batch. */
static void
loop_once(void)
{
    event_base_loop(F->base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
}

/* The replay after a reconnect goes out in bounded batches, one per loop
 * turn, stops at the bus's high-water mark and resumes when it drains;
 * sessions are served meanwhile; what changes during it is sent once. */
static void
test_replay_in_batches(void **state)
{
    struct fx *f = *state;
    char line[64];
    unsigned batches = 0, before;

    f->base = event_base_new();
    assert_non_null(f->base);
    f->cfg.router.busdown_queue = 4;
    fx_restart(f);
    fb.state = BUS_DOWN;
    router_bus_state(f->r, BUS_DOWN, "gone");
    for (int i = 0; i < 1000; i++) {
        snprintf(line, sizeof line, "SUB F t%04d", i);
        run(0, line, NULL);
    }
    for (int i = 0; i < 300; i++) {
        snprintf(line, sizeof line, "NOTIFY N%03d", i);
        run(1, line, NULL);
    }
    run(2, "PUB F t0000 delta 1", "q");
    for (int i = 0; i < 4; i++)
        free(out(i));
    fb.n_sent = 0;
    fb.state = BUS_UP;
    router_bus_state(f->r, BUS_UP, NULL);
    /* One batch at once; the rest waits for the loop. */
    assert_true(fb.n_sent > 0 && fb.n_sent <= 256);
    run(3, "PING x", NULL);
    expect_out(3, "BUS up\nPONG x\n");
    /* Changes meanwhile: a topic not replayed yet is given up (nothing goes
     * upstream for it), a new one is subscribed at once. */
    run(0, "UNSUB F t0999", NULL);
    run(2, "SUB F new", NULL);
    assert_int_equal(count_sent(WIRE_SUBSCRIPTION_REQUEST, "F", "t0999", false), 0);
    assert_int_equal(count_sent(WIRE_SUBSCRIPTION_REQUEST, "F", "new", true), 1);
    /* Back-pressure stops it ... */
    fb.congested = true;
    before = fb.n_sent;
    loop_once();
    assert_int_equal(fb.n_sent, before + 1);
    loop_once();
    assert_int_equal(fb.n_sent, before + 1);
    assert_true(F->s[4].paused);
    /* ... and draining resumes it. */
    fb.congested = false;
    router_bus_drained(f->r);
    while (count_type(WIRE_MULTICAST_DATA) == 0 && batches < 100) {
        before = fb.n_sent;
        loop_once();
        assert_true(fb.n_sent - before <= 256);
        batches++;
    }
    assert_true(batches >= 4);
    for (int i = 0; i < 999; i++) {
        snprintf(line, sizeof line, "t%04d", i);
        assert_int_equal(count_sent(WIRE_SUBSCRIPTION_REQUEST, "F", line, true), 1);
    }
    assert_int_equal(count_sent(WIRE_SUBSCRIPTION_REQUEST, "F", "t0999", true), 0);
    assert_int_equal(count_type(WIRE_SUBSCRIPTION_REQUEST), 1000);
    assert_int_equal(count_type(WIRE_NOTIFICATION_REQUEST), 300);
    /* The publish held while down goes last. */
    assert_int_equal(fb.sent[fb.n_sent - 1].type, WIRE_MULTICAST_DATA);
    loop_once();
    assert_int_equal(count_type(WIRE_SUBSCRIPTION_REQUEST), 1000);
    /* A drop in the middle of a replay cancels the rest. */
    fb.state = BUS_DOWN;
    router_bus_state(f->r, BUS_DOWN, "again");
    fb.n_sent = 0;
    fb.state = BUS_UP;
    router_bus_state(f->r, BUS_UP, NULL);
    fb.state = BUS_DOWN;
    router_bus_state(f->r, BUS_DOWN, "and again");
    loop_once();
    assert_true(fb.n_sent <= 256);
}

/* The tables' hash spreads keys that differ in a digit or two, in the
 * low bits uthash takes for a bucket, for short and long keys alike. */
static void
test_hash_spreads_keys(void **state)
{
    enum { KEYS = 10000, BUCKETS = 1024 };
    static unsigned counts[BUCKETS];
    const char *prefixes[] = { "t", "prices.equity.", "" };

    (void)state;
    for (size_t s = 0; s < sizeof prefixes / sizeof prefixes[0]; s++) {
        unsigned most = 0;

        memset(counts, 0, sizeof counts);
        for (int i = 0; i < KEYS; i++) {
            char key[64];
            int n = snprintf(key, sizeof key, "%s%d", prefixes[s], i);

            counts[rt_hash(key, (size_t)n) & (BUCKETS - 1)]++;
        }
        for (int b = 0; b < BUCKETS; b++)
            most = counts[b] > most ? counts[b] : most;
        /* About 10 a bucket; a Poisson spread's fullest is near 22. */
        if (most > 30)
            fail_msg("keys %s<n>: a bucket holds %u of %d", prefixes[s], most, KEYS);
    }
}

/* The router hashes its tables with a key it drew (setup made a router):
 * a local app cannot know where its topic names fall. */
static void
test_hash_is_keyed(void **state)
{
    const char *key = "prices.equity.VOD";

    (void)state;
    assert_false(rt_hash_key.k0 == 0 && rt_hash_key.k1 == 0);
    assert_int_equal(rt_hash(key, strlen(key)),
        (unsigned)siphash13(&rt_hash_key, key, strlen(key)));
}

/* Two topics an app could craft to collide under a multiply-and-fold hash
 * whatever its seed (the top bit of each of two consecutive words
 * flipped: h' = h + 2^63, times an odd constant, flips the same bit, which
 * the next word's flip cancels) hash apart under the keyed one. */
static void
test_hash_crafted_pair(void **state)
{
    char a[16], b[16];
    int same = 0;

    (void)state;
    memset(a, 'x', sizeof a);
    memcpy(b, a, sizeof b);
    b[7] ^= (char)0x80;
    b[15] ^= (char)0x80;
    /* Under a random key a pair collides in 32 bits once in 2^32: three
     * pairs all colliding is no chance. */
    for (int i = 0; i < 3; i++, a[0]++, b[0]++)
        same += rt_hash(a, sizeof a) == rt_hash(b, sizeof b);
    assert_true(same < 3);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_one_upstream_subscription, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hash_is_keyed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hash_crafted_pair, setup, teardown),
        cmocka_unit_test_setup_teardown(test_recent_topics, setup, teardown),
        cmocka_unit_test_setup_teardown(test_recent_topics_many, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fanout_and_unwanted, setup, teardown),
        cmocka_unit_test_setup_teardown(test_link_holds_heartbeat, setup, teardown),
        cmocka_unit_test_setup_teardown(test_large_event_shared, setup, teardown),
        cmocka_unit_test_setup_teardown(test_image_cache, setup, teardown),
        cmocka_unit_test_setup_teardown(test_image_cache_overflow, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bus_down_and_replay, setup, teardown),
        cmocka_unit_test_setup_teardown(test_busdown_queue, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unconfirmed_data_held, setup, teardown),
        cmocka_unit_test_setup_teardown(test_publish_checks, setup, teardown),
        cmocka_unit_test_setup_teardown(test_allow_empty_publish, setup, teardown),
        cmocka_unit_test_setup_teardown(test_notifications, setup, teardown),
        cmocka_unit_test_setup_teardown(test_authorization, setup, teardown),
        cmocka_unit_test_setup_teardown(test_backpressure, setup, teardown),
        cmocka_unit_test_setup_teardown(test_slow_consumer_skipped, setup, teardown),
        cmocka_unit_test_setup_teardown(test_limits, setup, teardown),
        cmocka_unit_test_setup_teardown(test_shutdown, setup, teardown),
        cmocka_unit_test_setup_teardown(test_names_with_bytes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_batched_delivery, setup, teardown),
        cmocka_unit_test_setup_teardown(test_shared_batch_kept, setup, teardown),
        cmocka_unit_test_setup_teardown(test_image_cache_total, setup, teardown),
        cmocka_unit_test_setup_teardown(test_remote_subscriptions_bounded, setup, teardown),
        cmocka_unit_test_setup_teardown(test_link_drop_ends_notifications, setup, teardown),
        cmocka_unit_test_setup_teardown(test_role_limits, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pending_across_reconnect, setup, teardown),
        cmocka_unit_test_setup_teardown(test_replay_in_batches, setup, teardown),
        cmocka_unit_test(test_hash_spreads_keys),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
