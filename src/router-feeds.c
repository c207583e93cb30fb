/*
 * Per-feed roles: notifiers (NOTIFY) with the remote subscriptions they
 * were told of, authorizers (AUTHORIZER) with the authorization requests
 * pending for them.
 *
 * An all-feeds authorizer (AUTHORIZER with no feed) holds a role on
 * r->all_feeds, a feed record outside r->feeds that only lists them: it
 * gets the requests of every feed it may authorize (the access rules are
 * asked per request, so a reload needs no revocation) and has no per-feed
 * role for (that role delivers them already: one AUTHREQ per session).
 *
 * Across a link drop: the remote subscriptions notifiers were told of end
 * with the link (each notifier gets the removes); pending authorization
 * requests stay, bounded in number and age (router.auth_pending[_age]),
 * because the v3 distributor never asks again.
 */
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>

#include "guid.h"
#include "log.h"
#include "router-int.h"

static struct feed *
feed_find(struct router *r, const char *name, uint32_t len)
{
    struct feed *f;

    HASH_FIND(hh, r->feeds, name, len, f);
    return f;
}

static struct feed *
feed_get(struct router *r, const char *name, uint32_t len)
{
    struct feed *f = feed_find(r, name, len);

    if (f != NULL)
        return f;
    f = rt_xcalloc(sizeof *f + (size_t)len + 1);
    memcpy(f->key, name, len);
    f->key[len] = '\0';
    f->name.ptr = f->key;
    f->name.len = len;
    LIST_INIT(&f->notifiers);
    LIST_INIT(&f->authorizers);
    HASH_ADD(hh, r->feeds, key, len, f);
    return f;
}

void
rt_remotes_clear(struct router *r, struct feed *f)
{
    struct remote *rm, *tmp;

    HASH_ITER(hh, f->remotes, rm, tmp) {
        HASH_DEL(f->remotes, rm);
        free(rm);
        r->n_remotes--;
    }
}

static void
pending_free(struct router *r, struct pending *pd)
{
    HASH_DEL(pd->feed->pending, pd);
    TAILQ_REMOVE(&r->pending_order, pd, order);
    r->n_pending--;
    free(pd);
}

void
rt_pending_clear(struct router *r, struct feed *f)
{
    struct pending *pd, *tmp;

    HASH_ITER(hh, f->pending, pd, tmp)
        pending_free(r, pd);
}

void
rt_feed_unqueue(struct router *r, struct feed *f)
{
    if (f->replay_queued) {
        TAILQ_REMOVE(&r->replay_feeds, f, replay);
        f->replay_queued = false;
    }
}

/* Forget a feed nobody local uses any more. */
void
rt_feed_maybe_free(struct router *r, struct feed *f)
{
    if (f->n_notifiers > 0 || f->n_authorizers > 0 || f->pending != NULL)
        return;
    rt_feed_unqueue(r, f);
    rt_remotes_clear(r, f);
    HASH_DEL(r->feeds, f);
    free(f);
}

