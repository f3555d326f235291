#!/usr/bin/env bash
# Installs what Basalt's demo and tests need on a Debian machine, idempotently:
# Debian packages (QEMU, tools for the guest image) and the test guest image.
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

echo "setup: building the test guest image (cached)" >&2
bash vm-images/build-guest.sh >/dev/null
echo "setup: done" >&2
