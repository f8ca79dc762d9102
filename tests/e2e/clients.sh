#!/usr/bin/env bash
# End-to-end: real clients pull through wharf from real registries, all on 127.0.0.1.
#
# Starts two CNCF distribution registries (Debian's docker-registry) with images built offline
# (tests/e2e/images.py): one stands for docker.io, the other for "registry.test". wharf mirrors
# both. Then skopeo, containerd's ctr (hosts.toml mirrors, which add ?ns=<registry>), dockerd
# (registry-mirrors; then `docker run`) and podman (registries.conf mirrors; registry.test's
# mirror location carries a path prefix) pull through it:
#   round 1  every client pulls; digests are checked (and --platform pulls of an index);
#   round 2  the same again: no blob and no manifest is fetched from an upstream;
#   tls      a second wharf serves TLS (a test CA made here) to who belongs: dockerd and
#            containerd with client certificates, skopeo, podman and containerd with Basic
#            credentials; anonymous and wrong ones are refused (tests/e2e/secure.sh);
#   round 3  both upstreams stopped, tags past their TTL: pulls still work (stale tags);
#   round 4  wharf restarted --offline: pulls still work; a tag never pulled fails;
#   round 5  air gap: a cache warmed and exported (`wharf warm`, `wharf export`) while the
#            upstreams were up is imported into an empty data dir and served --offline:
#            dockerd and containerd pull and run from it.
#   cluster  three wharfs on one SeaweedFS bucket, a client at each, pulling at once: one
#            upstream fetch per blob; then the container image serves a pull
#            (tests/e2e/cluster.sh).
# Also, while the upstreams are up: a second wharf on a 1.5 MiB tmpfs runs out of disk: a
# blob that cannot fit is refused (507) before any byte, nothing partial is stored, cached
# content is still served, and /readyz says why it fails, full or remounted read-only.
#
# Needs root and the packages tests/install-deps.sh installs. Everything it starts runs under
# a temp dir and is stopped on exit. Docker Hub's hostnames are pinned to a dead loopback
# address first, so a client falling back from a broken mirror fails here instead of going out.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
W=$(mktemp -d /tmp/wharf-e2e.XXXXXX)
UP=127.0.0.1:15000       # upstream registry standing for docker.io
UP2=127.0.0.1:15002      # upstream registry standing for registry.test
MIRROR=127.0.0.1:15001   # wharf
FAILS=0
PASSES=0
log() { printf '[e2e] %s\n' "$*" >&2; }
ok() { printf '[e2e] ok   %s\n' "$*" >&2; PASSES=$((PASSES + 1)); }
fail() { printf '[e2e] FAIL %s\n' "$*" >&2; FAILS=$((FAILS + 1)); }

if ! grep -q 'wharf-e2e: docker hub pinned' /etc/hosts; then
  printf '127.0.0.9 registry-1.docker.io auth.docker.io index.docker.io production.cloudflare.docker.com # wharf-e2e: docker hub pinned to a dead loopback address\n' >>/etc/hosts
fi

PIDS=()
start() { # NAME CMD... : background daemon, logs to $W/NAME.log
  local name=$1; shift
  setsid "$@" >>"$W/$name.log" 2>&1 </dev/null &
  PIDS+=($!)
  echo $! >"$W/$name.pid"
}
stop() { # NAME : stop a daemon started with start
  local pid; pid=$(cat "$W/$1.pid")
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.2; done
  kill -KILL "$pid" 2>/dev/null || true
}
wait_for() { # DESCRIPTION CMD... : retry CMD for up to 30 s
  local what=$1; shift
  for _ in $(seq 150); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  log "timed out waiting for $what"; return 1
}
export DOCKER_HOST=unix://$W/docker/docker.sock
CTR=(ctr --address "$W/containerd/containerd.sock")
cleanup() {
  set +e
  if [[ -S $W/docker/docker.sock ]]; then docker ps -aq | xargs -r docker rm -f >/dev/null 2>&1; fi
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
  for _ in $(seq 50); do
    alive=0; for p in "${PIDS[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    ((alive)) || break; sleep 0.2
  done
  for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null; done
  pkill -f "containerd-shim.*$W" 2>/dev/null
  rm -rf '/etc/docker/certs.d/[::1]:15443'
  if [[ -n ${KEEP_E2E:-} ]]; then log "kept $W"; return; fi
  grep -o "$W[^ ]*" /proc/mounts 2>/dev/null | sort -r | xargs -r -n1 umount -l 2>/dev/null
  rm -rf "$W" 2>/dev/null
}
trap cleanup EXIT

