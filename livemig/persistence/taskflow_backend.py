"""TaskFlow's SQL persistence backend on livemig's own engine, with fewer and
cheaper writes per atom state change.

Imported only when a flow is persisted or loaded (see Database.taskflow_backend)."""
from __future__ import annotations

import copy
import threading
from collections import OrderedDict

from livemig import lazy

# TaskFlow's backend imports its schema-migration module, and with it alembic
# and every SQLAlchemy dialect (~100 ms of each command's start), though only
# a schema upgrade uses it.
lazy.defer("taskflow.persistence.backends.sqlalchemy.migration")

import sqlalchemy as sa  # noqa: E402
from sqlalchemy import exc as sa_exc  # noqa: E402
from taskflow import exceptions as tf_exc  # noqa: E402
from taskflow.persistence import models as tf_models  # noqa: E402
from taskflow.persistence.backends import impl_sqlalchemy  # noqa: E402

from livemig.fencing import Claim, current_claim, epoch_matches, fence_params, stale  # noqa: E402
from livemig.persistence.inventory import (  # noqa: E402
    event_row, insert_events, update_with_audit_event, with_audit_event,
)
from livemig.states import AUDITED_ATOM_STATES, AUDITED_FLOW_STATES  # noqa: E402


def _by_columns(rows: list[dict]) -> list[list[dict]]:
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(sorted(row)), []).append(row)
    return list(groups.values())


