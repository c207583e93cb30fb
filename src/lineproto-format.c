/*
 * The local line protocol's formatters: every event and reply the daemon
 * writes, every command a client writes, and the name escaping they share.
 * Events are written with one reservation per event (the hot path); the
 * rare replies and commands use evbuffer_add_printf.
 */
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>

#include "guid.h"
#include "lineproto.h"
#include "lineproto-int.h"

/* ---- small number formatting (snprintf is too slow for the hot path) ---- */

/* "00" to "99": two digits a step. */
static const char digit_pairs[201] = "00010203040506070809101112131415161718192021222324"
                                     "25262728293031323334353637383940414243444546474849"
                                     "50515253545556575859606162636465666768697071727374"
                                     "75767778798081828384858687888990919293949596979899";

/* Every number formatted here (packet lengths, entitlements) fits in 32
 * bits: two digits a step, from the last; under 1,000 (most lengths) in
 * straight-line code. */
static size_t
put_u32(char *dst, uint32_t v)
{
    size_t n;
    char *p;

    if (v < 10) {
        dst[0] = (char)('0' + v);
        return 1;
    }
    if (v < 100) {
        memcpy(dst, digit_pairs + 2 * v, 2);
        return 2;
    }
    if (v < 1000) {
        dst[0] = (char)('0' + v / 100);
        memcpy(dst + 1, digit_pairs + 2 * (v % 100), 2);
        return 3;
    }
    n = 4;
    for (uint32_t t = v / 10000; t != 0; t /= 10)
        n++;
    for (p = dst + n; v >= 100; v /= 100) {
        p -= 2;
        memcpy(p, digit_pairs + 2 * (v % 100), 2);
    }
    if (v >= 10)
        memcpy(p - 2, digit_pairs + 2 * v, 2);
    else
        p[-1] = (char)('0' + v);
    return n;
}

static size_t
put_i32(char *dst, int32_t v)
{
    if (v < 0) {
        dst[0] = '-';
        return 1 + put_u32(dst + 1, (uint32_t)(-(int64_t)v));
    }
    return put_u32(dst, (uint32_t)v);
}

/* ---- name escaping ---- */

/* What a byte adds to its name's token: 2 for the bytes must_escape
 * names ("%XX"), else 0: a lookup instead of must_escape's compares, in
 * the user and host names measured for every event. */
#define ESC(c) ((c) <= 0x20 || (c) == 0x7f || (c) == '%' || (c) == '"' ? 2 : 0)
#define ESC4(c) ESC(c), ESC((c) + 1), ESC((c) + 2), ESC((c) + 3)
#define ESC16(c) ESC4(c), ESC4((c) + 4), ESC4((c) + 8), ESC4((c) + 12)
#define ESC64(c) ESC16(c), ESC16((c) + 16), ESC16((c) + 32), ESC16((c) + 48)
static const unsigned char escape_adds[256] = { ESC64(0), ESC64(64), ESC64(128),
    ESC64(192) };

/* ---- names many bytes at a time ---- */

#if defined(__SSE2__)
/* Bit i: byte i of x is one a name must escape, the space among them
 * (specials16_of gives the space apart, as the tokenizer wants it). */
static inline uint32_t
name_specials_of(__m128i x)
{
    uint32_t spaces, m = specials16_of(x, &spaces);

    return m | spaces;
}

static inline uint32_t
name_specials16(const char *p)
{
    return name_specials_of(_mm_loadu_si128((const __m128i *)(const void *)p));
}
#endif

/*
 * Whether the len (> 0) bytes at ptr hold one must_escape names. With SSE2
 * (specials16), 16 bytes in a few instructions: a long name in blocks, the
 * last overlapping; a short one gathered into one block (its bytes, some
 * twice, and plain ones), as the name's own bytes past its end may not be
 * read. Elsewhere a byte at a time.
 */
