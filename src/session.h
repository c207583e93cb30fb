/*
 * One local client on the Unix socket: reads command lines and payloads
 * with limits, hands parsed commands to the router, and owns a bounded
 * output queue with the slow-consumer policy (-ERR slow-consumer, close).
 * The router reaches a session only through the port (struct router_port)
 * given at attach; all sessions' queues share one memory budget.
 */
#ifndef BUSGATE_SESSION_H
#define BUSGATE_SESSION_H

#include "config.h"
#include "router.h"

struct event_base;
struct session;

enum session_state {
    SESSION_OPEN,    /* reading commands (the framer knows where in a
                         * line or payload block the input is) */
    SESSION_CLOSING, /* flushing a final reply, then closed */
};

/* The limits and the memory budget from the configuration: at start, and
 * again for every session on reload. */
int session_start(struct event_base *base, const struct config *cfg);
void session_configure(const struct config *cfg);

/* Free every session (each leaves the router) and what the module holds:
 * at exit, before router_free. */
void session_stop(void);

/* What this loop turn has appended to the outputs still to be written at
 * its end, in bytes per output (0: none waits). */
size_t session_turn_share(void);

/* Start a session on an accepted fd (made non-blocking here): attached to
 * the router, which greets it. Over listen.max_sessions the client gets
 * the greeting and -ERR too-many-sessions and no session is built. NULL
 * then, or on failure (fd closed either way). */
struct session *session_new(struct event_base *base, int fd, const struct peer_cred *peer,
    struct router *router);

#endif /* BUSGATE_SESSION_H */