/* Keep the remote subscription table in step with a notification. */
static void
remote_update(struct router *r, struct feed *f, const struct wire_msg *m)
{
    size_t klen = WIRE_GUID_LEN + 12 + (size_t)m->user.len + m->host.len + m->topic.len + 3;
    char *k = malloc(klen), *p;
    struct remote *rm;

    if (k == NULL)
        fatalx("out of memory (%zu bytes)", klen);
    p = k;
    memcpy(p, m->client_id, WIRE_GUID_LEN);
    p += WIRE_GUID_LEN;
    memcpy(p, &m->user.len, 4);
    memcpy(p + 4, &m->host.len, 4);
    memcpy(p + 8, &m->topic.len, 4);
    p += 12;
    memcpy(p, m->user.ptr, m->user.len);
    p[m->user.len] = '\0';
    p += m->user.len + 1;
    memcpy(p, m->host.ptr, m->host.len);
    p[m->host.len] = '\0';
    p += m->host.len + 1;
    memcpy(p, m->topic.ptr, m->topic.len);
    p[m->topic.len] = '\0';

    HASH_FIND(hh, f->remotes, k, klen, rm);
    if (m->is_add) {
        if (rm == NULL && r->n_remotes >= ROUTER_MAX_REMOTES) {
            /* Other bus users decide how many there are: bounded, counted. */
            r->n.remotes_dropped++;
            log_warn("%u remote subscriptions remembered already: not keeping more "
                     "for late notifiers",
                r->n_remotes);
            free(k);
            return;
        }
        if (rm == NULL) {
            rm = rt_xcalloc(sizeof *rm + klen);
            r->n_remotes++;
            memcpy(rm->key, k, klen);
            rm->keylen = klen;
            p = rm->key;
            rm->client_id = (const uint8_t *)p;
            p += WIRE_GUID_LEN + 12;
            rm->user.ptr = p;
            rm->user.len = m->user.len;
            p += m->user.len + 1;
            rm->host.ptr = p;
            rm->host.len = m->host.len;
            p += m->host.len + 1;
            rm->topic.ptr = p;
            rm->topic.len = m->topic.len;
            HASH_ADD(hh, f->remotes, key, rm->keylen, rm);
        }
        rm->count++;
    } else if (rm != NULL && --rm->count == 0) {
        HASH_DEL(f->remotes, rm);
        free(rm);
        r->n_remotes--;
    }
    free(k);
}

void
rt_route_notification(struct router *r, const struct wire_msg *m)
{
    struct feed *f = feed_find(r, m->feed.ptr, m->feed.len);

    r->n.notifications_in++;
    if (f == NULL || f->n_notifiers == 0) {
        r->n.notifications_unrouted++;
        log_debug("notification for feed %.*s: no local notifier", (int)m->feed.len,
            m->feed.ptr);
        return;
    }
    remote_update(r, f, m);
    if (lp_format_notification(r->scratch, m) != 0) {
        evbuffer_drain(r->scratch, evbuffer_get_length(r->scratch));
        return;
    }
    rt_deliver_roles(r, &f->notifiers, 1);
}

/* Forget requests older than router.auth_pending_age. They are kept across
 * reconnects (the v3 distributor never asks again, and takes an answer at
 * any time), so age is what ends one nobody answers. */
void
rt_pending_expire(struct router *r)
{
    uint64_t now = rt_mono_ms();
    struct pending *pd;
    struct feed *f;
    unsigned n = 0;

    while ((pd = TAILQ_FIRST(&r->pending_order)) != NULL &&
        now - pd->since_ms > r->cfg.auth_pending_age_ms) {
        f = pd->feed;
        pending_free(r, pd);
        rt_feed_maybe_free(r, f);
        n++;
    }
    if (n > 0)
        log_info("%u authorization request%s older than router.auth_pending_age forgotten",
            n, n == 1 ? "" : "s");
}

/* Remember a request (a repeat resets it to unanswered). The caller has
 * expired old ones already, so f stays. */
