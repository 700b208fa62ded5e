"""A host's migration network: the address the memory (and storage) stream
to that host uses, instead of the address its management URI names, and the
name its TLS certificate carries when that is not the address."""
from __future__ import annotations

import ipaddress
import re

from livemig.errors import InvalidInput

# RFC 1123 host names: dot-separated labels of letters, digits and inner hyphens.
_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


def checked_host_address(raw: str | None, what: str = "migration address") -> str | None:
    """An IP address or host name, as given (IPv6 without brackets); None
    or "" for none. InvalidInput for anything else (a URI, a port, spaces):
    the driver builds the URI itself."""
    if raw is None or raw == "":
        return None
    bracketed = raw.startswith("[") and raw.endswith("]")
    try:
        return str(ipaddress.ip_address(raw[1:-1] if bracketed else raw))
    except ValueError:
        pass
    name = raw.rstrip(".")
    labels = name.split(".")
    # An all-digit last label would be a mistyped IPv4 address, not a name.
    if len(name) > 253 or not all(_LABEL.match(label) for label in labels) or labels[-1].isdigit():
        raise InvalidInput(f"{what} {raw!r} must be an IP address or a host name (no scheme, port or path)")
    return name.lower()
