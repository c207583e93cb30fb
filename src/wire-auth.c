/*
 * The authentication payload of the bus login (BUS-PROTOCOL.md): the
 * fields of protocol 3, and the connection string of 4 and later, encoded
 * in one reservation and decoded with the same bounded cursor as messages.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>

#include "wire-int.h"

#define WIRE_AUTH_MAX_FIELDS 4

/* The payload's strings for auth's method, in wire order; -1 if unknown. */
static int
auth_fields(const struct wire_auth *auth, const char *v[WIRE_AUTH_MAX_FIELDS])
{
    switch (auth->method) {
    case WIRE_AUTH_NONE:
        return 0;
    case WIRE_AUTH_BASIC:
        v[0] = auth->username;
        v[1] = auth->password;
        v[2] = auth->impersonating;
        v[3] = auth->forwarded_for;
        return 4;
    case WIRE_AUTH_TOKEN:
        v[0] = auth->token;
        v[1] = auth->impersonating;
        v[2] = auth->forwarded_for;
        return 3;
    }
    return -1;
}

/* Where decoded strings go, in wire order; -1 if the method is unknown. */
static int
auth_slots(struct wire_auth *auth, const char **v[WIRE_AUTH_MAX_FIELDS])
{
    switch (auth->method) {
    case WIRE_AUTH_NONE:
        return 0;
    case WIRE_AUTH_BASIC:
        v[0] = &auth->username;
        v[1] = &auth->password;
        v[2] = &auth->impersonating;
        v[3] = &auth->forwarded_for;
        return 4;
    case WIRE_AUTH_TOKEN:
        v[0] = &auth->token;
        v[1] = &auth->impersonating;
        v[2] = &auth->forwarded_for;
        return 3;
    }
    return -1;
}

/*
 * The keys of the connection string (4 and later), in the order the
 * python clients write them; the first two are required for the method
 * that names them, the rest are written only when non-empty.
 */
enum wire_key {
    WK_USERNAME,
    WK_PASSWORD,
    WK_TOKEN,
    WK_IMPERSONATING,
    WK_FORWARDED_FOR,
    WK_APPLICATION,
    WK_COUNT,
};

static const char *const wire_key_names[WK_COUNT] = {
    [WK_USERNAME] = "Username",
    [WK_PASSWORD] = "Password",
    [WK_TOKEN] = "Token",
    [WK_IMPERSONATING] = "Impersonating",
    [WK_FORWARDED_FOR] = "ForwardedFor",
    [WK_APPLICATION] = "Application",
};

static const char **
auth_key_slot(struct wire_auth *auth, enum wire_key k)
{
    switch (k) {
    case WK_USERNAME:
        return &auth->username;
    case WK_PASSWORD:
        return &auth->password;
    case WK_TOKEN:
        return &auth->token;
    case WK_IMPERSONATING:
        return &auth->impersonating;
    case WK_FORWARDED_FOR:
        return &auth->forwarded_for;
    default:
        return &auth->application;
    }
}

static const char *
auth_key_value(const struct wire_auth *auth, enum wire_key k)
{
    return *auth_key_slot((struct wire_auth *)auth, k);
}

/* Whether key k is required (1), optional (0) or not sent (-1) for method. */
static int
auth_key_use(enum wire_auth_method method, enum wire_key k)
{
    switch (k) {
    case WK_USERNAME:
    case WK_PASSWORD:
        return method == WIRE_AUTH_BASIC ? 1 : -1;
    case WK_TOKEN:
        return method == WIRE_AUTH_TOKEN ? 1 : -1;
    default:
        return 0;
    }
}

static bool
auth_key_sent(const struct wire_auth *auth, enum wire_key k)
{
    const char *v = auth_key_value(auth, k);
    int use = auth_key_use(auth->method, k);

    return use > 0 || (use == 0 && v != NULL && v[0] != '\0');
}

static bool
connection_string(const struct wire_auth *auth)
{
    return auth->version >= WIRE_V4 && auth->method != WIRE_AUTH_NONE;
}

int
wire_auth_check(const struct wire_auth *auth, const char **cause)
{
    if (auth->method != WIRE_AUTH_NONE && auth->method != WIRE_AUTH_BASIC &&
        auth->method != WIRE_AUTH_TOKEN) {
        wire_fail(cause, "unknown authentication method %d", (int)auth->method);
        return -1;
    }
    if (!connection_string(auth))
        return 0;
    for (int k = 0; k < WK_COUNT; k++) {
        const char *v = auth_key_value(auth, k);

        if (auth_key_sent(auth, k) && v != NULL && strchr(v, ';') != NULL) {
            wire_fail(cause,
                "the %s contains ';', which bus protocol %d cannot "
                "send: the distributor splits its one login string on ';' with "
                "no escaping",
                wire_key_names[k], auth->version);
            return -1;
        }
    }
    return 0;
}

