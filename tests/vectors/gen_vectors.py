#!/usr/bin/env python3
"""Write the golden wire vectors of bus protocol 4 or 6 with the REAL client.

    gen_vectors.py --client DIR --version 4|6 --template wire-v3.json --out F

DIR is a checkout of rob-blackbourn/jetblack-messagebus-python3 at the tag
the version names (4.1.0 for 4, 6.0.0-alpha.1 for 6), fetched for the run
and never kept in this repository; `make check` never runs this script. The
message and login values are those of wire-v3.json (so 4's messages can be
seen to be byte-identical to 3's), and every "hex" is what the client's own
Message.write / Authenticator.authenticate put on a stream. At 6 the image
flag of the data messages becomes the client's content_type; the vectors
that need a non-ASCII string use the client's DataWriter with the one rule
of the C# DataWriter it gets wrong (string length = UTF-8 bytes, the client
writes characters), marked "csharp-rule" as in wire-v3.json.
"""
import argparse
import asyncio
import json
import subprocess
import sys
import uuid

DATA_TYPES = {1, 2, 8, 9}

# Content types given to the v6 data messages, by vector name; the image
# ones are what a selectfeed publisher sends, the server's own heartbeat,
# stale and not-entitled messages carry "".
V6_CONTENT_TYPES = {
    "multicast-image-multi-packet": "application/octet-stream",
    "multicast-delta-null-packets": "application/json",
    "multicast-empty-packet-list": "",
    "multicast-null-entitlements": "text/plain",
    "multicast-empty-entitlements": "text/plain",
    "multicast-null-data": "application/octet-stream",
    "multicast-entitlements-extreme": "application/x-delta",
    "unicast": "application/x-image",
    "forwarded-multicast": "application/json; charset=utf-8",
    "forwarded-multicast-empty-image": "",
    "forwarded-multicast-heartbeat": "",
    "forwarded-unicast": "application/x-delta",
    "forwarded-multicast-utf8": "text/plain; charset=\u00e9t\u00e9",
}

CLASS_NAMES = {
    1: "MulticastData", 2: "UnicastData", 3: "ForwardedSubscriptionRequest",
    4: "NotificationRequest", 5: "SubscriptionRequest",
    6: "AuthorizationRequest", 7: "AuthorizationResponse",
    8: "ForwardedMulticastData", 9: "ForwardedUnicastData",
}


class Sink:
    """Just enough of asyncio.StreamWriter for the client's DataWriter."""

    def __init__(self):
        self.buf = b""

    def write(self, data):
        self.buf += data

    async def drain(self):
        pass


def load_client(path):
    sys.path.insert(0, path)
    import jetblack_messagebus
    from jetblack_messagebus import messages, io
    from jetblack_messagebus import authentication
    if not jetblack_messagebus.__file__.startswith(path):
        sys.exit(f"imported {jetblack_messagebus.__file__}, not from {path}")
    return messages, io, authentication


def byte_length_writer(io):
    class CSharpRuleWriter(io.DataWriter):
        def write_string(self, val, encoding="utf-8"):
            if val is None:
                self.write_int(0)
            else:
                buf = val.encode(encoding)
                self.write_int(len(buf))
                self.writer.write(buf)
    return CSharpRuleWriter


def packets(io, want):
    if want is None:
        return None
    # A list keeps the vector's entitlement order; the client only
    # iterates the collection and takes its len().
    return [io.DataPacket(p["entitlements"],
                          None if p["data_hex"] is None else bytes.fromhex(p["data_hex"]))
            for p in want]


def message_args(io, fields):
    args = []
    for key, val in fields.items():
        if key == "client_id":
            args.append(uuid.UUID(val["uuid"]))
        elif key == "data_packets":
            args.append(packets(io, val))
        else:
            args.append(val)
    return args


def v6_fields(v):
    out = {}
    for key, val in v["fields"].items():
        if key == "is_image":
            out["content_type"] = V6_CONTENT_TYPES[v["name"]]
        else:
            out[key] = val
    return out


def encode_message(mods, v, fields, csharp_rule):
    messages, io, _ = mods
    cls = getattr(messages, CLASS_NAMES[v["type_id"]])
    msg = cls(*message_args(io, fields))
    sink = Sink()
    writer = (byte_length_writer(io) if csharp_rule else io.DataWriter)(sink)
    asyncio.run(msg.write(writer))
    if sink.buf[:1] != bytes([v["type_id"]]):
        # The 3.0.1 and 4.1.0 clients' ForwardedMulticastData.write omits
        # the type byte (the server writes it); as in wire-v3.json it is
        # prepended, and the vector says so.
        return bytes([v["type_id"]]) + sink.buf, True
    return sink.buf, False


def template_note(v, version):
    """wire-v3.json's note, where it still holds for this version."""
    note = v.get("note")
    if note is None or "client bug" in note:
        return []
    if version == 6 and v["type_id"] in DATA_TYPES:
        return []
    return [note]


