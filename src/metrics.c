/*
 * metrics.listen: a small evhttp server. GET (and HEAD) only, headers and
 * body bounded, every connection timed out, no per-request state kept.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include "listener.h"
#include "log.h"
#include "metrics.h"
#include "statsfmt.h"

/* Requests are a line and a few headers; nothing needs a body. */
#define METRICS_MAX_HEADERS 8192
#define METRICS_MAX_BODY 0
#define METRICS_BACKLOG 16

struct metrics {
    struct evhttp *http;
    struct router *router;
    char *path; /* the Unix socket we created, to unlink */
    dev_t dev;
    ino_t ino;
};

static void
reply(struct evhttp_request *req, int code, const char *reason, const char *type,
    struct evbuffer *body)
{
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);

    evhttp_add_header(h, "Content-Type", type);
    evhttp_add_header(h, "Cache-Control", "no-store");
    evhttp_send_reply(req, code, reason, body);
}

static void
reply_text(struct evhttp_request *req, int code, const char *reason, const char *text)
{
    struct evbuffer *body = evbuffer_new();

    if (body == NULL) {
        evhttp_send_error(req, HTTP_INTERNAL, NULL);
        return;
    }
    evbuffer_add_printf(body, "%s\n", text);
    reply(req, code, reason, "text/plain; charset=utf-8", body);
    evbuffer_free(body);
}

static void
serve_metrics(struct metrics *m, struct evhttp_request *req)
{
    struct statsfmt *sf = statsfmt_new();
    struct evbuffer *body = evbuffer_new();

    if (sf == NULL || body == NULL || router_stats_snapshot(m->router, sf) != 0 ||
        statsfmt_render_prometheus(sf, body) != 0)
        evhttp_send_error(req, HTTP_INTERNAL, NULL);
    else
        reply(req, HTTP_OK, "OK", "text/plain; version=0.0.4; charset=utf-8", body);
    statsfmt_free(sf);
    if (body != NULL)
        evbuffer_free(body);
}

static void
serve_readyz(struct metrics *m, struct evhttp_request *req)
{
    char why[400], text[420];

    if (router_ready(m->router, why, sizeof why)) {
        reply_text(req, HTTP_OK, "OK", "ready");
        return;
    }
    snprintf(text, sizeof text, "not ready: %s", why);
    reply_text(req, 503, "Service Unavailable", text);
}

static void
on_request(struct evhttp_request *req, void *arg)
{
    struct metrics *m = arg;
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
    const char *path = uri != NULL ? evhttp_uri_get_path(uri) : NULL;
    enum evhttp_cmd_type cmd = evhttp_request_get_command(req);

    if (cmd != EVHTTP_REQ_GET && cmd != EVHTTP_REQ_HEAD) {
        evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", "GET, HEAD");
        reply_text(req, 405, "Method Not Allowed", "only GET");
        return;
    }
    if (path == NULL)
        reply_text(req, HTTP_BADREQUEST, "Bad Request", "bad request");
    else if (strcmp(path, "/metrics") == 0)
        serve_metrics(m, req);
    else if (strcmp(path, "/healthz") == 0)
        reply_text(req, HTTP_OK, "OK", "ok"); /* answered by the loop: it runs */
    else if (strcmp(path, "/readyz") == 0)
        serve_readyz(m, req);
    else
        reply_text(req, HTTP_NOTFOUND, "Not Found",
            "not found: /metrics, /healthz, /readyz");
}

/* A listening socket at the configured address. -1 with err. */
static int
bind_address(struct metrics *m, const char *addr, char *err, size_t errlen)
{
    struct sockaddr_storage ss;
    socklen_t len;
    bool loopback;
    const char *why;
    struct stat st;
    int fd, one = 1;

    if (config_metrics_address(addr, &ss, &len, &loopback, &why) != 0) {
        snprintf(err, errlen, "metrics.listen %s: %s", addr, why);
        return -1;
    }
    if (ss.ss_family == AF_UNIX && listener_clear_stale(addr, err, errlen) != 0)
        return -1;
    if ((fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)) < 0) {
        snprintf(err, errlen, "metrics.listen %s: socket: %s", addr, strerror(errno));
        return -1;
    }
    if (ss.ss_family != AF_UNIX)
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, (struct sockaddr *)&ss, len) != 0 || listen(fd, METRICS_BACKLOG) != 0) {
        snprintf(err, errlen, "metrics.listen %s: %s", addr, strerror(errno));
        close(fd);
        return -1;
    }
    if (ss.ss_family == AF_UNIX && (m->path = strdup(addr)) != NULL &&
        stat(addr, &st) == 0) {
        m->dev = st.st_dev;
        m->ino = st.st_ino;
    }
    return fd;
}

