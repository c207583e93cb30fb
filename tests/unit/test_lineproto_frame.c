/*
 * Unit tests for lineproto's framer (src/lineproto-frame.c): sample streams
 * cut at every point and fed a byte at a time give the same items as fed
 * whole; over-long lines, refused and over-long payloads, bad terminators
 * and CRLF are handled as doc/PROTOCOL.md says. The driver below reads
 * commands the way the session does.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include <event2/buffer.h>

#include "lineproto.h"

static const struct lp_limits lim = {
    .max_name = 64,
    .max_payload = 100,
    .max_packets = 4,
    .max_entitlements = 4,
};

/* The reader: a framer, its input, the command being read, and a
 * transcript of every item ("L[line]", "P[payload]", "!code" after a
 * refused line, "T" / "T+" line too long, "B<n>" / "B+" bad terminator). */
struct reader {
    struct lp_framer f;
    struct evbuffer *in;
    struct lp_cmd cmd;
    char log[4096];
    size_t n;
};

static void
say(struct reader *r, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    r->n += (size_t)vsnprintf(r->log + r->n, sizeof r->log - r->n, fmt, ap);
    va_end(ap);
    assert_true(r->n < sizeof r->log);
}

/* Bytes shown with "\r" visible. */
static void
say_bytes(struct reader *r, char tag, const char *p, size_t len)
{
    say(r, "%c[", tag);
    for (size_t i = 0; i < len; i++)
        say(r, p[i] == '\r' ? "\\r" : "%c", p[i]);
    say(r, "]");
}

static void
reader_line(struct reader *r, const char *line, size_t len)
{
    enum lp_error e;
    char msg[256];
    int rc;

    say_bytes(r, 'L', line, len);
    rc = lp_parse_command(line, len, &lim, &r->cmd, &e, msg, sizeof msg);
    if (rc != 0)
        say(r, "!%s", lp_error_code(e));
    if ((r->cmd.verb == LP_PUB || r->cmd.verb == LP_SEND) && r->cmd.n_packets > 0)
        lp_framer_payload(&r->f, r->cmd.payload_len, rc == 0);
}

/* Take every complete item. */
static void
reader_drain(struct reader *r)
{
    struct lp_frame fr;

    for (;;) {
        switch (lp_framer_next(&r->f, r->in, &fr)) {
        case LP_FRAME_MORE:
            return;
        case LP_FRAME_LINE:
            reader_line(r, fr.data, fr.len);
            break;
        case LP_FRAME_PAYLOAD:
            assert_int_equal(fr.len, r->cmd.payload_len);
            say_bytes(r, 'P', fr.data, fr.len);
            break;
        case LP_FRAME_LINE_TOO_LONG: /* and its head (h), for its verb */
            say(r, fr.skipping ? "T+" : "T");
            say_bytes(r, 'h', fr.data, fr.len);
            break;
        case LP_FRAME_BAD_TERMINATOR:
            if (fr.skipping)
                say(r, "B+");
            else
                say(r, "B%zu", fr.len);
            break;
        }
    }
}

/* The transcript of stream fed in chunks of step bytes (0: whole), or in
 * two pieces cut at cut (step SIZE_MAX). Every byte is accounted for.
 * With chains, each chunk is its own evbuffer chain (a reference), so
 * lines and payloads span chain boundaries. */
static char *
transcript_in(const char *stream, size_t len, uint32_t max_line, size_t step, size_t cut,
    bool chains)
{
    struct reader *r = calloc(1, sizeof *r);
    size_t off = 0, n;
    char *out;

    assert_non_null(r);
    assert_non_null(r->in = evbuffer_new());
    lp_framer_init(&r->f, max_line);
    lp_cmd_init(&r->cmd);
    while (off < len) {
        if (step == SIZE_MAX)
            n = off < cut ? cut - off : len - off;
        else
            n = step == 0 ? len : step;
        if (n > len - off)
            n = len - off;
        if (chains)
            evbuffer_add_reference(r->in, stream + off, n, NULL, NULL);
        else
            evbuffer_add(r->in, stream + off, n);
        off += n;
        reader_drain(r);
    }
    lp_framer_consume(&r->f, r->in);
    assert_int_equal(r->f.bytes + evbuffer_get_length(r->in), len);
    assert_non_null(out = strdup(r->log));
    lp_cmd_free(&r->cmd);
    evbuffer_free(r->in);
    free(r);
    return out;
}

static char *
transcript(const char *stream, size_t len, uint32_t max_line, size_t step, size_t cut)
{
    return transcript_in(stream, len, max_line, step, cut, false);
}

/* The stream read whole gives want; so does every cut, byte at a time,
 * and in separate chains of 1, 2, 3 and 5 bytes. */
