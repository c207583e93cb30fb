#!/usr/bin/env python3
"""The metrics endpoint (metrics.listen) through the real daemon and a real
HTTP client: /metrics in Prometheus text format (checked by the
prometheus_client parser), /healthz, /readyz following the bus link down
and up, refused methods, a malformed, an over-long and a slow request, the
listener on a Unix socket; STATS SESSIONS and STATS LINK; the CLI's
stats --format and sessions."""

import http.client
import json
import os
import re
import socket
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from routerkit import GatewayCase, stats, uniq  # noqa: E402
from gwtest import (BUSGATE, BUSGATED, BUSGATED_IS_SANITIZED, TIMEOUT, TOP_SRCDIR,  # noqa: E402
                    Gateway, wait_until)

try:
    from prometheus_client.parser import text_string_to_metric_families
except ImportError:     # Debian's python3-prometheus-client beside another python
    sys.path.append("/usr/lib/python3/dist-packages")
    try:
        from prometheus_client.parser import text_string_to_metric_families
    except ImportError:
        text_string_to_metric_families = None


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


PORT = free_port()


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout=TIMEOUT):
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


def get(path, method="GET", conn=None):
    c = conn or http.client.HTTPConnection("127.0.0.1", PORT, timeout=TIMEOUT)
    try:
        c.request(method, path)
        r = c.getresponse()
        return r.status, r.getheader("Content-Type"), r.read().decode()
    finally:
        c.close()


def raw(data, wait=TIMEOUT):
    """Send data on a fresh connection; what comes back before the close."""
    with socket.create_connection(("127.0.0.1", PORT), timeout=wait) as s:
        s.sendall(data)
        out = b""
        try:
            while True:
                b = s.recv(4096)
                if not b:
                    break
                out += b
        except (ConnectionResetError, socket.timeout):
            pass
        return out


def families(text):
    return {f.name: f for f in text_string_to_metric_families(text)}


def cli(gw, *args):
    return subprocess.run([BUSGATE, "-s", gw.socket_path] + list(args),
                          capture_output=True, text=True, timeout=TIMEOUT)


def my_session_line(s):
    """This session's own STATS SESSIONS line, as {field: value}."""
    s.send("STATS SESSIONS\n")
    mine = None
    ev = s.expect("STAT")
    while ev.kind != "END":
        if ev.args[-1] == "self":
            mine = dict(w.split("=", 1) for w in ev.args[2:-1])
        ev = s._next_stat()
    return mine


