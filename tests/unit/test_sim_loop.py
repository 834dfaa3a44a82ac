"""The simulated training loop on a tiny problem: task-to-model mapping, imagination, run directory, determinism,
exact resume."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from mbmpo_core.config import Config, EnsembleConfig, LoopConfig, MetaConfig, PolicyConfig
from mbmpo_core.imagination import imagine, task_models
from mbmpo_core.onnx_runtime import OnnxPolicy, validate_policy_file
from mbmpo_core.sampler import RealBatch
from mbmpo_core.sim_loop import SimTrainingLoop, episodes_as_task
from sim import make_task

TINY = Config(
    task="InvertedPendulum-v5",
    ensemble=EnsembleConfig(num_models=2, hidden_sizes=(32, 32), batch_size=64, max_epochs=5),
    policy=PolicyConfig(hidden_sizes=(16, 16)),
    meta=MetaConfig(meta_batch_size=4, rollouts_per_task=4, meta_steps=2),
    loop=LoopConfig(random_steps=200, steps_per_iter=200, total_steps=600, eval_episodes=1, horizon=20),
)


@pytest.fixture(autouse=True)
def one_thread() -> None:
    torch.set_num_threads(1)


def make_loop(run_dir: Path, config: Config = TINY) -> SimTrainingLoop:
    return SimTrainingLoop(config, make_task(config.task, horizon=config.loop.horizon), run_dir, log=lambda _: None)


@pytest.mark.parametrize(("tasks", "models"), [(20, 5), (6, 3), (4, 4), (8, 1)])
def test_every_model_gets_the_same_number_of_tasks(tasks: int, models: int) -> None:
    mapping = task_models(tasks, models)
    assert torch.bincount(mapping, minlength=models).tolist() == [tasks // models] * models


def test_task_models_rejects_uneven_split() -> None:
    with pytest.raises(ValueError, match="multiple"):
        task_models(7, 5)


def test_imagination_uses_model_of_each_task_and_masks_after_done(tmp_path: Path) -> None:
    loop = make_loop(tmp_path)
    loop.iteration()
    learner = loop.learner
    m, n = 4, 3
    params = {k: v.detach().unsqueeze(0).expand(m, *v.shape) for k, v in learner.policy.params().items()}
    start = torch.as_tensor(loop.task.sample_initial_obs(m * n, np.random.default_rng(0)),
                            dtype=torch.float32).reshape(m, n, -1)
    traj = imagine(learner.ensemble, learner.policy, params, loop.task, start, 10, 1e4, 1e4,
                   generator=torch.Generator().manual_seed(0))
    assert traj.obs.shape == (m, n, 10, 4) and traj.rewards.shape == (m, n, 10)
    # Step 1 of task m must be model task_models[m]'s prediction from step 0.
    executed = traj.act[:, :, 0].clamp(-3.0, 3.0)
    every_model = learner.ensemble.predict_all(traj.obs[:, :, 0].reshape(-1, 4), executed.reshape(-1, 1))
    every_model = every_model.reshape(2, m, n, 4)
    for task, model in enumerate(task_models(m, 2).tolist()):
        torch.testing.assert_close(traj.obs[task, :, 1], every_model[model, task])
    # Once dead, always dead, and dead steps earn nothing.
    assert torch.all(traj.mask[..., 1:] <= traj.mask[..., :-1])
    assert torch.all(traj.rewards[traj.mask == 0] == 0)


def test_run_directory_and_progress(tmp_path: Path) -> None:
    loop = make_loop(tmp_path)
    loop.train(400)
    rows = loop.progress.rows()
    assert [r["real_steps"] for r in rows] == [200.0, 400.0]
    assert all(np.isfinite(r["return_pre"]) and np.isfinite(r["return_post"]) for r in rows)
    for name in ("config.yaml", "progress.csv", "learning_curve.png", "checkpoints/checkpoint.pt", "policy.onnx",
                 "policy.adapt.onnx"):
        assert (tmp_path / name).is_file(), name
    meta = validate_policy_file(tmp_path / "policy.onnx", expected_task="InvertedPendulum-v5")
    assert meta["learner_iteration"] == 2
    obs = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    np.testing.assert_allclose(OnnxPolicy(tmp_path / "policy.onnx").act(obs),
                               loop.learner.policy(torch.as_tensor(obs)).detach().numpy(), atol=1e-5)
    assert len(loop.store) == 400


def test_seeded_runs_are_identical(tmp_path: Path) -> None:
    a, b = make_loop(tmp_path / "a"), make_loop(tmp_path / "b")
    a.train(400)
    b.train(400)
    torch.testing.assert_close(a.learner.policy.params_to_vector(), b.learner.policy.params_to_vector(), rtol=0,
                               atol=0)
    assert _same_but_time(a, b)


def _same_but_time(a: SimTrainingLoop, b: SimTrainingLoop) -> bool:
    def numbers(t: SimTrainingLoop) -> np.ndarray:
        return np.array([[v for k, v in r.items() if not k.startswith("time_")] for r in t.progress.rows()])

    x, y = numbers(a), numbers(b)
    return x.shape == y.shape and bool(np.array_equal(x, y, equal_nan=True))


def test_resume_is_exact(tmp_path: Path) -> None:
    straight = make_loop(tmp_path / "straight")
    straight.train(600)
    first = make_loop(tmp_path / "resumed")
    first.train(400)
    first.close()
    resumed = make_loop(tmp_path / "resumed")
    resumed.load_checkpoint(tmp_path / "resumed")
    assert resumed.real_steps == 400
    resumed.train(600)
    torch.testing.assert_close(resumed.learner.policy.params_to_vector(), straight.learner.policy.params_to_vector(),
                               rtol=0, atol=0)
    assert _same_but_time(straight, resumed)
    assert len(resumed.store) == 600


def test_zero_inner_lr_is_me_trpo(tmp_path: Path) -> None:
    config = replace(TINY, meta=replace(TINY.meta, inner_lr=0.0))
    loop = make_loop(tmp_path, config)
    loop.train(400)
    assert loop.collect_params is not None
    for name, adapted in loop.collect_params.items():
        # No inner step: every model's "adapted" policy is the same theta.
        torch.testing.assert_close(adapted, adapted[:1].expand_as(adapted), rtol=0, atol=0, msg=name)


def constant_policies(loop: SimTrainingLoop, actions: list[float]) -> dict[str, torch.Tensor]:
    """One policy per task whose action is ``actions[m]`` (no noise): zero last layer, bias = the action."""
    params = {k: v.detach().unsqueeze(0).repeat(len(actions), *([1] * v.dim()))
              for k, v in loop.learner.policy.params().items()}
    last = loop.learner.policy.param_names()[-3].rsplit(".", 1)[0]  # the output layer (before log_std)
    params[f"{last}.weight"].zero_()
    params[f"{last}.bias"][:] = torch.tensor(actions)[:, None]
    params["log_std"][:] = -30.0
    return params


def test_every_adapted_policy_collects_its_share(tmp_path: Path) -> None:
    loop = make_loop(tmp_path)
    loop.iteration()  # the warm-up and a first iteration
    assert loop.collect_params is not None and loop.collect_params["log_std"].shape[0] == TINY.meta.meta_batch_size
    actions = [-1.5, -0.5, 0.5, 1.5]  # task m's policy executes actions[m]
    loop.collect_params = constant_policies(loop, actions)
    before = len(loop.store)
    loop._collect()
    act = loop.store.load_all()["act"][before:, 0]
    share = TINY.loop.steps_per_iter // TINY.meta.meta_batch_size
    assert [int(np.sum(np.isclose(act, a))) for a in actions] == [share] * 4


def test_evaluation_pairs_its_policy_sets_and_stores_nothing(tmp_path: Path) -> None:
    config = replace(TINY, loop=replace(TINY.loop, eval_episodes=2))
    loop = make_loop(tmp_path, config)
    loop.iteration()
    stored = len(loop.store)
    batches: list[RealBatch] = []
    sample_episodes = loop.eval_sampler.sample_episodes

    def spy(act_fn: object, per_env: int) -> RealBatch:
        batches.append(sample_episodes(act_fn, per_env))  # type: ignore[arg-type]
        return batches[-1]

    loop.eval_sampler.sample_episodes = spy  # type: ignore[method-assign]
    theta = {k: v.detach().unsqueeze(0).expand(4, *v.shape) for k, v in loop.learner.policy.params().items()}
    returns = loop.evaluate(theta)
    assert set(returns) == {"return_pre", "return_post", "return_pre_det", "return_post_det", "return_adapted_real"}
    assert all(np.isfinite(v) for v in returns.values())
    # Every set: 2 whole episodes on each of the M = 4 evaluation envs; none of it stored.
    assert [sorted(b.episode_envs) for b in batches] == [[0, 0, 1, 1, 2, 2, 3, 3]] * 5 and len(loop.store) == stored
    # The same start states for every set: theta's mean actions give the same return as pre and as post.
    assert returns["return_pre_det"] == returns["return_post_det"]
    # Task averaging: policy m acts on env m; the mean over tasks of each one's return (same start states).
    start = loop.eval_sampler.episode_counters.copy()

    def post_det(actions: list[float]) -> float:
        loop.eval_sampler.episode_counters[:] = start
        return loop.evaluate(constant_policies(loop, actions))["return_post_det"]

    batches.clear()
    low, high, mixed = post_det([0.0] * 4), post_det([3.0] * 4), post_det([0.0, 0.0, 3.0, 3.0])

    def env_mean(batch: RealBatch, env: int) -> float:
        return float(np.mean([r for r, e in zip(batch.episode_returns, batch.episode_envs, strict=True) if e == env]))

    low_batch, high_batch = batches[3], batches[8]  # the post_det set (4th of 5) of the first two calls
    assert low != high
    assert mixed == pytest.approx(np.mean([env_mean(low_batch, 0), env_mean(low_batch, 1), env_mean(high_batch, 2),
                                           env_mean(high_batch, 3)]))


def test_episodes_as_task_pads_with_zero_mask() -> None:
    steps = np.array([0, 1, 2, 0, 1])
    batch = RealBatch(obs=np.arange(10.0).reshape(5, 2), act=np.zeros((5, 1)), act_raw=np.ones((5, 1)),
                      next_obs=np.zeros((5, 2)), reward=np.arange(5.0), done=np.zeros(5, bool),
                      env=np.zeros(5, np.int64), episode=np.array([0, 0, 0, 1, 1]), step=steps)
    traj = episodes_as_task(batch, horizon=4, device=torch.device("cpu"))
    assert traj.obs.shape == (1, 2, 4, 2)
    assert traj.mask.tolist() == [[[1, 1, 1, 0], [1, 1, 0, 0]]]
    assert traj.rewards.tolist() == [[[0, 1, 2, 0], [3, 4, 0, 0]]]


def test_episodes_as_task_separates_the_envs_of_a_lockstep_batch() -> None:
    # Two envs stepped in lockstep: their rows interleave (env 0 ends its episode after 2 steps, env 1 after 3).
    env = np.array([0, 1, 0, 1, 1])
    steps = np.array([0, 0, 1, 1, 2])
    batch = RealBatch(obs=np.arange(5.0)[:, None], act=np.zeros((5, 1)), act_raw=np.zeros((5, 1)),
                      next_obs=np.zeros((5, 1)), reward=np.arange(5.0), done=np.zeros(5, bool), env=env,
                      episode=np.zeros(5, np.int64), step=steps)
    traj = episodes_as_task(batch, horizon=3, device=torch.device("cpu"))
    assert traj.rewards.tolist() == [[[0, 2, 0], [1, 3, 4]]]
    assert traj.mask.tolist() == [[[1, 1, 0], [1, 1, 1]]]


def test_resume_refuses_a_checkpoint_of_another_program(tmp_path: Path) -> None:
    from mbmpo_core.checkpoint import write_checkpoint

    loop = make_loop(tmp_path)
    write_checkpoint(tmp_path, {**loop.learner.state_dict(), "learner_node": {"transitions": 0}})
    with pytest.raises(ValueError, match="not a checkpoint of the simulated training loop"):
        loop.load_checkpoint(tmp_path)
    torch.save({"iteration": 1}, tmp_path / "checkpoints" / "checkpoint.pt")  # a checkpoint from before v2
    with pytest.raises(ValueError, match="format 'none'"):
        loop.load_checkpoint(tmp_path)
