/*
 * libreader: what reading events costs a subscriber, libbusgate against
 * lpclient's hand-written reader, without a daemon or a bus in the way.
 * A child (this program again, exec'd: a profiler traced over the reader
 * does not trace it) plays busgated: the greeting, +OK to each command,
 * then N DATA events as fast as the socket takes them, and it closes.
 * The reader takes them with the library in event-loop use (bg_fd,
 * bg_process, a callback) or by hand (read, bench_parse_lp_data), checks
 * every sequence number, and prints its own CPU time per million events.
 *
 * With -q, the first Q of the N events come before the +OK to the SUB:
 * the library queues them while its blocking bg_subscribe waits for the
 * reply, and delivers them from its queue.
 *
 * With -k, the child writes K events at a time, each write once the
 * reader has taken the one before: each read (a bg_process call) finds K
 * events, as in a process with many subscriber connections, where a
 * connection has a few events each time its turn comes.
 *
 *     libreader [--hand] [-n EVENTS] [-p PAYLOAD] [-q QUEUED] [-k PER_WRITE]
 *     valgrind --tool=callgrind bench/libreader -n 1000000   # instructions
 */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <linux/sockios.h>

#include "bench.h"
#include "busgate.h"

#define GREETING                                                                           \
    "HELLO busgate bench proto=1 max_line=65536 max_payload=1048576 max_packets=1024 "     \
    "max_name=4096 max_entitlements=1024 max_subscriptions=10000 "                         \
    "max_notifications=1000 max_authorizers=1000 max_output=8388608 bus_protocol=3 "       \
    "bus=up\n"
#define TOPIC "t0"

static struct {
    uint64_t events, next_seq, errors;
    bool down;
} R;

static uint64_t
cpu_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void
on_seq(const uint8_t *payload, size_t len)
{
    if (payload == NULL || len < BENCH_MIN_PAYLOAD || bench_get_u64(payload) != R.next_seq)
        R.errors++;
    R.next_seq++;
    R.events++;
}

/* ---- the child: busgated's side ---- */

/* Reply +OK to each command line until the SUB (whose +OK the caller
 * sends). */
static void
serve_commands(int fd)
{
    char line[512];
    size_t n = 0;

    for (;;) {
        ssize_t r = read(fd, line + n, sizeof(line) - 1 - n);
        char *nl;

        if (r <= 0)
            bench_die("libreader serve: no SUB came");
        n += (size_t)r;
        while ((nl = memchr(line, '\n', n)) != NULL) {
            if (strncmp(line, "SUB ", 4) == 0)
                return;
            bench_write_all(fd, "+OK\n", 4);
            n -= (size_t)(nl + 1 - line);
            memmove(line, nl + 1, n);
        }
        if (n == sizeof(line) - 1)
            bench_die("libreader serve: a command line too long");
    }
}

/* Until the reader has read all that was written (-k): the socket's
 * unread bytes stay charged to the writer. */
static void
await_read(int fd)
{
    int unread;

    while (ioctl(fd, SIOCOUTQ, &unread) == 0 && unread > 0)
        usleep(20);
}

/* Events from *seq up to n, written a chunk at a time (the sequence
 * numbers patched in), or per_write events at a time once the reader has
 * read the write before (0: as fast as the socket takes them). */
static void
serve_events(int fd, uint64_t *seq_io, uint64_t n, size_t payload, uint64_t per_write)
{
    char head[128];
    int hl = snprintf(head, sizeof head,
        "DATA " BENCH_FEED " " TOPIC " " BENCH_USER " " BENCH_HOST " delta multicast %zu\n",
        payload);
    size_t ev_len = (size_t)hl + payload + 1;
    size_t per = per_write > 0 ? (size_t)per_write : BENCH_CHUNK / ev_len + 1;
    uint8_t *chunk = malloc(per * ev_len);
    uint64_t seq = *seq_io;

    if (chunk == NULL)
        bench_die("out of memory");
    for (size_t i = 0; i < per; i++) {
        uint8_t *e = chunk + i * ev_len;

        memcpy(e, head, (size_t)hl);
        bench_payload_fill(e + hl, payload);
        e[hl + payload] = '\n';
    }
    while (seq < n) {
        size_t k = n - seq < per ? (size_t)(n - seq) : per;

        for (size_t i = 0; i < k; i++)
            bench_put_u64(chunk + i * ev_len + hl, seq++);
        bench_write_all(fd, chunk, k * ev_len);
        if (per_write > 0)
            await_read(fd);
    }
    *seq_io = seq;
    free(chunk);
}

