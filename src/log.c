#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "log.h"

static enum log_dest log_dest = LOG_DEST_STDERR;
static int log_level = LOG_INFO;

/* The last line logged and how often it repeated, for summarising floods. */
static char last_line[640];
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
    char summary[720];

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
    char msg[512], line[640];
    va_list ap;
    time_t now;

    if (prio > log_level)
        return;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (func != NULL && (prio <= LOG_ERR || prio == LOG_DEBUG))
        snprintf(line, sizeof line, "%s: %s", func, msg);
    else
        snprintf(line, sizeof line, "%s", msg);

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
    char msg[512];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    log_flush_repeats();
    log_emit(LOG_CRIT, msg);
    abort();
}
