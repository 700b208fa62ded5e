"""TaskFlow's ZooKeeper jobboard, cheaper to watch with many jobs queued.

A job's claim is a sibling node `JOB.lock` in the board's directory, so the
board's one children watch already sees every claim made and lost. TaskFlow
nonetheless asks ZooKeeper for each job's owner and data (three requests per
job) every time a conductor looks for work; this board answers "is it
claimed?" from the last children listing, and lets a process that only posts
skip watching altogether."""
from __future__ import annotations

from typing import Iterator

from kazoo.protocol import paths as k_paths
from taskflow.jobs.backends.impl_zookeeper import ZookeeperJobBoard


class LivemigJobBoard(ZookeeperJobBoard):
    """`watch_jobs=False` (a process that posts and follows migrations in the
    database): the children watch stops after its first listing and posted
    jobs are not kept, so the process neither fetches every job posted by
    others nor grows with its own. `job_on_board` still works: it lists the
    board afresh.

    `owns_client`: the board stops and closes its client when it closes
    (TaskFlow's board only does so for a client it made itself)."""

    def __init__(self, name, conf, client=None, persistence=None, watch_jobs: bool = True,
                 owns_client: bool = False):
        super().__init__(name, conf, client=client, persistence=persistence)
        self._watch_jobs = watch_jobs
        self._owns_client = owns_client
        self._claimed: frozenset[str] = frozenset()  # job paths with a lock node, as last listed

    @property
    def client(self):
        return self._client

    def close(self):
        super().close()
        if self._owns_client:
            self._client.stop()
            self._client.close()

    # -- the board's view of its directory ------------------------------------------------------------

    def _on_job_posting(self, children, delayed=True):
        """TaskFlow's handler, with sets: its version tests each known job
        against a list of all children, quadratic in the jobs queued (about
        10 ms per change with 1000 queued, on every claim and consumption)."""
        postfix = self.LOCK_POSTFIX
        claimed, child_paths = set(), set()
        for child in children:
            if child.endswith(postfix):
                claimed.add(k_paths.join(self.path, child[:-len(postfix)]))
            elif child.startswith(self.JOB_PREFIX):
                child_paths.add(k_paths.join(self.path, child))
        self._claimed = frozenset(claimed)
        with self._job_cond:
            gone = [path for path in self._known_jobs if path not in child_paths]
            new = [path for path in sorted(child_paths)
                   if path not in self._known_jobs and path not in self._bad_paths]
            if sum(int(self._remove_job(path)) for path in gone):
                self._job_cond.notify_all()
        if not self._watch_jobs and delayed:
            return False  # stops the watch: this process only posts
        for path in new:
            request = self._client.get_async(path)
            if delayed:
                request.rawlink(lambda req, path=path: self._process_child(path, req))
            else:
                self._process_child(path, request, quiet=False)
        return None

    def post(self, name, book=None, details=None, priority=None):
        kwargs = {} if priority is None else {"priority": priority}
        job = super().post(name, book=book, details=details, **kwargs)
        if not self._watch_jobs:
            with self._job_cond:
                self._known_jobs.pop(job.path, None)
        return job

    # -- for conductors ------------------------------------------------------------------------------

    def iter_unclaimed(self, ensure_fresh: bool = False) -> Iterator:
        """Jobs that were unclaimed at the last listing, oldest first, except
        that a job sharing a host with a claimed job (by any conductor, or
        one yielded before it here) comes after those that share none. One
        may have been claimed since the listing: claiming it then fails
        cleanly.

        A claimed job whose host is busy only waits in its reserve-hosts
        step, holding one of its conductor's slots: with host limits of 1
        and jobs queued in host order, half the slots waited. Jobs whose
        details do not name their hosts are taken in order."""
        jobs = self._fetch_jobs(ensure_fresh=ensure_fresh)
        busy: set[str] = set()
        for job in jobs:
            if job.path in self._claimed:
                busy.update(job_hosts(job))
        later = []
        for job in jobs:
            if job.path in self._claimed:
                continue
            hosts = job_hosts(job)
            if busy.intersection(hosts):
                later.append(job)
                continue
            busy.update(hosts)
            yield job
        yield from later


def job_hosts(job) -> list[str]:
    """The hosts a migration job uses, from its details (see post_migration_job)."""
    return list((job.details or {}).get("hosts") or ())