static inline __attribute__((always_inline)) bool
has_special(const char *ptr, size_t len)
{
#if defined(__SSE2__)
    const uint64_t plain = 0x6161616161616161ull; /* "aaaaaaaa" */
    uint64_t lo, hi = plain;
    uint32_t m = 0;

    if (len >= 16) {
        for (size_t i = 0; i + 16 < len; i += 16)
            m |= name_specials16(ptr + i);
        return (m | name_specials16(ptr + len - 16)) != 0;
    }
    /* Gathered in registers: a 16-byte load of bytes just stored in
     * pieces waits for the stores (a failed store forward, ~40% of a
     * library publisher's time in this function when it was done so). */
    if (len >= 8) {
        lo = wire_load64(ptr);
        hi = wire_load64(ptr + len - 8);
    } else if (len >= 4) {
        lo = wire_load32(ptr) | (uint64_t)wire_load32(ptr + len - 4) << 32;
    } else {
        lo = (uint64_t)(unsigned char)ptr[0] | (uint64_t)(unsigned char)ptr[len / 2] << 8 |
            (uint64_t)(unsigned char)ptr[len - 1] << 16 | (plain & ~0xffffffull);
    }
    return name_specials_of(_mm_set_epi64x((long long)hi, (long long)lo)) != 0;
#else
    for (size_t i = 0; i < len; i++)
        if (must_escape((unsigned char)ptr[i]))
            return true;
    return false;
#endif
}

/* A name's token length: "" for an empty one, its bytes for a clean one
 * (the usual case, told by has_special), else with each special byte as
 * "%XX". */
static inline __attribute__((always_inline)) size_t
escaped_len(const char *ptr, size_t len)
{
    size_t n = len;

    if (len == 0)
        return 2;
    if (!has_special(ptr, len))
        return len;
    for (size_t i = 0; i < len; i++)
        n += escape_adds[(unsigned char)ptr[i]];
    return n;
}

/* Write the token for a name into dst (room for escaped_len bytes). */
static size_t
put_escaped(char *dst, const char *ptr, size_t len)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t n = 0;

    if (len == 0) {
        dst[0] = '"';
        dst[1] = '"';
        return 2;
    }
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)ptr[i];

        if (must_escape(c)) {
            dst[n++] = '%';
            dst[n++] = hex[c >> 4];
            dst[n++] = hex[c & 0x0f];
        } else {
            dst[n++] = (char)c;
        }
    }
    return n;
}

int
lp_put_name(struct evbuffer *out, const char *ptr, size_t len)
{
    struct evbuffer_iovec vec;
    size_t need = escaped_len(ptr, len);

    if (need == len)
        return evbuffer_add(out, ptr, len);
    if (evbuffer_reserve_space(out, (ev_ssize_t)need, &vec, 1) < 1)
        return -1;
    vec.iov_len = put_escaped(vec.iov_base, ptr, len);
    return evbuffer_commit_space(out, &vec, 1);
}

/* ---- event formatting ---- */

/* Bytes a packet spec list and payload block take. */
static size_t
packets_room(const struct wire_packet *pk, uint32_t n, size_t *payload)
{
    size_t room = 0;

    *payload = 0;
    for (uint32_t i = 0; i < n; i++) {
        room += 1 + 10; /* " " LEN */
        if (pk[i].entitlements.n > 0)
            room += (size_t)pk[i].entitlements.n * 12; /* ":"/"," and -2147483648 */
        *payload += pk[i].len;
    }
    return room;
}

static inline __attribute__((always_inline)) size_t
put_packets(char *dst, const struct wire_packet *pk, uint32_t n)
{
    size_t o = 0;

    for (uint32_t i = 0; i < n; i++) {
        dst[o++] = ' ';
        o += put_u32(dst + o, pk[i].len);
        for (uint32_t k = 0; k < pk[i].entitlements.n; k++) {
            dst[o++] = k == 0 ? ':' : ',';
            o += put_i32(dst + o, pk[i].entitlements.v[k]);
        }
    }
    return o;
}

