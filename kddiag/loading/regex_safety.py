"""Regular expressions in tokenizer files, checked before the tokenizers library compiles them.

A ``tokenizer.json`` carries regular expressions (``{"Regex": "..."}`` in a ``Split`` pre-tokenizer, a
``Replace`` normalizer or decoder) that the tokenizers library runs with Oniguruma, a backtracking engine,
on every text. Oniguruma's retry limit counts one match attempt, and a pre-tokenizer attempts a match at
every position, so a pattern that backtracks exponentially on a short run (``(a+)+[bd]`` on 23 ``a``\\ s:
2²³ steps) stays under the limit and turns a 29 KB file into minutes. :func:`backtracking_hazard` refuses
the structure that makes backtracking exponential: a group repeated more than once (``*``, ``+``,
``{n,}``, ``{n,m}`` with m > 1) whose body itself holds a quantifier or an alternation (star height above
one, or a repeated choice). The published pre-tokenizer patterns (GPT-2's byte level, Llama 3, Qwen2,
GPT-4o/Tekken, CLIP, BLOOM) and normalizers (``" {2,}"``, ``\\s+``) have none.

The scanner follows Oniguruma's Ruby syntax, which the tokenizers library uses: ``\\`` escapes (with
``\\p{..}``, ``\\x{..}``, ``\\k<..>`` taken whole), character classes with nested classes and POSIX
brackets (a ``]`` first in a class is a character), ``(?:``, ``(?i:``, lookarounds, named groups and
comments, lazy (``*?``) and possessive (``*+``) forms. What it cannot follow exactly (extended mode
``(?x)``, subexpression calls ``\\g<..>``, a ``[:`` that is no POSIX bracket, an unclosed class) is refused
rather than guessed; so is Oniguruma's absent operator ``(?~…)``, a repeat in disguise. Backtracking that
grows as a power of the text's length is refused where its usual shape shows: two unbounded repeats in a
row (only optional elements between them) followed by something that must match (``[a-z ]*[a-z ]*[^a-z ]``,
``\\s*\\s*$``), which tries every split of a run between the repeats at every position; a pair that ends
its branch (the published ``\\s*[\\r\\n]+``) succeeds as soon as the second repeat matches. Still
outside: repeats separated by a required element that both can match (``[a-z]*a[a-z]*b``); lines are at
most kddiag's line length.
"""
from __future__ import annotations

import re
from typing import Any, Iterator

__all__ = ["backtracking_hazard", "tokenizer_patterns", "shown_pattern"]

_INTERVAL = re.compile(r"\{(\d*)(?:(,)(\d*))?\}")
_POSIX = re.compile(r"\[:\^?(alnum|alpha|ascii|blank|cntrl|digit|graph|lower|print|punct|space|upper|xdigit|word):\]")
_BRACED_ESCAPES = {"p": "{", "P": "{", "x": "{", "o": "{", "k": "<'"}  # taken whole, braces and all
_CLOSING = {"{": "}", "<": ">", "'": "'"}
_NESTED = "a repeated group that itself repeats or alternates"
_MAX_SHOWN = 60  # characters of a pattern quoted in an error


class _Unchecked(Exception):
    """A construct the scanner does not follow exactly: refused, not guessed."""


def backtracking_hazard(pattern: str) -> str | None:
    """What makes ``pattern`` unsafe, as a predicate ('can backtrack without end (…)', 'holds …, which kddiag
    cannot check for endless backtracking'), or None when it has no repeated group whose body repeats or
    alternates and the scanner followed all of it.

    >>> backtracking_hazard(r"(a+)+[bd]")
    'can backtrack without end (a repeated group that itself repeats or alternates)'
    >>> backtracking_hazard(r"(?i:'s|'t)|\\p{L}+|\\s+(?!\\S)") is None
    True
    """
    try:
        found = _scan(pattern)
    except _Unchecked as reason:
        return f"holds {reason}, which kddiag cannot check for endless backtracking"
    if found is None:
        return None
    how = "for a time that grows as a power of the text's length" if found == _ADJACENT else "without end"
    return f"can backtrack {how} ({found})"


def tokenizer_patterns(content: Any) -> Iterator[tuple[str, str]]:
    """(part, pattern) for every regular expression in a parsed ``tokenizer.json``: each ``{"Regex": str}``
    anywhere in it (``Sequence`` entries included); part is the top-level key it sits under ('pre_tokenizer',
    'normalizer', 'decoder', …)."""
    if not isinstance(content, dict):
        return
    for part, value in content.items():
        stack = [value]
        while stack:
            item = stack.pop()
            if isinstance(item, dict):
                regex = item.get("Regex")
                if isinstance(regex, str):
                    yield str(part), regex
                stack.extend(v for v in item.values() if isinstance(v, (dict, list)))
            elif isinstance(item, list):
                stack.extend(v for v in item if isinstance(v, (dict, list)))


