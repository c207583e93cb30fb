/*
 * busgated: command line, start-up and shutdown order, signals, reload and
 * the systemd notify calls. Everything else lives in its own module.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <event2/dns.h>
#include <event2/event.h>

#include "bus.h"
#include "config.h"
#include "audit.h"
#include "listener.h"
#include "log.h"
#include "metrics.h"
#include "pidfile.h"
#include "router.h"
#include "sdnotify.h"
#include "tls.h"
#include "session.h"

struct daemon {
    struct event_base *base;
    struct evdns_base *dns;
    struct config cfg; /* stable address: modules keep pointers into it */
    struct router *router;
    struct bus *bus;
    struct listener *listener;
    struct metrics *metrics; /* NULL: metrics.listen unset */
    struct event *sig_term, *sig_int, *sig_hup;
    struct event *tick;       /* STATUS= updates */
    struct event *watchdog;   /* WATCHDOG=1 at half of $WATCHDOG_USEC; NULL: off */
    struct event *stop_timer; /* bounds the shutdown grace period */
    struct event *stop_poll;  /* notices when the last session has gone */
    char last_status[128];
    bool stopping;
    bool bus_closed;
    bool debug;    /* --debug: log.level is overridden, also at a reload */
    bool detached; /* --daemon: logs go to syslog whatever log.destination says */
};

static void
usage(FILE *out)
{
    fprintf(out,
        "usage: busgated [-c FILE] [--check-config] [--daemon [--pidfile FILE]]\n"
        "                [--debug] [--version] [--help]\n"
        "  -c, --config FILE   configuration file (default %s)\n"
        "  -t, --check-config  validate the configuration, print it (secrets\n"
        "                      masked) and exit 0 if good, 1 if not\n"
        "  -d, --daemon        detach (double fork) for systems without systemd\n"
        "  -p, --pidfile FILE  with --daemon, write the pid here and lock it\n"
        "  -D, --debug         log at debug level, overriding log.level\n"
        "  -V, --version       print the version and exit\n"
        "  -h, --help          this text\n",
        CONFIG_DEFAULT_PATH);
}

/* Tell systemd how things are, when it changed. */
static void
daemon_status(struct daemon *d)
{
    char status[128];

    snprintf(status, sizeof status, "bus %s, %u sessions", router_bus_state_name(d->router),
        router_session_count(d->router));
    if (strcmp(status, d->last_status) != 0) {
        snprintf(d->last_status, sizeof d->last_status, "%s", status);
        sdnotify_status("%s", status);
    }
}

static void
daemon_tick(evutil_socket_t fd, short what, void *arg)
{
    struct daemon *d = arg;

    daemon_status(d);
    log_tick();
}

static void
daemon_watchdog(evutil_socket_t fd, short what, void *arg)
{
    sdnotify("WATCHDOG=1");
}

/* The least ping period: a smaller $WATCHDOG_USEC would make the loop spin. */
#define WATCHDOG_MIN_PERIOD_USEC 10000u

/* Ping systemd's watchdog at half of $WATCHDOG_USEC on a timer of its own:
 * the 500 ms tick cannot meet a WatchdogSec= under one second. */
static int
daemon_watchdog_start(struct daemon *d)
{
    uint64_t usec = sdnotify_watchdog_usec(), period = usec / 2;
    struct timeval tv;

    if (usec == 0)
        return 0;
    if (period < WATCHDOG_MIN_PERIOD_USEC) {
        log_warn("WATCHDOG_USEC=%llu is below %ums: pinging the watchdog every %ums, "
                 "which may be too late",
            (unsigned long long)usec, 2 * WATCHDOG_MIN_PERIOD_USEC / 1000,
            WATCHDOG_MIN_PERIOD_USEC / 1000);
        period = WATCHDOG_MIN_PERIOD_USEC;
    }
    tv.tv_sec = (time_t)(period / 1000000u);
    tv.tv_usec = (suseconds_t)(period % 1000000u);
    if ((d->watchdog = event_new(d->base, -1, EV_PERSIST, daemon_watchdog, d)) == NULL)
        return -1;
    return event_add(d->watchdog, &tv);
}

