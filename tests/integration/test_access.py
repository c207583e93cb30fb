#!/usr/bin/env python3
"""Local access control (issue 14) end to end: the real busgated, sessions
of three local identities (root, nobody = uid 65534, and group daemon =
gid 1), each connected by a child process that drops to that uid and gid
and hands the connected socket back (SO_PEERCRED is taken at connect, so
the kernel reports the child's identity).

Team A is uid 65534, team B is group daemon; root may do everything:
every verb allowed and refused, the late-joiner cache and unicast data
reaching only allowed readers, a reload revoking, STATS counters and the
log line.
"""

import os
import socket
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import gwtest  # noqa: E402
from routerkit import GatewayCase, TIMEOUT, uniq  # noqa: E402

NOBODY = (65534, 65534)
DAEMON = (1, 1)

RULES = """
access:
  - uid: 65534
    deny: [publish]
    feeds: ["A.secret"]
  - uid: 65534
    allow: [subscribe, publish, notify]
    feeds: ["A.*"]
  - group: daemon
    allow: [subscribe, send, authorize, stats]
    feeds: ["B.*", "A.shared"]
  - uid: 0
    allow: all
"""

# After the reload: team A keeps nothing on A.*, only A.kept.
RULES_AFTER = """
access:
  - uid: 65534
    allow: [subscribe, notify]
    feeds: ["A.kept"]
  - group: daemon
    allow: [subscribe, send, authorize, stats]
    feeds: ["B.*", "A.shared"]
  - uid: 0
    allow: all
"""

CAN_SETUID = os.geteuid() == 0


def connect_as(path, uid, gid):
    """A socket connected to path by a child running as uid/gid."""
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(path)
            socket.send_fds(child, [b"s"], [s.fileno()])
            code = 0
        finally:
            os._exit(code)
    child.close()
    _, fds, _, _ = socket.recv_fds(parent, 1, 1)
    parent.close()
    _, status = os.waitpid(pid, 0)
    if status != 0 or not fds:
        raise RuntimeError("could not connect as uid %d" % uid)
    return socket.socket(fileno=fds[0])


class SessionAs(gwtest.Session):
    """A gwtest.Session whose socket another uid connected."""

    def __init__(self, path, uid, gid):  # noqa: super().__init__ would connect as root
        self.sock = connect_as(path, uid, gid)
        self.timeout = TIMEOUT
        self.buf = b""
        self.events = []
        self.hello = self.read_event()


def perm(verb, feed):
    return lambda reply: reply.startswith("-ERR perm %s %s: " % (verb, feed))


class AccessCase(GatewayCase):
    """A gateway with RULES, and sessions connected as other uids."""
    GW_CONFIG = {"listen": {"mode": "0666"}}

    @classmethod
    def start_gateway(cls, user, config=None, name=None):
        # The socket's directory must let the other uids reach the socket.
        os.chmod(cls.dir, 0o755)
        gw = gwtest.Gateway(cls.dir, cls.bus, username=user,
                            password="gwpass", config=config or {}, name=name or user)
        cls.gws.append(gw)
        cls.write_rules(gw, RULES)
        gw.start()
        gw.wait_bus_up()
        return gw

    @staticmethod
    def write_rules(gw, rules):
        gw.write_config()
        with open(gw.config_path, "a") as f:
            f.write(rules)

    def as_(self, who):
        s = SessionAs(self.gw.socket_path, *who)
        self.closers.append(s)
        return s

    def assertPerm(self, reply, verb, feed):
        self.assertTrue(perm(verb, feed)(reply), reply)


