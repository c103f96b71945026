"""testnet.observe: ChainViews and head samples of real nodes over JSON-RPC.

A node runtime runs in-process (real TCP and RPC on 127.0.0.1, as in test_runtime.py),
so the ChainView fetched over RPC can be compared with `sim.invariants.view_of_core`
of the very same core: the checks a chaos run makes over RPC are then the simulator's
checks on the simulator's data. A sampler pointed at a dead port and at a server that
never answers (a paused node) records gaps and keeps going.
"""

import asyncio
import time
from pathlib import Path

import pytest

from consensus.presets import account_key
from node.cli_tools import build_transfer
from node.homes import create_network
from node.settings import COOKIE_FILE
from sim.invariants import (
    check_final_never_decreases,
    check_heads_agree,
    check_identical_at_equal_heights,
    check_no_double_apply,
    check_supply,
    view_of_core,
)
from testnet.observe import (
    BlockCache,
    Clients,
    DeepTracker,
    HeightSampler,
    NodeHandle,
    ObserveError,
    fetch_view,
)
from test_runtime import runtime_for, wait_for

SEED = "observe"


class Running:
    """One runtime in this event loop, stopped in __aexit__ whatever happened."""

    def __init__(self, home: Path, **flags):
        self.runtime = runtime_for(home, bootstrap="", **flags)  # alone: no peers to dial
        self.home = home

    async def __aenter__(self) -> "Running":
        self.task = asyncio.create_task(self.runtime.run())
        await asyncio.wait_for(self.runtime.started.wait(), 20)
        self.node = NodeHandle("node0", f"http://127.0.0.1:{self.runtime.rpc_port}", self.home)
        return self

    async def __aexit__(self, *exc) -> None:
        self.runtime.request_stop()
        await asyncio.wait_for(self.task, 20)


async def send_transfers(clients: Clients, node: NodeHandle, chain_id: str, count: int) -> list[str]:
    txids = []
    for i in range(count):
        key = account_key(SEED, i % 2)
        account = await clients.call(node, "chain_getAccount", key.address.hex())
        tx = build_transfer(key, chain_id, account_key(SEED, 2).address, 100 + i, 5,
                            account["nonce"] + account["pending"])
        txids.append(await clients.call(node, "tx_send", tx.encode().hex()))
    return txids


async def test_view_over_rpc_equals_view_of_core_pow(tmp_path: Path) -> None:
    genesis = create_network(tmp_path, nodes=1, accounts=3, seed=SEED, preset="minimal", mining=False)
    clients = Clients()
    try:
        async with Running(tmp_path / "node0", mining="false") as run:
            core = run.runtime.core
            await clients.call(run.node, "miner_generate", 2, privileged=True)
            txids = await send_transfers(clients, run.node, genesis.chain_id, 5)
            await clients.call(run.node, "miner_generate", 3, privileged=True)
            cache = BlockCache()
            view = await fetch_view(clients, run.node, cache)
            expected = view_of_core("node0", core)
            assert view == expected
            assert {bytes.fromhex(t) for t in txids} <= {t for txids in view.txids for t in txids}
            assert view.height == 5 and len(cache) == 6
            # A second snapshot after more blocks asks only for the new ones.
            await clients.call(run.node, "miner_generate", 1, privileged=True)
            again = await fetch_view(clients, run.node, cache)
            assert again == view_of_core("node0", core) and len(cache) == 7
            for check in (check_supply, check_no_double_apply, check_heads_agree):
                assert check([again]).ok
            assert check_identical_at_equal_heights([view, again], 0).ok
            # The sampler and the deep-transaction tracker on the same node.
            sampler = HeightSampler(clients, [run.node])
            samples = await sampler.sample_once()
            assert samples["node0"].height == 6 and samples["node0"].head == core.tree.head.hash.hex()
            tracker = DeepTracker(clients, [run.node], cache, k=2, finalized=False)
            await tracker.scan(samples)
            assert tracker.scanned["node0"] == 5  # heights 0..4 are at least 2 below the head (6)
            assert {bytes.fromhex(t) for t in txids} <= set(tracker.deep)
    finally:
        await clients.close()


async def test_view_over_rpc_equals_view_of_core_pos(tmp_path: Path) -> None:
    # One validator, 1 s slots: blocks keep coming, so compare when the core's head is the
    # head the snapshot names (the snapshot is consistent whatever the node does meanwhile).
    create_network(tmp_path, consensus="pos", nodes=1, accounts=3, seed=SEED, preset="minimal")
    clients = Clients()
    try:
        async with Running(tmp_path / "node0") as run:
            core = run.runtime.core
            await wait_for(lambda: core.tree.head.height >= 3, 30, "three proposed blocks")
            cache = BlockCache()
            deadline = time.monotonic() + 30
            while True:
                view = await fetch_view(clients, run.node, cache)
                expected = view_of_core("node0", core)
                if expected.hashes[-1] == view.hashes[-1] or time.monotonic() > deadline:
                    break
            assert view == expected
            assert view.expected_issued > view.issued - 1 and "slashed" in view.extra
            sample = (await HeightSampler(clients, [run.node]).sample_once())["node0"]
            assert sample.finalized_epoch is not None and sample.final_height is not None
    finally:
        await clients.close()


async def test_sampler_records_gaps_for_dead_and_silent_nodes() -> None:
    # A closed port (a killed node) and a server that accepts but never answers (a
    # paused node): both are gaps, each sample round stays within its timeout.
    silent = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    silent_port = silent.sockets[0].getsockname()[1]
    probe = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    dead_port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()
    clients = Clients()
    nodes = [NodeHandle("dead", f"http://127.0.0.1:{dead_port}"), NodeHandle("silent", f"http://127.0.0.1:{silent_port}")]
    try:
        sampler = HeightSampler(clients, nodes, interval_s=0.1, timeout_s=0.3)
        stop = asyncio.Event()
        task = asyncio.create_task(sampler.run(stop))
        await wait_for(lambda: len(sampler.samples["silent"]) >= 3, 10, "three sample rounds")
        stop.set()
        await asyncio.wait_for(task, 5)
        timeline = sampler.heights_timeline()
        assert all(h is None for series in timeline.values() for _, h in series)
        assert sampler.last("dead") is None
        with pytest.raises(ObserveError, match="dead"):
            await fetch_view(clients, nodes[0], BlockCache(), timeout_s=2)
        with pytest.raises(ObserveError, match="silent"):
            await fetch_view(clients, nodes[1], BlockCache(), timeout_s=1)
    finally:
        await clients.close()
        silent.close()


def test_final_never_decreases_check() -> None:
    assert check_final_never_decreases({"node0": [0, 0, 4, 4, 8], "node1": []}).ok
    verdict = check_final_never_decreases({"node0": [0, 4], "node1": [0, 8, 4]})
    assert not verdict.ok and "node1: final height went back from 8 to 4" in verdict.detail


def test_cookie_token_is_read_from_the_home(tmp_path: Path) -> None:
    (tmp_path / COOKIE_FILE).write_text("ab" * 32 + "\n")
    assert NodeHandle("n", "http://127.0.0.1:1", tmp_path).token() == "ab" * 32
    assert NodeHandle("n", "http://127.0.0.1:1", tmp_path / "missing").token() is None
