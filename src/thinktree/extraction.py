"""Extraction of the final answer from a language model's free-text output.

Rules are tried in priority order, and each rule reads the LAST of its occurrences first:

1. ``boxed``: the content of ``\\boxed{...}`` (nested braces and ``\\text{...}`` allowed).
2. Answer phrases, one tier ordered by position: ``final-answer`` ("Final Answer: X", "the final
   answer is X", a "Final Answer" heading with X below it), ``answer-label`` ("Answer: X"),
   ``answer-is`` ("the (correct) answer is X", "the answer is not A, it is B", "the
   correct answer, X, ...") and
   ``correct-option`` ("the correct option is X", "Correct option: X", "my choice is X",
   "My choice: X", "Final choice: X", "Answer option: X", "I would choose X", "I'll go
   with X", "option X is the correct answer").
   A choice answer is read as a leading letter ("(B) ...", "B.", "B", "'B'"), a leading
   option text, the only "(X)"/"option X" in the phrase, or the only option text it contains.
3. Fallbacks by answer type: ``bare-letter`` (a letter alone on a line near the end, or
   as "Option C.", or after "Therefore,": "Therefore, option C"; the last line as
   "Choice: C"; at a line's start as "(C)" or "C." (of several such lines, the last
   where it is an item saying it is right: "D. Factor XII is the correct answer."); or
   the last line's last sentence saying it is right, all of it: "So, C is the correct
   answer.", "Option C is correct.", "The answer option C is correct.", "The most likely
   diagnosis is C.", "I chose option C.") then ``option-text`` (choice), ``yesno-word``
   (yesno), ``number`` (numeric), ``whole-text`` (free).

Nothing is guessed. An occurrence that says nothing readable ("the answer is not clear", or
the prompt's own "Answer: X" written as it was shown) is skipped for the one before it (a
last line of that placeholder is left out of the fallbacks too); an occurrence that clearly
names something invalid (a letter that is not an option, a letter followed by another
option's text ("A. Guanine" where Guanine is B), an ambiguous number such as ``3-4``, two
different bare letters, a list of options under the last phrase) ends the search with None.
When the text has a ``</think>`` block, the part after it is read first.
"""

from __future__ import annotations

import itertools
import re
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from enum import Enum

from thinktree._numbers import NUMBER_TOKEN, canonical_number, token_value
from thinktree.problems import AnswerType, Problem

__all__ = ["Extraction", "canonical_number", "extract_answer"]


@dataclass(frozen=True, slots=True)
class Extraction:
    """A normalised answer and the rule (``method``) that found it."""

    answer: str
    method: str


class _Verdict(Enum):
    """An occurrence that names an invalid answer: stop and return None."""

    REJECT = "reject"


_REJECT = _Verdict.REJECT
_Reading = str | _Verdict | None
_Reader = Callable[[str, Problem], _Reading]

# --- text clean-up -------------------------------------------------------------------------

_LATEX_SUBSTITUTIONS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\\d?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}"), r"\1/\2"),
    (re.compile(r"\\(?:times|cdot)(?![a-zA-Z])"), "×"),
    (re.compile(r"\\approx(?![a-zA-Z])"), "≈"),
    (re.compile(r"\\sim(?![a-zA-Z])"), "~"),
    (re.compile(r"\\%"), "%"),
    (re.compile(r"\\[,;:!]"), ""),
    (re.compile(r"\\[ ()\[\]]"), " "),
    (re.compile(r"\\[a-zA-Z]+"), ""),
    (re.compile(r"[{}$]|\*\*|__|`"), ""),
)
_MARKUP = _LATEX_SUBSTITUTIONS[-1][0]
_BOLD = re.compile(r"\*\*|__")
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_BRACE = re.compile(r"[{}]")
_SPARSE_BRACES = 8  # at most one character in this many is a brace
_THINK_END = "</think>"
_NUMBER_CHARACTERS = "0123456789.,"  # what a number the text ends in, touching its end, holds
_NON_SPACE = re.compile(r"\S")
# Answers are short: a phrase body or boxed content is read up to this length, which also keeps
# extraction linear in the length of pathological outputs.
_MAX_BODY = 500

# --- answer phrases ------------------------------------------------------------------------

_IS = r"(?:is|would\s+be|should\s+be|must\s+be|will\s+be|=)(?![\w'’])\s*[:：]?"
# "Wrong answer: …", "the incorrect answer is …" name what the answer is not
_NOT_WRONG = r"(?<!wrong\s)(?<!incorrect\s)(?<!false\s)"
_ANSWER_IS = re.compile(
    r"\b(?P<qualifiers>(?:(?:correct|final|best|right|most\s+likely|likely|true)\s+)*)"
    rf"{_NOT_WRONG}answer(?:\s+to\s+(?:this|the)\s+question)?\s+{_IS}",
    re.IGNORECASE,
)
_ANSWER_LABEL = re.compile(rf"\b(?P<final>final\s+)?{_NOT_WRONG}answer[*_]*\s*[:：]", re.IGNORECASE)
# Every match of the two patterns above is some words, then "answer" at a word's start, and
# an "answer" ends a match of one of them at most. Python's regex engine tries a pattern that
# opens with optional words at every position of a text, which made those two scans most of
# the cost of a long one: this pattern finds each "answer" that ends a match first, and the
# match is then taken from where its words start.
_ANSWER_AT = re.compile(
    rf"\b{_NOT_WRONG}answer(?:(?P<is>(?:\s+to\s+(?:this|the)\s+question)?\s+{_IS})|[*_]*\s*[:：]"
    # "the correct answer, D, ...": a letter set off by commas after a qualified answer
    r"|(?P<aside>\s*,\s*)(?=\(?[A-Z]\)?\s*,))",
    re.IGNORECASE,
)
_QUALIFIER_WORDS = ("correct", "final", "best", "right", "likely", "true")
_QUALIFIER = re.compile("|".join(_QUALIFIER_WORDS), re.IGNORECASE)
_LIKELY = re.compile("likely", re.IGNORECASE)
_MOST = re.compile("most", re.IGNORECASE)
_FINAL = re.compile("final", re.IGNORECASE)
_FINAL_HEADING = re.compile(
    r"^[ \t>#*_]*(?:the\s+)?final\s+answer[ \t*_]*$", re.IGNORECASE | re.MULTILINE
)
_CORRECT_OPTION = re.compile(
    r"\b(?:(?:correct|right|best|most\s+appropriate|most\s+likely|selected|chosen)\s+"
    # "the correct option is X", or as a label: "Correct option: X", "Selected choice: (X)"
    rf"(?:option|choice|response)(?:\s+{_IS}|[*_]*\s*[:：])"
    # a label only: "Final choice: (X)", "Answer option: X" (not "the final option is X",
    # the last of a list)
    rf"|{_NOT_WRONG}(?:final|answer)\s+(?:option|choice)[*_]*\s*[:：]"
    # "my choice is X", or as a label: "My final choice: X"
    rf"|my\s+(?:final\s+)?(?:choice|selection)(?:\s+{_IS}|[*_]*\s*[:：])"
    r"|I(?:\s+would|\s+will|['’](?:ll|d))?\s+(?:choose|select|pick|go\s+with)\b)",
    re.IGNORECASE,
)
# "option D is the correct answer": the letter comes first, so the phrase ends before it
_IS_CORRECT = (
    r"\s+(?P<verb>(?i:is|was))\s+(?P<noun>(?i:the\s+)?(?i:correct|right|best|most\s+likely)"
    r"\s+(?i:answer|option|choice|one)\b)"
)
_OPTION_IS_CORRECT = re.compile(rf"\b(?i:option|choice)\s+(?=[A-Z]{_IS_CORRECT})")
_LETTER_OPTION_WORDS = ("option", "choice")

