"""Adapters by name: a local folder, or a Hugging Face Hub repo id (`user/repo`) read from the Hub
or, offline, from the local Hugging Face cache. Tokens are never handled here: huggingface_hub reads
the login (`hf auth login`) or HF_TOKEN itself."""

from __future__ import annotations

import re
from pathlib import Path

from musicgen_lora.modeling.model import ModelLoadError, hub_unreachable

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")
"""What a PEFT LoRA adapter is made of (config + weights in either format)."""
ADAPTER_DOWNLOAD = (*ADAPTER_FILES, "README.md")
"""Files fetched from a Hub repo for an adapter: the adapter and its model card, nothing else."""
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")


class AdapterNotFoundError(ModelLoadError):
    """The adapter is neither a local folder nor a reachable (or cached) Hub repo."""


def is_repo_id(name: str) -> bool:
    """`namespace/name` as the Hub spells repo ids (one slash, no `..` or `--`). A local path with
    more parts (runs/x/adapter) or none (adapter) is never taken for one."""
    return bool(_REPO_ID.match(name)) and ".." not in name and "--" not in name and not name.endswith(".git")


def resolve_adapter(adapter: str | Path) -> Path:
    """The local folder holding the adapter `adapter` names.

    A folder that exists is used as it is. Otherwise `user/repo` is fetched from the Hub (adapter
    files and model card only) into the Hugging Face cache, or read from that cache when the Hub
    cannot be reached (HF_HUB_OFFLINE=1, no network). Raises AdapterNotFoundError saying which.
    """
    local = Path(adapter).expanduser()
    if local.exists() or not is_repo_id(str(adapter)):
        if not local.is_dir():
            what = "is a file, not an adapter folder" if local.exists() else \
                "no such folder (nor a Hub repo id of the form user/repo)"
            raise AdapterNotFoundError(f"--adapter {adapter}: {what}")
        return local
    return _from_hub(str(adapter))


def _from_hub(repo_id: str) -> Path:
    import huggingface_hub
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    offline = hub_unreachable()
    try:
        folder = Path(huggingface_hub.snapshot_download(repo_id, allow_patterns=list(ADAPTER_DOWNLOAD),
                                                        local_files_only=offline))
    except LocalEntryNotFoundError:
        raise AdapterNotFoundError(
            f"--adapter {repo_id}: not a local folder, not in the local Hugging Face cache, and the Hub cannot be "
            "reached (offline). Where there is network, run `hf download "
            f"{repo_id}` (or any `musicgen-lora generate --adapter {repo_id}`) once; or pass the adapter's folder."
        ) from None
    except RepositoryNotFoundError:
        raise AdapterNotFoundError(
            f"--adapter {repo_id}: no such local folder, and no such model repo on the Hub (a private repo needs a "
            "login: `hf auth login` or HF_TOKEN)"
        ) from None
    except (HfHubHTTPError, OSError, ValueError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise AdapterNotFoundError(f"--adapter {repo_id}: cannot fetch it from the Hub: {type(error).__name__}: {first}") from None
    if not (folder / "adapter_config.json").is_file():
        raise AdapterNotFoundError(
            f"--adapter {repo_id}: the repo holds no adapter_config.json, so it is not a PEFT adapter "
            "(a merged model is a base model: pass it as --model)"
        )
    return folder
