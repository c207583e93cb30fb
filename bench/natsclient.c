/*
 * natsclient: nats-server as a peer of the gateway in the benchmarks. The
 * NATS text protocol by hand (CONNECT, SUB, PUB, MSG, PING/PONG; no client
 * library), many connections in one process on one epoll loop, laid out
 * like the gateway's runs so that the two compare process for process:
 *
 *   natsclient src   the role of bussrc in fan-out: ONE connection that
 *                    publishes on topics t0..t<T-1> round-robin, as fast
 *                    as the window allows (background; stopped by SIGTERM).
 *   natsclient sub   the role of lpclient sub: N subscriber connections,
 *                    subscriber i on t<i % T>; every MSG is parsed and its
 *                    sequence number checked (0, 1, 2... per topic, in
 *                    order, exactly once, and at the end all that was
 *                    sent). Measures and prints the RESULT line.
 *   natsclient pub   the role of lpclient pub: P publisher connections,
 *                    publisher i streaming PUB on t<i>. Measures what the
 *                    sink received and prints the RESULT line.
 *   natsclient sink  the role of bussrc's receiving side in the publish
 *                    runs: ONE connection subscribed to t0..t<P-1> that
 *                    counts and checks every message (background).
 *
 * Pacing. nats-server has no backpressure: it reads a publisher as fast as
 * it can and queues for each subscriber (up to max_pending, then it drops
 * the "slow consumer"). An unpaced publisher would measure how fast a
 * backlog drains, or lose subscribers. So the publishing side keeps
 * sent * fanout - delivered under a window, exactly as bussrc does for the
 * gateway, through the same shared control block (bench.h): the receiving
 * process stores its delivered count there after each read, the publishing
 * process reads it. That costs two processes a shared-memory word and
 * nats-server nothing; acknowledgements through the server would add
 * messages that the server must route and the gateway runs do not have.
 *
 * Payload layout as bench.h: sequence number within the topic first.
 */
#include <arpa/inet.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/socket.h>

#include "bench.h"

#define RBUF (256u * 1024)
#define MAX_CPU 8

enum mode { M_SRC, M_SUB, M_PUB, M_SINK };

struct conn {
    int fd;
    bool ready;    /* PONG to our first PING: its SUBs are in place */
    bool want_out; /* EPOLLOUT registered */
    bool dead;
    bool pong_queued; /* a PONG is in the chunk being written */
    uint32_t ntopics; /* subscriptions (sid j+1 = topics[j]) or topics published */
    uint32_t *topics;
    uint64_t *next_seq; /* receiving: per subscription, next expected */
    uint64_t *count;    /* receiving: per subscription, messages */
    uint32_t rr;        /* publishing: next of topics[] */
    uint8_t *left;      /* receiving: bytes of an incomplete message */
    size_t left_len, left_cap;
    uint8_t *out; /* publishing: chunk being written */
    size_t out_off, out_len;
};

struct tmpl {
    uint8_t *bytes; /* "PUB t<k> LEN\r\n" payload "\r\n" */
    size_t len, seq_off;
};

static struct {
    enum mode mode;
    int port, ep;
    uint32_t n, topics, payload, fanout;
    uint64_t window;
    double warmup, duration, drain, max_s;
    struct bench_ctl *ctl;
    struct conn *c;
    struct tmpl *tmpl;
    uint64_t *pub_seq; /* publishing: per topic, next to send */
    uint8_t *rbuf;
    uint64_t sent, delivered, bytes_in, errors, seq_errors, err_replies, closed;
    struct {
        const char *name;
        int pid;
        uint64_t t0, t1;
    } cpu[MAX_CPU];
    int ncpu;
    uint64_t busy0, busy1;
    volatile sig_atomic_t quit;
} N;

static bool
receiving(void)
{
    return N.mode == M_SUB || N.mode == M_SINK;
}

