#!/usr/bin/env python3
"""Confirming the login without distributor heartbeats (issue 9.5):
bus.confirm probe|heartbeat|none, bus.confirm_feed, bus.confirm_timeout.

The real distributor answers neither a good nor a bad login. With the
default bus.confirm: probe the link subscribes to a topic of its own on
bus.confirm_feed (and registers as its notifier, and publishes to it); the
echo confirms the login and tells the link its client id. Nothing at all
within bus.confirm_timeout is a probable authentication failure; traffic
but no echo (or a not-entitled answer) is a login that worked with the
probe's roles denied, reported as such (STAT bus_confirm probe-denied).
"""

import os
import re
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from gwtest import BusesCase, Gateway, TestBus, wait_until, PROBE_FEED  # noqa: E402

HB = 0.1
FAST_RETRY = {"min": "20ms", "max": "400ms", "reset_after": "5s"}


class ConfirmCase(BusesCase):
    DIR_PREFIX = "busgate-confirm-"

    def bus(self, **kw):
        b = TestBus(self.dir, name="bus%d" % len(self.buses), **kw)
        b.start()
        self.buses.append(b)
        return b

    def gateway(self, bus, extra=None, **kw):
        cfg = {"bus": dict({"reconnect": dict(FAST_RETRY)}, **(extra or {}))}
        gw = Gateway(self.dir, bus, config=cfg, name="gw%d" % len(self.gws), **kw)
        self.gws.append(gw)
        gw.start()
        return gw

    def session(self, gw):
        s = gw.session()
        self.addCleanup(s.close)
        return s

    def probe_msgs(self, bus, type, direction="recv"):
        return [r for r in bus.messages(type, direction=direction)
                if r["fields"].get("feed") == PROBE_FEED]

    def gw_client_id(self, bus):
        return [r for r in bus.events("login") if r.get("user") == "gw"][-1]["client_id"]


