#!/usr/bin/env python3
"""Tests of the test bus itself: the codec against the golden vectors, then
the server driven by raw clients (TLS, authentication, routing, defects,
faults).  Run: python3 tests/testbus/test_testbus.py  (from any directory).

Absence is checked with a sentinel, not a sleep: a client's messages are
handled in order, so when the sentinel published after X arrives first, X
was not delivered.
"""

import json
import os
import shutil
import socket
import ssl
import sys
import tempfile
import unittest
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import buswire as w  # noqa: E402
import testbus  # noqa: E402
from busclient import BusClient, ConnectionClosed  # noqa: E402
from control import (TestBus, make_jwt, make_pki,  # noqa: E402
                     DEFAULT_JWT_SECRET)

TIMEOUT = float(os.environ.get("BUSGATE_TEST_TIMEOUT", "10"))


def vectors_path(version=3):
    name = "wire-v%d.json" % version
    rel = os.path.join("tests", "vectors", name)
    for var in ("srcdir", "top_srcdir"):
        base = os.environ.get(var)
        if base and os.path.exists(os.path.join(base, rel)):
            return os.path.join(base, rel)
    return os.path.join(HERE, "..", "vectors", name)


def _load(version):
    with open(vectors_path(version), encoding="utf-8") as f:
        return json.load(f)["vectors"]


# The golden vectors of each protocol (made with the real python clients
# 3.0.1, 4.1.0 and 6.0.0-alpha.1), and all of them as (version, vector).
VECTORS_BY_VERSION = {v: _load(v) for v in (3, 4, 6)}
VECTORS = VECTORS_BY_VERSION[3]
ALL_VECTORS = [(v, vec) for v, vecs in VECTORS_BY_VERSION.items()
               for vec in vecs]

WORK = None
PKI = None


def setUpModule():
    global WORK, PKI
    WORK = tempfile.mkdtemp(prefix="testbus-")
    PKI = make_pki(os.path.join(WORK, "pki"))


def tearDownModule():
    if WORK and not os.environ.get("TESTBUS_KEEP"):
        shutil.rmtree(WORK, ignore_errors=True)


def new_bus(name, **kw):
    d = os.path.join(WORK, name)
    os.makedirs(d, exist_ok=True)
    # All buses share the one PKI made in setUpModule.
    if not os.path.exists(os.path.join(d, "pki")):
        os.symlink(PKI.dir, os.path.join(d, "pki"))
    return TestBus(d, name=name, **kw).start()


# ------------------------------------------------------------------- codec

def _expected_fields(vec):
    """The vector's fields as the decoder gives them (empty -> None)."""
    out = {}
    for k, v in vec["fields"].items():
        if isinstance(v, dict) and "uuid" in v:
            v = uuid.UUID(v["uuid"])
        elif k == "data_packets" and v is not None:
            v = [w.DataPacket(p["entitlements"] or None,
                              None if p["data_hex"] is None
                              else bytes.fromhex(p["data_hex"]) or None)
                 for p in v] or None
        elif k == "entitlements":
            v = v or None
        out[k] = v
    return out


def _decode(vec, data, version=3):
    if vec["type_id"] is None:
        return w.decode_auth(vec["type"].split("-", 1)[1], data,
                             version=version)
    return w.decode_message(data, version=version)


def _wire_order(msg, version):
    """The attribute names the vectors list, in their order."""
    if isinstance(msg, tuple(w.AUTH_TYPES.values())) and version >= 4:
        return [f for f in vars(msg)]   # a connection string: every key
    return w.wire_fields(type(msg), version)


