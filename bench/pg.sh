# A throw-away PostgreSQL cluster for the benchmarks (sourced by run.sh and
# api.sh with --store postgres): Debian's server binaries, run as the
# `postgres` user (the server refuses root), on a free loopback port, in a
# folder of the bench's work folder; stopped by pg_bench_stop.
#
# Durable like the SQLite side (synchronous = FULL): fsync and
# synchronous_commit stay on. shared_buffers 256 MB: a small dedicated
# database host, not a tuned one.
#
# After pg_bench_start DIR: $PG_PORT, $PG_SOCK, $PG_URL_BASE
# (postgres://milebatch@127.0.0.1:PORT), password in $PG_PASSWORD.

PG_BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
PG_PASSWORD=bench-password

pg_as() { runuser -u postgres -- "$@"; }

pg_bench_start() {
    local dir=$1
    [ -n "$PG_BIN" ] || { echo "bench: no PostgreSQL server (apt-get install postgresql)" >&2; return 1; }
    id postgres >/dev/null 2>&1 || { echo "bench: no postgres user (apt-get install postgresql)" >&2; return 1; }
    PG_DIR=$dir
    mkdir -p "$dir"
    chown postgres: "$dir"
    # The server runs as postgres: it must be able to reach its folder (a
    # mktemp -d work folder is 0700).
    chmod a+x "$(dirname "$dir")"
    pg_as "$PG_BIN/initdb" -D "$dir/data" -U postgres --auth-local=trust \
        --auth-host=scram-sha-256 --encoding=UTF8 --locale=C >/dev/null
    PG_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    PG_SOCK=$dir
    cat >>"$dir/data/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$dir'
shared_buffers = 256MB
max_wal_size = 4GB
log_min_messages = warning
EOF
    pg_as "$PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w start >/dev/null
    pg_sql postgres "CREATE ROLE milebatch LOGIN PASSWORD '$PG_PASSWORD'"
    PG_URL_BASE="postgres://milebatch@127.0.0.1:$PG_PORT"
}

# pg_sql DB SQL: run SQL as the superuser over the socket; rows on stdout.
pg_sql() {
    pg_as env PGOPTIONS='-c client_min_messages=warning' \
        "$PG_BIN/psql" -X -q -A -t -v ON_ERROR_STOP=1 -h "$PG_SOCK" -p "$PG_PORT" \
        -U postgres -d "$1" -c "$2"
}

pg_bench_stop() {
    [ -n "${PG_DIR:-}" ] || return 0
    pg_as "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -m immediate stop >/dev/null 2>&1 || true
}
