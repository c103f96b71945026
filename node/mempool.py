"""The mempool: pending transactions, bounded, in nonce order per sender, by fee across senders.

Admission checks the transaction against the head state and the sender's queue;
every refusal is a MempoolRejected subclass whose message says why. When full, the
cheapest transaction that ends a sender's queue is evicted for a better-paying one
(evicting from a queue's end never leaves a nonce gap).
"""

import heapq

from consensus.chain import Added
from consensus.errors import ChainlabError, InvalidTransaction
from consensus.params import ChainParams
from consensus.state import State, VerifiedSignatures, validate_transaction_kind, validate_transaction_static
from consensus.types import Transaction


class MempoolRejected(ChainlabError):
    """A transaction the mempool refuses; the message says why."""


class AlreadyKnown(MempoolRejected):
    pass


class StaleNonce(MempoolRejected):
    pass


class NonceGapTooLarge(MempoolRejected):
    pass


class ReplacementUnderpriced(MempoolRejected):
    pass


class MempoolFull(MempoolRejected):
    pass


class CannotAfford(MempoolRejected):
    pass


class Mempool:
    def __init__(self, transactions_max: int, per_sender_max: int):
        assert transactions_max >= 1 and per_sender_max >= 1
        self.transactions_max = transactions_max
        self.per_sender_max = per_sender_max
        self.by_id: dict[bytes, Transaction] = {}
        self.by_sender: dict[bytes, dict[int, Transaction]] = {}  # address -> nonce -> tx
        self.rejected = 0
        self.evicted = 0

    def __len__(self) -> int:
        return len(self.by_id)

    def __contains__(self, txid: bytes) -> bool:
        return txid in self.by_id

    def add(self, tx: Transaction, state: State, chain_id: str, params: ChainParams, *, check_signature: bool = True,
            verified: VerifiedSignatures | None = None) -> bytes:
        """Admit a transaction; returns its id. Raises InvalidTransaction or MempoolRejected."""
        try:
            return self._add(tx, state, chain_id, params, check_signature, verified)
        except (InvalidTransaction, MempoolRejected):
            self.rejected += 1
            raise

    def _add(self, tx: Transaction, state: State, chain_id: str, params: ChainParams, check_signature: bool,
             verified: VerifiedSignatures | None = None, readmit: bool = False) -> bytes:
        txid = tx.txid
        if txid in self.by_id:
            raise AlreadyKnown(f"transaction {txid.hex()[:16]} is already pending")
        validate_transaction_static(tx, chain_id, params, check_signature=check_signature, verified=verified)
        validate_transaction_kind(state, tx)  # staking only where the engine takes it
        sender = tx.sender_address
        account = state.get(sender)
        # A nonce already used on chain can never be included.
        if tx.nonce < account.nonce:
            raise StaleNonce(f"nonce {tx.nonce} is already used; the account's next nonce is {account.nonce}")
        # A bounded lead over the chain, so one sender cannot fill the pool with futures.
        if tx.nonce >= account.nonce + self.per_sender_max:
            raise NonceGapTooLarge(
                f"nonce {tx.nonce} is more than {self.per_sender_max - 1} ahead of the account's next nonce {account.nonce}"
            )
        queue = self.by_sender.get(sender, {})
        replaced = queue.get(tx.nonce)
        # Replacing a pending transaction needs a strictly higher fee.
        if replaced is not None and tx.fee <= replaced.fee:
            raise ReplacementUnderpriced(f"a transaction with nonce {tx.nonce} is pending with fee {replaced.fee}; pay more to replace it")
        # The sender can pay for everything it has queued, this one included (any order of
        # arrival: counting only lower nonces would let descending nonces overcommit).
        committed = sum(t.amount + t.fee for n, t in queue.items() if n != tx.nonce)
        if account.balance < committed + tx.amount + tx.fee:
            raise CannotAfford(
                f"balance {account.balance} cannot pay {tx.amount + tx.fee} after {committed} already pending from this sender"
            )
        if replaced is None and len(self.by_id) >= self.transactions_max:
            victim = self._cheapest_tail(excluding=sender)
            # A transaction a reorg reverted was in a block already, and later nonces of
            # its sender may wait for it: it goes back in ahead of a pending one of the
            # same fee (the tail of another sender, so no nonce gap opens there).
            if victim is None or (victim.fee > tx.fee if readmit else victim.fee >= tx.fee):
                raise MempoolFull(f"mempool holds {len(self.by_id)} transactions and none pays less than fee {tx.fee}")
            self._remove(victim)
            self.evicted += 1
        if replaced is not None:
            self._remove(replaced)
        self.by_id[txid] = tx
        self.by_sender.setdefault(sender, {})[tx.nonce] = tx
        return txid

    def _cheapest_tail(self, excluding: bytes) -> Transaction | None:
        tails = [q[max(q)] for s, q in self.by_sender.items() if q and s != excluding]
        return min(tails, key=lambda t: (t.fee, t.txid), default=None)

    def _remove(self, tx: Transaction) -> None:
        self.by_id.pop(tx.txid, None)
        sender = tx.sender_address
        queue = self.by_sender.get(sender)
        if queue is not None:
            if queue.get(tx.nonce) == tx:
                del queue[tx.nonce]
            if not queue:
                del self.by_sender[sender]

    def select(self, state: State, count_max: int) -> list[Transaction]:
        """Executable transactions by fee, each sender's in nonce order, at most `count_max`."""
        heap: list[tuple[int, bytes, int, bytes]] = []  # (-fee, txid, nonce, sender)
        for sender, queue in self.by_sender.items():
            nonce = state.get(sender).nonce
            if nonce in queue:
                tx = queue[nonce]
                heap.append((-tx.fee, tx.txid, nonce, sender))
        heapq.heapify(heap)
        chosen: list[Transaction] = []
        while heap and len(chosen) < count_max:
            _, _, nonce, sender = heapq.heappop(heap)
            queue = self.by_sender[sender]
            chosen.append(queue[nonce])
            following = queue.get(nonce + 1)
            if following is not None:
                heapq.heappush(heap, (-following.fee, following.txid, nonce + 1, sender))
        return chosen

    def on_head_changed(self, added: Added, state: State, chain_id: str, params: ChainParams) -> list[Transaction]:
        """Drop what the new chain included or made stale; take back what a reorg reverted.

        Returns the reverted transactions taken back, which the node gossips again: peers
        that only ever saw them in the losing branch need them to include them."""
        for entry in added.applied:
            for tx in entry.block.transactions:
                if tx.txid in self.by_id:
                    self._remove(tx)
        for sender in list(self.by_sender):
            nonce = state.get(sender).nonce
            for tx in [t for n, t in self.by_sender.get(sender, {}).items() if n < nonce]:
                self._remove(tx)
        readmitted = []
        for entry in reversed(added.reverted):  # lowest first, so nonces arrive in order
            for tx in entry.block.transactions:
                try:
                    # Signatures were checked when the block was applied.
                    self._add(tx, state, chain_id, params, check_signature=False, readmit=True)
                except (InvalidTransaction, MempoolRejected):
                    # Included again on the new branch, no longer payable, or a full pool
                    # of higher fees: the new chain's rules, not a loss to report.
                    continue
                readmitted.append(tx)
        return readmitted

    def list(self, limit: int) -> list[Transaction]:
        return sorted(self.by_id.values(), key=lambda t: (t.sender_address, t.nonce))[:limit]
