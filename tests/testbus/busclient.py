"""Synchronous raw jetblack-messagebus v3 client for tests.

    c = BusClient("127.0.0.1", port, tls_ca=ca, auth=("password", "gw", "pw"))
    c.subscribe("PRICES", "VOD.L")
    msg = c.expect("ForwardedMulticastData", timeout=5)

Messages are buswire dataclasses.  Messages that expect() skips are kept and
returned, in order, by later recv()/expect() calls.
"""

import collections
import os
import socket
import ssl
import sys
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import buswire as w  # noqa: E402


class ConnectionClosed(ConnectionError):
    """The bus closed the connection."""


def _packets(packets):
    if packets is None:
        return None
    out = []
    for p in packets:
        if isinstance(p, w.DataPacket):
            out.append(p)
        else:
            ents, data = p
            out.append(w.DataPacket(None if ents is None else list(ents),
                                    data))
    return out


def _guid(client_id):
    return client_id if isinstance(client_id, uuid.UUID) \
        else uuid.UUID(str(client_id))


class BusClient:
    def __init__(self, host, port, tls_ca=None, server_name=None, auth=None,
                 impersonating=None, forwarded_for=None, timeout=10.0,
                 tls=None, limits=None, protocol=3, application=None):
        """Connect, do TLS if tls_ca is given (or tls=True: unverified), and
        send the credentials: auth is None (NULL authenticator),
        ('password', user, password) or ('jwt', token), at bus protocol
        `protocol` (3, 4, 5 or 6; application is sent from 4 on)."""
        self.protocol = protocol
        self.decoder = w.Decoder(limits, protocol)
        self.pending = collections.deque()
        self.closed = False
        sock = socket.create_connection((host, port), timeout=timeout)
        # Tests send many small messages: do not let Nagle delay them.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls is None:
            tls = tls_ca is not None
        if tls:
            if tls_ca:
                ctx = ssl.create_default_context(cafile=tls_ca)
            else:
                ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            try:
                sock = ctx.wrap_socket(sock,
                                       server_hostname=server_name or host)
            except Exception:
                sock.close()
                raise
        self.sock = sock
        self.local_port = sock.getsockname()[1]
        self.conn = None        # set by TestBus.identify()
        self.client_id = None   # likewise: the Guid the bus gave us
        if auth is not None:
            kind = auth[0]
            if kind == "password":
                payload = w.PasswordAuth(auth[1], auth[2], impersonating,
                                         forwarded_for, application)
            elif kind == "jwt":
                payload = w.JwtAuth(auth[1], impersonating, forwarded_for,
                                    application)
            else:
                raise ValueError("auth must be None, ('password', user, pw) "
                                 "or ('jwt', token)")
            self.send_raw(w.encode_auth(payload, protocol))

    # ------------------------------------------------------------ sending

    def send_raw(self, data):
        self.sock.sendall(data)

    def send_message(self, msg):
        self.send_raw(w.encode_message(msg, self.protocol))

    def subscribe(self, feed, topic):
        self.send_message(w.SubscriptionRequest(feed, topic, True))

    def unsubscribe(self, feed, topic):
        self.send_message(w.SubscriptionRequest(feed, topic, False))

    def notify(self, feed, add=True):
        self.send_message(w.NotificationRequest(feed, add))

    def publish(self, feed, topic, packets, is_image=False, content_type=""):
        self.send_message(w.MulticastData(feed, topic, is_image,
                                          _packets(packets), content_type))

    def send(self, client_id, feed, topic, packets, is_image=False,
             content_type=""):
        self.send_message(w.UnicastData(_guid(client_id), feed, topic,
                                        is_image, _packets(packets),
                                        content_type))

    def authorize(self, client_id, feed, topic, required, entitlements):
        self.send_message(w.AuthorizationResponse(
            _guid(client_id), feed, topic, required,
            None if entitlements is None else list(entitlements)))

    # ---------------------------------------------------------- receiving

    def _read_one(self, deadline):
        """Next message off the socket, or TimeoutError/ConnectionClosed."""
        while True:
            msg = self.decoder.next()
            if msg is not None:
                return msg
            if self.closed:
                raise ConnectionClosed("bus closed the connection")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no message from the bus")
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(65536)
            except (socket.timeout, TimeoutError):
                raise TimeoutError("no message from the bus") from None
            except ssl.SSLError as e:
                self.closed = True
                raise ConnectionClosed("TLS error: %s" % e) from None
            except ConnectionResetError as e:
                self.closed = True
                raise ConnectionClosed(str(e)) from None
            if not data:
                self.closed = True
                if self.decoder.buf:
                    raise ConnectionClosed(
                        "bus closed the connection mid-message (%d bytes)"
                        % len(self.decoder.buf))
                raise ConnectionClosed("bus closed the connection")
            self.decoder.feed(data)

    def recv(self, timeout=5.0):
        if self.pending:
            return self.pending.popleft()
        return self._read_one(time.monotonic() + timeout)

    def expect(self, what, timeout=5.0):
        """First message matching what (a type name, a class or a predicate);
        others are kept for later recv()/expect()."""
        if isinstance(what, str):
            def match(m, name=what):
                return w.type_name(m) == name
        elif isinstance(what, type):
            def match(m, cls=what):
                return isinstance(m, cls)
        else:
            match = what
        for i, m in enumerate(self.pending):
            if match(m):
                del self.pending[i]
                return m
        deadline = time.monotonic() + timeout
        while True:
            try:
                m = self._read_one(deadline)
            except TimeoutError:
                raise TimeoutError("no %s from the bus within %.1fs; kept: %r"
                                   % (what, timeout, list(self.pending))) \
                    from None
            if match(m):
                return m
            self.pending.append(m)

    def drain(self, duration):
        """Every message that arrives within duration seconds."""
        out = list(self.pending)
        self.pending.clear()
        deadline = time.monotonic() + duration
        while True:
            try:
                out.append(self._read_one(deadline))
            except TimeoutError:
                return out

    def expect_closed(self, timeout=5.0):
        """Wait for the bus to close; returns the messages read until then."""
        out = list(self.pending)
        self.pending.clear()
        deadline = time.monotonic() + timeout
        while True:
            try:
                out.append(self._read_one(deadline))
            except ConnectionClosed:
                return out

    def close(self):
        if self.sock is None:
            return
        try:
            if isinstance(self.sock, ssl.SSLSocket):
                # Send close_notify without waiting for the bus's.
                self.sock.settimeout(0)
                try:
                    self.sock.unwrap()
                except (OSError, ValueError):
                    pass
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self.sock = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
