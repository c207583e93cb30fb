/*
 * The credentials message: basic or token authentication from the
 * credentials file (or token_file), encoded in a block of its own that is
 * wiped once written, and described for logs without a secret.
 */
#include "bus-int.h"

/* Decode base64url (no padding) into out; -1 if invalid or too long. */
static int
b64url_decode(const char *in, size_t inlen, char *out, size_t outcap, size_t *outlen)
{
    uint32_t acc = 0;
    int bits = 0;
    size_t n = 0;

    for (size_t i = 0; i < inlen; i++) {
        char c = in[i];
        int v;

        if (c >= 'A' && c <= 'Z')
            v = c - 'A';
        else if (c >= 'a' && c <= 'z')
            v = c - 'a' + 26;
        else if (c >= '0' && c <= '9')
            v = c - '0' + 52;
        else if (c == '-' || c == '+')
            v = 62;
        else if (c == '_' || c == '/')
            v = 63;
        else if (c == '=')
            break;
        else
            return -1;
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            if (n + 1 >= outcap)
                return -1;
            out[n++] = (char)((acc >> bits) & 0xff);
        }
    }
    out[n] = '\0';
    *outlen = n;
    return 0;
}

/* The value of a simple claim in a JWT's (unverified) payload, for log lines
 * only: a string ("sub") or a number ("exp"). Returns 0 if found. */
static int
jwt_claim(const char *json, const char *name, char *out, size_t outlen)
{
    char key[32];
    const char *p;
    size_t n = 0;

    snprintf(key, sizeof key, "\"%s\"", name);
    if ((p = strstr(json, key)) == NULL)
        return -1;
    p += strlen(key);
    while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')
        p++;
    if (*p++ != ':')
        return -1;
    while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')
        p++;
    if (*p == '"') {
        for (p++; *p != '"' && *p != '\0'; p++) {
            /* printable ASCII only: this goes into a log line */
            if (*p == '\\' || (unsigned char)*p < 0x20 || (unsigned char)*p > 0x7e ||
                n + 1 >= outlen)
                return -1;
            out[n++] = *p;
        }
        if (*p != '"')
            return -1;
    } else {
        for (; *p >= '0' && *p <= '9' && n + 1 < outlen; p++)
            out[n++] = *p;
    }
    out[n] = '\0';
    return n > 0 ? 0 : -1;
}

/* "token, user alice" (and the expiry if already past) from the token's
 * claims, never the token itself. */
static void
describe_token(const char *token, char *buf, size_t len)
{
    char json[2048], sub[128], exp[32];
    const char *dot1, *dot2;
    size_t n;
    time_t t;
    struct tm tm;
    char when[32];

    snprintf(buf, len, "token");
    if ((dot1 = strchr(token, '.')) == NULL || (dot2 = strchr(dot1 + 1, '.')) == NULL ||
        b64url_decode(dot1 + 1, (size_t)(dot2 - dot1 - 1), json, sizeof json, &n) != 0)
        return;
    if (jwt_claim(json, "sub", sub, sizeof sub) == 0)
        snprintf(buf, len, "token, user %s", sub);
    if (jwt_claim(json, "exp", exp, sizeof exp) == 0) {
        t = (time_t)strtoll(exp, NULL, 10);
        if (t < time(NULL) && gmtime_r(&t, &tm) != NULL &&
            strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tm) > 0) {
            n = strlen(buf);
            snprintf(buf + n, len - n, "; token expired %s", when);
        }
    }
}

/* Free a block of secret bytes once libevent is done with it, wiped. */
static void
wipe_block(const void *data, size_t len, void *arg)
{
    explicit_bzero(arg, len);
    free(arg);
}

/* Queue the authentication payload in a block of its own, so the secret is
 * wiped once written instead of left in freed evbuffer memory. */
static int
send_auth(struct bus *bus, const struct wire_auth *a)
{
    struct evbuffer *tmp = evbuffer_new();
    unsigned char *p, *block;
    size_t len;
    int r = -1;

    if (tmp == NULL)
        return -1;
    if (wire_encode_auth(tmp, a) == 0) {
        len = evbuffer_get_length(tmp);
        /* One reservation: pulling up does not copy, so wiping p is enough. */
        if (len == 0)
            r = 0; /* auth none: nothing to send */
        else if ((p = evbuffer_pullup(tmp, -1)) != NULL && (block = malloc(len)) != NULL) {
            memcpy(block, p, len);
            explicit_bzero(p, len);
            if (evbuffer_add_reference(bufferevent_get_output(bus->bev), block, len,
                    wipe_block, block) == 0)
                r = 0;
            else
                wipe_block(block, len, block);
        } else if (p != NULL) {
            explicit_bzero(p, len);
        }
    }
    evbuffer_free(tmp);
    return r;
}

/* Read the credentials (afresh at every connect, so rotated secrets are
 * used without a restart) and queue the authentication payload. */
int
bus_send_auth(struct bus *bus, char *err, size_t errlen)
{
    const struct config_bus *c = &bus->cfg;
    struct credentials cr;
    struct wire_auth a = { .method = WIRE_AUTH_NONE, .version = bus->cfg.protocol };
    char host[256], app[300];
    const char *cause = NULL;
    int r = -1;

    memset(&cr, 0, sizeof cr);
    snprintf(bus->auth_desc, sizeof bus->auth_desc, "none");
    if (c->auth == CONFIG_AUTH_NONE)
        return 0;
    if (c->credentials_file != NULL &&
        credentials_load(&cr, c->credentials_file, err, errlen) != 0)
        goto out;
    if (c->token_file != NULL &&
        credentials_load_token_file(&cr, c->token_file, err, errlen) != 0)
        goto out;
    if (c->auth == CONFIG_AUTH_BASIC) {
        if (cr.username == NULL || cr.password == NULL) {
            snprintf(err, errlen, "%s: auth basic needs username and password in [bus]",
                c->credentials_file != NULL ? c->credentials_file : "credentials");
            goto out;
        }
        a.method = WIRE_AUTH_BASIC;
        a.username = cr.username;
        a.password = cr.password;
        snprintf(bus->auth_desc, sizeof bus->auth_desc, "basic, user %s", cr.username);
    } else {
        if (cr.token == NULL) {
            snprintf(err, errlen, "%s: auth token needs a token",
                c->token_file != NULL             ? c->token_file
                    : c->credentials_file != NULL ? c->credentials_file
                                                  : "credentials");
            goto out;
        }
        a.method = WIRE_AUTH_TOKEN;
        a.token = cr.token;
        describe_token(cr.token, bus->auth_desc, sizeof bus->auth_desc);
    }
    a.impersonating = c->impersonating;
    a.forwarded_for = c->forwarded_for;
    if (gethostname(host, sizeof host) != 0)
        snprintf(host, sizeof host, "unknown");
    host[sizeof host - 1] = '\0';
    if (a.forwarded_for == NULL && c->forwarded_for_host)
        a.forwarded_for = host;
    snprintf(app, sizeof app, "busgate@%s", host);
    a.application = c->application != NULL ? c->application : app;
    if (wire_auth_check(&a, &cause) != 0) {
        snprintf(err, errlen, "%s (bus.protocol %d)", cause, c->protocol);
        goto out;
    }
    if (send_auth(bus, &a) != 0) {
        snprintf(err, errlen, "cannot encode the credentials (too long?)");
        goto out;
    }
    r = 0;
out:
    credentials_free(&cr);
    return r;
}
