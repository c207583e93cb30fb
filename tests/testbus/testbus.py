#!/usr/bin/env python3
"""Test bus: a jetblack-messagebus v3 distributor for integration tests.

Speaks the v3 wire protocol of doc BUS-PROTOCOL.md with the semantics of the
real C# distributor (rob-blackbourn/jetblack-messagebus, tag 3.0.0), with
switches that reproduce its defects and inject faults.  Writes a JSON line per
event (and per message in either direction) so tests can assert what the bus
saw.  Standard library only; see README.md in this directory.
"""

import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import os
import signal
import socket
import ssl
import sys
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import buswire as w  # noqa: E402

ROLES = ("subscribe", "publish", "notify", "authorize")
FAULTS = ("garbage", "oversize", "silent", "stall-tls", "cut-mid-message",
          "trickle")
# The trickle fault: one byte of a message this often, and the message is
# long enough (TRICKLE_DATA bytes of data) never to complete in a test.
TRICKLE_INTERVAL = 0.05
TRICKLE_DATA = 4096
# Output a peer does not read is bounded; past this the peer is dropped.
MAX_WRITE_BUFFER = 64 << 20
# How long a closing connection may take to flush before it is aborted.
CLOSE_GRACE = 2.0
HEARTBEAT = object()  # the heartbeat's pseudo publisher
ALERT_HANDSHAKE_FAILURE = 40  # TLS alert: no suite or version in common


class AuthFailed(Exception):
    pass


# ------------------------------------------------------------------ logging

class EventLog:
    """One JSON object per line, flushed, or nothing at all."""

    def __init__(self, path, protocol=3):
        self.protocol = protocol
        if path is None:
            self.f = None
        elif path == "-":
            self.f = sys.stderr
        else:
            self.f = open(path, "a", encoding="utf-8")

    def write(self, event, conn=None, **kw):
        if self.f is None:
            return
        rec = {"t": round(time.time(), 6),
               "conn": conn.id if conn is not None else None,
               "event": event}
        if conn is not None and conn.guid is not None:
            rec["user"] = conn.user
            rec["client_id"] = str(conn.guid)
        rec.update(kw)
        self.f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        self.f.flush()

    def message(self, event, conn, msg, **kw):
        if self.f is None:
            return
        self.write(event, conn, type=w.type_name(msg),
                   fields=w.message_fields(msg, self.protocol), **kw)


# ------------------------------------------------------------ authentication

def _b64url(part):
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


_JWT_HASHES = {"HS256": hashlib.sha256, "HS384": hashlib.sha384,
               "HS512": hashlib.sha512}


def check_jwt(token, secret, skew, now=None):
    """User (the sub claim) of a valid token, else AuthFailed."""
    key = secret.encode("utf-8")
    if len(key) < 16:
        raise AuthFailed("jwt secret shorter than 16 bytes")
    parts = (token or "").split(".")
    if len(parts) != 3:
        raise AuthFailed("malformed token")
    try:
        header = json.loads(_b64url(parts[0]))
        claims = json.loads(_b64url(parts[1]))
        sig = _b64url(parts[2])
    except (ValueError, UnicodeDecodeError) as e:
        raise AuthFailed("malformed token: %s" % e) from None
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise AuthFailed("malformed token")
    digest = _JWT_HASHES.get(header.get("alg"))
    if digest is None:
        raise AuthFailed("unsupported alg %r" % header.get("alg"))
    signed = (parts[0] + "." + parts[1]).encode("ascii", "replace")
    if not hmac.compare_digest(hmac.new(key, signed, digest).digest(), sig):
        raise AuthFailed("bad signature")
    now = time.time() if now is None else now
    exp = claims.get("exp")
    if not isinstance(exp, (int, float)) or isinstance(exp, bool):
        raise AuthFailed("no exp claim")
    if now > exp + skew:
        raise AuthFailed("token expired")
    nbf = claims.get("nbf")
    if isinstance(nbf, (int, float)) and now + skew < nbf:
        raise AuthFailed("token not yet valid")
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub:
        raise AuthFailed("no sub claim")
    return sub


def load_users(path):
    users = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\r\n")
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            name, sep, pw = line.partition(":")
            if not sep:
                raise ValueError("%s: line without ':'" % path)
            users[name] = pw
    return users


