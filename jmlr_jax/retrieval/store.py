"""Index persistence: save / load a TokenIndex, and the cache that finds or builds the index of a corpus.

A saved index is manifest.json (version, build settings, default search settings, checksums), embeddings.npy
(fp16), offsets.npy, passages.jsonl and ScaNN's own files, written to a temporary directory and renamed into
place, so a crash mid-save never leaves a half-written index. No pickle: ScaNN is serialised without doc ids.
Loading checks the corpus and encoder the caller has against the ones the index was built from.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
from typing import Sequence

import numpy as np

from jmlr_jax.errors import InputError
from jmlr_jax.models.colbert import ColBERTConfig, ColBERTTokenizer
from jmlr_jax.retrieval.corpus import Corpus, Passage
from jmlr_jax.retrieval.encode import params_checksum
from jmlr_jax.retrieval.index import IndexConfig, SearchConfig, TokenIndex, build_index, index_version
from jmlr_jax.workdir import check_replaceable, tmp_name

FORMAT_VERSION = 1
ENTRIES = ("manifest.json", "embeddings.npy", "offsets.npy", "passages.jsonl", "scann")  # what an index holds


class IndexMismatchError(InputError):
    """The index on disk was built from a different corpus, encoder or settings."""


def check_index_dir(directory: str) -> None:
    """An index is saved to a new or empty directory or over an earlier index (which it replaces whole); any
    other directory is refused (INDEX_DIR bound to a data directory would have been deleted to make room)."""
    check_replaceable(directory, f"index directory {directory}", "index", ENTRIES)


def save_index(index: TokenIndex, directory: str) -> None:
    """Writes the index to `directory` (written aside, then renamed into place; `check_index_dir`). A directory
    that already holds this index version (another host sharing the workdir wrote it) is kept as it is: never
    deleted while that host may be loading it, though its manifest differs in what describes the build (time)."""
    check_index_dir(directory)
    tmp = tmp_name(directory)
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(os.path.join(tmp, "scann"))
    np.save(os.path.join(tmp, "embeddings.npy"), index.emb.astype(np.float16, copy=False))
    np.save(os.path.join(tmp, "offsets.npy"), index.offsets)
    with open(os.path.join(tmp, "passages.jsonl"), "w", encoding="utf-8") as f:
        for p in index.passages:
            f.write(json.dumps(dataclasses.asdict(p), ensure_ascii=False) + "\n")
    index.searcher.serialize(os.path.join(tmp, "scann"), relative_path=True)
    manifest = json.loads(json.dumps(dict(index.meta, version=index.version, format=FORMAT_VERSION,
                                          settings=dataclasses.asdict(index.icfg),
                                          search=dataclasses.asdict(index.search))))
    with open(os.path.join(tmp, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=2)
    if _same_index(_manifest(directory), manifest) and _complete(directory):
        shutil.rmtree(tmp)
        return
    if os.path.lexists(directory):  # an earlier index of another version, or a damaged one: replaced whole
        shutil.rmtree(directory, ignore_errors=True)
    try:
        os.replace(tmp, directory)
    except OSError:  # another host renamed its copy into place first
        if not _same_index(_manifest(directory), manifest):
            raise
        shutil.rmtree(tmp)


def _complete(directory: str) -> bool:
    """Whether every file save_index writes is there, non-empty (a copy renamed into place is whole; this finds
    one damaged since, which a rebuild must replace)."""
    files = [os.path.join(directory, f) for f in ("embeddings.npy", "offsets.npy", "passages.jsonl")]
    scann_dir = os.path.join(directory, "scann")
    return all(os.path.isfile(f) and os.path.getsize(f) > 0 for f in files) and os.path.isdir(scann_dir) and \
        bool(os.listdir(scann_dir))


def _same_index(found: dict | None, manifest: dict) -> bool:
    """Whether a directory's manifest is of the same index as `manifest`: its version and file format (the
    version hashes corpus, encoder and build settings; the rest, e.g. encoding time, differs between hosts)."""
    return found is not None and all(found.get(k) == manifest[k] for k in ("version", "format"))


def _manifest(directory: str) -> dict | None:
    """A directory's manifest (None: none readable)."""
    try:
        with open(os.path.join(directory, "manifest.json")) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return None


