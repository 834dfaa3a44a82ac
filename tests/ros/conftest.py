"""Fixtures for tests over real rclpy + DDS.

Notes on the PyPI ROS 2 wheels:

- ``ros_wheels_bootstrapper.pth`` re-executes the interpreter once at startup with ``LD_LIBRARY_PATH``
  pointing at the wheels' bundled libraries (guarded by ``_ROS_WHEELS_BOOTSTRAP_COMPLETE``). pytest is
  therefore already running in the right environment when it imports this file; nothing special is needed,
  and subprocesses inherit the variables (so they skip the re-exec).
- Every test gets its own ``rclpy.Context`` initialised with its own domain id, so concurrent test runs on
  the same host (and the tests of one run) cannot see each other's topics. Discovery is kept on this host
  (``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST``) unless the caller already chose otherwise.
"""

from __future__ import annotations

import itertools
import os
import random
import signal
from collections.abc import Callable, Iterator
from typing import Any

import pytest

try:
    import rclpy
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
except ImportError as exc:  # the whole folder needs rclpy
    _IMPORT_ERROR: ImportError | None = exc
else:
    _IMPORT_ERROR = None

os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")

# Domain ids 1..101 (0 is everyone's default, >101 collides with ephemeral ports on Linux). A random
# start per process spreads concurrent runs; the counter keeps the tests of one run apart.
_DOMAINS = itertools.count(random.Random(os.getpid()).randrange(100))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip every test in this folder, with the reason, when rclpy cannot be imported."""
    if _IMPORT_ERROR is None:
        return
    skip = pytest.mark.skip(reason=f"rclpy not importable (install the ROS 2 wheels): {_IMPORT_ERROR}")
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(skip)


def next_domain_id() -> int:
    """A domain id in 1..101 not used before by this process."""
    return 1 + next(_DOMAINS) % 101


class RosGraph:
    """One rclpy context on its own domain, plus helpers to make nodes and spin until a condition holds."""

    def __init__(self, domain_id: int) -> None:
        self.domain_id = domain_id
        self.context = Context()
        rclpy.init(context=self.context, domain_id=domain_id)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.nodes: list[Any] = []

    def node(self, name: str) -> Any:
        node = Node(name, context=self.context)
        self.nodes.append(node)
        self.executor.add_node(node)
        return node

    def spin_until(self, condition: Callable[[], bool], timeout: float) -> bool:
        """Spin in short steps until ``condition()`` is true or ``timeout`` seconds pass; returns it."""
        import time

        deadline = time.monotonic() + timeout
        while not condition():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self.executor.spin_once(timeout_sec=min(0.05, remaining))
        return True

    def close(self) -> None:
        self.executor.shutdown()
        for node in self.nodes:
            node.destroy_node()
        self.context.try_shutdown()


@pytest.fixture
def ros_graph() -> Iterator[RosGraph]:
    """A fresh context on a fresh domain id, shut down after the test."""
    graph = RosGraph(next_domain_id())
    try:
        yield graph
    finally:
        graph.close()


@pytest.fixture
def domain_id() -> int:
    """A fresh domain id for a test that starts node processes itself (``ROS_DOMAIN_ID``)."""
    return next_domain_id()


@pytest.fixture(autouse=True)
def _ctrl_c_restored() -> Iterator[None]:
    """A node run in this process ignores SIGINT while it stops (mbmpo_ros.spin): put Ctrl-C back afterwards, or
    every process a later test starts would inherit the ignored SIGINT."""
    yield
    signal.signal(signal.SIGINT, signal.default_int_handler)

