"""User and item ids as users have them (integers or text): the one contract every hop uses.

Kinds. All user ids of a deployment are of one kind, and all its item ids of one kind (the two may
differ):

- ``"int"``: integers >= 0, held as ``int64`` (numpy int64 arrays, Python ints);
- ``"string"``: text, held as Python ``str`` (numpy object arrays of str), e.g. SKUs like ``85123A``
  or UUIDs. ``"001"`` is a string id, different from ``"1"``.

Validation (:mod:`recsys.data.validation`) decides the kinds once and the data version's manifest
records them (``"ids": {"user_id": ..., "item_id": ...}``); the feature version, the online version's
metadata, ``pipeline.json`` and the ``recsys`` model's config carry them on. Anything written before
kinds were recorded holds integer ids (:meth:`IdKinds.from_dict` of nothing is int/int).

Text form. Outside numpy an id travels as its text (:func:`to_text`): Redis hash fields and set
members, JSON, Triton BYTES tensors, the command line. For int ids that is the decimal number
(``"5003"``), as it always was, so int deployments' keys do not change.

Packed lists (Redis values: seen items, popularity, precomputed lists, content-hash blobs):

- int: little-endian int64, 8 bytes per id (what these blobs always held; ``numpy.frombuffer``);
- string: the ids' UTF-8 bytes joined by NUL (``b"\\x00"``): compact (one byte per id of overhead),
  split by one C-level call, and unambiguous because a string id cannot contain a control
  character (:func:`string_id_problem`); the empty list is ``b""``.

:func:`pack_with` / :func:`unpack_with` add a fixed-width array parallel to the ids (scores,
hashes): int kind = the ids then the array (as before); string kind = the count (``<u4``), the
array, then the packed ids.

Typed input (:func:`parse`): an id a person or a client typed (CLI, request context, the boosts
setting, a Triton request) is parsed into the deployment's kind, with an error naming it, e.g.
``user_id 'abc' is not an integer id; this deployment's user ids are integers``.

Standard library only at import; numpy and pandas are imported inside the functions (both runtimes
import this module: the Merlin runtime's numpy 1.23 / pandas 1.5 and the control plane's).
"""

from __future__ import annotations

import hashlib
import re
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Optional, Union

from recsys.errors import InputError

if TYPE_CHECKING:  # pragma: no cover - typing only
    import numpy as np
    import pandas as pd

INT = "int"
STRING = "string"
KINDS = (INT, STRING)
ID_COLUMNS = ("user_id", "item_id")

MAX_ID_BYTES = 256
"""Longest string id, in UTF-8 bytes."""

# Why these rules: string ids are Redis hash fields and set members, and they travel packed (NUL
# between ids) and as text in requests, logs and CSV. An empty id cannot be told apart from a
# missing one in a packed list; a control character could be the separator and breaks logs and the
# CLI; leading/trailing whitespace is invisible (" SKU-1" and "SKU-1" would look the same but be two
# ids) and tools trim it on the way; the length cap keeps hash fields and requests small.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_SEP = "\x00"  # between packed string ids
_LONGEST_SAFE_CHARS = MAX_ID_BYTES // 4  # a UTF-8 character is at most 4 bytes: shorter texts fit

# CSV text that is an integer id: the decimal number as a writer renders it. No leading zeros ("001"
# is text), no "+"; a "-" is allowed so that a negative number (usually a -1 meaning "unknown") is
# refused as a negative id rather than silently becoming text; a ".0" tail is what writers make of
# an integer column with blanks (pandas writes 7 as "7.0" once the column holds a NaN).
_CSV_INT = r"-?(?:0|[1-9][0-9]*)(?:\.0+)?"
# An integer typed by a person (CLI, JSON context, the boosts setting): ASCII digits, leading zeros
# allowed ("007" is 7 in an int deployment), and a sign: a negative id cannot be in the data
# (validation refuses it) but asking about one is no error, just an unknown id (e.g. -1: cold start).
_TYPED_INT = re.compile(r"-?[0-9]+")

IdValue = Union[int, str]


class IdError(InputError, ValueError):
    """An id is not valid for its kind (the message names the id and the kind)."""


