"""Reports from synthetic run directories: the numbers per variant, the seed counts, the plots."""

from __future__ import annotations

import json
import math

import pytest

from musicgen_lora import report


def _write_run(root, name, *, variant, seed, val_losses, tokens_per_s, outcome="completed", experiment="07_demo"):
    """A run directory as train writes it: config.json, manifest.json, metrics.jsonl (evals at steps 10, 20)."""
    run_dir = root / name
    run_dir.mkdir(parents=True)
    config = {"experiment": experiment, "variant": variant, "seed": seed, "smoke": True}
    (run_dir / "config.json").write_text(json.dumps(config))
    (run_dir / "manifest.json").write_text(json.dumps({"outcome": outcome, "git": {"commit": "0123456789abcdef", "dirty": False}}))
    records = []
    for index, (step, val) in enumerate(zip((10, 20), val_losses, strict=True)):
        time = 100.0 * (index + 1) + seed
        records.append({"step": step, "time": time, "train/loss": val + 0.5, "perf/tokens_per_s": tokens_per_s[index]})
        records.append({"step": step, "time": time + 1, "val/loss": val, "val/ce_cb0": val - 0.1, "val/ce_cb1": val + 0.1})
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return run_dir


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "runs"
    dirs = [
        # variant a: final val 1, 2, 3 -> mean 2, sample std 1; best = the lower first eval
        _write_run(root, "a0", variant="a", seed=0, val_losses=(0.5, 1.0), tokens_per_s=(100, 300)),
        _write_run(root, "a1", variant="a", seed=1, val_losses=(2.5, 2.0), tokens_per_s=(200, 400)),
        _write_run(root, "a2", variant="a", seed=2, val_losses=(3.5, 3.0), tokens_per_s=(300, 500)),
        # variant b: final 4 and 6 -> mean 5, std sqrt(2)
        _write_run(root, "b0", variant="b", seed=0, val_losses=(5.0, 4.0), tokens_per_s=(1000, 1000)),
        _write_run(root, "b1", variant="b", seed=1, val_losses=(7.0, 6.0), tokens_per_s=(3000, 3000)),
        # a failed run is left out of the numbers and listed
        _write_run(root, "b2", variant="b", seed=2, val_losses=(9.0, 9.0), tokens_per_s=(1, 1), outcome="failed"),
        # another experiment's run is never picked up
        _write_run(root, "other", variant="a", seed=0, val_losses=(0.0, 0.0), tokens_per_s=(1, 1), experiment="08_other"),
    ]
    return root, dirs


def test_find_run_dirs_by_experiment(runs):
    root, _ = runs
    assert [p.name for p in report.find_run_dirs(root, "07_demo")] == ["a0", "a1", "a2", "b0", "b1", "b2"]


def test_table_means_stds_and_seed_counts(runs):
    _, dirs = runs
    groups = report.group_by_variant([report.load_run_dir(d) for d in dirs[:5]], order=["b", "a"])
    assert list(groups) == ["b", "a"]
    columns, table = report.variant_table(groups)
    assert columns == ["final_val_loss", "best_val_loss", "val/ce_cb0", "val/ce_cb1", "tokens_per_s", "wall_time_s"]
    a, b = table["a"], table["b"]
    assert (a["final_val_loss"].mean, a["final_val_loss"].std, a["final_val_loss"].n) == pytest.approx((2.0, 1.0, 3))
    assert a["best_val_loss"].mean == pytest.approx((0.5 + 2.0 + 3.0) / 3)
    assert a["val/ce_cb0"].mean == pytest.approx(1.9) and a["val/ce_cb1"].mean == pytest.approx(2.1)
    assert a["tokens_per_s"].mean == pytest.approx(300.0)  # medians 200, 300, 400
    assert a["wall_time_s"].mean == pytest.approx(202.0) and a["wall_time_s"].std == pytest.approx(1.0)
    assert (b["final_val_loss"].mean, b["final_val_loss"].std, b["final_val_loss"].n) == pytest.approx((5.0, math.sqrt(2), 2))
    assert str(a["final_val_loss"]) == "2.0 ± 1.0"  # rounded to the spread
    assert str(report.aggregate([3.0])) == "3.0000"  # one seed: no spread to show

    band = report.curve(groups["a"], "val/loss")
    assert band.steps.tolist() == [10, 20]
    assert band.mean.tolist() == pytest.approx([6.5 / 3, 2.0])
    assert (band.low.tolist(), band.high.tolist()) == ([0.5, 1.0], [3.5, 3.0])
    assert band.times.tolist() == pytest.approx([102.0, 202.0])


