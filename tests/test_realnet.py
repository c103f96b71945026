"""Real node processes on 127.0.0.1: a PoW testnet made by `chainlab testnet up --detach`.

What this checks, with the nodes driven only through the command line, JSON-RPC, the
P2P port and their log files:

1. four mining nodes agree on one chain (same block hash at a common height >= 3);
2. a transfer sent with `chainlab tx transfer --wait` lands in a block on every node,
   with exact balances: the recipient gains the amount, the sender loses amount + fee;
3. malformed JSON-RPC gets the standard error codes and the node goes on mining;
4. garbage and an oversized frame length on the P2P port close that socket only: the
   node keeps its peers and its chain keeps growing;
5. nodes of another network (another chain id; same chain id with another genesis) are
   refused at the handshake, stay refused and never take the testnet's chain;
6. a node killed with SIGKILL while mining restarts from its store near the height it
   had, not from genesis, and rejoins the common chain.

One 4-node testnet (module fixture) serves every test; each test uses a different node
for what it disturbs, and the kill-and-restart test runs last. The fixture always
ends with `chainlab testnet down` and kills any node process that survived it; the
strangers of test 5 are stopped by their own test. All waiting is `wait_for` with a
deadline; a timeout says what was awaited and the last value seen.
"""

import hashlib
import json
import socket
import time

import pytest

from p2p.config import P2PConfig
from p2p.errors import Reason
from p2p.framing import FrameDecoder
from p2p.messages import Goodbye, Hello, decode_message
from realnet import (
    NodeProcess,
    RpcError,
    Testnet,
    chainlab,
    common_block,
    file_size,
    find_event,
    free_port,
    health,
    height,
    holds_for,
    log_events,
    peer_ids,
    post_json,
    rpc,
    txid_in,
    wait_for,
)

NODES = 4
# Per node. The testnet preset's genesis difficulty expects 80,000 hashes/s in all, so
# four nodes at 50,000 make a block about every 0.8 s until the first retarget.
HASHRATE = 50_000
CONVERGE_TIMEOUT_S = 60.0
TX_TIMEOUT_S = 60.0
REFUSED_WINDOW_S = 10.0  # how long a refused stranger must stay apart
SOCKET_TIMEOUT_S = 10.0
RPC_BODY_BYTES_MAX = 1024 * 1024  # node/rpc_server.py: RPC_BODY_BYTES_MAX
RPC_BATCH_ITEMS_MAX = 100  # node/rpc_server.py: RPC_BATCH_ITEMS_MAX

PARSE_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND, INVALID_PARAMS, UNAUTHORIZED = -32700, -32600, -32601, -32602, -32001


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    home = tmp_path_factory.mktemp("realnet") / "testnet"
    testnet = Testnet.up(home, NODES, HASHRATE)
    try:
        assert testnet.consensus == "pow"
        assert testnet.names == [f"node{i}" for i in range(NODES)]
        yield testnet
    finally:
        testnet.cleanup()


def converged(net: Testnet, min_height: int = 3, timeout_s: float = CONVERGE_TIMEOUT_S) -> tuple[int, str]:
    """Wait until all nodes share a block at their lowest head height (>= min_height),
    with heads at most 2 apart; return that (height, hash)."""
    return wait_for(lambda: common_block(net.urls, min_height, spread_max=2), timeout_s,
                    f"all {len(net.urls)} nodes to share a block at a common height >= {min_height}")


def grows(url: str, timeout_s: float = CONVERGE_TIMEOUT_S) -> int:
    """Wait until the node's head is higher than now; return the new height."""
    start = height(url)
    return wait_for(lambda: height(url), timeout_s, f"{url} to grow past height {start}", until=lambda h: h > start)


# --- 1. one chain -------------------------------------------------------------------------


