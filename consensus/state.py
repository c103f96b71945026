"""Accounts and the state transition (spec style: validate_, process_, compute_).

A State maps addresses to (balance, nonce). Blocks are applied to a copy, so the
state after every unfinalized block stays available for reorgs. Supply accounting:
sum of balances == genesis supply + issued rewards - burned fees, at every block.
"""

from dataclasses import dataclass, field
from typing import Any, NamedTuple

from consensus import codec
from consensus.crypto import sha256, verify
from consensus.errors import (
    BadNonce,
    FeeTooLow,
    InsufficientFunds,
    InvalidTransaction,
    InvalidTransactionSignature,
    WrongChain,
)
from consensus.params import ChainParams
from consensus.types import TX_STAKE, TX_TRANSFER, TX_UNSTAKE, Transaction


class Account(NamedTuple):
    balance: int
    nonce: int


EMPTY_ACCOUNT = Account(0, 0)


@dataclass
class State:
    accounts: dict[bytes, Account] = field(default_factory=dict)
    genesis_supply: int = 0
    issued: int = 0  # block rewards created since genesis
    burned: int = 0  # fees destroyed since genesis
    # The engine's own state (proof of stake: validators, seed, checkpoints), with copy()
    # and root(); None where the engine keeps none (proof of work).
    engine: Any = None

    def copy(self) -> "State":
        return State(dict(self.accounts), self.genesis_supply, self.issued, self.burned,
                     None if self.engine is None else self.engine.copy())

    def get(self, address: bytes) -> Account:
        return self.accounts.get(address, EMPTY_ACCOUNT)

    def root(self) -> bytes:
        """Commitment to every account (sorted) and the supply counters.

        A flat hash over sorted accounts: O(accounts) per block, fine for a testnet's
        thousands of accounts; a Merkle trie would give proofs, which nothing needs yet.
        """
        items = sorted(self.accounts.items())
        fields = ["chainlab/state", self.issued, self.burned, [(a, b, n) for a, (b, n) in items]]
        if self.engine is not None:
            fields.append(self.engine.root())
        return sha256(codec.encode(fields))

    def total_balance(self) -> int:
        """Every coin: account balances plus what the engine holds locked (stakes)."""
        locked = self.engine.locked() if self.engine is not None else 0
        return sum(acct.balance for acct in self.accounts.values()) + locked

    def expected_supply(self) -> int:
        return self.genesis_supply + self.issued - self.burned


def state_from_allocations(allocations: tuple[tuple[bytes, int], ...]) -> State:
    accounts = {address: Account(balance, 0) for address, balance in allocations}
    return State(accounts, genesis_supply=sum(b for _, b in allocations))


class VerifiedSignatures:
    """Ids of transactions whose signature verified, bounded, oldest forgotten first.

    A txid hashes the whole signed transaction (key, message and signature), so a hit
    proves the same check passed before. Each transaction is otherwise verified twice
    per node, in the mempool and again in the block (Bitcoin keeps such a cache too).
    """

    def __init__(self, entries_max: int = 100_000):
        assert entries_max >= 1
        self.entries_max = entries_max
        self._ids: dict[bytes, None] = {}

    def __contains__(self, txid: bytes) -> bool:
        return txid in self._ids

    def add(self, txid: bytes) -> None:
        self._ids[txid] = None
        if len(self._ids) > self.entries_max:
            del self._ids[next(iter(self._ids))]


def validate_transaction_static(
    tx: Transaction,
    chain_id: str,
    params: ChainParams,
    *,
    check_signature: bool = True,
    verified: VerifiedSignatures | None = None,
) -> None:
    """Checks that need no state. Raises a named InvalidTransaction."""
    # Transfers, and the staking kinds that an engine with a registry applies (process_transaction).
    if tx.kind not in (TX_TRANSFER, TX_STAKE, TX_UNSTAKE):
        raise InvalidTransaction(f"transaction kind {tx.kind} is not supported on this chain")
    if tx.kind != TX_TRANSFER and tx.recipient != bytes(len(tx.recipient)):
        raise InvalidTransaction("a staking transaction has the zero address as recipient")
    if tx.kind == TX_UNSTAKE and tx.amount != 0:
        raise InvalidTransaction("an unstake moves no amount: the whole stake unbonds")
    # A signature for another chain must not replay here.
    if tx.chain_id != chain_id:
        raise WrongChain(f"transaction is for chain {tx.chain_id!r}, this is {chain_id!r}")
    # Every transaction pays at least the minimum fee.
    if tx.fee < params.fee_min:
        raise FeeTooLow(f"fee {tx.fee} is below the minimum {params.fee_min}")
    # Sending to yourself would only churn the nonce; refuse it as a likely mistake.
    if tx.kind == TX_TRANSFER and tx.recipient == tx.sender_address:
        raise InvalidTransaction("sender and recipient are the same account")
    if check_signature:
        txid = tx.txid if verified is not None else b""
        if verified is not None and txid in verified:
            return
        if not verify(tx.sender, tx.signature, tx.signing_bytes()):
            raise InvalidTransactionSignature("transaction signature does not verify against the sender's key")
        if verified is not None:
            verified.add(txid)


