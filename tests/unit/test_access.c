/*
 * Local access control (src/access.c): building rules, the first-match
 * decision, feed patterns, and a property test of random rule sets against
 * a brute-force reference written independently of the matcher.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "access.h"

static char why[256];

static struct access_rule *
rule(struct access_rules *rs, const char *subj, const char *val, bool allow,
    const char *verbs, const char *feeds)
{
    struct access_rule *ru = access_rule_add(rs, 1);
    char buf[256], *save, *w;

    if (subj != NULL)
        assert_int_equal(access_rule_subject(ru, subj, val, why, sizeof why), 0);
    snprintf(buf, sizeof buf, "%s", verbs);
    for (w = strtok_r(buf, " ", &save); w != NULL; w = strtok_r(NULL, " ", &save))
        assert_int_equal(access_rule_verb(ru, allow, w, why, sizeof why), 0);
    snprintf(buf, sizeof buf, "%s", feeds);
    for (w = strtok_r(buf, " ", &save); w != NULL; w = strtok_r(NULL, " ", &save))
        assert_int_equal(access_rule_feed(ru, w, why, sizeof why), 0);
    assert_int_equal(access_rule_check(ru, why, sizeof why), 0);
    return ru;
}

static bool
allowed(const struct access_rules *rs, const struct access_id *id, enum access_verb v,
    const char *feed)
{
    return access_check(rs, id, v, feed, strlen(feed)).allow;
}

/* No rules at all: everything, as before access control. */
static void
t_no_rules(void **state)
{
    struct access_id id = { 1000, 1000, NULL, 0 };
    struct access_rules *rs = access_rules_new();

    (void)state;
    for (int v = 0; v < ACCESS_NVERBS; v++) {
        assert_true(allowed(NULL, &id, v, "x"));
        assert_true(allowed(rs, &id, v, "x"));
    }
    assert_null(access_check(NULL, &id, ACCESS_PUBLISH, "x", 1).rule);
    access_rules_free(rs);
}

/* The first matching rule decides; nothing matches: deny. */
static void
t_first_match(void **state)
{
    gid_t groups[] = { 50, 60 };
    struct access_id a = { 1000, 100, groups, 2 }, b = { 2000, 200, NULL, 0 };
    struct access_rules *rs = access_rules_new();
    struct access_decision d;

    (void)state;
    rule(rs, "uid", "1000", false, "publish", "prices.secret");
    rule(rs, "gid", "60", true, "subscribe publish", "prices.*");
    rule(rs, "uid", "2000", true, "all", "orders");
    rule(rs, NULL, NULL, true, "stats", "");

    assert_false(allowed(rs, &a, ACCESS_PUBLISH, "prices.secret"));
    d = access_check(rs, &a, ACCESS_PUBLISH, "prices.secret", 13);
    assert_int_equal(d.index, 1);
    assert_true(allowed(rs, &a, ACCESS_SUBSCRIBE, "prices.secret")); /* rule 2 */
    assert_true(allowed(rs, &a, ACCESS_PUBLISH, "prices.x"));
    assert_false(allowed(rs, &a, ACCESS_SEND, "prices.x")); /* default */
    assert_null(access_check(rs, &a, ACCESS_SEND, "prices.x", 8).rule);
    assert_false(allowed(rs, &b, ACCESS_SUBSCRIBE, "prices.x"));
    assert_true(allowed(rs, &b, ACCESS_AUTHORIZE, "orders"));
    assert_false(allowed(rs, &b, ACCESS_AUTHORIZE, "orders2"));
    /* stats ignores feeds; anyone may */
    assert_true(allowed(rs, &b, ACCESS_STATS, ""));
    /* primary gid counts as a group */
    b.gid = 60;
    assert_true(allowed(rs, &b, ACCESS_SUBSCRIBE, "prices.x"));
    access_rules_free(rs);
}

static void
t_patterns(void **state)
{
    (void)state;
    assert_true(access_feed_match("*", "", 0));
    assert_true(access_feed_match("*", "abc", 3));
    assert_true(access_feed_match("ab*", "ab", 2));
    assert_true(access_feed_match("ab*", "abc", 3));
    assert_false(access_feed_match("ab*", "a", 1));
    assert_true(access_feed_match("abc", "abc", 3));
    assert_false(access_feed_match("abc", "abcd", 4));
    assert_false(access_feed_match("abc", "ab", 2));
}

static void
t_bad_rules(void **state)
{
    struct access_rules *rs = access_rules_new();
    struct access_rule *ru = access_rule_add(rs, 3);

    (void)state;
    assert_int_equal(access_rule_verb(ru, true, "dance", why, sizeof why), -1);
    assert_non_null(strstr(why, "unknown verb 'dance'"));
    assert_int_equal(access_rule_feed(ru, "a*b", why, sizeof why), -1);
    assert_int_equal(access_rule_feed(ru, "", why, sizeof why), -1);
    assert_int_equal(access_rule_subject(ru, "uid", "x1", why, sizeof why), -1);
    assert_int_equal(access_rule_subject(ru, "user", "no-such-user-busgate", why,
                         sizeof why),
        -1);
    assert_int_equal(access_rule_subject(ru, "group", "no-such-group-busgate", why,
                         sizeof why),
        -1);
    assert_int_equal(access_rule_check(ru, why, sizeof why), -1);
    assert_int_equal(access_rule_subject(ru, "uid", "5", why, sizeof why), 0);
    assert_int_equal(access_rule_subject(ru, "gid", "5", why, sizeof why), -1);
    assert_int_equal(access_rule_verb(ru, true, "publish", why, sizeof why), 0);
    assert_int_equal(access_rule_verb(ru, false, "send", why, sizeof why), -1);
    assert_int_equal(access_rule_subject(access_rule_add(rs, 4), "user", "root", why,
                         sizeof why),
        0);
    assert_int_equal(rs->rules[1].who, 0);
    access_rules_free(rs);
}

