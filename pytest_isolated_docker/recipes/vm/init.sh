#!/bin/sh
# PID 1 of the machine backend's VM (kernel argument init=/sbin/pytest-isolated-docker-init).
# Mounts the kernel filesystems, loads the modules dockerd needs, configures QEMU's user-mode
# network and runs containerd and dockerd, the latter on its unix socket only; then waits for the
# host's configuration on the control channel (certificates, daemon.json, clock, entropy; see
# backends/machine/vm.py; a snapshot's boot may first be asked to load images), has dockerd
# reload daemon.json and puts a TLS terminator (socat, client certificates required) on
# 0.0.0.0:2376 in front of dockerd's socket. dockerd is started before any snapshot is taken, so
# a restored VM does not pay for its start (some 3 s under TCG); only the terminator holds the
# VM's keys. When dockerd exits, so does this script: the kernel panics (panic=1) and QEMU,
# started with -no-reboot, exits.
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

# dockerd, on its unix socket only: nothing outside the VM reaches it but through the TLS
# terminator below. Its output goes to a file (followed on the console), where the reload of
# daemon.json is looked for; its daemon.json is replaced and reloaded once the VM's own arrives.
# The runtime (crun, with dockerd's network hook swapped: see crun-docker in the recipe) is given
# on the command line, not in daemon.json, so that the VM's daemon.json (which replaces this one)
# cannot drop it on reload.
mkdir -p /etc/docker
echo '{}' > /etc/docker/daemon.json
: > /run/dockerd.log
tail -n +1 -f /run/dockerd.log &
say "starting dockerd"
dockerd --containerd=/run/containerd/containerd.sock --host=unix:///var/run/docker.sock \
    --add-runtime crun=/usr/local/sbin/crun-docker --default-runtime crun \
    >> /run/dockerd.log 2>&1 &
dockerd_pid=$!
until docker version > /dev/null 2>&1; do
    kill -0 "$dockerd_pid" 2>/dev/null || { say "dockerd exited"; exit 1; }
    sleep 0.1
done
say "dockerd answers"

# One container runs before any snapshot is taken, from a one-file image of busybox: the first
# container a test runs then finds dockerd's, containerd's and crun's lazily set-up state made and
# their files read. Its OCI bundle, as dockerd made it (namespaces, capabilities, seccomp profile),
# is kept as $warmup/config.json, made to run busybox from $warmup/rootfs without dockerd's
# files, network hook or image: a VM restored from the snapshot runs it with crun (see below).
# The image and the container are removed again.
warmup=/run/pytest-isolated-docker-warmup
mkdir -p "$warmup/rootfs"
cp /bin/busybox "$warmup/rootfs/busybox"
# (--pull never: were the import to fail, dockerd would look for the image on Docker Hub.)
if tar -C "$warmup/rootfs" -c busybox | docker import - pytest-isolated-docker-warmup > /dev/null \
    && id=$(docker run -d --pull never pytest-isolated-docker-warmup /busybox sleep 60); then
    jq '.root = {"path": "rootfs"} | del(.hooks)
        | .mounts |= map(select(.source | startswith("/var/lib/docker/") | not))
        | .process.args = ["/busybox", "true"] | .process.terminal = false
        | .linux.cgroupsPath = "/pytest-isolated-docker-warmup"
        | .linux.namespaces |= map(del(.path))' \
        "/run/containerd/io.containerd.runtime.v2.task/moby/$id/config.json" \
        > "$warmup/config.json" || rm -f "$warmup/config.json"
    docker rm -f "$id" > /dev/null
else
    say "the warm-up container failed"
fi
docker rmi -f pytest-isolated-docker-warmup > /dev/null 2>&1
say "warm-up container ran"

# Mutual TLS on 0.0.0.0:2376 in front of dockerd's socket, with the certificates in directory $1
# (a client certificate of that CA is required); sets $tls_pid. A connection whose client closes
# its sending side (docker exec with stdin, say) keeps receiving until dockerd closes: -t.
start_tls() {
    socat -t 86400 \
        "OPENSSL-LISTEN:2376,reuseaddr,fork,cert=$1/cert.pem,key=$1/key.pem,cafile=$1/ca.pem,verify=1" \
        UNIX-CONNECT:/var/run/docker.sock &
    tls_pid=$!
}

