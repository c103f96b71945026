"""The proof-of-stake engine: slots, proposers, votes, FFG finality, LMD-GHOST, slashing.

A block's place in time is its slot: `timestamp_ms = genesis + slot * slot_ms`
exactly. Its engine body (Block.consensus) holds the proposer's index and reveal, the
attestations it includes and any slashing evidence; its seal is the proposer's
signature over `Proposal(proposer, slot, header hash)`.

The engine state (State.engine, a `PosState`) carries the validator registry, the
RANDAO seed, the FFG checkpoints, each epoch's boundary block and who voted for it.
`process_body` applies a block on top of its parent's state; at the first block of a
new epoch it first runs the epoch transitions of every epoch boundary crossed:

  1. FFG weighing (consensus/pos/finality.py) of the epoch that ended,
  2. rewards for timely, correct votes of the epoch before; during an inactivity leak
     (finality stalled for more than `inactivity_leak_after_epochs`) no rewards, and
     validators that did not vote lose stake * stalled_epochs // quotient,
  3. the lifecycle table (consensus/pos/validators.py): activations, forced exits, the
     end of unbonding, withdrawals back to the owner's balance,
  4. the seed at the end of the epoch is kept for the proposers two epochs later.

Supply: rewards are issued into balances; leak penalties and the burned part of
slashing penalties leave the stakes, so balances + stakes == genesis supply + issued
- burned at every block (State.total_balance counts `locked()`).

Slashing evidence travels in blocks and on its own gossip topic (EVIDENCE): what the
detector finds is handed to the core (`take_new_evidence`) to publish, and evidence
from peers (`on_evidence`) joins the pool for the next proposal and takes the
offender's weight out of the fork choice.
"""

import functools
from typing import Any, NamedTuple

from consensus import codec
from consensus.codec import read_bytes, read_list, read_uint
from consensus.crypto import HASH_BYTES, SIGNATURE_BYTES, address_of, sha256, verify
from consensus.errors import DecodeError, InvalidBlock, InvalidTransaction
from consensus.genesis import VALIDATORS_MAX, Genesis
from consensus.params import params_from
from consensus.pos.finality import FfgState, weigh_justification_and_finalization
from consensus.pos.forkchoice import ForkChoice
from consensus.pos.params import PosParams
from consensus.pos.selection import SEED_LOOKAHEAD_EPOCHS, mix_seed, select_proposer
from consensus.pos.slashing import (
    InvalidEvidence,
    SlashingDetector,
    check_attester_slashing,
    check_proposer_slashing,
)
from consensus.pos.types import (
    Attestation,
    AttestationData,
    AttesterSlashing,
    Checkpoint,
    Proposal,
    ProposerSlashing,
    SignedProposal,
    reveal_signing_bytes,
)
from consensus.pos.validators import (
    FAR_FUTURE_EPOCH,
    InvalidStake,
    InvalidTransition,
    Status,
    Validator,
    is_active,
    is_slashable,
    on_slashed,
    on_stake,
    on_unstake,
    on_withdrawn,
    process_epoch,
)
from consensus.state import Account, State
from consensus.types import NONCE_BYTES, TX_STAKE, Block, BlockHeader, Transaction

ATTESTATIONS_PER_BLOCK_MAX = 2_048
SLASHINGS_PER_BLOCK_MAX = 16
# One piece of gossiped evidence is two signed votes (about 200 bytes each) or two
# signed proposals, in an envelope: under 600 bytes. The bound leaves room for larger
# integers and no more, so a peer cannot make us parse a big message as evidence.
EVIDENCE_BYTES_MAX = 1_024
EVIDENCE_PROPOSER = 1  # the kind tag of an encoded ProposerSlashing
EVIDENCE_ATTESTER = 2  # ... and of an AttesterSlashing
EPOCHS_KEPT = 4  # seeds, boundary roots and vote sets older than this are dropped
GENESIS_ROOT = bytes(HASH_BYTES)  # names the genesis block in checkpoints (its hash needs this state)


# --- the block body ------------------------------------------------------------------------


class PosBody(NamedTuple):
    proposer: int
    reveal: bytes  # the proposer's signature over the epoch (RANDAO)
    attestations: tuple[Attestation, ...] = ()
    proposer_slashings: tuple[ProposerSlashing, ...] = ()
    attester_slashings: tuple[AttesterSlashing, ...] = ()


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def encode_body(body: PosBody) -> bytes:
    return codec.encode(_plain(body))


def _checkpoint(value: Any, what: str) -> Checkpoint:
    f = read_list(value, what, 2)
    return Checkpoint(read_uint(f[0], f"{what}.epoch"), read_bytes(f[1], f"{what}.root", HASH_BYTES))


def _data(value: Any, what: str) -> AttestationData:
    f = read_list(value, what, 4)
    return AttestationData(read_uint(f[0], f"{what}.slot"), read_bytes(f[1], f"{what}.head", HASH_BYTES),
                           _checkpoint(f[2], f"{what}.source"), _checkpoint(f[3], f"{what}.target"))


def read_attestation(value: Any, what: str = "attestation") -> Attestation:
    f = read_list(value, what, 3)
    return Attestation(read_uint(f[0], f"{what}.validator"), _data(f[1], f"{what}.data"),
                       read_bytes(f[2], f"{what}.signature", SIGNATURE_BYTES))