# Every _CORRECT_OPTION match has one of these words, one or two words after its start
# ("selection" holds "select"; "go" is only one where "with" follows). As with "answer",
# the pattern is tried only there: a scan of every position of a long text cost it most.
_OPTION_WORDS = ("option", "choice", "response", "select", "choose", "pick")
_GO_WITH = re.compile(r"go\s+with")  # searched in lower-cased text
_CONTRACTED_I = ("i'", "i’")  # "I'll", "I'd": where such a phrase may start
# A word that every heading (see _FINAL_HEADING) or option phrase has.
_OTHER_WORDS = ("final", "go", *_OPTION_WORDS)
# Characters that IGNORECASE takes for an ASCII letter though their lower case is none
# (dotless i, long s) or is two characters (dotted capital I). A text without them has
# each word of the patterns, case ignored, where its lower case has the word.
# Each maps to the ASCII letter IGNORECASE takes it for: casefold() leaves a dotless i as
# it is ("choıce" would hide the "choice" a pattern finds in it).
_ODD_CASES = {"\u0131": "i", "\u017f": "s", "\u0130": "i"}
_ODD_AS_ASCII = str.maketrans(_ODD_CASES)

_LEADING_FILLER = re.compile(
    r"^(?:[\s:：,>*_—]+|(?:therefore|thus|hence|so|then|likely|probably|most\s+likely|indeed"
    r"|clearly|definitely|certainly|actually|still|simply|rather|instead|option|choice|letter"
    r"|to\s+be|it\s+is|it's|it’s|i\s+(?:would\s+)?(?:say|think|believe|guess))\b)+",
    re.IGNORECASE,
)
_NEGATION = re.compile(r"^not\b", re.IGNORECASE)
_CORRECTION = re.compile(r"\b(?:but|it\s+is|it's|it’s|rather|instead|it\s+should\s+be)\b", re.I)
_NOT_AN_ANSWER = re.compile(
    r"^(?:let(?:'s|’s)?\b|step\b|first(?:ly)?\b|we\s+need\b"
    r"|to\s+(?:determine|calculate|find|answer|solve)\b)",
    re.IGNORECASE,
)

# --- choice --------------------------------------------------------------------------------

_PAREN_LETTER = re.compile(r"[(\[]\s*([A-Za-z])\s*[)\]]")
# a microbe's genus written short ("E. coli", "C. difficile", "H. pylori") names no option
_SPECIES = (
    r"(?!\.\s*(?:coli|difficile|pylori|aureus|epidermidis|saprophyticus|pneumoniae|pyogenes"
    r"|agalactiae|influenzae|gonorrhoeae|meningitidis|tuberculosis|leprae|trachomatis|pallidum"
    r"|burgdorferi|albicans|fumigatus|neoformans|jejuni|typhi|enterica|cholerae|vulnificus"
    r"|aeruginosa|monocytogenes|perfringens|botulinum|tetani|anthracis|cereus|faecalis|faecium"
    r"|mutans|vaginalis|lamblia|histolytica|falciparum|vivax|ovale|malariae|gondii|jirovecii"
    r"|pertussis|diphtheriae|israelii|marcescens|mirabilis|baumannii|henselae|rickettsii"
    r"|burnetii|psittaci|capsulatum|dermatitidis|immitis|solium|saginata|stercoralis"
    r"|lumbricoides|mansoni|haematobium|sapiens|elegans|melanogaster)\b)"
)
_PUNCT_LETTER = re.compile(rf"([A-Z]){_SPECIES}(?=\s*$|[.:;,)\]]+(?:\s|$)|\s+[(\[\-–—:])")
_SPACED_LETTER = re.compile(r"([A-Z])\s+(\S.*)", re.DOTALL)
_LETTER_VERB = re.compile(r"(?:is|was|would|seems|appears|because|since)\b")
_PRONOUN_VERB = re.compile(r"would\b")  # "I would say B": "I" is no option's letter there
_LONE_LOWER_LETTER = re.compile(r"([a-z])[.)]?\s*")
# what a body starts with in quotes: the forced answer's "The final answer is 'D'"
_QUOTED = re.compile(r"""['"“‘«]([^'"“”‘’«»\n]+)['"”’»](?!\w)""")
_SECOND_LETTER = re.compile(
    r"""\s*(?:,|/|&|\bor\b|\band\b)\s*(?:option\s+|choice\s+)?[(\['"“‘]?[A-Z][)\]]?(?!\w)"""
)
_MENTIONED_LETTER = re.compile(
    r"[(\[]([A-Z])[)\]]|\b(?:[Oo]ption|[Cc]hoice)\s+([A-Z])\b(?![-'’]\w)"
)
# a line that is a letter alone ("C", "(C)", "C."), or an option named with a full stop
# ("Option C."; without one, "Option C" may head a paragraph on it, as "Option C:" does)
_OWN_LINE_LETTER = re.compile(
    r"[(\[]?([A-Z])[)\]]?[.:]?|(?i:option|choice)\s+[(\[]?([A-Z])[)\]]?\.", re.ASCII
)
# the last line, a letter under a label: "Choice: C", "Option: (C)" (higher up, such lines
# may walk through the options: "Option: A" over what is wrong with A)
_LABELLED_LETTER = re.compile(r"(?i:option|choice)[*_]*\s*[:：]\s*[(\[]?([A-Z])[)\]]?\.?")
# what a question asks for, named right: "the correct answer", "the most likely diagnosis",
# "the best next step in management" (a few words, as the question names it)
_RIGHT_ONE = (
    r"(?i:the\s+)?(?i:correct|right|best|most\s+(?:likely|appropriate|accurate))"
    r"(?:\s+[a-zA-Z-]+){1,4}?"
)
# the last sentence of the last line, all of it naming its letter as right: "So, B is the
# correct answer.", "Option C is correct.", "The answer option C is correct." (not "If
# option B is correct, …": a condition)
_CLAIMED_LETTER = re.compile(
    r"(?P<option>(?:(?i:the\s+)?(?i:answer)\s+)?(?i:option|choice)\s+)?"
    r"[(\[]?([A-Z])[)\]]?\s+(?P<verb>(?i:is|was))\s+"
    rf"(?P<noun>{_RIGHT_ONE}|(?i:correct|right))\s*[.!]?\s*\Z"
)
# the same claim with its letter last: "The most likely diagnosis is A.", "The best next
# step is option C."
_LETTER_CLAIMED = re.compile(
    rf"{_RIGHT_ONE}\s+(?i:is|would\s+be)\s+(?:(?i:option|choice)\s+)?[(\[]?([A-Z])[)\]]?"
    r"\s*[.!]?\s*\Z"
)
# what follows an option's text in an item that says it is right: " is the correct answer"
# (read in normalised text: case-folded, its full stop gone)
_ITEM_CLAIMED = re.compile(rf"\s+(?:is|was)\s+(?:{_RIGHT_ONE}|correct|right)\s*!?\s*")
# the writer's own choice, made, all of the last sentence: "I chose option B.", "I went
# with C." (not "I chose B at first", a choice it may go back on)
_LETTER_CHOSEN = re.compile(
    r"I\s+(?i:chose|selected|picked|went\s+with)\s+(?:(?i:option|choice)\s+)?"
    r"[(\[]?([A-Z])[)\]]?\s*[.!]?\s*\Z"
)
# a line that concludes with a letter alone: "Therefore, B.", "Thus, option C" (not
# "Option D:", a heading; nor "Finally, option D", which may head the last of a walk
# through the options)
_CONCLUDED_LETTER = re.compile(
    r"(?:(?i:therefore|thus|hence|so)\b[\s,:]*(?:(?i:option|choice)\s+)?|(?i:finally)\b[\s,:]*)"
    r"[(\[]?([A-Z])[)\]]?\.?",
    re.ASCII,
)
_SENTENCE_START = re.compile(r"(?:^|(?<=[.!?;])\s+)(?=\S)")
_LINE_START_LETTER = re.compile(rf"(?:\(([A-Z])\)|([A-Z]){_SPECIES}[.)])(?=\s|$)")
# a list item's marker at a line's start: "A. …", "(B) …", "3) …", "**C.** …"
_ITEM_MARKER = re.compile(r"[ \t*_]*(?:\(([A-Z]|\d{1,3})\)|([A-Z]|\d{1,3})[.)])[*_]*(?=\s|$)")
_LINE_DECORATION = re.compile(r"(?:[\s>#*_]|-(?=\s))+")  # at a line's start (and its end:
# _undecorated; a pattern for the end would try every start in a long run of spaces)
_TAIL_LINES = 3
_MIN_CONTAINED_OPTION = 4
_AFTER_LETTER = " \t.:;,-–—()[]"  # what may stand between a letter and its option's text

