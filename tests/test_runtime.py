"""The asyncio shell in-process: settings precedence, network homes, two runtimes over
real TCP on 127.0.0.1 (mining, sync, RPC, clean shutdown, resume from the store).

Real multi-process testnets are in test_realnet.py; these run in one event loop so a
failure shows a traceback from the runtime itself.
"""

import asyncio
import dataclasses
import inspect
import io
import json
import time
from pathlib import Path

import aiohttp
import pytest

from consensus.presets import validator_key
from node.core import NodeConfig, NodeCore
from node.homes import STAKE_DEFAULT, create_network
from node.logs import configure, node_logger
from node.runtime import NodeRuntime, StartupError
from node.settings import (
    BYZANTINE_BEHAVIOURS,
    COOKIE_FILE,
    STORE_FILE,
    VALIDATOR_KEY_FILE,
    Settings,
    SettingsError,
    load_settings,
    read_genesis,
    read_key,
    read_validator_key,
    settings_toml,
)
from node.store import SqliteStore

# The runtime is written against the proof-of-stake core contract (NodeCore takes
# validator_key and stored_protection, NodeConfig has byzantine). Where node/core.py
# does not have it yet, the tests that start a runtime's core skip instead of failing.
POS_CORE = ("validator_key" in inspect.signature(NodeCore).parameters
            and "byzantine" in {f.name for f in dataclasses.fields(NodeConfig)})
needs_pos_core = pytest.mark.skipif(
    not POS_CORE, reason="node/core.py does not take validator_key/stored_protection and NodeConfig.byzantine "
                         "yet (the PoS core contract the runtime is written against)")

# --- settings -------------------------------------------------------------------------


