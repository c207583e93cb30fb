#!/usr/bin/env python3
"""bus.protocol end to end: the real busgated against the test bus speaking
protocol 3, 4 (= 5) or 6 (tests/testbus --protocol).

Login with a password and with a token at each protocol (the connection
string from 4, with Application=busgate@<host> or bus.application), data
both ways through the line protocol, and a secret or setting holding ';'
refused at 4 with a clear error before anything is sent.
"""

import os
import re
import socket
import subprocess
import sys
import threading
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from gwtest import BUSGATED, TIMEOUT, BusesCase, Gateway, TestBus, wait_until  # noqa: E402
from control import DEFAULT_JWT_SECRET, make_jwt  # noqa: E402

HB = 0.1


class ProtocolCase(BusesCase):
    DIR_PREFIX = "busgate-proto-"

    def bus(self, protocol, **kw):
        b = TestBus(self.dir, name="bus%d" % protocol, protocol=protocol,
                    heartbeat=HB, **kw)
        b.start()
        self.buses.append(b)
        return b

    def gateway(self, bus, protocol, extra=None, start=True, **kw):
        cfg = {"bus": dict({"protocol": protocol,
                            "heartbeat": {"timeout": "5s"}}, **(extra or {}))}
        gw = Gateway(self.dir, bus, config=cfg, name="gw%d" % len(self.gws), **kw)
        self.gws.append(gw)
        if start:
            gw.start()
        return gw

    def login(self, bus):
        bus.wait_for(lambda r: r["event"] in ("login", "login-failed"))
        return [r for r in bus.run_records() if r["event"] in ("login", "login-failed")][0]

    def roundtrip(self, gw):
        """SUB, PUB, DATA back through the bus; UNSUB."""
        gw.wait_log(r"bus: up")
        s = gw.session()
        self.addCleanup(s.close)
        self.assertEqual(s.cmd("SUB F T"), "+OK")
        self.assertEqual(s.pub("F", "T", [(None, b"hello")]), "+OK")
        d = s.expect("DATA").data_fields()
        self.assertIn(b"hello", repr(d).encode())
        self.assertEqual(s.cmd("UNSUB F T"), "+OK")


class LoginTest(ProtocolCase):

    def check_password(self, protocol, app=None):
        bus = self.bus(protocol)
        gw = self.gateway(bus, protocol, {"application": app} if app else None)
        rec = self.login(bus)
        self.assertEqual((rec["event"], rec["user"]), ("login", "gw"))
        if protocol >= 4:
            self.assertEqual(rec["application"],
                             app or "busgate@%s" % socket.gethostname())
        else:
            self.assertNotIn("application", rec)
        self.roundtrip(gw)

    def test_password_at_3(self):
        self.check_password(3)

    def test_password_at_4(self):
        self.check_password(4)

    def test_password_at_5_is_4(self):
        self.check_password(5, app="pricing-gw")

    def test_password_at_6(self):
        self.check_password(6)

    def check_token(self, protocol):
        bus = self.bus(protocol, auth="jwt")
        token = make_jwt(DEFAULT_JWT_SECRET, "gw", 3600)
        gw = self.gateway(bus, protocol, auth="token", token=token)
        rec = self.login(bus)
        self.assertEqual((rec["event"], rec["user"], rec["auth"]), ("login", "gw", "jwt"))
        self.roundtrip(gw)

    def test_token_at_4(self):
        self.check_token(4)

    def test_token_at_6(self):
        self.check_token(6)