static void
check_stream(const char *stream, size_t len, uint32_t max_line, const char *want)
{
    static const size_t chain_steps[] = { 1, 2, 3, 5 };

    char *got = transcript(stream, len, max_line, 0, 0);

    assert_string_equal(got, want);
    free(got);
    for (size_t cut = 1; cut < len; cut++) {
        got = transcript(stream, len, max_line, SIZE_MAX, cut);
        if (strcmp(got, want) != 0)
            fail_msg("cut at %zu: got %s, want %s", cut, got, want);
        free(got);
    }
    got = transcript(stream, len, max_line, 1, 0);
    assert_string_equal(got, want);
    free(got);
    for (size_t i = 0; i < sizeof chain_steps / sizeof chain_steps[0]; i++) {
        got = transcript_in(stream, len, max_line, chain_steps[i], 0, true);
        if (strcmp(got, want) != 0)
            fail_msg("chains of %zu: got %s, want %s", chain_steps[i], got, want);
        free(got);
    }
}

#define CHECK_STREAM(s, max_line, want) check_stream(s, sizeof(s) - 1, max_line, want)

static void
test_commands_and_payloads(void **state)
{
    (void)state;
    CHECK_STREAM("SUB f t\nPUB f t delta 3 2\nabcde\nPING x\n", 64,
        "L[SUB f t]L[PUB f t delta 3 2]P[abcde]L[PING x]");
    /* A payload holding newlines and the next command's bytes. */
    CHECK_STREAM("PUB f t image 9\nPING\nSUB\n\nQUIT\n", 64,
        "L[PUB f t image 9]P[PING\nSUB\n]L[QUIT]");
}

static void
test_empty_payload(void **state)
{
    (void)state;
    CHECK_STREAM("PUB f t delta 0\n\nPING\n", 64, "L[PUB f t delta 0]P[]L[PING]");
    /* PUB without packets announces no payload block (the router refuses it). */
    CHECK_STREAM("PUB f t delta\nPING\n", 64, "L[PUB f t delta]L[PING]");
}

static void
test_crlf(void **state)
{
    (void)state;
    CHECK_STREAM("PING a\r\nPUB f t delta 2\r\nxy\r\nPING b\r\n", 64,
        "L[PING a\\r]L[PUB f t delta 2\\r]P[xy]L[PING b\\r]");
    /* A "\r" alone after a payload is not a terminator. */
    CHECK_STREAM("PUB f t delta 2\nxy\rz\nPING\n", 64, "L[PUB f t delta 2]B2L[PING]");
}

static void
test_line_too_long(void **state)
{
    (void)state;
    /* Exactly max_line (16) is fine, with or without "\r". */
    CHECK_STREAM("PING 45678901234\nPING 45678901234\r\n", 16,
        "L[PING 45678901234]L[PING 45678901234\\r]");
    /* One over, newline within max_line + 2: refused, nothing left to skip. */
    CHECK_STREAM("PING 456789012345\nPING ok\n", 16, "Th[PING 456789012345]L[PING ok]");
    /* Far over: refused when max_line + 2 bytes hold no newline, the rest of
     * the line skipped, the next command read. The head is what was
     * searched, at most LP_FRAME_HEAD bytes. */
    CHECK_STREAM("PING 4567890123456789012345678901234567890\nPING ok\n", 16,
        "T+h[PING 4567890123456]L[PING ok]");
    CHECK_STREAM("PING 4567890123456789012345678901234567890\nPING ok\n", 41,
        "Th[PING 456789012345678901234567890]L[PING ok]");
    /* Refused as soon as max_line + 2 bytes are buffered, not when more
     * come: the window in the chain of the line before, searched by the inline
     * half, is the slow half's to judge. */
    CHECK_STREAM("PING a\nPING 4567890123456", 16, "L[PING a]T+h[PING 4567890123456]");
}

/* Whether an over-long line's head is a command with a payload behind it,
 * which cannot be found (the session is then closed). */
static void
test_head_has_payload(void **state)
{
    static const struct {
        const char *head;
        bool payload;
    } cases[] = {
        { "PUB f t", true },
        { " \tsend 0011", true },
        { "pub\tx", true },
        { "SUB f t", false },
        { "AUTHORIZE x", false },
        { "PUBLISH x", false },
        { "PUB", false }, /* the verb may go on past the head */
        { "   ", false },
        { "", false },
    };

    (void)state;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        if (lp_head_has_payload(cases[i].head, strlen(cases[i].head)) != cases[i].payload)
            fail_msg("%s", cases[i].head);
}

