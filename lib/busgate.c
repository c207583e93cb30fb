/*
 * libbusgate: one connection to busgated. The framing, the event parser,
 * the command formatters and the name escaping are the daemon's own
 * (src/lineproto*.c, built into this library); this file adds the I/O,
 * the reply bookkeeping, the blocking and event-loop faces, and the
 * reconnect that restores what the daemon had accepted.
 */
#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <uthash.h>

#include "busgate.h"
#include "guid.h"
#include "lineproto.h"
#include "paths.h"

/* The daemon's -ERR codes are ours, in the same order. */
_Static_assert(BG_E_UNKNOWN_COMMAND == 100 + LP_ERR_UNKNOWN_COMMAND, "error table");
_Static_assert(BG_E_TOO_MANY_SESSIONS == 100 + LP_ERR_TOO_MANY_SESSIONS, "error table");
/* The last: a code the daemon gains needs its BG_E_ here and below. */
_Static_assert(BG_E_PERM == 100 + LP_ERR_PERM, "error table");
_Static_assert(WIRE_GUID_LEN == 16, "client id size");

/* Lines from the daemon are bounded by its names and packet counts; this
 * only stops a runaway stream. */
#define BG_MAX_LINE (16u * 1024 * 1024)
#define BG_READ_CHUNK 65536
#define BG_READ_CHUNKS 4
/* A read buffer (read_own) starts at BG_READ_CHUNK and doubles, up to
 * this, each time a read fills it: a busy stream is read in a quarter of
 * the system calls (each a read and a poll), an idle one keeps 64 KiB. */
#define BG_READ_MAX (4u * BG_READ_CHUNK)
/* At most this much of an event cut by a read moves to the start of the
 * next read buffer (read_own); more is read on after it. */
#define BG_CARRY_MAX 8192
/* The pseudo-line that queues a link event among the daemon's events. */
#define LINK_WORD "LINK "
/* Pipelined: bg_publish/bg_send wait for room above this much output. */
#define BG_PIPELINE_QUEUE (1u << 20)
/* Pipelined: messages are written once this much is queued (a system call
 * per message would cost more than the message), or by bg_flush and every
 * call that waits. */
#define BG_PIPELINE_BATCH (64u << 10)
/* iovecs per sendmsg: a batch and its partly filled first and last chains. */
#define BG_WRITE_IOV 24
#define BG_COPY_MAX 4096
/* Incoming DATA above these is skipped (bg_set_limits): far above what
 * busgated's defaults let through, low enough that a confused peer cannot
 * eat the machine. */
#define BG_DEF_MAX_PAYLOAD (64u << 20)
/* Events a blocking command's wait may queue for the application. */
#define BG_DEF_MAX_QUEUED ((size_t)64 << 20)
#define BG_DEF_MAX_PACKETS (1u << 20)
/* busgated's default listen.max_line: the bound on a command line queued
 * (event-loop use) before the first greeting says the daemon's own. */
#define BG_DEF_MAX_LINE 65536u
/* A session that lasted this long resets the reconnect backoff. */
#define BG_BACKOFF_RESET_MS 1000
#define BG_MAX_ENTITLEMENTS (1u << 20)

enum link_state {
    LINK_DOWN,    /* no socket; the next attempt is due at retry_at */
    LINK_HELLO,   /* connected, waiting for the greeting */
    LINK_UP,      /* greeted: commands flow */
    LINK_CLOSING, /* the daemon closed: buffered events are read, then DOWN */
};

/* A registration the daemon accepted, restored after a reconnect. */
struct reg {
    char *line; /* "SUB feed topic", "NOTIFY feed", "AUTHORIZER feed" */
    UT_hash_handle hh;
};

/* A command waiting for its reply, in the order sent. */
struct req {
    uint64_t id;
    bool internal; /* a restore: the application is not told */
    int reg_op;    /* on +OK: +1 adds line to the registrations, -1 removes it */
    int quiet;     /* VERBOSE off (1) or on (-1): the daemon's mode from its +OK */
    char *line;
};

/* Events to read: the socket's bytes, or those queued during a blocking
 * command (with link events), each with its own framer. */
struct src {
    struct evbuffer *buf;
    struct lp_framer fr;
};

/* A read buffer that read_own lends to sock.buf by reference. */
struct rbuf {
    char *b;
    size_t size;
    bool full; /* the last read filled it: a bigger one next */
    bool lent; /* a connection's sock.buf holds it */
};

/*
 * The thread's read buffer, shared by the connections it serves in
 * bg_process, which gives it back before it returns (rbuf_give_back): one
 * buffer for a process that reads hundreds of connections, where a buffer
 * each took up to BG_READ_MAX apiece and more memory than the caches hold
 * (lpclient's hand-written reader, given a buffer per connection, ran
 * 4 KiB events to 1000 subscribers in two processes at 0.84 of its rate
 * with one buffer). Per thread, so that connections in different
 * threads stay independent; freed with the thread's last connection
 * (a connection freed by another thread than made it leaves it be).
 */
static _Thread_local struct rbuf thread_rbuf;
static _Thread_local unsigned thread_conns;

struct bg_conn {
    char *path;
    enum link_state state;
    int fd;
    bool was_up;  /* greeted once: later greetings are reconnects */
    bool retried; /* a connection failed or ended: a greeting is news */
    struct src sock, queued;
    struct rbuf own;   /* its own read buffer (read_own), made when needed */
    struct rbuf *lent; /* the read buffer sock.buf holds by reference */
    struct evbuffer *out, *tmp;
    /* Pipelined messages formatted into out and not yet committed: every
     * other use of out settles it first (out_settle). */
    struct lp_out_tail out_tail;
    struct evbuffer *held_line; /* a DATA line until its payload is read */

    struct req *reqs; /* ring of req_cap; req_n from req_head */
    size_t req_cap, req_head, req_n;
    uint64_t last_id;
    struct reg *regs;

    uint64_t wait_id; /* the reply a blocking command waits for */
    bool wait_done;
    int wait_err;

    int err;
    char errmsg[256];
    int close_err; /* why the link is CLOSING */
    char close_msg[256];

    int timeout_ms, backoff_min, backoff_max, backoff;
    int64_t up_at; /* when the session was greeted (0: not up) */
    int64_t retry_at;
    int64_t hello_by; /* LINK_HELLO: the greeting is due by then */

    bg_callback *cb;
    void *cb_arg;
    bg_stat_callback *stat_cb; /* bg_stats: where its STAT lines go */
    void *stat_arg;
    char hello[1024];  /* the latest greeting, after "HELLO " */
    uint32_t max_line; /* its max_line: no longer command line is sent */
    char *app_name;    /* bg_set_name's, said again to each new session */
    size_t app_name_len;
    char *revoked; /* a REVOKED event's decoded feed and topic */
    size_t revoked_cap;

    struct lp_event lev;    /* the item being read */
    const uint8_t *payload; /* ... a DATA item's payload, its packets in a row */
    /* Bumped by whatever adds to the queued stream: a callback that did
     * not move it queued nothing, which spares a look at the stream after
     * every event delivered; nothing was queued since the stream was last
     * found empty while it equals queued_seen. */
    unsigned queued_adds, queued_seen;
    struct lp_limits lim; /* what incoming DATA may hold (bg_set_limits) */
    size_t max_queued;    /* bg_set_max_queued */
    char bad_input[160];  /* why the input cannot be followed */
    bool pipelined;       /* VERBOSE off asked: see bg_set_pipelined */
    bool quiet;           /* ... and acknowledged: an -ERR is a refused
                           * message, not the reply to a command */
    bool link_item;       /* ... is a queued link event: */
    bool link_refused;    /* ... or an error reply: a pipelined message's
                           * refusal, or a command lost with the link */
    bool link_skipped;    /* ... or a DATA event past the limits */
    bool link_up;
    int link_err;
    uint64_t link_request; /* the refused command's number (0: not known) */
    char link_text[256];
    struct bg_packet *pk;
    size_t pk_cap;
    char bus_state[16];
    struct bg_event ev;
    bool held;  /* ev is the application's, until it next asks for one */
    char *keep; /* ev's strings and packets, once keep_event copied them */
    size_t keep_cap;
};

/* ---- small helpers ---- */

/* Something is added to the queued stream, said before its framer reads
 * it again: see queued_adds, lp_framer_added. */
static void
queued_grows(struct bg_conn *c)
{
    c->queued_adds++;
    lp_framer_added(&c->queued.fr);
}

static int64_t
now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* A wait of ms from now; negative: for ever. */
static int64_t
deadline_after(int ms)
{
    return ms < 0 ? INT64_MAX : now_ms() + ms;
}

