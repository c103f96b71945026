#!/usr/bin/env bash
# Start a local testnet. Arguments go to `chainlab`.
# Until the real-node issue lands, this runs the simulated testnet: the real node code
# on a virtual clock (chainlab sim); afterwards it starts real node processes.
source "$(dirname "$0")/env.sh"
if [ "$#" -eq 0 ]; then
  set -- sim --nodes 4 --seed 1 --duration 60 --faults partition,crash
fi
exec chainlab "$@"