static size_t
put_lit(char *dst, const char *s)
{
    size_t n = strlen(s);

    memcpy(dst, s, n);
    return n;
}

/* " <token>", given the token's length from escaped_len: a name with
 * nothing to escape (the usual case) is copied as is. */
static inline __attribute__((always_inline)) size_t
put_name_tok(char *dst, const struct wire_str *s, size_t esc_len)
{
    dst[0] = ' ';
    if (esc_len == s->len)
        wire_copy_short(dst + 1, s->ptr, s->len);
    else
        put_escaped(dst + 1, s->ptr, s->len);
    return esc_len + 1;
}

size_t
lp_data_prefix(char *dst, const struct wire_str *feed, const struct wire_str *topic)
{
    size_t ef = escaped_len(feed->ptr, feed->len), et = escaped_len(topic->ptr, topic->len);
    size_t o;

    if (dst == NULL)
        return sizeof("DATA") - 1 + 2 + ef + et;
    o = put_lit(dst, "DATA");
    o += put_name_tok(dst + o, feed, ef);
    o += put_name_tok(dst + o, topic, et);
    return o;
}

/* What the output's last chain grows by when an item does not fit it: as
 * much as the output already holds, up to EVENT_CHUNK, so chains grow with
 * a backlog. EVENT_CHUNK leaves room for libevent's chain header and the
 * up to 4 KiB (MAX_TO_COPY_IN_EXPAND) it may copy over when it grows the
 * last chain in place: a chain is at most one 64 KiB allocation. */
#define EVENT_CHUNK ((64u << 10) - (4u << 10) - 256u)

/*
 * Room for one item, contiguous, at the output's end. A reservation of one
 * byte is the last chain's whole free space, without allocating when it
 * has any: one call where the item fits (the usual case). Else the chain
 * grows by EVENT_CHUNK's rule. Left to itself, libevent would give an item
 * that does not fit a chain of its own size rounded up to a power of two,
 * which the next item of that size no longer fits: a malloc per item. An
 * empty output gets a chain of one item's size (a session sent one event
 * per loop turn keeps no more), or of least bytes when the caller knows
 * more items follow.
 */
static int
reserve_event(struct evbuffer *out, size_t queued, size_t room, struct evbuffer_iovec *vec,
    size_t least)
{
    size_t chunk = queued > least ? queued : least;

    if (room > (size_t)EV_SSIZE_MAX)
        return -1;
    if (queued > 0 && evbuffer_reserve_space(out, 1, vec, 1) == 1 && vec->iov_len >= room)
        return 0;
    if (chunk > EVENT_CHUNK)
        chunk = EVENT_CHUNK;
    if (chunk > room && evbuffer_expand(out, chunk) != 0)
        return -1;
    return evbuffer_reserve_space(out, (ev_ssize_t)room, vec, 1) < 1 ? -1 : 0;
}

/* A DATA event's size (at most room), its prefix's length and its names'
 * escaped lengths. */
struct data_size {
    size_t room, prefix_len, eu, eh, ec;
};

/* prefix NULL: the prefix is made by put_data. Both inline in the
 * router's formatter, which runs once an event. */
static inline __attribute__((always_inline)) void
data_size(const struct wire_msg *m, const char *prefix, size_t prefix_len,
    struct data_size *z)
{
    size_t payload;

    z->prefix_len = prefix != NULL ? prefix_len : lp_data_prefix(NULL, &m->feed, &m->topic);

    z->ec =
        m->content_type.len > 0 ? escaped_len(m->content_type.ptr, m->content_type.len) : 0;
    z->eu = escaped_len(m->user.ptr, m->user.len);
    z->eh = escaped_len(m->host.ptr, m->host.len);
    z->room = z->prefix_len + sizeof(" multicast") + sizeof(" image") + 1 + 2 + z->eu +
        z->eh + packets_room(m->packets, m->n_packets, &payload) +
        (z->ec > 0 ? sizeof(" " LP_TYPE_PREFIX) + z->ec : 0);
    if (m->n_packets > 0)
        z->room += payload + 1;
}

