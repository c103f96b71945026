"""A fault schedule kept as data: what breaks, when, on which nodes, and when it heals.

The simulator and the real-testnet chaos runner read the same schedule, so a chaos run
replays from its arguments alone and two targets can be compared fault for fault.
Pure: every draw comes from one `random.Random` seeded by the arguments; no I/O, no clock.

The rules `draw_schedule` keeps, each checked by tests/test_schedule.py:
  1. Every requested fault type appears at least once.
  2. At most `max_concurrent` timed faults overlap, and two faults of one kind never do
     (a runner heals a kind with one command, which must not heal a second one early).
  3. Kill and pause never leave fewer than a majority of nodes up (pos: more than 2/3 of
     the validators, equal stakes), so the chain can still make progress; partitions
     are exempt, since cutting the network is their point.
  4. Byzantine roles last the whole run: equivocators hold less than 1/3 of the stake
     (at least one), withhold and spam take one node each, and a byzantine node is
     never a kill or pause victim (its misbehaviour must stay visible).
  5. Every fault is healed by `heal_at_s`; a quiet period follows so the network can
     converge before the final checks.
"""

import random
from dataclasses import dataclass
from typing import Any, Sequence

FAULT_TYPES = ("kill", "pause", "partition", "delay", "skew", "equivocate", "withhold", "spam")
TIMED = ("kill", "pause", "partition", "delay", "skew")  # events with a start and a duration
ROLES = ("equivocate", "withhold", "spam")  # byzantine roles, for the whole run
PARTITION_SHAPES = ("symmetric", "asymmetric", "majority", "isolate", "bridge")

QUIET_MIN_S = 20.0  # like the simulator (SimConfig.quiet_min_s): enough for sync and a few epochs
QUIET_FRACTION = 0.35  # like the simulator (SimConfig.quiet_fraction)
WARMUP_MAX_S = 5.0  # faults start once the nodes have connected: min(5 s, a fifth of the fault phase)
EVENT_MS = (2_000, 20_000)  # a timed fault lasts this long, clipped to the room it has
DELAY_MS = (50, 800)  # added latency: noticeable against 1-2 s blocks, below the peers' timeouts
LOSS_MAX = 0.2  # above this, a real TCP link mostly resets instead of losing
SKEW_MS = (200, 2_000)  # up to two slots of the minimal preset


@dataclass(frozen=True)
class FaultEvent:
    at_s: float  # start, seconds from the run's start
    kind: str  # one of TIMED
    duration_s: float  # healed at at_s + duration_s (always <= schedule.heal_at_s)
    nodes: tuple[int, ...]  # kill/pause/skew/delay: the victims; partition: all involved
    params: dict  # kill/pause: {}; delay: {"delay_ms", "loss"}; skew: {"skew_ms"};
    # partition: {"shape", "sides": [[...], [...]], "one_way"} (asymmetric: one way, traffic
    # from sides[0] to sides[1] is cut; bridge: "bridge": [node] talks to both sides)