# Unpack the host's payload (base64 of a gzipped tar: TLS files and more) into directory $1.
unpack() {
    mkdir -p -m 0700 "$1" && echo "$2" | base64 -d | tar -xz -C "$1" && chmod 0600 "$1/key.pem"
}

# Everything above is the same in every VM; what follows is not. A VM snapshot is taken while
# this script waits below, and VMs restored from it resume there. The host's answers on the
# control channel (the second serial port, kept open so that nothing sent is lost) are lines
# "<kind> <unix time> <base64 of a gzipped tar>":
# - "load": only in the boot that makes a snapshot with preloaded images. The TLS terminator starts
#   with the TLS files of the payload (kept in memory, /run), the host loads the images into
#   dockerd through it and says "loaded"; the terminator stops, its keys are removed, and the
#   script waits again. The images stay on the snapshot's disk, which every VM restored from it
#   sees through its own overlay.
# - "config": the VM's own configuration: dockerd reloads daemon.json, the terminator starts.
# dockerd's identity (/etc/docker/key.json, its engine ID) is made before the snapshot: VMs
# restored from one snapshot report the same engine ID (their daemon.json labels tell them apart).
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
    say "starting the TLS terminator to load images"
    start_tls /run/pytest-isolated-docker-load
    read -r kind rest <&3
    # The terminator and the connections it forked (the host has closed its client by now).
    pkill -P "$tls_pid" 2>/dev/null
    kill "$tls_pid"
    while kill -0 "$tls_pid" 2>/dev/null; do wait "$tls_pid"; done
    rm -rf /run/pytest-isolated-docker-load
    say "images loaded ($kind)"
done
exec 3>&-
if [ "$kind" != config ]; then
    say "unexpected answer on the control channel: $kind"; exit 1
fi
date -s "@$now" > /dev/null
# A VM restored from a snapshot starts with QEMU's cache of translated code empty (it is not part
# of the snapshot): under TCG the first container would translate all it runs anew. While this
# script gets the VM's configuration and the host connects (one vCPU is idle then), a background
# job runs what of a container's start runs outside dockerd and containerd, so that its code is
# translated by then: crun creating, starting and deleting the warm-up bundle (the kernel's
# namespace, mount, cgroup and seccomp paths with it) and the Go start-up of containerd's shim;
# dockerd's too, which executes itself again per container, unless the recipe pointed that at
# dockerd-reexec (/sbin/dockerdx; see the Dockerfile). It uses names of its own and leaves
# nothing: nothing of it is visible through the Docker API. (It still runs as the first container
# starts: more work here, such as a veth pair and an overlay mount, measured no better.)
(
    if [ -f "$warmup/config.json" ]; then
        crun --root "$warmup/state" run --bundle "$warmup" pytest-isolated-docker-warmup
    fi
    /usr/bin/containerd-shim-runc-v2 -v
    [ -e /sbin/dockerdx ] || dockerd --version
) > /dev/null 2>&1 &
if ! unpack /etc/pytest-isolated-docker "$payload"; then
    say "cannot unpack the configuration"; exit 1
fi
# VMs restored from one snapshot share the kernel's random state: mix in the host's seed and
# reseed now (RNDRESEEDCRNG) rather than at the kernel's next periodic reseed; the terminator's
# OpenSSL seeds itself after this.
crng-reseed /etc/pytest-isolated-docker/entropy || say "could not reseed the kernel's random generator"
rm -f /etc/pytest-isolated-docker/entropy
say "configuration received"

# The VM's labels and registry mirrors: dockerd reloads daemon.json on SIGHUP, and says so in its
# log; the terminator starts once it has, so that nobody sees dockerd with the snapshot's settings.
cp /etc/pytest-isolated-docker/daemon.json /etc/docker/daemon.json
kill -HUP "$dockerd_pid"
until grep -q -e "Reloaded configuration" -e "Error reconfiguring" /run/dockerd.log; do
    sleep 0.01
done
if grep -q "Error reconfiguring" /run/dockerd.log; then
    say "dockerd could not reload daemon.json"; exit 1
fi
start_tls /etc/pytest-isolated-docker
say "TLS terminator started"
# dash's wait reaps any child (orphans re-parented to PID 1 too) until dockerd itself exits.
while kill -0 "$dockerd_pid" 2>/dev/null; do wait "$dockerd_pid"; done
say "dockerd exited"
