"""A bounded, resumable nonce search over a header whose last 8 bytes are the nonce.

The header's canonical encoding ends with the fixed-width nonce, so the sha256 state
after the prefix (the midstate) is computed once per search, and each try hashes only
8 more bytes. The shell runs `search` in a worker process in slices under a hashrate
cap; the simulator does not call it at all.
"""

import hashlib
from typing import NamedTuple

from consensus.types import NONCE_BYTES, BlockHeader

NONCE_MAX = 2 ** (8 * NONCE_BYTES) - 1


class SearchResult(NamedTuple):
    nonce: int | None  # the nonce found, or None when the slice held none
    hashes: int  # how many hashes were tried (energy accounting counts every one)


def header_prefix(header: BlockHeader) -> bytes:
    """The header's canonical bytes without the nonce value: what the midstate covers."""
    encoded = header.encode()
    return encoded[:-NONCE_BYTES]


def search_prefix(prefix: bytes, target: int, start: int, count: int) -> SearchResult:
    """Try nonces start .. start+count-1 (clamped to the nonce range) against `target`."""
    assert 0 <= start <= NONCE_MAX and count >= 0
    midstate = hashlib.sha256(prefix)
    end = min(start + count, NONCE_MAX + 1)
    for nonce in range(start, end):
        h = midstate.copy()
        h.update(nonce.to_bytes(NONCE_BYTES, "big"))
        if int.from_bytes(h.digest(), "big") <= target:
            return SearchResult(nonce, nonce - start + 1)
    return SearchResult(None, end - start)


def search(header: BlockHeader, start: int, count: int, target: int) -> SearchResult:
    """search(header, start, count) -> nonce or None, with the number of hashes tried."""
    return search_prefix(header_prefix(header), target, start, count)


def with_nonce(header: BlockHeader, nonce: int) -> BlockHeader:
    return header._replace(nonce=nonce.to_bytes(NONCE_BYTES, "big"))


def hash_meets_target(block_hash: bytes, target: int) -> bool:
    return int.from_bytes(block_hash, "big") <= target
