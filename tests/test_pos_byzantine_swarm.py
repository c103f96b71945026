"""Byzantine validators the simulator swarm found bugs with: double-propose and surround-vote.

What: (1) the swarm's failing runs, replayed as `chainlab sim` builds them, pass every
verdict with the byzantine validator slashed on every node: seed 11 crashed its
double-proposer (the twin block was built on the head's parent, whose state gives the
slot to another validator), seeds 37 and 44 left a surround-voter unslashed (the
evidence was in blocks of the side that lost the partition, and every node had dropped
it from its pool); (2) at the engine level, evidence whose block a reorg drops goes into
the winning branch's next proposal, the equivocator's weight stays out of the fork
choice, and the pool lets the evidence go once the final state has the slashing;
(3) a double-propose twin is built only where its validator proposes the slot, and is
skipped (a line in `refused`) where it would be the honest block itself.

How: sim.scenario.run_simulation with the SimConfig node/cli.py builds for the replay
commands; blocks and votes made as honest validators make them (helpers_pos) in one
BlockTree, and a Producer with the switch on, ticked by hand.
"""

import pytest

from consensus.crypto import sha256
from consensus.pos.engine import decode_body, encode_evidence, encode_vote
from consensus.pos.producer import Producer
from consensus.pos.types import AttesterSlashing, Checkpoint
from consensus.presets import account_key
from consensus.types import TX_TRANSFER, Transaction
from helpers_pos import SEED, engine_of, key_of, pos_tree, propose, vote
from sim.scenario import SimConfig, run_simulation

NOW = 2**62
OFFENDER = 3

# `chainlab sim --consensus pos --nodes N --seed S --duration 45 --faults F --byzantine V=SWITCH`
REPLAYS = [
    (5, 11, ("crash", "delay", "duplicate", "loss", "partition"), 1, "double-propose"),
    (4, 97, ("crash", "duplicate", "loss", "partition", "skew"), 0, "double-propose"),
    (4, 37, ("delay", "duplicate", "partition"), 0, "surround-vote"),
    (4, 44, ("delay", "duplicate", "partition"), 0, "surround-vote"),
]


@pytest.mark.parametrize("nodes, seed, faults, validator, switch", REPLAYS,
                         ids=[f"seed{r[1]}-{r[4]}" for r in REPLAYS])
def test_swarm_replay_passes_and_slashes_the_byzantine_validator_everywhere(nodes, seed, faults, validator, switch):
    # As node/cli.py's cmd_sim builds it (faults sorted, default tx rate).
    config = SimConfig(consensus="pos", nodes=nodes, seed=seed, duration_s=45.0, faults=faults, tx_rate=2.0,
                       byzantine={validator: (switch,)})
    result = run_simulation(config)  # seed 11 raised InvalidBlock here
    assert result.ok, [(v.name, v.detail) for v in result.verdicts if not v.ok]
    verdicts = {v.name: v for v in result.verdicts}
    slashed = verdicts["every byzantine validator slashed on every node"]
    assert slashed.ok and slashed.detail == f"[{validator}] slashed on {nodes} nodes", slashed.detail
    assert verdicts["no honest validator slashed"].detail.startswith(f"slashed: [{validator}];")


# --- evidence outlives a reorg ---------------------------------------------------------------------


def grow(tree, slots, voters, parent=None):
    """One block per slot on `parent` (the head by default), each with the voters' votes of the slot before."""
    head = parent or tree.head
    for slot in slots:
        block = propose(tree, head, slot, [vote(tree, head, slot - 1, v) for v in voters] if slot > 1 else [])
        tree.add_block(block, NOW)
        head = tree.get(block.hash)
    return head


def double_vote(tree, head, slot: int) -> AttesterSlashing:
    honest = vote(tree, head, slot, OFFENDER)
    twin = honest.data._replace(target=Checkpoint(honest.data.target.epoch, sha256(b"twin" + honest.data.target.root)))
    key = key_of(head, OFFENDER)
    return AttesterSlashing(honest, honest._replace(data=twin, signature=key.sign(twin.signing_bytes(tree.chain_id))))


