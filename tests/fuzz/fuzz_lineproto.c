/*
 * libFuzzer target for the line protocol. The first input byte picks the
 * limits and the direction, the next four the sizes of the chunks the
 * stream arrives in; the rest is the stream. It goes through lineproto's
 * framer, as the session (commands) or the CLI (events) reads it: once
 * whole and once in those chunks.
 *
 * Every line goes through both parsers. Checks, beyond "no crash, no
 * leak, no UB":
 *  - the framer yields the same items, byte for byte, however the stream
 *    is chunked; lines hold no newline and are within max_line; payloads
 *    have the announced length; every byte is drained or still buffered;
 *  - an accepted command obeys its limits (names non-empty, valid UTF-8,
 *    at most max_name, NUL-terminated; packets, entitlements and payload
 *    within bounds, payload_len the sum of the lengths), and its names
 *    survive lp_put_name and a re-parse unchanged;
 *  - a refused command has a known code and a message, and announces a
 *    payload only for PUB/SEND;
 *  - an accepted DATA / NOTIFICATION / AUTHREQ event formats back (through
 *    lp_format_data etc.) to a line that parses to the same event, and
 *    formatting that again gives the same bytes (a fixed point);
 *  - -ERR replies built from parser messages are always one line.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>

#include "lineproto.h"
#include "fuzz.h"

/* Payload bytes for re-formatted events whose payload was not in the input. */
static const uint8_t zeros[1024];

/* Small limits reach the refusals often; roomy ones reach deep commands. */
static void
pick_limits(uint8_t seed, struct lp_limits *lim)
{
    if (seed & 0x80) {
        lim->max_name = 4;
        lim->max_payload = 16;
        lim->max_packets = 2;
        lim->max_entitlements = 2;
    } else {
        lim->max_name = 64;
        lim->max_payload = sizeof(zeros);
        lim->max_packets = 16;
        lim->max_entitlements = 16;
    }
}

/* An independent strict UTF-8 check (by code point ranges). */
static bool
utf8_ok(const unsigned char *s, size_t n)
{
    size_t i = 0;

    while (i < n) {
        unsigned char c = s[i];
        uint32_t cp, min;
        size_t k;

        if (c < 0x80) {
            i++;
            continue;
        }
        if ((c & 0xe0) == 0xc0) {
            k = 1, cp = c & 0x1f, min = 0x80;
        } else if ((c & 0xf0) == 0xe0) {
            k = 2, cp = c & 0x0f, min = 0x800;
        } else if ((c & 0xf8) == 0xf0) {
            k = 3, cp = c & 0x07, min = 0x10000;
        } else {
            return false;
        }
        if (n - i <= k)
            return false;
        for (size_t j = 1; j <= k; j++) {
            if ((s[i + j] & 0xc0) != 0x80)
                return false;
            cp = cp << 6 | (s[i + j] & 0x3f);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp < 0xe000))
            return false;
        i += k + 1;
    }
    return true;
}

static void
check_name(const struct lp_name *n, const struct lp_limits *lim, bool client)
{
    CHECK(n->ptr != NULL);
    CHECK(n->ptr[n->len] == '\0');
    CHECK(n->len <= lim->max_name);
    if (client) {
        CHECK(n->len > 0);
        CHECK(utf8_ok((const unsigned char *)n->ptr, n->len));
    }
}

static bool
name_equal(const struct lp_name *a, const struct lp_name *b)
{
    return a->len == b->len && memcmp(a->ptr, b->ptr, a->len) == 0;
}

static bool
packets_equal(const struct wire_packet *a, uint32_t na, const struct wire_packet *b,
    uint32_t nb)
{
    if (na != nb)
        return false;
    for (uint32_t i = 0; i < na; i++) {
        if (a[i].len != b[i].len || a[i].entitlements.n != b[i].entitlements.n ||
            (a[i].entitlements.n > 0 &&
                memcmp(a[i].entitlements.v, b[i].entitlements.v,
                    a[i].entitlements.n * sizeof(int32_t)) != 0))
            return false;
    }
    return true;
}

/* The buffer's first line (without "\n") as a malloc'd copy. */
static char *
first_line(struct evbuffer *b, size_t *len)
{
    size_t n = evbuffer_get_length(b);
    const char *p = (const char *)evbuffer_pullup(b, -1);
    const char *nl = memchr(p, '\n', n);
    char *s;

    CHECK(nl != NULL);
    *len = (size_t)(nl - p);
    s = malloc(*len + 1);
    CHECK(s != NULL);
    memcpy(s, p, *len);
    s[*len] = '\0';
    return s;
}

