# End-to-end, sourced by clients.sh while the clients are set up: three wharfs on one bucket
# (a real S3 server, SeaweedFS, on 127.0.0.1, checking credentials) in front of a fresh
# upstream. dockerd, containerd and podman, each pointed at a different member, pull the same
# images at the same time: the upstream serves each blob once for the whole cluster, and the
# bucket holds every blob whole, under its own digest. Then the container image conf/image.sh
# builds (from the debug binary here) serves a pull, run by dockerd.
C=$W/cluster
mkdir -p "$C"
ROUND=cluster
UP3=127.0.0.1:15010
registry registry3 "$UP3"
python3 "$ROOT/tests/e2e/images.py" "$UP3" >/dev/null

# ------------------------------------------------------------ the bucket
S3=127.0.0.1:15020 FILER=127.0.0.1:15023
S3_KEY=e2e-cluster-key S3_SECRET=e2e-cluster-secret
printf '{"identities":[{"name":"wharf","credentials":[{"accessKey":"%s","secretKey":"%s"}],"actions":["Admin","Read","Write","List","Tagging"]}]}\n' \
  "$S3_KEY" "$S3_SECRET" >"$C/s3.json"
mkdir -p "$C/weed"
start weed "$HOME/.cache/wharf-test/seaweedfs/bin/weed" mini -dir="$C/weed" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
  -s3.port=15020 -s3.port.grpc=15030 -master.port=15021 -master.port.grpc=15031 \
  -volume.port=15022 -volume.port.grpc=15032 -filer.port=15023 -filer.port.grpc=15033 \
  -admin.port=15024 -admin.port.grpc=15034 -s3.port.iceberg=0 -s3.port.lance=0 -webdav=false \
  -master.telemetry=false \
  -s3.config="$C/s3.json" -bucket=wharf
filer_ls() { curl -sf -H 'Accept: application/json' "http://$FILER/buckets/$1?limit=10000"; }
bucket_made() { curl -s -o /dev/null "http://$S3/" && filer_ls '' | grep -q '"FullPath":"/buckets/wharf"'; }
wait_for "SeaweedFS and its bucket" bucket_made

# ------------------------------------------------------------ three members
head -c 32 /dev/urandom | base64 >"$C/secret"
MEMBERS='"127.0.0.1:15101", "127.0.0.1:15102", "127.0.0.1:15103"'
for i in 1 2 3; do
  cat >"$C/wharf-$i.toml" <<TOML
[upstreams."docker.io"]
url = "http://$UP3"
[store]
url = "s3://wharf/cache"
[store.options]
aws_endpoint = "http://$S3"
aws_allow_http = "true"
aws_region = "us-east-1"
aws_access_key_id = "$S3_KEY"
aws_secret_access_key = "$S3_SECRET"
[cluster]
listen = "127.0.0.1:1510$i"
members = [$MEMBERS]
secret_file = "$C/secret"
health_interval = "500ms"
TOML
  start "wharf-c$i" env WHARF_LOG=info "$ROOT/target/debug/wharf" serve --listen "127.0.0.1:1505$i" \
    --admin "127.0.0.1:1506$i" --data "$C/data-$i" --config "$C/wharf-$i.toml"
done
live() { curl -sf "http://127.0.0.1:1506$1/metrics" | grep -q '^wharf_cluster_members_live 3$'; }
for i in 1 2 3; do wait_for "member $i to see three live members" live "$i"; done

# ------------------------------------------------------------ one client per member, at once
mirrors "http://127.0.0.1:15051"
mkdir -p "$C/ctr/docker.io"
printf 'server = "http://127.0.0.1:9"\n[host."http://127.0.0.1:15052"]\n  capabilities = ["pull", "resolve"]\n' >"$C/ctr/docker.io/hosts.toml"
sed 's#^location = "127.0.0.1:15001"$#location = "127.0.0.1:15053"#' "$W/podman/registries.conf" >"$C/registries.conf"
docker_pull() { # IMAGE DIGEST : dockerd pulls IMAGE (not every test image can run)
  docker rmi -f "$1" >/dev/null 2>&1 || true
  docker pull -q "$1" >/dev/null || return 1
  local got; got=$(docker image inspect --format '{{join .RepoDigests " "}}' "$1")
  [[ $got == *"@$2"* ]] || { log "docker: $1 has $got, want $2"; return 1; }
}
all_at_once() { # REF DIGEST : dockerd, containerd and podman pull REF through the three members
  local ref=$1 want=$2 pids=() failed=0
  docker_pull "${ref#docker.io/library/}" "$want" >"$C/docker.out" 2>&1 & pids+=($!)
  CTR_HOSTS=$C/ctr containerd_pull "$ref" "$want" >"$C/ctr.out" 2>&1 & pids+=($!)
  CONTAINERS_REGISTRIES_CONF=$C/registries.conf podman_pull "$ref" "$want" >"$C/podman.out" 2>&1 & pids+=($!)
  for p in "${pids[@]}"; do wait "$p" || failed=1; done
  ((failed == 0)) || { tail -3 "$C"/{docker,ctr,podman}.out >&2; return 1; }
}
check "dockerd, containerd and podman pulled busybox at once through three members" \
  all_at_once docker.io/library/busybox:latest "$BUSYBOX"
