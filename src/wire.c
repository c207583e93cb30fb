/*
 * The jetblack-messagebus codec, bus protocols 3 to 6 (BUS-PROTOCOL.md).
 *
 * Decoding is one pass over the message, in code made for its type from
 * the type's field list (walk_body), where it lies in the evbuffer's
 * first chain (a contiguous window; a message that spans chains is pulled
 * up into one first), consuming nothing until it is done. Every length and
 * count is checked against the limits as soon as it is read (so nothing
 * is allocated from an unchecked length, and an oversized message is
 * refused before it has all arrived), and the message is built in the
 * same pass into msg->store, which is reused across calls. Only a whole
 * message is consumed. Encoding reserves the exact size once and writes
 * straight into the evbuffer.
 */
#include "wire-int.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/util.h>

#include "util.h"

/* The fields a message can carry; each type is a list of them in wire order. */
enum wire_field {
    WF_END = 0,
    WF_USER,
    WF_HOST,
    WF_FEED,
    WF_TOPIC,
    WF_CLIENT_ID,
    WF_IMAGE, /* the slot: is_image below 6, content_type from 6 */
    WF_IS_IMAGE,
    WF_CONTENT_TYPE,
    WF_IS_ADD,
    WF_AUTH_REQUIRED,
    WF_ENTITLEMENTS,
    WF_PACKETS,
};

#define WIRE_MAX_FIELDS 8 /* the longest list (7) plus WF_END */

/* Each type's fields in wire order, as lists a macro F is applied to: the
 * one statement of the layout, from which the schema table (the sizer's
 * walk), the encoder's code for each type (put_msg) and the decoder's
 * (walk_body) are made, the last two straight-line, with no walk. */
#define WIRE_MULTICAST_DATA_FIELDS(F) F(FEED) F(TOPIC) F(IMAGE) F(PACKETS)
#define WIRE_UNICAST_DATA_FIELDS(F) F(CLIENT_ID) F(FEED) F(TOPIC) F(IMAGE) F(PACKETS)
#define WIRE_FORWARDED_SUBSCRIPTION_FIELDS(F)                                              \
    F(USER) F(HOST) F(CLIENT_ID) F(FEED) F(TOPIC) F(IS_ADD)
#define WIRE_NOTIFICATION_REQUEST_FIELDS(F) F(FEED) F(IS_ADD)
#define WIRE_SUBSCRIPTION_REQUEST_FIELDS(F) F(FEED) F(TOPIC) F(IS_ADD)
#define WIRE_AUTHORIZATION_REQUEST_FIELDS(F) F(CLIENT_ID) F(HOST) F(USER) F(FEED) F(TOPIC)
#define WIRE_AUTHORIZATION_RESPONSE_FIELDS(F)                                              \
    F(CLIENT_ID) F(FEED) F(TOPIC) F(AUTH_REQUIRED) F(ENTITLEMENTS)
#define WIRE_FORWARDED_MULTICAST_FIELDS(F)                                                 \
    F(USER) F(HOST) F(FEED) F(TOPIC) F(IMAGE) F(PACKETS)
#define WIRE_FORWARDED_UNICAST_FIELDS(F)                                                   \
    F(USER) F(HOST) F(CLIENT_ID) F(FEED) F(TOPIC) F(IMAGE) F(PACKETS)

/* Every type with its list, for a macro T(type, list). */
#define WIRE_TYPES(T)                                                                      \
    T(WIRE_MULTICAST_DATA, WIRE_MULTICAST_DATA_FIELDS)                                     \
    T(WIRE_UNICAST_DATA, WIRE_UNICAST_DATA_FIELDS)                                         \
    T(WIRE_FORWARDED_SUBSCRIPTION, WIRE_FORWARDED_SUBSCRIPTION_FIELDS)                     \
    T(WIRE_NOTIFICATION_REQUEST, WIRE_NOTIFICATION_REQUEST_FIELDS)                         \
    T(WIRE_SUBSCRIPTION_REQUEST, WIRE_SUBSCRIPTION_REQUEST_FIELDS)                         \
    T(WIRE_AUTHORIZATION_REQUEST, WIRE_AUTHORIZATION_REQUEST_FIELDS)                       \
    T(WIRE_AUTHORIZATION_RESPONSE, WIRE_AUTHORIZATION_RESPONSE_FIELDS)                     \
    T(WIRE_FORWARDED_MULTICAST, WIRE_FORWARDED_MULTICAST_FIELDS)                           \
    T(WIRE_FORWARDED_UNICAST, WIRE_FORWARDED_UNICAST_FIELDS)

#define SCHEMA_SLOT(f) WF_##f,
#define SCHEMA_ROW(type, fields) [type] = { fields(SCHEMA_SLOT) },

static const uint8_t wire_schema[WIRE_TYPE_MAX + 1][WIRE_MAX_FIELDS] = { WIRE_TYPES(
    SCHEMA_ROW) };

#undef SCHEMA_ROW
#undef SCHEMA_SLOT

