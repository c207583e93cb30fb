/* Unit tests for src/config.c: every key, defaults, units, each error with
 * its exact file:line:col text, the dump round trip, and file checks. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>
#include <openssl/tls1.h>

#include "access.h"
#include "config.h"
#include "log.h"

#include "tmpdir.h"

static char err[1024];

static int
load(struct config *cfg, const char *yaml)
{
    err[0] = '\0';
    return config_load_string(cfg, "t.yaml", yaml, strlen(yaml), err, sizeof err);
}

static void
expect_ok(struct config *cfg, const char *yaml)
{
    if (load(cfg, yaml) != 0)
        fail_msg("unexpected error: %s", err);
}

static void
expect_error(const char *yaml, const char *msg)
{
    struct config cfg;

    assert_int_equal(load(&cfg, yaml), -1);
    assert_string_equal(err, msg);
    config_free(&cfg);
}

/* --- defaults and every key --- */

static void
check_defaults(const struct config *c)
{
    assert_null(c->bus.host);
    assert_int_equal(c->bus.port, 9091);
    assert_true(c->bus.tls.enabled);
    assert_true(c->bus.tls.verify);
    assert_null(c->bus.tls.ca_file);
    assert_null(c->bus.tls.ca_dir);
    assert_null(c->bus.tls.server_name);
    assert_null(c->bus.tls.cert_file);
    assert_null(c->bus.tls.key_file);
    assert_null(c->bus.tls.ciphers);
    assert_int_equal(c->bus.tls.min_version, TLS1_2_VERSION);
    assert_int_equal(c->bus.auth, CONFIG_AUTH_NONE);
    assert_null(c->bus.credentials_file);
    assert_null(c->bus.token_file);
    assert_null(c->bus.impersonating);
    assert_null(c->bus.forwarded_for);
    assert_true(c->bus.forwarded_for_host);
    assert_int_equal(c->bus.connect_timeout_ms, 10000);
    assert_int_equal(c->bus.reconnect_min_ms, 500);
    assert_int_equal(c->bus.reconnect_max_ms, 30000);
    assert_int_equal(c->bus.reconnect_reset_ms, 60000);
    assert_int_equal(c->bus.auth_fail_window_ms, 2000);
    assert_int_equal(c->bus.heartbeat_timeout_ms, 0);
    assert_int_equal(c->bus.keepalive_s, 30);
    assert_int_equal(c->bus.output_high_water, 4 << 20);
    assert_int_equal(c->bus.limits.max_string, WIRE_DEFAULT_MAX_STRING);
    assert_int_equal(c->bus.limits.max_payload, WIRE_DEFAULT_MAX_PAYLOAD);
    assert_int_equal(c->bus.limits.max_packets, WIRE_DEFAULT_MAX_PACKETS);
    assert_int_equal(c->bus.limits.max_entitlements, WIRE_DEFAULT_MAX_ENTITLEMENTS);
    assert_int_equal(c->bus.limits.max_message, WIRE_DEFAULT_MAX_MESSAGE);
    assert_string_equal(c->listen.path, DEFAULT_SOCKET);
    assert_int_equal(c->listen.mode, 0660);
    assert_null(c->listen.group);
    assert_int_equal(c->listen.max_sessions, 10000);
    assert_int_equal(c->listen.max_line, 64 << 10);
    assert_int_equal(c->listen.max_payload, 1 << 20);
    assert_int_equal(c->listen.max_packets, 1024);
    assert_int_equal(c->listen.max_subscriptions, 10000);
    assert_int_equal(c->listen.max_output, 8 << 20);
    assert_int_equal(c->router.image_cache_bytes, 1 << 20);
    assert_int_equal(c->router.busdown_queue, 0);
    assert_int_equal(c->router.busdown_queue_bytes, 16 << 20);
    assert_false(c->router.allow_empty_publish);
    assert_int_equal(c->log.level, LOG_INFO);
    assert_int_equal(c->log.dest, LOG_DEST_STDERR);
    assert_int_equal(c->daemon.shutdown_grace_ms, 5000);
}

static void
test_defaults(void **state)
{
    struct config cfg;

    config_defaults(&cfg);
    check_defaults(&cfg);
    config_free(&cfg);
}

static void
test_minimal_is_defaults(void **state)
{
    struct config cfg;

    expect_ok(&cfg, "bus:\n  host: localhost\n");
    assert_string_equal(cfg.path, "t.yaml");
    assert_string_equal(cfg.bus.host, "localhost");
    free(cfg.bus.host);
    cfg.bus.host = NULL;
    check_defaults(&cfg);
    config_free(&cfg);
}

static const char full_yaml[] =
    "# every key, none at its default\n"
    "bus:\n"
    "  host: bus.example.com\n"
    "  port: 9443\n"
    "  tls:\n"
    "    verify: false\n"
    "    ca_file: /etc/ssl/ca.pem\n"
    "    ca_dir: /etc/ssl/certs\n"
    "    server_name: distributor.example.com\n"
    "    cert_file: /etc/busgate/client.pem\n"
    "    key_file: /etc/busgate/client.key\n"
    "    ciphers: \"ECDHE+AESGCM:!aNULL\"\n"
    "    min_version: \"1.3\"\n"
    "  auth: token\n"
    "  credentials_file: /etc/busgate/credentials.ini\n"
    "  token_file: /run/secrets/bus.jwt\n"
    "  impersonating: alice\n"
    "  forwarded_for: gw01.example.com\n"
    "  connect_timeout: 3s\n"
    "  reconnect: { min: 250ms, max: 2m, reset_after: 1h }\n"
    "  auth_fail_window: 1500ms\n"
    "  heartbeat: { timeout: 15s }\n"
    "  keepalive: 1m\n"
    "  output_high_water: 8MiB\n"
    "  limits: { max_string: 8KiB, max_payload: 2MiB, max_packets: 64,\n"
    "            max_entitlements: 32, max_message: 32MiB }\n"
    "listen:\n"
    "  path: /tmp/bg.sock\n"
    "  mode: \"0600\"\n"
    "  group: adm\n"
    "  max_sessions: 500\n"
    "  max_line: 128KiB\n"
    "  max_payload: 512KiB\n"
    "  max_packets: 16\n"
    "  max_subscriptions: 200\n"
    "  max_output: 16MiB\n"
    "router:\n"
    "  image_cache: 2MiB\n"
    "  busdown_queue: 100\n"
    "  busdown_queue_bytes: 1MB\n"
    "  allow_empty_publish: yes\n"
    "log:\n"
    "  level: debug\n"
    "  destination: syslog\n"
    "daemon:\n"
    "  shutdown_grace: 10s\n";

