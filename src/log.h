/*
 * Logging: one line per event, to stderr with syslog priority prefixes
 * ("<3>...") that journald turns into levels, or to syslog. Never log a
 * secret. A flood is limited per message kind (call site): after a burst,
 * lines of that kind are counted, not written, and one line says how many
 * were suppressed (warning, notice and info, once the daemon runs; see
 * log.c).
 *
 * Every line is escaped here, once, after formatting (log_escape): names
 * from the bus or from local clients go into messages as they are, and no
 * call site escapes anything itself.
 */
#ifndef BUSGATE_LOG_H
#define BUSGATE_LOG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <syslog.h>

enum log_dest {
    LOG_DEST_STDERR, /* "<N>message" lines, for journald */
    LOG_DEST_SYSLOG, /* syslog(3) */
};

/* Start logging; level is a syslog priority (LOG_ERR ... LOG_DEBUG). */
void log_init(const char *ident, enum log_dest dest, int level);
void log_set_level(int level);
int log_get_level(void);
void log_close(void);

/* Limit floods (on) or write every line (off, the start: during start-up
 * and a reload, which the operator asked for). */
void log_limit_floods(bool on);

/* Write the summaries of floods whose window is over; main's tick calls it
 * so a summary comes soon after a flood ends. */
void log_tick(void);

/* For tests: the monotonic clock in ms the flood limit reads (NULL: the
 * real one). */
void log_set_clock(int64_t (*now_ms)(void));

/* Parse "error", "warning", "notice", "info", "debug"; -1 if unknown. */
int log_level_from_name(const char *name);
const char *log_level_name(int level);

/*
 * Copy src (n bytes) into dst (dstlen > 0 bytes, NUL-terminated) with
 * control bytes (newline included), DEL, C1 controls, '%' and bytes that
 * are not strict UTF-8 written %XX, so a message is one line whatever it
 * quotes and reads back unambiguously. Truncates at a whole character;
 * returns the length written.
 */
size_t log_escape(char *dst, size_t dstlen, const char *src, size_t n);

void log_msg(int prio, const char *func, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Error and debug lines carry the function name (OpenSSH error_f style). */
#define log_error(...) log_msg(LOG_ERR, __func__, __VA_ARGS__)
#define log_warn(...) log_msg(LOG_WARNING, NULL, __VA_ARGS__)
#define log_notice(...) log_msg(LOG_NOTICE, NULL, __VA_ARGS__)
#define log_info(...) log_msg(LOG_INFO, NULL, __VA_ARGS__)
#define log_debug(...) log_msg(LOG_DEBUG, __func__, __VA_ARGS__)

/* Abort on an impossible state, with a message. */
void fatalx(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

#endif /* BUSGATE_LOG_H */
