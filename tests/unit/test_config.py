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
