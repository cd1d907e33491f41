"""The Azure ML launcher: run the repo's experiments on Azure ML in an image built from uv.lock.

Modules, one concern each:
  workspace    which workspace (flags, env vars, config.json) and an authenticated client
  environment  the Docker build context (Dockerfile + lock files) and its hash-based version
  snapshot     the code upload: the git working tree, without caches, venvs or run outputs
  data         the training data input: an Azure ML reference, or a local folder uploaded once
  job          one command job (doctor, then the experiment) for one variant and seed
  guards       refusals: stale uv.lock, dirty git tree
  submit       variants x seeds -> jobs, or a dry run written to a folder
  jobs         status, logs, download, W&B sync of submitted jobs
  secrets      inside a job: the W&B key from Key Vault, else offline W&B
  commands     the `musicgen-lora azure` command line

Importing this package imports nothing from Azure: the training runner imports `secrets` in
every run, locally too.
"""

from __future__ import annotations


def main(argv: list[str]) -> int:
    from musicgen_lora.azure.commands import main as run_command

    return run_command(argv)
