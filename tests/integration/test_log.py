#!/usr/bin/env python3
"""The daemon's log as journald reads it, through the real daemon.

Names from local clients and from the bus end up in log lines; log.c
escapes every line, so none of them can start a line of its own with a
forged "<N>" priority prefix. A flood of distinct lines of one kind is
cut to a burst and a "suppressed N similar messages" summary.
"""

import os
import re
import shutil
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from gwtest import Gateway, TestBus, tempdir, wait_until  # noqa: E402

# A priority prefix at the start of a line, as journald parses stderr.
PRIO_LINE = re.compile(r"^<(\d)>", re.M)


class LogCase(unittest.TestCase):
    """One test bus with a feed that needs authorization; a gateway per test."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempdir()
        cls.bus = TestBus(cls.tmp, feeds={"secure": {"authorization_required": True}})
        cls.bus.start()

    @classmethod
    def tearDownClass(cls):
        cls.bus.stop()
        if not os.environ.get("BUSGATE_TEST_KEEP"):
            shutil.rmtree(cls.tmp, ignore_errors=True)

    def gateway(self, name, level="info"):
        gw = Gateway(self.tmp, self.bus, name=name, config={"log": {"level": level}})
        gw.start()
        self.addCleanup(gw.stop)
        gw.wait_bus_up()
        return gw

    def session(self, gw):
        s = gw.session()
        self.addCleanup(s.close)
        return s


class Injection(LogCase):

    def test_forged_priority_line_escaped(self):
        """A topic with a newline and "<0>" (the red team's SUB): the bus
        asks the gateway, which has no local authorizer, and the notice
        saying so quotes the topic escaped, on its own line."""
        gw = self.gateway("inject")
        s = self.session(gw)
        start = gw.log_offset()
        self.assertEqual(s.cmd("SUB secure x%0A<0>busgated:%20FORGED"), "+OK")
        gw.wait_log(r"no local authorizer", start=start)
        log = gw.log()[start:]
        self.assertEqual([m.group(1) for m in PRIO_LINE.finditer(log)
                          if m.group(1) in "0123"], [], log)
        self.assertIn("for secure / x%0A<0>busgated: FORGED: no local authorizer", log)
        for line in log.splitlines():
            self.assertRegex(line, r"^<[4-7]>", "a line without its own prefix")


class Flood(LogCase):

    REQUESTS = 2000
    BURST = 10                  # log.c LOG_BURST

    def test_distinct_notices_limited_with_summary(self):
        """2,000 authorization requests with distinct topics and no local
        authorizer: a burst of notices, then one summary of the rest
        (written by the daemon's tick when the 5 s window is over)."""
        gw = self.gateway("flood")
        s = self.session(gw)
        start = gw.log_offset()
        s.send("".join("SUB secure t%d\n" % i for i in range(self.REQUESTS)))
        for _ in range(self.REQUESTS):
            self.assertEqual(s.reply(), "+OK")
        wait_until(lambda: int(s.stats()["auth_requests_unrouted"]) >= self.REQUESTS,
                   what="%d unrouted authorization requests" % self.REQUESTS)
        # Every request is either logged or counted in a summary; on a slow
        # (sanitizer) build the flood may span more than one 5 s window.
        notice = re.compile(r"^<5>authorization request from .*no local authorizer", re.M)
        summary = re.compile(r"^<5>suppressed (\d+) similar messages in 5 s: "
                             r"authorization request from \.\.\.$", re.M)

        def accounted():
            log = gw.log()[start:]
            return (len(notice.findall(log)) +
                    sum(int(n) for n in summary.findall(log)) == self.REQUESTS)
        wait_until(accounted, what="notices and summaries for every request")
        log = gw.log()[start:]
        notices, summaries = notice.findall(log), summary.findall(log)
        self.assertGreaterEqual(len(summaries), 1)
        self.assertLessEqual(len(notices), self.BURST * (len(summaries) + 1))
        self.assertLess(len(log.splitlines()), 3 * self.BURST * (len(summaries) + 1), log)
        # Another kind is not silenced by this one.
        s.close()
        gw.wait_log(r"<6>session \d+: closed", start=start)


if __name__ == "__main__":
    unittest.main(verbosity=2)
