"""The library API. The CLI is a thin layer over these functions.

Every function takes an optional `settings` (default: `load_settings()`) and,
for mutating operations, a `context` whose roles must include "admin".
Errors are `livemig.errors.LivemigError` subclasses, each with an exit code.
"""
from __future__ import annotations

import collections
import logging
import re
import threading
import time
from typing import Any, Callable, Iterable, Mapping

import sqlalchemy as sa

from livemig import input_bounds
from livemig.config import Settings, check_migration_options, load_settings
from livemig.context import RequestContext
from livemig.disk_sharing import normalized_shared_paths
from livemig.migration_network import checked_host_address
from livemig.drivers.base import DomainInfo, driver_dict
from livemig.drivers.registry import validate_uri
from livemig.flows import keys
from livemig.errors import (
    Conflict, InstanceNotOnSource, InvalidInput, LivemigError, MigrationEnded, MigrationFailed, NoValidHost,
    PrecheckFailed, QueueTimeout, ServiceUnavailable,
)
from livemig.persistence.database import close_all as close_databases
from livemig.persistence.inventory import (
    add_event, find_instance, get_host, get_migration, record_leftover, unfinished_migrations,
)
from livemig.persistence.models import Event, Host, Instance, Migration, utcnow
from livemig.policies import InstanceFacts, MigrationPolicyOptions, load_policy_book, resolve
from livemig.prechecks import check_migration
from livemig.private_files import prepare_sqlite_database
from livemig.scheduler.inventory import snapshot as scheduler_snapshot
from livemig.scheduler.select import Refusal, Selection, choose_with_slots
from livemig.runner import create_logbook, migration_store, new_logbook_ids, resume_migration, run_migration
from livemig.services import Services, close_all as close_services, services_for
from livemig.states import INSTANCE_STATE_OF_DOMAIN, DomainState, InstanceState, MigrationStatus
from livemig.views import HostView, InstanceView, MigrationView, PolicyView, ResourceLine

LOG = logging.getLogger("livemig.api")

ProgressHook = Callable[[MigrationView], None]

_upgraded: set[str] = set()


def _services(settings: Settings | None) -> Services:
    services = services_for(settings or load_settings())
    url = services.settings.database_url
    if url not in _upgraded:
        prepare_sqlite_database(url, services.settings.admin_group)
        services.db.upgrade()
        _upgraded.add(url)
    return services


# -- hosts -------------------------------------------------------------------------------------------

# A host name is a ZooKeeper path component (no "/", never "." or ".."), a
# word in log lines and tables (no blank, newline or control character), and
# an argument on the command line (no leading "-").
HOST_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,254}")


def add_host(context: RequestContext, name: str, uri: str, zone: str = "default", *,
             max_concurrent_migrations: int = 1, cpu_allocation_ratio: float = 4.0,
             ram_allocation_ratio: float = 1.0, disk_allocation_ratio: float = 1.0,
             shared_paths: Iterable[str] = (), migration_address: str | None = None,
             migration_tls_name: str | None = None, settings: Settings | None = None) -> HostView:
    """Register a hypervisor host; it must answer (its totals are read).
    `shared_paths`: directories or block devices this host shares with the
    others (a file or block disk migrates only if both hosts share it).
    `migration_address`: where migrations to this host send their stream
    (its migration network); `migration_tls_name`: the name its TLS
    certificate carries, if not that address."""
    context.require_admin("adding a host")
    shared = normalized_shared_paths(shared_paths)
    address = checked_host_address(migration_address)
    tls_name = checked_host_address(migration_tls_name, "TLS name")
    if not HOST_NAME.fullmatch(name):
        raise InvalidInput(f"invalid host name {name!r}: letters, digits, '.', '_' and '-', at most 255, "
                           f"starting with a letter, digit or '_'")
    input_bounds.whole_number_in("max concurrent migrations", max_concurrent_migrations,
                                 input_bounds.MIGRATIONS_PER_HOST)
    for what, ratio in (("cpu", cpu_allocation_ratio), ("ram", ram_allocation_ratio),
                        ("disk", disk_allocation_ratio)):
        input_bounds.finite_number_in(f"the {what} allocation ratio", ratio, *input_bounds.ALLOCATION_RATIO)
    validate_uri(uri)
    services = _services(settings)
    with services.db.session() as session:
        if session.get(Host, name) is not None:
            raise Conflict(f"host {name} already exists")
    facts = services.drivers.for_uri(uri).host_facts(uri)
    with services.db.session() as session:
        host = Host(name=name, uri=uri, zone=zone, max_concurrent_migrations=max_concurrent_migrations,
                    cpu_allocation_ratio=cpu_allocation_ratio, ram_allocation_ratio=ram_allocation_ratio,
                    disk_allocation_ratio=disk_allocation_ratio, vcpus=facts.vcpus, memory_mb=facts.memory_mb,
                    disk_gb=facts.disk_gb, cpu_model=facts.cpu_model, hypervisor_version=facts.hypervisor_version,
                    shared_paths=shared, networks=sorted(facts.networks), last_seen=utcnow(),
                    migration_address=address, migration_tls_name=tls_name)
        session.add(host)
        session.flush()
        return HostView.of(host)


