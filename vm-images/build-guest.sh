#!/usr/bin/env bash
# Build the Basalt test guest (Debian cloud kernel + busybox initramfs with
# fio and e2fsprogs) from Debian packages. Nothing is installed into the host
# except missing build tools. Output: $BASALT_GUEST_DIR (default
# <repo>/target/guest) with vmlinuz and initramfs.cpio.gz. Idempotent.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HERE")
OUT=${BASALT_GUEST_DIR:-$REPO/target/guest}
# The image depends on this script and on the guest init script.
HASH=$(cat "$HERE/build-guest.sh" "$HERE/guest-init.sh" | sha256sum | cut -d' ' -f1)
MODULES=(virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk qemu_fw_cfg)
SEEDS=(busybox-static fio e2fsprogs)

up_to_date() {
  [[ -f $OUT/vmlinuz && -f $OUT/initramfs.cpio.gz && "$(cat "$OUT/stamp" 2>/dev/null)" == "$HASH" ]]
}
up_to_date && { echo "guest image up to date in $OUT"; exit 0; }

mkdir -p "$OUT"
exec 9>"$OUT/.lock"
flock 9 # serialise concurrent builds; re-check after waiting
up_to_date && { echo "guest image up to date in $OUT"; exit 0; }

# --- host tools (installed only if missing) ---------------------------------
SUDO=
[[ $(id -u) == 0 ]] || SUDO="sudo -n"
need() { # need <command> <package>
  command -v "$1" >/dev/null && return 0
  echo "installing $2 for $1" >&2
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends "$2" >&2
}
need apt-get apt; need dpkg-deb dpkg; need cpio cpio; need gzip gzip
need zstd zstd; need xz xz-utils; need flock util-linux