# ---------------------------------------------------------------- upstream + images + wharf
registry() { # NAME ADDR
  mkdir -p "$W/$1"
  cat >"$W/$1/config.yml" <<YML
version: 0.1
log: {level: info, formatter: text, accesslog: {disabled: false}}
storage: {filesystem: {rootdirectory: $W/$1/data}, delete: {enabled: true}}
http: {addr: "$2"}
YML
  start "$1" /usr/bin/docker-registry serve "$W/$1/config.yml"
  wait_for "registry $1" curl -sf "http://$2/v2/"
}
registry registry "$UP"
registry registry2 "$UP2"
python3 "$ROOT/tests/e2e/images.py" "$UP" >"$W/images.json"
python3 "$ROOT/tests/e2e/images.py" "$UP2" >/dev/null
# a tag only registry.test has: pulling it proves the request went there
D_MANIFEST=application/vnd.docker.distribution.manifest.v2+json
curl -sf -H "Accept: $D_MANIFEST" "http://$UP2/v2/library/busybox/manifests/latest" -o "$W/bb.json"
curl -sf -X PUT -H "Content-Type: $D_MANIFEST" --data-binary @"$W/bb.json" "http://$UP2/v2/library/busybox/manifests/only-here"
digest_of() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$W/images.json" "$1"; }
BUSYBOX=$(digest_of library/busybox:latest)
MULTI=$(digest_of library/multi:1)
LAYERS=$(digest_of library/layers:1)
log "images pushed: busybox $BUSYBOX, multi $MULTI, layers $LAYERS"

(cd "$ROOT" && cargo build --quiet)
cat >"$W/wharf.toml" <<TOML
tag_ttl = "2s"
[upstreams."docker.io"]
url = "http://$UP"
[upstreams."registry.test"]
url = "http://$UP2"
TOML
start_wharf() { # [--offline]
  start wharf env WHARF_LOG=info "$ROOT/target/debug/wharf" serve --listen "$MIRROR" --data "$W/wharf-data" --config "$W/wharf.toml" "$@"
  wait_for wharf curl -sf "http://$MIRROR/v2/"
}
start_wharf

# upstream requests so far, from both registries' access logs
upstream_blob_gets() { cat "$W/registry.log" "$W/registry2.log" | grep -cE '"GET /v2/[^ ]+/blobs/sha256:[0-9a-f]{64} ' || true; }
upstream_manifest_gets() { cat "$W/registry.log" "$W/registry2.log" | grep -cE '"GET /v2/[^ ]+/manifests/' || true; }

# ---------------------------------------------------------------- clients
skopeo_pull() {
  rm -rf "$W/skopeo"
  skopeo copy --quiet --src-tls-verify=false "docker://$MIRROR/library/layers:1" "oci:$W/skopeo:x" &&
    local got && got=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["manifests"][0]["digest"])' "$W/skopeo/index.json") &&
    [[ $got == "$LAYERS" ]] || { log "skopeo got ${got:-nothing}, want $LAYERS"; return 1; }
}

