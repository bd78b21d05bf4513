"""A fake Hugging Face Hub for tests: a threaded stdlib HTTP server on 127.0.0.1 that speaks just enough of the
Hub API for huggingface_hub's `create_repo`, `upload_folder`/`create_commit`, `whoami`, `model_info`/`repo_info`
and `list_repo_files`.

Every file is answered with upload mode "regular" by the preupload endpoint, so file bytes travel base64-encoded
inside the NDJSON commit payload (no LFS, no xet). Repositories, commits (message and file bytes) and requests are
recorded for assertions. Use the `hub_server` fixture (import it into a test module with
`from hub_server import hub_server  # noqa: F401`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
_REPO = r"(?P<kind>models|datasets|spaces)/(?P<repo>[^/]+/[^/]+)"


def git_blob_sha1(data: bytes) -> str:
    """Git object id of a blob (what the Hub reports as the `oid` of a regular file)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class FakeRepo:
    """A repository on the fake Hub."""

    repo_id: str
    repo_type: str
    private: bool
    files: dict[str, bytes] = field(default_factory=dict)
    head: str = "0" * 40


@dataclass
class FakeCommit:
    """A commit received by the fake Hub."""

    repo_id: str
    repo_type: str
    revision: str
    message: str
    description: str
    oid: str
    files: dict[str, bytes] = field(default_factory=dict)
    deleted: list[str] = field(default_factory=list)


@dataclass
class RecordedRequest:
    """One request seen by the fake Hub (the Authorization header is kept to check which token was used)."""

    method: str
    path: str
    authorization: str | None
    status: int = 0


@dataclass
class _Failure:
    status: int
    remaining: int
    path_contains: str | None
    message: str


