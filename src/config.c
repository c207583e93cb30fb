/*
 * The daemon's configuration: one YAML file read with libyaml's document
 * API (nodes keep their marks, so every error names file:line:col) into one
 * struct config. One table below lists every setting: its key, type, field,
 * default and range. Defaults, parsing, validation, "did you mean", the
 * dump and freeing all walk that table, so a setting is added in one place.
 */
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <openssl/tls1.h>
#include <yaml.h>

#include "access.h"
#include "config-int.h"
#include "credentials.h"
#include "fileio.h"
#include "log.h"
#include "tls.h"
#include "util.h"

/* Refuse config files larger than this: a config is a few KiB. */
#define CONFIG_MAX_BYTES (1024 * 1024)
/* Nesting of mappings and sequences; the settings go 3 deep. */
#define CONFIG_MAX_DEPTH 32

#define DAY_MS (24ull * 3600 * 1000)
/* size_t settings: up to 1 TiB where size_t allows it. */
#define SIZE_CAP ((uint64_t)SIZE_MAX < (1ull << 40) ? (uint64_t)SIZE_MAX : (1ull << 40))
#define SUN_PATH_MAX (sizeof(((struct sockaddr_un *)NULL)->sun_path) - 1)

static const struct opt_name auth_names[] = {
    { "none", CONFIG_AUTH_NONE },
    { "basic", CONFIG_AUTH_BASIC },
    { "token", CONFIG_AUTH_TOKEN },
    { NULL, 0 },
};
/* 5 is byte-identical to 4 on the wire: a synonym, kept as written. */
static const struct opt_name protocol_names[] = {
    { "3", WIRE_V3 },
    { "4", WIRE_V4 },
    { "5", WIRE_V5 },
    { "6", WIRE_V6 },
    { NULL, 0 },
};
static const struct opt_name confirm_names[] = {
    { "none", CONFIG_CONFIRM_NONE },
    { "probe", CONFIG_CONFIRM_PROBE },
    { "heartbeat", CONFIG_CONFIRM_HEARTBEAT },
    { NULL, 0 },
};
static const struct opt_name tls_version_names[] = {
    { "1.2", TLS1_2_VERSION },
    { "1.3", TLS1_3_VERSION },
    { NULL, 0 },
};
static const struct opt_name level_names[] = {
    { "error", LOG_ERR },
    { "warning", LOG_WARNING },
    { "notice", LOG_NOTICE },
    { "info", LOG_INFO },
    { "debug", LOG_DEBUG },
    { NULL, 0 },
};
static const struct opt_name dest_names[] = {
    { "stderr", LOG_DEST_STDERR },
    { "syslog", LOG_DEST_SYSLOG },
    { NULL, 0 },
};

#define AT(m) .off = offsetof(struct config, m), .width = sizeof(((struct config *)NULL)->m)
#define SECTION(k)                                                                         \
    {                                                                                      \
        .key = k, .kind = K_SECTION                                                        \
    }
#define STR(k, m, d, maxlen)                                                               \
    {                                                                                      \
        .key = k, .kind = K_STRING, AT(m), .defstr = d, .min = 1, .max = maxlen            \
    }
#define PATH(k, m)                                                                         \
    {                                                                                      \
        .key = k, .kind = K_PATH, AT(m), .min = 1, .max = PATH_MAX - 1                     \
    }
#define BOOL(k, m, d)                                                                      \
    {                                                                                      \
        .key = k, .kind = K_BOOL, AT(m), .def = d                                          \
    }
#define NUM(k, kind_, m, d, lo, hi)                                                        \
    {                                                                                      \
        .key = k, .kind = kind_, AT(m), .def = d, .min = lo, .max = hi                     \
    }
#define ENUM(k, m, d, n)                                                                   \
    {                                                                                      \
        .key = k, .kind = K_ENUM, AT(m), .def = d, .names = n                              \
    }

