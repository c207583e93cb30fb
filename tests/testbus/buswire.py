"""Independent codec for the jetblack-messagebus wire protocol, 3, 4 (= 5), 6.

Written from doc BUS-PROTOCOL.md, not from the gateway's C codec, so the two
can check each other.  Standard library only.

Versions (`version=` on every encode/decode, default 3): from 4 the login is
one connection string (PasswordAuth/JwtAuth gain `application`, sent from 4
only); from 6 the four data messages carry `content_type` (a string) where
3 and 4 carry the `is_image` byte.  Each data message has both attributes;
the one not on the wire at that version is left at its default.

Conventions (the python client's, as in tests/vectors/wire-v3.json):
- every integer is a big-endian int32; a negative length or count is an error;
- a zero length string decodes as "" in messages and as None in the nullable
  fields of the authentication payloads;
- a zero count int set / byte array / packet array decodes as None;
  encoding treats None and empty alike (count 0);
- Guids are uuid.UUID, sent in .NET ToByteArray order (UUID.bytes_le);
- entitlements are kept as a list in wire order so re-encoding is exact.

decode_message() works on a partial buffer: it returns None while more bytes
are needed and raises ProtocolError as soon as the bytes present are invalid
(unknown type byte, negative length, a limit exceeded), even before the rest of
the message has arrived.
"""

import struct
import uuid
from dataclasses import dataclass, field, fields as dc_fields
from typing import List, Optional

__all__ = [
    "ProtocolError", "Limits", "DataPacket",
    "MulticastData", "UnicastData", "ForwardedSubscriptionRequest",
    "NotificationRequest", "SubscriptionRequest", "AuthorizationRequest",
    "AuthorizationResponse", "ForwardedMulticastData", "ForwardedUnicastData",
    "NullAuth", "PasswordAuth", "JwtAuth",
    "MESSAGE_TYPES", "TYPE_IDS", "encode", "encode_message", "decode_message",
    "encode_auth", "decode_auth", "Decoder", "message_fields", "type_name",
    "VERSIONS", "wire_fields", "connection_string", "parse_connection_string",
]


class ProtocolError(Exception):
    """The bytes cannot be a valid v3 message (or exceed a limit)."""


@dataclass
class Limits:
    """Upper bounds applied while decoding; every one is a protocol error."""
    max_string: int = 1 << 20           # bytes in one string
    max_data: int = 16 << 20            # bytes in one packet's data
    max_packets: int = 65536            # packets in one message
    max_entitlements: int = 65536       # ints in one entitlement set
    max_message: int = 16 << 20         # bytes in one whole message


DEFAULT_LIMITS = Limits()


@dataclass
class DataPacket:
    entitlements: Optional[List[int]] = None
    data: Optional[bytes] = None


@dataclass
class MulticastData:
    feed: str = ""
    topic: str = ""
    is_image: bool = False
    data_packets: Optional[List[DataPacket]] = None
    content_type: str = ""          # version 6: in the is_image slot


@dataclass
class UnicastData:
    client_id: uuid.UUID = field(default_factory=lambda: uuid.UUID(int=0))
    feed: str = ""
    topic: str = ""
    is_image: bool = False
    data_packets: Optional[List[DataPacket]] = None
    content_type: str = ""          # version 6: in the is_image slot


@dataclass
class ForwardedSubscriptionRequest:
    user: str = ""
    host: str = ""
    client_id: uuid.UUID = field(default_factory=lambda: uuid.UUID(int=0))
    feed: str = ""
    topic: str = ""
    is_add: bool = True


@dataclass
class NotificationRequest:
    feed: str = ""
    is_add: bool = True


@dataclass
class SubscriptionRequest:
    feed: str = ""
    topic: str = ""
    is_add: bool = True


@dataclass
class AuthorizationRequest:
    client_id: uuid.UUID = field(default_factory=lambda: uuid.UUID(int=0))
    host: str = ""
    user: str = ""
    feed: str = ""
    topic: str = ""


