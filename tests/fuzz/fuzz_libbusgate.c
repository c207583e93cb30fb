/*
 * libFuzzer target for libbusgate's reading side: the input is what a
 * daemon says on the socket. A thread plays busgated on a Unix socket: it
 * accepts, writes the greeting, and once bg_open has returned the input
 * (so that it arrives as events do, not with the greeting), then closes
 * its side and reads until the library leaves. The library reads it as an
 * application would, and answers events with commands.
 *
 * The first input byte says how the application uses the connection:
 *   bit 0: event-loop use (a callback, bg_process) instead of bg_next_event
 *   bit 1: a bg_ping after each event
 *   bit 2: a bg_publish of each DATA event's own names and packets, and a
 *          bg_authorize of each AUTHREQ
 *   bit 3: pipelined (VERBOSE off)
 *   bit 4: small limits (bg_set_limits, bg_set_max_queued)
 *   bit 5: no greeting of ours: the input brings its own
 *
 * Checks, beyond "no crash, no leak, no UB": every event's strings are
 * NUL-terminated at their length and its packets are readable; an event is
 * the same after the commands made while it is held as before them (in
 * blocking use those commands read on, into the buffers the event came
 * from).
 */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "busgate.h"
#include "fuzz.h"

enum {
    USE_LOOP = 1,
    USE_PING = 2,
    USE_ANSWER = 4,
    USE_PIPELINED = 8,
    USE_SMALL_LIMITS = 16,
    USE_OWN_GREETING = 32,
};

#define GREETING "HELLO busgate 9.9 proto=1 max_line=65536 max_payload=1048576 bus=up\n"
/* Events read per input at most: a script cannot make a run endless. */
#define MAX_EVENTS 4096
#define WAIT_MS 5000

/* The fake daemon: its socket, the script for the next connection (the
 * greeting's length: what goes before the go byte), and the pipe that
 * says go. */
static struct {
    pthread_mutex_t mu;
    char path[108];
    int srv, go[2];
    uint8_t *script;
    size_t len, greeting;
} fake = { .mu = PTHREAD_MUTEX_INITIALIZER, .srv = -1 };

static void
send_all(int fd, const uint8_t *p, size_t n)
{
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);

        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return; /* the library left early */
        p += w;
        n -= (size_t)w;
    }
}

static void *
serve(void *arg)
{
    char sink[4096];

    (void)arg;
    for (;;) {
        int fd = accept(fake.srv, NULL, NULL);
        uint8_t *script;
        size_t len, greeting;
        char go;

        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            return NULL;
        }
        pthread_mutex_lock(&fake.mu);
        len = fake.len;
        greeting = fake.greeting;
        script = malloc(len > 0 ? len : 1);
        CHECK(script != NULL);
        memcpy(script, fake.script, len);
        pthread_mutex_unlock(&fake.mu);
        send_all(fd, script, greeting);
        if (greeting > 0)
            CHECK(read(fake.go[0], &go, 1) == 1);
        send_all(fd, script + greeting, len - greeting);
        free(script);
        shutdown(fd, SHUT_WR);
        while (read(fd, sink, sizeof sink) > 0)
            ;
        close(fd);
    }
}

static void
fake_stop(void)
{
    unlink(fake.path);
}

static void
fake_start(void)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    pthread_t t;

    snprintf(fake.path, sizeof fake.path, "/tmp/busgate-fuzzlib-%d.sock", (int)getpid());
    unlink(fake.path);
    memcpy(sa.sun_path, fake.path, strlen(fake.path) + 1);
    fake.srv = socket(AF_UNIX, SOCK_STREAM, 0);
    CHECK(fake.srv >= 0);
    CHECK(bind(fake.srv, (struct sockaddr *)&sa, sizeof sa) == 0);
    CHECK(listen(fake.srv, 4) == 0);
    CHECK(pipe(fake.go) == 0);
    atexit(fake_stop);
    CHECK(pthread_create(&t, NULL, serve, NULL) == 0);
    CHECK(pthread_detach(t) == 0);
}

static void
fake_script(const uint8_t *data, size_t size, bool own_greeting)
{
    size_t g = own_greeting ? 0 : strlen(GREETING);

    pthread_mutex_lock(&fake.mu);
    free(fake.script);
    fake.script = malloc(g + size + 1);
    CHECK(fake.script != NULL);
    memcpy(fake.script, GREETING, g);
    if (size > 0)
        memcpy(fake.script + g, data, size);
    fake.len = g + size;
    fake.greeting = g;
    pthread_mutex_unlock(&fake.mu);
}

/* ---- the application ---- */

static uint64_t
mix(uint64_t h, const void *p, size_t n)
{
    const unsigned char *b = p;

    for (size_t i = 0; i < n; i++)
        h = (h ^ b[i]) * 0x100000001b3ull;
    return h;
}

/* A name: NUL-terminated at its length, every byte read (NULL: the event
 * has no such name). */
