# End-to-end, sourced by clients.sh while the upstreams are up: a wharf that serves TLS with a
# certificate from a test CA made here, and lets in only who belongs. dockerd and containerd
# say who they are with client certificates, skopeo, podman and containerd with HTTP Basic
# (an htpasswd file of bcrypt hashes); clients that say nothing, or lie, are refused. Every
# pull is checked by digest, and wharf's access log must name who pulled it.
S=$W/secure
SECURE=127.0.0.1:15443
mkdir -p "$S"

# ------------------------------------------------------------ a test CA and its certificates
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=wharf-e2e-ca \
  -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign \
  -keyout "$S/ca.key" -out "$S/ca.crt" 2>/dev/null
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=stranger-ca \
  -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign \
  -keyout "$S/stranger-ca.key" -out "$S/stranger-ca.crt" 2>/dev/null
issue() { # NAME CN EXTENSIONS [CA]: NAME.crt and NAME.key, signed by CA (default: ca)
  local ca=${4:-ca}
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$2" \
    -keyout "$S/$1.key" -out "$S/$1.csr" 2>/dev/null
  openssl x509 -req -in "$S/$1.csr" -CA "$S/$ca.crt" -CAkey "$S/$ca.key" -CAcreateserial -days 2 \
    -extfile <(printf '%b\n' "$3") -out "$S/$1.crt" 2>/dev/null
}
issue server wharf 'subjectAltName=IP:127.0.0.1,IP:::1,DNS:localhost\nextendedKeyUsage=serverAuth'
issue dockerd dockerd 'extendedKeyUsage=clientAuth'
issue containerd containerd 'extendedKeyUsage=clientAuth'
issue intruder intruder 'extendedKeyUsage=clientAuth'
issue forged dockerd 'extendedKeyUsage=clientAuth' stranger-ca
htpasswd -bBc "$S/htpasswd" puller pull-pw 2>/dev/null
PULLER=$(printf 'puller:pull-pw' | base64)

cat >"$S/wharf.toml" <<TOML
tag_ttl = "2s"
[tls]
cert = "$S/server.crt"
key = "$S/server.key"
client_ca = "$S/ca.crt"
[access]
htpasswd = "$S/htpasswd"
[[access.rules]]
who = ["cert:dockerd", "cert:containerd", "puller"]
repositories = ["docker.io/*", "registry.test/*"]
[upstreams."docker.io"]
url = "http://$UP"
[upstreams."registry.test"]
url = "http://$UP2"
TOML
start wharf-secure env WHARF_LOG=info "$ROOT/target/debug/wharf" serve --listen "$SECURE" --data "$S/data" --config "$S/wharf.toml"
wait_for wharf-secure curl -sf --cacert "$S/ca.crt" -u puller:pull-pw "https://$SECURE/v2/"
pulled_by() { grep -q "user=\"$1\"" "$W/wharf-secure.log" || { log "wharf-secure's log names no user=$1"; return 1; }; }

ROUND=tls
# ------------------------------------------------------------ refusals, seen with curl
upstream_manifest_asks() { cat "$W/registry.log" "$W/registry2.log" | grep -cE '"(GET|HEAD) /v2/[^ ]+/manifests/' || true; }
asked=$(upstream_manifest_asks)
refused() { # WANT_CODE WANT_ERROR CURL_ARGS... : one GET of a manifest, refused as wanted
  local want=$1 error=$2 code; shift 2
  code=$(curl -s --cacert "$S/ca.crt" -D "$S/h.txt" -o "$S/b.json" -w '%{http_code}' "$@" \
    "https://$SECURE/v2/library/busybox/manifests/latest")
  [[ $code == "$want" ]] && grep -q "\"code\":\"$error\"" "$S/b.json" || { log "got $code: $(cat "$S/b.json")"; return 1; }
}
challenged() { refused 401 UNAUTHORIZED "$@" && grep -qi '^www-authenticate: Basic realm="wharf"' "$S/h.txt"; }
check "an anonymous client gets 401 with a Basic challenge" challenged
check "a wrong password gets 401" challenged -u puller:guess
check "a certificate wharf's rules do not name gets 403 DENIED" refused 403 DENIED --cert "$S/intruder.crt" --key "$S/intruder.key"
handshake_fails() { ! curl -s --cacert "$S/ca.crt" --cert "$S/forged.crt" --key "$S/forged.key" -o /dev/null "https://$SECURE/v2/"; }
check "a certificate from another CA fails the handshake" handshake_fails
h2() { [[ $(curl -s --http2 --cacert "$S/ca.crt" -u puller:pull-pw -o /dev/null -w '%{http_version}' "https://$SECURE/v2/") == 2 ]]; }
check "curl speaks HTTP/2 to it (ALPN)" h2
check "nothing was asked of an upstream for them" test "$(upstream_manifest_asks)" -eq "$asked"

