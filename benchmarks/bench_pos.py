"""Proof of stake: slots to finality, simulator speed, and attestations processed per second.

1. Slots to finality with everyone online: in a simulated network of 4 (and of 16)
   validators, `sim.scenario.run_simulation(SimConfig(consensus="pos", faults=()))`
   with a watcher on the cluster's per-event hooks, the slots from each epoch
   checkpoint's slot until the last node's head state has it finalized. Limit: the best
   case of the consensus-specs rule (consensus/pos/finality.py) when every vote is
   included the slot after it is made, 2 epochs (8 slots in the `minimal` preset,
   computed from the run's parameters). Ratio: limit / mean. Goal: >= 0.8.
2. Simulator speed with 16 validators: simulated seconds per wall second of
   `run_simulation(SimConfig(consensus="pos", nodes=16, duration_s=60, tx_rate=2))`,
   best of 3 (fewer if the runs are too slow for the time cap), twice: with the
   simulator's 1 s slots, and with the 2 s slots of the `testnet` preset that real
   nodes and docker run. Each validator votes every slot, so the work per simulated
   second is about proportional to 1 / slot length. Limit: none can be measured, so it
   is the goal itself, 50 (as bench_sim does for proof of work), for both.
3. Attestations processed per second: signed votes of a 64-validator chain given to
   `PosEngine.on_vote(tree, payload)` as gossip, each one new (its own slot and
   validator). Limit: single-core Ed25519 verifications per second of the very same
   signatures with `cryptography`, keys parsed and messages built beforehand, measured
   in turns in the same run. Goal: ratio >= 0.5. The inclusion path, blocks carrying
   256 votes each through `BlockTree.add_block`, is printed per vote for context.

    python benchmarks/bench_pos.py [--quick] [--json]
"""

import contextlib
import statistics
import time
from dataclasses import dataclass, field

import benchlib  # noqa: F401  (puts the repository on sys.path)
from benchlib import Figure, cli, time_once

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

import sim.scenario
from consensus.chain import BlockTree, Entry
from consensus.crypto import verify as crypto_verify
from consensus.engine import make_engine
from consensus.pos.params import POS_PRESETS
from consensus.pos.engine import PosBody, PosEngine, attestation_data, encode_body, encode_vote
from consensus.pos.types import Attestation, Proposal, reveal_signing_bytes
from consensus.presets import make_genesis, validator_key
from consensus.types import Block
from sim.cluster import Cluster
from sim.scenario import SimConfig, SimResult, run_simulation

BENCHMARK = "pos"
GOAL_FINALITY = 0.8  # limit / mean slots to finality
GOAL_SPEED = 50.0  # simulated seconds per wall second
GOAL_VOTES = 0.5  # on_vote rate / Ed25519 verification rate
TX_RATE = 2.0  # `chainlab sim`'s default load
SPEED_NODES = 16
SPEED_REPEAT = 3
SPEED_TIME_CAP_S = 50.0  # no further repetition of the 16-validator run once it would pass this
FOREVER_MS = 2**62  # "now" for blocks built ahead of any clock
SEED = "bench-pos"


# --- 1 and 2: the simulator ------------------------------------------------------------------


@dataclass
class FinalityWatcher:
    """A cluster hook: when each epoch checkpoint became finalized on the first node and on
    every node. Only the node the event went to can have changed, so one look per event."""

    cluster: Cluster
    by_node: list[int] = field(default_factory=list)  # finalized epoch on each node's head
    first_ms: dict[int, int] = field(default_factory=dict)  # epoch -> finalized on some node
    all_ms: dict[int, int] = field(default_factory=dict)  # epoch -> finalized on every node
    spent_s: float = 0.0  # the hook's own time, to show it does not bend the speed figure

    def __post_init__(self) -> None:
        self.by_node = [0] * len(self.cluster.nodes)

    def __call__(self, cluster: Cluster) -> None:
        start = time.perf_counter()
        index = cluster.last_stepped
        if index is not None:
            core = cluster.nodes[index].core
            if core is not None:
                epoch = core.tree.head.state.engine.ffg.finalized.epoch
                if epoch > self.by_node[index]:
                    for e in range(max(self.by_node) + 1, epoch + 1):
                        self.first_ms[e] = cluster.now_ms
                    self.by_node[index] = epoch
                    everywhere = min(self.by_node)
                    for e in range(len(self.all_ms) + 1, everywhere + 1):
                        self.all_ms[e] = cluster.now_ms
        self.spent_s += time.perf_counter() - start


