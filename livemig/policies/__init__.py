"""Migration policies: named sets of per-migration options, chosen per
instance by rules or per migration, with per-migration flags over them."""
from livemig.policies.book import (
    DEFAULT_POLICY, InstanceFacts, Policy, PolicyBook, Resolved, Rule, book_from_toml, built_in_book, checked_policy,
    load_policy_book, resolve,
)
from livemig.policies.options import MigrationPolicyOptions, check_options

__all__ = ["DEFAULT_POLICY", "InstanceFacts", "MigrationPolicyOptions", "Policy", "PolicyBook", "Resolved", "Rule",
           "book_from_toml", "built_in_book", "check_options", "checked_policy", "load_policy_book", "resolve"]
