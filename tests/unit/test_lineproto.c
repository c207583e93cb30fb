/*
 * Unit tests for the line protocol: command parsing, name escaping, event
 * formatting and the client-side event parser.
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

#include "guid.h"
#include "lineproto.h"

static const struct lp_limits lim = {
    .max_name = 64,
    .max_payload = 1000,
    .max_packets = 8,
    .max_entitlements = 4,
};

static const char id_text[] = "00112233-4455-6677-8899-aabbccddeeff";
static const uint8_t id_wire[16] = { 0x33, 0x22, 0x11, 0x00, 0x55, 0x44, 0x77, 0x66, 0x88,
    0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff };

/* Per-test state: one command, one event, one buffer, reused. */
struct fx {
    struct lp_cmd cmd;
    struct lp_event ev;
    struct evbuffer *buf;
    enum lp_error err;
    char msg[256];
};

static int
setup(void **state)
{
    struct fx *f = calloc(1, sizeof(*f));

    assert_non_null(f);
    lp_cmd_init(&f->cmd);
    lp_event_init(&f->ev);
    f->buf = evbuffer_new();
    assert_non_null(f->buf);
    *state = f;
    return 0;
}

static int
teardown(void **state)
{
    struct fx *f = *state;

    lp_cmd_free(&f->cmd);
    lp_event_free(&f->ev);
    evbuffer_free(f->buf);
    free(f);
    return 0;
}

static int
parse_n(struct fx *f, const char *line, size_t len)
{
    return lp_parse_command(line, len, &lim, &f->cmd, &f->err, f->msg, sizeof(f->msg));
}

static int
parse(struct fx *f, const char *line)
{
    return parse_n(f, line, strlen(line));
}

/* Parse a line that must be refused with code e. */
static void
refused(struct fx *f, const char *line, enum lp_error e)
{
    int r = parse(f, line);

    if (r == 0 || f->err != e)
        fail_msg("'%s': expected %s, got r=%d %s (%s)", line, lp_error_code(e), r,
            lp_error_code(f->err), f->msg);
    assert_true(f->msg[0] != '\0');
}

static void
name_is(const struct lp_name *n, const char *bytes, size_t len)
{
    assert_int_equal(n->len, len);
    assert_memory_equal(n->ptr, bytes, len);
    assert_int_equal(n->ptr[len], '\0');
}

#define NAME_IS(n, lit) name_is((n), (lit), sizeof(lit) - 1)

/* The evbuffer's contents as a NUL-terminated string (test-owned copy). */
static char *
drain(struct evbuffer *b, size_t *len)
{
    size_t n = evbuffer_get_length(b);
    char *s = malloc(n + 1);

    assert_non_null(s);
    evbuffer_remove(b, s, n);
    s[n] = '\0';
    if (len != NULL)
        *len = n;
    return s;
}

static void
buf_is(struct evbuffer *b, const char *want, size_t wantlen)
{
    size_t n;
    char *s = drain(b, &n);

    if (n != wantlen || memcmp(s, want, n) != 0)
        fail_msg("got '%s', want '%s'", s, want);
    free(s);
}

#define BUF_IS(b, lit) buf_is((b), (lit), sizeof(lit) - 1)

/* ---- commands ---- */

static void
test_error_codes(void **state)
{
    (void)state;
    for (int e = LP_ERR_UNKNOWN_COMMAND; e <= LP_ERR_PERM; e++) {
        const char *c = lp_error_code(e);

        assert_string_not_equal(c, "internal");
        for (int k = LP_ERR_UNKNOWN_COMMAND; k < e; k++)
            assert_string_not_equal(c, lp_error_code(k));
    }
    assert_string_equal(lp_error_code(LP_ERR_BAD_NAME), "bad-name");
    assert_string_equal(lp_error_code(LP_ERR_SLOW_CONSUMER), "slow-consumer");
    assert_string_equal(lp_error_code(LP_ERR_TOO_MANY_SESSIONS), "too-many-sessions");
    assert_string_equal(lp_error_code(LP_ERR_PERM), "perm");
    assert_string_equal(lp_error_code((enum lp_error)999), "internal");
}

static void
test_sub_unsub(void **state)
{
    struct fx *f = *state;

    assert_int_equal(parse(f, "SUB prices AAPL"), 0);
    assert_int_equal(f->cmd.verb, LP_SUB);
    NAME_IS(&f->cmd.feed, "prices");
    NAME_IS(&f->cmd.topic, "AAPL");
    assert_int_equal(f->cmd.n_packets, 0);
    assert_int_equal(f->cmd.payload_len, 0);

    assert_int_equal(parse(f, "unsub prices AAPL"), 0);
    assert_int_equal(f->cmd.verb, LP_UNSUB);
    NAME_IS(&f->cmd.feed, "prices");
    NAME_IS(&f->cmd.topic, "AAPL");
}

static void
test_pub(void **state)
{
    struct fx *f = *state;
    const uint8_t payload[] = "hello\n\0abc";

    assert_int_equal(parse(f, "PUB prices AAPL image"), 0);
    assert_int_equal(f->cmd.verb, LP_PUB);
    assert_true(f->cmd.is_image);
    assert_int_equal(f->cmd.n_packets, 0);

    assert_int_equal(parse(f, "pub prices AAPL Delta 5 0 4:1,-2,2147483647,-2147483648"),
        0);
    assert_false(f->cmd.is_image);
    assert_int_equal(f->cmd.n_packets, 3);
    assert_int_equal(f->cmd.payload_len, 9);
    assert_int_equal(f->cmd.packets[0].len, 5);
    assert_int_equal(f->cmd.packets[0].entitlements.n, 0);
    assert_null(f->cmd.packets[0].data);
    assert_int_equal(f->cmd.packets[1].len, 0);
    assert_int_equal(f->cmd.packets[2].len, 4);
    assert_int_equal(f->cmd.packets[2].entitlements.n, 4);
    assert_int_equal(f->cmd.packets[2].entitlements.v[0], 1);
    assert_int_equal(f->cmd.packets[2].entitlements.v[1], -2);
    assert_int_equal(f->cmd.packets[2].entitlements.v[2], INT32_MAX);
    assert_int_equal(f->cmd.packets[2].entitlements.v[3], INT32_MIN);

    lp_cmd_attach_payload(&f->cmd, payload);
    assert_ptr_equal(f->cmd.packets[0].data, payload);
    assert_null(f->cmd.packets[1].data);
    assert_ptr_equal(f->cmd.packets[2].data, payload + 5);
}

/* The scan keeps the first PKT_SCAN_LENS LENs for the fill: lines of
 * fewer and more specs, with and without ENTS, come out the same. */
static void
test_packet_spec_counts(void **state)
{
    struct fx *f = *state;
    static const char *const lines[] = {
        "PUB f t image 1 22 333 4",
        "PUB f t image 1 22 333 4 555 6",
        "PUB f t image 1 22:9 333 4",
        "PUB f t image 1 22:9 333 4 555 6:-1,2",
        "PUB f t image 1 22 333 4",
    };

    for (size_t i = 0; i < sizeof(lines) / sizeof(lines[0]); i++) {
        const uint32_t want[] = { 1, 22, 333, 4, 555, 6 };
        bool ents = strchr(lines[i], ':') != NULL;

        assert_int_equal(parse(f, lines[i]), 0);
        assert_int_equal(f->cmd.n_packets, strstr(lines[i], "555") != NULL ? 6 : 4);
        for (uint32_t k = 0; k < f->cmd.n_packets; k++) {
            const struct wire_packet *pk = &f->cmd.packets[k];

            assert_int_equal(pk->len, want[k]);
            assert_null(pk->data);
            assert_int_equal(pk->entitlements.n,
                ents && k == 1       ? 1
                    : ents && k == 5 ? 2
                                     : 0);
        }
        if (ents) {
            assert_int_equal(f->cmd.packets[1].entitlements.v[0], 9);
            if (f->cmd.n_packets == 6)
                assert_int_equal(f->cmd.packets[5].entitlements.v[1], 2);
        }
    }
}

/* PUB/SEND type=<content type>: optional, before the packets, escaped like
 * a name, empty allowed; refused when the bus speaks below 6. */
static void
test_content_type(void **state)
{
    struct fx *f = *state;
    struct lp_limits l6 = lim, l3 = lim;
    char line[160];

    assert_int_equal(parse(f, "PUB prices AAPL image type=application/json 2"), 0);
    NAME_IS(&f->cmd.content_type, "application/json");
    assert_int_equal(f->cmd.n_packets, 1);
    assert_int_equal(f->cmd.payload_len, 2);
    assert_int_equal(parse(f, "PUB prices AAPL delta type=text/plain%3B%20charset=utf-8"),
        0);
    NAME_IS(&f->cmd.content_type, "text/plain; charset=utf-8");
    assert_int_equal(f->cmd.n_packets, 0);
    assert_int_equal(parse(f, "PUB prices AAPL delta type= 1"), 0);
    assert_int_equal(f->cmd.content_type.len, 0);
    assert_int_equal(parse(f, "PUB prices AAPL delta 1"), 0);
    assert_int_equal(f->cmd.content_type.len, 0); /* none given */
    snprintf(line, sizeof(line), "SEND %s prices AAPL image type=img 3:7", id_text);
    assert_int_equal(parse(f, line), 0);
    NAME_IS(&f->cmd.content_type, "img");
    assert_int_equal(f->cmd.packets[0].entitlements.v[0], 7);
    refused(f, "PUB prices AAPL image type=a%zz 2", LP_ERR_BAD_NAME);
    assert_string_equal(f->msg, "bad content type: '%' must be followed by two hex digits");
    assert_int_equal(f->cmd.payload_len, 2); /* the payload can still be skipped */

    l6.bus_protocol = 6;
    assert_int_equal(lp_parse_command("PUB f t image type=x 1", 22, &l6, &f->cmd, &f->err,
                         f->msg, sizeof(f->msg)),
        0);
    NAME_IS(&f->cmd.content_type, "x");
    l3.bus_protocol = 4;
    assert_int_equal(lp_parse_command("PUB f t image type=x 1", 22, &l3, &f->cmd, &f->err,
                         f->msg, sizeof(f->msg)),
        -1);
    assert_int_equal(f->err, LP_ERR_SYNTAX);
    assert_string_equal(f->msg,
        "type= needs bus protocol 6; the bus speaks 4, which "
        "has only image or delta");
    assert_int_equal(f->cmd.n_packets, 1);
    assert_int_equal(f->cmd.payload_len, 1);
    assert_int_equal(lp_parse_command("PUB f t image 1", 15, &l3, &f->cmd, &f->err, f->msg,
                         sizeof(f->msg)),
        0);
}

