"""`livemig lab`: a throwaway local cloud on one Linux machine (root).

N independent libvirt hosts (one libvirtd each, private state in its own
mount namespace, distinct host UUIDs and ports, listening on loopback), one
bridge for guest NICs and migration traffic, a security-group filter on each
guest's interface, an iSCSI volume with CHAP per guest (Debian's user-space
`tgt` on loopback, the password in a libvirt secret), and tiny guests that
answer a TCP echo. Everything it creates is recorded in LAB_DIR/lab.json and
removed by `down`, which also recovers a lab whose processes died."""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import uuid as uuidlib
from pathlib import Path
from typing import Any, Callable

from livemig.errors import InvalidInput, LivemigError
from livemig.lab.echo import wait_for_port
from livemig.lab.control import CONTROL_PORT
from livemig.lab.guest_image import guest_material
from livemig.lab.pki import make_ca, make_host_certificate

FILTER_NAME = "livemig-lab-sg"
# A security group for the lab guests: their services (TCP 7-11) and ICMP in,
# their answers out, every other IPv4 packet dropped (ARP is not IPv4: passes).
FILTER_XML = f"""<filter name='{FILTER_NAME}' chain='ipv4' priority='-700'>
  <rule action='accept' direction='in' priority='100'><ip protocol='tcp' dstportstart='7' dstportend='11'/></rule>
  <rule action='accept' direction='out' priority='100'><ip protocol='tcp' srcportstart='7' srcportend='11'/></rule>
  <rule action='accept' direction='inout' priority='200'><ip protocol='icmp'/></rule>
  <rule action='drop' direction='inout' priority='900'><ip/></rule>
</filter>"""


class LabError(LivemigError):
    exit_code = 1


@dataclasses.dataclass(frozen=True)
class LabConfig:
    name: str = "livemig"
    root: str = "/var/lib/livemig-lab"
    cache: str = "/var/cache/livemig-lab"
    bridge: str = "lmbr0"
    subnet: str = "10.77.0"  # /24; .1 the controller, .10+ guests, .200+ hosts' migration addresses
    port_base: int = 16600
    iscsi_port: int = 13260
    host_prefix: str = "lab"
    guest_memory_mb: int = 128
    # libvirtd's log_filters (e.g. "1:qemu 3:*"): empty logs warnings and errors only.
    libvirt_log_filters: str = ""

    @classmethod
    def from_env(cls, **overrides: Any) -> "LabConfig":
        env = {f.name: os.environ[f"LIVEMIG_LAB_{f.name.upper()}"] for f in dataclasses.fields(cls)
               if f"LIVEMIG_LAB_{f.name.upper()}" in os.environ}
        for f in dataclasses.fields(cls):
            if f.name in env and f.type in ("int", int):
                env[f.name] = int(env[f.name])
        env.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**env)


def _run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(cmd), capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise LabError(f"{' '.join(cmd)} failed: {(proc.stderr or proc.stdout).strip()}")
    return proc


