"""The validator lifecycle: one transition table, and the pure functions that apply it.

  PENDING ──activation epoch──► ACTIVE ──unstake, or stake below min──► EXITING
     │                            │                                       │    │
     │ slashed                    │ slashed                       slashed │    │ unbonding over
     └────────────────────────────┴────────────► SLASHED ◄────────────────┘    ▼
                                                    └──── unbonding over ──► WITHDRAWABLE ──withdrawn──► WITHDRAWN

TRANSITIONS is the only place that says which event moves which status where; an
event missing from it is refused with InvalidTransition (STYLE.md 3, h11 _state.py).
The functions below decide *when* an event happens (epochs, stake) and what it costs;
they never decide *whether* a status allows it.

Decisions:
- Only ACTIVE validators vote and propose (is_active). Unstaking, a forced exit and a
  slashing take the validator out of the active set at once. Callers that need one
  active set for a whole epoch (2/3 of active stake must mean one total for every vote
  of the epoch) take it once, after process_epoch at the epoch's start; changes during
  the epoch then count from the next epoch on.
- A PENDING validator can be slashed. Its key can sign before its stake counts, and a
  key caught equivocating (broken signer, stolen key) should never enter the active
  set; the punished party is only the offender. So the rule is simple: locked stake
  that was never slashed is slashable (PENDING, ACTIVE, EXITING).
- A PENDING validator cannot unstake: the stake is committed for the activation delay;
  it unstakes once active. Stake below the minimum applies to ACTIVE validators only
  (the inactivity leak touches only them; staking below the minimum is refused).
- A slashed validator is ejected at once and its remaining stake unbonds again from
  the slashing epoch (an exiting one's lock-up restarts), so slashed funds stay locked
  a full unbonding period. `slashed` stays True after SLASHED to record the history.
- WITHDRAWN is a terminal status, not a removal: validators are named by their index
  in the registry (votes, evidence), so a record is never deleted or reused; a
  withdrawn one keeps its public key with stake 0.
- One stake makes one validator: no top-ups, so a validator's weight changes only by
  rewards and penalties.
"""

from enum import Enum, IntEnum
from typing import NamedTuple

from consensus.errors import ValidationError
from consensus.pos.params import PosParams

FAR_FUTURE_EPOCH = 2**64 - 1  # an epoch not set yet (Ethereum's FAR_FUTURE_EPOCH)


class Status(IntEnum):
    """A validator's status; integer values are stable for the canonical encoding."""

    PENDING = 0  # staked, waiting for its activation epoch
    ACTIVE = 1  # votes and proposes
    EXITING = 2  # unstaked or forced out: unbonding, still slashable
    SLASHED = 3  # caught by evidence: penalised, ejected, unbonding
    WITHDRAWABLE = 4  # unbonding over: its stake can be returned
    WITHDRAWN = 5  # stake returned: terminal


class Event(Enum):
    ACTIVATION_EPOCH_REACHED = "activation epoch reached"
    UNSTAKE_REQUESTED = "unstake requested"
    EXIT_EPOCH_REACHED = "unbonding over"  # the epoch has reached withdrawable_epoch
    SLASHED = "slashed"  # evidence against the validator was included in a block
    STAKE_BELOW_MIN = "stake below minimum"  # e.g. after the inactivity leak: forced exit
    WITHDRAWN = "withdrawn"  # the remaining stake was returned to its owner


TRANSITIONS: dict[tuple[Status, Event], Status] = {
    # Rule 1: a new stake votes only after the activation delay (no instant takeover).
    (Status.PENDING, Event.ACTIVATION_EPOCH_REACHED): Status.ACTIVE,
    # Rule 2: locked stake that was never slashed is slashable, pending included.
    (Status.PENDING, Event.SLASHED): Status.SLASHED,
    (Status.ACTIVE, Event.SLASHED): Status.SLASHED,
    (Status.EXITING, Event.SLASHED): Status.SLASHED,  # unbonding exists so that late evidence still bites
    # Rule 3: an active validator leaves by choice or when its stake falls below the minimum.
    (Status.ACTIVE, Event.UNSTAKE_REQUESTED): Status.EXITING,
    (Status.ACTIVE, Event.STAKE_BELOW_MIN): Status.EXITING,
    # Rule 4: stake is returned only after the unbonding period, slashed or not.
    (Status.EXITING, Event.EXIT_EPOCH_REACHED): Status.WITHDRAWABLE,
    (Status.SLASHED, Event.EXIT_EPOCH_REACHED): Status.WITHDRAWABLE,
    # Rule 5: returning the funds ends the lifecycle; nothing leaves WITHDRAWN.
    (Status.WITHDRAWABLE, Event.WITHDRAWN): Status.WITHDRAWN,
}


class InvalidTransition(ValidationError):
    """An event the validator's status does not allow (e.g. unstaking twice, slashing twice)."""


class InvalidStake(ValidationError):
    pass


