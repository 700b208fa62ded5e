"""Named migration policies and the rules that choose one for an instance,
from the settings file (the same TOML file as [livemig]):

    [policy.db-tier]                # a policy: a set of migration options
    description = "large databases"
    auto_converge = true
    post_copy = "on-stall"

    [policy_rule.databases]         # a rule: which instances get which policy
    policy = "db-tier"
    project = "prod"                # all criteria given must match
    name = "db-*"                   # shell-style pattern on the instance name
    labels = { tier = "db" }        # labels in the domain's livemig metadata

A configured policy with a built-in's name replaces it. Nothing here is read
at import time: the book is loaded by whoever resolves a migration's options.
"""
from __future__ import annotations

import dataclasses
import os
import tomllib
from pathlib import Path
from typing import Any, Mapping

from livemig.errors import InvalidInput
from livemig.policies.options import MigrationPolicyOptions, check_options
from livemig.policies.rules import InstanceFacts, Rule, most_specific

DEFAULT_POLICY = "default"


@dataclasses.dataclass(frozen=True)
class Policy:
    name: str
    options: dict[str, Any]  # the options it sets (checked); the rest are defaults
    description: str = ""
    source: str = "built-in"


BUILT_IN = (
    Policy(DEFAULT_POLICY, {}, "pre-copy with a rising downtime limit; aborted if it does not complete in time"),
    Policy("minimal-downtime", {"max_downtime_ms": 100, "auto_converge": True, "auto_converge_initial": 20,
                                "auto_converge_increment": 10, "post_copy": "on-stall"},
           "a short switchover: throttle the guest, switch to post-copy if it still does not converge"),
    Policy("post-copy", {"post_copy": "after-first-pass"},
           "switch to post-copy after the first pass: completes for any guest; a destination lost meanwhile "
           "loses the VM"),
    Policy("suspend-if-needed", {"timeout_action": "force-complete", "stall_s": 30.0},
           "pre-copy; a migration that stalls or runs out of time is completed by pausing the guest"),
    Policy("large-vm", {"max_downtime_ms": 500, "auto_converge": True, "auto_converge_initial": 30,
                        "auto_converge_increment": 20, "post_copy": "on-stall", "stall_s": 60.0,
                        "timeout_action": "force-complete"},
           "large or busy guests: throttle early, then post-copy; never aborted for time"),
)


@dataclasses.dataclass(frozen=True)
class PolicyBook:
    policies: dict[str, Policy]
    rules: tuple[Rule, ...] = ()

    def get(self, name: str) -> Policy:
        policy = self.policies.get(name)
        if policy is None:
            raise InvalidInput(f"unknown migration policy {name!r} (known: {', '.join(sorted(self.policies))})")
        return policy

    def rule_for(self, instance: InstanceFacts) -> Rule | None:
        """The most specific matching rule; ties go to the first by name."""
        return most_specific(self.rules, instance)

    def policy_for(self, instance: InstanceFacts) -> tuple[Policy, Rule | None]:
        rule = self.rule_for(instance)
        return self.get(rule.policy if rule is not None else DEFAULT_POLICY), rule


def built_in_book() -> PolicyBook:
    return PolicyBook({policy.name: policy for policy in BUILT_IN})


def book_from_toml(data: Mapping[str, Any], origin: str) -> PolicyBook:
    """The built-ins plus the policies and rules of one parsed settings file;
    raises InvalidInput naming the policy or rule and the file."""
    policies = {policy.name: policy for policy in BUILT_IN}
    configured = data.get("policy", {})
    if not isinstance(configured, dict):
        raise InvalidInput(f"{origin}: [policy.NAME] must be tables")
    for name, table in configured.items():
        if not isinstance(table, dict):
            raise InvalidInput(f"{origin}: policy {name} must be a table")
        values = dict(table)
        description = values.pop("description", "")
        if "queue_timeout_s" in values:
            raise InvalidInput(f"{origin}: policy {name}: queue_timeout_s is a request's, not a policy's")
        options = check_options(values, f"policy {name} in {origin}")
        policies[name] = Policy(name, options, str(description), origin)
    rules = []
    configured_rules = data.get("policy_rule", {})
    if not isinstance(configured_rules, dict):
        raise InvalidInput(f"{origin}: [policy_rule.NAME] must be tables")
    for name, table in configured_rules.items():
        rules.append(_rule(name, table, policies, origin))
    return PolicyBook(policies, tuple(sorted(rules, key=lambda rule: rule.name)))


def _rule(name: str, table: Any, policies: Mapping[str, Policy], origin: str) -> Rule:
    where = f"{origin}: policy rule {name}"
    if not isinstance(table, dict):
        raise InvalidInput(f"{where} must be a table")
    unknown = set(table) - {"policy", "project", "name", "labels"}
    if unknown:
        raise InvalidInput(f"{where}: unknown key(s) {', '.join(sorted(unknown))} (policy, project, name, labels)")
    policy = table.get("policy")
    if not isinstance(policy, str) or policy not in policies:
        raise InvalidInput(f"{where}: policy must name a policy (known: {', '.join(sorted(policies))}), "
                           f"not {policy!r}")
    labels = table.get("labels", {})
    if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
        raise InvalidInput(f"{where}: labels must be a table of strings")
    for key in ("project", "name"):
        if key in table and (not isinstance(table[key], str) or not table[key]):
            raise InvalidInput(f"{where}: {key} must be a non-empty string")
    return Rule(name, policy, table.get("project"), table.get("name"), dict(labels))


def load_policy_book(environ: Mapping[str, str] | None = None) -> PolicyBook:
    """The built-ins and what the settings file (config.config_file_path)
    defines."""
    from livemig.config import config_file_path

    environ = os.environ if environ is None else environ
    path = config_file_path(environ)
    if path is None:
        return built_in_book()
    return book_from_toml(_read(path), f"config file {path}")


def _read(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise InvalidInput(f"config file {path} does not exist") from None
    except PermissionError:
        raise InvalidInput(f"config file {path} is not readable") from None
    except tomllib.TOMLDecodeError as exc:
        raise InvalidInput(f"config file {path} is not valid TOML: {exc}") from None


def checked_policy(name: str | None) -> str | None:
    """The name, if a policy has it (None: the rules choose); raises InvalidInput."""
    if name is not None:
        load_policy_book().get(name)
    return name


@dataclasses.dataclass(frozen=True)
class Resolved:
    """A migration's policy and its effective options."""

    policy: str
    rule: str | None
    options: MigrationPolicyOptions

    def record(self) -> dict[str, Any]:
        """What the migration row (and its logbook) keeps: every option's
        value, those left to the runner's settings left out."""
        return {name: value for name, value in self.options.to_dict().items() if value is not None}


def resolve(book: PolicyBook, instance: InstanceFacts, policy: str | None = None,
            overrides: Mapping[str, Any] | None = None) -> Resolved:
    """The policy named (else the rules' choice, else `default`) with the
    per-migration `overrides` over it; raises InvalidInput."""
    flags = check_options(dict(overrides or {}), "the migration's options")
    if policy is not None:
        chosen, rule = book.get(policy), None
    else:
        chosen, rule = book.policy_for(instance)
    options = {**chosen.options, **flags}
    return Resolved(chosen.name, rule.name if rule else None, MigrationPolicyOptions(**options))


__all__ = ["BUILT_IN", "DEFAULT_POLICY", "InstanceFacts", "Policy", "PolicyBook", "Resolved", "Rule",
           "book_from_toml", "built_in_book", "load_policy_book", "resolve"]
