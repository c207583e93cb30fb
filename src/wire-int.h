/*
 * Private to wire.c and wire-auth.c (the public face is wire.h): the
 * cursor both decoders read with, and the helpers they share.
 */
#ifndef BUSGATE_WIRE_INT_H
#define BUSGATE_WIRE_INT_H

#include <stddef.h>
#include <stdint.h>

#include <event2/buffer.h>

#include "wire.h"

/* struct wire_cursor: in wire.h (struct wire_reader holds one). */

enum wire_count {
    WC_STRING,
    WC_PAYLOAD,
    WC_ENTITLEMENTS,
    WC_PACKETS,
};

enum wire_result wire_fail(const char **cause, const char *fmt, ...)
    __attribute__((format(printf, 2, 3), cold));
uint8_t *wire_put_be32(uint8_t *p, uint32_t v);
uint8_t *wire_put_bytes(uint8_t *p, const void *src, size_t len);
/* One reservation of the exact size, then its commit. */
uint8_t *wire_reserve(struct evbuffer *out, uint64_t size, struct evbuffer_iovec *vec);
int wire_commit(struct evbuffer *out, struct evbuffer_iovec *vec, uint64_t size);
/* The cold half of wire_cursor_claim: an error past max, else need-more. */
/* Out of line and cold: the decoders inline every claim and count, and
 * only their fast halves belong in the walk's code. */
enum wire_result wire_claim_short(uint64_t off, uint64_t n, uint64_t max,
    const char **cause) __attribute__((cold, noinline));

/*
 * Claim the next n bytes of the message: an error if the message would
 * then exceed its limit (so an oversized message is refused as early as
 * possible), need-more if they are not in the window (c->need then says
 * how far it must reach).
 */
static inline __attribute__((always_inline)) enum wire_result
wire_cursor_claim(struct wire_cursor *c, uint64_t n, const char **cause)
{
    enum wire_result r;

    if (n <= c->stop - c->off)
        return WIRE_DECODED;
    if ((r = wire_claim_short(c->off, n, c->max, cause)) == WIRE_NEED_MORE)
        c->need = c->off + n;
    return r;
}

/* A refused count: negative, or over limit. where and field name what
 * was being read (a message type's name or "authentication", and the
 * field's), for the error text. */
enum wire_result
wire_bad_count(enum wire_count what, uint32_t raw, uint32_t limit, const char *where,
    const char *field, const char **cause) __attribute__((cold, noinline));

/* Read a 4-byte length or count; refuse it if negative or over limit.
 * where and field are for the error text only (wire_bad_count). */
static inline __attribute__((always_inline)) enum wire_result
wire_cursor_count(struct wire_cursor *c, enum wire_count what, uint32_t limit,
    const char *where, const char *field, uint32_t *out, const char **cause)
{
    enum wire_result r;
    const uint8_t *q;
    uint32_t raw;

    if ((r = wire_cursor_claim(c, 4, cause)) != WIRE_DECODED)
        return r;
    q = c->p + c->off;
    raw = (uint32_t)q[0] << 24 | (uint32_t)q[1] << 16 | (uint32_t)q[2] << 8 | q[3];
    c->off += 4;
    /* A negative count is above INT32_MAX as unsigned. */
    if (raw > limit || raw > (uint32_t)INT32_MAX)
        return wire_bad_count(what, raw, limit, where, field, cause);
    *out = raw;
    return WIRE_DECODED;
}

/* Walks one item at the cursor, claiming each part before reading it. */
typedef enum wire_result (
    *wire_scan_fn)(struct wire_cursor *c, void *arg, const char **cause);

/* Run scan over the front of in (max: the item's size limit), widening
 * the window as it needs; on WIRE_DECODED the item is c->p[0..c->off),
 * contiguous, and nothing is consumed. */
enum wire_result wire_window_scan(struct evbuffer *in, uint32_t max, wire_scan_fn scan,
    void *arg, struct wire_cursor *c, const char **cause);

#endif /* BUSGATE_WIRE_INT_H */
