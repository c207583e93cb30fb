/*
 * Closing a link: a deliberate close drains the last whole messages
 * (bounded by a timer), a failed one goes at once and reports the data it
 * still held (the output remembers its appends as runs of data and of
 * requests, so replayed requests are not counted as lost).
 */
#include "bus-int.h"

static void out_runs_clear(struct bus *bus);

static void
bus_cancel_resolve(struct bus *bus)
{
    struct bus_resolve *r = bus->resolve;

    if (r == NULL)
        return;
    bus->resolve = NULL;
    r->bus = NULL; /* the callback frees r when evdns calls it */
    if (r->req != NULL)
        evdns_getaddrinfo_cancel(r->req);
}

void
bus_free_addrs(struct bus *bus)
{
    if (bus->addrs != NULL)
        evutil_freeaddrinfo(bus->addrs);
    bus->addrs = bus->next_addr = NULL;
}

void
bus_drain_free(struct bus_drain *d)
{
    struct bus *bus = d->bus;

    LIST_REMOVE(d, entry);
    bufferevent_free(d->bev);
    event_free(d->timer);
    free(d);
    if (bus->shutdown_pending && LIST_EMPTY(&bus->drains))
        bus_timer_arm(bus->done_ev, 0);
}

static void
bus_drain_timeout(evutil_socket_t fd, short what, void *arg)
{
    struct bus_drain *d = arg;

    log_warn("bus: closing with %zu bytes unsent (the bus did not take them in time)",
        evbuffer_get_length(bufferevent_get_output(d->bev)));
    bus_drain_free(d);
}

static void
bus_drain_written(struct bufferevent *bev, void *arg)
{
    struct bus_drain *d = arg;

    if (evbuffer_get_length(bufferevent_get_output(bev)) == 0)
        bus_drain_free(d);
}

static void
bus_drain_event(struct bufferevent *bev, short events, void *arg)
{
    bus_drain_free(arg);
}

/* Hand the link's bufferevent over to a drain that closes it once its
 * output has gone out (whole messages only), or after timeout_ms. */
static void
bus_drain_link(struct bus *bus, uint32_t timeout_ms)
{
    struct bufferevent *bev = bus->bev;
    struct bus_drain *d;

    bus->bev = NULL;
    if (evbuffer_get_length(bufferevent_get_output(bev)) == 0 ||
        (d = calloc(1, sizeof *d)) == NULL) {
        bufferevent_free(bev);
        return;
    }
    if ((d->timer = evtimer_new(bus->base, bus_drain_timeout, d)) == NULL) {
        free(d);
        bufferevent_free(bev);
        return;
    }
    d->bus = bus;
    d->bev = bev;
    LIST_INSERT_HEAD(&bus->drains, d, entry);
    bufferevent_disable(bev, EV_READ);
    bufferevent_setwatermark(bev, EV_WRITE, 0, 0);
    bufferevent_setcb(bev, NULL, bus_drain_written, bus_drain_event, d);
    bus_timer_arm(d->timer, timeout_ms);
}

/* Stop the current attempt or link. drain: flush queued messages first. */
void
bus_close_link(struct bus *bus, bool drain, uint32_t drain_ms)
{
    bus_cancel_resolve(bus);
    bus_free_addrs(bus);
    if (bus->connect_timer != NULL)
        evtimer_del(bus->connect_timer);
    if (bus->watchdog != NULL)
        evtimer_del(bus->watchdog);
    if (bus->confirm_timer != NULL)
        evtimer_del(bus->confirm_timer);
    if (bus->bev != NULL) {
        if (drain && (bus->state == BUS_UNCONFIRMED || bus->state == BUS_UP)) {
            bus_batch_flush(bus); /* drained with the rest */
            bus_drain_link(bus, drain_ms);
        } else {
            bufferevent_free(bus->bev);
        }
        bus->bev = NULL;
    }
    bus_batch_discard(bus);
    out_runs_clear(bus);
    bus->tls_phase = false;
}

/* Note len bytes just appended to the link's output. Runs the output has
 * written out already are dropped first: the output is always the last
 * bytes appended, so runs_len never needs to exceed its length. Appends
 * not noted (the credentials and requests made at connect) come before any
 * noted one and count as requests. */
