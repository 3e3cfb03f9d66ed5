#!/usr/bin/env bash
# This tree's partner API against another build of milebatch, in one run on
# one machine: bench/api.sh alternately with each server binary (the same
# load generator, this tree's), then credits/s and verify/s side by side
# with the ratio new / baseline.
#
# usage (from the repo root):
#   bench/api-compare.sh REV|BINARY [--rounds N] [--seconds S] [--members N] [--rows N]
#
#   REV          a git revision: built (release) in a worktree under
#                target/api-compare/ (its own target folder; kept for reuse)
#   BINARY       or the path of a milebatch binary already built
#   --rounds N   runs per binary, alternating baseline, new, baseline, …
#                (default 2); the figure kept per binary is the median
#   --seconds S, --members N, --rows N   passed to bench/api.sh
#                (defaults 30, 1000000, 200000)
#
# Exit status: 1 if a run's correctness check fails, 0 otherwise (the
# ratio is reported, not judged: on a shared host it moves with the load).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
die() { echo "bench/api-compare.sh: $*" >&2; exit 1; }

[ $# -ge 1 ] || die "usage: bench/api-compare.sh REV|BINARY [--rounds N] [--seconds S] [--members N] [--rows N]"
base=$1; shift
rounds=2
pass=(--seconds 30 --members 1000000 --rows 200000)
while [ $# -gt 0 ]; do
    case $1 in
        --rounds) rounds=$2; shift 2 ;;
        --seconds|--members|--rows) pass+=("$1" "$2"); shift 2 ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) die "unknown argument $1 (try --help)" ;;
    esac
done

if [ -x "$base" ] && [ -f "$base" ]; then
    base_bin=$(cd "$(dirname "$base")" && pwd)/$(basename "$base")
    base_name=$base
else
    rev=$(git rev-parse --verify "$base^{commit}") || die "$base is neither a binary nor a git revision"
    dir=$root/target/api-compare/$rev
    if [ ! -d "$dir" ]; then
        git worktree add --detach "$dir" "$rev" >&2
    fi
    echo "building the baseline ($rev) in $dir" >&2
    (cd "$dir" && cargo build --release --locked --bin milebatch >&2)
    base_bin=$dir/target/release/milebatch
    base_name=$(git log -1 --format='%h %s' "$rev" | cut -c1-60)
fi
echo "building this tree (release)" >&2
cargo build --release --locked --bin milebatch --example loadgen >&2
new_bin=$root/target/release/milebatch

out=$(mktemp -d /tmp/milebatch-api-compare.XXXXXX)
for i in $(seq "$rounds"); do
    for which in base new; do
        if [ $which = base ]; then b=$base_bin; else b=$new_bin; fi
        echo "round $i/$rounds: $which ($b)" >&2
        bench/api.sh --no-build --server "$b" --summary "$out/$which-$i.json" "${pass[@]}" >&2 \
            || [ $? = 2 ] || die "bench/api.sh failed a correctness check with $which (see above)"
    done
done

python3 - "$out" "$rounds" "$base_name" <<'PY'
import json, statistics, sys
out, rounds, base_name = sys.argv[1], int(sys.argv[2]), sys.argv[3]
runs = {w: [json.load(open(f"{out}/{w}-{i}.json")) for i in range(1, rounds + 1)] for w in ("base", "new")}
def med(w, phase, key):
    return statistics.median(r[phase][key] for r in runs[w])
print(f"bench/api-compare.sh: {rounds} rounds per binary, alternating; baseline: {base_name}")
print("| figure (median of rounds) | baseline | this tree | ratio |")
print("|---|---|---|---|")
for label, phase, key in [("credits/s", "credits", "per_second"), ("credits p99 ms", "credits", "p99_ms"),
                          ("verify/s", "verify", "per_second"), ("verify p99 ms", "verify", "p99_ms"),
                          ("credits/s while once runs", "credits_during_once", "per_second")]:
    b, n = med("base", phase, key), med("new", phase, key)
    print(f"| {label} | {b:g} | {n:g} | {n / b:.3f} |")
for w in ("base", "new"):
    each = ", ".join(f"{r['credits']['per_second']:g} / {r['verify']['per_second']:g}" for r in runs[w])
    rss = max(r["peak_rss_kib"] for r in runs[w]) // 1024
    steal = max(max(r["steal_pct"]) for r in runs[w])
    print(f"{w}: credits/s / verify/s per round: {each}; peak RSS {rss} MiB; max CPU steal {steal}%")
PY
rm -rf "$out"
