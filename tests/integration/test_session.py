#!/usr/bin/env python3
"""Local sessions end to end: framing and limits, every error path (the
session stays usable), VERBOSE/PING/QUIT, pipelining, end of input, the
slow-consumer policy, too many sessions, shutdown."""

import os
import re
import signal
import socket
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from routerkit import GatewayCase, BUSGATED_IS_SANITIZED, stats, uniq, wait_until  # noqa: E402

GUID = "00112233-4455-6677-8899-aabbccddeeff"
TIMEOUT_S = 20


def code(reply):
    """'-ERR code message' -> code; '+OK' -> '+OK'."""
    parts = reply.split(" ", 2)
    return parts[1] if parts[0] == "-ERR" else parts[0]


def read_all(s, timeout=20.0):
    """Every line until the daemon closes the session, but BUS state
    events: the link may be confirmed (BUS up) at any time after a session
    connected, since wait_bus_up returns once it is connected."""
    lines = []
    deadline = time.monotonic() + timeout
    while True:
        try:
            line = s._read_line(deadline)
        except (EOFError, ConnectionResetError):
            # Closed with input of ours unread, the socket resets, once
            # what was sent before has been read.
            return lines
        if not line.startswith("BUS "):
            lines.append(line)


def mem_kib(pid, field):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


