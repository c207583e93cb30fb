/*
 * The line protocol's framer: "line, then a byte-counted payload block and
 * its newline" over an evbuffer, in both directions (commands to the daemon,
 * events from it). Pure: no I/O, no parsing of the line itself, no replies.
 * The caller parses each line and says whether a payload follows and
 * whether to deliver or skip it, as hiredis's redisReader separates reading
 * replies from the socket. Items point into the evbuffer (no copy unless
 * one spans chains) and stay valid until lp_framer_consume or the next
 * lp_framer_next. The bytes of delivered items are drained together, at
 * lp_framer_consume or when more input is needed, not one item at a
 * time: a batch of commands costs one drain.
 */
#include <string.h>
#include <sys/types.h>

#include <event2/buffer.h>

#include "lineproto.h"

void
lp_framer_init(struct lp_framer *f, uint32_t max_line)
{
    f->state = LP_FRAMER_LINE;
    f->max_line = max_line;
    f->need = 0;
    f->pending = 0;
    f->scanned = 0;
    f->bytes = 0;
    f->chain = NULL;
    f->chain_len = 0;
    f->chain_total = 0;
}

/* Drain the items already delivered. */
static void
framer_settle(struct lp_framer *f, struct evbuffer *in)
{
    if (f->pending > 0) {
        evbuffer_drain(in, f->pending);
        f->pending = 0;
        f->chain_len = 0;
    }
}

/* Discard n bytes that are no item (a skipped line or payload). */
static void
framer_discard(struct lp_framer *f, struct evbuffer *in, size_t n)
{
    framer_settle(f, in);
    evbuffer_drain(in, n);
    f->chain_len = 0;
    f->bytes += n;
}

/* The end of a batch: what was delivered is drained, and the chain is
 * peeked afresh next time. The caller now reads into the buffer, and
 * reserving space can move its bytes without changing its length (the
 * check of framer_chain), so the cache lives within a batch only. */
static void __attribute__((noinline)) framer_yield(struct lp_framer *f, struct evbuffer *in)
{
    framer_settle(f, in);
    f->chain_len = 0;
}

void
lp_framer_consume(struct lp_framer *f, struct evbuffer *in)
{
    framer_yield(f, in);
}

/* lp_framer_line_with's slow half: the n bytes are not all in the chain
 * the line was found in. */
const char *
lp_framer_line_pull(struct lp_framer *f, struct evbuffer *in, struct lp_frame *fr, size_t n)
{
    size_t line = fr->len + 1, start = f->pending - line; /* the last item delivered */
    const unsigned char *p;

    if (evbuffer_get_length(in) < f->pending + n)
        return NULL;
    /* The items before the line are no longer valid (lp_framer_next has
     * returned since): drained first, the pullup copies the line and its
     * n bytes, not every item of the chain in front of them as well. */
    if (start > 0) {
        evbuffer_drain(in, start);
        f->pending = line;
    }
    f->chain_len = 0;
    if ((p = evbuffer_pullup(in, (ev_ssize_t)(line + n))) == NULL)
        return NULL;
    fr->data = p; /* the chain it was in may be gone */
    return (const char *)p;
}

void
lp_framer_payload(struct lp_framer *f, uint64_t len, bool deliver)
{
    f->need = len;
    f->state = deliver ? LP_FRAMER_PAYLOAD : LP_FRAMER_SKIP_PAYLOAD;
}

/* An item of len bytes at data, whose consumed bytes follow the items
 * already delivered (drained together, at consume or when more input is
 * needed). */
static enum lp_frame_kind
framer_item(struct lp_framer *f, struct lp_frame *fr, enum lp_frame_kind kind,
    const void *data, size_t len, size_t consumed)
{
    fr->kind = kind;
    fr->data = data;
    fr->len = len;
    f->pending += consumed;
    f->bytes += consumed;
    f->scanned = 0;
    return kind;
}

/* The buffer's first chain (its length 0 when the buffer is empty): where
 * the items normally lie, read without copying. Within a batch the
 * caller only adds to the buffer, and only the framer drains it: while
 * its length (total) is unchanged, the chain last peeked still holds. */
static void __attribute__((noinline))
framer_peek(struct lp_framer *f, struct evbuffer *in, size_t total)
{
    struct evbuffer_iovec v;

    if (evbuffer_peek(in, -1, NULL, &v, 1) < 1)
        v.iov_len = 0;
    f->chain = v.iov_base;
    f->chain_len = v.iov_len;
    f->chain_total = total;
}

static inline void
framer_chain(struct lp_framer *f, struct evbuffer *in, size_t total,
    struct evbuffer_iovec *v)
{
    if (f->chain_len == 0 || f->chain_total != total)
        framer_peek(f, in, total);
    v->iov_base = (void *)(uintptr_t)f->chain;
    v->iov_len = f->chain_len;
}

/*
 * The n bytes after the delivered items, contiguous: where they lie in the
 * first chain v (the common case: reads are large), else pulled up into
 * one chain, after draining what was delivered.
 */
