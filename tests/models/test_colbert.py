"""BERT encoder vs transformers' BertModel; MaxSim vs numpy; masks; ColBERT query/doc tokenization."""
import numpy as np
import jax
import jax.numpy as jnp
import pytest
import torch

from jmlr_jax.convert import hf
from jmlr_jax.models import colbert
from jmlr_jax.tokenizers import HFTokenizer
from tests.helpers import saved_residuals


def _tiny_bert():
    from transformers import BertConfig, BertModel

    cfg = BertConfig(vocab_size=120, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                     num_attention_heads=4, max_position_embeddings=64, attn_implementation="eager")
    torch.manual_seed(0)
    model = BertModel(cfg, add_pooling_layer=False).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p)) if p.dim() == 1 else p.mul_(8.0)
    return model


def test_bert_hidden_states_match_transformers():
    model = _tiny_bert()
    cfg = colbert.BertConfig.from_hf_dict(model.config.to_dict())
    params = hf.bert_params_from_hf(cfg, {k: v.numpy() for k, v in model.state_dict().items()})
    rng = np.random.RandomState(0)
    ids = rng.randint(0, 120, (3, 17))
    mask = np.ones_like(ids)
    mask[1, 9:] = 0
    mask[2, 4:] = 0
    with torch.no_grad():
        ref = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).last_hidden_state.numpy()
    out = np.asarray(colbert.BertEncoder(cfg).apply({"params": params}, jnp.asarray(ids), jnp.asarray(mask)))
    valid = mask.astype(bool)
    assert np.abs(ref[valid]).max() > 1.0
    np.testing.assert_allclose(out[valid], ref[valid], atol=1e-5, rtol=0)


def test_bert_gradients_match_transformers_and_store_no_attention_probabilities():
    """The encoder's layers run under remat keeping weight-matmul outputs only: the backward pass recomputes the
    [L, L] attention probabilities and GELU's intermediates (the retriever encodes C documents per question, whose
    [L, L] stacks dominated its memory); gradients still equal transformers'."""
    model = _tiny_bert()
    cfg = colbert.BertConfig.from_hf_dict(model.config.to_dict())
    params = hf.bert_params_from_hf(cfg, {k: v.numpy() for k, v in model.state_dict().items()})
    rng = np.random.RandomState(1)
    B, L = 3, 17
    ids, mask = rng.randint(1, 120, (B, L)), np.ones((B, L), np.int64)  # no [PAD] (0): torch never updates its row
    mask[1, 9:] = 0
    w = rng.randn(B, L, cfg.hidden_size).astype(np.float32) * mask[..., None]

    def loss(p):
        return jnp.sum(colbert.BertEncoder(cfg).apply({"params": p}, jnp.asarray(ids), jnp.asarray(mask)) * w)

    saved = saved_residuals(loss, params)
    assert not [x for x in saved if f",{L},{L}]" in x], saved  # no attention logits / probabilities
    assert len([x for x in saved if x.startswith(f"f32[2,{B},{L},{cfg.intermediate_size}]")]) == 1, saved  # up only
    model.zero_grad()
    torch.sum(model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).last_hidden_state
              * torch.tensor(w)).backward()
    ref = hf.bert_params_from_hf(cfg, {k: p.grad.numpy() for k, p in model.named_parameters()})
    got = jax.grad(loss)(params)
    flat_ref = dict(jax.tree_util.tree_leaves_with_path(ref))
    for path, g in jax.tree_util.tree_leaves_with_path(got):
        r = flat_ref[path]
        np.testing.assert_allclose(g, r, atol=2e-4 * max(1.0, float(np.abs(r).max())), rtol=0,
                                   err_msg=jax.tree_util.keystr(path))


def _numpy_maxsim(Q, D, keep):
    scores = np.zeros(D.shape[:2])
    for b in range(D.shape[0]):
        for k in range(D.shape[1]):
            valid = D[b, k][keep[b, k] > 0]
            scores[b, k] = sum(max(q @ d for d in valid) for q in Q[b]) if len(valid) else 0.0
    return scores


def test_maxsim_matches_numpy_reference():
    rng = np.random.RandomState(0)
    Q = rng.randn(2, 5, 8).astype(np.float32)
    D = rng.randn(2, 3, 7, 8).astype(np.float32)
    keep = (rng.rand(2, 3, 7) > 0.3).astype(np.int32)
    keep[1, 2] = 0  # a document with no valid token
    np.testing.assert_allclose(colbert.maxsim(Q, D, keep), _numpy_maxsim(Q, D, keep), rtol=1e-5, atol=1e-5)


