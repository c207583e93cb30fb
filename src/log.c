#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "log.h"
#include "util.h"

/* An escaped line: room for a raw message of 1024 bytes, part escaped. */
#define LOG_LINE_MAX 2048

static enum log_dest log_dest = LOG_DEST_STDERR;
static int log_level = LOG_INFO;

/*
 * Flood limit: per message kind (the format string's address: one call
 * site, or a few that share the same literal) at most LOG_BURST lines in a window of LOG_WINDOW_MS; the rest are
 * counted and summarised in one line when the window is over. Only
 * warning, notice and info lines are limited: an error is never hidden and
 * debug is asked for. Nothing is limited until main switches the limit on
 * after start-up, nor during a reload. This also folds exact repeats.
 */
#define LOG_BURST 10
#define LOG_WINDOW_MS 5000
#define LOG_KINDS_BITS 7
#define LOG_KINDS (1 << LOG_KINDS_BITS) /* more than there are call sites */

struct log_kind {
    const char *fmt;          /* NULL: a free slot */
    int prio;                 /* of the last suppressed line */
    int64_t start_ms;         /* when the window opened */
    unsigned lines;           /* logged in this window */
    unsigned long suppressed; /* not logged in this window */
};

static struct log_kind kinds[LOG_KINDS];
static struct log_kind kind_overflow; /* shared, should the table fill */
static int64_t (*log_clock)(void);
static bool limit_on;

static const char *const level_names[] = {
    [LOG_EMERG] = "emergency",
    [LOG_ALERT] = "alert",
    [LOG_CRIT] = "critical",
    [LOG_ERR] = "error",
    [LOG_WARNING] = "warning",
    [LOG_NOTICE] = "notice",
    [LOG_INFO] = "info",
    [LOG_DEBUG] = "debug",
};

void
log_init(const char *ident, enum log_dest dest, int level)
{
    log_dest = dest;
    log_level = level;
    if (dest == LOG_DEST_SYSLOG)
        openlog(ident, LOG_PID | LOG_NDELAY, LOG_DAEMON);
}

void
log_set_level(int level)
{
    log_level = level;
}

int
log_get_level(void)
{
    return log_level;
}

int
log_level_from_name(const char *name)
{
    for (int i = LOG_ERR; i <= LOG_DEBUG; i++)
        if (strcasecmp(name, level_names[i]) == 0)
            return i;
    if (strcasecmp(name, "warn") == 0)
        return LOG_WARNING;
    return -1;
}

const char *
log_level_name(int level)
{
    if (level < LOG_EMERG || level > LOG_DEBUG)
        return "unknown";
    return level_names[level];
}

/* A byte the escaping writes %XX outside a valid multi-byte character:
 * control bytes, DEL, '%' and every byte of an invalid sequence. */
static bool
escaped_byte(unsigned char c)
{
    return c < 0x20 || c >= 0x7f || c == '%';
}

/* Length of the printable UTF-8 character at p, 0 if its bytes are to be
 * escaped one by one: C1 controls (U+0080..U+009F) are controls too. */
static size_t
printable_seq_len(const unsigned char *p, size_t n)
{
    size_t k = utf8_seq_len(p, n);

    if (k == 2 && p[0] == 0xc2 && p[1] < 0xa0)
        return 0;
    return k;
}

size_t
log_escape(char *dst, size_t dstlen, const char *src, size_t n)
{
    static const char hex[] = "0123456789ABCDEF";
    const unsigned char *s = (const unsigned char *)src;
    size_t i = 0, o = 0, k;

    while (i < n) {
        if (s[i] >= 0x80 && (k = printable_seq_len(s + i, n - i)) > 0) {
            if (o + k >= dstlen)
                break;
            memcpy(dst + o, s + i, k);
            o += k;
            i += k;
        } else if (escaped_byte(s[i])) {
            if (o + 3 >= dstlen)
                break;
            dst[o++] = '%';
            dst[o++] = hex[s[i] >> 4];
            dst[o++] = hex[s[i] & 0x0f];
            i++;
        } else {
            if (o + 1 >= dstlen)
                break;
            dst[o++] = (char)s[i++];
        }
    }
    dst[o] = '\0';
    return o;
}

/* The escaped line for a message: "func: " first where it is wanted. */
static void
format_line(char *line, size_t len, const char *func, const char *fmt, va_list ap)
{
    char raw[1024];
    int n = 0;

    if (func != NULL)
        n = snprintf(raw, sizeof raw, "%s: ", func);
    if (n < 0 || (size_t)n >= sizeof raw)
        n = 0;
    if (vsnprintf(raw + n, sizeof raw - (size_t)n, fmt, ap) < 0)
        raw[n] = '\0';
    log_escape(line, len, raw, strlen(raw));
}

