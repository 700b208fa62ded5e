"""What every livemig task shares: its services and a few store reads."""
from __future__ import annotations

import logging
from typing import Any

from taskflow import task

from livemig.drivers.base import Driver, DomainInfo
from livemig.services import Services

LOG = logging.getLogger("livemig.tasks")


class MigrationTask(task.Task):
    """A task with livemig's services injected (never put in the store)."""

    def __init__(self, services: Services, name: str | None = None, **kwargs: Any):
        super().__init__(name=name, **kwargs)
        self.services = services

    def host_uri(self, host: str) -> str:
        return self.services.host_uri(host)

    def driver_and_uri(self, host: str) -> tuple[Driver, str]:
        uri = self.host_uri(host)
        return self.services.drivers.for_uri(uri), uri

    def find_domain(self, host: str, instance_uuid: str) -> DomainInfo | None:
        driver, uri = self.driver_and_uri(host)
        return driver.find_domain(uri, instance_uuid)

    def note(self, migration_id: int, message: str, state: str = "") -> None:
        """An event in the migration's audit trail, from this step."""
        LOG.info("migration %s: %s: %s", migration_id, self.name, message)
        self.services.db.record_event(migration_id, "note", self.name, state, message)

    def record_resource(self, migration_id: int, resource: str, state: str) -> None:
        self.services.db.record_event(migration_id, "resource", self.name, state, resource)
