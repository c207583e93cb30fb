/*
 * Shared pieces of the benchmark programs (bussrc, lpclient, rawfanout,
 * natsclient):
 * clocks, the shared-memory control block that lets the load source and
 * the load clients agree on start, stop and an in-flight window, the
 * payload layout, fast parsers for the two protocols' data messages, and
 * CPU accounting of other processes. Header-only: each bench program is a
 * single file plus this.
 */
#ifndef BUSGATE_BENCH_H
#define BUSGATE_BENCH_H

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* Feed of every benchmark topic; topics are "t<i>" (data from the bus),
 * "p<i>" (publishes), "i<s>_<j>" (idle subscriptions). */
#define BENCH_FEED "bench"
#define BENCH_USER "bench"
#define BENCH_HOST "localhost"

/* Payload layout: [0,8) sequence number within its topic, [8,16) send
 * time (CLOCK_MONOTONIC ns, 0 if not stamped), the rest a fill pattern.
 * Host byte order: every party runs on the same machine. */
#define BENCH_MIN_PAYLOAD 16
#define BENCH_MAX_PAYLOAD (1u << 20)

/* Writes are coalesced to about this many bytes. */
#define BENCH_CHUNK (64u * 1024)

__attribute__((format(printf, 1, 2), noreturn)) static inline void
bench_die(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(2);
}

static inline uint64_t
bench_now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static inline void
bench_sleep_ns(uint64_t ns)
{
    struct timespec ts = { (time_t)(ns / 1000000000u), (long)(ns % 1000000000u) };

    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

static inline void
bench_set_nonblock(int fd)
{
    int fl = fcntl(fd, F_GETFL);

    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) != 0)
        bench_die("fcntl: %s", strerror(errno));
}

/* Small protocol writes (set-up, PONG, a drain): wait out a full socket. */
static inline void
bench_write_all(int fd, const void *p, size_t len)
{
    const char *c = p;

    while (len > 0) {
        ssize_t w = write(fd, c, len);

        if (w < 0 && (errno == EINTR || errno == EAGAIN)) {
            struct pollfd pfd = { fd, POLLOUT, 0 };

            poll(&pfd, 1, 1000);
            continue;
        }
        if (w <= 0)
            bench_die("write: %s", strerror(errno));
        c += w;
        len -= (size_t)w;
    }
}

