"""The local testnet under Docker Compose (marked `docker`; `scripts/test.sh -m docker`).

The repository's docker-compose.yml runs as a compose project with a unique name and
free host ports for the four RPCs; the project's containers, volumes and network are
removed at the end of each class, whatever happened (`down -v`, then by label).

Proof of stake (the default): `up -d` brings every node to healthy and to one head; a
transfer sent through one published RPC port is included with the same block on every
node; running the genesis step again reuses the network, and refuses another engine;
a node SIGKILLed with `docker compose kill` restarts from its volume at about the
height it had (not from genesis) and rejoins; a node cut off the compose network for
about ten seconds falls behind while the others go on, and catches up once
reconnected; `down -v` leaves no container, volume or network of the project.
Proof of work (CONSENSUS=pow): every node mines, and they agree on one chain.

Without a reachable engine (or compose) each class skips with the reason. Every wait
polls a condition with a deadline. The first test without the marker needs no docker:
the committed docker-compose.yml is exactly what `chainlab testnet compose --nodes 4`
writes.
"""

import hashlib
import http.client
import json
import os
import subprocess
import time

import pytest

from consensus.presets import account_key
from dockernet import ComposeProject, DockerFailed, base_image, compose_command, docker, docker_unavailable
from node.compose import compose_file, rpc_port_variable
from realnet import CHAINLAB, REPO, chainlab, free_port, health, holds_for, rpc, wait_for

NODES = 4
HEALTHY_TIMEOUT_S = 120.0  # four nodes on two cores, each healthcheck every 3 s
SYNC_TIMEOUT_S = 90.0  # a reconnecting node waits out its dial backoff (at most 30 s), then syncs
TX_TIMEOUT_S = 60.0
DISCONNECT_S = 10.0  # how long a node stays cut off the compose network
SEED = "chainlab"  # the genesis step's default --seed
NAMES = [f"node{i}" for i in range(NODES)]


# --- the compose file is the generator's (no docker needed) ---------------------------------


def test_committed_compose_file_is_what_testnet_compose_writes(tmp_path):
    committed = (REPO / "docker-compose.yml").read_text()
    assert compose_file(NODES, "pos") == committed
    assert chainlab("testnet", "compose", "--nodes", "4").stdout == committed
    out = tmp_path / "compose.yml"
    chainlab("testnet", "compose", "--nodes", "2", "--consensus", "pow", "--rpc-port", "9000", "--out", str(out))
    text = out.read_text()
    assert "node1:" in text and "node2:" not in text
    assert '"127.0.0.1:${NODE1_RPC_PORT:-9001}:8545"' in text
    assert '--consensus "$${CONSENSUS:-pow}" --nodes 2' in text
    assert text.count("pull_policy: build") == 3 and text.count("restart: unless-stopped") == 2
    bad = chainlab("testnet", "compose", "--nodes", "2", "--rpc-port", "65535", check=False)
    assert bad.returncode == 2 and "65535" in bad.stderr


@pytest.mark.docker
@pytest.mark.parametrize("nodes, consensus", [(1, "pow"), (7, "pos")])
def test_compose_accepts_generated_files(tmp_path, nodes, consensus):
    reason = docker_unavailable()
    if reason:
        pytest.skip(f"docker suite skipped: {reason}")
    path = tmp_path / "docker-compose.yml"
    path.write_text(compose_file(nodes, consensus))
    ComposeProject(compose_command(), {}, path).cli("config", "-q")


# --- helpers ---------------------------------------------------------------------------------


def heads(urls: list[str]) -> list[dict]:
    return [rpc(u, "chain_getHead") for u in urls]


def one_head(urls: list[str], min_height: int) -> dict | None:
    """The head when every node has the same one at `min_height` or above, else None."""
    found = heads(urls)
    if len({h["hash"] for h in found}) == 1 and found[0]["height"] >= min_height:
        return found[0]
    return None


def refuses(url: str) -> bool:
    try:
        health(url)
    except (OSError, ValueError, http.client.HTTPException):
        return True
    return False


def report(request, line: str) -> None:
    """A line on the terminal even under capture (the suite reports its timings)."""
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line(f"docker suite: {line}")


