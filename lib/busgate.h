/*
 * libbusgate: a C client for busgated, the jetblack-messagebus gateway
 * (the line protocol of doc/PROTOCOL.md over its Unix socket).
 *
 * Two ways to use one connection, as hiredis does:
 *
 *  - blocking: every command waits for its reply; bg_next_event() waits
 *    for the next event (events that arrive while a command waits are
 *    queued for it);
 *  - event loop: after bg_set_callback(), commands only queue their line
 *    and return; the application polls bg_fd() (readable, and writable
 *    when bg_want_write()), calls bg_process() on readiness and after
 *    bg_timeout_ms(), and receives events and replies in the callback.
 *
 * When busgated goes away (restart, slow-consumer cut-off), the library
 * reports a BG_EV_LINK down event, reconnects with a bounded backoff,
 * restores the subscriptions, notifications and authorizer registrations
 * the daemon had accepted, and reports BG_EV_LINK up (also for the first
 * connection when bg_open had failed). The bus link's own
 * state changes (the daemon's BUS events) arrive as BG_EV_BUS. While
 * disconnected, (un)subscribe, (un)notify and (un)authorizer calls are
 * recorded and sent with that restore (they return 0; no BG_EV_REPLY
 * follows; one refused then is dropped, reported as BG_EV_REVOKED, as is
 * one refused in the restore of a reconnect); publish, send, authorize and
 * ping fail with BG_E_CLOSED (or BG_E_IO when a due reconnect failed).
 * Event loop: a command sent but not yet answered when the connection
 * ends (other than those registrations) gets its BG_EV_REPLY all the
 * same, with BG_E_CLOSED, ahead of the LINK down event.
 *
 * Not thread-safe: one connection must be used by one thread at a time.
 * Functions returning int return 0 or a negative bg_error; the message of
 * the last error is bg_errstr().
 */
#ifndef BUSGATE_H
#define BUSGATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Error codes (returned negated). The daemon's "-ERR <code>" replies map
 * one to one onto BG_E_UNKNOWN_COMMAND... (same order as the table in
 * doc/PROTOCOL.md); bg_error_name() gives the daemon's spelling. */
enum bg_error {
    BG_OK = 0,
    BG_E_IO = 1,   /* socket error (connect, read, write) */
    BG_E_CLOSED,   /* not connected to busgated (reconnecting) */
    BG_E_TIMEOUT,  /* no reply in time */
    BG_E_PROTOCOL, /* the daemon said something this library cannot parse */
    BG_E_INVALID,  /* a bad argument */
    BG_E_NOMEM,
    BG_E_UNKNOWN_COMMAND = 101,
    BG_E_SYNTAX,
    BG_E_BAD_NAME,
    BG_E_BAD_CLIENT_ID,
    BG_E_BAD_PACKET,
    BG_E_LINE_TOO_LONG,
    BG_E_PAYLOAD_TOO_LARGE,
    BG_E_TOO_MANY_PACKETS,
    BG_E_BAD_TERMINATOR,
    BG_E_NO_PACKETS,
    BG_E_BUS_DOWN,
    BG_E_TOO_MANY_SUBSCRIPTIONS,
    BG_E_TOO_MANY_NOTIFICATIONS,
    BG_E_TOO_MANY_AUTHORIZERS,
    BG_E_ALREADY_SUBSCRIBED,
    BG_E_NOT_SUBSCRIBED,
    BG_E_ALREADY_NOTIFYING,
    BG_E_NOT_NOTIFYING,
    BG_E_ALREADY_AUTHORIZER,
    BG_E_NOT_AUTHORIZER,
    BG_E_UNKNOWN_REQUEST,
    BG_E_ALREADY_ANSWERED,
    BG_E_SLOW_CONSUMER, /* the daemon cut this connection off */
    BG_E_SHUTTING_DOWN, /* the daemon is stopping */
    BG_E_TOO_MANY_SESSIONS,
    BG_E_PERM,              /* the access rules refuse it */
    BG_E_DAEMON_OTHER = 199 /* an -ERR code this library does not know */
};

