"""Evaluate an exported policy on a (perturbed) MuJoCo task, before and after few-shot adaptation.

The adaptation is the on-robot controller's computation (:class:`mbmpo_ros.adaptation.AdaptJob`: episodes padded
with a mask, the policy's gamma / GAE lambda, linear baseline, ONNX inner step) with the env stepped directly.
torch-free, like the controller.

    mbmpo eval POLICY.onnx --task NAME [--perturb KEY=VALUE ...] [--adapt-steps N] [--episodes N]
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mbmpo_core.onnx_runtime import OnnxPolicy
from mbmpo_ros.adaptation import AdaptJob, Episode

Params = dict[str, np.ndarray]


def run_episode(env: Any, policy: OnnxPolicy, params: Params | None, reset_seed: int, low: np.ndarray,
                high: np.ndarray, rng: np.random.Generator | None) -> Episode:
    """One episode; ``rng`` None = the deterministic mean action. Records the raw action, steps the clipped one
    (the policy gradient is of the sampled action, the robot executes what its bounds allow) and records it as
    executed, with the observation after the last step (what the model step identifies the dynamics on)."""
    ep = Episode(version=0)
    obs, _ = env.reset(seed=reset_seed)
    while True:
        raw = policy.act(obs, params, deterministic=rng is None, rng=rng)
        executed = np.clip(raw, low, high)
        ep.obs.append(np.asarray(obs, np.float64).copy())
        ep.act.append(np.asarray(raw, np.float64).copy())
        ep.executed.append(np.asarray(executed, np.float64).copy())
        obs, reward, terminated, truncated, _ = env.step(executed)
        ep.rewards.append(float(reward))
        if terminated or truncated:
            ep.last_obs = np.asarray(obs, np.float64).copy()  # the model step's last transition needs it
            return ep


@dataclass
class AdaptationReport:
    """Deterministic returns of theta and after each inner step; ``params`` are the last adapted ones."""

    episode_returns: list[list[float]] = field(default_factory=list)  # [theta, after step 1, ...][episode]
    params: Params | None = None

    @property
    def returns(self) -> list[float]:
        """Mean return over the evaluation episodes: [theta, after step 1, ..., after step N]."""
        return [float(np.mean(r)) for r in self.episode_returns]

    @property
    def stds(self) -> list[float]:
        """Standard deviation of the episode returns, per row of :attr:`returns`."""
        return [float(np.std(r)) for r in self.episode_returns]


def evaluate_with_adaptation(policy: OnnxPolicy, env: Any, low: np.ndarray, high: np.ndarray, episodes: int,
                             adapt_steps: int, adapt_episodes: int, seed: int = 0) -> AdaptationReport:
    """Return of theta, then ``adapt_steps`` times: ``adapt_episodes`` stochastic episodes with the current
    parameters, one inner step, evaluation. Every evaluation uses the same reset seeds (paired differences)."""
    gamma = float(policy.metadata.get("gamma", 0.99))
    lam = float(policy.metadata.get("gae_lambda", 1.0))
    eval_seeds = [10_000 + 100 * seed + k for k in range(episodes)]
    rng = np.random.default_rng([seed, 7])

    def episode_returns(params: Params | None) -> list[float]:
        return [run_episode(env, policy, params, s, low, high, None).ret for s in eval_seeds]

    report = AdaptationReport(episode_returns=[episode_returns(None)])
    for k in range(1, adapt_steps + 1):
        batch = [run_episode(env, policy, report.params, 20_000 + 1000 * seed + 100 * k + e, low, high, rng)
                 for e in range(adapt_episodes)]
        obs, act, adv, mask = AdaptJob(policy, report.params, batch, gamma, lam, 0).advantages()
        report.params = policy.adapt(report.params, obs, act, adv, mask)
        report.episode_returns.append(episode_returns(report.params))
    return report


def parse_perturbations(items: Sequence[str]) -> dict[str, Any]:
    """``["mass_scale=1.5", 'weaken_actuator={"0": 0.3}']`` -> perturbation dict (values are JSON; a dict key
    made of digits is an index). Raises ``ValueError`` naming the bad item."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--perturb {item!r}: expected KEY=VALUE, e.g. mass_scale=1.5")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            raise ValueError(f"--perturb {item!r}: VALUE must be JSON (a number, a list or an object)") from None
        if isinstance(value, dict):
            value = {int(k) if k.isdigit() else k: v for k, v in value.items()}
        out[key] = value
    return out