static void
pending_add(struct router *r, struct feed *f, const struct wire_msg *m)
{
    size_t klen = WIRE_GUID_LEN + (size_t)m->topic.len;
    size_t size = klen + 1 + m->user.len + 1 + m->host.len + 1;
    char *k = rt_key_room(r, klen), *p;
    struct pending *pd;

    memcpy(k, m->client_id, WIRE_GUID_LEN);
    memcpy(k + WIRE_GUID_LEN, m->topic.ptr, m->topic.len);
    HASH_FIND(hh, f->pending, k, klen, pd);
    if (pd != NULL)
        pending_free(r, pd); /* user/host may differ: store afresh */
    while (r->n_pending >= r->cfg.auth_pending) {
        struct pending *old = TAILQ_FIRST(&r->pending_order);
        struct feed *of = old->feed;

        pending_free(r, old);
        if (of != f)
            rt_feed_maybe_free(r, of);
    }
    pd = rt_xcalloc(sizeof *pd + size);
    pd->since_ms = rt_mono_ms();
    memcpy(pd->key, m->client_id, WIRE_GUID_LEN);
    memcpy(pd->key + WIRE_GUID_LEN, m->topic.ptr, m->topic.len);
    pd->keylen = klen;
    pd->feed = f;
    pd->client_id = (const uint8_t *)pd->key;
    p = pd->key + WIRE_GUID_LEN;
    pd->topic.ptr = p;
    pd->topic.len = m->topic.len;
    p[m->topic.len] = '\0';
    p += m->topic.len + 1;
    memcpy(p, m->user.ptr, m->user.len);
    pd->user.ptr = p;
    pd->user.len = m->user.len;
    p += m->user.len + 1;
    memcpy(p, m->host.ptr, m->host.len);
    pd->host.ptr = p;
    pd->host.len = m->host.len;
    HASH_ADD(hh, f->pending, key, pd->keylen, pd);
    TAILQ_INSERT_TAIL(&r->pending_order, pd, order);
    r->n_pending++;
}

/* The AuthorizationRequest a pending entry came from, for AUTHREQ. */
static void
pending_msg(const struct pending *pd, struct wire_msg *m)
{
    memset(m, 0, sizeof *m);
    m->type = WIRE_AUTHORIZATION_REQUEST;
    memcpy(m->client_id, pd->client_id, WIRE_GUID_LEN);
    m->user = pd->user;
    m->host = pd->host;
    m->feed = pd->feed->name;
    m->topic = pd->topic;
}

/* Whether the access rules let c authorize feed (no reply: see rt_permit). */
static bool
may_authorize(const struct router *r, const struct client *c, const struct wire_str *feed)
{
    return access_check(r->access, &c->who, ACCESS_AUTHORIZE, feed->ptr, feed->len).allow;
}

static bool
holds_all_feeds(const struct router *r, const struct client *c)
{
    return r->all_feeds != NULL && rt_role_find(c->authorize_by, r->all_feeds) != NULL;
}

/* Whether c's all-feeds role brings it f's requests. */
static bool
all_feeds_brings(const struct router *r, const struct client *c, const struct feed *f)
{
    return rt_role_find(c->authorize_by, f) == NULL && may_authorize(r, c, &f->name);
}

/* The AUTHREQ to every all-feeds authorizer it is for (formatted per
 * session: requests are few); how many got it. */
static unsigned
authreq_to_all_feeds(struct router *r, const struct feed *f, const struct wire_msg *m)
{
    struct role *ro, *next;
    unsigned n = 0;

    if (r->all_feeds == NULL)
        return 0;
    LIST_FOREACH_SAFE(ro, &r->all_feeds->authorizers, by_feed, next) {
        if (rt_closing(ro->client) || !all_feeds_brings(r, ro->client, f))
            continue;
        if (lp_format_authreq(rt_output(ro->client), m) == 0) {
            n++;
            rt_flush(ro->client, 1);
        }
    }
    return n;
}

void
rt_route_authreq(struct router *r, const struct wire_msg *m)
{
    struct feed *f;
    char id[GUID_TEXT_LEN + 1];
    unsigned n_all;

    r->n.auth_requests++;
    rt_pending_expire(r);
    f = feed_get(r, m->feed.ptr, m->feed.len);
    pending_add(r, f, m);
    n_all = authreq_to_all_feeds(r, f, m);
    if (f->n_authorizers == 0 && n_all == 0) {
        r->n.auth_requests_unrouted++;
        guid_to_text(m->client_id, id);
        log_notice("authorization request from %s (%.*s@%.*s) for %.*s / %.*s: no local "
                   "authorizer; kept for one that registers",
            id, (int)m->user.len, m->user.ptr, (int)m->host.len, m->host.ptr,
            (int)m->feed.len, m->feed.ptr, (int)m->topic.len, m->topic.ptr);
        return;
    }
    if (f->n_authorizers == 0)
        return;
    if (lp_format_authreq(r->scratch, m) != 0) {
        evbuffer_drain(r->scratch, evbuffer_get_length(r->scratch));
        return;
    }
    rt_deliver_roles(r, &f->authorizers, 1);
}