def test_report_command_writes_markdown_and_plots(runs, tmp_path):
    _, dirs = runs
    out = tmp_path / "reports"
    code = report.main([*map(str, dirs[:6]), "--out", str(out)])
    assert code == 0
    text = (out / "07_demo.md").read_text()
    assert "Smoke-scale demonstration, not a finding" in text
    assert "| a | 3 | 2.0 ± 1.0 |" in text
    assert "| b | 2 | 5.0 ± 1.4 |" in text
    assert "b2" in text.split("Left out")[1]  # the failed run is listed, not averaged
    for png in ("07_demo_loss_vs_step.png", "07_demo_loss_vs_time.png"):
        assert f"]({png})" in text
        data = (out / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_report_without_runs_fails_clearly(tmp_path, capsys):
    script = tmp_path / "09_empty.py"
    script.write_text('"""Nothing."""\nCONFIG = None\nVARIANTS = {"x": {}}\n')
    assert report.main([str(script), "--runs-root", str(tmp_path / "none"), "--out", str(tmp_path)]) == 2
    assert "no runs found" in capsys.readouterr().err


def test_wandb_report_failure_keeps_the_local_report(runs, tmp_path, capsys, monkeypatch):
    """Without a W&B login the report is not published, and the local report is still written."""
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc login either
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    _, dirs = runs
    (dirs[0] / "wandb_run.json").write_text(json.dumps({"id": "abc", "mode": "online", "entity": "e", "project": "p", "url": "https://wandb.ai/e/p/runs/abc"}))
    out = tmp_path / "reports"
    assert report.main([*map(str, dirs[:5]), "--out", str(out), "--wandb-report"]) == 1
    err = capsys.readouterr().err
    assert "W&B report not published" in err and "W&B login" in err
    text = (out / "07_demo.md").read_text()
    assert "[abc](https://wandb.ai/e/p/runs/abc)" in text  # the run's W&B link


def test_runs_from_the_wandb_public_api(monkeypatch):
    """W&B history rows (global_step, _runtime, media) become metrics.jsonl-style records."""
    import wandb

    class FakeRun:
        def __init__(self, seed, state):
            self.config = {"experiment": "07_demo", "variant": "a", "seed": seed, "smoke": False, "manifest": {"outcome": "x"}}
            self.state, self.name, self.id, self.url = state, f"07_demo-a-s{seed}", f"id{seed}", f"https://wandb.ai/e/p/runs/id{seed}"

        def scan_history(self):
            yield {"_step": 0, "_runtime": 1.5, "global_step": 0, "samples/base": {"_type": "audio"}}
            yield {"_step": 1, "_runtime": 9.0, "global_step": 10, "train/loss": 2.0, "perf/tokens_per_s": 50}
            yield {"_step": 2, "_runtime": 9.5, "global_step": 10, "val/loss": 1.0 + self.config["seed"]}

    class FakeApi:
        def runs(self, path, filters=None):
            assert (path, filters) == ("e/p", {"group": "07_demo"})
            return [FakeRun(0, "finished"), FakeRun(1, "crashed"), type("Other", (), {"config": {}})()]

    monkeypatch.setattr(wandb, "Api", FakeApi)
    runs = report.load_wandb_runs("e/p", "07_demo")
    assert [(r.seed, r.outcome) for r in runs] == [(0, "completed"), (1, "failed")]
    assert runs[0].records == [
        {"step": 0, "time": 1.5},
        {"step": 10, "time": 9.0, "train/loss": 2.0, "perf/tokens_per_s": 50},
        {"step": 10, "time": 9.5, "val/loss": 1.0},
    ]
    assert runs[0].url.endswith("/id0") and report.run_summary(runs[0])["final_val_loss"] == 1.0
