#!/usr/bin/env python3
"""The bus going away and coming back: sessions are told (BUS events),
publishes are refused or held in the bounded bus-down queue, and every
subscription and notification (including those made while down) is
replayed upstream on reconnect, which the test bus log shows."""

import os
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from routerkit import GatewayCase, stats, uniq, wait_until  # noqa: E402


def bus_event(state):
    return lambda e: e.words[1] == state


def code(reply):
    parts = reply.split(" ", 2)
    return parts[1] if parts[0] == "-ERR" else parts[0]


class BusRestartTest(GatewayCase):

    def test_restart_replays_everything(self):
        feed = uniq("R")
        m = self.bus.mark()
        s, n = self.session(), self.session()
        self.assertEqual(s.cmd("SUB %s T" % feed), "+OK")
        self.assertEqual(n.cmd("NOTIFY %s" % feed), "+OK")
        self.wait_recv("NotificationRequest", lambda f: f["feed"] == feed, since=m)
        pub = self.client("pub")
        pub.publish(feed, "T", [(None, b"before")], is_image=True)
        self.assertEqual(s.expect("DATA").payloads, [b"before"])
        pub.close()
        self.closers.remove(pub)
        self.assertEqual(s.expect("DATA").line, 'DATA %s T "" "" image multicast' % feed)

        self.bus.stop()
        for x in (s, n):
            ev = x.expect("BUS", bus_event("down"))
            self.assertGreater(len(ev.words), 2, "BUS down carries a reason")
        # While down: a new session learns the state; subscriptions are
        # recorded; publishes and sends are refused.
        s2 = self.session()
        self.assertIn("bus=down", s2.hello.line)
        self.assertEqual(s2.cmd("SUB %s T2" % feed), "+OK")
        self.assertEqual(s2.cmd("SUB %s T" % feed), "+OK")
        self.assertEqual(code(s2.pub(feed, "T", [(None, b"x")])), "bus-down")
        self.assertEqual(code(s2.pub(feed, "T", [(None, b"x")], verb="SEND",
                                     target="00112233-4455-6677-8899-aabbccddeeff")),
                         "bus-down")
        self.assertEqual(s.cmd("UNSUB %s T" % feed), "+OK")
        self.assertEqual(stats(s2)["bus_state"], "down")

        m = self.bus.mark()
        self.bus.start()
        for x in (s, n, s2):
            x.expect("BUS", bus_event("unconfirmed"))
        self.wait_recv("SubscriptionRequest", lambda f: f["feed"] == feed and f["topic"] == "T",
                       since=m)
        self.wait_recv("SubscriptionRequest", lambda f: f["feed"] == feed and f["topic"] == "T2",
                       since=m)
        self.wait_recv("NotificationRequest", lambda f: f["feed"] == feed and f["is_add"],
                       since=m)
        self.barrier()
        replayed = self.recv_from("gw", "SubscriptionRequest", m,
                                  lambda f: f["feed"] == feed)
        self.assertEqual(sorted((r["fields"]["topic"], r["fields"]["is_add"]) for r in replayed),
                         [("T", True), ("T2", True)])
        # The old image is not replayed as current after the outage.
        s3 = self.session()
        self.assertEqual(s3.cmd("SUB %s T" % feed), "+OK")
        self.assertEqual(s3.cmd("PING"), "PONG")
        self.assertEqual(s3.events, [])
        # Data flows again, and the first message confirms the link.
        pub = self.client("pub")
        pub.publish(feed, "T2", [(None, b"after")])
        self.assertEqual(s2.expect("DATA").payloads, [b"after"])
        s2.expect("BUS", bus_event("up"))
        sub = self.client("sub")
        sub.subscribe(feed, "seen")
        ev = n.expect("NOTIFICATION", lambda e: e.words[6] == "seen")
        self.assertEqual(ev.words[1], "add")
        self.assertEqual(s.cmd("PING"), "PONG")
        self.assertEqual([e for e in s.events if e.kind == "DATA"], [])


class OutageSinceTest(GatewayCase):
    """"Down since" is when the outage began, however many retries
    (down -> connecting -> down) it has seen."""
    GW_CONFIG = {"bus": {"reconnect": {"min": "50ms", "max": "200ms", "reset_after": "5s"}}}

    def test_retries_keep_the_outage_start(self):
        s = self.session()
        wait_until(lambda: stats(s)["bus_state"] == "up", what="bus up")
        stopped = int(time.time())
        self.bus.stop()
        try:
            s.expect("BUS", bus_event("down"))
            st = stats(s)
            since, retries = int(st["bus_state_since"]), int(st["bus_reconnects"])
            self.assertGreaterEqual(since, stopped)
            # Several attempts, over more than a second (stamps are seconds).
            time.sleep(2.2)
            st = stats(s)
            self.assertGreaterEqual(int(st["bus_reconnects"]), retries + 3)
            self.assertIn(st["bus_state"], ("down", "connecting"))
            self.assertEqual(int(st["bus_state_since"]), since)
            self.assertEqual(int(s.stats("LINK")["since"]), since)
        finally:
            self.bus.start()
        s.expect("BUS", bus_event("unconfirmed"))
        # Back on the link: a new state, a new stamp.
        self.assertGreaterEqual(int(stats(s)["bus_state_since"]), since + 2)


