#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
#
# Compares the criterion benchmarks of two commits in one run, interleaved:
#
#   benches/ab-compare.sh [-r ROUNDS] [-f FILTER] BASE [NEW]
#   benches/ab-compare.sh -i BASE [NEW]
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
#
# -i counts instructions instead (valgrind's cachegrind): every operation of
# `examples/ab_ops.rs` (NEW's code on both sides) run N times and 0 times,
# the difference over N, for each side. A count does not move with the
# machine's load the way a time does; it does not see cache misses or
# branch mispredictions either, so it complements the timed run.
set -euo pipefail
rounds=3
instructions=0
filter='translate/planner|translate/translator|alloc_churn/iova_allocator|plan/'
while getopts r:f:ih o; do
    case $o in
    r) rounds=$OPTARG ;;
    i) instructions=1 ;;
    f) filter=$OPTARG ;;
    *) sed -n '3,24p' "$0"; exit 2 ;;
    esac
done
shift $((OPTIND - 1))
(($# >= 1 && $# <= 2)) || { sed -n '3,24p' "$0"; exit 2; }
root=$(git rev-parse --show-toplevel)
work=$root/target/ab-compare
mkdir -p "$work"

# "DIR TARGET_DIR" of a commit's tree (or of the working tree for "-"),
# with the working tree's bench code in it: both sides measure the same work.
tree() {
    local rev=$1 dir
    if [[ $rev == - ]]; then
        echo "$root $work/target-new"
        return
    fi
    dir=$work/src-$(git rev-parse --short "$rev")
    [[ -d $dir ]] || git -C "$root" worktree add -q --detach "$dir" "$rev"
    mkdir -p "$dir/benches/common"
    for f in benches/planner.rs benches/common/mod.rs examples/ab_ops.rs; do
        cp "$root/$f" "$dir/$f"
    done
    echo "$dir $work/target-base"
}

# The bench binary of a commit (or of the working tree for "-").
build() {
    local dir tgt
    read -r dir tgt < <(tree "$1")
    (cd "$dir" && CARGO_TARGET_DIR=$tgt cargo bench --bench planner --no-run --message-format=json 2>/dev/null) |
        python3 -c 'import json,sys
for l in sys.stdin:
    m=json.loads(l)
    if m.get("reason")=="compiler-artifact" and m["target"]["name"]=="planner" and m.get("executable"):
        print(m["executable"])' | tail -n1
}

if ((instructions)); then
    command -v valgrind >/dev/null || { echo "ab-compare: -i needs valgrind" >&2; exit 1; }
    ops_bin() {
        local dir tgt
        read -r dir tgt < <(tree "$1")
        (cd "$dir" && CARGO_TARGET_DIR=$tgt cargo build -q --release --example ab_ops) >&2
        echo "$tgt/release/examples/ab_ops"
    }
    base_ops=$(ops_bin "$1")
    new_ops=$(ops_bin "${2:--}")
    ir() {
        valgrind --tool=cachegrind --cache-sim=no --cachegrind-out-file=/dev/null "$@" 2>&1 |
            sed -n 's/.*I *refs: *//p' | tr -d ,
    }
    printf '%-44s %14s %14s %9s\n' operation "base instr" "new instr" new/base
    declare -A per
    for op in $("$new_ops" list); do
        case $op in
        translat*) n=20000 ;;
        alloc*) n=5000 ;;
        */1024) n=20 ;;
        *) n=50 ;;
        esac
        for side in base new; do
            bin=${side}_ops
            a=$(ir "${!bin}" "$op" 0)
            b=$(ir "${!bin}" "$op" "$n")
            per[$side/$op]=$(((b - a) / n))
        done
        printf '%-44s %14d %14d %9s\n' "$op" "${per[base/$op]}" "${per[new/$op]}" \
            "$(python3 -c "print(f'{${per[new/$op]}/${per[base/$op]}:.2f}')")"
        if [[ $op == *+clone-only* ]]; then
            plan=${op/+clone-only/}
            bp=$((per[base/$plan] - per[base/$op])) np=$((per[new/$plan] - per[new/$op]))
            printf '%-44s %14d %14d %9s\n' "  ${plan} (the plan alone)" "$bp" "$np" \
                "$(python3 -c "print(f'{$np/$bp:.2f}' if $bp else '-')")"
        fi
    done
    exit 0
fi

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
