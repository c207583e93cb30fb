/*
 * busgate pub and send: one message per input line (or the whole input),
 * pipelined without waiting for each reply, bounded by what the daemon
 * announced.
 */
#include "busgate-int.h"

struct publisher {
    const struct opts *o;
    const uint8_t *client_id; /* SEND: the receiver; PUB: NULL */
    const char *feed, *topic;
    struct evbuffer *input; /* stdin bytes not yet queued */
    bool input_eof;
    bool discarding; /* dropping the rest of a too-long line */
    uint64_t line_no;
    uint64_t queued;   /* messages sent to the daemon */
    uint64_t too_long; /* messages refused here */
};

/* Queue one message: the command line, then n bytes moved from input. */
static void
pub_queue(struct cli *c, struct publisher *p, size_t n)
{
    const struct opts *o = p->o;
    int r;

    r = lp_format_cmd_publish(c->out, p->client_id, p->feed, strlen(p->feed), p->topic,
            strlen(p->topic), o->image, n, o->ents) < 0 ||
        evbuffer_remove_buffer(p->input, c->out, n) != (int)n ||
        evbuffer_add(c->out, "\n", 1) < 0;
    if (r != 0)
        cli_fail(EXIT_NODAEMON, "out of memory");
    p->queued++;
}

/* A message longer than the daemon takes: refuse it here, keep going. */
static void
pub_too_long(struct cli *c, struct publisher *p, uint64_t len)
{
    cli_note("stdin line %" PRIu64 ": %" PRIu64 "%s bytes, over busgated's max_payload "
             "of %" PRIu64 "; not sent",
        p->line_no, len, p->discarding ? "+" : "", c->hello.max_payload);
    p->too_long++;
}

/* Queue every complete line of input, one message each. The input itself
 * is bounded: stdin is read only while the queue is short. */
static void
pub_lines(struct cli *c, struct publisher *p)
{
    uint64_t max = c->hello.max_payload;

    for (;;) {
        struct evbuffer_ptr nl = evbuffer_search(p->input, "\n", 1, NULL);
        size_t have = evbuffer_get_length(p->input);

        if (nl.pos < 0) {
            if (have > max) { /* can never be sent: stop holding it */
                if (!p->discarding) {
                    p->line_no++;
                    p->discarding = true;
                    pub_too_long(c, p, have);
                }
                evbuffer_drain(p->input, have);
            }
            return;
        }
        if (p->discarding) {
            p->discarding = false;
        } else {
            p->line_no++;
            if ((uint64_t)nl.pos <= max) {
                pub_queue(c, p, (size_t)nl.pos);
                evbuffer_drain(p->input, 1);
                continue;
            }
            pub_too_long(c, p, (uint64_t)nl.pos);
        }
        evbuffer_drain(p->input, (size_t)nl.pos + 1);
    }
}

/* End of input: the last unterminated line, or the whole input. */
static void
pub_last(struct cli *c, struct publisher *p)
{
    size_t have = evbuffer_get_length(p->input);

    if (p->o->whole) {
        pub_queue(c, p, have);
    } else if (have > 0 && !p->discarding) {
        p->line_no++;
        pub_queue(c, p, have);
    }
}

static void
pub_read_input(struct cli *c, struct publisher *p)
{
    int n = evbuffer_read(p->input, STDIN_FILENO, CLI_READ_CHUNK);

    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (n < 0)
        cli_fail(EXIT_NODAEMON, "reading stdin: %s", strerror(errno));
    if (n == 0)
        p->input_eof = true;
    if (p->o->whole && evbuffer_get_length(p->input) > c->hello.max_payload)
        cli_fail(EXIT_REFUSED,
            "input is over busgated's max_payload of %" PRIu64 " bytes; nothing sent",
            c->hello.max_payload);
}

/*
 * Stream messages without waiting for replies (VERBOSE off), then PING:
 * its PONG comes after the daemon has handled every message, so by then
 * every -ERR has arrived.
 */
static void
run_publish(struct cli *c, struct publisher *p)
{
    bool pinged = false;

    if ((p->input = evbuffer_new()) == NULL || lp_format_cmd(c->out, LP_VERBOSE, "off") < 0)
        cli_fail(EXIT_NODAEMON, "out of memory");
    c->verbose = false;
    for (;;) {
        bool room = evbuffer_get_length(c->out) < CLI_OUT_HIGH_WATER;

        if (!p->o->whole)
            pub_lines(c, p);
        if (p->input_eof && !pinged) {
            pub_last(c, p);
            if (lp_format_cmd(c->out, LP_PING, "end") < 0)
                cli_fail(EXIT_NODAEMON, "out of memory");
            c->awaiting++;
            pinged = true;
        }
        if (p->input_eof)
            room = false;
        if (cli_next(c, room ? STDIN_FILENO : -1, p->input_eof ? 0 : CLI_OUT_HIGH_WATER) ==
            0) {
            if (room)
                pub_read_input(c, p);
            continue;
        }
        if (c->ev.kind == LP_EV_PONG && pinged) {
            c->awaiting--;
            break;
        }
        cli_common(c, false);
    }
    evbuffer_free(p->input);
    p->input = NULL;
    if (c->refused + p->too_long > 0)
        cli_fail(EXIT_REFUSED, "%" PRIu64 " of %" PRIu64 " messages refused",
            c->refused + p->too_long, p->queued + p->too_long);
    cli_finish(EXIT_DONE);
}

void
cli_run_pub(struct cli *c, const struct opts *o, char **args, int nargs)
{
    struct publisher p = { .o = o };

    p.feed = args[0];
    p.topic = args[1];
    run_publish(c, &p);
}

void
cli_run_send(struct cli *c, const struct opts *o, char **args, int nargs)
{
    struct publisher p = { .o = o };
    uint8_t id[GUID_WIRE_LEN];

    guid_from_text(args[0], strlen(args[0]), id); /* checked in main */
    p.client_id = id;
    p.feed = args[1];
    p.topic = args[2];
    run_publish(c, &p);
}
