"""Who proposes each slot: one validator, chosen in proportion to stake.

The draw for a slot hashes the epoch's seed with the slot number and maps the result
onto the cumulative stakes of the active validators (in registry order). A 256-bit
hash reduced modulo a total stake below 2**64 is uniform to within 2**-192, so the
choice is proportional for any number of validators, small sets included.

The seed is a RANDAO: each block's proposer publishes its reveal (its signature over
the epoch, fixed by its key yet unpredictable to others) and the chain mixes it in.
Proposers for epoch e use the seed as it stood at the end of epoch e - 2
(SEED_LOOKAHEAD_EPOCHS), so the schedule of an epoch is known one full epoch ahead
and the last proposer before it can only bias it by withholding its own block.
"""

from consensus.crypto import sha256

SEED_LOOKAHEAD_EPOCHS = 2


def mix_seed(seed: bytes, reveal: bytes) -> bytes:
    """The seed after a proposer's reveal: every reveal changes it unpredictably."""
    return sha256(b"chainlab/randao" + seed + sha256(reveal))


def slot_draw(seed: bytes, slot: int) -> int:
    return int.from_bytes(sha256(b"chainlab/proposer" + seed + slot.to_bytes(8, "big")), "big")


def select_proposer(seed: bytes, slot: int, stakes: list[tuple[int, int]]) -> int:
    """The validator index that proposes `slot`, from (index, stake) pairs of the active
    validators in registry order; zero stakes never win."""
    total = sum(stake for _, stake in stakes)
    if total <= 0:
        raise ValueError("no active stake: nobody can propose")
    point = slot_draw(seed, slot) % total
    for index, stake in stakes:
        if point < stake:
            return index
        point -= stake
    raise AssertionError("unreachable: point < total")
