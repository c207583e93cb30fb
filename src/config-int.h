/*
 * Private to config.c, config-value.c and config-files.c (the public face
 * is config.h): the settings table's types, the table itself (config.c),
 * and what the parts call of each other.
 */
#ifndef BUSGATE_CONFIG_INT_H
#define BUSGATE_CONFIG_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "config.h"

#define KIB 1024ull
#define MIB (1024ull * KIB)
#define GIB (1024ull * MIB)

enum opt_kind {
    K_SECTION, /* a mapping of further keys */
    K_TLS,     /* bus.tls: true, false, or a mapping */
    K_STRING,  /* text; min/max bound its length */
    K_PATH,    /* a file path; relative ones are taken from the config's directory */
    K_BOOL,
    K_COUNT,     /* a plain decimal number */
    K_SIZE,      /* bytes: 4KiB, 16MiB, 1024 */
    K_MS,        /* a duration held in milliseconds */
    K_SEC,       /* a duration held in whole seconds */
    K_MODE,      /* an octal file mode */
    K_ENUM,      /* one of names[] */
    K_FORWARDED, /* bus.forwarded_for: a name, host, or none */
    K_ACCESS,    /* access: a list of rules (access.c builds them) */
};

#define OPT_NONNULL 0x1 /* a string that cannot be unset */

struct opt_name {
    const char *name;
    int value;
};

struct opt {
    const char *key; /* dotted path: "bus.tls.verify" */
    enum opt_kind kind;
    size_t off;                   /* field in struct config */
    size_t width;                 /* sizeof that field */
    uint64_t def;                 /* default of numbers, bools, enums */
    const char *defstr;           /* default of strings; NULL: unset */
    uint64_t min, max;            /* value range, or string length range */
    const struct opt_name *names; /* K_ENUM */
    unsigned flags;
};

/* The settings table (config.c): every setting, once. */
extern const struct opt config_opts[];
extern const size_t config_nopts;

/* config.c */
uint64_t config_get_num(const struct config *cfg, const struct opt *o);
const char *config_get_str(const struct config *cfg, const struct opt *o);
const char *config_last_part(const char *key);
void config_fmt_num(const struct opt *o, uint64_t v, char *buf, size_t n);
const char *config_enum_name(const struct opt_name *names, int value);
int config_find_opt(const char *key);

/* config-value.c */
void config_fmt_size(uint64_t v, char *buf, size_t n);
void config_fmt_ms(uint64_t v, char *buf, size_t n);
int config_parse_digits(const char *s, uint64_t *out, const char **end);
int config_parse_bool(const char *s, bool *out);
int config_parse_mode(const char *s, uint64_t *out);

/* config-files.c */

#include <yaml.h>

/* One load: where errors go, and where each key was seen for later checks. */
struct load_ctx {
    const char *name; /* file name for messages */
    const char *base; /* directory for relative paths; NULL: keep them */
    const unsigned char *input;
    size_t len;
    char *err;
    size_t errlen;
    yaml_document_t *doc;
    struct config *cfg;
    yaml_mark_t root_mark;
    bool seen[CONFIG_MAX_OPTS];
    yaml_mark_t key_mark[CONFIG_MAX_OPTS];
    yaml_mark_t val_mark[CONFIG_MAX_OPTS];
};

/* config.c: errors at a node, "name:line:col: message"; -1. */
int config_err_at(struct load_ctx *c, const yaml_mark_t *m, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
const char *config_node_type_name(const yaml_node_t *n);
bool config_is_null(const yaml_node_t *n);
int config_err_expected(struct load_ctx *c, const struct opt *o, const yaml_node_t *v);

/* config-access.c: the access: section, into cfg->access. */
int config_apply_access(struct load_ctx *c, const struct opt *o, const yaml_node_t *v);

#endif /* BUSGATE_CONFIG_INT_H */
