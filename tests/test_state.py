"""The account state transition (consensus/state.py): one test per transaction rule,
the reward and fee split, and supply conservation.

How: each rule gets a transaction that breaks exactly that rule (and a control that
passes), and the test asserts the specific exception class and the words of its
message. Reward and fee tests check every balance and counter after a block. A
hypothesis test applies random blocks of valid and invalid transfers (bad nonces,
overdrafts, self-transfers, forged signatures, overflowing recipients and producers)
and checks after every block that a rejected block changed nothing, that an accepted
one matches a simple reference model, and that total_balance() == expected_supply().
"""

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from consensus.codec import U64_MAX
from consensus.errors import (
    BadNonce,
    FeeTooLow,
    InsufficientFunds,
    InvalidSignature,
    InvalidTransaction,
    ValidationError,
    WrongChain,
)
from consensus.params import ChainParams
from consensus.state import (
    Account,
    State,
    compute_fee_split,
    process_block_body,
    process_transaction,
    state_from_allocations,
    validate_transaction_state,
    validate_transaction_static,
)
from consensus.types import TX_STAKE, TX_UNSTAKE

from helpers_chain import MINIMAL, key, outsider, state_snapshot, transfer

CHAIN = "chainlab-pow-chainlab"
ALICE, BOB, CAROL = key(0), key(1), key(2)
PRODUCER = outsider(7).address


def fresh_state(**extra: int) -> State:
    allocations = {ALICE.address: 1_000, BOB.address: 500}
    allocations.update({bytes.fromhex(a): b for a, b in extra.items()})
    return state_from_allocations(tuple(sorted(allocations.items())))


def check(tx, state: State | None = None, params: ChainParams = MINIMAL) -> None:
    """Both validation stages, as a block applies them."""
    validate_transaction_static(tx, CHAIN, params)
    validate_transaction_state(state or fresh_state(), tx)


def test_a_valid_transfer_passes_every_check():
    check(transfer(ALICE, BOB.address, 100, nonce=0, fee=1, chain_id=CHAIN))


# --- one test per rule ----------------------------------------------------------------

def test_unknown_kind():
    tx = transfer(ALICE, BOB.address, 100, nonce=0, chain_id=CHAIN)._replace(kind=7)
    with pytest.raises(InvalidTransaction, match="kind 7 is not supported") as info:
        validate_transaction_static(tx, CHAIN, MINIMAL)
    assert type(info.value) is InvalidTransaction


@pytest.mark.parametrize("kind", [TX_STAKE, TX_UNSTAKE])
def test_staking_kinds_need_a_proof_of_stake_chain(kind):
    tx = transfer(ALICE, bytes(20), 0, nonce=0, chain_id=CHAIN, kind=kind)
    validate_transaction_static(tx, CHAIN, MINIMAL, check_signature=False)  # well formed ...
    state = fresh_state()
    with pytest.raises(InvalidTransaction, match="need a proof-of-stake chain"):
        process_transaction(state, tx, MINIMAL)  # ... but no registry takes it here
    assert state.get(ALICE.address).nonce == 0


@pytest.mark.parametrize("recipient, amount, kind, message", [
    (b"\x01" * 20, 5, TX_STAKE, "zero address as recipient"),
    (bytes(20), 5, TX_UNSTAKE, "moves no amount"),
])
def test_staking_transactions_are_well_formed(recipient, amount, kind, message):
    tx = transfer(ALICE, recipient, amount, nonce=0, chain_id=CHAIN, kind=kind)
    with pytest.raises(InvalidTransaction, match=message):
        validate_transaction_static(tx, CHAIN, MINIMAL, check_signature=False)


def test_wrong_chain():
    tx = transfer(ALICE, BOB.address, 100, nonce=0, chain_id="other-chain")
    with pytest.raises(WrongChain, match="for chain 'other-chain', this is 'chainlab-pow-chainlab'"):
        validate_transaction_static(tx, CHAIN, MINIMAL)


