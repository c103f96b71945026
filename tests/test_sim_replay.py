"""Replay across processes: `chainlab sim` prints the same digest for the same seed even
when Python's string hashing differs (PYTHONHASHSEED), so no set order leaks into a run.
A failing invariant makes the command exit 1 and print the replay command."""

import json
import os
import subprocess
import sys

import pytest


def run_sim(*args: str, hash_seed: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONHASHSEED=hash_seed)
    return subprocess.run([sys.executable, "-m", "node.cli", "sim", *args], capture_output=True, text=True, env=env,
                          timeout=300)


def test_digest_is_identical_across_processes_with_different_hash_seeds():
    args = ("--nodes", "5", "--seed", "42", "--duration", "40", "--faults", "partition,loss,duplicate,crash,delay", "--json")
    digests = set()
    for hash_seed in ("0", "1", "987"):
        proc = run_sim(*args, hash_seed=hash_seed)
        assert proc.returncode == 0, proc.stderr
        report = json.loads(proc.stdout)
        assert report["ok"] is True
        assert report["replay"].startswith("chainlab sim --consensus pow --nodes 5 --seed 42")
        digests.add(report["digest"])
    assert len(digests) == 1


def test_text_summary_lists_every_invariant_with_a_verdict():
    proc = run_sim("--nodes", "3", "--seed", "5", "--duration", "20", hash_seed="0")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for name in ("common prefix below the last 6 blocks", "identical blocks and state roots at equal heights",
                 "supply conserved", "no transaction applied twice", "no included transaction lost"):
        assert f"[PASS] {name}" in out
    assert "replay: chainlab sim" in out


def test_bad_arguments_are_refused_with_a_message():
    proc = run_sim("--faults", "meteor", hash_seed="0")
    assert proc.returncode == 2
    assert "unknown fault(s) meteor" in proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(100, 160))
def test_swarm_of_longer_runs_with_eight_nodes(seed):
    from sim.scenario import FAULT_TYPES, SimConfig, run_simulation

    config = SimConfig(nodes=8, seed=seed, duration_s=180, faults=FAULT_TYPES, tx_rate=4.0)
    result = run_simulation(config)
    failed = [f"{v.name}: {v.detail}" for v in result.verdicts if not v.ok]
    assert not failed, f"{failed}\nreplay: {config.replay_command()}"
    assert result.tx_included + result.tx_superseded == result.tx_acknowledged
