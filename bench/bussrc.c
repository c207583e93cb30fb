/*
 * bussrc: the bus side of the benchmarks. A server speaking the v3 bus
 * protocol (plain TCP, authentication "none": the client sends nothing
 * before its first message), that accepts the gateway (or a direct bus
 * client, the latency baseline), reads its SubscriptionRequests, and
 * sends ForwardedMulticastData on the subscribed topics "t0".."t<T-1>" of
 * feed "bench", round-robin:
 *
 *   flood mode (default): as fast as the peer takes it, messages copied
 *     from pre-encoded templates into ~64 KiB chunks, one write() each;
 *     with --ctl, at most --window deliveries in flight (see bench.h);
 *   rate mode (--rate R): R messages/s in total, each stamped with its
 *     send time just before it is written, for one-way latency.
 *
 * It also counts the MulticastData arriving (the publish path) and checks
 * that each publisher topic "p<i>" sees sequence numbers 0, 1, 2... in
 * order, exactly once. Everything the clients need to know goes through
 * the control block.
 */
#include <arpa/inet.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/socket.h>

#include <event2/buffer.h>

#include "bench.h"
#include "wire.h"

#define MAX_CONNS 4096
#define IN_CAP (1u << 20)

struct conn {
    int fd;
    bool want_out; /* EPOLLOUT registered */
    uint8_t *in;   /* bytes read, not yet decoded */
    size_t in_len;
    uint8_t *out; /* generated, not yet written */
    size_t out_off, out_len, out_cap;
    uint32_t *subs; /* per data topic: subscription count */
    uint64_t msgs_in, bytes_out;
};

struct tmpl {
    uint8_t *bytes;
    size_t len; /* whole message; the payload is its tail */
};

static struct {
    int lfd, ep;
    struct conn *conns[MAX_CONNS];
    int nconns;
    struct bench_ctl *ctl;
    struct wire_limits lim;
    struct tmpl *tmpl; /* per data topic */
    uint32_t topics, fanout, payload;
    uint64_t window; /* deliveries in flight (flood + ctl) */
    double rate;     /* messages/s, 0: flood */
    uint64_t sent;
    uint32_t *topic_subs; /* per topic: connections subscribed */
    uint32_t covered;     /* topics with at least one subscriber */
    uint64_t pairs;       /* (connection, topic) subscriptions */
    uint64_t need_pairs;  /* start when this many, and every topic covered */
    uint64_t *pub_next;   /* per publisher topic: next expected seq */
    uint32_t pub_topics;
    uint64_t pub_recv, pub_bytes, pub_errors, other_subs, bad_msgs;
    bool started;
    uint64_t t_start;
    volatile sig_atomic_t quit;
} S;

static void
on_signal(int sig)
{
    S.quit = 1;
}

static void
usage(void)
{
    fprintf(stderr,
        "usage: bussrc [--port N] [--port-file FILE] [--ctl FILE] [--topics T]\n"
        "              [--fanout F] [--payload BYTES] [--window DELIVERIES]\n"
        "              [--rate MSGS_PER_S] [--subscribers N] [--max-seconds S]\n"
        "Sending starts when every topic has a subscriber, N (connection, topic)\n"
        "subscriptions exist (direct clients) and the clients said go.\n");
    exit(2);
}

/* Encode one ForwardedMulticastData for topic k with the project's codec. */
static void
make_template(uint32_t k)
{
    char topic[32];
    uint8_t *payload = malloc(S.payload);
    struct wire_packet pk = { { NULL, 0 }, payload, S.payload };
    struct wire_msg m;
    struct evbuffer *b = evbuffer_new();
    struct tmpl *t = &S.tmpl[k];

    if (payload == NULL || b == NULL)
        bench_die("out of memory");
    bench_payload_fill(payload, S.payload);
    snprintf(topic, sizeof topic, "t%u", k);
    wire_msg_init(&m);
    m.type = WIRE_FORWARDED_MULTICAST;
    m.user = (struct wire_str){ BENCH_USER, (uint32_t)strlen(BENCH_USER) };
    m.host = (struct wire_str){ BENCH_HOST, (uint32_t)strlen(BENCH_HOST) };
    m.feed = (struct wire_str){ BENCH_FEED, (uint32_t)strlen(BENCH_FEED) };
    m.topic = (struct wire_str){ topic, (uint32_t)strlen(topic) };
    m.packets = &pk;
    m.n_packets = 1;
    if (wire_encode(b, &m) != 0)
        bench_die("wire_encode failed");
    t->len = evbuffer_get_length(b);
    if ((t->bytes = malloc(t->len)) == NULL)
        bench_die("out of memory");
    evbuffer_remove(b, t->bytes, t->len);
    if (memcmp(t->bytes + t->len - S.payload, payload, S.payload) != 0)
        bench_die("template: payload is not the message's tail");
    evbuffer_free(b);
    free(payload);
}