# --- yes / no / maybe ----------------------------------------------------------------------

_YESNO_WORD = re.compile(r"\b(yes|no|maybe)\b", re.IGNORECASE)
_YESNO_FIRST = re.compile(r"(yes|no|maybe)\b(?!\s*(?:or|/|,)\s*(?:yes|no|maybe)\b)", re.I)
_SENTENCE_END = re.compile(r"[.;!?\n]")
_WORD_AFTER = re.compile(  # a yes/no word before a word of its sentence, not a reason
    r"\s+(?!(?:because|since|as|so|given|but|and|although|though|based|according|due|for)\b)"
    r"[^\W\d_]",
    re.IGNORECASE,
)
_YESNO_ALONE = re.compile(r"(yes|no|maybe)[.!]?", re.IGNORECASE)  # a line near the end
_ITEM = re.compile(r"\(?(?:\d{1,3}|[A-Za-z])[.)]\s")  # a line that is a list's item: "B) No"

# --- numeric -------------------------------------------------------------------------------

_RESULT_SEPARATOR = re.compile(r"=|≈")
_LIST_ITEM = re.compile(r"[*_\s]*\(?\d{1,3}[.)][*_]*\s+[^\W\d]")  # "5. She…", "(2) the…"
_STATEMENT_SEPARATOR = re.compile(r"=|≈|:|\b(?:is|was|are)\b", re.IGNORECASE)
_STATED_NUMBER = re.compile(  # what may stand between "is" and its number: "is about **12**"
    r"(?:[\s*_:~≈\"'(\[$]|\b(?:therefore|thus|then|approximately|approx|about|around|roughly"
    r"|nearly|almost|estimated|calculated|computed|found|equal|to|be|at|as)\b\.?)*"
    r"(?=[+−–-]?\.?\d)",
    re.IGNORECASE,
)


def extract_answer(text: str, problem: Problem, *, cut_off: bool = False) -> Extraction | None:
    """The final answer in ``text`` normalised for ``problem.answer_type``, or None if unclear.

    ``cut_off``: the text ended at its token cap, so a number it ends with may be cut short
    ("X = 1" of "X = 1.2") and is not read, nor a list it ends in ("The answer is yes,"
    of "yes, no, maybe")."""
    if cut_off and problem.answer_type is AnswerType.NUMERIC:
        kept = text.rstrip(_NUMBER_CHARACTERS)  # linear, where a pattern would backtrack
        if any(char.isdigit() for char in text[len(kept) :]):
            text = kept
    elif cut_off and (cut := _cut_list(text, problem.answer_type)) is not None:
        text = text[:cut]  # "The answer is yes," of "yes, no, maybe": not an answer
    if not text.strip():
        return None
    think_end = text.rfind(_THINK_END)
    if think_end >= 0:
        after = text[think_end + len(_THINK_END) :]
        if after.strip():
            found = _extract(after, problem)
            if found is not None:
                return found if isinstance(found, Extraction) else None
    found = _extract(text, problem)
    return found if isinstance(found, Extraction) else None


# what a text cut off at its token cap may end in that starts a list: an answer and a
# separator after it, with nothing after that ("yes, no, maybe", "B or C" cut short)
_GOES_ON = r"\s*(?:[,/;&]|\b(?i:or|and)\b)\s*"
_CUT_LIST = {
    AnswerType.YESNO: re.compile(rf"(?:\b(?i:yes|no|maybe)\b{_GOES_ON})+\Z"),
    AnswerType.CHOICE: re.compile(rf"(?:[(\[]?\b[A-Z][)\]]?{_GOES_ON})+\Z"),
}
_LISTED = re.compile(r"\b(?:yes|no|maybe|[A-Z])\b")


