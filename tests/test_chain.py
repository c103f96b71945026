"""The block tree with the proof-of-work engine (consensus/chain.py, consensus/pow/engine.py):
block rules, fork choice, reorgs, finality and retargeting.

How: a genesis with easy targets (helpers_chain.pow_genesis) lets every block be
really mined with consensus.pow.mining.search in a few hundred hashes, so the PoW
check stays on except where a test says otherwise. Each block rule gets a block that
breaks exactly that rule, asserting the exception class and message and that the tree
did not change. Fork-choice tests build competing branches and check heads, the
reorg's reverted/applied entries and the transaction index. Hypothesis builds random
trees (random parents, random and sometimes backwards timestamps) and compares the
head, the canonical chain, the tips and every block's bits with a naive reference that
recomputes cumulative work and retargets from scratch.
"""

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from consensus.chain import BlockTree
from consensus.errors import (
    BadNonce,
    BadTimestamp,
    DuplicateBlock,
    FutureBlock,
    InsufficientFunds,
    InvalidBlock,
    InvalidProofOfWork,
    ReorgTooDeep,
    UnknownParent,
    ValidationError,
    WrongChain,
)
from consensus.params import MEDIAN_TIME_BLOCKS
from consensus.pow.difficulty import compact_to_target, next_target_bits, target_to_compact, work_of_bits
from consensus.pow.mining import hash_meets_target
from consensus.types import Block, compute_tx_root, consensus_root_of

from helpers_chain import (
    EASY_GENESIS_BITS,
    EASY_LIMIT_BITS,
    FAR_FUTURE_MS,
    GENESIS_TIME_MS,
    assemble,
    extend,
    key,
    make_tree,
    mine,
    next_block,
    outsider,
    pow_genesis,
    transfer,
    unmine_header,
)

ALICE, BOB, CAROL = key(0), key(1), key(2)
MINER_A, MINER_B = outsider(10).address, outsider(11).address


def tree_shape(tree: BlockTree) -> tuple:
    """What a rejected block must leave unchanged."""
    return (tree.head.hash, len(tree.entries), [e.hash for e in tree.canonical], dict(tree.tx_heights), tree.final_height)


def rejected(tree: BlockTree, block: Block, exc_type, match: str, now_ms: int = FAR_FUTURE_MS):
    """Assert the block fails with exactly `exc_type` and changes nothing; returns the error."""
    before = tree_shape(tree)
    with pytest.raises(exc_type, match=match) as info:
        tree.add_block(block, now_ms)
    assert tree_shape(tree) == before
    return info.value


def remined(block: Block, **changes) -> Block:
    return mine(Block(block.header._replace(**changes), block.transactions))


# --- the happy path ---------------------------------------------------------------------

def test_genesis_block_commits_to_the_genesis():
    genesis = pow_genesis()
    tree = make_tree(genesis)
    header = tree.head.header
    assert tree.head.height == 0 and header.parent == genesis.hash
    assert header.bits == EASY_GENESIS_BITS and header.timestamp_ms == GENESIS_TIME_MS
    assert tree.head_state().total_balance() == genesis.supply
    # A different parameter gives a different genesis block.
    assert make_tree(pow_genesis(reorg_depth_max=7)).head.hash != tree.head.hash


def test_mined_blocks_extend_the_head_and_pay_the_miner():
    tree = make_tree()
    entries = extend(tree, 3, producer=MINER_A)
    assert tree.head is entries[-1] and tree.head.height == 3
    assert [tree.canonical_at(h) for h in range(4)] == [tree.genesis_entry, *entries]
    assert tree.head_state().get(MINER_A).balance == 3 * tree.params.block_reward
    for entry in entries:
        assert hash_meets_target(entry.hash, compact_to_target(entry.header.bits))
        assert entry.score == entry.parent.score + work_of_bits(entry.header.bits)