static void
usage(void)
{
    fprintf(stderr,
        "usage: natsclient src|sub|pub|sink --port N --ctl FILE [options]\n"
        "  --port N           nats-server's port on 127.0.0.1\n"
        "  -n N               connections (src and sink: 1)\n"
        "  --topics T         topics t0..t<T-1>\n"
        "  --payload BYTES    src, pub: payload size\n"
        "  --fanout F         src, pub: subscribers per topic (window accounting)\n"
        "  --window N         src, pub: deliveries in flight (0: unpaced)\n"
        "  --ctl FILE         control block shared by the two sides\n"
        "  --warmup S --duration S --drain S --max-seconds S\n"
        "  --cpu NAME=PID     sub, pub: report this process's CPU seconds in the window\n");
    exit(2);
}

static void
on_signal(int sig)
{
    (void)sig;
    N.quit = 1;
}

static void
ep_out(struct conn *c, bool out)
{
    struct epoll_event ev = { .events = EPOLLIN | (out ? EPOLLOUT : 0), .data.ptr = c };

    if (c->want_out != out) {
        c->want_out = out;
        epoll_ctl(N.ep, EPOLL_CTL_MOD, c->fd, &ev);
    }
}

static void
conn_dead(struct conn *c, const char *why)
{
    if (c->dead)
        return;
    fprintf(stderr, "natsclient: connection %ld: %s\n", (long)(c - N.c), why);
    c->dead = true;
    N.closed++;
    epoll_ctl(N.ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->fd = -1;
}

/* ---- receiving ---- */

static void
on_msg(struct conn *c, uint64_t sid, const uint8_t *payload, uint64_t len)
{
    uint32_t j = (uint32_t)sid - 1;
    uint64_t seq;

    if (sid == 0 || sid > c->ntopics || len < BENCH_MIN_PAYLOAD) {
        N.errors++;
        return;
    }
    seq = bench_get_u64(payload);
    if (seq != c->next_seq[j] && N.seq_errors++ < 10)
        fprintf(stderr, "natsclient: connection %ld topic t%u: seq %llu, expected %llu\n",
            (long)(c - N.c), c->topics[j], (unsigned long long)seq,
            (unsigned long long)c->next_seq[j]);
    c->next_seq[j] = seq + 1;
    c->count[j]++;
    N.delivered++;
}

/* nats-server PINGs every client a second after it connects, and then
 * every ping_interval. A publisher may be half-way through a chunk: the
 * PONG goes after the chunk's last whole message, not into the middle. */
static void
send_pong(struct conn *c)
{
    if (c->out_len == 0) {
        bench_write_all(c->fd, "PONG\r\n", 6);
    } else if (!c->pong_queued) {
        memcpy(c->out + c->out_len, "PONG\r\n", 6); /* chunks keep 64 bytes spare */
        c->out_len += 6;
        c->pong_queued = true;
    }
}

/* A protocol line other than MSG (without "\r\n"). */
static void
on_line(struct conn *c, const uint8_t *p, size_t len)
{
    if (len == 4 && memcmp(p, "PING", 4) == 0)
        send_pong(c);
    else if (len == 4 && memcmp(p, "PONG", 4) == 0)
        c->ready = true;
    else if (len >= 4 && memcmp(p, "-ERR", 4) == 0) {
        fprintf(stderr, "natsclient: connection %ld: %.*s\n", (long)(c - N.c),
            (int)(len > 200 ? 200 : len), (const char *)p);
        N.err_replies++;
        N.errors++;
    } else if (!(len >= 5 && memcmp(p, "INFO ", 5) == 0) &&
        !(len == 3 && memcmp(p, "+OK", 3) == 0)) {
        fprintf(stderr, "natsclient: unexpected line: %.*s\n", (int)(len > 200 ? 200 : len),
            (const char *)p);
        N.errors++;
    }
}

/*
 * "MSG <subject> <sid> <#bytes>\r\n" payload "\r\n" at p (n bytes), parsed
 * in place from the end of the line (we never ask for replies, so there is
 * no reply-to token). Returns bytes used, 0 if incomplete, -1 if p is not
 * a well-formed MSG.
 */
static long
parse_msg(struct conn *c, const uint8_t *p, size_t n, const uint8_t *nl)
{
    const uint8_t *e = nl, *q;
    uint64_t len = 0, sid = 0, mul = 1;
    size_t total;

    if (e > p && e[-1] == '\r')
        e--;
    for (q = e; q > p && q[-1] >= '0' && q[-1] <= '9'; q--, mul *= 10)
        len += (uint64_t)(q[-1] - '0') * mul;
    if (q == e || q[-1] != ' ' || len > BENCH_MAX_PAYLOAD)
        return -1;
    e = --q;
    for (mul = 1; q > p && q[-1] >= '0' && q[-1] <= '9'; q--, mul *= 10)
        sid += (uint64_t)(q[-1] - '0') * mul;
    if (q == e || q - p < 6 || q[-1] != ' ')
        return -1;
    total = (size_t)(nl + 1 - p) + len + 2;
    if (total > n)
        return 0;
    if (p[total - 2] != '\r' || p[total - 1] != '\n')
        return -1; /* framing lost */
    on_msg(c, sid, nl + 1, len);
    return (long)total;
}

/* Consume what is complete in p[0..n); returns bytes used. */
static size_t
parse_input(struct conn *c, const uint8_t *p, size_t n)
{
    size_t o = 0;

    while (o < n) {
        const uint8_t *nl = memchr(p + o, '\n', n - o);
        size_t len;
        long used;

        if (nl == NULL)
            break;
        if (nl - (p + o) > 4 && memcmp(p + o, "MSG ", 4) == 0) {
            if ((used = parse_msg(c, p + o, n - o, nl)) == 0)
                break;
            if (used > 0) {
                o += (size_t)used;
                continue;
            }
        }
        len = (size_t)(nl - (p + o));
        if (len > 0 && p[o + len - 1] == '\r')
            len--;
        on_line(c, p + o, len);
        o = (size_t)(nl - p) + 1;
    }
    return o;
}

/* Read once (level-triggered: fair over many connections). */
static void
conn_read(struct conn *c)
{
    size_t have = c->left_len, used;
    ssize_t r;

    if (have > 0)
        memcpy(N.rbuf, c->left, have);
    r = read(c->fd, N.rbuf + have, RBUF - have);
    if (r < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (r <= 0) {
        conn_dead(c, r == 0 ? "closed by nats-server" : strerror(errno));
        return;
    }
    N.bytes_in += (uint64_t)r;
    have += (size_t)r;
    used = parse_input(c, N.rbuf, have);
    if (used == 0 && have == RBUF) {
        conn_dead(c, "message larger than the read buffer");
        return;
    }
    c->left_len = have - used;
    if (c->left_len > c->left_cap) {
        c->left_cap = c->left_len;
        if ((c->left = realloc(c->left, c->left_cap)) == NULL)
            bench_die("out of memory");
    }
    if (c->left_len > 0)
        memcpy(c->left, N.rbuf + used, c->left_len);
}

/* ---- publishing ---- */

static void
make_templates(void)
{
    if ((N.tmpl = calloc(N.topics, sizeof *N.tmpl)) == NULL ||
        (N.pub_seq = calloc(N.topics, sizeof *N.pub_seq)) == NULL)
        bench_die("out of memory");
    for (uint32_t k = 0; k < N.topics; k++) {
        struct tmpl *t = &N.tmpl[k];
        char head[64];
        int hl = snprintf(head, sizeof head, "PUB t%u %u\r\n", k, N.payload);

        t->len = (size_t)hl + N.payload + 2;
        t->seq_off = (size_t)hl;
        if ((t->bytes = malloc(t->len)) == NULL)
            bench_die("out of memory");
        memcpy(t->bytes, head, (size_t)hl);
        bench_payload_fill(t->bytes + hl, N.payload);
        memcpy(t->bytes + t->len - 2, "\r\n", 2);
    }
}

/* Write what is pending; false if the connection failed. */
static bool
conn_flush(struct conn *c)
{
    while (c->out_off < c->out_len) {
        ssize_t w = write(c->fd, c->out + c->out_off, c->out_len - c->out_off);

        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && errno == EAGAIN) {
            ep_out(c, true);
            return true;
        }
        if (w <= 0) {
            conn_dead(c, strerror(errno));
            return false;
        }
        c->out_off += (size_t)w;
    }
    c->out_off = c->out_len = 0;
    c->pong_queued = false;
    ep_out(c, false);
    return true;
}

/* Fill the idle connections' chunks while the window allows; true if it
 * made progress. */
static bool
produce(void)
{
    uint64_t delivered = atomic_load(&N.ctl->delivered);
    bool progress = false;

    for (uint32_t i = 0; i < N.n; i++) {
        struct conn *c = &N.c[i];

        if (c->dead || c->out_len > 0)
            continue;
        while (c->out_len < BENCH_CHUNK) {
            uint32_t k = c->topics[c->rr];
            const struct tmpl *t = &N.tmpl[k];

            if (N.window > 0 && N.sent * N.fanout >= delivered + N.window)
                break;
            memcpy(c->out + c->out_len, t->bytes, t->len);
            bench_put_u64(c->out + c->out_len + t->seq_off, N.pub_seq[k]++);
            c->out_len += t->len;
            if (++c->rr == c->ntopics)
                c->rr = 0;
            N.sent++;
            progress = true;
        }
        if (c->out_len > 0)
            conn_flush(c);
    }
    return progress;
}

static bool
any_pending(void)
{
    for (uint32_t i = 0; i < N.n; i++)
        if (!N.c[i].dead && N.c[i].out_len > 0)
            return true;
    return false;
}

/* ---- the loop ---- */

/* One round of I/O; then the receiving side publishes its count. */
static void
poll_once(int timeout_ms)
{
    struct epoll_event evs[256];
    int n = epoll_wait(N.ep, evs, 256, timeout_ms);

    for (int i = 0; i < n; i++) {
        struct conn *c = evs[i].data.ptr;

        if (!c->dead && (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)))
            conn_read(c);
        if (!c->dead && (evs[i].events & EPOLLOUT) && c->want_out)
            conn_flush(c);
        /* After each connection, not once a batch: a batch of many ready
         * connections would hold the source's window shut while it lasts. */
        if (receiving())
            atomic_store_explicit(&N.ctl->delivered, N.delivered, memory_order_release);
    }
    if (receiving() && N.mode == M_SINK)
        atomic_store(&N.ctl->pub_errors, N.seq_errors + N.errors);
}