class Authenticator:
    """Reads and checks the credentials a client sends after connecting."""

    def __init__(self, kind, users=None, jwt_secret=None, jwt_skew=300.0,
                 protocol=3):
        self.kind = kind
        self.protocol = protocol
        self.users = users or {}
        self.jwt_secret = jwt_secret
        self.jwt_skew = jwt_skew

    def check(self, payload):
        """(user, impersonating, forwarded_for) or AuthFailed."""
        if self.kind == "none":
            # The NULL authenticator's user became "nobody" in 4.0.0.
            return ("nobody" if self.protocol >= 4 else "unknown"), None, None
        if self.kind == "password":
            expected = self.users.get(payload.username)
            if expected is None or not hmac.compare_digest(
                    expected.encode("utf-8"),
                    (payload.password or "").encode("utf-8")):
                raise AuthFailed("bad user name or password")
            user = payload.username
        else:
            user = check_jwt(payload.token, self.jwt_secret or "",
                             self.jwt_skew)
        return user, _blank_none(payload.impersonating), \
            _blank_none(payload.forwarded_for)

    @property
    def wire_kind(self):
        return {"none": "null", "password": "password",
                "jwt": "jwt"}[self.kind]


def _blank_none(s):
    return None if s is None or not s.strip() else s


# ------------------------------------------------------------------ policy

class FeedPolicy:
    """Per-feed roles and switches from the --feeds JSON file."""

    def __init__(self, config=None):
        self.feeds = {}
        for feed, spec in (config or {}).items():
            spec = dict(spec or {})
            roles = {}
            for user, names in (spec.get("roles") or {}).items():
                bad = set(names) - set(ROLES)
                if bad:
                    raise ValueError("feed %s user %s: unknown roles %s"
                                     % (feed, user, sorted(bad)))
                roles[user] = frozenset(names)
            self.feeds[feed] = {
                "authorization_required":
                    bool(spec.get("authorization_required", False)),
                "impersonation_allowed":
                    bool(spec.get("impersonation_allowed", False)),
                "proxy_allowed": bool(spec.get("proxy_allowed", False)),
                "roles": roles,
            }

    def _get(self, feed, key):
        spec = self.feeds.get(feed)
        return bool(spec and spec[key])

    def authorization_required(self, feed):
        return self._get(feed, "authorization_required")

    def impersonation_allowed(self, feed):
        return self._get(feed, "impersonation_allowed")

    def proxy_allowed(self, feed):
        return self._get(feed, "proxy_allowed")

    def has_role(self, feed, user, role):
        spec = self.feeds.get(feed)
        if spec is None or not spec["roles"]:
            return True
        roles = spec["roles"]
        granted = roles.get(user, roles.get("*"))
        return True if granted is None else role in granted


# -------------------------------------------------------------- connection

class SubState:
    """A connection's subscription to a topic (upstream SubscriptionState)."""

    def __init__(self, required, entitlements):
        self.count = 0
        self.required = required
        self.entitlements = frozenset(entitlements or ())


class Conn:
    """One client connection; becomes an interactor once logged in."""

    def __init__(self, bus, cid, sock, peer):
        self.bus = bus
        self.id = cid
        self.sock = sock            # the accepted socket
        self.peer = peer
        self.reader = None          # streams, once TCP (and TLS) are set up
        self.writer = None
        self.task = asyncio.current_task()
        self.guid = None            # set at login
        self.user = None
        self.host = None
        self.impersonating = None
        self.forwarded_for = None
        self.active = False         # logged in and registered with the bus
        self.closing = False
        self.close_reason = None
        self.decoder = w.Decoder(bus.limits, bus.args.protocol)
        self.application = None
        self.auth_cache = {}        # feed -> topic -> AuthorizationResponse
        self.pending = {}           # (feed, topic) -> adds awaiting answers
        self.subscribed_once = False
        self.trickling = False      # the trickle fault owns the output


    def user_for(self, feed):
        if self.bus.policy.impersonation_allowed(feed) and self.impersonating:
            return self.impersonating
        return self.user

    def host_for(self, feed):
        if self.bus.policy.proxy_allowed(feed) and self.forwarded_for:
            return self.forwarded_for
        return self.host

    def has_role(self, feed, role):
        return self.bus.policy.has_role(feed, self.user_for(feed), role)

    def send(self, msg):
        if self.closing or self.writer is None or self.writer.is_closing():
            return
        if self.trickling:
            # a whole message now would land inside the trickled one
            self.bus.log.write("ignore", self, type=w.type_name(msg),
                               reason="fault trickle: output is trickling")
            return
        self.bus.log.message("send", self, msg)
        self.write_raw(w.encode_message(msg, self.bus.args.protocol))

    def write_raw(self, data):
        if self.closing or self.writer is None or self.writer.is_closing():
            return
        self.writer.write(data)
        if self.writer.transport.get_write_buffer_size() > MAX_WRITE_BUFFER:
            self.drop("peer does not read: more than %d bytes queued"
                      % MAX_WRITE_BUFFER)

    def drop(self, reason):
        """Close this connection from the bus side."""
        if self.closing:
            return
        self.closing = True
        self.close_reason = reason
        self.bus.log.write("drop", self, reason=reason)
        if self.task is not None and self.task is not asyncio.current_task():
            self.task.cancel()