/* A TCP connection to 127.0.0.1:port, retried while the server starts. */
static inline int
bench_connect_tcp(int port)
{
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
    int fd, one = 1;

    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    for (int tries = 0;; tries++) {
        if ((fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0)
            bench_die("socket: %s", strerror(errno));
        if (connect(fd, (struct sockaddr *)&a, sizeof a) == 0)
            break;
        if (errno != ECONNREFUSED || tries > 1000)
            bench_die("connect 127.0.0.1:%d: %s", port, strerror(errno));
        close(fd);
        bench_sleep_ns(10000000);
    }
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

static inline void
bench_put_u64(void *p, uint64_t v)
{
    memcpy(p, &v, sizeof v);
}

static inline uint64_t
bench_get_u64(const void *p)
{
    uint64_t v;

    memcpy(&v, p, sizeof v);
    return v;
}

/* Fill a payload template: zero seq and stamp, then a pattern. */
static inline void
bench_payload_fill(uint8_t *p, size_t len)
{
    memset(p, 0, len < 16 ? len : 16);
    for (size_t i = 16; i < len; i++)
        p[i] = (uint8_t)('a' + i % 26);
}

/* Raise RLIMIT_NOFILE to the hard limit (many sessions). */
static inline rlim_t
bench_raise_nofile(void)
{
    struct rlimit rl;

    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return 0;
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    getrlimit(RLIMIT_NOFILE, &rl);
    return rl.rlim_cur;
}

/*
 * The control block, a small file mapped shared by the load source and the
 * load clients. The clients say when everyone is subscribed (go), how many
 * messages they have received (delivered) and when the measurement is over
 * (stop); the source says how much it sent. In flood mode the source keeps
 * sent * fanout - delivered under a window, so that the gateway, which by
 * design never pushes back on the bus for a slow reader, is kept busy
 * without any session's output reaching max_output.
 */
#define BENCH_CTL_MAGIC 0x62757367617465ull

struct bench_ctl {
    uint64_t magic;
    _Atomic uint64_t go;         /* clients ready: start sending */
    _Atomic uint64_t stop;       /* measurement over: stop sending */
    _Atomic uint64_t delivered;  /* clients: data messages received, all sessions */
    _Atomic uint64_t sent;       /* source: data messages generated */
    _Atomic uint64_t done;       /* source: stopped; sent is final */
    _Atomic uint64_t pub_recv;   /* source: MulticastData received */
    _Atomic uint64_t pub_bytes;  /* source: bytes of those messages */
    _Atomic uint64_t pub_errors; /* source: out of order / duplicate publishes */
    _Atomic uint64_t src_ready;  /* source: every expected topic subscribed */
};

/* The shared counters at path, made if missing. The source (bussrc,
 * natsclient src or sink) starts first and passes reset: a file left by
 * an earlier run (a reused path) would otherwise start this one with its
 * go, stop and done set, and the source would send nothing. */
static inline struct bench_ctl *
bench_ctl_open(const char *path, bool reset)
{
    struct bench_ctl *c;
    struct stat st;
    int fd = open(path, O_RDWR | O_CREAT, 0600);

    if (fd < 0)
        bench_die("%s: %s", path, strerror(errno));
    if (fstat(fd, &st) != 0)
        bench_die("%s: %s", path, strerror(errno));
    if ((size_t)st.st_size < sizeof *c && ftruncate(fd, 4096) != 0)
        bench_die("%s: %s", path, strerror(errno));
    c = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (c == MAP_FAILED)
        bench_die("%s: mmap: %s", path, strerror(errno));
    close(fd);
    if (reset)
        memset(c, 0, sizeof *c);
    c->magic = BENCH_CTL_MAGIC;
    return c;
}

/*
 * CPU time of a process in ns: the run time of each of its threads from
 * /proc/PID/task/TID/schedstat (ns resolution; busgated is single-threaded,
 * nats-server is not); when the kernel lacks it, utime + stime of the whole
 * process from /proc/PID/stat (10 ms ticks). Returns 0 if unreadable.
 */
static inline uint64_t
bench_proc_cpu_ns(int pid)
{
    char path[96], buf[1024], *p;
    unsigned long long run = 0, sum = 0, ut = 0, st = 0;
    struct dirent *de;
    DIR *d;
    FILE *f;
    size_t n;

    snprintf(path, sizeof path, "/proc/%d/task", pid);
    if ((d = opendir(path)) != NULL) {
        while ((de = readdir(d)) != NULL) {
            if (de->d_name[0] == '.')
                continue;
            snprintf(path, sizeof path, "/proc/%d/task/%.20s/schedstat", pid, de->d_name);
            if ((f = fopen(path, "r")) == NULL)
                continue;
            if (fscanf(f, "%llu", &run) == 1)
                sum += run;
            fclose(f);
        }
        closedir(d);
        if (sum > 0)
            return sum;
    }
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    if ((f = fopen(path, "r")) == NULL)
        return 0;
    n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    /* After the ")" closing comm: state is field 3; utime 14, stime 15. */
    if ((p = strrchr(buf, ')')) == NULL ||
        sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) !=
            2)
        return 0;
    return (ut + st) * (1000000000ull / (unsigned long long)sysconf(_SC_CLK_TCK));
}

/* CPU time the whole machine spent busy (all CPUs, not idle or iowait),
 * in ns, from /proc/stat: set against the measured processes' own CPU
 * time it shows how much other work competed with them. */
static inline uint64_t
bench_machine_busy_ns(void)
{
    unsigned long long v[8] = { 0 };
    FILE *f = fopen("/proc/stat", "r");
    int n;

    if (f == NULL)
        return 0;
    n = fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3],
        &v[4], &v[5], &v[6], &v[7]);
    fclose(f);
    if (n < 8)
        return 0;
    /* user nice system [idle iowait] irq softirq steal */
    return (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) *
        (1000000000ull / (unsigned long long)sysconf(_SC_CLK_TCK));
}

/* Resident set size of a process in bytes (VmRSS), 0 if unreadable. */
static inline uint64_t
bench_proc_rss(int pid)
{
    char path[64], line[256];
    unsigned long long kb = 0;
    FILE *f;

    snprintf(path, sizeof path, "/proc/%d/status", pid);
    if ((f = fopen(path, "r")) == NULL)
        return 0;
    while (fgets(line, sizeof line, f) != NULL)
        if (sscanf(line, "VmRSS: %llu kB", &kb) == 1)
            break;
    fclose(f);
    return kb * 1024;
}

/* ---- fast parsers (no allocation; the checks a load client needs) ---- */

/* What a data message carried, for the sequence and latency checks. */
struct bench_data {
    const uint8_t *payload; /* first packet's data */
    uint32_t payload_len;
    size_t total; /* bytes the whole message took */
};

/*
 * A DATA event at p (n bytes available), from the line protocol:
 * "DATA feed topic user host kind cast LEN[:ENTS]...\n" payload "\n".
 * Returns 1 with *d filled, 0 if more bytes are needed, -1 if the line at
 * p is not a well-formed DATA event (the caller then tries other events).
 */
