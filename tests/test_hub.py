"""Adapters on the Hugging Face Hub, offline: `export --push-to-hub` against a stand-in for HfApi
(repos are local folders), and `generate --adapter user/repo` from the local Hugging Face cache.
No test touches the network: HF_HUB_OFFLINE=1 (conftest) makes any real Hub request fail."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
import pytest
from huggingface_hub import constants

from adapters import save_random_adapter
from musicgen_lora import cli
from musicgen_lora.modeling import hub as model_hub
from musicgen_lora.tools import hub as tools_hub

TOKEN = "hf_FAKEtokenForTests0123456789abcdef"
EXPECTED_UPLOAD = [  # the adapter, the tiny base's processor (tokenizer + feature extractor), the card
    "README.md", "adapter_config.json", "adapter_model.safetensors", "added_tokens.json", "processor_config.json",
    "tokenizer_config.json",
]


class FakeHub:
    """The Hub's side of HfApi, held in a local folder: one subfolder per repo, commits copy files."""

    def __init__(self, root: Path):
        self.root, self.private, self.calls, self.clients = root, {}, [], []

    def client(self, **kwargs):  # stands in for the HfApi class
        self.clients.append(kwargs)
        return FakeApi(self)


class FakeApi:
    def __init__(self, hub: FakeHub):
        self.hub = hub

    def create_repo(self, repo_id, *, repo_type=None, private=None, exist_ok=False, **kwargs):
        self.hub.calls.append(("create_repo", repo_id, {"private": private, "repo_type": repo_type, "exist_ok": exist_ok}))
        if repo_id in self.hub.private and not exist_ok:
            raise AssertionError("the real Hub answers 409 here")
        self.hub.private.setdefault(repo_id, bool(private))  # an existing repo keeps its visibility
        (self.hub.root / repo_id).mkdir(parents=True, exist_ok=True)
        return f"https://huggingface.co/{repo_id}"

    def model_info(self, repo_id, **kwargs):
        return SimpleNamespace(id=repo_id, private=self.hub.private[repo_id])

    def create_commit(self, repo_id, operations, *, commit_message, repo_type=None, **kwargs):
        names = []
        for operation in operations:
            target = self.hub.root / repo_id / operation.path_in_repo
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(operation.path_or_fileobj, target)
            names.append(operation.path_in_repo)
        self.hub.calls.append(("create_commit", repo_id, sorted(names)))
        return SimpleNamespace(oid="0" * 40)


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """The stand-in Hub, reachable and logged in (HF_TOKEN), as huggingface_hub itself reads them."""
    fake = FakeHub(tmp_path / "hub")
    monkeypatch.setattr(huggingface_hub, "HfApi", fake.client)
    monkeypatch.setattr(tools_hub, "hub_unreachable", lambda: False)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    return fake


@pytest.fixture
def adapter(tmp_path):
    return save_random_adapter(tmp_path / "run" / "adapter")


def cache_snapshot(cache: Path, repo_id: str, files: Path, commit: str = "a" * 40) -> Path:
    """Lay `files` out as huggingface_hub caches a download of `repo_id` at `commit` (main)."""
    storage = cache / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(files, storage / "snapshots" / commit)
    (storage / "refs").mkdir(parents=True)
    (storage / "refs" / "main").write_text(commit)
    return storage / "snapshots" / commit


def test_push_uploads_the_export_privately_and_never_shows_the_token(hub, adapter, capsys, caplog):
    caplog.set_level(logging.DEBUG)
    assert cli.main(["export", "--adapter", str(adapter), "--push-to-hub", "me/drums"]) == 0
    assert hub.calls == [
        ("create_repo", "me/drums", {"private": True, "repo_type": "model", "exist_ok": True}),
        ("create_commit", "me/drums", EXPECTED_UPLOAD),
    ]
    assert hub.clients == [{}]  # HfApi() with no token: huggingface_hub reads HF_TOKEN / the login itself
    repo = hub.root / "me" / "drums"
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        assert (repo / name).read_bytes() == (adapter / name).read_bytes()
    card = (repo / "README.md").read_text()
    assert "generate --adapter me/drums" in card and 'PeftModel.from_pretrained(base, "me/drums")' in card
    out, err = capsys.readouterr()
    assert "pushed 6 files to https://huggingface.co/me/drums (private)" in out
    for text in (out, err, caplog.text, *(path.read_text(errors="replace") for path in repo.iterdir())):
        assert TOKEN not in text