void
bus_out_runs_note(struct bus *bus, size_t len, bool data)
{
    size_t queued = evbuffer_get_length(bufferevent_get_output(bus->bev)) - len;
    struct out_run *run;

    while ((run = TAILQ_FIRST(&bus->runs)) != NULL && bus->runs_len - run->len >= queued) {
        bus->runs_len -= run->len;
        TAILQ_REMOVE(&bus->runs, run, entry);
        free(run);
    }
    run = TAILQ_LAST(&bus->runs, out_run_list);
    if (run == NULL || run->data != data) {
        struct out_run *fresh = calloc(1, sizeof *fresh);

        if (fresh != NULL) {
            fresh->data = data;
            TAILQ_INSERT_TAIL(&bus->runs, fresh, entry);
            run = fresh;
        } else if (run == NULL) {
            return; /* out of memory: the bytes count as requests */
        }
    }
    run->len += len;
    bus->runs_len += len;
}

/* Data bytes among the last queued bytes of the output. */
static size_t
out_runs_data(const struct bus *bus, size_t queued)
{
    const struct out_run *run;
    size_t data = 0, n;

    TAILQ_FOREACH_REVERSE(run, &bus->runs, out_run_list, entry) {
        if (queued == 0)
            break;
        n = run->len < queued ? run->len : queued;
        if (run->data)
            data += n;
        queued -= n;
    }
    return data;
}

static void
out_runs_clear(struct bus *bus)
{
    struct out_run *run;

    while ((run = TAILQ_FIRST(&bus->runs)) != NULL) {
        TAILQ_REMOVE(&bus->runs, run, entry);
        free(run);
    }
    bus->runs_len = 0;
}

/* Bytes the kernel has not had acknowledged yet on fd (0 if unknown). */
static size_t
socket_unacked(evutil_socket_t fd)
{
    int n = 0;

    if (fd < 0 || ioctl(fd, SIOCOUTQ, &n) != 0 || n < 0)
        return 0;
    return (size_t)n;
}

/* A failing link takes its queued output with it: say so and count it
 * (the router acknowledged those messages). */
static void
bus_report_lost(struct bus *bus)
{
    size_t queued, data, kernel;

    if (bus->bev == NULL || (bus->state != BUS_UNCONFIRMED && bus->state != BUS_UP))
        return;
    bus_batch_flush(bus); /* the batch is data too: counted below */
    queued = evbuffer_get_length(bufferevent_get_output(bus->bev));
    data = out_runs_data(bus, queued);
    kernel = socket_unacked(bufferevent_getfd(bus->bev));
    if (data == 0 && kernel == 0)
        return;
    bus->st.bytes_lost += data;
    log_warn("bus: link lost with %zu bytes of data unsent (and %zu bytes of requests, "
             "replayed on the next link; %zu bytes the bus had not acknowledged)",
        data, queued - data, kernel);
}

/* Back-pressure cannot outlive the link: release the router. */
void
bus_release_pressure(struct bus *bus)
{
    if (!bus->pressure)
        return;
    bus->pressure = false;
    if (bus->cb.on_drained != NULL)
        bus->cb.on_drained(bus->cb_arg);
}

/* The attempt or link failed: close it, schedule the next attempt. */
void
bus_link_failed(struct bus *bus, const char *reason, bool auth_failure)
{
    uint32_t delay, cap, min = bus->cfg.reconnect_min_ms;
    char d1[32], d2[32];

    if (bus->state == BUS_UP &&
        bus_now_ms() - bus->up_since_ms >= bus->cfg.reconnect_reset_ms)
        bus->attempt = 0;
    bus_report_lost(bus);
    bus_close_link(bus, false, 0);
    snprintf(bus->st.last_error, sizeof bus->st.last_error, "%s", reason);
    bus_log_down(bus, reason);
    if (bus->state != BUS_UP)
        bus->streak++; /* a link that was up did not fail to come up */
    if (auth_failure)
        bus->st.auth_failures++;
    if (!bus->stopping) {
        delay = bus_backoff_ms(bus->cfg.reconnect_min_ms, bus->cfg.reconnect_max_ms,
            bus->attempt, bus_random_unit());
        cap = bus_backoff_cap(&min, bus->cfg.reconnect_max_ms, bus->attempt);
        bus_fmt_duration(delay, d1, sizeof d1);
        bus_fmt_duration(cap, d2, sizeof d2);
        bus->attempt = bus_next_attempt(bus->attempt, auth_failure);
        log_debug("bus: retry %u in %s (backoff up to %s)", ++bus->retries, d1, d2);
        bus_timer_arm(bus->retry_timer, delay);
    }
    bus_set_state(bus, BUS_DOWN, reason);
    bus_release_pressure(bus);
}
