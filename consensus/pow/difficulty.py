"""Bitcoin's compact target encoding and retarget arithmetic, bit for bit.

Ports of `arith_uint256::SetCompact` / `GetCompact` and `CalculateNextWorkRequired`
from Bitcoin Core. One deliberate difference: Python integers do not wrap, where
Bitcoin's 256-bit intermediate `target * actual_timespan` overflows once it passes
2**256. Bitcoin never gets there (its limit is about 2**224 and timespans are in
seconds); our easy testnet limits with timespans in milliseconds can, and the exact
result is the one that makes sense. Every node computes it the same way.
"""

from consensus.errors import InvalidProofOfWork


class InvalidCompactTarget(InvalidProofOfWork, ValueError):
    """Compact bits that encode a negative or overflowing target."""


def compact_to_target(bits: int) -> int:
    """The 256-bit target that compact `bits` encode (SetCompact).

    Raises InvalidCompactTarget for a negative or overflowing encoding, which
    Bitcoin's CheckProofOfWork also refuses.
    """
    if not 0 <= bits <= 0xFFFFFFFF:
        raise InvalidCompactTarget(f"compact bits {bits:#x} do not fit 32 bits")
    size = bits >> 24
    word = bits & 0x007FFFFF
    if size <= 3:
        word >>= 8 * (3 - size)  # Bitcoin checks sign and overflow on the shifted word
        target = word
    else:
        target = word << (8 * (size - 3))
    if word != 0 and bits & 0x00800000:
        raise InvalidCompactTarget(f"compact bits {bits:#010x} encode a negative target")
    if word != 0 and (size > 34 or (word > 0xFF and size > 33) or (word > 0xFFFF and size > 32)):
        raise InvalidCompactTarget(f"compact bits {bits:#010x} overflow 256 bits")
    return target


def target_to_compact(target: int) -> int:
    """The compact encoding of a non-negative target (GetCompact); lossy below 3 bytes."""
    if target < 0:
        raise ValueError("a target is never negative")
    size = (target.bit_length() + 7) // 8
    if size <= 3:
        compact = target << (8 * (3 - size))
    else:
        compact = target >> (8 * (size - 3))
    # The 0x00800000 bit is the sign: if the mantissa would set it, move one byte up.
    if compact & 0x00800000:
        compact >>= 8
        size += 1
    assert compact & ~0x007FFFFF == 0
    assert size < 256
    return compact | (size << 24)


def next_target_bits(last_bits: int, first_time: int, last_time: int, *, timespan: int, limit_bits: int) -> int:
    """Bitcoin's retarget: scale the target by actual / expected timespan.

    `first_time` and `last_time` are the timestamps of the first and last block of the
    retarget window, in the same unit as `timespan`. The measured span is clamped to
    [timespan/4, timespan*4] so one window moves difficulty by at most a factor four.
    """
    assert timespan > 0
    actual = last_time - first_time
    actual = max(actual, timespan // 4)
    actual = min(actual, timespan * 4)
    limit = compact_to_target(limit_bits)
    target = compact_to_target(last_bits)
    target = target * actual // timespan
    target = min(target, limit)
    return target_to_compact(target)


def work_of_target(target: int) -> int:
    """Expected hashes to find a block: 2**256 / (target + 1) (Bitcoin's GetBlockProof)."""
    return (1 << 256) // (target + 1)


def work_of_bits(bits: int) -> int:
    return work_of_target(compact_to_target(bits))
