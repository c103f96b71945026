"""One peer connection as a state machine (h11 style): bytes in, events out.

Both sides send Hello at once (version, chain, genesis, node key, a random challenge).
Each side answers the other's Hello with a HelloProof: its signature over the other's
challenge, which proves it holds the key it claims. Then the connection is READY.

Rules, one table (STYLE.md 3): in each state only the listed messages are allowed;
anything else is a protocol error, answered with a Goodbye and a close.

    AWAIT_HELLO  Hello -> check, send proof -> AWAIT_PROOF
    AWAIT_PROOF  HelloProof -> verify -> READY (HandshakeCompleted)
    READY        any message but Hello and HelloProof -> MessageReceived
    any          Goodbye -> CLOSED (ConnectionClosed, by the peer)
    CLOSED       nothing: input is dropped

`receive_data` never raises for bad input: it returns a ConnectionClosed event.
"""

from enum import Enum
from typing import NamedTuple

from consensus import codec
from consensus.crypto import KeyPair, sha256, verify
from p2p.config import PROTOCOL_VERSION, P2PConfig
from p2p.errors import (
    ChainMismatch,
    GenesisMismatch,
    HandshakeFailed,
    ProtocolError,
    Reason,
    SelfConnection,
    UnexpectedMessage,
    VersionMismatch,
)
from p2p.framing import FrameDecoder, encode_frame
from p2p.messages import Goodbye, HeadSummary, Hello, HelloProof, Message, decode_message, encode_message


def node_id_of(public_key: bytes) -> str:
    """A node's id: hex of the first 16 bytes of sha256 of its node public key."""
    return sha256(b"chainlab/node" + public_key)[:16].hex()


def proof_bytes(genesis_hash: bytes, challenge: bytes, signer_public_key: bytes) -> bytes:
    return codec.encode(["chainlab/hello-proof/v1", genesis_hash, challenge, signer_public_key])


class State(Enum):
    AWAIT_HELLO = "await_hello"
    AWAIT_PROOF = "await_proof"
    READY = "ready"
    CLOSED = "closed"


class LocalIdentity(NamedTuple):
    key: KeyPair
    chain_id: str
    genesis_hash: bytes
    listen_address: str


# Events, named in the past tense.
class HandshakeCompleted(NamedTuple):
    node_id: str
    public_key: bytes
    listen_address: str
    head: HeadSummary


class MessageReceived(NamedTuple):
    message: Message


class ConnectionClosed(NamedTuple):
    reason: int
    text: str
    by_peer: bool  # True: the peer said Goodbye; False: we closed it (error or by choice)
    error: ProtocolError | None = None  # the protocol error that made us close, if any


Event = HandshakeCompleted | MessageReceived | ConnectionClosed