@dataclass(frozen=True)
class Schedule:
    seed: int
    nodes: int
    duration_s: float
    heal_at_s: float  # every fault healed by then; a quiet period follows
    consensus: str
    events: tuple[FaultEvent, ...]  # sorted by (at_s, kind, nodes)
    byzantine: dict[int, str]  # node -> role

    def to_json(self) -> dict[str, Any]:
        return {
            "seed": self.seed, "nodes": self.nodes, "duration_s": self.duration_s, "heal_at_s": self.heal_at_s,
            "consensus": self.consensus,
            "events": [{"at_s": e.at_s, "kind": e.kind, "duration_s": e.duration_s, "nodes": list(e.nodes),
                        "params": _plain(e.params)} for e in self.events],
            # JSON object keys are strings; from_json turns them back into node numbers.
            "byzantine": {str(node): role for node, role in sorted(self.byzantine.items())},
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Schedule":
        events = tuple(FaultEvent(float(e["at_s"]), e["kind"], float(e["duration_s"]), tuple(int(n) for n in e["nodes"]),
                                  _plain(e["params"])) for e in d["events"])
        byzantine = {int(node): role for node, role in d["byzantine"].items()}
        bad = sorted({e.kind for e in events} - set(TIMED)) + sorted(set(byzantine.values()) - set(ROLES))
        if bad:
            raise ValueError(f"schedule names unknown fault type(s): {', '.join(bad)}")
        return cls(int(d["seed"]), int(d["nodes"]), float(d["duration_s"]), float(d["heal_at_s"]), d["consensus"],
                   events, byzantine)

    def counts(self) -> dict[str, int]:
        """Per fault type present, how many were injected (a role counts once per node)."""
        kinds = [e.kind for e in self.events] + list(self.byzantine.values())
        return {k: kinds.count(k) for k in FAULT_TYPES if k in kinds}


def _plain(value: Any) -> Any:
    """A deep copy as JSON would give it back: lists for sequences, string keys."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def get_down_max(nodes: int, consensus: str) -> int:
    """How many nodes may be killed or paused at once (rule 3): pow keeps a strict majority
    up (n - k > n/2), pos keeps more than 2/3 of equal-stake validators up (n - k > 2n/3)."""
    return (nodes - 1) // 2 if consensus == "pow" else (nodes - 1) // 3


def draw_schedule(seed: int, nodes: int, duration_s: float, faults: Sequence[str], consensus: str, *,
                  quiet_s: float | None = None, max_concurrent: int = 2, mean_gap_s: float = 10.0) -> Schedule:
    """Draw a schedule from the arguments alone; `mean_gap_s` is the mean time between
    extra faults beyond the one of each requested timed type (some are dropped when they
    would break rule 2 or 3)."""
    # Checks first, each naming the rule it protects.
    if consensus not in ("pow", "pos"):
        raise ValueError(f"consensus must be 'pow' or 'pos', not {consensus!r}")
    if nodes < 2:
        raise ValueError(f"a schedule needs at least 2 nodes, not {nodes}")
    if isinstance(faults, str):
        raise ValueError(f"faults is a sequence of fault type names, not the string {faults!r}")
    unknown = sorted(set(faults) - set(FAULT_TYPES))
    if unknown:
        raise ValueError(f"unknown fault type(s) {', '.join(unknown)}; choose from {', '.join(FAULT_TYPES)}")
    requested = [k for k in FAULT_TYPES if k in set(faults)]
    if "equivocate" in requested and consensus != "pos":
        raise ValueError("equivocate needs consensus pos: only validators sign votes")
    if "withhold" in requested and consensus != "pow":
        raise ValueError("withhold needs consensus pow: a miner withholds the blocks it finds")
    if "equivocate" in requested and nodes < 4:
        raise ValueError(f"equivocate needs at least 4 nodes: equivocators must hold less than 1/3 of the stake "
                         f"and there is at least one (got {nodes} nodes)")
    down_max = get_down_max(nodes, consensus)
    for kind in ("kill", "pause"):
        if kind in requested and down_max < 1:
            raise ValueError(f"{kind} needs at least {3 if consensus == 'pow' else 4} nodes with {consensus}: taking "
                             f"one of {nodes} down would leave no {'majority' if consensus == 'pow' else 'two thirds'} up")
    roles = [k for k in ROLES if k in requested]
    if len(roles) >= nodes:
        raise ValueError(f"{len(roles)} byzantine roles need more than {nodes} nodes: at least one node stays honest")
    if not 0 < duration_s:
        raise ValueError(f"duration must be positive, not {duration_s}")
    quiet_s = max(QUIET_MIN_S, QUIET_FRACTION * duration_s) if quiet_s is None else quiet_s
    if not 0 <= quiet_s < duration_s:
        raise ValueError(f"quiet period {quiet_s} s must be at least 0 and shorter than the duration {duration_s} s")
    if max_concurrent < 1:
        raise ValueError(f"max_concurrent must be at least 1, not {max_concurrent}")
    if not mean_gap_s > 0:
        raise ValueError(f"mean_gap_s must be positive, not {mean_gap_s}")
    timed = [k for k in TIMED if k in requested]
    heal_at_s = float(duration_s) - float(quiet_s)
    heal_ms = int(heal_at_s * 1000)
    start_ms = int(min(WARMUP_MAX_S * 1000, heal_ms / 5))
    # Every event ends at least 1 ms before heal_ms, so float sums can never pass heal_at_s.
    end_ms = heal_ms - 1
    if timed and (end_ms - start_ms) < 1_000 * len(timed):
        raise ValueError(f"{heal_at_s:g} s before the heal is too short for {len(timed)} timed fault type(s): "
                         f"give a longer duration or a shorter quiet period")

    # Seeded from every argument that shapes the draw (floats normalised: 60 and 60.0 agree).
    rng = random.Random(f"chainlab-schedule/{seed}/{nodes}/{float(duration_s)!r}/{float(quiet_s)!r}/{consensus}/"
                        f"{','.join(requested)}/{max_concurrent}/{float(mean_gap_s)!r}")
    order = list(range(nodes))
    rng.shuffle(order)
    byzantine: dict[int, str] = {}
    for role in roles:  # rule 4
        # Equal stakes: fewer than n/3 equivocators hold less than 1/3 of the stake.
        count = rng.randint(1, (nodes - 1) // 3) if role == "equivocate" else 1
        for _ in range(count):
            byzantine[order.pop()] = role
    honest = sorted(set(range(nodes)) - set(byzantine))
    assert honest, (nodes, byzantine)

    # Rule 1: one event of each requested timed type, each alone in its own stretch of the
    # fault phase, so they fit whatever the bounds. Then extra events where they fit.
    placed: list[tuple[int, int, str, tuple[int, ...], dict]] = []
    first = list(timed)
    rng.shuffle(first)
    stretch_ms = (end_ms - start_ms) // max(1, len(first))
    for i, kind in enumerate(first):
        # 1 ms apart: one fault heals strictly before the next starts, in floats too.
        placed.append(_draw_event(rng, kind, start_ms + i * stretch_ms, start_ms + (i + 1) * stretch_ms - 1, nodes,
                                  honest, down_max))
    t = float(start_ms)
    while timed:
        t += rng.expovariate(1 / (mean_gap_s * 1000))
        if t >= end_ms - EVENT_MS[0]:
            break
        event = _draw_event(rng, rng.choice(timed), int(t), end_ms, nodes, honest, down_max)
        if _fits(event, placed, max_concurrent, down_max):
            placed.append(event)
    events = sorted((FaultEvent(at / 1000, kind, (end - at) / 1000, victims, params)
                     for at, end, kind, victims, params in placed), key=lambda e: (e.at_s, e.kind, e.nodes))
    return Schedule(seed, nodes, float(duration_s), heal_at_s, consensus, tuple(events), dict(sorted(byzantine.items())))


def _draw_event(rng: random.Random, kind: str, lo_ms: int, hi_ms: int, nodes: int, honest: list[int],
                down_max: int) -> tuple[int, int, str, tuple[int, ...], dict]:
    room = hi_ms - lo_ms
    length = rng.randint(min(EVENT_MS[0], room), min(EVENT_MS[1], room))
    at = lo_ms + rng.randint(0, room - length)
    params: dict[str, Any] = {}
    if kind in ("kill", "pause"):  # rule 3 and 4: honest victims, never more than down_max
        victims = rng.sample(honest, rng.randint(1, min(down_max, len(honest))))
    elif kind == "delay":
        victims = rng.sample(range(nodes), rng.randint(1, max(1, nodes // 2)))
        params = {"delay_ms": rng.randint(*DELAY_MS), "loss": round(rng.uniform(0, LOSS_MAX), 2)}
    elif kind == "skew":
        victims = rng.sample(range(nodes), rng.randint(1, max(1, (nodes - 1) // 3)))
        params = {"skew_ms": rng.choice((-1, 1)) * rng.randint(*SKEW_MS)}
    else:
        assert kind == "partition", kind
        victims, params = _draw_partition(rng, nodes)
    return at, at + length, kind, tuple(sorted(victims)), params


def _draw_partition(rng: random.Random, nodes: int) -> tuple[list[int], dict]:
    # Majority, isolate and bridge need a third node to differ from a plain split.
    shape = rng.choice([s for s in PARTITION_SHAPES if nodes >= 3 or s in ("symmetric", "asymmetric")])
    order = list(range(nodes))
    rng.shuffle(order)
    params: dict[str, Any] = {"shape": shape, "one_way": shape == "asymmetric"}
    if shape == "bridge":
        params["bridge"] = [order.pop()]  # talks to both sides, which cannot talk to each other
    if shape == "symmetric":
        cut = len(order) // 2
    elif shape == "majority":
        cut = len(order) // 2 + 1
    elif shape == "isolate":
        cut = 1
    else:  # asymmetric, bridge: any split with two non-empty sides
        cut = rng.randint(1, len(order) - 1)
    params["sides"] = [sorted(order[:cut]), sorted(order[cut:])]  # majority: sides[0] is the majority
    return list(range(nodes)), dict(sorted(params.items()))


def _fits(event: tuple, placed: list[tuple], max_concurrent: int, down_max: int) -> bool:
    # Closed intervals: a fault that ends when another starts overlaps it, since a runner
    # cannot promise which of the two it applies first.
    at, end, kind = event[0], event[1], event[2]
    overlapping = [e for e in placed if e[0] <= end and at <= e[1]]
    if any(e[2] == kind for e in overlapping):  # rule 2: one fault of a kind at a time
        return False
    # The overlap only grows at a start, so checking the starts inside the event suffices.
    for point in [at] + [e[0] for e in overlapping if e[0] > at]:
        active = [e for e in overlapping + [event] if e[0] <= point <= e[1]]
        if len(active) > max_concurrent:  # rule 2
            return False
        down = [n for e in active if e[2] in ("kill", "pause") for n in e[3]]
        if len(set(down)) != len(down) or len(down) > down_max:  # rule 3, and one down-fault per node
            return False
    return True
