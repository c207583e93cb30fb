#include <stdarg.h>
#include <stdbool.h>
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

/* The last line logged and how often it repeated, for summarising floods. */
static char last_line[LOG_LINE_MAX];
static int last_prio;
static unsigned long last_repeats;
static time_t last_time;

#define LOG_REPEAT_WINDOW 10   /* seconds in which a repeat is folded */

static const char *const level_names[] = {
    [LOG_EMERG] = "emergency", [LOG_ALERT] = "alert", [LOG_CRIT] = "critical",
    [LOG_ERR] = "error", [LOG_WARNING] = "warning", [LOG_NOTICE] = "notice",
    [LOG_INFO] = "info", [LOG_DEBUG] = "debug",
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

static void
log_flush_repeats(void)
{
    char summary[LOG_LINE_MAX + 64];

    if (last_repeats == 0)
        return;
    snprintf(summary, sizeof summary, "last message repeated %lu times: %s",
        last_repeats, last_line);
    last_repeats = 0;
    log_emit(last_prio, summary);
}

void
log_msg(int prio, const char *func, const char *fmt, ...)
{
    char line[LOG_LINE_MAX];
    va_list ap;
    time_t now;

    if (prio > log_level)
        return;
    if (prio > LOG_ERR && prio != LOG_DEBUG)
        func = NULL;
    va_start(ap, fmt);
    format_line(line, sizeof line, func, fmt, ap);
    va_end(ap);

    now = time(NULL);
    if (prio == last_prio && strcmp(line, last_line) == 0 &&
        now - last_time < LOG_REPEAT_WINDOW) {
        last_repeats++;
        return;
    }
    log_flush_repeats();
    snprintf(last_line, sizeof last_line, "%s", line);
    last_prio = prio;
    last_time = now;
    log_emit(prio, line);
}

void
log_close(void)
{
    log_flush_repeats();
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
    log_flush_repeats();
    log_emit(LOG_CRIT, line);
    abort();
}
