"""`chainlab chaos`: a chaos experiment with a verdict, on real nodes or in the simulator.

One run, whatever the target:
  1. draw the fault schedule from the arguments (sim.schedule.draw_schedule): timed
     faults (kill, pause, partition, delay, skew) before `heal_at_s`, byzantine roles
     (equivocate, withhold, spam) for the whole run, a quiet period after the heal;
  2. run it under a transaction load;
  3. heal everything, let the network converge, check liveness (a new transfer sent to
     each honest node is included everywhere; under PoS finality moves again);
  4. judge it with the simulator's own invariant checks (sim.invariants) and write the
     report (testnet.report: JSON and a PNG timeline) to --out.

Target local: a fresh testnet of real node processes on 127.0.0.1 (node/testnet.py),
faults injected by testnet.nemesis.LocalNemesis at wall-clock offsets from the start,
nodes watched over JSON-RPC (testnet.observe). Target docker: the same on a compose
project (testnet.docker). Target sim: the deterministic simulator
(sim.scenario.run_simulation) runs the very same schedule (SimConfig.schedule), so the
replay command repeats it to the same digest. Each report says which fault types took
effect, so a requested type that never did fails the run instead of passing silently.

Exit codes: 0 every verdict passed; 1 a verdict failed, including "every requested
fault injected"; 2 bad usage (arguments the schedule refuses, a node build without a
byzantine switch); 130 interrupted. The replay command is printed in every case.
"""

import asyncio
import contextlib
import json
import random
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, TextIO

from sim.invariants import Verdict
from sim.schedule import FAULT_TYPES, ROLES, TIMED, Schedule, draw_schedule

LOCAL_FAULTS_DEFAULT = ("kill", "pause", "partition", "delay", "skew")
# The timed faults the simulator runs from a schedule (sim.scenario.ScheduledFaults).
SIM_TIMED = frozenset(TIMED)
SIM_FAULTS_DEFAULT = LOCAL_FAULTS_DEFAULT
# Byzantine roles as node switches (node.settings.BYZANTINE_BEHAVIOURS).
ROLE_SWITCHES = {"equivocate": ("double-propose", "double-vote"), "withhold": ("withhold",), "spam": ("spam",)}
# Every role runs in the simulator too: its scenario expects validators with equivocating
# switches to end slashed, and withholders and spammers to be penalised.
SIM_ROLES = ("equivocate", "withhold", "spam")

TX_RATE_DEFAULT = 2.0  # transfers a second, like the simulator's load
LOAD_ACCOUNTS = 8  # prefunded accounts the load sends from; one more per node for the liveness probe
PRESET = "minimal"  # 1 s blocks (PoW) or slots (PoS), 4-slot epochs: a minute shows finality several times
POW_HASHRATE_TOTAL = 100_000  # the minimal preset's genesis bits give one block a second at this rate
CONNECT_WAIT_S = 30.0  # every node has a peer before the first fault
CALL_TIMEOUT_S = 2.0  # one load or probe call; a paused node must not hold the load up
SENDS_IN_FLIGHT_MAX = 16
LOAD_STOP_FRACTION = 0.5  # the load stops halfway through the quiet period, so its last transfers settle
LIVENESS_WAIT_S = 60.0  # after the quiet period: probe transfers included on every honest node
FINALITY_WAIT_S = 60.0  # PoS: finalized height above the one at the heal (a few 4 s epochs)
FINAL_VIEWS_WAIT_S = 45.0  # all honest heads on one block, from a consistent snapshot of each
TIEBREAK_TIMEOUT_S = 30.0  # PoW: one block mined on demand, uncapped
DEEP_SCAN_EVERY_S = 1.0
SCHEDULE_SLACK_S = 30.0  # an event task still busy this long after the heal (a slow restart) is cancelled


class ChaosUsageError(Exception):
    """Arguments that cannot make a run; exit code 2."""


@dataclass(frozen=True)
class ChaosConfig:
    target: str = "local"
    consensus: str = "pow"
    nodes: int = 4
    seed: int = 1
    duration_s: float = 60.0
    faults: tuple[str, ...] | None = None  # None: the target's default
    tx_rate: float = TX_RATE_DEFAULT
    out: Path | None = None

    @property
    def fault_list(self) -> tuple[str, ...]:
        if self.faults is not None:
            return tuple(k for k in FAULT_TYPES if k in self.faults)
        return SIM_FAULTS_DEFAULT if self.target == "sim" else LOCAL_FAULTS_DEFAULT

    def replay_command(self) -> str:
        faults = f" --faults {','.join(self.fault_list)}" if self.fault_list else " --faults ''"
        rate = f" --tx-rate {self.tx_rate:g}" if self.tx_rate != TX_RATE_DEFAULT else ""
        return (f"chainlab chaos --target {self.target} --consensus {self.consensus} --nodes {self.nodes} "
                f"--duration {self.duration_s:g} --seed {self.seed}{faults}{rate}")


