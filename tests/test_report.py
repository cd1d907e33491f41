"""Reports from synthetic run directories: the numbers per variant, the seed counts, the plots."""

from __future__ import annotations

import json
import math

import pytest

from musicgen_lora.tracking import report


def _write_run(root, name, *, variant, seed, val_losses, tokens_per_s, outcome="completed", experiment="07_demo",
               config=None, manifest=None, step_time=0.5, base_loss=None):
    """A run directory as train writes it: config.json, manifest.json, metrics.jsonl (train logs and
    evals at steps 10, 20; with `base_loss`, the step-0 evaluation with the adapter disabled)."""
    run_dir = root / name
    run_dir.mkdir(parents=True)
    config = {"experiment": experiment, "variant": variant, "seed": seed, "smoke": True, "output_dir": str(run_dir),
              "data": {"val_fraction": 0.1}, "train": {"log_every": 10}, **(config or {})}
    (run_dir / "config.json").write_text(json.dumps(config))
    manifest = {"outcome": outcome, "git": {"commit": "0123456789abcdef", "dirty": False}, "world_size": 1, **(manifest or {})}
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    records = [] if base_loss is None else [{"step": 0, "time": 5.0, "val/loss": base_loss, "val/loss_base": base_loss}]
    for index, (step, val) in enumerate(zip((10, 20), val_losses, strict=True)):
        time = 100.0 * (index + 1) + seed
        records.append({"step": step, "time": time, "train/loss": (val or 1.0) + 0.5, "perf/tokens_per_s": tokens_per_s[index],
                        "perf/step_time_s": step_time * (index + 1)})
        if val is not None:
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
    selection = report.select_runs([report.load_run_dir(d) for d in dirs[:5]], order=["b", "a"])
    assert [g.label for g in selection.groups] == ["b", "a"]
    assert not selection.duplicates and not selection.unfinished
    columns, table = report.group_table(selection.groups)
    assert columns == ["final_val_loss", "best_val_loss", "val/ce_cb0", "val/ce_cb1", "tokens_per_s", "train_time_s", "wall_time_s"]
    a, b = table["a"], table["b"]
    assert (a["final_val_loss"].mean, a["final_val_loss"].std, a["final_val_loss"].n) == pytest.approx((2.0, 1.0, 3))
    assert a["best_val_loss"].mean == pytest.approx((0.5 + 2.0 + 3.0) / 3)
    assert a["val/ce_cb0"].mean == pytest.approx(1.9) and a["val/ce_cb1"].mean == pytest.approx(2.1)
    assert a["tokens_per_s"].mean == pytest.approx(300.0)  # medians 200, 300, 400
    assert a["train_time_s"].mean == pytest.approx(0.5 * 10 + 1.0 * 10)  # step time x steps per log window
    assert a["wall_time_s"].mean == pytest.approx(202.0) and a["wall_time_s"].std == pytest.approx(1.0)
    assert (b["final_val_loss"].mean, b["final_val_loss"].std, b["final_val_loss"].n) == pytest.approx((5.0, math.sqrt(2), 2))
    assert str(a["final_val_loss"]) == "2.0 ± 1.0"  # rounded to the spread
    assert str(report.aggregate([3.0])) == "3.0000"  # one seed: no spread to show

    band = report.curve(selection.groups[1].runs, "val/loss")
    assert band.steps.tolist() == [10, 20] and band.n == 3
    assert band.mean.tolist() == pytest.approx([6.5 / 3, 2.0])
    assert (band.low.tolist(), band.high.tolist()) == ([0.5, 1.0], [3.5, 3.0])
    assert band.times.tolist() == pytest.approx([5.0, 15.0])  # training time, not wall time (102, 202)


