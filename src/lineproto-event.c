/*
 * The local line protocol, client side: parse the events and replies the
 * daemon writes (the busgate CLI, benchmarks, tests).
 */
#include <stdlib.h>
#include <string.h>

#include "guid.h"
#include "lineproto.h"
#include "lineproto-int.h"

/* ---- event parsing (client side) ---- */

void
lp_event_init(struct lp_event *ev)
{
    memset(ev, 0, sizeof(*ev));
}

void
lp_event_free(struct lp_event *ev)
{
    free(ev->store);
    memset(ev, 0, sizeof(*ev));
}

static void
event_reset(struct lp_event *ev)
{
    void *store = ev->store;
    size_t cap = ev->store_cap;

    memset(ev, 0, sizeof(*ev));
    ev->store = store;
    ev->store_cap = cap;
}

/* Daemon output: any decoded name, empty allowed, bounded. */
static int
event_name(const struct tok *t, uint32_t max, char **names, struct lp_name *out)
{
    const char *why;
    uint32_t n;

    if (lp_decode_name(t->p, t->n, *names, &n, &why) < 0 || n > max)
        return -1;
    out->ptr = *names;
    out->len = n;
    *names += t->n + 1;
    return 0;
}

static bool
event_word(const struct tok *t, const char *yes, const char *no, bool *out)
{
    if (tok_is(t, yes))
        *out = true;
    else if (tok_is(t, no))
        *out = false;
    else
        return false;
    return true;
}

/* Token counts and layout of the structured events. */
static int
parse_data(struct lp_event *ev, const struct tok *args, const char *p, const char *end,
    const struct lp_limits *lim, size_t names_room)
{
    struct pkt_scan scan;
    struct tok ctype = { NULL, 0 };
    char *names;
    int32_t *ents;
    size_t pk_room;
    struct lp_name *dst[4] = { &ev->feed, &ev->topic, &ev->user, &ev->host };
    bool has_type = take_type_token(&p, end, &ctype);

    if (has_type)
        names_room += ctype.n + 1;
    lp_scan_packets(p, end, lim->max_entitlements, &scan);
    if (scan.lens_ok) {
        ev->n_packets = scan.n_specs;
        ev->payload_len = scan.payload_len;
    }
    if (scan.bad != NULL || scan.n_specs > lim->max_packets ||
        scan.payload_len > lim->max_payload)
        return -1;
    pk_room = ALIGN8(scan.n_specs * sizeof(struct wire_packet)) +
        ALIGN8((size_t)scan.n_ents * sizeof(int32_t));
    if (lp_store_reserve(&ev->store, &ev->store_cap, pk_room + names_room) == NULL)
        return -1;
    ev->packets = ev->store;
    ents =
        (int32_t *)((char *)ev->store + ALIGN8(scan.n_specs * sizeof(struct wire_packet)));
    names = (char *)ev->store + pk_room;
    for (int i = 0; i < 4; i++)
        if (event_name(&args[i], lim->max_name, &names, dst[i]) < 0)
            return -1;
    if (!event_word(&args[4], "image", "delta", &ev->is_image) ||
        !event_word(&args[5], "unicast", "multicast", &ev->is_unicast))
        return -1;
    if (has_type && event_name(&ctype, lim->max_name, &names, &ev->content_type) < 0)
        return -1;
    lp_fill_packets(p, end, lim->max_entitlements, ev->packets, scan.n_specs, ents);
    return 0;
}

/* NOTIFICATION add|remove ID user host feed topic; AUTHREQ ID user host feed topic. */
static int
parse_id_names(struct lp_event *ev, const struct tok *args, const struct lp_limits *lim,
    size_t names_room)
{
    struct lp_name *dst[4] = { &ev->user, &ev->host, &ev->feed, &ev->topic };
    char *names;

    if (guid_from_text(args[0].p, args[0].n, ev->client_id) < 0)
        return -1;
    if (lp_store_reserve(&ev->store, &ev->store_cap, names_room) == NULL)
        return -1;
    names = ev->store;
    for (int i = 0; i < 4; i++)
        if (event_name(&args[1 + i], lim->max_name, &names, dst[i]) < 0)
            return -1;
    return 0;
}

static const struct lp_limits no_limits = {
    UINT32_MAX,
    UINT32_MAX,
    UINT32_MAX,
    UINT32_MAX,
    0,
};

/* Events whose payload is the free text after the verb. */
struct text_event {
    const char *name;
    enum lp_event_kind kind;
    bool needs_text;
};

static const struct text_event text_events[] = {
    { "HELLO", LP_EV_HELLO, true },
    { "-ERR", LP_EV_ERR, true },
    { "BUS", LP_EV_BUS, true },
    { "REVOKED", LP_EV_REVOKED, true },
    { "STAT", LP_EV_STAT, true },
    { "PONG", LP_EV_PONG, false },
    { "+OK", LP_EV_OK, false },
    { "END", LP_EV_END, false },
};

static int
parse_text_event(struct lp_event *ev, const struct text_event *te, const char *p,
    const char *end)
{
    char *copy;
    size_t n;

    while (p < end && is_sep(*p))
        p++;
    n = (size_t)(end - p);
    if (te->needs_text && n == 0)
        return -1;
    if (lp_store_reserve(&ev->store, &ev->store_cap, n + 1) == NULL)
        return -1;
    copy = ev->store;
    memcpy(copy, p, n);
    copy[n] = '\0';
    ev->rest = copy;
    ev->rest_len = n;
    return 0;
}

int
lp_parse_event(const char *line, size_t len, const struct lp_limits *lim,
    struct lp_event *ev)
{
    const char *p = line, *end;
    struct tok verb, args[6], extra;
    size_t nargs = 0, want, names_room = 0;

    event_reset(ev);
    if (lim == NULL)
        lim = &no_limits;
    if (len > 0 && line[len - 1] == '\r')
        len--;
    end = line + len;
    if (!next_token(&p, end, &verb))
        return -1;

    /* DATA first: it is nearly all a subscriber reads. */
    if (tok_is(&verb, "DATA")) {
        ev->kind = LP_EV_DATA;
        want = 6;
    } else if (tok_is(&verb, "NOTIFICATION")) {
        ev->kind = LP_EV_NOTIFICATION;
        want = 6;
    } else if (tok_is(&verb, "AUTHREQ")) {
        ev->kind = LP_EV_AUTHREQ;
        want = 5;
    } else {
        for (size_t i = 0; i < sizeof(text_events) / sizeof(text_events[0]); i++) {
            if (tok_is(&verb, text_events[i].name)) {
                ev->kind = text_events[i].kind;
                return parse_text_event(ev, &text_events[i], p, end);
            }
        }
        return -1;
    }
    while (nargs < want && next_token(&p, end, &args[nargs]))
        nargs++;
    if (nargs < want)
        return -1;
    for (size_t i = 0; i < nargs; i++)
        names_room += args[i].n + 1;

    switch (ev->kind) {
    case LP_EV_DATA:
        return parse_data(ev, args, p, end, lim, names_room);
    case LP_EV_NOTIFICATION:
        if (next_token(&p, end, &extra) ||
            !event_word(&args[0], "add", "remove", &ev->is_add))
            return -1;
        return parse_id_names(ev, args + 1, lim, names_room);
    default:
        if (next_token(&p, end, &extra))
            return -1;
        return parse_id_names(ev, args, lim, names_room);
    }
}
