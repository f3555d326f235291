#!/bin/sh
# /init of the Basalt test guest (busybox sh). Loads the virtio modules, runs
# the test script from QEMU fw_cfg (opt/basalt/script) or, failing that, the
# base64 kernel argument basalt.script=..., then prints
# "BASALT-GUEST-EXIT <status>" and powers off.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TERM=dumb
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
mkdir -p /dev/pts /dev/shm /root && mount -t tmpfs tmpfs /dev/shm

for m in $(cat /etc/modules.order); do
  insmod "/lib/modules/$m.ko" || echo "basalt-init: insmod $m failed"
done

script=/tmp/basalt-script
fw=/sys/firmware/qemu_fw_cfg/by_name/opt/basalt/script/raw
i=0 # fw_cfg probing is synchronous; wait (bounded) only if it has not happened
while [ ! -d /sys/firmware/qemu_fw_cfg/by_name ] && [ $i -lt 20 ]; do usleep 100000; i=$((i + 1)); done
if [ -e "$fw" ]; then
  cat "$fw" >"$script"
else
  arg=$(tr ' ' '\n' </proc/cmdline | sed -n 's/^basalt\.script=//p')
  if [ -n "$arg" ]; then echo "$arg" | base64 -d >"$script"; fi
fi

if [ -s "$script" ]; then
  echo "basalt-init: running test script"
  cd /tmp && sh -x "$script"
  status=$?
else
  echo "basalt-init: no test script found (fw_cfg opt/basalt/script)"
  status=125
fi
sync
echo "BASALT-GUEST-EXIT $status"
poweroff -f
