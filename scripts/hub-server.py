#!/usr/bin/env python3
"""A stand-in for the Hugging Face Hub on loopback, for tests/hub_download.rs (stdlib only).

Serves directories in the hub's URL layout, with the headers hf-hub (awqc's client) reads:
  GET  /api/models/{org}/{name}/revision/{rev}   -> {"id", "sha", "siblings": [{"rfilename"}]}
  GET|HEAD /{org}/{name}/resolve/{rev}/{file}    -> the file; X-Repo-Commit, ETag, Range (206 +
       Content-Range). Like the hub, an LFS file (weights, or >= 10 MiB) answers 302 to a CDN URL
       (/cdn-lfs/{sha256}, served here too) with X-Linked-Etag = its sha256 and X-Linked-Size;
       a regular file's ETag is its git blob sha1.
Errors as the hub words them: 404 with X-Error-Code RepoNotFound / RevisionNotFound /
EntryNotFound, 401 without the right token.

Revisions: "main" and the repository's commit (sha1 of "awqc-test-hub " + repo id).

Fault injection (FILE is the file's name in the repo; each fault fires once unless noted):
  --token T                  every /api and /resolve request needs "Authorization: Bearer T"
  --stall FILE:OFFSET        the first body transfer of FILE stops after byte OFFSET and hangs
  --drop FILE:OFFSET         the first body transfer of FILE is cut (socket closed) at OFFSET
  --corrupt FILE:OFFSET[:always]  the byte at OFFSET is flipped in the first (every) transfer
A "body transfer" is a GET that is not hf-hub's one-byte metadata probe (Range: bytes=0-0).

Every request is appended to --log as one JSON line {method, path, range, status}. The first line
on stdout is "port N" once the server listens on 127.0.0.1:N (--port 0 picks a free port).
"""

import argparse
import hashlib
import json
import os
import socket
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LFS_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".gguf", ".h5", ".msgpack", ".onnx")
LFS_MIN = 10 << 20


class Repo:
    def __init__(self, repo_id, root):
        self.id = repo_id
        self.root = root
        self.sha = hashlib.sha1(("awqc-test-hub " + repo_id).encode()).hexdigest()
        self.files = {}  # name -> dict(path, size, lfs, etag, sha256)
        for dirpath, _dirs, names in os.walk(root, followlinks=True):
            for n in names:
                path = os.path.join(dirpath, n)
                rel = os.path.relpath(path, root).replace(os.sep, "/")
                size = os.path.getsize(path)
                lfs = rel.endswith(LFS_SUFFIXES) or size >= LFS_MIN
                entry = {"path": path, "size": size, "lfs": lfs}
                if lfs:
                    h = hashlib.sha256()
                    with open(path, "rb") as f:
                        for chunk in iter(lambda: f.read(1 << 22), b""):
                            h.update(chunk)
                    entry["sha256"] = h.hexdigest()
                    # The hub's plain ETag of an LFS file is the git id of its pointer file.
                    pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{entry['sha256']}\nsize {size}\n"
                    entry["etag"] = git_blob_sha1(pointer.encode())
                else:
                    with open(path, "rb") as f:
                        entry["etag"] = git_blob_sha1(f.read())
                self.files[rel] = entry

    def revision_ok(self, rev):
        return rev in ("main", self.sha)


def git_blob_sha1(data):
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class Faults:
    def __init__(self, args):
        self.lock = threading.Lock()
        self.stall = dict(parse_fault(x) for x in args.stall)
        self.drop = dict(parse_fault(x) for x in args.drop)
        self.corrupt = {}
        for x in args.corrupt:
            name, rest = x.split(":", 1)
            off, _, mode = rest.partition(":")
            self.corrupt[name] = (int(off), mode == "always")

    def take(self, table, name):
        """Pop a once-only fault for `name` (None when there is none left)."""
        with self.lock:
            return table.pop(name, None)

    def corrupt_at(self, name, start, end):
        """Offset to flip in [start, end), consuming a once-only fault."""
        with self.lock:
            f = self.corrupt.get(name)
            if f is None or not (start <= f[0] < end):
                return None
            if not f[1]:
                del self.corrupt[name]
            return f[0]


def parse_fault(s):
    name, off = s.rsplit(":", 1)
    return name, int(off)


