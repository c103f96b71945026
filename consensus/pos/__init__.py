"""Proof of stake (issue 4): validators, slots and epochs, stake-proportional proposers,
attestations with Casper FFG checkpoints, LMD-GHOST fork choice, slashing.

Pure like the rest of consensus/: no clock, no I/O, no global randomness.
"""