class TestProbe(ConfirmCase):

    def test_probe_confirms_a_quiet_bus_and_learns_the_client_id(self):
        # no heartbeats, no traffic: the probe alone confirms the login
        bus = self.bus()
        gw = self.gateway(bus)
        m = gw.wait_log(r"bus: login confirmed by the probe; this link's client id is (\S+)")
        gw.wait_log(r"bus: up")
        self.assertEqual(m.group(1), self.gw_client_id(bus))
        s = self.session(gw)
        self.assertIn("bus=up", s.hello.line)
        st = s.stats()
        self.assertEqual(st["bus_confirm"], "confirmed")
        self.assertEqual(st["bus_client_id"], self.gw_client_id(bus))
        # one probe per link: notify and subscribe on a topic of its own
        # (no publish: no data to a login that may be rejected), then
        # withdrawn; nothing of it reaches the sessions
        subs = self.probe_msgs(bus, "SubscriptionRequest")
        topic = subs[0]["fields"]["topic"]
        self.assertRegex(topic, r"/[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-")
        wait_until(lambda: [r["fields"]["is_add"] for r in
                            self.probe_msgs(bus, "NotificationRequest")] == [True, False],
                   what="the probe's notification withdrawn")
        self.assertEqual([r["fields"]["is_add"] for r in
                          self.probe_msgs(bus, "SubscriptionRequest")], [True, False])
        self.assertEqual(self.probe_msgs(bus, "MulticastData"), [])
        self.assertEqual(s.cmd("PING"), "PONG")
        self.assertEqual(st["notifications_in"], "0")
        self.assertEqual(st["data_in"], "0")

    def test_each_link_probes_a_fresh_topic(self):
        bus = self.bus()
        gw = self.gateway(bus)
        gw.wait_log(r"login confirmed by the probe")
        first = self.gw_client_id(bus)
        start = gw.log_offset()
        bus.drop_all()
        m = gw.wait_log(r"login confirmed by the probe; this link's client id is (\S+)",
                        start=start)
        self.assertNotEqual(m.group(1), first)
        topics = [r["fields"]["topic"] for r in self.probe_msgs(bus, "SubscriptionRequest")
                  if r["fields"]["is_add"]]
        self.assertEqual(len(topics), 2)
        self.assertNotEqual(topics[0], topics[1])

    def test_wrong_password_silent_bus_default_config(self):
        # defaults (bus.confirm probe, confirm_timeout 10s, no heartbeat):
        # a silent rejected login is a probable authentication failure
        # within confirm_timeout, backed off as such
        bus = self.bus(defects=["silent-login"])
        gw = self.gateway(bus, password="Wr0ng-Secret-Pw")
        s = self.session(gw)
        gw.wait_log(r"bus: connected, unconfirmed")
        gw.wait_log(re.escape("bus: down: probable authentication failure (basic, user gw): "
                              "no answer to the login probe within 10s"), timeout=30)
        s.expect("BUS", lambda e: e.words[1] == "down"
                 and "probable authentication failure" in e.line)
        st = s.stats()
        self.assertEqual(st["bus_auth_failures"], "1")
        self.assertNotIn("bus_client_id", st)
        self.assertIn("the distributor may be quiet and deny", gw.log())
        self.assertNotIn("Wr0ng-Secret-Pw", gw.log())

    def test_publish_while_unconfirmed_held_until_a_good_login(self):
        # what an app sees: BUS unconfirmed, PUB +OK (held, not sent to a
        # login that may have been rejected), BUS down with the reason;
        # the held publish goes out once a login is confirmed
        bus = self.bus(defects=["silent-login"])
        gw = self.gateway(bus, {"confirm_timeout": "1s"}, password="Wr0ng-Secret-Pw")
        s = self.session(gw)
        wait_until(lambda: s.pub("F", "T", [(None, b"held-1")]) == "+OK",
                   what="a PUB accepted on an unconfirmed link")
        self.assertEqual(s.stats()["bus_confirm"], "waiting")
        s.expect("BUS", lambda e: e.words[1] == "down"
                 and "probable authentication failure" in e.line)
        self.assertEqual(s.stats()["busdown_queued"], "1")
        gw.password = "gwpass"
        gw.write_config()
        gw.reload()
        rec = bus.wait_for(lambda r: r["event"] == "recv" and r["type"] == "MulticastData"
                           and r["fields"]["feed"] == "F" and r.get("user") == "gw",
                           timeout=20)
        self.assertEqual(bytes.fromhex(rec["fields"]["data_packets"][0]["data_hex"]), b"held-1")
        rejected = {r["conn"] for r in bus.events("login-failed")}
        self.assertTrue(rejected)
        self.assertEqual([r for r in bus.messages("MulticastData", direction="recv")
                          if r["conn"] in rejected and r["fields"]["feed"] != PROBE_FEED],
                         [], "data was sent to a rejected login")
        gw.wait_log(r"sending 1 message \(\d+ bytes\) held until the bus link was ready")

    def test_confirm_heartbeat(self):
        bus = self.bus(heartbeat=HB)
        gw = self.gateway(bus, {"confirm": "heartbeat", "heartbeat": {"timeout": "2s"}})
        gw.wait_log(r"bus: login confirmed by the first heartbeat")
        s = self.session(gw)
        self.assertEqual(s.stats()["bus_confirm"], "confirmed")
        self.assertEqual(self.probe_msgs(bus, "SubscriptionRequest"), [])


