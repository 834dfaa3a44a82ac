"""Config loading: paper defaults, and one-line errors naming the key and the file."""

from pathlib import Path

import pytest

from mbmpo_core.config import Config, ConfigError, config_to_dict, load_config, save_config

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_default_yaml_equals_dataclass_defaults() -> None:
    assert load_config(ROOT / "config" / "default.yaml") == Config()


def test_paper_defaults() -> None:
    c = Config()
    assert (c.ensemble.num_models, c.ensemble.hidden_sizes, c.ensemble.batch_size) == (5, (512, 512), 500)
    assert (c.policy.hidden_sizes, c.policy.init_std) == ((32, 32), 1.0)
    assert (c.meta.max_kl, c.meta.cg_iters, c.meta.cg_damping, c.meta.max_backtracks) == (0.01, 10, 1e-5, 15)
    assert (c.meta.meta_batch_size, c.meta.rollouts_per_task, c.loop.horizon) == (20, 50, 200)
    assert (c.loop.random_steps, c.loop.steps_per_iter, c.ensemble.capacity) == (5000, 4000, 100_000)


def test_meta_knobs_load_from_yaml(tmp_path: Path) -> None:
    text = (
        "meta: {first_order: true, kl_hessian: first_order, hvp_subsample: 0.2, inner_surrogate: log_prob,\n"
        "       clip_eps: 0.2, target_inner_kl: 0.02, init_inner_kl_coef: 1e-3, adapt_inner_kl_coef: false,\n"
        "       promp_lr: 3e-4, promp_steps: 3}\n"
        "ensemble: {patience: 7, improvement_threshold: 0.02}\n"
    )
    c = load_config(write(tmp_path, text))
    m = c.meta
    assert (m.first_order, m.kl_hessian, m.hvp_subsample, m.inner_surrogate) == (True, "first_order", 0.2, "log_prob")
    assert (m.clip_eps, m.target_inner_kl, m.init_inner_kl_coef) == (0.2, 0.02, 1e-3)
    assert (m.adapt_inner_kl_coef, m.promp_lr, m.promp_steps) == (False, 3e-4, 3)
    assert (c.ensemble.patience, c.ensemble.improvement_threshold) == (7, 0.02)
    defaults = Config().meta
    assert (defaults.kl_hessian, defaults.hvp_subsample, defaults.first_order) == ("first_order", 0.2, False)


def test_round_trip(tmp_path: Path) -> None:
    c = load_config(write(tmp_path, "meta: {inner_lr: 0.01}\nensemble: {hidden_sizes: [64, 64]}\n"))
    save_config(c, tmp_path / "out.yaml")
    assert load_config(tmp_path / "out.yaml") == c
    assert config_to_dict(c)["ensemble"]["hidden_sizes"] == [64, 64]


def test_overrides_and_scientific_notation(tmp_path: Path) -> None:
    c = load_config(write(tmp_path, "meta: {cg_damping: 1e-4}\n"), task="Hopper-v5", seed=None)
    assert c.task == "Hopper-v5" and c.meta.cg_damping == pytest.approx(1e-4) and c.seed == 0


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("ensemble: {num_modls: 3}\n", "unknown key 'ensemble.num_modls'"),
        ("bogus: 1\n", "unknown key 'bogus'"),
        ("meta: {max_kl: fast}\n", "'meta.max_kl' must be float"),
        ("loop: {horizon: true}\n", "'loop.horizon' must be int"),
        ("policy: {hidden_sizes: 3}\n", "'policy.hidden_sizes' must be a list of int"),
        ("meta: 3\n", "'meta' must be a mapping"),
        ("- 1\n- 2\n", "top level must be a mapping"),
        ("a: [\n", "invalid YAML"),
        ("meta: {meta_batch_size: 7}\n", "'meta.meta_batch_size' (7) must be a multiple"),
        ("ensemble: {valid_fraction: 1.5}\n", "'ensemble.valid_fraction' must be in (0, 1)"),
        ("meta: {algo: ppo}\n", "'meta.algo' must be trpo or promp"),
        ("device: gpu\n", "'device' must be"),
        ("ensemble: {patience: 0}\n", "'ensemble.patience' must be >= 1"),
        ("ensemble: {improvement_threshold: 1.0}\n", "'ensemble.improvement_threshold' must be in [0, 1)"),
        ("ensemble: {early_stop_decay: 0.99}\n", "unknown key 'ensemble.early_stop_decay'"),
        ("meta: {kl_hessian: second_order}\n", "'meta.kl_hessian' must be exact or first_order"),
        ("meta: {hvp_subsample: 0}\n", "'meta.hvp_subsample' must be in (0, 1]"),
        ("meta: {inner_surrogate: logp}\n", "'meta.inner_surrogate' must be ratio or log_prob"),
        ("meta: {first_order: 1}\n", "'meta.first_order' must be bool"),
        ("meta: {clip_eps: 1.5}\n", "'meta.clip_eps' must be in (0, 1)"),
        ("meta: {target_inner_kl: 0}\n", "'meta.target_inner_kl' must be > 0"),
        ("meta: {init_inner_kl_coef: -1}\n", "'meta.init_inner_kl_coef' must be >= 0"),
        ("meta: {promp_lr: 0}\n", "'meta.promp_lr' must be > 0"),
        ("meta: {promp_steps: 0}\n", "'meta.promp_steps' must be >= 1"),
        ("meta: {cg_damping: -1e-5}\n", "'meta.cg_damping' must be >= 0"),
    ],
)
def test_bad_config_is_one_line_naming_key_and_file(tmp_path: Path, text: str, needle: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert needle in message and str(path) in message and "\n" not in message


def test_missing_file_is_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "nope.yaml")


def test_every_shipped_config_loads() -> None:
    ros_parameter_files = {"learner.yaml", "controller.yaml", "sim_robot.yaml"}
    configs = [p for p in (ROOT / "config").glob("*.yaml") if p.name not in ros_parameter_files]
    configs += [ROOT / "tests" / "learning" / "inverted_pendulum.yaml", *(ROOT / "benchmarks").glob("*.yaml")]
    assert len(configs) >= 5
    for path in configs:
        config = load_config(path)
        assert config.meta.meta_batch_size % config.ensemble.num_models == 0, path