def list_hosts(settings: Settings | None = None) -> list[HostView]:
    with _services(settings).db.reading() as session:
        return [HostView.of(h) for h in session.scalars(sa.select(Host).order_by(Host.name))]


def show_host(name: str, settings: Settings | None = None) -> HostView:
    """Host NAME as the inventory holds it (HostNotFound if it is not there)."""
    with _services(settings).db.reading() as session:
        return HostView.of(get_host(session, name))


def set_host_shared_paths(context: RequestContext, name: str, shared_paths: Iterable[str],
                          settings: Settings | None = None) -> HostView:
    """Replace the paths host NAME shares with the others (empty: none).
    Migrations already past their precheck keep the decision made then."""
    context.require_admin("changing a host's shared paths")
    shared = normalized_shared_paths(shared_paths)
    with _services(settings).db.session() as session:
        host = get_host(session, name)
        host.shared_paths = shared
        return HostView.of(host)


def set_host_migration_network(context: RequestContext, name: str, migration_address: str | None,
                               migration_tls_name: str | None = None,
                               settings: Settings | None = None) -> HostView:
    """Set where migrations to host NAME send their stream (None: the
    address of its URI) and the name its TLS certificate carries (None: the
    migration address). A migration already running keeps its stream."""
    context.require_admin("changing a host's migration network")
    address = checked_host_address(migration_address)
    tls_name = checked_host_address(migration_tls_name, "TLS name")
    with _services(settings).db.session() as session:
        host = get_host(session, name)
        host.migration_address = address
        host.migration_tls_name = tls_name
        return HostView.of(host)


def set_host_enabled(context: RequestContext, name: str, enabled: bool, reason: str | None = None,
                     settings: Settings | None = None) -> HostView:
    context.require_admin("enabling or disabling a host")
    with _services(settings).db.session() as session:
        host = get_host(session, name)
        host.enabled = enabled
        host.disabled_reason = None if enabled else reason
        return HostView.of(host)


def sync_hosts(context: RequestContext, name: str | None = None,
               settings: Settings | None = None) -> dict[str, int]:
    """Discover the domains on one or every host and upsert them as instances.

    Returns the number of instances seen per host. Instances in an unfinished
    migration are left alone: the flow owns them. A uuid found on two hosts
    is a conflict, never settled by the order hosts are listed in: the
    instance keeps its current host (if that host still has it), each other
    copy is recorded as a leftover for `reconcile` and logged."""
    context.require_admin("syncing hosts")
    services = _services(settings)
    with services.db.session() as session:
        hosts = [get_host(session, name)] if name else list(session.scalars(sa.select(Host).order_by(Host.name)))
        targets = [(h.name, h.uri) for h in hosts]
    listed: dict[str, list[DomainInfo]] = {}
    for host_name, uri in targets:
        driver = services.drivers.for_uri(uri)
        facts = driver.host_facts(uri)
        listed[host_name] = driver.list_domains(uri)
        with services.db.session() as session:
            host = get_host(session, host_name)
            host.vcpus, host.memory_mb, host.disk_gb = facts.vcpus, facts.memory_mb, facts.disk_gb
            host.cpu_model, host.hypervisor_version = facts.cpu_model, facts.hypervisor_version
            host.networks = sorted(facts.networks)
            host.last_seen = utcnow()
    where: dict[str, dict[str, DomainState | None]] = collections.defaultdict(dict)
    for host_name, domains in listed.items():
        for dom in domains:
            where[dom.uuid][host_name] = dom.state
    seen: dict[str, int] = {}
    with services.db.session() as session:
        busy = {m.instance_uuid for m in session.scalars(unfinished_migrations())}
        conflicts = _domains_on_two_hosts(services, session, where, busy)
        for host_name, domains in listed.items():
            found = set()
            for dom in domains:
                if dom.uuid in busy:
                    continue
                found.add(dom.uuid)
                if dom.uuid not in conflicts or conflicts[dom.uuid] == host_name:
                    _upsert_instance(session, host_name, dom)
            for inst in session.scalars(sa.select(Instance).where(Instance.host == host_name)):
                if inst.uuid not in found and inst.uuid not in busy and inst.uuid not in conflicts \
                        and inst.state != InstanceState.DELETED.value:
                    inst.state = InstanceState.DELETED.value
                    inst.host = None
            seen[host_name] = len(found)
    return seen


