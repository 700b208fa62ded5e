"""Seeded, generated fleets for the planner benchmark (benchmarks/planners.py).

Fleet number k is the same fleet on every run and machine: it is drawn from
`random.Random(f"livemig-planners-{k}")` (string seeds are hashed with
SHA-512, not with Python's randomised `hash`). Sizes are log-uniform from 10
to 1000 hosts. Three fleets in four are "mixed"; the fourth are hard
bin-packing cases, in turn:

- mixed: up to three host sizes out of `HOST_SIZES`, flavors out of
  `FLAVORS` (small ones more often), 4 to 16 instances a host (allocated
  memory at most 75% of the fleet's), each instance on a random host where its allocation fits (scattered, as a
  scheduler that spreads leaves it). A few hosts (5-15%) are hot: filled to
  about 90% with CPU-heavy flavors running at 70-100%, so their measured CPU
  is above their cores (overloaded, for rebalance and for Watcher's offload
  phase).
- ffd-worst: Johnson's first-fit-decreasing worst case (items 1/2+e, 1/4+2e,
  1/4+e, 1/4-2e of a host's memory, 6:6:6:12): the optimum fills 9m hosts
  exactly, first-fit decreasing needs 11m.
- triplets: Falkenauer's triplets: items between 1/4 and 1/2 of a host, made
  by cutting each of t full hosts into three; the optimum is t full hosts,
  the lower bound, and only three-to-a-host packings reach it.
- thirds: items of 1/3+e and twice as many of 1/3-e: the optimum puts one
  large and two small on each host; a largest-first packer pairs the large
  ones (2/3+2e), leaves gaps the small ones miss, and needs 7/6 of it.
Hard fleets have one host size (memory is what binds) and instances at
1 vCPU with little CPU load, their measured memory their allocation; their
instances are scattered over hosts about 60% full.
"""
from __future__ import annotations

import dataclasses
import random

from livemig.planning.model import Fleet, HostCapacity, InstanceDemand

GIB = 1024
# (physical cores, memory MiB): what the mixed fleets' hosts are made of.
HOST_SIZES = ((32, 128 * GIB), (48, 192 * GIB), (64, 256 * GIB), (96, 384 * GIB), (128, 512 * GIB))
# (vCPUs, memory MiB, weight): small flavors are the common ones.
FLAVORS = ((1, 2 * GIB, 8), (2, 4 * GIB, 8), (2, 8 * GIB, 5), (4, 8 * GIB, 5), (4, 16 * GIB, 4),
           (8, 16 * GIB, 3), (8, 32 * GIB, 2), (16, 64 * GIB, 1), (32, 128 * GIB, 0.5))
# The flavors hot hosts are filled with: 1 vCPU per 2 GiB.
CPU_HEAVY = ((2, 4 * GIB), (4, 8 * GIB), (8, 16 * GIB))
CPU_RATIO = 4.0  # vCPUs allocated per physical core, as Nova's default is 16 and operators lower it
MEMORY_RATIO = 1.0
MAX_FILL = 0.75
HARD_KINDS = ("ffd-worst", "triplets", "thirds")
# The host size of the hard fleets: memory binds, CPU never does.
HARD_HOST = (64, 64 * GIB)
HARD_FILL = 0.6


@dataclasses.dataclass(frozen=True)
class GeneratedFleet:
    number: int
    kind: str  # "mixed" or one of HARD_KINDS
    fleet: Fleet
    # Hosts a perfect packing uses, where the construction says (hard fleets).
    known_optimum: int | None = None


