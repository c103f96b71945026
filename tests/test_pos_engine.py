"""The proof-of-stake engine inside the block tree: slots, proposers, seals and reveals,
votes and FFG finality, LMD-GHOST between branches, slashing and the inactivity leak.

Blocks and votes are made as honest validators make them (helpers_pos); each test
breaks one thing or arranges one situation and checks heights, checkpoints, stakes
and balances.
"""

import pytest

from consensus.crypto import address_of
from consensus.errors import InvalidBlock, ValidationError
from consensus.pos.engine import GENESIS_ROOT, PosBody, decode_body, encode_body
from consensus.pos.types import AttesterSlashing, Checkpoint
from consensus.pos.validators import Status
from consensus.presets import validator_key
from consensus.types import consensus_root_of
from helpers_pos import SEED, engine_of, pos_tree, propose, vote

NOW = 2**62


def grow(tree, slots, voters=None, parent=None):
    """One block per slot on `parent` (the head by default), each with the voters' votes
    for the slot before; returns the last entry."""
    voters = list(range(len(tree.genesis.validators))) if voters is None else voters
    head = parent or tree.head
    for slot in slots:
        votes = [vote(tree, head, slot - 1, v) for v in voters] if slot > 1 else []
        block = propose(tree, head, slot, votes)
        tree.add_block(block, NOW)
        head = tree.get(block.hash)
    return head


def supply_ok(tree) -> bool:
    state = tree.head.state
    return state.total_balance() == state.expected_supply()


def test_everyone_online_justifies_and_finalizes_every_epoch():
    tree = pos_tree(4)
    finalized = []
    for slot in range(1, 33):
        head = tree.head
        votes = [vote(tree, head, slot - 1, v) for v in range(4)] if slot > 1 else []
        tree.add_block(propose(tree, head, slot, votes), NOW)
        finalized.append(tree.head.state.engine.ffg.finalized.epoch)
        assert supply_ok(tree)
    s = tree.head.state.engine
    assert s.epoch == 8 and s.ffg.current_justified.epoch == 7 and s.ffg.finalized.epoch == 6
    assert finalized == sorted(finalized)  # never decreases
    assert tree.final_height == 24  # the block at the first slot of epoch 6
    assert tree.canonical[24].hash == s.ffg.finalized.root
    # Every validator voted in time in every settled epoch: rewarded, none penalised.
    assert all(v.stake == 32_000_000 and v.status is Status.ACTIVE for v in s.validators)
    assert all(tree.head.state.get(validator_key(SEED, i).address).balance > 0 for i in range(4))


def test_the_slot_belongs_to_the_chosen_proposer():
    tree = pos_tree(4)
    chosen = engine_of(tree).proposer_at(tree.head.state, 1)
    other = (chosen + 1) % 4
    with pytest.raises(InvalidBlock, match=f"slot 1 belongs to validator {chosen}, not {other}"):
        tree.add_block(propose(tree, tree.head, 1, proposer=other), NOW)
    assert tree.add_block(propose(tree, tree.head, 1), NOW).head_changed


def test_seal_reveal_and_slot_time_are_checked():
    tree = pos_tree(4)
    good = propose(tree, tree.head, 1)
    with pytest.raises(InvalidBlock, match="seal is not the proposer's signature"):
        tree.add_block(good._replace(seal=bytes(64)), NOW)
    with pytest.raises(InvalidBlock, match="seal is not the proposer's signature"):
        tree.add_block(good._replace(seal=b""), NOW)
    body = decode_body(good.consensus)
    bad_reveal = encode_body(body._replace(reveal=bytes(64)))
    header = good.header._replace(consensus_root=consensus_root_of(bad_reveal))
    with pytest.raises(InvalidBlock, match="seal|reveal"):
        tree.add_block(good._replace(header=header, consensus=bad_reveal), NOW)
    with pytest.raises(InvalidBlock, match="not the start of a slot"):
        tree.add_block(good._replace(header=good.header._replace(timestamp_ms=good.header.timestamp_ms + 1)), NOW)
    tree.add_block(good, NOW)
    again = propose(tree, tree.head, 2)
    same_slot = again._replace(header=again.header._replace(timestamp_ms=good.header.timestamp_ms))
    with pytest.raises(ValidationError, match="median time past|must come after its parent"):
        tree.add_block(same_slot, NOW)


