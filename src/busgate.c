/*
 * busgate: the command-line client of busgated. Subscribe and print,
 * publish or send from stdin, watch notifications, answer authorization
 * requests, show STATS, ping. It is a user of libbusgate, which speaks
 * the line protocol with the daemon's own lineproto code; this program
 * parses options and prints. Everything read from the daemon is bounded
 * (the library's line bound, and bg_set_limits for DATA).
 *
 * Exit status: 0 done, 1 refused (an -ERR, or input past the announced
 * limits), 2 usage, 3 no daemon (cannot connect, connection lost or
 * closed by the daemon, timed out, I/O error).
 */
#include <fcntl.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "busgate-int.h"
#include "guid.h"
#include "lineproto.h"

static struct cli cli; /* one per process; reachable for LSan at exit */

static void usage(FILE *out);

void __attribute__((noreturn)) cli_finish(int code)
{
    if (fflush(stdout) != 0 && code == EXIT_DONE) {
        fprintf(stderr, "busgate: writing output: %s\n", strerror(errno));
        code = EXIT_NODAEMON;
    }
    bg_free(cli.bg);
    cli.bg = NULL;
    exit(code);
}

/* "busgate: <message>" on stderr, after what stdout holds so far. */
static void
vnote(const char *fmt, va_list ap)
{
    fflush(stdout);
    fputs("busgate: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
}

void
cli_note(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vnote(fmt, ap);
    va_end(ap);
}

void __attribute__((noreturn, format(printf, 2, 3)))
cli_fail(int code, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vnote(fmt, ap);
    va_end(ap);
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

/* A daemon refusal of this command (exit 1), not one that ends the session. */
static bool
is_refusal(int code)
{
    return code >= BG_E_UNKNOWN_COMMAND && code != BG_E_SLOW_CONSUMER &&
        code != BG_E_SHUTTING_DOWN && code != BG_E_TOO_MANY_SESSIONS;
}

/* A library call failed with r: say why and leave. */
void __attribute__((noreturn)) cli_bg_fail(struct cli *c, int r)
{
    if (r == -BG_E_TIMEOUT)
        cli_fail(EXIT_NODAEMON, "no answer from busgated for %d s", c->timeout_s);
    cli_fail(is_refusal(-r) ? EXIT_REFUSED : EXIT_NODAEMON, "%s", bg_errstr(c->bg));
}

/* The events every command handles alike; false for the caller's own. */
static bool
common_event(struct cli *c, const struct bg_event *ev)
{
    switch (ev->kind) {
    case BG_EV_BUS:
        cli_note("bus %s%s%s", ev->state, ev->text[0] ? " " : "", ev->text);
        return true;
    case BG_EV_REVOKED:
        cli_note("revoked %s", ev->text);
        return true;
    case BG_EV_SKIPPED:
        cli_note("skipping a DATA event past our limits (%s)", ev->text);
        return true;
    case BG_EV_LINK: /* reconnecting is off: the end */
        cli_fail(EXIT_NODAEMON, "connection to busgated lost: %s", ev->text);
    case BG_EV_REPLY: /* pipelined: a message refused */
        cli_note("%s %s", bg_error_name(ev->error), ev->text);
        c->refused++;
        return true;
    default:
        return false;
    }
}

/*
 * The next event for the command, waiting at most timeout_ms (-1: for
 * ever); NULL when none came in time. Output is flushed only before
 * waiting, so a pipe sees each event promptly without a write per line.
 */
const struct bg_event *
cli_next(struct cli *c, int timeout_ms)
{
    const struct bg_event *ev;
    int r;

    for (;;) {
        if ((r = bg_next_event(c->bg, 0, &ev)) == -BG_E_TIMEOUT && timeout_ms != 0) {
            if (fflush(stdout) != 0)
                cli_fail(EXIT_NODAEMON, "writing output: %s", strerror(errno));
            r = bg_next_event(c->bg, timeout_ms, &ev);
        }
        if (r == -BG_E_TIMEOUT)
            return NULL;
        if (r < 0)
            cli_bg_fail(c, r);
        if (!common_event(c, ev))
            return ev;
    }
}

/* "key=N" from the greeting. */
static uint64_t
hello_number(const char *text, const char *key)
{
    size_t n = strlen(key);

    for (const char *p = text; (p = strstr(p, key)) != NULL; p += n)
        if ((p == text || p[-1] == ' ') && p[n] == '=')
            return strtoull(p + n + 1, NULL, 10);
    return 0;
}

/* Connect without reconnecting (the daemon closing ends the program),
 * with the timeout of --timeout from the greeting on. */
static void
cli_open(struct cli *c, const struct opts *o)
{
    const char *hello, *bus;
    int r;

    c->timeout_s = o->timeout_s;
    if ((c->bg = bg_new(o->socket)) == NULL)
        cli_fail(EXIT_NODAEMON, "out of memory");
    bg_set_timeout(c->bg, o->timeout_s > 0 ? o->timeout_s * 1000 : -1);
    bg_set_reconnect(c->bg, 0, 0);
    bg_set_limits(c->bg, CLI_MAX_PAYLOAD, CLI_MAX_PACKETS);
    if ((r = bg_open(c->bg)) < 0)
        cli_bg_fail(c, r);
    hello = bg_hello(c->bg);
    sscanf(hello + 8, "%63s", c->hello.version); /* after "busgate " */
    c->hello.max_payload = hello_number(hello, "max_payload");
    if (c->hello.max_payload == 0 || c->hello.max_payload > CLI_MAX_PAYLOAD)
        c->hello.max_payload = CLI_MAX_PAYLOAD;
    bus = strstr(hello, " bus=");
    snprintf(c->bus, sizeof c->bus, "%.*s", bus != NULL ? (int)strcspn(bus + 5, " ") : 7,
        bus != NULL ? bus + 5 : "unknown");
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
    int r;

    if ((r = bg_ping(c->bg)) < 0)
        cli_bg_fail(c, r);
    printf("PONG from busgated %s in %.3f ms, bus %s\n", c->hello.version, now_ms() - t0,
        c->bus);
    cli_finish(EXIT_DONE);
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

/* The checked list as numbers, for the library. */
static void
ents_numbers(struct opts *o)
{
    const char *p = o->ents;

    free(o->ent_v);
    o->ent_n = 1;
    for (const char *q = p; *q != '\0'; q++)
        o->ent_n += *q == ',';
    if ((o->ent_v = malloc(o->ent_n * sizeof *o->ent_v)) == NULL)
        cli_fail(EXIT_NODAEMON, "out of memory");
    for (size_t i = 0; i < o->ent_n; i++, p++)
        o->ent_v[i] = (int32_t)strtol(p, (char **)&p, 10);
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
        "        print data, a line per packet:\n"
        "        FEED TOPIC USER HOST image|delta [type=CT] ENTS PAYLOAD\n"
        "  pub FEED TOPIC [--image | --type CONTENT-TYPE] [--entitlements LIST] [--whole]\n"
        "        publish stdin, a message per line (--whole: all of it as one)\n"
        "  send CLIENT-ID FEED TOPIC [--image | --type CONTENT-TYPE] [--entitlements LIST]\n"
        "        [--whole]\n"
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
        DEFAULT_SOCKET, CLI_DEFAULT_TIMEOUT);
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
    { "pub", 2, 2, O_IMAGE | O_TYPE | O_ENTS | O_WHOLE, cli_run_pub },
    { "send", 3, 3, O_IMAGE | O_TYPE | O_ENTS | O_WHOLE, cli_run_send },
    { "notify", 1, 1, O_COUNT, cli_run_notify },
    { "authorize", 1, 1, O_ENTS | O_NOTREQ | O_COUNT, cli_run_authorize },
    { "stats", 0, 0, O_FORMAT, run_stats_cmd },
    { "sessions", 0, 0, 0, run_sessions_cmd },
    { "ping", 0, 0, 0, run_ping_cmd },
};

/*
 * getopt's own messages start with argv[0] (a path, as run); ours start
 * with "busgate:" like every other message. Which option failed: a long
 * one is argv[optind - 1] (getopt has passed it), a short one optopt
 * (inside a cluster like -xi optind has not moved on).
 */
static void __attribute__((noreturn)) getopt_error(int ch, char **argv)
{
    const char *arg = argv[optind - 1];
    int len = (int)strcspn(arg, "=");
    bool is_long = strncmp(arg, "--", 2) == 0;

    if (ch == ':' && is_long)
        usage_error("option '%.*s' needs an argument", len, arg);
    if (ch == ':')
        usage_error("option '-%c' needs an argument", optopt);
    if (optopt == 0) /* an unknown or ambiguous long option */
        usage_error("unknown or ambiguous option '%.*s'", len, arg);
    /* A long option without argument given one: optopt is its value, a
     * long-only code or the letter of a valid short one (-i -w -V -h, the
     * no_argument ones of longopts), which cannot be an unknown letter. */
    if (optopt >= 256 || strchr("iwVh", optopt) != NULL)
        usage_error("option '%.*s' takes no argument", len, arg);
    usage_error("unknown option '-%c'", optopt);
}

static void
parse_options(int argc, char **argv, struct opts *o)
{
    enum { OPT_HEX = 256, OPT_BASE64, OPT_NOTREQ, OPT_FORMAT, OPT_TYPE };
    static const struct option longopts[] = {
        { "socket", required_argument, NULL, 's' },
        { "timeout", required_argument, NULL, 'T' },
        { "hex", no_argument, NULL, OPT_HEX },
        { "base64", no_argument, NULL, OPT_BASE64 },
        { "count", required_argument, NULL, 'n' },
        { "image", no_argument, NULL, 'i' },
        { "type", required_argument, NULL, OPT_TYPE },
        { "entitlements", required_argument, NULL, 'e' },
        { "whole", no_argument, NULL, 'w' },
        { "not-required", no_argument, NULL, OPT_NOTREQ },
        { "format", required_argument, NULL, OPT_FORMAT },
        { "version", no_argument, NULL, 'V' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    int ch;

    opterr = 0; /* getopt_error says it */
    while ((ch = getopt_long(argc, argv, ":s:T:n:ie:wVh", longopts, NULL)) != -1) {
        switch (ch) {
        case 's':
            /* Not "the default": an empty path is a mistake (a variable
             * left unset); connecting to it could only fail. */
            if (*optarg == '\0')
                usage_error("--socket wants a path, not ''");
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
            /* 0 would mean "no limit" (the default) to count_event: a
             * script computing --count 0 would wait for ever. */
            if ((o->count = number_arg("--count", optarg, UINT64_MAX)) == 0)
                usage_error("--count must be at least 1");
            o->seen |= O_COUNT;
            break;
        case 'i':
            o->image = true;
            o->seen |= O_IMAGE;
            break;
        case OPT_TYPE:
            o->content_type = optarg;
            o->seen |= O_TYPE;
            break;
        case 'e':
            check_ents(optarg);
            o->ents = optarg;
            ents_numbers(o);
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
        default: /* '?' or ':' */
            getopt_error(ch, argv);
        }
    }
}

/* One option of set (enum opt_bit), named for a message. */
static const char *
option_name(unsigned set, const struct opts *o)
{
    static const struct {
        unsigned bit;
        const char *name;
    } names[] = {
        { O_COUNT, "--count" },
        { O_IMAGE, "--image" },
        { O_WHOLE, "--whole" },
        { O_ENTS, "--entitlements" },
        { O_NOTREQ, "--not-required" },
        { O_FORMAT, "--format" },
        { O_TYPE, "--type" },
    };

    if ((set & O_FORM) != 0)
        return o->form == FORM_HEX ? "--hex" : "--base64";
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if ((set & names[i].bit) != 0)
            return names[i].name;
    return "an option given";
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
        usage_error("%s does not apply to '%s'", option_name(o->seen & ~cmd->allowed, o),
            cmd->name);
    if (o->not_required && o->ents != NULL)
        usage_error("--not-required and --entitlements exclude each other");
    if (o->image && o->content_type != NULL)
        usage_error("--image and --type exclude each other (at bus protocol 6 the content "
                    "type decides)");
    if (strcmp(cmd->name, "send") == 0 &&
        guid_from_text(argv[optind + 1], strlen(argv[optind + 1]), id) != 0)
        usage_error("'%s' is not a client id (like 00112233-4455-6677-8899-aabbccddeeff)",
            argv[optind + 1]);
    return cmd;
}

/*
 * A closed fd 0, 1 or 2 would be the next one handed out, so the
 * daemon's socket would take it: pub would read its own session as
 * input and sub would write bus data into the session as commands. Hold
 * each closed one with /dev/null first, as OpenSSH and daemons do.
 * Nothing can be said if even that fails: stderr may be the one closed.
 */
static void
hold_std_fds(void)
{
    /* In order: the lower ones are open, so open() returns fd itself. */
    for (int fd = STDIN_FILENO; fd <= STDERR_FILENO; fd++)
        if (fcntl(fd, F_GETFD) < 0 && errno == EBADF && open("/dev/null", O_RDWR) != fd)
            _exit(EXIT_NODAEMON);
}

int
main(int argc, char **argv)
{
    static struct opts o = { .timeout_s = CLI_DEFAULT_TIMEOUT }; /* LSan: reachable */
    const struct command *cmd;
    static char outbuf[1 << 16];

    hold_std_fds();
    parse_options(argc, argv, &o);
    if (o.socket == NULL && ((o.socket = getenv("BUSGATE_SOCKET")) == NULL || !*o.socket))
        o.socket = DEFAULT_SOCKET; /* as libbusgate and the python package choose */
    cmd = check_command(argc, argv, &o);
    if (strlen(o.socket) >= sizeof((struct sockaddr_un *)NULL)->sun_path)
        usage_error("socket path too long: %s", o.socket);
    /* Output is flushed whenever we are about to wait, so a pipe sees
     * each event promptly without a write per line. */
    setvbuf(stdout, outbuf, _IOFBF, sizeof outbuf);
    cli_open(&cli, &o);
    cmd->run(&cli, &o, argv + optind + 1, argc - optind - 1);
    cli_finish(EXIT_DONE);
}
