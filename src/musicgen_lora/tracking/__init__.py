"""What a run records about itself and how runs are compared: the environment check (`doctor`) and
GPU preflight (`gpu`), the reproducibility manifest (`manifest`), JSONL and W&B trackers
(`trackers`), secret redaction (`redact`), the run-directory lock (`run_lock`) and comparison
reports (`report`, `report_stats`, `report_markdown`).

Imports: helpers, data and modeling only (never training, evaluation, tools, azure or the CLI); runs
are read from their files, not from live objects.
"""
