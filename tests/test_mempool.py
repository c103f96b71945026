"""The mempool (node.mempool): admission, eviction, selection and head changes.

What: each refusal raises its own class (AlreadyKnown, StaleNonce, NonceGapTooLarge,
ReplacementUnderpriced, CannotAfford counting what the sender already has pending,
MempoolFull when the pool is full and the newcomer pays no more than the cheapest
queue tail); a better-paying newcomer evicts the cheapest tail without leaving a
nonce gap; select() keeps each sender's nonce order, prefers higher fees across
senders and stops at count_max; on_head_changed drops what a block included or made
stale and takes back the transactions of blocks a reorg reverted.

How: a real minimal-preset PoW genesis (make_genesis), its state
(state_from_allocations) and params (params_from), and real Ed25519-signed transfers.
Head changes come from a real BlockTree with the proof-of-work check switched off
(as the simulator does), so `Added` carries real applied and reverted entries.
"""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consensus.chain import BlockTree
from consensus.crypto import KeyPair
from consensus.engine import make_engine
from consensus.errors import FeeTooLow, InvalidTransaction, ValidationError, WrongChain
from consensus.params import ChainParams, params_from
from consensus.presets import account_key, make_genesis
from consensus.state import Account, State, state_from_allocations
from consensus.types import TX_TRANSFER, Transaction
from node.mempool import (
    AlreadyKnown,
    CannotAfford,
    Mempool,
    MempoolFull,
    MempoolRejected,
    NonceGapTooLarge,
    ReplacementUnderpriced,
    StaleNonce,
)

SEED = "mempool-test"
BALANCE = 1_000_000
GENESIS = make_genesis(seed=SEED, accounts=8, balance=BALANCE)
CHAIN = GENESIS.chain_id
PARAMS = params_from(ChainParams, GENESIS)
STATE = state_from_allocations(GENESIS.allocations)
RECIPIENT = KeyPair.derive("mempool-test", "recipient", 0).address


def key(i: int) -> KeyPair:
    return account_key(SEED, i)


def tx(sender: int, nonce: int, *, fee: int = 10, amount: int = 100, chain_id: str = CHAIN,
       recipient: bytes = RECIPIENT) -> Transaction:
    k = key(sender)
    unsigned = Transaction(TX_TRANSFER, chain_id, k.public_key, recipient, amount, fee, nonce, bytes(64))
    return unsigned._replace(signature=k.sign(unsigned.signing_bytes()))


def pool(transactions_max: int = 100, per_sender_max: int = 16) -> Mempool:
    return Mempool(transactions_max, per_sender_max)


def add(mp: Mempool, t: Transaction, state: State = STATE) -> bytes:
    return mp.add(t, state, CHAIN, PARAMS)


def with_account(state: State, sender: int, balance: int, nonce: int) -> State:
    out = state.copy()
    out.accounts[key(sender).address] = Account(balance, nonce)
    return out


def queue_nonces(mp: Mempool, sender: int) -> list[int]:
    return sorted(mp.by_sender.get(key(sender).address, {}))


# --- admission ----------------------------------------------------------------------


def test_a_valid_transfer_is_admitted():
    mp = pool()
    t = tx(0, 0)
    assert add(mp, t) == t.txid
    assert t.txid in mp and len(mp) == 1
    assert mp.by_sender[key(0).address] == {0: t}
    assert mp.rejected == 0


def test_the_same_transaction_twice_is_already_known():
    mp = pool()
    add(mp, tx(0, 0))
    with pytest.raises(AlreadyKnown):
        add(mp, tx(0, 0))
    assert len(mp) == 1 and mp.rejected == 1


def test_a_nonce_already_used_on_chain_is_stale():
    mp = pool()
    state = with_account(STATE, 0, BALANCE, nonce=3)
    for nonce in (0, 2):
        with pytest.raises(StaleNonce):
            add(mp, tx(0, nonce), state)
    assert add(mp, tx(0, 3), state)  # the account's next nonce is fine
    assert mp.rejected == 2


def test_a_nonce_too_far_ahead_is_refused():
    mp = pool(per_sender_max=4)
    state = with_account(STATE, 0, BALANCE, nonce=2)
    with pytest.raises(NonceGapTooLarge):
        add(mp, tx(0, 6), state)  # 2 + 4: one past the lead
    assert add(mp, tx(0, 5), state)  # 3 ahead: allowed, even with a gap
    assert queue_nonces(mp, 0) == [5]


def test_replacement_needs_a_strictly_higher_fee():
    mp = pool()
    original = tx(0, 0, fee=10)
    add(mp, original)
    for fee in (10, 9):
        with pytest.raises(ReplacementUnderpriced):
            add(mp, tx(0, 0, fee=fee, amount=7))
    better = tx(0, 0, fee=11, amount=7)
    assert add(mp, better) == better.txid
    assert original.txid not in mp and better.txid in mp and len(mp) == 1
    assert mp.by_sender[key(0).address] == {0: better}


