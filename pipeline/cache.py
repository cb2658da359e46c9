"""The artifact cache: the only place stage keys are made, entries are published, and entries are trusted.

Layout under the cache root (`./outputs` unless told otherwise):

    <stage>/<label>-<hash>/     one published entry: the stage's files plus manifest.json
    <stage>/latest              symlink to the entry the most recent run used
    <stage>/.staging-*          an entry being written; renamed into place only once complete
    <stage>/.resume/<entry>/    checkpoints of an interrupted run, kept until that entry is published
    .lock                       held while a command works on the cache

An entry is trusted only if its manifest.json validates, says it is complete, and every file it lists exists with
the recorded size: a killed run, a half-copied folder or a hand-deleted image all read as "not cached". The manifest
also records each file's blake2b; an entry's bytes are checked against them before another stage reads it, and by
`pipeline status --verify`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

MANIFEST = "manifest.json"
LATEST = "latest"

_held_locks: set[int] = set()  # file descriptors of the cache locks this process holds
_fork_hook: list[bool] = []  # whether _let_go_of_inherited_locks is registered yet


@dataclass(frozen=True)
class Key:
    """Everything that determines a stage's result, and the folder name derived from it."""

    stage: str
    version: int
    params: dict[str, Any]
    upstream: dict[str, str]  # upstream stage -> its entry name (keys chain; no bytes are re-hashed)
    fingerprint: str  # content fingerprint of files read from outside the cache ("" if none)
    label: str

    def material(self) -> dict[str, Any]:
        return {"stage": self.stage, "version": self.version, "params": self.params,
                "upstream": self.upstream, "fingerprint": self.fingerprint}

    @property
    def digest(self) -> str:
        text = json.dumps(self.material(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:10]

    @property
    def entry(self) -> str:
        """The cache entry's folder name: readable label, then the digest that makes it unique."""
        return f"{self.label}-{self.digest}"


@dataclass(frozen=True)
class Manifest:
    """What a published entry is and how it was made: manifest.json, written and read only here.

    The runner fills it in; `Cache.publish` adds the file list and seals it; `Cache.manifest` reads it back, and
    reads any entry it cannot parse as untrusted (not cached)."""

    stage: str
    entry: str  # the folder name, Key.entry
    summary: str  # what the folder holds, from the stage's declaration
    version: int
    params: dict[str, Any]  # every parameter, as the stage saw it
    key_params: dict[str, Any]  # the hashed ones
    upstream: dict[str, str]  # upstream stage -> the entry it read
    fingerprint: str
    versions: dict[str, str]  # python and package versions
    started: str  # now() timestamps: UTC, ISO 8601, so they sort as strings
    finished: str
    seconds: float
    reason: str  # why it ran
    metrics: dict[str, Any]
    files: dict[str, int] = field(default_factory=dict)  # relative path -> size, every file but the manifest
    hashes: dict[str, str] = field(default_factory=dict)  # relative path -> blake2b of its content, as published

    def to_json(self) -> str:
        data = dataclasses.asdict(self)
        data["inputs"] = {"upstream": data.pop("upstream"), "fingerprint": data.pop("fingerprint")}
        return json.dumps({**data, "complete": True}, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> "Manifest | None":
        """The manifest in `text`, or None unless it parses, is complete and has every field."""
        try:
            data = json.loads(text)
            if not isinstance(data, dict) or data.pop("complete", None) is not True:
                return None
            inputs = data.pop("inputs")
            manifest = cls(**data, upstream=inputs["upstream"], fingerprint=inputs["fingerprint"])
        except (ValueError, TypeError, KeyError, AttributeError):
            return None
        return manifest if manifest._well_typed() else None

    def _well_typed(self) -> bool:
        """Every field of the type it is read as: a hand-edited `files: null` must read as damaged, not crash."""
        for item in dataclasses.fields(self):
            value, expected = getattr(self, item.name), _FIELD_TYPES[item.name]
            if not isinstance(value, expected) or isinstance(value, bool) and expected is not dict:
                return False
        return (all(isinstance(k, str) and type(v) is int for k, v in self.files.items())
                and all(isinstance(k, str) and isinstance(v, str) for k, v in self.hashes.items())
                and all(isinstance(k, str) and isinstance(v, str) for k, v in self.upstream.items()))


_FIELD_TYPES: dict[str, type | tuple[type, ...]] = {
    "stage": str, "entry": str, "summary": str, "version": int, "params": dict, "key_params": dict, "upstream": dict,
    "fingerprint": str, "versions": dict, "started": str, "finished": str, "seconds": (int, float), "reason": str,
    "metrics": dict, "files": dict, "hashes": dict}
DAMAGED_MANIFEST = "the cached entry's manifest is damaged"
_HASH_CHUNK = 2**20


def content_hash(path: Path) -> str:
    """blake2b (128-bit digest) of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as file:
        while chunk := file.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def explain_change(old: Manifest | None, new: Key) -> str:
    """Why `new` differs from the entry whose manifest is `old`, in words a user can act on."""
    if old is None:
        return "nothing cached yet"
    reasons = []
    if old.version != new.version:
        reasons.append(f"stage code version {old.version} -> {new.version}")
    old_params = old.key_params
    for name in sorted(set(old_params) | set(new.params)):
        if old_params.get(name) != new.params.get(name):
            reasons.append(f"{new.stage}.{name} {old_params.get(name)!r} -> {new.params.get(name)!r}")
    old_upstream = old.upstream
    for name in sorted(set(old_upstream) | set(new.upstream)):
        if old_upstream.get(name) != new.upstream.get(name):
            reasons.append(f"{name} changed ({old_upstream.get(name)} -> {new.upstream.get(name)})")
    if old.fingerprint != new.fingerprint:
        reasons.append("source files changed")
    return ", ".join(reasons) or "cached entry missing or incomplete"


class Cache:
    def __init__(self, root: Path):
        self.root = Path(root)

    # ----- reading -------------------------------------------------------------------------------------------------
    def entry_dir(self, stage: str, entry: str) -> Path:
        return self.root / stage / entry

    def manifest(self, path: Path) -> Manifest | None:
        """The manifest of a trusted entry, or None for anything incomplete or tampered with."""
        return self.inspect(path)[0]

    def inspect(self, path: Path, verify: bool = False) -> tuple[Manifest | None, str]:
        """(manifest, "") for a trusted entry; (None, why not) for a damaged one; (None, "") where none is.

        Trusted means: the manifest validates, and every file it lists is there with its recorded size, and, with
        ``verify``, its recorded content hash (which reads every byte)."""
        try:
            text = (path / MANIFEST).read_text(encoding="utf-8")
        except FileNotFoundError:
            return None, ("the cached entry has no manifest" if path.is_dir() else "")
        except OSError as error:
            return None, f"the cached entry's manifest is unreadable ({error.strerror or error})"
        data = Manifest.from_json(text)
        if data is None:
            return None, DAMAGED_MANIFEST
        for name, size in data.files.items():
            file = path / name
            if not file.is_file():
                return None, f"the cached entry's {name} is missing"
            if file.stat().st_size != size:
                return None, f"the cached entry's {name} changed size"
        if verify:
            for name, digest in data.hashes.items():
                if content_hash(path / name) != digest:
                    return None, f"the cached entry's {name} changed content"
        return data, ""

    def lookup(self, key: Key) -> Manifest | None:
        return self.manifest(self.entry_dir(key.stage, key.entry))

    def latest(self, stage: str) -> Manifest | None:
        return self.manifest(self.root / stage / LATEST)

    def entries(self, stage: str) -> list[Manifest]:
        """Trusted entries of a stage, newest first (ties, down to the millisecond, broken by folder name)."""
        folder = self.root / stage
        if not folder.is_dir():
            return []
        found = []
        for path in folder.iterdir():
            if path.name.startswith(".") or path.name == LATEST or path.is_symlink():
                continue
            data = self.manifest(path)
            if data is not None:
                found.append(data)
        return sorted(found, key=lambda m: (m.finished, m.entry), reverse=True)

    # ----- writing -------------------------------------------------------------------------------------------------
    def resume_dir(self, key: Key, create: bool = True) -> Path:
        """Where an unfinished run of `key` keeps checkpoints; survives a kill, removed on publish. Ranks other
        than 0 of a torchrun job only read it, so they pass create=False."""
        path = self.root / key.stage / ".resume" / key.entry
        if create:
            path.mkdir(parents=True, exist_ok=True)
        return path

    def staging_dir(self, key: Key) -> Path:
        path = self.root / key.stage / f".staging-{key.entry}-{os.getpid()}"
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        return path

    def publish(self, key: Key, staging: Path, manifest: Manifest) -> Path:
        """Seal `staging` with its manifest and move it into place in one rename."""
        written = [p for p in sorted(staging.rglob("*")) if p.is_file()]  # just written: read from the page cache
        files = {p.relative_to(staging).as_posix(): p.stat().st_size for p in written}
        hashes = {p.relative_to(staging).as_posix(): content_hash(p) for p in written}
        _write_atomic(staging / MANIFEST, dataclasses.replace(manifest, files=files, hashes=hashes).to_json())
        final = self.entry_dir(key.stage, key.entry)
        if final.exists():  # a forced re-run replaces the old entry
            retired = final.with_name(f".retired-{key.entry}-{os.getpid()}")
            os.rename(final, retired)
            os.rename(staging, final)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.rename(staging, final)
        _fsync_dir(final.parent)
        shutil.rmtree(self.root / key.stage / ".resume" / key.entry, ignore_errors=True)
        return final

    def discard(self, staging: Path) -> None:
        shutil.rmtree(staging, ignore_errors=True)

    def point_latest(self, stage: str, entry: str) -> None:
        link = self.root / stage / LATEST
        temporary = link.with_name(f".latest-{os.getpid()}")
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        temporary.symlink_to(entry)
        try:
            os.replace(temporary, link)
        except OSError:  # e.g. a folder of that name in the way: say so, leave nothing behind
            temporary.unlink()
            raise

    def sweep_staging(self) -> None:
        """Remove what killed runs left half-written; called while holding the lock, so nobody is writing them."""
        if not self.root.is_dir():
            return
        for stage_folder in self.root.iterdir():
            if stage_folder.is_dir():
                for leftover in stage_folder.glob(".staging-*"):
                    shutil.rmtree(leftover, ignore_errors=True)
                for leftover in stage_folder.glob(".retired-*"):
                    shutil.rmtree(leftover, ignore_errors=True)

    @contextlib.contextmanager
    def locked(self, on_wait: Callable[[str], None]) -> Iterator[None]:
        """Hold the cache lock; if another command holds it, say so once and wait for it.

        Only the command itself ever holds the lock, so it is free the moment that process ends, however it ends:
        an flock belongs to the open file, which forked children (decode workers) share, so each child lets go of
        its copy as it starts (see _let_go_of_inherited_locks)."""
        self.root.mkdir(parents=True, exist_ok=True)
        if not _fork_hook:
            os.register_at_fork(after_in_child=_let_go_of_inherited_locks)
            _fork_hook.append(True)
        with open(self.root / ".lock", "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                on_wait(f"waiting for {holder} to finish with {self.root} ...")
                fcntl.flock(handle, fcntl.LOCK_EX)
            handle.seek(0)
            handle.truncate()
            handle.write(f"pipeline pid {os.getpid()}")
            handle.flush()
            _held_locks.add(handle.fileno())
            try:
                yield
            finally:
                _held_locks.discard(handle.fileno())
                handle.seek(0)
                handle.truncate()
                fcntl.flock(handle, fcntl.LOCK_UN)


def _let_go_of_inherited_locks() -> None:
    """In a freshly forked child: point every inherited lock descriptor at /dev/null. The child's copy of the lock
    is gone, and the parent's file object, copied into the child, still holds a valid descriptor."""
    if _held_locks:
        null = os.open(os.devnull, os.O_RDONLY)
        for descriptor in _held_locks:
            os.dup2(null, descriptor, inheritable=False)
        os.close(null)
        _held_locks.clear()


def _write_atomic(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def now() -> str:
    """The time, read once, as UTC ISO 8601 to the millisecond: such strings sort in time order."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")
