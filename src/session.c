/*
 * One local client on the Unix socket. Input is framed by lineproto's
 * framer (command lines bounded by max_line, byte-counted payload blocks
 * bounded by max_payload) and parsed with lineproto; complete commands go
 * to the router. Output is the session's own evbuffer, bounded by
 * max_output: past it the session is a slow consumer and is closed, so a
 * reader that stops reading never holds memory or delays anyone else.
 *
 * A session is never freed inside a router call: closing is a state, and
 * the free happens later from the event loop (after flushing, or when the
 * grace runs out).
 *
 * All sessions' queued output and buffered input together are bounded by
 * listen.max_memory (the budget): past it, sessions stop reading commands
 * (at a command boundary, so a payload in flight completes) and the session
 * holding the most output beyond its fair share is closed as a slow
 * consumer; memory freed after a burst is given back to the system.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#ifdef HAVE_MALLOC_TRIM
#include <malloc.h>
#endif

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/util.h>

#include <bsd/sys/queue.h>

#include "log.h"
#include "router.h"
#include "session.h"
#include "sockread.h"

/* A parse buffer bigger than this is released after its command, so an
 * idle session holds no more than a small lp_cmd. */
#define SESSION_CMD_STORE_KEEP 4096

struct session {
    struct bufferevent *bev; /* the socket, and its input */
    struct evbuffer *out;    /* output: no callbacks, see output_appended */
    struct event *writable;  /* armed only while the socket is full */
    struct router *router;
    struct router_client *rc; /* the router's record of it */
    struct event *closer;     /* closing: release, then free on timeout */
    struct lp_cmd *cmd;       /* allocated at the first command */
    uint64_t id;
    struct peer_cred peer;
    enum session_state state;
    bool verbose;
    bool paused;                 /* bus back-pressure: not reading */
    bool released;               /* router_session_closing done */
    bool budget_paused;          /* memory budget: not reading */
    struct lp_framer framer;     /* where in the input stream the reader is */
    size_t last_added;           /* bytes of the newest append to the output */
    size_t out_len;              /* output bytes accounted so far */
    size_t mem;                  /* queued output + buffered input (budget) */
    struct router_conn_stats st; /* queued: filled in when asked */
    const char *close_reason;
    bool dirty;                  /* on the write list */
    LIST_ENTRY(session) all;     /* on budget.sessions while it lives */
    LIST_ENTRY(session) writing; /* on writes.dirty: output to write */
};

static uint64_t next_session_id = 1;

/* The name the app gave itself (NAME), NULL if none: the router keeps it,
 * and the log lines about a session carry it (to find a slow app by name). */
static const char *
session_app(const struct session *s)
{
    return s->rc != NULL ? router_session_app(s->rc) : NULL;
}

/* The two printf arguments of "%s%s": ", app=<name>", or nothing. */
#define APP_LOG(s)                                                                         \
    session_app(s) != NULL ? ", app=" : "", session_app(s) != NULL ? session_app(s) : ""

/* What every session is held to, from the configuration (set at start and
 * on reload, for all sessions at once). */
static struct {
    struct lp_limits lp; /* what commands are parsed against */
    uint32_t max_line;
    size_t max_output;
    uint32_t grace_ms; /* for a closing session to flush */
    uint32_t max_sessions;
} limits;

static const struct router_port session_port;

static void session_destroy(struct session *s);
static void session_close(struct session *s, enum lp_error e, const char *msg);
static size_t session_output_len(const struct session *s);
static void event_cb(struct bufferevent *bev, short what, void *arg);

/* Memory freed after a peak of at least this much is returned to the
 * system once the queues have shrunk to a quarter of it. */
#define BUDGET_TRIM_MIN (8u << 20)

/* The gateway-wide budget over every session's queues. */
static struct {
    size_t max;       /* listen.max_memory */
    size_t bytes;     /* queued output + buffered input, all sessions */
    size_t peak;      /* highest bytes since the start */
    size_t trim_peak; /* highest bytes since the last trim */
    unsigned live;    /* sessions on the list */
    unsigned paused;  /* sessions not reading because of the budget */
    uint64_t closes, pauses, trims;
    struct event *work;    /* enforce and resume from the loop */
    struct event *trimmer; /* trim when the queues have stayed small */
    LIST_HEAD(, session) sessions;
} budget = { .sessions = LIST_HEAD_INITIALIZER(budget.sessions) };

