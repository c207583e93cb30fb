/*
 * lpclient: the local load clients of the benchmarks, many sessions in one
 * process on one epoll loop.
 *
 *   lpclient sub    N line-protocol subscribers spread over T topics; every
 *                   DATA event is parsed and its sequence number checked:
 *                   each subscriber must see 0, 1, 2... of its topic, in
 *                   order, exactly once, and at the end all that was sent.
 *                   With --lib, each subscriber is a libbusgate
 *                   connection in event-loop use (bg_fd, bg_process and
 *                   a callback) instead of the hand-written reader: the
 *                   library's cost against it.
 *   lpclient bussub the same, but each subscriber is a direct TCP client of
 *                   the bus source (the baseline without the gateway).
 *   lpclient pub    P publishers streaming PUB with VERBOSE off; the bus
 *                   source counts and checks what arrives. With --lib,
 *                   each publisher is a pipelined libbusgate connection
 *                   (bg_publish) instead of pre-formatted chunks.
 *   lpclient idle   N sessions that say hello, optionally subscribe to M
 *                   topics each, answer a PING, then idle until stdin
 *                   closes (the driver measures the daemon's RSS).
 *
 * Timing: after "go" the run warms up, then measures for --duration
 * seconds; rates, latency quantiles and the CPU time of the processes
 * named by --cpu NAME=PID cover only that window. One "RESULT k=v..."
 * line goes to stdout for the driver; problems go to stderr.
 */
#include <arpa/inet.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <event2/buffer.h>

#include "bench.h"
#include "busgate.h"
#include "lineproto.h"
#include "wire.h"

#define RBUF (256u * 1024)
#define MAX_CPU 8

enum mode { M_SUB, M_BUSSUB, M_PUB, M_IDLE };

/* A session's progress through its set-up. */
enum sess_state {
    SS_HELLO,   /* waiting for the greeting */
    SS_REPLIES, /* waiting for the +OK of its commands */
    SS_PONG,    /* idle mode: waiting for PONG */
    SS_RUN,     /* data flowing */
    SS_DEAD,    /* closed by the daemon */
};

struct sess {
    int fd;
    enum sess_state state;
    uint32_t topic; /* data topic index */
    uint32_t oks_wanted;
    uint64_t next_seq; /* sub: next expected; pub: next to send */
    uint64_t count;
    uint8_t *left; /* sub: bytes of an incomplete event */
    size_t left_len, left_cap;
    uint8_t *out; /* pub: chunk being written */
    size_t out_off, out_len;
    bool want_out;
    bg_conn *bg;  /* --lib: the library's connection */
    bool bg_down; /* --lib: it reported LINK down */
};

static struct {
    enum mode mode;
    const char *socket_path;
    int port;
    uint32_t n, topics, payload, subs_each;
    double warmup, duration, drain;
    bool latency;
    bool lib; /* sub: through libbusgate */
    struct bench_ctl *ctl;
    struct sess *s;
    int ep;
    uint8_t *rbuf;
    uint64_t delivered, errors, seq_errors, err_replies, closed;
    uint64_t bytes_in;
    bool measuring, measure_done;
    struct bench_lat lat;
    char *bus_state;
    struct {
        const char *name;
        int pid;
        uint64_t t0, t1;
    } cpu[MAX_CPU];
    int ncpu;
    uint64_t busy0, busy1; /* machine busy time at the window's ends */
    uint8_t *pub_tmpl;     /* one PUB command; seq patched at pub_seq_off */
    size_t pub_len, pub_seq_off;
    uint32_t pub_per_chunk;
} C;

static void
usage(void)
{
    fprintf(stderr,
        "usage: lpclient sub|bussub|pub|idle [options]\n"
        "  --socket PATH      the gateway's socket (sub, pub, idle)\n"
        "  --port N           the bus source's TCP port (bussub)\n"
        "  -n N               sessions (subscribers, publishers, idle sessions)\n"
        "  --topics T         data topics t0..t<T-1>; subscriber i takes t<i %% T>\n"
        "  --payload BYTES    publish payload size (pub)\n"
        "  --subs M           idle: subscriptions per session\n"
        "  --ctl FILE         control block shared with bussrc\n"
        "  --warmup S --duration S --drain S\n"
        "  --latency          record one-way latency of every message measured\n"
        "  --cpu NAME=PID     report this process's CPU seconds in the window\n"
        "  --lib              sub, pub: through libbusgate (event-loop use)\n");
    exit(2);
}

