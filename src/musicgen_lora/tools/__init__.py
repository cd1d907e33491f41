"""User-facing commands around training: cutting loops out of songs (`loops`, `beat_analysis`),
captioning a folder (`caption`, `music_tags`), exporting adapters (`export`) and pushing them to the
Hugging Face Hub (`hub`), the `generate` command and its `--continue` audio prompt (`audio_prompt`),
running sweeps (`sweep`) and estimating training memory (`estimate`).

Imports: anything in the package except the CLI; nothing imports tools (except the CLI, lazily).
"""