def _domains_on_two_hosts(services: Services, session, where: dict[str, dict[str, DomainState | None]],
                          busy: set[str]) -> dict[str, str | None]:
    """uuid -> the host the inventory keeps it on (None: marked `error`) for
    each domain that more than one host holds, including the instance's
    recorded host when only the others were synced. One running copy whose
    duplicates are all shut off wins (the shut-off ones are stale: a copy
    defined again elsewhere, an old migration's leftover); otherwise the
    recorded host keeps it if it still has it, else nobody does."""
    conflicts: dict[str, str | None] = {}
    for uuid, seen_on in where.items():
        if uuid in busy:
            continue
        inst = session.get(Instance, uuid)
        current = inst.host if inst is not None else None
        holders = dict(seen_on)
        if current and current not in holders:
            present, state = _domain_on_host(services, session, current, uuid)
            if present:
                holders[current] = state
        if len(holders) < 2:
            continue
        running = [h for h, state in holders.items() if state is DomainState.RUNNING]
        if len(running) == 1 and all(state is DomainState.SHUTOFF for h, state in holders.items()
                                     if h != running[0]):
            keep: str | None = running[0]
        else:
            keep = current if current in holders else None
        for host, state in holders.items():
            if host != keep:
                others = ", ".join(f"{h} ({_state_name(s)})" for h, s in holders.items() if h != host)
                reason = (f"domain {uuid} is {_state_name(state)} here and also on {others}; "
                          f"the inventory keeps it on {keep or 'no host (marked error)'}")
                record_leftover(session, "duplicate-domain", uuid, reason, host=host)
        if inst is not None and keep is None:
            inst.state = InstanceState.ERROR.value
        LOG.warning("instance %s is on %s; the inventory keeps it on %s (recorded for reconcile)", uuid,
                    " and ".join(f"{h} ({_state_name(s)})" for h, s in holders.items()),
                    keep or "no host, marked error")
        conflicts[uuid] = keep
    return conflicts


def _state_name(state: DomainState | None) -> str:
    return "unknown" if state is None else state.value


def _domain_on_host(services: Services, session, host_name: str, uuid: str) -> tuple[bool, DomainState | None]:
    """(present, its state); a host that cannot be asked counts as present, in
    an unknown state (None): it may still run the domain."""
    host = session.get(Host, host_name)
    if host is None:
        return False, None
    try:
        dom = services.drivers.for_uri(host.uri).find_domain(host.uri, uuid)
    except LivemigError:
        return True, None
    return dom is not None, dom.state if dom is not None else None


def _upsert_instance(session, host_name: str, dom: DomainInfo) -> None:
    inst = session.get(Instance, dom.uuid)
    if inst is None:
        inst = Instance(uuid=dom.uuid, name=dom.name, state=INSTANCE_STATE_OF_DOMAIN[dom.state].value)
        session.add(inst)
    inst.name, inst.project, inst.host = dom.name, dom.project, host_name
    inst.state = INSTANCE_STATE_OF_DOMAIN[dom.state].value
    inst.vcpus, inst.memory_mb, inst.disk_gb, inst.cpu_model = dom.vcpus, dom.memory_mb, dom.disk_gb, dom.cpu_model
    inst.group = dom.group
    inst.labels = dict(dom.labels)
    inst.volumes = [driver_dict(d) for d in dom.disks]
    inst.interfaces = [driver_dict(i) for i in dom.interfaces]


# -- instances and resources -------------------------------------------------------------------------

def list_instances(host: str | None = None, include_deleted: bool = False,
                   settings: Settings | None = None) -> list[InstanceView]:
    with _services(settings).db.reading() as session:
        query = sa.select(Instance).order_by(Instance.name)
        if host:
            get_host(session, host)
            query = query.where(Instance.host == host)
        if not include_deleted:
            query = query.where(Instance.state != InstanceState.DELETED.value)
        return [InstanceView.of(i) for i in session.scalars(query)]


# -- migration policies ------------------------------------------------------------------------------

def list_policies(settings: Settings | None = None) -> list[PolicyView]:
    """The migration policies (built-in and from the settings file), each
    with the rules that choose it and the instances it applies to now."""
    book = load_policy_book()
    chosen: dict[str, list[str]] = collections.defaultdict(list)
    for inst in list_instances(settings=settings):
        policy, _rule = book.policy_for(InstanceFacts(inst.name, inst.project, inst.labels))
        chosen[policy.name].append(inst.name)
    return [PolicyView(p.name, p.source, p.description, dict(p.options),
                       MigrationPolicyOptions(**p.options).to_dict(),
                       [{"name": r.name, "criteria": r.describe()} for r in book.rules if r.policy == p.name],
                       chosen.get(p.name, []))
            for p in sorted(book.policies.values(), key=lambda p: p.name)]


