"""The JSON the fake GitHub answers with, and the source archives it serves.

Pure: data in, data out. Each shape starts from the example that GitHub's OpenAPI description
gives for the response (so github3.py finds every key it reads), with its URLs moved to the fake
server and its identity (ids, names, shas) replaced by the fake's own.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import io
import tarfile
import time
from datetime import UTC, datetime

from openapi_validation import load_spec

_GITHUB_API = "https://api.github.com"


def iso8601(epoch: float) -> str:
    """GitHub's timestamp format: `2011-01-26T19:01:12Z`."""
    return datetime.fromtimestamp(int(epoch), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def example(name: str) -> dict:
    """A fresh copy of one response example of the description."""
    return copy.deepcopy(load_spec()["components"]["examples"][name]["value"])


def rebase(node, replacements: list[tuple[str, str]]):
    """Rewrite every string of `node` with `replacements`, longest first, in place."""
    ordered = sorted(replacements, key=lambda r: -len(r[0]))
    if isinstance(node, dict):
        for key, value in node.items():
            if isinstance(value, str):
                node[key] = _replace(value, ordered)
            else:
                rebase(value, ordered)
    elif isinstance(node, list):
        for index, value in enumerate(node):
            if isinstance(value, str):
                node[index] = _replace(value, ordered)
            else:
                rebase(value, ordered)
    return node


def _replace(text: str, ordered: list[tuple[str, str]]) -> str:
    for old, new in ordered:
        if old in text:
            return text.replace(old, new)
    return text


def user(api: str, login: str, user_id: int, kind: str = "User") -> dict:
    """A simple-user object."""
    shape = example("status")["creator"]
    rebase(shape, [(f"{_GITHUB_API}/users/octocat", f"{api}/users/{login}"),
                   ("https://github.com/octocat", f"https://github.com/{login}")])
    shape.update(login=login, id=user_id, type=kind, site_admin=False,
                 node_id=base64.b64encode(f"04:User{user_id}".encode()).decode())
    return shape


def repository(api: str, repo, owner: dict) -> dict:
    """A full-repository object for GET /repos/{owner}/{repo}."""
    shape = example("full-repository")
    for key in ("parent", "source", "template_repository", "organization"):
        shape.pop(key, None)
    rebase(shape, [(f"{_GITHUB_API}/repos/octocat/Hello-World", f"{api}/repos/{repo.full_name}"),
                   ("github.com/octocat/Hello-World", f"github.com/{repo.full_name}"),
                   ("github.com:octocat/Hello-World", f"github.com:{repo.full_name}"),
                   (_GITHUB_API, api)])
    shape.update(id=repo.id, name=repo.name, full_name=repo.full_name, owner=owner,
                 private=True, visibility="private", description=None, fork=False,
                 default_branch=repo.default_branch, topics=[], language=None,
                 node_id=base64.b64encode(f"010:Repository{repo.id}".encode()).decode(),
                 permissions={"admin": False, "maintain": False, "push": False,
                              "triage": False, "pull": True})
    return shape


def app(api: str, *, app_id: int, slug: str, client_id: str, owner: dict,
        permissions: dict, events: list[str]) -> dict:
    """An integration object for GET /app."""
    shape = example("integration")
    rebase(shape, [(_GITHUB_API, api)])
    shape.update(id=app_id, slug=slug, name=slug.replace("-", " ").title(), client_id=client_id,
                 owner=owner, html_url=f"https://github.com/apps/{slug}",
                 permissions=dict(permissions), events=list(events),
                 node_id=base64.b64encode(f"011:Integration{app_id}".encode()).decode())
    for secret in ("client_secret", "webhook_secret", "pem"):
        shape.pop(secret, None)
    return shape


def installation(api: str, inst, *, app_id: int, client_id: str, account: dict) -> dict:
    """An installation object."""
    shape = example("installation")
    rebase(shape, [(_GITHUB_API, api)])
    shape.update(id=inst.id, account=account, app_id=app_id, client_id=client_id,
                 app_slug=shape.get("app_slug", "slipway"), target_id=account["id"],
                 target_type=account["type"], permissions=dict(inst.permissions),
                 repository_selection="all",
                 access_tokens_url=f"{api}/app/installations/{inst.id}/access_tokens",
                 html_url=f"https://github.com/settings/installations/{inst.id}",
                 single_file_name=None)
    return shape


def check_run(api: str, run: dict, repo, app_shape: dict) -> dict:
    """A check-run object from the fields the fake keeps."""
    shape = example("check-run")
    shape.update({key: run.get(key) for key in (
        "id", "head_sha", "name", "status", "conclusion", "started_at", "completed_at",
        "details_url", "external_id")})
    shape["external_id"] = run.get("external_id") or ""
    shape["details_url"] = run.get("details_url") or app_shape["html_url"]
    shape["node_id"] = base64.b64encode(f"08:CheckRun{run['id']}".encode()).decode()
    shape["url"] = f"{api}/repos/{repo.full_name}/check-runs/{run['id']}"
    shape["html_url"] = f"https://github.com/{repo.full_name}/runs/{run['id']}"
    output = run.get("output") or {}
    shape["output"] = {
        "title": output.get("title"), "summary": output.get("summary"),
        "text": output.get("text"), "annotations_count": run.get("annotations_count", 0),
        "annotations_url": f"{shape['url']}/annotations",
    }
    shape["check_suite"] = {"id": run["check_suite_id"]}
    shape["app"] = app_shape
    shape["pull_requests"] = []
    return shape


def status(api: str, repo, sha: str, body: dict, *, status_id: int, creator: dict,
           now: float) -> dict:
    """A status object for POST /repos/{owner}/{repo}/statuses/{sha}."""
    shape = example("status")
    shape.update(id=status_id, state=body["state"], context=body.get("context", "default"),
                 description=body.get("description"), target_url=body.get("target_url"),
                 created_at=iso8601(now), updated_at=iso8601(now), creator=creator,
                 url=f"{api}/repos/{repo.full_name}/statuses/{sha}",
                 node_id=base64.b64encode(f"06:Status{status_id}".encode()).decode())
    return shape


def combined_status(api: str, repo, sha: str, statuses: list[dict], repo_shape: dict) -> dict:
    """GET /repos/{owner}/{repo}/commits/{ref}/status: the latest status per context."""
    latest: dict[str, dict] = {}
    for item in statuses:  # oldest first, so the last one per context wins
        latest[item["context"].lower()] = item
    states = {item["state"] for item in latest.values()}
    if states & {"error", "failure"}:
        state = "failure"
    elif not states or "pending" in states:
        state = "pending"
    else:
        state = "success"
    return {"state": state, "statuses": list(latest.values()), "sha": sha,
            "total_count": len(latest), "repository": repo_shape,
            "commit_url": f"{api}/repos/{repo.full_name}/commits/{sha}",
            "url": f"{api}/repos/{repo.full_name}/commits/{sha}/status"}


def git_blob_sha(data: bytes) -> str:
    """The sha git gives a blob with these bytes."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def git_tree_sha(files: dict[str, bytes]) -> str:
    """The sha git gives the root tree holding `files` (path -> bytes): equal trees, equal shas.

    Every file is a regular file (mode 100644); folders are trees (mode 40000),
    sorted as git sorts them (a folder's name as if it ended with `/`).
    """
    entries: dict[str, bytes | dict] = {}
    for path, data in files.items():
        node = entries
        *folders, name = path.split("/")
        for folder in folders:
            node = node.setdefault(folder, {})
        node[name] = data
    return _tree_sha(entries)


def _tree_sha(entries: dict) -> str:
    def order(name: str) -> str:
        return name + "/" if isinstance(entries[name], dict) else name

    body = b""
    for name in sorted(entries, key=order):
        value = entries[name]
        if isinstance(value, dict):
            mode, sha = b"40000", _tree_sha(value)
        else:
            mode, sha = b"100644", git_blob_sha(value)
        body += mode + b" " + name.encode() + b"\0" + bytes.fromhex(sha)
    return hashlib.sha1(b"tree %d\0" % len(body) + body).hexdigest()


def git_commit(api: str, repo, sha: str, files: dict[str, bytes], parents: list[str],
               message: str, date: float) -> dict:
    """GET /repos/{owner}/{repo}/git/commits/{sha}: the commit with its tree and parents."""
    shape = example("git-commit")
    base = f"{api}/repos/{repo.full_name}/git"
    tree = git_tree_sha(files)
    shape.update(
        sha=sha, url=f"{base}/commits/{sha}", message=message,
        html_url=f"https://github.com/{repo.full_name}/commit/{sha}",
        node_id=base64.b64encode(f"06:Commit{repo.id}:{sha}".encode()).decode(),
        tree={"url": f"{base}/trees/{tree}", "sha": tree},
        parents=[{"url": f"{base}/commits/{parent}", "sha": parent,
                  "html_url": f"https://github.com/{repo.full_name}/commit/{parent}"}
                 for parent in parents],
    )
    for who in ("author", "committer"):
        shape[who]["date"] = iso8601(date)
    return shape


def content_file(api: str, repo, path: str, data: bytes, ref: str) -> dict:
    """GET /repos/{owner}/{repo}/contents/{path} for a file."""
    shape = example("content-file")
    encoded = base64.b64encode(data).decode()
    # GitHub wraps the base64 at 60 columns, as Ruby's Base64.encode64 does.
    wrapped = "".join(encoded[i:i + 60] + "\n" for i in range(0, len(encoded), 60))
    blob = git_blob_sha(data)
    self_url = f"{api}/repos/{repo.full_name}/contents/{path}?ref={ref}"
    html = f"https://github.com/{repo.full_name}/blob/{ref}/{path}"
    git_url = f"{api}/repos/{repo.full_name}/git/blobs/{blob}"
    shape.update(type="file", encoding="base64", size=len(data), name=path.rsplit("/", 1)[-1],
                 path=path, content=wrapped, sha=blob, url=self_url, git_url=git_url,
                 html_url=html, download_url=None,
                 _links={"self": self_url, "git": git_url, "html": html})
    return shape


def content_directory(api: str, repo, path: str, files: dict[str, bytes], ref: str) -> list:
    """GET /repos/{owner}/{repo}/contents/{path} for a directory: one entry per child."""
    prefix = f"{path}/" if path else ""
    children: dict[str, str] = {}
    for name in files:
        if name.startswith(prefix):
            head, _, rest = name[len(prefix):].partition("/")
            children[head] = "dir" if rest else "file"
    entries = []
    for child, kind in sorted(children.items()):
        child_path = prefix + child
        data = files.get(child_path, b"")
        sha = (git_blob_sha(data) if kind == "file"
               else hashlib.sha1(child_path.encode()).hexdigest())
        url = f"{api}/repos/{repo.full_name}/contents/{child_path}?ref={ref}"
        entries.append({"type": kind, "size": len(data) if kind == "file" else 0, "name": child,
                        "path": child_path, "sha": sha, "url": url, "git_url": None,
                        "html_url": None, "download_url": None,
                        "_links": {"self": url, "git": None, "html": None}})
    return entries


def pull_request(api: str, repo, repo_shape: dict, pr: dict) -> dict:
    """A pull-request object from the fields the fake keeps."""
    shape = example("pull-request")
    rebase(shape, [(f"{_GITHUB_API}/repos/octocat/Hello-World", f"{api}/repos/{repo.full_name}"),
                   ("github.com/octocat/Hello-World", f"github.com/{repo.full_name}"),
                   (_GITHUB_API, api)])
    number = pr["number"]
    shape.update(id=pr["id"], number=number, title=pr["title"], body=pr.get("body"),
                 state=pr["state"], merged=pr["merged"], merge_commit_sha=pr["merge_commit_sha"],
                 merged_at=pr.get("merged_at"), closed_at=pr.get("closed_at"), draft=False,
                 labels=[{"id": 1000 + i, "node_id": f"LA_{i}", "name": name, "color": "ededed",
                          "default": False, "description": None,
                          "url": f"{api}/repos/{repo.full_name}/labels/{name}"}
                         for i, name in enumerate(pr["labels"])],
                 url=f"{api}/repos/{repo.full_name}/pulls/{number}",
                 html_url=f"https://github.com/{repo.full_name}/pull/{number}")
    for side in ("head", "base"):
        shape[side].update(ref=pr[side], sha=pr[f"{side}_sha"], repo=repo_shape,
                           user=repo_shape["owner"], label=f"{repo.owner}:{pr[side]}")
    return shape


class Symlink(bytes):
    """A file of a commit that is a symbolic link (git mode 120000); its bytes are the target."""


def tarball(owner: str, name: str, sha: str, files: dict[str, bytes]) -> bytes:
    """A gzip tar as GitHub serves it: one top folder `{owner}-{repo}-{sha[:7]}/`.

    Like `git archive`, it opens with a pax global header whose comment is the commit sha.
    """
    top = f"{owner}-{name}-{sha[:7]}"
    buffer = io.BytesIO()
    mtime = int(time.time())
    with tarfile.open(fileobj=buffer, mode="w:gz", format=tarfile.PAX_FORMAT,
                      pax_headers={"comment": sha}) as archive:
        directories = {top}
        for path in sorted(files):
            parts = path.split("/")[:-1]
            for depth in range(1, len(parts) + 1):
                directories.add(f"{top}/{'/'.join(parts[:depth])}")
        for directory in sorted(directories):
            info = tarfile.TarInfo(directory + "/")
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o775, mtime
            archive.addfile(info)
        for path in sorted(files):
            data = files[path]
            info = tarfile.TarInfo(f"{top}/{path}")
            if isinstance(data, Symlink):
                info.type, info.linkname = tarfile.SYMTYPE, data.decode()
                info.mode, info.mtime = 0o777, mtime
                archive.addfile(info)
                continue
            info.size, info.mode, info.mtime = len(data), 0o664, mtime
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()
