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

#include "wire.h"

/* Bytes a name token must carry as %XX: they would break tokenising or
 * framing, or (") collide with the empty-name token. */
static inline bool
must_escape(unsigned char c)
{
    return c <= 0x20 || c == 0x7f || c == '%' || c == '"';
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

static inline bool
next_token(const char **pp, const char *end, struct tok *t)
{
    const char *p = *pp;

    while (p < end && is_sep(*p))
        p++;
    if (p == end) {
        *pp = p;
        return false;
    }
    t->p = p;
    while (p < end && !is_sep(*p))
        p++;
    t->n = (size_t)(p - t->p);
    *pp = p;
    return true;
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

    if (!next_token(&p, end, t) || t->n < LP_TYPE_PREFIX_LEN ||
        memcmp(t->p, LP_TYPE_PREFIX, LP_TYPE_PREFIX_LEN) != 0)
        return false;
    t->p += LP_TYPE_PREFIX_LEN;
    t->n -= LP_TYPE_PREFIX_LEN;
    *pp = p;
    return true;
}

/* Grow-only storage; returns the (possibly moved) block or NULL. */
void *lp_store_reserve(void **store, size_t *cap, size_t need);
/* Decode a name token into dst (room for toklen + 1 bytes). */
int lp_decode_name(const char *tok, size_t toklen, char *dst, uint32_t *outlen,
    const char **why);
/* Validate and measure the packet specs from p to end, storing nothing. */
void lp_scan_packets(const char *p, const char *end, uint32_t max_ents, struct pkt_scan *s);
/* Fill packets[] (s->n_specs) from specs already validated by
 * lp_scan_packets into s. */
void lp_fill_packets(const char *p, const char *end, uint32_t max_ents,
    const struct pkt_scan *s, struct wire_packet *packets, int32_t *ents);

#endif /* BUSGATE_LINEPROTO_INT_H */
