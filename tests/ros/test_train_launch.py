"""launch_testing of launch/train.launch.py with one simulated robot, as ``ros2 launch`` runs it.

Needs ``launch_testing`` (ROS 2 distribution package, not on PyPI; ``/work/shared/tools/make_rosvenv.sh`` builds an
environment with it): skipped with that reason elsewhere. The launch: ``config:=quickstart`` (a bare name: the
package's config/), ``rate_hz:=200``, ``steps:=1500`` — the learner trains after the 1000 warm-up steps, once more at
1500 steps, then exits 0, which ends the launch. While it runs: both nodes report on /diagnostics under their
names and the controller validates and runs the learner's first policy. After it: every process exited 0, no
traceback anywhere, and the run directory holds two progress rows with the robot's own returns.
"""

from __future__ import annotations

import csv
import math
import tempfile
import time
import unittest
from pathlib import Path
from typing import Any

import pytest
from conftest import next_domain_id
from launch_env import ROOT, ament_prefix

SKIP_REASON = "launch_testing is not installed (ROS 2 distribution package, not on PyPI)"

try:
    import launch_testing
    import launch_testing.actions
    import launch_testing.asserts
    from launch import LaunchDescription
    from launch.actions import IncludeLaunchDescription, SetEnvironmentVariable
    from launch.launch_description_sources import PythonLaunchDescriptionSource
except ImportError:
    pytest.skip(SKIP_REASON, allow_module_level=True)

DOMAIN_ID = next_domain_id()
RUN_DIR = Path(tempfile.mkdtemp(prefix="mbmpo-launch-test-")) / "run"


@pytest.mark.launch_test
@pytest.mark.ros
def generate_test_description() -> Any:
    """train.launch.py (the source tree's) with one simulated robot on its own domain, then ReadyToTest."""
    environment = {**ament_prefix(), "ROS_DOMAIN_ID": str(DOMAIN_ID), "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
                   "OMP_NUM_THREADS": "1"}
    arguments = {"sim": "true", "num_robots": "1", "config": "quickstart", "rate_hz": "200", "steps": "1500",
                 "run_dir": str(RUN_DIR)}
    include = IncludeLaunchDescription(PythonLaunchDescriptionSource(str(ROOT / "launch" / "train.launch.py")),
                                       launch_arguments=arguments.items())
    return LaunchDescription([*(SetEnvironmentVariable(k, v) for k, v in environment.items()), include,
                              launch_testing.actions.ReadyToTest()])


class TestWhileRunning(unittest.TestCase):
    """Active tests: a probe node on the launch's domain."""

    def test_1_learner_and_controller_report_and_the_first_policy_runs(self) -> None:
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor

        from mbmpo_ros.qos import DIAGNOSTICS_QOS

        context = Context()
        rclpy.init(context=context, domain_id=DOMAIN_ID)
        try:
            node = rclpy.create_node("launch_test_probe", context=context)
            executor = SingleThreadedExecutor(context=context)
            executor.add_node(node)
            latest: dict[str, dict[str, str]] = {}

            def on_diagnostics(msg: DiagnosticArray) -> None:
                for status in msg.status:
                    latest[status.name] = {kv.key: kv.value for kv in status.values}

            node.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, DIAGNOSTICS_QOS)

            def policy_running() -> bool:
                learner, controller = latest.get("mbmpo/learner", {}), latest.get("mbmpo/controller/robot_0", {})
                published = learner.get("last_policy_id", "")
                return bool(published) and controller.get("policy_id") == published

            deadline = time.monotonic() + 240.0
            while not policy_running() and time.monotonic() < deadline:
                executor.spin_once(timeout_sec=0.1)
            self.assertTrue(policy_running(), f"statuses seen: {sorted(latest)}")
            self.assertEqual(latest["mbmpo/controller/robot_0"]["rejected_policies"], "0")
        finally:
            context.try_shutdown()

    def test_2_the_learner_ends_the_launch_at_its_step_budget(self, proc_info: Any) -> None:
        proc_info.assertWaitForShutdown(process="learner", timeout=240)


@launch_testing.post_shutdown_test()
class TestAfterShutdown(unittest.TestCase):
    """The learner's step budget ended the launch: clean exits, and the run's report."""

    def test_every_process_exited_cleanly_without_a_traceback(self, proc_info: Any, proc_output: Any) -> None:
        launch_testing.asserts.assertExitCodes(proc_info)  # 0 for every node
        for output in proc_output:
            self.assertNotIn("Traceback", output.text.decode(errors="replace"))

    def test_progress_rows_carry_the_robots_returns(self) -> None:
        with (RUN_DIR / "progress.csv").open() as f:
            rows = list(csv.DictReader(f))
        self.assertEqual([float(r["iteration"]) for r in rows], [0.0, 1.0])
        self.assertGreaterEqual(float(rows[-1]["real_steps"]), 1500)
        self.assertTrue(all(math.isfinite(float(r["return_pre"])) for r in rows), rows)
        self.assertTrue((RUN_DIR / "learning_curve.png").is_file() and (RUN_DIR / "policy.onnx").is_file())