def make_schedule(config: ChaosConfig) -> Schedule:
    """The run's schedule; ChaosUsageError when the arguments cannot make one."""
    if config.target not in ("local", "docker", "sim"):
        raise ChaosUsageError(f"--target must be local, docker or sim, not {config.target!r}")
    if config.tx_rate < 0:
        raise ChaosUsageError("--tx-rate must be at least 0")
    try:
        return draw_schedule(config.seed, config.nodes, config.duration_s, config.fault_list, config.consensus)
    except ValueError as exc:
        raise ChaosUsageError(str(exc)) from None


def injected_verdict(requested: tuple[str, ...], injected: dict[str, int], why: dict[str, str] | None = None) -> Verdict:
    never = [k for k in requested if injected.get(k, 0) == 0]
    if never:
        reasons = "; ".join(f"{k}: {(why or {}).get(k, 'no event took effect')}" for k in never)
        return Verdict("every requested fault injected", False, f"never injected: {reasons}")
    counts = ", ".join(f"{k}={injected[k]}" for k in requested)
    return Verdict("every requested fault injected", True, counts or "no faults requested")


def _verdicts_json(verdicts: list[Verdict]) -> list[dict]:
    return [{"name": v.name, "ok": bool(v.ok), "detail": v.detail} for v in verdicts]


def _role_timeline(schedule: Schedule) -> list[dict]:
    return [{"kind": role, "start_s": 0.0, "end_s": schedule.duration_s, "nodes": [node]}
            for node, role in sorted(schedule.byzantine.items())]


# --- the simulator target --------------------------------------------------------------------


def run_sim_target(config: ChaosConfig, schedule: Schedule, progress: Callable[[str], None]) -> dict:
    from sim.scenario import SimConfig, run_simulation

    requested = config.fault_list
    why: dict[str, str] = {}
    for kind in requested:
        if kind in TIMED and kind not in SIM_TIMED:
            why[kind] = "the simulator has no such fault"
        elif kind in ROLES and kind not in SIM_ROLES:
            why[kind] = "the simulator's scenario takes only equivocating validators as byzantine nodes"
    byzantine = {node: ROLE_SWITCHES[role] for node, role in schedule.byzantine.items() if role in SIM_ROLES}
    # The schedule's own timed events, at their times: every target runs the same faults.
    events = tuple(e for e in schedule.events if e.kind in SIM_TIMED)
    sim_config = SimConfig(consensus=config.consensus, nodes=config.nodes, seed=config.seed,
                           duration_s=config.duration_s, tx_rate=config.tx_rate, byzantine=byzantine,
                           schedule=events)
    progress(f"simulating {config.nodes} {config.consensus} nodes for {config.duration_s:g} s (seed {config.seed}): "
             f"{len(events)} scheduled faults" + (f", byzantine {byzantine}" if byzantine else ""))
    result = run_simulation(sim_config)
    injected: dict[str, int] = {}
    for kind in requested:
        if kind in SIM_TIMED:
            injected[kind] = result.faults_injected.get(kind, 0)  # the schedule's names
        elif kind in SIM_ROLES:
            injected[kind] = sum(1 for role in schedule.byzantine.values() if role == kind)
        else:
            injected[kind] = 0
    # The simulator's own "every requested fault injected" knows only its names; ours replaces it.
    verdicts = [v for v in result.verdicts if v.name != "every requested fault injected"]
    verdicts.append(injected_verdict(requested, injected, why))
    included = result.tx_included
    lost = max(0, result.tx_acknowledged - included - result.tx_superseded)
    return {
        "target": "sim", "consensus": config.consensus, "nodes": config.nodes, "seed": config.seed,
        "duration_s": config.duration_s, "faults_requested": list(requested), "faults_injected": injected,
        "verdicts": _verdicts_json(verdicts),
        "convergence_s": result.convergence_s,
        "transactions": {"sent": result.tx_sent, "included": included, "lost": lost,
                         "acknowledged": result.tx_acknowledged, "superseded": result.tx_superseded},
        "timeline": {
            "heights": result.height_samples,
            # The schedule's events are what ran, at their times (the fault log has each start).
            "faults": [{"kind": e.kind, "start_s": e.at_s, "end_s": round(e.at_s + e.duration_s, 3),
                        "nodes": list(e.nodes)} for e in events] + [
                e for e in _role_timeline(schedule) if e["kind"] in SIM_ROLES],
        },
        "replay": config.replay_command(),
        "ok": all(v.ok for v in verdicts),
        "heal_at_s": result.heal_at_s,
        # The chaos replay command repeats this run to the same digest (the schedule comes
        # from the seed); a bare `chainlab sim` would draw other fault times.
        "sim": {"digest": result.digest, "events": result.events, "fault_log": result.fault_log,
                "wall_s": round(result.wall_s, 3)},
        "schedule": schedule.to_json(),
        "notes": [f"{k}: {w}" for k, w in why.items()],
    }