/* Bytes of the connection string for auth. */
static uint64_t
connection_string_size(const struct wire_auth *auth)
{
    uint64_t size = 0;

    for (int k = 0; k < WK_COUNT; k++) {
        const char *v = auth_key_value(auth, k);

        if (!auth_key_sent(auth, k))
            continue;
        size += (size > 0 ? 1 : 0) + strlen(wire_key_names[k]) + 1 +
            (v != NULL ? strlen(v) : 0);
    }
    return size;
}

static uint8_t *
put_connection_string(uint8_t *p, const struct wire_auth *auth)
{
    bool first = true;

    for (int k = 0; k < WK_COUNT; k++) {
        const char *v = auth_key_value(auth, k);

        if (!auth_key_sent(auth, k))
            continue;
        if (!first)
            *p++ = ';';
        first = false;
        p = wire_put_bytes(p, wire_key_names[k], strlen(wire_key_names[k]));
        *p++ = '=';
        p = wire_put_bytes(p, v, v != NULL ? strlen(v) : 0);
    }
    return p;
}

static int
encode_connection_string(struct evbuffer *out, const struct wire_auth *auth)
{
    uint64_t len = connection_string_size(auth);
    struct evbuffer_iovec vec;
    uint8_t *p;

    if (len > (uint64_t)INT32_MAX || (p = wire_reserve(out, 4 + len, &vec)) == NULL)
        return -1;
    p = wire_put_be32(p, (uint32_t)len);
    put_connection_string(p, auth);
    return wire_commit(out, &vec, 4 + len);
}

int
wire_encode_auth(struct evbuffer *out, const struct wire_auth *auth)
{
    const char *v[WIRE_AUTH_MAX_FIELDS];
    size_t len[WIRE_AUTH_MAX_FIELDS];
    struct evbuffer_iovec vec;
    uint64_t size = 0;
    uint8_t *p;
    int n;

    if (wire_auth_check(auth, NULL) != 0)
        return -1;
    if (connection_string(auth))
        return encode_connection_string(out, auth);
    if ((n = auth_fields(auth, v)) < 0)
        return -1;
    if (n == 0)
        return 0;
    for (int i = 0; i < n; i++) {
        len[i] = v[i] != NULL ? strlen(v[i]) : 0;
        if (len[i] > (size_t)INT32_MAX)
            return -1;
        size += 4 + (uint64_t)len[i];
    }
    if ((p = wire_reserve(out, size, &vec)) == NULL)
        return -1;
    for (int i = 0; i < n; i++) {
        p = wire_put_be32(p, (uint32_t)len[i]);
        p = wire_put_bytes(p, v[i], len[i]);
    }
    return wire_commit(out, &vec, size);
}

void
wire_auth_free(struct wire_auth *auth)
{
    for (int k = 0; k < WK_COUNT; k++) {
        const char **slot = auth_key_slot(auth, k);

        free((void *)*slot);
        *slot = NULL;
    }
}

static const char *const wire_auth_names[][WIRE_AUTH_MAX_FIELDS] = {
    [WIRE_AUTH_BASIC] = { "username", "password", "impersonating", "forwardedFor" },
    [WIRE_AUTH_TOKEN] = { "token", "impersonating", "forwardedFor" },
};

/* The strings scan_auth checks, and their lengths. */
struct auth_scan {
    const char *const *names;
    int n;
    const struct wire_limits *lim;
    uint32_t len[WIRE_AUTH_MAX_FIELDS];
};

/* Check the strings at the front of the window; their lengths to a->len. */
static enum wire_result
scan_auth(struct wire_cursor *c, void *arg, const char **cause)
{
    struct auth_scan *a = arg;
    enum wire_result r;

    for (int i = 0; i < a->n; i++) {
        if ((r = wire_cursor_count(c, WC_STRING, a->lim->max_string, "authentication",
                 a->names[i], &a->len[i], cause)) != WIRE_DECODED ||
            (r = wire_cursor_claim(c, a->len[i], cause)) != WIRE_DECODED)
            return r;
        c->off += a->len[i];
    }
    return WIRE_DECODED;
}

/* Copy the strings scan_auth checked at p (NULL for empty ones). */
static enum wire_result
take_auth_strings(const uint8_t *p, int n, const uint32_t len[], char *copy[],
    const char **cause)
{
    for (int i = 0; i < n; i++) {
        p += 4;
        copy[i] = NULL;
        if (len[i] == 0)
            continue;
        if ((copy[i] = strndup((const char *)p, len[i])) == NULL) {
            for (int j = 0; j < i; j++)
                free(copy[j]);
            return wire_fail(cause, "out of memory");
        }
        p += len[i];
    }
    return WIRE_DECODED;
}