class CodecTest(unittest.TestCase):

    def test_every_vector_decodes_to_its_fields(self):
        for version, vec in ALL_VECTORS:
            with self.subTest(vec["name"], version=version):
                data = bytes.fromhex(vec["hex"])
                msg, n = _decode(vec, data, version)
                self.assertEqual(n, len(data))
                cls = w.MESSAGE_TYPES[vec["type_id"]] \
                    if vec["type_id"] is not None \
                    else w.AUTH_TYPES[vec["type"].split("-", 1)[1]]
                self.assertIs(type(msg), cls)
                self.assertEqual(w.type_name(msg), cls.__name__)
                if vec["type_id"] is not None:
                    self.assertEqual(vec["type"], cls.__name__)
                    self.assertEqual(data[0], vec["type_id"])
                got = {k: getattr(msg, k) for k in vec["fields"]}
                self.assertEqual(got, _expected_fields(vec))
                # The field order is the wire order, as the vectors list it.
                self.assertEqual(_wire_order(msg, version),
                                 list(vec["fields"]))

    def test_every_vector_reencodes_exactly(self):
        for version, vec in ALL_VECTORS:
            with self.subTest(vec["name"], version=version):
                data = bytes.fromhex(vec["hex"])
                msg, _ = _decode(vec, data, version)
                self.assertEqual(w.encode(msg, version), data)
                # Built from the vector's own fields ([] as well as null).
                cls = type(msg)
                raw = {}
                for k, v in vec["fields"].items():
                    if isinstance(v, dict) and "uuid" in v:
                        v = uuid.UUID(v["uuid"])
                        self.assertEqual(v.bytes_le.hex(),
                                         vec["fields"][k]["wire_hex"])
                    elif k == "data_packets" and v is not None:
                        v = [(p["entitlements"],
                              None if p["data_hex"] is None
                              else bytes.fromhex(p["data_hex"])) for p in v]
                    raw[k] = v
                self.assertEqual(w.encode(cls(**raw), version), data)

    def test_every_vector_byte_at_a_time(self):
        for version, vec in ALL_VECTORS:
            with self.subTest(vec["name"], version=version):
                data = bytes.fromhex(vec["hex"])
                for i in range(len(data)):
                    self.assertIsNone(_decode(vec, data[:i], version), i)
                if vec["type_id"] is None:
                    continue
                dec = w.Decoder(version=version)
                for i, b in enumerate(data):
                    self.assertIsNone(dec.next())
                    dec.feed(bytes([b]))
                msg = dec.next()
                self.assertEqual(w.encode(msg, version), data)
                self.assertIsNone(dec.next())
                self.assertEqual(len(dec.buf), 0)

    def test_many_messages_in_one_buffer(self):
        for version, vecs in VECTORS_BY_VERSION.items():
            msgs = [v for v in vecs if v["type_id"] is not None]
            dec = w.Decoder(version=version)
            dec.feed(b"".join(bytes.fromhex(v["hex"]) for v in msgs) + b"\x05")
            out = dec.messages()
            self.assertEqual([w.type_name(m) for m in out],
                             [v["type"] for v in msgs])
            self.assertEqual(bytes(dec.buf), b"\x05")

    def test_version_4_login_is_one_connection_string(self):
        p = w.PasswordAuth("gw", "p=w", None, "", "busgate@h")
        data = w.encode_auth(p, 4)
        self.assertEqual(data[4:], b"Username=gw;Password=p=w;"
                                   b"Application=busgate@h")
        self.assertEqual(w.decode_auth("password", data, version=4)[0],
                         w.PasswordAuth("gw", "p=w", None, None, "busgate@h"))
        with self.assertRaisesRegex(ValueError, "Password contains ';'"):
            w.encode_auth(w.PasswordAuth("gw", "a;b"), 4)
        for bad, why in ((b"Username=gw;Password=x;", "without '='"),
                         (b"Username=gw", "no Password"),
                         (b"Username=a;Username=b;Password=x", "repeated"),
                         (b"gw", "without '='")):
            with self.subTest(bad):
                with self.assertRaisesRegex(w.ProtocolError, why):
                    w.decode_auth("password", len(bad).to_bytes(4, "big")
                                  + bad, version=4)

    def test_version_6_content_type_in_the_image_slot(self):
        m = w.MulticastData("F", "T", True, None, "text/plain")
        self.assertEqual(w.encode_message(m, 3)[11], 1)
        v6 = w.encode_message(m, 6)
        self.assertEqual(v6[11:25], b"\x00\x00\x00\x0atext/plain")
        self.assertEqual(w.decode_message(v6, version=6)[0],
                         w.MulticastData("F", "T", False, None, "text/plain"))
        # Version 3 bytes read at 6 are an error, never wrong data.
        with self.assertRaises(w.ProtocolError):
            w.decode_message(w.encode_message(m, 3) + b"\0" * 64,
                             limits=w.Limits(max_string=4096), version=6)

    def test_guid_example(self):
        g = uuid.UUID("33221100-5544-7766-8899-aabbccddeeff")
        self.assertEqual(g.bytes_le.hex(), "00112233445566778899aabbccddeeff")

    def test_unknown_type_bytes(self):
        for t in (0, 10, 0x7f, 0xee, 0xff):
            with self.assertRaises(w.ProtocolError):
                w.decode_message(bytes([t]))

    def test_negative_lengths(self):
        neg = b"\xff\xff\xff\xfe"
        cases = {
            "string": b"\x05" + neg,
            "packet count": b"\x01" + b"\x00\x00\x00\x01F\x00\x00\x00\x01T"
                            b"\x01" + neg,
            "entitlement count": b"\x01\x00\x00\x00\x01F\x00\x00\x00\x01T"
                                 b"\x01\x00\x00\x00\x01" + neg,
            "byte array": b"\x01\x00\x00\x00\x01F\x00\x00\x00\x01T\x01"
                          b"\x00\x00\x00\x01\x00\x00\x00\x00" + neg,
            "auth string": None,
        }
        for name, data in cases.items():
            with self.subTest(name):
                with self.assertRaisesRegex(w.ProtocolError, "negative"):
                    if data is None:
                        w.decode_auth("password", neg)
                    else:
                        w.decode_message(data)

    def test_limits_fail_before_the_bytes_arrive(self):
        lim = w.Limits(max_string=8, max_message=64, max_packets=2,
                       max_entitlements=2, max_data=16)
        big_str = b"\x05\x00\x00\x00\x09"
        with self.assertRaisesRegex(w.ProtocolError, "string"):
            w.decode_message(big_str, limits=lim)
        huge = b"\x08\x7f\xff\xff\xff"
        with self.assertRaises(w.ProtocolError):
            w.decode_message(huge)
        head = b"\x01\x00\x00\x00\x01F\x00\x00\x00\x01T\x01"
        with self.assertRaisesRegex(w.ProtocolError, "packet"):
            w.decode_message(head + b"\x00\x00\x00\x03", limits=lim)
        with self.assertRaisesRegex(w.ProtocolError, "entitlement"):
            w.decode_message(head + b"\x00\x00\x00\x01\x00\x00\x00\x03",
                             limits=lim)
        with self.assertRaisesRegex(w.ProtocolError, "byte array"):
            w.decode_message(head + b"\x00\x00\x00\x01\x00\x00\x00\x00"
                             b"\x00\x00\x00\x11", limits=lim)
        # 16 data bytes pass the data limit, but 12+4+4+4+16 > 32 bytes.
        small = w.Limits(max_message=32)
        with self.assertRaisesRegex(w.ProtocolError, "longer than"):
            w.decode_message(head + b"\x00\x00\x00\x01\x00\x00\x00\x00"
                             b"\x00\x00\x00\x10", limits=small)

    def test_bad_utf8_and_seed_client_lengths(self):
        with self.assertRaisesRegex(w.ProtocolError, "UTF-8"):
            w.decode_message(b"\x04\x00\x00\x00\x01\xff\x01")
        for vec in VECTORS:
            if "seed_python_client_hex" not in vec:
                continue
            with self.subTest(vec["name"]):
                data = bytes.fromhex(vec["seed_python_client_hex"])
                try:
                    res = w.decode_message(data)
                except w.ProtocolError:
                    continue
                self.assertTrue(res is None or res[1] != len(data)
                                or w.message_fields(res[0])
                                != vec["fields"])

    def test_any_nonzero_bool_is_true(self):
        msg, _ = w.decode_message(bytes.fromhex("04000000014e") + b"\x7f")
        self.assertIs(msg.is_add, True)


