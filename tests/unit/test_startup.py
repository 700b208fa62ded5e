"""`import livemig` (which every `livemig.X` import runs first) loads none of
the library until one of its names is used: see livemig/__init__.py."""
from __future__ import annotations

import gc
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def python(code: str) -> str:
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_import_livemig_loads_its_api_on_first_use():
    out = python("import sys, livemig\n"
                 "before = 'sqlalchemy' in sys.modules or 'taskflow.engines' in sys.modules\n"
                 "ctx = livemig.admin_context('ops')\n"
                 "from livemig import migrate, MigrationFailed\n"
                 "after = 'taskflow.engines' in sys.modules\n"
                 "print(before, ctx.user, migrate.__module__, MigrationFailed.__module__, after)")
    assert out == "False ops livemig.api livemig.errors True"


def test_the_lab_subreaper_loads_no_library():
    out = python("import sys, livemig.lab.subreaper\n"
                 "print(sorted(m for m in ('sqlalchemy', 'taskflow', 'libvirt', 'kazoo') if m in sys.modules))")
    assert out == "[]"


def test_an_unknown_name_is_an_attribute_error():
    import livemig

    with pytest.raises(AttributeError, match="no attribute 'nonesuch'"):
        livemig.nonesuch  # noqa: B018
    assert set(livemig.__all__) <= set(dir(livemig))


def test_import_livemig_puts_no_stand_in_modules_in_sys_modules():
    out = python("import sys, types, livemig\n"
                 "print([n for n, m in sys.modules.items() if type(m) is not types.ModuleType"
                 " and type(m).__module__.startswith('livemig')])")
    assert out == "[]"


def test_the_command_leaves_the_garbage_collector_alone():
    # _exit is where every command ends; the stand-in reports the collector's
    # state there instead of leaving the process.
    out = python("import gc, sys\n"
                 "import livemig.cli.main as command\n"
                 "command._exit = lambda code: print(code, gc.isenabled(), gc.get_freeze_count())\n"
                 "sys.argv = ['livemig', '--help']\n"
                 "from livemig.cli.entry import main\n"
                 "main()\n")
    assert out.splitlines()[-1] == "0 True 0"
    assert gc.isenabled()
