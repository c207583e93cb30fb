#!/usr/bin/env python3
"""The router end to end: real busgated, real Unix socket, the test bus with
TLS and password authentication, local line-protocol sessions and raw bus
clients (publishers, subscribers, notifiers, authorizers).

The key subscription tests run twice: against a bus with the v3 defects
fixed, and against one with the v3 unsubscribe defect (data keeps arriving
after the last unsubscribe: the gateway drops and counts it).
"""

import os
import sys
import unittest
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from routerkit import GatewayCase, escape, stats, uniq, wait_until  # noqa: E402

OTHER_ID = "00112233-4455-6677-8899-aabbccddeeff"


def is_sub(feed, topic, add=True):
    return lambda f: f["feed"] == feed and f["topic"] == topic and f["is_add"] == add


class SubscriptionTests:
    """Subscription counting, fan-out and the unwanted-data drop."""

    def test_three_local_subscribers_one_upstream(self):
        feed, topic = uniq("F"), "VOD.L"
        m = self.bus.mark()
        ss = [self.session() for _ in range(3)]
        for s in ss:
            self.assertEqual(s.cmd("SUB %s %s" % (feed, topic)), "+OK")
        self.wait_recv("SubscriptionRequest", is_sub(feed, topic), since=m)
        pub = self.client("pub")
        pub.publish(feed, topic, [(None, b"px1")])
        for s in ss:
            d = s.expect("DATA").data_fields()
            self.assertEqual((d["feed"], d["topic"], d["user"]), (feed, topic, "pub"))
            self.assertEqual(d["packets"], [(None, b"px1")])
        self.assertEqual(ss[0].cmd("UNSUB %s %s" % (feed, topic)), "+OK")
        ss[1].close()
        self.barrier()
        self.assertEqual(len(self.subs_seen(feed, topic, True, since=m)), 1)
        self.assertEqual(len(self.subs_seen(feed, topic, False, since=m)), 0)
        # The last local subscriber leaving sends the one unsubscribe.
        self.assertEqual(ss[2].cmd("UNSUB %s %s" % (feed, topic)), "+OK")
        self.wait_recv("SubscriptionRequest", is_sub(feed, topic, False), since=m)
        self.barrier()
        self.assertEqual(len(self.subs_seen(feed, topic, True, since=m)), 1)
        self.assertEqual(len(self.subs_seen(feed, topic, False, since=m)), 1)

    def test_unsubscribe_by_disconnect(self):
        feed, topic = uniq("F"), "T"
        m = self.bus.mark()
        s1, s2 = self.session(), self.session()
        self.assertEqual(s1.cmd("SUB %s %s" % (feed, topic)), "+OK")
        self.assertEqual(s2.cmd("SUB %s %s" % (feed, topic)), "+OK")
        s1.close()
        s2.close()
        self.wait_recv("SubscriptionRequest", is_sub(feed, topic, False), since=m)
        self.barrier()
        self.assertEqual(len(self.subs_seen(feed, topic, True, since=m)), 1)
        self.assertEqual(len(self.subs_seen(feed, topic, False, since=m)), 1)

    def test_same_and_different_topics(self):
        feed = uniq("F")
        m = self.bus.mark()
        a1, a2, b = self.session(), self.session(), self.session()
        for s, t in ((a1, "A"), (a2, "A"), (b, "B")):
            self.assertEqual(s.cmd("SUB %s %s" % (feed, t)), "+OK")
        self.wait_recv("SubscriptionRequest", is_sub(feed, "A"), since=m)
        self.wait_recv("SubscriptionRequest", is_sub(feed, "B"), since=m)
        pub = self.client("pub")
        pub.publish(feed, "A", [(None, b"a1")])
        pub.publish(feed, "B", [(None, b"b1")])
        pub.publish(feed, "A", [(None, b"a2")])
        for s in (a1, a2):
            got = [s.read_event().data_fields() for _ in range(2)]
            self.assertEqual([(d["topic"], d["packets"][0][1]) for d in got],
                             [("A", b"a1"), ("A", b"a2")])
        d = b.read_event().data_fields()
        self.assertEqual((d["topic"], d["packets"][0][1]), ("B", b"b1"))
        self.assertEqual(b.cmd("PING"), "PONG")
        self.assertEqual(b.events, [])

    def test_data_after_unsubscribe_is_dropped(self):
        feed, topic = uniq("F"), "T"
        m = self.bus.mark()
        s, watcher = self.session(), self.session()
        self.assertEqual(s.cmd("SUB %s %s" % (feed, topic)), "+OK")
        self.wait_recv("SubscriptionRequest", is_sub(feed, topic), since=m)
        before = int(stats(watcher)["data_dropped_unwanted"])
        pub = self.client("pub")
        pub.publish(feed, topic, [(None, b"wanted")])
        self.assertEqual(s.expect("DATA").payloads, [b"wanted"])
        self.assertEqual(s.cmd("UNSUB %s %s" % (feed, topic)), "+OK")
        self.wait_recv("SubscriptionRequest", is_sub(feed, topic, False), since=m)
        m2 = self.bus.mark()
        pub.publish(feed, topic, [(None, b"unwanted")])
        pub.publish(feed, "marker", [(None, b"m")])
        self.bus.wait_for(lambda r: r["event"] == "recv" and r.get("user") == "pub"
                          and r.get("type") == "MulticastData"
                          and r["fields"]["topic"] == "marker", since=m2)
        sent_to_gw = [r for r in self.bus.messages("ForwardedMulticastData", direction="send",
                                                   since=m2)
                      if r.get("user") == "gw" and r["fields"]["feed"] == feed]
        if self.DEFECT:
            # The v3 distributor keeps sending: the gateway drops and counts it.
            self.assertEqual(len(sent_to_gw), 1)
            wait_until(lambda: int(stats(watcher)["data_dropped_unwanted"]) >= before + 1,
                       what="data_dropped_unwanted to count the unwanted event")
        else:
            self.assertEqual(sent_to_gw, [])
        self.assertEqual(s.cmd("PING"), "PONG")
        self.assertEqual([e for e in s.events if e.kind == "DATA"], [])


