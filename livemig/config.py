"""One settings object, built once (from defaults, a TOML file, then the
environment) and passed down explicitly. Nothing here is read at import time.

It is JSON-able on purpose: the flow factory receives it as a plain dict, so a
conductor in another process rebuilds exactly the same services.
"""
from __future__ import annotations

import dataclasses
import os
import tomllib
from pathlib import Path
from typing import Any, Mapping

from livemig.errors import InvalidInput
from livemig.states import UnrecoverablePolicy


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "livemig"


@dataclasses.dataclass(frozen=True)
class Settings:
    # Inventory and TaskFlow logbooks share this database.
    database_url: str = ""
    # "host:port,host:port"; empty means one controller with local reservations.
    zookeeper_hosts: str = ""
    zookeeper_session_timeout: float = 4.0
    zookeeper_root: str = "/livemig"
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
    # Migrations one conductor runs at once (each waits on its hypervisors;
    # host limits, not this, bound the load on a host).
    conductor_max_migrations: int = 16
    poll_interval_s: float = 0.2
    # Where local reservations live when ZooKeeper is not configured.
    data_dir: str = ""

    def __post_init__(self) -> None:
        data_dir = self.data_dir or str(default_data_dir())
        object.__setattr__(self, "data_dir", data_dir)
        if not self.database_url:
            object.__setattr__(self, "database_url", f"sqlite:///{data_dir}/livemig.db")
        try:
            UnrecoverablePolicy(self.unrecoverable_policy)
        except ValueError:
            raise InvalidInput(
                f"unrecoverable_policy must be one of "
                f"{', '.join(p.value for p in UnrecoverablePolicy)}, not {self.unrecoverable_policy!r}"
            ) from None
        if self.conductor_max_migrations < 1:
            raise InvalidInput("conductor_max_migrations must be at least 1")
        if self.max_downtime_ms < 1 or self.downtime_steps < 1 or self.downtime_step_delay_s_per_gib < 0:
            raise InvalidInput("max_downtime_ms and downtime_steps must be at least 1, "
                               "downtime_step_delay_s_per_gib at least 0")
        if self.domain_type not in ("kvm", "qemu"):
            raise InvalidInput(f"domain_type must be 'kvm' or 'qemu', not {self.domain_type!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "Settings":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise InvalidInput(f"unknown setting(s): {', '.join(sorted(unknown))}")
        return cls(**dict(values))

    def replace(self, **changes: Any) -> "Settings":
        return dataclasses.replace(self, **changes)


def _coerce(field: dataclasses.Field, raw: str) -> Any:
    kind = field.type if isinstance(field.type, str) else field.type.__name__
    try:
        if kind == "bool":
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(raw)
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
    except ValueError:
        raise InvalidInput(f"setting {field.name} has a malformed value {raw!r}") from None
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
    """Defaults, then the TOML config file, then LIVEMIG_* variables, then overrides."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    path = config_file_path(environ)
    if path is not None:
        try:
            values.update(tomllib.loads(path.read_text()).get("livemig", {}))
        except FileNotFoundError:
            raise InvalidInput(f"config file {path} does not exist") from None
        except PermissionError:
            raise InvalidInput(f"config file {path} is not readable") from None
        except tomllib.TOMLDecodeError as exc:
            raise InvalidInput(f"config file {path} is not valid TOML: {exc}") from None
    for field in dataclasses.fields(Settings):
        raw = environ.get(f"LIVEMIG_{field.name.upper()}")
        if raw is not None:
            values[field.name] = _coerce(field, raw)
    values.update({k: v for k, v in overrides.items() if v is not None})
    return Settings.from_dict(values)
