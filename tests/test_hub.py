"""push_to_hub / resolve_repo_id against the fake Hub server of tests/hub_server.py (no real network)."""

from __future__ import annotations

import io
import json
import logging
import socket
import time
import traceback
from pathlib import Path

import huggingface_hub.constants
import huggingface_hub.hf_api
import pytest
from hub_server import FakeHub, hub_server  # noqa: F401
from huggingface_hub import HfApi
from PIL import Image

from ddpm_objectives_hf.cli import error_line
from ddpm_objectives_hf.training.hub import (
    DEFAULT_COMMIT_MESSAGE,
    DEFAULT_IGNORE_PATTERNS,
    HubError,
    push_to_hub,
    resolve_repo_id,
)

TOKEN = "hf_secret_test_token"
REPO_ID = "test-user/ddpm-objectives-test"


def _png_bytes() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()


def make_pipeline_folder(root: Path) -> dict[str, bytes]:
    """Write a fake trained pipeline folder; return the files that must be uploaded (relative path → bytes)."""
    uploaded = {
        "model_index.json": json.dumps(
            {
                "_class_name": "DDPMPipeline",
                "unet": ["diffusers", "UNet2DModel"],
                "scheduler": ["diffusers", "DDPMScheduler"],
            }
        ).encode(),
        "unet/config.json": json.dumps({"_class_name": "UNet2DModel", "sample_size": 8}).encode(),
        "unet/diffusion_pytorch_model.safetensors": bytes(range(256)) * 16,
        "scheduler/scheduler_config.json": json.dumps(
            {"_class_name": "DDPMScheduler", "num_train_timesteps": 10}
        ).encode(),
        "README.md": b"---\nlibrary_name: diffusers\ntags:\n- diffusers\n---\n\n# test\n",
        "samples.png": _png_bytes(),
        "ddpm_objective.json": json.dumps({"prediction_type": "epsilon", "loss_weighting": "uniform"}).encode(),
        "empty.txt": b"",
    }
    not_uploaded = {
        "checkpoint-10/optimizer.bin": b"\x00" * 128,
        "checkpoint-10/unet/diffusion_pytorch_model.safetensors": b"\x01" * 64,
        "logs/train/events.out.tfevents.1700000000.host": b"tensorboard",
        "unet/partial.tmp": b"partial write",
        # leftovers of saves that were killed: staging dot-folders, at the top and deeper
        ".checkpoint-12.tmp/unet/diffusion_pytorch_model.safetensors": b"\x02" * 32,
        ".pipeline-3f2a/model_index.json": b"{}",
        ".staging-final/unet/config.json": b"{}",
        ".staging/README.md": b"stale",
        ".tmpk2j4/samples.png": b"stale",
        "unet/.tmp-weights/diffusion_pytorch_model.safetensors": b"\x03" * 32,
        "scheduler/.staging1/scheduler_config.json": b"{}",
    }
    for rel, data in {**uploaded, **not_uploaded}.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return uploaded


def snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under `root` with its bytes and mtime, to check that pushing never touches the folder."""
    return {
        p.relative_to(root).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()
    }


def _assert_no_token(*texts: str) -> None:
    for text in texts:
        assert TOKEN not in text
        assert "secret_test" not in text


@pytest.fixture
def pipeline_dir(tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    folder = tmp_path / "ddpm-objectives-test"
    return folder, make_pipeline_folder(folder)


@pytest.mark.parametrize(("xet", "private"), [(True, True), (False, False)], ids=["xet-pipeline", "create-commit"])
def test_push_uploads_pipeline_in_one_commit(
    hub_server: FakeHub,  # noqa: F811
    pipeline_dir,
    monkeypatch,
    caplog,
    capfd,
    xet: bool,
    private: bool,
):
    # Both upload paths of huggingface_hub: the streamed xet pipeline (hf_xet installed) and plain create_commit.
    monkeypatch.setattr(huggingface_hub.hf_api, "is_xet_available", lambda: xet)
    caplog.set_level(logging.DEBUG)
    folder, expected = pipeline_dir
    before = snapshot(folder)

    url = push_to_hub(folder, REPO_ID, private=private, token=TOKEN, endpoint=hub_server.endpoint)

    repo = hub_server.repos[REPO_ID]
    assert repo.private is private
    assert repo.repo_type == "model"
    assert len(hub_server.commits) == 1
    commit = hub_server.commits[0]
    assert commit.message == DEFAULT_COMMIT_MESSAGE
    assert commit.revision == "main"
    assert set(commit.files) == set(expected)
    for rel, data in expected.items():
        assert commit.files[rel] == data, rel
    assert not any(name.startswith(("checkpoint-", "logs/")) or name.endswith(".tmp") for name in repo.files)
    assert url.startswith(hub_server.endpoint) and commit.oid in url
    # The token was sent to the server, but never shown.
    assert {r.authorization for r in hub_server.requests} == {f"Bearer {TOKEN}"}
    out, err = capfd.readouterr()
    _assert_no_token(caplog.text, out, err)
    assert snapshot(folder) == before


def test_push_to_existing_repo_only_commits_changes(hub_server: FakeHub, pipeline_dir):  # noqa: F811
    folder, _ = pipeline_dir
    push_to_hub(folder, REPO_ID, token=TOKEN, endpoint=hub_server.endpoint)
    # Same content again: the repo exists (HTTP 409 is fine) and there is nothing to commit.
    url = push_to_hub(folder, REPO_ID, token=TOKEN, endpoint=hub_server.endpoint)
    assert len(hub_server.commits) == 1
    assert url.startswith(hub_server.endpoint)

    (folder / "README.md").write_text("---\nlibrary_name: diffusers\n---\n\n# updated\n")
    push_to_hub(folder, REPO_ID, token=TOKEN, endpoint=hub_server.endpoint, commit_message="Update card")
    assert len(hub_server.commits) == 2
    assert hub_server.commits[1].message == "Update card"
    assert set(hub_server.commits[1].files) == {"README.md"}


def test_server_error_raises_hub_error(hub_server: FakeHub, pipeline_dir, caplog, capfd):  # noqa: F811
    caplog.set_level(logging.DEBUG)
    folder, _ = pipeline_dir
    before = snapshot(folder)
    hub_server.fail_next(500)

    with pytest.raises(HubError) as excinfo:
        push_to_hub(folder, REPO_ID, token=TOKEN, endpoint=hub_server.endpoint)

    message = str(excinfo.value)
    assert excinfo.value.parameter == "push_to_hub" and "--" not in message  # the library names parameters
    assert error_line(excinfo.value).startswith("--push_to_hub: ")  # the command line names the flag
    assert hub_server.endpoint in message and "500" in message
    assert "\n" not in message
    out, err = capfd.readouterr()
    _assert_no_token(message, "".join(traceback.format_exception(excinfo.value)), caplog.text, out, err)
    assert hub_server.commits == []
    assert snapshot(folder) == before


@pytest.mark.parametrize("xet", [True, False], ids=["xet-pipeline", "create-commit"])
def test_rejected_commit_raises_hub_error(hub_server: FakeHub, pipeline_dir, monkeypatch, xet: bool):  # noqa: F811
    monkeypatch.setattr(huggingface_hub.hf_api, "is_xet_available", lambda: xet)
    folder, _ = pipeline_dir
    before = snapshot(folder)
    hub_server.fail_next(403, path_contains="/commit/", message="You don't have the rights to push to this repo")

    with pytest.raises(HubError, match="authentication failed") as excinfo:
        push_to_hub(folder, REPO_ID, token=TOKEN, endpoint=hub_server.endpoint)

    _assert_no_token(str(excinfo.value), "".join(traceback.format_exception(excinfo.value)))
    assert REPO_ID in hub_server.repos and hub_server.commits == []
    assert snapshot(folder) == before


def test_invalid_token_raises_hub_error(hub_server: FakeHub, pipeline_dir):  # noqa: F811
    hub_server.accepted_tokens = {"hf_the_right_one"}
    folder, _ = pipeline_dir
    with pytest.raises(HubError, match="authentication failed") as excinfo:
        push_to_hub(folder, REPO_ID, token=TOKEN, endpoint=hub_server.endpoint)
    _assert_no_token(str(excinfo.value), "".join(traceback.format_exception(excinfo.value)))
    assert hub_server.repos == {}


def _closed_port_endpoint() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def test_unreachable_endpoint_raises_quickly(pipeline_dir, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    folder, _ = pipeline_dir
    before = snapshot(folder)
    endpoint = _closed_port_endpoint()

    start = time.monotonic()
    with pytest.raises(HubError) as excinfo:
        push_to_hub(folder, REPO_ID, token=TOKEN, endpoint=endpoint)
    assert time.monotonic() - start < 20

    message = str(excinfo.value)
    assert endpoint in message and excinfo.value.parameter == "push_to_hub"
    assert error_line(excinfo.value).startswith("--push_to_hub: ")
    _assert_no_token(message, "".join(traceback.format_exception(excinfo.value)))
    assert snapshot(folder) == before


def test_offline_mode_raises_hub_error(pipeline_dir, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    folder, _ = pipeline_dir
    with pytest.raises(HubError, match="offline"):
        push_to_hub(folder, REPO_ID, token=TOKEN, endpoint=_closed_port_endpoint())


def test_missing_folder_raises_hub_error(tmp_path):
    with pytest.raises(HubError, match="does not exist"):
        push_to_hub(tmp_path / "nope", REPO_ID, token=TOKEN, endpoint="http://127.0.0.1:9")


def test_resolve_repo_id(tmp_path):
    assert resolve_repo_id("org/model", tmp_path / "out") == "org/model"
    assert resolve_repo_id(" model ", tmp_path / "out") == "model"
    assert resolve_repo_id(None, tmp_path / "my run") == "my-run"
    assert resolve_repo_id(None, tmp_path / "--a..b--") == "a.b"


@pytest.mark.parametrize("name", ["model", None])
def test_bare_name_gets_its_namespace_from_create_repo(hub_server: FakeHub, pipeline_dir, name):  # noqa: F811
    folder, expected = pipeline_dir
    repo_id = resolve_repo_id(name, folder)
    assert "/" not in repo_id
    url = push_to_hub(folder, repo_id, token=TOKEN, endpoint=hub_server.endpoint)
    full = f"{hub_server.user}/{repo_id}"
    assert set(hub_server.repos) == {full} and set(hub_server.repos[full].files) == set(expected)
    assert url.startswith(f"{hub_server.endpoint}/{full}/commit/")
    assert "/api/whoami-v2" not in hub_server.paths()  # create_repo's answer has the full id
    # the repository exists now: create_repo answers 409 with its URL, the second push finds the same repository
    push_to_hub(folder, repo_id, token=TOKEN, endpoint=hub_server.endpoint, commit_message="again")
    assert set(hub_server.repos) == {full}


def test_bare_name_with_bad_token(hub_server: FakeHub, pipeline_dir):  # noqa: F811
    hub_server.accepted_tokens = {"hf_the_right_one"}
    folder, _ = pipeline_dir
    with pytest.raises(HubError, match="authentication failed") as excinfo:
        push_to_hub(folder, resolve_repo_id(None, folder), token=TOKEN, endpoint=hub_server.endpoint)
    assert hub_server.endpoint in str(excinfo.value) and hub_server.repos == {}
    _assert_no_token(str(excinfo.value), "".join(traceback.format_exception(excinfo.value)))


@pytest.mark.parametrize(
    "path, ignored",
    [
        (".checkpoint-7.tmp/optimizer.bin", True),
        (".pipeline-a1b2/unet/config.json", True),
        (".staging/unet/config.json", True),
        (".staging-final/model_index.json", True),
        (".tmp/x", True),
        (".tmpab12/README.md", True),
        ("unet/.tmp-1/diffusion_pytorch_model.safetensors", True),
        ("a/b/.staging2/file", True),
        ("unet/diffusion_pytorch_model.safetensors", False),
        ("scheduler/scheduler_config.json", False),
        ("README.md", False),
        ("samples.png", False),
        ("unet/tmp/config.json", False),  # only dot-folders are leftovers
        ("staging.md", False),
    ],
)
def test_ignore_patterns(path: str, ignored: bool):
    from huggingface_hub.utils import filter_repo_objects

    kept = list(filter_repo_objects([path], ignore_patterns=list(DEFAULT_IGNORE_PATTERNS)))
    assert (kept == []) is ignored


def test_fake_hub_serves_repo_info_and_files(hub_server: FakeHub, pipeline_dir):  # noqa: F811
    folder, expected = pipeline_dir
    push_to_hub(folder, REPO_ID, private=True, token=TOKEN, endpoint=hub_server.endpoint)
    api = HfApi(endpoint=hub_server.endpoint, token=TOKEN)
    assert set(api.list_repo_files(REPO_ID)) == set(expected)
    info = api.model_info(REPO_ID)
    assert info.sha == hub_server.commits[-1].oid and info.private is True
