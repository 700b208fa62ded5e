"""One settings object, built once (from defaults, a TOML file, then the
environment) and passed down explicitly. Nothing here is read at import time.

Every setting has a type and a range (SPECS), checked wherever a value comes
from: a bad one is refused when the settings are loaded, before anything is
recorded, instead of failing later inside a hypervisor call.

Settings never travel with a migration: a conductor runs every flow with its
own. What a requester may choose for one migration are its options
(livemig.policies.options: a few of them, MIGRATION_OPTIONS among them, are
also settings, which they replace for that migration only).
"""
from __future__ import annotations

import dataclasses
import math
import os
import tomllib
from pathlib import Path
from typing import Any, Callable, Mapping

from livemig.errors import InvalidInput
from livemig.policies.options import SETTING_OPTIONS, check_options
from livemig.states import UnrecoverablePolicy


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "livemig"


@dataclasses.dataclass(frozen=True)
class Settings:
    # Inventory and TaskFlow logbooks share this database. Out of repr: it
    # may hold a password.
    database_url: str = dataclasses.field(default="", repr=False)
    # "host:port,host:port"; empty means one controller with local reservations.
    zookeeper_hosts: str = ""
    zookeeper_session_timeout: float = 4.0
    zookeeper_root: str = "/livemig"
    # ZooKeeper digest credentials, "user:password" or the absolute path of a
    # file holding that line; livemig's znodes are then created readable and
    # writable by that identity only (see coordination/zookeeper.py).
    zookeeper_auth: str = dataclasses.field(default="", repr=False)
    # libvirt domain type used by the lab: "kvm" in production, "qemu" (TCG) here.
    domain_type: str = "kvm"
    unrecoverable_policy: str = UnrecoverablePolicy.TERMINATE.value
    # Members of this Unix group (and root) may run mutating commands.
    admin_group: str = "livemig-admin"
    # The longest the guest may be paused at switchover. livemig starts at
    # max/downtime_steps and raises the limit a step every
    # downtime_step_delay_s_per_gib (times the guest's memory in GiB), as
    # Nova does: most guests converge on a low limit.
    max_downtime_ms: int = 300
    downtime_steps: int = 10
    downtime_step_delay_s_per_gib: float = 75.0
    bandwidth_mib_s: int = 0  # 0: unlimited
    # A migration that runs longer than this per GiB of guest memory (but at
    # least the minimum) is aborted; the VM stays on its source.
    completion_timeout_s_per_gib: float = 240.0
    completion_timeout_min_s: float = 60.0
    # How long a migration waits in "queued" for its hosts' reservations.
    queue_timeout_s: float = 300.0
    # How long `livemig migrate` (with ZooKeeper) waits for a conductor to
    # claim its job before it gives up following it (the job stays queued).
    unclaimed_job_timeout_s: float = 60.0
    # Migrations one conductor runs at once (each waits on its hypervisors;
    # host limits, not this, bound the load on a host).
    conductor_max_migrations: int = 16
    # How the scheduler ranks the hosts that may take an instance: "spread"
    # (the most free room) or "pack" (the least that still fits).
    weigher: str = "spread"
    # A migration whose destination livemig chose tries up to this many other
    # hosts when a destination fails before switchover (0: never).
    max_retries: int = 3
    poll_interval_s: float = 0.2
    # Where local reservations live when ZooKeeper is not configured.
    data_dir: str = ""
    # The key registered credentials are encrypted with in the database;
    # every controller needs the same file (default: DATA_DIR/credential.key).
    credential_key_file: str = ""
    # Load samples (livemig.load): a conductor samples every host this often
    # (0: it does not), and samples older than the history are pruned.
    load_sample_interval_s: float = 60.0
    load_history_s: float = 86400.0
    # The linear power model of a host (livemig.planning.model.HostCapacity):
    # these watts at 0% CPU, rising to the peak at 100%.
    host_idle_watts: float = 100.0
    host_peak_watts: float = 250.0

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            check_setting(field.name, getattr(self, field.name))
        data_dir = self.data_dir or str(default_data_dir())
        object.__setattr__(self, "data_dir", data_dir)
        if self.host_peak_watts < self.host_idle_watts:
            raise InvalidInput(f"setting host_peak_watts ({self.host_peak_watts:g}) must be at least "
                               f"host_idle_watts ({self.host_idle_watts:g})")
        if not self.database_url:
            object.__setattr__(self, "database_url", f"sqlite:///{data_dir}/livemig.db")
        if not self.credential_key_file:
            object.__setattr__(self, "credential_key_file", str(Path(data_dir) / "credential.key"))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "Settings":
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise InvalidInput(f"unknown setting(s): {', '.join(sorted(unknown))}")
        return cls(**dict(values))

    def with_options(self, options: Mapping[str, Any]) -> "Settings":
        """These settings with one migration's options that are settings over them."""
        chosen = {name: value for name, value in check_migration_options(options).items()
                  if name in MIGRATION_OPTIONS}
        return dataclasses.replace(self, **chosen) if chosen else self

    def replace(self, **changes: Any) -> "Settings":
        return dataclasses.replace(self, **changes)