static int
connect_unix(const char *path)
{
    struct sockaddr_un a = { .sun_family = AF_UNIX };
    int fd;

    if (strlen(path) >= sizeof a.sun_path)
        bench_die("socket path too long: %s", path);
    strcpy(a.sun_path, path);
    for (int tries = 0;; tries++) {
        if ((fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0)
            bench_die("socket: %s", strerror(errno));
        if (connect(fd, (struct sockaddr *)&a, sizeof a) == 0)
            return fd;
        if ((errno != EAGAIN && errno != ECONNREFUSED && errno != ENOENT) || tries > 2000)
            bench_die("connect %s: %s", path, strerror(errno));
        close(fd);
        bench_sleep_ns(5000000);
    }
}

/* A SubscriptionRequest for topic t<k>, through the project's codec. */
static void
send_bus_subscribe(int fd, uint32_t k)
{
    char topic[32];
    struct wire_msg m;
    struct evbuffer *b = evbuffer_new();
    uint8_t tmp[256];
    size_t n;

    snprintf(topic, sizeof topic, "t%u", k);
    wire_msg_init(&m);
    m.type = WIRE_SUBSCRIPTION_REQUEST;
    m.feed = (struct wire_str){ BENCH_FEED, (uint32_t)strlen(BENCH_FEED) };
    m.topic = (struct wire_str){ topic, (uint32_t)strlen(topic) };
    m.is_add = true;
    if (b == NULL || wire_encode(b, &m) != 0 || (n = evbuffer_get_length(b)) > sizeof tmp)
        bench_die("wire_encode failed");
    evbuffer_remove(b, tmp, n);
    evbuffer_free(b);
    bench_write_all(fd, tmp, n);
}

static void
ep_add(struct sess *s, uint32_t events)
{
    struct epoll_event ev = { .events = events, .data.ptr = s };

    if (epoll_ctl(C.ep, EPOLL_CTL_ADD, s->fd, &ev) != 0)
        bench_die("epoll_ctl: %s", strerror(errno));
}

static void
ep_out(struct sess *s, bool out)
{
    struct epoll_event ev = { .events = EPOLLIN | (out ? EPOLLOUT : 0), .data.ptr = s };

    if (s->want_out != out) {
        s->want_out = out;
        epoll_ctl(C.ep, EPOLL_CTL_MOD, s->fd, &ev);
    }
}

/* ---- events other than DATA ---- */

static void
sess_dead(struct sess *s, const char *why)
{
    if (s->state == SS_DEAD)
        return;
    fprintf(stderr, "lpclient: session %ld: %s\n", (long)(s - C.s), why);
    s->state = SS_DEAD;
    C.closed++;
    epoll_ctl(C.ep, EPOLL_CTL_DEL, s->fd, NULL);
    if (s->bg != NULL)
        bg_free(s->bg); /* closes s->fd */
    else
        close(s->fd);
    s->bg = NULL;
    s->fd = -1;
}

/* "bus=<state>" from a greeting. */
static void
note_bus_state(const char *rest)
{
    const char *p = strstr(rest, "bus=");
    size_t n;

    if (p == NULL)
        return;
    p += 4;
    n = strcspn(p, " ");
    free(C.bus_state);
    C.bus_state = strndup(p, n);
}

/* One non-DATA line (without "\n"), through the project's event parser. */
static void
on_line(struct sess *s, const uint8_t *line, size_t len)
{
    static struct lp_event ev;
    static bool init;

    if (!init) {
        lp_event_init(&ev);
        init = true;
    }
    if (lp_parse_event((const char *)line, len, NULL, &ev) != 0) {
        fprintf(stderr, "lpclient: unparsable line: %.*s\n", (int)(len > 200 ? 200 : len),
            (const char *)line);
        C.errors++;
        return;
    }
    switch (ev.kind) {
    case LP_EV_HELLO:
        note_bus_state(ev.rest);
        if (s->state == SS_HELLO)
            s->state = s->oks_wanted > 0 ? SS_REPLIES : C.mode == M_IDLE ? SS_PONG : SS_RUN;
        break;
    case LP_EV_OK:
        if (s->oks_wanted > 0 && --s->oks_wanted == 0 && s->state == SS_REPLIES)
            s->state = C.mode == M_IDLE ? SS_PONG : SS_RUN;
        break;
    case LP_EV_PONG:
        if (s->state == SS_PONG)
            s->state = SS_RUN;
        break;
    case LP_EV_BUS:
        free(C.bus_state);
        C.bus_state = strndup(ev.rest, strcspn(ev.rest, " "));
        break;
    case LP_EV_ERR:
        fprintf(stderr, "lpclient: session %ld: -ERR %s\n", (long)(s - C.s), ev.rest);
        C.err_replies++;
        if (strncmp(ev.rest, "slow-consumer", 13) == 0 ||
            strncmp(ev.rest, "too-many-sessions", 17) == 0)
            C.errors++;
        break;
    default:
        break;
    }
}

/* ---- data ---- */

static void
on_data(struct sess *s, const struct bench_data *d, uint64_t now)
{
    uint64_t seq;

    if (d->payload == NULL || d->payload_len < BENCH_MIN_PAYLOAD) {
        if (C.mode == M_BUSSUB)
            return; /* the link's heartbeat */
        C.errors++;
        return;
    }
    seq = bench_get_u64(d->payload);
    if (seq != s->next_seq) {
        if (C.seq_errors++ < 10)
            fprintf(stderr, "lpclient: session %ld topic t%u: seq %llu, expected %llu\n",
                (long)(s - C.s), s->topic, (unsigned long long)seq,
                (unsigned long long)s->next_seq);
    }
    s->next_seq = seq + 1;
    s->count++;
    C.delivered++;
    if (C.latency && C.measuring) {
        uint64_t stamp = bench_get_u64(d->payload + 8);

        if (stamp != 0 && now >= stamp)
            bench_lat_add(&C.lat, now - stamp);
    }
}

/* Consume the events in p[0..n); returns bytes used. */
static size_t
parse_events(struct sess *s, const uint8_t *p, size_t n, uint64_t now)
{
    size_t o = 0;
    struct bench_data d;

    while (o < n) {
        int r = C.mode == M_BUSSUB ? bench_parse_bus_data(p + o, n - o, &d)
                                   : bench_parse_lp_data(p + o, n - o, &d);

        if (r == 1) {
            on_data(s, &d, now);
            o += d.total;
            continue;
        }
        if (r == 0)
            break;
        if (C.mode == M_BUSSUB) {
            sess_dead(s, "bad bus message");
            return n;
        }
        const uint8_t *nl = memchr(p + o, '\n', n - o);
        size_t len;

        if (nl == NULL)
            break;
        len = (size_t)(nl - (p + o));
        if (len > 0 && p[o + len - 1] == '\r')
            len--;
        on_line(s, p + o, len);
        if (s->state == SS_DEAD)
            return n;
        o = (size_t)(nl - p) + 1;
    }
    return o;
}

/* --lib: the library's events for one subscriber. */
static void
lib_event(bg_conn *c, const struct bg_event *ev, void *arg)
{
    struct sess *s = arg;
    struct bench_data d = { NULL, 0, 0 };

    switch (ev->kind) {
    case BG_EV_DATA:
        if (ev->n_packets > 0) {
            d.payload = ev->packets[0].data;
            d.payload_len = (uint32_t)ev->packets[0].len;
        }
        C.bytes_in += ev->feed_len + ev->topic_len + ev->user_len + ev->host_len + 32 +
            (ev->n_packets > 0 ? ev->packets[0].len + 1 : 0); /* about the line's bytes */
        on_data(s, &d, C.latency ? bench_now_ns() : 0);
        break;
    case BG_EV_BUS:
        free(C.bus_state);
        C.bus_state = strdup(ev->state);
        break;
    case BG_EV_LINK:
        if (!ev->up)
            s->bg_down = true; /* freed after bg_process returns */
        break;
    case BG_EV_REPLY: /* pipelined publish: only refusals are answered */
        fprintf(stderr, "lpclient: session %ld: %s\n", (long)(s - C.s), ev->text);
        C.err_replies++;
        break;
    default:
        break;
    }
}

/* --lib: connect and subscribe (sub) or turn pipelining on (pub) with the
 * blocking calls, then hand the socket to the epoll loop. */
static void
lib_connect(struct sess *s)
{
    char topic[32];
    int l = snprintf(topic, sizeof topic, "t%u", s->topic);

    if ((s->bg = bg_connect(C.socket_path)) == NULL || bg_error_code(s->bg) != 0)
        bench_die("bg_connect %s: %s", C.socket_path, bg_errstr(s->bg));
    bg_set_reconnect(s->bg, 1, 0); /* a drop is a failure of the run */
    int r = C.mode == M_PUB
        ? bg_set_pipelined(s->bg, true)
        : bg_subscribe(s->bg, BENCH_FEED, strlen(BENCH_FEED), topic, (size_t)l);

    if (r != 0)
        bench_die("lpclient: %s", bg_errstr(s->bg));
    note_bus_state(bg_hello(s->bg));
    bg_set_callback(s->bg, lib_event, s);
    s->fd = bg_fd(s->bg);
    s->state = SS_RUN;
    ep_add(s, EPOLLIN);
}

/* Read once from a session (level-triggered: fair over many sessions). */
static void
sess_read(struct sess *s)
{
    size_t have = s->left_len, used;
    ssize_t r;
    uint64_t now;

    if (have > 0)
        memcpy(C.rbuf, s->left, have);
    r = read(s->fd, C.rbuf + have, RBUF - have);
    if (r < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (r <= 0) {
        sess_dead(s, r == 0 ? "closed by the daemon" : strerror(errno));
        return;
    }
    now = C.latency ? bench_now_ns() : 0;
    C.bytes_in += (uint64_t)r;
    have += (size_t)r;
    used = parse_events(s, C.rbuf, have, now);
    if (s->state == SS_DEAD)
        return;
    if (used == 0 && have == RBUF) {
        sess_dead(s, "event larger than the read buffer");
        return;
    }
    s->left_len = have - used;
    if (s->left_len > s->left_cap) {
        s->left_cap = s->left_len;
        if ((s->left = realloc(s->left, s->left_cap)) == NULL)
            bench_die("out of memory");
    }
    if (s->left_len > 0)
        memcpy(s->left, C.rbuf + used, s->left_len);
}

/* ---- publishers ---- */

/* Messages per ~64 KiB chunk of PUB commands. */
static void
pub_template(void)
{
    C.pub_per_chunk = BENCH_CHUNK / (C.payload + 32) + 1;
}

/* Fill a publisher's chunk with its next messages. */
static void
pub_fill(struct sess *s)
{
    char head[64];
    int hl = snprintf(head, sizeof head, "PUB %s p%ld delta %u\n", BENCH_FEED,
        (long)(s - C.s), C.payload);
    size_t rec = (size_t)hl + C.payload + 1, o = 0;

    if (s->out == NULL) {
        if ((s->out = malloc(rec * C.pub_per_chunk)) == NULL)
            bench_die("out of memory");
        for (uint32_t i = 0; i < C.pub_per_chunk; i++) {
            memcpy(s->out + i * rec, head, (size_t)hl);
            bench_payload_fill(s->out + i * rec + hl, C.payload);
            s->out[i * rec + rec - 1] = '\n';
        }
    }
    for (uint32_t i = 0; i < C.pub_per_chunk; i++, o += rec)
        bench_put_u64(s->out + o + hl, s->next_seq++);
    s->out_off = 0;
    s->out_len = o;
}

/* --lib: bg_publish the same messages (payload: sequence number first),
 * a chunk's worth at a time with a bg_flush after each, while the socket
 * takes all the library has queued (as pub_write fills no chunk while one
 * waits). */
static void
lib_pub_write(struct sess *s)
{
    char topic[32];
    int tl = snprintf(topic, sizeof topic, "p%ld", (long)(s - C.s));
    struct bg_packet pk = { .len = C.payload };

    if (s->out == NULL) {
        if ((s->out = malloc(C.payload)) == NULL)
            bench_die("out of memory");
        bench_payload_fill(s->out, C.payload);
    }
    pk.data = s->out;
    while (!atomic_load(&C.ctl->stop) && !bg_want_write(s->bg)) {
        for (uint32_t i = 0; i < C.pub_per_chunk && !atomic_load(&C.ctl->stop); i++) {
            bench_put_u64(s->out, s->next_seq);
            if (bg_publish(s->bg, BENCH_FEED, strlen(BENCH_FEED), topic, (size_t)tl, false,
                    &pk, 1) != 0) {
                sess_dead(s, bg_errstr(s->bg));
                return;
            }
            s->next_seq++;
        }
        if (bg_flush(s->bg) != 0) {
            sess_dead(s, bg_errstr(s->bg));
            return;
        }
    }
    ep_out(s, bg_want_write(s->bg));
}

static void
pub_write(struct sess *s)
{
    if (s->bg != NULL) {
        lib_pub_write(s);
        return;
    }
    for (;;) {
        if (s->out_off == s->out_len) {
            if (atomic_load(&C.ctl->stop)) {
                ep_out(s, false);
                return;
            }
            pub_fill(s);
        }
        ssize_t w = write(s->fd, s->out + s->out_off, s->out_len - s->out_off);

        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && errno == EAGAIN) {
            ep_out(s, true);
            return;
        }
        if (w <= 0) {
            sess_dead(s, strerror(errno));
            return;
        }
        s->out_off += (size_t)w;
        if (s->out_off < s->out_len) {
            ep_out(s, true);
            return;
        }
    }
}

/* Messages published, once every chunk has been written whole. */
static uint64_t
pub_total(void)
{
    uint64_t t = 0;

    for (uint32_t i = 0; i < C.n; i++)
        t += C.s[i].next_seq;
    return t;
}

/* ---- the run ---- */

static void
poll_once(int timeout_ms)
{
    struct epoll_event evs[256];
    int n = epoll_wait(C.ep, evs, 256, timeout_ms);

    for (int i = 0; i < n; i++) {
        struct sess *s = evs[i].data.ptr;
        bool readable = evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR),
             writable = evs[i].events & EPOLLOUT;

        if (s->state == SS_DEAD)
            continue;
        if (s->bg != NULL) {
            bg_process(s->bg, (readable ? BG_READABLE : 0) | (writable ? BG_WRITABLE : 0));
            if (s->bg_down)
                sess_dead(s, "closed by the daemon");
        } else if (readable)
            sess_read(s);
        if (s->state != SS_DEAD && writable)
            pub_write(s);
        /* After each session, not once a batch: a batch of many ready
         * sessions would hold the source's window shut while it lasts. */
        if (C.ctl != NULL)
            atomic_store_explicit(&C.ctl->delivered, C.delivered, memory_order_release);
    }
}

