"""The simulator swarm: many short runs, each with its fault parameters drawn from its seed.

Like TigerBeetle's VOPR, a seed decides everything about a run: which of the
simulator's faults are on, how many nodes there are (unless given), and, for proof of
stake, which validators double-vote (always fewer than 1/3 of them, so safety must hold
and every one of them must be slashed). A failing run prints the exact `chainlab sim`
command that replays it, byzantine switches and node count included.
"""

import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from sim.scenario import FAULT_TYPES, SimConfig, SimResult, run_simulation

SWARM_NODES = (4, 5)  # drawn node count when none is given: small, so a run takes a fraction of a second
SWARM_DURATION_S = 45.0  # 20 s of faults after a 5 s warm-up, then the simulator's 20 s quiet period
FAULT_CHANCE = 0.6  # each allowed fault is on with this chance (at least one always is)
BYZANTINE_CHANCE = 0.5  # half the runs of each engine have byzantine nodes, half are honest
# The switches (consensus.pos.producer.VALIDATOR_SWITCHES) a seed may draw. Evidence now
# outlives a reorg that drops the block carrying it (consensus.pos.engine.VotePool), and a
# double proposal's twin is built only where the slot is the validator's own.
POW_SWITCHES = ("withhold", "spam")  # node/byzantine.py: selfish mining, invalid blocks and transactions
SWARM_SWITCHES = ("double-vote", "double-propose", "surround-vote")


@dataclass
class SwarmRun:
    config: SimConfig
    result: SimResult | None  # None when the run crashed
    wall_s: float
    crash: str | None = None  # the exception that stopped the run: a failure like any other

    @property
    def ok(self) -> bool:
        return self.result is not None and self.result.ok

    def failed(self) -> list[tuple[str, str]]:
        if self.result is None:
            return [("the run completes", f"crashed: {self.crash}")]
        return [(v.name, v.detail) for v in self.result.verdicts if not v.ok]

    def to_json(self) -> dict[str, Any]:
        r = self.result
        return {
            "seed": self.config.seed, "consensus": self.config.consensus, "nodes": self.config.nodes,
            "faults": list(self.config.faults),
            "byzantine": {str(n): list(s) for n, s in sorted(self.config.byzantine.items())},
            "ok": self.ok, "events": r.events if r else None, "wall_seconds": round(self.wall_s, 3),
            "faults_injected": r.faults_injected if r else {}, "digest": r.digest if r else None,
            "failed": [{"name": name, "detail": detail} for name, detail in self.failed()],
            "replay": self.config.replay_command(),
        }


@dataclass
class SwarmReport:
    runs: list[SwarmRun] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def failures(self) -> list[SwarmRun]:
        return [r for r in self.runs if not r.ok]

    @property
    def ok(self) -> bool:
        return not self.failures

    def faults_injected(self) -> dict[str, int]:
        """Faults injected per type, summed over the runs; a byzantine switch counts once per node."""
        totals: dict[str, int] = {}
        for run in self.runs:
            for name, count in (run.result.faults_injected if run.result else {}).items():
                totals[name] = totals.get(name, 0) + count
            for switches in run.config.byzantine.values():
                for switch in switches:
                    totals[switch] = totals.get(switch, 0) + 1
        return dict(sorted(totals.items()))

    def to_json(self) -> dict[str, Any]:
        return {"runs": [r.to_json() for r in self.runs],
                "summary": {"runs": len(self.runs), "failures": len(self.failures),
                            "faults_injected": self.faults_injected(), "wall_seconds": round(self.wall_s, 3),
                            "replay": [r.config.replay_command() for r in self.failures]},
                "ok": self.ok}