def start_project(request, consensus: str | None) -> ComposeProject:
    """`up -d` of docker-compose.yml as a new project on free ports, removed at teardown."""
    reason = docker_unavailable()
    if reason:
        pytest.skip(f"docker suite skipped: {reason}")
    ports = []
    while len(ports) < NODES:  # four distinct ports free right now
        port = free_port()
        if port not in ports:
            ports.append(port)
    env = {rpc_port_variable(i): str(port) for i, port in enumerate(ports)}
    env["BASE_IMAGE"] = base_image()
    env["CONSENSUS"] = consensus or ""
    net = ComposeProject(compose_command(), env)
    net.urls = [f"http://127.0.0.1:{port}" for port in ports]
    failed_before = request.session.testsfailed

    def finish():
        if any(net.leftovers().values()):
            net.down()
        if request.session.testsfailed > failed_before:
            report(request, f"{net.name} logs (last lines before `down`):\n{net.last_logs}")
    request.addfinalizer(finish)
    try:
        seconds = net.up()
    except DockerFailed as exc:
        if env["BASE_IMAGE"] == "python:3.12-slim":  # pulled from a registry
            raise DockerFailed(f"{exc}\nWithout a registry, build a local base first: scripts/docker-base.sh, "
                               f"then BASE_IMAGE=chainlab-base:local") from None
        raise
    report(request, f"{net.name}: `{' '.join(net.compose)} up -d` returned in {seconds:.1f} s "
                    f"(base image {env['BASE_IMAGE']})")
    return net


def wait_healthy(net: ComposeProject, names: list[str], timeout_s: float = HEALTHY_TIMEOUT_S) -> None:
    wait_for(lambda: {n: net.health_status(n) for n in names}, timeout_s, "every node healthy",
             until=lambda s: all(v == "healthy" for v in s.values()))


def up_healthy(request, consensus: str | None) -> ComposeProject:
    """A new project with every node healthy and on one head at height 3 or more."""
    started = time.monotonic()
    net = start_project(request, consensus)
    wait_healthy(net, NAMES)
    healthy_s = time.monotonic() - started
    head = wait_for(lambda: one_head(net.urls, 3), HEALTHY_TIMEOUT_S, "one head at height 3 or more on every node")
    report(request, f"{net.name} ({consensus or 'default'}): every node healthy {healthy_s:.1f} s from the start "
                    f"of `up`; one head at height {head['height']} after {time.monotonic() - started:.1f} s")
    return net


# --- proof of stake, the default ----------------------------------------------------------------


@pytest.fixture(scope="class")
def net(request):
    return up_healthy(request, consensus=None)  # CONSENSUS unset: the file's default, pos


