"""`chainlab chaos`: a fault schedule run under load, judged by the simulator's checks.

- The simulator target, in-process: pow and pos runs pass every verdict and write
  report.json and timeline.png; a requested fault the simulator cannot inject, or a
  check forced to fail, exits 1 and prints the replay command.
- The nemesis's fault sets (pure): every partition shape, delay and skew become the
  admin_setFaults parameters each node needs, composed when faults overlap.
- A real local run (marked `chaos`, about 70 s, in the default suite): `chainlab chaos
  --target local` on 4 PoW node processes with kill, pause, partition, delay and skew
  exits 0 within 3 minutes, injected every fault type, passed every verdict, timed the
  convergence, and left no node process behind.
"""

import json
import subprocess
from pathlib import Path

import pytest

from node.cli import main
from realnet import CHAINLAB, REPO, pid_runs_home
from sim.invariants import Verdict
from sim.schedule import FaultEvent
from testnet.chaos import ChaosConfig, first_agreement_s, injected_verdict
from testnet.nemesis import compose_faults
from testnet.observe import Sample

IDS = [f"{i:032x}" for i in range(1, 6)]  # node ids as net_info reports them
LOCAL_RUN_TIMEOUT_S = 180.0


def read_report(out: Path) -> dict:
    report = json.loads((out / "report.json").read_text())
    assert (out / "timeline.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return report


# --- the simulator target ---------------------------------------------------------------------


@pytest.mark.parametrize("consensus, faults", [("pow", "kill,partition,delay"),
                                               ("pos", "kill,partition,delay,equivocate")])
def test_sim_target_passes_and_writes_the_report(tmp_path: Path, capsys, consensus: str, faults: str) -> None:
    code = main(["chaos", "--target", "sim", "--consensus", consensus, "--seed", "5", "--duration", "45",
                 "--faults", faults, "--out", str(tmp_path)])
    printed = capsys.readouterr()
    assert code == 0, printed.out + printed.err
    report = read_report(tmp_path)
    assert report["ok"] and report["target"] == "sim" and report["consensus"] == consensus
    assert report["verdicts"] and all(v["ok"] for v in report["verdicts"])
    assert report["faults_requested"] == faults.split(",")
    assert all(report["faults_injected"][k] >= 1 for k in report["faults_requested"])
    assert report["transactions"]["sent"] > 0 and report["transactions"]["lost"] == 0
    replay = (f"chainlab chaos --target sim --consensus {consensus} --nodes 4 --duration 45 --seed 5 "
              f"--faults {faults}")
    assert report["replay"] == replay and f"replay: {replay}" in printed.out
    assert "[PASS] every requested fault injected" in printed.out


@pytest.mark.parametrize("consensus, roles", [("pow", "withhold,spam"), ("pos", "equivocate")])
def test_sim_target_runs_the_drawn_schedule_itself_and_replays_to_the_same_digest(tmp_path: Path, capsys,
                                                                                    consensus: str, roles: str) -> None:
    from sim.schedule import Schedule

    argv = ["chaos", "--target", "sim", "--consensus", consensus, "--nodes", "5", "--seed", "3", "--duration", "60",
            "--faults", f"kill,pause,partition,delay,skew,{roles}"]
    assert main([*argv, "--out", str(tmp_path / "a")]) == 0
    assert main([*argv, "--out", str(tmp_path / "b")]) == 0
    capsys.readouterr()
    first, second = read_report(tmp_path / "a"), read_report(tmp_path / "b")
    assert first["sim"]["digest"] == second["sim"]["digest"]  # the replay command repeats the run exactly
    schedule = Schedule.from_json(first["schedule"])
    timed = {k: n for k, n in schedule.counts().items() if k in ("kill", "pause", "partition", "delay", "skew")}
    # Every event of the schedule took effect in the simulator, at its time: the fault log
    # starts each one within a millisecond of its at_s.
    assert {k: first["faults_injected"][k] for k in timed} == timed
    starts = sorted(float(line.split("s ", 1)[0]) for line in first["sim"]["fault_log"]
                    if line.split(" ", 2)[1] in ("crash", "pause", "partition", "delay", "skew"))
    assert starts[0] == pytest.approx(min(e.at_s for e in schedule.events), abs=0.1)
    bands = {f["kind"] for f in first["timeline"]["faults"]}
    assert set(timed) <= bands


def test_sim_target_fails_a_fault_type_it_cannot_inject(tmp_path: Path, capsys, monkeypatch) -> None:
    # The simulator has every fault type now; one taken away stands for a target without it.
    import testnet.chaos

    monkeypatch.setattr(testnet.chaos, "SIM_TIMED", testnet.chaos.SIM_TIMED - {"pause"})
    code = main(["chaos", "--target", "sim", "--seed", "2", "--duration", "40", "--faults", "kill,pause",
                 "--out", str(tmp_path)])
    printed = capsys.readouterr()
    assert code == 1
    report = read_report(tmp_path)
    assert report["faults_injected"]["pause"] == 0 and not report["ok"]
    assert "pause=0 (never injected)" in printed.out
    assert "Replay with: chainlab chaos --target sim --consensus pow --nodes 4 --duration 40 --seed 2 " \
           "--faults kill,pause" in printed.err


def test_a_violation_exits_1_and_prints_the_replay_command(tmp_path: Path, capsys, monkeypatch) -> None:
    import sim.scenario

    monkeypatch.setattr(sim.scenario, "check_supply",
                        lambda views: Verdict("supply conserved (genesis + rewards - burned)", False, "forced"))
    code = main(["chaos", "--target", "sim", "--seed", "3", "--duration", "30", "--faults", "partition",
                 "--out", str(tmp_path)])
    printed = capsys.readouterr()
    assert code == 1
    assert "[FAIL] supply conserved (genesis + rewards - burned): forced" in printed.out
    replay = "chainlab chaos --target sim --consensus pow --nodes 4 --duration 30 --seed 3 --faults partition"
    assert f"replay: {replay}" in printed.out and replay in printed.err
    assert not read_report(tmp_path)["ok"]


def test_usage_errors_exit_2(tmp_path: Path, capsys) -> None:
    # equivocate needs validators; the schedule refuses it for pow.
    assert main(["chaos", "--target", "sim", "--faults", "equivocate", "--out", str(tmp_path)]) == 2
    assert "equivocate needs consensus pos" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["chaos", "--faults", "meteor"])
    assert exit_info.value.code == 2


