"""The robots' own episode returns for ROS-mode progress rows (mbmpo_ros.robot_returns)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from mbmpo_ros.robot_returns import robot_returns


def rows(*episodes: tuple[str, int, list[float], bool, bool, str], session: str = "s") -> dict[str, np.ndarray]:
    """Store columns for episodes given as (robot, episode, rewards, done at the end, adapted, policy id)."""
    out: dict[str, list[Any]] = {k: [] for k in ("robot", "session", "episode", "step", "reward", "done",
                                                  "adapted", "policy_id")}
    for robot, episode, rewards, done, adapted, policy in episodes:
        for t, r in enumerate(rewards):
            out["robot"].append(robot)
            out["session"].append(session)
            out["episode"].append(episode)
            out["step"].append(t)
            out["reward"].append(r)
            out["done"].append(done and t == len(rewards) - 1)
            out["adapted"].append(adapted)
            out["policy_id"].append(policy)
    return {k: np.asarray(v) for k, v in out.items()}


def concat(*parts: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def test_pre_and_post_adaptation_returns_of_complete_episodes() -> None:
    data = rows(("r0", 0, [1.0, 1.0], True, False, "p"),        # done: 2.0, theta
                ("r1", 0, [3.0, 3.0, 3.0], False, False, "p"),  # reached horizon 3: 9.0, theta
                ("r0", 1, [5.0, 5.0, 5.0], False, True, "p"),   # horizon: 15.0, adapted
                ("r1", 1, [7.0], False, True, "p"))             # still running: not counted
    got = robot_returns(data, since=0, policy_id="p", horizon=3)
    assert (got.pre, got.episodes_pre, got.post, got.episodes_post) == (5.5, 2, 15.0, 1)


def test_only_episodes_completed_since_the_last_iteration_and_of_the_newest_policy() -> None:
    old = rows(("r0", 0, [1.0] * 4, False, False, "warmup"), ("r0", 1, [2.0, 2.0], False, False, "warmup"))
    new = rows(("r0", 1, [2.0, 2.0], True, False, "warmup"),   # ends after `since`: counted (8.0) unless p has some
               ("r0", 2, [9.0], True, False, "p"), ("r0", 3, [4.0, 4.0], False, False, "p"))
    data = concat(old, new)
    since = len(old["reward"])
    got = robot_returns(data, since=since, policy_id="p", horizon=10)
    # Episode 3 is cut short (no done, under the horizon) and no later one started: not complete yet.
    assert (got.pre, got.episodes_pre) == (9.0, 1) and math.isnan(got.post) and got.episodes_post == 0
    warmup_only = robot_returns(data, since=since, policy_id="other", horizon=10)
    assert (warmup_only.pre, warmup_only.episodes_pre) == ((8.0 + 9.0) / 2, 2)


def test_a_later_episode_completes_an_earlier_one_per_robot_session() -> None:
    first = rows(("r0", 0, [1.0, 1.0], False, False, "p"), session="a")
    second = rows(("r0", 0, [6.0], False, False, "p"), session="b")  # the node restarted: a new session
    data = concat(first, second)
    assert robot_returns(data, since=0, policy_id="p", horizon=99).episodes_pre == 0
    third = rows(("r0", 1, [1.0], False, False, "p"), session="a")
    got = robot_returns(concat(first, second, third), since=0, policy_id="p", horizon=99)
    assert (got.pre, got.episodes_pre) == (2.0, 1)


def test_nothing_new_is_nan() -> None:
    data = rows(("r0", 0, [1.0], True, False, "p"))
    got = robot_returns(data, since=1, policy_id="p", horizon=5)
    assert math.isnan(got.pre) and math.isnan(got.post) and got.episodes_pre == got.episodes_post == 0
    empty = {k: v[:0] for k, v in data.items()}
    assert math.isnan(robot_returns(empty, since=0, policy_id="p", horizon=5).pre)
