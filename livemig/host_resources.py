"""What livemig itself defined on a host (secrets, filters, disk images), so
that cleanup removes only those: an object that was there before livemig (a
host-wide Ceph client secret, a filter other tools share, an image) is never
livemig's to remove.
And one that livemig did create is kept while another unfinished migration
of that host may need it."""
from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.orm import Session

from livemig.drivers.base import DomainInfo, Driver
from livemig.errors import LivemigError
from livemig.persistence.inventory import unfinished
from livemig.persistence.models import HostResource, Instance, Migration

# Where an object of each kind is named in the inventory's instance records.
_REFERENCES = {"secret": ("volumes", "secret_usage"), "filter": ("interfaces", "filter"),
               "disk-image": ("volumes", "source")}


def record_created(db, host: str, kind: str, name: str, migration_id: int) -> None:
    """livemig is about to define `name` on `host`: record it first, so that
    a crash right after creating cannot leave it unowned. Idempotent: an
    existing record keeps the migration that first created it."""
    try:
        with db.session() as session:
            if session.get(HostResource, (host, kind, name)) is None:
                session.add(HostResource(host=host, kind=kind, name=name, migration_id=migration_id))
    except sa.exc.IntegrityError:
        pass  # a concurrent migration recorded it just now: recorded is all this wants


def forget(db, host: str, kind: str, name: str) -> None:
    """`name` is gone from `host`: a later object of that name is not ours."""
    with db.session() as session:
        session.execute(sa.delete(HostResource).where(
            HostResource.host == host, HostResource.kind == kind, HostResource.name == name))


def created_by_livemig(session: Session, host: str, kind: str, name: str) -> bool:
    return session.get(HostResource, (host, kind, name)) is not None


def needed_by_other_migration(session: Session, host: str, kind: str, name: str, migration_id: int) -> str | None:
    """An unfinished migration other than `migration_id`, to or from `host`,
    that may need the object, in words; None if none may. One that created
    the object counts, and so does one whose instance refers to it."""
    rows = session.execute(
        sa.select(Migration.id, Migration.source_host, Migration.dest_host, Instance.volumes, Instance.interfaces)
        .outerjoin(Instance, Instance.uuid == Migration.instance_uuid)
        .where(unfinished(Migration.status), Migration.id != migration_id,
               sa.or_(Migration.source_host == host, Migration.dest_host == host))).all()
    if not rows:
        return None
    owner = session.get(HostResource, (host, kind, name))
    field, key = _REFERENCES[kind]
    for mid, source, dest, volumes, interfaces in rows:
        items = volumes if field == "volumes" else interfaces
        if items is None:
            return f"migration {mid} ({source} -> {dest}) is unfinished and its instance is not known"
        if owner is not None and owner.migration_id == mid:
            return f"migration {mid} ({source} -> {dest}) defined it and is unfinished"
        if any(isinstance(item, dict) and item.get(key) == name for item in items):
            return f"migration {mid} ({source} -> {dest}) is unfinished and its VM uses it"
    return None


class KeptForAnotherUser(LivemigError):
    """A revert left an object it created: someone else may need it now."""


def _uses(domain: DomainInfo, kind: str, name: str) -> bool:
    if kind == "filter":
        return any(i.filter == name for i in domain.interfaces)
    if kind == "disk-image":
        return any(d.source == name for d in domain.disks)
    return any(d.secret_usage == name for d in domain.disks)


def why_keep(db, driver: Driver, uri: str, host: str, kind: str, name: str, migration_id: int,
             instance_uuid: str) -> str | None:
    """Why an object this migration defined on `host` must stay there
    (another domain there uses it, or another unfinished migration of the
    host may), or None. A host that does not answer raises: unknown is not
    "unused"."""
    users = [d.name for d in driver.list_domains(uri) if d.uuid != instance_uuid and _uses(d, kind, name)]
    if users:
        return f"domain {users[0]} on {host} uses it"
    with db.reading() as session:
        return needed_by_other_migration(session, host, kind, name, migration_id)