static void
check_full(const struct config *c)
{
    assert_string_equal(c->bus.host, "bus.example.com");
    assert_int_equal(c->bus.port, 9443);
    assert_true(c->bus.tls.enabled);
    assert_false(c->bus.tls.verify);
    assert_string_equal(c->bus.tls.ca_file, "/etc/ssl/ca.pem");
    assert_string_equal(c->bus.tls.ca_dir, "/etc/ssl/certs");
    assert_string_equal(c->bus.tls.server_name, "distributor.example.com");
    assert_string_equal(c->bus.tls.cert_file, "/etc/busgate/client.pem");
    assert_string_equal(c->bus.tls.key_file, "/etc/busgate/client.key");
    assert_string_equal(c->bus.tls.ciphers, "ECDHE+AESGCM:!aNULL");
    assert_int_equal(c->bus.tls.min_version, TLS1_3_VERSION);
    assert_int_equal(c->bus.auth, CONFIG_AUTH_TOKEN);
    assert_string_equal(c->bus.credentials_file, "/etc/busgate/credentials.ini");
    assert_string_equal(c->bus.token_file, "/run/secrets/bus.jwt");
    assert_string_equal(c->bus.impersonating, "alice");
    assert_string_equal(c->bus.forwarded_for, "gw01.example.com");
    assert_false(c->bus.forwarded_for_host);
    assert_int_equal(c->bus.connect_timeout_ms, 3000);
    assert_int_equal(c->bus.reconnect_min_ms, 250);
    assert_int_equal(c->bus.reconnect_max_ms, 120000);
    assert_int_equal(c->bus.reconnect_reset_ms, 3600000);
    assert_int_equal(c->bus.auth_fail_window_ms, 1500);
    assert_int_equal(c->bus.heartbeat_timeout_ms, 15000);
    assert_int_equal(c->bus.keepalive_s, 60);
    assert_int_equal(c->bus.output_high_water, 8 << 20);
    assert_int_equal(c->bus.limits.max_string, 8192);
    assert_int_equal(c->bus.limits.max_payload, 2 << 20);
    assert_int_equal(c->bus.limits.max_packets, 64);
    assert_int_equal(c->bus.limits.max_entitlements, 32);
    assert_int_equal(c->bus.limits.max_message, 32 << 20);
    assert_string_equal(c->listen.path, "/tmp/bg.sock");
    assert_int_equal(c->listen.mode, 0600);
    assert_string_equal(c->listen.group, "adm");
    assert_int_equal(c->listen.max_sessions, 500);
    assert_int_equal(c->listen.max_line, 128 << 10);
    assert_int_equal(c->listen.max_payload, 512 << 10);
    assert_int_equal(c->listen.max_packets, 16);
    assert_int_equal(c->listen.max_subscriptions, 200);
    assert_int_equal(c->listen.max_output, 16 << 20);
    assert_int_equal(c->router.image_cache_bytes, 2 << 20);
    assert_int_equal(c->router.busdown_queue, 100);
    assert_int_equal(c->router.busdown_queue_bytes, 1000000);
    assert_true(c->router.allow_empty_publish);
    assert_int_equal(c->log.level, LOG_DEBUG);
    assert_int_equal(c->log.dest, LOG_DEST_SYSLOG);
    assert_int_equal(c->daemon.shutdown_grace_ms, 10000);
}

static void
test_every_key(void **state)
{
    struct config cfg;

    expect_ok(&cfg, full_yaml);
    check_full(&cfg);
    config_free(&cfg);
    assert_null(cfg.bus.host);
    assert_null(cfg.path);
    config_free(&cfg); /* a second free is harmless */
}

/* --- units --- */

static void
test_sizes(void **state)
{
    static const struct {
        const char *s;
        uint64_t v;
    } ok[] = {
        { "0", 0 },
        { "1024", 1024 },
        { "1B", 1 },
        { "4KiB", 4096 },
        { "4kib", 4096 },
        { "16MiB", 16u << 20 },
        { "1GiB", 1u << 30 },
        { "2kB", 2000 },
        { "3MB", 3000000 },
        { "1GB", 1000000000 },
        { "4 MiB", 4u << 20 },
        { "007KiB", 7168 },
    };
    static const char *const bad[] = {
        "",
        "K",
        "4K",
        "4M",
        "4 ",
        "4  MiB",
        "-1",
        "+1",
        "1.5MiB",
        "MiB",
        "4MiBx",
        "0x10",
        " 4",
        "99999999999999999999",
        "17179869184GiB",
        "4TiB",
        "8KB", /* kB, MB, GB only as spelled: often meant as 1024s */
        "8kb",
        "8mb",
        "1gb",
        "2b",
    };
    uint64_t v;

    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        v = 12345;
        assert_int_equal(config_parse_size(ok[i].s, &v), 0);
        assert_int_equal(v, ok[i].v);
    }
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        if (config_parse_size(bad[i], &v) == 0)
            fail_msg("size \"%s\" accepted", bad[i]);
}

static void
test_durations(void **state)
{
    static const struct {
        const char *s;
        uint64_t v;
    } ok[] = {
        { "0", 0 },
        { "0s", 0 },
        { "0ms", 0 },
        { "500ms", 500 },
        { "30s", 30000 },
        { "5m", 300000 },
        { "2h", 7200000 },
        { "1 s", 1000 },
    };
    static const char *const bad[] = {
        "",
        "5",
        "1000",
        "5S",
        "5 ",
        "5sec",
        "1d",
        "-1s",
        "1.5s",
        "s",
        "ms",
        "5ms ",
        "99999999999999999999s",
        "9999999999999999h",
    };
    uint64_t v;

    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        v = 12345;
        assert_int_equal(config_parse_duration_ms(ok[i].s, &v), 0);
        assert_int_equal(v, ok[i].v);
    }
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        if (config_parse_duration_ms(bad[i], &v) == 0)
            fail_msg("duration \"%s\" accepted", bad[i]);
}

