"""Node parameters: the tables in mbmpo_ros.params agree with config/*.yaml, carry full descriptors, and are the
only way the nodes declare parameters."""

from __future__ import annotations

import ast
import math
import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

pytest.importorskip("rclpy", reason="needs the ROS 2 wheels (pip install -e '.[ros]')")

from rcl_interfaces.msg import ParameterType

from mbmpo_ros.params import (
    CONTROLLER_PARAMS,
    LEARNER_PARAMS,
    SIM_ROBOT_PARAMS,
    ParamSpec,
    descriptor,
)

ROOT = Path(__file__).resolve().parents[2]
TABLES = {"controller": CONTROLLER_PARAMS, "sim_robot": SIM_ROBOT_PARAMS, "learner": LEARNER_PARAMS}
TABLE_NAMES = {"controller": "CONTROLLER_PARAMS", "sim_robot": "SIM_ROBOT_PARAMS", "learner": "LEARNER_PARAMS"}


def yaml_parameters(node: str) -> dict[str, Any]:
    raw = yaml.safe_load((ROOT / "config" / f"{node}.yaml").read_text())
    return dict(raw["/**"]["ros__parameters"])


def allows(spec: ParamSpec, value: Any) -> bool:
    if spec.choices:
        return value in spec.choices
    return (spec.low is None or value >= spec.low) and (spec.high is None or value <= spec.high)


@pytest.mark.parametrize("node", TABLES)
def test_parameter_file_equals_the_declarations(node: str) -> None:
    """Same names, same types (bool, int, float, str, list of str), same values: the code default is the YAML's."""
    from_yaml = yaml_parameters(node)
    table = {spec.name: spec for spec in TABLES[node]}
    assert list(from_yaml) == list(table)  # same names, and in the same order, so the two read alike
    for name, value in from_yaml.items():
        default = table[name].default
        assert type(value) is type(default) and value == default, (node, name, value, default)


def test_controller_defaults_that_used_to_differ_from_the_yaml() -> None:
    table = {spec.name: spec.default for spec in CONTROLLER_PARAMS}
    assert (table["batch_size"], table["obs_clip"], table["task"]) == (200, 100.0, "InvertedPendulum-v5")
    sim = {spec.name: spec.default for spec in SIM_ROBOT_PARAMS}
    assert (sim["lockstep"], sim["lockstep_timeout_s"], sim["task"]) == (True, 1.0, "InvertedPendulum-v5")


@pytest.mark.parametrize("node", TABLES)
def test_every_parameter_is_described_read_only_and_its_default_allowed(node: str) -> None:
    for spec in TABLES[node]:
        desc = descriptor(spec)
        assert desc.name == spec.name and len(desc.description) > 10 and desc.read_only, spec.name
        assert allows(spec, spec.default), spec.name
        if spec.low is not None or spec.high is not None or spec.choices:
            assert desc.additional_constraints == spec.allowed() != "", spec.name


def test_descriptor_types_and_ranges() -> None:
    specs = {spec.name: spec for spec in CONTROLLER_PARAMS}
    batch = descriptor(specs["batch_size"])
    assert batch.type == ParameterType.PARAMETER_INTEGER and not batch.floating_point_range
    assert (batch.integer_range[0].from_value, batch.integer_range[0].to_value) == (1, 2**63 - 1)
    rate = descriptor(specs["rate_hz"])
    assert rate.type == ParameterType.PARAMETER_DOUBLE and not rate.integer_range
    assert (rate.floating_point_range[0].from_value, rate.floating_point_range[0].to_value) == (0.0, math.inf)
    assert descriptor(specs["explore"]).type == ParameterType.PARAMETER_BOOL
    warmup = descriptor(specs["warmup_policy"])
    assert warmup.type == ParameterType.PARAMETER_STRING
    assert warmup.additional_constraints == "one of: hold, random, zero"
    revert = descriptor(specs["revert_margin"])  # any value has a meaning (< 0 = never): no range
    assert not revert.floating_point_range and revert.additional_constraints == ""
    robots = descriptor({s.name: s for s in LEARNER_PARAMS}["robots"])
    assert robots.type == ParameterType.PARAMETER_STRING_ARRAY
    assert descriptor({s.name: s for s in LEARNER_PARAMS}["seed"]).integer_range[0].from_value == -1


@pytest.mark.parametrize("node", TABLES)
def test_nodes_declare_parameters_only_through_their_table(node: str) -> None:
    """No ``declare_parameter`` call outside mbmpo_ros/params.py; each node passes its own table."""
    tree = ast.parse((ROOT / "mbmpo_ros" / f"{node}.py").read_text())
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)]
    called = {c.func.attr if isinstance(c.func, ast.Attribute) else getattr(c.func, "id", "") for c in calls}
    assert not called & {"declare_parameter", "declare_parameters_raw"}, node
    tables = [c.args[1].id for c in calls if getattr(c.func, "id", "") == "declare_parameters"
              and len(c.args) == 2 and isinstance(c.args[1], ast.Name)]
    assert tables == [TABLE_NAMES[node]], (node, tables)


# ------------------------------------------------------------------------------------------ with rclpy
@pytest.fixture
def context() -> Iterator[Any]:
    """An rclpy context on a domain of its own (nodes here only declare parameters; nothing is exchanged)."""
    import rclpy
    from rclpy.context import Context

    ctx = Context()
    rclpy.init(context=ctx, domain_id=1 + random.Random(os.getpid() + 7).randrange(101))
    yield ctx
    rclpy.try_shutdown(context=ctx)


@pytest.mark.ros
def test_a_started_node_shows_descriptors_and_refuses_changes(context: Any) -> None:
    from rclpy.parameter import Parameter

    from mbmpo_ros.sim_robot import SimRobot

    node = SimRobot(context=context, parameter_overrides=[Parameter("seed", value=3)])
    try:
        [desc] = node.describe_parameters(["lockstep_timeout_s"])
        assert desc.read_only and desc.floating_point_range[0].from_value == 0.001
        assert desc.description == {s.name: s for s in SIM_ROBOT_PARAMS}["lockstep_timeout_s"].description
        [result] = node.set_parameters([Parameter("seed", value=5)])
        assert not result.successful and "read-only" in result.reason
        assert node.get_parameter("seed").value == 3 == node.seed
    finally:
        node.destroy_node()


@pytest.mark.ros
@pytest.mark.parametrize(("override", "message"), [
    (("lockstep_timeout_s", 0.0), "parameter lockstep_timeout_s must be >= 0.001"),
    (("rate_hz", 50), "parameter rate_hz: Trying to set parameter 'rate_hz' to '50' of type 'INTEGER', expecting "
                      "type 'DOUBLE'"),
    (("perturbation", "[1, 2]"), "parameter perturbation must be a JSON object, got '[1, 2]'"),
])
def test_a_bad_override_is_one_line(context: Any, override: tuple[str, Any], message: str) -> None:
    from rclpy.parameter import Parameter

    from mbmpo_ros.sim_robot import SimRobot

    with pytest.raises(ValueError) as info:
        SimRobot(context=context, parameter_overrides=[Parameter(override[0], value=override[1])])
    assert str(info.value) == message
