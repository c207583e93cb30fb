"""Shared pieces of the fault-injection and load tests (test_faults.py,
test_load.py): a test case that owns its test buses, gateways, proxies and
clients, and a TCP proxy that damages the bus's TLS stream at a record
boundary.

Everything is observed through the daemon's socket (replies, events,
STATS), its log and the test bus's JSON event log. Every wait is bounded by
TIMEOUT (BUSGATE_TEST_TIMEOUT); nothing asserts on time.
"""

import os
import re
import select
import shutil
import socket
import subprocess
import sys
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import gwtest  # noqa: E402
from gwtest import (Gateway, TestBus, TIMEOUT, tempdir,  # noqa: E402,F401
                    BUSGATED_IS_SANITIZED, proc_status, wait_until)

USERS = {"gw": "gwpass", "pub": "pubpass", "sub": "subpass"}

# Heartbeats from the test bus every HB s; the daemon's watchdog gives up
# after HB_TIMEOUT without traffic (short where silence is the point).
HB = 0.1
HB_TIMEOUT = "3s"
SHORT_HB_TIMEOUT = "500ms"
FAST_RETRY = {"min": "20ms", "max": "300ms", "reset_after": "5s"}



def open_fds(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


def stats(s):
    """STATS as {name: value} ('session' lines in a list); other events
    arriving meanwhile stay queued on the session."""
    return s.stats()


def data_payload(ev):
    """The concatenated packet data of a DATA event."""
    return b"".join(ev.payloads)


# ----------------------------------------------------------------- proxy

class TlsDamageProxy:
    """A TCP proxy from busgated to the test bus. The bus -> gateway
    direction is cut into TLS records (5-byte header: type, version,
    length); arm(mode) damages the next whole application-data record:

    - "cut": forward its header and half its body, then close both ends
      (a TLS stream truncated mid-record);
    - "stall": forward half of it, then nothing more in that direction
      (the connection stays open);
    - "corrupt": flip one byte of its body (the record fails its MAC).

    Once fired, the mode is spent: later connections pass untouched."""

    def __init__(self, target_port, host="127.0.0.1"):
        self.target = (host, target_port)
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind((host, 0))
        self.lsock.listen(16)
        self.port = self.lsock.getsockname()[1]
        self.lock = threading.Lock()
        self.mode = None
        self.fired = threading.Event()
        self.accepted = 0
        self.stop = False
        self.pairs = []          # [client, server, records buffer, stalled]
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def arm(self, mode):
        assert mode in ("cut", "stall", "corrupt")
        with self.lock:
            self.fired.clear()
            self.mode = mode

    def close(self):
        self.stop = True
        self.thread.join(TIMEOUT)
        for p in self.pairs:
            self._close_pair(p)
        self.lsock.close()

    # -- the pump (its own thread)

    def _run(self):
        while not self.stop:
            socks = [self.lsock]
            for p in self.pairs:
                socks.append(p[0])
                if not p[3]:
                    socks.append(p[1])
            try:
                ready, _, _ = select.select(socks, [], [], 0.05)
            except (OSError, ValueError):
                self.pairs = [p for p in self.pairs if p[0].fileno() >= 0]
                continue
            for s in ready:
                if s is self.lsock:
                    self._accept()
                    continue
                for p in list(self.pairs):
                    if s is p[0]:
                        self._client_to_server(p)
                    elif s is p[1]:
                        self._server_to_client(p)

    def _accept(self):
        c, _ = self.lsock.accept()
        try:
            srv = socket.create_connection(self.target, timeout=TIMEOUT)
        except OSError:
            c.close()
            return
        srv.settimeout(None)
        self.accepted += 1
        self.pairs.append([c, srv, b"", False])

    def _close_pair(self, p):
        for s in p[:2]:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
        if p in self.pairs:
            self.pairs.remove(p)

    def _client_to_server(self, p):
        try:
            data = p[0].recv(65536)
            if data:
                p[1].sendall(data)
                return
        except OSError:
            pass
        self._close_pair(p)

    def _server_to_client(self, p):
        try:
            data = p[1].recv(65536)
        except OSError:
            data = b""
        if not data:
            self._close_pair(p)
            return
        p[2] += data
        out = b""
        while len(p[2]) >= 5:
            n = 5 + int.from_bytes(p[2][3:5], "big")
            if len(p[2]) < n:
                break
            rec, p[2] = p[2][:n], p[2][n:]
            with self.lock:
                mode = self.mode if rec[0] == 23 else None
                if mode:
                    self.mode = None
            if mode is None:
                out += rec
                continue
            half = 5 + (n - 5) // 2
            if mode == "corrupt":
                damaged = bytearray(rec)
                damaged[half] ^= 0x5A
                out += bytes(damaged)
                self.fired.set()
                continue
            try:
                p[0].sendall(out + rec[:half])
            except OSError:
                pass
            self.fired.set()
            if mode == "cut":
                self._close_pair(p)
            else:
                p[3] = True      # stall: never read from the bus again
                p[2] = b""
            return
        if out:
            try:
                p[0].sendall(out)
            except OSError:
                self._close_pair(p)


# ------------------------------------------------------ renegotiation

class RenegotiatingServer:
    """openssl s_server (TLS 1.2, the test PKI's server certificate) in
    place of a distributor: once the gateway's login has arrived it asks
    for a renegotiation, which the gateway refuses (SSL_OP_NO_RENEGOTIATION)
    and the server answers with a fatal handshake_failure alert. Stands in
    for a distributor whose TLS fails right after the login. Only what the
    Gateway config needs of a bus: port, ca_file, tls."""

    tls = True

    def __init__(self, pki, password):
        self.ca_file = pki.ca_cert
        self.password = password.encode()
        self.proc = subprocess.Popen(
            ["openssl", "s_server", "-tls1_2", "-accept", "127.0.0.1:0",
             "-cert", pki.server_cert, "-key", pki.server_key],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.out = b""
        self.cond = threading.Condition()
        self.renegotiated = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        m = self.wait(lambda: re.search(rb"ACCEPT \S*:(\d+)", self.out), "ACCEPT")
        self.port = int(m.group(1))

    def _read(self):
        while True:
            data = self.proc.stdout.read1(65536)
            with self.cond:
                self.out += data
                self.cond.notify_all()
                if data and not self.renegotiated.is_set() and self.password in self.out:
                    # the login (username and password) has arrived
                    self.proc.stdin.write(b"r\n")
                    self.proc.stdin.flush()
                    self.renegotiated.set()
            if not data:
                return

    def wait(self, pred, what):
        with self.cond:
            if not self.cond.wait_for(pred, TIMEOUT):
                raise AssertionError("s_server: no %s in:\n%s" % (what, self.out[-2000:]))
            return pred()

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.proc.stdin.close()
        self.proc.stdout.close()


# ------------------------------------------------------------- test case

class FaultCase(unittest.TestCase):
    """Each test gets a directory, its own test buses, gateways, proxies
    and clients; all are stopped at the end, and each gateway's clean exit
    (status 0, no sanitizer report) is asserted."""

    def setUp(self):
        self.dir = tempdir("busgate-fault-")
        self.buses, self.gws, self.proxies, self.closers = [], [], [], []

    def tearDown(self):
        errors = []
        for c in reversed(self.closers):
            try:
                c.close()
            except Exception:
                pass
        for gw in self.gws:
            try:
                gw.stop()
            except AssertionError as e:
                errors.append(str(e))
        for p in self.proxies:
            p.close()
        for bus in self.buses:
            bus.stop()
        if not errors and not self._failed() and not os.environ.get("BUSGATE_TEST_KEEP"):
            shutil.rmtree(self.dir, ignore_errors=True)
        if errors:
            raise AssertionError("\n".join(errors))

    def _failed(self):
        result = getattr(getattr(self, "_outcome", None), "result", None)
        if result is None:
            return False
        return any(t is self for t, _ in result.failures + result.errors)

    # -- setup helpers

    def bus(self, name="testbus", **kw):
        b = TestBus(self.dir, name=name, users=USERS, **kw)
        b.start()
        self.buses.append(b)
        return b

    def proxy(self, bus):
        p = TlsDamageProxy(bus.port)
        self.proxies.append(p)
        return p

    def gateway(self, bus, bus_config=None, config=None, name="gw", start=True):
        cfg = dict(config or {})
        cfg["bus"] = dict({"reconnect": dict(FAST_RETRY)}, **(bus_config or {}))
        gw = Gateway(self.dir, bus, config=cfg, name=name)
        self.gws.append(gw)
        if start:
            gw.start()
        return gw

    def heartbeat(self, timeout=HB_TIMEOUT, **extra):
        return dict({"heartbeat": {"timeout": timeout}}, **extra)

    def session(self, gw, **kw):
        s = gw.session(**kw)
        self.closers.append(s)
        return s

    def client(self, bus, user="pub"):
        c = bus.client(user=user)
        self.closers.append(c)
        return c

    # -- observation helpers

    def logins(self, bus, user="gw"):
        return [r for r in bus.records() if r["event"] == "login" and r.get("user") == user]

    def wait_logins(self, bus, n, user="gw"):
        return wait_until(lambda: len(self.logins(bus, user)) >= n,
                          what="%d logins of %s on the bus" % (n, user))

    def subs_on(self, bus, conn, feed, topic, add=True):
        """SubscriptionRequests the bus received on connection conn."""
        return [r for r in bus.run_records()
                if r["event"] == "recv" and r.get("conn") == conn
                and r.get("type") == "SubscriptionRequest"
                and r["fields"]["feed"] == feed and r["fields"]["topic"] == topic
                and r["fields"]["is_add"] == add]

    def wait_subscribed(self, bus, feed, topic, user="gw"):
        """Wait until the newest login of user has subscribed feed/topic on
        the bus; returns that login record."""
        def check():
            mine = self.logins(bus, user)
            if mine and self.subs_on(bus, mine[-1]["conn"], feed, topic):
                return mine[-1]
            return None
        return wait_until(check, what="%s subscribed to %s/%s on the bus" % (user, feed, topic))

    def wait_log_count(self, gw, pattern, n):
        rx = re.compile(pattern)
        return wait_until(lambda: len(rx.findall(gw.log())) >= n,
                          what="%d x %r in the log:\n%s" % (n, pattern, gw.log()[-3000:]))

    def assert_alive(self, gw, *sessions):
        """The daemon runs and every given session still answers."""
        self.assertIsNone(gw.proc.poll(), "busgated died:\n" + gw.log()[-3000:])
        for i, s in enumerate(sessions):
            self.assertEqual(s.cmd("PING alive%d" % i), "PONG alive%d" % i)

    def expect_bus(self, s, state, pred=None):
        """The next BUS <state> event on session s."""
        return s.expect("BUS", lambda e: e.words[1] == state and (pred is None or pred(e)))
