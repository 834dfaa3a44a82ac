"""The true inner KL and the inner step size a KL target sets (``meta.inner_kl_target``)."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from mbmpo_core.checkpoint import read_checkpoint, write_checkpoint
from mbmpo_core.config import Config, ConfigError, EnsembleConfig, LoopConfig, MetaConfig, PolicyConfig, load_config
from mbmpo_core.meta import ALPHA_RANGE, MetaOptimizer, RolloutBatch, inner_step, masked_task_mean, task_batched
from mbmpo_core.meta_learner import MetaLearner
from mbmpo_core.policy import GaussianMLPPolicy, Params
from mbmpo_core.report import PROGRESS_COLUMNS
from mbmpo_core.sampler import RealSampler, uniform_random_actions
from sim import make_task

pytestmark = pytest.mark.usefixtures("one_torch_thread")


M, N, H, OBS, ACT = 3, 8, 10, 2, 2
TARGETS = torch.tensor([[1.0, -1.0], [0.5, 0.5], [-1.0, 0.0]], dtype=torch.float64)  # [M, ACT]


def _policy(seed: int = 0) -> GaussianMLPPolicy:
    torch.manual_seed(seed)
    policy = GaussianMLPPolicy(OBS, ACT, (6, 6)).double()
    with torch.no_grad():
        for p in policy.params().values():
            p.copy_(0.5 * torch.randn_like(p))
    return policy


def _rollouts(policy: GaussianMLPPolicy, params: Params, gen: torch.Generator) -> RolloutBatch:
    """Bandit rollouts of task-batched ``params``: advantage ``-|a - target_m|^2``, normalised per task."""
    obs = torch.randn(M, N, H, OBS, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        act = policy.sample(obs, params, generator=gen)
    reward = -(act - TARGETS.view(M, 1, 1, ACT)).pow(2).sum(-1)
    adv = (reward - reward.mean(dim=(1, 2), keepdim=True)) / reward.std(dim=(1, 2), keepdim=True)
    mask = torch.ones_like(adv)
    return RolloutBatch(obs, act, reward, mask, adv, torch.zeros_like(adv)).with_old_dist(policy, params)


def _meta_step(meta: MetaOptimizer, gen: torch.Generator) -> dict[str, float]:
    """Sample pre (theta) and post (theta') rollouts as the MB-MPO loop does, then take the outer step."""
    policy = meta.policy
    theta = task_batched(policy, {k: v.detach() for k, v in policy.params().items()}, M)
    pre = _rollouts(policy, theta, gen)
    adapted = {k: v.detach() for k, v in inner_step(policy, policy.params(), pre, meta.alpha).items()}
    return meta.outer_step(pre, _rollouts(policy, adapted, gen))


def _gaussian_kl(mean_p: torch.Tensor, std_p: torch.Tensor, mean_q: torch.Tensor, std_q: torch.Tensor) -> torch.Tensor:
    """KL(N(mean_p, std_p) || N(mean_q, std_q)) summed over the last dim (diagonal Gaussians)."""
    p = torch.distributions.Normal(mean_p, std_p.expand_as(mean_p))
    q = torch.distributions.Normal(mean_q, std_q.expand_as(mean_q))
    return torch.distributions.kl_divergence(p, q).sum(-1)


# --------------------------------------------------------------------------- the true inner KL
def test_inner_kl_stat_is_kl_from_theta_to_the_adapted_policies_on_pre_samples() -> None:
    policy, gen, alpha = _policy(), torch.Generator().manual_seed(1), 0.05
    theta = task_batched(policy, {k: v.detach().clone() for k, v in policy.params().items()}, M)
    pre = _rollouts(policy, theta, gen)
    adapted = {k: v.detach() for k, v in inner_step(policy, policy.params(), pre, alpha).items()}
    with torch.no_grad():
        mean_t, log_std_t = policy.mean_and_log_std(pre.obs, theta)
        mean_a, log_std_a = policy.mean_and_log_std(pre.obs, adapted)
        expected = float(masked_task_mean(_gaussian_kl(mean_t, log_std_t.exp(), mean_a, log_std_a.exp()),
                                          pre.mask).mean())
    stats = MetaOptimizer(policy, inner_lr=alpha).outer_step(pre, _rollouts(policy, adapted, gen))
    assert stats["inner_kl"] == pytest.approx(expected, rel=1e-9)
    assert stats["inner_lr"] == alpha
    assert stats["outer_kl_pre"] > 0 and stats["outer_kl_pre"] != pytest.approx(expected, rel=0.1)


@pytest.mark.parametrize("algo", ["trpo", "promp"])
def test_inner_kl_grows_as_alpha_squared_for_small_steps(algo: str) -> None:
    """KL(theta || theta + alpha g) ~ alpha^2 g'Fg / 2: doubling a small alpha quadruples the true inner KL."""
    kls = []
    for alpha in (1e-3, 2e-3):
        policy, gen = _policy(), torch.Generator().manual_seed(2)
        kls.append(_meta_step(MetaOptimizer(policy, algo=algo, inner_lr=alpha, promp_steps=1), gen)["inner_kl"])
    assert kls[0] > 0
    assert kls[1] / kls[0] == pytest.approx(4.0, rel=0.01)


# --------------------------------------------------------------------------- the target
def test_without_a_target_alpha_stays_inner_lr() -> None:
    meta, gen = MetaOptimizer(_policy(), inner_lr=1e-3), torch.Generator().manual_seed(3)
    for _ in range(3):
        _meta_step(meta, gen)
    assert meta.alpha == 1e-3 and meta.inner_kl_target == 0.0


def test_alpha_scales_with_the_root_of_the_kl_ratio_at_most_2x_and_within_its_range() -> None:
    meta = MetaOptimizer(_policy(), inner_lr=0.1, inner_kl_target=0.01)
    for kl, alpha in ((0.01 * 2.25, 0.1 / 1.5), (0.01 / 2.25, 0.1), (0.01, 0.1), (math.nan, 0.1),
                      (1e-9, 0.2), (0.0, 0.4), (1e3, 0.2)):
        meta._follow_inner_kl_target(kl)
        assert meta.alpha == pytest.approx(alpha), kl
    meta.alpha = 9.0
    meta._follow_inner_kl_target(0.0)
    assert meta.alpha == ALPHA_RANGE[1]
    meta.alpha = 1.2e-6
    meta._follow_inner_kl_target(1.0)
    assert meta.alpha == ALPHA_RANGE[0]


def test_one_update_meets_the_target_when_theta_stands_still() -> None:
    """KL ~ alpha^2 for small steps: from 20x below the target, one update brings the same batch's KL to it."""
    policy, gen = _policy(), torch.Generator().manual_seed(7)
    pre = _rollouts(policy, task_batched(policy, {k: v.detach() for k, v in policy.params().items()}, M), gen)

    def kl_at(alpha: float) -> float:
        return float(meta.inner_kl(inner_step(policy, policy.params(), pre, alpha), pre).mean())

    meta = MetaOptimizer(policy, inner_lr=1e-4, inner_kl_target=1e-4)
    first = kl_at(1e-4)
    meta.inner_kl_target = 4 * first  # within one x2 change
    meta._follow_inner_kl_target(first)
    assert meta.alpha == pytest.approx(2e-4)
    assert kl_at(meta.inner_lr) == pytest.approx(4 * first, rel=0.02)


@pytest.mark.parametrize(("algo", "target"), [("trpo", 0.01), ("trpo", 0.05), ("promp", 0.01)])
def test_alpha_converges_so_the_inner_kl_is_within_2x_of_the_target(algo: str, target: float) -> None:
    """From alpha 1e-3 (inner KL ~5e-6) the target is met within 7 meta-steps and then kept while meta-training
    makes theta more sensitive (alpha has to fall again: the KL per alpha^2 keeps growing in this bandit)."""
    meta, gen = MetaOptimizer(_policy(), algo=algo, inner_lr=1e-3, inner_kl_target=target), torch.Generator()
    gen.manual_seed(4)
    kls = [_meta_step(meta, gen)["inner_kl"] for _ in range(20)]
    assert kls[0] < target / 100  # alpha 1e-3 hardly moves the policy
    tail = np.array(kls[-12:]) / target
    assert 0.5 <= math.exp(float(np.log(tail).mean())) <= 2.0, tail
    assert ((tail > 0.25) & (tail < 4.0)).all(), tail
    fixed, gen = MetaOptimizer(_policy(), algo=algo, inner_lr=1e-3), torch.Generator().manual_seed(4)
    assert max(_meta_step(fixed, gen)["inner_kl"] for _ in range(8)) < target / 4  # without the target


def test_alpha_survives_the_state_dict_and_an_old_state_still_loads() -> None:
    meta, gen = MetaOptimizer(_policy(), inner_lr=1e-3, inner_kl_target=0.01), torch.Generator().manual_seed(5)
    for _ in range(4):
        _meta_step(meta, gen)
    assert meta.alpha == pytest.approx(1e-3 * 2**4)  # the KL was > 4x below the target at every step
    resumed = MetaOptimizer(_policy(), inner_lr=1e-3, inner_kl_target=0.01)
    resumed.load_state_dict(meta.state_dict())
    assert resumed.alpha == meta.alpha and isinstance(resumed.alpha, float)
    # A state saved without a target (alpha = inner_lr) resumes with a target from that alpha.
    resumed.load_state_dict(MetaOptimizer(_policy(), inner_lr=2e-3).state_dict())
    assert resumed.alpha == 2e-3


def test_learned_inner_lr_still_learns_and_reports_its_mean_step_size() -> None:
    meta, gen = MetaOptimizer(_policy(), inner_lr=0.05, learn_inner_lr=True), torch.Generator().manual_seed(6)
    stats = _meta_step(meta, gen)
    assert stats["inner_lr"] == pytest.approx(0.05) and stats["inner_kl"] > 0
    assert isinstance(meta.alpha, dict)
    entries = torch.cat([v.detach().reshape(-1) for v in meta.alpha.values()])
    assert float((entries - 0.05).abs().max()) > 0  # the outer step moved the learned step sizes
    assert meta.inner_lr == pytest.approx(float(entries.mean()))


@pytest.mark.parametrize(("kwargs", "needle"), [
    ({"inner_kl_target": -0.01}, "inner_kl_target must be >= 0"),
    ({"inner_kl_target": 0.01, "learn_inner_lr": True}, "not learn_inner_lr"),
    ({"inner_kl_target": 0.01, "inner_lr": 0.0}, "inner_lr > 0"),
])
def test_bad_target_options_are_rejected(kwargs: dict[str, object], needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        MetaOptimizer(_policy(), **kwargs)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- config
@pytest.mark.parametrize(("text", "needle"), [
    ("meta: {inner_kl_target: -1}\n", "'meta.inner_kl_target' must be >= 0"),
    ("meta: {inner_kl_target: 0.01, learn_inner_lr: true}\n", "cannot be combined with 'meta.learn_inner_lr'"),
    ("meta: {inner_kl_target: 0.01, inner_lr: 0}\n", "'meta.inner_lr: 0'"),
])
def test_config_rejects_a_target_it_cannot_follow_in_one_line(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=needle) as info:
        load_config(path)
    assert "\n" not in str(info.value)


def test_config_default_is_off_and_a_target_is_read(tmp_path: Path) -> None:
    assert load_config().meta.inner_kl_target == 0.0
    path = tmp_path / "c.yaml"
    path.write_text("meta: {inner_kl_target: 2e-2}\n")
    assert load_config(path).meta.inner_kl_target == 0.02


# --------------------------------------------------------------------------- meta-learner
TINY = Config(
    task="InvertedPendulum-v5",
    ensemble=EnsembleConfig(num_models=2, hidden_sizes=(32, 32), batch_size=64, max_epochs=3),
    policy=PolicyConfig(hidden_sizes=(16, 16)),
    meta=MetaConfig(meta_batch_size=4, rollouts_per_task=4, meta_steps=3, inner_kl_target=0.01),
    loop=LoopConfig(random_steps=200, steps_per_iter=200, total_steps=600, eval_episodes=1, horizon=20),
)
TASK = make_task(TINY.task, horizon=TINY.loop.horizon)


def _real_data(steps: int) -> dict[str, np.ndarray]:
    sampler = RealSampler([TASK.make_env(seed=0)], TINY.loop.horizon, TASK.action_low, TASK.action_high, seed=0)
    batch = sampler.sample(uniform_random_actions(TASK.action_low, TASK.action_high, np.random.default_rng(0)), steps)
    return batch.transitions()


def test_learner_logs_inner_kl_and_lr_exports_and_checkpoints_the_adapted_alpha(tmp_path: Path) -> None:
    data = _real_data(200)
    learner = MetaLearner(TINY, TASK)
    report = learner.improve(data)
    alpha = learner.meta.alpha
    assert isinstance(alpha, float) and alpha != TINY.meta.inner_lr
    assert report.meta.inner_kl > 0 and 0.5 <= alpha / report.meta.inner_lr <= 2.0
    row = report.progress_row(200)
    assert set(row) <= set(PROGRESS_COLUMNS) and row["inner_lr"] == report.meta.inner_lr
    assert learner.export_args()["inner_lr"] == alpha
    write_checkpoint(tmp_path, learner.state_dict())
    resumed = MetaLearner(TINY, TASK)
    resumed.load_state_dict(read_checkpoint(tmp_path))
    assert resumed.meta.alpha == alpha and resumed.export_args()["inner_lr"] == alpha
    fixed = MetaLearner(replace(TINY, meta=replace(TINY.meta, inner_kl_target=0.0)), TASK)
    fixed_report = fixed.improve(data)
    assert fixed.meta.alpha == fixed_report.meta.inner_lr == TINY.meta.inner_lr
