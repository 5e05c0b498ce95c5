"""Token index: exact MaxSim vs the model's maxsim, ScaNN recall on real data, save/load, version checks."""
import dataclasses
import json
import os
import shutil

import numpy as np
import jax
import pytest

from jmlr_jax.errors import InputError
from jmlr_jax.models import ColBERTTokenizer, maxsim
from jmlr_jax.retrieval import load_corpus
from jmlr_jax.retrieval import index as index_lib
from jmlr_jax.retrieval.encode import encode_passages
from jmlr_jax.retrieval.index import IndexConfig, Retriever, SearchConfig, build_index, search_all
from jmlr_jax.retrieval.store import IndexMismatchError, load_index, save_index
from tests.conftest import DATA_DIR, require


@pytest.fixture(scope="module")
def real_subset(minilm):
    """~500 real passages: 12 NGC guidelines + 60 PubMedQA abstracts, and those 60 questions."""
    g = os.path.join(DATA_DIR, "guidelines", "ngc_open.jsonl")
    pq = os.path.join(DATA_DIR, "pubmedqa", "ori_pqal.json")
    require(os.path.isfile(g) and os.path.isfile(pq), "../shared/data guidelines and pubmedqa")
    tmp = os.path.join(os.environ.get("PYTEST_TMP", "/tmp"), f"jmlr_subset_{os.getpid()}")
    os.makedirs(tmp, exist_ok=True)
    with open(g) as f:
        lines = f.readlines()[:12]
    with open(os.path.join(tmp, "g.jsonl"), "w") as f:
        f.writelines(lines)
    with open(pq) as f:
        data = dict(list(json.load(f).items())[:60])
    with open(os.path.join(tmp, "pq.json"), "w") as f:
        json.dump(data, f)
    corpus = load_corpus([("guidelines", os.path.join(tmp, "g.jsonl")), ("pubmedqa", os.path.join(tmp, "pq.json"))])
    cfg, params, tok, _ = minilm
    cfg = cfg.replace(doc_maxlen=160)
    ctok = ColBERTTokenizer(tok, cfg)
    questions = [r["QUESTION"] for r in data.values()]
    gold = [f"pmid-{pmid}" for pmid in data]
    return corpus, cfg, params, ctok, questions, gold


@pytest.fixture(scope="module")
def brute_index(real_subset):
    corpus, cfg, params, ctok, _, _ = real_subset
    return build_index(corpus, cfg, params, ctok, IndexConfig(encode_batch=32), SearchConfig(), progress=False)


def test_stored_tokens_and_exact_search_match_model_maxsim(real_subset, brute_index):
    corpus, cfg, params, ctok, questions, _ = real_subset
    idx = brute_index
    assert idx.offsets[-1] == len(idx.emb) and len(idx.offsets) == len(corpus) + 1
    # the model's padded MaxSim over the first 40 passages equals exact search over stored (fp16) tokens
    from jmlr_jax.models import ColBERT

    texts = [p.with_title for p in corpus.passages[:40]]
    ids, attn, keep = ctok.docs(texts)
    D = ColBERT(cfg).apply({"params": params}, ids, attn, keep, method="encode_doc")
    Q = Retriever(cfg, params, ctok, idx).encode_queries(questions[:3])
    ref = np.asarray(maxsim(Q, np.broadcast_to(D[None], (3, *D.shape)), np.broadcast_to(keep[None], (3, *keep.shape))))
    sub = dataclasses.replace(idx, passages=idx.passages[:40], offsets=idx.offsets[:41])
    top, scores = sub.exact_search(Q, k=40)
    got = np.zeros_like(ref)
    np.put_along_axis(got, top, scores, axis=1)
    np.testing.assert_allclose(got, ref, atol=2e-2)  # fp16 storage of unit vectors, 32 query tokens
    assert np.array_equal(np.argsort(-got, axis=1)[:, :5], np.argsort(-ref, axis=1)[:, :5])


class _NeighbourCount:
    """Wraps a ScaNN searcher; records how many neighbours per query vector it returned."""

    def __init__(self, inner):
        self.inner, self.k = inner, None

    def search_batched_parallel(self, q, **kw):
        out = self.inner.search_batched_parallel(q, **kw)
        self.k = np.asarray(out[0]).shape[1]
        return out


