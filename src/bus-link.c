/*
 * The live link: reading whole messages, confirming the login (the probe
 * of busconfirm.c, or heartbeats), the heartbeat watchdog fed by complete
 * messages only, and telling a failed login from a TLS or network error.
 */
#include "bus-int.h"

/* Decode errors this early on a link fit a wrong bus.protocol. */
#define BUS_MISMATCH_WINDOW 8

static void bus_hint_mismatch(struct bus *bus, const char *sign);

static void
bus_go_up(struct bus *bus)
{
    char extra[64] = "";

    bus->up_since_ms = bus_now_ms();
    bus->fail_reason[0] = '\0';
    bus->fail_repeats = 0;
    if (bus->streak > 0)
        snprintf(extra, sizeof extra, " (after %u failed attempt%s)", bus->streak,
            bus->streak == 1 ? "" : "s");
    bus->streak = 0;
    bus->retries = 0;
    log_notice("bus: up%s", extra);
    bus_set_state(bus, BUS_UP, NULL);
}

static bool
bus_is_heartbeat(const struct bus *bus, const struct wire_msg *m)
{
    return bus->cfg.heartbeat_timeout_ms > 0 &&
        (m->type == WIRE_FORWARDED_MULTICAST || m->type == WIRE_FORWARDED_UNICAST) &&
        bus_wire_str_is(&m->feed, HEARTBEAT_FEED) &&
        bus_wire_str_is(&m->topic, HEARTBEAT_TOPIC);
}

static size_t
bus_out_len(struct bus *bus)
{
    return evbuffer_get_length(bufferevent_get_output(bus->bev));
}

/* The link's own messages (login, heartbeat subscription, probe) count as
 * sent, as their answers count as received: msgs of them made the output
 * grow from before. */
static void
bus_count_own(struct bus *bus, size_t before, unsigned msgs)
{
    size_t now = bus_out_len(bus);

    if (now <= before)
        return;
    bus->st.msgs_out += msgs;
    bus->st.bytes_out += now - before;
}

/* Queue msgs requests the link makes itself: counted as sent, not as data
 * lost if the link fails. */
static void
bus_queue_own(struct bus *bus, struct evbuffer *tmp, unsigned msgs)
{
    size_t n = evbuffer_get_length(tmp);

    if (n == 0)
        return;
    evbuffer_add_buffer(bus_output(bus), tmp); /* after the batch it flushes */
    bus->st.msgs_out += msgs;
    bus->st.bytes_out += n;
    bus_out_runs_note(bus, n, false);
}

/* The probe is settled one way or the other: stop its deadline and
 * withdraw its requests. */
static void
bus_probe_settle(struct bus *bus, enum busconfirm_state state)
{
    struct evbuffer *tmp;

    evtimer_del(bus->confirm_timer);
    bus->confirm.state = state;
    if (bus->confirm.method != CONFIG_CONFIRM_PROBE || (tmp = evbuffer_new()) == NULL)
        return;
    if (busconfirm_withdraw(&bus->confirm, bus->cfg.protocol, tmp) == 0)
        bus_queue_own(bus, tmp, BUSCONFIRM_REQUESTS);
    evbuffer_free(tmp);
}

/* A message came back about the probe (or a heartbeat, confirming by
 * heartbeat). */
static void
bus_probe_answered(struct bus *bus, enum busconfirm_verdict v)
{
    if (v == BUSCONFIRM_REFUSED) {
        bus_probe_settle(bus, BUSCONFIRM_DENIED);
        log_warn("bus: login confirmed, but the login probe was refused (not entitled "
                 "to %s/%s): grant user %s that feed or set bus.confirm",
            bus->confirm.feed, bus->confirm.topic, bus->auth_desc);
        return;
    }
    bus_probe_settle(bus, BUSCONFIRM_CONFIRMED);
    if (bus->confirm.have_client_id) {
        guid_to_text(bus->confirm.client_id, bus->client_id);
        log_info("bus: login confirmed by the probe; this link's client id is %s",
            bus->client_id);
    } else {
        log_info("bus: login confirmed by the %s",
            bus->confirm.method == CONFIG_CONFIRM_PROBE ? "probe" : "first heartbeat");
    }
}