def message_vectors(mods, template, version):
    out = []
    for v in template["vectors"]:
        if v["type_id"] is None:
            continue
        fields = v6_fields(v) if version == 6 and v["type_id"] in DATA_TYPES else v["fields"]
        csharp_rule = v["source"] == "csharp-rule"
        wire, headless = encode_message(mods, v, fields, csharp_rule)
        if version == 4 and wire.hex() != v["hex"]:
            sys.exit(f"{v['name']}: 4.1.0 encodes differently from 3.0.1")
        entry = {k: v[k] for k in ("name", "type", "type_id")}
        entry["fields"] = fields
        entry["hex"] = wire.hex()
        entry["source"] = "csharp-rule" if csharp_rule else CLIENT_SOURCE
        notes = [] if csharp_rule else template_note(v, version)
        if csharp_rule:
            notes.append("string length = UTF-8 byte count (C# DataWriter.Write(string)); "
                         "the python client writes the character count")
        if headless:
            notes.append(f"client bug: {CLASS_NAMES[v['type_id']]}.write omits the type "
                         "byte; prepended here")
        if version == 6 and v["type_id"] in DATA_TYPES:
            notes.append("v6: content type string in place of the image byte")
        if notes:
            entry["note"] = "; ".join(notes)
        out.append(entry)
    return out


JWT = ("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJhbGljZSIsImV4cCI6NDEwMjQ0NDgwMH0."
       "tYmQ6gRuvEGaRnYjnQccbyazPt-g1pjgCCgUhQ7N68A")

AUTH_CASES = [
    ("auth-null", "auth-null", "NullAuthenticator", {},
     "NullAuthenticator: nothing is sent; server user \"nobody\" (was \"unknown\" at 3)"),
    ("auth-password", "auth-password", "BasicAuthenticator",
     {"username": "tom", "password": "tomspass", "impersonating": None,
      "forwarded_for": None, "application": None},
     "one connection string; optional keys only when non-empty"),
    ("auth-password-all-keys", "auth-password", "BasicAuthenticator",
     {"username": "proxy", "password": "p=w", "impersonating": "alice",
      "forwarded_for": "client.example.com", "application": "busgate@gw1"},
     "every optional key, in the client's order; '=' in a value survives Split('=', 2)"),
    ("auth-jwt", "auth-jwt", "TokenAuthenticator",
     {"token": JWT, "impersonating": None, "forwarded_for": None, "application": None},
     "Token=<jwt>"),
    ("auth-jwt-forwarded-application", "auth-jwt", "TokenAuthenticator",
     {"token": JWT, "impersonating": None, "forwarded_for": "gateway.example.com",
      "application": "busgate@gw1"},
     "Token with ForwardedFor and Application"),
]


def auth_vectors(mods):
    _, io, authentication = mods
    out = []
    for name, typ, cls_name, fields, note in AUTH_CASES:
        cls = getattr(authentication, cls_name)
        sink = Sink()
        asyncio.run(cls(*fields.values()).authenticate(None, io.DataWriter(sink)))
        out.append({"name": name, "type": typ, "type_id": None, "client_class": cls_name,
                    "fields": fields, "hex": sink.buf.hex(), "source": CLIENT_SOURCE,
                    "note": note})
    return out


def client_commit(path):
    try:
        return subprocess.run(["git", "-C", path, "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def main():
    global CLIENT_SOURCE
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--client", required=True, help="python client checkout")
    ap.add_argument("--version", type=int, choices=(4, 6), required=True)
    ap.add_argument("--tag", required=True, help="the client's tag, for the record")
    ap.add_argument("--commit", help="the client's commit, for the record")
    ap.add_argument("--template", required=True, help="wire-v3.json")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    CLIENT_SOURCE = f"python-client-{a.tag}"
    mods = load_client(a.client)
    template = json.load(open(a.template, encoding="utf-8"))
    doc = {
        "description": f"jetblack-messagebus v{a.version} golden wire vectors: one message "
                       "per entry (type byte + body), or one authentication payload",
        "sources": {
            "client": f"jetblack-messagebus python {a.tag} @{a.commit or client_commit(a.client)}"
                      " (its own Message.write and Authenticator.authenticate)",
            "generator": "tests/vectors/gen_vectors.py (values from wire-v3.json)",
        },
        "protocol_version": a.version,
        "encoding": template["encoding"],
        "field_conventions": dict(template["field_conventions"]),
        "guid_example": template["guid_example"],
        "vectors": message_vectors(mods, template, a.version) + auth_vectors(mods),
    }
    doc["field_conventions"]["source"] = (
        f"\"{CLIENT_SOURCE}\" = bytes from the client's own write(); \"csharp-rule\" = the "
        "client's DataWriter with the C# rule for string lengths (UTF-8 bytes)")
    doc["encoding"] = dict(doc["encoding"])
    doc["encoding"]["login"] = (
        "one string: Username=u;Password=p or Token=t, then ;Impersonating=, ;ForwardedFor=, "
        ";Application= when non-empty; no escaping")
    if a.version == 6:
        doc["encoding"]["content_type"] = (
            "string in place of the image byte in MulticastData, UnicastData, "
            "ForwardedMulticastData, ForwardedUnicastData")
    with open(a.out, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=2, ensure_ascii=True)
        f.write("\n")


CLIENT_SOURCE = None

if __name__ == "__main__":
    main()
