/*
 * Connecting: asynchronous resolve, each address in turn with a connect
 * timeout, TCP options, then the TLS handshake on the same descriptor.
 */
#include "bus-int.h"

static void bus_try_next_addr(struct bus *bus);

static void
bus_tls_event(struct bufferevent *bev, short events, void *arg)
{
    struct bus *bus = arg;
    char desc[160], why[300], reason[400];

    if (events & BEV_EVENT_CONNECTED) {
        tls_describe_session(bufferevent_openssl_get_ssl(bev), desc, sizeof desc);
        bus_log_attempt(bus, "bus: TLS up (%s)", desc);
        if (!bus->cfg.tls.verify)
            log_warn("bus: TLS certificate verification is off (bus.tls.verify: false): "
                     "the bus at %s is not authenticated",
                bus->peer);
        bus_link_established(bus);
        return;
    }
    if (!(events & (BEV_EVENT_EOF | BEV_EVENT_ERROR)))
        return;
    bus_describe_error(bus, bev, events, why, sizeof why);
    snprintf(reason, sizeof reason, "TLS handshake with %s: %s", bus->peer, why);
    bus_link_failed(bus, reason, false);
}

/* Move the connected socket from the TCP bufferevent to an OpenSSL one. */
static void
bus_start_tls(struct bus *bus)
{
    char err[512], reason[600];
    evutil_socket_t fd;
    SSL *ssl;

    if (bus->ssl_ctx == NULL &&
        (bus->ssl_ctx = tls_ctx_new(&bus->cfg.tls, err, sizeof err)) == NULL) {
        snprintf(reason, sizeof reason, "TLS: %s", err);
        bus_link_failed(bus, reason, false);
        return;
    }
    if ((ssl = tls_ssl_new(bus->ssl_ctx, &bus->cfg.tls, bus->cfg.host, err, sizeof err)) ==
        NULL) {
        snprintf(reason, sizeof reason, "TLS: %s", err);
        bus_link_failed(bus, reason, false);
        return;
    }
    fd = bufferevent_getfd(bus->bev);
    bufferevent_disable(bus->bev, EV_READ | EV_WRITE);
    bufferevent_setfd(bus->bev, -1); /* keep the socket when freeing */
    bufferevent_free(bus->bev);
    bus->bev = bufferevent_openssl_socket_new(bus->base, fd, ssl,
        BUFFEREVENT_SSL_CONNECTING, BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
    if (bus->bev == NULL) {
        /* libevent freed the SSL (CLOSE_ON_FREE) but not the socket */
        evutil_closesocket(fd);
        bus_link_failed(bus, "TLS: cannot set up the connection", false);
        return;
    }
    bus->tls_phase = true;
    bufferevent_openssl_set_allow_dirty_shutdown(bus->bev, 1);
    bufferevent_setcb(bus->bev, NULL, NULL, bus_tls_event, bus);
}

static void
bus_set_sockopts(struct bus *bus, evutil_socket_t fd)
{
    int on = 1, idle = (int)bus->cfg.keepalive_s, intvl, cnt = 3;

    if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on) != 0)
        log_debug("bus: TCP_NODELAY: %s", strerror(errno));
    if (idle <= 0)
        return;
    /* Probes every idle/3 s, 3 unanswered: a dead peer shows within ~2 idle. */
    intvl = idle / 3 > 0 ? idle / 3 : 1;
    if (setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &on, sizeof on) != 0 ||
        setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof idle) != 0 ||
        setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof intvl) != 0 ||
        setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof cnt) != 0)
        log_debug("bus: TCP keepalive: %s", strerror(errno));
}

/* This address did not answer: note why, drop the attempt's bufferevent. */
static void
connect_failed(struct bus *bus)
{
    bus->last_sys_err = EVUTIL_SOCKET_ERROR();
    log_debug("bus: connect to %s: %s", bus->peer,
        evutil_socket_error_to_string(bus->last_sys_err));
    bufferevent_free(bus->bev);
    bus->bev = NULL;
}

static void
bus_tcp_event(struct bufferevent *bev, short events, void *arg)
{
    struct bus *bus = arg;

    if (events & BEV_EVENT_CONNECTED) {
        bus_free_addrs(bus);
        bus_set_sockopts(bus, bufferevent_getfd(bev));
        log_debug("bus: TCP connected to %s", bus->peer);
        if (bus->cfg.tls.enabled)
            bus_start_tls(bus);
        else
            bus_link_established(bus);
        return;
    }
    if (!(events & (BEV_EVENT_EOF | BEV_EVENT_ERROR)))
        return;
    connect_failed(bus);
    bus_try_next_addr(bus);
}

