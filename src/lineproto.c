/*
 * The local line protocol (doc/PROTOCOL.md): command parsing for the daemon,
 * event formatting for the daemon, event parsing for clients.
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

/* Bytes a name token must carry as %XX: they would break tokenising or
 * framing, or (") collide with the empty-name token. */
static inline bool
must_escape(unsigned char c)
{
    return c <= 0x20 || c == 0x7f || c == '%' || c == '"';
}

static inline bool
is_sep(char c)
{
    return c == ' ' || c == '\t';
}

/* Strict UTF-8 (RFC 3629): no overlongs, no surrogates, nothing past
 * U+10FFFF. The bus is .NET: anything else would be mangled upstream. */
static bool
utf8_valid(const unsigned char *s, size_t n)
{
    size_t i = 0;

    while (i < n) {
        unsigned char c = s[i];
        size_t need;
        uint32_t cp;

        if (c < 0x80) {
            i++;
            continue;
        } else if (c >= 0xc2 && c <= 0xdf) {
            need = 1;
            cp = c & 0x1f;
        } else if (c >= 0xe0 && c <= 0xef) {
            need = 2;
            cp = c & 0x0f;
        } else if (c >= 0xf0 && c <= 0xf4) {
            need = 3;
            cp = c & 0x07;
        } else {
            return false;
        }
        if (n - i - 1 < need)
            return false;
        for (size_t k = 1; k <= need; k++) {
            if ((s[i + k] & 0xc0) != 0x80)
                return false;
            cp = (cp << 6) | (s[i + k] & 0x3f);
        }
        if ((need == 2 && cp < 0x800) || (need == 3 && cp < 0x10000) ||
            (cp >= 0xd800 && cp <= 0xdfff) || cp > 0x10ffff)
            return false;
        i += need + 1;
    }
    return true;
}

/* ---- small number formatting (snprintf is too slow for the hot path) ---- */

static size_t
put_u64(char *dst, uint64_t v)
{
    char tmp[20];
    size_t n = 0;

    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0);
    for (size_t i = 0; i < n; i++)
        dst[i] = tmp[n - 1 - i];
    return n;
}

static size_t
put_i32(char *dst, int32_t v)
{
    if (v < 0) {
        dst[0] = '-';
        return 1 + put_u64(dst + 1, (uint64_t)(-(int64_t)v));
    }
    return put_u64(dst, (uint64_t)v);
}

/* ---- name escaping ---- */

static size_t
escaped_len(const char *ptr, size_t len)
{
    size_t n = len;

    if (len == 0)
        return 2;
    for (size_t i = 0; i < len; i++)
        if (must_escape((unsigned char)ptr[i]))
            n += 2;
    return n;
}

/* Write the token for a name into dst (room for escaped_len bytes). */
static size_t
put_escaped(char *dst, const char *ptr, size_t len)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t n = 0;

    if (len == 0) {
        dst[0] = '"';
        dst[1] = '"';
        return 2;
    }
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)ptr[i];

        if (must_escape(c)) {
            dst[n++] = '%';
            dst[n++] = hex[c >> 4];
            dst[n++] = hex[c & 0x0f];
        } else {
            dst[n++] = (char)c;
        }
    }
    return n;
}

int
lp_put_name(struct evbuffer *out, const char *ptr, size_t len)
{
    struct evbuffer_iovec vec;
    size_t need = escaped_len(ptr, len);

    if (need == len)
        return evbuffer_add(out, ptr, len);
    if (evbuffer_reserve_space(out, (ev_ssize_t)need, &vec, 1) < 1)
        return -1;
    vec.iov_len = put_escaped(vec.iov_base, ptr, len);
    return evbuffer_commit_space(out, &vec, 1);
}

/*
 * Decode a name token into dst (room for toklen + 1 bytes; decoding never
 * grows). Raw bytes that must be escaped are refused, so every name has
 * one spelling apart from optional extra escapes. Returns 0 or -1 with a
 * reason in *why.
 */
static int
decode_name(const char *tok, size_t toklen, char *dst, uint32_t *outlen,
    const char **why)
{
    size_t n = 0;

    if (toklen == 2 && tok[0] == '"' && tok[1] == '"') {
        dst[0] = '\0';
        *outlen = 0;
        return 0;
    }
    for (size_t i = 0; i < toklen; i++) {
        unsigned char c = (unsigned char)tok[i];

        if (c == '%') {
            int hi, lo;

            if (toklen - i < 3 || (hi = hex_value((unsigned char)tok[i + 1])) < 0 ||
                (lo = hex_value((unsigned char)tok[i + 2])) < 0) {
                *why = "'%' must be followed by two hex digits";
                return -1;
            }
            dst[n++] = (char)(hi << 4 | lo);
            i += 2;
        } else if (must_escape(c)) {
            *why = c == '"' ? "a '\"' in a name must be written %22"
                            : "control bytes in a name must be %-escaped";
            return -1;
        } else {
            dst[n++] = (char)c;
        }
    }
    dst[n] = '\0';
    *outlen = (uint32_t)n;
    return 0;
}