static int
serve(const char *path, uint64_t n, uint64_t queued, size_t payload, uint64_t per_write)
{
    struct sockaddr_un a = { .sun_family = AF_UNIX };
    int lfd = socket(AF_UNIX, SOCK_STREAM, 0), fd;
    uint64_t seq = 0;

    snprintf(a.sun_path, sizeof a.sun_path, "%s", path);
    if (lfd < 0 || bind(lfd, (struct sockaddr *)&a, sizeof a) != 0 || listen(lfd, 1) != 0)
        bench_die("libreader serve %s: %s", path, strerror(errno));
    printf("ready\n");
    fflush(stdout);
    if ((fd = accept(lfd, NULL, NULL)) < 0)
        bench_die("accept: %s", strerror(errno));
    bench_write_all(fd, GREETING, strlen(GREETING));
    serve_commands(fd);
    serve_events(fd, &seq, queued, payload, 0);
    bench_write_all(fd, "+OK\n", 4);
    /* The reply read before the rest: the library queues no more than
     * the first Q (how many more depended on timing, and so did the
     * reader's instructions per event). */
    await_read(fd);
    serve_events(fd, &seq, n, payload, per_write);
    close(fd);
    close(lfd);
    return 0;
}

/* Start the child and wait until it listens. */
static pid_t
start_server(const char *self, const char *path, uint64_t n, uint64_t queued,
    size_t payload, uint64_t per_write)
{
    int p[2];
    char ns[32], qs[32], ps[32], ks[32], ready[8];
    pid_t pid;

    snprintf(ns, sizeof ns, "%llu", (unsigned long long)n);
    snprintf(qs, sizeof qs, "%llu", (unsigned long long)queued);
    snprintf(ps, sizeof ps, "%zu", payload);
    snprintf(ks, sizeof ks, "%llu", (unsigned long long)per_write);
    if (pipe(p) != 0 || (pid = fork()) < 0)
        bench_die("fork: %s", strerror(errno));
    if (pid == 0) {
        dup2(p[1], 1);
        close(p[0]);
        execl(self, self, "--serve", path, "-n", ns, "-q", qs, "-p", ps, "-k", ks,
            (char *)NULL);
        _exit(127);
    }
    close(p[1]);
    if (read(p[0], ready, sizeof ready) <= 0)
        bench_die("libreader: the server did not start");
    close(p[0]);
    return pid;
}

/* ---- the reader ---- */

static void
lib_event(bg_conn *c, const struct bg_event *ev, void *arg)
{
    (void)c;
    (void)arg;
    if (ev->kind == BG_EV_DATA)
        on_seq(ev->n_packets > 0 ? ev->packets[0].data : NULL,
            ev->n_packets > 0 ? ev->packets[0].len : 0);
    else if (ev->kind == BG_EV_LINK && !ev->up)
        R.down = true;
}

static void
read_lib(const char *path)
{
    bg_conn *c = bg_connect(path);
    struct pollfd pfd;

    if (c == NULL || bg_error_code(c) != 0)
        bench_die("bg_connect %s: %s", path, bg_errstr(c));
    bg_set_reconnect(c, 1, 0);
    if (bg_subscribe(c, BENCH_FEED, strlen(BENCH_FEED), TOPIC, strlen(TOPIC)) != 0)
        bench_die("bg_subscribe: %s", bg_errstr(c));
    bg_set_callback(c, lib_event, NULL);
    pfd = (struct pollfd){ bg_fd(c), POLLIN, 0 };
    while (!R.down) {
        if (poll(&pfd, 1, -1) < 0 && errno != EINTR)
            bench_die("poll: %s", strerror(errno));
        bg_process(c, BG_READABLE);
    }
    bg_free(c);
}

