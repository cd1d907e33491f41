"""`musicgen-lora export --push-to-hub REPO`: upload an export folder to a Hugging Face model repo.

The repo is created private unless the user opts out (`--public`); an existing public repo is
refused without `--public`, and an existing repo's visibility is never changed. The token is read by
huggingface_hub itself (HF_TOKEN, or the login saved by `hf auth login`): this module never takes,
prints or logs it, and any error text from the Hub is passed through the secret redaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from musicgen_lora.modeling.hub import is_repo_id
from musicgen_lora.modeling.model import hub_unreachable
from musicgen_lora.tracking.redact import redact

COMMIT_MESSAGE = "Upload MusicGen LoRA export (musicgen-lora)"


class HubPushError(RuntimeError):
    """The export could not be pushed; the message says why and what to do."""


@dataclass(frozen=True)
class Pushed:
    repo_id: str
    url: str
    private: bool
    files: list[str]
    """Paths in the repo, as uploaded."""


def files_to_upload(folder: Path, exclude: tuple[str, ...] = ()) -> list[str]:
    """Every file under `folder` (relative POSIX paths, sorted) except `exclude`."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                  if p.is_file() and p.relative_to(folder).as_posix() not in exclude)


def push_folder(folder: Path, repo_id: str, *, private: bool = True, exclude: tuple[str, ...] = ()) -> Pushed:
    """Upload the files of `folder` (less `exclude`) to the model repo `repo_id` in one commit."""
    from huggingface_hub import CommitOperationAdd, HfApi, get_token
    from huggingface_hub.errors import HfHubHTTPError

    if not is_repo_id(repo_id):
        raise HubPushError(f"--push-to-hub {repo_id!r}: give a model repo id as user/name or org/name")
    if hub_unreachable():
        raise HubPushError(f"the Hub cannot be reached (offline, or HF_HUB_OFFLINE is set); the export is in {folder}: "
                           "push it from a machine with network")
    if get_token() is None:
        raise HubPushError("not logged in to the Hugging Face Hub: run `hf auth login` or set HF_TOKEN in the "
                           "environment (a token is never taken from the command line)")
    files = files_to_upload(folder, exclude)
    api = HfApi()  # no token argument: huggingface_hub finds it, and it goes nowhere else
    try:
        url = api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        is_private = bool(api.model_info(repo_id).private)
        if private and not is_private:
            raise HubPushError(f"{repo_id} already exists and is public; pass --public to push to it anyway, "
                               "or choose another repo (pushes are private by default)")
        operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(folder / name)) for name in files]
        api.create_commit(repo_id, operations=operations, commit_message=COMMIT_MESSAGE, repo_type="model")
    except (HfHubHTTPError, OSError, ValueError) as error:
        text = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise HubPushError(redact(f"pushing to {repo_id} failed: {type(error).__name__}: {text}")) from None
    return Pushed(repo_id=repo_id, url=str(url), private=is_private, files=files)