def _cut_list(text: str, answer_type: AnswerType) -> int | None:
    """Where a list that ``text`` ends in starts, for answers of ``answer_type``: one
    answer, or several that differ; not one said again and again ("Yes, yes, yes,")."""
    pattern = _CUT_LIST.get(answer_type)
    found = None if pattern is None else pattern.search(text, max(0, len(text) - _MAX_BODY))
    if found is None:
        return None
    said = _LISTED.findall(found[0].lower() if answer_type is AnswerType.YESNO else found[0])
    return None if len(said) > 1 and len(set(said)) == 1 else found.start()


def _extract(text: str, problem: Problem) -> Extraction | _Verdict | None:
    """Apply the rules in priority order; None when none of them found anything."""
    read = _READERS[problem.answer_type]
    for content in reversed(_boxed_contents(text) if "\\" in text else ()):
        if len(content) > _MAX_BODY:
            continue
        reading = read(_clean(content).strip(), problem)
        if reading is not None:
            return _result(reading, "boxed")
    unbolded = _BOLD.sub("", text) if "**" in text or "__" in text else text
    placeholder = _placeholder_is_no_answer(problem)
    for method, body in _phrase_bodies(unbolded):
        if body is _REJECT:  # the last phrase names a list: no rule below may pick from it
            return _REJECT
        if placeholder and _PLACEHOLDER.fullmatch(body):
            continue  # the prompt's "Answer: X" said again: no answer, nor a wrong one
        reading = read(body, problem)
        if reading is not None:
            return _result(reading, method)
    if placeholder:
        text = _without_placeholder_line(text)
    return _FALLBACKS[problem.answer_type](text, problem)


# The prompt asks for "a line 'Answer: X' where X is ..."; a model that writes that line
# as it was shown ("The index is 1.\n\nAnswer: X") has stated its answer before it, if
# at all: the line is read as saying nothing, and the fallbacks read the text above it.
_PLACEHOLDER = re.compile(r"[(\[\"'“‘`*_]*X[)\]\"'”’`*_]*\.?")
# no two repeats next to each other share a character: linear on any line
_PLACEHOLDER_LINE = re.compile(
    r"[ \t>#*_-]*(?i:(?:the[ \t]+)?(?:final[ \t]+)?answer(?:[ \t]+is)?)"
    r"[ \t*_]*(?:[:=][ \t*_]*)?[(\[\"'“‘`]*X[)\]\"'”’`*_]*\.?\s*"
)


def _placeholder_is_no_answer(problem: Problem) -> bool:
    """Whether a lone "X" cannot answer ``problem``: a number, yes or no, or a choice
    without an option X (a free answer may be "X": the chromosome)."""
    kind = problem.answer_type
    if kind is AnswerType.CHOICE:
        return "X" not in (problem.options or {})
    return kind is not AnswerType.FREE


def _without_placeholder_line(text: str) -> str:
    """``text`` without its last line where that line is "Answer: X" as the prompt put it."""
    start = text.rfind("\n", 0, len(text.rstrip())) + 1
    return text[:start] if _PLACEHOLDER_LINE.fullmatch(text, start) else text


def _result(reading: str | _Verdict, method: str) -> Extraction | _Verdict:
    return reading if isinstance(reading, _Verdict) else Extraction(reading, method)


def _clean(text: str) -> str:
    """Drop LaTeX commands, braces, math delimiters and bold/code markdown."""
    if "\\" in text:  # every LaTeX rule starts at a backslash: plain text skips them
        for pattern, replacement in _LATEX_SUBSTITUTIONS[:-1]:
            text = pattern.sub(replacement, text)
    return _MARKUP.sub("", text)


def _boxed_contents(text: str) -> list[str]:
    """The contents of every ``\\boxed{...}``, in order, with nested braces matched."""
    starts = [match.end() for match in _BOXED.finditer(text)]
    if not starts:
        return []
    closing: dict[int, int] = {}  # index after an opening brace -> index of its closing brace
    open_braces: list[int] = []
    # The brace that closes an opening one depends on what follows it alone, so the walk
    # starts at the first box. Where braces are few it goes from brace to brace; where they
    # are many, a step over each character costs less than a search for each brace.
    first = starts[0] - 1
    braces = text.count("{", first) + text.count("}", first)
    walk: Iterable[tuple[int, str]] = (
        enumerate(text[first:], first)
        if braces * _SPARSE_BRACES > len(text) - first
        else ((brace.start(), brace[0]) for brace in _BRACE.finditer(text, first))
    )
    for index, char in walk:
        if char == "{":
            open_braces.append(index + 1)
        elif char == "}" and open_braces:
            closing[open_braces.pop()] = index
    return [text[start : closing[start]] for start in starts if start in closing]


def _phrase_bodies(text: str) -> Iterator[tuple[str, str | _Verdict]]:
    """(method, prepared body) of each answer phrase, last first; bodies saying nothing skipped,
    and :data:`_REJECT` for a phrase over a list.

    The last phrase usually says the answer, so the "answer" phrases are found from the end
    and only as far back as their bodies are read."""
    # Each phrase has a word it cannot do without: a pattern runs only where its word is
    # (as the patterns' IGNORECASE finds it), which spares most of the scans. The lower-cased
    # text has each word just where IGNORECASE finds it, where :func:`_lowered` gives it; the
    # casefolded text has each word wherever IGNORECASE finds it (and some more).
    lowered = _lowered(text)
    keys = text.translate(_ODD_AS_ASCII).casefold() if lowered is None else lowered
    said = "answer" in keys  # one search of the text for both
    answers = _answer_spans(text, lowered) if said else iter(())
    headings = said and "final" in keys
    options = _has_option_word(keys)
    if (headings or options) and lowered is not None:
        # Headings and option phrases start at or before a word of theirs: the answer phrases
        # from the last of those words on come first (as :func:`_merged` orders them), and
        # are read before the others are sought.
        pending = next(answers, None)
        if pending is not None:
            latest = max(map(lowered.rfind, _OTHER_WORDS))
            while pending is not None and pending[0] >= latest:
                if body := _body_at(text, pending[1]):
                    yield pending[2], body
                pending = next(answers, None)
            if pending is not None:
                answers = itertools.chain((pending,), answers)
    others = _other_phrases(text, lowered, headings, options) if headings or options else []
    for _, end, method in _merged(answers, others) if others else answers:
        body = _body_at(text, end)
        if body:
            yield method, body


