"""Faults in a real node's own transport, for chaos tests without privileged containers.

An operator (or a chaos runner) sets them over the privileged admin RPC
(`admin_setFaults`, `admin_getFaults`, `admin_clearFaults`); the asyncio shell
(node/runtime.py) applies them to its sockets. The pure core never learns about them:
to the core a faulty link looks like a slow, lossy or unreachable peer, and a cut
link is a closed socket (PeerDisconnected), which is no offence, so nobody is banned.

This module is plain code: parsing and validation (`parse_faults`), the per-frame
decisions (`FaultLayer.decide_out`), and `FrameGate`, which finds frame boundaries in
a received byte stream so that `drop_in` discards whole frames only. A dropped half
frame would desynchronise the stream and look like a malformed frame, which is an
offence; whole frames keep the stream parseable whenever the fault is lifted.

A "frame" is one wire frame (p2p/framing.py: a 4-byte big-endian length, then the body).
"""

import random
from dataclasses import dataclass, field
from typing import Any

from p2p.framing import LENGTH_BYTES

ADMIN_METHODS = ("admin_setFaults", "admin_getFaults", "admin_clearFaults")

LINKS_MAX = 256  # peers one fault set may name; a node has far fewer connections
DELAY_MS_MAX = 60_000  # a minute: longer is a partition, not a delay
CLOCK_SKEW_MS_MAX = 3_600_000  # an hour either way
SEED_MAX = 2**64 - 1
NODE_ID_HEX_CHARS = 32  # p2p.connection.node_id_of: hex of 16 bytes

_TOP_KEYS = ("links", "clock_skew_ms", "seed")
_LINK_KEYS = ("drop_in", "drop_out", "delay_ms", "loss")
_HEX = frozenset("0123456789abcdef")

SEND, DROP, LOSE = "send", "drop", "lose"


class FaultsError(ValueError):
    """A fault set that cannot be applied; the message names the field."""


@dataclass(frozen=True)
class LinkFaults:
    drop_in: bool = False  # bytes read from the peer are discarded (whole frames)
    drop_out: bool = False  # frames to the peer are discarded
    delay_ms: int = 0  # each frame to the peer is written this much later, order kept
    loss: float = 0.0  # each frame to the peer is dropped with this probability

    @property
    def cut(self) -> bool:
        """Both directions dropped: a partition; connections are closed, not kept silent."""
        return self.drop_in and self.drop_out

    def to_json(self) -> dict:
        return {"drop_in": self.drop_in, "drop_out": self.drop_out, "delay_ms": self.delay_ms, "loss": self.loss}


@dataclass(frozen=True)
class FaultSet:
    links: dict[str, LinkFaults] = field(default_factory=dict)  # node id (lowercase hex) -> faults
    clock_skew_ms: int = 0
    seed: int = 0

    def to_json(self) -> dict:
        return {"links": {node_id: self.links[node_id].to_json() for node_id in sorted(self.links)},
                "clock_skew_ms": self.clock_skew_ms}


# --- parsing ----------------------------------------------------------------------------


def parse_faults(params: Any) -> FaultSet:
    """Check admin_setFaults' parameters and return the fault set; raise FaultsError.

    Named parameters (a JSON object). An array holding that one object is taken too
    (`chainlab rpc` sends its parameters as an array), and no parameters mean no faults.
    Every key is optional: a missing one is no fault (or 0).
    """
    if params is None or params == []:
        params = {}
    if isinstance(params, list) and len(params) == 1 and isinstance(params[0], dict):
        params = params[0]
    if not isinstance(params, dict):
        raise FaultsError("admin_setFaults takes named parameters: an object with links, clock_skew_ms, seed")
    _no_unknown_keys(params, _TOP_KEYS, "admin_setFaults")
    links_in = params.get("links", {})
    if links_in is None:
        links_in = {}
    if not isinstance(links_in, dict):
        raise FaultsError("links must be an object: peer node id -> {drop_in, drop_out, delay_ms, loss}")
    if len(links_in) > LINKS_MAX:
        raise FaultsError(f"links names {len(links_in)} peers; at most {LINKS_MAX}")
    links: dict[str, LinkFaults] = {}
    for raw_id, entry in links_in.items():
        node_id = _node_id(raw_id)
        if node_id in links:
            raise FaultsError(f"links names node {node_id} twice")
        links[node_id] = _link(entry, f"links.{node_id}")
    skew = _int(params.get("clock_skew_ms", 0), "clock_skew_ms", -CLOCK_SKEW_MS_MAX, CLOCK_SKEW_MS_MAX)
    seed = _int(params.get("seed", 0), "seed", 0, SEED_MAX)
    return FaultSet(links, skew, seed)


