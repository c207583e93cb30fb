/*
 * Logging: the escaping every line goes through (names from the bus or a
 * local client can never start a new line or forge a priority prefix),
 * what reaches stderr, and the flood limit per message kind on a fake clock.
 *
 * The flood limit keys on the format string's address: each test uses
 * formats of its own (the compiler may merge equal literals).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "log.h"

/* log_escape of n bytes into a roomy buffer, as a string. */
static const char *
esc(const char *src, size_t n)
{
    static char out[512];

    log_escape(out, sizeof out, src, n);
    return out;
}

#define ESC(lit) esc(lit, sizeof lit - 1)

static void
test_plain_text_unchanged(void **state)
{
    (void)state;
    assert_string_equal(ESC("bus: up (protocol 4)"), "bus: up (protocol 4)");
    assert_string_equal(ESC("a \"quoted\" <name> & 'x'"), "a \"quoted\" <name> & 'x'");
    assert_string_equal(ESC(""), "");
}

static void
test_controls_and_percent_escaped(void **state)
{
    (void)state;
    assert_string_equal(ESC("a\nb"), "a%0Ab");
    assert_string_equal(ESC("a\r\nb"), "a%0D%0Ab");
    assert_string_equal(ESC("\t\x1b[31m"), "%09%1B[31m");
    assert_string_equal(ESC("x\x7fy"), "x%7Fy");
    assert_string_equal(ESC("100%"), "100%25");
    /* Already-escaped text stays readable back: "%0A" is not a newline. */
    assert_string_equal(ESC("%0A"), "%250A");
    assert_string_equal(esc("a\0b", 3), "a%00b");
}

/* The red team's name: "SUB secure x%0A<0>busgated:%20FORGED" decoded. */
static void
test_forged_priority_line(void **state)
{
    (void)state;
    assert_string_equal(ESC("for secure / x\n<0>busgated: FORGED"),
        "for secure / x%0A<0>busgated: FORGED");
}

static void
test_utf8_kept_invalid_escaped(void **state)
{
    (void)state;
    /* é, €, U+1F600: valid UTF-8 passes as is. */
    assert_string_equal(ESC("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80"),
        "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80");
    assert_string_equal(ESC("\xc2\xa0"), "\xc2\xa0"); /* U+00A0 */
    /* Invalid: stray continuation, overlong '/', surrogate, past U+10FFFF,
     * a sequence cut short, a lone lead byte at the end. */
    assert_string_equal(ESC("a\x80z"), "a%80z");
    assert_string_equal(ESC("\xc0\xaf"), "%C0%AF");
    assert_string_equal(ESC("\xed\xa0\x80"), "%ED%A0%80");
    assert_string_equal(ESC("\xf5\x80\x80\x80"), "%F5%80%80%80");
    assert_string_equal(ESC("\xe2\x82z"), "%E2%82z");
    assert_string_equal(ESC("z\xe2"), "z%E2");
    /* C1 controls (U+0085 NEL, U+009B CSI) are controls: escaped. */
    assert_string_equal(ESC("a\xc2\x85z\xc2\x9b"), "a%C2%85z%C2%9B");
}

/* A short buffer cuts at a whole character, never inside %XX or UTF-8. */
static void
test_truncation_whole_characters(void **state)
{
    char out[8];

    (void)state;
    assert_int_equal(log_escape(out, sizeof out, "abcdefghij", 10), 7);
    assert_string_equal(out, "abcdefg");
    assert_int_equal(log_escape(out, sizeof out, "abcde\nf", 7), 5);
    assert_string_equal(out, "abcde");
    assert_int_equal(log_escape(out, sizeof out, "abcd\nf", 6), 7);
    assert_string_equal(out, "abcd%0A");
    assert_int_equal(log_escape(out, sizeof out, "abcde\xe2\x82\xac", 8), 5);
    assert_string_equal(out, "abcde");
    assert_int_equal(log_escape(out, 1, "abc", 3), 0);
    assert_string_equal(out, "");
}

/* ---- what reaches stderr ---- */

static FILE *captured;
static int saved_stderr = -1;
static int64_t fake_ms;

static int64_t
fake_clock(void)
{
    return fake_ms;
}

static int
capture_start(void **state)
{
    (void)state;
    fflush(stderr);
    captured = tmpfile();
    if (captured == NULL || (saved_stderr = dup(STDERR_FILENO)) < 0 ||
        dup2(fileno(captured), STDERR_FILENO) < 0)
        return -1;
    log_init("test_log", LOG_DEST_STDERR, LOG_DEBUG);
    fake_ms = 1000000;
    log_set_clock(fake_clock);
    log_limit_floods(true);
    return 0;
}

static int
capture_stop(void **state)
{
    (void)state;
    log_close();
    log_limit_floods(false);
    log_set_clock(NULL);
    fflush(stderr);
    dup2(saved_stderr, STDERR_FILENO);
    close(saved_stderr);
    fclose(captured);
    return 0;
}

/* Everything written to stderr since the capture started. */
static const char *
captured_text(void)
{
    static char buf[16384];
    size_t n;

    fflush(stderr);
    rewind(captured);
    n = fread(buf, 1, sizeof buf - 1, captured);
    buf[n] = '\0';
    return buf;
}

