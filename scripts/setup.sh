#!/usr/bin/env bash
# Installs what Basalt's demo and tests need on a Debian machine, idempotently:
# Debian packages (QEMU, tools for the guest image), the S3 and Azure servers
# the snapshot tests run against, and the test guest image.
# Safe to run again; does nothing that is already done. Needs no input.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

PKGS=(qemu-system-x86 qemu-utils busybox-static cpio zstd e2fsprogs xz-utils)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# Node.js runs Azurite (the Azure Blob Storage emulator) for the Azure
# destination tests; a Node.js from elsewhere (e.g. NodeSource) is kept.
if ! command -v npm >/dev/null 2>&1; then missing+=(nodejs npm); fi
# The guest image is built from Debian packages fetched with apt-get download,
# which needs package lists.
if [ ${#missing[@]} -gt 0 ] || ! apt-cache show linux-image-cloud-amd64 >/dev/null 2>&1; then
  echo "setup: apt-get update" >&2
  $SUDO apt-get update -qq
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}" >&2
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

# A real S3 server for the snapshot tests (s3s-fs, built once into
# target/tools, which CI caches with the rest of target/).
S3S_VERSION=0.14.1
if ! [ -x target/tools/bin/s3s-fs ] || ! grep -qx "$S3S_VERSION" target/tools/s3s-fs.version 2>/dev/null; then
  echo "setup: building the s3s-fs S3 server $S3S_VERSION (once)" >&2
  cargo install --quiet --locked s3s-fs --version "$S3S_VERSION" --features binary --root target/tools >&2
  echo "$S3S_VERSION" > target/tools/s3s-fs.version
fi

# Azurite, the Azure Blob Storage emulator, for the Azure destination tests
# (into target/tools as well).
AZURITE_VERSION=3.35.0
if ! [ -x target/tools/azurite/node_modules/.bin/azurite-blob ] \
  || ! grep -qx "$AZURITE_VERSION" target/tools/azurite.version 2>/dev/null; then
  echo "setup: installing the Azurite emulator $AZURITE_VERSION (once)" >&2
  mkdir -p target/tools/azurite
  npm install --silent --no-audit --no-fund --prefix target/tools/azurite "azurite@$AZURITE_VERSION" >&2
  echo "$AZURITE_VERSION" > target/tools/azurite.version
fi

echo "setup: building the test guest image (cached)" >&2
bash vm-images/build-guest.sh >/dev/null
echo "setup: done" >&2
