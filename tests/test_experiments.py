"""Every numbered experiment: its config and variants build, --help works, and a short --smoke run
of its first variant completes through the real entry point (in-process, tiny model, demo loops)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from musicgen_lora.helpers import load_experiment
from musicgen_lora.tools.sweep import SweepArgs, run_command, split_argv
from musicgen_lora.training.experiment import main as experiment_main
from musicgen_lora.training.experiment import resolve_config

REPO_ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted((REPO_ROOT / "experiments").glob("[0-9][0-9]_*.py"))


def _get(config, dotted: str):
    for part in dotted.split("."):
        config = getattr(config, part)
    return config


def test_the_numbered_experiments_exist():
    assert [p.stem for p in EXPERIMENTS][:6] == [
        "01_baseline", "02_lora_rank", "03_lora_targets", "04_condition_dropout", "05_captions", "06_windows",
    ]


@pytest.mark.parametrize("script", EXPERIMENTS, ids=lambda p: p.stem)
def test_config_variants_and_help(script, capsys):
    module = load_experiment(script)
    assert "Hypothesis" in module.__doc__ and "Run:" in module.__doc__
    for variant, overrides in module.VARIANTS.items():
        cfg = resolve_config(module.CONFIG, module.VARIANTS, ["--variant", variant, "--seed", "3"], script.stem)
        assert (cfg.experiment, cfg.variant, cfg.seed) == (script.stem, variant, 3)
        for dotted, value in overrides.items():
            assert _get(cfg, dotted) == value, (variant, dotted)
    with pytest.raises(SystemExit) as exited:
        resolve_config(module.CONFIG, module.VARIANTS, ["--help"], script.stem, module.__doc__)
    assert exited.value.code == 0
    assert "--lora.r" in capsys.readouterr().out


def test_variant_choices():
    ranks = load_experiment(REPO_ROOT / "experiments" / "02_lora_rank.py").VARIANTS
    assert {name: (o["lora.r"], o["lora.alpha"]) for name, o in ranks.items()} == {
        f"r{r}": (r, r) for r in (4, 8, 16, 32, 64)
    }
    targets = load_experiment(REPO_ROOT / "experiments" / "03_lora_targets.py").VARIANTS
    assert set(targets["all"]["lora.targets"]) >= {"fc1", "fc2", "embed_tokens", "lm_heads", "q_proj"}
    windows = load_experiment(REPO_ROOT / "experiments" / "06_windows.py").VARIANTS
    assert windows["w30_zero_pad"] == {"data.window_seconds": 30.0, "data.pad_mode": "zero_pad_legacy"}


def test_sweep_commands(tmp_path):
    own, azure, passthrough = split_argv(["exp.py", "--seeds", "0", "1", "--azure", "--compute", "gpu", "--", "--optim.lr", "2e-4"])
    assert (own, azure, passthrough) == (["exp.py", "--seeds", "0", "1"], ["--compute", "gpu"], ["--optim.lr", "2e-4"])
    args = SweepArgs(experiment=Path("experiments/02_lora_rank.py"), seeds=(0, 1), smoke=True, root=tmp_path)
    run_dir, command = run_command(args, "r8", 1, ["--train.max-steps", "5"])
    assert run_dir.parent == tmp_path / "02_lora_rank" and run_dir.name.startswith("02_lora_rank-r8-s1-")
    assert command[1:] == ["experiments/02_lora_rank.py", "--variant", "r8", "--seed", "1", "--output-dir", str(run_dir),
                           "--smoke", "--train.max-steps", "5"]


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("token_cache")


# The first variant of every experiment, plus the variants that take other code paths: LoRA on
# embeddings and LM heads, and training on encoded silence (an 8 s window pads every demo loop,
# which are 2.8 to 5.3 s long, at a quarter of the 30 s window's cost).
SMOKE_CASES = [(script, None, ()) for script in EXPERIMENTS[1:]] + [
    (REPO_ROOT / "experiments" / "03_lora_targets.py", "all", ()),
    (REPO_ROOT / "experiments" / "06_windows.py", "w30_zero_pad", ("--data.window-seconds", "8")),
]


@pytest.mark.parametrize(("script", "variant", "extra"), SMOKE_CASES, ids=[f"{s.stem}-{v or 'first'}" for s, v, _ in SMOKE_CASES])
def test_smoke_run(script, variant, extra, demo_dir, shared_cache, tmp_path):
    module = load_experiment(script)
    variant = variant or next(iter(module.VARIANTS))
    run_dir = tmp_path / "run"
    argv = [
        "--smoke", "--variant", variant, "--seed", "1", "--output-dir", str(run_dir),
        "--data.path", str(demo_dir), "--data.cache-dir", str(shared_cache),
        "--train.max-steps", "2", "--train.batch-size", "2", "--train.eval-every", "0", "--train.log-every", "1",
        "--train.checkpoint-every", "0", "--train.eval-max-windows", "2",
        "--sample.no-base-model", "--sample.seconds", "0.06", "--metrics.no-enabled", *extra,
    ]
    assert experiment_main(module.CONFIG, module.VARIANTS, script=str(script), argv=argv) == 0

    config = json.loads((run_dir / "config.json").read_text())
    assert (config["experiment"], config["variant"], config["seed"]) == (script.stem, variant, 1)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["outcome"] == "completed" and manifest["experiment_file"] == f"experiments/{script.name}"
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == 2 and any("val/loss" in r for r in records)
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()
    samples = {p.name for p in (run_dir / "samples").glob("*.wav")}
    assert "final_0.wav" in samples
    if config["sample"]["extra_guidance"]:  # 04: unguided samples next to the guided ones
        assert "final_g1_0.wav" in samples