static void
budget_schedule(void)
{
    if (budget.work != NULL)
        event_active(budget.work, EV_TIMEOUT, 1);
}

static bool
budget_over(void)
{
    return budget.max > 0 && budget.bytes > budget.max;
}

/* A session's queues grew or shrank by added - deleted bytes. */
static inline void
budget_account(struct session *s, size_t added, size_t deleted)
{
    s->mem += added - deleted;
    budget.bytes += added - deleted;
    if (budget.bytes > budget.peak)
        budget.peak = budget.bytes;
    if (budget.bytes > budget.trim_peak)
        budget.trim_peak = budget.bytes;
    if (added > 0 ? budget_over()
                  : budget.paused > 0 || budget.trim_peak >= BUDGET_TRIM_MIN)
        budget_schedule();
}

/* Over budget: close the open session with the most output queued, if
 * that is more than its fair share (budget / sessions). One per loop turn:
 * the close's own error line schedules the next look. Closing sessions'
 * queues drain within the grace, so they are not counted against the
 * open ones. */
static void
budget_enforce(void)
{
    struct session *s, *worst = NULL;
    size_t open = 0, fair;
    char msg[160];

    LIST_FOREACH(s, &budget.sessions, all) {
        if (s->state == SESSION_CLOSING)
            continue;
        open += s->mem;
        if (worst == NULL || session_output_len(s) > session_output_len(worst))
            worst = s;
    }
    fair = budget.max / (budget.live > 0 ? budget.live : 1);
    if (open <= budget.max || worst == NULL || session_output_len(worst) <= fair)
        return;
    log_warn("session %" PRIu64 " (pid %d%s%s): slow consumer, %zu bytes queued while "
             "the sessions hold %zu (listen.max_memory %zu); closing it",
        worst->id, (int)worst->peer.pid, APP_LOG(worst), session_output_len(worst),
        budget.bytes, budget.max);
    budget.closes++;
    router_count_slow_consumer(worst->router);
    snprintf(msg, sizeof msg,
        "the gateway's memory budget (%zu bytes) is spent and "
        "this session holds the most unread output; closing",
        budget.max);
    session_close(worst, LP_ERR_SLOW_CONSUMER, msg);
}

/* Over budget, a session stops reading at a command boundary (so a
 * payload in flight completes and leaves the input buffer). */
static void
budget_hold(struct session *s)
{
    if (!budget_over() || s->budget_paused || s->state == SESSION_CLOSING ||
        s->framer.state != LP_FRAMER_LINE)
        return;
    s->budget_paused = true;
    budget.paused++;
    budget.pauses++;
    bufferevent_disable(s->bev, EV_READ);
}

static void
read_again(struct session *s)
{
    bufferevent_enable(s->bev, EV_READ);
    /* Commands already buffered: handle them from the loop. */
    if (evbuffer_get_length(bufferevent_get_input(s->bev)) > 0)
        bufferevent_trigger(s->bev, EV_READ,
            BEV_TRIG_IGNORE_WATERMARKS | BEV_TRIG_DEFER_CALLBACKS);
}

/* Below seven eighths of the budget (not at once below it, which would
 * flap), held sessions read again. */
static void
budget_release(void)
{
    struct session *s;

    if (budget.paused == 0 || budget.bytes > budget.max - budget.max / 8)
        return;
    LIST_FOREACH(s, &budget.sessions, all) {
        if (!s->budget_paused)
            continue;
        s->budget_paused = false;
        budget.paused--;
        if (!s->paused && s->state != SESSION_CLOSING)
            read_again(s);
    }
}

/* Once the queues have shrunk to a quarter of a large peak and stayed so
 * for a second, give the freed memory back: glibc keeps freed chunks below
 * the heap's top. (Later, not at once: a freed bufferevent releases its
 * buffers from the loop after the session is gone.) */
static bool
budget_trim_due(void)
{
    return budget.trim_peak >= BUDGET_TRIM_MIN && budget.bytes <= budget.trim_peak / 4;
}

static void
budget_trim(evutil_socket_t fd, short what, void *arg)
{
    if (!budget_trim_due())
        return;
#ifdef HAVE_MALLOC_TRIM
    malloc_trim(0);
    budget.trims++;
#endif
    budget.trim_peak = budget.bytes;
}

