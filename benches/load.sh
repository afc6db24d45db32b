#!/usr/bin/env bash
# Load benchmark: Portcullis against a bare nginx proxy hop, all behind one tiny upstream.
#
#   bash benches/load.sh [duration_seconds]        # default 10 s per target (1..600)
#
# What it does, in one run:
#   1. Checks for its tools. It installs nothing. Required: wrk, nginx, curl, python3, cargo
#      (Debian: `apt-get install wrk nginx-light` or `nginx`). nginx is required because every
#      target sits behind an nginx upstream; the nginx-proxy row is the comparison itself.
#   2. `cargo build --release --locked` → target/release/portcullis.
#   3. Starts, in a temp dir, each as its own process on a free 127.0.0.1 port, pids recorded:
#      - upstream: nginx, 1 worker, `return 200 "ok\n"` (a fixed 3-byte body), access_log off;
#      - nginx as a bare reverse proxy: proxy_pass to an upstream{} keepalive pool, HTTP/1.1;
#      - Portcullis: memory store, a public route and an `all_of` route to the upstream, its own
#        `auth:` (a generated user and EdDSA signing key), PORTCULLIS_LOG=warn. A real access
#        token with a live session comes from `POST /auth/login` with `return_tokens: true`.
#   4. For each target, a warm-up (WARMUP seconds, default 3), then
#      `wrk -t2 -c64 -d<duration>s --latency`:
#        direct upstream · nginx proxy · gateway public route ·
#        gateway authenticated route, Bearer · gateway authenticated route, cookie ·
#        nginx `auth_request` → the gateway's forward-auth endpoint (nginx forwards), Bearer ·
#        HAProxy 2.6 bare · HAProxy 2.6 with `jwt_verify` of an RS256 token (when haproxy is
#        installed; it is optional)
#      The authenticated rows are full authentication of a cached token: verify (cache hit),
#      session + revocation check, permission check, identity headers, then forward.
#   5. Prints a Markdown table: requests/s, ratio to the direct upstream, p50/p99 (wrk's latency
#      distribution), server CPU µs per request and the non-2xx count, plus the machine, the
#      date and the git commit.
#
# Server CPU per request = Δ(utime + stime) of the server processes behind the target, read from
# /proc/<pid>/stat (whole-process totals: all threads; nginx = master + workers) over the
# measured run, divided by the requests wrk completed. As in the issue, the upstream's CPU is
# counted with the proxy's ("upstream + proxy"); the "proxy only" column leaves it out.
# wrk runs on the same cores, so requests/s depends on the machine; compare rows within a run.
#
# Fairness choices:
#   - The nginx proxy runs `worker_processes` = nproc (2 here), because the gateway runs tokio's
#     default multi-thread runtime with one worker thread per core: both may use every core.
#     Override with NGINX_PROXY_WORKERS=1. The upstream always runs 1 worker.
#   - keepalive_requests is raised to 1,000,000 everywhere (nginx's default of 1000 would close
#     each client connection every 1000 requests and mix reconnect costs into the figures);
#     the nginx proxy keeps an upstream keepalive pool of 64, like the gateway's pooled client.
#   - wrk counts only 4xx/5xx ("Non-2xx or 3xx responses"), so before and after each run the
#     script also checks with curl that the target answers exactly 200 with the upstream's "ok"
#     body. Any non-2xx count is printed, noted under the table, and makes the exit status 1.
#
# Environment: WARMUP (s, default 3), NGINX_PROXY_WORKERS (default nproc),
#              KEEP_TMP=1 keeps the temp dir (configs, logs, raw wrk outputs).
# Safety: binds only 127.0.0.1; stops exactly the pids it started (trap on EXIT); each wrk run
# and every wait is bounded by `timeout`/deadlines. The cargo build is the only unbounded step.
set -euo pipefail

DURATION=${1:-10}
WARMUP=${WARMUP:-3}
if ! [[ $DURATION =~ ^[0-9]+$ ]] || ((DURATION < 1 || DURATION > 600)); then
    echo "usage: bash benches/load.sh [duration_seconds 1..600]" >&2
    exit 2
