"""Byzantine proof-of-work nodes: a selfish miner ("withhold") and a spammer ("spam"),
the node core's own switches (node/byzantine.py), and the settings that name them.

What: a selfish miner with a third of the hashrate keeps its blocks private (not
gossiped, not in its head summary, not served), releases them when the public chain
comes within one block, and makes honest nodes reorganise, while every invariant of
the run holds; a spammer is banned by every honest node while the chain goes on and
no honest node bans another; unknown switch names are refused with a clear message.

How: whole runs in the simulator (run_simulation, or a Cluster driven by hand) from
fixed seeds, compared where useful with the same run without the switch; the race
rules step by step with NodeCores wired by hand (tests/test_core_protocol.py's Net,
where a MinerReport for the current work stands for a found nonce and time only
moves by explicit Tick).
"""

import random
from dataclasses import replace
from pathlib import Path

import pytest

from consensus.pow.difficulty import compact_to_target, work_of_target
from consensus.presets import make_genesis
from node.byzantine import CORE_SWITCHES, SPAM_INTERVAL_MS
from node.core import MinerReport, NodeConfig, NodeCore, Tick
from node.settings import BYZANTINE_BEHAVIOURS, Settings, SettingsError, load_settings
from p2p.messages import Blocks, GetBlocksByHash, GetBlocksByRange
from sim.cluster import Cluster, default_config
from sim.scenario import PeerWatch, SimConfig, check_byzantine_penalised, run_simulation
from test_core_protocol import GENESIS, START_MS, Net, RawPeer, address, node_key

SELFISH = 3  # the byzantine node in the simulated runs


def third_for_node_3(seed: int) -> list[float]:
    """Hashrates for run_simulation's genesis: node 3 has 1/3 of the total, the rest 2/9 each."""
    g = make_genesis(consensus="pow", preset="minimal", seed=f"sim-{seed}", accounts=16,
                     overrides={"target_spacing_ms": 1_000})
    total = work_of_target(compact_to_target(g.param_dict["genesis_bits"])) * 1000 / g.param_dict["target_spacing_ms"]
    return [total * 2 / 9] * 3 + [total / 3]


def failed(result) -> list[tuple[str, str]]:
    return [(v.name, v.detail) for v in result.verdicts if not v.ok]


def verdict(result, name: str):
    (found,) = [v for v in result.verdicts if v.name == name]
    return found


# --- withhold: a whole run ------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [1, 3])
def test_a_selfish_miner_with_a_third_of_the_hashrate_releases_and_forces_honest_reorgs(seed):
    config = SimConfig(nodes=4, seed=seed, duration_s=60, hashrates=third_for_node_3(seed),
                       byzantine={SELFISH: ("withhold",)})
    result = run_simulation(config)
    assert not failed(result), (failed(result), config.replay_command())
    selfish = result.nodes[SELFISH]["selfish"]
    assert selfish["releases"] >= 1 and selfish["blocks_released"] >= 1
    assert selfish["withheld"] == 0  # all out once it stopped mining: the heads agree
    assert "withhold node3: mined" in verdict(result, "byzantine peers penalised").detail
    honest_reorgs = [n["reorgs"] for n in result.nodes if n["node"] != SELFISH]
    assert min(honest_reorgs) >= 1, honest_reorgs
    # The same run with node 3 honest: its releases are what made the honest nodes reorganise.
    honest_run = run_simulation(replace(config, byzantine={}))
    assert not failed(honest_run)
    assert sum(honest_reorgs) > sum(n["reorgs"] for n in honest_run.nodes if n["node"] != SELFISH)


# --- withhold: the rules, step by step --------------------------------------------------------------


def withholding_pair() -> Net:
    """Node 0 mines selfishly (continuous mining on, so the strategy runs); node 1 is honest."""
    net = Net(2)
    net.nodes[0] = NodeCore(GENESIS, node_key(0), NodeConfig(listen_address=address(0), mining_enabled=True,
                                                             byzantine=frozenset({"withhold"})),
                            random.Random(0), START_MS, skip_pow_check_for_simulation=True)
    net.connect(0, 1)
    return net


