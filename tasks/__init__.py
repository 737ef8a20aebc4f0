"""invoke tasks. Each module of this package holds the tasks of one area; every task in them
is offered at the top level (``invoke run``, ``invoke test``, ``invoke perf-events``, ...)."""

import importlib
import pkgutil
import sys

from invoke import Collection, Task

ns = Collection()

for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    try:
        _module = importlib.import_module(f"{__name__}.{_info.name}")
    except ImportError as _exc:
        # Task modules must import only the standard library and invoke at the top (a fresh
        # machine has nothing else until `invoke install` ran); say which one did not.
        sys.stderr.write(f"tasks: {_info.name} not loaded ({_exc}); run `invoke install`\n")
        continue
    for _obj in vars(_module).values():
        if isinstance(_obj, Task) and _obj.__module__ == _module.__name__:
            ns.add_task(_obj)