def show_policy(name: str, settings: Settings | None = None) -> PolicyView:
    load_policy_book().get(name)  # an unknown name: InvalidInput, before the inventory is read
    return next(view for view in list_policies(settings) if view.name == name)


def host_resources(host: str | None = None, window_s: float = 3600.0,
                   settings: Settings | None = None) -> list[ResourceLine]:
    """Per host: its totals, what is used (allocated, and measured over the
    last `window_s` seconds), then the usage of each project."""
    from livemig.load.fleet import host_loads, instance_loads, window_start

    input_bounds.finite_number_in("the window", window_s, 1.0, 366 * 86400.0)
    since, until = window_start(window_s)
    lines: list[ResourceLine] = []
    with _services(settings).db.reading() as session:
        hosts = [get_host(session, host)] if host else list(session.scalars(sa.select(Host).order_by(Host.name)))
        measured_hosts = host_loads(session, since, until)
        measured = instance_loads(session, since, until)
        for h in hosts:
            lines.append(ResourceLine("TOTAL", h.name, "", h.vcpus, h.memory_mb, h.disk_gb))
            per_project: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0, 0])
            loads: dict[str, list] = collections.defaultdict(list)
            for inst in session.scalars(sa.select(Instance).where(
                    Instance.host == h.name, Instance.state != InstanceState.DELETED.value)):
                usage = per_project[inst.project]
                usage[0] += inst.vcpus
                usage[1] += inst.memory_mb
                usage[2] += inst.disk_gb
                if inst.uuid in measured:
                    loads[inst.project].append(measured[inst.uuid])
            used = [sum(u[i] for u in per_project.values()) for i in range(3)]
            lines.append(ResourceLine("USED", h.name, "", *used, **_measured_columns([measured_hosts[h.name]]
                                                                                     if h.name in measured_hosts else [])))
            for project in sorted(per_project):
                lines.append(ResourceLine("NODE", h.name, project, *per_project[project],
                                          **_measured_columns(loads[project])))
    return lines


def _measured_columns(loads: list) -> dict[str, Any]:
    """A resource line's measured columns: the sums of these loads' means and
    peaks, rounded for reading; nothing when there are none."""
    if not loads:
        return {}
    return {"cpu_mean": round(sum(x.cpu_mean for x in loads), 3), "cpu_peak": round(sum(x.cpu_peak for x in loads), 3),
            "memory_mean_mb": round(sum(x.memory_mean_mb for x in loads), 1),
            "memory_peak_mb": round(sum(x.memory_peak_mb for x in loads), 1),
            "samples": sum(x.samples for x in loads)}


def sample_load(context: RequestContext, name: str | None = None, settle_s: float = 1.0,
                settings: Settings | None = None):
    """One load sampling pass over one host or every host (livemig.load.sampler):
    two readings `settle_s` apart; returns its PassReport."""
    from livemig.load.sampler import Sampler

    context.require_admin("sampling load")
    input_bounds.finite_number_in("the settle time", settle_s, 0.1, 600.0)
    services = _services(settings)
    if name is not None:
        with services.db.reading() as session:
            get_host(session, name)
    return Sampler(services.db, services.drivers, services.settings).sample(
        hosts=None if name is None else [name], settle_s=settle_s)


# -- migrations --------------------------------------------------------------------------------------

def list_migrations(status: str | None = None, instance: str | None = None, limit: int = 50,
                    settings: Settings | None = None) -> list[MigrationView]:
    if status is not None and status not in {s.value for s in MigrationStatus}:
        raise InvalidInput(f"unknown status {status!r}")
    input_bounds.whole_number_in("the limit", limit, input_bounds.LIST_LIMIT)
    with _services(settings).db.reading() as session:
        query = sa.select(Migration).order_by(Migration.id.desc()).limit(limit)
        if status:
            query = query.where(Migration.status == status)
        if instance:
            query = query.where(sa.or_(Migration.instance_uuid == instance, Migration.instance_name == instance))
        return [MigrationView.of(m) for m in session.scalars(query)]


def _migration_row(services: Services, migration_id: int) -> MigrationView:
    with services.db.reading() as session:
        return MigrationView.of(get_migration(session, migration_id))


def show_migration(migration_id: int, settings: Settings | None = None) -> MigrationView:
    with _services(settings).db.reading() as session:
        migration = get_migration(session, migration_id)
        events = list(session.scalars(sa.select(Event).where(Event.migration_id == migration_id).order_by(Event.id)))
        return MigrationView.of(migration, events)


