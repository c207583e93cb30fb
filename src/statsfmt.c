/*
 * The snapshot behind STATS, /metrics and `busgate stats`: what each name
 * means is said once, in defs[], and every rendering reads it.
 */
#include <inttypes.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>

#include "lineproto.h"
#include "statsfmt.h"

enum kind {
    K_COUNTER, /* only grows (until restart): Prometheus _total */
    K_GAUGE,   /* goes up and down */
    K_INFO,    /* text: build_info-style, the value as a label of a 1 */
    K_STATE,   /* text, one of states[]: one 0/1 sample per state */
    K_TEXT,    /* text only in STAT lines and JSON */
};

struct def {
    const char *name; /* STAT name; ending in '.': a prefix */
    enum kind kind;
    const char *family; /* Prometheus name after busgate_; NULL: none */
    const char *label;  /* label="value" of this name in its family */
    const char *help;
};

/* The bus link's states, as bus_state_name spells them. */
static const char *const states[] = { "connecting", "unconfirmed", "up", "down" };

#define DROP "Messages dropped, by reason."
/* The reasons are disjoint, so that the family sums to the sessions closed;
 * the memory budget's closes, a part of slow_consumer, have their own. */
#define CLOSED "Local sessions closed, by reason."

static const struct def defs[] = {
    { "version", K_INFO, "build_info", "version", "The busgated version (always 1)." },
    { "uptime", K_GAUGE, "uptime_seconds", NULL,
        "Seconds since busgated started (monotonic: a wall-clock step does not move it)." },
    { "start_time", K_GAUGE, "start_time_seconds", NULL,
        "When busgated started, seconds since the Unix epoch." },
    { "bus_state", K_STATE, "bus_link_state", "state",
        "The bus link's state: 1 for the current one." },
    { "bus_state_since", K_GAUGE, "bus_link_state_since_seconds", NULL,
        "When the bus link entered its state (down or connecting: when the outage began), "
        "seconds since the Unix epoch." },
    { "bus_connects", K_COUNTER, "bus_connects_total", NULL,
        "Successful connections to the bus." },
    { "bus_reconnects", K_COUNTER, "bus_reconnects_total", NULL,
        "Connection attempts after the first." },
    { "bus_auth_failures", K_COUNTER, "bus_login_failures_total", NULL,
        "Probable authentication failures (failed logins) at the bus." },
    { "bus_protocol_errors", K_COUNTER, "bus_protocol_errors_total", NULL,
        "Undecodable bytes from the bus." },
    { "bus_heartbeat_timeouts", K_COUNTER, "bus_heartbeat_timeouts_total", NULL,
        "Links closed for want of heartbeats." },
    { "bus_heartbeats_in", K_COUNTER, "bus_heartbeats_received_total", NULL,
        "Heartbeats received from the bus." },
    { "bus_heartbeat_age", K_GAUGE, "bus_heartbeat_age_seconds", NULL,
        "Seconds since the last heartbeat (absent before the first)." },
    { "bus_heartbeat", K_TEXT, NULL, NULL, NULL },
    { "bus_confirm", K_TEXT, NULL, NULL, NULL },
    { "bus_client_id", K_TEXT, NULL, NULL, NULL },
    { "bus_last_error", K_TEXT, NULL, NULL, NULL },
    { "bus_msgs_in", K_COUNTER, "bus_received_messages_total", NULL,
        "Messages received from the bus." },
    { "bus_msgs_out", K_COUNTER, "bus_sent_messages_total", NULL,
        "Messages sent to the bus (the link's own login and requests included)." },
    { "bus_bytes_in", K_COUNTER, "bus_received_bytes_total", NULL,
        "Bytes received from the bus." },
    { "bus_bytes_out", K_COUNTER, "bus_sent_bytes_total", NULL,
        "Bytes sent to the bus (the link's own login and requests included)." },
    { "bus_output_queued", K_GAUGE, "bus_output_queued_bytes", NULL,
        "Bytes waiting to go to the bus." },
    { "bus_bytes_lost", K_COUNTER, "bus_lost_bytes_total", NULL,
        "Queued bytes a failed link or the shutdown took with it." },
    { "bus_congested", K_GAUGE, "bus_congested", NULL,
        "1 while the bus output is over its high-water mark." },
    { "sessions", K_GAUGE, "sessions", NULL, "Local sessions connected now." },
    { "sessions_total", K_COUNTER, "sessions_accepted_total", NULL,
        "Local sessions accepted." },
    { "slow_consumers", K_COUNTER, "sessions_closed_total", "reason=\"slow_consumer\"",
        CLOSED },
    { "memory_queued", K_GAUGE, "sessions_queued_bytes", NULL,
        "Bytes queued to all local sessions together." },
    { "memory_queued_peak", K_GAUGE, "sessions_queued_peak_bytes", NULL,
        "The most bytes ever queued to local sessions together." },
    { "memory_budget_closes", K_COUNTER, "memory_budget_closed_sessions_total", NULL,
        "Local sessions closed to stay within listen.max_memory (also counted as "
        "slow_consumer in busgate_sessions_closed_total)." },
    { "memory_budget_pauses", K_COUNTER, "memory_budget_pauses_total", NULL,
        "Times a session stopped reading for the memory budget." },
    { "memory_budget_paused", K_GAUGE, "memory_budget_paused_sessions", NULL,
        "Sessions not reading now for the memory budget." },
    { "memory_trims", K_COUNTER, "memory_trims_total", NULL,
        "Times freed memory went back to the system." },
    { "sessions_closed_peer", K_COUNTER, "sessions_closed_total", "reason=\"peer_closed\"",
        CLOSED },
    { "sessions_closed_quit", K_COUNTER, "sessions_closed_total", "reason=\"quit\"",
        CLOSED },
    { "sessions_closed_error", K_COUNTER, "sessions_closed_total", "reason=\"io_error\"",
        CLOSED },
    { "sessions_closed_shutdown", K_COUNTER, "sessions_closed_total", "reason=\"shutdown\"",
        CLOSED },
    { "sessions_closed_other", K_COUNTER, "sessions_closed_total", "reason=\"other\"",
        CLOSED },
    { "sessions_refused", K_COUNTER, "sessions_refused_total", NULL,
        "Clients refused over listen.max_sessions." },
    { "sessions_msgs_in", K_COUNTER, "sessions_received_messages_total", NULL,
        "Commands received from local sessions." },
    { "sessions_bytes_in", K_COUNTER, "sessions_received_bytes_total", NULL,
        "Bytes received from local sessions." },
    { "sessions_msgs_out", K_COUNTER, "sessions_sent_messages_total", NULL,
        "Events sent to local sessions (one per event line; replies not counted)." },
    { "sessions_bytes_out", K_COUNTER, "sessions_sent_bytes_total", NULL,
        "Bytes sent to local sessions." },
    { "topics", K_GAUGE, "upstream_subscriptions", NULL,
        "(feed, topic) pairs with local subscribers, subscribed upstream." },
    { "subscriptions", K_GAUGE, "local_subscriptions", NULL,
        "Local (session, feed, topic) subscriptions." },
    { "notifications", K_GAUGE, "notification_feeds", NULL, "Feeds notified on upstream." },
    { "authorizers", K_GAUGE, "authorizer_feeds", NULL, "Feeds authorized for upstream." },
    { "data_in", K_COUNTER, "data_received_messages_total", NULL,
        "Data messages received from the bus." },
    { "data_delivered", K_COUNTER, "data_delivered_messages_total", NULL,
        "Data messages delivered to local sessions (one per session; image-cache replays "
        "included)." },
    { "data_dropped_unwanted", K_COUNTER, "messages_dropped_total", "reason=\"unwanted\"",
        DROP },
    { "notifications_in", K_COUNTER, "notifications_received_total", NULL,
        "Subscription notifications received from the bus." },
    { "notifications_unrouted", K_COUNTER, "messages_dropped_total",
        "reason=\"notification_unrouted\"", DROP },
    { "auth_requests", K_COUNTER, "auth_requests_received_total", NULL,
        "Authorization requests received from the bus." },
    { "auth_requests_unrouted", K_COUNTER, "messages_dropped_total",
        "reason=\"auth_request_unrouted\"", DROP },
    { "auth_requests_pending", K_GAUGE, "auth_requests_pending", NULL,
        "Authorization requests waiting for an answer." },
    { "image_cache_bytes", K_GAUGE, "image_cache_bytes", NULL,
        "Bytes in the image cache." },
    { "image_cache_refused", K_COUNTER, "image_cache_refused_total", NULL,
        "Images not cached for want of room." },
    { "remote_subscriptions", K_GAUGE, "remote_subscriptions", NULL,
        "Remote subscriptions remembered for notifiers." },
    { "remote_subscriptions_dropped", K_COUNTER, "remote_subscriptions_dropped_total", NULL,
        "Remote subscriptions not remembered for want of room." },
    { "busdown_queued", K_GAUGE, "busdown_queue_messages", NULL,
        "Publishes and sends held while the bus is down." },
    { "busdown_queued_bytes", K_GAUGE, "busdown_queue_bytes", NULL,
        "Bytes held while the bus is down." },
    { "busdown_queued_total", K_COUNTER, "busdown_queued_messages_total", NULL,
        "Publishes and sends ever held while the bus was down." },
    { "busdown_lost", K_COUNTER, "messages_dropped_total", "reason=\"busdown_lost\"",
        DROP },
    { "bus_messages_ignored", K_COUNTER, "bus_ignored_messages_total", NULL,
        "Bus messages no local session receives." },
    { "access", K_TEXT, NULL, NULL, NULL },
    { "access_rules", K_GAUGE, "access_rules", NULL,
        "Local access rules in force (0: none)." },
    { "access_denied", K_COUNTER, "access_denied_total", NULL,
        "Commands refused by the access rules (-ERR perm)." },
    { "access_revoked", K_COUNTER, "access_revoked_total", NULL,
        "Registrations a reload's access rules ended (REVOKED)." },
    { "limit.", K_GAUGE, "limit", NULL,
        "A configured limit, by setting (durations in seconds, as *_seconds)." },
    { "session", K_TEXT, NULL, NULL, NULL },
};

