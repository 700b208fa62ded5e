"""Disk image files on a libvirt host, through its storage pools: how a block
migration learns the source image's format and size and pre-creates the
destination's, on the destination host's side (libvirt's directory pool runs
`qemu-img create` there), with no shell access to the host.

A file is reached through an active directory pool whose target is the
file's directory; where none exists, a transient one is started for the
call and destroyed after it (destroying a transient directory pool leaves
its files alone)."""
from __future__ import annotations

import contextlib
import hashlib
import posixpath
import xml.etree.ElementTree as ET
from typing import Iterator
from xml.sax.saxutils import escape

import libvirt

from livemig.drivers.base import DiskImage, DriverError

# The prefix of the transient pools livemig starts: never a pool of the host's.
POOL_PREFIX = "livemig-images-"


def _pool_path(pool: libvirt.virStoragePool) -> str | None:
    root = ET.fromstring(pool.XMLDesc(0))
    if root.get("type") != "dir":
        return None
    path = root.findtext("target/path")
    return posixpath.normpath(path) if path else None


class NoSuchDirectory(DriverError):
    """The image's directory does not exist on the host (so neither does the image)."""


@contextlib.contextmanager
def pool_for_directory(conn: libvirt.virConnect, directory: str) -> Iterator[libvirt.virStoragePool]:
    """An active directory pool on `directory`, refreshed: the host's own if
    it has one, else a transient one for the duration."""
    directory = posixpath.normpath(directory)
    for pool in conn.listAllStoragePools(libvirt.VIR_CONNECT_LIST_STORAGE_POOLS_ACTIVE):
        if _pool_path(pool) == directory:
            pool.refresh(0)
            yield pool
            return
    name = POOL_PREFIX + hashlib.sha256(directory.encode()).hexdigest()[:12]
    try:
        pool = conn.storagePoolLookupByName(name)  # another call of ours holds it now
        owned = False
    except libvirt.libvirtError:
        xml = (f"<pool type='dir'><name>{name}</name><target><path>{escape(directory)}</path></target></pool>")
        try:
            pool = conn.storagePoolCreateXML(xml, 0)
            owned = True
        except libvirt.libvirtError as exc:
            message = exc.get_error_message() or ""
            if "No such file or directory" in message:
                raise NoSuchDirectory(f"directory {directory} does not exist", code=exc.get_error_code()) from None
            if "exist" in message:
                pool, owned = conn.storagePoolLookupByName(name), False  # a concurrent call started it
            else:
                raise
    try:
        pool.refresh(0)
        yield pool
    finally:
        if owned:
            with contextlib.suppress(libvirt.libvirtError):
                pool.destroy()


def _volume(pool: libvirt.virStoragePool, path: str) -> libvirt.virStorageVol | None:
    try:
        return pool.storageVolLookupByName(posixpath.basename(path))
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_VOL:
            return None
        raise


def read_image(conn: libvirt.virConnect, path: str) -> DiskImage | None:
    try:
        with pool_for_directory(conn, posixpath.dirname(path)) as pool:
            vol = _volume(pool, path)
            if vol is None:
                return None
            root = ET.fromstring(vol.XMLDesc(0))
    except NoSuchDirectory:
        return None
    capacity = root.find("capacity")
    size = int(capacity.text) * _unit(capacity.get("unit", "bytes")) if capacity is not None else 0
    backing = root.findtext("backingStore/path") or None
    backing_format = root.find("backingStore/format")
    fmt = root.find("target/format")
    return DiskImage(path=path, format=fmt.get("type") if fmt is not None else "raw", virtual_size=size,
                     backing=backing, backing_format=backing_format.get("type") if backing_format is not None
                     else None)


def _unit(unit: str) -> int:
    units = {"b": 1, "bytes": 1, "k": 1024, "kib": 1024, "m": 2**20, "mib": 2**20, "g": 2**30, "gib": 2**30,
             "t": 2**40, "tib": 2**40, "kb": 1000, "mb": 10**6, "gb": 10**9, "tb": 10**12}
    return units[unit.lower()]


def create_image(conn: libvirt.virConnect, image: DiskImage) -> None:
    # allocation 0: sparse (qemu-img create without preallocation); a pool
    # that libvirt fills during the migration would allocate it fully.
    backing = ""
    if image.backing:
        backing = (f"<backingStore><path>{escape(image.backing)}</path>"
                   f"<format type='{escape(image.backing_format or 'raw')}'/></backingStore>")
    xml = (f"<volume><name>{escape(posixpath.basename(image.path))}</name>"
           f"<capacity unit='bytes'>{int(image.virtual_size)}</capacity><allocation unit='bytes'>0</allocation>"
           f"<target><format type='{escape(image.format)}'/></target>{backing}</volume>")
    with pool_for_directory(conn, posixpath.dirname(image.path)) as pool:
        if _volume(pool, image.path) is not None:
            raise DriverError(f"an image already exists at {image.path}", code=libvirt.VIR_ERR_STORAGE_VOL_EXIST)
        pool.createXML(xml, 0)


def delete_image(conn: libvirt.virConnect, path: str) -> bool:
    try:
        with pool_for_directory(conn, posixpath.dirname(path)) as pool:
            vol = _volume(pool, path)
            if vol is None:
                return False
            vol.delete(0)
            return True
    except NoSuchDirectory:
        return False