static void
test_bools(void **state)
{
    static const struct {
        const char *s;
        bool v;
    } cases[] = {
        { "true", true },
        { "True", true },
        { "yes", true },
        { "on", true },
        { "ON", true },
        { "false", false },
        { "FALSE", false },
        { "no", false },
        { "off", false },
    };
    char yaml[128];
    struct config cfg;

    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        snprintf(yaml, sizeof yaml, "bus: {host: h}\nrouter: {allow_empty_publish: %s}\n",
            cases[i].s);
        expect_ok(&cfg, yaml);
        assert_int_equal(cfg.router.allow_empty_publish, cases[i].v);
        config_free(&cfg);
    }
    expect_error("bus: {host: h}\nrouter: {allow_empty_publish: 1}\n",
        "t.yaml:2:31: router.allow_empty_publish: expected true or false, got \"1\"");
}

static void
test_modes(void **state)
{
    static const struct {
        const char *s;
        unsigned v;
    } cases[] = {
        { "0660", 0660 },
        { "\"0660\"", 0660 },
        { "0o640", 0640 },
        { "600", 0600 },
        { "0", 0 },
        { "07777", 07777 },
    };
    char yaml[128];
    struct config cfg;

    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        snprintf(yaml, sizeof yaml, "bus: {host: h}\nlisten: {mode: %s}\n", cases[i].s);
        expect_ok(&cfg, yaml);
        assert_int_equal(cfg.listen.mode, cases[i].v);
        config_free(&cfg);
    }
    expect_error("bus: {host: h}\nlisten: {mode: \"17777\"}\n",
        "t.yaml:2:16: listen.mode: \"17777\" is out of range (0000 to 07777)");
    expect_error("bus: {host: h}\nlisten: {mode: 0688}\n",
        "t.yaml:2:16: listen.mode: expected an octal file mode such as \"0660\", got \"0688\"");
}

static void
test_keepalive_whole_seconds(void **state)
{
    expect_error("bus:\n  host: h\n  keepalive: 1500ms\n",
        "t.yaml:3:14: bus.keepalive: 1500ms is not a whole number of seconds");
    expect_error("bus:\n  host: h\n  keepalive: 10h\n",
        "t.yaml:3:14: bus.keepalive: \"10h\" is out of range (0 to 32767s)");
}

/* --- tls, forwarded_for, auth --- */

static void
test_tls_forms(void **state)
{
    struct config cfg;

    expect_ok(&cfg, "bus:\n  host: h\n  tls: false\n");
    assert_false(cfg.bus.tls.enabled);
    assert_true(cfg.bus.tls.verify);
    config_free(&cfg);

    expect_ok(&cfg, "bus:\n  host: h\n  tls: true\n");
    assert_true(cfg.bus.tls.enabled);
    assert_true(cfg.bus.tls.verify);
    assert_null(cfg.bus.tls.ca_file);
    assert_int_equal(cfg.bus.tls.min_version, TLS1_2_VERSION);
    config_free(&cfg);

    expect_ok(&cfg, "bus:\n  host: h\n  tls:\n");
    assert_true(cfg.bus.tls.enabled);
    config_free(&cfg);

    expect_ok(&cfg, "bus:\n  host: h\n  tls: { enabled: off, verify: no }\n");
    assert_false(cfg.bus.tls.enabled);
    assert_false(cfg.bus.tls.verify);
    config_free(&cfg);

    expect_ok(&cfg, "bus:\n  host: h\n  tls: { ca_file: ca.pem, ca_dir: ~ }\n");
    assert_true(cfg.bus.tls.enabled);
    assert_string_equal(cfg.bus.tls.ca_file, "ca.pem"); /* no base dir from a string */
    assert_null(cfg.bus.tls.ca_dir);
    config_free(&cfg);

    expect_error("bus:\n  host: h\n  tls: maybe\n",
        "t.yaml:3:8: bus.tls: expected true, false or a mapping of TLS settings, got \"maybe\"");
    expect_error("bus:\n  host: h\n  tls: [a]\n",
        "t.yaml:3:8: bus.tls: expected true, false or a mapping of TLS settings, got a sequence");
    expect_error("bus:\n  host: h\n  tls: { min_version: \"1.1\" }\n",
        "t.yaml:3:23: bus.tls.min_version: expected one of 1.2, 1.3, got \"1.1\"");
    expect_error("bus:\n  host: h\n  tls: { cert_file: c.pem }\n",
        "t.yaml:3:21: bus.tls.cert_file needs bus.tls.key_file as well");
    expect_error("bus:\n  host: h\n  tls: { key_file: c.key }\n",
        "t.yaml:3:20: bus.tls.key_file needs bus.tls.cert_file as well");
}

/* Weak suites are refused where they are written (issue 10). */
static void
test_tls_ciphers_strength(void **state)
{
    struct config cfg;

    expect_ok(&cfg,
        "bus:\n  host: h\n  tls: { ciphers: \"ECDHE+AESGCM:ECDHE+CHACHA20\" }\n");
    config_free(&cfg);
    expect_error("bus:\n  host: h\n  tls:\n    ciphers: \"ECDHE+AESGCM:@SECLEVEL=0\"\n",
        "t.yaml:4:14: bus.tls.ciphers: @SECLEVEL=0 allows weak keys and suites; "
        "use 2 or more, or leave it out");
    expect_error("bus:\n  host: h\n  tls:\n    ciphers: \"ECDHE+AESGCM:@SECLEVEL=1\"\n",
        "t.yaml:4:14: bus.tls.ciphers: @SECLEVEL=1 allows weak keys and suites; "
        "use 2 or more, or leave it out");
    expect_error("bus:\n  host: h\n  tls: { ciphers: AES128-SHA }\n",
        "t.yaml:3:19: bus.tls.ciphers: the list enables AES128-SHA, which is not AEAD "
        "(a CBC or stream cipher); only forward-secret AEAD suites are allowed (leave "
        "bus.tls.ciphers unset for the safe default)");
    expect_error("bus:\n  host: h\n  tls: { ciphers: \"kRSA+AESGCM\" }\n",
        "t.yaml:3:19: bus.tls.ciphers: the list enables AES256-GCM-SHA384, which has no "
        "forward secrecy (no ECDHE or DHE key exchange); only forward-secret AEAD suites "
        "are allowed (leave bus.tls.ciphers unset for the safe default)");
    assert_int_equal(load(&cfg, "bus:\n  host: h\n  tls: { ciphers: NO-SUCH }\n"), -1);
    assert_non_null(
        strstr(err, "t.yaml:3:19: bus.tls.ciphers: no cipher suite OpenSSL knows"));
    config_free(&cfg);
}