@dataclasses.dataclass(frozen=True)
class Spec:
    """A setting's type and range: numbers within [low, high], strings
    among `choices` or matching `check` (which returns what is wrong)."""

    kind: type
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()
    check: Callable[[str], str | None] | None = None

    def describe(self) -> str:
        if self.choices:
            return f"one of {', '.join(self.choices)}"
        noun = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}[self.kind]
        if self.low is not None and self.high is not None:
            return f"{noun} from {_number(self.low)} to {_number(self.high)}"
        return noun


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _absolute_path_or_empty(value: str) -> str | None:
    # A relative path would name a different file for each process's working
    # directory (a conductor under systemd runs in /).
    return None if not value or os.path.isabs(value) else "an absolute path"


def _zookeeper_hosts(value: str) -> str | None:
    for member in filter(None, (m.strip() for m in value.split(","))):
        host, _, port = member.rpartition(":") if ":" in member else (member, "", "2181")
        if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            return "host:port,host:port (ports 1-65535)"
    return None


def _znode_path(value: str) -> str | None:
    return None if value.startswith("/") and value != "/" and not value.endswith("/") else \
        "a znode path such as /livemig"


def _database_url(value: str) -> str | None:
    # The scheme only: the rest is the database driver's to judge, and an
    # unreachable server is not a malformed setting.
    return None if not value or value.split(":", 1)[0].split("+", 1)[0] in ("sqlite", "postgresql") else \
        "a sqlite:/// or postgresql:// URL"


def _zookeeper_auth(value: str) -> str | None:
    # The value itself is never echoed: it may be a password.
    value = value.strip()
    if not value or os.path.isabs(value):
        return None
    user, sep, password = value.partition(":")
    return None if sep and user and password else "user:password or the absolute path of a file holding it"


def _non_empty(value: str) -> str | None:
    return None if value.strip() else "a non-empty name"


DAY_S = 86400.0
SPECS: dict[str, Spec] = {
    "database_url": Spec(str, check=_database_url),
    "zookeeper_hosts": Spec(str, check=_zookeeper_hosts),
    "zookeeper_session_timeout": Spec(float, 0.5, 600.0),
    "zookeeper_root": Spec(str, check=_znode_path),
    "zookeeper_auth": Spec(str, check=_zookeeper_auth),
    "domain_type": Spec(str, choices=("kvm", "qemu")),
    "unrecoverable_policy": Spec(str, choices=tuple(p.value for p in UnrecoverablePolicy)),
    "admin_group": Spec(str, check=_non_empty),
    "max_downtime_ms": Spec(int, 1, 600_000),
    "downtime_steps": Spec(int, 1, 1000),
    "downtime_step_delay_s_per_gib": Spec(float, 0.0, DAY_S),
    # libvirt takes MiB/s as an unsigned long; past this no link is that fast.
    "bandwidth_mib_s": Spec(int, 0, 1_000_000),
    "completion_timeout_s_per_gib": Spec(float, 0.0, DAY_S),
    "completion_timeout_min_s": Spec(float, 0.1, 7 * DAY_S),
    "queue_timeout_s": Spec(float, 0.0, 7 * DAY_S),
    "unclaimed_job_timeout_s": Spec(float, 0.1, 7 * DAY_S),
    "conductor_max_migrations": Spec(int, 1, 1024),
    "weigher": Spec(str, choices=("spread", "pack")),
    "max_retries": Spec(int, 0, 100),
    "poll_interval_s": Spec(float, 0.01, 60.0),
    "data_dir": Spec(str, check=_absolute_path_or_empty),
    "credential_key_file": Spec(str, check=_absolute_path_or_empty),
    "load_sample_interval_s": Spec(float, 0.0, DAY_S),
    "load_history_s": Spec(float, 60.0, 366 * DAY_S),
    "host_idle_watts": Spec(float, 0.0, 100_000.0),
    "host_peak_watts": Spec(float, 0.0, 100_000.0),
}