def _other_phrases(text: str, lowered: str | None, headings: bool, options: bool) -> list[_Phrase]:
    """The "Final Answer" headings and the option phrases of ``text`` (where sought), last first."""
    others: list[_Phrase] = []  # in the order they are found, for the sort to keep
    if headings:
        others += [(m.start(), m.end(), "final-answer") for m in _FINAL_HEADING.finditer(text)]
    if options:
        others += [(m.start(), m.end(), "correct-option") for m in _correct_options(text, lowered)]
        others += [(m.start(), m.end(), "correct-option") for m in _options_named(text, lowered)]
    others.sort(key=_start, reverse=True)
    return others


_Phrase = tuple[int, int, str]  # start, end and method of an answer phrase


def _start(phrase: _Phrase) -> int:
    return phrase[0]


def _has_option_word(keys: str) -> bool:
    """Whether ``keys`` has a word that every :data:`_CORRECT_OPTION` match has (a search for
    each word is quicker than one of a pattern of them all)."""
    for word in _OPTION_WORDS:
        if word in keys:
            return True
    return "go" in keys and "with" in keys


def _merged(answers: Iterator[_Phrase], others: list[_Phrase]) -> Iterator[_Phrase]:
    """The phrases of ``answers`` and ``others``, each last first, in one order, last first.

    No two phrases start at one place (each starts at a word of its own, or a heading at
    its line's start); an answer phrase would come first."""
    pending = next(answers, None)
    for other in others:
        while pending is not None and pending[0] >= other[0]:
            yield pending
            pending = next(answers, None)
        yield other
    if pending is not None:
        yield pending
        yield from answers


def _lowered(text: str) -> str | None:
    """``text.lower()``, where each ASCII word of the patterns is exactly where IGNORECASE
    finds it in ``text``; None for a text with one of :data:`_ODD_CASES` (full scans then)."""
    if not text.isascii() and any(odd in text for odd in _ODD_CASES):
        return None
    lowered = text.lower()
    return lowered if len(lowered) == len(text) else None


def _matches_at(
    pattern: re.Pattern[str], text: str, starts: Iterable[int]
) -> Iterator[re.Match[str]]:
    """What ``pattern.finditer(text)`` finds, where every match starts at one of ``starts``."""
    floor = 0
    for start in sorted(set(starts)):
        if start >= floor and (match := pattern.match(text, start)) is not None:
            floor = match.end()
            yield match


def _found(lowered: str, words: tuple[str, ...]) -> list[int]:
    """Where each of ``words`` starts in ``lowered``."""
    found: list[int] = []
    for word in words:
        at = lowered.find(word)
        while at >= 0:
            found.append(at)
            at = lowered.find(word, at + 1)
    return found


def _correct_options(text: str, lowered: str | None) -> Iterator[re.Match[str]]:
    """``_CORRECT_OPTION.finditer(text)``, tried only one and two words before its words."""
    if lowered is None:
        yield from _CORRECT_OPTION.finditer(text)
        return
    words = _found(lowered, _OPTION_WORDS)
    if "go" in lowered:  # where "go with" may be
        words += [go.start() for go in _GO_WITH.finditer(lowered)]
    # "I'll choose", "I'd go with": the word before the verb is "ll" or "d", after a quote
    starts: list[int] = _found(lowered, _CONTRACTED_I)
    for at in words:
        before = _word_before(text, at)
        if before is not None:
            starts.append(before[0])
            second = _word_before(text, before[0])
            if second is not None:
                starts.append(second[0])
    yield from _matches_at(_CORRECT_OPTION, text, starts)


def _options_named(text: str, lowered: str | None) -> Iterator[re.Match[str]]:
    """``_OPTION_IS_CORRECT.finditer(text)``, tried only where its words are."""
    if lowered is None:
        return _OPTION_IS_CORRECT.finditer(text)
    return _matches_at(_OPTION_IS_CORRECT, text, _found(lowered, _LETTER_OPTION_WORDS))


def _answer_spans(text: str, lowered: str | None) -> Iterator[_Phrase]:
    """Each match of :data:`_ANSWER_IS` and of :data:`_ANSWER_LABEL`, last first.

    Each "answer" that :data:`_ANSWER_AT` matches ends one match of them, one of
    :data:`_ANSWER_IS` where it can, which starts where the qualifiers before it start. A
    match ends in "is", "be", "=", ":" or spaces, none of which goes on a run of qualifiers,
    so one match never bounds another: each "answer" is read alone, from the last."""
    for found in _answers_last_first(text, lowered):
        answer = found.start()
        if found["aside"] is not None:
            start = _qualifiers_start(text, lowered, answer)
            if start < answer:  # "the correct answer, D, ...", never a bare "answer, A,"
                final = "final" in text[start:answer].lower()
                yield start, found.end(), "final-answer" if final else "answer-is"
        elif found["is"] is not None:
            start = _qualifiers_start(text, lowered, answer)
            final = "final" in text[start:answer].lower()  # what the qualifiers group holds
            yield start, found.end(), "final-answer" if final else "answer-is"
        else:
            start = _final_start(text, lowered, answer)
            yield start, found.end(), "answer-label" if start == answer else "final-answer"


def _answers_last_first(text: str, lowered: str | None) -> Iterator[re.Match[str]]:
    """The matches of :data:`_ANSWER_AT` in ``text``, last first (none holds another "answer")."""
    if lowered is None:
        yield from reversed(list(_ANSWER_AT.finditer(text)))
        return
    at = lowered.rfind("answer")
    while at >= 0:
        if (found := _ANSWER_AT.match(text, at)) is not None:
            yield found
        at = lowered.rfind("answer", 0, at)


def _qualifiers_start(text: str, lowered: str | None, answer: int) -> int:
    """Where the run of :data:`_ANSWER_IS`'s qualifiers that ends at ``answer`` starts."""
    if not _may_follow(text, lowered, answer, _QUALIFIER_WORDS):
        return answer
    start = answer
    while (word := _word_before(text, start)) is not None:
        if not _QUALIFIER.fullmatch(text, *word):
            break
        word_start = word[0]
        if _LIKELY.fullmatch(text, *word):  # "most likely" is one qualifier
            most = _word_before(text, word_start)
            if most is not None and _MOST.fullmatch(text, *most):
                word_start = most[0]
        start = word_start
    return start


def _final_start(text: str, lowered: str | None, answer: int) -> int:
    """Where the "final" of :data:`_ANSWER_LABEL` before ``answer`` starts, if it is there."""
    if not _may_follow(text, lowered, answer, ("final",)):
        return answer
    word = _word_before(text, answer)
    return word[0] if word is not None and _FINAL.fullmatch(text, *word) else answer


