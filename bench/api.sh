#!/usr/bin/env bash
# The partner API benchmark: `milebatch serve` (release) over TLS, loaded by
# the in-repo generator (examples/loadgen.rs: 64 keep-alive connections, a
# unique Idempotency-Key per request), server and client on this machine.
#
# usage (from the repo root):
#   bench/api.sh [--smoke] [--seconds S] [--members N] [--rows N] [--conns N] [--keep]
#
#   --smoke      20k members, a 50k-row file, 5 s phases: proves the script
#                and its checks; the targets are printed but do not fail
#   --seconds S  length of the credit and verify phases (default 60)
#   --members N  members in the store (default 1000000)
#   --rows N     rows of the file `once` credits during phase 3 (default 1000000)
#   --conns N    client connections (default 64)
#   --keep       keep the work folder (printed at the end)
#   --no-build   use the binaries already in target/ (as last built)
#   --debug      use the debug build (checks the script quickly; figures
#                of a debug build mean nothing)
#   --server BIN serve with (and run the commands of) another milebatch
#                binary, e.g. an older release; the load generator stays
#                this tree's (bench/api-compare.sh uses it)
#   --summary F  also write the figures as JSON to F
#
# Phases:
#   1. credits for S seconds; then every balance equals the ledger
#      (`milebatch verify`) and the API ledger rows equal the 201s received;
#   2. members/verify for S seconds (every answer must be {"match":true});
#   3. credits while `milebatch once` credits a ROWS-row file (bench/gen.py):
#      no request may fail; p50/p99 reported; the file must be credited.
#   Server RSS is sampled every 0.2 s throughout (and VmHWM read at the end).
#   The CPU steal of each phase (/proc/stat) is printed under the table: on
#   a shared host it is CPU the server and client did not get.
#
# Targets: credits >= 5000/s with p99 <= 50 ms; verify >= 15000/s with
# p99 <= 10 ms; 0 failed requests in phase 3; server peak RSS <= 150 MiB.
# Exit status: 1 if a correctness check fails, 2 if a target is missed
# (never with --smoke), 0 otherwise.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

seconds=60
members=1000000
rows=1000000
conns=64
profile=release
build=1
smoke=0
keep=0
server_bin=""
summary=""
while [ $# -gt 0 ]; do
    case $1 in
        --smoke) smoke=1; seconds=5; members=20000; rows=50000; shift ;;
        --seconds) seconds=$2; shift 2 ;;
        --members) members=$2; shift 2 ;;
        --rows) rows=$2; shift 2 ;;
        --conns) conns=$2; shift 2 ;;
        --keep) keep=1; shift ;;
        --debug) profile=debug; shift ;;
        --no-build) build=0; shift ;;
        --server) server_bin=$2; shift 2 ;;
        --summary) summary=$2; shift 2 ;;
        -h|--help) sed -n '2,38p' "$0"; exit 0 ;;
        *) echo "bench/api.sh: unknown argument $1 (try --help)" >&2; exit 64 ;;
    esac
done

die() { echo "bench/api.sh: $*" >&2; exit 1; }
for c in openssl sqlite3 python3; do
    command -v $c >/dev/null || die "$c not found"
done

echo "building ($profile): milebatch and examples/loadgen" >&2
if [ $build = 0 ]; then
    echo "  (--no-build: using target/$profile as it is)" >&2
elif [ $profile = release ]; then
    cargo build --release --locked --bin milebatch --example loadgen >&2
else
    cargo build --locked --bin milebatch --example loadgen >&2
fi
bin=${server_bin:-$root/target/$profile/milebatch}
loadgen=$root/target/$profile/examples/loadgen
[ -x "$bin" ] || die "no milebatch binary at $bin"

