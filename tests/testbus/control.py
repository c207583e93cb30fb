"""Start, drive and inspect the test bus from integration tests.

    from control import TestBus, make_pki, make_jwt
    bus = TestBus(tmpdir)          # TLS + password auth, user gw / gwpass
    bus.start()                    # bus.port, bus.ca_file, bus.log_path
    ...
    bus.wait_for(lambda r: r["event"] == "recv"
                 and r["type"] == "SubscriptionRequest")
    bus.stop()

Standard library plus the openssl command line tool (for make_pki).
"""

import base64
import hashlib
import hmac
import json
import os
import selectors
import signal
import subprocess
import sys
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)
TESTBUS = os.path.join(HERE, "testbus.py")
DEFAULT_JWT_SECRET = "a secret of more than 15 characters"
DEFECTS = ("unsubscribe", "silent-login", "null-packets")

_DEFAULT = object()

__all__ = ["TestBus", "make_pki", "make_jwt", "Pki", "DEFAULT_JWT_SECRET"]


# --------------------------------------------------------------------- PKI

EXTRA_CERTS = ("rsa", "cnonly")


class Pki:
    """Paths of the files make_pki() wrote."""

    def __init__(self, d):
        self.dir = d
        self.ca_cert = os.path.join(d, "ca.pem")
        self.ca_key = os.path.join(d, "ca.key")
        for name in ("server", "selfsigned", "wronghost", "expired") + EXTRA_CERTS:
            setattr(self, name + "_cert", os.path.join(d, name + ".pem"))
            setattr(self, name + "_key", os.path.join(d, name + ".key"))

    def __getitem__(self, name):
        return getattr(self, name)

    def __repr__(self):
        return "Pki(%r)" % self.dir


_OPENSSL_CNF = """\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[leaf]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
subjectAltName = DNS:localhost,IP:127.0.0.1
[selfleaf]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyCertSign
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
subjectAltName = DNS:localhost,IP:127.0.0.1
[rsaleaf]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
subjectAltName = DNS:localhost,IP:127.0.0.1
[cnonly]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[wrong]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
subjectAltName = DNS:wrong.example
"""

_EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


def _openssl(*args):
    r = subprocess.run(["openssl"] + list(args), stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT)
    if r.returncode != 0:
        raise RuntimeError("openssl %s failed:\n%s"
                           % (" ".join(args),
                              r.stdout.decode(errors="replace")))


def make_pki(d):
    """Write a test PKI into directory d (reused if already complete).

    ca_cert/ca_key: a CA.  server_*: localhost + IP 127.0.0.1, signed by the
    CA.  selfsigned_*: the same names, self-signed.  wronghost_*: signed by
    the CA for wrong.example only.  expired_*: like server_* but expired
    yesterday.  All keys are EC P-256 (fast to make).
    """
    pki = Pki(d)
    if all(os.path.exists(getattr(pki, n)) for n in
           ("ca_cert", "server_cert", "selfsigned_cert", "wronghost_cert",
            "expired_cert", "expired_key")):
        return pki
    os.makedirs(d, exist_ok=True)
    cnf = os.path.join(d, "openssl.cnf")
    with open(cnf, "w") as f:
        f.write(_OPENSSL_CNF)
    _openssl("req", "-x509", *_EC, "-config", cnf, "-extensions", "ca",
             "-subj", "/CN=busgate test CA", "-days", "3650",
             "-keyout", pki.ca_key, "-out", pki.ca_cert)
    _openssl("req", "-x509", *_EC, "-config", cnf, "-extensions", "selfleaf",
             "-subj", "/CN=localhost", "-days", "3650",
             "-keyout", pki.selfsigned_key, "-out", pki.selfsigned_cert)
    serial = 1
    for name, cn, ext, days in (("server", "localhost", "leaf", "3650"),
                                ("wronghost", "wrong.example", "wrong",
                                 "3650"),
                                ("expired", "localhost", "leaf", "-1")):
        csr = os.path.join(d, name + ".csr")
        _openssl("req", "-new", *_EC, "-config", cnf, "-subj", "/CN=" + cn,
                 "-keyout", getattr(pki, name + "_key"), "-out", csr)
        serial += 1
        _openssl("x509", "-req", "-in", csr, "-CA", pki.ca_cert,
                 "-CAkey", pki.ca_key, "-set_serial", str(serial),
                 "-days", days, "-extfile", cnf, "-extensions", ext,
                 "-out", getattr(pki, name + "_cert"))
        os.unlink(csr)
    return pki


