#!/usr/bin/env python3
"""busgate soak run (make soak; not part of make check).

Runs the real busgated against the python test bus (TLS, password auth,
heartbeats) for minutes, with steady traffic both ways and the bus
restarted every few seconds, and checks that nothing is lost silently:

  up    local publisher sessions PUB (sequence numbers in the payloads) to
        the "soak-up" feed; what reached the bus is read from the bus's
        event log. Every +OK'd publish must be in the log or explained by
        the daemon's own loss counters (STATS bus_bytes_lost,
        busdown_lost); a -ERR'd one must not be in it.
  down  a raw bus client (busclient.BusClient, user soakpub) publishes to
        the "soak-down" feed that the local subscriber sessions subscribe
        to, reconnecting after each restart. What the bus forwarded to the
        gateway (bus log) must reach every local subscriber of the topic.

A status line every few seconds (elapsed, restarts, publishes +OK/-ERR,
delivered upstream, bus->local sent/forwarded/received, the daemon's RSS
and open descriptors), then a summary and the daemon's STATS. Exit status
1 if the daemon crashed or did not stop cleanly, leaked descriptors, lost a
+OK'd publish without counting it, refused a publish and sent it anyway,
duplicated or reordered messages, or fanned a message out to some local
subscribers of a topic but not others.

One loss no client can count: publishes the daemon wrote to the link in
the instant between the bus ceasing to read (SIGTERM) and the daemon
seeing the close. The bus's TCP accepted them, the bus never read them,
and v3 has no acknowledgement. They are reported ("NOT COUNTED", with
their timing against the bus's own log) but fail the run only with
--strict; a missing publish outside that window always fails it.

    python3 bench/soak.py [--duration 180] [--restart-every 20] [--rate 300]

Python standard library only; uses the test bus and tests/integration/gwtest.py.
"""

import argparse
import bisect
import json
import os
import select
import shutil
import socket
import ssl
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SRCDIR = os.path.dirname(HERE)

UP_FEED = "soak-up"
DOWN_FEED = "soak-down"
GW_USER, GW_PASS = "gw", "gwpass"
RAW_USER, RAW_PASS = "soakpub", "soakpw"
IO_TIMEOUT = 20.0


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=180, help="seconds of traffic (default 180)")
    p.add_argument("--restart-every", type=float, default=20,
                   help="restart the bus every S seconds (default 20; 0: never)")
    p.add_argument("--outage", type=float, default=1.0,
                   help="seconds the bus stays stopped at each restart (default 1)")
    p.add_argument("--rate", type=float, default=300,
                   help="local publishes per second, all publishers together (default 300)")
    p.add_argument("--bus-rate", type=float, default=100,
                   help="bus-side publishes per second (default 100)")
    p.add_argument("--publishers", type=int, default=3, help="local publisher sessions (default 3)")
    p.add_argument("--subscribers", type=int, default=3, help="local subscriber sessions (default 3)")
    p.add_argument("--topics", type=int, default=4,
                   help="topics per direction; each subscriber takes all but one (default 4)")
    p.add_argument("--payload", type=int, default=64, help="payload bytes (default 64)")
    p.add_argument("--busdown-queue", type=int, default=256,
                   help="router.busdown_queue (default 256)")
    p.add_argument("--heartbeat", type=float, default=1.0, help="bus heartbeat seconds (default 1)")
    p.add_argument("--heartbeat-timeout", default="3s",
                   help="bus.heartbeat.timeout (default 3s)")
    p.add_argument("--interval", type=float, default=5, help="seconds between status lines (default 5)")
    p.add_argument("--busgated", help="the daemon (default: $BUSGATED or BUILDDIR/src/busgated)")
    p.add_argument("--builddir", help="build directory (default: $top_builddir or the source tree)")
    p.add_argument("--strict", action="store_true",
                   help="also fail when publishes in flight at a bus stop were lost uncounted")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    a = p.parse_args(argv)
    if a.duration <= 0 or a.rate <= 0 or a.bus_rate < 0 or a.publishers < 1 \
            or a.subscribers < 1 or a.topics < 1 or a.payload < 24:
        p.error("bad numbers (payload needs at least 24 bytes for the sequence numbers)")
    return a


def setup_paths(a):
    builddir = a.builddir or os.environ.get("top_builddir") or SRCDIR
    os.environ.setdefault("top_srcdir", SRCDIR)
    os.environ["top_builddir"] = builddir
    os.environ["BUSGATED"] = a.busgated or os.environ.get("BUSGATED") or \
        os.path.join(builddir, "src", "busgated")
    sys.path.insert(0, os.path.join(SRCDIR, "tests", "integration"))
    sys.path.insert(0, os.path.join(SRCDIR, "tests", "testbus"))


def now():
    return time.time()


def mib(n):
    return "%.1f MiB" % (n / 1048576.0)


def proc_status(pid, key):
    """A kB field of /proc/PID/status, in bytes (0 if unreadable)."""
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def proc_fds(pid):
    """{fd: target} of a process's open descriptors."""
    out = {}
    d = "/proc/%d/fd" % pid
    try:
        for name in os.listdir(d):
            try:
                out[int(name)] = os.readlink(os.path.join(d, name))
            except OSError:
                pass
    except OSError:
        pass
    return out


def fd_kinds(fds):
    kinds = {}
    for target in fds.values():
        k = target.split(":")[0] if ":" in target else "file"
        kinds[k] = kinds.get(k, 0) + 1
    return " ".join("%s=%d" % kv for kv in sorted(kinds.items()))


