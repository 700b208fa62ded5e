"""`livemig reconcile`: compare what livemig believes with what the hosts run,
and repair what disagrees (Ganeti's `gnt-instance failover --cleanup` is the
model).

Three parts:
  take_snapshot(services)  reads the inventory, the unfinished migrations,
                           the reservations, the leftovers, who runs each
                           unfinished migration, and every host's domains;
  compare(snapshot)        a pure function from that snapshot to findings,
                           each with what disagrees and the repair it proposes;
  apply_findings(...)      runs the repairs, re-checking the real state
                           immediately before each one.

The rules, conservative on purpose:
  * A host that does not answer is unknown, never empty: it is a finding of
    its own, and no repair that depends on where a VM runs is proposed while
    any host is unknown (the VM might run there too).
  * What belongs to an unfinished migration (its instance, its reservations,
    its copies) is that migration's: its flow repairs it when it resumes.
  * An unfinished migration that nobody runs (no process holds its run lock;
    with ZooKeeper, no job for it on the board) and that has been quiet for
    `grace_s` is resumed from its persisted flow, which looks before every
    step (a VM already on its destination completes without migrating again).
    One whose flow cannot be resumed (missing, or ended without an outcome)
    is ended `error`, with where its VM runs.
  * A "safe" repair is idempotent and cannot lose a VM: releasing the
    reservations of a finished migration, pointing the inventory at the one
    host that runs a VM, resuming (re-posting) a flow, recording and resolving
    leftovers. Destroying a copy or ending a migration is for an operator's
    `--apply` only; a conductor runs the safe part when it starts.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import errno
import fcntl
import logging
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from livemig.coordination.base import Holding
from livemig.drivers.base import DomainInfo
from livemig.errors import LivemigError
from livemig.persistence.inventory import (
    add_event, get_migration, raise_claim_epoch, record_leftover, set_migration_status, unfinished_migrations,
)
from livemig.persistence.models import Event, Host, Instance, Leftover, Migration, utcnow
from livemig.services import Services
from livemig.states import INSTANCE_STATE_OF_DOMAIN, DomainState, InstanceState, MigrationStatus

LOG = logging.getLogger("livemig.reconcile")

# An unfinished migration quiet for less than this may be starting (recorded,
# not yet posted or locked): it is left alone.
DEFAULT_GRACE_S = 30.0

# Domain states in which a host holds a live copy of a VM.
LIVE_STATES = (DomainState.RUNNING, DomainState.PAUSED, DomainState.PMSUSPENDED)

# Who runs an unfinished migration.
RUNNING, WAITING, NOBODY, UNKNOWN = "running", "waiting-on-board", "nobody", "unknown"


# -- where a VM runs ----------------------------------------------------------------------------------
# The one place reconcile asks hypervisors; to be pointed at the shared
# locator. A LivemigError means "cannot ask": unknown, never absent.

def domains_on_host(services: Services, uri: str) -> list[DomainInfo]:
    return services.drivers.for_uri(uri).list_domains(uri)


def find_on_host(services: Services, uri: str, uuid: str) -> DomainInfo | None:
    return services.drivers.for_uri(uri).find_domain(uri, uuid)


# -- the snapshot -------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class MigrationFacts:
    id: int
    instance_uuid: str
    source_host: str
    dest_host: str
    status: str
    runner: str  # RUNNING, WAITING, NOBODY or UNKNOWN
    resumable: bool  # its persisted flow exists and has not ended
    quiet_s: float  # since its last recorded activity


@dataclasses.dataclass(frozen=True)
class InstanceFacts:
    uuid: str
    name: str
    host: str | None
    state: str


@dataclasses.dataclass(frozen=True)
class LeftoverFacts:
    id: int
    migration_id: int | None
    host: str | None
    kind: str
    name: str
    reason: str
    present: bool | None  # secret/filter still there (None: not asked, or cannot ask)


@dataclasses.dataclass
class Snapshot:
    instances: dict[str, InstanceFacts]
    unfinished: dict[int, MigrationFacts]
    # Status of every migration a reservation or leftover names (absent: no such migration).
    statuses: dict[int, str]
    holdings: list[Holding] | None  # None: the reservation service did not answer
    holdings_error: str
    leftovers: list[LeftoverFacts]
    domains: dict[str, list[DomainInfo]]  # per host that answered
    unreachable: dict[str, str]  # host -> why it could not be asked
    grace_s: float = DEFAULT_GRACE_S


def take_snapshot(services: Services, grace_s: float = DEFAULT_GRACE_S) -> Snapshot:
    with services.db.reading() as session:
        hosts = {h.name: h.uri for h in session.scalars(sa.select(Host).order_by(Host.name))}
        instances = {i.uuid: InstanceFacts(i.uuid, i.name, i.host, i.state)
                     for i in session.scalars(sa.select(Instance))}
        rows = list(session.scalars(unfinished_migrations().order_by(Migration.id)))
        last_event = dict(session.execute(
            sa.select(Event.migration_id, sa.func.max(Event.at)).where(
                Event.migration_id.in_([m.id for m in rows])).group_by(Event.migration_id)).all())
        pending = [(m.id, m.instance_uuid, m.source_host, m.dest_host, m.status, m.logbook_id, m.flow_id,
                    m.job_id, max(filter(None, [m.created_at, m.started_at, last_event.get(m.id)])))
                   for m in rows]
        leftover_rows = list(session.scalars(sa.select(Leftover).where(
            Leftover.resolved_at.is_(None)).order_by(Leftover.id)))
    try:
        holdings, holdings_error = services.reservations.holdings(), ""
    except LivemigError as exc:
        holdings, holdings_error = None, str(exc)
    now = utcnow()
    runners = _runners(services, [(p[0], p[7]) for p in pending])
    unfinished = {}
    for mid, uuid, src, dst, status, book_id, flow_id, _job, active_at in pending:
        unfinished[mid] = MigrationFacts(mid, uuid, src, dst, status, runners[mid],
                                         _resumable(services, book_id, flow_id),
                                         max(0.0, (now - active_at).total_seconds()))
    domains: dict[str, list[DomainInfo]] = {}
    unreachable: dict[str, str] = {}
    for name, uri in hosts.items():
        try:
            domains[name] = domains_on_host(services, uri)
        except LivemigError as exc:
            unreachable[name] = str(exc) or type(exc).__name__
    leftovers = [LeftoverFacts(r.id, r.migration_id, r.host, r.kind, r.name, r.reason,
                               _present(services, hosts, unreachable, r.kind, r.host, r.name))
                 for r in leftover_rows]
    named = {h.migration_id for h in holdings or []} | {lo.migration_id for lo in leftovers if lo.migration_id}
    with services.db.reading() as session:
        statuses = dict(session.execute(sa.select(Migration.id, Migration.status).where(
            Migration.id.in_(sorted(named)))).all()) if named else {}
    statuses.update({m.id: m.status for m in unfinished.values()})
    return Snapshot(instances, unfinished, statuses, holdings, holdings_error, leftovers, domains, unreachable,
                    grace_s)


def _present(services: Services, hosts: dict[str, str], unreachable: dict[str, str], kind: str,
             host: str | None, name: str) -> bool | None:
    if kind not in ("secret", "filter") or host not in hosts or host in unreachable:
        return None
    uri = hosts[host]
    try:
        driver = services.drivers.for_uri(uri)
        return driver.secret_defined(uri, name) if kind == "secret" else driver.filter_xml(uri, name) is not None
    except LivemigError:
        return None


def _resumable(services: Services, book_id: str | None, flow_id: str | None) -> bool:
    """Its flow is persisted and has not ended (an ended flow has no step to run)."""
    if not book_id or not flow_id:
        return False
    from taskflow import exceptions as tf_exc, states as tf_states

    try:
        with contextlib.closing(services.db.taskflow_backend().get_connection()) as conn:
            flow_detail = conn.get_logbook(book_id).find(flow_id)
    except tf_exc.NotFound:
        return False
    return flow_detail is not None and flow_detail.state not in (tf_states.SUCCESS, tf_states.REVERTED,
                                                                 tf_states.FAILURE)


def _runners(services: Services, migrations: list[tuple[int, str | None]]) -> dict[int, str]:
    if not migrations:
        return {}
    if not services.settings.zookeeper_hosts:
        return {mid: RUNNING if run_lock_held(services, mid) else NOBODY for mid, _ in migrations}
    try:
        jobs = board_jobs(services)
    except LivemigError as exc:
        LOG.warning("cannot list the jobboard: %s", exc)
        return {mid: UNKNOWN for mid, _ in migrations}
    return {mid: jobs.get(mid, NOBODY) for mid, _ in migrations}


def run_lock_held(services: Services, migration_id: int) -> bool:
    """Whether a local process holds the migration's run lock (runner.run_lock).
    Asked without creating the lock file; held only for the instant of asking."""
    path = Path(services.settings.data_dir) / "runs" / f"{migration_id}.lock"
    try:
        lock = open(path)
    except FileNotFoundError:
        return False
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                return True
            raise
        fcntl.flock(lock, fcntl.LOCK_UN)
        return False


def board_jobs(services: Services) -> dict[int, str]:
    """Per migration with a job on the board: RUNNING if a conductor has
    claimed it, else WAITING (a conductor will take it)."""
    from taskflow import states as tf_states

    from livemig.errors import CoordinationUnavailable

    try:
        found: dict[int, str] = {}
        for job in services.jobboard.iterjobs(ensure_fresh=True):
            mid = (job.details or {}).get("migration_id")
            if mid is not None:
                claimed = job.state == tf_states.CLAIMED
                if claimed or found.get(int(mid)) != RUNNING:
                    found[int(mid)] = RUNNING if claimed else WAITING
        return found
    except LivemigError:
        raise
    except Exception as exc:  # noqa: BLE001 - TaskFlow wraps kazoo's errors variously
        raise CoordinationUnavailable(f"cannot list the jobboard: {exc}") from None


# -- the comparison -----------------------------------------------------------------------------------

# Repair actions (Finding.action).
RELEASE, SET_INSTANCE, DESTROY_COPY, RESUME, END, RESOLVE, RECORD, NONE = (
    "release-reservations", "set-instance-host", "destroy-copy", "resume-migration", "end-migration",
    "resolve-leftover", "record-leftover", "none")


@dataclasses.dataclass
class Finding:
    kind: str
    subject: str
    disagreement: str
    repair: str  # what --apply would do, in words ("nothing: ..." when it would not)
    safe: bool
    action: str = NONE
    # What the executor needs: ids, host names, the state it expects (JSON-able).
    params: dict[str, Any] = dataclasses.field(default_factory=dict)
    outcome: str | None = None  # after apply: "repaired: ...", "skipped: ...", "failed: ..."

    @property
    def repaired(self) -> bool:
        return bool(self.outcome and self.outcome.startswith("repaired"))

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "subject": self.subject, "disagreement": self.disagreement,
                "repair": self.repair, "safe": self.safe, "action": self.action, "params": self.params,
                "outcome": self.outcome}


def _where(snapshot: Snapshot, uuid: str) -> dict[str, DomainState]:
    return {host: d.state for host, doms in snapshot.domains.items() for d in doms
            if d.uuid == uuid and d.state in LIVE_STATES}


def _incoming(snapshot: Snapshot, uuid: str, host: str) -> bool:
    """Whether `host`'s copy of the VM is a migration's paused incoming copy."""
    return any(d.uuid == uuid and d.incoming for d in snapshot.domains.get(host, ()))


def compare(snapshot: Snapshot) -> list[Finding]:
    """Everything that disagrees, in the order repairs should run."""
    findings: list[Finding] = []
    everywhere = not snapshot.unreachable
    busy = {m.instance_uuid for m in snapshot.unfinished.values()}
    for host, why in sorted(snapshot.unreachable.items()):
        findings.append(Finding("host-unreachable", f"host {host}", f"cannot check host {host}: {why}",
                                "nothing: no repair that depends on this host until it answers", False))
    if snapshot.holdings is None:
        findings.append(Finding("reservations-unreadable", "reservations",
                                f"cannot list reservations: {snapshot.holdings_error}", "nothing", False))
    findings += _reservation_findings(snapshot)
    findings += _migration_findings(snapshot, everywhere)
    leftover_done: set[int] = set()
    # Live copies of each VM that no unfinished migration owns.
    uuids = sorted({d.uuid for doms in snapshot.domains.values() for d in doms} | set(snapshot.instances))
    for uuid in uuids:
        if uuid in busy:
            continue
        findings += _instance_findings(snapshot, uuid, everywhere, leftover_done)
        findings += _shut_off_duplicate_findings(snapshot, uuid, leftover_done)
    findings += _leftover_findings(snapshot, busy, leftover_done)
    return findings


def _reservation_findings(snapshot: Snapshot) -> list[Finding]:
    found = []
    by_migration: dict[int, list[Holding]] = {}
    for h in snapshot.holdings or []:
        by_migration.setdefault(h.migration_id, []).append(h)
    for mid, held in sorted(by_migration.items()):
        status = snapshot.statuses.get(mid)
        if status is not None and not MigrationStatus(status).finished:
            continue  # the migration's own
        where = ", ".join(sorted(h.host or f"instance {h.instance_uuid}" for h in held))
        why = f"held by migration {mid}, which is {status}" if status else \
            f"held by migration {mid}, which does not exist"
        leftovers = [lo.id for lo in snapshot.leftovers if lo.kind == "reservation" and lo.migration_id == mid]
        found.append(Finding("reservation-of-finished-migration", f"reservations of migration {mid} on {where}",
                             why, "release them", True, RELEASE, {"migration_id": mid, "leftovers": leftovers}))
    return found


def _migration_findings(snapshot: Snapshot, everywhere: bool) -> list[Finding]:
    found = []
    for m in snapshot.unfinished.values():
        subject = f"migration {m.id} ({m.source_host} -> {m.dest_host}, {m.status})"
        if m.runner == UNKNOWN:
            found.append(Finding("migration-runner-unknown", subject, "cannot tell whether anybody runs it",
                                 "nothing", False))
            continue
        if m.runner != NOBODY or m.quiet_s < snapshot.grace_s:
            continue
        if m.resumable:
            found.append(Finding("unfinished-migration-nobody-runs", subject,
                                 f"unfinished, nobody runs it, quiet for {m.quiet_s:.0f} s",
                                 "resume it from its persisted flow (it looks before every step)", True, RESUME,
                                 {"migration_id": m.id}))
            continue
        where = _where(snapshot, m.instance_uuid)
        running = [h for h, s in where.items() if s is DomainState.RUNNING]
        disagreement = "unfinished, nobody runs it, and its flow cannot be resumed (missing or ended)"
        if everywhere and len(where) == 1:
            host = next(iter(where))
            found.append(Finding("unfinished-migration-not-resumable", subject, disagreement,
                                 f"end it as error; the instance stays on {host}, where its VM runs", False, END,
                                 {"migration_id": m.id, "host": host, "state": where[host].value}))
        else:
            why = "a host does not answer" if not everywhere else \
                f"its VM runs on {', '.join(sorted(where)) or 'no host'}"
            found.append(Finding("unfinished-migration-not-resumable", subject, f"{disagreement}; {why}",
                                 "end it as error; the instance is left as it is", False, END,
                                 {"migration_id": m.id, "host": None, "running": running}))
    return found


def _instance_findings(snapshot: Snapshot, uuid: str, everywhere: bool, leftover_done: set[int]) -> list[Finding]:
    found = []
    inst = snapshot.instances.get(uuid)
    where = _where(snapshot, uuid)
    running = sorted(h for h, s in where.items() if s is DomainState.RUNNING)
    # Live copies that do not run: paused (incoming, or suspended by someone) or pmsuspended.
    held = sorted(h for h, s in where.items() if s is not DomainState.RUNNING)
    name = inst.name if inst else next((d.name for doms in snapshot.domains.values() for d in doms
                                        if d.uuid == uuid), uuid)
    subject = f"instance {name} ({uuid})"
    if len(running) > 1:
        found.append(Finding("vm-runs-on-two-hosts", subject, f"its VM runs on {' and '.join(running)}",
                             "nothing: an operator must choose which copy to keep", False))
        return found
    if len(running) == 1:
        for host in held:
            leftovers = [lo.id for lo in snapshot.leftovers if lo.kind == "domain" and lo.host == host
                         and lo.name == uuid]
            leftover_done.update(leftovers)
            if not _incoming(snapshot, uuid, host):
                # Paused by someone (an operator's suspend, an I/O error) or
                # by its guest, not a migration's incoming copy: it may hold
                # the VM's newest state, so which copy to keep is an
                # operator's choice.
                found.append(Finding("suspended-copy-of-vm-running-elsewhere", f"{subject} on {host}",
                                     f"a {where[host].value} copy on {host} (not an incoming migration) while "
                                     f"the VM runs on {running[0]}",
                                     "nothing: an operator must choose which copy to keep", False))
                continue
            # The paused incoming copy a migration left behind (its migration
            # has ended: an unfinished one's copies are its own).
            found.append(Finding("paused-copy-of-vm-running-elsewhere", f"{subject} on {host}",
                                 f"a paused incoming copy on {host} while the VM runs on {running[0]}",
                                 f"destroy the paused incoming copy on {host}", False, DESTROY_COPY,
                                 {"uuid": uuid, "host": host, "running_on": running[0], "leftovers": leftovers}))
    if inst is None:
        if where:
            host = (running or sorted(where))[0]
            noted = [lo.id for lo in snapshot.leftovers if lo.kind == "domain" and lo.name == uuid]
            if noted:
                leftover_done.update(noted)
                found.append(Finding("vm-not-in-inventory", f"{subject} on {host}",
                                     f"a VM on {host} that the inventory does not know (leftover {noted[0]})",
                                     f"nothing more: `livemig host sync {host}` adds it", False))
                return found
            found.append(Finding("vm-not-in-inventory", f"{subject} on {host}",
                                 f"a VM on {host} that the inventory does not know",
                                 f"record it as a leftover (then `livemig host sync {host}` adds it)", True, RECORD,
                                 {"uuid": uuid, "host": host, "name": name}))
        return found
    # Where the VM is, if that can be told for sure: every host answered and
    # exactly one runs it (or, none running, exactly one holds it paused or pmsuspended).
    home = running[0] if running else (held[0] if len(held) == 1 else None)
    state = INSTANCE_STATE_OF_DOMAIN[where[home]].value if home is not None else InstanceState.PAUSED.value
    if inst.state == InstanceState.MIGRATING.value:
        if not everywhere:
            found.append(Finding("instance-stuck-migrating", subject,
                                 "recorded as migrating with no unfinished migration",
                                 "nothing until every host answers", False))
        elif home is not None:
            found.append(Finding("instance-stuck-migrating", subject,
                                 f"recorded as migrating with no unfinished migration; its VM is {state} on {home}",
                                 f"record it {state} on {home}", True, SET_INSTANCE,
                                 {"uuid": uuid, "host": home, "state": state}))
        else:
            found.append(Finding("instance-stuck-migrating", subject,
                                 "recorded as migrating with no unfinished migration; its VM is on no host",
                                 f"record it {InstanceState.ERROR.value}", False, SET_INSTANCE,
                                 {"uuid": uuid, "host": None, "state": InstanceState.ERROR.value}))
        return found
    if (everywhere and not where and inst.host is not None
            and inst.state not in (InstanceState.DELETED.value, InstanceState.STOPPED.value)):
        found.append(Finding("vm-missing", subject, f"recorded {inst.state} on {inst.host}, but no host runs it",
                             "nothing: an operator decides (`livemig host sync` records it deleted)", False))
    if home is not None and home != inst.host and everywhere:
        recorded = f"on {inst.host}" if inst.host else f"{inst.state}, on no host"
        found.append(Finding("vm-on-unexpected-host", subject,
                             f"recorded {recorded}, but its VM is {state} on {home}",
                             f"record it {state} on {home} (and keep a leftover note)", True, SET_INSTANCE,
                             {"uuid": uuid, "host": home, "state": state, "was": inst.host, "note": True}))
    return found


def _shut_off_duplicate_findings(snapshot: Snapshot, uuid: str, leftover_done: set[int]) -> list[Finding]:
    """Shut-off copies of a known VM away from where it is (the one host with
    a live copy, else its recorded host): stale definitions (an old
    migration's, or defined again by hand) that a start would turn into a
    second running VM. Reported only: whether one is stale is an operator's call."""
    inst = snapshot.instances.get(uuid)
    if inst is None:
        return []
    live = sorted(_where(snapshot, uuid))
    home = live[0] if len(live) == 1 else inst.host
    found = []
    for host, doms in sorted(snapshot.domains.items()):
        if host == home or not any(d.uuid == uuid and d.state is DomainState.SHUTOFF for d in doms):
            continue
        noted = [lo.id for lo in snapshot.leftovers if lo.kind in ("duplicate-domain", "domain")
                 and lo.host == host and lo.name == uuid]
        leftover_done.update(noted)
        where = f"the VM is {_where(snapshot, uuid)[home].value} on {home}" if home in live else \
            f"the inventory records it on {home or 'no host'}"
        found.append(Finding("shut-off-duplicate", f"instance {inst.name} ({uuid}) on {host}",
                             f"a shut-off copy on {host} while {where}",
                             f"nothing: an operator decides (undefine it on {host} if it is stale)", False))
    return found


def _leftover_findings(snapshot: Snapshot, busy: set[str], done: set[int]) -> list[Finding]:
    found = []
    for lo in snapshot.leftovers:
        if lo.id in done:
            continue
        subject = f"leftover {lo.id}: {lo.kind} {lo.name}" + (f" on {lo.host}" if lo.host else "")
        why = lo.reason or "recorded by a migration"
        if lo.migration_id is not None:
            why = f"migration {lo.migration_id}: {why}"
        gone = None
        if lo.kind == "reservation" and snapshot.holdings is not None:
            held = any(h.migration_id == lo.migration_id for h in snapshot.holdings)
            status = snapshot.statuses.get(lo.migration_id) if lo.migration_id is not None else None
            if held and (status is None or MigrationStatus(status).finished):
                continue  # its reservation finding releases it, and resolves this
            gone = not held
        elif lo.kind == "domain" and lo.host in snapshot.domains:
            gone = not any(d.uuid == lo.name and d.state in LIVE_STATES for d in snapshot.domains[lo.host])
        elif lo.kind in ("secret", "filter"):
            gone = None if lo.present is None else not lo.present
        if gone and (lo.migration_id is None or snapshot.statuses.get(lo.migration_id) is None
                     or MigrationStatus(snapshot.statuses[lo.migration_id]).finished):
            found.append(Finding("leftover", subject, why, "mark it resolved: it is gone", True, RESOLVE,
                                 {"leftover": lo.id, "kind": lo.kind, "host": lo.host, "name": lo.name}))
        else:
            found.append(Finding("leftover", subject, why,
                                 "nothing: still there (or cannot check); an operator decides", False))
    return found


# -- the executor -------------------------------------------------------------------------------------

class _Skip(Exception):
    """The real state changed since the snapshot: this repair no longer applies."""


def apply_findings(services: Services, findings: list[Finding], only_safe: bool = False) -> list[Finding]:
    """Run each finding's repair (only the safe ones if asked), re-checking
    the state it depends on first; each finding's `outcome` says what
    happened. Never raises for one repair: the others still run."""
    for finding in findings:
        if finding.action == NONE:
            continue
        if only_safe and not finding.safe:
            finding.outcome = "skipped: not safe to do unattended (run `livemig reconcile --apply`)"
            continue
        try:
            finding.outcome = "repaired: " + _REPAIRS[finding.action](services, **finding.params)
        except _Skip as exc:
            finding.outcome = f"skipped: {exc}"
        except LivemigError as exc:
            finding.outcome = f"failed: {exc}"
        LOG.debug("reconcile: %s: %s", finding.subject, finding.outcome)
    return findings


def _still_finished(services: Services, migration_id: int) -> None:
    with services.db.reading() as session:
        migration = session.get(Migration, migration_id)
        if migration is not None and not MigrationStatus(migration.status).finished:
            raise _Skip(f"migration {migration_id} is {migration.status} now")


def _resolve(session, leftover_ids: list[int], resolution: str) -> None:
    for lo in session.scalars(sa.select(Leftover).where(Leftover.id.in_(leftover_ids),
                                                        Leftover.resolved_at.is_(None))):
        lo.resolved_at, lo.resolution = utcnow(), resolution


def _release(services: Services, migration_id: int, leftovers: list[int]) -> str:
    _still_finished(services, migration_id)
    services.reservations.release_migration(migration_id)
    with services.db.session() as session:
        _resolve(session, leftovers, "reservations released by reconcile")
    return f"released the reservations of migration {migration_id}"


def _busy(services: Services, uuid: str) -> bool:
    with services.db.reading() as session:
        return session.scalar(unfinished_migrations().where(Migration.instance_uuid == uuid).limit(1)) is not None


def _locate_everywhere(services: Services, uuid: str) -> dict[str, DomainState]:
    """Fresh: each host's live copy of the VM; raises _Skip if a host cannot be asked."""
    with services.db.reading() as session:
        hosts = {h.name: h.uri for h in session.scalars(sa.select(Host))}
    where = {}
    for name, uri in hosts.items():
        try:
            dom = find_on_host(services, uri, uuid)
        except LivemigError as exc:
            raise _Skip(f"cannot check host {name}: {exc}") from None
        if dom is not None and dom.state in LIVE_STATES:
            where[name] = dom.state
    return where


def _set_instance(services: Services, uuid: str, host: str | None, state: str, was: str | None = None,
                  note: bool = False) -> str:
    if _busy(services, uuid):
        raise _Skip("a migration of this instance has started")
    where = _locate_everywhere(services, uuid)
    running = [h for h, s in where.items() if s is DomainState.RUNNING]
    home = running[0] if len(running) == 1 else (next(iter(where)) if len(where) == 1 and not running else None)
    if host != home or (host is not None and len(running) > 1):
        raise _Skip(f"the VM is now on {', '.join(sorted(where)) or 'no host'}")
    if host is not None:
        state = INSTANCE_STATE_OF_DOMAIN[where[host]].value
    with services.db.session() as session:
        inst = session.get(Instance, uuid)
        if inst is None:
            raise _Skip("the instance is no longer in the inventory")
        inst.host, inst.state = host, state
        if note:
            record_leftover(session, "domain", uuid, f"found {state} on {host}; the inventory said {was}", host=host)
            _resolve(session, list(session.scalars(sa.select(Leftover.id).where(
                Leftover.kind == "domain", Leftover.name == uuid, Leftover.host == host))),
                f"inventory now records the instance on {host}")
    return f"instance recorded {state} on {host or 'no host'}"


def _destroy_copy(services: Services, uuid: str, host: str, running_on: str, leftovers: list[int]) -> str:
    if _busy(services, uuid):
        raise _Skip("a migration of this instance has started")
    with services.db.reading() as session:
        uris = {h.name: h.uri for h in session.scalars(sa.select(Host).where(Host.name.in_([host, running_on])))}
    # Immediately before destroying: the VM still runs elsewhere, the copy is still a paused one.
    try:
        elsewhere = find_on_host(services, uris[running_on], uuid)
        copy = find_on_host(services, uris[host], uuid)
    except LivemigError as exc:
        raise _Skip(f"cannot check: {exc}") from None
    if elsewhere is None or elsewhere.state is not DomainState.RUNNING:
        raise _Skip(f"the VM no longer runs on {running_on}")
    if elsewhere.migration_job_active:
        # Somebody's migration (not livemig's: its VMs are skipped) feeds the copy now.
        raise _Skip(f"a migration job on {running_on} feeds the copy on {host}")
    if copy is None or copy.state is not DomainState.PAUSED or not copy.incoming:
        now = "gone" if copy is None else copy.state.value if copy.state is not DomainState.PAUSED \
            else "paused, but not an incoming migration"
        raise _Skip(f"the copy on {host} is {now} now")
    services.drivers.for_uri(uris[host]).destroy_domain(uris[host], uuid)
    with services.db.session() as session:
        _resolve(session, leftovers, f"paused incoming copy destroyed by reconcile (the VM runs on {running_on})")
    return f"destroyed the paused incoming copy on {host}"


def _resume(services: Services, migration_id: int) -> str:
    if services.settings.zookeeper_hosts:
        from livemig.jobs import post_migration_job

        if board_jobs(services).get(migration_id) is not None:
            raise _Skip("a job for it is on the board now")
        with services.db.reading() as session:
            if get_migration(session, migration_id).status in {s.value for s in MigrationStatus if s.finished}:
                raise _Skip("it has ended")
        job = post_migration_job(services, migration_id, board=services.jobboard)
        return f"posted job {job} for a conductor to resume it"
    from livemig.errors import Conflict
    from livemig.runner import resume_migration

    try:
        resume_migration(services, migration_id)  # takes the run lock: fails if someone runs it now
    except Conflict as exc:
        raise _Skip(str(exc)) from None
    with services.db.reading() as session:
        return f"resumed; it is {get_migration(session, migration_id).status} now"


def _end(services: Services, migration_id: int, host: str | None, state: str | None = None,
         running: list[str] | None = None) -> str:
    runner = _runners(services, [(migration_id, None)])[migration_id]
    if runner != NOBODY:
        raise _Skip(f"somebody runs it now ({runner})")
    with services.db.session() as session:
        migration = get_migration(session, migration_id)
        if MigrationStatus(migration.status).finished:
            raise _Skip(f"it ended ({migration.status})")
        uuid, ends = migration.instance_uuid, (migration.source_host, migration.dest_host)
    detail = "the instance is left as it is"
    if host is not None:
        where = _locate_everywhere(services, uuid)
        if list(where) != [host]:
            raise _Skip(f"the VM is now on {', '.join(sorted(where)) or 'no host'}")
        state = where[host].value
        detail = f"the VM is {state} on {host}"
        if host not in ends:
            # Moved behind livemig's back: recorded where it is, never as gone.
            detail += f", neither its source {ends[0]} nor its destination {ends[1]}; the inventory follows it"
    with services.db.session() as session:
        # Ending it is a claim of its own: a conductor that ran it, froze and
        # wakes later holds an older epoch, and is fenced (changes nothing).
        raise_claim_epoch(session.connection(), migration_id)
        if host is not None:
            inst = session.get(Instance, uuid)
            if inst is not None:
                inst.host = host
                inst.state = INSTANCE_STATE_OF_DOMAIN[DomainState(state)].value
        add_event(session, migration_id, "note", "reconcile", "", f"ended by reconcile: {detail}")
        set_migration_status(session, migration_id, MigrationStatus.ERROR,
                             f"ended by reconcile: nobody ran it and its flow cannot be resumed; {detail}")
    return f"ended as error; {detail}"


def _resolve_leftover(services: Services, leftover: int, kind: str, host: str | None, name: str) -> str:
    with services.db.reading() as session:
        uri = session.scalar(sa.select(Host.uri).where(Host.name == host)) if host else None
    if uri is not None and kind in ("secret", "filter", "domain"):
        driver = services.drivers.for_uri(uri)
        try:
            if kind == "secret":
                present = driver.secret_defined(uri, name)
            elif kind == "filter":
                present = driver.filter_xml(uri, name) is not None
            else:
                dom = find_on_host(services, uri, name)
                present = dom is not None and dom.state in LIVE_STATES
        except LivemigError as exc:
            raise _Skip(f"cannot check host {host}: {exc}") from None
        if present:
            raise _Skip(f"the {kind} is on {host} again")
    if kind == "reservation":
        with services.db.reading() as session:
            migration_id = session.scalar(sa.select(Leftover.migration_id).where(Leftover.id == leftover))
        if any(h.migration_id == migration_id for h in services.reservations.holdings()):
            raise _Skip("the reservation is held again")
    with services.db.session() as session:
        _resolve(session, [leftover], "gone when reconcile checked")
    return f"leftover {leftover} marked resolved"


def _record(services: Services, uuid: str, host: str, name: str) -> str:
    with services.db.session() as session:
        if session.get(Instance, uuid) is not None:
            raise _Skip("the inventory knows it now")
        record_leftover(session, "domain", uuid, f"VM {name} found on {host}, not in the inventory", host=host)
    return "recorded as a leftover"


_REPAIRS = {RELEASE: _release, SET_INSTANCE: _set_instance, DESTROY_COPY: _destroy_copy, RESUME: _resume,
            END: _end, RESOLVE: _resolve_leftover, RECORD: _record}


# -- together -----------------------------------------------------------------------------------------

@dataclasses.dataclass
class Report:
    applied: bool
    findings: list[Finding]
    at: dt.datetime = dataclasses.field(default_factory=utcnow)

    @property
    def remaining(self) -> list[Finding]:
        """What still disagrees: everything in a dry run; after --apply, what was not repaired."""
        return [f for f in self.findings if not f.repaired]

    def to_dict(self) -> dict[str, Any]:
        return {"applied": self.applied, "at": self.at.isoformat(timespec="seconds") + "Z",
                "findings": [f.to_dict() for f in self.findings], "remaining": len(self.remaining)}


def reconcile(services: Services, apply: bool = False, only_safe: bool = False,
              grace_s: float = DEFAULT_GRACE_S) -> Report:
    findings = compare(take_snapshot(services, grace_s))
    if apply:
        apply_findings(services, findings, only_safe=only_safe)
    return Report(apply, findings)


def repair_safely(services: Services) -> Report:
    """What a conductor runs when it starts: the safe repairs only, logged."""
    report = reconcile(services, apply=True, only_safe=True)
    for f in report.findings:
        if f.repaired:
            LOG.info("reconcile: %s: %s", f.subject, f.outcome)
        else:
            LOG.warning("reconcile: %s: %s (%s)", f.subject, f.disagreement, f.outcome or f"would: {f.repair}")
    return report
