/*
 * busgate: the command-line client of busgated. Subscribe and print,
 * publish or send from stdin, watch notifications, answer authorization
 * requests, show STATS, ping. It speaks the line protocol through
 * lineproto, the code the daemon itself uses, over plain poll() I/O: a
 * CLI needs no event loop. Everything read from the daemon is bounded.
 *
 * Exit status: 0 done, 1 refused (an -ERR, or input past the announced
 * limits), 2 usage, 3 no daemon (cannot connect, connection lost or
 * closed by the daemon, timed out, I/O error).
 */
#include "busgate-int.h"

static struct cli cli; /* one per process; reachable for LSan at exit */

static void usage(FILE *out);

/* One poll round: send what is queued, read what came. Polls in_fd too
 * when it is >= 0. Returns PUMP_* bits, 0 on timeout. */
enum { PUMP_SOCKET = 1, PUMP_INPUT = 2 };

static void
cli_free(struct cli *c)
{
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    if (c->in != NULL)
        evbuffer_free(c->in);
    if (c->out != NULL)
        evbuffer_free(c->out);
    if (c->scratch != NULL)
        evbuffer_free(c->scratch);
    c->in = c->out = c->scratch = NULL;
    lp_event_free(&c->ev);
}

void __attribute__((noreturn)) cli_finish(int code)
{
    if (fflush(stdout) != 0 && code == EXIT_DONE) {
        fprintf(stderr, "busgate: writing output: %s\n", strerror(errno));
        code = EXIT_NODAEMON;
    }
    cli_free(&cli);
    exit(code);
}

