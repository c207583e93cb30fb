/*
 * The access: section of the configuration: a list of rules, each a mapping
 * of a subject, allow or deny verbs and feeds, handed to access.c to build
 * and checked with file:line:column errors.
 */
#include <string.h>

#include "access.h"
#include "config-int.h"

/* One scalar of an access rule, as a NUL-free string, or NULL after an error. */
static const char *
access_scalar(struct load_ctx *c, const char *what, const yaml_node_t *v)
{
    if (v->type != YAML_SCALAR_NODE) {
        config_err_at(c, &v->start_mark, "access: %s: expected a scalar, got %s", what,
            config_node_type_name(v));
        return NULL;
    }
    if (strlen((const char *)v->data.scalar.value) != v->data.scalar.length) {
        config_err_at(c, &v->start_mark, "access: %s: contains a NUL byte", what);
        return NULL;
    }
    return (const char *)v->data.scalar.value;
}

/* A scalar or a sequence of scalars, each given to add. */
static int
access_list(struct load_ctx *c, struct access_rule *ru, const char *key,
    const yaml_node_t *v)
{
    const yaml_node_item_t *it, *end;
    const yaml_node_t *one;
    const char *s;
    char why[300];
    int r;

    if (v->type == YAML_SCALAR_NODE)
        it = NULL, end = NULL, one = v;
    else if (v->type == YAML_SEQUENCE_NODE)
        it = v->data.sequence.items.start, end = v->data.sequence.items.top, one = NULL;
    if (v->type == YAML_SEQUENCE_NODE && it == end)
        /* Not "omitted": feeds: [] would otherwise grant every feed. */
        return config_err_at(c, &v->start_mark,
            "access: %s: an empty list names nothing (omit feeds: for every feed)", key);
    if (v->type != YAML_SCALAR_NODE && v->type != YAML_SEQUENCE_NODE)
        return config_err_at(c, &v->start_mark, "access: %s: expected a list, got %s", key,
            config_node_type_name(v));
    for (;;) {
        if (one == NULL) {
            if (it >= end)
                return 0;
            one = yaml_document_get_node(c->doc, *it++);
        }
        if (one == NULL || (s = access_scalar(c, key, one)) == NULL)
            return -1;
        if (strcmp(key, "feeds") == 0)
            r = access_rule_feed(ru, s, why, sizeof why);
        else
            r = access_rule_verb(ru, strcmp(key, "allow") == 0, s, why, sizeof why);
        if (r != 0)
            return config_err_at(c, &one->start_mark, "access: %s", why);
        if (it == NULL)
            return 0;
        one = NULL;
    }
}

/* A key of the rule mapping given before pair p (libyaml keeps both):
 * two allow: lists would be merged into more than either line says. */
static const yaml_node_t *
earlier_key(struct load_ctx *c, const yaml_node_t *map, const yaml_node_pair_t *p,
    const char *key)
{
    for (const yaml_node_pair_t *q = map->data.mapping.pairs.start; q < p; q++) {
        const yaml_node_t *k = yaml_document_get_node(c->doc, q->key);

        if (k != NULL && k->type == YAML_SCALAR_NODE &&
            strcmp((const char *)k->data.scalar.value, key) == 0)
            return k;
    }
    return NULL;
}

/* One rule: a mapping of a subject (user, group, uid, gid; none: anyone),
 * allow or deny (verbs), and feeds (patterns; none: every feed). */
static int
access_rule(struct load_ctx *c, struct access_rules *rs, const yaml_node_t *map)
{
    struct access_rule *ru;
    char why[300];

    if (map == NULL || map->type != YAML_MAPPING_NODE)
        return config_err_at(c, map != NULL ? &map->start_mark : &c->root_mark,
            "access: each rule is a mapping (user:/group:/uid:/gid:, allow:/deny:, feeds:)");
    ru = access_rule_add(rs, (unsigned)map->start_mark.line + 1);
    for (const yaml_node_pair_t *p = map->data.mapping.pairs.start;
         p < map->data.mapping.pairs.top; p++) {
        const yaml_node_t *k = yaml_document_get_node(c->doc, p->key);
        const yaml_node_t *v = yaml_document_get_node(c->doc, p->value);
        const char *key, *s;

        const yaml_node_t *first;

        if (k == NULL || v == NULL || (key = access_scalar(c, "key", k)) == NULL)
            return -1;
        if ((first = earlier_key(c, map, p, key)) != NULL)
            return config_err_at(c, &k->start_mark,
                "access: duplicate key '%s' in a rule (first at line %u)", key,
                (unsigned)first->start_mark.line + 1);
        if (strcmp(key, "allow") == 0 || strcmp(key, "deny") == 0 ||
            strcmp(key, "feeds") == 0) {
            if (access_list(c, ru, key, v) != 0)
                return -1;
        } else if (strcmp(key, "user") == 0 || strcmp(key, "group") == 0 ||
            strcmp(key, "uid") == 0 || strcmp(key, "gid") == 0) {
            if ((s = access_scalar(c, key, v)) == NULL)
                return -1;
            if (access_rule_subject(ru, key, s, why, sizeof why) != 0)
                return config_err_at(c, &v->start_mark, "access: %s", why);
        } else {
            return config_err_at(c, &k->start_mark,
                "access: unknown key '%s' in a rule (expected "
                "user, group, uid, gid, allow, deny or feeds)",
                key);
        }
    }
    if (access_rule_check(ru, why, sizeof why) != 0)
        return config_err_at(c, &map->start_mark, "access: %s", why);
    return 0;
}

/* access: a sequence of rules, into cfg->access. */
int
config_apply_access(struct load_ctx *c, const struct opt *o, const yaml_node_t *v)
{
    struct access_rules *rs;

    if (config_is_null(v))
        return 0;
    if (v->type != YAML_SEQUENCE_NODE)
        return config_err_expected(c, o, v);
    rs = access_rules_new();
    access_rules_free(c->cfg->access);
    c->cfg->access = rs;
    for (const yaml_node_item_t *it = v->data.sequence.items.start;
         it < v->data.sequence.items.top; it++)
        if (access_rule(c, rs, yaml_document_get_node(c->doc, *it)) != 0)
            return -1;
    if (rs->n == 0) {
        /* An empty list is no rules: the same as no access section. */
        access_rules_free(rs);
        c->cfg->access = NULL;
    }
    return 0;
}