def _may_follow(text: str, lowered: str | None, position: int, words: tuple[str, ...]) -> bool:
    """False where the word :func:`_word_before` finds is surely none of ``words``.

    Most phrases have no qualifier ("The answer is"): this spares them the walk over the word
    before. ``lowered`` (see :func:`_lowered`) ends with a word where IGNORECASE finds it."""
    if lowered is None:
        return True
    i = position
    while i > 0 and text[i - 1].isspace():
        i -= 1
    return i < position and lowered.endswith(words, 0, i)


def _word_before(text: str, position: int) -> tuple[int, int] | None:
    """Start and end of the whole word (``\\w+``) that whitespace (``\\s+``) separates from
    ``position``; None when there is none."""
    i = position
    while i > 0 and text[i - 1].isspace():
        i -= 1
    if i == position:
        return None
    end = i
    while i > 0 and ((char := text[i - 1]).isalnum() or char == "_"):  # what \w matches
        i -= 1
    return None if i == end else (i, end)


def _body_at(text: str, position: int) -> str | _Verdict | None:
    """The answer after a phrase: the rest of its line, or the next non-empty line;
    :data:`_REJECT` where that line is an item of a list ("Final Answer:" over "A. …" and
    "B. …"): the phrase names no one answer, and none of the list's items is it."""
    body = _prepare(_line_from(text, position))
    if body == "":
        line_end = text.find("\n", position, position + _MAX_BODY)
        following = _NON_SPACE.search(text, line_end) if line_end >= 0 else None
        if following is None:
            return body
        position = following.start()
        body = _prepare(_line_from(text, position))
    if body and _opens_list(text, position):
        return _REJECT
    return body


def _opens_list(text: str, position: int) -> bool:
    """Whether the line from ``position`` is a list's item ("A. …", "(2) …") and the next
    non-empty line the item after it: a phrase over a list names no one answer."""
    item = _ITEM_MARKER.match(text, position)
    if item is None:
        return False
    line_end = text.find("\n", position)
    following = _NON_SPACE.search(text, line_end) if line_end >= 0 else None
    after = None if following is None else _ITEM_MARKER.match(text, following.start())
    return after is not None and _marker(after) == _next_marker(_marker(item))


def _marker(item: re.Match[str]) -> str:
    return item[1] or item[2]


def _next_marker(marker: str) -> str:
    """The marker of the item after ``marker``'s: "B" after "A", "3" after "2"."""
    return str(int(marker) + 1) if marker.isdigit() else chr(ord(marker) + 1)


def _line_from(text: str, position: int) -> str:
    """``text`` from ``position`` to the end of that line, at most :data:`_MAX_BODY` characters."""
    limit = position + _MAX_BODY
    line_end = text.find("\n", position, limit)
    return text[position : limit if line_end < 0 else line_end]


def _prepare(raw: str) -> str | None:
    """Clean a phrase body and strip fillers; resolve "not A, it is B"; None if not an answer."""
    body = _LEADING_FILLER.sub("", _clean(raw).strip())
    if _NEGATION.match(body):
        correction = _CORRECTION.search(body)
        if correction is None:
            return None
        body = _LEADING_FILLER.sub("", body[correction.end() :])
    if _NOT_AN_ANSWER.match(body):
        return None
    return body.strip()


def _undecorated(line: str) -> str:
    """``line`` without markdown decoration (spaces, quote marks, bullets, bold) around it."""
    start = _LINE_DECORATION.match(line)
    line = line[start.end() :] if start else line
    end = len(line)
    while end and (line[end - 1].isspace() or line[end - 1] in "*_"):
        end -= 1
    return line[:end]


def _tail_lines(text: str, count: int) -> list[str]:
    """The last ``count`` non-empty lines of ``text`` without markdown decoration."""
    tail: list[str] = []
    for line in reversed(text.splitlines()):
        if cleaned := _undecorated(_clean(line)):
            tail.append(cleaned)
            if len(tail) == count:
                break
    tail.reverse()
    return tail


# --- choice ----------------------------------------------------------------------------------


def _read_choice(body: str, problem: Problem) -> _Reading:
    """The option letter that ``body`` names, tried in the order of the module docstring."""
    options = problem.options or {}
    if quoted := _QUOTED.match(body):  # "'D'", "“C.”": the quotes name no option
        body = quoted[1] + body[quoted.end() :]
    letter = _letter_in(body, options)
    if letter is not None:
        return letter
    text = _normalise(body)
    return (
        _option_starting(text, options)
        or _only_mentioned_letter(body, options)
        or _only_contained_option(text, options)
    )


def _letter_in(body: str, options: dict[str, str]) -> _Reading:
    """The letter ``body`` starts with; _REJECT when it is not an option or another follows."""
    match = (
        _PAREN_LETTER.match(body)
        or _PUNCT_LETTER.match(body)
        or _LONE_LOWER_LETTER.fullmatch(body)
        or _spaced_letter(body, options)
    )
    if match is None:
        return None
    if _SECOND_LETTER.match(body, match.end()):
        return None
    letter = match[1].upper()
    if letter not in options or _names_another(body[match.end() :], letter, options):
        return _REJECT
    return letter


def _names_another(rest: str, letter: str, options: dict[str, str]) -> bool:
    """Whether ``rest``, what follows an option's letter, starts with another option's text
    and not its own: "A. Guanine" where Guanine is B says two answers, and which one it
    means it does not say. Another option whose text starts its own does not count: "B.
    Aspirin plus clopidogrel" where B is "Aspirin and clopidogrel" and A "Aspirin" is B
    said in other words."""
    text = _normalise(rest.lstrip(_AFTER_LETTER))
    own = _normalise(options[letter])
    if not text or _starts_with_phrase(text, own):
        return False
    for other, option in options.items():
        norm = _normalise(option)
        if (
            other != letter
            and len(norm) >= _MIN_CONTAINED_OPTION
            and _starts_with_phrase(text, norm)
            and not _starts_with_phrase(own, norm)
        ):
            return True
    return False


def _spaced_letter(body: str, options: dict[str, str]) -> re.Match[str] | None:
    """Match "B Hypotonic lower lip" or "B is correct", but not "I think" or "A patient"."""
    match = _SPACED_LETTER.match(body)
    if match is None:
        return None
    rest = _normalise(match[2])
    if match[1] == "I" and _PRONOUN_VERB.match(rest):
        return None
    option = options.get(match[1])
    if _LETTER_VERB.match(rest) or (option is not None and rest.startswith(_normalise(option))):
        return match
    return None


