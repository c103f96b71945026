"""Transport faults in the real node (node/faults.py, wired in node/runtime.py), set over
the privileged admin RPC.

Checks: parse_faults normalises good input and names the field of every bad one; the
per-frame decisions (drop, seeded loss, delay) and the frame gate, which must discard
whole frames only whatever the read sizes; then, over real TCP on 127.0.0.1 with
in-process runtimes and blocks made on demand (miner_generate): the admin methods need
the token and round-trip; a full cut keeps two nodes apart (without a ban) until it is
cleared; drop_out alone silences one direction; a delay still delivers and is counted;
a clock skew shows in a mined block's timestamp. Nothing waits on a sleep: every wait
is on a condition, with a timeout.
"""

import asyncio
import contextlib
import io
import json
import random
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from test_runtime import needs_pos_core, runtime_for, wait_for

from node.faults import (
    ADMIN_METHODS,
    DROP,
    LINKS_MAX,
    LOSE,
    SEND,
    FaultLayer,
    FaultSet,
    FaultsError,
    FrameGate,
    LinkFaults,
    parse_faults,
    split_frames,
)
from node.homes import create_network
from node.logs import configure, node_logger
from node.rpc_methods import PRIVILEGED
from node.runtime import NodeRuntime
from node.settings import COOKIE_FILE
from p2p.framing import FrameDecoder, encode_frame

A_ID = "0123456789abcdef0123456789abcdef"
B_ID = "fedcba9876543210fedcba9876543210"

# --- parse_faults -----------------------------------------------------------------------


def test_good_input_is_normalised() -> None:
    faults = parse_faults({"links": {A_ID.upper(): {"drop_in": True, "loss": 1},
                                     B_ID: {"delay_ms": 300}},
                           "clock_skew_ms": -5_000, "seed": 9})
    assert faults.links == {A_ID: LinkFaults(drop_in=True, loss=1.0), B_ID: LinkFaults(delay_ms=300)}
    assert (faults.clock_skew_ms, faults.seed) == (-5_000, 9)
    assert faults.to_json() == {
        "links": {A_ID: {"drop_in": True, "drop_out": False, "delay_ms": 0, "loss": 1.0},
                  B_ID: {"drop_in": False, "drop_out": False, "delay_ms": 300, "loss": 0.0}},
        "clock_skew_ms": -5_000,
    }
    assert parse_faults({}) == FaultSet() == parse_faults(None) == parse_faults([])
    # `chainlab rpc admin_setFaults '{...}'` sends the object as the one positional parameter.
    assert parse_faults([{"clock_skew_ms": 7}]).clock_skew_ms == 7
    assert parse_faults({"links": {A_ID: {"drop_in": True, "drop_out": True}}}).links[A_ID].cut


@pytest.mark.parametrize("params, field", [
    ({"links": {A_ID: {"delay_ms": 60_001}}}, f"links.{A_ID}.delay_ms"),
    ({"links": {A_ID: {"delay_ms": -1}}}, f"links.{A_ID}.delay_ms"),
    ({"links": {A_ID: {"delay_ms": 1.5}}}, f"links.{A_ID}.delay_ms"),
    ({"links": {A_ID: {"loss": 1.01}}}, f"links.{A_ID}.loss"),
    ({"links": {A_ID: {"loss": -0.1}}}, f"links.{A_ID}.loss"),
    ({"links": {A_ID: {"loss": True}}}, f"links.{A_ID}.loss"),
    ({"links": {A_ID: {"drop_in": "yes"}}}, f"links.{A_ID}.drop_in"),
    ({"links": {A_ID: {"drop_out": 1}}}, f"links.{A_ID}.drop_out"),
    ({"links": {A_ID: True}}, f"links.{A_ID} must be an object"),
    ({"clock_skew_ms": 3_600_001}, "clock_skew_ms"),
    ({"clock_skew_ms": -3_600_001}, "clock_skew_ms"),
    ({"seed": -1}, "seed"),
    ({"seed": "x"}, "seed"),
    ({"links": [A_ID]}, "links must be an object"),
    ({"links": {A_ID[:-1]: {}}}, "is not a node id"),
    ({"links": {"g" * 32: {}}}, "is not a node id"),
    ({"links": {"0x" + A_ID[2:]: {}}}, "is not a node id"),
    ({"links": {f"{i:032x}": {} for i in range(LINKS_MAX + 1)}}, f"at most {LINKS_MAX}"),
    ({"links": {A_ID: {}, A_ID.upper(): {}}}, "twice"),
    ({"link": {}}, "unknown key(s) link"),
    ({"links": {A_ID: {"drop": True}}}, f"links.{A_ID}: unknown key(s) drop"),
    ("cut", "named parameters"),
])
def test_bad_input_names_the_field(params: Any, field: str) -> None:
    with pytest.raises(FaultsError) as err:
        parse_faults(params)
    assert field in str(err.value)
    assert isinstance(err.value, ValueError)


