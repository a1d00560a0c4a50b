#!/bin/sh
# Runs the polyglot saga: a Python and a Node.js participant over HTTP, a coordinator on a
# temporary SQLite file, and two sagas started with curl (one commits, one compensates).
# Needs python3, node, curl and a built `baton` (cargo build). Only loopback ports are used.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
baton=${BATON:-$here/../../target/debug/baton}
dir=$(mktemp -d)
pids=""
cleanup() { for pid in $pids; do kill "$pid" 2>/dev/null || true; done; rm -rf "$dir"; }
trap cleanup EXIT INT TERM

python3 "$here/inventory.py" 9101 & pids="$pids $!"
node "$here/payments.js" 9102 & pids="$pids $!"
BATON_LOG=warn "$baton" serve --no-auth --database-url "sqlite://$dir/baton.db" \
  --listen 127.0.0.1:7600 --http-listen 127.0.0.1:7601 >/dev/null 2>"$dir/baton.log" &
pids="$pids $!"
# Wait until all three answer (any HTTP status will do for the participants).
for url in http://127.0.0.1:7601/readyz http://127.0.0.1:9101/ http://127.0.0.1:9102/; do
  for _ in $(seq 100); do
    curl -s -o /dev/null "$url" && break
    sleep 0.1
  done
done

saga() {
  curl -s http://127.0.0.1:7601/v1/transactions -H 'Content-Type: application/json' -d "{
    \"saga\": {\"steps\": [
      {\"name\": \"reserve\", \"endpoint\": \"http://127.0.0.1:9101/inventory\",
       \"action\": \"reserve\", \"compensate\": \"release\", \"payload\": {\"sku\": \"A-1\", \"qty\": 2}},
      {\"name\": \"charge\", \"endpoint\": \"http://127.0.0.1:9102/payments\",
       \"action\": \"charge\", \"compensate\": \"refund\", \"payload\": {\"amount\": $1}, \"stage\": 1}]},
    \"wait\": true}" | python3 -c '
import json, sys
tx = json.load(sys.stdin)["transaction"]
print("transaction", tx["state"])
for b in tx["branches"]:
    print("  ", b["name"], b["state"], json.dumps(b["output"]) if b["output"] else b["last_error"] or "")'
}
echo "== amount 40: both steps succeed"
saga 40
echo "== amount 500: the charge is declined (409), so the reservation is released"
saga 500
