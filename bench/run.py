#!/usr/bin/env python3
"""busgate benchmark driver (make bench).

Starts the bus load source (bussrc), a busgated with a generated config
(plain TCP, auth none, socket in a temp dir, generous limits), the local
load clients (lpclient) and the raw Unix-socket baseline (rawfanout), runs
each scenario for a few seconds, and prints every figure beside the
baseline measured in the same run, with PASS/MISS against the targets.
When nats-server is installed, every fan-out and publish case also runs
through it (bench/natsclient in the roles of bussrc and lpclient) and the
rows print gateway / nats-server as well as gateway / raw.

    python3 bench/run.py --builddir BUILD [--write bench/RESULTS.md]
                         [--duration 3] [--only fanout,publish,latency,memory]

Without a working busgated (not built yet) only the baselines are run.
Python standard library only.
"""

import argparse
import datetime
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

SCENARIOS = ("fanout", "publish", "latency", "memory")
LIB_TARGET = 0.9        # libbusgate subscribers against the hand-written ones
NATS_TARGET = 3.0       # gateway >= 3 x nats-server, fan-out and publish at 16 B and 256 B
NATS_SUBS = (1, 100, 1000)  # fan-out rows (one topic) with the nats-server target
GW_CPU_TARGET = 0.12    # gateway CPU-s per million messages, 1 subscriber, 16 B
TOPICS_RATE_TARGET = 4e6    # msg/s, 1000 topics x 1 subscriber, 16 B

