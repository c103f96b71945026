"""The validator lifecycle (consensus/pos/validators.py): one transition table.

What and how:
- The table itself: every allowed (status, event) pair gives its listed status, and
  every other pair of Status x Event is refused with InvalidTransition; the expected
  table is written out here a second time so a change to either shows up. Graph
  checks: every status is reachable from PENDING, WITHDRAWN is terminal and reachable
  from every status, and only ACTIVE votes.
- Lifecycle walks over epochs with the "minimal" preset: stake, activation after the
  delay, unstake, unbonding, withdrawal; slashing while pending, active and exiting;
  a forced exit when the stake falls below the minimum.
- The penalty arithmetic on exact numbers, and a hypothesis property for supply
  accounting: penalty == burned + reward and stake_before == stake_after + penalty.
"""

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consensus.crypto import KeyPair
from consensus.errors import ValidationError
from consensus.pos.params import POS_PRESETS, PosParams
from consensus.pos.validators import (
    FAR_FUTURE_EPOCH,
    TRANSITIONS,
    Event,
    InvalidStake,
    InvalidTransition,
    Status,
    Validator,
    compute_slash_penalty,
    get_epoch_event,
    is_active,
    is_slashable,
    on_slashed,
    on_stake,
    on_unstake,
    on_withdrawn,
    process_epoch,
    transition,
)

PARAMS = PosParams(**POS_PRESETS["minimal"])  # delay 2, unbonding 4, slash 10 %, whistleblower 10 %, min 1,000,000
KEY = KeyPair.derive("validators-test", "validator", 0).public_key
STAKE = 2_000_000

# The table as this test expects it, written out independently of the module.
EXPECTED = {
    (Status.PENDING, Event.ACTIVATION_EPOCH_REACHED): Status.ACTIVE,
    (Status.PENDING, Event.SLASHED): Status.SLASHED,
    (Status.ACTIVE, Event.SLASHED): Status.SLASHED,
    (Status.EXITING, Event.SLASHED): Status.SLASHED,
    (Status.ACTIVE, Event.UNSTAKE_REQUESTED): Status.EXITING,
    (Status.ACTIVE, Event.STAKE_BELOW_MIN): Status.EXITING,
    (Status.EXITING, Event.EXIT_EPOCH_REACHED): Status.WITHDRAWABLE,
    (Status.SLASHED, Event.EXIT_EPOCH_REACHED): Status.WITHDRAWABLE,
    (Status.WITHDRAWABLE, Event.WITHDRAWN): Status.WITHDRAWN,
}
DISALLOWED = [pair for pair in itertools.product(Status, Event) if pair not in EXPECTED]


def test_the_table_is_the_expected_one() -> None:
    assert TRANSITIONS == EXPECTED


@pytest.mark.parametrize(("status", "event"), list(EXPECTED), ids=lambda x: x.name)
def test_every_allowed_transition(status: Status, event: Event) -> None:
    assert transition(status, event) is EXPECTED[(status, event)]


@pytest.mark.parametrize(("status", "event"), DISALLOWED, ids=lambda x: x.name)
def test_every_other_pair_is_refused(status: Status, event: Event) -> None:
    with pytest.raises(InvalidTransition, match=f"a {status.name} validator cannot take the event {event.name}"):
        transition(status, event)


def test_the_disallowed_list_is_complete() -> None:
    assert len(EXPECTED) + len(DISALLOWED) == len(Status) * len(Event) == 36


def test_an_invalid_transition_is_a_validation_error() -> None:
    """An unstake or evidence the status does not allow is bad input: reject the transaction or block."""
    assert issubclass(InvalidTransition, ValidationError)


def reachable(start: Status) -> set[Status]:
    seen, frontier = {start}, [start]
    while frontier:
        status = frontier.pop()
        for (before, _), after in TRANSITIONS.items():
            if before is status and after not in seen:
                seen.add(after)
                frontier.append(after)
    return seen


def test_every_status_is_reachable_from_pending() -> None:
    assert reachable(Status.PENDING) == set(Status)


def test_withdrawn_is_terminal_and_every_status_gets_there() -> None:
    assert not [pair for pair in TRANSITIONS if pair[0] is Status.WITHDRAWN]
    for status in Status:
        assert Status.WITHDRAWN in reachable(status), status


def test_only_active_validators_vote() -> None:
    assert [s for s in Status if is_active(s)] == [Status.ACTIVE]


def test_slashable_statuses_hold_locked_unslashed_stake() -> None:
    assert [s for s in Status if is_slashable(s)] == [Status.PENDING, Status.ACTIVE, Status.EXITING]


# --- Lifecycle walks ---