@pytest.mark.parametrize("tree", [False, True])
def test_scann_recall_at_30_vs_exact_on_real_subset(real_subset, brute_index, tree):
    corpus, cfg, params, ctok, questions, gold = real_subset
    idx = brute_index
    if tree:  # force the partitioned + AH + reorder path on this small index
        icfg = IndexConfig(brute_force_below=0, num_leaves=200, training_sample=50_000)
        scfg = SearchConfig(leaves_to_search=40, token_k=64, rerank_docs=128)  # and prune by approximate MaxSim
        idx = dataclasses.replace(idx, icfg=icfg, search=scfg,
                                  searcher=index_lib._scann_searcher(idx.emb.astype(np.float32), icfg, scfg))
    r = Retriever(cfg, params, ctok, idx)
    Q = r.encode_queries(questions)
    approx, a_scores = idx.search_embeddings(Q, k=30)
    exact, e_scores = idx.exact_search(Q, k=30)
    recall = np.mean([len(set(a) & set(e)) / 30 for a, e in zip(approx, exact)])
    assert recall >= 0.95, recall
    # one query per thread, and fp32-resident embeddings: the same results as one thread over fp16
    for variant in (dataclasses.replace(idx, search=dataclasses.replace(idx.search, num_threads=1)),
                    dataclasses.replace(idx, emb=idx.emb.astype(np.float32), search=dataclasses.replace(
                        idx.search, num_threads=3, resident_dtype="float32"))):
        for a, b in zip(variant.search_embeddings(Q, k=30), (approx, a_scores)):
            np.testing.assert_array_equal(a, b)
    with pytest.MonkeyPatch.context() as mp:  # exact MaxSim in blocks of 7 passages: the same ranking and scores
        mp.setattr(index_lib, "RERANK_BLOCK", 7)
        blocked_ids, blocked_scores = idx.search_embeddings(Q, k=30)
    np.testing.assert_array_equal(blocked_ids, approx)
    np.testing.assert_allclose(blocked_scores, a_scores, rtol=1e-6)
    if tree:  # token_k above reorder is honoured: ScaNN alone returns at most `reorder` neighbours per token
        spy = _NeighbourCount(idx.searcher)
        dataclasses.replace(idx, searcher=spy, search=dataclasses.replace(idx.search, reorder=16)).search_embeddings(Q, 30)
        assert spy.k == 64
    found = approx[0][approx[0] >= 0]
    np.testing.assert_allclose(a_scores[0][: len(found)], np.sort(a_scores[0][: len(found)])[::-1])
    # the gold abstract of a PubMedQA question is usually retrieved: the figure is real, not trivial
    hit = np.mean([g in {idx.passages[i].doc_id for i in row[:30]} for row, g in zip(approx, gold)])
    assert hit >= 0.8, hit


def test_save_load_round_trip_and_version_checks(tmp_path, real_subset, brute_index):
    corpus, cfg, params, ctok, questions, _ = real_subset
    d = str(tmp_path / "index")
    save_index(brute_index, d)
    loaded = load_index(d, corpus=corpus, params=params)
    assert loaded.version == brute_index.version
    np.testing.assert_array_equal(loaded.emb, brute_index.emb)
    Q = Retriever(cfg, params, ctok, brute_index).encode_queries(questions[:5])
    for a, b in zip(loaded.search_embeddings(Q, 10), brute_index.search_embeddings(Q, 10)):
        np.testing.assert_array_equal(a, b)
    other = load_corpus([("documents", _one_doc(tmp_path))])
    with pytest.raises(IndexMismatchError, match="built from corpus .* rebuild the index"):
        load_index(d, corpus=other)
    moved = jax.tree_util.tree_map(lambda x: x + 1e-3, params)
    with pytest.raises(IndexMismatchError, match="built with encoder .* refresh the index"):
        load_index(d, params=moved)
    # fp32 in memory, fp16 on disk; loading restores the resident dtype the index was built with
    wide = dataclasses.replace(brute_index, emb=brute_index.emb.astype(np.float32),
                               search=dataclasses.replace(brute_index.search, resident_dtype="float32"))
    save_index(wide, str(tmp_path / "wide"))
    assert np.load(str(tmp_path / "wide" / "embeddings.npy")).dtype == np.float16
    reloaded = load_index(str(tmp_path / "wide"))
    assert reloaded.emb.dtype == np.float32 and np.array_equal(reloaded.emb, wide.emb)
    # search-time settings are outside the version and follow the caller's config on load: no rebuild to tune them
    tuned_cfg = SearchConfig(token_k=7, rerank_docs=5, num_threads=1, resident_dtype="float32")
    assert index_lib.index_version("c", "e", cfg, dataclasses.replace(brute_index.icfg, num_leaves=64)) != \
        index_lib.index_version("c", "e", cfg, brute_index.icfg)  # a build setting is part of it
    tuned = load_index(d, search=tuned_cfg)
    assert (tuned.search.token_k, tuned.search.rerank_docs, tuned.version) == (7, 5, brute_index.version)
    assert tuned.emb.dtype == np.float32 and load_index(str(tmp_path / "wide"), search=SearchConfig()).emb.dtype \
        == np.float16
    # search_all batches queries: the same as one call
    r = Retriever(cfg, params, ctok, brute_index)
    (ids, scores), (ids1, scores1) = search_all(r, questions[:5], 10, batch=2), r.search(questions[:5], 10)
    np.testing.assert_array_equal(ids, ids1)
    np.testing.assert_allclose(scores, scores1, rtol=1e-5)  # batch size changes the encoder's float rounding
    os.remove(os.path.join(d, "offsets.npy"))
    with pytest.raises(IndexMismatchError, match="corrupt or incomplete"):
        load_index(d)
    with open(os.path.join(d, "manifest.json"), "w") as f:
        f.write("{")
    with pytest.raises(IndexMismatchError, match="corrupt manifest"):
        load_index(d)
    with pytest.raises(FileNotFoundError, match="no manifest.json"):
        load_index(str(tmp_path))
    # saved over a damaged earlier index: replaced whole; over a directory of other files: refused, nothing deleted
    save_index(brute_index, d)
    assert load_index(d).version == brute_index.version
    mine = tmp_path / "data"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(InputError, match=f"index directory {mine} is not empty and not an earlier index "
                                         "\\(it holds notes.txt\\)"):
        save_index(brute_index, str(mine))
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]


