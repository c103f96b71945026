"""The tools around running nodes: the JSON-RPC client, `chainlab rpc`, `chainlab tx
transfer` and `chainlab testnet`, without real node processes.

How: the client and the `rpc`/`tx` commands talk to the real JSON-RPC server
(node/rpc_server.py) over HTTP on 127.0.0.1 port 0, with a small fake chain behind it
(it checks signatures, nonces and the chain id, and includes a transaction a few polls
after it arrives). Testnet process management runs stub node processes (a few lines of
aiohttp serving /health on the ports of their config.toml) in place of `node.cli node`,
so `up`, `status`, `stop`, `start`, `kill`, `down` and the foreground Ctrl-C path are
exercised with real pids, signals, logs and /proc checks in seconds.
"""

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytest
from aiohttp import web

from consensus.crypto import KeyPair, verify
from consensus.presets import account_key, validator_key
from consensus.types import decode_transaction
from node import cli, cli_tools, testnet
from node.client import BadResponse, NodeUnreachable, RpcCallError, RpcClient, read_cookie, read_cookie_file
from node.core import METHOD_NOT_FOUND, NOT_FOUND, TX_REJECTED, RpcError
from node.rpc_server import UNAUTHORIZED, RpcServer
from node.settings import (
    COOKIE_FILE,
    LOG_FILE,
    VALIDATOR_KEY_FILE,
    SettingsError,
    load_settings,
    read_genesis,
    read_validator_key,
    write_key,
)

TOKEN = "ab" * 32
CHAIN_ID = "chainlab-test"
WAIT_S = 20.0  # upper bound of every condition wait; a passing run takes a fraction


def wait_for(condition: Callable[[], Any], timeout_s: float = WAIT_S, what: str = "condition") -> Any:
    """Poll `condition` until it is truthy; fail the test at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.02)


# --- a fake node behind the real RPC server ------------------------------------------------


class FakeChain:
    """Just enough chain for the client tools: accounts, tx_send with checks, inclusion."""

    def __init__(self, include_after_polls: int = 2):
        self.accounts: dict[str, dict] = {}
        self.txs: dict[str, dict] = {}
        self.include_after_polls = include_after_polls
        self.sent: list = []
        self.calls: list[tuple[str, Any]] = []

    async def call(self, method: str, params: Any) -> Any:
        self.calls.append((method, params))
        params = params or []
        if method == "test_echo":
            return {"params": params}
        if method == "net_info":
            return {"node_id": "n0", "chain_id": CHAIN_ID, "genesis_hash": "00" * 32, "peers": 0}
        if method == "chain_getAccount":
            return dict(self.accounts.get(params[0], {"balance": 0, "nonce": 0, "pending": 0}), address=params[0])
        if method == "miner_start":
            return {"mining": True}
        if method == "tx_send":
            tx = decode_transaction(bytes.fromhex(params[0]))
            if tx.chain_id != CHAIN_ID or not verify(tx.sender, tx.signature, tx.signing_bytes()):
                raise RpcError(TX_REJECTED, "bad chain id or signature")
            account = self.accounts.get(tx.sender_address.hex(), {"nonce": 0, "pending": 0})
            if tx.nonce != account["nonce"] + account["pending"]:
                raise RpcError(TX_REJECTED, f"nonce {tx.nonce} is not the next one")
            self.sent.append(tx)
            self.txs[tx.txid.hex()] = {"polls": 0}
            return tx.txid.hex()
        if method == "chain_getTransaction":
            record = self.txs.get(params[0])
            if record is None:
                raise RpcError(NOT_FOUND, f"transaction {params[0]} is neither pending nor in the canonical chain")
            record["polls"] += 1
            if self.include_after_polls is None or record["polls"] <= self.include_after_polls:
                return {"status": "pending"}
            confirmations = record["polls"] - self.include_after_polls
            return {"status": "included", "height": 40, "block": "cd" * 32, "confirmations": confirmations}
        raise RpcError(METHOD_NOT_FOUND, f"method {method!r} does not exist")


class ServerThread:
    """The real RpcServer on its own event loop in a thread, so synchronous CLI code
    (which runs asyncio.run itself) can call it."""

    def __init__(self, chain: FakeChain, token: str | None = TOKEN):
        self.chain = chain
        self.loop = asyncio.new_event_loop()
        self.server = RpcServer(chain.call, token, lambda: {"status": "ok", "name": "fake", "height": 7, "peers": 2,
                                                            "head": "ef" * 32})
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> "ServerThread":
        self.thread.start()
        port = asyncio.run_coroutine_threadsafe(self.server.start("127.0.0.1", 0), self.loop).result(WAIT_S)
        self.url = f"http://127.0.0.1:{port}"
        return self

    def __exit__(self, *exc_info: Any) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(WAIT_S)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(WAIT_S)
        self.loop.close()


@pytest.fixture
def chain() -> FakeChain:
    return FakeChain()


@pytest.fixture
def node(chain: FakeChain):
    with ServerThread(chain) as server:
        yield server


def closed_port() -> tuple[socket.socket, int]:
    """A port bound but not listening: connecting to it is refused, and nobody can take it."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    return s, s.getsockname()[1]