/* DATA carries type= only when the message has a content type. */
static void
test_format_data_content_type(void **state)
{
    struct fx *f = *state;
    static const uint8_t p0[] = "{}";
    struct wire_packet pk = { { NULL, 0 }, p0, 2 };
    struct wire_msg m;
    size_t n, eol;
    char *s;
    static const char want[] = "DATA F T u h delta multicast type=text/plain;%20x 2\n{}\n";

    wire_msg_init(&m);
    m.version = WIRE_V6;
    m.type = WIRE_FORWARDED_MULTICAST;
    m.feed = (struct wire_str){ "F", 1 };
    m.topic = (struct wire_str){ "T", 1 };
    m.user = (struct wire_str){ "u", 1 };
    m.host = (struct wire_str){ "h", 1 };
    m.content_type = (struct wire_str){ "text/plain; x", 13 };
    m.packets = &pk;
    m.n_packets = 1;
    assert_int_equal(lp_format_data(f->buf, &m), 0);
    s = drain(f->buf, &n);
    assert_int_equal(n, sizeof(want) - 1);
    assert_memory_equal(s, want, n);
    eol = (size_t)((char *)memchr(s, '\n', n) - s);
    assert_int_equal(lp_parse_event(s, eol, &lim, &f->ev), 0);
    NAME_IS(&f->ev.content_type, "text/plain; x");
    assert_int_equal(f->ev.n_packets, 1);
    assert_int_equal(f->ev.payload_len, 2);
    free(s);
    m.content_type = (struct wire_str){ "", 0 };
    assert_int_equal(lp_format_data(f->buf, &m), 0);
    BUF_IS(f->buf, "DATA F T u h delta multicast 2\n{}\n");
}

static void
test_send(void **state)
{
    struct fx *f = *state;
    char line[128];

    snprintf(line, sizeof(line), "SEND %s prices AAPL image 3:7", id_text);
    assert_int_equal(parse(f, line), 0);
    assert_int_equal(f->cmd.verb, LP_SEND);
    assert_memory_equal(f->cmd.client_id, id_wire, 16);
    NAME_IS(&f->cmd.feed, "prices");
    NAME_IS(&f->cmd.topic, "AAPL");
    assert_true(f->cmd.is_image);
    assert_int_equal(f->cmd.n_packets, 1);
    assert_int_equal(f->cmd.payload_len, 3);
    assert_int_equal(f->cmd.packets[0].entitlements.n, 1);
    assert_int_equal(f->cmd.packets[0].entitlements.v[0], 7);

    /* Upper-case hex is accepted too. */
    assert_int_equal(parse(f, "SEND 00112233-4455-6677-8899-AABBCCDDEEFF f t delta"), 0);
    assert_memory_equal(f->cmd.client_id, id_wire, 16);
}

static void
test_feed_verbs(void **state)
{
    struct fx *f = *state;
    static const struct {
        const char *line;
        enum lp_verb verb;
    } cases[] = {
        { "NOTIFY prices", LP_NOTIFY },
        { "unnotify prices", LP_UNNOTIFY },
        { "AUTHORIZER prices", LP_AUTHORIZER },
        { "UnAuthorizer prices", LP_UNAUTHORIZER },
    };

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        assert_int_equal(parse(f, cases[i].line), 0);
        assert_int_equal(f->cmd.verb, cases[i].verb);
        NAME_IS(&f->cmd.feed, "prices");
        assert_int_equal(f->cmd.topic.len, 0);
    }
}

static void
test_authorize(void **state)
{
    struct fx *f = *state;
    char line[160];

    snprintf(line, sizeof(line), "AUTHORIZE %s prices AAPL required 1,2,-3", id_text);
    assert_int_equal(parse(f, line), 0);
    assert_int_equal(f->cmd.verb, LP_AUTHORIZE);
    assert_memory_equal(f->cmd.client_id, id_wire, 16);
    NAME_IS(&f->cmd.feed, "prices");
    NAME_IS(&f->cmd.topic, "AAPL");
    assert_true(f->cmd.required);
    assert_int_equal(f->cmd.entitlements.n, 3);
    assert_int_equal(f->cmd.entitlements.v[0], 1);
    assert_int_equal(f->cmd.entitlements.v[1], 2);
    assert_int_equal(f->cmd.entitlements.v[2], -3);

    snprintf(line, sizeof(line), "authorize %s prices AAPL NOT-REQUIRED", id_text);
    assert_int_equal(parse(f, line), 0);
    assert_false(f->cmd.required);
    assert_int_equal(f->cmd.entitlements.n, 0);

    snprintf(line, sizeof(line), "AUTHORIZE %s prices AAPL maybe", id_text);
    refused(f, line, LP_ERR_SYNTAX);
    snprintf(line, sizeof(line), "AUTHORIZE %s prices AAPL required 1,,2", id_text);
    refused(f, line, LP_ERR_SYNTAX);
    snprintf(line, sizeof(line), "AUTHORIZE %s prices AAPL required 1,2,3,4,5", id_text);
    refused(f, line, LP_ERR_SYNTAX);
    snprintf(line, sizeof(line), "AUTHORIZE %s prices AAPL required 2147483648", id_text);
    refused(f, line, LP_ERR_SYNTAX);
    snprintf(line, sizeof(line), "AUTHORIZE %s prices AAPL required 1 2", id_text);
    refused(f, line, LP_ERR_SYNTAX);
    refused(f, "AUTHORIZE 0011 prices AAPL required", LP_ERR_BAD_CLIENT_ID);
    refused(f, "AUTHORIZE prices AAPL required", LP_ERR_SYNTAX);
}

static void
test_ping_stats_verbose_quit(void **state)
{
    struct fx *f = *state;

    assert_int_equal(parse(f, "PING"), 0);
    assert_int_equal(f->cmd.verb, LP_PING);
    assert_int_equal(f->cmd.token.len, 0);

    /* The token is kept raw: no unescaping. */
    assert_int_equal(parse(f, "ping a%20b\"c"), 0);
    NAME_IS(&f->cmd.token, "a%20b\"c");
    refused(f, "PING a b", LP_ERR_SYNTAX);

    assert_int_equal(parse(f, "STATS"), 0);
    assert_int_equal(f->cmd.verb, LP_STATS);
    assert_int_equal(f->cmd.stats_view, LP_STATS_ALL);
    assert_int_equal(parse(f, "STATS sessions"), 0);
    assert_int_equal(f->cmd.stats_view, LP_STATS_SESSIONS);
    assert_int_equal(parse(f, "STATS LINK"), 0);
    assert_int_equal(f->cmd.stats_view, LP_STATS_LINK);
    assert_int_equal(parse(f, "STATS"), 0);
    assert_int_equal(f->cmd.stats_view, LP_STATS_ALL);
    refused(f, "STATS all", LP_ERR_SYNTAX);
    assert_string_equal(f->msg, "expected SESSIONS or LINK, got 'all'");
    refused(f, "STATS LINK x", LP_ERR_SYNTAX);

    assert_int_equal(parse(f, "VERBOSE off"), 0);
    assert_int_equal(f->cmd.verb, LP_VERBOSE);
    assert_false(f->cmd.on);
    assert_int_equal(parse(f, "verbose ON"), 0);
    assert_true(f->cmd.on);
    refused(f, "VERBOSE", LP_ERR_SYNTAX);
    refused(f, "VERBOSE yes", LP_ERR_SYNTAX);

    assert_int_equal(parse(f, "QUIT"), 0);
    assert_int_equal(f->cmd.verb, LP_QUIT);
    refused(f, "QUIT now", LP_ERR_SYNTAX);

    /* NAME: one name, unescaped, at most LP_MAX_APP_NAME bytes. */
    assert_int_equal(parse(f, "NAME team-a%20pricer"), 0);
    assert_int_equal(f->cmd.verb, LP_NAME);
    NAME_IS(&f->cmd.app, "team-a pricer");
    refused(f, "NAME", LP_ERR_SYNTAX);
    refused(f, "NAME a b", LP_ERR_SYNTAX);
    refused(f, "NAME 12345678901234567890123456789012345678901234567890123456789012345",
        LP_ERR_BAD_NAME);
    assert_string_equal(f->msg, "bad app name: 65 bytes, at most 64");
}