class BusDownQueueTest(GatewayCase):
    GW_CONFIG = {"router": {"busdown_queue": 3}}

    def test_queue_holds_and_flushes_in_order(self):
        feed = uniq("Q")
        s = self.session()
        self.assertEqual(s.cmd("PING"), "PONG")
        self.bus.stop()
        s.expect("BUS", bus_event("down"))
        for i in range(3):
            self.assertEqual(s.pub(feed, "T", [([i], b"q%d" % i)], image=i == 0), "+OK")
        reply = s.pub(feed, "T", [(None, b"q3")])
        self.assertEqual(code(reply), "bus-down")
        self.assertIn("queue is full", reply)
        st = stats(s)
        self.assertEqual((st["busdown_queued"], st["limit.busdown_queue"]), ("3", "3"))
        m = self.bus.mark()
        self.bus.start()
        s.expect("BUS", bus_event("unconfirmed"))
        self.wait_recv("MulticastData", lambda f: f["feed"] == feed
                       and f["data_packets"][0]["data_hex"] == b"q2".hex(), since=m)
        got = self.recv_from("gw", "MulticastData", m, lambda f: f["feed"] == feed)
        self.assertEqual([(r["fields"]["data_packets"][0]["data_hex"],
                           r["fields"]["data_packets"][0]["entitlements"],
                           r["fields"]["is_image"]) for r in got],
                         [(b"q0".hex(), [0], True), (b"q1".hex(), [1], False),
                          (b"q2".hex(), [2], False)])
        self.assertEqual(stats(s)["busdown_queued"], "0")
        self.assertEqual(s.pub(feed, "T", [(None, b"live")]), "+OK")


class BackPressureTest(GatewayCase):
    """A bus that stops reading: past bus.output_high_water the gateway stops
    reading from its sessions (nothing is dropped) until the link drains or
    goes; then the commands held back are answered in order."""
    BUS_KW = {"fault": "silent"}
    GW_CONFIG = {"bus": {"output_high_water": 4096}}

    def test_congested_bus_holds_sessions_back(self):
        s = self.session()
        n, size = 64, 512 * 1024
        block = b"PUB BP t delta %d\n" % size + b"b" * size + b"\n"
        off = self.gw.log_offset()
        t = threading.Thread(target=s.send, args=(block * n,))
        t.start()
        try:
            self.gw.wait_log(r"high-water mark", start=off)
            self.bus.stop()
            codes = [code(s.reply()) for _ in range(n)]
        finally:
            t.join()
        ok = codes.count("+OK")
        self.assertGreater(ok, 0)
        self.assertLess(ok, n)
        self.assertEqual(codes, ["+OK"] * ok + ["bus-down"] * (n - ok))
        self.assertEqual(s.cmd("PING"), "PONG")


class LateSessionBackPressureTest(GatewayCase):
    BUS_KW = {"fault": "silent"}
    GW_CONFIG = {"bus": {"output_high_water": 4096}}

    def test_session_arriving_while_congested_is_not_read(self):
        # A session that connects while the bus holds everyone back is
        # greeted but not read from either, so what it streams stays in the
        # socket instead of growing the daemon's memory.
        s = self.session()
        size = 512 * 1024
        block = b"PUB BP t delta %d\n" % size + b"b" * size + b"\n"
        off = self.gw.log_offset()
        t = threading.Thread(target=s.send, args=(block * 64,))
        t.start()
        self.gw.wait_log(r"high-water mark", start=off)
        late = self.session()
        self.assertTrue(late.hello.line.startswith("HELLO "))
        late.sock.setblocking(False)
        sent, chunk = 0, b"PING x\n" * 8192
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline and sent < (64 << 20):
            try:
                sent += late.sock.send(chunk)
            except BlockingIOError:
                time.sleep(0.01)
        self.assertLess(sent, 16 << 20, "the daemon kept reading a held-back session")
        late.close()
        self.bus.stop()
        t.join()


if __name__ == "__main__":
    unittest.main(verbosity=2)
