"""Tasks by name: the one place nodes, the CLI and the trainer turn a ``task`` string into a :class:`TaskSpec`.

A name resolves, in this order, to

* a task registered in this process with :func:`register` (tests, notebooks);
* a task an installed package declares under the ``mbmpo.tasks`` entry-point group (``sim`` declares the MuJoCo
  tasks this way in ``setup.py``; a lab's robot package declares its own);
* ``"package.module:factory"``: the factory itself, as gymnasium's ``register(entry_point=...)`` takes it;
* a path ending in ``.yaml`` / ``.yml``: a robot's task file (:mod:`mbmpo_core.task_file`), checked when resolved.

A factory is called as ``factory(name, horizon=horizon)`` (``factory(name)`` for the task's own horizon) and
returns an object with :class:`TaskSpec`'s fields.
This module imports no simulator and no torch: a task's package is imported only when that task is made, so a
robot whose task is not a MuJoCo model never loads MuJoCo, and the controller stays torch-free.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # mbmpo_core.task imports torch, which the controller (a user of this module) must not load
    from mbmpo_core.task import TaskSpec

ENTRY_POINT_GROUP = "mbmpo.tasks"
TaskFactory = Callable[..., Any]

_registered: dict[str, str | TaskFactory] = {}


class UnknownTaskError(ValueError):
    """A task name that resolves to nothing, or an entry point that cannot be loaded; the message is one line."""


def register(name: str, entry_point: str | TaskFactory) -> None:
    """Make ``name`` resolve to ``entry_point`` (a factory or a ``"package.module:factory"`` string).

    A string is checked for its form here and imported only when the task is made.
    """
    if not name:
        raise ValueError("a task name must not be empty")
    if isinstance(entry_point, str):
        _split(entry_point)
    elif not callable(entry_point):
        raise TypeError(f"task {name!r}: entry point must be a factory or 'package.module:factory', "
                        f"got {type(entry_point).__name__}")
    _registered[name] = entry_point


def _declared() -> dict[str, str]:
    """Entry points of the ``mbmpo.tasks`` group: task name -> ``"module:factory"``."""
    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


def task_names() -> list[str]:
    """Every name that resolves without a ``module:factory`` string, sorted."""
    return sorted({*_declared(), *_registered})


def _split(entry_point: str) -> tuple[str, str]:
    module_name, _, attr = entry_point.partition(":")
    if not module_name.strip() or not attr.strip():
        raise UnknownTaskError(f"task entry point {entry_point!r} is not 'package.module:factory'")
    return module_name.strip(), attr.strip()


def _load(entry_point: str) -> TaskFactory:
    module_name, attr = _split(entry_point)
    try:
        target: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UnknownTaskError(f"task entry point {entry_point!r} cannot be loaded ({reason})") from None
    if not callable(target):
        raise UnknownTaskError(f"task entry point {entry_point!r} is not callable")
    return target


def resolve(name: str) -> TaskFactory:
    """The factory for ``name``; :class:`UnknownTaskError` (one line) if nothing provides it.

    Resolving imports the task's module (an unknown or broken name fails here) but builds no task.
    """
    if name in _registered:
        found = _registered[name]
        return _load(found) if isinstance(found, str) else found
    declared = _declared()
    if name in declared:
        return _load(declared[name])
    if name.endswith((".yaml", ".yml")):
        from mbmpo_core import task_file

        try:
            task_file.load_task_file(name)  # a bad file fails here, before any node starts
        except task_file.TaskFileError as exc:
            raise UnknownTaskError(str(exc)) from None
        return task_file.load_task_file
    if ":" in name:
        return _load(name)
    known = ", ".join(task_names()) or "none (is the mbmpo_ros package installed? pip install -e .)"
    raise UnknownTaskError(f"unknown task {name!r}; valid names: {known} (or 'package.module:factory', or a robot's "
                           "task file: a path ending in .yaml)")


def make_task(name: str, horizon: int | None = None) -> TaskSpec:
    """Build task ``name`` with episodes of ``horizon`` steps (None: the task's own, e.g. a task file's; 1000 for
    the MuJoCo tasks); see the module docstring for how it resolves."""
    factory = resolve(name)
    task: TaskSpec = factory(name) if horizon is None else factory(name, horizon=horizon)
    return task
