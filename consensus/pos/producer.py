"""A validator's duties, pure: propose in its slots, vote in every slot, never sign
anything slashable unless told to misbehave.

The node core calls `Producer.on_tick(tree, now_ms, candidates)` on every tick. The
producer answers with signed blocks to import and publish, encoded votes to gossip,
and, whenever it signed something, its new slashing-protection record, which the shell
stores durably before it sends anything of that step (DESIGN.md section 2).

Timing (Gasper): the proposer of a slot proposes at the slot's start on its head;
every active validator votes a third into the slot, for the head it sees then.

Byzantine switches, for tests and chaos runs only (NodeConfig.byzantine, off by
default); each skips the protection record on purpose:
  double-propose  a second, different block in each of its slots, on the honest block's
                  parent (where the slot is its own) without its transactions and votes
  double-vote     a second vote per slot for a different target root
  surround-vote   with each vote, one from the genesis checkpoint to the next epoch,
                  which surrounds its honest link of the slot
The node core has switches of its own ("withhold", "spam": node/byzantine.py), valid
under any engine; a producer accepts their names and leaves them to the core.
"""

from typing import Any, Callable, NamedTuple

from consensus.crypto import KeyPair, sha256
from consensus.errors import ValidationError
from consensus.pos.engine import (
    ATTESTATIONS_PER_BLOCK_MAX,
    GENESIS_ROOT,
    PosBody,
    PosEngine,
    PosState,
    attestation_data,
    encode_body,
    encode_vote,
)
from consensus.pos.protection import ProtectionRecord, Refused
from consensus.pos.types import Attestation, AttestationData, Checkpoint, Proposal, reveal_signing_bytes
from consensus.pos.validators import is_active
from consensus.types import Block, Transaction

VALIDATOR_SWITCHES = frozenset({"double-propose", "double-vote", "surround-vote"})  # what a producer does
# Every name NodeConfig.byzantine may hold (node.settings.BYZANTINE_BEHAVIOURS lists the
# same): the validator's, and the core's own, which consensus cannot import.
BYZANTINE_SWITCHES = VALIDATOR_SWITCHES | frozenset({"withhold", "spam"})


class Duties(NamedTuple):
    blocks: list[Block]  # signed: import them, then publish
    votes: list[bytes]  # encoded attestations: hand them to the engine, then publish
    protection: bytes | None  # the new protection record, to store before any of the above leaves
    refused: list[str]  # what protection refused to sign (a log line each)


