#include <libgen.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "audit.h"

struct audit {
    audit_warn_fn warn;
    void *arg;
    int count;
};

static void __attribute__((format(printf, 2, 3)))
finding(struct audit *a, const char *fmt, ...)
{
    char msg[768];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    a->count++;
    a->warn(a->arg, msg);
}

/* A Unix socket's "others write" bit is what lets anyone connect. */
static void
audit_socket(struct audit *a, const struct config_listen *l)
{
    char copy[PATH_MAX];
    const char *dir;
    struct stat st;

    if (l->mode & S_IWOTH)
        finding(a,
            "listen.mode %04o lets every local user connect to %s (a "
            "world-writable socket) and publish or subscribe on the bus as busgated; "
            "use 0660 with listen.group",
            (unsigned)l->mode, l->path);
    snprintf(copy, sizeof copy, "%s", l->path);
    dir = dirname(copy);
    if (stat(dir, &st) == 0 && S_ISDIR(st.st_mode) && (st.st_mode & S_IWOTH) &&
        !(st.st_mode & S_ISVTX))
        finding(a,
            "the socket directory %s (mode %04o) is world-writable without "
            "the sticky bit: any local user can remove or replace %s; use a "
            "directory of busgated's own (such as /run/busgate)",
            dir, (unsigned)(st.st_mode & 07777), l->path);
}

/* A secret file its owner can rewrite is only as safe as that owner. */
static void
audit_owner(struct audit *a, const char *key, const char *path)
{
    struct stat st;

    if (path == NULL || stat(path, &st) != 0 || st.st_uid == geteuid())
        return;
    finding(a,
        "%s %s is owned by uid %u, not by busgated's user (uid %u): that "
        "user can read or change the secret; chown it to busgated's user",
        key, path, (unsigned)st.st_uid, (unsigned)geteuid());
}

static void
audit_bus(struct audit *a, const struct config_bus *b)
{
    static const char *const secret[] = { "none", "password", "token" };

    if (b->auth != CONFIG_AUTH_NONE) {
        audit_owner(a, "bus.credentials_file", b->credentials_file);
        audit_owner(a, "bus.token_file", b->token_file);
    }
    if (!b->tls.enabled) {
        if (b->auth != CONFIG_AUTH_NONE)
            finding(a,
                "bus.tls is off with bus.auth %s: the %s crosses the network "
                "to %s in clear text; turn TLS on",
                b->auth == CONFIG_AUTH_BASIC ? "basic" : "token", secret[b->auth],
                b->host != NULL ? b->host : "the bus");
        return;
    }
    audit_owner(a, "bus.tls.key_file", b->tls.key_file);
    if (!b->tls.verify)
        finding(a,
            "bus.tls.verify is false: the bus's certificate and name are not "
            "checked, so anyone on the network path can pose as the bus%s",
            b->auth != CONFIG_AUTH_NONE ? " and receive the credentials" : "");
}

int
audit_config(const struct config *cfg, audit_warn_fn warn, void *arg)
{
    struct audit a = { .warn = warn, .arg = arg };

    /* (A world-writable configuration file is refused at load.) */
    audit_socket(&a, &cfg->listen);
    audit_bus(&a, &cfg->bus);
    return a.count;
}
