/*
 * The jetblack-messagebus wire codec, bus protocols 3, 4 (= 5) and 6:
 * message structs, incremental decoding from an evbuffer with limits,
 * encoding into an evbuffer. No I/O. See BUS-PROTOCOL.md for the format.
 *
 * The protocol version is a parameter of the one schema: 4 changes only
 * the login (one connection string), 6 puts a content-type string where
 * 3 and 4 have the image byte of the four data messages.
 */
#ifndef BUSGATE_WIRE_H
#define BUSGATE_WIRE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

struct evbuffer;

#define WIRE_PROTOCOL_VERSION 3 /* the default bus protocol */

/* Bus protocol versions. 5 is byte-identical to 4 on the wire. */
#define WIRE_V3 3
#define WIRE_V4 4
#define WIRE_V5 5
#define WIRE_V6 6

/* True for 3, 4, 5 and 6. */
bool wire_version_valid(int version);

enum wire_type {
    WIRE_MULTICAST_DATA = 1,         /* client -> bus: publish */
    WIRE_UNICAST_DATA = 2,           /* client -> bus: send to one client */
    WIRE_FORWARDED_SUBSCRIPTION = 3, /* bus -> notifier */
    WIRE_NOTIFICATION_REQUEST = 4,   /* client -> bus */
    WIRE_SUBSCRIPTION_REQUEST = 5,   /* client -> bus */
    WIRE_AUTHORIZATION_REQUEST = 6,  /* bus -> authorizer */
    WIRE_AUTHORIZATION_RESPONSE = 7, /* authorizer -> bus */
    WIRE_FORWARDED_MULTICAST = 8,    /* bus -> subscriber */
    WIRE_FORWARDED_UNICAST = 9,      /* bus -> subscriber */
};

#define WIRE_TYPE_MIN 1
#define WIRE_TYPE_MAX 9
#define WIRE_GUID_LEN 16

/* Limits applied to everything decoded; a violation is a protocol error. */
struct wire_limits {
    uint32_t max_string;       /* bytes in one string */
    uint32_t max_payload;      /* bytes in one packet's data */
    uint32_t max_packets;      /* packets in one message */
    uint32_t max_entitlements; /* ints in one int set */
    uint32_t max_message;      /* bytes in one whole message */
};

/* Defaults used when the config says nothing. */
#define WIRE_DEFAULT_MAX_STRING 4096u
#define WIRE_DEFAULT_MAX_PAYLOAD (1u << 20)
#define WIRE_DEFAULT_MAX_PACKETS 1024u
#define WIRE_DEFAULT_MAX_ENTITLEMENTS 1024u
#define WIRE_DEFAULT_MAX_MESSAGE (16u << 20)

void wire_limits_default(struct wire_limits *lim);

/*
 * A string as bytes. len 0 is null or empty (the same on the wire). It
 * may contain NUL bytes before len. Decoded by wire_decode, ptr is
 * NUL-terminated (ptr[len] == 0) in the message's storage; by wire_read,
 * it points into the input buffer and is not terminated.
 */
struct wire_str {
    const char *ptr;
    uint32_t len;
};

/* The 8 and 4 bytes at p, as integers (one load each). */
static inline uint64_t
wire_load64(const char *p)
{
    uint64_t w;

    memcpy(&w, p, sizeof w);
    return w;
}

static inline uint32_t
wire_load32(const char *p)
{
    uint32_t w;

    memcpy(&w, p, sizeof w);
    return w;
}

/* len bytes from src to dst. Names are a few bytes: up to 16 go by two
 * overlapping words (or three bytes), which costs less than the call a
 * memcpy of a length the compiler does not know becomes. */
static inline void
wire_copy_short(void *dst, const void *src, size_t len)
{
    char *d = dst;
    const char *s = src;

    if (len > 16) {
        memcpy(d, s, len);
    } else if (len >= 8) {
        uint64_t a = wire_load64(s), b = wire_load64(s + len - 8);

        memcpy(d, &a, 8);
        memcpy(d + len - 8, &b, 8);
    } else if (len >= 4) {
        uint32_t a = wire_load32(s), b = wire_load32(s + len - 4);

        memcpy(d, &a, 4);
        memcpy(d + len - 4, &b, 4);
    } else if (len > 0) {
        d[0] = s[0];
        d[len / 2] = s[len / 2];
        d[len - 1] = s[len - 1];
    }
}

/* Whether the n bytes at a and b are the same. Names are short, and each
 * router lookup compares two: up to 16 bytes, two loads of each that
 * overlap (never past n) instead of a call to memcmp. */