static void
test_forwarded_for(void **state)
{
    static const struct {
        const char *yaml;
        bool host;
        const char *name;
    } cases[] = {
        { "", true, NULL },
        { "  forwarded_for: host\n", true, NULL },
        { "  forwarded_for: \"host\"\n", true, NULL },
        { "  forwarded_for: true\n", true, NULL },
        { "  forwarded_for: false\n", false, NULL },
        { "  forwarded_for: no\n", false, NULL },
        { "  forwarded_for: none\n", false, NULL },
        { "  forwarded_for: ~\n", false, NULL },
        { "  forwarded_for:\n", false, NULL },
        { "  forwarded_for: gw01.example.com\n", false, "gw01.example.com" },
        { "  forwarded_for: \"10.0.0.7\"\n", false, "10.0.0.7" },
    };
    char yaml[256];
    struct config cfg;

    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        snprintf(yaml, sizeof yaml, "bus:\n  host: h\n%s", cases[i].yaml);
        expect_ok(&cfg, yaml);
        assert_int_equal(cfg.bus.forwarded_for_host, cases[i].host);
        if (cases[i].name == NULL)
            assert_null(cfg.bus.forwarded_for);
        else
            assert_string_equal(cfg.bus.forwarded_for, cases[i].name);
        config_free(&cfg);
    }
}

/* bus.protocol: 3 by default, 5 kept as written (a synonym of 4); from 4
 * on a login setting holding ';' cannot be sent and is refused at load. */
static void
test_bus_protocol(void **state)
{
    static const int ok[] = { 3, 4, 5, 6 };
    char yaml[256];
    struct config cfg;

    expect_ok(&cfg, "bus:\n  host: h\n");
    assert_int_equal(cfg.bus.protocol, 3);
    assert_null(cfg.bus.application);
    config_free(&cfg);
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        snprintf(yaml, sizeof yaml,
            "bus:\n  host: h\n  protocol: %d\n"
            "  application: a=b\n  impersonating: x;y\n",
            ok[i]);
        if (ok[i] == 3) {
            expect_ok(&cfg, yaml);
            assert_int_equal(cfg.bus.protocol, 3);
            assert_string_equal(cfg.bus.application, "a=b");
            config_free(&cfg);
            continue;
        }
        assert_int_equal(load(&cfg, yaml), -1);
        assert_non_null(strstr(err,
            "bus.impersonating contains ';', which "
            "bus.protocol"));
        config_free(&cfg);
    }
    expect_error("bus:\n  host: h\n  protocol: 7\n",
        "t.yaml:3:13: bus.protocol: expected one of 3, 4, 5, 6, got \"7\"");
    expect_error("bus:\n  host: h\n  protocol: 4\n  forwarded_for: \"a;b\"\n",
        "t.yaml:4:18: bus.forwarded_for contains ';', which bus.protocol 4 "
        "cannot send (the distributor splits its one login string on ';' "
        "with no escaping); remove the ';' or use bus.protocol 3");
    expect_error("bus:\n  host: h\n  protocol: 6\n  application: \";\"\n",
        "t.yaml:4:16: bus.application contains ';', which bus.protocol 6 "
        "cannot send (the distributor splits its one login string on ';' "
        "with no escaping); remove the ';' or use bus.protocol 3");
}

static void
test_auth_rules(void **state)
{
    struct config cfg;

    expect_ok(&cfg, "bus:\n  host: h\n  auth: basic\n  credentials_file: /c.ini\n");
    assert_int_equal(cfg.bus.auth, CONFIG_AUTH_BASIC);
    config_free(&cfg);
    expect_ok(&cfg, "bus:\n  host: h\n  auth: Token\n  token_file: /t.jwt\n");
    assert_int_equal(cfg.bus.auth, CONFIG_AUTH_TOKEN);
    config_free(&cfg);
    expect_ok(&cfg, "bus:\n  host: h\n  auth: token\n  credentials_file: /c.ini\n");
    config_free(&cfg);

    expect_error("bus:\n  host: h\n  auth: basic\n",
        "t.yaml:3:9: bus.auth: basic needs bus.credentials_file "
        "(an INI file with username and password)");
    expect_error("bus:\n  host: h\n  auth: token\n",
        "t.yaml:3:9: bus.auth: token needs bus.token_file or bus.credentials_file");
    expect_error(
        "bus:\n  host: h\n  auth: basic\n  credentials_file: /c\n  token_file: /t\n",
        "t.yaml:5:15: bus.token_file is only used with bus.auth: token (bus.auth is basic)");
    expect_error("bus:\n  host: h\n  confirm: heartbeat\n",
        "t.yaml:3:12: bus.confirm: heartbeat needs bus.heartbeat.timeout (the first "
        "heartbeat confirms the login); use probe for a distributor without heartbeats");
    expect_error("bus:\n  host: h\n  confirm: sometimes\n",
        "t.yaml:3:12: bus.confirm: expected one of none, probe, heartbeat, got \"sometimes\"");
    expect_error("bus:\n  host: h\n  credentials_file: /c\n",
        "t.yaml:3:21: bus.credentials_file is set but bus.auth is none "
        "(set bus.auth to basic or token, or remove credentials_file)");
    expect_error("bus:\n  host: h\n  auth: kerberos\n",
        "t.yaml:3:9: bus.auth: expected one of none, basic, token, got \"kerberos\"");
}

/* --- errors --- */

static void
test_unknown_keys(void **state)
{
    expect_error("bus:\n  host: h\n  prot: 1\n",
        "t.yaml:3:3: unknown key 'bus.prot' (did you mean 'port'?)");
    expect_error("bus:\n  host: h\n  tls:\n    verfy: true\n",
        "t.yaml:4:5: unknown key 'bus.tls.verfy' (did you mean 'verify'?)");
    expect_error("bus:\n  host: h\n  zzzzzz: 1\n", "t.yaml:3:3: unknown key 'bus.zzzzzz'");
    expect_error("port: 9091\n",
        "t.yaml:1:1: unknown key 'port' (did you mean 'bus.port'?)");
    expect_error("bus:\n  host: h\nlistn: {}\n",
        "t.yaml:3:1: unknown key 'listn' (did you mean 'listen'?)");
    expect_error("bus:\n  host: h\n  reconnect: { min: 1s, maximum: 2s }\n",
        "t.yaml:3:25: unknown key 'bus.reconnect.maximum'");
    /* A dotted key is not a path into the tree. */
    expect_error("bus:\n  host: h\n  tls.verify: false\n",
        "t.yaml:3:3: unknown key 'bus.tls.verify'");
    expect_error("bus:\n  host: h\n  ? [a, b]\n  : 1\n",
        "t.yaml:3:5: expected a key name, got a sequence");
}