class MetricsTest(GatewayCase):

    GW_CONFIG = {"metrics": {"listen": "127.0.0.1:%d" % PORT, "timeout": "1s"}}

    def ready(self):
        return get("/readyz")[0] == 200

    def test_healthz(self):
        self.assertEqual(get("/healthz")[0:3:2], (200, "ok\n"))
        self.assertEqual(get("/healthz", "HEAD")[0], 200)

    def test_metrics_parse(self):
        if text_string_to_metric_families is None:
            self.skipTest("python3-prometheus-client is not installed")
        s = self.session()
        wait_until(self.ready, what="bus up")
        status, ctype, body = get("/metrics")
        self.assertEqual(status, 200)
        self.assertEqual(ctype, "text/plain; version=0.0.4; charset=utf-8")
        fam = families(body)
        for name, f in fam.items():
            self.assertTrue(name.startswith("busgate_"), name)
            for smp in f.samples:
                self.assertEqual(smp.name.endswith("_total"), f.type == "counter", smp.name)
        for name in ("busgate_build_info", "busgate_start_time_seconds", "busgate_bus_link_state",
                     "busgate_bus_reconnects", "busgate_bus_login_failures", "busgate_sessions",
                     "busgate_sessions_accepted", "busgate_sessions_closed",
                     "busgate_bus_received_messages", "busgate_bus_sent_bytes",
                     "busgate_local_subscriptions", "busgate_upstream_subscriptions",
                     "busgate_messages_dropped", "busgate_image_cache_bytes",
                     "busgate_busdown_queue_messages", "busgate_sessions_queued_bytes",
                     "busgate_sessions_received_messages", "busgate_sessions_sent_bytes"):
            self.assertIn(name, fam)
        self.assertEqual(fam["busgate_build_info"].type, "gauge")
        states = {smp.labels["state"]: smp.value for smp in fam["busgate_bus_link_state"].samples}
        self.assertEqual(states, {"connecting": 0, "unconfirmed": 0, "up": 1, "down": 0})
        reasons = {smp.labels["reason"] for smp in fam["busgate_messages_dropped"].samples}
        self.assertIn("unwanted", reasons)
        # One source: the counters agree with STATS.
        st = stats(s)
        self.assertEqual(fam["busgate_sessions_accepted"].samples[0].value,
                         float(st["sessions_total"]))
        self.assertEqual(fam["busgate_start_time_seconds"].samples[0].value,
                         float(st["start_time"]))
        # The local side's traffic counts gone sessions too: it never falls.
        before = int(st["sessions_msgs_in"])
        t = self.session()
        n = int(stats(t)["sessions"])
        s.close()
        wait_until(lambda: int(stats(t)["sessions"]) == n - 1, what="session gone")
        self.assertGreater(int(stats(t)["sessions_msgs_in"]), before)
        # No per-session or per-topic labels (cardinality).
        labels = {k for f in fam.values() for smp in f.samples for k in smp.labels}
        self.assertEqual(labels - {"version", "state", "reason", "name"}, set())

    def test_methods_and_paths(self):
        status, _, body = get("/metrics", "POST")
        self.assertEqual(status, 405)
        self.assertEqual(get("/nothing")[0], 404)
        self.assertEqual(get("/metrics", "DELETE")[0], 405)

    def test_malformed_and_overlong(self):
        out = raw(b"THIS IS NOT HTTP\r\n\r\n")
        self.assertTrue(out == b"" or out.startswith(b"HTTP/1.1 400"), out[:100])
        out = raw(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 20000 + b"\r\n\r\n")
        self.assertTrue(out == b"" or out.split(b" ")[1] in (b"400", b"413", b"431"), out[:100])
        out = raw(b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n" +
                  b"x" * 100)
        self.assertNotIn(b" 200 ", out.split(b"\r\n")[0] if out else b"")
        self.assertEqual(get("/healthz")[0], 200)

    def test_slow_client_is_timed_out(self):
        s = socket.create_connection(("127.0.0.1", PORT), timeout=TIMEOUT)
        try:
            s.sendall(b"GET /metr")
            t0 = time.monotonic()
            # Others are served meanwhile.
            self.assertEqual(get("/healthz")[0], 200)
            try:
                rest = s.recv(4096)
            except ConnectionResetError:
                rest = b""
            self.assertFalse(rest.startswith(b"HTTP/1.1 200"), rest[:100])
            self.assertLess(time.monotonic() - t0, TIMEOUT / 2)
        finally:
            s.close()

    def test_readyz_follows_the_bus(self):
        wait_until(self.ready, what="ready")
        self.assertEqual(get("/readyz")[2], "ready\n")
        self.bus.stop()
        try:
            wait_until(lambda: get("/readyz")[0] == 503, what="not ready")
            status, _, body = get("/readyz")
            self.assertRegex(body, r"^not ready: bus (down|connecting) since \d+: ")
            self.assertEqual(get("/healthz")[0], 200)
            fam = families(get("/metrics")[2]) if text_string_to_metric_families else None
            if fam:
                states = {x.labels["state"]: x.value for x in fam["busgate_bus_link_state"].samples}
                self.assertEqual(states["up"], 0)
        finally:
            self.bus.start()
        wait_until(self.ready, what="ready again")

    def test_stats_sessions_and_link(self):
        s = self.session()
        self.assertEqual(s.cmd("SUB F1 T1"), "+OK")
        s.send("STATS SESSIONS\n")
        lines = []
        ev = s.expect("STAT")
        while ev.kind != "END":
            lines.append(" ".join(ev.args))
            ev = s._next_stat()
        mine = [x for x in lines if x.endswith(" self")]
        self.assertEqual(len(mine), 1, lines)
        self.assertRegex(mine[0], r"^session \d+ pid=%d uid=%d app=- age=\d+ idle=\d+ subs=1 "
                         r"msgs_in=\d+ bytes_in=\d+ msgs_out=\d+ bytes_out=\d+ queued=\d+ "
                         r"state=open self$" % (os.getpid(), os.getuid()))
        # "unconfirmed" until the gateway's probe of the new link returns
        wait_until(lambda: s.stats("LINK")["state"] == "up", what="link up")
        link = s.stats("LINK")
        self.assertRegex(link["server"], r"^127\.0\.0\.1:%d \(127\.0\.0\.1:%d\)$"
                         % (self.bus.port, self.bus.port))
        self.assertRegex(link["tls_version"], r"^TLSv1\.[23]$")
        self.assertNotEqual(link["tls_cipher"], "-")
        for k in ("since", "protocol", "reconnects", "last_error", "heartbeat_age"):
            self.assertIn(k, link)
        self.assertEqual(s.cmd("STATS NOPE").split()[:2], ["-ERR", "syntax"])

    def test_msgs_out_counts_events(self):
        """msgs_out counts the events a session was sent: not its replies,
        and every DATA event of a batch (not one per write)."""
        wait_until(self.ready, what="bus up")  # no BUS event from here on
        quiet = self.session()
        for i in range(5):
            self.assertEqual(quiet.cmd("PING %d" % i), "PONG %d" % i)
        self.assertEqual(my_session_line(quiet)["msgs_out"], "0")
        topic = uniq("burst")
        subs = [self.session(), self.session()]
        for s in subs:
            self.assertEqual(s.cmd("VERBOSE off"), "+OK")
            s.send("SUB F1 %s\n" % topic)
        # A SUB is a reply-less command here; a PING behind it proves it done.
        for s in subs:
            self.assertEqual(s.cmd("PING x"), "PONG x")
        before = int(stats(quiet)["sessions_msgs_out"])
        p = self.session()
        self.assertEqual(p.cmd("VERBOSE off"), "+OK")
        n = 2000
        p.send(("PUB F1 %s delta 3\nabc\n" % topic).encode() * n)
        for s in subs:
            for _ in range(n):
                s.expect("DATA")
            self.assertEqual(my_session_line(s)["msgs_out"], str(n))
        self.assertEqual(my_session_line(p)["msgs_out"], "0")
        self.assertEqual(int(stats(quiet)["sessions_msgs_out"]) - before, 2 * n)
        # A late joiner's image-cache replay is one write of several events.
        p = self.session()
        self.assertEqual(p.pub("F1", topic, [(None, b"img")], image=True), "+OK")
        for i in range(3):
            self.assertEqual(p.pub("F1", topic, [(None, b"d%d" % i)]), "+OK")
        for s in subs:
            for _ in range(4):
                s.expect("DATA")
        late = self.session()
        self.assertEqual(late.cmd("VERBOSE off"), "+OK")
        late.send("SUB F1 %s\n" % topic)
        for _ in range(4):
            late.expect("DATA")
        self.assertEqual(my_session_line(late)["msgs_out"], "4")

    def test_limits_in_base_units(self):
        """/metrics promises base units: a limit STATS gives in ms is
        exported in seconds."""
        s = self.session()
        self.assertEqual(stats(s)["limit.auth_pending_age_ms"], "600000")
        body = get("/metrics")[2]
        self.assertIn('\nbusgate_limit{name="auth_pending_age_seconds"} 600\n', body)
        self.assertNotRegex(body, r'busgate_limit\{name="[^"]*_ms"\}')

    def test_cache_replay_is_delivered(self):
        """The image cache's events a late subscriber gets count in
        data_delivered, as live ones do."""
        topic = uniq("cached")
        a, p = self.session(), self.session()
        self.assertEqual(a.cmd("SUB F1 %s" % topic), "+OK")
        self.assertEqual(a.cmd("PING"), "PONG")
        before = int(stats(p)["data_delivered"])
        self.assertEqual(p.pub("F1", topic, [(None, b"img")], image=True), "+OK")
        for i in range(3):
            self.assertEqual(p.pub("F1", topic, [(None, b"d%d" % i)]), "+OK")
        for _ in range(4):
            a.expect("DATA")
        self.assertEqual(int(stats(p)["data_delivered"]) - before, 4)
        late = self.session()
        self.assertEqual(late.cmd("SUB F1 %s" % topic), "+OK")
        got = [late.expect("DATA").words[5] for _ in range(4)]
        self.assertEqual(got, ["image", "delta", "delta", "delta"])
        self.assertEqual(int(stats(p)["data_delivered"]) - before, 8)

    def test_stats_sessions_line_as_documented(self):
        """PROTOCOL.md's STATS SESSIONS template matches the line of a
        session that named itself (app is its NAME, not always -)."""
        with open(os.path.join(TOP_SRCDIR, "doc", "PROTOCOL.md"), encoding="utf-8") as f:
            doc = f.read()
        tmpl = re.search(r"^STAT session <id> .*$", doc, re.M).group(0)
        rx = re.escape(tmpl).replace(r"\ \[self\]", r"( self)?")
        rx = re.sub(r"<[a-z]+>", r"\\S+", rx.replace(r"\<", "<").replace(r"\>", ">"))
        s = self.session()
        self.assertEqual(s.cmd("NAME pricer"), "+OK")
        s.send("STATS SESSIONS\n")
        ev = s.expect("STAT", lambda e: e.args[-1] == "self")
        self.assertRegex(ev.line, "^" + rx + "$")
        self.assertIn(" app=pricer ", ev.line)
        self.assertNotIn("`app` is always `-`", doc)

    def test_reload_keeps_the_address(self):
        off = self.gw.log_offset()
        self.gw.write_config({"metrics": {"listen": "127.0.0.1:%d" % free_port(),
                                          "timeout": "2s"}})
        try:
            self.gw.reload()
            self.gw.wait_log(r"reload: metrics.listen needs a restart; keeping 127\.0\.0\.1:%d"
                             % PORT, start=off)
            self.gw.wait_log(r"reloaded ", start=off)
            self.assertEqual(get("/healthz")[0], 200)
        finally:
            self.gw.write_config(self.GW_CONFIG)
            self.gw.reload()

    def test_cli_formats(self):
        r = cli(self.gw, "stats", "--format", "json")
        self.assertEqual(r.returncode, 0, r.stderr)
        js = json.loads(r.stdout)
        self.assertIsInstance(js["sessions_total"], int)
        self.assertIsInstance(js["version"], str)
        self.assertIsInstance(js["session"], list)
        r = cli(self.gw, "stats", "--format", "prometheus")
        self.assertEqual(r.returncode, 0, r.stderr)
        if text_string_to_metric_families is not None:
            self.assertIn("busgate_sessions_accepted", families(r.stdout))
        r = cli(self.gw, "stats", "--format", "text")
        self.assertRegex(r.stdout, r"(?m)^bus_state \w+$")
        r = cli(self.gw, "stats", "--format", "xml")
        self.assertEqual(r.returncode, 2)
        s = self.session()
        self.assertEqual(s.cmd("SUB F2 T2"), "+OK")
        r = cli(self.gw, "sessions")
        self.assertEqual(r.returncode, 0, r.stderr)
        rows = r.stdout.splitlines()
        self.assertRegex(rows[0], r"^id\s+pid\s+uid\s+app\s+age\s+idle\s+subs")
        self.assertGreaterEqual(len(rows), 3)
        queued = [int(x.split()[11]) for x in rows[1:]]
        self.assertEqual(queued, sorted(queued, reverse=True))