static bool
all_in_state(enum sess_state st)
{
    for (uint32_t i = 0; i < C.n; i++)
        if (C.s[i].state != st && C.s[i].state != SS_DEAD)
            return false;
    return true;
}

static void
wait_state(enum sess_state st, double timeout_s, const char *what)
{
    uint64_t end = bench_now_ns() + (uint64_t)(timeout_s * 1e9);

    while (!all_in_state(st)) {
        if (bench_now_ns() > end)
            bench_die("lpclient: timed out waiting for %s", what);
        poll_once(10);
    }
    if (C.closed > 0)
        bench_die("lpclient: %llu sessions closed while waiting for %s",
            (unsigned long long)C.closed, what);
}

static void
cpu_snap(bool end)
{
    if (end)
        C.busy1 = bench_machine_busy_ns();
    else
        C.busy0 = bench_machine_busy_ns();
    for (int i = 0; i < C.ncpu; i++) {
        uint64_t v = C.cpu[i].pid == 0 ? 0 : bench_proc_cpu_ns(C.cpu[i].pid);

        if (C.cpu[i].pid == 0) {
            struct timespec ts;

            clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
            v = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
        }
        if (end)
            C.cpu[i].t1 = v;
        else
            C.cpu[i].t0 = v;
    }
}

static void
connect_all(void)
{
    C.s = calloc(C.n, sizeof *C.s);
    if (C.s == NULL)
        bench_die("out of memory");
    for (uint32_t i = 0; i < C.n; i++) {
        struct sess *s = &C.s[i];

        s->topic = i % C.topics;
        if (C.lib) {
            lib_connect(s);
            continue;
        }
        s->fd = C.mode == M_BUSSUB ? bench_connect_tcp(C.port) : connect_unix(C.socket_path);
        s->state = C.mode == M_BUSSUB ? SS_RUN : SS_HELLO;
        if (C.mode == M_SUB) {
            char cmd[64];
            int l = snprintf(cmd, sizeof cmd, "SUB %s t%u\n", BENCH_FEED, s->topic);

            s->oks_wanted = 1;
            bench_write_all(s->fd, cmd, (size_t)l);
        } else if (C.mode == M_BUSSUB) {
            send_bus_subscribe(s->fd, s->topic);
        } else if (C.mode == M_PUB) {
            bench_write_all(s->fd, "VERBOSE off\n", 12);
        }
        bench_set_nonblock(s->fd);
        ep_add(s, EPOLLIN);
    }
}

