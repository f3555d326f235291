#!/usr/bin/env bash
# Boot the Basalt test guest against a vhost-user-blk socket and run a script.
#   run-guest.sh <vhost-user-socket> <script-file> [extra qemu args...]
# The disk appears in the guest as /dev/vda. Serial output goes to stdout.
# Exit status: the guest script's status (from "BASALT-GUEST-EXIT <n>"),
# or 124 if the guest ended without printing the marker.
# Env: BASALT_GUEST_DIR (image dir), BASALT_GUEST_QUEUES (default 2),
#      BASALT_GUEST_MEM (MiB, default 512), BASALT_GUEST_RECONNECT=1 (chardev reconnect=1),
#      BASALT_GUEST_ACCEL (default tcg; KVM guests hang on the dev machines).
set -euo pipefail
[[ $# -ge 2 ]] || { echo "usage: $0 <vhost-user-socket> <script-file> [qemu args...]" >&2; exit 2; }
SOCK=$1 SCRIPT=$2
shift 2
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
DIR=${BASALT_GUEST_DIR:-$(dirname "$HERE")/target/guest}
"$HERE/build-guest.sh" >&2
MEM=${BASALT_GUEST_MEM:-512}
CHARDEV="socket,id=char0,path=$SOCK"
[[ ${BASALT_GUEST_RECONNECT:-0} == 1 ]] && CHARDEV+=",reconnect=1"

LOG=$(mktemp "${TMPDIR:-/tmp}/basalt-guest-log.XXXXXX")
trap 'rm -f "$LOG"' EXIT
qemu-system-x86_64 -accel "${BASALT_GUEST_ACCEL:-tcg}" -smp 2 -m "$MEM" \
  -object "memory-backend-memfd,id=mem,size=${MEM}M,share=on" -numa node,memdev=mem \
  -nodefaults -display none -monitor none -serial stdio -no-reboot \
  -kernel "$DIR/vmlinuz" -initrd "$DIR/initramfs.cpio.gz" \
  -append "console=ttyS0 quiet panic=-1" \
  -chardev "$CHARDEV" \
  -device "vhost-user-blk-pci,chardev=char0,num-queues=${BASALT_GUEST_QUEUES:-2}" \
  -fw_cfg "name=opt/basalt/script,file=$SCRIPT" \
  "$@" </dev/null | tr -d '\r' | tee "$LOG"
status=$(sed -n 's/^BASALT-GUEST-EXIT \([0-9]*\).*/\1/p' "$LOG" | tail -n1)
exit "${status:-124}"
