/*
 * rawfanout: the physical baseline. One writer process pushes the same
 * bytes the gateway would send (DATA events formatted by the project's
 * lp_format_data, of the given payload size) through N plain Unix socket
 * pairs to one reader process, as fast as the kernel allows: the records
 * are coalesced into ~64 KiB chunks, each chunk written to every reader
 * (edge-triggered epoll; the next chunk starts when all took this one).
 * The reader reads up to 256 KiB per ready socket with level-triggered
 * epoll and counts bytes; with --parse it also parses every event with
 * the same parser and sequence check as lpclient, which adds the
 * subscriber's own work to the baseline. With --pub the records are PUB
 * commands instead (the publish path's input bytes), unparsed.
 *
 * Prints one "RESULT ..." line: deliveries/s = bytes/s / record size.
 */
#include <getopt.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/wait.h>

#include <event2/buffer.h>

#include "bench.h"
#include "lineproto.h"
#include "wire.h"

#define RBUF (256u * 1024)

static struct {
    uint32_t n, payload;
    double warmup, duration;
    bool parse, pub;
    uint8_t *rec; /* one DATA event */
    size_t rec_len, payload_off;
    uint8_t *chunk;
    size_t chunk_len;
    uint32_t per_chunk;
    int *wfd, *rfd;
} R;

static void
usage(void)
{
    fprintf(stderr,
        "usage: rawfanout -n READERS [--payload BYTES] [--parse | --pub]\n"
        "                 [--warmup S] [--duration S]\n");
    exit(2);
}

/* The DATA event the gateway would write for a bussrc message. */
static void
make_record(void)
{
    uint8_t *payload = malloc(R.payload);
    struct wire_packet pk = { { NULL, 0 }, payload, R.payload };
    struct wire_msg m;
    struct evbuffer *b = evbuffer_new();

    if (payload == NULL || b == NULL)
        bench_die("out of memory");
    bench_payload_fill(payload, R.payload);
    wire_msg_init(&m);
    m.type = WIRE_FORWARDED_MULTICAST;
    m.user = (struct wire_str){ BENCH_USER, (uint32_t)strlen(BENCH_USER) };
    m.host = (struct wire_str){ BENCH_HOST, (uint32_t)strlen(BENCH_HOST) };
    m.feed = (struct wire_str){ BENCH_FEED, (uint32_t)strlen(BENCH_FEED) };
    m.topic = (struct wire_str){ "t0", 2 };
    m.packets = &pk;
    m.n_packets = 1;
    if (lp_format_data(b, &m) != 0)
        bench_die("lp_format_data failed");
    R.rec_len = evbuffer_get_length(b);
    if ((R.rec = malloc(R.rec_len)) == NULL)
        bench_die("out of memory");
    evbuffer_remove(b, R.rec, R.rec_len);
    R.payload_off = R.rec_len - 1 - R.payload;
    if (memcmp(R.rec + R.payload_off, payload, R.payload) != 0)
        bench_die("record layout unexpected");
    evbuffer_free(b);
    free(payload);
}

/* The PUB command a publisher writes for one message. */
static void
make_pub_record(void)
{
    char head[64];
    int hl = snprintf(head, sizeof head, "PUB %s p0 delta %u\n", BENCH_FEED, R.payload);

    R.rec_len = (size_t)hl + R.payload + 1;
    if ((R.rec = malloc(R.rec_len)) == NULL)
        bench_die("out of memory");
    memcpy(R.rec, head, (size_t)hl);
    bench_payload_fill(R.rec + hl, R.payload);
    R.rec[R.rec_len - 1] = '\n';
    R.payload_off = (size_t)hl;
}

static void
fill_chunk(uint64_t g)
{
    if (!R.parse)
        return;
    for (uint32_t j = 0; j < R.per_chunk; j++)
        bench_put_u64(R.chunk + j * R.rec_len + R.payload_off, g * R.per_chunk + j);
}