class Producer:
    def __init__(self, engine: PosEngine, key: KeyPair, stored_protection: bytes | None,
                 byzantine: frozenset[str] = frozenset()):
        unknown = set(byzantine) - BYZANTINE_SWITCHES
        if unknown:
            raise ValueError(f"unknown byzantine switch(es) {', '.join(sorted(unknown))}")
        self.engine = engine
        self.key = key
        self.byzantine = frozenset(byzantine)
        self.record = (ProtectionRecord.decode(stored_protection) if stored_protection
                       else ProtectionRecord.empty(engine.chain_id, key.public_key))
        self.last_proposed_slot = self.record.last_proposal_slot or 0
        self.last_voted_slot = 0
        self._index: int | None = None

    def index(self, state: PosState) -> int | None:
        """This validator's registry index, if it is registered."""
        if self._index is None:
            for i, v in enumerate(state.validators):
                if v.public_key == self.key.public_key:
                    self._index = i
                    break
        return self._index

    def on_tick(self, tree: Any, now_ms: int, candidates: Callable[[], list[Transaction]],
                transactions_max: int) -> Duties:
        """`candidates()` gives the mempool's transactions, asked for only when proposing."""
        engine = self.engine
        duties = Duties([], [], None, [])
        slot = engine.slot_at(now_ms)
        head = tree.head
        s: PosState = head.state.engine
        me = self.index(s)
        if slot <= 0 or me is None or not is_active(s.validators[me].status):
            return duties
        record = self.record
        # Propose at the start of the slot, if the slot is ours and still empty on our head.
        if slot > self.last_proposed_slot and engine.slot_of(head.header) < slot \
                and engine.proposer_at(head.state, slot) == me:
            self.last_proposed_slot = slot
            honest = None
            try:
                record = record.record_proposal(slot)
                honest = self._block(tree, head, slot, me, candidates(), transactions_max)
                duties.blocks.append(honest)
            except Refused as exc:
                duties.refused.append(f"proposal at slot {slot}: {exc}")
            if "double-propose" in self.byzantine:
                twin = self._twin(tree, head, slot, me, honest, transactions_max)
                if isinstance(twin, str):
                    duties.refused.append(f"double proposal at slot {slot}: {twin}")
                else:
                    duties.blocks.append(twin)
        # Vote a third into the slot, once.
        if slot > self.last_voted_slot and now_ms >= engine.slot_time_ms(slot) + engine.params.slot_ms // 3:
            self.last_voted_slot = slot
            data = attestation_data(engine, head, slot)
            try:
                record = record.record_attestation(data.source, data.target)
                duties.votes.append(self._vote(me, data))
            except Refused as exc:
                duties.refused.append(f"vote in slot {slot}: {exc}")
            if "double-vote" in self.byzantine:
                twin = data._replace(target=Checkpoint(data.target.epoch, sha256(b"twin" + data.target.root)))
                duties.votes.append(self._vote(me, twin))
            if "surround-vote" in self.byzantine and data.source.epoch >= 1:
                # From genesis to the next epoch: surrounds this slot's honest link.
                wide = data._replace(source=Checkpoint(0, GENESIS_ROOT),
                                     target=Checkpoint(data.target.epoch + 1, data.head))
                duties.votes.append(self._vote(me, wide))
        if record != self.record:
            self.record = record
            duties = duties._replace(protection=record.encode())
        return duties

    def next_duty_ms(self, now_ms: int) -> int:
        """When this validator next has something to do: the start of the next slot (a
        proposal, if it is ours) or the vote a third into the current one. The node wakes
        then, instead of finding out at its next heartbeat."""
        engine = self.engine
        slot = engine.slot_at(now_ms)
        vote_at = engine.slot_time_ms(slot) + engine.params.slot_ms // 3
        if slot > self.last_voted_slot and now_ms < vote_at:
            return vote_at
        return engine.slot_time_ms(slot + 1)

    def _twin(self, tree: Any, parent: Any, slot: int, me: int, honest: Block | None,
              transactions_max: int) -> Block | str:
        """Byzantine "double-propose": a second block for `slot` on `parent`, the honest
        block's parent, with other contents (no transactions, no votes), so another root:
        a genuine double proposal. Only where this validator proposes `slot` on `parent`
        (elsewhere the block is invalid, and building it would raise); otherwise, or if
        it would be the honest block itself, the reason it was skipped."""
        if self.engine.proposer_at(parent.state, slot) != me:
            return f"validator {me} does not propose slot {slot} on block {parent.hash.hex()[:16]}"
        try:
            twin = self._block(tree, parent, slot, me, [], transactions_max, with_votes=False)
        except ValidationError as exc:
            return f"no valid twin: {exc}"
        if honest is not None and twin.hash == honest.hash:
            return "the honest block is empty, so a twin would be the same block"
        return twin

    def _vote(self, me: int, data: AttestationData) -> bytes:
        return encode_vote(Attestation(me, data, self.key.sign(data.signing_bytes(self.engine.chain_id))))

    def _block(self, tree: Any, parent: Any, slot: int, me: int, candidates: list[Transaction],
               transactions_max: int, *, with_votes: bool = True) -> Block:
        engine = self.engine
        reveal = self.key.sign(reveal_signing_bytes(engine.chain_id, engine.epoch_of(slot)))
        votes = engine.pool.for_inclusion(engine, parent, slot) if with_votes else []
        template = tree.start_template(parent)
        tree.fill_template(template, candidates, transactions_max)
        proposer_slashings, attester_slashings = engine.pool.evidence_for_inclusion(engine, parent, slot)
        body = PosBody(me, reveal, tuple(votes[:ATTESTATIONS_PER_BLOCK_MAX]), proposer_slashings, attester_slashings)
        try:
            block = tree.seal_template(template, self.key.address, engine.slot_time_ms(slot), encode_body(body))
        except ValidationError:
            # A vote or a piece of evidence the chain no longer takes: propose without them.
            block = tree.seal_template(template, self.key.address, engine.slot_time_ms(slot),
                                       encode_body(PosBody(me, reveal)))
        seal = self.key.sign(Proposal(me, slot, block.header.hash).signing_bytes(engine.chain_id))
        return block._replace(seal=seal)
