"""What livemig relies on in TaskFlow beyond its public API, checked against
the installed TaskFlow (setup.cfg pins ~=6.5.0).

A failure here means a TaskFlow release changed something one of livemig's
overrides depends on: read the override named in the test before widening
the pin. The overrides live in:
- persistence/taskflow_backend.py: the SQL connection's atom and flow
  writes, the logbook insert, and the backend's shared connection
  (`_validated`, `_upgrade_lock`, `_max_retries`);
- coordination/jobboard.py: the ZooKeeper board's children handler and the
  client it is given;
- jobs.py: the conductor's `_dispatch_job` and `_listeners_from_job`, and the
  claim fence's reading of a job's lock node;
- runner.py: building a migration's logbook through TaskFlow's Storage.
And one behaviour that livemig guards against (a finished flow runs again
when loaded again: see runner and jobs)."""
from __future__ import annotations

import contextlib
import inspect
import threading

import pytest
from taskflow import engines, states, task
from taskflow.conductors.backends import impl_executor, impl_nonblocking
from taskflow.engines.helpers import save_factory_details
from taskflow.jobs.backends import impl_zookeeper
from taskflow.jobs.base import JobBoardIterator
from taskflow.patterns import linear_flow
from taskflow.persistence import models
from taskflow.persistence.backends import impl_sqlalchemy
from taskflow.storage import Storage

CALLS: list[str] = []


def parameters(func) -> list[str]:
    return list(inspect.signature(func).parameters)


# -- signatures of the private methods livemig overrides or calls ------------------------------------


def test_sql_connection_methods_livemig_overrides_keep_their_signatures():
    # LivemigConnection overrides these and calls super().__init__(backend, upgrade_lock).
    assert parameters(impl_sqlalchemy.Connection.__init__) == ["self", "backend", "upgrade_lock"]
    assert parameters(impl_sqlalchemy.Connection.update_atom_details) == ["self", "atom_detail"]
    assert parameters(impl_sqlalchemy.Connection.update_flow_details) == ["self", "flow_detail"]
    # insert_logbook calls this one with its own transaction's connection.
    assert parameters(impl_sqlalchemy.Connection._insert_flow_details) == ["self", "conn", "fd", "parent_uuid"]
    assert parameters(impl_sqlalchemy.Connection.validate) == ["self", "max_retries"]


def test_zookeeper_board_methods_livemig_overrides_or_calls_keep_their_signatures():
    board = impl_zookeeper.ZookeeperJobBoard
    assert parameters(board.__init__)[:5] == ["self", "name", "conf", "client", "persistence"]
    assert parameters(board._on_job_posting) == ["self", "children", "delayed"]
    assert inspect.signature(board._on_job_posting).parameters["delayed"].default is True
    assert parameters(board._process_child) == ["self", "path", "request", "quiet"]
    assert parameters(board._remove_job) == ["self", "path"]
    assert parameters(board.post) == ["self", "name", "book", "details", "priority"]
    assert board.LOCK_POSTFIX == ".lock" and board.JOB_PREFIX == "job"
    # LivemigJobBoard.iterjobs is TaskFlow's, with its own fetch order.
    assert parameters(board.iterjobs) == ["self", "only_unclaimed", "ensure_fresh"]
    assert parameters(board._fetch_jobs) == ["self", "ensure_fresh"]
    assert parameters(JobBoardIterator.__init__) == ["self", "board", "logger", "board_fetch_func",
                                                     "board_removal_func", "only_unclaimed", "ensure_fresh"]
    # ClaimFence reads the claim's node itself.
    assert isinstance(impl_zookeeper.ZookeeperJob.lock_path, property)


def test_conductor_methods_livemig_overrides_keep_their_signatures():
    assert issubclass(impl_nonblocking.NonBlockingConductor, impl_executor.ExecutorConductor)
    assert parameters(impl_executor.ExecutorConductor._dispatch_job) == ["self", "job"]
    assert parameters(impl_executor.ExecutorConductor._listeners_from_job) == ["self", "job", "engine"]
    # MigrationConductor builds the engine in _dispatch_job, under its own
    # error handling, and hands it to TaskFlow through _engine_from_job, which
    # TaskFlow's dispatch must still call for the job it runs.
    assert parameters(impl_executor.ExecutorConductor._engine_from_job) == ["self", "job"]
    import inspect
    assert "self._engine_from_job(job)" in inspect.getsource(impl_executor.ExecutorConductor._dispatch_job)
    init = parameters(impl_nonblocking.NonBlockingConductor.__init__)
    assert init[:3] == ["self", "name", "jobboard"]
    assert {"persistence", "engine", "wait_timeout", "max_simultaneous_jobs"} <= set(init)
    # The conductor claims jobs in the order the board's iterjobs yields them
    # (LivemigJobBoard's hosts-free-first order), while it may claim more.
    run_loop = inspect.getsource(impl_executor.ExecutorConductor._run_until_dead)
    assert "self._jobboard.iterjobs(ensure_fresh=ensure_fresh)" in run_loop
    assert "takewhile(" in run_loop and "self._jobboard.claim(job, self._name)" in run_loop
    # run_conductor --once stops the conductor on these events.
    assert {"job_consumed", "job_abandoned"} <= set(impl_executor.ExecutorConductor.EVENTS_EMITTED)


