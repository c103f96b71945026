"""Casper FFG justification and finalization, as the consensus-specs weigh it (Gasper).

At each epoch boundary the chain counts, among the attestations it included, the
stake that voted for the previous and for the current epoch's checkpoint with the
currently justified checkpoint as source. A checkpoint with at least 2/3 of the active
stake behind it is justified. Finalization (the rule, documented here once):

  - the justified checkpoint of epoch e is finalized when the checkpoint of epoch e+1
    is justified with it as source (two consecutive justified checkpoints), or
  - when e+1 and e+2 are both justified and e was the source (the "k = 2" cases, so a
    late justification of an epoch does not have to wait another round).

The four cases below are exactly `weigh_justification_and_finalization` of the
Ethereum consensus-specs, with `bits[i]` meaning "the checkpoint i epochs before the
current one is justified". A finalized checkpoint never reverts: honest validators
never vote against it, so two conflicting finalized checkpoints need more than 1/3 of
the stake to break a slashing condition.
"""

from typing import NamedTuple

from consensus.pos.types import Checkpoint

JUSTIFICATION_BITS = 4


class FfgState(NamedTuple):
    previous_justified: Checkpoint
    current_justified: Checkpoint
    finalized: Checkpoint
    bits: tuple[bool, ...]  # bits[0]: current epoch justified, bits[1]: previous, ...

    @classmethod
    def genesis(cls, root: bytes) -> "FfgState":
        cp = Checkpoint(0, root)
        return cls(cp, cp, cp, (False,) * JUSTIFICATION_BITS)


def is_supermajority(stake: int, total: int) -> bool:
    """At least two thirds, in integers: 3 * stake >= 2 * total."""
    return total > 0 and 3 * stake >= 2 * total


def weigh_justification_and_finalization(
    ffg: FfgState,
    current_epoch: int,
    total_active_stake: int,
    previous_target_stake: int,
    current_target_stake: int,
    previous_checkpoint: Checkpoint,
    current_checkpoint: Checkpoint,
) -> FfgState:
    """The FFG state after the boundary into `current_epoch`'s processing.

    `previous_target_stake` / `current_target_stake`: the stake of distinct, unslashed
    validators whose included attestations had the justified checkpoint as source and
    `previous_checkpoint` / `current_checkpoint` as target.
    """
    old_previous = ffg.previous_justified
    old_current = ffg.current_justified
    previous_justified = old_current
    current_justified = old_current
    # Shift: what was "current" is now "previous".
    bits = (False,) + ffg.bits[: JUSTIFICATION_BITS - 1]
    if is_supermajority(previous_target_stake, total_active_stake):
        current_justified = previous_checkpoint
        bits = bits[:1] + (True,) + bits[2:]
    if is_supermajority(current_target_stake, total_active_stake):
        current_justified = current_checkpoint
        bits = (True,) + bits[1:]
    finalized = ffg.finalized
    # The 2nd/3rd/4th most recent epochs are justified; the 2nd uses the 4th as source.
    if all(bits[1:4]) and old_previous.epoch + 3 == current_epoch:
        finalized = old_previous
    # The 2nd/3rd most recent epochs are justified; the 2nd uses the 3rd as source.
    if all(bits[1:3]) and old_previous.epoch + 2 == current_epoch:
        finalized = old_previous
    # The 1st/2nd/3rd most recent epochs are justified; the 1st uses the 3rd as source.
    if all(bits[0:3]) and old_current.epoch + 2 == current_epoch:
        finalized = old_current
    # The 1st/2nd most recent epochs are justified; the 1st uses the 2nd as source.
    if all(bits[0:2]) and old_current.epoch + 1 == current_epoch:
        finalized = old_current
    return FfgState(previous_justified, current_justified, finalized, bits)