/* Every setting, its default and its range: the one table. */
const struct opt config_opts[] = {
    SECTION("bus"),
    STR("bus.host", bus.host, NULL, 255),
    NUM("bus.port", K_COUNT, bus.port, 9091, 1, 65535),
    { .key = "bus.tls", .kind = K_TLS, AT(bus.tls.enabled), .def = 1 },
    BOOL("bus.tls.enabled", bus.tls.enabled, 1),
    BOOL("bus.tls.verify", bus.tls.verify, 1),
    PATH("bus.tls.ca_file", bus.tls.ca_file),
    PATH("bus.tls.ca_dir", bus.tls.ca_dir),
    STR("bus.tls.server_name", bus.tls.server_name, NULL, 255),
    PATH("bus.tls.cert_file", bus.tls.cert_file),
    PATH("bus.tls.key_file", bus.tls.key_file),
    STR("bus.tls.ciphers", bus.tls.ciphers, NULL, 4096),
    ENUM("bus.tls.min_version", bus.tls.min_version, TLS1_2_VERSION, tls_version_names),
    ENUM("bus.auth", bus.auth, CONFIG_AUTH_NONE, auth_names),
    PATH("bus.credentials_file", bus.credentials_file),
    PATH("bus.token_file", bus.token_file),
    STR("bus.impersonating", bus.impersonating, NULL, 1024),
    { .key = "bus.forwarded_for",
        .kind = K_FORWARDED,
        AT(bus.forwarded_for),
        .def = 1,
        .min = 1,
        .max = 1024 },
    ENUM("bus.protocol", bus.protocol, WIRE_V3, protocol_names),
    STR("bus.application", bus.application, NULL, 255),
    NUM("bus.connect_timeout", K_MS, bus.connect_timeout_ms, 10000, 1, DAY_MS),
    SECTION("bus.reconnect"),
    NUM("bus.reconnect.min", K_MS, bus.reconnect_min_ms, 500, 1, DAY_MS),
    NUM("bus.reconnect.max", K_MS, bus.reconnect_max_ms, 30000, 1, DAY_MS),
    NUM("bus.reconnect.reset_after", K_MS, bus.reconnect_reset_ms, 60000, 0, DAY_MS),
    NUM("bus.auth_fail_window", K_MS, bus.auth_fail_window_ms, 2000, 0, DAY_MS),
    SECTION("bus.heartbeat"),
    NUM("bus.heartbeat.timeout", K_MS, bus.heartbeat_timeout_ms, 0, 0, DAY_MS),
    ENUM("bus.confirm", bus.confirm, CONFIG_CONFIRM_PROBE, confirm_names),
    { .key = "bus.confirm_feed",
        .kind = K_STRING,
        AT(bus.confirm_feed),
        .defstr = "__busgate__",
        .min = 1,
        .max = 255,
        .flags = OPT_NONNULL },
    NUM("bus.confirm_timeout", K_MS, bus.confirm_timeout_ms, 10000, 1, DAY_MS),
    NUM("bus.keepalive", K_SEC, bus.keepalive_s, 30, 0, 32767),
    NUM("bus.output_high_water", K_SIZE, bus.output_high_water, 4 * MIB, 4 * KIB, SIZE_CAP),
    SECTION("bus.limits"),
    /* At least 256: the link's own names (its probe topic host/client-id)
     * come back from the distributor and must fit, or it never comes up. */
    NUM("bus.limits.max_string", K_SIZE, bus.limits.max_string, WIRE_DEFAULT_MAX_STRING,
        256, GIB),
    NUM("bus.limits.max_payload", K_SIZE, bus.limits.max_payload, WIRE_DEFAULT_MAX_PAYLOAD,
        1, GIB),
    NUM("bus.limits.max_packets", K_COUNT, bus.limits.max_packets, WIRE_DEFAULT_MAX_PACKETS,
        1, 1000000),
    NUM("bus.limits.max_entitlements", K_COUNT, bus.limits.max_entitlements,
        WIRE_DEFAULT_MAX_ENTITLEMENTS, 1, 1000000),
    NUM("bus.limits.max_message", K_SIZE, bus.limits.max_message, WIRE_DEFAULT_MAX_MESSAGE,
        1, GIB),

    SECTION("listen"),
    { .key = "listen.path",
        .kind = K_PATH,
        AT(listen.path),
        .defstr = DEFAULT_SOCKET,
        .min = 1,
        .max = SUN_PATH_MAX,
        .flags = OPT_NONNULL },
    NUM("listen.mode", K_MODE, listen.mode, 0660, 0, 07777),
    STR("listen.group", listen.group, NULL, 255),
    NUM("listen.max_sessions", K_COUNT, listen.max_sessions, 10000, 1, 1000000),
    NUM("listen.max_line", K_SIZE, listen.max_line, 64 * KIB, 256, 16 * MIB),
    NUM("listen.max_payload", K_SIZE, listen.max_payload, MIB, 1, GIB),
    NUM("listen.max_packets", K_COUNT, listen.max_packets, 1024, 1, 1000000),
    NUM("listen.max_subscriptions", K_COUNT, listen.max_subscriptions, 10000, 1, 10000000),
    NUM("listen.max_notifications", K_COUNT, listen.max_notifications, 1000, 1, 10000000),
    NUM("listen.max_authorizers", K_COUNT, listen.max_authorizers, 1000, 1, 10000000),
    NUM("listen.max_output", K_SIZE, listen.max_output, 8 * MIB, 4 * KIB, SIZE_CAP),
    NUM("listen.max_memory", K_SIZE, listen.max_memory, GIB, 64 * KIB, SIZE_CAP),
    NUM("listen.socket_buffer", K_SIZE, listen.socket_buffer, 0, 0, 64 * MIB),

    SECTION("router"),
    NUM("router.image_cache", K_SIZE, router.image_cache_bytes, MIB, 0, SIZE_CAP),
    NUM("router.image_cache_total", K_SIZE, router.image_cache_total, 256 * MIB, 0,
        SIZE_CAP),
    NUM("router.busdown_queue", K_COUNT, router.busdown_queue, 0, 0, 10000000),
    NUM("router.busdown_queue_bytes", K_SIZE, router.busdown_queue_bytes, 16 * MIB, 1,
        SIZE_CAP),
    BOOL("router.allow_empty_publish", router.allow_empty_publish, 0),
    NUM("router.auth_pending", K_COUNT, router.auth_pending, 65536, 1, 10000000),
    NUM("router.auth_pending_age", K_MS, router.auth_pending_age_ms, 600000, 1000, DAY_MS),
    STR("router.image_content_types", router.image_content_types, NULL, 4096),

    SECTION("log"),
    ENUM("log.level", log.level, LOG_INFO, level_names),
    ENUM("log.destination", log.dest, LOG_DEST_STDERR, dest_names),

    SECTION("daemon"),
    NUM("daemon.shutdown_grace", K_MS, daemon.shutdown_grace_ms, 5000, 0, DAY_MS),

    SECTION("metrics"),
    STR("metrics.listen", metrics.listen, NULL, SUN_PATH_MAX),
    BOOL("metrics.allow_remote", metrics.allow_remote, 0),
    NUM("metrics.timeout", K_MS, metrics.timeout_ms, 10000, 100, 600000),

    { .key = "access", .kind = K_ACCESS, AT(access) },
};

