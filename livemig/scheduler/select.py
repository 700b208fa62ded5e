"""Choosing a destination for one instance, and planning several at once."""
from __future__ import annotations

import dataclasses
from typing import Iterable

from livemig.errors import InstanceNotFound
from livemig.scheduler.filters import Request, first_refusal
from livemig.scheduler.state import Snapshot
from livemig.scheduler.weighers import weigher_named


@dataclasses.dataclass(frozen=True)
class Refusal:
    host: str
    filter: str
    reason: str  # "needs 4096 MB, 1024 free"

    def __str__(self) -> str:
        return f"{self.host}: {self.filter}: {self.reason}"


@dataclasses.dataclass(frozen=True)
class Selection:
    instance: str  # uuid
    chosen: str | None
    # The hosts that passed every filter, best first (chosen is the first).
    ranked: tuple[str, ...]
    # Per other host, the first filter that refused it, in host name order.
    refusals: tuple[Refusal, ...]

    def explain(self) -> list[str]:
        """One line per refused host: "lab3: memory: needs 4096 MB, 1024 free"."""
        return [str(refusal) for refusal in self.refusals]

    def why_none(self) -> str:
        """Why no host was chosen, every host's reason in one line."""
        if not self.refusals:
            return "no host is a candidate"
        return "no host can take it: " + "; ".join(self.explain())


# The pseudo-filters of hosts the caller left out or does not know.
EXCLUDED = "excluded"
UNKNOWN = "unknown-host"


def select(snapshot: Snapshot, instance_uuid: str, *, candidates: Iterable[str] | None = None,
           exclude: Iterable[str] = (), weigher: str = "spread", ignore_slots: bool = False,
           copy_storage: str = "off") -> Selection:
    """The best host for the instance among `candidates` (every host when
    None) less `exclude`, with the reason each other host was refused.
    `copy_storage`: the migration's (a local disk may be copied)."""
    rank = weigher_named(weigher)
    instance = snapshot.instances.get(instance_uuid)
    if instance is None:
        raise InstanceNotFound(f"instance {instance_uuid} is not in the scheduler's snapshot")
    request = Request(instance=instance, source=snapshot.hosts.get(instance.host or ""), ignore_slots=ignore_slots,
                      copy_storage=copy_storage)
    names = sorted(snapshot.hosts) if candidates is None else sorted(set(candidates))
    excluded = set(exclude)
    refusals: list[Refusal] = []
    passed = []
    for name in names:
        host = snapshot.hosts.get(name)
        if host is None:
            refusals.append(Refusal(name, UNKNOWN, "not in the inventory"))
            continue
        if name in excluded and name != instance.host:
            refusals.append(Refusal(name, EXCLUDED, "left out by the request"))
            continue
        refused = first_refusal(host, request)
        if refused is not None:
            refusals.append(Refusal(name, *refused))
        else:
            passed.append(host)
    ranked = tuple(host.name for host in sorted(passed, key=lambda host: rank(host, instance)))
    return Selection(instance=instance_uuid, chosen=ranked[0] if ranked else None, ranked=ranked,
                     refusals=tuple(refusals))


def choose_with_slots(snap: Snapshot, instance_uuid: str, weigher: str, exclude: Iterable[str] = (),
                      candidates: Iterable[str] | None = None, copy_storage: str = "off") -> Selection:
    """The best host with a migration slot free now; failing that, the best
    one whose slots are busy (the migration queues for it). The refusals are
    the first selection's, so a host refused only for its slots says so."""
    exclude = tuple(exclude)
    candidates = None if candidates is None else tuple(candidates)
    free = select(snap, instance_uuid, candidates=candidates, exclude=exclude, weigher=weigher,
                  copy_storage=copy_storage)
    if free.chosen is not None:
        return free
    queued = select(snap, instance_uuid, candidates=candidates, exclude=exclude, weigher=weigher,
                    ignore_slots=True, copy_storage=copy_storage)
    return queued if queued.chosen is not None else free


@dataclasses.dataclass(frozen=True)
class Placement:
    instance_uuid: str
    instance_name: str
    source: str
    dest: str | None
    reason: str | None  # why no destination, when dest is None


def largest_first(snapshot: Snapshot, instance_uuids: Iterable[str]) -> list[str]:
    """Memory, then vCPUs, then disk, descending, then name: big instances
    are the hard ones to fit, so they go while room is widest."""
    known = [snapshot.instances[u] for u in dict.fromkeys(instance_uuids) if u in snapshot.instances]
    known.sort(key=lambda i: (-i.memory_mb, -i.vcpus, -i.disk_gb, i.name, i.uuid))
    return [i.uuid for i in known]


def plan(snapshot: Snapshot, instance_uuids: Iterable[str], *, candidates: Iterable[str] | None = None,
         weigher: str = "spread", ignore_slots: bool = True) -> list[Placement]:
    """A destination for each instance, largest first, each placement counted
    against the room of the ones after it. An instance no host can take
    gets dest None and every host's reason; one not in the snapshot comes
    last, with that reason."""
    uuids = list(dict.fromkeys(instance_uuids))
    candidates = None if candidates is None else tuple(candidates)
    placements = []
    current = snapshot
    for uuid in largest_first(snapshot, uuids):
        instance = current.instances[uuid]
        chosen = select(current, uuid, candidates=candidates, weigher=weigher, ignore_slots=ignore_slots)
        if chosen.chosen is not None:
            current = current.place(instance, chosen.chosen)
        placements.append(Placement(uuid, instance.name, instance.host or "", chosen.chosen,
                                    None if chosen.chosen else chosen.why_none()))
    placements.extend(Placement(uuid, uuid, "", None, "not in the inventory")
                      for uuid in uuids if uuid not in snapshot.instances)
    return placements
