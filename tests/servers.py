"""Real servers for the test session (and the benchmarks): PostgreSQL and
ZooKeeper from Debian's packages, on loopback, in private directories,
stopped and removed afterwards."""
from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def _pg_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql); `make test` installs it")
    return Path(found[-1]).parent


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """A throwaway PostgreSQL cluster; yields a database URL."""
    bindir = _pg_bin()
    base = Path(tempfile.mkdtemp(prefix="livemig-pg-"))
    os.chmod(base, 0o755)
    data, sock = base / "data", base / "sock"
    sock.mkdir()
    run_as: list[str] = []
    if os.geteuid() == 0:
        # initdb refuses to run as root.
        shutil.chown(base, "postgres", "postgres")
        shutil.chown(sock, "postgres", "postgres")
        run_as = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    subprocess.run(run_as + [str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres",
                             "--no-sync"], check=True, capture_output=True)
    subprocess.run(run_as + [str(bindir / "pg_ctl"), "-D", str(data), "-w", "-l", str(base / "log"), "-o",
                             f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off", "start"],
                   check=True, capture_output=True)
    try:
        subprocess.run(run_as + [str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres",
                                 "livemig"], check=True, capture_output=True)
        yield f"postgresql://postgres@127.0.0.1:{port}/livemig"
    finally:
        subprocess.run(run_as + [str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def new_postgres_database(url: str, name: str) -> str:
    """A fresh database on the session's server, for one test."""
    import sqlalchemy as sa

    from livemig.persistence.database import make_engine

    engine = make_engine(url)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return url.rsplit("/", 1)[0] + f"/{name}"


ZOOKEEPER_CLASSPATH = ["/usr/share/java/zookeeper.jar", "/usr/share/java/slf4j-simple.jar"]


class ZookeeperServer:
    def __init__(self, base: Path, port: int, process: subprocess.Popen):
        self.base, self.port, self.process = base, port, process

    @property
    def hosts(self) -> str:
        return f"127.0.0.1:{self.port}"


def _wait_until_serving(port: int, timeout: float = 60.0) -> None:
    """The port opens before the server takes sessions (a loaded machine's
    JVM needs seconds more): wait for `srvr` to report a serving mode, so the
    first test's 3 s connect does not spend them on the server's start."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(b"srvr")
            answer = b""
            while chunk := s.recv(4096):
                answer += chunk
            if b"Mode:" in answer:
                return
        time.sleep(0.1)
    raise TimeoutError(f"ZooKeeper on 127.0.0.1:{port} is not serving after {timeout} s")


@contextlib.contextmanager
def zookeeper_server() -> Iterator[ZookeeperServer]:
    """ZooKeeper from Debian's jars, with short session timeouts allowed."""
    jars = [j for j in ZOOKEEPER_CLASSPATH if os.path.exists(j)]
    if len(jars) != len(ZOOKEEPER_CLASSPATH):
        raise RuntimeError("ZooKeeper is not installed (apt-get install zookeeper); `make test` installs it")
    extra = sorted(glob.glob("/usr/share/java/netty*.jar")) + sorted(glob.glob("/usr/share/java/slf4j-api*.jar"))
    base = Path(tempfile.mkdtemp(prefix="livemig-zk-"))
    port = free_port()
    (base / "zoo.cfg").write_text(
        f"tickTime=1000\nminSessionTimeout=2000\nmaxSessionTimeout=60000\ndataDir={base}/data\n"
        f"clientPort={port}\nclientPortAddress=127.0.0.1\nadmin.enableServer=false\n"
        "4lw.commands.whitelist=*\nmaxClientCnxns=0\n")
    log = open(base / "zookeeper.log", "w")
    process = subprocess.Popen(
        ["java", "-Xmx256m", "-cp", ":".join(jars + extra), "org.apache.zookeeper.server.ZooKeeperServerMain",
         str(base / "zoo.cfg")], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_port(port)
        _wait_until_serving(port)
        yield ZookeeperServer(base, port, process)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        log.close()
        shutil.rmtree(base, ignore_errors=True)