@pytest.mark.parametrize("learned", [False, True], ids=["only-in-the-block", "learned-by-gossip-first"])
def test_evidence_is_included_again_after_a_reorg_drops_the_block_that_carried_it(learned: bool):
    tree = pos_tree(4)
    engine = engine_of(tree)
    fork = grow(tree, range(1, 3), voters=[0, 1, 2, 3])
    evidence = double_vote(tree, fork, 2)
    if learned:  # in the pool before the block came (it used to be dropped when a block slashed the offender)
        assert engine.on_evidence(tree, encode_evidence(evidence)) is True
    # Branch A: one block carrying the evidence.
    a_block = propose(tree, fork, 3, attester_slashings=[evidence])
    tree.add_block(a_block, NOW)
    assert tree.head.hash == a_block.hash and tree.head.state.engine.validators[OFFENDER].slashed
    assert engine.fork_choice.latest_message(OFFENDER) is None
    # Branch B, off the fork without the evidence: the honest validators vote for it and it wins.
    b = grow(tree, [6], voters=[], parent=fork)
    c_block = propose(tree, b, 7, [vote(tree, b, 6, v) for v in (0, 1, 2)])
    tree.add_block(c_block, NOW)
    assert tree.head.hash == c_block.hash, "the reorg to branch B did not happen"
    assert not tree.head.state.engine.validators[OFFENDER].slashed  # the slashing went with branch A
    # The equivocator's weight stays out of the fork choice, votes after the reorg included.
    engine.on_vote(tree, encode_vote(vote(tree, tree.head, 7, OFFENDER)))
    assert engine.fork_choice.latest_message(OFFENDER) is None
    # The next proposal on branch B carries the evidence again, whoever proposes.
    slot = 8
    proposer = engine.proposer_at(tree.head.state, slot)
    producer = Producer(engine, key_of(tree.head, proposer), None)
    duties = producer.on_tick(tree, engine.slot_time_ms(slot), lambda: [], 100)
    (block,) = duties.blocks
    assert block.header.parent == c_block.hash
    assert decode_body(block.consensus).attester_slashings == (evidence,)
    tree.add_block(block, NOW)
    assert tree.head.hash == block.hash and tree.head.state.engine.slashed() == [OFFENDER]
    # Not twice on one branch: the head's state has the slashing, so the pool offers nothing.
    assert engine.pool.evidence_for_inclusion(engine, tree.head, slot + 1) == ((), ())
    assert engine.slashings_json(tree)["pending_evidence"] == []
    # Bounded: once the final state has the slashing, no reorg can undo it and the pool lets go.
    assert engine.pool.attester_slashings == [evidence]
    grow(tree, range(9, 30), voters=[0, 1, 2])
    assert tree.canonical[tree.final_height].state.engine.validators[OFFENDER].slashed
    assert engine.pool.attester_slashings == [] and engine.pool.proposer_slashings == []


# --- double-propose builds its twin only in its own slot --------------------------------------------


def transfer(chain_id: str) -> Transaction:
    key = account_key(SEED, 0)
    tx = Transaction(TX_TRANSFER, chain_id, key.public_key, account_key(SEED, 1).address, 5, 10, 0, b"")
    return tx._replace(signature=key.sign(tx.signing_bytes()))


def test_a_double_propose_twin_is_never_built_where_the_validator_is_not_the_proposer():
    tree = pos_tree(4)
    engine = engine_of(tree)
    head = grow(tree, range(1, 4), voters=[])
    # Slot 8 is validator 0's on the head, but validator 2's on the head's parent, where the
    # twin used to be built: building it raised InvalidBlock inside the node.
    slot, me = 8, 0
    assert engine.proposer_at(head.state, slot) == me and engine.proposer_at(head.parent.state, slot) != me
    producer = Producer(engine, key_of(head, me), None, frozenset({"double-propose"}))
    duties = producer.on_tick(tree, engine.slot_time_ms(slot), lambda: [transfer(tree.chain_id)], 100)
    assert duties.refused == []
    honest, twin = duties.blocks
    assert honest.hash != twin.hash and honest.transactions and not twin.transactions
    for block in (honest, twin):
        assert block.header.parent == head.hash  # the honest block's parent, where the slot is ours
        assert decode_body(block.consensus).proposer == me
        assert engine.proposer_at(tree.get(block.header.parent).state, slot) == me
        tree.add_block(block, NOW)  # both valid: a genuine double proposal
    # Every other validator's proposal would fail on this head: none is ever built.
    for other in (1, 2, 3):
        p = Producer(engine, key_of(head, other), None, frozenset({"double-propose"}))
        assert p.on_tick(tree, engine.slot_time_ms(slot), lambda: [transfer(tree.chain_id)], 100).blocks == []


def test_a_double_propose_twin_that_would_be_the_honest_block_is_skipped_and_said_so():
    tree = pos_tree(4)
    engine = engine_of(tree)
    slot = 1
    me = engine.proposer_at(tree.head.state, slot)
    producer = Producer(engine, key_of(tree.head, me), None, frozenset({"double-propose"}))
    # Nothing to include at slot 1 (no transactions, no votes yet): the twin would be the same block.
    duties = producer.on_tick(tree, engine.slot_time_ms(slot), lambda: [], 100)
    assert len(duties.blocks) == 1
    assert duties.refused == ["double proposal at slot 1: the honest block is empty, so a twin would be the same block"]