# --- the local target: the load --------------------------------------------------------------


@dataclass
class Load:
    """Signed transfers from prefunded accounts at a Poisson rate, each account sent through
    one home node with the nonce that node expects (as the simulator's Load does): a client
    that never double-spends by itself, so any lost transaction is the network's doing."""

    clients: Any
    homes: list  # NodeHandles the accounts are spread over (honest nodes)
    keys: list
    chain_id: str
    rng: random.Random
    rate: float
    sent: int = 0
    failed: int = 0
    acknowledged: dict[bytes, tuple[bytes, int]] = field(default_factory=dict)  # txid -> (sender, nonce)

    def __post_init__(self) -> None:
        self._locks = [asyncio.Lock() for _ in self.keys]
        self._gate = asyncio.Semaphore(SENDS_IN_FLIGHT_MAX)

    async def send_one(self, i: int) -> None:
        from node.cli_tools import build_transfer
        from testnet.observe import ObserveError

        key = self.keys[i]
        home = self.homes[i % len(self.homes)]
        async with self._locks[i], self._gate:
            try:
                account = await self.clients.call(home, "chain_getAccount", key.address.hex(), timeout_s=CALL_TIMEOUT_S)
                recipient = self.keys[(i + 1 + self.rng.randrange(len(self.keys) - 1)) % len(self.keys)].address
                tx = build_transfer(key, self.chain_id, recipient, self.rng.randrange(1, 1_000),
                                    self.rng.randrange(1, 50), int(account["nonce"]) + int(account["pending"]))
            except (ObserveError, KeyError, TypeError, ValueError):
                self.failed += 1  # the home node is down or paused: nothing was sent
                return
            self.sent += 1
            try:
                await self.clients.call(home, "tx_send", tx.encode().hex(), timeout_s=CALL_TIMEOUT_S)
            except ObserveError:
                return  # refused, or no answer in time: not acknowledged
            self.acknowledged[tx.txid] = (tx.sender_address, tx.nonce)

    async def run(self, t0: float, start_s: float, end_s: float) -> None:
        if self.rate <= 0 or len(self.keys) < 2:
            return
        loop = asyncio.get_running_loop()
        tasks: set[asyncio.Task] = set()
        t = start_s
        try:
            while True:
                t += self.rng.expovariate(self.rate)
                if t >= end_s:
                    break
                await asyncio.sleep(max(0.0, t0 + t - loop.time()))
                task = asyncio.ensure_future(self.send_one(self.rng.randrange(len(self.keys))))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if tasks:
                await asyncio.wait(list(tasks), timeout=4 * CALL_TIMEOUT_S)
        finally:
            for task in tasks:
                task.cancel()


# --- the local target: the run ---------------------------------------------------------------