/* bus.confirm_timeout passed without the probe coming back. */
void
bus_confirm_timeout(evutil_socket_t fd, short what, void *arg)
{
    struct bus *bus = arg;
    char reason[512], d[32];

    bus_fmt_duration(bus->cfg.confirm_timeout_ms, d, sizeof d);
    if (bus->rx_any) {
        /* Traffic proves the login: the probe's own roles are denied. */
        bus_probe_settle(bus, BUSCONFIRM_DENIED);
        log_warn("bus: the login probe on feed %s did not come back within %s although "
                 "the link carries traffic (so the login worked): the distributor's roles "
                 "for %s probably deny notify or subscribe on %s, or it waits "
                 "for an authorizer of that feed; grant them or set bus.confirm (STAT "
                 "bus_confirm probe-denied)",
            bus->confirm.feed, d, bus->auth_desc, bus->confirm.feed);
        return;
    }
    bus->confirm.state = BUSCONFIRM_FAILED;
    bus_hint_mismatch(bus, "nothing came back after the login");
    if (!bus->probe_hinted) {
        bus->probe_hinted = true;
        log_notice("bus: if the credentials are right, the distributor may be "
                   "quiet and deny %s the probe's roles (notify, subscribe) on "
                   "feed %s: grant them, or set bus.confirm to heartbeat or none",
            bus->auth_desc, bus->confirm.feed);
    }
    if (bus->cfg.auth != CONFIG_AUTH_NONE)
        snprintf(reason, sizeof reason,
            "probable authentication failure (%s): "
            "no answer to the login probe within %s",
            bus->auth_desc, d);
    else
        snprintf(reason, sizeof reason,
            "no answer to the login probe within %s: "
            "the bus ignores this link",
            d);
    bus_link_failed(bus, reason, bus->cfg.auth != CONFIG_AUTH_NONE);
}

/*
 * The distributor has no version handshake: a wrong bus.protocol shows
 * only as a silent or closed login, or as garbage in the first messages.
 * Say so once, with the fix, when one of those happens.
 */
static void
bus_hint_mismatch(struct bus *bus, const char *sign)
{
    if (bus->mismatch_hinted)
        return;
    bus->mismatch_hinted = true;
    log_warn("bus: possible bus protocol mismatch (bus.protocol=%d): %s. The "
             "distributor cannot say which protocol it speaks; if its version differs, "
             "set bus.protocol to 3 (distributor 3.x), 4 (4.0.0 to 5.x) or 6 "
             "(6.0.0-alpha.6 and later)",
        bus->cfg.protocol, sign);
}

/*
 * Hand on every whole message in the input, drained once at the end.
 * While the messages are handed on, nothing else reads this input; a
 * callback that closes the link frees it. False when the link failed or
 * was closed or replaced (bus->bev != bev): the caller stops.
 */
