/*
 * Private to the lineproto*.c files (the public face is lineproto.h): what
 * the command parser, the event parser and the formatters share.
 */
#ifndef BUSGATE_LINEPROTO_INT_H
#define BUSGATE_LINEPROTO_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "wire.h"

/* Bytes a name token must carry as %XX: they would break tokenising or
 * framing, or (") collide with the empty-name token. */
static inline bool
must_escape(unsigned char c)
{
    return c <= 0x20 || c == 0x7f || c == '%' || c == '"';
}

/* ---- special bytes ---- */

/*
 * Where a line's special bytes are (those must_escape names: separators,
 * controls, '%', '"', DEL), 64 at a time, so that a tokenizer goes from
 * one to the next instead of testing every byte: in a clean line they are
 * just the separators. The spaces come apart from the others, so that a
 * line of clean tokens one space apart is told by its masks alone. SSE2
 * (every x86-64) tests 16 bytes in a few instructions (a block's last ones
 * by an overlapping load); elsewhere, and in a line under 16 bytes, a byte
 * at a time.
 */
#if defined(__SSE2__)
/* Bit i: byte i of x is special but not a space; *spaces: it is a space. */
static inline uint32_t
specials16_of(__m128i x, uint32_t *spaces)
{
    /* Below ' ' (the controls), not below or at it: the space apart. */
    const __m128i low = _mm_cmpeq_epi8(_mm_min_epu8(x, _mm_set1_epi8(0x1f)), x);

    *spaces = (uint32_t)_mm_movemask_epi8(_mm_cmpeq_epi8(x, _mm_set1_epi8(' ')));
    return (uint32_t)_mm_movemask_epi8(
        _mm_or_si128(_mm_or_si128(low, _mm_cmpeq_epi8(x, _mm_set1_epi8('%'))),
            _mm_or_si128(_mm_cmpeq_epi8(x, _mm_set1_epi8('"')),
                _mm_cmpeq_epi8(x, _mm_set1_epi8(0x7f)))));
}

/* The same for the 16 bytes at p. */
static inline uint32_t
specials16(const char *p, uint32_t *spaces)
{
    return specials16_of(_mm_loadu_si128((const __m128i *)(const void *)p), spaces);
}
#endif

/* Bit i: p[i] is special but not a space, or p + i is at or past end (so
 * a walk of the bits stops at end), for the 64 bytes at p; *spaces: the
 * spaces among them. Straight code: the blocks of 16 that fit whole, then
 * the last 16 bytes, overlapping (no loop to count, no byte loop); under
 * 16 bytes (a short command), a zeroed copy of them. */
static inline __attribute__((always_inline)) uint64_t
specials_block(const char *p, const char *end, uint64_t *spaces)
{
    size_t n = end - p < 64 ? (size_t)(end - p) : 64;
    uint64_t m = n < 64 ? ~0ull << n : 0, s = 0;

#if defined(__SSE2__)
    uint32_t sp;

    if (n < 16) { /* zeros after the bytes: controls, and past end anyway */
        char tail[16] = { 0 };

        wire_copy_short(tail, p, n);
        m |= specials16(tail, &sp);
        *spaces = sp;
        return m;
    }
    m |= specials16(p, &sp);
    s |= sp;
    if (n > 32) {
        m |= (uint64_t)specials16(p + 16, &sp) << 16;
        s |= (uint64_t)sp << 16;
    }
    if (n > 48) {
        m |= (uint64_t)specials16(p + 32, &sp) << 32;
        s |= (uint64_t)sp << 32;
    }
    m |= (uint64_t)specials16(p + n - 16, &sp) << (n - 16);
    *spaces = s | (uint64_t)sp << (n - 16);
    return m;
#else
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p[i];

        s |= (uint64_t)(c == ' ') << i;
        m |= (uint64_t)(c != ' ' && must_escape(c)) << i;
    }
    *spaces = s;
    return m;