@dataclass(frozen=True)
class IdKinds:
    """The kinds of a deployment's user ids and item ids."""

    user_id: str = INT
    item_id: str = INT

    def __post_init__(self) -> None:
        for column in ID_COLUMNS:
            check_kind(getattr(self, column), column)

    def of(self, column: str) -> str:
        """The kind of ``user_id`` or ``item_id``."""
        if column not in ID_COLUMNS:
            raise KeyError(f"not an id column: {column!r} (expected one of {ID_COLUMNS})")
        return getattr(self, column)

    def to_dict(self) -> dict[str, str]:
        return {"user_id": self.user_id, "item_id": self.item_id}

    def to_code(self) -> str:
        """Two letters, user then item, ``i`` (int) or ``s`` (string): how an event log entry records them."""
        return f"{self.user_id[0]}{self.item_id[0]}"

    @classmethod
    def from_code(cls, code: str) -> "IdKinds":
        """The inverse of :meth:`to_code` (:class:`IdError` for anything else)."""
        kinds = {"i": INT, "s": STRING}
        if len(code) != 2 or any(c not in kinds for c in code):
            raise IdError(f"id kinds code {code!r} is not two of 'i'/'s' (user, item)")
        return cls(kinds[code[0]], kinds[code[1]])

    @classmethod
    def from_dict(cls, raw: Optional[Mapping[str, Any]], where: str = "") -> "IdKinds":
        """From a manifest's / metadata's ``"ids"``; None or missing entries are int (written before
        kinds were recorded, when every id was an integer)."""
        raw = raw or {}
        try:
            return cls(str(raw.get("user_id") or INT), str(raw.get("item_id") or INT))
        except IdError as exc:
            raise IdError(f"{where}: {exc}" if where else str(exc)) from None


def check_kind(kind: str, column: str = "id") -> str:
    """``kind`` if it is one of :data:`KINDS` (else :class:`IdError`)."""
    if kind not in KINDS:
        raise IdError(f"{column}: unknown id kind {kind!r} (expected one of {', '.join(KINDS)})")
    return kind


def _noun(column: str) -> str:
    return column[: -len("_id")] if column.endswith("_id") else column


# --- rules for string ids ------------------------------------------------------------------------
def string_id_problem(text: str) -> Optional[str]:
    """What is wrong with ``text`` as a string id (None: nothing)."""
    if text == "":
        return "is empty"
    if _CONTROL.search(text):
        return "contains a control character"
    if text != text.strip():
        return "has leading or trailing whitespace"
    if len(text) > _LONGEST_SAFE_CHARS and len(text.encode("utf-8", errors="surrogatepass")) > MAX_ID_BYTES:
        return f"is longer than {MAX_ID_BYTES} UTF-8 bytes"
    return None


def string_id_problems(values: "pd.Series") -> list[tuple[str, "np.ndarray"]]:
    """Vectorized :func:`string_id_problem` over a column of str (nulls are not looked at).

    Returns ``(what, mask)`` per rule, ``what`` in the plural for messages ("empty ids", ...).
    """
    import numpy as np
    import pandas as pd

    text = pd.Series(values, copy=False).astype(object)
    present = text.notna().to_numpy()
    text = text.where(present, "x")  # a harmless stand-in for nulls
    lengths = text.str.len().to_numpy()
    empty = present & (lengths == 0)
    control = present & text.str.contains(_CONTROL.pattern, regex=True).to_numpy(dtype=bool)
    # (Python's strip() also takes \x1c-\x1f for whitespace: those rows are reported as control characters)
    stripped = present & (text.str.strip() != text).to_numpy() & ~empty & ~control
    long = np.zeros(len(text), dtype=bool)
    maybe_long = np.flatnonzero(present & (lengths > _LONGEST_SAFE_CHARS))
    if len(maybe_long):
        sizes = [len(t.encode("utf-8", errors="surrogatepass")) for t in text.iloc[maybe_long]]
        long[maybe_long] = np.asarray(sizes) > MAX_ID_BYTES
    return [
        ("empty ids", empty),
        ("ids with control characters", control),
        ("ids with leading or trailing whitespace", stripped),
        (f"ids longer than {MAX_ID_BYTES} UTF-8 bytes", long),
    ]


