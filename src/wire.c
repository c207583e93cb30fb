/*
 * The jetblack-messagebus codec, bus protocols 3 to 6 (BUS-PROTOCOL.md).
 *
 * Decoding is two passes. The first walks the message's fields where they
 * lie in the evbuffer, consuming nothing, and checks every length and count
 * against the limits as soon as it is read (so nothing is allocated from an
 * unchecked length, and an oversized message is refused before it has all
 * arrived). Only when the whole message is present is it removed in one
 * piece into msg->store, which is reused across calls, and the fields are
 * pointed into that copy. Encoding reserves the exact size once and writes
 * straight into the evbuffer.
 */
#include "wire-int.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/util.h>

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

static const uint8_t wire_schema[WIRE_TYPE_MAX + 1][WIRE_MAX_FIELDS] = {
    [WIRE_MULTICAST_DATA] = { WF_FEED, WF_TOPIC, WF_IMAGE, WF_PACKETS },
    [WIRE_UNICAST_DATA] = { WF_CLIENT_ID, WF_FEED, WF_TOPIC, WF_IMAGE, WF_PACKETS },
    [WIRE_FORWARDED_SUBSCRIPTION] = { WF_USER, WF_HOST, WF_CLIENT_ID, WF_FEED, WF_TOPIC,
        WF_IS_ADD },
    [WIRE_NOTIFICATION_REQUEST] = { WF_FEED, WF_IS_ADD },
    [WIRE_SUBSCRIPTION_REQUEST] = { WF_FEED, WF_TOPIC, WF_IS_ADD },
    [WIRE_AUTHORIZATION_REQUEST] = { WF_CLIENT_ID, WF_HOST, WF_USER, WF_FEED, WF_TOPIC },
    [WIRE_AUTHORIZATION_RESPONSE] = { WF_CLIENT_ID, WF_FEED, WF_TOPIC, WF_AUTH_REQUIRED,
        WF_ENTITLEMENTS },
    [WIRE_FORWARDED_MULTICAST] = { WF_USER, WF_HOST, WF_FEED, WF_TOPIC, WF_IMAGE,
        WF_PACKETS },
    [WIRE_FORWARDED_UNICAST] = { WF_USER, WF_HOST, WF_CLIENT_ID, WF_FEED, WF_TOPIC,
        WF_IMAGE, WF_PACKETS },
};

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

    memset(msg, 0, sizeof *msg);
    msg->user.ptr = msg->host.ptr = msg->feed.ptr = msg->topic.ptr = "";
    msg->content_type.ptr = "";
    msg->version = version;
    msg->store = store;
    msg->store_cap = cap;
}

static struct wire_str *
msg_str(struct wire_msg *msg, int field)
{
    switch (field) {
    case WF_USER:
        return &msg->user;
    case WF_HOST:
        return &msg->host;
    case WF_FEED:
        return &msg->feed;
    case WF_CONTENT_TYPE:
        return &msg->content_type;
    default:
        return &msg->topic;
    }
}

static const struct wire_str *
msg_cstr(const struct wire_msg *msg, int field)
{
    return msg_str((struct wire_msg *)msg, field);
}

static bool *
msg_bool(struct wire_msg *msg, int field)
{
    switch (field) {
    case WF_IS_IMAGE:
        return &msg->is_image;
    case WF_IS_ADD:
        return &msg->is_add;
    default:
        return &msg->auth_required;
    }
}

