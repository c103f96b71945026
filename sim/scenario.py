"""A simulation run: a cluster, a transaction load, faults drawn from the seed, a verdict.

The run has three phases: faults are injected during the first part, everything is
healed at `heal_at`, then a quiet period lets the network converge before the final
checks. Every random draw comes from generators seeded by the run seed.
"""

import random
import time
from dataclasses import dataclass, field, replace
from typing import Any

from consensus.presets import account_key, make_genesis, validator_key
from consensus.types import TX_TRANSFER, Transaction
from node.byzantine import CORE_SWITCHES
from node.core import NodeConfig
from sim.cluster import Cluster, default_config
from sim.invariants import (
    ChainView,
    Verdict,
    check_common_prefix,
    check_finalized_agree,
    check_no_honest_slashed,
    check_byzantine_slashed,
    check_heads_agree,
    check_identical_at_equal_heights,
    check_no_double_apply,
    check_no_included_lost,
    check_supply,
    view_of_core,
)
from sim.network import LinkFaults

FAULT_TYPES = ("partition", "delay", "loss", "duplicate", "crash", "pause", "skew")
SKEW_MS = (200, 2_000)  # a node's clock off by this much, either way (sim.schedule draws the same)
DEEP_K = 6  # a transaction this deep is "included" for the lost-transaction check (Bitcoin's 6)
PREFIX_K = 6  # common prefix below the last k blocks, after the quiet period
DRAIN_MS = 5_000  # mining stops this long before the end so the last blocks can spread


@dataclass
class SimConfig:
    consensus: str = "pow"
    byzantine: dict[int, tuple[str, ...]] = field(default_factory=dict)  # node -> switches (tests, chaos)
    nodes: int = 4
    seed: int = 1
    duration_s: float = 60.0
    faults: tuple[str, ...] = ()
    tx_rate: float = 2.0  # transactions per simulated second, Poisson
    accounts: int = 16
    block_interval_ms: int = 1_000
    quiet_fraction: float = 0.35  # the last part of the run has no faults
    quiet_min_s: float = 20.0
    hashrates: list[float] | None = None  # per node; equal shares by default
    check_every_event: bool = True
    # Timed faults given as data (sim.schedule.FaultEvent: kill, pause, partition, delay,
    # skew) instead of drawn from the seed; `chainlab chaos --target sim` runs its
    # schedule this way, so every target executes the same one. Empty: `faults` is drawn.
    schedule: tuple = ()

    def replay_command(self) -> str:
        # Everything the command line can set, so the command replays this exact run.
        faults = f" --faults {','.join(sorted(self.faults))}" if self.faults else ""
        byzantine = "".join(f" --byzantine {node}={','.join(sorted(switches))}"
                            for node, switches in sorted(self.byzantine.items()) if switches)
        tx_rate = f" --tx-rate {_number(self.tx_rate)}" if self.tx_rate != SimConfig.tx_rate else ""
        return (f"chainlab sim --consensus {self.consensus} --nodes {self.nodes} --seed {self.seed} "
                f"--duration {_number(self.duration_s)}{faults}{byzantine}{tx_rate}")


def _number(value: float) -> str:
    """Short when that is exact (60, 2.5), every digit otherwise, so a replay parses back equal."""
    short = f"{value:g}"
    return short if float(short) == value else repr(float(value))


