/*
 * The local line protocol (doc/PROTOCOL.md): command parsing for the daemon,
 * name unescaping and the packet specs both parsers share. Event parsing
 * for clients is in lineproto-event.c, formatting in lineproto-format.c,
 * framing in lineproto-frame.c; lineproto.h is the one public header.
 *
 * Parsing never allocates from an unchecked length: every count it sizes
 * storage from is bounded by the line's own length (which the caller bounds
 * with listen.max_line) and checked against the limits first.
 */
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>

#include "guid.h"
#include "lineproto.h"
#include "lineproto-int.h"
#include "util.h"

/* ---- error codes ---- */

static const char *const error_codes[] = {
    [LP_ERR_NONE] = "none",
    [LP_ERR_UNKNOWN_COMMAND] = "unknown-command",
    [LP_ERR_SYNTAX] = "syntax",
    [LP_ERR_BAD_NAME] = "bad-name",
    [LP_ERR_BAD_CLIENT_ID] = "bad-client-id",
    [LP_ERR_BAD_PACKET] = "bad-packet",
    [LP_ERR_LINE_TOO_LONG] = "line-too-long",
    [LP_ERR_PAYLOAD_TOO_LARGE] = "payload-too-large",
    [LP_ERR_TOO_MANY_PACKETS] = "too-many-packets",
    [LP_ERR_BAD_TERMINATOR] = "bad-terminator",
    [LP_ERR_NO_PACKETS] = "no-packets",
    [LP_ERR_BUS_DOWN] = "bus-down",
    [LP_ERR_TOO_MANY_SUBSCRIPTIONS] = "too-many-subscriptions",
    [LP_ERR_TOO_MANY_NOTIFICATIONS] = "too-many-notifications",
    [LP_ERR_TOO_MANY_AUTHORIZERS] = "too-many-authorizers",
    [LP_ERR_ALREADY_SUBSCRIBED] = "already-subscribed",
    [LP_ERR_NOT_SUBSCRIBED] = "not-subscribed",
    [LP_ERR_ALREADY_NOTIFYING] = "already-notifying",
    [LP_ERR_NOT_NOTIFYING] = "not-notifying",
    [LP_ERR_ALREADY_AUTHORIZER] = "already-authorizer",
    [LP_ERR_NOT_AUTHORIZER] = "not-authorizer",
    [LP_ERR_UNKNOWN_REQUEST] = "unknown-request",
    [LP_ERR_ALREADY_ANSWERED] = "already-answered",
    [LP_ERR_SLOW_CONSUMER] = "slow-consumer",
    [LP_ERR_SHUTTING_DOWN] = "shutting-down",
    [LP_ERR_TOO_MANY_SESSIONS] = "too-many-sessions",
    [LP_ERR_PERM] = "perm",
};

const char *
lp_error_code(enum lp_error e)
{
    if ((unsigned)e >= sizeof(error_codes) / sizeof(error_codes[0]) ||
        error_codes[e] == NULL)
        return "internal";
    return error_codes[e];
}

/* ---- byte classes ---- */

/* Strict UTF-8 (utf8_seq_len) throughout. */
bool
lp_utf8_valid(const unsigned char *s, size_t n)
{
    size_t i = 0, k;

    while (i < n) {
        if (s[i] < 0x80)
            i++;
        else if ((k = utf8_seq_len(s + i, n - i)) > 0)
            i += k;
        else
            return false;
    }
    return true;
}

/*
 * Decode a name token into dst (room for toklen + 1 bytes; decoding never
 * grows). Raw bytes that must be escaped are refused, so every name has
 * one spelling apart from optional extra escapes. *high (if not NULL) is
 * set when the name holds a byte >= 0x80, which only then needs the UTF-8
 * check. Returns 0 or -1 with a reason in *why.
 */