class VerbsTest(ProtocolCase):
    """Every verb of the line protocol through the daemon at 3, 4 and 6; at
    6 with content types on PUB, SEND and DATA."""

    def check_verbs(self, protocol):
        ct = protocol >= 6
        bus = self.bus(protocol, feeds={"secure": {"authorization_required": True}})
        gw = self.gateway(bus, protocol)
        gw.wait_log(r"bus: up")
        a, b, c = gw.session(), gw.session(), gw.session()
        for s in (a, b, c):
            self.addCleanup(s.close)
        self.assertIn(" bus_protocol=%d" % protocol, a.hello.line)
        typed = lambda t: (" type=" + t) if ct else ""
        # NOTIFY, SUB: the gateway's own subscription is notified, with its id
        self.assertEqual(a.cmd("NOTIFY prices"), "+OK")
        self.assertEqual(a.cmd("SUB prices AAPL"), "+OK")
        gwid = a.expect("NOTIFICATION").args[1]
        # PUB, with a content type at 6
        self.assertEqual(b.cmd("PUB prices AAPL delta%s 5" % typed("application/json"),
                               b"hello"), "+OK")
        d = a.expect("DATA")
        self.assertEqual((d.data_fields()["packets"], d.content_type()),
                         ([(None, b"hello")], "application/json" if ct else None))
        # SEND to the gateway's id: unicast
        self.assertEqual(b.cmd("SEND %s prices AAPL image%s 3" % (gwid, typed("img")),
                               b"abc"), "+OK")
        d = a.expect("DATA", lambda e: e.words[6] == "unicast")
        self.assertEqual((d.words[5], d.content_type()), ("image", "img" if ct else None))
        self.assertEqual(a.cmd("UNNOTIFY prices"), "+OK")
        # AUTHORIZER, AUTHORIZE, UNAUTHORIZER
        self.assertEqual(c.cmd("AUTHORIZER secure"), "+OK")
        self.assertEqual(b.cmd("SUB secure T"), "+OK")
        req = c.expect("AUTHREQ")
        self.assertEqual(c.cmd("AUTHORIZE %s secure T not-required" % req.args[0]), "+OK")
        self.assertEqual(c.cmd("UNAUTHORIZER secure"), "+OK")
        self.assertEqual(a.cmd("PUB secure T delta 1", b"x"), "+OK")
        self.assertEqual(b.expect("DATA").data_fields()["packets"], [(None, b"x")])
        # PING, STATS, VERBOSE, UNSUB, QUIT
        a.send("PING p%d\n" % protocol)
        self.assertEqual(a.reply(), "PONG p%d" % protocol)
        self.assertGreaterEqual(int(a.stats()["data_in"]), 3)
        a.send("VERBOSE off\nUNSUB prices AAPL\nVERBOSE on\n")
        self.assertEqual((a.reply(), a.reply()), ("+OK", "+OK"))  # the two VERBOSEs
        self.assertTrue(a.cmd("UNSUB prices AAPL").startswith("-ERR not-subscribed"))
        self.assertEqual(a.cmd("QUIT"), "+OK")
        # a content type cannot be sent below 6
        reply = b.cmd("PUB prices AAPL image type=t 1", b"z")
        if ct:
            self.assertEqual(reply, "+OK")
        else:
            self.assertEqual(reply, "-ERR syntax type= needs bus protocol 6; the bus "
                             "speaks %d, which has only image or delta" % protocol)
        self.assertEqual(b.cmd("PING"), "PONG")   # the payload was skipped

    def test_verbs_at_3(self):
        self.check_verbs(3)

    def test_verbs_at_4(self):
        self.check_verbs(4)

    def test_verbs_at_6(self):
        self.check_verbs(6)