/* Run until the measurement window is over. */
static void
measure(void)
{
    uint64_t go = bench_now_ns(), t0 = go + (uint64_t)(C.warmup * 1e9),
             t1 = t0 + (uint64_t)(C.duration * 1e9), d0 = 0, d1 = 0, p0 = 0, p1 = 0, now;
    uint64_t b0 = 0, b1 = 0;
    double secs;

    atomic_store(&C.ctl->go, 1);
    if (C.mode == M_PUB)
        for (uint32_t i = 0; i < C.n; i++)
            pub_write(&C.s[i]);
    while ((now = bench_now_ns()) < t1) {
        if (!C.measuring && now >= t0) {
            C.measuring = true;
            cpu_snap(false);
            d0 = C.delivered;
            b0 = C.bytes_in;
            p0 = atomic_load(&C.ctl->pub_recv);
            t0 = now;
        }
        poll_once(C.measuring ? (int)((t1 - now) / 1000000) + 1 : 1);
    }
    cpu_snap(true);
    d1 = C.delivered;
    b1 = C.bytes_in;
    p1 = atomic_load(&C.ctl->pub_recv);
    C.measuring = false;
    C.measure_done = true;
    atomic_store(&C.ctl->stop, 1);
    secs = (double)(now - t0) / 1e9;
    printf("RESULT mode=%s sessions=%u topics=%u seconds=%.3f",
        C.mode == M_SUB          ? "sub"
            : C.mode == M_BUSSUB ? "bussub"
                                 : "pub",
        C.n, C.topics, secs);
    if (C.mode == M_PUB)
        printf(" msgs=%llu rate=%.0f", (unsigned long long)(p1 - p0),
            (double)(p1 - p0) / secs);
    else
        printf(" msgs=%llu rate=%.0f bytes_rate=%.0f", (unsigned long long)(d1 - d0),
            (double)(d1 - d0) / secs, (double)(b1 - b0) / secs);
    for (int i = 0; i < C.ncpu; i++)
        printf(" cpu_%s=%.4f", C.cpu[i].name, (double)(C.cpu[i].t1 - C.cpu[i].t0) / 1e9);
    printf(" cpu_machine=%.4f", (double)(C.busy1 - C.busy0) / 1e9);
}

