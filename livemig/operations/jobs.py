"""Operations as jobs on the conductors' board (with ZooKeeper).

An operation is posted on the same board as migrations, its job's details
naming `operation_id`; any `livemig conductor` claims it (MigrationConductor
hands such jobs to `dispatch_operation_job`) and runs its flow from the SQL
logbook under a claim epoch (operations/claims.py). The operation's moves
are migration jobs of their own, run by whichever conductors claim them. A
conductor that dies loses its claims when its ZooKeeper session expires;
another claims the operation, raises its epoch and continues: it follows
the migrations already posted and re-posts one whose job a crash lost."""
from __future__ import annotations

import logging
import time
from typing import Callable, Iterable

from taskflow.persistence import models as tf_models

from livemig.operations.claims import OperationEnded, OperationNotFound, operation_claimed
from livemig.operations.records import add_operation_event, get_operation
from livemig.operations.runner import claim_operation, load_operation_engine, logbook_name
from livemig.persistence.inventory import get_migration
from livemig.persistence.models import Operation
from livemig.services import Services
from livemig.states import MigrationStatus

LOG = logging.getLogger("livemig.operations")


def post_operation_job(services: Services, operation_id: int) -> str:
    """Post the operation's persisted flow as a job; returns the job's uuid."""
    with services.db.reading() as session:
        operation = get_operation(session, operation_id)
        book_id, flow_id, host = operation.logbook_id, operation.flow_id, operation.host
    book = tf_models.LogBook(logbook_name(operation_id), uuid=book_id)
    job = services.jobboard.post(logbook_name(operation_id), book=book,
                                 details={"flow_uuid": flow_id, "operation_id": operation_id, "hosts": [host]})
    with services.db.session() as session:
        session.get(Operation, operation_id).job_id = job.uuid
        add_operation_event(session, operation_id, "posted", f"job {job.uuid}")
    return job.uuid


def resume_operation_job(services: Services, operation_id: int) -> bool:
    """A job still on the board is resumed by a conductor once its claim
    lapses; otherwise post the persisted flow again (returns True)."""
    from livemig.jobs import job_on_board

    with services.db.reading() as session:
        job_id = get_operation(session, operation_id).job_id
    if job_on_board(services, job_id):
        return False
    post_operation_job(services, operation_id)
    return True


def dispatch_operation_job(conductor, job, operation_id: int, dispatch: Callable) -> bool:
    """Claim the operation and run its flow through the conductor's own
    dispatch (`dispatch(job)`); returns whether the board consumes the job."""
    from livemig.jobs import HAND_BACK_DELAY_S, is_transient

    services: Services = conductor._services
    name = conductor._name
    LOG.info("conductor %s: claimed %s (operation %s)", name, job.name, operation_id)
    try:
        epoch = claim_operation(services, operation_id, f"conductor {name}")
    except (OperationEnded, OperationNotFound) as exc:
        LOG.warning("conductor %s: %s; discarding %s", name, exc, job.name)
        return True
    except Exception as exc:  # noqa: BLE001 - classified
        if is_transient(exc):
            time.sleep(HAND_BACK_DELAY_S)
            return False
        LOG.error("conductor %s: cannot claim operation %s: %s", name, operation_id, exc)
        return True
    with operation_claimed(operation_id, epoch):
        try:
            conductor._built.engine = load_operation_engine(services, operation_id)
            return dispatch(job)
        except Exception as exc:  # noqa: BLE001 - its flow never ran: back on the board
            LOG.warning("conductor %s: cannot run operation %s now (%s); handing it back", name, operation_id, exc)
            time.sleep(HAND_BACK_DELAY_S)
            return False
        finally:
            conductor._built.engine = None


class JobMoveRunner:
    """The moves' migrations run as jobs: posted when submitted; a migration
    that a crash left recorded but not posted (or whose job is gone while it
    is unfinished) is posted again when first followed."""

    def __init__(self, services: Services):
        self._services = services
        self._checked: set[int] = set()

    def submitted(self, migration_id: int) -> None:
        from livemig.jobs import post_migration_job

        try:
            post_migration_job(self._services, migration_id, board=self._services.jobboard)
        except Exception as exc:  # noqa: BLE001 - recorded already: follow() posts it again
            LOG.warning("migration %s: cannot post its job now (%s); trying again", migration_id, exc)
            return
        self._checked.add(migration_id)

    def follow(self, migration_ids: Iterable[int]) -> None:
        from livemig.jobs import job_on_board, post_migration_job

        for migration_id in migration_ids:
            if migration_id in self._checked:
                continue
            self._checked.add(migration_id)
            with self._services.db.reading() as session:
                migration = get_migration(session, migration_id)
                job_id, finished = migration.job_id, MigrationStatus(migration.status).finished
            if finished or job_on_board(self._services, job_id):
                continue
            LOG.info("migration %s: its job is not on the board; posting it again", migration_id)
            post_migration_job(self._services, migration_id, board=self._services.jobboard)

    def wait(self, timeout: float) -> None:
        time.sleep(timeout)  # the conductors run the migrations: their rows say when one ends

    def close(self) -> None:
        pass