static void
budget_work(evutil_socket_t fd, short what, void *arg)
{
    static const struct timeval idle = { 1, 0 };

    if (budget_over())
        budget_enforce();
    else
        budget_release();
    if (budget_trim_due() && !evtimer_pending(budget.trimmer, NULL))
        evtimer_add(budget.trimmer, &idle);
}

/*
 * Writing. An open session's output is written straight to its socket once
 * per loop turn, after whatever appended to it (a whole bus read, a batch
 * of commands) is done: a session appended to goes on the dirty list, and
 * one event, activated for the turn, writes every dirty session. Only a
 * socket that cannot take it all gets a write event, until it has drained:
 * with an EV_WRITE added and deleted for every session touched, each turn
 * cost two epoll_ctl per session besides its writev.
 *
 * The output is a plain evbuffer with no callbacks, and appends are
 * accounted (budget, write list, slow-consumer bound) when the router
 * calls flush: a bufferevent's output runs two callbacks on every append,
 * a tenth of what one small event cost to deliver.
 */
static struct {
    struct event *flusher;
    LIST_HEAD(, session) dirty;
    unsigned n_dirty;
    size_t appended; /* to the dirty sessions' outputs since they were written */
} writes = { .dirty = LIST_HEAD_INITIALIZER(writes.dirty) };

static void
write_mark(struct session *s)
{
    if (s->dirty || s->state == SESSION_CLOSING)
        return;
    if (LIST_EMPTY(&writes.dirty) && writes.flusher != NULL)
        event_active(writes.flusher, EV_TIMEOUT, 1);
    s->dirty = true;
    writes.n_dirty++;
    LIST_INSERT_HEAD(&writes.dirty, s, writing);
}

static void
write_unmark(struct session *s)
{
    if (s->dirty) {
        s->dirty = false;
        writes.n_dirty--;
        LIST_REMOVE(s, writing);
    }
}

size_t
session_turn_share(void)
{
    return writes.n_dirty > 0 ? writes.appended / writes.n_dirty : 0;
}

/* A socket error: the session is gone (the peer closed or reset it). */
static void
session_failed(struct session *s, int e)
{
    log_debug("session %" PRIu64 ": %s", s->id, evutil_socket_error_to_string(e));
    if (s->close_reason == NULL)
        s->close_reason = e == EPIPE || e == ECONNRESET ? "peer closed" : "i/o error";
    session_destroy(s);
}

/* Account what was appended to the output since the last look. */
static inline void
output_appended(struct session *s)
{
    size_t len = evbuffer_get_length(s->out);

    if (len <= s->out_len)
        return;
    s->last_added = len - s->out_len;
    budget_account(s, s->last_added, 0);
    s->out_len = len;
    writes.appended += s->last_added;
    write_mark(s);
}

/* Account what the socket took. */
static void
output_written(struct session *s)
{
    size_t len = evbuffer_get_length(s->out), n = s->out_len - len;

    s->st.bytes_out += n;
    s->out_len = len;
    budget_account(s, 0, n);
}

/* Write what the socket takes; the rest waits for it to be writable. False
 * if the socket failed, and the session is gone. */
static bool
session_write(struct session *s)
{
    int fd = bufferevent_getfd(s->bev);

    output_appended(s);
    if (s->out_len > 0 && evbuffer_write(s->out, fd) < 0) {
        int e = EVUTIL_SOCKET_ERROR();

        if (e != EAGAIN && e != EWOULDBLOCK && e != EINTR) {
            session_failed(s, e);
            return false;
        }
    }
    output_written(s);
    if (s->out_len > 0)
        event_add(s->writable, NULL);
    else
        event_del(s->writable);
    return true;
}

static void
flush_dirty(evutil_socket_t fd, short what, void *arg)
{
    struct session *s;

    while ((s = LIST_FIRST(&writes.dirty)) != NULL) {
        write_unmark(s);
        /* Waiting for room: the write event writes it. */
        if (!event_pending(s->writable, EV_WRITE, NULL))
            session_write(s);
    }
    writes.appended = 0;
}

/* The socket was full and has room again; a closing session is freed once
 * its output is all written (and its release step has run). */
static void
writable_cb(evutil_socket_t fd, short what, void *arg)
{
    struct session *s = arg;

    if (session_write(s) && s->state == SESSION_CLOSING && s->released && s->out_len == 0)
        session_destroy(s);
}

/* Traffic of the sessions already gone, for the totals (STATS), and why
 * they went. */
static struct router_conn_stats gone;
static uint64_t closed[ROUTER_CLOSED_N], refused;

