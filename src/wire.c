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
#include "wire.h"

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
    WF_IMAGE,          /* the slot: is_image below 6, content_type from 6 */
    WF_IS_IMAGE,
    WF_CONTENT_TYPE,
    WF_IS_ADD,
    WF_AUTH_REQUIRED,
    WF_ENTITLEMENTS,
    WF_PACKETS,
};

#define WIRE_MAX_FIELDS 8   /* the longest list (7) plus WF_END */

static const uint8_t wire_schema[WIRE_TYPE_MAX + 1][WIRE_MAX_FIELDS] = {
    [WIRE_MULTICAST_DATA] =
        { WF_FEED, WF_TOPIC, WF_IMAGE, WF_PACKETS },
    [WIRE_UNICAST_DATA] =
        { WF_CLIENT_ID, WF_FEED, WF_TOPIC, WF_IMAGE, WF_PACKETS },
    [WIRE_FORWARDED_SUBSCRIPTION] =
        { WF_USER, WF_HOST, WF_CLIENT_ID, WF_FEED, WF_TOPIC, WF_IS_ADD },
    [WIRE_NOTIFICATION_REQUEST] =
        { WF_FEED, WF_IS_ADD },
    [WIRE_SUBSCRIPTION_REQUEST] =
        { WF_FEED, WF_TOPIC, WF_IS_ADD },
    [WIRE_AUTHORIZATION_REQUEST] =
        { WF_CLIENT_ID, WF_HOST, WF_USER, WF_FEED, WF_TOPIC },
    [WIRE_AUTHORIZATION_RESPONSE] =
        { WF_CLIENT_ID, WF_FEED, WF_TOPIC, WF_AUTH_REQUIRED, WF_ENTITLEMENTS },
    [WIRE_FORWARDED_MULTICAST] =
        { WF_USER, WF_HOST, WF_FEED, WF_TOPIC, WF_IMAGE, WF_PACKETS },
    [WIRE_FORWARDED_UNICAST] =
        { WF_USER, WF_HOST, WF_CLIENT_ID, WF_FEED, WF_TOPIC, WF_IMAGE,
          WF_PACKETS },
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

__attribute__((format(printf, 2, 3)))
static enum wire_result
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
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 |
        (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

/* Two's complement without relying on implementation-defined conversion. */
static int32_t
to_int32(uint32_t v)
{
    if (v <= (uint32_t)INT32_MAX)
        return (int32_t)v;
    return -(int32_t)(~v) - 1;
}

static uint8_t *
put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
    return p + 4;
}

static uint8_t *
put_bytes(uint8_t *p, const void *src, size_t len)
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

        if ((ints = ints_size(&pk->entitlements)) == 0 ||
            pk->len > (uint32_t)INT32_MAX || (pk->len > 0 && pk->data == NULL))
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
    p = put_be32(p, s->len);
    return put_bytes(p, s->ptr, s->len);
}

static uint8_t *
put_ints(uint8_t *p, const struct wire_ints *ints)
{
    p = put_be32(p, ints->n);
    for (uint32_t i = 0; i < ints->n; i++)
        p = put_be32(p, (uint32_t)ints->v[i]);
    return p;
}