/* A data packet: bytes (data may be NULL when len is 0) and entitlements
 * (none: n_entitlements 0). */
struct bg_packet {
    const void *data;
    size_t len;
    const int32_t *entitlements;
    size_t n_entitlements;
};

enum bg_event_kind {
    BG_EV_DATA,         /* a message on a subscribed topic */
    BG_EV_NOTIFICATION, /* a bus client (un)subscribed on a NOTIFY'd feed */
    BG_EV_AUTHREQ,      /* an authorization request for an AUTHORIZER'd feed */
    BG_EV_BUS,          /* the daemon's bus link changed state */
    BG_EV_LINK,         /* this connection to busgated went down / came back */
    BG_EV_REPLY,        /* event-loop use: the reply to a command */
    BG_EV_REVOKED,      /* the access rules ended a registration (a reload's,
                         * or a refused restore): text */
    BG_EV_SKIPPED,      /* a DATA event past bg_set_limits, dropped: text says
                         * "<bytes> bytes in <n> packets" */
};

/* One event. Strings are NUL-terminated and also have a length (names may
 * contain NUL bytes); everything points into the connection and stays
 * valid until the next bg_next_event()/bg_process() call or the callback
 * returns. */
struct bg_event {
    enum bg_event_kind kind;
    const char *feed, *topic, *user, *host; /* DATA, NOTIFICATION, AUTHREQ;
                                             * REVOKED: feed, and topic for a
                                             * subscription ("" otherwise) */
    size_t feed_len, topic_len, user_len, host_len;
    uint8_t client_id[16];           /* NOTIFICATION, AUTHREQ: wire (.NET Guid) order */
    char client_id_text[37];         /* the same as canonical Guid text */
    bool is_image;                   /* DATA */
    bool is_unicast;                 /* DATA: SEND to this gateway's id */
    const char *content_type;        /* DATA: "" unless the bus speaks protocol 6 */
    bool is_add;                     /* NOTIFICATION: add or remove */
    const struct bg_packet *packets; /* DATA */
    size_t n_packets;
    bool up;           /* BUS: state "up"; LINK: connected again */
    const char *state; /* BUS: "up", "unconfirmed" or "down"; LINK: "up"/"down" */
    const char *text;  /* BUS: the reason; LINK down and REPLY: the message;
                        * REVOKED: "<role> <feed> [<topic>] <reason>" as sent,
                        * e.g. "subscribe prices AAPL no access rule allows it" */
    int error;         /* LINK down, REPLY: 0 or a bg_error (not negated) */
    uint64_t request;  /* REPLY: what bg_last_request() said for the command;
                        * 0: a pipelined message's refusal (bg_set_pipelined) */
};

typedef struct bg_conn bg_conn;

/* Connect to busgated at path and read its greeting. path NULL:
 * $BUSGATE_SOCKET when set, else busgated's default socket
 * (RUNSTATEDIR/busgate/busgate.sock as configured at build time:
 * /run/busgate/busgate.sock for the service install), as for the busgate
 * CLI and the python package. Returns NULL only when out of memory;
 * otherwise check bg_error_code(): a failed connection must still be
 * freed. */
bg_conn *bg_connect(const char *path);
/* The same in two steps, so that settings (bg_set_timeout for the
 * greeting, bg_set_reconnect, bg_set_limits) apply from the start:
 * bg_new makes the connection object (NULL: out of memory), bg_open
 * connects and reads the greeting (0 or a negative bg_error), once. A
 * greeting from another line protocol version, or no greeting, fails. */
bg_conn *bg_new(const char *path);
int bg_open(bg_conn *c);
/* Close and free. Queued (pipelined) messages are written as far as the
 * socket takes them without waiting; bg_ping first to be sure of all. */
void bg_free(bg_conn *c);

/* The last error (a bg_error, not negated) and its message; c may be NULL
 * (bg_connect out of memory): BG_E_NOMEM. */
int bg_error_code(const bg_conn *c);
const char *bg_errstr(const bg_conn *c);
/* "bad-name", "slow-consumer"... for daemon codes; a phrase otherwise. */
const char *bg_error_name(int code);