def samples(text, family):
    """{labels text or '': value} of a family's samples in /metrics."""
    out = {}
    for line in text.splitlines():
        m = re.match(r"^%s(\{[^}]*\})? (\S+)$" % re.escape(family), line)
        if m:
            out[m.group(1) or ""] = float(m.group(2))
    return out


class ClosedReasonsTest(GatewayCase):
    """busgate_sessions_closed_total{reason} sums to the sessions closed: a
    memory-budget close is counted once in it (as slow_consumer)."""
    MPORT = free_port()
    GW_CONFIG = {"listen": {"max_output": "8MiB", "max_memory": "64KiB"},
                 "metrics": {"listen": "127.0.0.1:%d" % MPORT}}

    def metrics(self):
        c = http.client.HTTPConnection("127.0.0.1", self.MPORT, timeout=TIMEOUT)
        return get("/metrics", conn=c)[2]

    def test_reasons_sum_to_closes(self):
        topic = uniq("mem")
        slow, p = self.session(), self.session()
        self.assertEqual(slow.cmd("NAME slowapp"), "+OK")
        self.assertEqual(slow.cmd("SUB F1 %s" % topic), "+OK")
        self.assertEqual(p.cmd("VERBOSE off"), "+OK")
        # ~800 KB to a reader that never reads: over the 64 KiB budget.
        p.send((("PUB F1 %s delta 8000\n" % topic).encode() + b"x" * 8000 + b"\n") * 100)
        closed = lambda: samples(self.metrics(), "busgate_sessions_closed_total")  # noqa: E731
        wait_until(lambda: closed().get('{reason="slow_consumer"}') == 1,
                   what="the budget to close the reader")
        slow.close()
        p.close()
        wait_until(lambda: samples(self.metrics(), "busgate_sessions") == {"": 0},
                   what="both sessions gone")
        text = self.metrics()
        accepted = samples(text, "busgate_sessions_accepted_total")[""]
        self.assertEqual(sum(samples(text, "busgate_sessions_closed_total").values()), accepted)
        self.assertEqual(samples(text, "busgate_memory_budget_closed_sessions_total"), {"": 1})