# --------------------------------------------------------------------- bus

class Bus:
    def __init__(self, args, policy, authenticator, log):
        self.args = args
        self.policy = policy
        self.auth = authenticator
        self.log = log
        self.limits = w.Limits(max_string=args.max_string,
                               max_message=args.max_message,
                               max_data=args.max_message)
        self.defect_unsubscribe = args.defect_unsubscribe
        self.defect_null_packets = args.defect_null_packets
        self.fault = args.fault
        self.ssl_ctx = None
        if args.tls_cert:
            self.ssl_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.ssl_ctx.load_cert_chain(args.tls_cert, args.tls_key)
            if args.tls_ciphers:
                # set_ciphers governs TLS 1.2 and older only: stop at 1.2
                self.ssl_ctx.maximum_version = ssl.TLSVersion.TLSv1_2
                self.ssl_ctx.set_ciphers(args.tls_ciphers)
        self.next_id = 1
        self.conns = {}             # id -> Conn, every open connection
        self.by_guid = {}           # Guid -> Conn, logged-in interactors
        self.subs = {}              # feed -> topic -> {Conn: SubState}
        self.notifiers = {}         # feed -> {Conn: None} (ordered set)
        self.published = {}         # publisher -> {(feed, topic)}
        self.publishers = {}        # (feed, topic) -> {publisher}
        self.routing_stopped = False
        self.own_host = socket.gethostname()

    # ----------------------------------------------------------- plumbing

    async def accept_loop(self, lsock):
        loop = asyncio.get_running_loop()
        while True:
            sock, peer = await loop.sock_accept(lsock)
            asyncio.create_task(self.handle(sock, peer))

    async def handle(self, sock, peer):
        conn = Conn(self, self.next_id, sock, peer)
        self.next_id += 1
        self.conns[conn.id] = conn
        self.log.write("open", conn, peer=list(peer[:2]))
        try:
            await self.serve(conn)
        except asyncio.CancelledError:
            pass
        except (ConnectionError, ssl.SSLError, OSError) as e:
            conn.close_reason = conn.close_reason or "i/o error: %s" % e
        except Exception as e:  # a bug here must not take the bus down
            conn.close_reason = "internal error: %r" % (e,)
        finally:
            self.close(conn)

    async def serve(self, conn):
        if self.fault == "stall-tls":
            await asyncio.Event().wait()    # never read: no ServerHello
        # The handshake runs on the accepted socket before any byte is read
        # as plain data (StreamWriter.start_tls would race the ClientHello).
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=1 << 16)
        protocol = asyncio.StreamReaderProtocol(reader)
        # asyncio drops the alert OpenSSL queues when a handshake fails; a
        # second descriptor lets us send it as a real server would.
        spare = os.dup(conn.sock.fileno()) if self.ssl_ctx else None
        try:
            transport, _ = await loop.connect_accepted_socket(
                lambda: protocol, conn.sock, ssl=self.ssl_ctx,
                ssl_handshake_timeout=30 if self.ssl_ctx else None)
        except (ssl.SSLError, ConnectionError, OSError,
                asyncio.TimeoutError) as e:
            conn.close_reason = "tls handshake failed: %s" % (
                str(e) or type(e).__name__)
            if getattr(e, "reason", None) == "NO_SHARED_CIPHER":
                _send_alert(spare, ALERT_HANDSHAKE_FAILURE)
            return
        finally:
            if spare is not None:
                os.close(spare)
        conn.reader = reader
        conn.writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        if self.fault == "silent":
            await self.hold(conn)
            return
        conn.host = await self.peer_host(conn)
        if conn.host is None:
            conn.close_reason = "reverse lookup of peer failed"
            return
        payload = await self.read_auth(conn)
        if payload is None:
            return
        try:
            user, imp, fwd = self.auth.check(payload)
        except AuthFailed as e:
            self.log.write("login-failed", conn, reason=str(e),
                           auth=self.auth.kind, **_auth_identity(payload))
            if self.args.defect_silent_login:
                await self.ignore_forever(conn)
            else:
                conn.close_reason = "login failed"
            return
        conn.application = getattr(payload, "application", None)
        self.login(conn, user, imp, fwd)
        self.inject_login_fault(conn)
        await self.message_loop(conn)

    async def hold(self, conn):
        """Keep the connection without reading or writing anything."""
        conn.writer.transport.pause_reading()
        await asyncio.Event().wait()

    async def peer_host(self, conn):
        addr = conn.peer[0]
        if addr == "127.0.0.1":
            return self.own_host
        loop = asyncio.get_running_loop()
        try:
            name = await asyncio.wait_for(
                loop.run_in_executor(None, socket.gethostbyaddr, addr), 5)
            return name[0]
        except (OSError, asyncio.TimeoutError):
            return None

    async def read_chunk(self, conn):
        data = await conn.reader.read(65536)
        if not data and not conn.close_reason:
            # A peer that stops mid-message would make upstream spin (defect
            # 8); say so, so tests can check that clients close cleanly.
            pending = len(conn.decoder.buf)
            conn.close_reason = ("eof mid-message (%d bytes pending)"
                                 % pending if pending else "eof")
        return data

    async def read_auth(self, conn):
        kind = self.auth.wire_kind
        while True:
            try:
                payload = conn.decoder.next_auth(kind)
            except w.ProtocolError as e:
                self.log.write("login-failed", conn,
                               reason="bad auth payload: %s" % e,
                               auth=self.auth.kind)
                if self.args.defect_silent_login:
                    conn.decoder.buf.clear()
                    await self.ignore_forever(conn, decode=False)
                else:
                    conn.close_reason = "login failed"
                return None
            if payload is not None:
                return payload
            data = await self.read_chunk(conn)
            if not data:
                return None
            conn.decoder.feed(data)

    async def ignore_forever(self, conn, decode=True):
        """Defect 2: a rejected client is read but never answered."""
        while True:
            msg = None
            if decode:
                try:
                    msg = conn.decoder.next()
                except w.ProtocolError:
                    decode = False
            if msg is not None:
                self.log.message("recv", conn, msg)
                self.log.write("ignore", conn, type=w.type_name(msg),
                               reason="not logged in")
                continue
            if not decode:
                conn.decoder.buf.clear()
            data = await self.read_chunk(conn)
            if not data:
                return
            conn.decoder.feed(data)

    def login(self, conn, user, imp, fwd):
        conn.guid = uuid.uuid4()
        conn.user = user
        conn.impersonating = imp
        conn.forwarded_for = fwd
        conn.active = True
        self.by_guid[conn.guid] = conn
        extra = {"application": conn.application} \
            if self.args.protocol >= 4 else {}
        self.log.write("login", conn, host=conn.host, auth=self.auth.kind,
                       impersonating=imp, forwarded_for=fwd, **extra)

    def inject_login_fault(self, conn):
        if self.fault == "garbage":
            data = bytes([0xee, 0x13, 0x37, 0x00, 0xff, 0x42, 0x99, 0x01])
        elif self.fault == "oversize":
            data = bytes([8]) + b"\x7f\xff\xff\xff" + b"x" * 16
        elif self.fault == "trickle":
            conn.trickling = True
            asyncio.create_task(self.trickle(conn))
            return
        else:
            return
        self.log.write("send", conn, type="raw", fault=self.fault,
                       fields={"hex": data.hex()})
        conn.write_raw(data)

    async def message_loop(self, conn):
        while not conn.closing:
            try:
                msg = conn.decoder.next()
            except w.ProtocolError as e:
                conn.drop("protocol error: %s" % e)
                return
            if msg is None:
                data = await self.read_chunk(conn)
                if not data:
                    return
                conn.decoder.feed(data)
                continue
            self.log.message("recv", conn, msg)
            if self.routing_stopped:
                self.log.write("ignore", conn, type=w.type_name(msg),
                               reason="routing stopped (defect 3)")
            else:
                self.dispatch(conn, msg)

    def close(self, conn):
        """Forget a connection: the bus-side clean-up, then the socket."""
        if conn.id not in self.conns:
            return
        del self.conns[conn.id]
        conn.closing = True
        if conn.active:
            conn.active = False
            self.close_interactor(conn)
        self.log.write("close", conn, reason=conn.close_reason or "closed")
        if conn.writer is None:
            conn.sock.close()
            return
        try:
            conn.writer.close()
        except Exception:
            pass
        asyncio.get_running_loop().call_later(CLOSE_GRACE, _abort,
                                              conn.writer.transport)

    def drop_all(self, reason):
        for conn in list(self.conns.values()):
            conn.drop(reason)

    # ---------------------------------------------------------- dispatch

    def dispatch(self, conn, msg):
        if isinstance(msg, w.SubscriptionRequest):
            self.on_subscription(conn, msg)
        elif isinstance(msg, w.NotificationRequest):
            self.on_notification(conn, msg)
        elif isinstance(msg, w.MulticastData):
            self.on_multicast(conn, msg)
        elif isinstance(msg, w.UnicastData):
            self.on_unicast(conn, msg)
        elif isinstance(msg, w.AuthorizationResponse):
            self.on_authorization_response(conn, msg)
        else:
            self.ignore(conn, msg, "message type not accepted from clients")

    def ignore(self, conn, msg, reason):
        self.log.write("ignore", conn, type=w.type_name(msg), reason=reason)

    # ------------------------------------------------------ subscriptions

    def on_subscription(self, conn, req):
        if not conn.has_role(req.feed, "subscribe"):
            self.ignore(conn, req, "no subscribe role on feed %r" % req.feed)
            return
        if req.is_add:
            if self.defect_unsubscribe:
                self.subscribe_as_v3(conn, req.feed, req.topic)
            else:
                self.subscribe_fixed(conn, req.feed, req.topic)
        else:
            if self.defect_unsubscribe:
                self.remove_subscription(conn, req.feed, req.topic, False)
            else:
                self.unsubscribe_fixed(conn, req.feed, req.topic)
            self.forward_subscription(conn, req.feed, req.topic, False)
        if req.is_add and not conn.subscribed_once:
            conn.subscribed_once = True
            if self.fault == "cut-mid-message":
                self.cut_mid_message(conn, req)

    def subscribe_fixed(self, conn, feed, topic):
        if not self.policy.authorization_required(feed):
            self.add_subscription(conn, feed, topic, False, None, False)
            return
        cached = conn.auth_cache.get(feed, {}).get(topic)
        if cached is not None:
            self.apply_authorization(conn, cached, 1)
            return
        key = (feed, topic)
        conn.pending[key] = conn.pending.get(key, 0) + 1
        self.request_authorization(conn, feed, topic)

    def unsubscribe_fixed(self, conn, feed, topic):
        state = self.subs.get(feed, {}).get(topic, {}).get(conn)
        if state is not None:
            self.remove_subscription(conn, feed, topic, False)
            return
        key = (feed, topic)
        if conn.pending.get(key, 0) > 0:
            conn.pending[key] -= 1

    def subscribe_as_v3(self, conn, feed, topic):
        """Upstream RequestSubscription, defect 1 included."""
        cached = conn.auth_cache.get(feed, {}).get(topic)
        if cached is not None:
            self.add_subscription(conn, feed, topic,
                                  cached.is_authorization_required,
                                  cached.entitlements, False)
        elif not self.policy.authorization_required(feed):
            self.accept_authorization(None, w.AuthorizationResponse(
                conn.guid, feed, topic, False, None))
        else:
            self.request_authorization(conn, feed, topic)

    def request_authorization(self, conn, feed, topic):
        req = w.AuthorizationRequest(conn.guid, conn.host_for(feed),
                                     conn.user_for(feed), feed, topic)
        authorizers = [c for c in self.by_guid.values()
                       if c.has_role(feed, "authorize")]
        if not authorizers:
            self.log.write("ignore", conn, type="SubscriptionRequest",
                           reason="no authorizers for feed %r: "
                                  "subscription stays pending" % feed)
            return
        for a in authorizers:
            a.send(req)

    def on_authorization_response(self, conn, resp):
        self.accept_authorization(conn, resp)

    def accept_authorization(self, authorizer, resp):
        requester = self.by_guid.get(resp.client_id)
        if requester is None:
            if authorizer is not None:
                self.ignore(authorizer, resp, "unknown client id %s"
                            % resp.client_id)
            return
        topics = requester.auth_cache.setdefault(resp.feed, {})
        if self.defect_unsubscribe:
            # Upstream HasAuthorization looks the feed up among the topics,
            # and AuthorizationResponseEventArg never sets IsInitial, so
            # every response is an "update" that leaves the count alone.
            if resp.feed not in topics:
                topics[resp.topic] = resp
            if resp.is_authorization_required and not resp.entitlements:
                self.send_not_entitled(requester, resp.feed, resp.topic)
                return
            self.add_subscription(requester, resp.feed, resp.topic,
                                  resp.is_authorization_required,
                                  resp.entitlements, True)
            return
        if resp.topic in topics:
            if authorizer is not None:
                self.ignore(authorizer, resp,
                            "already authorized: the first response counts")
            return
        topics[resp.topic] = resp
        adds = requester.pending.pop((resp.feed, resp.topic), 0)
        if adds == 0:
            if authorizer is not None:
                self.ignore(authorizer, resp, "no pending subscription "
                            "(response cached)")
            return
        self.apply_authorization(requester, resp, adds)

    def apply_authorization(self, conn, resp, adds):
        if resp.is_authorization_required and not resp.entitlements:
            self.send_not_entitled(conn, resp.feed, resp.topic)
            return
        for _ in range(adds):
            self.add_subscription(conn, resp.feed, resp.topic,
                                  resp.is_authorization_required,
                                  resp.entitlements, False)

    def send_not_entitled(self, conn, feed, topic):
        conn.send(w.ForwardedMulticastData("", "", feed, topic, True, None))

    def add_subscription(self, conn, feed, topic, required, entitlements,
                         update):
        topics = self.subs.setdefault(feed, {})
        subscribers = topics.setdefault(topic, {})
        state = subscribers.get(conn)
        if state is None:
            state = subscribers[conn] = SubState(required, entitlements)
        if update:
            state.required = required
            state.entitlements = frozenset(entitlements or ())
        else:
            state.count += 1
        self.forward_subscription(conn, feed, topic, True)

    def remove_subscription(self, conn, feed, topic, remove_all):
        topics = self.subs.get(feed)
        if topics is None:
            return
        subscribers = topics.get(topic)
        if subscribers is None or conn not in subscribers:
            return
        state = subscribers[conn]
        if not remove_all:
            state.count -= 1
        if remove_all or state.count == 0:
            del subscribers[conn]
        if not subscribers:
            del topics[topic]
        if not topics:
            del self.subs[feed]

    def forward_subscription(self, conn, feed, topic, is_add):
        notifiers = self.notifiers.get(feed)
        if not notifiers:
            return
        msg = w.ForwardedSubscriptionRequest(
            conn.user_for(feed), conn.host_for(feed), conn.guid, feed, topic,
            is_add)
        for n in list(notifiers):
            n.send(msg)

    # ------------------------------------------------------ notification

    def on_notification(self, conn, req):
        if not conn.has_role(req.feed, "notify"):
            self.ignore(conn, req, "no notify role on feed %r" % req.feed)
            return
        if not req.is_add:
            regs = self.notifiers.get(req.feed)
            if regs and conn in regs:
                del regs[conn]
                if not regs:
                    del self.notifiers[req.feed]
            return
        regs = self.notifiers.setdefault(req.feed, {})
        if conn in regs:
            self.ignore(conn, req, "already registered for notifications")
            return
        regs[conn] = None
        # Defect 4 is inherent: the replay happens whenever the connection
        # was not registered, so remove-then-add replays again.
        for topic, subscribers in list(self.subs.get(req.feed, {}).items()):
            for sub in list(subscribers):
                conn.send(w.ForwardedSubscriptionRequest(
                    sub.user_for(req.feed), sub.host_for(req.feed), sub.guid,
                    req.feed, topic, True))

    # ------------------------------------------------------------- data

    def authorized_packets(self, packets, state):
        """The packets a subscriber may see (upstream GetAuthorizedData)."""
        if not state.required or packets is None:
            return packets
        return [p for p in packets
                if p.entitlements and state.entitlements.issuperset(
                    p.entitlements)] or None

    def null_packet_fault(self, packets, state):
        """Defect 3: upstream throws and its event loop stops for good."""
        if self.defect_null_packets and state.required and packets is None:
            self.routing_stopped = True
            self.log.write("fault", None, reason="null packet array to an "
                           "authorization-required subscriber: routing "
                           "stopped (defect 3)")
            return True
        return False

    def add_publisher(self, pub, feed, topic):
        self.published.setdefault(pub, set()).add((feed, topic))
        self.publishers.setdefault((feed, topic), set()).add(pub)

    def on_multicast(self, conn, msg):
        if not conn.has_role(msg.feed, "publish"):
            self.ignore(conn, msg, "no publish role on feed %r" % msg.feed)
            return
        self.multicast(conn, conn.user_for(msg.feed), conn.host_for(msg.feed),
                       msg)

    def multicast(self, pub, user, host, msg):
        subscribers = self.subs.get(msg.feed, {}).get(msg.topic, {})
        for sub, state in list(subscribers.items()):
            if self.null_packet_fault(msg.data_packets, state):
                return
            self.add_publisher(pub, msg.feed, msg.topic)
            sub.send(w.ForwardedMulticastData(
                user, host, msg.feed, msg.topic, msg.is_image,
                self.authorized_packets(msg.data_packets, state),
                msg.content_type))

    def on_unicast(self, conn, msg):
        subscribers = self.subs.get(msg.feed, {}).get(msg.topic, {})
        target = next((c for c in subscribers if c.guid == msg.client_id),
                      None)
        if target is None:
            self.ignore(conn, msg, "target %s is not subscribed to %s/%s"
                        % (msg.client_id, msg.feed, msg.topic))
            return
        if not conn.has_role(msg.feed, "publish"):
            self.ignore(conn, msg, "no publish role on feed %r" % msg.feed)
            return
        state = subscribers[target]
        if self.null_packet_fault(msg.data_packets, state):
            return
        self.add_publisher(conn, msg.feed, msg.topic)
        target.send(w.ForwardedUnicastData(
            conn.user_for(msg.feed), conn.host_for(msg.feed), msg.client_id,
            msg.feed, msg.topic, msg.is_image,
            self.authorized_packets(msg.data_packets, state),
            msg.content_type))

    def heartbeat(self):
        if self.routing_stopped:
            return
        self.multicast(HEARTBEAT, "admin", self.args.heartbeat_host,
                       w.MulticastData("__admin__", "heartbeat", True, None))

    async def heartbeat_loop(self, interval):
        while True:
            await asyncio.sleep(interval)
            self.heartbeat()

    # -------------------------------------------------------------- close

    def close_interactor(self, conn):
        """Upstream order: notifications, publishers, then subscriptions."""
        self.by_guid.pop(conn.guid, None)
        for feed in [f for f, regs in self.notifiers.items() if conn in regs]:
            del self.notifiers[feed][conn]
            if not self.notifiers[feed]:
                del self.notifiers[feed]
        for feed, topic in sorted(self.published.pop(conn, ())):
            pubs = self.publishers.get((feed, topic))
            if pubs is None:
                continue
            pubs.discard(conn)
            if pubs:
                continue
            del self.publishers[(feed, topic)]
            stale = w.ForwardedMulticastData("", "", feed, topic, True, None)
            for sub in list(self.subs.get(feed, {}).get(topic, {})):
                sub.send(stale)
        mine = [(feed, topic) for feed, topics in self.subs.items()
                for topic, subscribers in topics.items()
                if conn in subscribers]
        for feed, topic in mine:
            self.remove_subscription(conn, feed, topic, True)
        for feed, topic in mine:
            self.forward_subscription(conn, feed, topic, False)

    # -------------------------------------------------------------- faults

    async def trickle(self, conn):
        """A long ForwardedMulticastData one byte at a time: the peer
        always has bytes arriving and never a whole message."""
        data = w.encode_message(w.ForwardedMulticastData(
            "fault", "fault-host", "__admin__", "heartbeat", True,
            [w.DataPacket(None, b"t" * TRICKLE_DATA)]), self.args.protocol)
        self.log.write("fault", conn, reason="trickle: %d bytes, one every "
                       "%g s" % (len(data), TRICKLE_INTERVAL))
        for i in range(len(data)):
            if conn.closing or conn.writer is None or conn.writer.is_closing():
                return
            conn.writer.write(data[i:i + 1])
            await asyncio.sleep(TRICKLE_INTERVAL)
        conn.trickling = False

    def cut_mid_message(self, conn, req):
        data = w.encode_message(w.ForwardedMulticastData(
            "fault", "fault-host", req.feed, req.topic, True,
            [w.DataPacket([1], b"half of this message never arrives")]),
            self.args.protocol)
        half = data[:len(data) // 2]
        self.log.write("send", conn, type="raw", fault=self.fault,
                       fields={"hex": half.hex()})
        conn.write_raw(half)
        conn.drop("fault cut-mid-message")


def _send_alert(fd, description):
    """A fatal TLS alert record, unencrypted (the handshake never finished)."""
    try:
        os.write(fd, bytes([21, 3, 3, 0, 2, 2, description]))
    except OSError:
        pass


def _abort(transport):
    """Last resort for a peer that does not let a close complete."""
    try:
        transport.abort()
    except Exception:
        pass


def _auth_identity(payload):
    """What a failed login said about itself, never the secret."""
    if isinstance(payload, w.PasswordAuth):
        return {"username": payload.username}
    return {}


# -------------------------------------------------------------------- main

def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port")
    p.add_argument("--tls-cert")
    p.add_argument("--tls-key")
    p.add_argument("--tls-ciphers",
                   help="OpenSSL cipher list the server offers; implies at "
                        "most TLS 1.2 (e.g. AES128-SHA, with an RSA cert)")
    p.add_argument("--protocol", type=int, choices=w.VERSIONS, default=3,
                   help="bus protocol: 3 (2019-09), 4 = 5 (connection-string "
                        "login, 4.0.0 to 5.x), 6 (content types, "
                        "6.0.0-alpha.6); default 3")
    p.add_argument("--auth", choices=("none", "password", "jwt"),
                   default="none")
    p.add_argument("--users", help="password file: username:password lines")
    p.add_argument("--jwt-secret")
    p.add_argument("--jwt-skew", type=float, default=300.0,
                   help="clock skew allowed on exp/nbf, seconds (300)")
    p.add_argument("--feeds", help="JSON feed roles and authorization")
    p.add_argument("--heartbeat", type=float, default=0.0,
                   help="heartbeat interval, seconds (0 = none)")
    p.add_argument("--heartbeat-host", default="localhost",
                   help="host named in heartbeats (upstream: localhost)")
    p.add_argument("--defect-unsubscribe", action="store_true",
                   help="v3 subscription counting (defect 1)")
    p.add_argument("--defect-silent-login", action="store_true",
                   help="keep a failed login open and silent (defect 2)")
    p.add_argument("--defect-null-packets", action="store_true",
                   help="null packets to an authorized subscriber stop "
                        "routing (defect 3)")
    p.add_argument("--fault", choices=FAULTS)
    p.add_argument("--log", help="JSON lines event log (- for stderr)")
    p.add_argument("--max-string", type=int, default=w.Limits.max_string)
    p.add_argument("--max-message", type=int, default=w.Limits.max_message)
    args = p.parse_args(argv)
    if bool(args.tls_cert) != bool(args.tls_key):
        p.error("--tls-cert and --tls-key go together")
    if args.auth == "password" and not args.users:
        p.error("--auth password needs --users")
    if args.auth == "jwt" and args.jwt_secret is None:
        p.error("--auth jwt needs --jwt-secret")
    return args


def listen_socket(host, port):
    family, stype, proto, _, addr = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, stype, proto)
    # Restartable on the same port while old connections sit in TIME_WAIT.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(addr)
    sock.listen(128)
    sock.setblocking(False)
    return sock


