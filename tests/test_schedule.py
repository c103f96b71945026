"""The fault schedule (sim/schedule.py): deterministic data that the simulator and the
real-testnet chaos runner share. Checks determinism, the exact JSON round trip, and the
rules draw_schedule promises (every requested type present, the concurrency and heal
bounds, a majority up, the byzantine bounds), first on fixed examples, then with
hypothesis over random (seed, nodes, faults, engine). Bad arguments raise ValueError
with a message that names the problem."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.schedule import (
    FAULT_TYPES,
    PARTITION_SHAPES,
    ROLES,
    TIMED,
    FaultEvent,
    Schedule,
    draw_schedule,
    get_down_max,
)

POS_FAULTS = tuple(f for f in FAULT_TYPES if f != "withhold")
POW_FAULTS = tuple(f for f in FAULT_TYPES if f != "equivocate")


def active_at(schedule: Schedule, t: float) -> list[FaultEvent]:
    return [e for e in schedule.events if e.at_s <= t < e.at_s + e.duration_s]


def check_rules(s: Schedule, faults, max_concurrent: int = 2) -> None:
    """Every rule of draw_schedule, on one schedule."""
    # 1. Every requested type appears, and nothing else does.
    assert set(s.counts()) == set(faults)
    assert all(count >= 1 for count in s.counts().values())
    # Sorted events, known kinds, nodes in range.
    assert list(s.events) == sorted(s.events, key=lambda e: (e.at_s, e.kind, e.nodes))
    for e in s.events:
        assert e.kind in TIMED
        assert e.nodes and all(0 <= n < s.nodes for n in e.nodes) and list(e.nodes) == sorted(set(e.nodes))
        # 5. Healed by heal_at_s, which leaves the quiet period.
        assert 0 < e.at_s and e.duration_s > 0 and e.at_s + e.duration_s <= s.heal_at_s < s.duration_s
        if e.kind == "partition":
            p = e.params
            assert p["shape"] in PARTITION_SHAPES and p["one_way"] == (p["shape"] == "asymmetric")
            involved = sorted(p["sides"][0] + p["sides"][1] + p.get("bridge", []))
            assert involved == list(e.nodes) and p["sides"][0] and p["sides"][1]
            if p["shape"] == "majority":
                assert len(p["sides"][0]) > s.nodes / 2
            if p["shape"] == "isolate":
                assert len(p["sides"][0]) == 1
            assert ("bridge" in p) == (p["shape"] == "bridge")
        elif e.kind == "delay":
            assert e.params["delay_ms"] > 0 and 0 <= e.params["loss"] < 1
        elif e.kind == "skew":
            assert e.params["skew_ms"] != 0
        else:
            assert e.params == {}
            # 4. A byzantine node is never a kill or pause victim.
            assert not set(e.nodes) & set(s.byzantine)
    # 2 and 3, at every instant where the set of active faults can change.
    down_max = get_down_max(s.nodes, s.consensus)
    for t in sorted({e.at_s for e in s.events}):
        active = active_at(s, t)
        assert len(active) <= max_concurrent, active
        kinds = [e.kind for e in active]
        assert len(kinds) == len(set(kinds)), "two faults of one kind overlap"
        down = {n for e in active if e.kind in ("kill", "pause") for n in e.nodes}
        up = s.nodes - len(down)
        assert len(down) <= down_max and up > (s.nodes / 2 if s.consensus == "pow" else 2 * s.nodes / 3), (t, down)
    # 4. Byzantine bounds.
    roles = list(s.byzantine.values())
    assert set(roles) <= set(ROLES) and set(roles) == set(faults) & set(ROLES)
    assert 1 <= roles.count("equivocate") < s.nodes / 3 or "equivocate" not in faults
    assert roles.count("withhold") <= 1 and roles.count("spam") <= 1
    assert "equivocate" not in roles or s.consensus == "pos"
    assert "withhold" not in roles or s.consensus == "pow"


def test_same_arguments_give_equal_schedules_and_another_seed_does_not():
    a = draw_schedule(3, 5, 120, POS_FAULTS, "pos")
    b = draw_schedule(3, 5, 120.0, list(reversed(POS_FAULTS)), "pos")
    assert a == b
    assert draw_schedule(4, 5, 120, POS_FAULTS, "pos") != a


def test_json_round_trip_is_exact_through_text():
    s = draw_schedule(11, 7, 300, POW_FAULTS, "pow")
    text = json.dumps(s.to_json())
    back = Schedule.from_json(json.loads(text))
    assert back == s
    assert json.dumps(back.to_json()) == text
    assert isinstance(next(iter(back.byzantine)), int)


def test_a_default_run_keeps_every_rule_and_the_simulators_quiet_period():
    s = draw_schedule(1, 4, 60, ("kill", "partition", "delay", "skew", "equivocate", "spam"), "pos")
    check_rules(s, ("kill", "partition", "delay", "skew", "equivocate", "spam"))
    assert s.heal_at_s == 60 - 21  # 35% of 60 s is 21 s, more than the 20 s minimum
    assert draw_schedule(1, 4, 40, ("kill",), "pow").heal_at_s == 20  # the 20 s minimum
    assert draw_schedule(1, 4, 40, ("kill",), "pow", quiet_s=5).heal_at_s == 35


def test_counts_count_events_and_one_per_byzantine_node():
    s = draw_schedule(2, 10, 200, ("kill", "equivocate"), "pos")
    assert s.counts() == {"kill": len(s.events), "equivocate": len(s.byzantine)}
    assert 1 <= len(s.byzantine) <= 3


def test_long_runs_draw_extra_faults_and_still_keep_the_bounds():
    s = draw_schedule(5, 9, 600, TIMED, "pow", max_concurrent=3, mean_gap_s=5)
    assert len(s.events) > 2 * len(TIMED)
    check_rules(s, TIMED, max_concurrent=3)
    assert max(len(active_at(s, e.at_s)) for e in s.events) >= 2


def test_every_partition_shape_is_drawn_and_small_networks_get_only_those_that_fit():
    shapes = {e.params["shape"] for seed in range(40)
              for e in draw_schedule(seed, 5, 300, ("partition",), "pow").events}
    assert shapes == set(PARTITION_SHAPES)
    two = {e.params["shape"] for seed in range(40) for e in draw_schedule(seed, 2, 300, ("partition",), "pow").events}
    assert two <= {"symmetric", "asymmetric"}


@pytest.mark.parametrize("args, message", [
    ((1, 4, 60, ("meteor",), "pow"), "unknown fault type(s) meteor"),
    ((1, 4, 60, ("equivocate",), "pow"), "equivocate needs consensus pos"),
    ((1, 4, 60, ("withhold",), "pos"), "withhold needs consensus pow"),
    ((1, 1, 60, ("delay",), "pow"), "at least 2 nodes"),
    ((1, 3, 60, ("equivocate",), "pos"), "equivocate needs at least 4 nodes"),
    ((1, 2, 60, ("kill",), "pow"), "kill needs at least 3 nodes"),
    ((1, 3, 60, ("pause",), "pos"), "pause needs at least 4 nodes"),
    ((1, 4, 60, ("delay",), "raft"), "consensus must be 'pow' or 'pos'"),
    ((1, 4, 0, ("delay",), "pow"), "duration must be positive"),
    ((1, 4, 10, ("delay",), "pow"), "quiet period 20"),
    ((1, 4, 60, "delay", "pow"), "sequence of fault type names"),
])
def test_bad_arguments_raise_a_clear_value_error(args, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        draw_schedule(*args)


def test_bad_keyword_arguments_raise_too():
    with pytest.raises(ValueError, match="too short"):
        draw_schedule(1, 4, 26, TIMED, "pow", quiet_s=21)
    with pytest.raises(ValueError, match="max_concurrent"):
        draw_schedule(1, 4, 60, ("delay",), "pow", max_concurrent=0)
    with pytest.raises(ValueError, match="unknown fault type"):
        Schedule.from_json({**draw_schedule(1, 4, 60, ("delay",), "pow").to_json(),
                            "byzantine": {"1": "meteor"}})


@st.composite
def schedule_args(draw):
    consensus = draw(st.sampled_from(["pow", "pos"]))
    allowed = POS_FAULTS if consensus == "pos" else POW_FAULTS
    faults = draw(st.lists(st.sampled_from(allowed), min_size=1, max_size=6, unique=True))
    # The smallest network the requested faults fit, up to a dozen nodes.
    minimum = 2
    if "equivocate" in faults or ({"kill", "pause"} & set(faults) and consensus == "pos"):
        minimum = 4
    elif {"kill", "pause"} & set(faults):
        minimum = 3
    minimum = max(minimum, len(set(faults) & set(ROLES)) + 1)
    nodes = draw(st.integers(minimum, 12))
    duration = draw(st.sampled_from([30.0, 45.0, 60.0, 120.0, 333.3, 900.0]))
    max_concurrent = draw(st.integers(1, 4))
    return dict(seed=draw(st.integers(0, 2**32)), nodes=nodes, duration_s=duration, faults=faults,
                consensus=consensus, max_concurrent=max_concurrent, mean_gap_s=draw(st.sampled_from([2.0, 10.0, 30.0])))


@settings(max_examples=200, deadline=None)
@given(schedule_args())
def test_every_rule_holds_over_random_arguments(args):
    s = draw_schedule(**args)
    check_rules(s, args["faults"], max_concurrent=args["max_concurrent"])
    assert Schedule.from_json(json.loads(json.dumps(s.to_json()))) == s
    assert draw_schedule(**args) == s