@contextlib.contextmanager
def watching():
    """run_simulation builds its own Cluster: hand every cluster it builds a FinalityWatcher."""
    watchers: list[FinalityWatcher] = []

    class WatchedCluster(Cluster):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            watchers.append(FinalityWatcher(self))
            self.hooks.append(watchers[-1])

    original = sim.scenario.Cluster
    sim.scenario.Cluster = WatchedCluster
    try:
        yield watchers
    finally:
        sim.scenario.Cluster = original


def watched_run(config: SimConfig) -> tuple[SimResult, FinalityWatcher, float]:
    """One run with a finality watcher: (result, watcher, CPU seconds)."""
    with watching() as watchers:
        cpu = time.process_time()
        result = run_simulation(config)
        cpu = time.process_time() - cpu
    return result, watchers[0], cpu


def pos_config(nodes: int, duration_s: float, slot_ms: int = 1_000) -> SimConfig:
    return SimConfig(consensus="pos", nodes=nodes, seed=1, duration_s=duration_s, tx_rate=TX_RATE, faults=(),
                     block_interval_ms=slot_ms)


def finality_figure(result: SimResult, watcher: FinalityWatcher) -> Figure:
    engine = watcher.cluster.nodes[0].core.engine
    assert isinstance(engine, PosEngine)
    p = engine.params
    # The consensus-specs rule with every vote included the slot after: the votes for the
    # checkpoint of epoch e all count at the boundary into e+1 (e justified), those for e+1
    # at the boundary into e+2 (e+1 justified with e as source: e final). Those boundaries
    # are weighed by the first block of the new epoch, so e is final at slot first_slot(e+2).
    best_slots = 2 * p.slots_per_epoch
    slots = {e: (t - engine.slot_time_ms(p.first_slot(e))) / p.slot_ms for e, t in watcher.all_ms.items()}
    first = {e: (t - engine.slot_time_ms(p.first_slot(e))) / p.slot_ms for e, t in watcher.first_ms.items()}
    nodes = result.config.nodes
    verdicts = [v for v in result.verdicts if not v.ok]
    final = next(v for v in result.verdicts if v.name.startswith("no conflicting final"))
    last_slot = engine.slot_at(watcher.cluster.now_ms)
    pending = [e for e in range(len(watcher.all_ms) + 1, engine.epoch_of(last_slot) + 1)]
    oldest_pending = (last_slot - p.first_slot(pending[0])) if pending else 0
    if not slots:
        return Figure(BENCHMARK, f"slots to finality, {nodes} validators", float("inf"), "slots",
                      best_slots, "no checkpoint was finalized on every node", 0.0, GOAL_FINALITY,
                      note=f"{result.config.duration_s:g} s simulated; {final.detail}")
    mean = statistics.fmean(slots.values())
    note = (f"{len(slots)} checkpoints (epochs 1-{max(slots)}) finalized on all {nodes} nodes: "
            f"mean {mean:.2f}, max {max(slots.values()):.2f}, min {min(slots.values()):.2f} slots; "
            f"on the first node mean {statistics.fmean(first.values()):.2f}; "
            f"{len(pending)} epochs pending at the end (oldest {oldest_pending} slots old); "
            f"{result.config.duration_s:g} s simulated, {p.slots_per_epoch} slots of {p.slot_ms} ms an epoch, "
            f"{TX_RATE:g} tx/s; {final.detail}")
    if verdicts:
        note += f"; invariants failed: {', '.join(v.name for v in verdicts)} (replay: {result.config.replay_command()})"
    return Figure(BENCHMARK, f"slots to finality, {nodes} validators (mean)", mean, "slots",
                  best_slots, "best case of the consensus-specs rule, votes included the slot after: 2 epochs",
                  best_slots / mean, GOAL_FINALITY, goal_text="limit / mean", note=note)


def simulator_figures(quick: bool) -> list[Figure]:
    figures = []
    # 4 validators (also the warm-up of the simulator code for the timed 16-validator runs).
    small, small_watch, _ = watched_run(pos_config(4, 20.0 if quick else 120.0))
    figures.append(finality_figure(small, small_watch))

    for slot_ms in (1_000, POS_PRESETS["testnet"]["slot_ms"]):
        figures += speed_figures(quick, slot_ms)
    return figures