# Certificates made only when a test asks for them (an RSA key is slow):
# name -> (key options, openssl.cnf extensions).
_EXTRA = {
    "rsa": (["-newkey", "rsa:2048", "-nodes"], "rsaleaf"),
    "cnonly": (_EC, "cnonly"),
}


def make_extra_cert(pki, name):
    """Write pki's certificate name from EXTRA_CERTS (if not there yet),
    signed by its CA for CN=localhost: "rsa" an RSA leaf with the usual
    names, "cnonly" an EC leaf whose only name is the subject CN."""
    if os.path.exists(pki[name + "_cert"]):
        return pki
    keyopts, ext = _EXTRA[name]
    cnf = os.path.join(pki.dir, "openssl.cnf")
    with open(cnf, "w") as f:
        f.write(_OPENSSL_CNF)
    csr = os.path.join(pki.dir, name + ".csr")
    _openssl("req", "-new", *keyopts, "-config", cnf, "-subj", "/CN=localhost",
             "-keyout", pki[name + "_key"], "-out", csr)
    _openssl("x509", "-req", "-in", csr, "-CA", pki.ca_cert, "-CAkey", pki.ca_key,
             "-set_serial", str(10 + sorted(_EXTRA).index(name)), "-days", "3650",
             "-extfile", cnf, "-extensions", ext, "-out", pki[name + "_cert"])
    os.unlink(csr)
    return pki


# --------------------------------------------------------------------- JWT

def _b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def make_jwt(secret, sub, exp_seconds_from_now=3600, alg="HS256",
             extra=None):
    """An HS256/384/512 JWT with sub and exp (None: no exp claim)."""
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384,
              "HS512": hashlib.sha512}[alg]
    claims = {"sub": sub}
    if exp_seconds_from_now is not None:
        claims["exp"] = int(time.time() + exp_seconds_from_now)
    claims.update(extra or {})
    head = _b64url(json.dumps({"alg": alg, "typ": "JWT"},
                              separators=(",", ":")).encode())
    body = _b64url(json.dumps(claims, separators=(",", ":")).encode())
    signing_input = (head + "." + body).encode("ascii")
    sig = hmac.new(secret.encode("utf-8"), signing_input, digest).digest()
    return head + "." + body + "." + _b64url(sig)


# ----------------------------------------------------------------- TestBus

