"""Easy Data Augmentation for text (Wei & Zou 2019, "EDA: Easy Data Augmentation
Techniques for Boosting Performance on Text Classification Tasks").

Four word-level ops: synonym replacement, random insertion (of a synonym of a word in the
sentence), random swap and random deletion; an augmented example gets one of the enabled
ops, as in the paper. Synonyms come from the list shipped beside this file
(`synonyms.txt`, CC0, see SYNONYMS.md): no WordNet download.

Randomness: each draw comes from a numpy Generator seeded by (run seed, epoch, example
index), never from a global RNG, so an example's augmentation is a pure function of where
it is in training: workers, prefetching and `--resume` mid-epoch all see the same text.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from finekit.data.augment import resolve_augment

SYNONYMS_FILE = Path(__file__).with_name("synonyms.txt")
_EDGES = re.compile(r"^(\W*)(.*?)(\W*)$", re.DOTALL)  # punctuation around a word


@functools.lru_cache(maxsize=4)
def load_synonyms(path: str | Path = SYNONYMS_FILE) -> dict[str, tuple[str, ...]]:
    """word -> its synonyms (sorted), from lines of comma-separated synonym groups."""
    groups: dict[str, set[str]] = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        words = [w.strip().lower() for w in line.split(",") if w.strip()]
        for w in words:
            groups.setdefault(w, set()).update(x for x in words if x != w)
    return {w: tuple(sorted(s)) for w, s in groups.items() if s}


def _key(word: str) -> str:
    """The lookup form of a word: no surrounding punctuation, lower case."""
    m = _EDGES.match(word)
    return m.group(2).lower() if m else word.lower()


def _swap_word(word: str, synonym: str) -> str:
    """`synonym` in the place of `word`, keeping its punctuation and capitalisation."""
    m = _EDGES.match(word)
    pre, core, post = m.groups() if m else ("", word, "")
    if core.isupper() and len(core) > 1:
        synonym = synonym.upper()
    elif core[:1].isupper():
        synonym = synonym[:1].upper() + synonym[1:]
    return pre + synonym + post


def _n_changes(alpha: float, n_words: int) -> int:
    """EDA's n = alpha * l, at least one change."""
    return max(1, int(alpha * n_words))


def synonym_replacement(
    words: list[str],
    alpha: float,
    rng: np.random.Generator,
    synonyms: dict[str, tuple[str, ...]] | None = None,
) -> list[str]:
    """Replace up to n distinct words that have synonyms (every occurrence) by one of them."""
    synonyms = load_synonyms() if synonyms is None else synonyms
    keys = sorted({_key(w) for w in words if _key(w) in synonyms})
    if not keys:
        return list(words)
    chosen = [keys[i] for i in rng.permutation(len(keys))[: _n_changes(alpha, len(words))]]
    pick = {k: synonyms[k][rng.integers(len(synonyms[k]))] for k in chosen}
    return [_swap_word(w, pick[_key(w)]) if _key(w) in pick else w for w in words]


def random_insertion(
    words: list[str],
    alpha: float,
    rng: np.random.Generator,
    synonyms: dict[str, tuple[str, ...]] | None = None,
) -> list[str]:
    """n times: a synonym of a random word of the text, inserted at a random position."""
    synonyms = load_synonyms() if synonyms is None else synonyms
    candidates = [_key(w) for w in words if _key(w) in synonyms]
    out = list(words)
    if not candidates:
        return out
    for _ in range(_n_changes(alpha, len(words))):
        key = candidates[rng.integers(len(candidates))]
        out.insert(int(rng.integers(len(out) + 1)), synonyms[key][rng.integers(len(synonyms[key]))])
    return out


def random_swap(words: list[str], alpha: float, rng: np.random.Generator) -> list[str]:
    """n times: swap two words at different positions (the words themselves are kept)."""
    out = list(words)
    if len(out) < 2:
        return out
    for _ in range(_n_changes(alpha, len(words))):
        i, j = rng.choice(len(out), size=2, replace=False)
        out[i], out[j] = out[j], out[i]
    return out


def random_deletion(words: list[str], p: float, rng: np.random.Generator) -> list[str]:
    """Drop each word with probability p; a text never loses all its words."""
    if len(words) <= 1:
        return list(words)
    keep = rng.random(len(words)) >= p
    if not keep.any():
        return [words[int(rng.integers(len(words)))]]
    return [w for w, k in zip(words, keep, strict=True) if k]


@dataclass(frozen=True)
class EdaSettings:
    """The resolved text fields of `data.augment` (0 = op off)."""

    synonym: float = 0.0
    insert: float = 0.0
    swap: float = 0.0
    delete: float = 0.0
    prob: float = 0.0  # share of examples augmented (each draw independent)

    @classmethod
    def from_spec(cls, spec: Any) -> EdaSettings:
        a = resolve_augment(spec, "text")
        return cls(
            synonym=a["eda_synonym"] or 0.0,
            insert=a["eda_insert"] or 0.0,
            swap=a["eda_swap"] or 0.0,
            delete=a["eda_delete"] or 0.0,
            prob=a["text_prob"] if a["text_prob"] is not None else 0.0,
        )

    def ops(self) -> list[str]:
        return [n for n in ("synonym", "insert", "swap", "delete") if getattr(self, n) > 0]

    @property
    def active(self) -> bool:
        return self.prob > 0 and bool(self.ops())


def eda(
    text: str,
    settings: EdaSettings,
    rng: np.random.Generator,
    synonyms: dict[str, tuple[str, ...]] | None = None,
) -> str:
    """With probability `settings.prob`, one enabled EDA op (chosen uniformly) on `text`."""
    ops = settings.ops()
    if not ops or rng.random() >= settings.prob:
        return text
    syn = load_synonyms() if synonyms is None else synonyms
    words = text.split()
    op = ops[int(rng.integers(len(ops)))]
    if op == "synonym":
        words = synonym_replacement(words, settings.synonym, rng, syn)
    elif op == "insert":
        words = random_insertion(words, settings.insert, rng, syn)
    elif op == "swap":
        words = random_swap(words, settings.swap, rng)
    else:
        words = random_deletion(words, settings.delete, rng)
    return " ".join(words)


def example_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of one example in one epoch (independent streams per triple)."""
    return np.random.default_rng([seed & 0xFFFFFFFFFFFFFFFF, epoch, index])
