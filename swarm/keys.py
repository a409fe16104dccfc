"""The swarm key (the membership secret) and a device's long-lived Ed25519 identity.

A swarm key is 32 random bytes, shown to people as a join code:

    swarm1-<base32 of the key and a 2-byte checksum, in groups of 5>

The checksum turns a mistyped code into a clear error instead of a silent "wrong swarm".
Everything else is derived from the key with HKDF, one label per use, so the key itself
never leaves the device: a public swarm id (in mDNS records), a membership key (HMACs that
prove membership) and a frame key (mixed into every per-session key).

A node id is the first 24 hex digits of sha256(Ed25519 public key): anyone can check that
a peer's id belongs to the key it signs with.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from swarm.errors import AuthenticationError, SwarmError

KEY_BYTES = 32
CODE_PREFIX = "swarm1-"
NODE_ID_HEX = 24
KEY_FILE_NAME = "swarm.key"
MAX_IDENTITIES = 64  # node processes on one device


def _derive(key: bytes, label: str, length: int = 32) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=f"swarm/{label}".encode()).derive(key)


@dataclass(frozen=True)
class SwarmKey:
    secret: bytes = field(repr=False)
    swarm_id: str = field(init=False)  # public: says which swarm a record belongs to
    membership_key: bytes = field(init=False, repr=False)  # HMAC key proving membership
    frame_key: bytes = field(init=False, repr=False)  # mixed into every session key

    def __post_init__(self) -> None:
        if len(self.secret) != KEY_BYTES:
            raise SwarmError(f"a swarm key is {KEY_BYTES} bytes, got {len(self.secret)}")
        object.__setattr__(self, "swarm_id", _derive(self.secret, "id", 8).hex())
        object.__setattr__(self, "membership_key", _derive(self.secret, "membership"))
        object.__setattr__(self, "frame_key", _derive(self.secret, "frames"))

    @classmethod
    def generate(cls) -> SwarmKey:
        return cls(secrets.token_bytes(KEY_BYTES))

    def prove(self, message: bytes) -> bytes:
        """A 16-byte membership tag over `message`: only holders of the key can make or check it."""
        return hmac.new(self.membership_key, message, hashlib.sha256).digest()[:16]

    def check(self, message: bytes, tag: bytes) -> bool:
        return hmac.compare_digest(self.prove(message), tag)

    @property
    def join_code(self) -> str:
        raw = self.secret + hashlib.sha256(self.secret).digest()[:2]
        text = base64.b32encode(raw).decode().rstrip("=").lower()
        return CODE_PREFIX + "-".join(text[i : i + 5] for i in range(0, len(text), 5))

    @classmethod
    def from_code(cls, code: str) -> SwarmKey:
        text = code.strip().lower()
        if not text.startswith(CODE_PREFIX):
            raise AuthenticationError(f"a join code starts with {CODE_PREFIX!r}")
        body = text.removeprefix(CODE_PREFIX).replace("-", "").upper()
        try:
            raw = base64.b32decode(body + "=" * (-len(body) % 8))
        except ValueError:
            raise AuthenticationError("the join code has characters a join code never has") from None
        secret, checksum = raw[:KEY_BYTES], raw[KEY_BYTES:]
        if len(raw) != KEY_BYTES + 2 or hashlib.sha256(secret).digest()[:2] != checksum:
            raise AuthenticationError("the join code is mistyped (its checksum does not match)")
        return cls(secret)


def parse_swarm_key(value: str) -> SwarmKey:
    """The swarm key `value` names: a join code, or a key file."""
    if value.strip().lower().startswith(CODE_PREFIX):
        return SwarmKey.from_code(value)
    path = Path(value).expanduser()
    if not path.is_file():
        neither = f"{value!r} is neither a join code ({CODE_PREFIX}...) nor a key file"
        raise AuthenticationError(f"swarm_key {neither}", cli=f"--swarm-key {neither}")
    return read_key_file(path)


def read_key_file(path: Path) -> SwarmKey:
    try:
        text = path.read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise AuthenticationError(f"cannot read the swarm key file {path}: {exc}") from exc
    return SwarmKey.from_code(text)


def _write_private(path: Path, data: bytes) -> None:
    """Create `path` readable by its owner only (0600), never widening an existing file."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def write_key_file(key: SwarmKey, path: Path) -> None:
    if path.exists():
        raise SwarmError(f"{path} already exists; remove it first to start a new swarm")
    _write_private(path, (key.join_code + "\n").encode())


def node_id_of(public: Ed25519PublicKey | bytes) -> str:
    raw = public if isinstance(public, bytes) else public.public_bytes_raw()
    return hashlib.sha256(raw).hexdigest()[:NODE_ID_HEX]


def is_node_id(text: str) -> bool:
    return len(text) == NODE_ID_HEX and all(c in "0123456789abcdef" for c in text)


class Identity:
    """A device's Ed25519 key pair; its node id is derived from the public key."""

    def __init__(self, private: Ed25519PrivateKey) -> None:
        self.private = private
        self.public_bytes = private.public_key().public_bytes_raw()
        self.node_id = node_id_of(self.public_bytes)
        self._lock: int | None = None  # fd holding the key file's lock while a node runs with it

    @classmethod
    def generate(cls) -> Identity:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def load_or_create(cls, path: Path) -> Identity:
        """The identity kept in `path` (PEM, 0600), created on first use."""
        if not path.exists():
            identity = cls.generate()
            pem = identity.private.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
            _write_private(path, pem)
            return identity
        try:
            private = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (OSError, ValueError) as exc:
            raise SwarmError(f"cannot read the node identity {path}: {exc}") from exc
        if not isinstance(private, Ed25519PrivateKey):
            raise SwarmError(f"{path} does not hold an Ed25519 key")
        return cls(private)

    def sign(self, message: bytes) -> bytes:
        return self.private.sign(message)

    def release(self) -> None:
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None


def _try_lock(path: Path) -> int | None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def claim_identity(path: Path) -> Identity:
    """The identity a running node uses, locked for as long as it runs (`release()`).

    `path` is a key file (an error if another node runs with it) or a folder: the first of
    its node-N.key files no running node holds, created when all are taken."""
    candidates = [path] if not path.is_dir() else [path / f"node-{i}.key" for i in range(MAX_IDENTITIES)]
    for candidate in candidates:
        fd = _try_lock(candidate)
        if fd is None:
            continue
        try:
            identity = Identity.load_or_create(candidate)
        except BaseException:
            os.close(fd)
            raise
        identity._lock = fd
        return identity
    if path.is_dir():
        raise SwarmError(f"all {MAX_IDENTITIES} identities in {path} are in use by running nodes")
    raise SwarmError(f"the identity {path} is in use by another running node; give another --identity")
