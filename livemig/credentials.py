"""Credentials an operator registered for secrets whose value the hypervisor
will not reveal (private libvirt secrets).

They are stored in the database (livemig_credentials), encrypted with a key
file that every controller shares (the `credential_key_file` setting), so
that whichever conductor runs a migration can define the secret on its
destination. A value is never logged, never in a logbook, job or event."""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from livemig.config import Settings
from livemig.errors import InvalidInput, LivemigError

if TYPE_CHECKING:
    from cryptography.fernet import Fernet

    from livemig.services import Services


class CredentialKeyError(LivemigError):
    """The shared key is missing or is not the one the credentials were stored with."""


def _read_key(path: Path) -> bytes:
    key = path.read_bytes().strip()
    if not key:
        raise CredentialKeyError(f"credential key file {path} is empty")
    return key


def credential_key(settings: Settings, create: bool = False) -> "Fernet":
    """The shared key; with `create`, made (mode 0600) if absent."""
    from cryptography.fernet import Fernet

    path = Path(settings.credential_key_file)
    try:
        return Fernet(_read_key(path))
    except FileNotFoundError:
        if not create:
            raise CredentialKeyError(
                f"credential key file {path} does not exist: copy the one from the controller that "
                f"registered the credentials (setting credential_key_file)") from None
    except ValueError:
        raise CredentialKeyError(f"credential key file {path} does not hold a valid key") from None
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        # O_EXCL: two controllers registering at once must not each make a key.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return Fernet(_read_key(path))
    with os.fdopen(fd, "wb") as f:
        f.write(Fernet.generate_key() + b"\n")
    return Fernet(_read_key(path))


def register_credential(services: "Services", usage: str, value: bytes) -> None:
    """Store (or replace) the value for secret `usage`, encrypted."""
    from livemig.persistence.models import Credential

    if not usage or len(usage) > 255:
        raise InvalidInput("a credential needs a secret usage id (at most 255 characters)")
    if not value:
        raise InvalidInput(f"the credential for {usage} is empty")
    ciphertext = credential_key(services.settings, create=True).encrypt(value)
    with services.db.session() as session:
        row = session.get(Credential, usage)
        if row is None:
            session.add(Credential(usage=usage, ciphertext=ciphertext))
        else:
            row.ciphertext = ciphertext


def registered_credential(services: "Services", usage: str) -> bytes | None:
    """The registered value for secret `usage`, or None if there is none."""
    from cryptography.fernet import InvalidToken

    from livemig.persistence.models import Credential

    with services.db.reading() as session:
        row = session.get(Credential, usage)
        ciphertext = None if row is None else row.ciphertext
    if ciphertext is None:
        return None
    try:
        return credential_key(services.settings).decrypt(ciphertext)
    except InvalidToken:
        raise CredentialKeyError(
            f"the credential for {usage} was stored with another key than {services.settings.credential_key_file}: "
            f"every controller needs the same credential_key_file") from None