/* ---- property test: random rules against a brute-force reference ---- */

static const char *const feeds_pool[] = { "", "a", "ab", "abc", "b", "ba", "a*", "ab*", "*",
    "b*" };
#define NPOOL (sizeof feeds_pool / sizeof feeds_pool[0])

/* The reference: every rule's every condition spelled out, character by
 * character, no shared helpers with access.c. */
static bool
ref_pattern(const char *p, const char *f)
{
    for (;; p++, f++) {
        if (p[0] == '*' && p[1] == '\0')
            return true;
        if (*p != *f)
            return false;
        if (*p == '\0')
            return true;
    }
}

struct ref_rule {
    int subj; /* 0 anyone, 1 uid, 2 gid */
    unsigned who;
    bool allow;
    unsigned verbs;
    const char *feeds[3];
    int n_feeds;
};

static bool
ref_allowed(const struct ref_rule *rr, int n, unsigned uid, unsigned gid,
    const unsigned *groups, int ng, int verb, const char *feed)
{
    if (n == 0)
        return true;
    for (int i = 0; i < n; i++) {
        bool who = rr[i].subj == 0 || (rr[i].subj == 1 && rr[i].who == uid);
        bool fm = rr[i].n_feeds == 0 || verb == ACCESS_STATS;

        for (int g = -1; rr[i].subj == 2 && g < ng; g++)
            who = who || rr[i].who == (g < 0 ? gid : groups[g]);
        for (int j = 0; j < rr[i].n_feeds; j++)
            fm = fm || ref_pattern(rr[i].feeds[j], feed);
        if (who && fm && (rr[i].verbs >> verb & 1))
            return rr[i].allow;
    }
    return false;
}

static void
t_property(void **state)
{
    static const char *const subjects[] = { NULL, "uid", "gid" };

    (void)state;
    srand(14);
    for (int round = 0; round < 2000; round++) {
        struct access_rules *rs = access_rules_new();
        struct ref_rule rr[6];
        int n = rand() % 6;
        char num[16];

        for (int i = 0; i < n; i++) {
            struct access_rule *ru = access_rule_add(rs, (unsigned)i);

            rr[i].subj = rand() % 3;
            rr[i].who = (unsigned)(rand() % 3);
            rr[i].allow = rand() % 2;
            rr[i].verbs = 0;
            rr[i].n_feeds = rand() % 4;
            if (rr[i].subj != 0) {
                snprintf(num, sizeof num, "%u", rr[i].who);
                assert_int_equal(access_rule_subject(ru, subjects[rr[i].subj], num, why,
                                     sizeof why),
                    0);
            }
            while (rr[i].verbs == 0)
                rr[i].verbs = (unsigned)(rand() % (1 << ACCESS_NVERBS));
            for (int v = 0; v < ACCESS_NVERBS; v++)
                if (rr[i].verbs >> v & 1)
                    assert_int_equal(access_rule_verb(ru, rr[i].allow, access_verb_name(v),
                                         why, sizeof why),
                        0);
            for (int j = 0; j < rr[i].n_feeds; j++) {
                /* Patterns: anything in the pool but the empty name. */
                rr[i].feeds[j] = feeds_pool[1 + rand() % (int)(NPOOL - 1)];
                assert_int_equal(access_rule_feed(ru, rr[i].feeds[j], why, sizeof why), 0);
            }
        }
        for (int k = 0; k < 50; k++) {
            unsigned groups[2] = { (unsigned)(rand() % 3), (unsigned)(rand() % 3) };
            gid_t g2[2] = { groups[0], groups[1] };
            int ng = rand() % 3;
            struct access_id id = { (uid_t)(rand() % 3), (gid_t)(rand() % 3), g2,
                (size_t)ng };
            int verb = rand() % ACCESS_NVERBS;
            const char *feed = feeds_pool[rand() % (int)NPOOL];
            struct access_decision d = access_check(rs, &id, verb, feed, strlen(feed));

            assert_int_equal(d.allow,
                ref_allowed(rr, n, id.uid, id.gid, groups, ng, verb, feed));
            if (d.rule != NULL)
                assert_ptr_equal(d.rule, &rs->rules[d.index - 1]);
        }
        access_rules_free(rs);
    }
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(t_no_rules),
        cmocka_unit_test(t_first_match),
        cmocka_unit_test(t_patterns),
        cmocka_unit_test(t_bad_rules),
        cmocka_unit_test(t_property),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
