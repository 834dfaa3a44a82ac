"""Padding real episodes: the trainer and the controller's adaptation share it."""

from __future__ import annotations

import numpy as np
import pytest

from mbmpo_core.episodes import pad_episodes


def _episode(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 3)), rng.normal(size=(n, 2)), rng.normal(size=n)


def test_pads_to_longest_or_horizon_with_mask() -> None:
    eps = [_episode(4, 0), _episode(2, 1)]
    obs, act, rew, mask = pad_episodes(eps)
    assert obs.shape == (2, 4, 3) and act.shape == (2, 4, 2) and rew.shape == mask.shape == (2, 4)
    np.testing.assert_array_equal(mask, [[1, 1, 1, 1], [1, 1, 0, 0]])
    np.testing.assert_array_equal(obs[1, :2], eps[1][0])
    np.testing.assert_array_equal(rew[0], eps[0][2])
    assert not obs[1, 2:].any() and not act[1, 2:].any() and not rew[1, 2:].any()
    obs6, _, _, mask6 = pad_episodes(eps, horizon=6)
    assert obs6.shape == (2, 6, 3) and mask6.sum() == 6


def test_rejects_empty_and_too_long() -> None:
    with pytest.raises(ValueError, match="no episodes"):
        pad_episodes([])
    with pytest.raises(ValueError, match="exceeds the horizon"):
        pad_episodes([_episode(5, 0)], horizon=4)
