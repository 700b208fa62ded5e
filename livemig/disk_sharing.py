"""How each disk of a migrating VM travels, decided per disk: a network disk
stays where it is (both hosts reach the same volume); a file or block disk
stays if it lies under a path the operator declared shared for both hosts
(`Host.shared_paths`); any other local file disk is copied (block
migration) when the migration's copy_storage allows it, and otherwise
refuses the migration. A local block device is never copied: livemig
cannot create its counterpart on the destination."""
from __future__ import annotations

import dataclasses
import posixpath
from typing import Iterable, Protocol, Sequence

from livemig.drivers.base import DiskInfo
from livemig.errors import InvalidInput

LOCAL_KINDS = ("file", "block")
# copy_storage values that copy a local disk's storage.
COPYING = ("full", "incremental")


class SharingHost(Protocol):
    name: str
    shared_paths: list


@dataclasses.dataclass(frozen=True)
class DiskVerdict:
    target: str
    source: str
    kind: str
    may_migrate: bool
    # A file or block disk on declared shared storage: libvirt calls it
    # unsafe unless told otherwise.
    on_shared_storage: bool
    reason: str
    # Its storage is copied to the destination ("full" or "incremental").
    copied: bool = False

    @property
    def how(self) -> str:
        """shared, network, copied, no medium, or refused: the precheck's word for it."""
        if not self.may_migrate:
            return "refused"
        return ("copied" if self.copied else "network" if self.kind == "network"
                else "shared" if self.on_shared_storage else "no medium")


def normalized_shared_paths(paths: Iterable[str]) -> list[str]:
    """The operator's shared paths, absolute and normalised, each once;
    InvalidInput for a relative or empty one."""
    result: list[str] = []
    for raw in paths:
        if not raw or not raw.startswith("/"):
            raise InvalidInput(f"shared path {raw!r} is not an absolute path")
        path = posixpath.normpath(raw)
        if path.startswith("//"):
            path = "/" + path.lstrip("/")
        if path not in result:
            result.append(path)
    return result


def is_under(path: str, root: str) -> bool:
    """Lexically (a destination's symlinks cannot be resolved from here)."""
    path, root = posixpath.normpath(path), posixpath.normpath(root)
    return path == root or path.startswith(root.rstrip("/") + "/")


def judge_disk(disk: DiskInfo, source: SharingHost, dest: SharingHost, copy_storage: str = "off") -> DiskVerdict:
    def verdict(may: bool, shared: bool, reason: str, copied: bool = False) -> DiskVerdict:
        return DiskVerdict(disk.target, disk.source, disk.kind, may, shared, reason, copied)

    if disk.kind == "network":
        return verdict(True, False, f"disk {disk.target} ({disk.source}) is a network disk: both hosts reach it")
    if disk.kind not in LOCAL_KINDS:
        return verdict(False, False, f"disk {disk.target} ({disk.source or 'no source'}) is a {disk.kind} disk; "
                                     f"livemig cannot tell whether {source.name} and {dest.name} share it")
    if not disk.source:
        return verdict(True, False, f"disk {disk.target} has no medium")
    on_source = any(is_under(disk.source, p) for p in source.shared_paths or [])
    on_dest = any(is_under(disk.source, p) for p in dest.shared_paths or [])
    local = "local file" if disk.kind == "file" else "local block device"
    if on_source and on_dest:
        return verdict(True, True, f"disk {disk.target} ({disk.source}) is on storage shared by "
                                   f"{source.name} and {dest.name}")
    not_shared = f"disk {disk.target} ({disk.source}) is a {local} not on storage shared by {source.name} and " \
                 f"{dest.name}"
    if copy_storage in COPYING and disk.kind == "file":
        what = "the whole image" if copy_storage == "full" else "its top image (the backing image is on both)"
        return verdict(True, False, f"{not_shared}: {what} is copied to {dest.name}", copied=True)
    if copy_storage in COPYING:
        return verdict(False, False, f"{not_shared}; a block device is not copied (livemig cannot create its "
                                     f"counterpart on {dest.name})")
    return verdict(False, False, f"{not_shared}; copy its storage with --copy-storage full|incremental")


def judge_disks(disks: Iterable[DiskInfo], source: SharingHost, dest: SharingHost,
                copy_storage: str = "off") -> list[DiskVerdict]:
    return [judge_disk(d, source, dest, copy_storage) for d in disks]


def refusal(verdicts: Sequence[DiskVerdict]) -> str | None:
    """Why the migration may not start, or None."""
    refused = [v.reason for v in verdicts if not v.may_migrate]
    return "; ".join(refused) if refused else None


def needs_unsafe_flag(verdicts: Sequence[DiskVerdict]) -> bool:
    """libvirt's UNSAFE flag, only when there are local disks that are not
    copied and every one of them is on declared shared storage: never to
    force a local disk over."""
    local = [v for v in verdicts if v.kind in LOCAL_KINDS and v.source and not v.copied]
    return bool(local) and all(v.on_shared_storage for v in local)


def copied_targets(verdicts: Sequence[DiskVerdict]) -> list[str]:
    return [v.target for v in verdicts if v.may_migrate and v.copied]


def storage_plan_for(db, disks: Iterable[DiskInfo], source_host: str, dest_host: str,
                     copy_storage: str = "off") -> list[DiskVerdict]:
    """The verdicts of a migration's disks, from the hosts' declared paths now."""
    from livemig.persistence.inventory import get_hosts

    with db.reading() as session:
        source, dest = get_hosts(session, source_host, dest_host)
        return judge_disks(disks, source, dest, copy_storage)

