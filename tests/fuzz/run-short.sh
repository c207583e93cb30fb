#!/bin/sh
# A short fuzz run for `make check`: build the libFuzzer targets with clang
# straight from the sources (not from the gcc-built libbusgate.a) with
# ASan+UBSan, then run each on its seed corpus for FUZZ_SHORT_SECONDS
# (default 5), the four in parallel. New inputs go to a temporary
# directory; the committed corpus is only read.
#
# Exit: 0 no finding, 1 a finding or a build failure, 77 (automake SKIP)
# when no clang with libFuzzer is available. A crashing input is kept in
# fuzz-artifacts/ under the build directory.
#
# Environment: top_srcdir, top_builddir (set by make check), CLANG (the
# compiler to use), FUZZ_SHORT_SECONDS.

set -u

srcdir=${top_srcdir:-$(cd "$(dirname "$0")/../.." && pwd)}
builddir=${top_builddir:-.}
seconds=${FUZZ_SHORT_SECONDS:-5}
fuzzdir=$srcdir/tests/fuzz
src=$srcdir/src

skip() {
    echo "SKIP: $*"
    exit 77
}

cc=
for c in ${CLANG:-} clang clang-19 clang-18 clang-17 clang-16 clang-15 clang-14; do
    if command -v "$c" >/dev/null 2>&1; then
        cc=$c
        break
    fi
done
[ -n "$cc" ] || skip "no clang found (set CLANG=...)"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/busgate-fuzz.XXXXXX") || exit 1
trap 'rm -rf "$tmp"' EXIT INT TERM

# Does this clang have libFuzzer and the sanitizers?
cat > "$tmp/probe.c" <<'EOF'
#include <stddef.h>
#include <stdint.h>
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) { (void)data; return (int)(size & 0); }
EOF
if ! "$cc" -fsanitize=fuzzer,address,undefined "$tmp/probe.c" -o "$tmp/probe" >"$tmp/probe.log" 2>&1; then
    sed 's/^/  /' "$tmp/probe.log" | head -5
    skip "$cc cannot build libFuzzer targets (-fsanitize=fuzzer,address,undefined)"
fi

libs() {
    # pkg-config names, with a plain -l fallback
    for p in "$@"; do
        if pkg-config --exists "$p" 2>/dev/null; then
            pkg-config --libs "$p"
        else
            case $p in
            libevent) echo -levent ;;
            yaml-0.1) echo -lyaml ;;
            openssl) echo -lssl -lcrypto ;;
            *) echo "-l$p" ;;
            esac
        fi
    done
}
cflags=$(pkg-config --cflags libevent yaml-0.1 inih openssl 2>/dev/null || true)

CFLAGS="-std=c11 -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined
    -fno-omit-frame-pointer -D_GNU_SOURCE -DPACKAGE_VERSION=\"fuzz\"
    -I$tmp -I$src -I$srcdir/lib $cflags"
# The configure-time paths (src/paths.h in a build); any will do here.
sed -e 's|@sysconfdir@|/etc|' -e 's|@runstatedir@|/run|' "$src/paths.h.in" >"$tmp/paths.h"

# target: its sources (besides tests/fuzz/<target>.c) and libraries
build() {
    t=$1
    shift
    srcs=
    while [ "$1" != "--" ]; do
        srcs="$srcs $src/$1"
        shift
    done
    shift
    # shellcheck disable=SC2086
    "$cc" $CFLAGS "$fuzzdir/$t.c" $srcs -o "$tmp/$t" $(libs "$@") >"$tmp/$t.build" 2>&1
}

build fuzz_wire wire.c wire-auth.c -- libevent &
p1=$!
build fuzz_lineproto lineproto.c lineproto-event.c lineproto-format.c lineproto-frame.c guid.c wire.c wire-auth.c -- libevent &
p2=$!
build fuzz_config access.c config.c config-value.c config-files.c config-access.c credentials.c fileio.c log.c tls.c wire.c wire-auth.c -- libevent yaml-0.1 inih openssl &
p3=$!
build fuzz_libbusgate ../lib/busgate.c lineproto.c lineproto-event.c lineproto-format.c lineproto-frame.c guid.c wire.c wire-auth.c -- libevent pthread &
p4=$!
status=0
for t in fuzz_wire:$p1 fuzz_lineproto:$p2 fuzz_config:$p3 fuzz_libbusgate:$p4; do
    if ! wait "${t#*:}"; then
        echo "FAIL: building ${t%%:*} with $cc:"
        cat "$tmp/${t%%:*}.build"
        status=1
    fi
done
[ $status -eq 0 ] || exit 1

# target corpus dict
run() {
    t=$1
    mkdir -p "$tmp/$t.new"
    (cd "$tmp" && exec "./$t" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
        -error_exitcode=1 -timeout_exitcode=1 -print_final_stats=1 \
        -artifact_prefix="$tmp/$t-" -dict="$3" "$tmp/$t.new" "$2") >"$tmp/$t.log" 2>&1
}

run fuzz_wire "$fuzzdir/corpus/wire" "$fuzzdir/fuzz_wire.dict" &
p1=$!
run fuzz_lineproto "$fuzzdir/corpus/lineproto" "$fuzzdir/fuzz_lineproto.dict" &
p2=$!
run fuzz_config "$srcdir/etc" "$fuzzdir/fuzz_config.dict" &
p3=$!
run fuzz_libbusgate "$fuzzdir/corpus/libbusgate" "$fuzzdir/fuzz_lineproto.dict" &
p4=$!
for t in fuzz_wire:$p1 fuzz_lineproto:$p2 fuzz_config:$p3 fuzz_libbusgate:$p4; do
    name=${t%%:*}
    if wait "${t#*:}"; then
        runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$tmp/$name.log")
        cov=$(grep -o 'cov: [0-9]*' "$tmp/$name.log" | tail -n 1)
        echo "ok: $name: ${runs:-?} runs in ${seconds}s, $cov"
    else
        echo "FAIL: $name found something (or failed to run):"
        tail -n 60 "$tmp/$name.log"
        mkdir -p "$builddir/fuzz-artifacts"
        for a in "$tmp/$name"-*; do
            [ -f "$a" ] || continue
            cp "$a" "$builddir/fuzz-artifacts/" && \
                echo "input kept: $builddir/fuzz-artifacts/$(basename "$a")"
        done
        status=1
    fi
done
exit $status
