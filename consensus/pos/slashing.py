"""Slashing: the three slashable offences, checking evidence, and a detector that finds it.

What is slashable is the Casper FFG LINK of a vote, source checkpoint -> target
checkpoint, as in the Casper FFG paper where a vote is a link s -> t. The reason: a
validator attests in EVERY slot, because its LMD-GHOST head vote changes slot by
slot, and all its attestations of one epoch carry the same link (its justified source
and the current epoch's target on its branch). Those per-slot votes differ in slot and
head but are honest; only two different links for one target epoch, or links that
surround each other, can help finalize two conflicting checkpoints.

The rules (Casper FFG's two commandments, plus the proposer's one):
1. Double proposal: one validator signs two different blocks for the same slot.
2. Double vote: one validator signs two attestations with the same target epoch but
   different links, (a.source, a.target) != (b.source, b.target): another target root,
   or another source checkpoint (epoch or root) (FFG commandment 1). Two attestations
   with the same link that differ only in slot and/or head are NOT a double vote: that
   is the normal vote of each slot.
3. Surround vote: one validator signs two attestations where one's source-to-target
   span strictly surrounds the other's: a.source < b.source and b.target < a.target
   (by epoch), or the reverse (FFG commandment 2). Equal sources or equal targets do
   not surround; a shared boundary (a.target == b.source) is the honest chain of votes.

Both attestation conditions are symmetric: the order of the two pieces of evidence
does not matter, and both depend on the links only. The checks here are the pure
rules only. Whether the offender can still be slashed (not slashed before, stake still
locked) is the validator lifecycle's rule: consensus.pos.validators refuses a second
SLASHED event.
"""

from collections.abc import Callable
from typing import NamedTuple

from consensus.errors import ValidationError
from consensus.pos.types import (
    Attestation,
    AttestationData,
    AttesterSlashing,
    Checkpoint,
    Proposal,
    ProposerSlashing,
    SignedProposal,
)

# A message for the epoch after ours may arrive just before our own epoch tick: accept
# one epoch of clock disparity. Anything further ahead is ignored, which is what keeps
# a validator from filling the detector with votes for epochs that have not come.
FUTURE_EPOCHS_MAX = 1


class InvalidEvidence(ValidationError):
    """Slashing evidence that does not prove an offence: reject it and the block or peer that sent it."""


# --- The conditions (predicates on the signed contents; signatures are checked below) ---


def is_double_proposal(a: Proposal, b: Proposal) -> bool:
    """Rule 1: the same validator, the same slot, two different blocks."""
    return a.validator == b.validator and a.slot == b.slot and a.block_root != b.block_root


def get_link(data: AttestationData) -> tuple[Checkpoint, Checkpoint]:
    """The FFG link a vote carries, (source, target): what the slashing rules judge."""
    return data.source, data.target


def is_double_vote(a: AttestationData, b: AttestationData) -> bool:
    """Rule 2: two different links for the same target epoch (slot and head do not count)."""
    return a.target.epoch == b.target.epoch and get_link(a) != get_link(b)


def is_surround_vote(a: AttestationData, b: AttestationData) -> bool:
    """Rule 3: one vote's span strictly surrounds the other's (either way round)."""
    return _surrounds(a, b) or _surrounds(b, a)


def is_slashable_attestation_pair(a: AttestationData, b: AttestationData) -> bool:
    return is_double_vote(a, b) or is_surround_vote(a, b)


def _surrounds(outer: AttestationData, inner: AttestationData) -> bool:
    return outer.source.epoch < inner.source.epoch and inner.target.epoch < outer.target.epoch


# --- Checking evidence from a peer or a block ---


