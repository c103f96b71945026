"""Real multi-node networks: local testnets under fault injection (nemesis), invariant checks over RPC, chaos runs."""