class JwtTest(unittest.TestCase):
    """The distributor's JWT rules (defect 7), checked directly."""

    def test_vector_token(self):
        tok = [v for v in VECTORS if v["name"] == "auth-jwt"][0]
        self.assertEqual(testbus.check_jwt(tok["fields"]["token"],
                                           DEFAULT_JWT_SECRET, 300), "alice")

    def test_algorithms_and_rejections(self):
        s = DEFAULT_JWT_SECRET
        for alg in ("HS256", "HS384", "HS512"):
            self.assertEqual(testbus.check_jwt(make_jwt(s, "bob", 60, alg),
                                               s, 300), "bob")
        bad = {
            "wrong secret": (make_jwt("another secret, long enough", "b"), s),
            "short secret": (make_jwt("short", "b"), "short"),
            "expired": (make_jwt(s, "b", -400), s),
            "no exp": (make_jwt(s, "b", None), s),
            "no sub": (make_jwt(s, "", 60), s),
            "garbage": ("not.a.token", s),
        }
        for name, (token, secret) in bad.items():
            with self.subTest(name):
                with self.assertRaises(testbus.AuthFailed):
                    testbus.check_jwt(token, secret, 300)
        # Within the 5 minute skew an expired token still passes.
        self.assertEqual(testbus.check_jwt(make_jwt(s, "b", -200), s, 300),
                         "b")
        body = make_jwt(s, "b").split(".")[1]
        unsigned = "eyJhbGciOiJub25lIn0." + body + "."   # {"alg":"none"}
        with self.assertRaises(testbus.AuthFailed):
            testbus.check_jwt(unsigned, s, 300)


# --------------------------------------------------------------- the server

def packets_of(msg):
    return [(p.entitlements, p.data) for p in (msg.data_packets or [])]


class ServerTestCase(unittest.TestCase):
    bus_kw = {}

    @classmethod
    def setUpClass(cls):
        cls.bus = new_bus(cls.__name__, **cls.bus_kw)

    @classmethod
    def tearDownClass(cls):
        rc = cls.bus.stop()
        assert rc == 0, "test bus exit status %r" % rc

    def setUp(self):
        self.clients = []

    def tearDown(self):
        for c in self.clients:
            c.close()

    def client(self, *a, **kw):
        c = self.bus.client(*a, **kw)
        self.clients.append(c)
        return c

    def next_is(self, client, feed, topic, type_name="ForwardedMulticastData"):
        m = client.recv(TIMEOUT)
        self.assertEqual((w.type_name(m), m.feed, m.topic),
                         (type_name, feed, topic), m)
        return m