static int
decode_name(const char *tok, size_t toklen, char *dst, uint32_t *outlen, bool *high,
    const char **why)
{
    unsigned char seen = 0;
    size_t n = 0;

    if (toklen == 2 && tok[0] == '"' && tok[1] == '"') {
        dst[0] = '\0';
        *outlen = 0;
        return 0;
    }
    for (size_t i = 0; i < toklen; i++) {
        unsigned char c = (unsigned char)tok[i];

        if (!must_escape(c)) {
            seen |= c;
            dst[n++] = (char)c;
        } else if (c == '%') {
            int hi, lo;

            if (toklen - i < 3 || (hi = hex_value((unsigned char)tok[i + 1])) < 0 ||
                (lo = hex_value((unsigned char)tok[i + 2])) < 0) {
                *why = "'%' must be followed by two hex digits";
                return -1;
            }
            seen |= (unsigned char)(hi << 4 | lo);
            dst[n++] = (char)(hi << 4 | lo);
            i += 2;
        } else {
            *why = c == '"' ? "a '\"' in a name must be written %22"
                            : "control bytes in a name must be %-escaped";
            return -1;
        }
    }
    dst[n] = '\0';
    *outlen = (uint32_t)n;
    if (high != NULL)
        *high = (seen & 0x80) != 0;
    return 0;
}

int
lp_decode_name(const char *tok, size_t toklen, char *dst, uint32_t *outlen,
    const char **why)
{
    return decode_name(tok, toklen, dst, outlen, NULL, why);
}

/* ---- tokens and numbers ---- */

/* Optional '-', then decimal digits, within int32. */
static int
parse_i32(const char *p, size_t n, int32_t *out)
{
    bool neg = false;
    int64_t v = 0;

    if (n > 0 && p[0] == '-') {
        neg = true;
        p++;
        n--;
    }
    if (n == 0)
        return -1;
    for (size_t i = 0; i < n; i++) {
        if (p[i] < '0' || p[i] > '9')
            return -1;
        v = v * 10 + (p[i] - '0');
        if (v > (int64_t)INT32_MAX + 1)
            return -1;
    }
    if (neg)
        v = -v;
    if (v > INT32_MAX || v < INT32_MIN)
        return -1;
    *out = (int32_t)v;
    return 0;
}

/*
 * A comma list of int32 ("1,2,-3"). With dst NULL only checks it and
 * counts; otherwise stores the values. Returns the count or -1.
 */
long
lp_parse_ints(const char *p, size_t n, uint32_t max, int32_t *dst)
{
    uint32_t count = 0;
    size_t start = 0;

    for (size_t i = 0; i <= n; i++) {
        int32_t v;

        if (i < n && p[i] != ',')
            continue;
        if (count == max || parse_i32(p + start, i - start, &v) < 0)
            return -1;
        if (dst != NULL)
            dst[count] = v;
        count++;
        start = i + 1;
    }
    return (long)count;
}

static size_t
count_byte(const char *p, size_t n, char c)
{
    size_t k = 0;

    for (size_t i = 0; i < n; i++)
        k += p[i] == c;
    return k;
}

/* A message-safe excerpt of client input: printable ASCII, bounded. */
static void
excerpt(const struct tok *t, char *buf, size_t buflen)
{
    size_t n = t->n < buflen - 4 ? t->n : buflen - 4;
    size_t i;

    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)t->p[i];

        buf[i] = c > 0x20 && c < 0x7f ? (char)c : '?';
    }
    if (n < t->n) {
        memcpy(buf + i, "...", 3);
        i += 3;
    }
    buf[i] = '\0';
}

/* ---- storage ---- */

/* Grow-only storage; returns the (possibly moved) block or NULL. */
void *
lp_store_reserve(void **store, size_t *cap, size_t need)
{
    if (need > *cap) {
        size_t ncap = *cap < 256 ? 256 : *cap;
        void *p;

        while (ncap < need)
            ncap *= 2;
        if ((p = realloc(*store, ncap)) == NULL)
            return NULL;
        *store = p;
        *cap = ncap;
    }
    return *store;
}

/* ---- packet specs (shared by commands and events) ---- */

/* Fill packets[] and their entitlements by parsing the n validated specs
 * again: the rare case (ENTS, or many specs), kept out of line so that
 * lp_fill_packets's usual case saves no registers for it. */
void
lp_fill_from_specs(const char *p, const char *end, uint32_t max_ents, uint32_t n_specs,
    struct wire_packet *packets, int32_t *ents)
{
    struct tok t;
    uint32_t i = 0;

    while (i < n_specs && next_token(&p, end, &t)) {
        const char *tend = t.p + t.n, *q;
        struct wire_packet *pk = &packets[i++];

        q = spec_len(t.p, tend, &pk->len);
        pk->data = NULL;
        pk->entitlements.v = NULL;
        pk->entitlements.n = 0;
        if (q != NULL && q < tend) {
            long n = lp_parse_ints(q + 1, (size_t)(tend - q - 1), max_ents, ents);

            pk->entitlements.v = ents;
            pk->entitlements.n = (uint32_t)n;
            ents += n;
        }
    }
}

