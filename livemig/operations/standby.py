"""Standby: a host a consolidation emptied takes no placements (the
scheduler's standby filter, the precheck) until `livemig host wake`, so that
it can be powered off. Only a host really empty when the moves from it have
ended goes to standby; a move that failed leaves its host in use."""
from __future__ import annotations

from typing import Iterable

import sqlalchemy as sa
from sqlalchemy.orm import Session

from livemig.errors import InvalidInput
from livemig.operations.claims import check_operation_claim
from livemig.operations.records import add_operation_event, operation_moves
from livemig.operations.states import MoveStatus
from livemig.persistence.inventory import get_host, unfinished_migrations
from livemig.persistence.models import Host, Instance, Migration, utcnow
from livemig.services import Services
from livemig.states import InstanceState


def standby_emptied_hosts(services: Services, operation_id: int, emptied: Iterable[str],
                          decided: set[str]) -> set[str]:
    """Puts each host of `emptied` (not yet `decided`) whose moves have all
    ended in standby if nothing runs there or is on its way; returns the
    hosts decided now (in standby, or left in use with an event saying why)."""
    now_decided: set[str] = set()
    with services.db.session() as session:
        moves = operation_moves(session, operation_id)
        for name in emptied:
            if name in decided:
                continue
            if any(not MoveStatus(m.status).finished for m in moves if name in (m.source_host, m.dest_host)):
                continue  # its moves have not all ended
            host = session.get(Host, name)
            if host is None or host.standby:
                now_decided.add(name)
                continue
            if _busy(session, name):
                continue  # another migration is on its way to or from it: look again
            check_operation_claim(session, operation_id)
            left = _instances_on(session, name)
            if left:
                add_operation_event(session, operation_id, "not-standby",
                                    f"{name} stays in use: it still runs {', '.join(left)}")
            else:
                host.standby, host.standby_since = True, utcnow()
                host.standby_reason = f"emptied by consolidation (operation {operation_id})"
                add_operation_event(session, operation_id, "standby", f"{name} in standby: nothing runs there")
            now_decided.add(name)
    return now_decided


def hosts_in_standby_by(session: Session, operation_id: int, hosts: Iterable[str]) -> list[str]:
    """Those of `hosts` this operation put in standby (and still there)."""
    reason = f"emptied by consolidation (operation {operation_id})"
    return sorted(session.scalars(sa.select(Host.name).where(Host.name.in_(list(hosts)), Host.standby.is_(True),
                                                             Host.standby_reason == reason)))


def wake(session: Session, name: str) -> Host:
    """Takes host `name` out of standby: it takes placements again."""
    host = get_host(session, name)
    if not host.standby:
        raise InvalidInput(f"host {name} is not in standby")
    host.standby, host.standby_reason, host.standby_since = False, None, None
    return host


def _instances_on(session: Session, name: str) -> list[str]:
    return list(session.scalars(sa.select(Instance.name).where(
        Instance.host == name, Instance.state != InstanceState.DELETED.value).order_by(Instance.name)))


def _busy(session: Session, name: str) -> bool:
    return session.scalar(unfinished_migrations().with_only_columns(Migration.id).where(
        sa.or_(Migration.source_host == name, Migration.dest_host == name)).limit(1)) is not None
