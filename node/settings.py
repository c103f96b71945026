"""A node's home folder and its settings: TOML file, then CHAINLAB_* variables, then flags.

A node home holds:

    config.toml   the settings below (flat keys; unknown keys are an error)
    genesis.json  the network's genesis (every node of a network has the same file)
    node.key      the node's Ed25519 seed, 64 hex characters (mode 0600)
    validator.key proof of stake only, optional: the validator's Ed25519 seed, 64 hex
                  characters (mode 0600). Present: the node signs as that validator
                  (proposals, votes), guarded by the slashing-protection record in
                  chain.sqlite. Absent: the node follows the chain without signing.
    chain.sqlite  the store (node.store), created at first start
    rpc.cookie    the RPC bearer token, written at each start (mode 0600), removed at exit
    node.log      JSON log lines when the node runs under `chainlab testnet`

Each setting has one name used three ways: `p2p_port` in config.toml,
`CHAINLAB_P2P_PORT` in the environment, `--p2p-port` on the command line. Later
sources win: defaults < config.toml < environment < flags.

`byzantine` (default empty: honest) is for tests and chaos runs only: a list of
misbehaviours a validator commits on purpose, from BYZANTINE_BEHAVIOURS:
"double-propose" (two blocks for one slot), "double-vote" (two votes for one target)
and "surround-vote" (a vote surrounding an earlier one). Each skips the slashing
protection on purpose, so the network sees slashable evidence. Two more are the node's
own: "withhold" (selfish mining; proof of work, where blocks come from a miner) and
"spam" (either engine: invalid blocks and transactions sent to every peer, who ban it). In config.toml a list
(`byzantine = ["double-vote"]`), in the environment and on the command line a
comma-separated string (`CHAINLAB_BYZANTINE=double-vote,surround-vote`).
"""

import os
import tomllib
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from consensus.crypto import KeyPair
from consensus.genesis import Genesis

CONFIG_FILE = "config.toml"
GENESIS_FILE = "genesis.json"
KEY_FILE = "node.key"
VALIDATOR_KEY_FILE = "validator.key"
STORE_FILE = "chain.sqlite"
COOKIE_FILE = "rpc.cookie"
LOG_FILE = "node.log"
ENV_PREFIX = "CHAINLAB_"
HASHRATE_MAX = 100_000_000
# The values of node.core.NodeConfig.byzantine (the core's contract), in the order shown:
# a validator's three (proof of stake), then the node's own two ("withhold" is selfish
# mining, for a miner; "spam" sends peers invalid blocks and transactions).
BYZANTINE_BEHAVIOURS = ("double-propose", "double-vote", "surround-vote", "withhold", "spam")


class SettingsError(Exception):
    """Settings or a home a person must fix; the message says what and where."""


@dataclass(frozen=True)
class Settings:
    name: str = "node"
    p2p_host: str = "127.0.0.1"  # where the P2P listener binds
    p2p_port: int = 30303
    advertise: str = ""  # host:port peers should dial; p2p_host:p2p_port when empty
    bootstrap: tuple[str, ...] = ()  # host:port of peers to dial at start and keep
    rpc_host: str = "127.0.0.1"  # JSON-RPC binds loopback unless told otherwise
    rpc_port: int = 8545
    mining: bool = False  # mine continuously from the start
    hashrate: int = 20_000  # hashes per second cap of this node's miner; 0 = no cap
    log_level: str = "info"
    byzantine: tuple[str, ...] = ()  # misbehave on purpose (tests, chaos runs); empty = honest

    def validate(self) -> None:
        for name in ("p2p_port", "rpc_port"):
            value = getattr(self, name)
            if not 0 <= value <= 65_535:
                raise SettingsError(f"{name} must be a port number 0..65535, not {value}")
        if not 0 <= self.hashrate <= HASHRATE_MAX:
            raise SettingsError(f"hashrate must be 0..{HASHRATE_MAX} hashes per second (0 means no cap)")
        for address in self.bootstrap + ((self.advertise,) if self.advertise else ()):
            parse_address(address)
        if self.log_level not in ("debug", "info", "warning", "error"):
            raise SettingsError("log_level must be one of debug, info, warning, error")
        unknown = [b for b in self.byzantine if b not in BYZANTINE_BEHAVIOURS]
        if unknown:
            raise SettingsError(f"byzantine: unknown behaviour(s) {', '.join(map(repr, unknown))}; choose from "
                                f"{', '.join(BYZANTINE_BEHAVIOURS)} (comma-separated), or leave it empty")

    @property
    def advertised_address(self) -> str:
        return self.advertise or f"{self.p2p_host}:{self.p2p_port}"


SETTING_TYPES: dict[str, type] = {f.name: f.type for f in fields(Settings)}  # type: ignore[misc]