@pytest.mark.docker
class TestComposeTestnet:
    """One project for the whole class, in order: each test leaves every node running."""

    def test_every_node_is_healthy_and_follows_one_head(self, net):
        assert [net.health_status(n) for n in NAMES] == ["healthy"] * NODES
        assert net.inspect("genesis")["State"]["ExitCode"] == 0
        for i, url in enumerate(net.urls):
            h = health(url)
            assert h["name"] == f"node{i}" and h["peers"] >= 1
            assert rpc(url, "consensus_status")["engine"] == "pos"
        # Published on the host's loopback only; P2P not published at all.
        for name in NAMES:
            ports = net.inspect(name)["NetworkSettings"]["Ports"]
            assert [b["HostIp"] for b in ports["8545/tcp"]] == ["127.0.0.1"]
            assert not ports.get("30303/tcp")
            assert net.inspect(name)["Config"]["User"] == "chainlab"
        # The chain grows, and every node agrees on it: one genesis, one block at a common height.
        first = one_head(net.urls, 3) or wait_for(lambda: one_head(net.urls, 3), SYNC_TIMEOUT_S, "one head")
        later = wait_for(lambda: one_head(net.urls, first["height"] + 2), SYNC_TIMEOUT_S,
                         f"one head above height {first['height'] + 1}")
        assert len({rpc(u, "chain_getBlockHash", first["height"]) for u in net.urls}) == 1
        assert len({rpc(u, "chain_getBlockHash", 0) for u in net.urls}) == 1
        assert later["height"] >= first["height"] + 2

    def test_a_transfer_through_a_published_port_is_included_on_every_node(self, net, tmp_path):
        # The account keys live in the genesis volume; copy one out as a user would.
        key_file = net.copy_out("node0", "/genesis/net/accounts/account-1.key", tmp_path / "account-1.key")
        key = account_key(SEED, 1)
        assert key_file.read_text().strip() == key.seed.hex()
        sender = key.address.hex()
        recipient = hashlib.sha256(f"{net.name} recipient".encode()).hexdigest()[:40]
        before = [rpc(u, "chain_getAccount", sender) for u in net.urls]
        assert len({(a["balance"], a["nonce"]) for a in before}) == 1
        done = chainlab("tx", "transfer", "--url", net.urls[1], "--key", str(key_file), "--to", recipient,
                        "--amount", "777", "--fee", "10", "--wait", "--timeout", str(TX_TIMEOUT_S),
                        timeout_s=TX_TIMEOUT_S + 30)
        txid = next(w for w in done.stdout.split() if len(w) == 64 and all(c in "0123456789abcdef" for c in w))
        found = [wait_for(lambda: rpc(u, "chain_getTransaction", txid), TX_TIMEOUT_S, f"{txid} included at {u}",
                          until=lambda s: s["status"] in ("included", "finalized")) for u in net.urls]
        assert len({(f["height"], f["block"]) for f in found}) == 1  # the same block everywhere
        for url in net.urls:
            assert rpc(url, "chain_getAccount", recipient)["balance"] == 777
            after = rpc(url, "chain_getAccount", sender)
            assert after["balance"] == before[0]["balance"] - 777 - 10
            assert after["nonce"] == before[0]["nonce"] + 1

    def test_the_genesis_step_reuses_the_network_and_refuses_another_engine(self, net):
        genesis_hash = rpc(net.urls[0], "chain_getBlockHash", 0)
        again = net.cli("run", "--rm", "-T", "genesis", timeout_s=120)
        assert "reusing the pos network" in again.stdout + again.stderr
        other = net.cli("run", "--rm", "-T", "-e", "CONSENSUS=pow", "genesis", timeout_s=120, check=False)
        assert other.returncode != 0
        assert "holds a pos network, not pow" in other.stdout + other.stderr
        net.cli("restart", "node1", timeout_s=120)  # a node that starts again keeps its network
        wait_healthy(net, ["node1"])
        assert rpc(net.urls[1], "chain_getBlockHash", 0) == genesis_hash
        wait_for(lambda: one_head(net.urls, 1), SYNC_TIMEOUT_S, "one head after node1 restarted")

    def test_a_killed_node_restarts_from_its_volume_and_rejoins(self, net):
        url = net.urls[2]
        others = [u for i, u in enumerate(net.urls) if i != 2]
        height_before = rpc(url, "chain_getHead")["height"]
        assert height_before >= 3
        started_before = len(net.log_events("node2", "node_started"))
        net.cli("kill", "node2")  # SIGKILL: no clean shutdown
        state = wait_for(lambda: net.inspect("node2")["State"], 30, "node2 to be dead",
                         until=lambda s: not s["Running"])
        assert state["ExitCode"] == 137  # 128 + SIGKILL; and `unless-stopped` leaves a killed node down
        wait_for(lambda: refuses(url), 30, "node2's RPC to stop answering")
        # The others go on without it, so it has blocks to catch up on.
        wait_for(lambda: min(h["height"] for h in heads(others)), SYNC_TIMEOUT_S,
                 f"the others past height {height_before + 1}", until=lambda h: h >= height_before + 2)
        assert net.health_status("node2") == "exited"

        net.cli("start", "node2")
        wait_healthy(net, ["node2"])
        started = net.log_events("node2", "node_started")
        assert len(started) == started_before + 1
        # Right after the restart, before any sync, the node is where its volume left it.
        assert height_before - 1 <= started[-1]["height"] <= height_before + 2, (height_before, started[-1])
        loaded = net.log_events("node2", "store_loaded")[-1]
        assert loaded["blocks"] >= started[-1]["height"] > 0
        target = max(h["height"] for h in heads(others))
        head = wait_for(lambda: one_head(net.urls, target + 1), SYNC_TIMEOUT_S,
                        f"node2 back on the one head above height {target}")
        assert head["height"] > height_before

    def test_a_node_cut_off_the_network_catches_up(self, net):
        url = net.urls[3]
        others = [u for i, u in enumerate(net.urls) if i != 3]
        network = net.network("node3")
        container = net.container("node3")
        start_height = max(h["height"] for h in heads(others))
        docker("network", "disconnect", network, container)
        cut_at = time.monotonic()
        try:
            wait_for(lambda: refuses(url), 15, "node3's published port to stop answering")
            # The others keep going; the window is the duration under test.
            holds_for(lambda: [health(u) for u in others], DISCONNECT_S - (time.monotonic() - cut_at),
                      "the other nodes answering", check=lambda hs: all(h["status"] == "ok" for h in hs))
            majority = wait_for(lambda: one_head(others, start_height + 2), SYNC_TIMEOUT_S,
                                f"the others on one head above height {start_height + 1}")
            isolated = net.exec_health("node3")
            assert isolated["head"] != majority["hash"]  # it cannot have seen the others' new blocks
            # Something above genesis is final (the others hold 3/4 of the stake: they finalize
            # without node3; the network has been up for about a minute, two epochs or more).
            final_height = wait_for(lambda: rpc(others[0], "chain_getHead")["final_height"], SYNC_TIMEOUT_S,
                                    "a finalized block above genesis", until=lambda h: h > 0)
            final_hash = rpc(others[0], "chain_getBlockHash", final_height)
        finally:
            # The alias is the service name the other nodes dial.
            docker("network", "connect", "--alias", "node3", network, container)
        assert time.monotonic() - cut_at >= DISCONNECT_S
        target = max(h["height"] for h in heads(others))
        head = wait_for(lambda: one_head(net.urls, target + 1), SYNC_TIMEOUT_S,
                        f"node3 back on the one head above height {target}")
        assert head["height"] > majority["height"]
        # What was finalized while node3 was away stays so, on every node, node3 included;
        # and the majority's branch won: its head at the cut is on every node's chain now
        # (three of four validators' latest votes are on it; LMD-GHOST orders them by slot).
        for u in net.urls:
            assert rpc(u, "chain_getHead")["final_height"] >= final_height
            assert rpc(u, "chain_getBlockHash", final_height) == final_hash
            assert rpc(u, "chain_getBlockHash", majority["height"]) == majority["hash"]

    def test_down_v_leaves_nothing_behind(self, net):
        assert all(net.leftovers().values())  # before: containers, volumes and the network exist
        left = net.down()
        assert left == {"container": [], "volume": [], "network": []}
        assert net.leftovers() == {"container": [], "volume": [], "network": []}