def test_settings_precedence_file_then_environment_then_flags(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text(settings_toml(Settings(name="a", p2p_port=1000, rpc_port=2000,
                                                                  bootstrap=("h:1",))))
    s = load_settings(tmp_path, {"CHAINLAB_P2P_PORT": "1001", "CHAINLAB_BOOTSTRAP": "x:1, y:2",
                                 "CHAINLAB_MINING": "yes"}, {"rpc_port": 2002, "p2p_port": None})
    assert (s.name, s.p2p_port, s.rpc_port, s.bootstrap, s.mining) == ("a", 1001, 2002, ("x:1", "y:2"), True)
    assert load_settings(tmp_path, {}, {}).p2p_port == 1000


@pytest.mark.parametrize("text, message", [
    ("p2p_port = 70000\n", "port number"),
    ("colour = 'red'\n", "unknown setting 'colour'"),
    ("hashrate = 'fast'\n", "hashrate"),
    ("bootstrap = ['nohostport']\n", "host:port"),
    ("p2p_port = \n", "cannot read"),
])
def test_bad_settings_say_what_is_wrong(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "config.toml").write_text(text)
    with pytest.raises(SettingsError, match=message):
        load_settings(tmp_path, {}, {})


def test_byzantine_setting_from_file_environment_and_flags(tmp_path: Path) -> None:
    assert load_settings(tmp_path, {}, {}).byzantine == ()  # honest by default
    (tmp_path / "config.toml").write_text(settings_toml(Settings(byzantine=("double-vote",))))
    assert load_settings(tmp_path, {}, {}).byzantine == ("double-vote",)
    s = load_settings(tmp_path, {"CHAINLAB_BYZANTINE": "double-propose, surround-vote"}, {})
    assert s.byzantine == ("double-propose", "surround-vote")
    assert load_settings(tmp_path, {"CHAINLAB_BYZANTINE": "double-propose"}, {"byzantine": ""}).byzantine == ()


@pytest.mark.parametrize("environ, flags, message", [
    ({}, {"byzantine": "double-vote,tripple-vote"}, "byzantine: unknown behaviour(s) 'tripple-vote'; choose from "
                                                    "double-propose, double-vote, surround-vote"),
    ({"CHAINLAB_BYZANTINE": "evil"}, {}, "unknown behaviour(s) 'evil'"),
])
def test_bad_byzantine_name_is_a_clear_error(tmp_path: Path, environ, flags, message: str) -> None:
    with pytest.raises(SettingsError) as err:
        load_settings(tmp_path, environ, flags)
    assert message in str(err.value)


def test_byzantine_in_config_must_be_a_list_of_names(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text("byzantine = 3\n")
    with pytest.raises(SettingsError, match="byzantine = 3 is not a valid comma-separated list"):
        load_settings(tmp_path, {}, {})
    (tmp_path / "config.toml").write_text('byzantine = ["double-vote", "nap"]\n')
    with pytest.raises(SettingsError, match="unknown behaviour.*'nap'"):
        load_settings(tmp_path, {}, {})


def test_byzantine_names_match_the_producer() -> None:
    producer = pytest.importorskip("consensus.pos.producer")
    assert set(BYZANTINE_BEHAVIOURS) == set(producer.BYZANTINE_SWITCHES)


def test_bad_environment_variable_is_named(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="CHAINLAB_RPC_PORT"):
        load_settings(tmp_path, {"CHAINLAB_RPC_PORT": "eighty"}, {})


def test_create_network_writes_consistent_homes(tmp_path: Path) -> None:
    genesis = create_network(tmp_path / "net", nodes=3, accounts=2, seed="s", p2p_port_base=4000, rpc_port_base=5000)
    accounts = json.loads((tmp_path / "net" / "accounts.json").read_text())
    assert [a["index"] for a in accounts] == [0, 1]
    assert all(read_key(Path(a["key_file"])).address.hex() == a["address"] for a in accounts)
    assert dict(genesis.allocations)[bytes.fromhex(accounts[1]["address"])] == accounts[1]["balance"]
    for i in range(3):
        home = tmp_path / "net" / f"node{i}"
        s = load_settings(home, {}, {})
        assert (s.p2p_port, s.rpc_port, s.advertise) == (4000 + i, 5000 + i, f"127.0.0.1:{4000 + i}")
        assert f"127.0.0.1:{4000 + i}" not in s.bootstrap and len(s.bootstrap) == 2
        assert read_genesis(home / "genesis.json").hash == genesis.hash
    assert len({read_key(tmp_path / "net" / f"node{i}" / "node.key").public_key for i in range(3)}) == 3
    with pytest.raises(SettingsError, match="already holds a network"):
        create_network(tmp_path / "net", nodes=1)


def test_create_network_pos_writes_validator_keys_in_genesis_order(tmp_path: Path) -> None:
    genesis = create_network(tmp_path / "net", consensus="pos", nodes=3, accounts=1, seed="v", stake=5_000_000)
    assert genesis.consensus == "pos" and genesis.param_dict["slot_ms"] == 2_000  # the testnet preset
    assert [stake for _, stake in genesis.validators] == [5_000_000] * 3
    for i in range(3):
        home = tmp_path / "net" / f"node{i}"
        key = read_validator_key(home)
        assert key is not None and key.public_key == genesis.validators[i][0] == validator_key("v", i).public_key
        assert (home / VALIDATOR_KEY_FILE).stat().st_mode & 0o777 == 0o600
        assert load_settings(home, {}, {}).mining is False  # no miner under proof of stake
        assert read_genesis(home / "genesis.json").hash == genesis.hash
    default = create_network(tmp_path / "d", consensus="pos", nodes=1, accounts=0)
    assert default.validators[0][1] == STAKE_DEFAULT == 32_000_000
    # Proof of work: no validators, no validator keys.
    pow_genesis = create_network(tmp_path / "pow", nodes=1, accounts=0)
    assert pow_genesis.validators == () and read_validator_key(tmp_path / "pow" / "node0") is None
    assert load_settings(tmp_path / "pow" / "node0", {}, {}).mining is True


def test_create_network_pos_refuses_a_stake_below_the_minimum(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="--stake must be at least the preset's stake_min, 1000000, not 5"):
        create_network(tmp_path / "net", consensus="pos", nodes=1, stake=5)
    assert not (tmp_path / "net" / "genesis.json").exists()


def test_unreadable_validator_key_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / VALIDATOR_KEY_FILE).write_text("12" * 31)
    with pytest.raises(SettingsError, match="must hold 64 hex characters.*it is this node's validator key"):
        read_validator_key(tmp_path)
    (tmp_path / VALIDATOR_KEY_FILE).unlink()
    (tmp_path / VALIDATOR_KEY_FILE).mkdir()
    with pytest.raises(SettingsError, match="cannot read the key file"):
        read_validator_key(tmp_path)


def test_unreadable_key_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "k").write_text("not hex")
    with pytest.raises(SettingsError, match="64 hex characters"):
        read_key(tmp_path / "k")
    with pytest.raises(SettingsError, match="cannot read the key file"):
        read_key(tmp_path / "missing")