def shown_pattern(pattern: str) -> str:
    """The pattern quoted for an error line, cut to _MAX_SHOWN characters."""
    return repr(pattern if len(pattern) <= _MAX_SHOWN else pattern[:_MAX_SHOWN] + "…")


# --- the scanner ----------------------------------------------------------------------------------------

class _Frame:
    """One open group: whether anything inside it quantifies or alternates, its last atom, and the run of
    unbounded repeats at the end of its current branch (for :data:`_ADJACENT`)."""

    __slots__ = ("busy", "atom", "run", "tail_run", "required", "pending", "lookaround")

    def __init__(self, lookaround: bool = False) -> None:
        self.busy = False  # a quantifier or an alternation somewhere inside (nested groups included)
        self.atom: tuple[bool, bool] | None = None  # (is a group holding busy content, already quantified)
        self.run = 0  # unbounded repeats in a row, only optional elements between them, in the current branch
        self.tail_run = 0  # the longest such run that ends a branch
        self.required = False  # a branch holds an element that must match (the group is not all optional)
        self.pending: "_Frame | bool | None" = None  # the last atom, until its quantifier (if any) is seen
        self.lookaround = lookaround

    def settle(self) -> str | None:
        """The pending atom had no quantifier: it must match. After two unbounded repeats in a row it can fail
        on what they matched, after trying every split of it between them: a hazard."""
        atom, self.pending = self.pending, None
        if atom is None:
            return None
        group = atom if isinstance(atom, _Frame) else None
        if self.run >= 2 and (group is None or group.required):
            return _ADJACENT
        self.required = True
        self.run = group.tail_run + (self.run if not group.required else 0) if group is not None else 0
        return None

    def quantify(self, repeats: bool, unbounded: bool, optional: bool) -> str | None:
        """The pending atom is quantified: an unbounded repeat extends the run, an optional one keeps it (with
        the runs inside an optional group), a bounded required one must match."""
        atom, self.pending = self.pending, None
        group = atom if isinstance(atom, _Frame) else None
        if unbounded:
            self.run += 1
        elif optional:
            self.run += group.tail_run if group is not None else 0
        else:
            self.pending = atom
            return self.settle()
        return None

    def end_branch(self) -> str | None:
        found = self.settle()
        self.tail_run = max(self.tail_run, self.run)
        self.run = 0
        return found


_ADJACENT = "two unbounded repeats in a row, then something that must match"


def _scan(pattern: str) -> str | None:
    frames = [_Frame()]
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        frame = frames[-1]
        found = None
        if c == "\\":
            found = frame.settle()
            i = _escape_end(pattern, i)
            frame.atom, frame.pending = (False, False), True
        elif c == "[":
            found = frame.settle()
            i = _class_end(pattern, i)
            frame.atom, frame.pending = (False, False), True
        elif c == "(":
            found = frame.settle()
            start = i
            i, kind = _group_start(pattern, i)
            if kind == "transparent":  # a comment or an option switch: the next quantifier's target is unchanged
                continue
            frames.append(_Frame(lookaround=pattern.startswith(("(?=", "(?!", "(?<=", "(?<!"), start)))
        elif c == ")":
            i += 1
            if len(frames) > 1:
                inner = frames.pop()
                found = inner.end_branch()
                if inner.lookaround:  # zero-width, but it can fail: it must match
                    inner.required, inner.tail_run = True, 0
                frames[-1].busy |= inner.busy
                found = found or frames[-1].settle()
                frames[-1].atom, frames[-1].pending = (inner.busy, False), inner
            else:
                found = frame.settle()
                frame.atom, frame.pending = (False, False), True  # Oniguruma reads an unmatched ')' as a character
        elif c == "|":
            i += 1
            found = frame.end_branch()
            frame.busy = True
            frame.atom = None
        elif c in "*+?" or (c == "{" and _INTERVAL.match(pattern, i)):
            at = i
            i, repeats = _quantifier(pattern, i)
            if repeats is None:
                found = frame.settle()
                frame.atom, frame.pending = (False, False), True  # '{}', '{,}': characters
            elif frame.atom is not None:  # else nothing to repeat: Oniguruma refuses the pattern or reads a character
                group_busy, quantified = frame.atom
                if repeats and (group_busy or quantified):
                    return _NESTED
                frame.busy = True
                frame.atom = (False, True)
                found = frame.quantify(repeats, *_bounds(pattern, at))
        else:
            found = frame.settle()
            i += 1
            frame.atom, frame.pending = (False, False), True
        if found:
            return found
    return frames[0].end_branch() if len(frames) == 1 else None