# --- CSV text ------------------------------------------------------------------------------------
def csv_int_mask(texts: "pd.Series") -> "np.ndarray":
    """True for each CSV text that is an integer id as a writer renders it (nulls: False).

    Canonical decimal (no leading zeros, no "+"), an optional "-" (so negatives are refused as
    negative ids) and an optional ".0" tail (an integer column with blanks, written as floats).
    """
    import pandas as pd

    text = pd.Series(texts, copy=False).astype(object)
    present = text.notna()
    matched = text.where(present, "").astype(str).str.fullmatch(_CSV_INT)
    return (matched & present).to_numpy(dtype=bool)


def csv_kind(texts: Iterable["pd.Series"]) -> str:
    """The kind of CSV id text (one column, or the same id column of several files together):
    int when every non-null text is an integer (:func:`csv_int_mask`), else string."""
    import numpy as np

    for column in texts:
        present = column.notna().to_numpy()
        if not np.array_equal(csv_int_mask(column) | ~present, np.ones(len(column), dtype=bool)):
            return STRING
    return INT


def csv_numbers(texts: "pd.Series") -> "pd.Series":
    """CSV id text as float64 numbers, NaN where the text is not an integer (:func:`csv_int_mask`)."""
    import pandas as pd

    text = pd.Series(texts, copy=False).astype(object)
    ok = csv_int_mask(text)
    return pd.to_numeric(text.where(ok, None), errors="coerce").astype("float64")


# --- typed input -------------------------------------------------------------------------------
def parse(value: Any, kind: str, column: str = "item_id") -> IdValue:
    """An id given by a person or a client (CLI text, JSON, a setting, Triton bytes) in ``kind``.

    int kind: a Python/numpy integer or its digits as text (int64); string kind: text obeying the
    string id rules (an integer becomes its decimal text). Raises :class:`IdError` naming the value.
    """
    import numpy as np

    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            raise IdError(f"{column} {value[:40]!r} is not valid UTF-8 text") from None
    is_int = isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
    if kind == INT:
        if is_int:
            number = int(value)
        elif isinstance(value, str) and _TYPED_INT.fullmatch(value):
            number = int(value)
        else:
            raise IdError(f"{column} {show(value)} is not an integer id; this deployment's {_noun(column)} ids are integers")
        if not -(2**63) <= number <= 2**63 - 1:
            raise IdError(f"{column} {number} does not fit in int64")
        return number
    check_kind(kind, column)
    if is_int:
        value = str(int(value))
    if not isinstance(value, str):
        raise IdError(f"{column} {show(value)} is not a text id; this deployment's {_noun(column)} ids are text")
    problem = string_id_problem(value)
    if problem:
        raise IdError(f"{column} {show(value)} {problem}; not a valid text id")
    return value


def parse_many(values: Iterable[Any], kind: str, column: str = "item_id") -> "np.ndarray":
    """:func:`parse` of each value, as an array of ``kind`` (:func:`as_array`)."""
    values = list(values)
    if kind == INT and all(type(v) is int for v in values):  # JSON numbers, the common case: no per-id parse
        try:
            return as_array(values, INT)
        except OverflowError:
            pass  # beyond int64: parse() names the value
    return as_array([parse(v, kind, column) for v in values], kind)


def show(value: Any) -> str:
    """An id as messages show it: text quoted, numbers plain (numpy scalars as Python values)."""
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# --- arrays and text ---------------------------------------------------------------------------
def as_array(values: Iterable[Any], kind: str) -> "np.ndarray":
    """Ids of ``kind`` as the array every reader returns: int64, or an object array of str."""
    import numpy as np

    if kind == INT:
        if isinstance(values, (list, tuple)) or hasattr(values, "__array__"):
            return np.asarray(values, dtype=np.int64)
        return np.fromiter(values, dtype=np.int64)
    check_kind(kind)
    if isinstance(values, np.ndarray) and values.dtype == object:
        return values
    listed = values.tolist() if hasattr(values, "tolist") else list(values)
    out = np.empty(len(listed), dtype=object)
    out[:] = listed
    return out


