"""Slashing evidence on its own gossip topic (Topic.EVIDENCE, DESIGN.md section 5).

What: evidence encodes and decodes both ways, and decoding is bounded (garbage,
oversized or unknown kinds are a DecodeError); the engine hands the core what its
detector found (in gossiped votes and in blocks) exactly once; evidence from a peer is
accepted once (pool, fork choice), ignored when the offender is caught already, and
rejected with a ban of the sender when it is malformed, forged or proves no offence;
a node that saw only one of two conflicting votes learns the evidence over EVIDENCE
gossip and includes it in the block it proposes; in the simulator a double-voting
validator's evidence travels on EVIDENCE and it is slashed everywhere. Proof of work
ignores the topic.

How: the engine against helpers_pos trees; NodeCores of a proof-of-stake genesis wired
by hand (tests/test_core_protocol.py's Net: effects drained after every input, time
moved only by explicit Tick), hostile peers as p2p Connections driven by the test; and
a simulated cluster from a seed.
"""

import random
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consensus import codec
from consensus.chain import BlockTree
from consensus.crypto import sha256
from consensus.engine import make_engine
from consensus.errors import DecodeError
from consensus.pos.engine import (
    EVIDENCE_ATTESTER,
    EVIDENCE_BYTES_MAX,
    attestation_data,
    decode_body,
    decode_evidence,
    encode_evidence,
    encode_vote,
)
from consensus.pos.types import Attestation, AttesterSlashing, Checkpoint, Proposal, ProposerSlashing, SignedProposal
from consensus.presets import account_key, make_genesis, validator_key
from consensus.types import TX_TRANSFER, Transaction
from helpers_pos import SEED, engine_of, pos_genesis, pos_tree, propose
from node.core import BytesReceived, NodeConfig, NodeCore
from p2p.config import P2PConfig
from p2p.connection import Connection, LocalIdentity, State, node_id_of
from p2p.errors import Reason
from p2p.messages import Gossip, HeadSummary, Topic
from sim.cluster import Cluster, default_config
from test_core_protocol import Net, address, node_key

GENESIS = pos_genesis(4)
START_MS = GENESIS.timestamp_ms + 100  # slot 0: nobody proposes or votes yet
PROPOSER = 2  # proposes slot 1 on the genesis state (checked below)
OFFENDER = 3  # signs two links for one target epoch


# --- building evidence --------------------------------------------------------------------------


def signed_vote(validator: int, data) -> Attestation:
    return Attestation(validator, data, validator_key(SEED, validator).sign(data.signing_bytes(GENESIS.chain_id)))


def double_vote(validator: int = OFFENDER) -> tuple[Attestation, Attestation]:
    """An honest vote for slot 1 on genesis, and a twin with another target root."""
    tree = pos_tree(4)
    data = attestation_data(engine_of(tree), tree.head, 1)
    twin = data._replace(target=Checkpoint(data.target.epoch, sha256(b"twin" + data.target.root)))
    return signed_vote(validator, data), signed_vote(validator, twin)


def double_proposal(validator: int = PROPOSER) -> ProposerSlashing:
    key = validator_key(SEED, validator)

    def signed(root: bytes) -> SignedProposal:
        proposal = Proposal(validator, 5, root)
        return SignedProposal(proposal, key.sign(proposal.signing_bytes(GENESIS.chain_id)))

    return ProposerSlashing(signed(sha256(b"one")), signed(sha256(b"two")))


def transfer(nonce: int) -> Transaction:
    key = account_key(SEED, 0)
    tx = Transaction(TX_TRANSFER, GENESIS.chain_id, key.public_key, account_key(SEED, 1).address, 5, 10, nonce, b"")
    return tx._replace(signature=key.sign(tx.signing_bytes()))


# --- the codec -------------------------------------------------------------------------------------


