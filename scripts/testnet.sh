#!/usr/bin/env bash
# Start a local 4-node proof-of-work testnet of real node processes on 127.0.0.1, in the
# foreground (Ctrl-C stops every node). Extra arguments go to `chainlab testnet up`,
# e.g. `scripts/testnet.sh --detach` or `scripts/testnet.sh --nodes 6 --home /tmp/tn`.
source "$(dirname "$0")/env.sh"
exec chainlab testnet up --nodes 4 "$@"
