#!/usr/bin/env bash
# Instructions per request of the gateway, counted by callgrind: a figure that does not move
# with the machine's load, for telling whether a change to the request path helped.
#
#   bash benches/callgrind.sh [public|bearer] [connections]     # defaults: public 8
#
# It builds in release, starts (each on a free 127.0.0.1 port, each stopped by its pid on exit)
# an nginx upstream answering a fixed 3-byte body and the gateway under
# `valgrind --tool=callgrind --instr-atstart=no` with the memory store, a public route and an
# `all_of` route (the token comes from a real POST /auth/login). After a 3 s warm-up with wrk
# it switches collection on, runs `wrk -t1 -c<connections> -d<DURATION>s`, dumps, and prints
# the instructions counted divided by the requests wrk completed. The profile is kept in
# target/callgrind/<route>.<commit>.out for `callgrind_annotate --inclusive=yes`.
#
# The count is repeatable to well under 1 % for the same binary and connection count (two runs
# of one build: 80,872 and 80,887); it is user space only: kernel time is not in it.
# valgrind hides SHA-NI from the program, so SHA-256 (the token cache key) is counted on its
# slower AVX path: the Bearer route's figure overstates that part.
#
# Needs valgrind, wrk, nginx, curl, python3 (Debian: apt-get install valgrind wrk nginx-light).
# Environment: DURATION (s, default 8).
set -euo pipefail

ROUTE=${1:-public}
CONNS=${2:-8}
DURATION=${DURATION:-8}
[[ $ROUTE == public || $ROUTE == bearer ]] || { echo "route: public or bearer" >&2; exit 2; }
[[ $CONNS =~ ^[0-9]+$ ]] && ((CONNS >= 1 && CONNS <= 256)) || { echo "connections: 1..256" >&2; exit 2; }
[[ $DURATION =~ ^[0-9]+$ ]] && ((DURATION >= 1 && DURATION <= 120)) || { echo "DURATION: 1..120" >&2; exit 2; }
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
for t in valgrind callgrind_control callgrind_annotate wrk curl python3 "$NGINX"; do
    command -v "$t" >/dev/null || { echo "missing: $t" >&2; exit 1; }
done

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
cargo build --release --locked >&2
BIN=$ROOT/target/release/portcullis

TMP=$(mktemp -d /tmp/portcullis-callgrind.XXXXXX)
PIDS=()
cleanup() {
    local rc=$? p
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    local deadline=$((SECONDS + 10))
    for p in "${PIDS[@]}"; do
        while kill -0 "$p" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
        kill -KILL "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
    rm -rf "$TMP"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}
UP=$(free_port)
GW=$(free_port)
while [[ $GW == "$UP" ]]; do GW=$(free_port); done

mkdir -p "$TMP/up"
cat >"$TMP/up/nginx.conf" <<EOF
daemon off;
worker_processes 1;
pid $TMP/up/nginx.pid;
error_log $TMP/up/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $TMP/up/body;
    proxy_temp_path $TMP/up/proxy;
    fastcgi_temp_path $TMP/up/fastcgi;
    uwsgi_temp_path $TMP/up/uwsgi;
    scgi_temp_path $TMP/up/scgi;
    keepalive_requests 1000000;
    server { listen 127.0.0.1:$UP; location / { return 200 "ok\n"; } }
}
EOF
"$NGINX" -p "$TMP/up" -c "$TMP/up/nginx.conf" 2>"$TMP/up/stderr" &
PIDS+=("$!")

PASSWORD=$(python3 -c 'import secrets; print(secrets.token_urlsafe(24))')
HASH=$(printf '%s\n' "$PASSWORD" | "$BIN" hash-password --stdin)
"$BIN" keys generate --alg EdDSA --out "$TMP/keys" >"$TMP/keys.out"
KID=$(head -n1 "$TMP/keys.out")
cat >"$TMP/users.yaml" <<EOF
users:
  - username: bench
    password_hash: "$HASH"
    roles: [reader]
EOF
cat >"$TMP/gateway.yaml" <<EOF
listeners: [{ bind: "127.0.0.1:$GW" }]
store: { kind: memory }
roles: { reader: [bench:read] }
upstreams: { origin: { url: "http://127.0.0.1:$UP" } }
routes:
  - { id: public, path: /public, upstream: origin, policy: public }
  - { id: private, path: /private, upstream: origin, policy: { all_of: [bench:read] } }
auth:
  issuer: http://127.0.0.1:$GW
  audience: portcullis-callgrind
  users_file: users.yaml
  signing_keys: [{ alg: EdDSA, pem: keys/$KID.key.pem }]
  access_ttl: 1h
EOF
PORTCULLIS_LOG=warn valgrind --tool=callgrind --instr-atstart=no \
    --callgrind-out-file="$TMP/callgrind.out" \
    "$BIN" run --config "$TMP/gateway.yaml" >"$TMP/gateway.out" 2>"$TMP/gateway.err" &
GW_PID=$!
PIDS+=("$GW_PID")
deadline=$((SECONDS + 120))
until curl -s -o /dev/null --max-time 2 "http://127.0.0.1:$GW/public/"; do
    ((SECONDS < deadline)) || { echo "the gateway did not answer under valgrind" >&2; exit 1; }
    sleep 0.5
done

HEADER=()
URL=http://127.0.0.1:$GW/public/x
if [[ $ROUTE == bearer ]]; then
    TOKEN=$(curl -s --max-time 120 -H 'Content-Type: application/json' \
        --data "{\"username\":\"bench\",\"password\":\"$PASSWORD\",\"return_tokens\":true}" \
        "http://127.0.0.1:$GW/auth/login" |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
    HEADER=(-H "Authorization: Bearer $TOKEN")
    URL=http://127.0.0.1:$GW/private/x
fi
[[ $(curl -s --max-time 10 "${HEADER[@]}" "$URL") == ok ]] || { echo "$URL does not answer ok" >&2; exit 1; }

timeout 60 wrk -t1 -c"$CONNS" -d3s "${HEADER[@]}" "$URL" >/dev/null
callgrind_control -i on "$GW_PID" >/dev/null 2>&1
timeout $((DURATION + 60)) wrk -t1 -c"$CONNS" -d"${DURATION}s" "${HEADER[@]}" "$URL" >"$TMP/wrk.out"
callgrind_control -d "$GW_PID" >/dev/null 2>&1
callgrind_control -i off "$GW_PID" >/dev/null 2>&1
if grep -q 'Non-2xx' "$TMP/wrk.out"; then
    echo "error responses during the run:" >&2
    cat "$TMP/wrk.out" >&2
    exit 1
fi

REQUESTS=$(awk '/ requests in / {print $1}' "$TMP/wrk.out")
PROFILE=$(ls -t "$TMP"/callgrind.out* | head -n1)
TOTAL=$(callgrind_annotate "$PROFILE" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
[[ -n $(git status --porcelain --untracked-files=no 2>/dev/null) ]] && COMMIT=$COMMIT-dirty
mkdir -p target/callgrind
cp "$PROFILE" "target/callgrind/$ROUTE.$COMMIT.out"
echo "$ROUTE route, wrk -t1 -c$CONNS -d${DURATION}s, commit $COMMIT: $REQUESTS requests," \
    "$TOTAL instructions, $((TOTAL / REQUESTS)) per request" \
    "(profile: target/callgrind/$ROUTE.$COMMIT.out)"