@dataclass
class LocalRun:
    """A chaos run on a fresh local testnet in `out_dir / testnet`."""

    config: ChaosConfig
    schedule: Schedule
    out_dir: Path
    progress: Callable[[str], None]

    def __post_init__(self) -> None:
        self.home = self.out_dir / "testnet"
        self.log_path = self.out_dir / "chaos.log"
        self.network_seed = f"chaos-{self.config.seed}"

    def log(self, line: str) -> None:
        with open(self.log_path, "a") as f:
            f.write(line.rstrip("\n") + "\n")

    def progress_and_log(self, line: str) -> None:
        self.log(line)
        self.progress(line)

    # -- the testnet --

    def create(self) -> None:
        from node import testnet
        from node.homes import create_network
        from node.settings import BYZANTINE_BEHAVIOURS, SettingsError, load_settings, settings_toml

        missing = sorted({s for role in self.schedule.byzantine.values() for s in ROLE_SWITCHES[role]}
                         - set(BYZANTINE_BEHAVIOURS))
        if missing:
            raise ChaosUsageError(f"this build's nodes do not know the byzantine switch(es) {', '.join(missing)}")
        if self.home.exists():
            if (self.home / testnet.NODES_FILE).exists():
                running = [e.name for e in testnet.load_testnet(self.home).nodes if testnet.is_running(e.pid, e.home)]
                if running:
                    raise ChaosUsageError(f"{self.home} holds a running testnet ({', '.join(running)}); "
                                          f"stop it with `chainlab testnet down --home {self.home}`")
            if not (self.home / "genesis.json").exists() and any(self.home.iterdir()):
                raise ChaosUsageError(f"{self.home} exists and is not a chaos testnet; choose another --out")
            shutil.rmtree(self.home)
        p2p_base, rpc_base = testnet.pick_port_bases(self.config.nodes, 2)
        hashrate = -(-POW_HASHRATE_TOTAL // self.config.nodes)
        try:
            create_network(self.home, consensus=self.config.consensus, nodes=self.config.nodes,
                           accounts=LOAD_ACCOUNTS + self.config.nodes, seed=self.network_seed, preset=PRESET,
                           p2p_port_base=p2p_base, rpc_port_base=rpc_base, mining=True, hashrate=hashrate)
            # Byzantine roles go into the chosen nodes' config.toml before the first start,
            # so a node the nemesis restarts keeps its role.
            for node, role in sorted(self.schedule.byzantine.items()):
                node_home = self.home / f"node{node}"
                settings = replace(load_settings(node_home, environ={}), byzantine=ROLE_SWITCHES[role])
                (node_home / "config.toml").write_text(settings_toml(settings))
        except SettingsError as exc:
            raise ChaosUsageError(str(exc)) from None

    def up(self) -> None:
        import io

        from node import testnet

        out, err = io.StringIO(), io.StringIO()
        try:
            code = testnet.up(self.home, detach=True, out=out, err=err)
        finally:
            self.log(out.getvalue() + err.getvalue())
        if code != 0:
            raise RuntimeError(f"the testnet did not come up (exit {code}); see {self.log_path} and "
                               f"{self.home}/node<i>/node.log:\n{err.getvalue()[-2000:]}")

    def down(self) -> None:
        """Stop every node, whatever state the run left them in; never leave one behind."""
        import io

        from node import testnet

        if not (self.home / testnet.NODES_FILE).exists():
            return
        entries = []
        with contextlib.suppress(testnet.TestnetError):
            entries = list(testnet.load_testnet(self.home).nodes)
            for e in entries:  # a stopped process cannot act on SIGTERM
                if testnet.is_running(e.pid, e.home):
                    _signal_group(e.pid, signal.SIGCONT)
        out = io.StringIO()
        try:
            testnet.down(self.home, out=out, err=out)
        except testnet.TestnetError as exc:
            out.write(f"testnet down: {exc}\n")
        finally:
            with contextlib.suppress(testnet.TestnetError):
                entries = list(testnet.load_testnet(self.home).nodes) + entries
            for e in entries:
                if testnet.is_running(e.pid, e.home):
                    _signal_group(e.pid, signal.SIGKILL)
                    out.write(f"{e.name} (pid {e.pid}) survived `testnet down`: SIGKILL\n")
            self.log(out.getvalue())

    def run(self) -> dict:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.create()
        self.progress_and_log(f"testnet of {self.config.nodes} {self.config.consensus} nodes in {self.home} "
                              f"(preset {PRESET}); starting")
        try:
            self.up()
            return asyncio.run(self.experiment())
        finally:
            self.down()

    # -- what the experiment needs of the testnet (the docker target answers these its own way) --

    def handles(self) -> list:
        from node import testnet
        from testnet.observe import NodeHandle

        return [NodeHandle(e.name, e.rpc_url, Path(e.home)) for e in testnet.load_testnet(self.home).nodes]

    def chain_id(self) -> str:
        from node.settings import read_genesis

        return read_genesis(self.home / "genesis.json").chain_id

    def make_nemesis(self, handles: list, clients: Any, clock: Callable[[], float], t0: float) -> Any:
        from testnet.nemesis import LocalNemesis

        return LocalNemesis(self.home, handles, clients, self.config.seed, clock=clock, t0=t0, log=self.progress_and_log)

    # -- the experiment --

    async def experiment(self) -> dict:
        from consensus.presets import account_key
        from sim.scenario import DEEP_K
        from testnet.observe import BanWatcher, BlockCache, Clients, DeepTracker, HeightSampler

        loop = asyncio.get_running_loop()
        config, schedule = self.config, self.schedule
        handles = self.handles()
        honest = [h for i, h in enumerate(handles) if i not in schedule.byzantine]
        chain_id = self.chain_id()
        clients = Clients()
        cache = BlockCache()
        background: list[asyncio.Task] = []
        stop = asyncio.Event()
        # SIGTERM ends the run like Ctrl-C does: this task is cancelled, so the finally
        # clauses heal the network and LocalRun.run takes it down.
        main_task = asyncio.current_task()
        assert main_task is not None
        loop.add_signal_handler(signal.SIGTERM, main_task.cancel)
        try:
            # Honest nodes only: a spammer may already be banned by its peers.
            await wait_connected(clients, honest, CONNECT_WAIT_S)
            t0 = loop.time()
            nemesis = self.make_nemesis(handles, clients, loop.time, t0)
            await nemesis.setup()
            sampler = HeightSampler(clients, handles, clock=loop.time, t0=t0)
            deep = DeepTracker(clients, honest, cache, k=DEEP_K, finalized=config.consensus == "pos")
            keys = [account_key(self.network_seed, i) for i in range(LOAD_ACCOUNTS)]
            load = Load(clients, honest, keys, chain_id, random.Random(f"{config.seed}/load"), config.tx_rate)
            quiet_s = schedule.duration_s - schedule.heal_at_s
            load_end_s = schedule.heal_at_s + LOAD_STOP_FRACTION * quiet_s
            bans = BanWatcher(clients, honest)
            background.append(asyncio.ensure_future(sampler.run(stop)))
            background.append(asyncio.ensure_future(bans.run(stop)))
            background.append(asyncio.ensure_future(_deep_loop(deep, sampler, stop, self.log)))
            load_task = asyncio.ensure_future(load.run(t0, 1.0, load_end_s))
            background.append(load_task)
            self.progress_and_log(f"faults until {schedule.heal_at_s:g} s, quiet until {schedule.duration_s:g} s: "
                                  f"{len(schedule.events)} timed events"
                                  + (f", byzantine {schedule.byzantine}" if schedule.byzantine else ""))
            try:
                await run_schedule(nemesis, schedule, t0)
            finally:
                # Always, also on an error or Ctrl-C: nothing stays broken for the checks or `down`.
                healed_at = nemesis.now_s()
                heal_problems = await nemesis.heal_all()
            finals_at_heal = {h.name: (sampler.last(h.name).final_height if sampler.last(h.name) else 0) or 0
                              for h in honest}
            await asyncio.sleep(max(0.0, t0 + schedule.duration_s - loop.time()))
            await load_task
            self.progress_and_log(f"{nemesis.now_s():.1f} s: quiet period over; liveness and final checks")
            liveness, finality = await asyncio.gather(
                probe_liveness(clients, honest, handles, self.network_seed, chain_id),
                finality_resumes(clients, honest, finals_at_heal) if config.consensus == "pos" else _none(),
            )
            # The heal is the moment the last fault was lifted (no later than the schedule's heal_at_s).
            heal_s = max((f["end_s"] for f in nemesis.timeline if f["end_s"] is not None), default=healed_at)
            converged_s = first_agreement_s(sampler.samples, [h.name for h in honest], heal_s, schedule.duration_s)
            convergence_s = round(converged_s - heal_s, 2) if converged_s is not None else None
            if config.consensus == "pow":
                await settle_pow(clients, handles, honest, self.progress_and_log)
            views, heads_verdict, missing = await final_views(clients, handles, honest, cache)
            stop.set()
            await asyncio.gather(*background, return_exceptions=True)
            verdicts = judge(config, schedule, views, [h.name for h in honest], heads_verdict, missing, deep.deep,
                             sampler.final_heights())
            await bans.poll_once()  # the peers each honest node has now, after the heal
            verdicts += penalties_verdicts(schedule, handles, honest, nemesis.node_ids, bans)
            verdicts.append(liveness)
            if finality is not None:
                verdicts.append(finality)
            verdicts.append(Verdict("every fault healed (nodes resumed, restarted, faults cleared)", not heal_problems,
                                    "; ".join(heal_problems) or f"healed at {healed_at:.1f} s"))
            injected = dict(nemesis.injected)
            for role in schedule.byzantine.values():
                injected[role] = injected.get(role, 0) + 1  # started with the role's switches, for the whole run
            verdicts.append(injected_verdict(config.fault_list, injected))
            transactions = count_transactions(load, views, [h.name for h in honest])
            return {
                "target": config.target, "consensus": config.consensus, "nodes": config.nodes, "seed": config.seed,
                "duration_s": config.duration_s, "faults_requested": list(config.fault_list),
                "faults_injected": {k: injected[k] for k in FAULT_TYPES if k in injected},
                "verdicts": _verdicts_json(verdicts),
                "convergence_s": convergence_s,
                "transactions": transactions,
                "timeline": {"heights": sampler.heights_timeline(),
                             "faults": nemesis.timeline + _role_timeline(schedule)},
                "replay": config.replay_command(),
                "ok": all(v.ok for v in verdicts),
                "heal_at_s": heal_s,
                "schedule": schedule.to_json(),
                "notes": nemesis.notes,
                "testnet": str(self.home),
            }
        finally:
            loop.remove_signal_handler(signal.SIGTERM)
            stop.set()
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            await clients.close()


def _signal_group(pid: int | None, sig: int) -> None:
    import os

    if pid is None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)


