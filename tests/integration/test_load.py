#!/usr/bin/env python3
"""Many sessions through the real daemon: 10,000 connections opened and
closed in every rude way, and 10,000 concurrent subscribers that all
receive one published message.

The descriptor limit is raised to the hard limit (busgated inherits it);
the concurrent test is skipped, saying why, when the hard limit is too low.
"""

import os
import resource
import select
import socket
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from faultkit import (  # noqa: E402
    BUSGATED_IS_SANITIZED, FaultCase, HB, TIMEOUT, open_fds,
    proc_status, stats, wait_until)

N = 10000


def raise_nofile(want):
    """Raise the soft RLIMIT_NOFILE towards want (at most the hard limit);
    returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft == resource.RLIM_INFINITY or soft >= target:
        return soft if soft != resource.RLIM_INFINITY else want
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target


class LoadTest(FaultCase):

    def test_10000_sessions_open_and_close(self):
        # A third close at once, a third after the greeting, a third after
        # sending half a command; every 100th subscribes and dies in the
        # middle of a PUB payload, which must never be published.
        bus = self.bus(heartbeat=HB)
        gw = self.gateway(bus, {"heartbeat": {"timeout": "5s"}})
        watcher = self.session(gw)
        gw.wait_log(r"bus: up")
        pid = gw.proc.pid
        fds_before = open_fds(pid)
        total_before = int(stats(watcher)["sessions_total"])
        for i in range(N):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(gw.socket_path)
            kind = i % 3
            if i % 100 == 99:
                s.sendall(b"SUB CHURN T%d\nPUB CHURN T%d delta 10\nhalf" % (i, i))
            elif kind == 1:
                s.settimeout(TIMEOUT)
                self.assertTrue(s.recv(4096).startswith(b"HELLO "))
            elif kind == 2:
                s.sendall(b"PUB CHURN T delta 1")
            s.close()
        wait_until(lambda: stats(watcher)["sessions"] == "1",
                   what="the 10,000 sessions to be gone")
        st = stats(watcher)
        self.assertEqual(int(st["sessions_total"]), total_before + N)
        self.assertEqual(st["subscriptions"], "0")
        self.assertEqual(st["slow_consumers"], "0")
        # nothing half-sent was published; the subscriptions came and went
        self.assertEqual([r for r in bus.messages("MulticastData", direction="recv")
                          if r["fields"]["feed"] == "CHURN"], [])
        wait_until(lambda: open_fds(pid) <= fds_before,
                   what="busgated's descriptors back to %d (now %d)"
                   % (fds_before, open_fds(pid)))
        self.assert_alive(gw, watcher)
        self.assertNotIn("<3>", gw.log(), "errors logged for closed sessions")

    def test_10000_concurrent_subscribers(self):
        need = N + 200
        have = raise_nofile(need)
        if have < need:
            self.skipTest("RLIMIT_NOFILE hard limit %d is below the %d descriptors "
                          "10,000 sessions need (raise it: ulimit -Hn)" % (have, need))
        bus = self.bus(heartbeat=HB)
        gw = self.gateway(bus, {"heartbeat": {"timeout": "10s"}},
                          {"listen": {"max_sessions": N + 10}})
        watcher = self.session(gw)
        gw.wait_log(r"bus: up")
        pid = gw.proc.pid
        rss_before = proc_status(pid, "VmRSS")
        socks = []
        try:
            for _ in range(N):
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                socks.append(s)
                s.connect(gw.socket_path)
                s.sendall(b"SUB WIDE T\n")
            # each gets HELLO and +OK (one upstream subscription for all)
            bufs = self.read_all(socks, lambda buf: buf.count(b"\n") >= 2, "HELLO and +OK")
            for buf in bufs.values():
                lines = buf.split(b"\n")
                self.assertTrue(lines[0].startswith(b"HELLO "), lines[0])
                self.assertEqual(lines[1:], [b"+OK", b""])
            st = stats(watcher)
            self.assertEqual(st["sessions"], str(N + 1))
            self.assertEqual(st["subscriptions"], str(N))
            self.assertEqual(st["topics"], "1")
            self.wait_subscribed(bus, "WIDE", "T")
            subs = [r for r in bus.messages("SubscriptionRequest", direction="recv")
                    if r["fields"]["feed"] == "WIDE"]
            self.assertEqual(len(subs), 1, "one upstream subscription for 10,000")
            rss_idle = proc_status(pid, "VmRSS")
            # one message from a remote publisher reaches every one of them
            pub = self.client(bus)
            pub.publish("WIDE", "T", [(None, b"to all ten thousand")])
            want = b"DATA WIDE T pub "
            bufs = self.read_all(socks, lambda buf: buf.endswith(b"to all ten thousand\n"),
                                 "DATA")
            for buf in bufs.values():
                self.assertTrue(buf.startswith(want), buf[:80])
                self.assertEqual(buf.count(b"\n"), 2, buf[:200])
            st = stats(watcher)
            self.assertEqual(int(st["data_delivered"]), N)
            self.assertEqual(st["slow_consumers"], "0")
            if not BUSGATED_IS_SANITIZED:
                sys.stderr.write("\n  10,000 idle sessions: %.1f KiB each (RSS) ... "
                                 % ((rss_idle - rss_before) / N))
        finally:
            for s in socks:
                s.close()
        wait_until(lambda: stats(watcher)["sessions"] == "1",
                   what="the 10,000 sessions to be gone")
        wait_until(lambda: stats(watcher)["topics"] == "0", what="the topic to go")
        self.assert_alive(gw, watcher)

    def read_all(self, socks, done, what):
        """Read from every socket until done(what it read) holds for all;
        returns {fd: bytes read}."""
        pending, bufs = {}, {}
        for s in socks:
            s.setblocking(False)
            pending[s.fileno()] = s
            bufs[s.fileno()] = b""
        poller = select.poll()
        for fd in pending:
            poller.register(fd, select.POLLIN)
        deadline = time.monotonic() + TIMEOUT * 3
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("%d sessions never got %s" % (len(pending), what))
            for fd, _ in poller.poll(min(left, 1.0) * 1000):
                s = pending[fd]
                try:
                    chunk = s.recv(65536)
                except BlockingIOError:
                    continue
                if not chunk:
                    raise AssertionError("busgated closed a session: %r" % bufs[fd][-200:])
                bufs[fd] += chunk
                if done(bufs[fd]):
                    poller.unregister(fd)
                    del pending[fd]
        return bufs


if __name__ == "__main__":
    unittest.main(verbosity=2)