#define NOPTS (sizeof config_opts / sizeof config_opts[0])
const size_t config_nopts = NOPTS;

_Static_assert(NOPTS <= CONFIG_MAX_OPTS, "raise CONFIG_MAX_OPTS in config-int.h");

static int walk_mapping(struct load_ctx *c, const yaml_node_t *map, const char *prefix);

static void *
field(struct config *cfg, const struct opt *o)
{
    return (char *)cfg + o->off;
}

static const void *
cfield(const struct config *cfg, const struct opt *o)
{
    return (const char *)cfg + o->off;
}

/* Numbers live in fields of several widths; memcpy keeps this free of aliasing games. */
static void
set_num(struct config *cfg, const struct opt *o, uint64_t v)
{
    void *p = field(cfg, o);

    switch (o->width) {
    case 1: {
        uint8_t x = (uint8_t)v;
        memcpy(p, &x, 1);
        break;
    }
    case 2: {
        uint16_t x = (uint16_t)v;
        memcpy(p, &x, 2);
        break;
    }
    case 4: {
        uint32_t x = (uint32_t)v;
        memcpy(p, &x, 4);
        break;
    }
    case 8:
        memcpy(p, &v, 8);
        break;
    default:
        fatalx("config: %s has an unsupported width %zu", o->key, o->width);
    }
}

uint64_t
config_get_num(const struct config *cfg, const struct opt *o)
{
    const void *p = cfield(cfg, o);

    switch (o->width) {
    case 1: {
        uint8_t x;
        memcpy(&x, p, 1);
        return x;
    }
    case 2: {
        uint16_t x;
        memcpy(&x, p, 2);
        return x;
    }
    case 4: {
        uint32_t x;
        memcpy(&x, p, 4);
        return x;
    }
    case 8: {
        uint64_t x;
        memcpy(&x, p, 8);
        return x;
    }
    default:
        fatalx("config: %s has an unsupported width %zu", o->key, o->width);
    }
}

static char **
str_field(struct config *cfg, const struct opt *o)
{
    return (char **)field(cfg, o);
}

const char *
config_get_str(const struct config *cfg, const struct opt *o)
{
    return *(char *const *)cfield(cfg, o);
}

int
config_find_opt(const char *key)
{
    for (size_t i = 0; i < NOPTS; i++)
        if (strcmp(config_opts[i].key, key) == 0)
            return (int)i;
    return -1;
}

const char *
config_last_part(const char *key)
{
    const char *dot = strrchr(key, '.');

    return dot != NULL ? dot + 1 : key;
}

/* True when key is a direct child of prefix ("" is the top level). */
static bool
is_child(const char *key, const char *prefix)
{
    size_t n = strlen(prefix);

    if (n == 0)
        return strchr(key, '.') == NULL;
    return strncmp(key, prefix, n) == 0 && key[n] == '.' &&
        strchr(key + n + 1, '.') == NULL;
}

/* A number of o's kind as it would be written in the file. */
void
config_fmt_num(const struct opt *o, uint64_t v, char *buf, size_t n)
{
    switch (o->kind) {
    case K_SIZE:
        config_fmt_size(v, buf, n);
        break;
    case K_MS:
        config_fmt_ms(v, buf, n);
        break;
    case K_SEC:
        config_fmt_ms(v * 1000, buf, n);
        break;
    case K_MODE:
        snprintf(buf, n, "0%03llo", (unsigned long long)v);
        break;
    default:
        snprintf(buf, n, "%llu", (unsigned long long)v);
        break;
    }
}

const char *
config_enum_name(const struct opt_name *names, int value)
{
    for (; names->name != NULL; names++)
        if (names->value == value)
            return names->name;
    return "?";
}

/* Input text shown in a message: bounded, printable ASCII only. */
static const char *
shown(const char *s, size_t len, char *buf, size_t n)
{
    size_t i, j = 0, max = 40;

    for (i = 0; i < len && i < max && j + 4 < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        buf[j++] = (ch >= 0x20 && ch < 0x7f) ? (char)ch : '?';
    }
    if (i < len && j + 4 < n) {
        memcpy(buf + j, "...", 3);
        j += 3;
    }
    buf[j] = '\0';
    return buf;
}

/* Edit distance, for "did you mean"; both strings are short key names. */
static size_t
edit_distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b), prev[65], cur[65];

    if (la > 64 || lb > 64)
        return SIZE_MAX;
    for (size_t j = 0; j <= lb; j++)
        prev[j] = j;
    for (size_t i = 1; i <= la; i++) {
        cur[0] = i;
        for (size_t j = 1; j <= lb; j++) {
            size_t sub = prev[j - 1] + (a[i - 1] != b[j - 1]);
            size_t del = prev[j] + 1, ins = cur[j - 1] + 1;
            cur[j] = sub < del ? (sub < ins ? sub : ins) : (del < ins ? del : ins);
        }
        memcpy(prev, cur, (lb + 1) * sizeof prev[0]);
    }
    return prev[lb];
}

