"""A module that loads on first use instead of at import.

Only persistence/taskflow_backend.py still uses this, to defer TaskFlow's
schema-migration module (alembic and every SQLAlchemy dialect, about 100 ms
of each command's start), and only for that start-up time: `import livemig`
no longer defers anything. When that file stops deferring, this module and
tests/unit/test_lazy.py go too.

importlib's LazyLoader is not thread-safe before Python 3.12 (a second
thread can see the module half-executed), and conductors run flows on many
threads, so this module's stand-in loads the real module under a lock and
then forwards to it."""
from __future__ import annotations

import importlib
import importlib.util
import sys
import threading
import types
from typing import Any

_lock = threading.RLock()


class _Deferred(types.ModuleType):
    """Stands in sys.modules for a module not yet loaded; the first attribute
    it lacks loads the real module, which replaces it everywhere it can."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.__dict__["_livemig_real"] = None

    def _load(self) -> types.ModuleType:
        with _lock:
            real = self.__dict__["_livemig_real"]
            if real is None:
                name = self.__name__
                if sys.modules.get(name) is self:
                    del sys.modules[name]
                real = importlib.import_module(name)
                self.__dict__["_livemig_real"] = real
                parent, _, child = name.rpartition(".")
                if parent and getattr(sys.modules.get(parent), child, None) is self:
                    setattr(sys.modules[parent], child, real)
            return real

    def __getattr__(self, attr: str) -> Any:
        # Only attributes the stand-in lacks get here, i.e. all of the module's.
        return getattr(self._load(), attr)

    def __dir__(self) -> list[str]:
        return dir(self._load())


def defer(*names: str) -> None:
    """Put a stand-in for each module in `names` that is not loaded yet."""
    with _lock:
        for name in names:
            if name in sys.modules or importlib.util.find_spec(name) is None:
                continue
            stand_in = _Deferred(name)
            sys.modules[name] = stand_in
            parent, _, child = name.rpartition(".")
            if parent:
                # `from parent import child` then takes the stand-in as it is,
                # where the import system would otherwise load the module.
                setattr(sys.modules[parent], child, stand_in)


def load_all() -> None:
    """Load every deferred module now: for long-running processes, which
    would rather pay at start than on some thread mid-flow."""
    for module in list(sys.modules.values()):
        if isinstance(module, _Deferred):
            module._load()