static const unsigned char *__attribute__((noinline))
framer_pull(struct lp_framer *f, struct evbuffer *in, size_t n)
{
    framer_settle(f, in);
    f->chain_len = 0;
    return evbuffer_pullup(in, (ev_ssize_t)n);
}

static inline const unsigned char *
framer_bytes(struct lp_framer *f, struct evbuffer *in, const struct evbuffer_iovec *v,
    size_t n)
{
    if (v->iov_len >= f->pending + n)
        return (const unsigned char *)v->iov_base + f->pending;
    return framer_pull(f, in, n);
}

/* Where the first newline is in the first len bytes after the delivered
 * items, from f->scanned on, beyond the first chain (rare: a line across
 * chains). -1 if there is none. */
static ssize_t
framer_search_rest(struct lp_framer *f, struct evbuffer *in, size_t len)
{
    struct evbuffer_ptr start, end, nl;

    evbuffer_ptr_set(in, &start, f->pending + f->scanned, EVBUFFER_PTR_SET);
    /* A window to the buffer's end needs no end pointer: setting one
     * walks every chain up to it, which for a long buffer (events queued
     * by a blocking call, thousands of chains) cost more than the search. */
    if (f->pending + len == evbuffer_get_length(in)) {
        nl = evbuffer_search_range(in, "\n", 1, &start, NULL);
    } else {
        evbuffer_ptr_set(in, &end, f->pending + len, EVBUFFER_PTR_SET);
        nl = evbuffer_search_range(in, "\n", 1, &start, &end);
    }
    return nl.pos < 0 ? -1 : (ssize_t)(nl.pos - f->pending);
}

/* The line of n bytes (and its newline) at line: LINE, or LINE_TOO_LONG
 * when it is over max_line without its "\r". Inline: a call here would
 * cost the usual line more than the item itself. */
static inline __attribute__((always_inline)) enum lp_frame_kind
framer_line_item(struct lp_framer *f, struct lp_frame *fr, const char *line, size_t n)
{
    size_t content = n > 0 && line[n - 1] == '\r' ? n - 1 : n;

    if (content > f->max_line)
        return framer_item(f, fr, LP_FRAME_LINE_TOO_LONG, line,
            n < LP_FRAME_HEAD ? n : LP_FRAME_HEAD, n + 1);
    return framer_item(f, fr, LP_FRAME_LINE, line, n, n + 1);
}

/* LINE when the part of the window in the first chain holds no newline
 * (end: that part's length): the window's rest is searched, or more input
 * is awaited, or the line is too long. Out of line: the first chain nearly
 * always holds the line, and this half's state would cost that case its
 * registers. */
static enum lp_frame_kind __attribute__((noinline)) framer_line_beyond(struct lp_framer *f,
    struct evbuffer *in, struct lp_frame *fr, size_t end)
{
    size_t len = f->chain_total - f->pending, limit = (size_t)f->max_line + 2;
    size_t window = len < limit ? len : limit, n;
    struct evbuffer_iovec v = { (void *)(uintptr_t)f->chain, f->chain_len };
    const char *line;
    ssize_t nl = -1;

    if (end > f->scanned)
        f->scanned = end;
    if (window > f->scanned)
        nl = framer_search_rest(f, in, window);
    if (nl < 0) {
        if (len < limit) {
            f->scanned = len; /* a long line arriving in pieces is scanned once */
            return LP_FRAME_MORE;
        }
        /* Only the window is known to be newline-free: the rest of the
         * line is discarded by SKIP_LINE. */
        fr->skipping = true;
        f->state = LP_FRAMER_SKIP_LINE;
        n = window < LP_FRAME_HEAD ? window : LP_FRAME_HEAD;
        line = (const char *)framer_bytes(f, in, &v, n);
        return framer_item(f, fr, LP_FRAME_LINE_TOO_LONG, line, line != NULL ? n : 0,
            window);
    }
    n = (size_t)nl;
    if ((line = (const char *)framer_bytes(f, in, &v, n + 1)) == NULL)
        return LP_FRAME_MORE;
    return framer_line_item(f, fr, line, n);
}

/* LINE, when lp_framer_next's look at the chain last peeked found no
 * line within max_line: an over-long one, or the buffer's first chain
 * peeked afresh (it grew, or this is a new batch), or the rest of the
 * window beyond it. Room for max_line bytes plus "\r\n" is searched,
 * never further: here the part of it in the first chain (a memchr, from
 * where lp_framer_next's ended), by framer_line_beyond the rest. */
static inline enum lp_frame_kind
framer_line(struct lp_framer *f, struct evbuffer *in, struct lp_frame *fr)
{
    size_t total = evbuffer_get_length(in), end;
    struct evbuffer_iovec v;
    const char *p;

    if (total - f->pending <= f->scanned)
        return LP_FRAME_MORE;
    /* The chain lies within the buffer: its part after the delivered
     * items is no longer than what is buffered after them. */
    framer_chain(f, in, total, &v);
    if ((p = lp_framer_chain_nl(f, &end)) != NULL) {
        const char *base = (const char *)v.iov_base + f->pending;

        return framer_line_item(f, fr, base, (size_t)(p - base));
    }
    return framer_line_beyond(f, in, fr, end);
}

