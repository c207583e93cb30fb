/*
 * Local access control: the rules and the decision (access.h says how a
 * decision is made). The decision walks the rules in order; rules are few
 * (a handful per team), and the router asks once per SUB, NOTIFY,
 * AUTHORIZER, PUB, SEND or STATS, never per delivered message.
 */
#include <errno.h>
#include <grp.h>
#include <pwd.h>
#include <stdlib.h>
#include <string.h>

#include "access.h"
#include "log.h"
#include "util.h"

static const char *const verb_names[ACCESS_NVERBS] = {
    [ACCESS_SUBSCRIBE] = "subscribe",
    [ACCESS_PUBLISH] = "publish",
    [ACCESS_SEND] = "send",
    [ACCESS_NOTIFY] = "notify",
    [ACCESS_AUTHORIZE] = "authorize",
    [ACCESS_STATS] = "stats",
};

/* set_err returns nothing: a failure here is -1 with the reason. */
#define FAIL(...) (set_err(__VA_ARGS__), -1)

#define ALL_VERBS ((1u << ACCESS_NVERBS) - 1)

const char *
access_verb_name(enum access_verb v)
{
    return (unsigned)v < ACCESS_NVERBS ? verb_names[v] : "?";
}

bool
access_feed_match(const char *pattern, const char *feed, size_t feed_len)
{
    size_t n = strlen(pattern);

    if (n > 0 && pattern[n - 1] == '*')
        return feed_len >= n - 1 && memcmp(pattern, feed, n - 1) == 0;
    return n == feed_len && memcmp(pattern, feed, n) == 0;
}

static bool
subject_match(const struct access_rule *ru, const struct access_id *id)
{
    switch (ru->subject) {
    case ACCESS_ANYONE:
        return true;
    case ACCESS_UID:
        return id->uid == (uid_t)ru->who;
    case ACCESS_GID:
        if (id->gid == (gid_t)ru->who)
            return true;
        for (size_t i = 0; i < id->n_groups; i++)
            if (id->groups[i] == (gid_t)ru->who)
                return true;
        return false;
    }
    return false;
}

static bool
feeds_match(const struct access_rule *ru, enum access_verb verb, const char *feed,
    size_t feed_len)
{
    if (ru->n_feeds == 0 || verb == ACCESS_STATS)
        return true;
    for (size_t i = 0; i < ru->n_feeds; i++)
        if (access_feed_match(ru->feeds[i], feed, feed_len))
            return true;
    return false;
}

struct access_decision
access_check(const struct access_rules *rs, const struct access_id *id,
    enum access_verb verb, const char *feed, size_t feed_len)
{
    struct access_decision d = { .allow = rs == NULL || rs->n == 0 };

    for (size_t i = 0; rs != NULL && i < rs->n; i++) {
        const struct access_rule *ru = &rs->rules[i];

        if ((ru->verbs & (1u << verb)) && subject_match(ru, id) &&
            feeds_match(ru, verb, feed, feed_len)) {
            d.allow = ru->allow;
            d.rule = ru;
            d.index = i + 1;
            break;
        }
    }
    return d;
}

/* ---- building ---- */

struct access_rules *
access_rules_new(void)
{
    struct access_rules *rs = calloc(1, sizeof *rs);

    if (rs == NULL)
        fatalx("out of memory (access rules)");
    rs->refs = 1;
    return rs;
}

struct access_rule *
access_rule_add(struct access_rules *rs, unsigned line)
{
    struct access_rule *p = realloc(rs->rules, (rs->n + 1) * sizeof *p);

    if (p == NULL)
        fatalx("out of memory (access rules)");
    rs->rules = p;
    p = &rs->rules[rs->n++];
    memset(p, 0, sizeof *p);
    p->line = line;
    p->allow = true;
    return p;
}

static int
parse_id(const char *s, uint32_t *out)
{
    char *end;
    unsigned long v;

    if (*s < '0' || *s > '9')
        return -1;
    errno = 0;
    v = strtoul(s, &end, 10);
    if (errno != 0 || *end != '\0' || v >= UINT32_MAX)
        return -1;
    *out = (uint32_t)v;
    return 0;
}

int
access_rule_subject(struct access_rule *ru, const char *key, const char *value, char *why,
    size_t whylen)
{
    bool user = strcmp(key, "user") == 0, uid = strcmp(key, "uid") == 0;
    bool group = strcmp(key, "group") == 0, gid = strcmp(key, "gid") == 0;
    struct passwd *pw;
    struct group *gr;

    if (ru->subject != ACCESS_ANYONE)
        return FAIL(why, whylen,
            "a rule names one user, group, uid or gid (this one "
            "has %s already)",
            ru->who_name);
    if ((uid || gid) && parse_id(value, &ru->who) != 0)
        return FAIL(why, whylen, "%s: expected a number, got \"%s\"", key, value);
    if (user) {
        if ((pw = getpwnam(value)) == NULL)
            return FAIL(why, whylen, "user: no user named '%s'", value);
        ru->who = (uint32_t)pw->pw_uid;
    } else if (group) {
        if ((gr = getgrnam(value)) == NULL)
            return FAIL(why, whylen, "group: no group named '%s'", value);
        ru->who = (uint32_t)gr->gr_gid;
    } else if (!uid && !gid) {
        return FAIL(why, whylen, "unknown subject '%s'", key);
    }
    ru->subject = (user || uid) ? ACCESS_UID : ACCESS_GID;
    if (asprintf(&ru->who_name, "%s %s", key, value) < 0)
        fatalx("out of memory (access rules)");
    return 0;
}

