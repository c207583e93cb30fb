#!/usr/bin/env python3
"""The bus link end to end: the real busgated against the project's test bus.

Transport (plain TCP, TLS with a CA, IP-address and host-name checks, the
certificate failures with OpenSSL's reason, never falling back to plain or
unverified), authentication (basic and token, rotated token file, wrong
password and expired token against a bus that closes a rejected login and
against one that leaves it open and silent, unsafe credentials file), and
the link's life (bus dropping every connection, bus restarted on the same
port, silent bus, garbage, oversize lengths, a message cut in half, reload).

Observed through the daemon's log, its socket (BUS events, STATS, PING) and
the test bus's JSON event log. No timing assertions: every wait is bounded
by generous timeouts (BUSGATE_TEST_TIMEOUT); delays are checked through the
backoff the daemon logs, not through a clock.
"""

import os
import re
import shutil
import socket
import sys
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import gwtest  # noqa: E402
from gwtest import Gateway, TestBus, TIMEOUT, tempdir, wait_until  # noqa: E402
from control import DEFAULT_JWT_SECRET, make_jwt, make_pki  # noqa: E402

# Heartbeats from the test bus every HB s; the daemon gives up after
# HB_TIMEOUT without traffic (SILENT_TIMEOUT where silence is the point).
HB = 0.1
HB_TIMEOUT = "2s"
SILENT_TIMEOUT = "500ms"
FAST_RETRY = {"min": "20ms", "max": "400ms", "reset_after": "5s"}

RETRY_RX = re.compile(r"bus: retry (\d+) in (\S+) \(backoff up to (\S+)\)")


def seconds(text):
    """'20ms', '1s', '1.250s' -> seconds."""
    if text.endswith("ms"):
        return int(text[:-2]) / 1000.0
    return float(text[:-1])


def stats(s):
    """STATS as {name: value}; other events stay queued on the session."""
    return s.stats()

class BusLinkCase(unittest.TestCase):
    """Each test gets a directory, its test buses and its gateways, all
    stopped (and the gateway's clean exit asserted) at the end."""

    def setUp(self):
        self.dir = tempdir("busgate-link-")
        self.buses = []
        self.gws = []

    def tearDown(self):
        errors = []
        for gw in self.gws:
            try:
                gw.stop(expect_rc=getattr(gw, "expect_rc", 0))
            except AssertionError as e:
                errors.append(str(e))
        for bus in self.buses:
            bus.stop()
        ok = not errors and not self._failed()
        if ok and not os.environ.get("BUSGATE_TEST_KEEP"):
            shutil.rmtree(self.dir, ignore_errors=True)
        if errors:
            raise AssertionError("\n".join(errors))

    def _failed(self):
        outcome = getattr(self, "_outcome", None)
        result = getattr(outcome, "result", None)
        if result is None:
            return False
        return any(t is self for t, _ in result.failures + result.errors)

    # -- helpers

    def bus(self, name="testbus", **kw):
        b = TestBus(self.dir, name=name, **kw)
        b.start()
        self.buses.append(b)
        return b

    def gateway(self, bus, bus_config=None, start=True, name="gw", **kw):
        cfg = {"bus": dict({"reconnect": dict(FAST_RETRY)}, **(bus_config or {}))}
        gw = Gateway(self.dir, bus, config=cfg, name=name, **kw)
        self.gws.append(gw)
        if start:
            gw.start()
        return gw

    def session(self, gw):
        s = gw.session()
        self.addCleanup(s.close)
        return s

    def heartbeat(self, timeout=HB_TIMEOUT):
        return {"heartbeat": {"timeout": timeout}}

    def wait_count(self, gw, pattern, n, start=0, timeout=None):
        rx = re.compile(pattern)
        return wait_until(lambda: len(rx.findall(gw.log()[start:])) >= n,
                          timeout or TIMEOUT,
                          "%d x %r in the log:\n%s" % (n, pattern, gw.log()[-3000:]))

    def wait_bus(self, bus, pred, n=1, what="bus records"):
        return wait_until(lambda: len([r for r in bus.records() if pred(r)]) >= n,
                          TIMEOUT, what)

    def logins(self, bus):
        return [r for r in bus.records() if r["event"] == "login"]

    def failed_logins(self, bus):
        return [r for r in bus.records() if r["event"] == "login-failed"]

    def assert_no_secret(self, gw, *secrets):
        log = gw.log()
        for s in secrets:
            self.assertNotIn(s, log, "a secret reached the log")

    def retries(self, gw):
        """(attempt, delay s, cap s) for every retry the daemon scheduled."""
        return [(int(a), seconds(d), seconds(c)) for a, d, c in RETRY_RX.findall(gw.log())]

    def assert_retries_within_bounds(self, gw, max_s):
        for _, delay, cap in self.retries(gw):
            self.assertLessEqual(delay, cap)
            self.assertLessEqual(cap, max_s)
            self.assertGreaterEqual(delay, seconds(FAST_RETRY["min"]))

    def assert_backoff_grows(self, gw, n=3):
        self.wait_count(gw, RETRY_RX.pattern, n)
        caps = [c for _, _, c in self.retries(gw)]
        self.assertEqual(caps, sorted(caps), "backoff cap shrank: %r" % caps)
        self.assertGreater(caps[-1], caps[0], "backoff did not grow: %r" % caps)
        self.assert_retries_within_bounds(gw, seconds(FAST_RETRY["max"]))