static void
ep_mod(struct conn *c, bool out)
{
    struct epoll_event ev = { .events = EPOLLIN | (out ? EPOLLOUT : 0), .data.ptr = c };

    if (c->want_out == out)
        return;
    c->want_out = out;
    epoll_ctl(S.ep, EPOLL_CTL_MOD, c->fd, &ev);
}

/* A ForwardedMulticastData on the heartbeat topic: confirms the link. */
static void
queue_heartbeat(struct conn *c)
{
    struct wire_msg m;
    struct evbuffer *b = evbuffer_new();
    size_t n;

    wire_msg_init(&m);
    m.type = WIRE_FORWARDED_MULTICAST;
    m.user = (struct wire_str){ "admin", 5 };
    m.host = (struct wire_str){ BENCH_HOST, (uint32_t)strlen(BENCH_HOST) };
    m.feed = (struct wire_str){ "__admin__", 9 };
    m.topic = (struct wire_str){ "heartbeat", 9 };
    m.is_image = true;
    if (b == NULL || wire_encode(b, &m) != 0)
        bench_die("wire_encode failed");
    n = evbuffer_get_length(b);
    evbuffer_remove(b, c->out + c->out_len, n);
    c->out_len += n;
    evbuffer_free(b);
}

static bool do_write(struct conn *c);
static void conn_close(struct conn *c);

static void
do_accept(void)
{
    int fd = accept(S.lfd, NULL, NULL), one = 1;
    struct conn *c;
    struct epoll_event ev;

    if (fd < 0)
        return;
    if (S.nconns == MAX_CONNS) {
        close(fd);
        return;
    }
    bench_set_nonblock(fd);
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c = calloc(1, sizeof *c);
    if (c == NULL || (c->in = malloc(IN_CAP)) == NULL ||
        (c->subs = calloc(S.topics, sizeof *c->subs)) == NULL)
        bench_die("out of memory");
    c->fd = fd;
    c->out_cap = 2 * BENCH_CHUNK + S.tmpl[0].len + 256;
    if ((c->out = malloc(c->out_cap)) == NULL)
        bench_die("out of memory");
    queue_heartbeat(c);
    ev.events = EPOLLIN;
    ev.data.ptr = c;
    epoll_ctl(S.ep, EPOLL_CTL_ADD, fd, &ev);
    S.conns[S.nconns++] = c;
    if (!do_write(c))
        conn_close(c);
}

