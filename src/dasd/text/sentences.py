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
- initials: a lone capital letter, its dot, then only spaces, before another initial
  (``J. R. R. Tolkien``) or before a surname (a capital then a lower-case letter: ``Kennedy``,
  ``García``, not a sentence starter) when the word before the letter is an initial
  (``J. R. Tolkien``), a title (``Dr. A. Smith``; ``_TITLES``) or a given name: a capitalised word
  of letters that is neither a sentence starter nor a label noun (``John F. Kennedy``; ``_LABELS``:
  ``Case``, ``Option``, ``Point``, ``Vertex``, ``Step``, ``Figure`` ...);
- end punctuation followed, on the same line, by a lower-case letter (``approx. equal``,
  ``Is it 5? no, wait``); ellipses (``...``, ``…``) followed by anything but a capital;
- anything inside LaTeX math, which is kept whole: ``$...$`` (pandoc's rule: no space after the
  opening or before the closing ``$``, no digit after it, ``\\$`` is a literal dollar),
  ``$$...$$``, ``\\[...\\]``, ``\\(...\\)``, ``\\begin{env}...\\end{env}`` (nesting of the same
  ``env`` is counted).

Code fences (a line starting with ````` ``` `````, up to the closing fence line, or the end of
the text if unclosed, as in Markdown) are split into **line units**: each line of code is one span
(its following blank lines and indentation attached), and sentence rules do not apply inside.

Pitfalls: every other lone capital and its dot ends a sentence before a capital, as letters that
name things do in reasoning text: after a lower-case word (``is in group A. Then``, ``vertex A.
Point B``), after a label noun (``Case A. Suppose``, ``Vertex C. Point D``), with a closer at its
dot (``(B). So``, ``**A.** Next``) or before a sentence starter (``John F. Then``). The rule reads
words, not meaning: a label noun missing from ``_LABELS`` before a letter, followed by a
capitalised word that is no sentence starter (``Tower B. Draw ...``), is read as a name and not
cut, and a name with a lone initial after a lower-case word (``the theorem of J. Nash``), whose given
name is spelt like a label noun or whose surname like a sentence starter is cut (``Case B. Hope``,
``Will A. Then``). These rules are in no stage setting or hash:
a run scored before they changed keeps the sentence spans stored in its score records (select,
the report and analyze read those rows as stored), so its DAS scores stay those of the rules it
was scored with; a new run directory scores with the current rules.
An unclosed math opener is plain text (its closer is looked for within
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
_LETTERS = re.compile(r"[^\W\d_]+")
# Words that start a new sentence after a dotted abbreviation or an initial (lower-cased).
_STARTERS = frozenset(
    """a an the this that these those there then thus therefore hence so but and or yet however now
    next finally also it its i we he she they you in on at for if when where what why how who which
    let since after because although while as wait hmm yes no ok okay note here""".split()
)
# Titles before an initial (``Dr. A. Smith``), lower-cased, without their dot.
_TITLES = frozenset("dr mr mrs ms prof sr st".split())
# Capitalised words that name a letter in reasoning text (``Case A.``, ``Vertex C.``, ``Option B.``):
# before a lone capital and its dot they are not a given name, so the dot ends the sentence.
_LABELS = frozenset(
    """answer appendix area angle array axiom bag block book box building car card case cases category cell
    chapter choice circle city claim class column company condition corollary country course definition die
    edge element equation event example exercise face figure floor form function gate gene grade graph group
    hint hypothesis house item job lemma letter level line list machine matrix method model node note object
    option options part person phase pile plan plane planet player point points population problem process
    product project property proposition question region road room round route row rule sample scenario
    school section segment server set shop side size solution species square stage star state statement step
    store strain student table tank task team test theorem track train triangle type unit urn variable vector
    version vertex vitamin volume zone""".split()
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
    if len(word) == 1 and word.isupper() and g[1:].isspace():  # an initial?
        return not _is_initial(text, s - 1, s + len(g))
    return True


def _is_initial(text: str, k: int, after: int) -> bool:
    """Whether the lone capital at ``k``, its dot and the spaces up to ``after`` are an initial of a
    name (module doc): another initial follows, or a surname follows a given name, a title or an
    initial."""
    nxt = _LETTERS.match(text, after)
    if nxt is None:
        return False
    name = nxt.group()
    if len(name) == 1:  # "J. R.": another initial follows
        return name.isupper() and text.startswith(".", nxt.end())
    if not (name[0].isupper() and name[1].islower()) or name.lower() in _STARTERS:
        return False  # not a surname ("Then", "OK", "x")
    before = text[max(0, k - 24) : k]
    head = before.rstrip(" \t\xa0")
    if len(head) == len(before) or not head or head[-1] == "\n":
        return False  # the letter starts the text or a line, or follows no space ("(A. Smith")
    prev = head.rsplit(None, 1)[-1]
    if len(prev) == len(head) and k > 24:
        return False  # a word longer than a name
    prev = prev.lstrip(_OPENERS)
    if len(prev) == 2 and prev[0].isupper() and prev[1] == ".":
        return True  # "J. R. Tolkien"
    if prev.endswith(".") and prev[:-1].lower() in _TITLES:
        return True  # "Dr. A. Smith"
    return (len(prev) >= 2 and prev.isalpha() and prev[0].isupper() and prev[1:].islower()
            and prev.lower() not in _STARTERS and prev.lower() not in _LABELS)  # "John F. Kennedy"


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
