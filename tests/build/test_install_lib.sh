#!/bin/sh
# libbusgate installs as a library should: the header, a shared library
# with a soname that exports only the bg_* API, a pkg-config file that
# builds the README's example, its man page, found by each function's
# name as well (`man bg_publish`), and a loader cache that finds it
# (issue 13).
#
# Installs the library's pieces from the build tree into a DESTDIR (only
# these install targets: nothing is rebuilt) and compiles the example
# against the installed copy.
#
# Environment: top_builddir, top_srcdir (set by make check).

set -u

name=lib
. "$(dirname "$0")/common.sh"

root=$tmp/root
$make -s -C "$builddir" DESTDIR="$root" install-libLTLIBRARIES install-includeHEADERS \
    install-pkgconfigDATA install-man3-links >"$tmp/install.log" 2>&1 ||
    { tail -20 "$tmp/install.log"; fail "make install of the library failed"; }

libdir=$(sed -n 's/^libdir=//p' "$builddir/lib/busgate.pc")
prefix=$(sed -n 's/^prefix=//p' "$builddir/lib/busgate.pc")
libdir=$(echo "$libdir" | sed "s|\${exec_prefix}|$prefix|; s|\${prefix}|$prefix|")
for f in "$libdir/libbusgate.so.0" "$libdir/libbusgate.so" "$libdir/pkgconfig/busgate.pc" \
    "$prefix/include/busgate.h" "$prefix/share/man/man3/libbusgate.3"; do
    [ -e "$root$f" ] || { find "$root" | sed 's/^/  /'; fail "$f not installed"; }
done

mandir=$prefix/share/man/man3
for f in $(sed -n '/^typedef/d; s/^[^#].*[ *]\(bg_[a-z_]*\)(.*/\1/p' "$srcdir/lib/busgate.h" | sort -u); do
    grep -qx '\.so man3/libbusgate\.3' "$root$mandir/$f.3" 2>/dev/null ||
        fail "man $f: no $mandir/$f.3 linking to libbusgate.3 (its NAME section lists the functions)"
done

soname=$(readelf -d "$root$libdir/libbusgate.so.0" | sed -n 's/.*SONAME.*\[\(.*\)\]/\1/p')
[ "$soname" = libbusgate.so.0 ] || fail "soname is '$soname', not libbusgate.so.0"
others=$(nm -D --defined-only "$root$libdir/libbusgate.so.0" | awk '$2 ~ /^[TDBR]$/ && $3 !~ /^bg_/ {print $3}')
[ -z "$others" ] || fail "exported beyond the bg_* API: $others"
# A static archive would define the library's internals (lp_*, guid_*) in
# the application's link: one that has a guid_to_text of its own clashes.
if [ -e "$root$libdir/libbusgate.a" ]; then
    others=$(nm --defined-only "$root$libdir/libbusgate.a" 2>/dev/null |
        awk '$2 ~ /^[TDBR]$/ && $3 !~ /^bg_/ {print $3}' | sort -u | head -5)
    [ -z "$others" ] || fail "the static archive defines beyond the bg_* API: $others"
fi

flags=$(PKG_CONFIG_SYSROOT_DIR=$root PKG_CONFIG_PATH=$root$libdir/pkgconfig \
    pkg-config --cflags --libs busgate) || fail "pkg-config busgate failed"
${CC:-cc} "$srcdir/lib/examples/subscribe.c" $flags -o "$tmp/subscribe" 2>"$tmp/cc.log" ||
    { cat "$tmp/cc.log"; fail "the example does not build with pkg-config --cflags --libs busgate"; }
# A real install (no DESTDIR) refreshes the loader's cache, or a program
# linked against /usr/local/lib/libbusgate.so.0 does not start; a DESTDIR
# install (a package being built) leaves the cache alone. A stand-in
# ldconfig first on PATH records that it ran.
mkdir "$tmp/bin" && printf '#!/bin/sh\ntouch "%s/ldconfig-ran"\n' "$tmp" >"$tmp/bin/ldconfig" &&
    chmod +x "$tmp/bin/ldconfig" || fail "writing a stand-in ldconfig"
PATH="$tmp/bin:$PATH" $make -s -C "$builddir" DESTDIR="$root" install-exec-hook >/dev/null 2>&1
[ ! -e "$tmp/ldconfig-ran" ] || fail "a DESTDIR install ran ldconfig"
PATH="$tmp/bin:$PATH" $make -s -C "$builddir" install-exec-hook >/dev/null 2>&1
[ -e "$tmp/ldconfig-ran" ] || fail "make install does not run ldconfig (the loader would not find libbusgate.so.0)"

echo "PASS: libbusgate installs (soname $soname, bg_* only, pkg-config builds the example)"
