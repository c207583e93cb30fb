/*
 * One local client on the Unix socket: reads command lines and payloads
 * with limits, hands parsed commands to the router, and owns a bounded
 * output queue with the slow-consumer policy (-ERR slow-consumer, close).
 */
#ifndef BUSGATE_SESSION_H
#define BUSGATE_SESSION_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "config.h"
#include "lineproto.h"

struct event_base;
struct evbuffer;
struct router;
struct session;

struct session_peer {
    pid_t pid;
    uid_t uid;
    gid_t gid;
};

enum session_state {
    SESSION_OPEN,       /* reading commands (the framer knows where in a
                         * line or payload block the input is) */
    SESSION_CLOSING,    /* flushing a final reply, then closed */
};

/* Start a session on an accepted fd (made non-blocking here); it is
 * attached to the router and greeted. NULL on failure (fd closed). */
struct session *session_new(struct event_base *base, int fd,
    const struct session_peer *peer, struct router *router,
    const struct config_listen *lim);

/* The session's output queue; append whole events/replies to it and then
 * call session_flush_check (which applies the slow-consumer policy). */
struct evbuffer *session_output(struct session *s);

/* Apply the output bound after appending; returns false if the session was
 * closed as a slow consumer (do not touch it again in that case... it is
 * freed later from the event loop, so the pointer stays valid until then). */
bool session_flush_check(struct session *s);

/* Reply helpers honouring VERBOSE. */
void session_reply_ok(struct session *s);
void session_reply_err(struct session *s, enum lp_error e, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Stop / resume reading commands (bus back-pressure). */
void session_pause(struct session *s);
void session_resume(struct session *s);

/* Send a final -ERR with code e, flush (bounded by grace), then free. */
void session_close(struct session *s, enum lp_error e, const char *msg);

/* New limits after a reload (applied to new input). */
void session_set_limits(struct session *s, const struct config_listen *lim);

uint64_t session_id(const struct session *s);
const struct session_peer *session_peer(const struct session *s);
bool session_closing(const struct session *s);
size_t session_output_len(const struct session *s);

/* Per-session counters for STATS. */
struct session_stats {
    uint64_t cmds_in, bytes_in;
    uint64_t events_out, bytes_out;
};
void session_get_stats(const struct session *s, struct session_stats *st);

/* The budget over all sessions' queued output and buffered input
 * (listen.max_memory): set at start and on reload, freed at exit. */
int session_budget_start(struct event_base *base, size_t max_memory);
void session_budget_set(size_t max_memory);
void session_budget_stop(void);

struct session_budget_stats {
    size_t bytes, peak;         /* queued now, and the most ever */
    uint64_t closes;            /* sessions closed to stay within it */
    uint64_t pauses;            /* times a session stopped reading for it */
    unsigned paused;            /* sessions not reading now */
    uint64_t trims;             /* times freed memory went back to the system */
};
void session_budget_stats(struct session_budget_stats *st);

/* Free immediately (router shutdown). */
void session_free(struct session *s);

/* Free the sessions the router refused that are still flushing (exit). */
void session_free_refused(void);

#endif /* BUSGATE_SESSION_H */
