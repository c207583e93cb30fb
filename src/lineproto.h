/*
 * The local line protocol (doc/PROTOCOL.md): parse commands, format events
 * and replies. Pure functions over memory and evbuffers, no I/O, so they are
 * easy to unit test and fuzz. The verbs, error codes and version are here,
 * in one place; the docs quote them.
 */
#ifndef BUSGATE_LINEPROTO_H
#define BUSGATE_LINEPROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "wire.h"

struct evbuffer;

#define LP_PROTOCOL_VERSION 1

enum lp_verb {
    LP_SUB,
    LP_UNSUB,
    LP_PUB,
    LP_SEND,
    LP_NOTIFY,
    LP_UNNOTIFY,
    LP_AUTHORIZER,
    LP_UNAUTHORIZER,
    LP_AUTHORIZE,
    LP_PING,
    LP_STATS,
    LP_VERBOSE,
    LP_QUIT,
    LP_NAME,
};

/* Stable error codes, written as "-ERR <code> <message>". */
enum lp_error {
    LP_ERR_NONE = 0,
    LP_ERR_UNKNOWN_COMMAND,
    LP_ERR_SYNTAX,
    LP_ERR_BAD_NAME,
    LP_ERR_BAD_CLIENT_ID,
    LP_ERR_BAD_PACKET,
    LP_ERR_LINE_TOO_LONG,
    LP_ERR_PAYLOAD_TOO_LARGE,
    LP_ERR_TOO_MANY_PACKETS,
    LP_ERR_BAD_TERMINATOR,
    LP_ERR_NO_PACKETS,
    LP_ERR_BUS_DOWN,
    LP_ERR_TOO_MANY_SUBSCRIPTIONS,
    LP_ERR_TOO_MANY_NOTIFICATIONS,
    LP_ERR_TOO_MANY_AUTHORIZERS,
    LP_ERR_ALREADY_SUBSCRIBED,
    LP_ERR_NOT_SUBSCRIBED,
    LP_ERR_ALREADY_NOTIFYING,
    LP_ERR_NOT_NOTIFYING,
    LP_ERR_ALREADY_AUTHORIZER,
    LP_ERR_NOT_AUTHORIZER,
    LP_ERR_UNKNOWN_REQUEST,
    LP_ERR_ALREADY_ANSWERED,
    LP_ERR_SLOW_CONSUMER,     /* closes the session */
    LP_ERR_SHUTTING_DOWN,     /* closes the session */
    LP_ERR_TOO_MANY_SESSIONS, /* closes the session */
    LP_ERR_PERM,              /* the access rules refuse it */
};

/* "bad-name" etc. */
const char *lp_error_code(enum lp_error e);

/* Longest app name (NAME): it is shown in STATS and logs, and grants nothing. */
#define LP_MAX_APP_NAME 64

/* Whether s[0..n) is strict UTF-8 (no overlongs, no surrogates), as every
 * name must be. */
bool lp_utf8_valid(const unsigned char *s, size_t n);

/* Decode a name token into dst (room for toklen + 1 bytes, NUL-terminated);
 * -1 with a reason in *why when it is not a valid token. */
int lp_decode_name(const char *tok, size_t toklen, char *dst, uint32_t *outlen,
    const char **why);

/* Limits a parsed command must respect. */
struct lp_limits {
    uint32_t max_name;    /* bytes in a decoded name (the bus string limit) */
    uint32_t max_payload; /* sum of packet lengths */
    uint32_t max_packets;
    uint32_t max_entitlements;
    uint32_t bus_protocol; /* the bus's; PUB/SEND "type=" needs 6; 0: any */
};

/* A decoded (unescaped) name; ptr is NUL-terminated, owned by the cmd. */
struct lp_name {
    const char *ptr;
    uint32_t len;
};

/*
 * A parsed command. Names, entitlements and packet specs point into the
 * cmd's own storage, reused across lp_parse_command calls (no per-command
 * allocation in steady state); free it with lp_cmd_free.
 */
