/*
 * Local access control (busgated.yaml(5), "access"): which local identity
 * may do what on which feed. Pure: rules + identity + verb + feed -> allow
 * or deny, with the rule that decided. No I/O except resolving user and
 * group names while a rule is built (config load).
 *
 * Rules are tried in order and the first that matches decides (simplest to
 * explain and to predict). A rule matches when its subject (user, group,
 * uid, gid, or anyone) matches the identity, its verbs hold the verb and
 * one of its feed patterns matches the feed. When rules exist and none
 * matches, the answer is deny. With no rules at all (no access: section)
 * everything is allowed, as before access control existed.
 */
#ifndef BUSGATE_ACCESS_H
#define BUSGATE_ACCESS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

enum access_verb {
    ACCESS_SUBSCRIBE,
    ACCESS_PUBLISH,
    ACCESS_SEND,
    ACCESS_NOTIFY,
    ACCESS_AUTHORIZE,
    ACCESS_STATS,
    ACCESS_NVERBS,
};

/* Who a rule is about. */
enum access_subject {
    ACCESS_ANYONE,
    ACCESS_UID, /* "user: name" or "uid: n" */
    ACCESS_GID, /* "group: name" or "gid: n": primary or supplementary */
};

/* Who is asking: what the kernel says (SO_PEERCRED) and the groups the
 * user database gives that uid. */
struct access_id {
    uid_t uid;
    gid_t gid;
    const gid_t *groups;
    size_t n_groups;
};

struct access_rule {
    bool allow;
    enum access_subject subject;
    uint32_t who;   /* the uid or gid */
    char *who_name; /* as written ("alice", "1000"), for messages */
    unsigned verbs; /* 1 << enum access_verb */
    char **feeds;   /* exact names, or prefixes when ending in '*' */
    size_t n_feeds; /* 0: every feed */
    unsigned line;  /* in the config file, for messages */
};

struct access_rules {
    unsigned refs;
    struct access_rule *rules;
    size_t n;
};

struct access_decision {
    bool allow;
    const struct access_rule *rule; /* NULL: no rule matched (or no rules) */
    size_t index;                   /* the rule's number, from 1 */
};

/* "subscribe", ... */
const char *access_verb_name(enum access_verb v);

/* The decision for id doing verb on feed (feed ignored for stats). rules
 * may be NULL (no access section: allow). */
struct access_decision access_check(const struct access_rules *rules,
    const struct access_id *id, enum access_verb verb, const char *feed, size_t feed_len);

/* Whether pattern (exact, or a prefix ending in '*') matches feed. */
bool access_feed_match(const char *pattern, const char *feed, size_t feed_len);

/* Building rules (config.c walks the YAML and calls these). Each returns 0
 * or -1 with a message in why. */
struct access_rules *access_rules_new(void);
struct access_rule *access_rule_add(struct access_rules *rs, unsigned line);
/* A subject key (user, group, uid, gid) and its value. */
int access_rule_subject(struct access_rule *ru, const char *key, const char *value,
    char *why, size_t whylen);
/* One verb (or "all") of an allow/deny list. */
int access_rule_verb(struct access_rule *ru, bool allow, const char *verb, char *why,
    size_t whylen);
/* One feed pattern. */
int access_rule_feed(struct access_rule *ru, const char *pattern, char *why, size_t whylen);
/* A finished rule: it has verbs. */
int access_rule_check(const struct access_rule *ru, char *why, size_t whylen);

struct access_rules *access_rules_ref(struct access_rules *rs);
void access_rules_free(struct access_rules *rs); /* drops one reference */

/* A rule as one line of text (for logs, --check-config, REVOKED). */
void access_rule_describe(const struct access_rule *ru, char *buf, size_t len);
/* The rules as YAML, for --check-config (indent: spaces before "- "). */
void access_rules_dump(const struct access_rules *rs, FILE *out);

#endif /* BUSGATE_ACCESS_H */