/* ---- tokens and numbers ---- */

struct tok {
    const char *p;
    size_t n;
};

static bool
next_token(const char **pp, const char *end, struct tok *t)
{
    const char *p = *pp;

    while (p < end && is_sep(*p))
        p++;
    if (p == end) {
        *pp = p;
        return false;
    }
    t->p = p;
    while (p < end && !is_sep(*p))
        p++;
    t->n = (size_t)(p - t->p);
    *pp = p;
    return true;
}

static inline char
ascii_lower(char c)
{
    return c >= 'A' && c <= 'Z' ? (char)(c - 'A' + 'a') : c;
}

/* Case-insensitive keyword match (ASCII). */
static bool
tok_is(const struct tok *t, const char *word)
{
    size_t i;

    for (i = 0; i < t->n; i++)
        if (word[i] == '\0' || ascii_lower(t->p[i]) != ascii_lower(word[i]))
            return false;
    return word[i] == '\0';
}

/* Decimal digits only, no sign, at most UINT32_MAX. */
static int
parse_u32(const char *p, size_t n, uint32_t *out)
{
    uint64_t v = 0;

    if (n == 0)
        return -1;
    for (size_t i = 0; i < n; i++) {
        if (p[i] < '0' || p[i] > '9')
            return -1;
        v = v * 10 + (uint64_t)(p[i] - '0');
        if (v > UINT32_MAX)
            return -1;
    }
    *out = (uint32_t)v;
    return 0;
}

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
static long
parse_ints(const char *p, size_t n, uint32_t max, int32_t *dst)
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

#define ALIGN8(x) (((x) + 7u) & ~(size_t)7u)

/* Grow-only storage; returns the (possibly moved) block or NULL. */
static void *
store_reserve(void **store, size_t *cap, size_t need)
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

struct pkt_scan {
    uint32_t n_specs;       /* packet specs on the line */
    uint32_t n_ents;        /* entitlements across all specs */
    uint64_t payload_len;   /* sum of LENs */
    bool lens_ok;           /* every LEN parsed: payload_len is right */
    const char *bad;        /* first problem, or NULL */
    struct tok bad_tok;
};

/* Split "LEN[:ENTS]". */
static void
split_spec(const struct tok *t, struct tok *len, struct tok *ents, bool *has_ents)
{
    const char *colon = memchr(t->p, ':', t->n);

    len->p = t->p;
    len->n = colon != NULL ? (size_t)(colon - t->p) : t->n;
    *has_ents = colon != NULL;
    if (colon != NULL) {
        ents->p = colon + 1;
        ents->n = t->n - len->n - 1;
    }
}

/* Validate and measure the packet specs from p to end, storing nothing. */
static void
scan_packets(const char *p, const char *end, uint32_t max_ents, struct pkt_scan *s)
{
    struct tok t;

    memset(s, 0, sizeof(*s));
    s->lens_ok = true;
    while (next_token(&p, end, &t)) {
        struct tok lt, et;
        bool has_ents;
        uint32_t len;

        s->n_specs++;
        split_spec(&t, &lt, &et, &has_ents);
        if (parse_u32(lt.p, lt.n, &len) < 0) {
            s->lens_ok = false;
            if (s->bad == NULL) {
                s->bad = "LEN must be a decimal number of bytes (0 to 4294967295)";
                s->bad_tok = t;
            }
            continue;
        }
        s->payload_len += len;
        if (has_ents) {
            long n = parse_ints(et.p, et.n, max_ents, NULL);

            if (n < 0) {
                if (s->bad == NULL) {
                    s->bad = "ENTS must be a comma list of int32 values, at most max_entitlements";
                    s->bad_tok = t;
                }
                continue;
            }
            s->n_ents += (uint32_t)n;
        }
    }
}

/* Fill packets[] (and their entitlements from ents) from specs already
 * validated by scan_packets. */
static void
fill_packets(const char *p, const char *end, uint32_t max_ents,
    struct wire_packet *packets, uint32_t n_specs, int32_t *ents)
{
    struct tok t;
    uint32_t i = 0;

    while (i < n_specs && next_token(&p, end, &t)) {
        struct tok lt, et;
        bool has_ents;
        struct wire_packet *pk = &packets[i++];

        split_spec(&t, &lt, &et, &has_ents);
        (void)parse_u32(lt.p, lt.n, &pk->len);
        pk->data = NULL;
        pk->entitlements.v = NULL;
        pk->entitlements.n = 0;
        if (has_ents) {
            long n = parse_ints(et.p, et.n, max_ents, ents);

            pk->entitlements.v = ents;
            pk->entitlements.n = (uint32_t)n;
            ents += n;
        }
    }
}