/* Blocking use: how long a command waits for its reply; both uses: how
 * long after connecting the greeting may take (default 10000; negative:
 * for ever). */
void bg_set_timeout(bg_conn *c, int timeout_ms);
/* Reconnect backoff: first wait min_ms, doubling up to max_ms (defaults
 * 50 and 2000); max_ms 0 turns reconnecting off. It starts again at min_ms
 * after a session that lasted a second, not after one refused at once. */
void bg_set_reconnect(bg_conn *c, int min_ms, int max_ms);
/* Incoming DATA larger than max_payload bytes or max_packets packets is
 * not buffered: it is skipped and reported as BG_EV_SKIPPED (defaults 64
 * MiB and 1048576). Lines are bounded at 16 MiB regardless. */
void bg_set_limits(bg_conn *c, size_t max_payload, size_t max_packets);
/* Blocking use: the most bytes of events a command's wait queues while it
 * reads on for its reply (default 64 MiB; 0: no bound). Past it the
 * connection ends as a slow consumer's would: the command fails with
 * BG_E_CLOSED, bg_next_event gives what was queued, then a LINK down event
 * with BG_E_SLOW_CONSUMER, and the reconnect restores the registrations
 * (while what is queued stays over the bound, the next event a command's
 * wait reads ends the connection again). */
void bg_set_max_queued(bg_conn *c, size_t bytes);

/* Commands. Names are byte strings of the given length (UTF-8 on the bus).
 * Blocking use: returns once the daemon answered. Event-loop use: returns
 * once queued; the reply comes as BG_EV_REPLY. While disconnected (with
 * reconnecting on), the (un)registrations below are recorded for the
 * reconnect instead: 0, or BG_E_ALREADY_.../BG_E_NOT_... as the daemon
 * would answer. A command line longer than the greeting's max_line is not
 * sent: BG_E_LINE_TOO_LONG (busgated would read a payload as commands). */
int bg_subscribe(bg_conn *c, const char *feed, size_t feed_len, const char *topic,
    size_t topic_len);
int bg_unsubscribe(bg_conn *c, const char *feed, size_t feed_len, const char *topic,
    size_t topic_len);
int bg_notify(bg_conn *c, const char *feed, size_t feed_len);
int bg_unnotify(bg_conn *c, const char *feed, size_t feed_len);
/* feed NULL: every feed the access rules let this session authorize
 * (AUTHORIZER with no feed); restored on reconnect like a feed's. */
int bg_authorizer(bg_conn *c, const char *feed, size_t feed_len);
int bg_unauthorizer(bg_conn *c, const char *feed, size_t feed_len);
int bg_publish(bg_conn *c, const char *feed, size_t feed_len, const char *topic,
    size_t topic_len, bool is_image, const struct bg_packet *packets, size_t n_packets);
/* client_id: 16 bytes in wire order, as in a bg_event. */
int bg_send(bg_conn *c, const uint8_t client_id[16], const char *feed, size_t feed_len,
    const char *topic, size_t topic_len, bool is_image, const struct bg_packet *packets,
    size_t n_packets);
/* Bus protocol 6 (the greeting's bus_protocol=6, bg_hello): a message
 * with a content type (UTF-8, may be empty), which the bus carries instead
 * of an image flag (busgated's image rule then decides what a late joiner
 * gets). A gateway whose bus speaks 3 to 5 refuses it: BG_E_SYNTAX. */
int bg_publish_typed(bg_conn *c, const char *feed, size_t feed_len, const char *topic,
    size_t topic_len, const char *content_type, size_t content_type_len,
    const struct bg_packet *packets, size_t n_packets);
int bg_send_typed(bg_conn *c, const uint8_t client_id[16], const char *feed,
    size_t feed_len, const char *topic, size_t topic_len, const char *content_type,
    size_t content_type_len, const struct bg_packet *packets, size_t n_packets);
/* Answer an AUTHREQ; entitlements apply when is_required. */
int bg_authorize(bg_conn *c, const uint8_t client_id[16], const char *feed, size_t feed_len,
    const char *topic, size_t topic_len, bool is_required, const int32_t *entitlements,
    size_t n_entitlements);