# --- two runtimes over TCP ----------------------------------------------------------------


async def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}; last value {value!r}")


def runtime_for(home: Path, **flags) -> NodeRuntime:
    settings = load_settings(home, {}, {"p2p_port": 0, "rpc_port": 0, **flags})
    key = read_key(home / "node.key")
    configure("info", io.StringIO())
    return NodeRuntime(home, settings, read_genesis(home / "genesis.json"), key, node_logger(settings.name, "t"),
                       handle_signals=False, validator_key=read_validator_key(home))


async def rpc(runtime: NodeRuntime, method: str, *params, token: str | None = None):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as session:
        async with session.post(f"http://127.0.0.1:{runtime.rpc_port}/", headers=headers,
                                json={"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)}) as r:
            return await r.json()


@needs_pos_core
async def test_two_runtimes_mine_sync_answer_rpc_and_resume(tmp_path: Path) -> None:
    create_network(tmp_path, nodes=2, accounts=1, seed="rt", preset="minimal")
    a = runtime_for(tmp_path / "node0", bootstrap="", mining="true", hashrate=0)
    task_a = asyncio.create_task(a.run())
    await asyncio.wait_for(a.started.wait(), 10)
    b = runtime_for(tmp_path / "node1", bootstrap=f"127.0.0.1:{a.p2p_port}", mining="false")
    task_b = asyncio.create_task(b.run())
    await asyncio.wait_for(b.started.wait(), 10)
    try:
        await wait_for(lambda: b.core.tree.head.height >= 3 and b.core.tree.canonical[3].hash == a.core.tree.canonical[3].hash,
                       60, "node1 to sync node0's first three blocks")
        head = (await rpc(a, "chain_getHead"))["result"]
        assert head["height"] >= 3 and head["hash"] == a.core.tree.head.hash.hex()
        # Privileged methods need the cookie's token.
        assert (await rpc(b, "miner_generate", 1))["error"]["code"] == -32001
        token = (tmp_path / "node1" / COOKIE_FILE).read_text().strip()
        mined = (await rpc(b, "miner_generate", 2, token=token))["result"]
        assert len(mined) == 2 and b.core.blocks_mined == 2 and b.core.hashes_tried > 0
        await wait_for(lambda: all(a.core.tree.get(bytes.fromhex(h)) is not None for h in mined), 30,
                       "node0 to receive node1's generated blocks")
    finally:
        a.request_stop()
        b.request_stop()
        await asyncio.wait_for(asyncio.gather(task_a, task_b), 20)
    assert not (tmp_path / "node1" / COOKIE_FILE).exists()  # removed at a clean stop
    height_b = b.core.tree.head.height
    store = SqliteStore(tmp_path / "node1" / STORE_FILE, genesis_hash=b.genesis.hash)
    assert len(store.load_blocks()) >= height_b
    store.close()
    # Restart node1 alone: it resumes from its store, not from genesis.
    again = runtime_for(tmp_path / "node1", bootstrap="", mining="false")
    task = asyncio.create_task(again.run())
    await asyncio.wait_for(again.started.wait(), 10)
    try:
        assert again.core.tree.head.height == height_b
        assert (await rpc(again, "chain_getHead"))["result"]["hash"] == b.core.tree.head.hash.hex()
    finally:
        again.request_stop()
        await asyncio.wait_for(task, 20)


@needs_pos_core
async def test_a_validator_proposes_persists_its_protection_record_and_resumes_with_it(tmp_path: Path) -> None:
    """One proof-of-stake node, the only validator: it proposes in every slot; the store
    holds its protection record; restarted, it loads the record and carries on."""
    create_network(tmp_path, consensus="pos", nodes=1, accounts=1, seed="pos-rt", preset="minimal")  # 1 s slots
    home = tmp_path / "node0"
    node = runtime_for(home, bootstrap="")
    assert node.validator_key is not None and not node.settings.mining
    task = asyncio.create_task(node.run())
    await asyncio.wait_for(node.started.wait(), 10)
    try:
        await wait_for(lambda: node.core.tree.head.height >= 2, 30, "the validator to propose two blocks")
    finally:
        node.request_stop()
        await asyncio.wait_for(task, 20)
    height = node.core.tree.head.height
    store = SqliteStore(home / STORE_FILE, genesis_hash=node.genesis.hash)
    assert store.load_protection() is not None  # written with the blocks it signed
    assert len(store.load_blocks()) >= height
    store.close()
    again = runtime_for(home, bootstrap="")
    task = asyncio.create_task(again.run())
    await asyncio.wait_for(again.started.wait(), 10)
    try:
        assert again.core.tree.head.height >= height  # resumed from the store
        await wait_for(lambda: again.core.tree.head.height >= height + 2, 30,
                       "the restarted validator to propose in later slots")
    finally:
        again.request_stop()
        await asyncio.wait_for(task, 20)


@needs_pos_core
async def test_byzantine_setting_reaches_the_core_config(tmp_path: Path) -> None:
    create_network(tmp_path, nodes=1, accounts=0, seed="byz", mining=False)
    runtime = runtime_for(tmp_path / "node0", bootstrap="", byzantine="double-vote, surround-vote")
    task = asyncio.create_task(runtime.run())
    try:
        await asyncio.wait_for(runtime.started.wait(), 10)
        assert runtime.core.config.byzantine == frozenset({"double-vote", "surround-vote"})
    finally:
        runtime.request_stop()
        await asyncio.wait_for(task, 20)


async def test_port_in_use_is_a_startup_error(tmp_path: Path) -> None:
    create_network(tmp_path, nodes=1, accounts=0, seed="busy")
    blocker = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = blocker.sockets[0].getsockname()[1]
    try:
        runtime = runtime_for(tmp_path / "node0", p2p_port=port)
        with pytest.raises(StartupError, match=f"P2P port {port} on 127.0.0.1 is in use"):
            await asyncio.wait_for(runtime.run(), 10)
    finally:
        blocker.close()


# --- the miner's worker process ----------------------------------------------------------


async def test_miner_finds_a_nonce_that_meets_the_target_and_counts_hashes() -> None:
    import hashlib

    from node.core import MinerReport, MiningWork
    from node.miner import Miner

    reports: asyncio.Queue[MinerReport] = asyncio.Queue()
    miner = Miner(0, reports.put)
    task = asyncio.create_task(miner.run())
    try:
        prefix, target = b"chainlab-test-prefix", 2**256 // 5000  # about 5000 hashes expected
        miner.set_work(MiningWork(7, prefix, target, 1))
        tried = 0
        while True:
            report = await asyncio.wait_for(reports.get(), 60)
            assert report.work_id == 7
            tried += report.hashes
            if report.nonce is not None:
                break
        digest = hashlib.sha256(prefix + report.nonce.to_bytes(8, "big")).digest()
        assert int.from_bytes(digest, "big") <= target
        assert tried == report.nonce + 1  # the search starts at 0 and reports every hash tried
        assert miner.hashes_total == tried
    finally:
        task.cancel()
        miner.close()
