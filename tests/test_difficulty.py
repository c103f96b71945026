"""Bitcoin's compact targets, retarget arithmetic and block work, bit for bit
(consensus/pow/difficulty.py, DESIGN.md section 5).

How: every vector in shared/vectors/bitcoin_pow_retarget.json (Bitcoin Core's
pow_tests.cpp and arith_uint256_tests.cpp) is checked against next_target_bits,
compact_to_target and target_to_compact, plus more SetCompact cases copied from
arith_uint256_tests.cpp; hand cases pin the x4 clamp both ways, the limit cap and the
overflow encodings; hypothesis checks that compact encoding is stable and only ever
drops low bits, that retargeting is monotone, and that work matches GetBlockProof.
"""

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consensus.errors import InvalidProofOfWork
from consensus.pow.difficulty import (
    InvalidCompactTarget,
    compact_to_target,
    next_target_bits,
    target_to_compact,
    work_of_bits,
    work_of_target,
)

# CI clones the repository somewhere else with shared/ beside it, so the vectors are
# found relative to the repository root's parent, never by an absolute path.
REPO_ROOT = Path(__file__).resolve().parents[1]
VECTORS_PATH = REPO_ROOT.parent / "shared" / "vectors" / "bitcoin_pow_retarget.json"


def _load_vectors() -> dict:
    if not VECTORS_PATH.is_file():
        raise FileNotFoundError(f"difficulty vectors not found at {VECTORS_PATH} (shared/ must sit beside the repo)")
    return json.loads(VECTORS_PATH.read_text())


VECTORS = _load_vectors()
POW_LIMIT_BITS = int(VECTORS["pow_limit_bits"], 16)
TIMESPAN = VECTORS["target_timespan_seconds"]
SETTINGS = settings(max_examples=300, deadline=None)


def h(text: str) -> int:
    return int(text, 16)


def test_the_vector_file_has_every_section():
    # Guard against an emptied file silently turning the parametrized tests into no-ops.
    assert len(VECTORS["retarget"]) >= 4
    assert len(VECTORS["compact"]) >= 6
    assert len(VECTORS["negative_bits"]) >= 2


@pytest.mark.parametrize("vector", VECTORS["retarget"], ids=[v["name"] for v in VECTORS["retarget"]])
def test_retarget_vectors(vector):
    got = next_target_bits(
        h(vector["last_bits"]),
        vector["first_block_time"],
        vector["last_block_time"],
        timespan=TIMESPAN,
        limit_bits=POW_LIMIT_BITS,
    )
    assert got == h(vector["expected_bits"]), f"{got:#010x} != {vector['expected_bits']}"


@pytest.mark.parametrize("vector", VECTORS["compact"], ids=lambda v: v.get("bits", v["target"]))
def test_compact_vectors(vector):
    if "bits" in vector:
        target = compact_to_target(h(vector["bits"]))
        assert target == h(vector["target"])
        assert target_to_compact(target) == h(vector["reencoded"])
    else:
        encoded = target_to_compact(h(vector["target"]))
        assert encoded == h(vector["encoded"])
        assert compact_to_target(encoded) == h(vector["target"])


@pytest.mark.parametrize("bits", VECTORS["negative_bits"])
def test_negative_vectors_are_refused(bits):
    with pytest.raises(InvalidCompactTarget, match="negative"):
        compact_to_target(h(bits))


def test_invalid_compact_target_is_a_proof_of_work_failure_and_a_value_error():
    # Callers catch it either as a block fault or as a plain bad value.
    assert issubclass(InvalidCompactTarget, InvalidProofOfWork)
    assert issubclass(InvalidCompactTarget, ValueError)


# More SetCompact cases from Bitcoin Core's arith_uint256_tests.cpp: a zero mantissa
# is zero whatever the exponent or sign bit; the mantissa is shifted before the checks.
@pytest.mark.parametrize("bits,target,reencoded", [
    (0x00000000, 0, 0),
    (0x00123456, 0, 0),
    (0x01003456, 0, 0),
    (0x02000056, 0, 0),
    (0x03000000, 0, 0),
    (0x04000000, 0, 0),
    (0x00923456, 0, 0),
    (0x01803456, 0, 0),
    (0x02800056, 0, 0),
    (0x03800000, 0, 0),
    (0x04800000, 0, 0),
    (0xFF000000, 0, 0),  # a huge exponent with no mantissa is zero, not an overflow
    (0x20123456, 0x123456 << (8 * 29), 0x20123456),
    (0x1D00FFFF, 0xFFFF << (8 * 26), 0x1D00FFFF),
    (0x04123456, 0x12345600, 0x04123456),
])
def test_more_set_compact_cases(bits, target, reencoded):
    assert compact_to_target(bits) == target
    assert target_to_compact(target) == reencoded


