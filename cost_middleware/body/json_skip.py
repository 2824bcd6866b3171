"""Regexes that pass over complete JSON values in one C-level match, read forwards or reversed."""

from __future__ import annotations

import re

_ATOM = rb'[^"\[\]{}]++'
_STRING = rb'"(?:[^"\\]++|\\.)*+"'
#: A string in reversed text (its closing quote first): a quote followed by an odd run of
#: backslashes was escaped; the first one followed by an even run (none, in JSON) opened it.
REVERSED_STRING = rb'"(?:[^"]++|"(?=\\(?:\\\\)*+(?!\\)))*+"'


def skip_pattern(levels: int, *, reverse: bool = False) -> re.Pattern[bytes]:
    """A match of everything up to the next bracket that does not close within the text.

    Whole strings (which may hold brackets) and whole containers up to ``levels`` deep are
    consumed in one C-level match, so a complete element costs a couple of calls. The match
    stops before a closing bracket, before an opening one whose container is not complete (or
    deeper), and before a string that is not complete yet. Possessive repeats never backtrack,
    so a failed attempt costs linear time. Brackets are not paired by kind: validating JSON is
    the extractor's parser's job. ``reverse``: the same over reversed text, where closing
    brackets open.
    """
    if reverse:
        opening, closing, string = rb"[\]}]", rb"[\[{]", REVERSED_STRING
    else:
        opening, closing, string = rb"[\[{]", rb"[\]}]", _STRING
    atom = _ATOM + rb"|" + string
    container = opening + rb"(?:" + atom + rb")*+" + closing
    for _ in range(levels - 1):
        container = opening + rb"(?:" + atom + rb"|" + container + rb")*+" + closing
    return re.compile(rb"(?:" + atom + rb"|" + container + rb")*+", re.DOTALL)