def test_fee_below_minimum():
    params = ChainParams(block_reward=10, fee_min=5, fee_burn_percent=10, reorg_depth_max=8, future_drift_ms=1000)
    with pytest.raises(FeeTooLow, match="fee 4 is below the minimum 5"):
        validate_transaction_static(transfer(ALICE, BOB.address, 1, nonce=0, fee=4, chain_id=CHAIN), CHAIN, params)
    validate_transaction_static(transfer(ALICE, BOB.address, 1, nonce=0, fee=5, chain_id=CHAIN), CHAIN, params)
    # The minimal preset's minimum is 1: a free transaction is refused.
    with pytest.raises(FeeTooLow, match="fee 0 is below the minimum 1"):
        validate_transaction_static(transfer(ALICE, BOB.address, 1, nonce=0, fee=0, chain_id=CHAIN), CHAIN, MINIMAL)


def test_self_transfer():
    tx = transfer(ALICE, ALICE.address, 100, nonce=0, chain_id=CHAIN)
    with pytest.raises(InvalidTransaction, match="sender and recipient are the same account"):
        validate_transaction_static(tx, CHAIN, MINIMAL)


def test_bad_signature():
    good = transfer(ALICE, BOB.address, 100, nonce=0, chain_id=CHAIN)
    flipped = good._replace(signature=bytes([good.signature[0] ^ 1]) + good.signature[1:])
    altered = good._replace(amount=101)  # signed for 100
    by_other_key = transfer(BOB, CAROL.address, 100, nonce=0, chain_id=CHAIN)._replace(sender=ALICE.public_key)
    zero = good._replace(signature=bytes(64))
    for tx in (flipped, altered, by_other_key, zero):
        with pytest.raises(InvalidSignature, match="signature does not verify"):
            validate_transaction_static(tx, CHAIN, MINIMAL)
        # The switch used by the block builder skips only the signature.
        validate_transaction_static(tx, CHAIN, MINIMAL, check_signature=False)
    validate_transaction_static(good, CHAIN, MINIMAL)


def test_signature_covers_the_chain_id():
    # Re-labelling a signed transaction for another chain breaks its signature.
    tx = transfer(ALICE, BOB.address, 100, nonce=0, chain_id="other-chain")._replace(chain_id=CHAIN)
    with pytest.raises(InvalidSignature):
        validate_transaction_static(tx, CHAIN, MINIMAL)


def test_bad_nonce_too_low_and_too_high():
    state = fresh_state()
    state.accounts[ALICE.address] = Account(1_000, 3)
    for nonce in (0, 2, 4, 100):
        with pytest.raises(BadNonce, match=f"nonce {nonce} does not match the account's next nonce 3"):
            validate_transaction_state(state, transfer(ALICE, BOB.address, 1, nonce=nonce, chain_id=CHAIN))
    validate_transaction_state(state, transfer(ALICE, BOB.address, 1, nonce=3, chain_id=CHAIN))


def test_replay_is_a_bad_nonce():
    state = fresh_state()
    tx = transfer(ALICE, BOB.address, 10, nonce=0, chain_id=CHAIN)
    process_transaction(state, tx, MINIMAL)
    with pytest.raises(BadNonce, match="nonce 0 does not match the account's next nonce 1"):
        process_transaction(state, tx, MINIMAL)


def test_insufficient_funds_counts_amount_plus_fee():
    state = fresh_state()  # Alice holds 1000
    with pytest.raises(InsufficientFunds, match="balance 1000 is less than amount 1000 \\+ fee 1"):
        validate_transaction_state(state, transfer(ALICE, BOB.address, 1_000, nonce=0, fee=1, chain_id=CHAIN))
    with pytest.raises(InsufficientFunds, match="balance 1000 is less than amount 995 \\+ fee 6"):
        validate_transaction_state(state, transfer(ALICE, BOB.address, 995, nonce=0, fee=6, chain_id=CHAIN))
    # Spending everything, fee included, is allowed.
    validate_transaction_state(state, transfer(ALICE, BOB.address, 995, nonce=0, fee=5, chain_id=CHAIN))


