"""A simulated network of TCP-like connections between nodes.

What it models, and why:
- Connections are ordered streams, as TCP is. Control frames (handshake, pings, sync
  requests and responses) are never lost or reordered; lost packets show up as a
  retransmission delay, and a link that keeps losing resets the connection.
- Gossip frames model what gossip sees in a real network: copies may be dropped (a
  peer shedding load), duplicated, or overtaken by later frames. The protocol must
  cope, since gossip arrives by many paths anyway.
- Partitions block chosen directions (symmetric, asymmetric, isolate one). Frames into
  a cut are dropped, dials across it fail, and peers notice by their timeouts.
- Latency per frame: a base plus an exponentially distributed jitter.
"""

import random
from dataclasses import dataclass, field

from p2p.messages import TYPE_IDS, Gossip

GOSSIP_TYPE_ID = TYPE_IDS[Gossip]


@dataclass
class LinkFaults:
    loss: float = 0.0  # probability a gossip frame is dropped / a control frame is retransmitted
    duplicate: float = 0.0  # probability a gossip frame arrives twice
    extra_delay_ms: float = 0.0  # added to every frame's latency
    jitter_ms: float | None = None  # overrides the base jitter while set


@dataclass
class SimNetwork:
    rng: random.Random
    base_latency_ms: float = 20.0
    jitter_ms: float = 15.0
    retransmit_ms: float = 200.0
    blocked: set[tuple[int, int]] = field(default_factory=set)  # (from node, to node)
    faults: dict[tuple[int, int], LinkFaults] = field(default_factory=dict)
    global_faults: LinkFaults = field(default_factory=LinkFaults)
    frames_dropped: int = 0
    frames_duplicated: int = 0

    def is_blocked(self, src: int, dst: int) -> bool:
        return (src, dst) in self.blocked

    def link_faults(self, src: int, dst: int) -> LinkFaults:
        return self.faults.get((src, dst), self.global_faults)

    def latency(self, src: int, dst: int) -> float:
        f = self.link_faults(src, dst)
        jitter = self.jitter_ms if f.jitter_ms is None else f.jitter_ms
        return self.base_latency_ms + f.extra_delay_ms + self.rng.expovariate(1.0 / jitter if jitter > 0 else 1e9)

    def plan_frames(self, src: int, dst: int, frames: list[bytes]) -> list[tuple[float, bytes, bool]]:
        """Delivery plan for frames sent now: (delay ms, frame, ordered?) per copy.

        Ordered copies keep the stream's order (control frames); unordered ones may be
        overtaken (gossip). Frames into a blocked direction are dropped.
        """
        if self.is_blocked(src, dst):
            self.frames_dropped += len(frames)
            return []
        f = self.link_faults(src, dst)
        plan = []
        for frame in frames:
            gossip = len(frame) > 5 and frame[5] == GOSSIP_TYPE_ID  # 4-byte length, array header, type
            delay = self.latency(src, dst)
            if gossip:
                if f.loss and self.rng.random() < f.loss:
                    self.frames_dropped += 1
                    continue
                plan.append((delay, frame, False))
                if f.duplicate and self.rng.random() < f.duplicate:
                    self.frames_duplicated += 1
                    plan.append((delay + self.latency(src, dst), frame, False))
            else:
                if f.loss and self.rng.random() < f.loss:
                    delay += self.retransmit_ms * (1 + self.rng.random())
                plan.append((delay, frame, True))
        return plan

    # --- faults -----------------------------------------------------------------

    def partition(self, groups: list[list[int]]) -> None:
        """Symmetric: no traffic between different groups."""
        for i, a in enumerate(groups):
            for b in groups[i + 1:]:
                for x in a:
                    for y in b:
                        self.blocked.add((x, y))
                        self.blocked.add((y, x))

    def block_one_way(self, sources: list[int], destinations: list[int]) -> None:
        for x in sources:
            for y in destinations:
                if x != y:
                    self.blocked.add((x, y))

    def heal_partitions(self) -> None:
        self.blocked.clear()

    def heal_faults(self) -> None:
        self.faults.clear()
        self.global_faults = LinkFaults()
