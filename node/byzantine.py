"""Misbehaviour on purpose, for tests and chaos runs only: the node core's own byzantine
switches (NodeConfig.byzantine; off by default). A validator's switches live with its
duties (consensus.pos.producer); these two are the node's, so they work under any engine:

  withhold  selfish mining (Eyal and Sirer, "Majority is not enough", 2014): blocks this
            node mines are kept private while it mines on them, and released when the
            public chain comes within one block of its lead. Needs blocks from a nonce
            search (`engine.minable`); a node without a miner has nothing to withhold.
  spam      every SPAM_INTERVAL_MS of its clock, each peer gets an invalid block built
            on the head and a few transactions with bad signatures, straight on the
            wire as gossip. Honest peers must penalise and ban it.

Both parts are pure and deterministic, like the core that drives them: the core asks
them what to do and does the sending itself.
"""

from consensus.chain import BlockTree, Entry
from consensus.crypto import sha256
from consensus.types import TX_TRANSFER, Block, Transaction, compute_tx_root

# The names NodeConfig.byzantine may hold for the core itself (the rest are a
# validator's; node.settings.BYZANTINE_BEHAVIOURS lists them all).
CORE_SWITCHES = frozenset({"withhold", "spam"})

# A private branch this long is released at once, whatever the public chain does:
# honest nodes refuse reorgs deeper than reorg_depth_max (64 in every preset), and a
# branch they can never take would turn selfish mining into a permanent fork.
WITHHELD_BLOCKS_MAX = 16
# How often a spammer sends its junk: often enough to be noticed within a few seconds,
# rarely enough that the spam is not what a simulation spends its time on.
SPAM_INTERVAL_MS = 2_000
SPAM_TRANSACTIONS = 3  # invalid transactions per peer and round


class SelfishMiner:
    """The withholding strategy as a small state machine over the block tree.

    State: `private`, the blocks this node mined and has not published, lowest first.
    They are always the top of the canonical chain (the node mines on its head, and a
    public block cannot build on a block nobody else has), so the public part of our
    chain ends just below them. `public_best` is the best block heard from peers: the
    public chain we race against. Lead = private tip height - public best height.

    Rules (Eyal and Sirer's, with the release simplified to "all at once"):
      1. We mine a block: keep it private. If it extends our released branch that was
         tied with the public chain (a race), publish at once: it wins the race.
      2. A peer's block raises the public best: if our head is no longer our private
         tip (the public branch has more work), abandon the private branch; else, if
         the lead is down to 1 or 0, publish the whole branch (with lead 1 it wins on
         work; with lead 0 it starts a race that peers settle by first seen).
      3. The branch reached WITHHELD_BLOCKS_MAX, or the node stopped mining: publish all.
    """

    def __init__(self, public_best: Entry | None = None) -> None:
        self.private: list[Entry] = []
        self.public_best = public_best  # at start, the head the node restored: all of it is public
        self._released: set[bytes] = set()  # our published blocks that may still race (bounded below)
        # Counters for status and the simulator's verdicts.
        self.blocks_withheld = 0
        self.blocks_released = 0
        self.releases = 0  # times a private branch was published
        self.blocks_abandoned = 0

    # --- reads -----------------------------------------------------------------------------

    def is_private(self, block_hash: bytes) -> bool:
        return any(e.hash == block_hash for e in self.private)

    def public_height(self, tree: BlockTree) -> int:
        """Height of the top of our chain that peers may know: below the private branch."""
        return tree.head.height - len(self.private)

    def public_head(self, tree: BlockTree) -> Entry:
        assert not self.private or tree.head is self.private[-1], "withheld blocks are the top of the chain"
        return tree.canonical[self.public_height(tree)]

    def lead(self, tree: BlockTree) -> int:
        public = self.public_best.height if self.public_best is not None else 0
        return tree.head.height - public

    # --- inputs ------------------------------------------------------------------------------

    def on_mined(self, entry: Entry, tree: BlockTree) -> list[Block]:
        """Our miner found `entry` and it is in the tree; returns the blocks to publish now."""
        if tree.head is not entry or (self.private and entry.parent is not self.private[-1]):
            return [entry.block]  # not on our private tip (stale work): nothing to gain by hiding it
        racing = (not self.private and self.public_best is not None and entry.parent is not None
                  and entry.parent.hash in self._released and entry.parent.height == self.public_best.height
                  and entry.parent is not self.public_best)
        self.private.append(entry)
        self.blocks_withheld += 1
        if racing or len(self.private) >= WITHHELD_BLOCKS_MAX:
            return self.release_all()
        return []

    def on_public(self, entry: Entry, tree: BlockTree) -> list[Block]:
        """A block from outside entered the tree; returns the blocks to publish now."""
        if self.public_best is not None and entry.score <= self.public_best.score:
            return []  # a side block below the public best: the race did not move
        self.public_best = entry
        if not self.private:
            return []  # nothing withheld: we mine on whatever the fork choice says
        if tree.head is not self.private[-1]:
            # The public branch outweighs ours: give it up and mine on the public head.
            self.blocks_abandoned += len(self.private)
            self.private = []
            return []
        if self.lead(tree) <= 1:
            return self.release_all()
        return []

    def release_all(self) -> list[Block]:
        """Publish the whole private branch (lowest first, so parents arrive first)."""
        if not self.private:
            return []
        blocks = [e.block for e in self.private]
        self.releases += 1
        self.blocks_released += len(blocks)
        if len(self._released) > 4 * WITHHELD_BLOCKS_MAX:
            self._released.clear()  # only the latest release can still be racing
        self._released.update(e.hash for e in self.private)
        self.private = []
        return blocks

    def status(self) -> dict:
        return {"withheld": len(self.private), "blocks_withheld": self.blocks_withheld,
                "blocks_released": self.blocks_released, "releases": self.releases,
                "blocks_abandoned": self.blocks_abandoned}


class Spammer:
    """Junk for every peer, on a fixed period of the node's clock."""

    def __init__(self, now_ms: int) -> None:
        self.next_ms = now_ms + SPAM_INTERVAL_MS
        self.seq = 0
        self.rounds = 0

    def due(self, now_ms: int) -> bool:
        if now_ms < self.next_ms:
            return False
        self.next_ms = now_ms + SPAM_INTERVAL_MS
        self.rounds += 1
        return True

    def invalid_block(self, tree: BlockTree, now_ms: int) -> Block:
        """A child of the head that fails validation under any engine: its state root is
        made up (and so is its proof of work, and a proof-of-stake seal would be the
        head's, over another header). Its timestamp is valid, so it is judged, not parked."""
        self.seq += 1
        head = tree.head
        header = head.header._replace(
            height=head.height + 1,
            parent=head.hash,
            timestamp_ms=max(now_ms, head.header.timestamp_ms + 1),
            tx_root=compute_tx_root(()),
            state_root=sha256(b"chainlab/spam-state-root" + self.seq.to_bytes(8, "big")),
            bits=tree.engine.next_bits(head, tree),
        )
        return Block(header, (), head.block.consensus, head.block.seal)

    def invalid_transactions(self, tree: BlockTree, sender_public_key: bytes) -> list[Transaction]:
        """Well-formed transfers whose signatures are garbage (checked before any balance)."""
        out = []
        for _ in range(SPAM_TRANSACTIONS):
            self.seq += 1
            tag = sha256(b"chainlab/spam-tx" + self.seq.to_bytes(8, "big"))
            out.append(Transaction(TX_TRANSFER, tree.chain_id, sender_public_key, tag[:20], 1,
                                   tree.params.fee_min, self.seq, tag + tag))
        return out