/* "name:line:col: message"; always returns -1. */
int __attribute__((format(printf, 3, 4)))
config_err_at(struct load_ctx *c, const yaml_mark_t *m, const char *fmt, ...)
{
    char msg[768];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    set_err(c->err, c->errlen, "%s:%zu:%zu: %s", c->name, m != NULL ? m->line + 1 : 1,
        m != NULL ? m->column + 1 : 1, msg);
    return -1;
}

/* Where a check about config_opts[i] should point: its value, else its nearest
 * section that was written, else the top of the file. */
static const yaml_mark_t *
mark_for(struct load_ctx *c, int i, bool value)
{
    char key[128];
    int j;

    if (i >= 0 && c->seen[i])
        return value ? &c->val_mark[i] : &c->key_mark[i];
    snprintf(key, sizeof key, "%s", i >= 0 ? config_opts[i].key : "");
    for (char *dot; (dot = strrchr(key, '.')) != NULL;) {
        *dot = '\0';
        if ((j = config_find_opt(key)) >= 0 && c->seen[j])
            return &c->key_mark[j];
    }
    return &c->root_mark;
}

const char *
config_node_type_name(const yaml_node_t *n)
{
    switch (n->type) {
    case YAML_MAPPING_NODE:
        return "a mapping";
    case YAML_SEQUENCE_NODE:
        return "a sequence";
    default:
        return "a scalar";
    }
}

/* What a setting of o's kind looks like, for "expected ..." messages. */
static void
expected(const struct opt *o, char *buf, size_t n)
{
    char lo[32], hi[32];
    size_t used;

    switch (o->kind) {
    case K_SECTION:
        snprintf(buf, n, "a mapping");
        break;
    case K_TLS:
        snprintf(buf, n, "true, false or a mapping of TLS settings");
        break;
    case K_STRING:
        snprintf(buf, n, "a string");
        break;
    case K_PATH:
        snprintf(buf, n, "a path");
        break;
    case K_BOOL:
        snprintf(buf, n, "true or false");
        break;
    case K_COUNT:
        config_fmt_num(o, o->min, lo, sizeof lo);
        config_fmt_num(o, o->max, hi, sizeof hi);
        snprintf(buf, n, "a number from %s to %s", lo, hi);
        break;
    case K_SIZE:
        snprintf(buf, n, "a size such as 4KiB, 16MiB or 1024");
        break;
    case K_MS:
        snprintf(buf, n, "a duration such as 500ms, 30s, 5m or 0");
        break;
    case K_SEC:
        snprintf(buf, n, "a duration in whole seconds such as 30s, 5m or 0");
        break;
    case K_MODE:
        snprintf(buf, n, "an octal file mode such as \"0660\"");
        break;
    case K_FORWARDED:
        snprintf(buf, n, "a host name, host or none");
        break;
    case K_ACCESS:
        snprintf(buf, n, "a list of rules (- user: ..., allow: [...], feeds: [...])");
        break;
    case K_ENUM:
        used = (size_t)snprintf(buf, n, "one of");
        for (const struct opt_name *nm = o->names; nm->name != NULL && used < n; nm++)
            used += (size_t)snprintf(buf + used, n - used, "%s %s",
                nm == o->names ? "" : ",", nm->name);
        break;
    }
}

int
config_err_expected(struct load_ctx *c, const struct opt *o, const yaml_node_t *v)
{
    char exp[128], text[64];

    expected(o, exp, sizeof exp);
    if (v->type != YAML_SCALAR_NODE)
        return config_err_at(c, &v->start_mark, "%s: expected %s, got %s", o->key, exp,
            config_node_type_name(v));
    return config_err_at(c, &v->start_mark, "%s: expected %s, got \"%s\"", o->key, exp,
        shown((const char *)v->data.scalar.value, v->data.scalar.length, text,
            sizeof text));
}

static int
err_range(struct load_ctx *c, const struct opt *o, const yaml_node_t *v)
{
    char lo[32], hi[32], text[64];

    config_fmt_num(o, o->min, lo, sizeof lo);
    config_fmt_num(o, o->max, hi, sizeof hi);
    return config_err_at(c, &v->start_mark, "%s: \"%s\" is out of range (%s to %s)", o->key,
        shown((const char *)v->data.scalar.value, v->data.scalar.length, text, sizeof text),
        lo, hi);
}

bool
config_is_null(const yaml_node_t *n)
{
    const char *s = (const char *)n->data.scalar.value;

    if (n->type != YAML_SCALAR_NODE || n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE)
        return false;
    return n->data.scalar.length == 0 || strcmp(s, "~") == 0 || strcmp(s, "null") == 0 ||
        strcmp(s, "Null") == 0 || strcmp(s, "NULL") == 0;
}