def test_a_transaction_is_applied_and_indexed():
    tree = make_tree()
    tx = transfer(ALICE, BOB.address, 1234, nonce=0, fee=50)
    added = tree.add_block(next_block(tree, txs=(tx,), producer=MINER_A), FAR_FUTURE_MS)
    assert added.head_changed and added.applied == (added.entry,) and added.reverted == ()
    assert tree.transaction_location(tx.txid) == 1
    state = tree.head_state()
    assert state.get(BOB.address).balance == 1_000_000_000 + 1234
    assert state.get(ALICE.address).balance == 1_000_000_000 - 1234 - 50
    assert state.get(MINER_A).balance == tree.params.block_reward + 50 - 5
    assert state.total_balance() == state.expected_supply()


# --- block rules, one rejection each -------------------------------------------------------

def test_duplicate_block():
    tree = make_tree()
    block = next_block(tree)
    tree.add_block(block, FAR_FUTURE_MS)
    rejected(tree, block, DuplicateBlock, "already known")
    rejected(tree, tree.genesis_entry.block, DuplicateBlock, "already known")


def test_unknown_parent():
    tree = make_tree()
    block = remined(next_block(tree), parent=b"\xab" * 32)
    err = rejected(tree, block, UnknownParent, "parent abababababababab of block at height 1 is unknown")
    assert isinstance(err, InvalidBlock)


def test_wrong_height():
    tree = make_tree()
    extend(tree, 1)
    block = next_block(tree)
    rejected(tree, remined(block, height=3), InvalidBlock, "height 3 does not follow the parent's 1")
    rejected(tree, remined(block, height=1), InvalidBlock, "height 1 does not follow the parent's 1")
    tree.add_block(block, FAR_FUTURE_MS)  # the control


def test_wrong_version():
    tree = make_tree()
    block = next_block(tree)
    for version in (0, 2):
        rejected(tree, remined(block, version=version), InvalidBlock, f"block version {version} is not 1")


def test_timestamp_must_be_after_median_time_past():
    tree = make_tree()
    entries = extend(tree, 10, spacing_ms=1_000)  # genesis .. block 10: 11 timestamps
    assert MEDIAN_TIME_BLOCKS == 11
    times = sorted(e.header.timestamp_ms for e in [tree.genesis_entry, *entries])
    mtp = times[5]
    assert mtp == GENESIS_TIME_MS + 5_000 == tree.median_time_past(tree.head)
    template = next_block(tree, do_mine=False)
    err = rejected(tree, remined(template, timestamp_ms=mtp), BadTimestamp,
                   f"timestamp {mtp} is not after the median time past {mtp}")
    assert not isinstance(err, FutureBlock)
    rejected(tree, remined(template, timestamp_ms=GENESIS_TIME_MS), BadTimestamp, "median time past")
    # One millisecond later is valid, although earlier than the parent (Bitcoin's rule).
    ok = remined(template, timestamp_ms=mtp + 1)
    assert ok.header.timestamp_ms < tree.head.header.timestamp_ms
    assert tree.add_block(ok, FAR_FUTURE_MS).head_changed


def test_median_time_past_with_few_ancestors():
    tree = make_tree()
    extend(tree, 2, spacing_ms=700)
    assert tree.median_time_past(tree.head) == GENESIS_TIME_MS + 700
    assert tree.median_time_past(tree.genesis_entry) == GENESIS_TIME_MS
    # A child of genesis must be strictly later than genesis.
    block = next_block(tree, parent=tree.genesis_entry, do_mine=False)
    rejected(tree, remined(block, timestamp_ms=GENESIS_TIME_MS), BadTimestamp, "median time past")


def test_future_block_waits():
    tree = make_tree()
    drift = tree.params.future_drift_ms
    now = GENESIS_TIME_MS + 60_000
    template = next_block(tree, do_mine=False)
    err = rejected(tree, remined(template, timestamp_ms=now + drift + 1), FutureBlock,
                   f"more than {drift} ms after now {now}", now_ms=now)
    assert isinstance(err, BadTimestamp)
    # Exactly at the drift bound it is accepted, and the same block is fine later.
    assert tree.add_block(remined(template, timestamp_ms=now + drift), now).head_changed
    late = remined(next_block(tree, do_mine=False), timestamp_ms=now + 10 * drift)
    rejected(tree, late, FutureBlock, "after now", now_ms=now)
    assert tree.add_block(late, now + 9 * drift).head_changed