struct item {
    const struct def *def; /* NULL: unknown name, text */
    char *name;
    char *text; /* NULL: a number */
    uint64_t v;
};

struct statsfmt {
    struct item *items;
    size_t n, cap;
};

static const struct def *
find_def(const char *name)
{
    for (size_t i = 0; i < sizeof defs / sizeof defs[0]; i++) {
        size_t len = strlen(defs[i].name);

        if (defs[i].name[len - 1] == '.' ? strncmp(name, defs[i].name, len) == 0
                                         : strcmp(name, defs[i].name) == 0)
            return &defs[i];
    }
    return NULL;
}

struct statsfmt *
statsfmt_new(void)
{
    return calloc(1, sizeof(struct statsfmt));
}

void
statsfmt_free(struct statsfmt *sf)
{
    if (sf == NULL)
        return;
    for (size_t i = 0; i < sf->n; i++) {
        free(sf->items[i].name);
        free(sf->items[i].text);
    }
    free(sf->items);
    free(sf);
}

static struct item *
add(struct statsfmt *sf, const char *name)
{
    struct item *it;

    if (sf->n == sf->cap) {
        size_t cap = sf->cap ? sf->cap * 2 : 64;
        struct item *p = realloc(sf->items, cap * sizeof *p);

        if (p == NULL)
            return NULL;
        sf->items = p;
        sf->cap = cap;
    }
    it = &sf->items[sf->n];
    memset(it, 0, sizeof *it);
    if ((it->name = strdup(name)) == NULL)
        return NULL;
    it->def = find_def(name);
    sf->n++;
    return it;
}