/* The names of an accepted command go out and come back unchanged. */
static void
check_name_round_trip(const struct lp_cmd *cmd, const struct lp_limits *lim)
{
    struct evbuffer *b = evbuffer_new();
    struct lp_cmd again;
    enum lp_error err;
    char msg[256], *line;
    size_t n;

    CHECK(b != NULL);
    evbuffer_add(b, "SUB ", 4);
    CHECK(lp_put_name(b, cmd->feed.ptr, cmd->feed.len) == 0);
    evbuffer_add(b, " ", 1);
    if (cmd->topic.len > 0)
        CHECK(lp_put_name(b, cmd->topic.ptr, cmd->topic.len) == 0);
    else
        evbuffer_add(b, "t", 1);
    evbuffer_add(b, "\n", 1);
    line = first_line(b, &n);
    lp_cmd_init(&again);
    CHECK(lp_parse_command(line, n, lim, &again, &err, msg, sizeof msg) == 0);
    CHECK(name_equal(&again.feed, &cmd->feed));
    if (cmd->topic.len > 0)
        CHECK(name_equal(&again.topic, &cmd->topic));
    lp_cmd_free(&again);
    free(line);
    evbuffer_free(b);
}

static void
check_command(const char *line, size_t len, const struct lp_limits *lim, struct lp_cmd *cmd)
{
    struct evbuffer *b;
    enum lp_error err;
    char msg[256];
    uint64_t sum = 0, ents = 0;

    if (lp_parse_command(line, len, lim, cmd, &err, msg, sizeof msg) != 0) {
        CHECK(err != LP_ERR_NONE);
        CHECK(strcmp(lp_error_code(err), "internal") != 0);
        CHECK(msg[0] != '\0');
        CHECK(cmd->packets == NULL);
        if (cmd->n_packets > 0)
            CHECK(cmd->verb == LP_PUB || cmd->verb == LP_SEND);
        /* The reply to this refusal is exactly one line. */
        b = evbuffer_new();
        CHECK(b != NULL);
        CHECK(lp_format_err(b, err, "%s", msg) == 0);
        {
            size_t n = evbuffer_get_length(b);
            const char *p = (const char *)evbuffer_pullup(b, -1);

            CHECK(p[n - 1] == '\n');
            CHECK(memchr(p, '\n', n - 1) == NULL);
            CHECK(memchr(p, '\r', n) == NULL);
        }
        evbuffer_free(b);
        return;
    }
    CHECK(err == LP_ERR_NONE);
    switch (cmd->verb) {
    case LP_SUB:
    case LP_UNSUB:
    case LP_PUB:
    case LP_SEND:
    case LP_AUTHORIZE:
        check_name(&cmd->topic, lim, true);
        /* fall through */
    case LP_AUTHORIZER:
    case LP_UNAUTHORIZER:
        /* No feed: every feed's requests, and the feed stays unset. */
        if (cmd->feed.ptr == NULL) {
            CHECK(cmd->feed.len == 0 && cmd->topic.len == 0);
            break;
        }
        /* fall through */
    case LP_NOTIFY:
    case LP_UNNOTIFY:
        check_name(&cmd->feed, lim, true);
        check_name_round_trip(cmd, lim);
        break;
    default:
        CHECK(cmd->feed.len == 0 && cmd->topic.len == 0);
        break;
    }
    CHECK(cmd->entitlements.n <= lim->max_entitlements);
    if (cmd->verb != LP_PUB && cmd->verb != LP_SEND) {
        CHECK(cmd->n_packets == 0 && cmd->payload_len == 0);
        return;
    }
    CHECK(cmd->n_packets <= lim->max_packets);
    CHECK(cmd->n_packets == 0 || cmd->packets != NULL);
    for (uint32_t i = 0; i < cmd->n_packets; i++) {
        sum += cmd->packets[i].len;
        ents += cmd->packets[i].entitlements.n;
        CHECK(cmd->packets[i].entitlements.n <= lim->max_entitlements);
        CHECK(cmd->packets[i].data == NULL);
    }
    (void)ents;
    CHECK(sum == cmd->payload_len);
    CHECK(cmd->payload_len <= lim->max_payload);
}