/* A close_reason as STATS counts it; -1: slow consumers, which the router
 * counts itself. */
static int
closed_kind(const char *reason)
{
    static const struct {
        const char *reason;
        enum router_closed kind;
    } kinds[] = {
        { "peer closed", ROUTER_CLOSED_PEER },
        { "quit", ROUTER_CLOSED_QUIT },
        { "i/o error", ROUTER_CLOSED_ERROR },
        { "shutting-down", ROUTER_CLOSED_SHUTDOWN },
    };

    if (reason != NULL && strcmp(reason, "slow-consumer") == 0)
        return -1;
    for (size_t i = 0; reason != NULL && i < sizeof kinds / sizeof kinds[0]; i++)
        if (strcmp(reason, kinds[i].reason) == 0)
            return (int)kinds[i].kind;
    return ROUTER_CLOSED_OTHER;
}

static void
traffic_add(struct router_memory_stats *st, const struct router_conn_stats *c)
{
    st->cmds_in += c->cmds_in;
    st->bytes_in += c->bytes_in;
    st->events_out += c->events_out;
    st->bytes_out += c->bytes_out;
}

static void
budget_stats(struct router_memory_stats *st)
{
    struct session *s;

    memset(st, 0, sizeof *st);
    traffic_add(st, &gone);
    LIST_FOREACH(s, &budget.sessions, all)
        traffic_add(st, &s->st);
    st->bytes = budget.bytes;
    st->peak = budget.peak;
    st->closes = budget.closes;
    st->pauses = budget.pauses;
    st->paused = budget.paused;
    st->trims = budget.trims;
    memcpy(st->closed, closed, sizeof closed);
    st->refused = refused;
}

/* ---- output ---- */

static struct evbuffer *
session_output(struct session *s)
{
    return s->out;
}

static size_t
session_output_len(const struct session *s)
{
    return evbuffer_get_length(s->out);
}

/* Past listen.max_output: out of line, so that a delivery's check (every
 * event) has no frame to set up for it. */
static bool __attribute__((noinline, cold)) slow_consumer(struct session *s)
{
    size_t len = s->out_len;
    char msg[128];

    log_warn("session %" PRIu64 " (pid %d%s%s): slow consumer, %zu bytes queued "
             "(listen.max_output %zu); closing it",
        s->id, (int)s->peer.pid, APP_LOG(s), len, limits.max_output);
    router_count_slow_consumer(s->router);
    snprintf(msg, sizeof msg, "more than %zu bytes of output queued; closing",
        limits.max_output);
    session_close(s, LP_ERR_SLOW_CONSUMER, msg);
    return false;
}

/* After appending to the output (events event lines, 0 for a reply): the
 * slow-consumer bound. False if the session was closed by it (it stays
 * valid until freed from the loop). */
static bool
session_flush_check(struct session *s, unsigned events)
{
    size_t len;

    if (s->state == SESSION_CLOSING)
        return false;
    output_appended(s);
    s->st.events_out += events; /* events, not writes: a batch is many */
    len = s->out_len;
    /* The bound is on the backlog before the newest event, so one event
     * bigger than max_output still reaches a reader that keeps up. */
    if (len <= limits.max_output || len - s->last_added <= limits.max_output)
        return true;
    return slow_consumer(s);
}

static void
session_reply_ok(struct session *s)
{
    if (!s->verbose || s->state == SESSION_CLOSING)
        return;
    lp_format_ok(session_output(s));
    session_flush_check(s, 0);
}

static void __attribute__((format(printf, 3, 4)))
session_reply_err(struct session *s, enum lp_error e, const char *fmt, ...)
{
    char msg[512];
    va_list ap;

    if (s->state == SESSION_CLOSING)
        return;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    lp_format_err(session_output(s), e, "%s", msg);
    session_flush_check(s, 0);
}

static void
input_cb(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg)
{
    budget_account(arg, info->n_added, info->n_deleted);
}

/* ---- input framing ---- */

static struct lp_cmd *
session_cmd(struct session *s)
{
    if (s->cmd == NULL) {
        if ((s->cmd = malloc(sizeof *s->cmd)) == NULL)
            return NULL;
        lp_cmd_init(s->cmd);
    }
    return s->cmd;
}

/* After a batch of commands: give back an unusually large parse buffer,
 * unless its command still waits for its payload. */
