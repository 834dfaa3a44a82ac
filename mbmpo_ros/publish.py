"""Saved policies on the robot: ``mbmpo publish RUN_DIR|policy.onnx`` and the controller's ``policy_file``.

    mbmpo publish runs/arm/policy.onnx [--task NAME] [--duration SECONDS]

reads the policy bundle (``policy.onnx`` and the inner-step graph it names beside it; a run directory means its
``policy.onnx``), validates it as a controller would (ONNX loads, metadata consistent, test inference finite;
``--task`` also checks the task it was trained on), then publishes it on ``/mbmpo/policy`` with the policy QoS
(RELIABLE, TRANSIENT_LOCAL, depth 1: latched) and stays up, so that controllers that start later get it too, until
Ctrl-C (or ``--duration``). A file that does not validate is never published: one line on stderr, exit code 2.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from mbmpo_core.bundle import POLICY_FILE, PolicyBundle
from mbmpo_core.onnx_runtime import OnnxPolicy, PolicyValidationError, validate_bundle

POLICY_TOPIC = "/mbmpo/policy"


def policy_file(source: str | Path) -> Path:
    """``source`` itself if it is a file, else ``source/policy.onnx`` (a run directory)."""
    path = Path(source).expanduser()
    return path / POLICY_FILE if path.is_dir() else path


def read_saved_policy(source: str | Path, expected_task: str | None = None, expected_obs_names: list[str] | None = None,
                      expected_joint_names: list[str] | None = None) -> tuple[PolicyBundle, OnnxPolicy]:
    """The validated bundle of a saved policy (``RUN_DIR`` or ``policy.onnx``) and the policy loaded from it.

    Raises:
        PolicyValidationError: a missing file or a policy that must not run, with a one-line reason.
    """
    path = policy_file(source)
    if not path.is_file():
        raise PolicyValidationError(f"{source}: no policy file (expected a policy.onnx or a run directory)")
    bundle = PolicyBundle.from_file(path)
    policy = validate_bundle(bundle, expected_task, expected_obs_names, expected_joint_names)
    return bundle, policy


def publish_policy(source: str, task: str | None = None, duration_s: float = 0.0) -> int:
    """``mbmpo publish``: validate, publish latched, stay up; returns the exit code (2: a bad policy file)."""
    try:
        bundle, _ = read_saved_policy(source, expected_task=task)
    except PolicyValidationError as exc:
        print(f"mbmpo publish: error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    import rclpy
    from rclpy.executors import ExternalShutdownException
    from std_msgs.msg import UInt8MultiArray

    from mbmpo_ros.codec import encode_policy
    from mbmpo_ros.qos import POLICY_QOS

    rclpy.init()
    node = rclpy.create_node("mbmpo_publish")
    try:
        node.create_publisher(UInt8MultiArray, POLICY_TOPIC, POLICY_QOS).publish(encode_policy(bundle))
        meta = bundle.metadata
        print(f"published policy {bundle.policy_id[:12]} (task {meta.get('task')}, learner iteration "
              f"{meta.get('learner_iteration')}) latched on {POLICY_TOPIC}; "
              f"{'Ctrl-C to stop' if duration_s <= 0 else f'for {duration_s:g} s'}", flush=True)
        deadline = time.monotonic() + duration_s if duration_s > 0 else float("inf")
        while rclpy.ok() and time.monotonic() < deadline:
            rclpy.spin_once(node, timeout_sec=0.1)  # serves late-joining subscribers (transient local)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0