static void
test_wrong_types(void **state)
{
    expect_error("bus: hello\n", "t.yaml:1:6: bus: expected a mapping, got \"hello\"");
    expect_error("bus:\n  - host\n", "t.yaml:2:3: bus: expected a mapping, got a sequence");
    expect_error("bus:\n  host: {a: 1}\n",
        "t.yaml:2:9: bus.host: expected a string, got a mapping");
    expect_error("bus:\n  host: h\n  port: {a: 1}\n",
        "t.yaml:3:9: bus.port: expected a number from 1 to 65535, got a mapping");
    expect_error("bus:\n  host: h\n  port: http\n",
        "t.yaml:3:9: bus.port: expected a number from 1 to 65535, got \"http\"");
    expect_error("bus:\n  host: h\n  connect_timeout: 10\n",
        "t.yaml:3:20: bus.connect_timeout: expected a duration such as 500ms, 30s, 5m or 0, "
        "got \"10\"");
    expect_error("bus:\n  host: h\n  output_high_water: 4M\n",
        "t.yaml:3:22: bus.output_high_water: expected a size such as 4KiB, 16MiB or 1024, "
        "got \"4M\"");
    expect_error("bus: {host: h}\nlog: {level: verbose}\n",
        "t.yaml:2:14: log.level: expected one of error, warning, notice, info, debug, "
        "got \"verbose\"");
    expect_error("bus: {host: h}\nlog: {destination: file}\n",
        "t.yaml:2:20: log.destination: expected one of stderr, syslog, got \"file\"");
    expect_error("bus: {host: h}\nlisten: {path: ~}\n",
        "t.yaml:2:16: listen.path: expected a path, got \"~\"");
    expect_error("- a\n- b\n",
        "t.yaml:1:1: expected a mapping of settings (bus:, listen:, ...), got a sequence");
    expect_error("hello\n",
        "t.yaml:1:1: expected a mapping of settings (bus:, listen:, ...), got a scalar");
    expect_error("bus:\n  host: \"a\\0b\"\n", "t.yaml:2:9: bus.host: contains a NUL byte");
}

static void
test_ranges(void **state)
{
    expect_error("bus:\n  host: h\n  port: 0\n",
        "t.yaml:3:9: bus.port: \"0\" is out of range (1 to 65535)");
    expect_error("bus:\n  host: h\n  port: 65536\n",
        "t.yaml:3:9: bus.port: \"65536\" is out of range (1 to 65535)");
    expect_error("bus:\n  host: h\n  limits: { max_string: 0 }\n",
        "t.yaml:3:25: bus.limits.max_string: \"0\" is out of range (256B to 1GiB)");
    /* Below the link's own names (its probe topic), the link never came up. */
    expect_error("bus:\n  host: h\n  limits: { max_string: 16B }\n",
        "t.yaml:3:25: bus.limits.max_string: \"16B\" is out of range (256B to 1GiB)");
    expect_error("bus:\n  host: h\n  limits: { max_packets: 0 }\n",
        "t.yaml:3:26: bus.limits.max_packets: \"0\" is out of range (1 to 1000000)");
    expect_error("bus:\n  host: h\n  limits: { max_message: 2GiB }\n",
        "t.yaml:3:26: bus.limits.max_message: \"2GiB\" is out of range (1B to 1GiB)");
    expect_error("bus:\n  host: h\n  reconnect: { min: 0 }\n",
        "t.yaml:3:21: bus.reconnect.min: \"0\" is out of range (1ms to 24h)");
    expect_error("bus:\n  host: h\n  reconnect: { min: 60s, max: 30s }\n",
        "t.yaml:3:21: bus.reconnect.min (1m) is greater than bus.reconnect.max (30s)");
    expect_error("bus:\n  host: h\n  reconnect:\n    max: 100ms\n",
        "t.yaml:4:10: bus.reconnect.min (500ms) is greater than bus.reconnect.max (100ms)");
    expect_error("bus: {host: h}\nlisten: {max_line: 100}\n",
        "t.yaml:2:20: listen.max_line: \"100\" is out of range (256B to 16MiB)");
    expect_error(
        "bus: {host: h}\nlisten: {path: /run/"
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.sock}\n",
        "t.yaml:2:16: listen.path: \"/run/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa...\" is longer than "
        "107 bytes");
}

static void
test_missing_and_duplicate(void **state)
{
    expect_error("", "t.yaml:1:1: bus.host is required (the distributor's host name)");
    expect_error("# only a comment\n",
        "t.yaml:1:1: bus.host is required (the distributor's host name)");
    expect_error("log:\n  level: debug\nbus:\n  port: 1\n",
        "t.yaml:3:1: bus.host is required (the distributor's host name)");
    expect_error("bus:\n  host:\n",
        "t.yaml:2:3: bus.host is required (the distributor's host name)");
    expect_error("bus:\n  host: x\n  host: y\n",
        "t.yaml:3:3: duplicate key 'bus.host' (first at line 2)");
    expect_error("bus: {host: x}\nbus: {port: 1}\n",
        "t.yaml:2:1: duplicate key 'bus' (first at line 1)");
}

static void
test_yaml_syntax(void **state)
{
    expect_error("bus:\n  host: x\n port: 1\n",
        "t.yaml:3:2: YAML syntax error: did not find expected key "
        "(while parsing a block mapping at line 1 column 1)");
    expect_error("bus: {host: x\n",
        "t.yaml:2:1: YAML syntax error: did not find expected ',' or '}' "
        "(while parsing a flow mapping at line 1 column 6)");
    expect_error("bus:\n  host: *nothing\n",
        "t.yaml:2:9: YAML syntax error: found undefined alias");
    expect_error("bus:\n  host: \"x\xff\"\n",
        "t.yaml:2:11: YAML error: invalid leading UTF-8 octet");
    expect_error("bus: {host: x}\n---\nlog: {}\n",
        "t.yaml:3:1: only one YAML document is expected (found a second one)");
}