async def _none() -> None:
    return None


async def wait_connected(clients, handles, timeout_s: float) -> None:
    """Every node has at least one peer (faults on a network still forming prove little)."""
    from testnet.observe import ObserveError

    deadline = time.monotonic() + timeout_s
    while True:
        peers = []
        for h in handles:
            try:
                peers.append(int((await clients.call(h, "net_info", timeout_s=CALL_TIMEOUT_S))["peers"]))
            except (ObserveError, KeyError, TypeError, ValueError):
                peers.append(0)
        if all(p > 0 for p in peers):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the nodes did not connect within {timeout_s:g} s (peers: {peers})")
        await asyncio.sleep(0.25)


async def run_schedule(nemesis, schedule: Schedule, t0: float) -> None:
    """Each event starts and ends at its offset from t0 (events run side by side)."""
    loop = asyncio.get_running_loop()

    async def one(event) -> None:
        await asyncio.sleep(max(0.0, t0 + event.at_s - loop.time()))
        await nemesis.start(event)
        await asyncio.sleep(max(0.0, t0 + event.at_s + event.duration_s - loop.time()))
        await nemesis.end(event)  # also when the start took no effect: it forgets the event

    tasks = [asyncio.ensure_future(one(e)) for e in schedule.events]
    try:
        done, pending = await asyncio.wait(tasks, timeout=max(0.0, t0 + schedule.heal_at_s - loop.time()) + SCHEDULE_SLACK_S)
        for task in done:
            if task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.sleep(max(0.0, t0 + schedule.heal_at_s - loop.time()))