# -- the attributes the overrides read ----------------------------------------------------------------


@pytest.fixture
def sql_backend(tmp_path):
    backend = impl_sqlalchemy.SQLAlchemyBackend({"connection": f"sqlite:///{tmp_path}/tf.db"})
    with contextlib.closing(backend.get_connection()) as conn:
        conn.upgrade()
    yield backend
    backend.close()


def test_sql_backend_attributes_the_shared_connection_uses(sql_backend):
    # SharedConnectionBackend.get_connection builds its one connection from these.
    assert sql_backend._validated is True  # get_connection validated it above
    assert hasattr(sql_backend._upgrade_lock, "acquire")
    assert isinstance(sql_backend._max_retries, int)
    conn = impl_sqlalchemy.Connection(sql_backend, upgrade_lock=sql_backend._upgrade_lock)
    # LivemigConnection's own statements are built on TaskFlow's tables and engine.
    assert conn._engine is sql_backend.engine
    for table in ("logbooks", "flowdetails", "atomdetails"):
        assert getattr(conn._tables, table) is not None
    assert {"uuid", "parent_uuid", "state", "atom_type", "meta"} <= set(conn._tables.atomdetails.c.keys())
    assert {"uuid", "parent_uuid", "state", "meta"} <= set(conn._tables.flowdetails.c.keys())


def test_a_written_atom_is_its_new_detail_whatever_was_stored(sql_backend):
    """LivemigConnection writes an atom's new detail without TaskFlow's read
    and merge, because TaskFlow's merge takes every field from the new
    detail: the row written is the new detail either way."""
    book = models.LogBook("book")
    flow_detail = models.FlowDetail("flow", uuid="f-1")
    atom = models.TaskDetail("step", uuid="a-1")
    atom.state, atom.intention, atom.results, atom.meta = states.RUNNING, states.EXECUTE, None, {"progress": 0.0}
    flow_detail.add(atom)
    book.add(flow_detail)
    with contextlib.closing(sql_backend.get_connection()) as conn:
        conn.save_logbook(book)
        newer = models.TaskDetail("step", uuid="a-1")
        newer.state, newer.intention, newer.results, newer.meta = states.SUCCESS, states.EXECUTE, {"x": 1}, {}
        conn.update_atom_details(newer)
        stored = conn.get_atom_details("a-1")
    assert stored.to_dict() == newer.to_dict()
    assert set(newer.to_dict()) >= {"uuid", "name", "state", "intention", "results", "failure", "meta", "version"}
    assert models.atom_detail_type(newer) == "TASK_DETAIL"


def test_the_board_state_livemigs_children_handler_uses():
    board = impl_zookeeper.ZookeeperJobBoard("contract", {"path": "/livemig-contract", "hosts": "127.0.0.1:1"},
                                             client=_NoClient())
    # LivemigJobBoard._on_job_posting works on these, as TaskFlow's handler does.
    assert board._known_jobs == {}
    assert isinstance(board._job_cond, threading.Condition)
    assert board._bad_paths == frozenset({"/livemig-contract"})
    assert board._client is board._client and board.path == "/livemig-contract"
    assert board._remove_job("/livemig-contract/job0000000001") is False


def test_the_board_installs_its_children_watch_on_the_handler():
    """Returning False from the handler stops kazoo's ChildrenWatch
    (LivemigJobBoard with watch_jobs=False): the board must still install
    `_on_job_posting` itself as the watch's function."""
    source = inspect.getsource(impl_zookeeper.ZookeeperJobBoard.connect)
    assert "func=self._on_job_posting" in source
    from kazoo.recipe.watchers import ChildrenWatch

    assert "result is False" in inspect.getsource(ChildrenWatch._get_children)


class _NoClient:
    """Enough of a kazoo client for a board that is never connected."""

    def add_listener(self, listener):
        pass


# -- behaviour relied on -------------------------------------------------------------------------------


class Step(task.Task):
    def execute(self, fail: bool = False) -> None:
        CALLS.append(self.name)
        if fail:
            raise RuntimeError("step failed")


def one_step_flow(fail: bool = False):
    return linear_flow.Flow("contract-flow").add(Step("step", inject={"fail": fail}))


def _persisted_flow(backend, fail: bool):
    book = models.LogBook("contract-book")
    flow_detail = models.FlowDetail("contract-flow", uuid=f"flow-{fail}")
    book.add(flow_detail)
    save_factory_details(flow_detail, one_step_flow, [], {"fail": fail})
    # runner.create_logbook injects the store through Storage alone, and
    # puts it in the flow's meta, where a conductor looks for it.
    flow_detail.meta["store"] = {"migration_id": 7}
    Storage(flow_detail).inject({"migration_id": 7})
    with contextlib.closing(backend.get_connection()) as conn:
        conn.save_logbook(book)
    return book, flow_detail


