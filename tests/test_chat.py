"""Chat templates rendered from the model's own Jinja template, against transformers' apply_chat_template."""
import pytest

from jmlr_jax import chat
from jmlr_jax.errors import InputError
from jmlr_jax.tokenizers import HFTokenizer

# Meta-Llama-3-8B-Instruct's template (tokenizer_config.json), BOS written by the template.
LLAMA3 = ("{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' "
          "+ message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 "
          "== 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if "
          "add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
# Mistral-7B-Instruct-v0.1's: no system role (raise_exception), [INST] turns, EOS after each answer.
MISTRAL = ("{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) "
           "%}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
           "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role']"
           " == 'assistant' %}{{ message['content'] + eos_token + ' ' }}{% else %}{{ raise_exception('Only user and "
           "assistant roles are supported!') }}{% endif %}{% endfor %}")
SPECIAL = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<s>",
           "</s>"]


def _tokenizers(template: str, bos: str, eos: str):
    """(ours, transformers') over one byte-level BPE with the special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {chr(c): i for i, c in enumerate(range(32, 127))} | {"\n": 95, "Ċ": 96, "Ġ": 97}
    t = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None))
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.decoder = decoders.ByteLevel()
    t.add_special_tokens(SPECIAL)
    ours = HFTokenizer(t, bos=bos, eos=eos, add_bos=True, chat_template=template)
    theirs = PreTrainedTokenizerFast(tokenizer_object=t, bos_token=bos, eos_token=eos, chat_template=template)
    return ours, theirs


@pytest.mark.parametrize("system", ["You are a careful medical assistant.", ""])
def test_llama3_prompt_and_turn_end_match_transformers(system):
    ours, theirs = _tokenizers(LLAMA3, "<|begin_of_text|>", "<|eot_id|>")
    user = "Which drug is first-line for type 2 diabetes?"
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
    want = theirs.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    got = chat.chat_prompt(ours, system, user)
    assert want == "<|begin_of_text|>" + got  # BOS is the caller's token, never text as well
    assert got.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert chat.response_end(ours, system) == [ours.token_to_id("<|eot_id|>")]


def test_template_without_system_role_gets_it_in_the_user_message():
    ours, theirs = _tokenizers(MISTRAL, "<s>", "</s>")
    got = chat.chat_prompt(ours, "Be brief.", "What causes scurvy?")
    want = theirs.apply_chat_template([{"role": "user", "content": "Be brief.\n\nWhat causes scurvy?"}], tokenize=False)
    assert "<s>" + got == want == "<s>[INST] Be brief.\n\nWhat causes scurvy? [/INST]"
    assert chat.response_end(ours, "Be brief.") == [ours.token_to_id("</s>")]


def test_missing_and_broken_templates_are_one_line_errors():
    ours, _ = _tokenizers("", "<s>", "</s>")
    with pytest.raises(InputError, match="has none; for the seed pipelines use LMDataConfig.template = 'pmc_llama'"):
        chat.chat_prompt(ours, "", "q")
    ours.chat_template = "{% for m in messages %}{{ m['content'] }"
    with pytest.raises(InputError, match="not valid Jinja"):
        chat.chat_prompt(ours, "", "q")
    ours.chat_template = "{{ raise_exception('no thanks') }}"
    with pytest.raises(InputError, match="refused the conversation: no thanks"):
        chat.chat_prompt(ours, "", "q")
    ours.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}{{ 'A:' if add_generation_prompt }}"
    ours.chat_template += "{{ ''.__class__.__mro__ }}"  # the sandbox: no reaching into Python
    with pytest.raises(Exception, match="unsafe|not safely|__class__|access"):
        chat.chat_prompt(ours, "", "q")


def test_smollm2_template_renders_chatml_as_before(smollm2):
    """SmolLM2's own template (from its GGUF) gives the ChatML text the seed pipelines were trained and measured
    with, and its turn ends with <|im_end|> (its EOS)."""
    _, _, tok = smollm2
    system, user = "You are a careful medical assistant.", "What causes gout?\n\nA. x\nB. y"
    assert chat.chat_prompt(tok, system, user) == (f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}"
                                                   "<|im_end|>\n<|im_start|>assistant\n")
    assert chat.response_end(tok, system) == [tok.token_to_id("<|im_end|>")] == [tok.eos_id]