/* After stop: every subscriber must get everything the source sent. */
static void
drain_sub(void)
{
    uint64_t end = bench_now_ns() + (uint64_t)(C.drain * 1e9), sent = 0, missing = 0;
    bool complete = false;

    while (bench_now_ns() < end && !complete) {
        poll_once(10);
        if (!atomic_load(&C.ctl->done))
            continue;
        sent = atomic_load(&C.ctl->sent);
        complete = true;
        for (uint32_t i = 0; i < C.n && complete; i++) {
            uint64_t want = sent / C.topics + (C.s[i].topic < sent % C.topics);

            if (C.s[i].state != SS_DEAD && C.s[i].count < want)
                complete = false;
        }
    }
    for (uint32_t i = 0; i < C.n; i++) {
        uint64_t want = sent / C.topics + (C.s[i].topic < sent % C.topics);

        if (C.s[i].count < want)
            missing += want - C.s[i].count;
        else if (C.s[i].count > want)
            C.seq_errors++; /* more than was sent: duplicates */
    }
    printf(" sent=%llu delivered=%llu missing=%llu seq_errors=%llu errors=%llu closed=%llu",
        (unsigned long long)sent, (unsigned long long)C.delivered,
        (unsigned long long)missing, (unsigned long long)C.seq_errors,
        (unsigned long long)C.errors, (unsigned long long)C.closed);
}