def make_payload(tag, seq, size):
    head = b"%s %d " % (tag.encode(), seq)
    return head + b"x" * (size - len(head))


def parse_payload(data):
    parts = data.split(b" ", 2)
    return parts[0].decode(), int(parts[1])


# ------------------------------------------------------------ line protocol

class LineClient:
    """A blocking line-protocol connection to the daemon."""

    def __init__(self, path, timeout=IO_TIMEOUT):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.f = self.sock.makefile("rb")
        self.hello = self.readline()

    def readline(self):
        line = self.f.readline()
        if not line:
            raise EOFError("busgated closed the session")
        return line.rstrip(b"\r\n").decode("utf-8", "surrogateescape")

    def read_data(self, line):
        """The packets of a DATA line (its payload block read)."""
        lens = [int(spec.split(":", 1)[0]) for spec in line.split(" ")[7:]]
        if not lens:
            return []
        blob = self.f.read(sum(lens))
        if len(blob) != sum(lens) or self.f.readline() not in (b"\n", b"\r\n"):
            raise EOFError("short DATA payload")
        out, i = [], 0
        for n in lens:
            out.append(blob[i:i + n])
            i += n
        return out

    def send(self, data):
        self.sock.sendall(data)

    def close(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.f.close()
        self.sock.close()

    def stats(self):
        self.send(b"STATS\n")
        out = {"session": []}
        while True:
            line = self.readline()
            if line == "END":
                return out
            w = line.split(" ", 2)
            if w[0] != "STAT":
                continue
            if w[1] == "session":
                out["session"].append(w[2])
            else:
                out[w[1]] = w[2] if len(w) > 2 else ""


class Publisher(threading.Thread):
    """A local session publishing at a steady rate, one PUB at a time."""

    def __init__(self, soak, idx, rate, topics):
        super().__init__(name="pub%d" % idx, daemon=True)
        self.soak = soak
        self.tag = "p%d" % idx
        self.rate = rate
        self.topics = topics
        self.ok = {}            # seq -> (time of +OK, encoded size)
        self.err = {}           # seq -> time of -ERR bus-down
        self.other_err = []     # other -ERR lines
        self.events = []        # BUS events
        self.failure = None
        self.sent = 0
        self.stop_ev = threading.Event()
        self.client = LineClient(soak.gw.socket_path)

    def run(self):
        try:
            self._run()
        except Exception as e:  # the daemon closed or hung
            if not self.stop_ev.is_set():
                self.failure = "%s: %s: %s" % (self.tag, type(e).__name__, e)

    def _run(self):
        seq = 0
        interval = 1.0 / self.rate
        due = time.monotonic()
        while not self.stop_ev.is_set():
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            elif delay < -1.0:
                due = time.monotonic()      # fell behind by a second: no burst
            due += interval
            seq += 1
            topic = self.topics[seq % len(self.topics)]
            payload = make_payload(self.tag, seq, self.soak.a.payload)
            self.client.send(b"PUB %s %s delta %d\n%s\n" % (
                UP_FEED.encode(), topic.encode(), len(payload), payload))
            self.sent = seq
            while True:
                line = self.client.readline()
                if line == "+OK":
                    self.ok[seq] = (now(), self.soak.wire_size(UP_FEED, topic, payload))
                    break
                if line.startswith("-ERR bus-down"):
                    self.err[seq] = now()
                    break
                if line.startswith("-ERR"):
                    self.other_err.append((seq, line))
                    break
                if line.startswith("BUS "):
                    self.events.append((now(), line))
                else:
                    self.other_err.append((seq, "unexpected: " + line))

    def stop(self):
        self.stop_ev.set()


class Subscriber(threading.Thread):
    """A local session subscribed to some soak-down topics, recording what
    arrives (and BUS events)."""

    def __init__(self, soak, idx, topics):
        super().__init__(name="sub%d" % idx, daemon=True)
        self.soak = soak
        self.idx = idx
        self.topics = topics
        self.got = {t: set() for t in topics}
        self.last = {t: 0 for t in topics}
        self.dups = 0
        self.reordered = 0
        self.received = 0
        self.images = 0
        self.stale = 0
        self.events = []        # (time, "BUS ...")
        self.errors = []
        self.oks = 0
        self.ready = threading.Event()
        self.closing = False
        self.failure = None
        self.client = LineClient(soak.gw.socket_path)
        self.client.sock.settimeout(None)   # the reader waits as long as it takes
        if " bus=" in self.client.hello:
            self.events.append((now(), "BUS " + self.client.hello.rsplit("bus=", 1)[1]))

    def run(self):
        try:
            self.client.send(b"".join(b"SUB %s %s\n" % (DOWN_FEED.encode(), t.encode())
                                      for t in self.topics))
            while True:
                line = self.client.readline()
                if line.startswith("DATA "):
                    self.on_data(line)
                elif line == "+OK":
                    self.oks += 1
                    if self.oks == len(self.topics):
                        self.ready.set()
                elif line.startswith("BUS "):
                    self.events.append((now(), line))
                else:
                    self.errors.append(line)
        except Exception as e:
            if not self.closing:
                self.failure = "sub%d: %s: %s" % (self.idx, type(e).__name__, e)

    def on_data(self, line):
        w = line.split(" ")
        topic = w[2]
        packets = self.client.read_data(line)
        if w[3] == '""' and not packets:
            self.stale += 1     # stale (the raw publisher left the bus)
            return
        if w[5] == "image":
            self.images += 1
        tag, seq = parse_payload(packets[0])
        if tag == "sync":
            self.soak.sync_seen(self.idx, topic, seq)
            return
        self.received += 1
        if seq in self.got[topic]:
            self.dups += 1
            return
        if seq < self.last[topic]:
            self.reordered += 1
        self.last[topic] = max(self.last[topic], seq)
        self.got[topic].add(seq)

    def close(self):
        self.closing = True
        self.client.close()


# ---------------------------------------------------------- bus side

class RawPublisher(threading.Thread):
    """A raw bus client publishing to soak-down; reconnects after restarts."""

    def __init__(self, soak, rate, topics):
        super().__init__(name="rawpub", daemon=True)
        self.soak = soak
        self.rate = rate
        self.topics = topics
        self.seq = {t: 0 for t in topics}
        self.sent = 0
        self.send_failures = 0
        self.connects = 0
        self.client = None
        self.stop_ev = threading.Event()
        self.failure = None

    def connect(self):
        from busclient import BusClient
        bus = self.soak.bus
        self.client = BusClient("127.0.0.1", bus.port, tls_ca=bus.ca_file,
                                server_name="localhost", timeout=5,
                                auth=("password", RAW_USER, RAW_PASS))
        self.connects += 1

    def drop(self):
        if self.client is not None:
            try:
                self.client.close()
            except Exception:
                pass
        self.client = None

    def alive(self):
        """False once the bus has closed the connection (it sends us nothing)."""
        sock = self.client.sock
        if sock.pending() if isinstance(sock, ssl.SSLSocket) else False:
            return False
        r, _, _ = select.select([sock], [], [], 0)
        if not r:
            return True
        try:
            sock.settimeout(0.05)
            return bool(sock.recv(4096))
        except (socket.timeout, ssl.SSLWantReadError):
            return True
        except (OSError, ssl.SSLError):
            return False

    def publish(self, topic, tag, seq):
        payload = make_payload(tag, seq, self.soak.a.payload)
        image = tag == "r" and seq % 50 == 1   # an image now and then: the cache works
        self.client.publish(DOWN_FEED, topic, [(None, payload)], is_image=image)

    def run(self):
        try:
            self._run()
        except Exception as e:
            self.failure = "rawpub: %s: %s" % (type(e).__name__, e)

    def _run(self):
        interval = 1.0 / self.rate if self.rate > 0 else None
        due = time.monotonic()
        n = 0
        while not self.stop_ev.is_set():
            if self.client is None or not self.alive():
                self.drop()
                try:
                    self.connect()
                except (OSError, ssl.SSLError):
                    self.client = None
                    time.sleep(0.1)
                    continue
            if interval is None:
                time.sleep(0.1)
                continue
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            elif delay < -1.0:
                due = time.monotonic()
            due += interval
            topic = self.topics[n % len(self.topics)]
            n += 1
            try:
                self.publish(topic, "r", self.seq[topic] + 1)
            except (OSError, ssl.SSLError):
                self.send_failures += 1
                self.drop()
                continue
            self.seq[topic] += 1
            self.sent += 1

    def stop(self):
        self.stop_ev.set()


class BusLog:
    """Incremental reader of the test bus's JSON event log."""

    def __init__(self, path):
        self.path = path
        self.pos = 0
        self.partial = b""
        self.up = {}            # (tag, seq) -> bus time of receipt
        self.up_order = {}      # tag -> seqs in order of receipt
        self.up_dups = 0
        self.up_unknown = 0     # soak-up data from a user other than the gateway
        self.raw_recv = 0       # raw publisher's messages the bus read
        self.fwd = {}           # topic -> {seq: bus time} forwarded to the gateway
        self.fwd_dups = 0
        self.sync_up = set()
        self.heartbeats = 0
        self.listens = []
        self.gw_logins = []
        self.gw_closes = []     # (time, reason)
        self.errors = []

    def poll(self):
        try:
            with open(self.path, "rb") as f:
                f.seek(self.pos)
                data = f.read()
        except FileNotFoundError:
            return
        self.pos += len(data)
        data = self.partial + data
        lines = data.split(b"\n")
        self.partial = lines.pop()
        for line in lines:
            if line:
                self.line(line)

    def line(self, line):
        if b'"event": "recv"' in line:
            if b'"MulticastData"' not in line:
                return
            r = json.loads(line)
            f = r["fields"]
            user = r.get("user")
            if user == RAW_USER:
                if b'"data_hex": "7220' in line:     # "r " (not the final sync)
                    self.raw_recv += 1
                return
            if f["feed"] != UP_FEED:
                return
            if user != GW_USER:
                self.up_unknown += 1
                return
            for p in f["data_packets"] or []:
                tag, seq = parse_payload(bytes.fromhex(p["data_hex"]))
                if tag == "sync":
                    self.sync_up.add(seq)
                    continue
                if (tag, seq) in self.up:
                    self.up_dups += 1
                    continue
                self.up[(tag, seq)] = r["t"]
                self.up_order.setdefault(tag, []).append(seq)
        elif b'"event": "send"' in line:
            if b'"ForwardedMulticastData"' not in line or b'"user": "gw"' not in line:
                return
            if b'"feed": "__admin__"' in line:
                self.heartbeats += 1
                return
            r = json.loads(line)
            f = r["fields"]
            if r.get("user") != GW_USER or f["feed"] != DOWN_FEED:
                return
            for p in f["data_packets"] or []:
                tag, seq = parse_payload(bytes.fromhex(p["data_hex"]))
                if tag != "r":
                    continue
                d = self.fwd.setdefault(f["topic"], {})
                if seq in d:
                    self.fwd_dups += 1
                else:
                    d[seq] = r["t"]
        else:
            r = json.loads(line)
            ev = r["event"]
            if ev == "listen":
                self.listens.append(r["t"])
            elif ev == "login" and r.get("user") == GW_USER:
                self.gw_logins.append(r["t"])
            elif ev in ("close", "drop") and r.get("user") == GW_USER:
                self.gw_closes.append((r["t"], r.get("reason")))
            elif ev == "error":
                self.errors.append(r)

    def delivered_up(self):
        return len(self.up)

    def forwarded(self, topics=None):
        return sum(len(v) for t, v in self.fwd.items() if topics is None or t in topics)


# ----------------------------------------------------------------- the run

class Soak:
    def __init__(self, a):
        import gwtest
        from control import TestBus
        import buswire
        self.a = a
        self.gwtest = gwtest
        self.w = buswire
        self.dir = gwtest.tempdir("busgate-soak-")
        self.bus = TestBus(self.dir, heartbeat=a.heartbeat,
                           users={GW_USER: GW_PASS, RAW_USER: RAW_PASS})
        self.gw = None
        self.pubs, self.subs = [], []
        self.raw = None
        self.buslog = None
        self.restarts = []      # {"stop": t, "start": t}
        self.samples = []       # (elapsed, rss, fds)
        self.failures = []
        self.notes = []
        self.figures = {}
        self._sizes = {}
        self.sync_lock = threading.Lock()
        self.sync_got = set()
        self.t0 = None

    # helpers
    def wire_size(self, feed, topic, payload):
        key = (feed, topic, len(payload))
        n = self._sizes.get(key)
        if n is None:
            msg = self.w.MulticastData(feed, topic, False, [self.w.DataPacket(None, payload)])
            n = self._sizes[key] = len(self.w.encode_message(msg))
        return n

    def sync_seen(self, sub, topic, seq):
        with self.sync_lock:
            self.sync_got.add((sub, topic))

    def elapsed(self):
        return time.monotonic() - self.t0

    def log(self, msg):
        print(msg, flush=True)

    def daemon_alive(self):
        return self.gw.proc is not None and self.gw.proc.poll() is None

    def stats(self):
        c = LineClient(self.gw.socket_path, timeout=IO_TIMEOUT)
        try:
            return c.stats()
        finally:
            c.close()

    def wait(self, what, pred, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if pred():
                return True
            if not self.daemon_alive():
                raise RuntimeError("busgated exited (%s) while waiting for %s"
                                   % (self.gw.proc.returncode if self.gw.proc else "?", what))
            time.sleep(0.05)
        raise TimeoutError("timed out waiting for %s" % what)

    def bus_state(self):
        return self.stats().get("bus_state", "?")

    # phases
    def start(self):
        a = self.a
        self.bus.start()
        self.buslog = BusLog(self.bus.log_path)
        cfg = {
            "bus": {"heartbeat": {"timeout": a.heartbeat_timeout}},
            "router": {"busdown_queue": a.busdown_queue},
            "log": {"level": "info"},
        }
        self.gw = self.gwtest.Gateway(self.dir, self.bus, username=GW_USER,
                                      password=GW_PASS, config=cfg)
        self.gw.start()
        self.wait("the bus link", lambda: self.bus_state() == "up", IO_TIMEOUT)
        self.pid = self.gw.proc.pid
        up_topics = ["u%d" % i for i in range(a.topics)]
        self.down_topics = ["d%d" % i for i in range(a.topics)]
        for i in range(a.subscribers):
            # every subscriber skips one topic, so topics have different fan-outs
            topics = [t for j, t in enumerate(self.down_topics)
                      if a.topics == 1 or j != i % a.topics]
            self.subs.append(Subscriber(self, i, topics))
        for s in self.subs:
            s.start()
        for s in self.subs:
            if not s.ready.wait(IO_TIMEOUT):
                raise TimeoutError("sub%d: SUB replies: %s" % (s.idx, s.errors))
        for i in range(a.publishers):
            self.pubs.append(Publisher(self, i, a.rate / a.publishers, up_topics))
        time.sleep(0.5)    # the upstream subscriptions reach the bus
        self.fds_start = proc_fds(self.pid)
        self.rss_start = proc_status(self.pid, "VmRSS")
        self.raw = RawPublisher(self, a.bus_rate, self.down_topics)
        self.t0 = time.monotonic()
        self.raw.start()
        for p in self.pubs:
            p.start()
        self.log("soak: busgated pid %d, bus port %d, %d publishers at %g msg/s, "
                 "bus-side %g msg/s, %d subscribers, %d topics each way, restart every %gs "
                 "(%gs outage), %gs; work dir %s"
                 % (self.pid, self.bus.port, a.publishers, a.rate, a.bus_rate,
                    a.subscribers, a.topics, a.restart_every, a.outage, a.duration, self.dir))
        self.log("soak: start: RSS %s, %d fds (%s)"
                 % (mib(self.rss_start), len(self.fds_start), fd_kinds(self.fds_start)))

    def restart_bus(self):
        r = {"stop": now()}
        self.bus.stop()
        r["stopped"] = now()
        time.sleep(self.a.outage)
        r["start"] = now()
        self.bus.start()
        self.restarts.append(r)

    def status(self):
        self.buslog.poll()
        st = {}
        try:
            st = self.stats()
        except Exception as e:
            st = {"bus_state": "STATS failed: %s" % e}
        rss = proc_status(self.pid, "VmRSS")
        nfds = len(proc_fds(self.pid))
        el = self.elapsed()
        self.samples.append((el, rss, nfds))
        ok = sum(len(p.ok) for p in self.pubs)
        err = sum(len(p.err) for p in self.pubs)
        exp = sum(self.buslog.forwarded(s.topics) for s in self.subs)
        got = sum(sum(len(v) for v in s.got.values()) for s in self.subs)
        self.log("t=%4.0fs restarts=%d bus=%-11s | up: pub %d +OK %d -ERR %d delivered %d "
                 "| down: sent %d fwd %d recv %d/%d | RSS %s fds %d lost %sB queued %s"
                 % (el, len(self.restarts), st.get("bus_state", "?"), ok + err, ok, err,
                    self.buslog.delivered_up(), self.raw.sent, self.buslog.forwarded(),
                    got, exp, mib(rss), nfds, st.get("bus_bytes_lost", "?"),
                    st.get("busdown_queued", "?")))

    def run(self):
        a = self.a
        next_status = a.interval
        next_restart = a.restart_every if a.restart_every > 0 else None
        # no restart so close to the end that the link has no time to recover
        margin = a.outage + 3 + max(2.0, a.heartbeat * 3)
        mid_done = False
        while True:
            el = self.elapsed()
            if el >= a.duration:
                break
            if not self.daemon_alive():
                self.failures.append("busgated exited with status %s during the run"
                                     % self.gw.proc.returncode)
                return False
            for t in self.pubs + self.subs + [self.raw]:
                if t.failure:
                    self.failures.append(t.failure)
                    return False
            if next_restart is not None and el >= next_restart:
                next_restart += a.restart_every
                if el + margin < a.duration:
                    self.restart_bus()
            if el >= next_status:
                next_status += a.interval
                self.status()
            if not mid_done and el >= a.duration / 2:
                mid_done = True
                self.rss_mid = proc_status(self.pid, "VmRSS")
            self.buslog.poll()
            time.sleep(0.1)
        return True

    def drain(self):
        """Stop the traffic and wait until everything in flight has landed."""
        for p in self.pubs:
            p.stop()
        self.raw.stop()
        for t in self.pubs + [self.raw]:
            t.join(IO_TIMEOUT)
        self.wait("the link up with empty queues", lambda: self._quiet(self.stats()), 30)
        # a publish after all the others: once the bus has it, it has the rest
        c = LineClient(self.gw.socket_path)
        try:
            payload = make_payload("sync", 1, self.a.payload)
            c.send(b"PUB %s u0 delta %d\n%s\n" % (UP_FEED.encode(), len(payload), payload))
            line = c.readline()
            while line.startswith("BUS "):
                line = c.readline()
            if line != "+OK":
                raise RuntimeError("sync publish answered %r" % line)
        finally:
            c.close()

        def up_synced():
            self.buslog.poll()
            return 1 in self.buslog.sync_up
        self.wait("the sync publish on the bus", up_synced, 30)
        # and one bus-side message per topic after the raw publisher's last
        # (the bus reads the login first, then the messages, in order)
        if self.a.bus_rate > 0:
            self.raw.drop()
            self.raw.connect()
            want = {(s.idx, t) for s in self.subs for t in s.topics}
            for attempt in range(1, 6):
                for t in self.down_topics:
                    self.raw.publish(t, "sync", attempt)
                try:
                    self.wait("the bus-side sync messages at every subscriber",
                              lambda: want <= self.sync_got, 5)
                    break
                except TimeoutError:
                    if attempt == 5:
                        raise
            self.raw.drop()
        self.buslog.poll()

    @staticmethod
    def _quiet(st):
        return (st.get("bus_state") == "up" and st.get("busdown_queued") == "0"
                and st.get("bus_output_queued") == "0")

    def finish(self):
        """Final figures while the daemon still runs, then stop everything."""
        time.sleep(0.5)     # closed STATS sessions are gone
        self.rss_end = proc_status(self.pid, "VmRSS")
        self.hwm = proc_status(self.pid, "VmHWM")
        self.fds_end = proc_fds(self.pid)
        self.final_stats = self.stats()
        for s in self.subs:
            s.close()
        for p in self.pubs:
            p.client.close()
        try:
            self.gw.stop()
            self.clean_exit = True
        except AssertionError as e:
            self.clean_exit = False
            self.failures.append("busgated did not stop cleanly: %s" % str(e)[:2000])
        self.bus.stop()

    def abort(self):
        for t in self.pubs + [self.raw]:
            if t is not None:
                t.stop()
        for s in self.subs:
            s.close()
        if self.gw is not None:
            self.gw.kill()
        self.bus.stop()

    # --------------------------------------------------------- accounting

    def inflight_window(self, t):
        """The index of the bus stop a publish +OK'd at t was in flight at:
        from the +OK of the last publish the bus read before that stop (or
        0.1 s before SIGTERM, if earlier) until sub0 saw the link down."""
        for i, r in enumerate(self.restarts):
            start = min(r["stop"] - 0.1, r.get("last_read_ok", r["stop"]) - 0.005)
            end = r.get("down_seen", r["stopped"]) + 0.05
            if start <= t <= end:
                return i
        return None

    def last_reads(self, ok):
        """For each restart, the +OK time of the last publish the bus read
        before it stopped (the bus may lag behind the daemon under load)."""
        got = sorted((bt, k) for k, bt in self.buslog.up.items() if k in ok)
        times = [bt for bt, _ in got]
        for r in self.restarts:
            j = bisect.bisect_right(times, r.get("bus_dropped", r["stopped"]))
            lo = max(0, j - 2000)
            if j > lo:
                r["last_read_ok"] = max(ok[k][0] for _, k in got[lo:j])

    def restart_window(self, t):
        """The index of the restart whose outage t falls into, or None: from
        2 s before the bus was stopped until the link was up again."""
        for i, r in enumerate(self.restarts):
            if r["stop"] - 2.0 <= t <= r.get("up", r["start"] + 10):
                return i
        return None

    def link_timeline(self):
        """When the link came back after each restart (sub0's BUS events)."""
        ev = self.subs[0].events if self.subs else []
        for r in self.restarts:
            for t, line in ev:
                if t >= r["start"] and line == "BUS up":
                    r["up"] = t
                    break
            for t, line in ev:
                if t >= r["stop"] and line.startswith("BUS down"):
                    r["down_seen"] = t
                    break
            for t, _ in self.buslog.gw_closes:
                if r["stop"] <= t <= r["stopped"] + 1:
                    r["bus_dropped"] = t
                    break

    def daemon_log_losses(self):
        """The daemon's own words about lost data."""
        unsent = unacked = held = 0
        lines = []
        for line in self.gw.log().splitlines():
            if "link lost with" in line:
                w = line.split()
                try:
                    unsent += int(w[w.index("with") + 1])
                    unacked += int(w[w.index("(and") + 1])
                except (ValueError, IndexError):
                    pass
                lines.append(line)
            elif "held for an unconfirmed link discarded" in line or \
                    "could not be sent" in line or "queue unreadable" in line:
                lines.append(line)
                if "discarded" in line:
                    held += 1
        return unsent, unacked, held, lines

    def report(self):
        a = self.a
        bl = self.buslog
        st = self.final_stats
        self.link_timeline()
        fail = self.failures
        out = self.log
        out("")
        out("=" * 78)
        out("soak summary: %.0f s, %d bus restarts, busgated pid %d"
            % (self.elapsed_end, len(self.restarts), self.pid))

        # ---- up: local publishers -> bus
        ok = {(p.tag, s): v for p in self.pubs for s, v in p.ok.items()}
        err = {(p.tag, s): v for p in self.pubs for s, v in p.err.items()}
        other = [(p.tag,) + e for p in self.pubs for e in p.other_err]
        delivered = set(bl.up)
        missing = sorted(set(ok) - delivered, key=lambda k: ok[k][0])
        err_sent = sorted(set(err) & delivered)
        unknown = sorted(delivered - set(ok) - set(err))
        missing_bytes = sum(ok[k][1] for k in missing)
        bytes_lost = int(st.get("bus_bytes_lost", 0))
        busdown_lost = int(st.get("busdown_lost", 0))
        msg_size = max((v[1] for v in ok.values()), default=0)
        counted = bytes_lost + busdown_lost * msg_size
        unsent, unacked, held_drops, loss_lines = self.daemon_log_losses()
        out("")
        out("local -> bus (%d publishers, %d topics)" % (len(self.pubs), a.topics))
        out("  published              %8d" % (len(ok) + len(err) + len(other)))
        out("  answered +OK           %8d" % len(ok))
        out("  answered -ERR bus-down %8d" % len(err))
        out("  other -ERR             %8d" % len(other))
        out("  delivered to the bus   %8d  (bus log; %d duplicates)" % (len(delivered), bl.up_dups))
        out("  +OK but not delivered  %8d  (%d bytes on the wire)" % (len(missing), missing_bytes))
        out("  daemon counted lost    %8d bytes (STATS bus_bytes_lost) + %d messages (busdown_lost)"
            % (bytes_lost, busdown_lost))
        out("  daemon log: %d bytes unsent at link loss (counted), %d bytes not acknowledged by "
            "the bus (TLS record bytes, logged only), %d held-data discards"
            % (unsent, unacked, held_drops))
        # Each missing message belongs to a bus stop: +OK'd from just before
        # the stop until the daemon saw the link go down. Some of those the
        # daemon still had queued (it counts them, bus_bytes_lost); the rest
        # it had written to the socket and the bus's TCP had acknowledged, but
        # the stopping bus never read them. The v3 protocol has no
        # acknowledgement, so no client can know about those: they are
        # reported as "in flight", and fail the run only with --strict.
        self.last_reads(ok)
        by_restart, stray = {}, []
        for k in missing:
            i = self.inflight_window(ok[k][0])
            if i is None:
                stray.append(k)
            else:
                by_restart.setdefault(i, []).append(k)
        for i, ks in sorted(by_restart.items()):
            r = self.restarts[i]
            first, last = ok[ks[0]][0], ok[ks[-1]][0]
            read_end = r.get("bus_dropped")
            out("    restart %d: %d missing, +OK'd %+.4f..%+.4f s after SIGTERM to the bus "
                "(bus stopped reading the link at %s, daemon saw it down at %+.4f s): %s"
                % (i + 1, len(ks), first - r["stop"], last - r["stop"],
                   "%+.4f s" % (read_end - r["stop"]) if read_end else "?",
                   r.get("down_seen", float("nan")) - r["stop"],
                   " ".join("%s#%d" % k for k in ks[:8]) + (" ..." if len(ks) > 8 else "")))
        if stray:
            out("    outside any bus stop: %d missing: %s" % (
                len(stray), " ".join("%s#%d" % k for k in stray[:8])))
        inflight_bytes = missing_bytes - sum(ok[k][1] for k in stray)
        uncounted = max(0, inflight_bytes - counted)
        self.figures.update(up_ok=len(ok), up_err=len(err), up_delivered=len(delivered),
                            up_missing=len(missing), up_missing_bytes=missing_bytes,
                            up_counted=counted, up_uncounted=uncounted)
        order_bad = 0
        for tag, seqs in bl.up_order.items():
            order_bad += sum(1 for x, y in zip(seqs, seqs[1:]) if y < x)
        if other:
            fail.append("%d publishes answered with an unexpected -ERR, e.g. %s" % (len(other), other[0]))
        if err_sent:
            fail.append("%d publishes answered -ERR bus-down reached the bus anyway, e.g. %s#%d"
                        % ((len(err_sent),) + err_sent[0]))
        if unknown:
            fail.append("%d messages on the bus that no publisher had answered for, e.g. %s#%d"
                        % ((len(unknown),) + unknown[0]))
        if bl.up_dups:
            fail.append("%d publishes reached the bus twice" % bl.up_dups)
        if order_bad:
            fail.append("%d publishes reached the bus out of their session's order" % order_bad)
        if stray:
            fail.append("%d +OK'd publishes never reached the bus although the bus was not "
                        "being stopped, e.g. %s#%d" % ((len(stray),) + stray[0]))
            out("  => LOST while the link was up: %d messages" % len(stray))
        if uncounted:
            what = ("%d bytes of +OK'd publishes were in flight when the bus stopped: written "
                    "to the link but never read by the bus, and not counted by the daemon "
                    "(bus_bytes_lost %d, busdown_lost %d)" % (uncounted, bytes_lost, busdown_lost))
            if unacked:
                what += "; the daemon logged %d TLS bytes of them as not acknowledged by the bus" % unacked
            out("  => NOT COUNTED: " + what)
            if a.strict:
                fail.append(what)
            else:
                self.notes.append(what + " (no failure without --strict: the v3 protocol has no "
                                  "acknowledgement, so no client can count these)")
        elif missing and not stray:
            out("  => every +OK'd publish was delivered or counted lost by the daemon")
        elif not missing:
            out("  => every +OK'd publish was delivered")
        if counted > missing_bytes:
            out("  (the daemon counts %d bytes more than the missing messages: link-level "
                "bytes such as subscription requests)" % (counted - missing_bytes))

        # ---- down: bus -> local subscribers
        out("")
        out("bus -> local (raw bus client %s, %d subscribers)" % (RAW_USER, len(self.subs)))
        out("  sent by the raw client %8d  (%d connections, %d sends failed at a restart)"
            % (self.raw.sent, self.raw.connects, self.raw.send_failures))
        out("  read by the bus        %8d" % bl.raw_recv)
        out("  forwarded to gateway   %8d  (bus log; %d duplicates; %d read before the gateway "
            "had subscribed again after a restart)"
            % (bl.forwarded(), bl.fwd_dups, bl.raw_recv - bl.forwarded()))
        dn_missing_total = dn_outside = 0
        for s in self.subs:
            exp = {t: bl.fwd.get(t, {}) for t in s.topics}
            n_exp = sum(len(v) for v in exp.values())
            n_got = sum(len(v) for v in s.got.values())
            extra = sum(len(s.got[t] - set(exp[t])) for t in s.topics)
            miss = [(t, q, exp[t][q]) for t in s.topics for q in set(exp[t]) - s.got[t]]
            outside = [m for m in miss if self.restart_window(m[2]) is None]
            dn_missing_total += len(miss)
            dn_outside += len(outside)
            out("  sub%d (%s): expected %d received %d missing %d (%d outside restarts) "
                "extra %d dup %d reordered %d images %d stale %d"
                % (s.idx, ",".join(s.topics), n_exp, n_got, len(miss), len(outside), extra,
                   s.dups, s.reordered, s.images, s.stale))
            if extra:
                fail.append("sub%d received %d messages the bus never forwarded" % (s.idx, extra))
            if s.dups:
                fail.append("sub%d received %d duplicates" % (s.idx, s.dups))
            if s.reordered:
                fail.append("sub%d received %d messages out of order" % (s.idx, s.reordered))
            if outside:
                fail.append("sub%d missed %d messages forwarded while the link was stable, e.g. %s#%d"
                            % (s.idx, len(outside), outside[0][0], outside[0][1]))
            if s.errors:
                fail.append("sub%d got unexpected lines: %s" % (s.idx, s.errors[:3]))
        # fan-out consistency: all subscribers of a topic saw the same messages
        for t in self.down_topics:
            sets = [(s.idx, s.got[t]) for s in self.subs if t in s.topics]
            for (i, x), (j, y) in zip(sets, sets[1:]):
                if x != y:
                    fail.append("topic %s: sub%d and sub%d received different messages "
                                "(%d vs %d, %d differ)" % (t, i, j, len(x), len(y), len(x ^ y)))
        if dn_missing_total:
            out("  => %d deliveries missing, all in restart windows (forwarded by a bus "
                "that was being stopped)" % dn_missing_total if not dn_outside else
                "  => %d deliveries missing, %d of them outside restart windows"
                % (dn_missing_total, dn_outside))
        else:
            out("  => every message the bus forwarded reached every subscriber of its topic")

        # ---- restarts
        out("")
        out("bus restarts (link down -> up again, from sub0's BUS events):")
        for i, r in enumerate(self.restarts):
            out("  %2d  at %6.1f s  down seen %+.3f s  up again %s"
                % (i + 1, r["stop"] - self.t0_wall,
                   r.get("down_seen", float("nan")) - r["stop"],
                   "%+.3f s after the restart" % (r["up"] - r["start"]) if "up" in r
                   else "NEVER"))
            if "up" not in r:
                fail.append("the link did not come back after restart %d" % (i + 1))
        reconnects = int(st.get("bus_reconnects", 0))
        out("  STATS bus_connects %s bus_reconnects %s bus_heartbeat_timeouts %s heartbeats_in %s"
            % (st.get("bus_connects"), reconnects, st.get("bus_heartbeat_timeouts"),
               st.get("bus_heartbeats_in")))
        if reconnects < len(self.restarts):
            fail.append("%d restarts but bus_reconnects is %d" % (len(self.restarts), reconnects))

        # ---- memory and descriptors
        rss = [s[1] for s in self.samples] + [self.rss_start, self.rss_end]
        out("")
        out("daemon memory: RSS start %s, middle %s, end %s, max sampled %s, VmHWM %s"
            % (mib(self.rss_start), mib(getattr(self, "rss_mid", 0)), mib(self.rss_end),
               mib(max(rss)), mib(self.hwm)))
        if getattr(self.gwtest, "BUSGATED_IS_SANITIZED", False):
            out("  (a sanitizer build: RSS grows with ASan's quarantine of freed memory, up to "
                "256 MiB by default; ASAN_OPTIONS=quarantine_size_mb=4 for meaningful figures)")
        out("  RSS over time: " + " ".join("%.0fs:%.1f" % (e, r / 1048576.0)
                                          for e, r, _ in self.samples))
        nf0, nf1 = len(self.fds_start), len(self.fds_end)
        out("daemon descriptors: start %d (%s), end %d (%s), max sampled %d"
            % (nf0, fd_kinds(self.fds_start), nf1, fd_kinds(self.fds_end),
               max([n for _, _, n in self.samples] + [nf0, nf1])))
        if nf1 > nf0:
            new = {fd: t for fd, t in self.fds_end.items() if self.fds_start.get(fd) != t}
            fail.append("descriptor leak: %d open at the start, %d at the end (new: %s)"
                        % (nf0, nf1, sorted(new.items())[:10]))
        sessions = int(st.get("sessions", -1))
        want_sessions = len(self.pubs) + len(self.subs) + 1
        if sessions != want_sessions:
            fail.append("STATS sessions %d at the end, expected %d" % (sessions, want_sessions))
        if int(st.get("slow_consumers", 0)):
            fail.append("%s slow-consumer closures" % st["slow_consumers"])
        if loss_lines:
            out("")
            out("daemon log on losses:")
            for line in loss_lines[:20]:
                out("  " + line)
        if bl.errors:
            out("test bus errors: %s" % bl.errors[:3])

        out("")
        out("busgated STATS at the end:")
        for k, v in st.items():
            if k == "session":
                for s in v:
                    out("  STAT session %s" % s)
            else:
                out("  STAT %s %s" % (k, v))
        out("")
        out("clean exit: %s" % ("yes" if self.clean_exit else "NO"))
        return not fail


def main(argv=None):
    a = parse_args(sys.argv[1:] if argv is None else argv)
    setup_paths(a)
    busgated = os.environ["BUSGATED"]
    if not os.access(busgated, os.X_OK):
        print("soak: %s not built" % busgated, file=sys.stderr)
        return 2
    soak = Soak(a)
    ok = False
    try:
        soak.start()
        soak.t0_wall = now() - soak.elapsed()
        ran = soak.run()
        soak.elapsed_end = soak.elapsed()
        if ran:
            soak.log("soak: traffic stopped after %.0f s; draining" % soak.elapsed_end)
            soak.drain()
            soak.finish()
            ok = soak.report()
        else:
            soak.log("soak: ABORTED after %.0f s: %s" % (soak.elapsed_end, "; ".join(soak.failures)))
    except Exception as e:
        soak.log("soak: ERROR: %s: %s" % (type(e).__name__, e))
        soak.failures.append("%s: %s" % (type(e).__name__, e))
    if not ok:
        if soak.gw is not None and soak.gw.proc is not None:
            if soak.gw.proc.poll() is not None and not any("exited" in f for f in soak.failures):
                soak.failures.append("busgated exited with status %s" % soak.gw.proc.returncode)
            soak.log("busgated log (end):\n" + soak.gw.log()[-4000:])
        soak.abort()
    for n in soak.notes:
        soak.log("NOTE: " + n)
    if soak.failures:
        soak.log("")
        soak.log("SOAK FAILED:")
        for f in soak.failures:
            soak.log("  - " + f)
    else:
        soak.log("SOAK PASSED")
    if ok and not a.keep:
        shutil.rmtree(soak.dir, ignore_errors=True)
    else:
        soak.log("work directory: %s" % soak.dir)
    return 0 if ok and not soak.failures else 1


if __name__ == "__main__":
    sys.exit(main())
