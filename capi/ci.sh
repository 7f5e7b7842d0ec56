#!/bin/sh
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
#
# What CI runs for the C API beyond `cargo test`:
#   1. the header drift check (include/vdpa_iova.h is what cbindgen makes now);
#   2. install.sh into a temporary prefix;
#   3. c/vmm.c compiled and linked against the installed shared library with
#      exactly the flags `pkg-config --cflags --libs vdpa-iova` gives, and run
#      (both strategies), the loader finding libvdpa_iova.so.0 in the prefix;
#   4. the same program linked statically with the .pc file's Libs.private.
# Installs pkg-config with apt-get when it is missing (Debian, as root).
set -eu

capi=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$capi")
cc=${CC:-cc}

step() { printf '\n== capi/ci.sh: %s\n' "$*"; }
run() { printf '+ %s\n' "$*"; "$@"; }

step "header drift check"
(cd "$root" && run cargo test -q -p vdpa-iova-capi --test header)

prefix=$(mktemp -d /tmp/vdpa-iova-prefix.XXXXXX)
trap 'rm -rf "$prefix"' EXIT
step "install into $prefix"
run "$capi/install.sh" "$prefix"

if ! command -v pkg-config >/dev/null 2>&1; then
    step "pkg-config is missing: installing it"
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        run apt-get install -y pkg-config || { run apt-get update && run apt-get install -y pkg-config; }
    else
        echo "capi/ci.sh: pkg-config is missing and cannot be installed (not root with apt-get)" >&2
        exit 1
    fi
fi

export PKG_CONFIG_PATH="$prefix/lib/pkgconfig"
step "pkg-config (PKG_CONFIG_PATH=$PKG_CONFIG_PATH)"
version=$(pkg-config --modversion vdpa-iova)
flags=$(pkg-config --cflags --libs vdpa-iova)
echo "pkg-config --modversion vdpa-iova: $version"
echo "pkg-config --cflags --libs vdpa-iova: $flags"

step "build c/vmm.c against the shared library"
# shellcheck disable=SC2086 # the flags are words, as pkg-config gives them
run "$cc" -std=c11 -Wall -Wextra -Werror -o "$prefix/vmm" "$capi/c/vmm.c" $flags
if command -v readelf >/dev/null 2>&1; then
    needed=$(readelf -d "$prefix/vmm" | sed -n 's/.*Shared library: \[\(libvdpa_iova[^]]*\)\]/\1/p')
    echo "vmm needs: $needed"
    [ "$needed" = "libvdpa_iova.so.0" ] || { echo "capi/ci.sh: vmm should need libvdpa_iova.so.0" >&2; exit 1; }
fi
for strategy in identity qemu; do
    step "run vmm --strategy $strategy (LD_LIBRARY_PATH=$prefix/lib)"
    LD_LIBRARY_PATH="$prefix/lib" run "$prefix/vmm" --strategy "$strategy"
done

step "build c/vmm.c against the static library (Libs.private)"
private=$(pkg-config --static --libs-only-l vdpa-iova | sed 's/-lvdpa_iova//')
echo "pkg-config --static --libs-only-l vdpa-iova, without -lvdpa_iova: $private"
# shellcheck disable=SC2086
run "$cc" -std=c11 -Wall -Wextra -Werror -o "$prefix/vmm-static" "$capi/c/vmm.c" \
    $(pkg-config --cflags vdpa-iova) "$prefix/lib/libvdpa_iova.a" $private
run "$prefix/vmm-static" --quiet

step "ok: header current, install, pkg-config, shared and static links all work"