def validate_transaction_state(state: State, tx: Transaction) -> None:
    """Checks against the sender's account. Raises a named InvalidTransaction."""
    sender = state.get(tx.sender_address)
    # Nonces are consumed in order: no replay, no gaps inside a block.
    if tx.nonce != sender.nonce:
        raise BadNonce(f"nonce {tx.nonce} does not match the account's next nonce {sender.nonce}")
    # The sender pays amount and fee from its balance.
    if sender.balance < tx.amount + tx.fee:
        raise InsufficientFunds(f"balance {sender.balance} is less than amount {tx.amount} + fee {tx.fee}")
    # A balance never exceeds 64 bits.
    if state.get(tx.recipient).balance + tx.amount > codec.U64_MAX:
        raise InvalidTransaction("recipient balance would overflow 64 bits")


def compute_fee_split(fee: int, params: ChainParams) -> tuple[int, int]:
    """(burned, paid to the producer) for one fee."""
    burned = fee * params.fee_burn_percent // 100
    return burned, fee - burned


def validate_transaction_kind(state: State, tx: Transaction) -> None:
    """Staking kinds only where the engine keeps a registry, and only if it takes them."""
    if tx.kind == TX_TRANSFER:
        return
    if state.engine is None or not hasattr(state.engine, "check_staking"):
        raise InvalidTransaction("staking transactions need a proof-of-stake chain")
    state.engine.check_staking(tx)


def process_transaction(state: State, tx: Transaction, params: ChainParams) -> int:
    """Apply a validated transaction in place; return the producer's share of the fee.

    A stake moves `amount` from the sender's balance into the engine's registry; an
    unstake starts the unbonding of the sender's stake. Only an engine with a registry
    (proof of stake) takes them; it checks its rules before anything changes.
    """
    validate_transaction_state(state, tx)
    validate_transaction_kind(state, tx)
    if tx.kind != TX_TRANSFER:
        state.engine.process_staking(tx)
    sender_address = tx.sender_address
    sender = state.get(sender_address)
    state.accounts[sender_address] = Account(sender.balance - tx.amount - tx.fee, sender.nonce + 1)
    if tx.kind == TX_TRANSFER:
        recipient = state.get(tx.recipient)
        state.accounts[tx.recipient] = Account(recipient.balance + tx.amount, recipient.nonce)
    burned, paid = compute_fee_split(tx.fee, params)
    state.burned += burned
    return paid


def process_block_body(
    parent_state: State,
    transactions: tuple[Transaction, ...],
    producer: bytes,
    chain_id: str,
    params: ChainParams,
    *,
    check_signatures: bool = True,
    verified: VerifiedSignatures | None = None,
) -> State:
    """The state after a block's transactions and its reward; the parent is untouched."""
    state = parent_state.copy()
    producer_income = params.block_reward
    for tx in transactions:
        validate_transaction_static(tx, chain_id, params, check_signature=check_signatures, verified=verified)
        producer_income += process_transaction(state, tx, params)
    process_producer_income(state, producer, producer_income, params)
    return state


def process_producer_income(state: State, producer: bytes, income: int, params: ChainParams) -> None:
    """Credit the block reward and the producer's share of fees, in place."""
    acct = state.get(producer)
    if acct.balance + income > codec.U64_MAX:
        raise InvalidTransaction("producer balance would overflow 64 bits")
    state.accounts[producer] = Account(acct.balance + income, acct.nonce)
    state.issued += params.block_reward