def test_wrong_bits():
    tree = make_tree()
    block = next_block(tree)
    for bits in (EASY_LIMIT_BITS, 0x1F00FFFF, EASY_GENESIS_BITS + 1):
        rejected(tree, remined(block, bits=bits), InvalidProofOfWork,
                 f"bits {bits:#010x} are not the expected {EASY_GENESIS_BITS:#010x}")


def test_hash_above_target_only_with_the_check_on():
    genesis = pow_genesis()
    tree = make_tree(genesis)
    block = next_block(tree, do_mine=False)
    unmined = Block(unmine_header(block.header), block.transactions)
    assert not hash_meets_target(unmined.hash, compact_to_target(unmined.header.bits))
    rejected(tree, unmined, InvalidProofOfWork, "does not meet its target")
    # The simulator's switch skips only the hash check ...
    sim_tree = make_tree(genesis, skip_pow=True)
    assert sim_tree.add_block(unmined, FAR_FUTURE_MS).head_changed
    # ... not the bits rule.
    rejected(sim_tree, Block(unmined.header._replace(bits=EASY_LIMIT_BITS), ()), InvalidProofOfWork, "not the expected")


def test_wrong_tx_root():
    tree = make_tree()
    t1 = transfer(ALICE, BOB.address, 10, nonce=0)
    t2 = transfer(BOB, CAROL.address, 10, nonce=0)
    block = next_block(tree, txs=(t1, t2), do_mine=False)
    rejected(tree, remined(block, tx_root=compute_tx_root(())), InvalidBlock, "tx_root does not match")
    # Same root, different body: reordered or with a transaction dropped.
    rejected(tree, mine(Block(block.header, (t2, t1))), InvalidBlock, "tx_root does not match")
    rejected(tree, mine(Block(block.header, (t1,))), InvalidBlock, "tx_root does not match")
    assert tree.add_block(mine(block), FAR_FUTURE_MS).head_changed


def test_wrong_state_root():
    tree = make_tree()
    tx = transfer(ALICE, BOB.address, 10, nonce=0)
    block = next_block(tree, txs=(tx,), producer=MINER_A, do_mine=False)
    rejected(tree, remined(block, state_root=tree.head.header.state_root), InvalidBlock,
             "state_root does not match")
    # Redirecting the reward to another producer changes the state it commits to.
    rejected(tree, remined(block, producer=MINER_B), InvalidBlock, "state_root does not match")


@pytest.mark.parametrize("make_tx,cause", [
    (lambda: transfer(ALICE, BOB.address, 10, nonce=1), BadNonce),
    (lambda: transfer(ALICE, BOB.address, 2_000_000_000, nonce=0), InsufficientFunds),
    (lambda: transfer(ALICE, BOB.address, 10, nonce=0, chain_id="elsewhere"), WrongChain),
    (lambda: transfer(outsider(3), BOB.address, 1, nonce=0), InsufficientFunds),
])
def test_invalid_transaction_inside_a_block(make_tx, cause):
    tree = make_tree()
    tx = make_tx()
    block = assemble(tree, tree.head, (tx,), timestamp_ms=GENESIS_TIME_MS + 1_000, producer=MINER_A)
    err = rejected(tree, block, InvalidBlock, "block at height 1 has an invalid transaction")
    assert isinstance(err.__cause__, cause)
    # The block builder would have skipped it instead.
    assert tree.build_block([tx], MINER_A, GENESIS_TIME_MS + 1_000).transactions == ()


def test_a_transaction_replayed_in_a_later_block_is_rejected():
    tree = make_tree()
    tx = transfer(ALICE, BOB.address, 10, nonce=0)
    tree.add_block(next_block(tree, txs=(tx,)), FAR_FUTURE_MS)
    replay = assemble(tree, tree.head, (tx,), timestamp_ms=tree.head.header.timestamp_ms + 1_000, producer=MINER_A)
    err = rejected(tree, replay, InvalidBlock, "invalid transaction: nonce 0")
    assert isinstance(err.__cause__, BadNonce)