# The settings a requester may choose for one migration, among its other
# options (livemig.policies.options); everything else is the conductor's own.
MIGRATION_OPTIONS = SETTING_OPTIONS


# Settings whose value may hold a password: never echoed in an error.
SECRET_SETTINGS = frozenset({"database_url", "zookeeper_auth"})


def check_setting(name: str, value: Any) -> None:
    """Raises InvalidInput, naming the setting and what it must be."""
    spec = SPECS[name]
    shown = "the value given" if name in SECRET_SETTINGS else repr(value)
    wrong = f"setting {name} must be {spec.describe()}, not {shown}"
    # bool is an int to Python, never to an operator.
    if isinstance(value, bool) != (spec.kind is bool):
        raise InvalidInput(wrong)
    if spec.kind is float and isinstance(value, int):
        value = float(value)
    if not isinstance(value, spec.kind):
        raise InvalidInput(wrong)
    if spec.kind in (int, float):
        if not math.isfinite(value) or (spec.low is not None and value < spec.low) \
                or (spec.high is not None and value > spec.high):
            raise InvalidInput(wrong)
    if spec.choices and value not in spec.choices:
        raise InvalidInput(wrong)
    if spec.check is not None:
        problem = spec.check(value)
        if problem:
            raise InvalidInput(f"setting {name} must be {problem}, not {shown}")


def check_migration_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """One migration's options (livemig.policies.options), checked; raises InvalidInput."""
    return check_options(options)


def _coerce(name: str, raw: str) -> Any:
    """An environment variable's text as the setting's type."""
    kind = SPECS[name].kind
    try:
        if kind is bool:
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(raw)
        if kind is int:
            return int(raw)
        if kind is float:
            return float(raw)
    except ValueError:
        raise InvalidInput(f"setting {name} must be {SPECS[name].describe()}, not {raw!r} "
                           f"(from LIVEMIG_{name.upper()})") from None
    return raw


def config_file_path(environ: Mapping[str, str]) -> Path | None:
    explicit = environ.get("LIVEMIG_CONFIG")
    if explicit:
        return Path(explicit)
    for candidate in (Path.home() / ".config" / "livemig" / "config.toml", Path("/etc/livemig/config.toml")):
        try:
            if candidate.exists():
                return candidate
        except PermissionError:
            continue  # another user's home: not ours to read
    return None


def load_settings(environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Defaults, then the TOML config file, then LIVEMIG_* variables, then
    overrides; raises InvalidInput (one line, naming the setting and where its
    value came from) for an unknown setting or a value of the wrong type or range."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    origin: dict[str, str] = {}
    path = config_file_path(environ)
    if path is not None:
        try:
            section = tomllib.loads(path.read_text()).get("livemig", {})
        except FileNotFoundError:
            raise InvalidInput(f"config file {path} does not exist") from None
        except PermissionError:
            raise InvalidInput(f"config file {path} is not readable") from None
        except tomllib.TOMLDecodeError as exc:
            raise InvalidInput(f"config file {path} is not valid TOML: {exc}") from None
        if not isinstance(section, dict):
            raise InvalidInput(f"config file {path}: [livemig] must be a table")
        unknown = set(section) - {f.name for f in dataclasses.fields(Settings)}
        if unknown:
            raise InvalidInput(f"config file {path}: unknown setting(s): {', '.join(sorted(unknown))}")
        values.update(section)
        origin.update((name, f"config file {path}") for name in section)
    for name in (f.name for f in dataclasses.fields(Settings)):
        raw = environ.get(f"LIVEMIG_{name.upper()}")
        if raw is not None:
            values[name] = _coerce(name, raw)
            origin[name] = f"LIVEMIG_{name.upper()}"
    for name, value in overrides.items():
        if value is not None:
            values[name] = value
            origin[name] = "the command line or caller"
    for name, value in values.items():
        if name in SPECS:
            try:
                check_setting(name, value)
            except InvalidInput as exc:
                raise InvalidInput(f"{exc} (from {origin[name]})") from None
    return Settings.from_dict(values)