def check_proposer_slashing(
    evidence: ProposerSlashing, chain_id: str, public_key_of: Callable[[int], bytes | None]
) -> int:
    """The index of the validator that `evidence` proves made a double proposal.

    `public_key_of` gives a validator's public key by index, or None for an index the
    registry does not hold. Raises InvalidEvidence saying which rule failed. The cheap
    structural checks come first, the two signature checks last.
    """
    a, b = evidence.a.proposal, evidence.b.proposal
    # Both proposals must come from one validator.
    if a.validator != b.validator:
        raise InvalidEvidence(f"proposer slashing names two validators, {a.validator} and {b.validator}")
    # They must be for one slot ...
    if a.slot != b.slot:
        raise InvalidEvidence(f"not a double proposal: slots {a.slot} and {b.slot} differ")
    # ... and for two different blocks.
    if a.block_root == b.block_root:
        raise InvalidEvidence(f"not a double proposal: both proposals for slot {a.slot} are the same block")
    assert is_double_proposal(a, b)
    public_key = _known_key(a.validator, public_key_of)
    # Both signatures must be the validator's, on this chain.
    for name, signed in (("a", evidence.a), ("b", evidence.b)):
        if not signed.verify(chain_id, public_key):
            raise InvalidEvidence(f"proposal {name} is not signed by validator {a.validator} on chain {chain_id!r}")
    return a.validator


def check_attester_slashing(
    evidence: AttesterSlashing, chain_id: str, public_key_of: Callable[[int], bytes | None]
) -> int:
    """The index of the validator that `evidence` proves made a double or surround vote.

    Same contract as check_proposer_slashing.
    """
    a, b = evidence.a, evidence.b
    # Both attestations must come from one validator.
    if a.validator != b.validator:
        raise InvalidEvidence(f"attester slashing names two validators, {a.validator} and {b.validator}")
    # Two votes with one link prove nothing: they are the same vote, or the votes of two
    # slots of one epoch (only slot and head differ), which an honest validator signs.
    if get_link(a.data) == get_link(b.data):
        raise InvalidEvidence(
            f"not slashable: both attestations carry the same FFG link {_describe(a.data)} "
            f"(slots {a.data.slot} and {b.data.slot})"
        )
    # The links must break rule 2 or rule 3.
    if not is_slashable_attestation_pair(a.data, b.data):
        raise InvalidEvidence(
            f"not slashable: links {_describe(a.data)} and {_describe(b.data)} are neither a double vote "
            "(same target epoch, different link) nor a surround vote"
        )
    public_key = _known_key(a.validator, public_key_of)
    # Both signatures must be the validator's, on this chain.
    for name, attestation in (("a", a), ("b", b)):
        if not attestation.verify(chain_id, public_key):
            raise InvalidEvidence(f"attestation {name} is not signed by validator {a.validator} on chain {chain_id!r}")
    return a.validator


def _describe(data: AttestationData) -> str:
    """A link for messages: epochs and the first bytes of the roots, enough to tell two apart."""
    source, target = data.source, data.target
    return f"{source.epoch}:{source.root[:4].hex()}->{target.epoch}:{target.root[:4].hex()}"


def _known_key(validator: int, public_key_of: Callable[[int], bytes | None]) -> bytes:
    public_key = public_key_of(validator)
    if public_key is None:
        raise InvalidEvidence(f"validator {validator} is not in the registry")
    return public_key


# --- Finding evidence in what we see ---


class _Seen(NamedTuple):
    """What one validator signed within the window."""

    proposals: dict[int, SignedProposal]  # by slot: at most one per slot, else it is evidence
    # By target epoch, one attestation carrying the link seen for that epoch: a second
    # link for the epoch is evidence, the same link again (a later slot) is not stored.
    attestations: dict[int, Attestation]


