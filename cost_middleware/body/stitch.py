"""A JSON document too large to hold, read from its first and last bytes as one smaller one.

:func:`stitched` joins the head (a document's first bytes) and the tail (its last bytes)
inside containers open in both, dropping what lay between, and yields the joined documents
that may parse, deepest join first. A provider's large answer is large in its middle (the
text, the output items, the embeddings) while its shape, model and usage sit at its ends:
``{"model": ..., "choices": [{"message": {"role": ..., | ..."}}], "usage": {...}}`` becomes
``{"model": ..., "choices": [{"message": {"role": ...}}], "usage": {...}}``.

Both ends are read exactly. The head forwards, from the document's start. The tail
backwards, from the document's end: reversed, a string starts at its closing quote, and a
quote is escaped exactly when an odd run of backslashes precedes it, which the tail shows
once its first bytes up to a byte that is no backslash are set aside. So every member the
joined document keeps from the tail (``usage`` above) is one the document had at that
level, never text of the dropped middle that looks like one. Each end is walked down the
containers it leaves open, a match of the regexes in :mod:`~cost_middleware.body.json_skip`
per level; the head is cut before its last member at a level, the tail after its first
one, and the two are joined where their open containers are of the same kinds.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from cost_middleware.body.json_skip import REVERSED_STRING, skip_pattern

_FORWARD = skip_pattern(8)
_BACKWARD = skip_pattern(8, reverse=True)
_WS = re.compile(rb"[ \t\r\n]*")
#: In reversed text, what precedes a member of the head: its key, if an object's, then the
#: comma or the bracket before it.
_BEFORE_MEMBER = re.compile(
    rb"[ \t\r\n]*(?::[ \t\r\n]*" + REVERSED_STRING + rb"[ \t\r\n]*)?[,\[{]", re.DOTALL
)
#: What follows a member of the tail: the comma before the next one.
_AFTER_MEMBER = re.compile(rb"[ \t\r\n]*,")
#: Containers followed down one end (provider bodies nest about a dozen deep).
MAX_DEPTH = 64
#: Regex matches spent on one end: nesting deeper than the regexes take whole costs one each.
MAX_STEPS = 1024
#: Joins tried, deepest first.
MAX_JOINS = 4
#: A closing bracket read reversed stands for the container it closes.
_OPENER_OF = {ord("]"): ord("["), ord("}"): ord("{")}


def stitched(head: bytes, tail: bytes) -> Iterator[bytes]:
    """Documents made of the start of ``head`` and the end of ``tail`` (first and last bytes
    of one document that lie apart), the deepest join first; none when they share no open
    container (or either end is not JSON-shaped)."""
    start = next((i for i, byte in enumerate(tail) if byte != 0x5C), None)
    if start is None:
        return
    tail = tail[start + 1 :]
    reversed_head = head[::-1]
    reversed_tail = tail[::-1]
    heads = _open_path(head, _FORWARD, b"[{", b"]}")
    tails = _open_path(reversed_tail, _BACKWARD, b"]}", b"[{")
    if heads is None or tails is None:
        return
    size, tail_size = len(head), len(tail)
    joins = 0
    for depth in range(_shared_depth(heads, tails) - 1, -1, -1):
        head_child, tail_child = heads[depth][1], tails[depth][1]
        if head_child < 0 or tail_child < 0:
            continue
        before = _BEFORE_MEMBER.match(reversed_head, size - head_child)
        after = _AFTER_MEMBER.match(tail, tail_size - tail_child)
        if before is None or after is None:
            continue
        yield head[: size - before.end() + 1] + tail[after.end() :]
        joins += 1
        if joins == MAX_JOINS:
            return


def _shared_depth(heads: list[list[int]], tails: list[list[int]]) -> int:
    """How many of the outermost open containers the two ends agree on, by kind."""
    depth = 0
    for (head_kind, _), (tail_kind, _) in zip(heads, tails, strict=False):
        if head_kind != _OPENER_OF[tail_kind]:
            break
        depth += 1
    return depth


def _open_path(
    text: bytes, skip: re.Pattern[bytes], opening: bytes, closing: bytes
) -> list[list[int]] | None:
    """The containers still open at the end of ``text``, outermost first: each as its
    bracket and where its member cut by the end of ``text`` starts (-1 when the text ends
    between members or inside a number). None when ``text`` does not open a container,
    closes all it opened, or is nested beyond the limits."""
    n = len(text)
    pos = _WS.match(text).end()  # type: ignore[union-attr]  # always matches
    if pos == n or text[pos] not in opening:
        return None
    path = [[text[pos], -1]]
    pos += 1
    for _ in range(MAX_STEPS):
        found = skip.match(text, pos).end()  # type: ignore[union-attr]  # always matches
        if found == n:
            return path
        byte = text[found]
        pos = found + 1
        if byte in closing:
            # A container nested deeper than the regex takes whole has ended.
            path.pop()
            if not path:
                return None
            path[-1][1] = -1
            continue
        path[-1][1] = found
        if byte == 0x22:  # a string the end of the text cuts
            return path
        if len(path) == MAX_DEPTH:
            return None
        path.append([byte, -1])
    return None