def _signed_proposal(value: Any, what: str) -> SignedProposal:
    f = read_list(value, what, 2)
    p = read_list(f[0], f"{what}.proposal", 3)
    proposal = Proposal(read_uint(p[0], f"{what}.validator"), read_uint(p[1], f"{what}.slot"),
                        read_bytes(p[2], f"{what}.block_root", HASH_BYTES))
    return SignedProposal(proposal, read_bytes(f[1], f"{what}.signature", SIGNATURE_BYTES))


def _proposer_slashing(value: Any, what: str) -> ProposerSlashing:
    return ProposerSlashing(*(_signed_proposal(x, what) for x in read_list(value, "evidence", 2)))


def _attester_slashing(value: Any, what: str) -> AttesterSlashing:
    return AttesterSlashing(*(read_attestation(x, what) for x in read_list(value, "evidence", 2)))


def encode_vote(attestation: Attestation) -> bytes:
    return codec.encode(_plain(attestation))


def encode_evidence(evidence: ProposerSlashing | AttesterSlashing) -> bytes:
    """Gossip topic EVIDENCE: [kind, [a, b]], the pair as blocks carry it."""
    kind = EVIDENCE_PROPOSER if isinstance(evidence, ProposerSlashing) else EVIDENCE_ATTESTER
    return codec.encode([kind, _plain(evidence)])


def decode_evidence(data: bytes) -> ProposerSlashing | AttesterSlashing:
    """Bounded decode of gossiped evidence; raises DecodeError. Says nothing about
    whether it proves an offence (check_proposer_slashing / check_attester_slashing)."""
    f = read_list(codec.decode(data, bytes_max=EVIDENCE_BYTES_MAX), "evidence", 2)
    kind = read_uint(f[0], "evidence.kind", 255)
    if kind == EVIDENCE_PROPOSER:
        return _proposer_slashing(f[1], "evidence.proposal")
    if kind == EVIDENCE_ATTESTER:
        return _attester_slashing(f[1], "evidence.attestation")
    raise DecodeError(f"evidence.kind: unknown kind {kind}")


def offender_of(evidence: ProposerSlashing | AttesterSlashing) -> int:
    """The validator the evidence accuses (its first half's; the checks require both agree)."""
    return evidence.a.proposal.validator if isinstance(evidence, ProposerSlashing) else evidence.a.validator


@functools.lru_cache(maxsize=1 << 12)
def decode_vote(data: bytes) -> Attestation:
    """Bounded decode of a gossiped vote (memoised: immutable, and the simulator's nodes,
    which share one process, each receive the same vote)."""
    return read_attestation(codec.decode(data, bytes_max=1024))


@functools.lru_cache(maxsize=256)
def decode_body(data: bytes) -> PosBody:
    """Bounded decode of a block body (memoised: validation, processing and fork choice
    each read the same block's body)."""
    return _decode_body(data)


def _decode_body(data: bytes) -> PosBody:
    f = read_list(codec.decode(data), "body", 5)
    return PosBody(
        read_uint(f[0], "body.proposer"),
        read_bytes(f[1], "body.reveal", SIGNATURE_BYTES),
        tuple(read_attestation(a, "body.attestation")
              for a in read_list(f[2], "body.attestations", length_max=ATTESTATIONS_PER_BLOCK_MAX)),
        tuple(_proposer_slashing(e, "body.proposer_slashing")
              for e in read_list(f[3], "body.proposer_slashings", length_max=SLASHINGS_PER_BLOCK_MAX)),
        tuple(_attester_slashing(e, "body.attester_slashing")
              for e in read_list(f[4], "body.attester_slashings", length_max=SLASHINGS_PER_BLOCK_MAX)),
    )


# --- the engine state --------------------------------------------------------------------------