/* The payload block: each packet's data, then a newline. */
static inline size_t
put_payload(char *d, const struct wire_packet *packets, uint32_t n_packets)
{
    size_t o = 0;

    for (uint32_t i = 0; i < n_packets; i++) {
        if (packets[i].len > 0)
            memcpy(d + o, packets[i].data, packets[i].len);
        o += packets[i].len;
    }
    d[o++] = '\n';
    return o;
}

/* The event (line and payload block) into d, which has z->room bytes; its
 * length. */
static inline __attribute__((always_inline)) size_t
put_data(char *d, const struct wire_msg *m, const char *prefix, const struct data_size *z)
{
    size_t o;

    if (prefix != NULL) {
        memcpy(d, prefix, z->prefix_len);
        o = z->prefix_len;
    } else {
        o = lp_data_prefix(d, &m->feed, &m->topic);
    }
    o += put_name_tok(d + o, &m->user, z->eu);
    o += put_name_tok(d + o, &m->host, z->eh);
    o += put_lit(d + o, m->is_image ? " image" : " delta");
    o += put_lit(d + o, m->type == WIRE_FORWARDED_UNICAST ? " unicast" : " multicast");
    if (z->ec > 0) {
        o += put_lit(d + o, " " LP_TYPE_PREFIX);
        o += put_escaped(d + o, m->content_type.ptr, m->content_type.len);
    }
    o += put_packets(d + o, m->packets, m->n_packets);
    d[o++] = '\n';
    if (m->n_packets > 0)
        o += put_payload(d + o, m->packets, m->n_packets);
    return o;
}

static bool
is_data(const struct wire_msg *m)
{
    return m->type == WIRE_FORWARDED_MULTICAST || m->type == WIRE_FORWARDED_UNICAST;
}

int
lp_format_data_flat(char *d, size_t cap, const struct wire_msg *m, const char *prefix,
    size_t prefix_len, size_t *len)
{
    struct data_size z;

    if (!is_data(m))
        return -1;
    data_size(m, prefix, prefix_len, &z);
    if (z.room > cap) {
        *len = z.room;
        return 1;
    }
    *len = put_data(d, m, prefix, &z);
    return 0;
}

int
lp_format_data(struct evbuffer *out, const struct wire_msg *m)
{
    struct evbuffer_iovec vec;
    struct data_size z;

    if (!is_data(m))
        return -1;
    data_size(m, NULL, 0, &z);
    if (reserve_event(out, evbuffer_get_length(out), z.room, &vec, 0) != 0)
        return -1;
    vec.iov_len = put_data(vec.iov_base, m, NULL, &z);
    return evbuffer_commit_space(out, &vec, 1);
}

/* A line of a verb, an optional keyword, a client id and four names. */
static int
format_id_names(struct evbuffer *out, const char *verb, const uint8_t id[WIRE_GUID_LEN],
    const struct wire_str *names[4])
{
    struct evbuffer_iovec vec;
    char idtext[GUID_TEXT_LEN + 1];
    size_t room = strlen(verb) + 1 + GUID_TEXT_LEN + 1, o, esc[4];

    for (int i = 0; i < 4; i++) {
        esc[i] = escaped_len(names[i]->ptr, names[i]->len);
        room += 1 + esc[i];
    }
    if (evbuffer_reserve_space(out, (ev_ssize_t)room, &vec, 1) < 1)
        return -1;
    guid_to_text(id, idtext);
    o = put_lit(vec.iov_base, verb);
    ((char *)vec.iov_base)[o++] = ' ';
    memcpy((char *)vec.iov_base + o, idtext, GUID_TEXT_LEN);
    o += GUID_TEXT_LEN;
    for (int i = 0; i < 4; i++)
        o += put_name_tok((char *)vec.iov_base + o, names[i], esc[i]);
    ((char *)vec.iov_base)[o++] = '\n';
    vec.iov_len = o;
    return evbuffer_commit_space(out, &vec, 1);
}

