/*
 * Opening the files busgated reads (configuration, credentials, token,
 * TLS certificates and keys) so that none can block it: a FIFO, a device
 * or a socket put where a file is expected is refused, naming the path,
 * before anything reads from it.
 */
#ifndef BUSGATE_FILEIO_H
#define BUSGATE_FILEIO_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/stat.h>

/* The file-type rule on a stat'ed file: a regular file, or a directory
 * when want_dir; otherwise -1 with "path: not a regular file (a FIFO)". */
int fileio_check_type(const char *path, const struct stat *st, bool want_dir, char *err,
    size_t errlen);

/* Open path for reading without blocking, even on a FIFO, and check its
 * type on the open descriptor (so the file checked is the file read).
 * Returns the descriptor and fills st, or -1 with "path: reason" in err. */
int fileio_open(const char *path, bool want_dir, struct stat *st, char *err, size_t errlen);

/* Read all of fd (opened on path by fileio_open) into a NUL-terminated
 * buffer of at most max bytes, and close it. On failure what was read is
 * wiped first: the file may hold secrets. */
int fileio_read_all(int fd, const char *path, size_t max, char **out, size_t *outlen,
    char *err, size_t errlen);

/* Whether path opens as fileio_open would, for a file a library opens
 * itself by name (OpenSSL's CA, certificate and key files). */
int fileio_check(const char *path, bool want_dir, char *err, size_t errlen);

#endif /* BUSGATE_FILEIO_H */