def test_votes_are_checked_before_they_count():
    tree = pos_tree(4)
    grow(tree, range(1, 3))
    head = tree.head
    good = vote(tree, head, 2, 0)
    wrong_source = good._replace(data=good.data._replace(source=Checkpoint(0, b"\x01" * 32)))
    with pytest.raises(InvalidBlock, match="source"):
        tree.add_block(propose(tree, head, 3, [wrong_source]), NOW)
    with pytest.raises(InvalidBlock, match="signature of validator 0 does not verify"):
        tree.add_block(propose(tree, head, 3, [good._replace(signature=bytes(64))]), NOW)
    with pytest.raises(InvalidBlock, match="already has its vote of slot 2 included"):
        tree.add_block(propose(tree, head, 3, [good, good]), NOW)
    with pytest.raises(InvalidBlock, match="not an active validator"):
        tree.add_block(propose(tree, head, 3, [good._replace(validator=9)]), NOW)
    tree.add_block(propose(tree, head, 3, [good]), NOW)
    with pytest.raises(InvalidBlock, match="outside the inclusion window"):
        tree.add_block(propose(tree, tree.head, 20, [vote(tree, head, 2, 1)]), NOW)


def test_a_shorter_branch_with_more_attesting_stake_wins():
    tree = pos_tree(4)
    grow(tree, range(1, 3))
    fork = tree.head
    # Branch A: three blocks, nobody votes for them. Branch B: one block, three validators vote for it.
    a = fork
    for slot in (3, 4, 5):
        block = propose(tree, a, slot)
        tree.add_block(block, NOW)
        a = tree.get(block.hash)
    assert tree.head is a
    b_block = propose(tree, fork, 6)
    tree.add_block(b_block, NOW)
    b = tree.get(b_block.hash)
    votes = [vote(tree, b, 6, v) for v in (0, 1, 2)]
    c_block = propose(tree, b, 7, votes)
    tree.add_block(c_block, NOW)
    assert tree.head.hash == c_block.hash and tree.head.height < a.height + 1
    assert engine_of(tree).fork_choice.weight(b.hash) == 3 * 32_000_000


def test_a_two_two_split_finalizes_nothing_and_resumes_after_the_heal():
    tree = pos_tree(4)
    grow(tree, range(1, 9))  # two epochs with everyone
    base = tree.head.state.engine.ffg.finalized.epoch
    fork = tree.head
    sides = {0: [0, 1], 1: [2, 3]}
    heads = [fork, fork]
    engine = engine_of(tree)
    for slot in range(9, 33):
        for side, members in sides.items():
            head = heads[side]
            if engine.proposer_at(head.state, slot) not in members:
                continue  # the slot's proposer is across the partition
            votes = [vote(tree, head, slot - 1, v) for v in members]
            block = propose(tree, head, slot, votes)
            tree.add_block(block, NOW)
            heads[side] = tree.get(block.hash)
    for head in heads:
        s = head.state.engine
        assert s.ffg.finalized.epoch <= base + 1, "half the stake finalized something"
        # Whatever either side calls finalized lies on the common chain: nothing conflicting.
        finalized = tree.get(s.ffg.finalized.root) if s.ffg.finalized.root != GENESIS_ROOT else tree.genesis_entry
        assert finalized is not None and tree.ancestor(fork, finalized.height) is finalized
    assert heads[0] is not fork and heads[1] is not fork  # both sides made blocks
    # Heal: everyone follows the fork choice's head again and finality resumes.
    healed = tree.head
    stalled = healed.state.engine.ffg.finalized.epoch
    grow(tree, range(33, 57))
    assert tree.head.state.engine.ffg.finalized.epoch > stalled
    assert supply_ok(tree)


def test_a_double_vote_is_slashed_once_with_a_reward_to_the_includer():
    tree = pos_tree(4)
    grow(tree, range(1, 6))
    head = tree.head
    honest = vote(tree, head, 5, 3)
    other_target = honest.data._replace(target=Checkpoint(honest.data.target.epoch, b"\x07" * 32))
    key = validator_key(SEED, 3)
    double = honest._replace(data=other_target, signature=key.sign(other_target.signing_bytes(tree.chain_id)))
    evidence = AttesterSlashing(honest, double)
    before = tree.head.state
    block = propose(tree, head, 6, attester_slashings=[evidence])
    tree.add_block(block, NOW)
    after = tree.head.state
    offender = after.engine.validators[3]
    assert offender.slashed and offender.status is Status.SLASHED
    assert offender.stake == 32_000_000 - 3_200_000
    producer = block.header.producer
    whistle = 320_000
    assert after.get(producer).balance - before.get(producer).balance == whistle + 50_000  # + block reward
    assert after.burned - before.burned == 3_200_000 - whistle
    assert supply_ok(tree)
    with pytest.raises(InvalidBlock, match="cannot be slashed again"):
        tree.add_block(propose(tree, tree.head, 7, attester_slashings=[evidence]), NOW)