async def _deep_loop(deep, sampler, stop: asyncio.Event, log: Callable[[str], None]) -> None:
    errors = 0
    while not stop.is_set():
        samples = {h.name: s for h in deep.nodes if (s := sampler.last(h.name)) is not None}
        try:
            await deep.scan(samples)
        except Exception as exc:  # noqa: BLE001 - an observer must never end the run; said once, counted after
            errors += 1
            if errors == 1 or errors % 100 == 0:
                log(f"deep-transaction scan failed ({errors} so far): {type(exc).__name__}: {exc}")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(DEEP_SCAN_EVERY_S):
                await stop.wait()


def first_agreement_s(samples: dict[str, list], names: list[str], since_s: float, until_s: float) -> float | None:
    """The time of the first sample round in [since_s, until_s] in which every named node
    answered with one and the same head (the sampler's rounds are about 0.5 s apart), or None."""
    for round_ in zip(*(samples[n] for n in names)):
        t = round_[0].t_s
        if t < since_s:
            continue
        if t > until_s:
            break
        heads = {s.head for s in round_}
        if len(heads) == 1 and None not in heads:
            return t
    return None


async def probe_liveness(clients, honest, handles, network_seed: str, chain_id: str) -> Verdict:
    """After the quiet period a transfer is sent to each honest node (from an account the
    load never uses); each must be included on every honest node."""
    from consensus.presets import account_key
    from node.cli_tools import build_transfer
    from testnet.observe import ObserveError

    name = "liveness: a transfer sent to each honest node after the heal is included on every honest node"
    began = time.monotonic()
    txids: dict[str, str] = {}
    problems = []
    for h in honest:
        key = account_key(network_seed, LOAD_ACCOUNTS + handles.index(h))
        try:
            account = await clients.call(h, "chain_getAccount", key.address.hex(), timeout_s=CALL_TIMEOUT_S)
            tx = build_transfer(key, chain_id, account_key(network_seed, 0).address, 1, 10,
                                int(account["nonce"]) + int(account["pending"]))
            txids[h.name] = await clients.call(h, "tx_send", tx.encode().hex(), timeout_s=CALL_TIMEOUT_S)
        except (ObserveError, KeyError, TypeError, ValueError) as exc:
            problems.append(f"{h.name} did not take a transfer: {exc}")
    if problems:
        return Verdict(name, False, "; ".join(problems))
    waiting = {(h.name, txid) for h in honest for txid in txids.values()}
    by_name = {h.name: h for h in honest}
    while waiting and time.monotonic() - began < LIVENESS_WAIT_S:
        for node_name, txid in sorted(waiting):
            with contextlib.suppress(ObserveError, TypeError):
                found = await clients.call(by_name[node_name], "chain_getTransaction", txid, timeout_s=CALL_TIMEOUT_S)
                if found.get("status") in ("included", "finalized"):
                    waiting.discard((node_name, txid))
        if waiting:
            await asyncio.sleep(0.5)
    if waiting:
        node_name, txid = sorted(waiting)[0]
        return Verdict(name, False, f"{len(waiting)} (node, transfer) pairs not included within {LIVENESS_WAIT_S:g} s, "
                                    f"e.g. {txid[:16]} on {node_name}")
    return Verdict(name, True, f"{len(txids)} transfers included on {len(honest)} nodes in "
                               f"{time.monotonic() - began:.1f} s")


async def finality_resumes(clients, honest, finals_at_heal: dict[str, int]) -> Verdict:
    """PoS: every honest node's finalized height passes the highest one at the heal."""
    from testnet.observe import get_heads

    name = "finality resumes after the heal (finalized height grows on every honest node)"
    floor = max(finals_at_heal.values(), default=0)
    began = time.monotonic()
    last: dict[str, Any] = {}
    while time.monotonic() - began < FINALITY_WAIT_S:
        heads = await get_heads(clients, honest)
        last = {n: (h.get("final_height") if isinstance(h, dict) else None) for n, h in heads.items()}
        if all(isinstance(f, int) and f > floor for f in last.values()):
            return Verdict(name, True, f"final height above {floor} (at the heal) on every honest node: "
                                       + ", ".join(f"{n}={f}" for n, f in sorted(last.items())))
        await asyncio.sleep(0.5)
    return Verdict(name, False, f"not every honest node finalized above {floor} within {FINALITY_WAIT_S:g} s: "
                                + ", ".join(f"{n}={f}" for n, f in sorted(last.items())))