def load_index(directory: str, corpus: Corpus | None = None, params=None,
               search: SearchConfig | None = None) -> TokenIndex:
    """Loads a saved index; with `corpus` / `params` given, checks they are what it was built from. Search
    settings come from `search` when given, else from the manifest (the ones it was built with)."""
    import scann

    manifest_path = os.path.join(directory, "manifest.json")
    if not os.path.isfile(manifest_path):
        raise FileNotFoundError(f"{directory}: no manifest.json (not an index directory, or an interrupted save)")
    try:
        with open(manifest_path) as f:
            meta = json.load(f)
        version, settings = meta.pop("version"), meta.pop("settings")
        saved_search = meta.pop("search", {})
    except (json.JSONDecodeError, KeyError) as e:
        raise IndexMismatchError(f"{manifest_path}: corrupt manifest ({e})") from None
    if meta.pop("format", None) != FORMAT_VERSION:
        raise IndexMismatchError(f"{directory}: index format differs from {FORMAT_VERSION}; rebuild it")
    if corpus is not None and corpus.checksum() != meta["corpus_checksum"]:
        raise IndexMismatchError(f"{directory}: built from corpus {meta['corpus_checksum']}, but the given corpus is "
                                 f"{corpus.checksum()}; rebuild the index (launch/build_index.py)")
    if params is not None and params_checksum(params) != meta["encoder_checksum"]:
        raise IndexMismatchError(f"{directory}: built with encoder {meta['encoder_checksum']}, but the given "
                                 f"retriever params are {params_checksum(params)}; refresh the index")
    search_fields = {f.name for f in dataclasses.fields(SearchConfig)}
    saved_search.update({k: v for k, v in settings.items() if k in search_fields})  # manifests before the split
    try:
        icfg = IndexConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in settings.items()
                              if k not in search_fields})
        search = search or SearchConfig(**saved_search)
    except TypeError as e:
        raise IndexMismatchError(f"{manifest_path}: unknown index settings ({e}); rebuild the index") from None
    try:
        emb = np.load(os.path.join(directory, "embeddings.npy"))
        offsets = np.load(os.path.join(directory, "offsets.npy"))
        with open(os.path.join(directory, "passages.jsonl"), encoding="utf-8") as f:
            passages = [Passage(**json.loads(line)) for line in f]
        searcher = scann.scann_ops_pybind.load_searcher(os.path.join(directory, "scann"))
    except (OSError, ValueError, RuntimeError, TypeError) as e:
        raise IndexMismatchError(f"{directory}: corrupt or incomplete index files ({e})") from None
    if len(passages) != meta["num_passages"] or len(offsets) != len(passages) + 1 or len(emb) != offsets[-1]:
        raise IndexMismatchError(f"{directory}: embeddings, offsets and passages disagree; rebuild the index")
    return TokenIndex(passages, emb.astype(search.resident_dtype, copy=False), offsets, icfg, search, version, meta,
                      searcher)


def cached_index(corpus: Corpus, cfg: ColBERTConfig, params, ctok: ColBERTTokenizer, icfg: IndexConfig,
                 search: SearchConfig, root: str, also: Sequence[str] = (), fallback: str = "",
                 progress: bool = True) -> TokenIndex:
    """The index of `corpus` under these encoder params and settings, from the first of:
    `root/index-<version>`; a directory in `also` that holds exactly that version; `fallback` (a prebuilt index
    that must match corpus and params: a mismatch is an error); else built and saved to `root/index-<version>`."""
    version = index_version(corpus.checksum(), params_checksum(params), cfg, icfg)
    own = os.path.join(root, f"index-{version}")
    for d in (own, *also):
        try:
            with open(os.path.join(d, "manifest.json")) as f:
                if json.load(f).get("version") == version:
                    return load_index(d, corpus=corpus, params=params, search=search)
        except (OSError, json.JSONDecodeError):
            continue
    if fallback:
        return load_index(fallback, corpus=corpus, params=params, search=search)
    os.makedirs(root, exist_ok=True)  # a root that is a file fails here, not after minutes of encoding
    save_index(build_index(corpus, cfg, params, ctok, icfg, search, progress=progress), own)
    return load_index(own, corpus=corpus, params=params, search=search)