#endif
}

/* ---- tokens (lineproto.c and lineproto-event.c; inline: the hot path) ---- */

static inline bool
is_sep(char c)
{
    /* Most bytes are above ' ': one compare decides for them. */
    return (unsigned char)c <= ' ' && (c == ' ' || c == '\t');
}

struct tok {
    const char *p;
    size_t n;
};

/* Past the separators at *pp: false (*pp at end) when no token is left. */
static inline bool
skip_seps(const char **pp, const char *end)
{
    const char *p = *pp;

    while (p < end && is_sep(*p))
        p++;
    *pp = p;
    return p < end;
}

/* Where the token at p ends: the next separator, or end. */
static inline const char *
token_end(const char *p, const char *end)
{
    while (p < end && !is_sep(*p))
        p++;
    return p;
}

static inline bool
next_token(const char **pp, const char *end, struct tok *t)
{
    if (!skip_seps(pp, end))
        return false;
    t->p = *pp;
    *pp = token_end(*pp, end);
    t->n = (size_t)(*pp - t->p);
    return true;
}

/*
 * special_tokens for the usual line: tokens with no special byte, one
 * space apart (one may lead), the wanted ones or the line's end within
 * the first 64 bytes; other: the block's special bytes but spaces, and
 * its end; sp: its spaces. The tokens are cut at the spaces' bits, the
 * loop unrolled (want is a constant where it matters), and then checked
 * at once from the masks: no empty token (two cuts in a row), the last
 * one ending at a space or at the line's end, not at a byte to decode.
 * 0 when the line is otherwise; special_tokens' walk then takes it from
 * the start.
 */
static inline __attribute__((always_inline)) size_t
spaced_tokens(const char **pp, const char *end, uint64_t other, uint64_t sp, struct tok *t,
    bool *clean, size_t want)
{
    const char *p = *pp;
    size_t lead = (size_t)(sp & 1), from = lead, b = 0, i;
    /* The first byte that is neither clean nor a space (bit 63 when the
     * 64 bytes are all clean: cut there, and left to the walk). */
    size_t stop = other != 0 ? (size_t)__builtin_ctzll(other) : 63;
    const uint64_t cuts = (sp & ~(uint64_t)lead & ((1ull << stop) - 1)) | 1ull << stop;
    uint64_t left = cuts, empty;

#pragma GCC unroll 8
    for (i = 0; i < want; i++) { /* left holds stop until the break */
        b = (size_t)__builtin_ctzll(left);
        left &= left - 1;
        t[i].p = p + from;
        t[i].n = b - from;
        clean[i] = true;
        from = b + 1;
        if (b >= stop)
            break;
    }
    /* An empty token among them: a cut right after another, or at the
     * first token's start (in a usual line none at all: one test). */
    if ((empty = cuts & (cuts << 1 | 1ull << lead)) != 0 &&
        (size_t)__builtin_ctzll(empty) <= b)
        return 0;
    if (i < want) { /* the last token ran to stop */
        if (p + stop < end)
            return 0; /* a byte to decode or refuse, a tab...: the walk */
        *pp = end;
        return i + 1;
    }
    *pp = p + b + 1;
    return want;
}

/*
 * Up to want tokens from *pp, each with whether it is clean (nothing to
 * decode: what matters for a name). The special bytes are walked one to
 * the next, by the bits of their mask: in a clean line those are just the
 * separators, so a token costs one step whatever its length. *pp ends
 * past the separator after the last token taken (the next one nearly
 * always starts right there). Returns how many were found.
 */
