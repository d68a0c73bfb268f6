"""Loading an application's handler by name (``MODULE:HANDLER``), and forgetting its modules for a reload.

For ``python -m blockws serve MODULE:HANDLER`` (:mod:`blockws.workers`): the
supervisor loads the handler once to check it, and on SIGHUP forgets the
application's modules so that importing them again runs their new code.

Locks: none; the supervisor's main thread only.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from typing import Any

from .connection import WebSocket

__all__ = ["LoadError", "load_handler", "forget_modules"]


class LoadError(Exception):
    """``MODULE:HANDLER`` names no module, no attribute, or something not callable."""


def load_handler(spec: str) -> Callable[[WebSocket], Any]:
    """The callable ``MODULE:HANDLER`` names, importing ``MODULE``.

    The current directory goes first on ``sys.path`` (as with ``python -m``).
    An exception raised by the module's own code propagates as it is.

    Raises:
        LoadError: a malformed spec, a missing module or attribute, an
            attribute that is not callable.
    """
    module_name, sep, attributes = spec.partition(":")
    if not sep or not module_name or not attributes:
        raise LoadError(f"{spec!r} is not MODULE:HANDLER (e.g. app:handler, or package.module:obj.method)")
    here = os.getcwd()
    if here not in sys.path:
        sys.path.insert(0, here)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        # Only the module asked for (or a package on its way): a module it
        # imports that is missing is a bug in it, shown with its traceback.
        if exc.name is None or not (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise
        raise LoadError(f"no module named {exc.name!r} (from {spec!r}; looked in {here} and sys.path)") from None
    target: Any = module
    path = module_name
    for name in attributes.split("."):
        try:
            target = getattr(target, name)
        except AttributeError:
            raise LoadError(f"{path} has no attribute {name!r} (from {spec!r})") from None
        path = f"{path}.{name}" if path != module_name else f"{module_name}:{name}"
    if not callable(target):
        raise LoadError(f"{spec} is a {type(target).__name__}, not a callable taking a WebSocket")
    handler: Callable[[WebSocket], Any] = target
    return handler


def forget_modules(before: set[str]) -> None:
    """Drop the application's modules from ``sys.modules``, so that importing them runs their new code.

    The application's modules: those imported since ``before`` was taken
    (by loading the handler), except blockws's own and those installed in
    the Python installation or a virtual environment (the standard library,
    site-packages): reloading an extension module or a library is not
    safe, and upgrading one needs a full restart anyway.
    """
    installed = tuple(
        os.path.join(os.path.realpath(prefix), "")
        for prefix in {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    )
    for name, module in list(sys.modules.items()):
        if name in before or name == "blockws" or name.startswith("blockws."):
            continue
        path = getattr(module, "__file__", None)
        if path is None or os.path.realpath(path).startswith(installed):
            continue
        del sys.modules[name]
    importlib.invalidate_caches()