static void
test_framing(void **state)
{
    struct fx *f = *state;

    assert_int_equal(parse(f, "SUB prices AAPL\r"), 0);
    NAME_IS(&f->cmd.topic, "AAPL");
    assert_int_equal(parse(f, "  SUB \t prices    AAPL\t \r"), 0);
    NAME_IS(&f->cmd.feed, "prices");
    NAME_IS(&f->cmd.topic, "AAPL");
    assert_int_equal(parse(f, "PUB f t image   1:1,2   2  \r"), 0);
    assert_int_equal(f->cmd.n_packets, 2);
    assert_int_equal(f->cmd.payload_len, 3);

    refused(f, "", LP_ERR_SYNTAX);
    refused(f, "\r", LP_ERR_SYNTAX);
    refused(f, " \t ", LP_ERR_SYNTAX);
    /* Only the one "\r" before the newline is framing. */
    refused(f, "SUB prices AAPL\r\r", LP_ERR_BAD_NAME);
}

/* Every verb in any case is that verb, and any other letter at any place
 * but the first (which picks the candidate) makes it unknown: the verb is
 * compared in overlapping pieces whose sizes depend on its length. */
static void
test_verb_match(void **state)
{
    struct fx *f = *state;

    for (int v = LP_SUB; v <= LP_NAME; v++) {
        const char *name = lp_verb_name((enum lp_verb)v);
        size_t n = strlen(name);
        char line[32];

        for (int variant = 0; variant < 3; variant++) {
            for (size_t i = 0; i < n; i++) {
                char c = name[i];

                line[i] = variant == 0 ? c
                    : variant == 1     ? (char)(c | 0x20)
                    : i % 2            ? (char)(c | 0x20)
                                       : c;
            }
            line[n] = '\0';
            parse(f, line);
            if (f->err == LP_ERR_UNKNOWN_COMMAND || f->cmd.verb != (enum lp_verb)v)
                fail_msg("'%s' not taken as %s", line, name);
        }
        for (size_t i = 1; i < n; i++) {
            memcpy(line, name, n + 1);
            line[i] = name[i] == 'Z' ? 'Y' : (char)(name[i] + 1);
            refused(f, line, LP_ERR_UNKNOWN_COMMAND);
            line[i] = (char)(name[i] ^ 0x60); /* a non-letter: '!' for 'A' */
            refused(f, line, LP_ERR_UNKNOWN_COMMAND);
        }
        memcpy(line, name, n);
        line[n] = 'S'; /* one letter longer */
        line[n + 1] = '\0';
        refused(f, line, LP_ERR_UNKNOWN_COMMAND);
    }
}

static void
test_syntax_errors(void **state)
{
    struct fx *f = *state;

    refused(f, "FROB x", LP_ERR_UNKNOWN_COMMAND);
    assert_string_equal(f->msg, "unknown command 'FROB'");
    refused(f, "SUBSCRIBE x y", LP_ERR_UNKNOWN_COMMAND);
    refused(f, "+OK", LP_ERR_UNKNOWN_COMMAND);

    refused(f, "PUB prices AAPL", LP_ERR_SYNTAX);
    assert_string_equal(f->msg,
        "PUB needs <feed> <topic> <image|delta> "
        "[type=<content-type>] [PKT...]");
    refused(f, "SUB prices", LP_ERR_SYNTAX);
    assert_string_equal(f->msg, "SUB needs <feed> <topic>");
    refused(f, "SUB a b c", LP_ERR_SYNTAX);
    assert_string_equal(f->msg, "too many arguments: SUB <feed> <topic>");
    refused(f, "SEND prices AAPL image", LP_ERR_SYNTAX);
    refused(f, "NOTIFY", LP_ERR_SYNTAX);
    refused(f, "NOTIFY a b", LP_ERR_SYNTAX);
    refused(f, "PUB prices AAPL picture 5", LP_ERR_SYNTAX);
    assert_string_equal(f->msg, "expected image or delta, got 'picture'");
}

static void
test_bad_names(void **state)
{
    struct fx *f = *state;
    char line[256];

    refused(f, "SUB \"\" AAPL", LP_ERR_BAD_NAME);
    refused(f, "SUB prices \"\"", LP_ERR_BAD_NAME);
    refused(f, "NOTIFY \"\"", LP_ERR_BAD_NAME);
    refused(f, "SUB a%2 b", LP_ERR_BAD_NAME);
    refused(f, "SUB a%zz b", LP_ERR_BAD_NAME);
    refused(f, "SUB a% b", LP_ERR_BAD_NAME);
    refused(f, "SUB a\"b c", LP_ERR_BAD_NAME);
    refused(f, "SUB \" c", LP_ERR_BAD_NAME);
    refused(f, "SUB \"\"\" c", LP_ERR_BAD_NAME);
    refused(f, "SUB a\x01 c", LP_ERR_BAD_NAME);
    refused(f, "SUB a\x7f c", LP_ERR_BAD_NAME);
    refused(f, "SUB a\r c", LP_ERR_BAD_NAME);
    /* Invalid UTF-8, raw or escaped: a lone continuation byte, a truncated
     * sequence, an overlong '/', a surrogate, past U+10FFFF, 0xff. */
    refused(f, "SUB a\x80 c", LP_ERR_BAD_NAME);
    assert_string_equal(f->msg, "bad feed: not valid UTF-8");
    refused(f, "SUB a%80 c", LP_ERR_BAD_NAME);
    refused(f, "SUB x \xc3", LP_ERR_BAD_NAME);
    assert_string_equal(f->msg, "bad topic: not valid UTF-8");
    refused(f, "SUB x %C0%AF", LP_ERR_BAD_NAME);
    refused(f, "SUB x %E0%80%AF", LP_ERR_BAD_NAME);
    refused(f, "SUB x %ED%A0%80", LP_ERR_BAD_NAME);
    refused(f, "SUB x %F4%90%80%80", LP_ERR_BAD_NAME);
    refused(f, "SUB x %FF", LP_ERR_BAD_NAME);

    /* Length is counted on the decoded bytes: 64 is the limit here. */
    memset(line, 0, sizeof(line));
    memcpy(line, "SUB f ", 6);
    memset(line + 6, 'x', 64);
    assert_int_equal(parse(f, line), 0);
    assert_int_equal(f->cmd.topic.len, 64);
    line[6 + 64] = 'x';
    refused(f, line, LP_ERR_BAD_NAME);
    assert_string_equal(f->msg, "bad topic: 65 bytes, at most 64");
    memset(line + 6, 0, 100);
    for (int i = 0; i < 64; i++)
        memcpy(line + 6 + 3 * i, "%41", 3);
    assert_int_equal(parse(f, line), 0);
    assert_int_equal(f->cmd.topic.len, 64);
    assert_int_equal(f->cmd.topic.ptr[63], 'A');
}

static void
test_good_names(void **state)
{
    struct fx *f = *state;

    /* Escapes in either case; any byte may be escaped; raw UTF-8 passes. */
    assert_int_equal(parse(f, "SUB my%20feed caf\xc3\xa9%2541%22%0a%00%2f"), 0);
    NAME_IS(&f->cmd.feed, "my feed");
    NAME_IS(&f->cmd.topic, "caf\xc3\xa9%41\"\n\0/");
    assert_int_equal(parse(f, "SUB %e2%82%ac \xf0\x9f\x98\x80"), 0);
    NAME_IS(&f->cmd.feed, "\xe2\x82\xac");
    NAME_IS(&f->cmd.topic, "\xf0\x9f\x98\x80");
    /* %22%22 is the two-byte name "", not the empty name. */
    assert_int_equal(parse(f, "SUB %22%22 t"), 0);
    NAME_IS(&f->cmd.feed, "\"\"");
}

/*
 * The tokenizer and the name decoder scan eight bytes a step: a special
 * byte (escape, refused byte, separator) at every offset of a name longer
 * than a step, in a command and in an event, must be found exactly there.
 */
static void
test_special_at_every_offset(void **state)
{
    struct fx *f = *state;
    enum { N = 60 }; /* the lines cross 16- and 64-byte blocks */

    for (size_t k = 0; k < N; k++) {
        char name[N + 1], line[N + 48], want[N + 1];

        memset(name, 'n', N);
        name[N] = '\0';
        /* An escape at k: decoded, in a command and in an event. */
        memcpy(want, name, N);
        want[k] = 'A';
        want[N] = '\0';
        snprintf(line, sizeof line, "SUB %.*s%%41%s t\xc3\xa9", (int)k, name, name + k + 1);
        assert_int_equal(parse(f, line), 0);
        name_is(&f->cmd.feed, want, N);
        NAME_IS(&f->cmd.topic, "t\xc3\xa9");
        snprintf(line, sizeof line, "DATA %.*s%%41%s t u h delta multicast", (int)k, name,
            name + k + 1);
        assert_int_equal(lp_parse_event(line, strlen(line), &lim, &f->ev), 0);
        name_is(&f->ev.feed, want, N);
        NAME_IS(&f->ev.host, "h");
        /* A tab at k ends the token there. */
        name[k] = '\t';
        snprintf(line, sizeof line, "SUB %s", name);
        if (k == 0 || k == N - 1) {
            refused(f, line, LP_ERR_SYNTAX);
        } else {
            assert_int_equal(parse(f, line), 0);
            assert_int_equal(f->cmd.feed.len, k);
            assert_int_equal(f->cmd.topic.len, N - 1 - k);
        }
        /* A control byte, DEL or '"' at k stays in the token and is refused. */
        for (const char *bad = "\x01\x7f\""; *bad != '\0'; bad++) {
            name[k] = *bad;
            snprintf(line, sizeof line, "SUB %s t", name);
            refused(f, line, LP_ERR_BAD_NAME);
            snprintf(line, sizeof line, "DATA %s t u h delta multicast", name);
            assert_int_equal(lp_parse_event(line, strlen(line), &lim, &f->ev), -1);
        }
        name[k] = 'n';
    }
}