@dataclass
class AuthorizationResponse:
    client_id: uuid.UUID = field(default_factory=lambda: uuid.UUID(int=0))
    feed: str = ""
    topic: str = ""
    is_authorization_required: bool = False
    entitlements: Optional[List[int]] = None


@dataclass
class ForwardedMulticastData:
    user: str = ""
    host: str = ""
    feed: str = ""
    topic: str = ""
    is_image: bool = False
    data_packets: Optional[List[DataPacket]] = None
    content_type: str = ""          # version 6: in the is_image slot


@dataclass
class ForwardedUnicastData:
    user: str = ""
    host: str = ""
    client_id: uuid.UUID = field(default_factory=lambda: uuid.UUID(int=0))
    feed: str = ""
    topic: str = ""
    is_image: bool = False
    data_packets: Optional[List[DataPacket]] = None
    content_type: str = ""          # version 6: in the is_image slot


@dataclass
class NullAuth:
    """NULL authenticator: nothing is sent."""


@dataclass
class PasswordAuth:
    username: str = ""
    password: str = ""
    impersonating: Optional[str] = None
    forwarded_for: Optional[str] = None
    application: Optional[str] = None   # version 4 and later


@dataclass
class JwtAuth:
    token: str = ""
    impersonating: Optional[str] = None
    forwarded_for: Optional[str] = None
    application: Optional[str] = None   # version 4 and later


MESSAGE_TYPES = {
    1: MulticastData,
    2: UnicastData,
    3: ForwardedSubscriptionRequest,
    4: NotificationRequest,
    5: SubscriptionRequest,
    6: AuthorizationRequest,
    7: AuthorizationResponse,
    8: ForwardedMulticastData,
    9: ForwardedUnicastData,
}
TYPE_IDS = {cls: tid for tid, cls in MESSAGE_TYPES.items()}
AUTH_TYPES = {"null": NullAuth, "password": PasswordAuth, "jwt": JwtAuth}

# Wire kind of each field name; the field order is the dataclass order.
_FIELD_KINDS = {
    "feed": "str", "topic": "str", "user": "str", "host": "str",
    "is_image": "bool", "is_add": "bool", "is_authorization_required": "bool",
    "client_id": "guid", "data_packets": "packets", "entitlements": "intset",
    "username": "str", "password": "str", "token": "str",
    "impersonating": "nstr", "forwarded_for": "nstr",
    "content_type": "str", "application": "nstr",
}

VERSIONS = (3, 4, 5, 6)


def wire_fields(cls, version=3):
    """The field names of cls on the wire at version, in wire order."""
    out = []
    for f in dc_fields(cls):
        if f.name in ("content_type", "application"):
            continue
        if f.name == "is_image" and version >= 6:
            out.append("content_type")
        else:
            out.append(f.name)
    return out


# The connection string's keys (version 4 and later), in the clients' order.
_CONN_KEYS = (("Username", "username"), ("Password", "password"),
              ("Token", "token"), ("Impersonating", "impersonating"),
              ("ForwardedFor", "forwarded_for"), ("Application", "application"))
_CONN_REQUIRED = {"password": ("Username", "Password"), "jwt": ("Token",)}


def connection_string(payload):
    """The one login string of version 4 and later, as the python clients
    4.1.0 and 6.0.0-alpha.1 write it (optional keys only when non-empty).
    Raises ValueError for a value the server's split cannot carry."""
    parts = []
    for key, attr in _CONN_KEYS:
        if not hasattr(payload, attr):
            continue
        value = getattr(payload, attr)
        if key in ("Username", "Password", "Token") or value:
            if ";" in (value or ""):
                raise ValueError("%s contains ';'" % key)
            parts.append("%s=%s" % (key, value or ""))
    return ";".join(parts)


