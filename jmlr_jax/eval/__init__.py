"""Evaluation: multiple-choice medical QA by option log-likelihood or generate-then-parse, with or without retrieval."""
from jmlr_jax.eval.harness import EvalConfig, evaluate, eval_sets, summarize
from jmlr_jax.eval.mcq import generate_answers, option_ids, prompt_ids, score_options
from jmlr_jax.eval.parse import parse_choice

__all__ = ["EvalConfig", "evaluate", "eval_sets", "generate_answers", "option_ids", "parse_choice", "prompt_ids",
           "score_options", "summarize"]