# Targets (DESIGN.md quality bars and the benchmark issue).
FANOUT_TARGET = 0.5         # x raw, at 16 B and 256 B with 100 and 1000 subscribers
PUBLISH_TARGET = 0.5        # x raw
LATENCY_TARGET = 2.0        # added p99 <= 2 x the direct path's p99
SESSION_RSS_TARGET = 8192   # bytes per idle session
SESSIONS_TARGET = 10000


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def parse_result(text):
    """The k=v pairs of the last 'RESULT ...' (or 'READY ...') line."""
    for line in reversed(text.splitlines()):
        if line.startswith("RESULT ") or line.startswith("READY "):
            out = {}
            for word in line.split()[1:]:
                k, _, v = word.partition("=")
                try:
                    out[k] = float(v) if "." in v else int(v)
                except ValueError:
                    out[k] = v
            return out
    return None


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def proc_status(pid, key):
    """A 'kB' field of /proc/PID/status in bytes (VmRSS, VmHWM)."""
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def cpu_speeds(rounds=3, n=1200000):
    """ms a fixed loop takes on each CPU (the median of rounds). On a VM the
    host may give the vCPUs unequal time: on one seen here the same loop
    ran 2.4x slower on cpu0 than on cpu1 for minutes, and a row's rate
    then depended on which CPU the scheduler put busgated on."""
    mask = os.sched_getaffinity(0)
    out = {}
    try:
        for cpu in sorted(mask):
            os.sched_setaffinity(0, {cpu})
            times = []
            for _ in range(rounds):
                t = time.perf_counter()
                x = 0
                for i in range(n):
                    x += i
                times.append((time.perf_counter() - t) * 1000)
            out[cpu] = sorted(times)[len(times) // 2]
    finally:
        os.sched_setaffinity(0, mask)
    return out


def speeds_text(sp):
    return ", ".join("cpu%d %.0f" % (c, ms) for c, ms in sorted(sp.items()))


def uneven(sp):
    """Whether the CPUs differ by over 25% (the host's doing: see cpu_speeds)."""
    return bool(sp) and max(sp.values()) > 1.25 * min(sp.values())


def machine():
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        with open("/proc/meminfo") as f:
            mem = int(f.readline().split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        mem = 0
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": model,
        "kernel": platform.release(),
        "mem_mib": mem,
        "load": os.getloadavg(),
        "speeds": cpu_speeds(),
    }


def git_rev(srcdir):
    try:
        return subprocess.run(["git", "-C", srcdir, "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=5).stdout.strip() or "?"
    except (OSError, subprocess.SubprocessError):
        return "?"


class Proc:
    """A background process with its output in a file."""

    def __init__(self, argv, logpath, nofile=False):
        self.logpath = logpath
        self.logf = open(logpath, "wb")
        self.proc = subprocess.Popen(argv, stdout=self.logf, stderr=subprocess.STDOUT,
                                     preexec_fn=raise_nofile if nofile else None)
        self.pid = self.proc.pid

    def alive(self):
        return self.proc.poll() is None

    def stop(self, timeout=10):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.logf.close()
        return self.proc.returncode

    def output(self):
        try:
            with open(self.logpath, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""


class Bench:
    def __init__(self, args):
        self.a = args
        self.tmp = tempfile.mkdtemp(prefix="busgate-bench-")
        self.bin = {p: os.path.join(args.builddir, "bench", p)
                    for p in ("bussrc", "lpclient", "rawfanout", "natsclient")}
        self.busgated = args.busgated or os.path.join(args.builddir, "src", "busgated")
        self.n = 0
        self.results = {}
        self.gateway_ok = None
        self.nats_ok = None
        self.nats_note = ""
        self.other = []             # other load of every measured run
        self.checked = 0            # runs after a check of the CPUs' speeds
        self.uneven = []            # those whose check found them unequal
        self.profiles = []          # (case, perf report lines) with --perf

    # ---- plumbing ----

    def path(self, name):
        self.n += 1
        return os.path.join(self.tmp, "%03d-%s" % (self.n, name))

    def bussrc(self, *extra):
        ctl = self.path("ctl")
        port_file = self.path("port")
        p = Proc([self.bin["bussrc"], "--ctl", ctl, "--port-file", port_file,
                  "--max-seconds", "300"] + [str(x) for x in extra],
                 self.path("bussrc.log"), nofile=True)
        deadline = time.monotonic() + 10
        while not os.path.exists(port_file):
            if not p.alive() or time.monotonic() > deadline:
                raise RuntimeError("bussrc did not start:\n" + p.output())
            time.sleep(0.01)
        with open(port_file) as f:
            p.port = int(f.read())
        p.ctl = ctl
        return p

    def config(self, port, sock):
        cfgpath = self.path("busgated.yaml")
        with open(cfgpath, "w") as f:
            f.write("""bus:
  host: 127.0.0.1
  port: %d
  tls: false
  auth: none
  reconnect: { min: 50ms, max: 1s, reset_after: 5s }
  heartbeat: { timeout: 0 }
listen:
  path: "%s"
  mode: "0600"
  max_sessions: 20000
  max_subscriptions: 10000
  max_output: %dMiB
%slog:
  level: warning
daemon:
  shutdown_grace: 1s
""" % (port, sock, self.a.max_output_mib,
       # only when asked: a daemon from before the setting still starts
       "  socket_buffer: %dKiB\n" % self.a.socket_buffer_kib if self.a.socket_buffer_kib
       else ""))
        return cfgpath

    def gateway(self, src):
        sock = self.path("busgate.sock")
        cfg = self.config(src.port, sock)
        g = Proc([self.busgated, "-c", cfg], self.path("busgated.log"), nofile=True)
        g.sock = sock
        deadline = time.monotonic() + 15
        while True:
            if not g.alive():
                raise RuntimeError("busgated exited %s:\n%s" % (g.proc.returncode, g.output()))
            if time.monotonic() > deadline:
                g.stop()
                raise RuntimeError("busgated socket never appeared:\n" + g.output())
            try:
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.settimeout(5)
                s.connect(sock)
                hello = s.recv(4096).decode("utf-8", "replace")
                s.close()
                if "bus=down" not in hello:
                    break
            except OSError:
                pass
            time.sleep(0.02)
        return g

    def client(self, prog, *args, timeout=180):
        """Run a measuring client (lpclient, natsclient) to its RESULT line."""
        argv = [self.bin[prog]] + [str(x) for x in args]
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                           preexec_fn=raise_nofile)
        res = parse_result(r.stdout)
        if r.returncode != 0 or res is None:
            raise RuntimeError("%s %s failed (%s):\n%s%s" % (
                prog, " ".join(argv[1:]), r.returncode, r.stdout[-2000:], r.stderr[-4000:]))
        res["stderr"] = r.stderr
        return res

    def lpclient(self, *args, timeout=180):
        return self.client("lpclient", *args, timeout=timeout)

    # ---- nats-server, the peer ----

    def nats_server(self):
        """A fresh nats-server on a free loopback port, limits for big fan-out."""
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cfg = self.path("nats.conf")
        with open(cfg, "w") as f:
            # max_pending: bytes queued for one client before it is dropped as
            # a slow consumer (the analogue of listen.max_output);
            # write_deadline: a loaded 2-core machine must not drop anyone.
            f.write("max_connections: 20000\nmax_payload: 1MB\nmax_pending: %dMB\n"
                    "write_deadline: \"60s\"\nping_interval: \"2m\"\n"
                    % self.a.max_output_mib)
        n = Proc([self.a.nats_server, "-a", "127.0.0.1", "-p", str(port), "-c", cfg],
                 self.path("nats-server.log"), nofile=True)
        n.port = port
        deadline = time.monotonic() + 10
        while True:
            if not n.alive():
                raise RuntimeError("nats-server exited %s:\n%s" % (
                    n.proc.returncode, n.output()[-2000:]))
            if time.monotonic() > deadline:
                n.stop()
                raise RuntimeError("nats-server never listened:\n" + n.output()[-2000:])
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                    if s.recv(4096).startswith(b"INFO "):
                        return n
            except OSError:
                pass
            time.sleep(0.02)

    def natsclient_bg(self, role, port, ctl, *args):
        """natsclient src or sink in the background (bussrc's roles)."""
        return Proc([self.bin["natsclient"], role, "--port", str(port), "--ctl", ctl,
                     "--max-seconds", "300"] + [str(x) for x in args],
                    self.path("nats-%s.log" % role), nofile=True)

    def check_nats(self):
        """Is nats-server installed and does it run here?"""
        if self.nats_ok is not None:
            return self.nats_ok
        self.nats_ok = False
        if self.a.no_nats:
            self.nats_note = "not asked for (--no-nats)"
        elif not self.a.nats_server or not os.access(self.a.nats_server, os.X_OK):
            self.nats_note = "nats-server not found (apt-get install nats-server)"
        else:
            try:
                self.nats_server().stop()
                self.nats_ok = True
                v = subprocess.run([self.a.nats_server, "--version"], capture_output=True,
                                   text=True, timeout=10).stdout.strip()
                self.nats_note = v or "nats-server"
            except (RuntimeError, OSError, subprocess.SubprocessError) as e:
                self.nats_note = "nats-server does not run here (see the log above)"
                log(str(e)[-1500:])
        if not self.nats_ok:
            log("nats-server columns skipped: " + self.nats_note)
        return self.nats_ok

    def nats_fanout_case(self, size, subs, topics):
        """bussrc -> busgated -> lpclient sub, with natsclient src -> nats-server ->
        natsclient sub: one publishing connection, the same window, subs
        connections in one process."""
        fanout = subs // topics
        window = max(1000, self.a.budget_mib * 1048576 // (size + 64))
        ctl = self.path("ctl")
        n = self.nats_server()
        src = None
        try:
            src = self.natsclient_bg("src", n.port, ctl, "--topics", topics, "--fanout", fanout,
                                     "--payload", size, "--window", window)
            res = self.client("natsclient", "sub", "--port", n.port, "-n", subs,
                              "--topics", topics, "--ctl", ctl, "--warmup", self.a.warmup,
                              "--duration", self.a.duration, "--cpu", "nats=%d" % n.pid,
                              "--cpu", "src=%d" % src.pid)
        finally:
            if src is not None and src.stop() not in (0, None):
                log("natsclient src: %s" % src.output()[-1500:])
            n.stop()
        res.update(payload=size, subs=subs, topics=topics, window=window)
        return res

    def nats_publish_case(self, size, pubs):
        """lpclient pub -> busgated -> bussrc, with natsclient pub -> nats-server ->
        natsclient sink (one connection subscribed to every publisher's topic)."""
        window = max(1000, self.a.budget_mib * 1048576 // (size + 64))
        ctl = self.path("ctl")
        n = self.nats_server()
        sink = None
        try:
            sink = self.natsclient_bg("sink", n.port, ctl, "--topics", pubs)
            res = self.client("natsclient", "pub", "--port", n.port, "-n", pubs,
                              "--topics", pubs, "--payload", size, "--window", window,
                              "--ctl", ctl, "--warmup", self.a.warmup,
                              "--duration", self.a.duration, "--cpu", "nats=%d" % n.pid,
                              "--cpu", "sink=%d" % sink.pid)
        finally:
            if sink is not None and sink.stop() not in (0, None):
                log("natsclient sink: %s" % sink.output()[-1500:])
            n.stop()
        res.update(payload=size, pubs=pubs, window=window)
        return res

    def rawfanout(self, *args):
        argv = [self.bin["rawfanout"], "--warmup", self.a.warmup,
                "--duration", self.a.duration] + [str(x) for x in args]
        r = subprocess.run([str(x) for x in argv], capture_output=True, text=True,
                           timeout=120, preexec_fn=raise_nofile)
        res = parse_result(r.stdout)
        if r.returncode != 0 or res is None:
            raise RuntimeError("rawfanout %s failed:\n%s%s" % (args, r.stdout, r.stderr))
        return res

    def perf_start(self, pid, name):
        """With --perf: sample busgated (perf record -g) over the measured window."""
        if not self.a.perf:
            return None
        data = self.path(name + ".perf.data")
        delay = float(self.a.warmup) + 1.0      # connections and warm-up first
        cmd = "sleep %s; exec perf record -q -F 997 -g -p %d -o %s -- sleep %s" % (
            delay, pid, data, self.a.duration)
        p = subprocess.Popen(["sh", "-c", cmd], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        return (p, data, name)

    def perf_end(self, handle):
        if handle is None:
            return
        p, data, name = handle
        try:
            p.wait(float(self.a.duration) + 30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        r = subprocess.run(["perf", "report", "-i", data, "--no-children", "--sort", "sym",
                            "--stdio", "-g", "none", "--percent-limit", "1.5"],
                           capture_output=True, text=True, timeout=120)
        top = [l.rstrip() for l in r.stdout.splitlines() if l.strip()[:1].isdigit()]
        self.profiles.append((name, top[:20]))
        log("perf %s:\n  %s" % (name, "\n  ".join(top[:20])))

    def checked_run(self, fn, *args):
        """One run, after a check of the CPUs' speeds (cpu_speeds)."""
        sp = cpu_speeds(rounds=1)
        self.checked += 1
        if uneven(sp):
            self.uneven.append("%s %s (%s)" % (fn.__name__, " ".join(map(str, args)),
                                               speeds_text(sp)))
        r = fn(*args)
        self.other.append(other_cores(r))
        return r

    def best(self, fn, *args):
        """The run with the highest rate of --repeat runs (noisy machines)."""
        runs = [self.checked_run(fn, *args) for _ in range(self.a.repeat)]
        return max(runs, key=lambda r: r["rate"])

    def best_in_turns(self, fn, *args):
        """A case with lpclient's hand-written clients and with libbusgate's,
        run in turns (hand, lib, hand, lib...): this machine's speed drifts
        over minutes, and both sides then sample the same ones. The best run
        of each; the lib's also keeps each turn's lib / hand ratio."""
        hand, lib = [], []
        for _ in range(self.a.repeat):
            hand.append(self.checked_run(fn, *args, False))
            lib.append(self.checked_run(fn, *args, True))
        best_hand = max(hand, key=lambda r: r["rate"])
        best_lib = dict(max(lib, key=lambda r: r["rate"]))
        best_lib["turns"] = [l["rate"] / h["rate"] if h["rate"] else 0
                             for h, l in zip(hand, lib)]
        return best_hand, best_lib

    def check_gateway(self):
        """Can busgated run here at all (built, has a main)?"""
        if self.gateway_ok is not None:
            return self.gateway_ok
        self.gateway_ok = False
        if not os.access(self.busgated, os.X_OK):
            log("busgated not found at %s: gateway figures skipped" % self.busgated)
            return False
        src = self.bussrc("--topics", 1)
        try:
            g = self.gateway(src)
            g.stop()
            self.gateway_ok = True
        except RuntimeError as e:
            log("busgated does not run: gateway figures skipped\n%s" % str(e)[-1500:])
        finally:
            src.stop()
        return self.gateway_ok

    # ---- scenarios ----

    def run_fanout(self):
        raw, rawp, rows, lib_rows, nats_rows = {}, {}, [], [], []
        for size in self.a.payloads:
            for n in sorted(set(self.a.subs + [1000])):
                log("raw fan-out: %d readers, %d B" % (n, size))
                raw[(size, n)] = self.best(self.rawfanout, "-n", n, "--payload", size)
                rawp[(size, n)] = self.best(self.rawfanout, "-n", n, "--payload", size,
                                            "--parse")
        self.results["raw"] = raw
        self.results["rawparse"] = rawp
        if not self.check_gateway():
            return
        for size in self.a.payloads:
            cases = [(n, 1) for n in self.a.subs] + [(1000, 1000)]
            for subs, topics in cases:
                log("gateway fan-out, hand-written and libbusgate subscribers in turns: "
                    "%d subscribers, %d topics, %d B" % (subs, topics, size))
                hand, lib = self.best_in_turns(self.fanout_case, size, subs, topics)
                rows.append(hand)
                lib_rows.append(lib)
                if self.check_nats():
                    log("nats-server fan-out: %d subscribers, %d topics, %d B"
                        % (subs, topics, size))
                    nats_rows.append(self.best(self.nats_fanout_case, size, subs, topics))
        self.results["fanout"] = rows
        self.results["fanout_lib"] = lib_rows
        self.results["fanout_nats"] = nats_rows

    def fanout_case(self, size, subs, topics, lib=False):
        fanout = subs // topics
        window = max(1000, self.a.budget_mib * 1048576 // (size + 64))
        src = self.bussrc("--topics", topics, "--fanout", fanout, "--payload", size,
                          "--window", window)
        g = prof = None
        try:
            g = self.gateway(src)
            prof = self.perf_start(g.pid, "fanout-%dB-%dsubs-%dtopics" % (size, subs, topics))
            res = self.lpclient("sub", "--socket", g.sock, "-n", subs, "--topics", topics,
                                "--ctl", src.ctl, "--warmup", self.a.warmup,
                                "--duration", self.a.duration, "--cpu", "gw=%d" % g.pid,
                                "--cpu", "src=%d" % src.pid, *(["--lib"] if lib else []))
            res["gw_hwm"] = proc_status(g.pid, "VmHWM")
        finally:
            self.perf_end(prof)
            if g is not None:
                g.stop()
            src.stop()
        res.update(payload=size, subs=subs, topics=topics, window=window)
        return res

    def run_publish(self):
        raw, rows, lib_rows, nats_rows = {}, [], [], []
        for size in self.a.payloads:
            log("raw publish bytes: %d B" % size)
            raw[size] = self.best(self.rawfanout, "-n", 1, "--payload", size, "--pub")
        self.results["rawpub"] = raw
        if not self.check_gateway():
            return
        for size in self.a.payloads:
            for pubs in self.a.pubs:
                log("gateway publish, hand-written and libbusgate publishers in turns: "
                    "%d publishers, %d B" % (pubs, size))
                hand, lib = self.best_in_turns(self.publish_case, size, pubs)
                rows.append(hand)
                lib_rows.append(lib)
                if self.check_nats():
                    log("nats-server publish: %d publishers, %d B" % (pubs, size))
                    nats_rows.append(self.best(self.nats_publish_case, size, pubs))
        self.results["publish"] = rows
        self.results["publish_lib"] = lib_rows
        self.results["publish_nats"] = nats_rows

    def publish_case(self, size, pubs, lib=False):
        src = self.bussrc("--topics", 1)
        g = prof = None
        try:
            g = self.gateway(src)
            prof = self.perf_start(g.pid, "publish-%dB-%dpubs" % (size, pubs))
            res = self.lpclient("pub", "--socket", g.sock, "-n", pubs, "--payload", size,
                                "--ctl", src.ctl, "--warmup", self.a.warmup,
                                "--duration", self.a.duration,
                                "--cpu", "gw=%d" % g.pid, "--cpu", "src=%d" % src.pid,
                                *(["--lib"] if lib else []))
        finally:
            self.perf_end(prof)
            if g is not None:
                g.stop()
            src.stop()
        res.update(payload=size, pubs=pubs)
        return res

    def run_latency(self):
        rows = []
        dur = max(float(self.a.duration), 3.0)
        for subs in self.a.lat_subs:
            log("latency, direct bus clients: %d subscribers at %d msg/s" % (subs, self.a.rate))
            src = self.bussrc("--topics", 1, "--payload", self.a.lat_payload, "--rate", self.a.rate,
                              "--subscribers", subs)
            try:
                direct = self.lpclient("bussub", "--port", src.port, "-n", subs, "--ctl", src.ctl,
                                       "--latency", "--warmup", 1, "--duration", dur,
                                       "--cpu", "src=%d" % src.pid)
            finally:
                src.stop()
            gw = None
            if self.check_gateway():
                log("latency, through busgated: %d subscribers at %d msg/s" % (subs, self.a.rate))
                src = self.bussrc("--topics", 1, "--payload", self.a.lat_payload,
                                  "--rate", self.a.rate)
                g = None
                try:
                    g = self.gateway(src)
                    gw = self.lpclient("sub", "--socket", g.sock, "-n", subs, "--ctl", src.ctl,
                                       "--latency", "--warmup", 1, "--duration", dur,
                                       "--cpu", "gw=%d" % g.pid, "--cpu", "src=%d" % src.pid)
                finally:
                    if g is not None:
                        g.stop()
                    src.stop()
            self.other += [other_cores(r) for r in (direct, gw) if r is not None]
            rows.append({"subs": subs, "direct": direct, "gw": gw})
        self.results["latency"] = rows

    def idle_sessions(self, src, n, subs_each=0):
        """Fresh gateway; RSS before and with n idle sessions (and subscriptions)."""
        g = self.gateway(src)
        try:
            time.sleep(0.5)
            rss0 = proc_status(g.pid, "VmRSS")
            argv = [self.bin["lpclient"], "idle", "--socket", g.sock, "-n", str(n),
                    "--subs", str(subs_each)]
            c = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, preexec_fn=raise_nofile)
            line = c.stdout.readline()
            ready = parse_result(line)
            time.sleep(0.5)
            rss1 = proc_status(g.pid, "VmRSS")
            c.stdin.close()
            c.wait(60)
            err = c.stderr.read()
            if ready is None:
                raise RuntimeError("lpclient idle -n %d failed:\n%s" % (n, err[-3000:]))
        finally:
            g.stop()
        return {"n": n, "subs_each": subs_each, "rss0": rss0, "rss1": rss1,
                "ready": ready, "stderr": err}

    def run_memory(self):
        if not self.check_gateway():
            return
        src = self.bussrc("--topics", 1)
        out = {}
        try:
            for n in (1000, self.a.sessions):
                log("memory: %d idle sessions" % n)
                out[n] = self.idle_sessions(src, n)
            log("memory: 10 sessions x 1000 subscriptions")
            out["subs"] = self.idle_sessions(src, 10, 1000)
        finally:
            src.stop()
        self.results["memory"] = out

    # ---- report ----

    def report(self, m_start, m_end, argv):
        L = []
        add = L.append
        a = self.a
        add("# busgate benchmark results")
        add("")
        add("- date: %s, commit %s" % (datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
                                      git_rev(a.srcdir)))
        add("- machine: nproc=%d, CPU \"%s\", kernel %s, %d MiB RAM" % (
            m_start["nproc"], m_start["cpu"], m_start["kernel"], m_start["mem_mib"]))
        add("- load average before / after: %.2f / %.2f (other work on the machine "
            "competes with the measured processes)" % (m_start["load"][0], m_end["load"][0]))
        add("- CPU speed check (the same loop on each CPU, ms, lower is faster): %s" %
            self.speeds_note(m_start["speeds"], m_end["speeds"]))
        add("- command: `%s`" % " ".join(argv))
        if self.other:
            worst = max(self.other)
            mean = sum(self.other) / len(self.other)
            add("- other load during the measurements: mean %.2f, worst %.2f cores%s" % (
                mean, worst, "" if mean < 0.3 else
                " -- **other work competed with the measured processes: rates and "
                "latencies below are disturbed; re-run on a quiet machine**"))
        add("- settings: warm-up %ss, measured %ss per scenario, best of %d; flood window %d MiB of "
            "events in flight; listen.max_output %d MiB; listen.socket_buffer %s; busgated: "
            "plain TCP, auth none, log level warning" % (
                a.warmup, a.duration, a.repeat, a.budget_mib, a.max_output_mib,
                "%d KiB" % a.socket_buffer_kib if a.socket_buffer_kib else "0 (the kernel's)"))
        add("- rates are messages delivered per second (one message to one subscriber = one "
            "delivery); the gateway's CPU is from /proc/PID/schedstat over the measured window")
        if self.gateway_ok is False:
            add("- **busgated did not run: only the baselines were measured**")
        if self.nats_ok is not None:
            add("- peer: %s" % (self.nats_note if self.nats_ok else
                                "**nats-server columns skipped: %s**" % self.nats_note))
        add("")
        self.report_fanout(add)
        self.report_publish(add)
        self.report_latency(add)
        self.report_memory(add)
        if self.profiles:
            add("## Profiles (perf record -g on busgated, self time by symbol)")
            add("")
            for name, top in self.profiles:
                add("%s:" % name)
                add("")
                add("```")
                L.extend(top)
                add("```")
                add("")
        return "\n".join(L) + "\n"

    def speeds_note(self, start, end):
        note = "before %s; after %s" % (speeds_text(start), speeds_text(end))
        if self.checked:
            note += "; before each measured run: %d of %d unequal" % (
                len(self.uneven), self.checked)
        if self.uneven or uneven(start) or uneven(end):
            note += (" -- **the CPUs ran at unequal speeds (the host's doing, or other work "
                     "on the machine): a row can swing with the CPU busgated lands on; "
                     "compare runs with care**")
            if self.uneven:
                note += ". Unequal before: " + "; ".join(self.uneven[:12]) + (
                    "; ..." if len(self.uneven) > 12 else "")
        return note

    @staticmethod
    def verdict(ok):
        return "PASS" if ok else "MISS"

    def report_fanout(self, add):
        raw = self.results.get("raw")
        if raw is None:
            return
        rawp = self.results["rawparse"]
        add("## 1. Fan-out: bus -> local subscribers")
        add("")
        add("Baseline: rawfanout, the same DATA-event bytes written in ~64 KiB chunks by one "
            "writer to N Unix socket pairs, read by one process (raw: bytes only; "
            "raw+parse: the readers also parse and sequence-check every event, as lpclient "
            "does). Target: gateway >= %.1f x raw at 16 B and 256 B with 100 and 1000 "
            "subscribers." % FANOUT_TARGET)
        add("")
        rows = self.results.get("fanout")
        if not rows:
            add("| payload | readers | raw msg/s | raw MB/s | raw+parse msg/s | other load |")
            add("| ---: | ---: | ---: | ---: | ---: | ---: |")
            for (size, n), r in sorted(raw.items()):
                add("| %d B | %d | %s | %.0f | %s | %.1f |" % (size, n, fmt_rate(r["rate"]),
                    r["bytes_rate"] / 1e6, fmt_rate(rawp[(size, n)]["rate"]), other_cores(r)))
            add("")
            return
        nats = self.results.get("fanout_nats") or []
        self.report_nats_intro(add, "fan-out", "natsclient src publishes on the topics "
                               "round-robin over one connection (bussrc's role), the N "
                               "subscribers are N connections of one natsclient sub process "
                               "(lpclient's role), the same in-flight window paces the "
                               "publisher", "at 16 B and 256 B with %s subscribers on one "
                               "topic and with 1000 topics x 1 subscriber" %
                               ", ".join(str(n) for n in NATS_SUBS))
        head = ["payload", "subscribers", "topics", "gateway msg/s", "MB/s", "raw msg/s",
                "ratio", "raw+parse msg/s", "ratio", "target"]
        if nats:
            head += ["nats msg/s", "gw/nats", "nats target"]
        head += ["gw CPU", "source / client CPU", "gw CPU s / 1M msgs", "gw target"]
        if nats:
            head += ["nats-server / client CPU", "nats CPU s / 1M msgs"]
        head += ["gw peak RSS", "other load", "check"]
        table = []
        for i, r in enumerate(rows):
            size, subs, topics = r["payload"], r["subs"], r["topics"]
            rr, rp = raw[(size, subs)], rawp[(size, subs)]
            n = nats[i] if i < len(nats) else None
            ratio = r["rate"] / rr["rate"] if rr["rate"] else 0
            ratio_p = r["rate"] / rp["rate"] if rp["rate"] else 0
            target = ""
            if size in (16, 256) and subs in (100, 1000) and topics == 1:
                target = "%s (>= %.1f)" % (self.verdict(ratio >= FANOUT_TARGET), FANOUT_TARGET)
            secs = r["seconds"]
            per_m = r["cpu_gw"] / r["msgs"] * 1e6 if r["msgs"] else 0
            gw_target = []
            if size == 16 and subs == 1 and topics == 1:
                gw_target.append("CPU %s (<= %.2f s / 1M)" % (
                    self.verdict(per_m <= GW_CPU_TARGET), GW_CPU_TARGET))
            if size == 16 and subs == 1000 and topics == 1000:
                gw_target.append("rate %s (>= %s msg/s)" % (
                    self.verdict(r["rate"] >= TOPICS_RATE_TARGET), fmt_rate(TOPICS_RATE_TARGET)))
            cells = [size_s(size), subs, topics, fmt_rate(r["rate"]),
                     "%.0f" % (r["bytes_rate"] / 1e6), fmt_rate(rr["rate"]), "%.2f" % ratio,
                     fmt_rate(rp["rate"]), "%.2f" % ratio_p, target]
            if nats:
                cells += self.nats_cells(r, n, size in (16, 256) and (
                    (topics == 1 and subs in NATS_SUBS) or (topics == 1000 and subs == 1000)))
            cells += ["%.0f%%" % (100 * r["cpu_gw"] / secs),
                      "%.0f%% / %.0f%%" % (100 * r["cpu_src"] / secs,
                                           100 * r["cpu_client"] / secs), "%.3f" % per_m,
                      "; ".join(gw_target)]
            if nats:
                cells += self.nats_cpu_cells(n)
            other = "%.1f / %.1f" % (other_cores(r), other_cores(rr))
            if nats:
                other += " / %.1f" % other_cores(n)
            cells += ["%.1f MiB" % (r["gw_hwm"] / 1048576), other, check_cell(r, n)]
            table.append(cells)
        add_table(add, head, table, 3)
        add("")
        self.report_lib(add, rows, self.results.get("fanout_lib"),
                        (("subscribers", "subs"), ("topics", "topics")),
                        "every subscriber a libbusgate connection in event-loop use (bg_fd, "
                        "bg_process, a callback)")
        add("check: every subscriber received every message sent, in order, exactly once "
            "(sequence numbers), and no session was dropped. gw CPU, source / client CPU: share "
            "of one core over the window of busgated, bussrc and lpclient (a client near 100%% "
            "means the subscriber process, not the gateway, was the limit; the three near "
            "nproc x 100%% together, that the machine's CPUs were). other load: CPU cores "
            "busy with other processes during the gateway run / the raw run%s (/proc/stat "
            "minus the measured processes); above ~0.3 the figures of that row are disturbed." % (
                " / the nats-server run" if nats else ""))
        add("")

    def report_nats_intro(self, add, what, layout, cases):
        """What the nats-server columns are, or why they are missing."""
        if not self.nats_ok:
            add("nats-server columns skipped: %s." % self.nats_note)
            add("")
            return
        add("Peer: %s on loopback, fresh per run (max_pending %d MB, write_deadline 60s), "
            "the same %s through it: %s. nats msg/s, gw/nats: its rate and the gateway's "
            "against it; nats-server / client CPU: its process, all threads, in cores x 100%%, "
            "and the natsclient process that measures (subscribers, or publishers). "
            "Target: gateway >= %.0f x nats-server %s." % (
                self.nats_note, self.a.max_output_mib, what, layout, NATS_TARGET, cases))
        add("")

    def nats_cells(self, r, n, targeted):
        if n is None:
            return ["", "", ""]
        ratio = r["rate"] / n["rate"] if n["rate"] else 0
        target = "%s (>= %.0f)" % (self.verdict(ratio >= NATS_TARGET), NATS_TARGET) \
            if targeted else ""
        return [fmt_rate(n["rate"]), "%.2f" % ratio, target]

    @staticmethod
    def nats_cpu_cells(n):
        if n is None:
            return ["", ""]
        per_m = n["cpu_nats"] / n["msgs"] * 1e6 if n["msgs"] else 0
        return ["%.0f%% / %.0f%%" % (100 * n["cpu_nats"] / n["seconds"],
                                     100 * n["cpu_client"] / n["seconds"]), "%.3f" % per_m]

    def report_lib(self, add, rows, lib_rows, keys, what):
        """The same runs with libbusgate clients (issue 13: at most 10% dearer);
        keys: (column, result key) of the rows' key columns after payload."""
        if not lib_rows:
            return
        add("Through libbusgate: the same runs with %s instead of lpclient's hand-written "
            "one, the two run in turns (hand, lib, hand, lib...). Each turn: that turn's "
            "lib / hand. Target: their median >= %.2f. A turn's two runs share the same "
            "minute of a machine whose speed drifts, and the median is not moved by one "
            "run that had both vCPUs to itself (or none); best / best: the best run of "
            "each, as reported before 2026-12-06 12:40." % (what, LIB_TARGET))
        add("")
        add("| payload | %s | hand-written msg/s | libbusgate msg/s | best / best | "
            "each turn | median | target | client CPU hand / lib | check |"
            % " | ".join(k for k, _ in keys))
        add("| ---: | %s---: | ---: | ---: | :--- | ---: | :--- | ---: | :--- |"
            % ("---: | " * len(keys)))
        for r, l in zip(rows, lib_rows):
            best = l["rate"] / r["rate"] if r["rate"] else 0
            turns = l.get("turns") or [best]
            median = statistics.median(turns)
            add("| %d B | %s | %s | %s | %.2f | %s | %.2f | %s | %.0f%% / %.0f%% | %s |" % (
                r["payload"], " | ".join(str(r[k]) for _, k in keys), fmt_rate(r["rate"]),
                fmt_rate(l["rate"]), best, " ".join("%.2f" % t for t in turns), median,
                self.verdict(median >= LIB_TARGET),
                100 * r["cpu_client"] / r["seconds"], 100 * l["cpu_client"] / l["seconds"],
                check_cell(l)))
        add("")

    def report_publish(self, add):
        raw = self.results.get("rawpub")
        if raw is None:
            return
        add("## 2. Publish: local publishers -> bus")
        add("")
        add("Baseline: the same PUB command bytes through one Unix socket pair (rawfanout "
            "--pub, one writer, one reader). Rate = MulticastData arriving at the bus "
            "source. Target: >= %.1f x raw." % PUBLISH_TARGET)
        add("")
        rows = self.results.get("publish")
        if not rows:
            for size, r in sorted(raw.items()):
                add("- raw PUB bytes, %d B payload: %s msg/s" % (size, fmt_rate(r["rate"])))
            add("")
            return
        nats = self.results.get("publish_nats") or []
        self.report_nats_intro(add, "publishers", "P natsclient pub connections in one "
                               "process (lpclient's role), one natsclient sink connection "
                               "subscribed to every publisher's topic counts and checks "
                               "(the bus source's role), rate = messages reaching it; NATS "
                               "has no backpressure, so the publishers are held to the "
                               "fan-out's in-flight window", "publish ingest at 16 B and "
                               "256 B")
        head = ["payload", "publishers", "gateway msg/s", "raw msg/s", "ratio", "target"]
        if nats:
            head += ["nats msg/s", "gw/nats", "nats target"]
        head += ["gw CPU", "gw CPU s / 1M msgs"]
        if nats:
            head += ["nats-server / client CPU", "nats CPU s / 1M msgs"]
        head += ["other load", "check"]
        table = []
        for i, r in enumerate(rows):
            rr = raw[r["payload"]]
            n = nats[i] if i < len(nats) else None
            ratio = r["rate"] / rr["rate"] if rr["rate"] else 0
            per_m = r["cpu_gw"] / r["msgs"] * 1e6 if r["msgs"] else 0
            cells = [size_s(r["payload"]), r["pubs"], fmt_rate(r["rate"]), fmt_rate(rr["rate"]),
                     "%.2f" % ratio, "%s (>= %.1f)" % (self.verdict(ratio >= PUBLISH_TARGET),
                                                      PUBLISH_TARGET)]
            if nats:
                cells += self.nats_cells(r, n, r["payload"] in (16, 256))
            cells += ["%.0f%%" % (100 * r["cpu_gw"] / r["seconds"]), "%.3f" % per_m]
            if nats:
                cells += self.nats_cpu_cells(n)
            other = "%.1f / %.1f" % (other_cores(r), other_cores(rr))
            if nats:
                other += " / %.1f" % other_cores(n)
            cells += [other, check_cell(r, n)]
            table.append(cells)
        add_table(add, head, table, 2)
        add("")
        self.report_lib(add, rows, self.results.get("publish_lib"), (("publishers", "pubs"),),
                        "every publisher a pipelined libbusgate connection in event-loop use "
                        "(bg_publish, bg_flush, bg_process)")
        add("check: the bus source (nats: the sink) saw every published message, per "
            "publisher in order, exactly once; no -ERR reply.")
        add("")

    def report_latency(self, add):
        rows = self.results.get("latency")
        if not rows:
            return
        add("## 3. Added latency, bus -> local subscriber, at %d msg/s" % self.a.rate)
        add("")
        add("One-way, send time stamped by the bus source just before write() to receive "
            "time after the subscriber's read(), CLOCK_MONOTONIC, %d B payload. Direct = "
            "each subscriber is its own TCP client of the bus source (the user's "
            "alternative); gateway = busgated's one bus link fanned out over the Unix "
            "socket. Target (one subscriber): added p99 <= %.0f x the direct path's p99." % (
                self.a.lat_payload, LATENCY_TARGET))
        add("")
        add("| subscribers | path | samples | p50 us | p99 us | p99.9 us | max us | other load | "
            "check |")
        add("| ---: | :--- | ---: | ---: | ---: | ---: | ---: | ---: | :--- |")
        for row in rows:
            d, g = row["direct"], row["gw"]
            for name, r in (("direct", d), ("gateway", g)):
                if r is None:
                    continue
                ok = r["missing"] == 0 and r["seq_errors"] == 0 and r["closed"] == 0
                add("| %d | %s | %d | %.1f | %.1f | %.1f | %.1f | %.1f | %s |" % (
                    row["subs"], name, r["lat_n"], r["lat_p50_us"], r["lat_p99_us"],
                    r["lat_p999_us"], r["lat_max_us"], other_cores(r), "ok" if ok else "FAIL"))
            if g is not None:
                added = g["lat_p99_us"] - d["lat_p99_us"]
                lim = LATENCY_TARGET * d["lat_p99_us"]
                verdict = "%s (p99 added %.1f us vs %.1f us allowed)" % (
                    self.verdict(added <= lim), added, lim)
                if row["subs"] != 1:
                    verdict = "(information: the direct path has the bus source write " \
                        "to %d TCP connections per message)" % row["subs"]
                add("| %d | **added** | | %+.1f | %+.1f | %+.1f | | | %s |" % (
                    row["subs"], g["lat_p50_us"] - d["lat_p50_us"], added,
                    g["lat_p999_us"] - d["lat_p999_us"], verdict))
        add("")

    def report_memory(self, add):
        mem = self.results.get("memory")
        if not mem:
            return
        add("## 4. Memory")
        add("")
        add("busgated VmRSS (/proc/PID/status), fresh daemon each time, sessions that said "
            "hello, answered PING and idle (RLIMIT_NOFILE raised to the hard limit).")
        add("")
        add("| case | RSS before | RSS with | per session / per 1000 subs | target |")
        add("| :--- | ---: | ---: | ---: | :--- |")
        per_session = {}
        for n in sorted(k for k in mem if k != "subs"):
            m = mem[n]
            ok = m["ready"] is not None and m["ready"].get("sessions") == n and \
                m["ready"].get("closed") == 0
            per = (m["rss1"] - m["rss0"]) / n
            per_session[n] = per
            target = "%s (<= %d B)" % (self.verdict(per <= SESSION_RSS_TARGET),
                                       SESSION_RSS_TARGET)
            if n >= SESSIONS_TARGET:
                target += "; %d concurrent sessions: %s" % (n, self.verdict(ok))
            add("| %d idle sessions | %.1f MiB | %.1f MiB | %.0f B | %s |" % (
                n, m["rss0"] / 1048576, m["rss1"] / 1048576, per, target))
        m = mem["subs"]
        nsubs = m["n"] * m["subs_each"]
        sess_cost = per_session.get(1000, 0) * m["n"]
        per_k = (m["rss1"] - m["rss0"] - sess_cost) / nsubs * 1000
        add("| %d sessions x %d subscriptions | %.1f MiB | %.1f MiB | %.0f B per 1000 "
            "subscriptions | |" % (m["n"], m["subs_each"], m["rss0"] / 1048576,
                                    m["rss1"] / 1048576, per_k))
        add("")
        rows = self.results.get("fanout") or []
        if rows:
            add("CPU per million messages delivered: see the fan-out table (gw CPU s / 1M "
                "msgs); publish path: the publish table.")
            add("")


def size_s(size):
    return "%d B" % size


def check_cell(r, n=None):
    """'ok', or what failed, for a gateway row and its nats-server peer."""
    out = []
    for name, x in (("", r), ("nats ", n)):
        if x is None:
            continue
        bad = ["%s=%d" % (k, x.get(k, 0)) for k in
               ("missing", "seq_errors", "errors", "closed", "err_replies") if x.get(k, 0)]
        if bad:
            out.append("%sFAIL %s" % (name, " ".join(bad)))
    return "; ".join(out) or "ok"


def add_table(add, head, rows, left):
    """A markdown table; the first `left` columns are keys, the rest numbers
    except those that say PASS/MISS or ok/FAIL."""
    text_cols = {i for i, h in enumerate(head) if "target" in h or h == "check"}
    add("| " + " | ".join(head) + " |")
    add("| " + " | ".join(":---" if i in text_cols else "---:" for i in range(len(head))) + " |")
    for cells in rows:
        add("| " + " | ".join(str(c) for c in cells) + " |")


def other_cores(r):
    """Cores used by processes other than the measured ones in the window."""
    if r is None or "cpu_machine" not in r or not r.get("seconds"):
        return 0.0
    ours = sum(v for k, v in r.items()
               if k.startswith("cpu_") and k != "cpu_machine" and isinstance(v, float))
    return max(0.0, (r["cpu_machine"] - ours) / r["seconds"])


def fmt_rate(v):
    if v >= 1e6:
        return "%.2fM" % (v / 1e6)
    if v >= 1e3:
        return "%.1fk" % (v / 1e3)
    return "%.0f" % v


def arg_parser(description):
    """The options of a bench run (bench/ab.py adds its own to them)."""
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--builddir", default=os.environ.get("top_builddir") or os.getcwd())
    ap.add_argument("--srcdir", default=os.path.dirname(here))
    ap.add_argument("--busgated", default=os.environ.get("BUSGATED"))
    ap.add_argument("--only", default=",".join(SCENARIOS),
                    help="comma list of: " + ", ".join(SCENARIOS))
    ap.add_argument("--duration", default="3", help="measured seconds per scenario")
    ap.add_argument("--warmup", default="0.5")
    ap.add_argument("--repeat", type=int, default=1,
                    help="run each throughput case this many times, report the best")
    ap.add_argument("--payloads", default="16,256,4096")
    ap.add_argument("--subs", default="1,10,100,1000", help="subscribers on one topic")
    ap.add_argument("--pubs", default="1,10", help="publisher counts")
    ap.add_argument("--rate", type=int, default=10000, help="latency: messages/s")
    ap.add_argument("--lat-payload", type=int, default=256)
    ap.add_argument("--lat-subs", default="1,100")
    ap.add_argument("--sessions", type=int, default=10000)
    ap.add_argument("--budget-mib", type=int, default=64,
                    help="flood: MiB of events in flight between source and subscribers")
    ap.add_argument("--max-output-mib", type=int, default=256)
    ap.add_argument("--socket-buffer-kib", type=int, default=0,
                    help="busgated's listen.socket_buffer (0: the kernel's default)")
    ap.add_argument("--nats-server", default=shutil.which("nats-server") or
                    ("/usr/sbin/nats-server" if os.access("/usr/sbin/nats-server", os.X_OK)
                     else None), help="nats-server binary (the peer; optional)")
    ap.add_argument("--no-nats", action="store_true", help="skip the nats-server runs")
    ap.add_argument("--write", metavar="FILE", help="also write the report (markdown) here")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs)")
    ap.add_argument("--perf", action="store_true",
                    help="profile busgated with perf in each fan-out/publish case (the "
                         "sampling disturbs the figures: use it with --only/--payloads)")
    return ap


def parse_args(ap):
    a = ap.parse_args()
    a.payloads = [int(x) for x in a.payloads.split(",")]
    a.subs = [int(x) for x in a.subs.split(",")]
    a.pubs = [int(x) for x in a.pubs.split(",")]
    a.lat_subs = [int(x) for x in a.lat_subs.split(",")]
    return a


def check_built(ap, b):
    for name, p in b.bin.items():
        if name == "natsclient" and b.a.no_nats:
            continue
        if not os.access(p, os.X_OK):
            ap.error("%s not built (make bench builds it)" % p)


def main():
    ap = arg_parser(__doc__.split("\n")[0])
    a = parse_args(ap)
    only = a.only.split(",")
    for s in only:
        if s not in SCENARIOS:
            ap.error("unknown scenario %r" % s)

    b = Bench(a)
    check_built(ap, b)
    m_start = machine()
    log("busgate bench: nproc=%d, %s, kernel %s, load %.2f; temp dir %s" % (
        m_start["nproc"], m_start["cpu"], m_start["kernel"], m_start["load"][0], b.tmp))
    t0 = time.monotonic()
    try:
        for s in SCENARIOS:
            if s in only:
                getattr(b, "run_" + s)()
    finally:
        if not a.keep:
            shutil.rmtree(b.tmp, ignore_errors=True)
    m_end = machine()
    argv = [os.path.relpath(sys.argv[0], a.srcdir) if sys.argv[0].startswith(a.srcdir)
            else sys.argv[0]] + sys.argv[1:]
    text = b.report(m_start, m_end, ["python3"] + argv)
    text += "\n(total run time %.0f s)\n" % (time.monotonic() - t0)
    print(text)
    if a.write:
        with open(a.write, "w") as f:
            f.write(text)
        log("wrote " + a.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