class Connection:
    def __init__(self, local: LocalIdentity, config: P2PConfig, challenge: bytes, head: HeadSummary):
        assert len(challenge) == 32
        self.local = local
        self.config = config
        self.state = State.AWAIT_HELLO
        self._decoder = FrameDecoder(config.frame_bytes_max)
        self._outbound: list[bytes] = []
        self._challenge = challenge
        self.peer_hello: Hello | None = None
        self.frames_received = 0
        self.send(Hello(PROTOCOL_VERSION, local.chain_id, local.genesis_hash, local.key.public_key,
                        local.listen_address, head, challenge), _handshake=True)

    @property
    def peer_node_id(self) -> str | None:
        return node_id_of(self.peer_hello.public_key) if self.peer_hello else None

    # --- output --------------------------------------------------------------

    def send(self, msg: Message, *, _handshake: bool = False) -> bool:
        """Queue a message; False (and nothing queued) unless the connection is READY."""
        if self.state is State.CLOSED or (self.state is not State.READY and not _handshake):
            return False
        body = encode_message(msg)
        assert len(body) <= self.config.frame_bytes_max, f"{type(msg).__name__} of {len(body)} bytes is too large to send"
        self._outbound.append(encode_frame(body, self.config.frame_bytes_max))
        return True

    def data_to_send(self) -> bytes:
        if not self._outbound:
            return b""
        data = b"".join(self._outbound)
        self._outbound.clear()
        return data

    def pending_frames(self) -> int:
        return len(self._outbound)

    def close(self, reason: Reason, text: str = "") -> ConnectionClosed:
        """Say Goodbye and close. Idempotent."""
        if self.state is not State.CLOSED:
            self._outbound.append(encode_frame(encode_message(Goodbye(int(reason), text[:256])), self.config.frame_bytes_max))
            self.state = State.CLOSED
        return ConnectionClosed(int(reason), text, by_peer=False)

    # --- input -----------------------------------------------------------------

    def receive_data(self, data: bytes) -> list[Event]:
        if self.state is State.CLOSED:
            return []
        events: list[Event] = []
        self._decoder.push(data)
        try:
            # One frame at a time: a bad frame later in the same read must not swallow
            # the good ones (a Goodbye, say) before it.
            while (body := self._decoder.next_frame()) is not None:
                self.frames_received += 1
                msg = decode_message(body)
                event = self._on_message(msg)
                if event is not None:
                    events.append(event)
                if self.state is State.CLOSED:
                    break
        except ProtocolError as exc:
            closed = self.close(exc.reason, str(exc))
            events.append(closed._replace(error=exc))
        return events

    def _on_message(self, msg: Message) -> Event | None:
        if isinstance(msg, Goodbye):
            self.state = State.CLOSED
            return ConnectionClosed(msg.reason, msg.text, by_peer=True)
        if self.state is State.AWAIT_HELLO:
            if not isinstance(msg, Hello):
                raise UnexpectedMessage(f"expected hello, got {type(msg).__name__}")
            return self._on_hello(msg)
        if self.state is State.AWAIT_PROOF:
            if not isinstance(msg, HelloProof):
                raise UnexpectedMessage(f"expected hello proof, got {type(msg).__name__}")
            return self._on_proof(msg)
        assert self.state is State.READY
        if isinstance(msg, (Hello, HelloProof)):
            raise UnexpectedMessage(f"{type(msg).__name__} after the handshake")
        return MessageReceived(msg)

    def _on_hello(self, hello: Hello) -> None:
        # Same protocol version, same chain, same genesis: otherwise nothing we say makes sense.
        if hello.protocol_version != PROTOCOL_VERSION:
            raise VersionMismatch(f"peer speaks protocol {hello.protocol_version}, we speak {PROTOCOL_VERSION}")
        if hello.chain_id != self.local.chain_id:
            raise ChainMismatch(f"peer is on chain {hello.chain_id!r}, we are on {self.local.chain_id!r}")
        if hello.genesis_hash != self.local.genesis_hash:
            raise GenesisMismatch(
                f"peer genesis {hello.genesis_hash.hex()[:16]} differs from ours {self.local.genesis_hash.hex()[:16]}"
            )
        # Talking to ourselves (dialing our own address) wastes a slot.
        if hello.public_key == self.local.key.public_key:
            raise SelfConnection("connected to ourselves")
        if hello.challenge == self._challenge:
            raise HandshakeFailed("peer echoed our challenge")
        self.peer_hello = hello
        signature = self.local.key.sign(proof_bytes(self.local.genesis_hash, hello.challenge, self.local.key.public_key))
        self.send(HelloProof(signature), _handshake=True)
        self.state = State.AWAIT_PROOF
        return None

    def _on_proof(self, proof: HelloProof) -> HandshakeCompleted:
        hello = self.peer_hello
        assert hello is not None
        # The peer signed our fresh challenge with the key it announced.
        if not verify(hello.public_key, proof.signature, proof_bytes(self.local.genesis_hash, self._challenge, hello.public_key)):
            raise HandshakeFailed("peer's hello proof does not verify against its public key")
        self.state = State.READY
        return HandshakeCompleted(node_id_of(hello.public_key), hello.public_key, hello.listen_address, hello.head)
