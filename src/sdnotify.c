#include <errno.h>
#include <stddef.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "sdnotify.h"

int
sdnotify(const char *state)
{
    struct sockaddr_un sun;
    const char *path = getenv("NOTIFY_SOCKET");
    socklen_t len;
    size_t plen;
    ssize_t n;
    int fd;

    if (path == NULL || *path == '\0')
        return 0;
    plen = strlen(path);
    if ((path[0] != '/' && path[0] != '@') || plen >= sizeof sun.sun_path)
        return -1;
    memset(&sun, 0, sizeof sun);
    sun.sun_family = AF_UNIX;
    memcpy(sun.sun_path, path, plen);
    if (sun.sun_path[0] == '@') /* abstract namespace */
        sun.sun_path[0] = '\0';
    len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + plen);

    if ((fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0)) == -1)
        return -1;
    n = sendto(fd, state, strlen(state), MSG_NOSIGNAL, (struct sockaddr *)&sun, len);
    close(fd);
    return n == -1 ? -1 : 0;
}

int
sdnotify_status(const char *fmt, ...)
{
    char buf[256];
    va_list ap;
    int n;

    n = snprintf(buf, sizeof buf, "STATUS=");
    va_start(ap, fmt);
    vsnprintf(buf + n, sizeof buf - (size_t)n, fmt, ap);
    va_end(ap);
    return sdnotify(buf);
}

uint64_t
sdnotify_watchdog_usec(void)
{
    const char *usec = getenv("WATCHDOG_USEC");
    const char *pid = getenv("WATCHDOG_PID");
    unsigned long long v;
    char *end;

    if (usec == NULL)
        return 0;
    if (pid != NULL && strtol(pid, NULL, 10) != (long)getpid())
        return 0;
    errno = 0;
    v = strtoull(usec, &end, 10);
    if (errno != 0 || *end != '\0' || v == 0)
        return 0;
    return v;
}
