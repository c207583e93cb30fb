/*
 * The Unix socket the local apps connect to. We bind it ourselves (mode,
 * group, stale-socket replacement) or adopt the one systemd passes with
 * socket activation, and accept with evconnlistener, reporting each peer's
 * credentials from SO_PEERCRED.
 */
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/un.h>
#include <unistd.h>

#include <event2/event.h>
#include <event2/listener.h>

#include "listener.h"
#include "log.h"
#include "util.h"

#define LISTEN_BACKLOG 1024
#define SD_LISTEN_FDS_START 3
/* How long to stop accepting when the process runs out of descriptors. */
#define ACCEPT_BACKOFF_MS 250

struct listener {
    struct evconnlistener *evl;
    struct event *backoff; /* re-enables accepting after fd exhaustion */
    listener_accept_cb cb;
    void *arg;
    char *path;     /* where we bound (or what systemd gave us) */
    bool activated; /* socket came from systemd: never unlink */
    bool paused;    /* listener_pause: the back-off must not resume */
    bool backing_off;
    dev_t dev; /* the socket file we created, to unlink */
    ino_t ino; /* only our own at exit */
};

/* Which of the n fds systemd passed is the session socket: the first not
 * named "metrics" (the endpoint's, FileDescriptorName=metrics). */
static int
session_fd_index(const char *names, long n)
{
    const char *p = names;

    for (int i = 0; p != NULL && i < n; i++) {
        size_t l = strcspn(p, ":");

        if (!(l == 7 && memcmp(p, "metrics", 7) == 0))
            return i;
        p = p[l] == ':' ? p + l + 1 : NULL;
    }
    return 0;
}

/* Take the session socket from systemd if LISTEN_PID/LISTEN_FDS say it is
 * ours. Returns the fd, -1 when not activated, -2 on error (err set). */
static int
systemd_fd(char *err, size_t errlen)
{
    const char *pid_s = getenv("LISTEN_PID"), *fds_s = getenv("LISTEN_FDS");
    int fd = SD_LISTEN_FDS_START, type = 0, domain = 0, acc = 0;
    socklen_t len;
    char *end;
    long pid, n;

    if (pid_s == NULL || fds_s == NULL)
        return -1;
    errno = 0;
    pid = strtol(pid_s, &end, 10);
    if (errno != 0 || *end != '\0' || pid != (long)getpid())
        return -1;
    n = strtol(fds_s, &end, 10);
    if (*end == '\0' && n > 1)
        fd += session_fd_index(getenv("LISTEN_FDNAMES"), n);
    unsetenv("LISTEN_PID");
    unsetenv("LISTEN_FDS");
    unsetenv("LISTEN_FDNAMES");
    if (*end != '\0' || n < 1) {
        set_err(err, errlen, "systemd socket activation: LISTEN_FDS=%s passes no socket",
            fds_s);
        return -2;
    }
    if (n > 1)
        log_info("systemd passed %ld sockets; sessions on fd %d", n, fd);
    len = sizeof type;
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) != 0)
        type = -1;
    len = sizeof domain;
    if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &len) != 0)
        domain = -1;
    len = sizeof acc;
    if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &acc, &len) != 0)
        acc = 0;
    if (type != SOCK_STREAM || domain != AF_UNIX || !acc) {
        set_err(err, errlen,
            "systemd socket activation: fd %d is not a listening "
            "Unix stream socket (use ListenStream=/path in the .socket unit)",
            fd);
        return -2;
    }
    if (fcntl(fd, F_SETFD, FD_CLOEXEC) != 0 ||
        fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) != 0) {
        set_err(err, errlen, "systemd socket activation: fd %d: %s", fd, strerror(errno));
        return -2;
    }
    return fd;
}

/* The path a systemd socket is bound to, for logs and STATS. */
static char *
socket_path_of(int fd)
{
    struct sockaddr_un sun;
    socklen_t len = sizeof sun;
    size_t n;

    memset(&sun, 0, sizeof sun);
    if (getsockname(fd, (struct sockaddr *)&sun, &len) != 0 ||
        len <= offsetof(struct sockaddr_un, sun_path))
        return strdup("(systemd socket)");
    n = len - offsetof(struct sockaddr_un, sun_path);
    if (n > 0 && sun.sun_path[0] == '\0')
        return strdup("(abstract socket)");
    return strndup(sun.sun_path, n);
}

