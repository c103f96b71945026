"""Sync helpers: a bounded orphan pool and request bookkeeping.

A node behind asks a peer for blocks by height range in batches of at most
`sync_batch_blocks_max`. A block whose parent is unknown waits in the orphan pool
while its ancestors are fetched (a ranged request just below it, from the peer that
sent it); when a block is added, its waiting children are released.
"""

from collections import OrderedDict
from typing import NamedTuple

from consensus.types import Block


class Orphan(NamedTuple):
    block: Block
    peer: str | None  # node id that sent it
    expires_ms: int


class OrphanPool:
    def __init__(self, blocks_max: int, ttl_ms: int):
        self.blocks_max = blocks_max
        self.ttl_ms = ttl_ms
        self._by_hash: OrderedDict[bytes, Orphan] = OrderedDict()
        self._by_parent: dict[bytes, set[bytes]] = {}

    def __len__(self) -> int:
        return len(self._by_hash)

    def __contains__(self, block_hash: bytes) -> bool:
        return block_hash in self._by_hash

    def add(self, block: Block, peer: str | None, now_ms: int) -> bool:
        """Keep an orphan; False if it was already here. Evicts the oldest when full."""
        block_hash = block.hash
        if block_hash in self._by_hash:
            return False
        self.expire(now_ms)
        self._by_hash[block_hash] = Orphan(block, peer, now_ms + self.ttl_ms)
        self._by_parent.setdefault(block.header.parent, set()).add(block_hash)
        while len(self._by_hash) > self.blocks_max:
            self._remove(next(iter(self._by_hash)))
        return True

    def take_children(self, parent_hash: bytes) -> list[Orphan]:
        """Remove and return the orphans waiting for `parent_hash`, in a stable order."""
        hashes = sorted(self._by_parent.pop(parent_hash, ()))
        return [self._by_hash.pop(h) for h in hashes if h in self._by_hash]

    def root_of(self, block_hash: bytes) -> Orphan:
        """Follow parents within the pool down to the orphan whose parent is missing."""
        orphan = self._by_hash[block_hash]
        seen = 0
        while orphan.block.header.parent in self._by_hash and seen <= self.blocks_max:
            orphan = self._by_hash[orphan.block.header.parent]
            seen += 1
        return orphan

    def expire(self, now_ms: int) -> None:
        for block_hash in [h for h, o in self._by_hash.items() if o.expires_ms <= now_ms]:
            self._remove(block_hash)

    def _remove(self, block_hash: bytes) -> None:
        orphan = self._by_hash.pop(block_hash, None)
        if orphan is None:
            return
        siblings = self._by_parent.get(orphan.block.header.parent)
        if siblings is not None:
            siblings.discard(block_hash)
            if not siblings:
                del self._by_parent[orphan.block.header.parent]


class PendingRequest(NamedTuple):
    request_id: int
    peer: str  # node id
    kind: str  # "range" or "hash"
    count: int  # most blocks the answer may hold
    deadline_ms: int