class SessionTest(GatewayCase):
    GW_CONFIG = {"listen": {"max_line": 1024, "max_payload": 4096, "max_packets": 8,
                            "max_subscriptions": 3}}

    def test_greeting_states_limits(self):
        s = self.session()
        w = s.hello.words
        self.assertEqual(w[:2], ["HELLO", "busgate"])
        kv = dict(x.split("=", 1) for x in w[3:])
        self.assertEqual(kv["proto"], "1")
        self.assertEqual((kv["max_line"], kv["max_payload"], kv["max_packets"],
                          kv["max_subscriptions"]), ("1024", "4096", "8", "3"))
        self.assertIn(kv["bus"], ("unconfirmed", "up"))

    def test_every_error_keeps_the_session_usable(self):
        s = self.session()
        cases = [
            ("FROB x", None, "unknown-command"),
            ("SUB onlyfeed", None, "syntax"),
            ("SUB %FF t", None, "bad-name"),
            ('SUB "" t', None, "bad-name"),
            ("SUB %s t" % ("n" * 5000), None, "line-too-long"),
            ("SEND not-a-guid F T delta 1", b"x", "bad-client-id"),
            ("PUB F T delta x", None, "bad-packet"),
            ("PUB F T delta 5000", b"p" * 5000, "payload-too-large"),
            ("PUB F T delta " + " ".join(["1"] * 9), b"q" * 9, "too-many-packets"),
            ("PUB F T delta", None, "no-packets"),
            ("SEND %s F T image" % GUID, None, "no-packets"),
            ("UNSUB F never", None, "not-subscribed"),
            ("UNNOTIFY never", None, "not-notifying"),
            ("UNAUTHORIZER never", None, "not-authorizer"),
            ("AUTHORIZE %s never t required 1" % GUID, None, "not-authorizer"),
            ("VERBOSE maybe", None, "syntax"),
            ("", None, "syntax"),
        ]
        for line, payload, want in cases:
            with self.subTest(line=line[:40]):
                self.assertEqual(code(s.cmd(line, payload)), want)
                self.assertEqual(s.cmd("PING ok"), "PONG ok")

    def test_state_errors(self):
        s = self.session()
        f = uniq("E")
        for t in ("a", "b", "c"):
            self.assertEqual(s.cmd("SUB %s %s" % (f, t)), "+OK")
        self.assertEqual(code(s.cmd("SUB %s a" % f)), "already-subscribed")
        self.assertEqual(code(s.cmd("SUB %s d" % f)), "too-many-subscriptions")
        self.assertEqual(s.cmd("UNSUB %s c" % f), "+OK")
        self.assertEqual(s.cmd("SUB %s d" % f), "+OK")
        self.assertEqual(s.cmd("NOTIFY %s" % f), "+OK")
        self.assertEqual(code(s.cmd("NOTIFY %s" % f)), "already-notifying")
        self.assertEqual(s.cmd("AUTHORIZER %s" % f), "+OK")
        self.assertEqual(code(s.cmd("AUTHORIZER %s" % f)), "already-authorizer")
        self.assertEqual(code(s.cmd("AUTHORIZE %s %s t required 1" % (GUID, f))),
                         "unknown-request")

    def test_bad_terminator_discards_to_newline(self):
        s = self.session()
        s.send(b"PUB F T delta 3\nabcXYZ junk\nPING after\n")
        self.assertEqual(code(s.reply()), "bad-terminator")
        self.assertEqual(s.reply(), "PONG after")
        # "\r\n" after a payload is fine, and so are CRLF command lines.
        self.assertEqual(s.cmd("PUB F T delta 3\r", b"abc\r"), "+OK")
        s.send(b"PING crlf\r\n")
        self.assertEqual(s.reply(), "PONG crlf")

    def test_payload_behind_its_line_or_later(self):
        # Read in place when the payload is buffered behind its line, by the
        # framer's payload step when it comes in a later read.
        s = self.session()
        s.send(b"PUB F T delta 3 2\nabcde\nPING 1\n")
        self.assertEqual(s.reply(), "+OK")
        self.assertEqual(s.reply(), "PONG 1")
        s.send(b"PUB F T delta 3 2\nab")
        time.sleep(0.1)
        s.send(b"cde\nPING 2\n")
        self.assertEqual(s.reply(), "+OK")
        self.assertEqual(s.reply(), "PONG 2")

    def test_refused_payload_is_skipped_as_it_arrives(self):
        s = self.session()
        s.send(b"PUB F T delta 4000 4000\n")
        self.assertEqual(code(s.reply()), "payload-too-large")
        payload = b"PING not-a-command\n" * 421 + b"x"
        self.assertEqual(len(payload), 8000)
        for i in range(0, len(payload), 1000):
            s.send(payload[i:i + 1000])
        s.send(b"\nPING real\n")
        self.assertEqual(s.reply(), "PONG real")

    def test_huge_line_is_not_buffered(self):
        s = self.session()
        pid = self.gw.proc.pid
        before = mem_kib(pid, "VmRSS")
        chunk = b"y" * (1 << 20)
        for _ in range(64):
            s.send(chunk)
        s.send(b"\nPING z\n")
        self.assertEqual(code(s.reply()), "line-too-long")
        self.assertEqual(s.reply(), "PONG z")
        grown = mem_kib(pid, "VmHWM") - before
        if not BUSGATED_IS_SANITIZED:
            self.assertLess(grown, 16 * 1024, "RSS grew %d KiB for a 64 MiB line" % grown)

    def test_long_line_in_a_pipeline(self):
        # The over-long line and the commands after it arrive together:
        # only the long line is lost.
        s = self.session()
        s.send(b"PING a\n" + b"z" * 3000 + b"\nPING b\nPING c\n")
        self.assertEqual(s.reply(), "PONG a")
        self.assertEqual(code(s.reply()), "line-too-long")
        self.assertEqual(s.reply(), "PONG b")
        self.assertEqual(s.reply(), "PONG c")

    def test_long_pub_line_closes_the_session(self):
        """A PUB or SEND line past max_line hides where its payload ends:
        read on, the payload would run as commands. That session is closed
        (whether or not its newline came within the window), and nothing
        of the payload runs."""
        f = uniq("L")
        sub = self.session()
        self.assertEqual(sub.cmd("SUB %s V" % f), "+OK")
        evil = b"PUB %s V delta 4\nevil\n" % f.encode()
        gid = "00112233-4455-6677-8899-aabbccddeeff"
        head = b"PUB %s " % f.encode()
        tail = b" delta %d\n" % len(evil)
        exact = head + b"t" * (1025 - len(head) - len(tail) + 1) + tail    # 1025 + "\n"
        self.assertEqual(len(exact), 1026)
        for line in (exact,
                     b"PUB %s %s delta %d\n" % (f.encode(), b"t" * 3000, len(evil)),
                     b"  pub %s %s delta %d\n" % (f.encode(), b"t" * 70000, len(evil)),
                     b"SEND %s %s t delta %d\n" % (gid.encode(), f.encode() + b"x" * 70000,
                                                  len(evil))):
            s = self.session()
            try:
                s.send(line + evil + b"PING after\n")
            except (BrokenPipeError, ConnectionResetError):
                pass    # closed before it took the rest; its reply is still there to read
            lines = read_all(s)
            self.assertEqual(len(lines), 1, lines)
            self.assertRegex(lines[0], r"^-ERR line-too-long a PUB or SEND line longer "
                             r"than 1024 bytes: its payload cannot be found; closing$")
        self.gw.wait_log(r"closed \(line-too-long\)")
        self.assertEqual(sub.cmd("PING"), "PONG")      # no DATA came first

    def test_pipelining_replies_in_order(self):
        s = self.session()
        f = uniq("P")
        cmds = []
        for i in range(200):
            cmds.append(b"PING %d\n" % i)
            cmds.append(b"PUB %s t delta 2\nx%d\n" % (f.encode(), i % 10))
            cmds.append(b"BOGUS\n")
        s.send(b"".join(cmds))
        for i in range(200):
            self.assertEqual(s.reply(), "PONG %d" % i)
            self.assertEqual(s.reply(), "+OK")
            self.assertEqual(code(s.reply()), "unknown-command")

    def test_verbose_off(self):
        s = self.session()
        f = uniq("V")
        self.assertEqual(s.cmd("VERBOSE off"), "+OK")
        s.send("SUB %s t\nSUB %s t\n" % (f, f))
        self.assertEqual(code(s.reply()), "already-subscribed")
        self.assertEqual(s.cmd("PING"), "PONG")
        self.assertEqual(s.cmd("verbose ON"), "+OK")
        self.assertEqual(s.cmd("UNSUB %s t" % f), "+OK")

    def test_quit(self):
        s = self.session()
        s.send("QUIT\nPING never\n")
        self.assertEqual(read_all(s), ["+OK"])

    def test_end_of_input_flushes_replies(self):
        s = self.session()
        f = uniq("Q")
        s.send("SUB %s t\nPING last\n" % f)
        s.sock.shutdown(socket.SHUT_WR)
        self.assertEqual(read_all(s), ["+OK", "PONG last"])
        # Its subscription went with it.
        self.wait_recv("SubscriptionRequest",
                       lambda x: x["feed"] == f and not x["is_add"])

    def test_peer_credentials_logged(self):
        s = self.session()
        self.assertEqual(s.cmd("PING"), "PONG")
        self.gw.wait_log(r"session \d+: connected, pid=%d uid=%d gid=%d"
                         % (os.getpid(), os.getuid(), os.getgid()))


