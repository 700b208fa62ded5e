"""The client of a lab guest's control port (TCP 11, see guest_image.CONTROL):
make the guest CPU-busy or memory-dirtying, and check its health.

    guest = GuestControl("10.77.0.10")
    guest.cpu(True)        # a busy loop: under TCG about one host core
    guest.dirty(32)        # rewrite 32 MiB of zero-filled memory, over and over
    guest.dirty(16, random=True)
    guest.stop()           # end the dirtying
    guest.check()          # True while the static data written at boot is intact
"""
from __future__ import annotations

from livemig.errors import LivemigError
from livemig.lab.echo import ask

CONTROL_PORT = 11


class GuestControlError(LivemigError):
    """The guest refused a command, or did not answer."""

    exit_code = 1


class GuestControl:
    def __init__(self, ip: str, port: int = CONTROL_PORT, timeout_s: float = 15.0):
        self.ip, self.port, self.timeout_s = ip, port, timeout_s

    def ask(self, command: str) -> str:
        """Send one command, return the guest's one-line answer; raises
        GuestControlError for an "error: ..." answer or no answer."""
        try:
            text = ask(self.ip, self.port, command, timeout=self.timeout_s)
        except OSError as exc:
            raise GuestControlError(f"guest {self.ip}:{self.port} did not answer {command!r}: {exc}") from None
        if not text or text.startswith("error:"):
            raise GuestControlError(f"guest {self.ip} refused {command!r}: {text or 'no answer'}")
        return text

    def cpu(self, busy: bool) -> None:
        self.ask(f"cpu {'on' if busy else 'off'}")

    def dirty(self, mib: int, random: bool = False) -> None:
        """Rewrite `mib` MiB of memory continuously: zeros (pages QEMU sends
        cheaply) or, with `random`, random data (pages it sends whole)."""
        self.ask(f"{'dirtyr' if random else 'dirty'} {int(mib)}")

    def stop(self) -> None:
        self.ask("stop")

    def check(self) -> bool:
        """True if the static data the guest wrote at boot hashes as it did."""
        return self.ask("check") == "ok"

    def bootid(self) -> str:
        return self.ask("bootid")
