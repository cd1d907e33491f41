"""musicgen-lora: reproducible LoRA fine-tuning of MusicGen on your own audio."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("musicgen-lora")
except PackageNotFoundError:  # run from a source tree without installing it (the Azure ML image)
    __version__ = "0.0.0+source"
