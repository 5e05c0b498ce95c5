"""A model's own chat template (Jinja: tokenizer_config.json's `chat_template`, a `chat_template.jinja` file, or
the GGUF's `tokenizer.chat_template`), rendered as transformers' `apply_chat_template` renders it: a sandboxed,
immutable Jinja environment with trim_blocks / lstrip_blocks, `raise_exception`, and a `tojson` that keeps
non-ASCII text. Templates are code from a model's files, hence the sandbox (jinja2 >= 3.1.6, as transformers
requires). `strftime_now` is left undefined so that templates that print today's date (Llama 3.2) fall back to
their fixed one: the same records give the same tokens on every day.

SFT, DPO and generation prompts use `chat_prompt`; the tokens that end an assistant turn (`<|im_end|>`,
`<|eot_id|>`, `</s>`) come from the template itself (`response_end`), by rendering a turn around a marker.
"""
from __future__ import annotations

import functools
import json

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

from jmlr_jax.errors import InputError
from jmlr_jax.tokenizers import Tokenizer

_MARK = "\x00jmlr-response\x00"


class _Generation(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}` (assistant-mask templates): renders its body."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller):
        return caller()


def _raise(message: str):
    raise jinja2.exceptions.TemplateError(message)


@functools.lru_cache(maxsize=8)
def _compiled(template: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[_Generation, jinja2.ext.loopcontrols])
    env.filters["tojson"] = lambda x, ensure_ascii=False, indent=None, separators=None, sort_keys=False: json.dumps(
        x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)
    env.globals["raise_exception"] = _raise
    try:
        return env.from_string(template)
    except jinja2.exceptions.TemplateSyntaxError as e:
        raise InputError(f"the tokenizer's chat template is not valid Jinja (line {e.lineno}: {e.message})") from None


def _template(tok: Tokenizer) -> str:
    template = getattr(tok, "chat_template", None)
    if not template:
        raise InputError("a chat prompt needs the model's chat template (tokenizer_config.json's chat_template, "
                         "chat_template.jinja, or the GGUF's tokenizer.chat_template) and this tokenizer has none; "
                         "for the seed pipelines use LMDataConfig.template = 'pmc_llama'")
    return template


def render(tok: Tokenizer, messages: list[dict], add_generation_prompt: bool) -> str:
    """The conversation as text. A leading BOS token string is dropped when the tokenizer adds BOS itself (callers
    put BOS in as a token: written in the text it would come twice)."""
    special = lambda i: tok.id_to_token(i) if i is not None else ""  # noqa: E731
    bos = special(tok.bos_id)
    text = _compiled(_template(tok)).render(messages=messages, add_generation_prompt=add_generation_prompt,
                                            bos_token=bos, eos_token=special(tok.eos_id))
    return text[len(bos):] if tok.add_bos and bos and text.startswith(bos) else text


def _messages(system: str, user: str, with_system: bool) -> list[dict]:
    if not system:
        return [{"role": "user", "content": user}]
    if with_system:
        return [{"role": "system", "content": system}, {"role": "user", "content": user}]
    return [{"role": "user", "content": f"{system}\n\n{user}"}]


def _render_turn(tok: Tokenizer, system: str, user: str, response: str | None) -> str:
    """The prompt (response None) or the whole turn; templates that refuse a system role (raise_exception, e.g.
    Mistral's and Gemma's) get the system text at the head of the user message instead."""
    extra = [] if response is None else [{"role": "assistant", "content": response}]
    try:
        try:
            return render(tok, _messages(system, user, True) + extra, response is None)
        except jinja2.exceptions.TemplateError:
            if not system:
                raise
            return render(tok, _messages(system, user, False) + extra, response is None)
    except jinja2.exceptions.TemplateError as e:
        raise InputError(f"the tokenizer's chat template refused the conversation: {e}") from None


def chat_prompt(tok: Tokenizer, system: str, user: str) -> str:
    """The text before an assistant's answer to one user message (with the template's generation prompt)."""
    return _render_turn(tok, system, user, None)


def response_end(tok: Tokenizer, system: str = "") -> list[int]:
    """Tokens the template writes after an assistant message (surrounding whitespace dropped): [<|im_end|>] for
    ChatML, [<|eot_id|>] for Llama 3, [</s>] for Llama 2's [INST] format."""
    prompt, full = chat_prompt(tok, system, "Hi"), _render_turn(tok, system, "Hi", _MARK)
    if not full.startswith(prompt + _MARK):
        raise InputError("the tokenizer's chat template does not write an assistant message right after its "
                         "generation prompt; for the seed pipelines use LMDataConfig.template = 'pmc_llama'")
    end = full[len(prompt) + len(_MARK):].strip()
    if not end:
        return []
    if tok.eos_id is not None and end == tok.id_to_token(tok.eos_id):  # e.g. "</s>": sentencepiece reads it as text
        return [tok.eos_id]
    return tok.encode(end)