static void
check_payload(struct lp_cmd *cmd, const uint8_t *payload)
{
    lp_cmd_attach_payload(cmd, payload);
    for (uint32_t i = 0; i < cmd->n_packets; i++)
        CHECK((cmd->packets[i].data != NULL) == (cmd->packets[i].len > 0));
}

/* Re-format an accepted event and parse the result: same event, and the
 * second formatting is byte-identical to the first. */
static void
check_event_round_trip(const struct lp_event *ev, const struct lp_limits *lim)
{
    struct evbuffer *b1 = evbuffer_new(), *b2 = evbuffer_new();
    struct lp_event again;
    struct wire_msg m, m2;
    struct wire_packet *pk = NULL, *pk2 = NULL;
    char *line;
    size_t n;

    CHECK(b1 != NULL && b2 != NULL);
    wire_msg_init(&m);
    m.user = (struct wire_str){ ev->user.ptr, ev->user.len };
    m.host = (struct wire_str){ ev->host.ptr, ev->host.len };
    m.feed = (struct wire_str){ ev->feed.ptr, ev->feed.len };
    m.topic = (struct wire_str){ ev->topic.ptr, ev->topic.len };
    memcpy(m.client_id, ev->client_id, WIRE_GUID_LEN);
    m.is_image = ev->is_image;
    m.is_add = ev->is_add;
    if (ev->kind == LP_EV_DATA) {
        m.type = ev->is_unicast ? WIRE_FORWARDED_UNICAST : WIRE_FORWARDED_MULTICAST;
        if (ev->n_packets > 0) {
            pk = calloc(ev->n_packets, sizeof(*pk));
            CHECK(pk != NULL);
            for (uint32_t i = 0; i < ev->n_packets; i++) {
                pk[i] = ev->packets[i];
                CHECK(pk[i].len <= sizeof(zeros));
                pk[i].data = zeros;
            }
        }
        m.packets = pk;
        m.n_packets = ev->n_packets;
        CHECK(lp_format_data(b1, &m) == 0);
    } else if (ev->kind == LP_EV_NOTIFICATION) {
        m.type = WIRE_FORWARDED_SUBSCRIPTION;
        CHECK(lp_format_notification(b1, &m) == 0);
    } else {
        m.type = WIRE_AUTHORIZATION_REQUEST;
        CHECK(lp_format_authreq(b1, &m) == 0);
    }

    line = first_line(b1, &n);
    lp_event_init(&again);
    CHECK(lp_parse_event(line, n, lim, &again) == 0);
    CHECK(again.kind == ev->kind);
    CHECK(name_equal(&again.feed, &ev->feed) && name_equal(&again.topic, &ev->topic));
    CHECK(name_equal(&again.user, &ev->user) && name_equal(&again.host, &ev->host));
    if (ev->kind == LP_EV_DATA) {
        CHECK(again.is_image == ev->is_image && again.is_unicast == ev->is_unicast);
        CHECK(packets_equal(again.packets, again.n_packets, ev->packets, ev->n_packets));
        CHECK(again.payload_len == ev->payload_len);
        CHECK(evbuffer_get_length(b1) ==
            n + 1 + (ev->n_packets > 0 ? ev->payload_len + 1 : 0));
    } else {
        CHECK(memcmp(again.client_id, ev->client_id, WIRE_GUID_LEN) == 0);
        CHECK(again.is_add == ev->is_add || ev->kind == LP_EV_AUTHREQ);
    }

    /* Fixed point. */
    m2 = m;
    m2.user = (struct wire_str){ again.user.ptr, again.user.len };
    m2.host = (struct wire_str){ again.host.ptr, again.host.len };
    m2.feed = (struct wire_str){ again.feed.ptr, again.feed.len };
    m2.topic = (struct wire_str){ again.topic.ptr, again.topic.len };
    if (ev->kind == LP_EV_DATA) {
        if (again.n_packets > 0) {
            pk2 = calloc(again.n_packets, sizeof(*pk2));
            CHECK(pk2 != NULL);
            for (uint32_t i = 0; i < again.n_packets; i++) {
                pk2[i] = again.packets[i];
                pk2[i].data = zeros;
            }
        }
        m2.packets = pk2;
        CHECK(lp_format_data(b2, &m2) == 0);
    } else if (ev->kind == LP_EV_NOTIFICATION) {
        CHECK(lp_format_notification(b2, &m2) == 0);
    } else {
        CHECK(lp_format_authreq(b2, &m2) == 0);
    }
    CHECK(evbuffer_get_length(b1) == evbuffer_get_length(b2));
    CHECK(memcmp(evbuffer_pullup(b1, -1), evbuffer_pullup(b2, -1),
              evbuffer_get_length(b1)) == 0);

    free(pk);
    free(pk2);
    free(line);
    lp_event_free(&again);
    evbuffer_free(b1);
    evbuffer_free(b2);
}