static void
drain_pub(void)
{
    uint64_t end = bench_now_ns() + (uint64_t)(C.drain * 1e9), total;

    /* Finish the chunks in progress so every message is whole. */
    for (uint32_t i = 0; i < C.n; i++) {
        struct sess *s = &C.s[i];

        if (s->state != SS_DEAD && s->bg != NULL) {
            while (s->state != SS_DEAD && bg_want_write(s->bg) && bench_now_ns() < end)
                poll_once(10);
        } else if (s->state != SS_DEAD && s->out_off < s->out_len) {
            int fl = fcntl(s->fd, F_GETFL);

            fcntl(s->fd, F_SETFL, fl & ~O_NONBLOCK);
            bench_write_all(s->fd, s->out + s->out_off, s->out_len - s->out_off);
            s->out_off = s->out_len;
            fcntl(s->fd, F_SETFL, fl);
        }
    }
    total = pub_total();
    while (bench_now_ns() < end && atomic_load(&C.ctl->pub_recv) < total)
        poll_once(10);
    printf(" sent=%llu received=%llu missing=%llu seq_errors=%llu errors=%llu closed=%llu"
           " err_replies=%llu",
        (unsigned long long)total, (unsigned long long)atomic_load(&C.ctl->pub_recv),
        (unsigned long long)(total - atomic_load(&C.ctl->pub_recv)),
        (unsigned long long)atomic_load(&C.ctl->pub_errors), (unsigned long long)C.errors,
        (unsigned long long)C.closed, (unsigned long long)C.err_replies);
}

