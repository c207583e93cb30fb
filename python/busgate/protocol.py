"""The busgate line protocol (doc/PROTOCOL.md), without any I/O: name
escaping, packet specs, command formatting and an incremental parser of
what the daemon sends. Both the asyncio client and the blocking API use it."""

import os
import uuid
from typing import Iterable, List, NamedTuple, Optional, Set, Tuple

PROTO_VERSION = "1"
# busgated's compiled-in listen.path; $BUSGATE_SOCKET overrides it, as for
# the busgate CLI. `make install` writes the configured one in _config.py.
try:
    from ._config import DEFAULT_SOCKET
except ImportError:
    DEFAULT_SOCKET = "/run/busgate/busgate.sock"

# The largest DATA payload block read (libbusgate's default bound): a
# length from outside must not make the reader hold any amount of memory.
MAX_PAYLOAD = 64 << 20

# -ERR codes after which the daemon closes the session (PROTOCOL.md).
CLOSING_CODES = ("slow-consumer", "shutting-down", "too-many-sessions")


def default_socket() -> str:
    return os.environ.get("BUSGATE_SOCKET") or DEFAULT_SOCKET


class BusgateError(Exception):
    """An -ERR reply (code and message), or 'disconnected'."""

    def __init__(self, code: str, message: str = "") -> None:
        super().__init__("%s %s" % (code, message) if message else code)
        self.code = code
        self.message = message


# ------------------------------------------------------------------ names

def _must_escape(b: int) -> bool:
    return b <= 0x20 or b == 0x7F or b in (0x25, 0x22)


def escape(name) -> bytes:
    """A name (str, UTF-8 encoded, or bytes) as one token."""
    raw = name.encode("utf-8") if isinstance(name, str) else bytes(name)
    if not raw:
        return b'""'
    return b"".join(b"%%%02X" % b if _must_escape(b) else bytes((b,)) for b in raw)


_HEX = frozenset(b"0123456789abcdefABCDEF")


def unescape(token: bytes) -> bytes:
    if token == b'""':
        return b""
    out = bytearray()
    i = 0
    while i < len(token):
        if token[i] == 0x25:
            digits = token[i + 1:i + 3]
            # int() would also take "%4" at the end, "%+1" and "% 1".
            if len(digits) != 2 or not all(c in _HEX for c in digits):
                raise ValueError("bad escape in %r" % token[:80])
            out.append(int(digits, 16))
            i += 3
        else:
            out.append(token[i])
            i += 1
    return bytes(out)


def unescape_str(token: bytes) -> str:
    return unescape(token).decode("utf-8", errors="replace")


# ---------------------------------------------------------------- packets

class DataPacket:
    """One packet of a message: optional entitlements and optional data,
    as in the upstream client."""

    def __init__(self, entitlements: Optional[Set[int]] = None,
                 data: Optional[bytes] = None) -> None:
        self.entitlements = entitlements
        self.data = data

    def __eq__(self, other):
        return (isinstance(other, DataPacket) and self.entitlements == other.entitlements
                and (self.data or b"") == (other.data or b""))

    def __hash__(self):
        # As __eq__ compares (upstream's packets are hashable: sets, keys).
        ents = None if self.entitlements is None else frozenset(self.entitlements)
        return hash((ents, bytes(self.data or b"")))

    def __repr__(self) -> str:
        return "DataPacket(entitlements=%r, data=%r)" % (self.entitlements, self.data)


def format_packets(packets: Optional[Iterable[DataPacket]]) -> Tuple[List[bytes], bytes]:
    """Packet specs and the payload block's bytes (no terminator)."""
    specs, body = [], []
    for p in packets or ():
        data = bytes(p.data or b"")
        spec = b"%d" % len(data)
        if p.entitlements:
            spec += b":" + b",".join(b"%d" % e for e in sorted(p.entitlements))
        specs.append(spec)
        body.append(data)
    return specs, b"".join(body)


def _number(b: bytes) -> int:
    # int() also takes signs, spaces and underscores; the protocol's
    # numbers are digits only, and a negative length would desynchronise
    # the payload block instead of failing.
    if not b.isdigit():
        raise ValueError("not a number: %r" % b[:20])
    return int(b)


def parse_spec(spec: bytes) -> Tuple[int, Optional[Set[int]]]:
    length, _, ents = spec.partition(b":")
    return _number(length), ({_number(e) for e in ents.split(b",")} if ents else None)


def command(verb: str, *args, packets=None, extra: Iterable[bytes] = ()) -> bytes:
    """One command line, with its payload block when it has packets. Names
    are escaped; bytes arguments (keywords, ids) go as they are."""
    words = [verb.encode()]
    for a in args:
        words.append(a if isinstance(a, bytes) else escape(a))
    words.extend(extra)
    if packets is None:
        return b" ".join(words) + b"\n"
    specs, body = format_packets(packets)
    line = b" ".join(words + specs) + b"\n"
    return line + body + b"\n" if specs else line


def word_command(verb: str, word: Optional[str], what: str) -> bytes:
    """verb and an optional word sent as is (PING's token, STATS's view),
    which must need no escape: one with a separator or a newline would be
    two tokens, or two commands whose second reply would answer the next
    request (libbusgate's lp_is_word)."""
    if not word:
        return verb.encode() + b"\n"
    raw = word.encode("utf-8")
    if any(_must_escape(b) for b in raw):
        raise ValueError("%s is one plain word: no spaces, control characters, %% or \""
                         % what)
    return verb.encode() + b" " + raw + b"\n"


def client_id_token(client_id) -> bytes:
    return str(uuid.UUID(str(client_id))).encode()


# ----------------------------------------------------------------- events