static int set_err(struct bg_conn *c, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int
set_err(struct bg_conn *c, int code, const char *fmt, ...)
{
    va_list ap;

    c->err = code;
    va_start(ap, fmt);
    vsnprintf(c->errmsg, sizeof(c->errmsg), fmt, ap);
    va_end(ap);
    return -code;
}

static const char *const local_errors[] = {
    [BG_OK] = "ok",
    [BG_E_IO] = "i/o error",
    [BG_E_CLOSED] = "not connected",
    [BG_E_TIMEOUT] = "timed out",
    [BG_E_PROTOCOL] = "protocol error",
    [BG_E_INVALID] = "invalid argument",
    [BG_E_NOMEM] = "out of memory",
};

const char *
bg_error_name(int code)
{
    if (code < 0)
        code = -code;
    if (code >= BG_E_UNKNOWN_COMMAND && code <= BG_E_PERM)
        return lp_error_code((enum lp_error)(code - 100));
    if ((size_t)code < sizeof(local_errors) / sizeof(local_errors[0]))
        return local_errors[code];
    return "daemon error";
}

/* NULL-safe: bg_connect's NULL (out of memory) reads as an error too. */
int
bg_error_code(const bg_conn *c)
{
    return c != NULL ? c->err : BG_E_NOMEM;
}

const char *
bg_errstr(const bg_conn *c)
{
    return c != NULL ? c->errmsg : "out of memory";
}

/* The bg_error of a daemon code word ("bad-name"). */
static int
daemon_error(const char *word, size_t n)
{
    for (int e = LP_ERR_UNKNOWN_COMMAND; e <= LP_ERR_PERM; e++) {
        const char *name = lp_error_code((enum lp_error)e);

        if (strlen(name) == n && memcmp(name, word, n) == 0)
            return 100 + e;
    }
    return BG_E_DAEMON_OTHER;
}

static bool
closing_error(int code)
{
    return code == BG_E_SLOW_CONSUMER || code == BG_E_SHUTTING_DOWN ||
        code == BG_E_TOO_MANY_SESSIONS;
}

/* ---- the reply queue and the registrations ---- */

/* A command sent: its entry (to mark a VERBOSE's), or NULL out of memory. */
static struct req *
req_push(struct bg_conn *c, bool internal, int reg_op, char *line)
{
    struct req *r;

    if (c->req_n == c->req_cap) {
        size_t cap = c->req_cap ? c->req_cap * 2 : 64;
        struct req *n = malloc(cap * sizeof(*n));

        if (n == NULL)
            return NULL;
        for (size_t i = 0; i < c->req_n; i++)
            n[i] = c->reqs[(c->req_head + i) % c->req_cap];
        free(c->reqs);
        c->reqs = n;
        c->req_cap = cap;
        c->req_head = 0;
    }
    r = &c->reqs[(c->req_head + c->req_n++) % c->req_cap];
    r->id = ++c->last_id;
    r->internal = internal;
    r->reg_op = reg_op;
    r->quiet = 0;
    r->line = line;
    return r;
}

static struct req
req_pop(struct bg_conn *c)
{
    struct req r = c->reqs[c->req_head];

    c->req_head = (c->req_head + 1) % c->req_cap;
    c->req_n--;
    return r;
}

/* Move the k oldest commands behind the others (the ring has room). */
static void
req_rotate(struct bg_conn *c, size_t k)
{
    for (size_t i = 0; i < k; i++) {
        struct req r = req_pop(c);

        c->reqs[(c->req_head + c->req_n++) % c->req_cap] = r;
    }
}

static void
reqs_clear(struct bg_conn *c)
{
    while (c->req_n > 0)
        free(req_pop(c).line);
}

/* Add (op > 0) or remove a registration: 1 when the set changed, 0 when
 * it was already so, -1 out of memory. */
static int
reg_apply(struct bg_conn *c, int op, const char *line)
{
    struct reg *r;

    HASH_FIND_STR(c->regs, line, r);
    if (op > 0 && r == NULL) {
        if ((r = calloc(1, sizeof(*r))) == NULL || (r->line = strdup(line)) == NULL) {
            free(r);
            return -1; /* not restored after a reconnect; nothing else lost */
        }
        HASH_ADD_KEYPTR(hh, c->regs, r->line, strlen(r->line), r);
        return 1;
    }
    if (op < 0 && r != NULL) {
        HASH_DEL(c->regs, r);
        free(r->line);
        free(r);
        return 1;
    }
    return 0;
}

static void
regs_free(struct bg_conn *c)
{
    struct reg *r, *t;

    HASH_ITER(hh, c->regs, r, t) {
        HASH_DEL(c->regs, r);
        free(r->line);
        free(r);
    }
}

/* Registration commands and the words REVOKED names them by. */
static const struct {
    const char *cmd, *verb;
} reg_verbs[] = {
    { "SUB", "subscribe" },
    { "NOTIFY", "notify" },
    { "AUTHORIZER", "authorize" },
};

/* The daemon ended a registration ("REVOKED <verb> <feed> [<topic>]
 * <reason>", names as the command had them): a reconnect must not
 * restore it. */
static void
forget_revoked(struct bg_conn *c, const char *text)
{
    size_t vn = strcspn(text, " "), fn, tn;
    const char *feed = text + vn + (text[vn] == ' '), *topic;
    char *line;

    fn = strcspn(feed, " ");
    topic = feed + fn + (feed[fn] == ' ');
    tn = strcspn(topic, " ");
    for (size_t i = 0; fn > 0 && i < sizeof(reg_verbs) / sizeof(reg_verbs[0]); i++) {
        bool named_topic = i == 0; /* subscribe: the topic follows */
        size_t len = strlen(reg_verbs[i].cmd) + fn + tn + 3;

        if (strlen(reg_verbs[i].verb) != vn || memcmp(text, reg_verbs[i].verb, vn) != 0)
            continue;
        if ((line = malloc(len)) == NULL)
            return; /* restored, and refused again then */
        snprintf(line, len, "%s %.*s%s%.*s", reg_verbs[i].cmd, (int)fn, feed,
            named_topic ? " " : "", named_topic ? (int)tn : 0, topic);
        (void)reg_apply(c, -1, line);
        free(line);
        return;
    }
}

/* A registration the daemon refused to restore (not one it holds
 * already): gone, and the application told as of a reload's REVOKED. */
static void
restore_refused(struct bg_conn *c, const char *line, int code, const char *reason)
{
    if (code == BG_E_ALREADY_SUBSCRIBED || code == BG_E_ALREADY_NOTIFYING ||
        code == BG_E_ALREADY_AUTHORIZER)
        return;
    (void)reg_apply(c, -1, line); /* not tried again */
    /* "-ERR perm <verb> <feed>: <why>": the verb and names are said
     * below, as a reload's REVOKED says them. */
    if (code == BG_E_PERM && strstr(reason, ": ") != NULL)
        reason = strstr(reason, ": ") + 2;
    for (size_t i = 0; i < sizeof(reg_verbs) / sizeof(reg_verbs[0]); i++) {
        size_t n = strlen(reg_verbs[i].cmd);

        if (strncmp(line, reg_verbs[i].cmd, n) == 0 &&
            (line[n] == ' ' || line[n] == '\0')) {
            queued_grows(c);
            evbuffer_add_printf(c->queued.buf, "REVOKED %s%s %s\n", reg_verbs[i].verb,
                line + n, reason);
            return;
        }
    }
}

/* ---- the link ---- */

static void
src_reset(struct src *s)
{
    evbuffer_drain(s->buf, evbuffer_get_length(s->buf));
    lp_framer_init(&s->fr, BG_MAX_LINE);
}

/* Queue a link item ("LINK what err request text") behind the events
 * already queued. */
static void
queue_link_item(struct bg_conn *c, const char *what, int err, uint64_t request,
    const char *text)
{
    char clean[200];
    size_t i;

    for (i = 0; text[i] != '\0' && i < sizeof(clean) - 1; i++)
        clean[i] = text[i] == '\n' || text[i] == '\r' ? ' ' : text[i];
    clean[i] = '\0';
    queued_grows(c);
    evbuffer_add_printf(c->queued.buf, LINK_WORD "%s %d %llu %s\n", what, err,
        (unsigned long long)request, clean);
}

/* Queue a link event behind the events already queued. */
static void
queue_link_event(struct bg_conn *c, bool up, int err, const char *text)
{
    queue_link_item(c, up ? "up" : "down", err, 0, text);
}

/* Event-loop use: the commands in flight that the application waits on
 * (not restores, nor registrations, which the restore takes) end with the
 * link, each with its BG_EV_REPLY, ahead of the LINK down event. */
static void
queue_lost_replies(struct bg_conn *c)
{
    char text[300];

    if (c->cb == NULL)
        return;
    snprintf(text, sizeof(text), "connection to busgated lost: %s",
        c->close_msg[0] ? c->close_msg : "closed");
    for (size_t i = 0; i < c->req_n; i++) {
        const struct req *r = &c->reqs[(c->req_head + i) % c->req_cap];

        if (!r->internal && r->reg_op == 0 && r->id != c->wait_id)
            queue_link_item(c, "refused", BG_E_CLOSED, r->id, text);
    }
}

/* The connection is gone or could not be made: the next attempt after
 * the backoff, which doubles up to its bound (on every failure, so that a
 * reconnect loop always waits). */
static void
schedule_retry(struct bg_conn *c)
{
    /* A session that lasted starts the backoff afresh; one refused right
     * after its greeting (too-many-sessions) does not, or a full daemon
     * would be dialled every min_ms for ever. */
    if (c->up_at != 0 && now_ms() - c->up_at >= BG_BACKOFF_RESET_MS)
        c->backoff = c->backoff_min;
    c->up_at = 0;
    c->retried = true;
    c->retry_at = now_ms() + c->backoff;
    c->backoff = c->backoff * 2 > c->backoff_max ? c->backoff_max : c->backoff * 2;
}

/* What c->out holds, with the pipelined messages not yet committed. */
static size_t
out_length(const struct bg_conn *c)
{
    return c->out_tail.base != NULL ? c->out_tail.len : evbuffer_get_length(c->out);
}

/* c->out with the pipelined messages in c->out_tail committed to it:
 * before anything else reads, adds to or drains it. */
static struct evbuffer *
out_settle(struct bg_conn *c)
{
    /* Fails only if out changed under the reservation, which every use
     * of out coming here first rules out. */
    (void)lp_out_tail_settle(c->out, &c->out_tail);
    return c->out;
}

static void
link_down(struct bg_conn *c)
{
    int err = c->close_err ? c->close_err : BG_E_CLOSED;

    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    src_reset(&c->sock);
    out_settle(c); /* first: the drain's length must count what it holds */
    evbuffer_drain(c->out, evbuffer_get_length(c->out));
    /* (Un)registrations the daemon had no time to answer: the next
     * daemon learns them with the restore, as if made while down. */
    for (size_t i = 0; i < c->req_n; i++) {
        const struct req *r = &c->reqs[(c->req_head + i) % c->req_cap];

        if (!r->internal && r->reg_op != 0)
            (void)reg_apply(c, r->reg_op, r->line);
    }
    queue_lost_replies(c);
    reqs_clear(c);
    if (c->wait_id != 0 && !c->wait_done) {
        c->wait_done = true;
        c->wait_err = BG_E_CLOSED;
        set_err(c, BG_E_CLOSED, "connection to busgated lost: %s",
            c->close_msg[0] ? c->close_msg : "closed");
    }
    c->state = LINK_DOWN;
    schedule_retry(c);
    queue_link_event(c, false, err,
        c->close_msg[0] ? c->close_msg : "busgated closed the connection");
}

/* The daemon closed, or said why it will: read what is buffered, then DOWN. */
static void
link_closing(struct bg_conn *c, int err, const char *msg)
{
    if (c->state == LINK_CLOSING || c->state == LINK_DOWN)
        return;
    c->state = LINK_CLOSING;
    c->close_err = err;
    snprintf(c->close_msg, sizeof(c->close_msg), "%s", msg);
}

static int
link_open(struct bg_conn *c)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    int fd;

    if (strlen(c->path) >= sizeof(sa.sun_path)) {
        schedule_retry(c);
        return set_err(c, BG_E_INVALID, "socket path too long: %s", c->path);
    }
    memcpy(sa.sun_path, c->path, strlen(c->path) + 1);
    /* Non-blocking from the start: a Unix socket connects at once or fails,
     * with EAGAIN when a hung daemon's listen backlog is full, where a
     * blocking connect would wait for ever (in bg_process too). */
    if ((fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0)) < 0) {
        schedule_retry(c);
        return set_err(c, BG_E_IO, "socket: %s", strerror(errno));
    }
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        int e = errno;

        close(fd);
        schedule_retry(c);
        return set_err(c, BG_E_IO, "cannot connect to %s: %s", c->path,
            e == EAGAIN ? "busgated is not accepting connections (its backlog is full)"
                        : strerror(e));
    }
    c->fd = fd;
    c->state = LINK_HELLO;
    c->hello_by = deadline_after(c->timeout_ms);
    c->close_err = 0;
    c->close_msg[0] = '\0';
    src_reset(&c->sock);
    return 0;
}

/* A read gave n <= 0. */
static void
read_ended(struct bg_conn *c, ssize_t n)
{
    if (n == 0)
        link_closing(c, BG_E_CLOSED, "busgated closed the connection");
    else if (errno != EAGAIN && errno != EINTR)
        link_closing(c, BG_E_IO, strerror(errno));
}

/* Read what the socket holds into buf, in up to BG_READ_CHUNKS chunks
 * straight into it: evbuffer_read stops at 4 KiB a call, which costs a
 * subscriber half its rate in system calls. */
static void
read_into(struct bg_conn *c, struct evbuffer *buf)
{
    struct evbuffer_iovec vec;
    ssize_t n;

    for (int i = 0; i < BG_READ_CHUNKS; i++) {
        if (evbuffer_reserve_space(buf, BG_READ_CHUNK, &vec, 1) < 1) {
            link_closing(c, BG_E_NOMEM, "out of memory");
            return;
        }
        if ((n = read(c->fd, vec.iov_base, vec.iov_len)) <= 0) {
            vec.iov_len = 0;
            evbuffer_commit_space(buf, &vec, 1);
            read_ended(c, n);
            return;
        }
        vec.iov_len = (size_t)n;
        evbuffer_commit_space(buf, &vec, 1);
        if ((size_t)n < BG_READ_CHUNK)
            return;
    }
}

