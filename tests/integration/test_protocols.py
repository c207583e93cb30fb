#!/usr/bin/env python3
"""bus.protocol end to end: the real busgated against the test bus speaking
protocol 3, 4 (= 5) or 6 (tests/testbus --protocol).

Login with a password and with a token at each protocol (the connection
string from 4, with Application=busgate@<host> or bus.application), data
both ways through the line protocol, and a secret or setting holding ';'
refused at 4 with a clear error before anything is sent.
"""

import os
import shutil
import socket
import subprocess
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from gwtest import BUSGATED, Gateway, TestBus, tempdir  # noqa: E402
from control import DEFAULT_JWT_SECRET, make_jwt  # noqa: E402

HB = 0.1


class ProtocolCase(unittest.TestCase):

    def setUp(self):
        self.dir = tempdir("busgate-proto-")
        self.buses, self.gws = [], []

    def tearDown(self):
        for gw in self.gws:
            gw.stop()
        for bus in self.buses:
            bus.stop()
        if not os.environ.get("BUSGATE_KEEP"):
            shutil.rmtree(self.dir, ignore_errors=True)

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
