"""The evidence comparison's measures (jmlr_jax.compare.evidence): gold-evidence recall by exact MaxSim search,
target NLL with the top-K fed, greedy answers scored by ROUGE-L / BLEU-1 (also in the model's chat template, for the
arms whose generator is the base), the PubMedQA decision and the MCQ no-harm check. A mixin of Comparison, whose
models, indexes and search these call."""
from __future__ import annotations

import json
import os

import numpy as np

from jmlr_jax.compare.report import text_scores_per_question
from jmlr_jax.data.lm_data import LMDataConfig
from jmlr_jax.data.splits import DataConfig
from jmlr_jax.data.templates import Budgets, PromptTemplate
from jmlr_jax.errors import InputError
from jmlr_jax.eval.harness import EvalConfig, eval_sets, evaluate
from jmlr_jax.eval.mcq import generate_answers, prompt_ids, score_options
from jmlr_jax.eval.stage_eval import greedy_answers
from jmlr_jax.retrieval.corpus import chunk_words


def gold_rank(top: np.ndarray, gold) -> int | None:
    """The 1-based rank of the first gold passage in a ranking (None when it holds none)."""
    hits = np.flatnonzero(np.isin(top, gold))
    return int(hits[0]) + 1 if len(hits) else None


def dev_summary(ranks: list) -> dict:
    """A dev row: recall@1 / @7 and every question's gold rank."""
    return {"dev_recall@1": float(np.mean([r == 1 for r in ranks])),
            "dev_recall@7": float(np.mean([r is not None and r <= 7 for r in ranks])), "dev_ranks": ranks}