work=$(mktemp -d /tmp/milebatch-api-bench.XXXXXX)
serve_pid=""
sampler_pid=""
cleanup() {
    [ -n "$sampler_pid" ] && kill "$sampler_pid" 2>/dev/null || true
    [ -n "$serve_pid" ] && kill "$serve_pid" 2>/dev/null || true
    if [ $keep = 1 ]; then echo "work folder kept: $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT

# A throw-away CA and a server certificate for 127.0.0.1.
(
    cd "$work"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -keyout ca.key -out ca.pem -days 2 -subj /CN=milebatch-bench-ca 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -keyout server.key -out server.csr -subj /CN=127.0.0.1 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n' > ext.cnf
    openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
        -out server.pem -days 2 -extfile ext.cnf 2>/dev/null
    chmod 600 server.key
)

echo "generating $members members and a $rows-row file" >&2
python3 bench/gen.py "$work/data" "$members" "$rows" 0.01
mkdir -p "$work/inbox"
cat > "$work/partners.toml" <<EOF
[daemon]
database = "var/milebatch.db"
data_dir = "var"

[server]
listen = "127.0.0.1:0"
tls_cert = "server.pem"
tls_key = "server.key"

[[partner]]
id = "bench"
schedule = "daily 03:00"
max_miles_per_row = 100000
[partner.source]
kind = "local"
dir = "inbox"
ready = "immediate"
[partner.api]
enabled = true
rate = "1000000/s"
daily_miles_limit = 1000000000000
daily_verify_limit = 1000000000
EOF
mb() { "$bin" --config "$work/partners.toml" "$@"; }
mb members import "$work/data/members.csv" >&2
key=$(mb api-key create --partner bench --label bench)

# Not through mb(): $! must be the server itself, not a subshell.
"$bin" --config "$work/partners.toml" serve > "$work/serve.out" 2> "$work/serve.log" &
serve_pid=$!
for _ in $(seq 300); do
    grep -q '^listening on ' "$work/serve.out" 2>/dev/null && break
    sleep 0.1
done
base=$(sed -n 's/^listening on //p' "$work/serve.out")
[ -n "$base" ] || die "serve did not start: $(cat "$work/serve.log")"
echo "serve (pid $serve_pid) on $base" >&2

# RSS sampler: the highest VmRSS seen, in KiB.
( max=0; while kill -0 "$serve_pid" 2>/dev/null; do
      r=$(awk '/^VmRSS:/ {print $2}' "/proc/$serve_pid/status" 2>/dev/null || echo 0)
      [ "${r:-0}" -gt "$max" ] && { max=$r; echo "$max" > "$work/rss.max"; }
      sleep 0.2
  done ) &
sampler_pid=$!

lg() { "$loadgen" "$1" --url "$base" --key "$key" --ca "$work/ca.pem" --conns "$conns" \
        --members "$members" --prefix "$2" "${@:3}"; }
field() { python3 -c "import json,sys; print(json.loads(sys.argv[1])$2)" "$1"; }

# CPU time the hypervisor gave to other guests ("steal"), as a share of
# the phase: on a shared host it comes and goes, and with it the figures.
cpu_snap() { awk '/^cpu / {t = 0; for (i = 2; i <= 9; i++) t += $i; print t, $9}' /proc/stat; }
steal_pct() { # before-snapshot, after-snapshot
    python3 -c "import sys; t0, s0 = map(int, sys.argv[1].split()); t1, s1 = map(int, sys.argv[2].split()); print(round(100 * (s1 - s0) / max(t1 - t0, 1), 1))" "$1" "$2"
}

echo "phase 1: credits for ${seconds}s" >&2
snap=$(cpu_snap)
c1=$(lg credits p1 --seconds "$seconds")
steal1=$(steal_pct "$snap" "$(cpu_snap)")
echo "  $c1" >&2
api_rows() { sqlite3 "$work/var/milebatch.db" "SELECT count(*) FROM ledger WHERE file_id = 0"; }
rows1=$(api_rows)
ok1=$(field "$c1" "['ok']")
checks_failed=0
check() { # name, condition result (0 ok), detail
    if [ "$2" = 0 ]; then echo "  check ok: $1" >&2
    else echo "  CHECK FAILED: $1 ($3)" >&2; checks_failed=1; fi
}
check "API ledger rows = 201s received" "$([ "$rows1" = "$ok1" ] && echo 0 || echo 1)" "$rows1 rows, $ok1 201s"
if mb verify > "$work/verify1.txt" 2>&1; then v=0; else v=1; fi
check "balances = ledger (milebatch verify)" $v "$(tail -3 "$work/verify1.txt")"

echo "phase 2: members/verify for ${seconds}s" >&2
snap=$(cpu_snap)
v2=$(lg verify p2 --seconds "$seconds")
steal2=$(steal_pct "$snap" "$(cpu_snap)")
echo "  $v2" >&2
check "every verify answered {\"match\":true}" "$([ "$(field "$v2" "['failed']")" = 0 ] && echo 0 || echo 1)" "$(field "$v2" "['by_status']")"

echo "phase 3: credits while once credits $rows rows" >&2
cp "$work/data/exchange.csv" "$work/inbox/exchange.csv"
start3=$(date +%s.%N)
"$bin" --config "$work/partners.toml" once --partner bench --json > "$work/once.json" 2> "$work/once.log" &
once_pid=$!
snap=$(cpu_snap)
c3=$(lg credits p3 --until-pid "$once_pid")
steal3=$(steal_pct "$snap" "$(cpu_snap)")
if wait "$once_pid"; then once_rc=0; else once_rc=$?; fi
once_s=$(python3 -c "import sys; print(round(float(sys.argv[2]) - float(sys.argv[1]), 1))" "$start3" "$(date +%s.%N)")
echo "  $c3" >&2
credited=$(sqlite3 "$work/var/milebatch.db" "SELECT coalesce(sum(credited), 0) FROM files WHERE outcome = 'credited'")
check "once credited the file (exit $once_rc)" "$([ "$credited" -gt 0 ] && echo 0 || echo 1)" "credited $credited; $(tail -2 "$work/once.log")"
ok3=$(field "$c3" "['ok']")
rows3=$(api_rows)
check "API ledger rows = all 201s received" "$([ "$rows3" = $((ok1 + ok3)) ] && echo 0 || echo 1)" "$rows3 rows, $((ok1 + ok3)) 201s"
if mb verify > "$work/verify3.txt" 2>&1; then v=0; else v=1; fi
check "balances = ledger after phase 3" $v "$(tail -3 "$work/verify3.txt")"

hwm=$(awk '/^VmHWM:/ {print $2}' "/proc/$serve_pid/status")
sampled=$(cat "$work/rss.max" 2>/dev/null || echo 0)
kill "$serve_pid"; wait "$serve_pid" 2>/dev/null || true; serve_pid=""

# The table.
missed=0
row() { # what, figure, target, pass(0/1)
    local verdict=PASS
    if [ "$4" != 0 ]; then verdict=FAIL; missed=1; fi
    printf '| %-44s | %-26s | %-16s | %-4s |\n' "$1" "$2" "$3" "$verdict"
}
ge() { python3 -c "import sys; sys.exit(0 if float(sys.argv[1]) >= float(sys.argv[2]) else 1)" "$1" "$2" && echo 0 || echo 1; }
le() { python3 -c "import sys; sys.exit(0 if float(sys.argv[1]) <= float(sys.argv[2]) else 1)" "$1" "$2" && echo 0 || echo 1; }
echo
echo "bench/api.sh: $members members, ${seconds}s phases, $conns connections, a $rows-row file; $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)"
printf '| %-44s | %-26s | %-16s | %-4s |\n' "what" "figure" "target" "    "
printf '|%s|%s|%s|%s|\n' "$(printf -- '-%.0s' {1..46})" "$(printf -- '-%.0s' {1..28})" "$(printf -- '-%.0s' {1..18})" "------"
row "credits/s (phase 1, $(field "$c1" "['ok']") credited)" "$(field "$c1" "['per_second']")" ">= 5000" "$(ge "$(field "$c1" "['per_second']")" 5000)"
row "credits p99 ms (p50 $(field "$c1" "['p50_ms']"))" "$(field "$c1" "['p99_ms']")" "<= 50" "$(le "$(field "$c1" "['p99_ms']")" 50)"
row "credits failed (phase 1)" "$(field "$c1" "['failed']")" "0" "$([ "$(field "$c1" "['failed']")" = 0 ] && echo 0 || echo 1)"
row "verify/s (phase 2)" "$(field "$v2" "['per_second']")" ">= 15000" "$(ge "$(field "$v2" "['per_second']")" 15000)"
row "verify p99 ms (p50 $(field "$v2" "['p50_ms']"))" "$(field "$v2" "['p99_ms']")" "<= 10" "$(le "$(field "$v2" "['p99_ms']")" 10)"
row "credits failed while once runs (${once_s}s)" "$(field "$c3" "['failed']") of $(field "$c3" "['sent']")" "0" "$([ "$(field "$c3" "['failed']")" = 0 ] && echo 0 || echo 1)"
row "  their p50 / p99 / max ms" "$(field "$c3" "['p50_ms']") / $(field "$c3" "['p99_ms']") / $(field "$c3" "['max_ms']")" "reported" 0
row "server peak RSS MiB (VmHWM; sampled max)" "$((hwm / 1024)) ($((sampled / 1024)))" "<= 150" "$([ $((hwm / 1024)) -le 150 ] && echo 0 || echo 1)"
echo "CPU steal (time the host gave to other guests) during phases 1 / 2 / 3: $steal1% / $steal2% / $steal3%"
echo
if [ -n "$summary" ]; then
    python3 -c 'import json, sys
c1, v2, c3 = (json.loads(a) for a in sys.argv[1:4])
json.dump({"server": sys.argv[4], "credits": c1, "verify": v2, "credits_during_once": c3,
           "peak_rss_kib": int(sys.argv[5]), "steal_pct": [float(x) for x in sys.argv[6:9]]},
          open(sys.argv[9], "w"), indent=1)' "$c1" "$v2" "$c3" "$bin" "$hwm" "$steal1" "$steal2" "$steal3" "$summary"
fi
if [ $checks_failed = 1 ]; then
    echo "bench/api.sh: a correctness check FAILED (see above)" >&2
    exit 1
fi
if [ $missed = 1 ]; then
    if [ $smoke = 1 ]; then
        echo "bench/api.sh: --smoke: targets are not judged at this size" >&2
    else
        echo "bench/api.sh: a target was MISSED" >&2
        exit 2
    fi
fi