class TestTransport(BusLinkCase):

    def test_plain_tcp_basic_auth(self):
        bus = self.bus(tls=False, heartbeat=HB)
        gw = self.gateway(bus, self.heartbeat())
        gw.wait_log(r"bus: up")
        self.assertNotIn("TLS up", gw.log())
        login = self.logins(bus)[0]
        self.assertEqual(login["user"], "gw")
        self.assertEqual(login["auth"], "password")
        # forwarded_for defaults to this host's name
        self.assertEqual(login["forwarded_for"], socket.gethostname())
        # the link subscribes to heartbeats itself
        self.wait_bus(bus, lambda r: r["event"] == "recv"
                      and r["type"] == "SubscriptionRequest"
                      and r["fields"]["feed"] == "__admin__"
                      and r["fields"]["topic"] == "heartbeat")
        s = self.session(gw)
        self.assertIn("bus=up", s.hello.line)
        st = stats(s)
        self.assertEqual(st["bus_state"], "up")
        self.assertEqual(st["bus_connects"], "1")
        self.assert_no_secret(gw, "gwpass")

    def test_tls_verified_with_ca(self):
        bus = self.bus(heartbeat=HB)
        gw = self.gateway(bus, self.heartbeat())
        gw.wait_log(r"bus: TLS up \(TLSv1\.[23], \S+\)")
        gw.wait_log(r"bus: up")
        self.assertEqual(self.logins(bus)[0]["user"], "gw")
        self.assertNotIn("verification is off", gw.log())
        s = self.session(gw)
        self.assertEqual(stats(s)["bus_state"], "up")

    def test_tls_ip_address_checked_without_server_name(self):
        # bus.host 127.0.0.1 and no server_name: the certificate's IP
        # address is what is checked (and no SNI is sent)
        bus = self.bus(heartbeat=HB)
        gw = self.gateway(bus, dict(self.heartbeat(), tls={"server_name": None}))
        gw.wait_log(r"bus: up")
        self.assertEqual(len(self.logins(bus)), 1)

    def assert_tls_refused(self, bus, gw, reason):
        """The handshake fails with reason, is retried, and the bus never
        sees a login: no fallback to plain or to an unverified link."""
        gw.wait_log(r"bus: down: TLS handshake with 127\.0\.0\.1:%d: %s"
                    % (bus.port, re.escape(reason)))
        self.wait_bus(bus, lambda r: r["event"] == "open", n=2,
                      what="a retried connection")
        self.wait_count(gw, RETRY_RX.pattern, 2)
        self.assertEqual(self.logins(bus), [])
        self.assertEqual(self.failed_logins(bus), [])
        self.assertNotIn("bus: connected", gw.log())
        s = self.session(gw)
        self.assertIn("bus=down", s.hello.line)
        st = stats(s)
        self.assertEqual(st["bus_connects"], "0")
        self.assertIn(reason, st["bus_last_error"])

    def test_tls_self_signed_refused(self):
        bus = self.bus(cert="selfsigned", heartbeat=HB)
        gw = self.gateway(bus, self.heartbeat())
        self.assert_tls_refused(bus, gw, "certificate verify failed: self-signed certificate")

    def test_tls_hostname_mismatch_refused(self):
        bus = self.bus(cert="wronghost", heartbeat=HB)
        gw = self.gateway(bus, self.heartbeat())
        self.assert_tls_refused(bus, gw, "certificate verify failed: hostname mismatch")

    def test_tls_name_in_common_name_only_refused(self):
        # localhost only in the subject CN, no subjectAltName: the name must
        # be in the SAN (RFC 6125), so this is a mismatch.
        bus = self.bus(cert="cnonly", heartbeat=HB)
        gw = self.gateway(bus, self.heartbeat())
        self.assert_tls_refused(bus, gw, "certificate verify failed: hostname mismatch")

    def test_tls_ip_address_mismatch_refused(self):
        bus = self.bus(cert="wronghost", heartbeat=HB)
        gw = self.gateway(bus, dict(self.heartbeat(), tls={"server_name": None}))
        self.assert_tls_refused(bus, gw, "certificate verify failed: IP address mismatch")

    def test_tls_expired_certificate_refused(self):
        bus = self.bus(cert="expired", heartbeat=HB)
        gw = self.gateway(bus, self.heartbeat())
        self.assert_tls_refused(bus, gw, "certificate verify failed: certificate has expired")

    def test_tls_weak_suites_refused_by_default(self):
        # A TLS 1.2 bus offering only AES128-SHA (RSA key exchange, no
        # forward secrecy; CBC with SHA-1): the default suites do not
        # include it, so there is no link, and the log says why.
        bus = self.bus(cert="rsa", heartbeat=HB, extra_args=["--tls-ciphers", "AES128-SHA"])
        gw = self.gateway(bus, self.heartbeat())
        self.assert_tls_refused(bus, gw, "sslv3 alert handshake failure (no TLS version or "
                                "cipher suite in common with the bus? busgate offers "
                                "forward-secret AEAD suites only, see bus.tls.ciphers)")
        self.assertNotIn("TLS up", gw.log())

    def test_tls_rsa_bus_with_strong_suites_accepted(self):
        # The same RSA-keyed bus offering ECDHE-RSA-AES128-GCM-SHA256: fine.
        bus = self.bus(cert="rsa", heartbeat=HB,
                       extra_args=["--tls-ciphers", "ECDHE-RSA-AES128-GCM-SHA256"])
        gw = self.gateway(bus, self.heartbeat())
        gw.wait_log(r"bus: TLS up \(TLSv1\.2, ECDHE-RSA-AES128-GCM-SHA256\)")
        gw.wait_log(r"bus: up")

    def test_tls_to_plain_bus_never_falls_back(self):
        bus = self.bus(tls=False, heartbeat=HB)
        pki = make_pki(os.path.join(self.dir, "pki"))
        gw = self.gateway(bus, dict(self.heartbeat(),
                                    tls={"ca_file": pki.ca_cert, "server_name": "localhost"}))
        gw.wait_log(r"bus: down: TLS handshake with 127\.0\.0\.1:%d: " % bus.port)
        self.wait_bus(bus, lambda r: r["event"] == "open", n=2, what="a retry")
        self.assertEqual(self.logins(bus), [])
        self.assertNotIn("bus: connected", gw.log())

    def test_tls_verify_off_warns_at_every_connect(self):
        bus = self.bus(cert="selfsigned", heartbeat=HB)
        gw = self.gateway(bus, dict(self.heartbeat(), tls={"verify": False}))
        gw.wait_log(r"bus: up")
        self.wait_count(gw, r"<4>bus: TLS certificate verification is off", 1)
        bus.drop_all()
        self.wait_bus(bus, lambda r: r["event"] == "login", n=2, what="second login")
        self.wait_count(gw, r"<4>bus: TLS certificate verification is off", 2)

    def test_connect_timeout_covers_tls_handshake(self):
        bus = self.bus(fault="stall-tls")
        gw = self.gateway(bus, {"connect_timeout": "500ms"})
        gw.wait_log(r"bus: down: timeout after 500ms in the TLS handshake with 127\.0\.0\.1:%d"
                    % bus.port)
        self.wait_bus(bus, lambda r: r["event"] == "open", n=2, what="a retry")