def _option_starting(text: str, options: dict[str, str]) -> str | None:
    """The option whose whole (normalised) text ``text`` is or starts with; the longest wins."""
    starts = [
        (len(norm), letter)
        for letter, option in options.items()
        if (norm := _normalise(option)) and _starts_with_phrase(text, norm)
    ]
    if not starts:
        return None
    longest = max(length for length, _ in starts)
    letters = {letter for length, letter in starts if length == longest}
    return letters.pop() if len(letters) == 1 else None


def _only_mentioned_letter(body: str, options: dict[str, str]) -> str | None:
    """The one option letter that ``body`` writes as "(X)" or "option X", if just one."""
    letters = {m[1] or m[2] for m in _MENTIONED_LETTER.finditer(body)} & options.keys()
    return letters.pop() if len(letters) == 1 else None


def _only_contained_option(text: str, options: dict[str, str]) -> str | None:
    """The single option whose text occurs in ``text`` as a phrase (nested matches dropped)."""
    spans: list[tuple[int, int, str]] = []
    for letter, option in options.items():
        norm = _normalise(option)
        if len(norm) >= _MIN_CONTAINED_OPTION:
            spans.extend((start, start + len(norm), letter) for start in _phrases(text, norm))
    outer = {
        letter
        for start, end, letter in spans
        if not any(s <= start and end <= e and (s, e) != (start, end) for s, e, _ in spans)
    }
    return outer.pop() if len(outer) == 1 else None


def _phrases(text: str, phrase: str) -> Iterator[int]:
    """Start indices of ``phrase`` in ``text`` where it is not part of a longer word."""
    start = text.find(phrase)
    while start >= 0:
        end = start + len(phrase)
        if (start == 0 or not text[start - 1].isalnum()) and (
            end == len(text) or not text[end].isalnum()
        ):
            yield start
        start = text.find(phrase, start + 1)


def _starts_with_phrase(text: str, phrase: str) -> bool:
    return text.startswith(phrase) and (len(text) == len(phrase) or not text[len(phrase)].isalnum())


def _normalise(text: str) -> str:
    """Case-folded text with single spaces and no trailing full stop, where a curly
    apostrophe or quote is a straight one, a dash a hyphen, an accented letter the plain
    one, and markdown's emphasis is gone ("Crohn’s" is "crohn's", "*Campylobacter*"
    "campylobacter", "Ménière" "meniere")."""
    if not text.isascii():
        text = unicodedata.normalize("NFKD", text.translate(_FOLDED))
        text = "".join(char for char in text if not unicodedata.combining(char))
    if "*" in text or "`" in text:
        text = text.replace("*", "").replace("`", "")
    return " ".join(text.split()).casefold().rstrip(".").strip()


_FOLDED = str.maketrans(
    {"’": "'", "‘": "'", "ʼ": "'", "“": '"', "”": '"', "–": "-", "—": "-", "‐": "-", "‑": "-"}
)


def _choice_fallback(text: str, problem: Problem) -> Extraction | _Verdict | None:
    """A lone letter (or "(C)", "C.", "C)" at line start) near the end, else an option's text
    on the final line (unless that numbers the line as a list's item, or names another
    option by its letter). A lone letter right after the item of the letter before it
    ("H. Colonoscopy now" then "I") is the list going on, cut off: no answer."""
    options = problem.options or {}
    tail = _tail_lines(text, _TAIL_LINES)
    own_line = {
        letter
        for i, line in enumerate(tail)
        if (m := _OWN_LINE_LETTER.fullmatch(line) or _CONCLUDED_LETTER.fullmatch(line))
        and not _continues_list(tail, i, letter := m[m.lastindex or 0])
    }
    if tail and (labelled := _LABELLED_LETTER.fullmatch(tail[-1])):
        own_line.add(labelled[1])
    line_start = {  # each letter with what follows it on its (last) line
        m[1] or m[2]: line[m.end() :] for line in tail if (m := _LINE_START_LETTER.match(line))
    }
    for letters in (own_line & options.keys(), line_start.keys() & options.keys()):
        if len(letters) == 1:
            letter = letters.pop()
            if _names_another(line_start.get(letter, ""), letter, options):
                return _REJECT  # "D. Fibula" where Fibula is C
            return Extraction(letter, "bare-letter")
        if letters:  # several, unless the last line is an item that says it is right
            claimed = _claimed_item(tail[-1], options)
            return _REJECT if claimed is None else Extraction(claimed, "bare-letter")
    if not tail or _LIST_ITEM.match(tail[-1]):  # a list's item names no answer: "2. Methadone"
        return None
    claimed = _claimed_letter(tail[-1])
    if claimed is not None:
        return Extraction(claimed, "bare-letter") if claimed in options else _REJECT
    last = _normalise(tail[-1])
    for letter, option in options.items():
        if last == _normalise(option):
            return Extraction(letter, "option-text")
    contained = _only_contained_option(last, options)
    named = {m[1] or m[2] for m in _MENTIONED_LETTER.finditer(tail[-1])} & options.keys()
    if contained is None or named - {contained}:  # "Amino acid …, so option D is right"
        return None
    return Extraction(contained, "option-text")


def _claimed_letter(line: str) -> str | None:
    """The letter the last sentence of ``line``, all of it, says is right ("B is the
    correct answer.", "Therefore, option C is correct.")."""
    for start in _SENTENCE_START.finditer(line):
        sentence = _LEADING_FILLER.sub("", line[start.end() :])
        if (last := _LETTER_CLAIMED.match(sentence) or _LETTER_CHOSEN.match(sentence)) is not None:
            return last[1]
        match = _CLAIMED_LETTER.match(sentence)
        # "I was right", "I was correct": the one who wrote it, not option I
        if match is not None and not (
            match[2] == "I"
            and not match["option"]
            and (match["verb"].lower() == "was" or not match["noun"].lower().startswith("the"))
        ):
            return match[2]
    return None


def _claimed_item(line: str, options: dict[str, str]) -> str | None:
    """The letter of ``line`` where all of it is an option's item saying it is right: "D.
    Olecranon fracture is the correct answer." under "C. Monteggia fracture" names D."""
    marker = _LINE_START_LETTER.match(line)
    if marker is None or (letter := marker[1] or marker[2]) not in options:
        return None
    rest = _normalise(line[marker.end() :].lstrip(_AFTER_LETTER))
    own = _normalise(options[letter])
    if not own or not _starts_with_phrase(rest, own):
        return None
    return letter if _ITEM_CLAIMED.fullmatch(rest, len(own)) else None