def _pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _processes_mentioning(text: str, command: str | None = None) -> list[int]:
    """Processes whose command line contains TEXT (and whose executable is
    COMMAND, if given)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            if command is not None:
                with open(f"/proc/{entry}/comm") as f:
                    if f.read().strip() != command:
                        continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(int(entry))
    return found


# Written in the lab's root when the lab creates it: `down` removes, and kills
# processes by, only a root that carries it (LIVEMIG_LAB_ROOT may be mistyped
# as a system directory).
ROOT_MARKER = ".livemig-lab"


class Lab:
    def __init__(self, config: LabConfig, say: Callable[[str], None] = lambda s: None):
        self.cfg = config
        self.root = Path(config.root)
        self.cache = Path(config.cache)
        self.say = say
        self.domain_type = "qemu"

    # -- state
    @property
    def state_path(self) -> Path:
        return self.root / "lab.json"

    def state(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.state_path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    @property
    def owns_root(self) -> bool:
        if (self.root / ROOT_MARKER).is_file():
            return True
        # A lab made before the marker existed: its record names this root.
        recorded = self.state()
        return bool(recorded) and recorded.get("config", {}).get("root") == str(self.root)

    def _refuse_foreign_root(self) -> None:
        if self.root.exists() and not self.owns_root and (not self.root.is_dir() or any(self.root.iterdir())):
            raise LabError(f"{self.root} exists and was not created by the lab (no {ROOT_MARKER} in it); "
                           f"not touching it: choose another LIVEMIG_LAB_ROOT")

    def _claim_root(self) -> None:
        self._refuse_foreign_root()
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)
        (self.root / ROOT_MARKER).write_text("created by `livemig lab up`; `livemig lab down` removes it all\n")

    def _save(self, state: dict[str, Any]) -> None:
        if not self.owns_root:
            self._claim_root()
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        os.replace(tmp, self.state_path)

    def host_uri(self, index: int) -> str:
        return f"qemu+tcp://127.0.0.1:{self.cfg.port_base + index}/system"

    def host_name(self, index: int) -> str:
        return f"{self.cfg.host_prefix}{index}"

    def migration_ip(self, index: int) -> str:
        return f"{self.cfg.subnet}.{200 + index}"

    def guest_ip(self, index: int) -> str:
        return f"{self.cfg.subnet}.{10 + index}"

    # -- up
    def up(self, hosts: int = 2, guests: int = 1, settings=None, local_disk_guests: int = 0,
           tls: bool = False) -> dict[str, Any]:
        """`tls`: a CA and per-host certificates for migrations with --tls."""
        if os.geteuid() != 0:
            raise LabError("the lab needs root (it starts libvirt daemons and creates a bridge)")
        if hosts < 2 or hosts > 9:
            raise InvalidInput("a lab has 2 to 9 hosts")
        if guests < 0 or local_disk_guests < 0 or guests + local_disk_guests > 20:
            raise InvalidInput("a lab has 0 to 20 guests")
        self._refuse_foreign_root()
        if self.state() is not None or self._leftovers():
            self.say("removing what an earlier lab left behind")
            self.down(settings=settings)
        started = time.monotonic()
        from livemig.config import load_settings

        # The domain type is livemig's setting: kvm in production, qemu (TCG)
        # where KVM cannot boot guests, as on nested or paravirtual machines.
        self.domain_type = (settings or load_settings()).domain_type
        kernel, initrd = guest_material(self.cache)
        state: dict[str, Any] = {"config": dataclasses.asdict(self.cfg), "hosts": [], "guests": [],
                                 "bridge": None, "tgtd_pid": None, "kernel": str(kernel), "initrd": str(initrd),
                                 "tls": tls}
        self._save(state)
        try:
            if tls:
                make_ca(self.root / "pki", self.cfg.name)
            self._bridge_up(state, hosts)
            self._tgtd_up(state)
            for i in range(1, hosts + 1):
                self._host_up(state, i)
            self._register_hosts(state, settings)
            for g in range(1, guests + local_disk_guests + 1):
                self.add_guest(state, g, host_index=1, local_disk=g > guests)
            if guests or local_disk_guests:
                self._sync(settings)
        except BaseException:
            kept = self.keep_logs("last-failure")
            self.say(f"lab up failed; its logs are kept in {kept}; removing what it created")
            self.down(settings=settings)
            raise
        self.say(f"lab up in {time.monotonic() - started:.1f} s: {hosts} hosts, {guests} guest(s)")
        return state

    def keep_logs(self, label: str) -> Path:
        """Copies the lab's logs (the daemons', QEMU's, the guests' consoles)
        to where `down` leaves them, replacing an earlier copy of that label;
        returns where."""
        kept = self.cache / label
        shutil.rmtree(kept, ignore_errors=True)
        with contextlib.suppress(OSError, shutil.Error):
            shutil.copytree(self.root, kept, ignore=shutil.ignore_patterns("*.img", "*.sock", "cache"),
                            ignore_dangling_symlinks=True, dirs_exist_ok=True)
        return kept

    def _bridge_up(self, state: dict[str, Any], hosts: int) -> None:
        br = self.cfg.bridge
        _run("ip", "link", "add", br, "type", "bridge")
        state["bridge"] = br
        self._save(state)
        _run("ip", "addr", "add", f"{self.cfg.subnet}.1/24", "dev", br)
        for i in range(1, hosts + 1):
            _run("ip", "addr", "add", f"{self.migration_ip(i)}/24", "dev", br)
        _run("ip", "link", "set", br, "up")
        self.say(f"bridge {br} up ({self.cfg.subnet}.0/24)")

    def _tgt_env(self) -> dict[str, str]:
        return dict(os.environ, TGT_IPC_SOCKET=str(self.root / "tgtd.sock"))

    def _tgtadm(self, *args: str) -> None:
        # tgtadm 1.0.85 takes a CHAP password only on its command line (no
        # file or stdin): it is visible in /proc for tgtadm's few milliseconds,
        # to root alone on a lab machine; it is never put in a message.
        proc = subprocess.run(["tgtadm", "--lld", "iscsi", *args], capture_output=True, text=True, env=self._tgt_env())
        if proc.returncode != 0:
            shown = ["***" if i and args[i - 1] == "--password" else a for i, a in enumerate(args)]
            error = proc.stderr.strip()
            for i, arg in enumerate(args):
                if i and args[i - 1] == "--password":
                    error = error.replace(arg, "***")
            raise LabError(f"tgtadm {' '.join(shown)} failed: {error}")

    def _tgtd_up(self, state: dict[str, Any]) -> None:
        log = open(self.root / "tgtd.log", "ab")
        proc = subprocess.Popen(["tgtd", "-f", "--iscsi", f"portal=127.0.0.1:{self.cfg.iscsi_port}"],
                                stdout=log, stderr=subprocess.STDOUT, env=self._tgt_env(), start_new_session=True)
        state["tgtd_pid"] = proc.pid
        self._save(state)
        wait_for_port("127.0.0.1", self.cfg.iscsi_port, 10)
        self.say(f"iSCSI target on 127.0.0.1:{self.cfg.iscsi_port}")

    def _host_up(self, state: dict[str, Any], i: int) -> None:
        name = self.host_name(i)
        host_dir = self.root / "hosts" / name
        # lib/images: the host's private image directory (local-disk guests).
        for sub in ("lib", "lib/images", "log", "images"):
            (host_dir / sub).mkdir(parents=True, exist_ok=True)
        # The stock configuration (nwfilter built-ins included), then ours on top.
        shutil.copytree("/etc/libvirt", host_dir / "etc", dirs_exist_ok=True, symlinks=True)
        # The QEMU capabilities cache survives labs: building it costs ~1 s per host.
        caps = self.cache / "hosts" / name
        caps.mkdir(parents=True, exist_ok=True)
        (host_dir / "cache").unlink(missing_ok=True)
        (host_dir / "cache").symlink_to(caps, target_is_directory=True)
        port = self.cfg.port_base + i
        (host_dir / "etc" / "libvirtd.conf").write_text(
            f'listen_tls = 0\nlisten_tcp = 1\nlisten_addr = "127.0.0.1"\ntcp_port = "{port}"\n'
            f'auth_tcp = "none"\nauth_unix_rw = "none"\nhost_uuid = "{uuidlib.uuid4()}"\n'
            f'{self._log_settings()}keepalive_interval = 5\n')
        mig_ip = self.migration_ip(i)
        low = 49200 + (i - 1) * 50 + (self.cfg.port_base % 1000)
        tls = self._tls_settings(state, name, mig_ip)
        (host_dir / "etc" / "qemu.conf").write_text(
            'user = "root"\ngroup = "root"\ndynamic_ownership = 0\nremember_owner = 0\n'
            'security_driver = "none"\ncgroup_controllers = [ ]\nstdio_handler = "file"\nnamespaces = [ ]\n'
            f'migration_address = "{mig_ip}"\nmigration_host = "{mig_ip}"\n'
            f'migration_port_min = {low}\nmigration_port_max = {low + 49}\n{tls}')
        (host_dir / "etc" / "libvirt.conf").write_text("")
        entry = {"name": name, "index": i, "dir": str(host_dir), "uri": self.host_uri(i), "port": port,
                 "pid": self._spawn_host(host_dir, name), "migration_ip": mig_ip}
        state["hosts"].append(entry)
        self._save(state)
        try:
            wait_for_port("127.0.0.1", port, 30)
        except TimeoutError:
            raise LabError(f"libvirtd of {name} did not start (its log: hosts/{name}/log/libvirtd.log)") from None
        import libvirt

        conn = self._connect(entry["uri"])
        try:
            pool = conn.storagePoolDefineXML(
                f"<pool type='dir'><name>default</name><target><path>{host_dir / 'images'}</path></target></pool>")
            pool.create()
        except libvirt.libvirtError as exc:
            raise LabError(f"{name}: cannot create its storage pool: {exc.get_error_message()}") from None
        finally:
            conn.close()
        self.say(f"host {name}: libvirtd on {entry['uri']} (migration address {mig_ip})")

    # Where a host's migration certificates are, inside its namespace (its
    # /etc/libvirt is its private etc/).
    TLS_DIR = "/etc/libvirt/pki-migrate"

    def _tls_settings(self, state: dict[str, Any], name: str, mig_ip: str) -> str:
        if not state.get("tls"):
            return ""
        make_host_certificate(self.root / "pki", self.root / "hosts" / name / "etc" / "pki-migrate", name, mig_ip)
        return f'migrate_tls_x509_cert_dir = "{self.TLS_DIR}"\nmigrate_tls_x509_verify = 1\n'

    def _log_settings(self) -> str:
        if not self.cfg.libvirt_log_filters:
            return 'log_outputs = "3:file:/var/log/libvirt/libvirtd.log"\n'
        return (f'log_filters = "{self.cfg.libvirt_log_filters}"\n'
                'log_outputs = "1:file:/var/log/libvirt/libvirtd.log"\n')

    @staticmethod
    def _spawn_host(host_dir: Path, name: str) -> int:
        """Start a host's libvirtd (under its subreaper) in a private mount and
        UTS namespace; returns the pid of the process group leader."""
        log = open(host_dir / "subreaper.log", "ab")
        proc = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "--uts", "--", sys.executable, "-m",
             "livemig.lab.subreaper", str(host_dir), name],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2])))
        return proc.pid

    @staticmethod
    def _connect(uri: str):
        import libvirt

        libvirt.registerErrorHandler(lambda _c, _e: None, None)
        deadline = time.monotonic() + 20
        while True:
            try:
                return libvirt.open(uri)
            except libvirt.libvirtError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def _register_hosts(self, state: dict[str, Any], settings) -> None:
        from livemig import api
        from livemig.context import admin_context
        from livemig.errors import Conflict

        ctx = admin_context("lab")
        for host in state["hosts"]:
            # The management URIs are on loopback; the migration stream goes
            # over the bridge, to each host's own migration address.
            def add() -> None:
                api.add_host(ctx, host["name"], host["uri"], "lab", migration_address=host["migration_ip"],
                             settings=settings)

            try:
                add()
            except Conflict:
                self._forget_host(host["name"], settings)
                add()

    def _sync(self, settings) -> None:
        from livemig import api
        from livemig.context import admin_context

        for host in self.state()["hosts"]:
            api.sync_hosts(admin_context("lab"), host["name"], settings=settings)

    def stop_host(self, index: int) -> None:
        """Power a lab host off: its libvirtd and its guests stop."""
        state = self.state()
        host = state["hosts"][index - 1]
        self._stop_group(host["pid"])

    def start_host(self, index: int) -> None:
        """Start a stopped lab host again with its state (no guests)."""
        state = self.state()
        host = state["hosts"][index - 1]
        if _pid_alive(host["pid"]):
            return
        host["pid"] = self._spawn_host(Path(host["dir"]), host["name"])
        self._save(state)
        wait_for_port("127.0.0.1", host["port"], 30)
        self._connect(host["uri"]).close()

    def libvirtd_pid(self, index: int) -> int | None:
        """The libvirtd process of a lab host (a child of its subreaper)."""
        host = self.state()["hosts"][index - 1]
        try:
            return int((Path(host["dir"]) / "libvirtd.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    # -- guests
    # Where a local-disk guest's image lives, as each host sees it: inside
    # the host's mount namespace /var/lib/libvirt is its private lib/, so
    # the same path names a different file on every host (as on real hosts).
    LOCAL_IMAGES = "/var/lib/libvirt/images"
    LOCAL_DISK_MIB = 64

    def local_image(self, host_index: int, name: str) -> Path:
        """A local-disk guest's image file on a host, as the lab (outside
        the hosts' namespaces) reaches it."""
        return self.root / "hosts" / self.host_name(host_index) / "lib" / "images" / f"{name}.qcow2"

    def add_guest(self, state: dict[str, Any], g: int, host_index: int = 1,
                  local_disk: bool = False) -> dict[str, Any]:
        """Guest vm<g> on a host: its disk an iSCSI volume with CHAP, or with
        `local_disk` a qcow2 image in the host's private image directory
        (migrated only with a storage copy)."""
        import libvirt

        name, ip = f"vm{g}", self.guest_ip(g)
        iqn = f"iqn.2026-11.dev.livemig.lab:{self.cfg.name}-{name}"
        usage = f"livemig-lab-{self.cfg.name}-{name}"
        host = state["hosts"][host_index - 1]
        if local_disk:
            image = self.local_image(host_index, name)
            image.parent.mkdir(parents=True, exist_ok=True)
            _run("qemu-img", "create", "-q", "-f", "qcow2", str(image), f"{self.LOCAL_DISK_MIB}M")
        else:
            password = secrets.token_hex(12)
            volume = self.root / "volumes" / f"{name}.img"
            volume.parent.mkdir(parents=True, exist_ok=True)
            with open(volume, "wb") as f:
                f.truncate(32 * 2**20)
            self._tgtadm("--op", "new", "--mode", "target", "--tid", str(g), "-T", iqn)
            self._tgtadm("--op", "new", "--mode", "logicalunit", "--tid", str(g), "--lun", "1", "-b", str(volume))
            self._tgtadm("--op", "bind", "--mode", "target", "--tid", str(g), "-I", "ALL")
            self._tgtadm("--op", "new", "--mode", "account", "--user", f"u-{name}", "--password", password)
            self._tgtadm("--op", "bind", "--mode", "account", "--tid", str(g), "--user", f"u-{name}")
        conn = self._connect(host["uri"])
        try:
            try:
                conn.nwfilterLookupByName(FILTER_NAME)
            except libvirt.libvirtError:
                conn.nwfilterDefineXML(FILTER_XML)
            if not local_disk:
                secret = conn.secretDefineXML(
                    f"<secret ephemeral='no' private='no'><usage type='iscsi'><target>{usage}</target></usage>"
                    f"</secret>")
                secret.setValue(password.encode())
            uuid = str(uuidlib.uuid4())
            console = self.root / "guests" / f"{name}.console"
            console.parent.mkdir(parents=True, exist_ok=True)
            disk = self._local_disk_xml(name) if local_disk else self._iscsi_disk_xml(name, iqn, usage)
            dom = conn.defineXML(self._domain_xml(name, uuid, ip, g, disk, state, console))
            dom.create()
        finally:
            conn.close()
        guest = {"name": name, "uuid": uuid, "ip": ip, "console": str(console)}
        if local_disk:
            guest["local_disk"] = f"{self.LOCAL_IMAGES}/{name}.qcow2"
        else:
            guest.update(secret_usage=usage, tid=g)
        state["guests"].append(guest)
        self._save(state)
        try:
            # The control port is the guest's last service to start (after
            # the static data it checks is written): every port answers then.
            wait_for_port(ip, CONTROL_PORT, 120)
        except TimeoutError:
            hint = ""
            if self.domain_type == "kvm":
                # The usual cause on a machine without usable hardware virtualization.
                hint = "; under KVM here? set LIVEMIG_DOMAIN_TYPE=qemu to run guests under TCG"
            raise LabError(f"guest {name} ({ip}) did not answer within 120 s (its console: "
                           f"guests/{name}.console, its QEMU log: hosts/{host['name']}/log/qemu/{name}.log{hint})"
                           ) from None
        self.say(f"guest {name} ({ip}) answers on {host['name']}")
        return guest

    def remove_guest(self, name: str) -> None:
        """Stop and undefine a guest wherever it is and remove its local
        image from every host (an iSCSI guest's target stays until `down`)."""
        import libvirt

        state = self.state()
        guest = next(g for g in state["guests"] if g["name"] == name)
        for index, host in enumerate(state["hosts"], start=1):
            with contextlib.suppress(libvirt.libvirtError):
                conn = self._connect(host["uri"])
                try:
                    dom = conn.lookupByUUIDString(guest["uuid"])
                    with contextlib.suppress(libvirt.libvirtError):
                        dom.destroy()
                    with contextlib.suppress(libvirt.libvirtError):
                        dom.undefine()
                finally:
                    conn.close()
            if guest.get("local_disk"):
                self.local_image(index, name).unlink(missing_ok=True)
        state["guests"] = [g for g in state["guests"] if g["name"] != name]
        self._save(state)

    def _iscsi_disk_xml(self, name: str, iqn: str, usage: str) -> str:
        return f"""<disk type='network' device='disk'>
      <driver name='qemu' type='raw' cache='none'/>
      <source protocol='iscsi' name='{iqn}/1'>
        <host name='127.0.0.1' port='{self.cfg.iscsi_port}'/>
        <auth username='u-{name}'><secret type='iscsi' usage='{usage}'/></auth>
      </source>
      <target dev='vdb' bus='virtio'/>
    </disk>"""

    def _local_disk_xml(self, name: str) -> str:
        return f"""<disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' cache='none'/>
      <source file='{self.LOCAL_IMAGES}/{name}.qcow2'/>
      <target dev='vda' bus='virtio'/>
    </disk>"""

    def _domain_xml(self, name: str, uuid: str, ip: str, g: int, disk: str, state: dict[str, Any],
                    console: Path) -> str:
        mac = f"52:54:00:77:{int(self.cfg.subnet.split('.')[1]) % 256:02x}:{g:02x}"
        tcg_ram = self._tcg_ram_override() if self.domain_type == "qemu" else ""
        return f"""<domain type='{self.domain_type}' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>{name}</name>
  <uuid>{uuid}</uuid>
  <metadata><livemig:instance xmlns:livemig='https://livemig.dev/xmlns/domain/1'><livemig:project>lab</livemig:project></livemig:instance></metadata>
  <memory unit='MiB'>{self.cfg.guest_memory_mb}</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{state['kernel']}</kernel>
    <initrd>{state['initrd']}</initrd>
    <cmdline>console=ttyS0 livemig.ip={ip} panic=-1 quiet</cmdline>
  </os>
  <cpu mode='custom' match='exact' check='none'><model fallback='forbid'>qemu64</model></cpu>
  <on_crash>preserve</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    {disk}
    <interface type='bridge'>
      <mac address='{mac}'/>
      <source bridge='{self.cfg.bridge}'/>
      <model type='virtio'/>
      <filterref filter='{FILTER_NAME}'><parameter name='IP' value='{ip}'/></filterref>
    </interface>
    <serial type='pty'><log file='{console}' append='on'/><target port='0'/></serial>
    <memballoon model='none'/>
  </devices>{tcg_ram}
</domain>"""

    # QEMU 7.2 (Debian 12) loses guest writes when it live-migrates a TCG
    # guest: its dirty-bitmap sync, for a RAM block whose size is a multiple
    # of 64 pages (256 KiB), clears the migration dirty bits 64 at a time
    # without resetting the vCPU's TLB, so the guest's later stores through
    # TLB entries already marked dirty set no dirty bit and those pages are
    # never sent again: the destination runs on stale memory (kernel stacks,
    # page free lists, virtio rings) and panics. Fixed upstream in QEMU 9.0
    # ("physmem: Fix migration dirty bitmap coherency with TCG memory
    # access"). libvirt rounds <memory> to whole MiB, so under TCG the guest
    # gets its own RAM backend 8 KiB larger (QEMU's -m granularity): that
    # block takes the page-by-page sync, which resets the TLB for every page
    # it cleans. libvirt's own backend stays defined and unused (never
    # touched: it costs no host memory, only a fast scan of zero pages in
    # each migration). KVM tracks dirty pages itself: unchanged there.
    TCG_RAM_BACKEND = "livemig-lab-ram"

    def _tcg_ram_override(self) -> str:
        size = self.cfg.guest_memory_mb * 2**20 + 8192
        args = ["-object", f"memory-backend-ram,id={self.TCG_RAM_BACKEND},size={size}",
                "-machine", f"memory-backend={self.TCG_RAM_BACKEND}", "-m", f"{size}B"]
        values = "".join(f"<qemu:arg value='{a}'/>" for a in args)
        return f"\n  <qemu:commandline>{values}</qemu:commandline>"

    # -- down
    def _leftovers(self) -> bool:
        bridge = _run("ip", "link", "show", self.cfg.bridge, check=False).returncode == 0
        return bridge or self.owns_root

    def down(self, settings=None) -> None:
        """Remove everything the lab created, from its record and by search
        (a lab whose processes were killed leaves stale state behind).
        Only under a root the lab created (its marker): processes are found by
        their command lines naming it, and the whole of it is removed."""
        self._refuse_foreign_root()
        owned = self.owns_root
        within = f"{self.root}/"
        state = (self.state() if owned else None) or {"hosts": [], "guests": []}
        for host in state.get("hosts", []):
            with contextlib.suppress(Exception):
                self._destroy_all_domains(host["uri"])
        for host in state.get("hosts", []):
            self._stop_group(host.get("pid"))
        for pid in _processes_mentioning(within) if owned else []:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if owned:
            with contextlib.suppress(OSError):
                subprocess.run(["tgtadm", "--op", "delete", "--mode", "system"], env=self._tgt_env(),
                               capture_output=True, timeout=10)
        self._stop_group(state.get("tgtd_pid"), grace=2.0)
        for pid in _processes_mentioning(f"portal=127.0.0.1:{self.cfg.iscsi_port}", command="tgtd"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if _run("ip", "link", "show", self.cfg.bridge, check=False).returncode == 0:
            _run("ip", "link", "del", self.cfg.bridge, check=False)
        if owned:
            self._wait_gone(within)
        self._remove_stale_filter_rules()
        if owned:
            shutil.rmtree(self.root, ignore_errors=True)
        for host in state.get("hosts", []):
            self._forget_host(host["name"], settings)
        self.say("lab down")

    @staticmethod
    def _remove_stale_filter_rules() -> None:
        """nwfilter's ebtables chains of tap devices that no longer exist.

        A libvirtd killed with guests running never removes them; they name a
        vnetN device, so only chains of vanished devices are touched."""
        import re

        listing = _run("ebtables", "-t", "nat", "-L", check=False).stdout
        chains = re.findall(r"^Bridge chain: ((?:libvirt-[IOJP]-|[IO]-)(vnet\d+)\S*),", listing, re.M)
        stale = [(chain, dev) for chain, dev in chains if not os.path.exists(f"/sys/class/net/{dev}")]
        for _chain, dev in stale:
            _run("ebtables", "-t", "nat", "-D", "PREROUTING", "-i", dev, "-j", f"libvirt-I-{dev}", check=False)
            _run("ebtables", "-t", "nat", "-D", "POSTROUTING", "-o", dev, "-j", f"libvirt-O-{dev}", check=False)
        for chain, _dev in stale:
            _run("ebtables", "-t", "nat", "-F", chain, check=False)
        for chain, _dev in stale:
            _run("ebtables", "-t", "nat", "-X", chain, check=False)

    def _destroy_all_domains(self, uri: str) -> None:
        import libvirt

        libvirt.registerErrorHandler(lambda _c, _e: None, None)
        conn = libvirt.open(uri)
        try:
            for dom in conn.listAllDomains(0):
                with contextlib.suppress(libvirt.libvirtError):
                    if dom.isActive():
                        dom.destroy()
                with contextlib.suppress(libvirt.libvirtError):
                    dom.undefine()
        finally:
            conn.close()

    @staticmethod
    def _stop_group(pid: int | None, grace: float = 10.0) -> None:
        if not pid or not _pid_alive(pid):
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and _pid_alive(pid):
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)

    @staticmethod
    def _wait_gone(text: str, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(_pid_alive(p) for p in _processes_mentioning(text)):
            time.sleep(0.05)

    def _forget_host(self, name: str, settings) -> None:
        """Drop a lab host and its instances from the inventory; migration
        history stays."""
        try:
            import sqlalchemy as sa

            from livemig.api import _services
            from livemig.persistence.models import Host, Instance, Reservation

            services = _services(settings)
            with services.db.session() as session:
                session.execute(sa.delete(Instance).where(Instance.host == name))
                session.execute(sa.delete(Reservation).where(Reservation.host == name))
                session.execute(sa.delete(Host).where(Host.name == name))
        except LivemigError as exc:
            self.say(f"could not remove {name} from the inventory: {exc}")

    # -- status
    def status(self) -> dict[str, Any]:
        state = self.state()
        if state is None:
            return {"up": False, "hosts": [], "guests": []}
        hosts = []
        for host in state["hosts"]:
            hosts.append({"name": host["name"], "uri": host["uri"], "daemon": _pid_alive(host["pid"]),
                          "domains": self._domains_on(host["uri"])})
        guests = []
        for guest in state["guests"]:
            on = [h["name"] for h in hosts if guest["name"] in h["domains"]]
            try:
                wait_for_port(guest["ip"], 7, 1)
                echo = True
            except TimeoutError:
                echo = False
            guests.append({"name": guest["name"], "ip": guest["ip"], "uuid": guest["uuid"], "running_on": on,
                           "echo": echo})
        return {"up": True, "bridge": state.get("bridge"), "tgtd": _pid_alive(state.get("tgtd_pid")),
                "hosts": hosts, "guests": guests}

    @staticmethod
    def _domains_on(uri: str) -> list[str]:
        import libvirt

        libvirt.registerErrorHandler(lambda _c, _e: None, None)
        try:
            conn = libvirt.open(uri)
        except libvirt.libvirtError:
            return []
        try:
            return [d.name() for d in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)]
        finally:
            conn.close()