/* The writer: chunk after chunk to every reader, until they hang up. */
static int
writer(pid_t child)
{
    int ep = epoll_create1(0), status = 0;
    size_t *off = calloc(R.n, sizeof *off);
    uint32_t done;
    struct epoll_event ev, evs[256];

    if (ep < 0 || off == NULL)
        bench_die("epoll / out of memory");
    for (uint32_t i = 0; i < R.n; i++) {
        ev.events = EPOLLOUT | EPOLLET;
        ev.data.u32 = i;
        epoll_ctl(ep, EPOLL_CTL_ADD, R.wfd[i], &ev);
    }
    for (uint64_t g = 0;; g++) {
        fill_chunk(g);
        done = 0;
        for (uint32_t i = 0; i < R.n; i++)
            off[i] = 0;
        /* First try everyone, then wait for the blocked ones. */
        for (int pass = 0; done < R.n; pass++) {
            int n = R.n;

            if (pass > 0 && (n = epoll_wait(ep, evs, 256, 1000)) < 0 && errno != EINTR)
                goto out;
            for (int e = 0; e < n; e++) {
                uint32_t i = pass > 0 ? evs[e].data.u32 : (uint32_t)e;

                while (off[i] < R.chunk_len) {
                    ssize_t w = write(R.wfd[i], R.chunk + off[i], R.chunk_len - off[i]);

                    if (w < 0 && errno == EINTR)
                        continue;
                    if (w < 0 && errno == EAGAIN)
                        break;
                    if (w <= 0)
                        goto out; /* the reader is done */
                    off[i] += (size_t)w;
                    if (off[i] == R.chunk_len)
                        done++;
                }
            }
            if (pass > 0 && n == 0 && waitpid(child, &status, WNOHANG) == child)
                return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
        }
    }
out:
    free(off);
    close(ep);
    for (uint32_t i = 0; i < R.n; i++)
        close(R.wfd[i]);
    if (waitpid(child, &status, 0) != child)
        return 1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
}

struct rd {
    uint8_t *left;
    size_t left_len;
    uint64_t next_seq, count;
};

/* Parse whole records in p[0..n): returns bytes used; counts errors. */
static size_t
parse_records(struct rd *r, const uint8_t *p, size_t n, uint64_t *errors)
{
    size_t o = 0;
    struct bench_data d;
    int k;

    while (o < n && (k = bench_parse_lp_data(p + o, n - o, &d)) == 1) {
        if (d.payload_len < BENCH_MIN_PAYLOAD || bench_get_u64(d.payload) != r->next_seq)
            (*errors)++;
        r->next_seq++;
        r->count++;
        o += d.total;
    }
    if (o < n && k < 0)
        bench_die("rawfanout: malformed record");
    return o;
}

/* The reader: count (and maybe parse) everything, measure, report. */
static int
reader(pid_t writer_pid)
{
    int ep = epoll_create1(0);
    uint8_t *buf = malloc(RBUF);
    struct rd *rd = calloc(R.n, sizeof *rd);
    struct epoll_event ev, evs[256];
    uint64_t bytes = 0, b0 = 0, errors = 0, t_start, t0, t1, now, c0 = 0, c1, w0 = 0, w1;
    uint64_t m0 = 0, m1;
    bool measuring = false;
    struct timespec ts;

    if (ep < 0 || buf == NULL || rd == NULL)
        bench_die("epoll / out of memory");
    for (uint32_t i = 0; i < R.n; i++) {
        ev.events = EPOLLIN;
        ev.data.u32 = i;
        epoll_ctl(ep, EPOLL_CTL_ADD, R.rfd[i], &ev);
        if (R.parse && (rd[i].left = malloc(R.rec_len)) == NULL)
            bench_die("out of memory");
    }
    t_start = bench_now_ns();
    t0 = t_start + (uint64_t)(R.warmup * 1e9);
    t1 = t0 + (uint64_t)(R.duration * 1e9);
    while ((now = bench_now_ns()) < t1) {
        if (!measuring && now >= t0) {
            measuring = true;
            t0 = now;
            b0 = bytes;
            clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
            c0 = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
            w0 = bench_proc_cpu_ns(writer_pid);
            m0 = bench_machine_busy_ns();
        }
        int n = epoll_wait(ep, evs, 256, 100);

        for (int e = 0; e < n; e++) {
            uint32_t i = evs[e].data.u32;
            struct rd *r = &rd[i];
            size_t have = R.parse ? r->left_len : 0, used;
            ssize_t got;

            if (have > 0)
                memcpy(buf, r->left, have);
            got = read(R.rfd[i], buf + have, RBUF - have);
            if (got <= 0) {
                if (got < 0 && (errno == EAGAIN || errno == EINTR))
                    continue;
                bench_die("rawfanout: reader %u: %s", i,
                    got == 0 ? "EOF" : strerror(errno));
            }
            bytes += (uint64_t)got;
            if (!R.parse)
                continue;
            have += (size_t)got;
            used = parse_records(r, buf, have, &errors);
            r->left_len = have - used;
            if (r->left_len > 0)
                memcpy(r->left, buf + used, r->left_len);
        }
    }
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    c1 = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
    w1 = bench_proc_cpu_ns(writer_pid);
    m1 = bench_machine_busy_ns();
    double secs = (double)(now - t0) / 1e9, brate = (double)(bytes - b0) / secs;

    printf("RESULT mode=raw%s readers=%u payload=%u record=%zu chunk=%zu seconds=%.3f"
           " rate=%.0f bytes_rate=%.0f cpu_writer=%.4f cpu_reader=%.4f cpu_machine=%.4f"
           " seq_errors=%llu\n",
        R.parse     ? "+parse"
            : R.pub ? "-pub"
                    : "",
        R.n, R.payload, R.rec_len, R.chunk_len, secs, brate / (double)R.rec_len, brate,
        (double)(w1 - w0) / 1e9, (double)(c1 - c0) / 1e9, (double)(m1 - m0) / 1e9,
        (unsigned long long)errors);
    fflush(stdout);
    return errors > 0 ? 1 : 0;
}