def test_the_inactivity_leak_lets_finality_resume_with_half_the_stake_offline():
    tree = pos_tree(4)
    grow(tree, range(1, 9))
    online = [0, 1]
    engine = engine_of(tree)
    finalized_at_stall = tree.head.state.engine.ffg.finalized.epoch
    resumed_at = None
    for slot in range(9, 200):
        head = tree.head
        proposer = engine.proposer_at(head.state, slot)
        if proposer not in online:
            continue
        votes = [vote(tree, head, slot - 1, v) for v in online]
        tree.add_block(propose(tree, head, slot, votes), NOW)
        if tree.head.state.engine.ffg.finalized.epoch > finalized_at_stall + 1:
            resumed_at = slot
            break
        assert supply_ok(tree)
    assert resumed_at is not None, "finality never resumed"
    s = tree.head.state.engine
    assert all(s.validators[i].stake < 32_000_000 for i in (2, 3))  # the offline ones leaked
    assert all(s.validators[i].stake == 32_000_000 for i in online)
    assert supply_ok(tree)


def test_genesis_checkpoint_names_the_genesis_block():
    tree = pos_tree(4)
    s = tree.head.state.engine
    assert s.ffg.finalized == Checkpoint(0, GENESIS_ROOT)
    status = engine_of(tree).status(tree)
    assert status["finalized"]["root"] == tree.genesis_entry.hash.hex()
    assert address_of(validator_key(SEED, 0).public_key) == validator_key(SEED, 0).address
    assert isinstance(decode_body(propose(tree, tree.head, 1).consensus), PosBody)


def staking(key, kind, amount, nonce, chain_id):
    from consensus.types import Transaction

    unsigned = Transaction(kind, chain_id, key.public_key, bytes(20), amount, 10, nonce, bytes(64))
    return unsigned._replace(signature=key.sign(unsigned.signing_bytes()))


def test_a_stake_joins_after_the_activation_delay_and_an_unstake_returns_after_unbonding():
    from consensus.presets import account_key
    from consensus.types import TX_STAKE, TX_UNSTAKE

    tree = pos_tree(4)
    grow(tree, range(1, 3))
    newcomer = account_key(SEED, 0)
    balance = tree.head.state.get(newcomer.address).balance
    stake = staking(newcomer, TX_STAKE, 5_000_000, 0, tree.chain_id)
    block = propose(tree, tree.head, 3, [vote(tree, tree.head, 2, v) for v in range(4)], txs=[stake])
    assert block.transactions == (stake,)
    tree.add_block(block, NOW)
    s = tree.head.state.engine
    assert len(s.validators) == 5 and s.validators[4].status is Status.PENDING and s.validators[4].stake == 5_000_000
    assert tree.head.state.get(newcomer.address).balance == balance - 5_000_000 - 10
    assert supply_ok(tree)
    # A second stake by the same key is refused; so is an unstake by a non-validator.
    template = tree.start_template()
    assert tree.fill_template(template, [staking(newcomer, TX_STAKE, 5_000_000, 1, tree.chain_id)]) == 0
    assert tree.fill_template(template, [staking(account_key(SEED, 1), TX_UNSTAKE, 0, 0, tree.chain_id)]) == 0
    activation = s.validators[4].activation_epoch
    grow(tree, range(4, 4 * (activation + 1) + 1))
    assert tree.head.state.engine.validators[4].status is Status.ACTIVE
    # Validator 0 unstakes (its rewards pay the fee); its stake comes back after unbonding.
    v0 = validator_key(SEED, 0)
    nonce = tree.head.state.get(v0.address).nonce
    start = tree.head.state.engine.slot + 1
    unstake = staking(v0, TX_UNSTAKE, 0, nonce, tree.chain_id)
    tree.add_block(propose(tree, tree.head, start, txs=[unstake]), NOW)
    s = tree.head.state.engine
    assert s.validators[0].status is Status.EXITING
    withdrawable = s.validators[0].withdrawable_epoch
    before = tree.head.state.get(v0.address).balance
    last = grow(tree, range(start + 1, 4 * (withdrawable + 1) + 1), voters=[1, 2, 3, 4])
    s = last.state.engine
    assert s.validators[0].status is Status.WITHDRAWN and s.validators[0].stake == 0
    assert last.state.get(v0.address).balance >= before + 32_000_000
    assert supply_ok(tree)