@unittest.skipUnless(CAN_SETUID, "needs root to connect as other uids")
class AccessTests(AccessCase):

    # ------------------------------------------------------------ verbs

    def test_subscribe(self):
        a, b = self.as_(NOBODY), self.as_(DAEMON)
        self.assertEqual(a.cmd("SUB A.x t"), "+OK")
        self.assertPerm(a.cmd("SUB B.x t"), "subscribe", "B.x")
        self.assertEqual(b.cmd("SUB B.x t"), "+OK")
        self.assertPerm(b.cmd("SUB A.x t"), "subscribe", "A.x")
        self.assertIn("no access rule allows it", b.cmd("SUB A.y t"))

    def test_publish_first_match(self):
        a, b = self.as_(NOBODY), self.as_(DAEMON)
        self.assertEqual(a.pub("A.x", "t", [(None, b"p")]), "+OK")
        r = a.pub("A.secret", "t", [(None, b"p")])
        self.assertPerm(r, "publish", "A.secret")
        self.assertIn("denied by access rule 1 (line", r)
        self.assertPerm(b.pub("B.x", "t", [(None, b"p")]), "publish", "B.x")
        # The refused payload was skipped: the session is still in step.
        self.assertEqual(a.cmd("PING ok"), "PONG ok")

    def test_send(self):
        a, b = self.as_(NOBODY), self.as_(DAEMON)
        target = "00112233-4455-6677-8899-aabbccddeeff"
        self.assertEqual(b.pub("B.x", "t", [(None, b"u")], verb="SEND", target=target), "+OK")
        self.assertPerm(a.pub("A.x", "t", [(None, b"u")], verb="SEND", target=target),
                        "send", "A.x")

    def test_notify_and_notifications(self):
        feed = "A.n" + uniq()
        a, b = self.as_(NOBODY), self.as_(DAEMON)
        self.assertEqual(a.cmd("NOTIFY %s" % feed), "+OK")
        self.assertPerm(b.cmd("NOTIFY %s" % feed), "notify", feed)
        sub = self.client("sub")
        sub.subscribe(feed, "T")
        n = a.expect("NOTIFICATION")
        self.assertIn(feed, n.line)
        self.assertTrue(b.no_event("NOTIFICATION", wait=0.3))

    def test_authorizer(self):
        a, b = self.as_(NOBODY), self.as_(DAEMON)
        self.assertEqual(b.cmd("AUTHORIZER B.auth"), "+OK")
        self.assertPerm(a.cmd("AUTHORIZER A.auth"), "authorize", "A.auth")
        # A refused authorizer never becomes one: AUTHORIZE is then refused too.
        self.assertTrue(a.cmd("AUTHORIZE 00112233-4455-6677-8899-aabbccddeeff A.auth t "
                              "required").startswith("-ERR not-authorizer"))

    def test_stats_counters_and_log(self):
        a, b = self.as_(NOBODY), self.as_(DAEMON)
        start = self.gw.log_offset()
        # An app name labels the session; it grants nothing.
        self.assertEqual(a.cmd("NAME team-a%20pricer"), "+OK")
        r = a.cmd("STATS")
        self.assertEqual(r, "-ERR perm stats: no access rule allows it")
        self.assertPerm(a.cmd("SUB B.log t"), "subscribe", "B.log")
        st = b.stats()
        self.assertEqual(st["access"], "rules")
        self.assertEqual(st["access_rules"], "4")
        self.assertGreaterEqual(int(st["access_denied"]), 2)
        mine = [x for x in st["session"] if "user=nobody" in x and " uid=65534 " in x]
        self.assertTrue(any("denied=2 " in x for x in mine), st["session"])
        self.assertTrue(any(x.endswith(" user=nobody app=team-a%20pricer") for x in mine),
                        st["session"])
        self.gw.wait_log(r"access: session \d+ \(nobody, uid 65534, pid \d+, app team-a "
                         r"pricer\) may not subscribe B\.log: no access rule allows it",
                         start=start)
        self.assertIn("access: 4 access rules, the first matching one decides",
                      self.gw.log())

    # --------------------------------------------- data reaching readers

    def test_cache_replay_only_to_allowed(self):
        feed, topic = "A.shared", uniq("c")
        root, b = self.session(), self.as_(DAEMON)
        m = self.bus.mark()
        self.assertEqual(root.cmd("SUB %s %s" % (feed, topic)), "+OK")
        self.wait_recv("SubscriptionRequest",
                       lambda f: f["feed"] == feed and f["topic"] == topic, since=m)
        pub = self.client("pub")
        pub.publish(feed, topic, [(None, b"img")], is_image=True)
        self.assertEqual(root.expect("DATA").payloads, [b"img"])
        # Team B may read A.shared and gets the cached image; bin (no rule) may not.
        self.assertEqual(b.cmd("SUB %s %s" % (feed, topic)), "+OK")
        self.assertEqual(b.read_event().payloads, [b"img"])
        c = self.as_((2, 2))    # bin: no rule at all
        self.assertPerm(c.cmd("SUB %s %s" % (feed, topic)), "subscribe", feed)
        self.assertEqual(c.cmd("PING x"), "PONG x")
        self.assertEqual(c.events, [])
        pub.publish(feed, topic, [(None, b"d1")])
        self.assertEqual(b.expect("DATA").payloads, [b"d1"])
        self.assertTrue(c.no_event("DATA", wait=0.3))

    def test_unicast_only_to_allowed(self):
        feed, topic = "B.uni" + uniq(), "T"
        pub = self.client("pub")
        m = self.bus.mark()
        pub.notify(feed)
        self.wait_recv("NotificationRequest", lambda f: f["feed"] == feed, user="pub",
                       since=m)
        a, b = self.as_(NOBODY), self.as_(DAEMON)
        self.assertPerm(a.cmd("SUB %s %s" % (feed, topic)), "subscribe", feed)
        self.assertEqual(b.cmd("SUB %s %s" % (feed, topic)), "+OK")
        fsr = pub.expect(lambda x: type(x).__name__ == "ForwardedSubscriptionRequest"
                         and x.feed == feed and x.is_add)
        pub.send(fsr.client_id, feed, topic, [(None, b"U")], is_image=True)
        d = b.expect("DATA").data_fields()
        self.assertEqual((d["unicast"], d["packets"]), (True, [(None, b"U")]))
        self.assertTrue(a.no_event("DATA", wait=0.3))

    # ----------------------------------------------------------- reload

    def test_reload_revokes(self):
        feed, topic = "A.rv" + uniq(), "T"
        a, b = self.as_(NOBODY), self.as_(DAEMON)
        m = self.bus.mark()
        self.assertEqual(a.cmd("NAME revokee"), "+OK")
        self.assertEqual(a.cmd("SUB %s %s" % (feed, topic)), "+OK")
        self.assertEqual(a.cmd("SUB A.kept T"), "+OK")
        self.assertEqual(a.cmd("NOTIFY %s" % feed), "+OK")
        self.assertEqual(b.cmd("AUTHORIZER B.rv"), "+OK")
        self.wait_recv("SubscriptionRequest",
                       lambda f: f["feed"] == feed and f["is_add"], since=m)
        self.wait_recv("NotificationRequest",
                       lambda f: f["feed"] == feed and f["is_add"], since=m)
        start = self.gw.log_offset()
        try:
            self.write_rules(self.gw, RULES_AFTER.replace("\"B.*\", ", ""))
            self.gw.reload()
            self.gw.wait_log("reloaded", start=start)
            ev = a.expect("REVOKED", lambda e: e.words[1] == "subscribe")
            self.assertEqual(ev.words[:4], ["REVOKED", "subscribe", feed, topic])
            self.assertIn("no access rule allows it", ev.line)
            ev = a.expect("REVOKED", lambda e: e.words[1] == "notify")
            self.assertEqual(ev.words[:3], ["REVOKED", "notify", feed])
            ev = b.expect("REVOKED")
            self.assertEqual(ev.words[:3], ["REVOKED", "authorize", "B.rv"])
            # What the rules still allow stays; the upstream side is released.
            self.wait_recv("SubscriptionRequest",
                           lambda f: f["feed"] == feed and not f["is_add"], since=m)
            self.wait_recv("NotificationRequest",
                           lambda f: f["feed"] == feed and not f["is_add"], since=m)
            self.assertTrue(a.cmd("UNSUB %s %s" % (feed, topic)).startswith(
                "-ERR not-subscribed"))
            self.assertEqual(a.cmd("UNSUB A.kept T"), "+OK")
            st = self.session().stats()
            self.assertGreaterEqual(int(st["access_revoked"]), 3)
            self.gw.wait_log(r"access: reload ended subscribe on %s / %s of session \d+ "
                             r"\(nobody, uid 65534, pid \d+, app revokee\)" % (feed, topic),
                             start=start)
        finally:
            start = self.gw.log_offset()
            self.write_rules(self.gw, RULES)
            self.gw.reload()
            self.gw.wait_log("reloaded", start=start)