class RoutingTest(ServerTestCase):
    """TLS + password (the TestBus defaults), fixed subscription counting."""
    bus_kw = {"users": {"gw": "gwpass", "pub": "pubpass"}, "heartbeat": 0.2}

    def test_pubsub_carries_publisher_identity(self):
        p, s = self.client("pub"), self.client()
        s.subscribe("PS", "A")
        self.bus.sync(s)
        p.publish("PS", "A", [([1, 2], b"\x00\n\xffbin"), (None, None)],
                  is_image=True)
        m = self.next_is(s, "PS", "A")
        self.assertEqual((m.user, m.host, m.is_image),
                         ("pub", socket.gethostname(), True))
        self.assertEqual(packets_of(m), [([1, 2], b"\x00\n\xffbin"),
                                         (None, None)])
        sent = self.bus.messages("ForwardedMulticastData", conn=s.conn,
                                 direction="send")
        self.assertEqual(sent[-1]["fields"]["data_packets"][0]["data_hex"],
                         "000aff62696e")
        got = self.bus.messages("MulticastData", conn=p.conn)
        self.assertEqual(got[-1]["fields"]["feed"], "PS")
        self.assertEqual(got[-1]["client_id"], str(p.client_id))

    def test_notification_replay_and_forwarding(self):
        s, n = self.client(), self.client("pub")
        s.subscribe("NF", "A")
        s.subscribe("NF", "B")
        s.subscribe("OTHER", "X")
        self.bus.sync(s)
        n.notify("NF")
        replay = [n.expect("ForwardedSubscriptionRequest", TIMEOUT)
                  for _ in range(2)]
        self.assertEqual(sorted(m.topic for m in replay), ["A", "B"])
        for m in replay:
            self.assertEqual((m.user, m.client_id, m.feed, m.is_add),
                             ("gw", s.client_id, "NF", True))
        s.unsubscribe("NF", "A")
        m = n.recv(TIMEOUT)
        self.assertEqual((m.topic, m.is_add, m.client_id),
                         ("A", False, s.client_id))
        s.subscribe("NF", "C")
        m = n.recv(TIMEOUT)
        self.assertEqual((m.topic, m.is_add), ("C", True))
        # A second add while registered does not replay; remove + add does
        # (defect 4).
        n.notify("NF")
        n.notify("NF", add=False)
        n.notify("NF")
        replay = [n.recv(TIMEOUT) for _ in range(2)]
        self.assertEqual(sorted(m.topic for m in replay), ["B", "C"])
        # Closing the subscriber tells the notifier.
        s.close()
        gone = [n.recv(TIMEOUT) for _ in range(2)]
        self.assertEqual(sorted((m.topic, m.is_add) for m in gone),
                         [("B", False), ("C", False)])
        self.assertTrue(all(m.client_id == s.client_id for m in gone))

    def test_unicast_only_to_a_subscriber_of_that_topic(self):
        p, s = self.client("pub"), self.client()
        p.notify("UF")
        s.subscribe("UF", "A")
        req = p.expect("ForwardedSubscriptionRequest", TIMEOUT)
        p.send(req.client_id, "UF", "B", [(None, b"wrong topic")], True)
        p.send(uuid.uuid4(), "UF", "A", [(None, b"nobody")], True)
        p.send(req.client_id, "UF", "A", [([7], b"image")], True)
        m = self.next_is(s, "UF", "A", "ForwardedUnicastData")
        self.assertEqual((m.user, m.client_id, m.is_image, packets_of(m)),
                         ("pub", s.client_id, True, [([7], b"image")]))
        ignored = [r for r in self.bus.events("ignore", conn=p.conn)
                   if r["type"] == "UnicastData"]
        self.assertEqual(len(ignored), 2)

    def test_subscriptions_are_counted_per_connection(self):
        p, s = self.client("pub"), self.client()
        s.subscribe("CF", "A")
        s.subscribe("CF", "A")
        s.subscribe("CF", "SENTINEL")
        s.unsubscribe("CF", "A")
        self.bus.sync(s)
        p.publish("CF", "A", [(None, b"1")])
        self.next_is(s, "CF", "A")
        s.unsubscribe("CF", "A")
        self.bus.sync(s)
        p.publish("CF", "A", [(None, b"2")])
        p.publish("CF", "SENTINEL", [(None, b"3")])
        self.next_is(s, "CF", "SENTINEL")

    def test_stale_when_the_last_publisher_leaves(self):
        p1, p2, s = self.client("pub"), self.client("pub"), self.client()
        s.subscribe("SF", "A")
        s.subscribe("SF", "B")
        self.bus.sync(s)
        p1.publish("SF", "A", [(None, b"1")])
        p2.publish("SF", "A", [(None, b"2")])
        self.next_is(s, "SF", "A")
        self.next_is(s, "SF", "A")
        p1.publish("SF", "B", [(None, b"3")])
        self.next_is(s, "SF", "B")
        p1.close()
        stale = self.next_is(s, "SF", "B")
        self.assertEqual((stale.user, stale.host, stale.is_image,
                          stale.data_packets), ("", "", True, None))
        # A still has p2: no stale for it, the sentinel comes next.
        p2.publish("SF", "B", [(None, b"sentinel")])
        self.assertEqual(packets_of(self.next_is(s, "SF", "B")),
                         [(None, b"sentinel")])
        p2.close()
        got = sorted(s.recv(TIMEOUT).topic for _ in range(2))
        self.assertEqual(got, ["A", "B"])

    def test_heartbeat(self):
        s = self.client()
        s.subscribe("__admin__", "heartbeat")
        m = s.expect("ForwardedMulticastData", TIMEOUT)
        self.assertEqual((m.user, m.host, m.feed, m.topic, m.is_image,
                          m.data_packets),
                         ("admin", "localhost", "__admin__", "heartbeat",
                          True, None))

    def test_garbage_drops_only_that_connection(self):
        p, s, g = self.client("pub"), self.client(), self.client()
        s.subscribe("GF", "A")
        self.bus.sync(s)
        g.send_raw(b"\xee\x00\x01garbage")
        self.assertEqual(g.expect_closed(TIMEOUT), [])
        drop = self.bus.wait_for(lambda r: r["event"] == "drop"
                                 and r.get("conn") == g.conn)
        self.assertIn("unknown message type", drop["reason"])
        p.publish("GF", "A", [(None, b"still here")])
        self.assertEqual(packets_of(self.next_is(s, "GF", "A")),
                         [(None, b"still here")])

    def test_close_mid_message_is_logged(self):
        c = self.client()
        c.send_raw(w.encode_message(w.SubscriptionRequest("F", "T"))[:7])
        conn = c.conn
        c.close()
        rec = self.bus.wait_for(lambda r: r["event"] == "close"
                                and r.get("conn") == conn)
        self.assertEqual(rec["reason"], "eof mid-message (7 bytes pending)")

    def test_client_only_messages_are_ignored(self):
        c = self.client()
        c.send_message(w.ForwardedMulticastData("x", "y", "F", "T", True))
        c.subscribe("IG", "sentinel")
        self.bus.wait_for(lambda r: r["event"] == "ignore"
                          and r.get("conn") == c.conn
                          and r["type"] == "ForwardedMulticastData")

    def test_peer_host_and_log_of_a_login(self):
        c = self.client()
        rec = [r for r in self.bus.logins("gw") if r["conn"] == c.conn][0]
        self.assertEqual(rec["host"], socket.gethostname())
        self.assertEqual(rec["auth"], "password")
        self.assertNotIn("gwpass", json.dumps(self.bus.records()))