@dataclass
class SimResult:
    config: SimConfig
    simulated_s: float
    wall_s: float
    events: int
    nodes: list[dict]
    heads_agree: bool
    reorgs: int
    deepest_reorg: int
    tx_sent: int
    tx_acknowledged: int
    tx_included: int
    tx_superseded: int  # acknowledged, not included, its nonce used by an included transaction
    digest: str
    verdicts: list[Verdict]
    faults_injected: dict[str, int]
    fault_log: list[str] = field(default_factory=list)
    heal_at_s: float = 0.0  # every fault is healed by then (seconds from the start)
    # Each node's height once a simulated second: {"node0": [[t_s, height], ...]}.
    height_samples: dict[str, list[list[float]]] = field(default_factory=dict)
    # From the heal to the first sample where every agreeing node is up on one head.
    convergence_s: float | None = None

    @property
    def ok(self) -> bool:
        return all(v.ok for v in self.verdicts)

    def to_json(self) -> dict[str, Any]:
        return {
            "seed": self.config.seed,
            "consensus": self.config.consensus,
            "nodes": self.nodes,
            "simulated_seconds": round(self.simulated_s, 3),
            "wall_seconds": round(self.wall_s, 3),
            "speed": round(self.simulated_s / self.wall_s, 1) if self.wall_s > 0 else None,
            "events": self.events,
            "heads_agree": self.heads_agree,
            "reorgs": self.reorgs,
            "deepest_reorg": self.deepest_reorg,
            "transactions": {"sent": self.tx_sent, "acknowledged": self.tx_acknowledged, "included": self.tx_included,
                             "superseded": self.tx_superseded},
            "faults_injected": self.faults_injected,
            "fault_log": self.fault_log,
            "heal_at_s": self.heal_at_s,
            "convergence_s": self.convergence_s,
            "digest": self.digest,
            "invariants": [{"name": v.name, "ok": v.ok, "detail": v.detail} for v in self.verdicts],
            "ok": self.ok,
            "replay": self.config.replay_command(),
        }


class Load:
    """Transfers from prefunded accounts, each account sent through one home node.

    A client that sends an account's transactions through one node and takes the next
    nonce from that node's view never double-spends by itself, so every lost
    transaction the checks find is the network's fault, not the client's.
    """

    def __init__(self, cluster: Cluster, config: SimConfig, seed_text: str, rng: random.Random):
        self.cluster = cluster
        self.config = config
        self.rng = rng
        self.keys = [account_key(seed_text, i) for i in range(config.accounts)]
        self.sent = 0
        self.acknowledged: dict[bytes, Transaction] = {}
        self.rejections = 0

    def send_one(self, cluster: Cluster) -> None:
        i = self.rng.randrange(len(self.keys))
        key = self.keys[i]
        # Clients use honest nodes: what a byzantine node does with a transaction (a
        # banned spammer cannot pass it on) says nothing about the network.
        homes = [n for n in range(len(cluster.nodes)) if not self.config.byzantine.get(n)] or list(range(len(cluster.nodes)))
        home = homes[i % len(homes)]
        node = cluster.nodes[home]
        if not node.up or node.core is None:
            return
        core = node.core
        nonce = core.tree.head_state().get(key.address).nonce + len(core.mempool.by_sender.get(key.address, {}))
        recipient = self.keys[(i + 1 + self.rng.randrange(len(self.keys) - 1)) % len(self.keys)].address
        tx = Transaction(TX_TRANSFER, cluster.genesis.chain_id, key.public_key, recipient,
                         self.rng.randrange(1, 1_000), self.rng.randrange(1, 50), nonce, b"")
        tx = tx._replace(signature=key.sign(tx.signing_bytes()))
        request_id = cluster.rpc(home, "tx_send", [tx.encode().hex()])
        self.sent += 1
        reply = cluster.replies.pop(request_id, None)
        if reply is not None and reply.error is None:
            self.acknowledged[tx.txid] = tx
        else:
            self.rejections += 1

    def schedule(self, start_ms: int, end_ms: int) -> None:
        if self.config.tx_rate <= 0:
            return
        t = start_ms
        while True:
            t += self.rng.expovariate(self.config.tx_rate / 1000)
            if t >= end_ms:
                break
            self.cluster.at(t, self.send_one)


