"""Proposer selection: proportional to stake (chi-square), deterministic, seed-driven."""

from hypothesis import given, settings, strategies as st

from consensus.crypto import sha256
from consensus.pos.selection import mix_seed, select_proposer

# chi-square critical values at the 1% level, by degrees of freedom
CHI2_CRITICAL_1PCT = {1: 6.635, 2: 9.210, 3: 11.345, 4: 13.277}


def chi_square(counts: dict[int, int], stakes: list[tuple[int, int]], draws: int) -> float:
    total = sum(s for _, s in stakes)
    return sum((counts.get(i, 0) - draws * s / total) ** 2 / (draws * s / total) for i, s in stakes)


def draw_many(stakes: list[tuple[int, int]], slots: int, seed: bytes) -> dict[int, int]:
    counts: dict[int, int] = {}
    for slot in range(slots):
        # The seed changes every epoch of 8 slots, as the RANDAO mixes reveals in.
        if slot % 8 == 0:
            seed = mix_seed(seed, sha256(slot.to_bytes(8, "big")))
        winner = select_proposer(seed, slot, stakes)
        counts[winner] = counts.get(winner, 0) + 1
    return counts


def test_selection_is_proportional_to_stake_40_30_20_10() -> None:
    stakes = [(0, 40), (1, 30), (2, 20), (3, 10)]
    draws = 20_000
    counts = draw_many(stakes, draws, b"chainlab-test-seed")
    statistic = chi_square(counts, stakes, draws)
    assert statistic < CHI2_CRITICAL_1PCT[3], (statistic, counts)
    assert sum(counts.values()) == draws


def test_chi_square_detects_a_biased_selector() -> None:
    """The test above can fail: a selector that ignores stake is caught."""
    stakes = [(0, 40), (1, 30), (2, 20), (3, 10)]
    draws = 20_000
    uniform = {i: draws // 4 for i, _ in stakes}
    assert chi_square(uniform, stakes, draws) > CHI2_CRITICAL_1PCT[3]


def test_stakes_in_large_units_stay_proportional() -> None:
    stakes = [(5, 4_000_000_000), (9, 1_000_000_000)]
    draws = 20_000
    counts = draw_many(stakes, draws, b"units")
    assert chi_square(counts, stakes, draws) < CHI2_CRITICAL_1PCT[1], counts


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=10**12), min_size=1, max_size=20).filter(lambda s: sum(s) > 0),
       st.binary(min_size=32, max_size=32), st.integers(min_value=0, max_value=2**40))
def test_winner_is_an_active_validator_with_stake(stake_list: list[int], seed: bytes, slot: int) -> None:
    stakes = [(i * 3, s) for i, s in enumerate(stake_list)]
    winner = select_proposer(seed, slot, stakes)
    assert dict(stakes)[winner] > 0
    assert select_proposer(seed, slot, stakes) == winner  # deterministic


def test_reveals_change_the_seed_and_the_schedule() -> None:
    stakes = [(i, 1) for i in range(16)]
    a, b = mix_seed(b"s" * 32, b"reveal-a"), mix_seed(b"s" * 32, b"reveal-b")
    assert a != b
    assert [select_proposer(a, s, stakes) for s in range(32)] != [select_proposer(b, s, stakes) for s in range(32)]