/* ---- commands ---- */

/* Most arguments a verb takes before its packet specs (SEND's). */
#define MAX_ARGS 5

/* Tokens a command line is split into at once: the verb, its arguments
 * and one more, whose presence tells a verb without packets that it was
 * given too many. */
#define LINE_TOKS (2 + MAX_ARGS)

struct verb_def {
    const char *name; /* upper case */
    unsigned char name_len;
    unsigned char n_fixed;    /* arguments before the packet specs (if any) */
    unsigned char n_optional; /* of those, how many may be left out */
    bool packets;             /* packet specs follow */
    const char *usage;
};

/* NAME, then the counts that follow from its arguments as parse_args
 * takes them (checked by the lineproto unit tests, through
 * lp_parse_command). */
#define VERB(name, n_fixed, n_optional, packets)                                           \
    name, sizeof name - 1, n_fixed, n_optional, packets

/* Indexed by enum lp_verb. */
static const struct verb_def verbs[] = {
    [LP_SUB] = { VERB("SUB", 2, 0, false), "<feed> <topic>" },
    [LP_UNSUB] = { VERB("UNSUB", 2, 0, false), "<feed> <topic>" },
    [LP_PUB] = { VERB("PUB", 3, 0, true),
        "<feed> <topic> <image|delta> [type=<content-type>] [PKT...]" },
    [LP_SEND] = { VERB("SEND", 4, 0, true),
        "<client-id> <feed> <topic> <image|delta> [type=<content-type>] [PKT...]" },
    [LP_NOTIFY] = { VERB("NOTIFY", 1, 0, false), "<feed>" },
    [LP_UNNOTIFY] = { VERB("UNNOTIFY", 1, 0, false), "<feed>" },
    /* No feed: every feed (the feed stays { NULL, 0 }; names are never empty). */
    [LP_AUTHORIZER] = { VERB("AUTHORIZER", 1, 1, false), "[feed]" },
    [LP_UNAUTHORIZER] = { VERB("UNAUTHORIZER", 1, 1, false), "[feed]" },
    [LP_AUTHORIZE] = { VERB("AUTHORIZE", 5, 1, false),
        "<client-id> <feed> <topic> <required|not-required> [ENTS]" },
    [LP_PING] = { VERB("PING", 1, 1, false), "[token]" },
    [LP_STATS] = { VERB("STATS", 1, 1, false), "[SESSIONS|LINK]" },
    [LP_VERBOSE] = { VERB("VERBOSE", 1, 0, false), "<on|off>" },
    [LP_QUIT] = { VERB("QUIT", 0, 0, false), "" },
    [LP_NAME] = { VERB("NAME", 1, 0, false), "<app-name>" },
};

#undef VERB

const char *
lp_verb_name(enum lp_verb verb)
{
    if ((unsigned)verb >= sizeof(verbs) / sizeof(verbs[0]))
        return NULL;
    return verbs[verb].name;
}

/* Case-insensitive match of a token against a word of n bytes (ASCII
 * letters and '-'); an exact byte match is the quick case. */
static inline bool
tok_eq(const struct tok *t, const char *word, size_t n)
{
    if (t->n != n)
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char a = (unsigned char)t->p[i], b = (unsigned char)word[i];

        /* Otherwise only the case bit may differ, and only for a letter. */
        if (a != b && ((a ^ b) != 0x20 || (unsigned)((a | 0x20) - 'a') > 25))
            return false;
    }
    return true;
}

/* Whether the n bytes at a and b are equal but for the case bit of each:
 * for a word of letters (every verb) exactly an ASCII case-insensitive
 * match, since only a letter's two cases differ by that bit alone. Two
 * overlapping loads of a word, or of a half or quarter word, compare any
 * n from 2 to 16 without a byte loop. */