static void
session_cmd_trim(struct session *s)
{
    if (s->cmd != NULL && s->cmd->store_cap > SESSION_CMD_STORE_KEEP &&
        s->framer.state != LP_FRAMER_PAYLOAD) {
        lp_cmd_free(s->cmd);
        lp_cmd_init(s->cmd);
    }
}

/* The commands the session answers itself (VERBOSE, QUIT). Out of line:
 * the router's commands (nearly every one) then save no registers. */
static void __attribute__((noinline))
session_own_command(struct session *s, struct lp_cmd *cmd)
{
    if (cmd->verb == LP_VERBOSE) {
        /* VERBOSE itself is always acknowledged: "off" as the last +OK. */
        s->verbose = true;
        session_reply_ok(s);
        s->verbose = cmd->on;
        return;
    }
    session_reply_ok(s);
    s->close_reason = "quit";
    session_close(s, LP_ERR_NONE, NULL);
}

static void
session_dispatch(struct session *s, struct lp_cmd *cmd)
{
    s->st.cmds_in++;
    if (cmd->verb == LP_VERBOSE || cmd->verb == LP_QUIT)
        session_own_command(s, cmd);
    else
        router_command(s->router, s->rc, cmd);
}

/* A PUB/SEND whose payload and newline are buffered behind its line (the
 * usual case: clients write both at once) is read in place and dispatched,
 * without a second framer item. False when they are not all here or the
 * newline is missing: the framer's payload step takes it then. */
static bool
session_payload_in_place(struct session *s, struct evbuffer *in, struct lp_frame *fr,
    struct lp_cmd *cmd)
{
    size_t n = (size_t)cmd->payload_len + 1;
    const char *line = lp_framer_line_with(&s->framer, in, fr, n);

    if (line == NULL || line[fr->len + n] != '\n')
        return false;
    lp_framer_extend(&s->framer, n);
    lp_cmd_attach_payload(cmd, (const uint8_t *)line + fr->len + 1);
    session_dispatch(s, cmd);
    return true;
}

/* A command line (fr, without its newline): a command without a payload
 * is dispatched now, PUB/SEND with theirs, and a refused one has its
 * announced payload skipped. */
static void
session_line(struct session *s, struct evbuffer *in, struct lp_frame *fr)
{
    struct lp_cmd *cmd = session_cmd(s);
    enum lp_error e;
    char msg[256];

    if (cmd == NULL) {
        session_reply_err(s, LP_ERR_SYNTAX, "out of memory");
        return;
    }
    if (lp_parse_command(fr->data, fr->len, &limits.lp, cmd, &e, msg, sizeof msg) != 0) {
        s->st.cmds_in++;
        session_reply_err(s, e, "%s", msg);
        if ((cmd->verb == LP_PUB || cmd->verb == LP_SEND) && cmd->n_packets > 0)
            lp_framer_payload(&s->framer, cmd->payload_len, false);
        return;
    }
    if ((cmd->verb == LP_PUB || cmd->verb == LP_SEND) && cmd->n_packets > 0) {
        if (!session_payload_in_place(s, in, fr, cmd))
            lp_framer_payload(&s->framer, cmd->payload_len, true);
        return;
    }
    session_dispatch(s, cmd);
}

/*
 * A line over max_line, discarded. A PUB or SEND line ends where its
 * payload begins, and the payload's length was in the part not read: what
 * follows could only be read as commands, which would run the payload's
 * bytes. So that session is closed; any other line is refused and the
 * session goes on.
 */
static void
session_line_too_long(struct session *s, const struct lp_frame *fr)
{
    char msg[128];

    s->st.cmds_in++;
    if (lp_head_has_payload(fr->data, fr->len)) {
        snprintf(msg, sizeof msg,
            "a PUB or SEND line longer than %u bytes: its payload "
            "cannot be found; closing",
            limits.max_line);
        session_close(s, LP_ERR_LINE_TOO_LONG, msg);
    } else if (fr->skipping) {
        session_reply_err(s, LP_ERR_LINE_TOO_LONG,
            "line longer than %u bytes; discarded up to the next newline", limits.max_line);
    } else {
        session_reply_err(s, LP_ERR_LINE_TOO_LONG, "line longer than %u bytes",
            limits.max_line);
    }
}

