"""Proof of stake in the simulator: the real node code (duties, gossip of votes, slashing
protection in the store) on a virtual clock, with partitions, crashes and byzantine
validators. Verdicts are on finalized checkpoints, stakes and heads."""

import pytest

from consensus.presets import make_genesis, validator_key
from sim.cluster import Cluster
from sim.scenario import SimConfig, run_simulation

SLOT_MS = 1_000
EPOCH_MS = 4 * SLOT_MS  # the minimal preset: 4 slots an epoch


def pos_cluster(nodes: int = 4, seed: int = 1) -> Cluster:
    genesis = make_genesis(consensus="pos", preset="minimal", seed=f"pos-sim-{seed}", accounts=4, validators=nodes)
    keys = [validator_key(f"pos-sim-{seed}", i) for i in range(nodes)]
    return Cluster(genesis, nodes, seed, hashrates=[0.0] * nodes, validator_keys=keys)


def finalized(cluster: Cluster, index: int):
    core = cluster.nodes[index].core
    return core.tree.head.state.engine.ffg.finalized


def final_entry(cluster: Cluster, index: int):
    tree = cluster.nodes[index].core.tree
    return tree.canonical[tree.final_height]


def slashed(cluster: Cluster, index: int) -> list[int]:
    return cluster.nodes[index].core.tree.head.state.engine.slashed()


def test_everyone_online_finalizes_every_epoch():
    cluster = pos_cluster()
    cluster.run_until(cluster.now_ms + 40_000)
    for i in range(4):
        core = cluster.nodes[i].core
        epoch = core.tree.head.state.engine.epoch
        assert finalized(cluster, i).epoch >= epoch - 2, (i, epoch, finalized(cluster, i))
        assert core.votes_made >= 35  # one vote a slot
    assert len({final_entry(cluster, i).hash for i in range(4)}) == 1
    assert sum(cluster.nodes[i].core.blocks_proposed for i in range(4)) >= 38  # a block nearly every slot


def test_a_two_two_partition_finalizes_nothing_conflicting_and_resumes_after_the_heal():
    cluster = pos_cluster(seed=2)
    cluster.run_until(cluster.now_ms + 12_000)
    before = [final_entry(cluster, i).height for i in range(4)]
    cluster.network.partition([[0, 1], [2, 3]])
    cluster.run_until(cluster.now_ms + 30_000)
    during = [final_entry(cluster, i) for i in range(4)]
    # Half the stake on each side: neither finalizes past what all had agreed before.
    assert all(e.height <= max(before) + EPOCH_MS // SLOT_MS for e in during)
    low = min(during, key=lambda e: e.height)
    for i in range(4):
        tree = cluster.nodes[i].core.tree
        assert tree.canonical[low.height].hash == low.hash, "conflicting final blocks"
    cluster.network.heal_partitions()
    cluster.run_until(cluster.now_ms + 40_000)
    after = [final_entry(cluster, i) for i in range(4)]
    assert len({e.hash for e in after}) == 1
    assert after[0].height > max(e.height for e in during) + 8, "finality did not resume after the heal"


def test_a_validator_that_double_votes_is_slashed_on_every_honest_node():
    result = run_simulation(SimConfig(consensus="pos", nodes=4, seed=5, duration_s=60, byzantine={1: ("double-vote",)}))
    assert result.ok, [v for v in result.verdicts if not v.ok]
    views_slashed = [v for v in result.verdicts if v.name == "no honest validator slashed"][0].detail
    assert "slashed: [1]" in views_slashed


@pytest.mark.parametrize("switch", ["double-vote", "surround-vote", "double-propose"])
def test_each_byzantine_switch_gets_its_validator_slashed_everywhere(switch):
    cluster_config = SimConfig(consensus="pos", nodes=4, seed=7, duration_s=45, byzantine={2: (switch,)})
    result = run_simulation(cluster_config)
    assert result.ok, [(v.name, v.detail) for v in result.verdicts if not v.ok]
    detail = [v for v in result.verdicts if v.name == "no honest validator slashed"][0].detail
    assert detail.startswith("slashed: [2];"), detail


def test_a_validator_killed_and_restarted_is_never_slashed_and_keeps_voting():
    cluster = pos_cluster(seed=3)
    cluster.run_until(cluster.now_ms + 10_500)
    cluster.crash(1)
    cluster.run_until(cluster.now_ms + 3_000)
    assert cluster.nodes[1].store.protection is not None  # it had signed, and stored that first
    cluster.restart(1)
    cluster.run_until(cluster.now_ms + 30_000)
    assert all(slashed(cluster, i) == [] for i in range(4))
    assert cluster.nodes[1].core.votes_made > 10
    assert len({final_entry(cluster, i).hash for i in range(4)}) == 1


def test_with_half_the_stake_offline_the_inactivity_leak_lets_finality_resume():
    cluster = pos_cluster(seed=4)
    cluster.run_until(cluster.now_ms + 8_500)
    cluster.crash(2)
    cluster.crash(3)
    stalled = final_entry(cluster, 0).height
    cluster.run_until(cluster.now_ms + 20_000)
    assert final_entry(cluster, 0).height <= stalled + EPOCH_MS // SLOT_MS  # half the stake: stalled
    cluster.run_until(cluster.now_ms + 80_000)
    state = cluster.nodes[0].core.tree.head.state.engine
    assert all(state.validators[i].stake < 32_000_000 for i in (2, 3))  # the offline ones leaked
    assert final_entry(cluster, 0).height > stalled + 20, "finality did not resume under the leak"
    assert final_entry(cluster, 0).hash == final_entry(cluster, 1).hash


SEEDS = range(1, 21)


@pytest.mark.slow
@pytest.mark.parametrize("seed", SEEDS)
def test_swarm_of_seeds_with_faults_keeps_every_invariant(seed):
    result = run_simulation(SimConfig(consensus="pos", nodes=4, seed=seed, duration_s=120,
                                      faults=("crash", "delay", "duplicate", "loss", "partition")))
    assert result.ok, (result.config.replay_command(), [(v.name, v.detail) for v in result.verdicts if not v.ok])


@pytest.mark.parametrize("seed", [11, 12])
def test_a_few_seeds_with_faults_keep_every_invariant(seed):
    result = run_simulation(SimConfig(consensus="pos", nodes=4, seed=seed, duration_s=90,
                                      faults=("crash", "partition", "loss")))
    assert result.ok, (result.config.replay_command(), [(v.name, v.detail) for v in result.verdicts if not v.ok])


def test_consensus_rpc_reports_checkpoints_validators_and_refuses_mining():
    cluster = pos_cluster(seed=6)
    cluster.run_until(cluster.now_ms + 20_000)

    def call(method, params=()):
        rid = cluster.rpc(0, method, list(params))
        return cluster.replies[rid]

    status = call("consensus_status").result
    state = cluster.nodes[0].core.tree.head.state.engine
    assert status["engine"] == "pos" and status["finalized"]["epoch"] == state.ffg.finalized.epoch >= 2
    assert status["participation"] == 1.0 and status["annual_yield_estimate"] > 0
    head = call("chain_getHead").result
    assert head["justified"]["epoch"] == state.ffg.current_justified.epoch
    assert head["final_height"] == cluster.nodes[0].core.tree.final_height > 0
    validators = call("consensus_validators").result
    assert [v["status"] for v in validators] == ["active"] * 4 and all(not v["slashed"] for v in validators)
    assert call("consensus_slashings").result == {"included": [], "pending_evidence": []}
    assert call("miner_generate", [1]).error[1].startswith("this is a pos chain")
