"""busgated as an operator sees it, and the busgate CLI end to end.

The daemon's command line (--version, --help, --check-config on good and
broken configurations), reload on SIGHUP, the systemd notify protocol,
socket activation, stale and live socket files, --daemon --pidfile, and
every busgate command against the real daemon and the test bus, with the
exit codes scripts rely on.
"""

import base64
import contextlib
import ctypes
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import gwtest  # noqa: E402
from gwtest import TIMEOUT, Gateway, Session, TestBus, tempdir  # noqa: E402

BUSGATED = gwtest.BUSGATED
BUSGATE = gwtest.BUSGATE
SECRET = "pa55-w0rd-nobody-may-see"
HOST = socket.gethostname()     # how the test bus names a 127.0.0.1 peer


def run(args, input=None, env=None, timeout=TIMEOUT):
    """Run a program to completion; CompletedProcess with bytes output."""
    full = dict(os.environ)
    full.update(env or {})
    return subprocess.run(args, input=input, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, env=full, timeout=timeout)


def wait_until(pred, what, timeout=TIMEOUT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.02)
    raise TimeoutError("timed out waiting for " + what)


@contextlib.contextmanager
def environ(**values):
    """Set environment variables for children started inside the block."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class WorkDir(unittest.TestCase):
    """A fresh short temp directory per test, removed afterwards."""

    def setUp(self):
        self.tmp = tempdir()

    def tearDown(self):
        if not os.environ.get("BUSGATE_TEST_KEEP"):
            shutil.rmtree(self.tmp, ignore_errors=True)


# ------------------------------------------------------------ command line

class CommandLine(unittest.TestCase):

    def test_version(self):
        r = run([BUSGATED, "--version"])
        self.assertEqual(r.returncode, 0, r)
        self.assertRegex(r.stdout.decode(),
                         r"^busgated \S+ \(bus protocol v3, line protocol 1\)\n$")
        r = run([BUSGATE, "-V"])
        self.assertEqual(r.returncode, 0, r)
        self.assertRegex(r.stdout.decode(), r"^busgate \S+ \(line protocol 1\)\n$")

    def test_help(self):
        r = run([BUSGATED, "--help"])
        self.assertEqual(r.returncode, 0, r)
        out = r.stdout.decode()
        for opt in ("--config", "--check-config", "--daemon", "--pidfile",
                    "--debug", "--version", "--help"):
            self.assertIn(opt, out)
        r = run([BUSGATE, "--help"])
        self.assertEqual(r.returncode, 0, r)
        out = r.stdout.decode()
        for word in ("sub FEED TOPIC", "pub FEED TOPIC", "send CLIENT-ID",
                     "notify FEED", "authorize FEED", "stats", "ping",
                     "--socket", "exit status"):
            self.assertIn(word, out)

    def test_daemon_usage_errors(self):
        for args in (["--no-such-option"], ["stray-argument"], ["-c"]):
            r = run([BUSGATED] + args)
            self.assertEqual(r.returncode, 2, (args, r))
            self.assertIn(b"usage: busgated", r.stderr)

    def test_cli_usage_errors_send_nothing(self):
        # A socket nobody listens on: a CLI that tried to connect would
        # exit 3, so 2 shows the command line was refused first.
        nowhere = "/nonexistent/busgate.sock"
        cases = [
            [], ["frobnicate"], ["sub", "F"], ["pub", "F"], ["pub", "F", "T", "X"],
            ["pub", "F", "T", "--hex"], ["sub", "F", "T", "--image"],
            ["pub", "F", "T", "--entitlements", "1,x"],
            ["pub", "F", "T", "--entitlements", ""],
            ["pub", "F", "T", "--entitlements", "99999999999"],
            ["send", "not-a-guid", "F", "T"], ["sub", "F", "T", "--count", "many"],
            ["sub", "F", "T", "--hex", "--base64"], ["stats", "extra"],
            ["authorize", "F", "--entitlements", "1", "--not-required"],
            ["--timeout", "-1", "ping"], ["--bogus", "ping"],
        ]
        for args in cases:
            r = run([BUSGATE, "--socket", nowhere] + args)
            self.assertEqual(r.returncode, 2, (args, r))
            self.assertIn(b"Try 'busgate --help'.", r.stderr, args)
            self.assertEqual(r.stdout, b"", args)

    def test_cli_count_zero_usage_error(self):
        # 0 is not "no limit": a script computing --count 0 would wait for ever.
        for cmd in (["sub", "F", "T"], ["notify", "F"], ["authorize", "F"]):
            r = run([BUSGATE, "--socket", "/nonexistent/busgate.sock"] + cmd + ["--count", "0"])
            self.assertEqual(r.returncode, 2, (cmd, r))
            self.assertIn(b"busgate: --count must be at least 1\n", r.stderr, cmd)

    def test_cli_usage_messages_name_the_option(self):
        # Every message starts "busgate:" (not getopt's argv[0]) and names
        # the option at fault; an empty --socket is a usage error too.
        nowhere = "/nonexistent/busgate.sock"
        cases = [
            (["sub", "F", "T", "--hex", "-e", "1"], "--entitlements does not apply to 'sub'"),
            (["pub", "F", "T", "--base64"], "--base64 does not apply to 'pub'"),
            (["ping", "--count", "1"], "--count does not apply to 'ping'"),
            (["-s", "", "ping"], "--socket wants a path, not ''"),
            (["ping", "-s"], "option '-s' needs an argument"),
            (["ping", "--timeout"], "option '--timeout' needs an argument"),
            (["--frob", "ping"], "unknown or ambiguous option '--frob'"),
            (["--hex=1", "sub", "F", "T"], "option '--hex' takes no argument"),
            (["-x", "ping"], "unknown option '-x'"),
        ]
        for args, msg in cases:
            with self.subTest(args=args):
                r = run([BUSGATE, "--socket", nowhere] + args)
                self.assertEqual(r.returncode, 2, r)
                self.assertEqual(r.stderr.decode(),
                                 "busgate: %s\nTry 'busgate --help'.\n" % msg)

    def test_cli_no_daemon_exit_3(self):
        r = run([BUSGATE, "--socket", "/nonexistent/busgate.sock", "ping"])
        self.assertEqual(r.returncode, 3, r)
        self.assertIn(b"cannot connect to /nonexistent/busgate.sock", r.stderr)
        r = run([BUSGATE, "ping"], env={"BUSGATE_SOCKET": "/nonexistent/env.sock"})
        self.assertEqual(r.returncode, 3, r)
        self.assertIn(b"/nonexistent/env.sock", r.stderr)


# ------------------------------------------------------------ units, man pages

TOP_SRCDIR = gwtest.TOP_SRCDIR
TOP_BUILDDIR = gwtest.TOP_BUILDDIR
MAN_PAGES = ("busgate.1", "busgated.8", "busgated.yaml.5", "libbusgate.3")


class UnitsAndManPages(WorkDir):
    """The generated systemd units pass systemd-analyze, the man pages groff."""

    def unit_copies(self):
        """The built units, ExecStart pointing at the built daemon (the
        installed path need not exist here), and a man tree for the
        Documentation= links."""
        out = {}
        for name in ("busgated.service", "busgated.socket"):
            path = os.path.join(TOP_BUILDDIR, "systemd", name)
            if not os.path.exists(path):
                self.skipTest("%s not built (make all)" % path)
            with open(path) as f:
                text = f.read()
            self.assertNotIn("@sbindir@", text)
            self.assertNotIn("@sysconfdir@", text)
            text = re.sub(r"(?m)^(ExecStart=)\S+/busgated ", r"\g<1>%s " % BUSGATED, text)
            out[name] = os.path.join(self.tmp, name)
            with open(out[name], "w") as f:
                f.write(text)
        for page in MAN_PAGES:
            d = os.path.join(self.tmp, "man", "man" + page.rsplit(".", 1)[1])
            os.makedirs(d, exist_ok=True)
            os.symlink(os.path.join(TOP_SRCDIR, "doc", page), os.path.join(d, page))
        return out

    def analyze(self, *args):
        if shutil.which("systemd-analyze") is None:
            self.skipTest("no systemd-analyze")
        return run(["systemd-analyze"] + list(args), env={
            "MANPATH": os.path.join(self.tmp, "man"), "SYSTEMD_PAGER": "", "LC_ALL": "C.UTF-8"})

    def test_units_verify(self):
        units = self.unit_copies()
        with open(units["busgated.service"]) as f:
            service = f.read()
        for line in ("Type=notify", "NotifyAccess=main", "WatchdogSec=30s",
                     "ExecReload=/bin/kill -HUP $MAINPID", "Restart=on-failure",
                     "RuntimeDirectory=busgate", "ConfigurationDirectory=busgate",
                     "ProtectSystem=strict", "CapabilityBoundingSet=",
                     "SystemCallFilter=@system-service",
                     "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6"):
            self.assertRegex(service, r"(?m)^%s$" % re.escape(line))
        self.assertRegex(service, r"(?m)^ExecStart=%s -c /\S+/busgate/busgated\.yaml$"
                         % re.escape(BUSGATED))
        r = self.analyze("verify", units["busgated.service"], units["busgated.socket"])
        self.assertEqual((r.returncode, r.stdout, r.stderr), (0, b"", b""), r)

    def test_service_exposure(self):
        units = self.unit_copies()
        r = self.analyze("security", "--offline=yes", "--no-pager", units["busgated.service"])
        if r.returncode != 0 and b"offline" in r.stderr:
            self.skipTest("systemd-analyze security --offline unsupported")
        m = re.search(rb"Overall exposure level for busgated\.service: ([0-9.]+)", r.stdout)
        self.assertIsNotNone(m, r)
        self.assertLessEqual(float(m.group(1)), 2.0, r.stdout.decode()[-3000:])

    def test_man_pages_render_without_warnings(self):
        if shutil.which("groff") is None:
            self.skipTest("no groff")
        for page in MAN_PAGES:
            r = run(["groff", "-man", "-Tutf8", "-ww", "-z",
                     os.path.join(TOP_SRCDIR, "doc", page)])
            self.assertEqual((r.returncode, r.stderr), (0, b""), page)

    def test_man_pages_document_every_config_key(self):
        """Every key --check-config prints is in busgated.yaml(5)."""
        cfg = os.path.join(self.tmp, "c.yaml")
        with open(cfg, "w") as f:
            f.write("bus:\n  host: h\n  tls: false\n")
        r = run([BUSGATED, "-t", "-c", cfg])
        self.assertEqual(r.returncode, 0, r)
        keys, stack = [], []
        for line in r.stdout.decode().splitlines():
            m = re.match(r"^( *)([a-z_]+):", line)
            if not m:
                continue
            depth = len(m.group(1)) // 2
            stack[depth:] = [m.group(2)]
            keys.append(".".join(stack))
        with open(os.path.join(TOP_SRCDIR, "doc", "busgated.yaml.5")) as f:
            page = f.read().replace("\\-", "-")
        missing = [k for k in keys if "." in k and k not in page]
        self.assertEqual(missing, [])
        self.assertGreater(len(keys), 40)

    def test_shipped_config_shows_defaults(self):
        """etc/busgated.yaml says every setting is shown with its default:
        without the lines marked "example" it is the default configuration
        (bus.host, required, is given the same value in both; listen.path's
        default follows --runstatedir, as the file says)."""
        with open(os.path.join(TOP_SRCDIR, "etc", "busgated.yaml")) as f:
            shipped = f.read()
        self.assertRegex(shipped, r"(?m)^  host: \S+ +# example$")
        kept = [line for line in shipped.splitlines()
                if not re.search(r"#\s*example\b", line)
                and not re.match(r"^  (host|path): ", line)]
        shipped = "\n".join(kept).replace("\nbus:\n", "\nbus:\n  host: h\n", 1)
        dumps = []
        for name, text in (("shipped.yaml", shipped), ("defaults.yaml", "bus:\n  host: h\n")):
            path = os.path.join(self.tmp, name)
            with open(path, "w") as f:
                f.write(text)
            r = run([BUSGATED, "-t", "-c", path])
            self.assertEqual(r.returncode, 0, r)
            dumps.append(r.stdout.decode().split("\n", 1)[1])
        self.assertEqual(dumps[0], dumps[1])


# ------------------------------------------------------------ --check-config

class CheckConfig(WorkDir):

    def setUp(self):
        super().setUp()
        self.creds = os.path.join(self.tmp, "credentials.ini")
        fd = os.open(self.creds, os.O_WRONLY | os.O_CREAT, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("[bus]\nusername = gw\npassword = %s\n" % SECRET)
        os.chmod(self.creds, 0o600)

    def check(self, text, name="busgated.yaml"):
        path = os.path.join(self.tmp, name)
        with open(path, "w") as f:
            f.write(text)
        return run([BUSGATED, "--check-config", "-c", path]), path

    GOOD = ("bus:\n  host: bus.example.com\n  auth: basic\n"
            "  credentials_file: credentials.ini\n"
            "listen:\n  path: /tmp/never-bound.sock\n  max_output: 2MiB\n")

    def test_good_config_prints_effective_config(self):
        r, path = self.check(self.GOOD)
        self.assertEqual(r.returncode, 0, r)
        out, err = r.stdout.decode(), r.stderr.decode()
        self.assertIn("configuration OK", err)
        self.assertRegex(out, r'(?m)^  host: "bus\.example\.com"$')
        self.assertRegex(out, r"(?m)^  max_output: 2MiB$")        # as written
        self.assertRegex(out, r"(?m)^  max_sessions: 10000$")     # a default
        self.assertRegex(out, r"(?m)^  shutdown_grace: 5s$")      # a default
        self.assertRegex(out, r'(?m)^  credentials_file: "%s"$' % re.escape(self.creds))
        for section in ("bus", "listen", "router", "log", "daemon"):
            self.assertRegex(out, r"(?m)^%s:$" % section)
        self.assertNotIn(SECRET, out + err)
        self.assertFalse(os.path.exists("/tmp/never-bound.sock"))

    def test_tls_files_are_loaded_not_only_opened(self):
        """A CA file that is no PEM opened fine, so --check-config said OK
        and the link then never came up (and a reload was refused)."""
        with open(os.path.join(self.tmp, "bad.pem"), "w") as f:
            f.write("notpem\n")
        r, path = self.check(self.GOOD.replace("  auth: basic\n",
                                               "  auth: basic\n  tls: {ca_file: bad.pem}\n"),
                             "badtls.yaml")
        self.assertEqual(r.returncode, 1, r)
        # Where bus.tls is in the file (line 4, its value at column 8).
        self.assertRegex(r.stderr.decode(), r"^busgated: %s:4:8: bus\.tls: cannot load CA "
                         r"certificates from .*bad\.pem" % re.escape(path))

    def test_unknown_key_did_you_mean(self):
        r, path = self.check("bus:\n  host: x\n  prot: 9091\n", "bad.yaml")
        self.assertEqual(r.returncode, 1, r)
        self.assertEqual(r.stdout, b"")
        self.assertRegex(r.stderr.decode(), r"%s:3:3: unknown key 'bus\.prot' "
                         r"\(did you mean 'port'\?\)" % re.escape(path))

    def test_wrong_type(self):
        r, path = self.check("bus:\n  host: x\n  port: lots\n", "bad.yaml")
        self.assertEqual(r.returncode, 1, r)
        self.assertRegex(r.stderr.decode(), r'%s:3:9: bus\.port: expected a number from '
                         r'1 to 65535, got "lots"' % re.escape(path))
        r, path = self.check("listen:\n  max_output: [1, 2]\nbus:\n  host: x\n", "bad.yaml")
        self.assertEqual(r.returncode, 1, r)
        self.assertRegex(r.stderr.decode(), r"%s:2:15: listen\.max_output: expected a size"
                         % re.escape(path))

    def test_missing_bus_host(self):
        r, path = self.check("listen:\n  path: /tmp/x.sock\n", "bad.yaml")
        self.assertEqual(r.returncode, 1, r)
        self.assertRegex(r.stderr.decode(), r"%s:\d+:\d+: bus\.host is required"
                         % re.escape(path))

    def test_yaml_syntax_error(self):
        r, path = self.check("bus:\n  host: [x\n", "bad.yaml")
        self.assertEqual(r.returncode, 1, r)
        self.assertRegex(r.stderr.decode(), r"%s:\d+:\d+: YAML" % re.escape(path))

    def test_world_readable_credentials_refused(self):
        os.chmod(self.creds, 0o644)
        r, path = self.check(self.GOOD)
        self.assertEqual(r.returncode, 1, r)
        err = r.stderr.decode()
        self.assertIn("bus.credentials_file", err)
        self.assertIn("mode 0644", err)
        self.assertIn("chmod 600", err)
        self.assertNotIn(SECRET, err + r.stdout.decode())
        # Starting for real is refused the same way.
        r = run([BUSGATED, "-c", path])
        self.assertEqual(r.returncode, 1, r)
        self.assertIn(b"mode 0644", r.stderr)

    # A FIFO where a file is expected: refused at once, naming it (a read
    # would wait for a writer for ever). The short timeout proves no hang.
    def check_fifo(self, text, fifo, config=None):
        os.mkfifo(fifo, 0o600)
        path = config or os.path.join(self.tmp, "busgated.yaml")
        if config is None:
            with open(path, "w") as f:
                f.write(text)
        for args in (["--check-config", "-c", path], ["-c", path]):
            r = run([BUSGATED] + args, timeout=5)
            self.assertEqual(r.returncode, 1, r)
            self.assertIn("%s: not a regular file (a FIFO)" % fifo, r.stderr.decode())

    def test_fifo_credentials_file_refused(self):
        os.unlink(self.creds)
        self.check_fifo(self.GOOD, self.creds)

    def test_fifo_token_file_refused(self):
        self.check_fifo(self.GOOD.replace("auth: basic\n", "auth: token\n  token_file: token.jwt\n"),
                        os.path.join(self.tmp, "token.jwt"))

    def test_fifo_tls_files_refused(self):
        for key in ("ca_file", "cert_file"):
            fifo = os.path.join(self.tmp, key + ".pem")
            extra = "    key_file: credentials.ini\n" if key == "cert_file" else ""
            tls = "  tls:\n    %s: %s\n%s" % (key, fifo, extra)
            self.check_fifo(self.GOOD.replace("  auth: basic\n", "  auth: basic\n" + tls), fifo)

    def test_fifo_config_file_refused(self):
        fifo = os.path.join(self.tmp, "fifo.yaml")
        self.check_fifo(None, fifo, config=fifo)

    def test_world_writable_config_refused(self):
        r, path = self.check(self.GOOD)
        self.assertEqual(r.returncode, 0, r)
        os.chmod(path, 0o666)
        for args in (["--check-config", "-c", path], ["-c", path]):
            r = run([BUSGATED] + args)
            self.assertEqual(r.returncode, 1, r)
            self.assertEqual(r.stderr.decode(), "busgated: %s: mode 0666 lets anyone change "
                             "it: chmod o-w %s\n" % (path, path))
        os.chmod(path, 0o664)       # a group of editors is the owner's choice
        r = run([BUSGATED, "--check-config", "-c", path])
        self.assertEqual(r.returncode, 0, r)

    def test_weak_tls_ciphers_refused(self):
        for ciphers, why in (('"ECDHE+AESGCM:@SECLEVEL=0"', r"@SECLEVEL=0 allows weak"),
                             ("AES128-SHA", r"the list enables AES128-SHA, which is not AEAD")):
            r, path = self.check("bus:\n  host: x\n  tls:\n    ciphers: %s\n" % ciphers,
                                 "weak.yaml")
            self.assertEqual(r.returncode, 1, r)
            self.assertRegex(r.stderr.decode(), r"%s:4:14: bus\.tls\.ciphers: %s"
                             % (re.escape(path), why))

    # -- permissive settings: allowed, and said (issue 10)

    def warnings(self, text, name="busgated.yaml"):
        """--check-config on text: it passes; the warning lines it logs."""
        r, path = self.check(text, name)
        self.assertEqual(r.returncode, 0, r)
        err = r.stderr.decode()
        self.assertIn("configuration OK", err)
        self.assertNotIn(SECRET, err + r.stdout.decode())
        return re.findall(r"(?m)^<4>(.*)$", err)

    def assert_warned(self, text, pattern, name="busgated.yaml"):
        found = self.warnings(text, name)
        self.assertTrue(any(re.search(pattern, w) for w in found),
                        "no warning matching %r in %r" % (pattern, found))

    def test_good_config_gives_no_warning(self):
        self.assertEqual(self.warnings(self.GOOD), [])

    def test_world_writable_socket_warned(self):
        for mode in ("0666", "0777"):
            self.assert_warned(self.GOOD.replace("  max_output: 2MiB\n",
                                                 "  mode: \"%s\"\n" % mode),
                               r"^listen\.mode %s lets every local user connect to "
                               r"/tmp/never-bound\.sock \(a world-writable socket\)" % mode)

    def test_world_writable_socket_directory_warned(self):
        d = os.path.join(self.tmp, "open")
        os.mkdir(d)
        os.chmod(d, 0o777)
        text = self.GOOD.replace("/tmp/never-bound.sock", os.path.join(d, "gw.sock"))
        self.assert_warned(text, r"^the socket directory %s \(mode 0777\) is world-writable "
                           r"without the sticky bit" % re.escape(d))
        os.chmod(d, 0o1777)     # sticky, like /tmp: fine
        self.assertEqual(self.warnings(text), [])

    @unittest.skipUnless(os.geteuid() == 0, "needs root to give a file away")
    def test_credentials_owned_by_another_user_warned(self):
        os.chown(self.creds, 65534, -1)
        self.assert_warned(self.GOOD, r"^bus\.credentials_file %s is owned by uid 65534, "
                           r"not by busgated's user \(uid 0\)" % re.escape(self.creds))

    def test_credentials_in_clear_warned(self):
        text = self.GOOD.replace("  auth: basic\n", "  auth: basic\n  tls: false\n")
        self.assert_warned(text, r"^bus\.tls is off with bus\.auth basic: the password "
                           r"crosses the network to bus\.example\.com in clear text")

    def test_tls_verify_off_warned(self):
        text = self.GOOD.replace("  auth: basic\n", "  auth: basic\n  tls: {verify: false}\n")
        self.assert_warned(text, r"^bus\.tls\.verify is false: the bus's certificate and "
                           r"name are not checked.* and receive the credentials$")

    def test_missing_config_file(self):
        r = run([BUSGATED, "-t", "-c", os.path.join(self.tmp, "absent.yaml")])
        self.assertEqual(r.returncode, 1, r)
        self.assertIn(b"absent.yaml", r.stderr)


# ------------------------------------------------------------ with a bus

class WithBus(unittest.TestCase):
    """One test bus for the class; gateways per test."""

    bus_feeds = None

    @classmethod
    def setUpClass(cls):
        # Cleanups run also when a subclass's setUpClass fails after this.
        cls.tmp = tempdir()
        if not os.environ.get("BUSGATE_TEST_KEEP"):
            cls.addClassCleanup(shutil.rmtree, cls.tmp, ignore_errors=True)
        cls.bus = TestBus(cls.tmp, feeds=cls.bus_feeds)
        cls.addClassCleanup(cls.bus.stop)
        cls.bus.start()

    def setUp(self):
        self.gateways = []
        self.procs = []

    def tearDown(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()
            p.stdout.close()
            p.stderr.close()
        for gw in self.gateways:
            gw.kill()

    def gateway(self, name, config=None, start=True, wait_bus=True):
        gw = Gateway(self.tmp, self.bus, config=config, name=name)
        self.gateways.append(gw)
        if start:
            gw.start()
            if wait_bus:
                gw.wait_bus_up()
        return gw

    def cli(self, gw, *args, input=None):
        return run([BUSGATE, "--socket", gw.socket_path] + list(args), input=input)

    def cli_bg(self, gw, *args):
        p = subprocess.Popen([BUSGATE, "--socket", gw.socket_path] + list(args),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.procs.append(p)
        return p

    def finish(self, p):
        out, err = p.communicate(timeout=TIMEOUT)
        return p.returncode, out.decode("utf-8", "surrogateescape"), err.decode()

    def wait_bus_sub(self, feed, topic, since=0):
        """The gateway has subscribed upstream: a local SUB has been handled."""
        self.bus.wait_for(lambda r: r["event"] == "recv"
                          and r.get("type") == "SubscriptionRequest"
                          and r["fields"]["feed"] == feed and r["fields"]["topic"] == topic
                          and r["fields"]["is_add"], TIMEOUT, since)


# ------------------------------------------------------------ reload

class Reload(WithBus):

    def test_log_level_change_applied_live(self):
        gw = self.gateway("lvl", config={"log": {"level": "notice"}}, wait_bus=False)
        Session(gw.socket_path).close()
        self.assertNotRegex(gw.log(), r"session \d+: connected")     # info is off
        off = gw.log_offset()
        gw.write_config({"log": {"level": "info"}})
        gw.reload()
        gw.wait_log(r"reloaded ", start=off)
        s = Session(gw.socket_path)     # greeted: the connect line is written
        self.assertRegex(gw.log()[off:], r"session \d+: connected")
        s.close()
        gw.stop()

    def test_start_only_setting_does_not_refuse_a_reload(self):
        """listen.group takes effect at start only: a reload that names a
        group not there (yet) keeps the old one and applies the rest."""
        gw = self.gateway("startonly")
        s = gw.session()
        off = gw.log_offset()
        gw.write_config({"listen": {"group": "no-such-group-busgate", "max_line": "4KiB"}})
        gw.reload()
        gw.wait_log(r"reloaded ", start=off)
        self.assertRegex(gw.log()[off:], r"listen.group need a restart")
        self.assertEqual(s.stats()["limit.max_line"], "4096")
        s.close()
        gw.stop()

    def test_bad_config_refused_daemon_keeps_serving(self):
        gw = self.gateway("bad")
        s = gw.session()
        self.assertEqual(s.cmd("SUB RF before"), "+OK")
        off = gw.log_offset()
        with open(gw.config_path, "a") as f:
            f.write("bogus_section:\n  x: 1\n")
        gw.reload()
        m = gw.wait_log(r"reload refused, old configuration stays: (\S+):(\d+):(\d+): "
                        r"unknown key 'bogus_section'", start=off)
        self.assertEqual(m.group(1), gw.config_path)
        # Still serving, old configuration, old session and new ones.
        self.assertEqual(s.cmd("PING after"), "PONG after")
        self.assertEqual(s.cmd("SUB RF after"), "+OK")
        p = gw.session()
        self.assertEqual(p.pub("RF", "after", [(None, b"still here")]), "+OK")
        ev = s.expect("DATA")
        self.assertEqual(ev.payloads, [b"still here"])
        # A broken YAML file likewise.
        off = gw.log_offset()
        with open(gw.config_path, "w") as f:
            f.write("bus: [\n")
        gw.reload()
        gw.wait_log(r"reload refused, old configuration stays: \S+:\d+:\d+: YAML", start=off)
        self.assertEqual(p.cmd("PING"), "PONG")
        s.close()
        p.close()
        gw.stop()

    def test_fifo_refused_at_reload_and_reconnect(self):
        """A credentials or CA file replaced by a FIFO is refused, naming it,
        at a reload and at a reconnect; the daemon keeps serving."""
        gw = self.gateway("fifo")
        s = gw.session()
        fifo_ca = os.path.join(gw.dir, "ca-fifo.pem")
        os.mkfifo(fifo_ca, 0o600)
        off = gw.log_offset()
        gw.write_config({"bus": {"tls": {"ca_file": fifo_ca}}})
        gw.reload()
        gw.wait_log(r"reload refused, old configuration stays: .*%s: not a regular file "
                    r"\(a FIFO\)" % re.escape(fifo_ca), start=off, timeout=5)
        self.assertEqual(s.cmd("PING ca"), "PONG ca")
        gw.write_config({})
        os.unlink(gw.creds_path)
        os.mkfifo(gw.creds_path, 0o600)
        off = gw.log_offset()
        gw.reload()
        gw.wait_log(r"reload refused, old configuration stays: .*%s: not a regular file "
                    r"\(a FIFO\)" % re.escape(gw.creds_path), start=off, timeout=5)
        self.assertEqual(s.cmd("PING creds"), "PONG creds")
        # The link reads the credentials again when it reconnects.
        off = gw.log_offset()
        self.bus.drop_all()
        gw.wait_log(r"%s: not a regular file \(a FIFO\)" % re.escape(gw.creds_path),
                    start=off, timeout=5)
        self.assertEqual(s.cmd("PING link"), "PONG link")
        s.close()
        gw.stop()

    def test_changed_listen_path_needs_restart(self):
        gw = self.gateway("path")
        new_path = os.path.join(gw.dir, "other.sock")
        off = gw.log_offset()
        gw.write_config({"listen": {"path": new_path}})
        gw.reload()
        gw.wait_log(r"listen\.path.*need a restart", start=off)
        gw.wait_log(r"reloaded ", start=off)
        self.assertFalse(os.path.exists(new_path))
        s = gw.session()       # the old socket still serves
        self.assertEqual(s.cmd("PING"), "PONG")
        s.close()
        gw.stop()


# ------------------------------------------------------------ sd_notify

class SdNotify(WithBus):

    def collect(self, sock, want, got, timeout=TIMEOUT):
        """Read datagrams until one matches the regex want (whole message)."""
        deadline = time.monotonic() + timeout
        while True:
            for i, msg in enumerate(got["pending"]):
                if re.fullmatch(want, msg):
                    got["seen"].extend(got["pending"][:i + 1])
                    del got["pending"][:i + 1]
                    return msg
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no %r from busgated; got %r" % (want, got))
            sock.settimeout(left)
            try:
                got["pending"].append(sock.recv(4096).decode())
            except socket.timeout:
                pass

    def test_notify_protocol(self):
        path = os.path.join(self.tmp, "notify.sock")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        self.addCleanup(sock.close)
        self.addCleanup(os.unlink, path)
        got = {"pending": [], "seen": []}
        gw = self.gateway("sdn", start=False)
        with environ(NOTIFY_SOCKET=path, WATCHDOG_USEC="1000000"):
            gw.start()
        self.collect(sock, "READY=1", got)
        self.collect(sock, r"STATUS=bus (up|unconfirmed), 0 sessions", got)
        self.collect(sock, "WATCHDOG=1", got)
        self.collect(sock, "WATCHDOG=1", got)       # and again: it is periodic
        s = gw.session()
        self.collect(sock, r"STATUS=bus \w+, 1 sessions", got)
        s.close()

        gw.reload()
        self.collect(sock, "RELOADING=1", got)
        self.collect(sock, "READY=1", got)          # after RELOADING, in order

        gw.proc.send_signal(signal.SIGTERM)
        self.collect(sock, "STOPPING=1", got)
        gw.stop()
        self.assertNotIn("STOPPING=1", got["seen"][:-1])
        self.assertEqual(got["seen"].count("READY=1"), 2, got)

    def test_watchdog_under_a_second(self):
        """WatchdogSec=400ms: WATCHDOG=1 every 200 ms, never later than
        the 400 ms systemd would kill it at (not on the 500 ms tick)."""
        path = os.path.join(self.tmp, "notify-wd.sock")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        self.addCleanup(sock.close)
        self.addCleanup(os.unlink, path)
        gw = self.gateway("wd", start=False)
        with environ(NOTIFY_SOCKET=path, WATCHDOG_USEC="400000"):
            gw.start()
        pings = []
        deadline = time.monotonic() + 2.5
        while time.monotonic() < deadline:
            sock.settimeout(max(deadline - time.monotonic(), 0.01))
            try:
                msg = sock.recv(4096).decode()
            except socket.timeout:
                break
            if msg == "WATCHDOG=1":
                pings.append(time.monotonic())
        gw.stop()
        gaps = [b - a for a, b in zip(pings, pings[1:])]
        self.assertGreaterEqual(len(pings), 8, gaps)
        # 200 ms apart; well under 400 ms even on a busy machine.
        self.assertLess(max(gaps), 0.35, gaps)

    def test_watchdog_too_small_is_clamped(self):
        gw = self.gateway("wdmin", start=False)
        with environ(WATCHDOG_USEC="2000"):
            gw.start()
        gw.wait_log(r"WATCHDOG_USEC=2000 is below 20ms: pinging the watchdog every 10ms")
        s = gw.session()
        self.assertEqual(s.cmd("PING"), "PONG")
        s.close()
        gw.stop()

    def test_no_notify_socket_no_datagrams(self):
        # Without NOTIFY_SOCKET the daemon runs the same (and sends nothing).
        gw = self.gateway("plain")
        s = gw.session()
        self.assertEqual(s.cmd("PING"), "PONG")
        s.close()
        gw.stop()


# ------------------------------------------------------------ the socket

ACTIVATE = """
import os, sys
fd = int(sys.argv[1])
if fd != 3:
    os.dup2(fd, 3)
    os.close(fd)