static const char *const wire_field_names[] = {
    [WF_END] = "end",
    [WF_USER] = "user",
    [WF_HOST] = "host",
    [WF_FEED] = "feed",
    [WF_TOPIC] = "topic",
    [WF_CLIENT_ID] = "clientId",
    [WF_IMAGE] = "image",
    [WF_IS_IMAGE] = "isImage",
    [WF_CONTENT_TYPE] = "contentType",
    [WF_IS_ADD] = "isAdd",
    [WF_AUTH_REQUIRED] = "isAuthorizationRequired",
    [WF_ENTITLEMENTS] = "entitlements",
    [WF_PACKETS] = "packets",
};

static const char *const wire_type_names[WIRE_TYPE_MAX + 1] = {
    [WIRE_MULTICAST_DATA] = "MulticastData",
    [WIRE_UNICAST_DATA] = "UnicastData",
    [WIRE_FORWARDED_SUBSCRIPTION] = "ForwardedSubscriptionRequest",
    [WIRE_NOTIFICATION_REQUEST] = "NotificationRequest",
    [WIRE_SUBSCRIPTION_REQUEST] = "SubscriptionRequest",
    [WIRE_AUTHORIZATION_REQUEST] = "AuthorizationRequest",
    [WIRE_AUTHORIZATION_RESPONSE] = "AuthorizationResponse",
    [WIRE_FORWARDED_MULTICAST] = "ForwardedMulticastData",
    [WIRE_FORWARDED_UNICAST] = "ForwardedUnicastData",
};

/* What a schema slot is at this protocol version. */
static int
field_at(int version, int slot)
{
    if (slot != WF_IMAGE)
        return slot;
    return version >= WIRE_V6 ? WF_CONTENT_TYPE : WF_IS_IMAGE;
}

bool
wire_version_valid(int version)
{
    return version == WIRE_V3 || version == WIRE_V4 || version == WIRE_V5 ||
        version == WIRE_V6;
}

/* The cause of the last error; valid until the next error in this thread. */
static _Thread_local char wire_cause_buf[192];

enum wire_result
wire_fail(const char **cause, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(wire_cause_buf, sizeof wire_cause_buf, fmt, ap);
    va_end(ap);
    if (cause != NULL)
        *cause = wire_cause_buf;
    return WIRE_ERROR;
}

void
wire_limits_default(struct wire_limits *lim)
{
    lim->max_string = WIRE_DEFAULT_MAX_STRING;
    lim->max_payload = WIRE_DEFAULT_MAX_PAYLOAD;
    lim->max_packets = WIRE_DEFAULT_MAX_PACKETS;
    lim->max_entitlements = WIRE_DEFAULT_MAX_ENTITLEMENTS;
    lim->max_message = WIRE_DEFAULT_MAX_MESSAGE;
}

const char *
wire_type_name(int type)
{
    if (type < WIRE_TYPE_MIN || type > WIRE_TYPE_MAX)
        return "unknown";
    return wire_type_names[type];
}

void
wire_msg_init(struct wire_msg *msg)
{
    memset(msg, 0, sizeof *msg);
    msg->version = WIRE_PROTOCOL_VERSION;
}

void
wire_msg_free(struct wire_msg *msg)
{
    free(msg->store);
    wire_msg_init(msg);
}

/* Empty every field but keep the storage, so no stale pointer survives. */
static void
wire_msg_clear(struct wire_msg *msg)
{
    void *store = msg->store;
    size_t cap = msg->store_cap;
    int version = msg->version;

    zero_bytes(msg, sizeof *msg);
    msg->user.ptr = msg->host.ptr = msg->feed.ptr = msg->topic.ptr = "";
    msg->content_type.ptr = "";
    msg->version = version;
    msg->store = store;
    msg->store_cap = cap;
}

/* Where each string and bool field lives in struct wire_msg. */
static const unsigned short wire_field_at[] = {
    [WF_USER] = offsetof(struct wire_msg, user),
    [WF_HOST] = offsetof(struct wire_msg, host),
    [WF_FEED] = offsetof(struct wire_msg, feed),
    [WF_TOPIC] = offsetof(struct wire_msg, topic),
    [WF_CONTENT_TYPE] = offsetof(struct wire_msg, content_type),
    [WF_IS_IMAGE] = offsetof(struct wire_msg, is_image),
    [WF_IS_ADD] = offsetof(struct wire_msg, is_add),
    [WF_AUTH_REQUIRED] = offsetof(struct wire_msg, auth_required),
};

static inline const struct wire_str *
msg_cstr(const struct wire_msg *msg, int field)
{
    const char *p = (const char *)msg + wire_field_at[field];

    return (const struct wire_str *)(const void *)p;
}

/* --- big-endian helpers --- */

static uint32_t
get_be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 |
        (uint32_t)p[3];
}

/* Two's complement without relying on implementation-defined conversion. */
static int32_t
to_int32(uint32_t v)
{
    if (v <= (uint32_t)INT32_MAX)
        return (int32_t)v;
    return -(int32_t)(~v) - 1;
}

/* One byte at a time: any byte order (put_be32 is the one-store form). */
uint8_t *
wire_put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
    return p + 4;
}