def test_four_mining_nodes_reach_one_common_head(net):
    common_height, common_hash = converged(net)
    assert common_height >= 3
    heads = {name: rpc(net.url(name), "chain_getHead") for name in net.names}
    heights = [h["height"] for h in heads.values()]
    assert max(heights) - min(heights) <= 2 + 2, heads  # a block or two may have landed since
    for name in net.names:
        # Equal hash at the common height: the chains are the same up to it (blocks name parents).
        assert rpc(net.url(name), "chain_getBlockHash", common_height) == common_hash, name
    genesis = {rpc(u, "chain_getBlockHash", 0) for u in net.urls}
    assert len(genesis) == 1
    # Every node took part in the work (each was started mining), and is connected.
    for name in net.names:
        status = rpc(net.url(name), "consensus_status")
        assert status["mining"] is True and status["hashes_tried"] > 0, (name, status)
        assert health(net.url(name))["peers"] >= 1, name
    # `chainlab rpc` prints the same answer as the node gives over HTTP.
    printed = chainlab("rpc", "--home", str(net.home), "--node", "node3", "chain_getBlockHash", str(common_height))
    assert json.loads(printed.stdout) == common_hash


# --- 2. a transfer ------------------------------------------------------------------------------


def test_transfer_is_included_with_exact_balances_on_every_node(net):
    converged(net)
    accounts = json.loads((net.home / "accounts.json").read_text())
    sender = accounts[1]
    recipient = hashlib.sha256(b"test_realnet recipient").hexdigest()[:40]  # a fresh address: balance 0
    amount, fee = 123_456, 25
    before = rpc(net.url("node0"), "chain_getAccount", sender["address"])
    assert before["balance"] == sender["balance"] and before["pending"] == 0, before
    assert rpc(net.url("node0"), "chain_getAccount", recipient)["balance"] == 0

    done = chainlab("tx", "transfer", "--home", str(net.home), "--node", "node0", "--key", sender["key_file"],
                    "--to", recipient, "--amount", str(amount), "--fee", str(fee),
                    "--wait", "--timeout", str(TX_TIMEOUT_S), timeout_s=TX_TIMEOUT_S + 30)
    txid = txid_in(done.stdout)

    def included_view(url: str):
        """The tx's block and both accounts, read so that no reorg fell between the reads."""
        first = rpc(url, "chain_getTransaction", txid)
        if first["status"] not in ("included", "finalized"):
            return None
        view = {"tx": first, "sender": rpc(url, "chain_getAccount", sender["address"]),
                "recipient": rpc(url, "chain_getAccount", recipient)}
        again = rpc(url, "chain_getTransaction", txid)
        if again.get("block") != first["block"] or view["sender"]["height"] < first["height"]:
            return None
        return view

    for name in net.names:
        view = wait_for(lambda: included_view(net.url(name)), TX_TIMEOUT_S, f"{txid} included on {name}")
        tx = view["tx"]["transaction"]
        assert (tx["sender"], tx["recipient"], tx["amount"], tx["fee"]) == (sender["address"], recipient, amount, fee)
        assert rpc(net.url(name), "chain_getBlockHash", view["tx"]["height"]) == view["tx"]["block"], name
        assert view["recipient"]["balance"] == amount, (name, view)
        assert view["sender"]["balance"] == before["balance"] - amount - fee, (name, view)
        assert view["sender"]["nonce"] == before["nonce"] + 1, (name, view)


# --- 3. malformed JSON-RPC -------------------------------------------------------------------


def _error_code(reply) -> int:
    assert isinstance(reply, dict) and isinstance(reply.get("error"), dict), reply
    return reply["error"]["code"]