def test_report_command_writes_markdown_and_plots(runs, tmp_path):
    _, dirs = runs
    out = tmp_path / "reports"
    code = report.main([*map(str, dirs[:6]), "--out", str(out)])
    assert code == 0
    text = (out / "07_demo.md").read_text()
    assert "Smoke-scale demonstration, not a finding" in text
    assert "| a | 3 | 2.0 ± 1.0 |" in text
    assert "| b | 2 | 5.0 ± 1.4 |" in text
    assert "- `" + str(dirs[5]) + "` (b, seed 2): failed" in text.split("Did not complete")[1]  # listed, not averaged
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


@pytest.fixture
def messy_runs(tmp_path):
    """Duplicate seeds, runs with another configuration, a run without validation, a killed and a live run."""
    root = tmp_path / "runs"

    def run(name, seed, vals, end, **kwargs):
        kwargs.setdefault("base_loss", 8.0)
        manifest = {"end_time": end, **kwargs.pop("manifest", {})}
        return _write_run(root, name, variant="default", seed=seed, val_losses=vals, tokens_per_s=(10, 10),
                          experiment="07_messy", manifest=manifest, **kwargs)

    dirs = {
        # seed 0 three times: the latest complete one (final val 1.0) counts, the other two are duplicates
        "s0_old": run("s0_old", 0, (6.0, 5.0), "2026-01-01T00:00:00+00:00"),
        "s0_new": run("s0_new", 0, (2.0, 1.0), "2026-01-03T00:00:00+00:00"),
        "s0_mid": run("s0_mid", 0, (7.0, 6.0), "2026-01-02T00:00:00+00:00"),
        "s1": run("s1", 1, (4.0, 3.0), "2026-01-01T00:00:00+00:00"),
        # same configuration, but it logged no validation: counts as a run, never toward val loss n
        "s4_noval": run("s4_noval", 4, (None, None), "2026-01-01T00:00:00+00:00", base_loss=None),
        # another configuration: two processes; no validation set at all
        "s2_ddp": run("s2_ddp", 2, (0.5, 0.25), "2026-01-01T00:00:00+00:00", manifest={"world_size": 2}),
        "s3_noval": run("s3_noval", 3, (None, None), "2026-01-01T00:00:00+00:00", base_loss=None,
                        config={"data": {"val_fraction": 0.0}}),
        # killed: the manifest still says running, nobody holds the lock; and a live run holding its lock
        "s5_killed": run("s5_killed", 5, (9.0, 9.0), None, outcome="running"),
        "s6_live": run("s6_live", 6, (9.0, 9.0), None, outcome="running"),
    }
    (dirs["s5_killed"] / "run.lock").write_text(json.dumps({"pid": 999_999_999, "host": "gone"}))
    return root, dirs


def test_groups_duplicates_differing_configs_and_killed_runs(messy_runs):
    from musicgen_lora.tracking.run_lock import RunDirLock

    _, dirs = messy_runs
    lock = RunDirLock.acquire(dirs["s6_live"])
    try:
        selection = report.select_runs([report.load_run_dir(d) for d in dirs.values()])
    finally:
        lock.release()
    main, *others = selection.groups
    assert (main.label, [r.name for r in main.runs]) == ("default", ["s0_new", "s1", "s4_noval"])
    assert {g.label: [r.name for r in g.runs] for g in others} == {
        "default [world_size=2]": ["s2_ddp"], "default [data.val_fraction=0.0]": ["s3_noval"],
    }
    assert {g.label: g.differs for g in others}["default [world_size=2]"] == {"world_size": (2, 1)}
    assert sorted((dup.name, kept.name) for dup, kept in selection.duplicates) == [("s0_mid", "s0_new"), ("s0_old", "s0_new")]
    assert {run.name: state for run, state in selection.unfinished} == {"s5_killed": "killed (stale)", "s6_live": "running"}

    _, table = report.group_table(selection.groups)
    final = table["default"]["final_val_loss"]
    assert (final.mean, final.std, final.n) == pytest.approx((2.0, math.sqrt(2), 2))  # s4_noval has none
    improvement = table["default"]["improvement"]
    assert (improvement.mean, improvement.n) == pytest.approx((6.0, 2))  # base 8 - finals 1 and 3
    assert table["default"]["tokens_per_s"].n == 3
    assert table["default [data.val_fraction=0.0]"]["final_val_loss"].n == 0
    no_val = report.run_summary(report.load_run_dir(dirs["s3_noval"]))
    assert no_val.keys().isdisjoint({"final_val_loss", "best_val_loss", "improvement"}) and no_val["tokens_per_s"] == 10