containerd_setup() {
  local d=$W/containerd r
  for r in docker.io registry.test; do
    mkdir -p "$d/certs.d/$r"
    cat >"$d/certs.d/$r/hosts.toml" <<TOML
server = "http://127.0.0.1:9"
[host."http://$MIRROR"]
  capabilities = ["pull", "resolve"]
TOML
  done
  cat >"$d/config.toml" <<TOML
version = 2
root = "$d/root"
state = "$d/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$d/containerd.sock"
[ttrpc]
  address = "$d/containerd.sock.ttrpc"
TOML
  start containerd /usr/bin/containerd --config "$d/config.toml"
  wait_for containerd "${CTR[@]}" version
}
containerd_pull() { # REF DIGEST [ctr pull flags...]  (REF with its registry: docker.io/library/x:1)
  local ref=$1 want=$2; shift 2
  "${CTR[@]}" images rm --sync "$ref" >/dev/null 2>&1 || true
  "${CTR[@]}" images pull --hosts-dir "${CTR_HOSTS:-$W/containerd/certs.d}" "$@" "$ref" >"$W/ctr-pull.out" 2>&1 || { tail -5 "$W/ctr-pull.out" >&2; return 1; }
  "${CTR[@]}" images ls 2>/dev/null | grep -F "$ref " | grep -qF "$want" || { log "ctr: $ref is not $want"; "${CTR[@]}" images ls >&2; return 1; }
}

dockerd_setup() {
  local d=$W/docker
  mkdir -p "$d"
  cat >"$d/daemon.json" <<JSON
{
  "registry-mirrors": ["http://$MIRROR"],
  "data-root": "$d/root", "exec-root": "$d/exec", "pidfile": "$d/dockerd.pid",
  "hosts": ["unix://$d/docker.sock"],
  "iptables": false, "ip-forward": false, "ip-masq": false, "bridge": "none",
  "storage-driver": "overlay2", "shutdown-timeout": 3
}
JSON
  start dockerd /usr/sbin/dockerd --config-file "$d/daemon.json"
  wait_for dockerd docker version
}
docker_pull_run() { # IMAGE DIGEST
  docker rmi -f "$1" >/dev/null 2>&1 || true
  docker pull -q "$1" >/dev/null || return 1
  local got; got=$(docker image inspect --format '{{join .RepoDigests " "}}' "$1")
  [[ $got == *"@$2"* ]] || { log "docker: $1 has $got, want $2"; return 1; }
  [[ $(docker run --rm --network none "$1" echo ok) == ok ]]
}

podman_setup() {
  local d=$W/podman
  mkdir -p "$d"
  cat >"$d/registries.conf" <<TOML
[[registry]]
prefix = "docker.io"
location = "127.0.0.1:9"
insecure = true
[[registry.mirror]]
location = "$MIRROR"
insecure = true

[[registry]]
prefix = "registry.test"
location = "127.0.0.1:9"
insecure = true
[[registry.mirror]]
location = "$MIRROR/registry.test"
insecure = true
TOML
  printf '[storage]\ndriver = "overlay"\ngraphroot = "%s/root"\nrunroot = "%s/run"\n' "$d" "$d" >"$d/storage.conf"
  cat >"$d/containers.conf" <<TOML
[containers]
netns = "none"
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "$d/events.log"
tmp_dir = "$d/tmp"
TOML
  export CONTAINERS_REGISTRIES_CONF=$d/registries.conf CONTAINERS_STORAGE_CONF=$d/storage.conf CONTAINERS_CONF=$d/containers.conf
}
podman_pull() { # REF DIGEST [podman pull flags...]  (REF with its registry)
  local ref=$1 want=$2; shift 2
  podman rmi -f "$ref" >/dev/null 2>&1 || true
  podman pull -q "$@" "$ref" >"$W/podman-pull.out" 2>&1 || { tail -5 "$W/podman-pull.out" >&2; return 1; }
  local got; got=$(podman image inspect --format '{{.Digest}}' "$ref")
  [[ $got == "$want" ]] || { log "podman: $ref has $got, want $want"; return 1; }
}

containerd_setup
dockerd_setup
podman_setup

check() { # DESCRIPTION CMD... : one client check
  local what=$1; shift
  if "$@"; then ok "round $ROUND: $what"; else fail "round $ROUND: $what"; fi
}

