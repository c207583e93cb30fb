/*
 * The Unix socket: bind at listen.path with mode and group, replace a stale
 * socket but refuse a live one, or inherit one from systemd socket
 * activation (LISTEN_FDS/LISTEN_PID, without libsystemd); accept with peer
 * credentials (SO_PEERCRED).
 */
#ifndef BUSGATE_LISTENER_H
#define BUSGATE_LISTENER_H

#include <stddef.h>

#include "config.h"
#include "session.h"

struct event_base;
struct listener;

/* Called for each accepted connection (fd is non-blocking, close-on-exec). */
typedef void (*listener_accept_cb)(int fd, const struct peer_cred *peer, void *arg);

/* Listen (or adopt the systemd socket). NULL with a clear reason in err. */
struct listener *listener_new(struct event_base *base, const struct config_listen *cfg,
    listener_accept_cb cb, void *arg, char *err, size_t errlen);

/* Stop / resume accepting (shutdown; fd exhaustion back-off). */
void listener_pause(struct listener *l);
void listener_resume(struct listener *l);

/* True when the socket came from systemd. */
int listener_is_activated(const struct listener *l);
const char *listener_path(const struct listener *l);

/* Before binding a Unix socket at path: unlink a stale socket there,
 * refuse a live one or any other file. 0 or -1 with err. */
int listener_clear_stale(const char *path, char *err, size_t errlen);

/* Close; unlink the path if we created it. */
void listener_free(struct listener *l);

#endif /* BUSGATE_LISTENER_H */
