"""Item 9 of issue 13: no secret, password or credential value is ever in a
logbook, a job, an event or a log line, and a registered credential reaches
whichever conductor runs the migration (real PostgreSQL, ZooKeeper and a
conductor process with its own data directory; fake hypervisor)."""
from __future__ import annotations

import logging
import os
import secrets
import signal
import subprocess
import sys
import time
import uuid

import pytest
import sqlalchemy as sa

import livemig
from livemig.persistence.database import database_for, make_engine
from tests.fakecloud import FakeCloud

pytestmark = [pytest.mark.postgres, pytest.mark.zookeeper]

CTX = livemig.admin_context("tests")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def database_with_password(postgres_url):
    """A database owned by a role with a known password; dropped afterwards."""
    name = f"c1_{uuid.uuid4().hex[:8]}"
    password = f"pw-{secrets.token_hex(12)}"
    admin = make_engine(postgres_url)
    with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text(f"CREATE ROLE {name} LOGIN PASSWORD '{password}'"))
        conn.execute(sa.text(f"CREATE DATABASE {name} OWNER {name}"))
    server = postgres_url.split("@", 1)[1].rsplit("/", 1)[0]
    try:
        yield f"postgresql://{name}:{password}@{server}/{name}", password
    finally:
        livemig.close()
        with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            conn.execute(sa.text(f"DROP ROLE IF EXISTS {name}"))
        admin.dispose()


def _text(value) -> str:
    if isinstance(value, memoryview):
        value = bytes(value)
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def dump_database(url: str) -> str:
    """Every row of every table, as text."""
    engine = database_for(url).engine
    meta = sa.MetaData()
    meta.reflect(engine)
    with engine.connect() as conn:
        return "\n".join(f"{table.name}: " + " | ".join(_text(v) for v in row)
                         for table in meta.sorted_tables for row in conn.execute(sa.select(table)))


def dump_znodes(zookeeper_hosts: str, root: str) -> str:
    from kazoo.client import KazooClient

    client = KazooClient(hosts=zookeeper_hosts)
    client.start(timeout=10)
    try:
        lines, todo = [], [root]
        while todo:
            path = todo.pop()
            if not client.exists(path):
                continue
            data, _ = client.get(path)
            lines.append(f"{path}: {data.decode('utf-8', 'replace')}")
            todo.extend(f"{path}/{child}" for child in client.get_children(path))
        return "\n".join(lines)
    finally:
        client.stop()
        client.close()


def test_no_password_or_credential_anywhere_and_the_credential_reaches_the_conductor(
        tmp_path, settings, zookeeper, database_with_password, caplog):
    url, password = database_with_password
    credential = f"cred-{secrets.token_hex(12)}"
    key_file = tmp_path / "shared" / "credential.key"
    settings = settings.replace(database_url=url, zookeeper_hosts=zookeeper.hosts, zookeeper_session_timeout=2.0,
                                zookeeper_root=f"/livemig-c1-{uuid.uuid4().hex[:8]}", poll_interval_s=0.05,
                                credential_key_file=str(key_file))
    caplog.set_level(logging.DEBUG)
    cloud = FakeCloud.build(tmp_path, settings)
    # The source will not reveal this secret's value: only the registered credential can.
    cloud.driver.update_host(cloud.uri("a"), secrets={"vol-1": {"type": "iscsi", "value": "unreadable",
                                                                "private": True}})
    env = dict(os.environ, PYTHONPATH=ROOT, LIVEMIG_DATABASE_URL=url, LIVEMIG_DATA_DIR=settings.data_dir,
               LIVEMIG_CREDENTIAL_KEY_FILE=str(key_file), LIVEMIG_ZOOKEEPER_HOSTS=settings.zookeeper_hosts,
               LIVEMIG_ZOOKEEPER_ROOT=settings.zookeeper_root, LIVEMIG_ZOOKEEPER_SESSION_TIMEOUT="2.0",
               LIVEMIG_POLL_INTERVAL_S="0.05")
    added = subprocess.run([sys.executable, "-m", "livemig.cli", "credential", "add", "vol-1"], cwd=ROOT, env=env,
                           input=credential + "\n", capture_output=True, text=True, timeout=60)
    assert added.returncode == 0, added.stderr

    view = livemig.migrate(CTX, "vm1", "a", "b", wait=False, settings=settings)
    job = dump_znodes(settings.zookeeper_hosts, settings.zookeeper_root)
    assert f'"migration_id": {view.id}' in job  # the job is there, as posted

    # The conductor has its own data directory: nothing reaches it through the poster's.
    log_path = tmp_path / "conductor.log"
    conductor_env = {**env, "LIVEMIG_DATA_DIR": str(tmp_path / "conductor-data")}
    with open(log_path, "w") as log:
        conductor = subprocess.Popen([sys.executable, "-m", "tests.helpers_conductor", "c1-conductor"], cwd=ROOT,
                                     env=conductor_env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while livemig.show_migration(view.id, settings=settings).status not in ("completed", "failed", "error"):
            assert time.monotonic() < deadline, "the migration did not finish"
            time.sleep(0.1)
    finally:
        conductor.send_signal(signal.SIGTERM)
        conductor.wait(timeout=30)
    done = livemig.show_migration(view.id, settings=settings)
    assert done.status == "completed", done.error_reason
    assert cloud.running_on() == ["b"]
    assert cloud.host_record("b")["secrets"]["vol-1"]["value"] == credential

    database = dump_database(url)
    assert "livemig_credentials: vol-1" in database and "flowdetails" in database and "livemig_events" in database
    logs = "\n".join([log_path.read_text(), caplog.text, added.stdout, added.stderr])
    assert "c1-conductor: claimed" in logs  # the conductor's log was captured
    for where, text in [("database", database), ("job", job), ("logs", logs)]:
        assert password not in text, f"the database password is in the {where}"
        assert credential not in text, f"the credential is in the {where}"