static void
conn_close(struct conn *c)
{
    for (uint32_t k = 0; k < S.topics; k++) {
        if (c->subs[k] > 0)
            S.pairs--;
        if (c->subs[k] > 0 && --S.topic_subs[k] == 0)
            S.covered--;
    }
    epoll_ctl(S.ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    for (int i = 0; i < S.nconns; i++)
        if (S.conns[i] == c) {
            S.conns[i] = S.conns[--S.nconns];
            break;
        }
    if (S.nconns < 4)
        fprintf(stderr,
            "bussrc: connection closed after %llu messages in, %llu bytes out\n",
            (unsigned long long)c->msgs_in, (unsigned long long)c->bytes_out);
    free(c->in);
    free(c->out);
    free(c->subs);
    free(c);
}

/* "<prefix><decimal>" -> index, or -1. */
static long
topic_index(const struct wire_str *t, char prefix)
{
    long v = 0;

    if (t->len < 2 || t->len > 10 || t->ptr[0] != prefix)
        return -1;
    for (uint32_t i = 1; i < t->len; i++) {
        if (t->ptr[i] < '0' || t->ptr[i] > '9')
            return -1;
        v = v * 10 + (t->ptr[i] - '0');
    }
    return v;
}

static bool
is_bench_feed(const struct wire_str *f)
{
    return f->len == strlen(BENCH_FEED) && memcmp(f->ptr, BENCH_FEED, f->len) == 0;
}

static void
on_subscription(struct conn *c, const struct wire_msg *m)
{
    long k = is_bench_feed(&m->feed) ? topic_index(&m->topic, 't') : -1;

    if (k < 0 || (uint64_t)k >= S.topics) {
        S.other_subs++;
        return;
    }
    if (m->is_add) {
        if (c->subs[k]++ == 0) {
            S.pairs++;
            if (S.topic_subs[k]++ == 0)
                S.covered++;
        }
    } else if (c->subs[k] > 0 && --c->subs[k] == 0) {
        S.pairs--;
        if (--S.topic_subs[k] == 0)
            S.covered--;
    }
}

/* A publish: count it and check its topic's sequence. */
static void
on_publish(const uint8_t *feed, uint32_t flen, const uint8_t *topic, uint32_t tlen,
    const uint8_t *data, uint32_t dlen, size_t total)
{
    struct wire_str f = { (const char *)feed, flen }, t = { (const char *)topic, tlen };
    long k = is_bench_feed(&f) ? topic_index(&t, 'p') : -1;
    uint64_t seq;

    S.pub_recv++;
    S.pub_bytes += total;
    if (k < 0 || dlen < 8) {
        S.pub_errors++;
        return;
    }
    if ((uint64_t)k >= S.pub_topics) {
        uint32_t n = (uint32_t)k + 1024;
        uint64_t *p = realloc(S.pub_next, n * sizeof *p);

        if (p == NULL)
            bench_die("out of memory");
        memset(p + S.pub_topics, 0, (n - S.pub_topics) * sizeof *p);
        S.pub_next = p;
        S.pub_topics = n;
    }
    seq = bench_get_u64(data);
    if (seq != S.pub_next[k])
        S.pub_errors++;
    S.pub_next[k] = seq + 1;
}

/*
 * The publish path's fast decoder: MulticastData is feed, topic, isImage,
 * packet array. Returns bytes used, 0 for more, -1 if not such a message.
 */
static long
fast_multicast(const uint8_t *p, size_t n)
{
    const uint8_t *feed, *topic, *data = NULL;
    uint32_t flen, tlen, count, dlen = 0;
    size_t o = 1;
    int r;

    if (n < 1 || p[0] != WIRE_MULTICAST_DATA)
        return -1;
    if ((r = bench_skip_lv(p, n, &o, S.lim.max_string, &feed, &flen)) != 1 ||
        (r = bench_skip_lv(p, n, &o, S.lim.max_string, &topic, &tlen)) != 1)
        return r;
    if (o + 5 > n)
        return 0;
    count = bench_be32(p + o + 1);
    o += 5;
    if (count > S.lim.max_packets)
        return -1;
    for (uint32_t i = 0; i < count; i++) {
        const uint8_t *d;
        uint32_t l, ents;

        if (o + 4 > n)
            return 0;
        ents = bench_be32(p + o);
        if (ents > S.lim.max_entitlements)
            return -1;
        o += 4 + (size_t)ents * 4;
        if ((r = bench_skip_lv(p, n, &o, S.lim.max_payload, &d, &l)) != 1)
            return r;
        if (i == 0) {
            data = d;
            dlen = l;
        }
    }
    on_publish(feed, flen, topic, tlen, data, dlen, o);
    return (long)o;
}

/* Anything else, through the project's codec: bytes used, 0, or -1. */
static long
slow_decode(struct conn *c, const uint8_t *p, size_t n)
{
    struct evbuffer *b = evbuffer_new();
    struct wire_msg m;
    const char *cause = NULL;
    long used = 0;

    wire_msg_init(&m);
    evbuffer_add_reference(b, p, n, NULL, NULL);
    switch (wire_decode(b, &S.lim, &m, &cause)) {
    case WIRE_ERROR:
        fprintf(stderr, "bussrc: protocol error: %s\n", cause ? cause : "?");
        used = -1;
        break;
    case WIRE_NEED_MORE:
        break;
    case WIRE_DECODED:
        used = (long)(n - evbuffer_get_length(b));
        if (m.type == WIRE_SUBSCRIPTION_REQUEST)
            on_subscription(c, &m);
        else if (m.type == WIRE_MULTICAST_DATA || m.type == WIRE_UNICAST_DATA)
            on_publish((const uint8_t *)m.feed.ptr, m.feed.len,
                (const uint8_t *)m.topic.ptr, m.topic.len,
                m.n_packets ? m.packets[0].data : NULL, m.n_packets ? m.packets[0].len : 0,
                (size_t)used);
        break;
    }
    wire_msg_free(&m);
    evbuffer_free(b);
    return used;
}

static bool
do_read(struct conn *c)
{
    ssize_t r = read(c->fd, c->in + c->in_len, IN_CAP - c->in_len);
    size_t o = 0;
    long used;

    if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR))
        return false;
    if (r < 0)
        return true;
    c->in_len += (size_t)r;
    while (o < c->in_len) {
        used = fast_multicast(c->in + o, c->in_len - o);
        if (used < 0)
            used = slow_decode(c, c->in + o, c->in_len - o);
        if (used < 0) {
            S.bad_msgs++;
            return false;
        }
        if (used == 0)
            break;
        c->msgs_in++;
        o += (size_t)used;
    }
    if (o == 0 && c->in_len == IN_CAP)
        return false; /* one message larger than the buffer */
    memmove(c->in, c->in + o, c->in_len - o);
    c->in_len -= o;
    atomic_store(&S.ctl->pub_recv, S.pub_recv);
    atomic_store(&S.ctl->pub_bytes, S.pub_bytes);
    atomic_store(&S.ctl->pub_errors, S.pub_errors);
    return true;
}