/* A round trip: everything sent before has been handled. */
int bg_ping(bg_conn *c);
/* Label the session for people (NAME): busgated shows the name in STATS
 * SESSIONS (app=) and in its log lines about the session. 1 to 64 bytes
 * of UTF-8 (else BG_E_BAD_NAME); it grants nothing. Said again to the
 * next session after a reconnect; while disconnected, recorded (0). */
int bg_set_name(bg_conn *c, const char *name, size_t name_len);
/*
 * Pipelined messages (a publisher streaming from a file or stdin): on
 * sends VERBOSE off, so the daemon answers only refusals. Then bg_publish,
 * bg_send and bg_authorize return once queued, also in blocking use (which
 * waits only for room while more than 1 MiB is queued); a refusal arrives
 * as a BG_EV_REPLY event (bg_next_event or the callback) with its error,
 * text, and request 0: which message it was is not known. bg_ping still
 * waits for (or, event loop, reports) its PONG, which comes after every
 * earlier message was handled, so after it every refusal is delivered or
 * queued. Registrations and bg_stats fail with BG_E_INVALID meanwhile; a
 * reconnect turns VERBOSE off again. off sends VERBOSE on. When it times
 * out (blocking use) the connection ends, as a late answer would leave the
 * replies out of step: a LINK down event, and the reconnect starts in the
 * mode in force before the call. Pipelined
 * messages are written in batches (64 KiB): bg_flush writes what is
 * queued, as far as the socket takes it now (the rest: bg_want_write), and
 * so does every call that waits (bg_ping, bg_next_event...).
 */
int bg_set_pipelined(bg_conn *c, bool on);
int bg_flush(bg_conn *c);
/* Blocking use: STATS [view] ("SESSIONS", "LINK"; NULL or "": the
 * counters; one word, else BG_E_INVALID).
 * cb gets each STAT line's name and value (the rest of the line) before
 * this returns; the registration restore and events are unaffected. */
typedef void bg_stat_callback(const char *name, const char *value, void *arg);
int bg_stats(bg_conn *c, const char *view, bg_stat_callback *cb, void *arg);
/* The daemon's latest greeting after "HELLO " ("busgate <version> proto=1
 * max_line=N ... bus=<state>"), "" before the first one. */
const char *bg_hello(const bg_conn *c);
/* The number of the last command sent (BG_EV_REPLY's request). */
uint64_t bg_last_request(const bg_conn *c);

/* Blocking use: the next event, waiting at most timeout_ms (-1: forever).
 * Returns 0 with *ev set, -BG_E_TIMEOUT, or another error. Reconnecting
 * happens in here. */
int bg_next_event(bg_conn *c, int timeout_ms, const struct bg_event **ev);

/* Event-loop use. The callback may issue commands (they are queued) but
 * must not call bg_free, bg_process or bg_next_event on c. */
typedef void bg_callback(bg_conn *c, const struct bg_event *ev, void *arg);
void bg_set_callback(bg_conn *c, bg_callback *cb, void *arg);
/* The socket to poll (-1 while disconnected); it changes across a
 * reconnect (watch for BG_EV_LINK). Poll it for reading always. */
int bg_fd(const bg_conn *c);
/* Whether queued output waits for the socket to be writable. */
bool bg_want_write(const bg_conn *c);
/* Milliseconds until bg_process() has timed work (a reconnect, a greeting
 * due), -1: none. */
int bg_timeout_ms(const bg_conn *c);
#define BG_READABLE 1
#define BG_WRITABLE 2
/* Do what readiness (BG_READABLE|BG_WRITABLE, 0 for a timeout) allows,
 * calling the callback for each event and reply. 0, or -BG_E_CLOSED while
 * down (reconnecting goes on: keep calling it), -BG_E_INVALID without a
 * callback (its events would be lost). */
int bg_process(bg_conn *c, int readiness);

#ifdef __cplusplus
}
#endif

#endif /* BUSGATE_H */