def _bounds(pattern: str, i: int) -> tuple[bool, bool]:
    """(unbounded, optional) of the quantifier at ``i``: '*', '+' and '{n,}' repeat without bound; '?', '*' and
    '{0,m}' may match nothing."""
    c = pattern[i]
    if c != "{":
        return c in "*+", c in "*?"
    low, comma, high = _INTERVAL.match(pattern, i).groups()
    return comma is not None and not high, not low or int(low) == 0


def _quantifier(pattern: str, i: int) -> tuple[int, bool | None]:
    """The index after the quantifier at ``i`` (with its lazy or possessive mark), and whether it can repeat
    its atom more than once; None for a brace that quantifies nothing ('{}', '{,}': characters)."""
    n = len(pattern)
    if pattern[i] == "{":
        found = _INTERVAL.match(pattern, i)
        low, comma, high = found.groups()
        if not (low or high):
            return i + 1, None
        i = found.end()
        repeats = comma is not None and (not high or int(high) > 1) or comma is None and int(low) > 1
        return (i + 1 if i < n and pattern[i] == "?" else i), repeats  # lazy
    repeats = pattern[i] != "?"
    i += 1
    return (i + 1 if i < n and pattern[i] in "?+" else i), repeats  # lazy or possessive


def _escape_end(pattern: str, i: int) -> int:
    """The index after the escape at ``i`` (a backslash): one character, or a braced form taken whole."""
    if i + 1 >= len(pattern):
        return i + 1
    letter = pattern[i + 1]
    if letter == "g":
        raise _Unchecked("a subexpression call (\\g)")
    opening = _BRACED_ESCAPES.get(letter)
    if opening and i + 2 < len(pattern) and pattern[i + 2] in opening:
        end = pattern.find(_CLOSING[pattern[i + 2]], i + 3)
        if end < 0:
            raise _Unchecked(f"an unclosed \\{letter}{pattern[i + 2]}")
        return end + 1
    return i + 2


def _class_end(pattern: str, i: int) -> int:
    """The index after the character class opening at ``i``, nested classes and POSIX brackets included
    (Oniguruma's Ruby syntax: a '[' in a class opens a nested class, '[:name:]' is a POSIX bracket, a ']'
    first in a class is a character)."""
    n = len(pattern)
    depth = 0
    while i < n:
        c = pattern[i]
        if c == "[":
            if depth and pattern.startswith("[:", i):
                posix = _POSIX.match(pattern, i)
                if posix is None:  # Oniguruma reads such a '[' as a character or as a class, by rules of its own
                    raise _Unchecked("a '[:' in a character class that is no POSIX bracket")
                i = posix.end()
                continue
            depth += 1
            i += 1
            if i < n and pattern[i] == "^":
                i += 1
            if i < n and pattern[i] == "]":
                i += 1
        elif c == "\\":
            i = _escape_end(pattern, i)
        elif c == "]":
            depth -= 1
            i += 1
            if depth == 0:
                return i
        else:
            i += 1
    raise _Unchecked("an unclosed character class")


def _group_start(pattern: str, i: int) -> tuple[int, str]:
    """(index after the group's opening at ``i``, 'group' or 'transparent'): '(?#…)' comments and '(?i)'
    option switches open no group."""
    n = len(pattern)
    if not pattern.startswith("(?", i):
        return i + 1, "group"
    j = i + 2
    if j >= n:
        raise _Unchecked("an unclosed group")
    c = pattern[j]
    if c == "#":  # a comment, to the next unescaped ')'
        while j < n and pattern[j] != ")":
            j += 2 if pattern[j] == "\\" else 1
        if j >= n:
            raise _Unchecked("an unclosed comment")
        return j + 1, "transparent"
    if c == "~":  # matches any text without its body: a repeat the scanner cannot see
        raise _Unchecked("Oniguruma's absent operator (?~…)")
    if c in ":=!>|":
        return j + 1, "group"
    if c == "<" and j + 1 < n and pattern[j + 1] in "=!":
        return j + 2, "group"
    if c in "<'P":  # a named group: (?<name>…), (?'name'…), (?P<name>…)
        closing = {"<": ">", "'": "'"}.get(pattern[j + 1] if c == "P" and j + 1 < n else c, ">")
        end = pattern.find(closing, j + 1 + (c == "P"))
        if end < 0:
            raise _Unchecked("an unclosed group name")
        return end + 1, "group"
    if c == "(":  # a conditional (?(cond)yes|no): its condition is scanned as a group of its own
        return j, "group"
    options = re.match(r"[a-zA-Z]*(?:-[a-zA-Z]*)?", pattern[j:])
    on = options.group().split("-")[0]
    end = j + options.end()
    if "x" in on:
        raise _Unchecked("extended mode (?x)")
    if end < n and pattern[end] == ")":
        return end + 1, "transparent"
    if end < n and pattern[end] == ":":
        return end + 1, "group"
    raise _Unchecked(f"an unknown group '(?{pattern[j:end + 1]}'")