uint8_t *
wire_put_bytes(uint8_t *p, const void *src, size_t len)
{
    if (len > 0)
        memcpy(p, src, len);
    return p + len;
}

/* --- encoding --- */

/* Wire size of an int set, or 0 if it cannot be written. */
static uint64_t
ints_size(const struct wire_ints *ints)
{
    if (ints->n > (uint32_t)INT32_MAX || (ints->n > 0 && ints->v == NULL))
        return 0;
    return 4 + (uint64_t)ints->n * 4;
}

/* Wire size of a packet array, or 0 if it cannot be written. */
static uint64_t
packets_size(const struct wire_packet *packets, uint32_t n)
{
    uint64_t size = 4, ints;

    if (n > (uint32_t)INT32_MAX || (n > 0 && packets == NULL))
        return 0;
    for (uint32_t i = 0; i < n; i++) {
        const struct wire_packet *pk = &packets[i];

        if ((ints = ints_size(&pk->entitlements)) == 0 || pk->len > (uint32_t)INT32_MAX ||
            (pk->len > 0 && pk->data == NULL))
            return 0;
        size += ints + 4 + pk->len;
        /* Each packet adds under 2^35, so checking here cannot wrap. */
        if (size > (uint64_t)EV_SSIZE_MAX)
            return 0;
    }
    return size;
}

/* Wire size of msg, or 0 if it cannot be written. */
static uint64_t
msg_size(const struct wire_msg *msg)
{
    uint64_t size = 1, part;

    if (msg->type < WIRE_TYPE_MIN || msg->type > WIRE_TYPE_MAX)
        return 0;
    for (const uint8_t *f = wire_schema[msg->type]; *f != WF_END; f++) {
        int field = field_at(msg->version, *f);

        switch (field) {
        case WF_USER:
        case WF_HOST:
        case WF_FEED:
        case WF_TOPIC:
        case WF_CONTENT_TYPE: {
            const struct wire_str *s = msg_cstr(msg, field);

            if (s->len > (uint32_t)INT32_MAX || (s->len > 0 && s->ptr == NULL))
                return 0;
            size += 4 + (uint64_t)s->len;
            break;
        }
        case WF_CLIENT_ID:
            size += WIRE_GUID_LEN;
            break;
        case WF_ENTITLEMENTS:
            if ((part = ints_size(&msg->entitlements)) == 0)
                return 0;
            size += part;
            break;
        case WF_PACKETS:
            if ((part = packets_size(msg->packets, msg->n_packets)) == 0)
                return 0;
            size += part;
            break;
        default:
            size += 1;
            break;
        }
    }
    return size > (uint64_t)EV_SSIZE_MAX ? 0 : size;
}

size_t
wire_encoded_size(const struct wire_msg *msg)
{
    return (size_t)msg_size(msg);
}

/* Whether n more bytes fit at p before end (n: anything a length says). */
static inline bool
room(const uint8_t *p, const uint8_t *end, uint64_t n)
{
    return n <= (uint64_t)(end - p);
}

/* v big-endian at p, as one store. */
static inline uint8_t *
put_be32(uint8_t *p, uint32_t v)
{
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    v = __builtin_bswap32(v);
#elif !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_BIG_ENDIAN__
    return wire_put_be32(p, v);
#endif
    memcpy(p, &v, 4);
    return p + 4;
}

/* n bytes from src at p (wire_copy_short: names are a few bytes). */
static inline uint8_t *
put_copy(uint8_t *p, const void *src, size_t n)
{
    wire_copy_short(p, src, n);
    return p + n;
}

/* The put_ functions write one part at p, within end: its end, or NULL
 * when it does not fit or cannot be written (as msg_size refuses). */
static inline uint8_t *
put_str(uint8_t *p, const uint8_t *end, const struct wire_str *s)
{
    if (s->len > (uint32_t)INT32_MAX || !room(p, end, 4 + (uint64_t)s->len) ||
        (s->len > 0 && s->ptr == NULL))
        return NULL;
    p = put_be32(p, s->len);
    return put_copy(p, s->ptr, s->len);
}

static inline uint8_t *
put_ints(uint8_t *p, const uint8_t *end, const struct wire_ints *ints)
{
    if (ints->n > (uint32_t)INT32_MAX || !room(p, end, 4 + (uint64_t)ints->n * 4) ||
        (ints->n > 0 && ints->v == NULL))
        return NULL;
    p = put_be32(p, ints->n);
    for (uint32_t i = 0; i < ints->n; i++)
        p = put_be32(p, (uint32_t)ints->v[i]);
    return p;
}

static inline uint8_t *
put_packets(uint8_t *p, const uint8_t *end, const struct wire_packet *packets, uint32_t n)
{
    if (n > (uint32_t)INT32_MAX || !room(p, end, 4) || (n > 0 && packets == NULL))
        return NULL;
    p = put_be32(p, n);
    for (uint32_t i = 0; i < n; i++) {
        const struct wire_packet *pk = &packets[i];

        if ((p = put_ints(p, end, &pk->entitlements)) == NULL ||
            pk->len > (uint32_t)INT32_MAX || !room(p, end, 4 + (uint64_t)pk->len) ||
            (pk->len > 0 && pk->data == NULL))
            return NULL;
        p = put_be32(p, pk->len);
        p = put_copy(p, pk->data, pk->len);
    }
    return p;
}