async def run(args):
    policy = FeedPolicy(json.load(open(args.feeds)) if args.feeds else None)
    users = load_users(args.users) if args.users else {}
    auth = Authenticator(args.auth, users, args.jwt_secret, args.jwt_skew,
                         args.protocol)
    log = EventLog(args.log, args.protocol)
    bus = Bus(args, policy, auth, log)
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(
        lambda _loop, ctx: log.write("error", None, reason=ctx.get("message"),
                                     exception=repr(ctx.get("exception"))))
    lsock = listen_socket(args.host, args.port)
    port = lsock.getsockname()[1]
    accept = asyncio.create_task(bus.accept_loop(lsock))
    log.write("listen", None, host=args.host, port=port, pid=os.getpid(),
              tls=bool(args.tls_cert), auth=args.auth, fault=args.fault,
              protocol=args.protocol,
              defects=[d for d in ("unsubscribe", "silent_login",
                                   "null_packets")
                       if getattr(args, "defect_" + d)])
    print("PORT %d" % port, flush=True)

    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, lambda: bus.drop_all("SIGUSR1"))
    hb = None
    if args.heartbeat > 0:
        hb = asyncio.create_task(bus.heartbeat_loop(args.heartbeat))
    await stop.wait()

    if hb is not None:
        hb.cancel()
    accept.cancel()
    lsock.close()
    tasks = [c.task for c in bus.conns.values() if c.task is not None]
    bus.drop_all("shutdown")
    if tasks:
        await asyncio.wait(tasks, timeout=CLOSE_GRACE)
    log.write("exit", None)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        asyncio.run(run(args))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