# --- the client ------------------------------------------------------------------------


async def test_client_call_result_error_and_token():
    chain = FakeChain()
    server = RpcServer(chain.call, TOKEN, lambda: {"status": "ok", "height": 7})
    port = await server.start("127.0.0.1", 0)
    url = f"http://127.0.0.1:{port}"
    try:
        async with RpcClient(url) as client:
            assert await client.call("test_echo", 1, "two", [3]) == {"params": [1, "two", [3]]}
            with pytest.raises(RpcCallError) as err:
                await client.call("no_suchMethod")
            assert err.value.code == METHOD_NOT_FOUND and "no_suchMethod" in err.value.message
            with pytest.raises(RpcCallError) as err:
                await client.call("miner_start")
            assert err.value.code == UNAUTHORIZED
            assert (await client.health())["height"] == 7
        async with RpcClient(url, token=TOKEN) as client:
            assert await client.call("miner_start") == {"mining": True}
        assert [m for m, _ in chain.calls] == ["test_echo", "no_suchMethod", "miner_start"]
    finally:
        await server.stop()


async def test_client_unreachable_when_nothing_listens():
    held, port = closed_port()
    try:
        async with RpcClient(f"http://127.0.0.1:{port}", timeout_s=5) as client:
            with pytest.raises(NodeUnreachable) as err:
                await client.call("chain_getHead")
        assert str(err.value).startswith(f"node at http://127.0.0.1:{port} is not running or not reachable: ")
        assert "cannot connect" in err.value.reason
    finally:
        held.close()


async def test_client_times_out_on_a_silent_server():
    # A listening socket that never accepts: the TCP handshake completes, no answer comes.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
        async with RpcClient(url, timeout_s=0.3) as client:
            with pytest.raises(NodeUnreachable) as err:
                await client.health()
        assert err.value.reason == "no answer within 0.3 s"


async def test_client_rejects_what_is_not_json_rpc():
    app = web.Application()

    async def html(request: web.Request) -> web.Response:
        return web.Response(status=404, text="<html>not here</html>", content_type="text/html")

    async def wrong_id(request: web.Request) -> web.Response:
        return web.json_response({"jsonrpc": "2.0", "result": 1, "id": 999})

    app.router.add_post("/", html)
    app.router.add_post("/x/", wrong_id)
    app.router.add_get("/health", html)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        async with RpcClient(f"http://127.0.0.1:{port}") as client:
            with pytest.raises(BadResponse) as err:
                await client.call("chain_getHead")
            assert err.value.reason == "HTTP 404 with a body that is not JSON"
            with pytest.raises(BadResponse):
                await client.health()
        async with RpcClient(f"http://127.0.0.1:{port}/x") as client:
            with pytest.raises(BadResponse) as err:
                await client.call("chain_getHead")
            assert "does not match request id" in err.value.reason
    finally:
        await runner.cleanup()


def test_client_refuses_a_url_without_scheme():
    with pytest.raises(ValueError, match="http://"):
        RpcClient("127.0.0.1:8545")


def test_read_cookie(tmp_path: Path):
    assert read_cookie(tmp_path) is None  # no cookie: the node is not running
    (tmp_path / COOKIE_FILE).write_text(TOKEN + "\n")
    assert read_cookie(tmp_path) == TOKEN
    (tmp_path / COOKIE_FILE).write_text("not a token\n")
    with pytest.raises(SettingsError, match="does not hold an RPC cookie"):
        read_cookie(tmp_path)
    (tmp_path / COOKIE_FILE).write_text("a" * 300)
    with pytest.raises(SettingsError, match="at most 256"):
        read_cookie(tmp_path)
    with pytest.raises(SettingsError, match="cannot read the RPC cookie file"):
        read_cookie_file(tmp_path / "missing")


# --- argument parsing ------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="chainlab")
    cli_tools.add_commands(root.add_subparsers(dest="command"))
    return root


