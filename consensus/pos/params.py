"""Proof-of-stake parameters: presets and their reasons (DESIGN.md section 5, STYLE.md 9)."""

from dataclasses import dataclass

from consensus.errors import DecodeError


@dataclass(frozen=True)
class PosParams:
    slot_ms: int  # one proposer per slot
    slots_per_epoch: int  # checkpoints, votes and rewards are per epoch
    stake_min: int  # the least stake a validator may hold; below it the validator exits
    activation_delay_epochs: int  # a new stake votes only after this many epochs (no instant takeover)
    unbonding_epochs: int  # unstaked funds stay slashable this long before returning
    slash_penalty_percent: int  # of the offender's stake, burned at once
    whistleblower_percent: int  # of that penalty, paid to the proposer that includes the evidence
    inactivity_leak_after_epochs: int  # finality stalled longer than this starts the leak
    inactivity_penalty_quotient: int  # leak per epoch = stake * stalled_epochs // quotient
    attestation_reward: int  # per timely attestation included
    proposer_reward_percent: int  # of the attestation rewards in a block, paid to its proposer

    def validate(self) -> None:
        if self.slot_ms < 100 or self.slots_per_epoch < 2:
            raise DecodeError("slot_ms must be at least 100 and slots_per_epoch at least 2")
        if self.stake_min < 1 or self.activation_delay_epochs < 1 or self.unbonding_epochs < 1:
            raise DecodeError("stake_min, activation_delay_epochs and unbonding_epochs must be positive")
        for name in ("slash_penalty_percent", "whistleblower_percent", "proposer_reward_percent"):
            if not 0 <= getattr(self, name) <= 100:
                raise DecodeError(f"{name} must be a percentage")
        if self.slash_penalty_percent == 0:
            raise DecodeError("a slashing must cost something: slash_penalty_percent > 0")
        if self.inactivity_leak_after_epochs < 2 or self.inactivity_penalty_quotient < 1:
            raise DecodeError("the leak starts after at least 2 epochs and its quotient is positive")

    def epoch_of(self, slot: int) -> int:
        return slot // self.slots_per_epoch

    def first_slot(self, epoch: int) -> int:
        return epoch * self.slots_per_epoch


POS_PRESETS: dict[str, dict[str, int]] = {
    # Simulation and tests: short slots and epochs so finality, unbonding and the leak
    # show within a simulated minute or two.
    "minimal": dict(
        slot_ms=1_000, slots_per_epoch=4, stake_min=1_000_000, activation_delay_epochs=2, unbonding_epochs=4,
        slash_penalty_percent=10, whistleblower_percent=10, inactivity_leak_after_epochs=4,
        inactivity_penalty_quotient=64, attestation_reward=100, proposer_reward_percent=12,
    ),
    # Real nodes (local processes, docker): 2 s slots leave room for gossip between
    # processes on one machine; 8-slot epochs finalize in about half a minute.
    "testnet": dict(
        slot_ms=2_000, slots_per_epoch=8, stake_min=1_000_000, activation_delay_epochs=2, unbonding_epochs=8,
        slash_penalty_percent=10, whistleblower_percent=10, inactivity_leak_after_epochs=4,
        inactivity_penalty_quotient=256, attestation_reward=100, proposer_reward_percent=12,
    ),
}

for _preset in POS_PRESETS.values():
    PosParams(**_preset).validate()