os.environ["LISTEN_FDS"] = "1"
os.environ["LISTEN_PID"] = str(os.getpid())
os.execv(sys.argv[2], sys.argv[2:])
"""


class Socket(WithBus):

    def test_socket_activation(self):
        gw = self.gateway("act", start=False)
        act_path = os.path.join(gw.dir, "activated.sock")
        lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        lsock.bind(act_path)
        lsock.listen(16)
        self.addCleanup(lsock.close)
        gw.logf = open(gw.log_path, "ab")
        gw.proc = subprocess.Popen(
            [sys.executable, "-c", ACTIVATE, str(lsock.fileno()), BUSGATED,
             "-c", gw.config_path],
            pass_fds=(lsock.fileno(),), stdout=gw.logf, stderr=gw.logf)
        lsock.close()       # busgated holds it now
        s = Session(act_path)
        self.assertRegex(s.hello.line, r"^HELLO busgate \S+ proto=1 ")
        self.assertEqual(s.cmd("PING"), "PONG")
        s.close()
        self.assertRegex(gw.log(), r"listening on %s \((systemd socket|socket activation)\)"
                         % re.escape(act_path))
        self.assertFalse(os.path.exists(gw.socket_path))    # listen.path unused
        gw.stop()
        self.assertTrue(os.path.exists(act_path))   # systemd's file: left alone

    def test_stale_socket_replaced(self):
        gw = self.gateway("stale", start=False)
        dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        dead.bind(gw.socket_path)       # bound, never listening: like a crashed daemon
        dead.close()
        self.assertTrue(os.path.exists(gw.socket_path))
        gw.start()
        gw.wait_log(r"removed stale socket %s" % re.escape(gw.socket_path))
        s = gw.session()
        self.assertEqual(s.cmd("PING"), "PONG")
        s.close()
        gw.stop()
        self.assertFalse(os.path.exists(gw.socket_path))

    def test_live_socket_refused(self):
        gw = self.gateway("live", start=False)
        live = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        live.bind(gw.socket_path)
        live.listen(4)
        self.addCleanup(live.close)
        gw.start(wait=False)
        rc = gw.proc.wait(TIMEOUT)
        self.assertEqual(rc, 1, gw.log())
        self.assertIn("another busgated is listening on %s" % gw.socket_path, gw.log())
        gw.stop(expect_rc=1)
        # The other one's socket is untouched and still answers.
        c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        c.connect(gw.socket_path)
        c.close()

    def test_not_a_socket_refused(self):
        gw = self.gateway("file", start=False)
        with open(gw.socket_path, "w") as f:
            f.write("precious\n")
        gw.start(wait=False)
        self.assertEqual(gw.proc.wait(TIMEOUT), 1)
        self.assertIn("is not a socket", gw.log())
        gw.stop(expect_rc=1)
        with open(gw.socket_path) as f:
            self.assertEqual(f.read(), "precious\n")


# ------------------------------------------------------------ --daemon

def become_subreaper():
    """Orphans of our children become ours, so a detached daemon can be
    reaped and its exit status checked. False where prctl is missing."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(36, 1, 0, 0, 0) == 0      # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        return False