static void
read_hand(const char *path)
{
    struct sockaddr_un a = { .sun_family = AF_UNIX };
    static uint8_t buf[256 * 1024];
    size_t have = 0;
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    char ok[sizeof(GREETING) + 8];
    size_t got = 0;

    snprintf(a.sun_path, sizeof a.sun_path, "%s", path);
    if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) != 0)
        bench_die("connect %s: %s", path, strerror(errno));
    bench_write_all(fd, "SUB " BENCH_FEED " " TOPIC "\n",
        strlen("SUB " BENCH_FEED " " TOPIC "\n"));
    /* The greeting and the +OK, byte by byte: nothing of the events read. */
    while (got < strlen(GREETING) + 4 && read(fd, ok + got, 1) == 1)
        got++;
    for (;;) {
        ssize_t r = read(fd, buf + have, sizeof buf - have);
        size_t o = 0;
        struct bench_data d;
        int k;

        if (r <= 0)
            break;
        have += (size_t)r;
        while ((k = bench_parse_lp_data(buf + o, have - o, &d)) == 1) {
            on_seq(d.payload, d.payload_len);
            o += d.total;
        }
        if (k < 0)
            bench_die("libreader: a malformed event");
        memmove(buf, buf + o, have - o);
        have -= o;
    }
    close(fd);
}

int
main(int argc, char **argv)
{
    uint64_t n = 2000000, queued = 0, per_write = 0, t0, c0, wall, cpu;
    size_t payload = 16;
    bool hand = false;
    const char *serve_path = NULL;
    char dir[] = "/tmp/busgate-libreader-XXXXXX", path[sizeof dir + 16];
    pid_t pid;
    int st;

    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--hand") == 0)
            hand = true;
        else if (strcmp(argv[i], "-n") == 0 && i + 1 < argc)
            n = strtoull(argv[++i], NULL, 10);
        else if (strcmp(argv[i], "-q") == 0 && i + 1 < argc)
            queued = strtoull(argv[++i], NULL, 10);
        else if (strcmp(argv[i], "-k") == 0 && i + 1 < argc)
            per_write = strtoull(argv[++i], NULL, 10);
        else if (strcmp(argv[i], "-p") == 0 && i + 1 < argc)
            payload = strtoul(argv[++i], NULL, 10);
        else if (strcmp(argv[i], "--serve") == 0 && i + 1 < argc)
            serve_path = argv[++i];
        else
            bench_die("usage: libreader [--hand] [-n EVENTS] [-p PAYLOAD] [-q QUEUED] "
                      "[-k PER_WRITE]");
    }
    if (payload < BENCH_MIN_PAYLOAD || payload > BENCH_MAX_PAYLOAD)
        bench_die("libreader: -p from %d to %u", BENCH_MIN_PAYLOAD, BENCH_MAX_PAYLOAD);
    if (queued > n || (queued > 0 && hand))
        bench_die("libreader: -q at most -n, and not with --hand");
    if (serve_path != NULL)
        return serve(serve_path, n, queued, payload, per_write);
    signal(SIGPIPE, SIG_IGN);
    if (mkdtemp(dir) == NULL)
        bench_die("mkdtemp: %s", strerror(errno));
    snprintf(path, sizeof path, "%s/sock", dir);
    pid = start_server(argv[0], path, n, queued, payload, per_write);
    t0 = bench_now_ns();
    c0 = cpu_ns();
    if (hand)
        read_hand(path);
    else
        read_lib(path);
    cpu = cpu_ns() - c0;
    wall = bench_now_ns() - t0;
    waitpid(pid, &st, 0);
    unlink(path);
    rmdir(dir);
    printf("%s %zu B: %llu events, %.2fM events/s, reader CPU %.3f s per 1M events%s\n",
        hand ? "hand-written" : "libbusgate", payload, (unsigned long long)R.events,
        (double)R.events / ((double)wall / 1e9) / 1e6,
        R.events ? (double)cpu / 1e9 / ((double)R.events / 1e6) : 0.0,
        R.events == n && R.errors == 0 ? "" : " (LOST OR OUT OF ORDER)");
    return R.events == n && R.errors == 0 ? 0 : 1;
}
