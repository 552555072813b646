"""Sentence segmentation of long chain-of-thought text into character spans.

``segment(text)`` returns ``[(start, end), ...]``: spans that cover ``text`` exactly, in order,
without gaps or overlaps, each non-empty. Whitespace between sentences is **attached to the
preceding sentence** (a sentence's span runs up to the first character of the next sentence);
whitespace at the very start of the text is attached to the first sentence. Hence every span
holds at least one non-whitespace character, unless the whole text is whitespace (one span).

A sentence ends at:
- ``.``, ``!``, ``?`` or ``…`` (a run of them, then optional closing quotes/brackets/``*``/``_``)
  followed by a line break, the end of the text, or spaces and then anything but a lower-case
  letter;
- ``。``, ``！``, ``？`` (CJK full stops end a sentence with or without following whitespace);
- a newline (every line break ends a sentence; blank lines are whitespace of the previous one).

It does not end at:
- decimals and dotted numbers (``3.14``, ``v1.2.3``): no whitespace after the dot;
- enumerations: ``1.``, ``a.``, ``iv.`` at the start of a line followed by text on that line;
- abbreviations: ``e.g.``, ``i.e.``, ``Dr.``, ``Mr.``, ``vs.``, ``cf.``, ``approx.``, ``ca.``,
  ``et al.`` ...; ``etc.`` ends a sentence only before an upper-case letter; ``Fig.``, ``Eq.``,
  ``No.``, ``Jan.`` ... do not end one before a digit or ``(``;
- dotted abbreviations (``U.S.``, ``U.S.A.``, ``Ph.D.``, ``a.m.``: letter groups of one or two
  joined by inner dots) end a sentence only before a common sentence starter (``The``, ``This``,
  ``It``, ``We``, ``In``, ``So``, ``But`` ...; ``_STARTERS``): ``in the U.S. The next year`` is two
  sentences, ``the U.S. Army won`` and ``the U.S. $5$ bill`` are one;
- initials: a capital letter with a dot before another one (``J. R. R. Tolkien``), or after one
  and before a capitalised word that is not a sentence starter;
- end punctuation followed, on the same line, by a lower-case letter (``approx. equal``,
  ``Is it 5? no, wait``); ellipses (``...``, ``…``) followed by anything but a capital;
- anything inside LaTeX math, which is kept whole: ``$...$`` (pandoc's rule: no space after the
  opening or before the closing ``$``, no digit after it, ``\\$`` is a literal dollar),
  ``$$...$$``, ``\\[...\\]``, ``\\(...\\)``, ``\\begin{env}...\\end{env}`` (nesting of the same
  ``env`` is counted).

Code fences (a line starting with ````` ``` `````, up to the closing fence line, or the end of
the text if unclosed, as in Markdown) are split into **line units**: each line of code is one span
(its following blank lines and indentation attached), and sentence rules do not apply inside.

Pitfalls: a lone middle initial ends a sentence before a capital (``John F. Kennedy`` is two
spans), because in reasoning text ``option A. Then ...`` / ``vertex A. Point B ...`` are far more
common and no rule on the letters alone tells them apart. An unclosed math opener is plain text (its closer is looked for within
``MAX_MATH_CHARS`` characters only, which bounds the work on malformed text); ``$`` used for
currency is text (``$5 and $10`` is not math), but a currency dollar followed on the same line
by inline math (``costs $5. So $x$``) pairs with the math's opening dollar, as in pandoc. Speed: one compiled regex scan whose branches all
start with a literal character, so the regex engine skips ordinary text in C; about 30 MB/s on one
core (``benchmarks/segment_speed.py``).
"""

from __future__ import annotations

import re

MAX_MATH_CHARS = 20_000
"""Longest math region (characters) searched for a closing delimiter."""

