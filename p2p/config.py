"""Limits and timings of the peer-to-peer layer, each with its reason (DESIGN.md section 6)."""

from dataclasses import dataclass

# 2: blocks carry an engine body and a seal (consensus_root in the header); GossipBatch.
PROTOCOL_VERSION = 2


@dataclass(frozen=True)
class P2PConfig:
    # A frame carries one message; a batch of blocks must fit. 4 MiB holds a full block
    # of transactions with room to spare and bounds what one peer makes us buffer.
    frame_bytes_max: int = 4 * 1024 * 1024
    # Frames waiting to go to one peer; past this the peer is too slow and is dropped.
    peer_send_queue_frames_max: int = 1024
    peers_outbound_target: int = 4  # connections we dial and keep
    peers_inbound_max: int = 16  # connections we accept
    address_book_entries_max: int = 256
    peer_exchange_addresses_max: int = 32
    # Gossip: remember message ids this long so a message circulating the network is
    # not forwarded twice, and cap the memory that takes.
    seen_cache_entries_max: int = 20_000
    seen_ttl_ms: int = 120_000
    gossip_fanout: int = 6  # peers each accepted message is forwarded to
    mempool_announce_max: int = 256  # pending transactions handed to a newly connected peer
    orphan_blocks_max: int = 256  # blocks held while their ancestors are fetched
    orphan_ttl_ms: int = 60_000
    sync_batch_blocks_max: int = 64  # blocks per ranged request
    sync_requests_per_peer_max: int = 2  # in flight to one peer
    request_timeout_ms: int = 10_000
    request_hashes_max: int = 64
    handshake_timeout_ms: int = 5_000
    ping_interval_ms: int = 5_000
    peer_timeout_ms: int = 20_000  # silence this long means a dead peer
    status_interval_ms: int = 2_000  # head summaries, so a node behind notices
    dial_backoff_min_ms: int = 500
    dial_backoff_max_ms: int = 30_000
    ban_ms: int = 60_000  # a misbehaving peer stays away this long
    score_ban_threshold: int = -100
    listen_address_chars_max: int = 128
    goodbye_text_chars_max: int = 256

    def validate(self) -> None:
        assert self.frame_bytes_max >= 64 * 1024, "a frame must hold at least a small block"
        assert self.peers_outbound_target >= 1 and self.peers_inbound_max >= self.peers_outbound_target
        assert 1 <= self.gossip_fanout <= 64
        assert self.sync_batch_blocks_max >= 1 and self.request_hashes_max >= 1
        assert self.handshake_timeout_ms < self.peer_timeout_ms
        assert self.ping_interval_ms < self.peer_timeout_ms
        assert self.dial_backoff_min_ms <= self.dial_backoff_max_ms


P2PConfig().validate()