static void
test_refused_payload_skipped(void **state)
{
    char stream[400];
    int n;

    (void)state;
    /* Over max_payload (100): refused, its 200 bytes skipped, newlines in
     * them included, and the next command still read. */
    n = snprintf(stream, sizeof stream, "PUB f t delta 200\n%0200d\nPING after\n", 0);
    stream[18 + 50] = '\n';
    check_stream(stream, (size_t)n, 64,
        "L[PUB f t delta 200]!payload-too-largeL[PING after]");
    /* A refused name still has its payload skipped. */
    CHECK_STREAM("PUB \"\" t delta 3\nabc\nPING\n", 64,
        "L[PUB \"\" t delta 3]!bad-nameL[PING]");
    /* A skipped payload with a bad terminator: skipped to the next newline. */
    n = snprintf(stream, sizeof stream, "PUB f t delta 5 96\n%0101dX junk\nPING ok\n", 0);
    check_stream(stream, (size_t)n, 64,
        "L[PUB f t delta 5 96]!payload-too-largeB+L[PING ok]");
}

static void
test_bad_terminator(void **state)
{
    (void)state;
    CHECK_STREAM("PUB f t delta 3\nabcX junk\nPING\n", 64, "L[PUB f t delta 3]B3L[PING]");
    CHECK_STREAM("PUB f t delta 3\nabc\r\rPING\nQUIT\n", 64, "L[PUB f t delta 3]B3L[QUIT]");
}

/* Items point into the buffer until consumed; consuming drains exactly
 * the item, and the next call drains an unconsumed one first. */
static void
test_consume(void **state)
{
    struct evbuffer *in = evbuffer_new();
    struct lp_framer f;
    struct lp_frame fr;

    (void)state;
    assert_non_null(in);
    lp_framer_init(&f, 64);
    evbuffer_add(in, "PING a\nPING b\n", 14);
    assert_int_equal(lp_framer_next(&f, in, &fr), LP_FRAME_LINE);
    assert_int_equal(evbuffer_get_length(in), 14);
    assert_memory_equal(fr.data, "PING a", 6);
    lp_framer_consume(&f, in);
    assert_int_equal(evbuffer_get_length(in), 7);
    lp_framer_consume(&f, in);
    assert_int_equal(evbuffer_get_length(in), 7);
    assert_int_equal(lp_framer_next(&f, in, &fr), LP_FRAME_LINE);
    assert_memory_equal(fr.data, "PING b", 6);
    assert_int_equal(lp_framer_next(&f, in, &fr), LP_FRAME_MORE);
    assert_int_equal(evbuffer_get_length(in), 0);
    assert_int_equal(f.bytes, 14);
    evbuffer_free(in);
}

/* The items of a batch are drained together: the buffer keeps them until
 * more input is needed (or consume), then holds just the unfinished tail. */
static void
test_batch_drained_once(void **state)
{
    struct evbuffer *in = evbuffer_new();
    struct lp_framer f;
    struct lp_frame fr;

    (void)state;
    assert_non_null(in);
    lp_framer_init(&f, 64);
    evbuffer_add(in, "PING a\nPING b\nPING c\nPI", 23);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(lp_framer_next(&f, in, &fr), LP_FRAME_LINE);
        assert_int_equal(fr.len, 6);
        assert_int_equal(evbuffer_get_length(in), 23);
    }
    assert_int_equal(f.bytes, 21);
    assert_int_equal(lp_framer_next(&f, in, &fr), LP_FRAME_MORE);
    assert_int_equal(evbuffer_get_length(in), 2);
    evbuffer_add(in, "NG d\n", 5);
    assert_int_equal(lp_framer_next(&f, in, &fr), LP_FRAME_LINE);
    assert_memory_equal(fr.data, "PING d", 6);
    lp_framer_consume(&f, in);
    assert_int_equal(evbuffer_get_length(in), 0);
    assert_int_equal(f.bytes, 28);
    evbuffer_free(in);
}

/* The caller may add to the buffer within a batch (and says so): the
 * framer sees the added bytes (the first chain grown in place, or a chain
 * behind it), never a stale view of the chain it peeked. */
static void
test_added_mid_batch(void **state)
{
    struct evbuffer *in = evbuffer_new();
    struct lp_framer f;
    struct lp_frame fr;

    (void)state;
    assert_non_null(in);
    lp_framer_init(&f, 64);
    evbuffer_add(in, "PING a\nPI", 9);
    assert_int_equal(lp_framer_next(&f, in, &fr), LP_FRAME_LINE);
    evbuffer_add(in, "NG b\nPING", 9); /* into the same chain */
    lp_framer_added(&f);
    assert_int_equal(lp_framer_next(&f, in, &fr), LP_FRAME_LINE);
    assert_int_equal(fr.len, 6);
    assert_memory_equal(fr.data, "PING b", 6);
    evbuffer_add_reference(in, " c\n", 3, NULL, NULL); /* a chain behind it */
    lp_framer_added(&f);
    assert_int_equal(lp_framer_next(&f, in, &fr), LP_FRAME_LINE);
    assert_int_equal(fr.len, 6);
    assert_memory_equal(fr.data, "PING c", 6);
    assert_int_equal(lp_framer_next(&f, in, &fr), LP_FRAME_MORE);
    assert_int_equal(evbuffer_get_length(in), 0);
    assert_int_equal(f.bytes, 21);
    evbuffer_free(in);
}

