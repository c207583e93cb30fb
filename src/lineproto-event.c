/*
 * The local line protocol, client side: parse the events and replies the
 * daemon writes (the busgate CLI, benchmarks, tests).
 */
#include <stddef.h>
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
    free(ev->head.bytes);
    memset(ev, 0, sizeof(*ev));
}

/* Every field but the store and the head (kept for the next event): the
 * fields ahead of them cleared in two memsets, which the compiler writes
 * as ten 16-byte stores; one of all 160 bytes is a "rep stos" (a string
 * instruction of twenty steps, and a slow start on the CPU). */
#define EVENT_RESET_HEAD 80
_Static_assert(offsetof(struct lp_event, store) > EVENT_RESET_HEAD, "event_reset");
static void
event_reset(struct lp_event *ev)
{
    memset(ev, 0, EVENT_RESET_HEAD);
    memset((char *)ev + EVENT_RESET_HEAD, 0,
        offsetof(struct lp_event, store) - EVENT_RESET_HEAD);
}

/* The event's store with room for need bytes; a call only to grow it. */
static inline void *
event_store(struct lp_event *ev, size_t need)
{
    return need <= ev->store_cap ? ev->store
                                 : lp_store_reserve(&ev->store, &ev->store_cap, need);
}

/* How names are returned: decoded copies in ev->store, or (by reference)
 * pointers into the line for names that carry no escape. */
struct names_out {
    char *room; /* the next free byte in ev->store */
    bool by_ref;
    struct lp_event *ev;
};

/* Whether t has nothing to decode. */
static bool
clean_token(const struct tok *t)
{
    const char *p = t->p;
    struct tok whole;
    bool clean;

    return special_tokens(&p, t->p + t->n, &whole, &clean, 1) == 1 && clean;
}

/* Daemon output: any decoded name, empty allowed, bounded. Names without
 * escapes (nearly all) are checked and copied in one pass, or not copied
 * at all by reference; only those with a '%' go through the decoder. */
static inline int
event_name(const struct tok *t, bool clean, size_t max, struct names_out *no,
    struct lp_name *out)
{
    const char *why;
    uint32_t n;

    if (clean) { /* '"' is special: "" is never clean */
        if (t->n > max)
            return -1;
        if (no->by_ref) {
            out->ptr = t->p;
        } else {
            memcpy(no->room, t->p, t->n);
            no->room[t->n] = '\0';
            out->ptr = no->room;
            no->room += t->n + 1;
        }
        out->len = (uint32_t)t->n;
        return 0;
    }
    if (t->n == 2 && t->p[0] == '"' && t->p[1] == '"') {
        out->ptr = "";
        out->len = 0;
        return 0;
    }
    if (lp_decode_name(t->p, t->n, no->room, &n, &why) < 0 || n > max)
        return -1;
    out->ptr = no->room;
    out->len = n;
    no->room += t->n + 1;
    return 0;
}

/* A name is followed by a separator or the line's end when it points into
 * the line, by its NUL when it was decoded (or copied): either way the
 * byte at ptr + len may be written. The empty name is not written to (it
 * may be the literal ""). */
static void
terminate_name(const struct lp_name *n)
{
    if (n->len > 0)
        ((char *)(uintptr_t)n->ptr)[n->len] = '\0';
}

void
lp_event_terminate(struct lp_event *ev)
{
    if (ev->from_head)
        return;
    terminate_name(&ev->feed);
    terminate_name(&ev->topic);
    terminate_name(&ev->user);
    terminate_name(&ev->host);
    terminate_name(&ev->content_type);
}

/* A keyword as the daemon spells it (event_word passes the lengths as
 * constants: the compares inline), else in any case. The "no" word first:
 * it is the usual one (delta, multicast). */
static inline bool
event_word_n(const struct tok *t, const char *yes, size_t yes_n, const char *no,
    size_t no_n, bool *out)
{
    if (t->n == no_n && memcmp(t->p, no, no_n) == 0)
        *out = false;
    else if (t->n == yes_n && memcmp(t->p, yes, yes_n) == 0)
        *out = true;
    else if (tok_is(t, yes))
        *out = true;
    else if (tok_is(t, no))
        *out = false;
    else
        return false;
    return true;
}

/* Literal words: their lengths known at compile time. */
#define event_word(t, yes, no, out)                                                        \
    event_word_n((t), (yes), sizeof(yes) - 1, (no), sizeof(no) - 1, (out))

/* A DATA line's packet specs, from p: checked against the limits and
 * stored ahead of names_room bytes for its names (*names: where). */
