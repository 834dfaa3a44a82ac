"""MB-MPO on a simulated robot (Clavera et al., 2018, Algorithm 1), top to bottom as :meth:`SimTrainingLoop.iteration`.

    collect real transitions with the K adapted policies (random actions before the first iteration); store them
    MetaLearner.improve(every stored transition):
        fit the dynamics ensemble (FIFO capacity)
        repeat meta_steps times: imagine pre-update rollouts -> inner step -> imagine post-update rollouts -> outer step
    evaluate theta and its real-data adaptation theta' on the real env (not counted as data)
    progress row, checkpoint, policy.onnx

The loop owns what a simulator makes possible: the envs and their samplers, the transition store, evaluation on
the real env, the run directory (``progress.csv``, ``checkpoints/``, ``policy.onnx``, and ``physics.json``
when the config's ``randomize`` section is set). The learning itself is the
:class:`MetaLearner`'s, which the ROS learner node drives the same way with data that arrives over DDS.

Everything a later iteration depends on (weights, RNG states, counters) is in the checkpoint, so a resumed run
continues exactly as the uninterrupted one would. Real data is stored as it is collected (the warm-up too, one
episode per env at a time), so a run killed at any moment resumes (:meth:`SimTrainingLoop.resume`) from its last
checkpoint plus what was stored after it, or, before the first checkpoint, from the stored warm-up data.

Domain randomisation (``config.randomize``): K = ``ensemble.num_models`` physics draws, draw d seeded by
(``config.seed``, d) and fixed for the run (a resumed run rebuilds the same ones); collection env m runs draw
m % K, and every stored row records its draw in the ``physics`` column, which the ensemble fit's
``member_emphasis`` uses to make member k lean towards draw k. Evaluation envs stay nominal (the paper's metric).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mbmpo_core.checkpoint import has_checkpoint, read_checkpoint, write_checkpoint
from mbmpo_core.config import Config, save_config
from mbmpo_core.episodes import pad_episodes
from mbmpo_core.export import export_policy
from mbmpo_core.imagination import Imagined
from mbmpo_core.meta import Alpha, inner_step
from mbmpo_core.meta_learner import MetaLearner, ProgressFn, rollout_batch
from mbmpo_core.policy import GaussianMLPPolicy, Params
from mbmpo_core.report import ProgressLog
from mbmpo_core.sampler import RealBatch, RealSampler, uniform_random_actions
from mbmpo_core.store import TransitionStore, reconcile, store_coverage
from mbmpo_core.task import TaskSpec

POLICY_NAME = "policy.onnx"
PHYSICS_NAME = "physics.json"


class SimTrainingLoop:
    """One MB-MPO run on simulated robots: envs, samplers, store, evaluation, run directory; learning by a
    :class:`MetaLearner` (``self.learner``)."""

    def __init__(self, config: Config, task: TaskSpec, run_dir: str | Path,
                 log: Callable[[str], None] = print, progress: ProgressFn | None = None) -> None:
        self.config = config
        self.task = task
        self.run_dir = Path(run_dir)
        self.log = log
        self.on_progress = progress  # where MetaLearner.improve reports its model epochs and meta-steps
        self.learner = MetaLearner(config, task)
        self.device = self.learner.device
        # Streams of their own (seed + 1), apart from the meta-learner's: warm-up actions, and the action noise
        # of the collecting and evaluated policies.
        self.rng = np.random.default_rng(config.seed + 1)
        self.generator = torch.Generator(device=self.device).manual_seed(config.seed + 1)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.store = TransitionStore(self.run_dir / "transitions", task.obs_dim, task.act_dim)
        self.progress = ProgressLog(self.run_dir)
        self.real_steps = 0
        self.collect_params: Params | None = None  # [M, ...] adapted policies of the last iteration
        # A resumed run whose store holds the next iteration's collection (a kill came after it was stored): that
        # iteration trains on it instead of collecting again.
        self.collection_stored = False
        # One env per meta-batch task: the M adapted policies collect side by side (the paper: a rollout per task),
        # and each is evaluated on its own env; the evaluation envs are apart from the collecting ones.
        tasks = config.meta.meta_batch_size
        self.draws = physics_draws(config)  # [] when randomisation is off
        # The physics draw of every collection env [M] (-1: nominal).
        self.env_physics = np.array([i % len(self.draws) if self.draws else -1 for i in range(tasks)])
        envs = [task.make_env(seed=config.seed * 100 + i,
                              perturbation=self.draws[i % len(self.draws)] if self.draws else None)
                for i in range(tasks)]
        self.sampler = RealSampler(envs, config.loop.horizon, task.action_low, task.action_high, seed=config.seed)
        eval_envs = [task.make_env(seed=config.seed * 100 + 99 + i) for i in range(tasks)]
        self.eval_sampler = RealSampler(eval_envs, config.loop.horizon, task.action_low, task.action_high,
                                        seed=config.seed + 12345)
        save_config(config, self.run_dir / "config.yaml")
        if self.draws:
            self._write_physics(envs)

    # ------------------------------------------------------------------ loop
    def train(self, total_steps: int, on_iteration: Callable[[dict[str, float]], None] | None = None) -> None:
        """Run iterations until ``total_steps`` real steps are collected, and at least one (a run resumed after its
        warm-up, before its first checkpoint, still owes iteration 0; one resumed after a collection was stored
        owes the iteration that trains on it)."""
        while self.real_steps < total_steps or self.learner.iteration == 0 or self.collection_stored:
            row = self.iteration()
            if on_iteration is not None:
                on_iteration(row)

    def iteration(self) -> dict[str, float]:
        """One MB-MPO iteration; returns its progress row."""
        t = time.perf_counter()
        train_returns = self._collect()
        sample_seconds = time.perf_counter() - t
        report = self.learner.improve(self.store.load_all(), progress=self.on_progress)
        self.collect_params = report.collect_params
        t = time.perf_counter()
        real_returns = self.evaluate(report.collect_params)
        row = report.progress_row(self.real_steps, train_returns, real_returns=real_returns,
                                  seconds={"sample": sample_seconds, "eval": time.perf_counter() - t})
        self.progress.append(row)
        self.progress.plot(f"MB-MPO on {self.task.name}")
        self.save_checkpoint()
        self.export_policy(self.run_dir / POLICY_NAME)
        return row

    def export_policy(self, path: str | Path) -> str:
        """Write the meta-policy as ONNX (and its inner-step graph beside it); returns the policy id."""
        return export_policy(self.learner.policy, path, **self.learner.export_args())

    # ------------------------------------------------------------- collection
    def _collect(self) -> list[float]:
        """Real data: random actions first, then the M adapted policies, one per env, each ``steps_per_iter / M``
        steps (whole episodes where the horizon divides it); persisted before use."""
        if self.collect_params is None:
            return self._warm_up()
        if self.collection_stored:  # stored by the killed run (and counted in real_steps): train on it
            self.collection_stored = False
            return []
        batch = self.sampler.sample(self._sampled_act_fn(self.collect_params), self.config.loop.steps_per_iter)
        self.store.append(self._stored(batch))
        self.real_steps += len(batch)
        return batch.episode_returns

    def _warm_up(self) -> list[float]:
        """Random actions until ``loop.random_steps`` real steps are stored (a resumed warm-up collects the rest),
        stored one batch of an episode per env at a time: a kill loses at most the batch being collected."""
        act_fn = uniform_random_actions(self.task.action_low, self.task.action_high, self.rng)
        per_batch = len(self.sampler.envs) * self.config.loop.horizon
        returns: list[float] = []
        while self.real_steps < self.config.loop.random_steps:
            batch = self.sampler.sample(act_fn, min(per_batch, self.config.loop.random_steps - self.real_steps))
            self.store.append(self._stored(batch))
            self.real_steps += len(batch)
            returns += batch.episode_returns
        return returns

    def _stored(self, batch: RealBatch) -> dict[str, np.ndarray]:
        """The columns to store of a collected batch: with randomisation, each row's physics draw too."""
        columns = batch.transitions()
        if self.draws:
            columns["physics"] = self.env_physics[batch.env]
        return columns

    def _write_physics(self, envs: list[Any]) -> None:
        """``physics.json``: every draw's perturbation (rebuildable with ``task.make_env(perturbation=...)``), the
        collection envs that run it and, for a MuJoCo env, its factors against the nominal model."""
        nominal = self.task.make_env(seed=0)
        try:
            draws = [{"draw": d, "perturbation": draw,
                      "collection_envs": np.flatnonzero(self.env_physics == d).tolist(),
                      "factors": physics_factors(envs[d], nominal)} for d, draw in enumerate(self.draws)]
        finally:
            nominal.close()
        head = json.dumps({"randomize": self.config.randomize.ranges(), "per_object": self.config.randomize.per_object,
                           "evaluation": "nominal"})[:-1]
        lines = ",\n  ".join(json.dumps(draw) for draw in draws)  # one line per draw
        (self.run_dir / PHYSICS_NAME).write_text(f"{head},\n \"draws\": [\n  {lines}\n ]}}\n")

    def _sampled_act_fn(self, params: Params) -> Callable[[np.ndarray], np.ndarray]:
        """Env i acts with a sample of the policy ``params[i]`` (every tensor ``[E, ...]``, or ``[1, ...]``: one
        policy for every env)."""
        def act(obs: np.ndarray) -> np.ndarray:
            o = torch.as_tensor(obs, dtype=torch.float32, device=self.device).unsqueeze(1)  # [E, 1, obs_dim]
            with torch.no_grad():
                a = self.learner.policy.sample(o, params, generator=self.generator)
            return a.squeeze(1).cpu().numpy()

        return act

    def _mean_act_fn(self, params: Params) -> Callable[[np.ndarray], np.ndarray]:
        """Env i acts with the mean action of ``params[i]`` (or of ``params[0]`` for ``[1, ...]`` params)."""
        def act(obs: np.ndarray) -> np.ndarray:
            o = torch.as_tensor(obs, dtype=torch.float32, device=self.device).unsqueeze(1)
            with torch.no_grad():
                return self.learner.policy(o, params).squeeze(1).cpu().numpy()

        return act

    # -------------------------------------------------------------- evaluation
    def evaluate(self, adapted: Params) -> dict[str, float]:
        """Real returns of theta and of its adapted policies ``adapted`` (theta'_1..M, every tensor ``[M, ...]``);
        evaluation episodes are not stored. Env m of the M evaluation envs runs ``loop.eval_episodes`` whole
        episodes per policy set, from the same start states for every set (paired); a task's return is the mean
        over its episodes, and each value below the mean over the M tasks:

        * ``return_pre``: theta, sampled actions (the stochastic policy; as every return here, of the clipped
          executed action, undiscounted, at most ``loop.horizon`` steps);
        * ``return_post``: theta'_m on env m, sampled actions (the paper's post-update return);
        * ``return_pre_det`` / ``return_post_det``: the same policies' mean actions;
        * ``return_adapted_real``: theta adapted by one inner step on the ``return_pre`` episodes (pooled as one
          task: what the robot's controller does), sampled actions.
        """
        episodes = self.config.loop.eval_episodes
        policy, sampler = self.learner.policy, self.eval_sampler
        theta = {k: v.detach().unsqueeze(0) for k, v in policy.params().items()}
        first = sampler.episode_counters.copy()

        def run(act_fn: Callable[[np.ndarray], np.ndarray]) -> RealBatch:
            sampler.episode_counters[:] = first
            return sampler.sample_episodes(act_fn, episodes)

        pre = run(self._sampled_act_fn(theta))
        m = self.config.meta
        real = adapt_on_real(policy, pre, self.learner.meta.alpha, m.gamma, m.gae_lambda, self.config.loop.horizon)
        returns = {"return_pre": pre, "return_post": run(self._sampled_act_fn(adapted)),
                   "return_pre_det": run(self._mean_act_fn(theta)), "return_post_det": run(self._mean_act_fn(adapted)),
                   "return_adapted_real": run(self._sampled_act_fn(real))}
        return {name: batch.mean_return_over_envs() for name, batch in returns.items()}

    # -------------------------------------------------------------- checkpoint
    def save_checkpoint(self) -> Path:
        """The meta-learner's state and this loop's counters, RNGs and episode counters; written atomically."""
        own = {"real_steps": self.real_steps, "store": store_coverage(self.store),
               "collect_params": self.collect_params,
               "rng": self.rng.bit_generator.state, "generator": self.generator.get_state(),
               "sampler_episodes": torch.tensor(self.sampler._episode),
               "eval_episodes": torch.tensor(self.eval_sampler._episode)}
        return write_checkpoint(self.run_dir, {**self.learner.state_dict(), "sim_loop": own})

    def resume(self) -> None:
        """Continue the run in the run directory: from its checkpoint if it has one, else from its stored data
        (a run killed before its first checkpoint: the warm-up goes on from what it stored)."""
        if has_checkpoint(self.run_dir):
            self.load_checkpoint(self.run_dir)
            return
        self.real_steps = len(self.store)
        self._streams_past_the_store()
        self.progress.truncate(0)
        lost = f"; {len(self.store.corrupt)} corrupt batches skipped" if self.store.corrupt else ""
        self.log(f"resume: no checkpoint yet; the warm-up continues from the {self.real_steps} stored transitions"
                 f"{lost}")

    def load_checkpoint(self, path: str | Path) -> None:
        """Restore a checkpoint written by :meth:`save_checkpoint` (``path``: file or run directory); the step count
        becomes what the store holds (data stored after the checkpoint is the next iteration's: it trains on it
        without collecting; data lost to corruption is collected again), and the log says how the two differ."""
        state = read_checkpoint(path, self.device, warn=lambda message: self.log(f"warning: {message}"))
        if "sim_loop" not in state:
            raise ValueError(f"{path}: not a checkpoint of the simulated training loop (written by the learner node?)")
        self.learner.load_state_dict(state)
        own = state["sim_loop"]
        self.real_steps = int(own["real_steps"])
        self.collect_params = own["collect_params"]
        self.rng.bit_generator.state = own["rng"]
        self.generator.set_state(own["generator"].cpu())
        self.sampler._episode[:] = own["sampler_episodes"].cpu().numpy()
        self.eval_sampler._episode[:] = own["eval_episodes"].cpu().numpy()
        account = reconcile(own.get("store", {"transitions": own.get("transitions", 0)}), self.store)
        if account.lost or account.newer:
            # Data of an iteration killed before its checkpoint is real data: kept and used. Data lost to corruption
            # is collected again. Either way the run is no longer bit-identical to an uninterrupted one.
            self.log(f"resume: {account.describe()}; real steps {self.real_steps} -> {account.held} (what the store "
                     "holds)")
        if account.newer:
            self._streams_past_the_store()  # the checkpoint's streams made the newer data: they would repeat it
            self.collection_stored = self.collect_params is not None
        self.real_steps = account.held
        self.progress.truncate(self.learner.iteration)

    def _streams_past_the_store(self) -> None:
        """Random streams and env reset seeds that made none of the stored data: replaying the streams of a
        checkpoint (or the seeded warm-up) after a kill would store the same episodes a second time."""
        held = len(self.store)
        self.rng = np.random.default_rng([self.config.seed + 1, held])
        self.generator.manual_seed(int(np.random.default_rng([self.config.seed + 2, held]).integers(2**62)))
        stored_episodes = self.store.load_all()["episode"]
        self.sampler._episode[:] = int(stored_episodes.max()) + 1 if len(stored_episodes) else 0

    def close(self) -> None:
        self.progress.close()