static void
rbuf_returned(const void *data, size_t len, void *arg)
{
    struct bg_conn *c = arg;

    (void)data;
    (void)len;
    c->lent->lent = false;
    c->lent = NULL;
}

/* r sized for the next read: the first buffer, or one twice the size when
 * the last read filled it (BG_READ_MAX). Only when no sock.buf holds it. */
static bool
rbuf_fit(struct rbuf *r)
{
    size_t size = r->b == NULL ? BG_READ_CHUNK : 2 * r->size;
    char *b;

    if (r->b != NULL && (!r->full || size > BG_READ_MAX))
        return true;
    if ((b = malloc(size)) == NULL)
        return r->b != NULL; /* the one it has still does */
    free(r->b);
    r->b = b;
    r->size = size;
    return true;
}

/*
 * One read into a read buffer, lent to sock.buf by reference until the
 * framer drains it: the thread's when shared (bg_process) and not lent to
 * another connection, else the connection's own. A read into a fresh
 * libevent chain allocates 128 KiB (the chunk and the chain's header,
 * rounded up) and frees it when the batch is drained, and glibc may trim
 * and regrow the heap around that on every read (a brk per read in some
 * runs, a third of the rate; bench/PROFILE.md). The few bytes of an event
 * the last read cut move to the buffer's start first. One read a call: a
 * socket with more stays readable for the next (bg_fd is polled, level
 * triggered). Only between batches, when nothing delivered points into
 * sock.buf; false when read_into must read.
 */
static bool
read_own(struct bg_conn *c, bool shared)
{
    size_t left = evbuffer_get_length(c->sock.buf), got;
    char carry[BG_CARRY_MAX];
    struct rbuf *r;
    ssize_t n;

    if (c->held || c->sock.fr.pending > 0 || left > BG_CARRY_MAX)
        return false;
    /* Out and back: draining sock.buf returns the buffer it holds. */
    evbuffer_remove(c->sock.buf, carry, left);
    lp_framer_added(&c->sock.fr); /* the carried bytes move */
    r = shared && !thread_rbuf.lent ? &thread_rbuf : &c->own;
    if (r->lent || !rbuf_fit(r)) { /* (lent: never, sock.buf is drained) */
        evbuffer_add(c->sock.buf, carry, left);
        return false;
    }
    memcpy(r->b, carry, left);
    n = read(c->fd, r->b + left, r->size - left);
    got = left + (n > 0 ? (size_t)n : 0);
    r->full = got == r->size;
    if (got > 0 && evbuffer_add_reference(c->sock.buf, r->b, got, rbuf_returned, c) != 0) {
        link_closing(c, BG_E_NOMEM, "out of memory");
        return true;
    }
    if (got > 0) {
        r->lent = true;
        c->lent = r;
    }
    if (n <= 0)
        read_ended(c, n);
    return true;
}

/* The thread's buffer back from sock.buf before bg_process returns, with
 * nothing delivered left pointing into it: the bytes it still holds (of
 * an event the read cut) are copied to the front of sock.buf, whose
 * chains after it (a callback's blocking call read on) stay behind them. */
static void
rbuf_give_back(struct bg_conn *c)
{
    struct evbuffer_iovec v;

    if (c->lent != &thread_rbuf)
        return;
    lp_framer_consume(&c->sock.fr, c->sock.buf); /* may return it whole */
    /* Lent, it is the first chain: read_own lends it to an empty sock.buf. */
    if (c->lent != &thread_rbuf || evbuffer_peek(c->sock.buf, -1, NULL, &v, 1) < 1)
        return;
    evbuffer_drain(c->sock.buf, v.iov_len); /* returns it; its bytes stay put */
    lp_framer_added(&c->sock.fr);
    if (evbuffer_prepend(c->sock.buf, v.iov_base, v.iov_len) != 0)
        link_closing(c, BG_E_NOMEM, "out of memory");
}

static void
read_some(struct bg_conn *c, bool shared)
{
    if (!read_own(c, shared))
        read_into(c, c->sock.buf);
}

/* Output waits for the greeting: the restore goes ahead of it (on_hello). */
static bool
want_write(const struct bg_conn *c)
{
    return c->fd >= 0 && c->state == LINK_UP &&
        (evbuffer_get_length(c->out) > 0 || lp_out_tail_pending(&c->out_tail));
}

/*
 * A write failed. When the daemon has gone (EPIPE, ECONNRESET), what it
 * wrote before closing is still in the socket: the events it delivered
 * and its reason (-ERR shutting-down, slow-consumer). They are read now,
 * before the link closes and its buffer goes, so that nothing delivered
 * is lost and the daemon's reason, not the write's error, is told.
 */
static void
write_failed(struct bg_conn *c, int err)
{
    struct evbuffer *late;
    size_t before;

    /* Read aside, then append: a write can fail in a callback's command,
     * mid-batch, and reserving space in the socket buffer may move the
     * bytes the framer and the event in the callback's hands point into.
     * Appended chains leave those bytes where they are. */
    if ((err == EPIPE || err == ECONNRESET) && (late = evbuffer_new()) != NULL) {
        do {
            before = evbuffer_get_length(late);
            read_into(c, late);
        } while (c->state != LINK_CLOSING && evbuffer_get_length(late) > before);
        evbuffer_add_buffer(c->sock.buf, late);
        lp_framer_added(&c->sock.fr);
        evbuffer_free(late);
    }
    link_closing(c, BG_E_IO, strerror(err));
}

/* Write what is queued, as far as the socket takes it; false when it took
 * less (full: another try before it says writable would be refused, a
 * wasted system call per wait). sendmsg with MSG_NOSIGNAL: a daemon gone
 * away must not kill the application with SIGPIPE (evbuffer_write would). */
static bool
flush_out(struct bg_conn *c)
{
    /* Commands added one at a time may lie in many small chains (a
     * pipelined batch lies in one or two): enough iovecs that the output
     * goes in one sendmsg, not one and a short tail (a second system call
     * here and a second read for the daemon). */
    struct evbuffer_iovec vec[BG_WRITE_IOV];
    struct iovec iov[BG_WRITE_IOV];
    struct msghdr mh = { .msg_iov = iov };
    size_t want;
    ssize_t n;
    int k;

    out_settle(c);
    while (want_write(c)) {
        k = evbuffer_peek(c->out, -1, NULL, vec, BG_WRITE_IOV);
        want = 0;
        for (int i = 0; i < k && i < BG_WRITE_IOV; i++) {
            iov[i] = (struct iovec){ vec[i].iov_base, vec[i].iov_len };
            want += vec[i].iov_len;
        }
        mh.msg_iovlen = (size_t)(k < BG_WRITE_IOV ? k : BG_WRITE_IOV);
        if ((n = sendmsg(c->fd, &mh, MSG_NOSIGNAL)) < 0) {
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN)
                write_failed(c, errno);
            return false;
        }
        evbuffer_drain(c->out, (size_t)n);
        if ((size_t)n < want)
            return false;
    }
    return true;
}

/* Into b, the commands that restore a new session (name, registrations,
 * VERBOSE off), each with its entry: the number of registrations, or -1. */
static int
restore(struct bg_conn *c, struct evbuffer *b)
{
    struct reg *r, *t;
    struct req *q;
    int n = 0;

    if (c->app_name != NULL &&
        (lp_format_cmd_names(b, LP_NAME, c->app_name, c->app_name_len, NULL, 0) < 0 ||
            req_push(c, true, 0, NULL) == NULL))
        return -1;
    HASH_ITER(hh, c->regs, r, t) {
        char *line = strdup(r->line);

        if (line == NULL || evbuffer_add_printf(b, "%s\n", r->line) < 0 ||
            req_push(c, true, 0, line) == NULL) {
            free(line);
            return -1;
        }
        n++;
    }
    /* A new session answers every command: quiet again, after the
     * restores (whose +OK are counted on). */
    if (c->pipelined) {
        if (lp_format_cmd(b, LP_VERBOSE, "off") < 0 ||
            (q = req_push(c, true, 0, NULL)) == NULL)
            return -1;
        q->quiet = 1;
    }
    return n;
}

/* The greeting: restore the registrations after a reconnect, ahead of
 * what the application queued while waiting for it (event-loop use). */
static int
on_hello(struct bg_conn *c)
{
    const char *bus = strstr(c->lev.rest, " bus=");
    bool first = !c->was_up;
    const char *proto = strstr(c->lev.rest, " proto=");
    const char *max_line = strstr(c->lev.rest, " max_line=");
    long version = proto != NULL ? strtol(proto + 7, NULL, 10) : -1;
    unsigned long line = max_line != NULL ? strtoul(max_line + 10, NULL, 10) : 0;
    size_t held = c->req_n;
    struct evbuffer *b;
    int n;

    if (strncmp(c->lev.rest, "busgate ", 8) != 0)
        return set_err(c, BG_E_PROTOCOL, "this is not busgated speaking");
    if (version != LP_PROTOCOL_VERSION)
        return set_err(c, BG_E_PROTOCOL,
            "busgated speaks line protocol %ld, this libbusgate %d", version,
            LP_PROTOCOL_VERSION);
    if (line == 0 || line > UINT32_MAX)
        return set_err(c, BG_E_PROTOCOL, "the greeting has no max_line");
    c->max_line = (uint32_t)line;
    snprintf(c->bus_state, sizeof(c->bus_state), "%s", bus ? bus + 5 : "unknown");
    snprintf(c->hello, sizeof(c->hello), "%s", c->lev.rest);
    c->state = LINK_UP;
    c->quiet = false;
    c->up_at = now_ms();
    c->was_up = true;
    /* The app's name, then what the daemon had accepted, and what was
     * asked while disconnected (also before a first connection that
     * failed). */
    if ((b = evbuffer_new()) == NULL || (n = restore(c, b)) < 0 ||
        evbuffer_prepend_buffer(out_settle(c), b) < 0) {
        if (b != NULL)
            evbuffer_free(b);
        return set_err(c, BG_E_NOMEM, "out of memory restoring registrations");
    }
    evbuffer_free(b);
    req_rotate(c, held);
    /* A first connection is no event, unless the app was told bg_open
     * failed: then it learns the retry got through as after a restart. */
    if (first && !c->retried)
        return 0;
    snprintf(c->link_text, sizeof(c->link_text), "%s, %d registrations restored, bus=%s",
        first ? "connected" : "reconnected", n, c->bus_state);
    queue_link_event(c, true, 0, c->link_text);
    return 0;
}

static void deliver(struct bg_conn *c);

/* A STAT line of the bg_stats in progress: "name value..." to its callback. */
static void
on_stat(struct bg_conn *c)
{
    char *rest = (char *)c->lev.rest; /* our copy: split in place */
    size_t n = strcspn(rest, " ");
    const char *value = "";

    if (c->stat_cb == NULL)
        return; /* not asked for (an event-loop STATS): dropped */
    if (rest[n] == ' ') {
        rest[n] = '\0';
        value = rest + n + 1;
    }
    c->stat_cb(rest, value, c->stat_arg);
}