class AuthorizationTest(ServerTestCase):
    bus_kw = {
        "tls": False,
        "users": {"gw": "gwpass", "authz": "a", "pub": "p", "ro": "r"},
        "feeds": {
            "AUTH": {"authorization_required": True,
                     "roles": {"authz": list(testbus.ROLES),
                               "*": ["subscribe", "publish", "notify"]}},
            "RO": {"roles": {"ro": ["subscribe"]}},
            "IMP": {"impersonation_allowed": True, "proxy_allowed": True},
        },
    }

    def setUp(self):
        super().setUp()
        self.authz = self.client("authz")
        self.pub = self.client("pub")
        self.sub = self.client()

    def request_for(self, topic):
        m = self.authz.expect(lambda m: isinstance(m, w.AuthorizationRequest)
                              and m.topic == topic, TIMEOUT)
        self.assertEqual((m.client_id, m.user, m.feed),
                         (self.sub.client_id, "gw", "AUTH"))
        self.assertEqual(m.host, socket.gethostname())
        return m

    def test_entitlements_filter_packets(self):
        self.pub.notify("AUTH")
        self.sub.subscribe("AUTH", "T1")
        req = self.request_for("T1")
        # Pending until the answer: the notifier hears nothing yet.
        self.pub.publish("AUTH", "T1", [([1], b"early")])
        self.bus.sync(self.pub)
        self.authz.authorize(req.client_id, "AUTH", "T1", True, [1, 2])
        fwd = self.pub.expect("ForwardedSubscriptionRequest", TIMEOUT)
        self.assertEqual((fwd.client_id, fwd.topic, fwd.is_add),
                         (self.sub.client_id, "T1", True))
        self.pub.publish("AUTH", "T1", [([1], b"a"), ([2, 3], b"b"),
                                        (None, b"c"), ([2, 1], b"d")])
        m = self.next_is(self.sub, "AUTH", "T1")
        self.assertEqual(packets_of(m), [([1], b"a"), ([2, 1], b"d")])
        self.assertEqual(m.user, "pub")
        # The answer is cached: a second add asks nobody.
        self.sub.subscribe("AUTH", "T1")
        self.pub.expect("ForwardedSubscriptionRequest", TIMEOUT)
        reqs = self.bus.messages("AuthorizationRequest", direction="send",
                                 conn=self.authz.conn)
        self.assertEqual([r["fields"]["topic"] for r in reqs], ["T1"])
        # A late answer does not replace it.
        self.authz.authorize(req.client_id, "AUTH", "T1", False, None)
        self.bus.sync(self.authz)
        self.assertIn("already authorized",
                      self.bus.events("ignore", conn=self.authz.conn)[-1]
                      ["reason"])
        self.pub.publish("AUTH", "T1", [(None, b"c")])
        self.assertEqual(self.next_is(self.sub, "AUTH", "T1").data_packets,
                         None)

    def test_not_entitled_gets_an_empty_image(self):
        self.sub.subscribe("AUTH", "T2")
        req = self.request_for("T2")
        self.authz.authorize(req.client_id, "AUTH", "T2", True, None)
        m = self.next_is(self.sub, "AUTH", "T2")
        self.assertEqual((m.user, m.host, m.is_image, m.data_packets),
                         ("", "", True, None))
        self.pub.publish("AUTH", "T2", [([1], b"x")])
        self.pub.publish("AUTH", "T2", [([1], b"x")])
        self.sub.subscribe("AUTH", "T3")
        req = self.request_for("T3")
        self.authz.authorize(req.client_id, "AUTH", "T3", False, None)
        self.bus.sync(self.authz)
        self.pub.publish("AUTH", "T3", [(None, b"open")])
        self.assertEqual(packets_of(self.next_is(self.sub, "AUTH", "T3")),
                         [(None, b"open")])

    def test_roles(self):
        ro = self.client("ro", password="r")
        self.sub.subscribe("RO", "A")
        ro.subscribe("RO", "A")
        ro.publish("RO", "A", [(None, b"no publish role")])
        ro.notify("RO")
        self.bus.wait_for(lambda r: r["event"] == "ignore" and r.get("conn")
                          == ro.conn and r["type"] == "NotificationRequest")
        self.bus.sync(self.sub)
        self.pub.publish("RO", "A", [(None, b"ok")])
        self.assertEqual(packets_of(self.next_is(ro, "RO", "A")),
                         [(None, b"ok")])
        self.assertEqual(packets_of(self.next_is(self.sub, "RO", "A")),
                         [(None, b"ok")])
        ignored = [r["type"] for r in self.bus.events("ignore", conn=ro.conn)]
        self.assertEqual(ignored, ["MulticastData", "NotificationRequest"])


    def test_impersonation_and_proxy_only_where_allowed(self):
        proxy = self.client(impersonating="alice",
                            forwarded_for="app.example")
        self.pub.notify("IMP")
        self.pub.notify("RO")
        proxy.subscribe("IMP", "A")
        proxy.subscribe("RO", "A")
        m = self.pub.expect(lambda m: m.feed == "IMP", TIMEOUT)
        self.assertEqual((m.user, m.host), ("alice", "app.example"))
        m = self.pub.expect(lambda m: m.feed == "RO", TIMEOUT)
        self.assertEqual((m.user, m.host), ("gw", socket.gethostname()))
        self.pub.publish("IMP", "A", [(None, b"x")])
        self.assertEqual(self.next_is(proxy, "IMP", "A").user, "pub")