class Daemonize(WithBus):

    def test_daemon_pidfile_and_sigterm(self):
        reaper = become_subreaper()
        gw = self.gateway("detach", start=False)
        pidfile = os.path.join(gw.dir, "busgated.pid")
        r = run([BUSGATED, "-c", gw.config_path, "--daemon", "--pidfile", pidfile])
        self.assertEqual(r.returncode, 0, r)     # the parent returns at once
        pid = wait_until(lambda: self.read_pid(pidfile), "the pid file")
        self.addCleanup(self.kill_quietly, pid)
        os.kill(pid, 0)                             # alive
        self.assertNotEqual(os.getsid(pid), os.getsid(0))   # its own session
        s = wait_until(lambda: self.try_session(gw.socket_path), "the socket")
        self.assertEqual(s.cmd("PING"), "PONG")
        s.close()
        os.kill(pid, signal.SIGTERM)
        if reaper:
            status = self.reap(pid)
            self.assertTrue(os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status)
        else:
            wait_until(lambda: not self.running(pid), "the daemon to exit")
        wait_until(lambda: not os.path.exists(pidfile), "the pid file to go")
        self.assertFalse(os.path.exists(gw.socket_path))

    def test_debug_flag_outlives_a_reload(self):
        """--debug overrides log.level, also after a reload (the reload
        used to set the file's level again)."""
        gw = self.gateway("debugflag", config={"log": {"level": "notice"}}, start=False)
        gw.start(args=["--debug"])
        gw.wait_bus_up()
        since = gw.log_offset()
        gw.write_config({"log": {"level": "notice"}, "bus": {"application": "other"}})
        gw.reload()
        gw.wait_log(r"<7>\S+ bus: TCP connected to", start=since)   # the reconnect

    def test_reload_with_relative_config_path(self):
        """--daemon changes directory to /: a reload must still read the
        file -c named relative to where busgated started."""
        gw = self.gateway("relative", start=False)
        r = subprocess.run([BUSGATED, "-c", "busgated.yaml", "--daemon", "--pidfile",
                            "busgated.pid"], cwd=gw.dir, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=TIMEOUT)
        self.assertEqual(r.returncode, 0, r)
        pid = wait_until(lambda: self.read_pid(os.path.join(gw.dir, "busgated.pid")),
                         "the pid file")
        self.addCleanup(self.kill_quietly, pid)
        s = wait_until(lambda: self.try_session(gw.socket_path), "the socket")
        self.assertEqual(s.stats()["limit.max_line"], "65536")
        gw.write_config({"listen": {"max_line": "4KiB"}})
        os.kill(pid, signal.SIGHUP)
        wait_until(lambda: s.stats()["limit.max_line"] == "4096", "the reload")
        s.close()

    def detach(self, gw, pidfile):
        """busgated --daemon --pidfile; the foreground process's result."""
        r = run([BUSGATED, "-c", gw.config_path, "--daemon", "--pidfile", pidfile])
        if r.returncode == 0:
            # detached: stop it at the end, whatever the test finds
            pid = wait_until(lambda: self.read_pid(pidfile), "the pid file")
            self.addCleanup(self.kill_quietly, pid)
        return r

    def test_symlink_pidfile_refused(self):
        gw = self.gateway("symlink", start=False)
        target = os.path.join(gw.dir, "precious")
        with open(target, "w") as f:
            f.write("precious\n")
        pidfile = os.path.join(gw.dir, "busgated.pid")
        os.symlink(target, pidfile)
        r = run([BUSGATED, "-c", gw.config_path, "--daemon", "--pidfile", pidfile])
        with open(target) as f:
            content = f.read()
        if r.returncode == 0:           # it detached: stop what started
            pid = wait_until(lambda: self.read_pid(target), "the pid file")
            self.addCleanup(self.kill_quietly, pid)
        self.assertEqual(r.returncode, 1, r)
        self.assertEqual(r.stderr.decode(), "busgated: pid file %s is a symbolic link: "
                         "refused\n" % pidfile)
        self.assertEqual(content, "precious\n")
        self.assertFalse(os.path.exists(gw.socket_path))
        # A hard link to the file likewise.
        os.unlink(pidfile)
        os.link(target, pidfile)
        r = self.detach(gw, pidfile)
        self.assertEqual(r.returncode, 1, r)
        self.assertEqual(r.stderr.decode(), "busgated: pid file %s has other hard links: "
                         "refused\n" % pidfile)
        with open(target) as f:
            self.assertEqual(f.read(), "precious\n")

    def test_second_daemon_on_same_pidfile_refused(self):
        first = self.gateway("first", start=False)
        second = self.gateway("second", start=False)
        pidfile = os.path.join(self.tmp, "shared.pid")
        r = self.detach(first, pidfile)
        self.assertEqual(r.returncode, 0, r)
        pid = self.read_pid(pidfile)
        s = wait_until(lambda: self.try_session(first.socket_path), "the socket")
        r = self.detach(second, pidfile)
        self.assertEqual(r.returncode, 1, r)
        self.assertEqual(r.stderr.decode(), "busgated: another busgated (pid %d) holds %s\n"
                         % (pid, pidfile))
        self.assertEqual(self.read_pid(pidfile), pid)
        self.assertFalse(os.path.exists(second.socket_path))
        self.assertEqual(s.cmd("PING"), "PONG")     # the first one is unharmed
        s.close()
        # Once the first has gone, the file is free again.
        os.kill(pid, signal.SIGTERM)
        wait_until(lambda: not os.path.exists(pidfile), "the pid file to go")
        r = self.detach(second, pidfile)
        self.assertEqual(r.returncode, 0, r)
        self.assertNotEqual(self.read_pid(pidfile), pid)
        wait_until(lambda: self.try_session(second.socket_path), "the second socket").close()
        os.kill(self.read_pid(pidfile), signal.SIGTERM)
        wait_until(lambda: not os.path.exists(pidfile), "the second pid file to go")

    @staticmethod
    def read_pid(path):
        try:
            with open(path) as f:
                text = f.read()
        except FileNotFoundError:
            return None
        return int(text) if text.endswith("\n") else None

    @staticmethod
    def try_session(path):
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError:
            return None
        finally:
            probe.close()
        return Session(path)

    @staticmethod
    def running(pid):
        try:
            with open("/proc/%d/stat" % pid) as f:
                return f.read().rsplit(")", 1)[1].split()[0] != "Z"
        except FileNotFoundError:
            return False

    @staticmethod
    def reap(pid):
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done == pid:
                return status
            time.sleep(0.02)
        raise TimeoutError("busgated --daemon did not exit on SIGTERM")

    @staticmethod
    def kill_quietly(pid):
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