static inline int
bench_parse_lp_data(const uint8_t *p, size_t n, struct bench_data *d)
{
    const uint8_t *nl = memchr(p, '\n', n), *q, *end;
    uint64_t sum = 0, first = 0;
    int tok = 0, npk = 0;

    if (nl == NULL)
        return 0;
    if (nl - p < 5 || memcmp(p, "DATA ", 5) != 0)
        return -1;
    end = nl > p && nl[-1] == '\r' ? nl - 1 : nl;
    q = p + 4;
    /* Skip six name/keyword tokens, then sum the packet lengths. */
    while (q < end) {
        while (q < end && *q == ' ')
            q++;
        if (q == end)
            break;
        if (tok < 6) {
            while (q < end && *q != ' ')
                q++;
            tok++;
            continue;
        }
        uint64_t len = 0;

        if (*q < '0' || *q > '9')
            return -1;
        while (q < end && *q >= '0' && *q <= '9')
            len = len * 10 + (uint64_t)(*q++ - '0');
        while (q < end && *q != ' ')
            q++; /* ":ENTS" */
        if (len > BENCH_MAX_PAYLOAD)
            return -1;
        if (npk++ == 0)
            first = len;
        sum += len;
    }
    if (tok < 6)
        return -1;
    d->payload = nl + 1;
    d->payload_len = (uint32_t)first;
    if (npk == 0) {
        d->total = (size_t)(nl + 1 - p);
        return 1;
    }
    if ((size_t)(nl + 1 - p) + sum + 1 > n)
        return 0;
    if (nl[1 + sum] != '\n')
        return -1;
    d->total = (size_t)(nl + 1 - p) + sum + 1;
    return 1;
}

static inline uint32_t
bench_be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* Skip a length-prefixed field (string or byte array); -1 bad, 0 more. */
static inline int
bench_skip_lv(const uint8_t *p, size_t n, size_t *o, uint32_t max, const uint8_t **data,
    uint32_t *dlen)
{
    uint32_t len;

    if (*o + 4 > n)
        return 0;
    len = bench_be32(p + *o);
    if (len > max)
        return -1;
    if (*o + 4 + len > n)
        return 0;
    if (data != NULL) {
        *data = p + *o + 4;
        *dlen = len;
    }
    *o += 4 + (size_t)len;
    return 1;
}

/*
 * A bus message at p (n bytes): ForwardedMulticastData or
 * ForwardedUnicastData fill *d; other message types are reported with
 * d->payload NULL so the caller can skip them. Returns 1, 0 (need more) or
 * -1 (malformed or a type this parser does not know).
 */
static inline int
bench_parse_bus_data(const uint8_t *p, size_t n, struct bench_data *d)
{
    size_t o = 1;
    uint32_t count, ents;
    int r, nstr;

    if (n < 1)
        return 0;
    d->payload = NULL;
    d->payload_len = 0;
    switch (p[0]) {
    case 8:
        nstr = 4;
        break;
    case 9:
        nstr = 2;
        break;
    default:
        return -1;
    }
    for (int i = 0; i < nstr; i++)
        if ((r = bench_skip_lv(p, n, &o, 65536, NULL, NULL)) != 1)
            return r;
    if (p[0] == 9) {
        o += 16;
        for (int i = 0; i < 2; i++)
            if ((r = bench_skip_lv(p, n, &o, 65536, NULL, NULL)) != 1)
                return r;
    }
    if (o + 5 > n)
        return 0;
    o += 1; /* isImage */
    count = bench_be32(p + o);
    o += 4;
    if (count > 65536)
        return -1;
    for (uint32_t i = 0; i < count; i++) {
        const uint8_t *data = NULL;
        uint32_t dlen = 0;

        if (o + 4 > n)
            return 0;
        ents = bench_be32(p + o);
        if (ents > 65536)
            return -1;
        o += 4 + (size_t)ents * 4;
        if ((r = bench_skip_lv(p, n, &o, BENCH_MAX_PAYLOAD, &data, &dlen)) != 1)
            return r;
        if (i == 0) {
            d->payload = data;
            d->payload_len = dlen;
        }
    }
    d->total = o;
    return 1;
}

/* ---- latency samples ---- */

struct bench_lat {
    uint64_t *v;
    size_t n, cap;
};

static inline void
bench_lat_add(struct bench_lat *l, uint64_t ns)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 65536;
        uint64_t *v = realloc(l->v, cap * sizeof *v);

        if (v == NULL)
            return;
        l->v = v;
        l->cap = cap;
    }
    l->v[l->n++] = ns;
}

static inline int
bench_cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

    return x < y ? -1 : x > y;
}

/* The q-quantile (0..1) of the samples, nearest rank; sorts them. */
static inline uint64_t
bench_lat_quantile(struct bench_lat *l, double q, bool sorted)
{
    size_t i;

    if (l->n == 0)
        return 0;
    if (!sorted)
        qsort(l->v, l->n, sizeof *l->v, bench_cmp_u64);
    i = (size_t)(q * (double)l->n);
    if (i >= l->n)
        i = l->n - 1;
    return l->v[i];
}

#endif /* BUSGATE_BENCH_H */