def test_evidence_round_trips_both_kinds():
    a, b = double_vote()
    for evidence in (AttesterSlashing(a, b), double_proposal()):
        data = encode_evidence(evidence)
        assert decode_evidence(data) == evidence
        assert encode_evidence(decode_evidence(data)) == data  # one encoding only
        assert len(data) <= EVIDENCE_BYTES_MAX


@pytest.mark.parametrize("data, message", [
    (b"", None),
    (b"\xc1", None),
    (codec.encode([3, []]), "unknown kind 3"),
    (codec.encode([EVIDENCE_ATTESTER]), "expected 2 fields"),
    (codec.encode([EVIDENCE_ATTESTER, [1, 2, 3]]), "expected 2 fields"),
    (codec.encode([EVIDENCE_ATTESTER, [b"x" * 40, b"y"]]), "expected an array"),
    (codec.encode([EVIDENCE_ATTESTER, [[0, [1, bytes(32), [0, bytes(32)], [0, bytes(32)]], b"short"]] * 2]), "64 bytes"),
    (codec.encode([EVIDENCE_ATTESTER, [b"\x00" * EVIDENCE_BYTES_MAX]]), "over the decode limit"),
])
def test_bad_evidence_bytes_are_a_decode_error(data: bytes, message: str | None):
    with pytest.raises(DecodeError, match=message):
        decode_evidence(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2 * EVIDENCE_BYTES_MAX))
def test_decoding_garbage_raises_decode_error_or_round_trips(data: bytes):
    try:
        evidence = decode_evidence(data)
    except DecodeError:
        return
    assert encode_evidence(evidence) == data


# --- the engine ----------------------------------------------------------------------------------


def test_the_detector_hands_over_what_it_found_in_votes_once():
    tree = pos_tree(4)
    engine = engine_of(tree)
    a, b = double_vote()
    assert engine.on_vote(tree, encode_vote(a)) is True
    assert engine.take_new_evidence(tree) == []
    assert engine.on_vote(tree, encode_vote(b)) is True  # forwarded: the second half of the proof
    (payload,) = engine.take_new_evidence(tree)
    assert decode_evidence(payload) == AttesterSlashing(a, b)
    assert engine.take_new_evidence(tree) == []
    assert engine.fork_choice.latest_message(OFFENDER) is None  # its weight left the fork choice


def test_the_detector_hands_over_a_double_proposal_found_in_blocks():
    tree = pos_tree(4)
    engine = engine_of(tree)
    genesis = tree.head
    first = propose(tree, genesis, 1)
    twin = propose(tree, genesis, 1, txs=[transfer(0)])
    tree.add_block(first, 2**62)
    assert engine.take_new_evidence(tree) == []
    tree.add_block(twin, 2**62)
    (payload,) = engine.take_new_evidence(tree)
    evidence = decode_evidence(payload)
    assert isinstance(evidence, ProposerSlashing)
    assert {evidence.a.proposal.block_root, evidence.b.proposal.block_root} == {first.hash, twin.hash}


def test_evidence_from_a_peer_is_taken_once_then_ignored():
    tree = pos_tree(4)
    engine = engine_of(tree)
    a, b = double_vote()
    assert engine.on_vote(tree, encode_vote(a)) is True  # the fork choice has its latest message
    assert engine.fork_choice.latest_message(OFFENDER) is not None
    assert engine.on_evidence(tree, encode_evidence(AttesterSlashing(a, b))) is True
    assert engine.pool.attester_slashings == [AttesterSlashing(a, b)]
    assert engine.fork_choice.latest_message(OFFENDER) is None
    assert engine.on_evidence(tree, encode_evidence(AttesterSlashing(b, a))) is None  # caught already
    assert engine.on_vote(tree, encode_vote(b)) is None  # the detector no longer watches it
    assert engine.take_new_evidence(tree) == []  # learned, not found: nothing to gossip again
    assert engine.on_evidence(tree, encode_evidence(double_proposal())) is True
    assert len(engine.pool.proposer_slashings) == 1


