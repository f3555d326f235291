#!/usr/bin/env bash
# Sets up everything on a fresh machine and runs the main job on embedded
# defaults: `basalt up` starts a local cluster (control service, three storage
# servers, a node manager); the CLI creates a replicated volume and attaches
# it; a QEMU guest boots on it, makes a filesystem, writes and verifies data.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release --workspace --bins --locked
BIN="$PWD/target/release"
STATE="$(mktemp -d /tmp/basalt-demo.XXXXXX)"
BASE_PORT="${BASALT_DEMO_PORT:-7400}"
# Every API is mutual TLS; the CLI verifies the control service with the
# cluster CA and presents the admin token `basalt up` bootstrapped.
export BASALT_CONTROL="https://127.0.0.1:$BASE_PORT"
export BASALT_CA_FILE="$STATE/control/tls/ca.crt" BASALT_TOKEN_FILE="$STATE/control/admin.token"

"$BIN/basalt" up --state-dir "$STATE" --base-port "$BASE_PORT" > "$STATE/up.log" 2>&1 &
UP=$!
cleanup() { kill -TERM "$UP" 2>/dev/null || true; wait "$UP" 2>/dev/null || true; }
trap cleanup EXIT
until grep -q "cluster ready" "$STATE/up.log"; do
  kill -0 "$UP" 2>/dev/null || { cat "$STATE/up.log"; exit 1; }
  sleep 0.2
done
cat "$STATE/up.log"

"$BIN/basalt" volume create demo --size 1G
"$BIN/basalt" volume attach demo --node node1 --output json > "$STATE/attach.json"
SOCKET="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["attachment"]["socket_path"])' "$STATE/attach.json")"
"$BIN/basalt" volume show demo

cat > "$STATE/guest.sh" <<'GUEST'
set -e
echo "guest: disk vda is $(( $(cat /sys/block/vda/size) / 2048 )) MiB, $(ls /sys/block/vda/mq | wc -l) queues"
mkfs.ext4 -q -F /dev/vda
mkdir -p /mnt && mount /dev/vda /mnt
dd if=/dev/urandom of=/mnt/data bs=1M count=64 2>/dev/null
sha256sum /mnt/data > /sum
umount /mnt && mount /dev/vda /mnt && sha256sum -c /sum
fio --name=demo --filename=/mnt/fio.dat --direct=1 --ioengine=libaio --rw=randrw --bs=4k --iodepth=16 --size=64M --verify=crc32c --eta=never --minimal | awk -F';' '{print "guest: fio 4k randrw qd16 with crc32c verify: read IOPS " $8 ", write IOPS " $49}'
umount /mnt
e2fsck -fn /dev/vda >/dev/null && echo "guest: filesystem clean"
GUEST
echo "booting a QEMU guest (TCG) on volume demo…"
if ! bash vm-images/run-guest.sh "$SOCKET" "$STATE/guest.sh" > "$STATE/guest.log" 2>&1; then
  tail -30 "$STATE/guest.log"; echo "guest failed; serial log in $STATE/guest.log"; exit 1
fi
grep -E "^guest:|/mnt/data: OK" "$STATE/guest.log"

# A snapshot of the volume (incremental chunks under the state directory),
# and a new volume from it, usable at once while it loads.
"$BIN/basalt" snapshot create demo --name demo-snap --wait
"$BIN/basalt" volume create demo-restored --from-snapshot demo-snap --wait
"$BIN/basalt" snapshot list

"$BIN/basalt" volume detach demo >/dev/null
"$BIN/basalt" volume list
"$BIN/basalt" volume delete demo-restored
"$BIN/basalt" snapshot delete demo-snap
"$BIN/basalt" volume delete demo
echo "demo done; cluster logs in $STATE/logs"
