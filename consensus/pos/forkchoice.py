"""LMD-GHOST fork choice from the justified checkpoint (Gasper), as an incremental store.

The rule, after the consensus-specs phase0 fork choice (`get_head`, `get_weight`):
start at the justified checkpoint's block and, while the block has children, move to
the child with the greatest weight; a tie goes to the greater root (bytes order), so
every node with the same inputs picks the same head. The weight of a block is the sum
of the stakes of the non-equivocating validators whose latest message (LMD: the head of
their newest attestation, by target epoch) is that block or one of its descendants.

How it is kept fast (proto-array, as in Lighthouse and Teku): blocks sit in a list in
arrival order, and a parent always arrives before its children, so every child has a
greater index than its parent. A vote is applied to the weights as a pair (block,
stake); when a latest message, a stake or an equivocation changes it, the difference
becomes a delta on two blocks. One backward pass over the list then adds each delta to
its block and hands it on to the parent, and in the same pass records each block's best
child and best descendant: when index i is reached all its descendants are final. The
head is then one lookup: the best descendant of the justified block. That pass runs
only when something changed since the last `head()`; it costs O(blocks + validators).
tests/test_pos_forkchoice.py holds the same rule written for reading, not for speed,
and checks this store against it.

Simplifications against the consensus-specs, on purpose:
- No proposer boost. The boost gives a block that arrived on time within its own slot
  temporary extra weight; that needs the arrival time within the slot, and this store
  takes no time at all (the `tick` of a scenario is informational). Without it the rule
  is plain LMD-GHOST, which is what the laboratory wants to study, including the
  ex-ante reorg and balancing attacks the boost was added against.
- No viability filter (`filter_block_tree`): branches whose own state justified a
  different checkpoint are not pruned from the walk, and there is no unrealized
  justification. The walk starts at the justified block, so only its descendants can
  win; which checkpoint is justified is the caller's (the chain's) decision.
- No attestation timing rules (an attestation counts from the slot after its own): the
  caller passes an attestation in when it should count.

Bounds on what peers can grow: an attestation whose head is unknown is refused, not
kept (the caller may retry it when the block arrives), so votes only point at stored
blocks; there is at most one latest message per validator index, and the caller
passes only attestations whose signature verified against the registry. Blocks come
from the chain after validation; `set_finalized` drops every block that does not
descend from the finalized one.
"""

from typing import NamedTuple

from consensus.errors import InvalidBlock, ValidationError
from consensus.pos.types import Checkpoint

NO_PARENT = -1  # the parent index of the tree's root (genesis, or the finalized block)


class UnknownBlock(ValidationError):
    """A root that the store does not hold: never seen yet, or pruned by finalization."""


class ConflictingCheckpoint(ValidationError):
    """A finalized or justified checkpoint that contradicts the ones the store holds:
    finality going back, or on another branch. Only a safety failure (more than a third
    of the stake slashable) or a caller bug can produce one."""


class LatestMessage(NamedTuple):
    """A validator's newest vote: the target epoch orders votes, the head carries weight."""

    epoch: int
    root: bytes


