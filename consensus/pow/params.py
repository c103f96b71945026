"""Proof-of-work parameters: presets and their reasons."""

from dataclasses import dataclass

from consensus.errors import DecodeError
from consensus.pow.difficulty import compact_to_target


@dataclass(frozen=True)
class PowParams:
    target_spacing_ms: int  # the block interval difficulty steers toward
    retarget_interval_blocks: int  # difficulty changes every this many blocks
    genesis_bits: int  # compact target of the first window
    limit_bits: int  # the easiest target allowed (Bitcoin's powLimit)

    @property
    def retarget_timespan_ms(self) -> int:
        return self.target_spacing_ms * self.retarget_interval_blocks

    def validate(self) -> None:
        if self.target_spacing_ms < 1 or self.retarget_interval_blocks < 2:
            raise DecodeError("target spacing must be positive and the retarget interval at least 2 blocks")
        limit = compact_to_target(self.limit_bits)
        # Four times the limit still fits 256 bits, so work and targets stay in range.
        if not 0 < limit < 2**254:
            raise DecodeError("limit_bits must encode a target in 1 .. 2**254")
        if not 0 < compact_to_target(self.genesis_bits) <= limit:
            raise DecodeError("genesis_bits must be positive and no easier than limit_bits")


def bits_for_hashrate(hashes_per_second: float, spacing_ms: int) -> int:
    """Compact bits under which `hashes_per_second` finds one block per spacing on average."""
    expected_hashes = max(1, int(hashes_per_second * spacing_ms / 1000))
    from consensus.pow.difficulty import target_to_compact

    return target_to_compact((1 << 256) // expected_hashes - 1)


POW_PRESETS: dict[str, dict[str, int]] = {
    # Simulation: one block a second, retarget every 20 blocks so tests see it work.
    # The simulated miner's timing follows the target; genesis bits suit 1e5 hashes/s.
    "minimal": dict(
        target_spacing_ms=1_000,
        retarget_interval_blocks=20,
        genesis_bits=bits_for_hashrate(100_000, 1_000),
        limit_bits=0x1F00FFFF,
    ),
    # Real nodes on one machine: a few capped miners of ~20k hashes/s each, a block every
    # 2 s, retarget every 30 blocks (a minute) so a killed miner's share is corrected soon.
    "testnet": dict(
        target_spacing_ms=2_000,
        retarget_interval_blocks=30,
        genesis_bits=bits_for_hashrate(80_000, 2_000),
        limit_bits=0x1F00FFFF,
    ),
}

for _preset in POW_PRESETS.values():
    PowParams(**_preset).validate()
