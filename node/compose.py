"""`chainlab testnet compose`: a Docker Compose file for a local testnet of N nodes.

`compose_file(nodes, consensus)` is the one place the compose file is written; the
committed docker-compose.yml is `chainlab testnet compose --nodes 4` (a test checks).

The layout, and why:

- `genesis` runs once per network: `chainlab genesis --same-ports --p2p-host-format
  node{i}` writes every node's home into the named volume `genesis` (homes that bind
  0.0.0.0 and name their peers by service name). genesis.json is written last, so its
  presence marks a complete network: when it exists the step reuses it, and refuses to
  when $CONSENSUS asks for the other engine (delete everything with `down -v` first).
- `node<i>` has its own volume at /data. On its first start it copies its home from the
  genesis volume (mounted read-only at /genesis) to /data/home, through a temporary
  folder and a rename so a crash mid-copy leaves no half home; afterwards the node
  runs from /data/home and its chain survives kill, stop and restart. A copy rather
  than the genesis volume mounted read-write: each node's state is then one volume
  that nothing else writes, which `docker compose down -v` deletes with the rest.
  A node whose volume holds another genesis than the genesis volume refuses to start.
- RPC is published on the host's 127.0.0.1 only, node i on $NODE<i>_RPC_PORT (default
  base + i); P2P (30303) stays on the compose network, where peers dial node<i>:30303.
- node0 starts first; the others wait until it is healthy, so their first dial finds
  a listener. Every node has a healthcheck on GET /health and restarts unless stopped;
  `init: true` puts a minimal init as PID 1 so the miner worker is reaped.
- Every built service has `pull_policy: build` (DESIGN.md section 8: no registry) and
  builds the same image, chainlab:local, from the Dockerfile with $BASE_IMAGE.
- CHAINLAB_MINING, CHAINLAB_HASHRATE and CHAINLAB_LOG_LEVEL set on the host reach
  every node (they override config.toml); other CHAINLAB_* settings, or per-node ones,
  go in the `environment:` of a docker-compose.override.yml.

Compose interpolates `${VAR}` itself, so the shell's `$` is written `$$` in commands.
"""

import json
import shlex

from node.homes import NODES_MAX
from node.settings import ENV_PREFIX

IMAGE = "chainlab:local"
BASE_IMAGE_DEFAULT = "python:3.12-slim"
RPC_PORT = 8545  # inside each container (`chainlab genesis --same-ports` defaults)
P2P_PORT = 30303
RPC_PORT_BASE = 8545  # on the host: node i publishes RPC on base + i unless NODE<i>_RPC_PORT says otherwise
CONSENSUS_DEFAULT = "pos"
# Node settings a user may set on the host for every node at once; the others either
# differ per node or must match the compose file (ports, hosts, peers).
PASSED_SETTINGS = ("mining", "hashrate", "log_level")
HEALTHCHECK = {
    # Python, not curl: the base image may have no curl. urlopen raises on a 503 (starting).
    "test": ["CMD", "python", "-c",
             f"import urllib.request; urllib.request.urlopen('http://127.0.0.1:{RPC_PORT}/health', timeout=2)"],
    "interval": "3s",
    "timeout": "3s",
    "retries": 5,
    "start_period": "60s",  # failures while the node opens its store do not count
}


def rpc_port_variable(index: int) -> str:
    return f"NODE{index}_RPC_PORT"


def _genesis_script(nodes: int, consensus: str, genesis_args: tuple[str, ...] = ()) -> str:
    extra = "".join(f" {shlex.quote(arg)}" for arg in genesis_args)
    return f"""\
if [ -f /data/net/genesis.json ]; then
  found=$$(python -c 'import json; print(json.load(open("/data/net/genesis.json"))["consensus"])')
  if [ -n "$$CONSENSUS" ] && [ "$$CONSENSUS" != "$$found" ]; then
    echo "genesis: the genesis volume holds a $$found network, not $$CONSENSUS; run without CONSENSUS to keep it, or delete every chain with: docker compose down -v" >&2
    exit 1
  fi
  echo "genesis: reusing the $$found network in the genesis volume (docker compose down -v deletes it)"
else
  chainlab genesis --consensus "$${{CONSENSUS:-{consensus}}}" --nodes {nodes} --same-ports --p2p-host-format 'node{{i}}' --out /data/net{extra}
fi
"""


def _node_script(name: str) -> str:
    return f"""\
if [ ! -d /data/home ]; then
  rm -rf /data/home.new
  cp -R /genesis/net/{name} /data/home.new
  mv /data/home.new /data/home
  echo "{name}: home copied from the genesis volume to this node's volume"
elif ! cmp -s /genesis/net/genesis.json /data/home/genesis.json; then
  echo "{name}: this node's volume holds another network than the genesis volume; delete both with: docker compose down -v" >&2
  exit 1
fi
exec chainlab node --home /data/home
"""