class ReloadTest(GatewayCase):
    GW_CONFIG = {"listen": {"max_line": 1024}}

    def test_reload_applies_new_limits(self):
        s = self.session()
        token = "a" * 2000
        self.assertEqual(code(s.cmd("PING " + token)), "line-too-long")
        off = self.gw.log_offset()
        self.gw.write_config({"listen": {"max_line": 4096}, "router": {"image_cache": 0}})
        self.gw.reload()
        self.gw.wait_log(r"reloaded", start=off)
        # The session already open and a new one both have the new limits.
        self.assertEqual(s.cmd("PING " + token), "PONG " + token)
        s2 = self.session()
        self.assertIn("max_line=4096", s2.hello.line)
        st = stats(s2)
        self.assertEqual((st["limit.max_line"], st["limit.image_cache_bytes"]), ("4096", "0"))


class SlowConsumerTest(GatewayCase):
    GW_CONFIG = {"listen": {"max_output": 65536}, "daemon": {"shutdown_grace": "20s"}}

    def test_slow_reader_is_cut_off_and_others_keep_up(self):
        feed, topic = uniq("SLOW"), "T"
        m = self.bus.mark()
        slow, fast, other = self.session(), self.session(), self.session()
        self.assertEqual(slow.cmd("NAME slowapp"), "+OK")
        for s in (slow, fast):
            self.assertEqual(s.cmd("SUB %s %s" % (feed, topic)), "+OK")
        self.wait_recv("SubscriptionRequest", lambda x: x["feed"] == feed, since=m)
        pub = self.client("pub")
        n = 3000
        # Publish from a thread, never more than 32 events (~32 KiB) ahead
        # of the fast reader, so only the reader that stops falls behind.
        consumed = [0]
        stop = threading.Event()

        def publish():
            for i in range(n):
                while i - consumed[0] > 32 and not stop.is_set():
                    time.sleep(0.001)
                pub.publish(feed, topic, [(None, b"%06d" % i + b"." * 1000)])

        t = threading.Thread(target=publish)
        t.start()
        try:
            for i in range(n):
                ev = fast.expect("DATA")
                self.assertEqual(ev.payloads[0][:6], b"%06d" % i)
                consumed[0] = i + 1
        finally:
            stop.set()
            t.join()
        self.assertEqual(other.cmd("PING"), "PONG")
        st = stats(fast)
        self.assertEqual(st["slow_consumers"], "1")
        # The log names the app (NAME), the one thing to look for.
        self.gw.wait_log(r"session \d+ \(pid \d+, app=slowapp\): slow consumer, \d+ bytes "
                         r"queued \(listen.max_output 65536\)")
        lines = read_all(slow)
        self.assertTrue(lines[-1].startswith("-ERR slow-consumer "), lines[-1:])
        self.assertTrue(any(x.startswith("DATA ") for x in lines))
        wait_until(lambda: stats(fast)["sessions"] == "2", what="the slow session to go")
        self.gw.wait_log(r"session \d+: closed \(slow-consumer\), pid=\d+, app=slowapp, ")

    def test_one_event_bigger_than_max_output(self):
        # max_output bounds the backlog, not the size of one event.
        feed = uniq("BIG")
        m = self.bus.mark()
        s = self.session()
        self.assertEqual(s.cmd("SUB %s t" % feed), "+OK")
        self.wait_recv("SubscriptionRequest", lambda x: x["feed"] == feed, since=m)
        pub = self.client("pub")
        big = bytes(range(256)) * 1024
        pub.publish(feed, "t", [(None, big), ([1], big)], is_image=True)
        self.assertEqual(s.expect("DATA").payloads, [big, big])
        self.assertEqual(s.cmd("PING"), "PONG")


