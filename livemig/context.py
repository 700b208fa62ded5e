"""Who is asking: live migration is an administrator's operation."""
from __future__ import annotations

import dataclasses
import grp
import os
import pwd

from livemig.errors import NotAuthorized


@dataclasses.dataclass(frozen=True)
class RequestContext:
    user: str
    roles: frozenset[str] = frozenset()

    @property
    def is_admin(self) -> bool:
        return "admin" in self.roles

    def require_admin(self, action: str) -> None:
        if not self.is_admin:
            raise NotAuthorized(f"{action} is an administrator's operation; user {self.user} is not an administrator")


def admin_context(user: str = "livemig") -> RequestContext:
    return RequestContext(user=user, roles=frozenset({"admin", "reader"}))


def context_from_local_user(admin_group: str) -> RequestContext:
    """root, and members of the configured admin group, are administrators."""
    uid = os.geteuid()
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = str(uid)
    roles = {"reader"}
    if uid == 0:
        roles.add("admin")
    else:
        try:
            group = grp.getgrnam(admin_group)
            if group.gr_gid in os.getgroups() or user in group.gr_mem:
                roles.add("admin")
        except KeyError:
            pass
    return RequestContext(user=user, roles=frozenset(roles))