_HSPACE = r"[ \t\f\v\xa0\u2000-\u200a\u202f\u205f\u3000]"
# End punctuation continues with more of it, closers, then a line end / the text end, or spaces
# not followed by a-z.
_END_TAIL = r"[.!?\u2026]*[\"'\u201d\u2019)\]*_]*" + rf"(?:{_HSPACE}*+(?:\r?\n|\Z)\s*|{_HSPACE}++(?![a-z]))"
_CJK_TAIL = r"[\u3002\uff01\uff1f]*[\u300d\u300f\u201d\u2019\uff09]*\s*"
# The scan: every branch starts with a literal character, so `re` finds candidates with a fast
# charset search in C and dispatches each with a one-character check; Python runs only on matches.
_BRANCHES = [
    ("end", rf"\.(?P<end_dot>{_END_TAIL})"),
    ("end", rf"!(?P<end_bang>{_END_TAIL})"),
    ("end", rf"\?(?P<end_q>{_END_TAIL})"),
    ("end", rf"\u2026(?P<end_ell>{_END_TAIL})"),
    ("cjk", rf"\u3002(?P<cjk_1>{_CJK_TAIL})"),
    ("cjk", rf"\uff01(?P<cjk_2>{_CJK_TAIL})"),
    ("cjk", rf"\uff1f(?P<cjk_3>{_CJK_TAIL})"),
    ("nl", r"\n(?P<nl>\s*)"),
    ("dd", r"\$(?P<dd>\$)"),
    # inline math: no space after the opening $, none before the closing one, no digit after it
    ("im", r"\$(?P<im>(?=[^\s$])[^$\n]{0,2000}+(?<![\s\\])\$(?!\d))"),
    ("latex", r"\\(?P<latex>\[|\(|begin\{(?P<env>[^{}\n]{1,40})\})"),
    ("fence", r"`(?P<fence>``)"),
]
_SCAN = re.compile("|".join(p for _, p in _BRANCHES))
_KIND = {_SCAN.groupindex[name]: kind for kind, p in _BRANCHES for name in re.findall(r"\(\?P<(\w+)>", p)[:1]}
_FENCE_CLOSE = re.compile(r"^[ \t]*```+[ \t]*(?:\n|\Z)", re.MULTILINE)
_NL_WS = re.compile(r"\n\s*")
_OPENERS = "([{\"'`*"
_PUNCT = ".!?\u2026"
_ENUM = re.compile(r"\d{1,3}|[A-Za-z]|[ivxIVX]{1,5}")
_WS = re.compile(r"\s*")

# Abbreviations (lower-cased, inner dots kept, final dot removed).
_ABBREV_ALWAYS = frozenset(
    "e.g i.e dr mr mrs ms prof sr jr st vs cf approx ca resp viz al w.r.t a.k.a".split()
)
_ABBREV_BEFORE_NUMBER = frozenset(
    "fig figs eq eqs no nos sec ch thm lem def prop cor p pp vol ex"
    " jan feb mar apr jun jul aug sep sept oct nov dec".split()
)
# Dotted abbreviations: letter groups of one or two joined by inner dots (U.S, U.S.A, Ph.D, a.m).
_DOTTED = re.compile(r"(?:[A-Za-z]{1,2}\.)+[A-Za-z]{1,2}")
# The word after end punctuation (past opening quotes/brackets/emphasis), and whether a dot follows.
_NEXT_WORD = re.compile(r"[\"'(\[*_\u201c\u2018]*([A-Za-z]+)(\.?)")
_PREV_INITIAL = re.compile(r"(?:^|[^\w.])[A-Z]\.\s+$")
# Words that start a new sentence after a dotted abbreviation or an initial (lower-cased).
_STARTERS = frozenset(
    """a an the this that these those there then thus therefore hence so but and or yet however now
    next finally also it its i we he she they you in on at for if when where what why how who which
    let since after because although while as wait hmm yes no ok okay note here""".split()
)


def _ends_here(text: str, s: int, g: str) -> bool:
    """Whether the Latin end-punctuation candidate ``g`` found at ``s`` ends a sentence.

    ``g`` is the run of end punctuation, its closers and the following spaces, within a line and
    not at the end of the text (those always end a sentence).
    """
    nxt = text[s + len(g)]
    if nxt.islower():
        return False  # an unknown abbreviation or a lower-case continuation (non-ASCII; a-z never match)
    run = g[: len(g) - len(g.lstrip(_PUNCT))]
    if run != ".":
        if run.count(".") >= 2 or "\u2026" in run:  # ellipsis: a break only before a capital
            return nxt.isupper()
        return True  # "!", "?", "?!", "!." ...
    chunk = text[max(0, s - 7) : s]
    word = chunk.rsplit(None, 1)[-1].lstrip(_OPENERS) if chunk and not chunk[-1].isspace() else ""
    if len(word) > 6 or not word:
        return True
    low = word.lower()
    if low in _ABBREV_ALWAYS:
        return False
    if low in _ABBREV_BEFORE_NUMBER and (nxt.isdigit() or nxt == "("):
        return False
    if low == "etc":
        return nxt.isupper()
    if "." in word and _DOTTED.fullmatch(word):  # U.S., Ph.D., a.m.
        w = _NEXT_WORD.match(text, s + len(g))
        return w is not None and w.group(1).lower() in _STARTERS
    if _ENUM.fullmatch(word) and _line_start(text, s - len(word), "-*+") >= 0:
        return False  # "1. First ..." at the start of a line
    if len(word) == 1 and word.isupper():  # an initial?
        w = _NEXT_WORD.match(text, s + len(g))
        if w is None:
            return True
        if w.group(2) and len(w.group(1)) == 1 and w.group(1).isupper():
            return False  # "J. R." : another initial follows
        if _PREV_INITIAL.search(text, max(0, s - 5), s - 1) and w.group(1)[0].isupper() \
                and w.group(1).lower() not in _STARTERS:
            return False  # "R. Tolkien" after "J."
    return True