static void
same_name(const struct lp_name *a, const struct lp_name *b)
{
    CHECK(
        a->len == b->len && memcmp(a->ptr, b->ptr, a->len) == 0 && b->ptr[b->len] == '\0');
}

/* lp_parse_event_ref agrees with lp_parse_event: the same verdict and
 * names, terminated in place on a writable copy of the line. Both events
 * are reused, as a reader's are (their kept head may give the names), so
 * a third parse into a fresh event checks that against parsing afresh. */
static void
check_event_ref(const char *line, size_t len, const struct lp_limits *lim,
    const struct lp_event *ev, int rc)
{
    static struct lp_event ref;
    struct lp_event fresh;
    char *copy = malloc(len + 1);

    CHECK(copy != NULL);
    memcpy(copy, line, len);
    copy[len] = '\n';
    lp_event_init(&fresh);
    CHECK(lp_parse_event(line, len, lim, &fresh) == rc);
    CHECK(lp_parse_event_ref(copy, len, lim, &ref) == rc);
    if (rc == 0 && ev->kind == LP_EV_DATA) {
        same_name(&fresh.feed, &ev->feed);
        same_name(&fresh.topic, &ev->topic);
        same_name(&fresh.user, &ev->user);
        same_name(&fresh.host, &ev->host);
        CHECK(fresh.is_image == ev->is_image && fresh.is_unicast == ev->is_unicast);
        CHECK(fresh.content_type.len == ev->content_type.len);
        CHECK(packets_equal(fresh.packets, fresh.n_packets, ev->packets, ev->n_packets));
    }
    lp_event_free(&fresh);
    if (rc == 0) {
        lp_event_terminate(&ref);
        CHECK(ref.kind == ev->kind);
        if (ev->kind == LP_EV_DATA || ev->kind == LP_EV_NOTIFICATION ||
            ev->kind == LP_EV_AUTHREQ) {
            same_name(&ev->feed, &ref.feed);
            same_name(&ev->topic, &ref.topic);
            same_name(&ev->user, &ref.user);
            same_name(&ev->host, &ref.host);
        }
        if (ev->kind == LP_EV_DATA) {
            CHECK(ev->content_type.len == ref.content_type.len);
            if (ev->content_type.len > 0)
                same_name(&ev->content_type, &ref.content_type);
            CHECK(ev->n_packets == ref.n_packets && ev->payload_len == ref.payload_len);
        }
    }
    free(copy);
}

/* Parse and check an event line; true when it was accepted. */
static bool
check_event(const char *line, size_t len, const struct lp_limits *lim, struct lp_event *ev)
{
    int rc = lp_parse_event(line, len, lim, ev);

    check_event_ref(line, len, lim, ev, rc);
    if (rc != 0)
        return false;
    switch (ev->kind) {
    case LP_EV_DATA:
        check_name(&ev->feed, lim, false);
        check_name(&ev->topic, lim, false);
        check_name(&ev->user, lim, false);
        check_name(&ev->host, lim, false);
        CHECK(ev->n_packets <= lim->max_packets);
        CHECK(ev->payload_len <= lim->max_payload);
        check_event_round_trip(ev, lim);
        break;
    case LP_EV_NOTIFICATION:
    case LP_EV_AUTHREQ:
        check_event_round_trip(ev, lim);
        break;
    default:
        CHECK(ev->rest != NULL && ev->rest[ev->rest_len] == '\0');
        CHECK(ev->rest_len <= len);
        break;
    }
    return true;
}

/* One pass of the stream through the framer. */
struct pass {
    struct lp_limits lim;
    uint32_t max_line;
    bool events; /* read as the CLI reads events, not commands */
    bool check;  /* run the parser checks (once per input is enough) */
    struct lp_framer framer;
    struct evbuffer *in;
    struct evbuffer *log; /* every item, to compare the passes */
    struct lp_cmd cmd;
    struct lp_event ev;
};

