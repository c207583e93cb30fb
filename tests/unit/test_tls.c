/*
 * Unit tests for src/tls.c: the client context from the config (trust,
 * verification mode, minimum version, ciphers, client certificate), the
 * per-connection name checks and SNI, and the failure descriptions.
 * Handshakes against a real server are in tests/integration/test_buslink.py.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <unistd.h>

#include <cmocka.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "config.h"
#include "tls.h"

#include "tmpdir.h"

static char err[1024];

static int
setup(void **state)
{
    return tmpdir_make("test_tls");
}

static int
teardown(void **state)
{
    return tmpdir_remove();
}

/* A verifying TLS 1.2+ config with nothing else set. */
static struct config_tls
tls_defaults(void)
{
    struct config_tls t;

    memset(&t, 0, sizeof t);
    t.enabled = true;
    t.verify = true;
    t.min_version = TLS1_2_VERSION;
    return t;
}

static void
t_ip_literal(void **state)
{
    assert_true(tls_is_ip_literal("127.0.0.1"));
    assert_true(tls_is_ip_literal("::1"));
    assert_true(tls_is_ip_literal("2001:db8::17"));
    assert_false(tls_is_ip_literal("localhost"));
    assert_false(tls_is_ip_literal("bus.example.com"));
    assert_false(tls_is_ip_literal("1.2.3"));
    assert_false(tls_is_ip_literal(""));
}

static void
t_peer_name(void **state)
{
    struct config_tls t = tls_defaults();

    assert_string_equal(tls_peer_name(&t, "bus.example"), "bus.example");
    t.server_name = "";
    assert_string_equal(tls_peer_name(&t, "bus.example"), "bus.example");
    t.server_name = "other.example";
    assert_string_equal(tls_peer_name(&t, "10.0.0.1"), "other.example");
}

static void
t_config_equal(void **state)
{
    struct config_tls a = tls_defaults(), b = tls_defaults();
    char ca1[] = "/etc/ca.pem", ca2[] = "/etc/ca.pem", ca3[] = "/other/ca.pem";

    assert_true(tls_config_equal(&a, &b));
    a.ca_file = ca1;
    b.ca_file = ca2;
    assert_true(tls_config_equal(&a, &b)); /* by value, not pointer */
    b.ca_file = ca3;
    assert_false(tls_config_equal(&a, &b));
    b.ca_file = NULL;
    assert_false(tls_config_equal(&a, &b));
    b = a;
    b.verify = false;
    assert_false(tls_config_equal(&a, &b));
    b = a;
    b.min_version = TLS1_3_VERSION;
    assert_false(tls_config_equal(&a, &b));
    b = a;
    b.server_name = "x";
    assert_false(tls_config_equal(&a, &b));
    b = a;
    b.ciphers = "HIGH";
    assert_false(tls_config_equal(&a, &b));
    b = a;
    b.enabled = false;
    assert_false(tls_config_equal(&a, &b));
}

static void
t_ctx_defaults_verify(void **state)
{
    struct config_tls t = tls_defaults();
    SSL_CTX *ctx;

    /* the system trust store, verification on, TLS 1.2 at least */
    assert_non_null(ctx = tls_ctx_new(&t, err, sizeof err));
    assert_int_equal(SSL_CTX_get_verify_mode(ctx), SSL_VERIFY_PEER);
    assert_int_equal(SSL_CTX_get_min_proto_version(ctx), TLS1_2_VERSION);
    tls_ctx_free(ctx);

    t.min_version = TLS1_3_VERSION;
    assert_non_null(ctx = tls_ctx_new(&t, err, sizeof err));
    assert_int_equal(SSL_CTX_get_min_proto_version(ctx), TLS1_3_VERSION);
    tls_ctx_free(ctx);

    /* 0 means the default, 1.2 */
    t.min_version = 0;
    assert_non_null(ctx = tls_ctx_new(&t, err, sizeof err));
    assert_int_equal(SSL_CTX_get_min_proto_version(ctx), TLS1_2_VERSION);
    tls_ctx_free(ctx);
}

static void
t_ctx_verify_off(void **state)
{
    struct config_tls t = tls_defaults();
    SSL_CTX *ctx;

    t.verify = false;
    assert_non_null(ctx = tls_ctx_new(&t, err, sizeof err));
    assert_int_equal(SSL_CTX_get_verify_mode(ctx), SSL_VERIFY_NONE);
    tls_ctx_free(ctx);
}