/* A NOTIFICATION for every remote subscription of f, as many as it was
 * added (adds, or the removes that end them), to out. */
static unsigned
format_remotes(const struct feed *f, bool add, struct evbuffer *out)
{
    struct remote *rm, *tmp;
    struct wire_msg m;
    unsigned n = 0;

    memset(&m, 0, sizeof m);
    m.type = WIRE_FORWARDED_SUBSCRIPTION;
    m.feed = f->name;
    m.is_add = add;
    HASH_ITER(hh, f->remotes, rm, tmp) {
        memcpy(m.client_id, rm->client_id, WIRE_GUID_LEN);
        m.user = rm->user;
        m.host = rm->host;
        m.topic = rm->topic;
        for (uint32_t i = 0; i < rm->count; i++) {
            if (lp_format_notification(out, &m) != 0)
                return n;
            n++;
        }
    }
    return n;
}

/* Tell a feed's notifiers that the remote subscriptions they were told of
 * are gone (the link that saw them is), as many removes as adds, so a
 * notifier from before the drop and one from after agree. */
void
rt_remotes_end(struct router *r, struct feed *f)
{
    unsigned n = format_remotes(f, false, r->scratch);

    if (evbuffer_get_length(r->scratch) > 0)
        rt_deliver_roles(r, &f->notifiers, n);
}

void
rt_notify_remove(struct router *r, struct role *ro)
{
    struct feed *f = ro->feed;

    LIST_REMOVE(ro, by_feed);
    LIST_REMOVE(ro, by_client);
    HASH_DEL(ro->client->notify_by, ro);
    ro->client->n_notifies--;
    free(ro);
    if (--f->n_notifiers == 0) {
        r->n_notify_feeds--;
        /* Still waiting for the replay: never registered on this link. */
        if (f->replay_queued)
            rt_feed_unqueue(r, f);
        else
            rt_upstream_notification(r, f, false);
        rt_remotes_clear(r, f);
        rt_feed_maybe_free(r, f);
    }
}

void
rt_authorizer_remove(struct router *r, struct role *ro)
{
    struct feed *f = ro->feed;

    LIST_REMOVE(ro, by_feed);
    LIST_REMOVE(ro, by_client);
    HASH_DEL(ro->client->authorize_by, ro);
    ro->client->n_authorizes--;
    free(ro);
    if (--f->n_authorizers > 0)
        return;
    if (f == r->all_feeds) {
        free(f);
        r->all_feeds = NULL;
        return;
    }
    r->n_authorizer_feeds--;
    rt_feed_maybe_free(r, f);
}

static struct role *
role_new(struct feed *f, struct client *c, struct role_list *feed_list,
    struct role_list *client_list, struct role **by_feed)
{
    struct role *ro = rt_xcalloc(sizeof *ro);

    ro->feed = f;
    ro->client = c;
    LIST_INSERT_HEAD(feed_list, ro, by_feed);
    LIST_INSERT_HEAD(client_list, ro, by_client);
    HASH_ADD_PTR(*by_feed, feed, ro);
    return ro;
}

/* Tell a late notifier of the remote subscriptions already known. */
static void
remotes_replay(struct feed *f, struct client *c)
{
    if (f->remotes == NULL)
        return;
    rt_flush(c, format_remotes(f, true, rt_output(c)));
}