class LivemigConnection(impl_sqlalchemy.Connection):
    """TaskFlow's SQL connection, with fewer and cheaper writes, and the
    audit trail written in the same transaction as the state it records.

    TaskFlow reads a row before writing it, merges the new detail into it and
    writes every column back. Its merge takes every field from the new
    detail, so the read changes nothing: the written row is the new detail
    either way. Its UPDATE is also built anew (and its SQL cache key
    computed) per write; here each statement is compiled once.

    Steps of a tracked flow (see `track`) get a "step" event per audited
    state change, and the flow a "flow" event, inside the transaction that
    saves the state: the trail and TaskFlow's record cannot disagree, and a
    migration costs one transaction per state change instead of two."""

    # Atoms whose last written values are remembered (see _same_but_progress).
    REMEMBERED_ATOMS = 4096

    def __init__(self, backend, upgrade_lock):
        super().__init__(backend, upgrade_lock)
        from livemig.persistence.database import without_transaction_blocks

        atoms, flows = self._tables.atomdetails, self._tables.flowdetails
        # The SET clause comes from the parameters' keys (the detail's fields).
        self._update_atom = atoms.update().where(atoms.c.uuid == sa.bindparam("match_uuid"))
        self._update_flow = flows.update().where(flows.c.uuid == sa.bindparam("match_uuid"))
        # Written by a thread that runs its migration under a claim: only
        # while that claim is current (see livemig.fencing), in the statement.
        self._update_atom_fenced = self._update_atom.where(epoch_matches())
        self._update_flow_fenced = self._update_flow.where(epoch_matches())
        self._insert_atom = atoms.insert()
        self._atom_states = sa.select(atoms.c.uuid, atoms.c.state).where(atoms.c.parent_uuid == sa.bindparam("flow"))
        # On PostgreSQL an atom's state and its audit event go out as one
        # statement (a data-modifying WITH), outside any transaction block:
        # one round trip where BEGIN, UPDATE, INSERT and COMMIT took four, for
        # the writes that are most of a migration's database work. SQLite
        # takes the two statements in a transaction.
        self._single_statement = self._engine.dialect.name == "postgresql"
        self._updates_with_event: dict[tuple[tuple[str, ...], bool], sa.Insert] = {}
        self._autocommit = without_transaction_blocks(self._engine)
        self._written: OrderedDict[str, dict] = OrderedDict()
        self._lock = threading.Lock()
        self._tracked: dict[str, dict] = {}  # flow uuid -> migration id, last flow state
        self._atom_flow: dict[str, str] = {}  # atom uuid -> flow uuid, for tracked flows

    # -- the audit trail ----------------------------------------------------------------------------

    def track(self, flow_uuid: str, migration_id: int, flow_state: str | None) -> None:
        """Record this flow's state changes as migration `migration_id`'s events."""
        with self._lock:
            self._tracked[flow_uuid] = {"migration_id": migration_id, "state": flow_state}

    def untrack(self, flow_uuid: str) -> None:
        with self._lock:
            self._tracked.pop(flow_uuid, None)
            for atom in [a for a, f in self._atom_flow.items() if f == flow_uuid]:
                del self._atom_flow[atom]

    def _atom_event(self, atom_detail, previous_state: str | None) -> dict | None:
        with self._lock:
            flow = self._atom_flow.get(atom_detail.uuid)
            tracked = self._tracked.get(flow) if flow else None
        state = atom_detail.state
        if tracked is None or state == previous_state or state not in AUDITED_ATOM_STATES:
            return None
        message = ""
        failure = atom_detail.revert_failure if state == "REVERT_FAILURE" else atom_detail.failure
        if state in ("FAILURE", "REVERT_FAILURE") and failure is not None:
            message = getattr(failure, "exception_str", "") or str(failure)
        return event_row(tracked["migration_id"], "step", atom_detail.name, state, message)

    # -- atom writes --------------------------------------------------------------------------------

    def _same_but_progress(self, values: dict) -> bool:
        """Whether this write changes nothing but the task's progress.

        TaskFlow's engine writes a task's progress on its own, twice per step
        (0.0 as it starts, 1.0 as it ends), a quarter of all writes, and
        again for every atom when the flow is saved. livemig keeps progress in
        its migration row, and TaskFlow never reads it back (a resumed step
        starts over), so such a write stays in memory and goes out with the
        atom's next state change."""
        with self._lock:
            last = self._written.get(values["match_uuid"])
        if last is None:
            return False
        strip = ("progress", "progress_details")
        return ({k: v for k, v in values.items() if k != "meta"} == {k: v for k, v in last.items() if k != "meta"}
                and {k: v for k, v in (values["meta"] or {}).items() if k not in strip}
                == {k: v for k, v in (last["meta"] or {}).items() if k not in strip})

    def _last_state(self, atom_uuid: str) -> str | None:
        with self._lock:
            last = self._written.get(atom_uuid)
        return last["state"] if last is not None else None

    def _remember(self, values: dict) -> None:
        # A copy of the metadata: TaskFlow may reuse the dict it handed us.
        values = dict(values, meta=copy.deepcopy(values["meta"]))
        with self._lock:
            self._written[values["match_uuid"]] = values
            self._written.move_to_end(values["match_uuid"])
            while len(self._written) > self.REMEMBERED_ATOMS:
                self._written.popitem(last=False)

    def _atom_values(self, atom_detail) -> dict:
        values = atom_detail.to_dict()
        values["match_uuid"] = values.pop("uuid")
        return values

    def _update_atom_with_event(self, values: dict, fenced: bool) -> sa.Insert:
        """The atom's update and its event as one statement, for these
        columns: inside a WITH, the SET clause must name its columns."""
        columns = tuple(sorted(column for column in values if column != "match_uuid"))
        statement = self._updates_with_event.get((columns, fenced))
        if statement is None:
            atoms = self._tables.atomdetails
            update = (atoms.update().where(atoms.c.uuid == sa.bindparam("match_uuid"))
                      .values({column: sa.bindparam(column) for column in columns}))
            if fenced:
                update = update.where(epoch_matches())
            statement = self._updates_with_event[(columns, fenced)] = with_audit_event(update)
        return statement

    def _superseded(self, claim: Claim | None) -> int | None | bool:
        """False if this thread has no claim or its claim is current; else the epoch found."""
        if claim is None:
            return False
        from livemig.persistence.models import Migration

        migrations = Migration.__table__
        with self._engine.connect() as conn:
            epoch = conn.execute(sa.select(migrations.c.claim_epoch)
                                 .where(migrations.c.id == claim.migration_id)).scalar()
        return False if epoch == claim.epoch else epoch

    def update_atom_details(self, atom_detail):
        values = self._atom_values(atom_detail)
        if self._same_but_progress(values):
            return atom_detail
        event = self._atom_event(atom_detail, self._last_state(atom_detail.uuid))
        claim = current_claim()
        combined = (self._update_atom_with_event(values, claim is not None)
                    if event is not None and self._single_statement else None)
        update, params = self._update_atom, values
        if claim is not None:
            update, params = self._update_atom_fenced, {**values, **fence_params(claim)}
        try:
            with self._autocommit.begin() as conn:
                updated = update_with_audit_event(conn, update, params, event, combined)
            if updated != 1:
                superseded = self._superseded(claim)
                if superseded is not False:
                    raise stale(claim, superseded)
                raise tf_exc.NotFound(f"No atom details found with uuid '{atom_detail.uuid}'")
        except sa_exc.SQLAlchemyError:
            tf_exc.raise_with_cause(tf_exc.StorageFailure,
                                    f"Failed updating atom details with uuid '{atom_detail.uuid}'")
        self._remember(values)
        return atom_detail

    # -- new logbooks -------------------------------------------------------------------------------

    def insert_logbook(self, conn: sa.Connection, book) -> None:
        """Insert a new logbook and its flows through `conn`, in its
        transaction. TaskFlow's save_logbook opens its own transaction and
        first reads the book back to merge into it, which a new one never
        needs."""
        try:
            conn.execute(sa.insert(self._tables.logbooks).values(**book.to_dict()))
            for flow_detail in book:
                self._insert_flow_details(conn, flow_detail, book.uuid)
        except sa_exc.SQLAlchemyError:
            tf_exc.raise_with_cause(tf_exc.StorageFailure, f"Failed saving logbook '{book.uuid}'")

    # -- flow writes --------------------------------------------------------------------------------

    def update_flow_details(self, flow_detail):
        """Write the flow's row, and only those of its atoms that changed
        (each atom's own changes were written as they happened), inserting
        new ones in one statement: TaskFlow re-reads the flow and all its
        atoms first and writes them one by one."""
        flow_values = flow_detail.to_dict()
        flow_values["match_uuid"] = flow_values.pop("uuid")
        with self._lock:
            tracked = self._tracked.get(flow_detail.uuid)
            if tracked is not None:
                for atom_detail in flow_detail:
                    self._atom_flow[atom_detail.uuid] = flow_detail.uuid
        changed = []
        for atom_detail in flow_detail:
            values = self._atom_values(atom_detail)
            if not self._same_but_progress(values):
                changed.append((atom_detail, values, self._last_state(atom_detail.uuid)))
        claim = current_claim()
        update_flow, flow_params = self._update_flow, flow_values
        if claim is not None:
            update_flow, flow_params = self._update_flow_fenced, {**flow_values, **fence_params(claim)}
        try:
            with self._engine.begin() as conn:
                # First: a stale claim's transaction stops here, having written nothing.
                if conn.execute(update_flow, flow_params).rowcount != 1:
                    superseded = self._superseded(claim)
                    if superseded is not False:
                        raise stale(claim, superseded)
                    raise tf_exc.NotFound(f"No flow details found with uuid '{flow_detail.uuid}'")
                known = {}
                if any(previous is None for _ad, _v, previous in changed):
                    known = dict(conn.execute(self._atom_states, {"flow": flow_detail.uuid}).all())
                inserts, updates, events = [], [], []
                for atom_detail, values, previous in changed:
                    if previous is None and atom_detail.uuid not in known:
                        inserts.append(dict(atom_detail.to_dict(), parent_uuid=flow_detail.uuid,
                                            atom_type=tf_models.atom_detail_type(atom_detail)))
                    else:
                        updates.append(values)
                        previous = previous or known.get(atom_detail.uuid)
                    event = self._atom_event(atom_detail, previous)
                    if event is not None:
                        events.append(event)
                # One statement per set of columns (a task's and a retry's differ).
                for rows in _by_columns(inserts):
                    conn.execute(self._insert_atom, rows)
                for rows in _by_columns(updates):
                    conn.execute(self._update_atom, rows)
                if tracked is not None and flow_detail.state != tracked["state"]:
                    if flow_detail.state in AUDITED_FLOW_STATES:
                        events.append(event_row(tracked["migration_id"], "flow", flow_detail.name,
                                                flow_detail.state))
                if events:
                    insert_events(conn, events)
        except sa_exc.SQLAlchemyError:
            tf_exc.raise_with_cause(tf_exc.StorageFailure,
                                    f"Failed updating flow details with uuid '{flow_detail.uuid}'")
        if tracked is not None:
            tracked["state"] = flow_detail.state
        for _atom_detail, values, _previous in changed:
            self._remember(values)
        return flow_detail


class SharedConnectionBackend(impl_sqlalchemy.SQLAlchemyBackend):
    """TaskFlow's SQL backend builds its table metadata anew for every
    connection, i.e. for every atom state change: most of a conductor's CPU,
    and memory that grew by megabytes per migration. Its connections hold no
    state besides that metadata (each call opens its own transaction on the
    engine), so one is shared."""

    _shared = None
    _shared_lock = threading.Lock()

    def get_connection(self):
        with self._shared_lock:
            if self._shared is None:
                conn = LivemigConnection(self, upgrade_lock=self._upgrade_lock)
                if not self._validated:
                    conn.validate(max_retries=self._max_retries)
                    self._validated = True
                self._shared = conn
            return self._shared
