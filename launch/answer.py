"""Answer a medical question with retrieved guideline passages, citing them (jmlr_jax/rag.py says how).

    python launch/answer.py --question "How often should adults be screened for high blood pressure?"
    python launch/answer.py --workdir=workdir/quickstart --question "..."
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from jmlr_jax import cli  # noqa: E402

if __name__ == "__main__":
    cli.answer()