class TestAuthentication(BusLinkCase):

    def test_token_auth(self):
        bus = self.bus(auth="jwt", heartbeat=HB)
        token = make_jwt(DEFAULT_JWT_SECRET, "gw", 3600)
        gw = self.gateway(bus, self.heartbeat(), auth="token", token=token)
        gw.wait_log(r"bus: connected, unconfirmed \(auth token, user gw\)")
        gw.wait_log(r"bus: up")
        self.assertEqual(self.logins(bus)[0]["user"], "gw")
        self.assertEqual(self.logins(bus)[0]["auth"], "jwt")
        self.assert_no_secret(gw, token, token.split(".")[2])

    def test_token_file_reread_at_each_connect(self):
        bus = self.bus(auth="jwt", heartbeat=HB)
        path = os.path.join(self.dir, "bus.token")
        expired = make_jwt(DEFAULT_JWT_SECRET, "gw", -3600)
        fresh = make_jwt(DEFAULT_JWT_SECRET, "gw", 3600)

        def write_token(tok):
            tmp = path + ".new"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(tok + "\n")
            os.rename(tmp, path)

        write_token(expired)
        gw = self.gateway(bus, dict(self.heartbeat(), token_file=path,
                                    credentials_file=None), auth="token")
        gw.wait_log(r"probable authentication failure \(token, user gw; token expired ")
        self.wait_bus(bus, lambda r: r["event"] == "login-failed", n=2, what="retries")
        # rotate the token: the next attempt uses it, no restart, no reload
        write_token(fresh)
        gw.wait_log(r"bus: up")
        self.assertEqual(self.logins(bus)[0]["user"], "gw")
        self.assert_no_secret(gw, expired, fresh)

    def assert_auth_failure_retried(self, bus, gw, reason, *secrets):
        gw.wait_log(re.escape("bus: down: " + reason))
        self.assert_backoff_grows(gw)
        self.assertEqual(self.logins(bus), [])
        s = self.session(gw)
        s.expect("BUS", lambda e: e.words[1] == "down" and reason in e.line)
        st = stats(s)
        self.assertNotEqual(st["bus_state"], "up")
        self.assert_no_secret(gw, *secrets)
        return st

    def test_wrong_password_bus_closes(self):
        bus = self.bus(heartbeat=HB)
        gw = self.gateway(bus, self.heartbeat(), password="Wr0ng-Secret-Pw")
        st = self.assert_auth_failure_retried(
            bus, gw, "probable authentication failure (basic, user gw)", "Wr0ng-Secret-Pw")
        self.assertGreaterEqual(int(st["bus_auth_failures"]), 2)
        self.assertGreaterEqual(len(self.failed_logins(bus)), 2)
        self.assertEqual(self.failed_logins(bus)[0]["username"], "gw")

    def test_wrong_password_bus_silent(self):
        # defect 2: the v3 distributor leaves a rejected login open and
        # silent; only the heartbeat watchdog can tell
        bus = self.bus(heartbeat=HB, defects=["silent-login"])
        gw = self.gateway(bus, self.heartbeat(SILENT_TIMEOUT), password="Wr0ng-Secret-Pw")
        st = self.assert_auth_failure_retried(
            bus, gw, "no heartbeat: not authenticated or dead", "Wr0ng-Secret-Pw")
        self.assertGreaterEqual(int(st["bus_heartbeat_timeouts"]), 2)
        self.assertGreaterEqual(len(self.failed_logins(bus)), 2)

    def test_expired_token_bus_closes(self):
        bus = self.bus(auth="jwt", heartbeat=HB)
        token = make_jwt(DEFAULT_JWT_SECRET, "gw", -3600)
        gw = self.gateway(bus, self.heartbeat(), auth="token", token=token)
        gw.wait_log(r"bus: down: probable authentication failure "
                    r"\(token, user gw; token expired \d{4}-\d\d-\d\dT")
        self.assert_backoff_grows(gw)
        self.assertEqual(self.logins(bus), [])
        self.assertGreaterEqual(len(self.failed_logins(bus)), 2)
        self.assert_no_secret(gw, token)

    def test_expired_token_bus_silent(self):
        bus = self.bus(auth="jwt", heartbeat=HB, defects=["silent-login"])
        token = make_jwt(DEFAULT_JWT_SECRET, "gw", -3600)
        gw = self.gateway(bus, self.heartbeat(SILENT_TIMEOUT), auth="token", token=token)
        self.assert_auth_failure_retried(
            bus, gw, "no heartbeat: not authenticated or dead", token)

    def test_publish_while_unconfirmed_waits_for_a_good_login(self):
        # with the watchdog on, data accepted while the login is unconfirmed
        # is held: never thrown at a bus that silently ignores it, sent once
        # a login is confirmed (here after the password file is fixed)
        bus = self.bus(heartbeat=HB, defects=["silent-login"])
        gw = self.gateway(bus, self.heartbeat(SILENT_TIMEOUT), password="Wr0ng-Secret-Pw")
        s = self.session(gw)
        wait_until(lambda: s.pub("F", "T", [(None, b"held-1")]) == "+OK",
                   what="a PUB accepted on an unconfirmed link")
        self.wait_bus(bus, lambda r: r["event"] == "login-failed", n=2, what="retries")
        gw.password = "gwpass"
        gw.write_config()
        self.wait_bus(bus, lambda r: r["event"] == "recv" and r["type"] == "MulticastData"
                      and r.get("user") == "gw", what="the held publish")
        rejected = {r["conn"] for r in bus.events("login-failed")}
        self.assertEqual([r for r in bus.messages("MulticastData", direction="recv")
                          if r["conn"] in rejected and gwtest.not_probe(r)], [],
                         "data was sent to a rejected login")
        gw.wait_log(r"sending 1 message \(\d+ bytes\) held until the bus link was ready")
        self.assert_no_secret(gw, "Wr0ng-Secret-Pw", "gwpass")

    def test_unconfirmed_without_heartbeat(self):
        # no watchdog, no login probe (bus.confirm none) and a silent
        # rejected login: the link stays "connected, unconfirmed" and says
        # so, it never claims to be up (test_confirm.py: the default probe)
        bus = self.bus(defects=["silent-login"])
        gw = self.gateway(bus, {"confirm": "none"}, password="Wr0ng-Secret-Pw")
        gw.wait_log(r"bus: connected, unconfirmed \(auth basic, user gw\)")
        self.wait_bus(bus, lambda r: r["event"] == "login-failed")
        s = self.session(gw)
        self.assertIn("bus=unconfirmed", s.hello.line)
        st = stats(s)
        self.assertEqual(st["bus_state"], "unconfirmed")
        self.assertEqual(st["bus_confirm"], "off")
        self.assertEqual([r for r in bus.messages("SubscriptionRequest")
                          if not gwtest.not_probe(r)], [])
        self.assertNotIn("bus: up", gw.log())

    def test_credentials_file_0644_refused_at_start(self):
        bus = self.bus(heartbeat=HB)
        gw = self.gateway(bus, self.heartbeat(), start=False)
        os.chmod(gw.creds_path, 0o644)
        gw.start(wait=False)
        gw.proc.wait(TIMEOUT)
        gw.expect_rc = 1
        self.assertEqual(gw.proc.returncode, 1)
        log = gw.log()
        self.assertIn(gw.creds_path, log)
        self.assertIn("0644", log)
        self.assertIn("chmod 600", log)
        self.assertNotIn("gwpass", log)
        self.assertEqual(bus.records() and [r for r in bus.records() if r["event"] == "open"], [])

    def test_credentials_file_0644_refused_at_connect(self):
        bus = self.bus(heartbeat=HB)
        gw = self.gateway(bus, self.heartbeat())
        gw.wait_log(r"bus: up")
        os.chmod(gw.creds_path, 0o644)
        bus.drop_all()
        gw.wait_log(r"bus: down: credentials: %s: mode 0644 .*chmod 600"
                    % re.escape(gw.creds_path))
        self.assertEqual(len(self.logins(bus)), 1)
        os.chmod(gw.creds_path, 0o600)
        start = gw.log_offset()
        gw.wait_log(r"bus: up", start=start)
        self.assertEqual(len(self.logins(bus)), 2)
        self.assert_no_secret(gw, "gwpass")

    def test_credentials_parse_error_shows_line_not_content(self):
        # A password typed in the key position, found at a reconnect: the
        # log and STAT bus_last_error (readable by every local client)
        # name the file and line, never the text.
        secret = "Sup3rS3cretPa55"
        bus = self.bus(heartbeat=HB)
        gw = self.gateway(bus, self.heartbeat())
        gw.wait_log(r"bus: up")
        with open(gw.creds_path, "w") as f:
            f.write("[bus]\nusername = gw\n%s = \n" % secret)
        bus.drop_all()
        gw.wait_log(r"bus: down: credentials: %s:3: unknown key in \[bus\]"
                    % re.escape(gw.creds_path))
        s = self.session(gw)
        st = stats(s)
        self.assertEqual(st["bus_last_error"], "credentials: %s:3: unknown key in [bus] "
                         "(expected username, password or token)" % gw.creds_path)
        self.assert_no_secret(gw, secret, "S3cret")


