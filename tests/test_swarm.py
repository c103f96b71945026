"""The simulator swarm (sim/swarm.py, `chainlab sim --swarm`): fifty short seeds per
engine, each with faults, node count and byzantine validators drawn from the seed, must
all keep every invariant and actually inject what they drew. A failing run must print a
`chainlab sim` command that replays it to the same digest: the test forces a failure by
adding a failing verdict, then runs the printed command through the real CLI."""

import json
import shlex

import pytest

from node.cli import main
from sim import swarm
from sim.invariants import Verdict
from sim.scenario import FAULT_TYPES, run_simulation
from sim.swarm import POW_SWITCHES, SWARM_SWITCHES, draw_config, format_run, format_summary, run_swarm

SEEDS = range(1, 51)


def test_fifty_seeds_per_engine_keep_every_invariant_and_inject_every_fault_drawn(say):
    lines: list[str] = []
    report = run_swarm(SEEDS, ("pow", "pos"), on_run=lambda run: lines.append(format_run(run)))
    assert len(report.runs) == 2 * len(SEEDS) == len(lines)
    failed = [line for line in lines if "FAIL" in line]
    assert not failed, "\n".join(failed)
    totals = report.faults_injected()
    drawn = {f for run in report.runs for f in run.config.faults}
    drawn |= {s for run in report.runs for switches in run.config.byzantine.values() for s in switches}
    assert drawn == set(FAULT_TYPES) | set(SWARM_SWITCHES) | set(POW_SWITCHES), "fifty seeds draw every fault"
    assert all(totals.get(name, 0) > 0 for name in drawn), totals
    # The draw varies what it should: node counts, and honest and byzantine pos runs.
    assert {run.config.nodes for run in report.runs} == {4, 5}
    pos = [run for run in report.runs if run.config.consensus == "pos"]
    assert 0 < sum(1 for run in pos if run.config.byzantine) < len(pos)
    summary = format_summary(report)
    say(f"swarm, seeds {SEEDS.start}-{SEEDS.stop - 1} per engine: " + summary.replace("\n", "; "))
    assert summary.startswith(f"runs {2 * len(SEEDS)}, failures 0")
    assert "replay" not in summary


def test_the_draw_is_a_function_of_seed_and_engine_and_byzantine_stays_below_a_third():
    assert draw_config(7, "pos") == draw_config(7, "pos")
    assert [draw_config(s, "pow") for s in range(20)] != [draw_config(s, "pos") for s in range(20)]
    for seed in range(200):
        config = draw_config(seed, "pos", nodes=7)
        assert config.nodes == 7 and len(config.byzantine) < 7 / 3
        assert set(config.byzantine.values()) <= {(s,) for s in SWARM_SWITCHES}
        pow_config = draw_config(seed, "pow")
        # pow: at most one misbehaving node, a selfish miner or a spammer.
        assert len(pow_config.byzantine) <= 1 and set(pow_config.byzantine.values()) <= {(s,) for s in POW_SWITCHES}


def force_failure(monkeypatch, seed: int, engine: str) -> None:
    def failing(config):
        result = run_simulation(config)
        if (config.seed, config.consensus) == (seed, engine):
            result.verdicts.append(Verdict("forced by the test", False, "a verdict made to fail"))
        return result

    monkeypatch.setattr(swarm, "run_simulation", failing)


def test_a_failing_run_prints_a_replay_command_that_reproduces_its_digest(monkeypatch, capsys):
    # A pos seed whose draw has a byzantine validator, so the replay must carry --byzantine.
    seed = next(s for s in range(1, 100) if draw_config(s, "pos").byzantine)
    force_failure(monkeypatch, seed, "pos")
    code = main(["sim", "--swarm", "--seed", str(seed), "--seeds", "2", "--consensus", "both"])
    out = capsys.readouterr().out
    assert code == 1
    assert "runs 4, failures 1" in out
    replays = [line.split("replay: ", 1)[1] for line in out.splitlines() if "replay: " in line]
    assert len(replays) == 1 and "--byzantine" in replays[0] and "--nodes" in replays[0], out
    expected = run_simulation(draw_config(seed, "pos")).digest

    argv = shlex.split(replays[0])
    assert argv[:2] == ["chainlab", "sim"]
    main(argv[1:] + ["--json"])  # the real CLI, where no verdict is forced: it passes
    report = json.loads(capsys.readouterr().out)
    assert report["digest"] == expected
    assert report["replay"] == replays[0]


def test_json_output_lists_every_run_and_the_summary(monkeypatch, capsys):
    force_failure(monkeypatch, 3, "pow")
    code = main(["sim", "--swarm", "--seeds", "3", "--duration", "30", "--faults", "crash,partition", "--json"])
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert code == 1 and report["ok"] is False
    assert [r["seed"] for r in report["runs"]] == [1, 2, 3]
    assert all(set(r["faults"]) <= {"crash", "partition"} and r["faults"] for r in report["runs"])
    assert report["summary"]["failures"] == 1
    assert report["summary"]["replay"] == [report["runs"][2]["replay"]]
    assert "seed    1 pow" in captured.err  # progress, one line per run, on stderr


@pytest.mark.parametrize("argv, message", [
    (["sim", "--consensus", "both"], "need(s) --swarm"),
    (["sim", "--seeds", "3"], "need(s) --swarm"),
    (["sim", "--swarm", "--byzantine", "1=double-vote"], "draws byzantine switches"),
    (["sim", "--byzantine", "1=double-vote"], "needs --consensus pos"),
    (["sim", "--consensus", "pos", "--byzantine", "1=withhold"], "needs --consensus pow"),
    (["sim", "--consensus", "pos", "--nodes", "4", "--byzantine", "4=double-vote"], "nodes are 0..3"),
])
def test_flags_that_do_not_go_together_are_refused(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_a_bad_byzantine_flag_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit):
        main(["sim", "--consensus", "pos", "--byzantine", "1=meteor"])
    assert "unknown byzantine switch(es) meteor" in capsys.readouterr().err


def test_a_run_that_crashes_is_a_failure_with_its_replay_and_the_swarm_goes_on(monkeypatch, capsys):
    def crashing(config):
        if config.seed == 1:
            raise AssertionError("broken internal invariant")
        return run_simulation(config)

    monkeypatch.setattr(swarm, "run_simulation", crashing)
    assert main(["sim", "--swarm", "--seeds", "2", "--consensus", "pos"]) == 1
    out = capsys.readouterr().out
    assert "[FAIL] the run completes: crashed: AssertionError: broken internal invariant" in out
    assert f"replay: {draw_config(1, 'pos').replay_command()}" in out
    assert "seed    2 pos" in out and "runs 2, failures 1" in out
