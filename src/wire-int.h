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

/*
 * Reads go through the contiguous segment (chain) holding the current
 * offset, so most field reads are a memcpy; skips are arithmetic, and
 * moving to a later chain walks forward from the current one.
 */
struct wire_cursor {
    struct evbuffer *buf;
    struct evbuffer_ptr seg_ptr; /* where seg starts in buf */
    const uint8_t *seg;          /* NULL until the first read */
    size_t seg_len;
    uint64_t seg_off; /* offset of seg from the buffer start */
    uint64_t off;     /* bytes walked from the message start */
    uint64_t avail;   /* bytes in buf */
    uint64_t max;     /* the whole-message limit */
};

/* Names the field being read, for error messages. */
struct wire_where {
    const char *what; /* message type name, or "authentication" */
    const char *field;
};

enum wire_count {
    WC_STRING,
    WC_PAYLOAD,
    WC_ENTITLEMENTS,
    WC_PACKETS,
};

enum wire_result
wire_fail(const char **cause, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
uint8_t *wire_put_be32(uint8_t *p, uint32_t v);
uint8_t *wire_put_bytes(uint8_t *p, const void *src, size_t len);
/* One reservation of the exact size, then its commit. */
uint8_t *wire_reserve(struct evbuffer *out, uint64_t size, struct evbuffer_iovec *vec);
int wire_commit(struct evbuffer *out, struct evbuffer_iovec *vec, uint64_t size);
void wire_cursor_init(struct wire_cursor *c, struct evbuffer *buf, uint32_t max);
enum wire_result wire_cursor_claim(struct wire_cursor *c, uint64_t n, const char **cause);
enum wire_result
wire_scan_count(struct wire_cursor *c, enum wire_count what, uint32_t limit, unsigned unit,
    const struct wire_where *at, uint32_t *out, const char **cause);

#endif /* BUSGATE_WIRE_INT_H */
