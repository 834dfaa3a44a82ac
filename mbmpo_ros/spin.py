"""Run one node until Ctrl-C or an external shutdown, then clean up: shared by the node entry points."""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable

import rclpy
from rclpy.executors import Executor, ExternalShutdownException
from rclpy.impl.implementation_singleton import rclpy_implementation as _rclpy
from rclpy.node import Node


def stop_on_sigint() -> threading.Event:
    """From now on Ctrl-C sets the returned event instead of raising ``KeyboardInterrupt`` wherever the main thread
    happens to be (inside rclpy's executor it left half-built tasks that print tracebacks when collected). The
    caller's spin loop checks the event between ``spin_once`` calls. Only the main thread can install it."""
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, lambda signum, frame: stop.set())
    return stop


def spin_until_shutdown(node: Node, executor: Executor) -> None:
    """Spin ``node`` on ``executor``; a SIGINT/SIGTERM or ``rclpy.shutdown`` ends it cleanly.

    Ctrl-C sets a flag the loop checks (:func:`stop_on_sigint`); SIGTERM goes to rclpy's signal handler, which
    shuts the context down; if that happens while the executor builds its wait set, rclpy raises a plain
    ``RCLError`` instead of ``ExternalShutdownException``: that is a clean exit too, as long as the context is no
    longer valid.
    """
    executor.add_node(node)
    stop = stop_on_sigint()
    try:
        while rclpy.ok(context=node.context) and not stop.is_set():
            executor.spin_once(timeout_sec=0.1)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except _rclpy.RCLError:
        if not shut_down_meanwhile(node):
            raise
    finally:
        ignore_sigint()  # the launch relays a second Ctrl-C: it must not cut the cleanup short with a traceback
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
        ignore_sigint()  # rclpy's shutdown puts Python's Ctrl-C handler back


def ignore_sigint() -> None:
    """From now on Ctrl-C does nothing in this process (it is stopping already); only the main thread can say so."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def shut_down_meanwhile(node: Node) -> bool:
    """True if ``node``'s context was shut down (Ctrl-C): an RCLError from the executor is then a clean exit."""
    return not rclpy.ok(context=node.context)


def run_node(name: str, make_node: Callable[[], Node], executor: Executor) -> int:
    """Build a node and spin it; a bad parameter (``ValueError`` while building) is one line and exit code 2.
    Ctrl-C while the node is being built ends it quietly (exit code 0), as it does later."""
    try:
        node = make_node()
    except KeyboardInterrupt:
        ignore_sigint()
        rclpy.try_shutdown()
        ignore_sigint()
        return 0
    except Exception as exc:
        if not rclpy.ok():  # Ctrl-C shut the context down under the constructor (e.g. RCLError on a publish)
            ignore_sigint()
            rclpy.try_shutdown()
            return 0
        if not isinstance(exc, ValueError):
            raise
        print(f"{name}: error: {str(exc).splitlines()[0]}", file=sys.stderr)
        rclpy.try_shutdown()
        return 2
    spin_until_shutdown(node, executor)
    return 0
