"""Scores of generated replies against references, and recipe-declared rule checks.

exact_match and token_f1 follow SQuAD (lower-case, no punctuation/articles, whitespace
collapsed); rougeL is the `rouge-score` F-measure of the longest common subsequence.
Rules (`evaluation.rules`) are house-style checks every reply should pass.
"""

from __future__ import annotations

import functools
import re
import string
from collections import Counter
from collections.abc import Sequence
from typing import Any

from finekit.errors import RecipeError

_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize(text: str) -> str:
    """SQuAD normalisation: lower case, no punctuation, no articles, single spaces."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(pred: str, ref: str) -> float:
    return float(normalize(pred) == normalize(ref))


def token_f1(pred: str, ref: str) -> float:
    """Harmonic mean of token precision/recall on normalised words (1.0 if both empty)."""
    p, r = normalize(pred).split(), normalize(ref).split()
    if not p or not r:
        return float(p == r)
    common = sum((Counter(p) & Counter(r)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(r)
    return 2 * precision * recall / (precision + recall)


@functools.cache
def _rouge_scorer() -> Any:
    """One scorer per process (building one logs a line through absl each time)."""
    try:
        from rouge_score import rouge_scorer
    except ImportError as e:  # pragma: no cover - an install problem, not a data one
        raise RecipeError("generation metrics need rouge-score: pip install 'finekit[lm]'") from e
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def rouge_l(pred: str, ref: str) -> float:
    """ROUGE-L F-measure (`rouge-score`, no stemming)."""
    return float(_rouge_scorer().score(ref, pred)["rougeL"].fmeasure)


def check_rules(reply: str, rules: Any) -> dict[str, bool]:
    """Each declared rule -> passed? `rules` is an `evaluation.rules` section (or None):
    starts_with (any of the prefixes, after leading spaces), regex (re.search),
    max_words (whitespace-separated words)."""
    if rules is None:
        return {}
    out: dict[str, bool] = {}
    text = reply.lstrip()
    if rules.starts_with:
        out["starts_with"] = any(text.startswith(p) for p in rules.starts_with)
    if rules.regex is not None:
        out["regex"] = re.search(rules.regex, reply) is not None
    if rules.max_words is not None:
        out["max_words"] = len(reply.split()) <= rules.max_words
    return out


def generation_scores(
    replies: Sequence[str], references: Sequence[str], stopped: Sequence[bool], rules: Any
) -> dict[str, Any]:
    """Mean scores over replies: exact_match, token_f1, rougeL, stopped_by_eos, and with
    rules rule_adherence (all rules passed) plus `rule_<name>` pass rates."""
    n = len(replies)
    if n == 0:
        return {}
    out: dict[str, Any] = {
        "exact_match": sum(map(exact_match, replies, references)) / n,
        "token_f1": sum(map(token_f1, replies, references)) / n,
        "rougeL": sum(map(rouge_l, replies, references)) / n,
        "stopped_by_eos": sum(map(bool, stopped)) / n,
        "generation_samples": n,
    }
    checks = [check_rules(r, rules) for r in replies]
    if checks and checks[0]:
        out["rule_adherence"] = sum(all(c.values()) for c in checks) / n
        for name in checks[0]:
            out[f"rule_{name}"] = sum(c[name] for c in checks) / n
    return out