class PosState:
    """The proof-of-stake part of State; copied with it for every block."""

    params: PosParams  # set by the engine (class-level default below); not part of the root

    def __init__(self, validators: list[Validator], seed: bytes, ffg: FfgState, epoch: int,
                 epoch_seeds: dict[int, bytes], boundary_roots: dict[int, bytes], pending_boundaries: list[int],
                 voted: dict[int, set[int]], attested: dict[int, set[int]], slot: int, issued: int = 0):
        self.validators = validators
        self.seed = seed  # RANDAO mix after the latest block
        self.ffg = ffg
        self.epoch = epoch  # epoch of the latest block
        self.slot = slot  # slot of the latest block
        self.epoch_seeds = epoch_seeds  # epoch -> seed at its end
        self.boundary_roots = boundary_roots  # epoch -> its checkpoint block on this chain
        self.pending_boundaries = pending_boundaries  # epochs whose checkpoint is the latest block itself
        self.voted = voted  # target epoch -> validator * slots_per_epoch + slot in epoch, of included votes
        self.attested = attested  # target epoch -> validators whose included vote had the right target
        self.issued = issued  # rewards this engine created (State.issued also counts block rewards)
        # (index, stake) of who may propose in this epoch, fixed at its start: a stake,
        # an unstake or a slashing inside the epoch does not reshuffle its schedule.
        self.proposers: list[tuple[int, int]] = []

    def copy(self) -> "PosState":
        return self._with_params(PosState(list(self.validators), self.seed, self.ffg, self.epoch, dict(self.epoch_seeds),
                        dict(self.boundary_roots), list(self.pending_boundaries),
                        {e: set(v) for e, v in self.voted.items()}, {e: set(v) for e, v in self.attested.items()},
                        self.slot, self.issued))

    def _with_params(self, other: "PosState") -> "PosState":
        other.params = self.params
        other.proposers = self.proposers  # replaced, never changed in place
        return other

    def root(self) -> bytes:
        return sha256(codec.encode([
            "chainlab/pos-state", [list(v) for v in self.validators], self.seed, _plain(tuple(self.ffg)),
            self.epoch, self.slot, sorted(self.epoch_seeds.items()), sorted(self.boundary_roots.items()),
            sorted(self.pending_boundaries), sorted((e, sorted(v)) for e, v in self.voted.items()),
            sorted((e, sorted(v)) for e, v in self.attested.items()), self.issued, self.proposers,
        ]))

    def check_staking(self, tx: Transaction) -> int | None:
        """Raise InvalidTransaction unless the stake or unstake by tx.sender (the validator's
        key signs for it) applies now; returns the sender's validator index, if any."""
        index = next((i for i, v in enumerate(self.validators) if v.public_key == tx.sender), None)
        if tx.kind == TX_STAKE:
            if index is not None:
                raise InvalidTransaction(f"key is already validator {index}: one stake per key")
            if len(self.validators) >= VALIDATORS_MAX:
                raise InvalidTransaction(f"the registry is full ({VALIDATORS_MAX} validators)")
            if tx.amount < self.params.stake_min:
                raise InvalidTransaction(f"stake {tx.amount} is below the minimum of {self.params.stake_min}")
            return None
        if index is None:
            raise InvalidTransaction("only a validator can unstake")
        if self.validators[index].status is not Status.ACTIVE:
            raise InvalidTransaction(f"validator {index} is {self.validators[index].status.name.lower()}, not active")
        return index

    def process_staking(self, tx: Transaction) -> None:
        """Apply a checked stake (a new pending validator) or unstake (unbonding starts);
        the balance side is the caller's."""
        index = self.check_staking(tx)
        try:
            if tx.kind == TX_STAKE:
                self.validators.append(on_stake(tx.sender, tx.amount, self.epoch, self.params))
            else:
                assert index is not None
                self.validators[index] = on_unstake(self.validators[index], self.epoch, self.params)
        except (InvalidStake, InvalidTransition) as exc:
            raise InvalidTransaction(str(exc)) from None

    def slashed(self) -> list[int]:
        return [i for i, v in enumerate(self.validators) if v.slashed]

    def locked(self) -> int:
        return sum(v.stake for v in self.validators)

    def active(self) -> list[tuple[int, int]]:
        """(index, stake) of the validators that vote and propose now, in registry order."""
        return [(i, v.stake) for i, v in enumerate(self.validators) if is_active(v.status) and v.stake > 0]

    def active_stake(self) -> int:
        return sum(stake for _, stake in self.active())

    def stake_of(self, validators: set[int]) -> int:
        return sum(self.validators[i].stake for i in validators if is_active(self.validators[i].status))

    def seed_for(self, epoch: int) -> bytes:
        """The seed proposers of `epoch` are drawn from (known two epochs ahead)."""
        return self.epoch_seeds.get(epoch - SEED_LOOKAHEAD_EPOCHS, self.epoch_seeds[-1])

    def public_key_of(self, index: int) -> bytes | None:
        return self.validators[index].public_key if 0 <= index < len(self.validators) else None


# --- votes and evidence waiting for a block --------------------------------------------------------