static bool
bus_take_input(struct bus *bus, struct bufferevent *bev, struct evbuffer *in)
{
    enum busconfirm_verdict v;
    const char *cause = NULL;
    char reason[300];
    struct wire_reader rd;
    bool decoded = false;

    wire_reader_begin(&rd, in);
    for (;;) {
        switch (wire_read(&rd, &bus->cfg.limits, &bus->msg, &cause)) {
        case WIRE_NEED_MORE:
            if (wire_reader_end(&rd) != 0) {
                bus_link_failed(bus, "cannot drain the input", false);
                return false;
            }
            bus->turn_share =
                bus->cb.on_batch_end != NULL ? bus->cb.on_batch_end(bus->cb_arg) : 0;
            return bus->bev == bev;
        case WIRE_ERROR:
            bus->st.protocol_errors++;
            if (bus->st.msgs_in - bus->msgs_at_login < BUS_MISMATCH_WINDOW)
                bus_hint_mismatch(bus,
                    "a message among the first the distributor "
                    "sent could not be decoded");
            log_msg(LOG_ERR, NULL, "bus: protocol error: %s (after %llu messages)",
                cause != NULL ? cause : "invalid message",
                (unsigned long long)bus->st.msgs_in);
            snprintf(reason, sizeof reason, "protocol error: %s",
                cause != NULL ? cause : "invalid message");
            bus_link_failed(bus, reason, false);
            return false;
        case WIRE_DECODED:
            break;
        }
        /* Only a whole message feeds the watchdog: a peer trickling bytes
         * that never complete one is as dead as a silent one. Once per
         * batch: the clock is read once, not per message. */
        if (!decoded) {
            decoded = true;
            bus->last_rx_ms = bus_now_ms();
        }
        bus->st.msgs_in++;
        bus->st.bytes_in += rd.size;
        if (bus->state == BUS_UNCONFIRMED) {
            bus_go_up(bus);
            if (bus->bev != bev)
                return false; /* on_state closed or replaced the link */
        }
        if (bus_is_heartbeat(bus, &bus->msg)) {
            bus->st.heartbeats_in++;
            bus->st.last_heartbeat = time(NULL);
            bus->hb_any = true;
            bus->hb_state = "receiving";
            if (bus->confirm.method == CONFIG_CONFIRM_HEARTBEAT &&
                bus->confirm.state == BUSCONFIRM_WAITING)
                bus_probe_answered(bus, BUSCONFIRM_ECHO);
        }
        switch ((v = busconfirm_check(&bus->confirm, &bus->msg))) {
        case BUSCONFIRM_NOT_OURS:
            break;
        case BUSCONFIRM_ECHO:
        case BUSCONFIRM_REFUSED:
            bus_probe_answered(bus, v);
            continue;
        case BUSCONFIRM_CONSUMED:
            continue;
        }
        if (bus->cb.on_message != NULL)
            bus->cb.on_message(bus->cb_arg, &bus->msg);
        if (bus->bev != bev)
            return false;
    }
}

/*
 * A plain socket that gave at least BUS_READ_AGAIN bytes is read again
 * once they have been handed on, up to BUS_TURN_BYTES in one loop turn:
 * the sessions write what a turn gave them once at its end, so under
 * load a longer turn means more events per write (with 1000 topics of
 * one subscriber each, a turn limited to the ~100 KiB a small TCP
 * receive window holds gives each session one or two events per write).
 * A read that big means the sender is ahead; a smaller one (a bus at a
 * steady rate, a few messages per read) ends the turn, so that what it
 * gave is written at once: read again while anything at all arrives,
 * and a turn at 10k msg/s went on for the whole 1 MiB, delaying events
 * by 100-500 ms.
 *
 * While the turn has given each session waiting for its end little (under
 * BUS_TURN_SHARE on average), it may run on to BUS_TURN_MAX: with 1000
 * topics of one subscriber each, a 1 MiB turn gave each write ~1.4 KB and
 * the gateway's core went half to the kernel, a write per session per
 * turn. A session given much (one busy topic, to one subscriber or to
 * many) has more than its socket takes at the turn's end already; a
 * longer turn would only hold its subscriber waiting for the next.
 */
static size_t
turn_room(const struct bus *bus, size_t turn)
{
    size_t max = bus->turn_share < BUS_TURN_SHARE ? BUS_TURN_MAX : BUS_TURN_BYTES;

    return turn < max ? max - turn : 0;
}

static void
bus_read(struct bufferevent *bev, void *arg)
{
    struct bus *bus = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    size_t turn = 0, room = BUS_TURN_BYTES, got;

    bus->rx_any = true;
    bus->msg.version = bus->cfg.protocol; /* decode at the configured protocol */
    do {
        got = bus->cfg.tls.enabled ? 0 : sockread_more(bev, room);
        turn += got;
        if (!bus_take_input(bus, bev, in))
            return;
    } while (got >= BUS_READ_AGAIN && (room = turn_room(bus, turn)) > 0);
}

static void
bus_written(struct bufferevent *bev, void *arg)
{
    struct bus *bus = arg;

    if (bus->pressure && bus_queued(bus) <= bus->cfg.output_high_water / 2)
        bus_release_pressure(bus);
}

/* An orderly close; one that cuts a message short is worth telling apart. */
static const char *
bus_closed_reason(struct bufferevent *bev)
{
    if (evbuffer_get_length(bufferevent_get_input(bev)) > 0)
        return "connection closed by the bus in the middle of a message";
    return "connection closed by the bus";
}