/* Quiet: a message was refused (only PING and VERBOSE are answered
 * otherwise, and they are never refused). */
static void
on_refusal(struct bg_conn *c, int code, const char *msg)
{
    if (c->cb != NULL) {
        c->ev = (struct bg_event){ .kind = BG_EV_REPLY, .error = code, .text = msg };
        c->cb(c, &c->ev, c->cb_arg);
    } else {
        queue_link_item(c, "refused", code, 0, msg);
    }
}

static void
on_reply(struct bg_conn *c)
{
    int code = 0;
    const char *msg = c->lev.rest;
    struct req r;

    if (c->lev.kind == LP_EV_ERR) {
        size_t n = strcspn(msg, " ");

        code = daemon_error(msg, n);
        msg += n;
        msg += strspn(msg, " ");
        if (c->quiet && !closing_error(code)) {
            on_refusal(c, code, msg);
            return;
        }
        if (closing_error(code) || c->req_n == 0) {
            /* The daemon's reason, even when the end of the stream, read
             * in the same go, was seen first. */
            link_closing(c, code, c->lev.rest);
            c->close_err = code;
            snprintf(c->close_msg, sizeof(c->close_msg), "%s", c->lev.rest);
            return;
        }
    }
    if (c->req_n == 0)
        return; /* an unasked reply: nothing waits for it */
    r = req_pop(c);
    if (code == 0 && r.reg_op != 0)
        (void)reg_apply(c, r.reg_op, r.line);
    if (code == 0 && r.quiet != 0)
        c->quiet = r.quiet > 0;
    if (code != 0 && r.internal && r.line != NULL)
        restore_refused(c, r.line, code, msg);
    free(r.line);
    if (r.id == c->wait_id) {
        c->wait_done = true;
        c->wait_err = code;
        if (code != 0)
            set_err(c, code, "%s", c->lev.rest);
    } else if (c->cb != NULL && !r.internal) {
        c->ev = (struct bg_event){ .kind = BG_EV_REPLY,
            .error = code,
            .text = msg,
            .request = r.id };
        c->cb(c, &c->ev, c->cb_arg);
    }
}

/* ---- reading items ---- */

static bool
is_event(enum lp_event_kind k)
{
    return k == LP_EV_DATA || k == LP_EV_NOTIFICATION || k == LP_EV_AUTHREQ ||
        k == LP_EV_BUS || k == LP_EV_REVOKED;
}

static int
parse_link_item(struct bg_conn *c, const char *line, size_t len)
{
    char buf[300];
    unsigned long long request = 0;
    int off = 0;

    if (len >= sizeof(buf))
        len = sizeof(buf) - 1;
    memcpy(buf, line, len);
    buf[len] = '\0';
    c->link_up = strncmp(buf + strlen(LINK_WORD), "up", 2) == 0;
    c->link_refused = strncmp(buf + strlen(LINK_WORD), "refused", 7) == 0;
    c->link_skipped = strncmp(buf + strlen(LINK_WORD), "skipped", 7) == 0;
    if (sscanf(buf + strlen(LINK_WORD), "%*s %d %llu %n", &c->link_err, &request, &off) < 2)
        return -1;
    c->link_request = (uint64_t)request;
    snprintf(c->link_text, sizeof(c->link_text), "%s", buf + strlen(LINK_WORD) + off);
    c->link_item = true;
    return 1;
}

/* The daemon said something we cannot follow: why, with a bit of it. */
static int
garbled(struct bg_conn *c, const char *line, size_t len)
{
    char shown[81];
    size_t n = len < 80 ? len : 80;

    for (size_t i = 0; i < n; i++)
        shown[i] = line[i] >= 0x20 && line[i] < 0x7f ? line[i] : '?';
    shown[n] = '\0';
    snprintf(c->bad_input, sizeof(c->bad_input), "unexpected line from busgated: %s%s",
        shown, len > n ? "..." : "");
    return -1;
}

/*
 * A DATA line with its payload, when the whole event is buffered: parse
 * it by reference (names point into the buffer, no copy) over one pullup
 * of line, payload and newline, drained together afterwards; queueing
 * (copy), the event is appended to copy as it came, in one piece. Returns
 * 1 when done, 0 when the event is not all here or its payload is not
 * followed by "\n" (the framer's two-step path takes it; fr->data is
 * where the line is now), -1 out of memory.
 */
static int
data_in_place(struct bg_conn *c, struct src *s, struct lp_frame *fr, struct evbuffer *copy)
{
    size_t need = fr->len + 1 + (size_t)c->lev.payload_len + 1;
    char *line;
    const void *was = fr->data;

    /* A pullup moves the line (fr->data follows it): the caller's
     * fallback, when the payload ends oddly, reads it where it is now. */
    line = (char *)lp_framer_line_with(&s->fr, s->buf, fr, (size_t)c->lev.payload_len + 1);
    if (line == NULL || line[need - 1] != '\n')
        return 0;
    if (copy != NULL) { /* read again when delivered: no names needed */
        if (evbuffer_add(copy, line, need) < 0)
            return -1;
    } else {
        if (line != was && lp_parse_event_ref(line, fr->len, &c->lim, &c->lev) < 0)
            return garbled(c, line, fr->len);
        c->payload = (const uint8_t *)line + fr->len + 1;
        lp_event_terminate(&c->lev);
    }
    lp_framer_extend(&s->fr, (size_t)c->lev.payload_len + 1);
    return 1;
}

/*
 * A DATA line past the limits (whose lengths could be read): its payload
 * is skipped and a "skipped" link item says so, in its place among the
 * events. Anything else unparsable is garbled.
 */
static int
skip_data(struct bg_conn *c, struct src *s, const struct lp_frame *fr)
{
    const struct lp_event *l = &c->lev;

    if (l->kind != LP_EV_DATA || l->n_packets == 0 ||
        (l->n_packets <= c->lim.max_packets && l->payload_len <= c->lim.max_payload))
        return garbled(c, fr->data, fr->len);
    lp_framer_payload(&s->fr, l->payload_len, false);
    snprintf(c->link_text, sizeof(c->link_text), "%llu bytes in %u packets",
        (unsigned long long)l->payload_len, (unsigned)l->n_packets);
    c->link_item = c->link_skipped = true;
    c->link_refused = c->link_up = false;
    c->link_err = 0;
    return 1;
}

/*
 * A DATA line whose payload is not all here yet: held until it is, then
 * read again (next_item). Whoever reads on may be queueing or not, either
 * way round: a blocking command can come between a line and its payload,
 * and the queued events it leaves are read (into c->lev) before the
 * payload. Queueing, the line goes to the queued stream with its payload,
 * so that a connection lost in between leaves no line without its
 * payload there (its LINK down line would be read as that payload).
 */
static int
hold_line(struct bg_conn *c, const struct lp_frame *fr)
{
    evbuffer_drain(c->held_line, evbuffer_get_length(c->held_line)); /* one cut short */
    if (evbuffer_add(c->held_line, fr->data, fr->len) < 0 ||
        evbuffer_add(c->held_line, "\n", 1) < 0)
        return -1;
    return 0;
}

/* The held line read again for delivery, its names copied (it goes). */
static int
parse_held_line(struct bg_conn *c)
{
    size_t n = evbuffer_get_length(c->held_line);
    const char *line = (const char *)evbuffer_pullup(c->held_line, -1);
    int r;

    if (line == NULL) { /* (n is never 0: the framer's payload follows a held line) */
        snprintf(c->bad_input, sizeof(c->bad_input), "out of memory");
        return -1;
    }
    r = lp_parse_event(line, n - 1, &c->lim, &c->lev) < 0 ? garbled(c, line, n - 1) : 0;
    evbuffer_drain(c->held_line, n);
    return r;
}

/*
 * The held line, copied to the end of the queued stream: moving its chain
 * there (evbuffer_add_buffer) would leave the stream a chain per event,
 * and the framer's search for a newline across chains starts from the
 * first one: reading a long queue would cost its square.
 */
static int
add_held_line(struct evbuffer *to, struct evbuffer *held)
{
    size_t n = evbuffer_get_length(held);
    const unsigned char *p = evbuffer_pullup(held, -1);

    if (p == NULL || evbuffer_add(to, p, n) < 0)
        return -1;
    return evbuffer_drain(held, n);
}

/* One line: 1 with a whole item, 0 when a payload follows, -1 malformed.
 * DATA names are taken by reference; queueing (copy), the line is copied
 * as it came (before anything is written into it). */
static int
item_line(struct bg_conn *c, struct src *s, struct lp_frame *fr, struct evbuffer *copy)
{
    bool by_ref;
    int r;

    if (s == &c->queued && fr->len >= strlen(LINK_WORD) &&
        memcmp(fr->data, LINK_WORD, strlen(LINK_WORD)) == 0)
        return parse_link_item(c, fr->data, fr->len);
    /* Only DATA (the hot path) by reference: a NOTIFICATION's or an
     * AUTHREQ's names stay valid while a blocking bg_authorize in answer
     * reads on, as before. */
    by_ref = fr->len >= 5 && memcmp(fr->data, "DATA ", 5) == 0;
    if ((by_ref ? lp_parse_event_ref(fr->data, fr->len, &c->lim, &c->lev)
                : lp_parse_event(fr->data, fr->len, &c->lim, &c->lev)) < 0)
        return skip_data(c, s, fr);
    if (c->lev.kind == LP_EV_DATA && c->lev.n_packets > 0) {
        if ((r = data_in_place(c, s, fr, copy)) != 0)
            return r;
        if (hold_line(c, fr) < 0)
            return -1;
        lp_framer_payload(&s->fr, c->lev.payload_len, true);
        return 0;
    }
    if (by_ref && copy == NULL)
        lp_event_terminate(&c->lev);
    if (copy != NULL && is_event(c->lev.kind) &&
        (evbuffer_add(copy, fr->data, fr->len) < 0 || evbuffer_add(copy, "\n", 1) < 0))
        return -1;
    return 1;
}

/*
 * The next whole item of s into c->lev (DATA with its payload attached):
 * 1, or 0 when more bytes are needed, -1 when it is malformed. Events are
 * also appended as they came to copy, when copy is not NULL.
 */
static int
next_item(struct bg_conn *c, struct src *s, struct evbuffer *copy)
{
    struct lp_frame fr;
    int r;

    c->link_item = false;
    for (;;) {
        switch (lp_framer_next(&s->fr, s->buf, &fr)) {
        case LP_FRAME_MORE:
            return 0;
        case LP_FRAME_LINE:
            if ((r = item_line(c, s, &fr, copy)) != 0)
                return r;
            break;
        case LP_FRAME_PAYLOAD: /* after a held line */
            c->payload = fr.data;
            if (copy == NULL)
                return parse_held_line(c) < 0 ? -1 : 1;
            if (add_held_line(copy, c->held_line) < 0 ||
                evbuffer_add(copy, fr.data, fr.len) < 0 || evbuffer_add(copy, "\n", 1) < 0)
                return -1;
            return 1;
        case LP_FRAME_LINE_TOO_LONG:
            snprintf(c->bad_input, sizeof(c->bad_input),
                "a line from busgated is longer than %u bytes", BG_MAX_LINE);
            return -1;
        default:
            snprintf(c->bad_input, sizeof(c->bad_input),
                "a DATA payload from busgated is not followed by a newline");
            return -1;
        }
    }
}