def speed_figures(quick: bool, slot_ms: int) -> list[Figure]:
    figures = []
    duration_s = 15.0 * slot_ms / 1000 if quick else 60.0  # quick: epoch 1 is final at slot 12
    repeat = 1 if quick else SPEED_REPEAT
    runs: list[tuple[SimResult, FinalityWatcher, float]] = []
    spent = 0.0
    while len(runs) < repeat:
        runs.append(watched_run(pos_config(SPEED_NODES, duration_s, slot_ms)))
        spent += runs[-1][0].wall_s
        if spent + runs[-1][0].wall_s > SPEED_TIME_CAP_S:
            break
    # Same seed, same work: every repetition must have made the same chains.
    assert len({r.digest for r, _, _ in runs}) == 1, "the 16-validator runs of one seed differ"
    best, watch, cpu = min(runs, key=lambda run: run[0].wall_s)
    if slot_ms == 1_000:
        figures.append(finality_figure(best, watch))
    speed = best.simulated_s / best.wall_s
    heights = sorted({n["height"] for n in best.nodes})
    capped = f" (time cap {SPEED_TIME_CAP_S:g} s)" if len(runs) < repeat else ""
    note = (f"{SPEED_NODES} validators, {slot_ms / 1000:g} s slots of 4-slot epochs, {duration_s:g} s simulated, "
            f"{TX_RATE:g} tx/s, best of {len(runs)}{capped}; "
            f"walls {', '.join(f'{r.wall_s:.1f}' for r, _, _ in runs)} s; best {best.wall_s:.2f} s wall, "
            f"{cpu:.2f} s CPU (wall well above CPU means a busy machine); "
            f"{best.events} events, {best.wall_s / best.events * 1e6:.0f} us each; height {heights[-1]}, "
            f"{best.tx_included}/{best.tx_sent} tx included; finality watcher {watch.spent_s * 1e3:.0f} ms of it")
    failed = [v.name for v in best.verdicts if not v.ok]
    if failed:
        note += f"; invariants failed: {', '.join(failed)} (replay: {best.config.replay_command()})"
    slots = "1 s slots (the simulator's)" if slot_ms == 1_000 else f"{slot_ms / 1000:g} s slots (the testnet preset's)"
    figures.append(Figure(BENCHMARK, f"simulator speed, 16 PoS validators, {slots}", speed, "simulated s per wall s",
                          GOAL_SPEED, "the goal itself, fixed, not measured: this figure depends on the machine",
                          speed / GOAL_SPEED, 1.0, goal_text=f"{GOAL_SPEED:g} simulated s per wall s", note=note))
    return figures


# --- 3: attestations -----------------------------------------------------------------------------


def engine_of(tree: BlockTree) -> PosEngine:
    assert isinstance(tree.engine, PosEngine)
    return tree.engine


def sign_vote(tree: BlockTree, head: Entry, slot: int, validator: int) -> Attestation:
    """What honest validator `validator` whose head is `head` signs in `slot`."""
    data = attestation_data(engine_of(tree), head, slot)
    return Attestation(validator, data, validator_key(SEED, validator).sign(data.signing_bytes(tree.chain_id)))


def propose(tree: BlockTree, parent: Entry, slot: int, attestations: list[Attestation]) -> Block:
    """The block the chosen proposer of `slot` makes on `parent`, carrying `attestations`."""
    engine = engine_of(tree)
    chosen = engine.proposer_at(parent.state, slot)
    key = validator_key(SEED, chosen)
    reveal = key.sign(reveal_signing_bytes(tree.chain_id, engine.epoch_of(slot)))
    body = PosBody(chosen, reveal, tuple(attestations))
    block = tree.seal_template(tree.start_template(parent), key.address, engine.slot_time_ms(slot), encode_body(body))
    return block._replace(seal=key.sign(Proposal(chosen, slot, block.header.hash).signing_bytes(tree.chain_id)))


@dataclass
class VoteWork:
    genesis: object
    base: list[Block]  # one block a slot, each with every vote of the slot before
    gossip: list[Attestation]  # votes for the slots after the base, on its head
    included: list[Block]  # after the base, a block every epoch carrying the epoch's votes
    included_votes: int

    def fresh_tree(self) -> BlockTree:
        tree = BlockTree(self.genesis, make_engine(self.genesis))
        for block in self.base:
            tree.add_block(block, FOREVER_MS)
        return tree