def test_malformed_json_rpc_gets_standard_errors_and_the_node_keeps_going(net):
    url = net.url("node1")
    converged(net)

    status, reply = post_json(url, b'{"jsonrpc": "2.0", "method": "chain_getHead", "id": 1')  # cut short
    assert _error_code(reply) == PARSE_ERROR and reply["id"] is None, (status, reply)

    status, reply = post_json(url, {"jsonrpc": "2.0", "method": "chain_noSuchMethod", "params": [], "id": 2})
    assert _error_code(reply) == METHOD_NOT_FOUND and reply["id"] == 2, (status, reply)

    for params in (["abc"], [-1], [True]):
        status, reply = post_json(url, {"jsonrpc": "2.0", "method": "chain_getBlockHash", "params": params, "id": 3})
        assert _error_code(reply) == INVALID_PARAMS, (params, status, reply)
    address = "00" * 20
    status, reply = post_json(url, {"jsonrpc": "2.0", "method": "chain_getAccount", "params": [address, 1, 2], "id": 4})
    assert _error_code(reply) == INVALID_PARAMS, (status, reply)
    status, reply = post_json(url, {"jsonrpc": "2.0", "method": "chain_getAccount", "params": ["zz"], "id": 5})
    assert _error_code(reply) == INVALID_PARAMS, (status, reply)

    # Over 1 MiB: the server answers HTTP 413 with a JSON-RPC -32600 body (node/rpc_server.py),
    # both when the length is announced and when it only shows while reading a chunked body.
    big = json.dumps({"jsonrpc": "2.0", "method": "chain_getHead", "params": ["x" * RPC_BODY_BYTES_MAX], "id": 6})
    status, reply = post_json(url, big.encode())
    assert status == 413 and _error_code(reply) == INVALID_REQUEST, (status, reply)
    chunks = [big[i:i + 65536].encode() for i in range(0, len(big), 65536)]
    status, reply = post_json(url, chunks)
    assert status == 413 and _error_code(reply) == INVALID_REQUEST, ("chunked", status, reply)

    batch = [{"jsonrpc": "2.0", "method": "chain_getHead", "id": i} for i in range(RPC_BATCH_ITEMS_MAX + 1)]
    status, reply = post_json(url, batch)
    assert _error_code(reply) == INVALID_REQUEST, (status, reply)
    # The limit is the limit: a batch of exactly 100 is answered item by item.
    status, reply = post_json(url, batch[:RPC_BATCH_ITEMS_MAX])
    assert status == 200 and len(reply) == RPC_BATCH_ITEMS_MAX and all("result" in r for r in reply), status

    # Privileged methods need the cookie token; without it (or with a wrong one) nothing happens.
    for token in (None, "0" * 64):
        status, reply = post_json(url, {"jsonrpc": "2.0", "method": "miner_stop", "params": [], "id": 7}, token)
        assert _error_code(reply) == UNAUTHORIZED, (token, status, reply)
    assert rpc(url, "consensus_status")["mining"] is True
    # The right token is accepted (a harmless privileged call), so -32001 was about the token.
    assert rpc(url, "net_clearBan", "nobody", token=net.nodes["node1"].token()) == {"peer": "nobody", "cleared": False}
    with pytest.raises(RpcError) as refused:
        rpc(url, "net_clearBan", "nobody")
    assert refused.value.code == UNAUTHORIZED

    # After all that the node still answers and its chain keeps growing.
    assert rpc(url, "chain_getHead")["height"] >= 3
    grows(url)
    assert health(url)["peers"] >= 1


# --- 4. garbage on the P2P port ------------------------------------------------------------------


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


def _send_and_read_to_eof(address: str, payload: bytes) -> tuple[str, bytes]:
    """Connect, send `payload`, read until the node closes; (our address, what it sent)."""
    received = b""
    with socket.create_connection(_host_port(address), timeout=SOCKET_TIMEOUT_S) as s:
        ours = "{}:{}".format(*s.getsockname()[:2])
        s.settimeout(SOCKET_TIMEOUT_S)
        s.sendall(payload)
        deadline = time.monotonic() + SOCKET_TIMEOUT_S
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break  # closed with unread data: closed all the same
            except socket.timeout:
                raise AssertionError(f"{address} kept the socket open {SOCKET_TIMEOUT_S:g} s after {payload[:16]!r}; "
                                     f"got {len(received)} bytes") from None
            if not chunk:
                break
            received += chunk
            assert time.monotonic() < deadline, f"{address} kept sending for {SOCKET_TIMEOUT_S:g} s"
    return ours, received


def _messages(data: bytes) -> list:
    decoder = FrameDecoder(P2PConfig().frame_bytes_max)
    return [decode_message(frame) for frame in decoder.feed(data)]


