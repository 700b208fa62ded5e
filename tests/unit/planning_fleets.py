"""Fleets for the planner tests: hand-made ones and a hypothesis strategy
that generates small, awkward ones (mixed sizes, full hosts, anti-affinity
groups, hosts that take nothing, instances that may not move)."""
from __future__ import annotations

from hypothesis import strategies as st

from livemig.planning.model import Fleet, HostCapacity, InstanceDemand


def host(name: str, cpus: float = 8, memory_mb: float = 8192, max_migrations: int = 2, placeable: bool = True,
         ratio: float = 1.0) -> HostCapacity:
    return HostCapacity(name=name, zone="z1", cpus=cpus, memory_mb=memory_mb, alloc_vcpus=cpus * ratio,
                        alloc_memory_mb=memory_mb * ratio, max_migrations=max_migrations, placeable=placeable)


def instance(uuid: str, on: str, vcpus: int = 1, memory_mb: int = 1024, cpu: float | None = None,
             memory_used_mb: float | None = None, group: str | None = None, allowed: frozenset[str] | None = None,
             movable: bool = True) -> InstanceDemand:
    """An instance whose measured peak is `cpu` cores and `memory_used_mb`
    (the allocation when not given); the mean is 80% of the peak."""
    cpu = float(vcpus) if cpu is None else cpu
    used = float(memory_mb) if memory_used_mb is None else memory_used_mb
    return InstanceDemand(uuid=uuid, name=f"vm-{uuid}", host=on, vcpus=vcpus, memory_mb=memory_mb,
                          cpu_mean=cpu * 0.8, cpu_peak=cpu, memory_used_mean_mb=used * 0.8,
                          memory_used_peak_mb=used, measured=True, group=group, allowed_hosts=allowed,
                          movable=movable)


def fleet(hosts: list[HostCapacity], instances: list[InstanceDemand]) -> Fleet:
    return Fleet(hosts={h.name: h for h in hosts}, instances={i.uuid: i for i in instances})


@st.composite
def fleets(draw, max_hosts: int = 6, max_instances: int = 8, rare: bool = True) -> Fleet:
    """A fleet of 1..max_hosts hosts and 0..max_instances instances, each on
    a random host where it fits its allocation if there is one (else
    overloading it). With `rare`, some hosts take no placements, some
    instances may not move or may go to a few hosts only."""
    n_hosts = draw(st.integers(1, max_hosts))
    hosts = []
    for k in range(n_hosts):
        cpus = draw(st.sampled_from([4, 8, 16]))
        memory = draw(st.sampled_from([4096, 8192, 16384]))
        hosts.append(host(f"h{k}", cpus=cpus, memory_mb=memory, max_migrations=draw(st.integers(1, 3)),
                          placeable=not rare or draw(st.integers(0, 5)) > 0,
                          ratio=draw(st.sampled_from([1.0, 1.5]))))
    names = [h.name for h in hosts]
    instances: list[InstanceDemand] = []
    for k in range(draw(st.integers(0, max_instances))):
        vcpus = draw(st.sampled_from([1, 2, 4]))
        memory = draw(st.sampled_from([512, 1024, 2048, 3072, 4096]))
        allowed = None
        if rare and draw(st.integers(0, 4)) == 0:
            allowed = frozenset(draw(st.lists(st.sampled_from(names), min_size=1, max_size=3)))
        first = draw(st.integers(0, n_hosts - 1))
        tried = [hosts[(first + j) % n_hosts] for j in range(n_hosts)]
        on = next((h.name for h in tried if _allocated(instances, h.name, vcpus, memory, h)), tried[0].name)
        instances.append(instance(
            f"i{k:02d}", on=on, vcpus=vcpus, memory_mb=memory,
            cpu=vcpus * draw(st.sampled_from([0.1, 0.5, 1.0])),
            memory_used_mb=memory * draw(st.sampled_from([0.25, 0.5, 1.0])),
            group=draw(st.sampled_from([None, None, "g1", "g2"])), allowed=allowed,
            movable=not rare or draw(st.integers(0, 7)) > 0))
    return fleet(hosts, instances)


def _allocated(instances: list[InstanceDemand], name: str, vcpus: int, memory: int, h: HostCapacity) -> bool:
    """Whether `vcpus` and `memory` more fit host `h`'s allocation capacity."""
    there = [i for i in instances if i.host == name]
    return (sum(i.vcpus for i in there) + vcpus <= h.alloc_vcpus
            and sum(i.memory_mb for i in there) + memory <= h.alloc_memory_mb)