void
rt_cmd_notify(struct router *r, struct client *c, const struct lp_cmd *cmd)
{
    struct feed *f = feed_find(r, cmd->feed.ptr, cmd->feed.len);

    if (!rt_permit(r, c, ACCESS_NOTIFY, &cmd->feed))
        return;
    if (f != NULL && rt_role_find(c->notify_by, f) != NULL) {
        rt_reply_err(c, LP_ERR_ALREADY_NOTIFYING, "already notifying on this feed");
        return;
    }
    if (c->n_notifies >= r->listen.max_notifications) {
        rt_reply_err(c, LP_ERR_TOO_MANY_NOTIFICATIONS,
            "at most %u notified feeds per session", r->listen.max_notifications);
        return;
    }
    if (f == NULL)
        f = feed_get(r, cmd->feed.ptr, cmd->feed.len);
    role_new(f, c, &f->notifiers, &c->notifies, &c->notify_by);
    c->n_notifies++;
    rt_reply_ok(c);
    if (++f->n_notifiers == 1) {
        r->n_notify_feeds++;
        rt_upstream_notification(r, f, true);
    } else {
        remotes_replay(f, c);
    }
}

void
rt_cmd_unnotify(struct router *r, struct client *c, const struct lp_cmd *cmd)
{
    struct feed *f = feed_find(r, cmd->feed.ptr, cmd->feed.len);
    struct role *ro = f != NULL ? rt_role_find(c->notify_by, f) : NULL;

    if (ro == NULL) {
        rt_reply_err(c, LP_ERR_NOT_NOTIFYING, "not notifying on this feed");
        return;
    }
    rt_notify_remove(r, ro);
    rt_reply_ok(c);
}

/* The requests of f nobody has answered yet, to c's output; how many. */
static unsigned
pending_format(const struct feed *f, struct client *c)
{
    struct pending *pd, *tmp;
    struct wire_msg m;
    unsigned n = 0;

    HASH_ITER(hh, f->pending, pd, tmp) {
        if (pd->answered)
            continue;
        pending_msg(pd, &m);
        if (lp_format_authreq(rt_output(c), &m) == 0)
            n++;
    }
    return n;
}

/* Tell a late authorizer of the requests nobody has answered yet: of f,
 * or (f NULL) of every feed its new all-feeds role brings it. */
static void
pending_replay(struct router *r, const struct feed *f, struct client *c)
{
    struct feed *g, *tmp;
    unsigned n = 0;

    if (f != NULL) {
        n = pending_format(f, c);
    } else {
        HASH_ITER(hh, r->feeds, g, tmp)
            if (g->pending != NULL && all_feeds_brings(r, c, g))
                n += pending_format(g, c);
    }
    if (n > 0)
        rt_flush(c, n);
}

/* The feed record of an all-feeds role; made for the first one. */
static struct feed *
all_feeds_get(struct router *r)
{
    if (r->all_feeds == NULL) {
        r->all_feeds = rt_xcalloc(sizeof *r->all_feeds + 1);
        r->all_feeds->name.ptr = r->all_feeds->key;
        LIST_INIT(&r->all_feeds->notifiers);
        LIST_INIT(&r->all_feeds->authorizers);
    }
    return r->all_feeds;
}

/* AUTHORIZER <feed>, or with no feed (cmd->feed.ptr NULL) every feed. */
void
rt_cmd_authorizer(struct router *r, struct client *c, const struct lp_cmd *cmd)
{
    bool all = cmd->feed.ptr == NULL;
    struct feed *f;

    /* All feeds: nothing to refuse yet, each request is checked. */
    if (!all && !rt_permit(r, c, ACCESS_AUTHORIZE, &cmd->feed))
        return;
    rt_pending_expire(r);
    f = all ? r->all_feeds : feed_find(r, cmd->feed.ptr, cmd->feed.len);
    if (f != NULL && rt_role_find(c->authorize_by, f) != NULL) {
        rt_reply_err(c, LP_ERR_ALREADY_AUTHORIZER, "already an authorizer of %s",
            all ? "every feed" : "this feed");
        return;
    }
    if (c->n_authorizes >= r->listen.max_authorizers) {
        rt_reply_err(c, LP_ERR_TOO_MANY_AUTHORIZERS,
            "at most %u authorized feeds per session", r->listen.max_authorizers);
        return;
    }
    if (f == NULL)
        f = all ? all_feeds_get(r) : feed_get(r, cmd->feed.ptr, cmd->feed.len);
    role_new(f, c, &f->authorizers, &c->authorizes, &c->authorize_by);
    c->n_authorizes++;
    if (++f->n_authorizers == 1 && !all)
        r->n_authorizer_feeds++;
    rt_reply_ok(c);
    /* An all-feeds role brought this feed's requests already. */
    if (all || !holds_all_feeds(r, c))
        pending_replay(r, all ? NULL : f, c);
}

