"""OnlineAdapter (mbmpo_ros.adaptation): pure state machine on a tiny exported policy, no ROS; the model-mode step
with stand-ins for identification and imagination; adaptation.jsonl."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from mbmpo_core.advantages import compute_advantages
from mbmpo_core.onnx_runtime import OnnxPolicy
from mbmpo_ros.adaptation import (
    IDENT_HOLDOUT,
    AdaptJob,
    AdaptMode,
    Episode,
    Imagined,
    ModelImagination,
    OnlineAdapter,
    Phase,
    episode_transitions,
)
from mbmpo_ros.adaptation_log import LOG_FILE, AdaptationLog, check_log_dir

OBS_DIM, ACT_DIM = 3, 2


@pytest.fixture(scope="module")
def policy() -> OnnxPolicy:
    import torch

    from mbmpo_core.export import export_bundle
    from mbmpo_core.policy import GaussianMLPPolicy

    torch.manual_seed(0)
    bundle = export_bundle(
        GaussianMLPPolicy(OBS_DIM, ACT_DIM, hidden_sizes=(8,)), task_name="toy",
        obs_names=[f"o{i}" for i in range(OBS_DIM)], act_names=["a0", "a1"], joint_names=["a0", "a1"],
        action_low=[-1.0, -1.0], action_high=[1.0, 1.0], control_rate_hz=20.0, horizon=10, inner_lr=0.05,
        gamma=0.97, gae_lambda=0.9, iteration=0,
    )
    loaded = OnnxPolicy.from_bundle(bundle)
    assert loaded.can_adapt
    return loaded


def _episode(adapter: OnlineAdapter, policy: OnnxPolicy, rng: np.random.Generator, length: int,
             reward: float | None = None, first_step: int = 0) -> AdaptJob | None:
    """Drive one episode through the adapter as the controller's tick does; returns the job, if any."""
    job = None
    for t in range(length):
        obs = rng.standard_normal(OBS_DIM)
        params = adapter.begin_step(first_step + t)
        raw = policy.act(obs, params=params, deterministic=False, rng=rng)
        adapter.record(obs, raw)
        r = float(rng.standard_normal()) if reward is None else reward
        job = adapter.close(r, ended=t == length - 1)
    return job


def _batch(adapter: OnlineAdapter, policy: OnnxPolicy, rng: np.random.Generator, reward: float | None = None,
           lengths: tuple[int, ...] = (7, 10)) -> AdaptJob | None:
    jobs = [_episode(adapter, policy, rng, n, reward) for n in lengths]
    assert all(j is None for j in jobs[:-1])
    return jobs[-1]


def test_adapted_params_equal_onnx_adapt(policy: OnnxPolicy) -> None:
    rng = np.random.default_rng(1)
    adapter = OnlineAdapter(episodes=2, steps_max=1, revert_margin=float("inf"))
    adapter.reset(policy)
    job = _batch(adapter, policy, rng)
    assert job is not None and adapter.phase is Phase.COMPUTING and job.params is None
    assert (job.gamma, job.lam) == (0.97, 0.9)
    # The same data, assembled independently: [E, H] padded with mask 0, numpy advantages.
    obs = np.zeros((2, 10, OBS_DIM))
    act = np.zeros((2, 10, ACT_DIM))
    rew, mask = np.zeros((2, 10)), np.zeros((2, 10))
    for i, ep in enumerate(job.episodes):
        n = len(ep.rewards)
        obs[i, :n], act[i, :n], rew[i, :n], mask[i, :n] = ep.obs, ep.act, ep.rewards, 1.0
    adv, _ = compute_advantages(rew, obs, mask, 0.97, 0.9)
    expected = policy.adapt(None, obs.reshape(20, -1), act.reshape(20, -1), adv.reshape(20), mask.reshape(20))
    result = job.run()
    for name in policy.param_names:
        np.testing.assert_allclose(result.params[name], expected[name], rtol=1e-6, atol=1e-7)  # type: ignore[index]
        assert not np.allclose(expected[name], policy.params[name])  # the step moved every parameter
    adapter.deliver(result)
    assert not adapter.adapted  # switched only at the next episode start
    params = adapter.begin_step(0)
    assert adapter.adapted and adapter.steps == 1 and params is result.params
    assert adapter.pre_return == pytest.approx(np.mean([e.ret for e in job.episodes]))