def parse_connection_string(kind, text):
    """Parse a login string as the distributor does (Split(';'), then
    Split('=', 2), a case-sensitive dictionary).  ProtocolError if it would
    fail there: empty part, part without '=', repeated or missing key."""
    values = {}
    for part in text.split(";"):
        if "=" not in part:
            raise ProtocolError("connection string part %r without '='" % part)
        key, value = part.split("=", 1)
        if key in values:
            raise ProtocolError("repeated key %r in the connection string" % key)
        values[key] = value
    for key in _CONN_REQUIRED[kind]:
        if key not in values:
            raise ProtocolError("connection string has no %s" % key)
    cls = AUTH_TYPES[kind]
    kw = {attr: values.get(key) for key, attr in _CONN_KEYS
          if attr in {f.name for f in dc_fields(cls)}}
    return cls(**kw)


def type_name(msg):
    return type(msg).__name__


# ---------------------------------------------------------------- encoding

_I32 = struct.Struct(">i")


def _enc_i32(out, value):
    out += _I32.pack(value)


def _enc_str(out, value):
    raw = (value or "").encode("utf-8")
    _enc_i32(out, len(raw))
    out += raw


def _enc_intset(out, value):
    value = value or []
    _enc_i32(out, len(value))
    for v in value:
        _enc_i32(out, v)


def _enc_bytes(out, value):
    value = value or b""
    _enc_i32(out, len(value))
    out += value


def _enc_packets(out, value):
    value = value or []
    _enc_i32(out, len(value))
    for p in value:
        if isinstance(p, tuple):
            p = DataPacket(*p)
        _enc_intset(out, p.entitlements)
        _enc_bytes(out, p.data)


def _enc_field(out, kind, value):
    if kind in ("str", "nstr"):
        _enc_str(out, value)
    elif kind == "bool":
        out.append(1 if value else 0)
    elif kind == "guid":
        if not isinstance(value, uuid.UUID):
            value = uuid.UUID(str(value))
        out += value.bytes_le
    elif kind == "intset":
        _enc_intset(out, value)
    elif kind == "packets":
        _enc_packets(out, value)
    else:
        raise AssertionError(kind)


def _enc_body(out, obj, version):
    for name in wire_fields(type(obj), version):
        _enc_field(out, _FIELD_KINDS[name], getattr(obj, name))


def encode_message(msg, version=3):
    """Type byte + fields of one message, as bytes."""
    tid = TYPE_IDS.get(type(msg))
    if tid is None:
        raise TypeError("not a bus message: %r" % (msg,))
    out = bytearray([tid])
    _enc_body(out, msg, version)
    return bytes(out)


def encode_auth(payload, version=3):
    """The authentication payload a client writes right after connecting."""
    if type(payload) not in AUTH_TYPES.values():
        raise TypeError("not an auth payload: %r" % (payload,))
    out = bytearray()
    if version >= 4 and not isinstance(payload, NullAuth):
        _enc_str(out, connection_string(payload))
    else:
        _enc_body(out, payload, version)
    return bytes(out)


def encode(obj, version=3):
    """encode_message or encode_auth, whichever fits."""
    if type(obj) in TYPE_IDS:
        return encode_message(obj, version)
    return encode_auth(obj, version)


# ---------------------------------------------------------------- decoding

class _NeedMore(Exception):
    pass


