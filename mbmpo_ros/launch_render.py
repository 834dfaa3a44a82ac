"""The launch graph (:mod:`mbmpo_ros.graph`) as ``launch`` / ``launch_ros`` actions, for ``launch/*.launch.py``.

Each :class:`~mbmpo_ros.graph.NodeDescription` becomes a ``launch_ros`` ``Node`` (a ``LifecycleNode`` for a
managed node), parameter files first, then the overrides, plus an ``OnProcessExit`` handler that makes the launch
say what went wrong:

* a node that exits with an error (non-zero code) while the launch is running raises :class:`NodeFailed` in
  launch's event loop, which prints it as one line (``Caught exception in launch ...: robot_0/controller exited
  with code 2``), shuts every other node down and makes ``ros2 launch`` exit 1;
* the ``finisher`` node (the learner, which exits 0 when its step budget is reached) ending cleanly shuts the
  launch down with exit code 0.

Exits while the launch is already shutting down (Ctrl-C, a failed node) are not reported again. Only the launch
files import this module: ``launch`` and ``launch_ros`` are ROS 2 distribution packages, not on PyPI.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from launch.actions import EmitEvent, RegisterEventHandler
from launch.event_handlers import OnProcessExit
from launch.events import Shutdown
from launch_ros.actions import LifecycleNode, Node

from mbmpo_ros.graph import NodeDescription


class NodeFailed(RuntimeError):
    """A node of the launch exited with an error; the message is one line."""


def render(node: NodeDescription) -> Any:
    """``node`` as a launch_ros action: parameter files first, then the overrides."""
    kind = LifecycleNode if node.lifecycle else Node
    return kind(package=node.package, executable=node.executable, name=node.name, namespace=node.namespace or None,
                output="screen", parameters=[*map(str, node.parameter_files), dict(node.overrides)])


def supervised(nodes: Sequence[NodeDescription], finisher: str = "") -> list[Any]:
    """Every node as an action followed by its exit handler (see module docstring); ``finisher`` is the label of
    the node whose clean exit ends the launch ('' = none)."""
    actions: list[Any] = []
    for node in nodes:
        action = render(node)
        actions += [action, RegisterEventHandler(OnProcessExit(target_action=action,
                                                               on_exit=_on_exit(node.label, node.label == finisher)))]
    return actions


def _on_exit(label: str, finishes: bool) -> Any:
    def on_exit(event: Any, context: Any) -> list[Any] | None:
        if context.is_shutdown:
            return None  # stopping anyway (Ctrl-C, or another node failed): nothing new to report
        if event.returncode != 0:
            raise NodeFailed(f"{label} exited with code {event.returncode}; stopping the launch")
        if finishes:
            return [EmitEvent(event=Shutdown(reason=f"{label} finished"))]
        return None

    return on_exit