/* Why an established link or a TLS handshake failed; true if it was a
 * TLS-level error (see tls_is_protocol_error). */
bool
bus_describe_error(struct bus *bus, struct bufferevent *bev, short events, char *buf,
    size_t len)
{
    unsigned long errs[BUS_MAX_SSL_ERRORS], e;
    size_t n = 0;
    int sys_err = EVUTIL_SOCKET_ERROR();
    char why[256];

    if (!bus->tls_phase) {
        if (events & BEV_EVENT_EOF)
            snprintf(buf, len, "%s", bus_closed_reason(bev));
        else
            snprintf(buf, len, "%s", evutil_socket_error_to_string(sys_err));
        return false;
    }
    while ((e = bufferevent_get_openssl_error(bev)) != 0)
        if (n < BUS_MAX_SSL_ERRORS)
            errs[n++] = e;
    if ((events & BEV_EVENT_EOF) && n == 0)
        sys_err = 0;
    tls_describe_failure(bufferevent_openssl_get_ssl(bev), errs, n, sys_err, why,
        sizeof why);
    if ((events & BEV_EVENT_EOF) && strcmp(why, "connection closed") == 0)
        snprintf(buf, len, "%s", bus_closed_reason(bev));
    else
        snprintf(buf, len, "%s", why);
    return tls_is_protocol_error(errs, n);
}

bool
bus_probable_auth_failure(const struct bus_close_facts *f)
{
    return f->unconfirmed && !f->rx_any && f->auth && !f->tls_error &&
        f->since_login_ms <= f->window_ms;
}

static void
bus_link_event(struct bufferevent *bev, short events, void *arg)
{
    struct bus *bus = arg;
    char why[300], reason[512];
    struct bus_close_facts f;
    bool auth_failure;

    if (!(events & (BEV_EVENT_EOF | BEV_EVENT_ERROR)))
        return;
    f.tls_error = bus_describe_error(bus, bev, events, why, sizeof why);
    f.unconfirmed = bus->state == BUS_UNCONFIRMED;
    f.rx_any = bus->rx_any;
    f.auth = bus->cfg.auth != CONFIG_AUTH_NONE;
    f.since_login_ms = bus_now_ms() - bus->auth_sent_ms;
    f.window_ms = bus->cfg.auth_fail_window_ms;
    auth_failure = bus_probable_auth_failure(&f);
    if (auth_failure)
        snprintf(reason, sizeof reason, "probable authentication failure (%s)",
            bus->auth_desc);
    else if (f.tls_error)
        snprintf(reason, sizeof reason, "TLS error: %s", why);
    else
        snprintf(reason, sizeof reason, "%s", why);
    if (auth_failure) {
        log_debug("bus: link closed %llu ms after login: %s",
            (unsigned long long)(bus_now_ms() - bus->auth_sent_ms), why);
        bus_hint_mismatch(bus, "the distributor closed the link right after the login");
    }
    bus_link_failed(bus, reason, auth_failure);
}

void
bus_watchdog(evutil_socket_t fd, short what, void *arg)
{
    struct bus *bus = arg;
    uint32_t timeout = bus->cfg.heartbeat_timeout_ms;
    uint64_t idle = bus_now_ms() - bus->last_rx_ms;
    size_t partial;
    char reason[256], d[32];

    if (timeout == 0)
        return;
    bus_fmt_duration(timeout, d, sizeof d);
    if (bus->rx_any && !bus->hb_any && !bus->hb_warned &&
        bus_now_ms() - bus->auth_sent_ms >= timeout) {
        /* Traffic proves the login; only the heartbeat is missing. */
        bus->hb_warned = true;
        bus->hb_state = "none-received";
        log_warn("bus: no heartbeat received in %s although the link carries traffic "
                 "(so the login worked): check that the distributor has a heartbeat "
                 "interval and, at bus.protocol 6 with authorization on (distributor-wide "
                 "there), that an authorizer grants __admin__/heartbeat",
            d);
    }
    if (idle < timeout) {
        bus_timer_arm(bus->watchdog, timeout - idle);
        return;
    }
    bus->st.heartbeat_timeouts++;
    if (bus->bev != NULL &&
        (partial = evbuffer_get_length(bufferevent_get_input(bus->bev))) > 0) {
        snprintf(reason, sizeof reason,
            "no complete message within %s (%zu bytes of an "
            "unfinished one arrived): the bus is stuck or trickling",
            d, partial);
    } else if (!bus->rx_any) {
        snprintf(reason, sizeof reason, "no heartbeat: not authenticated or dead");
        bus_hint_mismatch(bus, "nothing came back after the login");
    } else if (!bus->hb_any) {
        bus->hb_state = "none-received";
        snprintf(reason, sizeof reason,
            "no heartbeat within %s, and none ever received "
            "on this link: check the distributor's heartbeat interval and (bus.protocol 6) "
            "an authorizer for __admin__/heartbeat",
            d);
    } else {
        bus->hb_state = "stopped";
        snprintf(reason, sizeof reason,
            "no heartbeat within %s: heartbeats stopped "
            "(check the distributor and the network path)",
            d);
    }
    bus_link_failed(bus, reason, false);
}