/* A line: both parsers see it (when checking); the direction's parser
 * decides whether a payload block follows and whether it is delivered or
 * skipped (a refused command or event has no packets[]). */
static void
pass_line(struct pass *ps, const char *line, size_t len)
{
    enum lp_error err;
    char msg[256];
    bool ev_ok = false;

    CHECK(memchr(line, '\n', len) == NULL);
    CHECK(len <= (size_t)ps->max_line + 1);
    if (ps->check) {
        check_command(line, len, &ps->lim, &ps->cmd);
        ev_ok = check_event(line, len, &ps->lim, &ps->ev);
    } else if (!ps->events) {
        (void)lp_parse_command(line, len, &ps->lim, &ps->cmd, &err, msg, sizeof msg);
    } else {
        ev_ok = lp_parse_event(line, len, &ps->lim, &ps->ev) == 0;
    }
    if (!ps->events) {
        if ((ps->cmd.verb == LP_PUB || ps->cmd.verb == LP_SEND) && ps->cmd.n_packets > 0)
            lp_framer_payload(&ps->framer, ps->cmd.payload_len, ps->cmd.packets != NULL);
    } else if (ps->ev.kind == LP_EV_DATA && ps->ev.n_packets > 0) {
        lp_framer_payload(&ps->framer, ps->ev.payload_len, ev_ok);
    }
}

static void
pass_payload(struct pass *ps, const struct lp_frame *fr)
{
    if (!ps->events) {
        CHECK(fr->len == ps->cmd.payload_len);
        check_payload(&ps->cmd, fr->data);
    } else {
        CHECK(fr->len == ps->ev.payload_len);
    }
}

/* Take every complete item out of the buffer, logging each. */
static void
pass_drain(struct pass *ps)
{
    struct lp_frame fr;
    enum lp_frame_kind k;

    while ((k = lp_framer_next(&ps->framer, ps->in, &fr)) != LP_FRAME_MORE) {
        uint64_t head[3] = { k, fr.len, fr.skipping };

        evbuffer_add(ps->log, head, sizeof head);
        if (k == LP_FRAME_LINE || k == LP_FRAME_PAYLOAD)
            evbuffer_add(ps->log, fr.data, fr.len);
        if (k == LP_FRAME_LINE)
            pass_line(ps, fr.data, fr.len);
        else if (k == LP_FRAME_PAYLOAD)
            pass_payload(ps, &fr);
    }
}

/* Feed the stream in chunks (sizes[i % 4] + 1 bytes; NULL: whole). */
static void
pass_run(struct pass *ps, const uint8_t *data, size_t size, const uint8_t *sizes)
{
    size_t off = 0, n;

    lp_framer_init(&ps->framer, ps->max_line);
    lp_cmd_init(&ps->cmd);
    lp_event_init(&ps->ev);
    ps->in = evbuffer_new();
    ps->log = evbuffer_new();
    CHECK(ps->in != NULL && ps->log != NULL);
    for (unsigned i = 0; off < size; i++) {
        n = sizes != NULL ? (size_t)sizes[i % 4] + 1 : size;
        if (n > size - off)
            n = size - off;
        evbuffer_add(ps->in, data + off, n);
        off += n;
        pass_drain(ps);
    }
    lp_framer_consume(&ps->framer, ps->in);
    CHECK(ps->framer.bytes + evbuffer_get_length(ps->in) == size);
    lp_cmd_free(&ps->cmd);
    lp_event_free(&ps->ev);
    evbuffer_free(ps->in);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct pass whole = { 0 }, chunked;
    const uint8_t *sizes;

    if (size < 5)
        return 0;
    pick_limits(data[0], &whole.lim);
    whole.max_line = data[0] & 0x40 ? 24 : 1024;
    whole.events = data[0] & 0x20;
    chunked = whole;
    whole.check = true;
    sizes = data + 1;
    data += 5;
    size -= 5;
    pass_run(&whole, data, size, NULL);
    pass_run(&chunked, data, size, sizes);
    CHECK(evbuffer_get_length(whole.log) == evbuffer_get_length(chunked.log));
    CHECK(evbuffer_get_length(whole.log) == 0 ||
        memcmp(evbuffer_pullup(whole.log, -1), evbuffer_pullup(chunked.log, -1),
            evbuffer_get_length(whole.log)) == 0);
    evbuffer_free(whole.log);
    evbuffer_free(chunked.log);
    return 0;
}