static int
set_string(struct load_ctx *c, const struct opt *o, const yaml_node_t *v, const char *s)
{
    char **fp = str_field(c->cfg, o), *copy, text[64];
    size_t len = strlen(s);

    if (len == 0 || config_is_null(v)) {
        if (o->flags & OPT_NONNULL)
            return config_err_expected(c, o, v);
        free(*fp);
        *fp = NULL;
        return 0;
    }
    if (o->kind == K_PATH && c->base != NULL && s[0] != '/') {
        if (asprintf(&copy, "%s/%s", c->base, s) < 0)
            return config_err_at(c, &v->start_mark, "%s: out of memory", o->key);
    } else if ((copy = strdup(s)) == NULL) {
        return config_err_at(c, &v->start_mark, "%s: out of memory", o->key);
    }
    if (strlen(copy) > o->max) {
        free(copy);
        return config_err_at(c, &v->start_mark, "%s: \"%s\" is longer than %llu bytes",
            o->key, shown(s, len, text, sizeof text), (unsigned long long)o->max);
    }
    free(*fp);
    *fp = copy;
    return 0;
}

static int
set_forwarded(struct load_ctx *c, const struct opt *o, const yaml_node_t *v, const char *s)
{
    bool b;

    c->cfg->bus.forwarded_for_host = false;
    free(c->cfg->bus.forwarded_for);
    c->cfg->bus.forwarded_for = NULL;
    if (config_is_null(v) || *s == '\0' || strcasecmp(s, "none") == 0)
        return 0;
    if (config_parse_bool(s, &b) == 0) {
        c->cfg->bus.forwarded_for_host = b;
        return 0;
    }
    if (strcmp(s, "host") == 0) {
        c->cfg->bus.forwarded_for_host = true;
        return 0;
    }
    return set_string(c, o, v, s);
}

static int
set_enum(struct load_ctx *c, const struct opt *o, const yaml_node_t *v, const char *s)
{
    for (const struct opt_name *nm = o->names; nm->name != NULL; nm++) {
        if (strcasecmp(s, nm->name) == 0) {
            set_num(c->cfg, o, (uint64_t)(uint32_t)nm->value);
            return 0;
        }
    }
    return config_err_expected(c, o, v);
}

static int
set_number(struct load_ctx *c, const struct opt *o, const yaml_node_t *v, const char *s)
{
    uint64_t n = 0;
    const char *end;
    int r = -1;

    switch (o->kind) {
    case K_COUNT:
        r = (config_parse_digits(s, &n, &end) == 0 && *end == '\0') ? 0 : -1;
        break;
    case K_SIZE:
        r = config_parse_size(s, &n);
        break;
    case K_MS:
        r = config_parse_duration_ms(s, &n);
        break;
    case K_SEC:
        if ((r = config_parse_duration_ms(s, &n)) == 0) {
            if (n % 1000 != 0)
                return config_err_at(c, &v->start_mark,
                    "%s: %s is not a whole number of seconds", o->key, s);
            n /= 1000;
        }
        break;
    case K_MODE:
        r = config_parse_mode(s, &n);
        break;
    default:
        break;
    }
    if (r != 0)
        return config_err_expected(c, o, v);
    if (n < o->min || n > o->max)
        return err_range(c, o, v);
    set_num(c->cfg, o, n);
    return 0;
}

static int
apply_scalar(struct load_ctx *c, const struct opt *o, const yaml_node_t *v)
{
    const char *s = (const char *)v->data.scalar.value;
    bool b;

    if (strlen(s) != v->data.scalar.length)
        return config_err_at(c, &v->start_mark, "%s: contains a NUL byte", o->key);
    switch (o->kind) {
    case K_STRING:
    case K_PATH:
        return set_string(c, o, v, s);
    case K_FORWARDED:
        return set_forwarded(c, o, v, s);
    case K_BOOL:
        if (config_parse_bool(s, &b) != 0)
            return config_err_expected(c, o, v);
        set_num(c->cfg, o, b);
        return 0;
    case K_ENUM:
        return set_enum(c, o, v, s);
    default:
        return set_number(c, o, v, s);
    }
}

static int
apply(struct load_ctx *c, const struct opt *o, const yaml_node_t *v)
{
    bool b;

    switch (o->kind) {
    case K_ACCESS:
        return config_apply_access(c, o, v);
    case K_SECTION:
        if (v->type == YAML_MAPPING_NODE)
            return walk_mapping(c, v, o->key);
        return config_is_null(v) ? 0 : config_err_expected(c, o, v);
    case K_TLS:
        if (v->type == YAML_MAPPING_NODE) {
            c->cfg->bus.tls.enabled = true;
            return walk_mapping(c, v, o->key);
        }
        if (config_is_null(v)) {
            c->cfg->bus.tls.enabled = true;
            return 0;
        }
        if (v->type != YAML_SCALAR_NODE ||
            config_parse_bool((const char *)v->data.scalar.value, &b) != 0)
            return config_err_expected(c, o, v);
        c->cfg->bus.tls.enabled = b;
        return 0;
    default:
        if (v->type != YAML_SCALAR_NODE)
            return config_err_expected(c, o, v);
        return apply_scalar(c, o, v);
    }
}

/* An unknown key: suggest a sibling within edit distance 2, else the same
 * name elsewhere ("port" at the top level: did you mean 'bus.port'?). */