class LinkCountersTest(GatewayCase):
    """bus_msgs_out counts what the link itself sends (login, probe and
    heartbeat requests), as bus_msgs_in counts their answers."""

    def test_own_requests_count_as_sent(self):
        s = self.session()
        wait_until(lambda: stats(s)["bus_state"] == "up", what="login confirmed")

        def seen_by_bus():
            logins = [r for r in self.bus.events("login") if r.get("user") == "gw"]
            return len(logins) + len(self.recv_from("gw"))

        # The bus has read all the gateway sent (nothing local was sent).
        wait_until(lambda: int(stats(s)["bus_msgs_out"]) == seen_by_bus() > 0,
                   what="bus_msgs_out to match what the bus received")
        self.assertGreater(int(stats(s)["bus_bytes_out"]), 0)


class UnixMetricsTest(GatewayCase):
    """metrics.listen as a Unix socket path; removed at exit."""

    def test_unix_socket(self):
        path = os.path.join(self.dir, "metrics.sock")
        gw = Gateway(self.dir, self.bus, username="gw2", password="gw2pass",
                     config={"metrics": {"listen": path}}, name="unix")
        gw.start()
        try:
            self.assertEqual(get("/healthz", conn=UnixHTTPConnection(path))[0], 200)
            wait_until(lambda: get("/readyz", conn=UnixHTTPConnection(path))[0] == 200,
                       what="ready")
            self.assertEqual(get("/metrics", conn=UnixHTTPConnection(path))[0], 200)
        finally:
            gw.stop()
        self.assertFalse(os.path.exists(path))