def forged(evidence: AttesterSlashing) -> AttesterSlashing:
    return evidence._replace(b=evidence.b._replace(signature=bytes(64)))


def not_slashable() -> AttesterSlashing:
    """Two honest votes of one validator: slots 1 and 2, one link (the normal vote of each slot)."""
    tree = pos_tree(4)
    engine = engine_of(tree)
    return AttesterSlashing(signed_vote(OFFENDER, attestation_data(engine, tree.head, 1)),
                            signed_vote(OFFENDER, attestation_data(engine, tree.head, 2)))


def two_validators() -> AttesterSlashing:
    a, b = double_vote(OFFENDER)
    return AttesterSlashing(a, double_vote(1)[1])


BAD_EVIDENCE = {
    "malformed": lambda: b"\x92\x02\x90",
    "wrong signature": lambda: encode_evidence(forged(AttesterSlashing(*double_vote()))),
    "not slashable": lambda: encode_evidence(not_slashable()),
    "two validators": lambda: encode_evidence(two_validators()),
    "unknown validator": lambda: encode_evidence(
        ProposerSlashing(*(s._replace(proposal=s.proposal._replace(validator=40)) for s in double_proposal()))),
}


@pytest.mark.parametrize("kind", sorted(BAD_EVIDENCE))
def test_bad_evidence_is_the_senders_fault(kind: str):
    tree = pos_tree(4)
    engine = engine_of(tree)
    assert engine.on_evidence(tree, BAD_EVIDENCE[kind]()) is False
    assert engine.pool.attester_slashings == [] and engine.pool.proposer_slashings == []


def test_proof_of_work_ignores_evidence():
    g = make_genesis(seed="evidence-pow", accounts=2)
    engine = make_engine(g)
    tree = BlockTree(g, engine)
    assert engine.on_evidence(tree, encode_evidence(double_proposal())) is None
    assert engine.take_new_evidence(tree) == []


# --- the node core ---------------------------------------------------------------------------------