def test_a_reverted_flow_loaded_again_runs_again(sql_backend):
    """The behaviour that lets a failed migration run twice (issue 13, item
    2): TaskFlow resets a REVERTED flow to PENDING when it is loaded and run
    again. livemig must refuse such a run itself (runner, jobs); if this
    test fails, TaskFlow stopped doing it and that guard can be revisited."""
    CALLS.clear()
    _book, flow_detail = _persisted_flow(sql_backend, fail=True)
    with pytest.raises(RuntimeError, match="step failed"):
        engines.load_from_detail(flow_detail, engine="serial", backend=sql_backend).run()
    with contextlib.closing(sql_backend.get_connection()) as conn:
        stored = conn.get_logbook(_book.uuid).find(flow_detail.uuid)
    assert stored.state == states.REVERTED
    engine = engines.load_from_detail(stored, engine="serial", backend=sql_backend)
    with pytest.raises(RuntimeError, match="step failed"):
        engine.run()
    assert CALLS == ["step", "step"]


def test_a_factory_flow_is_rebuilt_from_its_detail_with_its_store(sql_backend):
    CALLS.clear()
    _book, flow_detail = _persisted_flow(sql_backend, fail=False)
    engine = engines.load_from_detail(flow_detail, engine="serial", backend=sql_backend)
    engine.run()
    assert CALLS == ["step"]
    assert engine.storage.fetch("migration_id") == 7
    assert engine.storage.get_flow_state() == states.SUCCESS


class _Job:
    def __init__(self, book, flow_uuid: str):
        self.book, self.name, self.uuid = book, "contract-job", "job-uuid"
        self.details = {"flow_uuid": flow_uuid, "migration_id": 7}


class RecordingConductor(impl_nonblocking.NonBlockingConductor):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.listened: list[tuple] = []

    def _listeners_from_job(self, job, engine):
        listeners = super()._listeners_from_job(job, engine)
        self.listened.append((job, engine.storage.flow_uuid, type(listeners)))
        return listeners


@pytest.mark.parametrize("fail", [False, True], ids=["succeeds", "reverts"])
def test_dispatch_runs_the_jobs_flow_and_returns_whether_to_consume(sql_backend, fail):
    """MigrationConductor wraps _dispatch_job: TaskFlow builds the engine
    from the job's book and flow uuid, asks _listeners_from_job once for
    that job and engine, runs it, and returns True (consume) for a flow that
    ended, reverted included: livemig then makes sure the outcome is
    recorded."""
    CALLS.clear()
    book, flow_detail = _persisted_flow(sql_backend, fail=fail)
    conductor = RecordingConductor("contract", object(), persistence=sql_backend, engine="serial")
    job = _Job(book, flow_detail.uuid)
    assert conductor._dispatch_job(job) is True
    assert CALLS == ["step"]
    assert conductor.listened == [(job, flow_detail.uuid, list)]
    with contextlib.closing(sql_backend.get_connection()) as conn:
        state = conn.get_logbook(book.uuid).find(flow_detail.uuid).state
    assert state == (states.REVERTED if fail else states.SUCCESS)


# -- where livemig overrides TaskFlow's private parts ----------------------------------------------------

KNOWN_PRIVATE_OVERRIDES = {
    # Each is checked above; a new one needs its contract test here first.
    "livemig.coordination.jobboard.LivemigJobBoard._on_job_posting",
    "livemig.jobs.MigrationConductor._dispatch_job",
    "livemig.jobs.MigrationConductor._engine_from_job",
    "livemig.jobs.MigrationConductor._listeners_from_job",
    # TaskFlow's documented way to write a listener.
    "livemig.jobs.ClaimFence._task_receiver",
    "livemig.runner.MigrationEventListener._task_receiver",
}


def test_listener_hook_keeps_its_signature():
    from taskflow.listeners.base import Listener

    assert parameters(Listener._task_receiver) == ["self", "state", "details"]
    assert parameters(Listener.__init__)[:4] == ["self", "engine", "task_listen_for", "flow_listen_for"]


def test_livemig_overrides_no_other_private_taskflow_method():
    import importlib
    import pkgutil

    import livemig

    found = set()
    for info in pkgutil.walk_packages(livemig.__path__, "livemig."):
        if info.name.endswith(".__main__"):
            continue  # runs the command
        module = importlib.import_module(info.name)
        for cls in vars(module).values():
            if not isinstance(cls, type) or cls.__module__ != module.__name__:
                continue
            bases = [base for base in cls.__mro__[1:] if base.__module__.startswith("taskflow.")]
            for name, value in vars(cls).items():
                if (name.startswith("_") and not name.startswith("__") and callable(value)
                        and any(name in vars(base) for base in bases)):
                    found.add(f"{cls.__module__}.{cls.__qualname__}.{name}")
    assert found == KNOWN_PRIVATE_OVERRIDES
