"""The block tree: every known valid block, its heads, fork choice and reorgs.

Every block in the tree passed every rule, and the state after each unfinalized block
is kept so a branch can be extended or switched to at any time. The engine says which
head is best (`choose_head`) and what is final (`final_height`: proof of work, the
blocks deeper than `reorg_depth_max` below the head): nothing may fork below the final
height, and the states and side branches there are pruned.
"""

from dataclasses import dataclass, field
from typing import Iterable

from consensus.engine import Engine
from consensus.errors import (
    BadTimestamp,
    DuplicateBlock,
    FutureBlock,
    InvalidBlock,
    ReorgTooDeep,
    UnknownParent,
)
from consensus.genesis import Genesis
from consensus.params import MEDIAN_TIME_BLOCKS, ChainParams, params_from
from consensus.state import (
    State,
    VerifiedSignatures,
    process_block_body,
    process_producer_income,
    process_transaction,
    state_from_allocations,
    validate_transaction_static,
)
from consensus.errors import InvalidTransaction
from consensus.types import (
    BLOCK_TRANSACTIONS_MAX,
    BLOCK_VERSION,
    NONCE_BYTES,
    Block,
    BlockHeader,
    EMPTY_CONSENSUS_ROOT,
    Transaction,
    compute_tx_root,
    consensus_root_of,
)


@dataclass(eq=False, slots=True)
class Entry:
    """A block in the tree, with what fork choice and reorgs need."""

    block: Block
    hash: bytes
    score: int  # cumulative score of the branch up to and including this block
    seq: int  # arrival order: the first seen wins a tie
    state: State | None  # None once the block is final and its state pruned
    parent: "Entry | None"
    children: list["Entry"] = field(default_factory=list)

    @property
    def height(self) -> int:
        return self.block.header.height

    @property
    def header(self) -> BlockHeader:
        return self.block.header


@dataclass(frozen=True)
class Added:
    """What adding a block did."""

    entry: Entry  # the block added (for reconsider_head: the new head)
    head_changed: bool
    reverted: tuple[Entry, ...]  # blocks that left the canonical chain, highest first
    applied: tuple[Entry, ...]  # blocks that joined it, lowest first

    @property
    def reorg_depth(self) -> int:
        return len(self.reverted)


@dataclass(eq=False, slots=True)
class Template:
    """A block being assembled on `parent`: the state after `chosen`, before the
    producer's income, and that income (reward plus fees) so far."""

    parent: Entry
    state: State
    chosen: list[Transaction]
    income: int


def make_genesis_block(genesis: Genesis, engine: Engine) -> tuple[Block, State]:
    state = state_from_allocations(genesis.allocations)
    state.engine = engine.initial_state(genesis)
    state.genesis_supply = genesis.supply  # balances and genesis stakes
    header = BlockHeader(
        version=BLOCK_VERSION,
        height=0,
        parent=genesis.hash,  # binds every genesis parameter into the chain
        timestamp_ms=genesis.timestamp_ms,
        tx_root=compute_tx_root(()),
        state_root=state.root(),
        producer=bytes(20),
        bits=engine.genesis_bits(),
        consensus_root=EMPTY_CONSENSUS_ROOT,
        nonce=bytes(NONCE_BYTES),
    )
    return Block(header, ()), state


