"""The docker target of `chainlab chaos`: the same experiment as the local target
(testnet.chaos.LocalRun) on a Docker Compose testnet, with the nemesis acting on
containers instead of processes.

  kill       `docker kill` (SIGKILL; the restart policy leaves a killed node down), then
             `docker start` at the event's end: the node resumes from its volume.
  pause      `docker pause` / `docker unpause` (the cgroup freezer: no privileges needed).
  partition  an `isolate` partition is `docker network disconnect` of the node from the
             compose network (and `connect --alias` back): the way compose users cut a
             node off; the other shapes, delay, loss and skew go through the nodes' own
             fault layer (admin_setFaults), as on the local target.

The run writes its compose file (node/compose.py, with the chaos run's genesis: seed,
the minimal preset, accounts for the load) and an override with the byzantine nodes'
CHAINLAB_BYZANTINE into --out, and runs them under a project name of its own, so it
never touches another testnet; `down -v` and a sweep by the project's label remove
everything, also after an error or Ctrl-C. RPC is published on 127.0.0.1 only; each
node's RPC cookie is copied out of its container after every start.
"""

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any, Callable

from testnet.chaos import (
    LOAD_ACCOUNTS,
    POW_HASHRATE_TOTAL,
    PRESET,
    ROLE_SWITCHES,
    ChaosUsageError,
    LocalRun,
)
from testnet.nemesis import LocalNemesis

DOCKER_TIMEOUT_S = 60.0  # one docker command that starts, stops or inspects something
UP_TIMEOUT_S = 900.0  # `up` may build the image first (cached afterwards)
HEALTHY_TIMEOUT_S = 180.0
DOWN_TIMEOUT_S = 120.0
PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"
BASE_IMAGE_LOCAL = "chainlab-base:local"  # scripts/docker-base.sh (no registry here)
HOME_IN_CONTAINER = "/data/home"
REPO = Path(__file__).resolve().parents[1]


class DockerError(RuntimeError):
    pass