int
statsfmt_u64(struct statsfmt *sf, const char *name, uint64_t v)
{
    struct item *it = add(sf, name);

    if (it == NULL)
        return -1;
    it->v = v;
    return 0;
}

int
statsfmt_text(struct statsfmt *sf, const char *name, const char *value)
{
    struct item *it = add(sf, name);

    if (it == NULL)
        return -1;
    if ((it->text = strdup(value)) == NULL) {
        sf->n--;
        free(it->name);
        return -1;
    }
    return 0;
}

static bool
numeric(const struct def *d)
{
    return d != NULL && (d->kind == K_COUNTER || d->kind == K_GAUGE);
}

int
statsfmt_line(struct statsfmt *sf, const char *name, const char *rest)
{
    const struct def *d = find_def(name);
    char *end;
    unsigned long long v;

    if (numeric(d) && rest[0] >= '0' && rest[0] <= '9') {
        v = strtoull(rest, &end, 10);
        if (*end == '\0')
            return statsfmt_u64(sf, name, v);
    }
    return statsfmt_text(sf, name, rest);
}

int
statsfmt_render_stat(const struct statsfmt *sf, struct evbuffer *out)
{
    for (size_t i = 0; i < sf->n; i++) {
        const struct item *it = &sf->items[i];

        if ((it->text != NULL ? lp_format_stat_text(out, it->name, it->text)
                              : lp_format_stat_u64(out, it->name, it->v)) < 0)
            return -1;
    }
    return 0;
}

/* A label value: backslash, double quote and newline escaped. */
static void
prom_label_value(struct evbuffer *out, const char *s)
{
    for (; *s != '\0'; s++) {
        if (*s == '\\' || *s == '"')
            evbuffer_add_printf(out, "\\%c", *s);
        else if (*s == '\n')
            evbuffer_add(out, "\\n", 2);
        else
            evbuffer_add(out, s, 1);
    }
}

static const char *
prom_type(enum kind k)
{
    return k == K_COUNTER ? "counter" : "gauge";
}

/* A limit.* sample. /metrics promises base units: a limit STATS gives in
 * milliseconds (name_ms) is given in seconds (name_seconds). */
