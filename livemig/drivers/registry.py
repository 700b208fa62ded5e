"""Picks the driver for a host URI: `fake:` URIs get the fake, anything else libvirt."""
from __future__ import annotations

from urllib.parse import urlparse

from livemig.drivers.base import Driver
from livemig.errors import InvalidInput

LIBVIRT_SCHEMES = ("qemu", "qemu+tcp", "qemu+tls", "qemu+ssh", "qemu+unix", "qemu+libssh2", "test")


def validate_uri(uri: str) -> str:
    parsed = urlparse(uri)
    if parsed.scheme == "fake":
        from livemig.drivers.fake import fake_path

        fake_path(uri)
        return uri
    if parsed.scheme not in LIBVIRT_SCHEMES:
        raise InvalidInput(
            f"malformed host URI {uri!r}: expected fake:///DIR/NAME.json or qemu[+tcp|+tls|+ssh]://HOST/system")
    if not parsed.path or parsed.path not in ("/system", "/session"):
        raise InvalidInput(f"malformed host URI {uri!r}: the path must be /system or /session")
    return uri


class DriverRegistry:
    """One driver instance per kind, shared by the tasks of a process."""

    def __init__(self) -> None:
        self._fake: Driver | None = None
        self._libvirt: Driver | None = None

    def for_uri(self, uri: str) -> Driver:
        if uri.startswith("fake:"):
            if self._fake is None:
                from livemig.drivers.fake import FakeDriver

                self._fake = FakeDriver()
            return self._fake
        if self._libvirt is None:
            from livemig.drivers.libvirt_driver import LibvirtDriver

            self._libvirt = LibvirtDriver()
        return self._libvirt

    def close(self) -> None:
        for driver in (self._fake, self._libvirt):
            if driver is not None:
                driver.close()