def test_a_sender_cannot_queue_more_than_its_balance():
    mp = pool()
    state = with_account(STATE, 0, 1_000, nonce=0)
    with pytest.raises(CannotAfford):
        add(mp, tx(0, 0, amount=991, fee=10), state)  # 1001 > 1000
    add(mp, tx(0, 0, amount=490, fee=10), state)  # 500 committed
    with pytest.raises(CannotAfford) as info:
        add(mp, tx(0, 1, amount=491, fee=10), state)  # 500 + 501 > 1000
    assert "500 already pending" in str(info.value)
    assert add(mp, tx(0, 1, amount=490, fee=10), state)  # exactly the balance
    assert queue_nonces(mp, 0) == [0, 1]


def test_an_account_with_nothing_cannot_afford_anything():
    mp = pool()
    stranger = KeyPair.derive("mempool-test", "stranger", 0)
    unsigned = Transaction(TX_TRANSFER, CHAIN, stranger.public_key, RECIPIENT, 0, 1, 0, bytes(64))
    with pytest.raises(CannotAfford):
        add(mp, unsigned._replace(signature=stranger.sign(unsigned.signing_bytes())))


def test_pending_transactions_with_higher_nonces_count_against_the_balance_too():
    mp = pool()
    state = with_account(STATE, 0, 1_000, nonce=0)
    add(mp, tx(0, 1, amount=990, fee=10), state)  # the whole balance, queued first
    with pytest.raises(CannotAfford):
        add(mp, tx(0, 0, amount=990, fee=10), state)  # the whole balance again


def test_a_replacement_may_not_overcommit_the_queue_behind_it():
    mp = pool()
    state = with_account(STATE, 0, 1_000, nonce=0)
    add(mp, tx(0, 0, amount=490, fee=10), state)
    add(mp, tx(0, 1, amount=490, fee=10), state)  # 1000 committed in total
    with pytest.raises(CannotAfford):
        add(mp, tx(0, 0, amount=600, fee=11), state)  # 611 + 500 > 1000


@pytest.mark.parametrize(
    "bad, error",
    [
        (tx(0, 0, chain_id="chainlab-pow-elsewhere"), WrongChain),
        (tx(0, 0, fee=0), FeeTooLow),
        (tx(0, 0, recipient=key(0).address), InvalidTransaction),  # to itself
    ],
    ids=["wrong_chain", "fee_too_low", "self_transfer"],
)
def test_statically_invalid_transactions_are_refused_and_counted(bad, error):
    mp = pool()
    with pytest.raises(error):
        add(mp, bad)
    assert len(mp) == 0 and mp.rejected == 1


def test_a_forged_signature_is_refused():
    mp = pool()
    forged = tx(0, 0)._replace(amount=101)  # signed over amount 100
    with pytest.raises(ValidationError):
        add(mp, forged)
    assert len(mp) == 0


def test_a_forged_signature_is_an_invalid_transaction_and_counted_as_rejected():
    # Regression: a forged signature used to raise a bare InvalidSignature, which
    # Mempool.add did not count and callers catching InvalidTransaction let escape.
    mp = pool()
    with pytest.raises(InvalidTransaction):
        add(mp, tx(0, 0)._replace(amount=101))
    assert mp.rejected == 1


def test_rejections_never_change_the_pool():
    mp = pool(transactions_max=2, per_sender_max=2)
    add(mp, tx(0, 0, fee=50))
    add(mp, tx(1, 0, fee=50))
    before = (dict(mp.by_id), {s: dict(q) for s, q in mp.by_sender.items()})
    for bad in (tx(0, 0, fee=50), tx(0, 2), tx(0, 0, fee=40), tx(2, 0, fee=50), tx(0, 1, amount=BALANCE)):
        with pytest.raises(MempoolRejected):
            add(mp, bad)
    assert (dict(mp.by_id), {s: dict(q) for s, q in mp.by_sender.items()}) == before
    assert mp.rejected == 5 and mp.evicted == 0


# --- a full pool --------------------------------------------------------------------------


def full_pool() -> Mempool:
    mp = pool(transactions_max=3)
    add(mp, tx(0, 0, fee=10))
    add(mp, tx(1, 0, fee=20))
    add(mp, tx(2, 0, fee=30))
    return mp


@pytest.mark.parametrize("fee", [1, 9, 10])
def test_full_and_no_better_fee_is_mempool_full(fee):
    mp = full_pool()
    with pytest.raises(MempoolFull):
        add(mp, tx(3, 0, fee=fee))
    assert len(mp) == 3 and mp.evicted == 0