class RawPeer:
    """A handshaken peer of the proof-of-stake genesis whose far end is the test
    (tests/test_core_protocol.py's RawPeer, for this genesis)."""

    def __init__(self, net: Net, i: int, key_index: int):
        self.net, self.i = net, i
        self.conn_id = net.attach_raw(i, remote=f"10.78.0.{key_index}:1234")
        self.conn = Connection(LocalIdentity(node_key(key_index), GENESIS.chain_id, GENESIS.hash, ""), P2PConfig(),
                               sha256(b"evidence raw peer %d" % key_index), HeadSummary(0, bytes(32), 1))
        self.node_id = node_id_of(node_key(key_index).public_key)
        self.events: list = []
        for _ in range(3):
            self.exchange()
        assert self.conn.state is State.READY

    def exchange(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.net.step(self.i, BytesReceived(self.conn_id, data))
            self.net.run()
        self.events += self.conn.receive_data(bytes(self.net.raw_received[(self.i, self.conn_id)]))
        self.net.raw_received[(self.i, self.conn_id)].clear()

    def send(self, *messages) -> None:
        for m in messages:
            assert self.conn.send(m)
        self.exchange()


def pos_pair() -> Net:
    """Node 0 is validator PROPOSER (it proposes slot 1); node 1 follows without a key."""
    assert engine_of(pos_tree(4)).proposer_at(pos_tree(4).head.state, 1) == PROPOSER
    net = Net(2, genesis=GENESIS)
    net.nodes = [
        NodeCore(GENESIS, node_key(0), NodeConfig(listen_address=address(0)), random.Random(0), START_MS,
                 validator_key=validator_key(SEED, PROPOSER)),
        NodeCore(GENESIS, node_key(1), NodeConfig(listen_address=address(1)), random.Random(1), START_MS),
    ]
    net.connect(0, 1)
    return net


def test_a_node_that_saw_one_vote_learns_the_evidence_by_gossip_and_includes_it():
    net = pos_pair()
    proposer, watcher = net.nodes
    a, b = double_vote()
    RawPeer(net, 0, key_index=20).send(Gossip(Topic.VOTES, encode_vote(a)))  # the proposer sees one vote
    RawPeer(net, 1, key_index=21).send(Gossip(Topic.VOTES, encode_vote(a)), Gossip(Topic.VOTES, encode_vote(b)))
    # The watcher's detector caught the double vote and gossiped the evidence at once; the
    # second vote waits with the other votes to relay (vote_batch_ms), so the proposer has
    # only the evidence to go on.
    assert watcher.evidence_published == 1
    assert proposer.evidence_accepted == 1 and proposer.evidence_published == 0
    assert proposer.engine.pool.attester_slashings == [AttesterSlashing(a, b)]
    assert proposer.engine.pool.votes.get((1, OFFENDER)) == a
    net.tick(proposer.engine.slot_time_ms(1))  # slot 1: the proposer's
    head = proposer.tree.head
    assert proposer.blocks_proposed == 1 and proposer.engine.slot_of(head.header) == 1
    assert decode_body(head.block.consensus).attester_slashings == (AttesterSlashing(a, b),)
    for core in (proposer, watcher):
        assert core.tree.head.hash == head.hash
        assert core.tree.head.state.engine.slashed() == [OFFENDER]


@pytest.mark.parametrize("kind", sorted(BAD_EVIDENCE))
def test_a_peer_gossiping_bad_evidence_is_banned(kind: str):
    net = pos_pair()
    raw = RawPeer(net, 1, key_index=22)
    raw.send(Gossip(Topic.EVIDENCE, BAD_EVIDENCE[kind]()))
    watcher = net.nodes[1]
    assert (1, raw.conn_id) in net.closed
    assert raw.events[-1].reason == int(Reason.MISBEHAVIOUR)
    assert watcher.scores.is_banned(raw.node_id, watcher.now_ms)
    assert net.nodes[0].evidence_accepted == 0  # nothing was forwarded


def test_valid_evidence_from_a_peer_is_forwarded_and_a_repeat_is_ignored_without_blame():
    net = pos_pair()
    raw = RawPeer(net, 1, key_index=23)
    a, b = double_vote()
    raw.send(Gossip(Topic.EVIDENCE, encode_evidence(AttesterSlashing(a, b))))
    assert net.nodes[1].evidence_accepted == 1 and net.nodes[0].evidence_accepted == 1  # forwarded
    raw.send(Gossip(Topic.EVIDENCE, encode_evidence(AttesterSlashing(b, a))))  # another id, same offender
    assert raw.conn.state is State.READY and not net.nodes[1].scores.scores.get(raw.node_id)
    assert net.nodes[1].evidence_accepted == 1


def test_in_the_simulator_a_double_voters_evidence_travels_on_evidence_gossip():
    seed = 5
    genesis = make_genesis(consensus="pos", preset="minimal", seed=f"evidence-sim-{seed}", accounts=4, validators=4)
    keys = [validator_key(f"evidence-sim-{seed}", i) for i in range(4)]

    def config_for(i: int, addresses: list[str]) -> NodeConfig:
        return replace(default_config(i, addresses), byzantine=frozenset({"double-vote"}) if i == 1 else frozenset())

    cluster = Cluster(genesis, 4, seed, hashrates=[0.0] * 4, validator_keys=keys, config_for=config_for)
    # End mid-slot, when the slot's block has spread: the heads agree then.
    cluster.run_until(genesis.timestamp_ms + 20_500)
    cores = [n.core for n in cluster.nodes]
    assert sum(c.evidence_published for c in cores) >= 1
    assert sum(c.evidence_accepted for c in cores) >= 1, "no evidence travelled on EVIDENCE"
    assert all(c.tree.head.state.engine.slashed() == [1] for c in cores)
    assert len({c.tree.head.hash for c in cores}) == 1