/* Publishing: produce while allowed, then wait for the socket or the
 * consumers (as bussrc's flood loop). */
static void
pump(bool stopped)
{
    bool progress = !stopped && produce();

    if (any_pending())
        poll_once(1);
    else
        poll_once(0);
    if (!stopped && !progress && !any_pending())
        bench_sleep_ns(20000); /* window full: let the consumers catch up */
}

/* Connect, subscribe, PING: the PONG says the SUBs are in place. */
static void
connect_all(void)
{
    static const char hello[] =
        "CONNECT {\"verbose\":false,\"pedantic\":false,\"echo\":false,\"lang\":\"c\","
        "\"version\":\"busgate-bench\",\"protocol\":1}\r\n";
    size_t chunk_cap = BENCH_CHUNK + (N.tmpl != NULL ? N.tmpl[N.topics - 1].len : 0) + 64;

    if ((N.c = calloc(N.n, sizeof *N.c)) == NULL)
        bench_die("out of memory");
    for (uint32_t i = 0; i < N.n; i++) {
        struct conn *c = &N.c[i];
        struct epoll_event ev = { .events = EPOLLIN, .data.ptr = c };
        char line[64];

        /* Connection i takes topic i % T, or every T-th topic from i when
         * the topics outnumber the connections. */
        c->ntopics = N.n >= N.topics ? 1 : (N.topics - i + N.n - 1) / N.n;
        if ((c->topics = calloc(c->ntopics, sizeof *c->topics)) == NULL ||
            (c->next_seq = calloc(c->ntopics, sizeof *c->next_seq)) == NULL ||
            (c->count = calloc(c->ntopics, sizeof *c->count)) == NULL)
            bench_die("out of memory");
        for (uint32_t j = 0; j < c->ntopics; j++)
            c->topics[j] = N.n >= N.topics ? i % N.topics : i + j * N.n;
        c->fd = bench_connect_tcp(N.port);
        bench_write_all(c->fd, hello, sizeof hello - 1);
        if (receiving())
            for (uint32_t j = 0; j < c->ntopics; j++) {
                int l = snprintf(line, sizeof line, "SUB t%u %u\r\n", c->topics[j], j + 1);

                bench_write_all(c->fd, line, (size_t)l);
            }
        else if ((c->out = malloc(chunk_cap)) == NULL)
            bench_die("out of memory");
        bench_write_all(c->fd, "PING\r\n", 6);
        bench_set_nonblock(c->fd);
        if (epoll_ctl(N.ep, EPOLL_CTL_ADD, c->fd, &ev) != 0)
            bench_die("epoll_ctl: %s", strerror(errno));
    }
}