static uint64_t
mix_name(uint64_t h, const char *p, size_t n)
{
    if (p == NULL) {
        CHECK(n == 0);
        return mix(h, "", 1);
    }
    CHECK(p[n] == '\0');
    return mix(h, p, n + 1);
}

static uint64_t
mix_text(uint64_t h, const char *s)
{
    return s == NULL ? mix(h, "", 1) : mix(h, s, strlen(s) + 1);
}

/* Everything the event says, read through: the checksum of it. */
static uint64_t
event_sum(const struct bg_event *ev)
{
    uint64_t h = 0xcbf29ce484222325ull;
    uint8_t flags[5] = { ev->is_image, ev->is_unicast, ev->is_add, ev->up, 0 };

    h = mix(h, &ev->kind, sizeof ev->kind);
    h = mix_name(h, ev->feed, ev->feed_len);
    h = mix_name(h, ev->topic, ev->topic_len);
    h = mix_name(h, ev->user, ev->user_len);
    h = mix_name(h, ev->host, ev->host_len);
    h = mix(h, ev->client_id, sizeof ev->client_id);
    h = mix(h, ev->client_id_text, sizeof ev->client_id_text);
    h = mix(h, flags, sizeof flags);
    h = mix_text(h, ev->content_type);
    h = mix_text(h, ev->state);
    h = mix_text(h, ev->text);
    h = mix(h, &ev->error, sizeof ev->error);
    CHECK(ev->n_packets == 0 || ev->packets != NULL);
    for (size_t i = 0; i < ev->n_packets; i++) {
        const struct bg_packet *pk = &ev->packets[i];

        CHECK(pk->len == 0 || pk->data != NULL);
        CHECK(pk->n_entitlements == 0 || pk->entitlements != NULL);
        h = mix(h, &pk->len, sizeof pk->len);
        if (pk->len > 0)
            h = mix(h, pk->data, pk->len);
        if (pk->n_entitlements > 0)
            h = mix(h, pk->entitlements, pk->n_entitlements * sizeof(int32_t));
    }
    return h;
}

/* An application's answer to an event: commands made while it holds it. */
static void
use_event(bg_conn *c, const struct bg_event *ev, unsigned use)
{
    uint64_t before = event_sum(ev);

    if (use & USE_PING)
        (void)bg_ping(c);
    if ((use & USE_ANSWER) && ev->kind == BG_EV_DATA)
        (void)bg_publish(c, ev->feed, ev->feed_len, ev->topic, ev->topic_len, ev->is_image,
            ev->packets, ev->n_packets);
    if ((use & USE_ANSWER) && ev->kind == BG_EV_AUTHREQ)
        (void)bg_authorize(c, ev->client_id, ev->feed, ev->feed_len, ev->topic,
            ev->topic_len, true, NULL, 0);
    CHECK(event_sum(ev) == before);
}

struct loop {
    unsigned use;
    int events;
};

static void
on_event(bg_conn *c, const struct bg_event *ev, void *arg)
{
    struct loop *l = arg;

    l->events++;
    use_event(c, ev, l->use);
}

static void
run_blocking(bg_conn *c, unsigned use)
{
    const struct bg_event *ev;

    for (int i = 0; i < MAX_EVENTS && bg_next_event(c, WAIT_MS, &ev) == 0; i++)
        use_event(c, ev, use);
}

static void
run_loop(bg_conn *c, unsigned use)
{
    struct loop l = { use, 0 };

    bg_set_callback(c, on_event, &l);
    while (l.events < MAX_EVENTS && bg_fd(c) >= 0) {
        struct pollfd p = { bg_fd(c), POLLIN | (bg_want_write(c) ? POLLOUT : 0), 0 };

        if (poll(&p, 1, WAIT_MS) <= 0)
            break;
        if (bg_process(c, BG_READABLE | BG_WRITABLE) < 0)
            break;
    }
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    unsigned use;
    bg_conn *c;
    int r;

    if (size < 1)
        return 0;
    if (fake.srv < 0)
        fake_start();
    use = data[0];
    fake_script(data + 1, size - 1, use & USE_OWN_GREETING);
    CHECK((c = bg_new(fake.path)) != NULL);
    bg_set_timeout(c, WAIT_MS);
    bg_set_reconnect(c, 0, 0);
    if (use & USE_SMALL_LIMITS) {
        bg_set_limits(c, 16, 2);
        bg_set_max_queued(c, 256); /* a blocking command's wait cuts the link */
    }
    r = bg_open(c);
    if (!(use & USE_OWN_GREETING))
        CHECK(write(fake.go[1], "g", 1) == 1);
    if (r == 0) {
        if (use & USE_PIPELINED)
            (void)bg_set_pipelined(c, true);
        if (use & USE_LOOP)
            run_loop(c, use);
        else
            run_blocking(c, use);
    }
    bg_free(c);
    return 0;
}
