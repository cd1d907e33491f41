"""The model card of an export: base model, training data (from the run's config and its token
cache), the training configuration, usage code, and the license of the base weights (Meta's MusicGen
checkpoints are CC-BY-NC 4.0: an adapter or merged model made from them is non-commercial too)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

MUSICGEN_LICENSE = "cc-by-nc-4.0"


def data_description(run_config: dict | None, model_config, base: str, cache_dir: Path | None) -> dict:
    """What the card says about the training data: folder, and from the token cache the number of
    files, total duration and sample captions (when the cache is found)."""
    if run_config is None and cache_dir is None:
        return {}
    data = (run_config or {}).get("data", {})
    description = {"path": data.get("path") or ("built-in demo drum loops (musicgen_lora.data.demo)" if run_config else "unknown")}
    if cache_dir is None:
        cache_dir = data.get("cache_dir")
        if cache_dir is None and model_config is not None:
            from musicgen_lora.modeling.model import codec_identity
            from musicgen_lora.training.data_setup import default_cache_dir

            codec_id = codec_identity(SimpleNamespace(config=model_config), base)
            tag = codec_id + ("-percussive" if data.get("percussive") else "")
            cache_dir = default_cache_dir(data.get("path"), tag)
    manifest = Path(cache_dir) / "manifest.json" if cache_dir else None
    if manifest is None or not manifest.is_file():
        description["note"] = "token cache not found here (pass --cache for file counts and durations)"
        return description
    entries = json.loads(manifest.read_text())["entries"]
    frame_rate = json.loads((manifest.parent / "cache.json").read_text())["frame_rate"]
    description.update(
        files=len(entries),
        seconds=sum(entry["frames"] for entry in entries) / frame_rate,
        captions=sorted({entry["caption"] for entry in entries})[:8],
        distinct_captions=len({entry["caption"] for entry in entries}),
    )
    return description


def license_text(base: str) -> tuple[str, str]:
    """(license id for the card's metadata, the sentence that explains it)."""
    from musicgen_lora.modeling.model import is_tiny

    if is_tiny(base):
        return "mit", (
            "The base is the random toy MusicGen built in code by `musicgen_lora.modeling.model.build_tiny_musicgen` "
            "(no pretrained weights; for tests and demos only), so no third-party weights license applies. "
            "An adapter trained on a real MusicGen checkpoint inherits that checkpoint's license (CC-BY-NC 4.0)."
        )
    return MUSICGEN_LICENSE, (
        f"The base weights ({base}) are Meta's MusicGen weights, released under **CC-BY-NC 4.0** "
        "(Creative Commons Attribution-NonCommercial 4.0, https://creativecommons.org/licenses/by-nc/4.0/). "
        "This export is derived from them, merged or not, and may be used for **non-commercial purposes only**, "
        "with attribution to Meta's MusicGen (Copet et al., 2023). The training code (musicgen-lora) is MIT."
    )


def model_card(base: str, *, merged: bool, run_config: dict | None, data: dict, revision: str | None = None,
               architecture: str = "MusicgenForConditionalGeneration", location: str = "PATH") -> str:
    """The README.md of an export; `location` is how users reach it (its folder, or its Hub repo id)."""
    license_id, license_sentence = license_text(base)
    kind = "MusicGen with a LoRA adapter merged into its weights" if merged else "LoRA adapter (PEFT) for MusicGen"
    lines = [
        "---",
        f"license: {license_id}",
        f"base_model: {base}",
        f"library_name: {'transformers' if merged else 'peft'}",
        "pipeline_tag: text-to-audio",
        "tags: [musicgen, lora, text-to-audio, musicgen-lora]",
        "---",
        "",
        f"# {kind}",
        "",
        f"- **Base model:** `{base}`" + (f" at revision `{revision}`" if revision else ""),
        f"- **Format:** {'standalone checkpoint (safetensors, processor, generation config)' if merged else 'PEFT adapter (adapter_config.json + adapter_model.safetensors)'}",
        "",
        "## License",
        "",
        license_sentence,
        "",
        "## Training data",
        "",
    ]
    if not data:
        lines.append("Not recorded (the adapter was exported without its run directory).")
    else:
        lines.append(f"- Folder: `{data['path']}`")
        if "files" in data:
            lines.append(f"- {data['files']} audio files, {_duration(data['seconds'])} in total, "
                         f"{data['distinct_captions']} distinct captions")
            lines.append("- Sample captions: " + "; ".join(f"\"{c}\"" for c in data["captions"]))
        if "note" in data:
            lines.append(f"- {data['note']}")
    lines += ["", "## Usage", "", "```python"]
    if merged:
        lines += [
            f"from transformers import AutoProcessor, {architecture}",
            f"model = {architecture}.from_pretrained(\"{location}\")",
            f"processor = AutoProcessor.from_pretrained(\"{location}\")",
            "inputs = processor(text=[\"a drum loop\"], padding=True, return_tensors=\"pt\")",
            "audio = model.generate(**inputs, max_new_tokens=256)",
        ]
    else:
        lines += [
            f"# uv run musicgen-lora generate --adapter {location} --prompt \"a drum loop\" --out loop.wav",
            "from peft import PeftModel",
            f"from transformers import AutoProcessor, {architecture}",
            f"base = {architecture}.from_pretrained(\"{base}\"" + (f", revision=\"{revision}\")" if revision else ")"),
            f"model = PeftModel.from_pretrained(base, \"{location}\").merge_and_unload()",
            f"processor = AutoProcessor.from_pretrained(\"{location}\")",
            "inputs = processor(text=[\"a drum loop\"], padding=True, return_tensors=\"pt\")",
            "audio = model.generate(**inputs, max_new_tokens=256)",
        ]
    lines += ["```", ""]
    if run_config:
        lines += _config_summary(run_config)
    return "\n".join(lines) + "\n"


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:.1f} hours" if seconds >= 3600 else f"{seconds / 60:.1f} minutes"


def _config_summary(config: dict) -> list[str]:
    lora, optim, train = config.get("lora", {}), config.get("optim", {}), config.get("train", {})
    data = config.get("data", {})
    return [
        "## Training configuration",
        "",
        f"- Experiment `{config.get('experiment')}`, variant `{config.get('variant')}`, seed {config.get('seed')}",
        f"- LoRA rank {lora.get('r')}, alpha {lora.get('alpha')}, dropout {lora.get('dropout')}, "
        f"targets {', '.join(lora.get('targets', []))}",
        f"- AdamW lr {optim.get('lr')}, {train.get('max_steps')} steps, batch {train.get('batch_size')} "
        f"x {train.get('grad_accum_steps')} accumulation, {data.get('window_seconds')} s windows",
        "",
        "<details><summary>Full run configuration (config.json)</summary>",
        "",
        "```json",
        json.dumps(config, indent=2),
        "```",
        "",
        "</details>",
        "",
    ]
