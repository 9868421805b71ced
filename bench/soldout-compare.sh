#!/usr/bin/env bash
# bench/soldout-compare.sh: a sell-out burst (issue 7): order attempts on a
# sold-out sale, each from a different user, against Strata vs nginx
# `return 200` (same workers, wrk, interleaved rounds: bench/http-compare.sh
# does the measuring).
#
# The sale is created with stock 1 and bought by one user, so it is sold out:
# every other user's attempt is answered 409 sold_out from the server's L1
# (the sale's flag, then the buyers' Bloom filter: certainly not a buyer)
# without touching Redis (test_flashsale_http checks that path by its metric).
# nginx answers the same POST with `return 200` and the same body.
#
# usage: bench/soldout-compare.sh [http-compare options, e.g. --rounds 5 --workers 2]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${STRATA_BIN:-$ROOT/build/release/strata}
[ -x "$BIN" ] || { echo "soldout-compare: build first (make build) or set STRATA_BIN" >&2; exit 69; }
TMP=$(mktemp -d /tmp/strata-soldout.XXXXXX)
trap 'rm -rf "$TMP"' EXIT
cat > "$TMP/orders.lua" <<'LUA'
-- one POST per request, each from a new user
local n = 0
request = function()
  n = n + 1
  local body = string.format('{"user_id":"burst-%d-%d"}', math.random(1, 1000000000), n)
  return wrk.format("POST", nil, {["Content-Type"] = "application/json"}, body)
end
LUA
BODY='{"error":{"code":"sold_out","message":"sale burst is sold out"}}'
SETUP="curl -sf -X POST -H 'Authorization: Bearer bench' -d '{\"sku\":\"burst\",\"stock\":1}' http://127.0.0.1:{port}/v1/flashsales >/dev/null \
 && curl -s -X POST -d '{\"user_id\":\"winner\"}' http://127.0.0.1:{port}/v1/flashsales/burst/orders >/dev/null \
 && test \"\$(curl -s -X POST -d '{\"user_id\":\"probe\"}' http://127.0.0.1:{port}/v1/flashsales/burst/orders)\" = '$BODY'"
"$ROOT/bench/http-compare.sh" --path /v1/flashsales/burst/orders --body "$BODY" \
  --wrk-script "$TMP/orders.lua" --setup "$SETUP" \
  --server-cmd "$BIN serve --listen 127.0.0.1:{port} --workers {workers} --var-dir $TMP/var --admin-token bench --log-level warn" \
  "$@"