/* Write what is pending; false if the connection failed. */
static bool
do_write(struct conn *c)
{
    while (c->out_off < c->out_len) {
        ssize_t w = write(c->fd, c->out + c->out_off, c->out_len - c->out_off);

        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && errno == EAGAIN) {
            ep_mod(c, true);
            return true;
        }
        if (w <= 0)
            return false;
        c->out_off += (size_t)w;
        c->bytes_out += (uint64_t)w;
    }
    c->out_off = c->out_len = 0;
    ep_mod(c, false);
    return true;
}

/* Append message number S.sent to every connection subscribed to its topic. */
static void
gen_one(uint64_t stamp)
{
    uint32_t k = (uint32_t)(S.sent % S.topics);
    uint64_t seq = S.sent / S.topics;
    const struct tmpl *t = &S.tmpl[k];

    for (int i = 0; i < S.nconns; i++) {
        struct conn *c = S.conns[i];
        uint8_t *d;

        if (c->subs[k] == 0)
            continue;
        d = c->out + c->out_len;
        memcpy(d, t->bytes, t->len);
        bench_put_u64(d + t->len - S.payload, seq);
        bench_put_u64(d + t->len - S.payload + 8, stamp);
        c->out_len += t->len;
    }
    S.sent++;
}

/* Room for one more message on every connection's chunk. */
static bool
chunk_room(void)
{
    for (int i = 0; i < S.nconns; i++)
        if (S.conns[i]->out_len >= BENCH_CHUNK)
            return false;
    return true;
}

static bool
any_pending(void)
{
    for (int i = 0; i < S.nconns; i++)
        if (S.conns[i]->out_len > S.conns[i]->out_off)
            return true;
    return false;
}

static void
flush_all(void)
{
    for (int i = 0; i < S.nconns; i++)
        if (!S.conns[i]->want_out && !do_write(S.conns[i]))
            conn_close(S.conns[i--]);
}

