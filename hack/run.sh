#!/usr/bin/env bash
# Starts tradingd with demo users for a person to try with curl. `make run` calls it as
#   hack/services.sh hack/run.sh
# after `make build`, so DATABASE_URL (a server admin DSN) and REDIS_URL are exported and
# bin/tradingd exists.
#
# It creates the database tradingd_dev on that server when missing (DEV_DATABASE overrides
# the name), makes a throwaway JWT key unless JWT_KEYS or JWT_KEYS_FILE is set, migrates,
# prints how to log in, and serves with DEMO_USERS=true on LISTEN_ADDR (127.0.0.1:8080)
# and ADMIN_ADDR (127.0.0.1:9090). Ctrl-C stops it gracefully.
set -euo pipefail

cd "$(dirname "$0")/.."
log() { printf '[run] %s\n' "$*" >&2; }

bin=bin/tradingd
if [ ! -x "$bin" ]; then log "$bin is missing: run make build (or make run)"; exit 1; fi
if [ -z "${DATABASE_URL:-}" ]; then log "DATABASE_URL is not set: run this through hack/services.sh (make run)"; exit 1; fi
if ! command -v psql >/dev/null 2>&1; then
  log "psql is needed to create the development database: apt-get install postgresql-client"; exit 1
fi

# The development database lives next to the admin DSN's database on the same server.
db=${DEV_DATABASE:-tradingd_dev}
if ! [[ "$db" =~ ^[a-z_][a-z0-9_]*$ ]]; then log "DEV_DATABASE must be a plain lower-case name"; exit 1; fi
if ! [[ "$DATABASE_URL" =~ ^(postgres(ql)?://[^/?]*)(/[^?]*)?(\?.*)?$ ]]; then
  log "DATABASE_URL must be a postgres:// URL"; exit 1
fi
dev_url="${BASH_REMATCH[1]}/$db${BASH_REMATCH[4]}"

exists=$(psql "$DATABASE_URL" -XtAq -v ON_ERROR_STOP=1 -c "SELECT 1 FROM pg_database WHERE datname = '$db'")
if [ "$exists" != 1 ]; then
  psql "$DATABASE_URL" -XqA -v ON_ERROR_STOP=1 -c "CREATE DATABASE $db" >/dev/null
  log "created database $db"
else
  log "using database $db"
fi

if [ -z "${JWT_KEYS:-}" ] && [ -z "${JWT_KEYS_FILE:-}" ]; then
  # A new key per run: tokens from an earlier run stop working, which is what a throwaway is.
  JWT_KEYS="dev:$(head -c 32 /dev/urandom | base64 | tr -d '\n')"
  export JWT_KEYS
  log "generated a throwaway JWT key"
fi

export DATABASE_URL="$dev_url"
export LISTEN_ADDR="${LISTEN_ADDR:-127.0.0.1:8080}"
export ADMIN_ADDR="${ADMIN_ADDR:-127.0.0.1:9090}"
export LOG_FORMAT="${LOG_FORMAT:-text}"
export DEMO_USERS=true

"$bin" migrate

# The URL a local curl reaches: an empty or wildcard host means this machine.
host=${LISTEN_ADDR%:*}
port=${LISTEN_ADDR##*:}
case "$host" in "" | 0.0.0.0 | "[::]") host=127.0.0.1 ;; esac
api="http://$host:$port"
admin_host=${ADMIN_ADDR%:*}
case "$admin_host" in "" | 0.0.0.0 | "[::]") admin_host=127.0.0.1 ;; esac
admin="http://$admin_host:${ADMIN_ADDR##*:}"

cat <<EOF

tradingd $("$bin" version) is starting on $api (admin $admin), database $db, with demo users
trader1/password123, trader2/password456 (traders) and risk1/password789 (risk).
Try it from another terminal:

  API=$api
  # log in as trader1 and submit an order
  T=\$(curl -s \$API/api/auth/login -H 'Content-Type: application/json' \\
        -d '{"username":"trader1","password":"password123"}' | grep -o '"access_token":"[^"]*"' | cut -d'"' -f4)
  ORDER=\$(curl -s \$API/api/orders -H "Authorization: Bearer \$T" -H 'Content-Type: application/json' \\
        -d '{"symbol":"BTC/USD","side":"buy","quantity":"0.5","price":"60000"}' | grep -o '"id":"[^"]*"' | head -n1 | cut -d'"' -f4)
  # log in as risk1 and approve it (four eyes: the requester cannot approve its own order)
  R=\$(curl -s \$API/api/auth/login -H 'Content-Type: application/json' \\
        -d '{"username":"risk1","password":"password789"}' | grep -o '"access_token":"[^"]*"' | cut -d'"' -f4)
  curl -s -X POST \$API/api/orders/\$ORDER/approve -H "Authorization: Bearer \$R"; echo
  # trader1's positions and summary
  curl -s \$API/api/positions -H "Authorization: Bearer \$T"; echo
  curl -s \$API/api/summary -H "Authorization: Bearer \$T"; echo
  # health
  curl -s $admin/readyz; echo
  curl -s $admin/metrics | grep -E "^(api_requests_total|cache_hits_total|trades_total)"

Ctrl-C stops tradingd (it drains in-flight requests first).

EOF

# Not exec: services.sh's cleanup runs after this script, and tradingd gets Ctrl-C directly.
"$bin" serve