class _Reader:
    """Cursor over a buffer; raises _NeedMore at the end of the bytes."""

    def __init__(self, buf, offset, limits):
        self.buf = buf
        self.start = offset
        self.pos = offset
        self.limits = limits

    def _need(self, n):
        if self.pos + n - self.start > self.limits.max_message:
            raise ProtocolError("message longer than %d bytes"
                                % self.limits.max_message)
        if self.pos + n > len(self.buf):
            raise _NeedMore()

    def take(self, n):
        self._need(n)
        raw = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        return raw

    def i32(self):
        self._need(4)
        (v,) = _I32.unpack_from(self.buf, self.pos)
        self.pos += 4
        return v

    def length(self, what, limit):
        n = self.i32()
        if n < 0:
            raise ProtocolError("negative %s length %d" % (what, n))
        if n > limit:
            raise ProtocolError("%s length %d exceeds limit %d"
                                % (what, n, limit))
        return n

    def string(self, nullable):
        n = self.length("string", self.limits.max_string)
        if n == 0:
            return None if nullable else ""
        raw = self.take(n)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ProtocolError("string is not UTF-8: %s" % e) from None

    def boolean(self):
        return self.take(1)[0] != 0

    def guid(self):
        return uuid.UUID(bytes_le=self.take(16))

    def intset(self):
        n = self.length("entitlement set", self.limits.max_entitlements)
        if n == 0:
            return None
        self._need(4 * n)
        vals = list(struct.unpack_from(">%di" % n, self.buf, self.pos))
        self.pos += 4 * n
        return vals

    def byte_array(self):
        n = self.length("byte array", self.limits.max_data)
        return self.take(n) if n else None

    def packets(self):
        n = self.length("packet array", self.limits.max_packets)
        if n == 0:
            return None
        return [DataPacket(self.intset(), self.byte_array()) for _ in range(n)]

    def field(self, kind):
        if kind == "str":
            return self.string(False)
        if kind == "nstr":
            return self.string(True)
        if kind == "bool":
            return self.boolean()
        if kind == "guid":
            return self.guid()
        if kind == "intset":
            return self.intset()
        if kind == "packets":
            return self.packets()
        raise AssertionError(kind)

    def body(self, cls, version):
        return cls(**{name: self.field(_FIELD_KINDS[name])
                      for name in wire_fields(cls, version)})


def decode_message(buf, offset=0, limits=None, version=3):
    """Decode one message at buf[offset:].

    Returns (message, bytes consumed), or None if the buffer ends before the
    message does.  Raises ProtocolError for invalid input.
    """
    r = _Reader(buf, offset, limits or DEFAULT_LIMITS)
    try:
        tid = r.take(1)[0]
        cls = MESSAGE_TYPES.get(tid)
        if cls is None:
            raise ProtocolError("unknown message type byte 0x%02x" % tid)
        msg = r.body(cls, version)
    except _NeedMore:
        return None
    return msg, r.pos - offset


def decode_auth(kind, buf, offset=0, limits=None, version=3):
    """Decode an authentication payload of kind 'null'|'password'|'jwt'.

    Returns (payload, bytes consumed) or None if more bytes are needed.
    """
    cls = AUTH_TYPES[kind]
    r = _Reader(buf, offset, limits or DEFAULT_LIMITS)
    try:
        if version >= 4 and kind != "null":
            payload = parse_connection_string(kind, r.string(False))
        else:
            payload = r.body(cls, version)
    except _NeedMore:
        return None
    return payload, r.pos - offset


class Decoder:
    """Incremental decoder: feed() bytes, then next() until it gives None."""

    def __init__(self, limits=None, version=3):
        self.limits = limits or DEFAULT_LIMITS
        self.version = version
        self.buf = bytearray()

    def feed(self, data):
        self.buf += data

    def next(self):
        res = decode_message(self.buf, 0, self.limits, self.version)
        if res is None:
            return None
        msg, n = res
        del self.buf[:n]
        return msg

    def next_auth(self, kind):
        res = decode_auth(kind, self.buf, 0, self.limits, self.version)
        if res is None:
            return None
        payload, n = res
        del self.buf[:n]
        return payload

    def messages(self):
        out = []
        while True:
            msg = self.next()
            if msg is None:
                return out
            out.append(msg)


# ---------------------------------------------------------------- json view

def _json_value(value):
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, (bytes, bytearray)):
        return value.hex()
    if isinstance(value, DataPacket):
        return {"entitlements": value.entitlements,
                "data_hex": None if value.data is None else value.data.hex()}
    if isinstance(value, list):
        return [_json_value(v) for v in value]
    return value


def message_fields(msg, version=3):
    """JSON-able dict of a message's wire fields at version: guids
    canonical, bytes as hex."""
    return {name: _json_value(getattr(msg, name))
            for name in wire_fields(type(msg), version)}