static int
err_unknown(struct load_ctx *c, const yaml_node_t *k, const char *prefix, const char *name)
{
    const char *best = NULL;
    size_t best_d = 3;
    char text[64], full[160];

    for (size_t i = 0; i < NOPTS; i++) {
        size_t d;
        if (!is_child(config_opts[i].key, prefix))
            continue;
        if ((d = edit_distance(name, config_last_part(config_opts[i].key))) < best_d) {
            best_d = d;
            best = config_last_part(config_opts[i].key);
        }
    }
    for (size_t i = 0; best == NULL && i < NOPTS; i++)
        if (config_opts[i].kind != K_SECTION &&
            strcmp(config_last_part(config_opts[i].key), name) == 0)
            best = config_opts[i].key;
    snprintf(full, sizeof full, "%s%s%s", prefix, *prefix ? "." : "",
        shown(name, strlen(name), text, sizeof text));
    if (best != NULL)
        return config_err_at(c, &k->start_mark, "unknown key '%s' (did you mean '%s'?)",
            full, best);
    return config_err_at(c, &k->start_mark, "unknown key '%s'", full);
}

static int
walk_pair(struct load_ctx *c, const yaml_node_pair_t *p, const char *prefix)
{
    const yaml_node_t *k = yaml_document_get_node(c->doc, p->key);
    const yaml_node_t *v = yaml_document_get_node(c->doc, p->value);
    char full[160];
    const char *name;
    int i;

    if (k == NULL || v == NULL)
        return config_err_at(c, &c->root_mark, "malformed YAML document");
    if (k->type != YAML_SCALAR_NODE)
        return config_err_at(c, &k->start_mark, "expected a key name, got %s",
            config_node_type_name(k));
    name = (const char *)k->data.scalar.value;
    if (strlen(name) != k->data.scalar.length || k->data.scalar.length > 64)
        return err_unknown(c, k, prefix, name);
    snprintf(full, sizeof full, "%s%s%s", prefix, *prefix ? "." : "", name);
    if ((i = config_find_opt(full)) < 0 || !is_child(full, prefix))
        return err_unknown(c, k, prefix, name);
    if (c->seen[i])
        return config_err_at(c, &k->start_mark, "duplicate key '%s' (first at line %zu)",
            full, c->key_mark[i].line + 1);
    c->seen[i] = true;
    c->key_mark[i] = k->start_mark;
    c->val_mark[i] = v->start_mark;
    return apply(c, &config_opts[i], v);
}

static int
walk_mapping(struct load_ctx *c, const yaml_node_t *map, const char *prefix)
{
    for (const yaml_node_pair_t *p = map->data.mapping.pairs.start;
         p < map->data.mapping.pairs.top; p++)
        if (walk_pair(c, p, prefix) != 0)
            return -1;
    return 0;
}

/* metrics.listen: an address we can bind, loopback unless allow_remote. */
static int
check_metrics(struct load_ctx *c)
{
    const struct config_metrics *m = &c->cfg->metrics;
    struct sockaddr_storage ss;
    socklen_t len;
    bool loopback;
    const char *why;

    if (m->listen == NULL)
        return 0;
    if (config_metrics_address(m->listen, &ss, &len, &loopback, &why) != 0)
        return config_err_at(c, mark_for(c, config_find_opt("metrics.listen"), true),
            "metrics.listen: %s", why);
    if (!loopback && !m->allow_remote)
        return config_err_at(c, mark_for(c, config_find_opt("metrics.listen"), true),
            "metrics.listen: %s is not a loopback address; the endpoint has no "
            "authentication, so set metrics.allow_remote: true to serve it there",
            m->listen);
    return 0;
}

static int
check_auth(struct load_ctx *c)
{
    const struct config_bus *b = &c->cfg->bus;
    int auth = config_find_opt("bus.auth");

    if (b->auth == CONFIG_AUTH_BASIC && b->credentials_file == NULL)
        return config_err_at(c, mark_for(c, auth, true),
            "bus.auth: basic needs bus.credentials_file (an INI file with username and password)");
    if (b->auth == CONFIG_AUTH_TOKEN && b->credentials_file == NULL &&
        b->token_file == NULL)
        return config_err_at(c, mark_for(c, auth, true),
            "bus.auth: token needs bus.token_file or bus.credentials_file");
    if (b->auth != CONFIG_AUTH_TOKEN && b->token_file != NULL)
        return config_err_at(c, mark_for(c, config_find_opt("bus.token_file"), true),
            "bus.token_file is only used with bus.auth: token (bus.auth is %s)",
            config_enum_name(auth_names, (int)b->auth));
    if (b->auth == CONFIG_AUTH_NONE && b->credentials_file != NULL)
        return config_err_at(c, mark_for(c, config_find_opt("bus.credentials_file"), true),
            "bus.credentials_file is set but bus.auth is none "
            "(set bus.auth to basic or token, or remove credentials_file)");
    return 0;
}

/*
 * From bus protocol 4 the login is one string the distributor splits on
 * ';' with no escaping: a setting sent in it cannot hold one.
 */
static int
check_login_strings(struct load_ctx *c)
{
    static const char *const keys[] = { "bus.impersonating", "bus.forwarded_for",
        "bus.application" };
    const struct config_bus *b = &c->cfg->bus;
    const char *values[] = { b->impersonating, b->forwarded_for, b->application };

    if (b->protocol < WIRE_V4)
        return 0;
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
        if (values[i] != NULL && strchr(values[i], ';') != NULL)
            return config_err_at(c, mark_for(c, config_find_opt(keys[i]), true),
                "%s contains ';', which bus.protocol %d cannot send (the "
                "distributor splits its one login string on ';' with no "
                "escaping); remove the ';' or use bus.protocol 3",
                keys[i], b->protocol);
    return 0;
}