def walk(validator: Validator, epochs: range) -> dict[int, Status]:
    """The status at the start of each epoch, applying only the time-driven transitions."""
    statuses = {}
    for epoch in epochs:
        [validator] = process_epoch([validator], epoch, PARAMS)
        statuses[epoch] = validator.status
    return statuses


def test_stake_activates_after_the_delay() -> None:
    validator = on_stake(KEY, STAKE, 3, PARAMS)
    assert validator == Validator(KEY, STAKE, Status.PENDING, 5, FAR_FUTURE_EPOCH, FAR_FUTURE_EPOCH, False)
    assert walk(validator, range(3, 8)) == {
        3: Status.PENDING, 4: Status.PENDING, 5: Status.ACTIVE, 6: Status.ACTIVE, 7: Status.ACTIVE,
    }


def test_stake_below_the_minimum_is_refused() -> None:
    with pytest.raises(InvalidStake, match="below the minimum of 1000000"):
        on_stake(KEY, PARAMS.stake_min - 1, 0, PARAMS)
    assert on_stake(KEY, PARAMS.stake_min, 0, PARAMS).stake == PARAMS.stake_min


def test_unstake_unbonds_then_withdraws() -> None:
    [validator] = process_epoch([on_stake(KEY, STAKE, 0, PARAMS)], 2, PARAMS)
    assert validator.status is Status.ACTIVE
    exiting = on_unstake(validator, 3, PARAMS)
    assert (exiting.status, exiting.exit_epoch, exiting.withdrawable_epoch) == (Status.EXITING, 3, 7)
    assert not is_active(exiting.status)
    statuses = walk(exiting, range(3, 9))
    assert statuses == {3: Status.EXITING, 4: Status.EXITING, 5: Status.EXITING, 6: Status.EXITING,
                        7: Status.WITHDRAWABLE, 8: Status.WITHDRAWABLE}
    [withdrawable] = process_epoch([exiting], 7, PARAMS)
    withdrawn, amount = on_withdrawn(withdrawable)
    assert amount == STAKE
    assert (withdrawn.status, withdrawn.stake, withdrawn.public_key) == (Status.WITHDRAWN, 0, KEY)
    assert walk(withdrawn, range(8, 20)) == {e: Status.WITHDRAWN for e in range(8, 20)}


@pytest.mark.parametrize("status", [Status.PENDING, Status.EXITING, Status.SLASHED, Status.WITHDRAWABLE, Status.WITHDRAWN])
def test_unstake_is_refused_unless_active(status: Status) -> None:
    validator = on_stake(KEY, STAKE, 0, PARAMS)._replace(status=status)
    with pytest.raises(InvalidTransition, match=f"a {status.name} validator cannot take the event UNSTAKE_REQUESTED"):
        on_unstake(validator, 3, PARAMS)


def test_withdrawal_is_refused_before_unbonding_ends() -> None:
    exiting = on_unstake(process_epoch([on_stake(KEY, STAKE, 0, PARAMS)], 2, PARAMS)[0], 3, PARAMS)
    with pytest.raises(InvalidTransition, match="EXITING validator cannot take the event WITHDRAWN"):
        on_withdrawn(exiting)


def test_slashing_an_active_validator_penalises_and_ejects() -> None:
    [validator] = process_epoch([on_stake(KEY, STAKE, 0, PARAMS)], 2, PARAMS)
    slashed, penalty, reward = on_slashed(validator, 3, PARAMS)
    assert (penalty, reward) == (200_000, 20_000)  # 10 % of 2,000,000; 10 % of that to the includer
    assert slashed.stake == 1_800_000
    assert (slashed.status, slashed.slashed, slashed.exit_epoch, slashed.withdrawable_epoch) == (Status.SLASHED, True, 3, 7)
    assert not is_active(slashed.status)
    assert walk(slashed, range(4, 9)) == {4: Status.SLASHED, 5: Status.SLASHED, 6: Status.SLASHED,
                                          7: Status.WITHDRAWABLE, 8: Status.WITHDRAWABLE}
    [withdrawable] = process_epoch([slashed], 7, PARAMS)
    assert withdrawable.slashed  # the history survives the status
    withdrawn, amount = on_withdrawn(withdrawable)
    assert amount == 1_800_000 and withdrawn.slashed


def test_slashing_a_pending_validator_keeps_it_out_of_the_active_set() -> None:
    pending = on_stake(KEY, STAKE, 0, PARAMS)
    slashed, penalty, _ = on_slashed(pending, 1, PARAMS)
    assert (slashed.status, slashed.exit_epoch, slashed.withdrawable_epoch, penalty) == (Status.SLASHED, 1, 5, 200_000)
    # Its activation epoch (2) passes, but it never becomes active.
    assert walk(slashed, range(1, 6)) == {1: Status.SLASHED, 2: Status.SLASHED, 3: Status.SLASHED, 4: Status.SLASHED,
                                          5: Status.WITHDRAWABLE}