class DefectNullPacketsTest(ServerTestCase):
    bus_kw = {"tls": False, "auth": "none", "defects": ("null-packets",),
              "feeds": {"AUTH": {"authorization_required": True}}}

    def test_null_packets_to_an_authorized_subscriber_stop_routing(self):
        p, s = self.client(), self.client()
        s.subscribe("AUTH", "A")
        req = p.expect("AuthorizationRequest", TIMEOUT)
        s.expect("AuthorizationRequest", TIMEOUT)  # s may authorize too
        p.authorize(req.client_id, "AUTH", "A", True, [1])
        p.publish("AUTH", "A", [([1], b"fine")])
        self.assertEqual(packets_of(self.next_is(s, "AUTH", "A")),
                         [([1], b"fine")])
        p.publish("AUTH", "A", None)
        self.bus.wait_for(lambda r: r["event"] == "fault")
        s.subscribe("OPEN", "B")
        rec = self.bus.wait_for(lambda r: r["event"] == "ignore"
                                and r.get("conn") == s.conn)
        self.assertIn("routing stopped", rec["reason"])
        # Still accepting and logging in, as upstream does.
        self.client().close()


class DefectUnsubscribeTest(ServerTestCase):
    bus_kw = {"tls": False, "auth": "none", "defects": ("unsubscribe",)}

    def test_single_remove_does_not_unsubscribe(self):
        p, s = self.client(), self.client()
        p.notify("DF")
        self.bus.sync(p)
        s.subscribe("DF", "A")
        s.unsubscribe("DF", "A")
        adds = [p.recv(TIMEOUT) for _ in range(2)]
        self.assertEqual([(m.topic, m.is_add, m.user) for m in adds],
                         [("A", True, "unknown"), ("A", False, "unknown")])
        p.publish("DF", "A", [(None, b"still flowing")])
        self.assertEqual(packets_of(self.next_is(s, "DF", "A")),
                         [(None, b"still flowing")])

    def test_two_adds_one_remove_unsubscribes(self):
        p, s = self.client(), self.client()
        # v3: the first add leaves the count at 0, the second raises it
        # to 1, so one remove takes it to 0 and ends the subscription.
        s.subscribe("DG", "B")
        s.subscribe("DG", "B")
        s.subscribe("DG", "SENTINEL")
        s.unsubscribe("DG", "B")
        self.bus.sync(s)
        p.publish("DG", "B", [(None, b"1")])
        p.publish("DG", "SENTINEL", [(None, b"2")])
        self.next_is(s, "DG", "SENTINEL")