fi
if ! [[ $WARMUP =~ ^[0-9]+$ ]] || ((WARMUP > 60)); then
    echo "WARMUP must be 0..60 seconds" >&2
    exit 2
fi
THREADS=2
CONNECTIONS=64

log() { printf '[load] %s\n' "$*" >&2; }
die() { printf '[load] error: %s\n' "$*" >&2; exit 1; }

# --- 1. tools ----------------------------------------------------------------------------------
missing=()
command -v wrk >/dev/null || missing+=("wrk (required: apt-get install wrk)")
NGINX=$(command -v nginx || true)
[[ -z $NGINX && -x /usr/sbin/nginx ]] && NGINX=/usr/sbin/nginx
[[ -n $NGINX ]] || missing+=("nginx (required for the upstream and the nginx-proxy row: apt-get install nginx-light)")
# Optional: HAProxy 2.6 (`apt-get install haproxy`) for its two rows; without it they are left out.
HAPROXY=$(command -v haproxy || true)
[[ -z $HAPROXY && -x /usr/sbin/haproxy ]] && HAPROXY=/usr/sbin/haproxy
for t in curl python3 cargo timeout; do
    command -v "$t" >/dev/null || missing+=("$t")
done
if ((${#missing[@]})); then
    printf '[load] missing: %s\n' "${missing[@]}" >&2
    exit 1
fi

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

# --- process bookkeeping -----------------------------------------------------------------------
# The pids of every process below $1 (children, grandchildren, ...).
descendants() {
    local c
    for c in $(ps -o pid= --ppid "$1" 2>/dev/null); do
        echo "$c"
        descendants "$c"
    done
}

PIDS=()          # every process this script started (nginx masters, the gateway)
CHILD=""         # the foreground job of the moment (cargo, wrk), run via `child`
TMP=""
cleanup() {
    local rc=$? p c all=()
    if [[ -n $CHILD ]] && kill -0 "$CHILD" 2>/dev/null; then
        # cargo's rustc jobs (or timeout's wrk) would outlive their parent: stop them too
        local tree
        tree=$(descendants "$CHILD")
        # shellcheck disable=SC2086
        kill -TERM "$CHILD" $tree 2>/dev/null || true
        wait "$CHILD" 2>/dev/null || true
    fi
    for p in "${PIDS[@]}"; do
        all+=("$p")
        # nginx workers are children of a master we started: remember them before it exits
        for c in $(ps -o pid= --ppid "$p" 2>/dev/null); do all+=("$c"); done
    done
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    local deadline=$((SECONDS + 10))
    for p in "${all[@]}"; do
        while kill -0 "$p" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
        kill -KILL "$p" 2>/dev/null || true
    done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    if [[ -n $TMP && -d $TMP ]]; then
        if [[ ${KEEP_TMP:-0} == 1 ]]; then log "kept $TMP"; else rm -rf "$TMP"; fi
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Runs a long command in the background and waits for it, so that INT/TERM reach the traps at
# once (bash runs traps only after a foreground command ends) and cleanup can stop it.
child() {
    "$@" &
    CHILD=$!
    local rc=0
    wait "$CHILD" || rc=$?
    CHILD=""
    return "$rc"
}

# CPU ticks (utime + stime) of pid and of its live children (nginx workers), from /proc.
cpu_ticks() {
    local total=0 p stat rest f
    for p in "$@" $(for q in "$@"; do ps -o pid= --ppid "$q" 2>/dev/null; done); do
        stat=$(<"/proc/$p/stat") || continue
        rest=${stat##*) }        # the fields after "(comm)": index 0 is field 3 (state)
        read -ra f <<<"$rest"
        total=$((total + f[11] + f[12]))   # fields 14 utime, 15 stime
    done
    echo "$total"
}
CLK_TCK=$(getconf CLK_TCK)

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# Waits (bounded) until http://127.0.0.1:$1$2 answers at all.
wait_http() {
    local deadline=$((SECONDS + 30))
    until curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$1$2"; do
        ((SECONDS < deadline)) || die "nothing answers on 127.0.0.1:$1 after 30 s"
        sleep 0.2
    done
}

# --- 2. build ----------------------------------------------------------------------------------
log "cargo build --release --locked"
child cargo build --release --locked >&2
BIN=$ROOT/target/release/portcullis
[[ -x $BIN ]] || die "$BIN not built"

TMP=$(mktemp -d /tmp/portcullis-load.XXXXXX)
UP_PORT=$(free_port)
PX_PORT=$(free_port)
GW_PORT=$(free_port)
while [[ $PX_PORT == "$UP_PORT" ]]; do PX_PORT=$(free_port); done
while [[ $GW_PORT == "$UP_PORT" || $GW_PORT == "$PX_PORT" ]]; do GW_PORT=$(free_port); done
FA_PORT=$(free_port)
while [[ $FA_PORT == "$UP_PORT" || $FA_PORT == "$PX_PORT" || $FA_PORT == "$GW_PORT" ]]; do FA_PORT=$(free_port); done
HB_PORT=$(free_port)
while [[ " $UP_PORT $PX_PORT $GW_PORT $FA_PORT " == *" $HB_PORT "* ]]; do HB_PORT=$(free_port); done
HJ_PORT=$(free_port)
while [[ " $UP_PORT $PX_PORT $GW_PORT $FA_PORT $HB_PORT " == *" $HJ_PORT "* ]]; do HJ_PORT=$(free_port); done
NPROC=$(nproc)
PROXY_WORKERS=${NGINX_PROXY_WORKERS:-$NPROC}

# --- 3a. nginx upstream and nginx proxy ----------------------------------------------------------
# Common prelude: everything nginx writes stays under its own prefix in $TMP.
nginx_prelude() { # $1 dir, $2 workers
    cat <<EOF
daemon off;
worker_processes $2;
pid $1/nginx.pid;
error_log $1/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $1/body;
    proxy_temp_path $1/proxy;
    fastcgi_temp_path $1/fastcgi;
    uwsgi_temp_path $1/uwsgi;
    scgi_temp_path $1/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
EOF
}

mkdir -p "$TMP/upstream" "$TMP/proxy" "$TMP/gateway" "$TMP/authreq"
{
    nginx_prelude "$TMP/upstream" 1
    cat <<EOF
    server {
        listen 127.0.0.1:$UP_PORT;
        location / { return 200 "ok\n"; }
    }
}
EOF
} >"$TMP/upstream/nginx.conf"
{
    nginx_prelude "$TMP/proxy" "$PROXY_WORKERS"
    cat <<EOF
    upstream origin {
        server 127.0.0.1:$UP_PORT;
        keepalive 64;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:$PX_PORT;
        location / {
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
} >"$TMP/proxy/nginx.conf"
# nginx in front with `auth_request` to the gateway's forward-auth endpoint: the decision is the
# gateway's, the bytes go from nginx to the upstream directly. Both pools keep connections.
{
    nginx_prelude "$TMP/authreq" "$PROXY_WORKERS"
    cat <<EOF
    upstream origin {
        server 127.0.0.1:$UP_PORT;
        keepalive 64;
        keepalive_requests 1000000;
    }
    upstream portcullis {
        server 127.0.0.1:$GW_PORT;
        keepalive 64;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:$FA_PORT;
        location / {
            auth_request /_portcullis/nginx;
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
        location = /_portcullis/nginx {
            internal;
            proxy_pass http://portcullis;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_set_header X-Original-URL \$scheme://\$http_host\$request_uri;
            proxy_set_header X-Original-Method \$request_method;
        }
    }
}
EOF
} >"$TMP/authreq/nginx.conf"

"$NGINX" -p "$TMP/upstream" -c "$TMP/upstream/nginx.conf" 2>"$TMP/upstream/stderr" &
UP_PID=$!
PIDS+=("$UP_PID")
"$NGINX" -p "$TMP/proxy" -c "$TMP/proxy/nginx.conf" 2>"$TMP/proxy/stderr" &
PX_PID=$!
PIDS+=("$PX_PID")
wait_http "$UP_PORT" /
wait_http "$PX_PORT" /

# --- 3b. the gateway ---------------------------------------------------------------------------
G=$TMP/gateway
PASSWORD=$(python3 -c 'import secrets; print(secrets.token_urlsafe(24))')
HASH=$(printf '%s\n' "$PASSWORD" | "$BIN" hash-password --stdin)
"$BIN" keys generate --alg EdDSA --out "$G/keys" >"$G/keys.out"
KID=$(head -n1 "$G/keys.out")
[[ -f $G/keys/$KID.key.pem ]] || die "keys generate wrote no $G/keys/$KID.key.pem"
cat >"$G/users.yaml" <<EOF
users:
  - username: bench
    password_hash: "$HASH"
    roles: [reader]
EOF
cat >"$G/gateway.yaml" <<EOF
listeners:
  - bind: 127.0.0.1:$GW_PORT
store: { kind: memory }
tokens:
  cookie: __Host-portcullis-at
roles:
  reader: [bench:read]
upstreams:
  origin:
    url: http://127.0.0.1:$UP_PORT
routes:
  - id: public
    path: /public
    upstream: origin
    policy: public
  - id: private
    path: /private
    upstream: origin
    policy: { all_of: [bench:read] }
trusted_proxies: [127.0.0.1]
forward_auth:
  - { contract: nginx, trusted_proxies: [127.0.0.1] }
auth:
  issuer: http://127.0.0.1:$GW_PORT
  audience: portcullis-load
  users_file: users.yaml
  signing_keys:
    - { alg: EdDSA, pem: keys/$KID.key.pem }
  access_ttl: 1h
EOF
"$BIN" check --config "$G/gateway.yaml" >&2 || die "generated config refused"
PORTCULLIS_LOG=warn "$BIN" run --config "$G/gateway.yaml" >"$G/stdout" 2>"$G/stderr" &
GW_PID=$!
PIDS+=("$GW_PID")
wait_http "$GW_PORT" /public/

LOGIN=$(curl -s --max-time 10 -H 'Content-Type: application/json' \
    --data "{\"username\":\"bench\",\"password\":\"$PASSWORD\",\"return_tokens\":true}" \
    "http://127.0.0.1:$GW_PORT/auth/login") || die "POST /auth/login failed"
TOKEN=$(printf '%s' "$LOGIN" | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])') ||
    die "no access_token in the login answer: $LOGIN"

"$NGINX" -p "$TMP/authreq" -c "$TMP/authreq/nginx.conf" 2>"$TMP/authreq/stderr" &
FA_PID=$!
PIDS+=("$FA_PID")
wait_http "$FA_PORT" /public/

# --- 3c. HAProxy (optional) -------------------------------------------------------------------
# HAProxy 2.6, `nbthread` = nproc like nginx's workers, one process with two frontends to the
# same upstream (keep-alive, `http-reuse always`): bare, and with `jwt_verify` of an RS256 token
# (checks as close to the gateway's as HAProxy's converters allow: alg, iss, aud, exp, the
# signature; no revocation, no session, no cache: every request verifies the signature).
HP_PID=""
if [[ -n $HAPROXY ]]; then
    H=$TMP/haproxy
    mkdir -p "$H"
    "$BIN" keys generate --alg RS256 --out "$H/keys" >"$H/keys.out"
    RS_KID=$(head -n1 "$H/keys.out")
    [[ -f $H/keys/$RS_KID.pub.pem ]] || die "keys generate wrote no $H/keys/$RS_KID.pub.pem"
    RS_TOKEN=$("$BIN" token --key "$H/keys/$RS_KID.key.pem" --alg RS256 --kid "$RS_KID" \
        --iss https://load.portcullis.invalid --aud portcullis-load --sub bench --ttl 1h)
    cat >"$H/haproxy.cfg" <<EOF
global
    nbthread $NPROC
    maxconn 8000
defaults
    mode http
    timeout connect 5s
    timeout client 75s
    timeout server 75s
    http-reuse always
frontend bare
    bind 127.0.0.1:$HB_PORT
    default_backend origin
frontend jwt
    bind 127.0.0.1:$HJ_PORT
    http-request deny status 401 unless { req.hdr(authorization) -m beg "Bearer " }
    http-request set-var(txn.bearer) http_auth_bearer
    http-request set-var(txn.alg) var(txn.bearer),jwt_header_query('\$.alg')
    http-request deny status 401 unless { var(txn.alg) -m str RS256 }
    http-request deny status 401 unless { var(txn.bearer),jwt_payload_query('\$.iss') -m str https://load.portcullis.invalid }
    http-request deny status 401 unless { var(txn.bearer),jwt_payload_query('\$.aud') -m str portcullis-load }
    http-request set-var(txn.exp) var(txn.bearer),jwt_payload_query('\$.exp','int')
    http-request set-var(txn.now) date
    http-request deny status 401 if { var(txn.exp),sub(txn.now) -m int lt 0 }
    http-request deny status 401 unless { var(txn.bearer),jwt_verify(txn.alg,"$H/keys/$RS_KID.pub.pem") -m int 1 }
    default_backend origin
backend origin
    server up 127.0.0.1:$UP_PORT
EOF
    "$HAPROXY" -c -f "$H/haproxy.cfg" >"$H/check" 2>&1 || die "haproxy refused its config: $(cat "$H/check")"
    "$HAPROXY" -f "$H/haproxy.cfg" >"$H/stdout" 2>"$H/stderr" &
    HP_PID=$!
    PIDS+=("$HP_PID")
    wait_http "$HB_PORT" /
    [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "http://127.0.0.1:$HJ_PORT/x") == 401 ]] ||
        die "haproxy jwt_verify let a request without a token through"
else
    log "haproxy not found: its rows are left out (apt-get install haproxy)"
fi

# --- 4. measure --------------------------------------------------------------------------------
# Each target: name | URL | extra wrk header (or empty) | server pids (space-separated) | proxy pids
TARGETS=(
    "direct upstream (nginx, 1 worker)|http://127.0.0.1:$UP_PORT/||$UP_PID|"
    "nginx proxy_pass, $PROXY_WORKERS worker(s)|http://127.0.0.1:$PX_PORT/||$PX_PID $UP_PID|$PX_PID"
    "gateway, public route|http://127.0.0.1:$GW_PORT/public/x||$GW_PID $UP_PID|$GW_PID"
    "gateway, all_of route, Bearer|http://127.0.0.1:$GW_PORT/private/x|Authorization: Bearer $TOKEN|$GW_PID $UP_PID|$GW_PID"
    "gateway, all_of route, cookie|http://127.0.0.1:$GW_PORT/private/x|Cookie: __Host-portcullis-at=$TOKEN|$GW_PID $UP_PID|$GW_PID"
    "nginx auth_request → gateway forward-auth, all_of route, Bearer|http://127.0.0.1:$FA_PORT/private/x|Authorization: Bearer $TOKEN|$FA_PID $GW_PID $UP_PID|$FA_PID $GW_PID"
)
if [[ -n $HP_PID ]]; then
    TARGETS+=(
        "HAProxy 2.6 bare, nbthread $NPROC|http://127.0.0.1:$HB_PORT/||$HP_PID $UP_PID|$HP_PID"
        "HAProxy 2.6 jwt_verify RS256 (no revocation)|http://127.0.0.1:$HJ_PORT/private/x|Authorization: Bearer $RS_TOKEN|$HP_PID $UP_PID|$HP_PID"
    )
fi

# Exactly 200 with the upstream's body, or die.
check_200() { # url header
    local args=(-s --max-time 5 -o "$TMP/check.body" -w '%{http_code}')
    [[ -n $2 ]] && args+=(-H "$2")
    local code
    code=$(curl "${args[@]}" "$1") || die "curl $1 failed"
    [[ $code == 200 && $(<"$TMP/check.body") == ok ]] ||
        die "$1 answered $code, body: $(head -c 300 "$TMP/check.body")"
}

# wrk latency like 538.00us / 1.23ms / 1.02s / 2.00m → milliseconds
to_ms() {
    python3 -c '
import re, sys
m = re.fullmatch(r"([0-9.]+)(us|ms|s|m)", sys.argv[1])
print("%.2f" % (float(m.group(1)) * {"us": 1e-3, "ms": 1, "s": 1e3, "m": 6e4}[m.group(2)]))' "$1"
}

run_wrk() { # out url header duration
    local args=(-t"$THREADS" -c"$CONNECTIONS" -d"$4s" --latency)
    [[ -n $3 ]] && args+=(-H "$3")
    child timeout $(($4 + 30)) wrk "${args[@]}" "$2" >"$1"
}

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
ROWS=()
NOTES=()
INVALID=0
DIRECT_RPS=""
i=0
for t in "${TARGETS[@]}"; do
    IFS='|' read -r name url header server proxy <<<"$t"
    i=$((i + 1))
    check_200 "$url" "$header"
    if ((WARMUP > 0)); then
        log "$name: warm-up ${WARMUP}s"
        run_wrk "$TMP/warmup.$i" "$url" "$header" "$WARMUP"
    fi
    log "$name: ${DURATION}s"
    # shellcheck disable=SC2086
    s0=$(cpu_ticks $server)
    # shellcheck disable=SC2086  # several pids (nginx in front and the gateway)
    p0=0; [[ -n $proxy ]] && p0=$(cpu_ticks $proxy)
    run_wrk "$TMP/wrk.$i" "$url" "$header" "$DURATION"
    # shellcheck disable=SC2086
    s1=$(cpu_ticks $server)
    # shellcheck disable=SC2086
    p1=0; [[ -n $proxy ]] && p1=$(cpu_ticks $proxy)
    check_200 "$url" "$header"

    out=$TMP/wrk.$i
    rps=$(awk '/^Requests\/sec:/ {print $2}' "$out")
    reqs=$(awk '/ requests in / {print $1}' "$out")
    p50=$(awk '$1 == "50%" {print $2}' "$out")
    p99=$(awk '$1 == "99%" {print $2}' "$out")
    non2xx=$(awk '/Non-2xx or 3xx responses:/ {print $NF}' "$out")
    non2xx=${non2xx:-0}
    sockerr=$(grep -E '^ *Socket errors:' "$out" || true)
    [[ -n $rps && -n $reqs && -n $p50 && -n $p99 && $reqs -gt 0 ]] ||
        die "could not read wrk's output for $name: $(cat "$out")"
    [[ -z $DIRECT_RPS ]] && DIRECT_RPS=$rps
    read -r ratio cpu pcpu < <(python3 -c '
import sys
rps, direct, reqs, ds, dp, hz = map(float, sys.argv[1:])
print("%.3f %.1f %s" % (rps / direct, ds * 1e6 / hz / reqs, ("%.1f" % (dp * 1e6 / hz / reqs)) if dp else "—"))
' "$rps" "$DIRECT_RPS" "$reqs" $((s1 - s0)) $((p1 - p0)) "$CLK_TCK")
    [[ -z $proxy ]] && pcpu="—"
    ROWS+=("| $name | $(printf '%.0f' "$rps") | ${ratio}× | $(to_ms "$p50") ms | $(to_ms "$p99") ms | $cpu | $pcpu | $non2xx |")
    [[ -n $sockerr ]] && NOTES+=("$name: ${sockerr# *}")
    if [[ $non2xx != 0 ]]; then
        NOTES+=("$name: $non2xx non-2xx responses — the row is not valid")
        INVALID=1
    fi
done

# --- 5. report ---------------------------------------------------------------------------------
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [[ -n $(git status --porcelain --untracked-files=no 2>/dev/null) ]]; then
    COMMIT="$COMMIT + uncommitted changes"
fi
CPU_MODEL=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
echo
echo "**Load run** $(date -u '+%Y-%m-%d %H:%M UTC') · commit \`$COMMIT\` · $NPROC cores ($CPU_MODEL)"
echo "· load average $LOAD_BEFORE before, $(cut -d' ' -f1-3 /proc/loadavg) after · wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s"
echo "(warm-up ${WARMUP}s) · $("$NGINX" -v 2>&1 | sed 's/.*: //') · upstream: 1 worker, 3-byte body"
echo
echo "| target | req/s | ratio to direct | p50 | p99 | server CPU µs/req (upstream + proxy) | proxy only µs/req | non-2xx |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|"
printf '%s\n' "${ROWS[@]}"
if ((${#NOTES[@]})); then
    echo
    printf -- '- %s\n' "${NOTES[@]}"
fi
# A row with error responses measured something else than the issue's path: fail the run.
((INVALID == 0)) || exit 1
