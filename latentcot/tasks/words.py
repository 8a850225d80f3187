"""Fixed vocabularies for the synthetic language tasks.

Made-up category words keep the problems free of world knowledge (a model cannot shortcut a
"Every X is a Y" chain by knowing that cats are mammals), and a small, regular vocabulary is
something a tiny character- or word-level model can learn. Everything here is an immutable
tuple built once at import.
"""

from __future__ import annotations

_ONSETS = (
    "b",
    "br",
    "d",
    "dr",
    "f",
    "g",
    "gl",
    "j",
    "k",
    "l",
    "m",
    "n",
    "p",
    "r",
    "s",
    "sh",
    "st",
    "t",
    "v",
    "w",
    "y",
    "z",
)
_VOWELS = ("a", "e", "i", "o", "u")
_CODAS = ("mpus", "rpus", "lpus")

#: 330 pronounceable nonsense category words ("bampus", "glorpus", ...); all start with a
#: consonant, so "a" (never "an") is always the right article.
CONCEPTS: tuple[str, ...] = tuple(o + v + c for c in _CODAS for o in _ONSETS for v in _VOWELS)

#: Names of the individual a question is about.
PEOPLE: tuple[str, ...] = (
    "Tom",
    "Max",
    "Sam",
    "Alex",
    "Wren",
    "Polly",
    "Rex",
    "Fae",
    "Stella",
    "Sally",
    "Jack",
    "Sara",
)

#: Properties for the true/false questions.
ADJECTIVES: tuple[str, ...] = (
    "red",
    "blue",
    "small",
    "large",
    "bright",
    "dull",
    "sour",
    "sweet",
    "hot",
    "cold",
    "wooden",
    "metallic",
    "fast",
    "slow",
    "kind",
    "loud",
    "quiet",
    "shy",
    "happy",
    "feisty",
)