/*
 * A session socket's send buffer: how much of the session's output the
 * kernel holds for the application at once. A larger one than the
 * kernel's default (208KiB) hands a fast reader more per read and per
 * write, fewer turns a message. The kernel caps it at net.core.wmem_max.
 */
static void
set_socket_buffer(int fd, size_t bytes)
{
    static bool warned;
    int v = (int)bytes; /* the setting's range ends at 64MiB */

    if (bytes == 0 || setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &v, sizeof v) == 0 || warned)
        return;
    warned = true;
    log_warn("listen.socket_buffer: SO_SNDBUF: %s (said once)", strerror(errno));
}

static void
daemon_accept(int fd, const struct peer_cred *peer, void *arg)
{
    struct daemon *d = arg;

    if (d->stopping) {
        close(fd);
        return;
    }
    set_socket_buffer(fd, d->cfg.listen.socket_buffer);
    session_new(d->base, fd, peer, d->router);
}

/* Shutdown ends when the bus link is closed and every session is gone, or
 * when the grace period runs out. */
static void
daemon_stop_poll(evutil_socket_t fd, short what, void *arg)
{
    struct daemon *d = arg;

    if (d->bus_closed && router_session_count(d->router) == 0)
        event_base_loopexit(d->base, NULL);
}

static void
daemon_stop_timeout(evutil_socket_t fd, short what, void *arg)
{
    struct daemon *d = arg;

    log_warn("shutdown grace period over, closing what is left");
    event_base_loopexit(d->base, NULL);
}

static void
daemon_bus_closed(void *arg)
{
    struct daemon *d = arg;

    d->bus_closed = true;
    daemon_stop_poll(-1, 0, d);
}

static void
daemon_stop(struct daemon *d, const char *why)
{
    uint32_t ms = d->cfg.daemon.shutdown_grace_ms;
    struct timeval grace = { ms / 1000, (ms % 1000) * 1000 };
    struct timeval poll = { 0, 20000 };

    if (d->stopping) {
        log_notice("%s again: stopping now", why);
        event_base_loopexit(d->base, NULL);
        return;
    }
    d->stopping = true;
    log_notice("%s: stopping", why);
    sdnotify("STOPPING=1");
    listener_pause(d->listener);
    router_shutdown(d->router);
    bus_shutdown(d->bus, ms, daemon_bus_closed, d);

    d->stop_timer = evtimer_new(d->base, daemon_stop_timeout, d);
    d->stop_poll = event_new(d->base, -1, EV_PERSIST, daemon_stop_poll, d);
    if (d->stop_timer == NULL || d->stop_poll == NULL) {
        event_base_loopexit(d->base, NULL);
        return;
    }
    event_add(d->stop_timer, &grace);
    event_add(d->stop_poll, &poll);
}

/* A permissive setting (see audit.h), said through the log. */
static void
warn_permissive(void *arg, const char *msg)
{
    log_warn("%s", msg);
}

/* Settings a running daemon cannot change: keep the old ones, say so. */
static void
keep_restart_only(const struct config *old, struct config *new)
{
    const struct config_listen *o = &old->listen;
    struct config_listen *n = &new->listen;

    if (strcmp(o->path, n->path) != 0 || o->mode != n->mode ||
        (o->group == NULL) != (n->group == NULL) ||
        (o->group != NULL && strcmp(o->group, n->group) != 0)) {
        log_warn("reload: listen.path, listen.mode and listen.group need a restart; "
                 "keeping %s",
            o->path);
        free(n->path);
        n->path = strdup(o->path);
        n->mode = o->mode;
        free(n->group);
        n->group = o->group ? strdup(o->group) : NULL;
    }
    if ((old->metrics.listen == NULL) != (new->metrics.listen == NULL) ||
        (old->metrics.listen != NULL &&
            strcmp(old->metrics.listen, new->metrics.listen) != 0)) {
        log_warn("reload: metrics.listen needs a restart; keeping %s",
            old->metrics.listen != NULL ? old->metrics.listen : "it off");
        free(new->metrics.listen);
        new->metrics.listen = old->metrics.listen ? strdup(old->metrics.listen) : NULL;
        new->metrics.allow_remote = old->metrics.allow_remote;
    }
    if (old->log.dest != new->log.dest) {
        log_warn("reload: log.destination needs a restart");
        new->log.dest = old->log.dest;
    }
}