class Measures:
    """Per-question measures of one arm's generator and retriever."""

    def recall(self, rparams, records, gold, with_test=False, k: int = 30, docs: str = "base") -> list[dict]:
        """Per question: the top-10 passage ids and the gold evidence's rank (1-based; None beyond k)."""
        ids = self.search(rparams, records, k, with_test, docs)
        passages = self.index(docs, "eval").passages  # main is its prefix
        return [{"top10": [passages[j].id for j in row[:10]], "gold_rank": gold_rank(row, g), "_top": row}
                for row, g in zip(ids, gold)]

    def dev_recall(self, rparams, which: str = "dev", docs: str = "base") -> dict:
        """Recall@1 / @7 on the dev questions (which="dev_all": every dev-focus question) and each gold rank."""
        recs = self.setup.dev if which == "dev" else self.setup.dev_all
        return dev_summary([q["gold_rank"] for q in self.recall(rparams, recs, self.setup.gold[which], docs=docs)])

    def measure(self, name: str, records, llm_params, rparams, generate: int = 0, docs: str = "base") -> list[dict]:
        """Per question: retrieval (gold rank, top ids), target NLL with the top-K fed, generation scores,
        and for PubMedQA the decision read off the likelihood of Yes / No / Maybe; passages encoded as `docs`."""

        c = self.cfg
        llm_cfg, _, tok = self.models()[:3]
        rows = [{"id": r.id} for r in records]
        fed_idx: list[list[int]] = [[] for _ in records]
        if rparams is not None:
            gold = self.setup.gold[name]
            rec = self.recall(rparams, records, gold, with_test=name == "pubmedqa_test", docs=docs)
            fed = (self.search(rparams, records, c.num_docs, docs=docs) if name == "pubmedqa_test"
                   else [q["_top"] for q in rec])
            for row, q, f in zip(rows, rec, fed):
                row.update(gold_rank=q["gold_rank"], top10=q["top10"])
            fed_idx = [list(np.asarray(f)[: c.num_docs][::-1]) for f in fed]  # best last
        passages = self.index().passages
        for row, d in zip(rows, fed_idx):
            row["fed"] = [passages[j].id for j in d]
        prompts = [prompt_ids(tok, self.template, self.budgets, r.as_record(), [passages[j].with_title for j in d])
                   for r, d in zip(records, fed_idx)]
        targets = [self.target_ids(r) for r in records]
        ll = score_options(llm_cfg, llm_params, prompts, [[t] for t in targets], c.eval_batch, tok.pad_id or 0)
        for row, x, t in zip(rows, ll, targets):
            row["nll"] = round(float(-x[0] / len(t)), 5)
        if name == "pubmedqa_test":
            opts = [[tok.encode(f" {w}") for w in ("Yes", "No", "Maybe")]] * len(records)
            ll = score_options(llm_cfg, llm_params, prompts, opts, c.eval_batch, tok.pad_id or 0)
            for row, x, r in zip(rows, ll, records):
                pred = ("yes", "no", "maybe")[int(np.argmax(x))]
                row.update(decision=pred, correct=pred == r.decision)
        if generate:  # cut before a next "Question:" the base generator writes itself (0-4 of an arm's 80)
            outs = generate_answers(llm_cfg, llm_params, tok, prompts[:generate], c.answer_tokens, c.eval_batch,
                                    stop_strings=self.template.stop_strings)
            refs = [tok.decode(t) for t in targets[:generate]]  # the target the NLL scores (cut to answer_tokens)
            for row, o, s in zip(rows, outs, text_scores_per_question(outs, refs)):
                row.update(output=o, **s)
        return rows

    def target_ids(self, r) -> list[int]:
        """The answer tokens NLL is measured on and generation is scored against (cut to answer_tokens)."""
        return self.models()[2].encode(self.template.answer.format(text=r.answer))[: self.cfg.answer_tokens]

    def _chat_fed(self, of: str, records) -> dict[str, list[str]]:
        """Question id -> the passage ids part `of` fed (its JSON's "fed", best last); of = "gold": the oracle,
        the first passage of the question's own answer (the passage holding the start of the target)."""
        c = self.cfg
        if of == "gold":
            first = {p.text: p.id for p in reversed(self.setup.corpus.passages)}  # a text's first passage
            return {r.id: [first[chunk_words(r.evidence, c.chunk_size, c.overlap)[0]]] for r in records}
        path = os.path.join(c.out_dir, f"{of}.json")
        if not os.path.exists(path):
            raise InputError(f"part chat_{of} needs part {of}'s passages ({path}): run part {of} first")
        with open(path) as f:
            fed = {r["id"]: r["fed"] for r in json.load(f)["sets"]["heldout_focus"]}
        if missing := [r.id for r in records if r.id not in fed]:
            raise InputError(f"{path} has no held-out-focus row for {missing[0]} ({len(missing)} missing): "
                             f"it was run on other splits; rerun part {of}")
        return fed

    def chat_part(self, of: str) -> dict:
        """The base generator's greedy answers in its chat template to the first chat_generate held-out-focus
        questions, each with the passages part `of` fed it (none for arm a; of = "gold": the oracle passage) cut
        to doc_tokens as there, scored like the plain-template answers (ROUGE-L, BLEU-1 against the same
        targets)."""
        c = self.cfg
        records = self.setup.sets["heldout_focus"][: c.chat_generate]
        fed = self._chat_fed(of, records)
        llm_cfg, llm_params, tok = self.models()[:3]
        passages = {p.id: p for p in self.setup.corpus.passages}
        cut = lambda text: tok.decode(tok.encode(text)[: c.doc_tokens]).strip()  # noqa: E731
        requests = [(r.question, "\n\n".join(cut(self.template.doc_text(passages[i].with_title)) for i in fed[r.id]))
                    for r in records]
        lm = LMDataConfig(template="chat", seq_len=c.num_docs * c.doc_tokens + c.question_tokens + 2 * c.answer_tokens
                          + 128)  # room for the chat markup and the system prompt: no prompt is cut
        outs = greedy_answers(llm_cfg, llm_params, tok, lm, requests, c.answer_tokens, c.eval_batch)
        scores = text_scores_per_question(outs, [tok.decode(self.target_ids(r)) for r in records])
        arm, _, seed = of.partition("_s")
        return {"arm": f"chat_{arm}", "seed": int(seed or 0), "of": of, "template": "chat", "system": lm.system,
                "sets": {"heldout_focus": [{"id": r.id, "fed": fed[r.id], "output": o, **sc}
                                           for r, o, sc in zip(records, outs, scores)]}}

    def mcq(self, llm_params) -> list[dict]:
        """MMLU-Med and MedQA-US dev (fixed samples), log-likelihood of the options, no retrieval."""

        llm_cfg, _, tok = self.models()[:3]
        sets = eval_sets(DataConfig(data_dir=self.cfg.data_dir), ("mmlu_med", "medqa"),
                         medqa_path="medqa/us_4_options_dev.jsonl", max_per_set=self.cfg.mcq_per_set)
        preds = evaluate(sets, llm_cfg, llm_params, tok, EvalConfig(name="mcq", batch_size=self.cfg.eval_batch),
                         PromptTemplate(), Budgets(), progress=self.progress)
        return [{"set": p["set"], "id": p["id"], "pred": p["pred_letter"], "correct": bool(p["correct"])}
                for p in preds]