# ------------------------------------------------------------ skopeo and podman: Basic
mkdir -p "$S/certs"
cp "$S/ca.crt" "$S/certs/ca.crt"
skopeo_secure() { # [skopeo copy flags...]
  rm -rf "$S/skopeo"
  skopeo copy --quiet --src-cert-dir "$S/certs" "$@" "docker://$SECURE/library/layers:1" "oci:$S/skopeo:x" 2>"$S/skopeo.err" &&
    local got && got=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["manifests"][0]["digest"])' "$S/skopeo/index.json") &&
    [[ $got == "$LAYERS" ]] || { log "skopeo got ${got:-nothing}, want $LAYERS: $(tail -2 "$S/skopeo.err")"; return 1; }
}
check "skopeo pulled over TLS with Basic credentials" skopeo_secure --src-creds puller:pull-pw
check "wharf knew skopeo as puller" pulled_by puller
refuses() { ! "$@" >/dev/null 2>&1; }
check "skopeo without credentials is refused" refuses skopeo_secure --src-no-creds

printf '{"auths":{"%s":{"auth":"%s"}}}\n' "$SECURE" "$PULLER" >"$S/auth.json"
echo '{}' >"$S/no-auth.json"
cat >"$S/registries.conf" <<TOML
[[registry]]
prefix = "docker.io"
location = "127.0.0.1:9"
[[registry.mirror]]
location = "$SECURE"
TOML
podman_secure() { # AUTHFILE : podman pulls busybox through the TLS mirror
  CONTAINERS_REGISTRIES_CONF=$S/registries.conf podman_pull docker.io/library/busybox:latest "$BUSYBOX" \
    --cert-dir "$S/certs" --authfile "$1"
}
check "podman pulled over TLS with credentials for the mirror (auth.json)" podman_secure "$S/auth.json"
check "podman without credentials is refused" refuses podman_secure "$S/no-auth.json"

# ------------------------------------------------------------ containerd: certificate, Basic
ctr_hosts() { # DIR [hosts.toml lines for the mirror...]
  local dir=$1; shift
  mkdir -p "$dir/docker.io"
  { printf 'server = "https://127.0.0.1:9"\n[host."https://%s"]\n  capabilities = ["pull", "resolve"]\n  ca = "%s"\n' "$SECURE" "$S/ca.crt"
    printf '  %s\n' "$@"; } >"$dir/docker.io/hosts.toml"
}
ctr_hosts "$S/ctr-cert" "client = [[\"$S/containerd.crt\", \"$S/containerd.key\"]]"
ctr_hosts "$S/ctr-basic" "[host.\"https://$SECURE\".header]" "  Authorization = \"Basic $PULLER\""
ctr_hosts "$S/ctr-anonymous"
CTR_HOSTS=$S/ctr-cert check "ctr pulled over TLS with a client certificate" containerd_pull docker.io/library/multi:1 "$MULTI"
check "wharf knew containerd by its certificate" pulled_by cert:containerd
CTR_HOSTS=$S/ctr-basic check "ctr pulled over TLS with Basic credentials (hosts.toml header)" containerd_pull docker.io/library/busybox:latest "$BUSYBOX"
CTR_HOSTS=$S/ctr-anonymous check "ctr without credentials is refused" refuses containerd_pull docker.io/library/busybox:latest "$BUSYBOX"