int
lp_format_notification(struct evbuffer *out, const struct wire_msg *m)
{
    const struct wire_str *names[4] = { &m->user, &m->host, &m->feed, &m->topic };

    if (m->type != WIRE_FORWARDED_SUBSCRIPTION)
        return -1;
    return format_id_names(out, m->is_add ? "NOTIFICATION add" : "NOTIFICATION remove",
        m->client_id, names);
}

int
lp_format_authreq(struct evbuffer *out, const struct wire_msg *m)
{
    const struct wire_str *names[4] = { &m->user, &m->host, &m->feed, &m->topic };

    if (m->type != WIRE_AUTHORIZATION_REQUEST)
        return -1;
    return format_id_names(out, "AUTHREQ", m->client_id, names);
}

/* Append free text on one line: control bytes become spaces. */
static int
add_text(struct evbuffer *out, const char *s, size_t n)
{
    size_t start = 0;

    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];

        if (c < 0x20 || c == 0x7f) {
            if ((i > start && evbuffer_add(out, s + start, i - start) < 0) ||
                evbuffer_add(out, " ", 1) < 0)
                return -1;
            start = i + 1;
        }
    }
    if (n > start)
        return evbuffer_add(out, s + start, n - start);
    return 0;
}

int
lp_format_bus(struct evbuffer *out, const char *state, const char *reason)
{
    if (evbuffer_add(out, "BUS ", 4) < 0 || add_text(out, state, strlen(state)) < 0)
        return -1;
    if (reason != NULL && reason[0] != '\0' &&
        (evbuffer_add(out, " ", 1) < 0 || add_text(out, reason, strlen(reason)) < 0))
        return -1;
    return evbuffer_add(out, "\n", 1);
}

int
lp_format_revoked(struct evbuffer *out, const char *verb, const char *feed, size_t feed_len,
    const char *topic, size_t topic_len, const char *reason)
{
    if (evbuffer_add_printf(out, "REVOKED %s ", verb) < 0 ||
        lp_put_name(out, feed, feed_len) < 0)
        return -1;
    if (topic != NULL &&
        (evbuffer_add(out, " ", 1) < 0 || lp_put_name(out, topic, topic_len) < 0))
        return -1;
    if (evbuffer_add(out, " ", 1) < 0 || add_text(out, reason, strlen(reason)) < 0)
        return -1;
    return evbuffer_add(out, "\n", 1);
}

int
lp_format_ok(struct evbuffer *out)
{
    return evbuffer_add(out, "+OK\n", 4);
}

int
lp_format_err(struct evbuffer *out, enum lp_error e, const char *fmt, ...)
{
    char buf[512], *text = buf;
    va_list ap;
    int n, r;

    va_start(ap, fmt);
    n = vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    if (n < 0)
        n = 0;
    if ((size_t)n >= sizeof(buf)) {
        if ((text = malloc((size_t)n + 1)) == NULL) {
            text = buf;
            n = sizeof(buf) - 1;
        } else {
            va_start(ap, fmt);
            vsnprintf(text, (size_t)n + 1, fmt, ap);
            va_end(ap);
        }
    }
    r = evbuffer_add_printf(out, "-ERR %s", lp_error_code(e)) < 0 ? -1 : 0;
    if (r == 0 && n > 0)
        r = evbuffer_add(out, " ", 1) < 0 || add_text(out, text, (size_t)n) < 0 ? -1 : 0;
    if (r == 0)
        r = evbuffer_add(out, "\n", 1);
    if (text != buf)
        free(text);
    return r;
}

