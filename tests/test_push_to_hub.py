"""push_to_hub / `instructseg export --push_to_hub`: the real export is uploaded through HfApi (faked only at the
network boundary: create_repo / upload_folder record their calls)."""

from __future__ import annotations

from pathlib import Path

import huggingface_hub
import pytest
import torch

from instructseg.checkpoint import CHECKPOINT_PREFIX, CONFIG_KEY
from instructseg.cli import main as cli_main
from instructseg.io import ExportFormatError, push_to_hub


class RecordingApi:
    calls: list[tuple[str, dict]] = []

    def __init__(self, token=None):
        self.calls.append(("init", {"token": token}))

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))

    def upload_folder(self, **kwargs):
        files = sorted(p.relative_to(kwargs["folder_path"]).as_posix() for p in _files(kwargs["folder_path"]))
        self.calls.append(("upload_folder", {**kwargs, "files": files}))
        url = f"https://huggingface.co/{kwargs['repo_id']}/commit/abc"
        return huggingface_hub.CommitInfo(commit_url=url, commit_message="", commit_description="", oid="abc")


def _files(folder):
    return [p for p in Path(folder).rglob("*") if p.is_file()]


@pytest.fixture
def api(monkeypatch):
    RecordingApi.calls = []
    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingApi)
    return RecordingApi


def test_push_to_hub_uploads_the_export(tiny_model, tmp_path, api):
    export = tiny_model.save_pretrained(tmp_path / "export")
    url = push_to_hub(export, "me/tiny-instructseg", private=True, token="hf_x")
    assert url == "https://huggingface.co/me/tiny-instructseg/commit/abc"
    names = [name for name, _ in api.calls]
    assert names == ["init", "create_repo", "upload_folder"] and api.calls[0][1]["token"] == "hf_x"
    assert api.calls[1][1]["private"] is True and api.calls[1][1]["exist_ok"] is True
    upload = api.calls[2][1]
    assert upload["repo_id"] == "me/tiny-instructseg" and "tiny" in upload["commit_message"]
    assert {"config.json", "model.safetensors", "README.md", "llm/config.json"} <= set(upload["files"])

    api.calls = []
    (tmp_path / "not-an-export").mkdir()
    with pytest.raises(ExportFormatError):
        push_to_hub(tmp_path / "not-an-export", "me/x")
    with pytest.raises(ValueError, match="org/name"):
        push_to_hub(export, "no-slash")
    assert api.calls == []  # nothing reached the network


def test_cli_export_then_push(tiny_model, tiny_config, tmp_path, api, capsys):
    ckpt = tmp_path / "last.ckpt"
    state = {CHECKPOINT_PREFIX + k: v.detach().clone() for k, v in tiny_model.trainable_parameters().items()}
    torch.save({"state_dict": state, CONFIG_KEY: tiny_config.to_dict(), "hyper_parameters": {"seed": 0}}, ckpt)
    out = tmp_path / "export"
    assert cli_main(["export", "--checkpoint", str(ckpt), "--out", str(out), "--push_to_hub", "bad id"]) == 2
    assert "org/name" in capsys.readouterr().err and not out.exists() and api.calls == []
    assert cli_main(["export", "--checkpoint", str(ckpt), "--out", str(out), "--push_to_hub", "me/tiny"]) == 0
    assert "uploaded to https://huggingface.co/me/tiny/commit/abc" in capsys.readouterr().out
    assert api.calls[-1][1]["folder_path"] == str(out) and (out / "model.safetensors").is_file()
