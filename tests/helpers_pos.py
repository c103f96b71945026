"""Builders for proof-of-stake chains in tests: genesis validators, signed proposals and
votes, exactly as honest validators make them (consensus.pos.engine's duties)."""

from consensus.chain import BlockTree, Entry
from consensus.engine import make_engine
from consensus.pos.engine import PosBody, PosEngine, attestation_data, encode_body
from consensus.pos.types import Attestation, Proposal, reveal_signing_bytes
from consensus.presets import account_key, make_genesis, validator_key
from consensus.types import Block

SEED = "pos-test"


def pos_genesis(validators: int = 4, stake: int = 32_000_000, **overrides: int):
    return make_genesis(consensus="pos", preset="minimal", seed=SEED, accounts=4, validators=validators,
                        stake=stake, overrides=overrides or None)


def pos_tree(validators: int = 4, **kw) -> BlockTree:
    genesis = pos_genesis(validators, **kw)
    return BlockTree(genesis, make_engine(genesis))


def engine_of(tree: BlockTree) -> PosEngine:
    assert isinstance(tree.engine, PosEngine)
    return tree.engine


# Every key a test validator may have: genesis validators, and accounts that stake.
_KEYS = {k.public_key: k for k in [validator_key(SEED, i) for i in range(64)] + [account_key(SEED, i) for i in range(4)]}


def key_of(entry: Entry, validator: int):
    return _KEYS[entry.state.engine.validators[validator].public_key]


def vote(tree: BlockTree, head: Entry, slot: int, validator: int) -> Attestation:
    data = attestation_data(engine_of(tree), head, slot)
    key = key_of(head, validator)
    return Attestation(validator, data, key.sign(data.signing_bytes(tree.chain_id)))


def propose(tree: BlockTree, parent: Entry, slot: int, attestations=(), proposer_slashings=(),
            attester_slashings=(), *, proposer: int | None = None, txs=()) -> Block:
    engine = engine_of(tree)
    chosen = engine.proposer_at(parent.state, slot) if proposer is None else proposer
    key = key_of(parent, chosen)
    reveal = key.sign(reveal_signing_bytes(tree.chain_id, engine.epoch_of(slot)))
    body = PosBody(chosen, reveal, tuple(attestations), tuple(proposer_slashings), tuple(attester_slashings))
    template = tree.start_template(parent)
    tree.fill_template(template, txs)
    block = tree.seal_template(template, key.address, engine.slot_time_ms(slot), encode_body(body))
    seal = key.sign(Proposal(chosen, slot, block.header.hash).signing_bytes(tree.chain_id))
    return block._replace(seal=seal)


def run_slots(tree: BlockTree, slots: range, voters: list[int] | None = None, now_ms: int = 2**62) -> None:
    """One block per slot on the head, including every voter's vote for the slot before."""
    voters = list(range(len(tree.genesis.validators))) if voters is None else voters
    for slot in slots:
        head = tree.head
        votes = [vote(tree, head, slot - 1, v) for v in voters] if slot - 1 > engine_of(tree).slot_of(head.header) - 1 and slot > 1 else []
        tree.add_block(propose(tree, head, slot, votes), now_ms)