def test_masked_tokens_never_win_the_max():
    """All real similarities negative: a zeroed (masked) token would win a plain max; here it must not."""
    Q = np.asarray([[[1.0, 0.0]]], np.float32)
    D = np.asarray([[[[-0.5, 0.1], [0.0, 0.0], [-0.9, 0.0]]]], np.float32)
    keep = np.asarray([[[1, 0, 1]]])
    assert float(colbert.maxsim(Q, D, keep)[0, 0]) == pytest.approx(-0.5)


@pytest.fixture(scope="module")
def wordpiece(tmp_path_factory):
    """A small real WordPiece tokenizer built from a vocab file, with BERT's special tokens."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    words = ["[PAD]", "[unused0]", "[unused1]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", "?", "(", ")",
             "the", "patient", "has", "fever", "what", "is", "dose", "of", "aspirin", "##s"]
    tok = Tokenizer(models.WordPiece({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    return HFTokenizer(tok)


def test_query_and_doc_tokenization(wordpiece):
    ctok = colbert.ColBERTTokenizer(wordpiece, colbert.ColBERTConfig(query_maxlen=8, doc_maxlen=10))
    ids, attn = ctok.queries(["What is the dose of aspirin?"])
    v = wordpiece.token_to_id
    assert ids[0].tolist() == [v("[CLS]"), v("[unused0]"), v("what"), v("is"), v("the"), v("dose"), v("of"),
                               v("[SEP]")]
    ids, attn = ctok.queries(["fever?"])
    assert ids[0, :5].tolist() == [v("[CLS]"), v("[unused0]"), v("fever"), v("?"), v("[SEP]")]
    assert ids[0, 5:].tolist() == [v("[MASK]")] * 3 and attn[0].tolist() == [1] * 5 + [0] * 3
    ids, attn, keep = ctok.docs(["The patient has fever.", "Aspirins (dose)"], pad_to=12)
    assert ids.shape == (2, 12)
    assert ids[0, :7].tolist() == [v("[CLS]"), v("[unused1]"), v("the"), v("patient"), v("has"), v("fever"), v(".")]
    assert keep[0].tolist() == [1, 1, 1, 1, 1, 1, 0, 1, 0, 0, 0, 0]  # '.' and padding masked, [SEP] kept
    assert keep[1][attn[1] > 0].tolist() == [1, 1, 1, 1, 0, 1, 0, 1]  # aspirin ##s ( dose )
    # truncation keeps [SEP] last and never exceeds doc_maxlen
    ids, attn, _ = ctok.docs(["the patient has fever " * 10])
    assert attn[0].sum() == 10 and ids[0, 9] == v("[SEP]")


def test_colbert_embeddings_are_normalised_and_masked(wordpiece):
    cfg = colbert.ColBERTConfig(bert=colbert.BertConfig(vocab_size=22, hidden_size=32, intermediate_size=64,
                                                        num_layers=1, num_heads=4), dim=16)
    params = colbert.init_params(cfg, jax.random.PRNGKey(0))
    ctok = colbert.ColBERTTokenizer(wordpiece, cfg)
    ids, attn, keep = ctok.docs(["The patient has fever."], pad_to=12)
    D = np.asarray(colbert.ColBERT(cfg).apply({"params": params}, ids, attn, keep, method="encode_doc"))
    norms = np.linalg.norm(D[0], axis=-1)
    np.testing.assert_allclose(norms[keep[0] > 0], 1.0, rtol=1e-5)
    assert np.all(norms[keep[0] == 0] == 0)
    q_ids, q_attn = ctok.queries(["fever?"])
    Q = colbert.ColBERT(cfg).apply({"params": params}, q_ids, q_attn, method="encode_query")
    np.testing.assert_allclose(np.linalg.norm(np.asarray(Q[0]), axis=-1), 1.0, rtol=1e-5)  # [MASK]s kept


def test_missing_special_tokens_is_an_error():
    from tokenizers import Tokenizer, models

    tok = HFTokenizer(Tokenizer(models.WordPiece({"[UNK]": 0, "a": 1}, unk_token="[UNK]")))
    with pytest.raises(ValueError, match="lacks the ColBERT special tokens"):
        colbert.ColBERTTokenizer(tok, colbert.ColBERTConfig())