class ClosingSessionTest(GatewayCase):
    GW_CONFIG = {"listen": {"max_output": 4096, "max_line": 300}}

    def test_nothing_runs_after_slow_consumer(self):
        # Replies to a burst of bad commands overflow max_output in one read:
        # the session is closed as a slow consumer, and the commands behind
        # them in the same write (after an over-long line, whose refusal must
        # not reopen the reader) are never executed. k sweeps the burst size
        # across the point where the overflow happens.
        cut, cuts = [], 0
        for k in range(60, 110, 2):
            feed = uniq("AFTER")
            raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.closers.append(raw)
            raw.connect(self.gw.socket_path)
            raw.sendall(b"XX\n" * k + b"Y" * 400 + b"\n" +
                        ("SUB %s t\nPUB %s t delta 3\nabc\nPING after\nQUIT\n"
                         % (feed, feed)).encode())
            out = b""
            raw.settimeout(TIMEOUT_S)
            while True:
                chunk = raw.recv(65536)
                if not chunk:
                    break
                out += chunk
            lines = out.split(b"\n")
            closed = [i for i, x in enumerate(lines) if x.startswith(b"-ERR slow-consumer")]
            if not closed:
                self.assertIn(b"PONG after", lines, "k=%d" % k)
                continue
            cuts += 1
            if b"+OK" in lines[:closed[0]]:
                continue    # the overflow came after SUB had run (VERBOSE is on)
            cut.append(feed)
            self.assertEqual(len(closed), 1, "k=%d: %r" % (k, lines[-5:]))
            self.assertEqual([x for x in lines[closed[0] + 1:] if x], [],
                             "k=%d: replies after slow-consumer" % k)
        self.assertGreater(len(cut), 5, "the sweep never overflowed max_output")
        self.barrier()
        self.assertEqual([r for r in self.bus.messages(direction="recv")
                          if r.get("user") == "gw" and r["fields"].get("feed") in cut], [])
        self.assertEqual(stats(self.session())["slow_consumers"], str(cuts))


