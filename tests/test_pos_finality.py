"""Casper FFG justification and finalization (the consensus-specs' weighing)."""

from consensus.crypto import sha256
from consensus.pos.finality import FfgState, is_supermajority, weigh_justification_and_finalization
from consensus.pos.types import Checkpoint

TOTAL = 100


def cp(epoch: int) -> Checkpoint:
    return Checkpoint(epoch, sha256(b"epoch-%d" % epoch))


def run(participation: list[tuple[int, int]]) -> list[FfgState]:
    """participation[i] = (stake for the previous target, stake for the current target)
    counted at the boundary into epoch i + 1."""
    ffg = FfgState.genesis(cp(0).root)
    states = []
    for i, (prev, cur) in enumerate(participation):
        epoch = i + 1
        ffg = weigh_justification_and_finalization(ffg, epoch, TOTAL, prev, cur, cp(epoch - 1), cp(epoch))
        states.append(ffg)
    return states


def test_supermajority_is_two_thirds_in_integers() -> None:
    assert is_supermajority(67, 100) and not is_supermajority(66, 100)
    assert is_supermajority(2, 3) and not is_supermajority(1, 3)
    assert not is_supermajority(0, 0)


def test_everyone_online_justifies_each_epoch_and_finalizes_the_one_before() -> None:
    states = run([(100, 100)] * 6)
    for epoch, s in enumerate(states, start=1):
        assert s.current_justified == cp(epoch)
        assert s.finalized == (cp(epoch - 1) if epoch >= 2 else cp(0))


def test_a_two_two_split_justifies_and_finalizes_nothing() -> None:
    states = run([(50, 50)] * 6)
    assert all(s.current_justified == cp(0) and s.finalized == cp(0) for s in states)


def test_finality_resumes_after_a_stall() -> None:
    states = run([(100, 100)] * 3 + [(50, 50)] * 3 + [(100, 100)] * 3)
    assert states[2].finalized == cp(2)
    assert [s.finalized for s in states[3:6]] == [cp(2)] * 3  # stalled, never reverted
    assert states[6].current_justified == cp(7) and states[6].finalized == cp(2)  # source 3 != 6: not yet
    assert states[7].finalized == cp(7) and states[8].finalized == cp(8)


def test_late_justification_of_the_previous_epoch_finalizes_by_the_k2_rule() -> None:
    # Votes for each epoch's checkpoint arrive only in the next epoch (previous target).
    states = run([(100, 0)] * 5)
    assert [s.current_justified for s in states] == [cp(0), cp(1), cp(2), cp(3), cp(4)]
    # Epoch e is justified during e + 1 with e - 1 as source; the 2nd/3rd/4th-epoch
    # rule then finalizes e - 1 at the boundary into e + 2: finality lags three epochs.
    assert [s.finalized for s in states] == [cp(0), cp(0), cp(0), cp(1), cp(2)]


def test_finalized_height_never_decreases_under_any_participation() -> None:
    import itertools

    levels = [0, 50, 66, 67, 100]
    for pattern in itertools.product(levels, repeat=4):
        states = run([(p, q) for p, q in zip(pattern, reversed(pattern))] * 2)
        epochs = [s.finalized.epoch for s in states]
        assert epochs == sorted(epochs), pattern
        assert all(s.finalized.epoch <= s.current_justified.epoch for s in states)
