#!/usr/bin/env bash
# End-to-end: real clients pull through wharf from a real registry, all on 127.0.0.1.
#
# Starts CNCF distribution (Debian's docker-registry) as the upstream with images built offline
# (tests/e2e/images.py), wharf in front of it, then pulls with skopeo, containerd's ctr
# (hosts.toml mirror, which adds ?ns=docker.io), dockerd (registry-mirrors; then `docker run`)
# and podman (registries.conf mirror). Asserts the digests every client got, and that pulling
# everything a second time fetches no blob from the upstream.
#
# Needs root and the packages tests/install-deps.sh installs. Everything it starts runs under
# a temp dir and is stopped on exit. Docker Hub's hostnames are pinned to a dead loopback
# address first, so a client falling back from a broken mirror fails here instead of going out.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
W=$(mktemp -d /tmp/wharf-e2e.XXXXXX)
UP=127.0.0.1:15000       # upstream registry
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
  setsid "$@" >"$W/$name.log" 2>&1 </dev/null &
  PIDS+=($!)
  echo $! >"$W/$name.pid"
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
  if [[ -n ${KEEP_E2E:-} ]]; then log "kept $W"; return; fi
  grep -o "$W[^ ]*" /proc/mounts 2>/dev/null | sort -r | xargs -r -n1 umount -l 2>/dev/null
  rm -rf "$W" 2>/dev/null
}
trap cleanup EXIT

# ---------------------------------------------------------------- upstream + images + wharf
mkdir -p "$W/registry"
cat >"$W/registry/config.yml" <<YML
version: 0.1
log: {level: info, formatter: text, accesslog: {disabled: false}}
storage: {filesystem: {rootdirectory: $W/registry/data}, delete: {enabled: true}}
http: {addr: "$UP"}
YML
start registry /usr/bin/docker-registry serve "$W/registry/config.yml"
wait_for "the upstream registry" curl -sf "http://$UP/v2/"
python3 "$ROOT/tests/e2e/images.py" "$UP" >"$W/images.json"
digest_of() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$W/images.json" "$1"; }
BUSYBOX=$(digest_of library/busybox:latest)
MULTI=$(digest_of library/multi:1)
LAYERS=$(digest_of library/layers:1)
log "images pushed: busybox $BUSYBOX, multi $MULTI, layers $LAYERS"

(cd "$ROOT" && cargo build --quiet)
start wharf env WHARF_LOG=info "$ROOT/target/debug/wharf" serve --listen "$MIRROR" --data "$W/wharf-data" --upstream "http://$UP"
wait_for wharf curl -sf "http://$MIRROR/v2/"

# upstream requests so far, from distribution's access log
upstream_blob_gets() { grep -cE '"GET /v2/[^ ]+/blobs/sha256:[0-9a-f]{64} ' "$W/registry.log" || true; }
upstream_manifest_gets() { grep -cE '"GET /v2/[^ ]+/manifests/' "$W/registry.log" || true; }

# ---------------------------------------------------------------- clients
skopeo_pull() {
  rm -rf "$W/skopeo"
  skopeo copy --quiet --src-tls-verify=false "docker://$MIRROR/library/layers:1" "oci:$W/skopeo:x" &&
    local got && got=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["manifests"][0]["digest"])' "$W/skopeo/index.json") &&
    [[ $got == "$LAYERS" ]] || { log "skopeo got ${got:-nothing}, want $LAYERS"; return 1; }
}

containerd_setup() {
  local d=$W/containerd
  mkdir -p "$d/certs.d/docker.io"
  cat >"$d/certs.d/docker.io/hosts.toml" <<TOML
server = "http://127.0.0.1:9"
[host."http://$MIRROR"]
  capabilities = ["pull", "resolve"]
TOML
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
containerd_pull() { # IMAGE DIGEST
  "${CTR[@]}" images rm --sync "docker.io/$1" >/dev/null 2>&1 || true
  "${CTR[@]}" images pull --hosts-dir "$W/containerd/certs.d" "docker.io/$1" >"$W/ctr-pull.out" 2>&1 || { tail -5 "$W/ctr-pull.out" >&2; return 1; }
  "${CTR[@]}" images ls | grep -F "docker.io/$1 " | grep -qF "$2" || { log "ctr: $1 is not $2"; "${CTR[@]}" images ls >&2; return 1; }
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
podman_pull() { # IMAGE DIGEST
  podman rmi -f "docker.io/$1" >/dev/null 2>&1 || true
  podman pull -q "docker.io/$1" >"$W/podman-pull.out" 2>&1 || { tail -5 "$W/podman-pull.out" >&2; return 1; }
  local got; got=$(podman image inspect --format '{{.Digest}}' "docker.io/$1")
  [[ $got == "$2" ]] || { log "podman: $1 has $got, want $2"; return 1; }
}

containerd_setup
dockerd_setup
podman_setup

round() { # N
  skopeo_pull && ok "round $1: skopeo pulled library/layers:1" || fail "round $1: skopeo"
  containerd_pull library/busybox:latest "$BUSYBOX" && ok "round $1: ctr pulled busybox" || fail "round $1: ctr busybox"
  containerd_pull library/multi:1 "$MULTI" && ok "round $1: ctr pulled the multi-arch index" || fail "round $1: ctr multi"
  docker_pull_run busybox "$BUSYBOX" && ok "round $1: dockerd pulled busybox and ran it" || fail "round $1: docker busybox"
  docker_pull_run multi:1 "$MULTI" && ok "round $1: dockerd pulled the multi-arch index and ran it" || fail "round $1: docker multi"
  podman_pull library/busybox:latest "$BUSYBOX" && ok "round $1: podman pulled busybox" || fail "round $1: podman busybox"
  podman_pull library/layers:1 "$LAYERS" && ok "round $1: podman pulled library/layers:1" || fail "round $1: podman layers"
}

round 1
blobs1=$(upstream_blob_gets); manifests1=$(upstream_manifest_gets)
log "after round 1 the upstream served $blobs1 blob GETs and $manifests1 manifest GETs"
round 2
blobs2=$(upstream_blob_gets); manifests2=$(upstream_manifest_gets)
if ((blobs2 == blobs1)); then ok "round 2 fetched no blob from the upstream"; else fail "round 2 fetched $((blobs2 - blobs1)) blobs from the upstream"; fi
if ((manifests2 == manifests1)); then ok "round 2 fetched no manifest from the upstream"; else fail "round 2 fetched $((manifests2 - manifests1)) manifests from the upstream"; fi

hits=$(grep -c 'hit-' "$W/wharf.log" || true); misses=$(grep -c ' miss ' "$W/wharf.log" || true)
log "wharf access log: $hits hits, $misses misses"
if ((FAILS)); then
  log "wharf log tail:"; tail -20 "$W/wharf.log" >&2
  echo "e2e: $PASSES passed, $FAILS failed"
  exit 1
fi
echo "e2e: $PASSES passed, 0 failed"