static inline __attribute__((always_inline)) size_t
special_tokens(const char **pp, const char *end, struct tok *t, bool *clean, size_t want)
{
    const char *blk = *pp, *start = *pp, *s;
    struct tok *const t0 = t, *const t_end = t + want;
    uint64_t m, sp;
    size_t n;
    bool cl = true;

    if (want == 0)
        return 0;
    m = specials_block(blk, end, &sp);
    if ((n = spaced_tokens(pp, end, m, sp, t, clean, want)) > 0)
        return n;
    m |= sp;
    for (;;) {
        while (m == 0) { /* 64 bytes of one token: the next 64 */
            blk += 64;
            m = specials_block(blk, end, &sp) | sp;
        }
        s = blk + __builtin_ctzll(m);
        m &= m - 1;
        if (s >= end)
            break;
        /* A space (nearly every special byte) tested first: one compare. */
        if (*s != ' ' && *s != '\t') {
            cl = false; /* a byte to decode, or to refuse */
            continue;
        }
        if (s > start) {
            t->p = start;
            t->n = (size_t)(s - start);
            *clean++ = cl;
            if (++t == t_end)
                break;
        }
        start = s + 1;
        cl = true;
    }
    if (s >= end && end > start && t < t_end) { /* the last token, up to end */
        t->p = start;
        t->n = (size_t)(end - start);
        *clean = cl;
        t++;
    }
    *pp = s < end ? s + 1 : end;
    return (size_t)(t - t0);
}

static inline char
ascii_lower(char c)
{
    return c >= 'A' && c <= 'Z' ? (char)(c - 'A' + 'a') : c;
}

/* Case-insensitive keyword match (ASCII). */
static inline bool
tok_is(const struct tok *t, const char *word)
{
    size_t i;

    for (i = 0; i < t->n; i++)
        if (word[i] == '\0' || ascii_lower(t->p[i]) != ascii_lower(word[i]))
            return false;
    return word[i] == '\0';
}

/* ---- shared by the command and event parsers (lineproto.c) ---- */

#define ALIGN8(x) (((x) + 7u) & ~(size_t)7u)

/* Specs whose LENs the scan keeps: lp_fill_packets need not parse a line
 * of that many specs again when none has ENTS (nearly every line). */
#define PKT_SCAN_LENS 4

struct pkt_scan {
    uint32_t n_specs;     /* packet specs on the line */
    uint32_t n_ents;      /* entitlements across all specs */
    uint64_t payload_len; /* sum of LENs */
    bool lens_ok;         /* every LEN parsed: payload_len is right */
    bool has_ents;        /* some spec has ":ENTS" (perhaps empty) */
    const char *bad;      /* first problem, or NULL */
    struct tok bad_tok;
    uint32_t lens[PKT_SCAN_LENS]; /* the first specs' LENs */
};

#define LP_TYPE_PREFIX "type="
#define LP_TYPE_PREFIX_LEN (sizeof LP_TYPE_PREFIX - 1)

/* Take the optional "type=<content type>" token at *pp (its value to t);
 * anything else is left for the packet specs. */
static inline bool
take_type_token(const char **pp, const char *end, struct tok *t)
{
    const char *p = *pp;

    skip_seps(&p, end);
    /* The prefix first: the token is nearly always a packet spec. */
    if ((size_t)(end - p) < LP_TYPE_PREFIX_LEN ||
        memcmp(p, LP_TYPE_PREFIX, LP_TYPE_PREFIX_LEN) != 0 || !next_token(&p, end, t))
        return false;
    t->p += LP_TYPE_PREFIX_LEN;
    t->n -= LP_TYPE_PREFIX_LEN;
    *pp = p;
    return true;
}

/* Grow-only storage; returns the (possibly moved) block or NULL. */
void *lp_store_reserve(void **store, size_t *cap, size_t need);
/* A comma list of int32 ("1,2,-3"). With dst NULL only checks it and
 * counts; otherwise stores the values. Returns the count or -1. */
long lp_parse_ints(const char *p, size_t n, uint32_t max, int32_t *dst);
/* Fill n_specs packets[] by parsing validated specs again (out of line:
 * only for ENTS or many specs). */
void lp_fill_from_specs(const char *p, const char *end, uint32_t max_ents, uint32_t n_specs,
    struct wire_packet *packets, int32_t *ents);