# ------------------------------------------------------------ the CLI

class Cli(WithBus):

    bus_feeds = {"AUTHF": {"authorization_required": True}}

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.gw = Gateway(cls.tmp, cls.bus, name="cli")
        cls.addClassCleanup(cls.gw.stop)
        cls.gw.start()
        cls.gw.wait_bus_up()

    def parse(self, line):
        """A sub line: feed topic user host kind ents [payload]."""
        parts = line.split(" ", 6)
        return parts + [""] * (7 - len(parts))

    def test_ping(self):
        r = self.cli(self.gw, "ping")
        self.assertEqual(r.returncode, 0, r)
        self.assertRegex(r.stdout.decode(), r"^PONG from busgated \S+ in [0-9.]+ ms, bus up\n$")
        self.assertEqual(r.stderr, b"")

    def test_stats(self):
        r = self.cli(self.gw, "stats")
        self.assertEqual(r.returncode, 0, r)
        stats = {}
        for line in r.stdout.decode().splitlines():
            name, _, value = line.partition(" ")
            self.assertNotIn(name, ("STAT", "END"))
            stats.setdefault(name, value)
        self.assertEqual(stats["bus_state"], "up")
        self.assertEqual(stats["limit.max_payload"], "1048576")
        self.assertGreaterEqual(int(stats["sessions"]), 1)
        self.assertRegex(stats["session"], r"^\d+ pid=\d+ uid=\d+ gid=\d+ ")

    def test_sub_pub_text(self):
        since = self.bus.mark()
        sub = self.cli_bg(self.gw, "sub", "CF", "text topic", "--count", "5")
        self.wait_bus_sub("CF", "text topic", since)
        lines = "plain words\n\ntab\there back\\slash\nh\u00e9llo \u2603\nno newline at end"
        r = self.cli(self.gw, "pub", "CF", "text topic", "--image", "--entitlements", "1,-2",
                     input=lines.encode())
        self.assertEqual((r.returncode, r.stderr), (0, b""), r)
        rc, out, err = self.finish(sub)
        self.assertEqual(rc, 0, err)
        got = [self.parse(x) for x in out.splitlines()]
        self.assertEqual(len(got), 5, out)
        for g in got:
            self.assertEqual(g[:6], ["CF", "text%20topic", "gw", HOST, "image", "1,-2"])
        self.assertEqual([g[6] for g in got],
                         ["plain words", "", "tab\\there back\\\\slash",
                          "h\u00e9llo \u2603", "no newline at end"])
        self.assertEqual(out.splitlines()[1], "CF text%20topic gw " + HOST + " image 1,-2")

    def test_sub_binary_hex_base64(self):
        since = self.bus.mark()
        hexs = self.cli_bg(self.gw, "sub", "CF", "bin", "--hex")
        self.wait_bus_sub("CF", "bin", since)
        payload = bytes(range(256)) + b"\n\x00end"
        r = self.cli(self.gw, "pub", "CF", "bin", "--whole", "--image", input=payload)
        self.assertEqual(r.returncode, 0, r)
        self.assertEqual(self.read_line(hexs), "CF bin gw %s image - %s" % (HOST, payload.hex()))
        # Later subscribers get the same image from the gateway's cache
        # (while the first one keeps the topic subscribed).
        b64 = self.cli_bg(self.gw, "sub", "CF", "bin", "--base64", "--count", "1")
        rc, out, err = self.finish(b64)
        self.assertEqual(rc, 0, err)
        self.assertEqual(base64.b64decode(self.parse(out.rstrip("\n"))[6]), payload)
        text = self.cli_bg(self.gw, "sub", "CF", "bin", "--count", "1")
        rc, out, err = self.finish(text)
        self.assertEqual(rc, 0, err)
        self.assertEqual(out.count("\n"), 1)
        shown = self.parse(out.rstrip("\n"))[6]
        self.assertTrue(shown.startswith("\\x00\\x01"), shown)
        self.assertTrue(shown.endswith("\\n\\x00end"), shown)
        self.assertIn("\\x7f\\x80\\x81", shown)     # not UTF-8: escaped
        hexs.terminate()
        hexs.wait(TIMEOUT)

    def test_sub_text_escapes_c1_and_line_separators(self):
        # NEL, 8-bit CSI and U+2028/9 are valid UTF-8 but controls or line
        # breaks to terminals and Unicode-aware readers: escaped bytewise.
        since = self.bus.mark()
        sub = self.cli_bg(self.gw, "sub", "CF", "c1", "--count", "1")
        self.wait_bus_sub("CF", "c1", since)
        payload = "a\u0085b\u2028c\u009b31mRED\u2029d\u00a0\u2027e".encode()
        r = self.cli(self.gw, "pub", "CF", "c1", input=payload + b"\n")
        self.assertEqual(r.returncode, 0, r)
        rc, out, err = self.finish(sub)
        self.assertEqual(rc, 0, err)
        self.assertEqual(len(out.splitlines()), 1, out)
        self.assertEqual(self.parse(out.rstrip("\n"))[6],
                         "a\\xc2\\x85b\\xe2\\x80\\xa8c\\xc2\\x9b31mRED"
                         "\\xe2\\x80\\xa9d\u00a0\u2027e")

    @staticmethod
    def read_line(p):
        """One line of a running busgate's output, bounded by TIMEOUT."""
        r, _, _ = select.select([p.stdout], [], [], TIMEOUT)
        if not r:
            raise TimeoutError("no output from busgate")
        return p.stdout.readline().decode().rstrip("\n")

    def test_pub_pipelined_many_in_order(self):
        n = 3000
        since = self.bus.mark()
        sub = self.cli_bg(self.gw, "sub", "CF", "many", "--count", str(n))
        self.wait_bus_sub("CF", "many", since)
        data = "".join("message %d\n" % i for i in range(n)).encode()
        r = self.cli(self.gw, "pub", "CF", "many", input=data)
        self.assertEqual((r.returncode, r.stderr), (0, b""), r)
        rc, out, err = self.finish(sub)
        self.assertEqual(rc, 0, err)
        self.assertEqual([self.parse(x)[6] for x in out.splitlines()],
                         ["message %d" % i for i in range(n)])

    def test_pub_refused_exit_1(self):
        r = self.cli(self.gw, "pub", "CF", "", input=b"one\ntwo\n")
        self.assertEqual(r.returncode, 1, r)
        err = r.stderr.decode()
        self.assertEqual(err.count("bad-name"), 2, err)
        self.assertIn("2 of 2 messages refused", err)

    def test_pub_over_max_payload(self):
        since = self.bus.mark()
        sub = self.cli_bg(self.gw, "sub", "CF", "big", "--count", "2")
        self.wait_bus_sub("CF", "big", since)
        big = b"x" * (1048576 + 1)
        r = self.cli(self.gw, "pub", "CF", "big", input=b"first\n" + big + b"\nlast\n")
        self.assertEqual(r.returncode, 1, r)
        err = r.stderr.decode()
        self.assertRegex(err, r"stdin line 2: \d+\+? bytes, over busgated's max_payload "
                         r"of 1048576; not sent")
        self.assertIn("1 of 3 messages refused", err)
        rc, out, _ = self.finish(sub)
        self.assertEqual([self.parse(x)[6] for x in out.splitlines()], ["first", "last"])
        r = self.cli(self.gw, "pub", "CF", "big", "--whole", input=big)
        self.assertEqual(r.returncode, 1, r)
        self.assertIn(b"nothing sent", r.stderr)

    def test_pub_line_over_max_line_sends_nothing(self):
        """busgated discards a line past max_line up to its newline and
        would read the payload as commands: a topic or an entitlement list
        that makes the PUB line too long is refused before sending."""
        since = self.bus.mark()
        sub = self.cli_bg(self.gw, "sub", "CF", "V", "--count", "1")
        self.wait_bus_sub("CF", "V", since)
        evil = b"PUB CF V delta 4\nevil"
        r = self.cli(self.gw, "pub", "CF", "t" * 70000, "--whole", input=evil)
        self.assertEqual(r.returncode, 1, r)
        self.assertIn(b"longer than busgated's max_line, 65536 bytes; nothing was sent",
                      r.stderr)
        ents = ",".join(["-2147483648"] * 6000)
        r = self.cli(self.gw, "pub", "CF", "T", "-e", ents, "--whole", input=evil)
        self.assertEqual(r.returncode, 1, r)
        self.assertIn(b"max_line", r.stderr)
        r = self.cli(self.gw, "pub", "CF", "V", input=b"ok\n")
        self.assertEqual(r.returncode, 0, r)
        rc, out, err = self.finish(sub)
        self.assertEqual(rc, 0, err)
        self.assertEqual([self.parse(x)[6] for x in out.splitlines()], ["ok"])

    def test_sub_repeated_topic_once(self):
        # A topic list built by a script may repeat one: subscribe once.
        since = self.bus.mark()
        sub = self.cli_bg(self.gw, "sub", "CF", "dup", "other", "dup", "--count", "2")
        self.wait_bus_sub("CF", "other", since)
        r = self.cli(self.gw, "pub", "CF", "dup", input=b"once\n")
        self.assertEqual(r.returncode, 0, r)
        r = self.cli(self.gw, "pub", "CF", "other", input=b"more\n")
        self.assertEqual(r.returncode, 0, r)
        rc, out, err = self.finish(sub)
        self.assertEqual((rc, err), (0, ""))
        self.assertEqual([self.parse(x)[1] + " " + self.parse(x)[6] for x in out.splitlines()],
                         ["dup once", "other more"])

    def test_sub_refused_exit_1(self):
        r = self.cli(self.gw, "sub", "CF", "")
        self.assertEqual(r.returncode, 1, r)
        self.assertIn(b"bad-name", r.stderr)
        self.assertEqual(r.stdout, b"")

    def test_stale_printed(self):
        since = self.bus.mark()
        sub = self.cli_bg(self.gw, "sub", "CF", "stale", "--count", "2")
        self.wait_bus_sub("CF", "stale", since)
        c = self.bus.client()
        c.publish("CF", "stale", [(None, b"last words")], is_image=True)
        self.bus.sync(c)
        c.close()       # the only publisher leaves: the bus sends a stale image
        rc, out, err = self.finish(sub)
        self.assertEqual(rc, 0, err)
        self.assertEqual(out.splitlines(), [
            "CF stale gw %s image - last words" % HOST,
            'CF stale "" "" image STALE'])

    def test_notify(self):
        since = self.bus.mark()
        p = self.cli_bg(self.gw, "notify", "NF", "--count", "2")
        self.bus.wait_for(lambda r: r["event"] == "recv"
                          and r.get("type") == "NotificationRequest"
                          and r["fields"]["feed"] == "NF", TIMEOUT, since)
        c = self.bus.client()
        c.subscribe("NF", "some topic")
        c.unsubscribe("NF", "some topic")
        self.bus.sync(c)
        rc, out, err = self.finish(p)
        c.close()
        self.assertEqual(rc, 0, err)
        lines = out.splitlines()
        self.assertEqual(len(lines), 2, out)
        for line, kind in zip(lines, ("add", "remove")):
            w = line.split(" ")
            self.assertEqual(w[0], kind)
            self.assertEqual(w[1], str(c.client_id))
            self.assertEqual(w[2], "gw")
            self.assertEqual(w[4:], ["NF", "some%20topic"])

    def test_send(self):
        c = self.bus.client()
        self.addCleanup(c.close)
        c.subscribe("SF", "direct")
        self.bus.sync(c)
        r = self.cli(self.gw, "send", str(c.client_id), "SF", "direct", "--image",
                     "--entitlements", "5", input=b"just for you\n")
        self.assertEqual((r.returncode, r.stderr), (0, b""), r)
        m = c.expect("ForwardedUnicastData", timeout=TIMEOUT)
        self.assertEqual((m.feed, m.topic, m.is_image), ("SF", "direct", True))
        self.assertEqual([(p.entitlements, p.data) for p in m.data_packets],
                         [([5], b"just for you")])

    def test_authorize(self):
        p = self.cli_bg(self.gw, "authorize", "AUTHF", "--entitlements", "7,8", "--count", "1")
        wait_until(lambda: self.stat("authorizers") >= 1, "the authorizer registration")
        since = self.bus.mark()
        c = self.bus.client()
        self.addCleanup(c.close)
        c.subscribe("AUTHF", "secret")
        rec = self.bus.wait_for(lambda r: r["event"] == "recv"
                                and r.get("type") == "AuthorizationResponse", TIMEOUT, since)
        self.assertEqual(rec["fields"]["client_id"], str(c.client_id))
        self.assertEqual((rec["fields"]["feed"], rec["fields"]["topic"]), ("AUTHF", "secret"))
        self.assertTrue(rec["fields"]["is_authorization_required"])
        self.assertEqual(rec["fields"]["entitlements"], [7, 8])
        rc, out, err = self.finish(p)
        self.assertEqual(rc, 0, err)
        w = out.rstrip("\n").split(" ")
        self.assertEqual(w[0], str(c.client_id))
        self.assertEqual(w[3:], ["AUTHF", "secret"])

    def stat(self, name):
        s = self.gw.session()
        try:
            return int(s.stats()[name])
        finally:
            s.close()


