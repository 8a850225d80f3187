"""Answer extraction and normalisation: turning a completion into a prediction, and deciding a match.

Two named strategies, tried in order, and the one that matched is recorded so an analysis can
separate "the model answered in the asked format" from "we fished an answer out of free text":

- ``strict``: the format the prompt asked for. The last occurrence of the template's answer
  prefix (e.g. ``Answer:`` or ``####``, case-insensitive) and, on the rest of that line, the
  first value of the answer's kind.
- ``flexible``: a fallback over the whole completion: the last number, the last true/false,
  the last "... is a X" entity (else the last word), the last symbol, or the last non-empty line.

An answer *kind* says what an answer looks like and therefore how to find and compare it:

=========  ============================================  ==========================================
kind       looks like                                    normalised as
=========  ============================================  ==========================================
number     ``1304``, ``-3``, ``1,304``, ``2.50``         canonical decimal (``2.5``, ``1304``)
digits     a digit string read verbatim (``0031``)       the digits exactly (leading zeros count)
boolean    ``True`` / ``False``                          ``true`` / ``false``
entity     ``Tom is a gwompus.`` or ``gwompus``          the category word (``gwompus``)
symbol     one letter of :data:`SYMBOLS`                 the lower-case letter
text       anything else                                 lower case, single spaces, no final period
=========  ============================================  ==========================================

Everything here is a pure function of its arguments; nothing here can raise on arbitrary text.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from latentcot.types import Extraction

KINDS = ("number", "digits", "boolean", "entity", "symbol", "text")
STRICT, FLEXIBLE = "strict", "flexible"
STRATEGIES = (STRICT, FLEXIBLE)

#: Symbols for the symbolic tasks: lower-case letters without a, i and o, which are English
#: words and would make "the answer is a" ambiguous.
SYMBOLS = "bcdefghjklmnpqrstuvwxyz"

_NUMBER = re.compile(r"(?<![\d.])-?\d+(?:,\d{3})*(?:\.\d+)?")
_DIGITS = re.compile(r"\d+")
_BOOLEAN = re.compile(r"\b(true|false)\b", re.IGNORECASE)
_IS_A = re.compile(r"\bis an? ([A-Za-z][A-Za-z0-9_-]*)", re.IGNORECASE)
_WORD = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")
_SYMBOL = re.compile(rf"(?<![A-Za-z0-9_])[{SYMBOLS}](?![A-Za-z0-9_])", re.IGNORECASE)
_PLAIN_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_SENTENCE = re.compile(r"(?:[\w-]+ )?is an? ([\w-]+)")
_ARTICLE = re.compile(r"^(?:a|an|the) ")


def extract_answer(completion: str, prefixes: Sequence[str], kind: str) -> Extraction:
    """The prediction in ``completion``: strict first, then flexible; ``Extraction(None, None)``
    when neither finds anything."""
    _check_kind(kind)
    strict = _strict(completion, prefixes, kind)
    if strict is not None:
        return Extraction(strict, STRICT)
    flexible = _flexible(completion, kind)
    if flexible is not None:
        return Extraction(flexible, FLEXIBLE)
    return Extraction(None, None)


def normalize(answer: str, kind: str) -> str:
    """The canonical form two answers are compared in (see the module table)."""
    _check_kind(kind)
    text = " ".join(answer.split())
    if kind == "number":
        return _normalize_number(text)
    if kind == "digits":
        return text.replace(" ", "")
    text = text.lower().rstrip(".!?").strip()
    if kind == "entity":
        sentence = _SENTENCE.fullmatch(text)
        return sentence.group(1) if sentence else _ARTICLE.sub("", text)
    return text


def matches(gold: str, prediction: str | None, kind: str) -> bool:
    """Exact match after normalisation; a missing prediction never matches."""
    return prediction is not None and normalize(prediction, kind) == normalize(gold, kind)


def infer_kind(answers: Iterable[str]) -> str:
    """The narrowest kind every answer fits (number, boolean, entity), else ``text``.

    Used for files, whose answers come without a declared kind.
    """
    fits = {"number": True, "boolean": True, "entity": True}
    seen = False
    for answer in answers:
        seen = True
        text = " ".join(answer.split())
        fits["number"] &= _PLAIN_NUMBER.fullmatch(_strip_number(text)) is not None
        fits["boolean"] &= text.lower() in ("true", "false")
        fits["entity"] &= _SENTENCE.fullmatch(text.lower().rstrip(".")) is not None
    for kind in ("number", "boolean", "entity"):
        if seen and fits[kind]:
            return kind
    return "text"


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown answer kind {kind!r}; expected one of {', '.join(KINDS)}")


def _strict(completion: str, prefixes: Sequence[str], kind: str) -> str | None:
    """The value after the last answer prefix, on the same line."""
    start = -1
    for prefix in prefixes:
        if not prefix:
            continue
        for found in re.finditer(f"(?={re.escape(prefix)})", completion, re.IGNORECASE):
            start = max(start, found.start() + len(prefix))
    if start < 0:
        return None
    rest = completion[start:].split("\n", 1)[0]
    if kind in ("text", "entity"):
        value = rest.split(".")[0] if kind == "entity" else rest
        return value.strip() or None
    found = _first(_pattern(kind), rest)
    return found


def _flexible(completion: str, kind: str) -> str | None:
    if kind == "text":
        lines = [line.strip() for line in completion.splitlines() if line.strip()]
        return lines[-1] if lines else None
    if kind == "entity":
        last = _last(_IS_A, completion, group=1)
        return last if last is not None else _last(_WORD, completion)
    return _last(_pattern(kind), completion)


def _pattern(kind: str) -> re.Pattern[str]:
    return {"number": _NUMBER, "digits": _DIGITS, "boolean": _BOOLEAN, "symbol": _SYMBOL}[kind]


def _first(pattern: re.Pattern[str], text: str) -> str | None:
    found = pattern.search(text)
    return found.group(0) if found else None


def _last(pattern: re.Pattern[str], text: str, group: int = 0) -> str | None:
    last = None
    for found in pattern.finditer(text):
        last = found
    return last.group(group) if last else None


def _strip_number(text: str) -> str:
    return text.replace(",", "").replace("$", "").replace(" ", "").rstrip(".")


def _normalize_number(text: str) -> str:
    """``"$1,304.00"`` → ``"1304"``; anything that is not a plain decimal stays (lower-cased) text,
    so a huge exponent like ``1e999999`` can never be expanded."""
    plain = _strip_number(text)
    if _PLAIN_NUMBER.fullmatch(plain) is None:
        return text.lower()
    negative = plain.startswith("-")
    whole, _, frac = plain.lstrip("-").partition(".")
    whole = whole.lstrip("0") or "0"
    frac = frac.rstrip("0")
    body = f"{whole}.{frac}" if frac else whole
    return "0" if body == "0" else ("-" if negative else "") + body