int
access_rule_verb(struct access_rule *ru, bool allow, const char *verb, char *why,
    size_t whylen)
{
    if (ru->verbs != 0 && ru->allow != allow)
        return FAIL(why, whylen, "a rule either allows or denies, not both");
    ru->allow = allow;
    if (strcmp(verb, "all") == 0) {
        ru->verbs = ALL_VERBS;
        return 0;
    }
    for (unsigned v = 0; v < ACCESS_NVERBS; v++) {
        if (strcmp(verb, verb_names[v]) == 0) {
            ru->verbs |= 1u << v;
            return 0;
        }
    }
    return FAIL(why, whylen,
        "unknown verb '%s' (expected all, subscribe, publish, "
        "send, notify, authorize or stats)",
        verb);
}

int
access_rule_feed(struct access_rule *ru, const char *pattern, char *why, size_t whylen)
{
    const char *star = strchr(pattern, '*');
    char **p;

    if (*pattern == '\0')
        return FAIL(why, whylen, "a feed pattern must not be empty");
    if (star != NULL && star[1] != '\0')
        return FAIL(why, whylen, "feed pattern '%s': '*' may only end a pattern", pattern);
    if ((p = realloc(ru->feeds, (ru->n_feeds + 1) * sizeof *p)) == NULL ||
        (p[ru->n_feeds] = strdup(pattern)) == NULL)
        fatalx("out of memory (access rules)");
    ru->feeds = p;
    ru->n_feeds++;
    return 0;
}

int
access_rule_check(const struct access_rule *ru, char *why, size_t whylen)
{
    if (ru->verbs == 0)
        return FAIL(why, whylen, "a rule needs allow: or deny: (a list of verbs, or all)");
    return 0;
}

struct access_rules *
access_rules_ref(struct access_rules *rs)
{
    if (rs != NULL)
        rs->refs++;
    return rs;
}

void
access_rules_free(struct access_rules *rs)
{
    if (rs == NULL || --rs->refs > 0)
        return;
    for (size_t i = 0; i < rs->n; i++) {
        struct access_rule *ru = &rs->rules[i];

        for (size_t j = 0; j < ru->n_feeds; j++)
            free(ru->feeds[j]);
        free(ru->feeds);
        free(ru->who_name);
    }
    free(rs->rules);
    free(rs);
}

/* ---- describing ---- */

static size_t
verbs_text(unsigned verbs, char *buf, size_t len)
{
    size_t used = 0;

    if (verbs == ALL_VERBS)
        return (size_t)snprintf(buf, len, "all");
    buf[0] = '\0';
    for (unsigned v = 0; v < ACCESS_NVERBS && used < len; v++)
        if (verbs & (1u << v))
            used += (size_t)snprintf(buf + used, len - used, "%s%s", used ? ", " : "",
                verb_names[v]);
    return used;
}

void
access_rule_describe(const struct access_rule *ru, char *buf, size_t len)
{
    char verbs[128];
    size_t used;

    verbs_text(ru->verbs, verbs, sizeof verbs);
    used = (size_t)snprintf(buf, len, "%s %s [%s] feeds",
        ru->who_name != NULL ? ru->who_name : "anyone", ru->allow ? "allow" : "deny",
        verbs);
    if (ru->n_feeds == 0 && used < len)
        used += (size_t)snprintf(buf + used, len - used, " *");
    for (size_t i = 0; i < ru->n_feeds && used < len; i++)
        used += (size_t)snprintf(buf + used, len - used, " %s", ru->feeds[i]);
}

static void
dump_word(FILE *out, const char *s)
{
    fputc('"', out);
    for (; *s != '\0'; s++) {
        if (*s == '"' || *s == '\\')
            fputc('\\', out);
        fputc(*s, out);
    }
    fputc('"', out);
}

void
access_rules_dump(const struct access_rules *rs, FILE *out)
{
    char verbs[128];

    if (rs == NULL) {
        fputs("access: ~   # no rules: every local user may do everything\n", out);
        return;
    }
    fputs("access:     # first matching rule decides; none matches: deny\n", out);
    for (size_t i = 0; i < rs->n; i++) {
        const struct access_rule *ru = &rs->rules[i];

        fprintf(out, "  - # rule %zu (line %u)\n", i + 1, ru->line);
        if (ru->subject == ACCESS_ANYONE)
            fputs("    # anyone\n", out);
        else
            fprintf(out, "    %s: %u   # %s\n", ru->subject == ACCESS_UID ? "uid" : "gid",
                ru->who, ru->who_name);
        verbs_text(ru->verbs, verbs, sizeof verbs);
        fprintf(out, "    %s: [%s]\n", ru->allow ? "allow" : "deny", verbs);
        fputs("    feeds: [", out);
        if (ru->n_feeds == 0)
            dump_word(out, "*");
        for (size_t j = 0; j < ru->n_feeds; j++) {
            if (j > 0)
                fputs(", ", out);
            dump_word(out, ru->feeds[j]);
        }
        fputs("]\n", out);
    }
}