static void
daemon_reload(struct daemon *d)
{
    struct config next, old;
    char err[512];

    sdnotify("RELOADING=1");
    log_notice("reloading %s", d->cfg.path);
    memset(&next, 0, sizeof next);
    if (config_load(&next, d->cfg.path, err, sizeof err) != 0) {
        log_error("reload refused, old configuration stays: %s", err);
        config_free(&next);
        sdnotify("READY=1");
        return;
    }
    if (d->detached)
        next.log.dest = LOG_DEST_SYSLOG; /* as at start: no change to warn of */
    /* Before the file checks: a start-only setting kept at its old value
     * (listen.group naming a group not there yet) must not refuse the
     * settings that do apply. */
    keep_restart_only(&d->cfg, &next);
    if (config_check_files(&next, err, sizeof err) != 0) {
        log_error("reload refused, old configuration stays: %s", err);
        config_free(&next);
        sdnotify("READY=1");
        return;
    }
    audit_config(&next, warn_permissive, NULL);
    if (bus_reconfigure(d->bus, &next.bus, err, sizeof err) != 0) {
        log_error("reload refused, old configuration stays: %s", err);
        config_free(&next);
        sdnotify("READY=1");
        return;
    }
    old = d->cfg;
    d->cfg = next;
    config_free(&old);
    log_set_level(d->debug ? LOG_DEBUG : d->cfg.log.level);
    router_reconfigure(d->router, &d->cfg);
    session_configure(&d->cfg);
    if (d->metrics != NULL)
        metrics_reconfigure(d->metrics, &d->cfg.metrics);
    log_notice("reloaded %s", d->cfg.path);
    sdnotify("READY=1");
}

static void
daemon_signal(evutil_socket_t sig, short what, void *arg)
{
    struct daemon *d = arg;

    if (sig == SIGHUP) {
        /* A reload's lines, which the operator asked for, all get out. */
        log_limit_floods(false);
        daemon_reload(d);
        log_limit_floods(true);
    } else
        daemon_stop(d, sig == SIGTERM ? "SIGTERM" : "SIGINT");
}

static void
bus_on_state(void *arg, enum bus_state state, const char *reason)
{
    struct daemon *d = arg;

    router_bus_state(d->router, state, reason);
    daemon_status(d);
}

static void
bus_on_message(void *arg, const struct wire_msg *msg)
{
    router_bus_message(((struct daemon *)arg)->router, msg);
}

static void
bus_on_drained(void *arg)
{
    router_bus_drained(((struct daemon *)arg)->router);
}

/* An absolute version of path, in abs: daemonize() changes directory to
 * "/", and a reload reads the configuration file again after it. */
static const char *
absolute_path(const char *path, char *abs, size_t size)
{
    char cwd[2048];

    if (path[0] == '/' || getcwd(cwd, sizeof cwd) == NULL)
        return path;
    snprintf(abs, size, "%s/%s", cwd, path);
    return abs;
}

/* --check-config: the TLS files load as a connection (and a reload) loads
 * them, not only open: a CA file that is no PEM would pass, and then the
 * link could never come up. */
static int
check_tls(const struct config *cfg, char *err, size_t errlen)
{
    SSL_CTX *ctx;
    char why[256];

    if (!cfg->bus.tls.enabled)
        return 0;
    if ((ctx = tls_ctx_new(&cfg->bus.tls, why, sizeof why)) == NULL)
        return config_err_for(cfg, "bus.tls", err, errlen, "bus.tls: %s", why);
    tls_ctx_free(ctx);
    return 0;
}

static size_t
bus_on_batch_end(void *arg)
{
    router_bus_batch_end(((struct daemon *)arg)->router);
    return session_turn_share();
}

/* Double fork for systems without systemd; logs go to syslog then. The
 * pid file, opened and locked before, gets the final pid. */