/* One item from the framer; false when more input is needed. */
static bool
session_frame(struct session *s, struct evbuffer *in)
{
    struct lp_frame fr;

    switch (lp_framer_next(&s->framer, in, &fr)) {
    case LP_FRAME_MORE:
        s->st.bytes_in = s->framer.bytes; /* skipped bytes count too */
        return false;
    case LP_FRAME_LINE:
        session_line(s, in, &fr);
        break;
    case LP_FRAME_PAYLOAD:
        lp_cmd_attach_payload(s->cmd, fr.data);
        session_dispatch(s, s->cmd);
        break;
    case LP_FRAME_LINE_TOO_LONG:
        session_line_too_long(s, &fr);
        break;
    case LP_FRAME_BAD_TERMINATOR:
        /* A skipped payload's command already had its reply. */
        if (fr.skipping)
            break;
        s->st.cmds_in++;
        session_reply_err(s, LP_ERR_BAD_TERMINATOR,
            "the %zu-byte payload must be "
            "followed by a newline; discarded up to the next newline",
            fr.len);
        break;
    }
    s->st.bytes_in = s->framer.bytes;
    return true;
}

/* Handle every complete command buffered, unless paused or closing; what
 * they took is drained once, at the end. */
static void
session_process(struct session *s)
{
    struct evbuffer *in = bufferevent_get_input(s->bev);

    while (!s->paused && s->state != SESSION_CLOSING && session_frame(s, in))
        ;
    session_cmd_trim(s);
    lp_framer_consume(&s->framer, in);
    budget_hold(s);
}

static void
read_cb(struct bufferevent *bev, void *arg)
{
    struct session *sess = arg;

    /* Once per read, not per command: idle time needs no finer clock. */
    sess->st.last_input = time(NULL);
    if (!sess->paused && !sess->budget_paused)
        sockread_more(bev, 256 << 10);
    session_process(arg);
}

/* ---- closing ---- */

/* Runs once right after session_close (outside any router call) to release
 * the session's routing state, then again when the grace has run out. */
static void
closer_cb(evutil_socket_t fd, short what, void *arg)
{
    struct session *s = arg;
    struct timeval tv;
    uint32_t ms;

    if (!s->released) {
        s->released = true;
        router_session_closing(s->router, s->rc);
        if (session_output_len(s) == 0) {
            session_destroy(s);
            return;
        }
        ms = limits.grace_ms;
        tv.tv_sec = ms / 1000;
        tv.tv_usec = (ms % 1000) * 1000;
        evtimer_add(s->closer, &tv);
        return;
    }
    log_info("session %" PRIu64 ": %zu bytes of output not taken within the grace; "
             "dropped",
        s->id, session_output_len(s));
    session_destroy(s);
}

static void
session_close(struct session *s, enum lp_error e, const char *msg)
{
    if (s->state == SESSION_CLOSING)
        return;
    s->state = SESSION_CLOSING;
    if (s->close_reason == NULL)
        s->close_reason = e != LP_ERR_NONE ? lp_error_code(e) : "closed";
    bufferevent_disable(s->bev, EV_READ);
    bufferevent_setcb(s->bev, NULL, NULL, event_cb, s);
    write_unmark(s); /* the write event writes what is left */
    if (e != LP_ERR_NONE)
        lp_format_err(s->out, e, "%s", msg != NULL ? msg : "");
    output_appended(s);
    if (s->out_len > 0)
        event_add(s->writable, NULL);
    event_active(s->closer, EV_TIMEOUT, 1);
}

static bool
session_closing(const struct session *s)
{
    return s->state == SESSION_CLOSING;
}

static void
event_cb(struct bufferevent *bev, short what, void *arg)
{
    struct session *s = arg;

    if (what & BEV_EVENT_ERROR) {
        session_failed(s, EVUTIL_SOCKET_ERROR());
        return;
    }
    if (what & BEV_EVENT_EOF) {
        if (s->state == SESSION_CLOSING) {
            session_destroy(s);
            return;
        }
        /* The peer is done sending: finish what it asked for, flush the
         * replies, then close. */
        if (s->close_reason == NULL)
            s->close_reason = "peer closed";
        session_close(s, LP_ERR_NONE, NULL);
    }
}

/* ---- life cycle ---- */

/* Over listen.max_sessions: the greeting and the error in one write (a new
 * socket's buffer holds them), then closed; no session is built. */