# time() shifted by the seconds in $FAKE_OFFSET_FILE (read at every call):
# the wall clock stepping as NTP or date -s would step it, without root.
FAKETIME_C = r"""
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
time_t time(time_t *t)
{
    struct timespec ts;
    long off = 0;
    const char *f = getenv("FAKE_OFFSET_FILE");
    FILE *fp = f != NULL ? fopen(f, "r") : NULL;

    syscall(SYS_clock_gettime, CLOCK_REALTIME, &ts);
    if (fp != NULL) {
        if (fscanf(fp, "%ld", &off) != 1)
            off = 0;
        fclose(fp);
    }
    if (t != NULL)
        *t = ts.tv_sec + off;
    return ts.tv_sec + off;
}
"""


class ClockStepTest(GatewayCase):
    """uptime does not follow the wall clock: stepped back, it would go
    negative (wrapping to ~1.8e19 as an unsigned figure)."""

    @classmethod
    def start_gateway(cls, user, config=None, name=None):
        if BUSGATED_IS_SANITIZED:
            raise unittest.SkipTest("LD_PRELOAD beside a sanitizer runtime")
        src = os.path.join(cls.dir, "faketime.c")
        cls.shim = os.path.join(cls.dir, "faketime.so")
        cls.offset = os.path.join(cls.dir, "offset")
        with open(src, "w") as f:
            f.write(FAKETIME_C)
        with open(cls.offset, "w") as f:
            f.write("0")
        try:
            subprocess.run([os.environ.get("CC", "cc"), "-shared", "-fPIC", "-o", cls.shim, src],
                           check=True, capture_output=True)
        except (OSError, subprocess.CalledProcessError) as e:
            raise unittest.SkipTest("cannot build the time() shim: %s" % e)
        os.environ["LD_PRELOAD"] = cls.shim
        os.environ["FAKE_OFFSET_FILE"] = cls.offset
        try:
            return super().start_gateway(user, config, name)
        finally:
            del os.environ["LD_PRELOAD"]
            del os.environ["FAKE_OFFSET_FILE"]

    def step(self, seconds):
        with open(self.offset, "w") as f:
            f.write(str(seconds))

    def test_uptime_ignores_a_clock_step(self):
        s = self.session()
        start = int(stats(s)["start_time"])
        wait_until(lambda: int(stats(s)["uptime"]) >= 1, what="uptime 1 s")
        try:
            self.step(-3600)  # an NTP correction an hour back
            st = stats(s)
            self.assertLessEqual(int(st["uptime"]), TIMEOUT + 5)
            self.assertGreaterEqual(int(st["uptime"]), 1)
            self.assertEqual(int(st["start_time"]), start)
            self.step(3600)   # and an hour forward
            self.assertLessEqual(int(stats(s)["uptime"]), TIMEOUT + 5)
        finally:
            self.step(0)