void __attribute__((noreturn, format(printf, 2, 3)))
cli_fail(int code, const char *fmt, ...)
{
    va_list ap;

    fflush(stdout);
    fputs("busgate: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    cli_finish(code);
}

static void __attribute__((noreturn, format(printf, 1, 2)))
usage_error(const char *fmt, ...)
{
    va_list ap;

    fputs("busgate: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputs("\nTry 'busgate --help'.\n", stderr);
    cli_finish(EXIT_USAGE);
}

void
cli_note(const char *fmt, ...)
{
    va_list ap;

    fflush(stdout);
    fputs("busgate: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

static void
cli_connect(struct cli *c, const char *path)
{
    struct sockaddr_un sun;

    memset(&sun, 0, sizeof sun);
    sun.sun_family = AF_UNIX;
    if (strlen(path) >= sizeof sun.sun_path)
        usage_error("socket path too long: %s", path);
    memcpy(sun.sun_path, path, strlen(path));
    c->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (c->fd < 0)
        cli_fail(EXIT_NODAEMON, "socket: %s", strerror(errno));
    /* A Unix stream connect completes at once or fails (EAGAIN: the
     * backlog is full; say so rather than wait). */
    if (connect(c->fd, (struct sockaddr *)&sun, sizeof sun) != 0)
        cli_fail(EXIT_NODAEMON, "cannot connect to %s: %s", path, strerror(errno));
}

/* Send what we can without blocking. MSG_NOSIGNAL: a daemon that went
 * away is an error to report, while SIGPIPE stays the default for stdout
 * (so "busgate sub ... | head" ends quietly). */
static int
cli_write(struct cli *c)
{
    struct evbuffer_iovec v[16];
    struct iovec iov[16];
    struct msghdr mh;
    int n = evbuffer_peek(c->out, -1, NULL, v, 16);
    ssize_t k;

    if (n > 16)
        n = 16;
    memset(&mh, 0, sizeof mh);
    for (int i = 0; i < n; i++) {
        iov[i].iov_base = v[i].iov_base;
        iov[i].iov_len = v[i].iov_len;
    }
    mh.msg_iov = iov;
    mh.msg_iovlen = (size_t)n;
    k = sendmsg(c->fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (k < 0)
        return errno == EAGAIN || errno == EINTR ? 0 : -1;
    evbuffer_drain(c->out, (size_t)k);
    return 0;
}

static int
cli_pump(struct cli *c, int in_fd, int timeout_ms)
{
    struct pollfd pfd[2];
    nfds_t n = 1;
    int r, got = 0;

    if (fflush(stdout) != 0)
        cli_fail(EXIT_NODAEMON, "writing output: %s", strerror(errno));
    pfd[0].fd = c->fd;
    pfd[0].events = POLLIN | (evbuffer_get_length(c->out) > 0 ? POLLOUT : 0);
    if (in_fd >= 0) {
        pfd[1].fd = in_fd;
        pfd[1].events = POLLIN;
        n = 2;
    }
    do
        r = poll(pfd, n, timeout_ms);
    while (r < 0 && errno == EINTR);
    if (r < 0)
        cli_fail(EXIT_NODAEMON, "poll: %s", strerror(errno));
    if (r == 0)
        return 0;
    if (pfd[0].revents & POLLOUT) {
        if (cli_write(c) < 0)
            c->eof = true; /* EPIPE and friends: read what is left, then stop */
        got |= PUMP_SOCKET;
    }
    if (pfd[0].revents & (POLLIN | POLLHUP | POLLERR)) {
        int k = evbuffer_read(c->in, c->fd, CLI_READ_CHUNK);

        if (k == 0 || (k < 0 && errno != EAGAIN && errno != EINTR))
            c->eof = true;
        got |= PUMP_SOCKET;
    }
    if (n == 2 && (pfd[1].revents & (POLLIN | POLLHUP | POLLERR)))
        got |= PUMP_INPUT;
    return got;
}

/* The daemon said something we cannot follow: stop, showing a bit of it. */
static void __attribute__((noreturn)) cli_garbled(const char *line, size_t len)
{
    char shown[81];
    size_t n = len < 80 ? len : 80;

    for (size_t i = 0; i < n; i++)
        shown[i] = line[i] >= 0x20 && line[i] < 0x7f ? line[i] : '?';
    shown[n] = '\0';
    cli_fail(EXIT_NODAEMON, "unexpected line from busgated: %s%s", shown,
        len > n ? "..." : "");
}

/* An event line: 1 when it is a whole event, 0 when a payload follows (to
 * read, or to skip when past our limits). */
static int
cli_event_line(struct cli *c, const char *line, size_t len)
{
    if (lp_parse_event(line, len, &c->lim, &c->ev) != 0) {
        if (c->ev.kind != LP_EV_DATA || c->ev.n_packets == 0)
            cli_garbled(line, len);
        cli_note("skipping a DATA event past our limits (%" PRIu64 " bytes in %u packets)",
            c->ev.payload_len, c->ev.n_packets);
        lp_framer_payload(&c->framer, c->ev.payload_len, false);
        return 0;
    }
    if (c->ev.kind != LP_EV_DATA || c->ev.n_packets == 0)
        return 1;
    lp_framer_payload(&c->framer, c->ev.payload_len, true);
    return 0;
}

/*
 * Parse the next complete event in c->in into c->ev (DATA: its payload at
 * c->payload, valid until the next call). Returns 1 with an event, 0 when
 * more bytes are needed.
 */
static int
cli_take(struct cli *c)
{
    struct lp_frame fr;

    c->payload = NULL;
    for (;;) {
        switch (lp_framer_next(&c->framer, c->in, &fr)) {
        case LP_FRAME_MORE:
            return 0;
        case LP_FRAME_LINE:
            if (cli_event_line(c, fr.data, fr.len))
                return 1;
            break;
        case LP_FRAME_PAYLOAD:
            c->payload = fr.data;
            return 1;
        case LP_FRAME_LINE_TOO_LONG:
            cli_fail(EXIT_NODAEMON, "a line from busgated is longer than %u bytes",
                CLI_MAX_LINE);
        case LP_FRAME_BAD_TERMINATOR:
            cli_fail(EXIT_NODAEMON,
                "a DATA payload from busgated is not followed by a newline");
        }
    }
}

/*
 * Wait for the next event (returns 1), or return 0 when in_fd (if >= 0)
 * becomes readable or the queue to the daemon drains below wake_below.
 * While replies are due and nothing else is watched, the wait is bounded
 * by the timeout.
 */
int
cli_next(struct cli *c, int in_fd, size_t wake_below)
{
    for (;;) {
        int timeout, got;

        if (cli_take(c) > 0)
            return 1;
        if (c->eof)
            cli_fail(EXIT_NODAEMON, "connection to busgated lost");
        timeout = in_fd < 0 && (c->awaiting > 0 || evbuffer_get_length(c->out) > 0)
            ? c->timeout_ms
            : -1;
        got = cli_pump(c, in_fd, timeout);
        if (got == 0)
            cli_fail(EXIT_NODAEMON, "no answer from busgated for %d s",
                c->timeout_ms / 1000);
        if ((got & PUMP_INPUT) || evbuffer_get_length(c->out) < wake_below)
            return 0;
    }
}

static bool
err_closes(const char *rest)
{
    static const enum lp_error closing[] = {
        LP_ERR_SLOW_CONSUMER,
        LP_ERR_SHUTTING_DOWN,
        LP_ERR_TOO_MANY_SESSIONS,
    };

    for (size_t i = 0; i < sizeof closing / sizeof closing[0]; i++) {
        const char *code = lp_error_code(closing[i]);
        size_t n = strlen(code);

        if (strncmp(rest, code, n) == 0 && (rest[n] == '\0' || rest[n] == ' '))
            return true;
    }
    return false;
}

/* The first word of BUS's text: up, unconfirmed, down. */
static void
note_bus(struct cli *c, bool tell)
{
    size_t n = strcspn(c->ev.rest, " ");

    snprintf(c->bus, sizeof c->bus, "%.*s", (int)n, c->ev.rest);
    if (tell)
        cli_note("bus %s", c->ev.rest);
}

/*
 * Handle +OK, -ERR and BUS. Returns 1 for +OK, -1 for -ERR (printed), 0
 * for anything else (left to the caller). An -ERR that closes the session
 * ends the program: the daemon is going away.
 */
int
cli_common(struct cli *c, bool tell_bus)
{
    switch (c->ev.kind) {
    case LP_EV_OK:
        if (c->verbose && c->awaiting > 0)
            c->awaiting--;
        return 1;
    case LP_EV_ERR:
        cli_note("%s", c->ev.rest);
        if (err_closes(c->ev.rest))
            cli_finish(EXIT_NODAEMON);
        if (c->verbose && c->awaiting > 0)
            c->awaiting--;
        c->refused++;
        return -1;
    case LP_EV_BUS:
        note_bus(c, tell_bus);
        return 0;
    case LP_EV_REVOKED:
        cli_note("revoked %s", c->ev.rest);
        return 0;
    case LP_EV_HELLO:
        cli_fail(EXIT_NODAEMON, "a second greeting from busgated");
    default:
        return 0;
    }
}

/* "key=N" from the greeting. */
static void
hello_number(const char *text, const char *key, uint64_t *out)
{
    size_t n = strlen(key);

    for (const char *p = text; (p = strstr(p, key)) != NULL; p += n) {
        if ((p == text || p[-1] == ' ') && p[n] == '=') {
            *out = strtoull(p + n + 1, NULL, 10);
            return;
        }
    }
}

/* Read the greeting: check the protocol, learn the limits. */
static void
cli_hello(struct cli *c)
{
    const char *bus;

    c->awaiting = 1;
    cli_next(c, -1, 0);
    c->awaiting = 0;
    if (c->ev.kind == LP_EV_ERR) {
        cli_note("%s", c->ev.rest);
        cli_finish(err_closes(c->ev.rest) ? EXIT_NODAEMON : EXIT_REFUSED);
    }
    if (c->ev.kind != LP_EV_HELLO || strncmp(c->ev.rest, "busgate ", 8) != 0)
        cli_fail(EXIT_NODAEMON, "this is not busgated speaking");
    sscanf(c->ev.rest + 8, "%63s", c->hello.version);
    hello_number(c->ev.rest, "proto", &c->hello.proto);
    if (c->hello.proto != LP_PROTOCOL_VERSION)
        cli_fail(EXIT_NODAEMON,
            "busgated speaks line protocol %" PRIu64 ", this busgate %d", c->hello.proto,
            LP_PROTOCOL_VERSION);
    hello_number(c->ev.rest, "max_line", &c->hello.max_line);
    hello_number(c->ev.rest, "max_payload", &c->hello.max_payload);
    if (c->hello.max_payload == 0 || c->hello.max_payload > CLI_MAX_PAYLOAD)
        c->hello.max_payload = CLI_MAX_PAYLOAD;
    hello_number(c->ev.rest, "max_packets", &c->hello.max_packets);
    hello_number(c->ev.rest, "max_name", &c->hello.max_name);
    if (c->hello.max_name > 0 && c->hello.max_name < UINT32_MAX)
        c->lim.max_name = (uint32_t)c->hello.max_name;
    if ((bus = strstr(c->ev.rest, " bus=")) != NULL)
        snprintf(c->bus, sizeof c->bus, "%.*s", (int)strcspn(bus + 5, " "), bus + 5);
}

static void
cli_open(struct cli *c, const struct opts *o)
{
    c->fd = -1;
    c->timeout_ms = o->timeout_s > 0 ? o->timeout_s * 1000 : -1;
    c->in = evbuffer_new();
    c->out = evbuffer_new();
    c->scratch = evbuffer_new();
    if (c->in == NULL || c->out == NULL || c->scratch == NULL)
        cli_fail(EXIT_NODAEMON, "out of memory");
    lp_event_init(&c->ev);
    lp_framer_init(&c->framer, CLI_MAX_LINE);
    c->lim.max_name = UINT32_MAX;
    c->lim.max_payload = CLI_MAX_PAYLOAD;
    c->lim.max_packets = CLI_MAX_PACKETS;
    c->lim.max_entitlements = CLI_MAX_ENTS;
    c->verbose = true;
    snprintf(c->bus, sizeof c->bus, "unknown");
    cli_connect(c, o->socket);
    cli_hello(c);
}

/* Queue "VERB name [name]" and count its reply. */
void
cli_send_names(struct cli *c, enum lp_verb verb, const char *a, const char *b)
{
    if (lp_format_cmd_names(c->out, verb, a, strlen(a), b, b != NULL ? strlen(b) : 0) < 0)
        cli_fail(EXIT_NODAEMON, "out of memory");
    c->awaiting++;
}

/* Wait for the replies to the commands just queued; any -ERR ends the
 * program (exit 1). Events arriving meanwhile go to on_event. */
void
cli_confirm(struct cli *c, void (*on_event)(struct cli *, const struct opts *),
    const struct opts *o)
{
    while (c->awaiting > 0) {
        cli_next(c, -1, 0);
        if (cli_common(c, true) < 0)
            cli_finish(EXIT_REFUSED);
        if (on_event != NULL)
            on_event(c, o);
    }
}

/* Before leaving: everything queued is sent and every reply is in. */
void
cli_settle(struct cli *c)
{
    while (c->awaiting > 0 || evbuffer_get_length(c->out) > 0)
        if (cli_next(c, -1, 1) > 0)
            cli_common(c, false);
}

static double
now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static void
run_ping(struct cli *c)
{
    double t0 = now_ms();

    if (lp_format_cmd(c->out, LP_PING, "busgate") < 0)
        cli_fail(EXIT_NODAEMON, "out of memory");
    c->awaiting = 1;
    for (;;) {
        cli_next(c, -1, 0);
        if (c->ev.kind == LP_EV_PONG) {
            printf("PONG from busgated %s in %.3f ms, bus %s\n", c->hello.version,
                now_ms() - t0, c->bus);
            cli_finish(EXIT_DONE);
        }
        if (cli_common(c, false) < 0)
            cli_finish(EXIT_REFUSED);
    }
}

/* An entitlement list must be what the daemon accepts: ask the parser
 * itself, on a stand-in AUTHORIZE line. */
static void
check_ents(const char *ents)
{
    static const char head[] =
        "AUTHORIZE 00000000-0000-0000-0000-000000000000 F T required ";
    static const struct lp_limits lim = { 4096, 1, 1, CLI_MAX_ENTS, 0 };
    size_t n = strlen(ents);
    struct lp_cmd cmd;
    enum lp_error e;
    char msg[256], *line;
    int r = -1;

    if (n > 0 && n <= 16 * CLI_MAX_ENTS && strcspn(ents, " \t") == n &&
        (line = malloc(sizeof head + n)) != NULL) {
        memcpy(line, head, sizeof head - 1);
        memcpy(line + sizeof head - 1, ents, n + 1);
        lp_cmd_init(&cmd);
        r = lp_parse_command(line, sizeof head - 1 + n, &lim, &cmd, &e, msg, sizeof msg);
        lp_cmd_free(&cmd);
        free(line);
    }
    if (r != 0)
        usage_error(
            "bad entitlement list '%s' (want integers separated by commas, like 1,2,3)",
            ents);
}

static uint64_t
number_arg(const char *name, const char *s, uint64_t max)
{
    char *end;
    unsigned long long v;

    errno = 0;
    v = strtoull(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || s[0] == '-' || v > max)
        usage_error("%s wants a number up to %" PRIu64 ", not '%s'", name, max, s);
    return v;
}

static enum stats_format
format_arg(const char *s)
{
    if (strcmp(s, "text") == 0)
        return STATS_TEXT;
    if (strcmp(s, "json") == 0)
        return STATS_JSON;
    if (strcmp(s, "prometheus") == 0)
        return STATS_PROMETHEUS;
    usage_error("--format wants text, json or prometheus, not '%s'", s);
    return STATS_TEXT;
}

static void
usage(FILE *out)
{
    fprintf(out,
        "usage: busgate [--socket PATH] [--timeout SECONDS] COMMAND [ARGS]\n"
        "  sub FEED TOPIC [TOPIC...] [--hex|--base64] [--count N]\n"
        "        print data, a line per packet: FEED TOPIC USER HOST image|delta ENTS PAYLOAD\n"
        "  pub FEED TOPIC [--image] [--entitlements LIST] [--whole]\n"
        "        publish stdin, a message per line (--whole: all of it as one)\n"
        "  send CLIENT-ID FEED TOPIC [--image] [--entitlements LIST] [--whole]\n"
        "        send stdin to one client, like pub\n"
        "  notify FEED [--count N]\n"
        "        print subscriptions coming and going on FEED\n"
        "  authorize FEED [--entitlements LIST | --not-required] [--count N]\n"
        "        answer FEED's authorization requests, printing each\n"
        "  stats [--format text|json|prometheus]\n"
        "        print busgated's counters and limits (prometheus: for node_exporter's\n"
        "        textfile collector)\n"
        "  sessions  print the local sessions, the most queued first\n"
        "  ping    check that busgated answers\n"
        "options:\n"
        "  -s, --socket PATH      busgated's socket (default $BUSGATE_SOCKET or %s)\n"
        "  -T, --timeout SECONDS  wait this long for an answer (default %d, 0: for ever)\n"
        "  -V, --version          print the version\n"
        "  -h, --help             this text\n"
        "exit status: 0 done, 1 refused, 2 usage, 3 no daemon or connection lost\n",
        CONFIG_DEFAULT_SOCKET, CLI_DEFAULT_TIMEOUT);
}

static void
run_stats_cmd(struct cli *c, const struct opts *o, char **args, int nargs)
{
    cli_run_stats(c, o->format);
}

static void
run_sessions_cmd(struct cli *c, const struct opts *o, char **args, int nargs)
{
    cli_run_sessions(c);
}

static void
run_ping_cmd(struct cli *c, const struct opts *o, char **args, int nargs)
{
    run_ping(c);
}

struct command {
    const char *name;
    int min_args, max_args; /* max -1: no limit */
    unsigned allowed;       /* enum opt_bit set */
    void (*run)(struct cli *, const struct opts *, char **, int);
};

static const struct command commands[] = {
    { "sub", 2, -1, O_FORM | O_COUNT, cli_run_sub },
    { "pub", 2, 2, O_IMAGE | O_ENTS | O_WHOLE, cli_run_pub },
    { "send", 3, 3, O_IMAGE | O_ENTS | O_WHOLE, cli_run_send },
    { "notify", 1, 1, O_COUNT, cli_run_notify },
    { "authorize", 1, 1, O_ENTS | O_NOTREQ | O_COUNT, cli_run_authorize },
    { "stats", 0, 0, O_FORMAT, run_stats_cmd },
    { "sessions", 0, 0, 0, run_sessions_cmd },
    { "ping", 0, 0, 0, run_ping_cmd },
};

static void
parse_options(int argc, char **argv, struct opts *o)
{
    enum { OPT_HEX = 256, OPT_BASE64, OPT_NOTREQ, OPT_FORMAT };
    static const struct option longopts[] = {
        { "socket", required_argument, NULL, 's' },
        { "timeout", required_argument, NULL, 'T' },
        { "hex", no_argument, NULL, OPT_HEX },
        { "base64", no_argument, NULL, OPT_BASE64 },
        { "count", required_argument, NULL, 'n' },
        { "image", no_argument, NULL, 'i' },
        { "entitlements", required_argument, NULL, 'e' },
        { "whole", no_argument, NULL, 'w' },
        { "not-required", no_argument, NULL, OPT_NOTREQ },
        { "format", required_argument, NULL, OPT_FORMAT },
        { "version", no_argument, NULL, 'V' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    int ch;

    while ((ch = getopt_long(argc, argv, "s:T:n:ie:wVh", longopts, NULL)) != -1) {
        switch (ch) {
        case 's':
            o->socket = optarg;
            break;
        case 'T':
            o->timeout_s = (int)number_arg("--timeout", optarg, 86400);
            break;
        case OPT_HEX:
        case OPT_BASE64:
            if ((o->seen & O_FORM) != 0)
                usage_error("--hex and --base64 exclude each other");
            o->form = ch == OPT_HEX ? FORM_HEX : FORM_BASE64;
            o->seen |= O_FORM;
            break;
        case 'n':
            o->count = number_arg("--count", optarg, UINT64_MAX);
            o->seen |= O_COUNT;
            break;
        case 'i':
            o->image = true;
            o->seen |= O_IMAGE;
            break;
        case 'e':
            check_ents(optarg);
            o->ents = optarg;
            o->seen |= O_ENTS;
            break;
        case 'w':
            o->whole = true;
            o->seen |= O_WHOLE;
            break;
        case OPT_NOTREQ:
            o->not_required = true;
            o->seen |= O_NOTREQ;
            break;
        case OPT_FORMAT:
            o->format = format_arg(optarg);
            o->seen |= O_FORMAT;
            break;
        case 'V':
            printf("busgate %s (line protocol %d)\n", PACKAGE_VERSION, LP_PROTOCOL_VERSION);
            cli_finish(EXIT_DONE);
        case 'h':
            usage(stdout);
            cli_finish(EXIT_DONE);
        default:
            fputs("Try 'busgate --help'.\n", stderr);
            cli_finish(EXIT_USAGE);
        }
    }
}

/* Everything that can be checked before connecting. */
static const struct command *
check_command(int argc, char **argv, const struct opts *o)
{
    const struct command *cmd = NULL;
    int nargs = argc - optind - 1;
    uint8_t id[GUID_WIRE_LEN];

    if (optind >= argc)
        usage_error("no command given");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (strcmp(argv[optind], commands[i].name) == 0)
            cmd = &commands[i];
    if (cmd == NULL)
        usage_error("unknown command '%s'", argv[optind]);
    if (nargs < cmd->min_args || (cmd->max_args >= 0 && nargs > cmd->max_args))
        usage_error("wrong number of arguments for '%s'", cmd->name);
    if ((o->seen & ~cmd->allowed) != 0)
        usage_error("an option given does not apply to '%s'", cmd->name);
    if (o->not_required && o->ents != NULL)
        usage_error("--not-required and --entitlements exclude each other");
    if (strcmp(cmd->name, "send") == 0 &&
        guid_from_text(argv[optind + 1], strlen(argv[optind + 1]), id) != 0)
        usage_error("'%s' is not a client id (like 00112233-4455-6677-8899-aabbccddeeff)",
            argv[optind + 1]);
    return cmd;
}

int
main(int argc, char **argv)
{
    struct opts o = { .timeout_s = CLI_DEFAULT_TIMEOUT };
    const struct command *cmd;
    static char outbuf[1 << 16];

    cli.fd = -1;
    parse_options(argc, argv, &o);
    if (o.socket == NULL && (o.socket = getenv("BUSGATE_SOCKET")) == NULL)
        o.socket = CONFIG_DEFAULT_SOCKET;
    cmd = check_command(argc, argv, &o);
    /* Output is flushed whenever we are about to wait, so a pipe sees
     * each event promptly without a write per line. */
    setvbuf(stdout, outbuf, _IOFBF, sizeof outbuf);
    cli_open(&cli, &o);
    cmd->run(&cli, &o, argv + optind + 1, argc - optind - 1);
    cli_finish(EXIT_DONE);
}