class FaultPlan:
    """Faults drawn from the seed: at least one of each requested type, all healed by `heal_at`."""

    def __init__(self, cluster: Cluster, config: SimConfig, rng: random.Random, start_ms: int, heal_ms: int):
        self.cluster = cluster
        self.rng = rng
        self.start_ms = start_ms
        self.heal_ms = heal_ms
        # Sorted, so the order the faults were named in cannot change the run.
        self.injected = {name: 0 for name in sorted(config.faults)}
        self.log: list[str] = []
        for name in sorted(config.faults):
            if name not in FAULT_TYPES:
                raise ValueError(f"unknown fault {name!r}; choose from {', '.join(FAULT_TYPES)}")
            count = 1 + rng.randrange(2)
            for _ in range(count):
                self._plan(name)
        cluster.at(heal_ms, self._heal_all)

    def _window(self, min_s: float, max_s: float) -> tuple[float, float]:
        span = self.heal_ms - self.start_ms
        length = min(span * 0.6, 1000 * (min_s + self.rng.random() * (max_s - min_s)))
        begin = self.start_ms + self.rng.random() * max(1.0, span - length)
        return begin, min(self.heal_ms, begin + length)

    def _note(self, at: float, text: str) -> None:
        self.log.append(f"{at / 1000 - self.cluster.genesis.timestamp_ms / 1000:.1f}s {text}")

    def _plan(self, name: str) -> None:
        n = len(self.cluster.nodes)
        begin, end = self._window(5, 20)
        if name == "partition":
            kind = self.rng.choice(["split", "asymmetric", "isolate"])
            nodes = list(range(n))
            self.rng.shuffle(nodes)
            cut = max(1, n // 2 - self.rng.randrange(max(1, n // 3)))
            if kind == "isolate":
                cut = 1
            side_a, side_b = sorted(nodes[:cut]), sorted(nodes[cut:])

            def start(c: Cluster, kind=kind, side_a=side_a, side_b=side_b) -> None:
                if kind == "asymmetric":
                    c.network.block_one_way(side_a, side_b)
                else:
                    c.network.partition([side_a, side_b])
                self.injected["partition"] += 1
                self._note(c.now_ms, f"partition {kind} {side_a} | {side_b}")

            self.cluster.at(begin, start)
            self.cluster.at(end, lambda c: (c.network.heal_partitions(), self._note(c.now_ms, "partition healed")))
        elif name in ("delay", "loss", "duplicate"):
            links = [(a, b) for a in range(n) for b in range(n) if a != b]
            chosen = self.rng.sample(links, max(1, len(links) // 2))
            faults = LinkFaults(
                loss=0.05 + 0.25 * self.rng.random() if name == "loss" else 0.0,
                duplicate=0.1 + 0.3 * self.rng.random() if name == "duplicate" else 0.0,
                extra_delay_ms=100 + 900 * self.rng.random() if name == "delay" else 0.0,
                jitter_ms=200.0 if name == "delay" else None,
            )

            def start(c: Cluster, name=name, chosen=chosen, faults=faults) -> None:
                for link in chosen:
                    c.network.faults[link] = faults
                self.injected[name] += 1
                self._note(c.now_ms, f"{name} on {len(chosen)} links {faults}")

            def stop(c: Cluster, chosen=chosen, faults=faults) -> None:
                for link in chosen:
                    if c.network.faults.get(link) is faults:
                        del c.network.faults[link]

            self.cluster.at(begin, start)
            self.cluster.at(end, stop)
        elif name == "crash":
            victim = self.rng.randrange(n)

            def crash(c: Cluster, victim=victim) -> None:
                if c.nodes[victim].up:
                    c.crash(victim)
                    self.injected["crash"] += 1
                    self._note(c.now_ms, f"crash node {victim}")

            def restart(c: Cluster, victim=victim) -> None:
                if not c.nodes[victim].up:
                    c.restart(victim)
                    self._note(c.now_ms, f"restart node {victim}")

            self.cluster.at(begin, crash)
            self.cluster.at(end, restart)
        elif name == "pause":
            victim = self.rng.randrange(n)

            paused: list[int] = []

            def pause(c: Cluster, victim=victim, paused=paused) -> None:
                # The drawn node, or the next one running if a crash has it down just now.
                for i in [(victim + k) % n for k in range(n)]:
                    if c.nodes[i].up and not c.nodes[i].paused:
                        c.pause(i)
                        paused.append(i)
                        self.injected["pause"] += 1
                        self._note(c.now_ms, f"pause node {i}")
                        return

            def resume(c: Cluster, paused=paused) -> None:
                for i in paused:
                    if c.nodes[i].paused:
                        c.resume(i)
                        self._note(c.now_ms, f"resume node {i}")

            self.cluster.at(begin, pause)
            self.cluster.at(end, resume)
        elif name == "skew":
            victim = self.rng.randrange(n)
            skew_ms = self.rng.choice((-1, 1)) * self.rng.randint(*SKEW_MS)

            def skew(c: Cluster, victim=victim, skew_ms=skew_ms) -> None:
                c.set_skew(victim, c.nodes[victim].skew_ms + skew_ms)
                self.injected["skew"] += 1
                self._note(c.now_ms, f"skew node {victim} clock {skew_ms:+d} ms")

            def unskew(c: Cluster, victim=victim, skew_ms=skew_ms) -> None:
                c.set_skew(victim, c.nodes[victim].skew_ms - skew_ms)
                self._note(c.now_ms, f"clock of node {victim} back by {skew_ms:+d} ms")

            self.cluster.at(begin, skew)
            self.cluster.at(end, unskew)

    def _heal_all(self, c: Cluster) -> None:
        c.network.heal_partitions()
        c.network.heal_faults()
        for node in c.nodes:
            if node.paused:
                c.resume(node.index)
            if node.skew_ms:
                c.set_skew(node.index, 0)
            if not node.up:
                c.restart(node.index)
        self._note(c.now_ms, "all faults healed")


class ScheduledFaults:
    """A schedule's timed faults (sim.schedule.FaultEvent) on the simulated network, at
    their times from the run's start; all healed by `heal_ms` like a drawn FaultPlan.
    Counts are of faults that took effect, under the schedule's names."""

    def __init__(self, cluster: Cluster, events: tuple, start_ms: int, heal_ms: int):
        self.cluster = cluster
        self.start_ms = start_ms
        self.injected = {kind: 0 for kind in sorted({e.kind for e in events})}
        self.log: list[str] = []
        for event in events:
            begin = start_ms + int(event.at_s * 1000)
            end = min(heal_ms, begin + int(event.duration_s * 1000))
            if begin >= heal_ms:
                continue
            state: dict = {}
            cluster.at(begin, lambda c, e=event, st=state: self._start(c, e, st))
            cluster.at(end, lambda c, e=event, st=state: self._end(c, e, st))
        cluster.at(heal_ms, self._heal_all)

    def _note(self, at: float, text: str) -> None:
        self.log.append(f"{(at - self.start_ms) / 1000:.1f}s {text}")

    def _start(self, c: Cluster, event: Any, st: dict) -> None:
        p, nodes = event.params, list(event.nodes)
        done = False
        if event.kind == "kill":
            st["victims"] = [n for n in nodes if c.nodes[n].up]
            for n in st["victims"]:
                c.crash(n)
                self._note(c.now_ms, f"crash node {n}")
            done = bool(st["victims"])
        elif event.kind == "pause":
            st["victims"] = [n for n in nodes if c.nodes[n].up and not c.nodes[n].paused]
            for n in st["victims"]:
                c.pause(n)
                self._note(c.now_ms, f"pause node {n}")
            done = bool(st["victims"])
        elif event.kind == "partition":
            bridge = set(p.get("bridge") or [])
            side_a, side_b = ([n for n in side if n not in bridge] for side in p["sides"])
            pairs = {(a, b) for a in side_a for b in side_b if a != b}
            if not p.get("one_way"):
                pairs |= {(b, a) for a, b in pairs}
            st["pairs"] = pairs - c.network.blocked
            c.network.blocked |= st["pairs"]
            done = bool(st["pairs"])
            self._note(c.now_ms, f"partition {p.get('shape')} {sorted(side_a)} | {sorted(side_b)}"
                                 + (f" bridge {sorted(bridge)}" if bridge else ""))
        elif event.kind == "delay":
            faults = LinkFaults(loss=float(p.get("loss", 0.0)), extra_delay_ms=float(p.get("delay_ms", 0)))
            links = [(a, b) for a in range(len(c.nodes)) for b in range(len(c.nodes))
                     if a != b and (a in nodes or b in nodes)]
            for link in links:
                c.network.faults[link] = faults
            st["links"], st["faults"] = links, faults
            done = bool(links)
            self._note(c.now_ms, f"delay on the links of {nodes} {faults}")
        elif event.kind == "skew":
            st["skew"] = int(p.get("skew_ms", 0))
            for n in nodes:
                c.set_skew(n, c.nodes[n].skew_ms + st["skew"])
                self._note(c.now_ms, f"skew node {n} clock {st['skew']:+d} ms")
            done = bool(nodes)
        else:
            raise ValueError(f"the simulator has no timed fault {event.kind!r}")
        if done:
            self.injected[event.kind] += 1

    def _end(self, c: Cluster, event: Any, st: dict) -> None:
        if event.kind == "kill":
            for n in st.get("victims", []):
                if not c.nodes[n].up:
                    c.restart(n)
                    self._note(c.now_ms, f"restart node {n}")
        elif event.kind == "pause":
            for n in st.get("victims", []):
                if c.nodes[n].paused:
                    c.resume(n)
                    self._note(c.now_ms, f"resume node {n}")
        elif event.kind == "partition":
            c.network.blocked -= st.get("pairs", set())
            self._note(c.now_ms, "partition healed")
        elif event.kind == "delay":
            for link in st.get("links", []):
                if c.network.faults.get(link) is st["faults"]:
                    del c.network.faults[link]
        elif event.kind == "skew":
            for n in event.nodes:
                c.set_skew(n, c.nodes[n].skew_ms - st.get("skew", 0))
                self._note(c.now_ms, f"clock of node {n} back by {st.get('skew', 0):+d} ms")

    _heal_all = FaultPlan._heal_all


class RunChecks:
    """Checks after every event: supply at each new head, final blocks never change."""

    def __init__(self) -> None:
        self.heads: dict[int, bytes] = {}
        self.final: dict[int, tuple[int, bytes]] = {}  # node -> (final height, hash)
        self.failures: list[str] = []

    def __call__(self, cluster: Cluster) -> None:
        # Only the node the event went to can have changed.
        if cluster.last_stepped is None:
            return
        for node in (cluster.nodes[cluster.last_stepped],):
            core = node.core
            if core is None:
                continue
            head = core.tree.head
            if self.heads.get(node.index) == head.hash:
                continue
            self.heads[node.index] = head.hash
            state = core.tree.head_state()
            if state.total_balance() != state.expected_supply() and len(self.failures) < 10:
                self.failures.append(f"node {node.index} at height {head.height}: supply {state.total_balance()} != {state.expected_supply()}")
            previous = self.final.get(node.index)
            if previous is not None:
                height, block_hash = previous
                entry = core.tree.canonical_at(height)
                if entry is None or entry.hash != block_hash:
                    self.failures.append(f"node {node.index}: final block at height {height} changed")
                if core.tree.final_height < height:
                    self.failures.append(f"node {node.index}: final height went back from {height} to "
                                         f"{core.tree.final_height}")
            final = core.tree.canonical[core.tree.final_height]
            self.final[node.index] = (final.height, final.hash)


class PeerWatch:
    """Who penalised or banned whom during the run. Scores and bans expire (ban_ms) and a
    banned node comes back and is banned again, so the verdicts need "ever", sampled
    with the run's other samples, not a look at the end."""

    def __init__(self, cluster: Cluster, honest: set[int]):
        self.honest = honest
        self.ids = {n.index: n.core.node_id for n in cluster.nodes if n.core is not None}  # survive restarts
        self.penalised: set[tuple[int, int]] = set()  # (honest node, peer it penalised or banned)
        self.honest_bans: set[tuple[int, int]] = set()  # (honest node, honest peer it banned)

    def sample(self, c: Cluster) -> None:
        for node in c.up_nodes():
            if node.index not in self.honest or node.core is None:
                continue
            scores = node.core.scores
            for j, node_id in self.ids.items():
                if j == node.index:
                    continue
                banned = node_id in scores.bans or c.nodes[j].address in scores.bans
                if banned or scores.scores.get(node_id, 0) < 0:
                    self.penalised.add((node.index, j))
                if banned and j in self.honest:
                    self.honest_bans.add((node.index, j))


def check_byzantine_penalised(watch: PeerWatch, cluster: Cluster, byzantine: dict[int, tuple[str, ...]],
                              honest_tree: Any) -> Verdict:
    """Every honest node penalised or banned every "spam" node; what each "withhold" node
    released and how many of its blocks the honest chain kept (information only)."""
    name = "byzantine peers penalised"
    spammers = sorted(i for i, switches in byzantine.items() if "spam" in switches)
    missing = sorted((h, s) for s in spammers for h in sorted(watch.honest) if (h, s) not in watch.penalised)
    notes = [f"spam node{s} penalised by {sorted(h for h, x in watch.penalised if x == s and h in watch.honest)}"
             for s in spammers]
    for i, switches in sorted(byzantine.items()):
        core = cluster.nodes[i].core
        if "withhold" not in switches or core is None:
            continue
        kept = sum(1 for e in honest_tree.canonical if e.header.producer == core.producer) if honest_tree else 0
        selfish = core.selfish
        if selfish is None:
            notes.append(f"withhold node{i}: no miner, nothing to withhold")
            continue
        notes.append(f"withhold node{i}: mined {core.blocks_mined}, released {selfish.blocks_released} in "
                     f"{selfish.releases} releases, {kept} canonical on an honest node")
    if missing:
        return Verdict(name, False, f"not penalised: {', '.join(f'node{s} by node{h}' for h, s in missing)}")
    return Verdict(name, True, "; ".join(notes) or "no misbehaving peers")


def check_faulted_rejoin(watch: PeerWatch, cluster: Cluster) -> Verdict:
    """Faults are not misbehaviour: no honest node ever banned another, and after the heal
    every honest node is connected to at least one peer."""
    name = "faulted peers can rejoin"
    if watch.honest_bans:
        return Verdict(name, False, "honest nodes banned: " + ", ".join(
            f"node{j} by node{h}" for h, j in sorted(watch.honest_bans)))
    alone = [i for i in sorted(watch.honest) if cluster.nodes[i].core is None
             or not any(p.ready for p in cluster.nodes[i].core.peers.values())]
    if alone:
        return Verdict(name, False, f"honest nodes without a peer at the end: {alone}")
    return Verdict(name, True, f"{len(watch.honest)} honest nodes connected, none banned by another")


def run_simulation(config: SimConfig) -> SimResult:
    wall_start = time.perf_counter()
    seed_text = f"sim-{config.seed}"
    # Building the network is where the two engines differ: miners with hashrates, or
    # validators with keys and stakes. Everything after runs the same node code.
    if config.consensus == "pos":
        genesis = make_genesis(consensus="pos", preset="minimal", seed=seed_text, accounts=config.accounts,
                               validators=config.nodes, overrides={"slot_ms": config.block_interval_ms})
        hashrates = [0.0] * config.nodes
        validators = [validator_key(seed_text, i) for i in range(config.nodes)]
    else:
        genesis = make_genesis(
            consensus=config.consensus, preset="minimal", seed=seed_text, accounts=config.accounts,
            overrides={"target_spacing_ms": config.block_interval_ms},
        )
        # Equal shares of a total rate that, at the genesis difficulty, gives the target spacing.
        from consensus.pow.difficulty import compact_to_target, work_of_target
        from consensus.params import params_from
        from consensus.pow.params import PowParams

        pow_params = params_from(PowParams, genesis)
        total_rate = work_of_target(compact_to_target(pow_params.genesis_bits)) * 1000 / pow_params.target_spacing_ms
        hashrates = config.hashrates or [total_rate / config.nodes] * config.nodes
        validators = None
    config_for = None
    if config.byzantine:
        def config_for(i: int, addresses: list[str]) -> NodeConfig:
            base = default_config(i, addresses)
            return replace(base, byzantine=frozenset(config.byzantine.get(i, ())))
    cluster = Cluster(genesis, config.nodes, config.seed, hashrates=hashrates, validator_keys=validators,
                      config_for=config_for)
    # A "spam" node is banned by its peers by design, so it cannot follow the chain: it is
    # left out of the agreement checks. Only a validator's switches end in slashing.
    honest = {i for i in range(config.nodes) if not config.byzantine.get(i)}
    cut_off = {i for i, switches in config.byzantine.items() if "spam" in switches}
    slashable = {i for i, switches in config.byzantine.items() if set(switches) - CORE_SWITCHES}
    watch = PeerWatch(cluster, honest)
    rng = random.Random(f"{config.seed}/scenario")
    start = cluster.now_ms
    end = start + int(config.duration_s * 1000)
    if config.consensus == "pos":
        # End mid-slot: the slot's block has spread and its votes are out, so "all heads
        # agree" checks convergence, not a proposal still on the wire.
        slot_ms = config.block_interval_ms
        end += (slot_ms // 2 - (end - genesis.timestamp_ms) % slot_ms) % slot_ms
    quiet = max(config.quiet_min_s * 1000, config.duration_s * 1000 * config.quiet_fraction)
    heal = max(start, end - int(quiet))
    if config.schedule:
        faults: FaultPlan | ScheduledFaults = ScheduledFaults(cluster, config.schedule, start, heal)
    else:
        faults = FaultPlan(cluster, config, rng, start + min(5_000, (heal - start) // 5), heal)
    load = Load(cluster, config, seed_text, random.Random(f"{config.seed}/load"))
    # Stop the load a little before the end so the last transactions can be included.
    load.schedule(start + 1_000, end - min(15_000, int(quiet * 0.6)))
    checks = RunChecks()
    if config.check_every_event:
        cluster.hooks.append(checks)
    deep: dict[bytes, str] = {}
    samples: dict[str, list[list[float]]] = {f"node{i}": [] for i in range(config.nodes)}
    converged_at: list[float] = []

    def sample_deep(c: Cluster) -> None:
        watch.sample(c)
        t_s = round((c.now_ms - start) / 1000, 3)
        for node in c.nodes:
            if node.up and node.core is not None:
                samples[f"node{node.index}"].append([t_s, node.core.tree.head.height])
        agreeing_nodes = [n for n in c.nodes if n.index not in cut_off]
        if c.now_ms >= heal and not converged_at and all(n.up and not n.paused for n in agreeing_nodes) \
                and len({n.core.tree.head.hash for n in agreeing_nodes}) == 1:
            converged_at.append(t_s)
        for node in c.up_nodes():
            assert node.core is not None
            if node.index in cut_off:
                continue
            canonical = node.core.tree.canonical
            for entry in canonical[max(0, len(canonical) - 3 * DEEP_K): max(0, len(canonical) - DEEP_K)]:
                for tx in entry.block.transactions:
                    deep.setdefault(tx.txid, f"node {node.index} at height {entry.height}")
        if c.now_ms + 1_000 <= end:
            c.at(c.now_ms + 1_000, sample_deep)

    cluster.at(start + 1_000, sample_deep)

    def drain(c: Cluster) -> None:
        # Blocks found in the last instant are still in flight at the end, and two
        # branches of equal work can stand side by side (first seen wins a tie). So all
        # miners stop, and the node with the heaviest head mines exactly one more block,
        # fast, which makes its branch strictly heaviest; then "all heads agree" checks
        # convergence, not propagation delay or a standing tie.
        up = c.up_nodes()
        if cut_off:
            # A banned spammer's ban expires and it reconnects now and then, long enough to
            # hand over a chain: from here on it is cut off, as a block found in the last
            # instant would otherwise still be spreading at the end.
            c.network.partition([sorted(cut_off), sorted(set(range(len(c.nodes))) - cut_off)])
        if not up or not up[0].core.engine.minable:
            return  # validators need no tie-breaker: votes settle the head in the quiet period
        for node in up:
            c.rpc(node.index, "miner_stop")
        breaker = max([n for n in up if n.index not in cut_off] or up, key=lambda n: (n.core.tree.head.score, -n.index))
        breaker.hashrate = 4 * sum(n.hashrate for n in c.nodes)
        c.rpc(breaker.index, "miner_generate", [1])

    cluster.at(end - DRAIN_MS, drain)
    cluster.run_until(end)
    wall = time.perf_counter() - wall_start

    watch.sample(cluster)
    by_node = {n.index: view_of_core(f"node{n.index}", n.core) for n in cluster.nodes if n.core is not None}
    views: list[ChainView] = list(by_node.values())
    agreeing = [view for i, view in by_node.items() if i not in cut_off]
    follower = next((n.core for n in cluster.nodes if n.index in honest and n.core is not None), None)
    verdicts = [
        check_common_prefix(agreeing, PREFIX_K),
        check_identical_at_equal_heights(agreeing, PREFIX_K),
        check_supply(views),
        check_no_double_apply(views),
        check_no_included_lost(agreeing, deep),
        check_heads_agree(agreeing),
        check_finalized_agree(agreeing),
        check_no_honest_slashed(views, set(config.byzantine)),
        check_byzantine_slashed(views, slashable),
        check_byzantine_penalised(watch, cluster, config.byzantine, follower.tree if follower else None),
        check_faulted_rejoin(watch, cluster),
        Verdict("checks after every event (supply, final blocks)", not checks.failures,
                "; ".join(checks.failures[:3]) or f"{cluster.events_processed} events checked"),
    ]
    never = sorted(name for name, count in faults.injected.items() if count == 0)
    verdicts.append(Verdict("every requested fault injected", not never,
                            f"never injected: {', '.join(never)}" if never else f"{sum(faults.injected.values())} faults"))
    included = {t for v in views[:1] for txids in v.txids for t in txids}
    used_nonces = {key for v in views[:1] for keys in v.senders_nonces for key in keys}
    # A client that reads the next nonce from a node that is behind (just restarted, or cut
    # off) can reuse a nonce; the chain then includes one of the two. Count those apart.
    superseded = sum(1 for txid, tx in load.acknowledged.items()
                     if txid not in included and (tx.sender_address, tx.nonce) in used_nonces)
    nodes = []
    for n in cluster.nodes:
        core = n.core
        assert core is not None
        nodes.append({"node": n.index, "height": core.tree.head.height, "head": core.tree.head.hash.hex(),
                      "blocks_mined": core.blocks_mined, "reorgs": core.reorgs, "deepest_reorg": core.deepest_reorg,
                      "peers": sum(1 for p in core.peers.values() if p.ready), "hashes_tried": core.hashes_tried})
        if core.selfish is not None:
            nodes[-1]["selfish"] = core.selfish.status()  # byzantine "withhold": what it withheld and released
    return SimResult(
        config=config,
        simulated_s=(end - start) / 1000,
        wall_s=wall,
        events=cluster.events_processed,
        nodes=nodes,
        heads_agree=verdicts[5].ok,
        reorgs=sum(n["reorgs"] for n in nodes),
        deepest_reorg=max(n["deepest_reorg"] for n in nodes),
        tx_sent=load.sent,
        tx_acknowledged=len(load.acknowledged),
        tx_included=sum(1 for t in load.acknowledged if t in included),
        tx_superseded=superseded,
        digest=cluster.digest.hexdigest(),
        verdicts=verdicts,
        faults_injected=faults.injected,
        fault_log=faults.log,
        heal_at_s=(heal - start) / 1000,
        height_samples=samples,
        convergence_s=round(converged_at[0] - (heal - start) / 1000, 3) if converged_at else None,
    )
