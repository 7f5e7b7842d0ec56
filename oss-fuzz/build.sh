#!/bin/bash -eu
# Builds every cargo-fuzz target of fuzz/ into $OUT, with its seed corpus
# (fuzz/corpus/TARGET, zipped as TARGET_seed_corpus.zip): the build script
# of OSS-Fuzz (projects/vdpa-iova-planner/build.sh there) and of
# ClusterFuzzLite (.clusterfuzzlite/build.sh calls this one).
#
# In their base-builder-rust image, cargo is nightly, cargo-fuzz is
# installed and RUSTFLAGS carry the sanitizer and coverage flags of the
# build (address, undefined or coverage) that `cargo fuzz build -O` uses.
# Locally: SRC=<parent of the checkout> OUT=<dir> RUSTUP_TOOLCHAIN=nightly
# oss-fuzz/build.sh (see fuzz/README.md).
# The checkout: $SRC/vdpa-iova-planner in the builder image (where this
# script runs as $SRC/build.sh), else the one this script is in.
if [[ -d ${SRC:-/nonexistent}/vdpa-iova-planner/fuzz ]]; then
    here=$SRC/vdpa-iova-planner
else
    here=$(cd "$(dirname "$0")/.." && pwd)
fi
: "${OUT:?OUT must name the directory the fuzzers go to}"
mkdir -p "$OUT"
cd "$here/fuzz"
# --debug-assertions: the targets' own checks include debug_assert!s.
# CARGO_TARGET_DIR, when set, is where the build goes (cargo-fuzz's --target-dir).
tdir=${CARGO_TARGET_DIR:-target}
cargo fuzz build -O --debug-assertions --target-dir "$tdir"
bin=$tdir/x86_64-unknown-linux-gnu/release
for t in $(cargo fuzz list); do
    cp "$bin/$t" "$OUT/"
    if compgen -G "corpus/$t/*" >/dev/null; then
        rm -f "$OUT/${t}_seed_corpus.zip"
        if command -v zip >/dev/null; then
            zip -q -j "$OUT/${t}_seed_corpus.zip" corpus/"$t"/*
        else
            python3 -c 'import sys, zipfile, os
with zipfile.ZipFile(sys.argv[1], "w") as z:
    for f in sys.argv[2:]: z.write(f, os.path.basename(f))' "$OUT/${t}_seed_corpus.zip" corpus/"$t"/*
        fi
    fi
done
echo "built into $OUT: $(cargo fuzz list | tr '\n' ' ')"