# --- proof of work ----------------------------------------------------------------------------


@pytest.mark.docker
class TestComposeTestnetPow:
    def test_consensus_pow_mines_one_chain(self, request):
        net = up_healthy(request, consensus="pow")
        urls = net.urls
        head = one_head(urls, 3) or wait_for(lambda: one_head(urls, 3), SYNC_TIMEOUT_S, "one head")
        statuses = [rpc(u, "consensus_status") for u in urls]
        assert [s["engine"] for s in statuses] == ["pow"] * NODES
        assert all(s["mining"] and s["hashes_tried"] > 0 for s in statuses)
        assert sum(s["blocks_mined"] for s in statuses) >= 3
        later = wait_for(lambda: one_head(urls, head["height"] + 2), SYNC_TIMEOUT_S,
                         f"one head above height {head['height'] + 1}")
        assert len({rpc(u, "chain_getBlockHash", head["height"]) for u in urls}) == 1
        assert later["height"] >= head["height"] + 2


# --- chaos ----------------------------------------------------------------------------------------


@pytest.mark.docker
def test_docker_chaos_run_injects_every_fault_and_keeps_every_invariant(request, tmp_path):
    """`chainlab chaos --target docker`: kill (docker kill/start), pause (docker pause),
    partitions (docker network disconnect, and the nodes' fault layer), delay and skew
    (admin RPC) and an equivocating validator, on a compose project of its own; every
    invariant holds, every fault type was injected, and nothing is left behind."""
    reason = docker_unavailable()
    if reason:
        pytest.skip(f"docker suite skipped: {reason}")
    out = tmp_path / "chaos"
    started = time.monotonic()
    argv = [*CHAINLAB, "chaos", "--target", "docker", "--consensus", "pos", "--nodes", "4", "--duration", "90",
            "--seed", "2", "--faults", "kill,pause,partition,delay,skew,equivocate", "--out", str(out)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=900, cwd=REPO, stdin=subprocess.DEVNULL,
                          env={**os.environ, "BASE_IMAGE": base_image()})
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-6000:]
    result = json.loads((out / "report.json").read_text())
    assert result["ok"] and result["target"] == "docker"
    for kind in ("kill", "pause", "partition", "delay", "skew", "equivocate"):
        assert result["faults_injected"].get(kind, 0) >= 1, (kind, result["faults_injected"])
    assert all(v["ok"] for v in result["verdicts"]), [v for v in result["verdicts"] if not v["ok"]]
    assert result["convergence_s"] is not None
    assert result["transactions"]["included"] > 0 and result["transactions"]["lost"] == 0
    assert (out / "timeline.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    project = result["compose_project"]
    left = docker("ps", "-aq", "--filter", f"label=com.docker.compose.project={project}").stdout.split()
    left += docker("volume", "ls", "-q", "--filter", f"label=com.docker.compose.project={project}").stdout.split()
    assert not left, f"left behind by {project}: {left}"
    report(request, f"chaos --target docker: injected {result['faults_injected']}; verdicts "
                    f"{sum(v['ok'] for v in result['verdicts'])}/{len(result['verdicts'])} pass; converged "
                    f"{result['convergence_s']} s after the heal; transactions {result['transactions']}; "
                    f"{time.monotonic() - started:.0f} s in all")
