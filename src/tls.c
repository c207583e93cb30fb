#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/objects.h>
#include <openssl/x509v3.h>

#include "fileio.h"
#include "tls.h"

/* Append the reasons queued in OpenSSL's error stack to buf (and clear it). */
static void
tls_ssl_errors(char *buf, size_t len)
{
    unsigned long e;
    size_t used = strlen(buf);

    while ((e = ERR_get_error()) != 0) {
        char one[256];
        const char *r;

        if (ERR_SYSTEM_ERROR(e))
            r = strerror((int)ERR_GET_REASON(e));
        else if ((r = ERR_reason_error_string(e)) == NULL) {
            ERR_error_string_n(e, one, sizeof one);
            r = one;
        }
        if (strstr(buf, r) != NULL)
            continue; /* the same reason again from another layer */
        snprintf(buf + used, len > used ? len - used : 0, "%s%s", used > 0 ? ": " : "", r);
        used = strlen(buf);
    }
}

/* An error message "what: openssl reasons". */
static void
tls_fail(char *err, size_t errlen, const char *what)
{
    char reasons[384] = "";

    tls_ssl_errors(reasons, sizeof reasons);
    if (reasons[0] != '\0')
        snprintf(err, errlen, "%s: %s", what, reasons);
    else
        snprintf(err, errlen, "%s", what);
}

/* A file OpenSSL is about to open by name, checked first with the open the
 * daemon's own readers use: a clear message, and a FIFO or device refused
 * instead of blocking the event loop in OpenSSL's read. */
static int
tls_check_readable(const char *setting, const char *path, bool dir, char *err,
    size_t errlen)
{
    char why[512];

    if (fileio_check(path, dir, why, sizeof why) != 0) {
        snprintf(err, errlen, "%s %s", setting, why);
        return -1;
    }
    return 0;
}

static int
tls_ctx_trust(SSL_CTX *ctx, const struct config_tls *cfg, char *err, size_t errlen)
{
    char what[600];

    if (!cfg->verify) {
        SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
        return 0;
    }
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    if (cfg->ca_file == NULL && cfg->ca_dir == NULL) {
        if (SSL_CTX_set_default_verify_paths(ctx) != 1) {
            tls_fail(err, errlen, "cannot load the system trust store");
            return -1;
        }
        return 0;
    }
    if (cfg->ca_file != NULL &&
        tls_check_readable("tls.ca_file", cfg->ca_file, false, err, errlen) != 0)
        return -1;
    if (cfg->ca_dir != NULL &&
        tls_check_readable("tls.ca_dir", cfg->ca_dir, true, err, errlen) != 0)
        return -1;
    if (SSL_CTX_load_verify_locations(ctx, cfg->ca_file, cfg->ca_dir) != 1) {
        snprintf(what, sizeof what, "cannot load CA certificates from %s",
            cfg->ca_file != NULL ? cfg->ca_file : cfg->ca_dir);
        tls_fail(err, errlen, what);
        return -1;
    }
    return 0;
}

static int
tls_ctx_client_cert(SSL_CTX *ctx, const struct config_tls *cfg, char *err, size_t errlen)
{
    const char *key = cfg->key_file != NULL ? cfg->key_file : cfg->cert_file;
    char what[600];

    if (cfg->cert_file == NULL) {
        if (cfg->key_file != NULL) {
            snprintf(err, errlen, "tls.key_file is set but tls.cert_file is not");
            return -1;
        }
        return 0;
    }
    if (tls_check_readable("tls.cert_file", cfg->cert_file, false, err, errlen) != 0 ||
        tls_check_readable("tls.key_file", key, false, err, errlen) != 0)
        return -1;
    if (SSL_CTX_use_certificate_chain_file(ctx, cfg->cert_file) != 1) {
        snprintf(what, sizeof what, "cannot load client certificate %s", cfg->cert_file);
        tls_fail(err, errlen, what);
        return -1;
    }
    /* OpenSSL checks the key against the certificate as it loads it. */
    if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_check_private_key(ctx) != 1) {
        unsigned long e = ERR_peek_last_error();

        if (ERR_GET_LIB(e) == ERR_LIB_X509 &&
            ERR_GET_REASON(e) == X509_R_KEY_VALUES_MISMATCH) {
            snprintf(err, errlen, "client key %s does not match certificate %s", key,
                cfg->cert_file);
            ERR_clear_error();
            return -1;
        }
        snprintf(what, sizeof what, "cannot load client key %s", key);
        tls_fail(err, errlen, what);
        return -1;
    }
    return 0;
}