int
main(int argc, char **argv)
{
    static const struct option opts[] = {
        { "payload", 1, NULL, 's' },
        { "parse", 0, NULL, 'p' },
        { "pub", 0, NULL, 'P' },
        { "warmup", 1, NULL, 'W' },
        { "duration", 1, NULL, 'D' },
        { NULL, 0, NULL, 0 },
    };
    pid_t parent = getpid(), child;
    int o;

    R.payload = 16;
    R.warmup = 0.5;
    R.duration = 3;
    while ((o = getopt_long(argc, argv, "n:", opts, NULL)) != -1) {
        switch (o) {
        case 'n':
            R.n = (uint32_t)strtoul(optarg, NULL, 10);
            break;
        case 's':
            R.payload = (uint32_t)strtoul(optarg, NULL, 10);
            break;
        case 'p':
            R.parse = true;
            break;
        case 'P':
            R.pub = true;
            break;
        case 'W':
            R.warmup = strtod(optarg, NULL);
            break;
        case 'D':
            R.duration = strtod(optarg, NULL);
            break;
        default:
            usage();
        }
    }
    if (optind != argc || R.n == 0 || R.n > 100000 || R.payload < BENCH_MIN_PAYLOAD ||
        R.payload > BENCH_MAX_PAYLOAD || (R.parse && R.pub))
        usage();
    signal(SIGPIPE, SIG_IGN);
    bench_raise_nofile();
    if (R.pub)
        make_pub_record();
    else
        make_record();
    R.per_chunk = (uint32_t)(BENCH_CHUNK / R.rec_len);
    if (R.per_chunk == 0)
        R.per_chunk = 1;
    R.chunk_len = (size_t)R.per_chunk * R.rec_len;
    if ((R.chunk = malloc(R.chunk_len)) == NULL ||
        (R.wfd = calloc(R.n, sizeof *R.wfd)) == NULL ||
        (R.rfd = calloc(R.n, sizeof *R.rfd)) == NULL)
        bench_die("out of memory");
    for (uint32_t j = 0; j < R.per_chunk; j++)
        memcpy(R.chunk + j * R.rec_len, R.rec, R.rec_len);
    for (uint32_t i = 0; i < R.n; i++) {
        int sv[2];

        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) != 0)
            bench_die("socketpair: %s", strerror(errno));
        R.wfd[i] = sv[0];
        R.rfd[i] = sv[1];
    }
    fflush(stdout);
    if ((child = fork()) < 0)
        bench_die("fork: %s", strerror(errno));
    if (child == 0) {
        for (uint32_t i = 0; i < R.n; i++)
            close(R.wfd[i]);
        _exit(reader(parent));
    }
    for (uint32_t i = 0; i < R.n; i++)
        close(R.rfd[i]);
    return writer(child);
}
