/*
 * Small helpers more than one module needs.
 */
#ifndef BUSGATE_UTIL_H
#define BUSGATE_UTIL_H

#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>

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

#endif /* BUSGATE_UTIL_H */