def test_an_unknown_sender_has_nothing():
    stranger = outsider(1)
    with pytest.raises(InsufficientFunds, match="balance 0"):
        validate_transaction_state(fresh_state(), transfer(stranger, BOB.address, 0, nonce=0, fee=1, chain_id=CHAIN))


def test_recipient_overflow():
    state = fresh_state()
    state.accounts[BOB.address] = Account(U64_MAX - 5, 0)
    with pytest.raises(InvalidTransaction, match="recipient balance would overflow 64 bits"):
        validate_transaction_state(state, transfer(ALICE, BOB.address, 6, nonce=0, chain_id=CHAIN))
    validate_transaction_state(state, transfer(ALICE, BOB.address, 5, nonce=0, chain_id=CHAIN))


def test_producer_overflow_rejects_the_block():
    state = fresh_state()
    state.accounts[PRODUCER] = Account(U64_MAX - MINIMAL.block_reward + 1, 0)
    with pytest.raises(InvalidTransaction, match="producer balance would overflow 64 bits"):
        process_block_body(state, (), PRODUCER, CHAIN, MINIMAL)
    state.accounts[PRODUCER] = Account(U64_MAX - MINIMAL.block_reward, 0)
    assert process_block_body(state, (), PRODUCER, CHAIN, MINIMAL).get(PRODUCER).balance == U64_MAX


def test_every_expected_failure_is_a_validation_error():
    for cls in (WrongChain, BadNonce, InsufficientFunds, FeeTooLow, InvalidSignature):
        assert issubclass(cls, ValidationError)
    assert issubclass(WrongChain, InvalidTransaction)


# --- applying transactions and blocks -------------------------------------------------

def test_process_transaction_moves_amount_and_fee_and_bumps_the_nonce():
    state = fresh_state()
    paid = process_transaction(state, transfer(ALICE, CAROL.address, 300, nonce=0, fee=25, chain_id=CHAIN), MINIMAL)
    assert state.get(ALICE.address) == Account(1_000 - 300 - 25, 1)
    assert state.get(CAROL.address) == Account(300, 0)
    assert state.get(BOB.address) == Account(500, 0)
    # 10 % of 25 rounds down to 2 burned; 23 go to the producer (credited by the block).
    assert (state.burned, paid) == (2, 23)


@pytest.mark.parametrize("fee,percent,burned", [
    (25, 10, 2), (100, 10, 10), (9, 10, 0), (1, 100, 1), (77, 0, 0), (3, 50, 1),
])
def test_fee_split(fee, percent, burned):
    params = ChainParams(block_reward=1, fee_min=1, fee_burn_percent=percent, reorg_depth_max=1, future_drift_ms=1)
    assert compute_fee_split(fee, params) == (burned, fee - burned)


def test_block_reward_and_fees_land_with_the_producer():
    parent = fresh_state()
    txs = (
        transfer(ALICE, CAROL.address, 100, nonce=0, fee=30, chain_id=CHAIN),
        transfer(ALICE, BOB.address, 50, nonce=1, fee=20, chain_id=CHAIN),
        transfer(BOB, CAROL.address, 10, nonce=0, fee=5, chain_id=CHAIN),
    )
    before = state_snapshot(parent)
    after = process_block_body(parent, txs, PRODUCER, CHAIN, MINIMAL)
    assert state_snapshot(parent) == before, "the parent state must stay untouched"
    burned = 3 + 2 + 0  # 10 % of 30, 20 and 5, each rounded down
    assert after.burned == burned
    assert after.issued == MINIMAL.block_reward
    assert after.get(PRODUCER) == Account(MINIMAL.block_reward + (30 + 20 + 5) - burned, 0)
    assert after.get(ALICE.address) == Account(1_000 - 150 - 50, 2)
    assert after.get(BOB.address) == Account(500 + 50 - 15, 1)
    assert after.get(CAROL.address) == Account(110, 0)
    assert after.total_balance() == after.expected_supply() == 1_500 + MINIMAL.block_reward - burned


