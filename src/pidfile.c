#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fileio.h"
#include "pidfile.h"
#include "util.h"

/* The pid written in a pidfile someone else holds, or 0. */
static long
pidfile_holder(int fd)
{
    char buf[32];
    ssize_t n = pread(fd, buf, sizeof buf - 1, 0);
    char *end;
    long pid;

    if (n <= 0)
        return 0;
    buf[n] = '\0';
    pid = strtol(buf, &end, 10);
    return end != buf && (*end == '\n' || *end == '\0') && pid > 0 ? pid : 0;
}

/* The lock, or why not: a second daemon on the same file is refused. */
static int
pidfile_lock(int fd, const char *path, char *err, size_t errlen)
{
    long pid;

    if (flock(fd, LOCK_EX | LOCK_NB) == 0)
        return 0;
    if (errno != EWOULDBLOCK) {
        set_err(err, errlen, "pid file %s: cannot lock it: %s", path, strerror(errno));
        return -1;
    }
    if ((pid = pidfile_holder(fd)) > 0)
        set_err(err, errlen, "another busgated (pid %ld) holds %s", pid, path);
    else
        set_err(err, errlen, "another busgated holds %s", path);
    return -1;
}

int
pidfile_open(const char *path, char *err, size_t errlen)
{
    char why[512];
    struct stat st;
    int fd;

    /* O_NOFOLLOW: in a directory others may write, a link planted at path
     * would make us overwrite its target. O_NONBLOCK: a FIFO never blocks. */
    fd =
        open(path, O_RDWR | O_CREAT | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC | O_NOCTTY, 0644);
    if (fd < 0) {
        if (errno == ELOOP)
            set_err(err, errlen, "pid file %s is a symbolic link: refused", path);
        else
            set_err(err, errlen, "pid file %s: %s", path, strerror(errno));
        return -1;
    }
    if (fstat(fd, &st) != 0) {
        set_err(err, errlen, "pid file %s: %s", path, strerror(errno));
        close(fd);
        return -1;
    }
    if (fileio_check_type(path, &st, false, why, sizeof why) != 0) {
        set_err(err, errlen, "pid file %s", why);
        close(fd);
        return -1;
    }
    if (st.st_nlink > 1) {
        /* A hard link: its inode is a file somewhere else too. */
        set_err(err, errlen, "pid file %s has other hard links: refused", path);
        close(fd);
        return -1;
    }
    if (pidfile_lock(fd, path, err, errlen) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

int
pidfile_write(int fd)
{
    char buf[32];
    int n = snprintf(buf, sizeof buf, "%ld\n", (long)getpid());

    /* Truncated only now: the lock says the old content was nobody's. */
    if (ftruncate(fd, 0) != 0 || pwrite(fd, buf, (size_t)n, 0) != n)
        return -1;
    return 0;
}

void
pidfile_remove(const char *path, int fd)
{
    unlink(path);
    close(fd);
}