@pytest.mark.parametrize("bits", [
    0xFF123456,  # Bitcoin's overflow example
    0x23000001,  # exponent 35
    0x22000100,  # exponent 34 with a mantissa over one byte
    0x21010000,  # exponent 33 with a mantissa over two bytes
    0x227FFFFF,
])
def test_overflowing_encodings_are_refused(bits):
    with pytest.raises(InvalidCompactTarget, match="overflow"):
        compact_to_target(bits)


@pytest.mark.parametrize("bits,target", [
    (0x220000FF, 0xFF << (8 * 31)),  # the largest exponent that still fits
    (0x2100FFFF, 0xFFFF << (8 * 30)),
    (0x207FFFFF, 0x7FFFFF << (8 * 29)),
])
def test_largest_non_overflowing_encodings(bits, target):
    assert compact_to_target(bits) == target
    assert target < 2**256


@pytest.mark.parametrize("bits", [-1, 2**32, 2**40])
def test_bits_outside_32_bits_are_refused(bits):
    with pytest.raises(InvalidCompactTarget):
        compact_to_target(bits)


def test_negative_target_cannot_be_encoded():
    with pytest.raises(ValueError):
        target_to_compact(-1)


def test_sign_bit_moves_the_mantissa_one_byte_up():
    # 0x800000 would set the sign bit in a 3-byte mantissa, so the size grows by one.
    assert target_to_compact(0x800000) == 0x04008000
    assert target_to_compact(0x7FFFFF) == 0x037FFFFF
    assert target_to_compact(2**256 - 1) == 0x2100FFFF


# --- retarget: the clamp and the limit ----------------------------------------------

LAST_BITS = 0x1C05A3F4  # far enough below the limit that x4 easier is not capped


