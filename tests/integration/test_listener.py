#!/usr/bin/env python3
"""The Unix socket: mode and group, a stale socket replaced, a live one or a
non-socket refused, a missing directory reported, the path removed at
exit, and systemd socket activation (LISTEN_FDS/LISTEN_PID, fd 3)."""

import grp
import os
import re
import resource
import shutil
import socket
import stat
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import gwtest  # noqa: E402
from routerkit import USERS, Gateway, TestBus, tempdir, TIMEOUT  # noqa: E402


class ListenerTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.dir = tempdir()
        cls.bus = TestBus(cls.dir, users=USERS)
        cls.bus.start()

    @classmethod
    def tearDownClass(cls):
        cls.bus.stop()
        if not os.environ.get("BUSGATE_TEST_KEEP"):
            shutil.rmtree(cls.dir, ignore_errors=True)

    def setUp(self):
        self.gws = []

    def tearDown(self):
        for gw in self.gws:
            gw.stop()

    def gateway(self, name, listen=None):
        gw = Gateway(self.dir, self.bus, name=name)
        if listen:
            gw.write_config({"listen": listen})
        self.gws.append(gw)
        return gw

    def run_failing(self, gw):
        """Start busgated expecting it to refuse to start; its output."""
        r = subprocess.run([gwtest.BUSGATED, "-c", gw.config_path], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=TIMEOUT)
        out = r.stdout.decode(errors="replace")
        self.assertNotEqual(r.returncode, 0, out)
        for mark in gwtest.SANITIZER_MARKS:
            self.assertNotIn(mark, out)
        return out

    def assert_serves(self, gw):
        s = gw.session()
        try:
            self.assertEqual(s.cmd("PING"), "PONG")
        finally:
            s.close()

    def session_sndbuf(self, gw):
        """The kernel's send buffer of busgated's end of one session, from
        ss(8) (sock_diag): what SO_SNDBUF made it."""
        sess = gw.session()
        try:
            out = subprocess.run(["ss", "-x", "-m", "-p", "-n"], stdout=subprocess.PIPE,
                                 check=True, timeout=TIMEOUT).stdout.decode()
        finally:
            sess.close()
        mine = "pid=%d," % gw.proc.pid
        lines = out.splitlines()
        for i, line in enumerate(lines):
            # Its accepted socket has the listening path for local address
            # (libevent's own socket pairs are unnamed).
            if mine in line and "ESTAB" in line and " %s " % gw.socket_path in line:
                # skmem on the same line, or the next (ss's layout varies)
                m = re.search(r"\btb(\d+)", " ".join(lines[i:i + 2]))
                if m:
                    return int(m.group(1))
        self.fail("no session socket of busgated in ss -xmp:\n" + out)

    @unittest.skipIf(shutil.which("ss") is None, "no ss(8) (iproute2)")
    def test_socket_buffer(self):
        """listen.socket_buffer is each session socket's SO_SNDBUF (Linux
        doubles it, capped at net.core.wmem_max); 0 leaves the default."""
        with open("/proc/sys/net/core/wmem_max") as f:
            wmem_max = int(f.read())
        with open("/proc/sys/net/core/wmem_default") as f:
            wmem_default = int(f.read())
        gw = self.gateway("sndbuf", listen={"socket_buffer": "96KiB"})
        gw.start()
        self.assertEqual(self.session_sndbuf(gw), 2 * min(96 * 1024, wmem_max))
        gw.stop()
        gw = self.gateway("sndbuf0", listen={"socket_buffer": 0})
        gw.start()
        self.assertEqual(self.session_sndbuf(gw), wmem_default)

    def test_mode_group_and_unlink_at_exit(self):
        group = grp.getgrgid(os.getgid()).gr_name
        gw = self.gateway("modes", {"mode": "0660", "group": group})
        gw.start()
        st = os.stat(gw.socket_path)
        self.assertTrue(stat.S_ISSOCK(st.st_mode))
        self.assertEqual(stat.S_IMODE(st.st_mode), 0o660)
        self.assertEqual(st.st_gid, os.getgid())
        self.assert_serves(gw)
        gw.stop()
        self.assertFalse(os.path.exists(gw.socket_path))

    def test_world_writable_socket_warned_at_start(self):
        # allowed, and said in the log at start (as --check-config does)
        gw = self.gateway("open", {"mode": "0666"})
        gw.start()
        self.assertEqual(stat.S_IMODE(os.stat(gw.socket_path).st_mode), 0o666)
        self.assertRegex(gw.log(), r"(?m)^<4>listen\.mode 0666 lets every local user "
                         r"connect to %s \(a world-writable socket\)" % re.escape(gw.socket_path))
        self.assert_serves(gw)

    def test_stale_socket_is_replaced(self):
        gw = self.gateway("stale")
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(gw.socket_path)
        s.close()
        gw.start()
        self.assert_serves(gw)
        gw.wait_log(r"removed stale socket")

    def test_live_socket_is_refused(self):
        first = self.gateway("live1")
        first.start()
        second = self.gateway("live2", {"path": first.socket_path})
        out = self.run_failing(second)
        self.assertIn("another busgated is listening on %s" % first.socket_path, out)
        self.assert_serves(first)

    def test_non_socket_is_refused(self):
        gw = self.gateway("plain")
        with open(gw.socket_path, "w") as f:
            f.write("keep me\n")
        out = self.run_failing(gw)
        self.assertIn("is not a socket", out)
        with open(gw.socket_path) as f:
            self.assertEqual(f.read(), "keep me\n")

    def test_missing_directory_is_reported(self):
        path = os.path.join(self.dir, "no-such-dir", "busgate.sock")
        gw = self.gateway("nodir", {"path": path})
        out = self.run_failing(gw)
        self.assertIn("directory does not exist", out)

    def start_activated(self, gw, fd, listen_pid="$$"):
        """busgated with fd as its fd 3 and LISTEN_FDS=1, as systemd does."""
        script = 'exec 3<&%d %d<&-; LISTEN_PID=%s LISTEN_FDS=1 exec "$0" "$@"' % (
            fd, fd, listen_pid) if fd != 3 else \
            'LISTEN_PID=%s LISTEN_FDS=1 exec "$0" "$@"' % listen_pid
        gw.logf = open(gw.log_path, "ab")
        gw.proc = subprocess.Popen(["sh", "-c", script, gwtest.BUSGATED, "-c", gw.config_path],
                                   stdout=gw.logf, stderr=gw.logf, pass_fds=(fd,))

    def test_systemd_socket_activation(self):
        gw = self.gateway("activated")
        ls = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        ls.bind(gw.socket_path)
        ls.listen(16)
        try:
            self.start_activated(gw, ls.fileno())
        finally:
            ls.close()
        gw.wait_socket()
        self.assert_serves(gw)
        gw.wait_log(r"systemd socket")
        gw.stop()
        # systemd owns the path: it stays.
        self.assertTrue(stat.S_ISSOCK(os.stat(gw.socket_path).st_mode))

    def test_activation_for_another_pid_is_ignored(self):
        gw = self.gateway("otherpid")
        r, w = os.pipe()
        try:
            self.start_activated(gw, r, listen_pid="1")
        finally:
            os.close(r)
            os.close(w)
        gw.wait_socket()
        self.assert_serves(gw)

    def test_activation_with_a_non_socket_fails(self):
        gw = self.gateway("badfd")
        r, w = os.pipe()
        try:
            self.start_activated(gw, r)
            rc = gw.proc.wait(TIMEOUT)
        finally:
            os.close(r)
            os.close(w)
        gw.proc = None
        gw.logf.close()
        self.assertNotEqual(rc, 0)
        self.assertIn("not a listening Unix stream socket", gw.log())

    def test_out_of_descriptors_pauses_accepting(self):
        gw = self.gateway("emfile")
        gw.logf = open(gw.log_path, "ab")
        gw.proc = subprocess.Popen(
            [gwtest.BUSGATED, "-c", gw.config_path], stdout=gw.logf, stderr=gw.logf,
            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (48, 48)))
        gw.wait_socket()
        gw.wait_bus_up()
        sessions = [gw.session(greet=False) for _ in range(60)]
        try:
            gw.wait_log(r"accept on .*: Too many open files; not accepting for")
            # Room again: the connections waiting in the backlog are taken.
            for s in sessions[:30]:
                s.close()
            for s in sessions[30:]:
                self.assertEqual(s.read_event().kind, "HELLO")
                self.assertEqual(s.cmd("PING"), "PONG")
        finally:
            for s in sessions:
                s.close()


if __name__ == "__main__":
    unittest.main(verbosity=2)
