#!/bin/sh
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
#
# Builds and installs libvdpa_iova for C programs (QEMU):
#
#   capi/install.sh [PREFIX]            PREFIX defaults to /usr/local
#
#   $PREFIX/lib/libvdpa_iova.so.0.1.0   shared object, SONAME libvdpa_iova.so.0
#   $PREFIX/lib/libvdpa_iova.so.0       -> libvdpa_iova.so.0.1.0 (what programs load)
#   $PREFIX/lib/libvdpa_iova.so         -> libvdpa_iova.so.0 (what -lvdpa_iova links)
#   $PREFIX/lib/libvdpa_iova.a          static library
#   $PREFIX/include/vdpa_iova.h
#   $PREFIX/lib/pkgconfig/vdpa-iova.pc
#
# Environment: LIBDIR (default $PREFIX/lib; e.g. $PREFIX/lib/x86_64-linux-gnu),
# INCLUDEDIR (default $PREFIX/include), DESTDIR (staged installs for
# packaging: files go to $DESTDIR$PREFIX/..., the .pc file names $PREFIX),
# CARGO (default cargo), CARGO_TARGET_DIR (as cargo reads it).
#
# This is what cargo-c's `cargo cinstall` does, without cargo-c.
set -eu

prefix=${1:-/usr/local}
case $prefix in
/*) ;;
*) echo "install.sh: PREFIX must be an absolute path, not '$prefix'" >&2; exit 2 ;;
esac
libdir=${LIBDIR:-$prefix/lib}
includedir=${INCLUDEDIR:-$prefix/include}
destdir=${DESTDIR:-}
cargo=${CARGO:-cargo}

capi=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$capi")

version=$(sed -n 's/^version *= *"\(.*\)"/\1/p' "$capi/Cargo.toml" | head -n 1)
major=${version%%.*}
soname=libvdpa_iova.so.$major

echo "install.sh: building libvdpa_iova $version (release)"
(cd "$root" && "$cargo" build --release -p vdpa-iova-capi)
target=${CARGO_TARGET_DIR:-$root/target}
case $target in
/*) ;;
*) target=$root/$target ;;
esac
out=$target/release

for f in libvdpa_iova.so libvdpa_iova.a; do
    [ -f "$out/$f" ] || { echo "install.sh: $out/$f was not built" >&2; exit 1; }
done
if command -v readelf >/dev/null 2>&1; then
    got=$(readelf -d "$out/libvdpa_iova.so" | sed -n 's/.*Library soname: \[\(.*\)\]/\1/p')
    [ "$got" = "$soname" ] || {
        echo "install.sh: $out/libvdpa_iova.so has SONAME '$got', expected $soname" >&2
        exit 1
    }
fi

echo "install.sh: installing into $destdir$prefix"
install -d "$destdir$libdir/pkgconfig" "$destdir$includedir"
install -m 0755 "$out/libvdpa_iova.so" "$destdir$libdir/libvdpa_iova.so.$version"
ln -sf "libvdpa_iova.so.$version" "$destdir$libdir/$soname"
ln -sf "$soname" "$destdir$libdir/libvdpa_iova.so"
install -m 0644 "$out/libvdpa_iova.a" "$destdir$libdir/libvdpa_iova.a"
install -m 0644 "$capi/include/vdpa_iova.h" "$destdir$includedir/vdpa_iova.h"

# Libs.private: what Rust's std needs when linking the static library
# (rustc --print native-static-libs on linux-gnu).
cat > "$destdir$libdir/pkgconfig/vdpa-iova.pc" <<EOF
prefix=$prefix
libdir=$libdir
includedir=$includedir

Name: vdpa-iova
Description: Plans vhost-vdpa IOTLB messages for live migration with shadow virtqueues
Version: $version
Libs: -L\${libdir} -lvdpa_iova
Libs.private: -lgcc_s -lutil -lrt -lpthread -lm -ldl -lc
Cflags: -I\${includedir}
EOF

# A system library directory needs the loader's cache refreshed.
if [ -z "$destdir" ] && [ "$(id -u)" = 0 ] && command -v ldconfig >/dev/null 2>&1; then
    case $libdir in
    /usr/lib* | /usr/local/lib* | /lib*) ldconfig ;;
    esac
fi

for f in "$libdir/libvdpa_iova.so.$version" "$libdir/$soname" "$libdir/libvdpa_iova.so" \
    "$libdir/libvdpa_iova.a" "$includedir/vdpa_iova.h" "$libdir/pkgconfig/vdpa-iova.pc"; do
    echo "  $destdir$f"
done
