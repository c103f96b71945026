"""Helpers for the docker suite: one Docker Compose project of the repository's
docker-compose.yml, driven the way a user drives it (`docker compose ...`, `docker ...`)
and cleaned up whatever happens.

Every project gets a unique name (`-p`), so its containers, volumes and network are
its own and a failed run never touches another project; `ComposeProject.down()` runs
`down -v` and then force-removes anything left carrying the project's label.
Containers are found by the labels compose puts on them, which `docker compose` (v2)
and `docker-compose` (v1) both set, so the suite runs with either.
"""

import json
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

from realnet import LOG_CHARS_SHOWN, REPO

DOCKER_TIMEOUT_S = 60.0  # one docker command that starts, stops or inspects something
BUILD_UP_TIMEOUT_S = 600.0  # `up` builds the image first (pull_policy: build); cached after the first time
DOWN_TIMEOUT_S = 120.0
PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"
BASE_IMAGE_LOCAL = "chainlab-base:local"  # what scripts/docker-base.sh builds


class DockerFailed(AssertionError):
    pass


def _tail(text: str | bytes | None) -> str:
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    text = text or ""
    return text if len(text) <= LOG_CHARS_SHOWN else "..." + text[-LOG_CHARS_SHOWN:]


def run(argv: list[str], timeout_s: float = DOCKER_TIMEOUT_S, check: bool = True,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, cwd=REPO, env=env,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        raise DockerFailed(f"{' '.join(argv)} did not finish within {timeout_s:g} s; "
                           f"stdout: {_tail(exc.stdout)} stderr: {_tail(exc.stderr)}") from None
    if check and done.returncode != 0:
        raise DockerFailed(f"{' '.join(argv)} exited {done.returncode}; "
                           f"stdout: {_tail(done.stdout)} stderr: {_tail(done.stderr)}")
    return done


def docker(*args: str, timeout_s: float = DOCKER_TIMEOUT_S, check: bool = True) -> subprocess.CompletedProcess:
    return run(["docker", *args], timeout_s, check)


# --- what this machine has ------------------------------------------------------------


def compose_command() -> list[str] | None:
    """`docker compose` (the v2 plugin) when it works, else `docker-compose` (v1), else None."""
    if shutil.which("docker"):
        try:
            if run(["docker", "compose", "version"], 20, check=False).returncode == 0:
                return ["docker", "compose"]
        except DockerFailed:
            pass
    if shutil.which("docker-compose"):
        try:
            if run(["docker-compose", "version"], 20, check=False).returncode == 0:
                return ["docker-compose"]
        except DockerFailed:
            pass
    return None


def docker_unavailable() -> str | None:
    """Why the docker suite cannot run here (no client, no engine, no compose), or None."""
    if not shutil.which("docker"):
        return "no docker command"
    try:
        info = run(["docker", "info", "--format", "{{.ServerVersion}}"], 20, check=False)
    except DockerFailed:
        return "docker info did not answer within 20 s"
    if info.returncode != 0 or not info.stdout.strip():
        said = (info.stderr.strip().splitlines() or [f"docker info exited {info.returncode}"])[-1]
        return f"no Docker engine reachable: {said[:200]}"
    if compose_command() is None:
        return "neither `docker compose` nor `docker-compose` works"
    return None


def base_image() -> str:
    """$BASE_IMAGE, else the local base of scripts/docker-base.sh when it exists, else the
    Dockerfile's default (python:3.12-slim, which needs a registry)."""
    if os.environ.get("BASE_IMAGE"):
        return os.environ["BASE_IMAGE"]
    if docker("image", "inspect", BASE_IMAGE_LOCAL, check=False).returncode == 0:
        return BASE_IMAGE_LOCAL
    return "python:3.12-slim"


# --- one compose project ------------------------------------------------------------------


class ComposeProject:
    """The repository's docker-compose.yml as project `chainlab-test-<random>`."""

    def __init__(self, compose: list[str], env: dict[str, str], compose_file: Path = REPO / "docker-compose.yml"):
        self.compose = compose
        self.name = f"chainlab-test-{uuid.uuid4().hex[:10]}"
        self.file = compose_file
        # Compose reads its ${VARIABLES} from the environment it runs in; CHAINLAB_* settings
        # of the caller's shell would reach every node, so they are left out.
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("CHAINLAB_")} | env
        self.urls: list[str] = []  # the published RPC of node0, node1, ... (set by whoever picks the ports)
        self.last_logs = ""  # the services' last log lines, taken just before `down`
        self._containers: dict[str, str] = {}

    def cli(self, *args: str, timeout_s: float = DOCKER_TIMEOUT_S, check: bool = True) -> subprocess.CompletedProcess:
        """`docker compose -p NAME -f FILE ARGS...`."""
        return run([*self.compose, "-p", self.name, "-f", str(self.file), *args], timeout_s, check, self.env)

    def up(self) -> float:
        """`up -d` (builds the image, waits for genesis and for node0 to be healthy); seconds taken."""
        start = time.monotonic()
        self.cli("up", "-d", timeout_s=BUILD_UP_TIMEOUT_S)
        return time.monotonic() - start

    # --- containers, found by label

    def _labelled(self, kind: str) -> list[str]:
        if kind == "container":
            args = ["ps", "-a", "-q"]
        else:
            args = [kind, "ls", "-q"]
        out = docker(*args, "--filter", f"label={PROJECT_LABEL}={self.name}").stdout
        return sorted(set(out.split()))

    def leftovers(self) -> dict[str, list[str]]:
        """Containers, volumes and networks of this project that still exist (by label and by name)."""
        found = {kind: self._labelled(kind) for kind in ("container", "volume", "network")}
        for kind in ("volume", "network"):
            named = docker(kind, "ls", "-q", "--filter", f"name={self.name}").stdout.split()
            found[kind] = sorted(set(found[kind]) | set(named))
        return found

    def container(self, service: str) -> str:
        """The id of the service's container (the same across kill and start)."""
        if service not in self._containers:
            ids = docker("ps", "-a", "-q", "--filter", f"label={PROJECT_LABEL}={self.name}",
                         "--filter", f"label={SERVICE_LABEL}={service}").stdout.split()
            if len(ids) != 1:
                raise DockerFailed(f"expected one container of service {service}, found {ids}")
            self._containers[service] = ids[0]
        return self._containers[service]

    def inspect(self, service: str) -> dict[str, Any]:
        return json.loads(docker("inspect", self.container(service)).stdout)[0]

    def health_status(self, service: str) -> str:
        state = self.inspect(service)["State"]
        return state.get("Health", {}).get("Status", "none") if state["Running"] else state["Status"]

    def network(self, service: str) -> str:
        """The compose network the service's container is on (NAME_default)."""
        networks = list(self.inspect(service)["NetworkSettings"]["Networks"])
        if len(networks) != 1:
            raise DockerFailed(f"{service} is on networks {networks}, expected exactly one")
        return networks[0]

    def logs(self, service: str) -> str:
        """Everything the service's container wrote, across restarts."""
        done = docker("logs", self.container(service))
        return done.stdout + done.stderr

    def log_events(self, service: str, event: str) -> list[dict]:
        """The node's JSON log lines named `event`, oldest first."""
        found = []
        for line in self.logs(service).splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and record.get("event") == event:
                found.append(record)
        return found

    def exec_health(self, service: str) -> dict:
        """GET /health from inside the container (works while it is cut off from the network)."""
        code = ("import json, urllib.request; "
                "print(urllib.request.urlopen('http://127.0.0.1:8545/health', timeout=5).read().decode())")
        return json.loads(docker("exec", self.container(service), "python", "-c", code).stdout)

    def copy_out(self, service: str, path: str, dest: Path) -> Path:
        docker("cp", f"{self.container(service)}:{path}", str(dest))
        return dest

    def logs_tail(self, lines: int = 40) -> str:
        done = self.cli("logs", "--no-color", "--tail", str(lines), check=False, timeout_s=DOCKER_TIMEOUT_S)
        return _tail(done.stdout + done.stderr)

    def down(self) -> dict[str, list[str]]:
        """`down -v`, then force-remove whatever it left; returns what `down -v` left behind
        and raises when `down -v` itself failed (after the forced removal)."""
        self.last_logs = self.logs_tail()  # for a failure report after the containers are gone
        failure = None
        try:
            self.cli("down", "-v", "--remove-orphans", "-t", "5", timeout_s=DOWN_TIMEOUT_S)
        except DockerFailed as exc:
            failure = exc
        left = self.leftovers()
        if left["container"]:
            docker("rm", "-f", "-v", *left["container"], check=False)
        if left["volume"]:
            docker("volume", "rm", "-f", *left["volume"], check=False)
        if left["network"]:
            docker("network", "rm", *left["network"], check=False)
        if failure is not None:
            raise failure
        return left
