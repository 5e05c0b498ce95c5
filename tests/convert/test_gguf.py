"""GGUF import: a tiny model written the way llama.cpp's converter writes it (Q/K rows permuted)."""
import numpy as np
import jax.numpy as jnp
import pytest

gguf = pytest.importorskip("gguf")

from jmlr_jax.convert import WeightsError, load_gguf_llama  # noqa: E402
from jmlr_jax.convert.gguf import unpermute_qk  # noqa: E402
from jmlr_jax.models import Llama  # noqa: E402
from tests.helpers import hf_logits, tiny_hf_llama  # noqa: E402


def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp convert_hf_to_gguf.py LlamaModel.permute."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


TOKENS = ["<|endoftext|>", "<|im_start|>", "Ġ"] + [chr(c) for c in range(33, 127)]


def write_gguf(path, model, int_tensor: bool = False, rope_freqs: np.ndarray | None = None, pre: str = "smollm",
               tokens: list[str] | None = None, merges: list[str] = (), eot: int | None = None,
               eom: int | None = None):
    c = model.config
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(c.num_hidden_layers)
    w.add_context_length(128)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_rope_freq_base(c.rope_parameters["rope_theta"])
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_vocab_size(c.vocab_size)
    w.add_tokenizer_model("gpt2")
    if pre is not None:
        w.add_tokenizer_pre(pre)
    tokens = tokens or TOKENS[: c.vocab_size] + [f"<x{i}>" for i in range(c.vocab_size - len(TOKENS))]
    w.add_token_list(tokens)
    w.add_token_types([3, 3] + [1] * (c.vocab_size - 2))
    w.add_token_merges(list(merges))
    w.add_bos_token_id(1)
    w.add_eos_token_id(0)
    if eot is not None:
        w.add_eot_token_id(eot)
    if eom is not None:
        w.add_eom_token_id(eom)
    sd = {k: v.numpy().astype(np.float32) for k, v in model.state_dict().items()}
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    w.add_tensor("output_norm.weight", sd["model.norm.weight"])
    if rope_freqs is not None:
        w.add_tensor("rope_freqs.weight", rope_freqs.astype(np.float32))
    if not c.tie_word_embeddings:
        w.add_tensor("output.weight", sd["lm_head.weight"])
    names = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q",
             "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    for i in range(c.num_hidden_layers):
        for hf_name, g_name in names.items():
            t = sd[f"model.layers.{i}.{hf_name}.weight"]
            if g_name == "attn_q":
                t = llama_cpp_permute(t, c.num_attention_heads)
            elif g_name == "attn_k":
                t = llama_cpp_permute(t, c.num_key_value_heads)
            if int_tensor and g_name == "attn_v":
                t = (t * 100).astype(np.int32)
            w.add_tensor(f"blk.{i}.{g_name}.weight", t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_unpermute_inverts_llama_cpp_permute():
    w = np.random.RandomState(0).randn(24, 5)
    np.testing.assert_array_equal(unpermute_qk(llama_cpp_permute(w, 3), 3), w)
    assert not np.array_equal(llama_cpp_permute(w, 3), w)


@pytest.mark.parametrize("tie", [False, True])
def test_gguf_logits_match_transformers(tmp_path, tie):
    model = tiny_hf_llama(tie=tie, vocab=100)
    write_gguf(tmp_path / "m.gguf", model)
    cfg, params, tok = load_gguf_llama(str(tmp_path / "m.gguf"))
    assert cfg.tie_word_embeddings == tie and cfg.num_kv_heads == 2
    tokens = np.random.RandomState(0).randint(0, 100, (2, 9))
    np.testing.assert_allclose(np.asarray(Llama(cfg).apply({"params": params}, jnp.asarray(tokens))),
                               hf_logits(model, tokens), atol=1e-4)
    ids = tok.encode("hi <|im_start|>there")
    assert tok.token_to_id("<|im_start|>") in ids and tok.decode(ids) == "hi <|im_start|>there"
    assert tok.bos_id == 1 and tok.eos_id == 0


def test_generation_ends_at_llama_cpp_end_of_turn_and_message_tokens(tmp_path):
    """A Llama 3.1 Instruct GGUF stores <|eot_id|> and <|eom_id|> apart from EOS; its config.json lists all three as
    eos_token_id, and so does the imported config (the tokenizer's EOS stays EOS)."""
    from jmlr_jax.generate import end_ids

    write_gguf(tmp_path / "plain.gguf", tiny_hf_llama(vocab=100))
    cfg, _, tok = load_gguf_llama(str(tmp_path / "plain.gguf"))
    assert cfg.eos_token_id == 0 and end_ids(cfg, tok) == (0,)
    write_gguf(tmp_path / "chat.gguf", tiny_hf_llama(vocab=100), eot=7, eom=5)
    cfg, _, tok = load_gguf_llama(str(tmp_path / "chat.gguf"))
    assert cfg.eos_token_id == (0, 7, 5) and tok.eos_id == 0 and end_ids(cfg, tok) == (0, 5, 7)
    write_gguf(tmp_path / "same.gguf", tiny_hf_llama(vocab=100), eot=0)  # as converters write SmolLM2: eot = eos
    assert load_gguf_llama(str(tmp_path / "same.gguf"))[0].eos_token_id == 0


def test_unsupported_tensor_type(tmp_path):
    write_gguf(tmp_path / "m.gguf", tiny_hf_llama(vocab=100), int_tensor=True)
    with pytest.raises(WeightsError, match=r"blk.0.attn_v.weight has unsupported GGUF type I32"):
        load_gguf_llama(str(tmp_path / "m.gguf"))


def test_corrupt_and_missing_gguf(tmp_path):
    write_gguf(tmp_path / "m.gguf", tiny_hf_llama(vocab=100))
    blob = (tmp_path / "m.gguf").read_bytes()
    (tmp_path / "cut.gguf").write_bytes(blob[: len(blob) // 3])
    with pytest.raises(WeightsError, match="not a readable GGUF file"):
        load_gguf_llama(str(tmp_path / "cut.gguf"))
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf file at all" * 10)
    with pytest.raises(WeightsError, match="not a readable GGUF file"):
        load_gguf_llama(str(tmp_path / "junk.gguf"))
    with pytest.raises(FileNotFoundError):
        load_gguf_llama(str(tmp_path / "absent.gguf"))


def llama_cpp_rope_factors(rope: dict, head_dim: int) -> np.ndarray:
    """llama.cpp convert_hf_to_gguf.py LlamaModel.generate_extra_tensors: Llama 3's scaling as per-frequency
    divisors (the rope_freqs tensor)."""
    import math

    freqs = 1.0 / (rope["rope_theta"] ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))
    factor, low, high = rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"]
    old = rope["original_max_position_embeddings"]
    out = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < old / high:
            out.append(1.0)
        elif wavelen > old / low:
            out.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.asarray(out, np.float32)


def test_llama3_rope_freqs_become_the_llama3_config(tmp_path):
    """Llama 3.1's settings (theta 5e5, factor 8, low / high 1 / 4, original 8192); head_dim 16 puts frequencies in
    every region. The imported config is transformers' own, and the logits match."""
    rope = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192, "rope_theta": 500000.0}
    model = tiny_hf_llama(vocab=100, rope=rope)
    factors = llama_cpp_rope_factors(rope, 16)
    assert factors.min() == 1.0 and factors.max() == 8.0 and ((factors > 1) & (factors < 8)).any()
    write_gguf(tmp_path / "m.gguf", model, rope_freqs=factors)
    cfg, params, _ = load_gguf_llama(str(tmp_path / "m.gguf"))
    from jmlr_jax.models import LlamaConfig
    want = LlamaConfig.from_hf_dict(model.config.to_dict())
    rope_fields = lambda c: {k: v for k, v in vars(c).items() if k.startswith("rope")}  # noqa: E731
    assert rope_fields(cfg) == rope_fields(want) and cfg.rope_type == "llama3"
    tokens = np.random.RandomState(0).randint(0, 100, (2, 9))
    np.testing.assert_allclose(np.asarray(Llama(cfg).apply({"params": params}, jnp.asarray(tokens))),
                               hf_logits(model, tokens), atol=1e-4)
    # divisors of some other scaling are refused, not run with the wrong positions
    write_gguf(tmp_path / "odd.gguf", model, rope_freqs=llama_cpp_rope_factors(dict(rope, high_freq_factor=2.0), 16))
    with pytest.raises(WeightsError, match="rope_freqs is not Llama 3's RoPE scaling"):
        load_gguf_llama(str(tmp_path / "odd.gguf"))


def test_llama3_pre_tokenizer_matches_transformers_gguf_loader(tmp_path):
    """A GGUF whose tokenizer.ggml.pre is Llama 3's ("llama-bpe") splits digits in runs of three, as transformers'
    own GGUF loader does; merges across such runs make a wrong split visible. Unknown splits are refused."""
    from transformers import AutoTokenizer
    from jmlr_jax.convert.gguf import load_gguf_tokenizer

    model = tiny_hf_llama(vocab=110)
    tokens = TOKENS + ["12", "123", "45", "Ġw", "Ġwo", "or", "ld", "Ġ1", "Ġ12"]
    tokens += [f"<x{i}>" for i in range(110 - len(tokens))]
    merges = ["1 2", "12 3", "4 5", "Ġ w", "Ġw o", "o r", "l d", "Ġ 1", "Ġ1 2"]
    texts = ["hello world 12345 and 1234567", "x12 y 45  z", "It's 99 or 1000!"]
    for pre in ("llama-bpe", "smollm"):
        write_gguf(tmp_path / f"{pre}.gguf", model, pre=pre, tokens=tokens, merges=merges)
        ours = load_gguf_tokenizer(str(tmp_path / f"{pre}.gguf"))
        theirs = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=f"{pre}.gguf")
        if pre == "llama-bpe":
            assert [ours.encode(t) for t in texts] == [theirs.encode(t, add_special_tokens=False) for t in texts]
            assert ours.encode("12345") == [tokens.index("123"), tokens.index("45")]
        else:  # SmolLM's: digits one by one
            assert ours.encode("12345") == [tokens.index(c) for c in "12345"]
    write_gguf(tmp_path / "qwen.gguf", model, pre="qwen2")
    with pytest.raises(WeightsError, match="GGUF pre-tokenizer 'qwen2' is not supported"):
        load_gguf_llama(str(tmp_path / "qwen.gguf"))
