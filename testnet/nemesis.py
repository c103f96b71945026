"""The nemesis of a local testnet (node/testnet.py): it breaks real node processes on
purpose, following a `sim.schedule.Schedule`, and heals everything afterwards.

  kill       SIGKILL the node's process group (the node and its miner worker), then
             restart it at the event's end with `chainlab testnet start`; it resumes
             from its store.
  pause      SIGSTOP the node's process group (its miner worker stops too: the node
             leads its own session, node/testnet.py), SIGCONT at the end.
  partition  cut links in the nodes' own transports over the admin RPC
  delay      (admin_setFaults): a cut is drop_in and drop_out on both ends, one way
  skew       drops frames leaving one side and entering the other, delay and loss act
             on frames leaving both ends of a victim's links, skew moves the victim's
             clock.

admin_setFaults replaces a node's whole fault set, and faults of different kinds
overlap, so the nemesis keeps the events in force and sends each node the union of
what they ask of it (drops or'ed, the largest delay and loss, skews added) whenever
that union changes. A node that cannot take it now (killed, paused) gets it when it is
back. `heal_all` resumes, restarts and clears everything, and is safe to call at any
time and more than once (the runner calls it in a `finally`).

Counts of injected faults are of effects that happened: a kill that found the node
already gone, or link faults no involved node accepted, do not count.
"""

import asyncio
import contextlib
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from node import testnet
from sim.schedule import FaultEvent
from testnet.observe import Clients, NodeHandle, ObserveError

ADMIN_TIMEOUT_S = 2.0  # an admin call to a live node on loopback answers in milliseconds
KILL_WAIT_S = 5.0
RESTART_TIMEOUT_S = 60.0  # `testnet start` waits up to 30 s for /health, plus the CLI's own start
HEAL_TIMEOUT_S = 60.0  # heal_all: every node back and every fault set cleared within this
RETRY_S = 0.5
NODE_ID_WAIT_S = 30.0
NOTES_MAX = 1_000


def _link() -> dict[str, Any]:
    return {"drop_in": False, "drop_out": False, "delay_ms": 0, "loss": 0.0}


def compose_faults(events: Sequence[FaultEvent], node: int, node_ids: Sequence[str], seed: int) -> dict[str, Any] | None:
    """The admin_setFaults parameters `node` needs for the link and clock faults in force
    (None: no fault at all). Pure, so tests can check each shape's links."""
    links: dict[int, dict[str, Any]] = {}
    skew_ms = 0

    def link(peer: int) -> dict[str, Any]:
        return links.setdefault(peer, _link())

    for event in events:
        p = event.params
        if event.kind == "partition":
            bridge = set(p.get("bridge") or [])
            side_a, side_b = ([n for n in side if n not in bridge] for side in p["sides"])
            one_way = bool(p.get("one_way"))
            for a in side_a:
                for b in side_b:
                    # sides[0] -> sides[1] is always cut; the way back only when not one way.
                    if node == a:
                        link(b)["drop_out"] = True
                        link(b)["drop_in"] |= not one_way
                    elif node == b:
                        link(a)["drop_in"] = True
                        link(a)["drop_out"] |= not one_way
        elif event.kind == "delay":
            # Both ends of a victim's links delay (and lose) what they send on it.
            peers = [q for q in range(len(node_ids)) if q != node] if node in event.nodes else list(event.nodes)
            for peer in peers:
                if peer == node:
                    continue
                entry = link(peer)
                entry["delay_ms"] = max(entry["delay_ms"], int(p.get("delay_ms", 0)))
                entry["loss"] = max(entry["loss"], float(p.get("loss", 0.0)))
        elif event.kind == "skew" and node in event.nodes:
            skew_ms += int(p.get("skew_ms", 0))
    links = {peer: entry for peer, entry in links.items() if entry != _link()}
    if not links and skew_ms == 0:
        return None
    return {"links": {node_ids[peer]: links[peer] for peer in sorted(links)}, "clock_skew_ms": skew_ms,
            "seed": (seed * 1_000 + node) % 2**64}


