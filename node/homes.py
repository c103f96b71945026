"""Writing a network's folders: `chainlab genesis` and `chainlab testnet up`.

A network folder holds:

    genesis.json    the shared genesis
    accounts.json   [{index, address, key_file, balance}] of the prefunded accounts
    accounts/       account-<i>.key, one Ed25519 seed per prefunded account (mode 0600)
    node<i>/        one node home per node (see node.settings); under proof of stake each
                    home also holds validator.key: node i is genesis validator i

Keys are derived from the seed, so the same command gives the same network on every
machine: convenient for a laboratory, and the reason these keys must never hold value.
"""

import json
import time
from pathlib import Path

from consensus.crypto import KeyPair
from consensus.genesis import Genesis
from consensus.errors import ChainlabError
from consensus.presets import account_key, genesis_params, make_genesis, validator_key
from node.settings import (
    CONFIG_FILE,
    GENESIS_FILE,
    KEY_FILE,
    VALIDATOR_KEY_FILE,
    Settings,
    SettingsError,
    settings_toml,
    write_key,
)

ACCOUNTS_FILE = "accounts.json"
NODES_MAX = 64
ACCOUNTS_MAX = 10_000
BOOTSTRAP_PEERS = 3  # each node dials this many ring neighbours; peer exchange does the rest
STAKE_DEFAULT = 32_000_000  # each genesis validator's stake (proof of stake)


def node_key(seed: str, index: int) -> KeyPair:
    return KeyPair.derive(seed, "node", index)


def create_network(
    out: Path,
    *,
    consensus: str = "pow",
    nodes: int = 4,
    accounts: int = 8,
    seed: str = "chainlab",
    preset: str = "testnet",
    balance: int = 1_000_000_000,
    p2p_hosts: list[str] | None = None,
    p2p_port_base: int = 30303,
    rpc_port_base: int = 8545,
    same_ports: bool = False,
    mining: bool = True,
    hashrate: int = 20_000,
    stake: int = STAKE_DEFAULT,
    timestamp_ms: int | None = None,
) -> Genesis:
    """Write genesis, prefunded accounts and `nodes` node homes under `out`.

    `p2p_hosts[i]` is how the other nodes reach node i (127.0.0.1 by default, a service
    name under docker); with `same_ports` every node uses the base ports (containers).
    Proof of stake: every node is a genesis validator staking `stake`, with its key in
    its home's validator.key; `mining` and `hashrate` do not apply (no miner runs).
    """
    if not 1 <= nodes <= NODES_MAX:
        raise SettingsError(f"--nodes must be 1..{NODES_MAX}")
    if not 0 <= accounts <= ACCOUNTS_MAX:
        raise SettingsError(f"--accounts must be 0..{ACCOUNTS_MAX}")
    if (out / GENESIS_FILE).exists():
        raise SettingsError(f"{out} already holds a network ({GENESIS_FILE}); choose another --out or remove it")
    pos = consensus == "pos"
    try:
        stake_min = genesis_params(consensus, preset).get("stake_min", 0)  # a proof-of-stake parameter
        if pos and stake < stake_min:
            raise SettingsError(f"--stake must be at least the preset's stake_min, {stake_min}, not {stake}")
        genesis = make_genesis(consensus=consensus, preset=preset, seed=seed, accounts=accounts, balance=balance,
                               timestamp_ms=timestamp_ms if timestamp_ms is not None else int(time.time() * 1000),
                               validators=nodes if pos else 0, stake=stake)
    except (ValueError, ChainlabError) as exc:
        raise SettingsError(str(exc)) from None
    hosts = p2p_hosts or ["127.0.0.1"] * nodes
    if len(hosts) != nodes:
        raise SettingsError("one P2P host per node is needed")

    def p2p_port(i: int) -> int:
        return p2p_port_base if same_ports else p2p_port_base + i

    def rpc_port(i: int) -> int:
        return rpc_port_base if same_ports else rpc_port_base + i

    out.mkdir(parents=True, exist_ok=True)
    (out / "accounts").mkdir(exist_ok=True)
    listing = []
    for i in range(accounts):
        key = account_key(seed, i)
        key_file = out / "accounts" / f"account-{i}.key"
        write_key(key_file, key.seed)
        listing.append({"index": i, "address": key.address.hex(), "key_file": str(key_file.resolve()),
                        "balance": balance})
    (out / ACCOUNTS_FILE).write_text(json.dumps(listing, indent=2) + "\n")
    addresses = [f"{hosts[i]}:{p2p_port(i)}" for i in range(nodes)]
    genesis_text = genesis.to_json() + "\n"
    for i in range(nodes):
        home = out / f"node{i}"
        home.mkdir(exist_ok=True)
        peers = [addresses[(i + k) % nodes] for k in range(1, min(BOOTSTRAP_PEERS, nodes - 1) + 1)]
        settings = Settings(
            name=f"node{i}",
            p2p_host="0.0.0.0" if same_ports else "127.0.0.1",
            p2p_port=p2p_port(i),
            advertise=addresses[i],
            bootstrap=tuple(peers),
            rpc_host="0.0.0.0" if same_ports else "127.0.0.1",
            rpc_port=rpc_port(i),
            mining=mining and not pos,
            hashrate=hashrate,
        )
        settings.validate()
        (home / CONFIG_FILE).write_text(settings_toml(settings))
        (home / GENESIS_FILE).write_text(genesis_text)
        write_key(home / KEY_FILE, node_key(seed, i).seed)
        if pos:
            write_key(home / VALIDATOR_KEY_FILE, validator_key(seed, i).seed)
    (out / GENESIS_FILE).write_text(genesis_text)  # last: its presence marks a complete network
    return genesis