def test_forged_signature_inside_a_block_is_rejected():
    tree = make_tree()
    forged = transfer(ALICE, BOB.address, 10, nonce=0)._replace(amount=11)
    block = assemble(tree, tree.head, (forged,), timestamp_ms=GENESIS_TIME_MS + 1_000, producer=MINER_A)
    rejected(tree, block, ValidationError, "signature does not verify")
    # A tree that trusts signatures (checked earlier elsewhere) accepts it.
    trusting = make_tree(check_signatures=False)
    assert trusting.add_block(block, FAR_FUTURE_MS).head_changed


def test_forged_signature_inside_a_block_is_an_invalid_block():
    tree = make_tree()
    forged = transfer(ALICE, BOB.address, 10, nonce=0)._replace(amount=11)
    block = assemble(tree, tree.head, (forged,), timestamp_ms=GENESIS_TIME_MS + 1_000, producer=MINER_A)
    rejected(tree, block, InvalidBlock, "invalid transaction")


def test_fork_below_the_final_height_is_too_deep():
    tree = make_tree(pow_genesis(reorg_depth_max=2))
    side = tree.add_block(next_block(tree, producer=MINER_B), FAR_FUTURE_MS).entry  # height 1, will lose
    main = extend(tree, 5, parent=tree.genesis_entry, producer=MINER_A, spacing_ms=900)
    assert tree.head is main[-1] and tree.head.height == 5
    assert tree.final_height == 3
    # Forking off a final block below the final height: refused.
    for height in (0, 1, 2):
        parent = tree.canonical_at(height)
        assert parent.state is None
        block = assemble(tree, parent, (), timestamp_ms=parent.header.timestamp_ms + 1, producer=MINER_B)
        rejected(tree, block, ReorgTooDeep, "forks below the final height 3")
    # Forking off the final block itself is allowed (it reverts exactly reorg_depth_max blocks).
    parent = tree.canonical_at(3)
    added = tree.add_block(next_block(tree, parent=parent, producer=MINER_B), FAR_FUTURE_MS)
    assert not added.head_changed and added.entry.hash in tree.entries
    # The side branch off genesis was pruned when genesis became final.
    assert side.hash not in tree.entries
    child_of_pruned = next_block(tree, parent=side, producer=MINER_B)
    rejected(tree, child_of_pruned, UnknownParent, "is unknown")


def test_finality_follows_the_head():
    tree = make_tree(pow_genesis(reorg_depth_max=3))
    for n in range(1, 7):
        extend(tree, 1)
        assert tree.final_height == max(0, n - 3)
        assert all(tree.canonical_at(h).state is None for h in range(tree.final_height))
        assert all(tree.canonical_at(h).state is not None for h in range(tree.final_height, n + 1))


# --- fork choice ------------------------------------------------------------------------

def test_a_tie_keeps_the_first_seen_block():
    tree = make_tree()
    first = tree.add_block(next_block(tree, producer=MINER_A), FAR_FUTURE_MS)
    second = tree.add_block(next_block(tree, parent=tree.genesis_entry, producer=MINER_B), FAR_FUTURE_MS)
    assert first.head_changed and not second.head_changed
    assert second.entry.score == first.entry.score
    assert second.reverted == () and second.applied == ()
    assert tree.head is first.entry
    assert [e.hash for e in tree.tips()] == [first.entry.hash, second.entry.hash]
    # Still a tie one level up: the first branch keeps the head.
    tree.add_block(next_block(tree, parent=second.entry, producer=MINER_B), FAR_FUTURE_MS)
    tree.add_block(next_block(tree, parent=first.entry, producer=MINER_A), FAR_FUTURE_MS)
    assert tree.head.parent is second.entry  # second branch reached height 2 first
    assert tree.head.height == 2