def empty(kind: str) -> "np.ndarray":
    """An empty id array of ``kind``."""
    import numpy as np

    return np.zeros(0, dtype=np.int64 if check_kind(kind) == INT else object)


def kind_of(values: Any) -> str:
    """The kind of an id array whose kind was not recorded (integer dtypes: int; text: string)."""
    import numpy as np

    dtype = getattr(values, "dtype", None)
    if dtype is None:
        values = np.asarray(values)
        dtype = values.dtype
    if getattr(dtype, "kind", "O") in "iu":
        return INT
    return STRING


def to_text(value: Any) -> str:
    """The text form of one id (see the module docstring): Redis fields, JSON keys, messages."""
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return str(int(value))


class Positions:
    """Where each id of an array stands, looked up for many ids at once (-1: not there).

    int ids: one stable argsort, then ``searchsorted`` per lookup; text ids: one dict (measured faster
    than a binary search over str objects for the few hundred ids a request asks about). Built once per
    array: the online version's item table, the index's ids, the served catalogue."""

    def __init__(self, values: Any, kind: str):
        import numpy as np

        self.kind = check_kind(kind)
        self._size = len(values)
        if kind == INT:
            values = as_array(values, INT)
            self._order = np.argsort(values, kind="stable")
            self._sorted = values[self._order]
        else:
            self._of = dict(zip(as_array(values, kind).tolist(), range(len(values))))

    def __call__(self, wanted: Any) -> "np.ndarray":
        import numpy as np

        if self.kind != INT:
            get = self._of.get
            return np.fromiter((get(i, -1) for i in wanted), dtype=np.int64, count=len(wanted))
        wanted = as_array(wanted, INT)
        if self._size == 0:
            return np.full(wanted.shape, -1, dtype=np.int64)
        at = np.minimum(np.searchsorted(self._sorted, wanted), self._size - 1)
        return np.where(self._sorted[at] == wanted, self._order[at], -1).astype(np.int64)


def as_python(values: Iterable[Any]) -> list[IdValue]:
    """Ids as Python ints / strs (what redis-py and json take; numpy scalars are not)."""
    if hasattr(values, "tolist"):
        return values.tolist()
    return [v.item() if hasattr(v, "item") and not isinstance(v, (str, bytes)) else v for v in values]


def field_bytes(values: "np.ndarray", kind: str) -> list[bytes]:
    """The Redis hash field (UTF-8 text) of each id, as bytes."""
    if kind == INT:
        return [b"%d" % i for i in as_array(values, INT).tolist()]
    return [str(v).encode("utf-8") for v in values]


def from_fields(values: Iterable[Union[bytes, str]], kind: str, *, strict: bool = True) -> "np.ndarray":
    """Ids of ``kind`` from their text (Redis hash fields or set members, as bytes or str).

    ``strict=False`` skips texts that are not ids of ``kind`` (e.g. an unavailable-set member added
    for another kind: it can match no item) instead of raising :class:`IdError`.
    """
    import numpy as np

    if kind == INT:
        values = values if isinstance(values, list) else list(values)
        try:  # int() reads the digits of bytes and str alike: no decoding pass
            return np.fromiter((int(v) for v in values), dtype=np.int64, count=len(values))
        except ValueError:
            texts = [to_text(v) for v in values]
            if strict:
                bad = next(t for t in texts if not _TYPED_INT.fullmatch(t))
                raise IdError(f"{bad!r} is not an integer id") from None
            good = [int(t) for t in texts if _TYPED_INT.fullmatch(t)]
            return np.asarray(good, dtype=np.int64)
    return as_array([v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values], kind)


def as_seed(value: Any) -> int:
    """A stable non-negative 64-bit number for an id (per-user random streams): an int id is itself,
    a string id the first 8 bytes of its BLAKE2b digest (Python's ``hash`` differs per process)."""
    if isinstance(value, str):
        return int.from_bytes(hashlib.blake2b(value.encode("utf-8"), digest_size=8).digest(), "little")
    return int(value) & 0xFFFFFFFFFFFFFFFF


