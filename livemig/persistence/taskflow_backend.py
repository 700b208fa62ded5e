"""TaskFlow's SQL persistence backend on livemig's own engine, with fewer and
cheaper writes per atom state change.

Imported only when a flow is persisted or loaded (see Database.taskflow_backend)."""
from __future__ import annotations

import copy
import importlib.util
import sys
import threading
from collections import OrderedDict


def _lazy_module(name: str) -> None:
    """Register `name` so that it executes on first attribute access."""
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        return
    loader = importlib.util.LazyLoader(spec.loader)
    spec.loader = loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    loader.exec_module(module)
    # Bound on its package too: `from package import name` then takes it as
    # it is, where the import system would look inside (and so load) it.
    parent, _, child = name.rpartition(".")
    setattr(sys.modules[parent], child, module)


# TaskFlow's backend imports its schema-migration module, and with it alembic
# and every SQLAlchemy dialect (~100 ms of each command's start), though only
# a schema upgrade uses it.
_lazy_module("taskflow.persistence.backends.sqlalchemy.migration")

import sqlalchemy as sa  # noqa: E402
from sqlalchemy import exc as sa_exc  # noqa: E402
from taskflow import exceptions as tf_exc  # noqa: E402
from taskflow.persistence.backends import impl_sqlalchemy  # noqa: E402


class LivemigConnection(impl_sqlalchemy.Connection):
    """Writes an atom detail with one prepared UPDATE.

    TaskFlow reads the row, merges the new detail into it and writes every
    column back. Its merge takes every field from the new detail, so the
    read changes nothing: the written row is the new detail either way. Its
    UPDATE is also built anew (and its SQL cache key computed) per write;
    here one statement with bound parameters is compiled once."""

    # Atoms whose last written values are remembered (see _progress_only).
    REMEMBERED_ATOMS = 4096

    def __init__(self, backend, upgrade_lock):
        super().__init__(backend, upgrade_lock)
        atoms = self._tables.atomdetails
        # The SET clause comes from the parameters' keys (the detail's fields).
        self._update_atom = atoms.update().where(atoms.c.uuid == sa.bindparam("match_uuid"))
        self._written: OrderedDict[str, dict] = OrderedDict()
        self._written_lock = threading.Lock()

    def _progress_only(self, values: dict) -> bool:
        """Whether this write changes nothing but the task's progress.

        TaskFlow's engine writes a task's progress on its own, twice per step
        (0.0 as it starts, 1.0 as it ends), a quarter of all writes. livemig
        keeps progress in its migration row, and TaskFlow never reads it back
        (a resumed step starts over), so such a write stays in memory and
        goes out with the atom's next state change."""
        with self._written_lock:
            last = self._written.get(values["match_uuid"])
        if last is None:
            return False
        strip = ("progress", "progress_details")
        return ({k: v for k, v in values.items() if k != "meta"} == {k: v for k, v in last.items() if k != "meta"}
                and {k: v for k, v in (values["meta"] or {}).items() if k not in strip}
                == {k: v for k, v in (last["meta"] or {}).items() if k not in strip})

    def _remember(self, values: dict) -> None:
        # A copy of the metadata: TaskFlow may reuse the dict it handed us.
        values = dict(values, meta=copy.deepcopy(values["meta"]))
        with self._written_lock:
            self._written[values["match_uuid"]] = values
            self._written.move_to_end(values["match_uuid"])
            while len(self._written) > self.REMEMBERED_ATOMS:
                self._written.popitem(last=False)

    def _atom_values(self, atom_detail) -> dict:
        values = atom_detail.to_dict()
        values["match_uuid"] = values.pop("uuid")
        return values

    def update_atom_details(self, atom_detail):
        values = self._atom_values(atom_detail)
        if self._progress_only(values):
            return atom_detail
        try:
            with self._engine.begin() as conn:
                if conn.execute(self._update_atom, values).rowcount != 1:
                    raise tf_exc.NotFound(f"No atom details found with uuid '{atom_detail.uuid}'")
        except sa_exc.SQLAlchemyError:
            tf_exc.raise_with_cause(tf_exc.StorageFailure,
                                    f"Failed updating atom details with uuid '{atom_detail.uuid}'")
        self._remember(values)
        return atom_detail

    def _update_atom_details(self, conn, ad, e_ad):
        # Called for every atom of a flow whenever the flow detail is saved;
        # each atom's own changes were written as they happened, so most are
        # unchanged and need no write.
        before = e_ad.to_dict()
        e_ad.merge(ad)
        if e_ad.to_dict() != before:
            values = self._atom_values(e_ad)
            conn.execute(self._update_atom, values)
            self._remember(values)


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
