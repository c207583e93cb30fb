"""`make demo`: run busgated against the project's test bus (TLS and password
authentication on), show a publish reaching a subscriber through the busgate
CLI, then keep busgated running in the foreground until Ctrl-C.

The gateway runs from the shipped etc/busgated.yaml, changed only where a
demo must differ from an installed system: the socket lives in the demo
directory instead of /run/busgate, and the port is whatever the test bus got
if 9091 was taken.
"""

import os
import re
import shutil
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TOP_SRCDIR = os.environ.get("top_srcdir") or os.path.dirname(HERE)
TOP_BUILDDIR = os.environ.get("top_builddir") or os.getcwd()
sys.path.insert(0, os.path.join(TOP_SRCDIR, "tests", "testbus"))

from control import TestBus  # noqa: E402

BUSGATED = os.environ.get("BUSGATED") or os.path.join(TOP_BUILDDIR, "src", "busgated")
BUSGATE = os.environ.get("BUSGATE") or os.path.join(TOP_BUILDDIR, "src", "busgate")


def say(text):
    print("\n== " + text, flush=True)


def start_bus(workdir):
    """The test bus on 9091 as the example config expects, else any port."""
    for port in (9091, 0):
        bus = TestBus(workdir, tls=True, auth="password", heartbeat=5, port=port)
        try:
            return bus.start()
        except Exception:
            if port == 0:
                raise
    raise RuntimeError("unreachable")


def write_config(workdir, bus):
    with open(os.path.join(TOP_SRCDIR, "etc", "busgated.yaml")) as f:
        text = f.read()
    sock = os.path.join(workdir, "busgate.sock")
    text = text.replace("path: /run/busgate/busgate.sock", "path: " + sock, 1)
    text = re.sub(r"(?m)^(  port: )9091\b", r"\g<1>%d" % bus.port, text, count=1)
    shutil.copy(bus.ca_file, os.path.join(workdir, "ca.pem"))
    creds = os.path.join(workdir, "credentials.ini")
    shutil.copy(os.path.join(TOP_SRCDIR, "etc", "credentials.ini.example"), creds)
    os.chmod(creds, 0o600)
    path = os.path.join(workdir, "busgated.yaml")
    with open(path, "w") as f:
        f.write(text)
    return path, sock


def wait_socket(path, proc, timeout=15):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if proc.poll() is not None or time.monotonic() > deadline:
            sys.exit("busgated did not start")
        time.sleep(0.05)


def main():
    workdir = os.path.abspath("demo")
    shutil.rmtree(workdir, ignore_errors=True)
    os.makedirs(workdir)

    say("starting the test bus (TLS, password authentication)")
    bus = start_bus(workdir)
    print("test bus on 127.0.0.1:%d, CA %s" % (bus.port, bus.ca_file))
    config, sock = write_config(workdir, bus)

    say("busgated --check-config -c %s" % config)
    subprocess.run([BUSGATED, "--check-config", "-c", config], check=True)

    say("starting busgated")
    daemon = subprocess.Popen([BUSGATED, "-c", config])
    try:
        wait_socket(sock, daemon)
        say("busgate sub DEMO greeting (in the background), then busgate pub")
        sub = subprocess.Popen([BUSGATE, "--socket", sock, "sub", "DEMO", "greeting",
                                "--count", "1"], stdout=subprocess.PIPE, text=True)
        time.sleep(0.5)
        subprocess.run([BUSGATE, "--socket", sock, "pub", "DEMO", "greeting"],
                       input="hello through busgate\n", text=True, check=True)
        out, _ = sub.communicate(timeout=15)
        print("the subscriber received:\n  " + out.strip())

        say("busgated is running; talk to it by hand, for example:")
        print("  socat - UNIX-CONNECT:%s" % sock)
        print("  %s --socket %s stats" % (BUSGATE, sock))
        print("  export BUSGATE_SOCKET=%s   # for busgate, libbusgate and the python package"
              % sock)
        print("Ctrl-C stops busgated and the test bus.")
        daemon.wait()
    except KeyboardInterrupt:
        pass
    finally:
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait()
        bus.stop()
    return daemon.returncode if daemon.returncode and daemon.returncode > 0 else 0


if __name__ == "__main__":
    sys.exit(main())
