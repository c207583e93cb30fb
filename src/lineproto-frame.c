/*
 * The line protocol's framer: "line, then a byte-counted payload block and
 * its newline" over an evbuffer, in both directions (commands to the daemon,
 * events from it). Pure: no I/O, no parsing of the line itself, no replies.
 * The caller parses each line and says whether a payload follows and
 * whether to deliver or skip it, as hiredis's redisReader separates reading
 * replies from the socket. Items point into the evbuffer (one pullup, no
 * copy) and stay valid until lp_framer_consume or the next lp_framer_next.
 */
#include <string.h>

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
}

static void
framer_drain(struct lp_framer *f, struct evbuffer *in, size_t n)
{
    evbuffer_drain(in, n);
    f->bytes += n;
    f->scanned = 0;
}

void
lp_framer_consume(struct lp_framer *f, struct evbuffer *in)
{
    if (f->pending > 0) {
        framer_drain(f, in, f->pending);
        f->pending = 0;
    }
}

void
lp_framer_extend(struct lp_framer *f, size_t n)
{
    f->pending += n;
}

void
lp_framer_payload(struct lp_framer *f, uint64_t len, bool deliver)
{
    f->need = len;
    f->state = deliver ? LP_FRAMER_PAYLOAD : LP_FRAMER_SKIP_PAYLOAD;
}

static enum lp_frame_kind
framer_item(struct lp_framer *f, struct lp_frame *fr, enum lp_frame_kind kind,
    const void *data, size_t len, size_t consumed)
{
    fr->kind = kind;
    fr->data = data;
    fr->len = len;
    f->pending = consumed;
    return kind;
}

/* LINE: a line within max_line, or an over-long one. Room for max_line
 * bytes plus "\r\n" is searched, never further. */
static enum lp_frame_kind
framer_line(struct lp_framer *f, struct evbuffer *in, struct lp_frame *fr)
{
    size_t len = evbuffer_get_length(in), limit = (size_t)f->max_line + 2;
    size_t window = len < limit ? len : limit, n, content, first;
    struct evbuffer_ptr start, end, nl;
    const char *line, *nlp;

    if (len <= f->scanned)
        return LP_FRAME_MORE;
    /* Most lines lie whole in the first chunk: one memchr there, no
     * evbuffer search. */
    if ((first = evbuffer_get_contiguous_space(in)) > f->scanned &&
        (line = (const char *)evbuffer_pullup(in, (ev_ssize_t)first)) != NULL &&
        (nlp = memchr(line + f->scanned, '\n', (first < window ? first : window) - f->scanned)) !=
            NULL) {
        n = (size_t)(nlp - line);
        content = n > 0 && line[n - 1] == '\r' ? n - 1 : n;
        if (content > f->max_line)
            return framer_item(f, fr, LP_FRAME_LINE_TOO_LONG, NULL, 0, n + 1);
        return framer_item(f, fr, LP_FRAME_LINE, line, n, n + 1);
    }
    evbuffer_ptr_set(in, &start, f->scanned, EVBUFFER_PTR_SET);
    evbuffer_ptr_set(in, &end, window, EVBUFFER_PTR_SET);
    nl = evbuffer_search_range(in, "\n", 1, &start, &end);
    if (nl.pos < 0) {
        if (len < limit) {
            f->scanned = len; /* a long line arriving in pieces is scanned once */
            return LP_FRAME_MORE;
        }
        /* Only the window is known to be newline-free: the rest of the
         * line is discarded by SKIP_LINE. */
        fr->skipping = true;
        f->state = LP_FRAMER_SKIP_LINE;
        return framer_item(f, fr, LP_FRAME_LINE_TOO_LONG, NULL, 0, window);
    }
    n = (size_t)nl.pos;
    if ((line = (const char *)evbuffer_pullup(in, (ev_ssize_t)n + 1)) == NULL)
        return LP_FRAME_MORE;
    content = n > 0 && line[n - 1] == '\r' ? n - 1 : n;
    if (content > f->max_line) {
        return framer_item(f, fr, LP_FRAME_LINE_TOO_LONG, NULL, 0, n + 1);
    }
    return framer_item(f, fr, LP_FRAME_LINE, line, n, n + 1);
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

/* PAYLOAD: the whole block and its terminator, in one pullup. */
static enum lp_frame_kind
framer_payload(struct lp_framer *f, struct evbuffer *in, struct lp_frame *fr)
{
    size_t len = evbuffer_get_length(in), need = (size_t)f->need, pull;
    const unsigned char *p;
    int term;

    if (len < need + 1)
        return LP_FRAME_MORE;
    pull = len >= need + 2 ? need + 2 : need + 1;
    if ((p = evbuffer_pullup(in, (ev_ssize_t)pull)) == NULL)
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
static bool
framer_skip_payload(struct lp_framer *f, struct evbuffer *in, struct lp_frame *fr,
    enum lp_frame_kind *kind)
{
    size_t len = evbuffer_get_length(in), n;
    const unsigned char *p;
    int term;

    if (f->need > 0) {
        n = len < f->need ? len : (size_t)f->need;
        framer_drain(f, in, n);
        f->need -= n;
        len -= n;
        if (f->need > 0)
            return false;
    }
    if (len == 0)
        return false;
    p = evbuffer_pullup(in, len >= 2 ? 2 : 1);
    if ((term = framer_terminator(p, len >= 2 ? 2 : 1)) == 0)
        return false;
    if (term < 0) {
        fr->skipping = true;
        f->state = LP_FRAMER_SKIP_LINE;
        *kind = framer_item(f, fr, LP_FRAME_BAD_TERMINATOR, NULL, 0, 0);
        return true;
    }
    framer_drain(f, in, (size_t)term);
    f->state = LP_FRAMER_LINE;
    return true;
}

/* SKIP_LINE: discard up to and including the next newline. */
static bool
framer_skip_line(struct lp_framer *f, struct evbuffer *in)
{
    struct evbuffer_ptr nl = evbuffer_search(in, "\n", 1, NULL);

    if (nl.pos < 0) {
        framer_drain(f, in, evbuffer_get_length(in));
        return false;
    }
    framer_drain(f, in, (size_t)nl.pos + 1);
    f->state = LP_FRAMER_LINE;
    return true;
}

enum lp_frame_kind
lp_framer_next(struct lp_framer *f, struct evbuffer *in, struct lp_frame *fr)
{
    enum lp_frame_kind kind = LP_FRAME_MORE;

    *fr = (struct lp_frame){ .kind = LP_FRAME_MORE };
    lp_framer_consume(f, in);
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