static void
session_refuse(int fd, const struct peer_cred *peer, struct router *router)
{
    struct evbuffer *out = evbuffer_new();

    refused++;
    log_warn("a client (pid %d) refused: listen.max_sessions %u reached", (int)peer->pid,
        limits.max_sessions);
    if (out != NULL && evutil_make_socket_nonblocking(fd) == 0) {
        router_greeting(router, out);
        lp_format_err(out, LP_ERR_TOO_MANY_SESSIONS,
            "the gateway serves its maximum "
            "number of sessions; try later");
        evbuffer_write(out, fd);
    }
    if (out != NULL)
        evbuffer_free(out);
    close(fd);
}

struct session *
session_new(struct event_base *base, int fd, const struct peer_cred *peer,
    struct router *router)
{
    struct session *s;

    if (router_session_count(router) >= limits.max_sessions) {
        session_refuse(fd, peer, router);
        return NULL;
    }
    if ((s = calloc(1, sizeof *s)) == NULL)
        goto fail;
    s->id = next_session_id++;
    s->peer = *peer;
    s->router = router;
    s->verbose = true;
    s->state = SESSION_OPEN;
    s->st.started = s->st.last_input = time(NULL);
    lp_framer_init(&s->framer, limits.max_line);
    if (evutil_make_socket_nonblocking(fd) != 0)
        goto fail;
    if ((s->closer = evtimer_new(base, closer_cb, s)) == NULL)
        goto fail;
    if ((s->out = evbuffer_new()) == NULL ||
        (s->writable = event_new(base, fd, EV_WRITE | EV_PERSIST, writable_cb, s)) == NULL)
        goto fail;
    if ((s->bev = bufferevent_socket_new(base, fd, BEV_OPT_CLOSE_ON_FREE)) == NULL)
        goto fail;
    bufferevent_set_max_single_read(s->bev, 256 << 10);
    fd = -1;
    bufferevent_setcb(s->bev, read_cb, NULL, event_cb, s);
    evbuffer_add_cb(bufferevent_get_input(s->bev), input_cb, s);
    LIST_INSERT_HEAD(&budget.sessions, s, all);
    budget.live++;
    log_info("session %" PRIu64 ": connected, pid=%d uid=%d gid=%d", s->id, (int)peer->pid,
        (int)peer->uid, (int)peer->gid);
    /* Greets it, and pauses it under bus back-pressure. */
    s->rc = router_session_attach(router, s, &session_port, s->id, peer);
    output_appended(s);
    if (!s->paused)
        bufferevent_enable(s->bev, EV_READ);
    return s;
fail:
    log_error("cannot start a session: out of memory");
    if (s != NULL) {
        if (s->writable != NULL)
            event_free(s->writable);
        if (s->out != NULL)
            evbuffer_free(s->out);
        if (s->closer != NULL)
            event_free(s->closer);
        free(s);
    }
    if (fd >= 0)
        close(fd);
    return NULL;
}

/* Leave the router and release everything. */
static void
session_destroy(struct session *s)
{
    log_info("session %" PRIu64 ": closed (%s), pid=%d%s%s, %" PRIu64
             " commands in, %" PRIu64 " events out",
        s->id, s->close_reason != NULL ? s->close_reason : "closed", (int)s->peer.pid,
        APP_LOG(s), s->st.cmds_in, s->st.events_out);
    router_session_detach(s->router, s->rc);
    LIST_REMOVE(s, all);
    write_unmark(s);
    gone.cmds_in += s->st.cmds_in;
    gone.bytes_in += s->st.bytes_in;
    gone.events_out += s->st.events_out;
    gone.bytes_out += s->st.bytes_out;
    if (closed_kind(s->close_reason) >= 0)
        closed[closed_kind(s->close_reason)]++;
    budget.live--;
    if (s->budget_paused)
        budget.paused--;
    budget_account(s, 0, s->mem); /* freeing the buffers runs no callback */
    event_free(s->writable);      /* before the bufferevent closes the socket */
    evbuffer_free(s->out);
    bufferevent_free(s->bev);
    event_free(s->closer);
    if (s->cmd != NULL) {
        lp_cmd_free(s->cmd);
        free(s->cmd);
    }
    free(s);
}

/* ---- flow control ---- */

static void
session_pause(struct session *s)
{
    s->paused = true;
    if (s->state != SESSION_CLOSING)
        bufferevent_disable(s->bev, EV_READ);
}

static void
session_resume(struct session *s)
{
    if (!s->paused)
        return;
    s->paused = false;
    if (s->state == SESSION_CLOSING || s->budget_paused)
        return;
    /* From the loop, not from inside the router's resume. */
    read_again(s);
}