void
rt_cmd_unauthorizer(struct router *r, struct client *c, const struct lp_cmd *cmd)
{
    bool all = cmd->feed.ptr == NULL;
    struct feed *f = all ? r->all_feeds : feed_find(r, cmd->feed.ptr, cmd->feed.len);
    struct role *ro = f != NULL ? rt_role_find(c->authorize_by, f) : NULL;

    if (ro == NULL) {
        rt_reply_err(c, LP_ERR_NOT_AUTHORIZER, "not an authorizer of %s",
            all ? "every feed (AUTHORIZER with no feed)" : "this feed");
        return;
    }
    rt_authorizer_remove(r, ro);
    rt_reply_ok(c);
}

/* Whether c may answer a request of feed (f: its record, if any): as its
 * authorizer, or as an all-feeds authorizer the rules let authorize it.
 * A refusal is answered. */
static bool
may_answer(struct router *r, struct client *c, const struct feed *f,
    const struct lp_name *feed)
{
    if (f != NULL && rt_role_find(c->authorize_by, f) != NULL)
        return true;
    if (holds_all_feeds(r, c))
        return rt_permit(r, c, ACCESS_AUTHORIZE, feed);
    rt_reply_err(c, LP_ERR_NOT_AUTHORIZER, "AUTHORIZER this feed before answering its requests");
    return false;
}

void
rt_cmd_authorize(struct router *r, struct client *c, const struct lp_cmd *cmd)
{
    size_t klen = WIRE_GUID_LEN + (size_t)cmd->topic.len;
    struct pending *pd = NULL;
    struct feed *f;
    struct wire_msg m;
    char why[192];
    char *k;

    rt_pending_expire(r);
    f = feed_find(r, cmd->feed.ptr, cmd->feed.len);
    if (!may_answer(r, c, f, &cmd->feed))
        return;
    if (f != NULL) {
        k = rt_key_room(r, klen);
        memcpy(k, cmd->client_id, WIRE_GUID_LEN);
        memcpy(k + WIRE_GUID_LEN, cmd->topic.ptr, cmd->topic.len);
        HASH_FIND(hh, f->pending, k, klen, pd);
    }
    if (pd == NULL) {
        rt_reply_err(c, LP_ERR_UNKNOWN_REQUEST,
            "no authorization request from that client for that topic (or it is older "
            "than router.auth_pending_age)");
        return;
    }
    if (pd->answered) {
        rt_reply_err(c, LP_ERR_ALREADY_ANSWERED,
            "that request was already answered (the first answer counts)");
        return;
    }
    memset(&m, 0, sizeof m);
    m.type = WIRE_AUTHORIZATION_RESPONSE;
    memcpy(m.client_id, cmd->client_id, WIRE_GUID_LEN);
    m.feed = f->name;
    m.topic = pd->topic;
    m.auth_required = cmd->required;
    m.entitlements = cmd->entitlements;
    /* Held while the login is unconfirmed; refused while down (the
     * request stays pending: answer again when it is up). */
    switch (rt_send_data(r, &m, false, why, sizeof why)) {
    case BUS_SENT:
        pd->answered = true;
        rt_reply_ok(c);
        break;
    case BUS_ENCODE_ERROR:
        rt_reply_err(c, LP_ERR_SYNTAX, "the answer cannot be encoded");
        break;
    default:
        rt_reply_err(c, LP_ERR_BUS_DOWN, "%s; answer again when it is up", why);
        break;
    }
}