def draw_config(seed: int, consensus: str, *, nodes: int | None = None, duration_s: float = SWARM_DURATION_S,
                faults: Sequence[str] = FAULT_TYPES, tx_rate: float | None = None) -> SimConfig:
    """The run a seed stands for. Drawn from (seed, engine) only, so adding an option
    elsewhere never changes which faults an existing seed gets."""
    rng = random.Random(f"chainlab-swarm/{seed}/{consensus}")
    drawn_nodes = rng.randint(*SWARM_NODES)
    n = drawn_nodes if nodes is None else nodes
    pool = sorted(set(faults))
    chosen = tuple(f for f in pool if rng.random() < FAULT_CHANCE)
    if pool and not chosen:
        chosen = (rng.choice(pool),)
    byzantine: dict[int, tuple[str, ...]] = {}
    # Equal stakes: fewer than n/3 byzantine validators hold less than 1/3 of the stake.
    if consensus == "pos" and (n - 1) // 3 >= 1 and rng.random() < BYZANTINE_CHANCE:
        for node in sorted(rng.sample(range(n), rng.randint(1, (n - 1) // 3))):
            byzantine[node] = (rng.choice(SWARM_SWITCHES),)
    # pow: half the runs have one misbehaving node, a selfish miner or a spammer.
    if consensus == "pow" and rng.random() < BYZANTINE_CHANCE:
        byzantine[rng.randrange(n)] = (rng.choice(POW_SWITCHES),)
    config = SimConfig(consensus=consensus, nodes=n, seed=seed, duration_s=duration_s, faults=chosen,
                       byzantine=byzantine)
    if tx_rate is not None:
        config.tx_rate = tx_rate
    return config


def run_swarm(seeds: Sequence[int], engines: Sequence[str], *, nodes: int | None = None,
              duration_s: float = SWARM_DURATION_S, faults: Sequence[str] = FAULT_TYPES, tx_rate: float | None = None,
              on_run: Callable[[SwarmRun], None] | None = None) -> SwarmReport:
    """Run every (seed, engine) pair in order; `on_run` sees each run as it finishes."""
    report = SwarmReport()
    start = time.perf_counter()
    for seed in seeds:
        for engine in engines:
            config = draw_config(seed, engine, nodes=nodes, duration_s=duration_s, faults=faults, tx_rate=tx_rate)
            run_start = time.perf_counter()
            try:
                run = SwarmRun(config, run_simulation(config), 0.0)
            except Exception as exc:  # a crash is what a swarm hunts for: record it, replay it, go on
                run = SwarmRun(config, None, 0.0, crash=f"{type(exc).__name__}: {exc}")
            run.wall_s = time.perf_counter() - run_start
            report.runs.append(run)
            if on_run is not None:
                on_run(run)
    report.wall_s = time.perf_counter() - start
    return report


def format_run(run: SwarmRun) -> str:
    c = run.config
    byzantine = " ".join(f"{n}={','.join(s)}" for n, s in sorted(c.byzantine.items()))
    events = f"{run.result.events} events" if run.result else "crashed"
    line = (f"seed {c.seed:>4} {c.consensus}  nodes {c.nodes}  faults {','.join(c.faults) or 'none'}"
            f"{'  byzantine ' + byzantine if byzantine else ''}  {'ok' if run.ok else 'FAIL'}  "
            f"{events}  {run.wall_s:.2f} s")
    if not run.ok:
        line += "".join(f"\n    [FAIL] {name}: {detail}" for name, detail in run.failed())
        line += f"\n    replay: {c.replay_command()}"
    return line


def format_summary(report: SwarmReport) -> str:
    simulated = sum(r.result.simulated_s for r in report.runs if r.result)
    lines = [f"runs {len(report.runs)}, failures {len(report.failures)}, wall {report.wall_s:.1f} s "
             f"({simulated:.0f} simulated s)",
             "faults injected: " + (", ".join(f"{k}={v}" for k, v in report.faults_injected().items()) or "none")]
    if report.failures:
        lines.append("replay the failures with:")
        lines += [f"  {r.config.replay_command()}" for r in report.failures]
    return "\n".join(lines)