class TestBus:
    """The test bus as a child process, with its JSON event log."""

    __test__ = False  # not a test case, whatever the runner thinks

    def __init__(self, workdir, tls=True, auth="password", heartbeat=None,
                 feeds=None, users=None, defects=(), fault=None, port=0,
                 jwt_secret=DEFAULT_JWT_SECRET, jwt_skew=None,
                 heartbeat_host=None, cert="server", extra_args=(),
                 name="testbus", protocol=3):
        self.workdir = os.path.abspath(workdir)
        self.tls = tls
        self.auth = auth
        self.heartbeat = heartbeat
        self.feeds = feeds
        self.users = {"gw": "gwpass"} if users is None else dict(users)
        self.defects = tuple(defects)
        for d in self.defects:
            if d not in DEFECTS:
                raise ValueError("unknown defect %r (known: %s)"
                                 % (d, ", ".join(DEFECTS)))
        self.fault = fault
        self.port = port
        self.jwt_secret = jwt_secret
        self.jwt_skew = jwt_skew
        self.heartbeat_host = heartbeat_host
        if cert not in ("server", "selfsigned", "wronghost", "expired") + EXTRA_CERTS:
            raise ValueError("cert must be server, selfsigned, wronghost, "
                             "expired, rsa or cnonly")
        self.cert = cert
        self.extra_args = list(extra_args)
        self.name = name
        self.protocol = protocol
        self.proc = None
        self.pki = None
        self.ca_file = None
        self.log_path = os.path.join(self.workdir, name + ".log")
        self.stderr_path = os.path.join(self.workdir, name + ".stderr")
        self._records = []
        self._log_pos = 0
        self._partial = b""

    # ------------------------------------------------------- life cycle

    def command(self):
        os.makedirs(self.workdir, exist_ok=True)
        cmd = [sys.executable, TESTBUS, "--host", "127.0.0.1",
               "--port", str(self.port), "--auth", self.auth,
               "--log", self.log_path, "--protocol", str(self.protocol)]
        if self.tls:
            self.pki = make_pki(os.path.join(self.workdir, "pki"))
            if self.cert in EXTRA_CERTS:
                make_extra_cert(self.pki, self.cert)
            self.ca_file = self.pki.ca_cert
            cmd += ["--tls-cert", getattr(self.pki, self.cert + "_cert"),
                    "--tls-key", getattr(self.pki, self.cert + "_key")]
        if self.auth == "password":
            path = os.path.join(self.workdir, self.name + ".users")
            with open(path, "w") as f:
                f.write("# user:password\n")
                for u, p in self.users.items():
                    f.write("%s:%s\n" % (u, p))
            cmd += ["--users", path]
        elif self.auth == "jwt":
            cmd += ["--jwt-secret", self.jwt_secret]
            if self.jwt_skew is not None:
                cmd += ["--jwt-skew", str(self.jwt_skew)]
        if self.feeds is not None:
            path = os.path.join(self.workdir, self.name + ".feeds.json")
            with open(path, "w") as f:
                json.dump(self.feeds, f, indent=1)
            cmd += ["--feeds", path]
        if self.heartbeat:
            cmd += ["--heartbeat", str(self.heartbeat)]
        if self.heartbeat_host:
            cmd += ["--heartbeat-host", self.heartbeat_host]
        for d in self.defects:
            cmd.append("--defect-" + d)
        if self.fault:
            cmd += ["--fault", self.fault]
        return cmd + self.extra_args

    def start(self, timeout=15.0):
        """Spawn the bus and wait until it listens; returns self."""
        if self.proc is not None:
            raise RuntimeError("test bus already running")
        cmd = self.command()
        err = open(self.stderr_path, "ab")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err,
                                     stdin=subprocess.DEVNULL)
        err.close()
        line = self._read_port_line(timeout)
        if not line.startswith(b"PORT "):
            self._reap()
            raise RuntimeError("test bus did not start (%r); stderr: %s"
                               % (line, self._stderr_tail()))
        self.port = int(line.split()[1])
        return self

    def _read_port_line(self, timeout):
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        buf = b""
        fd = self.proc.stdout.fileno()
        while b"\n" not in buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not sel.select(remaining):
                break
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            buf += chunk
        sel.close()
        return buf.split(b"\n")[0].strip()

    def _stderr_tail(self):
        try:
            with open(self.stderr_path, "rb") as f:
                return f.read()[-2000:].decode(errors="replace")
        except OSError:
            return ""

    def _reap(self, timeout=5.0):
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        try:
            rc = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
        proc.stdout.close()
        return rc

    def signal(self, sig):
        if self.proc is None:
            raise RuntimeError("test bus not running")
        self.proc.send_signal(sig)

    def drop_all(self):
        """Drop every client connection (SIGUSR1); keep listening."""
        self.signal(signal.SIGUSR1)

    def stop(self, timeout=10.0):
        """SIGTERM and wait; returns the exit status (None if not running)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self._reap(timeout)

    def kill(self):
        """SIGKILL: the bus vanishes without closing anything."""
        if self.proc is not None:
            self.proc.kill()
            self._reap()

    def restart(self, timeout=15.0):
        """Stop and start again on the same port."""
        self.stop()
        return self.start(timeout)

    @property
    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def __enter__(self):
        if self.proc is None:
            self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    # -------------------------------------------------------------- log

    def records(self):
        """Every log record so far (appended across restarts)."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self._log_pos)
                data = f.read()
        except FileNotFoundError:
            data = b""
        data = self._partial + data
        self._log_pos += len(data) - len(self._partial)
        lines = data.split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            if line.strip():
                self._records.append(json.loads(line))
        return list(self._records)

    def mark(self):
        """A position in the log for since= (records from now on)."""
        return len(self.records())

    def events(self, event=None, conn=None, since=0):
        return [r for r in self.records()[since:]
                if (event is None or r["event"] == event)
                and (conn is None or r.get("conn") == conn)]

    def messages(self, type=None, conn=None, direction=None, since=0):
        """Messages the bus received ('recv') and sent ('send')."""
        dirs = ("recv", "send") if direction is None else (direction,)
        return [r for r in self.records()[since:]
                if r["event"] in dirs
                and (type is None or r.get("type") == type)
                and (conn is None or r.get("conn") == conn)]

    def wait_for(self, predicate, timeout=10.0, since=0):
        """First record (from since on) for which predicate(record) is true;
        TimeoutError if none appears within timeout."""
        deadline = time.monotonic() + timeout
        while True:
            for r in self.records()[since:]:
                if predicate(r):
                    return r
            if time.monotonic() >= deadline:
                tail = self.records()[-10:]
                raise TimeoutError("no matching test bus record within %.1fs;"
                                   " last records: %s"
                                   % (timeout, json.dumps(tail)))
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError("test bus exited (%s); stderr: %s"
                                   % (self.proc.returncode,
                                      self._stderr_tail()))
            time.sleep(0.02)

    def logins(self, user=None):
        return [r for r in self.events("login")
                if user is None or r.get("user") == user]

    def run_records(self):
        """Records of the current run (since the last 'listen')."""
        recs = self.records()
        for i in range(len(recs) - 1, -1, -1):
            if recs[i]["event"] == "listen":
                return recs[i:]
        return recs

    def identify(self, client, timeout=10.0):
        """Wait until the bus has judged client's login.

        Finds the bus connection by the client's local port and returns its
        'login' or 'login-failed' record; on login also sets client.conn and
        client.client_id (uuid.UUID), which the bus never tells a client.
        """
        port = client.local_port
        deadline = time.monotonic() + timeout
        while True:
            conn = None
            for r in self.run_records():
                if r["event"] == "open" and r.get("peer") and \
                        r["peer"][1] == port:
                    conn = r["conn"]
                elif conn is not None and r.get("conn") == conn and \
                        r["event"] in ("login", "login-failed"):
                    if r["event"] == "login":
                        client.conn = conn
                        client.client_id = uuid.UUID(r["client_id"])
                    return r
            if time.monotonic() >= deadline:
                raise TimeoutError("the bus judged no login from local port "
                                   "%d within %.1fs" % (port, timeout))
            time.sleep(0.01)

    def sync(self, *clients, timeout=10.0):
        """Return once the bus has handled everything these clients sent.

        Each client sends a no-op (NotificationRequest remove for a feed of
        its own) and the bus's log of it is awaited; a connection's
        messages are handled in order, so all earlier ones are done.
        """
        for c in clients:
            self._sync_count = getattr(self, "_sync_count", 0) + 1
            feed = "__sync__%d" % self._sync_count
            c.notify(feed, add=False)
            self.wait_for(lambda r, feed=feed: r["event"] == "recv"
                          and r.get("type") == "NotificationRequest"
                          and r["fields"]["feed"] == feed, timeout)

    def client(self, user="gw", password=None, token=None, auth=_DEFAULT,
               wait_login=True, **kw):
        """A BusClient logged in the way this bus expects.

        auth overrides the credentials (see BusClient).  With wait_login the
        call returns once the bus has logged the client in, with client.conn
        and client.client_id set (AssertionError if the login failed).
        """
        from busclient import BusClient
        if auth is _DEFAULT:
            if self.auth == "password":
                auth = ("password", user,
                        self.users.get(user) if password is None
                        else password)
            elif self.auth == "jwt":
                auth = ("jwt", token if token is not None
                        else make_jwt(self.jwt_secret, user, 3600))
            else:
                auth = None
        kw.setdefault("tls_ca", self.ca_file if self.tls else None)
        kw.setdefault("server_name", "localhost")
        kw.setdefault("protocol", self.protocol)
        c = BusClient("127.0.0.1", self.port, auth=auth, **kw)
        if wait_login:
            try:
                rec = self.identify(c)
            except Exception:
                c.close()
                raise
            if rec["event"] != "login":
                c.close()
                raise AssertionError("test bus refused the login: %s"
                                     % rec.get("reason"))
        return c
