"""livemig's files on a controller (the SQLite database, local reservations,
credentials) are created private: the library's admin check is only as
honest as the file permissions under it, since anyone who can write the
database can change the inventory without asking livemig."""
from __future__ import annotations

import grp
import os
from pathlib import Path

import sqlalchemy as sa


def _admin_gid(admin_group: str) -> int | None:
    try:
        return grp.getgrnam(admin_group).gr_gid if admin_group else None
    except KeyError:
        return None


def make_private_dir(path: Path, admin_group: str) -> None:
    """Create PATH (and missing parents) 0700, or 2770 owned by the admin
    group when it exists; an existing directory is left as the operator set it."""
    if path.exists():
        return
    if not path.parent.exists():
        make_private_dir(path.parent, admin_group)
    os.mkdir(path, 0o700)
    gid = _admin_gid(admin_group)
    if gid is not None:
        try:
            os.chown(path, -1, gid)
            os.chmod(path, 0o2770)
        except PermissionError:
            pass  # not a member: stays 0700
    else:
        os.chmod(path, 0o700)  # whatever the umask


def prepare_sqlite_database(url: str, admin_group: str) -> None:
    """Create a SQLite database's directory and empty file with private
    modes before SQLite does (it would use the umask: 0644 by default).
    SQLite gives its -wal and -shm files the database file's mode."""
    parsed = sa.engine.make_url(url)
    if not parsed.drivername.startswith("sqlite") or not parsed.database or parsed.database == ":memory:":
        return
    path = Path(parsed.database)
    make_private_dir(path.parent, admin_group)
    gid = _admin_gid(admin_group)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    try:
        os.fchmod(fd, 0o600)
        if gid is not None and os.stat(path.parent).st_gid == gid:
            os.fchown(fd, -1, gid)
            os.fchmod(fd, 0o660)
    finally:
        os.close(fd)
