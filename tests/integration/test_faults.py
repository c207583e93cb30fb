#!/usr/bin/env python3
"""Fault injection through the real daemon.

The bus side: a message cut in half, garbage, an oversize length, a TLS
stream truncated, stalled or corrupted in the middle of a record (a proxy
in the test), a TLS handshake that never completes, a bus that accepts and
then says nothing; a link lost with publishes still queued; a publish into
a link the bus never confirms. The local side: a 100 MB line, a reader that
never reads among publishers, SIGHUP storms during traffic (some of them
moving the link).

Each test checks that the daemon survives (and exits cleanly with no
sanitizer report, in tearDown), that sessions not at fault are unaffected,
that STATS counts what happened, and that a message a publisher got +OK for
reached the bus while one that could not be sent got an error.
(test_load.py has the 10,000-session tests.)
"""

import os
import signal
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from faultkit import (  # noqa: E402
    BUSGATED_IS_SANITIZED, FaultCase, Gateway, HB, HB_TIMEOUT, RenegotiatingServer,
    SHORT_HB_TIMEOUT, TIMEOUT, data_payload, proc_status, stats, wait_until)
from control import make_pki  # noqa: E402

MIB = 1 << 20


def bus_received(bus, feed, topic, payload=None, user="gw"):
    """Payloads of the MulticastData the bus received from user for
    feed/topic (all of them, or those equal to payload)."""
    out = []
    for r in bus.messages("MulticastData", direction="recv"):
        f = r["fields"]
        if r.get("user") == user and f["feed"] == feed and f["topic"] == topic:
            data = b"".join(bytes.fromhex(p["data_hex"]) for p in f["data_packets"] or [])
            if payload is None or data == payload:
                out.append(data)
    return out