static inline bool
wire_bytes_eq(const void *a, const void *b, size_t n)
{
    const char *x = a, *y = b;

    if (n >= 8 && n <= 16)
        return wire_load64(x) == wire_load64(y) &&
            wire_load64(x + n - 8) == wire_load64(y + n - 8);
    if (n >= 4 && n < 8)
        return wire_load32(x) == wire_load32(y) &&
            wire_load32(x + n - 4) == wire_load32(y + n - 4);
    if (n > 16)
        return memcmp(a, b, n) == 0;
    for (size_t i = 0; i < n; i++) /* 0 to 3 bytes */
        if (x[i] != y[i])
            return false;
    return true;
}

/* Whether a and b hold the same bytes. */
static inline bool
wire_str_eq(const struct wire_str *a, const struct wire_str *b)
{
    return a->len == b->len && wire_bytes_eq(a->ptr, b->ptr, a->len);
}

/* An int set; n == 0 is null. */
struct wire_ints {
    const int32_t *v;
    uint32_t n;
};

/* A data packet; len == 0 is null data. */
struct wire_packet {
    struct wire_ints entitlements;
    const uint8_t *data;
    uint32_t len;
};

/*
 * One bus message at one protocol version. Each type uses a subset of the
 * fields, in the wire order given by BUS-PROTOCOL.md (the "image" slot is
 * is_image below version 6 and content_type from 6 on):
 *   MULTICAST_DATA          feed, topic, is_image, packets
 *   UNICAST_DATA            client_id, feed, topic, is_image, packets
 *   FORWARDED_SUBSCRIPTION  user, host, client_id, feed, topic, is_add
 *   NOTIFICATION_REQUEST    feed, is_add
 *   SUBSCRIPTION_REQUEST    feed, topic, is_add
 *   AUTHORIZATION_REQUEST   client_id, host, user, feed, topic
 *   AUTHORIZATION_RESPONSE  client_id, feed, topic, auth_required, entitlements
 *   FORWARDED_MULTICAST     user, host, feed, topic, is_image, packets
 *   FORWARDED_UNICAST       user, host, client_id, feed, topic, is_image, packets
 * Fields a type does not use are ignored by wire_encode.
 *
 * version selects the schema for both directions: wire_encode writes the
 * message at msg->version, wire_decode reads at msg->version (set it once
 * after wire_msg_init, which sets WIRE_PROTOCOL_VERSION; decoding keeps
 * it). 0 is read as 3, so a zeroed message is a version 3 one.
 */
struct wire_msg {
    enum wire_type type;
    int version;
    struct wire_str user;
    struct wire_str host;
    struct wire_str feed;
    struct wire_str topic;
    uint8_t client_id[WIRE_GUID_LEN]; /* wire (.NET) byte order */
    bool is_image;                    /* image slot below 6 */
    struct wire_str content_type;     /* image slot from 6 on */
    bool is_add;
    bool auth_required;
    struct wire_ints entitlements;     /* AUTHORIZATION_RESPONSE only */
    const struct wire_packet *packets; /* n_packets == 0 is null */
    uint32_t n_packets;

    /* Decoder-owned storage, reused across wire_decode calls on the same
     * struct so the hot path does not allocate per message. */
    void *store;
    size_t store_cap;
};

enum wire_result {
    WIRE_ERROR = -1,    /* protocol error; *cause says why; nothing consumed */
    WIRE_NEED_MORE = 0, /* incomplete message; nothing consumed */
    WIRE_DECODED = 1,   /* one message decoded; exactly its bytes consumed */
};

/* Initialise a message (all fields empty, no storage). */
void wire_msg_init(struct wire_msg *msg);

/* Release the decoder-owned storage of a message. */
void wire_msg_free(struct wire_msg *msg);

/*
 * Decode one message from the front of in. Limits are checked before any
 * allocation. On WIRE_DECODED the message's pointers are valid until the
 * next wire_decode on, or wire_msg_free of, the same msg; otherwise msg
 * is left empty (no half-decoded fields). On WIRE_ERROR *cause (if cause
 * is not NULL) points to text owned by the codec, valid until the next
 * error reported by this module in the same thread. A message lying in
 * the buffer's first chain is read in place; one that spans chains is
 * pulled up into one first.
 */
enum wire_result wire_decode(struct evbuffer *in, const struct wire_limits *lim,
    struct wire_msg *msg, const char **cause);

/*
 * A read position in a contiguous window on the front of an evbuffer
 * (wire_window_scan): the walk is pointer arithmetic, and a window that
 * ends too soon is widened, so a scan never sees a chain boundary.
 */