@unittest.skipUnless(CAN_SETUID, "needs root to connect as other uids")
class AllFeedsAuthorizerTest(AccessCase):
    """AUTHORIZER with no feed gets only the requests of feeds the rules let
    the session authorize, and answers only those."""
    BUS_KW = {"feeds": {f: {"authorization_required": True} for f in ("A.shared", "A.az")}}

    def test_filtered_by_the_rules(self):
        a, b = self.as_(NOBODY), self.as_(DAEMON)
        # Registering asks nothing of the rules (nothing comes of it by itself).
        self.assertEqual(a.cmd("AUTHORIZER"), "+OK")
        self.assertEqual(b.cmd("AUTHORIZER"), "+OK")
        sub = self.client("sub")
        sub.subscribe("A.az", "T")
        sub.subscribe("A.shared", "T")
        ev = b.expect("AUTHREQ")
        self.assertEqual(ev.words[4:6], ["A.shared", "T"])
        self.assertEqual(b.cmd("PING"), "PONG")
        self.assertTrue(b.no_event("AUTHREQ", wait=0.3))
        self.assertTrue(a.no_event("AUTHREQ", wait=0.1))
        # Answers: allowed feed goes upstream; the other is refused.
        m = self.bus.mark()
        self.assertEqual(b.cmd("AUTHORIZE %s A.shared T not-required" % ev.words[1]), "+OK")
        self.wait_recv("AuthorizationResponse", lambda f: f["feed"] == "A.shared", since=m)
        self.assertPerm(b.cmd("AUTHORIZE %s A.az T not-required" % ev.words[1]),
                        "authorize", "A.az")
        self.assertEqual(b.cmd("UNAUTHORIZER"), "+OK")


class NoRulesTests(GatewayCase):
    """No access section: everyone may do everything, and the log says so."""

    def test_everything_allowed(self):
        s = self.session()
        self.assertEqual(s.cmd("SUB any.feed t"), "+OK")
        self.assertEqual(s.cmd("NOTIFY any.feed"), "+OK")
        self.assertEqual(s.cmd("AUTHORIZER any.feed"), "+OK")
        st = s.stats()
        self.assertEqual((st["access"], st["access_rules"]), ("off", "0"))
        self.assertIn("access: no access rules: every local user who can open the socket "
                      "may", self.gw.log())


if __name__ == "__main__":
    unittest.main()