def physics_draws(config: Config) -> list[dict[str, Any]]:
    """The run's K = ``ensemble.num_models`` physics draws as perturbation dicts (``task.make_env(perturbation=)``),
    [] when randomisation is off. The draws are a function of ``config.seed`` and K (a resumed run rebuilds them):
    one factor per ``*_range`` key (``{"mass_scale": 0.73, ...}``), or with ``randomize.per_object`` the ranges and
    a ``draw_seed`` for ``sim/perturb.py``'s per-object draws."""
    ranges, k = config.randomize.ranges(), config.ensemble.num_models
    if not ranges:
        return []
    rng = np.random.default_rng([config.seed % 2**32, 0x9D1C5])
    if config.randomize.per_object:
        return [{**ranges, "draw_seed": int(seed)} for seed in rng.integers(2**31, size=k)]
    # Latin hypercube: each key's K factors fall one in each of K equal slices of its range, in an order of their
    # own, so that even 5 draws span every range (independent uniform draws can all miss one end of it).
    factors = {key.removesuffix("_range"): lo + (hi - lo) * (rng.permutation(k) + rng.uniform(size=k)) / k
               for key, (lo, hi) in ranges.items()}
    return [{key: round(float(values[d]), 4) for key, values in factors.items()} for d in range(k)]


