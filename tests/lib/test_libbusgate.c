/*
 * libbusgate against the real busgated and the test bus. Run by
 * tests/integration/test_libbusgate.py, which starts both and passes the
 * socket path; a line written to stdout ("RESTART", "BUS-STOP",
 * "BUS-START") asks the driver to act, and it answers "OK" on stdin.
 * Uses only the public API (busgate.h).
 */
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "busgate.h"

static const char *sock_path;
static int failures;

#define CHECK(cond)                                                                        \
    do {                                                                                   \
        if (!(cond)) {                                                                     \
            fprintf(stderr, "%s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, #cond);       \
            exit(1);                                                                       \
        }                                                                                  \
    } while (0)
#define CHECK_OK(c, call)                                                                  \
    do {                                                                                   \
        int r_ = (call);                                                                   \
        if (r_ != 0) {                                                                     \
            fprintf(stderr, "%s:%d: %s = %d (%s): %s\n", __FILE__, __LINE__, #call, r_,    \
                bg_error_name(r_), bg_errstr(c));                                          \
            exit(1);                                                                       \
        }                                                                                  \
    } while (0)
#define S(str) str, strlen(str)

#define WAIT_MS 20000

static void
ask_driver(const char *what)
{
    char line[64];

    printf("%s\n", what);
    fflush(stdout);
    CHECK(fgets(line, sizeof(line), stdin) != NULL && strncmp(line, "OK", 2) == 0);
}

static bg_conn *
conn(void)
{
    bg_conn *c = bg_connect(sock_path);

    CHECK(c != NULL);
    if (bg_error_code(c) != 0)
        fprintf(stderr, "connect: %s\n", bg_errstr(c));
    CHECK(bg_error_code(c) == 0);
    return c;
}

static bool
name_is(const char *p, size_t n, const char *want, size_t want_len)
{
    return n == want_len && memcmp(p, want, n) == 0 && p[n] == '\0';
}

/* The next event of kind (others skipped), on feed/topic when given. */
static const struct bg_event *
wait_for(bg_conn *c, enum bg_event_kind kind, const char *topic, size_t topic_len)
{
    const struct bg_event *ev;
    int r;

    for (;;) {
        if ((r = bg_next_event(c, WAIT_MS, &ev)) != 0) {
            fprintf(stderr, "waiting for event %d: %s: %s\n", kind, bg_error_name(r),
                bg_errstr(c));
            exit(1);
        }
        if (ev->kind == kind &&
            (topic == NULL || name_is(ev->topic, ev->topic_len, topic, topic_len)))
            return ev;
    }
}

static void
test_connect_refused(void)
{
    bg_conn *c = bg_connect("/nonexistent/busgate.sock");

    CHECK(c != NULL);
    CHECK(bg_error_code(c) == BG_E_IO);
    CHECK(strstr(bg_errstr(c), "/nonexistent/busgate.sock") != NULL);
    bg_free(c);
}

/* A path no socket can have fails every reconnect as it fails the first:
 * bg_next_event still waits out its backoff and returns at its timeout
 * (it used to retry at once, for ever). */
static void
test_path_too_long(void)
{
    char path[200];
    const struct bg_event *ev;
    bg_conn *c;

    memset(path, 'a', sizeof(path) - 1);
    path[0] = '/';
    path[sizeof(path) - 1] = '\0';
    c = bg_connect(path);
    CHECK(bg_error_code(c) == BG_E_INVALID);
    bg_set_reconnect(c, 50, 100);
    CHECK(bg_next_event(c, 300, &ev) == -BG_E_TIMEOUT);
    bg_free(c);
}

/* Binary and empty packets, entitlements, names with spaces and non-ASCII. */
static void
test_publish_binary(void)
{
    static const char feed[] = "my feed", topic[] = "caf\xc3\xa9 \xe2\x82\xac 100%";
    static const char bin[] = { 'a', 0, '\n', '\r', (char)0xff, 'z' };
    static const int32_t ents[] = { 1, -2 };
    const struct bg_packet pk[] = {
        { bin, sizeof(bin), ents, 2 },
        { NULL, 0, NULL, 0 },
        { "\n", 1, NULL, 0 },
    };
    bg_conn *c = conn();
    const struct bg_event *ev;

    CHECK_OK(c, bg_subscribe(c, S(feed), S(topic)));
    CHECK_OK(c, bg_publish(c, S(feed), S(topic), true, pk, 3));
    ev = wait_for(c, BG_EV_DATA, S(topic));
    CHECK(name_is(ev->feed, ev->feed_len, S(feed)));
    CHECK(ev->is_image && !ev->is_unicast);
    CHECK(ev->user_len > 0 && ev->host_len > 0);
    CHECK(ev->n_packets == 3);
    CHECK(ev->packets[0].len == sizeof(bin) &&
        memcmp(ev->packets[0].data, bin, sizeof(bin)) == 0);
    CHECK(ev->packets[0].n_entitlements == 2 && ev->packets[0].entitlements[0] == 1 &&
        ev->packets[0].entitlements[1] == -2);
    CHECK(ev->packets[1].len == 0 && ev->packets[1].n_entitlements == 0);
    CHECK(ev->packets[2].len == 1 && memcmp(ev->packets[2].data, "\n", 1) == 0);

    /* A delta with one empty packet. */
    CHECK_OK(c, bg_publish(c, S(feed), S(topic), false, pk + 1, 1));
    ev = wait_for(c, BG_EV_DATA, S(topic));
    CHECK(!ev->is_image && ev->n_packets == 1 && ev->packets[0].len == 0);

    /* A name with a NUL byte round-trips too. */
    CHECK_OK(c, bg_subscribe(c, S(feed), "nul\0byte", 8));
    CHECK_OK(c, bg_publish(c, S(feed), "nul\0byte", 8, false, pk + 2, 1));
    ev = wait_for(c, BG_EV_DATA, "nul\0byte", 8);
    CHECK(ev->n_packets == 1);
    CHECK_OK(c, bg_unsubscribe(c, S(feed), S(topic)));
    bg_free(c);
}

/* -ERR replies map to codes with the daemon's message. */
static void
test_errors(void)
{
    const struct bg_packet no_data = { NULL, 5, NULL, 0 }, no_ents = { "x", 1, NULL, 3 };
    bg_conn *c = conn();

    CHECK_OK(c, bg_subscribe(c, S("prices"), S("AAPL")));
    CHECK(bg_subscribe(c, S("prices"), S("AAPL")) == -BG_E_ALREADY_SUBSCRIBED);
    CHECK(strstr(bg_errstr(c), "already-subscribed") != NULL);
    CHECK(strcmp(bg_error_name(BG_E_ALREADY_SUBSCRIBED), "already-subscribed") == 0);
    CHECK_OK(c, bg_unsubscribe(c, S("prices"), S("AAPL")));
    CHECK(bg_unsubscribe(c, S("prices"), S("AAPL")) == -BG_E_NOT_SUBSCRIBED);
    CHECK(bg_subscribe(c, S(""), S("AAPL")) == -BG_E_BAD_NAME);
    CHECK(bg_subscribe(c, S("prices"), "\xc3", 1) == -BG_E_BAD_NAME);
    CHECK(bg_publish(c, S("prices"), S("AAPL"), true, NULL, 0) == -BG_E_NO_PACKETS);
    CHECK(bg_unnotify(c, S("prices")) == -BG_E_NOT_NOTIFYING);
    CHECK(bg_unauthorizer(c, S("secure")) == -BG_E_NOT_AUTHORIZER);
    CHECK(bg_subscribe(c, NULL, 0, S("x")) == -BG_E_INVALID);
    CHECK(bg_authorizer(c, NULL, 5) == -BG_E_INVALID);  /* NULL with a length: a bug */
    CHECK(bg_process(c, BG_READABLE) == -BG_E_INVALID); /* no callback: events lost */
    /* A length without the bytes it counts is the caller's error, not a crash. */
    CHECK(bg_publish(c, S("prices"), S("AAPL"), false, &no_data, 1) == -BG_E_INVALID);
    CHECK(strstr(bg_errstr(c), "packet 0 has a length but no data") != NULL);
    CHECK(bg_publish(c, S("prices"), S("AAPL"), false, &no_ents, 1) == -BG_E_INVALID);
    CHECK(strstr(bg_errstr(c), "packet 0 has an entitlement count but no entitlements"));
    /* The session is still usable. */
    CHECK_OK(c, bg_ping(c));
    bg_free(c);
}

/*
 * A command line longer than the greeting's max_line is refused before
 * anything is sent: busgated would discard the line up to its newline and
 * read the message's payload (here a PUB of its own) as commands.
 */
static void
test_line_bound(void)
{
    static char topic[70000];
    static int32_t ents[6000];
    static const char evil[] = "PUB line%20feed V delta 4\nevil";
    const struct bg_packet pk = { evil, sizeof(evil) - 1, NULL, 0 },
                           many = { "x", 1, ents, 6000 }, ok = { "ok", 2, NULL, 0 };
    const uint8_t id[16] = { 1 };
    bg_conn *s = conn(), *p = conn();
    const struct bg_event *ev;

    memset(topic, 't', sizeof(topic));
    for (size_t i = 0; i < 6000; i++)
        ents[i] = INT32_MIN; /* 12 bytes each: a 72 kB line */
    CHECK_OK(s, bg_subscribe(s, S("line feed"), S("V")));
    CHECK(bg_subscribe(p, S("line feed"), topic, sizeof(topic)) == -BG_E_LINE_TOO_LONG);
    for (int pipelined = 0; pipelined < 2; pipelined++) {
        CHECK_OK(p, bg_set_pipelined(p, pipelined));
        CHECK(bg_publish(p, S("line feed"), topic, sizeof(topic), false, &pk, 1) ==
            -BG_E_LINE_TOO_LONG);
        CHECK(strstr(bg_errstr(p), "max_line, 65536 bytes; nothing was sent") != NULL);
        CHECK(bg_send(p, id, S("line feed"), topic, sizeof(topic), false, &pk, 1) ==
            -BG_E_LINE_TOO_LONG);
        CHECK(
            bg_publish(p, S("line feed"), S("V"), false, &many, 1) == -BG_E_LINE_TOO_LONG);
        CHECK(bg_authorize(p, id, S("line feed"), S("V"), true, ents, 6000) ==
            -BG_E_LINE_TOO_LONG);
        CHECK_OK(p, bg_publish(p, S("line feed"), S("V"), false, &ok, 1));
    }
    CHECK_OK(p, bg_set_pipelined(p, false));
    CHECK(bg_next_event(p, 0, &ev) == -BG_E_TIMEOUT); /* no refusal: nothing sent */
    for (int i = 0; i < 2; i++) {
        ev = wait_for(s, BG_EV_DATA, S("V"));
        CHECK(ev->n_packets == 1 && ev->packets[0].len == 2 &&
            memcmp(ev->packets[0].data, "ok", 2) == 0);
    }
    CHECK_OK(p, bg_ping(p));
    bg_free(p);
    bg_free(s);
}

/* NOTIFY, then SEND to the id a notification told. */
static void
test_notify_and_send(void)
{
    bg_conn *a = conn(), *b = conn();
    const struct bg_event *ev;
    uint8_t gw[16];
    const struct bg_packet pk = { "hello", 5, NULL, 0 };

    CHECK_OK(a, bg_notify(a, S("n feed")));
    CHECK_OK(b, bg_subscribe(b, S("n feed"), S("t\xc3\xa9")));
    ev = wait_for(a, BG_EV_NOTIFICATION, S("t\xc3\xa9"));
    CHECK(ev->is_add && name_is(ev->feed, ev->feed_len, S("n feed")));
    CHECK(strlen(ev->client_id_text) == 36);
    memcpy(gw, ev->client_id, 16);

    CHECK_OK(a, bg_send(a, gw, S("n feed"), S("t\xc3\xa9"), true, &pk, 1));
    ev = wait_for(b, BG_EV_DATA, S("t\xc3\xa9"));
    CHECK(ev->is_unicast && ev->n_packets == 1 &&
        memcmp(ev->packets[0].data, "hello", 5) == 0);

    CHECK_OK(b, bg_unsubscribe(b, S("n feed"), S("t\xc3\xa9")));
    ev = wait_for(a, BG_EV_NOTIFICATION, S("t\xc3\xa9"));
    CHECK(!ev->is_add && memcmp(ev->client_id, gw, 16) == 0);
    CHECK_OK(a, bg_unnotify(a, S("n feed")));
    bg_free(a);
    bg_free(b);
}

/* AUTHORIZER, AUTHREQ, AUTHORIZE with entitlements: the subscriber gets
 * only the entitled packet. */
static void
test_authorize(void)
{
    bg_conn *a = conn(), *b = conn();
    const struct bg_event *ev;
    static const int32_t grant[] = { 1, 2 }, e1[] = { 1 }, e3[] = { 3 };
    const struct bg_packet pk[] = { { "one", 3, e1, 1 }, { "three", 5, e3, 1 } };

    CHECK_OK(a, bg_authorizer(a, S("secure")));
    CHECK_OK(b, bg_subscribe(b, S("secure"), S("AAPL")));
    ev = wait_for(a, BG_EV_AUTHREQ, S("AAPL"));
    CHECK(name_is(ev->feed, ev->feed_len, S("secure")));
    CHECK_OK(a, bg_authorize(a, ev->client_id, S("secure"), S("AAPL"), true, grant, 2));
    CHECK(bg_authorize(a, ev->client_id, S("secure"), S("AAPL"), false, NULL, 0) ==
        -BG_E_ALREADY_ANSWERED);
    CHECK_OK(a, bg_publish(a, S("secure"), S("AAPL"), true, pk, 2));
    ev = wait_for(b, BG_EV_DATA, S("AAPL"));
    CHECK(ev->n_packets == 1 && ev->packets[0].len == 3 &&
        memcmp(ev->packets[0].data, "one", 3) == 0);
    CHECK_OK(a, bg_unauthorizer(a, S("secure")));
    bg_free(a);
    bg_free(b);
}

/* An event stays valid until the next bg_next_event: a blocking command in
 * between (a handler that publishes, answers or pings) leaves it whole,
 * even when the link goes down under it. */
static void
test_event_outlives_commands(void)
{
    static const char topic[] = "kept \xc3\xa9";
    static const int32_t e1[] = { 7, 8 };
    const struct bg_packet pk[] = { { "first", 5, e1, 2 }, { "second", 6, NULL, 0 } };
    bg_conn *c = conn(), *p = conn();
    const struct bg_event *ev;

    CHECK_OK(c, bg_subscribe(c, S("outlive"), S(topic)));
    CHECK_OK(p, bg_publish(p, S("outlive"), S(topic), true, pk, 2));
    CHECK_OK(p, bg_publish(p, S("outlive"), S(topic), false, pk + 1, 1));
    ev = wait_for(c, BG_EV_DATA, S(topic));
    for (int round = 0; round < 3; round++) {
        CHECK_OK(c, bg_ping(c));
        CHECK(bg_unsubscribe(c, S("outlive"), S("never subscribed to this topic")) < 0);
        CHECK_OK(c, bg_publish(c, S("outlive"), S("elsewhere"), false, pk, 1));
        CHECK(name_is(ev->feed, ev->feed_len, S("outlive")));
        CHECK(name_is(ev->topic, ev->topic_len, S(topic)));
        CHECK(ev->is_image && ev->n_packets == 2);
        CHECK(ev->packets[0].len == 5 && memcmp(ev->packets[0].data, "first", 5) == 0);
        CHECK(ev->packets[0].n_entitlements == 2 && ev->packets[0].entitlements[0] == 7 &&
            ev->packets[0].entitlements[1] == 8);
        CHECK(ev->packets[1].len == 6 && memcmp(ev->packets[1].data, "second", 6) == 0);
    }
    /* The link lost under a blocking call: the buffers the event came in
     * are reset, the event stays. */
    ev = wait_for(c, BG_EV_DATA, S(topic));
    ask_driver("RESTART");
    (void)bg_ping(c);
    CHECK(name_is(ev->topic, ev->topic_len, S(topic)));
    CHECK(!ev->is_image && ev->n_packets == 1);
    CHECK(ev->packets[0].len == 6 && memcmp(ev->packets[0].data, "second", 6) == 0);
    bg_free(c);
    bg_free(p);
}

/* bg_authorizer with no feed: every feed's requests (issue 13). */
static void
test_authorize_all_feeds(void)
{
    bg_conn *a = conn(), *b = conn();
    const struct bg_event *ev;

    CHECK_OK(a, bg_authorizer(a, NULL, 0));
    CHECK(bg_authorizer(a, NULL, 0) == -BG_E_ALREADY_AUTHORIZER);
    CHECK_OK(b, bg_subscribe(b, S("secure"), S("ALL")));
    ev = wait_for(a, BG_EV_AUTHREQ, S("ALL"));
    CHECK(name_is(ev->feed, ev->feed_len, S("secure")));
    CHECK_OK(a, bg_authorize(a, ev->client_id, S("secure"), S("ALL"), false, NULL, 0));
    CHECK_OK(a, bg_unauthorizer(a, NULL, 0));
    CHECK(bg_unauthorizer(a, NULL, 0) == -BG_E_NOT_AUTHORIZER);
    bg_free(a);
    bg_free(b);
}

/* A zero timeout still reads what the socket holds. */
static void
test_timeout_zero(void)
{
    bg_conn *c = conn(), *p = conn();
    const struct bg_event *ev;
    const struct bg_packet pk = { "now", 3, NULL, 0 };
    time_t end = time(NULL) + WAIT_MS / 1000;
    int r;

    CHECK(bg_next_event(c, 0, &ev) == -BG_E_TIMEOUT);
    CHECK(bg_error_code(c) == BG_E_TIMEOUT);
    CHECK_OK(c, bg_subscribe(c, S("zero"), S("t")));
    CHECK_OK(p, bg_publish(p, S("zero"), S("t"), false, &pk, 1));
    while ((r = bg_next_event(c, 0, &ev)) == -BG_E_TIMEOUT) {
        CHECK(time(NULL) < end);
        poll(NULL, 0, 5);
    }
    CHECK(r == 0 && ev->kind == BG_EV_DATA && ev->n_packets == 1);
    bg_free(c);
    bg_free(p);
}

struct loop_state {
    int replies, reply_errors, data;
    int link_down, link_up, data_after_up;
    char last[16];
    uint64_t request[8]; /* the first replies' request and error */
    int error[8];
};

static void
on_event(bg_conn *c, const struct bg_event *ev, void *arg)
{
    struct loop_state *st = arg;

    if (ev->kind == BG_EV_REPLY) {
        if (st->replies < 8) {
            st->request[st->replies] = ev->request;
            st->error[st->replies] = ev->error;
        }
        st->replies++;
        if (ev->error != 0)
            st->reply_errors++;
    } else if (ev->kind == BG_EV_LINK) {
        if (ev->up)
            st->link_up++;
        else
            st->link_down++;
    } else if (ev->kind == BG_EV_DATA && ev->n_packets == 1 &&
        ev->packets[0].len < sizeof(st->last)) {
        st->data++;
        if (st->link_up > 0)
            st->data_after_up++;
        memcpy(st->last, ev->packets[0].data, ev->packets[0].len);
        st->last[ev->packets[0].len] = '\0';
    }
}

/* One turn of an application's poll loop around c, waiting at most max_ms. */
static void
loop_once(bg_conn *c, int max_ms)
{
    struct pollfd pfd = { .fd = bg_fd(c), .events = POLLIN };
    int t = bg_timeout_ms(c), r;

    if (bg_want_write(c))
        pfd.events |= POLLOUT;
    r = poll(&pfd, pfd.fd >= 0 ? 1 : 0, t < 0 || t > max_ms ? max_ms : t);
    bg_process(c,
        r <= 0 ? 0
               : ((pfd.revents & (POLLIN | POLLHUP)) ? BG_READABLE : 0) |
                ((pfd.revents & POLLOUT) ? BG_WRITABLE : 0));
}

/* Run c's loop until done(st) or the deadline. */
static void
run_loop(bg_conn *c, struct loop_state *st, int (*done)(const struct loop_state *))
{
    time_t end = time(NULL) + WAIT_MS / 1000;

    while (!done(st)) {
        CHECK(time(NULL) < end);
        loop_once(c, 200);
    }
}

static int
two_replies(const struct loop_state *st)
{
    return st->replies >= 2;
}
static int
one_data(const struct loop_state *st)
{
    return st->data >= 1;
}

/* Event-loop use: a registration undone after reconnecting but before the
 * greeting is read goes with the restore, not ahead of it (where the new
 * session would refuse it and the restore would bring it back). */
static void
test_register_before_greeting(void)
{
    bg_conn *b = conn(), *p;
    struct loop_state st = { 0 };
    const struct bg_packet pa = { "A", 1, NULL, 0 }, pb = { "B", 1, NULL, 0 };
    time_t end = time(NULL) + WAIT_MS / 1000;
    bool asked = false;

    bg_set_reconnect(b, 20, 100);
    CHECK_OK(b, bg_subscribe(b, S("hello feed"), S("a")));
    CHECK_OK(b, bg_subscribe(b, S("hello feed"), S("b")));
    bg_set_callback(b, on_event, &st);
    ask_driver("RESTART");
    while (st.link_up == 0) {
        CHECK(time(NULL) < end);
        loop_once(b, 20);
        /* Reconnected by a turn that read nothing: the greeting is unread. */
        if (!asked && st.link_down > 0 && bg_fd(b) >= 0) {
            CHECK_OK(b, bg_unsubscribe(b, S("hello feed"), S("a")));
            asked = true;
        }
    }
    CHECK(asked);
    p = conn();
    CHECK_OK(p, bg_publish(p, S("hello feed"), S("a"), false, &pa, 1));
    CHECK_OK(p, bg_publish(p, S("hello feed"), S("b"), false, &pb, 1));
    run_loop(b, &st, one_data);
    CHECK(st.data == 1 && strcmp(st.last, "B") == 0);
    CHECK(st.reply_errors == 0);
    bg_free(p);
    bg_free(b);
}

/* Event-loop use whose bg_open failed: the first greeting, read by
 * bg_process with a reply behind it in the same read, must not stop the
 * reading there (nothing else would make the application call bg_process
 * again). The loop calls bg_process only on readiness or at
 * bg_timeout_ms, as an application's. The app, told bg_open failed, gets
 * a LINK up event when the retry gets through. */
static void
test_first_open_event_loop(void)
{
    bg_conn *b = bg_new(sock_path);
    struct loop_state st = { 0 };
    time_t end = time(NULL) + WAIT_MS / 1000;
    bool pinged = false;

    ask_driver("STOP");
    bg_set_reconnect(b, 20, 100);
    CHECK(bg_open(b) < 0);
    bg_set_callback(b, on_event, &st);
    ask_driver("START");
    while (st.replies == 0) {
        struct pollfd pfd = { .fd = bg_fd(b), .events = POLLIN };
        int t = bg_timeout_ms(b), r;

        CHECK(time(NULL) < end);
        if (bg_want_write(b))
            pfd.events |= POLLOUT;
        r = poll(&pfd, pfd.fd >= 0 ? 1 : 0, t < 0 || t > 200 ? 200 : t);
        if (r > 0 || (r == 0 && t >= 0))
            bg_process(b,
                r <= 0 ? 0
                       : ((pfd.revents & (POLLIN | POLLHUP)) ? BG_READABLE : 0) |
                        ((pfd.revents & POLLOUT) ? BG_WRITABLE : 0));
        if (!pinged && bg_fd(b) >= 0) { /* connected, greeting not read yet */
            CHECK_OK(b, bg_ping(b));
            bg_flush(b);
            usleep(200 * 1000); /* the greeting and the PONG both arrive */
            pinged = true;
        }
    }
    CHECK(st.reply_errors == 0);
    CHECK(st.link_up == 1 && st.link_down == 0);
    bg_free(b);
}

/* Event-loop use: replies and data through the callback. */
static void
test_event_loop(void)
{
    bg_conn *c = conn(), *p = conn();
    struct loop_state st = { 0 };
    const struct bg_packet pk = { "async", 5, NULL, 0 };

    bg_set_callback(c, on_event, &st);
    CHECK_OK(c, bg_subscribe(c, S("loop"), S("t")));
    CHECK(bg_last_request(c) > 0);
    CHECK_OK(c, bg_subscribe(c, S("loop"), S("t"))); /* refused: a reply with an error */
    run_loop(c, &st, two_replies);
    CHECK(st.reply_errors == 1);
    CHECK_OK(p, bg_publish(p, S("loop"), S("t"), false, &pk, 1));
    run_loop(c, &st, one_data);
    CHECK(strcmp(st.last, "async") == 0);
    bg_free(c);
    bg_free(p);
}

/* The daemon's BUS events pass through. */
static void
test_bus_events(void)
{
    bg_conn *c = conn();
    const struct bg_event *ev;

    CHECK_OK(c, bg_ping(c));
    ask_driver("BUS-STOP");
    ev = wait_for(c, BG_EV_BUS, NULL, 0);
    CHECK(!ev->up && strcmp(ev->state, "down") == 0);
    ask_driver("BUS-START");
    do
        ev = wait_for(c, BG_EV_BUS, NULL, 0);
    while (!ev->up);
    CHECK(strcmp(ev->state, "up") == 0);
    bg_free(c);
}

/* busgated restarts under a subscriber, a notifier and an authorizer: it
 * keeps receiving without doing anything, and is told by link events. */
/* busgated stops while events for a blocking app are still in its socket:
 * the app's next command fails to write (the daemon is gone), and yet the
 * events come, then the LINK down event with the daemon's reason. */
static void
test_last_words(void)
{
    bg_conn *s = conn(), *p = conn(), *w = conn();
    const struct bg_event *ev;
    char text[8];
    struct bg_packet pk = { text, 0, NULL, 0 };

    CHECK_OK(s, bg_subscribe(s, S("words feed"), S("t")));
    CHECK_OK(w, bg_subscribe(w, S("words feed"), S("t")));
    for (int i = 0; i < 3; i++) {
        pk.len = (size_t)snprintf(text, sizeof(text), "m%d", i);
        CHECK_OK(p, bg_publish(p, S("words feed"), S("t"), false, &pk, 1));
    }
    /* Back from the bus: w has them, so they went to s's socket too. */
    for (int i = 0; i < 3; i++)
        wait_for(w, BG_EV_DATA, S("t"));
    ask_driver("RESTART");
    CHECK(bg_ping(s) == -BG_E_CLOSED);
    for (int i = 0; i < 3; i++) {
        CHECK_OK(s, bg_next_event(s, WAIT_MS, &ev));
        pk.len = (size_t)snprintf(text, sizeof(text), "m%d", i);
        CHECK(ev->kind == BG_EV_DATA && ev->n_packets == 1 &&
            ev->packets[0].len == pk.len && memcmp(ev->packets[0].data, text, pk.len) == 0);
    }
    CHECK_OK(s, bg_next_event(s, WAIT_MS, &ev));
    CHECK(ev->kind == BG_EV_LINK && !ev->up && ev->error == BG_E_SHUTTING_DOWN);
    bg_free(s);
    bg_free(p);
    bg_free(w);
}

static void
test_restart(void)
{
    bg_conn *s = conn(), *p = conn(), *a = conn();
    struct loop_state ast = { 0 };
    const struct bg_event *ev;
    bool down = false, up = false, data = false, notified = false;
    const struct bg_packet pk = { "again", 5, NULL, 0 };
    time_t end;

    CHECK_OK(s, bg_subscribe(s, S("restart feed"), S("t")));
    CHECK_OK(s, bg_notify(s, S("restart feed")));
    CHECK_OK(s, bg_authorizer(s, S("secure")));
    CHECK_OK(s, bg_authorizer(s, NULL, 0));
    ev = wait_for(s, BG_EV_NOTIFICATION, S("t")); /* its own subscription */
    /* An event-loop subscriber alongside the blocking one. */
    CHECK_OK(a, bg_subscribe(a, S("restart feed"), S("t")));
    bg_set_callback(a, on_event, &ast);
    ask_driver("RESTART");
    end = time(NULL) + WAIT_MS / 1000 * 2;
    while (!(down && up && data && notified && ast.data_after_up > 0)) {
        CHECK(time(NULL) < end);
        loop_once(a, 0);
        if (bg_publish(p, S("restart feed"), S("t"), false, &pk, 1) != 0)
            CHECK(bg_error_code(p) == BG_E_CLOSED || bg_error_code(p) == BG_E_IO ||
                bg_error_code(p) == BG_E_BUS_DOWN ||
                bg_error_code(p) == BG_E_SHUTTING_DOWN);
        while (bg_next_event(s, 200, &ev) == 0) {
            if (ev->kind == BG_EV_LINK && !ev->up) {
                CHECK(!up);
                down = true;
            } else if (ev->kind == BG_EV_LINK) {
                CHECK(down);
                CHECK(strstr(ev->text, "4 registrations restored") != NULL);
                up = true;
            } else if (ev->kind == BG_EV_DATA && up) {
                CHECK(ev->n_packets == 1 && memcmp(ev->packets[0].data, "again", 5) == 0);
                data = true;
            } else if (ev->kind == BG_EV_NOTIFICATION && up && ev->is_add) {
                notified = true;
            }
        }
    }
    /* The restored registrations are the daemon's again. */
    CHECK(bg_subscribe(s, S("restart feed"), S("t")) == -BG_E_ALREADY_SUBSCRIBED);
    CHECK(bg_notify(s, S("restart feed")) == -BG_E_ALREADY_NOTIFYING);
    CHECK(bg_authorizer(s, S("secure")) == -BG_E_ALREADY_AUTHORIZER);
    CHECK(bg_authorizer(s, NULL, 0) == -BG_E_ALREADY_AUTHORIZER);
    CHECK(ast.link_down == 1 && ast.link_up == 1);
    bg_free(s);
    bg_free(p);
    bg_free(a);
}

/* While busgated is away, (un)subscribe, notify and authorizer are
 * recorded and reach the next daemon with the restore, in blocking and
 * event-loop use; a publish fails with a clear code. */
static void
test_offline(void)
{
    bg_conn *s = conn(), *a = conn(), *p;
    struct loop_state ast = { 0 };
    const struct bg_event *ev;
    const struct bg_packet pk = { "later", 5, NULL, 0 };
    bool up = false, data = false, notified = false, asked = false;
    time_t end;
    int r;

    bg_set_callback(a, on_event, &ast);
    ask_driver("STOP");
    /* The first command finds the daemon gone, the others a link down. */
    CHECK_OK(s, bg_subscribe(s, S("offline feed"), S("t")));
    CHECK_OK(s, bg_notify(s, S("offline feed")));
    CHECK_OK(s, bg_authorizer(s, S("offline secure")));
    CHECK(bg_subscribe(s, S("offline feed"), S("t")) == -BG_E_ALREADY_SUBSCRIBED);
    CHECK_OK(s, bg_subscribe(s, S("offline feed"), S("gone")));
    CHECK_OK(s, bg_unsubscribe(s, S("offline feed"), S("gone")));
    CHECK(bg_unnotify(s, S("not notifying")) == -BG_E_NOT_NOTIFYING);
    r = bg_publish(s, S("offline feed"), S("t"), false, &pk, 1);
    CHECK(r == -BG_E_CLOSED || r == -BG_E_IO);
    end = time(NULL) + WAIT_MS / 1000;
    while (ast.link_down == 0) {
        CHECK(time(NULL) < end);
        loop_once(a, 200);
    }
    CHECK_OK(a, bg_subscribe(a, S("offline feed"), S("t")));
    r = bg_publish(a, S("offline feed"), S("t"), false, &pk, 1);
    CHECK(r == -BG_E_CLOSED);
    ask_driver("START");
    p = conn();
    end = time(NULL) + WAIT_MS / 1000 * 2;
    while (!(up && data && notified && ast.data_after_up > 0)) {
        CHECK(time(NULL) < end);
        loop_once(a, 0);
        if (bg_publish(p, S("offline feed"), S("t"), false, &pk, 1) != 0)
            CHECK(bg_error_code(p) == BG_E_BUS_DOWN);
        while (bg_next_event(s, 200, &ev) == 0) {
            if (ev->kind == BG_EV_LINK && !ev->up) {
                CHECK(!up); /* the down that came with the stop */
            } else if (ev->kind == BG_EV_LINK) {
                CHECK(strstr(ev->text, "3 registrations restored") != NULL);
                up = true;
            } else if (ev->kind == BG_EV_DATA) {
                CHECK(ev->n_packets == 1 && memcmp(ev->packets[0].data, "later", 5) == 0);
                data = true;
            } else if (ev->kind == BG_EV_NOTIFICATION && ev->is_add &&
                name_is(ev->topic, ev->topic_len, S("n"))) {
                notified = true;
            }
        }
        if (up && !asked) {
            CHECK_OK(p, bg_subscribe(p, S("offline feed"), S("n")));
            asked = true;
        }
    }
    /* The recorded registrations are the daemon's; the undone one is not. */
    CHECK(bg_authorizer(s, S("offline secure")) == -BG_E_ALREADY_AUTHORIZER);
    CHECK(bg_notify(s, S("offline feed")) == -BG_E_ALREADY_NOTIFYING);
    CHECK_OK(s, bg_subscribe(s, S("offline feed"), S("gone")));
    CHECK(ast.link_up == 1);
    bg_free(s);
    bg_free(p);
    bg_free(a);
}

struct stat_seen {
    int lines;
    bool bus_state_up;
    bool self_session;
    bool self_named; /* bg_set_name's "pricer 1" */
};

static void
on_stat(const char *name, const char *value, void *arg)
{
    struct stat_seen *st = arg;

    st->lines++;
    if (strcmp(name, "bus_state") == 0 && strcmp(value, "up") == 0)
        st->bus_state_up = true;
    if (strcmp(name, "session") == 0 && strstr(value, " self") != NULL) {
        st->self_session = true;
        st->self_named = strstr(value, " app=pricer%201 ") != NULL;
    }
}

/* bg_stats hands over every STAT line (events meanwhile stay queued);
 * bg_hello is the greeting; a reload's REVOKED arrives as an event;
 * bg_set_name's name shows in STATS SESSIONS, also after a restart. */
static void
test_stats_and_revoked(void)
{
    bg_conn *c = conn();
    struct stat_seen st = { 0 };
    const struct bg_event *ev;

    CHECK(strncmp(bg_hello(c), "busgate ", 8) == 0 && strstr(bg_hello(c), " proto=1 "));
    CHECK_OK(c, bg_stats(c, NULL, on_stat, &st));
    CHECK(st.lines > 5 && st.bus_state_up);
    CHECK_OK(c, bg_stats(c, "SESSIONS", on_stat, &st));
    CHECK(st.self_session && !st.self_named);
    CHECK(bg_set_name(c, "", 0) == -BG_E_BAD_NAME);
    CHECK(bg_set_name(c, "\xc3(", 2) == -BG_E_BAD_NAME); /* not UTF-8 */
    {
        char long_name[65];

        memset(long_name, 'n', sizeof(long_name));
        CHECK(bg_set_name(c, long_name, 65) == -BG_E_BAD_NAME);
        CHECK_OK(c, bg_set_name(c, long_name, 64));
    }
    CHECK_OK(c, bg_set_name(c, S("pricer 1")));
    CHECK_OK(c, bg_stats(c, "SESSIONS", on_stat, &st));
    CHECK(st.self_named);
    CHECK(bg_stats(c, "NONSENSE", on_stat, &st) == -BG_E_SYNTAX);
    CHECK(bg_stats(c, NULL, NULL, NULL) == -BG_E_INVALID);
    /* One token: "LINK\nPING" would be two commands, and the PONG of the
     * second would answer the next request. */
    CHECK(bg_stats(c, "LINK\nPING", on_stat, &st) == -BG_E_INVALID);
    CHECK(bg_stats(c, "LINK SESSIONS", on_stat, &st) == -BG_E_INVALID);
    CHECK_OK(c, bg_ping(c));
    CHECK_OK(c, bg_stats(c, "SESSIONS", on_stat, &st));
    CHECK_OK(c, bg_subscribe(c, S("revoked feed"), S("t")));
    ask_driver("REVOKE"); /* access rules that leave only feed "kept" */
    ev = wait_for(c, BG_EV_REVOKED, NULL, 0);
    CHECK(strncmp(ev->text, "subscribe revoked%20feed t ", 27) == 0);
    CHECK(name_is(ev->feed, ev->feed_len, S("revoked feed")) &&
        name_is(ev->topic, ev->topic_len, S("t")));
    ask_driver("UNREVOKE");
    /* A registration the next busgated refuses to restore is reported the
     * same way, and not restored again. */
    CHECK_OK(c, bg_subscribe(c, S("restored feed"), S("t")));
    ask_driver("STOP-REVOKE");
    ask_driver("START");
    do /* the subscription the reload revoked is not restored */
        ev = wait_for(c, BG_EV_LINK, NULL, 0);
    while (!ev->up);
    CHECK(strstr(ev->text, " 1 registrations restored") != NULL);
    ev = wait_for(c, BG_EV_REVOKED, NULL, 0);
    CHECK(strncmp(ev->text, "subscribe restored%20feed t ", 28) == 0);
    CHECK(name_is(ev->feed, ev->feed_len, S("restored feed")) &&
        name_is(ev->topic, ev->topic_len, S("t")));
    CHECK(strstr(ev->text, "no access rule allows it") != NULL);
    CHECK(strstr(ev->text + 28, "subscribe") == NULL); /* said once, as a reload's */
    st.self_named = false; /* the new session was told the name too */
    CHECK_OK(c, bg_stats(c, "SESSIONS", on_stat, &st));
    CHECK(st.self_named);
    ask_driver("UNREVOKE");
    CHECK(bg_unsubscribe(c, S("restored feed"), S("t")) == -BG_E_NOT_SUBSCRIBED);
    bg_free(c);
}

static int
three_replies(const struct loop_state *st)
{
    return st->replies >= 3;
}
static int
six_replies(const struct loop_state *st)
{
    return st->replies >= 6;
}

/* bg_set_pipelined: messages stream without a reply each, a refusal comes
 * as a BG_EV_REPLY of request 0 before the PING's answer, in blocking and
 * event-loop use; registrations wait for pipelining to end. */
static void
test_pipelined(void)
{
    bg_conn *s = conn(), *p = conn(), *a = conn();
    struct loop_state ast = { 0 };
    const struct bg_event *ev;
    char big[5000], text[32];
    struct bg_packet pk = { text, 0, NULL, 0 };
    uint64_t before;

    memset(big, 'x', sizeof(big));
    CHECK_OK(s, bg_subscribe(s, S("pipe feed"), S("t")));
    CHECK_OK(p, bg_set_pipelined(p, true));
    before = bg_last_request(p);
    for (int i = 0; i < 200; i++) {
        pk.len = (size_t)snprintf(text, sizeof(text), "m%d", i);
        CHECK_OK(p, bg_publish(p, S("pipe feed"), S("t"), false, &pk, 1));
        if (i == 0) { /* written in batches: bg_flush writes now */
            CHECK(bg_want_write(p));
            CHECK_OK(p, bg_flush(p));
            CHECK(!bg_want_write(p));
        }
        if (i == 100) /* over max_name: refused */
            CHECK_OK(p, bg_publish(p, big, sizeof(big), S("t"), false, &pk, 1));
    }
    /* More than the 1 MiB queue: bg_publish waits for room, not replies. */
    {
        static char payload[600 * 1024];
        const struct bg_packet large = { payload, sizeof(payload), NULL, 0 };

        for (int i = 0; i < 4; i++)
            CHECK_OK(p, bg_publish(p, S("pipe feed"), S("nobody"), false, &large, 1));
    }
    CHECK(bg_last_request(p) == before); /* nothing waits for a reply */
    CHECK(bg_subscribe(p, S("pipe feed"), S("u")) == -BG_E_INVALID);
    CHECK(bg_stats(p, NULL, on_stat, NULL) == -BG_E_INVALID);
    CHECK_OK(p, bg_ping(p));
    CHECK(bg_next_event(p, 0, &ev) == 0);
    CHECK(ev->kind == BG_EV_REPLY && ev->error == BG_E_BAD_NAME && ev->request == 0);
    CHECK(bg_next_event(p, 0, &ev) == -BG_E_TIMEOUT);
    CHECK_OK(p, bg_set_pipelined(p, false));
    CHECK_OK(p, bg_subscribe(p, S("pipe feed"), S("u")));
    for (int i = 0; i < 200; i++) {
        ev = wait_for(s, BG_EV_DATA, S("t"));
        pk.len = (size_t)snprintf(text, sizeof(text), "m%d", i);
        CHECK(ev->n_packets == 1 && ev->packets[0].len == pk.len &&
            memcmp(ev->packets[0].data, text, pk.len) == 0);
    }
    /* Event loop: VERBOSE's +OK, the refusal, the PONG. */
    bg_set_callback(a, on_event, &ast);
    CHECK_OK(a, bg_set_pipelined(a, true));
    CHECK_OK(a, bg_publish(a, S("pipe feed"), S("t"), false, &pk, 1));
    CHECK_OK(a, bg_publish(a, big, sizeof(big), S("t"), false, &pk, 1));
    CHECK_OK(a, bg_ping(a));
    run_loop(a, &ast, three_replies);
    CHECK(ast.replies == 3 && ast.reply_errors == 1);
    bg_free(s);
    bg_free(p);
    bg_free(a);
}

/* Replies belong to the mode the daemon was in when it answered: a
 * command's -ERR sent before VERBOSE off is that command's, a message's
 * refused after it (even once VERBOSE on is queued) is a refusal. */
static void
test_pipelined_switch(void)
{
    bg_conn *a = conn();
    struct loop_state st = { 0 };
    const struct bg_packet pk = { "x", 1, NULL, 0 };
    char big[5000];
    uint64_t bad, off, ping, on;

    memset(big, 'x', sizeof(big));
    bg_set_callback(a, on_event, &st);
    CHECK_OK(a, bg_publish(a, big, sizeof(big), S("t"), false, &pk, 1));
    bad = bg_last_request(a);
    CHECK_OK(a, bg_set_pipelined(a, true));
    off = bg_last_request(a);
    CHECK_OK(a, bg_ping(a));
    ping = bg_last_request(a);
    run_loop(a, &st, three_replies);
    CHECK(st.request[0] == bad && st.error[0] == BG_E_BAD_NAME);
    CHECK(st.request[1] == off && st.error[1] == 0);
    CHECK(st.request[2] == ping && st.error[2] == 0);
    /* Pipelined: the refusal comes before VERBOSE on's +OK. */
    CHECK_OK(a, bg_publish(a, big, sizeof(big), S("t"), false, &pk, 1));
    CHECK_OK(a, bg_set_pipelined(a, false));
    on = bg_last_request(a);
    CHECK_OK(a, bg_ping(a));
    ping = bg_last_request(a);
    run_loop(a, &st, six_replies);
    CHECK(st.request[3] == 0 && st.error[3] == BG_E_BAD_NAME);
    CHECK(st.request[4] == on && st.error[4] == 0);
    CHECK(st.request[5] == ping && st.error[5] == 0);
    bg_free(a);
}

/* A name set as busgated goes away is recorded, as the header says, and
 * the next session is told it. */
static void
test_name_while_restarting(void)
{
    bg_conn *c = conn();
    struct stat_seen st = { 0 };
    const struct bg_event *ev;

    CHECK_OK(c, bg_set_name(c, S("first")));
    ask_driver("RESTART");
    CHECK_OK(c, bg_set_name(c, S("pricer 1"))); /* the daemon has gone */
    do
        ev = wait_for(c, BG_EV_LINK, NULL, 0);
    while (!ev->up);
    CHECK_OK(c, bg_stats(c, "SESSIONS", on_stat, &st));
    CHECK(st.self_named);
    bg_free(c);
}

/* A blocking pipelined publisher that only publishes: the batch write
 * that finds busgated gone must not leave the link closing for ever; the
 * next publishes reconnect when the backoff allows. */
static void
test_publisher_restart(void)
{
    static char data[4096];
    const struct bg_packet pk = { data, sizeof(data), NULL, 0 };
    bg_conn *p = conn();
    bool failed = false, again = false;
    time_t end;

    bg_set_reconnect(p, 20, 200);
    CHECK_OK(p, bg_set_pipelined(p, true));
    CHECK_OK(p, bg_publish(p, S("restart pub"), S("t"), false, &pk, 1));
    CHECK_OK(p, bg_ping(p));
    ask_driver("RESTART");
    end = time(NULL) + WAIT_MS / 1000;
    while (!again) {
        CHECK(time(NULL) < end);
        if (bg_publish(p, S("restart pub"), S("t"), false, &pk, 1) != 0)
            failed = true;
        else if (failed)
            again = true; /* reconnected */
        usleep(2000);
    }
    CHECK_OK(p, bg_ping(p));
    bg_free(p);
}

/* Pipelined messages formatted but not yet written when busgated goes are
 * lost with the link: the next daemon gets none of them after its restore,
 * only what is published after. The close is found by a read, so the link
 * goes down while they are still in the library. */
static void
test_pending_lost_with_link(void)
{
    const struct bg_packet before = { "before", 6, NULL, 0 },
                           after = { "after", 5, NULL, 0 };
    bg_conn *s = conn(), *p = conn();
    struct loop_state st = { 0 };
    const struct bg_event *ev;
    struct pollfd pfd;
    time_t end = time(NULL) + WAIT_MS / 1000;

    CHECK_OK(s, bg_subscribe(s, S("pending feed"), S("t")));
    bg_set_reconnect(p, 20, 200);
    CHECK_OK(p, bg_set_pipelined(p, true));
    bg_set_callback(p, on_event, &st);
    for (int i = 0; i < 3; i++)
        CHECK_OK(p, bg_publish(p, S("pending feed"), S("t"), false, &before, 1));
    CHECK(bg_want_write(p)); /* formatted, not written */
    ask_driver("RESTART");
    while (st.link_down == 0) { /* readable only: nothing is written */
        CHECK(time(NULL) < end);
        pfd = (struct pollfd){ .fd = bg_fd(p), .events = POLLIN };
        if (pfd.fd >= 0 && poll(&pfd, 1, 20) > 0)
            bg_process(p, BG_READABLE);
    }
    do /* s's subscription is restored before p comes back */
        ev = wait_for(s, BG_EV_LINK, NULL, 0);
    while (!ev->up);
    while (st.link_up == 0) {
        CHECK(time(NULL) < end);
        loop_once(p, 20);
    }
    CHECK_OK(p, bg_publish(p, S("pending feed"), S("t"), false, &after, 1));
    while (bg_want_write(p)) {
        CHECK(time(NULL) < end);
        loop_once(p, 20);
    }
    ev = wait_for(s, BG_EV_DATA, S("t"));
    CHECK(ev->n_packets == 1 && ev->packets[0].len == 5 &&
        memcmp(ev->packets[0].data, "after", 5) == 0);
    bg_free(s);
    bg_free(p);
}

/* Event-loop publishing into a socket that fills: what a write leaves (the
 * socket took less) waits for BG_WRITABLE, as bg_want_write says, and the
 * loop's turns carry every message through, in order. */
static void
test_event_loop_backpressure(void)
{
    enum { N = 300 };
    static char payload[1000];
    const struct bg_packet pk = { payload, sizeof(payload), NULL, 0 };
    bg_conn *s = conn(), *p = conn();
    struct loop_state st = { 0 };
    const struct bg_event *ev;
    time_t end = time(NULL) + WAIT_MS / 1000;
    int sndbuf = 4096, turns = 0;

    CHECK_OK(s, bg_subscribe(s, S("full feed"), S("t")));
    CHECK_OK(p, bg_set_pipelined(p, true));
    bg_set_callback(p, on_event, &st);
    /* A few KiB: 300 KB cannot go in the few writes bg_publish makes. */
    CHECK(setsockopt(bg_fd(p), SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf)) == 0);
    for (int i = 0; i < N; i++) {
        memcpy(payload, &i, sizeof(i));
        CHECK_OK(p, bg_publish(p, S("full feed"), S("t"), false, &pk, 1));
    }
    CHECK_OK(p, bg_flush(p));
    CHECK(bg_want_write(p));
    while (bg_want_write(p)) {
        CHECK(time(NULL) < end);
        loop_once(p, 200);
        turns++;
    }
    CHECK(turns > 1);
    for (int i = 0; i < N; i++) {
        ev = wait_for(s, BG_EV_DATA, S("t"));
        CHECK(ev->n_packets == 1 && ev->packets[0].len == sizeof(payload) &&
            memcmp(ev->packets[0].data, &i, sizeof(i)) == 0);
    }
    bg_free(s);
    bg_free(p);
}

/* Pipelined across a restart: a registration the next busgated refuses to
 * restore is REVOKED (its -ERR comes before VERBOSE off's +OK), and what
 * the application queued before the greeting goes after the restore. */
static void
test_pipelined_restore(void)
{
    bg_conn *c = conn(), *b = conn();
    struct loop_state st = { 0 };
    const struct bg_packet pk = { "x", 1, NULL, 0 };
    const struct bg_event *ev;
    time_t end = time(NULL) + WAIT_MS / 1000;
    char big[5000];
    bool asked = false;
    uint64_t ping = 0;

    memset(big, 'x', sizeof(big));
    CHECK_OK(c, bg_subscribe(c, S("gone feed"), S("t")));
    CHECK_OK(c, bg_set_pipelined(c, true));
    CHECK_OK(b, bg_subscribe(b, S("kept"), S("t")));
    CHECK_OK(b, bg_set_pipelined(b, true));
    bg_set_reconnect(b, 20, 100);
    bg_set_callback(b, on_event, &st);
    ask_driver("STOP-REVOKE"); /* the next busgated allows only feed "kept" */
    ask_driver("START");
    /* Blocking. */
    do
        ev = wait_for(c, BG_EV_LINK, NULL, 0);
    while (!ev->up);
    ev = wait_for(c, BG_EV_REVOKED, NULL, 0);
    CHECK(name_is(ev->feed, ev->feed_len, S("gone feed")));
    CHECK_OK(c, bg_ping(c));
    /* Event loop: a refused message and a ping queued before the greeting
     * is read. */
    while (st.link_up == 0) {
        CHECK(time(NULL) < end);
        loop_once(b, 20);
        if (!asked && st.link_down > 0 && bg_fd(b) >= 0) {
            CHECK_OK(b, bg_publish(b, big, sizeof(big), S("t"), false, &pk, 1));
            CHECK_OK(b, bg_ping(b));
            ping = bg_last_request(b);
            asked = true;
        }
    }
    CHECK(asked);
    run_loop(b, &st, two_replies);
    CHECK(st.request[0] == 0 && st.error[0] == BG_E_BAD_NAME);
    CHECK(st.request[1] == ping && st.error[1] == 0);
    ask_driver("UNREVOKE");
    bg_free(c);
    bg_free(b);
}

static void
on_slow_consumers(const char *name, const char *value, void *arg)
{
    if (strcmp(name, "slow_consumers") == 0)
        *(long long *)arg = strtoll(value, NULL, 10);
}

/* STAT slow_consumers: the sessions busgated has cut off so far. */
static long long
slow_consumers(bg_conn *c)
{
    long long n = -1;

    CHECK_OK(c, bg_stats(c, NULL, on_slow_consumers, &n));
    CHECK(n >= 0);
    return n;
}

/* A subscriber that does not read is cut off by the daemon: it is told
 * why, and reconnects. The publisher goes on only until STATS counts the
 * cut-off, and the subscriber reads right then, so that neither the bus's
 * pace nor the machine's load decides the outcome: a reader that starts
 * while the bus still forwards keeps up and is never cut off, and one that
 * starts after the daemon's grace finds its output (the -ERR line with it)
 * dropped. */
static void
test_slow_consumer(void)
{
    bg_conn *s = conn(), *p = conn();
    const struct bg_event *ev;
    static char block[32768];
    const struct bg_packet pk = { block, sizeof(block), NULL, 0 };
    time_t end = time(NULL) + WAIT_MS / 1000;
    long long before;
    int sent = 0, n = 0;

    CHECK_OK(s, bg_subscribe(s, S("slow"), S("t")));
    before = slow_consumers(p);
    while (slow_consumers(p) == before) {
        CHECK(time(NULL) < end);
        if (sent < 200) {
            CHECK_OK(p, bg_publish(p, S("slow"), S("t"), false, &pk, 1));
            sent++;
        } else {
            usleep(10 * 1000); /* the bus still forwards what was sent */
        }
    }
    /* Cut off, it never sees what comes after. */
    CHECK_OK(p, bg_publish(p, S("slow"), S("t"), false, &pk, 1));
    sent++;
    for (;;) {
        CHECK_OK(s, bg_next_event(s, WAIT_MS, &ev));
        if (ev->kind == BG_EV_DATA)
            n++;
        else if (ev->kind == BG_EV_LINK)
            break;
    }
    CHECK(!ev->up && ev->error == BG_E_SLOW_CONSUMER);
    CHECK(strstr(ev->text, "slow-consumer") != NULL);
    CHECK(n < sent);
    ev = wait_for(s, BG_EV_LINK, NULL, 0);
    CHECK(ev->up);
    bg_free(s);
    bg_free(p);
}

/*
 * A scripted stand-in for busgated, for what the real one never does (a
 * future protocol, silence, garbage, oversize events): a child process
 * that sends greeting, then reply once it has read a line starting with
 * key (NULL: never), then holds the connection until the client leaves.
 */
struct fake {
    char path[108];
    pid_t pid;
};

/* Set before fake_start: the fake closes once it has sent its reply. */
static bool fake_close_after_reply;
/* Set before fake_start: more replies after the first, in pairs of a key
 * and a reply, each sent once a line with its key comes (a NULL key: 100
 * ms after the reply before); a NULL reply ends the list. */
static const char *fake_more[8];

static void
fake_serve(int srv, const char *greeting, const char *key, const char *reply,
    size_t reply_len)
{
    int fd = accept(srv, NULL, NULL);
    char buf[65536];
    size_t have = 0;
    ssize_t n;

    if (fd < 0)
        _exit(1);
    if (write(fd, greeting, strlen(greeting)) < 0)
        _exit(1);
    while (key != NULL) {
        if ((n = read(fd, buf + have, sizeof(buf) - 1 - have)) <= 0)
            _exit(0);
        have += (size_t)n;
        buf[have] = '\0';
        if (strncmp(buf, key, strlen(key)) == 0 || strstr(buf, key) != NULL)
            break;
    }
    for (size_t o = 0; key != NULL && o < reply_len; o += (size_t)n)
        if ((n = write(fd, reply + o, reply_len - o)) <= 0)
            _exit(0);
    for (const char **m = fake_more; m < fake_more + 8 && m[1] != NULL; m += 2) {
        for (have = 0; m[0] != NULL;) {
            if ((n = read(fd, buf + have, sizeof(buf) - 1 - have)) <= 0)
                _exit(0);
            have += (size_t)n;
            buf[have] = '\0';
            if (strstr(buf, m[0]) != NULL)
                break;
        }
        if (m[0] == NULL)
            usleep(100000);
        if (write(fd, m[1], strlen(m[1])) < 0)
            _exit(0);
    }
    while (!fake_close_after_reply && read(fd, buf, sizeof(buf)) > 0)
        ;
    _exit(0);
}

static void
fake_start(struct fake *f, const char *greeting, const char *key, const char *reply,
    size_t reply_len)
{
    static unsigned started; /* a path each: two may run at once */
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    int srv = socket(AF_UNIX, SOCK_STREAM, 0);

    snprintf(f->path, sizeof(f->path), "/tmp/busgate-libfake-%d-%u.sock", (int)getpid(),
        started++);
    unlink(f->path);
    memcpy(sa.sun_path, f->path, strlen(f->path) + 1);
    CHECK(srv >= 0 && bind(srv, (struct sockaddr *)&sa, sizeof(sa)) == 0 &&
        listen(srv, 1) == 0);
    fflush(NULL);
    CHECK((f->pid = fork()) >= 0);
    if (f->pid == 0)
        fake_serve(srv, greeting, key, reply, reply_len);
    close(srv);
}

static void
fake_stop(struct fake *f)
{
    kill(f->pid, SIGTERM);
    waitpid(f->pid, NULL, 0);
    unlink(f->path);
}

/* A connection to the fake: limits set, no reconnecting, a short timeout. */
static bg_conn *
fake_conn(struct fake *f, int want)
{
    bg_conn *c = bg_new(f->path);

    CHECK(c != NULL);
    bg_set_timeout(c, 500);
    bg_set_reconnect(c, 0, 0);
    bg_set_limits(c, 100, 2);
    CHECK(bg_open(c) == want);
    return c;
}

#define FAKE_HELLO "HELLO busgate 9.9 proto=1 max_line=65536 max_payload=1048576 bus=up\n"

/* DATA past bg_set_limits is skipped in its place; "\r\n" is accepted; a
 * line that is not the protocol ends the connection, saying what it was. */
static void
test_fake_limits(void)
{
    static const char reply[] = "+OK\r\n"
                                "DATA F T u h delta multicast 1 1 1\nabc\n"
                                "DATA F T u h delta multicast 1 1\nab\n"
                                "DATA F T u h image multicast 3:1 2\r\nabcde\r\n";
    static char big[300];
    struct fake f;
    bg_conn *c;
    const struct bg_event *ev;
    size_t n;

    /* The oversize payload goes in the middle, garbage at the end. */
    n = (size_t)snprintf(big, sizeof(big), "DATA F T u h delta multicast 101\n");
    memset(big + n, 'x', 101);
    memcpy(big + n + 101, "\nWHAT IS THIS\n", 14);
    {
        static char script[1024];
        size_t k = sizeof(reply) - 1;

        memcpy(script, reply, k);
        memcpy(script + k, big, n + 115);
        fake_start(&f, FAKE_HELLO, "SUB", script, k + n + 115);
    }
    c = fake_conn(&f, 0);
    CHECK_OK(c, bg_subscribe(c, S("F"), S("T")));
    CHECK_OK(c, bg_next_event(c, WAIT_MS, &ev));
    CHECK(ev->kind == BG_EV_SKIPPED && strcmp(ev->text, "3 bytes in 3 packets") == 0);
    CHECK_OK(c, bg_next_event(c, WAIT_MS, &ev));
    CHECK(ev->kind == BG_EV_DATA && ev->n_packets == 2 && ev->packets[1].len == 1);
    CHECK_OK(c, bg_next_event(c, WAIT_MS, &ev));
    CHECK(ev->kind == BG_EV_DATA && ev->n_packets == 2 && ev->is_image);
    CHECK(ev->packets[0].len == 3 && memcmp(ev->packets[0].data, "abc", 3) == 0);
    CHECK(ev->packets[0].n_entitlements == 1 && ev->packets[0].entitlements[0] == 1);
    CHECK(ev->packets[1].len == 2 && memcmp(ev->packets[1].data, "de", 2) == 0);
    CHECK_OK(c, bg_next_event(c, WAIT_MS, &ev));
    CHECK(ev->kind == BG_EV_SKIPPED && strcmp(ev->text, "101 bytes in 1 packets") == 0);
    CHECK_OK(c, bg_next_event(c, WAIT_MS, &ev));
    CHECK(ev->kind == BG_EV_LINK && !ev->up && ev->error == BG_E_PROTOCOL);
    CHECK(strcmp(ev->text, "unexpected line from busgated: WHAT IS THIS") == 0);
    CHECK(bg_next_event(c, WAIT_MS, &ev) == -BG_E_CLOSED); /* reconnecting off */
    bg_free(c);
    fake_stop(&f);
}

/* A stream that fills every read, its events cut anywhere by the reads
 * (payloads of 0 to 12 KiB: some carried to the start of the next read,
 * some past what is carried), read in event-loop use while the library's
 * read buffer grows: every event whole and in order. Two connections in
 * turn share the thread's read buffer, each keeping the part of an event
 * its last read cut; one's callback also runs the other's bg_process (the
 * buffer is then its, and the other reads into its own). */
#define STREAM_EVENTS 400

struct stream_state {
    unsigned next;
    bool bad;
    bg_conn *other; /* run from the callback now and then */
};

static size_t
stream_len(unsigned i)
{
    return (size_t)(i * 7919u) % 12289u;
}

static void
on_stream(bg_conn *c, const struct bg_event *ev, void *arg)
{
    struct stream_state *st = arg;
    size_t len = stream_len(st->next);
    const uint8_t *d;

    (void)c;
    if (ev->kind != BG_EV_DATA || ev->n_packets != 1 || ev->packets[0].len != len) {
        st->bad = true;
        return;
    }
    d = ev->packets[0].data;
    for (size_t k = 0; k < len; k++)
        if (d[k] != (uint8_t)(st->next + k))
            st->bad = true;
    st->next++;
    if (st->other != NULL && st->next % 7 == 0)
        loop_once(st->other, 0);
}

static void
test_fake_stream(void)
{
    size_t cap = 8 + STREAM_EVENTS * (12289 + 64), n = 0;
    char *script = malloc(cap);
    struct stream_state st[2] = { { 0, false, NULL }, { 0, false, NULL } };
    time_t end = time(NULL) + WAIT_MS / 1000;
    struct fake f[2];
    bg_conn *c[2];

    CHECK(script != NULL);
    n += (size_t)snprintf(script, cap, "+OK\n");
    for (unsigned i = 0; i < STREAM_EVENTS; i++) {
        size_t len = stream_len(i);

        n += (size_t)snprintf(script + n, cap - n, "DATA F T u h delta multicast %zu\n", len);
        for (size_t k = 0; k < len; k++)
            script[n++] = (char)(uint8_t)(i + k);
        script[n++] = '\n';
    }
    for (int i = 0; i < 2; i++) {
        fake_start(&f[i], FAKE_HELLO, "SUB", script, n);
        c[i] = bg_new(f[i].path);
        CHECK(c[i] != NULL);
        bg_set_reconnect(c[i], 0, 0);
        CHECK(bg_open(c[i]) == 0);
        CHECK_OK(c[i], bg_subscribe(c[i], S("F"), S("T")));
        bg_set_callback(c[i], on_stream, &st[i]);
    }
    st[0].other = c[1];
    while ((st[0].next < STREAM_EVENTS || st[1].next < STREAM_EVENTS) && !st[0].bad &&
        !st[1].bad && time(NULL) < end) {
        loop_once(c[0], 10);
        loop_once(c[1], 10);
    }
    for (int i = 0; i < 2; i++) {
        CHECK(st[i].next == STREAM_EVENTS && !st[i].bad);
        bg_free(c[i]);
        fake_stop(&f[i]);
    }
    free(script);
}

/* A DATA line read while a blocking command queued events, its payload
 * read after the queued events were taken: the event is the held line's,
 * not the last queued one's. */
static void
test_fake_payload_after_queue(void)
{
    static const char reply[] = "+OK\n"
                                "data F T u h delta multicast 2\nhi\n"
                                "DATA F T u h delta multicast 3\nxyz\n"
                                "DATA F T u h delta multicast 10\n01234";
    struct fake f;
    bg_conn *c;
    const struct bg_event *ev;

    fake_more[1] = "56789\n";
    fake_start(&f, FAKE_HELLO, "SUB", reply, sizeof(reply) - 1);
    memset(fake_more, 0, sizeof(fake_more));
    c = fake_conn(&f, 0);
    CHECK_OK(c, bg_subscribe(c, S("F"), S("T")));
    CHECK_OK(c, bg_next_event(c, WAIT_MS, &ev)); /* any case, as commands */
    CHECK(ev->kind == BG_EV_DATA && ev->n_packets == 1 && ev->packets[0].len == 2);
    CHECK(memcmp(ev->packets[0].data, "hi", 2) == 0);
    CHECK_OK(c, bg_next_event(c, WAIT_MS, &ev));
    CHECK(ev->kind == BG_EV_DATA && ev->n_packets == 1 && ev->packets[0].len == 3);
    CHECK_OK(c, bg_next_event(c, WAIT_MS, &ev));
    CHECK(ev->kind == BG_EV_DATA && ev->n_packets == 1 && ev->packets[0].len == 10);
    CHECK(memcmp(ev->packets[0].data, "0123456789", 10) == 0);
    CHECK(strcmp(ev->feed, "F") == 0 && strcmp(ev->topic, "T") == 0);
    bg_free(c);
    fake_stop(&f);
}

/* The other way round: a DATA line read by bg_next_event, its payload
 * read while a blocking command waits: the command queues the whole
 * event, line and payload, and it is the next one taken. */
static void
test_fake_payload_in_command(void)
{
    struct fake f;
    bg_conn *c;
    const struct bg_event *ev;

    fake_more[1] = "DATA F T u h delta multicast 10\n01234";
    fake_more[2] = "PING";
    fake_more[3] = "56789\nPONG\nDATA F T u h image multicast 3\nabc\n";
    fake_start(&f, FAKE_HELLO, "SUB", "+OK\n", 4);
    memset(fake_more, 0, sizeof(fake_more));
    c = fake_conn(&f, 0);
    CHECK_OK(c, bg_subscribe(c, S("F"), S("T")));
    CHECK(bg_next_event(c, 200, &ev) == -BG_E_TIMEOUT);
    CHECK_OK(c, bg_ping(c));
    CHECK_OK(c, bg_next_event(c, WAIT_MS, &ev));
    CHECK(ev->kind == BG_EV_DATA && ev->n_packets == 1 && ev->packets[0].len == 10);
    CHECK(memcmp(ev->packets[0].data, "0123456789", 10) == 0);
    CHECK_OK(c, bg_next_event(c, WAIT_MS, &ev));
    CHECK(ev->kind == BG_EV_DATA && ev->is_image && ev->packets[0].len == 3);
    bg_free(c);
    fake_stop(&f);
}

/* The connection ends in the middle of a DATA event while a blocking
 * command waits (busgated killed mid-write): the events queued before it
 * are delivered, then the LINK down event. The cut event's line must not
 * reach the queue without its payload: the LINK line would be read as the
 * payload and the queue dropped as garbled, LINK event and all. */
static void
test_fake_queue_cut(void)
{
    static const char cut[] = "DATA F T u h delta multicast 8\n00000001\n"
                              "DATA F T u h delta multicast 8\n00000002\n"
                              "DATA F T u h delta multicast 8\n0000";
    struct fake f;
    bg_conn *c;
    const struct bg_event *ev;

    fake_close_after_reply = true;
    fake_start(&f, FAKE_HELLO, "PING", cut, sizeof(cut) - 1);
    fake_close_after_reply = false;
    c = fake_conn(&f, 0);
    CHECK(bg_ping(c) == -BG_E_CLOSED);
    for (int i = 1; i <= 2; i++) {
        CHECK_OK(c, bg_next_event(c, WAIT_MS, &ev));
        CHECK(ev->kind == BG_EV_DATA && ev->packets[0].len == 8);
        CHECK(((const char *)ev->packets[0].data)[7] == '0' + i);
    }
    CHECK_OK(c, bg_next_event(c, WAIT_MS, &ev));
    CHECK(ev->kind == BG_EV_LINK && !ev->up && ev->error == BG_E_CLOSED);
    CHECK(bg_next_event(c, WAIT_MS, &ev) == -BG_E_CLOSED); /* reconnecting off */
    bg_free(c);
    fake_stop(&f);
}

/* A blocking command reads on for its reply, queueing the events ahead of
 * it: past bg_set_max_queued the connection ends as a slow consumer's,
 * instead of the application's memory taking all the daemon sends. */
static void
test_fake_queue_bound(void)
{
    static char flood[16000 * 40 + 1]; /* more than one read: 4 x 64 KiB */
    struct fake f;
    bg_conn *c;
    const struct bg_event *ev;
    size_t n = 0;
    int data = 0;

    for (int i = 0; i < 16000; i++) /* no PONG: the ping waits through all of it */
        n += (size_t)snprintf(flood + n, sizeof(flood) - n,
            "DATA F T u h delta multicast 8\n%08d\n", i);
    fake_start(&f, FAKE_HELLO, "PING", flood, n);
    c = fake_conn(&f, 0);
    bg_set_max_queued(c, 16384);
    CHECK(bg_ping(c) == -BG_E_CLOSED);
    CHECK(strstr(bg_errstr(c), "slow-consumer: over 16384 bytes of events queued") != NULL);
    for (;;) {
        CHECK_OK(c, bg_next_event(c, WAIT_MS, &ev));
        if (ev->kind != BG_EV_DATA)
            break;
        CHECK(ev->n_packets == 1 && ev->packets[0].len == 8);
        data++;
    }
    CHECK(ev->kind == BG_EV_LINK && !ev->up && ev->error == BG_E_SLOW_CONSUMER);
    CHECK(data > 0 && data < 16000);
    CHECK(bg_next_event(c, WAIT_MS, &ev) == -BG_E_CLOSED); /* reconnecting off */
    bg_free(c);
    fake_stop(&f);
}

/* bg_publish_typed: at bus protocol 6 the content type reaches the
 * subscriber (ev->content_type; an empty one shows as ""); a gateway whose
 * bus speaks 3 to 5 refuses it. Run against both. */
static void
test_content_type(void)
{
    bg_conn *s = conn(), *p = conn();
    const struct bg_packet pk = { "{}", 2, NULL, 0 };
    const struct bg_event *ev;

    if (strstr(bg_hello(p), " bus_protocol=6") == NULL) {
        CHECK(bg_publish_typed(p, S("typed"), S("t"), S("text/plain"), &pk, 1) ==
            -BG_E_SYNTAX);
        CHECK(strstr(bg_errstr(p), "needs bus protocol 6") != NULL);
    } else {
        CHECK_OK(s, bg_subscribe(s, S("typed"), S("t é")));
        CHECK_OK(p,
            bg_publish_typed(p, S("typed"), S("t é"), S("application/json; v=1"), &pk, 1));
        ev = wait_for(s, BG_EV_DATA, S("t é"));
        CHECK(strcmp(ev->content_type, "application/json; v=1") == 0);
        CHECK(ev->n_packets == 1 && memcmp(ev->packets[0].data, "{}", 2) == 0);
        CHECK_OK(p, bg_publish_typed(p, S("typed"), S("t é"), "", 0, &pk, 1));
        ev = wait_for(s, BG_EV_DATA, S("t é"));
        CHECK(strcmp(ev->content_type, "") == 0);
    }
    CHECK(bg_publish_typed(p, S("typed"), S("t"), NULL, 0, &pk, 1) == -BG_E_INVALID);
    bg_free(s);
    bg_free(p);
}

/* Event-loop use, a command in flight when the connection ends: its
 * BG_EV_REPLY still comes (BG_E_CLOSED, its request number), before the
 * LINK down event, so that an application waiting on it is not left
 * waiting for ever. */
struct flight {
    uint64_t request;
    int error, replies, link_down;
    bool reply_first;
};

static void
on_flight(bg_conn *c, const struct bg_event *ev, void *arg)
{
    struct flight *fl = arg;

    (void)c;
    if (ev->kind == BG_EV_REPLY) {
        fl->replies++;
        fl->request = ev->request;
        fl->error = ev->error;
        fl->reply_first = fl->link_down == 0;
    } else if (ev->kind == BG_EV_LINK && !ev->up) {
        fl->link_down++;
    }
}

static void
test_fake_in_flight(void)
{
    static const char bye[] = "-ERR shutting-down busgated is stopping\n";
    struct fake f;
    struct flight fl = { 0 };
    bg_conn *c;
    uint64_t id;
    time_t end = time(NULL) + WAIT_MS / 1000;

    fake_start(&f, FAKE_HELLO, "PING", bye, sizeof(bye) - 1);
    c = fake_conn(&f, 0);
    bg_set_callback(c, on_flight, &fl);
    CHECK_OK(c, bg_ping(c));
    id = bg_last_request(c);
    CHECK(id != 0);
    while (fl.link_down == 0) {
        CHECK(time(NULL) < end);
        loop_once(c, 200);
    }
    CHECK(fl.replies == 1 && fl.reply_first);
    CHECK(fl.request == id && fl.error == BG_E_CLOSED);
    bg_free(c);
    fake_stop(&f);
}

/* The greeting: another protocol, not busgated, silence, a refusal. */
static void
test_fake_greeting(void)
{
    struct fake f;
    bg_conn *c;

    fake_start(&f, "HELLO busgate 9.9 proto=2 bus=up\n", NULL, NULL, 0);
    c = fake_conn(&f, -BG_E_PROTOCOL);
    CHECK(strstr(bg_errstr(c), "busgated speaks line protocol 2") != NULL);
    bg_free(c);
    fake_stop(&f);
    fake_start(&f, "SSH-2.0-OpenSSH_9.2\r\n", NULL, NULL, 0);
    c = fake_conn(&f, -BG_E_PROTOCOL);
    CHECK(strstr(bg_errstr(c), "unexpected line from busgated: SSH-2.0-OpenSSH_9.2?") !=
        NULL);
    bg_free(c);
    fake_stop(&f);
    fake_start(&f, "", NULL, NULL, 0);
    c = fake_conn(&f, -BG_E_TIMEOUT);
    bg_free(c);
    fake_stop(&f);
    fake_start(&f, "-ERR too-many-sessions the gateway serves its maximum\n", NULL, NULL,
        0);
    c = fake_conn(&f, -BG_E_TOO_MANY_SESSIONS);
    CHECK(strstr(bg_errstr(c), "too-many-sessions the gateway") != NULL);
    bg_free(c);
    fake_stop(&f);
}

/* A VERBOSE that times out ends the connection: its late +OK would leave
 * every later reply matched to the wrong command. */
static void
test_fake_verbose_timeout(void)
{
    struct fake f;
    bg_conn *c;
    const struct bg_event *ev;

    fake_start(&f, FAKE_HELLO, "VERBOSE", "", 0); /* reads, never answers */
    c = fake_conn(&f, 0);
    CHECK(bg_set_pipelined(c, true) == -BG_E_TIMEOUT);
    CHECK(bg_next_event(c, 0, &ev) == 0);
    CHECK(ev->kind == BG_EV_LINK && !ev->up && ev->error == BG_E_TIMEOUT);
    CHECK(bg_ping(c) < 0 &&
        strstr(bg_errstr(c), "not connected") != NULL); /* no reconnecting */
    bg_free(c);
    fake_stop(&f);
}

/* A hung daemon whose listen backlog is full: bg_open fails at once (a
 * blocking connect would wait for ever). The alarm fails the test if not. */
static void
test_backlog_full(void)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    int srv = socket(AF_UNIX, SOCK_STREAM, 0), filler = socket(AF_UNIX, SOCK_STREAM, 0);
    bg_conn *c;

    snprintf(sa.sun_path, sizeof(sa.sun_path), "/tmp/busgate-libfull-%d.sock",
        (int)getpid());
    unlink(sa.sun_path);
    /* Backlog 0: one connection waiting to be accepted fills it. */
    CHECK(srv >= 0 && filler >= 0 && bind(srv, (struct sockaddr *)&sa, sizeof(sa)) == 0 &&
        listen(srv, 0) == 0);
    CHECK(connect(filler, (struct sockaddr *)&sa, sizeof(sa)) == 0);
    c = bg_new(sa.sun_path);
    bg_set_timeout(c, 300);
    alarm(10);
    CHECK(bg_open(c) == -BG_E_IO);
    alarm(0);
    CHECK(strstr(bg_errstr(c), "not accepting connections") != NULL);
    bg_free(c);
    close(filler);
    close(srv);
    unlink(sa.sun_path);
}

/* Pipelined messages queued when the app frees the connection are written,
 * not dropped. */
static void
test_free_writes_queued(void)
{
    bg_conn *s = conn(), *p = conn();
    char text[8];
    struct bg_packet pk = { text, 0, NULL, 0 };
    const struct bg_event *ev;

    CHECK_OK(s, bg_subscribe(s, S("free feed"), S("t")));
    CHECK_OK(p, bg_set_pipelined(p, true));
    for (int i = 0; i < 5; i++) {
        pk.len = (size_t)snprintf(text, sizeof(text), "m%d", i);
        CHECK_OK(p, bg_publish(p, S("free feed"), S("t"), false, &pk, 1));
    }
    CHECK(bg_want_write(p)); /* a batch not yet written */
    bg_free(p);
    for (int i = 0; i < 5; i++) {
        ev = wait_for(s, BG_EV_DATA, S("t"));
        pk.len = (size_t)snprintf(text, sizeof(text), "m%d", i);
        CHECK(
            ev->packets[0].len == pk.len && memcmp(ev->packets[0].data, text, pk.len) == 0);
    }
    bg_free(s);
}

/* A daemon at listen.max_sessions greets, refuses and closes: the backoff
 * keeps doubling (a session refused at once does not reset it), so the
 * library does not dial it every min_ms. The fake counts the dials. */
static void
test_refused_backoff(void)
{
    static const char refuse[] = FAKE_HELLO "-ERR too-many-sessions too many sessions\n";
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    int srv = socket(AF_UNIX, SOCK_STREAM, 0), status, n = 0;
    const struct bg_event *ev;
    struct timespec t0, t;
    pid_t pid;
    bg_conn *c;

    snprintf(sa.sun_path, sizeof(sa.sun_path), "/tmp/busgate-librefuse-%d.sock",
        (int)getpid());
    unlink(sa.sun_path);
    CHECK(srv >= 0 && bind(srv, (struct sockaddr *)&sa, sizeof(sa)) == 0 &&
        listen(srv, 8) == 0);
    fflush(NULL);
    CHECK((pid = fork()) >= 0);
    if (pid == 0) { /* 2 s of refusing whoever dials */
        struct pollfd p = { .fd = srv, .events = POLLIN };

        while (poll(&p, 1, 2000) > 0) {
            int fd = accept(srv, NULL, NULL);

            /* MSG_NOSIGNAL: a dial the client gave up (bg_free at the end)
             * must not kill this child with SIGPIPE. */
            if (fd >= 0 && send(fd, refuse, sizeof(refuse) - 1, MSG_NOSIGNAL) > 0)
                n++;
            if (fd >= 0)
                close(fd);
        }
        _exit(n > 250 ? 250 : n);
    }
    c = bg_new(sa.sun_path);
    bg_set_reconnect(c, 20, 2000);
    CHECK(bg_open(c) == -BG_E_TOO_MANY_SESSIONS);
    clock_gettime(CLOCK_MONOTONIC, &t0);
    do {
        (void)bg_next_event(c, 100, &ev);
        clock_gettime(CLOCK_MONOTONIC, &t);
    } while (t.tv_sec - t0.tv_sec < 2);
    bg_free(c);
    CHECK(waitpid(pid, &status, 0) == pid && WIFEXITED(status));
    /* 20, 40, 80 ... ms: about 8 dials in the first 2 s (every 20 ms: 100). */
    fprintf(stderr, "dials: %d\n", WEXITSTATUS(status));
    CHECK(WEXITSTATUS(status) <= 12);
    close(srv);
    unlink(sa.sun_path);
}

/* An access-rule refusal has its own code, as every daemon code does. */
static void
test_fake_perm(void)
{
    static const char reply[] = "-ERR perm subscribe F: no access rule allows it\n";
    struct fake f;
    bg_conn *c;

    fake_start(&f, FAKE_HELLO, "SUB", reply, sizeof(reply) - 1);
    c = fake_conn(&f, 0);
    CHECK(bg_subscribe(c, S("F"), S("T")) == -BG_E_PERM);
    CHECK(strcmp(bg_error_name(BG_E_PERM), "perm") == 0);
    CHECK(strstr(bg_errstr(c), "perm subscribe F: no access rule") != NULL);
    bg_free(c);
    fake_stop(&f);
}

/* A daemon that accepts and never greets (here: a listener that never
 * accepts) is given bg_set_timeout from connecting, whichever call waits:
 * bg_next_event still returns at its own timeout, and event-loop use is
 * told when to call bg_process for it. */
static void
test_greeting_deadline(void)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    int srv = socket(AF_UNIX, SOCK_STREAM, 0);
    struct loop_state st = { 0 };
    const struct bg_event *ev;
    struct timespec t0, t1;
    time_t end = time(NULL) + WAIT_MS / 1000;
    bg_conn *c;

    snprintf(sa.sun_path, sizeof(sa.sun_path), "/tmp/busgate-libsilent-%d.sock",
        (int)getpid());
    unlink(sa.sun_path);
    CHECK(srv >= 0 && bind(srv, (struct sockaddr *)&sa, sizeof(sa)) == 0 &&
        listen(srv, 64) == 0);
    c = bg_new(sa.sun_path);
    bg_set_timeout(c, 300);
    bg_set_reconnect(c, 20, 40);
    CHECK(bg_open(c) == -BG_E_TIMEOUT);
    CHECK(strstr(bg_errstr(c), "no greeting from busgated in 300 ms") != NULL);
    /* A greeting due in 3 s does not hold a 100 ms wait... */
    bg_set_timeout(c, 3000);
    clock_gettime(CLOCK_MONOTONIC, &t0);
    CHECK(bg_next_event(c, 100, &ev) == -BG_E_TIMEOUT);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    CHECK(t1.tv_sec - t0.tv_sec < 2);
    CHECK(bg_fd(c) >= 0); /* connected, waiting for the greeting */
    /* ... and ends the connection when due. */
    CHECK_OK(c, bg_next_event(c, WAIT_MS, &ev));
    CHECK(ev->kind == BG_EV_LINK && !ev->up && ev->error == BG_E_TIMEOUT);
    CHECK(strstr(ev->text, "no greeting from busgated in 3000 ms") != NULL);
    /* Event loop: bg_timeout_ms covers the greeting too. */
    bg_set_timeout(c, 300);
    bg_set_callback(c, on_event, &st);
    while (st.link_down < 2) {
        int t = bg_timeout_ms(c);

        CHECK(time(NULL) < end);
        CHECK(bg_fd(c) < 0 || (t >= 0 && t <= 300));
        loop_once(c, 1000);
    }
    bg_free(c);
    close(srv);
    unlink(sa.sun_path);
}