/* lp_framer_extend: a payload read in place behind its line is drained
 * with it; lines split over evbuffer chunks are still found. */
static void
test_extend_and_chunks(void **state)
{
    struct evbuffer *in = evbuffer_new();
    struct lp_framer f;
    struct lp_frame fr;

    (void)state;
    assert_non_null(in);
    lp_framer_init(&f, 64);
    evbuffer_add(in, "PUB f t 3\nabc\nPI", 16);
    evbuffer_add_reference(in, "NG x\n", 5, NULL, NULL); /* a second chunk */
    assert_int_equal(lp_framer_next(&f, in, &fr), LP_FRAME_LINE);
    assert_int_equal(fr.len, 9);
    lp_framer_extend(&f, 4);
    assert_int_equal(lp_framer_next(&f, in, &fr), LP_FRAME_LINE);
    assert_int_equal(fr.len, 6);
    assert_memory_equal(fr.data, "PING x", 6);
    assert_int_equal(lp_framer_next(&f, in, &fr), LP_FRAME_MORE);
    assert_int_equal(f.bytes, 21);
    evbuffer_free(in);
}

/* lp_framer_line_with: the line and the bytes behind it in place where
 * they lie in one chunk, pulled up where they span two (the items before
 * the line drained first: not copied along; the frame then points at the
 * line's new place), NULL where they are not all here. */
static void
test_line_with(void **state)
{
    struct evbuffer *in = evbuffer_new();
    struct lp_framer f;
    struct lp_frame fr;
    const char *p;

    (void)state;
    assert_non_null(in);
    lp_framer_init(&f, 64);
    evbuffer_add(in, "DATA 3\nabc\nDATA 4\nab", 20);
    evbuffer_add_reference(in, "cd\nDATA 9\nxy", 12, NULL, NULL); /* a second chunk */

    assert_int_equal(lp_framer_next(&f, in, &fr), LP_FRAME_LINE);
    p = lp_framer_line_with(&f, in, &fr, 4);
    assert_ptr_equal(p, fr.data); /* in place */
    assert_memory_equal(p, "DATA 3\nabc\n", 11);
    lp_framer_extend(&f, 4);

    assert_int_equal(lp_framer_next(&f, in, &fr), LP_FRAME_LINE);
    p = lp_framer_line_with(&f, in, &fr, 5);
    assert_non_null(p);
    assert_ptr_equal(fr.data, p); /* the frame follows the pulled-up line */
    assert_memory_equal(p, "DATA 4\nabcd\n", 12);
    assert_int_equal(evbuffer_get_length(in), 32 - 11); /* "DATA 3\nabc\n" gone */
    lp_framer_extend(&f, 5);

    assert_int_equal(lp_framer_next(&f, in, &fr), LP_FRAME_LINE);
    assert_null(lp_framer_line_with(&f, in, &fr, 10));
    lp_framer_payload(&f, 9, true);
    assert_int_equal(lp_framer_next(&f, in, &fr), LP_FRAME_MORE);
    evbuffer_add(in, "zzzzzzz\n", 8);
    assert_int_equal(lp_framer_next(&f, in, &fr), LP_FRAME_PAYLOAD);
    assert_memory_equal(fr.data, "xyzzzzzzz", 9);
    assert_int_equal(lp_framer_next(&f, in, &fr), LP_FRAME_MORE);
    assert_int_equal(evbuffer_get_length(in), 0);
    assert_int_equal(f.bytes, 40);
    evbuffer_free(in);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_commands_and_payloads),
        cmocka_unit_test(test_empty_payload),
        cmocka_unit_test(test_crlf),
        cmocka_unit_test(test_line_too_long),
        cmocka_unit_test(test_head_has_payload),
        cmocka_unit_test(test_refused_payload_skipped),
        cmocka_unit_test(test_bad_terminator),
        cmocka_unit_test(test_consume),
        cmocka_unit_test(test_batch_drained_once),
        cmocka_unit_test(test_added_mid_batch),
        cmocka_unit_test(test_extend_and_chunks),
        cmocka_unit_test(test_line_with),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