int
lp_format_hello(struct evbuffer *out, const char *version, const struct lp_limits *lim,
    uint32_t max_line, const struct lp_session_limits *sl, uint64_t max_output,
    const char *bus_state)
{
    return evbuffer_add_printf(out,
               "HELLO busgate %s proto=%d max_line=%u "
               "max_payload=%u max_packets=%u max_name=%u max_entitlements=%u "
               "max_subscriptions=%u max_notifications=%u max_authorizers=%u max_output=%llu "
               "bus_protocol=%u bus=%s\n",
               version, LP_PROTOCOL_VERSION, (unsigned)max_line, (unsigned)lim->max_payload,
               (unsigned)lim->max_packets, (unsigned)lim->max_name,
               (unsigned)lim->max_entitlements, (unsigned)sl->max_subscriptions,
               (unsigned)sl->max_notifications, (unsigned)sl->max_authorizers,
               (unsigned long long)max_output, (unsigned)lim->bus_protocol, bus_state) < 0
        ? -1
        : 0;
}

/* ---- replies to PING and STATS ---- */

int
lp_format_pong(struct evbuffer *out, const char *token, size_t len)
{
    if (len == 0)
        return evbuffer_add(out, "PONG\n", 5);
    return evbuffer_add_printf(out, "PONG %.*s\n", (int)len, token) < 0 ? -1 : 0;
}

int
lp_format_stat_u64(struct evbuffer *out, const char *name, uint64_t v)
{
    return evbuffer_add_printf(out, "STAT %s %" PRIu64 "\n", name, v) < 0 ? -1 : 0;
}

int
lp_format_stat_text(struct evbuffer *out, const char *name, const char *value)
{
    if (evbuffer_add_printf(out, "STAT %s ", name) < 0)
        return -1;
    for (const char *p = value; *p != '\0'; p++)
        if (evbuffer_add(out, (unsigned char)*p < 0x20 || *p == 0x7f ? "?" : p, 1) < 0)
            return -1;
    return evbuffer_add(out, "\n", 1);
}

int
lp_format_end(struct evbuffer *out)
{
    return evbuffer_add(out, "END\n", 4);
}

/* ---- commands (client side) ---- */

/* "VERB" and, when name is not NULL, " name" escaped. */
static int
cmd_start(struct evbuffer *out, enum lp_verb verb, const char *name, size_t len)
{
    const char *v = lp_verb_name(verb);

    if (v == NULL || evbuffer_add(out, v, strlen(v)) < 0)
        return -1;
    if (name != NULL && (evbuffer_add(out, " ", 1) < 0 || lp_put_name(out, name, len) < 0))
        return -1;
    return 0;
}

/* " <client-id>" */
static int
cmd_client_id(struct evbuffer *out, const uint8_t id[WIRE_GUID_LEN])
{
    char text[GUID_TEXT_LEN + 2];

    text[0] = ' ';
    guid_to_text(id, text + 1);
    return evbuffer_add(out, text, GUID_TEXT_LEN + 1);
}

int
lp_format_cmd_names(struct evbuffer *out, enum lp_verb verb, const char *feed,
    size_t feed_len, const char *topic, size_t topic_len)
{
    if (cmd_start(out, verb, feed, feed_len) < 0)
        return -1;
    if (topic != NULL &&
        (evbuffer_add(out, " ", 1) < 0 || lp_put_name(out, topic, topic_len) < 0))
        return -1;
    return evbuffer_add(out, "\n", 1);
}

int
lp_format_cmd_authorize(struct evbuffer *out, const uint8_t client_id[WIRE_GUID_LEN],
    const char *feed, size_t feed_len, const char *topic, size_t topic_len, bool required,
    const char *ents)
{
    if (cmd_start(out, LP_AUTHORIZE, NULL, 0) < 0 || cmd_client_id(out, client_id) < 0 ||
        evbuffer_add(out, " ", 1) < 0 || lp_put_name(out, feed, feed_len) < 0 ||
        evbuffer_add(out, " ", 1) < 0 || lp_put_name(out, topic, topic_len) < 0)
        return -1;
    return evbuffer_add_printf(out, " %s%s%s\n", required ? "required" : "not-required",
               ents != NULL ? " " : "", ents != NULL ? ents : "") < 0
        ? -1
        : 0;
}