def create_migration(context: RequestContext, instance: str, source: str | None = None, dest: str | None = None,
                     settings: Settings | None = None, queue_timeout_s: float | None = None,
                     options: Mapping[str, Any] | None = None, **choice: Any) -> MigrationView:
    """Check the request and record it (status `queued`) with its persisted
    flow; nothing runs yet. `choice`: how the destination is chosen, as for
    `migrate` (to, weigher, candidates, retry_elsewhere, operation_id). Bad
    input raises and records nothing."""
    services = _services(settings)
    migration_id, _ids, _hosts = _record_migration(context, services, instance, source, dest,
                                                   _with_queue_timeout(options, queue_timeout_s), **choice)
    return show_migration(migration_id, settings=services.settings)


def _with_queue_timeout(options: Mapping[str, Any] | None, queue_timeout_s: float | None) -> dict[str, Any]:
    merged = dict(options or {})
    if queue_timeout_s is not None:
        merged["queue_timeout_s"] = queue_timeout_s
    return merged


def choose_destination(instance: str, to: str | None = None, *, source: str | None = None,
                       exclude: Iterable[str] = (), weigher: str | None = None,
                       settings: Settings | None = None) -> Selection:
    """Where `migrate` would move INSTANCE (name or uuid) now, changing
    nothing: the scheduler's best host that also passes the precheck (the
    chosen), the other acceptable hosts after it, and for every other host
    the first filter (or "precheck") that refused it. `to` limits the choice
    to that host; `source`, if given, must be the instance's host. A host
    whose migration slots are busy is chosen only if no host has one free
    (its migration would queue)."""
    services = _services(settings)
    with services.db.reading() as session:
        inst = find_instance(session, instance)
        if to is not None:
            get_host(session, to)
        source = _source_of(inst, source)
        return _schedule(session, services, inst, source, to, weigher or services.settings.weigher, exclude)


def _source_of(inst: Instance, source: str | None) -> str:
    """The instance's host, which a given SOURCE must be."""
    if inst.host is None:
        raise PrecheckFailed(f"instance {inst.name} runs on no host")
    if source is not None and inst.host != source:
        raise PrecheckFailed(f"instance {inst.name} runs on {inst.host}, not on {source} "
                             f"(leave the source out and livemig uses the inventory's)")
    return inst.host


def _schedule(session, services: Services, inst: Instance, source: str, to: str | None, weigher: str,
              exclude: Iterable[str] = (), candidates: Iterable[str] | None = None,
              copy_storage: str = "off") -> Selection:
    """The scheduler's selection (among `candidates`, or only `to`), its
    ranked hosts prechecked in order until one passes: that one is chosen,
    those before it join the refusals. So a host the scheduler chooses has
    passed the precheck too."""
    if inst.state != InstanceState.RUNNING.value:
        raise PrecheckFailed(f"instance {inst.name} is {inst.state}, not running")
    selection = choose_with_slots(scheduler_snapshot(session), inst.uuid, weigher, exclude=exclude,
                                  candidates=[to] if to is not None else candidates, copy_storage=copy_storage)
    refused = list(selection.refusals)
    for index, host in enumerate(selection.ranked):
        try:
            check_migration(session, services.drivers, inst.uuid, source, host, copy_storage=copy_storage)
        except (Conflict, InvalidInput, InstanceNotOnSource):
            raise  # about the instance, not the host: no other host helps
        except (PrecheckFailed, ServiceUnavailable) as exc:
            refused.append(Refusal(host, "precheck", str(exc)))
            continue
        return Selection(inst.uuid, host, selection.ranked[index:], tuple(sorted(refused, key=_by_host)))
    return Selection(inst.uuid, None, (), tuple(sorted(refused, key=_by_host)))


def _by_host(refusal: Refusal) -> str:
    return refusal.host


def no_valid_host(name: str, selection: Selection) -> NoValidHost:
    return NoValidHost(f"no host can take {name}: {'; '.join(selection.explain()) or 'no host in the inventory'}")


