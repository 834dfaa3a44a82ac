"""The robots' own episode returns for a ROS-mode ``progress.csv`` row (pure numpy, no ROS).

A simulated run evaluates its policies on fresh episodes; the learner node has no env, so its ``return_pre`` and
``return_post`` come from the episodes the robots ran: every episode that completed since the last iteration
(stored rows ``since:`` hold its end), split by the ``adapted`` column that the controllers set on rows run by
parameters adapted online. ``return_pre``: mean return of episodes run by the meta-policy; ``return_post``: of
episodes run by its adapted parameters. Both prefer the episodes of ``policy_id`` (the last published policy)
when there are any: right after a new policy arrives, robots still finish episodes of the previous one. So the
row of iteration ``k`` reports the policy of iteration ``k - 1``, the one whose data iteration ``k`` trained on
(iteration 0 reports the warm-up episodes as ``return_pre``).

An episode is a run of rows with one (robot, session, episode) key. It is complete when a row ends it (``done``),
when it reached the ``horizon``, or when a later episode of the same robot session started (a time limit or
an episode cut short by a hold); the episode a robot is in the middle of does not count.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RobotReturns:
    """Mean returns (NaN if none) and how many complete episodes each mean is over."""

    pre: float = float("nan")
    post: float = float("nan")
    episodes_pre: int = 0
    episodes_post: int = 0


def robot_returns(data: Mapping[str, np.ndarray], since: int, policy_id: str, horizon: int) -> RobotReturns:
    """Returns of the episodes completed in rows ``since:`` of ``data`` (columns of the transition store:
    ``robot``, ``session``, ``episode``, ``step``, ``reward``, ``done``, ``adapted``, ``policy_id``; ``[N]``)."""
    n = len(data["reward"])
    if n == 0 or since >= n:
        return RobotReturns()
    session = data.get("session", np.full(n, "", dtype=object))
    streams, stream_of_row = np.unique(np.char.add(np.char.add(np.asarray(data["robot"], str), "\x1f"),
                                                   np.asarray(session, str)), return_inverse=True)
    episode = np.asarray(data["episode"], np.int64)
    episode_key = stream_of_row.astype(np.int64) * (int(episode.max()) + 2) + (episode + 1)
    keys, row_episode = np.unique(episode_key, return_inverse=True)
    count = len(keys)
    rows = np.bincount(row_episode, minlength=count)
    total = np.bincount(row_episode, weights=np.asarray(data["reward"], np.float64), minlength=count)
    ended = np.bincount(row_episode, weights=np.asarray(data["done"], np.float64), minlength=count) > 0
    adapted_rows = np.bincount(row_episode, weights=np.asarray(data["adapted"], np.float64), minlength=count)
    last_row = np.full(count, -1)
    np.maximum.at(last_row, row_episode, np.arange(n))
    last_step = np.full(count, -1)
    np.maximum.at(last_step, row_episode, np.asarray(data["step"], np.int64))
    stream = keys // (int(episode.max()) + 2)
    newest = np.full(len(streams), -1)
    np.maximum.at(newest, stream, keys)
    complete = ended | (last_step >= horizon - 1) | (keys < newest[stream])
    counted = complete & (last_row >= since)
    policy = np.asarray(data["policy_id"], str)[last_row]
    own = policy == policy_id
    pre = _prefer(counted & (adapted_rows == 0), own)
    post = _prefer(counted & (adapted_rows == rows), own)
    return RobotReturns(pre=_mean(total[pre]), post=_mean(total[post]), episodes_pre=int(pre.sum()),
                        episodes_post=int(post.sum()))


def _prefer(episodes: np.ndarray, own: np.ndarray) -> np.ndarray:
    """The episodes of the last published policy if there are any, else all."""
    return episodes & own if (episodes & own).any() else episodes


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if values.size else float("nan")
