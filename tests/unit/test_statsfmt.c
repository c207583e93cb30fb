/* Unit tests for src/statsfmt.c: the three renderings of one snapshot —
 * STAT lines as before, Prometheus text (families kept together, labels
 * escaped, the link state as one sample per state, text not exported) and
 * JSON (numbers, strings, repeated names as an array). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <event2/buffer.h>

#include "statsfmt.h"

/* The buffer as a NUL-terminated string (freed by the caller). */
static char *
text_of(struct evbuffer *b)
{
    size_t n = evbuffer_get_length(b);
    char *s = malloc(n + 1);

    assert_non_null(s);
    evbuffer_remove(b, s, n);
    s[n] = '\0';
    return s;
}

static struct statsfmt *
sample(void)
{
    struct statsfmt *sf = statsfmt_new();

    assert_non_null(sf);
    assert_int_equal(statsfmt_text(sf, "version", "1.0 \"x\"\\"), 0);
    assert_int_equal(statsfmt_text(sf, "bus_state", "up"), 0);
    assert_int_equal(statsfmt_u64(sf, "slow_consumers", 3), 0);
    assert_int_equal(statsfmt_u64(sf, "sessions", 2), 0);
    assert_int_equal(statsfmt_u64(sf, "memory_budget_closes", 1), 0);
    assert_int_equal(statsfmt_text(sf, "bus_last_error", "refused"), 0);
    assert_int_equal(statsfmt_u64(sf, "limit.max_line", 65536), 0);
    assert_int_equal(statsfmt_u64(sf, "no_such_name", 7), 0);
    return sf;
}

static void
t_stat_lines(void **state)
{
    struct statsfmt *sf = sample();
    struct evbuffer *b = evbuffer_new();
    char *s;

    assert_int_equal(statsfmt_render_stat(sf, b), 0);
    s = text_of(b);
    assert_string_equal(s,
        "STAT version 1.0 \"x\"\\\nSTAT bus_state up\nSTAT slow_consumers 3\n"
        "STAT sessions 2\nSTAT memory_budget_closes 1\nSTAT bus_last_error refused\n"
        "STAT limit.max_line 65536\nSTAT no_such_name 7\n");
    free(s);
    evbuffer_free(b);
    statsfmt_free(sf);
}

static void
t_prometheus(void **state)
{
    struct statsfmt *sf = sample();
    struct evbuffer *b = evbuffer_new();
    char *s;

    assert_int_equal(statsfmt_render_prometheus(sf, b), 0);
    s = text_of(b);
    assert_string_equal(s,
        "# HELP busgate_build_info The busgated version (always 1).\n"
        "# TYPE busgate_build_info gauge\n"
        "busgate_build_info{version=\"1.0 \\\"x\\\"\\\\\"} 1\n"
        "# HELP busgate_bus_link_state The bus link's state: 1 for the current one.\n"
        "# TYPE busgate_bus_link_state gauge\n"
        "busgate_bus_link_state{state=\"connecting\"} 0\n"
        "busgate_bus_link_state{state=\"unconfirmed\"} 0\n"
        "busgate_bus_link_state{state=\"up\"} 1\n"
        "busgate_bus_link_state{state=\"down\"} 0\n"
        "# HELP busgate_sessions_closed_total Local sessions closed, by reason.\n"
        "# TYPE busgate_sessions_closed_total counter\n"
        "busgate_sessions_closed_total{reason=\"slow_consumer\"} 3\n"
        "# HELP busgate_sessions Local sessions connected now.\n"
        "# TYPE busgate_sessions gauge\n"
        "busgate_sessions 2\n"
        "# HELP busgate_memory_budget_closed_sessions_total Local sessions closed to stay "
        "within listen.max_memory (also counted as slow_consumer in "
        "busgate_sessions_closed_total).\n"
        "# TYPE busgate_memory_budget_closed_sessions_total counter\n"
        "busgate_memory_budget_closed_sessions_total 1\n"
        "# HELP busgate_limit A configured limit, by setting (durations in seconds, as "
        "*_seconds).\n"
        "# TYPE busgate_limit gauge\n"
        "busgate_limit{name=\"max_line\"} 65536\n");
    free(s);
    evbuffer_free(b);
    statsfmt_free(sf);
}

static void
t_json_from_lines(void **state)
{
    struct statsfmt *sf = statsfmt_new();
    struct evbuffer *b = evbuffer_new();
    char *s;

    assert_int_equal(statsfmt_line(sf, "uptime", "12"), 0);
    assert_int_equal(statsfmt_line(sf, "bus_state", "down"), 0);
    assert_int_equal(statsfmt_line(sf, "sessions", "12x"), 0); /* not a number: text */
    assert_int_equal(statsfmt_line(sf, "session", "1 pid=2"), 0);
    assert_int_equal(statsfmt_line(sf, "session", "3 pid=4\t\"q\""), 0);
    assert_int_equal(statsfmt_render_json(sf, b), 0);
    s = text_of(b);
    assert_string_equal(s,
        "{\n  \"uptime\": 12,\n  \"bus_state\": \"down\",\n"
        "  \"sessions\": \"12x\",\n  \"session\": [\"1 pid=2\", \"3 pid=4\\u0009\\\"q\\\"\"]\n}\n");
    free(s);
    evbuffer_free(b);
    statsfmt_free(sf);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(t_stat_lines),
        cmocka_unit_test(t_prometheus),
        cmocka_unit_test(t_json_from_lines),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