# ------------------------------------------------------------ dockerd: a client certificate
# dockerd reads a mirror's certificates from /etc/docker/certs.d/<host:port>/ (no flag moves
# it): ca.crt, client.cert, client.key. But it takes every address in 127.0.0.0/8 for an
# insecure registry (always, whatever daemon.json says): it skips verifying the server there
# and never reads certs.d, so it sends no client certificate. ::1 is loopback too, and not in
# that range: wharf listens there for dockerd. The mirror list is reloaded on SIGHUP.
stop wharf-secure
SECURE6='[::1]:15443'
start wharf-secure env WHARF_LOG=info "$ROOT/target/debug/wharf" serve --listen "$SECURE6" --data "$S/data" --config "$S/wharf.toml"
wait_for wharf-secure curl -sfg --cacert "$S/ca.crt" -u puller:pull-pw "https://$SECURE6/v2/"
DOCKER_CERTS=/etc/docker/certs.d/$SECURE6
mkdir -p "$DOCKER_CERTS"
cp "$S/ca.crt" "$DOCKER_CERTS/ca.crt"
cp "$S/dockerd.crt" "$DOCKER_CERTS/client.cert"
cp "$S/dockerd.key" "$DOCKER_CERTS/client.key"
mirrors() { # URL : point dockerd's registry-mirrors at URL and wait until it has taken it
  python3 - "$W/docker/daemon.json" "$1" <<'PY'
import json, sys
c = json.load(open(sys.argv[1])); c["registry-mirrors"] = [sys.argv[2]]
json.dump(c, open(sys.argv[1], "w"), indent=2)
PY
  kill -HUP "$(cat "$W/dockerd.pid")"
  wait_for "dockerd to take mirror $1" bash -c "docker info --format '{{.RegistryConfig.Mirrors}}' | grep -qF '$1'"
}
mirrors "https://$SECURE6"
check "dockerd pulled over TLS with a client certificate, and ran it" docker_pull_run busybox "$BUSYBOX"
check "wharf knew dockerd by its certificate" pulled_by cert:dockerd
rm -f "$DOCKER_CERTS/client.cert" "$DOCKER_CERTS/client.key"
check "dockerd without a client certificate is refused" refuses docker_pull_run busybox "$BUSYBOX"
rm -rf "$DOCKER_CERTS"
mirrors "http://$MIRROR"
stop wharf-secure

# ------------------------------------------------------------ least privilege
ROUND=privilege
# the unit in conf/ is valid and keeps wharf in a tight sandbox (exposure under 2.0 of 10)
sed "s#/usr/local/bin/wharf#$ROOT/target/debug/wharf#" "$ROOT/conf/wharf.service" >"$S/wharf.service"
check "conf/wharf.service is a valid unit" systemd-analyze verify "$S/wharf.service"
check "conf/wharf.service's exposure is under 2.0" systemd-analyze security --offline=true --threshold=20 "$S/wharf.service"
# and wharf needs no root: as nobody, with no capabilities and no new privileges, it serves and fills
chmod 711 "$W" "$S"
N=$S/nobody
mkdir -p "$N/data"
cp "$ROOT/target/debug/wharf" "$N/wharf"
printf '[upstreams."docker.io"]\nurl = "http://%s"\n' "$UP" >"$N/wharf.toml"
chmod 755 "$N" && chmod 644 "$N/wharf.toml" && chown 65534:65534 "$N/data"
UNPRIVILEGED=127.0.0.1:15444
start wharf-nobody setpriv --reuid=65534 --regid=65534 --clear-groups --no-new-privs \
  --inh-caps=-all --bounding-set=-all "$N/wharf" serve --listen "$UNPRIVILEGED" --data "$N/data" --config "$N/wharf.toml"
wait_for wharf-nobody curl -sf "http://$UNPRIVILEGED/v2/"
unprivileged() {
  local st=/proc/$(cat "$W/wharf-nobody.pid")/status
  grep -qE '^Uid:\s+65534\s' "$st" && grep -qE '^CapEff:\s+0+$' "$st" && grep -qE '^NoNewPrivs:\s+1' "$st" ||
    { grep -E '^(Uid|CapEff|NoNewPrivs)' "$st" >&2; return 1; }
}
check "wharf runs as nobody, with no capabilities and no new privileges" unprivileged
nobody_pull() { rm -rf "$S/nobody-pull"; skopeo copy --quiet --src-tls-verify=false "docker://$UNPRIVILEGED/library/layers:1" "oci:$S/nobody-pull:x"; }
check "unprivileged, it fills and serves a pull" nobody_pull
stop wharf-nobody