static int
fill_sockaddr(struct sockaddr_un *sun, const char *path, char *err, size_t errlen)
{
    memset(sun, 0, sizeof *sun);
    sun->sun_family = AF_UNIX;
    if (strlen(path) >= sizeof sun->sun_path) {
        set_err(err, errlen, "listen.path %s is too long for a Unix socket (%zu bytes max)",
            path, sizeof sun->sun_path - 1);
        return -1;
    }
    memcpy(sun->sun_path, path, strlen(path));
    return 0;
}

/* An existing file at path: unlink a stale socket, refuse anything else. */
static int
clear_stale(const char *path, const struct sockaddr_un *sun, char *err, size_t errlen)
{
    struct stat st;
    int fd, r, saved;

    if (lstat(path, &st) != 0) {
        if (errno == ENOENT)
            return 0;
        set_err(err, errlen, "%s: %s", path, strerror(errno));
        return -1;
    }
    if (!S_ISSOCK(st.st_mode)) {
        set_err(err, errlen, "%s exists and is not a socket; not replacing it", path);
        return -1;
    }
    if ((fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0) {
        set_err(err, errlen, "socket: %s", strerror(errno));
        return -1;
    }
    r = connect(fd, (const struct sockaddr *)sun, sizeof *sun);
    saved = errno;
    close(fd);
    if (r == 0) {
        set_err(err, errlen, "another busgated is listening on %s", path);
        return -1;
    }
    if (saved != ECONNREFUSED) {
        set_err(err, errlen, "%s: cannot tell whether the socket is in use: %s", path,
            strerror(saved));
        return -1;
    }
    if (unlink(path) != 0 && errno != ENOENT) {
        set_err(err, errlen, "removing stale socket %s: %s", path, strerror(errno));
        return -1;
    }
    log_notice("removed stale socket %s", path);
    return 0;
}

int
listener_clear_stale(const char *path, char *err, size_t errlen)
{
    struct sockaddr_un sun;

    if (fill_sockaddr(&sun, path, err, errlen) != 0)
        return -1;
    return clear_stale(path, &sun, err, errlen);
}

/* Bind and listen at cfg->path with its mode and group. */
static int
bind_path(struct listener *l, const struct config_listen *cfg, char *err, size_t errlen)
{
    struct sockaddr_un sun;
    struct stat st;
    mode_t old;
    int fd, r;

    if (cfg->path == NULL || cfg->path[0] == '\0') {
        set_err(err, errlen, "listen.path is empty");
        return -1;
    }
    if (fill_sockaddr(&sun, cfg->path, err, errlen) != 0 ||
        clear_stale(cfg->path, &sun, err, errlen) != 0)
        return -1;
    if ((fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)) < 0) {
        set_err(err, errlen, "socket: %s", strerror(errno));
        return -1;
    }
    /* The umask keeps the socket from being wider than cfg->mode between
     * bind and chmod. */
    old = umask(~cfg->mode & 0777);
    r = bind(fd, (const struct sockaddr *)&sun, sizeof sun);
    umask(old);
    if (r != 0) {
        int e = errno;
        if (e == ENOENT || e == ENOTDIR)
            set_err(err, errlen,
                "cannot create socket %s: its directory does not exist "
                "(systemd's RuntimeDirectory= creates it)",
                cfg->path);
        else
            set_err(err, errlen, "cannot bind %s: %s", cfg->path, strerror(e));
        close(fd);
        return -1;
    }
    if (chmod(cfg->path, cfg->mode) != 0) {
        set_err(err, errlen, "chmod %04o %s: %s", (unsigned)cfg->mode, cfg->path,
            strerror(errno));
        goto fail;
    }
    if (cfg->group != NULL && cfg->group[0] != '\0') {
        struct group *gr = getgrnam(cfg->group);
        if (gr == NULL) {
            set_err(err, errlen, "listen.group %s: no such group", cfg->group);
            goto fail;
        }
        if (chown(cfg->path, (uid_t)-1, gr->gr_gid) != 0) {
            set_err(err, errlen, "chgrp %s %s: %s", cfg->group, cfg->path, strerror(errno));
            goto fail;
        }
    }
    if (listen(fd, LISTEN_BACKLOG) != 0) {
        set_err(err, errlen, "listen %s: %s", cfg->path, strerror(errno));
        goto fail;
    }
    if (stat(cfg->path, &st) == 0) {
        l->dev = st.st_dev;
        l->ino = st.st_ino;
    }
    return fd;
fail:
    close(fd);
    unlink(cfg->path);
    return -1;
}