static void
test_deep_nesting(void **state)
{
    char yaml[256];

    /* Refused early: libyaml's scanner is slow on deep flow nesting. */
    snprintf(yaml, sizeof yaml, "a: %.100s",
        "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[");
    expect_error(yaml, "t.yaml:1:35: nested more than 32 levels deep");
}

static void
test_aliases(void **state)
{
    struct config cfg;

    /* Anchors work; the same node may be read twice. */
    expect_ok(&cfg, "bus:\n  host: &h bus.example.com\n  tls: { server_name: *h }\n");
    assert_string_equal(cfg.bus.tls.server_name, "bus.example.com");
    config_free(&cfg);
}

/* --- the dump --- */

static char *
dump(const struct config *cfg)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);

    assert_non_null(f);
    config_dump(cfg, f);
    fclose(f);
    return buf;
}

/* Two dumps match past their first (comment) line, which names the file. */
static void
assert_same_dump(const char *a, const char *b)
{
    assert_non_null(strchr(a, '\n'));
    assert_non_null(strchr(b, '\n'));
    assert_string_equal(strchr(a, '\n'), strchr(b, '\n'));
}

static void
test_dump_round_trip(void **state)
{
    struct config a, b;
    char *d1, *d2;

    expect_ok(&a, full_yaml);
    d1 = dump(&a);
    assert_non_null(strstr(d1,
        "\nbus:\n  host: \"bus.example.com\"\n  port: 9443\n  tls:\n"
        "    enabled: true\n    verify: false\n"));
    assert_non_null(strstr(d1,
        "\n  reconnect:\n    min: 250ms\n    max: 2m\n"
        "    reset_after: 1h\n"));
    assert_non_null(strstr(d1, "\n    min_version: \"1.3\"\n"));
    assert_non_null(strstr(d1, "\n  forwarded_for: \"gw01.example.com\"\n"));
    assert_non_null(strstr(d1, "\n  mode: \"0600\"\n"));
    assert_non_null(strstr(d1, "\n  busdown_queue_bytes: 1000000B\n"));
    assert_non_null(strstr(d1, "\nlog:\n  level: debug\n  destination: syslog\n"));
    assert_non_null(strstr(d1, "\ndaemon:\n  shutdown_grace: 10s\n"));

    if (load(&b, d1) != 0)
        fail_msg("dump does not load: %s\n%s", err, d1);
    check_full(&b);
    d2 = dump(&b);
    assert_same_dump(d1, d2);
    free(d1);
    free(d2);
    config_free(&a);
    config_free(&b);
}

static void
test_dump_defaults(void **state)
{
    struct config a, b;
    char *d1, *d2;

    expect_ok(&a, "bus: {host: \"odd \\\"name\\\"\\t\"}\n");
    d1 = dump(&a);
    assert_non_null(strstr(d1, "  host: \"odd \\\"name\\\"\\x09\"\n"));
    assert_non_null(strstr(d1, "    ca_file: ~\n"));
    assert_non_null(strstr(d1, "  forwarded_for: host\n"));
    assert_non_null(strstr(d1, "  heartbeat:\n    timeout: 0\n"));
    assert_non_null(strstr(d1, "  keepalive: 30s\n"));
    assert_non_null(strstr(d1, "  output_high_water: 4MiB\n"));
    assert_non_null(strstr(d1, "  max_line: 64KiB\n"));
    if (load(&b, d1) != 0)
        fail_msg("dump does not load: %s\n%s", err, d1);
    assert_string_equal(b.bus.host, "odd \"name\"\t");
    d2 = dump(&b);
    assert_same_dump(d1, d2);
    free(d1);
    free(d2);
    config_free(&a);
    config_free(&b);
}

/* --- files --- */

static void
write_file(const char *path, const char *text, mode_t mode)
{
    FILE *f = fopen(path, "w");

    assert_non_null(f);
    fputs(text, f);
    fclose(f);
    assert_int_equal(chmod(path, mode), 0);
}

static int
setup_dir(void **state)
{
    return tmpdir_make("test_config");
}

static int
teardown_dir(void **state)
{
    return tmpdir_remove();
}

static void
test_load_file_relative_paths(void **state)
{
    struct config cfg;
    char real[4096], want[4200];

    write_file(tpath("busgated.yaml"),
        "bus:\n  host: localhost\n  tls: { ca_file: ca.pem, cert_file: /abs/c.pem, "
        "key_file: ./client.key }\n  auth: basic\n  credentials_file: credentials.ini\n"
        "listen:\n  path: bg.sock\n",
        0644);
    assert_non_null(realpath(tmpdir, real));
    if (config_load(&cfg, tpath("busgated.yaml"), err, sizeof err) != 0)
        fail_msg("%s", err);
    assert_string_equal(cfg.path, tpath("busgated.yaml"));
    snprintf(want, sizeof want, "%s/ca.pem", real);
    assert_string_equal(cfg.bus.tls.ca_file, want);
    assert_string_equal(cfg.bus.tls.cert_file, "/abs/c.pem");
    snprintf(want, sizeof want, "%s/./client.key", real);
    assert_string_equal(cfg.bus.tls.key_file, want);
    snprintf(want, sizeof want, "%s/credentials.ini", real);
    assert_string_equal(cfg.bus.credentials_file, want);
    snprintf(want, sizeof want, "%s/bg.sock", real);
    assert_string_equal(cfg.listen.path, want);
    config_free(&cfg);
}

static void
test_load_file_errors(void **state)
{
    struct config cfg;
    char want[512];

    assert_int_equal(config_load(&cfg, tpath("nonexistent.yaml"), err, sizeof err), -1);
    snprintf(want, sizeof want, "%s: No such file or directory", tpath("nonexistent.yaml"));
    assert_string_equal(err, want);
    config_free(&cfg);

    assert_int_equal(config_load(&cfg, tmpdir, err, sizeof err), -1);
    snprintf(want, sizeof want, "%s: not a regular file (a directory)", tmpdir);
    assert_string_equal(err, want);
    config_free(&cfg);

    write_file(tpath("busgated.yaml"), "bus:\n  host: h\n  prot: 1\n", 0644);
    assert_int_equal(config_load(&cfg, tpath("busgated.yaml"), err, sizeof err), -1);
    snprintf(want, sizeof want, "%s:3:3: unknown key 'bus.prot' (did you mean 'port'?)",
        tpath("busgated.yaml"));
    assert_string_equal(err, want);
    config_free(&cfg);
}