def test_replay_command_round_trips() -> None:
    config = ChaosConfig(target="local", consensus="pos", nodes=5, seed=9, duration_s=75,
                         faults=("skew", "kill", "equivocate"), tx_rate=3)
    assert config.replay_command() == ("chainlab chaos --target local --consensus pos --nodes 5 --duration 75 "
                                       "--seed 9 --faults kill,skew,equivocate --tx-rate 3")


def test_injected_verdict_names_what_never_happened() -> None:
    assert injected_verdict(("kill", "pause"), {"kill": 2, "pause": 1}).ok
    verdict = injected_verdict(("kill", "pause"), {"kill": 2}, {"pause": "no such fault"})
    assert not verdict.ok and verdict.detail == "never injected: pause: no such fault"


def test_convergence_is_the_first_round_with_one_head_after_the_heal() -> None:
    samples = {
        "node0": [Sample(1.0, 5, "a"), Sample(1.5, 6, "b"), Sample(2.0, 6, "b"), Sample(2.5, 7, "c")],
        "node1": [Sample(1.0, 5, "a"), Sample(1.5, None), Sample(2.0, 5, "x"), Sample(2.5, 7, "c")],
    }
    assert first_agreement_s(samples, ["node0", "node1"], 1.2, 10) == 2.5
    assert first_agreement_s(samples, ["node0", "node1"], 0.0, 10) == 1.0
    assert first_agreement_s(samples, ["node0", "node1"], 1.2, 2.2) is None


# --- the nemesis's fault sets -------------------------------------------------------------------


def partition(sides, shape="symmetric", one_way=False, bridge=None) -> FaultEvent:
    params = {"shape": shape, "sides": sides, "one_way": one_way}
    if bridge is not None:
        params["bridge"] = bridge
    return FaultEvent(1.0, "partition", 5.0, tuple(range(5)), params)


def cut_pairs(events, nodes=4) -> set[tuple[int, int, str]]:
    """(node, peer, direction) of every dropped direction over all nodes' fault sets."""
    out = set()
    for n in range(nodes):
        faults = compose_faults(events, n, IDS[:nodes], seed=1)
        for node_id, link in (faults or {}).get("links", {}).items():
            for way in ("drop_in", "drop_out"):
                if link[way]:
                    out.add((n, IDS.index(node_id), way))
    return out


def test_symmetric_partition_cuts_both_ways_on_both_ends() -> None:
    pairs = cut_pairs([partition([[0, 1], [2, 3]])])
    expected = {(a, b, way) for a, b in [(0, 2), (0, 3), (1, 2), (1, 3), (2, 0), (3, 0), (2, 1), (3, 1)]
                for way in ("drop_in", "drop_out")}
    assert pairs == expected
    assert compose_faults([partition([[0, 1], [2, 3]])], 0, IDS[:4], seed=7)["seed"] == 7_000


def test_one_way_partition_drops_from_the_first_side_only() -> None:
    pairs = cut_pairs([partition([[0], [1, 2, 3]], shape="asymmetric", one_way=True)])
    assert pairs == {(0, 1, "drop_out"), (0, 2, "drop_out"), (0, 3, "drop_out"),
                     (1, 0, "drop_in"), (2, 0, "drop_in"), (3, 0, "drop_in")}


def test_bridge_partition_leaves_the_bridge_connected() -> None:
    pairs = cut_pairs([partition([[0, 3], [1]], shape="bridge", bridge=[2])])
    assert all(2 not in (a, b) for a, b, _ in pairs)
    assert {(a, b) for a, b, _ in pairs} == {(0, 1), (3, 1), (1, 0), (1, 3)}