def check_no_params(method: str, params: Any) -> None:
    if params not in (None, [], {}):
        raise FaultsError(f"{method} takes no parameters")


def _no_unknown_keys(obj: dict, known: tuple[str, ...], where: str) -> None:
    unknown = sorted(str(k) for k in obj if k not in known)
    if unknown:
        raise FaultsError(f"{where}: unknown key(s) {', '.join(unknown)}; expected {', '.join(known)}")


def _node_id(value: Any) -> str:
    # The node ids net_info and net_peers report: 32 lowercase hex characters.
    text = value.lower() if isinstance(value, str) else ""
    if len(text) != NODE_ID_HEX_CHARS or not set(text) <= _HEX:
        raise FaultsError(f"links: {str(value)[:80]!r} is not a node id ({NODE_ID_HEX_CHARS} hex characters, "
                          "as net_info and net_peers report)")
    return text


def _link(entry: Any, where: str) -> LinkFaults:
    if not isinstance(entry, dict):
        raise FaultsError(f"{where} must be an object with drop_in, drop_out, delay_ms, loss")
    _no_unknown_keys(entry, _LINK_KEYS, where)
    return LinkFaults(
        drop_in=_bool(entry.get("drop_in", False), f"{where}.drop_in"),
        drop_out=_bool(entry.get("drop_out", False), f"{where}.drop_out"),
        delay_ms=_int(entry.get("delay_ms", 0), f"{where}.delay_ms", 0, DELAY_MS_MAX),
        loss=_probability(entry.get("loss", 0.0), f"{where}.loss"),
    )