async def settle_pow(clients, handles, honest, log: Callable[[str], None]) -> None:
    """Stop every miner, then mine one block on demand on the honest node with the most
    work, as the simulator's drain does: blocks found in the last instant, or two tips of
    equal work (first seen wins a tie), would otherwise keep "all heads agree" a race."""
    from testnet.observe import ObserveError, get_heads

    for h in handles:
        with contextlib.suppress(ObserveError):
            await clients.call(h, "miner_stop", timeout_s=CALL_TIMEOUT_S, privileged=True)
    await asyncio.sleep(1.0)  # a withholding miner publishes its branch when it stops; let it spread
    heads = await get_heads(clients, honest, timeout_s=CALL_TIMEOUT_S)
    work = {n: int(h.get("total_work", 0)) for n, h in heads.items() if isinstance(h, dict)}
    if not work:
        return
    breaker = max(honest, key=lambda h: (work.get(h.name, -1), -honest.index(h)))
    try:
        mined = await clients.call(breaker, "miner_generate", 1, timeout_s=TIEBREAK_TIMEOUT_S, privileged=True)
        log(f"miners stopped; {breaker.name} mined the tie-breaking block {str(mined)[:40]}")
    except ObserveError as exc:
        log(f"tie-breaking block on {breaker.name} failed: {exc}")


async def final_views(clients, handles, honest, cache) -> tuple[dict, Verdict, list[str]]:
    """Consistent snapshots of every node, taken again until the honest heads agree (or
    the deadline): (name -> ChainView, the heads-agree verdict, nodes without a view)."""
    from sim.invariants import check_heads_agree
    from testnet.observe import fetch_views

    began = time.monotonic()
    while True:
        results = await fetch_views(clients, handles, cache)
        views = {n: v for n, v in results.items() if not isinstance(v, str)}
        missing = [f"{n}: {v}" for n, v in results.items() if isinstance(v, str)]
        honest_views = [views[h.name] for h in honest if h.name in views]
        verdict = check_heads_agree(honest_views) if honest_views else Verdict(
            "all heads agree after the quiet period", False, "no honest node answered")
        if missing:
            verdict = Verdict(verdict.name, False, f"no snapshot of {'; '.join(missing)}")
        if verdict.ok or time.monotonic() - began > FINAL_VIEWS_WAIT_S:
            if verdict.ok:
                verdict = Verdict(verdict.name, True, f"{verdict.detail} (within {time.monotonic() - began:.1f} s "
                                                      f"of the final checks)")
            return views, verdict, missing
        await asyncio.sleep(0.5)


def judge(config: ChaosConfig, schedule: Schedule, views: dict, honest: list[str], heads_verdict: Verdict,
          missing: list[str], deep: dict[bytes, str], final_heights: dict[str, list[int]]) -> list[Verdict]:
    """The simulator's checks (sim.invariants) on the real nodes' views. Agreement is judged
    among honest nodes (a withholding miner's private branch is its own business);
    supply and double application on every node."""
    from sim.invariants import (
        check_byzantine_slashed,
        check_common_prefix,
        check_final_never_decreases,
        check_finalized_agree,
        check_identical_at_equal_heights,
        check_no_double_apply,
        check_no_honest_slashed,
        check_no_included_lost,
        check_supply,
    )
    from sim.scenario import PREFIX_K

    every = [views[n] for n in sorted(views, key=_node_index)]
    hv = [views[n] for n in honest if n in views]
    verdicts = [
        check_common_prefix(hv, PREFIX_K),
        check_finalized_agree(hv),
        check_identical_at_equal_heights(hv, PREFIX_K),
        check_supply(every),
        check_no_double_apply(every),
        check_no_included_lost(hv, deep),
        heads_verdict,
        check_final_never_decreases(final_heights),
    ]
    if missing:
        verdicts.append(Verdict("every node observed at the end", False, "; ".join(missing)))
    if config.consensus == "pos":
        verdicts.append(check_no_honest_slashed(every, set(schedule.byzantine)))
        equivocators = {n for n, role in schedule.byzantine.items() if role == "equivocate"}
        if equivocators:
            verdicts.append(check_byzantine_slashed(hv, equivocators))
    return verdicts