/* A blocking command reads on to find its reply, queueing the events
 * before it; an application that never takes them (it only publishes,
 * say) would have them grow without bound. Past max_queued the
 * connection ends, as the daemon ends a slow consumer's: what is queued is
 * delivered, then the LINK down event, then the reconnect restores. */
static void
check_queued(struct bg_conn *c)
{
    char msg[160];

    if (evbuffer_get_length(c->queued.buf) <= c->max_queued)
        return;
    snprintf(msg, sizeof(msg),
        "slow-consumer: over %zu bytes of events queued unread while a command "
        "waited (bg_set_max_queued)",
        c->max_queued);
    link_closing(c, BG_E_SLOW_CONSUMER, msg);
}

/* What pump does with the events it reads. */
enum pump_mode {
    PUMP_TAKE,    /* bg_next_event: stop at the first, in c->lev */
    PUMP_DELIVER, /* bg_process: each to the callback, in the same loop */
    PUMP_QUEUE,   /* a blocking command's wait: each to the queued stream */
};

/*
 * Read what the socket buffer holds: replies settle commands, the greeting
 * restores registrations, events go where mode says. Returns 1 with an
 * event in c->lev (PUMP_TAKE), 2 when the queued stream has items that go
 * before the rest (a greeting's LINK up, a refused restore's REVOKED,
 * what a callback's blocking call queued), 0 when the buffer holds
 * nothing more.
 */
static int
pump(struct bg_conn *c, enum pump_mode mode)
{
    bool queue = mode == PUMP_QUEUE;
    unsigned adds;
    int r;

    while (c->fd >= 0) {
        r = next_item(c, &c->sock, queue ? c->queued.buf : NULL);
        /* Copied there: said before anything else (a callback of a reply
         * below may read the queued stream). */
        if (queue && r != 0)
            queued_grows(c);
        if (r < 0) {
            link_closing(c, BG_E_PROTOCOL, c->bad_input);
            src_reset(&c->sock);
            return 0;
        }
        if (r == 0)
            return 0;
        if (c->link_item || is_event(c->lev.kind)) {
            if (c->lev.kind == LP_EV_REVOKED && !c->link_item)
                forget_revoked(c, c->lev.rest);
            switch (mode) {
            case PUMP_TAKE:
                return 1;
            case PUMP_QUEUE:
                check_queued(c);
                if (c->link_item) /* a DATA event skipped */
                    queue_link_item(c, "skipped", 0, 0, c->link_text);
                continue;
            case PUMP_DELIVER:
                adds = c->queued_adds;
                deliver(c);
                /* A callback unset in the callback lets a blocking call
                 * read on and queue: those first. */
                if (c->queued_adds != adds && evbuffer_get_length(c->queued.buf) > 0)
                    return 2;
                continue;
            }
        }
        switch (c->lev.kind) {
        case LP_EV_OK:
        case LP_EV_ERR:
        case LP_EV_PONG:
        case LP_EV_END:
            on_reply(c);
            break;
        case LP_EV_STAT:
            on_stat(c);
            break;
        case LP_EV_HELLO:
            if (on_hello(c) < 0)
                link_closing(c, c->err, c->errmsg);
            flush_out(c);
            break;
        default:
            break;
        }
        /* A greeting's LINK up event, a refused restore's REVOKED: ahead
         * of the events read after them. */
        if (!queue && evbuffer_get_length(c->queued.buf) > 0)
            return 2;
    }
    return 0;
}

/* After the socket's buffered items: a closed link goes DOWN. */
static void
settle_closing(struct bg_conn *c)
{
    if (c->state == LINK_CLOSING)
        link_down(c);
}

/* A daemon that accepts but does not greet (hung, or not busgated) is
 * left at bg_set_timeout after connecting, whichever call waits then:
 * true when it was, the link DOWN and its event queued. */
static bool
greeting_overdue(struct bg_conn *c)
{
    char msg[64];

    if (c->state != LINK_HELLO || now_ms() < c->hello_by)
        return false;
    snprintf(msg, sizeof(msg), "no greeting from busgated in %d ms", c->timeout_ms);
    link_closing(c, BG_E_TIMEOUT, msg);
    settle_closing(c);
    return true;
}

/* ---- building the public event ---- */

static void
name_out(const struct lp_name *n, const char **p, size_t *len)
{
    *p = n->ptr != NULL ? n->ptr : "";
    *len = n->len;
}

/* A REVOKED event's feed, and topic for a subscription, decoded from its
 * text ("<role> <feed> [<topic>] <reason>"): the names the application
 * gave, to match against its own. */
static int
revoked_names(struct bg_conn *c, struct bg_event *ev)
{
    const char *t = ev->text, *why, *feed, *topic;
    size_t rn = strcspn(t, " "), fn, tn;
    uint32_t n;

    feed = t + rn + (t[rn] == ' ');
    fn = strcspn(feed, " ");
    topic = feed + fn + (feed[fn] == ' ');
    tn = rn == strlen("subscribe") && memcmp(t, "subscribe", rn) == 0 ? strcspn(topic, " ")
                                                                      : 0;
    if (fn + tn + 2 > c->revoked_cap) {
        char *p = realloc(c->revoked, fn + tn + 2);

        if (p == NULL)
            return set_err(c, BG_E_NOMEM, "out of memory");
        c->revoked = p;
        c->revoked_cap = fn + tn + 2;
    }
    if (lp_decode_name(feed, fn, c->revoked, &n, &why) < 0)
        return 0; /* not as busgated writes it: the text says what it can */
    ev->feed = c->revoked;
    ev->feed_len = n;
    if (tn > 0 && lp_decode_name(topic, tn, c->revoked + n + 1, &n, &why) == 0) {
        ev->topic = c->revoked + ev->feed_len + 1;
        ev->topic_len = n;
    }
    return 0;
}

/* DATA, the hot path: the fields a DATA event has, each stored once. The
 * others are left as the last DATA event had them (zero: an event of
 * another kind resets the whole struct first), so that an event costs no
 * clearing of the struct (the only copy keep_event makes of a DATA
 * event's strings is of the DATA fields and text). */
static inline int
build_data(struct bg_conn *c)
{
    const struct lp_event *l = &c->lev;
    struct bg_event *ev = &c->ev;
    const uint8_t *p = c->payload;

    if (l->n_packets > c->pk_cap) {
        struct bg_packet *pk = realloc(c->pk, l->n_packets * sizeof(*pk));

        if (pk == NULL)
            return set_err(c, BG_E_NOMEM, "out of memory");
        c->pk = pk;
        c->pk_cap = l->n_packets;
    }
    for (uint32_t i = 0; i < l->n_packets; i++) {
        c->pk[i] = (struct bg_packet){ p, l->packets[i].len, l->packets[i].entitlements.v,
            l->packets[i].entitlements.n };
        p += l->packets[i].len;
    }
    if (ev->kind != BG_EV_DATA)
        *ev = (struct bg_event){ .kind = BG_EV_DATA };
    ev->feed = l->feed.ptr;
    ev->topic = l->topic.ptr;
    ev->user = l->user.ptr;
    ev->host = l->host.ptr;
    ev->feed_len = l->feed.len;
    ev->topic_len = l->topic.len;
    ev->user_len = l->user.len;
    ev->host_len = l->host.len;
    ev->is_image = l->is_image;
    ev->is_unicast = l->is_unicast;
    ev->content_type = l->content_type.len > 0 ? l->content_type.ptr : "";
    ev->packets = c->pk;
    ev->n_packets = l->n_packets;
    ev->text = "";
    return 0;
}

/* Any other item: out of line, so that a DATA event's build (inline
 * where it is delivered) pays none of this. */
static int __attribute__((noinline)) build_other(struct bg_conn *c)
{
    struct bg_event *ev = &c->ev;
    const struct lp_event *l = &c->lev;

    *ev = (struct bg_event){ .content_type = "", .text = "" }; /* stores, not a call */
    if (c->link_item && c->link_skipped) {
        ev->kind = BG_EV_SKIPPED;
        ev->text = c->link_text;
        return 0;
    }
    if (c->link_item && c->link_refused) {
        ev->kind = BG_EV_REPLY;
        ev->error = c->link_err;
        ev->request = c->link_request;
        ev->text = c->link_text;
        return 0;
    }
    if (c->link_item) {
        ev->kind = BG_EV_LINK;
        ev->up = c->link_up;
        ev->state = c->link_up ? "up" : "down";
        ev->error = c->link_err;
        ev->text = c->link_text;
        return 0;
    }
    name_out(&l->feed, &ev->feed, &ev->feed_len);
    name_out(&l->topic, &ev->topic, &ev->topic_len);
    name_out(&l->user, &ev->user, &ev->user_len);
    name_out(&l->host, &ev->host, &ev->host_len);
    switch (l->kind) {
    case LP_EV_NOTIFICATION:
    case LP_EV_AUTHREQ:
        ev->kind = l->kind == LP_EV_AUTHREQ ? BG_EV_AUTHREQ : BG_EV_NOTIFICATION;
        ev->is_add = l->is_add;
        memcpy(ev->client_id, l->client_id, 16);
        guid_to_text(l->client_id, ev->client_id_text);
        break;
    case LP_EV_REVOKED:
        ev->kind = BG_EV_REVOKED;
        ev->text = l->rest;
        return revoked_names(c, ev);
    default: {
        size_t n = strcspn(l->rest, " ");

        ev->kind = BG_EV_BUS;
        snprintf(c->bus_state, sizeof(c->bus_state), "%.*s", (int)n, l->rest);
        ev->state = c->bus_state;
        ev->up = strcmp(c->bus_state, "up") == 0;
        ev->text = l->rest + n + strspn(l->rest + n, " ");
        break;
    }
    }
    return 0;
}

static inline int
build_event(struct bg_conn *c)
{
    if (!c->link_item && c->lev.kind == LP_EV_DATA)
        return build_data(c);
    return build_other(c);
}

/* n bytes of src, NUL-terminated, at *p (advanced past them). */
static const char *
keep_bytes(char **p, const void *src, size_t n)
{
    char *d = *p;

    if (n > 0)
        memcpy(d, src, n);
    d[n] = '\0';
    *p = d + n + 1;
    return d;
}

/*
 * A blocking call made while the application still holds an event (a
 * handler that publishes, pings or answers) reads on, and reading reuses
 * what the event points into: the socket's buffer, the parser's store,
 * link_text, bus_state (a greeting rewrites it). The event's strings and
 * packets are copied out first, so that it stays valid until the next
 * bg_next_event/bg_process, as promised. Copied once per event held, and
 * only then.
 */