static uint8_t *
put_packets(uint8_t *p, const struct wire_packet *packets, uint32_t n)
{
    p = put_be32(p, n);
    for (uint32_t i = 0; i < n; i++) {
        p = put_ints(p, &packets[i].entitlements);
        p = put_be32(p, packets[i].len);
        p = put_bytes(p, packets[i].data, packets[i].len);
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
            p = put_bytes(p, msg->client_id, WIRE_GUID_LEN);
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
static uint8_t *
reserve(struct evbuffer *out, uint64_t size, struct evbuffer_iovec *vec)
{
    if (evbuffer_reserve_space(out, (ev_ssize_t)size, vec, 1) != 1 ||
        vec->iov_len < size)
        return NULL;
    return vec->iov_base;
}

static int
commit(struct evbuffer *out, struct evbuffer_iovec *vec, uint64_t size)
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

    if ((size = msg_size(msg)) == 0 || (p = reserve(out, size, &vec)) == NULL)
        return -1;
    if (put_msg(p, msg) != p + size)
        return -1;   /* impossible: msg_size and put_msg disagree */
    return commit(out, &vec, size);
}

/* --- decoding: a non-consuming read position in an evbuffer --- */

/*
 * Reads go through the contiguous segment (chain) holding the current
 * offset, so most field reads are a memcpy; skips are arithmetic, and
 * moving to a later chain walks forward from the current one.
 */
struct wire_cursor {
    struct evbuffer *buf;
    struct evbuffer_ptr seg_ptr;   /* where seg starts in buf */
    const uint8_t *seg;            /* NULL until the first read */
    size_t seg_len;
    uint64_t seg_off;              /* offset of seg from the buffer start */
    uint64_t off;                  /* bytes walked from the message start */
    uint64_t avail;                /* bytes in buf */
    uint64_t max;                  /* the whole-message limit */
};

static void
cursor_init(struct wire_cursor *c, struct evbuffer *buf, uint32_t max)
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
        r = evbuffer_ptr_set(c->buf, &c->seg_ptr, (size_t)c->off,
            EVBUFFER_PTR_SET);
    else
        r = evbuffer_ptr_set(c->buf, &c->seg_ptr,
            (size_t)(c->off - c->seg_off), EVBUFFER_PTR_ADD);
    if (r != 0 || evbuffer_peek(c->buf, -1, &c->seg_ptr, &v, 1) < 1 ||
        v.iov_len == 0)
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
static enum wire_result
cursor_claim(struct wire_cursor *c, uint64_t n, const char **cause)
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
    uint64_t n_ints;       /* ints in all int sets */
    uint64_t str_bytes;    /* bytes of non-empty strings, NULs included */
};

/* Names the field being read, for error messages. */
struct wire_where {
    const char *what;    /* message type name, or "authentication" */
    const char *field;
};