def penalties_verdicts(schedule: Schedule, handles: list, honest: list, node_ids: list[str], bans) -> list[Verdict]:
    """Byzantine peers penalised (every honest node banned each spammer at some point of the
    run) and faulted peers able to rejoin (no honest node ever banned another, and each
    has a peer at the end), from the bans and peer counts a BanWatcher saw."""
    spammers = [i for i, role in sorted(schedule.byzantine.items()) if role == "spam"]
    honest_ids = {node_ids[handles.index(h)]: h.name for h in honest}
    verdicts = []
    if spammers:
        missing = [f"{h.name} never banned {handles[i].name}" for i in spammers for h in honest
                   if node_ids[i] not in bans.banned.get(h.name, set())]
        verdicts.append(Verdict("byzantine peers penalised (every honest node banned each spammer)", not missing,
                                "; ".join(missing) or ", ".join(f"{handles[i].name} banned by {len(honest)} honest nodes"
                                                                 for i in spammers)))
    wrongly = sorted(f"{h.name} banned {honest_ids[key]}" for h in honest for key in bans.banned.get(h.name, set())
                     if key in honest_ids)
    alone = sorted(h.name for h in honest if bans.peers.get(h.name, 0) < 1)
    problems = wrongly + [f"{name} has no peer at the end" for name in alone]
    verdicts.append(Verdict("faulted peers can rejoin (no honest node banned another; each has a peer)", not problems,
                            "; ".join(problems) or f"{len(honest)} honest nodes connected, none banned by another: "
                            + ", ".join(f"{n}={c}" for n, c in sorted(bans.peers.items()))))
    return verdicts


def _node_index(name: str) -> int:
    digits = "".join(c for c in name if c.isdigit())
    return int(digits) if digits else -1


def count_transactions(load: Load, views: dict, honest: list[str]) -> dict:
    """sent: submitted; included: acknowledged and in the final chain; superseded: its nonce
    went to another transfer (a home node that was behind); lost: acknowledged, neither."""
    reference = next((views[n] for n in honest if n in views), None)
    included_ids = {t for txids in reference.txids for t in txids} if reference else set()
    used = {key for keys in reference.senders_nonces for key in keys} if reference else set()
    included = sum(1 for txid in load.acknowledged if txid in included_ids)
    superseded = sum(1 for txid, key in load.acknowledged.items() if txid not in included_ids and key in used)
    return {"sent": load.sent, "included": included, "lost": len(load.acknowledged) - included - superseded,
            "acknowledged": len(load.acknowledged), "superseded": superseded, "not_sent": load.failed}


# --- the command -----------------------------------------------------------------------------


def run(config: ChaosConfig, *, json_output: bool = False, out: TextIO | None = None,
        err: TextIO | None = None) -> int:
    """Run the experiment, write the report, print it; the exit code."""
    from testnet.report import render_text, write_report

    out, err = out or sys.stdout, err or sys.stderr

    def progress(line: str) -> None:
        print(f"chaos: {line}", file=err, flush=True)

    try:
        schedule = make_schedule(config)
    except ChaosUsageError as exc:
        print(f"chainlab chaos: {exc}", file=err)
        return 2
    out_dir = Path(config.out) if config.out is not None else Path(tempfile.mkdtemp(prefix="chainlab-chaos-"))
    out_dir = out_dir.resolve()
    started = time.monotonic()
    interrupted = False
    try:
        if config.target == "sim":
            report = run_sim_target(config, schedule, progress)
        elif config.target == "docker":
            from testnet.docker import DockerRun

            report = DockerRun(config, schedule, out_dir, progress).run()
        else:
            report = LocalRun(config, schedule, out_dir, progress).run()
    except ChaosUsageError as exc:
        print(f"chainlab chaos: {exc}", file=err)
        return 2
    except (KeyboardInterrupt, asyncio.CancelledError):  # Ctrl-C, or SIGTERM (see LocalRun.experiment)
        interrupted = True
        report = None
    except Exception as exc:  # noqa: BLE001 - a run that broke is a failed run with its replay command
        print(f"chainlab chaos: the run failed: {type(exc).__name__}: {exc}", file=err)
        report = None
    if report is None:
        print(f"replay: {config.replay_command()}", file=err)
        return 130 if interrupted else 1
    report["wall_s"] = round(time.monotonic() - started, 1)
    report["out"] = str(out_dir)
    json_path, png_path = out_dir / "report.json", out_dir / "timeline.png"
    try:
        write_report(report, json_path, png_path)
    except ImportError as exc:  # no matplotlib: the JSON still tells everything
        write_report(report, json_path, None)
        print(f"chainlab chaos: no PNG timeline ({exc})", file=err)
    if json_output:
        print(json.dumps(report, indent=2), file=out)
    else:
        print(render_text(report), file=out)
    print(f"report: {json_path}  timeline: {png_path}", file=err)
    if not report["ok"]:
        print(f"\nINVARIANT VIOLATED (or a requested fault never injected). Replay with: {report['replay']}", file=err)
        return 1
    return 0