static inline uint8_t *
put_bool(uint8_t *p, const uint8_t *end, bool v)
{
    if (!room(p, end, 1))
        return NULL;
    *p = v ? 1 : 0;
    return p + 1;
}

/* One field of msg at p, for put_msg's code of each type: put_FEED etc.
 * The image slot's field is picked by version here. */
static inline uint8_t *
put_USER(uint8_t *p, const uint8_t *end, const struct wire_msg *msg)
{
    return put_str(p, end, &msg->user);
}

static inline uint8_t *
put_HOST(uint8_t *p, const uint8_t *end, const struct wire_msg *msg)
{
    return put_str(p, end, &msg->host);
}

static inline uint8_t *
put_FEED(uint8_t *p, const uint8_t *end, const struct wire_msg *msg)
{
    return put_str(p, end, &msg->feed);
}

static inline uint8_t *
put_TOPIC(uint8_t *p, const uint8_t *end, const struct wire_msg *msg)
{
    return put_str(p, end, &msg->topic);
}

static inline uint8_t *
put_IMAGE(uint8_t *p, const uint8_t *end, const struct wire_msg *msg)
{
    return msg->version >= WIRE_V6 ? put_str(p, end, &msg->content_type)
                                   : put_bool(p, end, msg->is_image);
}

static inline uint8_t *
put_CLIENT_ID(uint8_t *p, const uint8_t *end, const struct wire_msg *msg)
{
    return room(p, end, WIRE_GUID_LEN) ? put_copy(p, msg->client_id, WIRE_GUID_LEN) : NULL;
}

static inline uint8_t *
put_IS_ADD(uint8_t *p, const uint8_t *end, const struct wire_msg *msg)
{
    return put_bool(p, end, msg->is_add);
}

static inline uint8_t *
put_AUTH_REQUIRED(uint8_t *p, const uint8_t *end, const struct wire_msg *msg)
{
    return put_bool(p, end, msg->auth_required);
}

static inline uint8_t *
put_ENTITLEMENTS(uint8_t *p, const uint8_t *end, const struct wire_msg *msg)
{
    return put_ints(p, end, &msg->entitlements);
}

static inline uint8_t *
put_PACKETS(uint8_t *p, const uint8_t *end, const struct wire_msg *msg)
{
    return put_packets(p, end, msg->packets, msg->n_packets);
}

/* Write msg at p, within end, sizing as it goes: the type's fields in a
 * row (made from its list, as the schema is), each checked for room. */