check "and library/layers:1" all_at_once docker.io/library/layers:1 "$LAYERS"
mirrors "http://$MIRROR"
upstream_blobs() { grep -oE '"GET /v2/[^ ]+/blobs/sha256:[0-9a-f]{64}' "$W/registry3.log" | sed 's#.*/blobs/##'; }
once_each() {
  local n dup; n=$(upstream_blobs | wc -l); dup=$(upstream_blobs | sort | uniq -d)
  log "the upstream served $n blob GETs to the cluster${dup:+; more than once: $dup}"
  ((n > 0)) && [[ -z $dup ]]
}
check "the upstream served each blob once for the cluster" once_each
forwarded() { local sum=0 n; for i in 1 2 3; do
  n=$(curl -sf "http://127.0.0.1:1506$i/metrics" | awk '$1 == "wharf_peer_forwarded_total" {print $2}'); sum=$((sum + ${n:-0})); done
  log "members asked owners $sum times"; ((sum > 0)); }
check "members asked each other" forwarded
# every blob the upstream served is in the bucket, whole and under its own digest
in_bucket() {
  local d hex got
  for d in $(upstream_blobs | sort -u); do
    hex=${d#sha256:}
    got=$(curl -sf "http://$FILER/buckets/wharf/cache/blobs/sha256/$hex" | sha256sum | cut -d' ' -f1)
    [[ $got == "$hex" ]] || { log "bucket: $d reads back as ${got:-nothing}"; return 1; }
  done
}
check "the bucket holds every blob, each matching its digest" in_bucket
no_partial() { ! filer_ls wharf/.uploads/ 2>/dev/null | grep -q '"FullPath"'; }
check "no upload was left unfinished in the bucket" no_partial
for i in 1 2 3; do stop "wharf-c$i"; done

# a fourth instance, empty disk, with presigned_for: the blobs the bucket holds are 307s to
# presigned SeaweedFS URLs, which skopeo and containerd follow; the upstream serves no blob
sed -e '/^\[cluster\]$/,$d' -e 's/^\[store\]$/[store]\npresigned_for = "10m"/' "$C/wharf-1.toml" >"$C/wharf-4.toml"
start wharf-c4 env WHARF_LOG=info "$ROOT/target/debug/wharf" serve --listen 127.0.0.1:15054 \
  --admin 127.0.0.1:15064 --data "$C/data-4" --config "$C/wharf-4.toml"
wait_for "the fourth instance" curl -sf http://127.0.0.1:15054/v2/
before=$(upstream_blobs | wc -l)
presigned_pull() {
  rm -rf "$C/sk4"
  skopeo copy --quiet --src-tls-verify=false docker://127.0.0.1:15054/library/layers:1 "oci:$C/sk4:x" || return 1
  printf 'server = "http://127.0.0.1:9"\n[host."http://127.0.0.1:15054"]\n  capabilities = ["pull", "resolve"]\n' >"$C/ctr/docker.io/hosts.toml"
  CTR_HOSTS=$C/ctr containerd_pull docker.io/library/busybox:latest "$BUSYBOX" || return 1
  local sent; sent=$(curl -sf http://127.0.0.1:15064/metrics | awk '$1 == "wharf_cache_requests_total{outcome=\"presigned\"}" {print $2}')
  log "the fourth instance sent ${sent:-0} blob requests to presigned URLs"
  ((${sent:-0} > 0)) && (($(upstream_blobs | wc -l) == before))
}
check "skopeo and containerd pull through presigned bucket URLs, no blob from the upstream" presigned_pull
stop wharf-c4
stop weed

# ------------------------------------------------------------ the container image
ROUND=image
image_built() { WHARF_BIN=$ROOT/target/debug/wharf "$ROOT/conf/image.sh" localhost/wharf:e2e >"$C/image.out" 2>&1 || { tail -5 "$C/image.out" >&2; return 1; }; }
check "conf/image.sh built the image without network access" image_built
# podman here cannot start containers (this sandbox refuses their rlimits); dockerd can
image_runs() {
  podman save localhost/wharf:e2e | docker load -q >/dev/null &&
    docker run -d --name wharf-image --network host localhost/wharf:e2e \
      serve --listen 127.0.0.1:15070 --upstream "http://$UP3" --data /var/lib/wharf >/dev/null &&
    wait_for "wharf in its container" curl -sf http://127.0.0.1:15070/v2/ ||
    { docker logs wharf-image 2>&1 | tail -5 >&2; return 1; }
}
check "the image runs wharf as a container (docker run)" image_runs
image_pull() { rm -rf "$C/sk"; skopeo copy --quiet --src-tls-verify=false docker://127.0.0.1:15070/library/layers:1 "oci:$C/sk:x"; }
check "wharf in its container serves a pull" image_pull
image_user() { grep -qE '^Uid:\s+65534\s' "/proc/$(docker inspect --format '{{.State.Pid}}' wharf-image)/status"; }
check "it runs as uid 65534" image_user
docker rm -f wharf-image >/dev/null 2>&1 || true
stop registry3