/* ---- commands ---- */

enum arg_kind {
    A_END,
    A_FEED,         /* a client name (feed or topic) */
    A_TOPIC,
    A_CLIENT_ID,
    A_IMAGE,        /* image | delta */
    A_REQUIRED,     /* required | not-required */
    A_ON_OFF,
    A_OPT_ENTS,     /* optional comma list */
    A_OPT_TOKEN,    /* optional raw token */
    A_PACKETS,      /* zero or more packet specs to the end of the line */
};

#define MAX_ARGS 6

struct verb_def {
    const char *name;       /* upper case */
    enum lp_verb verb;
    enum arg_kind args[MAX_ARGS];
    const char *usage;
};

static const struct verb_def verbs[] = {
    { "SUB", LP_SUB, { A_FEED, A_TOPIC }, "<feed> <topic>" },
    { "UNSUB", LP_UNSUB, { A_FEED, A_TOPIC }, "<feed> <topic>" },
    { "PUB", LP_PUB, { A_FEED, A_TOPIC, A_IMAGE, A_PACKETS },
      "<feed> <topic> <image|delta> [type=<content-type>] [PKT...]" },
    { "SEND", LP_SEND, { A_CLIENT_ID, A_FEED, A_TOPIC, A_IMAGE, A_PACKETS },
      "<client-id> <feed> <topic> <image|delta> [type=<content-type>] [PKT...]" },
    { "NOTIFY", LP_NOTIFY, { A_FEED }, "<feed>" },
    { "UNNOTIFY", LP_UNNOTIFY, { A_FEED }, "<feed>" },
    { "AUTHORIZER", LP_AUTHORIZER, { A_FEED }, "<feed>" },
    { "UNAUTHORIZER", LP_UNAUTHORIZER, { A_FEED }, "<feed>" },
    { "AUTHORIZE", LP_AUTHORIZE, { A_CLIENT_ID, A_FEED, A_TOPIC, A_REQUIRED, A_OPT_ENTS },
      "<client-id> <feed> <topic> <required|not-required> [ENTS]" },
    { "PING", LP_PING, { A_OPT_TOKEN }, "[token]" },
    { "STATS", LP_STATS, { A_END }, "" },
    { "VERBOSE", LP_VERBOSE, { A_ON_OFF }, "<on|off>" },
    { "QUIT", LP_QUIT, { A_END }, "" },
};

static const struct verb_def *
find_verb(const struct tok *t)
{
    for (size_t i = 0; i < sizeof(verbs) / sizeof(verbs[0]); i++)
        if (tok_is(t, verbs[i].name))
            return &verbs[i];
    return NULL;
}

/* Parsing context for one command. */
struct cmd_parse {
    const struct lp_limits *lim;
    enum lp_error *err;
    char *msg;
    size_t msglen;
};

static int
fail(struct cmd_parse *cp, enum lp_error e, const char *fmt, ...)
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

/* Decode a client-supplied name into dst and check it. */
static int
client_name(struct cmd_parse *cp, const struct tok *t, const char *what,
    char *dst, struct lp_name *out)
{
    const char *why = NULL;
    uint32_t n;

    if (decode_name(t->p, t->n, dst, &n, &why) < 0)
        return fail(cp, LP_ERR_BAD_NAME, "bad %s: %s", what, why);
    if (n == 0)
        return fail(cp, LP_ERR_BAD_NAME, "bad %s: must not be empty", what);
    if (n > cp->lim->max_name)
        return fail(cp, LP_ERR_BAD_NAME, "bad %s: %u bytes, at most %u", what,
            (unsigned)n, (unsigned)cp->lim->max_name);
    if (!utf8_valid((const unsigned char *)dst, n))
        return fail(cp, LP_ERR_BAD_NAME, "bad %s: not valid UTF-8", what);
    out->ptr = dst;
    out->len = n;
    return 0;
}

static int
keyword(struct cmd_parse *cp, const struct tok *t, const char *yes,
    const char *no, bool *out)
{
    char ex[40];

    if (tok_is(t, yes)) {
        *out = true;
        return 0;
    }
    if (tok_is(t, no)) {
        *out = false;
        return 0;
    }
    excerpt(t, ex, sizeof(ex));
    return fail(cp, LP_ERR_SYNTAX, "expected %s or %s, got '%s'", yes, no, ex);
}