def _record_migration(context: RequestContext, services: Services, instance: str, source: str | None,
                      dest: str | None, options: Mapping[str, Any], *, to: str | None = None,
                      weigher: str | None = None, candidates: Iterable[str] | None = None,
                      retry_elsewhere: bool = False, operation_id: int | None = None,
                      on_recorded: Callable[[Any, int], None] | None = None, policy: str | None = None,
                      ) -> tuple[int, tuple[str, str], tuple[str, str]]:
    """The migration row and its logbook; returns the id, the (logbook, flow)
    uuids and the (source, destination). `options`: the migration's own
    (livemig.policies.options), over `policy` (else the policy the rules
    choose for the instance); `to`, `weigher`, `candidates`,
    `retry_elsewhere` and `operation_id` as for `migrate`.
    `on_recorded(session, migration_id)` runs in the same transaction (an
    operation marks its move submitted there: never submitted twice)."""
    context.require_admin("live migration")
    options = check_migration_options(options)
    book = load_policy_book()
    if policy is not None:
        book.get(policy)  # an unknown name is refused before anything is opened
    weigher = weigher or services.settings.weigher
    if dest is not None and to is not None and dest != to:
        raise InvalidInput(f"two destinations given ({dest} and --to {to})")
    candidates = None if candidates is None else sorted(set(candidates))
    book_id, flow_id = new_logbook_ids()
    with services.db.session() as session:
        inst = find_instance(session, instance)
        resolved = resolve(book, InstanceFacts(inst.name, inst.project, dict(inst.labels or {})), policy, options)
        options = resolved.record()
        for host in ([to] if to is not None else []) + (candidates or []):
            get_host(session, host)
        if dest is None or source is None:
            source = _source_of(inst, source)
        # else (SRC INSTANCE DST): the precheck says if SOURCE is not the instance's host.
        scheduled = (dest is None and to is None) or (dest is not None and retry_elsewhere)
        how = "requested destination"
        refused: list[str] = []
        if dest is None or retry_elsewhere:
            selection = _schedule(session, services, inst, source, to or dest, weigher, candidates=candidates,
                                  copy_storage=options.get("copy_storage", "off"))
            if selection.chosen is None:
                raise no_valid_host(inst.name, selection)
            chose = dest is None and to is None
            dest = selection.chosen
            # The hosts refused on the way are worth the trail only when livemig chose.
            refused = selection.explain() if chose else []
            how = (f"chosen by the scheduler ({weigher})" if chose
                   else "planned, accepted by the scheduler" if retry_elsewhere
                   else f"--to {to}, accepted by the scheduler")
        else:
            check_migration(session, services.drivers, inst.uuid, source, dest,
                            copy_storage=options.get("copy_storage", "off"))
        migration = Migration(instance_uuid=inst.uuid, instance_name=inst.name, source_host=source,
                              dest_host=dest, status=MigrationStatus.QUEUED.value, requested_by=context.user,
                              logbook_id=book_id, flow_id=flow_id, options=options, scheduled=scheduled,
                              operation_id=operation_id, policy=resolved.policy)
        session.add(migration)
        session.flush()
        detail = f" ({how}" + (f"; refused: {'; '.join(refused)}" if refused else "") + ")"
        chose_policy = f" by rule {resolved.rule}" if resolved.rule else "" if policy else " (no rule matched)"
        detail += f"; policy {resolved.policy}{chose_policy}"
        add_event(session, migration.id, "status", "migration", MigrationStatus.QUEUED.value,
                  f"requested by {context.user}: {inst.name} {source} -> {dest}{detail}")
        migration_id, instance_uuid = migration.id, inst.uuid
        store = migration_store(migration_id, instance_uuid, source, dest)
        if candidates is not None and scheduled:
            store[keys.CANDIDATE_HOSTS] = candidates  # retries choose among these too
        create_logbook(services, migration_id, store, book_id, flow_id, session.connection(), options)
        if on_recorded is not None:
            on_recorded(session, migration_id)
    return migration_id, (book_id, flow_id), (source, dest)


