"""Every visitor's session: its folders, zips, uploads and trained models, and when it ends.

A session is a Gradio session id (its page, or a script's calls). What it holds is its alone: its models are
registered privately for it, its zips sit in a download folder of its own inside the web server's cache
(so they are served without a copy), and it all goes when the session ends: its page closes, it goes
`session_ttl_s` without a request or heartbeat, or the server stops.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from lmdemo.generation import Generator
from lmdemo.web.registry import Models
from lmdemo.web.trainer_process import folder_bytes
from lmdemo.web.uploads import Uploads


@dataclass
class SessionModel:
    """A model a session trained and its files. Its one name (`char-tiny-1`: its run folder's) is what the status line,
    every picker, the curves' legend, the zip and the folder inside it call it; it is the session's own (the
    registry serves each session its own models), so no suffix tells sessions apart."""

    name: str
    run: Path  # the run folder: its log and its model
    archive: Path  # the model folder as a zip, in the session's download folder


@dataclass
class Session:
    """One visitor's page (a Gradio session) and the client address it came from."""

    owner: str
    client: str
    folder: Path
    downloads: Path
    models: list[SessionModel] = field(default_factory=list)
    count: int = 0
    last_used: float = field(default_factory=time.monotonic)
    ended: bool = False


class Sessions:
    """The sessions of one server, under the lock its training line shares (`lock`)."""

    def __init__(self, root: Path, cache: Path, models: Models, ttl_s: float, max_models: int,
                 lock: threading.RLock, uploads: Uploads):
        self.root, self.cache, self.models, self.uploads = root, cache, models, uploads
        self.ttl_s, self.max_models, self.lock = ttl_s, max_models, lock
        self.by_owner: dict[str, Session] = {}

    def get(self, owner: str | None) -> Session | None:
        with self.lock:
            return self.by_owner.get(owner) if owner else None

    def open(self, owner: str, client: str) -> Session:
        """`owner`'s session, made on its first request; a request keeps it alive."""
        with self.lock:
            session = self.by_owner.get(owner)
            if session is None:
                session = Session(owner, client, self.root / secrets.token_hex(8),
                                  Path(tempfile.mkdtemp(prefix="lmdemo-", dir=self.cache)))
                self.by_owner[owner] = session
            session.client = client or session.client
            session.last_used = time.monotonic()
            return session

    def touch(self, owner: str | None) -> None:
        """A request or heartbeat from `owner`'s page: its session lives `ttl_s` more."""
        with self.lock:
            session = self.get(owner)
            if session is not None:
                session.last_used = time.monotonic()

    def end(self, owner: str, keep_folder: Callable[[Session], bool]) -> Session | None:
        """End `owner`'s session: its models leave the registry, its uploads and zips are deleted, and its folder
        too unless `keep_folder(session)` (a job's thread still writes there: it deletes the folder itself)."""
        self.uploads.end_session(owner)  # a page that uploaded has a session; its uploads go with it in any case
        with self.lock:
            session = self.by_owner.pop(owner, None)
            if session is None:
                return None
            session.ended = True
            for model in session.models:
                self.models.remove_private(model.name, owner)
            session.models.clear()
            keep = keep_folder(session)
        shutil.rmtree(session.downloads, ignore_errors=True)
        if not keep:
            shutil.rmtree(session.folder, ignore_errors=True)
        return session

    def idle(self) -> list[str]:
        """Sessions that went `ttl_s` without a request or heartbeat."""
        now = time.monotonic()
        with self.lock:
            return [owner for owner, session in self.by_owner.items() if now - session.last_used > self.ttl_s]

    def sweep_cache(self) -> None:
        """Delete what nobody claimed in the web server's cache for `ttl_s` (what Gradio stored for an upload that
        `UploadDoor` refused on the way out), when the cache is this server's own (inside its training folder),
        never another program's files; the uploads themselves are `Uploads`' (swept whoever owns the cache)."""
        if not inside(self.cache, self.root):
            return
        with self.lock:
            kept = {session.downloads.resolve() for session in self.by_owner.values()}
        kept.add(self.uploads.folder.resolve())
        try:
            entries = list(self.cache.iterdir())
        except OSError:  # the server is closing: the folder is gone
            return
        for entry in entries:
            try:
                idle_s = time.time() - entry.lstat().st_mtime
            except OSError:
                continue
            if entry.resolve() not in kept and idle_s > self.ttl_s:
                shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)

    def models_of(self, owner: str) -> list[SessionModel]:
        with self.lock:
            session = self.get(owner)
            return list(session.models) if session else []

    def keep_model(self, session: Session, run: Path, model_folder: Path, generator: Generator) -> SessionModel | None:
        """Zip `model_folder` into the session's downloads and serve `generator` to the session alone; the session's
        oldest model goes when it holds more than `max_models`. None if the session ended meanwhile."""
        name = run.name
        archive = session.downloads / f"{name}.zip"
        zip_folder(model_folder, archive, name)
        model = SessionModel(name, run, archive)
        with self.lock:
            if session.ended:
                return None
            self.models.add_private(model.name, generator, owner=session.owner)
            session.models.append(model)
            while len(session.models) > self.max_models:
                dropped = session.models.pop(0)
                self.models.remove_private(dropped.name, session.owner)
                shutil.rmtree(dropped.run.parent, ignore_errors=True)
                dropped.archive.unlink(missing_ok=True)
        return model

    def downloads_bytes(self) -> int:
        """Bytes of the sessions' zips (outside the training folder when the cache is another program's)."""
        with self.lock:
            folders = [session.downloads for session in self.by_owner.values()]
        return sum(folder_bytes(folder) for folder in folders if not inside(folder, self.root))

    def __contains__(self, owner: str) -> bool:
        return self.get(owner) is not None

    def __iter__(self):
        with self.lock:
            return iter(list(self.by_owner))


def zip_folder(folder: Path, archive: Path, name: str) -> None:
    """The model folder as `name/<file>` entries, written beside and renamed into place."""
    partial = archive.with_suffix(".zip.partial")
    with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED) as zipped:
        for path in sorted(folder.iterdir()):
            if path.is_file():
                zipped.write(path, f"{name}/{path.name}")
    os.replace(partial, archive)


def inside(path: Path, folder: Path) -> bool:
    """Whether `path` lies strictly inside `folder`, links resolved."""
    try:
        return path.resolve().is_relative_to(folder.resolve()) and path.resolve() != folder.resolve()
    except OSError:
        return False
