#!/bin/sh
# An emulated cluster on one Linux machine: N "hosts", each a network namespace with its own address on a
# private test subnet (10.77.0.0/24), joined by veth pairs to a bridge in a namespace of its own, each host's
# link shaped by a token bucket (tc tbf) to RATE. Open MPI runs across them over TCP only, started through
# scripts/cluster-agent.sh, which enters a host's namespace where ssh would log in to a machine. Traffic stays
# inside these namespaces. Needs root, iproute2 (ip, tc) and Open MPI.
#
#   scripts/cluster.sh up N [RATE]      hosts h1..hN, links of RATE (tc's units: 1gbit, 10gbit, 25gbit; default 1gbit)
#   scripts/cluster.sh mpirun ARGS...   mpirun from h1 across the hosts, TCP only (e.g. --host h1,h2 vgg train ...)
#   scripts/cluster.sh rate RATE [HOST] reshape every host's link, or only HOST's (a slow link among fast ones)
#   scripts/cluster.sh link HOST up|down   take one host's link down or bring it back (a pulled cable)
#   scripts/cluster.sh down             remove every namespace this script made
#
# `up` removes what an earlier `up` left, and removes its namespaces again if it fails half-way.
# VGG_CLUSTER_PREFIX (default vgg-cluster) names the namespaces, so that a test's cluster and yours coexist.
set -eu

PREFIX=${VGG_CLUSTER_PREFIX:-vgg-cluster}
case $PREFIX in ''|*[!a-z0-9-]*) echo "cluster.sh: VGG_CLUSTER_PREFIX takes lower-case letters, digits and '-', not '$PREFIX'" >&2; exit 2;; esac
export VGG_CLUSTER_PREFIX=$PREFIX
SUBNET=10.77.0
HERE=$(cd "$(dirname "$0")" && pwd)

die() { echo "cluster.sh: $*" >&2; exit 2; }

need_root() {
    [ "$(id -u)" = 0 ] || die "needs root (network namespaces, veth pairs and tc): run it with sudo"
    command -v ip >/dev/null && command -v tc >/dev/null || die "needs iproute2 (ip, tc): apt-get install iproute2"
}

hosts() { ip netns list | awk '{print $1}' | grep "^$PREFIX-h[0-9]*$" | sed "s/^$PREFIX-//" | sort -V; }

down() {
    for ns in $(ip netns list | awk '{print $1}' | grep "^$PREFIX-" || true); do
        ip netns delete "$ns"
    done
}

shape() {  # host rate: a token bucket on the host's side of its link (what it sends)
    ip netns exec "$PREFIX-$1" tc qdisc replace dev eth0 root tbf rate "$2" burst 256kb latency 50ms 2>/dev/null ||
        die "'$2' is not a rate tc takes: give one such as 1gbit, 10gbit, 25gbit or 500mbit"
}

host_exists() {
    hosts | grep -qx "$1" || die "no host '$1': the hosts are $(hosts | tr '\n' ' ')(scripts/cluster.sh up N makes them)"
}

up() {
    n=$1; rate=${2:-1gbit}
    case $n in ''|*[!0-9]*) die "up needs a host count, e.g. up 2";; esac
    [ "$n" -ge 1 ] && [ "$n" -le 200 ] || die "up takes 1 to 200 hosts"
    down
    trap 'down; exit 130' INT TERM
    trap 'status=$?; [ $status = 0 ] || down; exit $status' EXIT
    ip netns add "$PREFIX-br"
    ip -n "$PREFIX-br" link add br0 type bridge
    ip -n "$PREFIX-br" link set br0 up
    ip -n "$PREFIX-br" link set lo up
    i=1
    while [ "$i" -le "$n" ]; do
        ns="$PREFIX-h$i"
        ip netns add "$ns"
        # Created inside the bridge's namespace, one end moved to the host's: nothing touches the
        # machine's own network namespace.
        ip -n "$PREFIX-br" link add "h$i" type veth peer name eth0 netns "$ns"
        ip -n "$PREFIX-br" link set "h$i" master br0 up
        ip -n "$ns" addr add "$SUBNET.$i/24" dev eth0
        ip -n "$ns" link set eth0 up
        ip -n "$ns" link set lo up
        shape "h$i" "$rate"
        i=$((i + 1))
    done
    trap - INT TERM EXIT
    echo "hosts h1..h$n on $SUBNET.0/24, links $rate each; scripts/cluster.sh down removes them"
}

case ${1:-} in
    up) need_root; shift; up "$@" ;;
    down) need_root; down ;;
    rate) need_root; [ $# = 2 ] || [ $# = 3 ] || die "rate needs a rate and may name one host, e.g. rate 10gbit or rate 100mbit h2"
        [ -n "$(hosts)" ] || die "no hosts: scripts/cluster.sh up 2 first"
        if [ $# = 3 ]; then host_exists "$3"; shape "$3" "$2"
        else for h in $(hosts); do shape "$h" "$2"; done; fi ;;
    link) need_root; [ $# = 3 ] || die "link needs a host and up or down, e.g. link h2 down"
        case $3 in up|down) ;; *) die "link takes up or down, not '$3'";; esac
        host_exists "$2"
        ip -n "$PREFIX-$2" link set eth0 "$3" ;;
    mpirun) need_root; shift
        [ -n "$(hosts)" ] || die "no hosts: scripts/cluster.sh up 2 first"
        # TCP only, out-of-band traffic too, on the test subnet; ranks started by the agent.
        # Keepalives on the out-of-band links: a host that stops answering is declared lost after
        # about 4 s and mpirun ends the job, naming it. Open MPI's default (300 s idle, 9 probes
        # 20 s apart) would have mpirun wait 8 minutes, and its abort waits on the lost host for ever.
        # rtc ^hwloc: Open MPI's binding. Each "host" believes it has the machine's cores to itself and
        # pinned its rank to core 0, so every rank ran on the same core; and its daemon, started in a
        # host's namespace, sometimes crashed writing the topology to shared memory
        # (hwloc_shmem_topology_write: 1 start in 30, and twice in a row after a long job; none in 40
        # without the component).
        exec ip netns exec "$PREFIX-h1" env OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 \
            mpirun --mca plm_rsh_agent "$HERE/cluster-agent.sh" \
            --mca btl tcp,self --mca btl_tcp_if_include "$SUBNET.0/24" \
            --mca oob_tcp_if_include "$SUBNET.0/24" \
            --mca oob_tcp_keepalive_time 1 --mca oob_tcp_keepalive_intvl 1 --mca oob_tcp_keepalive_probes 3 \
            --mca rtc ^hwloc "$@" ;;
    *) die "usage: scripts/cluster.sh up N [RATE] | mpirun ARGS... | rate RATE [HOST] | link HOST up|down | down" ;;
esac