round() { # what every client pulls in every round
  check "skopeo pulled library/layers:1" skopeo_pull
  check "ctr pulled busybox" containerd_pull docker.io/library/busybox:latest "$BUSYBOX"
  check "ctr pulled the multi-arch index" containerd_pull docker.io/library/multi:1 "$MULTI"
  check "ctr pulled registry.test's own tag (?ns=registry.test)" containerd_pull registry.test/library/busybox:only-here "$BUSYBOX"
  check "dockerd pulled busybox and ran it" docker_pull_run busybox "$BUSYBOX"
  check "dockerd pulled the multi-arch index and ran it" docker_pull_run multi:1 "$MULTI"
  check "podman pulled busybox" podman_pull docker.io/library/busybox:latest "$BUSYBOX"
  check "podman pulled library/layers:1" podman_pull docker.io/library/layers:1 "$LAYERS"
  check "podman pulled registry.test's own tag (path prefix)" podman_pull registry.test/library/busybox:only-here "$BUSYBOX"
}

ROUND=1
round
check "ctr pulled linux/arm64 from the index" containerd_pull docker.io/library/multi:1 "$MULTI" --platform linux/arm64
check "dockerd pulled --platform linux/arm64" bash -c 'docker pull -q --platform linux/arm64 multi:1 >/dev/null' 
docker rmi -f multi:1 >/dev/null 2>&1 || true
blobs1=$(upstream_blob_gets); manifests1=$(upstream_manifest_gets)
log "after round 1 the upstreams served $blobs1 blob GETs and $manifests1 manifest GETs"

ROUND=2
round
blobs2=$(upstream_blob_gets); manifests2=$(upstream_manifest_gets)
check "fetched no blob from the upstreams" test "$blobs2" -eq "$blobs1"
check "fetched no manifest from the upstreams" test "$manifests2" -eq "$manifests1"

# ---------------------------------------------------------------- TLS, and who is asking
# shellcheck source=tests/e2e/secure.sh
source "$ROOT/tests/e2e/secure.sh"

# ---------------------------------------------------------------- a cluster on a bucket, the image
# shellcheck source=tests/e2e/cluster.sh
source "$ROOT/tests/e2e/cluster.sh"

# ---------------------------------------------------------------- air gap, part 1: warm + export
WHARF=("$ROOT/target/debug/wharf")
ROUND=warm
check "wharf warm filled a fresh data dir" "${WHARF[@]}" warm --config "$W/wharf.toml" --data "$W/warmed" \
  busybox multi:1 registry.test/library/busybox:only-here
check "wharf export wrote the cache as an OCI layout tar" "${WHARF[@]}" export --config "$W/wharf.toml" --data "$W/warmed" --out "$W/cache.tar"