static inline __attribute__((always_inline)) int
data_specs(struct lp_event *ev, const char *p, const char *end, const struct lp_limits *lim,
    size_t names_room, char **names)
{
    struct pkt_scan scan;
    size_t pk_room;

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
    if (event_store(ev, pk_room + names_room) == NULL)
        return -1;
    ev->packets = ev->store;
    lp_fill_packets(p, end, lim->max_entitlements, &scan, ev->packets,
        (int32_t *)((char *)ev->store + ALIGN8(scan.n_specs * sizeof(struct wire_packet))));
    *names = (char *)ev->store + pk_room;
    return 0;
}

/* Whether line's head is the last DATA line's: its bytes, then a packet
 * spec's first digit (the head ends at a separator: its last token is
 * whole), and its names within max_name. */
static inline bool
head_repeats(const struct lp_data_head *h, const char *line, size_t len,
    const struct lp_limits *lim)
{
    return h->len > 0 && len > h->len && (unsigned)(unsigned char)line[h->len] - '0' <= 9u &&
        h->longest <= lim->max_name && memcmp(line, h->bytes, h->len) == 0;
}

static inline void
head_use(struct lp_event *ev)
{
    const struct lp_data_head *h = &ev->head;

    ev->kind = LP_EV_DATA;
    ev->from_head = true;
    ev->feed = h->feed;
    ev->topic = h->topic;
    ev->user = h->user;
    ev->host = h->host;
    ev->content_type = h->content_type;
    ev->is_image = h->is_image;
    ev->is_unicast = h->is_unicast;
}

/* A name copied to *room, NUL-terminated (the empty one as it is). */
static void
head_name(struct lp_name *dst, const struct lp_name *src, char **room, uint32_t *longest)
{
    *dst = *src;
    if (src->len > 0) {
        memcpy(*room, src->ptr, src->len);
        (*room)[src->len] = '\0';
        dst->ptr = *room;
        *room += src->len + 1;
    }
    if (src->len > *longest)
        *longest = src->len;
}

/* Keep a parsed DATA line's first n bytes (up to its specs) and its names
 * as the head the next line may repeat; none when memory is short. */
static void __attribute__((noinline))
head_keep(struct lp_event *ev, const char *line, size_t n)
{
    struct lp_data_head *h = &ev->head;
    size_t need = n + ev->feed.len + ev->topic.len + ev->user.len + ev->host.len +
        ev->content_type.len + 5;
    char *room;

    h->len = 0;
    if (lp_store_reserve((void **)&h->bytes, &h->cap, need) == NULL)
        return;
    memcpy(h->bytes, line, n);
    room = h->bytes + n;
    h->longest = 0;
    head_name(&h->feed, &ev->feed, &room, &h->longest);
    head_name(&h->topic, &ev->topic, &room, &h->longest);
    head_name(&h->user, &ev->user, &room, &h->longest);
    head_name(&h->host, &ev->host, &room, &h->longest);
    head_name(&h->content_type, &ev->content_type, &room, &h->longest);
    h->is_image = ev->is_image;
    h->is_unicast = ev->is_unicast;
    h->len = n;
}

/* Token counts and layout of the structured events. */
static inline __attribute__((always_inline)) int
parse_data(struct lp_event *ev, const struct tok *args, const bool *clean, const char *line,
    const char *p, const char *end, const struct lp_limits *lim, size_t names_room,
    bool by_ref)
{
    struct tok ctype = { NULL, 0 };
    struct names_out no = { NULL, by_ref, ev };
    bool has_type = take_type_token(&p, end, &ctype);
    const char *specs = p;

    if (has_type)
        names_room += ctype.n + 1;
    if (data_specs(ev, p, end, lim, names_room, &no.room) < 0)
        return -1;
    /* Written out: a loop over pointers to the fields cost more than the
     * names' own checks. */
    if (event_name(&args[0], clean[0], lim->max_name, &no, &ev->feed) < 0 ||
        event_name(&args[1], clean[1], lim->max_name, &no, &ev->topic) < 0 ||
        event_name(&args[2], clean[2], lim->max_name, &no, &ev->user) < 0 ||
        event_name(&args[3], clean[3], lim->max_name, &no, &ev->host) < 0)
        return -1;
    if (!event_word(&args[4], "image", "delta", &ev->is_image) ||
        !event_word(&args[5], "unicast", "multicast", &ev->is_unicast))
        return -1;
    if (has_type &&
        event_name(&ctype, clean_token(&ctype), lim->max_name, &no, &ev->content_type) < 0)
        return -1;
    skip_seps(&specs, end);
    if (specs < end && specs > line && is_sep(specs[-1]))
        head_keep(ev, line, (size_t)(specs - line));
    return 0;
}