class RouterTest(SubscriptionTests, GatewayCase):
    DEFECT = False

    def test_publish_and_subscribe_on_one_gateway(self):
        feed = uniq("Feed with spaces é ")
        topic = 'tópico/%% "q" 東京 \t'
        payloads = [(None, b"a\x00b\nc\r\n"), ([1, -2], b""), ([3], b"\n")]
        m = self.bus.mark()
        sub, pub = self.session(), self.session()
        self.assertEqual(sub.cmd("SUB %s %s" % (escape(feed), escape(topic))), "+OK")
        self.wait_recv("SubscriptionRequest", is_sub(feed, topic), since=m)
        self.assertEqual(pub.pub(feed, topic, payloads, image=True), "+OK")
        d = sub.expect("DATA").data_fields()
        self.assertEqual((d["feed"], d["topic"], d["user"], d["image"], d["unicast"]),
                         (feed, topic, "gw", True, False))
        self.assertEqual(d["packets"], payloads)
        rec = self.wait_recv("MulticastData", lambda f: f["feed"] == feed, since=m)
        self.assertEqual(rec["fields"]["topic"], topic)

    def test_two_gateways_share_the_bus(self):
        gw2 = self.start_gateway("gw2")
        feed, topic = uniq("F2"), "T"
        m = self.bus.mark()
        s1, s2 = self.session(), self.session(gw=gw2)
        self.assertEqual(s1.cmd("SUB %s %s" % (feed, topic)), "+OK")
        self.wait_recv("SubscriptionRequest", is_sub(feed, topic), since=m)
        self.assertEqual(s2.pub(feed, topic, [(None, b"from gw2")]), "+OK")
        d = s1.expect("DATA").data_fields()
        self.assertEqual((d["user"], d["packets"]), ("gw2", [(None, b"from gw2")]))
        self.assertEqual(s2.cmd("SUB %s back" % feed), "+OK")
        self.wait_recv("SubscriptionRequest", is_sub(feed, "back"), user="gw2", since=m)
        self.assertEqual(s1.pub(feed, "back", [(None, b"from gw")]), "+OK")
        d = s2.expect("DATA").data_fields()
        self.assertEqual((d["user"], d["topic"], d["packets"]),
                         ("gw", "back", [(None, b"from gw")]))

    def test_selectfeed_image_deltas_and_late_joiner(self):
        feed, topic = uniq("SF"), "T"
        pub = self.client("pub")
        m = self.bus.mark()
        pub.notify(feed)
        self.wait_recv("NotificationRequest", lambda f: f["feed"] == feed, user="pub", since=m)
        s1 = self.session()
        self.assertEqual(s1.cmd("SUB %s %s" % (feed, topic)), "+OK")
        fsr = pub.expect(lambda x: type(x).__name__ == "ForwardedSubscriptionRequest"
                         and x.feed == feed and x.is_add)
        self.assertEqual(str(fsr.client_id), self.gw_login()["client_id"])
        pub.send(fsr.client_id, feed, topic, [(None, b"IMAGE")], is_image=True)
        d = s1.expect("DATA").data_fields()
        self.assertEqual((d["image"], d["unicast"], d["packets"]),
                         (True, True, [(None, b"IMAGE")]))
        pub.publish(feed, topic, [(None, b"d1")])
        pub.publish(feed, topic, [(None, b"d2")])
        for want in (b"d1", b"d2"):
            self.assertEqual(s1.expect("DATA").payloads, [want])
        # A late joiner: the cached image and deltas, in order, after +OK.
        s2 = self.session()
        self.assertEqual(s2.cmd("SUB %s %s" % (feed, topic)), "+OK")
        got = [s2.read_event().data_fields() for _ in range(3)]
        self.assertEqual([(g["image"], g["unicast"], g["packets"][0][1]) for g in got],
                         [(True, True, b"IMAGE"), (False, False, b"d1"),
                          (False, False, b"d2")])
        pub.publish(feed, topic, [(None, b"d3")])
        self.assertEqual(s2.read_event().payloads, [b"d3"])
        self.assertEqual(s1.expect("DATA").payloads, [b"d3"])
        # The publisher heard of the gateway once.
        self.barrier()
        self.assertEqual(len(self.subs_seen(feed, topic, True, since=m)), 1)
        self.assertEqual([x for x in pub.drain(0.2)
                          if type(x).__name__ == "ForwardedSubscriptionRequest"], [])

    def test_stale_on_publisher_exit_clears_cache(self):
        feed, topic = uniq("ST"), "T"
        m = self.bus.mark()
        s1 = self.session()
        self.assertEqual(s1.cmd("SUB %s %s" % (feed, topic)), "+OK")
        self.wait_recv("SubscriptionRequest", is_sub(feed, topic), since=m)
        pub = self.client("pub")
        pub.publish(feed, topic, [(None, b"img")], is_image=True)
        self.assertEqual(s1.expect("DATA").payloads, [b"img"])
        s2 = self.session()
        self.assertEqual(s2.cmd("SUB %s %s" % (feed, topic)), "+OK")
        self.assertEqual(s2.read_event().payloads, [b"img"])
        pub.close()
        for s in (s1, s2):
            ev = s.expect("DATA")
            self.assertEqual(ev.line, "DATA %s %s \"\" \"\" image multicast" % (feed, topic))
            self.assertEqual(ev.data_fields()["packets"], [])
        s3 = self.session()
        self.assertEqual(s3.cmd("SUB %s %s" % (feed, topic)), "+OK")
        self.assertEqual(s3.cmd("PING after"), "PONG after")
        self.assertEqual(s3.events, [])

    def test_notifications_and_late_notifier(self):
        feed = uniq("NF")
        m = self.bus.mark()
        n1 = self.session()
        self.assertEqual(n1.cmd("NOTIFY %s" % feed), "+OK")
        self.wait_recv("NotificationRequest", lambda f: f["feed"] == feed and f["is_add"],
                       since=m)
        sub = self.client("sub")
        sub.subscribe(feed, "t 1")
        sub_id = self.gw_login("sub")["client_id"]
        ev = n1.expect("NOTIFICATION")
        w = ev.words
        self.assertEqual((w[1], w[2], w[3], w[5], w[6]),
                         ("add", sub_id, "sub", feed, escape("t 1")))
        # A late local notifier is told of what is known; nothing upstream.
        n2 = self.session()
        self.assertEqual(n2.cmd("NOTIFY %s" % feed), "+OK")
        self.assertEqual(n2.read_event().line, ev.line)
        self.assertEqual(n1.cmd("NOTIFY %s" % feed).split()[:2], ["-ERR", "already-notifying"])
        sub.unsubscribe(feed, "t 1")
        for n in (n1, n2):
            self.assertEqual(n.expect("NOTIFICATION").words[1], "remove")
        self.assertEqual(n1.cmd("UNNOTIFY %s" % feed), "+OK")
        self.assertEqual(n1.cmd("UNNOTIFY %s" % feed).split()[:2], ["-ERR", "not-notifying"])
        n2.close()
        self.wait_recv("NotificationRequest", lambda f: f["feed"] == feed and not f["is_add"],
                       since=m)
        self.barrier()
        reqs = self.recv_from("gw", "NotificationRequest", m, lambda f: f["feed"] == feed)
        self.assertEqual([r["fields"]["is_add"] for r in reqs], [True, False])

    def test_stats(self):
        s = self.session()
        self.assertEqual(s.cmd("SUB %s T" % uniq("S")), "+OK")
        st = stats(s)
        for key in ("version", "uptime", "bus_state", "bus_state_since", "bus_reconnects",
                    "bus_auth_failures", "bus_protocol_errors", "bus_heartbeat_timeouts",
                    "bus_last_error", "bus_msgs_in", "bus_msgs_out", "bus_bytes_in",
                    "bus_bytes_out", "bus_output_queued", "sessions", "sessions_total",
                    "slow_consumers", "topics", "subscriptions", "notifications",
                    "authorizers", "data_in", "data_delivered", "data_dropped_unwanted",
                    "auth_requests_unrouted", "image_cache_bytes", "busdown_queued",
                    "limit.max_line", "limit.max_payload", "limit.max_output"):
            self.assertIn(key, st)
        self.assertIn(st["bus_state"], ("unconfirmed", "up"))
        mine = [x for x in st["session"] if x.endswith(" self")]
        self.assertEqual(len(mine), 1)
        self.assertIn("pid=%d uid=%d gid=%d subs=1 " % (os.getpid(), os.getuid(), os.getgid()),
                      mine[0])
        self.assertGreaterEqual(int(st["subscriptions"]), 1)