def test_report_states_n_groups_and_left_out_runs(messy_runs, tmp_path):
    _, dirs = messy_runs
    out = tmp_path / "reports"
    assert report.main([*map(str, dirs.values()), "--out", str(out)]) == 0
    text = (out / "07_messy.md").read_text()
    assert "nan" not in text.lower()
    assert "| default | 3 | 2.0 ± 1.4 (n=2) | 2.0 ± 1.4 (n=2) | 6.0 ± 1.4 (n=2) |" in text
    assert "| default [world_size=2] | 1 | 0.2500 | 0.2500 | 7.7500 |" in text
    assert "| default [data.val_fraction=0.0] | 1 | – (n=0) |" in text
    assert "- `default [world_size=2]`: world_size = 2 (main group: 1)" in text
    assert f"- `{dirs['s0_old']}` (default, seed 0): `{dirs['s0_new']}` is used" in text
    assert f"- `{dirs['s5_killed']}` (default, seed 5): killed (stale)" in text
    assert "## Improvement over the base model" in text
    assert "| default | 2 | 8.0000 | 2.0000 | 6.0 ± 1.4 |" in text
    assert "training time (logged step times), not wall time" in text
    assert f"| default [world_size=2] | 2 | 20 | 2 | 0.2500 | 15.0 | 203.0 | `{dirs['s2_ddp']}` |" in text
    assert f"| default | 4 | 20 | 1 | – | 15.0 | 204.0 | `{dirs['s4_noval']}` |" in text


def test_report_names_the_fad_embeddings_and_reference(tmp_path):
    """The CLAP FAD is named as the one comparable with published numbers, the EnCodec-latent FAD as
    comparable only across this project's runs; both embeddings and the reference set are named."""
    from musicgen_lora.tracking.manifest import generation_metrics
    from musicgen_lora.training.config import RunConfig

    described = generation_metrics(RunConfig())
    dirs = []
    for seed in (0, 1):
        run_dir = _write_run(tmp_path / "runs", f"g{seed}", variant="a", seed=seed, val_losses=(2.0, 1.0),
                             tokens_per_s=(1, 1), manifest={"generation_metrics": described},
                             config={"metrics": {"clap_model": "laion/larger_clap_music"}})
        with (run_dir / "metrics.jsonl").open("a") as handle:
            handle.write(json.dumps({"step": 20, "time": 300.0, "gen/fad": 10.0 + seed, "gen/fad_clap": 0.5 + seed,
                                     "gen/clap": 0.1, "gen/reference_clips": 7}) + "\n")
        dirs.append(run_dir)
    out = tmp_path / "reports"
    assert report.main([*map(str, dirs), "--out", str(out)]) == 0
    text = (out / "07_demo.md").read_text()
    assert "final FAD (EnCodec latent) | final FAD (CLAP) | final CLAP score |" in text
    assert "| 10.50 ± 0.71 | 1.00 ± 0.71 |" in text
    notes = text.split("## Generation metrics")[1].split("## Loss curves")[0]
    assert "`laion/larger_clap_music`" in notes and "comparable with published CLAP FAD" in notes
    assert "EnCodec encoder latents of facebook/musicgen-small (frames pooling)" in notes
    assert "comparable only across runs" in notes
    assert "up to 32 held-out clips" in notes and "(7 clips in this run)" in notes
