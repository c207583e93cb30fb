#!/usr/bin/env python3
"""libbusgate (lib/) end to end: the C test program tests/lib/test_libbusgate
and the README's C example run against the real busgated and the test bus.

The C program drives everything through the library; when it needs the world
to change it writes a request line on stdout (RESTART: busgated stops and
starts again on the same socket; BUS-STOP / BUS-START: the test bus) and waits
for "OK" on stdin."""

import os
import re
import shutil
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import gwtest  # noqa: E402

TEST_PROG = os.path.join(gwtest.TOP_BUILDDIR, "tests", "lib", "test_libbusgate")
EXAMPLE = os.path.join(gwtest.TOP_BUILDDIR, "lib", "examples", "subscribe")


def start_gateway(gw):
    """Start busgated and wait until its bus link is up (confirmed), not
    just connected: a session that connects earlier is told "BUS up" in the
    middle of what it reads. Only this run's log lines count."""
    gw.start()
    gw.wait_log(r"bus: up", start=gw.started_at)


def prog_env():
    env = dict(os.environ)
    env.setdefault("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0")
    env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1")
    return env


class LibbusgateTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        # Cleanups run also when setUpClass fails part way.
        cls.dir = gwtest.tempdir("busgate-lib-")
        if not os.environ.get("BUSGATE_TEST_KEEP"):
            cls.addClassCleanup(shutil.rmtree, cls.dir, ignore_errors=True)
        cls.bus = gwtest.TestBus(cls.dir, heartbeat=0.2,
                                 feeds={"secure": {"authorization_required": True}})
        cls.addClassCleanup(cls.bus.stop)
        cls.bus.start()
        # A small output bound, so that the slow-consumer case is quick.
        cls.gw = gwtest.Gateway(cls.dir, cls.bus, config={"listen": {"max_output": "64KiB"}})
        cls.addClassCleanup(cls.gw.stop)
        start_gateway(cls.gw)

    def act(self, request):
        if request == "RESTART":
            self.gw.stop()
            start_gateway(self.gw)
        elif request == "STOP":
            self.gw.stop()
        elif request == "START":
            start_gateway(self.gw)
        elif request in ("REVOKE", "UNREVOKE"):
            start = self.gw.log_offset()
            self.write_config(revoke=request == "REVOKE")
            self.gw.reload()
            self.gw.wait_log("reloaded", start=start)
        elif request == "STOP-REVOKE":      # the next start has the rules
            self.gw.stop()
            self.write_config(revoke=True)
        elif request == "BUS-STOP":
            self.bus.stop()
        elif request == "BUS-START":
            self.bus.start()
        else:
            self.fail("unknown request from the C test: %r" % request)

    def write_config(self, revoke):
        """The config, with access rules that leave only feed "kept" when
        revoke is true."""
        self.gw.write_config()
        if revoke:
            with open(self.gw.config_path, "a") as f:
                f.write('access:\n  - uid: %d\n    allow: all\n    feeds: ["kept"]\n'
                        % os.getuid())

    def run_c(self, *tests):
        proc = subprocess.Popen([TEST_PROG, self.gw.socket_path] + list(tests),
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=prog_env(), text=True)
        try:
            for line in proc.stdout:
                self.act(line.strip())
                proc.stdin.write("OK\n")
                proc.stdin.flush()
            rc = proc.wait(gwtest.TIMEOUT * 4)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        err = proc.stderr.read()
        if os.environ.get("BUSGATE_TEST_VERBOSE"):
            sys.stderr.write(err)
        proc.stderr.close()
        proc.stdin.close()
        proc.stdout.close()
        self.assertEqual(rc, 0, err + "\n--- busgated log ---\n" + self.gw.log()[-3000:])
        for mark in gwtest.SANITIZER_MARKS:
            self.assertNotIn(mark, err)

    def test_verbs_and_events(self):
        self.run_c("connect_refused", "path_too_long", "publish_binary", "errors", "notify_and_send",
                   "authorize", "authorize_all_feeds", "event_loop", "timeout_zero")

    def test_line_over_max_line_is_not_sent(self):
        """A PUB line past max_line would make busgated read its payload
        as commands: the library refuses it before sending anything."""
        self.run_c("line_bound")

    def test_event_outlives_blocking_commands(self):
        self.run_c("event_outlives_commands")

    def test_bus_events_pass_through(self):
        self.run_c("bus_events")

    def test_busgated_restart_mid_subscription(self):
        self.run_c("restart")

    def test_events_before_a_restart_survive_a_failed_write(self):
        self.run_c("last_words", "name_while_restarting", "publisher_restart")

    def test_commands_while_busgated_is_away(self):
        self.run_c("offline", "first_open_event_loop", "register_before_greeting")

    def test_stats_hello_and_revoked(self):
        self.run_c("stats_and_revoked")

    def test_pipelined_messages(self):
        self.run_c("pipelined", "pipelined_switch", "free_writes_queued",
                   "event_loop_backpressure")

    def test_pipelined_across_a_restart(self):
        self.run_c("pipelined_restore", "pending_lost_with_link")

    def test_content_type_refused_below_protocol_6(self):
        self.run_c("content_type")     # at 6: test_protocols.py

    def test_slow_consumer_is_reported(self):
        self.run_c("slow_consumer")
        self.gw.wait_log(r"slow consumer")

    def test_against_a_scripted_daemon(self):
        """Limits on incoming DATA, the greeting checks, bounded lines and
        the messages that say what went wrong (a fake daemon in the C test)."""
        self.run_c("fake_limits", "fake_greeting", "fake_perm", "fake_verbose_timeout", "backlog_full", "refused_backoff", "fake_bounds", "greeting_deadline",
                   "fake_queue_cut", "fake_queue_bound")

    def test_man_page_names_every_function(self):
        with open(os.path.join(gwtest.TOP_SRCDIR, "lib", "busgate.h")) as f:
            # Functions, not the callback typedefs.
            api = set(re.findall(r"(?m)^(?!typedef)[a-z].*?[ *](bg_[a-z_]+)\(", f.read()))
        with open(os.path.join(gwtest.TOP_SRCDIR, "doc", "libbusgate.3")) as f:
            page = f.read()
        name = page.split(".SH SYNOPSIS")[0]
        self.assertTrue(api)
        for fn in sorted(api):
            self.assertIn(fn, name, "libbusgate(3) NAME must list %s" % fn)
            self.assertIn(fn + "(", page, "libbusgate(3) SYNOPSIS must show %s" % fn)

    def test_readme_example(self):
        """The C example of README.md, as built from lib/examples/subscribe.c."""
        with open(os.path.join(gwtest.TOP_SRCDIR, "README.md")) as f:
            readme = f.read()
        with open(os.path.join(gwtest.TOP_SRCDIR, "lib", "examples", "subscribe.c")) as f:
            example = f.read()
        self.assertIn(example.strip(), readme, "README.md must show lib/examples/subscribe.c")
        out = subprocess.run([EXAMPLE, self.gw.socket_path], capture_output=True, text=True,
                             timeout=gwtest.TIMEOUT, env=prog_env())
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(out.stdout, "prices AAPL: hello\n")

    def test_default_socket_from_environment(self):
        """bg_connect(NULL) goes where $BUSGATE_SOCKET says, as the CLI and the
        python package do: the README example with no argument."""
        env = dict(prog_env(), BUSGATE_SOCKET=self.gw.socket_path)
        out = subprocess.run([EXAMPLE], capture_output=True, text=True,
                             timeout=gwtest.TIMEOUT, env=env)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(out.stdout, "prices AAPL: hello\n")


if __name__ == "__main__":
    unittest.main(verbosity=2)