def test_a_better_fee_evicts_the_cheapest_tail():
    mp = full_pool()
    newcomer = tx(3, 0, fee=11)
    add(mp, newcomer)
    assert len(mp) == 3 and mp.evicted == 1
    assert tx(0, 0, fee=10).txid not in mp and newcomer.txid in mp
    assert key(0).address not in mp.by_sender  # an emptied queue is dropped


def test_eviction_takes_a_queue_tail_never_a_transaction_others_wait_on():
    mp = pool(transactions_max=3)
    add(mp, tx(0, 0, fee=5))  # the cheapest, but nonce 1 waits on it
    add(mp, tx(0, 1, fee=50))
    add(mp, tx(1, 0, fee=20))
    # Tails are sender 0's nonce 1 (50) and sender 1's nonce 0 (20): 20 is the bar.
    with pytest.raises(MempoolFull):
        add(mp, tx(2, 0, fee=10))
    add(mp, tx(2, 0, fee=21))
    assert queue_nonces(mp, 0) == [0, 1]  # no gap was made
    assert queue_nonces(mp, 1) == []
    assert queue_nonces(mp, 2) == [0]


def test_a_sender_cannot_evict_its_own_tail():
    mp = pool(transactions_max=1)
    add(mp, tx(0, 0, fee=5))
    with pytest.raises(MempoolFull):
        add(mp, tx(0, 1, fee=100))
    assert queue_nonces(mp, 0) == [0]


def test_a_replacement_in_a_full_pool_evicts_nothing():
    mp = full_pool()
    add(mp, tx(0, 0, fee=15, amount=1))
    assert len(mp) == 3 and mp.evicted == 0
    assert mp.by_sender[key(0).address][0].fee == 15


# --- select ----------------------------------------------------------------------------------


def test_select_keeps_nonce_order_per_sender_and_fee_order_across_senders():
    mp = pool()
    a0, a1 = tx(0, 0, fee=1), tx(0, 1, fee=100)
    b0 = tx(1, 0, fee=50)
    c0, c1 = tx(2, 0, fee=10), tx(2, 1, fee=5)
    d1 = tx(3, 1, fee=1_000)  # nonce 0 missing: not executable
    for t in (a1, c1, d1, a0, b0, c0):
        add(mp, t)
    assert mp.select(STATE, 100) == [b0, c0, c1, a0, a1]
    assert mp.select(STATE, 2) == [b0, c0]
    assert mp.select(STATE, 0) == []


def test_select_starts_at_each_accounts_next_nonce():
    mp = pool()
    a1, a2 = tx(0, 1, fee=3), tx(0, 2, fee=3)
    b0 = tx(1, 0, fee=2)
    for t in (a1, a2, b0):
        add(mp, t)
    assert mp.select(STATE, 10) == [b0]  # sender 0 still needs nonce 0
    state = with_account(STATE, 0, BALANCE, nonce=1)
    assert mp.select(state, 10) == [a1, a2, b0]


@settings(max_examples=60, deadline=None)
@given(entries=st.lists(st.tuples(st.integers(min_value=0, max_value=3), st.integers(min_value=0, max_value=5),
                                  st.integers(min_value=1, max_value=40)), max_size=25),
       count_max=st.integers(min_value=0, max_value=30))
def test_select_matches_a_greedy_reference(entries, count_max):
    mp = pool(per_sender_max=8)
    for sender, nonce, fee in entries:
        try:
            add(mp, tx(sender, nonce, fee=fee))
        except MempoolRejected:
            pass
    # Reference: repeatedly take the best-paying transaction that is next in its sender's queue.
    queues = {s: dict(q) for s, q in mp.by_sender.items()}
    next_nonce = {s: 0 for s in queues}
    expected = []
    while len(expected) < count_max:
        heads = [q[next_nonce[s]] for s, q in queues.items() if next_nonce[s] in q]
        if not heads:
            break
        best = min(heads, key=lambda t: (-t.fee, t.txid))
        expected.append(best)
        next_nonce[best.sender_address] += 1
    assert mp.select(STATE, count_max) == expected


# --- head changes -------------------------------------------------------------------------------


def tree() -> BlockTree:
    return BlockTree(GENESIS, make_engine(GENESIS, skip_pow_check_for_simulation=True))


def extend(t: BlockTree, txs=(), *, parent=None, producer: int = 7):
    """Build and add a child of `parent` (the head) holding exactly `txs`; return Added."""
    parent = parent or t.head
    block = t.build_block(txs, key(producer).address, parent.header.timestamp_ms + 1_000, parent=parent)
    assert block.transactions == tuple(txs)
    return t.add_block(block, block.header.timestamp_ms)


