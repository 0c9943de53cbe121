"""A small Hub-compatible HTTP server for tests: enough of the Hugging Face Hub API for
huggingface_hub (2.x) to create repos, upload (regular + LFS "basic" transfer), commit,
branch, tag, set Space hardware/variables, and for ``from_pretrained("ns/name")`` to
download through ``/resolve``.

No such server installs from the package registries (FIELD_NOTES), so it is written here.
State lives in a folder (JSON + content-addressed blobs) and survives :meth:`HubServer.stop`
/ :meth:`HubServer.start` on the same port, which is how tests interrupt a push.

    server = HubServer(tmp_path / "hub", token="hf_test").start()
    ...  # point huggingface_hub.constants.ENDPOINT at server.url (HF_HUB_DISABLE_XET=True)
    server.stop()
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

#: files the server stores through LFS (the real Hub decides by .gitattributes and size)
LFS_SUFFIXES = (".safetensors", ".bin", ".png", ".jpg", ".pt", ".model")
GITATTRIBUTES = "*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.png filter=lfs diff=lfs merge=lfs -text\n"
_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}


def git_sha(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


class Store:
    """Repos, commits and blobs, persisted as state.json + blobs/ in ``root``."""

    def __init__(self, root: Path):
        self.root = Path(root)
        (self.root / "blobs").mkdir(parents=True, exist_ok=True)
        self.lock = threading.RLock()
        path = self.root / "state.json"
        self.state: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {"repos": {}}

    def save(self) -> None:
        tmp = self.root / "state.json.tmp"
        tmp.write_text(json.dumps(self.state))
        tmp.replace(self.root / "state.json")

    # blobs are keyed by sha256
    def blob_path(self, sha256: str) -> Path:
        return self.root / "blobs" / sha256

    def put_blob(self, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        p = self.blob_path(sha)
        if not p.exists():
            tmp = p.with_suffix(".tmp" + uuid.uuid4().hex)
            tmp.write_bytes(data)
            tmp.replace(p)
        return sha

    def repo(self, rtype: str, repo_id: str) -> dict | None:
        return self.state["repos"].get(f"{rtype}/{repo_id}")

    def create_repo(self, rtype: str, repo_id: str, private: bool, sdk: str | None) -> dict:
        repo = {"type": rtype, "id": repo_id, "private": private, "sdk": sdk, "commits": {}, "branches": {},
                "tags": {}, "variables": {}, "hardware": None}
        self.state["repos"][f"{rtype}/{repo_id}"] = repo
        self.commit(repo, "main", "initial commit", [("add", ".gitattributes", self.put_blob(GITATTRIBUTES.encode()),
                                                      len(GITATTRIBUTES), False)])
        return repo

    def resolve(self, repo: dict, rev: str) -> str | None:
        if rev in repo["branches"]:
            return repo["branches"][rev]
        if rev in repo["tags"]:
            return repo["tags"][rev]
        if rev in repo["commits"]:
            return rev
        return None

    def commit(self, repo: dict, branch: str, message: str, ops: list) -> str:
        parent = repo["branches"].get(branch)
        files = dict(repo["commits"][parent]["files"]) if parent else {}
        for op in ops:
            if op[0] == "add":
                _, path, sha, size, lfs = op
                files[path] = {"sha256": sha, "size": size, "lfs": lfs}
            elif op[0] == "delete":
                files.pop(op[1], None)
            elif op[0] == "delete_folder":
                prefix = op[1].rstrip("/") + "/"
                files = {k: v for k, v in files.items() if not k.startswith(prefix)}
        oid = hashlib.sha1(f"{parent}{message}{uuid.uuid4()}".encode()).hexdigest()
        repo["commits"][oid] = {"parent": parent, "message": message, "files": files, "date": time.time()}
        repo["branches"][branch] = oid
        self.save()
        return oid

    def file_oid(self, entry: dict) -> str:
        """The git object id of a stored file (of its pointer, for LFS files)."""
        if entry["lfs"]:
            return git_sha(lfs_pointer(entry["sha256"], entry["size"]))
        return git_sha(self.blob_path(entry["sha256"]).read_bytes())


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, *args):  # quiet: tests read their own output
        pass

    # ------------------------------------------------------------ plumbing
    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = b""
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    return out
                out += self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _send(self, status: int, body: Any = None, headers: dict | None = None, head_only: bool = False) -> None:
        data = body if isinstance(body, bytes) else (b"" if body is None else json.dumps(body).encode())
        self.send_response(status)
        if not isinstance(body, bytes):
            self.send_header("Content-Type", "application/json")
        for k, v in (headers or {}).items():
            self.send_header(k, str(v))
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if not head_only:
            self.wfile.write(data)

    def _error(self, status: int, code: str, message: str, head_only: bool = False) -> None:
        self._send(status, {"error": message}, {"X-Error-Code": code, "X-Error-Message": message},
                   head_only=head_only)

    def _authorized(self) -> bool:
        want = self.server.hub.token
        got = self.headers.get("Authorization", "")
        self.server.hub.seen_auth.append(got)
        return want is None or got == f"Bearer {want}"

    def _dispatch(self, method: str) -> None:
        hub = self.server.hub
        url = urlparse(self.path)
        path, query = unquote(url.path), parse_qs(url.query)
        hub.requests.append((method, path))
        body = self._body() if method in ("POST", "PUT") else b""
        try:
            hook = hub.before_request
            if hook is not None and hook(self, method, path, body) is False:
                return
            self._route(method, path, query, body)
        except (BrokenPipeError, ConnectionResetError):
            pass

    do_GET = lambda self: self._dispatch("GET")  # noqa: E731
    do_HEAD = lambda self: self._dispatch("HEAD")  # noqa: E731
    do_POST = lambda self: self._dispatch("POST")  # noqa: E731
    do_PUT = lambda self: self._dispatch("PUT")  # noqa: E731

    # ------------------------------------------------------------ routes
    def _route(self, method: str, path: str, query: dict, body: bytes) -> None:
        store: Store = self.server.hub.store
        base = self.server.hub.url
        if method == "POST" and path == "/api/validate-yaml":
            return self._send(200, {"errors": [], "warnings": []})
        if method == "POST" and path == "/api/repos/create":
            if not self._authorized():
                return self._error(401, "Unauthorized", "Invalid credentials")
            p = json.loads(body or b"{}")
            rtype = p.get("type") or "model"
            repo_id = f"{p['organization']}/{p['name']}" if p.get("organization") else p["name"]
            with store.lock:
                url = f"{base}/{_PREFIX[rtype]}{repo_id}"
                if store.repo(rtype, repo_id):
                    return self._send(409, {"error": "You already created this repo", "url": url})
                store.create_repo(rtype, repo_id, p.get("visibility") == "private" or bool(p.get("private")),
                                  p.get("sdk"))
            return self._send(200, {"url": url, "name": repo_id})
        if method == "PUT" and path.startswith("/__lfs/"):
            sha = path.rsplit("/", 1)[1]
            if hashlib.sha256(body).hexdigest() != sha:
                return self._error(400, "BadRequest", "sha256 mismatch")
            with store.lock:
                store.put_blob(body)
                self.server.hub.lfs_puts.append(sha)
            return self._send(200, {})
        m = re.fullmatch(r"/(?:(datasets|spaces)/)?([^/]+/[^/]+)\.git/info/lfs/objects/batch", path)
        if m and method == "POST":
            return self._lfs_batch(json.loads(body))
        m = re.fullmatch(r"/api/(models|datasets|spaces)/([^/]+/[^/]+)(?:/(.*))?", path)
        if m:
            return self._api(method, _TYPES[m.group(1)], m.group(2), m.group(3) or "", query, body)
        m = re.fullmatch(r"/(?:(datasets|spaces)/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        if m and method in ("GET", "HEAD"):
            rtype = {"datasets": "dataset", "spaces": "space", None: "model"}[m.group(1)]
            return self._resolve(method, rtype, m.group(2), m.group(3), m.group(4))
        return self._error(404, "NotFound", f"no route for {method} {path}", head_only=method == "HEAD")

    def _lfs_batch(self, payload: dict) -> None:
        store: Store = self.server.hub.store
        objects = []
        for obj in payload.get("objects", []):
            entry = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if not store.blob_path(obj["oid"]).exists():  # omit actions: the server already has it
                entry["actions"] = {"upload": {"href": f"{self.server.hub.url}/__lfs/{obj['oid']}", "header": {}}}
            objects.append(entry)
        self._send(200, {"transfer": "basic", "objects": objects, "hash_algo": "sha256"},
                   {"Content-Type": "application/vnd.git-lfs+json"})

    def _api(self, method: str, rtype: str, repo_id: str, rest: str, query: dict, body: bytes) -> None:
        hub = self.server.hub
        store: Store = hub.store
        repo = store.repo(rtype, repo_id)
        if repo is None:
            return self._error(404, "RepoNotFound", f"Repository {repo_id} not found", head_only=method == "HEAD")
        if method in ("POST", "PUT") and not self._authorized():
            return self._error(401, "Unauthorized", "Invalid credentials")
        parts = rest.split("/") if rest else []
        action = parts[0] if parts else ""
        rev = unquote(parts[1]) if len(parts) > 1 else "main"
        with store.lock:
            if method == "GET" and action in ("", "revision"):
                sha = store.resolve(repo, rev)
                if sha is None:
                    return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
                files = repo["commits"][sha]["files"]
                info = {"id": repo_id, "modelId": repo_id, "sha": sha, "private": repo["private"],
                        "siblings": [{"rfilename": p} for p in sorted(files)], "tags": [], "downloads": 0,
                        "likes": 0, "lastModified": "2026-01-01T00:00:00.000Z", "disabled": False, "gated": False}
                if rtype == "space":
                    info.update(sdk=repo["sdk"], runtime={"stage": "BUILDING", "hardware": {
                        "current": None, "requested": repo["hardware"]}})
                return self._send(200, info)
            if method == "GET" and action == "tree":
                sha = store.resolve(repo, rev)
                if sha is None:
                    return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
                sub = "/".join(parts[2:]).strip("/")
                recursive = query.get("recursive", ["false"])[0].lower() in ("true", "1")
                return self._send(200, self._tree(repo["commits"][sha]["files"], sub, recursive))
            if method == "GET" and action == "refs":
                return self._send(200, {
                    "branches": [{"name": b, "ref": f"refs/heads/{b}", "targetCommit": c}
                                 for b, c in repo["branches"].items()],
                    "tags": [{"name": t, "ref": f"refs/tags/{t}", "targetCommit": c} for t, c in repo["tags"].items()],
                    "converts": []})
            if method == "GET" and action == "commits":
                sha = store.resolve(repo, rev)
                if sha is None:
                    return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
                out = []
                while sha:
                    c = repo["commits"][sha]
                    out.append({"id": sha, "title": c["message"], "message": "", "authors": [],
                                "date": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(c["date"]))})
                    sha = c["parent"]
                return self._send(200, out)
            if method == "POST" and action == "preupload":
                return self._preupload(repo, rev, json.loads(body))
            if method == "POST" and action == "commit":
                return self._commit(repo, rtype, repo_id, rev, body)
            if method == "POST" and action == "branch":
                if rev in repo["branches"]:
                    return self._error(409, "Conflict", f"Branch {rev} already exists")
                p = json.loads(body or b"{}")
                start = store.resolve(repo, p.get("startingPoint") or "main")
                repo["branches"][rev] = start
                store.save()
                return self._send(200, {})
            if method == "POST" and action == "tag":
                p = json.loads(body or b"{}")
                sha = store.resolve(repo, rev)
                if sha is None:
                    return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
                if p["tag"] in repo["tags"]:
                    return self._error(409, "Conflict", f"Tag {p['tag']} already exists")
                repo["tags"][p["tag"]] = sha
                store.save()
                return self._send(200, {})
            if method == "POST" and action == "hardware" and rtype == "space":
                repo["hardware"] = json.loads(body).get("flavor")
                store.save()
                return self._send(200, {"stage": "BUILDING", "hardware": {"current": None,
                                                                          "requested": repo["hardware"]}})
            if method == "POST" and action == "variables" and rtype == "space":
                p = json.loads(body)
                repo["variables"][p["key"]] = {"value": p["value"], "description": p.get("description")}
                store.save()
                return self._send(200, repo["variables"])
        return self._error(404, "NotFound", f"no route for {method} {rtype} {repo_id}/{rest}")

    def _tree(self, files: dict, sub: str, recursive: bool) -> list:
        store: Store = self.server.hub.store
        prefix = sub + "/" if sub else ""
        out, dirs = [], set()
        for path in sorted(files):
            if not path.startswith(prefix):
                continue
            rel = path[len(prefix):]
            if "/" in rel:
                d = rel.split("/")[0]
                for i, _ in enumerate(rel.split("/")[:-1]):
                    dirs.add(prefix + "/".join(rel.split("/")[:i + 1]) if recursive else prefix + d)
                if not recursive:
                    continue
            e = files[path]
            item = {"type": "file", "oid": store.file_oid(e), "size": e["size"], "path": path}
            if e["lfs"]:
                item["lfs"] = {"oid": e["sha256"], "size": e["size"], "pointerSize": len(lfs_pointer(e["sha256"],
                                                                                                   e["size"]))}
            out.append(item)
        out += [{"type": "directory", "oid": hashlib.sha1(d.encode()).hexdigest(), "size": 0, "path": d}
                for d in sorted(dirs)]
        return out

    def _preupload(self, repo: dict, rev: str, payload: dict) -> None:
        store: Store = self.server.hub.store
        sha = store.resolve(repo, rev)
        files = repo["commits"][sha]["files"] if sha else {}
        out = []
        for f in payload.get("files", []):
            lfs = f["path"].endswith(LFS_SUFFIXES)
            existing = files.get(f["path"])
            oid = None
            if existing:
                oid = existing["sha256"] if existing["lfs"] else store.file_oid(existing)
            out.append({"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False,
                        "oid": oid})
        self._send(200, {"files": out, "commitOid": sha})

    def _commit(self, repo: dict, rtype: str, repo_id: str, rev: str, body: bytes) -> None:
        hub = self.server.hub
        store: Store = hub.store
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        header = next((ln["value"] for ln in lines if ln["key"] == "header"), {})
        if rev not in repo["branches"]:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        parent = header.get("parentCommit")
        if parent and parent != repo["branches"][rev]:
            return self._error(412, "PreconditionFailed", "A commit has happened since. Please refresh and try again.")
        ops = []
        for ln in lines:
            key, v = ln["key"], ln["value"]
            if key == "file":
                data = base64.b64decode(v["content"]) if v.get("encoding", "base64") == "base64" else v[
                    "content"].encode()
                ops.append(("add", v["path"], store.put_blob(data), len(data), False))
            elif key == "lfsFile":
                if not store.blob_path(v["oid"]).exists():
                    return self._error(400, "BadRequest", f"LFS object {v['oid']} was never uploaded")
                ops.append(("add", v["path"], v["oid"], v["size"], True))
            elif key == "deletedFile":
                ops.append(("delete", v["path"]))
            elif key == "deletedFolder":
                ops.append(("delete_folder", v["path"]))
        oid = store.commit(repo, rev, header.get("summary", ""), ops)
        hub.commits.append(oid)
        url = f"{hub.url}/{_PREFIX[rtype]}{repo_id}/commit/{oid}"
        self._send(200, {"commitUrl": url, "commitOid": oid, "pullRequestUrl": None, "success": True})

    def _resolve(self, method: str, rtype: str, repo_id: str, rev: str, path: str) -> None:
        store: Store = self.server.hub.store
        head_only = method == "HEAD"
        with store.lock:
            repo = store.repo(rtype, repo_id)
            if repo is None:
                return self._error(404, "RepoNotFound", f"Repository {repo_id} not found", head_only)
            sha = store.resolve(repo, unquote(rev))
            if sha is None:
                return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}", head_only)
            entry = repo["commits"][sha]["files"].get(path)
            if entry is None:
                return self._error(404, "EntryNotFound", f"{path} does not exist at {rev}", head_only)
            data = store.blob_path(entry["sha256"]).read_bytes()
        headers = {"X-Repo-Commit": sha, "Accept-Ranges": "bytes"}
        if entry["lfs"]:
            headers.update({"ETag": f'"{entry["sha256"]}"', "X-Linked-Etag": f'"{entry["sha256"]}"',
                            "X-Linked-Size": entry["size"]})
        else:
            headers["ETag"] = f'"{git_sha(data)}"'
        rng = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if rng and not head_only:
            start = int(rng.group(1))
            end = int(rng.group(2)) if rng.group(2) else len(data) - 1
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            return self._send(206, data[start:end + 1], headers)
        self._send(200, data, headers, head_only=head_only)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    hub: HubServer


class HubServer:
    """The test Hub: ``start()`` / ``stop()`` (state kept on disk), ``url``, request logs."""

    def __init__(self, root: Path, token: str | None = None, port: int = 0):
        self.store = Store(root)
        self.token = token
        self.port = port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stopper: threading.Thread | None = None
        self.requests: list[tuple[str, str]] = []
        self.seen_auth: list[str] = []
        self.commits: list[str] = []
        self.lfs_puts: list[str] = []
        #: called as hook(handler, method, path, body) before routing; return False when it answered
        self.before_request = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> HubServer:
        if self._stopper is not None:  # a stop_soon() still closing the old socket
            self._stopper.join(timeout=10)
            self._stopper = None
        self._server = _Server(("127.0.0.1", self.port), _Handler)
        self._server.hub = self
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()

    def stop_soon(self) -> None:
        """Stop from inside a request handler (shutdown() would wait for that handler)."""
        self._stopper = threading.Thread(target=self.stop, daemon=True)
        self._stopper.start()

    # test helpers
    def repo(self, repo_id: str, rtype: str = "model") -> dict | None:
        return self.store.repo(rtype, repo_id)

    def files(self, repo_id: str, rtype: str = "model", rev: str = "main") -> dict[str, bytes]:
        repo = self.store.repo(rtype, repo_id)
        sha = self.store.resolve(repo, rev)
        return {p: self.store.blob_path(e["sha256"]).read_bytes() for p, e in repo["commits"][sha]["files"].items()}
