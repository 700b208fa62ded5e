"""The precheck step: may this migration start, and claiming the instance."""
from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from livemig.persistence.inventory import event_row, insert_events
from livemig.persistence.models import Instance
from livemig.prechecks import check_migration
from livemig.states import InstanceState
from livemig.tasks.base import MigrationTask
from livemig.tasks.undo import never_raises, with_backoff


class CheckMigrationPrerequisites(MigrationTask):
    """Re-checks hosts, instance, capacity, CPU and versions against the live hypervisors.

    Reversion strategy: nothing to undo (it changes nothing).
    """

    def execute(self, migration_id: int, instance_uuid: str, source_host: str, dest_host: str) -> None:
        with self.services.db.reading() as session:
            instance = session.get(Instance, instance_uuid)
            if instance is not None and instance.state == InstanceState.MIGRATING.value:
                return  # marked by this flow before a crash: the checks passed then
            check_migration(session, self.services.drivers, instance_uuid, source_host, dest_host,
                            migration_id=migration_id, report=lambda why: self.note(migration_id, why),
                            copy_storage=self.services.options.copy_storage)


class MarkInstanceMigrating(MigrationTask):
    """Sets the instance's state to `migrating`, returning the state it had.

    Reversion strategy: put back the previous state if the instance is still `migrating`.
    """

    default_provides = "previous_instance_state"

    def execute(self, migration_id: int, instance_uuid: str) -> str:
        instances = Instance.__table__
        with self.services.db.transaction() as conn:
            previous = conn.execute(sa.select(instances.c.state).where(instances.c.uuid == instance_uuid)
                                    .with_for_update()).scalar_one()
            if previous == InstanceState.MIGRATING.value:
                previous = InstanceState.RUNNING.value  # re-run after a crash
            conn.execute(sa.update(instances).where(instances.c.uuid == instance_uuid)
                         .values(state=InstanceState.MIGRATING.value))
            insert_events(conn, event_row(migration_id, "note", self.name, "migrating", f"instance was {previous}"))
            return previous

    @never_raises
    def revert(self, result: Any, instance_uuid: str, **kwargs: Any) -> None:
        previous = result if isinstance(result, str) else InstanceState.RUNNING.value

        def put_back() -> None:
            with self.services.db.session() as session:
                instance = session.get(Instance, instance_uuid)
                if instance is not None and instance.state == InstanceState.MIGRATING.value:
                    instance.state = previous

        # Retried; if it still fails the first task's decision sets the state anyway.
        with_backoff(put_back, f"restoring the state of instance {instance_uuid}")