def _block(script: str, indent: str) -> list[str]:
    return [f"{indent}- |"] + [f"{indent}  {line}" if line else "" for line in script.splitlines()]


def _build(indent: str) -> list[str]:
    return [
        f"{indent}build:",
        f"{indent}  context: .",
        f"{indent}  args:",
        f"{indent}    BASE_IMAGE: ${{BASE_IMAGE:-{BASE_IMAGE_DEFAULT}}}",
        f"{indent}image: {IMAGE}",
        f"{indent}pull_policy: build",
    ]


def compose_file(nodes: int = 4, consensus: str = CONSENSUS_DEFAULT, rpc_port_base: int = RPC_PORT_BASE,
                 genesis_args: tuple[str, ...] = ()) -> str:
    """The docker-compose.yml of a testnet of `nodes` nodes, `consensus` for a new network;
    `genesis_args` go to its `chainlab genesis` (chaos runs: --seed, --preset, --accounts)."""
    if not 1 <= nodes <= NODES_MAX:
        raise ValueError(f"nodes must be 1..{NODES_MAX}, not {nodes}")
    if consensus not in ("pow", "pos"):
        raise ValueError(f"consensus must be pow or pos, not {consensus!r}")
    if not 1 <= rpc_port_base <= 65_535 - (nodes - 1):
        raise ValueError(f"the RPC ports {rpc_port_base}..{rpc_port_base + nodes - 1} must be within 1..65535")
    names = [f"node{i}" for i in range(nodes)]
    s = "  "  # one YAML indent
    lines = [
        f"# A local chainlab testnet: a genesis step, then {', '.join(names) if nodes <= 4 else f'node0..node{nodes - 1}'}.",
        f"# Written by `chainlab testnet compose --nodes {nodes} --consensus {consensus}` (node/compose.py says why",
        "# it is laid out this way); change the generator and regenerate rather than edit this file.",
        "#",
        "#   docker compose up -d       # CONSENSUS=pow docker compose up -d for proof of work",
        f"#   curl http://127.0.0.1:{rpc_port_base}/health   # node0's RPC; node i answers on port {rpc_port_base} + i",
        "#   docker compose down -v     # stop every node and delete every chain",
        "#",
        f"# Variables read here: CONSENSUS (pow or pos, for a new network; default {consensus}),",
        "# BASE_IMAGE (the Dockerfile's base; scripts/docker-base.sh makes one without a registry),",
        "# NODE<i>_RPC_PORT (node i's RPC port on 127.0.0.1), and for every node",
        "# " + ", ".join(ENV_PREFIX + n.upper() for n in PASSED_SETTINGS) + ".",
        "",
        "services:",
        f"{s}genesis:",
        *_build(s * 2),
        f"{s * 2}entrypoint: {json.dumps(['/bin/sh', '-ec'])}",
        f"{s * 2}command:",
        *_block(_genesis_script(nodes, consensus, genesis_args), s * 3),
        f"{s * 2}environment:",
        f"{s * 3}CONSENSUS: ${{CONSENSUS:-}}",
        f"{s * 2}volumes:",
        f"{s * 3}- genesis:/data",
        f"{s * 2}healthcheck:",
        f"{s * 3}disable: true",
    ]
    for i, name in enumerate(names):
        depends = [("genesis", "service_completed_successfully")]
        if i > 0:
            depends.append(("node0", "service_healthy"))
        lines += [
            "",
            f"{s}{name}:",
            *_build(s * 2),
            f"{s * 2}restart: unless-stopped",
            f"{s * 2}init: true",
            f"{s * 2}depends_on:",
        ]
        for service, condition in depends:
            lines += [f"{s * 3}{service}:", f"{s * 4}condition: {condition}"]
        lines += [
            f"{s * 2}entrypoint: {json.dumps(['/bin/sh', '-ec'])}",
            f"{s * 2}command:",
            *_block(_node_script(name), s * 3),
            f"{s * 2}environment:",
            *[f"{s * 3}- {ENV_PREFIX}{setting.upper()}" for setting in PASSED_SETTINGS],
            f"{s * 2}volumes:",
            f"{s * 3}- {name}:/data",
            f"{s * 3}- genesis:/genesis:ro",
            f"{s * 2}ports:",
            f"{s * 3}- \"127.0.0.1:${{{rpc_port_variable(i)}:-{rpc_port_base + i}}}:{RPC_PORT}\"",
            f"{s * 2}expose:",
            f"{s * 3}- \"{P2P_PORT}\"",
            f"{s * 2}healthcheck:",
        ]
        for key, value in HEALTHCHECK.items():
            lines.append(f"{s * 3}{key}: {json.dumps(value) if isinstance(value, list) else value}")
    lines += ["", "volumes:", f"{s}genesis: {{}}", *[f"{s}{name}: {{}}" for name in names]]
    return "\n".join(lines) + "\n"