def find_block(net: Net, i: int) -> str:
    """Node i's miner finds a nonce for its current work; returns the new head's hash."""
    work = net.mining[i]
    assert work is not None
    net.step(i, MinerReport(work.work_id, 0, 1))
    net.run()
    return net.head(i)


def test_a_withheld_block_is_not_gossiped_announced_or_served():
    net = withholding_pair()
    private = find_block(net, 0)
    core = net.nodes[0]
    assert core.tree.head.height == 1 and core.blocks_mined == 1
    assert net.height(1) == 0, "the withheld block reached the honest peer"
    assert core.head_summary().height == 0  # what Status and a new handshake announce
    net.tick(START_MS + 5_000)  # Status rounds: still nothing
    assert net.height(1) == 0
    raw = RawPeer(net, 0)
    raw.events.clear()
    raw.send(GetBlocksByRange(1, 1, 10), GetBlocksByHash(2, (bytes.fromhex(private),)))
    answers = [e.message for e in raw.events if isinstance(getattr(e, "message", None), Blocks)]
    assert [(b.request_id, b.blocks) for b in answers] == [(1, ()), (2, ())]


def test_lead_one_caught_up_starts_a_race_that_the_next_private_block_wins():
    net = withholding_pair()
    first = find_block(net, 0)
    public = net.mine(1)  # the honest node finds a block at the same height: lead 0
    selfish = net.nodes[0].selfish
    assert selfish.releases == 1 and selfish.blocks_released == 1
    assert bytes.fromhex(first) in net.nodes[1].tree.entries  # released: the honest node has it ...
    assert net.head(1) == public and net.head(0) == first  # ... and each side keeps the block it saw first
    second = find_block(net, 0)  # extends the released branch: published at once, it wins the race
    assert selfish.releases == 2 and selfish.private == []
    assert net.head(1) == second and net.nodes[1].reorgs == 1


def test_lead_two_caught_up_to_one_releases_the_branch_which_wins_on_work():
    net = withholding_pair()
    find_block(net, 0)
    tip = find_block(net, 0)
    assert net.height(1) == 0 and net.nodes[0].selfish.lead(net.nodes[0].tree) == 2
    net.mine(1)  # the public chain is now one block behind: everything goes out
    assert net.nodes[0].selfish.blocks_released == 2
    assert net.head(1) == tip and net.height(1) == 2
    assert net.nodes[1].reorgs == 1 and net.nodes[1].deepest_reorg == 1


def test_a_selfish_miner_that_stops_mining_releases_what_it_withheld():
    net = withholding_pair()
    tip = find_block(net, 0)
    assert net.height(1) == 0
    net.rpc(0, "miner_stop")
    assert net.head(1) == tip


# --- spam ----------------------------------------------------------------------------------------------


def test_a_spamming_peer_is_banned_and_the_honest_node_keeps_going():
    net = Net(2)
    net.nodes[0] = NodeCore(GENESIS, node_key(0), NodeConfig(listen_address=address(0), byzantine=frozenset({"spam"})),
                            random.Random(0), START_MS, skip_pow_check_for_simulation=True)
    net.connect(0, 1)
    spammer = net.nodes[0].node_id
    assert spammer in net.ready_peer_ids(1)
    net.tick(START_MS + SPAM_INTERVAL_MS)
    honest = net.nodes[1]
    assert honest.scores.is_banned(spammer, honest.now_ms)
    assert spammer not in net.ready_peer_ids(1)
    assert honest.invalid_blocks_seen == 1  # the block was judged and refused, not parked
    net.mine(1)
    assert net.height(1) == 1


def spam_cluster(seed: int) -> Cluster:
    g = make_genesis(seed=f"spam-{seed}", accounts=4)
    total = work_of_target(compact_to_target(g.param_dict["genesis_bits"])) * 1000 / g.param_dict["target_spacing_ms"]

    def config_for(i: int, addresses: list[str]) -> NodeConfig:
        return replace(default_config(i, addresses), byzantine=frozenset({"spam"}) if i == SELFISH else frozenset())

    return Cluster(g, 4, seed, hashrates=[total / 4] * 4, config_for=config_for)