static void
log_emit(int prio, const char *line)
{
    if (log_dest == LOG_DEST_SYSLOG)
        syslog(prio, "%s", line);
    else
        fprintf(stderr, "<%d>%s\n", prio, line);
}

/* Escape and write a line of our own (no limit applies). */
static void __attribute__((format(printf, 2, 3))) log_line(int prio, const char *fmt, ...)
{
    char line[LOG_LINE_MAX];
    va_list ap;

    va_start(ap, fmt);
    format_line(line, sizeof line, NULL, fmt, ap);
    va_end(ap);
    log_emit(prio, line);
}

static int64_t
monotonic_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void
log_set_clock(int64_t (*now_ms)(void))
{
    log_clock = now_ms;
}

static int64_t
log_now(void)
{
    return log_clock != NULL ? log_clock() : monotonic_ms();
}

void
log_limit_floods(bool on)
{
    limit_on = on;
}

static bool
limited(int prio)
{
    return limit_on && prio >= LOG_WARNING && prio <= LOG_INFO;
}

/* The slot of a message kind: open addressing on the format's address;
 * a slot stays its kind's for good, as call sites are fixed. */
static struct log_kind *
kind_slot(const char *fmt)
{
    uint64_t h = (uint64_t)(uintptr_t)fmt * UINT64_C(0x9e3779b97f4a7c15);
    size_t i = (size_t)(h >> (64 - LOG_KINDS_BITS));

    for (size_t n = 0; n < LOG_KINDS; n++, i = (i + 1) & (LOG_KINDS - 1)) {
        if (kinds[i].fmt == fmt)
            return &kinds[i];
        if (kinds[i].fmt == NULL) {
            kinds[i].fmt = fmt;
            return &kinds[i];
        }
    }
    return &kind_overflow;
}

/* The summary of what a kind suppressed, named by its format's words
 * before the first conversion (or the whole format if it has none). */
static void
kind_summarise(struct log_kind *k)
{
    const char *fmt = k == &kind_overflow ? "(various)" : k->fmt;
    size_t words = strcspn(fmt, "%");

    if (k->suppressed == 0)
        return;
    while (words > 0 && (fmt[words - 1] == ' ' || fmt[words - 1] == ':'))
        words--;
    if (words == 0)
        words = strlen(fmt);
    log_line(k->prio, "suppressed %lu similar message%s in %d s: %.*s%s", k->suppressed,
        k->suppressed == 1 ? "" : "s", LOG_WINDOW_MS / 1000, (int)words, fmt,
        fmt[words] != '\0' ? " ..." : "");
    k->suppressed = 0;
}

/* Whether a line of this kind may be written now; counts it if not. */
static bool
kind_admit(const char *fmt, int prio)
{
    struct log_kind *k = kind_slot(fmt);
    int64_t now = log_now();

    if (now - k->start_ms >= LOG_WINDOW_MS) {
        kind_summarise(k);
        k->start_ms = now;
        k->lines = 0;
    }
    if (k->lines < LOG_BURST) {
        k->lines++;
        return true;
    }
    k->suppressed++;
    k->prio = prio;
    return false;
}

/* Summaries of every kind whose window is over, or of all (at the end). */
static void
kinds_summarise(bool all)
{
    int64_t now = log_now();

    for (size_t i = 0; i < LOG_KINDS; i++)
        if (kinds[i].suppressed != 0 && (all || now - kinds[i].start_ms >= LOG_WINDOW_MS))
            kind_summarise(&kinds[i]);
    if (kind_overflow.suppressed != 0 &&
        (all || now - kind_overflow.start_ms >= LOG_WINDOW_MS))
        kind_summarise(&kind_overflow);
}

void
log_tick(void)
{
    kinds_summarise(false);
}

void
log_msg(int prio, const char *func, const char *fmt, ...)
{
    char line[LOG_LINE_MAX];
    va_list ap;

    if (prio > log_level || (limited(prio) && !kind_admit(fmt, prio)))
        return;
    if (prio > LOG_ERR && prio != LOG_DEBUG)
        func = NULL;
    va_start(ap, fmt);
    format_line(line, sizeof line, func, fmt, ap);
    va_end(ap);
    log_emit(prio, line);
}

void
log_close(void)
{
    kinds_summarise(true);
    if (log_dest == LOG_DEST_SYSLOG)
        closelog();
}

void
fatalx(const char *fmt, ...)
{
    char line[LOG_LINE_MAX];
    va_list ap;

    va_start(ap, fmt);
    format_line(line, sizeof line, NULL, fmt, ap);
    va_end(ap);
    kinds_summarise(true);
    log_emit(LOG_CRIT, line);
    abort();
}