/*
 * The formatter tells a clean name (written as it is) from one to escape
 * by 16 bytes at a time, a short name gathered into one block: a byte to
 * escape at every offset of names of every length up to 40 is escaped
 * exactly there, and the line reads back as the name.
 */
static void
test_format_special_at_every_offset(void **state)
{
    struct fx *f = *state;
    static const char specials[] = " %\x01\"\x7f";

    for (size_t len = 1; len <= 40; len++) {
        for (size_t k = 0; k <= len; k++) { /* k == len: a clean name */
            for (size_t s = 0; s < (k < len ? sizeof(specials) - 1 : 1); s++) {
                char name[41], want[64], *line;
                size_t n;

                memset(name, 'n', len);
                if (k < len)
                    name[k] = specials[s];
                assert_int_equal(lp_format_cmd_message(f->buf, NULL, name, len, "t", 1,
                                     false, NULL, 0, NULL, 0, 1024),
                    0);
                line = drain(f->buf, &n);
                if (k < len)
                    snprintf(want, sizeof want, "PUB %.*s%%%02X%.*s t delta\n", (int)k,
                        name, (unsigned char)specials[s], (int)(len - k - 1), name + k + 1);
                else
                    snprintf(want, sizeof want, "PUB %.*s t delta\n", (int)len, name);
                assert_string_equal(line, want);
                line[n - 1] = '\0';
                assert_int_equal(parse(f, line), 0);
                name_is(&f->cmd.feed, name, len);
                free(line);
            }
        }
    }
}

/* A stream of PUBs and SENDs through one tail (the kept head reused,
 * replaced, or not to be used) gives the bytes each formatted alone
 * gives. The names live in one buffer rewritten in place, as an app
 * would reuse its own: the head must compare bytes, not pointers. */
static void
test_format_tail_stream(void **state)
{
    static const uint8_t id[16] = { 1, 2, 3 };
    static const struct {
        const char *feed, *topic, *ctype;
        bool send, image;
    } msgs[] = {
        { "feed", "t1", NULL, false, false },
        { "feed", "t1", NULL, false, true },  /* kept head, the other flag */
        { "feed", "t2", NULL, false, false }, /* same lengths, other bytes */
        { "feed", "t2", "text/plain", false, false },
        { "feed", "t2", NULL, true, false }, /* a SEND between PUBs to one topic */
        { "feed", "t2", NULL, false, false },
        { "fe d", "t%", NULL, false, false }, /* escaped names kept */
        { "fe d", "t%", NULL, false, false },
        { "", "t", NULL, false, false },
        { "", "t", NULL, false, false },
        { "a-feed-name-that-with-its-topic-is-past", "the-sixty-four-bytes-a-head-keeps",
            NULL, false, false },
        { "a-feed-name-that-with-its-topic-is-past", "the-sixty-four-bytes-a-head-keeps",
            NULL, false, false },
        { "feed", "t1", NULL, false, false },
    };
    struct evbuffer *want = evbuffer_new(), *out = evbuffer_new();
    struct lp_out_tail tail = { 0 };
    struct wire_packet pk = { { NULL, 0 }, (const uint8_t *)"xyz", 3 };
    char names[2][64];
    char *a, *b;
    size_t na, nb;

    (void)state;
    assert_non_null(want);
    assert_non_null(out);
    for (size_t i = 0; i < sizeof msgs / sizeof msgs[0]; i++) {
        struct lp_message m = { msgs[i].send ? id : NULL, names[0], names[1],
            strlen(msgs[i].feed), strlen(msgs[i].topic), msgs[i].image, msgs[i].ctype,
            msgs[i].ctype != NULL ? strlen(msgs[i].ctype) : 0, &pk, 1 };

        uint32_t kept = tail.head.len;

        strcpy(names[0], msgs[i].feed);
        strcpy(names[1], msgs[i].topic);
        assert_int_equal(lp_format_cmd_message_at(out, &tail, &m, 1024), 0);
        assert_int_equal(lp_format_cmd_message_at(want, NULL, &m, 1024), 0);
        if (msgs[i].send) /* the PUB's head stays kept for the PUB after */
            assert_int_equal(tail.head.len, kept);
    }
    assert_int_equal(lp_out_tail_settle(out, &tail), 0);
    a = drain(want, &na);
    b = drain(out, &nb);
    assert_int_equal(na, nb);
    assert_memory_equal(a, b, na);
    free(a);
    free(b);
    evbuffer_free(want);
    evbuffer_free(out);
}

/* Clean names of every length up to max_name: the event tokenizer's
 * separators land at every offset of its 16- and 64-byte blocks. */
static void
test_event_tokens_at_every_length(void **state)
{
    struct fx *f = *state;

    for (size_t n = 1; n <= lim.max_name; n++) {
        char name[80], line[300];

        memset(name, 'a' + (char)(n % 26), n);
        name[n] = '\0';
        snprintf(line, sizeof line, "DATA %s %s u %s delta unicast 2 3", name, name, name);
        assert_int_equal(lp_parse_event_ref(line, strlen(line), &lim, &f->ev), 0);
        lp_event_terminate(&f->ev);
        name_is(&f->ev.feed, name, n);
        name_is(&f->ev.topic, name, n);
        NAME_IS(&f->ev.user, "u");
        name_is(&f->ev.host, name, n);
        assert_true(f->ev.is_unicast);
        assert_int_equal(f->ev.n_packets, 2);
        assert_int_equal(f->ev.payload_len, 5);
    }
}

static void
test_bad_client_id(void **state)
{
    struct fx *f = *state;

    refused(f, "SEND 00112233445566778899aabbccddeeff f t image", LP_ERR_BAD_CLIENT_ID);
    refused(f, "SEND 00112233-4455-6677-8899-aabbccddeefg f t image", LP_ERR_BAD_CLIENT_ID);
    refused(f, "SEND {00112233-4455-6677-8899-aabbccddeeff} f t image",
        LP_ERR_BAD_CLIENT_ID);
    refused(f, "SEND 00112233-4455-6677-8899-aabbccddeeff0 f t image",
        LP_ERR_BAD_CLIENT_ID);
}

static void
test_bad_packets(void **state)
{
    struct fx *f = *state;
    static const char *bad[] = {
        "PUB f t image x",
        "PUB f t image -1",
        "PUB f t image +1",
        "PUB f t image 1.0",
        "PUB f t image 0x10",
        "PUB f t image 4294967296",
        "PUB f t image 99999999999999999999999999",
        "PUB f t image :1",
        "PUB f t image 1:",
        "PUB f t image 1:,",
        "PUB f t image 1:1,",
        "PUB f t image 1:,1",
        "PUB f t image 1:1,,2",
        "PUB f t image 1:a",
        "PUB f t image 1:--1",
        "PUB f t image 1:+1",
        "PUB f t image 1:2147483648",
        "PUB f t image 1:-2147483649",
        "PUB f t image 1:99999999999999999999",
        "PUB f t image 1:1,2,3,4,5",
        "PUB f t image 1:1:2",
    };

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        refused(f, bad[i], LP_ERR_BAD_PACKET);
    /* The biggest representable values are fine (as numbers). */
    assert_int_equal(parse(f, "PUB f t image 0000000000000001:-0,0"), 0);
    assert_int_equal(f->cmd.packets[0].len, 1);
    refused(f, "PUB f t image 4294967295", LP_ERR_PAYLOAD_TOO_LARGE);
    assert_int_equal(f->cmd.payload_len, 4294967295u);
}

static void
test_limits_keep_payload_len(void **state)
{
    struct fx *f = *state;
    char line[160];

    refused(f, "PUB f t image 600 401", LP_ERR_PAYLOAD_TOO_LARGE);
    assert_int_equal(f->cmd.payload_len, 1001);
    assert_int_equal(f->cmd.n_packets, 2);
    assert_int_equal(parse(f, "PUB f t image 600 400"), 0);
    assert_int_equal(f->cmd.payload_len, 1000);

    refused(f, "PUB f t image 1 2 3 4 5 6 7 8 9", LP_ERR_TOO_MANY_PACKETS);
    assert_int_equal(f->cmd.payload_len, 45);
    assert_int_equal(f->cmd.n_packets, 9);
    assert_int_equal(parse(f, "PUB f t image 1 2 3 4 5 6 7 8"), 0);

    /* Any refusal still says how big the payload block is, so the caller
     * can skip it, as long as every LEN could be read. */
    refused(f, "PUB \"\" t image 10 20:1", LP_ERR_BAD_NAME);
    assert_int_equal(f->cmd.payload_len, 30);
    assert_int_equal(f->cmd.n_packets, 2);
    assert_null(f->cmd.packets);
    snprintf(line, sizeof(line), "SEND nope f t image 7");
    refused(f, line, LP_ERR_BAD_CLIENT_ID);
    assert_int_equal(f->cmd.payload_len, 7);
    refused(f, "PUB f t image 10 5:x", LP_ERR_BAD_PACKET);
    assert_int_equal(f->cmd.payload_len, 15);
    assert_int_equal(f->cmd.n_packets, 2);
    assert_int_equal(parse(f, "PUB f t image 0"), 0);
    assert_int_equal(f->cmd.n_packets, 1);
    assert_int_equal(f->cmd.payload_len, 0);
}

static void
test_unknown_len_gives_no_payload(void **state)
{
    struct fx *f = *state;

    refused(f, "PUB f t image 10 x", LP_ERR_BAD_PACKET);
    assert_int_equal(f->cmd.payload_len, 0);
    assert_int_equal(f->cmd.n_packets, 0);
    /* Nothing stale is left from an earlier command either. */
    assert_int_equal(parse(f, "PUB f t image 10"), 0);
    refused(f, "FROB", LP_ERR_UNKNOWN_COMMAND);
    assert_int_equal(f->cmd.payload_len, 0);
    assert_int_equal(f->cmd.n_packets, 0);
    assert_int_equal(f->cmd.feed.len, 0);
}