class TestProbeDenied(ConfirmCase):
    """Roles that deny the probe are told apart from a bad password."""

    def test_roles_deny_the_probe_on_a_bus_with_traffic(self):
        # no role on the probe's feed: nothing echoes, but heartbeats prove
        # the login: probe-denied, the link stays up
        feeds = {PROBE_FEED: {"authorization_required": False, "impersonation_allowed": False,
                              "proxy_allowed": False, "roles": {"gw": []}}}
        bus = self.bus(heartbeat=HB, feeds=feeds)
        gw = self.gateway(bus, {"confirm_timeout": "1s", "heartbeat": {"timeout": "5s"}})
        gw.wait_log(r"bus: up")
        gw.wait_log(r"the login probe on feed __busgate__ did not come back within 1s "
                    r"although the link carries traffic")
        s = self.session(gw)
        st = s.stats()
        self.assertEqual(st["bus_confirm"], "probe-denied")
        self.assertEqual(st["bus_state"], "up")
        self.assertEqual(st["bus_auth_failures"], "0")
        self.assertNotIn("bus: down", gw.log())
        ignored = [r for r in bus.events("ignore") if "__busgate__" in r.get("reason", "")]
        self.assertTrue(ignored)

    def test_not_entitled_probe(self):
        # an authorizer answers "not entitled": the login is proven by that
        # answer, the probe is denied at once
        feeds = {PROBE_FEED: {"authorization_required": True, "impersonation_allowed": False,
                              "proxy_allowed": False,
                              "roles": {"gw": ["subscribe", "notify"],
                                        "auth": ["authorize"]}}}
        bus = self.bus(feeds=feeds, users={"gw": "gwpass", "auth": "authpass"})
        authorizer = bus.client(user="auth")
        self.addCleanup(authorizer.close)
        gw = self.gateway(bus)
        req = authorizer.expect("AuthorizationRequest", timeout=20)
        self.assertEqual(req.feed, PROBE_FEED)
        authorizer.authorize(req.client_id, req.feed, req.topic, True, None)
        gw.wait_log(r"login confirmed, but the login probe was refused \(not entitled")
        s = self.session(gw)
        st = s.stats()
        self.assertEqual(st["bus_confirm"], "probe-denied")
        self.assertEqual(st["bus_state"], "up")

    def test_roles_deny_the_probe_on_a_quiet_bus(self):
        # the limit of what the protocol gives: no traffic and no echo look
        # like a bad password; the log says what else it can be
        feeds = {PROBE_FEED: {"authorization_required": False, "impersonation_allowed": False,
                              "proxy_allowed": False, "roles": {"gw": []}}}
        bus = self.bus(feeds=feeds)
        gw = self.gateway(bus, {"confirm_timeout": "1s"})
        gw.wait_log(r"bus: down: probable authentication failure \(basic, user gw\): "
                    r"no answer to the login probe within 1s")
        self.assertIn("deny basic, user gw the probe's roles (notify, subscribe) "
                      "on feed __busgate__", gw.log())


    def test_unanswered_probe_without_authentication(self):
        # bus.auth none: no password to be wrong, so silence is not called
        # an authentication failure
        feeds = {PROBE_FEED: {"authorization_required": False, "impersonation_allowed": False,
                              "proxy_allowed": False, "roles": {"unknown": []}}}
        bus = self.bus(auth="none", feeds=feeds)
        gw = self.gateway(bus, {"confirm_timeout": "1s"}, auth="none")
        gw.wait_log(r"bus: down: no answer to the login probe within 1s: "
                    r"the bus ignores this link")
        s = self.session(gw)
        self.assertEqual(s.stats()["bus_auth_failures"], "0")


class TestProbeProtocols(ConfirmCase):

    def test_probe_at_every_protocol(self):
        for protocol in (3, 4, 6):
            with self.subTest(protocol=protocol):
                bus = self.bus(protocol=protocol)
                gw = self.gateway(bus, {"protocol": protocol})
                m = gw.wait_log(r"login confirmed by the probe; this link's client id is (\S+)")
                self.assertEqual(m.group(1), self.gw_client_id(bus))
                s = self.session(gw)
                self.assertEqual(s.stats()["bus_confirm"], "confirmed")
                s.close()


if __name__ == "__main__":
    unittest.main()
