"""The lab's tiny guest: Debian's cloud kernel and a busybox initramfs that
brings up virtio networking and serves, on its IP:
  7  TCP echo (the client keeps a stream through migrations),
  9  the guest's boot id (proves it did not reboot),
  10 a volume probe: writes the line it reads to its disk and reads it back
     ("?" only reads),
  11 a control port (livemig/lab/control.py): make the guest CPU-busy, make it
     dirty memory, check the static data written at boot.

The packages are downloaded with `apt-get download` and unpacked into the
lab's cache: nothing is installed on the machine's own boot setup."""
from __future__ import annotations

import gzip
import io
import os
import re
import shutil
import subprocess

from pathlib import Path

MODULES = ["virtio_ring", "virtio", "virtio_pci_modern_dev", "virtio_pci_legacy_dev", "virtio_pci", "failover",
           "net_failover", "virtio_net", "virtio_blk"]

INIT = """#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in {modules}; do insmod /lib/modules/$m.ko 2>/dev/null; done
IP=$(sed -n 's/.*livemig.ip=\\([0-9.]*\\).*/\\1/p' /proc/cmdline)
ip link set lo up
ip link set eth0 up
ip addr add $IP/24 dev eth0
nc -ll -p 7 -e cat &
nc -ll -p 9 -e /bin/bootid &
nc -ll -p 10 -e /bin/volume &
# Static data for the control port's `check`: a page lost or stale after a
# migration shows as a different hash.
mkdir -p /tmp/control
dd if=/dev/urandom of=/tmp/control/static bs=1M count={static_mib} 2>/dev/null
md5sum < /tmp/control/static > /tmp/control/static.md5
nc -ll -p 11 -e /bin/control &
echo "livemig-guest ready ip=$IP boot_id=$(cat /proc/sys/kernel/random/boot_id) disks=$(ls /dev/vd* 2>&1)" > /dev/ttyS0
while true; do sleep 3600; done
"""

BOOTID = "#!/bin/sh\ncat /proc/sys/kernel/random/boot_id\n"
# The volume probe writes the line it reads to its disk and reads it back;
# "?" only reads (what an earlier write left, e.g. before a migration).
VOLUME = """#!/bin/sh
read token
# The guest names its only virtio disk vda, whatever the domain XML's target.
disk=$(ls /dev/vd? 2>/dev/null | head -1)
if [ -z "$disk" ]; then echo "error: no virtio disk"; exit 0; fi
if [ "$token" != "?" ]; then
  echo "$token" | dd of=$disk bs=512 count=1 conv=sync,fsync 2>/dev/null || echo "error: write failed"
fi
dd if=$disk bs=512 count=1 iflag=direct 2>/dev/null | head -1
"""

# The control port: one command a connection, one line back ("ok ..." or
# "error: ..."). Loops it starts run detached from the connection (their
# output goes nowhere), so the answer comes at once and nc closes.
#   cpu on|off   a busy loop on the vCPU (under TCG: about one host core)
#   dirty N      rewrite N MiB of zero-filled memory, over and over
#   dirtyr N     the same with random data (N MiB more to hold its source)
#   stop         end the dirtying and free its memory
#   check        re-hash the static data written at boot: ok or corrupt
#   bootid       the boot id (as port 9)
# Memory is a file in the initramfs (RAM), sized against a 128 MiB guest.
CONTROL = """#!/bin/sh
S=/tmp/control
read cmd arg rest
stop_loop() {
  if [ -f $S/$1.pid ]; then kill $(cat $S/$1.pid) 2>/dev/null; rm -f $S/$1.pid; fi
}
mib() {
  case "$1" in ''|*[!0-9]*) return 1;; esac
  [ "$1" -ge 1 ] && [ "$1" -le "$2" ]
}
case "$cmd" in
cpu)
  case "$arg" in
  on)
    if [ ! -f $S/cpu.pid ]; then
      (while :; do :; done) </dev/null >/dev/null 2>&1 &
      echo $! > $S/cpu.pid
    fi
    echo "ok cpu on";;
  off) stop_loop cpu; echo "ok cpu off";;
  *) echo "error: cpu on|off";;
  esac;;
dirty|dirtyr)
  max={dirty_max_mib}
  [ "$cmd" = dirtyr ] && max=$((max / 2))
  if ! mib "$arg" $max; then echo "error: $cmd takes MiB from 1 to $max"; exit 0; fi
  stop_loop dirty
  rm -f $S/dirty $S/random
  src=/dev/zero
  if [ "$cmd" = dirtyr ]; then
    dd if=/dev/urandom of=$S/random bs=1M count=$arg 2>/dev/null
    src=$S/random
  fi
  (while :; do dd if=$src of=$S/dirty bs=1M count=$arg conv=notrunc 2>/dev/null; done) </dev/null >/dev/null 2>&1 &
  echo $! > $S/dirty.pid
  echo "ok $cmd $arg";;
stop) stop_loop dirty; rm -f $S/dirty $S/random; echo "ok stop";;
check)
  if [ "$(md5sum < $S/static)" = "$(cat $S/static.md5)" ]; then echo "ok"; else echo "corrupt"; fi;;
bootid) cat /proc/sys/kernel/random/boot_id;;
*) echo "error: unknown command '$cmd' (cpu on|off, dirty N, dirtyr N, stop, check, bootid)";;
esac
"""
# Static data hashed by `check`, and the most `dirty` may rewrite (MiB).
STATIC_MIB = 4
DIRTY_MAX_MIB = 64
CONTROL_SCRIPT = CONTROL.replace("{dirty_max_mib}", str(DIRTY_MAX_MIB))