def run(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    return args.func(args)


def test_parse_param():
    assert cli_tools.parse_param("12") == 12
    assert cli_tools.parse_param("true") is True
    assert cli_tools.parse_param("null") is None
    assert cli_tools.parse_param('{"a": [1, 2]}') == {"a": [1, 2]}
    assert cli_tools.parse_param('"123"') == "123"
    assert cli_tools.parse_param("00ab" * 10) == "00ab" * 10  # not JSON: a string
    assert cli_tools.parse_param("NaN") == "NaN"  # JSON has no NaN


@pytest.mark.parametrize("argv, message", [
    (["--to", "12" * 19, "--amount", "5"], "an address is 40 hex characters"),
    (["--to", "zz" * 20, "--amount", "5"], "an address is 40 hex characters"),
    (["--to", "12" * 20, "--amount", "0"], "--amount must be 1..18446744073709551615, not 0"),
    (["--to", "12" * 20, "--amount", "-3"], "--amount must be 1.."),
    (["--to", "12" * 20, "--amount", "1.5"], "--amount must be a whole number"),
    (["--to", "12" * 20, "--amount", "5", "--fee", "0"], "--fee must be 1.."),
    (["--to", "12" * 20, "--amount", "5", "--timeout", "0"], "must be more than 0"),
    (["--to", "12" * 20, "--amount", "5", "--url", "http://x", "--node", "node1"], "not allowed with argument"),
])
def test_tx_transfer_argument_errors(argv: list[str], message: str, capsys):
    with pytest.raises(SystemExit) as exit_:
        parser().parse_args(["tx", "transfer", "--key", "k"] + argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_address_accepts_0x_and_upper_case():
    assert cli_tools.parse_address("0x" + "AB" * 20) == bytes([0xAB] * 20)


def test_testnet_up_takes_pow_or_pos():
    assert parser().parse_args(["testnet", "up"]).consensus == "pow"
    assert parser().parse_args(["testnet", "up", "--consensus", "pos"]).consensus == "pos"


def test_testnet_up_rejects_other_consensus_and_bad_counts(capsys):
    for argv, message in ((["--consensus", "poa"], "invalid choice: 'poa' (choose from 'pow', 'pos')"),
                          (["--nodes", "0"], "--nodes must be 1..64"),
                          (["--rpc-port", "70000"], "--rpc-port must be 0..65535")):
        with pytest.raises(SystemExit):
            parser().parse_args(["testnet", "up"] + argv)
        assert message in capsys.readouterr().err


@pytest.mark.parametrize("make", [parser, cli.build_parser], ids=["tools", "chainlab"])
def test_every_option_has_help(make):
    def walk(p: argparse.ArgumentParser):
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for choice in action._choices_actions:
                    assert choice.help, f"{p.prog} {choice.dest} has no help"
                for sub in action.choices.values():
                    yield from walk(sub)
            elif not isinstance(action, argparse._HelpAction):
                yield p.prog, action
    checked = list(walk(make()))
    assert len(checked) > 30
    for prog, action in checked:
        assert action.help, f"{prog} {action.option_strings or action.dest} has no help text"


# --- building and signing a transfer ---------------------------------------------------------


# --- chainlab genesis and chainlab node (proof of stake) ----------------------------------


def test_genesis_pos_writes_validator_keys_matching_genesis_in_order(tmp_path: Path, capsys):
    out = tmp_path / "net"
    assert cli.main(["genesis", "--consensus", "pos", "--nodes", "3", "--accounts", "1", "--seed", "v",
                     "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    genesis = read_genesis(out / "genesis.json")
    assert genesis.consensus == "pos" and genesis.param_dict["slot_ms"] == 2_000  # preset testnet by default
    assert [stake for _, stake in genesis.validators] == [32_000_000] * 3
    for i, (public_key, _) in enumerate(genesis.validators):
        home = out / f"node{i}"
        assert read_validator_key(home).public_key == public_key == validator_key("v", i).public_key
        assert load_settings(home, {}, {}).mining is False
        assert f"node{i}: {home}  validator {i} {public_key.hex()} stake 32000000" in printed
    assert "(pos, preset testnet)" in printed


def test_genesis_pos_stake_and_its_errors(tmp_path: Path, capsys):
    assert cli.main(["genesis", "--consensus", "pos", "--nodes", "2", "--stake", "2000000", "--preset", "minimal",
                     "--out", str(tmp_path / "a")]) == 0
    assert [s for _, s in read_genesis(tmp_path / "a" / "genesis.json").validators] == [2_000_000] * 2
    capsys.readouterr()
    assert cli.main(["genesis", "--consensus", "pos", "--stake", "10", "--out", str(tmp_path / "b")]) == 2
    assert "--stake must be at least the preset's stake_min" in capsys.readouterr().err
    assert cli.main(["genesis", "--stake", "2000000", "--out", str(tmp_path / "c")]) == 2
    assert "--stake is for --consensus pos" in capsys.readouterr().err
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()
    with pytest.raises(SystemExit):
        cli.main(["genesis", "--consensus", "poa", "--out", str(tmp_path / "d")])
    assert "invalid choice: 'poa' (choose from 'pow', 'pos')" in capsys.readouterr().err


def test_genesis_pow_writes_no_validator_keys(tmp_path: Path):
    assert cli.main(["genesis", "--nodes", "2", "--out", str(tmp_path / "net")]) == 0
    assert read_genesis(tmp_path / "net" / "genesis.json").validators == ()
    assert not any((tmp_path / "net" / f"node{i}" / VALIDATOR_KEY_FILE).exists() for i in range(2))


def test_node_byzantine_flag(tmp_path: Path, capsys):
    args = cli.build_parser().parse_args(["node", "--home", "h", "--byzantine", "double-vote"])
    assert args.byzantine == "double-vote"
    assert cli.build_parser().parse_args(["node", "--home", "h"]).byzantine is None  # off by default
    assert cli.main(["genesis", "--consensus", "pos", "--nodes", "1", "--out", str(tmp_path / "net")]) == 0
    capsys.readouterr()
    assert cli.main(["node", "--home", str(tmp_path / "net" / "node0"), "--byzantine", "double-vote,evil"]) == 2
    err = capsys.readouterr().err
    assert "unknown behaviour(s) 'evil'; choose from double-propose, double-vote, surround-vote" in err


def test_node_with_an_unreadable_validator_key_does_not_start(tmp_path: Path, capsys):
    assert cli.main(["genesis", "--consensus", "pos", "--nodes", "1", "--out", str(tmp_path / "net")]) == 0
    capsys.readouterr()
    home = tmp_path / "net" / "node0"
    (home / VALIDATOR_KEY_FILE).write_text("not a key\n")
    assert cli.main(["node", "--home", str(home)]) == 2
    err = capsys.readouterr().err
    assert f"the key file {home / VALIDATOR_KEY_FILE} must hold 64 hex characters" in err
    assert "it is this node's validator key" in err
    assert not (home / "chain.sqlite").exists()  # refused before anything was opened


def test_build_transfer_signs_for_the_chain():
    key = account_key("chainlab", 0)
    recipient = bytes(range(20))
    tx = cli_tools.build_transfer(key, CHAIN_ID, recipient, 1234, 10, 7)
    assert (tx.kind, tx.chain_id, tx.sender, tx.recipient, tx.amount, tx.fee, tx.nonce) == (
        0, CHAIN_ID, key.public_key, recipient, 1234, 10, 7)
    assert verify(key.public_key, tx.signature, tx.signing_bytes())
    assert decode_transaction(tx.encode()) == tx
    other = cli_tools.build_transfer(key, "another-chain", recipient, 1234, 10, 7)
    assert not verify(key.public_key, tx.signature, other.signing_bytes())  # no replay across chains


def test_default_fee_meets_every_preset_minimum():
    from consensus.params import CHAIN_PRESETS

    assert all(cli_tools.FEE_DEFAULT >= p["fee_min"] for p in CHAIN_PRESETS.values())


# --- chainlab rpc ----------------------------------------------------------------------------


def test_rpc_prints_the_json_result(node: ServerThread, capsys):
    assert run(["rpc", "--url", node.url, "test_echo", "5", "hello", '{"a":1}']) == 0
    assert json.loads(capsys.readouterr().out) == {"params": [5, "hello", {"a": 1}]}


def test_rpc_error_and_unreachable(node: ServerThread, capsys):
    assert run(["rpc", "--url", node.url, "chain_nothing"]) == 1
    assert capsys.readouterr().err.strip() == f"error {METHOD_NOT_FOUND}: method 'chain_nothing' does not exist"
    # --url and no --cookie: no token, so a privileged method is refused by the node.
    assert run(["rpc", "--url", node.url, "miner_start"]) == 1
    assert f"error {UNAUTHORIZED}: unauthorized" in capsys.readouterr().err
    held, port = closed_port()
    try:
        assert run(["rpc", "--url", f"http://127.0.0.1:{port}", "chain_getHead"]) == 2
    finally:
        held.close()
    assert f"node at http://127.0.0.1:{port} is not running or not reachable" in capsys.readouterr().err


def test_rpc_cookie_file(node: ServerThread, tmp_path: Path, capsys):
    cookie = tmp_path / "cookie"
    cookie.write_text(TOKEN)
    assert run(["rpc", "--url", node.url, "--cookie", str(cookie), "miner_start"]) == 0
    assert json.loads(capsys.readouterr().out) == {"mining": True}


def write_nodes_json(home: Path, urls: list[str], pids: list[int | None] | None = None) -> testnet.Testnet:
    home.mkdir(parents=True, exist_ok=True)
    entries = []
    for i, url in enumerate(urls):
        (home / f"node{i}").mkdir(exist_ok=True)
        entries.append(testnet.NodeEntry(f"node{i}", str(home / f"node{i}"), url, f"127.0.0.1:{30000 + i}",
                                         (pids or [None] * len(urls))[i]))
    net = testnet.Testnet(home, "pow", tuple(entries))
    testnet.save_testnet(net)
    return net


def test_rpc_targets_a_testnet_node_with_its_cookie(node: ServerThread, tmp_path: Path, capsys):
    held, port = closed_port()
    home = tmp_path / "net"
    try:
        write_nodes_json(home, [f"http://127.0.0.1:{port}", node.url])
        (home / "node1" / COOKIE_FILE).write_text(TOKEN + "\n")
        assert run(["rpc", "--home", str(home), "--node", "node1", "miner_start"]) == 0
        assert json.loads(capsys.readouterr().out) == {"mining": True}
        assert run(["rpc", "--home", str(home), "chain_getHead"]) == 2  # node0 is the default, and it is down
        assert f"127.0.0.1:{port} is not running" in capsys.readouterr().err
        assert run(["rpc", "--home", str(home), "--node", "node7", "net_info"]) == 2
        err = capsys.readouterr().err
        assert "no node named 'node7'" in err and "its nodes are node0, node1 (or pass --url)" in err
        assert run(["rpc", "--home", str(tmp_path / "none"), "net_info"]) == 2
        assert f"no testnet at {tmp_path / 'none'}; start one with `chainlab testnet up`" in capsys.readouterr().err
    finally:
        held.close()


def test_testnet_home_env(monkeypatch, tmp_path: Path):
    monkeypatch.setenv(testnet.TESTNET_HOME_ENV, str(tmp_path / "env-home"))
    assert testnet.testnet_home(None) == tmp_path / "env-home"
    assert testnet.testnet_home(str(tmp_path / "flag")) == tmp_path / "flag"
    assert testnet.testnet_home(None, environ={}) == Path(os.path.expanduser("~/.chainlab/testnet"))


# --- chainlab tx transfer --------------------------------------------------------------------


@pytest.fixture
def key_file(tmp_path: Path) -> tuple[Path, KeyPair]:
    key = account_key("chainlab", 3)
    path = tmp_path / "account.key"
    write_key(path, key.seed)
    return path, key


def test_tx_transfer_waits_for_confirmations(node: ServerThread, chain: FakeChain, key_file, capsys):
    path, key = key_file
    chain.accounts[key.address.hex()] = {"balance": 10**9, "nonce": 3, "pending": 2}
    recipient = "12" * 20
    code = run(["tx", "transfer", "--key", str(path), "--to", recipient, "--amount", "500", "--url", node.url,
                "--wait", "--confirmations", "2", "--timeout", "20"])
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    (tx,) = chain.sent
    assert (tx.nonce, tx.amount, tx.fee, tx.recipient.hex()) == (5, 500, cli_tools.FEE_DEFAULT, recipient)
    assert out[0] == tx.txid.hex()
    assert out[1] == f"included at height 40 in block {'cd' * 32} (2 confirmation(s), included)"
    polls = [m for m, _ in chain.calls if m == "chain_getTransaction"]
    assert len(polls) == chain.include_after_polls + 2


def test_tx_transfer_explicit_nonce_and_fee(node: ServerThread, chain: FakeChain, key_file, capsys):
    path, key = key_file
    chain.accounts[key.address.hex()] = {"balance": 10**9, "nonce": 9, "pending": 0}
    assert run(["tx", "transfer", "--key", str(path), "--to", "0x" + "34" * 20, "--amount", "1", "--fee", "77",
                "--nonce", "9", "--url", node.url]) == 0
    assert [(t.nonce, t.fee) for t in chain.sent] == [(9, 77)]
    assert "chain_getAccount" not in [m for m, _ in chain.calls]
    assert capsys.readouterr().out.strip() == chain.sent[0].txid.hex()


def test_tx_transfer_rejected_and_timeout(node: ServerThread, chain: FakeChain, key_file, capsys):
    path, key = key_file
    chain.accounts[key.address.hex()] = {"balance": 10**9, "nonce": 0, "pending": 0}
    assert run(["tx", "transfer", "--key", str(path), "--to", "56" * 20, "--amount", "1", "--nonce", "4",
                "--url", node.url]) == 1
    assert capsys.readouterr().err.strip() == f"error {TX_REJECTED}: nonce 4 is not the next one"
    chain.include_after_polls = None  # never included
    assert run(["tx", "transfer", "--key", str(path), "--to", "56" * 20, "--amount", "1", "--url", node.url,
                "--wait", "--timeout", "0.5"]) == 1
    err = capsys.readouterr().err
    assert "did not reach 1 confirmation(s) within 0.5 s (last status: pending)" in err


def test_tx_transfer_bad_key_and_self_transfer(tmp_path: Path, key_file, capsys):
    bad = tmp_path / "bad.key"
    bad.write_text("xyz\n")
    assert run(["tx", "transfer", "--key", str(bad), "--to", "12" * 20, "--amount", "1", "--url", "http://x"]) == 2
    assert "must hold 64 hex characters" in capsys.readouterr().err
    path, key = key_file
    assert run(["tx", "transfer", "--key", str(path), "--to", key.address.hex(), "--amount", "1",
                "--url", "http://x"]) == 2
    assert "sender's own address" in capsys.readouterr().err


# --- testnet: nodes.json, pids, ports ----------------------------------------------------------


def test_nodes_json_round_trip_and_errors(tmp_path: Path):
    with pytest.raises(testnet.TestnetError, match=r"no testnet at .*; start one with `chainlab testnet up`"):
        testnet.load_testnet(tmp_path)
    net = write_nodes_json(tmp_path, ["http://127.0.0.1:1", "http://127.0.0.1:2"], [None, 4242])
    assert testnet.load_testnet(tmp_path) == net
    assert not list(tmp_path.glob("*.tmp"))  # the atomic write left no temporary file
    with pytest.raises(testnet.TestnetError, match="no node named 'node9' .* its nodes are node0, node1"):
        net.node("node9")
    (tmp_path / testnet.NODES_FILE).write_text('{"consensus": "pow", "nodes": [{"name": "node0"}]}')
    with pytest.raises(testnet.TestnetError, match="is damaged .*node entry 0 needs"):
        testnet.load_testnet(tmp_path)
    (tmp_path / testnet.NODES_FILE).write_text("{not json")
    with pytest.raises(testnet.TestnetError, match="is damaged .not JSON"):
        testnet.load_testnet(tmp_path)


def test_commands_on_a_missing_or_stopped_testnet(tmp_path: Path, capsys):
    assert run(["testnet", "status", "--home", str(tmp_path / "none")]) == 1
    assert capsys.readouterr().err.strip() == (
        f"chainlab: no testnet at {tmp_path / 'none'}; start one with `chainlab testnet up`")
    write_nodes_json(tmp_path, ["http://127.0.0.1:1"])
    assert run(["testnet", "stop", "node0", "--home", str(tmp_path)]) == 1
    assert "node0 is not running; start it with `chainlab testnet start node0`" in capsys.readouterr().err
    assert run(["testnet", "kill", "nodeX", "--home", str(tmp_path)]) == 1
    assert "no node named 'nodeX'" in capsys.readouterr().err


def sleeper(home: Path) -> subprocess.Popen:
    """A process whose command line names `home`, like a node's does."""
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "--home", str(home)])


def test_is_running_checks_the_command_line_and_zombies(tmp_path: Path):
    proc = sleeper(tmp_path / "node0")
    try:
        assert testnet.is_running(proc.pid, str(tmp_path / "node0"))
        # The same pid recorded for another home: a reused pid is not our node.
        assert not testnet.is_running(proc.pid, str(tmp_path / "node1"))
        os.kill(proc.pid, signal.SIGKILL)
        # Until reaped the child is a zombie; is_running must not count it (and reaps it).
        wait_for(lambda: not testnet.is_running(proc.pid, str(tmp_path / "node0")), what="the zombie to count as gone")
    finally:
        proc.kill()
        proc.wait(WAIT_S)
    assert not testnet.is_running(None, str(tmp_path))
    assert not testnet.is_running(1, str(tmp_path))  # init is alive but not our node


def test_pick_port_bases_gives_disjoint_free_runs():
    bases = testnet.pick_port_bases(4, 2)
    ports = [b + i for b in bases for i in range(4)]
    assert len(set(ports)) == 8
    for port in ports:
        assert testnet._bind_error("127.0.0.1", port) is None


def test_check_ports_names_the_node_and_the_port():
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    busy = listener.getsockname()[1]
    free_base = testnet.pick_port_bases(1, 1)[0]
    from node.settings import Settings

    entry = testnet.NodeEntry("node3", "/x", "http://127.0.0.1:1", "127.0.0.1:2")
    try:
        with pytest.raises(testnet.TestnetError) as err:
            testnet.check_ports([(entry, Settings(rpc_port=busy, p2p_port=free_base))])
        assert str(err.value) == (f"port {busy} (node3 rpc) is in use on 127.0.0.1; stop what uses it or choose "
                                  f"other ports with --rpc-port/--p2p-port")
    finally:
        listener.close()


def test_overlapping_port_ranges_are_refused(tmp_path: Path):
    with pytest.raises(testnet.TestnetError, match="overlap"):
        testnet.up(tmp_path / "net", nodes=4, p2p_port_base=40000, rpc_port_base=40002, detach=True)
    assert not (tmp_path / "net" / "genesis.json").exists()


def test_reset_refuses_a_folder_that_is_not_a_testnet(tmp_path: Path):
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(testnet.TestnetError, match="refusing to delete it"):
        testnet.up(tmp_path, reset=True, detach=True)
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_log_tail(tmp_path: Path):
    (tmp_path / LOG_FILE).write_text("".join(f"line {i}\n" for i in range(100)))
    assert testnet.log_tail(str(tmp_path)).splitlines() == [f"line {i}" for i in range(80, 100)]


# --- testnet with stub node processes -----------------------------------------------------------


STUB_NODE = textwrap.dedent('''
    """A stand-in for `chainlab node`: serves /health and a JSON-RPC echo on its config's ports."""
    import asyncio, os, secrets, signal, sys, tomllib
    from pathlib import Path
    from aiohttp import web

    home = Path(sys.argv[sys.argv.index("--home") + 1])
    config = tomllib.loads((home / "config.toml").read_text())
    print("stub node", config["name"], "starting", flush=True)
    if config["name"] in sys.argv[sys.argv.index("--crash") + 1].split(","):
        print("boom: cannot open the store", flush=True)
        sys.exit(3)

    async def main():
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        token = secrets.token_hex(32)
        fd = os.open(home / "rpc.cookie", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.write(fd, token.encode())
        os.close(fd)

        async def health(request):
            return web.json_response({"status": "ok", "name": config["name"], "height": 11, "peers": 3,
                                      "head": "00ab" * 16})

        async def rpc(request):
            body = await request.json()
            ok = request.headers.get("Authorization") == "Bearer " + token
            return web.json_response({"jsonrpc": "2.0", "result": {"name": config["name"], "authorized": ok},
                                      "id": body["id"]})

        app = web.Application()
        app.router.add_get("/health", health)
        app.router.add_post("/", rpc)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", config["rpc_port"]).start()
        p2p = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", config["p2p_port"])
        await stop.wait()
        p2p.close()
        await runner.cleanup()
        (home / "rpc.cookie").unlink()
        print("stub node", config["name"], "stopped cleanly", flush=True)

    asyncio.run(main())
''')


@pytest.fixture
def stub_nodes(tmp_path: Path, monkeypatch):
    """Replace the node command with the stub; `crash` lists node names that exit at once."""
    script = tmp_path / "stub_node.py"
    script.write_text(STUB_NODE)
    crash: list[str] = []

    def command(node_home: Path) -> list[str]:
        return [sys.executable, str(script), "--home", str(node_home), "--crash", ",".join(crash) or "-"]

    monkeypatch.setattr(testnet, "node_command", command)
    yield crash
    # A failed test must not leave stub nodes behind: stop whatever a nodes.json still names.
    for nodes_file in tmp_path.rglob(testnet.NODES_FILE):
        testnet.terminate(list(testnet.load_testnet(nodes_file.parent).nodes), wait_s=5)


def pids_alive(net: testnet.Testnet) -> list[bool]:
    return [testnet.is_running(e.pid, e.home) for e in net.nodes]


@pytest.mark.filterwarnings("ignore:subprocess .* is still running:ResourceWarning")
def test_testnet_lifecycle_with_stub_nodes(tmp_path: Path, stub_nodes, capsys):
    home = tmp_path / "net"
    base = ["--home", str(home)]
    assert run(["testnet", "up", "--nodes", "2", "--accounts", "2", "--p2p-port", "0", "--rpc-port", "0",
                "--detach"] + base) == 0
    out = capsys.readouterr().out
    net = testnet.load_testnet(home)
    assert [e.name for e in net.nodes] == ["node0", "node1"] and net.consensus == "pow"
    assert pids_alive(net) == [True, True]
    assert f"testnet of 2 pow nodes is up in {home}" in out and net.nodes[1].rpc_url in out
    assert (home / "accounts.json").exists() and (home / "accounts" / "account-1.key").exists()

    # A second `up` while it runs is refused, and nothing is touched.
    assert run(["testnet", "up", "--detach"] + base) == 1
    assert "is already running (node0 pid" in capsys.readouterr().err

    assert run(["testnet", "status"] + base) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["NAME", "PID", "STATE", "HEIGHT", "PEERS", "HEAD", "RPC"]
    assert lines[1].split() == ["node0", str(net.nodes[0].pid), "up", "11", "3", "00ab" * 4, net.nodes[0].rpc_url]

    # rpc --node reads the node's cookie from its home.
    assert run(["rpc", "--home", str(home), "--node", "node1", "anything"]) == 0
    assert json.loads(capsys.readouterr().out) == {"name": "node1", "authorized": True}

    # kill: SIGKILL, no cleanup (the cookie stays), status shows the crash and exits 3.
    assert run(["testnet", "kill", "node1"] + base) == 0
    assert capsys.readouterr().out.startswith(f"node1 killed (pid {net.nodes[1].pid}, SIGKILL")
    assert (home / "node1" / COOKIE_FILE).exists()
    assert run(["testnet", "status"] + base) == 3
    assert capsys.readouterr().out.splitlines()[2].split()[:3] == ["node1", str(net.nodes[1].pid), "exited"]

    assert run(["testnet", "start", "node1"] + base) == 0
    restarted = testnet.load_testnet(home).nodes[1]
    assert restarted.pid != net.nodes[1].pid and testnet.is_running(restarted.pid, restarted.home)
    assert run(["testnet", "start", "node1"] + base) == 1
    assert "node1 is already running" in capsys.readouterr().err

    # stop: clean exit (the stub removes its cookie), pid cleared.
    assert run(["testnet", "stop", "node1"] + base) == 0
    assert not (home / "node1" / COOKIE_FILE).exists()
    assert testnet.load_testnet(home).nodes[1].pid is None
    assert "stub node node1 stopped cleanly" in (home / "node1" / LOG_FILE).read_text()

    assert run(["testnet", "down"] + base) == 0
    assert [e.pid for e in testnet.load_testnet(home).nodes] == [None, None]
    assert not testnet.is_running(net.nodes[0].pid, net.nodes[0].home)

    # Resume: the same network (same genesis, same ports) comes back.
    genesis = (home / "genesis.json").read_text()
    assert run(["testnet", "up", "--detach"] + base) == 0
    assert (home / "genesis.json").read_text() == genesis
    assert [e.rpc_url for e in testnet.load_testnet(home).nodes] == [e.rpc_url for e in net.nodes]
    assert run(["testnet", "down", "--remove"] + base) == 0
    assert not home.exists()


@pytest.mark.filterwarnings("ignore:subprocess .* is still running:ResourceWarning")
def test_testnet_up_pos_makes_every_node_a_validator(tmp_path: Path, stub_nodes, capsys):
    home = tmp_path / "net"
    assert run(["testnet", "up", "--consensus", "pos", "--nodes", "2", "--accounts", "1", "--seed", "tp",
                "--p2p-port", "0", "--rpc-port", "0", "--detach", "--home", str(home)]) == 0
    assert "testnet of 2 pos nodes is up" in capsys.readouterr().out
    net = testnet.load_testnet(home)
    assert net.consensus == "pos" and pids_alive(net) == [True, True]
    genesis = read_genesis(home / "genesis.json")
    assert genesis.param_dict["slot_ms"] == 2_000
    for i, entry in enumerate(net.nodes):
        node_home = Path(entry.home)
        assert read_validator_key(node_home).public_key == genesis.validators[i][0] == validator_key("tp", i).public_key
        assert load_settings(node_home, {}, {}).mining is False
    assert run(["testnet", "down", "--remove", "--home", str(home)]) == 0


@pytest.mark.filterwarnings("ignore:subprocess .* is still running:ResourceWarning")
def test_up_reports_a_node_that_exits_during_start(tmp_path: Path, stub_nodes, capsys):
    stub_nodes.append("node1")
    home = tmp_path / "net"
    assert testnet.up(home, nodes=2, accounts=1, p2p_port_base=0, rpc_port_base=0, detach=True) == 1
    err = capsys.readouterr().err
    assert "node1 exited during start; last 20 lines of" in err
    assert "  | boom: cannot open the store" in err
    net = testnet.load_testnet(home)
    assert [e.pid for e in net.nodes] == [None, None]  # the healthy node0 was stopped too


@pytest.mark.filterwarnings("ignore:subprocess .* is still running:ResourceWarning")
def test_up_refuses_ports_in_use(tmp_path: Path, stub_nodes):
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    busy = listener.getsockname()[1]
    try:
        # One node, so the free P2P port picked meanwhile cannot collide with the busy one.
        with pytest.raises(testnet.TestnetError) as err:
            testnet.up(tmp_path / "net", nodes=1, p2p_port_base=0, rpc_port_base=busy, detach=True)
    finally:
        listener.close()
    assert str(err.value) == (f"port {busy} (node0 rpc) is in use on 127.0.0.1; stop what uses it or choose "
                              f"other ports with --rpc-port/--p2p-port")
    assert not (tmp_path / "net" / testnet.NODES_FILE).exists()  # refused before any node started


DRIVER = textwrap.dedent('''
    import sys
    from pathlib import Path
    from node import testnet
    script, home = sys.argv[1], Path(sys.argv[2])
    testnet.node_command = lambda node_home: [sys.executable, script, "--home", str(node_home), "--crash", "-"]
    sys.exit(testnet.up(home, nodes=2, accounts=1, p2p_port_base=0, rpc_port_base=0, detach=False))
''')


def test_foreground_up_stops_every_node_on_ctrl_c(tmp_path: Path):
    (tmp_path / "stub_node.py").write_text(STUB_NODE)
    (tmp_path / "driver.py").write_text(DRIVER)
    home = tmp_path / "net"
    driver = subprocess.Popen([sys.executable, str(tmp_path / "driver.py"), str(tmp_path / "stub_node.py"), str(home)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def all_up() -> bool:
            try:
                net = testnet.load_testnet(home)
            except testnet.TestnetError:
                return False
            return all(e.pid for e in net.nodes) and all((Path(e.home) / COOKIE_FILE).exists() for e in net.nodes)
        wait_for(all_up, what="both stub nodes to start under the foreground testnet")
        net = testnet.load_testnet(home)
        driver.send_signal(signal.SIGINT)
        out, err = driver.communicate(timeout=WAIT_S)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait(WAIT_S)
    assert driver.returncode == 0, err
    assert "stopping the testnet" in err
    for e in net.nodes:
        assert not testnet.is_running(e.pid, e.home)
        assert "stopped cleanly" in (Path(e.home) / LOG_FILE).read_text()
    assert [e.pid for e in testnet.load_testnet(home).nodes] == [None, None]
    # Not a tty: plain lines, each with a time stamp, no ANSI escapes.
    assert "\x1b[" not in out
