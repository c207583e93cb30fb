/*
 * TLS for the bus link: the client SSL_CTX built from struct config_tls
 * (trust store, verification, minimum version, client certificate,
 * ciphers), the per-connection SSL with host-name checks and SNI, and a
 * human reason when a handshake fails. No I/O: bus.c drives the handshake.
 */
#ifndef BUSGATE_TLS_H
#define BUSGATE_TLS_H

#include <stdbool.h>
#include <stddef.h>

#include <openssl/ssl.h>

/* The bus.tls settings (config.c fills them). Declared here, with the code
 * that uses them, so that config includes tls and not the reverse. */
struct config_tls {
    bool enabled;  /* bus.tls: false turns TLS off explicitly */
    bool verify;   /* bus.tls.verify: false needs saying */
    char *ca_file; /* NULL: the system trust store */
    char *ca_dir;
    char *server_name; /* NULL: bus.host */
    char *cert_file;   /* client certificate, optional */
    char *key_file;
    char *ciphers;   /* OpenSSL cipher list, optional */
    int min_version; /* TLS1_2_VERSION or TLS1_3_VERSION */
};

/*
 * Build a client context from cfg: verification on unless cfg->verify is
 * false, trust from ca_file/ca_dir or else the system store, at least
 * TLS 1.2 (or cfg->min_version), optional client certificate and cipher
 * list. Returns NULL with the reason in err.
 */
SSL_CTX *tls_ctx_new(const struct config_tls *cfg, char *err, size_t errlen);

void tls_ctx_free(SSL_CTX *ctx);

/*
 * TLS 1.2 suites when bus.tls.ciphers is unset: Mozilla's "intermediate"
 * profile, forward-secret (ECDHE, DHE) AEAD (AES-GCM, ChaCha20-Poly1305)
 * only. TLS 1.3 suites stay OpenSSL's (all of them are both).
 */
#define TLS_DEFAULT_CIPHERS                                                                \
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"                           \
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"                           \
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"                           \
    "DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384:DHE-RSA-CHACHA20-POLY1305"

/*
 * Whether a bus.tls.ciphers list keeps the default's strength: it must
 * name at least one suite OpenSSL knows, every TLS 1.2 suite it enables
 * must be AEAD, forward-secret (ECDHE or DHE key exchange, no PSK) and
 * authenticate the server, and it must not lower @SECLEVEL below 2.
 * Returns 0, or -1 with the reason (naming the first weak suite) in err.
 */
int tls_check_ciphers(const char *list, char *err, size_t errlen);

/*
 * A connection's SSL: the name checked is cfg->server_name, else host; a
 * DNS name is checked against the certificate's names and sent as SNI, an
 * IP literal is checked against its IP addresses and not sent as SNI.
 * Returns NULL with the reason in err.
 */
SSL *tls_ssl_new(SSL_CTX *ctx, const struct config_tls *cfg, const char *host, char *err,
    size_t errlen);

/* The name the certificate must carry: server_name, else host. */
const char *tls_peer_name(const struct config_tls *cfg, const char *host);

/* True for an IPv4 or IPv6 address literal. */
bool tls_is_ip_literal(const char *name);

/*
 * Why a handshake or TLS read/write failed, for a log line: the
 * certificate verification result when that was the cause
 * ("certificate verify failed: self-signed certificate"), else the OpenSSL
 * reasons in errs[0..nerrs) (as bufferevent_get_openssl_error gives them),
 * else sys_err (an errno value, 0 if none).
 */
void tls_describe_failure(SSL *ssl, const unsigned long *errs, size_t nerrs, int sys_err,
    char *buf, size_t len);

/*
 * True when errs (as for tls_describe_failure) hold a TLS-level failure:
 * an alert from the peer, a refused renegotiation, a record that fails its
 * checks. An error of a system call is not one, nor are the SSL_get_error()
 * codes libevent mixes in.
 */
bool tls_is_protocol_error(const unsigned long *errs, size_t nerrs);

/* "TLSv1.3, TLS_AES_256_GCM_SHA384" for the log once the handshake is done. */
void tls_describe_session(SSL *ssl, char *buf, size_t len);

/* Settings that need a new SSL_CTX (and a reconnect) when they change. */
bool tls_config_equal(const struct config_tls *a, const struct config_tls *b);

#endif /* BUSGATE_TLS_H */
