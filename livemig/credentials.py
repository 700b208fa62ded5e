"""Credentials an operator registered for secrets whose value the hypervisor
will not reveal (private libvirt secrets). Files under DATA_DIR/credentials,
mode 0600, named by the secret's usage id; never logged, never in the flow."""
from __future__ import annotations

import os
import re
from pathlib import Path

from livemig.config import Settings
from livemig.errors import InvalidInput


def _path(settings: Settings, usage: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", usage)
    return Path(settings.data_dir) / "credentials" / safe


def register_credential(settings: Settings, usage: str, value: bytes) -> None:
    if not usage:
        raise InvalidInput("a credential needs a secret usage id")
    path = _path(settings, usage)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(value)


def registered_credential(settings: Settings, usage: str) -> bytes | None:
    try:
        return _path(settings, usage).read_bytes()
    except FileNotFoundError:
        return None