class VotePool:
    """Recent signed votes from gossip and our own, one per validator and slot, and
    slashing evidence; what a proposer puts in its block. Bounded: only votes of
    registered, active validators for the last two epochs are kept.

    Evidence stays after a block includes it: a reorg can drop that block, and then the
    evidence must go into the winning branch (a proposer takes what its parent's state
    can still slash, `evidence_for_inclusion`). It leaves once its offender can no longer
    be slashed in the final state, which no reorg undoes (`drop_evidence_against`). One
    piece per offender, at most EVIDENCE_MAX of each kind."""

    EVIDENCE_MAX = 4 * SLASHINGS_PER_BLOCK_MAX

    def __init__(self, slots_per_epoch: int):
        self.slots_per_epoch = slots_per_epoch
        self.votes: dict[tuple[int, int], Attestation] = {}  # (slot, validator) -> vote
        self._pruned_below = -1
        self.proposer_slashings: list[ProposerSlashing] = []
        self.attester_slashings: list[AttesterSlashing] = []

    def add(self, attestation: Attestation) -> bool:
        key = (attestation.data.slot, attestation.validator)
        if key in self.votes:
            return False
        self.votes[key] = attestation
        return True

    def prune(self, slot: int) -> None:
        floor = slot - 2 * self.slots_per_epoch
        if floor <= self._pruned_below:
            return  # pruned at this slot already: the pool is swept once a slot, not once a vote
        self._pruned_below = floor
        for key in [k for k in self.votes if k[0] < floor]:
            del self.votes[key]

    def add_evidence(self, evidence: ProposerSlashing | AttesterSlashing) -> bool:
        """Keep `evidence` (checked already) unless its offender has some here, or the kind is full."""
        if self.holds_evidence_against(offender_of(evidence)):
            return False
        target = self.proposer_slashings if isinstance(evidence, ProposerSlashing) else self.attester_slashings
        if len(target) >= self.EVIDENCE_MAX:
            return False
        target.append(evidence)
        return True

    def holds_evidence_against(self, validator: int) -> bool:
        return (any(e.a.proposal.validator == validator for e in self.proposer_slashings)
                or any(e.a.validator == validator for e in self.attester_slashings))

    def drop_evidence_against(self, validators: set[int]) -> None:
        if not validators or not (self.proposer_slashings or self.attester_slashings):
            return
        self.proposer_slashings = [e for e in self.proposer_slashings if e.a.proposal.validator not in validators]
        self.attester_slashings = [e for e in self.attester_slashings if e.a.validator not in validators]

    def evidence_for_inclusion(self, engine: "PosEngine", parent: Any, slot: int
                               ) -> tuple[tuple[ProposerSlashing, ...], tuple[AttesterSlashing, ...]]:
        """The pooled evidence a block at `slot` on `parent` may carry: offenders the
        parent's state can still slash (not on this branch yet, or dropped by a reorg),
        one piece each, proven against this branch's registry (every rule of process_body)."""
        if not (self.proposer_slashings or self.attester_slashings):
            return (), ()
        s: PosState = engine.state_at(parent.state, slot).engine
        taken: set[int] = set()

        def chosen(pool: list, check: Any) -> tuple:
            out = []
            for evidence in pool:
                offender = offender_of(evidence)
                if len(out) >= SLASHINGS_PER_BLOCK_MAX or offender in taken \
                        or not 0 <= offender < len(s.validators) or not is_slashable(s.validators[offender].status):
                    continue
                try:
                    check(evidence, engine.chain_id, s.public_key_of)
                except InvalidEvidence:
                    continue  # another registry on this branch: the index names another key
                taken.add(offender)
                out.append(evidence)
            return tuple(out)

        return chosen(self.proposer_slashings, check_proposer_slashing), \
            chosen(self.attester_slashings, check_attester_slashing)

    def for_inclusion(self, engine: "PosEngine", parent: Any, slot: int) -> list[Attestation]:
        """The pooled votes a block at `slot` on `parent` may carry (every rule of
        _include_attestation but the signature, which was checked on arrival)."""
        state = engine.state_at(parent.state, slot)
        s: PosState = state.engine
        epoch = engine.epoch_of(slot)
        spe = self.slots_per_epoch
        chosen = []
        for (vslot, validator), a in sorted(self.votes.items()):
            d = a.data
            if not (vslot < slot and slot - vslot <= spe) or not 0 <= validator < len(s.validators):
                continue
            target_epoch = engine.epoch_of(vslot)
            if d.target.epoch != target_epoch or target_epoch not in (epoch, epoch - 1):
                continue
            if d.source != (s.ffg.current_justified if target_epoch == epoch else s.ffg.previous_justified):
                continue
            if validator * spe + vslot % spe in s.voted.get(target_epoch, ()) or not is_active(s.validators[validator].status):
                continue
            chosen.append(a)
        return chosen[:ATTESTATIONS_PER_BLOCK_MAX]


# --- the engine -----------------------------------------------------------------------------------