static int
tls_ctx_protocol(SSL_CTX *ctx, const struct config_tls *cfg, char *err, size_t errlen)
{
    int min = cfg->min_version != 0 ? cfg->min_version : TLS1_2_VERSION;

    if (min != TLS1_2_VERSION && min != TLS1_3_VERSION) {
        snprintf(err, errlen, "tls.min_version: only TLS 1.2 or 1.3 are allowed");
        return -1;
    }
    if (SSL_CTX_set_min_proto_version(ctx, min) != 1) {
        tls_fail(err, errlen, "cannot set the minimum TLS version");
        return -1;
    }
    /* The bus never renegotiates; compression invites CRIME-style leaks. */
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
#ifdef SSL_OP_IGNORE_UNEXPECTED_EOF
    /* The distributor closes without close_notify. Bus messages delimit
     * themselves (a cut one is never delivered), so a truncation cannot
     * pass for data; report such a close as an end of stream. */
    SSL_CTX_set_options(ctx, SSL_OP_IGNORE_UNEXPECTED_EOF);
#endif
    if (SSL_CTX_set_cipher_list(ctx,
            cfg->ciphers != NULL ? cfg->ciphers : TLS_DEFAULT_CIPHERS) != 1) {
        tls_fail(err, errlen, "tls.ciphers: no usable cipher in the list");
        return -1;
    }
    return 0;
}

/* Why one TLS 1.2 suite is too weak, or NULL if it is not. */
static const char *
tls_cipher_weakness(const SSL_CIPHER *c)
{
    int kx = SSL_CIPHER_get_kx_nid(c);

    if (!SSL_CIPHER_is_aead(c))
        return "is not AEAD (a CBC or stream cipher)";
    if (kx != NID_kx_ecdhe && kx != NID_kx_dhe)
        return "has no forward secrecy (no ECDHE or DHE key exchange)";
    if (SSL_CIPHER_get_auth_nid(c) == NID_auth_null)
        return "does not authenticate the server";
    return NULL;
}

/* The suites of a list, checked one by one in a throwaway context. */
static int
tls_check_cipher_ctx(SSL_CTX *ctx, const char *list, char *err, size_t errlen)
{
    STACK_OF(SSL_CIPHER) * sk;
    const char *why;
    int level;

    if (SSL_CTX_set_cipher_list(ctx, list) != 1) {
        tls_fail(err, errlen, "no cipher suite OpenSSL knows in the list");
        return -1;
    }
    level = SSL_CTX_get_security_level(ctx);
    if (strstr(list, "@SECLEVEL") != NULL && level < 2) {
        snprintf(err, errlen,
            "@SECLEVEL=%d allows weak keys and suites; "
            "use 2 or more, or leave it out",
            level);
        return -1;
    }
    sk = SSL_CTX_get_ciphers(ctx);
    for (int i = 0; i < sk_SSL_CIPHER_num(sk); i++) {
        const SSL_CIPHER *c = sk_SSL_CIPHER_value(sk, i);

        /* TLS 1.3 suites (no key exchange of their own) are all AEAD and
         * forward-secret */
        if (SSL_CIPHER_get_kx_nid(c) == NID_kx_any)
            continue;
        if ((why = tls_cipher_weakness(c)) != NULL) {
            snprintf(err, errlen,
                "the list enables %s, which %s; only "
                "forward-secret AEAD suites are allowed (leave bus.tls.ciphers "
                "unset for the safe default)",
                SSL_CIPHER_get_name(c), why);
            return -1;
        }
    }
    return 0;
}

int
tls_check_ciphers(const char *list, char *err, size_t errlen)
{
    SSL_CTX *ctx;
    int r;

    ERR_clear_error();
    if ((ctx = SSL_CTX_new(TLS_client_method())) == NULL) {
        tls_fail(err, errlen, "cannot create a TLS context");
        return -1;
    }
    r = tls_check_cipher_ctx(ctx, list, err, errlen);
    SSL_CTX_free(ctx);
    ERR_clear_error();
    return r;
}

SSL_CTX *
tls_ctx_new(const struct config_tls *cfg, char *err, size_t errlen)
{
    SSL_CTX *ctx;

    ERR_clear_error();
    if ((ctx = SSL_CTX_new(TLS_client_method())) == NULL) {
        tls_fail(err, errlen, "cannot create a TLS context");
        return NULL;
    }
    if (tls_ctx_protocol(ctx, cfg, err, errlen) != 0 ||
        tls_ctx_trust(ctx, cfg, err, errlen) != 0 ||
        tls_ctx_client_cert(ctx, cfg, err, errlen) != 0) {
        SSL_CTX_free(ctx);
        ERR_clear_error();
        return NULL;
    }
    return ctx;
}

void
tls_ctx_free(SSL_CTX *ctx)
{
    SSL_CTX_free(ctx);
}

bool
tls_is_ip_literal(const char *name)
{
    struct in6_addr a6;
    struct in_addr a4;

    return inet_pton(AF_INET, name, &a4) == 1 || inet_pton(AF_INET6, name, &a6) == 1;
}

const char *
tls_peer_name(const struct config_tls *cfg, const char *host)
{
    if (cfg->server_name != NULL && cfg->server_name[0] != '\0')
        return cfg->server_name;
    return host;
}