/* What STATS shows: the counters, or one line per session, or the link. */
enum lp_stats_view {
    LP_STATS_ALL,
    LP_STATS_SESSIONS,
    LP_STATS_LINK,
};

struct lp_cmd {
    enum lp_verb verb;
    struct lp_name feed;
    struct lp_name topic;
    uint8_t client_id[WIRE_GUID_LEN]; /* SEND, AUTHORIZE (wire order) */
    bool is_image;                    /* PUB, SEND */
    struct lp_name content_type;      /* PUB, SEND: "type=" token, "" if none */
    bool required;                    /* AUTHORIZE */
    bool on;                          /* VERBOSE */
    struct wire_ints entitlements;    /* AUTHORIZE */
    struct wire_packet
        *packets; /* PUB, SEND: lengths + entitlements; data NULL until filled */
    uint32_t n_packets;
    uint64_t payload_len;          /* sum of packet lengths */
    struct lp_name token;          /* PING's optional token (raw, not unescaped) */
    struct lp_name app;            /* NAME: the name an app gives itself */
    enum lp_stats_view stats_view; /* STATS */

    void *store;
    size_t store_cap;
};

void lp_cmd_init(struct lp_cmd *cmd);
void lp_cmd_free(struct lp_cmd *cmd);

/* Whether a line beginning with these n bytes (a LINE_TOO_LONG frame's
 * head) is a command followed by a payload block (PUB, SEND). */
bool lp_head_has_payload(const char *head, size_t n);

/*
 * Parse one command line (without its "\n"; a trailing "\r" is allowed).
 * Returns 0, or -1 with *err set and a human message in msg. On
 * LP_ERR_PAYLOAD_TOO_LARGE / LP_ERR_TOO_MANY_PACKETS, cmd->payload_len is
 * still set when it could be computed, so the caller can skip the payload
 * and stay in sync.
 *
 * In fact on ANY refusal of a PUB/SEND line whose packet LENs could all be
 * read (a bad name, client id, keyword, entitlement list, or a limit),
 * cmd->n_packets is the number of packet specs and cmd->payload_len their
 * sum: n_packets > 0 means a payload block follows (payload_len bytes, then
 * "\n" or "\r\n") and should be skipped. Otherwise both are 0. cmd->verb is
 * set as soon as the verb is known; cmd->packets is NULL after a refusal.
 * An empty (or blank) line is refused with LP_ERR_SYNTAX "empty line".
 */
int lp_parse_command(const char *line, size_t len, const struct lp_limits *lim,
    struct lp_cmd *cmd, enum lp_error *err, char *msg, size_t msglen);

/* Point cmd's packets' data at their bytes in payload (payload_len bytes). */
void lp_cmd_attach_payload(struct lp_cmd *cmd, const uint8_t *payload);

/* Append a name as a token (escaped; "" for empty). */
int lp_put_name(struct evbuffer *out, const char *ptr, size_t len);

/*
 * Append the DATA event for a ForwardedMulticastData / ForwardedUnicastData
 * (line + payload block), with "type=<content type>" when m carries a
 * non-empty one (bus protocol 6). Formatted once per bus message and shared
 * by every receiving session.
 */
int lp_format_data(struct evbuffer *out, const struct wire_msg *m);
/* The start of every DATA line of a topic, "DATA <feed> <topic>" with the
 * names escaped, into dst; its length (dst NULL: only the length). The
 * router keeps it with the topic, so an event copies it instead of
 * escaping the two names again. */
size_t lp_data_prefix(char *dst, const struct wire_str *feed, const struct wire_str *topic);
/* lp_format_data with the topic's prefix (NULL: made here), flat at d,
 * where cap bytes are free: 0 and its length in *len; 1 when it may not
 * fit, nothing written, and *len the bytes it may take; -1 if m is not
 * data. The router formats a batch of events this way, one after another
 * in one block, with no libevent call per event. */
int lp_format_data_flat(char *d, size_t cap, const struct wire_msg *m, const char *prefix,
    size_t prefix_len, size_t *len);