class ClientsAt6Test(ProtocolCase):
    """The client libraries publish with a content type at 6 (libbusgate's
    bg_publish_typed, the python package's content_type=), and read it
    back; below 6 both are refused (test_libbusgate, and here)."""

    def test_libbusgate_content_type(self):
        bus = self.bus(6)
        gw = self.gateway(bus, 6)
        gw.wait_log(r"bus: up")
        prog = os.path.join(os.path.dirname(BUSGATED), "..", "tests", "lib", "test_libbusgate")
        r = subprocess.run([prog, gw.socket_path, "content_type"], capture_output=True,
                           text=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)

    def test_python_and_cli_content_type(self):
        sys.path.insert(0, os.path.join(HERE, "..", "..", "python"))
        import busgate
        cli = os.environ.get("BUSGATE") or os.path.join(os.path.dirname(BUSGATED), "busgate")
        for protocol in (3, 6):
            bus = self.bus(protocol)
            gw = self.gateway(bus, protocol)
            gw.wait_log(r"bus: up")
            pub = [cli, "--socket", gw.socket_path, "pub", "typed", "t", "--type", "text/csv"]
            with busgate.connect(gw.socket_path) as a:
                a.subscribe("typed", "t")
                if protocol < 6:
                    with self.assertRaises(busgate.BusgateError) as cm:
                        a.publish("typed", "t", b"{}", content_type="application/json")
                    self.assertEqual(cm.exception.code, "syntax")
                    r = subprocess.run(pub, input=b"a,b\n", capture_output=True, timeout=30)
                    self.assertEqual(r.returncode, 1, r.stderr)     # refused
                    self.assertIn(b"needs bus protocol 6", r.stderr)
                    continue
                sub = subprocess.Popen([cli, "--socket", gw.socket_path, "sub", "typed", "t",
                                        "--count", "2"], stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE)
                self.addCleanup(sub.kill)
                wait_until(lambda: a.stats()["subscriptions"] == "2", what="the CLI's SUB")
                a.publish("typed", "t", b"{}", content_type="application/json; v=1")
                ev = next(e for e in a.events(timeout=10) if isinstance(e, busgate.Data))
                self.assertEqual((ev.content_type, ev.packets[0].data),
                                 ("application/json; v=1", b"{}"))
                r = subprocess.run(pub, input=b"a,b\n", capture_output=True, timeout=30)
                self.assertEqual(r.returncode, 0, r.stderr)
                ev = next(e for e in a.events(timeout=10) if isinstance(e, busgate.Data))
                self.assertEqual((ev.content_type, ev.packets[0].data), ("text/csv", b"a,b"))
                out, err = sub.communicate(timeout=30)
                self.assertEqual(sub.returncode, 0, err)
                self.assertEqual([line.split(" ")[4:7] for line in out.decode().splitlines()],
                                 [["delta", "type=application/json;%20v=1", "-"],
                                  ["delta", "type=text/csv", "-"]])


class ContentTypeCacheTest(ProtocolCase):
    """At 6 the image cache does not depend on a flag: a unicast (selectfeed)
    image and a configured image content type are images, the rest deltas."""

    def test_late_joiner_at_6(self):
        bus = self.bus(6)
        gw = self.gateway(bus, 6, start=False)
        gw.overrides["router"] = {"image_content_types": "image/x-snap, application/x-image"}
        gw.write_config()
        gw.start()
        gw.wait_log(r"bus: up")
        a, b, c = gw.session(), gw.session(), gw.session()
        for s in (a, b, c):
            self.addCleanup(s.close)
        self.assertEqual(a.cmd("NOTIFY sel"), "+OK")
        self.assertEqual(a.cmd("SUB sel T"), "+OK")
        gwid = a.expect("NOTIFICATION").args[1]
        # an image flag without a content type is a delta at 6: nothing cached
        self.assertEqual(b.cmd("PUB sel T image 2", b"d0"), "+OK")
        self.assertEqual(a.expect("DATA").words[5], "delta")
        self.assertEqual(c.cmd("SUB sel T"), "+OK")
        self.assertEqual(c.cmd("UNSUB sel T"), "+OK")   # no DATA came before +OK
        # the selectfeed image: a unicast is an image whatever its type
        self.assertEqual(b.cmd("SEND %s sel T delta type=text/csv 2" % gwid, b"i1"), "+OK")
        self.assertEqual(a.expect("DATA").words[5:7], ["image", "unicast"])
        self.assertEqual(b.cmd("PUB sel T delta type=text/csv 2", b"d1"), "+OK")
        a.expect("DATA")
        self.assertEqual(c.cmd("SUB sel T"), "+OK")
        got = [c.expect("DATA") for _ in range(2)]
        self.assertEqual([(e.words[5], e.payloads) for e in got],
                         [("image", [b"i1"]), ("delta", [b"d1"])])
        self.assertEqual([e.content_type() for e in got], ["text/csv", "text/csv"])
        # a configured image type replaces the cache
        self.assertEqual(b.cmd("PUB sel T image type=application/x-image 2", b"i2"), "+OK")
        self.assertEqual(c.expect("DATA").words[5], "image")
        self.assertEqual(a.cmd("UNSUB sel T"), "+OK")
        self.assertEqual(a.cmd("SUB sel T"), "+OK")
        e = a.expect("DATA")
        self.assertEqual((e.words[5], e.payloads, e.content_type()),
                         ("image", [b"i2"], "application/x-image"))

    def test_stale_at_6(self):
        bus = self.bus(6)
        gw = self.gateway(bus, 6)
        gw.wait_log(r"bus: up")
        a = gw.session()
        self.addCleanup(a.close)
        self.assertEqual(a.cmd("SUB st T"), "+OK")
        p = bus.client("gw")
        self.addCleanup(p.close)
        p.publish("st", "T", [(None, b"v")], content_type="text/plain")
        self.assertEqual(a.expect("DATA").content_type(), "text/plain")
        p.close()
        e = a.expect("DATA")
        self.assertEqual(e.line, 'DATA st T "" "" image multicast')


