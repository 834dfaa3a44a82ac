"""Task registry (mbmpo_core.registry): entry points, register(), 'module:factory' names, one-line errors."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from mbmpo_core import registry
from mbmpo_core.registry import UnknownTaskError, make_task, register, resolve, task_names

MUJOCO_TASKS = ["Ant-v5", "HalfCheetah-v5", "Hopper-v5", "InvertedPendulum-v5", "Reacher-v5", "Swimmer-v5",
                "Walker2d-v5"]
TOY_MODULE = """
from types import SimpleNamespace


def make(name, horizon):
    return SimpleNamespace(name=name, horizon=horizon, obs_dim=3)


class Factories:
    @staticmethod
    def make(name, horizon):
        return SimpleNamespace(name=name, horizon=2 * horizon, obs_dim=5)


NOT_CALLABLE = 7
"""


@pytest.fixture(autouse=True)
def clean_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with nothing registered in-process (entry points stay)."""
    monkeypatch.setattr(registry, "_registered", {})


@pytest.fixture
def toy_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """An importable module ``mbmpo_toy_tasks`` with factories; its name."""
    (tmp_path / "mbmpo_toy_tasks.py").write_text(textwrap.dedent(TOY_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "mbmpo_toy_tasks", raising=False)
    return "mbmpo_toy_tasks"


def one_line_error(name: str) -> str:
    with pytest.raises(UnknownTaskError) as info:
        make_task(name, horizon=5)
    message = str(info.value)
    assert "\n" not in message and message, message
    return message


def test_entry_point_names_resolve_to_the_sim_tasks() -> None:
    import sim.tasks

    assert set(MUJOCO_TASKS) <= set(task_names()) and task_names() == sorted(task_names())
    assert all(resolve(name) is sim.tasks.make_task for name in MUJOCO_TASKS)
    task = make_task("InvertedPendulum-v5", horizon=7)
    assert (task.name, task.horizon, task.obs_dim, task.act_dim) == ("InvertedPendulum-v5", 7, 4, 1)


def test_register_a_factory() -> None:
    calls: list[tuple[str, int]] = []

    def factory(name: str, horizon: int) -> Any:
        calls.append((name, horizon))
        return SimpleNamespace(name=name, horizon=horizon)

    register("Toy-v0", factory)
    task = make_task("Toy-v0", horizon=12)
    assert calls == [("Toy-v0", 12)] and task.horizon == 12
    assert "Toy-v0" in task_names() and set(MUJOCO_TASKS) < set(task_names())


def test_register_a_module_factory_string(toy_module: str) -> None:
    register("Toy-v1", f"{toy_module}:make")
    register("Toy-v2", f"{toy_module}:Factories.make")  # a dotted attribute path, as entry points allow
    assert toy_module not in sys.modules  # imported when made, not when registered
    assert make_task("Toy-v1", horizon=4).obs_dim == 3
    assert (make_task("Toy-v2", horizon=4).horizon, make_task("Toy-v2", horizon=4).obs_dim) == (8, 5)


def test_registered_name_shadows_an_entry_point() -> None:
    register("Hopper-v5", lambda name, horizon: SimpleNamespace(name="mine", horizon=horizon))
    assert make_task("Hopper-v5", horizon=3).name == "mine"


def test_module_factory_name_resolves_directly(toy_module: str) -> None:
    task = make_task(f"{toy_module}:make", horizon=9)
    assert (task.name, task.horizon, task.obs_dim) == (f"{toy_module}:make", 9, 3)


def test_unknown_name_is_one_line_listing_valid_names() -> None:
    register("Toy-v0", lambda name, horizon: None)
    message = one_line_error("Nope-v0")
    assert message.startswith("unknown task 'Nope-v0'; valid names: ")
    assert all(name in message for name in [*MUJOCO_TASKS, "Toy-v0"]) and "package.module:factory" in message


@pytest.mark.parametrize(("entry_point", "reason"), [
    ("mbmpo_no_such_module:make", "cannot be loaded (No module named 'mbmpo_no_such_module')"),
    ("{module}:missing", "cannot be loaded"),
    ("{module}:NOT_CALLABLE", "is not callable"),
    ("{module}:", "is not 'package.module:factory'"),
    (":make", "is not 'package.module:factory'"),
])
def test_bad_entry_point_string_is_one_line(toy_module: str, entry_point: str, reason: str) -> None:
    entry_point = entry_point.format(module=toy_module)
    message = one_line_error(entry_point)
    assert message.startswith(f"task entry point {entry_point!r} {reason}"), message


def test_bad_declared_entry_point_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_declared", lambda: {"Broken-v0": "mbmpo_no_such_module:make"})
    assert one_line_error("Broken-v0").startswith("task entry point 'mbmpo_no_such_module:make' cannot be loaded")


def test_register_checks_its_arguments() -> None:
    with pytest.raises(UnknownTaskError, match=r"is not 'package\.module:factory'"):
        register("Toy-v0", "no_colon_here")
    with pytest.raises(TypeError, match="got int"):
        register("Toy-v0", 3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="must not be empty"):
        register("", lambda name, horizon: None)
    assert "Toy-v0" not in task_names()