/* Flood: fill chunks while the window allows. True if it made progress. */
static bool
produce_flood(void)
{
    uint64_t delivered = atomic_load(&S.ctl->delivered), stamp = bench_now_ns();
    bool progress = false;

    flush_all();
    if (any_pending())
        return false;
    while (chunk_room()) {
        if (S.window > 0 && S.sent * S.fanout >= delivered + S.window)
            break;
        gen_one(stamp);
        progress = true;
    }
    atomic_store(&S.ctl->sent, S.sent);
    flush_all();
    return progress;
}

/* Rate: what is due by now, stamped now; the time of the next one. */
static uint64_t
produce_rate(void)
{
    uint64_t now = bench_now_ns(), due;
    double per = 1e9 / S.rate;

    due = (uint64_t)((double)(now - S.t_start) / per) + 1;
    flush_all();
    if (!any_pending())
        while (S.sent < due && chunk_room())
            gen_one(bench_now_ns());
    atomic_store(&S.ctl->sent, S.sent);
    flush_all();
    return S.t_start + (uint64_t)((double)S.sent * per);
}

static void
listen_on(int port, const char *port_file)
{
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
    socklen_t alen = sizeof a;
    int one = 1;

    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if ((S.lfd = socket(AF_INET, SOCK_STREAM, 0)) < 0)
        bench_die("socket: %s", strerror(errno));
    setsockopt(S.lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(S.lfd, (struct sockaddr *)&a, sizeof a) != 0 || listen(S.lfd, 1024) != 0)
        bench_die("bind/listen: %s", strerror(errno));
    getsockname(S.lfd, (struct sockaddr *)&a, &alen);
    bench_set_nonblock(S.lfd);
    printf("port %u\n", ntohs(a.sin_port));
    fflush(stdout);
    if (port_file != NULL) {
        char tmp[4096];
        FILE *f;

        snprintf(tmp, sizeof tmp, "%s.tmp", port_file);
        if ((f = fopen(tmp, "w")) == NULL)
            bench_die("%s: %s", tmp, strerror(errno));
        fprintf(f, "%u\n", ntohs(a.sin_port));
        fclose(f);
        if (rename(tmp, port_file) != 0)
            bench_die("%s: %s", port_file, strerror(errno));
    }
}

static void
parse_args(int argc, char **argv, int *port, const char **port_file, const char **ctl,
    double *max_s)
{
    static const struct option opts[] = {
        { "port", 1, NULL, 'p' },
        { "port-file", 1, NULL, 'f' },
        { "ctl", 1, NULL, 'c' },
        { "topics", 1, NULL, 't' },
        { "fanout", 1, NULL, 'F' },
        { "payload", 1, NULL, 's' },
        { "window", 1, NULL, 'w' },
        { "rate", 1, NULL, 'r' },
        { "max-seconds", 1, NULL, 'm' },
        { "subscribers", 1, NULL, 'n' },
        { NULL, 0, NULL, 0 },
    };
    int o;

    while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (o) {
        case 'p':
            *port = atoi(optarg);
            break;
        case 'f':
            *port_file = optarg;
            break;
        case 'c':
            *ctl = optarg;
            break;
        case 't':
            S.topics = (uint32_t)strtoul(optarg, NULL, 10);
            break;
        case 'F':
            S.fanout = (uint32_t)strtoul(optarg, NULL, 10);
            break;
        case 's':
            S.payload = (uint32_t)strtoul(optarg, NULL, 10);
            break;
        case 'w':
            S.window = strtoull(optarg, NULL, 10);
            break;
        case 'r':
            S.rate = strtod(optarg, NULL);
            break;
        case 'm':
            *max_s = strtod(optarg, NULL);
            break;
        case 'n':
            S.need_pairs = strtoull(optarg, NULL, 10);
            break;
        default:
            usage();
        }
    }
    if (optind != argc || S.topics == 0 || S.topics > 1000000 || S.fanout == 0 ||
        S.payload < BENCH_MIN_PAYLOAD || S.payload > BENCH_MAX_PAYLOAD || S.rate < 0)
        usage();
}

/* Start once every topic has a subscriber and the clients said go. */
static void
maybe_start(void)
{
    if (S.started || S.covered < S.topics || S.pairs < S.need_pairs)
        return;
    atomic_store(&S.ctl->src_ready, 1);
    if (!atomic_load(&S.ctl->go))
        return;
    S.started = true;
    S.t_start = bench_now_ns();
    fprintf(stderr, "bussrc: start: %u topics, %u B payload, %s\n", S.topics, S.payload,
        S.rate > 0 ? "rate" : "flood");
}

