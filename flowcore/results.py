"""Append-only JSONL results with a metadata sidecar: a killed run resumes and loses nothing.

``RESULTS.jsonl`` gets one JSON object per finished item, flushed as it is
written; ``RESULTS.meta.json`` records the command, model, settings, seed,
date and git commit that produced it. Reopening with the same settings
resumes (items already written are skipped by id); different settings are
refused rather than mixed into one file. The sidecar's ``seconds`` add up
the time of every invocation that wrote records (a killed one up to its last
record), so a resumed file's summary times all of it.
"""
from __future__ import annotations

import fcntl
import json
import os
import shlex
import socket
import subprocess
import time
from dataclasses import asdict
from pathlib import Path


def append_jsonl(path: str | Path, records: list[dict]) -> None:
    """Append records and fsync, so a kill right after loses nothing written."""
    with open(path, "a", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
        f.flush()
        os.fsync(f.fileno())


class Busy(RuntimeError):
    """Another process holds the lock of a directory this one was to write to."""


_LOCKS: dict[Path, object] = {}  # directory -> the open lock file, held until release() or the process ends


def lock(directory: str | Path, name: str) -> None:
    """Hold ``<directory>/<name>.lock`` exclusively for the rest of this process, so that two processes never
    append to one run's files. The kernel drops the lock when the process ends, killed or not, so a stale lock
    file never blocks anyone; it only names the last holder. Raises ``Busy`` naming the holder."""
    directory = Path(directory).resolve()
    if directory in _LOCKS:
        return
    f = open(directory / f"{name}.lock", "a+", encoding="utf-8")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "a process"
        f.close()
        raise Busy(f"{directory} is being written by another `{name}` ({holder}); wait for it to end, or stop it "
                   f"(its work so far is kept) and run the command again") from None
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n")
    f.flush()
    _LOCKS[directory] = f


def release(directory: str | Path) -> None:
    """Drop a lock taken with ``lock`` (a process that ends drops it anyway)."""
    f = _LOCKS.pop(Path(directory).resolve(), None)
    if f is not None:
        f.close()


def write_jsonl_atomic(path: str | Path, records: list[dict]) -> None:
    """Replace a JSONL file in one step (a reader never sees half of it)."""
    path = Path(path)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    os.replace(tmp, path)


def write_json_atomic(path: str | Path, obj) -> None:
    path = Path(path)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=2), encoding="utf-8")
    os.replace(tmp, path)


def save_torch_atomic(path: str | Path, obj) -> None:
    """``torch.save`` to a temporary file, fsync, then replace ``path`` (a kill never leaves half a file)."""
    import torch

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def recorded_settings(config, added_later: dict) -> dict:
    """A config dataclass's fields as results files record them: a field added after files were committed is
    left out while it holds its default (``added_later``: name -> default), so those files still resume and
    compare equal."""
    out = asdict(config)
    for name, default in added_later.items():
        if out[name] == default:
            del out[name]
    return out


def settings_diff(old: dict, new: dict) -> dict:
    """``{name: (old value, new value)}`` for the settings that differ."""
    return {k: (old.get(k), v) for k, v in new.items() if old.get(k) != v}


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def cli_command(name: str, argv: list[str]) -> str:
    """The command as a user types it: ``python -m flowcore NAME ARGS``."""
    return shlex.join(["python", "-m", "flowcore", name, *argv])


def runtime(model=None) -> dict:
    """What the numbers depend on beyond the settings: dtype, threads, library versions."""
    import torch
    import transformers

    info = {"torch": torch.__version__, "transformers": transformers.__version__,
            "threads": torch.get_num_threads(), "cuda": torch.cuda.is_available()}
    if model is not None:
        info["dtype"] = str(getattr(model, "dtype", ""))
        if getattr(model, "engine_name", None):  # a flow engine: which one (and vLLM's version)
            info["engine"] = model.engine_name
            if model.engine_name == "vllm":
                import vllm

                info["vllm"] = vllm.__version__
    return info


def check_runtime(path, started: dict | None, now: dict, keys: tuple[str, ...] = ("dtype",)) -> None:
    """Refuse to continue ``path``, started with the runtime block ``started`` (a key it does not record is not
    checked), with another value of any of ``keys`` (dtype; device for training): its records would mix them."""
    for key in keys:
        was = (started or {}).get(key)
        if was and was != now[key]:
            raise ValueError(f"{path} was started in {was}, this process runs {now[key]}: "
                             f"pass --{key} {was.removeprefix('torch.')}")


def provenance(settings: dict, command: str) -> dict:
    return {
        "command": command,
        "settings": settings,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "git_commit": git_commit(),
    }


def read_jsonl(path: str | Path) -> list[dict]:
    """Records of a results file; a torn last line (killed mid-write) is dropped."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break
            raise ValueError(f"{path}:{i + 1}: corrupt results line")
    return records


class ResultsFile:
    def __init__(self, path: str | Path, settings: dict, command: str, key: str = "problem_id",
                 overwrite: bool = False):
        self.path = Path(path)
        self.meta_path = self.path.with_suffix(".meta.json")
        self.key = key
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if overwrite:
            self.path.unlink(missing_ok=True)
            self.meta_path.unlink(missing_ok=True)
        if self.meta_path.is_file() and self.path.is_file():
            old = json.loads(self.meta_path.read_text())
            if old.get("settings") != settings:
                diff = settings_diff(old.get("settings", {}), settings)
                raise ValueError(f"{self.path} was made with other settings {diff} (old, new); "
                                 "use another output path or --overwrite")
            self.meta = old
        else:
            self.meta = provenance(settings, command)
        self.records = read_jsonl(self.path)
        self._opened = (len(self.records), time.time(), self.meta.get("seconds", 0.0))
        self._rewrite_clean()
        self._write_meta()

    def _rewrite_clean(self) -> None:
        # drop a torn last line so appends start on a fresh line
        if self.path.is_file():
            write_jsonl_atomic(self.path, self.records)

    def _write_meta(self) -> None:
        write_json_atomic(self.meta_path, self.meta)

    def done(self) -> set:
        return {r[self.key] for r in self.records}

    def append(self, record: dict) -> None:
        append_jsonl(self.path, [record])
        self.records.append(record)
        _, t0, before = self._opened
        self.meta["seconds"] = round(before + time.time() - t0, 1)
        self._write_meta()

    def note(self, key: str, value) -> None:
        """Record extra provenance (not part of the settings that resuming compares)."""
        self.meta[key] = value
        self._write_meta()

    def note_runtime(self, model) -> None:
        """Record ``runtime(model)``; refuse to continue a file made in another dtype (its records would mix)."""
        info = runtime(model)
        if self.records:
            check_runtime(self.path, self.meta.get("runtime"), info)
        self.note("runtime", info)

    def finish(self, summary: dict) -> None:
        """Record the summary (with the total ``seconds``); a rerun that wrote nothing leaves a finished file as it was."""
        if len(self.records) == self._opened[0] and "finished" in self.meta:
            return
        self.meta["summary"] = {**summary, "seconds": self.meta.get("seconds", 0.0)}
        self.meta["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self._write_meta()
