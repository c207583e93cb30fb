/*
 * The daemon's configuration: one YAML file (libyaml) into one struct
 * config, with every default in one table (config.c) and errors as
 * "file:line:col: message".
 */
#ifndef BUSGATE_CONFIG_H
#define BUSGATE_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/socket.h>
#include <sys/types.h>

#include "paths.h"
#include "tls.h"
#include "wire.h"

#define CONFIG_DEFAULT_PATH SYSCONFDIR "/busgate/busgated.yaml"

/* Durations are held in milliseconds, sizes in bytes. */

enum config_auth {
    CONFIG_AUTH_NONE,
    CONFIG_AUTH_BASIC, /* username + password from the credentials file */
    CONFIG_AUTH_TOKEN, /* a JWT from the credentials file or token_file */
};

/* How the link learns that its login worked (the distributor never says). */
enum config_confirm {
    CONFIG_CONFIRM_NONE,      /* the first message from the bus, whenever it comes */
    CONFIG_CONFIRM_PROBE,     /* a private subscription and publish echoed back */
    CONFIG_CONFIRM_HEARTBEAT, /* the first heartbeat (needs bus.heartbeat.timeout) */
};

struct config_bus {
    char *host;
    uint16_t port;     /* default 9091 */
    int protocol;      /* bus protocol 3, 4, 5 (= 4) or 6 */
    char *application; /* sent from 4 on; NULL: busgate@<host> */
    struct config_tls tls;
    enum config_auth auth;
    char *credentials_file;  /* INI, [bus] username/password/token */
    char *token_file;        /* re-read at each connect when set */
    char *impersonating;     /* NULL: none */
    char *forwarded_for;     /* NULL: none (see forwarded_for_host) */
    bool forwarded_for_host; /* default: this host's name */
    uint32_t connect_timeout_ms;
    uint32_t reconnect_min_ms;
    uint32_t reconnect_max_ms;
    uint32_t reconnect_reset_ms;   /* up this long: backoff starts over */
    uint32_t auth_fail_window_ms;  /* closed this soon after login: auth failure */
    uint32_t heartbeat_timeout_ms; /* 0: no heartbeat watchdog */
    enum config_confirm confirm;   /* default: probe */
    char *confirm_feed;            /* the probe's feed, default __busgate__ */
    uint32_t confirm_timeout_ms;   /* no echo nor traffic this long: login failed */
    uint32_t keepalive_s;          /* TCP keepalive idle seconds, 0 off */
    size_t output_high_water;      /* bytes queued to the bus before back-pressure */
    struct wire_limits limits;     /* on everything read from the bus */
};

struct config_listen {
    char *path;  /* Unix socket path */
    mode_t mode; /* default 0660 */
    char *group; /* NULL: the daemon's group */
    uint32_t max_sessions;
    uint32_t max_line;          /* bytes in one command line */
    uint32_t max_payload;       /* bytes of payload in one PUB/SEND */
    uint32_t max_packets;       /* packets in one PUB/SEND */
    uint32_t max_subscriptions; /* per session */
    uint32_t max_notifications; /* NOTIFY feeds per session */
    uint32_t max_authorizers;   /* AUTHORIZER feeds per session */
    size_t max_output;          /* bytes queued to one session: slow consumer */
    size_t max_memory;          /* all sessions' queues together */
    size_t socket_buffer;       /* SO_SNDBUF of each session's socket; 0: the kernel's */
};

struct config_router {
    size_t image_cache_bytes; /* per topic: last image + deltas kept for late joiners */
    size_t image_cache_total; /* all topics' caches together */
    uint32_t busdown_queue;   /* publishes/sends held while the bus is down; 0: refuse */
    size_t busdown_queue_bytes;
    bool allow_empty_publish;     /* let a PUB/SEND with zero packets through */
    uint32_t auth_pending;        /* authorization requests remembered, oldest dropped */
    uint32_t auth_pending_age_ms; /* ...and for at most this long (across reconnects) */
    char *image_content_types;    /* bus protocol 6: comma list of image types */
};

struct config_log {
    int level; /* syslog priority */
    int dest;  /* enum log_dest */
};

struct config_daemon {
    uint32_t shutdown_grace_ms; /* SIGTERM: time to flush before closing */
};

struct access_rules;

/* The optional HTTP endpoint (/metrics, /healthz, /readyz). */
struct config_metrics {
    char *listen;        /* NULL: off; "/path" or "host:port" (IP literal) */
    bool allow_remote;   /* a non-loopback address must be asked for */
    uint32_t timeout_ms; /* a request must arrive, and go out, within this */
};

/* Most settings the table may hold (config-int.h's arrays are of it). */
#define CONFIG_MAX_OPTS 128

/* Where a setting's value was written: line and column from 1, line 0 when
 * the file did not set it. */
struct config_place {
    uint32_t line, col;
};

struct config {
    char *path; /* the file this came from */
    /* Each setting's place (settings table order), for what is checked
     * after loading (config_check_files) to name file:line:column too. */
    struct config_place places[CONFIG_MAX_OPTS];
    struct config_bus bus;
    struct config_listen listen;
    struct config_router router;
    struct config_log log;
    struct config_daemon daemon;
    struct config_metrics metrics;
    struct access_rules *access; /* NULL: no access section, everyone may do everything */
};

/* Fill cfg with every default (the one table of defaults). */
void config_defaults(struct config *cfg);

/*
 * Load path into cfg (defaults first, then the file). Returns 0, or -1 with
 * "file:line:col: message" in err.
 */
int config_load(struct config *cfg, const char *path, char *err, size_t errlen);

/* Same, from a string (tests, fuzzing); name is used in messages. */
int config_load_string(struct config *cfg, const char *name, const char *yaml, size_t len,
    char *err, size_t errlen);

/*
 * Check what loading cannot: referenced files exist and are readable, the
 * credentials file has safe permissions. Returns 0 or -1 with err.
 */
int config_check_files(const struct config *cfg, char *err, size_t errlen);

/* A problem with setting key found after loading: "file:line:col: message"
 * in err when the file set it, else "file: message". Returns -1. */
int config_err_for(const struct config *cfg, const char *key, char *err, size_t errlen,
    const char *fmt, ...) __attribute__((format(printf, 5, 6)));

/* Write the effective configuration as YAML, secrets masked. */
void config_dump(const struct config *cfg, FILE *out);

void config_free(struct config *cfg);

/* Parse "64KiB", "16MiB", "1024" / "500ms", "30s", "5m" (used by config.c,
 * exposed for tests). Return 0 or -1. */
int config_parse_size(const char *s, uint64_t *out);
int config_parse_duration_ms(const char *s, uint64_t *out);

/* metrics.listen as an address: a Unix socket path (absolute) or an IPv4
 * "a.b.c.d:port" / IPv6 "[addr]:port" literal. Returns 0 and fills ss/len
 * (and loopback), or -1 with why. */
int config_metrics_address(const char *s, struct sockaddr_storage *ss, socklen_t *len,
    bool *loopback, const char **why);

#endif /* BUSGATE_CONFIG_H */