def test_producer_paying_itself_fees_still_conserves_supply():
    # The producer may also send transactions in its own block.
    parent = fresh_state()
    tx = transfer(ALICE, BOB.address, 10, nonce=0, fee=40, chain_id=CHAIN)
    after = process_block_body(parent, (tx,), ALICE.address, CHAIN, MINIMAL)
    assert after.get(ALICE.address).balance == 1_000 - 10 - 40 + MINIMAL.block_reward + 36
    assert after.total_balance() == after.expected_supply()


def test_an_invalid_transaction_rejects_the_whole_block_and_changes_nothing():
    parent = fresh_state()
    before = state_snapshot(parent)
    txs = (
        transfer(ALICE, BOB.address, 10, nonce=0, chain_id=CHAIN),
        transfer(ALICE, BOB.address, 10, nonce=0, chain_id=CHAIN, fee=11),  # nonce reused
    )
    with pytest.raises(BadNonce):
        process_block_body(parent, txs, PRODUCER, CHAIN, MINIMAL)
    assert state_snapshot(parent) == before


def test_signatures_are_checked_in_blocks_unless_switched_off():
    forged = transfer(ALICE, BOB.address, 10, nonce=0, chain_id=CHAIN)._replace(amount=900)
    with pytest.raises(InvalidSignature):
        process_block_body(fresh_state(), (forged,), PRODUCER, CHAIN, MINIMAL)
    after = process_block_body(fresh_state(), (forged,), PRODUCER, CHAIN, MINIMAL, check_signatures=False)
    assert after.get(BOB.address).balance == 500 + 900


def test_a_bad_signature_is_an_invalid_transaction():
    forged = transfer(ALICE, BOB.address, 10, nonce=0, chain_id=CHAIN)._replace(amount=11)
    with pytest.raises(InvalidTransaction):
        validate_transaction_static(forged, CHAIN, MINIMAL)
    with pytest.raises(InvalidTransaction):
        process_block_body(fresh_state(), (forged,), PRODUCER, CHAIN, MINIMAL)


def test_state_root_commits_to_accounts_and_counters():
    a, b = fresh_state(), fresh_state()
    assert a.root() == b.root()
    b.accounts[BOB.address] = Account(500, 1)
    assert a.root() != b.root()
    c = fresh_state()
    c.burned = 1
    assert a.root() != c.root()
    # Insertion order does not matter: accounts are sorted before hashing.
    d = State(dict(reversed(list(a.accounts.items()))), a.genesis_supply)
    assert d.root() == a.root()


# --- supply conservation under random blocks -----------------------------------------

RICH_BALANCE = U64_MAX - 10_000_000  # close to the top so overflow rules get exercised
KEYS = [key(i) for i in range(4)]
GENESIS_BALANCES = {KEYS[0].address: 1_000_000, KEYS[1].address: 50_000, KEYS[2].address: RICH_BALANCE}
# KEYS[3] starts with nothing.

def _rarely(value, common, one_in: int):
    return st.sampled_from([common] * (one_in - 1) + [value])


# Each way to break a transaction is rare, so most blocks hold several valid ones.
tx_specs = st.fixed_dictionaries({
    "sender": st.sampled_from([0, 0, 1, 1, 2, 2, 3]),  # 3 has only what it received
    "recipient_offset": st.sampled_from([1, 2, 3] * 8 + [0]),  # 0 is a self-transfer
    "amount": st.one_of(st.integers(0, 40_000), _rarely(20_000_000, 100, 8)),  # 20M overdraws or overflows
    "fee": st.one_of(st.integers(1, 5_000), _rarely(0, 1, 20)),
    "nonce_shift": st.sampled_from([0] * 18 + [-1, 1]),
    "forge": _rarely(True, False, 20),
    "wrong_chain": _rarely(True, False, 30),
})
block_specs = st.tuples(st.lists(tx_specs, min_size=0, max_size=4), st.integers(0, 4))