static int
check_values(struct load_ctx *c)
{
    const struct config_bus *b = &c->cfg->bus;
    char lo[32], hi[32], why[400];
    int i;

    if (b->host == NULL)
        return config_err_at(c, mark_for(c, config_find_opt("bus.host"), false),
            "bus.host is required (the distributor's host name)");
    if (check_auth(c) != 0 || check_login_strings(c) != 0 || check_metrics(c) != 0)
        return -1;
    if (b->confirm == CONFIG_CONFIRM_HEARTBEAT && b->heartbeat_timeout_ms == 0)
        return config_err_at(c, mark_for(c, config_find_opt("bus.confirm"), true),
            "bus.confirm: heartbeat needs bus.heartbeat.timeout (the first heartbeat "
            "confirms the login); use probe for a distributor without heartbeats");
    if ((b->tls.cert_file == NULL) != (b->tls.key_file == NULL)) {
        bool cert = b->tls.cert_file != NULL;
        return config_err_at(c,
            mark_for(c, config_find_opt(cert ? "bus.tls.cert_file" : "bus.tls.key_file"),
                true),
            "%s needs %s as well", cert ? "bus.tls.cert_file" : "bus.tls.key_file",
            cert ? "bus.tls.key_file" : "bus.tls.cert_file");
    }
    if (b->tls.ciphers != NULL && tls_check_ciphers(b->tls.ciphers, why, sizeof why) != 0)
        return config_err_at(c, mark_for(c, config_find_opt("bus.tls.ciphers"), true),
            "bus.tls.ciphers: %s", why);
    if (b->reconnect_min_ms > b->reconnect_max_ms) {
        config_fmt_ms(b->reconnect_min_ms, lo, sizeof lo);
        config_fmt_ms(b->reconnect_max_ms, hi, sizeof hi);
        i = config_find_opt("bus.reconnect.min");
        if (!c->seen[i])
            i = config_find_opt("bus.reconnect.max");
        return config_err_at(c, mark_for(c, i, true),
            "bus.reconnect.min (%s) is greater than bus.reconnect.max (%s)", lo, hi);
    }
    return 0;
}

static void
yaml_err(struct load_ctx *c, const yaml_parser_t *p)
{
    yaml_mark_t m = p->problem_mark;
    const char *problem = p->problem != NULL ? p->problem : "unknown problem";

    if (p->error == YAML_MEMORY_ERROR) {
        set_err(c->err, c->errlen, "%s: out of memory reading YAML", c->name);
        return;
    }
    if (p->error == YAML_READER_ERROR) {
        /* Reader errors carry a byte offset, not a mark: count lines ourselves. */
        m.line = m.column = 0;
        for (size_t i = 0; i < p->problem_offset && i < c->len; i++) {
            if (c->input[i] == '\n') {
                m.line++;
                m.column = 0;
            } else if ((c->input[i] & 0xc0) != 0x80) {
                m.column++;
            }
        }
        config_err_at(c, &m, "YAML error: %s", problem);
        return;
    }
    if (p->context != NULL)
        config_err_at(c, &m, "YAML syntax error: %s (%s at line %zu column %zu)", problem,
            p->context, p->context_mark.line + 1, p->context_mark.column + 1);
    else
        config_err_at(c, &m, "YAML syntax error: %s", problem);
}

/*
 * A first pass over the events, refusing nesting deeper than any config
 * needs: libyaml's scanner does work proportional to the flow nesting depth
 * for every token, so a file of a million '[' would take minutes to load.
 */
static int
check_depth(struct load_ctx *c)
{
    yaml_parser_t parser;
    yaml_event_t ev;
    int depth = 0, r = 0;
    bool done = false;

    if (!yaml_parser_initialize(&parser)) {
        set_err(c->err, c->errlen, "%s: out of memory", c->name);
        return -1;
    }
    yaml_parser_set_input_string(&parser, c->input, c->len);
    while (!done && r == 0) {
        if (!yaml_parser_parse(&parser, &ev)) {
            yaml_err(c, &parser);
            r = -1;
            break;
        }
        if (ev.type == YAML_SEQUENCE_START_EVENT || ev.type == YAML_MAPPING_START_EVENT) {
            if (++depth > CONFIG_MAX_DEPTH)
                r = config_err_at(c, &ev.start_mark, "nested more than %d levels deep",
                    CONFIG_MAX_DEPTH);
        } else if (ev.type == YAML_SEQUENCE_END_EVENT ||
            ev.type == YAML_MAPPING_END_EVENT) {
            depth--;
        }
        done = ev.type == YAML_STREAM_END_EVENT;
        yaml_event_delete(&ev);
    }
    yaml_parser_delete(&parser);
    return r;
}