class Handler(BaseHTTPRequestHandler):
    server_version = "awqc-test-hub/1"

    def log_message(self, fmt, *args):  # quiet: the JSON log is the record
        pass

    def log_request(self, code="-", size="-"):
        entry = {
            "method": self.command,
            "path": self.path,
            "range": self.headers.get("Range"),
            "status": int(code) if str(code).isdigit() else code,
        }
        with self.server.log_lock:
            if self.server.log:
                self.server.log.write(json.dumps(entry) + "\n")
                self.server.log.flush()

    def do_HEAD(self):
        self.handle_any(body=False)

    def do_GET(self):
        self.handle_any(body=True)

    # --- helpers -------------------------------------------------------------------------------

    def error(self, code, error_code=None, message="error"):
        data = json.dumps({"error": message}).encode()
        self.send_response(code)
        if error_code:
            self.send_header("X-Error-Code", error_code)
        self.send_header("X-Error-Message", message)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def authorized(self):
        token = self.server.token
        return token is None or self.headers.get("Authorization") == f"Bearer {token}"

    def handle_any(self, body):
        path = urllib.parse.urlsplit(self.path).path
        if path.startswith("/cdn-lfs/"):
            return self.cdn(path[len("/cdn-lfs/"):], body)
        if not self.authorized():
            return self.error(401, None, "Invalid credentials in Authorization header")
        if path.startswith("/api/models/"):
            return self.api(path[len("/api/models/"):])
        parts = path.lstrip("/").split("/", 4)
        if len(parts) == 5 and parts[2] == "resolve":
            repo_id = parts[0] + "/" + parts[1]
            rev = urllib.parse.unquote(parts[3])
            name = urllib.parse.unquote(parts[4])
            return self.resolve(repo_id, rev, name, body)
        self.error(404, None, "Not Found")

    def api(self, rest):
        repo_id, sep, rev = rest.partition("/revision/")
        if not sep:
            return self.error(404, None, "Not Found")
        repo = self.server.repos.get(repo_id)
        if repo is None:
            return self.error(404, "RepoNotFound", "Repository not found")
        rev = urllib.parse.unquote(rev)
        if not repo.revision_ok(rev):
            return self.error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        doc = {
            "_id": repo.sha[:24],
            "id": repo.id,
            "modelId": repo.id,
            "sha": repo.sha,
            "siblings": [{"rfilename": n} for n in sorted(repo.files)],
        }
        data = json.dumps(doc).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def resolve(self, repo_id, rev, name, body):
        repo = self.server.repos.get(repo_id)
        if repo is None:
            return self.error(404, "RepoNotFound", "Repository not found")
        if not repo.revision_ok(rev):
            return self.error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        entry = repo.files.get(name)
        if entry is None:
            return self.error(404, "EntryNotFound", f"{name} does not exist on {rev}")
        if entry["lfs"]:
            host = self.headers.get("Host") or f"127.0.0.1:{self.server.server_address[1]}"
            self.send_response(302)
            self.send_header("Location", f"http://{host}/cdn-lfs/{entry['sha256']}")
            self.send_header("X-Repo-Commit", repo.sha)
            self.send_header("ETag", f'"{entry["etag"]}"')
            self.send_header("X-Linked-Etag", f'"{entry["sha256"]}"')
            self.send_header("X-Linked-Size", str(entry["size"]))
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_file(name, entry, body, {"X-Repo-Commit": repo.sha, "ETag": f'"{entry["etag"]}"'})

    def cdn(self, sha256, body):
        for repo in self.server.repos.values():
            for name, entry in repo.files.items():
                if entry.get("sha256") == sha256:
                    return self.send_file(name, entry, body, {"ETag": f'"{sha256}"'})
        self.error(404, None, "Not Found")

    def send_file(self, name, entry, body, headers):
        size = entry["size"]
        rng = self.headers.get("Range")
        start, end = 0, size  # [start, end)
        status = 200
        if rng:
            try:
                unit, spec = rng.split("=", 1)
                a, b = spec.split("-", 1)
                start = int(a)
                end = min(int(b) + 1, size) if b else size
                if unit.strip() != "bytes" or start >= size or start >= end:
                    raise ValueError
            except ValueError:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(end - start))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
        self.end_headers()
        if not body:
            return
        probe = rng is not None and start == 0 and end == 1
        faults = self.server.faults
        stall = drop = flip = None
        if not probe:
            stall = faults.take(faults.stall, name)
            drop = faults.take(faults.drop, name)
            flip = faults.corrupt_at(name, start, end)
        stop = end
        for cut in (stall, drop):
            if cut is not None and start < cut < stop:
                stop = cut
        try:
            with open(entry["path"], "rb") as f:
                f.seek(start)
                pos = start
                while pos < stop:
                    chunk = bytearray(f.read(min(1 << 20, stop - pos)))
                    if not chunk:
                        break
                    if flip is not None and pos <= flip < pos + len(chunk):
                        chunk[flip - pos] ^= 0xFF
                    self.wfile.write(chunk)
                    pos += len(chunk)
            self.wfile.flush()
            if stall is not None and stop < end:
                # Hang with the connection open, like a transfer that stopped moving; the test
                # kills the client meanwhile.
                time.sleep(self.server.stall_seconds)
            if stop < end:
                self.close_connection = True
                try:
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repo", action="append", default=[], metavar="ID=DIR", help="serve DIR as repository ID")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--log")
    p.add_argument("--token")
    p.add_argument("--stall", action="append", default=[])
    p.add_argument("--drop", action="append", default=[])
    p.add_argument("--corrupt", action="append", default=[])
    p.add_argument("--stall-seconds", type=float, default=300.0)
    args = p.parse_args()
    repos = {}
    for r in args.repo:
        rid, _, root = r.partition("=")
        if not os.path.isdir(root):
            sys.exit(f"hub-server: {root}: not a directory")
        repos[rid] = Repo(rid, root)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    server.repos = repos
    server.token = args.token
    server.faults = Faults(args)
    server.stall_seconds = args.stall_seconds
    server.log = open(args.log, "a") if args.log else None
    server.log_lock = threading.Lock()
    print(f"port {server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