class DefectUnsubscribeTest(SubscriptionTests, GatewayCase):
    """The same against a bus with the v3 unsubscribe defect (defect 1)."""
    BUS_KW = {"defects": ("unsubscribe",)}
    DEFECT = True


class AuthorizationTest(GatewayCase):
    BUS_KW = {"feeds": {f: {"authorization_required": True}
                        for f in ("AUTH1", "AUTH2", "AUTH3", "AUTH4", "AUTH5")}}

    def authreq(self, s, feed, topic):
        ev = s.expect("AUTHREQ", lambda e: e.words[4] == feed and e.words[5] == topic)
        return ev.words[1], ev.words[2]

    def test_remote_subscriber_entitlements(self):
        a1, a2 = self.session(), self.session()
        self.assertEqual(a1.cmd("AUTHORIZER AUTH1"), "+OK")
        self.assertEqual(a1.cmd("AUTHORIZER AUTH1").split()[:2], ["-ERR", "already-authorizer"])
        sub = self.client("sub")
        sub.subscribe("AUTH1", "T")
        cid, user = self.authreq(a1, "AUTH1", "T")
        self.assertEqual((cid, user), (self.gw_login("sub")["client_id"], "sub"))
        self.assertEqual(a2.cmd("AUTHORIZE %s AUTH1 T required 1" % cid).split()[:2],
                         ["-ERR", "not-authorizer"])
        self.assertEqual(a1.cmd("AUTHORIZE %s AUTH1 T required 1" % OTHER_ID).split()[:2],
                         ["-ERR", "unknown-request"])
        m = self.bus.mark()
        self.assertEqual(a1.cmd("AUTHORIZE %s AUTH1 T required 1" % cid), "+OK")
        rec = self.wait_recv("AuthorizationResponse", lambda f: f["feed"] == "AUTH1", since=m)
        self.assertEqual((rec["fields"]["client_id"], rec["fields"]["is_authorization_required"],
                          rec["fields"]["entitlements"]), (cid, True, [1]))
        self.assertEqual(a1.cmd("AUTHORIZE %s AUTH1 T not-required" % cid).split()[:2],
                         ["-ERR", "already-answered"])
        pub = self.client("pub")
        pub.publish("AUTH1", "T", [([1], b"one"), ([2], b"two"), (None, b"none")])
        msg = sub.expect("ForwardedMulticastData")
        self.assertEqual([(p.entitlements, p.data) for p in msg.data_packets], [([1], b"one")])
        # Required with no entitlements: not entitled.
        sub.subscribe("AUTH1", "T2")
        cid2, _ = self.authreq(a1, "AUTH1", "T2")
        self.assertEqual(a1.cmd("AUTHORIZE %s AUTH1 T2 required" % cid2), "+OK")
        msg = sub.expect("ForwardedMulticastData")
        self.assertEqual((msg.user, msg.host, msg.topic, msg.is_image, msg.data_packets),
                         ("", "", "T2", True, None))

    def test_local_subscriber_entitlements_and_not_entitled(self):
        a1, s = self.session(), self.session()
        self.assertEqual(a1.cmd("AUTHORIZER AUTH2"), "+OK")
        gw_id = self.gw_login("gw")["client_id"]
        self.assertEqual(s.cmd("SUB AUTH2 X"), "+OK")
        cid, user = self.authreq(a1, "AUTH2", "X")
        self.assertEqual((cid, user), (gw_id, "gw"))
        self.assertEqual(a1.cmd("AUTHORIZE %s AUTH2 X required 7,9" % cid), "+OK")
        pub = self.client("pub")
        pub.publish("AUTH2", "X", [([7], b"seven"), ([8], b"eight"), ([7, 9], b"both")],
                    is_image=True)
        d = s.expect("DATA").data_fields()
        self.assertEqual(d["packets"], [([7], b"seven"), ([7, 9], b"both")])
        # Not entitled: the empty image reaches the local subscriber and
        # leaves nothing cached for a later one.
        self.assertEqual(s.cmd("SUB AUTH2 Y"), "+OK")
        cid, _ = self.authreq(a1, "AUTH2", "Y")
        self.assertEqual(a1.cmd("AUTHORIZE %s AUTH2 Y required" % cid), "+OK")
        ev = s.expect("DATA", lambda e: e.words[2] == "Y")
        self.assertEqual(ev.line, 'DATA AUTH2 Y "" "" image multicast')
        s2 = self.session()
        self.assertEqual(s2.cmd("SUB AUTH2 Y"), "+OK")
        self.assertEqual(s2.cmd("PING"), "PONG")
        self.assertEqual(s2.events, [])

    def test_unrouted_request_replayed_to_late_authorizer(self):
        watcher = self.session()
        before = int(stats(watcher)["auth_requests_unrouted"])
        sub = self.client("sub2")
        sub.subscribe("AUTH3", "late")
        wait_until(lambda: int(stats(watcher)["auth_requests_unrouted"]) == before + 1,
                   what="an unrouted authorization request")
        a = self.session()
        self.assertEqual(a.cmd("AUTHORIZER AUTH3"), "+OK")
        cid, user = self.authreq(a, "AUTH3", "late")
        self.assertEqual(user, "sub2")
        self.assertEqual(a.cmd("AUTHORIZE %s AUTH3 late not-required" % cid), "+OK")
        pub = self.client("pub")
        pub.publish("AUTH3", "late", [(None, b"open")])
        msg = sub.expect("ForwardedMulticastData")
        self.assertEqual([p.data for p in msg.data_packets], [b"open"])
        self.assertEqual(a.cmd("UNAUTHORIZER AUTH3"), "+OK")
        self.assertEqual(a.cmd("UNAUTHORIZER AUTH3").split()[:2], ["-ERR", "not-authorizer"])
        self.assertEqual(a.cmd("AUTHORIZE %s AUTH3 late required" % cid).split()[:2],
                         ["-ERR", "not-authorizer"])

    def test_all_feeds_authorizer(self):
        # AUTHORIZER with no feed: the requests of every feed, until
        # UNAUTHORIZER (issue 13: upstream apps register no feed).
        a, b = self.session(), self.session()
        self.assertEqual(a.cmd("AUTHORIZER"), "+OK")
        self.assertEqual(a.cmd("AUTHORIZER").split()[:2], ["-ERR", "already-authorizer"])
        self.assertEqual(b.cmd("AUTHORIZER AUTH5"), "+OK")
        sub = self.client("sub")
        sub.subscribe("AUTH4", "T")
        sub.subscribe("AUTH5", "T")
        cid4, user = self.authreq(a, "AUTH4", "T")
        cid5, _ = self.authreq(a, "AUTH5", "T")
        self.assertEqual(user, "sub")
        # Several authorizers of a feed all get its requests; the first answer counts.
        self.assertEqual(self.authreq(b, "AUTH5", "T")[0], cid5)
        m = self.bus.mark()
        self.assertEqual(a.cmd("AUTHORIZE %s AUTH4 T required 4" % cid4), "+OK")
        rec = self.wait_recv("AuthorizationResponse", lambda f: f["feed"] == "AUTH4", since=m)
        self.assertEqual((rec["fields"]["client_id"], rec["fields"]["entitlements"]),
                         (cid4, [4]))
        self.assertEqual(a.cmd("AUTHORIZE %s AUTH5 T not-required" % cid5), "+OK")
        self.assertEqual(b.cmd("AUTHORIZE %s AUTH5 T required" % cid5).split()[:2],
                         ["-ERR", "already-answered"])
        # A feed role beside the all-feeds one: each request comes once.
        self.assertEqual(a.cmd("AUTHORIZER AUTH4"), "+OK")
        sub.subscribe("AUTH4", "once")
        self.authreq(a, "AUTH4", "once")
        self.assertTrue(a.no_event("AUTHREQ", wait=0.3))
        self.assertEqual(a.cmd("UNAUTHORIZER AUTH4"), "+OK")
        # UNAUTHORIZER with no feed ends it: nothing more comes.
        self.assertEqual(a.cmd("UNAUTHORIZER"), "+OK")
        self.assertEqual(a.cmd("UNAUTHORIZER").split()[:2], ["-ERR", "not-authorizer"])
        sub.subscribe("AUTH4", "after")
        self.assertEqual(a.cmd("PING"), "PONG")
        self.assertTrue(a.no_event("AUTHREQ", wait=0.3))
        self.assertEqual(a.cmd("AUTHORIZE %s AUTH4 after required" % cid4).split()[:2],
                         ["-ERR", "not-authorizer"])

    def test_all_feeds_authorizer_ends_with_its_session(self):
        watcher = self.session()
        a = self.session()
        self.assertEqual(a.cmd("AUTHORIZER"), "+OK")
        sub = self.client("sub2")
        sub.subscribe("AUTH4", "closing")
        self.authreq(a, "AUTH4", "closing")
        n = len(stats(watcher)["session"])
        a.close()
        wait_until(lambda: len(stats(watcher)["session"]) == n - 1, what="the session to end")
        before = int(stats(watcher)["auth_requests_unrouted"])
        sub.subscribe("AUTH4", "closed")
        wait_until(lambda: int(stats(watcher)["auth_requests_unrouted"]) == before + 1,
                   what="an unrouted authorization request")


if __name__ == "__main__":
    unittest.main(verbosity=2)