static int
keep_event(struct bg_conn *c)
{
    struct bg_event *ev = &c->ev;
    size_t n_ents = 0, bytes, ct_len, text_len, state_len;
    int32_t *ents;
    char *p;

    if (!c->held)
        return 0;
    ct_len = strlen(ev->content_type);
    text_len = strlen(ev->text);
    state_len = ev->state != NULL ? strlen(ev->state) : 0;
    bytes = ev->feed_len + ev->topic_len + ev->user_len + ev->host_len + ct_len + text_len +
        state_len + 7;
    for (size_t i = 0; i < ev->n_packets; i++) {
        n_ents += c->pk[i].n_entitlements;
        bytes += c->pk[i].len + 1;
    }
    bytes += n_ents * sizeof(int32_t);
    if (bytes > c->keep_cap) {
        char *k = realloc(c->keep, bytes);

        if (k == NULL)
            return set_err(c, BG_E_NOMEM, "out of memory");
        c->keep = k;
        c->keep_cap = bytes;
    }
    ents = (int32_t *)(void *)c->keep; /* first: malloc's alignment */
    p = c->keep + n_ents * sizeof(int32_t);
    for (size_t i = 0; i < ev->n_packets; i++) {
        struct bg_packet *pk = &c->pk[i];

        if (pk->n_entitlements > 0)
            memcpy(ents, pk->entitlements, pk->n_entitlements * sizeof(int32_t));
        pk->entitlements = ents;
        ents += pk->n_entitlements;
        pk->data = keep_bytes(&p, pk->data, pk->len);
    }
    ev->feed = keep_bytes(&p, ev->feed, ev->feed_len);
    ev->topic = keep_bytes(&p, ev->topic, ev->topic_len);
    ev->user = keep_bytes(&p, ev->user, ev->user_len);
    ev->host = keep_bytes(&p, ev->host, ev->host_len);
    ev->content_type = keep_bytes(&p, ev->content_type, ct_len);
    ev->text = keep_bytes(&p, ev->text, text_len);
    if (ev->state != NULL)
        ev->state = keep_bytes(&p, ev->state, state_len);
    c->held = false; /* copied: nothing read from now on touches it */
    return 0;
}

/* The next queued item: 1, 0 or -1 as next_item. The queue is nearly
 * always empty: that costs no framer call per event, and no look at the
 * stream while nothing was added to it. */
static int
queued_item(struct bg_conn *c)
{
    if (c->queued_adds == c->queued_seen)
        return 0;
    if (evbuffer_get_length(c->queued.buf) == 0) {
        c->queued_seen = c->queued_adds;
        return 0;
    }
    return next_item(c, &c->queued, NULL);
}

/* One event ready to hand over (queued first, then the socket's): 1, or 0. */
static int
take_event(struct bg_conn *c)
{
    int r = queued_item(c);

    if (r < 0) { /* cannot happen: we wrote these */
        src_reset(&c->queued);
        return 0;
    }
    if (r > 0)
        return 1;
    if ((r = pump(c, PUMP_TAKE)) == 1)
        return 1;
    if (r == 0) /* the socket's items all read: a closed link may go */
        settle_closing(c);
    return queued_item(c) > 0;
}

/* Event-loop use: the queued items to the callback. */
static void
deliver_queued(struct bg_conn *c)
{
    int r;

    while ((r = queued_item(c)) > 0)
        deliver(c);
    if (r < 0) /* cannot happen: we wrote these */
        src_reset(&c->queued);
}

/* Event-loop use: every event ready to the callback, in order: the
 * queued ones, then the socket's in one loop (pump), then a closed
 * link's own. */
static void
deliver_all(struct bg_conn *c)
{
    do
        deliver_queued(c);
    while (pump(c, PUMP_DELIVER) == 2);
    settle_closing(c);
    deliver_queued(c);
}

/* ---- waiting ---- */

static bool
reconnect_due(const struct bg_conn *c)
{
    return c->state == LINK_DOWN && c->backoff_max > 0 && now_ms() >= c->retry_at;
}

/* Wait for input (or room to write) up to wait_ms, then read/write. */
static void
wait_io(struct bg_conn *c, int wait_ms)
{
    struct pollfd pfd = { .fd = c->fd, .events = POLLIN };

    if (c->fd < 0) {
        poll(NULL, 0, wait_ms);
        return;
    }
    flush_out(c);
    if (want_write(c))
        pfd.events |= POLLOUT;
    if (poll(&pfd, 1, wait_ms) <= 0)
        return;
    if (pfd.revents & POLLOUT)
        flush_out(c);
    if (pfd.revents & (POLLIN | POLLHUP | POLLERR))
        read_some(c, false);
}

static int
remaining(int64_t deadline)
{
    int64_t left = deadline - now_ms();

    return left < 0 ? 0 : left > 1000000 ? 1000000 : (int)left;
}

/* Blocking: wait for request id's reply, queueing events meanwhile. */
static int
wait_reply(struct bg_conn *c, uint64_t id)
{
    int64_t deadline = deadline_after(c->timeout_ms);

    if (keep_event(c) < 0)
        return -c->err;
    c->wait_id = id;
    c->wait_done = false;
    for (;;) {
        pump(c, PUMP_QUEUE);
        if (c->wait_done)
            break;
        if (c->state == LINK_CLOSING) {
            settle_closing(c);
            continue;
        }
        if (c->state == LINK_DOWN) {
            c->wait_id = 0;
            return set_err(c, BG_E_CLOSED, "%s",
                c->errmsg[0] ? c->errmsg : "not connected");
        }
        if (now_ms() >= deadline) {
            c->wait_id = 0;
            return set_err(c, BG_E_TIMEOUT, "no reply from busgated in %d ms",
                c->timeout_ms);
        }
        wait_io(c, remaining(deadline));
    }
    c->wait_id = 0;
    return c->wait_err ? -c->wait_err : 0;
}

/* Blocking: connect (or reconnect when due) and wait for the greeting. */
static int
ensure_up(struct bg_conn *c, bool force)
{
    if (c->state == LINK_UP)
        return 0;
    if (keep_event(c) < 0)
        return -c->err;
    if (c->state == LINK_CLOSING) {
        /* Found gone by a write (a pipelined batch): its last words are
         * queued, then the link goes down and reconnects when due. Left
         * closing, a publish-only app would never reconnect. */
        pump(c, PUMP_QUEUE);
        settle_closing(c);
    }
    if (c->state == LINK_DOWN && (force || reconnect_due(c)) && link_open(c) < 0)
        return -c->err;
    while (c->state == LINK_HELLO && !greeting_overdue(c)) {
        wait_io(c, remaining(c->hello_by));
        pump(c, PUMP_QUEUE);
        settle_closing(c);
    }
    if (c->state == LINK_UP)
        return 0;
    return set_err(c, c->close_err == BG_E_TIMEOUT ? BG_E_TIMEOUT : BG_E_CLOSED,
        "not connected to busgated%s%s", c->close_msg[0] ? ": " : "", c->close_msg);
}

/* ---- commands ---- */

/* Whether a command can go out now: blocking use connects first when a
 * reconnect is due; event-loop use queues behind the greeting. */
static int
link_ready(struct bg_conn *c)
{
    if (c->cb == NULL)
        return ensure_up(c, false);
    if (c->state == LINK_DOWN || c->state == LINK_CLOSING)
        return set_err(c, BG_E_CLOSED, "not connected to busgated (reconnecting)");
    return 0;
}

static int
too_long(struct bg_conn *c)
{
    return set_err(c, BG_E_LINE_TOO_LONG,
        "the command line would be longer than busgated's max_line, %u bytes; "
        "nothing was sent",
        (unsigned)c->max_line);
}

/*
 * Whether the command in c->tmp has a line the daemon takes: it discards
 * a longer one up to its newline, and would then read a message's payload
 * as commands. Else c->tmp is emptied.
 */
static int
line_fits(struct bg_conn *c)
{
    struct evbuffer_ptr nl = evbuffer_search(c->tmp, "\n", 1, NULL);

    if (nl.pos >= 0 && (size_t)nl.pos <= c->max_line)
        return 0;
    evbuffer_drain(c->tmp, evbuffer_get_length(c->tmp));
    return too_long(c);
}

/* Send what c->tmp holds as one command (and wait, when blocking); quiet
 * marks a VERBOSE (struct req). */
static int
command_as(struct bg_conn *c, int reg_op, char *reg_line, int quiet)
{
    struct req *q;
    int r;

    if ((r = link_ready(c)) < 0 || (r = line_fits(c)) < 0) {
        free(reg_line);
        evbuffer_drain(c->tmp, evbuffer_get_length(c->tmp));
        return r;
    }
    if ((q = req_push(c, false, reg_op, reg_line)) == NULL) {
        free(reg_line);
        evbuffer_drain(c->tmp, evbuffer_get_length(c->tmp));
        return set_err(c, BG_E_NOMEM, "out of memory");
    }
    q->quiet = quiet;
    evbuffer_add_buffer(out_settle(c), c->tmp);
    flush_out(c);
    if (c->cb != NULL)
        return 0;
    r = wait_reply(c, c->last_id);
    if (r == -BG_E_CLOSED && reg_op != 0 && c->backoff_max > 0) {
        /* Lost with the connection: link_down recorded it for the restore. */
        c->err = 0;
        c->errmsg[0] = '\0';
        return 0;
    }
    return r;
}

static int
command(struct bg_conn *c, int reg_op, char *reg_line)
{
    return command_as(c, reg_op, reg_line, 0);
}

/*
 * A message queued while pipelined (before and after: the queue's length
 * around it), with no reply to wait for: written once per batch; blocking
 * use waits only for room when much is queued, reading (and queueing)
 * what arrives meanwhile.
 */
static int
queued(struct bg_conn *c, size_t before, size_t after)
{
    int64_t deadline;

    /* Once per batch: not a refused write per message while the socket
     * is full. */
    if (before / BG_PIPELINE_BATCH != after / BG_PIPELINE_BATCH)
        flush_out(c);
    if (c->cb != NULL || out_length(c) <= BG_PIPELINE_QUEUE)
        return 0;
    out_settle(c);
    if (keep_event(c) < 0)
        return -c->err;
    /* Down to half: a wait per half queue, not per message. */
    deadline = deadline_after(c->timeout_ms);
    while (evbuffer_get_length(c->out) > BG_PIPELINE_QUEUE / 2) {
        if (c->state != LINK_UP)
            return set_err(c, BG_E_CLOSED, "connection to busgated lost");
        if (now_ms() >= deadline)
            return set_err(c, BG_E_TIMEOUT, "busgated took nothing in %d ms",
                c->timeout_ms);
        wait_io(c, remaining(deadline));
        pump(c, PUMP_QUEUE);
        settle_closing(c);
    }
    return 0;
}

/* The command in c->tmp without a reply to wait for (AUTHORIZE), queued
 * while pipelined. */
static int
quiet_command(struct bg_conn *c)
{
    size_t before, n;
    int r;

    if (!c->pipelined)
        return command(c, 0, NULL);
    if ((r = link_ready(c)) < 0 || (r = line_fits(c)) < 0) {
        evbuffer_drain(c->tmp, evbuffer_get_length(c->tmp));
        return r;
    }
    before = evbuffer_get_length(out_settle(c));
    /* A small message is copied, so that messages share chains: moved,
     * each would be an iovec of its own and a write would take 16. */
    if ((n = evbuffer_get_length(c->tmp)) <= BG_COPY_MAX) {
        if (evbuffer_add(c->out, evbuffer_pullup(c->tmp, -1), n) < 0)
            return set_err(c, BG_E_NOMEM, "out of memory");
        evbuffer_drain(c->tmp, n);
    } else {
        evbuffer_add_buffer(c->out, c->tmp);
    }
    return queued(c, before, evbuffer_get_length(c->out));
}

int
bg_flush(bg_conn *c)
{
    if (c->state == LINK_DOWN || c->state == LINK_CLOSING)
        return set_err(c, BG_E_CLOSED, "not connected to busgated");
    flush_out(c);
    return 0;
}

