"""A small fake cloud for tests: three fake hosts in the inventory and a guest
with a filtered interface and an authenticated volume, as the lab has."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import sqlalchemy as sa

import livemig
from livemig.config import Settings
from livemig.drivers.base import DiskInfo, InterfaceInfo
from livemig.drivers.fake import FakeDriver, fake_uri
from livemig.persistence.database import database_for
from livemig.persistence.models import Instance, Migration, Reservation

FILTER_XML = ("<filter name='sg-web' chain='root'><rule action='accept' direction='in' priority='500'>"
              "<tcp dstportstart='7'/></rule></filter>")


@dataclasses.dataclass
class FakeCloud:
    settings: Settings
    directory: Path
    driver: FakeDriver
    vm: str = ""

    @classmethod
    def build(cls, tmp_path: Path, settings: Settings, hosts: tuple[str, ...] = ("a", "b", "c"),
              migration_seconds: float = 0.05) -> "FakeCloud":
        directory = tmp_path / "world"
        cloud = cls(settings, directory, FakeDriver())
        ctx = livemig.admin_context("tests")
        for name in hosts:
            cloud.driver.create_host(cloud.uri(name), migration_seconds=migration_seconds)
            livemig.add_host(ctx, name, cloud.uri(name), settings=settings)
        cloud.driver.update_host(cloud.uri(hosts[0]), filters={"sg-web": FILTER_XML},
                                 secrets={"vol-1": {"type": "iscsi", "value": "s3cret"}})
        cloud.vm = cloud.driver.create_domain(
            cloud.uri(hosts[0]), "vm1", vcpus=1, memory_mb=256, disk_gb=1, project="p1",
            interfaces=[InterfaceInfo(mac="52:54:00:aa:00:01", bridge="br-guests", filter="sg-web", ip="10.0.0.5")],
            disks=[DiskInfo(target="vdb", kind="network", source="iscsi://127.0.0.1:3260/iqn.lab:vol/1",
                            protocol="iscsi", hosts=[["127.0.0.1", 3260]], secret_usage="vol-1",
                            secret_type="iscsi")])
        livemig.sync_hosts(ctx, settings=settings)
        return cloud

    def uri(self, host: str) -> str:
        return fake_uri(self.directory, host)

    def running_on(self, uuid: str | None = None) -> list[str]:
        uuid = uuid or self.vm
        found = []
        for path in sorted(self.directory.glob("*.json")):
            dom = self.driver.raw_host(f"fake://{path}")["domains"].get(uuid)
            if dom and dom["state"] == "running":
                found.append(path.stem)
        return found

    def domains_on(self, host: str) -> dict:
        return self.driver.raw_host(self.uri(host))["domains"]

    def host_record(self, host: str) -> dict:
        return self.driver.raw_host(self.uri(host))

    def instance(self, uuid: str | None = None) -> Instance:
        with database_for(self.settings.database_url).session() as s:
            return s.get(Instance, uuid or self.vm)

    def migration(self, migration_id: int) -> Migration:
        with database_for(self.settings.database_url).session() as s:
            return s.get(Migration, migration_id)

    def last_migration(self) -> Migration | None:
        with database_for(self.settings.database_url).session() as s:
            return s.scalars(sa.select(Migration).order_by(Migration.id.desc())).first()

    def reservations(self) -> list[tuple[str, int]]:
        with database_for(self.settings.database_url).session() as s:
            return [(r.host, r.migration_id) for r in s.scalars(sa.select(Reservation))]
