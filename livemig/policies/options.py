"""A migration's options: what one migration (or a named policy) may choose
about how it converges and travels, checked once, where they are given.

The names are fixed (helpers of issue 16 share them). A value left out means
"the runner's setting" for the options that are also settings
(max_downtime_ms, downtime_steps, bandwidth_mib_s, queue_timeout_s) and for
timeout_s (completion_timeout_* per GiB of the guest); every other option
has the default below.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from livemig.errors import InvalidInput

POST_COPY_RULES = ("off", "after-first-pass", "after-seconds", "on-stall")
TIMEOUT_ACTIONS = ("abort", "force-complete")
COMPRESSION_METHODS = ("", "xbzrle", "mt")
STORAGE_COPIES = ("off", "full", "incremental")
DAY_S = 86400.0


@dataclasses.dataclass(frozen=True)
class OptionSpec:
    """An option's type and range: numbers within [low, high] (`above`: low
    itself excluded), strings among `choices`."""

    kind: type
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()
    above: bool = False

    def describe(self) -> str:
        if self.choices:
            return "one of " + ", ".join(repr(c) if not c else c for c in self.choices)
        noun = {bool: "true or false", int: "an integer", float: "a number"}[self.kind]
        if self.above:
            return f"{noun} above {_number(self.low)}" + (f" and at most {_number(self.high)}" if self.high else "")
        return f"{noun} from {_number(self.low)} to {_number(self.high)}"

    def problem(self, value: Any) -> Any:
        """The value as the option's type, or raises ValueError."""
        # bool is an int to Python, never to an operator.
        if isinstance(value, bool) != (self.kind is bool):
            raise ValueError
        if self.kind is float and isinstance(value, int):
            value = float(value)
        if not isinstance(value, self.kind):
            raise ValueError
        if self.kind in (int, float):
            if value != value or value in (float("inf"), float("-inf")):
                raise ValueError
            if self.low is not None and (value <= self.low if self.above else value < self.low):
                raise ValueError
            if self.high is not None and value > self.high:
                raise ValueError
        if self.choices and value not in self.choices:
            raise ValueError
        return value


def _number(value: float | None) -> str:
    return "" if value is None else str(int(value)) if float(value).is_integer() else str(value)


SPECS: dict[str, OptionSpec] = {
    "max_downtime_ms": OptionSpec(int, 1, 600_000),
    "downtime_steps": OptionSpec(int, 1, 1000),
    # libvirt takes MiB/s as an unsigned long; past this no link is that fast.
    "bandwidth_mib_s": OptionSpec(int, 0, 1_000_000),
    "postcopy_bandwidth_mib_s": OptionSpec(int, 0, 1_000_000),
    "auto_converge": OptionSpec(bool),
    "auto_converge_initial": OptionSpec(int, 1, 100),
    "auto_converge_increment": OptionSpec(int, 1, 100),
    "post_copy": OptionSpec(str, choices=POST_COPY_RULES),
    "post_copy_after_s": OptionSpec(float, 0, DAY_S, above=True),
    "timeout_s": OptionSpec(float, 0, 7 * DAY_S, above=True),
    "timeout_action": OptionSpec(str, choices=TIMEOUT_ACTIONS),
    "stall_s": OptionSpec(float, 0, DAY_S, above=True),
    "tls": OptionSpec(bool),
    "parallel_connections": OptionSpec(int, 0, 64),
    "compression": OptionSpec(str, choices=COMPRESSION_METHODS),
    "copy_storage": OptionSpec(str, choices=STORAGE_COPIES),
    # Not a policy's: how long this one request waits for busy hosts.
    "queue_timeout_s": OptionSpec(float, 0, 7 * DAY_S),
}
# The options that are also the runner's settings (config.Settings fields):
# given, they replace the setting for this migration only.
SETTING_OPTIONS = ("max_downtime_ms", "downtime_steps", "bandwidth_mib_s", "queue_timeout_s")


def check_option(name: str, value: Any, origin: str = "") -> Any:
    """The value, checked (as the option's type); raises InvalidInput naming
    the option, what it must be and where the value came from."""
    spec = SPECS.get(name)
    where = f" (from {origin})" if origin else ""
    if spec is None:
        raise InvalidInput(f"unknown migration option {name}{where} (known: {', '.join(SPECS)})")
    try:
        return spec.problem(value)
    except ValueError:
        raise InvalidInput(f"option {name} must be {spec.describe()}, not {value!r}{where}") from None


def check_options(options: Mapping[str, Any], origin: str = "") -> dict[str, Any]:
    """A set of options, checked (None values dropped: "not chosen");
    raises InvalidInput for the first bad one."""
    unknown = sorted(set(options) - set(SPECS))
    if unknown:
        where = f" (from {origin})" if origin else ""
        raise InvalidInput(f"unknown migration option(s): {', '.join(unknown)}{where} (known: {', '.join(SPECS)})")
    return {name: check_option(name, value, origin) for name, value in options.items() if value is not None}


@dataclasses.dataclass(frozen=True)
class MigrationPolicyOptions:
    """One migration's effective options. None: the runner's setting (see
    the module's docstring)."""

    max_downtime_ms: int | None = None
    downtime_steps: int | None = None
    bandwidth_mib_s: int | None = None
    postcopy_bandwidth_mib_s: int = 0
    auto_converge: bool = False
    auto_converge_initial: int = 20
    auto_converge_increment: int = 10
    post_copy: str = "off"
    post_copy_after_s: float = 30.0
    timeout_s: float | None = None
    timeout_action: str = "abort"
    stall_s: float = 30.0
    tls: bool = False
    parallel_connections: int = 0
    compression: str = ""
    copy_storage: str = "off"
    queue_timeout_s: float | None = None

    @classmethod
    def from_mapping(cls, options: Mapping[str, Any], origin: str = "") -> "MigrationPolicyOptions":
        return cls(**check_options(options, origin))

    def to_dict(self) -> dict[str, Any]:
        """Every option, the runner's settings as None."""
        return dataclasses.asdict(self)

    def chosen(self) -> dict[str, Any]:
        """The options that differ from the defaults: what a record shows."""
        default = MigrationPolicyOptions()
        return {name: value for name, value in self.to_dict().items() if value != getattr(default, name)}

    @property
    def post_copy_allowed(self) -> bool:
        return self.post_copy != "off"


def merged(*layers: Mapping[str, Any]) -> dict[str, Any]:
    """Later layers over earlier ones (None: not given in that layer)."""
    result: dict[str, Any] = {}
    for layer in layers:
        result.update((name, value) for name, value in layer.items() if value is not None)
    return result
