#!/usr/bin/env bash
# Start and stop a throwaway PostgreSQL cluster on a local port, for the chain tests.
# Sourced by scripts/test.sh; exports T2VSIM_TEST_PG_URL.
pg_bin() {
  local d
  for d in /usr/lib/postgresql/*/bin; do [ -x "$d/initdb" ] && { echo "$d"; return; }; done
}
pg_start() {
  if [ -z "$(pg_bin)" ]; then
    echo "installing Debian's postgresql" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null) >&2
  fi
  local bin; bin=$(pg_bin)
  PG_DIR=$(mktemp -d /tmp/t2vsim-pg.XXXXXX)
  chmod 777 "$PG_DIR"
  local port=${T2VSIM_PG_PORT:-55432}
  local run=""
  if [ "$(id -u)" = 0 ]; then run="runuser -u postgres --"; chown postgres "$PG_DIR"; fi
  $run "$bin/initdb" -D "$PG_DIR/data" -U postgres -A trust >/dev/null
  $run "$bin/pg_ctl" -D "$PG_DIR/data" -o "-p $port -k $PG_DIR -c listen_addresses=127.0.0.1 -c fsync=off" \
    -l "$PG_DIR/log" -w start >/dev/null
  export T2VSIM_TEST_PG_URL="postgresql+psycopg://postgres@127.0.0.1:$port/postgres"
  export PG_DIR PG_BIN_DIR=$bin PG_RUN="$run"
  echo "PostgreSQL test server on port $port" >&2
}
pg_stop() {
  [ -n "${PG_DIR:-}" ] || return 0
  $PG_RUN "$PG_BIN_DIR/pg_ctl" -D "$PG_DIR/data" -m fast stop >/dev/null 2>&1 || true
  rm -rf "$PG_DIR"
}
