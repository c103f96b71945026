"""The bounded, resumable nonce search (consensus/pow/mining.py).

How: search real headers against easy targets and recompute every claim from scratch
with with_nonce and BlockHeader.hash (the same hash the chain checks): the found nonce
meets the target, every nonce before it in the slice does not, the hash count equals
the nonces tried, slices resume exactly where a longer search would be, and a slice
with no solution says None and still counts its hashes. Hypothesis varies the header
and the split point.
"""

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consensus.pow.mining import (
    NONCE_MAX,
    SearchResult,
    hash_meets_target,
    header_prefix,
    search,
    search_prefix,
    with_nonce,
)
from consensus.types import EMPTY_CONSENSUS_ROOT, NONCE_BYTES, Block, BlockHeader

HEADER = BlockHeader(1, 7, b"\x01" * 32, 1_700_000_000_000, b"\x02" * 32, b"\x03" * 32, b"\x04" * 20, 0x2000FFFF, EMPTY_CONSENSUS_ROOT, bytes(8))
TARGET_1_IN_64 = (1 << 256) // 64 - 1  # about one nonce in 64 meets it


def meets(header: BlockHeader, nonce: int, target: int) -> bool:
    """Independent check: the block hash the chain computes, not the miner's midstate."""
    return hash_meets_target(Block(with_nonce(header, nonce), ()).hash, target)


def first_solution(header: BlockHeader, start: int, target: int, limit: int = 100_000) -> int:
    for nonce in range(start, start + limit):
        if meets(header, nonce, target):
            return nonce
    raise AssertionError("no solution in range; the target is too hard for this test")


def test_prefix_plus_nonce_is_the_header_encoding():
    header = with_nonce(HEADER, 0x0102030405060708)
    assert header.nonce == bytes.fromhex("0102030405060708")
    assert header_prefix(header) + header.nonce == header.encode()
    # The prefix does not depend on the nonce, so one midstate serves the whole search.
    assert header_prefix(header) == header_prefix(HEADER)
    assert hashlib.sha256(header_prefix(HEADER) + (5).to_bytes(NONCE_BYTES, "big")).digest() == with_nonce(HEADER, 5).hash


def test_search_finds_the_first_nonce_meeting_the_target():
    expected = first_solution(HEADER, 0, TARGET_1_IN_64)
    result = search(HEADER, 0, 10_000, TARGET_1_IN_64)
    assert result == SearchResult(expected, expected + 1)
    mined = with_nonce(HEADER, result.nonce)
    assert hash_meets_target(mined.hash, TARGET_1_IN_64)
    assert int.from_bytes(Block(mined, ()).hash, "big") <= TARGET_1_IN_64
    # Every nonce tried before it failed, so counting stops exactly at the find.
    assert not any(meets(HEADER, n, TARGET_1_IN_64) for n in range(0, expected))


def test_search_ignores_the_nonce_already_in_the_header():
    # The header's own nonce field is replaced, not appended to.
    other = with_nonce(HEADER, 999)
    assert search(other, 0, 10_000, TARGET_1_IN_64) == search(HEADER, 0, 10_000, TARGET_1_IN_64)


def test_search_is_resumable_across_slices():
    first = first_solution(HEADER, 0, TARGET_1_IN_64)
    assert first > 0, "pick another header: the split needs a solution after nonce 0"
    whole = search(HEADER, 0, 10_000, TARGET_1_IN_64)
    # Split just before the solution: the first slice is empty, the second finds it.
    split = first
    a = search(HEADER, 0, split, TARGET_1_IN_64)
    b = search(HEADER, split, 10_000 - split, TARGET_1_IN_64)
    assert a == SearchResult(None, split)
    assert b.nonce == whole.nonce == first
    assert a.hashes + b.hashes == whole.hashes


def test_search_returns_none_and_counts_when_the_slice_has_no_solution():
    first = first_solution(HEADER, 0, TARGET_1_IN_64)
    result = search(HEADER, 0, first, TARGET_1_IN_64)
    assert result.nonce is None
    assert result.hashes == first
    # An impossible target: every nonce tried, none found.
    assert search(HEADER, 100, 500, 0) == SearchResult(None, 500)
    # An empty slice tries nothing.
    assert search(HEADER, 0, 0, 2**256 - 1) == SearchResult(None, 0)


def test_the_easiest_target_takes_one_hash():
    assert search(HEADER, 12345, 10, 2**256 - 1) == SearchResult(12345, 1)


def test_the_slice_is_clamped_to_the_nonce_range():
    result = search(HEADER, NONCE_MAX - 2, 100, 0)
    assert result == SearchResult(None, 3)
    found = search(HEADER, NONCE_MAX, 100, 2**256 - 1)
    assert found == SearchResult(NONCE_MAX, 1)
    assert with_nonce(HEADER, NONCE_MAX).nonce == b"\xff" * 8
    with pytest.raises(AssertionError):
        search(HEADER, NONCE_MAX + 1, 1, 2**256 - 1)


def test_target_comparison_is_inclusive():
    digest = with_nonce(HEADER, 3).hash
    value = int.from_bytes(digest, "big")
    assert hash_meets_target(digest, value)
    assert not hash_meets_target(digest, value - 1)
    # Exactly the target is found by the search too.
    assert search(HEADER, 3, 1, value) == SearchResult(3, 1)
    assert search(HEADER, 3, 1, value - 1) == SearchResult(None, 1)


headers = st.builds(
    BlockHeader,
    version=st.just(1),
    height=st.integers(0, 2**64 - 1),
    parent=st.binary(min_size=32, max_size=32),
    timestamp_ms=st.integers(0, 2**64 - 1),
    tx_root=st.binary(min_size=32, max_size=32),
    state_root=st.binary(min_size=32, max_size=32),
    producer=st.binary(min_size=20, max_size=20),
    bits=st.integers(0, 2**32 - 1),
    nonce=st.binary(min_size=8, max_size=8),
)


@settings(max_examples=60, deadline=None)
@given(headers, st.integers(0, 2**40), st.integers(1, 300), st.integers(2, 64))
def test_split_search_matches_one_search(header, start, split, odds):
    target = (1 << 256) // odds - 1
    count = 3000
    split = min(split, count)
    whole = search(header, start, count, target)
    a = search(header, start, split, target)
    b = search(header, start + split, count - split, target)
    if a.nonce is not None:
        assert a == whole
    else:
        assert a.hashes == split
        assert b.nonce == whole.nonce
        assert a.hashes + b.hashes == whole.hashes
    if whole.nonce is not None:
        assert meets(header, whole.nonce, target)
        assert whole.hashes == whole.nonce - start + 1
        assert not any(meets(header, n, target) for n in range(start, whole.nonce))
    else:
        assert whole.hashes == count


@settings(max_examples=30, deadline=None)
@given(st.binary(min_size=1, max_size=200), st.integers(0, 1000), st.integers(0, 200))
def test_search_prefix_counts_every_hash(prefix, start, count):
    target = (1 << 256) // 50
    result = search_prefix(prefix, target, start, count)
    tried = 0
    expected = None
    for nonce in range(start, start + count):
        tried += 1
        if int.from_bytes(hashlib.sha256(prefix + nonce.to_bytes(8, "big")).digest(), "big") <= target:
            expected = nonce
            break
    assert result == SearchResult(expected, tried)