static void
load_checked(struct config *cfg, const char *yaml)
{
    write_file(tpath("busgated.yaml"), yaml, 0644);
    if (config_load(cfg, tpath("busgated.yaml"), err, sizeof err) != 0)
        fail_msg("%s", err);
}

static void
expect_check_error(const char *yaml, const char *contains)
{
    struct config cfg;

    load_checked(&cfg, yaml);
    assert_int_equal(config_check_files(&cfg, err, sizeof err), -1);
    if (strstr(err, contains) == NULL)
        fail_msg("\"%s\" not in \"%s\"", contains, err);
    config_free(&cfg);
}

static const char basic_yaml[] =
    "bus:\n  host: localhost\n  tls: { ca_file: ca.pem }\n  auth: basic\n"
    "  credentials_file: credentials.ini\n";

static void
test_check_files(void **state)
{
    struct config cfg;
    char want[512];

    write_file(tpath("ca.pem"), "not really a CA\n", 0644);
    write_file(tpath("credentials.ini"), "[bus]\nusername = gw\npassword = gwpass\n", 0600);
    load_checked(&cfg, basic_yaml);
    if (config_check_files(&cfg, err, sizeof err) != 0)
        fail_msg("%s", err);
    config_free(&cfg);

    /* A group-readable credentials file is refused, with the fix. */
    assert_int_equal(chmod(tpath("credentials.ini"), 0644), 0);
    load_checked(&cfg, basic_yaml);
    assert_int_equal(config_check_files(&cfg, err, sizeof err), -1);
    snprintf(want, sizeof want,
        "%s:5:21: bus.credentials_file: %s: mode 0644 lets group or "
        "others read or write it; it holds secrets: chmod 600 %s",
        tpath("busgated.yaml"), cfg.bus.credentials_file, cfg.bus.credentials_file);
    assert_string_equal(err, want);
    config_free(&cfg);

    /* Basic auth needs both username and password. */
    write_file(tpath("credentials.ini"), "[bus]\nusername = gw\n", 0600);
    expect_check_error(basic_yaml, "auth basic needs username and password in [bus]");
    /* A bad credentials file is reported with its line. */
    write_file(tpath("credentials.ini"), "[bus]\nuser = gw\n", 0600);
    expect_check_error(basic_yaml, "credentials.ini:2: unknown key in [bus]");

    /* A missing CA file. */
    unlink(tpath("ca.pem"));
    expect_check_error(basic_yaml, "busgated.yaml:3:19: bus.tls.ca_file: ");
    expect_check_error(basic_yaml, "ca.pem: No such file or directory");
}

static void
test_check_files_token(void **state)
{
    static const char token_yaml[] =
        "bus:\n  host: localhost\n  tls: false\n  auth: token\n  token_file: token.jwt\n";
    static const char token_ini_yaml[] =
        "bus:\n  host: localhost\n  tls: false\n  auth: token\n"
        "  credentials_file: credentials.ini\n";
    struct config cfg;

    write_file(tpath("token.jwt"), "eyJhbGciOiJIUzI1NiJ9.e30.sig\n", 0600);
    load_checked(&cfg, token_yaml);
    if (config_check_files(&cfg, err, sizeof err) != 0)
        fail_msg("%s", err);
    config_free(&cfg);

    write_file(tpath("token.jwt"), "eyJhbGciOiJIUzI1NiJ9.e30.sig\n", 0640);
    expect_check_error(token_yaml, "busgated.yaml:5:15: bus.token_file: ");
    expect_check_error(token_yaml, "mode 0640");
    write_file(tpath("token.jwt"), "\n\n", 0600);
    expect_check_error(token_yaml, "empty token file");

    write_file(tpath("credentials.ini"), "[bus]\nusername = gw\npassword = x\n", 0600);
    expect_check_error(token_ini_yaml, "auth token needs token in [bus]");
    write_file(tpath("credentials.ini"), "[bus]\ntoken = abc.def.ghi\n", 0600);
    load_checked(&cfg, token_ini_yaml);
    if (config_check_files(&cfg, err, sizeof err) != 0)
        fail_msg("%s", err);
    config_free(&cfg);
}

static void
test_check_files_tls_key(void **state)
{
    static const char yaml[] =
        "bus:\n  host: localhost\n  tls: { cert_file: client.pem, key_file: client.key }\n";
    struct config cfg;

    write_file(tpath("client.pem"), "cert\n", 0644);
    write_file(tpath("client.key"), "key\n", 0600);
    load_checked(&cfg, yaml);
    if (config_check_files(&cfg, err, sizeof err) != 0)
        fail_msg("%s", err);
    config_free(&cfg);
    assert_int_equal(chmod(tpath("client.key"), 0604), 0);
    expect_check_error(yaml, "busgated.yaml:3:43: bus.tls.key_file: ");
    expect_check_error(yaml, "mode 0604");
    expect_check_error("bus:\n  host: localhost\n  tls: { ca_dir: nonexistent }\n",
        "busgated.yaml:3:18: bus.tls.ca_dir: ");
    expect_check_error("bus:\n  host: localhost\nlisten: { group: no-such-group-here }\n",
        "busgated.yaml:3:18: listen.group: no group named 'no-such-group-here'");
}

/* The shipped example must load and say what its comments say. */
static void
test_shipped_example(void **state)
{
    const char *top = getenv("top_srcdir");
    struct config cfg, def;
    char path[4096];

    snprintf(path, sizeof path, "%s/etc/busgated.yaml", top != NULL ? top : ".");
    if (config_load(&cfg, path, err, sizeof err) != 0)
        fail_msg("%s", err);
    assert_string_equal(cfg.bus.host, "localhost");
    assert_int_equal(cfg.bus.port, 9091);
    assert_true(cfg.bus.tls.enabled);
    assert_non_null(cfg.bus.tls.ca_file);
    assert_int_equal(cfg.bus.auth, CONFIG_AUTH_BASIC);
    assert_non_null(cfg.bus.credentials_file);
    /* Everything else is at its default. */
    config_defaults(&def);
    assert_int_equal(cfg.bus.reconnect_min_ms, def.bus.reconnect_min_ms);
    assert_int_equal(cfg.bus.reconnect_max_ms, def.bus.reconnect_max_ms);
    assert_int_equal(cfg.bus.keepalive_s, def.bus.keepalive_s);
    assert_int_equal(cfg.bus.output_high_water, def.bus.output_high_water);
    assert_memory_equal(&cfg.bus.limits, &def.bus.limits, sizeof def.bus.limits);
    assert_memory_equal(&cfg.router, &def.router, sizeof def.router);
    assert_int_equal(cfg.listen.max_line, def.listen.max_line);
    assert_int_equal(cfg.listen.max_output, def.listen.max_output);
    assert_int_equal(cfg.listen.mode, def.listen.mode);
    assert_string_equal(cfg.listen.path, "/run/busgate/busgate.sock");
    assert_int_equal(cfg.log.level, def.log.level);
    assert_int_equal(cfg.daemon.shutdown_grace_ms, def.daemon.shutdown_grace_ms);
    config_free(&def);
    config_free(&cfg);
}

