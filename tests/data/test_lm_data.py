"""Seed-pipeline data: packing never crosses documents, response-only weights, template round trips, bad input."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jmlr_jax.data import lm_data, user_records
from jmlr_jax.data.sources import QARecord
from jmlr_jax.errors import InputError
from jmlr_jax.models import LlamaConfig
from jmlr_jax.models import llama as llama_lib


# SmolLM2-135M-Instruct's chat template, as its GGUF carries it (tokenizer.chat_template).
CHATML = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
          "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
          "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


class ByteTok:
    """Every byte one token (ids 3..258); BOS 1, EOS 2, <|im_end|> 259 (a special token: read as one in text)."""

    vocab_size, bos_id, eos_id, pad_id, add_bos, chat_template = 260, 1, 2, 0, True, CHATML
    SPECIAL = {1: "<s>", 2: "</s>", 259: "<|im_end|>"}

    def encode(self, text):
        parts = text.split("<|im_end|>")
        return [i for n, part in enumerate(parts) for i in ([259] if n else []) + [b + 3 for b in part.encode()]]

    def encode_batch(self, texts):
        return [self.encode(t) for t in texts]

    def decode(self, ids):
        return bytes(i - 3 for i in ids if 3 <= i < 259).decode(errors="replace")

    def token_to_id(self, token):
        return 259 if token == "<|im_end|>" else None

    def id_to_token(self, i):
        return self.SPECIAL.get(i, chr(i - 3) if 3 <= i < 259 else None)


def test_packing_keeps_documents_apart():
    tok = ByteTok()
    pieces = lm_data.cpt_pieces(tok, ["first document text", "second one", "a third, longer document " * 3], 32)
    assert all(len(p) <= 32 for p in pieces) and pieces[0][0] == tok.bos_id and pieces[0][-1] == tok.eos_id
    it = iter(lm_data.cpt_dataset(pieces, 32, batch_size=2, seed=0, num_bins=2))
    batch = next(it)
    seg, w = batch["segment_ids"], batch["weights"]
    assert seg.shape == (2, 32) and (seg.max(axis=1) >= 2).any()  # at least one row packs two documents
    starts = (seg > 0) & np.concatenate([np.ones((2, 1), bool), seg[:, 1:] != seg[:, :-1]], axis=1)
    assert not w[starts].any() and not w[seg == 0].any() and w[(seg > 0) & ~starts].all()
    # perturbation: changing one document's tokens changes no other document's outputs
    cfg = LlamaConfig(vocab_size=260, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4, num_kv_heads=2)
    params = llama_lib.init_params(cfg, jax.random.PRNGKey(0))
    row = int(np.argmax(seg.max(axis=1)))
    apply = jax.jit(lambda t: llama_lib.Llama(cfg).apply(
        {"params": params}, t[None], positions_BxL=jnp.asarray(batch["positions"][row][None]),
        segment_ids_BxL=jnp.asarray(seg[row][None]))[0])
    run = lambda t: np.asarray(apply(jnp.asarray(t)))  # noqa: E731
    base = run(batch["tokens"][row])
    other = batch["tokens"][row].copy()
    other[seg[row] == 1] = 7  # rewrite document 1 entirely
    moved = run(other)
    np.testing.assert_array_equal(moved[seg[row] >= 2], base[seg[row] >= 2])
    assert not np.allclose(moved[seg[row] == 1], base[seg[row] == 1])
    with pytest.raises(InputError, match="no CPT text"):
        lm_data.cpt_pieces(tok, [], 32)


@pytest.mark.parametrize("template", ["pmc_llama", "chat"])
def test_sft_template_round_trip_and_response_only_weights(template):
    tok = ByteTok()
    cfg = lm_data.LMDataConfig(seq_len=512, template=template)
    r = user_records.SFTRecord("x/1", "What causes gout?", "", "Uric acid crystals in the joints.")
    ex = lm_data.sft_example(tok, cfg, r)
    n = int(ex["segment_ids"].sum())
    ids = ex["tokens"][:n]
    prompt = lm_data.render_prompt(cfg, tok, r.instruction, r.input)
    assert tok.decode(ids) == prompt.replace("<|im_end|>", "") + r.response  # round trip (specials are not text)
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id and (ids[-2] == 259) == (template == "chat")
    assert tok.decode(ids[ex["weights"][:n] > 0]) == r.response  # loss on the response (+ end tokens) only
    assert ex["weights"][:n].sum() == len(r.response.encode()) + (2 if template == "chat" else 1)
    if template == "pmc_llama":
        assert "### Instruction:\nWhat causes gout?" in prompt and prompt.endswith("### Response:\n")
    else:  # the model's template, as the pipelines' measured runs wrote it
        assert prompt == ("<|im_start|>system\nYou are a careful medical assistant.<|im_end|>\n<|im_start|>user\n"
                          "What causes gout?<|im_end|>\n<|im_start|>assistant\n")
    with pytest.raises(InputError, match="x/2: empty response"):
        lm_data.sft_example(tok, cfg, user_records.SFTRecord("x/2", "Q?", "", "  "))
    long = lm_data.sft_example(tok, lm_data.LMDataConfig(seq_len=64, template=template),
                               user_records.SFTRecord("x/3", "Q " * 100, "", "short answer"))
    assert long["segment_ids"].sum() == 64 and tok.decode(long["tokens"][long["weights"] > 0]) == "short answer"


def test_preference_pairs_and_bad_pairs():
    recs = [QARecord(f"q{i}", "medmcqa", f"Question {i}?", ("alpha", "beta", "gamma", "delta"), i % 4)
            for i in range(8)]
    pairs = lm_data.preference_pairs(recs)
    assert len(pairs) == 8
    for r, p in zip(recs, pairs):
        assert p.chosen == f"The answer is {r.answer_letter}. {r.answer_text}"
        assert p.rejected.startswith("The answer is ") and p.rejected != p.chosen
    tok = ByteTok()
    ex = lm_data.dpo_example(tok, lm_data.LMDataConfig(seq_len=256), pairs[0])
    assert set(ex) == {f"{s}_{k}" for s in ("chosen", "rejected") for k in ("tokens", "segment_ids", "positions", "weights")}
    same = user_records.PreferencePair("p", "I", "", "The answer is A. x", "The answer is A. x")
    with pytest.raises(InputError, match="p: chosen and rejected responses are the same"):
        lm_data.dpo_example(tok, lm_data.LMDataConfig(seq_len=256), same)


def test_medquad_split_by_focus_and_bad_records(tmp_path):
    path = tmp_path / "mq.jsonl"
    rows = [{"id": f"{i}", "focus": f"Disease {i % 10}", "question": f"What is disease {i % 10}?", "answer": f"A{i}"}
            for i in range(200)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    recs = lm_data.medquad_pairs(str(path))
    train, held = lm_data.split_medquad(recs, 0.3)
    assert held and train and not {r.focus for r in train} & {r.focus for r in held}
    path.write_text(json.dumps({"id": "1", "focus": "X", "question": "Q?", "answer": ""}) + "\n")
    with pytest.raises(InputError, match="mq.jsonl:1: missing answer"):
        lm_data.medquad_pairs(str(path))


def test_cpt_hosts_pack_only_their_own_documents():
    texts = [f"document {i}" for i in range(20)]
    shares = [lm_data.host_documents(texts, (host, 2)) for host in range(2)]
    assert sorted(shares[0] + shares[1]) == sorted(texts) and not set(shares[0]) & set(shares[1])
    for host in range(2):
        mine = {int(t.split()[1]) for t in shares[host]}
        pieces = [np.full(5, i + 1, np.int32) for i in sorted(mine)]  # document i's piece is made of token i + 1
        it = iter(lm_data.cpt_dataset(pieces, 16, 4, seed=0, hosts=2))
        for _ in range(3):
            rows = next(it)
            assert rows["tokens"].shape == (2, 16)  # half of the global batch of 4
            toks = set(rows["tokens"][rows["segment_ids"] > 0].tolist())
            assert toks and toks <= {i + 1 for i in mine}
    with pytest.raises(ValueError, match="does not split over 3 hosts"):
        lm_data.cpt_dataset(pieces, 16, 4, seed=0, hosts=3)
    with pytest.raises(InputError, match="2 CPT documents cannot be shared by 3 hosts"):
        lm_data.host_documents(texts[:2], (0, 3))


def test_generated_pairs_keep_only_wrong_answers_and_round_trip(tmp_path):
    recs = [QARecord(f"q{i}", "medmcqa", f"Question {i}?", ("alpha", "beta", "gamma", "delta"), 0,
                     rationale=f"because {i}") for i in range(4)]
    outputs = ["The answer is A. alpha", "The answer is C. gamma, since...", "", "I would say it depends."]
    pairs = lm_data.generated_pairs(recs, outputs)
    assert [p.id for p in pairs] == ["q1", "q3"]  # right (q0) and empty (q2) answers make no pair
    for p, r in zip(pairs, (recs[1], recs[3])):
        assert p.chosen == lm_data.mcq_response(r) == f"The answer is A. alpha\nExplanation: {r.rationale}"
        assert p.rejected == outputs[int(r.id[1:])] and (p.instruction, p.input) == lm_data.mcq_request(r)
    path = str(tmp_path / "pairs.jsonl")
    user_records.save_pairs(path, pairs)
    assert user_records.load_pairs(path) == pairs
    with open(path, "a") as f:
        f.write('{"id": "x", "instruction": "I", "input": "", "chosen": "c"}\n')
    with pytest.raises(InputError, match=r"pairs.jsonl:3: preference pair record lacks a non-empty text rejected"):
        user_records.load_pairs(path)
    (tmp_path / "bad.jsonl").write_text('{"id": \n')
    with pytest.raises(InputError, match=r"bad.jsonl:1: malformed JSON"):
        user_records.load_pairs(str(tmp_path / "bad.jsonl"))
    with pytest.raises(ValueError, match="4 questions but 3 answers"):
        lm_data.generated_pairs(recs, outputs[:3])