# --- packed lists ------------------------------------------------------------------------------
def pack(values: Any, kind: str) -> bytes:
    """A list of ids as bytes (see the module docstring)."""
    import numpy as np

    if kind == INT:
        return np.asarray(values, dtype="<i8").tobytes()
    texts = [str(v) for v in (values.tolist() if hasattr(values, "tolist") else values)]
    if not texts:
        return b""
    joined = _SEP.join(texts)
    if joined.count(_SEP) != len(texts) - 1 or "" in texts:
        bad = next(t for t in texts if t == "" or _SEP in t)
        raise IdError(f"cannot pack string id {bad!r}: {string_id_problem(bad)}")
    return joined.encode("utf-8")


def unpack(blob: Optional[bytes], kind: str) -> "np.ndarray":
    """The inverse of :func:`pack` (``None``: an empty list)."""
    import numpy as np

    if kind == INT:
        return np.frombuffer(blob or b"", dtype="<i8").astype(np.int64)
    if not blob:
        return empty(STRING)
    return as_array(blob.decode("utf-8").split(_SEP), STRING)


def pack_groups(values: Any, starts: Iterable[int], ends: Iterable[int], kind: str) -> list[bytes]:
    """``pack(values[s:e])`` for each (start, end): per-user lists cut from one sorted array."""
    if kind == INT:
        import numpy as np

        blob = np.asarray(values, dtype="<i8").tobytes()
        return [blob[8 * s : 8 * e] for s, e in zip(starts, ends)]
    texts = [str(v) for v in (values.tolist() if hasattr(values, "tolist") else values)]
    return [pack(texts[s:e], STRING) for s, e in zip(starts, ends)]


def pack_with(values: Any, parallel: "np.ndarray", kind: str) -> bytes:
    """Ids and a fixed-width array of the same length (scores, hashes) in one blob."""
    import numpy as np

    parallel = np.ascontiguousarray(parallel)
    if kind == INT:
        return pack(values, INT) + parallel.tobytes()
    ids = pack(values, STRING)
    return struct.pack("<I", len(parallel)) + parallel.tobytes() + ids


def unpack_with(blob: Optional[bytes], kind: str, dtype: str) -> tuple["np.ndarray", "np.ndarray"]:
    """The inverse of :func:`pack_with`: (ids, the parallel array of numpy ``dtype``)."""
    import numpy as np

    blob = blob or b""
    width = np.dtype(dtype).itemsize
    if kind == INT:
        n = len(blob) // (8 + width)
        return unpack(blob[: 8 * n], INT), np.frombuffer(blob[8 * n : (8 + width) * n], dtype=dtype)
    if not blob:
        return empty(STRING), np.zeros(0, dtype=dtype)
    (n,) = struct.unpack_from("<I", blob)
    end = 4 + n * width
    return unpack(blob[end:], STRING), np.frombuffer(blob[4:end], dtype=dtype)


# --- Triton BYTES tensors ----------------------------------------------------------------------
def to_triton(values: Any) -> "np.ndarray":
    """Ids as a Triton BYTES tensor's numpy form: an object array of UTF-8 bytes (one wire format
    for both kinds; int ids travel as their decimal text)."""
    import numpy as np

    items = values.tolist() if hasattr(values, "tolist") else list(values)
    out = np.empty(len(items), dtype=object)
    dtype = getattr(values, "dtype", None)
    if dtype is not None and dtype.kind in "iu":
        out[:] = [b"%d" % i for i in items]  # int64 arrays (every answer of an int deployment): 2x faster
    else:
        out[:] = [to_text(v).encode("utf-8") for v in items]
    return out


def from_triton(array: Any, kind: str) -> "np.ndarray":
    """Ids of ``kind`` from a Triton tensor's numpy form (BYTES; an INT64 tensor of a model version
    published before ids were text is taken as it is)."""
    import numpy as np

    array = np.asarray(array).reshape(-1)
    if array.dtype.kind in "iu":
        return as_array(array, INT) if kind == INT else as_array([str(v) for v in array.tolist()], kind)
    return from_fields(array.tolist(), kind)