#define PUT_FIELD(f)                                                                       \
    if ((p = put_##f(p, end, msg)) == NULL)                                                \
        return NULL;
#define PUT_TYPE(type, fields)                                                             \
    case type:                                                                             \
        fields(PUT_FIELD) return p;

static uint8_t *
put_msg(uint8_t *p, const uint8_t *end, const struct wire_msg *msg)
{
    if (msg->type < WIRE_TYPE_MIN || msg->type > WIRE_TYPE_MAX || !room(p, end, 1))
        return NULL;
    *p++ = (uint8_t)msg->type;
    switch (msg->type) {
        WIRE_TYPES(PUT_TYPE)
    }
    return NULL;
}

#undef PUT_TYPE
#undef PUT_FIELD

/* Reserve size contiguous bytes at the end of out, in one chain. */
uint8_t *
wire_reserve(struct evbuffer *out, uint64_t size, struct evbuffer_iovec *vec)
{
    if (evbuffer_reserve_space(out, (ev_ssize_t)size, vec, 1) != 1 || vec->iov_len < size)
        return NULL;
    return vec->iov_base;
}

int
wire_commit(struct evbuffer *out, struct evbuffer_iovec *vec, uint64_t size)
{
    vec->iov_len = (size_t)size;
    return evbuffer_commit_space(out, vec, 1) == 0 ? 0 : -1;
}

uint8_t *
wire_encode_into(uint8_t *p, uint8_t *end, const struct wire_msg *msg)
{
    return put_msg(p, end, msg);
}

int
wire_encode(struct evbuffer *out, const struct wire_msg *msg)
{
    struct evbuffer_iovec vec;
    uint64_t size;
    uint8_t *p;

    if ((size = msg_size(msg)) == 0 || (p = wire_reserve(out, size, &vec)) == NULL)
        return -1;
    if (put_msg(p, p + size, msg) != p + size)
        return -1; /* impossible: msg_size and put_msg disagree */
    return wire_commit(out, &vec, size);
}

/* --- decoding: a read position in a contiguous window (wire-int.h) --- */

enum wire_result
wire_claim_short(uint64_t off, uint64_t n, uint64_t max, const char **cause)
{
    if (n > max || off + n > max)
        return wire_fail(cause, "message size at least %llu over limit %llu",
            (unsigned long long)(off + n), (unsigned long long)max);
    return WIRE_NEED_MORE;
}

/* A message that spans chains is pulled up just as far as each claim
 * needs (so the chain the pullup makes ends where the message does, and
 * the next one starts in the read's own chain); past this many pullups
 * the window doubles instead, bounding the re-walks of a message with
 * many fields. */
#define WIRE_EXACT_PULLUPS 8

static void
window_set(struct wire_cursor *c, const uint8_t *p, uint64_t len)
{
    c->p = p;
    c->len = len;
    c->stop = len < c->max ? len : c->max;
}

/* The window on in's first chain (c->avail bytes long); its length. */
static uint64_t
window_front(struct wire_cursor *c, struct evbuffer *in)
{
    struct evbuffer_iovec v;

    window_set(c, NULL, 0);
    if (c->avail > 0 && evbuffer_peek(in, -1, NULL, &v, 1) >= 1)
        window_set(c, v.iov_base, v.iov_len < c->avail ? v.iov_len : c->avail);
    return c->len;
}

/* The window on the front of in. */
static void
window_open(struct wire_cursor *c, struct evbuffer *in, uint64_t max)
{
    c->avail = evbuffer_get_length(in);
    c->max = max;
    c->taken = 0;
    window_front(c, in);
}

/* Make the window cover c->need bytes (which the buffer holds). What was
 * decoded before the window is drained first, so that the pullup starts
 * at the window and copies nothing already decoded. */
static enum wire_result
window_widen(struct wire_cursor *c, struct evbuffer *in, unsigned widened,
    const char **cause)
{
    uint64_t want = c->need;
    const uint8_t *p;

    if (c->taken > 0) {
        if (evbuffer_drain(in, (size_t)c->taken) != 0)
            return wire_fail(cause, "evbuffer drain failed");
        c->taken = 0;
        if (window_front(c, in) >= want)
            return WIRE_DECODED; /* the window had ended with a chain */
    }
    if (widened >= WIRE_EXACT_PULLUPS && c->len * 2 > want)
        want = c->len * 2 < c->avail ? c->len * 2 : c->avail;
    if (want > (uint64_t)EV_SSIZE_MAX ||
        (p = evbuffer_pullup(in, (ev_ssize_t)want)) == NULL)
        return wire_fail(cause, "out of memory for a %llu-byte message",
            (unsigned long long)want);
    window_set(c, p, want);
    return WIRE_DECODED;
}

/* Run scan at the window's start, widening it as the scan needs. Inlined,
 * so that each caller's scan is a direct call. */
static inline __attribute__((always_inline)) enum wire_result
window_walk(struct wire_cursor *c, struct evbuffer *in, wire_scan_fn scan, void *arg,
    const char **cause)
{
    enum wire_result r;

    c->need = 0;
    for (unsigned widened = 0;; widened++) {
        c->off = 0;
        if ((r = scan(c, arg, cause)) != WIRE_NEED_MORE || c->need > c->avail)
            return r;
        if ((r = window_widen(c, in, widened, cause)) != WIRE_DECODED)
            return r;
    }
}

/*
 * Run scan over the front of in. It reads through the contiguous window
 * c->p[0..len): at first the buffer's first chain, where a whole message
 * normally lies (reads are large), so nothing is copied; a message that
 * spans chains is pulled up into one and scanned again.
 * On WIRE_DECODED the item is c->p[0..c->off); nothing is consumed.
 */
enum wire_result
wire_window_scan(struct evbuffer *in, uint32_t max, wire_scan_fn scan, void *arg,
    struct wire_cursor *c, const char **cause)
{
    window_open(c, in, max);
    return window_walk(c, in, scan, arg, cause);
}

static const char *const wire_count_names[] = {
    [WC_STRING] = "string length",
    [WC_PAYLOAD] = "payload length",
    [WC_ENTITLEMENTS] = "entitlement count",
    [WC_PACKETS] = "packet count",
};

enum wire_result
wire_bad_count(enum wire_count what, uint32_t raw, uint32_t limit, const char *where,
    const char *field, const char **cause)
{
    const char *name = wire_count_names[what];
    int32_t v = to_int32(raw);

    if (v < 0)
        return wire_fail(cause, "negative %s %ld (%s %s)", name, (long)v, where, field);
    return wire_fail(cause, "%s %lu over limit %lu (%s %s)", name, (unsigned long)raw,
        (unsigned long)limit, where, field);
}

/* --- decoding: one walk that validates and builds --- */

/* The walk's helpers, inlined into walk_msg (see struct wire_walk). */
#define WALK_INLINE static inline __attribute__((always_inline))

/*
 * The decoded message's storage, msg->store, filled in wire order by a
 * bump allocator. When the walk needs more than cap, it goes on measuring
 * (used) without storing, and the message is walked again once the
 * storage has grown to fit.
 */
struct wire_build {
    uint8_t *base;
    uint64_t cap;
    uint64_t used;
};

/* n bytes aligned to align (a power of two), or NULL when they do not fit. */
WALK_INLINE void *
bump(struct wire_build *b, uint64_t n, uint64_t align)
{
    uint64_t at = (b->used + align - 1) & ~(align - 1);

    b->used = at + n;
    return b->used <= b->cap ? b->base + at : NULL;
}

/*
 * One walk over a message: the cursor and the storage, as locals of
 * walk_msg that the compiler keeps in registers, which takes every helper
 * below being inlined into it (WALK_INLINE).
 */
struct wire_walk {
    struct wire_cursor c;
    struct wire_build b;
    const struct wire_limits *lim;
    struct wire_msg *msg;
};

/* A counted string (a length, then that many bytes), by reference; "" when
 * empty. */
WALK_INLINE enum wire_result
walk_str(struct wire_walk *w, int type, int field, struct wire_str *s, const char **cause)
{
    enum wire_result r;
    uint32_t n = 0;

    if ((r = wire_cursor_count(&w->c, WC_STRING, w->lim->max_string, wire_type_names[type],
             wire_field_names[field], &n, cause)) != WIRE_DECODED ||
        (r = wire_cursor_claim(&w->c, n, cause)) != WIRE_DECODED)
        return r;
    s->len = n;
    s->ptr = n > 0 ? (const char *)w->c.p + w->c.off : "";
    w->c.off += n;
    return WIRE_DECODED;
}

WALK_INLINE enum wire_result
walk_ints(struct wire_walk *w, int type, int field, struct wire_ints *ints,
    const char **cause)
{
    enum wire_result r;
    uint32_t n = 0;
    int32_t *v;

    if ((r = wire_cursor_count(&w->c, WC_ENTITLEMENTS, w->lim->max_entitlements,
             wire_type_names[type], wire_field_names[field], &n, cause)) != WIRE_DECODED ||
        (r = wire_cursor_claim(&w->c, (uint64_t)n * 4, cause)) != WIRE_DECODED)
        return r;
    ints->n = n;
    ints->v = NULL;
    if (n > 0 && (v = bump(&w->b, (uint64_t)n * 4, sizeof(int32_t))) != NULL) {
        for (uint32_t i = 0; i < n; i++)
            v[i] = to_int32(get_be32(w->c.p + w->c.off + 4 * (uint64_t)i));
        ints->v = v;
    }
    w->c.off += (uint64_t)n * 4;
    return WIRE_DECODED;
}

/* The packet array: a count (at least 8 bytes each), then per packet an
 * int set and a byte array. */
WALK_INLINE enum wire_result
walk_packets(struct wire_walk *w, int type, const char **cause)
{
    const char *what = wire_type_names[type], *field = wire_field_names[WF_PACKETS];
    struct wire_packet *pk, spare;
    enum wire_result r;
    uint32_t n = 0, len = 0;

    if ((r = wire_cursor_count(&w->c, WC_PACKETS, w->lim->max_packets, what, field, &n,
             cause)) != WIRE_DECODED ||
        (r = wire_cursor_claim(&w->c, (uint64_t)n * 8, cause)) == WIRE_ERROR)
        return r; /* need-more only stops when the packets themselves do */
    w->msg->n_packets = n;
    w->msg->packets = NULL;
    if (n == 0)
        return WIRE_DECODED;
    pk = bump(&w->b, (uint64_t)n * sizeof *pk, 8);
    w->msg->packets = pk;
    for (uint32_t i = 0; i < n; i++) {
        struct wire_packet *q = pk != NULL ? &pk[i] : &spare;

        if ((r = walk_ints(w, type, WF_PACKETS, &q->entitlements, cause)) != WIRE_DECODED ||
            (r = wire_cursor_count(&w->c, WC_PAYLOAD, w->lim->max_payload, what, field,
                 &len, cause)) != WIRE_DECODED ||
            (r = wire_cursor_claim(&w->c, len, cause)) != WIRE_DECODED)
            return r;
        q->len = len;
        q->data = len > 0 ? w->c.p + w->c.off : NULL;
        w->c.off += len;
    }
    return WIRE_DECODED;
}

/* A bool: 0 is false, any other byte true. */
WALK_INLINE enum wire_result
walk_bool(struct wire_walk *w, bool *dst, const char **cause)
{
    enum wire_result r;

    if ((r = wire_cursor_claim(&w->c, 1, cause)) != WIRE_DECODED)
        return r;
    *dst = w->c.p[w->c.off++] != 0;
    return WIRE_DECODED;
}

/* One field into msg, for walk_msg's code of each type: walk_FEED etc.
 * The image slot's field is picked by version here; the other one of the
 * slot is emptied. */
WALK_INLINE enum wire_result
walk_USER(struct wire_walk *w, int type, const char **cause)
{
    return walk_str(w, type, WF_USER, &w->msg->user, cause);
}

WALK_INLINE enum wire_result
walk_HOST(struct wire_walk *w, int type, const char **cause)
{
    return walk_str(w, type, WF_HOST, &w->msg->host, cause);
}

WALK_INLINE enum wire_result
walk_FEED(struct wire_walk *w, int type, const char **cause)
{
    return walk_str(w, type, WF_FEED, &w->msg->feed, cause);
}

WALK_INLINE enum wire_result
walk_TOPIC(struct wire_walk *w, int type, const char **cause)
{
    return walk_str(w, type, WF_TOPIC, &w->msg->topic, cause);
}

WALK_INLINE enum wire_result
walk_IMAGE(struct wire_walk *w, int type, const char **cause)
{
    struct wire_msg *msg = w->msg;

    if (field_at(msg->version, WF_IMAGE) == WF_CONTENT_TYPE) {
        msg->is_image = false;
        return walk_str(w, type, WF_CONTENT_TYPE, &msg->content_type, cause);
    }
    msg->content_type = (struct wire_str){ "", 0 };
    return walk_bool(w, &msg->is_image, cause);
}

WALK_INLINE enum wire_result
walk_CLIENT_ID(struct wire_walk *w, int type, const char **cause)
{
    enum wire_result r;

    (void)type;
    if ((r = wire_cursor_claim(&w->c, WIRE_GUID_LEN, cause)) != WIRE_DECODED)
        return r;
    memcpy(w->msg->client_id, w->c.p + w->c.off, WIRE_GUID_LEN);
    w->c.off += WIRE_GUID_LEN;
    return WIRE_DECODED;
}

WALK_INLINE enum wire_result
walk_IS_ADD(struct wire_walk *w, int type, const char **cause)
{
    (void)type;
    return walk_bool(w, &w->msg->is_add, cause);
}

WALK_INLINE enum wire_result
walk_AUTH_REQUIRED(struct wire_walk *w, int type, const char **cause)
{
    (void)type;
    return walk_bool(w, &w->msg->auth_required, cause);
}

WALK_INLINE enum wire_result
walk_ENTITLEMENTS(struct wire_walk *w, int type, const char **cause)
{
    return walk_ints(w, type, WF_ENTITLEMENTS, &w->msg->entitlements, cause);
}

WALK_INLINE enum wire_result
walk_PACKETS(struct wire_walk *w, int type, const char **cause)
{
    return walk_packets(w, type, cause);
}

/* Empty the fields of msg that a type whose list has the bits in used
 * does not carry (its own fields are all written by its walk), so that
 * nothing of an earlier message survives; used is a constant, and the
 * test of each bit is done by the compiler. */
#define FIELD_BIT(f) (1u << WF_##f) |
#define HAS(f) ((used & (1u << WF_##f)) != 0)

WALK_INLINE void
clear_unused(struct wire_msg *msg, unsigned used)
{
    static const struct wire_str empty = { "", 0 };

    if (!HAS(USER))
        msg->user = empty;
    if (!HAS(HOST))
        msg->host = empty;
    if (!HAS(FEED))
        msg->feed = empty;
    if (!HAS(TOPIC))
        msg->topic = empty;
    if (!HAS(CLIENT_ID))
        memset(msg->client_id, 0, sizeof msg->client_id);
    if (!HAS(IMAGE)) {
        msg->is_image = false;
        msg->content_type = empty;
    }
    if (!HAS(IS_ADD))
        msg->is_add = false;
    if (!HAS(AUTH_REQUIRED))
        msg->auth_required = false;
    if (!HAS(ENTITLEMENTS))
        msg->entitlements = (struct wire_ints){ NULL, 0 };
    if (!HAS(PACKETS)) {
        msg->packets = NULL;
        msg->n_packets = 0;
    }
}

#undef HAS

/* Walk a message of one type: its fields in a row, made from its list
 * (as the encoder's put_msg is), each checked as it is read. */
#define WALK_FIELD(f)                                                                      \
    if ((r = walk_##f(w, type, cause)) != WIRE_DECODED)                                    \
        return r;
#define WALK_TYPE(t, fields)                                                               \
    case t: {                                                                              \
        const int type = t;                                                                \
                                                                                           \
        clear_unused(w->msg, fields(FIELD_BIT) 0);                                         \
        w->msg->type = t;                                                                  \
        fields(WALK_FIELD) return WIRE_DECODED;                                            \
    }

WALK_INLINE enum wire_result
walk_body(struct wire_walk *w, uint8_t t, const char **cause)
{
    enum wire_result r;

    switch (t) {
        WIRE_TYPES(WALK_TYPE)
    }
    return wire_fail(cause, "unknown message type %u", (unsigned)t);
}

#undef WALK_TYPE
#undef WALK_FIELD
#undef FIELD_BIT

/* What walk_msg needs besides the cursor. */
struct wire_walk_arg {
    const struct wire_limits *lim;
    struct wire_msg *msg;
    struct wire_build b;
};

/* Walk the message at the front of the window, checking every length and
 * count as it is read, and build it in msg; c->off ends at its size.
 * Inlined into its one caller, reader_read. */
WALK_INLINE enum wire_result
walk_msg(struct wire_cursor *c, void *arg, const char **cause)
{
    struct wire_walk_arg *a = arg;
    struct wire_walk w = {
        .c = { .p = c->p, .off = c->off, .max = c->max, .stop = c->stop },
        .b = { a->b.base, a->b.cap, 0 },
        .lim = a->lim,
        .msg = a->msg
    };
    enum wire_result r;

    if ((r = wire_cursor_claim(&w.c, 1, cause)) == WIRE_DECODED) {
        uint8_t t = w.c.p[w.c.off++];

        r = walk_body(&w, t, cause);
    }
    /* the walk moves only these in the cursor */
    c->off = w.c.off;
    c->need = w.c.need;
    a->b.used = w.b.used;
    return r;
}

/* Grow the storage to at least need bytes; it is never shrunk. */
static int
store_reserve(struct wire_msg *msg, uint64_t need)
{
    void *p;
    size_t cap;

    if (need <= msg->store_cap)
        return 0;
    if (need > SIZE_MAX / 2)
        return -1;
    cap = msg->store_cap * 2 > need ? msg->store_cap * 2 : (size_t)need;
    if ((p = realloc(msg->store, cap)) == NULL)
        return -1;
    msg->store = p;
    msg->store_cap = cap;
    return 0;
}

void
wire_reader_begin(struct wire_reader *rd, struct evbuffer *in)
{
    rd->in = in;
    rd->size = 0;
    window_open(&rd->c, in, 0);
}

/* A string that points into the window, copied to *d with a NUL. */
static void
own_str(struct wire_str *s, uint8_t **d)
{
    if (s->len == 0)
        return; /* "" already */
    memcpy(*d, s->ptr, s->len);
    (*d)[s->len] = '\0';
    s->ptr = (const char *)*d;
    *d += (size_t)s->len + 1;
}

/*
 * What the walk left pointing into the window, copied to d in the
 * storage: the strings with a NUL each, the packets' data. It takes at
 * most the message's wire size (a copy is its field less the 4 length
 * bytes, plus one NUL), which reader_read reserves after the walk's part.
 */
static void
msg_own(struct wire_msg *msg, uint8_t *d)
{
    /* the packet array is in msg->store, the codec's own */
    struct wire_packet *pk = (struct wire_packet *)(uintptr_t)msg->packets;

    own_str(&msg->user, &d);
    own_str(&msg->host, &d);
    own_str(&msg->feed, &d);
    own_str(&msg->topic, &d);
    own_str(&msg->content_type, &d);
    for (uint32_t i = 0; i < msg->n_packets; i++) {
        if (pk[i].len == 0)
            continue;
        memcpy(d, pk[i].data, pk[i].len);
        pk[i].data = d;
        d += pk[i].len;
    }
}

/* wire_read; with own, what points into the window is then copied into
 * msg's storage (wire_decode), after the walk's part. */
static enum wire_result
reader_read(struct wire_reader *rd, const struct wire_limits *lim, struct wire_msg *msg,
    bool own, const char **cause)
{
    struct wire_walk_arg a = { lim, msg, { msg->store, msg->store_cap, 0 } };
    struct wire_cursor *c = &rd->c;
    enum wire_result r;
    uint64_t need;

    c->max = lim->max_message;
    window_set(c, c->p, c->len);
    /* A walk over storage too small for it goes on measuring, and is done
     * again, over the same window, once the storage has grown to fit. */
    for (bool again = false;; again = true) {
        r = window_walk(c, rd->in, walk_msg, &a, cause);
        need = a.b.used + (own ? c->off : 0);
        if (r != WIRE_DECODED || need <= a.b.cap)
            break;
        if (again)
            r = wire_fail(cause, "a message decoded differently twice"); /* impossible */
        else if (store_reserve(msg, need) != 0)
            r = wire_fail(cause, "out of memory for a %llu-byte message",
                (unsigned long long)c->off);
        if (r != WIRE_DECODED)
            break;
        a.b.base = msg->store;
        a.b.cap = msg->store_cap;
    }
    if (r != WIRE_DECODED) {
        wire_msg_clear(msg); /* no half-built message */
        return r;
    }
    if (own)
        msg_own(msg, a.b.base + a.b.used);
    /* the next message starts where this one ends, in the same window */
    rd->size = c->off;
    c->taken += c->off;
    c->avail -= c->off;
    window_set(c, c->p + c->off, c->len - c->off);
    return WIRE_DECODED;
}

enum wire_result
wire_read(struct wire_reader *rd, const struct wire_limits *lim, struct wire_msg *msg,
    const char **cause)
{
    return reader_read(rd, lim, msg, false, cause);
}

int
wire_reader_end(struct wire_reader *rd)
{
    uint64_t n = rd->c.taken;

    rd->c.taken = 0;
    return n > 0 ? evbuffer_drain(rd->in, (size_t)n) : 0;
}

enum wire_result
wire_decode(struct evbuffer *in, const struct wire_limits *lim, struct wire_msg *msg,
    const char **cause)
{
    struct wire_reader rd;
    enum wire_result r;

    wire_reader_begin(&rd, in);
    r = reader_read(&rd, lim, msg, true, cause); /* copies: end drains the bytes */
    if (wire_reader_end(&rd) != 0 && r == WIRE_DECODED) {
        wire_msg_clear(msg);
        r = wire_fail(cause, "evbuffer drain failed");
    }
    return r;
}
