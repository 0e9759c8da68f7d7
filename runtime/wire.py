"""Reading request bodies from the outside world, bounded, failing with one error.

Every webhook body goes through here once its signature is verified (or, for a form,
to get the params the signature covers): JSON no deeper than :data:`MAX_DEPTH`, with
no number longer than :data:`MAX_NUMBER_CHARS` and no ``NaN``/``Infinity``; forms
with at most :data:`MAX_FORM_FIELDS` fields of at most :data:`MAX_FORM_CHARS`
characters. Whatever cannot be read raises :class:`WireError` (a ``ValueError``),
never ``RecursionError`` or the interpreter's int-string limit, so a handler maps
one exception to 400 (and :class:`WireTooLarge` to 413).
"""

from __future__ import annotations

import json
import math
import re
from itertools import accumulate
from typing import Any
from urllib.parse import parse_qsl

MAX_DEPTH = 64
"""Nested arrays/objects; no provider nests a tenth of that."""
MAX_NUMBER_CHARS = 100
"""Characters of one JSON number (Python refuses ints of over 4,300 digits by raising)."""
MAX_FORM_FIELDS = 200
MAX_FORM_CHARS = 16 * 1024
"""Characters of one form field's name or value."""


class WireError(ValueError):
    """A body that cannot be read as what the endpoint takes: answer 400."""


class WireTooLarge(WireError):
    """A body over one of the bounds (too many fields, a value too long): answer 413."""


PARSE_ERRORS: tuple[type[Exception], ...] = (
    ValueError,  # WireError, json.JSONDecodeError, UnicodeDecodeError, int-string limit
    RecursionError,
    OverflowError,  # int(float("inf"))
    LookupError,  # KeyError, IndexError, an unknown charset
    TypeError,
    AttributeError,
)
"""What decoding an untrusted, already verified body may raise in code not written
against :func:`loads_bounded` (a provider SDK's parser): catch these, answer 400."""

_ESCAPE = re.compile(rb"\\.", re.DOTALL)  # a backslash and the byte it escapes
_NOT_BRACKET = re.compile(rb"[^\[\]{}]+")
_STEP = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}


def json_depth(raw: bytes) -> int:
    """How deep the arrays and objects of ``raw`` nest, brackets in strings not counted.

    Exact for valid JSON; for invalid JSON never less than what a parser reaches before
    it fails. Linear, in C: escapes dropped, then every other run between quotes (the
    strings), then everything but brackets.
    """
    outside = b"".join(_ESCAPE.sub(b"", raw).split(b'"')[::2])
    brackets = _NOT_BRACKET.sub(b"", outside)
    if not brackets:
        return 0
    return max(0, max(accumulate(map(_STEP.__getitem__, brackets))))


def _int(text: str) -> int:
    if len(text) > MAX_NUMBER_CHARS:
        raise WireError(f"a number of {len(text)} characters")
    return int(text)


def _float(text: str) -> float:
    if len(text) > MAX_NUMBER_CHARS:
        raise WireError(f"a number of {len(text)} characters")
    value = float(text)
    if not math.isfinite(value):
        raise WireError(f"a number out of range: {text[:20]}")
    return value


def _constant(name: str) -> Any:
    raise WireError(f"{name} is not JSON")


def loads_bounded(raw: bytes | str, *, max_depth: int = MAX_DEPTH) -> Any:
    """Decode a JSON body (UTF-8, a leading BOM tolerated) within the bounds above.

    Raises :class:`WireError` for anything else: invalid UTF-8, invalid JSON, nesting
    deeper than ``max_depth``, a number longer than :data:`MAX_NUMBER_CHARS`
    characters or out of float range, ``NaN``/``Infinity``.
    """
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    depth = json_depth(data)
    if depth > max_depth:
        raise WireError(f"JSON nested {depth} deep (limit {max_depth})")
    try:
        text = data.decode("utf-8-sig")
        return json.loads(text, parse_int=_int, parse_float=_float, parse_constant=_constant)
    except WireError:
        raise
    except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError
        raise WireError(f"not JSON: {type(e).__name__}: {str(e)[:200]}") from None


def parse_form(
    raw: bytes,
    *,
    charset: str = "utf-8",
    max_fields: int = MAX_FORM_FIELDS,
    max_chars: int = MAX_FORM_CHARS,
) -> list[tuple[str, str]]:
    """Decode an ``application/x-www-form-urlencoded`` body into its (name, value) pairs.

    In order, repeated names kept, ``+`` as a space, blank values kept (as aiohttp's
    ``request.post()`` reads them). Bytes and percent-escapes must both decode in
    ``charset``: :class:`WireError` otherwise. More than ``max_fields`` fields, or a
    name or value over ``max_chars`` characters: :class:`WireTooLarge`.
    """
    if raw.count(b"&") + 1 > max_fields:
        raise WireTooLarge(f"a form of over {max_fields} fields")
    try:
        text = raw.rstrip().decode(charset)
        pairs = parse_qsl(text, keep_blank_values=True, encoding=charset, errors="strict")
    except (LookupError, ValueError) as e:  # an unknown charset, UnicodeDecodeError
        raise WireError(f"not a {charset} form: {type(e).__name__}") from None
    for name, value in pairs:
        if len(name) > max_chars or len(value) > max_chars:
            raise WireTooLarge(
                f"form field {name[:40]!r} is too long (limit {max_chars} characters)"
            )
    return pairs
