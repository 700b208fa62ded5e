"""The per-migration option flags of `livemig migrate` (and of the fleet
operations that start migrations): each sets one option of
livemig.policies.options over the policy's, for that migration only."""
from __future__ import annotations

from typing import Any, Callable, Mapping

import click

from livemig.policies.options import COMPRESSION_METHODS, POST_COPY_RULES, STORAGE_COPIES, check_option

# (flag, option name, click keyword arguments); the values are checked by
# policies.options, the one place that says what each must be.
_FLAGS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("--max-downtime", "max_downtime_ms", {"type": int, "metavar": "MS",
                                           "help": "The longest the guest may be paused at switchover."}),
    ("--bandwidth", "bandwidth_mib_s", {"type": int, "metavar": "MIB_S",
                                        "help": "Cap the migration stream (MiB/s, 0: unlimited)."}),
    ("--post-copy", "post_copy", {"type": click.Choice(POST_COPY_RULES), "is_flag": False,
                                  "flag_value": "after-first-pass", "metavar": "[RULE]",
                                  "help": "Allow post-copy and switch: after-first-pass (the bare flag), "
                                          "after-seconds, on-stall; off forbids it."}),
    ("--auto-converge", "auto_converge", {"is_flag": True, "default": None,
                                          "help": "Throttle the guest's CPUs until the copy converges."}),
    ("--tls", "tls", {"is_flag": True, "default": None, "help": "Encrypt the migration stream (TLS)."}),
    ("--parallel", "parallel_connections", {"type": int, "metavar": "N",
                                            "help": "Parallel connections (multifd; 0 or 1: one)."}),
    ("--compression", "compression", {"type": click.Choice([m for m in COMPRESSION_METHODS if m]),
                                      "metavar": "METHOD", "help": "Compress the stream: xbzrle or mt."}),
    ("--copy-storage", "copy_storage", {"type": click.Choice(STORAGE_COPIES), "is_flag": False,
                                        "flag_value": "full", "metavar": "[full|incremental]",
                                        "help": "Copy local disks with the guest (the bare flag: full)."}),
    ("--timeout", "timeout_s", {"type": float, "metavar": "S",
                                "help": "Completion timeout (seconds; then the policy's timeout action)."}),
)


def migration_option_flags(command: Callable) -> Callable:
    """Adds every per-migration option flag to a click command; the command
    takes them as keyword arguments and passes them to `flag_options`."""
    for flag, option, kwargs in reversed(_FLAGS):
        command = click.option(flag, f"flag_{option}", **{"default": None, **kwargs})(command)
    return command


def flag_options(flags: Mapping[str, Any]) -> dict[str, Any]:
    """The options the flags given set (a flag not given sets nothing),
    checked; raises InvalidInput naming the flag."""
    given = {}
    for flag, option, _kwargs in _FLAGS:
        value = flags.get(f"flag_{option}")
        if value is not None:
            given[option] = check_option(option, value, flag)
    return given