static void
t_ctx_refuses_old_versions(void **state)
{
    struct config_tls t = tls_defaults();

    t.min_version = TLS1_1_VERSION;
    assert_null(tls_ctx_new(&t, err, sizeof err));
    assert_non_null(strstr(err, "min_version"));
    t.min_version = TLS1_VERSION;
    assert_null(tls_ctx_new(&t, err, sizeof err));
}

static void
t_ctx_missing_ca(void **state)
{
    struct config_tls t = tls_defaults();

    t.ca_file = tpath("nope.pem");
    assert_null(tls_ctx_new(&t, err, sizeof err));
    assert_non_null(strstr(err, "tls.ca_file"));
    assert_non_null(strstr(err, "nope.pem"));
    assert_non_null(strstr(err, strerror(ENOENT)));
    t.ca_file = NULL;
    t.ca_dir = tpath("nodir");
    assert_null(tls_ctx_new(&t, err, sizeof err));
    assert_non_null(strstr(err, "tls.ca_dir"));
}

static void
t_ctx_bad_ca_content(void **state)
{
    struct config_tls t = tls_defaults();
    FILE *f;

    t.ca_file = tpath("junk.pem");
    assert_non_null(f = fopen(t.ca_file, "w"));
    fputs("this is not a certificate\n", f);
    fclose(f);
    assert_null(tls_ctx_new(&t, err, sizeof err));
    assert_non_null(strstr(err, "cannot load CA certificates from"));
    assert_non_null(strstr(err, "junk.pem"));
    /* the error queue was not left behind */
    assert_int_equal(ERR_peek_error(), 0);
}

static void
t_ctx_bad_ciphers(void **state)
{
    struct config_tls t = tls_defaults();
    SSL_CTX *ctx;

    t.ciphers = "NO-SUCH-CIPHER";
    assert_null(tls_ctx_new(&t, err, sizeof err));
    assert_non_null(strstr(err, "tls.ciphers"));
    t.ciphers = "ECDHE+AESGCM";
    assert_non_null(ctx = tls_ctx_new(&t, err, sizeof err));
    tls_ctx_free(ctx);
}

static void
t_ctx_key_without_cert(void **state)
{
    struct config_tls t = tls_defaults();

    t.key_file = tpath("client.key");
    assert_null(tls_ctx_new(&t, err, sizeof err));
    assert_non_null(strstr(err, "tls.cert_file"));
}

/* Make an EC key and a self-signed certificate with the openssl tool. */
static int
make_cert(const char *key, const char *cert)
{
    char cmd[1024];

    snprintf(cmd, sizeof cmd,
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 "
        "-nodes -subj /CN=client -days 1 -keyout '%s' -out '%s' >/dev/null 2>&1",
        key, cert);
    return system(cmd) == 0 ? 0 : -1;
}

static void
t_ctx_client_cert(void **state)
{
    struct config_tls t = tls_defaults();
    SSL_CTX *ctx;
    char k1[256], c1[256], k2[256], c2[256];

    snprintf(k1, sizeof k1, "%s", tpath("a.key"));
    snprintf(c1, sizeof c1, "%s", tpath("a.pem"));
    snprintf(k2, sizeof k2, "%s", tpath("b.key"));
    snprintf(c2, sizeof c2, "%s", tpath("b.pem"));
    if (make_cert(k1, c1) != 0 || make_cert(k2, c2) != 0)
        skip(); /* no openssl command line tool */
    t.cert_file = c1;
    t.key_file = k1;
    assert_non_null(ctx = tls_ctx_new(&t, err, sizeof err));
    assert_non_null(SSL_CTX_get0_certificate(ctx));
    tls_ctx_free(ctx);

    /* a key that is not the certificate's */
    t.key_file = k2;
    assert_null(tls_ctx_new(&t, err, sizeof err));
    assert_non_null(strstr(err, "does not match"));

    /* a missing key file */
    t.key_file = tpath("missing.key");
    assert_null(tls_ctx_new(&t, err, sizeof err));
    assert_non_null(strstr(err, "tls.key_file"));
    assert_non_null(strstr(err, "missing.key"));
}

static void
t_ssl_dns_name(void **state)
{
    struct config_tls t = tls_defaults();
    SSL_CTX *ctx;
    SSL *ssl;

    assert_non_null(ctx = tls_ctx_new(&t, err, sizeof err));
    assert_non_null(ssl = tls_ssl_new(ctx, &t, "bus.example", err, sizeof err));
    assert_string_equal(SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name), "bus.example");
    assert_string_equal(X509_VERIFY_PARAM_get0_host(SSL_get0_param(ssl), 0), "bus.example");
    SSL_free(ssl);

    /* server_name overrides both the checked name and SNI */
    t.server_name = "real.example";
    assert_non_null(ssl = tls_ssl_new(ctx, &t, "10.1.2.3", err, sizeof err));
    assert_string_equal(SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name), "real.example");
    assert_string_equal(X509_VERIFY_PARAM_get0_host(SSL_get0_param(ssl), 0),
        "real.example");
    SSL_free(ssl);
    tls_ctx_free(ctx);
}