/* --- access rules --- */

static void
test_access(void **state)
{
    struct config cfg;
    char *text = NULL;
    size_t len = 0;
    FILE *f;

    (void)state;
    expect_ok(&cfg, "bus: {host: h}\n");
    assert_null(cfg.access);
    config_free(&cfg);
    expect_ok(&cfg, "bus: {host: h}\naccess: []\n");
    assert_null(cfg.access);
    config_free(&cfg);
    expect_ok(&cfg,
        "bus: {host: h}\naccess:\n"
        "  - uid: 7\n    deny: publish\n    feeds: \"p.x\"\n"
        "  - group: root\n    allow: [subscribe, stats]\n    feeds: [\"p.*\", q]\n"
        "  - allow: all\n");
    assert_non_null(cfg.access);
    assert_int_equal(cfg.access->n, 3);
    assert_false(cfg.access->rules[0].allow);
    assert_int_equal(cfg.access->rules[0].line, 3);
    assert_int_equal(cfg.access->rules[1].subject, ACCESS_GID);
    assert_int_equal(cfg.access->rules[1].who, 0);
    assert_int_equal(cfg.access->rules[1].n_feeds, 2);
    assert_int_equal(cfg.access->rules[2].subject, ACCESS_ANYONE);
    f = open_memstream(&text, &len);
    config_dump(&cfg, f);
    fclose(f);
    assert_non_null(strstr(text,
        "  - # rule 2 (line 6)\n    gid: 0   # group root\n"
        "    allow: [subscribe, stats]\n    feeds: [\"p.*\", \"q\"]\n"));
    assert_non_null(strstr(text, "    deny: [publish]\n    feeds: [\"p.x\"]\n"));
    free(text);
    config_free(&cfg);

    expect_error("bus: {host: h}\naccess: {uid: 1}\n",
        "t.yaml:2:9: access: expected a list of rules (- user: ..., allow: [...], "
        "feeds: [...]), got a mapping");
    expect_error("bus: {host: h}\naccess:\n  - uid: 1\n    alow: all\n",
        "t.yaml:4:5: access: unknown key 'alow' in a rule (expected user, group, uid, "
        "gid, allow, deny or feeds)");
    expect_error("bus: {host: h}\naccess:\n  - uid: 1\n    allow: [publish, fly]\n",
        "t.yaml:4:22: access: unknown verb 'fly' (expected all, subscribe, publish, "
        "send, notify, authorize or stats)");
    expect_error("bus: {host: h}\naccess:\n  - uid: 1\n    feeds: [a]\n",
        "t.yaml:3:5: access: a rule needs allow: or deny: (a list of verbs, or all)");
    expect_error(
        "bus: {host: h}\naccess:\n  - user: no-such-user-busgate\n    allow: all\n",
        "t.yaml:3:11: access: user: no user named 'no-such-user-busgate'");
    expect_error("bus: {host: h}\naccess:\n  - allow: all\n    feeds: [\"a*b\"]\n",
        "t.yaml:4:13: access: feed pattern 'a*b': '*' may only end a pattern");
    expect_error("bus: {host: h}\naccess:\n  - uid: 1\n    gid: 2\n    allow: all\n",
        "t.yaml:4:10: access: a rule names one user, group, uid or gid (this one has "
        "uid 1 already)");
    expect_error("bus: {host: h}\naccess:\n  - allow: all\n    deny: [send]\n",
        "t.yaml:4:12: access: a rule either allows or denies, not both");
    /* An empty feeds: list is not an omitted one (every feed). */
    expect_error("bus: {host: h}\naccess:\n  - uid: 1\n    allow: all\n    feeds: []\n",
        "t.yaml:5:12: access: feeds: an empty list names nothing (omit feeds: for every "
        "feed)");
    /* Two allow: (or feeds:) lists would be merged into more than either says. */
    expect_error("bus: {host: h}\naccess:\n  - uid: 1\n    allow: [subscribe]\n"
                 "    feeds: [a]\n    allow: [publish]\n",
        "t.yaml:6:5: access: duplicate key 'allow' in a rule (first at line 4)");
    expect_error("bus: {host: h}\naccess:\n  - 5\n",
        "t.yaml:3:5: access: each rule is a mapping (user:/group:/uid:/gid:, "
        "allow:/deny:, feeds:)");
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_minimal_is_defaults),
        cmocka_unit_test(test_every_key),
        cmocka_unit_test(test_sizes),
        cmocka_unit_test(test_durations),
        cmocka_unit_test(test_bools),
        cmocka_unit_test(test_modes),
        cmocka_unit_test(test_keepalive_whole_seconds),
        cmocka_unit_test(test_tls_forms),
        cmocka_unit_test(test_tls_ciphers_strength),
        cmocka_unit_test(test_forwarded_for),
        cmocka_unit_test(test_auth_rules),
        cmocka_unit_test(test_bus_protocol),
        cmocka_unit_test(test_unknown_keys),
        cmocka_unit_test(test_wrong_types),
        cmocka_unit_test(test_ranges),
        cmocka_unit_test(test_missing_and_duplicate),
        cmocka_unit_test(test_yaml_syntax),
        cmocka_unit_test(test_deep_nesting),
        cmocka_unit_test(test_aliases),
        cmocka_unit_test(test_dump_round_trip),
        cmocka_unit_test(test_dump_defaults),
        cmocka_unit_test(test_load_file_relative_paths),
        cmocka_unit_test(test_load_file_errors),
        cmocka_unit_test(test_check_files),
        cmocka_unit_test(test_check_files_token),
        cmocka_unit_test(test_check_files_tls_key),
        cmocka_unit_test(test_shipped_example),
        cmocka_unit_test(test_access),
    };

    return cmocka_run_group_tests(tests, setup_dir, teardown_dir);
}
