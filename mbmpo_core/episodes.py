"""Episodes of different lengths as padded arrays (numpy only: the trainer and the torch-free controller share it)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def pad_episodes(
    episodes: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], horizon: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``[(obs [n_i, obs_dim], act [n_i, act_dim], rewards [n_i]), ...]`` -> ``obs [E, H, obs_dim],
    act [E, H, act_dim], rewards [E, H], mask [E, H]`` (float64), zero-padded with mask 0 after each episode.

    ``H`` is ``horizon`` (default: the longest episode); padding further does not change advantages on the
    valid steps (the mask cuts every sum).
    """
    if not episodes:
        raise ValueError("no episodes to pad")
    lengths = [len(rewards) for _, _, rewards in episodes]
    steps = max(lengths) if horizon is None else horizon
    if max(lengths) > steps:
        raise ValueError(f"an episode of {max(lengths)} steps exceeds the horizon {steps}")
    obs_dim, act_dim = episodes[0][0].shape[1], episodes[0][1].shape[1]
    obs = np.zeros((len(episodes), steps, obs_dim))
    act = np.zeros((len(episodes), steps, act_dim))
    rewards = np.zeros((len(episodes), steps))
    mask = np.zeros((len(episodes), steps))
    for i, ((o, a, r), n) in enumerate(zip(episodes, lengths, strict=True)):
        obs[i, :n], act[i, :n], rewards[i, :n], mask[i, :n] = o, a, r, 1.0
    return obs, act, rewards, mask
