"""A training run: the run configuration (`config`) and its checks (`validation`), the one place that
turns configuration into objects (`builders`), the loop over accelerate (`loop`), checkpoints and
resume (`checkpoint`, `resume`), the `prepare` command and the experiment entry point
(`experiment`) that every script in `experiments/` calls; the memory estimate (`architecture`,
`memory_estimate`, `host_memory`) and `--train.batch-size auto` (`auto_batch`).

Imports: anything below it (helpers, data, modeling, evaluation, tracking, azure secrets). Never
`tools` or the CLI.
"""