def build_vote_work(validators: int, base_slots: int, gossip_slots: int, included_blocks: int) -> VoteWork:
    genesis = make_genesis(consensus="pos", preset="minimal", seed=SEED, accounts=4, validators=validators)
    tree = BlockTree(genesis, make_engine(genesis))
    everyone = range(validators)
    base = []
    for slot in range(1, base_slots + 1):
        head = tree.head
        votes = [sign_vote(tree, head, slot - 1, v) for v in everyone] if slot > 1 else []
        base.append(propose(tree, head, slot, votes))
        tree.add_block(base[-1], FOREVER_MS)
    top = tree.head
    gossip = [sign_vote(tree, top, slot, v) for slot in range(base_slots, base_slots + gossip_slots) for v in everyone]
    # The inclusion path: no block for an epoch's slots but its first, whose votes all sit
    # on the block before; the next epoch's first block carries all of them (the inclusion
    # window is one epoch).
    spe = engine_of(tree).params.slots_per_epoch
    included, count = [], 0
    for n in range(included_blocks):
        head = tree.head
        first = base_slots + n * spe
        votes = [sign_vote(tree, head, slot, v) for slot in range(first, first + spe) for v in everyone]
        included.append(propose(tree, head, first + spe, votes))
        tree.add_block(included[-1], FOREVER_MS)
        assert tree.head.hash == included[-1].hash
        count += len(votes)
    return VoteWork(genesis, base, gossip, included, count)


def vote_figures(quick: bool) -> list[Figure]:
    validators = 64
    base_slots = 8  # two epochs of the minimal preset: justified and finalized checkpoints exist
    gossip_slots = 4 if quick else 8  # 8: two target epochs, so the fork choice takes new latest votes too
    included_blocks = 1 if quick else 4
    repeat = 2 if quick else 7
    work = build_vote_work(validators, base_slots, gossip_slots, included_blocks)
    payloads = [encode_vote(a) for a in work.gossip]
    chain_id = work.genesis.chain_id
    # The limit's inputs are built beforehand: it measures Ed25519 alone.
    keys = {v: Ed25519PublicKey.from_public_bytes(validator_key(SEED, v).public_key) for v in range(validators)}
    triples = [(keys[a.validator], a.signature, a.data.signing_bytes(chain_id)) for a in work.gossip]

    def verify_all() -> None:
        for key, signature, message in triples:
            key.verify(signature, message)

    # Warm up, and check every gossiped vote is accepted (True: verified, pooled, forwarded).
    tree = work.fresh_tree()
    assert all(engine_of(tree).on_vote(tree, p) is True for p in payloads)
    assert len(engine_of(tree).pool.votes) == len(payloads)
    verify_all()

    best = {"verify": float("inf"), "on_vote": float("inf"), "include": float("inf")}
    block_s = float("inf")
    for _ in range(repeat):
        # Every repetition starts from fresh trees (a vote seen once is not checked again),
        # built before the clock starts; the three are timed in turns.
        gossip_tree, include_tree = work.fresh_tree(), work.fresh_tree()
        engine = engine_of(gossip_tree)
        best["verify"] = min(best["verify"], time_once(verify_all))
        # consensus.crypto.verify memoises its answers; each path starts with none, as a
        # node does for votes it has never seen.
        crypto_verify.cache_clear()
        best["on_vote"] = min(best["on_vote"], time_once(lambda: [engine.on_vote(gossip_tree, p) for p in payloads]))
        crypto_verify.cache_clear()
        took = time_once(lambda: [include_tree.add_block(b, FOREVER_MS) for b in work.included])
        assert include_tree.head.hash == work.included[-1].hash
        best["include"] = min(best["include"], took)
        block_s = min(block_s, took / len(work.included))
    n = len(payloads)
    verify_rate = n / best["verify"]
    on_vote_rate = n / best["on_vote"]
    include_rate = work.included_votes / best["include"]
    limit_name = "raw Ed25519 verifications/s of the same signatures, this run"
    sizes = (f"{validators} validators, {n} votes ({gossip_slots} slots x {validators}) on a {base_slots}-block chain, "
             f"best of {repeat}")
    return [
        Figure(BENCHMARK, "attestations through on_vote (gossip)", on_vote_rate, "votes/s",
               verify_rate, limit_name, on_vote_rate / verify_rate, GOAL_VOTES,
               note=f"{best['on_vote'] / n * 1e6:.1f} us per vote, of which Ed25519 {best['verify'] / n * 1e6:.1f} us; "
                    f"{sizes}"),
        Figure(BENCHMARK, "attestations included in blocks (context)", include_rate, "votes/s",
               verify_rate, limit_name, include_rate / verify_rate,
               note=f"{work.included_votes} votes in {len(work.included)} blocks of "
                    f"{work.included_votes // len(work.included)} through BlockTree.add_block (validation, state "
                    f"transition, fork choice, detector), {best['include'] / work.included_votes * 1e6:.1f} us "
                    f"per vote, {block_s * 1e3:.1f} ms per block"),
    ]


def main(quick: bool = False) -> list[Figure]:
    return simulator_figures(quick) + vote_figures(quick)


if __name__ == "__main__":
    cli(BENCHMARK, main, __doc__.split("\n")[0])