class Hello(NamedTuple):
    version: str
    fields: dict          # max_line=..., bus=..., as strings


class Reply(NamedTuple):
    """+OK, -ERR, PONG, STAT or END: the answer to a command."""
    kind: str
    code: str = ""        # -ERR code, STAT name
    text: str = ""        # -ERR message, PONG token, STAT value


class Data(NamedTuple):
    feed: str
    topic: str
    user: str
    host: str
    is_image: bool
    unicast: bool
    content_type: Optional[str]
    packets: List[DataPacket]


class Notification(NamedTuple):
    is_add: bool
    client_id: uuid.UUID
    user: str
    host: str
    feed: str
    topic: str


class AuthRequest(NamedTuple):
    client_id: uuid.UUID
    user: str
    host: str
    feed: str
    topic: str


class BusState(NamedTuple):
    """A BUS line: the gateway's link to the distributor changed state."""
    state: str            # up, unconfirmed, down
    reason: str


class Revoked(NamedTuple):
    """A REVOKED line: the daemon's access rules ended a registration of
    this session (at a reload, or when a reconnect's restore was refused):
    verb subscribe (with its topic), notify or authorize."""
    verb: str
    feed: str
    topic: Optional[str]
    reason: str


class Link(NamedTuple):
    """Made by the client, not the daemon: the session to busgated itself
    was lost (down) or made again and restored (up)."""
    state: str
    reason: str


class Error(NamedTuple):
    """A closing -ERR (slow-consumer, shutting-down...): the daemon ends
    the session after it; the client reconnects."""
    code: str
    message: str


def _words(line: bytes) -> List[bytes]:
    return line.split()


def parse_hello(line: bytes) -> Hello:
    w = line.decode("utf-8", errors="replace").split()
    if len(w) < 4 or w[:2] != ["HELLO", "busgate"]:
        raise BusgateError("protocol", "not a busgated greeting: %r" % line[:80])
    fields = dict(x.split("=", 1) for x in w[3:] if "=" in x)
    if fields.get("proto") != PROTO_VERSION:
        raise BusgateError("protocol", "busgated speaks proto=%s, this client %s"
                           % (fields.get("proto"), PROTO_VERSION))
    return Hello(w[2], fields)


def _data(w: List[bytes], payloads: List[bytes]) -> Data:
    rest = w[7:]
    ctype = None
    if rest and rest[0].startswith(b"type="):
        ctype, rest = unescape_str(rest[0][5:]), rest[1:]
    packets = [DataPacket(parse_spec(s)[1], d) for s, d in zip(rest, payloads)]
    return Data(unescape_str(w[1]), unescape_str(w[2]), unescape_str(w[3]),
                unescape_str(w[4]), w[5] == b"image", w[6] == b"unicast", ctype, packets)


def _text(b: bytes) -> str:
    return b.decode("utf-8", errors="replace")


def parse_line(line: bytes, payloads: List[bytes] = ()):
    """One line from the daemon (and a DATA's payloads) as an event or reply;
    BusgateError protocol for one that is not the protocol (a line cut
    short included), so that the session is dropped and made again."""
    try:
        return _parse_line(line, payloads)
    except (IndexError, ValueError, TypeError) as e:   # TypeError: too few names
        raise BusgateError("protocol", "unexpected line from busgated: %r (%s)"
                           % (line[:80], e)) from None


def _parse_line(line: bytes, payloads: List[bytes]):
    w = _words(line)
    kind = w[0] if w else b""
    if kind == b"DATA":
        return _data(w, list(payloads))
    if kind == b"NOTIFICATION":
        return Notification(w[1] == b"add", uuid.UUID(_text(w[2])),
                            *(unescape_str(x) for x in w[3:7]))
    if kind == b"AUTHREQ":
        return AuthRequest(uuid.UUID(_text(w[1])), *(unescape_str(x) for x in w[2:6]))
    if kind == b"BUS":
        return BusState(_text(w[1]), _text(b" ".join(w[2:])))
    if kind == b"REVOKED" and len(w) >= 3:
        k = 4 if w[1] == b"subscribe" else 3
        return Revoked(_text(w[1]), unescape_str(w[2]),
                       unescape_str(w[3]) if k == 4 else None, _text(b" ".join(w[k:])))
    rest = _text(line.strip()).split(" ", 2)
    if kind == b"-ERR":
        code, text = rest[1] if len(rest) > 1 else "", rest[2] if len(rest) > 2 else ""
        return Error(code, text) if code in CLOSING_CODES else Reply("-ERR", code, text)
    if kind == b"STAT":
        return Reply("STAT", rest[1], rest[2] if len(rest) > 2 else "")
    if kind in (b"+OK", b"PONG", b"END"):
        return Reply(_text(kind), "", " ".join(rest[1:]))
    raise BusgateError("protocol", "unexpected line from busgated: %r" % line[:80])


def payload_length(line: bytes) -> int:
    """How many payload bytes follow a DATA line (-1: no payload block)."""
    w = _words(line)
    if not w or w[0] != b"DATA":
        return -1
    specs = [s for s in w[7:] if not s.startswith(b"type=")]
    if not specs:
        return -1
    n = sum(parse_spec(s)[0] for s in specs)
    if n > MAX_PAYLOAD:
        raise ValueError("a payload block of %d bytes (the bound is %d)" % (n, MAX_PAYLOAD))
    return n


def split_payload(line: bytes, block: bytes) -> List[bytes]:
    out, at = [], 0
    for s in _words(line)[7:]:
        if not s.startswith(b"type="):
            n = parse_spec(s)[0]
            out.append(block[at:at + n])
            at += n
    return out
