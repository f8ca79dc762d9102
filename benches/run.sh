#!/usr/bin/env bash
# wharf against its peers, on 127.0.0.1, in one run: prints each figure and its ratio.
#
# Starts CNCF distribution (Debian's docker-registry) as the upstream with the content of
# benches/content.py, wharf (release build) in front of it, distribution in proxy mode in front
# of it too (the peer users would pick), and nginx serving the same files at the same URLs (the
# speed of light for serving files over HTTP here). Then:
#   1 warm 256 MiB blob, 1 stream and 4 streams: wharf / nginx throughput
#   2 warm small objects (manifest by digest, 1 KiB blob), 64 connections (wrk):
#     wharf / nginx req/s, and p50 / p99 of both (best of three 3 s runs each, taken in turn)
#   3 cold 256 MiB blob: wharf / straight from the upstream (throughput, best of three each)
#   4 cold pull of an 8-layer, 128 MiB image with skopeo: distribution's proxy time / wharf's
#   5 50 concurrent cold GETs of one 64 MiB blob: upstream fetches (wharf and distribution), and
#     wharf's total time / one cold GET's time
#   6 wharf's anonymous RSS (not page cache) idle, and at peak under 64 concurrent 64 MiB pulls
#   7 a cluster: three wharfs (one bucket, [cluster]) and three distribution proxies (one
#     bucket, its S3 driver) on SeaweedFS, 30 skopeo pulls of the cold 128 MiB image split over
#     the three, the upstream behind the 50 MB/s link: upstream bytes per image (each), and
#     the 30 pulls' wall time against one client's cold pull through one wharf; then the same
#     with light clients (curl: manifest, config and layers 8 at a time, nothing verified or
#     kept) on a fresh cluster, where the clients' own work (skopeo: ~1.1 CPU-s a pull, so 30
#     take ~17 s of this machine's two cores) does not hide the mirror's
#   8 the store's cost as it grows: wharf restarted on a data directory of one million objects
#     (empty files under digest names, and one real blob): time from start to serving that
#     blob, how long the background index takes, and its anonymous memory per object (RSS
#     indexed with the million, less RSS indexed without them)
# In 4 and 5 (wharf's times) the upstream is reached through benches/uplink.py: one shared
# 50 MB/s link with a 20 ms round trip, as a site has to its registry. Straight on loopback,
# skopeo's own work is the whole of a pull and one cold GET takes 0.1 s, so those figures would
# time the client and the fan-out of 3.2 GB to 50 local clients, not how a mirror uses its
# upstream. Distribution's fetch count in 5 is taken on loopback (its ~50 fetches through the
# link would take a minute).
# Logs are off for wharf (WHARF_LOG=warn) and nginx (access_log off) alike, but for one
# figure that measures what wharf's access log (on by default) costs.
# usage: benches/run.sh   (as root: installs docker-registry, skopeo, nginx-light, wrk if missing)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
W=$(mktemp -d /tmp/wharf-bench.XXXXXX)
# what the skopeo clients pull goes to memory: the machine's disk is not what is measured, and
# its writeback of 30 x 128 MiB made the pull figures swing by 2x between runs
# (when /dev/shm has room for 30 pulls and some: 5 GiB)
if (($(df -Pk /dev/shm 2>/dev/null | awk 'NR == 2 {print $4}' || echo 0) > 5 << 20)); then
  OUT=$(mktemp -d /dev/shm/wharf-bench-pulls.XXXXXX)
else
  OUT=$(mktemp -d "$W/pulls.XXXXXX")
fi
UP=127.0.0.1:18000 WHARF=127.0.0.1:18001 DIST=127.0.0.1:18002 NGINX=127.0.0.1:18003
LINK=127.0.0.1:18004 # the upstream through a shared 50 MB/s link, 20 ms away (benches/uplink.py)
log() { printf '[bench] %s\n' "$*" >&2; }