class TooManySessionsTest(GatewayCase):
    GW_CONFIG = {"listen": {"max_sessions": 3}}

    def test_too_many_sessions(self):
        s1 = self.session()
        wait_until(lambda: stats(s1)["sessions"] == "1", what="probe sessions to go")
        s2, s3 = self.session(), self.session()
        self.assertEqual(s3.cmd("PING"), "PONG")
        s4 = self.session()
        self.assertEqual(s4.hello.kind, "HELLO")
        lines = read_all(s4)
        self.assertEqual(len(lines), 1)
        self.assertTrue(lines[0].startswith("-ERR too-many-sessions "), lines)
        s1.close()
        wait_until(lambda: stats(s2)["sessions"] == "2", what="a session to go")
        s5 = self.session()
        self.assertEqual(s5.cmd("PING"), "PONG")

    def test_closed_and_refused_counted_by_reason(self):
        # STATS (and /metrics) count why sessions went: QUIT, the peer
        # closing, and a client refused before a session was built.
        s = self.session()
        wait_until(lambda: stats(s)["sessions"] == "1", what="probe sessions to go")
        before = stats(s)
        q = self.session()
        self.assertEqual(q.cmd("QUIT"), "+OK")
        self.session().close()
        wait_until(lambda: stats(s)["sessions"] == "1", what="the two to go")
        others = [self.session(), self.session()]
        extra = self.session()
        self.assertTrue(read_all(extra)[-1].startswith("-ERR too-many-sessions "))
        for o in others:
            o.close()

        def grew(name, by):
            return int(stats(s)[name]) == int(before[name]) + by
        wait_until(lambda: grew("sessions_closed_quit", 1) and grew("sessions_closed_peer", 3)
                   and grew("sessions_refused", 1), what="the counters")


class ShutdownTest(GatewayCase):

    def test_sessions_told_on_shutdown(self):
        gw = self.start_gateway("gw2", name="stopping")
        s = self.session(gw=gw)
        f = uniq("SD")
        self.assertEqual(s.cmd("SUB %s t" % f), "+OK")
        gw.proc.send_signal(signal.SIGTERM)
        lines = read_all(s)
        self.assertEqual(len(lines), 1, lines)
        self.assertTrue(re.match(r"-ERR shutting-down ", lines[0]), lines)
        gw.proc.wait(30)    # exiting on its own; stop() then checks status and log
        gw.stop()


def fresh_stats(case):
    """STATS on a new session: over the memory budget a session stops
    reading after each command, so one STATS per session."""
    s = case.session()
    st = stats(s)
    s.close()
    return st