static void
t_ssl_ip_literal(void **state)
{
    struct config_tls t = tls_defaults();
    SSL_CTX *ctx;
    SSL *ssl;
    char *ip;

    assert_non_null(ctx = tls_ctx_new(&t, err, sizeof err));
    assert_non_null(ssl = tls_ssl_new(ctx, &t, "127.0.0.1", err, sizeof err));
    /* no SNI for an address (RFC 6066); the address is what is checked */
    assert_null(SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name));
    assert_null(X509_VERIFY_PARAM_get0_host(SSL_get0_param(ssl), 0));
    assert_non_null(ip = X509_VERIFY_PARAM_get1_ip_asc(SSL_get0_param(ssl)));
    assert_string_equal(ip, "127.0.0.1");
    OPENSSL_free(ip);
    SSL_free(ssl);

    assert_null(tls_ssl_new(ctx, &t, "", err, sizeof err));
    assert_non_null(strstr(err, "no host name"));
    tls_ctx_free(ctx);
}

static void
t_ssl_verify_off_still_sends_sni(void **state)
{
    struct config_tls t = tls_defaults();
    SSL_CTX *ctx;
    SSL *ssl;

    t.verify = false;
    assert_non_null(ctx = tls_ctx_new(&t, err, sizeof err));
    assert_non_null(ssl = tls_ssl_new(ctx, &t, "bus.example", err, sizeof err));
    assert_string_equal(SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name), "bus.example");
    assert_null(X509_VERIFY_PARAM_get0_host(SSL_get0_param(ssl), 0));
    SSL_free(ssl);
    tls_ctx_free(ctx);
}

static void
t_describe_verify_failures(void **state)
{
    struct config_tls t = tls_defaults();
    char buf[256];
    SSL_CTX *ctx;
    SSL *ssl;

    assert_non_null(ctx = tls_ctx_new(&t, err, sizeof err));
    assert_non_null(ssl = tls_ssl_new(ctx, &t, "bus.example", err, sizeof err));
    SSL_set_verify_result(ssl, X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT);
    tls_describe_failure(ssl, NULL, 0, 0, buf, sizeof buf);
    assert_string_equal(buf, "certificate verify failed: self-signed certificate");
    SSL_set_verify_result(ssl, X509_V_ERR_HOSTNAME_MISMATCH);
    tls_describe_failure(ssl, NULL, 0, 0, buf, sizeof buf);
    assert_string_equal(buf, "certificate verify failed: hostname mismatch");
    SSL_set_verify_result(ssl, X509_V_ERR_CERT_HAS_EXPIRED);
    tls_describe_failure(ssl, NULL, 0, 0, buf, sizeof buf);
    assert_string_equal(buf, "certificate verify failed: certificate has expired");
    SSL_free(ssl);
    tls_ctx_free(ctx);

    /* with verification off a verify result is not the reason */
    t.verify = false;
    assert_non_null(ctx = tls_ctx_new(&t, err, sizeof err));
    assert_non_null(ssl = tls_ssl_new(ctx, &t, "bus.example", err, sizeof err));
    SSL_set_verify_result(ssl, X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT);
    tls_describe_failure(ssl, NULL, 0, ECONNRESET, buf, sizeof buf);
    assert_string_equal(buf, strerror(ECONNRESET));
    SSL_free(ssl);
    tls_ctx_free(ctx);
}

static void
t_describe_openssl_errors(void **state)
{
    char buf[256];
    unsigned long errs[3];

    /* libevent mixes SSL_get_error() codes in: they are skipped */
    errs[0] = SSL_ERROR_SSL;
    errs[1] = ERR_PACK(ERR_LIB_SSL, 0, SSL_R_WRONG_VERSION_NUMBER);
    errs[2] = ERR_PACK(ERR_LIB_SSL, 0, SSL_R_WRONG_VERSION_NUMBER);
    tls_describe_failure(NULL, errs, 3, 0, buf, sizeof buf);
    assert_string_equal(buf, "wrong version number");

    tls_describe_failure(NULL, NULL, 0, 0, buf, sizeof buf);
    assert_string_equal(buf, "connection closed");
    tls_describe_failure(NULL, NULL, 0, EPIPE, buf, sizeof buf);
    assert_string_equal(buf, strerror(EPIPE));
}

