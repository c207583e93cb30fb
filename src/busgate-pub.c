/*
 * busgate pub and send: one message per input line (or the whole input),
 * pipelined through the library (bg_set_pipelined: no reply waited for
 * each), bounded by what the daemon announced.
 */
#include <poll.h>
#include <unistd.h>

#include "busgate-int.h"
#include "guid.h"

struct publisher {
    const struct opts *o;
    const uint8_t *client_id; /* SEND: the receiver; PUB: NULL */
    const char *feed, *topic;
    char *buf; /* stdin bytes not yet sent */
    size_t len, cap;
    bool input_eof;
    bool discarding; /* dropping the rest of a too-long line */
    uint64_t line_no;
    uint64_t queued;   /* messages sent to the daemon */
    uint64_t too_long; /* messages refused here */
};

/* Send one message of n bytes. */
static void
pub_send(struct cli *c, struct publisher *p, const char *data, size_t n)
{
    const struct bg_packet pk = { data, n, p->o->ent_v, p->o->ent_n };
    int r;

    const char *ct = p->o->content_type;

    if (p->client_id != NULL && ct != NULL)
        r = bg_send_typed(c->bg, p->client_id, p->feed, strlen(p->feed), p->topic,
            strlen(p->topic), ct, strlen(ct), &pk, 1);
    else if (p->client_id != NULL)
        r = bg_send(c->bg, p->client_id, p->feed, strlen(p->feed), p->topic,
            strlen(p->topic), p->o->image, &pk, 1);
    else if (ct != NULL)
        r = bg_publish_typed(c->bg, p->feed, strlen(p->feed), p->topic, strlen(p->topic),
            ct, strlen(ct), &pk, 1);
    else
        r = bg_publish(c->bg, p->feed, strlen(p->feed), p->topic, strlen(p->topic),
            p->o->image, &pk, 1);
    if (r < 0)
        cli_bg_fail(c, r);
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

/* Send every complete line of input, one message each; keep the rest. */
static void
pub_lines(struct cli *c, struct publisher *p)
{
    uint64_t max = c->hello.max_payload;
    size_t off = 0;
    char *nl;

    while ((nl = memchr(p->buf + off, '\n', p->len - off)) != NULL) {
        size_t n = (size_t)(nl - (p->buf + off));

        if (p->discarding) {
            p->discarding = false;
        } else {
            p->line_no++;
            if (n <= max)
                pub_send(c, p, p->buf + off, n);
            else
                pub_too_long(c, p, n);
        }
        off += n + 1;
    }
    memmove(p->buf, p->buf + off, p->len - off);
    p->len -= off;
    if (p->len > max) { /* can never be sent: stop holding it */
        if (!p->discarding) {
            p->line_no++;
            p->discarding = true;
            pub_too_long(c, p, p->len);
        }
        p->len = 0;
    }
}

/* Read a chunk of stdin (the buffer holds at most max_payload and a
 * chunk: a longer line is dropped as it comes). */
static void
pub_read_input(struct cli *c, struct publisher *p)
{
    ssize_t n;

    if (p->cap - p->len < CLI_READ_CHUNK) {
        size_t cap = p->len + CLI_READ_CHUNK * 4;
        char *b = realloc(p->buf, cap);

        if (b == NULL)
            cli_fail(EXIT_NODAEMON, "out of memory");
        p->buf = b;
        p->cap = cap;
    }
    n = read(STDIN_FILENO, p->buf + p->len, CLI_READ_CHUNK);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (n < 0)
        cli_fail(EXIT_NODAEMON, "reading stdin: %s", strerror(errno));
    if (n == 0)
        p->input_eof = true;
    p->len += (size_t)n;
    if (p->o->whole && p->len > c->hello.max_payload)
        cli_fail(EXIT_REFUSED,
            "input is over busgated's max_payload of %" PRIu64 " bytes; nothing sent",
            c->hello.max_payload);
}

/* Wait for stdin, and meanwhile take what the daemon says (refusals,
 * its closing) and let the library write what is queued. True when stdin
 * is readable. */
static bool
pub_wait_input(struct cli *c)
{
    struct pollfd pfd[2] = { { .fd = STDIN_FILENO, .events = POLLIN },
        { .fd = bg_fd(c->bg), .events = POLLIN } };

    if (bg_flush(c->bg) < 0)
        cli_next(c, 0); /* the daemon closed: its reason ends the program */
    if (bg_want_write(c->bg))
        pfd[1].events |= POLLOUT;
    while (poll(pfd, 2, -1) < 0)
        if (errno != EINTR)
            cli_fail(EXIT_NODAEMON, "poll: %s", strerror(errno));
    if (pfd[1].revents != 0)
        cli_next(c, 0); /* an event other than the common ones: none due */
    return pfd[0].revents != 0;
}

/*
 * Stream messages without waiting for replies, then PING: its PONG comes
 * after the daemon has handled every message, so by then every refusal
 * has arrived (and cli_next counts them).
 */
static void
run_publish(struct cli *c, struct publisher *p)
{
    int r;

    if ((r = bg_set_pipelined(c->bg, true)) < 0)
        cli_bg_fail(c, r);
    while (!p->input_eof) {
        if (!pub_wait_input(c))
            continue;
        pub_read_input(c, p);
        if (!p->o->whole)
            pub_lines(c, p);
    }
    if (p->o->whole || (p->len > 0 && !p->discarding)) {
        if (!p->o->whole)
            p->line_no++;
        pub_send(c, p, p->buf, p->len);
    }
    free(p->buf);
    p->buf = NULL;
    if ((r = bg_ping(c->bg)) < 0)
        cli_bg_fail(c, r);
    cli_next(c, 0);
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
