#!/usr/bin/env bash
# Makes PostgreSQL and Redis available, then runs the given command with DATABASE_URL and
# REDIS_URL exported, and stops whatever it started when the command ends.
#
#   hack/services.sh go test ./...      # run a command with the services
#   hack/services.sh env                # just print the export lines (services must already answer)
#
# Order of preference for each service:
#   1. DATABASE_URL / REDIS_URL from the environment, when they answer;
#   2. the local server on its standard port (127.0.0.1:5432, 127.0.0.1:6379);
#   3. a throwaway instance on a free port in a temporary folder, installing the Debian
#      packages first when the binaries are missing. PostgreSQL refuses to run as root,
#      so as root it runs as the postgres user.
# SERVICES_THROWAWAY=1 skips 1 and 2 (to check the fresh-machine path on a machine that has servers).
# Tests create a database of their own inside the server; nothing here is shared state.
set -euo pipefail

log() { printf '[services] %s\n' "$*" >&2; }

tmp=""
pg_started=""
redis_started=""
cleanup() {
  if [ -n "$redis_started" ]; then
    "$redis_cli" -p "$redis_port" shutdown nosave >/dev/null 2>&1 || kill "$redis_started" 2>/dev/null || true
    log "stopped throwaway Redis"
  fi
  if [ -n "$pg_started" ]; then
    as_pg "$pg_bin/pg_ctl" -D "$tmp/pg" -m immediate stop >/dev/null 2>&1 || true
    log "stopped throwaway PostgreSQL"
  fi
  if [ -n "$tmp" ]; then rm -rf "$tmp"; fi
}
trap 'rc=$?; cleanup; exit $rc' EXIT
# Ctrl-C reaches the command too (same process group): let it stop and clean up, and exit
# with its status; the EXIT trap then stops what this script started.
trap ':' INT
trap 'exit 143' TERM

port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

free_port() {
  local p
  for _ in $(seq 1 100); do
    p=$(( (RANDOM % 20000) + 40000 ))
    port_open 127.0.0.1 "$p" || { echo "$p"; return; }
  done
  log "no free port found"; exit 1
}

# host and port of a URL like postgres://user@host:port/db?x or redis://host:port/0
url_hostport() { echo "$1" | sed -E 's#^[a-z]+://([^@/]*@)?([^/:?]+)(:([0-9]+))?.*#\2 \4#'; }

redis_ping() { # host port
  local reply
  reply=$( (exec 3<>"/dev/tcp/$1/$2"; printf 'PING\r\n' >&3; timeout 2 head -c 7 <&3) 2>/dev/null || true)
  [[ "$reply" == +PONG* ]]
}

pg_ping() { # url
  if command -v pg_isready >/dev/null 2>&1; then
    pg_isready -q -t 3 -d "$1" 2>/dev/null
  else
    read -r h p < <(url_hostport "$1"); port_open "$h" "${p:-5432}"
  fi
}

apt_install() {
  if [ "$(id -u)" != 0 ]; then log "need $* but not root: install them (apt-get install $*)"; exit 1; fi
  log "installing $* from Debian's packages"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

ensure_tmp() { [ -n "$tmp" ] || { tmp=$(mktemp -d /tmp/trading-services.XXXXXX); chmod 755 "$tmp"; }; }

# --- PostgreSQL ---
throwaway=${SERVICES_THROWAWAY:-}
if [ -z "$throwaway" ] && [ -n "${DATABASE_URL:-}" ] && pg_ping "$DATABASE_URL"; then
  log "PostgreSQL: using DATABASE_URL"
elif [ -z "$throwaway" ] && pg_ping "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"; then
  export DATABASE_URL="postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"
  log "PostgreSQL: using the local server on 127.0.0.1:5432"
else
  pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1 || true)
  if [ -z "$pg_bin" ] || [ ! -x "$pg_bin/initdb" ]; then
    apt_install postgresql
    pg_bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n1)
  fi
  ensure_tmp
  port=$(free_port)
  mkdir -p "$tmp/pg"
  [ "$(id -u)" = 0 ] && chown postgres "$tmp/pg"
  as_pg "$pg_bin/initdb" -D "$tmp/pg" -A trust -U postgres >/dev/null
  as_pg "$pg_bin/pg_ctl" -D "$tmp/pg" -l "$tmp/pg/log" -w \
    -o "-p $port -k $tmp/pg -c listen_addresses=127.0.0.1 -c max_connections=300 -c fsync=off" start >/dev/null
  pg_started=1
  export DATABASE_URL="postgres://postgres@127.0.0.1:$port/postgres?sslmode=disable"
  log "PostgreSQL: started a throwaway instance on 127.0.0.1:$port"
fi

# --- Redis ---
redis_cli=redis-cli
if [ -z "$throwaway" ] && [ -n "${REDIS_URL:-}" ] && read -r h p < <(url_hostport "$REDIS_URL") && redis_ping "$h" "${p:-6379}"; then
  log "Redis: using REDIS_URL"
elif [ -z "$throwaway" ] && redis_ping 127.0.0.1 6379; then
  export REDIS_URL="redis://127.0.0.1:6379/0"
  log "Redis: using the local server on 127.0.0.1:6379"
else
  command -v redis-server >/dev/null 2>&1 || apt_install redis-server
  ensure_tmp
  redis_port=$(free_port)
  redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --dir "$tmp" \
    --daemonize yes --pidfile "$tmp/redis.pid" --logfile "$tmp/redis.log"
  for _ in $(seq 1 50); do redis_ping 127.0.0.1 "$redis_port" && break; sleep 0.1; done
  redis_started=$(cat "$tmp/redis.pid")
  export REDIS_URL="redis://127.0.0.1:$redis_port/0"
  log "Redis: started a throwaway instance on 127.0.0.1:$redis_port"
fi

if [ "${1:-}" = "env" ] || [ $# -eq 0 ]; then
  if [ -n "$pg_started$redis_started" ]; then
    log "env mode cannot keep throwaway instances: run a command through this script instead"; exit 1
  fi
  printf 'export DATABASE_URL=%q\nexport REDIS_URL=%q\n' "$DATABASE_URL" "$REDIS_URL"
  exit 0
fi
# Not exec: the trap must stop the throwaway instances after the command.
"$@"