def test_advantages_match_torch_training(policy: OnnxPolicy) -> None:
    import torch

    adapter = OnlineAdapter(episodes=3, steps_max=1)
    adapter.reset(policy)
    job = _batch(adapter, policy, np.random.default_rng(2), lengths=(4, 10, 6))
    assert job is not None
    obs, act, adv, mask = job.advantages()
    from mbmpo_ros.adaptation import episodes_to_arrays

    o, _, r, m = episodes_to_arrays(job.episodes)

    def t(x: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(x[None], dtype=torch.float32)  # one task, as trainer.episodes_as_task

    ref, _ = compute_advantages(t(r), t(o), t(m), 0.97, 0.9)
    np.testing.assert_allclose(adv, ref[0].numpy().reshape(-1), atol=1e-4)
    assert mask.sum() == 20 and obs.shape == (30, OBS_DIM) and act.shape == (30, ACT_DIM)


def test_steps_max_limits_inner_steps(policy: OnnxPolicy) -> None:
    rng = np.random.default_rng(3)
    adapter = OnlineAdapter(episodes=1, steps_max=2, revert_margin=float("inf"))
    adapter.reset(policy)
    params_seen = []
    for _ in range(6):
        job = _episode(adapter, policy, rng, 5)
        if job is not None:
            params_seen.append(job.params)
            adapter.deliver(job.run())
    assert adapter.steps == 2 and adapter.phase is Phase.DONE and adapter.adapted
    assert params_seen[0] is None and params_seen[1] is not None  # the second step starts from theta'
    assert adapter.post_return is not None


def test_revert_when_adapted_return_drops(policy: OnnxPolicy) -> None:
    rng = np.random.default_rng(4)
    adapter = OnlineAdapter(episodes=2, steps_max=3, revert_margin=0.5)
    adapter.reset(policy)
    job = _batch(adapter, policy, rng, reward=1.0, lengths=(5, 5))  # pre return 5
    assert job is not None
    adapter.deliver(job.run())
    assert _batch(adapter, policy, rng, reward=0.95, lengths=(5, 5)) is not None  # 4.75 >= 5 - 0.5: keep going
    assert adapter.adapted and adapter.reverted == 0
    adapter.deliver(job.run())
    assert _batch(adapter, policy, rng, reward=0.8, lengths=(5, 5)) is None  # 4.0 < 4.5: revert
    assert adapter.reverted == 1 and not adapter.adapted and adapter.phase is Phase.DONE
    assert adapter.pre_return == pytest.approx(5.0) and adapter.post_return == pytest.approx(4.0)
    assert adapter.begin_step(0) is None


def test_reset_on_new_policy_ignores_old_results(policy: OnnxPolicy) -> None:
    rng = np.random.default_rng(5)
    adapter = OnlineAdapter(episodes=1, steps_max=3)
    adapter.reset(policy)
    job = _episode(adapter, policy, rng, 4)
    assert job is not None
    adapter.deliver(job.run())
    adapter.begin_step(0)
    assert adapter.adapted
    late = _episode(adapter, policy, rng, 3)  # the job of theta' is out when a new meta-policy arrives
    assert late is not None
    adapter.reset(policy)
    adapter.deliver(late.run())  # stale generation: dropped
    assert not adapter.adapted and adapter.steps == 0 and adapter.pre_return is None
    assert adapter.begin_step(0) is None and adapter.phase is Phase.COLLECTING
    adapter.reset(None)
    assert adapter.phase is Phase.DISABLED


def test_interrupted_episodes_are_not_used(policy: OnnxPolicy) -> None:
    rng = np.random.default_rng(6)
    adapter = OnlineAdapter(episodes=1, steps_max=1)
    adapter.reset(policy)
    assert _episode(adapter, policy, rng, 4, first_step=3) is None  # joined mid-episode
    adapter.begin_step(0)
    adapter.record(np.zeros(OBS_DIM), np.zeros(ACT_DIM))
    adapter.drop()  # a hold
    assert adapter.close(1.0, ended=True) is None
    assert _episode(adapter, policy, rng, 4) is not None


# ------------------------------------------------------------------------------------------ model mode (fakes)
def _executed_episode(adapter: OnlineAdapter, policy: OnnxPolicy, rng: np.random.Generator, length: int,
                      ) -> tuple[AdaptJob | None, list[np.ndarray]]:
    """One episode as the controller records it: obs, raw and executed actions, the observation after the end.
    Returns the job and the ``length + 1`` observations the episode saw."""
    seen = [rng.standard_normal(OBS_DIM)]
    job = None
    for t in range(length):
        params = adapter.begin_step(t)
        raw = policy.act(seen[-1], params=params, deterministic=False, rng=rng)
        adapter.record(seen[-1], raw, np.clip(raw, -0.5, 0.5))  # a safety chain tighter than the bounds
        seen.append(rng.standard_normal(OBS_DIM))
        job = adapter.close(float(rng.standard_normal()), ended=t == length - 1, next_obs=seen[-1])
    return job, seen


class FakeImagination:
    """An :class:`ImagineStep` that records its inputs and returns fixed rollouts and errors."""

    def __init__(self, n: int = 6, horizon: int = 5) -> None:
        rng = np.random.default_rng(11)
        self.rollouts = (rng.standard_normal((n, horizon, OBS_DIM)), rng.standard_normal((n, horizon, ACT_DIM)),
                         rng.standard_normal((n, horizon)), np.ones((n, horizon)))
        self.rollouts[3][0, 3:] = 0.0  # one rollout ended early
        self.calls: list[tuple[Any, list[Episode]]] = []

    def __call__(self, policy: Any, params: Any, episodes: list[Episode], rng: np.random.Generator) -> Imagined:
        self.calls.append((params, episodes))
        return Imagined(*self.rollouts, member=2, error_before=np.array([0.5, 0.4, 0.3]),
                        error_after=np.array([0.2, 0.25, 0.1]), identify_s=0.01, imagine_s=0.02)


def test_model_mode_steps_on_the_imagined_rollouts(policy: OnnxPolicy) -> None:
    rng = np.random.default_rng(7)
    fake = FakeImagination()
    adapter = OnlineAdapter(episodes=2, steps_max=1)
    adapter.reset(policy, imagination=fake)
    assert adapter.mode is AdaptMode.MODEL and adapter.summary()["adapt.mode"] == "model"
    _executed_episode(adapter, policy, rng, 4)
    job, _ = _executed_episode(adapter, policy, rng, 6)
    assert job is not None and job.mode is AdaptMode.MODEL and job.step == 1
    result = job.run()
    [(params, episodes)] = fake.calls
    assert params is None and episodes is job.episodes and [len(e.rewards) for e in episodes] == [4, 6]
    obs, act, rew, mask = fake.rollouts
    adv, _ = compute_advantages(rew, obs, mask, 0.97, 0.9)  # training's advantages on the imagined batch
    expected = policy.adapt(None, obs.reshape(30, -1), act.reshape(30, -1), adv.reshape(30), mask.reshape(30))
    direct = AdaptJob(policy, None, job.episodes, 0.97, 0.9, job.generation).run()
    for name in policy.param_names:
        np.testing.assert_allclose(result.params[name], expected[name], rtol=1e-6, atol=1e-7)  # type: ignore[index]
        assert not np.allclose(result.params[name], direct.params[name])  # type: ignore[index]  # not the real data
    assert result.mode == "model" and result.member == 2 and result.ident_errors == (0.3, 0.1)
    assert result.imagined_return == pytest.approx(float(np.mean((rew * mask).sum(-1))))
    assert result.job_s >= result.update_s > 0 and (result.identify_s, result.imagine_s) == (0.01, 0.02)
    record = result.record()
    assert json.loads(json.dumps(record, allow_nan=False)) == record  # NaN-free JSON
    assert record["ident_error_after"] == [0.2, 0.25, 0.1] and record["batch_return"] == pytest.approx(
        np.mean([e.ret for e in job.episodes]))
    adapter.deliver(result)
    adapter.begin_step(0)
    summary = adapter.summary()
    assert (summary["adapt.ident_error_before"], summary["adapt.ident_error_after"]) == ("0.3", "0.1")
    assert float(summary["adapt.job_s"]) == pytest.approx(result.job_s, rel=1e-5)


def test_direct_mode_result_has_no_identification(policy: OnnxPolicy) -> None:
    adapter = OnlineAdapter(episodes=1, steps_max=1)
    adapter.reset(policy)
    job, _ = _executed_episode(adapter, policy, np.random.default_rng(8), 5)
    assert job is not None and job.mode is AdaptMode.DIRECT
    result = job.run()
    assert result.mode == "direct" and result.member == -1 and np.isnan(result.ident_errors).all()
    record = result.record()
    assert record["ident_error_before"] == [] and record["imagine_s"] is None and record["ok"] is True
    adapter.deliver(result)
    adapter.begin_step(0)
    assert adapter.summary()["adapt.ident_error_after"] == "" and adapter.summary()["adapt.mode"] == "direct"


def _two_episode_job(policy: OnnxPolicy, seed: int) -> tuple[AdaptJob, list[np.ndarray], list[np.ndarray]]:
    """The job of a 2-episode batch (3 and 4 steps, executed actions and last observations recorded) and the
    observations each episode saw."""
    adapter = OnlineAdapter(episodes=2, steps_max=1)
    adapter.reset(policy)
    rng = np.random.default_rng(seed)
    _, seen_a = _executed_episode(adapter, policy, rng, 3)
    job, seen_b = _executed_episode(adapter, policy, rng, 4)
    assert job is not None
    return job, seen_a, seen_b


def test_transitions_pair_each_state_with_the_executed_action_and_the_next_state(policy: OnnxPolicy) -> None:
    job, seen_a, seen_b = _two_episode_job(policy, seed=9)
    low, high = -np.ones(ACT_DIM), np.ones(ACT_DIM)
    obs, act, nxt = episode_transitions(job.episodes, low, high)
    assert obs.shape == nxt.shape == (7, OBS_DIM) and act.shape == (7, ACT_DIM)
    np.testing.assert_array_equal(obs, np.concatenate([seen_a[:-1], seen_b[:-1]]))
    np.testing.assert_array_equal(nxt, np.concatenate([seen_a[1:], seen_b[1:]]))  # across the episode end too
    np.testing.assert_array_equal(act, np.clip(np.concatenate([np.stack(e.act) for e in job.episodes]), -0.5, 0.5))
    # Without executed actions and the last observation (a recorder that does not give them): clipped raw
    # actions to the bounds, and the last step of each episode is dropped.
    bare = [Episode(0, obs=e.obs, act=e.act, rewards=e.rewards) for e in job.episodes]
    obs2, act2, nxt2 = episode_transitions(bare, -0.1 * np.ones(ACT_DIM), 0.1 * np.ones(ACT_DIM))
    assert obs2.shape == (5, OBS_DIM) and np.abs(act2).max() == pytest.approx(0.1)
    np.testing.assert_array_equal(nxt2[:2], seen_a[1:3])


def test_model_imagination_feeds_identify_and_imagine(policy: OnnxPolicy) -> None:
    """ModelImagination with recording stand-ins for identify and imagine: the real transitions go to identify,
    the identified member and last layer to imagine, start states are the batch's episode starts."""
    job, seen_a, seen_b = _two_episode_job(policy, seed=10)
    calls: dict[str, Any] = {}
    layer = (np.zeros((3, 4, OBS_DIM)), np.zeros((3, 1, OBS_DIM)))
    errors_before = np.ones(3)

    def identify(ens: Any, obs: np.ndarray, act: np.ndarray, nxt: np.ndarray, ridge: float,
                 holdout: float) -> Any:
        calls["identify"] = (ens, obs, act, nxt, ridge, holdout)
        return SimpleNamespace(last_layer=layer, error_before=errors_before, error_after=np.array([0.9, 0.2, 0.5]),
                               best_member=1)

    def imagine(ens: Any, member: int, last_layer: Any, pol: Any, params: Any, starts: np.ndarray, horizon: int,
                reward: Any, done: Any, rng: np.random.Generator, low: Any, high: Any) -> Any:
        calls["imagine"] = (member, last_layer, params, starts, horizon, reward, done)
        n = len(starts)
        return (np.repeat(starts[:, None], horizon, 1), rng.standard_normal((n, horizon, ACT_DIM)),
                np.ones((n, horizon)), np.ones((n, horizon)))

    def reward(o: np.ndarray, a: np.ndarray, n: np.ndarray) -> np.ndarray:
        return np.zeros(len(o))

    step = ModelImagination("ens", reward, None, -np.ones(ACT_DIM), np.ones(ACT_DIM), rollouts=9, horizon=5,
                            ridge=0.3, identify_fn=identify, imagine_fn=imagine)
    imagined = step(policy, None, job.episodes, np.random.default_rng(0))
    ens, obs, act, nxt, ridge, holdout = calls["identify"]
    assert ens == "ens" and (ridge, holdout) == (0.3, IDENT_HOLDOUT) and obs.shape == (7, OBS_DIM)
    np.testing.assert_array_equal(nxt[-1], seen_b[-1])
    np.testing.assert_array_equal(act, np.clip(np.concatenate([np.stack(e.act) for e in job.episodes]), -0.5, 0.5))
    member, last_layer, params, starts, horizon, reward_fn, done_fn = calls["imagine"]
    assert member == 1 and last_layer is layer and params is None and horizon == 5 and done_fn is None
    assert starts.shape == (9, OBS_DIM) and reward_fn is reward
    firsts = {tuple(seen_a[0]), tuple(seen_b[0])}
    assert {tuple(s) for s in starts} == firsts  # episode starts only, both drawn (9 draws of 2)
    assert imagined.member == 1 and imagined.obs.shape == (9, 5, OBS_DIM) and imagined.error_after[1] == 0.2
    assert imagined.refitted
    # A trained last layer that predicts the held-out transitions better than any refit: that member, as trained.
    errors_before = np.array([0.6, 0.5, 0.1])
    imagined = step(policy, None, job.episodes, np.random.default_rng(0))
    assert calls["imagine"][:2] == (2, None) and imagined.member == 2 and not imagined.refitted
    # The job seeds its stream with (seed, generation, step): the same job gives the same step.
    job.imagination = step
    first, again = job.run(), job.run()
    for name in policy.param_names:
        np.testing.assert_array_equal(first.params[name], again.params[name])  # type: ignore[index]


def test_batch_records_give_the_returns_per_inner_step(policy: OnnxPolicy) -> None:
    rng = np.random.default_rng(12)
    adapter = OnlineAdapter(episodes=1, steps_max=1, revert_margin=0.0)
    adapter.reset(policy, imagination=FakeImagination())
    job = _episode(adapter, policy, rng, 4, reward=1.0)
    assert job is not None
    adapter.deliver(job.run())
    _episode(adapter, policy, rng, 4, reward=0.5)  # the adapted parameters return less: revert
    records = adapter.take_records()
    assert [(r["event"], r["steps"], r["return"], r["reverted"], r["mode"]) for r in records] == [
        ("batch", 0, 4.0, False, "model"), ("batch", 1, 2.0, True, "model")]
    assert adapter.take_records() == [] and adapter.reverted == 1


# ------------------------------------------------------------------------------------------ adaptation.jsonl
def test_log_appends_one_json_line_per_record(tmp_path: Path) -> None:
    warnings: list[str] = []
    log = AdaptationLog(tmp_path / "run", warnings.append)
    assert log.append({"event": "step", "step": 1}) and log.append({"event": "batch", "return": 2.5})
    lines = (tmp_path / "run" / LOG_FILE).read_text().splitlines()
    assert [json.loads(line)["event"] for line in lines] == ["step", "batch"] and log.written == 2
    assert json.loads(lines[1])["return"] == 2.5 and json.loads(lines[0])["time"] > 1.6e9
    assert warnings == [] and log.failed == 0


def test_log_failures_are_counted_and_warned_rate_limited(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import errno
    import os

    warnings: list[str] = []
    log = AdaptationLog(tmp_path, warnings.append, warn_every_s=60.0)

    def full(fd: int, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    assert not any(log.append({"step": k}) for k in range(5))  # never raises
    assert log.failed == 5 and len(warnings) == 1 and "No space left on device" in warnings[0]
    assert "\n" not in warnings[0] and str(tmp_path / LOG_FILE) in warnings[0]
    monkeypatch.undo()
    # A short write (the disk filled up mid-line): the next line starts on a fresh line, so every whole line parses.
    log2 = AdaptationLog(tmp_path / "short", warnings.append, warn_every_s=0.0)
    written = os.write

    def short(fd: int, data: bytes) -> int:
        return written(fd, data[:7])

    assert log2.append({"step": 1})
    monkeypatch.setattr(os, "write", short)
    assert not log2.append({"step": 2})
    monkeypatch.undo()
    assert log2.append({"step": 3})
    lines = (tmp_path / "short" / LOG_FILE).read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines if line.endswith("}")] == [1, 3] and len(lines) == 3
    assert log2.failed == 1 and log2.written == 2 and len(warnings) == 2


def test_log_dir_check() -> None:
    assert check_log_dir("") is None and check_log_dir("  ") is None
    assert check_log_dir("/nonexistent/run") == Path("/nonexistent/run")  # created at the first line
    with pytest.raises(ValueError, match=r"^parameter log_dir '/etc/hostname' is a file, not a folder$"):
        check_log_dir("/etc/hostname")


def test_controller_ridge_default_is_identifications() -> None:
    """The adapt_ridge parameter's default (a literal, equal to config/controller.yaml) is the one chosen in
    mbmpo_core.identification."""
    pytest.importorskip("rclpy", reason="needs the ROS 2 wheels (pip install -e '.[ros]')")
    from mbmpo_core.identification import DEFAULT_RIDGE
    from mbmpo_ros.params import CONTROLLER_PARAMS

    assert {s.name: s.default for s in CONTROLLER_PARAMS}["adapt_ridge"] == DEFAULT_RIDGE