int
bg_set_pipelined(bg_conn *c, bool on)
{
    int r;

    if (on == c->pipelined)
        return 0;
    if (lp_format_cmd(c->tmp, LP_VERBOSE, on ? "off" : "on") < 0)
        return set_err(c, BG_E_NOMEM, "out of memory");
    /* VERBOSE itself is always answered; what follows "off" is not. The
     * replies change meaning at its +OK (on_reply), the messages now. */
    if ((r = command_as(c, 0, NULL, on ? 1 : -1)) == 0) {
        c->pipelined = on;
    } else if (r == -BG_E_TIMEOUT && c->state == LINK_UP) {
        /* Its late +OK would switch the daemon's replies while this side
         * stays as it was, and every later reply would be matched to the
         * wrong command: a new session starts in step (the restore says
         * VERBOSE off only when pipelined). */
        link_closing(c, BG_E_TIMEOUT, "no reply to VERBOSE in time; reconnecting");
        settle_closing(c);
        set_err(c, BG_E_TIMEOUT, "no reply from busgated in %d ms", c->timeout_ms);
    }
    return r;
}

/* The registration line of (verb, names), without its newline. */
static char *
reg_line(struct bg_conn *c, enum lp_verb verb, const char *feed, size_t feed_len,
    const char *topic, size_t topic_len)
{
    struct evbuffer *b = evbuffer_new();
    size_t n;
    char *s = NULL;

    if (b != NULL && lp_format_cmd_names(b, verb, feed, feed_len, topic, topic_len) == 0 &&
        (n = evbuffer_get_length(b)) > 0 && (s = malloc(n)) != NULL) {
        evbuffer_remove(b, s, n);
        s[n - 1] = '\0';
    }
    if (b != NULL)
        evbuffer_free(b);
    return s;
}

/*
 * Disconnected (busgated restarting): the (un)registration is recorded
 * and goes out with the restore after the reconnect. Asking for what is
 * already so answers as the daemon would.
 */
static int
record_offline(struct bg_conn *c, enum lp_verb reg, int op, char *line)
{
    static const struct {
        enum lp_verb verb;
        int already, not ;
    } codes[] = {
        { LP_SUB, BG_E_ALREADY_SUBSCRIBED, BG_E_NOT_SUBSCRIBED },
        { LP_NOTIFY, BG_E_ALREADY_NOTIFYING, BG_E_NOT_NOTIFYING },
        { LP_AUTHORIZER, BG_E_ALREADY_AUTHORIZER, BG_E_NOT_AUTHORIZER },
    };
    int r = reg_apply(c, op, line), i = 0;

    free(line);
    if (r < 0)
        return set_err(c, BG_E_NOMEM, "out of memory");
    while (codes[i].verb != reg)
        i++;
    if (r == 0)
        return set_err(c, op > 0 ? codes[i].already : codes[i].not,
            "%s (recorded while disconnected)",
            bg_error_name(op > 0 ? codes[i].already : codes[i].not ));
    c->err = 0;
    c->errmsg[0] = '\0';
    return 0;
}

/* SUB/UNSUB/NOTIFY/... : reg is the verb whose registration it adds or removes. */
static int
names_command(struct bg_conn *c, enum lp_verb verb, enum lp_verb reg, int op,
    const char *feed, size_t feed_len, const char *topic, size_t topic_len)
{
    char *line;
    int r;

    /* (UN)AUTHORIZER with no feed: every feed. */
    if ((feed == NULL && (reg != LP_AUTHORIZER || feed_len != 0)) ||
        (verb == LP_SUB || verb == LP_UNSUB ? topic == NULL : false))
        return set_err(c, BG_E_INVALID, "a feed (and a topic) is needed");
    if (c->pipelined)
        return set_err(c, BG_E_INVALID, "not while pipelined (bg_set_pipelined)");
    r = link_ready(c);
    if (r < 0 && c->backoff_max > 0 &&
        (r == -BG_E_CLOSED || r == -BG_E_IO || r == -BG_E_TIMEOUT)) {
        if ((line = reg_line(c, reg, feed, feed_len, topic, topic_len)) == NULL)
            return set_err(c, BG_E_NOMEM, "out of memory");
        return record_offline(c, reg, op, line);
    }
    if (r < 0)
        return r;
    if ((line = reg_line(c, reg, feed, feed_len, topic, topic_len)) == NULL ||
        lp_format_cmd_names(c->tmp, verb, feed, feed_len, topic, topic_len) < 0) {
        free(line);
        return set_err(c, BG_E_NOMEM, "out of memory");
    }
    return command(c, op, line);
}

int
bg_subscribe(bg_conn *c, const char *feed, size_t feed_len, const char *topic,
    size_t topic_len)
{
    return names_command(c, LP_SUB, LP_SUB, 1, feed, feed_len, topic, topic_len);
}

int
bg_unsubscribe(bg_conn *c, const char *feed, size_t feed_len, const char *topic,
    size_t topic_len)
{
    return names_command(c, LP_UNSUB, LP_SUB, -1, feed, feed_len, topic, topic_len);
}

int
bg_notify(bg_conn *c, const char *feed, size_t feed_len)
{
    return names_command(c, LP_NOTIFY, LP_NOTIFY, 1, feed, feed_len, NULL, 0);
}

int
bg_unnotify(bg_conn *c, const char *feed, size_t feed_len)
{
    return names_command(c, LP_UNNOTIFY, LP_NOTIFY, -1, feed, feed_len, NULL, 0);
}

int
bg_authorizer(bg_conn *c, const char *feed, size_t feed_len)
{
    return names_command(c, LP_AUTHORIZER, LP_AUTHORIZER, 1, feed, feed_len, NULL, 0);
}

int
bg_unauthorizer(bg_conn *c, const char *feed, size_t feed_len)
{
    return names_command(c, LP_UNAUTHORIZER, LP_AUTHORIZER, -1, feed, feed_len, NULL, 0);
}

/* Why a packet cannot be sent, NULL if it can. */
static inline const char *
packet_fault(const struct bg_packet *p)
{
    return p->len > UINT32_MAX || p->n_entitlements > UINT32_MAX ? "is too large"
        : p->len > 0 && p->data == NULL ? "has a length but no data"
        : p->n_entitlements > 0 && p->entitlements == NULL
        ? "has an entitlement count but no entitlements"
        : NULL;
}

/* The packets as the formatter takes them, into pk (n entries); inline
 * in message_command. */
static inline __attribute__((always_inline)) int
wire_packets(struct bg_conn *c, const struct bg_packet *packets, size_t n,
    struct wire_packet *pk)
{
    for (size_t i = 0; i < n; i++) {
        const struct bg_packet *p = &packets[i];
        const char *bad = packet_fault(p);

        if (bad != NULL)
            return set_err(c, BG_E_INVALID, "packet %zu %s", i, bad);
        pk[i] = (struct wire_packet){ { p->entitlements, (uint32_t)p->n_entitlements },
            p->data, (uint32_t)p->len };
    }
    return 0;
}

/* A PUB or SEND (m without its packets, which are these); inline in
 * each bg_publish* and bg_send*: a frame less per message. */
static inline __attribute__((always_inline)) int
message_command(struct bg_conn *c, struct lp_message *m, const struct bg_packet *packets,
    size_t n_packets)
{
    struct wire_packet stack[8], *pk = stack; /* each filled below */
    int r;

    if (m->feed == NULL || m->topic == NULL || (n_packets > 0 && packets == NULL) ||
        n_packets > UINT32_MAX)
        return set_err(c, BG_E_INVALID, "a feed, a topic and the packets are needed");
    if (n_packets > 8 && (pk = calloc(n_packets, sizeof(*pk))) == NULL)
        return set_err(c, BG_E_NOMEM, "out of memory");
    if ((r = wire_packets(c, packets, n_packets, pk)) < 0)
        goto out;
    m->packets = pk;
    m->n_packets = (uint32_t)n_packets;
    /* While pipelined, formatted straight into the output queue, where the
     * last message ended (nothing is left of it if that fails); else a
     * command in hand, sent by command(), which checks the line's length. */
    if (c->pipelined && (r = link_ready(c)) < 0)
        goto out;
    r = c->pipelined ? lp_format_cmd_message_at(c->out, &c->out_tail, m, c->max_line)
                     : lp_format_cmd_message_at(c->tmp, NULL, m, UINT32_MAX);
    if (r == LP_FORMAT_TOO_LONG)
        r = too_long(c);
    else if (r < 0)
        r = set_err(c, BG_E_NOMEM, "out of memory");
    else
        r = c->pipelined ? queued(c, c->out_tail.len - c->out_tail.added, c->out_tail.len)
                         : command(c, 0, NULL);
out:
    if (pk != stack)
        free(pk);
    return r;
}

int
bg_publish(bg_conn *c, const char *feed, size_t feed_len, const char *topic,
    size_t topic_len, bool is_image, const struct bg_packet *packets, size_t n_packets)
{
    struct lp_message m = { .feed = feed,
        .topic = topic,
        .feed_len = feed_len,
        .topic_len = topic_len,
        .image = is_image };

    return message_command(c, &m, packets, n_packets);
}

int
bg_publish_typed(bg_conn *c, const char *feed, size_t feed_len, const char *topic,
    size_t topic_len, const char *content_type, size_t content_type_len,
    const struct bg_packet *packets, size_t n_packets)
{
    struct lp_message m = { .feed = feed,
        .topic = topic,
        .feed_len = feed_len,
        .topic_len = topic_len,
        .ctype = content_type,
        .ctype_len = content_type_len };

    if (content_type == NULL)
        return set_err(c, BG_E_INVALID, "a content type is needed (\"\" for none)");
    return message_command(c, &m, packets, n_packets);
}

int
bg_send(bg_conn *c, const uint8_t client_id[16], const char *feed, size_t feed_len,
    const char *topic, size_t topic_len, bool is_image, const struct bg_packet *packets,
    size_t n_packets)
{
    struct lp_message m = { .client_id = client_id,
        .feed = feed,
        .topic = topic,
        .feed_len = feed_len,
        .topic_len = topic_len,
        .image = is_image };

    if (client_id == NULL)
        return set_err(c, BG_E_INVALID, "a client id is needed");
    return message_command(c, &m, packets, n_packets);
}

int
bg_send_typed(bg_conn *c, const uint8_t client_id[16], const char *feed, size_t feed_len,
    const char *topic, size_t topic_len, const char *content_type, size_t content_type_len,
    const struct bg_packet *packets, size_t n_packets)
{
    struct lp_message m = { .client_id = client_id,
        .feed = feed,
        .topic = topic,
        .feed_len = feed_len,
        .topic_len = topic_len,
        .ctype = content_type,
        .ctype_len = content_type_len };

    if (client_id == NULL || content_type == NULL)
        return set_err(c, BG_E_INVALID, "a client id and a content type are needed");
    return message_command(c, &m, packets, n_packets);
}

int
bg_authorize(bg_conn *c, const uint8_t client_id[16], const char *feed, size_t feed_len,
    const char *topic, size_t topic_len, bool is_required, const int32_t *entitlements,
    size_t n_entitlements)
{
    char *ents = NULL;
    int r;

    if (client_id == NULL || feed == NULL || topic == NULL ||
        (n_entitlements > 0 && entitlements == NULL) || n_entitlements > UINT32_MAX / 12)
        return set_err(c, BG_E_INVALID, "a client id, a feed and a topic are needed");
    if (is_required && n_entitlements > 0) {
        size_t o = 0;

        if ((ents = malloc(n_entitlements * 12 + 1)) == NULL)
            return set_err(c, BG_E_NOMEM, "out of memory");
        for (size_t i = 0; i < n_entitlements; i++)
            o += (size_t)sprintf(ents + o, "%s%d", i ? "," : "", (int)entitlements[i]);
    }
    r = lp_format_cmd_authorize(c->tmp, client_id, feed, feed_len, topic, topic_len,
        is_required, ents);
    free(ents);
    if (r < 0)
        return set_err(c, BG_E_NOMEM, "out of memory");
    return quiet_command(c);
}