static void
prom_limit(struct evbuffer *out, const char *family, const char *name, uint64_t v)
{
    size_t len = strlen(name);

    if (len < 3 || strcmp(name + len - 3, "_ms") != 0) {
        evbuffer_add_printf(out, "busgate_%s{name=\"%s\"} %" PRIu64 "\n", family, name, v);
        return;
    }
    evbuffer_add_printf(out, "busgate_%s{name=\"%.*s_seconds\"} %" PRIu64, family,
        (int)(len - 3), name, v / 1000u);
    if (v % 1000u != 0)
        evbuffer_add_printf(out, ".%03" PRIu64, v % 1000u);
    evbuffer_add(out, "\n", 1);
}

/* One sample of it (it->def->family is set). */
static void
prom_sample(struct evbuffer *out, const struct item *it)
{
    const struct def *d = it->def;

    switch (d->kind) {
    case K_INFO:
        evbuffer_add_printf(out, "busgate_%s{%s=\"", d->family, d->label);
        prom_label_value(out, it->text != NULL ? it->text : "");
        evbuffer_add_printf(out, "\"} 1\n");
        return;
    case K_STATE:
        for (size_t s = 0; s < sizeof states / sizeof states[0]; s++)
            evbuffer_add_printf(out, "busgate_%s{%s=\"%s\"} %d\n", d->family, d->label,
                states[s], it->text != NULL && strcmp(it->text, states[s]) == 0);
        return;
    default:
        break;
    }
    if (d->name[strlen(d->name) - 1] == '.') {
        prom_limit(out, d->family, it->name + strlen(d->name), it->v);
        return;
    }
    evbuffer_add_printf(out, "busgate_%s", d->family);
    if (d->label != NULL)
        evbuffer_add_printf(out, "{%s}", d->label);
    evbuffer_add_printf(out, " %" PRIu64 "\n", it->v);
}

static bool
exported(const struct item *it)
{
    const struct def *d = it->def;

    if (d == NULL || d->family == NULL)
        return false;
    return numeric(d) ? it->text == NULL : it->text != NULL;
}

int
statsfmt_render_prometheus(const struct statsfmt *sf, struct evbuffer *out)
{
    for (size_t i = 0; i < sf->n; i++) {
        const struct item *it = &sf->items[i];
        bool seen = false;

        if (!exported(it))
            continue;
        for (size_t j = 0; j < i && !seen; j++)
            seen = exported(&sf->items[j]) &&
                strcmp(sf->items[j].def->family, it->def->family) == 0;
        if (seen)
            continue; /* its family is out already */
        evbuffer_add_printf(out, "# HELP busgate_%s %s\n# TYPE busgate_%s %s\n",
            it->def->family, it->def->help, it->def->family, prom_type(it->def->kind));
        for (size_t j = i; j < sf->n; j++)
            if (exported(&sf->items[j]) &&
                strcmp(sf->items[j].def->family, it->def->family) == 0)
                prom_sample(out, &sf->items[j]);
    }
    return 0;
}

/* A JSON string: quotes, backslashes and control bytes escaped. */
static void
json_string(struct evbuffer *out, const char *s)
{
    evbuffer_add(out, "\"", 1);
    for (; *s != '\0'; s++) {
        unsigned char ch = (unsigned char)*s;

        if (ch == '"' || ch == '\\')
            evbuffer_add_printf(out, "\\%c", ch);
        else if (ch < 0x20)
            evbuffer_add_printf(out, "\\u%04x", ch);
        else
            evbuffer_add(out, s, 1);
    }
    evbuffer_add(out, "\"", 1);
}

static void
json_value(struct evbuffer *out, const struct item *it)
{
    if (it->text != NULL)
        json_string(out, it->text);
    else
        evbuffer_add_printf(out, "%" PRIu64, it->v);
}

int
statsfmt_render_json(const struct statsfmt *sf, struct evbuffer *out)
{
    bool first = true;

    evbuffer_add(out, "{", 1);
    for (size_t i = 0; i < sf->n; i++) {
        const struct item *it = &sf->items[i];
        bool seen = false, many = false;

        for (size_t j = 0; j < sf->n && !(seen && many); j++) {
            if (j != i && strcmp(sf->items[j].name, it->name) == 0) {
                seen |= j < i;
                many = true;
            }
        }
        if (seen)
            continue; /* printed with the first of its name */
        evbuffer_add_printf(out, "%s\n  ", first ? "" : ",");
        first = false;
        json_string(out, it->name);
        evbuffer_add(out, ": ", 2);
        if (!many && strcmp(it->name, "session") != 0) {
            json_value(out, it);
            continue;
        }
        evbuffer_add(out, "[", 1);
        for (size_t j = i; j < sf->n; j++)
            if (strcmp(sf->items[j].name, it->name) == 0) {
                if (j != i)
                    evbuffer_add(out, ", ", 2);
                json_value(out, &sf->items[j]);
            }
        evbuffer_add(out, "]", 1);
    }
    evbuffer_add_printf(out, "\n}\n");
    return 0;
}
