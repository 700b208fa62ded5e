"""Host reservations in ZooKeeper, shared by every controller.

Each reservation is a persistent znode `ROOT/reservations/hosts/HOST/MIGRATION`
(its data: the instance uuid), plus `ROOT/reservations/instances/UUID` (its
data: the migration id). They are created together in one transaction that
also bumps the version of each host's node, on condition that it is still the
version read with the host's reservations: of two controllers counting the
same host at once, one commits and the other retries with fresh counts, so a
host is never over-booked (an optimistic lock, a third of the requests of a
ZooKeeper lock recipe). They are persistent, so a reservation outlives the
controller that made it until the flow (or its resume) releases it."""
from __future__ import annotations

import logging
import threading
from pathlib import Path

from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import (
    BadVersionError, KazooException, NoNodeError, NodeExistsError, RolledBackError, RuntimeInconsistency,
)
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.security import make_digest_acl

from livemig.config import Settings
from livemig.coordination.base import Holding, HostLimit, ReservationService
from livemig.errors import CoordinationUnavailable, InvalidInput

LOG = logging.getLogger("livemig.coordination")


def digest_credentials(settings: Settings) -> tuple[str, str] | None:
    """(user, password) from the zookeeper_auth setting: "user:password",
    or the path of a file holding it (kept off command lines and out of the
    environment of every process). Errors never repeat the value."""
    value = settings.zookeeper_auth.strip()
    if not value:
        return None
    if value.startswith("/"):
        try:
            value = Path(value).read_text().strip()
        except OSError as exc:
            raise InvalidInput(f"zookeeper_auth file {settings.zookeeper_auth} cannot be read "
                               f"({exc.strerror})") from None
    user, sep, password = value.partition(":")
    if not sep or not user or not password:
        raise InvalidInput("zookeeper_auth must be user:password (or the path of a file holding it)")
    return user, password


def start_client(settings: Settings) -> KazooClient:
    """A started client for the reservations and the jobboard. With
    credentials, every znode livemig creates (reservations, the board's jobs,
    locks and trash) carries an ACL granting that digest identity alone:
    anyone else who reaches the ensemble can neither read them, delete a
    reservation, nor post or claim a job. Nodes created before credentials
    were configured keep their open ACL (see the README)."""
    extra: dict = {}
    credentials = digest_credentials(settings)
    if credentials is not None:
        user, password = credentials
        extra = {"auth_data": [("digest", f"{user}:{password}")],
                 "default_acl": [make_digest_acl(user, password, all=True)]}
    client = KazooClient(hosts=settings.zookeeper_hosts, timeout=settings.zookeeper_session_timeout,
                         connection_retry={"max_tries": 3, "delay": 0.2, "max_delay": 1.0}, **extra)
    try:
        client.start(timeout=max(3.0, settings.zookeeper_session_timeout))
    except (KazooTimeoutError, KazooException) as exc:
        client.close()
        raise CoordinationUnavailable(f"ZooKeeper at {settings.zookeeper_hosts} is unreachable ({exc or 'timeout'})") \
            from None
    return client


_CONFLICT = object()  # another controller committed first: count again