def test_the_admin_methods_need_the_token() -> None:
    assert set(ADMIN_METHODS) <= PRIVILEGED


# --- decisions and frames -------------------------------------------------------------------


def _layer(seed: int = 0, **link: Any) -> FaultLayer:
    layer = FaultLayer()
    layer.set(FaultSet({A_ID: LinkFaults(**link)}, seed=seed))
    return layer


def test_decide_out_drops_delays_and_loses_by_the_seed() -> None:
    assert _layer(drop_out=True).decide_out(A_ID) == (DROP, 0)
    assert _layer(delay_ms=250).decide_out(A_ID) == (SEND, 250)
    assert _layer(drop_out=True).decide_out(B_ID) == (SEND, 0)  # another peer: untouched
    assert _layer(drop_out=True).decide_out(None) == (SEND, 0)  # handshake not done yet
    one, two, other = _layer(7, loss=0.5), _layer(7, loss=0.5), _layer(8, loss=0.5)
    runs = [[layer.decide_out(A_ID)[0] for _ in range(200)] for layer in (one, two, other)]
    assert runs[0] == runs[1] != runs[2]  # the seed decides, and only the seed
    assert 50 < runs[0].count(LOSE) < 150 and one.counters.frames_lost == runs[0].count(LOSE)
    everything = _layer(loss=1.0, delay_ms=5)
    assert everything.decide_out(A_ID) == (LOSE, 0) and everything.counters.frames_delayed == 0
    layer = _layer(delay_ms=5)
    for _ in range(3):
        layer.decide_out(A_ID)
    assert layer.to_json()["counters"] == {"frames_dropped_in": 0, "frames_dropped_out": 0, "frames_delayed": 3,
                                           "frames_lost": 0, "connections_refused": 0}


def test_filter_out_decides_per_frame() -> None:
    frames = [encode_frame(bytes([i]) * (i + 1), 1 << 20) for i in range(10)]
    data = b"".join(frames)
    assert split_frames(data) == frames
    assert _layer(drop_out=True).filter_out(B_ID, data) == (data, 0)
    dropped = _layer(drop_out=True)
    assert dropped.filter_out(A_ID, data) == (b"", 0) and dropped.counters.frames_dropped_out == 10
    lossy = _layer(3, loss=0.5, delay_ms=40)
    kept, delay_ms = lossy.filter_out(A_ID, data)
    assert delay_ms == 40 and 0 < lossy.counters.frames_lost < 10
    assert split_frames(kept) == [f for f in frames if f in split_frames(kept)]  # whole frames, in order
    assert len(split_frames(kept)) == 10 - lossy.counters.frames_lost == lossy.counters.frames_delayed
    deaf = _layer(drop_in=True)
    assert deaf.filter_in(FrameGate(), B_ID, data) == data  # another peer: untouched
    assert deaf.filter_in(FrameGate(), A_ID, data) == b"" and deaf.counters.frames_dropped_in == 10


@pytest.mark.parametrize("seed", range(20))
def test_frame_gate_discards_whole_frames_whatever_the_reads(seed: int) -> None:
    """Random frame sizes (including a length prefix split across reads), random read
    sizes, drop_in switched on and off at random: what reaches the core always parses as
    a subsequence of the frames sent, and every frame is either delivered or counted."""
    rng = random.Random(seed)
    frames = [encode_frame(rng.randbytes(rng.randint(1, 300)), 1 << 20) for _ in range(60)]
    stream = b"".join(frames)
    gate, decoder = FrameGate(), FrameDecoder(1 << 20)
    delivered: list[bytes] = []
    dropped = 0
    at = 0
    while at < len(stream):
        size = rng.choice([1, 2, 3, 5, rng.randint(1, 700)])
        kept, n = gate.feed(stream[at:at + size], rng.random() < 0.4)
        dropped += n
        delivered += decoder.feed(kept)
        at += size
    bodies = [f[4:] for f in frames]
    assert decoder.buffered_bytes == 0 and len(delivered) + dropped == len(frames)
    it = iter(bodies)
    assert all(any(body == b for b in it) for body in delivered)  # in order, none invented
    assert 0 < dropped < len(frames)
    # Without drops the gate hands each read on untouched.
    clean = FrameGate()
    assert clean.feed(stream[:7], False) == (stream[:7], 0) and clean.feed(stream[7:], False) == (stream[7:], 0)


# --- real nodes over TCP ---------------------------------------------------------------------


