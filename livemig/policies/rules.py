"""Which rule (and so which policy) applies to an instance: every criterion
a rule gives must match; the most specific matching rule wins (each
criterion, each label, counts one, as in KubeVirt's MigrationPolicy); ties go
to the first rule by name."""
from __future__ import annotations

import dataclasses
import fnmatch
from typing import Iterable, Mapping


@dataclasses.dataclass(frozen=True)
class InstanceFacts:
    """What rules look at."""

    name: str
    project: str = "default"
    labels: Mapping[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Rule:
    name: str
    policy: str
    project: str | None = None
    name_pattern: str | None = None
    labels: dict[str, str] = dataclasses.field(default_factory=dict)

    def matches(self, instance: InstanceFacts) -> bool:
        if self.project is not None and instance.project != self.project:
            return False
        if self.name_pattern is not None and not fnmatch.fnmatchcase(instance.name, self.name_pattern):
            return False
        return all(instance.labels.get(key) == value for key, value in self.labels.items())

    @property
    def specificity(self) -> int:
        """KubeVirt's rule: each criterion (each label) counts one."""
        return (self.project is not None) + (self.name_pattern is not None) + len(self.labels)

    def describe(self) -> str:
        parts = ([f"project={self.project}"] if self.project is not None else []) + \
                ([f"name={self.name_pattern}"] if self.name_pattern is not None else []) + \
                [f"label {k}={v}" for k, v in sorted(self.labels.items())]
        return " ".join(parts) or "every instance"


def most_specific(rules: Iterable[Rule], instance: InstanceFacts) -> Rule | None:
    matching = [rule for rule in rules if rule.matches(instance)]
    if not matching:
        return None
    return min(matching, key=lambda rule: (-rule.specificity, rule.name))