def fleet_number(k: int, min_hosts: int = 10, max_hosts: int = 1000) -> GeneratedFleet:
    """Fleet number `k` (see the module docstring)."""
    rng = random.Random(f"livemig-planners-{k}")
    hosts = round(min_hosts * (max_hosts / min_hosts) ** rng.random())
    kind = "mixed" if k % 4 != 3 else HARD_KINDS[(k // 4) % len(HARD_KINDS)]
    return generate(rng, k, kind, hosts)


def generate(rng: random.Random, number: int, kind: str, hosts: int) -> GeneratedFleet:
    """A fleet of `kind` with about `hosts` hosts, drawn from `rng`."""
    if kind == "mixed":
        return GeneratedFleet(number, kind, _mixed(rng, number, hosts))
    items, optimum = {"ffd-worst": _johnson, "triplets": _triplets, "thirds": _thirds}[kind](rng, hosts)
    return GeneratedFleet(number, kind, _scatter_hard(rng, number, items, optimum), known_optimum=optimum)


def _host(name: str, cores: int, memory_mb: int) -> HostCapacity:
    return HostCapacity(name=name, zone="z1", cpus=float(cores), memory_mb=float(memory_mb),
                        alloc_vcpus=cores * CPU_RATIO, alloc_memory_mb=memory_mb * MEMORY_RATIO, max_migrations=2)


def _instance(number: int, j: int, on: str, vcpus: int, memory_mb: int, busy: float, used: float,
              rng: random.Random) -> InstanceDemand:
    """An instance whose mean CPU is `busy` of its vCPUs and mean memory in
    use `used` of its allocation; peaks a little above, never above the
    allocation."""
    cpu_mean = vcpus * busy
    memory_mean = memory_mb * used
    return InstanceDemand(
        uuid=f"f{number}-i{j:05d}", name=f"vm{j:05d}", host=on, vcpus=vcpus, memory_mb=memory_mb,
        cpu_mean=cpu_mean, cpu_peak=min(float(vcpus), cpu_mean * rng.uniform(1.1, 1.6)),
        memory_used_mean_mb=memory_mean, memory_used_peak_mb=min(float(memory_mb), memory_mean * rng.uniform(1.0, 1.1)),
        measured=True)


class _Placer:
    """Allocated vCPUs and memory per host while a fleet is generated."""

    def __init__(self, hosts: list[HostCapacity]) -> None:
        self.hosts = hosts
        self.vcpus = {h.name: 0.0 for h in hosts}
        self.memory = {h.name: 0.0 for h in hosts}

    def add(self, host: HostCapacity) -> HostCapacity:
        self.hosts.append(host)
        self.vcpus[host.name] = self.memory[host.name] = 0.0
        return host

    def fits(self, host: HostCapacity, vcpus: int, memory_mb: int) -> bool:
        return (self.vcpus[host.name] + vcpus <= host.alloc_vcpus
                and self.memory[host.name] + memory_mb <= host.alloc_memory_mb)

    def place(self, host: HostCapacity, vcpus: int, memory_mb: int) -> str:
        self.vcpus[host.name] += vcpus
        self.memory[host.name] += memory_mb
        return host.name

    def scattered(self, rng: random.Random, vcpus: int, memory_mb: int,
                  among: list[HostCapacity] | None = None) -> str | None:
        """A random host of `among` (default all) where it fits, or None."""
        pool = self.hosts if among is None else among
        first = rng.randrange(len(pool))
        for j in range(len(pool)):
            host = pool[(first + j) % len(pool)]
            if self.fits(host, vcpus, memory_mb):
                return self.place(host, vcpus, memory_mb)
        return None


def sized_fleet(hosts: int, instances: int, seed: int = 0) -> GeneratedFleet:
    """A mixed fleet of exactly `hosts` hosts and `instances` instances (the
    planning-time case), if that many fit."""
    rng = random.Random(f"livemig-planners-sized-{hosts}-{instances}-{seed}")
    return GeneratedFleet(-1, "mixed", _mixed(rng, -1, hosts, instances))


def _mixed(rng: random.Random, number: int, count: int, instances_wanted: int | None = None) -> Fleet:
    sizes = rng.sample(HOST_SIZES, rng.randint(1, 3))
    hosts = [_host(f"h{j:04d}", *rng.choice(sizes)) for j in range(count)]
    placer = _Placer(hosts)
    instances: list[InstanceDemand] = []
    hot = rng.sample(hosts, max(1, round(count * rng.uniform(0.05, 0.15))))
    for host in hot:
        while True:
            vcpus, memory = rng.choice(CPU_HEAVY)
            if placer.memory[host.name] + memory > 0.9 * host.alloc_memory_mb or not placer.fits(host, vcpus, memory):
                break
            placer.place(host, vcpus, memory)
            instances.append(_instance(number, len(instances), host.name, vcpus, memory, rng.uniform(0.7, 1.0),
                                       rng.uniform(0.6, 0.9), rng))
    # About 4 to 16 instances a host, as long as allocated memory stays below
    # MAX_FILL of the fleet's (enough free hosts for the hot ones' load).
    wanted = round(count * rng.uniform(4, 16)) if instances_wanted is None else instances_wanted
    memory_cap = MAX_FILL * sum(h.alloc_memory_mb for h in hosts)
    allocated = sum(placer.memory.values())
    flavors = [f[:2] for f in FLAVORS]
    weights = [f[2] for f in FLAVORS]
    cool = [h for h in hosts if h not in hot] or hosts
    misses = 0
    while len(instances) < wanted and misses < 20:
        vcpus, memory = rng.choices(flavors, weights)[0]
        on = None if allocated + memory > memory_cap else placer.scattered(rng, vcpus, memory, cool)
        if on is None:
            misses += 1
            continue
        allocated += memory
        # Most guests idle along; a few are busy.
        busy = rng.uniform(0.02, 0.3) if rng.random() < 0.8 else rng.uniform(0.3, 0.8)
        instances.append(_instance(number, len(instances), on, vcpus, memory, busy, rng.uniform(0.4, 0.9), rng))
    return Fleet(hosts={h.name: h for h in hosts}, instances={i.uuid: i for i in instances})


def _johnson(rng: random.Random, hosts: int) -> tuple[list[int], int]:
    """Johnson's FFD worst case for about `hosts` hosts HARD_FILL full."""
    capacity = HARD_HOST[1]
    m = max(1, round(hosts * HARD_FILL / 9))
    e = capacity // 256
    quarter = capacity // 4
    items = ([capacity // 2 + e] * 6 * m + [quarter + 2 * e] * 6 * m + [quarter + e] * 6 * m
             + [quarter - 2 * e] * 12 * m)
    return items, 9 * m


def _triplets(rng: random.Random, hosts: int) -> tuple[list[int], int]:
    """Falkenauer's triplets: each of t full hosts cut into three items
    strictly between 1/4 and 1/2 of it."""
    capacity = HARD_HOST[1]
    t = max(1, round(hosts * HARD_FILL))
    items = []
    low, high = capacity // 4 + 64, capacity // 2 - 64
    for _ in range(t):
        first = rng.randint(low, capacity - 2 * low)
        second = rng.randint(max(low, capacity - first - high), min(high, capacity - first - low))
        third = capacity - first - second
        items += [first, second, third]
    return items, t


def _thirds(rng: random.Random, hosts: int) -> tuple[list[int], int]:
    """n items of 1/3+e and 2n of 1/3-e/2 (one large and two small fill a host)."""
    capacity = HARD_HOST[1]
    n = max(2, round(hosts * HARD_FILL))
    e = capacity // rng.choice((64, 128, 256))
    third = capacity // 3
    return [third + e] * n + [third - e // 2] * (2 * n), n


def _scatter_hard(rng: random.Random, number: int, items: list[int], optimum: int) -> Fleet:
    """The items as 1-vCPU instances scattered over hosts about HARD_FILL full
    (one more host whenever an item fits nowhere)."""
    count = max(2, round(optimum / HARD_FILL))
    hosts = [_host(f"h{j:04d}", *HARD_HOST) for j in range(count)]
    placer = _Placer(hosts)
    rng.shuffle(items)
    instances = []
    for j, memory in enumerate(items):
        on = placer.scattered(rng, 1, memory)
        if on is None:
            on = placer.place(placer.add(_host(f"h{len(hosts):04d}", *HARD_HOST)), 1, memory)
        instances.append(InstanceDemand(
            uuid=f"f{number}-i{j:05d}", name=f"vm{j:05d}", host=on, vcpus=1, memory_mb=memory,
            cpu_mean=0.1, cpu_peak=0.2, memory_used_mean_mb=float(memory), memory_used_peak_mb=float(memory),
            measured=True))
    return Fleet(hosts={h.name: h for h in hosts}, instances={i.uuid: i for i in instances})
