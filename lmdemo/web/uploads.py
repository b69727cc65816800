"""Visitors' uploads: each its own, counted against its address's share, gone when unused.

Gradio's upload route (`/gradio_api/upload`) needs no session and stores a file under a folder named by its
content's hash, so two visitors uploading the same file would share one path, and the first to train on it
would delete the other's. `UploadDoor` stands in front of that route: an address past its share of files or
bytes (lines of `lmdemo.admission`) is refused before a byte is stored; what Gradio stored is moved into a folder
of its own with an unguessable name, and the visitor is given that path instead. `Uploads` then knows every
upload's address and session: a page claims its upload (the Train tab's upload event), a job deletes it once
read, its session's end deletes it, and one nobody used for `unused_s` is deleted by the sweep, whoever set
`GRADIO_TEMP_DIR`. Uploads are counted apart from the training folder's disk cap.
"""

from __future__ import annotations

import json
import secrets
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmdemo.admission import Admission, Busy, Hold, Line
from lmdemo.web.gate import Gate, answer

UPLOAD_ROUTE = "/gradio_api/upload"
FILES_LINE, BYTES_LINE = "uploads", "upload bytes"
FOLDER = "uploads"  # in the web server's cache: one folder per upload
MULTIPART_SLACK = 64_000  # an upload request's bytes beyond its file's: boundaries and headers


@dataclass
class Upload:
    """One stored upload: whose address sent it, which session claimed it (None until one does), its holds."""

    path: Path
    client: str
    holds: list[Hold]
    stored: float
    owner: str | None = None


class Uploads:
    """Every upload the server holds, under one lock; see the module docstring."""

    def __init__(self, admission: Admission, cache: Path, max_files: int = 64, max_bytes: int = 256_000_000,
                 share: float = 0.125, unused_s: float = 300.0, max_file_bytes: int = 8_000_000):
        self.admission, self.unused_s, self.max_file_bytes = admission, unused_s, max_file_bytes
        self.folder = cache / FOLDER
        admission.add(Line(FILES_LINE, max_files, share, "uploaded files kept"))
        admission.add(Line(BYTES_LINE, max_bytes, share, "uploads kept", scale=1e6, shown="MB"))
        self.by_path: dict[Path, Upload] = {}
        self.lock = threading.Lock()

    def admit(self, client: str, length: int) -> list[Hold]:
        """Room for one upload request of `length` bytes from `client`, or `Busy`."""
        if not self.max_file_bytes:
            raise Busy("uploads are off on this server")
        files = self.admission.admit(FILES_LINE, client)
        try:
            return [files, self.admission.admit(BYTES_LINE, client, max(1, length))]
        except Busy:
            files.release()
            raise

    def keep(self, client: str, stored: list[str], holds: list[Hold]) -> list[str]:
        """Move what Gradio stored into folders of their own and remember them; the paths to give the visitor."""
        kept = []
        for index, name in enumerate(stored):
            source = Path(name)
            if index:  # more files in one request: each counts
                holds = [self.admission.admit(FILES_LINE, client)]
            folder = self.folder / secrets.token_hex(16)
            folder.mkdir(parents=True)
            target = folder / source.name
            shutil.move(source, target)
            _remove_empty(source.parent)
            with self.lock:
                self.by_path[target] = Upload(target, client, holds, time.monotonic())
            kept.append(str(target))
        return kept

    def claim(self, owner: str, client: str, path: Any) -> bool:
        """The page of session `owner` shows this upload: it is that session's from now on (the first claim of the
        address that sent it; nobody else's)."""
        upload = self._find(path)
        if upload is None or upload.client != client or upload.owner not in (None, owner):
            return False
        upload.owner, upload.stored = owner, time.monotonic()
        return True

    def usable(self, owner: str, client: str, path: Any) -> bool:
        """Whether session `owner` (from `client`) may train on this upload: its own, or its address's unclaimed."""
        upload = self._find(path)
        return upload is not None and upload.owner in (None, owner) and upload.client == client

    def discard(self, path: Any) -> None:
        """Delete an upload now (its text has been read)."""
        upload = self._find(path)
        if upload is not None:
            self._delete(upload)

    def end_session(self, owner: str) -> None:
        with self.lock:
            ended = [upload for upload in self.by_path.values() if upload.owner == owner]
        for upload in ended:
            self._delete(upload)

    def sweep(self) -> None:
        """Delete the uploads nobody claimed for `unused_s` (a claimed one goes with its session)."""
        now = time.monotonic()
        with self.lock:
            unused = [upload for upload in self.by_path.values()
                      if upload.owner is None and now - upload.stored > self.unused_s]
        for upload in unused:
            self._delete(upload)

    def close(self) -> None:
        with self.lock:
            every = list(self.by_path.values())
        for upload in every:
            self._delete(upload)

    def _find(self, path: Any) -> Upload | None:
        if not isinstance(path, str | Path):
            return None
        with self.lock:
            return self.by_path.get(Path(path))

    def _delete(self, upload: Upload) -> None:
        with self.lock:
            if self.by_path.pop(upload.path, None) is None:
                return
        shutil.rmtree(upload.path.parent, ignore_errors=True)
        for hold in upload.holds:
            hold.release()


class UploadDoor:
    """ASGI middleware in front of Gradio's upload route (see the module docstring); every other request passes."""

    def __init__(self, app: Any, uploads: Uploads, gate: Gate):
        self.app, self.uploads, self.gate = app, uploads, gate

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or not scope["path"].endswith(UPLOAD_ROUTE):
            await self.app(scope, receive, send)
            return
        from starlette.requests import Request

        request = Request(scope)
        client = self.gate.client(request)
        length = request.headers.get("content-length", "")
        if not length.isdigit():
            await self.gate.refuse(send, client, 411, "an upload must say its length (Content-Length)")
            return
        if int(length) > self.uploads.max_file_bytes + MULTIPART_SLACK:  # one file with its multipart framing
            await self.gate.refuse(send, client, 413, f"the upload has {int(length) / 1e6:,.1f} MB; a file may have "
                                                      f"at most {self.uploads.max_file_bytes / 1e6:g} MB")
            return
        try:
            holds = self.uploads.admit(client, int(length))
        except Busy as error:
            await self.gate.refuse(send, client, 429, str(error))
            return
        status, headers, body = await _buffered(self.app, scope, receive)
        if status == 200:
            try:
                body = json.dumps(self.uploads.keep(client, json.loads(body), holds)).encode()
            except (Busy, OSError, ValueError) as error:
                for hold in holds:
                    hold.release()
                refused = isinstance(error, Busy)
                await answer(send, 429 if refused else 500,
                              str(error) if refused else "the upload could not be stored: upload it again")
                return
        else:
            for hold in holds:
                hold.release()
        headers = [(key, value) for key, value in headers if key.lower() != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


async def _buffered(app: Any, scope: dict, receive: Any) -> tuple[int, list, bytes]:
    """The app's whole answer, and only once its background tasks (Gradio's moves into the cache) are done."""
    start: dict = {}
    chunks: list[bytes] = []

    async def keep(message: dict) -> None:
        if message["type"] == "http.response.start":
            start.update(message)
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(scope, receive, keep)
    return start.get("status", 500), list(start.get("headers", [])), b"".join(chunks)


def _remove_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:  # another file in it (the same content, another visitor's upload still being moved)
        pass
