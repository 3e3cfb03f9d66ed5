#!/usr/bin/env bash
# The upload benchmark (issue 13): the same exchange file credited by
# `milebatch once` (pulled from a local inbox) and uploaded through the
# management site (`milebatch serve`, HTTPS, a multipart POST with curl),
# each on a fresh database holding the same members.
#
# usage (from the repo root):
#   bench/upload.sh [--members N] [--rows N] [--smoke] [--bin PATH] [--keep]
#
#   --members N   members in the store (default 1000000)
#   --rows N      rows in the exchange file (default 1000000)
#   --smoke       10k members x 10k rows: checks that everything works; the
#                 targets are printed but do not fail
#   --bin PATH    the milebatch binary to use (skips `cargo build --release`)
#   --keep        keep the work folder (printed at the end)
#
# Timed: `once` as a whole process (/usr/bin/time); the upload from the
# first byte curl sends to the end of the result page (curl's time_total,
# after logging in). Serve's peak RSS is VmHWM from /proc/PID/status after
# the upload (serve started just before it).
# Targets: upload <= 1.5x once; serve peak RSS < 200 MiB.
# Checks: both credit the same rows and miles; the upload is recorded with
# channel 'upload'; no temp file is left.
# Exit status: 1 if a check fails, 2 if a target is missed (never in
# --smoke), 0 otherwise.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

members=1000000
rows=1000000
smoke=0
keep=0
bin=""
while [ $# -gt 0 ]; do
    case $1 in
        --members) members=$2; shift 2 ;;
        --rows) rows=$2; shift 2 ;;
        --smoke) smoke=1; members=10000; rows=10000; shift ;;
        --bin) bin=$2; shift 2 ;;
        --keep) keep=1; shift ;;
        -h|--help) sed -n '2,26p' "$0"; exit 0 ;;
        *) echo "bench/upload.sh: unknown argument $1 (try --help)" >&2; exit 64 ;;
    esac
done

die() { echo "bench/upload.sh: $*" >&2; exit 1; }
for t in python3 curl openssl sqlite3; do
    command -v "$t" >/dev/null || die "$t not found"
done
[ -x /usr/bin/time ] || die "/usr/bin/time not found (apt-get install time)"

if [ -z "$bin" ]; then
    echo "== cargo build --release" >&2
    cargo build --release --quiet
    bin=${CARGO_TARGET_DIR:-$root/target}/release/milebatch
fi
bin=$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")
[ -x "$bin" ] || die "no milebatch binary at $bin"

work=${BENCH_DIR:-$(mktemp -d /tmp/milebatch-upload-bench.XXXXXX)}
mkdir -p "$work"
work=$(cd "$work" && pwd)
serve_pid=""
cleanup() {
    if [ -n "$serve_pid" ]; then kill "$serve_pid" 2>/dev/null || true; wait "$serve_pid" 2>/dev/null || true; fi
    if [ "$keep" = 0 ] && [ -z "${BENCH_DIR:-}" ]; then rm -rf "$work"; fi
}
trap cleanup EXIT

echo "== generating $members members x $rows rows in $work/data" >&2
python3 "$root/bench/gen.py" "$work/data" "$members" "$rows"
csv=$work/data/exchange.csv
bytes=$(stat -c %s "$csv")

# A TLS certificate for 127.0.0.1, as serve runs in production.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
    -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 \
    -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
chmod 600 "$work/key.pem"

mb=$work/mb
mkdir -p "$mb"
cat >"$mb/partners.toml" <<TOML
[daemon]
database = "var/milebatch.db"
data_dir = "var"
timezone = "UTC"

[server]
listen = "127.0.0.1:0"
tls_cert = "$work/cert.pem"
tls_key = "$work/key.pem"

[[partner]]
id = "bench"
name = "Benchmark partner"
schedule = "daily 03:00"
encoding = "utf-8"
header = false
max_miles_per_row = 5000
max_error_ratio = 0.05
[partner.source]
kind = "local"
dir = "inbox"
ready = "immediate"
TOML
mbx() { "$bin" --config "$mb/partners.toml" "$@"; }

echo "== importing members" >&2
mkdir -p "$mb/var"
mbx members import "$work/data/members.csv" >/dev/null 2>"$work/import.err" ||
    { cat "$work/import.err" >&2; die "members import failed"; }
cp "$mb/var/milebatch.db" "$work/members.db"

fresh() {
    rm -rf "$mb/var" "$mb/inbox"
    mkdir -p "$mb/var" "$mb/inbox"
    cp "$work/members.db" "$mb/var/milebatch.db"
    sync
}
q() { sqlite3 "$mb/var/milebatch.db" "$1"; }
secs() { # /usr/bin/time -v wall clock as seconds
    awk -F': ' '/Elapsed \(wall clock\)/ { n = split($2, p, ":"); s = 0
        for (i = 1; i <= n; i++) s = s * 60 + p[i]; print s }' "$1"
}

echo "== milebatch once ($rows rows, $bytes bytes)" >&2
fresh
cp "$csv" "$mb/inbox/exchange.csv"
sync
status=0
/usr/bin/time -v -o "$work/once.time" "$bin" --config "$mb/partners.toml" once \
    >"$work/once.out" 2>"$work/once.err" || status=$?