def transition(status: Status, event: Event) -> Status:
    """The status after `event`; anything not in TRANSITIONS is refused."""
    after = TRANSITIONS.get((status, event))
    if after is None:
        raise InvalidTransition(f"a {status.name} validator cannot take the event {event.name}")
    return after


def is_active(status: Status) -> bool:
    """Whether a validator in `status` votes and proposes: ACTIVE only."""
    return status is Status.ACTIVE


def is_slashable(status: Status) -> bool:
    """Whether evidence against a validator in `status` can still be included."""
    return (status, Event.SLASHED) in TRANSITIONS


class Validator(NamedTuple):
    public_key: bytes
    stake: int
    status: Status
    activation_epoch: int  # the epoch it becomes ACTIVE
    exit_epoch: int  # the epoch it left the active set (or would have); FAR_FUTURE_EPOCH until then
    withdrawable_epoch: int  # the epoch its unbonding ends; FAR_FUTURE_EPOCH until it exits
    slashed: bool  # stays True after SLASHED, through WITHDRAWABLE and WITHDRAWN


def compute_slash_penalty(stake: int, params: PosParams) -> tuple[int, int]:
    """(penalty, whistleblower_reward) for slashing `stake`.

    The penalty leaves the stake; the reward is paid to the proposer that includes the
    evidence and the rest, penalty - reward, is burned. Integer division rounds both
    down, so penalty <= stake and reward <= penalty always hold.
    """
    penalty = stake * params.slash_penalty_percent // 100
    reward = penalty * params.whistleblower_percent // 100
    return penalty, reward


def on_stake(public_key: bytes, amount: int, epoch: int, params: PosParams) -> Validator:
    """A new PENDING validator for a stake made in `epoch`."""
    # The stake must reach the minimum: a validator below it would be forced out at once.
    if amount < params.stake_min:
        raise InvalidStake(f"stake {amount} is below the minimum of {params.stake_min}")
    return Validator(
        public_key=public_key,
        stake=amount,
        status=Status.PENDING,
        activation_epoch=epoch + params.activation_delay_epochs,
        exit_epoch=FAR_FUTURE_EPOCH,
        withdrawable_epoch=FAR_FUTURE_EPOCH,
        slashed=False,
    )


def on_unstake(validator: Validator, epoch: int, params: PosParams) -> Validator:
    """The validator after its unstake request is included in `epoch`."""
    return _exit(validator, transition(validator.status, Event.UNSTAKE_REQUESTED), epoch, params)


def on_slashed(validator: Validator, epoch: int, params: PosParams) -> tuple[Validator, int, int]:
    """(validator, penalty, whistleblower_reward) after evidence is included in `epoch`.

    The caller pays the reward to the includer and burns penalty - reward.
    """
    status = transition(validator.status, Event.SLASHED)
    penalty, reward = compute_slash_penalty(validator.stake, params)
    slashed = validator._replace(
        stake=validator.stake - penalty,
        status=status,
        exit_epoch=min(validator.exit_epoch, epoch),
        # Restart the lock-up: an exiting validator's earlier end is always sooner.
        withdrawable_epoch=epoch + params.unbonding_epochs,
        slashed=True,
    )
    return slashed, penalty, reward


def on_withdrawn(validator: Validator) -> tuple[Validator, int]:
    """(validator, amount): the stake is returned to its owner; the record stays, at 0."""
    status = transition(validator.status, Event.WITHDRAWN)
    return validator._replace(stake=0, status=status), validator.stake


def get_epoch_event(validator: Validator, epoch: int, params: PosParams) -> Event | None:
    """The time-driven event due for `validator` at the start of `epoch`, if any.

    Each condition says only *when*; the table says in which status it matters (an
    ACTIVE validator is long past its activation epoch, a SLASHED one may hold less
    than the minimum: neither is an event for them). The first allowed one wins.
    """
    due = (
        (epoch >= validator.activation_epoch, Event.ACTIVATION_EPOCH_REACHED),
        (epoch >= validator.withdrawable_epoch, Event.EXIT_EPOCH_REACHED),
        (validator.stake < params.stake_min, Event.STAKE_BELOW_MIN),
    )
    for condition, event in due:
        if condition and (validator.status, event) in TRANSITIONS:
            return event
    return None


def process_epoch(validators: list[Validator], epoch: int, params: PosParams) -> list[Validator]:
    """The registry at the start of `epoch`: activations, forced exits, ends of unbonding.

    Returns a new list in the same order (indices are identities); the input is unchanged.
    """
    after = []
    for validator in validators:
        event = get_epoch_event(validator, epoch, params)
        if event is None:
            after.append(validator)
            continue
        status = transition(validator.status, event)
        if event is Event.STAKE_BELOW_MIN:
            after.append(_exit(validator, status, epoch, params))
        else:
            after.append(validator._replace(status=status))
    return after


def _exit(validator: Validator, status: Status, epoch: int, params: PosParams) -> Validator:
    return validator._replace(status=status, exit_epoch=epoch, withdrawable_epoch=epoch + params.unbonding_epochs)
