/*
 * Small helpers more than one module needs.
 */
#ifndef BUSGATE_UTIL_H
#define BUSGATE_UTIL_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

/* Format a human reason into a caller's (err, errlen) buffer, if any. */
static inline void __attribute__((format(printf, 3, 4)))
set_err(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;

    if (err == NULL || errlen == 0)
        return;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/*
 * Zero n bytes at p in pieces of at most 64, which the compiler stores
 * inline: one bigger memset becomes a "rep stos", slow to start, which
 * showed in per-message profiles (a parsed command, a decoded message).
 */
static inline void
zero_bytes(void *p, size_t n)
{
    char *c = p;

    while (n > 64) {
        memset(c, 0, 64);
        c += 64;
        n -= 64;
    }
    memset(c, 0, n);
}

/* The value of one hex digit (either case), or -1. */
static inline int
hex_value(unsigned char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Length (2 to 4) of the strict UTF-8 (RFC 3629) multi-byte sequence at p,
 * or 0 if p[0] does not start one: no overlongs, no surrogates, nothing
 * past U+10FFFF. The bus is .NET: anything else would be mangled upstream. */
static inline size_t
utf8_seq_len(const unsigned char *p, size_t n)
{
    size_t need;
    uint32_t cp;

    if (p[0] >= 0xc2 && p[0] <= 0xdf)
        need = 1, cp = p[0] & 0x1f;
    else if (p[0] >= 0xe0 && p[0] <= 0xef)
        need = 2, cp = p[0] & 0x0f;
    else if (p[0] >= 0xf0 && p[0] <= 0xf4)
        need = 3, cp = p[0] & 0x07;
    else
        return 0;
    if (n < need + 1)
        return 0;
    for (size_t k = 1; k <= need; k++) {
        if ((p[k] & 0xc0) != 0x80)
            return 0;
        cp = cp << 6 | (p[k] & 0x3f);
    }
    if ((need == 2 && cp < 0x800) || (need == 3 && cp < 0x10000) ||
        (cp >= 0xd800 && cp <= 0xdfff) || cp > 0x10ffff)
        return 0;
    return need + 1;
}

#endif /* BUSGATE_UTIL_H */