static void
cmd_reset(struct lp_cmd *cmd)
{
    void *store = cmd->store;
    size_t cap = cmd->store_cap;

    memset(cmd, 0, sizeof(*cmd));
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

#define LP_TYPE_PREFIX "type="
#define LP_TYPE_PREFIX_LEN (sizeof LP_TYPE_PREFIX - 1)

/* Take the optional "type=<content type>" token at *pp (its value to t);
 * anything else is left for the packet specs. */
static bool
take_type_token(const char **pp, const char *end, struct tok *t)
{
    const char *p = *pp;

    if (!next_token(&p, end, t) || t->n < LP_TYPE_PREFIX_LEN ||
        memcmp(t->p, LP_TYPE_PREFIX, LP_TYPE_PREFIX_LEN) != 0)
        return false;
    t->p += LP_TYPE_PREFIX_LEN;
    t->n -= LP_TYPE_PREFIX_LEN;
    *pp = p;
    return true;
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
        return fail(cp, LP_ERR_SYNTAX, "type= needs bus protocol 6; the bus "
            "speaks %u, which has only image or delta", (unsigned)cp->lim->bus_protocol);
    if (decode_name(t->p, t->n, dst, &n, &why) < 0)
        return fail(cp, LP_ERR_BAD_NAME, "bad content type: %s", why);
    if (n > cp->lim->max_name)
        return fail(cp, LP_ERR_BAD_NAME, "bad content type: %u bytes, at most %u",
            (unsigned)n, (unsigned)cp->lim->max_name);
    if (!utf8_valid((const unsigned char *)dst, n))
        return fail(cp, LP_ERR_BAD_NAME, "bad content type: not valid UTF-8");
    out->ptr = dst;
    out->len = n;
    return 0;
}

/* Count the fixed arguments and find where packet specs begin. */
static size_t
n_fixed(const struct verb_def *vd, bool *packets, size_t *optional)
{
    size_t n = 0;

    *packets = false;
    *optional = 0;
    while (n < MAX_ARGS && vd->args[n] != A_END) {
        if (vd->args[n] == A_PACKETS) {
            *packets = true;
            break;
        }
        if (vd->args[n] == A_OPT_ENTS || vd->args[n] == A_OPT_TOKEN)
            (*optional)++;
        n++;
    }
    return n;
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

int
lp_parse_command(const char *line, size_t len, const struct lp_limits *lim,
    struct lp_cmd *cmd, enum lp_error *err, char *msg, size_t msglen)
{
    struct cmd_parse cp = { lim, err, msg, msglen };
    const char *p = line, *end;
    const struct verb_def *vd;
    struct tok verb, args[MAX_ARGS], extra, ctype;
    struct pkt_scan scan;
    size_t nfix, nopt, nargs = 0, names_room = 0, need;
    bool has_packets, has_type = false;
    char ex[40], *names;
    int32_t *ents;
    long n_auth_ents = 0;

    cmd_reset(cmd);
    *err = LP_ERR_NONE;
    if (msg != NULL && msglen > 0)
        msg[0] = '\0';
    if (len > 0 && line[len - 1] == '\r')
        len--;
    end = line + len;

    if (!next_token(&p, end, &verb))
        return fail(&cp, LP_ERR_SYNTAX, "empty line");
    if ((vd = find_verb(&verb)) == NULL) {
        excerpt(&verb, ex, sizeof(ex));
        return fail(&cp, LP_ERR_UNKNOWN_COMMAND, "unknown command '%s'", ex);
    }
    cmd->verb = vd->verb;

    nfix = n_fixed(vd, &has_packets, &nopt);
    while (nargs < nfix && next_token(&p, end, &args[nargs]))
        nargs++;
    if (nargs < nfix - nopt)
        return fail(&cp, LP_ERR_SYNTAX, "%s needs %s", vd->name, vd->usage);

    /* Measure the payload first so that even a refused PUB/SEND tells the
     * caller how many bytes to skip. */
    memset(&scan, 0, sizeof(scan));
    if (has_packets) {
        has_type = take_type_token(&p, end, &ctype);
        scan_packets(p, end, lim->max_entitlements, &scan);
        if (scan.lens_ok) {
            cmd->n_packets = scan.n_specs;
            cmd->payload_len = scan.payload_len;
        }
    } else if (next_token(&p, end, &extra)) {
        if (vd->usage[0] == '\0')
            return fail(&cp, LP_ERR_SYNTAX, "%s takes no arguments", vd->name);
        return fail(&cp, LP_ERR_SYNTAX, "too many arguments: %s %s", vd->name, vd->usage);
    }

    /* Storage: packets, then entitlements, then the decoded names. */
    for (size_t i = 0; i < nargs; i++)
        names_room += args[i].n + 1;
    if (has_type)
        names_room += ctype.n + 1;
    if (vd->verb == LP_AUTHORIZE && nargs == nfix)   /* room: one per comma + 1 */
        n_auth_ents = (long)count_byte(args[4].p, args[4].n, ',') + 1;
    if (scan.bad == NULL && scan.n_specs <= lim->max_packets) {
        need = ALIGN8(scan.n_specs * sizeof(struct wire_packet)) +
            ALIGN8(((size_t)scan.n_ents + (size_t)n_auth_ents) * sizeof(int32_t)) +
            names_room;
    } else {
        need = names_room;  /* refused anyway: do not size from the specs */
    }
    if (need > 0 && store_reserve(&cmd->store, &cmd->store_cap, need) == NULL)
        return fail(&cp, LP_ERR_SYNTAX, "out of memory");
    if (cmd->store == NULL) {
        /* Nothing to store (STATS, QUIT...) and nothing stored yet. */
        ents = NULL;
        names = NULL;
    } else if (scan.bad == NULL && scan.n_specs <= lim->max_packets) {
        cmd->packets = cmd->store;
        ents = (int32_t *)((char *)cmd->store +
            ALIGN8(scan.n_specs * sizeof(struct wire_packet)));
        names = (char *)ents + ALIGN8(((size_t)scan.n_ents + (size_t)n_auth_ents) *
            sizeof(int32_t));
    } else {
        ents = NULL;
        names = cmd->store;
    }

    for (size_t i = 0; i < nargs; i++) {
        const struct tok *t = &args[i];
        int r = 0;

        switch (vd->args[i]) {
        case A_FEED:
            r = client_name(&cp, t, "feed", names, &cmd->feed);
            names += t->n + 1;
            break;
        case A_TOPIC:
            r = client_name(&cp, t, "topic", names, &cmd->topic);
            names += t->n + 1;
            break;
        case A_CLIENT_ID:
            if (guid_from_text(t->p, t->n, cmd->client_id) < 0) {
                excerpt(t, ex, sizeof(ex));
                r = fail(&cp, LP_ERR_BAD_CLIENT_ID,
                    "'%s' is not a client id like 00112233-4455-6677-8899-aabbccddeeff", ex);
            }
            break;
        case A_IMAGE:
            r = keyword(&cp, t, "image", "delta", &cmd->is_image);
            break;
        case A_REQUIRED:
            r = keyword(&cp, t, "required", "not-required", &cmd->required);
            break;
        case A_ON_OFF:
            r = keyword(&cp, t, "on", "off", &cmd->on);
            break;
        case A_OPT_ENTS: {
            long n = parse_ints(t->p, t->n, lim->max_entitlements, ents);

            if (n < 0) {
                excerpt(t, ex, sizeof(ex));
                r = fail(&cp, LP_ERR_SYNTAX, "entitlements '%s': a comma list of "
                    "int32 values, at most %u", ex, (unsigned)lim->max_entitlements);
                break;
            }
            cmd->entitlements.v = ents;
            cmd->entitlements.n = (uint32_t)n;
            break;
        }
        case A_OPT_TOKEN:
            memcpy(names, t->p, t->n);
            names[t->n] = '\0';
            cmd->token.ptr = names;
            cmd->token.len = (uint32_t)t->n;
            names += t->n + 1;
            break;
        default:
            break;
        }
        if (r < 0)
            goto refused;
    }

    if (has_type) {
        if (client_content_type(&cp, &ctype, names, &cmd->content_type) < 0)
            goto refused;
        names += ctype.n + 1;
    }
    if (has_packets) {
        if (check_packets(&cp, &scan) < 0)
            goto refused;
        fill_packets(p, end, lim->max_entitlements, cmd->packets, scan.n_specs, ents);
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

/* ---- event formatting ---- */

/* Bytes a packet spec list and payload block take. */
static size_t
packets_room(const struct wire_packet *pk, uint32_t n, size_t *payload)
{
    size_t room = 0;

    *payload = 0;
    for (uint32_t i = 0; i < n; i++) {
        room += 1 + 10;     /* " " LEN */
        if (pk[i].entitlements.n > 0)
            room += (size_t)pk[i].entitlements.n * 12;  /* ":"/"," and -2147483648 */
        *payload += pk[i].len;
    }
    return room;
}

static size_t
put_packets(char *dst, const struct wire_packet *pk, uint32_t n)
{
    size_t o = 0;

    for (uint32_t i = 0; i < n; i++) {
        dst[o++] = ' ';
        o += put_u64(dst + o, pk[i].len);
        for (uint32_t k = 0; k < pk[i].entitlements.n; k++) {
            dst[o++] = k == 0 ? ':' : ',';
            o += put_i32(dst + o, pk[i].entitlements.v[k]);
        }
    }
    return o;
}

static size_t
put_lit(char *dst, const char *s)
{
    size_t n = strlen(s);

    memcpy(dst, s, n);
    return n;
}

/* " <token>", given the token's length from escaped_len: a name with
 * nothing to escape (the usual case) is copied as is. */
static size_t
put_name_tok(char *dst, const struct wire_str *s, size_t esc_len)
{
    dst[0] = ' ';
    if (esc_len == s->len)
        memcpy(dst + 1, s->ptr, s->len);
    else
        put_escaped(dst + 1, s->ptr, s->len);
    return esc_len + 1;
}

int
lp_format_data(struct evbuffer *out, const struct wire_msg *m)
{
    struct evbuffer_iovec vec;
    size_t payload, room, o, ef, et, eu, eh, ec;
    char *d;

    if (m->type != WIRE_FORWARDED_MULTICAST && m->type != WIRE_FORWARDED_UNICAST)
        return -1;
    ec = m->content_type.len > 0 ? escaped_len(m->content_type.ptr, m->content_type.len) : 0;
    ef = escaped_len(m->feed.ptr, m->feed.len);
    et = escaped_len(m->topic.ptr, m->topic.len);
    eu = escaped_len(m->user.ptr, m->user.len);
    eh = escaped_len(m->host.ptr, m->host.len);
    room = sizeof("DATA") + sizeof(" multicast") + sizeof(" image") + 1 +
        4 + ef + et + eu + eh + packets_room(m->packets, m->n_packets, &payload) +
        (ec > 0 ? sizeof(" " LP_TYPE_PREFIX) + ec : 0);
    if (m->n_packets > 0)
        room += payload + 1;
    if (room > (size_t)EV_SSIZE_MAX)
        return -1;
    /* One contiguous reservation: the line and the payload are copied in
     * once, with no intermediate buffer. */
    if (evbuffer_reserve_space(out, (ev_ssize_t)room, &vec, 1) < 1)
        return -1;
    d = vec.iov_base;
    o = put_lit(d, "DATA");
    o += put_name_tok(d + o, &m->feed, ef);
    o += put_name_tok(d + o, &m->topic, et);
    o += put_name_tok(d + o, &m->user, eu);
    o += put_name_tok(d + o, &m->host, eh);
    o += put_lit(d + o, m->is_image ? " image" : " delta");
    o += put_lit(d + o, m->type == WIRE_FORWARDED_UNICAST ? " unicast" : " multicast");
    if (ec > 0) {
        o += put_lit(d + o, " " LP_TYPE_PREFIX);
        o += put_escaped(d + o, m->content_type.ptr, m->content_type.len);
    }
    o += put_packets(d + o, m->packets, m->n_packets);
    d[o++] = '\n';
    if (m->n_packets > 0) {
        for (uint32_t i = 0; i < m->n_packets; i++) {
            if (m->packets[i].len > 0)
                memcpy(d + o, m->packets[i].data, m->packets[i].len);
            o += m->packets[i].len;
        }
        d[o++] = '\n';
    }
    vec.iov_len = o;
    return evbuffer_commit_space(out, &vec, 1);
}

/* A line of a verb, an optional keyword, a client id and four names. */
static int
format_id_names(struct evbuffer *out, const char *verb, const uint8_t id[WIRE_GUID_LEN],
    const struct wire_str *names[4])
{
    struct evbuffer_iovec vec;
    char idtext[GUID_TEXT_LEN + 1];
    size_t room = strlen(verb) + 1 + GUID_TEXT_LEN + 1, o, esc[4];

    for (int i = 0; i < 4; i++) {
        esc[i] = escaped_len(names[i]->ptr, names[i]->len);
        room += 1 + esc[i];
    }
    if (evbuffer_reserve_space(out, (ev_ssize_t)room, &vec, 1) < 1)
        return -1;
    guid_to_text(id, idtext);
    o = put_lit(vec.iov_base, verb);
    ((char *)vec.iov_base)[o++] = ' ';
    memcpy((char *)vec.iov_base + o, idtext, GUID_TEXT_LEN);
    o += GUID_TEXT_LEN;
    for (int i = 0; i < 4; i++)
        o += put_name_tok((char *)vec.iov_base + o, names[i], esc[i]);
    ((char *)vec.iov_base)[o++] = '\n';
    vec.iov_len = o;
    return evbuffer_commit_space(out, &vec, 1);
}

int
lp_format_notification(struct evbuffer *out, const struct wire_msg *m)
{
    const struct wire_str *names[4] = { &m->user, &m->host, &m->feed, &m->topic };

    if (m->type != WIRE_FORWARDED_SUBSCRIPTION)
        return -1;
    return format_id_names(out, m->is_add ? "NOTIFICATION add" : "NOTIFICATION remove",
        m->client_id, names);
}

int
lp_format_authreq(struct evbuffer *out, const struct wire_msg *m)
{
    const struct wire_str *names[4] = { &m->user, &m->host, &m->feed, &m->topic };

    if (m->type != WIRE_AUTHORIZATION_REQUEST)
        return -1;
    return format_id_names(out, "AUTHREQ", m->client_id, names);
}

/* Append free text on one line: control bytes become spaces. */
static int
add_text(struct evbuffer *out, const char *s, size_t n)
{
    size_t start = 0;

    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];

        if (c < 0x20 || c == 0x7f) {
            if ((i > start && evbuffer_add(out, s + start, i - start) < 0) ||
                evbuffer_add(out, " ", 1) < 0)
                return -1;
            start = i + 1;
        }
    }
    if (n > start)
        return evbuffer_add(out, s + start, n - start);
    return 0;
}

int
lp_format_bus(struct evbuffer *out, const char *state, const char *reason)
{
    if (evbuffer_add(out, "BUS ", 4) < 0 || add_text(out, state, strlen(state)) < 0)
        return -1;
    if (reason != NULL && reason[0] != '\0' &&
        (evbuffer_add(out, " ", 1) < 0 || add_text(out, reason, strlen(reason)) < 0))
        return -1;
    return evbuffer_add(out, "\n", 1);
}

int
lp_format_ok(struct evbuffer *out)
{
    return evbuffer_add(out, "+OK\n", 4);
}

int
lp_format_err(struct evbuffer *out, enum lp_error e, const char *fmt, ...)
{
    char buf[512], *text = buf;
    va_list ap;
    int n, r;

    va_start(ap, fmt);
    n = vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    if (n < 0)
        n = 0;
    if ((size_t)n >= sizeof(buf)) {
        if ((text = malloc((size_t)n + 1)) == NULL) {
            text = buf;
            n = sizeof(buf) - 1;
        } else {
            va_start(ap, fmt);
            vsnprintf(text, (size_t)n + 1, fmt, ap);
            va_end(ap);
        }
    }
    r = evbuffer_add_printf(out, "-ERR %s", lp_error_code(e)) < 0 ? -1 : 0;
    if (r == 0 && n > 0)
        r = evbuffer_add(out, " ", 1) < 0 || add_text(out, text, (size_t)n) < 0 ? -1 : 0;
    if (r == 0)
        r = evbuffer_add(out, "\n", 1);
    if (text != buf)
        free(text);
    return r;
}

int
lp_format_hello(struct evbuffer *out, const char *version,
    const struct lp_limits *lim, uint32_t max_line, const struct lp_session_limits *sl,
    uint64_t max_output, const char *bus_state)
{
    return evbuffer_add_printf(out, "HELLO busgate %s proto=%d max_line=%u "
        "max_payload=%u max_packets=%u max_name=%u max_entitlements=%u "
        "max_subscriptions=%u max_notifications=%u max_authorizers=%u max_output=%llu "
        "bus_protocol=%u bus=%s\n", version, LP_PROTOCOL_VERSION,
        (unsigned)max_line, (unsigned)lim->max_payload, (unsigned)lim->max_packets,
        (unsigned)lim->max_name, (unsigned)lim->max_entitlements,
        (unsigned)sl->max_subscriptions, (unsigned)sl->max_notifications,
        (unsigned)sl->max_authorizers, (unsigned long long)max_output,
        (unsigned)lim->bus_protocol, bus_state) < 0 ? -1 : 0;
}

/* ---- event parsing (client side) ---- */

void
lp_event_init(struct lp_event *ev)
{
    memset(ev, 0, sizeof(*ev));
}

void
lp_event_free(struct lp_event *ev)
{
    free(ev->store);
    memset(ev, 0, sizeof(*ev));
}

static void
event_reset(struct lp_event *ev)
{
    void *store = ev->store;
    size_t cap = ev->store_cap;

    memset(ev, 0, sizeof(*ev));
    ev->store = store;
    ev->store_cap = cap;
}

/* Daemon output: any decoded name, empty allowed, bounded. */
static int
event_name(const struct tok *t, uint32_t max, char **names, struct lp_name *out)
{
    const char *why;
    uint32_t n;

    if (decode_name(t->p, t->n, *names, &n, &why) < 0 || n > max)
        return -1;
    out->ptr = *names;
    out->len = n;
    *names += t->n + 1;
    return 0;
}

static bool
event_word(const struct tok *t, const char *yes, const char *no, bool *out)
{
    if (tok_is(t, yes))
        *out = true;
    else if (tok_is(t, no))
        *out = false;
    else
        return false;
    return true;
}

/* Token counts and layout of the structured events. */
static int
parse_data(struct lp_event *ev, const struct tok *args, const char *p,
    const char *end, const struct lp_limits *lim, size_t names_room)
{
    struct pkt_scan scan;
    struct tok ctype;
    char *names;
    int32_t *ents;
    size_t pk_room;
    struct lp_name *dst[4] = { &ev->feed, &ev->topic, &ev->user, &ev->host };
    bool has_type = take_type_token(&p, end, &ctype);

    if (has_type)
        names_room += ctype.n + 1;
    scan_packets(p, end, lim->max_entitlements, &scan);
    if (scan.lens_ok) {
        ev->n_packets = scan.n_specs;
        ev->payload_len = scan.payload_len;
    }
    if (scan.bad != NULL || scan.n_specs > lim->max_packets ||
        scan.payload_len > lim->max_payload)
        return -1;
    pk_room = ALIGN8(scan.n_specs * sizeof(struct wire_packet)) +
        ALIGN8((size_t)scan.n_ents * sizeof(int32_t));
    if (store_reserve(&ev->store, &ev->store_cap, pk_room + names_room) == NULL)
        return -1;
    ev->packets = ev->store;
    ents = (int32_t *)((char *)ev->store +
        ALIGN8(scan.n_specs * sizeof(struct wire_packet)));
    names = (char *)ev->store + pk_room;
    for (int i = 0; i < 4; i++)
        if (event_name(&args[i], lim->max_name, &names, dst[i]) < 0)
            return -1;
    if (!event_word(&args[4], "image", "delta", &ev->is_image) ||
        !event_word(&args[5], "unicast", "multicast", &ev->is_unicast))
        return -1;
    if (has_type && event_name(&ctype, lim->max_name, &names, &ev->content_type) < 0)
        return -1;
    fill_packets(p, end, lim->max_entitlements, ev->packets, scan.n_specs, ents);
    return 0;
}

/* NOTIFICATION add|remove ID user host feed topic; AUTHREQ ID user host feed topic. */
static int
parse_id_names(struct lp_event *ev, const struct tok *args, const struct lp_limits *lim,
    size_t names_room)
{
    struct lp_name *dst[4] = { &ev->user, &ev->host, &ev->feed, &ev->topic };
    char *names;

    if (guid_from_text(args[0].p, args[0].n, ev->client_id) < 0)
        return -1;
    if (store_reserve(&ev->store, &ev->store_cap, names_room) == NULL)
        return -1;
    names = ev->store;
    for (int i = 0; i < 4; i++)
        if (event_name(&args[1 + i], lim->max_name, &names, dst[i]) < 0)
            return -1;
    return 0;
}

static const struct lp_limits no_limits = {
    UINT32_MAX, UINT32_MAX, UINT32_MAX, UINT32_MAX, 0,
};

/* Events whose payload is the free text after the verb. */
struct text_event {
    const char *name;
    enum lp_event_kind kind;
    bool needs_text;
};

static const struct text_event text_events[] = {
    { "HELLO", LP_EV_HELLO, true },
    { "-ERR", LP_EV_ERR, true },
    { "BUS", LP_EV_BUS, true },
    { "STAT", LP_EV_STAT, true },
    { "PONG", LP_EV_PONG, false },
    { "+OK", LP_EV_OK, false },
    { "END", LP_EV_END, false },
};

static int
parse_text_event(struct lp_event *ev, const struct text_event *te, const char *p,
    const char *end)
{
    char *copy;
    size_t n;

    while (p < end && is_sep(*p))
        p++;
    n = (size_t)(end - p);
    if (te->needs_text && n == 0)
        return -1;
    if (store_reserve(&ev->store, &ev->store_cap, n + 1) == NULL)
        return -1;
    copy = ev->store;
    memcpy(copy, p, n);
    copy[n] = '\0';
    ev->rest = copy;
    ev->rest_len = n;
    return 0;
}

int
lp_parse_event(const char *line, size_t len, const struct lp_limits *lim,
    struct lp_event *ev)
{
    const char *p = line, *end;
    struct tok verb, args[6], extra;
    size_t nargs = 0, want, names_room = 0;

    event_reset(ev);
    if (lim == NULL)
        lim = &no_limits;
    if (len > 0 && line[len - 1] == '\r')
        len--;
    end = line + len;
    if (!next_token(&p, end, &verb))
        return -1;

    /* DATA first: it is nearly all a subscriber reads. */
    if (tok_is(&verb, "DATA")) {
        ev->kind = LP_EV_DATA;
        want = 6;
    } else if (tok_is(&verb, "NOTIFICATION")) {
        ev->kind = LP_EV_NOTIFICATION;
        want = 6;
    } else if (tok_is(&verb, "AUTHREQ")) {
        ev->kind = LP_EV_AUTHREQ;
        want = 5;
    } else {
        for (size_t i = 0; i < sizeof(text_events) / sizeof(text_events[0]); i++) {
            if (tok_is(&verb, text_events[i].name)) {
                ev->kind = text_events[i].kind;
                return parse_text_event(ev, &text_events[i], p, end);
            }
        }
        return -1;
    }
    while (nargs < want && next_token(&p, end, &args[nargs]))
        nargs++;
    if (nargs < want)
        return -1;
    for (size_t i = 0; i < nargs; i++)
        names_room += args[i].n + 1;

    switch (ev->kind) {
    case LP_EV_DATA:
        return parse_data(ev, args, p, end, lim, names_room);
    case LP_EV_NOTIFICATION:
        if (next_token(&p, end, &extra) || !event_word(&args[0], "add", "remove", &ev->is_add))
            return -1;
        return parse_id_names(ev, args + 1, lim, names_room);
    default:
        if (next_token(&p, end, &extra))
            return -1;
        return parse_id_names(ev, args, lim, names_room);
    }
}
