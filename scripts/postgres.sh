#!/usr/bin/env bash
# A private PostgreSQL server for the tests and CI, from Debian's packages (apt-get install postgresql).
#
#   scripts/postgres.sh start DIR [PORT]   initdb into DIR/data (once), start it on 127.0.0.1:PORT
#                                          (a free port if none), print `export SKILLROUTE_TEST_POSTGRES_URL=…`
#   scripts/postgres.sh stop DIR           stop it (fast shutdown; the data stays in DIR)
#
# The server's superuser is `postgres` with trust auth on 127.0.0.1 only, its socket in DIR (so it
# needs neither /var/run/postgresql nor a system service). PostgreSQL refuses to run as root, and
# CI runs as root: then DIR is handed to the `postgres` OS user (the Debian package creates it) and
# initdb/pg_ctl run as that user through runuser. DIR must be reachable by that user (a mktemp -d
# under /tmp is; pytest's own tmp dirs are not).
set -euo pipefail

pg_bin() {
  # Debian keeps the server binaries off PATH, one folder per major version: take the newest.
  local found
  found=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
  if [ -n "$found" ] && [ -x "$found/pg_ctl" ]; then echo "$found"; return; fi
  command -v pg_ctl >/dev/null && { dirname "$(command -v pg_ctl)"; return; }
  echo "postgres.sh: no PostgreSQL server found (apt-get install postgresql)" >&2
  exit 1
}

as_owner() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

start() {
  local dir=$1 port=${2:-$(free_port)} bin
  bin=$(pg_bin)
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  [ "$(id -u)" = 0 ] && chown -R postgres: "$dir"
  if [ -f "$dir/port" ] && as_owner "$bin/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
    port=$(cat "$dir/port")  # already running (a second start): the same server, not a failure
    echo "export SKILLROUTE_TEST_POSTGRES_URL=postgresql+psycopg://postgres@127.0.0.1:$port/postgres"
    return 0
  fi
  if [ ! -f "$dir/data/PG_VERSION" ]; then
    as_owner "$bin/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --no-sync >"$dir/initdb.log"
  fi
  # fsync off: a test server's data is thrown away, and every CREATE DATABASE would wait on the disk
  as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start \
    -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200" >/dev/null
  echo "$port" >"$dir/port"
  echo "export SKILLROUTE_TEST_POSTGRES_URL=postgresql+psycopg://postgres@127.0.0.1:$port/postgres"
}

stop() {
  local dir=$1
  [ -f "$1/data/postmaster.pid" ] || return 0
  as_owner "$(pg_bin)/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null
}

case "${1:-}" in
  start) start "${2:?usage: postgres.sh start DIR [PORT]}" "${3:-}" ;;
  stop) stop "${2:?usage: postgres.sh stop DIR}" ;;
  *) echo "usage: postgres.sh start DIR [PORT] | stop DIR" >&2; exit 2 ;;
esac