class BusFaultTest(FaultCase):
    """The bus misbehaves; the gateway rebuilds the link and its sessions
    carry on."""

    def healthy_again(self, bus, gw, sub, feed, topic, heartbeat=HB):
        """Restart bus on its port without its fault; the link comes up,
        the subscription is replayed and data flows again."""
        bus.fault = None
        bus.heartbeat = heartbeat
        bus.restart()
        login = self.wait_subscribed(bus, feed, topic)
        pub = self.client(bus)
        pub.publish(feed, topic, [(None, b"after the fault")])
        ev = sub.expect("DATA")
        self.assertEqual(data_payload(ev), b"after the fault")
        self.expect_bus(sub, "up")
        return login

    def test_cut_mid_message_reconnects_and_resubscribes(self):
        # The bus answers each connection's first subscription with half a
        # message and closes. No heartbeat, so that first subscription is
        # the router's replay, on every new link (no login probe either: its
        # subscription would be the first).
        bus = self.bus(fault="cut-mid-message")
        gw = self.gateway(bus, {"confirm": "none"})
        gw.wait_log(r"bus: connected")
        sub, other = self.session(gw), self.session(gw)
        self.assertEqual(sub.cmd("SUB F T"), "+OK")
        ev = self.expect_bus(sub, "down")
        self.assertIn("in the middle of a message", ev.line)
        self.wait_logins(bus, 3)
        cut = [r for r in bus.run_records()
               if r["event"] == "drop" and "cut-mid-message" in r.get("reason", "")]
        self.assertGreaterEqual(len(cut), 2)
        # every cut link had got the subscription: it was replayed each time
        for r in cut:
            self.assertTrue(self.subs_on(bus, r["conn"], "F", "T"), r)
        # half a message is no message: nothing reached the subscriber
        self.assertTrue(sub.no_event("DATA", wait=0.2))
        st = stats(other)
        self.assertGreaterEqual(int(st["bus_connects"]), 3)
        self.assertEqual(st["bus_protocol_errors"], "0")
        self.assertEqual(st["data_in"], "0")
        self.assertEqual(st["subscriptions"], "1")
        self.assert_alive(gw, sub, other)
        self.healthy_again(bus, gw, sub, "F", "T")
        self.assertEqual(other.pub("F", "T", [(None, b"local")]), "+OK")
        self.assertEqual(data_payload(sub.expect("DATA")), b"local")

    def bad_bytes_case(self, fault, cause_rx):
        bus = self.bus(fault=fault, heartbeat=HB)
        gw = self.gateway(bus, self.heartbeat())
        sub, other = self.session(gw), self.session(gw)
        self.assertEqual(sub.cmd("SUB F T"), "+OK")
        self.wait_log_count(gw, r"<3>bus: protocol error: " + cause_rx, 2)
        ev = self.expect_bus(sub, "down", lambda e: "protocol error" in e.line)
        self.assertRegex(ev.line, cause_rx)
        st = stats(other)
        logins = len(self.logins(bus))
        errors = int(st["bus_protocol_errors"])
        self.assertGreaterEqual(errors, 2)
        self.assertLessEqual(errors, logins, "more protocol errors than links")
        self.assertEqual(st["bus_msgs_in"], "0", "bad bytes were taken for a message")
        self.assertNotEqual(st["bus_state"], "up")
        self.assertEqual(st["data_in"], "0")
        self.assertEqual(st["sessions"], "2")
        self.assertTrue(sub.no_event("DATA", wait=0.1))
        self.assert_alive(gw, sub, other)
        self.healthy_again(bus, gw, sub, "F", "T")
        st = stats(other)
        self.assertGreaterEqual(int(st["bus_protocol_errors"]), errors)
        self.assertEqual(st["bus_state"], "up")
        return gw

    def test_garbage_from_bus(self):
        self.bad_bytes_case("garbage", r"unknown message type 238")

    def test_oversize_length_from_bus(self):
        gw = self.bad_bytes_case("oversize", r"\S.*2147483647")
        self.assertRegex(gw.log(), r"protocol error: .*(limit|too long|exceeds|large)")

    # -- TLS damaged in the middle of a record (TlsDamageProxy)

    def tls_damage_case(self, mode, hb_timeout=HB_TIMEOUT):
        bus = self.bus(heartbeat=HB)
        proxy = self.proxy(bus)
        gw = self.gateway(bus, self.heartbeat(hb_timeout, port=proxy.port))
        sub, other = self.session(gw), self.session(gw)
        self.assertEqual(sub.cmd("SUB F T"), "+OK")
        self.wait_subscribed(bus, "F", "T")
        pub = self.client(bus)
        pub.publish("F", "T", [(None, b"before")])
        self.assertEqual(data_payload(sub.expect("DATA")), b"before")
        if not sub.hello.line.endswith("bus=up"):   # the probe may have been quicker
            self.expect_bus(sub, "up")
        proxy.arm(mode)
        self.assertTrue(proxy.fired.wait(TIMEOUT), "no record came to damage")
        down = self.expect_bus(sub, "down")
        self.expect_bus(sub, "up")
        login = self.wait_subscribed(bus, "F", "T")
        self.assertEqual(len(self.logins(bus)), 2)
        self.assertEqual(proxy.accepted, 2)
        pub.publish("F", "T", [(None, b"after")])
        self.assertEqual(data_payload(sub.expect("DATA")), b"after")
        self.assertTrue(sub.no_event("DATA", wait=0.1), "a damaged record became data")
        st = stats(other)
        self.assertEqual(st["bus_connects"], "2")
        self.assertEqual(st["bus_state"], "up")
        self.assertEqual(st["data_in"], "2")
        self.assert_alive(gw, sub, other)
        self.assertIsNotNone(login)
        return gw, down, st

    def test_tls_record_truncated_and_closed(self):
        gw, down, st = self.tls_damage_case("cut")
        self.assertRegex(down.line, r"BUS down \S")
        self.assertEqual(st["bus_heartbeat_timeouts"], "0")

    def test_tls_record_truncated_then_silence(self):
        # half a record, then nothing: only the heartbeat watchdog can tell
        gw, down, st = self.tls_damage_case("stall", hb_timeout="1s")
        self.assertIn("no heartbeat within 1s", down.line)
        self.assertEqual(st["bus_heartbeat_timeouts"], "1")

    def test_tls_record_corrupted(self):
        gw, down, st = self.tls_damage_case("corrupt")
        self.assertRegex(down.line, r"bad record mac|decrypt")
        self.assertEqual(st["bus_protocol_errors"], "0",
                         "a TLS failure is not a bus protocol error")

    # -- the link never comes up

    def test_tls_handshake_stall_times_out_and_retries(self):
        bus = self.bus(fault="stall-tls", heartbeat=HB)
        gw = self.gateway(bus, self.heartbeat(connect_timeout="300ms"))
        s = self.session(gw)
        self.assertRegex(s.hello.line, r" bus=down$")
        self.wait_log_count(gw, r"bus: down: timeout after 300ms in the TLS handshake "
                            r"with 127\.0\.0\.1:%d" % bus.port, 1)
        wait_until(lambda: len(bus.events("open")) >= 3, what="retries")
        self.assertEqual(s.cmd("SUB F T"), "+OK")
        reply = s.pub("F", "T", [(None, b"nowhere")])
        self.assertRegex(reply, r"^-ERR bus-down ")
        st = stats(s)
        self.assertEqual(st["bus_connects"], "0")
        self.assertGreaterEqual(int(st["bus_reconnects"]), 2)
        self.assertIn("TLS handshake", st["bus_last_error"])
        self.assertEqual(self.logins(bus), [])
        self.assert_alive(gw, s)
        self.healthy_again(bus, gw, s, "F", "T")
        self.assertEqual(bus_received(bus, "F", "T", b"nowhere"), [])

    def test_silent_bus_no_heartbeat_reconnects(self):
        bus = self.bus(fault="silent", heartbeat=HB)
        gw = self.gateway(bus, self.heartbeat(SHORT_HB_TIMEOUT))
        s, other = self.session(gw), self.session(gw)
        self.assertEqual(s.cmd("SUB F T"), "+OK")
        ev = self.expect_bus(s, "down")
        self.assertEqual(ev.line, "BUS down no heartbeat: not authenticated or dead")
        self.expect_bus(s, "unconfirmed")
        wait_until(lambda: int(stats(other)["bus_heartbeat_timeouts"]) >= 2,
                   what="a second heartbeat timeout")
        st = stats(other)
        self.assertGreaterEqual(int(st["bus_connects"]), 2)
        self.assertEqual(st["bus_msgs_in"], "0")
        self.assertNotEqual(st["bus_state"], "up")
        self.assertEqual(st["bus_last_error"], "no heartbeat: not authenticated or dead")
        self.assert_alive(gw, s, other)
        self.healthy_again(bus, gw, s, "F", "T")

    def test_trickling_bus_is_declared_dead(self):
        # After login the bus sends a 4 KiB message a byte every 50 ms and
        # nothing else: bytes keep coming, a whole message never does (for
        # over 3 minutes). The watchdog counts messages, not bytes, so the
        # link is dead after its 1 s timeout, well inside TIMEOUT.
        bus = self.bus(fault="trickle", heartbeat=HB)
        gw = self.gateway(bus, self.heartbeat("1s"))
        s, other = self.session(gw), self.session(gw)
        ev = self.expect_bus(s, "down")
        self.assertRegex(ev.line, r"^BUS down no complete message within 1s "
                         r"\(\d+ bytes of an unfinished one arrived\)")
        st = stats(other)
        self.assertGreaterEqual(int(st["bus_heartbeat_timeouts"]), 1)
        self.assertEqual(st["bus_msgs_in"], "0")
        self.assertEqual(st["bus_auth_failures"], "0")
        self.assert_alive(gw, s, other)
        self.assertEqual(s.cmd("SUB F T"), "+OK")
        self.healthy_again(bus, gw, s, "F", "T")

    def test_tls_error_after_login_is_not_an_auth_failure(self):
        # Right after the login the server asks for a renegotiation; the
        # gateway refuses it and the server ends the link with a fatal
        # alert. That is a TLS failure with a reason of its own, not the
        # silent close of a rejected login: said as such, normal backoff.
        srv = RenegotiatingServer(make_pki(os.path.join(self.dir, "pki")), "gwpass")
        self.closers.append(srv)
        gw = Gateway(self.dir, srv, config={"bus": {"auth_fail_window": "10s"}})
        self.gws.append(gw)
        gw.start()
        self.assertTrue(srv.renegotiated.wait(TIMEOUT), "the login never arrived")
        gw.wait_log(r"bus: down: ")
        gw.wait_log(r"bus: retry 1 ")
        s = self.session(gw)
        st = stats(s)
        self.assertRegex(st["bus_last_error"], r"^TLS error: .*handshake failure")
        self.assertEqual(st["bus_auth_failures"], "0")
        log = gw.log()
        self.assertRegex(log, r"bus: down: TLS error: .*handshake failure")
        self.assertNotIn("authentication", log)
        self.assertNotIn("protocol mismatch", log)
        self.assert_alive(gw, s)

    def test_publish_into_unconfirmed_silent_link_is_not_lost(self):
        # A silent bus is what a failed login looks like (defect 2). A PUB
        # answered +OK must reach the bus (once a link is confirmed); one
        # that cannot must get -ERR. Nothing may vanish into the silence.
        bus = self.bus(fault="silent", heartbeat=HB)
        gw = self.gateway(bus, self.heartbeat("1s"))
        s = self.session(gw)
        if "bus=unconfirmed" not in s.hello.line:
            self.expect_bus(s, "unconfirmed")
        replies = [s.pub("F", "T", [(None, b"m%d" % i)]) for i in range(3)]
        self.expect_bus(s, "down")
        bus.fault = None
        bus.restart()
        self.expect_bus(s, "up")
        for r in replies:
            self.assertRegex(r, r"^(\+OK|-ERR bus-down )")

        def lost():
            return [i for i, r in enumerate(replies)
                    if r == "+OK" and not bus_received(bus, "F", "T", b"m%d" % i)]
        try:
            wait_until(lambda: not lost(), what="the PUBs answered +OK to reach the bus")
        except AssertionError:
            self.fail("PUBs answered +OK never reached the bus: %r (replies %r)"
                      % (lost(), replies))

    def test_link_lost_with_queued_publishes_is_reported(self):
        bus = self.bus(heartbeat=HB)
        gw = self.gateway(bus, self.heartbeat("30s", output_high_water="256KiB"))
        pub, other = self.session(gw), self.session(gw)
        if "bus=up" not in pub.hello.line:
            self.expect_bus(pub, "up")
        bus.signal(signal.SIGSTOP)
        replies = []
        payload = b"x" * 1000000

        def publish():
            for i in range(40):
                try:
                    replies.append(pub.pub("F", "T", [(None, payload)]))
                except (OSError, EOFError, TimeoutError) as e:
                    replies.append("exception %s" % e)
                    return
        t = threading.Thread(target=publish, daemon=True)
        t.start()
        try:
            gw.wait_log(r"bus output over its high-water mark")
        finally:
            bus.kill()            # SIGKILL: the kernel resets the connection
        t.join(TIMEOUT * 2)
        self.assertFalse(t.is_alive())
        self.expect_bus(other, "down")
        ok = replies.count("+OK")
        self.assertGreater(ok, 0)
        for r in replies:
            self.assertRegex(r, r"^(\+OK|-ERR bus-down )")
        self.assertEqual(bus_received(bus, "F", "T"), [])
        self.assert_alive(gw, pub, other)
        # Those +OK'd messages are gone; what was still in the daemon's
        # hands when the link failed is known to be lost and must be said,
        # with how much.
        self.assertRegex(gw.log(), r"<4>bus: .*\d+ bytes.*(unsent|lost|discard)",
                         "%d publishes answered +OK were dropped silently" % ok)