WORK=$(mktemp -d "${TMPDIR:-/tmp}/basalt-guest.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
DEBS=$WORK/debs ROOT=$WORK/root IMG=$WORK/img
mkdir -p "$DEBS" "$ROOT" "$IMG"
chmod 755 "$WORK" "$DEBS"

# --- packages ---------------------------------------------------------------
# Resolve the versioned kernel behind the cloud meta-package.
KPKG=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
[[ -n $KPKG ]] || { echo "cannot resolve linux-image-cloud-amd64" >&2; exit 1; }

# Library closure of the seeds: follow (Pre)Depends on lib* packages only
# (skipping perl/python), which is what the binaries' DT_NEEDED needs.
declare -A SEEN=()
PKGS=() LEVEL=("${SEEDS[@]}")
while ((${#LEVEL[@]})); do
  NEXT=()
  for p in "${LEVEL[@]}"; do
    if [[ -z ${SEEN[$p]:-} ]]; then SEEN[$p]=1; PKGS+=("$p"); NEXT+=("$p"); fi
  done
  ((${#NEXT[@]})) || break
  mapfile -t LEVEL < <(apt-cache depends --no-recommends --no-suggests --no-conflicts \
      --no-breaks --no-replaces --no-enhances "${NEXT[@]}" |
    awk '$1 ~ /Depends:$/ && $2 !~ /^</ {sub(/:any$/, "", $2); print $2}' |
    grep -E '^(lib|zlib)' | grep -vE 'perl|python' | sort -u)
done
echo "downloading $KPKG and ${#PKGS[@]} packages" >&2
(cd "$DEBS" && apt-get -q -o APT::Sandbox::User=root download "$KPKG" "${PKGS[@]}" >&2)
for d in "$DEBS"/*.deb; do dpkg-deb -x "$d" "$ROOT"; done

# --- initramfs tree ---------------------------------------------------------
mkdir -p "$IMG"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,tmp,mnt,etc,lib/modules}
BINS=(usr/bin/fio sbin/mke2fs sbin/e2fsck sbin/tune2fs sbin/dumpe2fs sbin/resize2fs sbin/debugfs)
for b in "${BINS[@]}"; do cp -a "$ROOT/$b" "$IMG/$b"; done
for l in mkfs.ext2 mkfs.ext3 mkfs.ext4; do ln -s mke2fs "$IMG/sbin/$l"; done
for l in fsck.ext2 fsck.ext3 fsck.ext4; do ln -s e2fsck "$IMG/sbin/$l"; done
cp "$ROOT/etc/mke2fs.conf" "$IMG/etc/"

# Shared libraries: resolve with the extracted loader against extracted libs.
LIBDIRS=$ROOT/lib/x86_64-linux-gnu:$ROOT/usr/lib/x86_64-linux-gnu:$ROOT/usr/lib/x86_64-linux-gnu/ceph
LDSO=$ROOT/lib64/ld-linux-x86-64.so.2
copy_lib() { # copy <abs path> into the image at its path relative to $ROOT
  local rel=${1#"$ROOT"}
  [[ $rel == "$1" ]] && echo "warning: $1 not from packages, copying from host" >&2
  mkdir -p "$IMG$(dirname "$rel")"
  cp -L "$1" "$IMG$rel"
}
copy_lib "$LDSO"
for b in "${BINS[@]}"; do
  out=$("$LDSO" --library-path "$LIBDIRS" --list "$ROOT/$b" 2>&1 || true)
  if grep -q 'not found' <<<"$out"; then echo "$b: $out" >&2; exit 1; fi
  awk '$2 == "=>" && $3 ~ /^\// {print $3}' <<<"$out" | while read -r lib; do copy_lib "$lib"; done
done

# busybox and its applet symlinks (real binaries above take precedence).
cp "$ROOT/bin/busybox" "$IMG/bin/busybox"
"$IMG/bin/busybox" --list-full | while read -r a; do
  [[ -e $IMG/$a || -L $IMG/$a ]] || ln -s /bin/busybox "$IMG/$a"
done

# Kernel modules, dependencies first (from each module's .modinfo).
KVER=${KPKG#linux-image-}
MODDIR=$ROOT/lib/modules/$KVER
declare -A MODSEEN=()
ORDER=()
add_mod() {
  local m=$1 f deps d
  [[ -n ${MODSEEN[$m]:-} ]] && return 0
  MODSEEN[$m]=1
  f=$(find "$MODDIR/kernel" \( -name "$m.ko" -o -name "$m.ko.[xgz]*" \) -print -quit)
  if [[ -z $f ]]; then # built in?
    grep -q "/$m.ko$" "$MODDIR/modules.builtin" && return 0
    echo "module $m not found" >&2; exit 1
  fi
  case $f in
    *.xz) xz -dc "$f" >"$IMG/lib/modules/$m.ko" ;;
    *.zst) zstd -qdc "$f" >"$IMG/lib/modules/$m.ko" ;;
    *.gz) gzip -dc "$f" >"$IMG/lib/modules/$m.ko" ;;
    *) cp "$f" "$IMG/lib/modules/$m.ko" ;;
  esac
  deps=$(tr '\0' '\n' <"$IMG/lib/modules/$m.ko" | sed -n 's/^depends=//p' | tr ',' ' ')
  for d in $deps; do add_mod "${d//-/_}"; done
  ORDER+=("$m")
}
for m in "${MODULES[@]}"; do add_mod "$m"; done
printf '%s\n' "${ORDER[@]}" >"$IMG/etc/modules.order"

install -m 755 "$HERE/guest-init.sh" "$IMG/init"

# --- outputs (atomic) -------------------------------------------------------
(cd "$IMG" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --owner=0:0 --quiet) |
  gzip -6 >"$OUT/initramfs.cpio.gz.tmp"
cp "$ROOT/boot/vmlinuz-$KVER" "$OUT/vmlinuz.tmp"
mv "$OUT/initramfs.cpio.gz.tmp" "$OUT/initramfs.cpio.gz"
mv "$OUT/vmlinuz.tmp" "$OUT/vmlinuz"
echo "$KPKG" >"$OUT/kernel-version"
echo "$HASH" >"$OUT/stamp"
echo "guest image built in $OUT ($(du -h "$OUT/initramfs.cpio.gz" | cut -f1) initramfs, $KPKG)"
