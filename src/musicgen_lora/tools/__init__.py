"""User-facing commands around training: cutting loops out of songs (`loops`, `beat_analysis`),
captioning a folder (`caption`, `music_tags`), exporting adapters (`export`), the `generate` command
and running sweeps (`sweep`).

Imports: anything in the package except the CLI; nothing imports tools (except the CLI, lazily).
"""