static void
print_latency(void)
{
    double p50, p99, p999, max;

    if (!C.latency)
        return;
    /* The first call sorts; the others read the sorted samples. */
    p50 = (double)bench_lat_quantile(&C.lat, 0.5, false) / 1e3;
    p99 = (double)bench_lat_quantile(&C.lat, 0.99, true) / 1e3;
    p999 = (double)bench_lat_quantile(&C.lat, 0.999, true) / 1e3;
    max = (double)bench_lat_quantile(&C.lat, 1.0, true) / 1e3;
    printf(" lat_n=%zu lat_p50_us=%.1f lat_p99_us=%.1f lat_p999_us=%.1f lat_max_us=%.1f",
        C.lat.n, p50, p99, p999, max);
}

/* Publishers need a link that is not down. */
static void
wait_bus(void)
{
    uint64_t end = bench_now_ns() + 20000000000ull;

    while (C.bus_state == NULL || strcmp(C.bus_state, "down") == 0) {
        if (bench_now_ns() > end)
            bench_die("lpclient: the gateway's bus link never came up (%s)",
                C.bus_state ? C.bus_state : "?");
        poll_once(10);
    }
}

static int
run_idle(void)
{
    char line[64];
    uint64_t subs = 0;

    for (uint32_t i = 0; i < C.n; i++) {
        struct sess *s = &C.s[i];

        for (uint32_t j = 0; j < C.subs_each; j++) {
            int l = snprintf(line, sizeof line, "SUB %s i%u_%u\n", BENCH_FEED, i, j);

            bench_write_all(s->fd, line, (size_t)l);
        }
        s->oks_wanted = C.subs_each; /* no event was read yet: still SS_HELLO */
        bench_write_all(s->fd, "PING\n", 5);
        subs += C.subs_each;
    }
    wait_state(SS_RUN, 120, "PONG from every session");
    printf("READY sessions=%u subscriptions=%llu closed=%llu\n", C.n,
        (unsigned long long)subs, (unsigned long long)C.closed);
    fflush(stdout);
    /* Hold the sessions until the driver closes our stdin. */
    while (read(0, line, sizeof line) > 0)
        ;
    return 0;
}

