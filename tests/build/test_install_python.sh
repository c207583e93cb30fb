#!/bin/sh
# `make install` puts the Python package where the python configure found
# looks for packages under the prefix (issue 13): Debian's python3 reads
# dist-packages (/usr/local/lib/python3.X/dist-packages for /usr/local,
# /usr/lib/python3/dist-packages for /usr), not the site-packages directory
# automake picks by default, where `import busgate` would fail.
#
# Installs the package from the build tree into a DESTDIR (only its install
# targets), imports the installed copy, and checks that the directory is on
# that python's sys.path whenever it reads anything under the prefix at all
# (a pyenv or venv python does not: there the package is for PYTHONPATH).
#
# Environment: top_builddir, PYTHON (set by make check).

set -u

name=pyinst
. "$(dirname "$0")/common.sh"
py=${PYTHON:-python3}

root=$tmp/root
$make -s -C "$builddir" DESTDIR="$root" install-busgatepyPYTHON \
    install-nodist_busgatepyPYTHON >"$tmp/install.log" 2>&1 ||
    { tail -20 "$tmp/install.log"; fail "make install of the python package failed"; }
init=$(find "$root" -path '*/busgate/__init__.py' | head -1)
[ -n "$init" ] || { find "$root" | sed 's/^/  /'; fail "busgate/__init__.py not installed"; }
dir=${init#"$root"}
dir=${dir%/busgate/__init__.py}
prefix=$(sed -n 's/^prefix=//p' "$builddir/lib/busgate.pc")

(cd "$tmp" && PYTHONPATH="$root$dir" "$py" -c '
import sys
import busgate, busgate._config
assert busgate.__file__.startswith(sys.argv[1]), busgate.__file__
from busgate import CallbackClient, DataPacket, connect
' "$root$dir") || fail "the installed package does not import from $dir"

"$py" -c '
import sys
prefix, dir = sys.argv[1].rstrip("/"), sys.argv[2]
under = [p for p in sys.path if p.startswith(prefix + "/")]
if under and dir not in sys.path:
    sys.exit("%s reads %s under %s, but the package goes to %s" %
             (sys.executable, ", ".join(under), prefix, dir))
print("%s: %s" % (sys.executable, "finds it there" if under else
      "reads nothing under %s (PYTHONPATH needed)" % prefix))
' "$prefix" "$dir" || fail "make install puts busgate where python does not look"
echo "PASS: make install puts the busgate package in $dir"