# A MuJoCo model's fields the *_range perturbations scale (first column of the 2-D ones), by the name a reader knows.
_PHYSICS_FIELDS = {"mass": "body_mass", "damping": "dof_damping", "friction": "geom_friction",
                   "gear": "actuator_gear"}


def physics_factors(env: Any, nominal: Any) -> dict[str, list[float | None]]:
    """Per-object factors of ``env``'s physics against ``nominal``'s (None where the nominal value is 0), for the
    fields of :data:`_PHYSICS_FIELDS`; {} for an env without a MuJoCo model."""
    model = getattr(getattr(env, "unwrapped", None), "model", None)
    base = getattr(getattr(nominal, "unwrapped", None), "model", None)
    factors: dict[str, list[float | None]] = {}
    for name, field in _PHYSICS_FIELDS.items():
        if not (hasattr(model, field) and hasattr(base, field)):
            continue
        ours, theirs = (np.asarray(getattr(m, field), dtype=np.float64) for m in (model, base))
        ours, theirs = ours.reshape(len(ours), -1)[:, 0], theirs.reshape(len(theirs), -1)[:, 0]
        factors[name] = [round(float(a / b), 4) if b else None for a, b in zip(ours, theirs, strict=True)]
    return factors


def episodes_as_task(batch: RealBatch, horizon: int, device: torch.device) -> Imagined:
    """Real episodes (of one env or several: rows are grouped by env and episode) as a one-task batch:
    obs [1, E, H, obs_dim], act (raw) [1, E, H, act_dim], rewards/mask [1, E, H] for E episodes; episodes shorter
    than the horizon are zero-padded with mask 0."""
    order = np.lexsort((np.arange(len(batch)), batch.episode, batch.env))  # by env, then episode, then time
    step = batch.step[order]
    starts = np.flatnonzero(step == 0)
    ends = np.append(starts[1:], len(batch))
    obs, act_raw, reward = batch.obs[order], batch.act_raw[order], batch.reward[order]
    padded = pad_episodes([(obs[lo:hi], act_raw[lo:hi], reward[lo:hi])
                           for lo, hi in zip(starts, ends, strict=True)], horizon)

    def t(x: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(x[None], dtype=torch.float32, device=device)

    return Imagined(*(t(x) for x in padded))


def adapt_on_real(policy: GaussianMLPPolicy, batch: RealBatch, alpha: Alpha, gamma: float, lam: float,
                  horizon: int) -> Params:
    """theta' [1, ...] from real episodes of theta, by the same inner step as in meta-training."""
    theta = {k: v.detach().unsqueeze(0) for k, v in policy.params().items()}
    traj = episodes_as_task(batch, horizon, theta["log_std"].device)
    real = rollout_batch(policy, theta, traj, gamma, lam)
    adapted = inner_step(policy, policy.params(), real, alpha, create_graph=False)
    return {k: v.detach() for k, v in adapted.items()}