def migrate(context: RequestContext, instance: str, source: str | None = None, dest: str | None = None, *,
            to: str | None = None, wait: bool = True, queue: bool = True, queue_timeout_s: float | None = None,
            settings: Settings | None = None, progress: ProgressHook | None = None,
            options: Mapping[str, Any] | None = None, weigher: str | None = None,
            candidates: Iterable[str] | None = None, retry_elsewhere: bool = False,
            operation_id: int | None = None, policy: str | None = None) -> MigrationView:
    """Live-migrate INSTANCE (name or uuid) off the host it runs on.

    `source`, if given, must be the inventory's host of the instance. With
    `dest` (or `to`, the same, checked by the scheduler's filters first) the
    migration goes there and nowhere else; without either, livemig's
    scheduler chooses (`weigher`: "spread" or "pack", default the setting;
    among `candidates` only, if given), and a destination that fails before
    switchover is replaced by the next best host (among `candidates`), up to
    the max_retries setting. `retry_elsewhere` with `dest`: the destination
    is livemig's own plan (a fleet operation's), checked by the scheduler's
    filters and retried like a chosen one. `operation_id` links the
    migration to the fleet operation it is a move of. The old positional
    form migrate(context, instance, source, dest) still works.

    Without ZooKeeper the flow runs in this process. With ZooKeeper it is
    posted as a job for the conductors and, if `wait`, followed to its end
    (otherwise the queued migration is returned). A migration waits in
    `queued` for busy hosts up to `queue_timeout_s` (default: the setting);
    with `queue=False` it fails at once if they are busy. `policy`: the
    named migration policy (livemig.policies; default: the one the policy
    rules choose for the instance, else `default`); `options`: this
    migration's own choices (livemig.policies.options: max_downtime_ms,
    bandwidth_mib_s, auto_converge, post_copy, ...) over the policy's; the
    rest are the runner's settings. Both are recorded with the migration.
    Returns the completed migration; raises MigrationFailed if it failed,
    NoValidHost (saying per host why) if no host may take it."""
    # Before anything is opened: a refused caller leaves no trace (not even
    # a new, empty SQLite database).
    context.require_admin("live migration")
    if not queue:
        queue_timeout_s = 0.0
    services = _services(settings)
    options = _with_queue_timeout(options, queue_timeout_s)
    choice = {"to": to, "weigher": weigher, "candidates": candidates, "retry_elsewhere": retry_elsewhere,
              "operation_id": operation_id, "policy": policy}
    if services.settings.zookeeper_hosts:
        from livemig.jobs import post_migration_job

        # Reach the board before recording anything: unreachable means unchanged.
        board = services.jobboard
        # Posted jobs queue on the board; their hosts may be busy for a while.
        migration_id, ids, hosts = _record_migration(context, services, instance, source, dest, options, **choice)
        post_migration_job(services, migration_id, board=board, logbook_ids=ids, hosts=hosts)
        if not wait:
            return show_migration(migration_id, settings=services.settings)
        return _follow(services, migration_id, progress, runner=None, unclaimed_epoch=0)
    migration_id, _ids, _hosts = _record_migration(context, services, instance, source, dest, options, **choice)
    return _follow(services, migration_id, progress, runner=lambda: run_migration(services, migration_id))


def resume(context: RequestContext, migration_id: int, settings: Settings | None = None,
           progress: ProgressHook | None = None) -> MigrationView:
    """Resume an interrupted migration from its persisted flow, in this process."""
    context.require_admin("resuming a migration")
    services = _services(settings)
    if services.settings.zookeeper_hosts:
        from livemig.jobs import job_on_board, post_migration_job

        with services.db.session() as session:
            migration = get_migration(session, migration_id)
            if MigrationStatus(migration.status).finished:
                raise MigrationEnded(f"migration {migration_id} already ended ({migration.status}); an outcome "
                                     f"is final, so nothing of it runs again", migration_id, migration.status)
            job_id, epoch = migration.job_id, migration.claim_epoch
        # A job still on the board is resumed by a conductor once its claim
        # lapses; otherwise hand the persisted flow to the board again.
        if not job_on_board(services, job_id):
            post_migration_job(services, migration_id, board=services.jobboard)
        return _follow(services, migration_id, progress, runner=None, unclaimed_epoch=epoch)
    return _follow(services, migration_id, progress, runner=lambda: resume_migration(services, migration_id))


def abort(context: RequestContext, migration_id: int, settings: Settings | None = None) -> MigrationView:
    """Ask a migration to stop. A running hypervisor job is aborted at once
    (the VM stays on its source) and the flow rolls back."""
    context.require_admin("aborting a migration")
    services = _services(settings)
    with services.db.session() as session:
        migration = get_migration(session, migration_id)
        if MigrationStatus(migration.status).finished:
            raise Conflict(f"migration {migration_id} already ended ({migration.status})")
        if MigrationStatus(migration.status) in (MigrationStatus.POST_MIGRATING,):
            raise Conflict(f"migration {migration_id} is past the point of no return (the VM has moved)")
        if migration.phase == "post-copy":
            raise Conflict(f"migration {migration_id} switched to post-copy: the VM runs on {migration.dest_host} "
                           f"now and the migration cannot be aborted")
        migration.abort_requested = True
        add_event(session, migration_id, "note", "abort", "", f"abort requested by {context.user}")
        source_uri = get_host(session, migration.source_host).uri
        instance_uuid = migration.instance_uuid
    # Abort the hypervisor job directly too: it works even if the controller is dead.
    services.drivers.for_uri(source_uri).abort_migration(source_uri, instance_uuid)
    return show_migration(migration_id, settings=services.settings)