@pytest.mark.parametrize("payload, reason", [
    # A frame of the right shape whose body is no message.
    pytest.param(b"\x00\x00\x00\x10" + bytes(range(0xF0, 0x100)), Reason.PROTOCOL_ERROR, id="garbage-frame"),
    # A length of 4 GiB - 1: refused on its 4 bytes, before any body is buffered.
    pytest.param(b"\xff\xff\xff\xff", Reason.FRAME_TOO_LARGE, id="length-0xffffffff"),
    # Someone else's protocol: "GET " read as a length is 1.2 GB.
    pytest.param(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", Reason.FRAME_TOO_LARGE, id="http-request"),
])
def test_p2p_garbage_closes_that_socket_only(net, payload, reason):
    name = "node3"
    node = net.nodes[name]
    converged(net)
    peers_before = wait_for(lambda: peer_ids(node.rpc_url), CONVERGE_TIMEOUT_S, f"{name} to have peers")
    log_offset = file_size(node.log_path)
    info = rpc(node.rpc_url, "net_info")

    ours, received = _send_and_read_to_eof(node.p2p_address, payload)
    # The node spoke first (its Hello), then said Goodbye with the reason, then hung up.
    said = _messages(received)
    assert [type(m) for m in said] == [Hello, Goodbye], said
    assert said[0].chain_id == info["chain_id"] and said[0].genesis_hash.hex() == info["genesis_hash"], said[0]
    assert said[1].reason == reason, said[1]

    error = wait_for(lambda: next((e for e in log_events(node.log_path, log_offset)
                                   if e.get("event") == "peer_protocol_error" and e.get("address") == ours), None),
                     10.0, f"a peer_protocol_error line about {ours} in {node.log_path}")
    assert error.get("level") == "warning" and error.get("reason") == reason.name.lower(), error
    grows(node.rpc_url)
    peers_after = peer_ids(node.rpc_url)
    assert peers_before <= peers_after, f"{name} lost peers {peers_before - peers_after} after {payload[:8]!r}"
    converged(net)


# --- 5. another network is refused -----------------------------------------------------------


def _stranger_network(out, seed: str, nodes: int) -> str:
    """`chainlab genesis` for a network that is not the testnet; its genesis hash."""
    done = chainlab("genesis", "--out", str(out), "--nodes", str(nodes), "--seed", seed, "--no-mining",
                    "--p2p-port", str(free_port()), "--rpc-port", str(free_port()))
    for line in done.stdout.splitlines():
        if line.startswith("genesis hash "):
            return line.split()[-1]
    raise AssertionError(f"no genesis hash in `chainlab genesis` output: {done.stdout!r}")


def test_nodes_of_another_network_are_refused_and_stay_apart(net, tmp_path):
    node0 = net.nodes["node0"]
    converged(net)
    testnet_info = rpc(node0.rpc_url, "net_info")
    testnet_block0 = rpc(node0.rpc_url, "chain_getBlockHash", 0)
    node0_offset = file_size(node0.log_path)

    # Another seed: another chain id and another genesis. And the testnet's own seed made
    # again later: the same chain id with another genesis (its timestamp), so the genesis
    # check itself must refuse it. Node index 4 of five so that its node key is not one
    # of the testnet's four (the same seed derives the same keys).
    other_genesis = _stranger_network(tmp_path / "other", "other", 1)
    twin_genesis = _stranger_network(tmp_path / "twin", "chainlab", 5)
    assert len({testnet_info["genesis_hash"], other_genesis, twin_genesis}) == 3
    genesis = {"other": other_genesis, "twin": twin_genesis}
    strangers: dict[str, NodeProcess] = {}
    try:
        strangers["other"] = NodeProcess(tmp_path / "other" / "node0", "--bootstrap", node0.p2p_address)
        strangers["twin"] = NodeProcess(tmp_path / "twin" / "node4", "--bootstrap", node0.p2p_address)
        for proc in strangers.values():
            proc.wait_started()
        info = {label: rpc(proc.rpc_url, "net_info") for label, proc in strangers.items()}
        assert info["other"]["chain_id"] != testnet_info["chain_id"]
        assert info["twin"]["chain_id"] == testnet_info["chain_id"]
        # Each runs its own genesis: block 0 names the genesis document as its parent.
        block0 = {}
        for label, proc in strangers.items():
            assert info[label]["genesis_hash"] == genesis[label]
            first = rpc(proc.rpc_url, "chain_getBlock", 0)
            assert first["parent"] == genesis[label], (label, first)
            block0[label] = first["hash"]
        assert len({testnet_block0, *block0.values()}) == 3
        ids = {label: i["node_id"] for label, i in info.items()}
        # A refusal names the mismatch; the stranger's chain id or genesis tells whose it is,
        # in its own log and in node0's (the node id is not known before the handshake ends).
        marker = {"other": info["other"]["chain_id"], "twin": twin_genesis[:16]}
        wanted = {"other": ("chain",), "twin": ("genesis",)}

        def refusals(label: str) -> list[dict]:
            own = log_events(strangers[label].log_path)
            theirs = log_events(node0.log_path, node0_offset)
            return [e for e in own + theirs
                    if e.get("event") == "peer_refused" and marker[label] in str(e.get("text", ""))]

        for label in strangers:
            found = wait_for(lambda: refusals(label), 30.0, f"a peer_refused log line about the {label} stranger")
            for event in found:
                assert event.get("level") == "warning", event
                assert any(word in str(event.get("reason", "")) for word in wanted[label]), event

        def apart() -> dict:
            view = {"node0_peers": peer_ids(node0.rpc_url)}
            for label, proc in strangers.items():
                view[label] = {"peers": health(proc.rpc_url)["peers"], "head": rpc(proc.rpc_url, "chain_getHead"),
                               "block0": rpc(proc.rpc_url, "chain_getBlockHash", 0)}
            return view

        def stays_apart(view: dict) -> bool:
            return (not view["node0_peers"] & set(ids.values())
                    and all(view[label]["peers"] == 0 and view[label]["head"]["height"] == 0
                            and view[label]["head"]["hash"] == view[label]["block0"] == block0[label]
                            for label in strangers))

        holds_for(apart, REFUSED_WINDOW_S, "strangers refused: 0 peers, not among node0's, on their own genesis",
                  stays_apart)
        for label, proc in strangers.items():
            assert proc.proc.poll() is None, f"the {label} stranger exited"
        # The testnet took nothing from them either.
        assert rpc(node0.rpc_url, "chain_getBlockHash", 0) == testnet_block0
        assert rpc(node0.rpc_url, "net_info")["genesis_hash"] == testnet_info["genesis_hash"]
        grows(node0.rpc_url)
    finally:
        codes = {label: proc.stop() for label, proc in strangers.items()}
    assert codes == {"other": 0, "twin": 0}, f"strangers did not exit cleanly on SIGTERM: {codes}"


# --- 6. SIGKILL and restart ---------------------------------------------------------------------


def test_node_killed_while_mining_restarts_from_disk_and_rejoins(net):
    name = "node2"
    converged(net, min_height=5)
    node = net.nodes[name]
    status = rpc(node.rpc_url, "consensus_status")
    assert status["mining"] is True and status["hashes_tried"] > 0, status
    before = health(node.rpc_url)["height"]
    assert before >= 5

    net.kill(name)
    with pytest.raises(OSError):
        health(node.rpc_url)  # really gone: nothing listens on its RPC port
    others = [net.url(n) for n in net.names if n != name]
    # The others go on without it.
    grows(others[0])
    highest_while_down = max(height(u) for u in others)

    log_offset = file_size(node.log_path)
    node = net.start(name)
    loaded = wait_for(lambda: find_event(node.log_path, "store_loaded", log_offset), 30.0,
                      f"store_loaded in {node.log_path} after the restart")
    assert loaded["height"] > 0, f"{name} restarted from genesis: {loaded}"
    assert loaded["height"] >= before - 2, f"{name} had height {before} before SIGKILL, restored {loaded}"
    first_health = health(node.rpc_url)["height"]
    assert first_health >= before - 2, (before, first_health)

    # Rejoined: the same block as every other node at a height above any head of the time it was down.
    common_height, _hash = converged(net, min_height=highest_while_down + 1)
    assert common_height > highest_while_down
    status = rpc(node.rpc_url, "consensus_status")
    assert status["mining"] is True, status