static void
wait_ready(double timeout_s)
{
    uint64_t end = bench_now_ns() + (uint64_t)(timeout_s * 1e9);

    for (;;) {
        bool all = true;

        for (uint32_t i = 0; i < N.n && all; i++)
            all = N.c[i].ready;
        if (all)
            break;
        if (N.closed > 0 || bench_now_ns() > end)
            bench_die("natsclient: connections not ready (%llu closed)",
                (unsigned long long)N.closed);
        poll_once(10);
    }
}

/* ---- measuring ---- */

static void
cpu_snap(bool end)
{
    if (end)
        N.busy1 = bench_machine_busy_ns();
    else
        N.busy0 = bench_machine_busy_ns();
    for (int i = 0; i < N.ncpu; i++) {
        uint64_t v;

        if (N.cpu[i].pid == 0) {
            struct timespec ts;

            clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
            v = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
        } else
            v = bench_proc_cpu_ns(N.cpu[i].pid);
        if (end)
            N.cpu[i].t1 = v;
        else
            N.cpu[i].t0 = v;
    }
}

/* Messages that reached the receiving side so far. */
static uint64_t
received(void)
{
    return N.mode == M_SUB ? N.delivered : atomic_load(&N.ctl->delivered);
}

static void
measure(void)
{
    uint64_t go = bench_now_ns(), t0 = go + (uint64_t)(N.warmup * 1e9),
             t1 = t0 + (uint64_t)(N.duration * 1e9), d0 = 0, d1, b0 = 0, now;
    bool measuring = false;
    double secs;

    atomic_store(&N.ctl->go, 1);
    while ((now = bench_now_ns()) < t1) {
        if (!measuring && now >= t0) {
            measuring = true;
            cpu_snap(false);
            d0 = received();
            b0 = N.bytes_in;
            t0 = now;
        }
        if (N.mode == M_PUB)
            pump(false);
        else
            poll_once(measuring ? (int)((t1 - now) / 1000000) + 1 : 1);
    }
    cpu_snap(true);
    d1 = received();
    secs = (double)(now - t0) / 1e9;
    printf("RESULT mode=nats-%s sessions=%u topics=%u seconds=%.3f msgs=%llu rate=%.0f",
        N.mode == M_SUB ? "sub" : "pub", N.n, N.topics, secs, (unsigned long long)(d1 - d0),
        (double)(d1 - d0) / secs);
    if (N.mode == M_SUB)
        printf(" bytes_rate=%.0f", (double)(N.bytes_in - b0) / secs);
    atomic_store(&N.ctl->stop, 1);
    for (int i = 0; i < N.ncpu; i++)
        printf(" cpu_%s=%.4f", N.cpu[i].name, (double)(N.cpu[i].t1 - N.cpu[i].t0) / 1e9);
    printf(" cpu_machine=%.4f", (double)(N.busy1 - N.busy0) / 1e9);
}