class ZookeeperReservations(ReservationService):
    def __init__(self, settings: Settings, client: KazooClient | None = None):
        self._settings = settings
        self._client = client
        self._own_client = client is None
        self._lock = threading.Lock()
        root = settings.zookeeper_root.rstrip("/")
        self._hosts = f"{root}/reservations/hosts"
        self._instances = f"{root}/reservations/instances"
        self._known_paths: set[str] = set()

    @property
    def client(self) -> KazooClient:
        with self._lock:
            if self._client is None or self._client.state == KazooState.LOST and self._own_client:
                self._client = start_client(self._settings)
            return self._client

    # Commits lost to concurrent reservations on the same hosts before giving up this try.
    MAX_CONFLICTS = 20

    def try_reserve(self, migration_id: int, instance_uuid: str, hosts: list[HostLimit]) -> str | None:
        client = self.client
        try:
            for path in [self._hosts, self._instances] + [f"{self._hosts}/{h.host}" for h in hosts]:
                self._ensure_path(client, path)
            for _attempt in range(self.MAX_CONFLICTS):
                outcome = self._try_reserve_once(client, migration_id, instance_uuid, hosts)
                if outcome is not _CONFLICT:
                    return outcome
            return "reservations on these hosts kept changing; will try again"
        except (KazooException, KazooTimeoutError) as exc:
            raise CoordinationUnavailable(f"ZooKeeper error while reserving hosts: {exc!r}") from None

    def _try_reserve_once(self, client: KazooClient, migration_id: int, instance_uuid: str,
                          hosts: list[HostLimit]):
        me = str(migration_id)
        listed = {h.host: client.get_children(f"{self._hosts}/{h.host}", include_data=True) for h in hosts}
        if all(me in listed[h.host][0] for h in hosts):
            return None  # already ours (a resumed flow)
        try:
            data, _ = client.get(f"{self._instances}/{instance_uuid}")
            holder = int(data.decode())
            if holder != migration_id:
                return f"instance {instance_uuid} is in migration {holder}"
            instance_held = True
        except NoNodeError:
            instance_held = False
        for h in hosts:
            others = [c for c in listed[h.host][0] if c != me]
            if len(others) >= h.limit:
                return f"host {h.host} is in {len(others)} migration(s), its limit is {h.limit}"
        tx = client.transaction()
        for h in hosts:
            # Fails if anyone reserved on (or released from) this host since our count.
            tx.set_data(f"{self._hosts}/{h.host}", b"", version=listed[h.host][1].version)
        if not instance_held:
            tx.create(f"{self._instances}/{instance_uuid}", me.encode())
        for h in hosts:
            if me not in listed[h.host][0]:
                tx.create(f"{self._hosts}/{h.host}/{me}", instance_uuid.encode())
        failed = [r for r in tx.commit() if isinstance(r, Exception)]
        if not failed:
            return None
        # A failed transaction changes nothing; the next count sees the winner.
        # ZooKeeper reports the operation that failed; the others as rolled back or not run.
        causes = [r for r in failed if not isinstance(r, (RolledBackError, RuntimeInconsistency))]
        if causes and all(isinstance(r, (BadVersionError, NodeExistsError)) for r in causes):
            return _CONFLICT
        raise CoordinationUnavailable(f"reserving hosts failed: {failed!r}")

    def _ensure_path(self, client: KazooClient, path: str) -> None:
        # These nodes are never deleted: create each once per process (a
        # round trip saved per node and reservation attempt).
        if path not in self._known_paths:
            client.ensure_path(path)
            self._known_paths.add(path)

    def release(self, migration_id: int, hosts: list[str]) -> None:
        client = self.client
        try:
            if not self._release_at_once(client, migration_id, hosts):
                self._release_each(client, migration_id, hosts)
        except (KazooException, KazooTimeoutError) as exc:
            raise CoordinationUnavailable(f"ZooKeeper error while releasing hosts: {exc!r}") from None

    def _release_at_once(self, client: KazooClient, migration_id: int, hosts: list[str]) -> bool:
        """The usual case: every reservation of the migration and its
        instance's node, deleted in one transaction (three requests where
        one by one took seven). False, having changed nothing, if any of them
        is gone already (a release interrupted half-way, or run again)."""
        paths = [f"{self._hosts}/{host}/{migration_id}" for host in hosts]
        if not paths:
            return True
        try:
            instance_uuid, _ = client.get(paths[0])
            instance_path = f"{self._instances}/{instance_uuid.decode()}"
            holder, stat = client.get(instance_path)
        except NoNodeError:
            return False
        if holder.decode() != str(migration_id):
            return False
        tx = client.transaction()
        tx.delete(instance_path, version=stat.version)
        for path in paths:
            tx.delete(path)
        return not any(isinstance(result, Exception) for result in tx.commit())

    def _release_each(self, client: KazooClient, migration_id: int, hosts: list[str]) -> None:
        for host in hosts:
            path = f"{self._hosts}/{host}/{migration_id}"
            try:
                data, _ = client.get(path)
            except NoNodeError:
                continue
            self._release_instance(client, data.decode(), migration_id)
            try:
                client.delete(path)
            except NoNodeError:
                pass

    def _release_instance(self, client: KazooClient, instance_uuid: str, migration_id: int) -> None:
        path = f"{self._instances}/{instance_uuid}"
        try:
            data, stat = client.get(path)
            if data.decode() == str(migration_id):
                client.delete(path, version=stat.version)
        except (NoNodeError, KazooException):
            pass

    def wait_for_change(self, instance_uuid: str, hosts: list[str], poll_interval_s: float,
                        longest_s: float = 1.0) -> None:
        """Watches instead of polling: a queued migration wakes when a host's
        or the instance's reservations change. Many queued migrations would
        otherwise each count the hosts' reservations every poll interval."""
        changed = threading.Event()

        def wake(_event) -> None:
            changed.set()

        client = self.client
        try:
            for host in hosts:
                try:
                    client.get_children(f"{self._hosts}/{host}", watch=wake)
                except NoNodeError:
                    changed.set()
            client.exists(f"{self._instances}/{instance_uuid}", watch=wake)
        except (KazooException, KazooTimeoutError):
            changed.wait(poll_interval_s)  # the next try_reserve reports the error
            return
        changed.wait(longest_s)

    def holders(self, host: str) -> list[int]:
        try:
            return sorted(int(c) for c in self.client.get_children(f"{self._hosts}/{host}"))
        except NoNodeError:
            return []

    def holdings(self) -> list[Holding]:
        """Every host's reservation znodes, then each instance znode whose
        migration holds no host (left by a release cut short)."""
        client = self.client
        try:
            found: list[Holding] = []
            for host in sorted(self._children(client, self._hosts)):
                for child in sorted(self._children(client, f"{self._hosts}/{host}")):
                    try:
                        data, _ = client.get(f"{self._hosts}/{host}/{child}")
                    except NoNodeError:
                        continue  # released while we listed
                    found.append(Holding(int(child), data.decode(), host))
            with_host = {h.migration_id for h in found}
            for instance_uuid in sorted(self._children(client, self._instances)):
                try:
                    data, _ = client.get(f"{self._instances}/{instance_uuid}")
                except NoNodeError:
                    continue
                if int(data.decode()) not in with_host:
                    found.append(Holding(int(data.decode()), instance_uuid, None))
            return found
        except (KazooException, KazooTimeoutError) as exc:
            raise CoordinationUnavailable(f"ZooKeeper error while listing reservations: {exc!r}") from None

    @staticmethod
    def _children(client: KazooClient, path: str) -> list[str]:
        try:
            return client.get_children(path)
        except NoNodeError:
            return []

    def release_migration(self, migration_id: int) -> None:
        held = [h for h in self.holdings() if h.migration_id == migration_id]
        self.release(migration_id, sorted({h.host for h in held if h.host is not None}))
        client = self.client
        try:
            for h in held:
                if h.host is None:  # no host node leads release() to it
                    self._release_instance(client, h.instance_uuid, migration_id)
        except (KazooException, KazooTimeoutError) as exc:
            raise CoordinationUnavailable(f"ZooKeeper error while releasing hosts: {exc!r}") from None

    def close(self) -> None:
        if self._own_client and self._client is not None:
            self._client.stop()
            self._client.close()