class FakeDaemon:
    """A scripted stand-in for busgated on a Unix socket, for what the real
    one never does (a future protocol, silence, garbage, oversize events):
    the CLI must fail cleanly and boundedly. Sends each reply after reading
    a line that starts with its key ("" = at once)."""

    HELLO = (b"HELLO busgate 9.9 proto=1 max_line=65536 max_payload=1048576 "
             b"max_packets=1024 max_name=4096 max_entitlements=1024 max_subscriptions=10 "
             b"max_output=8388608 bus=up\n")

    def __init__(self, path, script):
        self.path, self.script = path, list(script)
        self.srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.srv.bind(path)
        self.srv.listen(1)
        self.received = b""
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        conn, _ = self.srv.accept()
        conn.settimeout(TIMEOUT)
        buf = b""
        try:
            for key, data in self.script:
                while key and not any(line.startswith(key) for line in buf.split(b"\n")[:-1]):
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buf += chunk
                    self.received += chunk
                buf = b""
                conn.sendall(data)
            while True:         # hold the line open until the client leaves
                chunk = conn.recv(65536)
                if not chunk:
                    return
                self.received += chunk
        except OSError:
            pass
        finally:
            conn.close()
            self.srv.close()


class CliAgainstFakeDaemon(WorkDir):

    def cli(self, script, *args, input=None):
        path = os.path.join(self.tmp, "fake.sock")
        if os.path.exists(path):
            os.unlink(path)
        self.fake = FakeDaemon(path, script)
        r = run([BUSGATE, "--socket", path] + list(args), input=input)
        self.fake.thread.join(TIMEOUT)
        return r

    def test_other_protocol_version(self):
        r = self.cli([(b"", b"HELLO busgate 9.9 proto=2 bus=up\n")], "ping")
        self.assertEqual(r.returncode, 3, r)
        self.assertIn(b"line protocol 2", r.stderr)

    def test_not_busgated(self):
        r = self.cli([(b"", b"SSH-2.0-OpenSSH_9.2\r\n")], "ping")
        self.assertEqual(r.returncode, 3, r)

    def test_silent_daemon_times_out(self):
        r = self.cli([(b"", b"")], "--timeout", "1", "ping")
        self.assertEqual(r.returncode, 3, r)
        self.assertIn(b"no answer from busgated for 1 s", r.stderr)
        r = self.cli([(b"", FakeDaemon.HELLO)], "--timeout", "1", "stats")
        self.assertEqual(r.returncode, 3, r)

    def test_refused_greeting(self):
        r = self.cli([(b"", b"-ERR too-many-sessions the gateway serves its maximum\n")], "ping")
        self.assertEqual(r.returncode, 3, r)
        self.assertIn(b"too-many-sessions", r.stderr)

    def test_garbage_after_greeting(self):
        r = self.cli([(b"", FakeDaemon.HELLO), (b"PING", b"WHAT IS THIS\n")], "ping")
        self.assertEqual(r.returncode, 3, r)
        self.assertIn(b"unexpected line from busgated: WHAT IS THIS", r.stderr)

    def test_endless_line_is_bounded(self):
        r = self.cli([(b"", FakeDaemon.HELLO), (b"STATS", b"STAT x " + b"y" * (17 << 20))],
                     "stats")
        self.assertEqual(r.returncode, 3, r)
        self.assertIn(b"longer than 16777216 bytes", r.stderr)

    def test_crlf_and_oversize_data_skipped(self):
        huge = b"DATA F T u h delta multicast " + b"0 " * ((1 << 20) + 1) + b"\n\n"
        script = [(b"", FakeDaemon.HELLO),
                  (b"SUB", b"+OK\r\n" + huge +
                   b"DATA F T u h image multicast 3:1 2\r\nabcde\r\n")]
        r = self.cli(script, "sub", "F", "T", "--count", "1")
        self.assertEqual(r.returncode, 0, r)
        self.assertEqual(r.stdout, b"F T u h image 1 abc\nF T u h image - de\n")
        self.assertIn(b"skipping a DATA event past our limits", r.stderr)

    # busgated answers VERBOSE off (+OK) before it goes quiet; the final
    # PING has no token (libbusgate matches replies by order).
    def test_verbose_off_and_final_ping(self):
        script = [(b"", FakeDaemon.HELLO), (b"VERBOSE", b"+OK\n"),
                  (b"PING", b"-ERR bus-down the bus is down\nPONG\n")]
        r = self.cli(script, "pub", "F", "T", input=b"a\nb\n")
        self.assertEqual(r.returncode, 1, r)
        self.assertIn(b"bus-down the bus is down", r.stderr)
        self.assertIn(b"1 of 2 messages refused", r.stderr)
        self.assertEqual(self.fake.received, b"VERBOSE off\nPUB F T delta 1\na\n"
                         b"PUB F T delta 1\nb\nPING\n")

    def test_send_and_authorize_commands(self):
        guid = "00112233-4455-6677-8899-aabbccddeeff"
        script = [(b"", FakeDaemon.HELLO), (b"VERBOSE", b"+OK\n"), (b"PING", b"PONG\n")]
        r = self.cli(script, "send", guid.upper(), "F", "a topic", "--image",
                     "--entitlements", "1,-2", "--whole", input=b"x\ny")
        self.assertEqual(r.returncode, 0, r)
        self.assertEqual(self.fake.received, ("VERBOSE off\nSEND %s F a%%20topic image 3:1,-2\n"
                                              "x\ny\nPING\n" % guid).encode())
        req = "AUTHREQ %s u h F T\n" % guid
        script = [(b"", FakeDaemon.HELLO), (b"AUTHORIZER", b"+OK\n" + req.encode()),
                  (b"AUTHORIZE ", b"+OK\n")]
        r = self.cli(script, "authorize", "F", "--not-required", "--count", "1")
        self.assertEqual(r.returncode, 0, r)
        self.assertEqual(r.stdout.decode(), "%s u h F T\n" % guid)
        self.assertEqual(self.fake.received.decode(), "AUTHORIZER F\nAUTHORIZE %s F T "
                         "not-required\n" % guid)

    # Only already-answered (another authorizer was first) is noted and
    # passed over, and not counted; any other refusal of an answer means
    # none of ours will be taken: exit 1 rather than ignore every request.
    def test_authorize_already_answered_goes_on_uncounted(self):
        guid = "00112233-4455-6677-8899-aabbccddeeff"
        req1 = ("AUTHREQ %s u h F T1\n" % guid).encode()
        req2 = ("AUTHREQ %s u h F T2\n" % guid).encode()
        script = [(b"", FakeDaemon.HELLO), (b"AUTHORIZER", b"+OK\n" + req1),
                  (b"AUTHORIZE ", b"-ERR already-answered the first answer counts\n" + req2),
                  (b"AUTHORIZE ", b"+OK\n")]
        r = self.cli(script, "authorize", "F", "--count", "1")
        self.assertEqual(r.returncode, 0, r)
        self.assertEqual(r.stdout.decode(), "%s u h F T1\n%s u h F T2\n" % (guid, guid))
        self.assertIn(b"already-answered the first answer counts", r.stderr)

    def test_authorize_other_refusal_exit_1(self):
        guid = "00112233-4455-6677-8899-aabbccddeeff"
        req = ("AUTHREQ %s u h F T\n" % guid).encode()
        script = [(b"", FakeDaemon.HELLO), (b"AUTHORIZER", b"+OK\n" + req),
                  (b"AUTHORIZE ", b"-ERR bad-packet too many entitlements\n")]
        r = self.cli(script, "authorize", "F", "--entitlements", "1", "--count", "1")
        self.assertEqual(r.returncode, 1, r)
        self.assertEqual(r.stdout.decode(), "%s u h F T\n" % guid)
        self.assertIn(b"bad-packet too many entitlements", r.stderr)

    def cli_closed_fd(self, script, fd, *args):
        """Run busgate with fd (0 or 1) closed, as `busgate ... <&-` does."""
        path = os.path.join(self.tmp, "fake.sock")
        self.fake = FakeDaemon(path, script)
        r = subprocess.run([BUSGATE, "--socket", path] + list(args),
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, preexec_fn=lambda: os.close(fd),
                           timeout=TIMEOUT)
        self.fake.thread.join(TIMEOUT)
        return r

    # A closed stdin or stdout must not become the daemon's socket: pub
    # would read its own session for ever, sub write data into it.
    def test_closed_stdin_is_empty_input(self):
        script = [(b"", FakeDaemon.HELLO), (b"VERBOSE", b"+OK\n"), (b"PING", b"PONG\n")]
        r = self.cli_closed_fd(script, 0, "pub", "F", "T")
        self.assertEqual((r.returncode, r.stderr), (0, b""), r)
        self.assertEqual(self.fake.received, b"VERBOSE off\nPING\n")

    def test_closed_stdout_output_not_sent_to_daemon(self):
        script = [(b"", FakeDaemon.HELLO),
                  (b"SUB", b"+OK\nDATA F T u h delta multicast 5\nhello\n")]
        r = self.cli_closed_fd(script, 1, "sub", "F", "T", "--count", "1")
        self.assertEqual((r.returncode, r.stderr), (0, b""), r)
        self.assertEqual(self.fake.received, b"SUB F T\n")


class CliConnectionLost(WithBus):

    def test_daemon_stopping_ends_sub_with_3(self):
        gw = self.gateway("lost")
        since = self.bus.mark()
        sub = self.cli_bg(gw, "sub", "LF", "t")
        self.wait_bus_sub("LF", "t", since)
        gw.stop()
        rc, out, err = self.finish(sub)
        self.assertEqual(rc, 3, err)
        self.assertIn("shutting-down", err)

    def test_bus_down_pub_exit_1(self):
        bus = TestBus(self.tmp, name="shortlived")
        bus.start()
        gw = Gateway(self.tmp, bus, name="busdown")
        self.gateways.append(gw)
        gw.start()
        gw.wait_bus_up()
        bus.stop()
        wait_until(lambda: b"bus down" in self.cli(gw, "ping").stdout, "bus down")
        r = self.cli(gw, "pub", "DF", "t", input=b"lost?\n")
        self.assertEqual(r.returncode, 1, r)
        self.assertIn(b"bus-down", r.stderr)
        self.assertIn(b"1 of 1 messages refused", r.stderr)
        gw.stop()


if __name__ == "__main__":
    unittest.main(verbosity=2)