def test_most_work_wins_not_most_blocks():
    # Retarget every 4 blocks: a fast branch gets 4x harder bits at height 4.
    tree = make_tree(pow_genesis(retarget_interval_blocks=4))
    slow = extend(tree, 5, parent=tree.genesis_entry, producer=MINER_A, spacing_ms=1_000)
    fast = extend(tree, 3, parent=tree.genesis_entry, producer=MINER_B, spacing_ms=100)
    assert tree.head is slow[-1]
    b4 = tree.add_block(next_block(tree, parent=fast[-1], producer=MINER_B), FAR_FUTURE_MS)
    fast_work = sum(work_of_bits(e.header.bits) for e in [*fast, b4.entry])
    slow_work = sum(work_of_bits(e.header.bits) for e in slow)
    assert work_of_bits(b4.entry.header.bits) == 4 * work_of_bits(EASY_GENESIS_BITS)
    assert fast_work > slow_work
    assert b4.head_changed and tree.head is b4.entry
    assert tree.head.height == 4 < slow[-1].height
    assert b4.reverted == tuple(reversed(slow)) and b4.applied == (*fast, b4.entry)


def test_reorg_reports_entries_and_moves_the_transaction_index():
    tree = make_tree()
    t1 = transfer(ALICE, BOB.address, 100, nonce=0)
    t2 = transfer(ALICE, CAROL.address, 200, nonce=1)
    g = tree.genesis_entry
    a1 = tree.add_block(next_block(tree, parent=g, txs=(t1,), producer=MINER_A), FAR_FUTURE_MS).entry
    a2 = tree.add_block(next_block(tree, parent=a1, txs=(t2,), producer=MINER_A), FAR_FUTURE_MS).entry
    assert (tree.transaction_location(t1.txid), tree.transaction_location(t2.txid)) == (1, 2)

    b1 = tree.add_block(next_block(tree, parent=g, producer=MINER_B), FAR_FUTURE_MS)
    b2 = tree.add_block(next_block(tree, parent=b1.entry, txs=(t1,), producer=MINER_B), FAR_FUTURE_MS)
    assert not b1.head_changed and not b2.head_changed  # ties: the A branch stays
    b3 = tree.add_block(next_block(tree, parent=b2.entry, producer=MINER_B), FAR_FUTURE_MS)
    assert b3.head_changed and b3.reorg_depth == 2
    assert b3.reverted == (a2, a1)  # highest first
    assert b3.applied == (b1.entry, b2.entry, b3.entry)  # lowest first
    assert [tree.canonical_at(h) for h in range(4)] == [g, b1.entry, b2.entry, b3.entry]
    assert tree.transaction_location(t1.txid) == 2  # moved from height 1 to 2
    assert tree.transaction_location(t2.txid) is None  # only on the losing branch
    state = tree.head_state()
    assert state.get(CAROL.address).balance == 1_000_000_000  # t2 undone
    assert state.get(ALICE.address).nonce == 1
    assert state.get(MINER_A).balance == 0
    assert state.get(MINER_B).balance == 3 * tree.params.block_reward + 9  # t1's fee 10, 1 burned

    # And back: branch A grows past B.
    a3 = tree.add_block(next_block(tree, parent=a2, producer=MINER_A), FAR_FUTURE_MS)
    assert not a3.head_changed
    a4 = tree.add_block(next_block(tree, parent=a3.entry, producer=MINER_A), FAR_FUTURE_MS)
    assert a4.reverted == (b3.entry, b2.entry, b1.entry)
    assert a4.applied == (a1, a2, a3.entry, a4.entry)
    assert (tree.transaction_location(t1.txid), tree.transaction_location(t2.txid)) == (1, 2)
    assert tree.head_state().get(CAROL.address).balance == 1_000_000_200


def test_ancestor_and_common_ancestor_across_branches():
    tree = make_tree()
    trunk = extend(tree, 2)
    side = extend(tree, 3, parent=trunk[0], producer=MINER_B, spacing_ms=1_100)
    main = extend(tree, 1, parent=trunk[1])  # side is the head now (height 4)
    assert tree.head is side[-1]
    assert tree.ancestor(main[0], 1) is trunk[0]
    assert tree.ancestor(main[0], 3) is main[0]
    assert tree.ancestor(side[-1], 2) is side[0]
    assert tree.common_ancestor(main[0], side[-1]) is trunk[0]


# --- retargeting ------------------------------------------------------------------------