static void
format_peer(const struct evutil_addrinfo *ai, char *buf, size_t len)
{
    char addr[INET6_ADDRSTRLEN] = "?";
    int port = 0;

    if (ai->ai_family == AF_INET6) {
        const struct sockaddr_in6 *s6 = (const void *)ai->ai_addr;

        evutil_inet_ntop(AF_INET6, &s6->sin6_addr, addr, sizeof addr);
        port = ntohs(s6->sin6_port);
        snprintf(buf, len, "[%s]:%d", addr, port);
    } else {
        const struct sockaddr_in *s4 = (const void *)ai->ai_addr;

        evutil_inet_ntop(AF_INET, &s4->sin_addr, addr, sizeof addr);
        port = ntohs(s4->sin_port);
        snprintf(buf, len, "%s:%d", addr, port);
    }
}

/* Connect to the next resolved address; all tried: the attempt failed. */
static void
bus_try_next_addr(struct bus *bus)
{
    char reason[400];

    while (bus->next_addr != NULL) {
        struct evutil_addrinfo *ai = bus->next_addr;

        bus->next_addr = ai->ai_next;
        format_peer(ai, bus->peer, sizeof bus->peer);
        bus->bev = bufferevent_socket_new(bus->base, -1,
            BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
        if (bus->bev == NULL) {
            bus->last_sys_err = ENOMEM;
            break;
        }
        bufferevent_setcb(bus->bev, NULL, NULL, bus_tcp_event, bus);
        bufferevent_set_max_single_read(bus->bev, 1 << 20);
        if (bufferevent_socket_connect(bus->bev, ai->ai_addr, (int)ai->ai_addrlen) == 0)
            return;
        connect_failed(bus);
    }
    snprintf(reason, sizeof reason, "connect to %s: %s", bus_target(bus),
        evutil_socket_error_to_string(bus->last_sys_err));
    bus_link_failed(bus, reason, false);
}

static void
bus_resolved(int result, struct evutil_addrinfo *res, void *arg)
{
    struct bus_resolve *r = arg;
    struct bus *bus = r->bus;
    char reason[400];

    free(r);
    if (bus == NULL) { /* cancelled */
        if (res != NULL)
            evutil_freeaddrinfo(res);
        return;
    }
    bus->resolve = NULL;
    if (result != 0 || res == NULL) {
        if (res != NULL)
            evutil_freeaddrinfo(res);
        snprintf(reason, sizeof reason, "cannot resolve %s: %s", bus->cfg.host,
            evutil_gai_strerror(result != 0 ? result : EVUTIL_EAI_NONAME));
        bus_link_failed(bus, reason, false);
        return;
    }
    bus->addrs = bus->next_addr = res;
    bus->last_sys_err = 0;
    bus_try_next_addr(bus);
}

void
bus_connect_timeout(evutil_socket_t fd, short what, void *arg)
{
    struct bus *bus = arg;
    char reason[400], d[32];

    bus_fmt_duration(bus->cfg.connect_timeout_ms, d, sizeof d);
    if (bus->resolve != NULL)
        snprintf(reason, sizeof reason, "timeout after %s resolving %s", d, bus->cfg.host);
    else if (bus->tls_phase)
        snprintf(reason, sizeof reason, "timeout after %s in the TLS handshake with %s", d,
            bus->peer);
    else
        snprintf(reason, sizeof reason, "timeout after %s connecting to %s", d, bus->peer);
    bus_link_failed(bus, reason, false);
}

void
bus_connect_begin(struct bus *bus)
{
    struct evutil_addrinfo hints;
    struct evdns_getaddrinfo_request *req;
    struct bus_resolve *r;
    char port[8];

    if (bus->stopping)
        return;
    if (bus->attempted)
        bus->st.reconnects++;
    bus->attempted = true;
    bus->rx_any = false;
    bus->peer[0] = '\0';
    bus_log_attempt(bus, "bus: connecting to %s", bus_target(bus));
    bus_set_state(bus, BUS_CONNECTING, NULL);
    if (bus->state != BUS_CONNECTING)
        return; /* on_state shut us down */
    bus_timer_arm(bus->connect_timer, bus->cfg.connect_timeout_ms);

    if ((r = calloc(1, sizeof *r)) == NULL) {
        bus_link_failed(bus, "out of memory", false);
        return;
    }
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_protocol = IPPROTO_TCP;
    snprintf(port, sizeof port, "%u", (unsigned)bus->cfg.port);
    r->bus = bus;
    bus->resolve = r;
    /* May call bus_resolved before returning (numeric host, hosts file):
     * then it returns NULL and r is gone. */
    req = evdns_getaddrinfo(bus->dns, bus->cfg.host, port, &hints, bus_resolved, r);
    if (req != NULL)
        r->req = req;
}
