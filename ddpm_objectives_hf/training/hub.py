"""Push a trained pipeline folder to the Hugging Face Hub in one commit (`push_to_hub`).

Only the pipeline (model_index.json, unet/, scheduler/), its README.md, images and small JSON files travel; training
checkpoints (`checkpoint-*`), logs and the leftovers of interrupted saves (`.checkpoint-*`, `.pipeline-*`,
`.staging*`, `.tmp*`) never do, and the local folder is only read. Every failure (network, HTTP, authentication,
offline mode, bad repo id) surfaces as a one-line `HubError` that names the parameter at fault and never contains
the token.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from pathlib import Path

from huggingface_hub import HfApi

from ..errors import HubError
from .run_folder import LEFTOVER_PREFIXES

__all__ = ["DEFAULT_IGNORE_PATTERNS", "HubError", "push_to_hub", "resolve_repo_id"]

logger = logging.getLogger(__name__)

DEFAULT_COMMIT_MESSAGE = "Upload pipeline trained with ddpm-objectives-hf"

# fnmatch patterns on paths relative to the folder (`*` also matches `/`).
DEFAULT_IGNORE_PATTERNS: tuple[str, ...] = (
    "checkpoint-*",
    "checkpoint-*/**",
    "**/checkpoint-*/**",
    "logs/**",
    "**/logs/**",
    "runs/**",
    "wandb/**",
    "**/events.out.tfevents.*",
    "**/__pycache__/**",
    "**/.ipynb_checkpoints/**",
    "*.tmp",
    "**/*.tmp",
    "*.lock",
    "**/*.lock",
    ".DS_Store",
    "**/.DS_Store",
    # dot-folders (and files) left by a save that was killed, at the top or deeper
    *(pattern for prefix in LEFTOVER_PREFIXES for pattern in (f"{prefix}*", f"**/{prefix}*")),
)

_TOKEN_RE = re.compile(r"\bhf_[A-Za-z0-9]{6,}\b")
_REPO_NAME_BAD_CHARS = re.compile(r"[^A-Za-z0-9_.-]+")


def _scrub(text: str, token: str | None) -> str:
    """One line, with `token` and anything that looks like a Hub token replaced by `***`."""
    if token:
        text = text.replace(token, "***")
    text = _TOKEN_RE.sub("hf_***", text)
    return " ".join(text.split())


def _describe_failure(exc: BaseException, *, repo_id: str, endpoint: str, token: str | None) -> tuple[str, str]:
    """The one-line HubError message for `exc`, and the parameter it names."""
    from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError, OfflineModeIsEnabled

    where = f"{endpoint}/{repo_id}" if repo_id else endpoint
    if isinstance(exc, OfflineModeIsEnabled):
        return (
            f"cannot push to {where}: Hugging Face offline mode is enabled (HF_HUB_OFFLINE=1); unset it to upload.",
            "push_to_hub",
        )
    if isinstance(exc, LocalTokenNotFoundError):
        return (
            f"hub_token: no Hugging Face token found for {endpoint}; run `hf auth login`, set HF_TOKEN, or pass one.",
            "hub_token",
        )
    if isinstance(exc, HfHubHTTPError):
        response = getattr(exc, "response", None)
        status = getattr(response, "status_code", None)
        detail = (getattr(exc, "server_message", None) or "").strip() or str(exc).strip().splitlines()[0]
        detail = _scrub(detail, token)[:300]
        if status in (401, 403):
            return (
                f"authentication failed for {where} (HTTP {status}: {detail}); the token is missing, invalid or "
                "lacks write access to this namespace. Log in with `hf auth login`, or check hub_token and "
                "hub_model_id.",
                "push_to_hub",
            )
        return f"the Hub at {endpoint} answered HTTP {status} for {repo_id or 'the request'}: {detail}", "push_to_hub"
    # httpx errors (connection refused, DNS, timeouts) and anything else, without importing httpx here.
    name = type(exc).__name__
    detail = _scrub(str(exc), token)[:300] or name
    if isinstance(exc, ValueError):
        return f"hub_model_id {repo_id!r} is not a valid repository id or upload argument: {detail}", "hub_model_id"
    if "Connect" in name or "Network" in name or "Timeout" in name or isinstance(exc, OSError):
        return (
            f"could not reach the Hub at {endpoint} ({name}: {detail}); check the network, hub_endpoint or "
            "HF_ENDPOINT.",
            "push_to_hub",
        )
    return f"push to {where} failed ({name}: {detail})", "push_to_hub"


def _hub_error(exc: BaseException, *, repo_id: str, endpoint: str, token: str | None) -> HubError:
    message, parameter = _describe_failure(exc, repo_id=repo_id, endpoint=endpoint, token=token)
    return HubError(_scrub(message, token), parameter=parameter)


def push_to_hub(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    endpoint: str | None = None,
    commit_message: str = DEFAULT_COMMIT_MESSAGE,
    ignore_patterns: Sequence[str] = DEFAULT_IGNORE_PATTERNS,
    before_upload: Callable[[str], object] | None = None,
) -> str:
    """Create the model repository if needed and upload the pipeline folder to it in a single commit.

    Args:
        folder: Local pipeline folder (model_index.json, unet/, scheduler/, README.md, images, objective JSON).
        repo_id: `namespace/name` of the model repository, or a bare `name`: the Hub's answer to `create_repo`
            then gives the namespace (the token's user), see `resolve_repo_id`.
        private: Create the repository as private (ignored if it already exists).
        token: Hub token; the locally saved one / `HF_TOKEN` when `None`. Never logged nor put in error messages.
        endpoint: Hub endpoint (e.g. a local test server); `HF_ENDPOINT` / huggingface.co when `None`.
        commit_message: Message of the commit.
        ignore_patterns: fnmatch patterns (relative paths) of files that must not be uploaded.
        before_upload: Called with the full `namespace/name` once the repository exists and before anything is
            uploaded, e.g. to write it into the model card when `repo_id` was a bare name. Its errors propagate
            as they are (they are not the Hub's).

    Returns:
        The URL of the commit (the repository URL if the server did not return one).

    Raises:
        HubError: On any failure, with a one-line message naming the endpoint; `parameter` is the argument at fault
            (`push_to_hub` for the upload itself, `hub_model_id`, `hub_token`).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise HubError(f"the folder to upload does not exist: {folder}", parameter="push_to_hub")
    if not (folder / "model_index.json").is_file():
        logger.warning("%s has no model_index.json: uploading it anyway, but it is not a diffusers pipeline.", folder)

    api = HfApi(endpoint=endpoint, token=token)
    where = api.endpoint.rstrip("/")
    try:
        repo_url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    except Exception as exc:  # every failure becomes a HubError
        raise _hub_error(exc, repo_id=repo_id, endpoint=where, token=token) from exc
    if before_upload is not None:
        before_upload(repo_url.repo_id)
    try:
        logger.info("Uploading %s to %s/%s (private=%s)", folder, where, repo_url.repo_id, private)
        info = api.upload_folder(
            repo_id=repo_url.repo_id,
            folder_path=folder,
            repo_type="model",
            commit_message=commit_message,
            ignore_patterns=list(ignore_patterns),  # upload_folder extends the list in place: pass a copy
        )
    except HubError:
        raise
    except Exception as exc:  # every failure becomes a HubError
        raise _hub_error(exc, repo_id=repo_id, endpoint=where, token=token) from exc
    url = getattr(info, "commit_url", None) or str(repo_url)
    logger.info("Pushed %s to %s", folder, url)
    return url


def _sanitize_repo_name(name: str) -> str:
    """Make a folder name a valid Hub repository name (`[\\w.-]`, no `--`/`..`, ≤ 96 chars)."""
    name = _REPO_NAME_BAD_CHARS.sub("-", name)
    name = re.sub(r"-{2,}", "-", re.sub(r"\.{2,}", ".", name)).strip("-.")
    return name[:96] or "ddpm-objectives-model"


def resolve_repo_id(hub_model_id: str | None, output_dir: str | Path) -> str:
    """The repository id to push to: `hub_model_id`, or a valid name made from the output folder's name.

    No request is made: a bare `name` (no namespace) is created by [`push_to_hub`] in the token's namespace, and the
    Hub's answer to `create_repo` gives the full `namespace/name`.

    Args:
        hub_model_id: `namespace/name`, a bare `name`, or `None` (the output folder's name is used).
        output_dir: The training output folder.

    Returns:
        `namespace/name` or a bare `name`.
    """
    return hub_model_id.strip() if hub_model_id else _sanitize_repo_name(Path(output_dir).resolve().name)