static int
key_of(const char *name, size_t len)
{
    for (int k = 0; k < WK_COUNT; k++)
        if (strlen(wire_key_names[k]) == len && memcmp(wire_key_names[k], name, len) == 0)
            return k;
    return -1;
}

/* Set one "key=value" part of a connection string into auth. */
static int
parse_part(struct wire_auth *auth, const char *part, size_t len, const char **cause)
{
    const char *eq = memchr(part, '=', len);
    const char **slot;
    char *value;
    int k;

    if (len == 0)
        return wire_fail(cause, "empty part in the connection string"), -1;
    if (eq == NULL)
        return wire_fail(cause, "connection string part without '='"), -1;
    if ((k = key_of(part, (size_t)(eq - part))) < 0 || auth_key_use(auth->method, k) < 0)
        return wire_fail(cause,
                   "unexpected key \"%.*s\" in the connection "
                   "string",
                   (int)(eq - part), part),
               -1;
    slot = auth_key_slot(auth, k);
    if (*slot != NULL)
        return wire_fail(cause, "repeated key %s in the connection string",
                   wire_key_names[k]),
               -1;
    if ((value = strndup(eq + 1, len - (size_t)(eq + 1 - part))) == NULL)
        return wire_fail(cause, "out of memory"), -1;
    *slot = value;
    return 0;
}

/* Parse a connection string as the distributor does. */
static enum wire_result
parse_connection_string(struct wire_auth *auth, const char *s, const char **cause)
{
    const char *end = s + strlen(s);

    for (const char *p = s;;) {
        const char *semi = memchr(p, ';', (size_t)(end - p));
        const char *stop = semi != NULL ? semi : end;

        if (parse_part(auth, p, (size_t)(stop - p), cause) != 0)
            return WIRE_ERROR;
        if (semi == NULL)
            break;
        p = semi + 1;
    }
    for (int k = 0; k < WK_COUNT; k++)
        if (auth_key_use(auth->method, k) > 0 && auth_key_value(auth, k) == NULL)
            return wire_fail(cause, "the connection string has no %s", wire_key_names[k]);
    return WIRE_DECODED;
}

/* Nothing is consumed unless the whole string parses. */
static enum wire_result
decode_connection_string(struct evbuffer *in, const struct wire_limits *lim,
    struct wire_auth *auth, const char **cause)
{
    static const char *const names[] = { "connection string" };
    struct auth_scan a = { names, 1, lim, { 0 } };
    struct wire_cursor c;
    char *copy;
    enum wire_result r;

    if ((r = wire_window_scan(in, lim->max_message, scan_auth, &a, &c, cause)) !=
        WIRE_DECODED)
        return r;
    if ((copy = strndup((const char *)c.p + 4, a.len[0])) == NULL)
        return wire_fail(cause, "out of memory");
    r = parse_connection_string(auth, copy, cause);
    free(copy);
    if (r != WIRE_DECODED) {
        wire_auth_free(auth);
        return r;
    }
    evbuffer_drain(in, (size_t)c.off);
    return WIRE_DECODED;
}

enum wire_result
wire_decode_auth_version(struct evbuffer *in, int version, enum wire_auth_method method,
    const struct wire_limits *lim, struct wire_auth *auth, const char **cause)
{
    const char **slot[WIRE_AUTH_MAX_FIELDS];
    char *copy[WIRE_AUTH_MAX_FIELDS];
    struct auth_scan a = { NULL, 0, lim, { 0 } };
    struct wire_cursor c;
    enum wire_result r;
    int n;

    memset(auth, 0, sizeof *auth);
    auth->method = method;
    auth->version = version;
    if ((n = auth_slots(auth, slot)) < 0)
        return wire_fail(cause, "unknown authentication method %d", (int)method);
    if (connection_string(auth))
        return decode_connection_string(in, lim, auth, cause);
    a.names = wire_auth_names[method];
    a.n = n;
    if ((r = wire_window_scan(in, lim->max_message, scan_auth, &a, &c, cause)) !=
        WIRE_DECODED)
        return r;
    if ((r = take_auth_strings(c.p, n, a.len, copy, cause)) != WIRE_DECODED)
        return r;
    evbuffer_drain(in, (size_t)c.off);
    for (int i = 0; i < n; i++)
        *slot[i] = copy[i];
    return WIRE_DECODED;
}

enum wire_result
wire_decode_auth(struct evbuffer *in, enum wire_auth_method method,
    const struct wire_limits *lim, struct wire_auth *auth, const char **cause)
{
    return wire_decode_auth_version(in, WIRE_V3, method, lim, auth, cause);
}
