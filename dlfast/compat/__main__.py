"""``python -m dlfast.compat [--keep-dataset] SCRIPT.py [args ...]``: run an unmodified script of
the book with ``common`` (and its modules) resolved to ``dlfast.compat`` and ``dataset`` (with
``dataset.mnist``) to ``dlfast.compat.dataset``, even where the book's own folders are on
``sys.path``. ``--keep-dataset`` leaves ``dataset`` to the script's own files.

The script runs as ``__main__`` with ``sys.argv = [SCRIPT.py, args ...]`` and its folder first on
``sys.path``, as ``python SCRIPT.py`` would run it; its exit status is this command's.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import os
import runpy
import sys

USAGE = "usage: python -m dlfast.compat [--keep-dataset] SCRIPT.py [args ...]"


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Resolves the module names under ``prefixes`` to the same names under ``target``
    (``common.layers`` -> ``dlfast.compat.layers``): the very same module objects."""

    def __init__(self, aliases):
        self.aliases = dict(aliases)            # book package name -> dlfast package name

    def _target(self, name):
        head, _, rest = name.partition(".")
        base = self.aliases.get(head)
        if base is None:
            return None
        return base + ("." + rest if rest else "")

    def find_spec(self, name, path=None, target=None):
        real = self._target(name)
        if real is None or importlib.util.find_spec(real) is None:
            return None
        module = importlib.import_module(real)
        return importlib.util.spec_from_loader(name, self, is_package=hasattr(module, "__path__"))

    def create_module(self, spec):
        return importlib.import_module(self._target(spec.name))

    def exec_module(self, module):
        pass                                     # already executed under its own name


def install(keep_dataset=False):
    """Put the alias finder first on ``sys.meta_path`` (returns it; ``uninstall`` removes it)."""
    aliases = {"common": "dlfast.compat"}
    if not keep_dataset:
        aliases["dataset"] = "dlfast.compat.dataset"
    finder = _Alias(aliases)
    for name in list(sys.modules):               # a book module imported before: forget it
        if name.partition(".")[0] in aliases:
            del sys.modules[name]
    sys.meta_path.insert(0, finder)
    return finder


def uninstall(finder):
    """Remove ``finder`` and the aliased names it put in ``sys.modules``."""
    if finder in sys.meta_path:
        sys.meta_path.remove(finder)
    for name in list(sys.modules):
        if name.partition(".")[0] in finder.aliases:
            del sys.modules[name]


def main(argv=None):
    """Run the script named in ``argv`` (default ``sys.argv[1:]``); returns its exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    keep_dataset = False
    while argv and argv[0].startswith("-"):
        opt = argv.pop(0)
        if opt == "--keep-dataset":
            keep_dataset = True
        elif opt in ("-h", "--help"):
            print(USAGE)
            print(__doc__.split("\n\n", 1)[0].split("\n", 1)[1].strip())
            return 0
        else:
            print(f"{USAGE}\nunknown option {opt!r}", file=sys.stderr)
            return 2
    if not argv:
        print(USAGE, file=sys.stderr)
        return 2
    script = argv[0]
    if not os.path.isfile(script):
        print(f"{USAGE}\nno such script: {script!r}", file=sys.stderr)
        return 2
    folder = os.path.dirname(os.path.abspath(script))
    finder = install(keep_dataset)
    saved_argv, saved_path = sys.argv[:], sys.path[:]
    sys.argv = list(argv)
    if sys.path and sys.path[0] in ("", os.getcwd()):
        sys.path[0] = folder                     # as `python SCRIPT.py` sets it
    else:
        sys.path.insert(0, folder)
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as exc:
        code = exc.code
        if code is None or isinstance(code, int):
            return code or 0
        print(code, file=sys.stderr)
        return 1
    finally:
        sys.argv, sys.path[:] = saved_argv, saved_path
        uninstall(finder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
