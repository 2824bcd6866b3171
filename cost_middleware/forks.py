"""Surviving ``fork``: objects holding threads, locks, files or connections reset in the child.

One mechanism everywhere: ``os.register_at_fork`` hooks, which run once, in the child, and
cost nothing on the paths that use those objects (comparing ``os.getpid()`` at each use
would cost a system call per call, on the request path per record). A child must never use
or close what it inherited from the parent (a socket, a SQLite lock, a locked file): it
forgets it, and :func:`abandon` keeps it referenced so no finalizer runs in the child either.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

_T = TypeVar("_T")

#: Live objects and the function that resets each in a child (weakly held: an object that is
#: gone needs no reset).
_resets: weakref.WeakKeyDictionary[Any, Callable[[Any], None]] = weakref.WeakKeyDictionary()
#: What children inherited and must neither use nor release.
_abandoned: list[object] = []


def reset_in_child(obj: _T, reset: Callable[[_T], None]) -> None:
    """Call ``reset(obj)`` in every process forked while ``obj`` is alive.

    ``reset`` is a plain function (e.g. ``Spool._after_fork``), never a bound method, which
    would keep ``obj`` alive for ever.
    """
    _resets[obj] = reset


def abandon(inherited: object) -> None:
    """Keep a parent's connection referenced for the child's lifetime: its finalizer would
    close or reset what the parent still uses."""
    _abandoned.append(inherited)


def _after_fork_in_child() -> None:
    for obj, reset in list(_resets.items()):
        reset(obj)


os.register_at_fork(after_in_child=_after_fork_in_child)
