"""MB-MPO and ME-TRPO arms of the comparison study, run by the project's :class:`SimTrainingLoop`.

One loop iteration collects real steps (random actions first, then the adapted policies), fits the ensemble and
meta-trains. The policy after the iteration that ended at ``R`` real steps is the one in use for the next
``steps_per_iter`` steps, so every mark in ``[R, R + steps_per_iter)`` is evaluated with it (mark 0: the untrained
meta-policy), the same "policy in use at that real step" the model-free arms are evaluated with. The evaluated
policy is the meta-policy theta itself (sampled and mean action), without adaptation on real data; the loop's own
``progress.csv`` (in the checkpoint folder) has its pre- and post-adaptation returns as well.

The loop checkpoints itself after every iteration; the run's clock and last evaluated mark go to ``state.json``
beside it, after the marks of that iteration are evaluated.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import torch
from eval_protocol import (
    EVAL_SEEDS,
    Policy,
    ProgressLine,
    RunSpec,
    evaluate,
    resume_curve,
    resume_state,
    save_state,
    ticking,
)

from mbmpo_core.config import load_config
from mbmpo_core.policy import GaussianMLPPolicy
from mbmpo_core.registry import make_task
from mbmpo_core.sim_loop import SimTrainingLoop


def policy_of(policy: GaussianMLPPolicy, generator: torch.Generator) -> Policy:
    """The eval protocol's policy for the meta-policy theta: obs [obs_dim] -> action [act_dim]."""

    @torch.no_grad()
    def act(obs: np.ndarray, deterministic: bool) -> np.ndarray:
        o = torch.as_tensor(obs, dtype=torch.float32).unsqueeze(0)  # [1, obs_dim]
        a = policy(o) if deterministic else policy.sample(o, generator=generator)
        return a[0].numpy().astype(np.float64)

    return act


def _catch_up(loop: SimTrainingLoop, name: str) -> None:
    """After a crash between an iteration's collection and its checkpoint, the loop resumes with that data stored
    but not learned from; learn from it now, so the next mark (perhaps the last) sees the policy trained on it."""
    if loop.learner.iteration == 0:
        return  # no iteration finished: the next one completes the warm-up and learns from all of it
    trained_on = loop.config.loop.random_steps + (loop.learner.iteration - 1) * loop.config.loop.steps_per_iter
    if loop.real_steps <= trained_on:
        return
    print(f"{name}: learning from the {loop.real_steps - trained_on} steps collected before the interruption",
          flush=True)
    loop.collect_params = loop.learner.improve(loop.store.load_all()).collect_params
    loop.save_checkpoint()


def run_meta_rl(spec: RunSpec, config_path: Path) -> None:
    """Train (or resume) one MB-MPO / ME-TRPO run with ``config_path`` to its budget, evaluating at every mark."""
    torch.set_num_threads(1)
    config = load_config(config_path, task=spec.task, seed=spec.seed, device="cpu")
    if config.loop.horizon != spec.horizon:
        raise SystemExit(f"{spec.name}: {config_path} has horizon {config.loop.horizon}, the study {spec.horizon}")
    task = make_task(spec.task, horizon=spec.horizon)
    state_path = spec.checkpoint_dir / "state.json"
    state = resume_state(state_path, spec)
    curve, clock = resume_curve(spec, state)
    run_dir = spec.checkpoint_dir / "run"
    if state is None:
        shutil.rmtree(run_dir, ignore_errors=True)  # a run directory this run's state does not know
    loop = SimTrainingLoop(config, task, run_dir, log=lambda line: print(f"{spec.name}: {line}", flush=True))
    if state is not None:
        loop.resume()  # from the loop's checkpoint, or from its stored warm-up if it has none yet
        _catch_up(loop, spec.name)
    stale = [m for m in spec.marks if curve.last_steps < m < loop.real_steps]
    if stale:
        print(f"{spec.name}: marks {stale} were not evaluated before the checkpoint at {loop.real_steps} steps; "
              "they are evaluated with the checkpoint's policy", flush=True)
    eval_env = task.make_env(seed=EVAL_SEEDS[0])
    generator = torch.Generator()
    policy = policy_of(loop.learner.policy, generator)
    progress = ProgressLine(spec.name, loop.real_steps, spec.budget)
    print(f"{spec.name}: {'starting' if state is None else f'resuming at {loop.real_steps} steps'} "
          f"({config_path.name}), budget {spec.budget}, {len(spec.marks)} marks", flush=True)

    def evaluate_marks(upto: int) -> None:
        for mark in [m for m in spec.marks if curve.last_steps < m < upto]:
            t0 = time.perf_counter()
            generator.manual_seed(spec.seed * 1_000_003 + mark)  # the stochastic episodes' noise, per mark
            result = evaluate(policy, eval_env)
            clock.eval_wall_s += time.perf_counter() - t0
            print(progress(curve.append(mark, result, clock)), flush=True)
        save_state(state_path, spec, curve, clock, real_steps=loop.real_steps)

    def next_learning() -> int:
        """Real steps at which the next iteration's policy takes over (the end of its collection)."""
        if loop.learner.iteration == 0:
            return config.loop.random_steps
        return loop.real_steps + config.loop.steps_per_iter

    evaluate_marks(upto=next_learning())
    while loop.real_steps < spec.budget or loop.learner.iteration == 0:
        with ticking(lambda elapsed: f"{spec.name}: iteration {loop.learner.iteration} running for "
                                     f"{elapsed:.0f} s ({loop.real_steps} real steps before it)"):
            row = loop.iteration()
        print(f"{spec.name}: iteration {int(row['iteration'])} done at {int(row['real_steps'])} steps in "
              f"{row['time_total']:.0f} s (fit {row['time_fit']:.0f}, outer {row['time_outer']:.0f})", flush=True)
        upto = next_learning() if loop.real_steps < spec.budget else spec.budget + 1
        evaluate_marks(upto)
    loop.close()
    eval_env.close()
    print(f"{spec.name}: done, {loop.real_steps} steps, {clock.wall_s / 3600:.2f} h wall, "
          f"{clock.cpu_s / 3600:.2f} CPU-h", flush=True)