static int
daemonize(int pidfd)
{
    pid_t pid;
    int fd;

    if ((pid = fork()) == -1)
        return -1;
    if (pid != 0)
        _exit(0);
    if (setsid() == -1)
        return -1;
    if ((pid = fork()) == -1)
        return -1;
    if (pid != 0)
        _exit(0);
    if (chdir("/") == -1)
        return -1;
    if ((fd = open("/dev/null", O_RDWR)) != -1) {
        dup2(fd, STDIN_FILENO);
        dup2(fd, STDOUT_FILENO);
        dup2(fd, STDERR_FILENO);
        if (fd > STDERR_FILENO)
            close(fd);
    }
    if (pidfd >= 0 && pidfile_write(pidfd) != 0)
        return -1;
    return 0;
}

static int
daemon_start(struct daemon *d)
{
    struct bus_callbacks cb = { bus_on_state, bus_on_message, bus_on_drained,
        bus_on_batch_end };
    struct timeval tick = { 0, 500000 };
    char err[512];

    if ((d->base = event_base_new()) == NULL)
        return -1;
    d->dns = evdns_base_new(d->base,
        EVDNS_BASE_INITIALIZE_NAMESERVERS | EVDNS_BASE_DISABLE_WHEN_INACTIVE);
    if (d->dns == NULL)
        d->dns = evdns_base_new(d->base, EVDNS_BASE_DISABLE_WHEN_INACTIVE);
    if (d->dns == NULL) {
        log_error("cannot start the DNS resolver");
        return -1;
    }
    if ((d->router = router_new(d->base, &d->cfg)) == NULL)
        return -1;
    if ((d->bus = bus_new(d->base, d->dns, &d->cfg.bus, &cb, d)) == NULL)
        return -1;
    router_set_bus(d->router, d->bus);
    if (session_start(d->base, &d->cfg) != 0)
        return -1;
    /* Before the session socket: once that answers, everything does. */
    if ((d->cfg.metrics.listen != NULL || metrics_passed_fd() >= 0) &&
        (d->metrics = metrics_new(d->base, &d->cfg.metrics, d->router, err, sizeof err)) ==
            NULL) {
        log_error("%s", err);
        return -1;
    }
    d->listener = listener_new(d->base, &d->cfg.listen, daemon_accept, d, err, sizeof err);
    if (d->listener == NULL) {
        log_error("%s", err);
        return -1;
    }
    d->sig_term = evsignal_new(d->base, SIGTERM, daemon_signal, d);
    d->sig_int = evsignal_new(d->base, SIGINT, daemon_signal, d);
    d->sig_hup = evsignal_new(d->base, SIGHUP, daemon_signal, d);
    d->tick = event_new(d->base, -1, EV_PERSIST, daemon_tick, d);
    if (d->sig_term == NULL || d->sig_int == NULL || d->sig_hup == NULL || d->tick == NULL)
        return -1;
    event_add(d->sig_term, NULL);
    event_add(d->sig_int, NULL);
    event_add(d->sig_hup, NULL);
    event_add(d->tick, &tick);
    if (daemon_watchdog_start(d) != 0)
        return -1;

    if (bus_start(d->bus) != 0)
        return -1;
    log_notice("busgated %s listening on %s%s, bus %s:%u", PACKAGE_VERSION,
        listener_path(d->listener),
        listener_is_activated(d->listener) ? " (socket activation)" : "", d->cfg.bus.host,
        d->cfg.bus.port);
    sdnotify("READY=1");
    if (d->watchdog != NULL)
        sdnotify("WATCHDOG=1"); /* the first period starts now */
    daemon_status(d);
    return 0;
}

static void
daemon_free(struct daemon *d)
{
    struct event **evs[] = { &d->sig_term, &d->sig_int, &d->sig_hup, &d->tick, &d->watchdog,
        &d->stop_timer, &d->stop_poll };
    sigset_t stop;

    /* Freeing the signal events restores the default actions: a second
     * SIGTERM during the teardown would then kill the daemon mid-exit.
     * Blocked, it waits and goes with the process. */
    sigemptyset(&stop);
    sigaddset(&stop, SIGTERM);
    sigaddset(&stop, SIGINT);
    sigaddset(&stop, SIGHUP);
    sigprocmask(SIG_BLOCK, &stop, NULL);
    for (size_t i = 0; i < sizeof evs / sizeof evs[0]; i++)
        if (*evs[i] != NULL)
            event_free(*evs[i]);
    metrics_free(d->metrics);
    if (d->listener != NULL)
        listener_free(d->listener);
    session_stop();
    if (d->router != NULL)
        router_free(d->router);
    if (d->bus != NULL)
        bus_free(d->bus);
    if (d->dns != NULL)
        evdns_base_free(d->dns, 1); /* fail pending lookups: no leak */
    if (d->base != NULL)
        event_base_free(d->base);
    config_free(&d->cfg);
}