/* NOTIFICATION add|remove ID user host feed topic; AUTHREQ ID user host feed topic. */
static int
parse_id_names(struct lp_event *ev, const struct tok *args, const bool *clean,
    const struct lp_limits *lim, size_t names_room, bool by_ref)
{
    struct lp_name *dst[4] = { &ev->user, &ev->host, &ev->feed, &ev->topic };
    struct names_out no = { NULL, by_ref, ev };

    if (guid_from_text(args[0].p, args[0].n, ev->client_id) < 0)
        return -1;
    if (event_store(ev, names_room) == NULL)
        return -1;
    no.room = ev->store;
    for (int i = 0; i < 4; i++)
        if (event_name(&args[1 + i], clean[1 + i], lim->max_name, &no, dst[i]) < 0)
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

    skip_seps(&p, end);
    n = (size_t)(end - p);
    if (te->needs_text && n == 0)
        return -1;
    if (event_store(ev, n + 1) == NULL)
        return -1;
    copy = ev->store;
    memcpy(copy, p, n);
    copy[n] = '\0';
    ev->rest = copy;
    ev->rest_len = n;
    return 0;
}

/* Inline in its two callers: the reference parse is a subscriber's hot
 * path, and its call would cost a frame of its own. */
static inline __attribute__((always_inline)) int
parse_event(const char *line, size_t len, const struct lp_limits *lim, struct lp_event *ev,
    bool by_ref)
{
    const char *p = line, *end;
    struct tok verb, args[6], extra;
    bool clean[6], is_data;
    size_t nargs = 0, want, names_room;

    event_reset(ev);
    if (lim == NULL)
        lim = &no_limits;
    if (len > 0 && line[len - 1] == '\r')
        len--;
    end = line + len;
    if (head_repeats(&ev->head, line, len, lim)) {
        char *names;

        head_use(ev);
        return data_specs(ev, line + ev->head.len, end, lim, 0, &names);
    }
    /* DATA first: it is nearly all a subscriber reads (as the daemon
     * spells it, before the tokenizer and the case-insensitive match). */
    if ((is_data = len > 5 && memcmp(line, "DATA ", 5) == 0))
        p = line + 4;
    else if (!next_token(&p, end, &verb))
        return -1;
    if (is_data || tok_is(&verb, "DATA")) {
        ev->kind = LP_EV_DATA;
        want = 6; /* feed topic user host, then image|delta unicast|multicast */
    } else if (tok_is(&verb, "NOTIFICATION")) {
        ev->kind = LP_EV_NOTIFICATION;
        want = 6; /* add|remove ID, then user host feed topic */
    } else if (tok_is(&verb, "AUTHREQ")) {
        ev->kind = LP_EV_AUTHREQ;
        want = 5; /* ID, then user host feed topic */
    } else {
        for (size_t i = 0; i < sizeof(text_events) / sizeof(text_events[0]); i++) {
            if (tok_is(&verb, text_events[i].name)) {
                ev->kind = text_events[i].kind;
                return parse_text_event(ev, &text_events[i], p, end);
            }
        }
        return -1;
    }
    if ((nargs = special_tokens(&p, end, args, clean, want)) < want)
        return -1;
    /* Room for every token and its NUL: at most the span they cover (at
     * least one separator between two) plus one; p is past the last one
     * and its separator, if any (no reload of the last token). */
    names_room = (size_t)(p - args[0].p) + 1;

    switch (ev->kind) {
    case LP_EV_DATA:
        return parse_data(ev, args, clean, line, p, end, lim, names_room, by_ref);
    case LP_EV_NOTIFICATION:
        if (next_token(&p, end, &extra) ||
            !event_word(&args[0], "add", "remove", &ev->is_add))
            return -1;
        return parse_id_names(ev, args + 1, clean + 1, lim, names_room, by_ref);
    default:
        if (next_token(&p, end, &extra))
            return -1;
        return parse_id_names(ev, args, clean, lim, names_room, by_ref);
    }
}

int
lp_parse_event(const char *line, size_t len, const struct lp_limits *lim,
    struct lp_event *ev)
{
    return parse_event(line, len, lim, ev, false);
}

int
lp_parse_event_ref(const char *line, size_t len, const struct lp_limits *lim,
    struct lp_event *ev)
{
    return parse_event(line, len, lim, ev, true);
}