/* Parse a spec's "LEN" at p: its digits, up to the first other byte or
 * end. Returns where they stop (the spec is good when that is a
 * separator, end or a ':' before its ENTS), or NULL when there is no
 * digit or LEN is over uint32. */
static inline const char *
spec_len(const char *p, const char *end, uint32_t *len)
{
    const char *start = p;
    uint64_t v = 0;
    unsigned d; /* unsigned from the load on: no sign extension per digit */

    for (; p < end && (d = (unsigned)(unsigned char)*p - '0') <= 9; p++) {
        v = v * 10 + d;
        if (v > UINT32_MAX)
            return NULL;
    }
    if (p == start)
        return NULL;
    *len = (uint32_t)v;
    return p;
}

/* A spec the scan refuses: the first refusal is the one reported. Inline
 * (an out-of-line call would take the scan's address, and keep all of it
 * in memory through the scan). */
static inline void
scan_bad(struct pkt_scan *s, const char *why, const char *p, const char *tend)
{
    if (s->bad == NULL) {
        s->bad = why;
        s->bad_tok.p = p;
        s->bad_tok.n = (size_t)(tend - p);
    }
}

/* A good spec's LEN counted, and kept when it is among the first. */
static inline void
keep_len(struct pkt_scan *s, uint32_t len)
{
    if (s->n_specs < PKT_SCAN_LENS)
        s->lens[s->n_specs] = len;
    s->n_specs++;
}

/* Validate and measure the packet specs from p to end, storing nothing:
 * one pass over each spec, its LEN read as its token is walked. Inline
 * in both the command and the event parser: for the usual one spec, a
 * call and its frame cost about a third of the scan. */
static inline __attribute__((always_inline)) void
lp_scan_packets(const char *p, const char *end, uint32_t max_ents, struct pkt_scan *s)
{
    s->n_specs = s->n_ents = 0;
    s->payload_len = 0;
    s->lens_ok = true;
    s->has_ents = false;
    s->bad = NULL;
    while (skip_seps(&p, end)) {
        const char *start = p, *tend, *q;
        uint32_t len;
        long n;

        q = spec_len(p, end, &len);
        if (q != NULL && (q == end || is_sep(*q))) { /* "LEN": nearly every spec */
            keep_len(s, len);
            s->payload_len += len;
            p = q;
            continue;
        }
        p = tend = token_end(q != NULL ? q : start, end);
        if (q == NULL || *q != ':') {
            s->n_specs++;
            s->lens_ok = false;
            scan_bad(s, "LEN must be a decimal number of bytes (0 to 4294967295)", start,
                tend);
            continue;
        }
        keep_len(s, len);
        s->payload_len += len;
        s->has_ents = true;
        if ((n = lp_parse_ints(q + 1, (size_t)(tend - q - 1), max_ents, NULL)) < 0) {
            scan_bad(s,
                "ENTS must be a comma list of int32 values, at most max_entitlements",
                start, tend);
            continue;
        }
        s->n_ents += (uint32_t)n;
    }
}

/* Fill packets[] (and their entitlements from ents) from specs already
 * validated by lp_scan_packets into s: from the LENs it kept when that is
 * all there is, else by parsing the specs again. Inline, as
 * lp_scan_packets is. */
static inline __attribute__((always_inline)) void
lp_fill_packets(const char *p, const char *end, uint32_t max_ents, const struct pkt_scan *s,
    struct wire_packet *packets, int32_t *ents)
{
    if (s->has_ents || s->n_specs > PKT_SCAN_LENS) {
        lp_fill_from_specs(p, end, max_ents, s->n_specs, packets, ents);
        return;
    }
    for (uint32_t i = 0; i < s->n_specs; i++)
        packets[i] = (struct wire_packet){ .len = s->lens[i] };
}

#endif /* BUSGATE_LINEPROTO_INT_H */
