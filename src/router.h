/*
 * The router: who wants what. Subscriptions (feed, topic -> sessions),
 * notifications (feed -> sessions, plus the remote subscriptions already
 * seen), authorizers (feed -> sessions) and pending authorization requests,
 * the per-topic image cache for late joiners, the bus-down queue, and the
 * replay of everything upstream after a reconnect. Counters for STATS.
 */
#ifndef BUSGATE_ROUTER_H
#define BUSGATE_ROUTER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>

#include "bus.h"
#include "config.h"
#include "lineproto.h"
#include "wire.h"

struct event_base;
struct evbuffer;
struct router;
struct session;

struct router *router_new(struct event_base *base, const struct config *cfg);
void router_free(struct router *r);

/* The bus link the router talks to (set once, before bus_start). Its
 * callbacks (struct bus_callbacks, wired in main.c) call the router_bus_*
 * functions below. */
void router_set_bus(struct router *r, struct bus *bus);

void router_bus_state(struct router *r, enum bus_state state, const char *reason);
void router_bus_message(struct router *r, const struct wire_msg *msg);
void router_bus_drained(struct router *r);
/* Every message of one bus read has been given: deliver what is batched. */
void router_bus_batch_end(struct router *r);

/* Who is at the other end of a local connection (SO_PEERCRED). */
struct peer_cred {
    pid_t pid;
    uid_t uid;
    gid_t gid;
};

/* A local connection's counters, for STATS. */
struct router_conn_stats {
    uint64_t cmds_in, bytes_in;
    uint64_t events_out, bytes_out;
    size_t queued;     /* output not yet taken */
    time_t started;    /* wall clock: accepted */
    time_t last_input; /* wall clock: the newest read from it (or started) */
    const char *state; /* open, paused-bus, paused-memory, closing */
};

/* Why a session ended, as STATS and /metrics count it. */
enum router_closed {
    ROUTER_CLOSED_PEER, /* the client closed or reset the connection */
    ROUTER_CLOSED_QUIT,
    ROUTER_CLOSED_ERROR,    /* an I/O error */
    ROUTER_CLOSED_SHUTDOWN, /* busgated stopping */
    ROUTER_CLOSED_OTHER,
    ROUTER_CLOSED_N,
};

/* The budget over all local connections' queues (listen.max_memory), and
 * their traffic since the start (gone sessions included). */
struct router_memory_stats {
    size_t bytes, peak;             /* queued now, and the most ever */
    uint64_t closes;                /* sessions closed to stay within it */
    uint64_t pauses;                /* times a session stopped reading for it */
    unsigned paused;                /* sessions not reading now */
    uint64_t trims;                 /* times freed memory went back to the system */
    uint64_t cmds_in, bytes_in;     /* commands and bytes read from sessions */
    uint64_t events_out, bytes_out; /* events (not replies) and bytes written to them */
    uint64_t
        closed[ROUTER_CLOSED_N]; /* sessions gone, by why (slow consumers: the router's) */
    uint64_t refused;            /* clients refused over listen.max_sessions */
};

/* What the router needs of a local connection. It never calls the session
 * module: it reaches each session through the port given at attach
 * (session.c's, or a test's fake). */
struct router_port {
    /* Where events go: append whole events, then call flush. */
    struct evbuffer *(*output)(struct session *s);
    /* After appending: applies the slow-consumer bound; false if that
     * closed the session. events: how many event lines (DATA, BUS, ...)
     * were appended, for the session's events_out; 0 for a reply (PONG,
     * STAT...END), which is not an event. */
    bool (*flush)(struct session *s, unsigned events);
    /* The answer to the command in hand: +OK (e is LP_ERR_NONE; only if
     * VERBOSE is on) or -ERR e msg. */
    void (*reply)(struct session *s, enum lp_error e, const char *msg);
    /* Stop (on) or resume reading commands: bus back-pressure. */
    void (*pause)(struct session *s, bool on);
    /* A final -ERR e msg (none for LP_ERR_NONE), flushed, then closed. */
    void (*close)(struct session *s, enum lp_error e, const char *msg);
    bool (*closing)(const struct session *s);
    void (*stats)(const struct session *s, struct router_conn_stats *st);
    void (*memory)(struct router_memory_stats *st);
};

/* The router's record of one session, opaque: attach returns it and the
 * session hands it back with each command (no lookup per command). */
struct router_client;

/* A new session, greeted here (HELLO). The caller has checked
 * router_session_count against listen.max_sessions. */
struct router_client *router_session_attach(struct router *r, struct session *s,
    const struct router_port *port, uint64_t id, const struct peer_cred *peer);
void router_session_detach(struct router *r, struct router_client *rc);

/* The greeting (HELLO) with the limits and the bus state, for a session
 * and for one refused before it was built. */
void router_greeting(const struct router *r, struct evbuffer *out);

/* A complete command from a session (payload attached for PUB/SEND). The
 * router replies to the session (ok/err/PONG/STAT...). */
void router_command(struct router *r, struct router_client *rc, const struct lp_cmd *cmd);

/* The session is closing (slow consumer, QUIT, EOF, shutdown): stop
 * routing to it and release its subscriptions, notifications and
 * authorizer roles now; router_session_detach follows when it is freed. */
void router_session_closing(struct router *r, struct router_client *rc);

/* The name the session gave itself (NAME), or NULL: the session module's
 * log lines carry it, and the name lives here with the router's record. */
const char *router_session_app(const struct router_client *rc);

/* A session was closed as a slow consumer (for the counter). */
void router_count_slow_consumer(struct router *r);

/* Current bus state name (sd_notify STATUS). */
const char *router_bus_state_name(const struct router *r);

/* New config after SIGHUP (router, listen limits). */
void router_reconfigure(struct router *r, const struct config *cfg);

/* Daemon stopping: tell every session and close them (bounded by grace). */
void router_shutdown(struct router *r);

/* Every counter, gauge and fact of STATS (not the per-session lines) into
 * sf, in STAT order: the one source of STATS, /metrics and the CLI. */
struct statsfmt;
int router_stats_snapshot(struct router *r, struct statsfmt *sf);

/* True when the bus link is up and its login confirmed; otherwise false,
 * with the link's state and the last error in reason. */
bool router_ready(const struct router *r, char *reason, size_t len);

/* Session count, for sd_notify STATUS. */
unsigned router_session_count(const struct router *r);

#endif /* BUSGATE_ROUTER_H */