# Starts busgated as systemd does: the fds from argv moved to 3, 4...,
# LISTEN_FDS, LISTEN_FDNAMES and LISTEN_PID set.
ACTIVATE = """
import os, sys
fds = [int(x) for x in sys.argv[1].split(",")]
for i, fd in enumerate(fds):
    os.dup2(fd, 3 + i)
os.environ["LISTEN_FDS"] = str(len(fds))
os.environ["LISTEN_FDNAMES"] = sys.argv[2]
os.environ["LISTEN_PID"] = str(os.getpid())
os.execv(sys.argv[3], sys.argv[3:])
"""


class ActivatedMetricsTest(GatewayCase):
    """The endpoint on a socket systemd passes (FileDescriptorName=metrics),
    beside the session socket, whichever comes first; metrics.listen unset."""

    def test_socket_passed_by_systemd(self):
        gw = Gateway(self.dir, self.bus, username="gw2", password="gw2pass", name="act")
        gw.write_config()
        sess_path = os.path.join(gw.dir, "activated.sock")
        ssock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        ssock.bind(sess_path)
        ssock.listen(16)
        msock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        msock.bind(("127.0.0.1", 0))
        msock.listen(16)
        port = msock.getsockname()[1]
        fds = (msock.fileno(), ssock.fileno())
        gw.logf = open(gw.log_path, "ab")
        gw.proc = subprocess.Popen(
            [sys.executable, "-c", ACTIVATE, "%d,%d" % fds, "metrics:busgate", BUSGATED,
             "-c", gw.config_path], pass_fds=fds, stdout=gw.logf, stderr=gw.logf)
        msock.close()
        ssock.close()
        try:
            wait_until(lambda: "systemd socket named metrics" in gw.log(), what="metrics up")
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
            self.assertEqual(get("/healthz", conn=conn)[0], 200)
            from gwtest import Session
            s = Session(sess_path)
            self.assertEqual(s.cmd("PING"), "PONG")
            s.close()
        finally:
            gw.stop()


class ConfigTest(unittest.TestCase):
    """A non-loopback address needs metrics.allow_remote."""

    def check(self, yaml):
        import gwtest
        d = gwtest.tempdir()
        p = os.path.join(d, "c.yaml")
        with open(p, "w") as f:
            f.write("bus:\n  host: localhost\n  tls: false\n  auth: none\n"
                    "listen:\n  path: %s/s.sock\n%s" % (d, yaml))
        try:
            return subprocess.run([BUSGATED, "-t", "-c", p], capture_output=True, text=True,
                                  timeout=TIMEOUT)
        finally:
            os.unlink(p)
            os.rmdir(d)

    def test_remote_refused_unless_allowed(self):
        r = self.check("metrics:\n  listen: 0.0.0.0:9100\n")
        self.assertEqual(r.returncode, 1)
        self.assertIn("c.yaml:8:11: metrics.listen: 0.0.0.0:9100 is not a loopback address",
                      r.stderr)
        r = self.check("metrics:\n  listen: 0.0.0.0:9100\n  allow_remote: true\n")
        self.assertEqual(r.returncode, 0, r.stderr)
        r = self.check("metrics:\n  listen: localhost:9100\n")
        self.assertEqual(r.returncode, 1)
        self.assertIn("not an IPv4 address literal", r.stderr)
        for good in ("127.0.0.1:9100", "'[::1]:9100'", "/run/busgate/metrics.sock"):
            r = self.check("metrics:\n  listen: %s\n" % good)
            self.assertEqual(r.returncode, 0, r.stderr)


if __name__ == "__main__":
    unittest.main(verbosity=2)