@dataclass
class NodeState:
    paused: bool = False
    killed: bool = False  # killed by us and not restarted yet
    restarting: asyncio.Task | None = None
    applied: Any = None  # the fault set the node last accepted (None: none)


@dataclass
class LocalNemesis:
    home: Path  # the testnet home
    nodes: Sequence[NodeHandle]  # index i is node i of the schedule
    clients: Clients
    seed: int
    clock: Callable[[], float] = time.monotonic
    t0: float = 0.0
    log: Callable[[str], None] = lambda line: None
    injected: dict[str, int] = field(default_factory=dict)
    timeline: list[dict] = field(default_factory=list)  # {"kind", "start_s", "end_s", "nodes"}
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # what heal_all could not do

    def __post_init__(self) -> None:
        self.node_ids: list[str] = []
        self.state = [NodeState() for _ in self.nodes]
        self.active: dict[int, FaultEvent] = {}  # id(event) -> event, link and clock faults in force
        self._open: dict[int, dict] = {}  # id(event) -> its timeline entry
        self._push_lock = asyncio.Lock()

    def now_s(self) -> float:
        return round(self.clock() - self.t0, 3)

    def note(self, text: str) -> None:
        line = f"{self.now_s():7.2f}s {text}"
        if len(self.notes) < NOTES_MAX:
            self.notes.append(line)
        self.log(line)

    # --- setup ---------------------------------------------------------------------

    async def setup(self) -> None:
        """Learn every node's id (net_info), which the admin RPC names links by."""
        deadline = self.clock() + NODE_ID_WAIT_S
        ids: list[str | None] = [None] * len(self.nodes)
        while True:
            for i, node in enumerate(self.nodes):
                if ids[i] is None:
                    with contextlib.suppress(ObserveError, KeyError, TypeError):
                        ids[i] = str((await self.clients.call(node, "net_info", timeout_s=ADMIN_TIMEOUT_S))["node_id"])
            if all(ids):
                self.node_ids = [str(i) for i in ids]
                return
            if self.clock() > deadline:
                missing = [n.name for n, i in zip(self.nodes, ids) if i is None]
                raise RuntimeError(f"no node id from {', '.join(missing)} within {NODE_ID_WAIT_S:g} s")
            await asyncio.sleep(RETRY_S)

    # --- processes -----------------------------------------------------------------

    def _entry(self, i: int) -> testnet.NodeEntry:
        return testnet.load_testnet(self.home).node(self.nodes[i].name)

    def _running_pid(self, i: int) -> int | None:
        entry = self._entry(i)
        return entry.pid if testnet.is_running(entry.pid, entry.home) else None

    @staticmethod
    def _signal_group(pid: int, sig: int) -> None:
        """The node leads its own session (node/testnet.py), so its group is the node and
        its miner worker; a process outside that arrangement gets the signal alone."""
        try:
            if os.getpgid(pid) == pid:
                os.killpg(pid, sig)
            else:
                os.kill(pid, sig)
        except ProcessLookupError:
            pass

    async def _kill(self, i: int) -> bool:
        pid = self._running_pid(i)
        if pid is None:
            return False
        self._signal_group(pid, signal.SIGKILL)
        deadline = self.clock() + KILL_WAIT_S
        entry = self._entry(i)
        while testnet.is_running(pid, entry.home) and self.clock() < deadline:
            await asyncio.sleep(0.05)
        self.state[i].killed = True
        self.state[i].paused = False  # a killed process is no longer stopped
        self.state[i].applied = None  # a restarted node starts without faults
        return True

    async def _restart(self, i: int) -> bool:
        """`chainlab testnet start NODE`: spawns the node in its own session and waits for /health."""
        name = self.nodes[i].name
        if self._running_pid(i) is not None:
            self.state[i].killed = False
            return True
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "node.cli", "testnet", "start", name, "--home", str(self.home),
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        try:
            async with asyncio.timeout(RESTART_TIMEOUT_S):
                output, _ = await proc.communicate()
        except TimeoutError:
            proc.kill()
            await proc.wait()
            self.note(f"restart {name}: `testnet start` did not finish within {RESTART_TIMEOUT_S:g} s")
            return False
        except asyncio.CancelledError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            raise
        if proc.returncode != 0:
            self.note(f"restart {name} failed ({proc.returncode}): {output.decode(errors='replace')[-500:]}")
            return False
        self.state[i].killed = False
        self.note(f"{name} restarted")
        await self._push(i)  # faults still in force (a partition it is part of) apply to it again
        return True

    def _restart_soon(self, i: int) -> asyncio.Task:
        st = self.state[i]
        if st.restarting is None or st.restarting.done():
            st.restarting = asyncio.ensure_future(self._restart(i))
        return st.restarting

    def _pause(self, i: int) -> bool:
        pid = self._running_pid(i)
        if pid is None:
            return False
        self._signal_group(pid, signal.SIGSTOP)
        self.state[i].paused = True
        return True

    def _resume(self, i: int) -> None:
        pid = self._entry(i).pid
        if pid is not None:
            self._signal_group(pid, signal.SIGCONT)
        self.state[i].paused = False

    # --- link and clock faults -----------------------------------------------------

    async def _push(self, i: int) -> bool:
        """Send node i the union of the faults in force, when it differs from what it has."""
        st = self.state[i]
        if st.killed or st.paused:
            return False  # it gets them when it is back
        wanted = compose_faults(list(self.active.values()), i, self.node_ids, self.seed)
        if wanted == st.applied:
            return True
        try:
            if wanted is None:
                await self.clients.call(self.nodes[i], "admin_clearFaults", timeout_s=ADMIN_TIMEOUT_S, privileged=True)
            else:
                await self.clients.call(self.nodes[i], "admin_setFaults", wanted, timeout_s=ADMIN_TIMEOUT_S,
                                        privileged=True)
        except ObserveError as exc:
            self.note(f"faults for {self.nodes[i].name} not set now: {exc}")
            return False
        st.applied = wanted
        return True

    async def _push_all(self, involved: Sequence[int]) -> bool:
        """Update every node; True when at least one of `involved` took its new fault set."""
        async with self._push_lock:
            results = await asyncio.gather(*(self._push(i) for i in range(len(self.nodes))))
        return any(results[i] for i in involved)

    # --- events --------------------------------------------------------------------

    async def start(self, event: FaultEvent) -> bool:
        """Inject one event now; True when it took effect (then it counts as injected)."""
        names = ", ".join(self.nodes[n].name for n in event.nodes)
        done = False
        for n in event.nodes if event.kind in ("kill", "pause") else ():
            # A victim whose restart (from an earlier kill) is still under way is waited
            # for: the schedule put this fault after that one's end.
            restarting = self.state[n].restarting
            if restarting is not None and not restarting.done():
                try:
                    await asyncio.wait_for(asyncio.shield(restarting), RESTART_TIMEOUT_S)
                except TimeoutError:
                    self.note(f"{self.nodes[n].name} still restarting after {RESTART_TIMEOUT_S:g} s")
        if event.kind == "kill":
            for n in event.nodes:
                if not self.state[n].killed:
                    done |= await self._kill(n)
        elif event.kind == "pause":
            for n in event.nodes:
                if not self.state[n].killed:
                    done |= self._pause(n)
        elif event.kind in ("partition", "delay", "skew"):
            self.active[id(event)] = event
            involved = event.nodes if event.kind != "partition" else [n for side in event.params["sides"] for n in side]
            done = await self._push_all(involved)
        else:
            raise ValueError(f"the local nemesis has no timed fault {event.kind!r}")
        if done:
            self.injected[event.kind] = self.injected.get(event.kind, 0) + 1
            entry = {"kind": event.kind, "start_s": self.now_s(), "end_s": None, "nodes": list(event.nodes)}
            if event.kind == "partition":
                entry["shape"] = event.params.get("shape")
            self.timeline.append(entry)
            self._open[id(event)] = entry
        self.note(f"{event.kind} {'on ' + names if event.kind != 'partition' else _partition_text(event)}"
                  f"{'' if done else ' (no effect: not injected)'} {_params_text(event)}".rstrip())
        return done

    async def end(self, event: FaultEvent) -> None:
        """Heal one event (kill: restart the victims, in the background)."""
        if event.kind == "kill":
            for n in event.nodes:
                if self.state[n].killed:
                    self._restart_soon(n)
        elif event.kind == "pause":
            for n in event.nodes:
                if self.state[n].paused:
                    self._resume(n)
            await self._push_all(event.nodes)  # faults set while it slept
        else:
            self.active.pop(id(event), None)
            await self._push_all([])
        entry = self._open.pop(id(event), None)
        if entry is not None:
            entry["end_s"] = self.now_s()
        self.note(f"{event.kind} healed")

    async def heal_all(self) -> list[str]:
        """Resume every paused node, restart every killed one, clear every node's faults.
        Returns what could not be done (empty: all healed)."""
        self.active.clear()
        now = self.now_s()
        for entry in self._open.values():
            entry["end_s"] = now
        self._open.clear()
        for i, st in enumerate(self.state):
            if st.paused:
                self._resume(i)
        restarts = [self._restart_soon(i) for i, st in enumerate(self.state) if st.killed]
        if restarts:
            await asyncio.gather(*restarts, return_exceptions=True)
        problems = [f"{self.nodes[i].name} is not running" for i in range(len(self.nodes))
                    if self._running_pid(i) is None]
        deadline = self.clock() + HEAL_TIMEOUT_S
        pending = [i for i in range(len(self.nodes)) if self._running_pid(i) is not None]
        while pending:
            results = await asyncio.gather(*(self._clear(i) for i in pending))
            pending = [i for i, ok in zip(pending, results) if not ok]
            if not pending or self.clock() > deadline:
                break
            await asyncio.sleep(RETRY_S)
        problems += [f"{self.nodes[i].name}: faults not cleared within {HEAL_TIMEOUT_S:g} s" for i in pending]
        self.problems = problems
        self.note("heal: every node resumed, restarted and cleared" if not problems else f"heal: {'; '.join(problems)}")
        return problems

    async def _clear(self, i: int) -> bool:
        try:
            await self.clients.call(self.nodes[i], "admin_clearFaults", timeout_s=ADMIN_TIMEOUT_S, privileged=True)
        except ObserveError:
            return False
        self.state[i].applied = None
        return True

    def emergency_resume(self) -> None:
        """Synchronous last resort (outside any event loop): SIGCONT every node, so that
        `testnet down` can stop them cleanly."""
        with contextlib.suppress(testnet.TestnetError, OSError):
            for entry in testnet.load_testnet(self.home).nodes:
                if testnet.is_running(entry.pid, entry.home):
                    self._signal_group(entry.pid, signal.SIGCONT)  # type: ignore[arg-type]


def _partition_text(event: FaultEvent) -> str:
    p = event.params
    sides = " | ".join(",".join(str(n) for n in side) for side in p.get("sides", []))
    bridge = f" bridge {p['bridge']}" if p.get("bridge") else ""
    return f"{p.get('shape', '?')} {sides}{' (one way)' if p.get('one_way') else ''}{bridge}"


def _params_text(event: FaultEvent) -> str:
    if event.kind == "delay":
        return f"delay {event.params.get('delay_ms')} ms loss {event.params.get('loss')}"
    if event.kind == "skew":
        return f"skew {event.params.get('skew_ms')} ms"
    return ""

