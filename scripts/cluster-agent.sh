#!/bin/sh
# Open MPI's launch agent for scripts/cluster.sh (plm_rsh_agent): called as ssh would be, with a host name
# and a command, it runs the command in that host's network namespace instead of logging in.
set -eu
host=$1
shift
exec ip netns exec "${VGG_CLUSTER_PREFIX:-vgg-cluster}-$host" sh -c "$*"