def test_slashing_an_exiting_validator_restarts_its_unbonding() -> None:
    exiting = on_unstake(process_epoch([on_stake(KEY, STAKE, 0, PARAMS)], 2, PARAMS)[0], 3, PARAMS)
    slashed, _, _ = on_slashed(exiting, 5, PARAMS)
    assert (slashed.status, slashed.exit_epoch, slashed.withdrawable_epoch) == (Status.SLASHED, 3, 9)
    assert walk(slashed, range(6, 10)) == {6: Status.SLASHED, 7: Status.SLASHED, 8: Status.SLASHED,
                                           9: Status.WITHDRAWABLE}


@pytest.mark.parametrize("status", [Status.SLASHED, Status.WITHDRAWABLE, Status.WITHDRAWN])
def test_slashing_twice_or_after_unbonding_is_refused(status: Status) -> None:
    validator = on_stake(KEY, STAKE, 0, PARAMS)._replace(status=status)
    with pytest.raises(InvalidTransition, match="cannot take the event SLASHED"):
        on_slashed(validator, 3, PARAMS)


def test_stake_below_the_minimum_forces_an_exit() -> None:
    [active] = process_epoch([on_stake(KEY, PARAMS.stake_min, 0, PARAMS)], 2, PARAMS)
    leaked = active._replace(stake=PARAMS.stake_min - 1)  # what the inactivity leak does
    assert get_epoch_event(leaked, 3, PARAMS) is Event.STAKE_BELOW_MIN
    [forced] = process_epoch([leaked], 3, PARAMS)
    assert (forced.status, forced.exit_epoch, forced.withdrawable_epoch, forced.slashed) == (Status.EXITING, 3, 7, False)
    assert walk(forced, range(4, 8))[7] is Status.WITHDRAWABLE
    # At exactly the minimum it stays.
    assert process_epoch([active], 3, PARAMS) == [active]


def test_a_slashed_validator_below_the_minimum_is_not_an_event() -> None:
    """The stake condition only matters where the table says so (ACTIVE)."""
    slashed, _, _ = on_slashed(process_epoch([on_stake(KEY, PARAMS.stake_min, 0, PARAMS)], 2, PARAMS)[0], 3, PARAMS)
    assert slashed.stake < PARAMS.stake_min
    assert get_epoch_event(slashed, 4, PARAMS) is None


def test_process_epoch_keeps_order_and_input() -> None:
    registry = [on_stake(KEY, STAKE, epoch, PARAMS) for epoch in range(5)]  # activations at 2..6
    before = list(registry)
    after = process_epoch(registry, 4, PARAMS)
    assert registry == before
    assert [v.status for v in after] == [Status.ACTIVE] * 3 + [Status.PENDING] * 2
    assert [v.activation_epoch for v in after] == [2, 3, 4, 5, 6]


# --- Penalty arithmetic and supply accounting ---


@pytest.mark.parametrize(("stake", "penalty_percent", "whistleblower_percent", "penalty", "reward"), [
    (2_000_000, 10, 10, 200_000, 20_000),
    (1_000_009, 10, 10, 100_000, 10_000),  # rounds down
    (1_234_567, 10, 10, 123_456, 12_345),
    (1_000_000, 100, 0, 1_000_000, 0),  # everything burned
    (1_000_000, 100, 100, 1_000_000, 1_000_000),  # everything to the includer
    (9, 10, 10, 0, 0),  # too small to cost anything
])
def test_penalty_arithmetic(stake: int, penalty_percent: int, whistleblower_percent: int, penalty: int, reward: int) -> None:
    params = PosParams(**{**POS_PRESETS["minimal"], "slash_penalty_percent": penalty_percent,
                          "whistleblower_percent": whistleblower_percent})
    assert compute_slash_penalty(stake, params) == (penalty, reward)


@settings(max_examples=300, deadline=None)
@given(st.integers(1_000_000, 2**64 - 1), st.integers(1, 100), st.integers(0, 100), st.sampled_from(["minimal", "testnet"]))
def test_slashing_conserves_supply(stake: int, penalty_percent: int, whistleblower_percent: int, preset: str) -> None:
    params = PosParams(**{**POS_PRESETS[preset], "slash_penalty_percent": penalty_percent,
                          "whistleblower_percent": whistleblower_percent})
    validator = process_epoch([on_stake(KEY, max(stake, params.stake_min), 0, params)],
                              params.activation_delay_epochs, params)[0]
    slashed, penalty, reward = on_slashed(validator, params.activation_delay_epochs, params)
    burned = penalty - reward
    assert 0 <= reward <= penalty <= validator.stake
    assert burned >= 0 and penalty == burned + reward
    assert validator.stake == slashed.stake + penalty  # nothing created, nothing lost