def _run(argv: list[str], timeout_s: float = DOCKER_TIMEOUT_S, check: bool = True,
         env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, env=env, cwd=cwd,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise DockerError(f"{' '.join(argv)} did not finish within {timeout_s:g} s") from None
    except FileNotFoundError:
        raise DockerError(f"{argv[0]}: command not found") from None
    if check and done.returncode != 0:
        raise DockerError(f"{' '.join(argv)} exited {done.returncode}: {(done.stderr or done.stdout)[-1500:]}")
    return done


async def _arun(argv: list[str], timeout_s: float = DOCKER_TIMEOUT_S) -> None:
    """A docker command from the event loop (the nemesis must not block the sampler)."""
    await asyncio.to_thread(_run, argv, timeout_s)


def compose_command() -> list[str]:
    """`docker compose` (v2) when it works, else `docker-compose` (v1); ChaosUsageError when
    neither does or no engine answers."""
    if shutil.which("docker") is None:
        raise ChaosUsageError("--target docker needs the docker command")
    if _run(["docker", "info"], 30, check=False).returncode != 0:
        raise ChaosUsageError("--target docker: no Docker engine answers (docker info failed)")
    if _run(["docker", "compose", "version"], 20, check=False).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose") and _run(["docker-compose", "version"], 20, check=False).returncode == 0:
        return ["docker-compose"]
    raise ChaosUsageError("--target docker needs `docker compose` or `docker-compose`")


class DockerProject:
    """One compose project: its files in `out_dir`, its containers found by label."""

    def __init__(self, out_dir: Path, nodes: int, name: str):
        self.out_dir = out_dir
        self.nodes = nodes
        self.name = name
        self.compose = compose_command()
        self.rpc_ports: list[int] = []
        self.env = dict(os.environ)
        self._containers: dict[str, str] = {}

    def cli(self, *args: str, timeout_s: float = DOCKER_TIMEOUT_S, check: bool = True) -> subprocess.CompletedProcess:
        files = ["-f", str(self.out_dir / "docker-compose.yml")]
        if (self.out_dir / "docker-compose.override.yml").exists():
            files += ["-f", str(self.out_dir / "docker-compose.override.yml")]
        return _run([*self.compose, "-p", self.name, "--project-directory", str(REPO), *files, *args],
                    timeout_s, check, env=self.env, cwd=REPO)

    def container(self, service: str) -> str:
        if service not in self._containers:
            found = _run(["docker", "ps", "-aq", "--filter", f"label={PROJECT_LABEL}={self.name}",
                          "--filter", f"label={SERVICE_LABEL}={service}"]).stdout.split()
            if len(found) != 1:
                raise DockerError(f"{len(found)} containers for service {service} of project {self.name}")
            self._containers[service] = found[0]
        return self._containers[service]

    def state(self, service: str) -> dict[str, Any]:
        return json.loads(_run(["docker", "inspect", "--format", "{{json .State}}", self.container(service)]).stdout)

    def network(self, service: str) -> str:
        networks = json.loads(_run(["docker", "inspect", "--format", "{{json .NetworkSettings.Networks}}",
                                    self.container(service)]).stdout) or {}
        if not networks:
            return f"{self.name}_default"
        return sorted(networks)[0]

    def copy_out(self, service: str, path: str, dest: Path) -> Path:
        dest.parent.mkdir(parents=True, exist_ok=True)
        _run(["docker", "cp", f"{self.container(service)}:{path}", str(dest)])
        return dest

    def leftovers(self) -> list[str]:
        left = []
        for kind in ("container", "volume", "network"):
            listing = ["docker", kind, "ls", "-q", "--filter", f"label={PROJECT_LABEL}={self.name}"]
            if kind == "container":
                listing.insert(3, "-a")
            left += [f"{kind} {i}" for i in _run(listing, check=False).stdout.split()]
        return left

    def sweep(self) -> None:
        """Force-remove anything still carrying the project's label."""
        for kind, remove in (("container", ["docker", "rm", "-f"]), ("volume", ["docker", "volume", "rm", "-f"]),
                             ("network", ["docker", "network", "rm"])):
            listing = ["docker", kind, "ls", "-q", "--filter", f"label={PROJECT_LABEL}={self.name}"]
            if kind == "container":
                listing.insert(3, "-a")
            ids = _run(listing, check=False).stdout.split()
            if ids:
                _run(remove + ids, check=False)


class DockerNemesis(LocalNemesis):
    """LocalNemesis with containers for processes (see the module docstring)."""

    project: DockerProject
    cookie_dir: Path
    isolated: dict[int, str]  # node -> the network it was disconnected from

    def attach(self, project: DockerProject, cookie_dir: Path) -> "DockerNemesis":
        self.project, self.cookie_dir, self.isolated = project, cookie_dir, {}
        return self

    def _service(self, i: int) -> str:
        return self.nodes[i].name

    def _running_pid(self, i: int) -> int | None:
        try:
            state = self.project.state(self._service(i))
        except DockerError as exc:
            self.note(f"{self._service(i)}: {exc}")
            return None
        return (state.get("Pid") or None) if state.get("Running") else None

    async def _kill(self, i: int) -> bool:
        if self._running_pid(i) is None:
            return False
        await _arun(["docker", "kill", self.project.container(self._service(i))])
        self.state[i].killed = True
        self.state[i].paused = False
        self.state[i].applied = None
        return True

    async def _restart(self, i: int) -> bool:
        name = self._service(i)
        if self._running_pid(i) is not None and not self.state[i].killed:
            return True
        try:
            await _arun(["docker", "start", self.project.container(name)])
        except DockerError as exc:
            self.note(f"restart {name} failed: {exc}")
            return False
        if not await self._wait_answering(i, HEALTHY_TIMEOUT_S):
            self.note(f"restart {name}: no answer on its RPC within {HEALTHY_TIMEOUT_S:g} s")
            return False
        self.state[i].killed = False
        self.note(f"{name} restarted")
        await self._push(i)
        return True

    async def _wait_answering(self, i: int, timeout_s: float) -> bool:
        """Health over the published port, then the node's new cookie copied out."""
        from testnet.observe import ObserveError

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(ObserveError, DockerError, OSError):
                await self.clients.call(self.nodes[i], "net_info", timeout_s=2.0)
                await asyncio.to_thread(copy_cookie, self.project, self._service(i), self.cookie_dir)
                return True
            await asyncio.sleep(0.5)
        return False

    def _pause(self, i: int) -> bool:
        if self._running_pid(i) is None:
            return False
        _run(["docker", "pause", self.project.container(self._service(i))])
        self.state[i].paused = True
        return True

    def _resume(self, i: int) -> None:
        _run(["docker", "unpause", self.project.container(self._service(i))], check=False)
        self.state[i].paused = False

    async def start(self, event) -> bool:
        if event.kind == "partition" and event.params.get("shape") == "isolate":
            return await self._isolate(event)
        return await super().start(event)

    async def end(self, event) -> None:
        if event.kind == "partition" and event.params.get("shape") == "isolate":
            await self._reconnect([n for n in self.isolated if n in self._isolated_by(event)])
            entry = self._open.pop(id(event), None)
            if entry is not None:
                entry["end_s"] = self.now_s()
            self.note("partition healed (network reconnected)")
            return
        await super().end(event)

    def _isolated_by(self, event) -> list[int]:
        sides = event.params["sides"]
        return list(min(sides, key=len))

    async def _isolate(self, event) -> bool:
        done = False
        for n in self._isolated_by(event):
            if n in self.isolated or self.state[n].killed:
                continue
            network = self.project.network(self._service(n))
            await _arun(["docker", "network", "disconnect", network, self.project.container(self._service(n))])
            self.isolated[n] = network
            done = True
        names = ", ".join(self._service(n) for n in self._isolated_by(event))
        if done:
            self.injected["partition"] = self.injected.get("partition", 0) + 1
            entry = {"kind": "partition", "start_s": self.now_s(), "end_s": None, "nodes": list(event.nodes),
                     "shape": "isolate (docker network disconnect)"}
            self.timeline.append(entry)
            self._open[id(event)] = entry
        self.note(f"partition isolate {names}: docker network disconnect" + ("" if done else " (no effect)"))
        return done

    async def _reconnect(self, nodes: list[int]) -> None:
        for n in nodes:
            network = self.isolated.pop(n)
            # The alias is the service name the other nodes dial.
            await _arun(["docker", "network", "connect", "--alias", self._service(n), network,
                         self.project.container(self._service(n))])

    async def heal_all(self) -> list[str]:
        problems = []
        try:
            await self._reconnect(sorted(self.isolated))
        except DockerError as exc:
            problems.append(f"network reconnect: {exc}")
        return problems + await super().heal_all()

    def emergency_resume(self) -> None:
        for i in range(len(self.nodes)):
            with contextlib.suppress(DockerError):
                self._resume(i)


def copy_cookie(project: DockerProject, service: str, cookie_dir: Path) -> Path:
    """The node's current RPC token, copied where NodeHandle.token() reads it."""
    dest = cookie_dir / service / "rpc.cookie"
    tmp = dest.with_name("rpc.cookie.new")
    project.copy_out(service, f"{HOME_IN_CONTAINER}/rpc.cookie", tmp)
    os.chmod(tmp, 0o600)
    os.replace(tmp, dest)
    return dest


class DockerRun(LocalRun):
    """A chaos run on a fresh compose testnet; files in `out_dir`."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.project_name = f"chaos{self.config.seed}-{uuid.uuid4().hex[:8]}"
        self.project: DockerProject | None = None
        self.cookie_dir = self.out_dir / "cookies"

    def create(self) -> None:
        from node.compose import compose_file, rpc_port_variable
        from node.settings import BYZANTINE_BEHAVIOURS
        from node.testnet import pick_port_bases

        missing = sorted({s for role in self.schedule.byzantine.values() for s in ROLE_SWITCHES[role]}
                         - set(BYZANTINE_BEHAVIOURS))
        if missing:
            raise ChaosUsageError(f"this build's nodes do not know the byzantine switch(es) {', '.join(missing)}")
        project = DockerProject(self.out_dir, self.config.nodes, self.project_name)
        _, rpc_base = pick_port_bases(self.config.nodes, 2)
        project.rpc_ports = [rpc_base + i for i in range(self.config.nodes)]
        genesis_args = ("--seed", self.network_seed, "--preset", PRESET,
                        "--accounts", str(LOAD_ACCOUNTS + self.config.nodes))
        (self.out_dir / "docker-compose.yml").write_text(
            compose_file(self.config.nodes, self.config.consensus, rpc_base, genesis_args))
        override = ["services:"]
        for i in range(self.config.nodes):
            role = self.schedule.byzantine.get(i)
            if role is not None:
                override += [f"  node{i}:", "    environment:",
                             f"      - CHAINLAB_BYZANTINE={','.join(ROLE_SWITCHES[role])}"]
        override_path = self.out_dir / "docker-compose.override.yml"
        override_path.unlink(missing_ok=True)
        if len(override) > 1:  # (docker-compose v1 takes an empty override for a version 1 file)
            override_path.write_text("\n".join(override) + "\n")
        project.env.update({"CONSENSUS": self.config.consensus,
                            "CHAINLAB_HASHRATE": str(-(-POW_HASHRATE_TOTAL // self.config.nodes)),
                            "CHAINLAB_MINING": "true"})
        for i, port in enumerate(project.rpc_ports):
            project.env[rpc_port_variable(i)] = str(port)
        if "BASE_IMAGE" not in project.env and _run(["docker", "image", "inspect", BASE_IMAGE_LOCAL], 30,
                                                    check=False).returncode == 0:
            project.env["BASE_IMAGE"] = BASE_IMAGE_LOCAL
        self.project = project

    def up(self) -> None:
        assert self.project is not None
        began = time.monotonic()
        done = self.project.cli("up", "-d", timeout_s=UP_TIMEOUT_S, check=False)
        self.log(done.stdout + done.stderr)
        if done.returncode != 0:
            raise RuntimeError(f"`docker compose up` failed ({done.returncode}); see {self.log_path}:\n"
                               f"{done.stderr[-2000:]}")
        # Healthy, and each node's cookie copied out for the admin RPC.
        deadline = time.monotonic() + HEALTHY_TIMEOUT_S
        pending = [f"node{i}" for i in range(self.config.nodes)]
        while pending and time.monotonic() < deadline:
            for service in list(pending):
                with contextlib.suppress(DockerError, json.JSONDecodeError):
                    health = self.project.state(service).get("Health", {}).get("Status")
                    if health == "healthy":
                        copy_cookie(self.project, service, self.cookie_dir)
                        pending.remove(service)
            if pending:
                time.sleep(1.0)
        if pending:
            raise RuntimeError(f"{', '.join(pending)} not healthy within {HEALTHY_TIMEOUT_S:g} s "
                               f"(docker compose -p {self.project_name} logs)")
        self.project.copy_out("node0", f"{HOME_IN_CONTAINER}/genesis.json",
                                                         self.out_dir / "genesis.json")
        self.progress_and_log(f"compose project {self.project_name} healthy in {time.monotonic() - began:.0f} s")

    def down(self) -> None:
        if self.project is None:
            return
        for i in range(self.config.nodes):  # a frozen container cannot be stopped
            with contextlib.suppress(DockerError):
                _run(["docker", "unpause", self.project.container(f"node{i}")], check=False)
        logs = self.project.cli("logs", "--no-color", timeout_s=DOWN_TIMEOUT_S, check=False)
        (self.out_dir / "compose.log").write_text(logs.stdout + logs.stderr)
        done = self.project.cli("down", "-v", "--remove-orphans", timeout_s=DOWN_TIMEOUT_S, check=False)
        self.log(done.stdout + done.stderr)
        self.project.sweep()
        left = self.project.leftovers()
        if left:
            self.log(f"left behind by project {self.project_name}: {left}")

    def run(self) -> dict:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.create()
        self.progress_and_log(f"compose testnet of {self.config.nodes} {self.config.consensus} nodes, project "
                              f"{self.project_name}, files in {self.out_dir} (preset {PRESET}); starting")
        try:
            self.up()
            report = asyncio.run(self.experiment())
            report["compose_project"] = self.project_name
            report["testnet"] = str(self.out_dir)
            return report
        finally:
            self.down()

    # -- what the experiment needs --

    def handles(self) -> list:
        from testnet.observe import NodeHandle

        assert self.project is not None
        return [NodeHandle(f"node{i}", f"http://127.0.0.1:{port}", self.cookie_dir / f"node{i}")
                for i, port in enumerate(self.project.rpc_ports)]

    def chain_id(self) -> str:
        from node.settings import read_genesis

        return read_genesis(self.out_dir / "genesis.json").chain_id

    def make_nemesis(self, handles: list, clients: Any, clock: Callable[[], float], t0: float) -> Any:
        assert self.project is not None
        nemesis = DockerNemesis(self.out_dir, handles, clients, self.config.seed, clock=clock, t0=t0,
                                log=self.progress_and_log)
        return nemesis.attach(self.project, self.cookie_dir)