def test_another_hosts_copy_of_the_same_index_is_never_deleted(tmp_path, brute_index, monkeypatch):
    """Hosts sharing a workdir each build the index and save it to one directory; each host's manifest records its
    own encoding time. The copy that lands first stays: deleting it (as a manifest compared whole once did) broke
    the other host's load in the two-process training test."""
    from jmlr_jax.retrieval import store
    d = str(tmp_path / "index")
    save_index(brute_index, d)
    first = os.stat(os.path.join(d, "embeddings.npy")).st_ino
    other_host = dataclasses.replace(brute_index, meta=dict(brute_index.meta, encode_s=12345.0))
    save_index(other_host, d)  # lands second: kept out, nothing replaced
    assert os.stat(os.path.join(d, "embeddings.npy")).st_ino == first
    assert load_index(d).meta.get("encode_s") == brute_index.meta.get("encode_s")
    os.remove(os.path.join(d, "offsets.npy"))  # damaged since, its manifest intact: a rebuild replaces it
    save_index(other_host, d)
    assert load_index(d).meta["encode_s"] == 12345.0
    save_index(brute_index, d)  # and that copy, whole, now stays
    assert load_index(d).meta["encode_s"] == 12345.0
    # the other host's copy lands between this host's check and its rename: the rename fails, the copy stays
    racing, landed = str(tmp_path / "racing"), str(tmp_path / "other")
    save_index(other_host, landed)
    real_replace = os.replace

    def replace(src, dst):
        if dst == racing and not os.path.exists(dst):
            shutil.copytree(landed, racing)  # the other host's rename, just before this one
        return real_replace(src, dst)

    monkeypatch.setattr(store.os, "replace", replace)
    save_index(brute_index, racing)
    assert load_index(racing).meta["encode_s"] == 12345.0
    assert sorted(os.listdir(tmp_path)) == ["index", "other", "racing"]  # no copy left aside


def test_a_cache_root_that_is_a_file_fails_before_encoding(tmp_path, real_subset, monkeypatch):
    """`launch/answer.py --cache_dir=notes.txt` had encoded the whole corpus (minutes) before failing to save."""
    from jmlr_jax.retrieval import store
    corpus, cfg, params, ctok, _, _ = real_subset
    (tmp_path / "notes.txt").write_text("kept")

    def build(*a, **k):
        raise AssertionError("encoded before the cache directory was checked")

    monkeypatch.setattr(store, "build_index", build)
    with pytest.raises(FileExistsError):
        store.cached_index(corpus, cfg, params, ctok, IndexConfig(), SearchConfig(), str(tmp_path / "notes.txt"))
    assert (tmp_path / "notes.txt").read_text() == "kept"


def _one_doc(tmp_path):
    p = tmp_path / "one.jsonl"
    p.write_text(json.dumps({"id": "x", "title": "", "text": "something else"}) + "\n")
    return str(p)


def test_refresh_reencodes_with_new_params(real_subset, brute_index):
    corpus, cfg, params, ctok, questions, _ = real_subset
    small = dataclasses.replace(brute_index, passages=brute_index.passages[:30],
                                offsets=brute_index.offsets[:31], emb=brute_index.emb[: brute_index.offsets[30]])
    r = Retriever(cfg, params, ctok, small)
    moved = jax.tree_util.tree_map(lambda x: x * 1.1, params)
    r2 = r.refresh(moved, progress=False)
    assert r2.index.meta["corpus_checksum"] == small.meta["corpus_checksum"]
    assert r2.index.version != small.version and r2.index.meta["encoder_checksum"] != small.meta["encoder_checksum"]
    assert not np.array_equal(r2.index.emb[:50], small.emb[:50])
    ids, scores = r2.search(questions[:2], k=5)
    assert ids.shape == (2, 5) and np.all(ids >= 0)


def test_empty_inputs_are_errors(real_subset, brute_index):
    _, cfg, params, ctok, _, _ = real_subset
    with pytest.raises(ValueError, match="no questions"):
        Retriever(cfg, params, ctok, brute_index).search([], 5)
    with pytest.raises(ValueError, match="question 1 of 2 is empty"):  # it would have searched with [MASK]s alone
        Retriever(cfg, params, ctok, brute_index).exact_search(["statins", " \n"], 5)
    with pytest.raises(ValueError, match="no passages"):
        encode_passages(cfg, params, ctok, [])