static bool
msg_cbool(const struct wire_msg *msg, int field)
{
    return *msg_bool((struct wire_msg *)msg, field);
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

static uint8_t *
put_str(uint8_t *p, const struct wire_str *s)
{
    p = wire_put_be32(p, s->len);
    return wire_put_bytes(p, s->ptr, s->len);
}

static uint8_t *
put_ints(uint8_t *p, const struct wire_ints *ints)
{
    p = wire_put_be32(p, ints->n);
    for (uint32_t i = 0; i < ints->n; i++)
        p = wire_put_be32(p, (uint32_t)ints->v[i]);
    return p;
}

static uint8_t *
put_packets(uint8_t *p, const struct wire_packet *packets, uint32_t n)
{
    p = wire_put_be32(p, n);
    for (uint32_t i = 0; i < n; i++) {
        p = put_ints(p, &packets[i].entitlements);
        p = wire_put_be32(p, packets[i].len);
        p = wire_put_bytes(p, packets[i].data, packets[i].len);
    }
    return p;
}

/* Write msg (already sized) at p; returns the end. */
static uint8_t *
put_msg(uint8_t *p, const struct wire_msg *msg)
{
    *p++ = (uint8_t)msg->type;
    for (const uint8_t *f = wire_schema[msg->type]; *f != WF_END; f++) {
        int field = field_at(msg->version, *f);

        switch (field) {
        case WF_USER:
        case WF_HOST:
        case WF_FEED:
        case WF_TOPIC:
        case WF_CONTENT_TYPE:
            p = put_str(p, msg_cstr(msg, field));
            break;
        case WF_CLIENT_ID:
            p = wire_put_bytes(p, msg->client_id, WIRE_GUID_LEN);
            break;
        case WF_ENTITLEMENTS:
            p = put_ints(p, &msg->entitlements);
            break;
        case WF_PACKETS:
            p = put_packets(p, msg->packets, msg->n_packets);
            break;
        default:
            *p++ = msg_cbool(msg, field) ? 1 : 0;
            break;
        }
    }
    return p;
}

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

int
wire_encode(struct evbuffer *out, const struct wire_msg *msg)
{
    struct evbuffer_iovec vec;
    uint64_t size;
    uint8_t *p;

    if ((size = msg_size(msg)) == 0 || (p = wire_reserve(out, size, &vec)) == NULL)
        return -1;
    if (put_msg(p, msg) != p + size)
        return -1; /* impossible: msg_size and put_msg disagree */
    return wire_commit(out, &vec, size);
}

/* --- decoding: a non-consuming read position in an evbuffer (wire-int.h) --- */

void
wire_cursor_init(struct wire_cursor *c, struct evbuffer *buf, uint32_t max)
{
    memset(c, 0, sizeof *c);
    c->buf = buf;
    c->avail = evbuffer_get_length(buf);
    c->max = max;
}

/* Point seg at the chain holding c->off (which the caller knows exists). */
static int
cursor_seek(struct wire_cursor *c)
{
    struct evbuffer_iovec v;
    int r;

    if (c->seg != NULL && c->off < c->seg_off + c->seg_len)
        return 0;
    if (c->seg == NULL)
        r = evbuffer_ptr_set(c->buf, &c->seg_ptr, (size_t)c->off, EVBUFFER_PTR_SET);
    else
        r = evbuffer_ptr_set(c->buf, &c->seg_ptr, (size_t)(c->off - c->seg_off),
            EVBUFFER_PTR_ADD);
    if (r != 0 || evbuffer_peek(c->buf, -1, &c->seg_ptr, &v, 1) < 1 || v.iov_len == 0)
        return -1;
    c->seg = v.iov_base;
    c->seg_len = v.iov_len;
    c->seg_off = c->off;
    return 0;
}

/* Copy n bytes at the cursor (known to be present) and move past them. */
static int
cursor_read(struct wire_cursor *c, void *dst, size_t n)
{
    uint8_t *d = dst;

    while (n > 0) {
        size_t in, k;

        if (cursor_seek(c) != 0)
            return -1;
        in = (size_t)(c->off - c->seg_off);
        k = c->seg_len - in < n ? c->seg_len - in : n;
        memcpy(d, c->seg + in, k);
        d += k;
        n -= k;
        c->off += k;
    }
    return 0;
}

/*
 * Claim the next n bytes of the message: an error if the message would
 * then exceed its limit (checked first, so an oversized message is refused
 * as early as possible), need-more if they have not arrived yet.
 */
enum wire_result
wire_cursor_claim(struct wire_cursor *c, uint64_t n, const char **cause)
{
    if (n > c->max || c->off + n > c->max)
        return wire_fail(cause, "message size at least %llu over limit %llu",
            (unsigned long long)(c->off + n), (unsigned long long)c->max);
    if (c->off + n > c->avail)
        return WIRE_NEED_MORE;
    return WIRE_DECODED;
}

/* --- decoding, pass 1: walk and validate without consuming --- */

/* What the walk learned: enough to size the storage exactly. */
struct wire_scan {
    uint64_t n_packets;
    uint64_t n_ints;    /* ints in all int sets */
    uint64_t str_bytes; /* bytes of non-empty strings, NULs included */
};

static const char *const wire_count_names[] = {
    [WC_STRING] = "string length",
    [WC_PAYLOAD] = "payload length",
    [WC_ENTITLEMENTS] = "entitlement count",
    [WC_PACKETS] = "packet count",
};

/*
 * Read a length or count, refuse it if negative or over limit, and claim
 * the unit * count bytes that must follow (a packet's minimum is 8).
 */
enum wire_result
wire_scan_count(struct wire_cursor *c, enum wire_count what, uint32_t limit, unsigned unit,
    const struct wire_where *at, uint32_t *out, const char **cause)
{
    const char *name = wire_count_names[what];
    uint8_t b[4];
    uint32_t raw;
    int32_t v;
    enum wire_result r;

    if ((r = wire_cursor_claim(c, 4, cause)) != WIRE_DECODED)
        return r;
    if (cursor_read(c, b, 4) != 0)
        return wire_fail(cause, "evbuffer walk failed");
    raw = get_be32(b);
    v = to_int32(raw);
    if (v < 0)
        return wire_fail(cause, "negative %s %ld (%s %s)", name, (long)v, at->what,
            at->field);
    if (raw > limit)
        return wire_fail(cause, "%s %lu over limit %lu (%s %s)", name, (unsigned long)raw,
            (unsigned long)limit, at->what, at->field);
    if ((r = wire_cursor_claim(c, (uint64_t)raw * unit, cause)) == WIRE_ERROR)
        return r;
    *out = raw;
    return WIRE_DECODED;
}

/* A counted run of bytes or ints: check, then step over it. */
static enum wire_result
scan_body(struct wire_cursor *c, enum wire_count what, uint32_t limit, unsigned unit,
    const struct wire_where *at, uint32_t *n, const char **cause)
{
    enum wire_result r;

    if ((r = wire_scan_count(c, what, limit, unit, at, n, cause)) != WIRE_DECODED)
        return r;
    if ((r = wire_cursor_claim(c, (uint64_t)*n * unit, cause)) != WIRE_DECODED)
        return r;
    c->off += (uint64_t)*n * unit;
    return WIRE_DECODED;
}

static enum wire_result
scan_packets(struct wire_cursor *c, const struct wire_limits *lim,
    const struct wire_where *at, struct wire_scan *sc, const char **cause)
{
    uint32_t n, k;
    enum wire_result r;

    if ((r = wire_scan_count(c, WC_PACKETS, lim->max_packets, 8, at, &n, cause)) !=
        WIRE_DECODED)
        return r;
    sc->n_packets = n;
    for (uint32_t i = 0; i < n; i++) {
        if ((r = scan_body(c, WC_ENTITLEMENTS, lim->max_entitlements, 4, at, &k, cause)) !=
            WIRE_DECODED)
            return r;
        sc->n_ints += k;
        if ((r = scan_body(c, WC_PAYLOAD, lim->max_payload, 1, at, &k, cause)) !=
            WIRE_DECODED)
            return r;
    }
    return WIRE_DECODED;
}

static enum wire_result
scan_field(struct wire_cursor *c, const struct wire_limits *lim, int field,
    const struct wire_where *at, struct wire_scan *sc, const char **cause)
{
    enum wire_result r;
    uint32_t n;

    switch (field) {
    case WF_USER:
    case WF_HOST:
    case WF_FEED:
    case WF_TOPIC:
    case WF_CONTENT_TYPE:
        if ((r = scan_body(c, WC_STRING, lim->max_string, 1, at, &n, cause)) !=
            WIRE_DECODED)
            return r;
        sc->str_bytes += n > 0 ? n + 1 : 0;
        return WIRE_DECODED;
    case WF_CLIENT_ID:
        if ((r = wire_cursor_claim(c, WIRE_GUID_LEN, cause)) != WIRE_DECODED)
            return r;
        c->off += WIRE_GUID_LEN;
        return WIRE_DECODED;
    case WF_ENTITLEMENTS:
        if ((r = scan_body(c, WC_ENTITLEMENTS, lim->max_entitlements, 4, at, &n, cause)) !=
            WIRE_DECODED)
            return r;
        sc->n_ints += n;
        return WIRE_DECODED;
    case WF_PACKETS:
        return scan_packets(c, lim, at, sc, cause);
    default:
        if ((r = wire_cursor_claim(c, 1, cause)) != WIRE_DECODED)
            return r;
        c->off += 1;
        return WIRE_DECODED;
    }
}

/* Walk the message at the front of c's buffer; on success c->off is its size. */
static enum wire_result
scan_msg(struct wire_cursor *c, const struct wire_limits *lim, int version, int *type,
    struct wire_scan *sc, const char **cause)
{
    struct wire_where at;
    uint8_t t;
    enum wire_result r;

    if ((r = wire_cursor_claim(c, 1, cause)) != WIRE_DECODED)
        return r;
    if (cursor_read(c, &t, 1) != 0)
        return wire_fail(cause, "evbuffer walk failed");
    if (t < WIRE_TYPE_MIN || t > WIRE_TYPE_MAX)
        return wire_fail(cause, "unknown message type %u", (unsigned)t);
    *type = t;
    at.what = wire_type_name(t);
    memset(sc, 0, sizeof *sc);
    for (const uint8_t *f = wire_schema[t]; *f != WF_END; f++) {
        int field = field_at(version, *f);

        at.field = wire_field_names[field];
        if ((r = scan_field(c, lim, field, &at, sc, cause)) != WIRE_DECODED)
            return r;
    }
    return WIRE_DECODED;
}

/* --- decoding, pass 2: build the message from its contiguous copy --- */

/* Where the next packet, int and string go in the storage. */
struct wire_build {
    const uint8_t *p; /* next raw byte */
    struct wire_packet *pk;
    int32_t *ints;
    char *str;
};

#define WIRE_ALIGN(n) (((n) + 7) & ~(uint64_t)7)

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

static uint32_t
take_be32(struct wire_build *b)
{
    uint32_t v = get_be32(b->p);

    b->p += 4;
    return v;
}

static void
take_str(struct wire_build *b, struct wire_str *s)
{
    uint32_t len = take_be32(b);

    s->len = len;
    if (len == 0) {
        s->ptr = "";
        return;
    }
    memcpy(b->str, b->p, len);
    b->str[len] = '\0';
    s->ptr = b->str;
    b->str += len + 1;
    b->p += len;
}

static void
take_ints(struct wire_build *b, struct wire_ints *ints)
{
    uint32_t n = take_be32(b);

    ints->n = n;
    ints->v = n > 0 ? b->ints : NULL;
    for (uint32_t i = 0; i < n; i++)
        *b->ints++ = to_int32(take_be32(b));
}

static void
take_packets(struct wire_build *b, struct wire_msg *msg)
{
    uint32_t n = take_be32(b);

    msg->n_packets = n;
    msg->packets = n > 0 ? b->pk : NULL;
    for (uint32_t i = 0; i < n; i++) {
        struct wire_packet *pk = b->pk++;

        take_ints(b, &pk->entitlements);
        pk->len = take_be32(b);
        pk->data = pk->len > 0 ? b->p : NULL;
        b->p += pk->len;
    }
}

/* Fill msg from the validated raw copy b->p. */
static void
build_msg(struct wire_build *b, struct wire_msg *msg)
{
    msg->type = (enum wire_type) * b->p++;
    for (const uint8_t *f = wire_schema[msg->type]; *f != WF_END; f++) {
        int field = field_at(msg->version, *f);

        switch (field) {
        case WF_USER:
        case WF_HOST:
        case WF_FEED:
        case WF_TOPIC:
        case WF_CONTENT_TYPE:
            take_str(b, msg_str(msg, field));
            break;
        case WF_CLIENT_ID:
            memcpy(msg->client_id, b->p, WIRE_GUID_LEN);
            b->p += WIRE_GUID_LEN;
            break;
        case WF_ENTITLEMENTS:
            take_ints(b, &msg->entitlements);
            break;
        case WF_PACKETS:
            take_packets(b, msg);
            break;
        default:
            *msg_bool(msg, field) = *b->p++ != 0;
            break;
        }
    }
}

/*
 * Storage layout: packets, then ints (aligned), then strings with their
 * NULs, then the raw message, which packet data points into.
 */
static enum wire_result
take_msg(struct evbuffer *in, struct wire_msg *msg, uint64_t size,
    const struct wire_scan *sc, const char **cause)
{
    uint64_t pk_bytes = WIRE_ALIGN(sc->n_packets * sizeof(struct wire_packet));
    uint64_t int_bytes = sc->n_ints * sizeof(int32_t);
    uint64_t need = pk_bytes + int_bytes + sc->str_bytes + size;
    struct wire_build b;
    uint8_t *base, *raw;

    /* evbuffer_remove counts in int; the limit is normally far below. */
    if (size > (uint64_t)INT32_MAX)
        return wire_fail(cause, "message size %llu too large to decode",
            (unsigned long long)size);
    if (store_reserve(msg, need) != 0)
        return wire_fail(cause, "out of memory for a %llu-byte message",
            (unsigned long long)size);
    base = msg->store;
    raw = base + pk_bytes + int_bytes + sc->str_bytes;
    if (evbuffer_remove(in, raw, (size_t)size) != (int)size)
        return wire_fail(cause, "evbuffer remove failed");
    wire_msg_clear(msg);
    b.p = raw;
    b.pk = (struct wire_packet *)(void *)base;
    b.ints = (int32_t *)(void *)(base + pk_bytes);
    b.str = (char *)(base + pk_bytes + int_bytes);
    build_msg(&b, msg);
    return WIRE_DECODED;
}

enum wire_result
wire_decode(struct evbuffer *in, const struct wire_limits *lim, struct wire_msg *msg,
    const char **cause)
{
    struct wire_cursor c;
    struct wire_scan sc;
    enum wire_result r;
    int type;

    wire_cursor_init(&c, in, lim->max_message);
    if ((r = scan_msg(&c, lim, msg->version, &type, &sc, cause)) != WIRE_DECODED)
        return r;
    return take_msg(in, msg, c.off, &sc, cause);
}