# ---------------------------------------------------------------- full disk, read-only disk
ROUND=full-disk
mkdir -p "$W/small"
mount -t tmpfs -o size=1536k tmpfs "$W/small"
SMALL=127.0.0.1:15003 SMALL_ADMIN=127.0.0.1:15004
{ echo "min_free_space = 0"; cat "$W/wharf.toml"; } >"$W/wharf-small.toml"
start wharf-small env WHARF_LOG=info "$ROOT/target/debug/wharf" serve --listen "$SMALL" --admin "$SMALL_ADMIN" --data "$W/small/data" --config "$W/wharf-small.toml"
wait_for wharf-small curl -sf "http://$SMALL/v2/"
copy() { rm -rf "$W/sk-$2"; skopeo copy --quiet --src-tls-verify=false "docker://$SMALL/$1" "oci:$W/sk-$2:x" >/dev/null 2>&1; }
check "a small image fits and is served" copy library/layers:1 small
check "readyz: ready" curl -sf "http://$SMALL_ADMIN/readyz"
fill_up() { head -c 700k /dev/urandom >"$W/small/filler"; } # leave less room than busybox's layer
fill_up
copy_fails() { ! copy "$@"; }
check "a pull that cannot fit fails" copy_fails library/busybox:latest big
BB_LAYER=$(python3 -c 'import json,sys; m=json.load(open(sys.argv[1])); print(m["layers"][0]["digest"][7:])' "$W/bb.json")
# the manifest said how big the layer is: refused before any header, with the reason
no_room() {
  local code; code=$(curl -s -o "$W/no-room.json" -w '%{http_code}' "http://$SMALL/v2/library/busybox/blobs/sha256:$BB_LAYER")
  [[ $code == 507 ]] && grep -q '"code":"UNAVAILABLE"' "$W/no-room.json" && grep -q 'no room' "$W/no-room.json"
}
check "a blob that cannot fit gets 507 before any byte" no_room
check "nothing partial was stored" test ! -e "$W/small/data/blobs/sha256/$BB_LAYER"
check "no temp file was left" test -z "$(ls -A "$W/small/data/tmp")"
check "cached content is still served" copy library/layers:1 small-again
check "wharf is still up" curl -sfo /dev/null "http://$SMALL/v2/"
head -c 2M /dev/zero >"$W/small/filler2" 2>/dev/null || true # now completely full
not_ready() { # REASON: /readyz answers 503 saying REASON
  local code; code=$(curl -s -o "$W/readyz.txt" -w '%{http_code}' "http://$SMALL_ADMIN/readyz")
  [[ $code == 503 ]] && grep -qi "$1" "$W/readyz.txt"
}
check "readyz fails on a full disk, saying why" not_ready "no space left"
rm -f "$W/small/filler2"
check "readyz: ready again" curl -sf "http://$SMALL_ADMIN/readyz"
mount -o remount,ro "$W/small"
check "readyz fails on a read-only disk, saying why" not_ready "read-only"
check "cached content is served from a read-only disk" copy library/layers:1 small-ro
mount -o remount,rw "$W/small"
stop wharf-small
umount -l "$W/small"

ROUND=3
stop registry
stop registry2
sleep 2.5 # past the tag TTL: every tag needs revalidation, and no upstream answers
round
check "wharf served tags stale" grep -q 'outcome="stale"' "$W/wharf.log"

ROUND=4
stop wharf
start_wharf --offline
round
check "a tag never pulled is not found offline" bash -c '! podman pull -q docker.io/library/busybox:never-pulled >/dev/null 2>&1'

# ---------------------------------------------------------------- air gap, part 2: import + offline
ROUND=5
stop wharf
check "wharf import loaded the tar into an empty data dir" "${WHARF[@]}" import --data "$W/imported" "$W/cache.tar"
start wharf env WHARF_LOG=info "$ROOT/target/debug/wharf" serve --listen "$MIRROR" --data "$W/imported" --config "$W/wharf.toml" --offline
wait_for wharf curl -sf "http://$MIRROR/v2/"
check "ctr pulled busybox from the imported cache" containerd_pull docker.io/library/busybox:latest "$BUSYBOX"
check "ctr pulled the multi-arch index from the imported cache" containerd_pull docker.io/library/multi:1 "$MULTI"
check "ctr pulled registry.test's tag from the imported cache" containerd_pull registry.test/library/busybox:only-here "$BUSYBOX"
check "ctr ran busybox" bash -c "[[ \$(${CTR[*]} run --rm docker.io/library/busybox:latest e2e-ctr echo ok) == ok ]]"
check "dockerd pulled and ran busybox from the imported cache" docker_pull_run busybox "$BUSYBOX"
check "dockerd pulled and ran the multi-arch index from the imported cache" docker_pull_run multi:1 "$MULTI"

hits=$(grep -c 'outcome="hit-' "$W/wharf.log" || true); misses=$(grep -c 'outcome="miss"' "$W/wharf.log" || true)
log "wharf access log: $hits hits, $misses misses"
if ((FAILS)); then
  log "wharf log tail:"; tail -20 "$W/wharf.log" >&2
  echo "e2e: $PASSES passed, $FAILS failed"
  exit 1
fi
echo "e2e: $PASSES passed, 0 failed"