/* The terminator at p[0..avail): bytes of "\n" or "\r\n", 0 when more
 * input is needed, -1 when it is something else. */
static int
framer_terminator(const unsigned char *p, size_t avail)
{
    if (p[0] == '\n')
        return 1;
    if (p[0] != '\r')
        return -1;
    if (avail < 2)
        return 0;
    return p[1] == '\n' ? 2 : -1;
}

/* PAYLOAD: the whole block and its terminator, contiguous. */
static enum lp_frame_kind __attribute__((noinline))
framer_payload(struct lp_framer *f, struct evbuffer *in, struct lp_frame *fr)
{
    size_t total = evbuffer_get_length(in), len = total - f->pending;
    size_t need = (size_t)f->need, pull;
    struct evbuffer_iovec v;
    const unsigned char *p;
    int term;

    if (len < need + 1)
        return LP_FRAME_MORE;
    pull = len >= need + 2 ? need + 2 : need + 1;
    framer_chain(f, in, total, &v);
    if ((p = framer_bytes(f, in, &v, pull)) == NULL)
        return LP_FRAME_MORE;
    if ((term = framer_terminator(p + need, pull - need)) == 0)
        return LP_FRAME_MORE;
    if (term < 0) {
        f->state = LP_FRAMER_SKIP_LINE;
        return framer_item(f, fr, LP_FRAME_BAD_TERMINATOR, NULL, need, need);
    }
    f->state = LP_FRAMER_LINE;
    return framer_item(f, fr, LP_FRAME_PAYLOAD, p, need, need + (size_t)term);
}

/* SKIP_PAYLOAD: drain a refused payload as it arrives, then its
 * terminator. Returns true when the state moved on. */
static bool __attribute__((noinline)) framer_skip_payload(struct lp_framer *f,
    struct evbuffer *in, struct lp_frame *fr, enum lp_frame_kind *kind)
{
    size_t len, n;
    const unsigned char *p;
    int term;

    framer_settle(f, in);
    len = evbuffer_get_length(in);
    if (f->need > 0) {
        n = len < f->need ? len : (size_t)f->need;
        framer_discard(f, in, n);
        f->need -= n;
        len -= n;
        if (f->need > 0)
            return false;
    }
    if (len == 0)
        return false;
    f->chain_len = 0;
    p = evbuffer_pullup(in, len >= 2 ? 2 : 1);
    if ((term = framer_terminator(p, len >= 2 ? 2 : 1)) == 0)
        return false;
    if (term < 0) {
        fr->skipping = true;
        f->state = LP_FRAMER_SKIP_LINE;
        *kind = framer_item(f, fr, LP_FRAME_BAD_TERMINATOR, NULL, 0, 0);
        return true;
    }
    framer_discard(f, in, (size_t)term);
    f->state = LP_FRAMER_LINE;
    return true;
}

/* SKIP_LINE: discard up to and including the next newline. */
static bool __attribute__((noinline))
framer_skip_line(struct lp_framer *f, struct evbuffer *in)
{
    struct evbuffer_ptr nl;

    framer_settle(f, in);
    nl = evbuffer_search(in, "\n", 1, NULL);
    f->scanned = 0;
    if (nl.pos < 0) {
        framer_discard(f, in, evbuffer_get_length(in));
        return false;
    }
    framer_discard(f, in, (size_t)nl.pos + 1);
    f->state = LP_FRAMER_LINE;
    return true;
}

/* The next item, or MORE, in any state but LINE. */
static enum lp_frame_kind __attribute__((noinline))
framer_next(struct lp_framer *f, struct evbuffer *in, struct lp_frame *fr)
{
    enum lp_frame_kind kind = LP_FRAME_MORE;

    for (;;) {
        switch (f->state) {
        case LP_FRAMER_LINE:
            return framer_line(f, in, fr);
        case LP_FRAMER_PAYLOAD:
            return framer_payload(f, in, fr);
        case LP_FRAMER_SKIP_PAYLOAD:
            if (!framer_skip_payload(f, in, fr, &kind))
                return LP_FRAME_MORE;
            if (kind != LP_FRAME_MORE)
                return kind;
            break;
        case LP_FRAMER_SKIP_LINE:
            if (!framer_skip_line(f, in))
                return LP_FRAME_MORE;
            break;
        }
    }
}

enum lp_frame_kind
lp_framer_next_slow(struct lp_framer *f, struct evbuffer *in, struct lp_frame *fr)
{
    enum lp_frame_kind kind;

    *fr = (struct lp_frame){ .kind = LP_FRAME_MORE };
    kind = f->state == LP_FRAMER_LINE ? framer_line(f, in, fr) : framer_next(f, in, fr);
    if (kind == LP_FRAME_MORE)
        framer_yield(f, in); /* the buffer holds just what is still due */
    return kind;
}
