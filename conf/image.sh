#!/usr/bin/env bash
# Build wharf's container image, offline: the release binary, the shared libraries it links
# (glibc's, copied from this machine), the CA certificates and an unprivileged user, on an
# empty base (FROM scratch), with podman (installed by tests/install-deps.sh). Nothing is
# downloaded. The image runs `wharf serve` with its data in the volume /var/lib/wharf, as
# uid 65534, with the built-in configuration (Docker Hub as upstream).
#   usage: conf/image.sh [TAG]     (default localhost/wharf:<version>)
#   then:  podman run -p 5000:5000 -v wharf-data:/var/lib/wharf localhost/wharf:<version>
#   or, configured:  podman run ... -v ./wharf.toml:/etc/wharf/wharf.toml:ro \
#          localhost/wharf:<version> serve --config /etc/wharf/wharf.toml --data /var/lib/wharf
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' "$ROOT/Cargo.toml" | head -1)
TAG=${1:-localhost/wharf:$VERSION}
# WHARF_BIN: a binary built already (the tests use their debug build)
BIN=${WHARF_BIN:-$ROOT/target/release/wharf}
[[ -n ${WHARF_BIN:-} ]] || (cd "$ROOT" && cargo build --release --quiet)
CTX=$(mktemp -d /tmp/wharf-image.XXXXXX)
trap 'rm -rf "$CTX"' EXIT
rootfs=$CTX/rootfs
mkdir -p "$rootfs"/{usr/bin,etc/ssl/certs,etc/wharf,var/lib,tmp} "$CTX/data"
install -m 0755 "$BIN" "$rootfs/usr/bin/wharf"
# the dynamic loader and every library the binary links, at the paths it names them by
ldd "$BIN" | awk '/=> \//{print $3} /^\t\/lib/{print $1}' | while read -r lib; do
  mkdir -p "$rootfs$(dirname "$lib")"
  cp -L "$lib" "$rootfs$lib"
done
cp -L /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
echo 'nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin' >"$rootfs/etc/passwd"
echo 'nogroup:x:65534:' >"$rootfs/etc/group"
echo 'hosts: files dns' >"$rootfs/etc/nsswitch.conf"
chmod 1777 "$rootfs/tmp"
cat >"$CTX/Containerfile" <<CONTAINERFILE
FROM scratch
COPY rootfs/ /
COPY --chown=65534:65534 data/ /var/lib/wharf/
USER 65534:65534
ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
VOLUME /var/lib/wharf
EXPOSE 5000
ENTRYPOINT ["/usr/bin/wharf"]
CMD ["serve", "--data", "/var/lib/wharf"]
LABEL org.opencontainers.image.title="wharf" org.opencontainers.image.version="$VERSION"
CONTAINERFILE
podman build --network=none --pull=never -q -t "$TAG" -f "$CTX/Containerfile" "$CTX" >/dev/null
echo "$TAG"
