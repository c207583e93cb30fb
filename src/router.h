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
#include <stdint.h>

#include "bus.h"
#include "config.h"
#include "lineproto.h"
#include "wire.h"

struct event_base;
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

/* Sessions come and go. Attach returns false when max_sessions is reached
 * (the session then closes itself with too-many-sessions). */
bool router_session_attach(struct router *r, struct session *s);
void router_session_detach(struct router *r, struct session *s);

/* A complete command from a session (payload attached for PUB/SEND). The
 * router replies to the session (ok/err/PONG/STAT...). */
void router_command(struct router *r, struct session *s, const struct lp_cmd *cmd);

/* The session is closing (slow consumer, QUIT, EOF, shutdown): stop
 * routing to it and release its subscriptions, notifications and
 * authorizer roles now; router_session_detach follows when it is freed. */
void router_session_closing(struct router *r, struct session *s);

/* Limits for parsing a session's commands: listen.max_payload and
 * max_packets, and the bus string and entitlement limits (a name the
 * gateway could not read back from the bus is refused up front). */
void router_lp_limits(const struct router *r, struct lp_limits *lim);

/* How long a closing session may take to flush its output
 * (daemon.shutdown_grace). */
uint32_t router_close_grace_ms(const struct router *r);

/* A session was closed as a slow consumer (for the counter). */
void router_count_slow_consumer(struct router *r);

/* Current bus state name for greetings. */
const char *router_bus_state_name(const struct router *r);

/* New config after SIGHUP (router, listen limits). */
void router_reconfigure(struct router *r, const struct config *cfg);

/* Daemon stopping: tell every session and close them (bounded by grace). */
void router_shutdown(struct router *r);

/* Session count, for sd_notify STATUS. */
unsigned router_session_count(const struct router *r);

#endif /* BUSGATE_ROUTER_H */