class Protocol4Test(ServerTestCase):
    """--protocol 4: the connection-string login of 4.0.0 to 5.x."""
    bus_kw = {"protocol": 4, "users": {"gw": "gw;pass", "pub": "p=w"}}

    def test_password_login_with_application(self):
        c = self.client("pub", application="busgate@h1")
        rec = self.bus.identify(c)
        self.assertEqual((rec["event"], rec["user"], rec["application"]),
                         ("login", "pub", "busgate@h1"))
        c.subscribe("F", "T")
        self.bus.sync(c)

    def test_a_version_3_login_fails(self):
        c = self.client("pub", protocol=3, wait_login=False)
        rec = self.bus.identify(c)
        self.assertEqual(rec["event"], "login-failed")
        self.assertIn("without '='", rec["reason"])
        c.expect_closed(TIMEOUT)

    def test_a_semicolon_cannot_be_sent(self):
        with self.assertRaisesRegex(ValueError, "contains ';'"):
            self.client("gw")


class Protocol4NullTest(ServerTestCase):
    bus_kw = {"protocol": 4, "tls": False, "auth": "none"}

    def test_user_nobody(self):
        c = self.client()
        self.assertEqual(self.bus.identify(c)["user"], "nobody")


class Protocol6Test(ServerTestCase):
    """--protocol 6: content types in the data messages."""
    bus_kw = {"protocol": 6, "auth": "jwt", "heartbeat": 0.2}

    def test_content_type_is_carried_and_logged(self):
        p, s = self.client("pub"), self.client()
        s.subscribe("CT", "A")
        self.bus.sync(s)
        p.publish("CT", "A", [(None, b"{}")], content_type="application/json")
        m = self.next_is(s, "CT", "A")
        self.assertEqual((m.content_type, m.is_image), ("application/json",
                                                        False))
        got = self.bus.messages("MulticastData", conn=p.conn)[-1]["fields"]
        self.assertEqual(got["content_type"], "application/json")
        self.assertNotIn("is_image", got)
        s.send(p.client_id, "CT", "A", [(None, b"x")])   # p is not subscribed
        p.subscribe("CT", "B")
        self.bus.sync(p)
        s.send(p.client_id, "CT", "B", [(None, b"x")], content_type="img")
        m = self.next_is(p, "CT", "B", "ForwardedUnicastData")
        self.assertEqual(m.content_type, "img")

    def test_heartbeat_and_stale_carry_an_empty_content_type(self):
        s = self.client()
        s.subscribe("__admin__", "heartbeat")
        m = self.next_is(s, "__admin__", "heartbeat")
        self.assertEqual((m.user, m.content_type), ("admin", ""))
        p = self.client("pub")
        s.subscribe("ST", "A")
        self.bus.sync(s)
        p.publish("ST", "A", [(None, b"1")], content_type="t")
        self.assertEqual(self.next_is(s, "ST", "A").content_type, "t")
        p.close()
        while True:
            m = s.recv(TIMEOUT)
            if m.topic == "A":
                break
        self.assertEqual((m.user, m.content_type, m.data_packets),
                         ("", "", None))


class NullAuthPlainTest(ServerTestCase):
    bus_kw = {"tls": False, "auth": "none"}

    def test_user_unknown_over_plain_tcp(self):
        c = self.client()
        rec = [r for r in self.bus.logins() if r["conn"] == c.conn][0]
        self.assertEqual(rec["user"], "unknown")


class TlsPasswordTest(ServerTestCase):
    bus_kw = {}

    def test_wrong_password_closes(self):
        c = self.client(password="nope", wait_login=False)
        self.assertEqual(self.bus.identify(c)["event"], "login-failed")
        self.assertEqual(c.expect_closed(TIMEOUT), [])

    def test_unknown_user_closes(self):
        c = self.client("mallory", password="x", wait_login=False)
        rec = self.bus.identify(c)
        self.assertEqual((rec["event"], rec["username"]),
                         ("login-failed", "mallory"))
        c.expect_closed(TIMEOUT)

    def test_plain_tcp_to_a_tls_bus_fails_the_handshake(self):
        c = BusClient("127.0.0.1", self.bus.port, auth=("password", "gw",
                                                        "gwpass"))
        self.clients.append(c)
        c.expect_closed(TIMEOUT)
        rec = self.bus.wait_for(lambda r: r["event"] == "close"
                                and "tls handshake" in r.get("reason", ""))
        self.assertNotIn("user", rec)

    def test_impersonating_and_forwarded_for_are_logged(self):
        c = self.client(impersonating="alice", forwarded_for="app.example")
        rec = [r for r in self.bus.logins() if r["conn"] == c.conn][0]
        self.assertEqual((rec["user"], rec["impersonating"],
                          rec["forwarded_for"]),
                         ("gw", "alice", "app.example"))