class BlockTree:
    def __init__(self, genesis: Genesis, engine: Engine, *, check_signatures: bool = True):
        self.genesis = genesis
        self.engine = engine
        self.params: ChainParams = params_from(ChainParams, genesis)
        self.chain_id = genesis.chain_id
        self.check_signatures = check_signatures
        self.verified = VerifiedSignatures()  # shared with the mempool: verify each signature once
        block, state = make_genesis_block(genesis, engine)
        self._seq = 0
        root = Entry(block, block.hash, engine.block_score(block.header), 0, state, None)
        self.entries: dict[bytes, Entry] = {root.hash: root}
        self.genesis_entry = root
        self.head = root
        self.canonical: list[Entry] = [root]  # canonical[h] is the head's ancestor at height h
        self.tx_heights: dict[bytes, int] = {}  # txid -> height, canonical chain only
        self.final_height = 0

    # --- reads -------------------------------------------------------------

    def get(self, block_hash: bytes) -> Entry | None:
        return self.entries.get(block_hash)

    def canonical_at(self, height: int) -> Entry | None:
        return self.canonical[height] if 0 <= height < len(self.canonical) else None

    def ancestor(self, entry: Entry, height: int) -> Entry:
        assert 0 <= height <= entry.height
        if self.canonical_at(entry.height) is entry:
            return self.canonical[height]
        while entry.height > height:
            # A non-canonical branch meets the canonical chain within the reorg bound,
            # so this walk is short; from there the index answers.
            if self.canonical_at(entry.height) is entry:
                return self.canonical[height]
            assert entry.parent is not None
            entry = entry.parent
        return entry

    def common_ancestor(self, a: Entry, b: Entry) -> Entry:
        while a.height > b.height:
            a = a.parent  # type: ignore[assignment]
        while b.height > a.height:
            b = b.parent  # type: ignore[assignment]
        while a is not b:
            a, b = a.parent, b.parent  # type: ignore[assignment]
        return a

    def tips(self) -> list[Entry]:
        """Blocks without children, heaviest first."""
        leaves = [e for e in self.entries.values() if not e.children]
        return sorted(leaves, key=lambda e: (-e.score, e.seq))

    def median_time_past(self, entry: Entry) -> int:
        times = []
        cursor: Entry | None = entry
        while cursor is not None and len(times) < MEDIAN_TIME_BLOCKS:
            times.append(cursor.header.timestamp_ms)
            cursor = cursor.parent
        times.sort()
        return times[len(times) // 2]

    def head_state(self) -> State:
        assert self.head.state is not None
        return self.head.state

    def transaction_location(self, txid: bytes) -> int | None:
        return self.tx_heights.get(txid)

    # --- the transition ------------------------------------------------------

    def validate_block(self, block: Block, now_ms: int) -> tuple[Entry, State]:
        """Every rule; returns the parent and the state after the block. Changes nothing."""
        header = block.header
        block_hash = header.hash
        # A block we have is neither new nor a fault.
        if block_hash in self.entries:
            raise DuplicateBlock(f"block {block_hash.hex()[:16]} is already known")
        parent = self.entries.get(header.parent)
        # The parent must be known; the caller may keep the block as an orphan.
        if parent is None:
            raise UnknownParent(f"parent {header.parent.hex()[:16]} of block at height {header.height} is unknown")
        # Nothing forks below the final block.
        if parent.state is None or not self._descends_from_final(parent):
            raise ReorgTooDeep(
                f"block at height {header.height} forks below the final height {self.final_height}"
            )
        # Heights count up by one.
        if header.height != parent.height + 1:
            raise InvalidBlock(f"height {header.height} does not follow the parent's {parent.height}")
        if header.version != BLOCK_VERSION:
            raise InvalidBlock(f"block version {header.version} is not {BLOCK_VERSION}")
        # Time moves forward: later than the median of the last blocks (Bitcoin's rule) ...
        mtp = self.median_time_past(parent)
        if header.timestamp_ms <= mtp:
            raise BadTimestamp(f"timestamp {header.timestamp_ms} is not after the median time past {mtp}")
        # ... and not too far beyond our clock: such a block waits, it is not invalid.
        if header.timestamp_ms > now_ms + self.params.future_drift_ms:
            raise FutureBlock(
                f"timestamp {header.timestamp_ms} is more than {self.params.future_drift_ms} ms after now {now_ms}"
            )
        self.engine.validate_header(header, block_hash, parent, self)
        # The header commits to the engine's body; the engine judges the body and the seal.
        if consensus_root_of(block.consensus) != header.consensus_root:
            raise InvalidBlock("consensus_root does not match the block's consensus body")
        self.engine.validate_body(block, parent, self)
        # The header commits to exactly these transactions.
        if len(block.transactions) > BLOCK_TRANSACTIONS_MAX:
            raise InvalidBlock(f"{len(block.transactions)} transactions is over {BLOCK_TRANSACTIONS_MAX}")
        if compute_tx_root(block.transactions) != header.tx_root:
            raise InvalidBlock("tx_root does not match the block's transactions")
        assert parent.state is not None
        try:
            state = process_block_body(
                parent.state, block.transactions, header.producer, self.chain_id, self.params,
                check_signatures=self.check_signatures, verified=self.verified,
            )
        except InvalidTransaction as exc:
            raise InvalidBlock(f"block at height {header.height} has an invalid transaction: {exc}") from exc
        self.engine.process_body(state, block, parent, self)
        # The header commits to the resulting state.
        if state.root() != header.state_root:
            raise InvalidBlock("state_root does not match the state after the block")
        return parent, state

    def add_block(self, block: Block, now_ms: int) -> Added:
        parent, state = self.validate_block(block, now_ms)
        self._seq += 1
        entry = Entry(block, block.hash, parent.score + self.engine.block_score(block.header), self._seq, state, parent)
        parent.children.append(entry)
        self.entries[entry.hash] = entry
        best = self.engine.choose_head(self, entry)
        if best is self.head:
            return Added(entry, False, (), ())
        moved = self._set_head(best)  # under LMD-GHOST the new head need not be this block
        return Added(entry, True, moved.reverted, moved.applied)

    def reconsider_head(self) -> Added | None:
        """Fork choice again without a new block (votes moved the weight); the reorg if
        the head changed, else None."""
        best = self.engine.choose_head(self, None)
        return None if best is self.head else self._set_head(best)

    def _set_head(self, new_head: Entry) -> Added:
        old_head = self.head
        fork = self.common_ancestor(old_head, new_head)
        reverted = tuple(self.canonical[fork.height + 1 :][::-1])
        applied: list[Entry] = []
        cursor = new_head
        while cursor is not fork:
            applied.append(cursor)
            cursor = cursor.parent  # type: ignore[assignment]
        applied.reverse()
        for entry in reverted:
            for tx in entry.block.transactions:
                self.tx_heights.pop(tx.txid, None)
        del self.canonical[fork.height + 1 :]
        for entry in applied:
            self.canonical.append(entry)
            for tx in entry.block.transactions:
                self.tx_heights[tx.txid] = entry.height
        self.head = new_head
        self._advance_final()
        return Added(applied[-1], True, reverted, tuple(applied))

    def _descends_from_final(self, entry: Entry) -> bool:
        return entry.height >= self.final_height and self.ancestor(entry, self.final_height) is self.canonical[self.final_height]

    def _advance_final(self) -> None:
        new_final = min(self.engine.final_height(self), self.head.height)
        if new_final <= self.final_height:
            return
        for height in range(self.final_height, new_final):
            final = self.canonical[height]
            keep = self.canonical[height + 1]
            # Side branches hanging off a block that is now final can never win: drop them.
            for child in final.children:
                if child is not keep:
                    self._drop_subtree(child)
            final.children = [keep]
            final.state = None
        self.final_height = new_final

    def _drop_subtree(self, root: Entry) -> None:
        stack = [root]
        while stack:
            entry = stack.pop()
            self.entries.pop(entry.hash, None)
            stack.extend(entry.children)

    # --- building blocks -----------------------------------------------------

    def build_block(
        self,
        candidates: Iterable[Transaction],
        producer: bytes,
        now_ms: int,
        *,
        transactions_max: int = BLOCK_TRANSACTIONS_MAX,
        parent: Entry | None = None,
    ) -> Block:
        """A block template on `parent` (the head by default) with a zero nonce.

        Candidates that do not apply in order (stale nonce, spent balance) are skipped.
        """
        template = self.start_template(parent)
        self.fill_template(template, candidates, transactions_max)
        return self.seal_template(template, producer, now_ms)

    def start_template(self, parent: Entry | None = None) -> "Template":
        parent = parent or self.head
        assert parent.state is not None
        return Template(parent, parent.state.copy(), [], self.params.block_reward)

    def fill_template(self, template: "Template", candidates: Iterable[Transaction],
                      transactions_max: int = BLOCK_TRANSACTIONS_MAX) -> int:
        """Append the candidates that apply in order after what the template holds; a
        producer extends its template as transactions arrive instead of rebuilding it.
        Returns how many were added."""
        added = 0
        for tx in candidates:
            if len(template.chosen) >= transactions_max:
                break
            try:
                validate_transaction_static(tx, self.chain_id, self.params, check_signature=False)
                template.income += process_transaction(template.state, tx, self.params)
            except InvalidTransaction:
                continue  # process_transaction validates before it changes anything
            template.chosen.append(tx)
            added += 1
        return added

    def seal_template(self, template: "Template", producer: bytes, now_ms: int, consensus: bytes = b"") -> Block:
        """The block of the template's transactions and the engine body `consensus`, with a
        zero nonce and no seal; the template stays open for more transactions."""
        parent = template.parent
        state = template.state.copy()
        process_producer_income(state, producer, template.income, self.params)
        timestamp = max(now_ms, self.median_time_past(parent) + 1)
        header = BlockHeader(
            version=BLOCK_VERSION,
            height=parent.height + 1,
            parent=parent.hash,
            timestamp_ms=timestamp,
            tx_root=compute_tx_root(template.chosen),
            state_root=bytes(32),  # set below, after the engine's effects
            producer=producer,
            bits=self.engine.next_bits(parent, self),
            consensus_root=consensus_root_of(consensus),
            nonce=bytes(NONCE_BYTES),
        )
        block = Block(header, tuple(template.chosen), consensus)
        self.engine.process_body(state, block, parent, self)
        return block._replace(header=header._replace(state_root=state.root()))