static uint64_t
want_of(uint64_t sent, uint32_t k)
{
    return sent / N.topics + (k < sent % N.topics);
}

/* sub: every subscription must get all its topic was sent, from src. */
static void
drain_sub(void)
{
    uint64_t end = bench_now_ns() + (uint64_t)(N.drain * 1e9), sent = 0, missing = 0;
    bool complete = false;

    while (bench_now_ns() < end && !complete) {
        poll_once(10);
        if (!atomic_load(&N.ctl->done))
            continue;
        sent = atomic_load(&N.ctl->sent);
        complete = true;
        for (uint32_t i = 0; i < N.n && complete; i++)
            for (uint32_t j = 0; j < N.c[i].ntopics && complete; j++)
                if (!N.c[i].dead && N.c[i].count[j] < want_of(sent, N.c[i].topics[j]))
                    complete = false;
    }
    if (!atomic_load(&N.ctl->done)) {
        fprintf(stderr, "natsclient: the publisher never said how much it sent\n");
        N.errors++;
    }
    for (uint32_t i = 0; i < N.n; i++)
        for (uint32_t j = 0; j < N.c[i].ntopics; j++) {
            uint64_t want = want_of(sent, N.c[i].topics[j]), got = N.c[i].count[j];

            if (got < want)
                missing += want - got;
            else if (got > want)
                N.seq_errors++; /* more than was sent: duplicates */
        }
    printf(" sent=%llu delivered=%llu missing=%llu seq_errors=%llu errors=%llu closed=%llu",
        (unsigned long long)sent, (unsigned long long)N.delivered,
        (unsigned long long)missing, (unsigned long long)N.seq_errors,
        (unsigned long long)N.errors, (unsigned long long)N.closed);
}