class CertificatesTest(unittest.TestCase):
    """make_pki's certificates do what their names say."""

    def connect(self, bus, **kw):
        kw.setdefault("tls_ca", PKI.ca_cert)
        return BusClient("127.0.0.1", bus.port, server_name="localhost",
                         auth=("password", "gw", "gwpass"), **kw)

    def test_bad_certificates_are_refused(self):
        for cert in ("selfsigned", "wronghost", "expired"):
            with self.subTest(cert):
                bus = new_bus("cert-" + cert, cert=cert)
                try:
                    with self.assertRaises(ssl.SSLCertVerificationError):
                        self.connect(bus)
                    if cert == "selfsigned":
                        self.connect(bus, tls_ca=PKI.selfsigned_cert).close()
                finally:
                    self.assertEqual(bus.stop(), 0)

    def test_server_cert_by_ip(self):
        bus = new_bus("cert-ip")
        try:
            c = BusClient("127.0.0.1", bus.port, tls_ca=PKI.ca_cert,
                          auth=("password", "gw", "gwpass"))
            self.assertEqual(bus.identify(c)["event"], "login")
            c.close()
        finally:
            bus.stop()


class JwtServerTest(ServerTestCase):
    bus_kw = {"auth": "jwt", "jwt_skew": 0}

    def test_good_token(self):
        c = self.client(token=make_jwt(DEFAULT_JWT_SECRET, "alice", 60))
        rec = [r for r in self.bus.logins() if r["conn"] == c.conn][0]
        self.assertEqual((rec["user"], rec["auth"]), ("alice", "jwt"))

    def test_wrong_and_expired_tokens_close(self):
        for name, tok in (
                ("wrong", make_jwt("not the secret but long", "alice", 60)),
                ("expired", make_jwt(DEFAULT_JWT_SECRET, "alice", -2))):
            with self.subTest(name):
                c = self.client(token=tok, wait_login=False)
                rec = self.bus.identify(c)
                self.assertEqual(rec["event"], "login-failed")
                self.assertIn("expired" if name == "expired" else "signature",
                              rec["reason"])
                c.expect_closed(TIMEOUT)


class SilentLoginDefectTest(ServerTestCase):
    bus_kw = {"tls": True, "defects": ("silent-login",)}

    def test_failed_login_stays_open_and_silent(self):
        c = self.client(password="wrong", wait_login=False)
        self.assertEqual(self.bus.identify(c)["event"], "login-failed")
        c.subscribe("F", "T")
        c.notify("F")
        rec = self.bus.wait_for(lambda r: r["event"] == "ignore" and
                                r["type"] == "NotificationRequest")
        self.assertEqual(rec["reason"], "not logged in")
        conn = [r for r in self.bus.events("login-failed")][0]["conn"]
        self.assertEqual(self.bus.events("close", conn=conn), [])
        self.assertEqual(self.bus.messages(direction="send", conn=conn), [])
        with self.assertRaises(TimeoutError):
            c.recv(0.2)


class ControlTest(ServerTestCase):
    bus_kw = {"tls": False, "auth": "none"}

    def test_drop_all_then_restart_on_the_same_port(self):
        a, b = self.client(), self.client()
        mark = self.bus.mark()
        self.bus.drop_all()
        a.expect_closed(TIMEOUT)
        b.expect_closed(TIMEOUT)
        drops = self.bus.events("drop", since=mark)
        self.assertEqual(sorted(r["conn"] for r in drops),
                         sorted([a.conn, b.conn]))
        self.assertTrue(all(r["reason"] == "SIGUSR1" for r in drops))
        c = self.client()      # still listening
        port = self.bus.port
        self.bus.restart()
        self.assertEqual(self.bus.port, port)
        c.expect_closed(TIMEOUT)
        d = self.client()
        self.assertEqual(d.conn, 1)


class FaultTest(unittest.TestCase):

    def run_fault(self, fault, tls=False):
        bus = new_bus("fault-" + fault, fault=fault, tls=tls, auth="none")
        self.addCleanup(bus.stop)
        return bus

    def test_garbage(self):
        bus = self.run_fault("garbage")
        c = bus.client()
        with self.assertRaisesRegex(w.ProtocolError, "unknown message type"):
            c.recv(TIMEOUT)
        c.close()

    def test_oversize(self):
        bus = self.run_fault("oversize")
        c = bus.client()
        with self.assertRaisesRegex(w.ProtocolError, "string length"):
            c.recv(TIMEOUT)
        c.close()

    def test_cut_mid_message(self):
        bus = self.run_fault("cut-mid-message")
        c = bus.client()
        c.subscribe("F", "T")
        with self.assertRaisesRegex(ConnectionClosed, "mid-message"):
            c.recv(TIMEOUT)
        c.close()

    def test_silent(self):
        bus = self.run_fault("silent", tls=True)
        c = bus.client(wait_login=False)     # the TLS handshake completes
        c.subscribe("F", "T")
        with self.assertRaises(TimeoutError):
            c.recv(0.2)
        self.assertEqual([r["event"] for r in bus.run_records()],
                         ["listen", "open"])
        c.close()

    def test_stall_tls(self):
        bus = self.run_fault("stall-tls", tls=True)
        with self.assertRaises((TimeoutError, socket.timeout)):
            bus.client(wait_login=False, timeout=0.3)
        bus.wait_for(lambda r: r["event"] == "open")


if __name__ == "__main__":
    unittest.main(verbosity=2)