class MismatchTest(ProtocolCase):
    """A wrong bus.protocol fails silently or with garbage: the daemon says
    "possible bus protocol mismatch (bus.protocol=N)" once, with the fix."""

    HINT = r"possible bus protocol mismatch \(bus\.protocol=%d\)"

    def check_hint_once(self, gw, protocol, sign):
        gw.wait_log(self.HINT % protocol + r": " + sign)
        self.assertRegex(gw.log(), r"set bus\.protocol to 3 \(distributor 3\.x\), "
                                   r"4 \(4\.0\.0 to 5\.x\) or 6")
        # it keeps retrying, and says it once
        wait_until(lambda: len(re.findall(r"bus: connecting to", gw.log())) >= 3,
                   what="two reconnections")
        self.assertEqual(len(re.findall(self.HINT % protocol, gw.log())), 1)

    def test_gateway_3_bus_4_login_closed(self):
        bus = self.bus(4)
        gw = self.gateway(bus, 3)
        self.check_hint_once(gw, 3, "the distributor closed the link right after the login")
        self.assertIn("without '='", self.login(bus)["reason"])

    def test_gateway_4_bus_3_login_silent(self):
        # the real v3 distributor leaves a failed login open and silent
        bus = self.bus(3, defects=["silent-login"])
        gw = self.gateway(bus, 4, {"heartbeat": {"timeout": "300ms"}})
        gw.wait_log(r"no heartbeat: not authenticated or dead")
        self.check_hint_once(gw, 4, "nothing came back after the login")

    def test_gateway_6_bus_4_garbage(self):
        bus = self.bus(4)
        gw = self.gateway(bus, 6)
        gw.wait_log(r"bus: protocol error: .*contentType")
        self.check_hint_once(gw, 6, "a message among the first the distributor "
                                    "sent could not be decoded")

    def test_gateway_4_bus_6_garbage(self):
        bus = self.bus(6)
        gw = self.gateway(bus, 4)
        self.check_hint_once(gw, 4, "a message among the first the distributor "
                                    "sent could not be decoded")

    def test_no_hint_when_the_protocol_matches(self):
        bus = self.bus(4)
        gw = self.gateway(bus, 4)
        self.roundtrip(gw)
        self.assertNotRegex(gw.log(), r"possible bus protocol mismatch")