class MemoryBudgetTest(GatewayCase):
    """listen.max_memory bounds all sessions' queues together, far below
    what max_output allows each of them."""
    BUDGET = 1 << 20
    GW_CONFIG = {"listen": {"max_output": "64MiB", "max_memory": "1MiB"},
                 "daemon": {"shutdown_grace": "20s"}}

    def test_heaviest_reader_closed_and_readers_held_until_it_drains(self):
        feed, topic, n = uniq("MEM"), "T", 1000
        m = self.bus.mark()
        slow = [self.session(), self.session()]
        local = self.session()
        for i, s in enumerate(slow):
            self.assertEqual(s.cmd("NAME mem%d" % i), "+OK")
            self.assertEqual(s.cmd("SUB %s %s" % (feed, topic)), "+OK")
        self.wait_recv("SubscriptionRequest", lambda x: x["feed"] == feed, since=m)
        data_in = int(fresh_stats(self)["data_in"])
        pub = self.client("pub")
        # 1 MiB to each of two sessions that do not read: together they
        # pass the budget, each alone (after the kernel's share) does not.
        for i in range(n):
            pub.publish(feed, topic, [(None, b"%06d" % i + b"." * 1018)])
        wait_until(lambda: int(fresh_stats(self)["data_in"]) == data_in + n,
                   what="the burst to reach the gateway")
        self.gw.wait_log(r"session \d+ \(pid \d+, app=mem[01]\): slow consumer, \d+ bytes "
                         r"queued while the sessions hold")
        st = fresh_stats(self)
        self.assertEqual(st["memory_budget_closes"], "1")
        self.assertEqual(st["limit.max_memory"], str(self.BUDGET))
        self.assertGreater(int(st["memory_queued"]), self.BUDGET)
        # Still over budget (the closed session's queue is not drained):
        # a command is answered, then the session waits before the next.
        self.assertEqual(local.cmd("PING a"), "PONG a")
        local.send("PING b\n")
        self.assertTrue(local.no_event("PONG", wait=0.5))
        self.assertGreaterEqual(int(fresh_stats(self)["memory_budget_paused"]), 1)
        # Drain both: one was closed with the reason, the other gets all.
        closed = 0
        for s in slow:
            got = 0
            try:
                while True:
                    ev = s.read_event()
                    if ev.kind == "DATA":
                        self.assertEqual(ev.payloads[0][:6], b"%06d" % got)
                        got += 1
                    elif ev.kind == "-ERR":
                        self.assertTrue(ev.line.startswith("-ERR slow-consumer "), ev.line)
                        self.assertIn("memory budget", ev.line)
                        closed += 1
                        break
                    if got == n:
                        break
            except EOFError:
                self.fail("closed without a reason")
        self.assertEqual(closed, 1)
        # Below the budget again, the held session goes on: nothing lost.
        self.assertEqual(local.reply(), "PONG b")
        st = fresh_stats(self)
        self.assertLessEqual(int(st["memory_queued"]), self.BUDGET)
        self.assertGreater(int(st["memory_queued_peak"]), self.BUDGET)
        self.assertEqual(st["slow_consumers"], "1")


class MemoryTrimTest(GatewayCase):
    GW_CONFIG = {"listen": {"max_output": "64MiB"}}

    def test_memory_of_a_burst_goes_back_to_the_system(self):
        if BUSGATED_IS_SANITIZED:
            self.skipTest("memory figures mean little under ASan")
        feed, topic, n = uniq("TRIM"), "T", 24 * 1024
        m = self.bus.mark()
        slow, fast = self.session(), self.session()
        for s in (slow, fast):
            self.assertEqual(s.cmd("SUB %s %s" % (feed, topic)), "+OK")
        self.wait_recv("SubscriptionRequest", lambda x: x["feed"] == feed, since=m)
        pid = self.gw.proc.pid
        before = mem_kib(pid, "VmRSS")
        pub = self.client("pub")
        # 24 MiB queued for a session that does not read, while another
        # reads along: the two interleave their allocations.
        for i in range(n):
            pub.publish(feed, topic, [(None, b"%06d" % i + b"." * 1018)])
            if i % 64 == 63:
                for j in range(64):
                    fast.expect("DATA")
        peak = mem_kib(pid, "VmRSS")
        self.assertGreater(peak - before, 16 * 1024)
        # Sessions that start now are allocated above the burst and stay:
        # the heap cannot shrink from its top; freed pages below must be
        # given back explicitly.
        later = [self.session() for _ in range(4)]
        for i, s in enumerate(later):
            self.assertEqual(s.cmd("SUB %s t%d" % (feed, i)), "+OK")
        slow.close()
        wait_until(lambda: fresh_stats(self)["sessions"] == "6", what="the reader to go")
        wait_until(lambda: mem_kib(pid, "VmRSS") < before + (peak - before) // 4,
                   what="RSS %d KiB -> %d KiB to fall back" % (before, peak))
        # The trim comes once the queues have stayed small for a second;
        # glibc may give the top of the heap back before that on its own.
        wait_until(lambda: int(fresh_stats(self)["memory_trims"]) >= 1, what="a memory trim")


if __name__ == "__main__":
    unittest.main(verbosity=2)
