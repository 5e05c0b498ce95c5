"""One tokenizer interface over sentencepiece and Hugging Face tokenizer.json."""
import json
import pathlib

import pytest
import sentencepiece as spm

from jmlr_jax.tokenizers import HFTokenizer, SentencePieceTokenizer, check_vocab, load_tokenizer

TEXT = ["The patient presented with fever, cough and shortness of breath.",
        "Metformin is the first-line therapy for type 2 diabetes mellitus.",
        "Hypertension increases the risk of stroke and myocardial infarction."] * 30


@pytest.fixture(scope="module")
def spm_path(tmp_path_factory):
    d = tmp_path_factory.mktemp("spm")
    (d / "corpus.txt").write_text("\n".join(TEXT))
    # Llama-2 style: byte fallback, identity normalisation (lossless round trips; see STACK.md gotcha 8)
    spm.SentencePieceTrainer.Train(
        input=str(d / "corpus.txt"), model_prefix=str(d / "tokenizer"), vocab_size=300, model_type="bpe",
        byte_fallback=True, normalization_rule_name="identity", remove_extra_whitespaces=False,
        bos_id=1, eos_id=2, unk_id=0, pad_id=-1, minloglevel=2)
    return str(d / "tokenizer.model")


def test_sentencepiece_round_trip_and_specials(spm_path):
    tok = load_tokenizer(spm_path)
    assert isinstance(tok, SentencePieceTokenizer)
    assert tok.vocab_size == 300 and tok.bos_id == 1 and tok.eos_id == 2 and tok.pad_id is None
    for text in ["Metformin 500 mg twice daily.", "  odd   spacing\tand Ünïcode 😀"]:
        assert tok.decode(tok.encode(text)) == text
    assert tok.encode_batch(["fever", "cough"]) == [tok.encode("fever"), tok.encode("cough")]
    assert tok.bos_id not in tok.encode("fever")  # encode never adds specials
    assert tok.token_to_id("<s>") == 1 and tok.token_to_id("no-such-piece") is None


def test_directory_prefers_tokenizer_json(tmp_path, spm_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    (tmp_path / "tokenizer.model").write_bytes(pathlib.Path(spm_path).read_bytes())
    assert isinstance(load_tokenizer(str(tmp_path)), SentencePieceTokenizer)
    t = Tokenizer(models.WordLevel({"[UNK]": 0, "<s>": 1, "</s>": 2, "fever": 3}, unk_token="[UNK]"))
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    t.enable_padding(length=16)  # like all-MiniLM's shipped tokenizer.json: must be switched off
    t.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": {"content": "</s>"}}))
    tok = load_tokenizer(str(tmp_path))
    assert isinstance(tok, HFTokenizer)
    assert tok.encode("fever fever") == [3, 3] and tok.bos_id == 1 and tok.eos_id == 2


@pytest.mark.parametrize("post_processor_adds_bos", [True, False])
def test_bos_follows_the_post_processor_when_the_config_does_not_say(tmp_path, post_processor_adds_bos):
    """Llama 3's directories add <|begin_of_text|> in tokenizer.json's post-processor and have no add_bos_token:
    prompts start with BOS exactly when transformers' encoding does."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import AutoTokenizer

    vocab = {"<|begin_of_text|>": 0, "<|end_of_text|>": 1, **{c: i + 2 for i, c in enumerate("abcdefghijklmnop ")}}
    t = Tokenizer(models.WordLevel(vocab, unk_token="<|end_of_text|>"))
    t.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    t.add_special_tokens(["<|begin_of_text|>", "<|end_of_text|>"])
    if post_processor_adds_bos:
        t.post_processor = processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                                         special_tokens=[("<|begin_of_text|>", 0)])
    t.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>", "tokenizer_class": "PreTrainedTokenizerFast"}))
    ours, theirs = load_tokenizer(str(tmp_path)), AutoTokenizer.from_pretrained(str(tmp_path))
    assert ours.add_bos is post_processor_adds_bos
    assert ([ours.bos_id] if ours.add_bos else []) + ours.encode("a bad cab") == theirs("a bad cab")["input_ids"]
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<|begin_of_text|>",
                                                                 "add_bos_token": not post_processor_adds_bos}))
    assert load_tokenizer(str(tmp_path)).add_bos is not post_processor_adds_bos  # the config's word wins


def test_chat_template_is_read_from_the_directory_and_saved_with_the_tokenizer(tmp_path, spm_path):
    from jmlr_jax.tokenizers import save_tokenizer

    (tmp_path / "tokenizer.model").write_bytes(pathlib.Path(spm_path).read_bytes())
    assert load_tokenizer(str(tmp_path)).chat_template is None
    named = [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "{{ messages[0]['content'] }}"}]
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": named}))  # the list form
    tok = load_tokenizer(str(tmp_path))
    assert tok.chat_template == "{{ messages[0]['content'] }}"
    (tmp_path / "chat_template.jinja").write_text("J")  # transformers >= 4.43 writes it beside the config
    assert load_tokenizer(str(tmp_path)).chat_template == "J"
    save_tokenizer(tok, str(tmp_path / "out"))
    back = load_tokenizer(str(tmp_path / "out"))
    assert back.chat_template == tok.chat_template and back.encode("fever") == tok.encode("fever")


def test_bad_tokenizer_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no tokenizer.json or tokenizer.model"):
        load_tokenizer(str(tmp_path))
    (tmp_path / "tokenizer.model").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a valid sentencepiece model"):
        load_tokenizer(str(tmp_path / "tokenizer.model"))
    (tmp_path / "tokenizer.json").write_text("{}")
    with pytest.raises(ValueError, match="not a valid tokenizer.json"):
        load_tokenizer(str(tmp_path / "tokenizer.json"))


def test_vocab_check(spm_path):
    tok = load_tokenizer(spm_path)
    check_vocab(tok, 300)
    check_vocab(tok, 320)  # padded embedding tables are fine
    with pytest.raises(ValueError, match="tokenizer has 300 tokens but the model embeds only 256"):
        check_vocab(tok, 256)