class FakeHub:
    """State and control of the fake Hub server.

    Attributes:
        endpoint: Base URL (`http://127.0.0.1:<port>`), pass it as `endpoint=` to `HfApi`/`push_to_hub`.
        repos: `repo_id` → `FakeRepo` (private flag, type, current files).
        commits: Every commit received, in order.
        requests: Every request received, in order.
        user: User name returned by `whoami`.
        accepted_tokens: When not `None`, only these bearer tokens are accepted (others get HTTP 401).
    """

    def __init__(self, user: str = "test-user") -> None:
        self.user = user
        self.repos: dict[str, FakeRepo] = {}
        self.commits: list[FakeCommit] = []
        self.requests: list[RecordedRequest] = []
        self.accepted_tokens: set[str] | None = None
        self._failures: list[_Failure] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.endpoint = ""

    # ------------------------------------------------------------------ control

    def fail_next(
        self,
        status: int = 500,
        *,
        count: int = 1,
        path_contains: str | None = None,
        message: str = "Internal Server Error (injected by the fake hub)",
    ) -> None:
        """Answer the next `count` requests (whose path contains `path_contains`, if given) with HTTP `status`.

        Note that huggingface_hub retries 5xx answers of some endpoints (preupload, commit in the xet pipeline) with
        back-off; fail the first request (`create_repo`, not retried) or use a 4xx status to fail fast.
        """
        with self._lock:
            self._failures.append(_Failure(status, count, path_contains, message))

    def paths(self, method: str | None = None) -> list[str]:
        """Paths of the requests received (optionally only those with `method`)."""
        return [r.path for r in self.requests if method is None or r.method == method]

    def start(self) -> FakeHub:
        """Bind to 127.0.0.1 on a free port and serve in a daemon thread."""
        handler = type("FakeHubHandler", (_Handler,), {"hub": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        host, port = self._server.server_address[:2]
        self.endpoint = f"http://{host}:{port}"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), name="fake-hub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and release the port."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ internals

    def _take_failure(self, path: str) -> _Failure | None:
        with self._lock:
            for failure in self._failures:
                if failure.path_contains is None or failure.path_contains in path:
                    failure.remaining -= 1
                    if failure.remaining <= 0:
                        self._failures.remove(failure)
                    return failure
        return None

    def _repo_url(self, repo: FakeRepo) -> str:
        prefix = "" if repo.repo_type == "model" else f"{repo.repo_type}s/"
        return f"{self.endpoint}/{prefix}{repo.repo_id}"


class _Handler(BaseHTTPRequestHandler):
    hub: FakeHub
    server_version = "FakeHub/1.0"
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # silence the default stderr access log
        pass

    # ------------------------------------------------------------------ plumbing

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, payload: Any = None, headers: dict[str, str] | None = None) -> None:
        body = b"" if payload is None else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Request-Id", "fake-hub-request")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self._record.status = status

    def _error(self, status: int, message: str, error_code: str | None = None) -> None:
        headers = {"X-Error-Message": message}
        if error_code:
            headers["X-Error-Code"] = error_code
        self._send(status, {"error": message}, headers)

    def _token(self) -> str | None:
        auth = self.headers.get("Authorization")
        if auth and auth.lower().startswith("bearer "):
            return auth[7:].strip()
        return None

    def _authorized(self, required: bool) -> bool:
        token = self._token()
        accepted = self.hub.accepted_tokens
        if token is None and not required:
            return True
        if token is None or (accepted is not None and token not in accepted):
            self._error(401, "Invalid credentials in Authorization header")
            return False
        return True

    def _repo(self, kind: str, repo_id: str) -> FakeRepo | None:
        repo = self.hub.repos.get(repo_id)
        if repo is None or repo.repo_type != REPO_TYPES[kind]:
            self._error(404, "Repository not found", "RepoNotFound")
            return None
        return repo

    def _dispatch(self) -> None:
        url = urlsplit(self.path)
        path = unquote(url.path)
        self._record = RecordedRequest(self.command, path, self.headers.get("Authorization"))
        self.hub.requests.append(self._record)
        body = self._read_body() if self.command in ("POST", "PUT", "PATCH", "DELETE") else b""
        failure = self.hub._take_failure(path)
        if failure is not None:
            self._error(failure.status, failure.message)
            return
        query = parse_qs(url.query)
        routes = [
            ("POST", r"/api/repos/create", self._create_repo),
            ("POST", r"/api/validate-yaml", self._validate_yaml),
            ("GET", r"/api/whoami-v2", self._whoami),
            ("POST", rf"/api/{_REPO}/preupload/(?P<rev>.+)", self._preupload),
            ("POST", rf"/api/{_REPO}/commit/(?P<rev>.+)", self._commit),
            ("GET", rf"/api/{_REPO}/tree/(?P<rev>[^/]+)(?:/(?P<sub>.*))?", self._tree),
            ("GET", rf"/api/{_REPO}(?:/revision/(?P<rev>.+))?", self._info),
            # downloads: /<repo_id>/resolve/<rev>/<file> for models (datasets and spaces have their prefix)
            ("GET", r"/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)", self._resolve),
            ("HEAD", r"/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)", self._resolve),
        ]
        for method, pattern, handler in routes:
            match = re.fullmatch(pattern, path)
            if match and self.command == method:
                handler(body=body, query=query, **match.groupdict())
                return
        self._error(404, f"Fake hub has no route for {self.command} {path}")

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _dispatch

    # ------------------------------------------------------------------ routes

    def _create_repo(self, body: bytes, **_: Any) -> None:
        if not self._authorized(required=True):
            return
        payload = json.loads(body or b"{}")
        name = payload.get("name")
        if not name:
            self._error(400, "Missing repo name")
            return
        namespace = payload.get("organization") or self.hub.user
        repo_id = f"{namespace}/{name}"
        repo_type = payload.get("type") or "model"
        private = payload.get("visibility") == "private" or bool(payload.get("private"))
        with self.hub._lock:
            existing = self.hub.repos.get(repo_id)
            if existing is None:
                repo = FakeRepo(repo_id=repo_id, repo_type=repo_type, private=private)
                self.hub.repos[repo_id] = repo
        if existing is not None:
            self._send(409, {"error": "You already created this model repo", "url": self.hub._repo_url(existing)})
            return
        self._send(
            200, {"url": self.hub._repo_url(repo), "name": repo_id, "id": hashlib.md5(repo_id.encode()).hexdigest()}
        )

    def _validate_yaml(self, **_: Any) -> None:
        self._send(200, {"errors": [], "warnings": []})

    def _whoami(self, **_: Any) -> None:
        if not self._authorized(required=True):
            return
        self._send(
            200,
            {
                "type": "user",
                "name": self.hub.user,
                "fullname": "Test User",
                "orgs": [],
                "auth": {"type": "access_token", "accessToken": {"displayName": "test", "role": "write"}},
            },
        )

    def _preupload(self, body: bytes, kind: str, repo: str, **_: Any) -> None:
        if not self._authorized(required=True):
            return
        fake = self._repo(kind, repo)
        if fake is None:
            return
        files = json.loads(body or b"{}").get("files", [])
        answer = []
        for entry in files:
            current = fake.files.get(entry["path"])
            answer.append(
                {
                    "path": entry["path"],
                    "uploadMode": "regular",
                    "shouldIgnore": False,
                    "oid": None if current is None else git_blob_sha1(current),
                }
            )
        self._send(200, {"files": answer, "commitOid": fake.head})

    def _commit(self, body: bytes, kind: str, repo: str, rev: str, **_: Any) -> None:
        if not self._authorized(required=True):
            return
        fake = self._repo(kind, repo)
        if fake is None:
            return
        header: dict[str, Any] = {}
        added: dict[str, bytes] = {}
        deleted: list[str] = []
        for line in body.splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item.get("key"), item.get("value", {})
            if key == "header":
                header = value
            elif key == "file":
                if value.get("encoding") != "base64":
                    self._error(400, f"Unsupported encoding {value.get('encoding')!r}")
                    return
                added[value["path"]] = base64.b64decode(value["content"])
            elif key in ("deletedFile", "deletedFolder"):
                deleted.append(value["path"])
            else:
                self._error(422, f"The fake hub only accepts regular files, got {key!r}")
                return
        if not header.get("summary"):
            self._error(400, "Missing commit summary")
            return
        digest = hashlib.sha1(fake.head.encode() + body).hexdigest()
        commit = FakeCommit(
            repo_id=fake.repo_id,
            repo_type=fake.repo_type,
            revision=rev,
            message=header["summary"],
            description=header.get("description", ""),
            oid=digest,
            files=added,
            deleted=deleted,
        )
        with self.hub._lock:
            for path in deleted:
                for existing in list(fake.files):
                    if existing == path or existing.startswith(path.rstrip("/") + "/"):
                        del fake.files[existing]
            fake.files.update(added)
            fake.head = digest
            self.hub.commits.append(commit)
        self._send(
            200,
            {
                "success": True,
                "commitOid": digest,
                "commitUrl": f"{self.hub._repo_url(fake)}/commit/{digest}",
                "hookOutput": "",
                "pullRequestUrl": None,
            },
        )

    def _info(self, kind: str, repo: str, **_: Any) -> None:
        if not self._authorized(required=False):
            return
        fake = self._repo(kind, repo)
        if fake is None:
            return
        self._send(
            200,
            {
                "id": fake.repo_id,
                "author": fake.repo_id.split("/")[0],
                "sha": fake.head,
                "private": fake.private,
                "siblings": [{"rfilename": name} for name in sorted(fake.files)],
                "tags": [],
            },
        )

    def _resolve(self, repo: str, file: str, **_: Any) -> None:
        """A file of a model repository at its head, with the headers ``hf_hub_download`` reads (commit, ETag, size)."""
        if not self._authorized(required=False):
            return
        fake = self._repo("models", repo)
        if fake is None:
            return
        data = fake.files.get(file)
        if data is None:
            self._error(404, f"{file} not found in {repo}", "EntryNotFound")
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("ETag", f'"{git_blob_sha1(data)}"')
        self.send_header("X-Repo-Commit", fake.head)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        self._record.status = 200

    def _tree(self, kind: str, repo: str, sub: str | None = None, query: dict | None = None, **_: Any) -> None:
        if not self._authorized(required=False):
            return
        fake = self._repo(kind, repo)
        if fake is None:
            return
        recursive = (query or {}).get("recursive", ["False"])[0].lower() == "true"
        prefix = f"{sub.strip('/')}/" if sub else ""
        entries, folders = [], set()
        for name in sorted(fake.files):
            if not name.startswith(prefix):
                continue
            rest = name[len(prefix) :]
            if not recursive and "/" in rest:
                folders.add(prefix + rest.split("/")[0])
                continue
            data = fake.files[name]
            entries.append({"type": "file", "path": name, "size": len(data), "oid": git_blob_sha1(data)})
        entries += [{"type": "directory", "path": folder, "oid": "0" * 40} for folder in sorted(folders)]
        self._send(200, entries)


@pytest.fixture
def hub_server(monkeypatch: pytest.MonkeyPatch):
    """A running `FakeHub`; huggingface_hub's offline mode is switched off for the test (HF_HUB_OFFLINE=1 only
    blocks the real Hub here: requests go to 127.0.0.1)."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    hub = FakeHub().start()
    try:
        yield hub
    finally:
        hub.stop()