class ForkChoice:
    """The block tree as the fork choice sees it: roots, parents, slots and votes."""

    def __init__(self, genesis_root: bytes, genesis_slot: int = 0):
        # The tree, one entry per block in arrival order (parents before children).
        self._index: dict[bytes, int] = {genesis_root: 0}
        self._roots: list[bytes] = [genesis_root]
        self._parents: list[int] = [NO_PARENT]
        self._slots: list[int] = [genesis_slot]
        self._weights: list[int] = [0]  # with every applied vote; see _apply_changes
        self._best_descendants: list[int] = [0]  # valid when not self._dirty
        # The votes.
        self._latest: dict[int, LatestMessage] = {}
        self._applied: dict[int, tuple[bytes, int]] = {}  # validator -> (root, stake) in _weights
        self._equivocators: set[int] = set()
        self._balances: dict[int, int] = {}
        # The checkpoints; at genesis both are the genesis block.
        self._justified = Checkpoint(0, genesis_root)
        self._finalized = Checkpoint(0, genesis_root)
        self._dirty = False
        # Validators whose vote may differ from the applied one; None: all of them (the
        # balances changed). Only they are looked at in the next pass.
        self._touched: set[int] | None = set()

    # ---------------------------------------------------------------- inputs

    def on_block(self, root: bytes, parent: bytes, slot: int) -> None:
        """Add a validated block. A block seen before is ignored."""
        # Rule: a block is added once; its root is the hash of its contents.
        if root in self._index:
            return
        # Rule: the parent must be known (an orphan waits in the caller's pool; a block
        # on a branch pruned by finalization can never join).
        parent_index = self._index.get(parent)
        if parent_index is None:
            raise UnknownBlock(f"parent {parent.hex()} of block {root.hex()} is unknown")
        # Rule: slots grow along a branch (checkpoint_root relies on it).
        if slot <= self._slots[parent_index]:
            raise InvalidBlock(f"block slot {slot} is not after its parent's slot {self._slots[parent_index]}")
        self._index[root] = len(self._roots)
        self._roots.append(root)
        self._parents.append(parent_index)
        self._slots.append(slot)
        self._weights.append(0)
        self._best_descendants.append(len(self._roots) - 1)
        self._dirty = True

    def on_attestation(self, validator: int, target_epoch: int, head: bytes) -> bool:
        """Take a verified attestation's vote; True when it became the validator's
        latest message. False (nothing stored) for an unknown head, which the caller may
        retry once the block arrives, for an equivocator, and for a vote that is not
        newer than the latest one (the first seen wins at an equal target epoch)."""
        assert validator >= 0 and target_epoch >= 0, (validator, target_epoch)
        # Rule: a vote for a block we do not hold is refused, so peers cannot make the
        # store keep roots that may never arrive.
        if head not in self._index:
            return False
        # Rule: an equivocator's votes never count again.
        if validator in self._equivocators:
            return False
        # Rule: only a newer target epoch replaces the latest message.
        latest = self._latest.get(validator)
        if latest is not None and target_epoch <= latest.epoch:
            return False
        self._latest[validator] = LatestMessage(target_epoch, head)
        if self._touched is not None:
            self._touched.add(validator)
        self._dirty = True
        return True

    def on_equivocation(self, validator: int) -> None:
        """Ignore this validator's weight from now on (it was caught double voting or
        surround voting: its votes say nothing about what it sees)."""
        if validator in self._equivocators:
            return
        self._equivocators.add(validator)
        self._latest.pop(validator, None)  # its weight leaves in _apply_changes
        if self._touched is not None:
            self._touched.add(validator)
        self._dirty = True

    def set_balances(self, balances: dict[int, int]) -> None:
        """The stake of each active validator (from the justified state); absent is zero."""
        assert all(stake >= 0 for stake in balances.values()), "stakes are never negative"
        self._balances = dict(balances)
        self._touched = None  # every stake may have changed
        self._dirty = True

    def set_justified(self, checkpoint: Checkpoint) -> None:
        """Start the fork choice at this checkpoint's block from now on."""
        # Rule: the walk starts at a block we hold (after finalization pruned the
        # tree, every block we hold descends from the finalized one).
        if checkpoint.root not in self._index:
            raise UnknownBlock(f"justified root {checkpoint.root.hex()} is unknown")
        # Rule: a finalized checkpoint is justified, so no justified one is older.
        if checkpoint.epoch < self._finalized.epoch:
            raise ConflictingCheckpoint(
                f"justified epoch {checkpoint.epoch} is older than finalized epoch {self._finalized.epoch}"
            )
        self._justified = checkpoint

    def set_finalized(self, checkpoint: Checkpoint) -> None:
        """Record finality and drop every block that does not descend from the
        finalized block (its ancestors included: the tree is rooted there from now on)."""
        if checkpoint == self._finalized:
            return
        # Rule: the finalized block must be held (it descends from the previous one).
        if checkpoint.root not in self._index:
            raise UnknownBlock(f"finalized root {checkpoint.root.hex()} is unknown")
        # Rule: finality never goes back.
        if checkpoint.epoch < self._finalized.epoch:
            raise ConflictingCheckpoint(
                f"finalized epoch {checkpoint.epoch} is older than finalized epoch {self._finalized.epoch}"
            )
        # Rule: the justified checkpoint stays usable. A finalized checkpoint is also
        # justified, so it replaces a justified one of an older epoch, or one whose
        # block lies above it (that block is about to be pruned); a justified checkpoint
        # as recent as the finalized one but on another branch contradicts finality.
        justified = self._justified
        as_recent = justified.epoch >= checkpoint.epoch
        if not (as_recent and self.is_descendant(checkpoint.root, justified.root)):
            if as_recent and not self.is_descendant(justified.root, checkpoint.root):
                raise ConflictingCheckpoint(
                    f"justified root {justified.root.hex()} is not on the branch of finalized {checkpoint.root.hex()}"
                )
            justified = checkpoint
        self._apply_changes()  # the weights kept below must hold every vote so far
        self._prune(self._index[checkpoint.root])
        self._finalized = checkpoint
        self._justified = justified

    # ---------------------------------------------------------------- queries

    @property
    def justified(self) -> Checkpoint:
        return self._justified

    @property
    def finalized(self) -> Checkpoint:
        return self._finalized

    def __contains__(self, root: bytes) -> bool:
        return root in self._index

    def __len__(self) -> int:
        return len(self._roots)

    def head(self) -> bytes:
        """The head of the chain: the best descendant of the justified block."""
        if self._dirty:
            self._apply_changes()
        return self._roots[self._best_descendants[self._index[self._justified.root]]]

    def weight(self, root: bytes) -> int:
        """The stake of the honest latest messages for `root` or any of its descendants."""
        index = self._index.get(root)
        if index is None:
            raise UnknownBlock(f"block {root.hex()} is unknown")
        if self._dirty:
            self._apply_changes()
        return self._weights[index]

    def latest_message(self, validator: int) -> LatestMessage | None:
        return self._latest.get(validator)

    def slot(self, root: bytes) -> int:
        index = self._index.get(root)
        if index is None:
            raise UnknownBlock(f"block {root.hex()} is unknown")
        return self._slots[index]

    def parent(self, root: bytes) -> bytes | None:
        """The parent's root; None for the tree's root (genesis or the finalized block)."""
        index = self._index.get(root)
        if index is None:
            raise UnknownBlock(f"block {root.hex()} is unknown")
        parent = self._parents[index]
        return None if parent == NO_PARENT else self._roots[parent]

    def is_descendant(self, ancestor: bytes, root: bytes) -> bool:
        """True when `root` is `ancestor` or lies below it; False when either is unknown."""
        a = self._index.get(ancestor)
        i = self._index.get(root)
        if a is None or i is None:
            return False
        ancestor_slot = self._slots[a]
        while i != NO_PARENT and self._slots[i] > ancestor_slot:
            i = self._parents[i]
        return i == a

    def ancestor_at_slot(self, root: bytes, slot: int) -> bytes:
        """The block at `slot` on `root`'s branch, or the last one before it when the
        slot was empty (consensus-specs `get_ancestor`)."""
        i = self._index.get(root)
        if i is None:
            raise UnknownBlock(f"block {root.hex()} is unknown")
        while self._slots[i] > slot:
            i = self._parents[i]
            if i == NO_PARENT:
                raise UnknownBlock(f"the branch of {root.hex()} at slot {slot} is below the finalized block")
        return self._roots[i]

    # ---------------------------------------------------------------- internals

    def _apply_changes(self) -> None:
        """Bring weights and best descendants up to date in one backward pass."""
        roots, parents, weights = self._roots, self._parents, self._weights
        count = len(roots)
        deltas = [0] * count
        index = self._index
        # The order of validators cannot reach the output: the deltas are sums. Only the
        # validators touched since the last pass can have a vote to move (a vote whose
        # head was pruned was dropped from _applied with it, and counts nowhere).
        touched = self._applied.keys() | self._latest.keys() if self._touched is None else self._touched
        self._touched = set()
        for validator in touched:
            latest = self._latest.get(validator)
            # A vote counts while its head is held (a head pruned by finalization does not).
            held = latest is not None and latest.root in index
            stake = self._balances.get(validator, 0) if held else 0
            wanted = (latest.root, stake) if latest is not None and stake > 0 else None
            applied = self._applied.get(validator)
            if applied == wanted:
                continue
            if applied is not None:
                deltas[index[applied[0]]] -= applied[1]
            if wanted is None:
                del self._applied[validator]
            else:
                deltas[index[wanted[0]]] += wanted[1]
                self._applied[validator] = wanted
        best_children = [NO_PARENT] * count
        best_descendants = self._best_descendants
        for i in range(count - 1, -1, -1):
            # Every descendant of i has a greater index, so its weight and best child
            # are final here.
            parent = parents[i]
            delta = deltas[i]
            if delta:
                weights[i] += delta
                assert weights[i] >= 0, "a weight is a sum of stakes"
                if parent != NO_PARENT:
                    deltas[parent] += delta
            child = best_children[i]
            best_descendants[i] = i if child == NO_PARENT else best_descendants[child]
            if parent != NO_PARENT:
                best = best_children[parent]
                if best == NO_PARENT or weights[i] > weights[best] or (
                    weights[i] == weights[best] and roots[i] > roots[best]  # the tie rule
                ):
                    best_children[parent] = i
        self._dirty = False

    def _prune(self, new_root: int) -> None:
        """Keep `new_root` and its descendants, renumbered in the same order."""
        keep: dict[int, int] = {new_root: 0}  # old index -> new index
        parents = [NO_PARENT]
        for i in range(new_root + 1, len(self._roots)):
            parent = keep.get(self._parents[i])
            if parent is not None:
                keep[i] = len(parents)
                parents.append(parent)
        old = sorted(keep)  # new index order: arrival order, parents still first
        self._roots = [self._roots[i] for i in old]
        self._slots = [self._slots[i] for i in old]
        self._weights = [self._weights[i] for i in old]  # subtrees unchanged: still exact
        self._parents = parents
        self._index = {root: i for i, root in enumerate(self._roots)}
        self._best_descendants = list(range(len(old)))
        # A vote applied to a dropped block counted only in dropped blocks' weights.
        for validator, (root, _) in list(self._applied.items()):
            if root not in self._index:
                del self._applied[validator]
        # A latest message whose head was dropped keeps its epoch (an older vote must
        # still not replace it) but carries no weight: _apply_changes skips it.
        self._dirty = True


def checkpoint_root(fc: ForkChoice, head: bytes, epoch: int, slots_per_epoch: int) -> bytes:
    """The checkpoint block of `epoch` on `head`'s branch: the block at the epoch's first
    slot, or the last one before it (consensus-specs `get_checkpoint_block`)."""
    assert epoch >= 0 and slots_per_epoch >= 1, (epoch, slots_per_epoch)
    return fc.ancestor_at_slot(head, epoch * slots_per_epoch)
