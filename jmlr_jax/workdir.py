"""Workdirs on local or cloud paths (gs://bucket/run), through etils epath, the path API orbax uses.

Checkpoints (orbax) and a run's small files (config.json, operative_config.gin) are read and written at the
workdir's own path. Files that need a local filesystem (ScaNN index directories, the candidate cache,
metrics.jsonl appended line by line, TensorBoard events) live in `local_dir(workdir)`: the workdir itself when it
is local; for a cloud workdir a local mirror, uploaded after every checkpoint (`upload`) and fetched when a run
resumes on another machine (`download`).

Several hosts of one run may share a local workdir (an NFS home on a GPU cluster): every file is written under a
name of its own (`tmp_name`: host and process) and renamed into place, so two hosts writing the same file never
interleave, and files one host suffices for (metrics, uploads, exports) are written by process 0 alone (`is_lead`).
"""
from __future__ import annotations

import os
import socket
import time
from typing import Callable, Sequence

import jax
import numpy as np
from etils import epath

from jmlr_jax.errors import InputError

CHECKPOINTS = "checkpoints"  # orbax writes these at the workdir (or a pipeline stage's) directly; never mirrored


def is_remote(path: str) -> bool:
    """A cloud path (gs://, s3://, ...): no local filesystem semantics (no append, no mmap)."""
    return "://" in str(path)