/* An alert or a refused renegotiation is a TLS error; a system call's
 * error and libevent's SSL_get_error() codes are not. */
static void
t_protocol_error(void **state)
{
    unsigned long errs[3];

    assert_false(tls_is_protocol_error(NULL, 0));
    errs[0] = SSL_ERROR_SSL;
    errs[1] = ERR_PACK(ERR_LIB_SYS, 0, ECONNRESET);
    assert_false(tls_is_protocol_error(errs, 2));
#ifdef ERR_SYSTEM_FLAG
    errs[1] = ERR_SYSTEM_FLAG | ECONNRESET;
    assert_false(tls_is_protocol_error(errs, 2));
#endif
    errs[2] = ERR_PACK(ERR_LIB_SSL, 0, SSL_R_SSLV3_ALERT_HANDSHAKE_FAILURE);
    assert_true(tls_is_protocol_error(errs, 3));
    errs[0] = ERR_PACK(ERR_LIB_SSL, 0, SSL_R_NO_RENEGOTIATION);
    assert_true(tls_is_protocol_error(errs, 1));
}

/* The default offers forward-secret AEAD TLS 1.2 suites only, and a
 * setting that weakens it is refused. */
static void
t_ciphers_default_and_check(void **state)
{
    struct config_tls t = tls_defaults();
    STACK_OF(SSL_CIPHER) * sk;
    SSL_CTX *ctx;
    int tls12 = 0;

    assert_int_equal(tls_check_ciphers(TLS_DEFAULT_CIPHERS, err, sizeof err), 0);
    assert_non_null(ctx = tls_ctx_new(&t, err, sizeof err));
    sk = SSL_CTX_get_ciphers(ctx);
    for (int i = 0; i < sk_SSL_CIPHER_num(sk); i++) {
        const SSL_CIPHER *c = sk_SSL_CIPHER_value(sk, i);
        int kx = SSL_CIPHER_get_kx_nid(c);

        if (kx == NID_kx_any)
            continue; /* TLS 1.3 */
        tls12++;
        assert_true(SSL_CIPHER_is_aead(c));
        assert_true(kx == NID_kx_ecdhe || kx == NID_kx_dhe);
        assert_string_not_equal(SSL_CIPHER_get_name(c), "AES128-SHA");
    }
    assert_int_equal(tls12, 9);
    tls_ctx_free(ctx);

    assert_int_equal(tls_check_ciphers("AES128-SHA", err, sizeof err), -1);
    assert_non_null(strstr(err, "AES128-SHA, which is not AEAD"));
    assert_int_equal(tls_check_ciphers("DEFAULT", err, sizeof err), -1);
    assert_int_equal(tls_check_ciphers("HIGH", err, sizeof err), -1);
    assert_non_null(strstr(err, "does not authenticate the server"));
    assert_int_equal(tls_check_ciphers("ECDHE+AESGCM:@SECLEVEL=0", err, sizeof err), -1);
    assert_non_null(strstr(err, "@SECLEVEL=0"));
    assert_int_equal(tls_check_ciphers("ECDHE+AESGCM:@SECLEVEL=2", err, sizeof err), 0);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(t_ip_literal),
        cmocka_unit_test(t_peer_name),
        cmocka_unit_test(t_config_equal),
        cmocka_unit_test(t_ctx_defaults_verify),
        cmocka_unit_test(t_ctx_verify_off),
        cmocka_unit_test(t_ctx_refuses_old_versions),
        cmocka_unit_test_setup_teardown(t_ctx_missing_ca, setup, teardown),
        cmocka_unit_test_setup_teardown(t_ctx_bad_ca_content, setup, teardown),
        cmocka_unit_test(t_ctx_bad_ciphers),
        cmocka_unit_test_setup_teardown(t_ctx_key_without_cert, setup, teardown),
        cmocka_unit_test_setup_teardown(t_ctx_client_cert, setup, teardown),
        cmocka_unit_test(t_ssl_dns_name),
        cmocka_unit_test(t_ssl_ip_literal),
        cmocka_unit_test(t_ssl_verify_off_still_sends_sni),
        cmocka_unit_test(t_describe_verify_failures),
        cmocka_unit_test(t_describe_openssl_errors),
        cmocka_unit_test(t_protocol_error),
        cmocka_unit_test(t_ciphers_default_and_check),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