static void
test_storage_reuse(void **state)
{
    struct fx *f = *state;
    char line[1024];
    void *store;
    size_t cap;
    int n;

    n = snprintf(line, sizeof(line), "PUB feed-%050d topic image 1:1,2,3,4 2:1 3 4 5 6 7 8",
        0);
    assert_true(n > 0);
    assert_int_equal(parse(f, line), 0);
    store = f->cmd.store;
    cap = f->cmd.store_cap;
    assert_non_null(store);
    assert_true(cap > 0);
    for (int i = 0; i < 1000; i++) {
        assert_int_equal(parse(f, i % 2 ? "SUB a b" : "PUB x y delta 1:5 2"), 0);
        assert_ptr_equal(f->cmd.store, store);
        assert_int_equal(f->cmd.store_cap, cap);
        refused(f, "SUB \"\" b", LP_ERR_BAD_NAME);
        assert_ptr_equal(f->cmd.store, store);
    }
    assert_int_equal(parse(f, "PUB x y delta 1:5 2"), 0);
    assert_int_equal(f->cmd.packets[0].entitlements.v[0], 5);
    NAME_IS(&f->cmd.feed, "x");
    NAME_IS(&f->cmd.topic, "y");
}

/* Commands without arguments store nothing: no allocation at all (this
 * was also UB: NULL + 0 when sizing an empty store, found by the fuzzer). */
static void
test_no_storage_needed(void **state)
{
    struct fx *f = *state;

    assert_int_equal(parse(f, "STATS"), 0);
    assert_int_equal(parse(f, "QUIT"), 0);
    assert_int_equal(parse(f, "PING"), 0);
    assert_int_equal(f->cmd.token.len, 0);
    assert_null(f->cmd.store);
    assert_int_equal(parse(f, "PING x"), 0);
    assert_non_null(f->cmd.store);
    NAME_IS(&f->cmd.token, "x");
}

/* ---- escaping ---- */

static void
test_put_name(void **state)
{
    struct fx *f = *state;

    assert_int_equal(lp_put_name(f->buf, "plain", 5), 0);
    BUF_IS(f->buf, "plain");
    assert_int_equal(lp_put_name(f->buf, "", 0), 0);
    BUF_IS(f->buf, "\"\"");
    assert_int_equal(lp_put_name(f->buf, NULL, 0), 0);
    BUF_IS(f->buf, "\"\"");
    assert_int_equal(lp_put_name(f->buf, "a b%c\"d\te\n\0\x7f\xc3\xa9", 14), 0);
    BUF_IS(f->buf, "a%20b%25c%22d%09e%0A%00%7F\xc3\xa9");
}

/* Every byte value, through lp_put_name and back through the DATA parser
 * (which accepts any bytes) and, when valid UTF-8, the command parser. */
static void
test_escape_round_trip_all_bytes(void **state)
{
    struct fx *f = *state;
    char name[256];
    size_t n;
    char *s;

    for (int i = 0; i < 256; i++)
        name[i] = (char)i;
    evbuffer_add(f->buf, "DATA ", 5);
    assert_int_equal(lp_put_name(f->buf, name, 256), 0);
    evbuffer_add_printf(f->buf, " t \"\" \"\" image multicast");
    s = drain(f->buf, &n);
    assert_null(memchr(s, '\n', n));
    /* 33 bytes up to ' ', DEL, '%' and '"' take three bytes each. */
    assert_int_equal((char *)memchr(s + 5, ' ', n - 5) - (s + 5), 256 + 2 * 36);
    assert_int_equal(lp_parse_event(s, n, NULL, &f->ev), 0);
    assert_int_equal(f->ev.feed.len, 256);
    assert_memory_equal(f->ev.feed.ptr, name, 256);
    free(s);

    /* All of ASCII including NUL and controls, as a client name. */
    evbuffer_add(f->buf, "SUB ", 4);
    assert_int_equal(lp_put_name(f->buf, name, 128), 0);
    evbuffer_add(f->buf, " t", 2);
    s = drain(f->buf, &n);
    assert_int_equal(lp_parse_command(s, n, &(struct lp_limits){ 256, 1, 1, 1, 0 }, &f->cmd,
                         &f->err, f->msg, sizeof(f->msg)),
        0);
    assert_int_equal(f->cmd.feed.len, 128);
    assert_memory_equal(f->cmd.feed.ptr, name, 128);
    free(s);
}

static void
test_escape_round_trip_utf8(void **state)
{
    struct fx *f = *state;
    static const char *names[] = {
        "price feed",
        "100%",
        "\"quoted\"",
        "tab\there",
        "line\nbreak",
        "cr\r",
        "caf\xc3\xa9",
        "\xe6\x97\xa5\xe6\x9c\xac",
        "\xf0\x9f\x98\x80 emoji",
        "%20",
        "\"\"",
        "a\"\"b",
        " ",
        "%",
        "\x7f",
    };

    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        size_t n;
        char *s;

        evbuffer_add(f->buf, "SUB ", 4);
        lp_put_name(f->buf, names[i], strlen(names[i]));
        evbuffer_add(f->buf, " ", 1);
        lp_put_name(f->buf, names[i], strlen(names[i]));
        s = drain(f->buf, &n);
        if (parse_n(f, s, n) != 0)
            fail_msg("'%s': %s", s, f->msg);
        name_is(&f->cmd.feed, names[i], strlen(names[i]));
        name_is(&f->cmd.topic, names[i], strlen(names[i]));
        free(s);
    }
}

/* ---- events ---- */

static void
test_format_data_round_trip(void **state)
{
    struct fx *f = *state;
    static const int32_t ents[] = { 1, -2, INT32_MIN, INT32_MAX };
    static const uint8_t p0[] = { 'a', '\n', 0, 'b' };
    static const uint8_t p2[] = "xyz";
    struct wire_packet pk[3] = {
        { { ents, 4 }, p0, sizeof(p0) },
        { { NULL, 0 }, NULL, 0 },
        { { ents, 1 }, p2, 3 },
    };
    struct wire_msg m;
    size_t n, eol;
    char *s;
    static const char want[] =
        "DATA my%20feed caf\xc3\xa9 alice host.example image unicast "
        "4:1,-2,-2147483648,2147483647 0 3:1\n"
        "a\n\0bxyz\n";

    wire_msg_init(&m);
    m.type = WIRE_FORWARDED_UNICAST;
    m.feed = (struct wire_str){ "my feed", 7 };
    m.topic = (struct wire_str){ "caf\xc3\xa9", 5 };
    m.user = (struct wire_str){ "alice", 5 };
    m.host = (struct wire_str){ "host.example", 12 };
    m.is_image = true;
    m.packets = pk;
    m.n_packets = 3;
    assert_int_equal(lp_format_data(f->buf, &m), 0);
    s = drain(f->buf, &n);
    assert_int_equal(n, sizeof(want) - 1);
    assert_memory_equal(s, want, n);

    /* With the topic's prefix, flat: the same bytes where they fit; where
     * they may not, nothing written and the room they take. */
    {
        char prefix[64], flat[256];
        size_t pn = lp_data_prefix(prefix, &m.feed, &m.topic), len = 0, room = 0;

        assert_int_equal(lp_format_data_flat(flat, sizeof flat, &m, prefix, pn, &len), 0);
        assert_int_equal(len, n);
        assert_memory_equal(flat, want, n);
        memset(flat, 'x', sizeof flat);
        assert_int_equal(lp_format_data_flat(flat, n - 1, &m, prefix, pn, &room), 1);
        assert_true(room >= n && room <= sizeof flat);
        assert_int_equal(flat[0], 'x');
        assert_int_equal(lp_format_data_flat(flat, room, &m, prefix, pn, &len), 0);
        assert_int_equal(len, n);
        assert_memory_equal(flat, want, n);
        memset(flat, 'x', sizeof flat);
        assert_int_equal(lp_format_data_flat(flat, sizeof flat, &m, NULL, 0, &len), 0);
        assert_memory_equal(flat, want, n);
        m.type = WIRE_SUBSCRIPTION_REQUEST;
        assert_int_equal(lp_format_data_flat(flat, sizeof flat, &m, prefix, pn, &len), -1);
        m.type = WIRE_FORWARDED_UNICAST;
    }

    eol = (size_t)((char *)memchr(s, '\n', n) - s);
    assert_int_equal(lp_parse_event(s, eol, &lim, &f->ev), 0);
    assert_int_equal(f->ev.kind, LP_EV_DATA);
    NAME_IS(&f->ev.feed, "my feed");
    NAME_IS(&f->ev.topic, "caf\xc3\xa9");
    NAME_IS(&f->ev.user, "alice");
    NAME_IS(&f->ev.host, "host.example");
    assert_true(f->ev.is_image);
    assert_true(f->ev.is_unicast);
    assert_int_equal(f->ev.n_packets, 3);
    assert_int_equal(f->ev.payload_len, 7);
    assert_int_equal(f->ev.packets[0].len, 4);
    assert_int_equal(f->ev.packets[0].entitlements.n, 4);
    assert_memory_equal(f->ev.packets[0].entitlements.v, ents, sizeof(ents));
    assert_int_equal(f->ev.packets[1].len, 0);
    assert_int_equal(f->ev.packets[1].entitlements.n, 0);
    assert_int_equal(f->ev.packets[2].entitlements.n, 1);
    /* The payload block is exactly the packets back to back, then "\n". */
    assert_memory_equal(s + eol + 1, "a\n\0bxyz", 7);
    assert_int_equal(s[eol + 1 + 7], '\n');
    assert_int_equal(eol + 1 + 7 + 1, n);
    free(s);
}