def local_dir(workdir: str) -> str:
    """Where a run keeps the files that need a local filesystem."""
    if not is_remote(workdir):
        return workdir
    root = os.environ.get("JMLR_LOCAL_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "jmlr_jax"))
    # the cloud path's own tree (gs://b/run -> <root>/gs/b/run): a directory inside a cloud workdir (a pipeline's
    # stage) is mirrored inside the workdir's mirror
    rel = os.path.normpath(str(workdir).replace("://", "/", 1)).lstrip("/")
    if rel.startswith(".."):
        raise ValueError(f"not a cloud workdir: {workdir!r}")
    return os.path.join(root, rel)


def eval_dir(workdir: str) -> str:
    """Where a run's evaluations (JSON, markdown) and their index caches are written: <workdir>/eval, in the local
    mirror of a cloud workdir (`upload` publishes it)."""
    return os.path.join(local_dir(workdir), "eval")


def is_lead() -> bool:
    """Process 0: the host that writes what one host suffices for (metrics, uploads, exports)."""
    return jax.process_index() == 0


def tmp_name(path: str) -> str:
    """A temporary name next to `path`, this process's own (hosts sharing a filesystem never write the same one)."""
    return f"{str(path).rstrip('/')}.{socket.gethostname()}-{os.getpid()}.tmp"


def write_text(path: str, text: str) -> None:
    """Writes a small file (atomically on local disks: a temporary file renamed over it)."""
    p = epath.Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    if is_remote(path):  # object stores replace whole objects anyway
        p.write_text(text)
        return
    tmp = tmp_name(path)
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def check_replaceable(path: str, what: str, kind: str, entries: Sequence[str],
                      not_ours: Callable[[str], str] = lambda _: "") -> None:
    """A writer that replaces `path` whole (an export, an index) may write there: a new or empty directory, or an
    earlier <kind> (nothing but `entries` in it, and `not_ours(path)` naming nothing); any other directory is an
    InputError before any work (`--out=.` in a checkout would have lost its README; an index directory bound to a
    data directory, its files). `what` names the directory as the user gave it (`--out=<path>`)."""
    if not os.path.exists(path):
        return
    if not os.path.isdir(path):
        raise InputError(f"{what} is a file, not a directory")
    other = sorted(set(os.listdir(path)) - set(entries)) or [n for n in [not_ours(path)] if n]
    if other:
        raise InputError(f"{what} is not empty and not an earlier {kind} (it holds {', '.join(other[:3])}"
                         f"{', ...' if len(other) > 3 else ''}): write it to a new or empty directory")


def save_npy(path: str, array) -> None:
    """np.save, atomically (a reader on another host never sees half a file)."""
    tmp = tmp_name(path)
    with open(tmp, "wb") as f:
        np.save(f, array)
    os.replace(tmp, path)


def check_shared(workdir: str, what: str) -> None:
    """On several processes, a local `workdir` must be one directory every host sees (orbax writes each host's
    shards there and process 0 the metadata; process 0 alone writes the files that say a stage is done): each host
    writes a file of its own there and reads the others'. A host that does not see them all (each VM's own disk)
    is one line on every host, before anything is trained (each host's half-checkpoints had failed at restore).
    `what` names the setting (e.g. "RunConfig.workdir")."""
    if jax.process_count() == 1 or is_remote(workdir):
        return
    from jax.experimental import multihost_utils

    me, hosts = jax.process_index(), jax.process_count()
    token = int.from_bytes(os.urandom(3), "little")  # this launch's, so files left by an earlier run do not count
    marks = os.path.join(workdir, ".hosts")
    try:
        os.makedirs(marks, exist_ok=True)
        write_text(os.path.join(marks, str(me)), str(token))
    except OSError:  # a read-only mount (evaluating a finished run): nothing to check by this host's file
        token = -1  # every host still takes part in both gathers below (none may wait for another in vain)
    tokens = np.asarray(multihost_utils.process_allgather(np.int32(token))).reshape(-1)  # also: all have written

    def seen(host: int) -> bool:
        if tokens[host] < 0:
            return True
        try:
            with open(os.path.join(marks, str(host))) as f:
                return f.read() == str(int(tokens[host]))
        except OSError:
            return False

    for _ in range(10):  # a network filesystem may show another client's new file a moment later
        if all(seen(h) for h in range(hosts)):
            break
        time.sleep(0.5)
    ok = np.asarray(multihost_utils.process_allgather(np.int32(all(seen(h) for h in range(hosts))))).reshape(-1)
    if not ok.all():
        blind = [int(h) for h in np.flatnonzero(ok == 0)]
        raise InputError(f"{what} {workdir!r} is not one directory shared by the {hosts} processes (process(es) "
                         f"{blind} do not see what the others wrote there): give a gs:// path or a directory on a "
                         "filesystem every host mounts")


def read_text(path: str) -> str:
    return epath.Path(path).read_text()


def exists(path: str) -> bool:
    return epath.Path(path).exists()


def _copy_tree(src: epath.Path, dst: epath.Path, skip: str = "") -> int:
    """Copies files under src that dst lacks or holds with another size, except directories named `skip` at any
    depth; returns how many were copied. (Walks with iterdir: epath refuses recursive globs on cloud paths.)"""
    n = 0
    for f in src.iterdir():
        if f.name == skip or f.name.endswith(".tmp"):
            continue
        target = dst / f.name
        if f.is_dir():
            n += _copy_tree(f, target, skip)
            continue
        if target.exists() and target.stat().length == f.stat().length:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        f.copy(target, overwrite=True)
        n += 1
    return n


def upload(workdir: str) -> int:
    """Local mirror -> cloud workdir (new or changed files; from process 0, whose mirror holds the metrics);
    nothing to do for a local workdir."""
    if not is_remote(workdir) or not os.path.isdir(local_dir(workdir)) or not is_lead():
        return 0
    return _copy_tree(epath.Path(local_dir(workdir)), epath.Path(workdir), skip=CHECKPOINTS)


def download(workdir: str) -> int:
    """Cloud workdir -> local mirror (what this machine lacks), before a run resumes here."""
    if not is_remote(workdir) or not epath.Path(workdir).exists():
        return 0
    os.makedirs(local_dir(workdir), exist_ok=True)
    return _copy_tree(epath.Path(workdir), epath.Path(local_dir(workdir)), skip=CHECKPOINTS)