async def call(node: NodeRuntime, method: str, params: Any = None, token: str | None = None) -> dict:
    """One JSON-RPC call; params as given (an object for named parameters)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    body: dict = {"jsonrpc": "2.0", "id": 1, "method": method}
    if params is not None:
        body["params"] = params
    async with aiohttp.ClientSession() as session:
        async with asyncio.timeout(30):
            async with session.post(f"http://127.0.0.1:{node.rpc_port}/", headers=headers, json=body) as r:
                return await r.json()


async def result(node: NodeRuntime, method: str, params: Any = None) -> Any:
    answer = await call(node, method, params, token(node))
    assert "result" in answer, answer
    return answer["result"]


def token(node: NodeRuntime) -> str:
    return (node.home / COOKIE_FILE).read_text().strip()


@contextlib.asynccontextmanager
async def running(*nodes: NodeRuntime):
    tasks = []
    try:
        for node in nodes:
            tasks.append(asyncio.create_task(node.run()))
            await asyncio.wait_for(node.started.wait(), 10)
        yield
    finally:
        for node in nodes:
            node.request_stop()
        await asyncio.wait_for(asyncio.gather(*tasks), 20)


def linked(x: NodeRuntime, y: NodeRuntime) -> bool:
    """x has y as a peer past the handshake."""
    return any(p.ready and p.node_id == y.core.node_id for p in x.core.peers.values())


def pair(tmp_path: Path, seed: str) -> tuple[NodeRuntime, Path]:
    """Node0 of two proof-of-work nodes that mine only when asked, and node1's home
    (its runtime is made once node0's port is known: node1 dials node0)."""
    create_network(tmp_path, nodes=2, accounts=0, seed=seed, preset="minimal")
    a = runtime_for(tmp_path / "node0", bootstrap="", mining="false")
    return a, tmp_path / "node1"


def cut_from(other: NodeRuntime) -> dict:
    return {"links": {other.core.node_id: {"drop_in": True, "drop_out": True}}}


@needs_pos_core
async def test_admin_methods_need_the_token_and_round_trip(tmp_path: Path) -> None:
    create_network(tmp_path, nodes=1, accounts=0, seed="adm", preset="minimal")
    node = runtime_for(tmp_path / "node0", bootstrap="", mining="false")
    log = io.StringIO()
    configure("info", log)
    node.log = node_logger("node0", "t")  # a bound logger keeps the stream it was made with
    async with running(node):
        for method in ADMIN_METHODS:
            assert (await call(node, method, {} if method == "admin_setFaults" else None))["error"]["code"] == -32001
        wanted = {"links": {A_ID: {"drop_out": True, "loss": 0.25}}, "clock_skew_ms": 1_500, "seed": 3}
        got = await result(node, "admin_setFaults", wanted)
        normal = {"links": {A_ID: {"drop_in": False, "drop_out": True, "delay_ms": 0, "loss": 0.25}},
                  "clock_skew_ms": 1_500}
        assert {k: got[k] for k in normal} == normal
        assert set(got["counters"]) == {"frames_dropped_in", "frames_dropped_out", "frames_delayed", "frames_lost",
                                        "connections_refused"}
        assert await result(node, "admin_getFaults") == got
        # Bad input: -32602 naming the field, and nothing changes.
        bad = await call(node, "admin_setFaults", {"links": {A_ID: {"delay_ms": 70_000}}}, token(node))
        assert bad["error"]["code"] == -32602 and f"links.{A_ID}.delay_ms" in bad["error"]["message"]
        assert (await call(node, "admin_getFaults", [1], token(node)))["error"]["code"] == -32602
        assert await result(node, "admin_getFaults") == got
        assert node.faults.clock_skew_ms == 1_500
        cleared = await result(node, "admin_clearFaults")
        assert cleared["links"] == {} and cleared["clock_skew_ms"] == 0 and node.faults.clock_skew_ms == 0
        assert await result(node, "admin_getFaults") == cleared
    events = [json.loads(line) for line in log.getvalue().splitlines() if '"faults_set"' in line]
    assert [e.get("method") for e in events] == ["admin_setFaults", "admin_clearFaults"]
    assert events[0]["links"][A_ID]["loss"] == 0.25 and events[0]["clock_skew_ms"] == 1_500


@needs_pos_core
async def test_a_full_cut_keeps_two_nodes_apart_without_a_ban_until_cleared(tmp_path: Path) -> None:
    a, home_b = pair(tmp_path, "cut")
    async with running(a):
        b = runtime_for(home_b, bootstrap=f"127.0.0.1:{a.p2p_port}", mining="false")
        async with running(b):
            await wait_for(lambda: linked(a, b) and linked(b, a), 20, "the two nodes to connect")
            got = await result(a, "admin_setFaults", cut_from(b))
            assert got["links"][b.core.node_id] == {"drop_in": True, "drop_out": True, "delay_ms": 0, "loss": 0.0}
            await result(b, "admin_setFaults", cut_from(a))
            await wait_for(lambda: not linked(a, b) and not linked(b, a), 20, "the cut to close the connection")
            height_b = b.core.tree.head.height
            refused = a.faults.counters.connections_refused + b.faults.counters.connections_refused
            (block_hex,) = await result(a, "miner_generate", [1])
            block = bytes.fromhex(block_hex)
            # The core redials (its own backoff) and each new connection is closed after its
            # handshake: three of those after the block was made, and B still lacks it.
            await wait_for(lambda: a.faults.counters.connections_refused + b.faults.counters.connections_refused
                           >= refused + 3, 30, "redials to be cut off")
            assert b.core.tree.get(block) is None and b.core.tree.head.height == height_b
            # A closed socket is no offence: nobody is banned.
            assert await result(a, "net_listBans") == [] and await result(b, "net_listBans") == []
            await result(a, "admin_clearFaults")
            await result(b, "admin_clearFaults")
            await wait_for(lambda: b.core.tree.head.hash == block, 30, "B to reconnect and get A's block")
            assert b.core.tree.head.height == a.core.tree.head.height == height_b + 1
            assert (await result(b, "chain_getHead"))["hash"] == block_hex
            assert await result(a, "net_listBans") == [] and await result(b, "net_listBans") == []
            assert (await result(a, "admin_getFaults"))["counters"]["connections_refused"] >= 1  # counters kept


@needs_pos_core
async def test_drop_out_on_one_side_silences_that_direction(tmp_path: Path) -> None:
    a, home_b = pair(tmp_path, "oneway")
    async with running(a):
        b = runtime_for(home_b, bootstrap=f"127.0.0.1:{a.p2p_port}", mining="false")
        async with running(b):
            await wait_for(lambda: linked(a, b) and linked(b, a), 20, "the two nodes to connect")
            await result(a, "admin_setFaults", {"links": {b.core.node_id: {"drop_out": True}}})
            dropped = a.faults.counters.frames_dropped_out
            (first,) = await result(a, "miner_generate", [1])
            # The block's announcement and later answers to B (its pings) are dropped at A.
            await wait_for(lambda: a.faults.counters.frames_dropped_out >= dropped + 2, 20,
                           "A to drop frames to B after the block")
            assert b.core.tree.get(bytes.fromhex(first)) is None
            assert a.faults.counters.frames_dropped_in == 0  # B -> A still flows
            # Lifted: A's next block reaches B, which then fetches the first from A.
            await result(a, "admin_clearFaults")
            (second,) = await result(a, "miner_generate", [1])
            await wait_for(lambda: b.core.tree.head.hash.hex() == second, 30, "B to get A's next block")
            assert b.core.tree.canonical_at(b.core.tree.head.height - 1).hash.hex() == first
            assert await result(b, "net_listBans") == []


@needs_pos_core
async def test_a_delayed_link_still_delivers_and_counts(tmp_path: Path) -> None:
    a, home_b = pair(tmp_path, "slow")
    async with running(a):
        b = runtime_for(home_b, bootstrap=f"127.0.0.1:{a.p2p_port}", mining="false")
        async with running(b):
            await wait_for(lambda: linked(a, b) and linked(b, a), 20, "the two nodes to connect")
            await result(a, "admin_setFaults", {"links": {b.core.node_id: {"delay_ms": 300}}})
            (block,) = await result(a, "miner_generate", [1])
            await wait_for(lambda: b.core.tree.head.hash.hex() == block, 30, "the delayed block to reach B")
            counters = (await result(a, "admin_getFaults"))["counters"]
            assert counters["frames_delayed"] >= 1
            assert counters["frames_dropped_out"] == counters["frames_lost"] == 0


@needs_pos_core
async def test_clock_skew_shows_in_a_mined_block(tmp_path: Path) -> None:
    create_network(tmp_path, nodes=1, accounts=0, seed="skew", preset="minimal")
    node = runtime_for(tmp_path / "node0", bootstrap="", mining="false")
    skew_ms = 600_000  # ten minutes ahead
    async with running(node):
        assert (await result(node, "admin_setFaults", {"clock_skew_ms": skew_ms}))["clock_skew_ms"] == skew_ms
        before_ms = time.time() * 1000
        (block,) = await result(node, "miner_generate", [1])
        after_ms = time.time() * 1000
        stamp = (await result(node, "chain_getBlock", [block]))["timestamp_ms"]
        assert before_ms + skew_ms - 5_000 <= stamp <= after_ms + skew_ms + 5_000, (stamp - before_ms)