static void
test_format_data_stale_and_multicast(void **state)
{
    struct fx *f = *state;
    struct wire_msg m;
    size_t n;
    char *s;

    wire_msg_init(&m);
    m.type = WIRE_FORWARDED_MULTICAST;
    m.feed = (struct wire_str){ "prices", 6 };
    m.topic = (struct wire_str){ "AAPL", 4 };
    m.is_image = true;
    assert_int_equal(lp_format_data(f->buf, &m), 0);
    s = drain(f->buf, &n);
    assert_string_equal(s, "DATA prices AAPL \"\" \"\" image multicast\n");
    assert_int_equal(lp_parse_event(s, n - 1, &lim, &f->ev), 0);
    assert_int_equal(f->ev.user.len, 0);
    assert_int_equal(f->ev.host.len, 0);
    assert_int_equal(f->ev.n_packets, 0);
    assert_false(f->ev.is_unicast);
    assert_true(f->ev.is_image);
    free(s);

    /* A packet of length 0 still has a (empty) payload block. */
    {
        struct wire_packet pk = { { NULL, 0 }, NULL, 0 };

        m.is_image = false;
        m.user = (struct wire_str){ "u", 1 };
        m.host = (struct wire_str){ "h", 1 };
        m.packets = &pk;
        m.n_packets = 1;
        assert_int_equal(lp_format_data(f->buf, &m), 0);
        BUF_IS(f->buf, "DATA prices AAPL u h delta multicast 0\n\n");
    }

    m.type = WIRE_MULTICAST_DATA;
    assert_int_equal(lp_format_data(f->buf, &m), -1);
    assert_int_equal(evbuffer_get_length(f->buf), 0);
}

static void
test_format_notification_authreq(void **state)
{
    struct fx *f = *state;
    struct wire_msg m;
    size_t n;
    char *s;

    wire_msg_init(&m);
    m.type = WIRE_FORWARDED_SUBSCRIPTION;
    memcpy(m.client_id, id_wire, 16);
    m.user = (struct wire_str){ "bob", 3 };
    m.host = (struct wire_str){ "", 0 };
    m.feed = (struct wire_str){ "prices", 6 };
    m.topic = (struct wire_str){ "A B", 3 };
    m.is_add = true;
    assert_int_equal(lp_format_notification(f->buf, &m), 0);
    s = drain(f->buf, &n);
    assert_string_equal(s,
        "NOTIFICATION add 00112233-4455-6677-8899-aabbccddeeff bob \"\" prices A%20B\n");
    assert_int_equal(lp_parse_event(s, n - 1, &lim, &f->ev), 0);
    assert_int_equal(f->ev.kind, LP_EV_NOTIFICATION);
    assert_true(f->ev.is_add);
    assert_memory_equal(f->ev.client_id, id_wire, 16);
    NAME_IS(&f->ev.user, "bob");
    NAME_IS(&f->ev.host, "");
    NAME_IS(&f->ev.feed, "prices");
    NAME_IS(&f->ev.topic, "A B");
    free(s);

    m.is_add = false;
    assert_int_equal(lp_format_notification(f->buf, &m), 0);
    s = drain(f->buf, &n);
    assert_int_equal(lp_parse_event(s, n - 1, &lim, &f->ev), 0);
    assert_false(f->ev.is_add);
    free(s);

    m.type = WIRE_AUTHORIZATION_REQUEST;
    assert_int_equal(lp_format_notification(f->buf, &m), -1);
    assert_int_equal(lp_format_authreq(f->buf, &m), 0);
    s = drain(f->buf, &n);
    assert_string_equal(s,
        "AUTHREQ 00112233-4455-6677-8899-aabbccddeeff bob \"\" prices A%20B\n");
    assert_int_equal(lp_parse_event(s, n - 1, &lim, &f->ev), 0);
    assert_int_equal(f->ev.kind, LP_EV_AUTHREQ);
    assert_memory_equal(f->ev.client_id, id_wire, 16);
    NAME_IS(&f->ev.topic, "A B");
    free(s);
    m.type = WIRE_FORWARDED_SUBSCRIPTION;
    assert_int_equal(lp_format_authreq(f->buf, &m), -1);
}