def _kernel_package() -> str:
    out = subprocess.run(["apt-cache", "depends", "linux-image-cloud-amd64"], check=True, capture_output=True,
                         text=True).stdout
    match = re.search(r"Depends: (linux-image-[0-9][^\s]*)", out)
    if not match:
        raise RuntimeError("cannot find the kernel package behind linux-image-cloud-amd64")
    return match.group(1)


def secure_cache(cache: Path) -> None:
    """The cache's .debs are unpacked, and its kernel and initramfs booted,
    as root: nobody else may write there. In a cache (or download directory)
    that others could write, anything they could have planted (what root or
    apt's sandbox user does not own) is removed, then the modes tightened."""
    import pwd
    import stat

    cache.mkdir(parents=True, exist_ok=True)
    trusted = {0}
    try:
        trusted.add(pwd.getpwnam("_apt").pw_uid)
    except KeyError:
        pass
    for directory in (cache, cache / "debs"):
        if not directory.exists() or not os.stat(directory).st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            continue
        for entry in directory.iterdir():
            if entry.lstat().st_uid not in trusted:
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
        os.chmod(directory, 0o755)


def download_dir(cache: Path) -> Path:
    """Where apt downloads the guest's .debs: owned by apt's sandbox user
    `_apt` (who writes them) or root, mode 0700."""
    import pwd

    secure_cache(cache)
    downloads = cache / "debs"
    downloads.mkdir(exist_ok=True)
    try:
        os.chown(downloads, pwd.getpwnam("_apt").pw_uid, 0)
    except KeyError:
        os.chown(downloads, 0, 0)  # no sandbox user: apt downloads as root
    os.chmod(downloads, 0o700)
    return downloads


def _download(cache: Path, packages: list[str]) -> None:
    downloads = download_dir(cache)
    # A package already downloaded is not fetched again: a changed init
    # script rebuilds the initramfs from the cache, with no network.
    packages = [p for p in packages if not any(downloads.glob(f"{p}_*.deb"))]
    if not packages:
        return
    proc = subprocess.run(["apt-get", "download", *packages], cwd=downloads, capture_output=True, text=True)
    if proc.returncode != 0:
        subprocess.run(["apt-get", "update"], capture_output=True)
        subprocess.run(["apt-get", "download", *packages], cwd=downloads, check=True, capture_output=True)


def guest_material(cache: Path) -> tuple[Path, Path]:
    """(kernel, initramfs), built once and kept in the cache."""
    import hashlib

    # Named by what goes into it, so a changed init script rebuilds the image.
    recipe = hashlib.sha256((_init_script() + BOOTID + VOLUME + CONTROL_SCRIPT).encode()).hexdigest()[:12]
    kernel_out, initrd_out = cache / "vmlinuz", cache / f"initrd-{recipe}.gz"
    secure_cache(cache)
    if kernel_out.exists() and initrd_out.exists():
        return kernel_out, initrd_out
    cache.mkdir(parents=True, exist_ok=True)
    kernel_pkg = _kernel_package()
    _download(cache, [kernel_pkg, "busybox-static"])
    root = cache / "unpacked"
    shutil.rmtree(root, ignore_errors=True)
    for deb in (cache / "debs").glob("*.deb"):
        subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    kernel = next((root / "boot").glob("vmlinuz-*"))
    moddir = next((root / "lib" / "modules").iterdir())
    found = {p.name[:-3]: p for p in moddir.rglob("*.ko")}
    missing = [m for m in MODULES if m not in found]
    if missing:
        raise RuntimeError(f"kernel {kernel.name} lacks modules {missing}")
    initrd_tmp = cache / "initrd.gz.tmp"
    for old in cache.glob("initrd*.gz"):
        old.unlink()
    _write_initramfs(initrd_tmp, root / "bin" / "busybox", {m: found[m] for m in MODULES})
    shutil.copy(kernel, cache / "vmlinuz.tmp")
    os.replace(cache / "vmlinuz.tmp", kernel_out)
    os.replace(initrd_tmp, initrd_out)
    shutil.rmtree(root, ignore_errors=True)
    return kernel_out, initrd_out


def _init_script() -> str:
    return INIT.format(modules=" ".join(MODULES), static_mib=STATIC_MIB)


def _write_initramfs(path: Path, busybox: Path, modules: dict[str, Path]) -> None:
    """A newc cpio archive, gzipped (the kernel unpacks it as its root)."""
    entries: list[tuple[str, int, bytes]] = []
    for d in ("bin", "dev", "proc", "sys", "lib", "lib/modules", "tmp"):
        entries.append((d, 0o040755, b""))
    entries.append(("init", 0o100755, _init_script().encode()))
    entries.append(("bin/busybox", 0o100755, busybox.read_bytes()))
    entries.append(("bin/bootid", 0o100755, BOOTID.encode()))
    entries.append(("bin/volume", 0o100755, VOLUME.encode()))
    entries.append(("bin/control", 0o100755, CONTROL_SCRIPT.encode()))
    for name, p in modules.items():
        entries.append((f"lib/modules/{name}.ko", 0o100644, p.read_bytes()))
    buf = io.BytesIO()
    for ino, (name, mode, data) in enumerate(entries + [("TRAILER!!!", 0, b"")], start=1):
        _cpio_entry(buf, ino, name, mode, data)
    with gzip.open(path, "wb", compresslevel=6) as f:
        f.write(buf.getvalue())


def _cpio_entry(buf: io.BytesIO, ino: int, name: str, mode: int, data: bytes) -> None:
    encoded = name.encode() + b"\0"
    header = "070701" + "".join(f"{v:08x}" for v in (
        ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(encoded), 0))
    buf.write(header.encode() + encoded)
    buf.write(b"\0" * ((4 - (110 + len(encoded)) % 4) % 4))
    buf.write(data)
    buf.write(b"\0" * ((4 - len(data) % 4) % 4))