def _line_start(text: str, k: int, bullets: str = "", blanks: str | None = None) -> int:
    """Start of the line holding ``k`` when only blanks (``blanks``, or any whitespace but a line
    break) and at most one of ``bullets`` stand before ``k`` on it, else -1. Looks back only over
    those characters, not to the previous line break, so that a long line with many candidates
    stays linear."""

    def skip(j: int) -> int:
        while j > 0 and text[j - 1] != "\n" and (text[j - 1] in blanks if blanks else text[j - 1].isspace()):
            j -= 1
        return j

    j = skip(k)
    if j > 0 and text[j - 1] in bullets:
        j = skip(j - 1)
    return j if j == 0 or text[j - 1] == "\n" else -1


def _find_closer(text: str, opener: str, closer: str, pos: int) -> int:
    """End index (after ``closer``) of the region opened just before ``pos``, or -1.

    Nested ``opener``s inside are counted (for ``\\begin{env}``), within ``MAX_MATH_CHARS``.
    """
    limit = min(len(text), pos + MAX_MATH_CHARS)
    depth = 1
    i = pos
    while True:
        j = text.find(closer, i, limit)
        if j < 0:
            return -1
        if opener != closer:
            depth += text.count(opener, i, j)
        depth -= 1
        if depth == 0:
            return j + len(closer)
        i = j + len(closer)


def segment(text: str) -> list[tuple[int, int]]:
    """Split ``text`` into sentence spans ``(start, end)`` covering it exactly (see module doc).

    The empty string gives ``[]``. Pure and deterministic; linear in ``len(text)``.
    """
    n = len(text)
    if n == 0:
        return []
    spans: list[tuple[int, int]] = []
    start = 0

    def cut(c: int) -> None:
        nonlocal start
        if c <= start:
            return
        if text[start].isspace() and text[start:c].isspace():
            if spans:  # whitespace joins the preceding sentence
                spans[-1] = (spans[-1][0], c)
                start = c
            return  # leading whitespace joins the first sentence
        spans.append((start, c))
        start = c

    search = _SCAN.search
    kinds = _KIND
    pos = 0
    while True:
        m = search(text, pos)
        if m is None:
            break
        kind = kinds[m.lastindex]
        if kind == "end" or kind == "nl" or kind == "cjk":
            g = m.group()
            c = m.start() + len(g)
            pos = c
            if kind == "end" and c < n and "\n" not in g and not _ends_here(text, m.start(), g):
                continue
            if c > start:  # cut(c), inlined on the hot path
                if text[start].isspace() and text[start:c].isspace():
                    if spans:
                        spans[-1] = (spans[-1][0], c)
                        start = c
                else:
                    spans.append((start, c))
                    start = c
        elif kind == "im" or kind == "dd":
            s = m.start()
            if s > 0 and text[s - 1] == "\\":
                pos = s + 1  # \$ is a literal dollar
            elif kind == "im":
                pos = m.end()
            else:
                close = _find_closer(text, "$$", "$$", s + 2)
                pos = close if close > 0 else s + 2
        elif kind == "latex":
            s = m.start()
            tok = m.group("latex")
            if tok == "[":
                close = _find_closer(text, "\\[", "\\]", s + 2)
            elif tok == "(":
                close = _find_closer(text, "\\(", "\\)", s + 2)
            else:
                env = m.group("env")
                close = _find_closer(text, "\\begin{" + env + "}", "\\end{" + env + "}", m.end())
            pos = close if close > 0 else m.end()
        else:  # fence
            s = m.start()
            line_start = _line_start(text, s, blanks=" \t")
            if line_start < 0:
                pos = m.end()  # not at the start of a line: inline backticks
                continue
            cut(line_start)
            body = text.find("\n", m.end())
            if body < 0:
                end = n
            else:
                mc = _FENCE_CLOSE.search(text, body + 1)
                end = mc.end() if mc is not None else n
            end = _WS.match(text, end).end()
            for ml in _NL_WS.finditer(text, s, end):
                cut(ml.end())
            cut(end)
            pos = end
    if start < n:
        if spans and text[start:n].isspace():
            spans[-1] = (spans[-1][0], n)
        else:
            spans.append((start, n))
    return spans


def sentences(text: str) -> list[str]:
    """The sentence strings of ``text`` (``segment`` spans sliced out); for inspection and tests."""
    return [text[s:e] for s, e in segment(text)]