class HeartbeatTest(ProtocolCase):
    """v6 authorization is distributor-wide: with no authorizer for
    __admin__ the heartbeat subscription is never added. Traffic still
    flows, so the daemon says "none received" (not "stopped") and what to
    check, in its log and in STATS bus_heartbeat."""

    def test_receiving(self):
        bus = self.bus(6)
        gw = self.gateway(bus, 6)
        gw.wait_log(r"bus: up")
        s = gw.session()
        self.addCleanup(s.close)
        wait_until(lambda: s.stats()["bus_heartbeat"] == "receiving",
                   what="heartbeats counted")

    def test_none_received_while_traffic_flows(self):
        """The link must never be idle for the heartbeat timeout, or the
        watchdog takes it down: a ticker thread publishes every 50 ms, a
        hundredth of the 5 s timeout, so that a loaded machine's stalls (a
        tick not yet routed, a thread not scheduled) cannot idle it."""
        bus = self.bus(6, feeds={"__admin__": {"authorization_required": True}})
        gw = self.gateway(bus, 6, {"heartbeat": {"timeout": "5s"}})
        s = gw.session()
        self.addCleanup(s.close)
        self.assertEqual(s.cmd("SUB F T"), "+OK")
        p = bus.client("gw")
        self.addCleanup(p.close)
        stop = threading.Event()
        ticker = threading.Thread(target=self.tick, args=(p, stop), daemon=True)
        ticker.start()
        self.addCleanup(ticker.join, TIMEOUT)
        self.addCleanup(stop.set)
        rx = re.compile(r"no heartbeat received in 5s although the link carries "
                        r"traffic \(so the login worked\): check that the distributor "
                        r"has a heartbeat interval and, at bus\.protocol 6 with "
                        r"authorization on .* an authorizer grants __admin__/heartbeat")
        wait_until(lambda: rx.search(gw.log()), what="the no-heartbeat warning")
        st = s.stats()      # while the ticks still flow
        self.assertEqual((st["bus_heartbeat"], st["bus_heartbeats_in"], st["bus_state"],
                          st["bus_heartbeat_timeouts"]),
                         ("none-received", "0", "up", "0"))
        self.assertIn(b"tick", repr(s.expect("DATA").data_fields()).encode())
        self.assertNotRegex(gw.log(), r"heartbeats stopped")

    @staticmethod
    def tick(p, stop):
        """Traffic on the gateway's link until stop is set (a tick sent
        before the gateway's SUB reached the bus is simply not routed)."""
        while not stop.wait(0.05):
            p.publish("F", "T", [(None, b"tick")], content_type="t")


class SemicolonTest(ProtocolCase):

    def check_refused(self, gw, pattern):
        r = subprocess.run([BUSGATED, "--check-config", "-c", gw.config_path],
                           capture_output=True, text=True, timeout=30)
        self.assertNotEqual(r.returncode, 0, r.stdout)
        self.assertRegex(r.stderr, pattern)

    def test_password_with_semicolon_refused_at_4(self):
        bus = self.bus(4, users={"gw": "se;cret"})
        gw = self.gateway(bus, 4, start=False, password="se;cret")
        self.check_refused(gw, r"Password contains ';', which bus protocol 4 "
                               r"cannot send.*use bus\.protocol 3")
        # the daemon refuses to start with it, and nothing reaches the bus
        gw.start(wait=False)
        self.assertNotEqual(gw.proc.wait(30), 0)
        self.assertRegex(gw.log(), r"Password contains ';'")
        self.assertEqual([r for r in bus.run_records() if r["event"] == "open"], [])
        gw.proc = None
        gw.logf.close()

    def test_same_password_fine_at_3(self):
        bus = self.bus(3, users={"gw": "se;cret"})
        gw = self.gateway(bus, 3, password="se;cret")
        self.assertEqual(self.login(bus)["event"], "login")
        self.roundtrip(gw)

    def test_setting_with_semicolon_refused_at_6(self):
        bus = self.bus(6)
        gw = self.gateway(bus, 6, {"application": "a;b"}, start=False)
        self.check_refused(gw, r"bus\.application contains ';', which "
                               r"bus\.protocol 6 cannot send")


if __name__ == "__main__":
    unittest.main(verbosity=2)
