"""The generate-then-parse policy on tricky model outputs."""
import pytest

from jmlr_jax.eval.parse import parse_choice

DRUGS = ("Metformin", "Insulin", "Glipizide", "Acarbose")
PQA = ("yes", "no", "maybe")


@pytest.mark.parametrize("text, expected", [
    ("C", 2), (" C.", 2), ("(B) Insulin", 1), ("B) insulin", 1), ("D:", 3), ("B - insulin", 1),
    ("D\nExplanation: acarbose slows absorption", 3),
    ("The answer is D.", 3), ("Answer: (A)", 0), ("The correct option is C because", 2),
    ("So the answer would be B", 1),
    ("A. Metformin", 0), ("C glipizide", 2),  # letter followed by its own option text
    ("Insulin is preferred in pregnancy", 1),  # option text at the start
    ("I would start metformin first", 0),  # the one option mentioned
    ("answer is a bit unclear", None),  # a lowercase article is not option A
    ("E", None), ("The answer is E", None),  # not one of this question's letters
    ("Metformin or insulin", 0),  # starts with an option: that one
    ("It depends on the patient", None), ("", None),
])
def test_letters_and_texts(text, expected):
    assert parse_choice(text, DRUGS) == expected


@pytest.mark.parametrize("text, expected", [
    ("Yes, because the trial met its endpoint", 0), ("No.", 1), ("maybe", 2), ("The answer is yes", 0),
    ("B", 1), ("It is not known", None), ("yes or no", 0),
])
def test_pubmedqa_yes_no_maybe(text, expected):
    assert parse_choice(text, PQA) == expected


def test_five_options_accept_e():
    assert parse_choice("E.", DRUGS + ("Sitagliptin",)) == 4
