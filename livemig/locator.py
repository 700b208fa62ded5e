"""Where does a VM run, and in what state: the one answer every task, revert
and `livemig reconcile` uses.

A host that cannot be asked (its daemon down, a network partition) is
UNKNOWN, never "absent": acting on "absent" when the truth is "cannot tell"
destroys the only copy of a VM or a secret a running VM still needs. Lookups
are retried with backoff for a bounded time; a caller that is still left
with UNKNOWN must not act as if the VM were absent, and records what it could
not check (undo.record_leftover_for_reconcile) for reconcile.

Public API:
  locate_on(services, host, uuid, patience_s)  -> Sighting   (one host)
  locate(services, uuid, hosts, patience_s)    -> Location   (several hosts)
  locate_elsewhere(services, uuid, besides)    -> Location   (every other inventory host)
  Sighting.presence: Presence.PRESENT / ABSENT / UNKNOWN, .domain, .error
  Location: .running, .present, .absent, .unknown, .crashed (host lists),
            .on(host) -> Sighting, .describe()
"""
from __future__ import annotations

import dataclasses
import enum
import time
from typing import Any, Iterable

from livemig.drivers.base import DomainInfo
from livemig.errors import HostUnreachable, LivemigError, NotFound
from livemig.states import DomainState

# How long a lookup is retried before the host counts as unknown: a host
# daemon restarted by its supervisor is usually back within this.
DEFAULT_PATIENCE_S = 20.0
FIRST_DELAY_S = 0.2
MAX_DELAY_S = 2.0


class Presence(str, enum.Enum):
    PRESENT = "present"  # the host answered: the domain is there (in `domain.state`)
    ABSENT = "absent"  # the host answered: no such domain
    UNKNOWN = "unknown"  # the host could not be asked


@dataclasses.dataclass(frozen=True)
class Sighting:
    """What one host said about one domain."""

    host: str
    presence: Presence
    domain: DomainInfo | None = None
    error: str | None = None  # why the host could not be asked

    @property
    def running(self) -> bool:
        return self.domain is not None and self.domain.running

    @property
    def state(self) -> str:
        """"running", "paused", ..., "absent" or "unknown"."""
        if self.domain is not None:
            return "migrating in (paused)" if self.domain.incoming else self.domain.state.value
        return self.presence.value

    def describe(self) -> str:
        if self.presence is Presence.UNKNOWN:
            return f"{self.host}: unknown ({self.error})"
        return f"{self.host}: {self.state}"


@dataclasses.dataclass(frozen=True)
class Location:
    """What each of several hosts said about one domain, in the order asked."""

    instance_uuid: str
    sightings: tuple[Sighting, ...]

    def on(self, host: str) -> Sighting:
        for sighting in self.sightings:
            if sighting.host == host:
                return sighting
        raise KeyError(host)

    def _hosts(self, test) -> list[str]:
        return [s.host for s in self.sightings if test(s)]

    @property
    def unknown(self) -> list[str]:
        return self._hosts(lambda s: s.presence is Presence.UNKNOWN)

    @property
    def absent(self) -> list[str]:
        return self._hosts(lambda s: s.presence is Presence.ABSENT)

    @property
    def present(self) -> list[str]:
        """Hosts that hold the domain in any state (crashed included)."""
        return self._hosts(lambda s: s.presence is Presence.PRESENT)

    @property
    def running(self) -> list[str]:
        return self._hosts(lambda s: s.running)

    @property
    def crashed(self) -> list[str]:
        return self._hosts(lambda s: s.domain is not None and s.domain.state is DomainState.CRASHED)

    def describe(self) -> str:
        return ", ".join(s.describe() for s in self.sightings)


def locate_on(services: Any, host: str, instance_uuid: str, patience_s: float | None = None) -> Sighting:
    """Ask one host about the domain, retrying with backoff for up to
    `patience_s` (DEFAULT_PATIENCE_S if None) while the host does not answer. A host missing from the
    inventory raises NotFound (a caller's mistake, not a state of the world)."""
    deadline = time.monotonic() + (DEFAULT_PATIENCE_S if patience_s is None else patience_s)
    delay = FIRST_DELAY_S
    while True:
        try:
            uri = services.host_uri(host)
            domain = services.drivers.for_uri(uri).find_domain(uri, instance_uuid)
        except NotFound:
            raise
        except LivemigError as exc:
            # Any failure to ask (unreachable host, a driver error, the
            # database holding the host's URI) leaves the answer unknown.
            left = deadline - time.monotonic()
            if left <= 0:
                return Sighting(host, Presence.UNKNOWN, error=str(exc))
            time.sleep(min(delay, left))
            delay = min(delay * 2, MAX_DELAY_S)
            continue
        if domain is None:
            return Sighting(host, Presence.ABSENT)
        return Sighting(host, Presence.PRESENT, domain=domain)


def locate(services: Any, instance_uuid: str, hosts: Iterable[str],
           patience_s: float | None = None) -> Location:
    """Ask each host about the domain (see locate_on)."""
    return Location(instance_uuid, tuple(locate_on(services, host, instance_uuid, patience_s) for host in hosts))


def locate_elsewhere(services: Any, instance_uuid: str, besides: Iterable[str],
                     patience_s: float | None = None) -> Location:
    """Ask every other host of the inventory about the domain: a VM that is
    on neither end of its migration may have been moved behind livemig's
    back, and is recorded where it is, never as gone."""
    import sqlalchemy as sa

    from livemig.persistence.models import Host

    skip = set(besides)
    with services.db.reading() as session:
        hosts = [name for name in session.scalars(sa.select(Host.name).order_by(Host.name)) if name not in skip]
    return locate(services, instance_uuid, hosts, patience_s)


def require_known(sighting: Sighting) -> DomainInfo | None:
    """The domain, or None if absent; HostUnreachable if the host could not be
    asked: for execute paths, where failing the step is the safe answer."""
    if sighting.presence is Presence.UNKNOWN:
        raise HostUnreachable(f"cannot ask {sighting.host} about the VM: {sighting.error}")
    return sighting.domain
