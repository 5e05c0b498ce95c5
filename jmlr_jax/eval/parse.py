"""Generate-then-parse: read the chosen option out of a model's free-text answer.

Policy (first rule that matches wins; letters are only those of the question's options):
  1. an explicit statement: "answer is C", "Answer: (C)", "correct option is C"
  2. a leading letter standing alone: "C", "C.", "(C)", "C)", "C:", "C - metformin"
  3. a leading letter followed by that option's text: "C metformin"
  4. option text: the one option the answer starts with (longest wins), else the one option it mentions
Anything else is unparseable: `parse_choice` returns None and the harness counts it as wrong (and
reports how many there were), never as a random or default guess.
"""
from __future__ import annotations

import re
from typing import Sequence

from jmlr_jax.data.sources import LETTERS


def _norm(s: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9]+", " ", s.lower()).split())


def parse_choice(text: str, options: Sequence[str]) -> int | None:
    """Index of the option the text answers, or None when it cannot be read (see module doc)."""
    letters = LETTERS[: len(options)]
    cls = f"[{letters}]"
    t = text.strip()
    explicit = re.search(rf"\b(?:answer|option|choice)\s*(?:is|:|would be|=)?\s*(?:option\s*)?[(\[]?({cls})\b(?![a-z'])",
                         t, flags=re.IGNORECASE)
    if explicit and explicit.group(1) in letters:  # IGNORECASE must not accept a lowercase "a"
        return letters.index(explicit.group(1))
    alone = re.match(rf"[(\[]?({cls})(?:[).:\]]|\s+-|\s*$|\s*\n)", t)
    if alone:
        return letters.index(alone.group(1))
    lead = re.match(rf"({cls})\s+(.*)", t, flags=re.DOTALL)
    if lead and _norm(lead.group(2)).startswith(_norm(options[letters.index(lead.group(1))])):
        return letters.index(lead.group(1))
    body, opts = _norm(t), [_norm(o) for o in options]
    starts = [i for i, o in enumerate(opts) if o and (body == o or body.startswith(o + " "))]
    if starts:
        longest = max(len(opts[i]) for i in starts)
        best = [i for i in starts if len(opts[i]) == longest]
        if len(best) == 1:
            return best[0]
    mentioned = [i for i, o in enumerate(opts) if o and re.search(rf"\b{re.escape(o)}\b", body)]
    return mentioned[0] if len(mentioned) == 1 else None