def test_included_transactions_leave_the_pool():
    t, mp = tree(), pool()
    a0, a1, b0 = tx(0, 0), tx(0, 1), tx(1, 0)
    for x in (a0, a1, b0):
        add(mp, x)
    added = extend(t, (a0, b0))
    mp.on_head_changed(added, t.head_state(), CHAIN, PARAMS)
    assert a0.txid not in mp and b0.txid not in mp
    assert a1.txid in mp and len(mp) == 1
    assert mp.select(t.head_state(), 10) == [a1]


def test_transactions_made_stale_by_a_block_leave_the_pool():
    t, mp = tree(), pool()
    pending = tx(0, 0, fee=10, amount=1)
    add(mp, pending)
    included = tx(0, 0, fee=20, amount=2)  # the same nonce, mined from elsewhere
    added = extend(t, (included,))
    mp.on_head_changed(added, t.head_state(), CHAIN, PARAMS)
    assert len(mp) == 0 and key(0).address not in mp.by_sender


def test_a_reorg_takes_back_the_reverted_transactions():
    t, mp = tree(), pool()
    a0, a1, b0 = tx(0, 0), tx(0, 1), tx(1, 0)
    genesis = t.head
    for x in (a0, a1, b0):
        add(mp, x)
    first = extend(t, (a0,))
    mp.on_head_changed(first, t.head_state(), CHAIN, PARAMS)
    second = extend(t, (a1, b0))
    mp.on_head_changed(second, t.head_state(), CHAIN, PARAMS)
    assert len(mp) == 0
    # A longer branch from genesis that includes only b0 takes over.
    side1 = extend(t, (b0,), parent=genesis, producer=6)
    assert not side1.head_changed
    side2 = extend(t, (), parent=side1.entry, producer=6)
    assert not side2.head_changed  # equal work: the first seen stays
    reorg = extend(t, (), parent=side2.entry, producer=6)
    assert reorg.head_changed and reorg.reorg_depth == 2
    mp.on_head_changed(reorg, t.head_state(), CHAIN, PARAMS)
    # a0 and a1 are pending again; b0 is on the new branch, so it stays out.
    assert a0.txid in mp and a1.txid in mp and b0.txid not in mp
    assert mp.select(t.head_state(), 10) == [a0, a1]


def test_a_reorg_into_a_full_pool_takes_back_reverted_transactions_before_pending_ones_of_the_same_fee():
    # The pool is full of transactions of the same fee when a reorg reverts a block: the
    # reverted ones were in a chain already and their senders' later nonces wait for them,
    # so they go back in, in place of pending tails of other senders (no nonce gap opens).
    t, mp = tree(), pool(transactions_max=3)
    a0, a1, b0, c0, c1 = tx(0, 0), tx(0, 1), tx(1, 0), tx(2, 0), tx(2, 1)
    genesis = t.head
    add(mp, a0)
    first = extend(t, (a0,))
    mp.on_head_changed(first, t.head_state(), CHAIN, PARAMS)
    for x in (a1, b0, c0):
        add(mp, x)
    with pytest.raises(MempoolFull):
        add(mp, c1)  # a new transaction of the same fee does not push anything out
    side1 = extend(t, (), parent=genesis, producer=6)
    reorg = extend(t, (), parent=side1.entry, producer=6)
    assert reorg.head_changed and reorg.reorg_depth == 1
    readmitted = mp.on_head_changed(reorg, t.head_state(), CHAIN, PARAMS)
    assert readmitted == [a0] and a0.txid in mp and len(mp) == 3
    assert a1.txid in mp  # its sender's next nonce is not the one evicted
    assert mp.evicted == 1 and (b0.txid in mp) != (c0.txid in mp)  # one tail of another sender made room
    assert mp.select(t.head_state(), 10)[:2] == [a0, a1]


def test_on_head_changed_leaves_unrelated_transactions_alone():
    t, mp = tree(), pool()
    c0, c1 = tx(2, 0), tx(2, 1)
    add(mp, c0)
    add(mp, c1)
    added = extend(t, (tx(0, 0),))
    mp.on_head_changed(added, t.head_state(), CHAIN, PARAMS)
    assert c0.txid in mp and c1.txid in mp and len(mp) == 2


# --- listing -------------------------------------------------------------------------------------


def test_list_is_sorted_by_sender_then_nonce_and_limited():
    mp = pool()
    for x in (tx(1, 1), tx(0, 0), tx(1, 0), tx(0, 1)):
        add(mp, x)
    listed = mp.list(10)
    assert [(t.sender_address, t.nonce) for t in listed] == sorted((t.sender_address, t.nonce) for t in listed)
    assert len(listed) == 4 and len(mp.list(3)) == 3
