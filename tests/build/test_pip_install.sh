#!/bin/sh
# The Python package installs with pip from its pyproject.toml, the second
# way README gives (issue 13): `pip install ./python` in a virtual
# environment. Debian's python3 refuses a system-wide pip install
# (EXTERNALLY-MANAGED, PEP 668), so README gives the venv route, and this
# runs it as written there.
#
# Offline, as here and in CI: --no-build-isolation --no-index, in a venv
# with --system-site-packages, use Debian's setuptools and wheel
# (python3-setuptools, python3-wheel) instead of fetching them; python3-venv
# provides the venv's pip. Debian's interpreter is used because another
# python3 on PATH may lack them. The source is copied first: setuptools
# writes its build files beside pyproject.toml, and distcheck's source is
# read-only.
#
# Environment: top_srcdir (set by make check).

set -u

name=pip
. "$(dirname "$0")/common.sh"
py=/usr/bin/python3

cp -R "$srcdir/python" "$tmp/src" && chmod -R u+w "$tmp/src" || fail "copying python/"
"$py" -m venv --system-site-packages "$tmp/venv" >"$tmp/venv.log" 2>&1 ||
    { tail -5 "$tmp/venv.log"; fail "python3 -m venv failed (Debian: apt-get install python3-venv)"; }
(cd "$tmp" && "$tmp/venv/bin/pip" install --no-build-isolation --no-index "$tmp/src") \
    >"$tmp/pip.log" 2>&1 || { tail -20 "$tmp/pip.log"; fail "pip install ./python failed"; }

site=$("$tmp/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
for f in "$srcdir"/python/busgate/*.py; do
    [ -f "$site/busgate/$(basename "$f")" ] || fail "pip did not install busgate/$(basename "$f")"
done
(cd "$tmp" && "$tmp/venv/bin/python" -c '
import busgate, sys
assert busgate.__file__.startswith(sys.argv[1]), busgate.__file__
from busgate import CallbackClient, DataPacket
' "$site") || fail "the pip-installed package does not import"
echo "PASS: pip install ./python in a venv installs an importable busgate package"
