#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
#
# Compares the criterion benchmarks of two commits in one run, interleaved:
#
#   benches/ab-compare.sh [-r ROUNDS] [-f FILTER] BASE [NEW]
#
# Builds `benches/planner.rs` against the library of BASE and of NEW
# (default: the working tree) in their own target directories; the bench
# code is NEW's on both sides, so that both measure the same work. Then runs
# BASE, NEW, BASE, NEW ... ROUNDS times each (default 3) with FILTER (a
# criterion filter; default "translate/planner|translate/translator|
# alloc_churn/iova_allocator|plan/", the library's side of each group), so
# that a change in the machine's load hits both sides alike. Prints, for
# every benchmark, the median over the rounds of criterion's point estimate
# on each side and NEW / BASE (below 1.00: NEW is faster), and the load
# average before and after. Builds stay in target/ab-compare/ for next time.
set -euo pipefail
rounds=3
filter='translate/planner|translate/translator|alloc_churn/iova_allocator|plan/'
while getopts r:f:h o; do
    case $o in
    r) rounds=$OPTARG ;;
    f) filter=$OPTARG ;;
    *) sed -n '3,17p' "$0"; exit 2 ;;
    esac
done
shift $((OPTIND - 1))
(($# >= 1 && $# <= 2)) || { sed -n '3,17p' "$0"; exit 2; }
root=$(git rev-parse --show-toplevel)
work=$root/target/ab-compare
mkdir -p "$work"

# The bench binary of a commit (or of the working tree for "-").
build() {
    local rev=$1 dir tgt
    if [[ $rev == - ]]; then
        dir=$root tgt=$work/target-new
    else
        dir=$work/src-$(git rev-parse --short "$rev")
        tgt=$work/target-base
        if [[ ! -d $dir ]]; then
            git -C "$root" worktree add -q --detach "$dir" "$rev"
        fi
        cp "$root/benches/planner.rs" "$dir/benches/planner.rs"
    fi
    (cd "$dir" && CARGO_TARGET_DIR=$tgt cargo bench --bench planner --no-run --message-format=json 2>/dev/null) |
        python3 -c 'import json,sys
for l in sys.stdin:
    m=json.loads(l)
    if m.get("reason")=="compiler-artifact" and m["target"]["name"]=="planner" and m.get("executable"):
        print(m["executable"])' | tail -n1
}

base_bin=$(build "$1")
new_bin=$(build "${2:--}")
[[ -x $base_bin && -x $new_bin ]] || { echo "ab-compare: a build failed" >&2; exit 1; }
echo "base $1: $base_bin"
echo "new ${2:-working tree}: $new_bin"
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
out=$work/runs
rm -rf "$out"
mkdir -p "$out"
for ((i = 1; i <= rounds; i++)); do
    for side in base new; do
        bin=${side}_bin
        # --noplot, no saved baseline comparison: only the point estimates.
        "${!bin}" --bench --noplot "$filter" >"$out/$side-$i.txt" 2>/dev/null
    done
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$out" "$rounds" <<'EOF'
import re, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
unit = {"ps": 1e-3, "ns": 1, "µs": 1e3, "us": 1e3, "ms": 1e6, "s": 1e9}
def parse(path):
    res, name = {}, None
    for line in open(path):
        m = re.match(r"^(\S.*?)\s+time:\s+\[", line)
        if m:
            name = m.group(1)
        elif line.strip() and not line.startswith(" "):
            name = line.strip() if "time:" not in line else name
        m = re.search(r"time:\s+\[\S+ \S+ (\S+) (\S+) \S+ \S+\]", line)
        if m and name:
            res[name] = float(m.group(1)) * unit[m.group(2)]
    return res
sides = {s: [parse(f"{out}/{s}-{i}.txt") for i in range(1, rounds + 1)] for s in ("base", "new")}
names = [n for n in sides["base"][0] if all(n in r for s in sides.values() for r in s)]
print(f"{'benchmark':58} {'base ns':>12} {'new ns':>12} {'new/base':>9}")
for n in names:
    b = statistics.median(r[n] for r in sides["base"])
    w = statistics.median(r[n] for r in sides["new"])
    print(f"{n:58} {b:12.1f} {w:12.1f} {w / b:9.2f}")
EOF