@pytest.mark.parametrize("seed", [2, 9])
def test_every_honest_node_bans_a_spammer_and_the_chain_advances(seed):
    cluster = spam_cluster(seed)
    honest = [n for n in cluster.nodes if n.index != SELFISH]
    spammer = cluster.nodes[SELFISH].core.node_id
    honest_ids = {n.core.node_id for n in honest} | {n.address for n in honest}
    banned_by: set[int] = set()
    height_at_start = min(n.core.tree.head.height for n in honest)
    for _ in range(60):  # 30 s in half-second samples: bans last ban_ms (60 s), so none expires meanwhile
        cluster.run_until(cluster.now_ms + 500)
        for n in honest:
            bans = n.core.scores.bans
            banned_by |= {n.index} if spammer in bans else set()
            assert not honest_ids & set(bans), f"node {n.index} banned an honest peer: {bans}"
    assert banned_by == {n.index for n in honest}
    assert min(n.core.tree.head.height for n in honest) >= height_at_start + 15, "the chain stalled"
    assert all(any(p.ready for p in n.core.peers.values()) for n in honest)


def test_a_run_with_a_spammer_keeps_every_invariant_and_says_who_penalised_it():
    config = SimConfig(nodes=4, seed=4, duration_s=60, byzantine={SELFISH: ("spam",)})
    result = run_simulation(config)
    assert not failed(result), (failed(result), config.replay_command())
    assert verdict(result, "byzantine peers penalised").detail == "spam node3 penalised by [0, 1, 2]"
    assert verdict(result, "faulted peers can rejoin").ok
    assert min(n["height"] for n in result.nodes if n["node"] != SELFISH) >= 30


def test_the_penalised_verdict_fails_when_an_honest_node_never_penalised_the_spammer():
    config = SimConfig(nodes=4, seed=4, duration_s=60, byzantine={SELFISH: ("spam",)})
    cluster = spam_cluster(4)
    watch = PeerWatch(cluster, {0, 1, 2})
    watch.penalised = {(0, SELFISH), (2, SELFISH)}
    outcome = check_byzantine_penalised(watch, cluster, config.byzantine, None)
    assert not outcome.ok and outcome.detail == "not penalised: node3 by node1"


# --- settings ------------------------------------------------------------------------------------


def test_settings_take_the_new_switch_names(tmp_path: Path):
    Settings(byzantine=("withhold", "spam")).validate()
    assert load_settings(tmp_path, {"CHAINLAB_BYZANTINE": "withhold, spam"}, {}).byzantine == ("withhold", "spam")
    assert CORE_SWITCHES <= set(BYZANTINE_BEHAVIOURS)
    assert load_settings(tmp_path, {}, {}).byzantine == ()  # honest by default
    assert NodeConfig().byzantine == frozenset()


@pytest.mark.parametrize("names", ["selfish", "withhold,spamm", "Spam"])
def test_settings_refuse_unknown_switch_names_clearly(tmp_path: Path, names: str):
    with pytest.raises(SettingsError) as err:
        load_settings(tmp_path, {}, {"byzantine": names})
    message = str(err.value)
    assert "byzantine: unknown behaviour(s)" in message
    assert "double-propose, double-vote, surround-vote, withhold, spam" in message
    assert "withhold'" not in message  # the valid name is not blamed


def test_a_validator_takes_the_core_switches_and_refuses_unknown_ones():
    producer = pytest.importorskip("consensus.pos.producer")
    from consensus.engine import make_engine
    from consensus.presets import validator_key

    g = make_genesis(consensus="pos", preset="minimal", seed="byz-pow", accounts=2, validators=2)
    engine = make_engine(g)
    key = validator_key("byz-pow", 0)
    assert engine.make_producer(key, None, frozenset({"spam", "withhold", "double-vote"})) is not None
    with pytest.raises(ValueError, match="unknown byzantine switch"):
        producer.Producer(engine, key, None, frozenset({"spam", "sleep"}))
    # A proof-of-stake node with the core's switches runs: nothing to withhold, junk to send.
    core = NodeCore(g, node_key(5), NodeConfig(byzantine=frozenset({"withhold", "spam"})), random.Random(5),
                    g.timestamp_ms + 500, validator_key=key)
    assert core.selfish is None and core.spammer is not None
    core.step(Tick(g.timestamp_ms + 5_000))
    assert core.spammer.rounds == 1
