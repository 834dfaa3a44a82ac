"""MB-MPC, the MB-MPO paper's model-based baseline: random-shooting MPC on a learned dynamics ensemble.

    for iteration = 0, 1, ...
        collect real steps: uniform random actions first, then MPC (plan at every step, execute the first action)
        fit the ensemble on every stored transition (FIFO capacity), warm-started
    plan(obs): N uniform random action sequences of H steps, each rolled out through one member of the ensemble
               (N / K sequences per member, "trajectory sampling"), scored by the task's model-space reward (a
               sequence stops scoring when task.done says it fell); the first action of the best one is executed

The ensemble, its fit and the data cadence are MB-MPO's (``benchmarks/cpu_small.yaml``: same models, random
warm-up steps and real steps per refit), so the arms differ only in how they act on the model (Nagabandi et al.,
2018, "Neural Network Dynamics for Model-Based Deep RL with Model-Free Fine-Tuning", random shooting).

The planner keeps Nagabandi et al.'s 1000 candidates x 20 steps. Rolling every candidate through all K members and
averaging them (``ensemble_use="mean"``) costs K times as much per plan, and a run plans ~140k times (100k real
steps plus the evaluation episodes); benchmarks/mpc_planner.py measures both on a trained ensemble.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from eval_protocol import EVAL_SEEDS, Heartbeat, ProgressLine, RunSpec, evaluate, resume_curve, resume_state, save_state

from mbmpo_core.config import load_config
from mbmpo_core.ensemble import DynamicsEnsemble
from mbmpo_core.registry import make_task
from mbmpo_core.sampler import RealSampler, uniform_random_actions
from mbmpo_core.store import TransitionStore
from mbmpo_core.task import TaskSpec

CANDIDATES = 1000
PLAN_HORIZON = 20
ENSEMBLE_USE = "split"  # see RandomShootingPlanner


class RandomShootingPlanner:
    """Random shooting on an ensemble: ``plan(obs [obs_dim]) -> action [act_dim]``.

    ``ensemble_use``: "split" rolls each candidate through one member (candidates are dealt to the K members, so
    ``candidates`` is rounded up to a multiple of K); "mean" rolls every candidate through the members' mean
    prediction (K times the cost).
    """

    def __init__(self, ensemble: DynamicsEnsemble, task: TaskSpec, candidates: int = CANDIDATES,
                 horizon: int = PLAN_HORIZON, seed: int = 0, ensemble_use: str = ENSEMBLE_USE) -> None:
        if candidates < 1 or horizon < 1:
            raise ValueError(f"candidates and horizon must be >= 1, got {candidates}, {horizon}")
        if ensemble_use not in ("split", "mean"):
            raise ValueError(f"ensemble_use must be 'split' or 'mean', got {ensemble_use!r}")
        self.ensemble, self.task, self.ensemble_use = ensemble, task, ensemble_use
        k = ensemble.num_models
        self.candidates = -(-candidates // k) * k if ensemble_use == "split" else candidates
        self.horizon = horizon
        self.low = torch.as_tensor(task.action_low, dtype=torch.float32)
        self.high = torch.as_tensor(task.action_high, dtype=torch.float32)
        self.generator = torch.Generator().manual_seed(seed)

    def _step(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """state: [N, obs_dim], action: [N, act_dim] -> predicted next state [N, obs_dim]."""
        if self.ensemble_use == "mean":
            return self.ensemble.predict_all(state, action).mean(dim=0)  # [K, N, obs_dim] -> [N, obs_dim]
        k = self.ensemble.num_models  # candidate i is member i // (N / K)'s
        shape = (k, self.candidates // k, -1)
        return self.ensemble.predict(state.reshape(shape), action.reshape(shape)).reshape(self.candidates, -1)

    @torch.no_grad()
    def plan(self, obs: np.ndarray) -> np.ndarray:
        """The first action of the best of ``candidates`` random sequences from ``obs`` [obs_dim] -> [act_dim]."""
        n, act_dim = self.candidates, len(self.low)
        u = torch.rand(self.horizon, n, act_dim, generator=self.generator)
        actions = self.low + (self.high - self.low) * u  # [H, N, act_dim]
        state = torch.as_tensor(obs, dtype=torch.float32).expand(n, -1)  # [N, obs_dim]
        score = torch.zeros(n)
        alive = torch.ones(n, dtype=torch.bool)
        for t in range(self.horizon):
            next_state = self._step(state, actions[t])
            score += torch.where(alive, self.task.reward(state, actions[t], next_state), 0.0)
            alive &= ~self.task.done(next_state)
            state = next_state
        return actions[0, int(torch.argmax(score))].numpy().astype(np.float64)


def _stream(seed: int, real_steps: int, evaluation: bool) -> int:
    """A seed per (run, step count, purpose)."""
    return (seed * 1_000_003 + real_steps) * 2 + int(evaluation)


def run_mpc(spec: RunSpec, config_path: Path) -> None:
    """Train (or resume) one MB-MPC run to its budget; marks are evaluated with the planner of the latest fit."""
    torch.set_num_threads(1)
    config = load_config(config_path, task=spec.task, seed=spec.seed, device="cpu")
    task = make_task(spec.task, horizon=spec.horizon)
    loop = config.loop
    state_path = spec.checkpoint_dir / "state.json"
    ensemble_path = spec.checkpoint_dir / "ensemble.pt"
    state = resume_state(state_path, spec)
    curve, clock = resume_curve(spec, state)
    ensemble = DynamicsEnsemble.from_config(task.obs_dim, task.act_dim, config.ensemble, seed=spec.seed,
                                            ignored_obs=task.position_obs)
    store = TransitionStore(spec.checkpoint_dir / "transitions", task.obs_dim, task.act_dim)
    fitted_at = -1  # real steps of the data the ensemble was last fitted on
    if state is not None:
        ensemble.load_state_dict(torch.load(ensemble_path, weights_only=True))
        fitted_at = int(state["fitted_at"])
    planner = RandomShootingPlanner(ensemble, task)
    rng = np.random.default_rng(spec.seed + 1)
    env = task.make_env(seed=spec.seed * 100)
    eval_env = task.make_env(seed=EVAL_SEEDS[0])
    random_policy = uniform_random_actions(task.action_low, task.action_high, rng)
    progress = ProgressLine(spec.name, len(store), spec.budget)
    heartbeat, plans = Heartbeat(), [0]

    def plan(obs: np.ndarray) -> np.ndarray:
        """The planner, counted: a line every minute (an evaluation of 10 MPC episodes takes many)."""
        plans[0] += 1
        heartbeat.beat(lambda: f"{spec.name}: {plans[0]} plans so far ({len(store)} real steps stored)")
        return planner.plan(obs)

    print(f"{spec.name}: {'starting' if state is None else f'resuming at {len(store)} steps'}, "
          f"budget {spec.budget}, {len(spec.marks)} marks, {planner.candidates} candidates x {PLAN_HORIZON} steps, "
          f"{ENSEMBLE_USE} ensemble", flush=True)

    def evaluate_marks(upto: int) -> None:
        """Every pending mark below ``upto`` with the current planner (random actions before the first fit)."""
        for mark in [m for m in spec.marks if curve.last_steps < m < upto]:
            t0 = time.perf_counter()
            planner.generator.manual_seed(_stream(spec.seed, mark, evaluation=True))
            if fitted_at < 0:
                result = evaluate(lambda obs, _det: random_policy(obs[None])[0], eval_env, single_mode=True)
            else:
                result = evaluate(lambda obs, _det: plan(obs), eval_env, single_mode=True)
            clock.eval_wall_s += time.perf_counter() - t0
            print(progress(curve.append(mark, result, clock)), flush=True)
            heartbeat.reset()

    while True:
        real_steps = len(store)
        if fitted_at < real_steps and real_steps > 0:
            data = store.load_all()
            first = max(0, real_steps - config.ensemble.capacity)
            fit = ensemble.fit(data["obs"][first:], data["act"][first:], data["next_obs"][first:], first_row=first)
            fitted_at = real_steps
            print(f"{spec.name}: fit on {real_steps - first} transitions in {fit.seconds:.0f} s", flush=True)
        next_collect = loop.random_steps if real_steps == 0 else loop.steps_per_iter
        evaluate_marks(upto=real_steps + next_collect if real_steps < spec.budget else spec.budget + 1)
        spec.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        tmp = ensemble_path.with_suffix(".tmp")
        torch.save(ensemble.state_dict(), tmp)
        tmp.replace(ensemble_path)
        save_state(state_path, spec, curve, clock, fitted_at=fitted_at)
        if real_steps >= spec.budget:
            break
        # Seeds from the step count: a resumed run draws what the uninterrupted one would have.
        planner.generator.manual_seed(_stream(spec.seed, real_steps, evaluation=False))
        sampler = RealSampler([env], spec.horizon, task.action_low, task.action_high,
                              seed=_stream(spec.seed, real_steps, evaluation=False))
        act_fn = random_policy if real_steps == 0 else (lambda obs: np.stack([plan(row) for row in obs]))
        store.append(sampler.sample(act_fn, min(next_collect, spec.budget - real_steps)).transitions())
    eval_env.close()
    env.close()
    print(f"{spec.name}: done, {len(store)} steps, {clock.wall_s / 3600:.2f} h wall, "
          f"{clock.cpu_s / 3600:.2f} CPU-h", flush=True)
