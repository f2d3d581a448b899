"""The secret that makes the worlds of environments running model code unguessable.

A pack's world is normally drawn from a generator seeded by the environment's name, the split,
the seed and the pack index: a small space that code running inside the pack's world could
search, rebuilding its own world and the expected answers. Environments that run model-written
code (:attr:`codrl.envs.base.CoDEnv.secret_worlds`) seed it instead from an HMAC-SHA256 of those
numbers under a secret key that never enters the sandbox:

* the default key is per installation: 32 random bytes created once at
  ``$XDG_CONFIG_HOME/codrl/world.key`` (``~/.config/codrl/world.key``), mode 0600, outside any
  project tree; ``CODRL_WORLD_KEY=/path/to/key`` names another one for a whole process, and an
  environment's ``world_key`` parameter for that environment;
* the same key gives the same packs, so paired comparisons across runs and checkpoints on one
  installation play identical worlds; splits stay disjoint (the split is part of the message);
* runs record the key's :func:`fingerprint`, never the key.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import os
import secrets
from pathlib import Path

#: Environment variable naming a key file for the whole process.
KEY_ENV = "CODRL_WORLD_KEY"
KEY_BYTES = 32


def default_key_path() -> Path:
    """``$CODRL_WORLD_KEY``, else ``$XDG_CONFIG_HOME/codrl/world.key`` (``~/.config/...``)."""
    named = os.environ.get(KEY_ENV)
    if named:
        return Path(named).expanduser()
    config = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return config / "codrl" / "world.key"


def _create(path: Path) -> None:
    """Write a new random key at ``path`` (0600, in a 0700 folder) unless one appears first."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process created it meanwhile: use theirs
        return
    with os.fdopen(fd, "wb") as f:
        f.write(secrets.token_bytes(KEY_BYTES))


@functools.lru_cache(maxsize=8)
def load_key(path: str | None = None) -> bytes:
    """The key in ``path`` (default :func:`default_key_path`, created on first use).

    A named key file must exist and hold at least 16 bytes; the default one is created once.
    """
    target = Path(path).expanduser() if path else default_key_path()
    if not target.exists():
        if path or os.environ.get(KEY_ENV):
            raise ValueError(f"world key file {str(target)!r} does not exist (world_key / ${KEY_ENV} must name "
                             "an existing file of at least 16 random bytes)")
        _create(target)
    key = target.read_bytes()
    if len(key) < 16:
        raise ValueError(f"world key file {str(target)!r} holds {len(key)} bytes; at least 16 are needed")
    return key


def fingerprint(key: bytes) -> str:
    """A short public name of ``key`` (12 hex digits of a domain-separated SHA-256), safe to log."""
    return hashlib.sha256(b"codrl world key fingerprint\0" + key).hexdigest()[:12]


def secret_seed(key: bytes, *parts: object) -> list[int]:
    """Eight 32-bit words of HMAC-SHA256(key, parts joined by '/'), to seed numpy's generator."""
    digest = hmac.new(key, "/".join(str(p) for p in parts).encode(), hashlib.sha256).digest()
    return [int.from_bytes(digest[i:i + 4], "little") for i in range(0, 32, 4)]
