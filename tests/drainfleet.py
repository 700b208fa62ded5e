"""A fake fleet for drain tests: a host full of instances and a few
destinations, each with its migration limit, plus the checks every drain
test makes (each instance on exactly one host, host limits never exceeded,
judged from the migrations' event timeline)."""
from __future__ import annotations

import collections
import dataclasses
from pathlib import Path

import sqlalchemy as sa

import livemig
from livemig.config import Settings
from livemig.drivers.base import InterfaceInfo
from livemig.drivers.fake import FakeDriver, fake_uri
from livemig.persistence.database import database_for
from livemig.persistence.models import Event, Host, Instance, Migration

CTX = livemig.admin_context("tests")


@dataclasses.dataclass
class Fleet:
    settings: Settings
    directory: Path
    driver: FakeDriver
    instances: dict[str, str]  # uuid -> name

    @classmethod
    def build(cls, tmp_path: Path, settings: Settings, *, source: str = "src", count: int = 20,
              dests: dict[str, dict] | None = None, limits: dict[str, int] | None = None,
              memory_mb: int = 1024, migration_seconds: float = 0.05, sizes: list[int] | None = None,
              source_limit: int = 3, sources: dict[str, int] | None = None) -> "Fleet":
        """`sources`: host -> how many instances it runs (default {source: count})."""
        directory = tmp_path / "fleet"
        fleet = cls(settings, directory, FakeDriver(), {})
        dests = dests if dests is not None else {f"d{i}": {} for i in range(1, 6)}
        sources = sources or {source: count}
        limits = limits or {}
        for name, host in [*((s, {}) for s in sources), *dests.items()]:
            fleet.driver.create_host(fleet.uri(name), migration_seconds=migration_seconds, **host)
            livemig.add_host(CTX, name, fleet.uri(name), settings=settings,
                             max_concurrent_migrations=source_limit if name in sources else limits.get(name, 2))
        i = 0
        for host, how_many in sources.items():
            for _ in range(how_many):
                fleet.add_instance(host, f"vm{i:02d}", sizes[i] if sizes else memory_mb, i)
                i += 1
        livemig.sync_hosts(CTX, settings=settings)
        return fleet

    def add_instance(self, host: str, name: str, memory_mb: int = 1024, index: int = 0) -> str:
        uuid = self.driver.create_domain(self.uri(host), name, memory_mb=memory_mb, interfaces=[
            InterfaceInfo(mac=f"52:54:00:00:{index // 256:02x}:{index % 256:02x}", bridge="br-guests")])
        self.instances[uuid] = name
        return uuid

    def uri(self, host: str) -> str:
        return fake_uri(self.directory, host)

    def db(self):
        return database_for(self.settings.database_url)

    def hosts_running(self) -> dict[str, list[str]]:
        """uuid -> the hosts whose hypervisor runs it (the real world)."""
        found: dict[str, list[str]] = collections.defaultdict(list)
        for path in sorted(self.directory.glob("*.json")):
            for uuid, dom in self.driver.raw_host(f"fake://{path}")["domains"].items():
                if dom["state"] == "running":
                    found[uuid].append(path.stem)
        return found

    def inventory_hosts(self) -> dict[str, str | None]:
        with self.db().reading() as s:
            return {i.uuid: i.host for i in s.scalars(sa.select(Instance))}

    def migrations(self) -> list[Migration]:
        with self.db().reading() as s:
            return list(s.scalars(sa.select(Migration).order_by(Migration.id)))

    def completed_moves_per_instance(self) -> collections.Counter:
        return collections.Counter(m.instance_uuid for m in self.migrations() if m.status == "completed")

    def max_concurrency(self) -> dict[str, tuple[int, int]]:
        """host -> (most migrations it took part in at once, its limit), from
        each migration's event timeline: it holds its hosts from its
        reserve-hosts step's SUCCESS until its release-hosts step starts (or
        its reserve-hosts revert starts, or it ends). Both ends are logged
        inside the real holding, so an overlap here is a real one."""
        with self.db().reading() as s:
            limits = dict(s.execute(sa.select(Host.name, Host.max_concurrent_migrations)).all())
            migrations = {m.id: m for m in s.scalars(sa.select(Migration))}
            events = list(s.scalars(sa.select(Event).order_by(Event.id)))
        # Per migration, one holding per attempt (a scheduled migration
        # retried on the next host holds each attempt's destination in turn).
        held: dict[int, list[list]] = collections.defaultdict(list)
        for e in events:
            holdings = held[e.migration_id]
            if e.kind == "step" and e.name == "reserve-hosts" and e.state == "SUCCESS":
                if not holdings or holdings[-1][1] is not None:
                    holdings.append([e.at, None])
            elif holdings and holdings[-1][1] is None and (
                    (e.kind == "step" and e.name == "release-hosts" and e.state == "RUNNING")
                    or (e.kind == "step" and e.name == "reserve-hosts" and e.state == "REVERTING")
                    or (e.kind == "status" and e.state in ("completed", "failed", "cancelled", "error"))):
                holdings[-1][1] = e.at
        points = []
        for mid, holdings in held.items():
            m = migrations[mid]
            hosts_of_attempts = [a["host"] for a in m.attempts or [] if isinstance(a, dict) and a.get("host")]
            for number, (start, end) in enumerate(holdings):
                assert end is not None, f"migration {mid} still holds its hosts"
                dest = hosts_of_attempts[number] if number < len(hosts_of_attempts) else m.dest_host
                for host in (m.source_host, dest):
                    points.append((start, 1, host))
                    points.append((end, -1, host))
        # At one instant, releases before acquisitions (either order is inside the real holdings).
        points.sort(key=lambda p: (p[0], p[1]))
        current: collections.Counter = collections.Counter()
        most: collections.Counter = collections.Counter()
        for _at, delta, host in points:
            current[host] += delta
            most[host] = max(most[host], current[host])
        return {host: (most[host], limits[host]) for host in most}

    def assert_invariants(self, source: str = "src") -> None:
        running = self.hosts_running()
        inventory = self.inventory_hosts()
        for uuid, name in self.instances.items():
            assert len(running[uuid]) == 1, f"{name} runs on {running[uuid]}"
            assert inventory[uuid] == running[uuid][0], f"{name}: inventory says {inventory[uuid]}"
        moved = self.completed_moves_per_instance()
        assert all(n == 1 for n in moved.values()), f"moved more than once: {moved}"
        for host, (most, limit) in self.max_concurrency().items():
            assert most <= limit, f"host {host} took part in {most} migrations at once, its limit is {limit}"