static inline bool
letters_eq(const char *a, const char *b, size_t n)
{
    uint64_t x, y, u, v;

    if (n >= 8) {
        memcpy(&x, a, 8), memcpy(&y, b, 8);
        memcpy(&u, a + n - 8, 8), memcpy(&v, b + n - 8, 8);
    } else if (n >= 4) {
        uint32_t x4, y4, u4, v4;

        memcpy(&x4, a, 4), memcpy(&y4, b, 4);
        memcpy(&u4, a + n - 4, 4), memcpy(&v4, b + n - 4, 4);
        x = x4, y = y4, u = u4, v = v4;
    } else {
        uint16_t x2, y2, u2, v2;

        memcpy(&x2, a, 2), memcpy(&y2, b, 2);
        memcpy(&u2, a + n - 2, 2), memcpy(&v2, b + n - 2, 2);
        x = x2, y = y2, u = u2, v = v2;
    }
    return (((x ^ y) | (u ^ v)) & ~0x2020202020202020ull) == 0;
}

/* The verb a token names, or -1: the first byte and the length pick the
 * one candidate, which is then compared whole (verbs are letters only).
 * Only a letter's two cases give the same byte | 0x20, so the first byte
 * is known to match and the compare starts at the second (every verb has
 * at least two more). Always inline: left to itself the compiler calls
 * it. */
static inline __attribute__((always_inline)) int
find_verb(const struct tok *t)
{
    int v;

    switch (t->p[0] | 0x20) {
    case 'p':
        v = t->n == 3 ? LP_PUB : LP_PING;
        break;
    case 's':
        v = t->n == 3 ? LP_SUB : t->n == 4 ? LP_SEND : LP_STATS;
        break;
    case 'u':
        v = t->n == 5 ? LP_UNSUB : t->n == 8 ? LP_UNNOTIFY : LP_UNAUTHORIZER;
        break;
    case 'n':
        v = t->n == 4 ? LP_NAME : LP_NOTIFY;
        break;
    case 'a':
        v = t->n == 9 ? LP_AUTHORIZE : LP_AUTHORIZER;
        break;
    case 'v':
        v = LP_VERBOSE;
        break;
    case 'q':
        v = LP_QUIT;
        break;
    default:
        return -1;
    }
    return t->n == verbs[v].name_len && letters_eq(t->p + 1, verbs[v].name + 1, t->n - 1)
        ? v
        : -1;
}

/* Parsing context for one command. */
struct cmd_parse {
    const struct lp_limits *lim;
    enum lp_error *err;
    char *msg;
    size_t msglen;
};