static int
bus_subscribe_heartbeat(struct bus *bus)
{
    struct wire_msg m;

    wire_msg_init(&m);
    m.type = WIRE_SUBSCRIPTION_REQUEST;
    m.feed.ptr = HEARTBEAT_FEED;
    m.feed.len = sizeof HEARTBEAT_FEED - 1;
    m.topic.ptr = HEARTBEAT_TOPIC;
    m.topic.len = sizeof HEARTBEAT_TOPIC - 1;
    m.is_add = true;
    return wire_encode(bufferevent_get_output(bus->bev), &m);
}

/* TCP (and TLS) are up: authenticate and start reading. */
void
bus_link_established(struct bus *bus)
{
    char err[512], reason[600];
    size_t before;

    evtimer_del(bus->connect_timer);
    bus->st.connects++;
    bufferevent_setcb(bus->bev, bus_read, bus_written, bus_link_event, bus);
    bufferevent_setwatermark(bus->bev, EV_WRITE, bus->cfg.output_high_water / 2, 0);
    bufferevent_set_max_single_read(bus->bev, BUS_IO_CHUNK);
    bufferevent_set_max_single_write(bus->bev, BUS_IO_CHUNK);
    bufferevent_enable(bus->bev, EV_READ | EV_WRITE);
    before = bus_out_len(bus);
    if (bus_send_auth(bus, err, sizeof err) != 0) {
        snprintf(reason, sizeof reason, "credentials: %s", err);
        bus_link_failed(bus, reason, false);
        return;
    }
    bus_count_own(bus, before, 1); /* the login, if auth is not none */
    bus->auth_sent_ms = bus->last_rx_ms = bus_now_ms();
    bus->rx_any = false;
    bus->hb_any = bus->hb_warned = false;
    bus->msgs_at_login = bus->st.msgs_in;
    bus->hb_state = bus->cfg.heartbeat_timeout_ms > 0 ? "waiting" : "off";
    if (bus->cfg.heartbeat_timeout_ms > 0) {
        before = bus_out_len(bus);
        if (bus_subscribe_heartbeat(bus) != 0) {
            bus_link_failed(bus, "cannot queue the heartbeat subscription", false);
            return;
        }
        bus_count_own(bus, before, 1);
        bus_timer_arm(bus->watchdog, bus->cfg.heartbeat_timeout_ms);
    }
    bus->client_id[0] = '\0';
    before = bus_out_len(bus);
    if (busconfirm_begin(&bus->confirm, &bus->cfg, bufferevent_get_output(bus->bev)) != 0) {
        bus_link_failed(bus, "cannot queue the login probe", false);
        return;
    }
    bus_count_own(bus, before, BUSCONFIRM_REQUESTS);
    if (bus->confirm.method == CONFIG_CONFIRM_PROBE)
        bus_timer_arm(bus->confirm_timer, bus->cfg.confirm_timeout_ms);
    bus_log_attempt(bus, "bus: connected, unconfirmed (auth %s)", bus->auth_desc);
    bus_set_state(bus, BUS_UNCONFIRMED, NULL);
}