static void
test_format_replies(void **state)
{
    struct fx *f = *state;
    struct lp_limits l = { 4096, 1048576, 1024, 1024, 0 };
    char big[2000];

    assert_int_equal(lp_format_ok(f->buf), 0);
    BUF_IS(f->buf, "+OK\n");
    assert_int_equal(lp_format_err(f->buf, LP_ERR_BAD_NAME, "bad feed: %s", "x"), 0);
    BUF_IS(f->buf, "-ERR bad-name bad feed: x\n");
    /* A message never breaks the line. */
    assert_int_equal(lp_format_err(f->buf, LP_ERR_SYNTAX, "a\nb\r%c", 0x7f), 0);
    BUF_IS(f->buf, "-ERR syntax a b  \n");
    assert_int_equal(lp_format_err(f->buf, LP_ERR_SLOW_CONSUMER, "%s", ""), 0);
    BUF_IS(f->buf, "-ERR slow-consumer\n");
    memset(big, 'm', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    assert_int_equal(lp_format_err(f->buf, LP_ERR_SYNTAX, "%s", big), 0);
    assert_int_equal(evbuffer_get_length(f->buf),
        strlen("-ERR syntax \n") + sizeof(big) - 1);
    evbuffer_drain(f->buf, evbuffer_get_length(f->buf));

    assert_int_equal(lp_format_bus(f->buf, "up", NULL), 0);
    BUF_IS(f->buf, "BUS up\n");
    assert_int_equal(lp_format_bus(f->buf, "down", "connection refused\n(retrying)"), 0);
    BUF_IS(f->buf, "BUS down connection refused (retrying)\n");
    assert_int_equal(lp_format_bus(f->buf, "unconfirmed", ""), 0);
    BUF_IS(f->buf, "BUS unconfirmed\n");

    /* REVOKED: names escaped, the reason as text; no topic for roles. */
    assert_int_equal(lp_format_revoked(f->buf, "subscribe", "my feed", 7, "T", 1,
                         "no access rule allows it"),
        0);
    BUF_IS(f->buf, "REVOKED subscribe my%20feed T no access rule allows it\n");
    assert_int_equal(lp_format_revoked(f->buf, "notify", "p", 1, NULL, 0,
                         "denied by access rule 2 (line 9)"),
        0);
    BUF_IS(f->buf, "REVOKED notify p denied by access rule 2 (line 9)\n");

    assert_int_equal(lp_format_hello(f->buf, "0.1.0", &l, 65536,
                         &(struct lp_session_limits){ 10000, 1000, 500 }, 8388608, "up"),
        0);
    BUF_IS(f->buf,
        "HELLO busgate 0.1.0 proto=1 max_line=65536 max_payload=1048576 "
        "max_packets=1024 max_name=4096 max_entitlements=1024 max_subscriptions=10000 "
        "max_notifications=1000 max_authorizers=500 max_output=8388608 bus_protocol=0 bus=up\n");
    l.bus_protocol = 6;
    assert_int_equal(lp_format_hello(f->buf, "0.1.0", &l, 65536,
                         &(struct lp_session_limits){ 10000, 1000, 500 }, 8388608, "up"),
        0);
    BUF_IS(f->buf,
        "HELLO busgate 0.1.0 proto=1 max_line=65536 max_payload=1048576 "
        "max_packets=1024 max_name=4096 max_entitlements=1024 max_subscriptions=10000 "
        "max_notifications=1000 max_authorizers=500 max_output=8388608 bus_protocol=6 bus=up\n");
}

static void
test_format_pong_stat_end(void **state)
{
    struct fx *f = *state;

    assert_int_equal(lp_format_pong(f->buf, "abc", 3), 0);
    BUF_IS(f->buf, "PONG abc\n");
    assert_int_equal(lp_format_pong(f->buf, NULL, 0), 0);
    BUF_IS(f->buf, "PONG\n");
    assert_int_equal(lp_format_stat_u64(f->buf, "sessions", 18446744073709551615u), 0);
    BUF_IS(f->buf, "STAT sessions 18446744073709551615\n");
    /* A text value stays on its line. */
    assert_int_equal(lp_format_stat_text(f->buf, "bus_reason", "refused\n(x)\x7f"), 0);
    BUF_IS(f->buf, "STAT bus_reason refused?(x)?\n");
    assert_int_equal(lp_format_end(f->buf), 0);
    BUF_IS(f->buf, "END\n");
}

/* The buffer holds one formatted command: it parses (without "\n"). */
static void
parse_formatted(struct fx *f, const char *want)
{
    size_t n;
    char *line = drain(f->buf, &n);

    assert_string_equal(line, want);
    assert_true(n > 0 && line[n - 1] == '\n');
    if (parse_n(f, line, n - 1) != 0)
        fail_msg("'%s' does not parse: %s", line, f->msg);
    free(line);
}

/* What a client writes parses back to what it meant, names escaped. */
static void
test_format_commands(void **state)
{
    struct fx *f = *state;

    assert_int_equal(lp_format_cmd_names(f->buf, LP_SUB, "a b", 3, "%", 1), 0);
    parse_formatted(f, "SUB a%20b %25\n");
    assert_int_equal(f->cmd.verb, LP_SUB);
    NAME_IS(&f->cmd.feed, "a b");
    NAME_IS(&f->cmd.topic, "%");
    assert_int_equal(lp_format_cmd_names(f->buf, LP_AUTHORIZER, "feed", 4, NULL, 0), 0);
    parse_formatted(f, "AUTHORIZER feed\n");
    assert_int_equal(f->cmd.verb, LP_AUTHORIZER);

    assert_int_equal(lp_format_cmd_authorize(f->buf, id_wire, "f", 1, "t\"", 2, true,
                         "1,-2"),
        0);
    parse_formatted(f,
        "AUTHORIZE 00112233-4455-6677-8899-aabbccddeeff f t%22 required 1,-2\n");
    assert_memory_equal(f->cmd.client_id, id_wire, 16);
    NAME_IS(&f->cmd.topic, "t\"");
    assert_true(f->cmd.required);
    assert_int_equal(f->cmd.entitlements.n, 2);
    assert_int_equal(lp_format_cmd_authorize(f->buf, id_wire, "f", 1, "t", 1, false, NULL),
        0);
    parse_formatted(f, "AUTHORIZE 00112233-4455-6677-8899-aabbccddeeff f t not-required\n");
    assert_false(f->cmd.required);

    {
        /* Several packets, entitlements on some, a NUL and a newline in the
         * data, an empty one: the whole command, line and payload block. */
        static const int32_t ents[] = { 1, -2 };
        const struct wire_packet pk[] = {
            { { ents, 2 }, (const uint8_t *)"a\0\n", 3 },
            { { NULL, 0 }, NULL, 0 },
        };
        size_t n;
        char *all;

        assert_int_equal(lp_format_cmd_message(f->buf, id_wire, "f f", 3, "t", 1, true,
                             NULL, 0, pk, 2, UINT32_MAX),
            0);
        all = drain(f->buf, &n);
        assert_int_equal(n,
            sizeof(
                "SEND 00112233-4455-6677-8899-aabbccddeeff f%20f t image 3:1,-2 0\na\0\n\n") -
                1);
        assert_memory_equal(all,
            "SEND 00112233-4455-6677-8899-aabbccddeeff f%20f t image 3:1,-2 0\na\0\n\n", n);
        free(all);
        assert_int_equal(lp_format_cmd_message(f->buf, NULL, "f", 1, "t", 1, false, NULL, 0,
                             NULL, 0, UINT32_MAX),
            0);
        parse_formatted(f, "PUB f t delta\n");
        /* A content type (bus protocol 6), escaped like a name; empty is "". */
        assert_int_equal(lp_format_cmd_message(f->buf, NULL, "f", 1, "t", 1, false,
                             "text/plain; x", 13, NULL, 0, UINT32_MAX),
            0);
        parse_formatted(f, "PUB f t delta type=text/plain;%20x\n");
        NAME_IS(&f->cmd.content_type, "text/plain; x");
        assert_int_equal(lp_format_cmd_message(f->buf, NULL, "f", 1, "t", 1, true, "", 0,
                             NULL, 0, UINT32_MAX),
            0);
        parse_formatted(f, "PUB f t image type=\"\"\n");
        assert_int_equal(f->cmd.content_type.len, 0);
        /* A line of max_line bytes goes; one byte longer, nothing is
         * added: busgated would read the payload as commands. */
        assert_int_equal(lp_format_cmd_message(f->buf, NULL, "f", 1, "t", 1, false, NULL, 0,
                             pk, 2, sizeof("PUB f t delta 3:1,-2 0") - 1),
            0);
        all = drain(f->buf, &n);
        assert_memory_equal(all, "PUB f t delta 3:1,-2 0\na\0\n\n", n);
        free(all);
        assert_int_equal(lp_format_cmd_message(f->buf, NULL, "f", 1, "t", 1, false, NULL, 0,
                             pk, 2, sizeof("PUB f t delta 3:1,-2 0") - 2),
            LP_FORMAT_TOO_LONG);
        assert_int_equal(evbuffer_get_length(f->buf), 0);
    }

    assert_int_equal(lp_format_cmd(f->buf, LP_PING, "tok"), 0);
    parse_formatted(f, "PING tok\n");
    NAME_IS(&f->cmd.token, "tok");
    assert_int_equal(lp_format_cmd(f->buf, LP_VERBOSE, "off"), 0);
    parse_formatted(f, "VERBOSE off\n");
    assert_false(f->cmd.on);
    assert_int_equal(lp_format_cmd(f->buf, LP_STATS, NULL), 0);
    parse_formatted(f, "STATS\n");
    assert_int_equal(lp_format_cmd(f->buf, LP_QUIT, NULL), 0);
    parse_formatted(f, "QUIT\n");
    /* The argument goes as is: it must be one word that needs no escape. */
    assert_int_equal(lp_format_cmd(f->buf, LP_STATS, "LINK\nPING"), -1);
    assert_int_equal(lp_format_cmd(f->buf, LP_PING, "a b"), -1);
    assert_int_equal(lp_format_cmd(f->buf, LP_PING, ""), -1);
    assert_int_equal(evbuffer_get_length(f->buf), 0);
    assert_true(lp_is_word("SESSIONS"));
    assert_false(lp_is_word("100%"));
    assert_string_equal(lp_verb_name(LP_UNAUTHORIZER), "UNAUTHORIZER");
    assert_null(lp_verb_name((enum lp_verb)99));
}

static void
test_parse_text_events(void **state)
{
    struct fx *f = *state;
    const char *line;
    static const struct {
        const char *line;
        enum lp_event_kind kind;
        const char *rest;
    } ok[] = {
        { "HELLO busgate 0.1.0 proto=1 bus=up", LP_EV_HELLO,
            "busgate 0.1.0 proto=1 bus=up" },
        { "+OK", LP_EV_OK, "" },
        { "+OK\r", LP_EV_OK, "" },
        { "-ERR bad-name bad feed: x", LP_EV_ERR, "bad-name bad feed: x" },
        { "BUS down connection refused", LP_EV_BUS, "down connection refused" },
        { "BUS up", LP_EV_BUS, "up" },
        { "PONG", LP_EV_PONG, "" },
        { "PONG 42", LP_EV_PONG, "42" },
        { "STAT bus_state up", LP_EV_STAT, "bus_state up" },
        { "END", LP_EV_END, "" },
    };
    static const char *bad[] = {
        "",
        "HELLO",
        "-ERR",
        "BUS",
        "STAT",
        "WHAT now",
        "OK",
        "DATA f t u h image multicast x",
        "DATA f t u h image broadcast",
        "DATA f t u h picture multicast",
        "DATA f t u h image",
        "DATA f%2 t u h image multicast",
        "DATA f t u h image multicast 1 2 3 4 5 6 7 8 9",
        "DATA f t u h image multicast 1001",
        "DATA f t u h image multicast 1:1,2,3,4,5",
        "NOTIFICATION add 00112233-4455-6677-8899-aabbccddeeff u h f",
        "NOTIFICATION add 00112233-4455-6677-8899-aabbccddeeff u h f t x",
        "NOTIFICATION plus 00112233-4455-6677-8899-aabbccddeeff u h f t",
        "NOTIFICATION add nope u h f t",
        "AUTHREQ 00112233-4455-6677-8899-aabbccddeeff u h f",
        "AUTHREQ 00112233-4455-6677-8899-aabbccddeeff u h f t x",
    };

    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        if (lp_parse_event(ok[i].line, strlen(ok[i].line), &lim, &f->ev) != 0)
            fail_msg("'%s' refused", ok[i].line);
        assert_int_equal(f->ev.kind, ok[i].kind);
        assert_int_equal(f->ev.rest_len, strlen(ok[i].rest));
        assert_string_equal(f->ev.rest, ok[i].rest);
    }
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        if (lp_parse_event(bad[i], strlen(bad[i]), &lim, &f->ev) == 0)
            fail_msg("'%s' accepted", bad[i]);
    /* A DATA line refused for its limits still says how much to skip. */
    assert_int_equal(lp_parse_event("DATA f t u h image multicast 1001", 33, &lim, &f->ev),
        -1);
    assert_int_equal(f->ev.payload_len, 1001);
    assert_int_equal(f->ev.n_packets, 1);
    /* The verb in any case, after any separator. */
    line = "data f t u h image multicast";
    assert_int_equal(lp_parse_event(line, strlen(line), &lim, &f->ev), 0);
    assert_int_equal(f->ev.kind, LP_EV_DATA);
    line = "DATA\tf t u h Delta UNICAST 3";
    assert_int_equal(lp_parse_event(line, strlen(line), &lim, &f->ev), 0);
    assert_int_equal(f->ev.kind, LP_EV_DATA);
    assert_false(f->ev.is_image);
    assert_true(f->ev.is_unicast);
    assert_int_equal(f->ev.payload_len, 3);
}

static void
test_event_storage_reuse(void **state)
{
    struct fx *f = *state;
    const char *line = "DATA feed topic user host delta multicast 1:1,2 2 3:4";
    void *store;

    assert_int_equal(lp_parse_event(line, strlen(line), &lim, &f->ev), 0);
    store = f->ev.store;
    for (int i = 0; i < 100; i++) {
        assert_int_equal(lp_parse_event("+OK", 3, &lim, &f->ev), 0);
        assert_int_equal(lp_parse_event(line, strlen(line), &lim, &f->ev), 0);
        assert_ptr_equal(f->ev.store, store);
    }
    assert_int_equal(f->ev.packets[2].entitlements.v[0], 4);
    NAME_IS(&f->ev.host, "host");
}

/*
 * Tokens of every length from 1 to 19 (across the tokenizer's 8-byte
 * steps), separated by runs of spaces and tabs, and at the very end of
 * the line: each name comes out whole.
 */
