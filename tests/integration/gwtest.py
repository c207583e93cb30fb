"""Harness for end-to-end tests: run the real busgated against the project's
test bus and talk to it over its real Unix socket with the line protocol.

    bus = TestBus(tmp); bus.start()
    gw = Gateway(tmp, bus); gw.start()
    s = gw.session()
    s.cmd("SUB PRICES VOD.L")          # -> "+OK"
    ev = s.expect("DATA")

Gateway.stop() sends SIGTERM and asserts a clean exit (status 0, no
sanitizer report), so every test also checks shutdown and leaks.
"""

import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
TOP_SRCDIR = os.environ.get("top_srcdir") or os.path.dirname(os.path.dirname(HERE))
TOP_BUILDDIR = os.environ.get("top_builddir") or TOP_SRCDIR
sys.path.insert(0, os.path.join(TOP_SRCDIR, "tests", "testbus"))

from control import TestBus  # noqa: E402,F401  (re-exported for tests)

BUSGATED = os.environ.get("BUSGATED") or os.path.join(TOP_BUILDDIR, "src", "busgated")
BUSGATE = os.environ.get("BUSGATE") or os.path.join(TOP_BUILDDIR, "src", "busgate")

# Slower under the sanitizers; every wait is bounded by this.
TIMEOUT = float(os.environ.get("BUSGATE_TEST_TIMEOUT", "20"))

# The login probe's feed (bus.confirm_feed's default): every link sends a
# notification, a subscription and a publish there at login (issue 9.5).
PROBE_FEED = "__busgate__"


def not_probe(record):
    """A test bus log record not about the login probe."""
    return record.get("fields", {}).get("feed") != PROBE_FEED


SANITIZER_MARKS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer",
                   "runtime error:", "SUMMARY: UndefinedBehaviorSanitizer")


def escape(name):
    """A name as a line-protocol token (see doc/PROTOCOL.md)."""
    if isinstance(name, str):
        name = name.encode("utf-8")
    if name == b"":
        return '""'
    out = bytearray()
    for b in name:
        if b <= 0x20 or b == 0x7F or b in (0x25, 0x22):
            out += b"%%%02X" % b
        else:
            out.append(b)
    return out.decode("utf-8", errors="surrogateescape")


def unescape(token):
    if token == '""':
        return b""
    data = token.encode("utf-8", errors="surrogateescape")
    out = bytearray()
    i = 0
    while i < len(data):
        if data[i] == 0x25:
            out.append(int(data[i + 1:i + 3], 16))
            i += 3
        else:
            out.append(data[i])
            i += 1
    return bytes(out)


