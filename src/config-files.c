/*
 * What the configuration names on disk (credentials, token, TLS files),
 * checked before they are needed, and the effective configuration written
 * as YAML for --check-config, with no secrets.
 */
#include <errno.h>
#include <grp.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "access.h"
#include "config-int.h"
#include "credentials.h"
#include "fileio.h"
#include "log.h"
#include "util.h"

static int
check_readable(const char *key, const char *path, bool dir, char *err, size_t errlen)
{
    char why[512];

    if (fileio_check(path, dir, why, sizeof why) != 0) {
        set_err(err, errlen, "%s: %s", key, why);
        return -1;
    }
    return 0;
}

/* A secret file: readable, and no one but its owner may read or write it. */
static int
check_secret(const char *key, const char *path, char *err, size_t errlen)
{
    char why[512];

    if (check_readable(key, path, false, err, errlen) != 0)
        return -1;
    if (credentials_check_mode(path, why, sizeof why) != 0) {
        set_err(err, errlen, "%s: %s", key, why);
        return -1;
    }
    return 0;
}

/* Whether the secrets in cr can be sent at b's bus protocol. */
static int
credentials_sendable(const struct config_bus *b, const struct credentials *cr, char *err,
    size_t errlen)
{
    struct wire_auth a = { .version = b->protocol,
        .username = cr->username,
        .password = cr->password,
        .token = cr->token };
    const char *cause = NULL;

    a.method = b->auth == CONFIG_AUTH_TOKEN ? WIRE_AUTH_TOKEN : WIRE_AUTH_BASIC;
    if (wire_auth_check(&a, &cause) == 0)
        return 0;
    set_err(err, errlen, "%s (bus.protocol %d); change the secret or use bus.protocol 3",
        cause, b->protocol);
    return -1;
}

static int
check_credentials(const struct config_bus *b, char *err, size_t errlen)
{
    struct credentials cr;
    char why[512];
    int r = 0;

    if (credentials_load(&cr, b->credentials_file, why, sizeof why) != 0) {
        set_err(err, errlen, "bus.credentials_file: %s", why);
        return -1;
    }
    if (b->auth == CONFIG_AUTH_BASIC && (cr.username == NULL || cr.password == NULL)) {
        set_err(err, errlen,
            "bus.credentials_file: %s: auth basic needs username and "
            "password in [bus]",
            b->credentials_file);
        r = -1;
    } else if (credentials_sendable(b, &cr, why, sizeof why) != 0) {
        set_err(err, errlen, "bus.credentials_file: %s: %s", b->credentials_file, why);
        r = -1;
    } else if (b->auth == CONFIG_AUTH_TOKEN && b->token_file == NULL && cr.token == NULL) {
        set_err(err, errlen,
            "bus.credentials_file: %s: auth token needs token in [bus] "
            "(or set bus.token_file)",
            b->credentials_file);
        r = -1;
    }
    credentials_free(&cr);
    return r;
}

static int
check_token_file(const struct config_bus *b, char *err, size_t errlen)
{
    struct credentials cr = { 0 };
    char why[512];
    int r;

    if ((r = credentials_load_token_file(&cr, b->token_file, why, sizeof why)) != 0 ||
        (r = credentials_sendable(b, &cr, why, sizeof why)) != 0)
        set_err(err, errlen, "bus.token_file: %s", why);
    credentials_free(&cr);
    return r;
}

/* TLS files: *key names the one at fault. */
static int
check_tls_files(const struct config_tls *t, const char **key, char *why, size_t n)
{
    if (!t->enabled)
        return 0;
    if (t->ca_file != NULL &&
        check_readable(*key = "bus.tls.ca_file", t->ca_file, false, why, n) != 0)
        return -1;
    if (t->ca_dir != NULL &&
        check_readable(*key = "bus.tls.ca_dir", t->ca_dir, true, why, n) != 0)
        return -1;
    if (t->cert_file != NULL &&
        check_readable(*key = "bus.tls.cert_file", t->cert_file, false, why, n) != 0)
        return -1;
    if (t->key_file != NULL &&
        check_secret(*key = "bus.tls.key_file", t->key_file, why, n) != 0)
        return -1;
    return 0;
}

