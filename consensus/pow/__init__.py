"""Proof of work: Bitcoin's compact targets and retarget, most-work fork choice, mining."""