def test_public_is_an_opt_in_and_a_public_repo_is_not_pushed_to_by_default(hub, adapter, tmp_path, capsys):
    assert cli.main(["export", "--adapter", str(adapter), "--push-to-hub", "me/open", "--public"]) == 0
    assert hub.calls[0] == ("create_repo", "me/open", {"private": False, "repo_type": "model", "exist_ok": True})
    assert "(public)" in capsys.readouterr().out
    hub.calls.clear()
    out = tmp_path / "kept"
    assert cli.main(["export", "--adapter", str(adapter), "--push-to-hub", "me/open", "--out", str(out)]) == 2
    assert "me/open already exists and is public; pass --public" in capsys.readouterr().err
    assert [call[0] for call in hub.calls] == ["create_repo"]  # nothing committed
    assert sorted(p.name for p in out.iterdir()) == sorted([*EXPECTED_UPLOAD, ".musicgen-lora-export.json"])


def test_push_needs_a_login_a_network_and_a_repo_id(hub, adapter, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    assert cli.main(["export", "--adapter", str(adapter), "--push-to-hub", "me/drums"]) == 2
    assert "not logged in to the Hugging Face Hub: run `hf auth login` or set HF_TOKEN" in capsys.readouterr().err
    monkeypatch.setattr(tools_hub, "hub_unreachable", model_hub.hub_unreachable)  # the real check: offline here
    assert cli.main(["export", "--adapter", str(adapter), "--push-to-hub", "me/drums"]) == 2
    assert "the Hub cannot be reached" in capsys.readouterr().err
    assert cli.main(["export", "--adapter", str(adapter), "--push-to-hub", "not/a/repo"]) == 2
    assert "give a model repo id as user/name" in capsys.readouterr().err
    assert cli.main(["export", "--adapter", str(adapter), "--public", "--out", str(tmp_path / "x")]) == 2
    assert cli.main(["export", "--adapter", str(adapter)]) == 2
    assert "give --out FOLDER (or --push-to-hub REPO" in capsys.readouterr().err
    assert hub.calls == []


def test_generate_and_export_read_a_hub_adapter_from_the_cache_offline(hub, adapter, tmp_path, monkeypatch):
    assert cli.main(["export", "--adapter", str(adapter), "--push-to-hub", "me/drums"]) == 0
    cache = tmp_path / "hf-cache"
    cache_snapshot(cache, "me/drums", hub.root / "me" / "drums")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    assert constants.is_offline_mode()  # read from the cache only, as on a machine without network
    argv = ["generate", "--prompt", "techno", "--seconds", "0.2", "--seed", "4", "--device", "cpu"]
    assert cli.main([*argv, "--adapter", "me/drums", "--out", str(tmp_path / "hub.wav")]) == 0
    assert cli.main([*argv, "--adapter", str(adapter), "--out", str(tmp_path / "local.wav")]) == 0
    assert (tmp_path / "hub.wav").read_bytes() == (tmp_path / "local.wav").read_bytes()
    assert cli.main(["export", "--adapter", "me/drums", "--out", str(tmp_path / "again")]) == 0
    assert (tmp_path / "again" / "adapter_model.safetensors").read_bytes() == (adapter / "adapter_model.safetensors").read_bytes()


def test_missing_adapters_fail_with_what_to_do(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    argv = ["generate", "--prompt", "x", "--out", str(tmp_path / "o.wav"), "--adapter"]
    assert cli.main([*argv, "me/not-cached"]) == 2
    err = capsys.readouterr().err
    assert "not a local folder, not in the local Hugging Face cache, and the Hub cannot be reached (offline)" in err
    assert "hf download me/not-cached" in err
    assert cli.main([*argv, str(tmp_path / "runs" / "x" / "adapter")]) == 2
    assert "no such folder (nor a Hub repo id of the form user/repo)" in capsys.readouterr().err
    assert not (tmp_path / "o.wav").exists()


def test_online_download_asks_for_the_adapter_files_only(adapter, tmp_path, monkeypatch):
    calls = []

    def snapshot_download(repo_id, **kwargs):  # the Hub's answer: the repo's files in the cache
        calls.append((repo_id, kwargs))
        return str(cache_snapshot(tmp_path / "cache", repo_id, adapter if repo_id == "me/drums" else tmp_path / "run"))

    monkeypatch.setattr(model_hub, "hub_unreachable", lambda: False)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    folder = model_hub.resolve_adapter("me/drums")
    assert (folder / "adapter_config.json").read_bytes() == (adapter / "adapter_config.json").read_bytes()
    assert calls == [("me/drums", {"allow_patterns": list(model_hub.ADAPTER_DOWNLOAD), "local_files_only": False})]
    with pytest.raises(model_hub.AdapterNotFoundError, match=r"holds no adapter_config\.json"):
        model_hub.resolve_adapter("me/merged-model")