def _bool(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise FaultsError(f"{name} must be true or false, got {value!r}")
    return value


def _int(value: Any, name: str, minimum: int, maximum: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not minimum <= value <= maximum:
        raise FaultsError(f"{name} must be an integer in {minimum}..{maximum}, got {str(value)[:40]}")
    return value


def _probability(value: Any, name: str) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= value <= 1.0:
        raise FaultsError(f"{name} must be a number in 0.0..1.0, got {str(value)[:40]}")
    return float(value)


# --- frames -------------------------------------------------------------------------------


def split_frames(data: bytes) -> list[bytes]:
    """Whole frames, as the core hands them to the shell (it never sends part of one)."""
    frames = []
    at = 0
    while at < len(data):
        end = at + LENGTH_BYTES + int.from_bytes(data[at:at + LENGTH_BYTES], "big")
        assert end <= len(data), "the core's sends are whole frames"
        frames.append(data[at:end])
        at = end
    return frames


class FrameGate:
    """Follows the frame boundaries of one received byte stream, buffering at most a
    partial length prefix, and discards whole frames on request.

    `feed(data, drop)` decides per frame, when its first byte arrives: a frame that
    started while dropping is discarded to its end, one that started before goes
    through whole. It returns the bytes to deliver and how many frames it dropped.
    A bad length is not its business: it passes through, and the core rejects it.
    """

    def __init__(self) -> None:
        self._header = bytearray()  # the length prefix read so far (< LENGTH_BYTES bytes)
        self._body_left = 0
        self._dropping = False

    def feed(self, data: bytes, drop: bool) -> tuple[bytes, int]:
        kept: list[tuple[int, int]] = []  # [start, end) ranges of data to deliver
        dropped = 0
        at = 0
        while at < len(data):
            if self._body_left == 0 and not self._header:  # a frame starts here
                self._dropping = drop
                dropped += drop
            if self._body_left:
                take = min(self._body_left, len(data) - at)
                self._body_left -= take
            else:
                take = min(LENGTH_BYTES - len(self._header), len(data) - at)
                self._header += data[at:at + take]
                if len(self._header) == LENGTH_BYTES:
                    self._body_left = int.from_bytes(self._header, "big")
                    self._header.clear()
            if not self._dropping:
                if kept and kept[-1][1] == at:
                    kept[-1] = (kept[-1][0], at + take)
                else:
                    kept.append((at, at + take))
            at += take
        if len(kept) == 1 and kept[0] == (0, len(data)):
            return data, dropped
        return b"".join(data[start:end] for start, end in kept), dropped


# --- the layer -----------------------------------------------------------------------------


@dataclass
class FaultCounters:
    frames_dropped_in: int = 0
    frames_dropped_out: int = 0
    frames_delayed: int = 0
    frames_lost: int = 0
    connections_refused: int = 0  # connections closed because their peer is cut off

    def to_json(self) -> dict:
        return {"frames_dropped_in": self.frames_dropped_in, "frames_dropped_out": self.frames_dropped_out,
                "frames_delayed": self.frames_delayed, "frames_lost": self.frames_lost,
                "connections_refused": self.connections_refused}


class FaultLayer:
    """The faults in force and what they did. Loss draws from its own Random(seed),
    so a run is repeatable given the seed and the order of the traffic."""

    def __init__(self) -> None:
        self.faults = FaultSet()
        self.rng = random.Random(0)
        self.counters = FaultCounters()  # kept across changes: they count since the node started

    def set(self, faults: FaultSet) -> None:
        """Replace the whole fault set."""
        self.faults = faults
        self.rng = random.Random(faults.seed)

    def clear(self) -> None:
        self.set(FaultSet())

    @property
    def active(self) -> bool:
        """Any link fault in force (the clock skew needs no per-frame work)."""
        return bool(self.faults.links)

    @property
    def clock_skew_ms(self) -> int:
        return self.faults.clock_skew_ms

    def link(self, node_id: str | None) -> LinkFaults | None:
        return self.faults.links.get(node_id) if node_id is not None else None

    def is_cut(self, node_id: str | None) -> bool:
        link = self.link(node_id)
        return link is not None and link.cut

    def decide_out(self, node_id: str | None) -> tuple[str, int]:
        """What to do with one frame to this peer: (SEND, delay_ms), (DROP, 0) or (LOSE, 0)."""
        link = self.link(node_id)
        if link is None:
            return SEND, 0
        if link.drop_out:
            self.counters.frames_dropped_out += 1
            return DROP, 0
        if link.loss > 0.0 and self.rng.random() < link.loss:
            self.counters.frames_lost += 1
            return LOSE, 0
        if link.delay_ms:
            self.counters.frames_delayed += 1
        return SEND, link.delay_ms

    def filter_out(self, node_id: str | None, data: bytes) -> tuple[bytes, int]:
        """The frames of one write that go out, and how late (ms)."""
        if self.link(node_id) is None:
            return data, 0
        kept = []
        delay_ms = 0
        for frame in split_frames(data):
            action, delay_ms_frame = self.decide_out(node_id)
            if action == SEND:
                kept.append(frame)
                delay_ms = delay_ms_frame
        return b"".join(kept), delay_ms

    def filter_in(self, gate: FrameGate, node_id: str | None, data: bytes) -> bytes:
        """The received bytes the core may see (drop_in discards whole frames)."""
        link = self.link(node_id)
        kept, dropped = gate.feed(data, link is not None and link.drop_in)
        self.counters.frames_dropped_in += dropped
        return kept

    def summary(self) -> dict:
        """For the faults_set log line."""
        return {**self.faults.to_json(), "seed": self.faults.seed,
                "cut": sorted(n for n, link in self.faults.links.items() if link.cut)}

    def to_json(self) -> dict:
        return {**self.faults.to_json(), "counters": self.counters.to_json()}