/* The bytes a message command may take (its line and payload block),
 * given the most its verb and names take. */
static size_t
message_room(size_t head_room, const char *ctype, size_t ec,
    const struct wire_packet *packets, uint32_t n_packets)
{
    size_t payload,
        room = head_room + sizeof(" image") +
        (ctype != NULL ? sizeof(" " LP_TYPE_PREFIX) + ec : 0) +
        packets_room(packets, n_packets, &payload) + 1;

    return n_packets > 0 ? room + payload + 1 : room;
}

int
lp_out_tail_settle(struct evbuffer *out, struct lp_out_tail *tail)
{
    struct evbuffer_iovec vec = { tail->base, (size_t)(tail->p - tail->base) };
    int r = vec.iov_len > 0 ? evbuffer_commit_space(out, &vec, 1) : 0;

    tail->base = tail->p = NULL;
    tail->room = tail->len = tail->added = 0;
    return r;
}

/* Where the message goes: at tail when it has room (no libevent call),
 * else a reservation, which tail then holds. NULL: out of memory. */
static char *
message_at(struct evbuffer *out, struct lp_out_tail *tail, size_t room,
    struct evbuffer_iovec *vec)
{
    size_t queued;

    if (tail == NULL)
        return reserve_event(out, evbuffer_get_length(out), room, vec, 0) == 0
            ? vec->iov_base
            : NULL;
    if (tail->base != NULL && tail->room >= room)
        return tail->p;
    if (lp_out_tail_settle(out, tail) != 0)
        return NULL;
    /* A tail is a stream of commands sent a batch at a time, each batch
     * drained whole (its chains freed): a batch's chain from the first
     * message, not one grown from a message's size by doubling (a malloc
     * and a free per step, ~7 a batch). */
    queued = evbuffer_get_length(out);
    if (reserve_event(out, queued, room, vec, EVENT_CHUNK) != 0)
        return NULL;
    tail->base = tail->p = vec->iov_base;
    tail->room = vec->iov_len;
    tail->len = queued;
    tail->added = 0;
    return tail->p;
}

/* Whether m, a PUB, names the feed and topic of the head h keeps. */
static inline bool
head_repeats(const struct lp_cmd_head *h, const struct lp_message *m)
{
    return h->len > 0 && m->client_id == NULL && m->feed_len == h->feed_len &&
        m->topic_len == h->topic_len && wire_bytes_eq(h->names, m->feed, h->feed_len) &&
        wire_bytes_eq(h->names + h->feed_len, m->topic, h->topic_len);
}

/* Keep the head (len bytes at line) of m, a PUB, in h when it fits. On
 * every miss: a publisher that turns over many topics pays these copies
 * and never hits (short names: a few loads and stores each). */
static void
head_keep(struct lp_cmd_head *h, const struct lp_message *m, const char *line, size_t len)
{
    h->len = 0;
    if (m->feed_len + m->topic_len > sizeof(h->names) || len > sizeof(h->line))
        return;
    wire_copy_short(h->names, m->feed, m->feed_len);
    wire_copy_short(h->names + m->feed_len, m->topic, m->topic_len);
    wire_copy_short(h->line, line, len);
    h->feed_len = (uint32_t)m->feed_len;
    h->topic_len = (uint32_t)m->topic_len;
    h->len = (uint32_t)len;
}

/* The verb and names of m into d; their bytes. ef and et: the names'
 * token lengths (escaped_len). */
static size_t
put_head(char *d, const struct lp_message *m, size_t ef, size_t et)
{
    const struct wire_str f = { m->feed, (uint32_t)m->feed_len },
                          t = { m->topic, (uint32_t)m->topic_len };
    size_t o;

    /* The verb, four bytes either way: PUB's fourth is overwritten by
     * the feed token's space. */
    memcpy(d, m->client_id != NULL ? "SEND" : "PUB ", 4);
    o = m->client_id != NULL ? 4 : 3;
    if (m->client_id != NULL) {
        d[o++] = ' ';
        guid_to_text(m->client_id, d + o);
        o += GUID_TEXT_LEN;
    }
    o += put_name_tok(d + o, &f, ef);
    o += put_name_tok(d + o, &t, et);
    return o;
}