def _continues_list(tail: list[str], index: int, letter: str) -> bool:
    """Whether the line before ``tail[index]`` (a lone ``letter``) is the item before it."""
    before = _LINE_START_LETTER.match(tail[index - 1]) if index else None
    return before is not None and _next_marker(_marker(before)) == letter


# --- yes / no / maybe ------------------------------------------------------------------------


def _read_yesno(body: str, problem: Problem) -> _Reading:
    """The yes/no/maybe ``body`` starts with, else the only one in its first sentence."""
    first = _YESNO_FIRST.match(body)
    if first is not None:
        return first[1].lower()
    sentence = _SENTENCE_END.split(body, maxsplit=1)[0]
    words = _yesno_words(sentence)
    return words.pop() if len(words) == 1 else None


def _yesno_fallback(text: str, problem: Problem) -> Extraction | None:
    """The yes/no/maybe word of the final line, where it names only one: a line that names
    two ("Yes, no, maybe.", "No, it is too early to say yes") is no answer, nor is the last
    item of a list whose items name others ("A) Yes", "B) No"). A final line naming none
    leaves a line near the end that is the word alone ("No." over the reason for it)."""
    tail = _tail_lines(text, _TAIL_LINES)
    words = _yesno_words(tail[-1]) if tail else set()
    if not words:  # "No.\nThe study found no difference.": a line of the word alone
        alone = {m[1].lower() for line in tail if (m := _YESNO_ALONE.fullmatch(line))}
        return Extraction(alone.pop(), "yesno-word") if len(alone) == 1 else None
    if len(words) != 1:
        return None
    for line in reversed(tail[:-1] if _ITEM.match(tail[-1]) else []):
        if not _ITEM.match(line):
            break
        if _yesno_words(line) - words:
            return None
    return Extraction(words.pop(), "yesno-word")


def _yesno_words(line: str) -> set[str]:
    """The yes/no/maybe words ``line`` answers with: not one used as a word of its sentence,
    between a word and a word ("there is no doubt", "found no significant difference", "a
    yes answer"), unless a reason follows it ("I would say no because …")."""
    return {
        match[1].lower()
        for match in _YESNO_WORD.finditer(line)
        if not (_word_ends_at(line, match.start()) and _WORD_AFTER.match(line, match.end()))
    }


def _word_ends_at(line: str, at: int) -> bool:
    """Whether a word and spaces end at ``at`` (a scan back over the spaces alone, where a
    search of the line up to each yes/no word took time of the line's length squared)."""
    start = at
    while start > 0 and line[start - 1].isspace():
        start -= 1
    return 0 < start < at and line[start - 1].isalpha()


# --- numeric ---------------------------------------------------------------------------------


def _read_numeric(body: str, problem: Problem) -> _Reading:
    """The number ``body`` states: the first after its last ``=``, where that part holds one;
    else its leading number ("about 7 points"). A sentence with several numbers states the
    first that an "is" or ":" leads to ("… a heart rate of 74 bpm … is 330 msec": 330), or,
    where none does, its first ("a score of 4 (2 for age, 2 for HR)": 4)."""
    lead = _STATED_NUMBER.match(body)
    result = _RESULT_SEPARATOR.search(body)
    if result is not None and not (lead is not None and _explains(body, result.start())):
        pieces = _RESULT_SEPARATOR.split(body)
        if NUMBER_TOKEN.search(pieces[-1]):
            return _first_number(pieces[-1])
    if lead is None and len(NUMBER_TOKEN.findall(body)) > 1:
        for separator in _STATEMENT_SEPARATOR.finditer(body):
            stated = _STATED_NUMBER.match(body, separator.end())
            if stated is not None:
                return _first_number(body[stated.end() :])
    return _first_number(body)


def _explains(text: str, at: int) -> bool:
    """Whether the ``=`` at ``at`` is in an explanation of a number stated before it, in
    brackets or after a comma ("356 msec (QTc = QT + 1.75 × 15)", "24.2, given weight =
    70 kg"), not the result of a sum the text works out ("70 / 1.75² = 22.9")."""
    before = text[:at]
    if before.count("(") + before.count("[") > before.count(")") + before.count("]"):
        return True
    clause = max(before.rfind(","), before.rfind(";"))
    return clause >= 0 and NUMBER_TOKEN.search(before, 0, clause) is not None


def _first_number(segment: str) -> _Reading:
    match = NUMBER_TOKEN.search(segment)
    if match is None:
        return None
    value = token_value(match)
    return _REJECT if value is None else canonical_number(value)


def _numeric_fallback(text: str, problem: Problem) -> Extraction | _Verdict | None:
    """The number stated at the end of the final line ("... is about 1.71"), or its only
    number (unless that numbers the line as a list's item: "5. She has no history of ...").

    The stated number must follow its "is" or "=": "... which is a 2015 study" states none.
    """
    tail = _tail_lines(text, 1)
    if not tail:
        return None
    line = tail[-1]
    separators = [  # an "=" that explains a number stated before it states none
        s
        for s in _STATEMENT_SEPARATOR.finditer(line)
        if not (_RESULT_SEPARATOR.fullmatch(s[0]) and _explains(line, s.start()))
    ]
    if separators:
        stated = line[separators[-1].end() :]
        lead = _STATED_NUMBER.match(stated)
        reading = None if lead is None else _first_number(stated[lead.end() :])
    elif len(NUMBER_TOKEN.findall(line)) == 1 and not _LIST_ITEM.match(line):
        reading = _first_number(line)
    else:
        reading = None
    return None if reading is None else _result(reading, "number")


# --- free ------------------------------------------------------------------------------------


def _read_free(body: str, problem: Problem) -> str | None:
    """The body itself, without decoration or a final full stop."""
    answer = body.strip(" \t*_\"'").rstrip(".").strip()
    return answer or None


def _free_fallback(text: str, problem: Problem) -> Extraction | None:
    """The whole text, when it is a single line."""
    lines = _tail_lines(text, 2)  # two say it is not one line
    if len(lines) != 1:
        return None
    answer = _read_free(lines[0], problem)
    return None if answer is None else Extraction(answer, "whole-text")


_READERS: dict[AnswerType, _Reader] = {
    AnswerType.CHOICE: _read_choice,
    AnswerType.YESNO: _read_yesno,
    AnswerType.NUMERIC: _read_numeric,
    AnswerType.FREE: _read_free,
}
_FALLBACKS: dict[AnswerType, Callable[[str, Problem], Extraction | _Verdict | None]] = {
    AnswerType.CHOICE: _choice_fallback,
    AnswerType.YESNO: _yesno_fallback,
    AnswerType.NUMERIC: _numeric_fallback,
    AnswerType.FREE: _free_fallback,
}