/* ---- the router's port ---- */

static struct evbuffer *
port_output(struct session *s)
{
    return session_output(s);
}

static void
port_reply(struct session *s, enum lp_error e, const char *msg)
{
    if (e == LP_ERR_NONE)
        session_reply_ok(s);
    else
        session_reply_err(s, e, "%s", msg);
}

static void
port_pause(struct session *s, bool on)
{
    if (on)
        session_pause(s);
    else
        session_resume(s);
}

static void
port_stats(const struct session *s, struct router_conn_stats *st)
{
    *st = s->st;
    st->queued = session_output_len(s);
    st->state = s->state == SESSION_CLOSING ? "closing"
        : s->budget_paused                  ? "paused-memory"
        : s->paused                         ? "paused-bus"
                                            : "open";
}

static const struct router_port session_port = {
    .output = port_output,
    .flush = session_flush_check,
    .reply = port_reply,
    .pause = port_pause,
    .close = session_close,
    .closing = session_closing,
    .stats = port_stats,
    .memory = budget_stats,
};

/* ---- the module ---- */

static void
load_limits(const struct config *cfg)
{
    struct session *s;

    limits.lp.max_name = cfg->bus.limits.max_string;
    limits.lp.max_payload = cfg->listen.max_payload;
    limits.lp.max_packets = cfg->listen.max_packets;
    limits.lp.max_entitlements = cfg->bus.limits.max_entitlements;
    limits.lp.bus_protocol = (uint32_t)cfg->bus.protocol;
    limits.max_line = cfg->listen.max_line;
    limits.max_output = cfg->listen.max_output;
    limits.grace_ms = cfg->daemon.shutdown_grace_ms;
    limits.max_sessions = cfg->listen.max_sessions;
    budget.max = cfg->listen.max_memory;
    LIST_FOREACH(s, &budget.sessions, all)
        s->framer.max_line = limits.max_line;
}

/*
 * glibc gives the heap's top back to the system (brk) whenever more than
 * its trim threshold lies free there, and grows it by what a malloc lacks
 * plus a pad of 128 KiB. Under load a loop turn allocates and frees
 * megabytes of output chains (1000 subscribers copying a batch each; the
 * queues of sockets that are full), and with some heap layouts the heap
 * shrank and regrew every turn: up to 2,400 brk in 2 s of fan-out to 1000
 * subscribers, 670-1,550 with 1000 topics x 1 library subscriber, and
 * such runs at 0.4-0.7 of the rate of runs without (bench/PROFILE.md). A
 * turn's chains now stay in the heap. Memory freed after a burst is still
 * given back by the budget's trimmer above (malloc_trim ignores the
 * threshold).
 */
#define MALLOC_TRIM_THRESHOLD (64 << 20)
#define MALLOC_TOP_PAD (16 << 20)    /* address space: pages count once touched */
#define MALLOC_MMAP_THRESHOLD (1 << 20) /* above a read's 256 KiB chain */

static void
tune_malloc(void)
{
#ifdef HAVE_MALLOPT
    (void)mallopt(M_TRIM_THRESHOLD, MALLOC_TRIM_THRESHOLD);
    (void)mallopt(M_TOP_PAD, MALLOC_TOP_PAD);
    (void)mallopt(M_MMAP_THRESHOLD, MALLOC_MMAP_THRESHOLD);
#endif
}

int
session_start(struct event_base *base, const struct config *cfg)
{
    tune_malloc();
    load_limits(cfg);
    budget.work = event_new(base, -1, 0, budget_work, NULL);
    budget.trimmer = evtimer_new(base, budget_trim, NULL);
    writes.flusher = event_new(base, -1, 0, flush_dirty, NULL);
    return budget.work != NULL && budget.trimmer != NULL && writes.flusher != NULL ? 0 : -1;
}

void
session_configure(const struct config *cfg)
{
    load_limits(cfg);
    budget_schedule();
}

void
session_stop(void)
{
    while (!LIST_EMPTY(&budget.sessions))
        session_destroy(LIST_FIRST(&budget.sessions));
    if (budget.work != NULL)
        event_free(budget.work);
    if (budget.trimmer != NULL)
        event_free(budget.trimmer);
    if (writes.flusher != NULL)
        event_free(writes.flusher);
    budget.work = budget.trimmer = writes.flusher = NULL;
}