/* Formatted in place at the output's end, committed whole or not at all:
 * for a pipelined client the output is the queue to the socket, and each
 * message is written once, into the space the last one left. */
int
lp_format_cmd_message_at(struct evbuffer *out, struct lp_out_tail *tail,
    const struct lp_message *m, uint32_t max_line)
{
    struct lp_cmd_head *h = tail != NULL ? &tail->head : NULL;
    bool kept = h != NULL && head_repeats(h, m);
    struct evbuffer_iovec vec;
    size_t ef = 0, et = 0, head_room, ec, o;
    char *d;

    if (m->feed_len > UINT32_MAX || m->topic_len > UINT32_MAX || m->ctype_len > UINT32_MAX)
        return -1;
    if (kept) {
        head_room = h->len;
    } else {
        ef = escaped_len(m->feed, m->feed_len);
        et = escaped_len(m->topic, m->topic_len);
        head_room = sizeof("SEND") + GUID_TEXT_LEN + 2 + ef + et;
    }
    ec = m->ctype != NULL ? escaped_len(m->ctype, m->ctype_len) : 0;
    d = message_at(out, tail,
        message_room(head_room, m->ctype, ec, m->packets, m->n_packets), &vec);
    if (d == NULL)
        return -1;
    if (kept) {
        wire_copy_short(d, h->line, h->len);
        o = h->len;
    } else {
        o = put_head(d, m, ef, et);
        /* A SEND leaves a PUB's head kept: a stream of PUBs to one topic
         * with a reply sent now and then keeps hitting it. */
        if (h != NULL && m->client_id == NULL)
            head_keep(h, m, d, o);
    }
    memcpy(d + o, m->image ? " image" : " delta", 6);
    o += 6;
    if (m->ctype != NULL) {
        o += put_lit(d + o, " " LP_TYPE_PREFIX);
        o += put_escaped(d + o, m->ctype, m->ctype_len);
    }
    o += put_packets(d + o, m->packets, m->n_packets);
    if (o > max_line)
        return LP_FORMAT_TOO_LONG; /* nothing committed; a kept head is still right */
    d[o++] = '\n';
    if (m->n_packets > 0)
        o += put_payload(d + o, m->packets, m->n_packets);
    if (tail == NULL) {
        vec.iov_len = o;
        return evbuffer_commit_space(out, &vec, 1);
    }
    tail->p += o;
    tail->room -= o;
    tail->len += o;
    tail->added = o;
    return 0;
}

int
lp_format_cmd_message(struct evbuffer *out, const uint8_t *client_id, const char *feed,
    size_t feed_len, const char *topic, size_t topic_len, bool image, const char *ctype,
    size_t ctype_len, const struct wire_packet *packets, uint32_t n_packets,
    uint32_t max_line)
{
    const struct lp_message m = { client_id, feed, topic, feed_len, topic_len, image, ctype,
        ctype_len, packets, n_packets };

    return lp_format_cmd_message_at(out, NULL, &m, max_line);
}

bool
lp_is_word(const char *s)
{
    if (*s == '\0')
        return false;
    for (; *s != '\0'; s++)
        if (must_escape((unsigned char)*s))
            return false;
    return true;
}

int
lp_format_cmd(struct evbuffer *out, enum lp_verb verb, const char *arg)
{
    if (arg != NULL && !lp_is_word(arg))
        return -1;
    if (cmd_start(out, verb, NULL, 0) < 0)
        return -1;
    if (arg != NULL &&
        (evbuffer_add(out, " ", 1) < 0 || evbuffer_add(out, arg, strlen(arg)) < 0))
        return -1;
    return evbuffer_add(out, "\n", 1);
}