def test_delay_skew_and_overlaps_compose() -> None:
    delay = FaultEvent(1.0, "delay", 5.0, (1,), {"delay_ms": 300, "loss": 0.1})
    skew = FaultEvent(2.0, "skew", 5.0, (1, 2), {"skew_ms": -700})
    cut = partition([[0], [1, 2, 3]])
    victim = compose_faults([delay, skew, cut], 1, IDS[:4], seed=1)
    assert victim["clock_skew_ms"] == -700
    assert victim["links"][IDS[2]] == {"drop_in": False, "drop_out": False, "delay_ms": 300, "loss": 0.1}
    assert victim["links"][IDS[0]] == {"drop_in": True, "drop_out": True, "delay_ms": 300, "loss": 0.1}
    other = compose_faults([delay], 3, IDS[:4], seed=1)  # the far end of a victim's link delays too
    assert other["links"] == {IDS[1]: {"drop_in": False, "drop_out": False, "delay_ms": 300, "loss": 0.1}}
    assert other["clock_skew_ms"] == 0
    assert compose_faults([delay, skew], 0, IDS[:4], seed=1)["links"].keys() == {IDS[1]}
    assert compose_faults([], 0, IDS[:4], seed=1) is None


# --- a real local run ----------------------------------------------------------------------------


@pytest.mark.chaos
def test_local_pow_chaos_run_injects_every_fault_and_passes(tmp_path: Path, say) -> None:
    out = tmp_path / "run"
    argv = [*CHAINLAB, "chaos", "--target", "local", "--consensus", "pow", "--nodes", "5", "--duration", "60",
            "--seed", "4", "--faults", "kill,pause,partition,delay,skew,withhold,spam", "--out", str(out)]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=LOCAL_RUN_TIMEOUT_S, cwd=REPO,
                              stdin=subprocess.DEVNULL)
        output = done.stdout + done.stderr
        assert done.returncode == 0, output[-6000:]
        report = read_report(out)
        say(f"chaos --target local: injected {report['faults_injected']}; verdicts "
            f"{sum(v['ok'] for v in report['verdicts'])}/{len(report['verdicts'])} pass; converged "
            f"{report['convergence_s']} s after the heal; transactions {report['transactions']}")
        assert report["ok"] and report["target"] == "local"
        for kind in ("kill", "pause", "partition", "delay", "skew", "withhold", "spam"):
            assert report["faults_injected"].get(kind, 0) >= 1, (kind, report["faults_injected"])
        assert all(v["ok"] for v in report["verdicts"]), [v for v in report["verdicts"] if not v["ok"]]
        names = {v["name"] for v in report["verdicts"]}
        assert any(n.startswith("byzantine peers penalised") for n in names), names  # the spammer was banned
        assert any(n.startswith("faulted peers can rejoin") for n in names), names
        assert report["convergence_s"] is not None, output[-3000:]
        assert report["transactions"]["sent"] > 0 and report["transactions"]["included"] > 0
        assert set(report["timeline"]["heights"]) == {f"node{i}" for i in range(5)}
        assert "replay: chainlab chaos --target local --consensus pow --nodes 5 --duration 60 --seed 4" in done.stdout
    finally:
        # Every node process is gone, whatever happened: the runner stops them, this makes sure.
        nodes_file = out / "testnet" / "nodes.json"
        left = []
        if nodes_file.exists():
            for node in json.loads(nodes_file.read_text())["nodes"]:
                for pid in {node.get("pid")} - {None}:
                    if pid_runs_home(pid, Path(node["home"])):
                        subprocess.run(["kill", "-9", str(pid)], check=False)
                        left.append(pid)
        assert not left, f"node processes left running: {left}"


def test_penalties_verdicts_need_every_honest_node_to_ban_the_spammer_and_no_honest_node() -> None:
    from types import SimpleNamespace

    from sim.schedule import Schedule
    from testnet.chaos import penalties_verdicts

    handles = [SimpleNamespace(name=f"node{i}") for i in range(4)]
    honest = handles[:3]
    ids = [f"id{i}" for i in range(4)]
    schedule = Schedule(seed=1, nodes=4, duration_s=60, heal_at_s=39, consensus="pow", events=(), byzantine={3: "spam"})
    good = SimpleNamespace(banned={"node0": {"id3"}, "node1": {"id3", "10.0.0.9:1"}, "node2": {"id3"}},
                           peers={"node0": 2, "node1": 2, "node2": 1})
    assert all(v.ok for v in penalties_verdicts(schedule, handles, honest, ids, good))
    missed = SimpleNamespace(banned={"node0": {"id3"}, "node1": set(), "node2": {"id3"}}, peers=good.peers)
    penalised, rejoin = penalties_verdicts(schedule, handles, honest, ids, missed)
    assert not penalised.ok and "node1 never banned node3" in penalised.detail and rejoin.ok
    wrong = SimpleNamespace(banned={**good.banned, "node2": {"id3", "id0"}}, peers={**good.peers, "node1": 0})
    penalised, rejoin = penalties_verdicts(schedule, handles, honest, ids, wrong)
    assert penalised.ok and not rejoin.ok
    assert "node2 banned node0" in rejoin.detail and "node1 has no peer at the end" in rejoin.detail
