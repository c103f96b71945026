"""Constants in tiers (STYLE.md 9): fixed constants, presets, per-network configuration.

Fixed constants never change. A preset is a named set of parameters (`minimal` for
tests and simulation, `testnet` for real nodes and docker); a network's genesis
carries the values it actually uses, so every node of a network agrees on them.
"""

from dataclasses import dataclass, fields

from consensus.errors import DecodeError
from consensus.genesis import Genesis

# Fixed constants.
MEDIAN_TIME_BLOCKS = 11  # a block's time must exceed the median of this many ancestors (Bitcoin's rule)


@dataclass(frozen=True)
class ChainParams:
    """Rules every engine shares. Values come from genesis."""

    block_reward: int  # new coins for each block's producer
    fee_min: int  # the least fee a transaction may pay; spam costs something
    fee_burn_percent: int  # this share of each fee is burned, the rest goes to the producer
    reorg_depth_max: int  # blocks deeper than this below the head are final and never reverted
    future_drift_ms: int  # a block more than this ahead of our clock waits (Bitcoin allows 2 h)

    def validate(self) -> None:
        if not 0 <= self.fee_burn_percent <= 100:
            raise DecodeError(f"fee_burn_percent {self.fee_burn_percent} is not a percentage")
        if self.reorg_depth_max < 1:
            raise DecodeError("reorg_depth_max must be at least 1")
        if self.fee_min < 1:
            raise DecodeError("fee_min must be at least 1, or spam costs nothing")


def params_from(cls, genesis: Genesis):
    """Build a params dataclass from the genesis parameters of the same names."""
    values = genesis.param_dict
    missing = [f.name for f in fields(cls) if f.name not in values]
    if missing:
        raise DecodeError(f"genesis lacks the parameters {', '.join(missing)}")
    params = cls(**{f.name: values[f.name] for f in fields(cls)})
    params.validate()
    return params


CHAIN_PRESETS: dict[str, dict[str, int]] = {
    # Small numbers so tests see reorg bounds and burning within a few blocks.
    "minimal": dict(block_reward=50_000, fee_min=1, fee_burn_percent=10, reorg_depth_max=64, future_drift_ms=15_000),
    # A local testnet: deep enough reorg bound for long partitions, Bitcoin-like drift
    # shortened because every node runs on one machine's clock.
    "testnet": dict(block_reward=50_000, fee_min=1, fee_burn_percent=10, reorg_depth_max=256, future_drift_ms=60_000),
}

for _preset in CHAIN_PRESETS.values():
    ChainParams(**_preset).validate()