struct wire_cursor {
    const uint8_t *p; /* the window: len bytes from the message start */
    uint64_t len;
    uint64_t off;   /* bytes walked from the message start */
    uint64_t avail; /* bytes in the buffer from the window on */
    uint64_t max;   /* the whole-message limit */
    uint64_t stop;  /* the window's end or max, whichever is first */
    uint64_t need;  /* after need-more: how far the window must reach */
    uint64_t taken; /* bytes before the window, decoded and not drained yet
                       (struct wire_reader); drained before a widening */
};

/*
 * Decoding message after message from the front of one buffer, draining
 * what they took once (wire_reader_end) rather than per message: the
 * next message is read where the last one ended in the same contiguous
 * window. Nothing may change in between: no other reads, no appends.
 * wire_decode is begin, one read, end.
 *
 * wire_read copies nothing it need not: a message's strings and packet
 * data point into the buffer (its entitlements and packet array are in
 * its storage), valid until the next wire_read or wire_reader_end. A
 * message kept longer must be copied.
 */
struct wire_reader {
    struct evbuffer *in;
    struct wire_cursor c; /* the window from where the next message starts */
    uint64_t size;        /* the last message's wire size */
};
void wire_reader_begin(struct wire_reader *rd, struct evbuffer *in);
/* Like wire_decode, at the reader's position. */
enum wire_result wire_read(struct wire_reader *rd, const struct wire_limits *lim,
    struct wire_msg *msg, const char **cause);
/* Drain what was decoded; 0, or -1 if the drain failed. */
int wire_reader_end(struct wire_reader *rd);

/* Append msg in wire format to out. Returns 0, or -1 if out of memory or
 * the message cannot be represented (a length over INT32_MAX). */
int wire_encode(struct evbuffer *out, const struct wire_msg *msg);

/* Bytes wire_encode would append for msg (0 if it would refuse it). */
size_t wire_encoded_size(const struct wire_msg *msg);

/* Write msg in wire format at p, within end, for a caller that encodes
 * several messages into one region: the end of the message, or NULL when
 * it does not fit or cannot be represented (wire_encoded_size tells which:
 * the room it needs, or 0). One walk, where sizing first would take two. */
uint8_t *wire_encode_into(uint8_t *p, uint8_t *end, const struct wire_msg *msg);

/* Name of a message type for logs ("MulticastData"...), "unknown" if none. */
const char *wire_type_name(int type);

/*
 * The authentication payload sent right after connecting. At 3 it is the
 * method's strings; from 4 on one connection string,
 * "Username=u;Password=p" or "Token=t", then ";Impersonating=..",
 * ";ForwardedFor=.." and ";Application=.." for each one that is non-empty
 * (as the python clients 4.1.0 and 6.0.0-alpha.1 write it).
 */
enum wire_auth_method {
    WIRE_AUTH_NONE,  /* nothing is sent */
    WIRE_AUTH_BASIC, /* username, password, impersonating, forwarded_for */
    WIRE_AUTH_TOKEN, /* token, impersonating, forwarded_for */
};

/* NULL strings are sent as null (length 0). application is sent from 4
 * on only. version as in struct wire_msg (0 is 3). */
struct wire_auth {
    enum wire_auth_method method;
    int version;
    const char *username;
    const char *password;
    const char *token;
    const char *impersonating;
    const char *forwarded_for;
    const char *application;
};

/*
 * Whether auth can be sent at auth->version: from 4 on no value may hold
 * ';' (the server splits on it, with no escaping). Returns 0, or -1 with
 * *cause (codec-owned text, as for wire_decode) naming the field.
 */
int wire_auth_check(const struct wire_auth *auth, const char **cause);

/* Append the authentication payload for auth to out. Returns 0, or -1 if
 * out of memory or wire_auth_check refuses it (nothing is appended). */
int wire_encode_auth(struct evbuffer *out, const struct wire_auth *auth);

/*
 * Decode an authentication payload of the given method at the given
 * version (used by tests and tools; the gateway never receives one). From
 * 4 on the connection string is parsed as the distributor does (split on
 * ';', then on the first '='; an empty part, a part without '=', an
 * unknown or repeated key, or a missing required key is an error).
 * Strings are returned as malloc'd NUL-terminated copies (NULL for null
 * or absent) that the caller frees with wire_auth_free. Same result
 * convention as wire_decode. wire_decode_auth is the version 3 decoder.
 */
enum wire_result
wire_decode_auth_version(struct evbuffer *in, int version, enum wire_auth_method method,
    const struct wire_limits *lim, struct wire_auth *auth, const char **cause);
enum wire_result wire_decode_auth(struct evbuffer *in, enum wire_auth_method method,
    const struct wire_limits *lim, struct wire_auth *auth, const char **cause);
void wire_auth_free(struct wire_auth *auth);

#endif /* BUSGATE_WIRE_H */