class SessionFaultTest(FaultCase):
    """Local clients misbehave; the others do not notice."""

    def test_100mb_without_newline(self):
        bus = self.bus(heartbeat=HB)
        gw = self.gateway(bus, self.heartbeat())
        s, other = self.session(gw), self.session(gw)
        self.assertEqual(other.cmd("SUB F T"), "+OK")
        self.wait_subscribed(bus, "F", "T")
        pid = gw.proc.pid
        rss_before = proc_status(pid, "VmRSS")
        chunk = b"x" * MIB
        sent = 0
        for i in range(100):
            s.send(chunk)
            sent += len(chunk)
            if i == 50:     # the daemon keeps serving others meanwhile
                self.assertEqual(other.cmd("PING middle"), "PONG middle")
        s.send(b"\nPING after\n")
        self.assertRegex(s.reply(), r"^-ERR line-too-long ")
        self.assertEqual(s.reply(), "PONG after")
        # the session is usable: subscribe, publish, receive
        self.assertEqual(s.cmd("SUB F T"), "+OK")
        self.assertEqual(s.pub("F", "T", [(None, b"still here")]), "+OK")
        for who in (s, other):
            self.assertEqual(data_payload(who.expect("DATA")), b"still here")
        rss_after = proc_status(pid, "VmRSS")
        peak = proc_status(pid, "VmHWM")
        st = stats(other)
        self.assertEqual(st["sessions"], "2")
        self.assert_alive(gw, s, other)
        if BUSGATED_IS_SANITIZED:
            return      # ASan's quarantine keeps freed buffers resident
        sys.stderr.write("\n  RSS %+d KiB, peak %+d KiB for a %d MiB line ... "
                         % (rss_after - rss_before, peak - rss_before, sent // MIB))
        self.assertLess(rss_after - rss_before, 50 * 1024,
                        "RSS grew %d KiB for a %d MiB line" % (rss_after - rss_before,
                                                              sent // MIB))
        self.assertLess(peak - rss_before, 50 * 1024,
                        "peak RSS grew %d KiB for a %d MiB line" % (peak - rss_before,
                                                                   sent // MIB))

    def test_never_reading_subscriber_among_publishers(self):
        bus = self.bus(heartbeat=HB)
        gw = self.gateway(bus, self.heartbeat(), {"listen": {"max_output": "64KiB"}})
        slow, fast = self.session(gw), self.session(gw)
        pubs = [self.session(gw), self.session(gw)]
        for s in (slow, fast):
            self.assertEqual(s.cmd("SUB F T"), "+OK")
        self.wait_subscribed(bus, "F", "T")
        filler = b"." * 1000
        seq = [0, 0]
        got = [0, 0]
        rounds = 0
        # Rounds of 25 messages from each publisher: fast reads each round,
        # slow never reads, so its queue grows until it is cut off.
        while True:
            rounds += 1
            self.assertLess(rounds, 200, "the slow consumer was never cut off")
            for p, s in enumerate(pubs):
                batch = []
                for _ in range(25):
                    batch.append(b"PUB F T delta %d\n%d:%06d%s\n"
                                 % (8 + len(filler), p, seq[p], filler))
                    seq[p] += 1
                s.send(b"".join(batch))
            for s in pubs:
                for _ in range(25):
                    self.assertEqual(s.reply(), "+OK")
            for _ in range(50):
                data = data_payload(fast.expect("DATA"))
                p, n = int(data[:1]), int(data[2:8])
                self.assertEqual(n, got[p], "publisher %d out of order" % p)
                got[p] += 1
            if int(stats(fast)["slow_consumers"]):
                break
        self.assertEqual(got, seq)
        lines = []
        try:
            while True:
                lines.append(slow._read_line(time.monotonic() + TIMEOUT))
        except EOFError:
            pass
        self.assertRegex(lines[-1], r"^-ERR slow-consumer ")
        gw.wait_log(r"slow consumer")
        # the others carry on
        for s in pubs:
            self.assertEqual(s.pub("F", "T", [(None, b"9:end")]), "+OK")
        for _ in pubs:
            self.assertEqual(data_payload(fast.expect("DATA")), b"9:end")
        st = stats(fast)
        self.assertEqual(st["slow_consumers"], "1")
        self.assertEqual(st["sessions"], "3")
        self.assert_alive(gw, fast, *pubs)

    def test_sighup_storm_during_traffic(self):
        # 50 reloads one after another (every tenth moves the link between
        # the bus and a proxy to it), then a burst of 20 SIGHUPs, while a
        # local publisher and subscribers run. Every PUB answered +OK
        # reaches the bus; a PUB that could not be sent got -ERR bus-down.
        bus = self.bus(heartbeat=HB)
        proxy = self.proxy(bus)
        gw = self.gateway(bus, self.heartbeat())
        pub, sub, watcher = self.session(gw), self.session(gw), self.session(gw)
        self.assertEqual(sub.cmd("SUB F T"), "+OK")
        self.wait_subscribed(bus, "F", "T")
        remote = self.client(bus, "sub")
        remote.subscribe("F", "T")
        bus.sync(remote)
        results = []
        stop = threading.Event()
        failure = []

        def publish():
            i = 0
            try:
                while not stop.is_set():
                    results.append((i, pub.pub("F", "T", [(None, b"%d" % i)])))
                    i += 1
                    time.sleep(0.002)
            except Exception as e:  # reported by the main thread
                failure.append(e)
        t = threading.Thread(target=publish, daemon=True)
        t.start()
        ports = [bus.port, proxy.port]
        moves = 0
        try:
            for n in range(1, 51):
                cfg = {"log": {"level": "info" if n % 2 else "debug"}}
                if n % 10 == 0:
                    moves += 1
                    cfg["bus"] = dict(gw.overrides["bus"], port=ports[moves % 2])
                gw.write_config(dict(gw.overrides, **cfg))
                gw.reload()
                self.wait_log_count(gw, r"<5>reloaded ", n)
                if n % 10 == 0:
                    self.wait_log_count(gw, r"bus: up", moves + 1)
            for _ in range(20):
                gw.reload()
            time.sleep(0.3)
        finally:
            stop.set()
            t.join(TIMEOUT)
        self.assertEqual(failure, [])
        self.assertFalse(t.is_alive())
        self.assertIsNone(gw.proc.poll(), "busgated died in the storm")
        self.assertEqual(proxy.accepted, 3)     # moves 1, 3, 5 went through it
        self.assertIn("bus: connection settings changed", gw.log())
        # a last message once the link is stable marks the end
        wait_until(lambda: pub.pub("F", "T", [(None, b"end")]) == "+OK", what="a last +OK")
        ok = [i for i, r in results if r == "+OK"]
        refused = [i for i, r in results if r != "+OK"]
        for i, r in results:
            self.assertRegex(r, r"^(\+OK|-ERR bus-down )", "message %d" % i)
        self.assertGreater(len(ok), 0)
        # the remote subscriber: everything +OK'd, nothing refused, once each
        seen = []
        while True:
            m = remote.expect("ForwardedMulticastData", timeout=TIMEOUT)
            if not m.data_packets:
                continue    # stale: the gateway's old link was the publisher
            data = b"".join(p.data or b"" for p in m.data_packets)
            if data == b"end":
                break
            seen.append(int(data))
        self.assertEqual(sorted(seen), ok,
                         "lost: %s, refused yet delivered: %s, duplicated: %s" % (
                             sorted(set(ok) - set(seen)), sorted(set(seen) & set(refused)),
                             sorted(i for i in set(seen) if seen.count(i) > 1)))
        # the local subscriber: in order, no duplicates (messages that
        # went out while its subscription moved to the new link may miss it)
        local = []
        while True:
            ev = sub.expect("DATA")
            if not ev.payloads:
                continue    # stale, as above
            data = data_payload(ev)
            if data == b"end":
                break
            local.append(int(data))
        self.assertEqual(local, sorted(set(local)))
        self.assertTrue(set(local) <= set(ok))
        st = stats(watcher)
        self.assertEqual(st["bus_state"], "up")
        self.assertEqual(st["sessions"], "3")
        self.assertGreaterEqual(int(st["bus_connects"]), 6)
        self.assert_alive(gw, pub, sub, watcher)
        if sorted(seen) != seen:
            sys.stderr.write("note: the bus saw %d publishes out of order across link moves\n"
                             % sum(1 for a, b in zip(seen, seen[1:]) if b < a))


if __name__ == "__main__":
    unittest.main(verbosity=2)