/* pub: write out the chunks begun, then wait for the sink to see all. */
static void
drain_pub(void)
{
    uint64_t end = bench_now_ns() + (uint64_t)(N.drain * 1e9), got, seq_errors;

    while (bench_now_ns() < end && (any_pending() || received() < N.sent))
        pump(true);
    got = received();
    /* More than was sent: duplicates. */
    seq_errors = atomic_load(&N.ctl->pub_errors) + (got > N.sent ? 1 : 0);
    printf(" sent=%llu received=%llu missing=%llu seq_errors=%llu errors=%llu closed=%llu"
           " err_replies=%llu",
        (unsigned long long)N.sent, (unsigned long long)got,
        (unsigned long long)(got < N.sent ? N.sent - got : 0),
        (unsigned long long)seq_errors, (unsigned long long)N.errors,
        (unsigned long long)N.closed, (unsigned long long)N.err_replies);
}

/* ---- the background sides ---- */

/* src: publish from go to stop, then say how much; sink: count. Both run
 * until SIGTERM, serving their sockets. */
static int
run_background(void)
{
    uint64_t deadline = bench_now_ns() + (uint64_t)(N.max_s * 1e9);
    bool started = false;

    if (N.mode == M_SINK)
        atomic_store(&N.ctl->src_ready, 1);
    while (!N.quit && bench_now_ns() < deadline) {
        if (N.mode == M_SINK) {
            poll_once(10);
            continue;
        }
        if (!started && !atomic_load(&N.ctl->go)) {
            poll_once(1);
            continue;
        }
        started = true;
        if (atomic_load(&N.ctl->stop) && !atomic_load(&N.ctl->done)) {
            atomic_store(&N.ctl->sent, N.sent);
            atomic_store(&N.ctl->done, 1);
            fprintf(stderr, "natsclient src: stopped after %llu messages\n",
                (unsigned long long)N.sent);
        }
        pump(atomic_load(&N.ctl->stop));
        if (atomic_load(&N.ctl->done) && !any_pending())
            poll_once(10);
    }
    fprintf(stderr,
        "natsclient %s: sent %llu, received %llu, %llu sequence errors, %llu closed\n",
        N.mode == M_SRC ? "src" : "sink", (unsigned long long)N.sent,
        (unsigned long long)N.delivered, (unsigned long long)N.seq_errors,
        (unsigned long long)N.closed);
    return N.closed > 0 || N.errors > 0 ? 1 : 0;
}