/* NOTIFICATION for a ForwardedSubscriptionRequest. */
int lp_format_notification(struct evbuffer *out, const struct wire_msg *m);

/* AUTHREQ for an AuthorizationRequest. */
int lp_format_authreq(struct evbuffer *out, const struct wire_msg *m);

/* "BUS <state> [reason]"; state is "up", "unconfirmed" or "down". */
int lp_format_bus(struct evbuffer *out, const char *state, const char *reason);

/* "REVOKED <verb> <feed> [<topic>] <reason>": a reload's access rules ended
 * a subscription (topic non-NULL), a notifier or an authorizer role. */
int lp_format_revoked(struct evbuffer *out, const char *verb, const char *feed,
    size_t feed_len, const char *topic, size_t topic_len, const char *reason);

int lp_format_ok(struct evbuffer *out);
int lp_format_err(struct evbuffer *out, enum lp_error e, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* What one session may hold, for the greeting. */
struct lp_session_limits {
    uint32_t max_subscriptions;
    uint32_t max_notifications;
    uint32_t max_authorizers;
};

/* The greeting line (bus_protocol=lim->bus_protocol before bus=). */
int lp_format_hello(struct evbuffer *out, const char *version, const struct lp_limits *lim,
    uint32_t max_line, const struct lp_session_limits *sl, uint64_t max_output,
    const char *bus_state);

/* "PONG [token]" (the token as the client sent it). */
int lp_format_pong(struct evbuffer *out, const char *token, size_t len);

/* STATS lines: "STAT name value", a text value with control bytes as '?';
 * then "END". */
int lp_format_stat_u64(struct evbuffer *out, const char *name, uint64_t v);
int lp_format_stat_text(struct evbuffer *out, const char *name, const char *value);
int lp_format_end(struct evbuffer *out);

/* The upper-case name of a verb ("SUB"), NULL if unknown. */
const char *lp_verb_name(enum lp_verb verb);

/*
 * Commands, client side (the busgate CLI, a C client library). Names are
 * escaped here; entitlement lists (ents, NULL for none) are passed as text
 * ("1,-2") the caller has checked.
 */
/* "VERB feed topic" for SUB/UNSUB; "VERB feed" (topic NULL) for NOTIFY,
 * UNNOTIFY, AUTHORIZER, UNAUTHORIZER. */
int lp_format_cmd_names(struct evbuffer *out, enum lp_verb verb, const char *feed,
    size_t feed_len, const char *topic, size_t topic_len);
/* "AUTHORIZE id feed topic required|not-required [ents]" */
int lp_format_cmd_authorize(struct evbuffer *out, const uint8_t client_id[WIRE_GUID_LEN],
    const char *feed, size_t feed_len, const char *topic, size_t topic_len, bool required,
    const char *ents);
/* A whole PUB (client_id NULL) or SEND of n_packets packets, each with its
 * entitlements: the line (with "type=<ctype>" unless ctype is NULL), the
 * payload block and its newline. LP_FORMAT_TOO_LONG, and nothing added,
 * when the line would be longer than max_line: the daemon would discard
 * the line and read its payload as commands. */
#define LP_FORMAT_TOO_LONG (-2)
int lp_format_cmd_message(struct evbuffer *out, const uint8_t *client_id, const char *feed,
    size_t feed_len, const char *topic, size_t topic_len, bool image, const char *ctype,
    size_t ctype_len, const struct wire_packet *packets, uint32_t n_packets,
    uint32_t max_line);
/* The last PUB's line up to its flag ("PUB feed topic"), kept with the
 * names it came from (feed, then topic, as given): a stream's next PUB to
 * the same topic copies it rather than check and copy its names again.
 * Kept while feed and topic together fit names. */
struct lp_cmd_head {
    uint32_t len; /* line's bytes; 0: none kept */
    uint32_t feed_len, topic_len;
    char names[64];
    char line[8 + 3 * 64]; /* "PUB", two spaces, "%XX" per name byte at worst */
};
/*
 * A reservation at an output's end that messages are formatted into one
 * after another (a pipelined client), committed to the output only when
 * it is settled: no libevent call per message. While it is held nothing
 * else may add to or drain the output (libevent's rule for a
 * reservation): settle it first. Zeroed: none held.
 */
struct lp_out_tail {
    char *base;              /* the reservation; NULL: none */
    char *p;                 /* where the next message goes: base..p awaits the commit */
    size_t room;             /* bytes free at p */
    size_t len;              /* the output's length with base..p */
    size_t added;            /* the last message's bytes */
    struct lp_cmd_head head; /* outlives the reservations */
};
/* Commit what tail holds to out and let the reservation go: -1 when out
 * was changed under it (nothing is then committed). */
int lp_out_tail_settle(struct evbuffer *out, struct lp_out_tail *tail);
static inline bool
lp_out_tail_pending(const struct lp_out_tail *tail)
{
    return tail->p != tail->base;
}
/* A PUB (client_id NULL) or SEND, as lp_format_cmd_message takes it. */
struct lp_message {
    const uint8_t *client_id;
    const char *feed, *topic;
    size_t feed_len, topic_len;
    bool image;
    const char *ctype; /* NULL: none */
    size_t ctype_len;
    const struct wire_packet *packets;
    uint32_t n_packets;
};
/* lp_format_cmd_message into tail (NULL: committed at once), which it
 * then holds; when tail lacks room, it is settled and a new one taken. */
int lp_format_cmd_message_at(struct evbuffer *out, struct lp_out_tail *tail,
    const struct lp_message *m, uint32_t max_line);
/* Whether s is one word that is sent as is: non-empty, nothing a name
 * would escape (no separator, control byte, '%' or '"'). */
bool lp_is_word(const char *s);
/* "VERB [arg]" for PING (token), STATS, VERBOSE (on/off), QUIT; -1 also
 * when arg is not lp_is_word (it would be two tokens, or two commands). */
int lp_format_cmd(struct evbuffer *out, enum lp_verb verb, const char *arg);

/*
 * Client side (the busgate CLI, benchmarks, tests): a parsed event line.
 * For DATA, packets hold lengths and entitlements; the payload block follows
 * (payload_len bytes, then the newline).
 */
enum lp_event_kind {
    LP_EV_HELLO,
    LP_EV_OK,
    LP_EV_ERR,
    LP_EV_DATA,
    LP_EV_NOTIFICATION,
    LP_EV_AUTHREQ,
    LP_EV_BUS,
    LP_EV_PONG,
    LP_EV_STAT,
    LP_EV_END,
    LP_EV_REVOKED,
};

/*
 * The last DATA line's head (its bytes up to the packet specs) and what it
 * parsed to: a reader's DATA lines nearly all repeat the one before but for
 * their lengths (one topic, one publisher), and the same head bytes parse
 * to the same names. Names are NUL-terminated copies in bytes, after the
 * head's own bytes. len is 0 when there is none.
 */
struct lp_data_head {
    char *bytes;
    size_t len, cap;
    uint32_t longest; /* its longest name: checked against max_name */
    struct lp_name feed, topic, user, host, content_type;
    bool is_image, is_unicast;
};

struct lp_event {
    enum lp_event_kind kind;
    struct lp_name feed, topic, user, host;
    uint8_t client_id[WIRE_GUID_LEN];
    bool is_image;
    bool is_unicast;
    struct lp_name content_type; /* DATA: "type=" token, "" if none */
    bool is_add;
    bool from_head; /* DATA: the names are the kept head's (terminated) */
    struct wire_packet *packets;
    uint32_t n_packets;
    uint64_t payload_len;
    const char *rest; /* HELLO/ERR/BUS/STAT/PONG/REVOKED: the text after the verb */
    size_t rest_len;

    /* Kept from event to event (each parse clears the fields above). */
    void *store;
    size_t store_cap;
    struct lp_data_head head;
};

void lp_event_init(struct lp_event *ev);
void lp_event_free(struct lp_event *ev);

/*
 * Parse one event line (without "\n"). Returns 0 or -1 (malformed). lim may
 * be NULL (no limits). rest is a NUL-terminated copy owned by ev, "" when
 * there is no text (+OK, END, PONG without token). A DATA line refused for
 * a limit still sets n_packets / payload_len when its LENs could be read.
 * What ev points to stays valid until the next parse into it or its free.
 */
int lp_parse_event(const char *line, size_t len, const struct lp_limits *lim,
    struct lp_event *ev);

/*
 * The same without copying names: a name with no %-escape (nearly all)
 * points into line and is not NUL-terminated; only escaped names are
 * decoded into ev (and a DATA line whose head repeats the last one's
 * takes its names from ev's copy of that head). For a reader that keeps
 * the line (and, for DATA, its payload) in place while it uses the event:
 * a subscriber's hot path.
 * lp_event_terminate then NUL-terminates those names in place, writing
 * over the byte after each (a separator or the line's newline: the caller
 * must own line[0..len] writable and be done reading the line).
 */
int lp_parse_event_ref(const char *line, size_t len, const struct lp_limits *lim,
    struct lp_event *ev);
void lp_event_terminate(struct lp_event *ev);

/*
 * The framer (lineproto-frame.c): splits a byte stream into lines and
 * byte-counted payload blocks, in both directions (commands in the daemon,
 * events in a client). Pure: the caller owns the evbuffer and the I/O,
 * parses each line itself, and after a line that announces a payload calls
 * lp_framer_payload to have it delivered or skipped. Items point into the
 * evbuffer and stay valid until lp_framer_consume or the next
 * lp_framer_next. The bytes of delivered items stay in the evbuffer until
 * lp_framer_consume, or until lp_framer_next needs more input (it then
 * drains them before returning LP_FRAME_MORE): a batch costs one drain.
 * Within a batch (until LP_FRAME_MORE or lp_framer_consume) the caller
 * may add to the evbuffer, then says so with lp_framer_added (an addition
 * may move the bytes the framer is reading), but not drain it or reserve
 * space in it.
 */
enum lp_framer_state {
    LP_FRAMER_LINE,         /* waiting for a line */
    LP_FRAMER_PAYLOAD,      /* waiting for a whole payload block and its newline */
    LP_FRAMER_SKIP_LINE,    /* discarding up to the next newline */
    LP_FRAMER_SKIP_PAYLOAD, /* discarding a refused payload, then its newline */
};

struct lp_framer {
    enum lp_framer_state state;
    uint32_t max_line; /* bytes in a line, without "\r\n" */
    uint64_t need;     /* PAYLOAD/SKIP_PAYLOAD: payload bytes still due */
    size_t pending;    /* bytes of the items delivered, not yet drained */
    size_t scanned;    /* LINE: bytes after those known to hold no newline */
    uint64_t bytes;    /* every byte drained so far */
    /* The buffer's first chain as last peeked, while the buffer is as
     * long as it was then (chain_total) and the framer has not drained,
     * pulled up or ended a batch since (chain_len 0): a batch of items
     * costs one peek. */
    const unsigned char *chain;
    size_t chain_len;
    size_t chain_total;
};

enum lp_frame_kind {
    LP_FRAME_MORE,           /* no complete item: feed more bytes */
    LP_FRAME_LINE,           /* data/len: a line without "\n" (may end in "\r") */
    LP_FRAME_PAYLOAD,        /* data/len: the payload block, terminator removed */
    LP_FRAME_LINE_TOO_LONG,  /* a line over max_line, discarded (skipping: up to
                             * the next newline, not yet seen); data/len: its
                             * first LP_FRAME_HEAD bytes, for its verb */
    LP_FRAME_BAD_TERMINATOR, /* a payload not followed by a newline; discarded up
                             * to the next newline (skipping: it was a skipped
                             * payload; len: the payload bytes discarded) */
};

#define LP_FRAME_HEAD 32

struct lp_frame {
    enum lp_frame_kind kind;
    const void *data;
    size_t len;
    bool skipping;
};

void lp_framer_init(struct lp_framer *f, uint32_t max_line);

/* Within a batch, after adding to in: the framer looks at in afresh. */
static inline void
lp_framer_added(struct lp_framer *f)
{
    f->chain_len = 0;
}

/*
 * The newline ending the next line, in the chain last peeked, within the
 * max_line + 2 bytes a line may take, searched from f->scanned on; NULL
 * when that part of the window holds none. *end: the window's bytes in
 * the chain (those before it are known to hold no newline then).
 */
static inline const char *
lp_framer_chain_nl(const struct lp_framer *f, size_t *end)
{
    size_t limit = (size_t)f->max_line + 2, n = 0;

    if (f->chain_len > f->pending)
        n = f->chain_len - f->pending < limit ? f->chain_len - f->pending : limit;
    *end = n;
    if (n <= f->scanned)
        return NULL;
    return memchr((const char *)f->chain + f->pending + f->scanned, '\n', n - f->scanned);
}

enum lp_frame_kind
lp_framer_next_slow(struct lp_framer *f, struct evbuffer *in, struct lp_frame *fr);

/*
 * The next item in in (draining the previous one first). Inline: a line
 * within max_line in the chain the batch is reading (nearly every item)
 * is one memchr and a few stores here, without a call; anything else,
 * or the end of that chain, is lp_framer_next_slow's.
 */
static inline enum lp_frame_kind
lp_framer_next(struct lp_framer *f, struct evbuffer *in, struct lp_frame *fr)
{
    const char *nl = NULL, *base;
    size_t end = 0, n;

    if (f->state == LP_FRAMER_LINE && (nl = lp_framer_chain_nl(f, &end)) != NULL) {
        base = (const char *)f->chain + f->pending;
        n = (size_t)(nl - base);
        if (n <= f->max_line) {
            *fr = (struct lp_frame){ .kind = LP_FRAME_LINE, .data = base, .len = n };
            f->pending += n + 1;
            f->bytes += n + 1;
            f->scanned = 0;
            return LP_FRAME_LINE;
        }
    }
    /* Searched: the slow half goes on from there (a whole window without
     * a newline is its to judge: a line too long). */
    if (nl == NULL && end > f->scanned && end < (size_t)f->max_line + 2)
        f->scanned = end;
    return lp_framer_next_slow(f, in, fr);
}
/* Drain the items delivered so far (their data pointers are then invalid). */
void lp_framer_consume(struct lp_framer *f, struct evbuffer *in);
/* After a LINE: a payload block of len bytes and a newline follow; deliver
 * it as a PAYLOAD item, or skip it. */
void lp_framer_payload(struct lp_framer *f, uint64_t len, bool deliver);
/* Right after a LINE fr (nothing added to in since): the line and the n
 * bytes behind it, contiguous (one pullup where they span chains, after
 * draining the items delivered before the line), or NULL when not all are
 * buffered. The pullup frees where the line was: fr->data then points at
 * its new place. Read in place, the n bytes are then taken with
 * lp_framer_extend. Inline where they lie in the chain the line was
 * found in (reads are large: nearly always), a call otherwise. */
const char *lp_framer_line_pull(struct lp_framer *f, struct evbuffer *in,
    struct lp_frame *fr, size_t n);
static inline const char *
lp_framer_line_with(struct lp_framer *f, struct evbuffer *in, struct lp_frame *fr, size_t n)
{
    if (f->chain_len >= f->pending + n)
        return (const char *)f->chain + f->pending - (fr->len + 1);
    return lp_framer_line_pull(f, in, fr, n);
}
/* The item just returned also covers the next n bytes (a payload the
 * caller found whole behind its line and read in place): they are drained
 * with it. */
static inline void
lp_framer_extend(struct lp_framer *f, size_t n)
{
    f->pending += n;
    f->bytes += n;
}

#endif /* BUSGATE_LINEPROTO_H */