def _reference_apply(model: dict, nonces: dict, txs, producer: bytes, params: ChainParams, specs) -> tuple[dict, dict, int] | None:
    """A plain model of the rules: the block's result, or None when it must be rejected."""
    balances, nonce_of = dict(model), dict(nonces)
    income, burned = params.block_reward, 0
    for tx, spec in zip(txs, specs):
        sender = tx.sender_address
        if spec["wrong_chain"] or spec["forge"] or tx.fee < params.fee_min or tx.recipient == sender:
            return None
        if tx.nonce != nonce_of.get(sender, 0) or balances.get(sender, 0) < tx.amount + tx.fee:
            return None
        if balances.get(tx.recipient, 0) + tx.amount > U64_MAX:
            return None
        balances[sender] -= tx.amount + tx.fee
        nonce_of[sender] = nonce_of.get(sender, 0) + 1
        balances[tx.recipient] = balances.get(tx.recipient, 0) + tx.amount
        b = tx.fee * params.fee_burn_percent // 100
        burned += b
        income += tx.fee - b
    if balances.get(producer, 0) + income > U64_MAX:
        return None
    balances[producer] = balances.get(producer, 0) + income
    return balances, nonce_of, burned


@settings(max_examples=100, deadline=None)
@given(st.lists(block_specs, min_size=1, max_size=12))
def test_random_blocks_conserve_supply_and_match_a_reference(blocks):
    state = state_from_allocations(tuple(sorted(GENESIS_BALANCES.items())))
    model = dict(GENESIS_BALANCES)
    nonces: dict[bytes, int] = {}
    burned_total = 0
    producers = [KEYS[0].address, KEYS[1].address, KEYS[2].address, KEYS[3].address, PRODUCER]
    accepted = 0
    for tx_list, producer_index in blocks:
        producer = producers[producer_index]
        # Nonces are planned from the model, so most blocks are valid and a few are not.
        planned: dict[bytes, int] = {}
        txs = []
        for spec in tx_list:
            sender = KEYS[spec["sender"]]
            base = planned.get(sender.address, nonces.get(sender.address, 0))
            nonce = max(0, base + spec["nonce_shift"])
            planned[sender.address] = base + 1
            tx = transfer(sender, KEYS[(spec["sender"] + spec["recipient_offset"]) % 4].address, spec["amount"], nonce=nonce, fee=spec["fee"],
                          chain_id="elsewhere" if spec["wrong_chain"] else CHAIN)
            if spec["forge"]:
                tx = tx._replace(amount=tx.amount + 1)
            txs.append(tx)
        expected = _reference_apply(model, nonces, txs, producer, MINIMAL, tx_list)
        before = state_snapshot(state)
        try:
            state = process_block_body(state, tuple(txs), producer, CHAIN, MINIMAL)
        except InvalidTransaction:
            assert expected is None, "the state rejected a block the reference accepts"
            event("block rejected")
            assert state_snapshot(state) == before, "a rejected block changed the parent state"
        else:
            assert expected is not None, "the state accepted a block the reference rejects"
            model, nonces, burned = expected
            burned_total += burned
            accepted += 1
            event(f"block accepted with {len(txs)} transactions")
            assert {a: acct.balance for a, acct in state.accounts.items() if acct.balance or a in model} == \
                {a: b for a, b in model.items() if b or a in state.accounts}
            assert {a: acct.nonce for a, acct in state.accounts.items() if acct.nonce} == {a: n for a, n in nonces.items() if n}
        assert state.total_balance() == state.expected_supply()
        assert state.issued == accepted * MINIMAL.block_reward
        assert state.burned == burned_total
        assert all(0 <= acct.balance <= U64_MAX for acct in state.accounts.values())