/* Tell OpenSSL which name the certificate must carry. */
static int
tls_ssl_expect_name(SSL *ssl, const char *name, char *err, size_t errlen)
{
    if (tls_is_ip_literal(name)) {
        if (X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), name) != 1) {
            tls_fail(err, errlen, "cannot set the expected IP address");
            return -1;
        }
        return 0;
    }
    /* The name must be in the certificate's subjectAltName: a certificate
     * naming the host in its subject CN only is refused (RFC 6125; a CN
     * is not bound to a name type). */
    SSL_set_hostflags(ssl,
        X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS | X509_CHECK_FLAG_NEVER_CHECK_SUBJECT);
    if (SSL_set1_host(ssl, name) != 1) {
        tls_fail(err, errlen, "cannot set the expected host name");
        return -1;
    }
    return 0;
}

SSL *
tls_ssl_new(SSL_CTX *ctx, const struct config_tls *cfg, const char *host, char *err,
    size_t errlen)
{
    const char *name = tls_peer_name(cfg, host);
    SSL *ssl;

    ERR_clear_error();
    if (name == NULL || name[0] == '\0') {
        snprintf(err, errlen, "no host name to verify the bus certificate against");
        return NULL;
    }
    if ((ssl = SSL_new(ctx)) == NULL) {
        tls_fail(err, errlen, "cannot create a TLS connection");
        return NULL;
    }
    if (cfg->verify && tls_ssl_expect_name(ssl, name, err, errlen) != 0)
        goto fail;
    /* SNI carries DNS names only (RFC 6066). */
    if (!tls_is_ip_literal(name) && SSL_set_tlsext_host_name(ssl, name) != 1) {
        tls_fail(err, errlen, "cannot set the TLS server name (SNI)");
        goto fail;
    }
    return ssl;
fail:
    SSL_free(ssl);
    ERR_clear_error();
    return NULL;
}

/* The peer ended the handshake with a handshake_failure alert: what a
 * server says when it shares no suite or version with us. */
static bool
tls_refused_handshake(const unsigned long *errs, size_t nerrs)
{
    for (size_t i = 0; i < nerrs; i++)
        if (ERR_GET_LIB(errs[i]) == ERR_LIB_SSL &&
            ERR_GET_REASON(errs[i]) == SSL_R_SSLV3_ALERT_HANDSHAKE_FAILURE)
            return true;
    return false;
}

void
tls_describe_failure(SSL *ssl, const unsigned long *errs, size_t nerrs, int sys_err,
    char *buf, size_t len)
{
    long vr;
    size_t used;

    buf[0] = '\0';
    if (ssl != NULL && (SSL_get_verify_mode(ssl) & SSL_VERIFY_PEER) &&
        (vr = SSL_get_verify_result(ssl)) != X509_V_OK) {
        snprintf(buf, len, "certificate verify failed: %s",
            X509_verify_cert_error_string(vr));
        return;
    }
    for (size_t i = 0; i < nerrs; i++) {
        const char *r;

        /* libevent also records SSL_get_error() codes, which are no errors
         * of any library: skip them. */
        if (ERR_GET_LIB(errs[i]) == 0)
            continue;
        if (ERR_SYSTEM_ERROR(errs[i]))
            r = strerror((int)ERR_GET_REASON(errs[i]));
        else if ((r = ERR_reason_error_string(errs[i])) == NULL)
            continue;
        if (strstr(buf, r) != NULL)
            continue;
        used = strlen(buf);
        snprintf(buf + used, len - used, "%s%s", used > 0 ? ": " : "", r);
    }
    if (ssl != NULL && !SSL_is_init_finished(ssl) && tls_refused_handshake(errs, nerrs)) {
        used = strlen(buf);
        snprintf(buf + used, len - used,
            " (no TLS version or cipher suite in common "
            "with the bus? busgate offers forward-secret AEAD suites only, see "
            "bus.tls.ciphers)");
    }
    if (buf[0] == '\0' && sys_err != 0)
        snprintf(buf, len, "%s", strerror(sys_err));
    if (buf[0] == '\0')
        snprintf(buf, len, "connection closed");
    ERR_clear_error();
}

bool
tls_is_protocol_error(const unsigned long *errs, size_t nerrs)
{
    /* ERR_GET_LIB says ERR_LIB_SYS for OpenSSL 3's flagged errno values too */
    for (size_t i = 0; i < nerrs; i++)
        if (ERR_GET_LIB(errs[i]) != 0 && ERR_GET_LIB(errs[i]) != ERR_LIB_SYS)
            return true;
    return false;
}

void
tls_describe_session(SSL *ssl, char *buf, size_t len)
{
    snprintf(buf, len, "%s, %s", SSL_get_version(ssl), SSL_get_cipher_name(ssl));
}

static bool
str_equal(const char *a, const char *b)
{
    if (a == NULL || b == NULL)
        return a == b;
    return strcmp(a, b) == 0;
}

bool
tls_config_equal(const struct config_tls *a, const struct config_tls *b)
{
    return a->enabled == b->enabled && a->verify == b->verify &&
        a->min_version == b->min_version && str_equal(a->ca_file, b->ca_file) &&
        str_equal(a->ca_dir, b->ca_dir) && str_equal(a->server_name, b->server_name) &&
        str_equal(a->cert_file, b->cert_file) && str_equal(a->key_file, b->key_file) &&
        str_equal(a->ciphers, b->ciphers);
}