static void
parse_args(int argc, char **argv)
{
    static const struct option opts[] = {
        { "socket", 1, NULL, 'S' },
        { "port", 1, NULL, 'P' },
        { "topics", 1, NULL, 't' },
        { "payload", 1, NULL, 's' },
        { "subs", 1, NULL, 'm' },
        { "ctl", 1, NULL, 'c' },
        { "warmup", 1, NULL, 'W' },
        { "duration", 1, NULL, 'D' },
        { "drain", 1, NULL, 'R' },
        { "latency", 0, NULL, 'L' },
        { "cpu", 1, NULL, 'C' },
        { "lib", 0, NULL, 'B' },
        { NULL, 0, NULL, 0 },
    };
    int o;

    if (argc < 2)
        usage();
    if (strcmp(argv[1], "sub") == 0)
        C.mode = M_SUB;
    else if (strcmp(argv[1], "bussub") == 0)
        C.mode = M_BUSSUB;
    else if (strcmp(argv[1], "pub") == 0)
        C.mode = M_PUB;
    else if (strcmp(argv[1], "idle") == 0)
        C.mode = M_IDLE;
    else
        usage();
    optind = 2;
    while ((o = getopt_long(argc, argv, "n:", opts, NULL)) != -1) {
        switch (o) {
        case 'n':
            C.n = (uint32_t)strtoul(optarg, NULL, 10);
            break;
        case 'S':
            C.socket_path = optarg;
            break;
        case 'P':
            C.port = atoi(optarg);
            break;
        case 't':
            C.topics = (uint32_t)strtoul(optarg, NULL, 10);
            break;
        case 's':
            C.payload = (uint32_t)strtoul(optarg, NULL, 10);
            break;
        case 'm':
            C.subs_each = (uint32_t)strtoul(optarg, NULL, 10);
            break;
        case 'c':
            C.ctl = bench_ctl_open(optarg, false);
            break;
        case 'W':
            C.warmup = strtod(optarg, NULL);
            break;
        case 'D':
            C.duration = strtod(optarg, NULL);
            break;
        case 'R':
            C.drain = strtod(optarg, NULL);
            break;
        case 'L':
            C.latency = true;
            break;
        case 'B':
            C.lib = true;
            break;
        case 'C': {
            char *eq = strchr(optarg, '=');

            if (eq == NULL || C.ncpu == MAX_CPU)
                usage();
            *eq = 0;
            C.cpu[C.ncpu].name = optarg;
            C.cpu[C.ncpu++].pid = atoi(eq + 1);
            break;
        }
        default:
            usage();
        }
    }
    if (optind != argc || C.n == 0 || C.topics == 0 ||
        (C.mode == M_BUSSUB ? C.port == 0 : C.socket_path == NULL) ||
        (C.mode != M_IDLE && C.ctl == NULL) ||
        (C.lib && C.mode != M_SUB && C.mode != M_PUB) ||
        (C.mode == M_PUB &&
            (C.payload < BENCH_MIN_PAYLOAD || C.payload > BENCH_MAX_PAYLOAD)))
        usage();
}

int
main(int argc, char **argv)
{
    C.topics = 1;
    C.payload = 16;
    C.warmup = 0.5;
    C.duration = 3;
    C.drain = 30;
    parse_args(argc, argv);
    signal(SIGPIPE, SIG_IGN);
    bench_raise_nofile();
    if ((C.rbuf = malloc(RBUF)) == NULL || (C.ep = epoll_create1(EPOLL_CLOEXEC)) < 0)
        bench_die("out of memory / epoll");
    if (C.ncpu < MAX_CPU) {
        C.cpu[C.ncpu].name = "client";
        C.cpu[C.ncpu++].pid = 0;
    }
    connect_all();
    if (C.mode == M_IDLE)
        return run_idle();
    wait_state(SS_RUN, 120, "greetings and subscription replies");
    if (C.mode == M_PUB) {
        pub_template();
        wait_bus();
    }
    measure();
    if (C.mode == M_PUB)
        drain_pub();
    else
        drain_sub();
    print_latency();
    printf("\n");
    fflush(stdout);
    return 0;
}