static void
test_log_line_escaped_with_one_prefix(void **state)
{
    const char *name = "x\n<0>busgated: FORGED";

    (void)state;
    log_notice("authorization request for %s / %.*s: no local authorizer", "secure",
        (int)strlen(name), name);
    log_error("feed %s\r", "a\nb");
    assert_string_equal(captured_text(),
        "<5>authorization request for secure / x%0A<0>busgated: FORGED: "
        "no local authorizer\n"
        "<3>test_log_line_escaped_with_one_prefix: feed a%0Ab%0D\n");
}

/* Lines of the captured text that start with prefix. */
static int
count_lines(const char *prefix)
{
    const char *p = captured_text();
    int n = 0;

    for (; *p != '\0'; p = strchr(p, '\n') + 1)
        if (strncmp(p, prefix, strlen(prefix)) == 0)
            n++;
    return n;
}

/* 2,000 distinct notices of one kind in a window: the burst, then one
 * summary when the window is over; the next window logs again. */
static void
test_flood_limited_then_summarised(void **state)
{
    (void)state;
    for (int i = 0; i < 2000; i++)
        log_notice("authorization request for feed / t%d: none here", i);
    assert_int_equal(count_lines("<5>authorization request for feed / t"), 10);
    assert_int_equal(count_lines("<5>suppressed"), 0);
    fake_ms += 4999;
    log_tick();
    assert_int_equal(count_lines("<5>suppressed"), 0);
    fake_ms += 1;
    log_tick();
    log_tick();
    assert_int_equal(count_lines("<5>suppressed 1990 similar messages in 5 s: "
                                 "authorization request for feed / t ...\n"),
        1);
    log_notice("authorization request for feed / t%d: none here", 2001);
    assert_int_equal(count_lines("<5>authorization request for feed / t"), 11);
    assert_int_equal(count_lines("<"), 12);
}

/* Without a tick, the next line of the kind after the window brings the
 * summary first; at the end, log_close writes what is pending. */
static void
test_summary_on_next_line_and_at_close(void **state)
{
    (void)state;
    for (int i = 0; i < 12; i++)
        log_warn("peer %d said no", i);
    fake_ms += 6000;
    log_warn("peer %d said no", 99);
    assert_string_equal(strstr(captured_text(), "<4>peer 9 said no\n") + 18,
        "<4>suppressed 2 similar messages in 5 s: peer ...\n<4>peer 99 said no\n");
    for (int i = 0; i < 10; i++)
        log_warn("peer %d said no", i);
    log_close();
    assert_int_equal(count_lines("<4>suppressed 1 similar message in 5 s: peer ...\n"), 1);
}

/* Exact repeats are one kind: folded as well. */
static void
test_repeats_folded(void **state)
{
    (void)state;
    for (int i = 0; i < 500; i++)
        log_info("session closed");
    fake_ms += 5000;
    log_tick();
    assert_int_equal(count_lines("<6>session closed\n"), 10);
    assert_int_equal(count_lines(
                         "<6>suppressed 490 similar messages in 5 s: session closed\n"),
        1);
}

/* One kind's flood does not silence another. */
static void
test_kinds_independent(void **state)
{
    (void)state;
    for (int i = 0; i < 100; i++)
        log_notice("noisy %d", i);
    log_notice("quiet %d", 1);
    assert_int_equal(count_lines("<5>noisy"), 10);
    assert_int_equal(count_lines("<5>quiet 1\n"), 1);
}

/* Start-up and reloads (the limit off): every line gets out. */
static void
test_no_limit_when_off(void **state)
{
    (void)state;
    log_limit_floods(false);
    for (int i = 0; i < 30; i++)
        log_notice("reloaded config %d", i);
    log_limit_floods(true);
    log_tick();
    assert_int_equal(count_lines("<5>reloaded config "), 30);
    assert_int_equal(count_lines("<"), 30);
}

/* Errors are never suppressed; debug lines, asked for, neither. */
static void
test_errors_and_debug_never_limited(void **state)
{
    (void)state;
    for (int i = 0; i < 50; i++) {
        log_error("cannot %d", i);
        log_debug("trace %d", i);
    }
    log_tick();
    assert_int_equal(count_lines("<3>test_errors_and_debug_never_limited: cannot "), 50);
    assert_int_equal(count_lines("<7>test_errors_and_debug_never_limited: trace "), 50);
    assert_int_equal(count_lines("<"), 100);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_plain_text_unchanged),
        cmocka_unit_test(test_controls_and_percent_escaped),
        cmocka_unit_test(test_forged_priority_line),
        cmocka_unit_test(test_utf8_kept_invalid_escaped),
        cmocka_unit_test(test_truncation_whole_characters),
        cmocka_unit_test_setup_teardown(test_log_line_escaped_with_one_prefix,
            capture_start, capture_stop),
        cmocka_unit_test_setup_teardown(test_flood_limited_then_summarised, capture_start,
            capture_stop),
        cmocka_unit_test_setup_teardown(test_summary_on_next_line_and_at_close,
            capture_start, capture_stop),
        cmocka_unit_test_setup_teardown(test_repeats_folded, capture_start, capture_stop),
        cmocka_unit_test_setup_teardown(test_kinds_independent, capture_start,
            capture_stop),
        cmocka_unit_test_setup_teardown(test_no_limit_when_off, capture_start,
            capture_stop),
        cmocka_unit_test_setup_teardown(test_errors_and_debug_never_limited, capture_start,
            capture_stop),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