int
bg_set_name(bg_conn *c, const char *name, size_t name_len)
{
    char *copy;
    int r;

    /* Checked here as busgated would: a name it refused would otherwise
     * be said again, and refused, at each reconnect. */
    if (name == NULL || name_len == 0 || name_len > LP_MAX_APP_NAME ||
        !lp_utf8_valid((const unsigned char *)name, name_len))
        return set_err(c, BG_E_BAD_NAME, "an app name is 1 to %d bytes of UTF-8",
            LP_MAX_APP_NAME);
    if (c->pipelined)
        return set_err(c, BG_E_INVALID, "not while pipelined (bg_set_pipelined)");
    if ((copy = malloc(name_len + 1)) == NULL)
        return set_err(c, BG_E_NOMEM, "out of memory");
    memcpy(copy, name, name_len);
    copy[name_len] = '\0';
    free(c->app_name);
    c->app_name = copy;
    c->app_name_len = name_len;
    if ((r = link_ready(c)) < 0 && c->backoff_max > 0 &&
        (r == -BG_E_CLOSED || r == -BG_E_IO || r == -BG_E_TIMEOUT)) {
        c->err = 0; /* said to the next session */
        c->errmsg[0] = '\0';
        return 0;
    }
    if (r < 0)
        return r;
    if (lp_format_cmd_names(c->tmp, LP_NAME, name, name_len, NULL, 0) < 0)
        return set_err(c, BG_E_NOMEM, "out of memory");
    if ((r = command(c, 0, NULL)) == -BG_E_CLOSED && c->backoff_max > 0) {
        c->err = 0; /* lost with the connection: said to the next session */
        c->errmsg[0] = '\0';
        return 0;
    }
    return r;
}

int
bg_ping(bg_conn *c)
{
    if (lp_format_cmd(c->tmp, LP_PING, NULL) < 0)
        return set_err(c, BG_E_NOMEM, "out of memory");
    return command(c, 0, NULL);
}

int
bg_stats(bg_conn *c, const char *view, bg_stat_callback *cb, void *arg)
{
    int r;

    if (c->cb != NULL || cb == NULL || c->pipelined)
        return set_err(c, BG_E_INVALID,
            "bg_stats is for blocking use, with a callback, not pipelined");
    if (view != NULL && view[0] == '\0')
        view = NULL;
    if (view != NULL && !lp_is_word(view)) /* "LINK\nPING": two commands */
        return set_err(c, BG_E_INVALID, "a STATS view is one word");
    if (lp_format_cmd(c->tmp, LP_STATS, view) < 0)
        return set_err(c, BG_E_NOMEM, "out of memory");
    c->stat_cb = cb;
    c->stat_arg = arg;
    r = command(c, 0, NULL);
    c->stat_cb = NULL;
    c->stat_arg = NULL;
    return r;
}

const char *
bg_hello(const bg_conn *c)
{
    return c->hello;
}

uint64_t
bg_last_request(const bg_conn *c)
{
    return c->last_id;
}

/* ---- blocking use ---- */

int
bg_next_event(bg_conn *c, int timeout_ms, const struct bg_event **ev)
{
    int64_t deadline = timeout_ms < 0 ? INT64_MAX : now_ms() + timeout_ms;
    bool polled = false; /* the socket was read at least once (timeout 0) */
    int wait;

    c->held = false;
    for (;;) {
        if (take_event(c)) {
            if (build_event(c) < 0)
                return -c->err;
            c->held = true;
            *ev = &c->ev;
            return 0;
        }
        if (reconnect_due(c)) {
            (void)link_open(c); /* the greeting: read by take_event */
            continue;
        }
        if (greeting_overdue(c))
            continue;
        if (c->state == LINK_DOWN && c->backoff_max == 0)
            return set_err(c, BG_E_CLOSED, "not connected to busgated");
        if (now_ms() >= deadline && (polled || c->fd < 0))
            return set_err(c, BG_E_TIMEOUT, "no event in %d ms", timeout_ms);
        wait = remaining(deadline);
        if (c->state == LINK_DOWN && c->retry_at - now_ms() < wait)
            wait = remaining(c->retry_at);
        if (c->state == LINK_HELLO && c->hello_by - now_ms() < wait)
            wait = remaining(c->hello_by);
        wait_io(c, wait);
        polled = true;
    }
}

/* ---- event-loop use ---- */

void
bg_set_callback(bg_conn *c, bg_callback *cb, void *arg)
{
    c->cb = cb;
    c->cb_arg = arg;
}

int
bg_fd(const bg_conn *c)
{
    return c->fd;
}

bool
bg_want_write(const bg_conn *c)
{
    return want_write(c);
}

int
bg_timeout_ms(const bg_conn *c)
{
    if (evbuffer_get_length(c->queued.buf) > 0)
        return 0;
    if (c->state == LINK_HELLO && c->hello_by != INT64_MAX)
        return remaining(c->hello_by);
    if (c->state == LINK_DOWN && c->backoff_max > 0)
        return remaining(c->retry_at);
    return -1;
}

static void
deliver(struct bg_conn *c)
{
    if (build_event(c) == 0 && c->cb != NULL) {
        c->held = true;
        c->cb(c, &c->ev, c->cb_arg);
        c->held = false;
    }
}

int
bg_process(bg_conn *c, int readiness)
{
    /* Full: what is queued after the first write waits for writable. */
    bool full = false;

    /* Without a callback the events it reads would go nowhere. */
    if (c->cb == NULL)
        return set_err(c, BG_E_INVALID,
            "bg_process is for event-loop use (bg_set_callback)");
    c->held = false;
    if (reconnect_due(c))
        (void)link_open(c);
    if (c->fd >= 0 && (readiness & BG_WRITABLE))
        full = !flush_out(c);
    if (c->fd >= 0 && (readiness & BG_READABLE))
        read_some(c, true);
    do /* a greeting overdue ends the link: its LINK down event next */
        deliver_all(c);
    while (greeting_overdue(c));
    rbuf_give_back(c);
    if (!full)
        flush_out(c);
    return c->state == LINK_DOWN ? -BG_E_CLOSED : 0;
}

/* ---- the connection ---- */

void
bg_set_timeout(bg_conn *c, int timeout_ms)
{
    c->timeout_ms = timeout_ms < 0 ? -1 : timeout_ms > 0 ? timeout_ms : 1;
}

void
bg_set_reconnect(bg_conn *c, int min_ms, int max_ms)
{
    c->backoff_min = min_ms > 0 ? min_ms : 1;
    c->backoff_max = max_ms < 0 ? 0 : max_ms;
    if (c->backoff_max > 0 && c->backoff_max < c->backoff_min)
        c->backoff_max = c->backoff_min;
    c->backoff = c->backoff_min;
}

void
bg_set_limits(bg_conn *c, size_t max_payload, size_t max_packets)
{
    c->lim.max_payload = max_payload < UINT32_MAX ? (uint32_t)max_payload : UINT32_MAX;
    c->lim.max_packets = max_packets < UINT32_MAX ? (uint32_t)max_packets : UINT32_MAX;
}

void
bg_set_max_queued(bg_conn *c, size_t bytes)
{
    c->max_queued = bytes > 0 ? bytes : SIZE_MAX;
}

/* Where busgated listens unless told otherwise: the same choice as the
 * busgate CLI and the python package make. */
static const char *
default_path(void)
{
    const char *env = getenv("BUSGATE_SOCKET");

    return env != NULL && env[0] != '\0' ? env : DEFAULT_SOCKET;
}

bg_conn *
bg_new(const char *path)
{
    struct bg_conn *c = calloc(1, sizeof(*c));

    if (c == NULL)
        return NULL;
    thread_conns++;
    c->fd = -1;
    c->state = LINK_DOWN;
    c->timeout_ms = 10000;
    bg_set_reconnect(c, 50, 2000);
    c->max_queued = BG_DEF_MAX_QUEUED;
    c->max_line = BG_DEF_MAX_LINE;
    lp_event_init(&c->lev);
    c->lim = (struct lp_limits){ .max_name = UINT32_MAX,
        .max_payload = BG_DEF_MAX_PAYLOAD,
        .max_packets = BG_DEF_MAX_PACKETS,
        .max_entitlements = BG_MAX_ENTITLEMENTS };
    c->path = strdup(path != NULL ? path : default_path());
    c->sock.buf = evbuffer_new();
    c->queued.buf = evbuffer_new();
    c->out = evbuffer_new();
    c->tmp = evbuffer_new();
    c->held_line = evbuffer_new();
    if (c->path == NULL || c->sock.buf == NULL || c->queued.buf == NULL || c->out == NULL ||
        c->tmp == NULL || c->held_line == NULL) {
        bg_free(c);
        return NULL;
    }
    lp_framer_init(&c->sock.fr, BG_MAX_LINE);
    lp_framer_init(&c->queued.fr, BG_MAX_LINE);
    return c;
}

int
bg_open(bg_conn *c)
{
    if (c->state != LINK_DOWN || c->was_up)
        return set_err(c, BG_E_INVALID, "bg_open: already opened");
    if (ensure_up(c, true) == 0) {
        c->err = 0;
        c->errmsg[0] = '\0';
        return 0;
    }
    /* The first failure is the application's to see, not a link event;
     * with the daemon's reason when it gave one (a refusal, a greeting
     * not ours). */
    src_reset(&c->queued);
    if (c->close_err != 0 && c->close_err != BG_E_CLOSED)
        c->err = c->close_err;
    return -c->err;
}

bg_conn *
bg_connect(const char *path)
{
    bg_conn *c = bg_new(path);

    if (c != NULL)
        (void)bg_open(c);
    return c;
}

void
bg_free(bg_conn *c)
{
    if (c == NULL)
        return;
    /* Pipelined messages returned 0 once queued: write what the socket
     * takes now (no wait; bg_ping first makes sure of all of them). */
    flush_out(c);
    if (c->fd >= 0)
        close(c->fd);
    reqs_clear(c);
    free(c->reqs);
    regs_free(c);
    lp_event_free(&c->lev);
    free(c->pk);
    free(c->keep);
    free(c->app_name);
    free(c->revoked);
    free(c->path);
    if (c->sock.buf != NULL) /* first: it may hold a read buffer, and tells c */
        evbuffer_free(c->sock.buf);
    free(c->own.b);
    if (thread_conns > 0 && --thread_conns == 0 && !thread_rbuf.lent) {
        free(thread_rbuf.b);
        thread_rbuf = (struct rbuf){ 0 };
    }
    if (c->queued.buf != NULL)
        evbuffer_free(c->queued.buf);
    if (c->out != NULL)
        evbuffer_free(c->out);
    if (c->tmp != NULL)
        evbuffer_free(c->tmp);
    if (c->held_line != NULL)
        evbuffer_free(c->held_line);
    free(c);
}