def _expected(last_bits: int, actual: int) -> int:
    return target_to_compact(compact_to_target(last_bits) * actual // TIMESPAN)


def test_fast_window_is_clamped_to_a_quarter():
    quarter = next_target_bits(LAST_BITS, 0, TIMESPAN // 4, timespan=TIMESPAN, limit_bits=POW_LIMIT_BITS)
    assert quarter == _expected(LAST_BITS, TIMESPAN // 4)
    for actual in (TIMESPAN // 4 - 1, TIMESPAN // 10, 1, 0, -TIMESPAN):
        assert next_target_bits(LAST_BITS, 1000, 1000 + actual, timespan=TIMESPAN, limit_bits=POW_LIMIT_BITS) == quarter
    # Just above the clamp the result moves again.
    assert next_target_bits(LAST_BITS, 0, TIMESPAN // 2, timespan=TIMESPAN, limit_bits=POW_LIMIT_BITS) != quarter
    # Harder by (almost exactly) four.
    old, new = compact_to_target(LAST_BITS), compact_to_target(quarter)
    assert old // 4 - old // 2**16 <= new <= old // 4


def test_slow_window_is_clamped_to_four_times():
    four = next_target_bits(LAST_BITS, 0, TIMESPAN * 4, timespan=TIMESPAN, limit_bits=POW_LIMIT_BITS)
    assert four == _expected(LAST_BITS, TIMESPAN * 4)
    for actual in (TIMESPAN * 4 + 1, TIMESPAN * 10, 10**12):
        assert next_target_bits(LAST_BITS, 0, actual, timespan=TIMESPAN, limit_bits=POW_LIMIT_BITS) == four
    old, new = compact_to_target(LAST_BITS), compact_to_target(four)
    assert old * 4 - old * 4 // 2**16 <= new <= old * 4
    assert new < compact_to_target(POW_LIMIT_BITS)  # the clamp, not the limit, decided


def test_exact_timespan_keeps_the_bits():
    assert next_target_bits(LAST_BITS, 0, TIMESPAN, timespan=TIMESPAN, limit_bits=POW_LIMIT_BITS) == LAST_BITS


def test_the_limit_caps_an_easier_target():
    limit_target = compact_to_target(POW_LIMIT_BITS)
    # From the limit itself, a slow window cannot go past the limit.
    assert next_target_bits(POW_LIMIT_BITS, 0, TIMESPAN * 4, timespan=TIMESPAN, limit_bits=POW_LIMIT_BITS) == POW_LIMIT_BITS
    # From just below the limit, twice easier would exceed it: capped.
    near = target_to_compact(limit_target * 3 // 4)
    assert next_target_bits(near, 0, TIMESPAN * 2, timespan=TIMESPAN, limit_bits=POW_LIMIT_BITS) == POW_LIMIT_BITS
    # A different limit caps at its own value.
    assert next_target_bits(0x1C05A3F4, 0, TIMESPAN * 4, timespan=TIMESPAN, limit_bits=0x1C0FFFFF) == 0x1C0FFFFF


def test_retarget_works_in_milliseconds_too():
    # The chain passes milliseconds; only the ratio matters.
    seconds = next_target_bits(LAST_BITS, 0, TIMESPAN // 3, timespan=TIMESPAN, limit_bits=POW_LIMIT_BITS)
    millis = next_target_bits(LAST_BITS, 0, TIMESPAN // 3 * 1000, timespan=TIMESPAN * 1000, limit_bits=POW_LIMIT_BITS)
    assert seconds == millis


# --- properties ---------------------------------------------------------------------

# Exponents above 0x22 overflow unless the mantissa is zero; draw mostly where values live.
valid_bits = st.one_of(
    st.integers(0, 0x22FFFFFF),
    st.integers(0, 0xFF).map(lambda size: size << 24),
).filter(lambda b: _is_valid(b))


def _is_valid(bits: int) -> bool:
    try:
        compact_to_target(bits)
    except InvalidCompactTarget:
        return False
    return True


@SETTINGS
@given(valid_bits)
def test_compact_round_trip_is_stable(bits):
    target = compact_to_target(bits)
    normal = target_to_compact(target)
    # The normal form encodes the same target and is a fixed point.
    assert compact_to_target(normal) == target
    assert target_to_compact(compact_to_target(normal)) == normal
    # The normal form never sets the sign bit.
    assert normal & 0x00800000 == 0


@SETTINGS
@given(st.integers(0, 2**256 - 1))
def test_encoding_a_target_only_drops_low_bits(target):
    bits = target_to_compact(target)
    decoded = compact_to_target(bits)
    size = bits >> 24
    dropped = 8 * max(0, size - 3)
    assert decoded <= target
    assert decoded == (target >> dropped) << dropped  # same high bits, low bits cleared
    assert target - decoded < 2**dropped
    # At most 23 significant bits survive, so at most 1/2**15 of the value is lost.
    if target:
        assert (target - decoded) * 2**15 <= target
    assert target_to_compact(decoded) == bits


@SETTINGS
@given(
    st.integers(1, compact_to_target(POW_LIMIT_BITS)),
    st.integers(-TIMESPAN, 6 * TIMESPAN),
    st.integers(-TIMESPAN, 6 * TIMESPAN),
)
def test_retarget_is_monotone_and_bounded(target, span_a, span_b):
    bits = target_to_compact(target)
    start = compact_to_target(bits)
    lo, hi = sorted((span_a, span_b))
    new_lo = compact_to_target(next_target_bits(bits, 0, lo, timespan=TIMESPAN, limit_bits=POW_LIMIT_BITS))
    new_hi = compact_to_target(next_target_bits(bits, 0, hi, timespan=TIMESPAN, limit_bits=POW_LIMIT_BITS))
    # A slower window never gives a harder target.
    assert new_lo <= new_hi
    # One window moves the target by at most four either way, and never past the limit.
    assert new_hi <= min(start * 4, compact_to_target(POW_LIMIT_BITS))
    assert new_lo * 4 >= start // 4 * 4 - start // 2**14 - 4


# --- work -------------------------------------------------------------------------

@pytest.mark.parametrize("target,work", [
    (0, 2**256),
    (1, 2**255),
    (2**255 - 1, 2),
    (2**256 - 1, 1),
    (compact_to_target(0x1D00FFFF), 0x100010001),  # Bitcoin's work per block at difficulty 1
])
def test_work_of_target_values(target, work):
    assert work_of_target(target) == work


def test_work_of_bits_decodes_first():
    assert work_of_bits(0x1D00FFFF) == 0x100010001
    assert work_of_bits(0x2000FFFF) == 256
    with pytest.raises(InvalidCompactTarget):
        work_of_bits(0x04923456)


@SETTINGS
@given(st.integers(0, 2**256 - 1), st.integers(0, 2**256 - 1))
def test_work_matches_get_block_proof_and_is_monotone(a, b):
    # Bitcoin's GetBlockProof computes (~target / (target + 1)) + 1 in 256 bits.
    for t in (a, b):
        assert work_of_target(t) == ((2**256 - 1 - t) // (t + 1)) + 1
    lo, hi = sorted((a, b))
    assert work_of_target(lo) >= work_of_target(hi)