[ "$status" = 0 ] || { tail -5 "$work/once.err" >&2; die "once exited $status"; }
once_s=$(secs "$work/once.time")
once_rss_kib=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$work/once.time")
once_rows=$(q "SELECT count(*) FROM ledger")
once_miles=$(q "SELECT sum(miles) FROM ledger")

echo "== milebatch serve, upload through the site" >&2
fresh
"$bin" --config "$mb/partners.toml" serve >"$work/serve.out" 2>"$work/serve.err" &
serve_pid=$!
for _ in $(seq 1 300); do
    grep -q '^listening on ' "$work/serve.out" 2>/dev/null && break
    kill -0 "$serve_pid" 2>/dev/null || { cat "$work/serve.err" >&2; die "serve exited"; }
    sleep 0.1
done
base=$(sed -n 's/^listening on //p' "$work/serve.out" | head -1)
[ -n "$base" ] || die "serve printed no address"
pw=$(mbx user add bench@example.jp --partner bench 2>/dev/null | sed -n 2p | tr -d ' ')
[ -n "$pw" ] || die "user add printed no password"
jar=$work/cookies
c() { curl -sS --cacert "$work/cert.pem" -b "$jar" -c "$jar" "$@"; }
c -o /dev/null --data-urlencode "email=bench@example.jp" --data-urlencode "password=$pw" "$base/login"
csrf=$(c "$base/upload" | sed -n 's/.*name="csrf" value="\([^"]*\)".*/\1/p' | head -1)
[ -n "$csrf" ] || die "no CSRF token on the upload page (login failed?)"
upload_s=$(c -o "$work/result.html" -w '%{time_total}' -F "csrf=$csrf" \
    -F "file=@$csv;type=text/csv" "$base/upload")
serve_hwm_kib=$(awk '/^VmHWM:/ {print $2}' "/proc/$serve_pid/status")
kill "$serve_pid"; wait "$serve_pid" 2>/dev/null || true; serve_pid=""
up_rows=$(q "SELECT count(*) FROM ledger")
up_miles=$(q "SELECT sum(miles) FROM ledger")
up_channel=$(q "SELECT group_concat(channel) FROM files")
left=$(find "$mb/var/uploads" -type f 2>/dev/null | wc -l)

fail=0
check() { # check WHAT OK
    if [ "$2" = 1 ]; then echo "ok    $1"; else echo "FAIL  $1"; fail=1; fi
}
echo
echo "checks"
check "once credited rows ($once_rows) > 0" "$([ "$once_rows" -gt 0 ] && echo 1)"
check "upload credited the same rows ($up_rows) and miles ($up_miles vs $once_miles)" \
    "$([ "$up_rows" = "$once_rows" ] && [ "$up_miles" = "$once_miles" ] && echo 1)"
check "the upload's file row has channel upload ($up_channel)" "$([ "$up_channel" = upload ] && echo 1)"
check "the result page says credited" "$(grep -q '積算しました' "$work/result.html" && echo 1)"
check "no temp file left under data_dir/uploads ($left)" "$([ "$left" = 0 ] && echo 1)"

ratio=$(awk -v u="$upload_s" -v o="$once_s" 'BEGIN { printf "%.2f", u / o }')
hwm_mib=$(awk -v k="$serve_hwm_kib" 'BEGIN { printf "%.1f", k / 1024 }')
once_mib=$(awk -v k="$once_rss_kib" 'BEGIN { printf "%.1f", k / 1024 }')
ratio_ok=$(awk -v r="$ratio" 'BEGIN { print (r <= 1.5) ? 1 : 0 }')
rss_ok=$(awk -v m="$hwm_mib" 'BEGIN { print (m < 200) ? 1 : 0 }')
verdict() { if [ "$1" = 1 ]; then echo PASS; else echo FAIL; fi; }

echo
echo "upload benchmark: $rows rows ($bytes bytes), $members members, $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-44s %10s %12s %8s\n' "job" "wall s" "peak RSS MiB" ""
printf '%-44s %10.2f %12s %8s\n' "milebatch once" "$once_s" "$once_mib" ""
printf '%-44s %10.2f %12s %8s\n' "upload through the site (curl, HTTPS)" "$upload_s" "$hwm_mib" ""
echo
printf '%-44s %10s %12s %8s\n' "target" "value" "limit" "result"
printf '%-44s %10s %12s %8s\n' "upload / once" "${ratio}x" "<= 1.5x" "$(verdict "$ratio_ok")"
printf '%-44s %10s %12s %8s\n' "serve peak RSS (VmHWM)" "$hwm_mib" "< 200 MiB" "$(verdict "$rss_ok")"
[ "$keep" = 1 ] && echo "work folder: $work"

[ "$fail" = 0 ] || exit 1
if [ "$smoke" = 1 ]; then
    echo "(--smoke: targets shown, not enforced)"
    exit 0
fi
[ "$ratio_ok" = 1 ] && [ "$rss_ok" = 1 ] || exit 2
