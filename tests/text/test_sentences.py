"""Sentence segmenter: exact coverage on arbitrary unicode, and one hand-made case per rule."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from dasd.text.sentences import segment, sentences


def _check_cover(text: str) -> list[tuple[int, int]]:
    spans = segment(text)
    if not text:
        assert spans == []
        return spans
    assert spans[0][0] == 0 and spans[-1][1] == len(text)
    for (s, e), (s2, _) in zip(spans, spans[1:]):
        assert e == s2, "spans must be contiguous"
    for s, e in spans:
        assert s < e, "spans must be non-empty"
    if not text.isspace():
        for s, e in spans:
            assert not text[s:e].isspace(), f"whitespace-only span {text[s:e]!r}"
    return spans


# Characters that exercise every branch of the scanner, mixed with arbitrary unicode.
_SPECIAL = st.sampled_from(
    list(".!?\u2026\u3002\uff01\uff1f\n $\\`{}[]()\"'*_ \t\r")
    + ["$$", "\\[", "\\]", "\\(", "\\)", "\\begin{a}", "\\end{a}", "```", "```\n", "e.g.", "1. ", "...", "Dr. "]
    + ["U.S. ", "J. ", "A. ", "p.m. ", "The ", "Army ", "John ", "Dr. ", "Kennedy ", "Case "]
)
_TEXT = st.lists(st.one_of(st.text(max_size=6), _SPECIAL), max_size=60).map("".join)


@settings(max_examples=400, deadline=None)
@given(_TEXT)
@example(" . 0")
@example("x. \u00e9")
def test_spans_cover_text_exactly(text):
    _check_cover(text)


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_spans_cover_arbitrary_unicode(text):
    _check_cover(text)


@settings(max_examples=100, deadline=None)
@given(_TEXT, _TEXT)
def test_paragraph_break_is_a_boundary(a, b):
    """Text before a blank line is never in the same span as text after it (outside math/code)."""
    if any(c in a + b for c in "$\\`"):
        return
    text = a.rstrip() + "\n\n" + b.lstrip() if a.strip() and b.strip() else None
    if text is None:
        return
    cut = len(a.rstrip()) + 2
    assert any(e == cut for _, e in segment(text))


@pytest.mark.parametrize(
    "text, expected",
    [
        # sentence ends, trailing whitespace attached to the preceding sentence
        ("One. Two! Three? Four", ["One. ", "Two! ", "Three? ", "Four"]),
        ("End.  \n\nNext.", ["End.  \n\n", "Next."]),
        ("  Leading space. Then.", ["  Leading space. ", "Then."]),
        ("He said \"yes.\" Then left.", ["He said \"yes.\" ", "Then left."]),
        ("**Step 1.** Compute it.", ["**Step 1.** ", "Compute it."]),
        # newlines and paragraphs
        ("line one\nline two\n\nline three", ["line one\n", "line two\n\n", "line three"]),
        # CJK, with and without spaces
        ("\u4e2d\u6587\u3002\u7b2c\u4e8c\u53e5\uff01\u5bf9\u5417\uff1fok", ["\u4e2d\u6587\u3002", "\u7b2c\u4e8c\u53e5\uff01", "\u5bf9\u5417\uff1f", "ok"]),
        # decimals, versions
        ("Pi is 3.14 and v1.2.3 works. Next.", ["Pi is 3.14 and v1.2.3 works. ", "Next."]),
        # enumerations at line start (but a number ending a sentence still ends it)
        ("Steps:\n1. Add 2.\n2. Add 3.\nThe total is 14. Done.", ["Steps:\n", "1. Add 2.\n", "2. Add 3.\n", "The total is 14. ", "Done."]),
        ("a. First option\nb. Second", ["a. First option\n", "b. Second"]),
        ("iv. Fourth item here", ["iv. Fourth item here"]),
        # abbreviations
        ("Use e.g. Newton. Dr. Smith agrees, i.e. Yes. See Fig. 3 now.", ["Use e.g. Newton. ", "Dr. Smith agrees, i.e. Yes. ", "See Fig. 3 now."]),
        ("Apples, pears, etc. Then more. Numbers etc. are fine.", ["Apples, pears, etc. ", "Then more. ", "Numbers etc. are fine."]),
        ("It is approx. equal to x vs. y. Yes.", ["It is approx. equal to x vs. y. ", "Yes."]),
        # a lower-case letter after end punctuation on the same line continues the sentence
        ("Is it 5? no, wait. Yes! it is. Done.", ["Is it 5? no, wait. ", "Yes! it is. ", "Done."]),
        ("Voil\u00e0. \u00e9lan continues. \u00c9t\u00e9 starts.", ["Voil\u00e0. \u00e9lan continues. ", "\u00c9t\u00e9 starts."]),
        ("End.\r\nNext.", ["End.\r\n", "Next."]),
        # ellipses
        ("Hmm... let me think. Wait... Actually no.", ["Hmm... let me think. ", "Wait... ", "Actually no."]),
        ("So\u2026 maybe. Or\u2026 No.", ["So\u2026 maybe. ", "Or\u2026 ", "No."]),
        # inline and display LaTeX kept whole
        ("We get $x = 1. Y$ here. Next.", ["We get $x = 1. Y$ here. ", "Next."]),
        ("Then $$a. B\n\nC.$$ holds. Next.", ["Then $$a. B\n\nC.$$ holds. ", "Next."]),
        ("So \\[ q. R \\] ok. And \\( a. B \\) too. End.", ["So \\[ q. R \\] ok. ", "And \\( a. B \\) too. ", "End."]),
        ("\\begin{align} a. \\\\\n B. \\begin{align} c. D \\end{align} \\end{align} end. Next.",
         ["\\begin{align} a. \\\\\n B. \\begin{align} c. D \\end{align} \\end{align} end. ", "Next."]),
        # currency and escaped dollars are not math
        ("It costs $5 and $10. Fine.", ["It costs $5 and $10. ", "Fine."]),
        ("A \\$ sign. B $x$ y.", ["A \\$ sign. ", "B $x$ y."]),
        # an unclosed opener is plain text
        ("Open \\[ x. Next one.", ["Open \\[ x. ", "Next one."]),
        # code fences: line units, no sentence rules inside
        ("Code:\n```python\nx = 1. y = 2\n\nz = 3\n```\nAfter. Done.",
         ["Code:\n", "```python\n", "x = 1. y = 2\n\n", "z = 3\n", "```\n", "After. ", "Done."]),
        ("Run:\n```\nA. B\n", ["Run:\n", "```\n", "A. B\n"]),  # unclosed fence runs to the end
        ("Inline ```x. Y``` here.", ["Inline ```x. ", "Y``` here."]),  # not at line start: ordinary text
        ("", []),
        ("   \n ", ["   \n "]),
    ],
)
def test_rules(text, expected):
    assert sentences(text) == expected
    _check_cover(text)


@pytest.mark.parametrize(
    "text, expected",
    [
        # dotted abbreviations: a break only before a common sentence starter
        ("The U.S. Army won. Next.", ["The U.S. Army won. ", "Next."]),
        ("It was in the U.S. The next year he left.", ["It was in the U.S. ", "The next year he left."]),
        ("A U.S.A. Today story. A Ph.D. Student met Prof. Lee at 5 p.m. Tuesday.",
         ["A U.S.A. Today story. ", "A Ph.D. Student met Prof. Lee at 5 p.m. Tuesday."]),
        ("We met at 5 p.m. It rained.", ["We met at 5 p.m. ", "It rained."]),
        ("The U.S. $5$ bill and the U.K. 10 pound note.", ["The U.S. $5$ bill and the U.K. 10 pound note."]),
        # initials: a chain of them, or one after another before a name
        ("J. R. R. Tolkien wrote it. J. K. Rowling too.", ["J. R. R. Tolkien wrote it. ", "J. K. Rowling too."]),
        # a single capital that ends a sentence still does (the common case in reasoning)
        ("Pick option A. Then check B. Vertex C. Point D lies on it.",
         ["Pick option A. ", "Then check B. ", "Vertex C. ", "Point D lies on it."]),
        # more fixed abbreviations before numbers
        ("It was Jan. 5 and ca. 30 people came. Done.", ["It was Jan. 5 and ca. 30 people came. ", "Done."]),
    ],
)
def test_dotted_abbreviations_and_initials(text, expected):
    """``U.S.``/``Ph.D.``/``p.m.`` and initials do not cut a sentence before a name or a number;
    they do before a sentence starter (the module doc's rule)."""
    assert sentences(text) == expected
    _check_cover(text)


@pytest.mark.parametrize(
    "text, expected",
    [
        # a middle initial between a given name and a surname
        ("John F. Kennedy was president. Then he left.", ["John F. Kennedy was president. ", "Then he left."]),
        ("It was George W. Bush who won.", ["It was George W. Bush who won."]),
        ("Franklin D. Roosevelt and Harry S. Truman met.", ["Franklin D. Roosevelt and Harry S. Truman met."]),
        ("Ask (John F. Kennedy) now.", ["Ask (John F. Kennedy) now."]),
        ("**Mary K. Smith** agrees.", ["**Mary K. Smith** agrees."]),
        ("Jos\u00e9 M. Garc\u00eda wrote it.", ["Jos\u00e9 M. Garc\u00eda wrote it."]),
        # after a title, or after another initial
        ("Dr. A. Smith agrees. Mr. J. Brown too.", ["Dr. A. Smith agrees. ", "Mr. J. Brown too."]),
        ("Prof. R. Feynman taught it.", ["Prof. R. Feynman taught it."]),
        ("The proof is by J. R. R. Tolkien and E. B. White.", ["The proof is by J. R. R. Tolkien and E. B. White."]),
    ],
)
def test_initials_of_names_do_not_cut(text, expected):
    """A lone capital and its dot between a given name, a title or an initial and a surname is an
    initial: the old rule cut "John F. " and "Dr. A. " off as sentences of one or two letters, which
    weighed as much as real sentences in the DAS fractions."""
    assert sentences(text) == expected
    _check_cover(text)


@pytest.mark.parametrize(
    "text, expected",
    [
        # letters that name things, after a lower-case word
        ("The point is in group A. Then we add B.", ["The point is in group A. ", "Then we add B."]),
        ("Take point A. Then draw a line to B.", ["Take point A. ", "Then draw a line to B."]),
        ("Reflect it across vertex A. Point B moves.", ["Reflect it across vertex A. ", "Point B moves."]),
        ("I pick option C. Kennedy would too.", ["I pick option C. ", "Kennedy would too."]),
        ("Bob chose B. Alice chose C.", ["Bob chose B. ", "Alice chose C."]),
        # (so does a name's lone initial there: the words alone do not tell it from the one above)
        ("It is the theorem of J. Nash here.", ["It is the theorem of J. ", "Nash here."]),
        # after a label noun, capitalised
        ("Case A. Suppose x > 0.", ["Case A. ", "Suppose x > 0."]),
        ("Vertex C. Point D lies on it.", ["Vertex C. ", "Point D lies on it."]),
        ("Use Lemma B. Compute the sum.", ["Use Lemma B. ", "Compute the sum."]),
        ("Consider Option D. Both fail.", ["Consider Option D. ", "Both fail."]),
        ("Type A. Type B is rarer.", ["Type A. ", "Type B is rarer."]),
        # before a sentence starter, a single letter, or a word that is not a surname
        ("John F. Then he spoke.", ["John F. ", "Then he spoke."]),
        ("So the answer is A. The rest is wrong.", ["So the answer is A. ", "The rest is wrong."]),
        ("Then A. B is next.", ["Then A. ", "B is next."]),
        ("John F. OK then.", ["John F. ", "OK then."]),
        ("Dr. A. So it goes.", ["Dr. A. ", "So it goes."]),
        # a closer at the dot, or nothing but a capital: no initial
        ("So the answer is (B). So we stop.", ["So the answer is (B). ", "So we stop."]),
        ("**Case A.** Suppose x.", ["**Case A.** ", "Suppose x."]),
        ("We chose John F.\nKennedy came later.", ["We chose John F.\n", "Kennedy came later."]),
        ("Let x = 5. The end.", ["Let x = 5. ", "The end."]),
        ("Answer: B. Explanation follows.", ["Answer: B. ", "Explanation follows."]),
    ],
)
def test_letters_that_name_things_still_cut(text, expected):
    """The other side of the initials rule: in reasoning text a lone capital and its dot usually
    ends a sentence (an option, a point, a case), and does unless a name surrounds it."""
    assert sentences(text) == expected
    _check_cover(text)


def test_long_text_is_linear_on_many_unclosed_openers():
    text = "\\[ a. " * 5000 + "$$ b. " * 5000
    spans = _check_cover(text)
    assert len(spans) >= 5000


class _CountingStr(str):
    """A text that adds up how many characters its ``find``/``rfind`` calls look through."""

    looked = 0

    def _count(self, start, end):
        start = 0 if start is None else start
        end = len(self) if end is None else min(end, len(self))
        type(self).looked += max(0, end - start)

    def find(self, sub, start=None, end=None):
        self._count(start, end)
        return super().find(sub, start, end)

    def rfind(self, sub, start=None, end=None):
        self._count(start, end)
        return super().rfind(sub, start, end)


@pytest.mark.parametrize("unit, per_unit", [
    ("Pick option A. Then B. ", ["Pick option A. ", "Then B. "]),  # enumeration-like "A." mid-line
    ("Inline ```x``` y. ", ["Inline ```x``` y. "]),  # backticks mid-line
])
def test_a_long_line_is_not_rescanned_per_candidate(unit, per_unit):
    """Deciding whether ``A.`` or a fence stands at a line start looks back over blanks only, not to
    the previous line break: one 2000-sentence line costs a bounded look-back, not a quadratic one
    (the old rfind to the line start made a 1 MB line take minutes)."""
    _CountingStr.looked = 0
    text = _CountingStr(unit * 2000)
    assert [text[s:e] for s, e in segment(text)] == per_unit * 2000
    assert _CountingStr.looked <= 2 * len(text)


_PROSE = st.sampled_from(
    ["Hello world. ", "See 3.14 here! ", "Next line\n", "\n\n", "1. item\n", "Wait... ", "\u4e2d\u6587\u3002", "e.g. this "]
)
_MATH = st.sampled_from(
    ["$a. B$ ", "$$x.\n\nY$$ ", "\\[ p. Q \\] ", "\\begin{align} a. \\\\\n B. \\end{align} ", "\\( r.\nS \\) "]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(_PROSE, st.booleans(), _MATH), max_size=12))
def test_math_is_never_split(parts):
    """No sentence boundary inside math. (Currency is left out: ``$5 ... $a$`` pairs the currency
    dollar with the math opener, as pandoc's rule does too; see the module doc.)"""
    text, regions = "", []
    for prose, with_math, math in parts:
        text += prose
        if with_math:
            regions.append((len(text), len(text) + len(math) - 1))  # without the trailing space
            text += math
    spans = _check_cover(text)
    cuts = {e for _, e in spans}
    for a, b in regions:
        assert not any(a < c < b for c in cuts), (text[a:b], text)