static void
run(double max_s)
{
    struct epoll_event evs[64];
    uint64_t deadline = bench_now_ns() + (uint64_t)(max_s * 1e9);
    int timeout = 10;

    while (!S.quit && bench_now_ns() < deadline) {
        int n = epoll_wait(S.ep, evs, 64, timeout);

        for (int i = 0; i < n; i++) {
            struct conn *c = evs[i].data.ptr;

            if (c == NULL) {
                do_accept();
                continue;
            }
            if ((evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) && !do_read(c)) {
                conn_close(c);
                continue;
            }
            if ((evs[i].events & EPOLLOUT) && c->want_out && !do_write(c))
                conn_close(c);
        }
        maybe_start();
        if (S.started && atomic_load(&S.ctl->stop) && !atomic_load(&S.ctl->done)) {
            atomic_store(&S.ctl->sent, S.sent);
            atomic_store(&S.ctl->done, 1);
            fprintf(stderr, "bussrc: stopped after %llu messages\n",
                (unsigned long long)S.sent);
        }
        timeout = 10;
        if (!S.started || atomic_load(&S.ctl->stop))
            continue;
        if (S.rate > 0) {
            uint64_t next = produce_rate(), now = bench_now_ns();

            if (any_pending()) {
                timeout = 1; /* EPOLLOUT wakes us */
            } else {
                if (next > now)
                    bench_sleep_ns(next - now > 1000000 ? 1000000 : next - now);
                timeout = 0;
            }
        } else {
            bool progress = produce_flood();

            if (any_pending()) {
                timeout = 1;
            } else {
                if (!progress)
                    bench_sleep_ns(20000); /* window full: let the consumers catch up */
                timeout = 0;
            }
        }
    }
}

int
main(int argc, char **argv)
{
    const char *port_file = NULL, *ctl = NULL;
    int port = 0;
    double max_s = 600;
    struct epoll_event ev = { .events = EPOLLIN, .data.ptr = NULL };
    static struct bench_ctl local;

    S.topics = 1;
    S.fanout = 1;
    S.payload = 16;
    parse_args(argc, argv, &port, &port_file, &ctl, &max_s);
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);
    signal(SIGPIPE, SIG_IGN);
    prctl(PR_SET_TIMERSLACK, 1000UL);
    bench_raise_nofile();
    wire_limits_default(&S.lim);
    S.ctl = ctl != NULL ? bench_ctl_open(ctl, true) : &local;
    if (ctl == NULL)
        atomic_store(&S.ctl->go, 1); /* no clients to wait for */
    if (ctl == NULL)
        S.window = 0;
    S.tmpl = calloc(S.topics, sizeof *S.tmpl);
    S.topic_subs = calloc(S.topics, sizeof *S.topic_subs);
    if (S.tmpl == NULL || S.topic_subs == NULL)
        bench_die("out of memory");
    for (uint32_t k = 0; k < S.topics; k++)
        make_template(k);
    listen_on(port, port_file);
    if ((S.ep = epoll_create1(0)) < 0)
        bench_die("epoll: %s", strerror(errno));
    epoll_ctl(S.ep, EPOLL_CTL_ADD, S.lfd, &ev);
    run(max_s);
    fprintf(stderr,
        "bussrc: sent %llu data messages; received %llu publishes "
        "(%llu bytes, %llu sequence errors), %llu other subscriptions\n",
        (unsigned long long)S.sent, (unsigned long long)S.pub_recv,
        (unsigned long long)S.pub_bytes, (unsigned long long)S.pub_errors,
        (unsigned long long)S.other_subs);
    while (S.nconns > 0)
        conn_close(S.conns[0]);
    for (uint32_t k = 0; k < S.topics; k++)
        free(S.tmpl[k].bytes);
    free(S.tmpl);
    free(S.topic_subs);
    free(S.pub_next);
    close(S.ep);
    close(S.lfd);
    return S.bad_msgs > 0 ? 1 : 0;
}