def test_fast_blocks_make_the_next_window_harder_exactly_as_next_target_bits_says():
    genesis = pow_genesis(retarget_interval_blocks=4, target_spacing_ms=1_000)
    tree = make_tree(genesis)
    g = tree.genesis_entry
    window = extend(tree, 3, spacing_ms=300)  # heights 1..3 keep the genesis bits
    assert all(e.header.bits == EASY_GENESIS_BITS for e in window)
    expected = next_target_bits(EASY_GENESIS_BITS, g.header.timestamp_ms, window[-1].header.timestamp_ms,
                                timespan=4_000, limit_bits=EASY_LIMIT_BITS)
    assert tree.engine.next_bits(tree.head, tree) == expected
    assert compact_to_target(expected) < compact_to_target(EASY_GENESIS_BITS)  # harder
    # Like Bitcoin, the window measures interval - 1 gaps: 900 ms against a 4000 ms span.
    assert compact_to_target(expected) == compact_to_target(
        next_target_bits(EASY_GENESIS_BITS, 0, 900, timespan=4_000, limit_bits=EASY_LIMIT_BITS))
    # A block keeping the old bits is refused; the retargeted one is accepted.
    stale = next_block(tree, do_mine=False)
    assert stale.header.bits == expected
    rejected(tree, remined(stale, bits=EASY_GENESIS_BITS), InvalidProofOfWork, "not the expected")
    b4 = tree.add_block(mine(stale), FAR_FUTURE_MS).entry
    assert b4.header.bits == expected
    # The new bits hold for the rest of the window (heights 4..7).
    window2 = [b4, *extend(tree, 3, spacing_ms=2_000)]
    assert all(e.header.bits == expected for e in window2)
    # The window is blocks 4..7 (not 3..7): 6 s measured against a 4 s span, 1.5x easier.
    span = window2[-1].header.timestamp_ms - window2[0].header.timestamp_ms
    assert span == 6_000
    easier = tree.engine.next_bits(tree.head, tree)
    assert easier == next_target_bits(expected, window2[0].header.timestamp_ms, window2[-1].header.timestamp_ms,
                                      timespan=4_000, limit_bits=EASY_LIMIT_BITS)
    assert easier == target_to_compact(compact_to_target(expected) * 6_000 // 4_000)
    window3 = [tree.add_block(mine(next_block(tree, do_mine=False)), FAR_FUTURE_MS).entry,
               *extend(tree, 3, spacing_ms=10_000)]
    assert all(e.header.bits == easier for e in window3)
    # A slow window (30 s against 4 s) is clamped to four times easier ...
    four = tree.engine.next_bits(tree.head, tree)
    assert four == target_to_compact(compact_to_target(easier) * 4)
    assert compact_to_target(four) < compact_to_target(EASY_LIMIT_BITS)
    assert tree.add_block(next_block(tree), FAR_FUTURE_MS).entry.header.bits == four
    # ... and further slow windows keep easing by four until the limit caps them.
    bits, limit = four, compact_to_target(EASY_LIMIT_BITS)
    for _ in range(3):
        extend(tree, 3, spacing_ms=10_000)
        want = target_to_compact(min(compact_to_target(bits) * 4, limit))
        assert tree.engine.next_bits(tree.head, tree) == want
        bits = tree.add_block(next_block(tree), FAR_FUTURE_MS).entry.header.bits
        assert bits == want
    assert bits == EASY_LIMIT_BITS
    extend(tree, 3, spacing_ms=10_000)
    assert tree.engine.next_bits(tree.head, tree) == EASY_LIMIT_BITS


def test_retarget_on_a_side_branch_uses_that_branch():
    genesis = pow_genesis(retarget_interval_blocks=4)
    tree = make_tree(genesis, skip_pow=True)
    g = tree.genesis_entry
    extend(tree, 3, parent=g, spacing_ms=3_000, do_mine=False)
    fast = extend(tree, 3, parent=g, spacing_ms=200, producer=MINER_B, do_mine=False)
    assert tree.head.height == 3
    bits = tree.engine.next_bits(fast[-1], tree)
    assert bits == next_target_bits(EASY_GENESIS_BITS, g.header.timestamp_ms, fast[-1].header.timestamp_ms,
                                    timespan=4_000, limit_bits=EASY_LIMIT_BITS)
    assert bits != tree.engine.next_bits(tree.head, tree)


# --- random trees against a naive reference ---------------------------------------------------

class Reference:
    """Fork choice and retargeting recomputed from scratch over every accepted block."""

    def __init__(self, genesis_block: Block, interval: int, timespan: int):
        self.blocks = {genesis_block.hash: genesis_block}
        self.order = [genesis_block.hash]
        self.interval, self.timespan = interval, timespan

    def add(self, block: Block) -> None:
        self.blocks[block.hash] = block
        self.order.append(block.hash)

    def path(self, block_hash: bytes) -> list[Block]:
        chain = []
        cursor = self.blocks.get(block_hash)
        while cursor is not None:
            chain.append(cursor)
            cursor = self.blocks.get(cursor.header.parent)
        return chain[::-1]

    def work(self, block_hash: bytes) -> int:
        return sum(work_of_bits(b.header.bits) for b in self.path(block_hash))

    def expected_bits(self, parent_hash: bytes) -> int:
        chain = self.path(parent_hash)
        parent = chain[-1]
        if (parent.header.height + 1) % self.interval:
            return parent.header.bits
        first = chain[max(0, len(chain) - self.interval)]
        return next_target_bits(parent.header.bits, first.header.timestamp_ms, parent.header.timestamp_ms,
                                timespan=self.timespan, limit_bits=EASY_LIMIT_BITS)

    def median_time_past(self, parent_hash: bytes) -> int:
        times = sorted(b.header.timestamp_ms for b in self.path(parent_hash)[-11:])
        return times[len(times) // 2]

    def head(self) -> bytes:
        return min(self.order, key=lambda h: (-self.work(h), self.order.index(h)))

    def tips(self) -> list[bytes]:
        parents = {b.header.parent for b in self.blocks.values()}
        leaves = [h for h in self.order if h not in parents]
        return sorted(leaves, key=lambda h: (-self.work(h), self.order.index(h)))


steps = st.lists(
    st.tuples(
        # The parent: one of the last few blocks (deep trees, retargets) or any block (wide trees).
        st.one_of(st.integers(-4, -1), st.integers(0, 10**6)),
        st.integers(-3_000, 4_000),  # time after the parent; negative ones test the median rule
        st.integers(0, 2),  # producer
    ),
    min_size=1,
    max_size=40,
)
PRODUCERS = [outsider(20).address, outsider(21).address, outsider(22).address]


def _random_tree(steps_list, reorg_depth_max: int):
    interval = 3
    genesis = pow_genesis(retarget_interval_blocks=interval, reorg_depth_max=reorg_depth_max)
    tree = make_tree(genesis, skip_pow=True)
    ref = Reference(tree.genesis_entry.block, interval, 1_000 * interval)
    known = [tree.genesis_entry]  # every entry ever accepted, in insertion order
    highest_head = 0
    final_hashes: dict[int, bytes] = {0: tree.genesis_entry.hash}
    for parent_pick, delta, producer in steps_list:
        parent = known[max(parent_pick, -len(known))] if parent_pick < 0 else known[parent_pick % len(known)]
        now = parent.header.timestamp_ms + delta
        if parent.state is not None:
            block = tree.build_block([], PRODUCERS[producer], now, parent=parent)
        else:  # a final block: assemble by hand, it must be refused as too deep
            block = assemble(tree, parent, (), timestamp_ms=max(now, tree.median_time_past(parent) + 1),
                             producer=PRODUCERS[producer], do_mine=False)
        old_head, old_canonical = tree.head, list(tree.canonical)
        try:
            added = tree.add_block(block, FAR_FUTURE_MS)
        except DuplicateBlock:
            event("DuplicateBlock")
            assert block.hash in ref.blocks
            continue
        except ReorgTooDeep:
            event("ReorgTooDeep")
            assert parent.height < tree.final_height and parent.state is None
            continue
        except UnknownParent:
            event("UnknownParent")
            assert parent.hash not in tree.entries and parent.hash in ref.blocks  # pruned side branch
            continue
        assert block.header.bits == ref.expected_bits(parent.hash)
        if block.header.bits != EASY_GENESIS_BITS:
            event("retargeted bits")
        # build_block moves a too-early time to just after the median of 11 ancestors.
        if parent.state is not None:
            assert block.header.timestamp_ms == max(now, ref.median_time_past(parent.hash) + 1)
        ref.add(block)
        known.append(added.entry)
        # The head is the heaviest block, the first seen on a tie.
        assert tree.head.hash == ref.head()
        assert added.head_changed == (tree.head is not old_head)
        assert tree.head.score == ref.work(tree.head.hash)
        # The canonical chain is exactly the head's ancestry.
        assert [e.hash for e in tree.canonical] == [b.hash for b in ref.path(tree.head.hash)]
        if added.head_changed:
            fork_height = len(old_canonical) - 1 - len(added.reverted)
            assert list(added.reverted) == old_canonical[fork_height + 1:][::-1]
            assert list(added.applied) == tree.canonical[fork_height + 1:]
            assert added.reorg_depth <= reorg_depth_max
            if added.reorg_depth:
                event(f"reorg of depth {min(added.reorg_depth, 3)}{'+' if added.reorg_depth > 3 else ''}")
        # Finality follows the highest head ever seen, and a final block never changes.
        highest_head = max(highest_head, tree.head.height)
        assert tree.final_height == max(0, highest_head - reorg_depth_max)
        for height in range(tree.final_height + 1):
            assert final_hashes.setdefault(height, tree.canonical[height].hash) == tree.canonical[height].hash
    return tree, ref


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps)
def test_random_trees_match_the_naive_reference(steps_list):
    tree, ref = _random_tree(steps_list, reorg_depth_max=1_000)
    assert len(tree.entries) == len(ref.blocks)
    assert [e.hash for e in tree.tips()] == ref.tips()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps)