# Comments settings_toml writes above a setting.
_TOML_NOTES = {
    "byzantine": [
        "For tests and chaos runs only: make this node's validator misbehave on purpose, a list of",
        f"{', '.join(BYZANTINE_BEHAVIOURS)}. Empty (the default) is honest.",
    ],
}


def parse_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65_535 or len(address) > 128:
        raise SettingsError(f"{address!r} is not an address of the form host:port")
    return host.strip("[]"), int(port)


def _coerce(name: str, value: Any, source: str) -> Any:
    kind = SETTING_TYPES[name]
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            return value.lower() in ("1", "true", "yes", "on")
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            return int(value)
    elif kind is str:
        if isinstance(value, str):
            return value
    else:  # tuple[str, ...]
        if isinstance(value, str):
            return tuple(a.strip() for a in value.split(",") if a.strip())
        if isinstance(value, list) and all(isinstance(a, str) for a in value):
            return tuple(value)
    what = kind.__name__ if kind in (bool, int, str) else "comma-separated list"
    raise SettingsError(f"{source}: {name} = {value!r} is not a valid {what}")


def load_settings(home: Path, environ: dict[str, str] | None = None, flags: dict[str, Any] | None = None) -> Settings:
    """Settings of the node in `home`: config.toml, then CHAINLAB_* variables, then flags."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    path = home / CONFIG_FILE
    if path.exists():
        try:
            data = tomllib.loads(path.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError, OSError) as exc:
            raise SettingsError(f"cannot read {path}: {exc}") from None
        for name, value in data.items():
            if name not in SETTING_TYPES:
                raise SettingsError(f"{path}: unknown setting {name!r}; known: {', '.join(SETTING_TYPES)}")
            values[name] = _coerce(name, value, str(path))
    for name in SETTING_TYPES:
        variable = ENV_PREFIX + name.upper()
        if variable in environ:
            values[name] = _coerce(name, environ[variable], f"environment variable {variable}")
    for name, value in (flags or {}).items():
        if value is not None:
            values[name] = _coerce(name, value, f"--{name.replace('_', '-')}")
    settings = Settings(**values)
    settings.validate()
    return settings


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return "[" + ", ".join(_toml_value(v) for v in value) + "]"


def settings_toml(settings: Settings) -> str:
    lines = ["# chainlab node settings. Override any key with CHAINLAB_<KEY> or --<key> (dashes).",
             f"# Keys live next to this file: {KEY_FILE} (the node's identity) and, in proof-of-stake homes,",
             f"# {VALIDATOR_KEY_FILE} (present: this node signs as that validator; absent: it only follows)."]
    for f in fields(Settings):
        lines.extend(f"# {note}" for note in _TOML_NOTES.get(f.name, ()))
        lines.append(f"{f.name} = {_toml_value(getattr(settings, f.name))}")
    return "\n".join(lines) + "\n"


def write_private(path: Path, text: str) -> None:
    """Write a secret readable by its owner only, replacing any old file atomically."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_key(path: Path, key_seed: bytes) -> None:
    write_private(path, key_seed.hex() + "\n")


def read_key(path: Path) -> KeyPair:
    """A key file holds a 32-byte Ed25519 seed as 64 hex characters."""
    try:
        text = path.read_text().strip()
    except OSError as exc:
        raise SettingsError(f"cannot read the key file {path}: {exc.strerror}") from None
    try:
        seed = bytes.fromhex(text)
    except ValueError:
        seed = b""
    if len(seed) != 32:
        raise SettingsError(f"the key file {path} must hold 64 hex characters (a 32-byte Ed25519 seed)")
    return KeyPair.from_seed(seed)


def read_validator_key(home: Path) -> KeyPair | None:
    """The home's validator key (proof of stake), or None when the home has none."""
    path = home / VALIDATOR_KEY_FILE
    if not path.exists() and not path.is_symlink():
        return None
    try:
        return read_key(path)
    except SettingsError as exc:
        raise SettingsError(f"{exc}; it is this node's validator key: restore it, or move it away to run the node "
                            f"without validating") from None


def read_genesis(path: Path) -> Genesis:
    try:
        text = path.read_text()
    except OSError as exc:
        raise SettingsError(f"cannot read the genesis file {path}: {exc.strerror}") from None
    try:
        return Genesis.from_json(text)
    except Exception as exc:  # noqa: BLE001 - any decoding failure is the file's fault; say so
        raise SettingsError(f"{path} is not a valid genesis file: {exc}") from None


def check_home(home: Path) -> None:
    if not home.is_dir():
        raise SettingsError(f"node home {home} does not exist; create one with `chainlab genesis --out DIR`")
    for name in (GENESIS_FILE, KEY_FILE):
        if not (home / name).is_file():
            raise SettingsError(f"node home {home} has no {name}; create homes with `chainlab genesis --out DIR`")


def with_overrides(settings: Settings, **changes: Any) -> Settings:
    return replace(settings, **changes)
