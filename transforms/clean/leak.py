"""The clean stage's leak check: pure and deterministic.

Word n-grams of a model's statement that also occur in the lines the code patch ADDS. Above
``leak_threshold`` a rewrite is refused (the normalised text is used) and a synthesized
statement rejects the task. The rewriter never sees the patch, so a leak can only come from a
raw text that already narrates the fix; the check catches a rewrite that kept that narration.
"""

from __future__ import annotations

import re

_WORD = re.compile(r"\w+")


def added_lines(patch: str) -> list[str]:
    """The lines a unified diff adds (without the ``+``); file headers excluded."""
    return [
        line[1:]
        for line in patch.splitlines()
        if line.startswith("+") and not line.startswith("+++ ")
    ]


def word_ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    """Lower-cased word n-grams; punctuation and whitespace do not count, so reflowing or
    re-quoting code does not hide a copy."""
    words = [w.lower() for w in _WORD.findall(text)]
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def leak_overlap(rewrite: str, patch: str, n: int) -> float:
    """Share of n-grams common to the rewrite and the patch's added lines, relative to the
    smaller of the two sets: 1.0 when the rewrite reproduces a small fix whole, or when a long
    fix fills the rewrite. 0.0 when either side has no n-gram."""
    mine = word_ngrams(rewrite, n)
    theirs = word_ngrams("\n".join(added_lines(patch)), n)
    if not mine or not theirs:
        return 0.0
    return len(mine & theirs) / min(len(mine), len(theirs))