class SlashingDetector:
    """Watches signed proposals and attestations (from gossip and from blocks) and
    returns evidence the first time a validator's messages conflict.

    Feed it only messages whose signatures have verified (gossip validation and block
    validation do that first): it does not check signatures, and one forged message
    stored here would make it report useless evidence and then ignore the validator.

    Validators attest every slot with one FFG link per epoch, so per validator and
    target epoch it keeps ONE attestation, the first seen, standing for the link: a
    vote with the same link (another slot or head) is no offence and is dropped, a
    vote with another link for that target epoch is a double vote, and surround votes
    are found by comparing the new link with the one of every kept target epoch.

    Bounds: it keeps, per validator, the proposals by slot and one attestation per
    target epoch of the last `epochs_kept_max` epochs (plus FUTURE_EPOCHS_MAX ahead):
    at most (epochs_kept_max + FUTURE_EPOCHS_MAX) * (slots_per_epoch + 1) messages per
    validator, and validators are bounded by the registry since signatures verified.
    Messages older than the window are ignored and stored ones are pruned when the
    epoch advances, so EVIDENCE OLDER THAN THE WINDOW IS NOT DETECTED: a vote that
    surrounds a vote whose target epoch left the window goes unnoticed. A surround
    vote needs the old vote still in memory, so a longer window catches surrounds
    over longer spans at a memory cost linear in its length.

    Each offender is reported once: after its evidence is returned (or mark_slashed
    says it was slashed by someone else's evidence), its messages are ignored and its
    records dropped. So the same evidence is never reported twice.
    """

    def __init__(self, slots_per_epoch: int, epochs_kept_max: int) -> None:
        assert slots_per_epoch >= 1 and epochs_kept_max >= 1
        self.slots_per_epoch = slots_per_epoch
        self.epochs_kept_max = epochs_kept_max
        self.epoch = 0  # the current epoch: advanced by on_epoch, never backwards
        self._seen: dict[int, _Seen] = {}
        self._slashed: set[int] = set()

    def on_epoch(self, epoch: int) -> None:
        """Time is an input: move the window to `epoch` and forget what fell out of it."""
        if epoch <= self.epoch:
            return
        self.epoch = epoch
        floor = self.floor_epoch()
        for validator in list(self._seen):
            seen = self._seen[validator]
            for slot in [s for s in seen.proposals if s // self.slots_per_epoch < floor]:
                del seen.proposals[slot]
            for target in [t for t in seen.attestations if t < floor]:
                del seen.attestations[target]
            if not seen.proposals and not seen.attestations:
                del self._seen[validator]

    def floor_epoch(self) -> int:
        """The oldest epoch still watched."""
        return max(0, self.epoch - self.epochs_kept_max + 1)

    def on_proposal(self, signed: SignedProposal) -> ProposerSlashing | None:
        proposal = signed.proposal
        if proposal.validator in self._slashed or not self._in_window(proposal.slot // self.slots_per_epoch):
            return None
        seen = self._seen_of(proposal.validator)
        earlier = seen.proposals.get(proposal.slot)
        if earlier is None:
            seen.proposals[proposal.slot] = signed
            return None
        if not is_double_proposal(earlier.proposal, proposal):
            return None  # the same block again
        self.mark_slashed(proposal.validator)
        return ProposerSlashing(earlier, signed)

    def on_attestation(self, attestation: Attestation) -> AttesterSlashing | None:
        validator, data = attestation.validator, attestation.data
        if validator in self._slashed or not self._in_window(data.target.epoch):
            return None
        seen = self._seen_of(validator)
        kept = seen.attestations.get(data.target.epoch)
        if kept is not None and get_link(kept.data) == get_link(data):
            # The vote of another slot with the link kept for this epoch. The rules judge
            # links only, so it conflicts with exactly what the kept one conflicts with,
            # and that is nothing (else the validator would be slashed): nothing to store.
            return None
        # One link per target epoch is kept, so this scans at most the window.
        for earlier in seen.attestations.values():
            if is_slashable_attestation_pair(earlier.data, data):
                self.mark_slashed(validator)
                return AttesterSlashing(earlier, attestation)
        # No link was kept for this target epoch (another one would have been a double vote).
        seen.attestations[data.target.epoch] = attestation
        return None

    def mark_slashed(self, validator: int) -> None:
        """Evidence against `validator` is known (ours or included by others): stop watching it."""
        self._slashed.add(validator)
        self._seen.pop(validator, None)

    def is_caught(self, validator: int) -> bool:
        """Evidence against `validator` was found or learned (or it was slashed): nothing more to watch."""
        return validator in self._slashed

    def stored_count(self) -> int:
        """Messages held now (for tests and metrics)."""
        return sum(len(s.proposals) + len(s.attestations) for s in self._seen.values())

    def _in_window(self, epoch: int) -> bool:
        return self.floor_epoch() <= epoch <= self.epoch + FUTURE_EPOCHS_MAX

    def _seen_of(self, validator: int) -> _Seen:
        seen = self._seen.get(validator)
        if seen is None:
            seen = self._seen[validator] = _Seen({}, {})
        return seen