def yaml_scalar(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    return '"%s"' % str(v).replace("\\", "\\\\").replace('"', '\\"')


def yaml_dump(d, indent=0):
    lines = []
    for k, v in d.items():
        if isinstance(v, dict):
            lines.append(" " * indent + "%s:" % k)
            lines.extend(yaml_dump(v, indent + 2))
        else:
            lines.append(" " * indent + "%s: %s" % (k, yaml_scalar(v)))
    return lines


def merge(a, b):
    """Deep-merge dict b into a copy of a (b wins; None deletes)."""
    out = dict(a)
    for k, v in b.items():
        if v is None:
            out.pop(k, None)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


class Event:
    """One line from the daemon, with the payloads of a DATA event."""

    def __init__(self, line, payloads=()):
        self.line = line
        self.words = line.split(" ")
        self.kind = self.words[0]
        self.payloads = list(payloads)

    @property
    def args(self):
        return self.words[1:]

    def __repr__(self):
        return "Event(%r, %r)" % (self.line, self.payloads)

    # DATA <feed> <topic> <user> <host> <image|delta> <multicast|unicast>
    #      [type=<content-type>] [PKT...]
    def content_type(self):
        """The type= token's value (bus protocol 6), None if there is none."""
        t = [w for w in self.words[7:8] if w.startswith("type=")]
        return unescape(t[0][5:]).decode() if t else None

    def packet_specs(self):
        return [w for w in self.words[7:] if not w.startswith("type=")]

    def data_fields(self):
        assert self.kind == "DATA", self
        w = self.words
        packets = []
        for spec, payload in zip(self.packet_specs(), self.payloads):
            ents = None
            if ":" in spec:
                ents = [int(x) for x in spec.split(":", 1)[1].split(",")]
            packets.append((ents, payload))
        return {
            "feed": unescape(w[1]).decode(), "topic": unescape(w[2]).decode(),
            "user": unescape(w[3]).decode(), "host": unescape(w[4]).decode(),
            "image": w[5] == "image", "unicast": w[6] == "unicast",
            "content_type": self.content_type(), "packets": packets,
        }


class Session:
    """A line-protocol client on the gateway's socket."""

    def __init__(self, path, timeout=TIMEOUT, greet=True):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.timeout = timeout
        self.buf = b""
        self.events = []          # read but not yet consumed
        self.hello = self.read_event() if greet else None

    def close(self):
        self.sock.close()

    def send(self, data):
        if isinstance(data, str):
            data = data.encode("utf-8", errors="surrogateescape")
        self.sock.sendall(data)

    def _fill(self, deadline):
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no data from busgated")
        r, _, _ = select.select([self.sock], [], [], left)
        if not r:
            raise TimeoutError("no data from busgated")
        chunk = self.sock.recv(1 << 16)
        if not chunk:
            raise EOFError("busgated closed the session")
        self.buf += chunk

    def _read_line(self, deadline):
        while b"\n" not in self.buf:
            self._fill(deadline)
        line, self.buf = self.buf.split(b"\n", 1)
        return line.rstrip(b"\r").decode("utf-8", errors="surrogateescape")

    def _read_exact(self, n, deadline):
        while len(self.buf) < n:
            self._fill(deadline)
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def read_event(self, timeout=None):
        """The next line from the daemon (queued ones first)."""
        if self.events:
            return self.events.pop(0)
        deadline = time.monotonic() + (timeout or self.timeout)
        line = self._read_line(deadline)
        ev = Event(line)
        if ev.kind == "DATA":
            lens = [int(spec.split(":", 1)[0]) for spec in ev.packet_specs()]
            if lens:
                ev.payloads = [self._read_exact(n, deadline) for n in lens]
                term = self._read_line(deadline)
                assert term == "", "bad payload terminator %r" % term
        return ev

    def expect(self, kind, pred=None, timeout=None):
        """Wait for an event of kind (matching pred); others stay queued."""
        deadline = time.monotonic() + (timeout or self.timeout)
        skipped = []
        try:
            for i, ev in enumerate(self.events):
                if ev.kind == kind and (pred is None or pred(ev)):
                    del self.events[i]
                    return ev
            queued, self.events = self.events, []
            skipped.extend(queued)
            while True:
                left = deadline - time.monotonic()
                ev = self.read_event(timeout=max(left, 0.001))
                if ev.kind == kind and (pred is None or pred(ev)):
                    return ev
                skipped.append(ev)
        finally:
            self.events = skipped + self.events

    def no_event(self, kind, wait=0.5, pred=None):
        """True if no event of kind arrives within wait seconds."""
        try:
            self.expect(kind, pred, timeout=wait)
            return False
        except TimeoutError:
            return True

    def reply(self, timeout=None):
        """The next reply (+OK, -ERR, PONG), leaving events queued."""
        deadline = time.monotonic() + (timeout or self.timeout)
        skipped = []
        try:
            while True:
                ev = self.read_event(timeout=max(deadline - time.monotonic(), 0.001))
                if ev.kind in ("+OK", "-ERR", "PONG"):
                    return ev.line
                skipped.append(ev)
        finally:
            self.events = skipped + self.events

    def cmd(self, line, payload=None):
        """Send one command (and its payload block); return the reply line."""
        data = line.encode("utf-8", errors="surrogateescape") + b"\n"
        if payload is not None:
            data += payload + b"\n"
        self.send(data)
        return self.reply()

    def pub(self, feed, topic, packets, image=False, verb="PUB", target=None):
        """PUB (or SEND to target) packets [(ents or None, bytes)]; the reply."""
        specs, payload = [], b""
        for ents, data in packets:
            spec = str(len(data))
            if ents:
                spec += ":" + ",".join(str(e) for e in ents)
            specs.append(spec)
            payload += data
        words = [verb] + ([target] if target else []) + [
            escape(feed), escape(topic), "image" if image else "delta"] + specs
        return self.cmd(" ".join(words), payload if specs else None)

    def stats(self, view=None):
        """STATS [view] as {name: value}; 'session' lines are collected in
        a list. Events arriving meanwhile stay queued."""
        self.send("STATS %s\n" % view if view else "STATS\n")
        out = {"session": []}
        ev = self.expect("STAT")
        while ev.kind != "END":
            name, _, value = " ".join(ev.args).partition(" ")
            if name == "session":
                out["session"].append(value)
            else:
                out[name] = value
            ev = self._next_stat()
        return out

    def _next_stat(self):
        deadline = time.monotonic() + self.timeout
        skipped = []
        try:
            while True:
                ev = self.read_event(timeout=max(deadline - time.monotonic(), 0.001))
                if ev.kind in ("STAT", "END"):
                    return ev
                skipped.append(ev)
        finally:
            self.events = skipped + self.events


class Gateway:
    """One busgated process with a generated config pointing at a TestBus."""

    def __init__(self, workdir, bus, auth="basic", username="gw", password="gwpass",
                 token=None, config=None, name="gw"):
        self.dir = os.path.join(workdir, name)
        os.makedirs(self.dir, exist_ok=True)
        self.bus = bus
        self.socket_path = os.path.join(self.dir, "busgate.sock")
        self.config_path = os.path.join(self.dir, "busgated.yaml")
        self.creds_path = os.path.join(self.dir, "credentials.ini")
        self.log_path = os.path.join(self.dir, "busgated.log")
        self.started_at = 0  # log offset of the latest start (the log is appended to)
        self.proc = None
        self.auth = auth
        self.username, self.password, self.token = username, password, token
        self.overrides = config or {}
        self.write_config()

    def base_config(self):
        bus = {"host": "127.0.0.1", "port": self.bus.port, "auth": self.auth,
               "reconnect": {"min": "50ms", "max": "1s", "reset_after": "5s"},
               "connect_timeout": "5s", "auth_fail_window": "1s"}
        if getattr(self.bus, "tls", True):
            bus["tls"] = {"ca_file": self.bus.ca_file, "server_name": "localhost"}
        else:
            bus["tls"] = False
        if self.auth != "none":
            bus["credentials_file"] = self.creds_path
        return {"bus": bus,
                "listen": {"path": self.socket_path, "mode": "0600"},
                "log": {"level": "debug"},
                "daemon": {"shutdown_grace": "2s"}}

    def write_config(self, overrides=None):
        if overrides is not None:
            self.overrides = overrides
        cfg = merge(self.base_config(), self.overrides)
        lines = yaml_dump(cfg)
        with open(self.config_path, "w") as f:
            f.write("\n".join(lines) + "\n")
        fd = os.open(self.creds_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("[bus]\n")
            if self.token is not None:
                f.write("token = %s\n" % self.token)
            else:
                f.write("username = %s\npassword = %s\n" % (self.username, self.password))
        os.chmod(self.creds_path, 0o600)

    def start(self, wait=True, args=()):
        self.started_at = self.log_offset()
        self.logf = open(self.log_path, "ab")
        env = dict(os.environ)
        env.setdefault("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0")
        env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1")
        self.proc = subprocess.Popen([BUSGATED, "-c", self.config_path] + list(args),
                                     stdout=self.logf, stderr=self.logf, env=env)
        if wait:
            self.wait_socket()
        return self

    def wait_socket(self):
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("busgated exited %s:\n%s" % (self.proc.returncode, self.log()))
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                try:
                    s.connect(self.socket_path)
                    return
                except OSError:
                    pass
            time.sleep(0.02)
        raise TimeoutError("busgated socket never appeared:\n" + self.log())

    def session(self, **kw):
        return Session(self.socket_path, **kw)

    def log(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def wait_log(self, pattern, timeout=None, start=0):
        """Wait until the daemon's log (from offset start) matches pattern."""
        deadline = time.monotonic() + (timeout or TIMEOUT)
        rx = re.compile(pattern)
        while time.monotonic() < deadline:
            m = rx.search(self.log()[start:])
            if m:
                return m
            if self.proc is not None and self.proc.poll() is not None:
                break
            time.sleep(0.02)
        raise TimeoutError("log never matched %r:\n%s" % (pattern, self.log()[-4000:]))

    def log_offset(self):
        return len(self.log())

    def wait_bus_up(self, session=None):
        """Wait until the link has been confirmed by traffic or is
        unconfirmed-but-connected, in this run of busgated: after a restart,
        the previous run's lines do not count."""
        return self.wait_log(r"bus: (up|connected)", start=self.started_at)

    def reload(self):
        self.proc.send_signal(signal.SIGHUP)

    def stop(self, expect_rc=0):
        """SIGTERM; assert a clean exit and no sanitizer report."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError("busgated did not stop on SIGTERM:\n" + self.log()[-4000:])
        rc = self.proc.returncode
        self.proc = None
        self.logf.close()
        log = self.log()
        bad = [m for m in SANITIZER_MARKS if m in log]
        if bad:
            raise AssertionError("sanitizer report in busgated log:\n" + log[-8000:])
        if expect_rc is not None and rc != expect_rc:
            raise AssertionError("busgated exited %s, expected %s:\n%s" % (rc, expect_rc, log[-4000:]))

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


def wait_until(pred, timeout=TIMEOUT, what="condition"):
    """Poll pred until it returns something true (returned); fail the test
    after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for " + what)
        time.sleep(0.02)


def _sanitized():
    try:
        with open(BUSGATED, "rb") as f:
            data = f.read()
    except OSError:
        return False
    return any(m in data for m in (b"__asan_init", b"libasan", b"AddressSanitizer"))


# Memory figures mean little under ASan (quarantine, shadow memory).
BUSGATED_IS_SANITIZED = _sanitized()


def proc_status(pid, field):
    """A /proc/PID/status figure in KiB (VmRSS, VmHWM...)."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def tempdir(prefix="busgate-test-"):
    """A short temp dir (Unix socket paths are limited to 107 bytes)."""
    return tempfile.mkdtemp(prefix=prefix, dir="/tmp")


class BusesCase(unittest.TestCase):
    """Each test starts its own test buses and gateways (in self.buses and
    self.gws, stopped after it) in a fresh work dir."""
    DIR_PREFIX = "busgate-test-"

    def setUp(self):
        self.dir = tempdir(self.DIR_PREFIX)
        self.buses, self.gws = [], []

    def tearDown(self):
        for gw in self.gws:
            gw.stop()
        for bus in self.buses:
            bus.stop()
        if not os.environ.get("BUSGATE_TEST_KEEP"):
            shutil.rmtree(self.dir, ignore_errors=True)
