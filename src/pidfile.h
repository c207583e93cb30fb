/*
 * The --pidfile of a detached busgated: opened without following a
 * symbolic link, locked for the daemon's whole life so a second daemon
 * given the same file is refused, and written once the pid is final.
 */
#ifndef BUSGATE_PIDFILE_H
#define BUSGATE_PIDFILE_H

#include <stddef.h>

/* Open and lock path, before detaching (the lock goes with the descriptor
 * across fork). Returns the descriptor, or -1 with the reason in err:
 * "another busgated (pid N) holds PATH", a symbolic link, not a regular
 * file. Nothing is written yet. */
int pidfile_open(const char *path, char *err, size_t errlen);

/* Replace the file's content with the calling process's pid; 0 or -1
 * (errno set). */
int pidfile_write(int fd);

/* At exit: remove path, still holding the lock, then close fd. */
void pidfile_remove(const char *path, int fd);

#endif /* BUSGATE_PIDFILE_H */