static void
test_token_lengths(void **state)
{
    struct fx *f = *state;
    static const char *const seps[] = { " ", "\t", " \t ", "\t\t" };
    char feed[24], topic[24], line[128];

    for (size_t a = 1; a < 20; a++) {
        for (size_t b = 1; b < 20; b++) {
            const char *s1 = seps[(a + b) % 4], *s2 = seps[(a * b) % 4];

            memset(feed, 'f', a);
            feed[a] = '\0';
            memset(topic, 't', b);
            topic[b] = '\0';
            feed[a - 1] = (char)('a' + a % 26); /* the last byte counts too */
            snprintf(line, sizeof line, "SUB%s%s%s%s", s1, feed, s2, topic);
            assert_int_equal(parse(f, line), 0);
            assert_int_equal(f->cmd.verb, LP_SUB);
            name_is(&f->cmd.feed, feed, a);
            name_is(&f->cmd.topic, topic, b);
            snprintf(line, sizeof line, "PUB%s%s%s%s%sdelta%s%zu%s", s2, feed, s1, topic,
                s2, s1, a, s2);
            assert_int_equal(parse(f, line), 0);
            name_is(&f->cmd.feed, feed, a);
            name_is(&f->cmd.topic, topic, b);
            assert_int_equal(f->cmd.n_packets, 1);
            assert_int_equal(f->cmd.payload_len, a);
        }
    }
}

/* lp_parse_event_ref: clean names point into the line, escaped ones are
 * decoded; the 8-byte scanner finds an escape or a bad byte wherever it
 * sits in a long name, and passes UTF-8. */
static void
test_event_by_reference(void **state)
{
    struct fx *f = *state;
    char line[] = "DATA feed.long.name.over.16 t%20opic \xc3\xa9t\xc3\xa9user \"\" "
                  "delta multicast type=text/plain 3\n";
    size_t n = strlen(line) - 1;
    static const char *const bad[] = {
        "DATA abcdefgh\"jk t u h image multicast",
        "DATA abcdefghijklmn\x01 t u h image multicast",
        "DATA abcdefghij\x7f t u h image multicast",
        "DATA abcdefghijklmnopq%4 t u h image multicast",
    };

    assert_int_equal(lp_parse_event_ref(line, n, &lim, &f->ev), 0);
    assert_ptr_equal(f->ev.feed.ptr, line + 5);
    assert_int_equal(f->ev.feed.len, 22);
    NAME_IS(&f->ev.topic, "t opic");
    assert_true(f->ev.topic.ptr < line || f->ev.topic.ptr >= line + sizeof(line));
    assert_ptr_equal(f->ev.user.ptr, strstr(line, "\xc3\xa9t"));
    assert_int_equal(f->ev.user.len, 9);
    assert_int_equal(f->ev.host.len, 0);
    assert_int_equal(f->ev.content_type.len, 10);
    assert_int_equal(f->ev.payload_len, 3);
    /* Not terminated until asked: the line is still whole. */
    assert_int_equal(line[5 + 22], ' ');
    lp_event_terminate(&f->ev);
    assert_string_equal(f->ev.feed.ptr, "feed.long.name.over.16");
    assert_string_equal(f->ev.user.ptr, "\xc3\xa9t\xc3\xa9user");
    assert_string_equal(f->ev.content_type.ptr, "text/plain");

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        assert_int_equal(lp_parse_event_ref(bad[i], strlen(bad[i]), &lim, &f->ev), -1);
        assert_int_equal(lp_parse_event(bad[i], strlen(bad[i]), &lim, &f->ev), -1);
    }
    /* An escape after the first 8 bytes is decoded, by either parser. */
    assert_int_equal(lp_parse_event_ref("DATA abcdefghij%41 t u h image multicast", 40,
                         &lim, &f->ev),
        0);
    NAME_IS(&f->ev.feed, "abcdefghijA");
}

/* A DATA line whose head (its bytes up to the packet specs) repeats the
 * last one's takes the names kept from that one, terminated; a line that
 * differs there, or names over this call's max_name, are parsed afresh. */
static void
test_event_head_repeats(void **state)
{
    struct fx *f = *state;
    char l1[] = "DATA feed t%20opic user host image unicast 3 4\n";
    char l2[] = "DATA feed t%20opic user host image unicast 7:1,2\n";
    const char *typed = "DATA feed t%20opic user host image unicast type=a/b 5";
    const char *not_spec = "DATA feed t%20opic user host image unicast x";
    const char *too_big = "DATA feed t%20opic user host image unicast 1001";
    struct lp_limits small = lim;

    assert_int_equal(lp_parse_event_ref(l1, strlen(l1) - 1, &lim, &f->ev), 0);
    lp_event_terminate(&f->ev);
    assert_ptr_equal(f->ev.feed.ptr, l1 + 5);
    assert_int_equal(lp_parse_event("+OK", 3, &lim, &f->ev), 0);
    for (int ref = 0; ref < 2; ref++) {
        assert_int_equal(ref ? lp_parse_event_ref(l2, strlen(l2) - 1, &lim, &f->ev)
                             : lp_parse_event(l2, strlen(l2) - 1, &lim, &f->ev),
            0);
        lp_event_terminate(&f->ev);
        assert_int_equal(f->ev.kind, LP_EV_DATA);
        assert_true(f->ev.feed.ptr < l2 || f->ev.feed.ptr >= l2 + sizeof(l2));
        NAME_IS(&f->ev.feed, "feed");
        NAME_IS(&f->ev.topic, "t opic");
        NAME_IS(&f->ev.user, "user");
        NAME_IS(&f->ev.host, "host");
        assert_int_equal(f->ev.content_type.len, 0);
        assert_true(f->ev.is_image && f->ev.is_unicast);
        assert_int_equal(f->ev.n_packets, 1);
        assert_int_equal(f->ev.payload_len, 7);
        assert_int_equal(f->ev.packets[0].entitlements.n, 2);
        assert_int_equal(f->ev.packets[0].entitlements.v[1], 2);
        assert_int_equal(l2[strlen(l2) - 1], '\n'); /* the line is not written to */
    }
    assert_int_equal(lp_parse_event(typed, strlen(typed), &lim, &f->ev), 0);
    NAME_IS(&f->ev.content_type, "a/b");
    assert_int_equal(f->ev.payload_len, 5);
    assert_int_equal(lp_parse_event(l2, strlen(l2) - 1, &lim, &f->ev), 0);
    assert_int_equal(f->ev.content_type.len, 0);
    assert_int_equal(lp_parse_event(not_spec, strlen(not_spec), &lim, &f->ev), -1);
    assert_int_equal(lp_parse_event(too_big, strlen(too_big), &lim, &f->ev), -1);
    assert_int_equal(f->ev.payload_len, 1001);
    small.max_name = 3;
    assert_int_equal(lp_parse_event(l2, strlen(l2) - 1, &small, &f->ev), -1);
    assert_int_equal(lp_parse_event(l2, strlen(l2) - 1, &lim, &f->ev), 0);
    NAME_IS(&f->ev.topic, "t opic");
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_error_codes),
        cmocka_unit_test_setup_teardown(test_sub_unsub, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pub, setup, teardown),
        cmocka_unit_test_setup_teardown(test_packet_spec_counts, setup, teardown),
        cmocka_unit_test_setup_teardown(test_token_lengths, setup, teardown),
        cmocka_unit_test_setup_teardown(test_send, setup, teardown),
        cmocka_unit_test_setup_teardown(test_feed_verbs, setup, teardown),
        cmocka_unit_test_setup_teardown(test_authorize, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ping_stats_verbose_quit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_framing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_verb_match, setup, teardown),
        cmocka_unit_test_setup_teardown(test_syntax_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_names, setup, teardown),
        cmocka_unit_test_setup_teardown(test_good_names, setup, teardown),
        cmocka_unit_test_setup_teardown(test_special_at_every_offset, setup, teardown),
        cmocka_unit_test_setup_teardown(test_event_tokens_at_every_length, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_client_id, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_packets, setup, teardown),
        cmocka_unit_test_setup_teardown(test_limits_keep_payload_len, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unknown_len_gives_no_payload, setup, teardown),
        cmocka_unit_test_setup_teardown(test_storage_reuse, setup, teardown),
        cmocka_unit_test_setup_teardown(test_no_storage_needed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_put_name, setup, teardown),
        cmocka_unit_test_setup_teardown(test_escape_round_trip_all_bytes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_escape_round_trip_utf8, setup, teardown),
        cmocka_unit_test_setup_teardown(test_format_data_round_trip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_content_type, setup, teardown),
        cmocka_unit_test_setup_teardown(test_format_data_content_type, setup, teardown),
        cmocka_unit_test_setup_teardown(test_format_data_stale_and_multicast, setup,
            teardown),
        cmocka_unit_test_setup_teardown(test_format_notification_authreq, setup, teardown),
        cmocka_unit_test_setup_teardown(test_format_replies, setup, teardown),
        cmocka_unit_test_setup_teardown(test_parse_text_events, setup, teardown),
        cmocka_unit_test_setup_teardown(test_event_storage_reuse, setup, teardown),
        cmocka_unit_test_setup_teardown(test_event_by_reference, setup, teardown),
        cmocka_unit_test_setup_teardown(test_event_head_repeats, setup, teardown),
        cmocka_unit_test_setup_teardown(test_format_special_at_every_offset, setup,
            teardown),
        cmocka_unit_test_setup_teardown(test_format_tail_stream, setup, teardown),
        cmocka_unit_test_setup_teardown(test_format_pong_stat_end, setup, teardown),
        cmocka_unit_test_setup_teardown(test_format_commands, setup, teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