def test_random_trees_with_finality_never_revert_a_final_block(steps_list):
    # With a small bound, blocks become final, side branches get pruned and forks
    # below the final height are refused; the head must still be the reference's.
    tree, ref = _random_tree(steps_list, reorg_depth_max=2)
    # Every surviving block descends from the final block; nothing else is kept.
    final = tree.canonical_at(tree.final_height)
    for entry in tree.entries.values():
        if entry.height >= tree.final_height:
            assert tree.ancestor(entry, tree.final_height) is final
        else:
            assert tree.canonical_at(entry.height) is entry


def test_a_template_extended_as_transactions_arrive_equals_one_built_at_once():
    tree = make_tree()
    txs = [transfer(ALICE, BOB.address, 10 + n, nonce=n) for n in range(4)] + [transfer(CAROL, BOB.address, 5, nonce=0)]
    at_once = tree.build_block(txs, MINER_A, GENESIS_TIME_MS + 1_000)
    template = tree.start_template()
    assert tree.fill_template(template, txs[:2]) == 2
    first = tree.seal_template(template, MINER_A, GENESIS_TIME_MS + 1_000)
    # Re-offering what it holds adds nothing (stale nonces); the rest goes on the end.
    assert tree.fill_template(template, txs) == 3
    extended = tree.seal_template(template, MINER_A, GENESIS_TIME_MS + 1_000)
    assert first.transactions == tuple(txs[:2])
    assert extended == at_once
    # Both seals are valid blocks once mined; sealing did not spend the template's state.
    tree.add_block(mine(first), FAR_FUTURE_MS)
    assert tree.head.state.root() == first.header.state_root


def test_a_pow_block_carries_no_consensus_body_and_no_seal():
    tree = make_tree()
    block = next_block(tree)
    body = b"votes"
    with_body = mine(block._replace(header=block.header._replace(consensus_root=consensus_root_of(body)),
                                    consensus=body))
    rejected(tree, with_body, InvalidBlock, "no consensus body and no seal")
    rejected(tree, block._replace(seal=b"s" * 64), InvalidBlock, "no consensus body and no seal")
    # The header commits to the body: a body that does not match its root is refused first.
    rejected(tree, block._replace(consensus=body), InvalidBlock, "consensus_root does not match")
    assert tree.add_block(block, FAR_FUTURE_MS).head_changed
