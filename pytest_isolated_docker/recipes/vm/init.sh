#!/bin/sh
# PID 1 of the machine backend's VM (kernel argument init=/sbin/pytest-isolated-docker-init).
# Mounts the kernel filesystems, loads the modules dockerd needs, configures QEMU's user-mode
# network and runs containerd; then waits for the host's configuration on the control channel
# (certificates, daemon.json, clock, entropy; see backends/machine/vm.py; a snapshot's boot may
# first be asked to load images) and runs dockerd with mutual TLS on 0.0.0.0:2376. When dockerd exits, so does this script: the kernel panics (panic=1)
# and QEMU, started with -no-reboot, exits.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
say() { echo "pytest-isolated-docker-init: [$(cut -d" " -f1 /proc/uptime 2>/dev/null)] $*"; }

mountpoint -q /proc || mount -t proc proc /proc
mountpoint -q /sys || mount -t sysfs sysfs /sys
mountpoint -q /dev || mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mountpoint -q /dev/pts || mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts
mountpoint -q /dev/shm || mount -t tmpfs -o mode=1777 tmpfs /dev/shm
mountpoint -q /run || mount -t tmpfs -o mode=755 tmpfs /run
mount -t tmpfs -o mode=1777 tmpfs /tmp
mountpoint -q /sys/fs/cgroup || mount -t cgroup2 cgroup2 /sys/fs/cgroup
hostname pytest-isolated-docker-vm
say "filesystems mounted"

modprobe -a overlay bridge veth br_netfilter nf_nat nf_conntrack iptable_nat iptable_filter \
    ip_tables xt_MASQUERADE xt_conntrack xt_addrtype || say "some modules did not load"
echo 1 > /proc/sys/net/ipv4/ip_forward
say "modules loaded"

ip link set lo up
nic=""
for attempt in $(seq 100); do
    for path in /sys/class/net/*; do
        name=${path##*/}
        [ "$name" = lo ] || { nic=$name; break; }
    done
    [ -n "$nic" ] && break
    sleep 0.05
done
if [ -z "$nic" ]; then
    say "no network interface appeared"; ls /sys/class/net; exit 1
fi
ip addr add 10.0.2.15/24 dev "$nic"
ip link set "$nic" up
ip route add default via 10.0.2.2
echo "nameserver 10.0.2.3" > /etc/resolv.conf
say "network: $nic 10.0.2.15/24 via 10.0.2.2"

# containerd is started here rather than by dockerd: dockerd gives the containerd it supervises a
# fixed time to answer, which a VM under TCG on a busy host can exceed.
say "starting containerd"
printf 'version = 2\ndisabled_plugins = ["io.containerd.grpc.v1.cri"]\n' > /run/containerd.toml
containerd --config /run/containerd.toml &
containerd_pid=$!
while [ ! -S /run/containerd/containerd.sock ]; do
    kill -0 "$containerd_pid" 2>/dev/null || { say "containerd exited"; exit 1; }
    sleep 0.05
done

# Containers reach out through the NIC whatever network they are on, and whether or not dockerd
# manages iptables (daemon.json may say "iptables": false): set once here, before any snapshot.
iptables -t nat -A POSTROUTING -o "$nic" -j MASQUERADE || say "cannot masquerade on $nic"

# dockerd with mutual TLS on 0.0.0.0:2376, its certificates in directory $1; sets $dockerd_pid.
start_dockerd() {
    dockerd \
        --containerd=/run/containerd/containerd.sock \
        --host=tcp://0.0.0.0:2376 --host=unix:///var/run/docker.sock \
        --tlsverify \
        --tlscacert="$1/ca.pem" --tlscert="$1/cert.pem" --tlskey="$1/key.pem" &
    dockerd_pid=$!
}

# Unpack the host's payload (base64 of a gzipped tar: TLS files and more) into directory $1.
unpack() {
    mkdir -p "$1" && echo "$2" | base64 -d | tar -xz -C "$1" && chmod 0600 "$1/key.pem"
}

# Everything above is the same in every VM; what follows is not. A VM snapshot is taken while
# this script waits below, and VMs restored from it resume there. The host's answers on the
# control channel (the second serial port, kept open so that nothing sent is lost) are lines
# "<kind> <unix time> <base64 of a gzipped tar>":
# - "load": only in the boot that makes a snapshot with preloaded images. A dockerd starts with
#   the TLS files of the payload (kept in memory, /run), the host loads the images into it and
#   says "loaded"; dockerd stops, its keys are removed, and the script waits again. The images
#   stay on the snapshot's disk, which every VM restored from it sees through its own overlay.
# - "config": the VM's own configuration; dockerd starts with it.
exec 3<>/dev/ttyS1
stty raw -echo <&3
while :; do
    if grep -qw pytest_isolated_docker.snapshot /proc/cmdline; then
        # A smaller snapshot, quicker to restore: no caches, and free memory zeroed (QEMU saves
        # a zero page in a few bytes; freed memory keeps what it held, dockerd's loads included).
        sync
        echo 3 > /proc/sys/vm/drop_caches
        free_kib=$(awk '$1 == "MemFree:" { print $2 }' /proc/meminfo)
        mkdir -p /run/zero
        mount -t tmpfs -o size=$((free_kib - 65536))k tmpfs /run/zero \
            && dd if=/dev/zero of=/run/zero/fill bs=1M 2>/dev/null
        umount /run/zero; rmdir /run/zero
    fi
    say "waiting for the configuration"
    echo ready >&3
    read -r kind now payload <&3
    [ "$kind" = load ] || break
    date -s "@$now" > /dev/null
    unpack /run/pytest-isolated-docker-load "$payload" || { say "cannot unpack"; exit 1; }
    say "starting dockerd to load images"
    start_dockerd /run/pytest-isolated-docker-load
    read -r kind rest <&3
    kill "$dockerd_pid"
    while kill -0 "$dockerd_pid" 2>/dev/null; do wait "$dockerd_pid"; done
    # key.json is dockerd's identity (its engine ID): each VM's dockerd makes its own.
    rm -rf /run/pytest-isolated-docker-load /etc/docker/key.json
    say "images loaded ($kind)"
done
exec 3>&-
if [ "$kind" != config ]; then
    say "unexpected answer on the control channel: $kind"; exit 1
fi
date -s "@$now" > /dev/null
mkdir -p /etc/docker
if ! unpack /etc/pytest-isolated-docker "$payload"; then
    say "cannot unpack the configuration"; exit 1
fi
# VMs restored from one snapshot share the kernel's random state: mix in the host's seed and
# reseed now (RNDRESEEDCRNG) rather than at the kernel's next periodic reseed.
cat /etc/pytest-isolated-docker/entropy > /dev/urandom
perl -e 'open(my $f, "<", "/dev/urandom") or die; ioctl($f, 0x5207, 0) or die "reseed: $!\n"' \
    || say "could not reseed the kernel's random generator"
rm -f /etc/pytest-isolated-docker/entropy
cp /etc/pytest-isolated-docker/daemon.json /etc/docker/daemon.json
say "configuration received"

say "starting dockerd"
start_dockerd /etc/pytest-isolated-docker
# dash's wait reaps any child (orphans re-parented to PID 1 too) until dockerd itself exits.
while kill -0 "$dockerd_pid" 2>/dev/null; do wait "$dockerd_pid"; done
say "dockerd exited"