pkgs=(docker-registry skopeo nginx-light wrk curl python3 cmake)
missing=(); for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if ((${#missing[@]})); then
  log "installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
(cd "$ROOT" && cargo build --release --quiet)
BIN=$ROOT/target/release/wharf

declare -A PID
start() { local name=$1; shift; setsid "$@" >>"$W/$name.log" 2>&1 </dev/null & PID[$name]=$!; }
stop() { local p=${PID[$1]:-}; [[ -n $p ]] || return 0; kill "$p" 2>/dev/null || true; for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done; kill -9 "$p" 2>/dev/null || true; unset "PID[$1]"; }
wait_http() { for _ in $(seq 200); do curl -s -o /dev/null "$1" && return 0; sleep 0.05; done; log "no answer from $1"; return 1; }
cleanup() { for n in "${!PID[@]}"; do stop "$n"; done; rm -rf "$OUT"; [[ -n ${KEEP_BENCH:-} ]] || rm -rf "$W"; }
trap cleanup EXIT

registry_config() { # FILE ADDR DATA [PROXY_URL]
  cat >"$1" <<YML
version: 0.1
log: {level: warn, formatter: text, accesslog: {disabled: false}}
storage: {filesystem: {rootdirectory: $3}, delete: {enabled: true}, cache: {blobdescriptor: inmemory}}
http: {addr: "$2"}
YML
  if [[ -n ${4:-} ]]; then printf 'proxy: {remoteurl: "%s"}\n' "$4" >>"$1"; fi
}

# ---------------------------------------------------------------- servers and content
# a server left from an earlier run would answer in place of the ones started here
for a in "$UP" "$WHARF" "$DIST" "$NGINX" "$LINK"; do
  if curl -s -o /dev/null --max-time 1 "http://$a/"; then log "something already listens on $a (left from an earlier run?)"; exit 1; fi
done
registry_config "$W/upstream.yml" "$UP" "$W/upstream"
start upstream /usr/bin/docker-registry serve "$W/upstream.yml"
wait_http "http://$UP/v2/"
log "pushing content (256 MiB + 64 MiB + 8 x 16 MiB + 1 KiB)"
python3 "$ROOT/benches/content.py" "$UP" "$W/www" >"$W/content.json"
q() { python3 -c 'import json,sys; c=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$W/content.json" "$1"; }
BIG=$(q 'c["bench/big"]["blobs"][0]'); MID=$(q 'c["bench/mid"]["blobs"][0]')
SMALL=$(q 'c["bench/small"]["blobs"][0]'); SMALL_M=$(q 'c["bench/small"]["manifest"]')

cat >"$W/nginx.conf" <<CONF
user root;
worker_processes auto;
pid $W/nginx.pid;
error_log $W/nginx.error.log;
events { worker_connections 4096; }
http {
  access_log off;
  sendfile off;
  keepalive_requests 1000000;
  default_type application/octet-stream;
  types {}
  server { listen $NGINX; root $W/www; }
}
CONF
start nginx /usr/sbin/nginx -c "$W/nginx.conf" -g 'daemon off;'
wait_http "http://$NGINX/"
start link python3 "$ROOT/benches/uplink.py" "${LINK##*:}" "${UP##*:}" 50 20
wait_http "http://$LINK/v2/"

fresh_wharf() { # [UPSTREAM]   (WHARF_LOG=info fresh_wharf: with the access log on)
  stop wharf; rm -rf "$W/wharf"
  start wharf env WHARF_LOG="${WHARF_LOG:-warn}" "$BIN" serve --listen "$WHARF" --data "$W/wharf" --upstream "http://${1:-$UP}" --config /dev/null
  wait_http "http://$WHARF/v2/"
}
fresh_dist() { # [UPSTREAM]
  stop dist; rm -rf "$W/dist"
  registry_config "$W/dist.yml" "$DIST" "$W/dist" "http://${1:-$UP}"
  start dist /usr/bin/docker-registry serve "$W/dist.yml"
  wait_http "http://$DIST/v2/"
}
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.3f", b-a}'; }
upstream_gets() { grep -c "\"GET /v2/[^ ]*/blobs/$1 " "$W/upstream.log" || true; }
# every URL measured must answer 200 first: a fast error is no result
ok200() { [[ $(curl -s -o /dev/null -w '%{http_code}' "$1") == 200 ]] || { log "not 200: $1"; exit 1; }; }
speed() { # URL -> bytes/s of one GET, which must answer 200 (no extra GET: it would warm a cold one)
  local code s
  read -r code s < <(curl -s -o /dev/null -w '%{http_code} %{speed_download}\n' "$1")
  [[ $code == 200 ]] || { log "not 200 ($code): $1"; exit 1; }
  echo "$s"
}
parallel() { # N URL: N concurrent GETs, waiting for those alone (not the servers)
  local pids=() i
  for ((i = 0; i < $1; i++)); do curl -s -o /dev/null "$2" & pids+=($!); done
  wait "${pids[@]}"
}
max() { awk -v a="$1" -v b="$2" 'BEGIN{print (b>a)?b:a}'; }
# (speed runs in an assignment of its own: a non-200 then stops the bench under set -e)
best_of_3() { local b=0 s; for _ in 1 2 3; do s=$(speed "$1"); b=$(max "$b" "$s"); done; echo "$b"; }
streams4() { # URL SIZE -> bytes/s over 4 parallel streams, best of 3
  local b=0 t0 t1 s
  for _ in 1 2 3; do
    t0=$(now); parallel 4 "$1"; t1=$(now)
    s=$(awk -v n="$2" -v d="$(secs "$t0" "$t1")" 'BEGIN{print 4*n/d}'); b=$(max "$b" "$s")
  done; echo "$b"
}
wrk_run() { # URL -> "req/s p50_ms p99_ms"
  ok200 "$1"
  wrk -t2 -c64 -d3s --latency "$1" | awk '
    /Requests\/sec/ {r=$2}
    function ms(v) { if (v ~ /us$/) return v/1000; if (v ~ /ms$/) return v+0; if (v ~ /s$/) return v*1000; return v }
    $1=="50%" {p50=ms($2)} $1=="99%" {p99=ms($2)}
    END {printf "%s %.2f %.2f\n", r, p50, p99}'
}
rss_anon() { awk '/RssAnon/ {print $2}' "/proc/$1/status"; }
wharf_pid() { pgrep -nf "serve --listen $WHARF"; }
pull() { rm -rf "$OUT/pulled"; local t0; t0=$(now); skopeo copy -q --src-tls-verify=false "docker://$1/bench/layers:1" "dir:$OUT/pulled" >/dev/null; secs "$t0" "$(now)"; rm -rf "$OUT/pulled"; }
# BENCH_ONLY="4 7": run only those sections (to work on one figure); default: all
want() { [[ -z ${BENCH_ONLY:-} || " $BENCH_ONLY " == *" $1 "* ]]; }
RESULTS=()
row() { RESULTS+=("$(printf '%-58s %14s %14s %8s  %s' "$@")"); }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.2f", (b>0)?a/b:0}'; }
mb() { awk -v v="$1" 'BEGIN{printf "%.0f MB/s", v/1e6}'; }

# ---------------------------------------------------------------- 1: warm 256 MiB
if want 1; then
fresh_wharf
curl -s -o /dev/null "http://$WHARF/v2/bench/big/blobs/$BIG"
for _ in $(seq 100); do [[ -e $W/wharf/blobs/sha256/${BIG#sha256:} ]] && break; sleep 0.1; done
curl -s -o /dev/null "http://$WHARF/v2/bench/big/blobs/$BIG"  # page cache warm
log "1: warm 256 MiB blob"
w1=$(best_of_3 "http://$WHARF/v2/bench/big/blobs/$BIG"); n1=$(best_of_3 "http://$NGINX/v2/bench/big/blobs/$BIG")
row "1 warm 256 MiB blob, 1 stream (wharf | nginx)" "$(mb "$w1")" "$(mb "$n1")" "$(ratio "$w1" "$n1")" "target >= 1.0"
w4=$(streams4 "http://$WHARF/v2/bench/big/blobs/$BIG" $((256 << 20))); n4=$(streams4 "http://$NGINX/v2/bench/big/blobs/$BIG" $((256 << 20)))
row "1 warm 256 MiB blob, 4 streams (wharf | nginx)" "$(mb "$w4")" "$(mb "$n4")" "$(ratio "$w4" "$n4")" "target >= 1.0"
fi

# ---------------------------------------------------------------- 2: small objects
if want 2; then
log "2: small objects, 64 connections"
fresh_wharf
curl -s -o /dev/null "http://$WHARF/v2/bench/small/manifests/$SMALL_M"
curl -s -o /dev/null "http://$WHARF/v2/bench/small/blobs/$SMALL"; sleep 0.5
curl -s -o /dev/null "http://$WHARF/v2/bench/small/blobs/$SMALL"
best_wrk() { # NAME URL: the best of the runs so far for NAME (req/s, and that run's p50, p99)
  local r p50 p99
  read -r r p50 p99 < <(wrk_run "$2")
  if awk -v a="$r" -v b="${BEST[$1]:-0}" 'BEGIN{exit !(a>b)}'; then
    BEST[$1]=$r; BEST_LAT[$1]="$p50 $p99"
  fi
}
declare -A BEST BEST_LAT
for what in manifests/$SMALL_M blobs/$SMALL; do
  # three rounds, wharf and nginx in turn, best of each: the host's noise hits both alike
  BEST=(); BEST_LAT=()
  for _ in 1 2 3; do
    best_wrk wharf "http://$WHARF/v2/bench/small/$what"
    best_wrk nginx "http://$NGINX/v2/bench/small/$what"
  done
  wr=${BEST[wharf]} nr=${BEST[nginx]}
  read -r wp50 wp99 <<<"${BEST_LAT[wharf]}"; read -r np50 np99 <<<"${BEST_LAT[nginx]}"
  label=${what%%/*}; label=${label/manifests/manifest by digest}; label=${label/blobs/1 KiB blob}
  row "2 warm $label, 64 conns, req/s (wharf | nginx)" "$(printf '%.0f' "$wr")" "$(printf '%.0f' "$nr")" "$(ratio "$wr" "$nr")" "target >= 1.0"
  row "2 warm $label, p50 | p99 ms (wharf)" "$wp50" "$wp99" "" "target p99 <= 2 ms"
  row "2 warm $label, p50 | p99 ms (nginx)" "$np50" "$np99" "" ""
done

# the access log is on by default: what it costs, manifest by digest, best of three each
log "2: the access log's cost"
for _ in 1 2 3; do
  for logging in info warn; do
    WHARF_LOG=$logging fresh_wharf
    curl -s -o /dev/null "http://$WHARF/v2/bench/small/manifests/$SMALL_M"
    best_wrk "log-$logging" "http://$WHARF/v2/bench/small/manifests/$SMALL_M"
  done
done
on=${BEST[log-info]} off=${BEST[log-warn]}
row "2 warm manifest by digest, req/s (access log on | off)" "$(printf '%.0f' "$on")" "$(printf '%.0f' "$off")" "$(ratio "$on" "$off")" "target >= 0.95"
fi

# ---------------------------------------------------------------- 3: cold 256 MiB
if want 3; then
log "3: cold 256 MiB blob"
direct=$(best_of_3 "http://$UP/v2/bench/big/blobs/$BIG")
cold=0
for _ in 1 2 3; do # best of three, each from an empty cache
  fresh_wharf
  s=$(speed "http://$WHARF/v2/bench/big/blobs/$BIG"); cold=$(max "$cold" "$s")
done
row "3 cold 256 MiB blob (wharf | upstream direct)" "$(mb "$cold")" "$(mb "$direct")" "$(ratio "$cold" "$direct")" "target >= 0.9"
fi

# ---------------------------------------------------------------- 4: cold multi-layer pull
if want 4; then
log "4: cold pull of bench/layers:1 with skopeo, upstream behind a 50 MB/s link"
fresh_wharf "$LINK"; tw=$(pull "$WHARF")
fresh_dist "$LINK"; td=$(pull "$DIST")
row "4 cold pull, 8 x 16 MiB layers, 50 MB/s link, s (wharf | dist)" "$tw" "$td" "$(ratio "$td" "$tw")" "target >= 2 (distribution / wharf)"
fi

# ---------------------------------------------------------------- 5: 50 concurrent cold GETs
if want 5; then
log "5: 50 concurrent cold GETs of one 64 MiB blob"
fresh_wharf "$LINK"
t0=$(now); speed "http://$WHARF/v2/bench/mid/blobs/$MID" >/dev/null; one=$(secs "$t0" "$(now)")
fresh_wharf "$LINK"
before=$(upstream_gets "$MID"); t0=$(now)
parallel 50 "http://$WHARF/v2/bench/mid/blobs/$MID"
fifty=$(secs "$t0" "$(now)"); wharf_fetches=$(($(upstream_gets "$MID") - before))
fresh_dist
before=$(upstream_gets "$MID")
parallel 50 "http://$DIST/v2/bench/mid/blobs/$MID"
dist_fetches=$(($(upstream_gets "$MID") - before))
row "5 50 cold GETs: upstream fetches (wharf | distribution)" "$wharf_fetches" "$dist_fetches" "" "target: wharf exactly 1"
row "5 50 cold GETs, 50 MB/s link: total | one GET, s (wharf)" "$fifty" "$one" "$(ratio "$fifty" "$one")" "target <= 1.5"
fi

# ---------------------------------------------------------------- 6: memory
if want 6; then
log "6: memory under 64 concurrent 64 MiB pulls"
fresh_wharf
curl -s -o /dev/null "http://$WHARF/v2/bench/mid/blobs/$MID"; sleep 0.5  # cached, and idle
pid=$(wharf_pid); idle=$(rss_anon "$pid"); peak=$idle
parallel 64 "http://$WHARF/v2/bench/mid/blobs/$MID" &
pulls=$!
while kill -0 "$pulls" 2>/dev/null; do
  r=$(rss_anon "$pid"); ((r > peak)) && peak=$r; sleep 0.02
done
row "6 wharf anonymous RSS, MiB (idle after start | peak, 64 x 64 MiB)" "$((idle / 1024))" "$((peak / 1024))" "" "target peak <= 64 MiB"
fi

# ---------------------------------------------------------------- 7: a cluster on one bucket
if want 7; then
log "7: three wharfs and three distribution proxies on SeaweedFS, 30 cold pulls of bench/layers:1"
WEED=${WEED:-$HOME/.cache/wharf-test/seaweedfs/bin/weed}
[[ -x $WEED ]] || "$ROOT/tests/install-deps.sh"
S3=127.0.0.1:18020
printf '{"identities":[{"name":"bench","credentials":[{"accessKey":"bench-key","secretKey":"bench-secret"}],"actions":["Admin","Read","Write","List","Tagging"]}]}\n' >"$W/s3.json"
mkdir -p "$W/weed"
start weed "$WEED" mini -dir="$W/weed" -ip=127.0.0.1 -ip.bind=127.0.0.1 -s3.port=18020 -s3.port.grpc=18030 \
  -master.port=18021 -master.port.grpc=18031 -volume.port=18022 -volume.port.grpc=18032 -filer.port=18023 \
  -filer.port.grpc=18033 -admin.port=18024 -admin.port.grpc=18034 -s3.port.iceberg=0 -s3.port.lance=0 \
  -webdav=false -master.telemetry=false -s3.config="$W/s3.json" -bucket=wharf,dist
for _ in $(seq 300); do curl -s -H 'Accept: application/json' "http://127.0.0.1:18023/buckets/" | grep -q '"/buckets/dist"' && break; sleep 0.1; done
head -c 32 /dev/urandom | base64 >"$W/cluster-secret"
wharf_cluster() { # PREFIX: three fresh wharfs (empty disks) on the bucket's PREFIX, all live
  local i
  for i in 1 2 3; do
    stop "wc$i"; rm -rf "$W/wc$i"
    cat >"$W/wc$i.toml" <<TOML
[upstreams."docker.io"]
url = "http://$LINK"
[store]
url = "s3://wharf/$1"
[store.options]
aws_endpoint = "http://$S3"
aws_allow_http = "true"
aws_region = "us-east-1"
aws_access_key_id = "bench-key"
aws_secret_access_key = "bench-secret"
[cluster]
listen = "127.0.0.1:1811$i"
members = ["127.0.0.1:18111", "127.0.0.1:18112", "127.0.0.1:18113"]
secret_file = "$W/cluster-secret"
health_interval = "500ms"
TOML
    start "wc$i" env WHARF_LOG="${WHARF_LOG:-warn}" "$BIN" serve --listen "127.0.0.1:1810$i" --admin "127.0.0.1:1812$i" --data "$W/wc$i" --config "$W/wc$i.toml"
  done
  for i in 1 2 3; do
    wait_http "http://127.0.0.1:1810$i/v2/"
    for _ in $(seq 100); do curl -s "http://127.0.0.1:1812$i/metrics" | grep -q '^wharf_cluster_members_live 3$' && break; sleep 0.1; done
  done
}
wharf_cluster bench
for i in 1 2 3; do
  cat >"$W/dc$i.yml" <<YML
version: 0.1
log: {level: warn, formatter: text, accesslog: {disabled: true}}
storage:
  s3: {accesskey: bench-key, secretkey: bench-secret, region: us-east-1, regionendpoint: "http://$S3", bucket: dist, secure: false, v4auth: true, rootdirectory: /bench}
  delete: {enabled: true}
  redirect: {disable: true}
http: {addr: "127.0.0.1:1815$i"}
proxy: {remoteurl: "http://$LINK"}
YML
  # (the AWS SDK in distribution refuses an AWS_CA_BUNDLE with a custom transport)
  start "dc$i" env -u AWS_CA_BUNDLE /usr/bin/docker-registry serve "$W/dc$i.yml"
done
for i in 1 2 3; do wait_http "http://127.0.0.1:1815$i/v2/"; done
# the image's config and layers and their sizes (the config is a few hundred bytes: upstream
# bytes count the layers)
LAYER_BLOBS=$(q '" ".join(c["bench/layers"]["blobs"])')
CONFIG=$(curl -s -H 'Accept: application/vnd.oci.image.manifest.v1+json' "http://$UP/v2/bench/layers/manifests/1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["config"]["digest"])')
declare -A SIZE; for d in $CONFIG $LAYER_BLOBS; do SIZE[$d]=$(curl -sI "http://$UP/v2/bench/layers/blobs/$d" | awk 'tolower($1)=="content-length:" {print $2+0}'); done
image_bytes=0; for d in $LAYER_BLOBS; do image_bytes=$((image_bytes + ${SIZE[$d]})); done
upstream_bytes() { local n=0 d; for d in $LAYER_BLOBS; do n=$((n + $(upstream_gets "$d") * ${SIZE[$d]})); done; echo "$n"; }
pull30() { # PORT_PREFIX : 30 skopeo pulls, ten at each of the three instances; prints seconds
  local pids=() i t0 t1 failed=0 p; t0=$(now)
  for ((i = 0; i < 30; i++)); do
    skopeo copy -q --src-tls-verify=false "docker://127.0.0.1:$1$((i % 3 + 1))/bench/layers:1" "dir:$OUT/p30-$i" >"$W/p30-$i.log" 2>&1 & pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p" || failed=$((failed + 1)); done
  t1=$(now); rm -rf "$OUT"/p30-*
  # a pull that failed fast would make the figure look good: none may
  ((failed == 0)) || { log "$failed of 30 pulls through 127.0.0.1:${1}x failed:"; cat "$W"/p30-*.log >&2; exit 1; }
  secs "$t0" "$t1"
}
# A light client: one curl that GETs the manifest by tag, then the config and the layers, 8 at
# a time (as skopeo does), to /dev/null: no digest check, no disk; each answer must be a 200
# with the whole body. What the mirror costs 30 clients, with skopeo's own work left out.
light_pull() { # ADDR LOG: succeeds if the manifest and every blob came whole
  local urls=() d
  for d in $CONFIG $LAYER_BLOBS; do urls+=(-o /dev/null "http://$1/v2/bench/layers/blobs/$d"); done
  curl -s -o /dev/null -w '%{http_code} manifest\n' -H 'Accept: application/vnd.oci.image.manifest.v1+json' "http://$1/v2/bench/layers/manifests/1" >"$2" || return 1
  curl -s -Z --parallel-max 8 -w '%{http_code} %{size_download} %{url_effective}\n' "${urls[@]}" >>"$2" || return 1
  [[ $(head -1 "$2") == "200 manifest" ]] || return 1
  for d in $CONFIG $LAYER_BLOBS; do grep -q "^200 ${SIZE[$d]} .*/blobs/$d\$" "$2" || return 1; done
}
light30() { # PORT_PREFIX : 30 light pulls, ten at each instance; prints seconds
  local pids=() i t0 t1 failed=0 p; t0=$(now)
  for ((i = 0; i < 30; i++)); do light_pull "127.0.0.1:$1$((i % 3 + 1))" "$W/l30-$i.log" & pids+=($!); done
  for p in "${pids[@]}"; do wait "$p" || failed=$((failed + 1)); done
  t1=$(now)
  ((failed == 0)) || { log "$failed of 30 light pulls through 127.0.0.1:${1}x failed:"; cat "$W"/l30-*.log >&2; exit 1; }
  secs "$t0" "$t1"
}
before=$(upstream_bytes); tw30=$(pull30 1810); wharf_up=$(($(upstream_bytes) - before))
before=$(upstream_bytes); td30=$(pull30 1815); dist_up=$(($(upstream_bytes) - before))
twarm=$(pull30 1810) # the same again, warm: what 30 clients cost this machine at all
wharf_cluster bench-light # cold again, for light clients
before=$(upstream_bytes); tl30=$(light30 1810); light_up=$(($(upstream_bytes) - before))
tlwarm=$(light30 1810)
fresh_wharf "$LINK"; tone=$(pull "$WHARF")
fresh_wharf "$LINK"; t0=$(now); light_pull "$WHARF" "$W/l1.log" || { log "a light pull failed:"; cat "$W/l1.log" >&2; exit 1; }; tlone=$(secs "$t0" "$(now)")
row "7 cluster, 30 cold pulls: upstream bytes / image (wharf | dist)" "$(ratio "$wharf_up" "$image_bytes")" "$(ratio "$dist_up" "$image_bytes")" "" "target wharf 1.0"
row "7 cluster, 30 cold pulls: wall time, s (wharf | dist)" "$tw30" "$td30" "$(ratio "$td30" "$tw30")" ""
row "7 cluster, 30 pulls | one cold pull through one wharf, s" "$tw30" "$tone" "$(ratio "$tw30" "$tone")" "target <= 1.3"
row "7 cluster, 30 pulls cold | the same 30 warm, s (wharf)" "$tw30" "$twarm" "$(ratio "$tw30" "$twarm")" "(2 cores: the clients' own work)"
row "7 cluster, 30 light pulls: upstream bytes / image (wharf)" "$(ratio "$light_up" "$image_bytes")" "" "" "target 1.0"
row "7 cluster, 30 light pulls | one light cold pull, s" "$tl30" "$tlone" "$(ratio "$tl30" "$tlone")" "target <= 1.3"
row "7 cluster, 30 light pulls cold | the same 30 warm, s" "$tl30" "$tlwarm" "$(ratio "$tl30" "$tlwarm")" ""
for i in 1 2 3; do stop "wc$i"; stop "dc$i"; done
stop weed
fi

# ---------------------------------------------------------------- 8: a million objects
if want 8; then
log "8: restarting wharf on one million objects"
fresh_wharf; ok200 "http://$WHARF/v2/bench/small/blobs/$SMALL"; stop wharf
restart_wharf() { # sets SERVING: seconds from start to serving the blob; waits for the index
  local t0 n; t0=$(now); n=$(grep -c 'store indexed' "$W/wharf.log" || true)
  start wharf env WHARF_LOG=info "$BIN" serve --listen "$WHARF" --data "$W/wharf" --upstream "http://$UP" --config /dev/null
  until [[ $(curl -s -o /dev/null -w '%{http_code}' "http://$WHARF/v2/bench/small/blobs/$SMALL") == 200 ]]; do sleep 0.01; done
  SERVING=$(secs "$t0" "$(now)")
  for _ in $(seq 600); do (($(grep -c 'store indexed' "$W/wharf.log" || true) > n)) && break; sleep 0.1; done
  sleep 0.5
}
# (not in a subshell: `start` must record the pid here, for `stop`)
restart_wharf; base=$(rss_anon "$(wharf_pid)"); stop wharf
python3 - "$W/wharf/blobs/sha256" <<'PY'
import hashlib, os, sys
for i in range(1_000_000):
    os.close(os.open(os.path.join(sys.argv[1], hashlib.sha256(b"%d" % i).hexdigest()), os.O_CREAT | os.O_WRONLY, 0o644))
PY
sync
restart_wharf; serving=$SERVING; full=$(rss_anon "$(wharf_pid)"); stop wharf
indexed=$(grep 'store indexed' "$W/wharf.log" | tail -1 | grep -o 'objects, [0-9]* bytes, in [0-9.]*[a-z]*' | awk '{print $NF}')
per=$(awk -v a="$full" -v b="$base" 'BEGIN{printf "%.0f", (a-b)*1024/1e6}')
row "8 1M objects: start to serving a hit, s | index built in" "$serving" "$indexed" "" "target < 1 s"
row "8 1M objects: anonymous RSS, MiB (with | without them)" "$((full / 1024))" "$((base / 1024))" "" ""
row "8 1M objects: index memory, bytes / object" "$per" "" "" "target <= 100"
rm -rf "$W/wharf"
fi

echo
echo "# wharf $(git -C "$ROOT" describe --always --dirty 2>/dev/null) on $(nproc) cores, $(free -g | awk '/Mem/ {print $2}') GiB; $(date -u +%F)"
printf '%-58s %14s %14s %8s  %s\n' "figure" "wharf" "peer" "ratio" ""
for r in "${RESULTS[@]}"; do echo "$r"; done