static void
accept_cb(struct evconnlistener *evl, evutil_socket_t fd, struct sockaddr *sa, int salen,
    void *arg)
{
    struct listener *l = arg;
    struct peer_cred peer = { .pid = -1, .uid = (uid_t)-1, .gid = (gid_t)-1 };
    struct ucred cred;
    socklen_t len = sizeof cred;

    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0) {
        peer.pid = cred.pid;
        peer.uid = cred.uid;
        peer.gid = cred.gid;
    } else {
        log_warn("SO_PEERCRED: %s", strerror(errno));
    }
    l->cb(fd, &peer, l->arg);
}

static void
backoff_cb(evutil_socket_t fd, short what, void *arg)
{
    struct listener *l = arg;

    l->backing_off = false;
    if (!l->paused)
        evconnlistener_enable(l->evl);
}

/* accept() failed. Out of descriptors: stop accepting for a moment rather
 * than spin on a listening socket that stays readable. */
static void
accept_error_cb(struct evconnlistener *evl, void *arg)
{
    struct listener *l = arg;
    int e = EVUTIL_SOCKET_ERROR();
    struct timeval tv = { 0, ACCEPT_BACKOFF_MS * 1000 };

    if (e == EMFILE || e == ENFILE || e == ENOBUFS || e == ENOMEM) {
        log_warn("accept on %s: %s; not accepting for %d ms", l->path, strerror(e),
            ACCEPT_BACKOFF_MS);
        evconnlistener_disable(l->evl);
        l->backing_off = true;
        evtimer_add(l->backoff, &tv);
        return;
    }
    log_warn("accept on %s: %s", l->path, strerror(e));
}

struct listener *
listener_new(struct event_base *base, const struct config_listen *cfg,
    listener_accept_cb cb, void *arg, char *err, size_t errlen)
{
    struct listener *l;
    int fd;

    if ((l = calloc(1, sizeof *l)) == NULL) {
        set_err(err, errlen, "out of memory");
        return NULL;
    }
    l->cb = cb;
    l->arg = arg;
    fd = systemd_fd(err, errlen);
    if (fd == -2)
        goto fail;
    if (fd >= 0) {
        l->activated = true;
        l->path = socket_path_of(fd);
    } else {
        if ((fd = bind_path(l, cfg, err, errlen)) < 0)
            goto fail;
        l->path = strdup(cfg->path);
    }
    if (l->path == NULL) {
        set_err(err, errlen, "out of memory");
        goto fail_fd;
    }
    if ((l->backoff = evtimer_new(base, backoff_cb, l)) == NULL) {
        set_err(err, errlen, "out of memory");
        goto fail_fd;
    }
    /* backlog 0: the socket already listens (ours, or systemd's). */
    l->evl = evconnlistener_new(base, accept_cb, l,
        LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC, 0, fd);
    if (l->evl == NULL) {
        set_err(err, errlen, "evconnlistener_new failed on %s", l->path);
        goto fail_fd;
    }
    evconnlistener_set_error_cb(l->evl, accept_error_cb);
    log_info("listening on %s%s", l->path, l->activated ? " (systemd socket)" : "");
    return l;
fail_fd:
    close(fd);
    if (!l->activated && cfg->path != NULL)
        unlink(cfg->path);
fail:
    if (l->backoff != NULL)
        event_free(l->backoff);
    free(l->path);
    free(l);
    return NULL;
}

void
listener_pause(struct listener *l)
{
    l->paused = true;
    evconnlistener_disable(l->evl);
}

void
listener_resume(struct listener *l)
{
    l->paused = false;
    if (!l->backing_off)
        evconnlistener_enable(l->evl);
}

int
listener_is_activated(const struct listener *l)
{
    return l->activated;
}

const char *
listener_path(const struct listener *l)
{
    return l->path;
}

/* Remove the socket file only if it is still the one we bound: a newer
 * daemon may have replaced it. */
static void
unlink_own(const struct listener *l)
{
    struct stat st;

    if (l->activated || l->path == NULL)
        return;
    if (lstat(l->path, &st) != 0 || st.st_dev != l->dev || st.st_ino != l->ino)
        return;
    if (unlink(l->path) != 0)
        log_warn("removing %s: %s", l->path, strerror(errno));
}

void
listener_free(struct listener *l)
{
    if (l == NULL)
        return;
    if (l->evl != NULL)
        evconnlistener_free(l->evl);
    unlink_own(l);
    if (l->backoff != NULL)
        event_free(l->backoff);
    free(l->path);
    free(l);
}
