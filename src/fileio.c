#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fileio.h"
#include "util.h"

/* What a file that is neither regular nor a directory is, for messages. */
static const char *
file_kind(mode_t mode)
{
    if (S_ISREG(mode))
        return "a regular file";
    if (S_ISDIR(mode))
        return "a directory";
    if (S_ISFIFO(mode))
        return "a FIFO";
    if (S_ISSOCK(mode))
        return "a socket";
    if (S_ISCHR(mode))
        return "a character device";
    if (S_ISBLK(mode))
        return "a block device";
    return "of an unknown type";
}

int
fileio_check_type(const char *path, const struct stat *st, bool want_dir, char *err,
    size_t errlen)
{
    if (want_dir ? S_ISDIR(st->st_mode) : S_ISREG(st->st_mode))
        return 0;
    set_err(err, errlen, "%s: not a %s (%s)", path, want_dir ? "directory" : "regular file",
        file_kind(st->st_mode));
    return -1;
}

int
fileio_open(const char *path, bool want_dir, struct stat *st, char *err, size_t errlen)
{
    int fd;

    /* O_NONBLOCK: opening a FIFO for reading would wait for a writer. It
     * changes nothing for the regular files that pass the check. */
    fd = open(path,
        O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY | (want_dir ? O_DIRECTORY : 0));
    if (fd < 0) {
        set_err(err, errlen, "%s: %s", path, strerror(errno));
        return -1;
    }
    if (fstat(fd, st) != 0) {
        set_err(err, errlen, "%s: %s", path, strerror(errno));
        close(fd);
        return -1;
    }
    if (fileio_check_type(path, st, want_dir, err, errlen) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

int
fileio_read_all(int fd, const char *path, size_t max, char **out, size_t *outlen, char *err,
    size_t errlen)
{
    char *buf;
    size_t len = 0;
    ssize_t n = 0;

    if ((buf = malloc(max + 1)) == NULL) {
        set_err(err, errlen, "%s: out of memory", path);
        close(fd);
        return -1;
    }
    while (len <= max && (n = read(fd, buf + len, max + 1 - len)) != 0) {
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            set_err(err, errlen, "%s: %s", path, strerror(errno));
            break;
        }
        len += (size_t)n;
    }
    close(fd);
    if (len > max)
        set_err(err, errlen, "%s: larger than %zu bytes", path, max);
    if (len > max || n < 0) {
        explicit_bzero(buf, len);
        free(buf);
        return -1;
    }
    buf[len] = '\0';
    *out = buf;
    *outlen = len;
    return 0;
}

int
fileio_check(const char *path, bool want_dir, char *err, size_t errlen)
{
    struct stat st;
    int fd;

    if ((fd = fileio_open(path, want_dir, &st, err, errlen)) < 0)
        return -1;
    close(fd);
    return 0;
}
