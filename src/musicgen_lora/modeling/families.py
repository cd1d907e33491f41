"""Model families: which transformers class a checkpoint needs, decided from its config.json alone.

MusicGen comes in two architectures that share the codec, the text encoder and the delay pattern:
- `MusicgenForConditionalGeneration` (model_type "musicgen"): the decoder cross-attends to the
  text states; mono (4 codebooks) or stereo (8 codebooks, L/R interleaved, `audio_channels` 2);
- `MusicgenMelodyForConditionalGeneration` (model_type "musicgen_melody"): no cross-attention; the
  projected chroma (12-bin melody) and text states are prepended to the decoder input; mono or stereo.
Loading a checkpoint into the other class "works" in transformers, with the missing weights randomly
initialised: here the class comes from the config, read before any weight, and a load that leaves
any weight missing or unused is refused (`load_checked`).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass


class ModelLoadError(RuntimeError):
    """The base model could not be loaded; the message says what to change."""


class UnsupportedModelError(ModelLoadError):
    """The checkpoint is not a MusicGen architecture this package trains."""


class WeightMismatchError(ModelLoadError):
    """The checkpoint's weights do not fit the class: some would stay randomly initialised."""


@dataclass(frozen=True)
class Family:
    """One supported architecture."""

    model_type: str  # config.json's model_type
    architecture: str  # the transformers class name (config.json's architectures)
    melody: bool  # chroma conditioning prepended to the decoder input (no cross-attention)

    def model_class(self):
        import transformers

        return getattr(transformers, self.architecture)

    def config_class(self):
        import transformers

        return getattr(transformers, "MusicgenMelodyConfig" if self.melody else "MusicgenConfig")


MUSICGEN = Family("musicgen", "MusicgenForConditionalGeneration", melody=False)
MUSICGEN_MELODY = Family("musicgen_melody", "MusicgenMelodyForConditionalGeneration", melody=True)
FAMILIES = {family.model_type: family for family in (MUSICGEN, MUSICGEN_MELODY)}


def family_of_config(config: dict, source: str) -> Family:
    """The family a config.json (as a dict) describes; UnsupportedModelError for anything else."""
    model_type = config.get("model_type")
    architectures = config.get("architectures") or []
    family = FAMILIES.get(model_type)
    if family is None or (architectures and family.architecture not in architectures):
        supported = "; ".join(f"{f.architecture} (model_type {f.model_type!r})" for f in FAMILIES.values())
        raise UnsupportedModelError(
            f"{source} is a {model_type!r} checkpoint ({', '.join(architectures) or 'no architectures listed'}), "
            f"which musicgen-lora does not train. Supported: {supported}, mono or stereo. "
            "A decoder-only MusicgenForCausalLM checkpoint has no text encoder or codec: pass the full model."
        )
    channels = (config.get("decoder") or {}).get("audio_channels", 1)
    if channels not in (1, 2):
        raise UnsupportedModelError(f"{source} has audio_channels={channels}; MusicGen is mono (1) or stereo (2)")
    return family


def family_of(model) -> Family:
    """The family of a loaded (or peft-wrapped) model."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return FAMILIES[base.config.model_type]


def is_melody(model) -> bool:
    return family_of(model).melody


def read_family(name: str, revision: str | None = None, local_files_only: bool = False) -> Family:
    """The family of a Hub id or local folder, from its config.json only (no weights are read)."""
    from transformers import PretrainedConfig

    config, _ = PretrainedConfig.get_config_dict(name, revision=revision, local_files_only=local_files_only)
    if not config:  # a folder without config.json reads as {}
        raise OSError(f"no config.json in {name}")
    return family_of_config(config, repr(name))


CODEC = "audio_encoder"


@contextlib.contextmanager
def codec_kept_fp32(model_class):
    """Load the codec's weights in fp32 whatever `dtype` the rest loads in. Rounding them to bf16 and
    casting back later cannot restore them, and the codes of a token cache would then depend on the
    precision of the run that encoded it (95.7% of a random tiny codec's codes changed). transformers'
    strict fp32 list does this at load time, without a transient fp32 copy of the whole model."""
    saved = model_class.__dict__.get("_keep_in_fp32_modules_strict")
    model_class._keep_in_fp32_modules_strict = sorted({*(saved or ()), CODEC})
    try:
        yield
    finally:
        if saved is None:
            del model_class._keep_in_fp32_modules_strict
        else:
            model_class._keep_in_fp32_modules_strict = saved


def cast_keeping_codec_fp32(model, dtype) -> None:
    """Every part of `model` in `dtype` but the codec, which stays fp32 (see codec_kept_fp32)."""
    import torch

    for part, module in model.named_children():
        module.to(dtype=torch.float32 if part == CODEC else dtype)


def load_checked(family: Family, name: str, **kwargs):
    """`family`'s class from `name`, refusing a load that leaves weights missing (randomly
    initialised), unused, or of another shape: such a model would train on garbage."""
    model_class = family.model_class()
    with codec_kept_fp32(model_class):
        model, info = model_class.from_pretrained(name, output_loading_info=True, **kwargs)
    # Codec tensors read as stored (fp32 files) are views into the memory-mapped checkpoint: after a
    # bf16 load they alone kept the whole mapping resident (+1.8 GiB for musicgen-small). Own copies.
    model.audio_encoder._apply(lambda tensor: tensor.clone())
    problems = {
        "missing (would be randomly initialised)": sorted(info.get("missing_keys") or []),
        "unexpected (in the checkpoint, unused by the class)": sorted(info.get("unexpected_keys") or []),
        "of another shape": sorted(str(key) for key in info.get("mismatched_keys") or []),
    }
    problems = {what: keys for what, keys in problems.items() if keys}
    if problems:
        listed = "\n".join(
            f"  - {len(keys)} {what}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}" for what, keys in problems.items()
        )
        raise WeightMismatchError(
            f"The weights of {name!r} do not fit {family.architecture}:\n{listed}\n"
            "The checkpoint's config.json and its weights disagree (or the files are from another model); "
            "training on it would start from random weights. Re-download or re-save the checkpoint."
        )
    return model


def configure_special_tokens(model) -> None:
    """Set pad = bos = decoder_start = codebook size on every config that reads them.

    `MusicgenForConditionalGeneration` shifts labels right with `config.decoder.decoder_start_token_id`;
    setting only the top-level config (a classic bug) leaves training without a start token.
    """
    special = model.config.decoder.vocab_size
    for config in (model.config.decoder, model.config, model.generation_config):
        config.pad_token_id = special
        config.bos_token_id = special
        config.decoder_start_token_id = special
