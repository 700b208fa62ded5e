"""The SQLite database and its directory are created private."""
from __future__ import annotations

import grp
import os
import stat

import livemig


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_sqlite_database_and_directory_are_created_private(tmp_path, settings):
    os.umask(0o022)
    livemig.list_hosts(settings=settings.replace(admin_group="no-such-group-livemig"))
    db = os.path.join(settings.data_dir, "livemig.db")
    assert (mode(settings.data_dir), mode(db)) == (0o700, 0o600)
    for journal in (db + "-wal", db + "-shm"):
        if os.path.exists(journal):
            assert mode(journal) == 0o600


def test_sqlite_database_is_group_owned_when_the_admin_group_exists(tmp_path, settings):
    os.umask(0o022)
    group = grp.getgrgid(65534).gr_name  # exists on Debian ("nogroup")
    livemig.list_hosts(settings=settings.replace(admin_group=group))
    db = os.path.join(settings.data_dir, "livemig.db")
    assert (mode(settings.data_dir), mode(db)) == (0o2770, 0o660)
    assert os.stat(settings.data_dir).st_gid == 65534 and os.stat(db).st_gid == 65534