static int fail(struct cmd_parse *cp, enum lp_error e, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int
fail(struct cmd_parse *cp, enum lp_error e, const char *fmt, ...)
{
    va_list ap;

    *cp->err = e;
    if (cp->msg != NULL && cp->msglen > 0) {
        va_start(ap, fmt);
        vsnprintf(cp->msg, cp->msglen, fmt, ap);
        va_end(ap);
    }
    return -1;
}

/* Copy n bytes from src to dst, telling whether any is >= 0x80 (only then
 * a name needs the UTF-8 check): eight bytes a step, the last eight
 * overlapping, below eight a byte a step. For the few bytes of a
 * command's arguments this costs less than a memcpy call and a scan. */
static bool
copy_high(char *dst, const char *src, size_t n)
{
    const uint64_t highs = 0x8080808080808080ull;
    uint64_t w, seen = 0;

    if (n < 8) {
        for (size_t i = 0; i < n; i++) {
            dst[i] = src[i];
            seen |= (unsigned char)src[i];
        }
        return (seen & 0x80) != 0;
    }
    for (size_t i = 0; i + 8 <= n; i += 8) {
        memcpy(&w, src + i, 8);
        memcpy(dst + i, &w, 8);
        seen |= w;
    }
    memcpy(&w, src + n - 8, 8);
    memcpy(dst + n - 8, &w, 8);
    return ((seen | w) & highs) != 0;
}

/* The checks of a client name decoded into dst (n bytes; high: it may
 * hold a byte >= 0x80). */
static int
name_refused(struct cmd_parse *cp, const char *what, const char *dst, uint32_t n, bool high)
{
    if (n == 0)
        return fail(cp, LP_ERR_BAD_NAME, "bad %s: must not be empty", what);
    if (n > cp->lim->max_name)
        return fail(cp, LP_ERR_BAD_NAME, "bad %s: %u bytes, at most %u", what, (unsigned)n,
            (unsigned)cp->lim->max_name);
    if (high && !lp_utf8_valid((const unsigned char *)dst, n))
        return fail(cp, LP_ERR_BAD_NAME, "bad %s: not valid UTF-8", what);
    return 0;
}

/* client_name for a name that needs more than a NUL: decoded, or long,
 * or perhaps not UTF-8 (high), or refused. Cold and never inlined: when
 * it was, every name paid its register saves. */
static int __attribute__((cold, noinline))
client_name_checked(struct cmd_parse *cp, const struct tok *t, bool clean, bool high,
    const char *what, char *dst, struct lp_name *out)
{
    const char *why = NULL;
    uint32_t n;

    if (clean) {
        dst[t->n] = '\0';
        n = t->n > UINT32_MAX ? UINT32_MAX : (uint32_t)t->n;
    } else if (decode_name(t->p, t->n, dst, &n, &high, &why) < 0) {
        return fail(cp, LP_ERR_BAD_NAME, "bad %s: %s", what, why);
    }
    if (name_refused(cp, what, dst, n, high) < 0)
        return -1;
    out->ptr = dst;
    out->len = n;
    return 0;
}

/*
 * A client-supplied name at dst, checked. dst is where its token lies in
 * the copy of the arguments: a clean token (nothing to decode: nearly
 * every one) is ready there but for its NUL, any other is decoded over
 * it (decoding never grows). high: the arguments hold a byte >= 0x80, so
 * a clean name may need the UTF-8 check (an ASCII one passes it). A clean
 * token is never empty, so the usual name is the one test here, inline.
 */
static inline int
client_name(struct cmd_parse *cp, const struct tok *t, bool clean, bool high,
    const char *what, char *dst, struct lp_name *out)
{
    if (!clean || high || t->n > cp->lim->max_name)
        return client_name_checked(cp, t, clean, high, what, dst, out);
    dst[t->n] = '\0';
    out->ptr = dst;
    out->len = (uint32_t)t->n;
    return 0;
}

static int
keyword_any_case(struct cmd_parse *cp, const struct tok *t, const char *yes, size_t yes_len,
    const char *no, size_t no_len, bool *out)
{
    char ex[40];

    if (tok_eq(t, yes, yes_len)) {
        *out = true;
        return 0;
    }
    if (tok_eq(t, no, no_len)) {
        *out = false;
        return 0;
    }
    excerpt(t, ex, sizeof(ex));
    return fail(cp, LP_ERR_SYNTAX, "expected %s or %s, got '%s'", yes, no, ex);
}

/* One of two keywords: as the docs write them (nearly always) by a compare
 * that inlines, since KEYWORD passes their lengths as constants. */
static inline int
keyword(struct cmd_parse *cp, const struct tok *t, const char *yes, size_t yes_len,
    const char *no, size_t no_len, bool *out)
{
    if (t->n == yes_len && memcmp(t->p, yes, yes_len) == 0)
        *out = true;
    else if (t->n == no_len && memcmp(t->p, no, no_len) == 0)
        *out = false;
    else
        return keyword_any_case(cp, t, yes, yes_len, no, no_len, out);
    return 0;
}

/* keyword() with the two words' lengths known at compile time. */
#define KEYWORD(cp, t, yes, no, out)                                                       \
    keyword(cp, t, yes, sizeof yes - 1, no, sizeof no - 1, out)

static void
cmd_reset(struct lp_cmd *cmd)
{
    void *store = cmd->store;
    size_t cap = cmd->store_cap;

    zero_bytes(cmd, sizeof(*cmd));
    cmd->store = store;
    cmd->store_cap = cap;
}

void
lp_cmd_init(struct lp_cmd *cmd)
{
    memset(cmd, 0, sizeof(*cmd));
}

void
lp_cmd_free(struct lp_cmd *cmd)
{
    free(cmd->store);
    memset(cmd, 0, sizeof(*cmd));
}

/* Decode a PUB/SEND content type: a name that may be empty, and only for a
 * bus that carries one. */
static int
client_content_type(struct cmd_parse *cp, const struct tok *t, char *dst,
    struct lp_name *out)
{
    const char *why = NULL;
    uint32_t n;

    if (cp->lim->bus_protocol != 0 && cp->lim->bus_protocol < WIRE_V6)
        return fail(cp, LP_ERR_SYNTAX,
            "type= needs bus protocol 6; the bus "
            "speaks %u, which has only image or delta",
            (unsigned)cp->lim->bus_protocol);
    if (lp_decode_name(t->p, t->n, dst, &n, &why) < 0)
        return fail(cp, LP_ERR_BAD_NAME, "bad content type: %s", why);
    if (n > cp->lim->max_name)
        return fail(cp, LP_ERR_BAD_NAME, "bad content type: %u bytes, at most %u",
            (unsigned)n, (unsigned)cp->lim->max_name);
    if (!lp_utf8_valid((const unsigned char *)dst, n))
        return fail(cp, LP_ERR_BAD_NAME, "bad content type: not valid UTF-8");
    out->ptr = dst;
    out->len = n;
    return 0;
}

/* Apply the packet checks, after the fixed arguments were found good. */
static int
check_packets(struct cmd_parse *cp, const struct pkt_scan *s)
{
    char ex[40];

    if (s->bad != NULL) {
        excerpt(&s->bad_tok, ex, sizeof(ex));
        return fail(cp, LP_ERR_BAD_PACKET, "packet '%s': %s", ex, s->bad);
    }
    if (s->n_specs > cp->lim->max_packets)
        return fail(cp, LP_ERR_TOO_MANY_PACKETS, "%u packets, at most %u",
            (unsigned)s->n_specs, (unsigned)cp->lim->max_packets);
    if (s->payload_len > cp->lim->max_payload)
        return fail(cp, LP_ERR_PAYLOAD_TOO_LARGE, "%llu payload bytes, at most %u",
            (unsigned long long)s->payload_len, (unsigned)cp->lim->max_payload);
    return 0;
}

/* A command's arguments as parse_args takes them. */
struct cmd_args {
    struct cmd_parse *cp;
    struct lp_cmd *cmd;
    const struct tok *t; /* the tokens */
    const bool *clean;   /* each: nothing to decode */
    size_t n;            /* how many were given */
    char *names;         /* the copy of their span */
    int32_t *ents;       /* room for AUTHORIZE's entitlements */
    bool high;           /* the span holds a byte >= 0x80 */
};

/* Argument i, a name, at its place in the copy of the arguments. */
static inline int
arg_name(const struct cmd_args *a, size_t i, const char *what, struct lp_name *out)
{
    return client_name(a->cp, &a->t[i], a->clean[i], a->high, what,
        a->names + (a->t[i].p - a->t[0].p), out);
}

static inline int
arg_app(const struct cmd_args *a, size_t i)
{
    struct lp_cmd *cmd = a->cmd;

    if (arg_name(a, i, "app name", &cmd->app) < 0)
        return -1;
    if (cmd->app.len > LP_MAX_APP_NAME)
        return fail(a->cp, LP_ERR_BAD_NAME, "bad app name: %u bytes, at most %d",
            (unsigned)cmd->app.len, LP_MAX_APP_NAME);
    return 0;
}

static inline int
arg_client_id(const struct cmd_args *a, size_t i)
{
    const struct tok *t = &a->t[i];
    char ex[40];

    if (guid_from_text(t->p, t->n, a->cmd->client_id) == 0)
        return 0;
    excerpt(t, ex, sizeof(ex));
    return fail(a->cp, LP_ERR_BAD_CLIENT_ID,
        "'%s' is not a client id like 00112233-4455-6677-8899-aabbccddeeff", ex);
}

static inline int
arg_ents(const struct cmd_args *a, size_t i)
{
    const struct tok *t = &a->t[i];
    uint32_t max = a->cp->lim->max_entitlements;
    long n = lp_parse_ints(t->p, t->n, max, a->ents);
    char ex[40];

    if (n < 0) {
        excerpt(t, ex, sizeof(ex));
        return fail(a->cp, LP_ERR_SYNTAX,
            "entitlements '%s': a comma list of int32 values, at most %u", ex,
            (unsigned)max);
    }
    a->cmd->entitlements.v = a->ents;
    a->cmd->entitlements.n = (uint32_t)n;
    return 0;
}

static inline int
arg_view(const struct cmd_args *a, size_t i)
{
    const struct tok *t = &a->t[i];
    char ex[40];

    if (tok_is(t, "SESSIONS")) {
        a->cmd->stats_view = LP_STATS_SESSIONS;
    } else if (tok_is(t, "LINK")) {
        a->cmd->stats_view = LP_STATS_LINK;
    } else {
        excerpt(t, ex, sizeof(ex));
        return fail(a->cp, LP_ERR_SYNTAX, "expected SESSIONS or LINK, got '%s'", ex);
    }
    return 0;
}

/* PING's token, raw (not unescaped), at its place in the copy. */
static inline int
arg_token(const struct cmd_args *a, size_t i)
{
    const struct tok *t = &a->t[i];
    char *at = a->names + (t->p - a->t[0].p);

    at[t->n] = '\0';
    a->cmd->token.ptr = at;
    a->cmd->token.len = (uint32_t)t->n;
    return 0;
}

/*
 * The verb's arguments (a->n of them: its fixed ones, less any optional
 * ones left out), each checked in order: the first refusal is the one
 * reported. A switch on the verb, then straight-line code for its
 * arguments; the counts in verbs[] follow from it.
 */
static int
parse_args(const struct cmd_args *a)
{
    struct lp_cmd *cmd = a->cmd;
    const struct tok *t = a->t;

    switch (cmd->verb) {
    case LP_PUB:
        if (arg_name(a, 0, "feed", &cmd->feed) < 0 ||
            arg_name(a, 1, "topic", &cmd->topic) < 0)
            return -1;
        return KEYWORD(a->cp, &t[2], "image", "delta", &cmd->is_image);
    case LP_SEND:
        if (arg_client_id(a, 0) < 0 || arg_name(a, 1, "feed", &cmd->feed) < 0 ||
            arg_name(a, 2, "topic", &cmd->topic) < 0)
            return -1;
        return KEYWORD(a->cp, &t[3], "image", "delta", &cmd->is_image);
    case LP_SUB:
    case LP_UNSUB:
        if (arg_name(a, 0, "feed", &cmd->feed) < 0)
            return -1;
        return arg_name(a, 1, "topic", &cmd->topic);
    case LP_NOTIFY:
    case LP_UNNOTIFY:
        return arg_name(a, 0, "feed", &cmd->feed);
    case LP_AUTHORIZER: /* no feed: every feed */
    case LP_UNAUTHORIZER:
        return a->n > 0 ? arg_name(a, 0, "feed", &cmd->feed) : 0;
    case LP_AUTHORIZE:
        if (arg_client_id(a, 0) < 0 || arg_name(a, 1, "feed", &cmd->feed) < 0 ||
            arg_name(a, 2, "topic", &cmd->topic) < 0 ||
            KEYWORD(a->cp, &t[3], "required", "not-required", &cmd->required) < 0)
            return -1;
        return a->n > 4 ? arg_ents(a, 4) : 0;
    case LP_PING:
        return a->n > 0 ? arg_token(a, 0) : 0;
    case LP_STATS:
        return a->n > 0 ? arg_view(a, 0) : 0;
    case LP_VERBOSE:
        return KEYWORD(a->cp, &t[0], "on", "off", &cmd->on);
    case LP_NAME:
        return arg_app(a, 0);
    case LP_QUIT:
        break;
    }
    return 0;
}

bool
lp_head_has_payload(const char *head, size_t n)
{
    const char *p = head, *end = head + n;
    struct tok verb;
    int v;

    /* A verb that runs to the end of the head may go on past it. */
    if (!next_token(&p, end, &verb) || verb.p + verb.n == end)
        return false;
    return (v = find_verb(&verb)) >= 0 && verbs[v].packets;
}

int
lp_parse_command(const char *line, size_t len, const struct lp_limits *lim,
    struct lp_cmd *cmd, enum lp_error *err, char *msg, size_t msglen)
{
    struct cmd_parse cp = { lim, err, msg, msglen };
    const char *p = line, *end;
    const struct verb_def *vd;
    struct tok toks[LINE_TOKS], *args = toks + 1, ctype = { NULL, 0 };
    bool cleans[LINE_TOKS], *clean = cleans + 1;
    struct pkt_scan scan;
    size_t ntok, nfix, nopt, nargs = 0, span = 0, names_room = 0, pk_room = 0, ent_room = 0,
                             need;
    bool has_packets, has_type = false, high = false, sized;
    char ex[40], *names;
    int32_t *ents;
    long n_auth_ents = 0;
    int verb;

    cmd_reset(cmd);
    *err = LP_ERR_NONE;
    if (msg != NULL && msglen > 0)
        msg[0] = '\0';
    if (len > 0 && line[len - 1] == '\r')
        len--;
    end = line + len;

    /* The verb and its arguments in one walk of the line's special bytes;
     * p is then where the packet specs start (end when there are none). */
    if ((ntok = special_tokens(&p, end, toks, cleans, LINE_TOKS)) == 0)
        return fail(&cp, LP_ERR_SYNTAX, "empty line");
    if ((verb = find_verb(&toks[0])) < 0) {
        excerpt(&toks[0], ex, sizeof(ex));
        return fail(&cp, LP_ERR_UNKNOWN_COMMAND, "unknown command '%s'", ex);
    }
    cmd->verb = (enum lp_verb)verb;
    vd = &verbs[verb];
    nfix = vd->n_fixed;
    nopt = vd->n_optional;
    has_packets = vd->packets;
    nargs = ntok - 1 < nfix ? ntok - 1 : nfix;
    if (nargs < nfix - nopt)
        return fail(&cp, LP_ERR_SYNTAX, "%s needs %s", vd->name, vd->usage);
    p = ntok > 1 + nfix ? args[nfix].p : end;

    /* Measure the payload first so that even a refused PUB/SEND tells the
     * caller how many bytes to skip. */
    if (has_packets) {
        has_type = take_type_token(&p, end, &ctype);
        lp_scan_packets(p, end, lim->max_entitlements, &scan);
        if (scan.lens_ok) {
            cmd->n_packets = scan.n_specs;
            cmd->payload_len = scan.payload_len;
        }
    } else if (p < end) {
        if (vd->usage[0] == '\0')
            return fail(&cp, LP_ERR_SYNTAX, "%s takes no arguments", vd->name);
        return fail(&cp, LP_ERR_SYNTAX, "too many arguments: %s %s", vd->name, vd->usage);
    } else {
        scan.n_specs = scan.n_ents = 0; /* what the storage reads */
        scan.bad = NULL;
    }

    /* Storage: packets, then entitlements, then the decoded names. A
     * refused packet line is not sized from its specs (sized false). */
    if (nargs > 0) { /* the tokens' span, copied whole, and a NUL after it */
        span = (size_t)(args[nargs - 1].p + args[nargs - 1].n - args[0].p);
        names_room = span + 1;
    }
    if (has_type)
        names_room += ctype.n + 1;
    if (cmd->verb == LP_AUTHORIZE && nargs == nfix) /* room: one per comma + 1 */
        n_auth_ents = (long)count_byte(args[4].p, args[4].n, ',') + 1;
    sized = scan.bad == NULL && scan.n_specs <= lim->max_packets;
    if (sized) {
        pk_room = ALIGN8(scan.n_specs * sizeof(struct wire_packet));
        ent_room = ALIGN8(((size_t)scan.n_ents + (size_t)n_auth_ents) * sizeof(int32_t));
    }
    need = pk_room + ent_room + names_room;
    if (need > 0 && lp_store_reserve(&cmd->store, &cmd->store_cap, need) == NULL)
        return fail(&cp, LP_ERR_SYNTAX, "out of memory");
    if (cmd->store == NULL) {
        /* Nothing to store (STATS, QUIT...) and nothing stored yet. */
        ents = NULL;
        names = NULL;
    } else {
        if (sized)
            cmd->packets = cmd->store;
        ents = sized ? (int32_t *)((char *)cmd->store + pk_room) : NULL;
        names = (char *)cmd->store + pk_room + ent_room;
    }

    /* The arguments are copied as they lie in the line, in one go: a name
     * or token is then at its offset there, ended by a NUL over the
     * separator after it (or the room's last byte). */
    if (nargs > 0)
        high = copy_high(names, args[0].p, span);
    if (parse_args(&(struct cmd_args){ &cp, cmd, args, clean, nargs, names, ents, high }) <
        0)
        goto refused;

    if (has_type) {
        if (nargs > 0)
            names += span + 1;
        if (client_content_type(&cp, &ctype, names, &cmd->content_type) < 0)
            goto refused;
    }
    if (has_packets) {
        /* sized: no bad spec and not too many (check_packets says which) */
        if ((!sized || scan.payload_len > lim->max_payload) &&
            check_packets(&cp, &scan) < 0)
            goto refused;
        lp_fill_packets(p, end, lim->max_entitlements, &scan, cmd->packets, ents);
    }
    return 0;

refused:
    cmd->packets = NULL;
    return -1;
}

void
lp_cmd_attach_payload(struct lp_cmd *cmd, const uint8_t *payload)
{
    if (cmd->packets == NULL)
        return;
    for (uint32_t i = 0; i < cmd->n_packets; i++) {
        struct wire_packet *pk = &cmd->packets[i];

        pk->data = pk->len > 0 ? payload : NULL;
        payload += pk->len;
    }
}