class TestLinkLife(BusLinkCase):

    def test_bus_drops_every_connection(self):
        bus = self.bus(heartbeat=HB)
        gw = self.gateway(bus, self.heartbeat())
        gw.wait_log(r"bus: up")
        s = self.session(gw)
        self.assertEqual(s.cmd("SUB PRICES VOD.L"), "+OK")
        bus.drop_all()
        s.expect("BUS", lambda e: e.words[1] == "down")
        s.expect("BUS", lambda e: e.words[1] == "up")
        self.assertEqual(len(self.logins(bus)), 2)
        self.wait_count(gw, r"bus: up", 2)
        self.assertIn("bus: down: connection closed by the bus", gw.log())
        # the router replayed the subscription on the new link
        conn = self.logins(bus)[1]["conn"]
        self.wait_bus(bus, lambda r: r["event"] == "recv" and r.get("conn") == conn
                      and r["type"] == "SubscriptionRequest"
                      and r["fields"]["topic"] == "VOD.L", what="replayed subscription")
        st = stats(s)
        self.assertEqual(st["bus_connects"], "2")
        self.assert_retries_within_bounds(gw, seconds(FAST_RETRY["max"]))

    def test_bus_restarted_on_same_port(self):
        bus = self.bus(heartbeat=HB)
        gw = self.gateway(bus, self.heartbeat())
        gw.wait_log(r"bus: up")
        s = self.session(gw)
        port = bus.port
        bus.stop()
        s.expect("BUS", lambda e: e.words[1] == "down")
        # a refused connection is retried, and summarised in the log
        self.wait_count(gw, r"bus: down: connect to 127\.0\.0\.1:%d: Connection refused" % port, 1)
        self.wait_count(gw, RETRY_RX.pattern, 4)
        warned = re.findall(r"<4>bus: down: connect to 127\.0\.0\.1:%d" % port, gw.log())
        self.assertEqual(len(warned), 1, "one warning per retry:\n" + gw.log()[-3000:])
        bus.start()
        self.assertEqual(bus.port, port)
        s.expect("BUS", lambda e: e.words[1] == "up")
        self.assertEqual(len(bus.logins()), 2)
        self.assert_retries_within_bounds(gw, seconds(FAST_RETRY["max"]))
        gw.wait_log(r"bus: up \(after \d+ failed attempts?\)")

    def test_silent_bus_detected_by_watchdog(self):
        bus = self.bus(fault="silent")
        gw = self.gateway(bus, self.heartbeat(SILENT_TIMEOUT))
        gw.wait_log(r"bus: down: no heartbeat: not authenticated or dead")
        self.wait_count(gw, r"bus: (down|still failing): no heartbeat|"
                        r"bus: down: no heartbeat: not authenticated or dead \(\d+ attempts\)", 2)
        s = self.session(gw)
        st = stats(s)
        self.assertGreaterEqual(int(st["bus_heartbeat_timeouts"]), 2)
        self.assertNotEqual(st["bus_state"], "up")

    def test_watchdog_after_up(self):
        # a live link whose traffic stops is not "not authenticated"
        bus = self.bus(heartbeat=HB)
        gw = self.gateway(bus, self.heartbeat("1s"))
        gw.wait_log(r"bus: up")
        bus.signal(__import__("signal").SIGSTOP)
        try:
            gw.wait_log(r"bus: down: no heartbeat within 1s")
        finally:
            bus.signal(__import__("signal").SIGCONT)
        gw.wait_log(r"bus: up", start=gw.log().index("no heartbeat within"))

    def heartbeat_requests(self, bus):
        return [r for r in bus.messages("SubscriptionRequest", direction="recv")
                if r["fields"]["feed"] == "__admin__"
                and r["fields"]["topic"] == "heartbeat"]

    def test_local_heartbeat_subscriber_shares_the_watchdog_subscription(self):
        # issue 9.2: the link's own heartbeat subscription is one holder
        # among the local subscribers: a local SUB gets the heartbeats, no
        # second upstream subscribe goes out, and a local UNSUB sends no
        # upstream unsubscribe (on a distributor counting subscriptions as
        # v3 does, that one remove would end the watchdog's subscription)
        bus = self.bus(tls=False, heartbeat=HB, defects=["unsubscribe"])
        gw = self.gateway(bus, self.heartbeat("1s"))
        gw.wait_log(r"bus: up")
        s = self.session(gw)
        self.assertEqual(s.cmd("SUB __admin__ heartbeat"), "+OK")
        for _ in range(2):
            ev = s.expect("DATA", lambda e: e.words[1:3] == ["__admin__", "heartbeat"])
            self.assertEqual(ev.data_fields()["user"], "admin")
        self.assertEqual(s.cmd("UNSUB __admin__ heartbeat"), "+OK")
        start = gw.log_offset()
        time.sleep(3)       # three watchdog timeouts
        self.assertNotIn("bus: down", gw.log()[start:])
        st = stats(s)
        self.assertEqual(st["bus_state"], "up")
        self.assertEqual(st["bus_connects"], "1")
        self.assertEqual(st["bus_heartbeat_timeouts"], "0")
        self.assertEqual(st["data_dropped_unwanted"], "0")
        reqs = self.heartbeat_requests(bus)
        self.assertEqual([r["fields"]["is_add"] for r in reqs], [True], reqs)
        # a subscriber after the UNSUB gets them again, still with one add
        self.assertEqual(s.cmd("SUB __admin__ heartbeat"), "+OK")
        s.expect("DATA", lambda e: e.words[1:3] == ["__admin__", "heartbeat"])
        self.assertEqual(len(self.heartbeat_requests(bus)), 1)

    def test_local_heartbeat_subscriber_across_watchdog_reloads(self):
        # turning the watchdog off (a new link) makes the local subscriber's
        # subscription the usual one, replayed by the router; turning it on
        # again leaves the link's own as the only one
        bus = self.bus(tls=False, heartbeat=HB, defects=["unsubscribe"])
        gw = self.gateway(bus, self.heartbeat("1s"))
        gw.wait_log(r"bus: up")
        s = self.session(gw)
        self.assertEqual(s.cmd("SUB __admin__ heartbeat"), "+OK")
        for timeout in (0, "1s"):
            gw.write_config({"bus": {"reconnect": dict(FAST_RETRY),
                                     "heartbeat": {"timeout": timeout}}})
            n = len(bus.events("login"))
            gw.reload()
            wait_until(lambda: len(bus.events("login")) > n, what="a new link")
            conn = bus.events("login")[-1]["conn"]
            s.expect("BUS", lambda e: e.words[1] == "up")
            s.expect("DATA", lambda e: e.words[1:3] == ["__admin__", "heartbeat"])
            reqs = [r for r in self.heartbeat_requests(bus) if r["conn"] == conn]
            self.assertEqual([r["fields"]["is_add"] for r in reqs], [True], reqs)
        self.assertEqual(s.cmd("UNSUB __admin__ heartbeat"), "+OK")
        start = gw.log_offset()
        time.sleep(2.5)
        self.assertNotIn("bus: down", gw.log()[start:])
        self.assertEqual([r for r in self.heartbeat_requests(bus)
                          if r["conn"] == conn and not r["fields"]["is_add"]], [])

    def test_local_heartbeat_subscriber_without_watchdog(self):
        # watchdog off: the heartbeat topic is an ordinary one
        bus = self.bus(tls=False, heartbeat=HB)
        gw = self.gateway(bus)
        gw.wait_log(r"bus: connected")
        s = self.session(gw)
        self.assertEqual(s.cmd("SUB __admin__ heartbeat"), "+OK")
        s.expect("DATA", lambda e: e.words[1:3] == ["__admin__", "heartbeat"])
        self.assertEqual(s.cmd("UNSUB __admin__ heartbeat"), "+OK")
        wait_until(lambda: [r["fields"]["is_add"] for r in self.heartbeat_requests(bus)]
                   == [True, False], what="the usual subscribe and unsubscribe")

    def assert_protocol_error_survived(self, bus, gw, cause_rx):
        gw.wait_log(r"<3>bus: protocol error: " + cause_rx)
        gw.wait_log(r"bus: down: protocol error: " + cause_rx)
        self.wait_bus(bus, lambda r: r["event"] == "login", n=2, what="reconnection")
        s = self.session(gw)
        self.assertEqual(s.cmd("PING alive"), "PONG alive")
        st = stats(s)
        self.assertGreaterEqual(int(st["bus_protocol_errors"]), 1)
        self.assertEqual(gw.proc.poll(), None)

    def test_garbage_from_bus(self):
        bus = self.bus(fault="garbage", heartbeat=HB)
        gw = self.gateway(bus, self.heartbeat())
        self.assert_protocol_error_survived(bus, gw, r"unknown message type 238")

    def test_oversize_length_from_bus(self):
        bus = self.bus(fault="oversize", heartbeat=HB)
        gw = self.gateway(bus, self.heartbeat())
        self.assert_protocol_error_survived(bus, gw, r".*(limit|too long|exceeds).*")
        self.assertIn("2147483647", gw.log())

    def test_message_cut_in_half(self):
        bus = self.bus(fault="cut-mid-message", heartbeat=HB)
        gw = self.gateway(bus, self.heartbeat())
        gw.wait_log(r"bus: down: connection closed by the bus in the middle of a message")
        self.wait_bus(bus, lambda r: r["event"] == "login", n=2, what="reconnection")
        s = self.session(gw)
        self.assertEqual(s.cmd("PING"), "PONG")

    def test_reload_moves_link_only_when_needed(self):
        bus = self.bus(heartbeat=HB)
        gw = self.gateway(bus, self.heartbeat())
        gw.wait_log(r"bus: up")
        # same connection settings: no reconnect
        gw.reload()
        gw.wait_log(r"reloaded ")
        self.assertNotIn("connection settings changed", gw.log())
        self.assertEqual(len(self.logins(bus)), 1)
        # another bus: the link moves
        bus2 = self.bus(name="bus2", heartbeat=HB)
        gw.bus = bus2
        gw.write_config()
        gw.reload()
        gw.wait_log(r"bus: connection settings changed, reconnecting to 127\.0\.0\.1:%d"
                    % bus2.port)
        self.wait_bus(bus2, lambda r: r["event"] == "login", what="login on the new bus")
        self.wait_bus(bus, lambda r: r["event"] == "close", what="old link closed")
        self.assertEqual(len(self.logins(bus)), 1)

    def test_reload_after_fixing_credentials_retries_at_once(self):
        # a long backoff after a rejected login; the operator fixes the
        # password and reloads: the link is retried then, not after the wait
        bus = self.bus(heartbeat=HB)
        gw = self.gateway(bus, dict(self.heartbeat(), reconnect={"min": "1h", "max": "2h"}),
                          password="Wr0ng-Secret-Pw")
        gw.wait_log(r"bus: down: probable authentication failure \(basic, user gw\)")
        gw.wait_log(r"bus: retry 1 in ")
        gw.password = "gwpass"
        gw.write_config()
        gw.reload()
        gw.wait_log(r"bus: reloaded, retrying 127\.0\.0\.1:%d now" % bus.port)
        self.wait_bus(bus, lambda r: r["event"] == "login", what="a login after the reload")
        gw.wait_log(r"bus: up")
        self.assert_no_secret(gw, "Wr0ng-Secret-Pw", "gwpass")


if __name__ == "__main__":
    unittest.main(verbosity=2)