/* The secrets' files: *key names the one at fault. */
static int
check_auth_files(const struct config_bus *b, const char **key, char *why, size_t n)
{
    if (b->auth == CONFIG_AUTH_NONE)
        return 0;
    if (b->credentials_file != NULL &&
        (check_secret(*key = "bus.credentials_file", b->credentials_file, why, n) != 0 ||
            check_credentials(b, why, n) != 0))
        return -1;
    if (b->auth == CONFIG_AUTH_TOKEN && b->token_file != NULL &&
        check_token_file(b, why, n) != 0) {
        *key = "bus.token_file";
        return -1;
    }
    return 0;
}

int
config_check_files(const struct config *cfg, char *err, size_t errlen)
{
    const char *key = NULL;
    char why[1024];

    if (check_tls_files(&cfg->bus.tls, &key, why, sizeof why) != 0 ||
        check_auth_files(&cfg->bus, &key, why, sizeof why) != 0)
        return config_err_for(cfg, key, err, errlen, "%s", why);
    if (cfg->listen.group != NULL && getgrnam(cfg->listen.group) == NULL)
        return config_err_for(cfg, "listen.group", err, errlen,
            "listen.group: no group named '%s'", cfg->listen.group);
    return 0;
}

int
config_err_for(const struct config *cfg, const char *key, char *err, size_t errlen,
    const char *fmt, ...)
{
    const char *path = cfg->path != NULL ? cfg->path : "config";
    int i = config_find_opt(key);
    char msg[1024];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    /* Where the file set it, as a loading error says. */
    if (i >= 0 && cfg->places[i].line > 0)
        set_err(err, errlen, "%s:%u:%u: %s", path, (unsigned)cfg->places[i].line,
            (unsigned)cfg->places[i].col, msg);
    else
        set_err(err, errlen, "%s: %s", path, msg);
    return -1;
}

/* A string as a YAML double-quoted scalar. */
static void
dump_quoted(FILE *out, const char *s)
{
    fputc('"', out);
    for (; *s != '\0'; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\')
            fprintf(out, "\\%c", ch);
        else if (ch < 0x20 || ch == 0x7f)
            fprintf(out, "\\x%02x", ch);
        else
            fputc(ch, out);
    }
    fputc('"', out);
}

static void
dump_value(const struct config *cfg, const struct opt *o, FILE *out)
{
    char buf[64];
    const char *s;

    switch (o->kind) {
    case K_STRING:
    case K_PATH:
        if ((s = config_get_str(cfg, o)) != NULL)
            dump_quoted(out, s);
        else
            fputc('~', out);
        break;
    case K_FORWARDED:
        if (cfg->bus.forwarded_for_host)
            fputs("host", out);
        else if (cfg->bus.forwarded_for != NULL)
            dump_quoted(out, cfg->bus.forwarded_for);
        else
            fputs("none", out);
        break;
    case K_BOOL:
        fputs(config_get_num(cfg, o) ? "true" : "false", out);
        break;
    case K_ENUM:
        s = config_enum_name(o->names, (int)config_get_num(cfg, o));
        fprintf(out, (s[0] >= '0' && s[0] <= '9') ? "\"%s\"" : "%s", s);
        break;
    case K_MODE:
        config_fmt_num(o, config_get_num(cfg, o), buf, sizeof buf);
        fprintf(out, "\"%s\"", buf);
        break;
    default:
        config_fmt_num(o, config_get_num(cfg, o), buf, sizeof buf);
        fputs(buf, out);
        break;
    }
}

void
config_dump(const struct config *cfg, FILE *out)
{
    fprintf(out, "# busgated effective configuration%s%s%s\n",
        cfg->path != NULL ? " (from " : "", cfg->path != NULL ? cfg->path : "",
        cfg->path != NULL ? ")" : "");
    for (size_t i = 0; i < config_nopts; i++) {
        const struct opt *o = &config_opts[i];
        int depth = 0;

        if (o->kind == K_ACCESS) {
            access_rules_dump(cfg->access, out);
            continue;
        }
        for (const char *p = o->key; *p != '\0'; p++)
            depth += *p == '.';
        fprintf(out, "%*s%s:", depth * 2, "", config_last_part(o->key));
        if (o->kind == K_SECTION || o->kind == K_TLS) {
            fputc('\n', out);
            continue;
        }
        fputc(' ', out);
        dump_value(cfg, o, out);
        fputc('\n', out);
    }
}