/* A line without end is bounded; a silent daemon times a command out, and
 * a negative timeout waits for ever (here: until the line ends it). */
static void
test_fake_bounds(void)
{
    static char endless[(17u << 20) + 16];
    struct fake f;
    bg_conn *c;

    memcpy(endless, "STAT x ", 7);
    memset(endless + 7, 'y', sizeof(endless) - 7);
    fake_start(&f, FAKE_HELLO, "PING", endless, sizeof(endless));
    c = fake_conn(&f, 0);
    bg_set_timeout(c, -1);
    CHECK(bg_ping(c) == -BG_E_CLOSED);
    CHECK(strstr(bg_errstr(c), "a line from busgated is longer than 16777216 bytes"));
    bg_free(c);
    fake_stop(&f);
    fake_start(&f, FAKE_HELLO, NULL, NULL, 0);
    c = fake_conn(&f, 0);
    CHECK(bg_ping(c) == -BG_E_TIMEOUT);
    CHECK(bg_open(c) == -BG_E_INVALID);
    bg_free(c);
    fake_stop(&f);
}

int
main(int argc, char **argv)
{
    static const struct {
        const char *name;
        void (*fn)(void);
    } tests[] = {
        { "connect_refused", test_connect_refused },
        { "path_too_long", test_path_too_long },
        { "publish_binary", test_publish_binary },
        { "errors", test_errors },
        { "line_bound", test_line_bound },
        { "notify_and_send", test_notify_and_send },
        { "authorize", test_authorize },
        { "authorize_all_feeds", test_authorize_all_feeds },
        { "event_outlives_commands", test_event_outlives_commands },
        { "event_loop", test_event_loop },
        { "timeout_zero", test_timeout_zero },
        { "bus_events", test_bus_events },
        { "restart", test_restart },
        { "last_words", test_last_words },
        { "name_while_restarting", test_name_while_restarting },
        { "publisher_restart", test_publisher_restart },
        { "offline", test_offline },
        { "first_open_event_loop", test_first_open_event_loop },
        { "register_before_greeting", test_register_before_greeting },
        { "stats_and_revoked", test_stats_and_revoked },
        { "pipelined", test_pipelined },
        { "pipelined_switch", test_pipelined_switch },
        { "pending_lost_with_link", test_pending_lost_with_link },
        { "event_loop_backpressure", test_event_loop_backpressure },
        { "free_writes_queued", test_free_writes_queued },
        { "pipelined_restore", test_pipelined_restore },
        { "slow_consumer", test_slow_consumer },
        { "fake_limits", test_fake_limits },
        { "fake_in_flight", test_fake_in_flight },
        { "content_type", test_content_type },
        { "fake_greeting", test_fake_greeting },
        { "fake_perm", test_fake_perm },
        { "backlog_full", test_backlog_full },
        { "refused_backoff", test_refused_backoff },
        { "fake_verbose_timeout", test_fake_verbose_timeout },
        { "greeting_deadline", test_greeting_deadline },
        { "fake_queue_bound", test_fake_queue_bound },
        { "fake_queue_cut", test_fake_queue_cut },
        { "fake_stream", test_fake_stream },
        { "fake_payload_after_queue", test_fake_payload_after_queue },
        { "fake_payload_in_command", test_fake_payload_in_command },
        { "fake_bounds", test_fake_bounds },
    };

    if (argc < 2) {
        fprintf(stderr, "usage: %s SOCKET [TEST...]\n", argv[0]);
        return 2;
    }
    sock_path = argv[1];
    for (size_t i = 0; i < sizeof(tests) / sizeof(tests[0]); i++) {
        bool run = argc == 2;

        for (int k = 2; k < argc; k++)
            run = run || strcmp(argv[k], tests[i].name) == 0;
        if (!run)
            continue;
        fprintf(stderr, "test %s\n", tests[i].name);
        tests[i].fn();
        fprintf(stderr, "ok %s\n", tests[i].name);
    }
    return failures;
}
