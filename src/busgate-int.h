/*
 * Private to the busgate CLI's files: the connection to the daemon and
 * what the parts call of each other. The CLI is a user of libbusgate
 * (lib/busgate.h): the library speaks the line protocol; these files
 * parse options and print. The parts: busgate.c (connecting, events,
 * options, main), busgate-events.c (sub, notify, authorize: printing
 * what arrives), busgate-pub.c (pub and send from stdin), busgate-stats.c
 * (stats in three formats, sessions).
 */
#ifndef BUSGATE_CLI_INT_H
#define BUSGATE_CLI_INT_H

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "busgate.h"
#include "config.h"

#ifndef PACKAGE_VERSION
#define PACKAGE_VERSION "unknown"
#endif

enum {
    EXIT_DONE = 0,
    EXIT_REFUSED = 1,
    EXIT_USAGE = 2,
    EXIT_NODAEMON = 3,
};

/* The most a message may hold, from stdin whatever the daemon announces,
 * and from the daemon (bigger ones are skipped). */
#define CLI_MAX_PAYLOAD (64u << 20)
#define CLI_MAX_PACKETS (1u << 20)
#define CLI_MAX_ENTS (1u << 20)
#define CLI_READ_CHUNK 65536
#define CLI_DEFAULT_TIMEOUT 30

enum payload_form { FORM_TEXT, FORM_HEX, FORM_BASE64 };

/* How `busgate stats` prints: as STATS says it, JSON, Prometheus text. */
enum stats_format { STATS_TEXT, STATS_JSON, STATS_PROMETHEUS };

/* Command-line options; seen records which were given, for the checks. */
struct opts {
    const char *socket;
    int timeout_s;
    enum payload_form form;
    uint64_t count; /* 0: no limit */
    bool image;
    const char *content_type; /* --type (bus protocol 6), NULL: none */
    bool whole;
    bool not_required;
    const char *ents; /* comma list, checked */
    int32_t *ent_v;   /* ... as numbers */
    size_t ent_n;
    enum stats_format format;
    unsigned seen;
};

enum opt_bit {
    O_FORM = 1u << 0,
    O_COUNT = 1u << 1,
    O_IMAGE = 1u << 2,
    O_WHOLE = 1u << 3,
    O_ENTS = 1u << 4,
    O_NOTREQ = 1u << 5,
    O_FORMAT = 1u << 6,
    O_TYPE = 1u << 7,
};

/* What the greeting announced. */
struct hello {
    char version[64];
    uint64_t max_payload;
};

struct cli {
    bg_conn *bg;
    int timeout_s;    /* 0: wait for ever */
    uint64_t refused; /* daemon refusals of pipelined messages */
    struct hello hello;
    char bus[16]; /* the bus state the greeting announced */
};

/* busgate.c */
void cli_finish(int code) __attribute__((noreturn));
void
cli_fail(int code, const char *fmt, ...) __attribute__((noreturn, format(printf, 2, 3)));
void cli_note(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void cli_bg_fail(struct cli *c, int r) __attribute__((noreturn));
const struct bg_event *cli_next(struct cli *c, int timeout_ms);

/* busgate-events.c */
void cli_run_sub(struct cli *c, const struct opts *o, char **args, int nargs);
void cli_run_notify(struct cli *c, const struct opts *o, char **args, int nargs);
void cli_run_authorize(struct cli *c, const struct opts *o, char **args, int nargs);

/* busgate-stats.c */
void cli_run_stats(struct cli *c, enum stats_format format);
void cli_run_sessions(struct cli *c);

/* busgate-pub.c */
void cli_run_pub(struct cli *c, const struct opts *o, char **args, int nargs);
void cli_run_send(struct cli *c, const struct opts *o, char **args, int nargs);

#endif /* BUSGATE_CLI_INT_H */
