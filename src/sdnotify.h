/*
 * The systemd notify protocol without libsystemd: one datagram to the
 * socket named by $NOTIFY_SOCKET ("READY=1", "STATUS=...", "WATCHDOG=1").
 */
#ifndef BUSGATE_SDNOTIFY_H
#define BUSGATE_SDNOTIFY_H

#include <stdint.h>

/* Send state to systemd; a no-op without $NOTIFY_SOCKET. Returns 0 or -1. */
int sdnotify(const char *state);

/* printf-style STATUS= line. */
int sdnotify_status(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Watchdog interval from $WATCHDOG_USEC (and $WATCHDOG_PID), 0 if none. */
uint64_t sdnotify_watchdog_usec(void);

#endif /* BUSGATE_SDNOTIFY_H */
