"""Simulator speed: simulated seconds per wall second for 16 PoW nodes, one block per second.

Figure: `sim.scenario.run_simulation(SimConfig(nodes=16, duration_s=120, tx_rate=2,
faults=()))`, the same run `chainlab sim` makes (with its invariant checks after every
event), timed by the run's own wall clock; best of a few runs of the same seed, so each
repetition does exactly the same work. Limit: none can be measured here, so the limit
is the goal itself, 50 simulated seconds per wall second (the ratio is speed / 50);
unlike the other benchmarks this one therefore depends on the machine. Context: events
per wall second, the speed with no transaction load, and the mean time of one
`NodeCore.step(Tick)` measured inside a run.

    python benchmarks/bench_sim.py [--quick] [--json]
"""

import time

import benchlib  # noqa: F401  (puts the repository on sys.path)
from benchlib import Figure, cli

from node.core import NodeCore, Tick
from sim.scenario import SimConfig, run_simulation

BENCHMARK = "sim"
GOAL_SPEED = 50.0  # simulated seconds per wall second
NODES = 16
TX_RATE = 2.0  # transfers per simulated second, `chainlab sim`'s default


def config(duration_s: float, tx_rate: float = TX_RATE) -> SimConfig:
    return SimConfig(consensus="pow", nodes=NODES, seed=1, duration_s=duration_s, tx_rate=tx_rate,
                     faults=(), block_interval_ms=1_000)


def timed_ticks(duration_s: float) -> tuple[float, int, float]:
    """One run with NodeCore.step timed on every Tick: (mean seconds, ticks, share of wall)."""
    original = NodeCore.step
    spent = [0.0, 0]

    def step(self, event):
        if type(event) is not Tick:
            return original(self, event)
        start = time.perf_counter()
        try:
            return original(self, event)
        finally:
            spent[0] += time.perf_counter() - start
            spent[1] += 1

    NodeCore.step = step
    try:
        result = run_simulation(config(duration_s))
    finally:
        NodeCore.step = original
    total, ticks = spent
    return total / max(1, ticks), ticks, total / result.wall_s


def main(quick: bool = False) -> list[Figure]:
    duration_s = 20.0 if quick else 120.0
    repeat = 1 if quick else 3

    # Warm up (imports, caches) with an instrumented run that also times the ticks.
    tick_s, ticks, tick_share = timed_ticks(10.0 if quick else 30.0)

    best, best_cpu = None, 0.0
    for _ in range(repeat):
        cpu_start = time.process_time()
        result = run_simulation(config(duration_s))
        cpu = time.process_time() - cpu_start
        if best is None or result.wall_s < best.wall_s:
            best, best_cpu = result, cpu
    assert best is not None
    speed = best.simulated_s / best.wall_s
    idle = run_simulation(config(duration_s, tx_rate=0.0))
    idle_speed = idle.simulated_s / idle.wall_s

    heights = sorted({n["height"] for n in best.nodes})
    what = (f"{NODES} nodes, {duration_s:g} s simulated, {TX_RATE:g} tx/s, best of {repeat}; "
            f"height {heights[-1]}, {best.tx_included}/{best.tx_sent} tx included; "
            f"{best.wall_s:.2f} s wall, {best_cpu:.2f} s CPU (wall well above CPU means a busy machine)")
    if not best.ok:
        failed = ", ".join(v.name for v in best.verdicts if not v.ok)
        what += f"; invariants failed: {failed} (replay: {best.config.replay_command()})"
    return [
        Figure(BENCHMARK, "simulator speed", speed, "simulated s per wall s",
               GOAL_SPEED, "the goal itself, fixed, not measured: this figure depends on the machine",
               speed / GOAL_SPEED, 1.0, goal_text=f"{GOAL_SPEED:g} simulated s per wall s", note=what),
        Figure(BENCHMARK, "simulator events (context)", best.events / best.wall_s, "events per wall s",
               note=f"{best.events} events in {best.wall_s:.2f} s; "
                    f"{best.wall_s / best.events * 1e6:.0f} us per event on average"),
        Figure(BENCHMARK, "simulator speed without transactions (context)", idle_speed, "simulated s per wall s",
               GOAL_SPEED, "the goal", idle_speed / GOAL_SPEED,
               note=f"same run with tx_rate 0: {idle.events} events; transactions cost "
                    f"{(best.wall_s - idle.wall_s) / max(1, best.tx_sent) * 1e3:.1f} ms of wall time each"),
        Figure(BENCHMARK, "NodeCore.step(Tick) (context)", tick_s * 1e6, "us per tick",
               note=f"mean over {ticks} ticks inside a {10 if quick else 30} s run; ticks were "
                    f"{tick_share:.0%} of its wall time"),
    ]


if __name__ == "__main__":
    cli(BENCHMARK, main, __doc__.split("\n")[0])