static void
parse_args(int argc, char **argv)
{
    static const struct option opts[] = {
        { "port", 1, NULL, 'p' },
        { "topics", 1, NULL, 't' },
        { "payload", 1, NULL, 's' },
        { "fanout", 1, NULL, 'F' },
        { "window", 1, NULL, 'w' },
        { "ctl", 1, NULL, 'c' },
        { "warmup", 1, NULL, 'W' },
        { "duration", 1, NULL, 'D' },
        { "drain", 1, NULL, 'R' },
        { "max-seconds", 1, NULL, 'm' },
        { "cpu", 1, NULL, 'C' },
        { NULL, 0, NULL, 0 },
    };
    static const char *const modes[] = { "src", "sub", "pub", "sink" };
    int o, m;

    if (argc < 2)
        usage();
    for (m = 0; m < 4 && strcmp(argv[1], modes[m]) != 0; m++)
        ;
    if (m == 4)
        usage();
    N.mode = (enum mode)m;
    optind = 2;
    while ((o = getopt_long(argc, argv, "n:", opts, NULL)) != -1) {
        switch (o) {
        case 'n':
            N.n = (uint32_t)strtoul(optarg, NULL, 10);
            break;
        case 'p':
            N.port = atoi(optarg);
            break;
        case 't':
            N.topics = (uint32_t)strtoul(optarg, NULL, 10);
            break;
        case 's':
            N.payload = (uint32_t)strtoul(optarg, NULL, 10);
            break;
        case 'F':
            N.fanout = (uint32_t)strtoul(optarg, NULL, 10);
            break;
        case 'w':
            N.window = strtoull(optarg, NULL, 10);
            break;
        case 'c': /* the mode is known: argv[1] */
            N.ctl = bench_ctl_open(optarg, N.mode == M_SRC || N.mode == M_SINK);
            break;
        case 'W':
            N.warmup = strtod(optarg, NULL);
            break;
        case 'D':
            N.duration = strtod(optarg, NULL);
            break;
        case 'R':
            N.drain = strtod(optarg, NULL);
            break;
        case 'm':
            N.max_s = strtod(optarg, NULL);
            break;
        case 'C': {
            char *eq = strchr(optarg, '=');

            if (eq == NULL || N.ncpu == MAX_CPU - 1)
                usage();
            *eq = 0;
            N.cpu[N.ncpu].name = optarg;
            N.cpu[N.ncpu++].pid = atoi(eq + 1);
            break;
        }
        default:
            usage();
        }
    }
    if (optind != argc || N.n == 0 || N.topics == 0 || N.fanout == 0 || N.port == 0 ||
        N.ctl == NULL || ((N.mode == M_SRC || N.mode == M_SINK) && N.n != 1) ||
        (N.mode == M_PUB && N.topics != N.n) || N.payload < BENCH_MIN_PAYLOAD ||
        N.payload > BENCH_MAX_PAYLOAD)
        usage();
}

int
main(int argc, char **argv)
{
    N.n = 1;
    N.topics = 1;
    N.payload = 16;
    N.fanout = 1;
    N.warmup = 0.5;
    N.duration = 3;
    N.drain = 30;
    N.max_s = 600;
    parse_args(argc, argv);
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);
    signal(SIGPIPE, SIG_IGN);
    prctl(PR_SET_TIMERSLACK, 1000UL);
    bench_raise_nofile();
    if ((N.rbuf = malloc(RBUF)) == NULL || (N.ep = epoll_create1(EPOLL_CLOEXEC)) < 0)
        bench_die("out of memory / epoll");
    N.cpu[N.ncpu].name = "client";
    N.cpu[N.ncpu++].pid = 0;
    if (!receiving())
        make_templates();
    connect_all();
    wait_ready(120);
    if (N.mode == M_SRC || N.mode == M_SINK)
        return run_background();
    if (N.mode == M_PUB) {
        uint64_t end = bench_now_ns() + 20000000000ull;

        while (!atomic_load(&N.ctl->src_ready)) {
            if (bench_now_ns() > end)
                bench_die("natsclient: the sink never became ready");
            poll_once(10);
        }
    }
    measure();
    if (N.mode == M_PUB)
        drain_pub();
    else
        drain_sub();
    printf("\n");
    fflush(stdout);
    return 0;
}