int
metrics_passed_fd(void)
{
    const char *pid_s = getenv("LISTEN_PID"), *fds_s = getenv("LISTEN_FDS");
    const char *names = getenv("LISTEN_FDNAMES");
    int acc = 0, type = 0, i = 0;
    socklen_t len = sizeof acc;
    long n;

    if (pid_s == NULL || fds_s == NULL || names == NULL || atol(pid_s) != (long)getpid())
        return -1;
    n = atol(fds_s);
    /* LISTEN_FDNAMES: the names of fds 3, 4, ... separated by ':'. */
    for (const char *p = names; i < n; i++) {
        size_t l = strcspn(p, ":");

        if (l == strlen(METRICS_FD_NAME) && memcmp(p, METRICS_FD_NAME, l) == 0)
            break;
        if (p[l] == '\0') {
            i = (int)n;
            break;
        }
        p += l + 1;
    }
    if (i >= n)
        return -1;
    if (getsockopt(3 + i, SOL_SOCKET, SO_ACCEPTCONN, &acc, &len) != 0 || !acc ||
        (len = sizeof type, getsockopt(3 + i, SOL_SOCKET, SO_TYPE, &type, &len)) != 0 ||
        type != SOCK_STREAM)
        return -1;
    fcntl(3 + i, F_SETFD, FD_CLOEXEC);
    fcntl(3 + i, F_SETFL, fcntl(3 + i, F_GETFL) | O_NONBLOCK);
    return 3 + i;
}

void
metrics_reconfigure(struct metrics *m, const struct config_metrics *cfg)
{
    struct timeval tv = { cfg->timeout_ms / 1000, (cfg->timeout_ms % 1000) * 1000 };

    evhttp_set_timeout_tv(m->http, &tv);
}

struct metrics *
metrics_new(struct event_base *base, const struct config_metrics *cfg, struct router *r,
    char *err, size_t errlen)
{
    struct metrics *m = calloc(1, sizeof *m);
    int fd;

    if (m == NULL || (m->http = evhttp_new(base)) == NULL) {
        snprintf(err, errlen, "metrics: out of memory");
        free(m);
        return NULL;
    }
    m->router = r;
    evhttp_set_max_headers_size(m->http, METRICS_MAX_HEADERS);
    evhttp_set_max_body_size(m->http, METRICS_MAX_BODY);
    /* Every method reaches on_request, which answers 405 (not evhttp's 501). */
    evhttp_set_allowed_methods(m->http,
        EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD | EVHTTP_REQ_PUT |
            EVHTTP_REQ_DELETE | EVHTTP_REQ_OPTIONS | EVHTTP_REQ_TRACE | EVHTTP_REQ_CONNECT |
            EVHTTP_REQ_PATCH);
    evhttp_set_gencb(m->http, on_request, m);
    metrics_reconfigure(m, cfg);
    if ((fd = metrics_passed_fd()) >= 0) {
        if (evhttp_accept_socket(m->http, fd) != 0) {
            snprintf(err, errlen, "metrics: the systemd socket (fd %d): cannot accept", fd);
            metrics_free(m);
            return NULL;
        }
        log_notice("metrics: serving /metrics, /healthz, /readyz on the systemd socket "
                   "named %s (fd %d)",
            METRICS_FD_NAME, fd);
        return m;
    }
    if ((fd = bind_address(m, cfg->listen, err, errlen)) < 0 ||
        evhttp_accept_socket(m->http, fd) != 0) {
        if (fd >= 0) {
            snprintf(err, errlen, "metrics.listen %s: cannot accept", cfg->listen);
            close(fd);
        }
        metrics_free(m);
        return NULL;
    }
    log_notice("metrics: serving /metrics, /healthz, /readyz on %s", cfg->listen);
    return m;
}

void
metrics_free(struct metrics *m)
{
    struct stat st;

    if (m == NULL)
        return;
    if (m->http != NULL)
        evhttp_free(m->http);
    /* Only the socket we made: not a file someone put there since. */
    if (m->path != NULL && stat(m->path, &st) == 0 && st.st_dev == m->dev &&
        st.st_ino == m->ino)
        unlink(m->path);
    free(m->path);
    free(m);
}