/* The first document's root into cfg; a second document is an error. */
static int
load_document(struct load_ctx *c, yaml_parser_t *parser)
{
    yaml_document_t doc, extra;
    yaml_node_t *root;
    int r = -1;

    if (!yaml_parser_load(parser, &doc)) {
        yaml_err(c, parser);
        return -1;
    }
    c->doc = &doc;
    root = yaml_document_get_root_node(&doc);
    if (root != NULL)
        c->root_mark = root->start_mark;
    if (root != NULL && root->type != YAML_MAPPING_NODE && !config_is_null(root))
        config_err_at(c, &root->start_mark,
            "expected a mapping of settings (bus:, listen:, ...), got %s",
            config_node_type_name(root));
    else if ((root == NULL || root->type != YAML_MAPPING_NODE ||
                 walk_mapping(c, root, "") == 0) &&
        check_values(c) == 0)
        r = 0;
    if (r == 0 && root != NULL) {
        if (!yaml_parser_load(parser, &extra)) {
            yaml_err(c, parser);
            r = -1;
        } else {
            if (yaml_document_get_root_node(&extra) != NULL)
                r = config_err_at(c, &yaml_document_get_root_node(&extra)->start_mark,
                    "only one YAML document is expected (found a second one)");
            yaml_document_delete(&extra);
        }
    }
    c->doc = NULL;
    yaml_document_delete(&doc);
    return r;
}

static int
load_buffer(struct config *cfg, const char *name, const char *base, const char *yaml,
    size_t len, char *err, size_t errlen)
{
    struct load_ctx *c;
    yaml_parser_t parser;
    int r;

    config_defaults(cfg);
    if ((cfg->path = strdup(name)) == NULL) {
        set_err(err, errlen, "%s: out of memory", name);
        config_free(cfg);
        return -1;
    }
    if (len > CONFIG_MAX_BYTES) {
        set_err(err, errlen, "%s: larger than %d bytes, not a config file", name,
            CONFIG_MAX_BYTES);
        config_free(cfg);
        return -1;
    }
    if ((c = calloc(1, sizeof *c)) == NULL || !yaml_parser_initialize(&parser)) {
        free(c);
        set_err(err, errlen, "%s: out of memory", name);
        config_free(cfg);
        return -1;
    }
    c->name = name;
    c->base = base;
    c->input = (const unsigned char *)yaml;
    c->len = len;
    c->err = err;
    c->errlen = errlen;
    c->cfg = cfg;
    yaml_parser_set_input_string(&parser, c->input, len);
    if ((r = check_depth(c)) == 0)
        r = load_document(c, &parser);
    for (size_t i = 0; r == 0 && i < NOPTS; i++)
        if (c->seen[i])
            cfg->places[i] = (struct config_place){ (uint32_t)c->val_mark[i].line + 1,
                (uint32_t)c->val_mark[i].column + 1 };
    yaml_parser_delete(&parser);
    free(c);
    if (r != 0)
        config_free(cfg);
    return r;
}

int
config_load_string(struct config *cfg, const char *name, const char *yaml, size_t len,
    char *err, size_t errlen)
{
    return load_buffer(cfg, name, NULL, yaml, len, err, errlen);
}

/* Read a whole (small) configuration file. One anyone may write is
 * refused: it names the files busgated trusts and the socket it serves. */
static int
read_file(const char *path, char **out, size_t *outlen, char *err, size_t errlen)
{
    struct stat st;
    int fd;

    if ((fd = fileio_open(path, false, &st, err, errlen)) < 0)
        return -1;
    if (st.st_mode & S_IWOTH) {
        set_err(err, errlen, "%s: mode %04o lets anyone change it: chmod o-w %s", path,
            (unsigned)(st.st_mode & 07777), path);
        close(fd);
        return -1;
    }
    return fileio_read_all(fd, path, CONFIG_MAX_BYTES, out, outlen, err, errlen);
}

/* The directory relative paths in path's file are taken from. */
static char *
base_dir(const char *path)
{
    char *copy = strdup(path), *dir, *real;

    if (copy == NULL)
        return NULL;
    dir = dirname(copy);
    if ((real = realpath(dir, NULL)) == NULL)
        real = strdup(dir);
    free(copy);
    return real;
}

int
config_load(struct config *cfg, const char *path, char *err, size_t errlen)
{
    char *buf, *base;
    size_t len;
    int r;

    if (read_file(path, &buf, &len, err, errlen) != 0) {
        config_defaults(cfg);
        config_free(cfg);
        return -1;
    }
    if ((base = base_dir(path)) == NULL) {
        free(buf);
        set_err(err, errlen, "%s: out of memory", path);
        config_defaults(cfg);
        config_free(cfg);
        return -1;
    }
    r = load_buffer(cfg, path, base, buf, len, err, errlen);
    free(base);
    free(buf);
    return r;
}

void
config_defaults(struct config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    for (size_t i = 0; i < NOPTS; i++) {
        const struct opt *o = &config_opts[i];
        switch (o->kind) {
        case K_SECTION:
        case K_ACCESS:
            break;
        case K_STRING:
        case K_PATH:
            if (o->defstr != NULL && (*str_field(cfg, o) = strdup(o->defstr)) == NULL)
                fatalx("config: out of memory");
            break;
        case K_FORWARDED:
            cfg->bus.forwarded_for_host = o->def != 0;
            break;
        case K_TLS:
        case K_BOOL:
        case K_ENUM:
        default:
            set_num(cfg, o, o->def);
            break;
        }
    }
}

void
config_free(struct config *cfg)
{
    for (size_t i = 0; i < NOPTS; i++) {
        if (config_opts[i].kind == K_STRING || config_opts[i].kind == K_PATH ||
            config_opts[i].kind == K_FORWARDED) {
            char **fp = str_field(cfg, &config_opts[i]);
            free(*fp);
            *fp = NULL;
        }
    }
    access_rules_free(cfg->access);
    cfg->access = NULL;
    free(cfg->path);
    cfg->path = NULL;
}