def force_complete(context: RequestContext, migration_id: int, settings: Settings | None = None) -> MigrationView:
    """Ask a running migration to complete now, as Nova does: it switches to
    post-copy if its policy allows post-copy, else the guest is paused until
    the copy finishes. Recorded on the migration: the controller that runs
    it (whichever) acts on it at its next poll."""
    context.require_admin("forcing a migration to complete")
    services = _services(settings)
    with services.db.session() as session:
        migration = get_migration(session, migration_id)
        status = MigrationStatus(migration.status)
        if status.finished:
            raise Conflict(f"migration {migration_id} already ended ({migration.status})")
        if status is not MigrationStatus.RUNNING:
            raise Conflict(f"migration {migration_id} is {migration.status}: only a running migration can be "
                           f"forced to complete")
        if not migration.force_complete_requested:
            migration.force_complete_requested = True
            allowed = MigrationPolicyOptions.from_mapping(migration.options or {}).post_copy_allowed
            how = "switch to post-copy" if allowed else "pause the guest until the copy completes"
            add_event(session, migration_id, "note", "force-complete", "",
                      f"force-complete requested by {context.user} ({how})")
    return show_migration(migration_id, settings=services.settings)


def _claim_epoch(services: Services, migration_id: int) -> int:
    with services.db.reading() as session:
        return session.scalar(sa.select(Migration.claim_epoch).where(Migration.id == migration_id)) or 0


def _follow(services: Services, migration_id: int, progress: ProgressHook | None,
            runner: Callable[[], None] | None, unclaimed_epoch: int | None = None) -> MigrationView:
    """Run (if a runner is given) while reporting progress; then the outcome.
    A posted job (`unclaimed_epoch`: the migration's claim epoch when it was
    posted) that no conductor claims within the setting's deadline raises
    QueueTimeout; it stays queued on the board."""
    errors: list[BaseException] = []
    claim_deadline = None
    if runner is None and unclaimed_epoch is not None:
        claim_deadline = time.monotonic() + services.settings.unclaimed_job_timeout_s

    def target() -> None:
        try:
            runner()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            errors.append(exc)

    thread = None
    if runner is not None:
        thread = threading.Thread(target=target, name=f"migration-{migration_id}", daemon=True)
        thread.start()
    # Light polling (the row only, twice a second): on a busy hypervisor host
    # every CPU cycle taken from QEMU lengthens the switchover.
    while True:
        if thread is not None:
            thread.join(0.5)
        view = _migration_row(services, migration_id)
        if progress is not None:
            progress(view)
        if thread is not None:
            if not thread.is_alive():
                break
        elif MigrationStatus(view.status).finished:
            break
        else:
            if claim_deadline is not None:
                if _claim_epoch(services, migration_id) != unclaimed_epoch:
                    claim_deadline = None  # claimed: followed to its end, however long it takes
                elif time.monotonic() >= claim_deadline:
                    timeout = services.settings.unclaimed_job_timeout_s
                    raise QueueTimeout(
                        f"no conductor has claimed migration {migration_id} in {timeout:g} s; is one running? "
                        f"(it stays queued on the board and runs when a conductor takes it; "
                        f"`livemig migration abort {migration_id}` cancels it)")
            time.sleep(0.5)
    if errors:
        raise errors[0]
    view = show_migration(migration_id, settings=services.settings)
    if progress is not None:
        progress(view)
    if view.status != MigrationStatus.COMPLETED.value:
        raise MigrationFailed(f"migration {view.id} {view.status}: {view.error_reason or 'no reason recorded'}",
                              migration_id=view.id, status=view.status)
    return view


# -- the process -------------------------------------------------------------------------------------

def close() -> None:
    """Close what livemig keeps open in this process between calls: the
    jobboard `migrate(..., wait=False)` posts on with its ZooKeeper session,
    hypervisor connections and database pools. Call it when no other call
    is in progress (in any thread), before the process ends or its ZooKeeper
    goes away; a later call opens them again."""
    close_services()
    close_databases()


# -- reconcile ---------------------------------------------------------------------------------------

def reconcile(context: RequestContext, apply: bool = False, *, grace_s: float | None = None,
              settings: Settings | None = None):
    """Compare the inventory, unfinished migrations, jobs, reservations and
    leftovers with what each host runs; returns a reconciliation.Report of
    findings. Changes nothing unless `apply` (admin only), which runs each
    finding's repair after re-checking the real state (see
    livemig.reconciliation for the rules)."""
    from livemig import reconciliation

    if apply:
        context.require_admin("reconciling (--apply)")
    if grace_s is not None:
        input_bounds.finite_number_in("the grace period (seconds)", grace_s, 0.0)
    services = _services(settings)
    return reconciliation.reconcile(services, apply=apply,
                                    grace_s=reconciliation.DEFAULT_GRACE_S if grace_s is None else grace_s)
