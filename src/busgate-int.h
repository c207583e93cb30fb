/*
 * Private to the busgate CLI's files: the connection to the daemon and
 * what the parts call of each other. The parts: busgate.c (connecting,
 * reading events, options, main), busgate-events.c (sub, notify,
 * authorize: printing what arrives), busgate-pub.c (pub and send from
 * stdin), busgate-stats.c (stats in three formats, sessions).
 */
#ifndef BUSGATE_CLI_INT_H
#define BUSGATE_CLI_INT_H

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <poll.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <openssl/evp.h>

#include "config.h"
#include "guid.h"
#include "lineproto.h"
#include "statsfmt.h"
#include "util.h"

#ifndef PACKAGE_VERSION
#define PACKAGE_VERSION "unknown"
#endif /* BUSGATE_CLI_INT_H */

enum {
    EXIT_DONE = 0,
    EXIT_REFUSED = 1,
    EXIT_USAGE = 2,
    EXIT_NODAEMON = 3,
};

/* What we accept from the daemon: far above anything its defaults let
 * through, low enough that a confused peer cannot eat the machine. */
#define CLI_MAX_LINE (16u << 20)
#define CLI_MAX_PAYLOAD (64u << 20)
#define CLI_MAX_PACKETS (1u << 20)
#define CLI_MAX_ENTS (1u << 20)
/* Queued publishes before we stop reading stdin and let the daemon catch up. */
#define CLI_OUT_HIGH_WATER (1u << 20)
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
    bool whole;
    bool not_required;
    const char *ents; /* comma list, checked */
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
};

/* What the greeting announced. */
struct hello {
    char version[64];
    uint64_t proto, max_line, max_payload, max_packets, max_name;
};

struct cli {
    int fd;
    int timeout_ms;           /* -1: wait for ever */
    struct evbuffer *in;      /* from the daemon */
    struct evbuffer *out;     /* to the daemon */
    struct evbuffer *scratch; /* output formatting */
    struct lp_event ev;       /* the current event */
    struct lp_limits lim;
    struct lp_framer framer; /* splits in into event lines and payloads */
    const uint8_t *payload;  /* DATA: the current event's payload block */
    bool eof;
    bool verbose;      /* the daemon answers every command */
    unsigned awaiting; /* replies (+OK/-ERR, PONG, END) still due */
    uint64_t refused;  /* -ERR replies and local refusals */
    struct hello hello;
    char bus[16]; /* the latest bus state */
};

/* busgate.c */
void cli_finish(int code) __attribute__((noreturn));
void
cli_fail(int code, const char *fmt, ...) __attribute__((noreturn, format(printf, 2, 3)));
void cli_note(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
int cli_next(struct cli *c, int in_fd, size_t wake_below);
int cli_common(struct cli *c, bool tell_bus);
void cli_send_names(struct cli *c, enum lp_verb verb, const char *a, const char *b);
void cli_confirm(struct cli *c, void (*on_event)(struct cli *, const struct opts *),
    const struct opts *o);
void cli_settle(struct cli *c);

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