int
main(int argc, char **argv)
{
    static const struct option opts[] = {
        { "config", required_argument, NULL, 'c' },
        { "check-config", no_argument, NULL, 't' },
        { "daemon", no_argument, NULL, 'd' },
        { "pidfile", required_argument, NULL, 'p' },
        { "debug", no_argument, NULL, 'D' },
        { "version", no_argument, NULL, 'V' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    static char path_abs[4096], pidfile_abs[4096];
    const char *path = CONFIG_DEFAULT_PATH, *pidfile = NULL;
    bool check = false, detach = false, debug = false;
    struct daemon d;
    char err[512];
    int c, rc, pidfd = -1;

    while ((c = getopt_long(argc, argv, "c:tdp:DVh", opts, NULL)) != -1) {
        switch (c) {
        case 'c':
            path = absolute_path(optarg, path_abs, sizeof path_abs);
            break;
        case 't':
            check = true;
            break;
        case 'd':
            detach = true;
            break;
        case 'p':
            pidfile = absolute_path(optarg, pidfile_abs, sizeof pidfile_abs);
            break;
        case 'D':
            debug = true;
            break;
        case 'V':
            printf("busgated %s (bus protocol v%d, line protocol %d)\n", PACKAGE_VERSION,
                WIRE_PROTOCOL_VERSION, LP_PROTOCOL_VERSION);
            return 0;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind != argc) {
        usage(stderr);
        return 2;
    }

    memset(&d, 0, sizeof d);
    if (config_load(&d.cfg, path, err, sizeof err) != 0) {
        fprintf(stderr, "busgated: %s\n", err);
        config_free(&d.cfg);
        return 1;
    }
    if (check) {
        if ((rc = config_check_files(&d.cfg, err, sizeof err)) == 0)
            rc = check_tls(&d.cfg, err, sizeof err);
        if (rc != 0)
            fprintf(stderr, "busgated: %s\n", err);
        else {
            audit_config(&d.cfg, warn_permissive, NULL);
            config_dump(&d.cfg, stdout);
            fprintf(stderr, "busgated: %s: configuration OK\n", path);
        }
        config_free(&d.cfg);
        return rc == 0 ? 0 : 1;
    }
    if (config_check_files(&d.cfg, err, sizeof err) != 0) {
        fprintf(stderr, "busgated: %s\n", err);
        config_free(&d.cfg);
        return 1;
    }

    /* Locked before detaching, so a refusal still reaches the terminal. */
    if (detach && pidfile != NULL && (pidfd = pidfile_open(pidfile, err, sizeof err)) < 0) {
        fprintf(stderr, "busgated: %s\n", err);
        config_free(&d.cfg);
        return 1;
    }

    d.debug = debug;
    d.detached = detach;
    if (detach)
        d.cfg.log.dest = LOG_DEST_SYSLOG;
    log_init("busgated", d.cfg.log.dest, debug ? LOG_DEBUG : d.cfg.log.level);
    signal(SIGPIPE, SIG_IGN);
    if (detach && daemonize(pidfd) != 0) {
        log_error("cannot detach: %s", strerror(errno));
        if (pidfd >= 0)
            pidfile_remove(pidfile, pidfd);
        config_free(&d.cfg);
        return 1;
    }

    audit_config(&d.cfg, warn_permissive, NULL);
    rc = daemon_start(&d) == 0 ? 0 : 1;
    if (rc == 0) {
        log_limit_floods(true); /* start-up is over: every line of it got out */
        event_base_dispatch(d.base);
        /* The loop is over; a late signal must not kill the teardown. */
        signal(SIGTERM, SIG_IGN);
        signal(SIGINT, SIG_IGN);
        signal(SIGHUP, SIG_IGN);
        log_notice("stopped");
    }
    daemon_free(&d);
    if (pidfd >= 0)
        pidfile_remove(pidfile, pidfd);
    log_close();
    return rc;
}