class PosEngine:
    name = "pos"
    minable = False  # blocks come from the chosen proposer, not from a nonce search

    def __init__(self, params: PosParams, genesis: Genesis):
        self.pool = VotePool(params.slots_per_epoch)
        self.detector = SlashingDetector(params.slots_per_epoch, EPOCHS_KEPT * 4)
        self.params = params
        self.genesis = genesis
        self.chain_id = genesis.chain_id
        self.genesis_ms = genesis.timestamp_ms
        # Fork choice needs the whole tree's votes, not one branch's: it lives here, fed
        # with every block added (its votes included) and, later, gossiped votes.
        self.fork_choice: ForkChoice | None = None
        # Evidence the detector found, encoded, until the core takes it to gossip. Each
        # offender is reported once, so this holds at most one entry per validator.
        self._new_evidence: list[bytes] = []
        self._evidence_final: bytes | None = None  # the final block the pool's evidence was last pruned at

    @classmethod
    def from_genesis(cls, genesis: Genesis) -> "PosEngine":
        if not genesis.validators:
            raise DecodeError("a proof-of-stake genesis needs at least one validator")
        return cls(params_from(PosParams, genesis), genesis)

    # --- time -------------------------------------------------------------------------------------

    def slot_of(self, header: BlockHeader) -> int:
        return (header.timestamp_ms - self.genesis_ms) // self.params.slot_ms

    def slot_at(self, now_ms: int) -> int:
        return max(0, (now_ms - self.genesis_ms) // self.params.slot_ms)

    def slot_time_ms(self, slot: int) -> int:
        return self.genesis_ms + slot * self.params.slot_ms

    def epoch_of(self, slot: int) -> int:
        return slot // self.params.slots_per_epoch

    # --- genesis ------------------------------------------------------------------------------

    def genesis_bits(self) -> int:
        return 0

    def next_bits(self, parent: Any, tree: Any) -> int:
        return 0

    def initial_state(self, genesis: Genesis) -> PosState:
        validators = [Validator(key, stake, Status.ACTIVE, 0, FAR_FUTURE_EPOCH, FAR_FUTURE_EPOCH, False)
                      for key, stake in genesis.validators]
        seed = sha256(b"chainlab/genesis-seed" + genesis.hash)
        state = PosState(validators, seed, FfgState.genesis(GENESIS_ROOT), 0, {-1: seed}, {0: GENESIS_ROOT}, [],
                         {}, {}, 0)
        state.params = self.params
        state.proposers = state.active()
        return state

    # --- rules -------------------------------------------------------------------------------------

    def validate_header(self, header: BlockHeader, block_hash: bytes, parent: Any, tree: Any) -> None:
        if header.bits != 0 or header.nonce != bytes(NONCE_BYTES):
            raise InvalidBlock("a proof-of-stake header has zero bits and a zero nonce")
        offset = header.timestamp_ms - self.genesis_ms
        if offset <= 0 or offset % self.params.slot_ms:
            raise InvalidBlock(f"timestamp {header.timestamp_ms} is not the start of a slot after genesis")
        if parent.height > 0 and self.slot_of(header) <= self.slot_of(parent.header):
            raise InvalidBlock("a block's slot must come after its parent's")

    def validate_body(self, block: Block, parent: Any, tree: Any) -> None:
        """The body decodes, and the seal and reveal are the named proposer's."""
        try:
            body = decode_body(block.consensus)
        except DecodeError as exc:
            raise InvalidBlock(f"malformed proof-of-stake body: {exc}") from None
        engine_state: PosState = parent.state.engine
        key = engine_state.public_key_of(body.proposer)
        if key is None:
            raise InvalidBlock(f"proposer {body.proposer} is not a validator")
        slot = self.slot_of(block.header)
        proposal = Proposal(body.proposer, slot, block.header.hash)
        if len(block.seal) != SIGNATURE_BYTES or not SignedProposal(proposal, block.seal).verify(self.chain_id, key):
            raise InvalidBlock("the seal is not the proposer's signature of this block")
        if not verify(key, body.reveal, reveal_signing_bytes(self.chain_id, self.epoch_of(slot))):
            raise InvalidBlock("the reveal is not the proposer's signature of the epoch")

    def process_body(self, state: State, block: Block, parent: Any, tree: Any) -> None:
        s: PosState = state.engine
        header = block.header
        try:
            body = decode_body(block.consensus)
        except DecodeError as exc:
            raise InvalidBlock(f"malformed proof-of-stake body: {exc}") from None
        # The latest block's own checkpoints are known now: it is our parent.
        for epoch in s.pending_boundaries:
            s.boundary_roots[epoch] = header.parent
        s.pending_boundaries = []
        slot = self.slot_of(header)
        epoch = self.epoch_of(slot)
        for boundary in range(s.epoch + 1, epoch + 1):
            self._epoch_transition(state, s, boundary)
        # Checkpoints of the epochs this block's slot gap crosses: the parent, or this block.
        for e in range(self.epoch_of(s.slot) + 1, epoch + 1):
            if self.params.first_slot(e) == slot:
                s.pending_boundaries.append(e)
            else:
                s.boundary_roots[e] = header.parent
        s.slot = slot
        # The proposer is the one the seed and the stakes chose for this slot.
        expected = select_proposer(s.seed_for(epoch), slot, s.proposers)
        if body.proposer != expected:
            raise InvalidBlock(f"slot {slot} belongs to validator {expected}, not {body.proposer}")
        proposer = s.validators[body.proposer]
        if header.producer != address_of(proposer.public_key):
            raise InvalidBlock("the producer is not the proposer's address")
        s.seed = mix_seed(s.seed, body.reveal)
        # The includer earns a share of each vote's reward (new coins) and the
        # whistleblower's part of each slashing penalty (coins that left a stake).
        issued = sum(self._include_attestation(s, a, slot, epoch) for a in body.attestations)
        whistle = 0
        for evidence in body.proposer_slashings:
            whistle += self._slash(state, s, self._check(check_proposer_slashing, evidence, s), epoch)
        for evidence in body.attester_slashings:
            whistle += self._slash(state, s, self._check(check_attester_slashing, evidence, s), epoch)
        if issued or whistle:
            _credit(state, header.producer, issued + whistle)
            state.issued += issued
            s.issued += issued

    def _check(self, check: Any, evidence: Any, s: PosState) -> int:
        try:
            return check(evidence, self.chain_id, s.public_key_of)
        except InvalidEvidence as exc:
            raise InvalidBlock(f"invalid slashing evidence: {exc}") from None

    def _include_attestation(self, s: PosState, a: Attestation, slot: int, epoch: int) -> int:
        """Count one vote; returns the includer's reward for it (new coins, to be issued)."""
        p = self.params
        d = a.data
        key = s.public_key_of(a.validator)
        if key is None or not is_active(s.validators[a.validator].status):
            raise InvalidBlock(f"attestation by {a.validator}, who is not an active validator")
        if not (d.slot < slot and slot - d.slot <= p.slots_per_epoch):
            raise InvalidBlock(f"attestation of slot {d.slot} is outside the inclusion window of slot {slot}")
        target_epoch = self.epoch_of(d.slot)
        if d.target.epoch != target_epoch or target_epoch not in (epoch, epoch - 1):
            raise InvalidBlock(f"attestation target epoch {d.target.epoch} does not fit its slot {d.slot}")
        source = s.ffg.current_justified if target_epoch == epoch else s.ffg.previous_justified
        if d.source != source:
            raise InvalidBlock(f"attestation source {d.source.epoch} is not the justified checkpoint {source.epoch}")
        # Validators vote every slot (the head moves); one vote per validator and slot
        # goes on chain, and the first with the epoch's link counts for FFG and rewards.
        slot_key = a.validator * p.slots_per_epoch + d.slot % p.slots_per_epoch
        voted = s.voted.setdefault(target_epoch, set())
        if slot_key in voted:
            raise InvalidBlock(f"validator {a.validator} already has its vote of slot {d.slot} included")
        if not a.verify(self.chain_id, key):
            raise InvalidBlock(f"attestation signature of validator {a.validator} does not verify")
        voted.add(slot_key)
        attested = s.attested.setdefault(target_epoch, set())
        if a.validator in attested or s.boundary_roots.get(target_epoch) != d.target.root:
            return 0  # counted already, or a vote for another branch's checkpoint: no reward
        attested.add(a.validator)
        return p.attestation_reward * p.proposer_reward_percent // 100

    def _slash(self, state: State, s: PosState, offender: int, epoch: int) -> int:
        v = s.validators[offender]
        if not is_slashable(v.status):
            raise InvalidBlock(f"validator {offender} cannot be slashed again ({v.status.name})")
        slashed, penalty, reward = on_slashed(v, epoch, self.params)
        s.validators[offender] = slashed
        state.burned += penalty - reward
        for votes in s.attested.values():
            votes.discard(offender)  # a slashed validator's votes no longer count
        return reward  # paid to the includer; it left the stake, so it is not new issuance

    def _epoch_transition(self, state: State, s: PosState, epoch: int) -> None:
        """Boundary into `epoch`: FFG, rewards and leak, lifecycle, seeds."""
        p = self.params
        ended = epoch - 1
        total = s.active_stake()
        if ended >= 1:
            s.ffg = weigh_justification_and_finalization(
                s.ffg, ended, total,
                s.stake_of(s.attested.get(ended - 1, set())), s.stake_of(s.attested.get(ended, set())),
                Checkpoint(ended - 1, s.boundary_roots.get(ended - 1, GENESIS_ROOT)),
                Checkpoint(ended, s.boundary_roots.get(ended, GENESIS_ROOT)),
            )
        # Votes for the epoch before the one that ended can no longer be included: settle them.
        settled = ended - 1
        if settled >= 0:
            stalled = ended - s.ffg.finalized.epoch
            leaking = stalled > p.inactivity_leak_after_epochs
            good = s.attested.get(settled, set())
            for i, v in enumerate(s.validators):
                if not is_active(v.status) or v.activation_epoch > settled:
                    continue
                if i in good:
                    if not leaking:
                        _credit(state, address_of(v.public_key), p.attestation_reward)
                        state.issued += p.attestation_reward
                        s.issued += p.attestation_reward
                elif leaking:
                    penalty = min(v.stake, v.stake * stalled // p.inactivity_penalty_quotient)
                    s.validators[i] = v._replace(stake=v.stake - penalty)
                    state.burned += penalty
        # The lifecycle: activations, exits below the minimum, unbonding over, withdrawals.
        s.validators = process_epoch(s.validators, epoch, p)
        for i, v in enumerate(s.validators):
            if v.status is Status.WITHDRAWABLE:
                s.validators[i], amount = on_withdrawn(v)
                _credit(state, address_of(v.public_key), amount)
        s.epoch_seeds[ended] = s.seed
        s.epoch = epoch
        s.proposers = s.active()
        for kept in (s.epoch_seeds, s.boundary_roots, s.voted, s.attested):
            for old in [e for e in kept if 0 <= e < epoch - EPOCHS_KEPT]:
                del kept[old]

    # --- fork choice and finality ----------------------------------------------------------------

    def block_score(self, header: BlockHeader) -> int:
        return 1  # a branch's score is its length; fork choice weighs votes, not this

    def choose_head(self, tree: Any, added: Any) -> Any:
        fc = self._fork_choice(tree)
        self._prune_at_finality(tree, fc)
        self._prune_evidence(tree)
        if added is not None:
            fc.on_block(added.hash, added.header.parent, self.slot_of(added.header))
            body = decode_body(added.block.consensus)
            for a in body.attestations:
                # Validators vote every slot: the latest message is the vote of the latest
                # slot, so the slot (not the target epoch) orders a validator's messages.
                fc.on_attestation(a.validator, a.data.slot, a.data.head)
                evidence = self.detector.on_attestation(a)
                if evidence is not None:
                    self._on_found_evidence(fc, evidence)
            proposal = SignedProposal(Proposal(body.proposer, self.slot_of(added.header), added.hash), added.block.seal)
            evidence = self.detector.on_proposal(proposal)
            if evidence is not None:
                self._on_found_evidence(fc, evidence)
            # Evidence a block carries (checked with it) stays in our pool until the final
            # state has slashed its offender: if a reorg drops this block, or the block
            # is on a branch that loses, our proposals on the winning branch carry it.
            for carried in body.proposer_slashings + body.attester_slashings:
                self._retain_evidence(tree, carried)
            s: PosState = added.state.engine
            for i, v in enumerate(s.validators):
                if v.slashed:  # on any branch: the detector need not watch it, the fork choice ignores it
                    self.detector.mark_slashed(i)
                    fc.on_equivocation(i)
            self.detector.on_epoch(s.epoch)
            justified = s.ffg.current_justified
            if justified.epoch > fc.justified.epoch:
                root = self._resolve(tree, justified.root)
                if root in fc:
                    fc.set_justified(Checkpoint(justified.epoch, root))
                    fc.set_balances(dict(s.active()))
        return tree.get(fc.head()) or tree.head

    def _prune_at_finality(self, tree: Any, fc: ForkChoice) -> None:
        """Root the fork choice at the block the chain made final, as the chain itself
        dropped every branch off it: the store, and each head computation, stay as large
        as the unfinalized part of the tree."""
        finalized = tree.head.state.engine.ffg.finalized
        if finalized.epoch <= fc.finalized.epoch:
            return
        root = self._resolve(tree, finalized.root)
        final = tree.canonical[tree.final_height]
        if root != final.hash or root not in fc:
            return  # the chain has not made this block final yet
        justified = fc.justified
        if justified.epoch >= finalized.epoch and not (fc.is_descendant(root, justified.root)
                                                        or fc.is_descendant(justified.root, root)):
            # A justified checkpoint off the finalized branch: only more than a third of
            # the stake equivocating can cause it (the finality invariants report it).
            # The store is kept whole rather than pruned to one side.
            return
        fc.set_finalized(Checkpoint(finalized.epoch, root))

    def _fork_choice(self, tree: Any) -> ForkChoice:
        if self.fork_choice is None:
            genesis = tree.genesis_entry
            self.fork_choice = ForkChoice(genesis.hash, 0)
            self.fork_choice.set_balances(dict(genesis.state.engine.active()))
        return self.fork_choice

    def _resolve(self, tree: Any, root: bytes) -> bytes:
        return tree.genesis_entry.hash if root == GENESIS_ROOT else root

    def final_height(self, tree: Any) -> int:
        finalized = tree.head.state.engine.ffg.finalized
        entry = tree.get(self._resolve(tree, finalized.root))
        return entry.height if entry is not None else tree.final_height

    def status(self, tree: Any) -> dict:
        s: PosState = tree.head.state.engine
        ffg = s.ffg
        return {
            "engine": self.name,
            "slot": s.slot,
            "epoch": s.epoch,
            "justified": {"epoch": ffg.current_justified.epoch, "root": self._resolve(tree, ffg.current_justified.root).hex()},
            "finalized": {"epoch": ffg.finalized.epoch, "root": self._resolve(tree, ffg.finalized.root).hex()},
            "validators": len(s.validators),
            "active_stake": s.active_stake(),
            "participation": self._participation(s),
            "annual_yield_estimate": self._annual_yield(s),
            "slot_ms": self.params.slot_ms,
            "slots_per_epoch": self.params.slots_per_epoch,
        }

    def _participation(self, s: PosState) -> float:
        """Share of active stake whose vote for the last settled epoch's checkpoint is on chain."""
        total = s.active_stake()
        epoch = max(0, s.epoch - 1)
        return round(s.stake_of(s.attested.get(epoch, set())) / total, 4) if total else 0.0

    def _annual_yield(self, s: PosState) -> float:
        """Vote rewards a year over the mean stake, at the current participation (no fees,
        no block rewards, which go to proposers in proportion to stake anyway)."""
        active = s.active()
        if not active:
            return 0.0
        epochs_a_year = 365 * 24 * 3600 * 1000 / (self.params.slot_ms * self.params.slots_per_epoch)
        mean_stake = sum(stake for _, stake in active) / len(active)
        return round(self.params.attestation_reward * epochs_a_year * self._participation(s) / mean_stake, 6)

    def validators_json(self, tree: Any) -> list[dict]:
        s: PosState = tree.head.state.engine
        return [{"index": i, "public_key": v.public_key.hex(), "address": address_of(v.public_key).hex(),
                 "stake": v.stake, "status": v.status.name.lower(), "slashed": v.slashed,
                 "activation_epoch": v.activation_epoch,
                 "exit_epoch": None if v.exit_epoch == FAR_FUTURE_EPOCH else v.exit_epoch,
                 "withdrawable_epoch": None if v.withdrawable_epoch == FAR_FUTURE_EPOCH else v.withdrawable_epoch}
                for i, v in enumerate(s.validators)]

    def slashings_json(self, tree: Any) -> dict:
        s: PosState = tree.head.state.engine

        def pending(offender: int) -> bool:  # the pool also keeps evidence the head's chain carries
            return not 0 <= offender < len(s.validators) or is_slashable(s.validators[offender].status)

        return {
            "included": [{"validator": i, "exit_epoch": v.exit_epoch, "stake_left": v.stake}
                         for i, v in enumerate(s.validators) if v.slashed],
            "pending_evidence": (
                [{"kind": "double_proposal", "validator": e.a.proposal.validator, "slot": e.a.proposal.slot}
                 for e in self.pool.proposer_slashings if pending(e.a.proposal.validator)]
                + [{"kind": "attester", "validator": e.a.validator, "target_epochs": [e.a.data.target.epoch, e.b.data.target.epoch]}
                   for e in self.pool.attester_slashings if pending(e.a.validator)]),
        }

    # --- duties (for producers and tests) ------------------------------------------------------

    def state_at(self, parent_state: State, slot: int) -> State:
        """A copy of `parent_state` with the epoch transitions up to `slot`'s epoch applied."""
        state = parent_state.copy()
        s: PosState = state.engine
        for boundary in range(s.epoch + 1, self.epoch_of(slot) + 1):
            self._epoch_transition(state, s, boundary)
        return state

    def proposer_at(self, parent_state: State, slot: int) -> int:
        """Who proposes `slot` on top of `parent_state`."""
        s: PosState = self.state_at(parent_state, slot).engine
        return select_proposer(s.seed_for(self.epoch_of(slot)), slot, s.proposers)

    def make_producer(self, key: Any, stored_protection: bytes | None, byzantine: frozenset[str]) -> Any:
        from consensus.pos.producer import Producer

        return Producer(self, key, stored_protection, byzantine)

    def on_vote(self, tree: Any, payload: bytes) -> bool | None:
        """A vote from gossip (or our own): True to accept and forward, None to ignore
        (duplicate, stale, unknown head), False for a fault the sender answers for."""
        try:
            a = decode_vote(payload)
        except DecodeError:
            return False
        s: PosState = tree.head.state.engine
        key = s.public_key_of(a.validator)
        if key is None:
            return False
        if not is_active(s.validators[a.validator].status) or a.data.slot + 2 * self.params.slots_per_epoch < s.slot:
            return None
        if self.pool.votes.get((a.data.slot, a.validator)) == a:
            return None  # this very vote again
        if not a.verify(self.chain_id, key):
            return False
        # Every signed vote goes past the detector, a second one for the same slot
        # included: a validator that signs two links for one target is caught here.
        evidence = self.detector.on_attestation(a)
        if evidence is not None:
            self._on_found_evidence(self._fork_choice(tree), evidence)
        if not self.pool.add(a):
            return True if evidence is not None else None  # forward the proof, keep the first vote
        self.pool.prune(s.slot)
        if tree.get(a.data.head) is None:
            return True  # kept for a block; the fork choice learns it when the block is known
        self._fork_choice(tree).on_attestation(a.validator, a.data.slot, a.data.head)  # latest slot wins
        return True

    # --- slashing evidence ---------------------------------------------------------------------

    def _on_found_evidence(self, fc: ForkChoice, evidence: ProposerSlashing | AttesterSlashing) -> None:
        """Our detector caught an offender (it checked nothing twice: both messages had
        verified): keep the evidence for our next proposal, take the offender's weight
        out of the fork choice, and hand the evidence to the core to gossip."""
        self.pool.add_evidence(evidence)
        fc.on_equivocation(offender_of(evidence))
        self._new_evidence.append(encode_evidence(evidence))

    def _retain_evidence(self, tree: Any, evidence: ProposerSlashing | AttesterSlashing) -> None:
        """Keep checked evidence for our proposals, unless the final state cannot slash its offender."""
        offender = offender_of(evidence)
        if self.pool.holds_evidence_against(offender):
            return
        s: PosState = tree.canonical[tree.final_height].state.engine
        if 0 <= offender < len(s.validators) and not is_slashable(s.validators[offender].status):
            return
        self.pool.add_evidence(evidence)

    def _prune_evidence(self, tree: Any) -> None:
        """Once the final block moves: drop the evidence against validators its state can
        no longer slash (slashed, or out of reach); no reorg can bring them back."""
        final = tree.canonical[tree.final_height]
        if final.hash == self._evidence_final or not (self.pool.proposer_slashings or self.pool.attester_slashings):
            return
        self._evidence_final = final.hash
        s: PosState = final.state.engine
        self.pool.drop_evidence_against({i for i, v in enumerate(s.validators) if not is_slashable(v.status)})

    def take_new_evidence(self, tree: Any) -> list[bytes]:
        if not self._new_evidence:
            return []
        found, self._new_evidence = self._new_evidence, []
        return found

    def on_evidence(self, tree: Any, payload: bytes) -> bool | None:
        """Evidence from gossip: True to accept and forward, None to ignore (the offender
        is caught already, by us or by earlier evidence, or slashed), False for evidence
        that is malformed, forged or proves no offence (the sender answers for it)."""
        try:
            evidence = decode_evidence(payload)
        except DecodeError:
            return False
        offender = offender_of(evidence)
        s: PosState = tree.head.state.engine
        # [IGNORE] The offender is known: one piece of evidence per validator is enough.
        if self.detector.is_caught(offender):
            return None
        # [IGNORE] Slashed on our chain already (or past the point where it can be).
        if 0 <= offender < len(s.validators) and not is_slashable(s.validators[offender].status):
            return None
        # [REJECT] It must prove an offence, signed by the offender on this chain.
        check = check_proposer_slashing if isinstance(evidence, ProposerSlashing) else check_attester_slashing
        try:
            check(evidence, self.chain_id, s.public_key_of)
        except InvalidEvidence:
            return False
        self.pool.add_evidence(evidence)
        self.detector.mark_slashed(offender)  # our detector need not catch it again
        self._fork_choice(tree).on_equivocation(offender)
        return True


def _credit(state: State, address: bytes, amount: int) -> None:
    account = state.get(address)
    state.accounts[address] = Account(account.balance + amount, account.nonce)


def attestation_data(engine: PosEngine, head: Any, slot: int) -> AttestationData:
    """What an honest validator whose head is `head` votes for in `slot` (Gasper): the head,
    its justified checkpoint as of the slot's epoch, and the epoch's checkpoint on its branch."""
    state = head.state.copy()
    s: PosState = state.engine
    epoch = engine.epoch_of(slot)
    for boundary in range(s.epoch + 1, epoch + 1):
        engine._epoch_transition(state, s, boundary)
    if epoch == 0:
        target_root = GENESIS_ROOT
    elif engine.params.first_slot(epoch) > s.slot or epoch in s.pending_boundaries:
        target_root = head.hash  # the head is the latest block at or before the epoch's start
    else:
        target_root = s.boundary_roots[epoch]
    return AttestationData(slot, head.hash, s.ffg.current_justified, Checkpoint(epoch, target_root))