enum wire_count {
    WC_STRING,
    WC_PAYLOAD,
    WC_ENTITLEMENTS,
    WC_PACKETS,
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
static enum wire_result
scan_count(struct wire_cursor *c, enum wire_count what, uint32_t limit,
    unsigned unit, const struct wire_where *at, uint32_t *out,
    const char **cause)
{
    const char *name = wire_count_names[what];
    uint8_t b[4];
    uint32_t raw;
    int32_t v;
    enum wire_result r;

    if ((r = cursor_claim(c, 4, cause)) != WIRE_DECODED)
        return r;
    if (cursor_read(c, b, 4) != 0)
        return wire_fail(cause, "evbuffer walk failed");
    raw = get_be32(b);
    v = to_int32(raw);
    if (v < 0)
        return wire_fail(cause, "negative %s %ld (%s %s)", name, (long)v,
            at->what, at->field);
    if (raw > limit)
        return wire_fail(cause, "%s %lu over limit %lu (%s %s)", name,
            (unsigned long)raw, (unsigned long)limit, at->what, at->field);
    if ((r = cursor_claim(c, (uint64_t)raw * unit, cause)) == WIRE_ERROR)
        return r;
    *out = raw;
    return WIRE_DECODED;
}

/* A counted run of bytes or ints: check, then step over it. */
static enum wire_result
scan_body(struct wire_cursor *c, enum wire_count what, uint32_t limit,
    unsigned unit, const struct wire_where *at, uint32_t *n,
    const char **cause)
{
    enum wire_result r;

    if ((r = scan_count(c, what, limit, unit, at, n, cause)) != WIRE_DECODED)
        return r;
    if ((r = cursor_claim(c, (uint64_t)*n * unit, cause)) != WIRE_DECODED)
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

    if ((r = scan_count(c, WC_PACKETS, lim->max_packets, 8, at, &n,
        cause)) != WIRE_DECODED)
        return r;
    sc->n_packets = n;
    for (uint32_t i = 0; i < n; i++) {
        if ((r = scan_body(c, WC_ENTITLEMENTS, lim->max_entitlements, 4, at,
            &k, cause)) != WIRE_DECODED)
            return r;
        sc->n_ints += k;
        if ((r = scan_body(c, WC_PAYLOAD, lim->max_payload, 1, at, &k,
            cause)) != WIRE_DECODED)
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
        if ((r = scan_body(c, WC_STRING, lim->max_string, 1, at, &n,
            cause)) != WIRE_DECODED)
            return r;
        sc->str_bytes += n > 0 ? n + 1 : 0;
        return WIRE_DECODED;
    case WF_CLIENT_ID:
        if ((r = cursor_claim(c, WIRE_GUID_LEN, cause)) != WIRE_DECODED)
            return r;
        c->off += WIRE_GUID_LEN;
        return WIRE_DECODED;
    case WF_ENTITLEMENTS:
        if ((r = scan_body(c, WC_ENTITLEMENTS, lim->max_entitlements, 4, at,
            &n, cause)) != WIRE_DECODED)
            return r;
        sc->n_ints += n;
        return WIRE_DECODED;
    case WF_PACKETS:
        return scan_packets(c, lim, at, sc, cause);
    default:
        if ((r = cursor_claim(c, 1, cause)) != WIRE_DECODED)
            return r;
        c->off += 1;
        return WIRE_DECODED;
    }
}

/* Walk the message at the front of c's buffer; on success c->off is its size. */
static enum wire_result
scan_msg(struct wire_cursor *c, const struct wire_limits *lim, int version,
    int *type, struct wire_scan *sc, const char **cause)
{
    struct wire_where at;
    uint8_t t;
    enum wire_result r;

    if ((r = cursor_claim(c, 1, cause)) != WIRE_DECODED)
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
    const uint8_t *p;          /* next raw byte */
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
    msg->type = (enum wire_type)*b->p++;
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
wire_decode(struct evbuffer *in, const struct wire_limits *lim,
    struct wire_msg *msg, const char **cause)
{
    struct wire_cursor c;
    struct wire_scan sc;
    enum wire_result r;
    int type;

    cursor_init(&c, in, lim->max_message);
    if ((r = scan_msg(&c, lim, msg->version, &type, &sc, cause)) != WIRE_DECODED)
        return r;
    return take_msg(in, msg, c.off, &sc, cause);
}

/* --- the authentication payload --- */

#define WIRE_AUTH_MAX_FIELDS 4

/* The payload's strings for auth's method, in wire order; -1 if unknown. */
static int
auth_fields(const struct wire_auth *auth, const char *v[WIRE_AUTH_MAX_FIELDS])
{
    switch (auth->method) {
    case WIRE_AUTH_NONE:
        return 0;
    case WIRE_AUTH_BASIC:
        v[0] = auth->username;
        v[1] = auth->password;
        v[2] = auth->impersonating;
        v[3] = auth->forwarded_for;
        return 4;
    case WIRE_AUTH_TOKEN:
        v[0] = auth->token;
        v[1] = auth->impersonating;
        v[2] = auth->forwarded_for;
        return 3;
    }
    return -1;
}

/* Where decoded strings go, in wire order; -1 if the method is unknown. */
static int
auth_slots(struct wire_auth *auth, const char **v[WIRE_AUTH_MAX_FIELDS])
{
    switch (auth->method) {
    case WIRE_AUTH_NONE:
        return 0;
    case WIRE_AUTH_BASIC:
        v[0] = &auth->username;
        v[1] = &auth->password;
        v[2] = &auth->impersonating;
        v[3] = &auth->forwarded_for;
        return 4;
    case WIRE_AUTH_TOKEN:
        v[0] = &auth->token;
        v[1] = &auth->impersonating;
        v[2] = &auth->forwarded_for;
        return 3;
    }
    return -1;
}

/*
 * The keys of the connection string (4 and later), in the order the
 * python clients write them; the first two are required for the method
 * that names them, the rest are written only when non-empty.
 */
enum wire_key {
    WK_USERNAME,
    WK_PASSWORD,
    WK_TOKEN,
    WK_IMPERSONATING,
    WK_FORWARDED_FOR,
    WK_APPLICATION,
    WK_COUNT,
};

static const char *const wire_key_names[WK_COUNT] = {
    [WK_USERNAME] = "Username",
    [WK_PASSWORD] = "Password",
    [WK_TOKEN] = "Token",
    [WK_IMPERSONATING] = "Impersonating",
    [WK_FORWARDED_FOR] = "ForwardedFor",
    [WK_APPLICATION] = "Application",
};

static const char **
auth_key_slot(struct wire_auth *auth, enum wire_key k)
{
    switch (k) {
    case WK_USERNAME:
        return &auth->username;
    case WK_PASSWORD:
        return &auth->password;
    case WK_TOKEN:
        return &auth->token;
    case WK_IMPERSONATING:
        return &auth->impersonating;
    case WK_FORWARDED_FOR:
        return &auth->forwarded_for;
    default:
        return &auth->application;
    }
}

static const char *
auth_key_value(const struct wire_auth *auth, enum wire_key k)
{
    return *auth_key_slot((struct wire_auth *)auth, k);
}

/* Whether key k is required (1), optional (0) or not sent (-1) for method. */
static int
auth_key_use(enum wire_auth_method method, enum wire_key k)
{
    switch (k) {
    case WK_USERNAME:
    case WK_PASSWORD:
        return method == WIRE_AUTH_BASIC ? 1 : -1;
    case WK_TOKEN:
        return method == WIRE_AUTH_TOKEN ? 1 : -1;
    default:
        return 0;
    }
}

static bool
auth_key_sent(const struct wire_auth *auth, enum wire_key k)
{
    const char *v = auth_key_value(auth, k);
    int use = auth_key_use(auth->method, k);

    return use > 0 || (use == 0 && v != NULL && v[0] != '\0');
}

static bool
connection_string(const struct wire_auth *auth)
{
    return auth->version >= WIRE_V4 && auth->method != WIRE_AUTH_NONE;
}

int
wire_auth_check(const struct wire_auth *auth, const char **cause)
{
    if (auth->method != WIRE_AUTH_NONE && auth->method != WIRE_AUTH_BASIC &&
        auth->method != WIRE_AUTH_TOKEN) {
        wire_fail(cause, "unknown authentication method %d", (int)auth->method);
        return -1;
    }
    if (!connection_string(auth))
        return 0;
    for (int k = 0; k < WK_COUNT; k++) {
        const char *v = auth_key_value(auth, k);

        if (auth_key_sent(auth, k) && v != NULL && strchr(v, ';') != NULL) {
            wire_fail(cause, "the %s contains ';', which bus protocol %d cannot "
                "send: the distributor splits its one login string on ';' with "
                "no escaping", wire_key_names[k], auth->version);
            return -1;
        }
    }
    return 0;
}

/* Bytes of the connection string for auth. */
static uint64_t
connection_string_size(const struct wire_auth *auth)
{
    uint64_t size = 0;

    for (int k = 0; k < WK_COUNT; k++) {
        const char *v = auth_key_value(auth, k);

        if (!auth_key_sent(auth, k))
            continue;
        size += (size > 0 ? 1 : 0) + strlen(wire_key_names[k]) + 1 +
            (v != NULL ? strlen(v) : 0);
    }
    return size;
}

static uint8_t *
put_connection_string(uint8_t *p, const struct wire_auth *auth)
{
    bool first = true;

    for (int k = 0; k < WK_COUNT; k++) {
        const char *v = auth_key_value(auth, k);

        if (!auth_key_sent(auth, k))
            continue;
        if (!first)
            *p++ = ';';
        first = false;
        p = put_bytes(p, wire_key_names[k], strlen(wire_key_names[k]));
        *p++ = '=';
        p = put_bytes(p, v, v != NULL ? strlen(v) : 0);
    }
    return p;
}

static int
encode_connection_string(struct evbuffer *out, const struct wire_auth *auth)
{
    uint64_t len = connection_string_size(auth);
    struct evbuffer_iovec vec;
    uint8_t *p;

    if (len > (uint64_t)INT32_MAX || (p = reserve(out, 4 + len, &vec)) == NULL)
        return -1;
    p = put_be32(p, (uint32_t)len);
    put_connection_string(p, auth);
    return commit(out, &vec, 4 + len);
}

int
wire_encode_auth(struct evbuffer *out, const struct wire_auth *auth)
{
    const char *v[WIRE_AUTH_MAX_FIELDS];
    size_t len[WIRE_AUTH_MAX_FIELDS];
    struct evbuffer_iovec vec;
    uint64_t size = 0;
    uint8_t *p;
    int n;

    if (wire_auth_check(auth, NULL) != 0)
        return -1;
    if (connection_string(auth))
        return encode_connection_string(out, auth);
    if ((n = auth_fields(auth, v)) < 0)
        return -1;
    if (n == 0)
        return 0;
    for (int i = 0; i < n; i++) {
        len[i] = v[i] != NULL ? strlen(v[i]) : 0;
        if (len[i] > (size_t)INT32_MAX)
            return -1;
        size += 4 + (uint64_t)len[i];
    }
    if ((p = reserve(out, size, &vec)) == NULL)
        return -1;
    for (int i = 0; i < n; i++) {
        p = put_be32(p, (uint32_t)len[i]);
        p = put_bytes(p, v[i], len[i]);
    }
    return commit(out, &vec, size);
}

void
wire_auth_free(struct wire_auth *auth)
{
    for (int k = 0; k < WK_COUNT; k++) {
        const char **slot = auth_key_slot(auth, k);

        free((void *)*slot);
        *slot = NULL;
    }
}

static const char *const wire_auth_names[][WIRE_AUTH_MAX_FIELDS] = {
    [WIRE_AUTH_BASIC] = { "username", "password", "impersonating",
                          "forwardedFor" },
    [WIRE_AUTH_TOKEN] = { "token", "impersonating", "forwardedFor" },
};

/* Check the n strings at the front of c's buffer; their lengths to len. */
static enum wire_result
scan_auth(struct wire_cursor *c, const char *const names[], int n,
    const struct wire_limits *lim, uint32_t len[WIRE_AUTH_MAX_FIELDS],
    const char **cause)
{
    struct wire_where at = { "authentication", NULL };
    enum wire_result r;

    for (int i = 0; i < n; i++) {
        at.field = names[i];
        if ((r = scan_count(c, WC_STRING, lim->max_string, 1, &at, &len[i],
            cause)) != WIRE_DECODED)
            return r;
        if ((r = cursor_claim(c, len[i], cause)) != WIRE_DECODED)
            return r;
        c->off += len[i];
    }
    return WIRE_DECODED;
}

/* Allocate n copies, then take the n strings scan_auth checked from in. */
static enum wire_result
take_auth_strings(struct evbuffer *in, int n, const uint32_t len[],
    char *copy[], const char **cause)
{
    for (int i = 0; i < n; i++) {
        copy[i] = NULL;
        if (len[i] > 0 && (copy[i] = malloc((size_t)len[i] + 1)) == NULL) {
            for (int j = 0; j < i; j++)
                free(copy[j]);
            return wire_fail(cause, "out of memory");
        }
    }
    for (int i = 0; i < n; i++) {
        evbuffer_drain(in, 4);
        if (len[i] > 0) {
            evbuffer_remove(in, copy[i], len[i]);
            copy[i][len[i]] = '\0';
        }
    }
    return WIRE_DECODED;
}

static int
key_of(const char *name, size_t len)
{
    for (int k = 0; k < WK_COUNT; k++)
        if (strlen(wire_key_names[k]) == len &&
            memcmp(wire_key_names[k], name, len) == 0)
            return k;
    return -1;
}

/* Set one "key=value" part of a connection string into auth. */
static int
parse_part(struct wire_auth *auth, const char *part, size_t len,
    const char **cause)
{
    const char *eq = memchr(part, '=', len);
    const char **slot;
    char *value;
    int k;

    if (len == 0)
        return wire_fail(cause, "empty part in the connection string"), -1;
    if (eq == NULL)
        return wire_fail(cause, "connection string part without '='"), -1;
    if ((k = key_of(part, (size_t)(eq - part))) < 0 ||
        auth_key_use(auth->method, k) < 0)
        return wire_fail(cause, "unexpected key \"%.*s\" in the connection "
            "string", (int)(eq - part), part), -1;
    slot = auth_key_slot(auth, k);
    if (*slot != NULL)
        return wire_fail(cause, "repeated key %s in the connection string",
            wire_key_names[k]), -1;
    if ((value = strndup(eq + 1, len - (size_t)(eq + 1 - part))) == NULL)
        return wire_fail(cause, "out of memory"), -1;
    *slot = value;
    return 0;
}

/* Parse a connection string as the distributor does. */
static enum wire_result
parse_connection_string(struct wire_auth *auth, const char *s,
    const char **cause)
{
    const char *end = s + strlen(s);

    for (const char *p = s;;) {
        const char *semi = memchr(p, ';', (size_t)(end - p));
        const char *stop = semi != NULL ? semi : end;

        if (parse_part(auth, p, (size_t)(stop - p), cause) != 0)
            return WIRE_ERROR;
        if (semi == NULL)
            break;
        p = semi + 1;
    }
    for (int k = 0; k < WK_COUNT; k++)
        if (auth_key_use(auth->method, k) > 0 && auth_key_value(auth, k) == NULL)
            return wire_fail(cause, "the connection string has no %s",
                wire_key_names[k]);
    return WIRE_DECODED;
}

/* Nothing is consumed unless the whole string parses. */
static enum wire_result
decode_connection_string(struct evbuffer *in, const struct wire_limits *lim,
    struct wire_auth *auth, const char **cause)
{
    static const char *const names[] = { "connection string" };
    struct wire_cursor c;
    uint32_t len[WIRE_AUTH_MAX_FIELDS];
    char *copy;
    enum wire_result r;

    cursor_init(&c, in, lim->max_message);
    if ((r = scan_auth(&c, names, 1, lim, len, cause)) != WIRE_DECODED)
        return r;
    if ((copy = malloc((size_t)c.off + 1)) == NULL)
        return wire_fail(cause, "out of memory");
    if (evbuffer_copyout(in, copy, (size_t)c.off) != (ev_ssize_t)c.off) {
        free(copy);
        return wire_fail(cause, "evbuffer copy failed");
    }
    copy[c.off] = '\0';
    r = parse_connection_string(auth, copy + 4, cause);
    free(copy);
    if (r != WIRE_DECODED) {
        wire_auth_free(auth);
        return r;
    }
    evbuffer_drain(in, (size_t)c.off);
    return WIRE_DECODED;
}

enum wire_result
wire_decode_auth_version(struct evbuffer *in, int version,
    enum wire_auth_method method, const struct wire_limits *lim,
    struct wire_auth *auth, const char **cause)
{
    const char **slot[WIRE_AUTH_MAX_FIELDS];
    char *copy[WIRE_AUTH_MAX_FIELDS];
    uint32_t len[WIRE_AUTH_MAX_FIELDS];
    struct wire_cursor c;
    enum wire_result r;
    int n;

    memset(auth, 0, sizeof *auth);
    auth->method = method;
    auth->version = version;
    if ((n = auth_slots(auth, slot)) < 0)
        return wire_fail(cause, "unknown authentication method %d",
            (int)method);
    if (connection_string(auth))
        return decode_connection_string(in, lim, auth, cause);
    cursor_init(&c, in, lim->max_message);
    if ((r = scan_auth(&c, wire_auth_names[method], n, lim, len,
        cause)) != WIRE_DECODED)
        return r;
    if ((r = take_auth_strings(in, n, len, copy, cause)) != WIRE_DECODED)
        return r;
    for (int i = 0; i < n; i++)
        *slot[i] = copy[i];
    return WIRE_DECODED;
}

enum wire_result
wire_decode_auth(struct evbuffer *in, enum wire_auth_method method,
    const struct wire_limits *lim, struct wire_auth *auth, const char **cause)
{
    return wire_decode_auth_version(in, WIRE_V3, method, lim, auth, cause);
}
