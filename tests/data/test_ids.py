"""recsys.data.ids: the id kinds, the rules for text ids, CSV text, typed input and every codec."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recsys.data import ids

TEXT = ["SKU-85123A", "u-7f3a", "001", "é😀", "a=b,c", "x" * 256]


def test_kinds_default_to_int_for_what_was_written_before_kinds_existed():
    assert ids.IdKinds.from_dict(None) == ids.IdKinds("int", "int")
    assert ids.IdKinds.from_dict({"item_id": "string"}).to_dict() == {"user_id": "int", "item_id": "string"}
    with pytest.raises(ids.IdError, match="manifest.json: user_id: unknown id kind 'uuid'"):
        ids.IdKinds.from_dict({"user_id": "uuid"}, "manifest.json")
    assert ids.IdKinds("string", "int").of("user_id") == "string"


@pytest.mark.parametrize(
    "text, problem",
    [
        ("", "is empty"),
        (" SKU", "has leading or trailing whitespace"),
        ("SKU\u00a0", "has leading or trailing whitespace"),  # a no-break space is whitespace too
        ("SKU\x00", "contains a control character"),
        ("SK\nU", "contains a control character"),
        ("\x85SKU", "contains a control character"),  # C1 controls as well
        ("é" * 129, "is longer than 256 UTF-8 bytes"),  # 258 bytes in 129 characters
        ("SKU 1", None),  # inner spaces are fine
        ("é" * 128, None),
    ],
)
def test_string_id_rules(text, problem):
    assert ids.string_id_problem(text) == problem
    found = {what: mask[0] for what, mask in ids.string_id_problems(pd.Series([text]))}
    assert sum(found.values()) == (problem is not None), found  # exactly one rule, the same one


def test_string_id_problems_are_vectorized_and_ignore_nulls():
    column = pd.Series(["ok", "", None, " x", "y\t", "z" * 300])
    found = {what: mask.tolist() for what, mask in ids.string_id_problems(column)}
    assert found == {
        "empty ids": [False, True, False, False, False, False],
        "ids with control characters": [False, False, False, False, True, False],
        "ids with leading or trailing whitespace": [False, False, False, True, False, False],
        "ids longer than 256 UTF-8 bytes": [False, False, False, False, False, True],
    }


def test_csv_text_is_int_only_as_a_writer_renders_integers():
    texts = pd.Series(["0", "12", "-4", "7.0", "001", "+3", "1e3", " 5", "abc", None])
    assert ids.csv_int_mask(texts).tolist() == [True, True, True, True, False, False, False, False, False, False]
    assert ids.csv_kind([pd.Series(["1", "2", None]), pd.Series(["30"])]) == "int"
    assert ids.csv_kind([pd.Series(["1", "2"]), pd.Series(["030"])]) == "string"  # leading zeros: text
    numbers = ids.csv_numbers(pd.Series(["5", "7.0", "x", None]))
    assert numbers.iloc[:2].tolist() == [5.0, 7.0] and numbers.iloc[2:].isna().all()


def test_parse_typed_ids_into_the_kind():
    assert ids.parse("42", "int") == 42 and ids.parse(b"007", "int") == 7 and ids.parse(np.int64(5), "int") == 5
    assert ids.parse(-1, "int") == -1  # never in the data, but asking about it is no error: unknown
    with pytest.raises(ids.IdError, match="^user_id 'abc' is not an integer id; this deployment's user ids are integers$"):
        ids.parse("abc", "int", "user_id")
    for bad in (True, 1.0, " 5", "5 ", "1_000", "٣"):  # booleans, floats, whitespace, underscores, non-ASCII digits
        with pytest.raises(ids.IdError, match="is not an integer id"):
            ids.parse(bad, "int", "item_id")
    with pytest.raises(ids.IdError, match="does not fit in int64"):
        ids.parse(2**63, "int")

    assert ids.parse("u-7f3a", "string") == "u-7f3a" and ids.parse(b"SKU-\xc3\xa9", "string") == "SKU-é"
    assert ids.parse(5003, "string") == "5003" and ids.parse("001", "string") == "001"
    with pytest.raises(ids.IdError, match="^item_id ' SKU' has leading or trailing whitespace; not a valid text id$"):
        ids.parse(" SKU", "string")
    with pytest.raises(ids.IdError, match="not valid UTF-8"):
        ids.parse(b"\xff", "string")
    with pytest.raises(ids.IdError, match="is not a text id"):
        ids.parse(1.5, "string")
    assert ids.parse_many(["1", 2], "int").dtype == np.int64
    assert ids.parse_many([], "string").dtype == object


def test_arrays_text_and_fields():
    assert ids.as_array([1, 2], "int").dtype == np.int64
    text = ids.as_array(pd.Series(["b", "a"]), "string")
    assert text.dtype == object and text.tolist() == ["b", "a"]
    assert ids.kind_of(np.array([1])) == "int" and ids.kind_of(pd.Series(["a"])) == "string"
    assert ids.kind_of(np.array(["a"])) == "string"  # fixed-width unicode too
    assert ids.to_text(np.int64(5003)) == "5003" and ids.to_text(b"u-1") == "u-1"
    assert ids.as_python(np.array([1, 2])) == [1, 2] and type(ids.as_python([np.int64(3)])[0]) is int
    assert ids.field_bytes(np.array([5, 10]), "int") == [b"5", b"10"]
    assert ids.field_bytes(np.array(["é"], dtype=object), "string") == ["é".encode()]
    assert ids.from_fields([b"5", "10"], "int").tolist() == [5, 10]
    assert ids.from_fields([b"SKU-1", "u"], "string").tolist() == ["SKU-1", "u"]
    with pytest.raises(ids.IdError, match="'SKU-1' is not an integer id"):
        ids.from_fields([b"5", b"SKU-1"], "int")
    assert ids.from_fields([b"5", b"SKU-1"], "int", strict=False).tolist() == [5]  # skipped: can match no item
    assert ids.show(np.int64(5)) == "5" and ids.show("a") == "'a'"


def test_seeds_are_stable_and_ints_keep_their_own():
    import hashlib

    assert ids.as_seed(42) == 42 and ids.as_seed(np.int64(42)) == 42
    assert ids.as_seed("u-7f3a") != ids.as_seed("u-7f3b")
    # the same in every process (Python's hash() of a str is not)
    assert ids.as_seed("u-7f3a") == int.from_bytes(hashlib.blake2b(b"u-7f3a", digest_size=8).digest(), "little")


def test_int_packing_is_the_int64_layout_of_before():
    values = np.array([5003, 0, 2**40], dtype=np.int64)
    blob = ids.pack(values, "int")
    assert blob == values.astype("<i8").tobytes()  # what seen lists and popularity always held
    assert ids.unpack(blob, "int").tolist() == values.tolist() and ids.unpack(None, "int").dtype == np.int64
    hashes = np.array([1, 2, 3], dtype="<u8")
    with_hashes = ids.pack_with(values, hashes, "int")
    assert with_hashes == values.astype("<i8").tobytes() + hashes.tobytes()  # the :hu/:hi layout of before
    got_ids, got_hashes = ids.unpack_with(with_hashes, "int", "<u8")
    assert got_ids.tolist() == values.tolist() and got_hashes.tolist() == [1, 2, 3]


@pytest.mark.parametrize("values", [TEXT, [], ["one"]], ids=["many", "empty", "one"])
def test_text_packing_round_trips_every_allowed_character(values):
    blob = ids.pack(values, "string")
    assert ids.unpack(blob, "string").tolist() == values
    assert len(blob) == sum(len(v.encode()) for v in values) + max(len(values) - 1, 0)  # one byte per id of overhead
    scores = np.arange(len(values), dtype="<f4") / 10
    got, got_scores = ids.unpack_with(ids.pack_with(values, scores, "string"), "string", "<f4")
    assert got.tolist() == values and got_scores.tolist() == scores.tolist()
    # groups cut from one sorted array
    groups = ids.pack_groups(values, [0, 0], [len(values), min(1, len(values))], "string")
    assert [ids.unpack(g, "string").tolist() for g in groups] == [values, values[:1]]


def test_text_packing_refuses_what_it_could_not_unpack():
    with pytest.raises(ids.IdError, match="contains a control character"):
        ids.pack(["ok", "a\x00b"], "string")
    with pytest.raises(ids.IdError, match="is empty"):
        ids.pack([""], "string")


def test_int_groups_slice_one_blob():
    values = np.array([1, 2, 3, 4], dtype=np.int64)
    groups = ids.pack_groups(values, [0, 2, 4], [2, 4, 4], "int")
    assert [ids.unpack(g, "int").tolist() for g in groups] == [[1, 2], [3, 4], []]


def test_triton_bytes_tensors():
    tensor = ids.to_triton(np.array([5003, 7], dtype=np.int64))
    assert tensor.dtype == object and tensor.tolist() == [b"5003", b"7"]
    assert ids.from_triton(tensor, "int").tolist() == [5003, 7]
    assert ids.from_triton(ids.to_triton(["SKU-é"]).reshape(1, -1), "string").tolist() == ["SKU-é"]
    assert ids.from_triton(np.array([[3, 4]], dtype=np.int64), "int").tolist() == [3, 4]  # an INT64 answer of old
    assert ids.from_triton(np.array([3], dtype=np.int64), "string").tolist() == ["3"]


@pytest.mark.parametrize("kind", [ids.INT, ids.STRING])
def test_positions_find_each_id_where_it_stands(kind):
    import numpy as np

    values = [30, 10, 20] if kind == ids.INT else ["c", "a", "b"]
    absent = 99 if kind == ids.INT else "z"
    positions = ids.Positions(ids.as_array(values, kind), kind)
    asked = [values[2], absent, values[0], values[1], values[2]]
    assert positions(ids.as_array(asked, kind)).tolist() == [2, -1, 0, 1, 2]
    assert positions(ids.empty(kind)).tolist() == []
    assert ids.Positions(ids.empty(kind), kind)(ids.as_array([values[0]], kind)).tolist() == [-1]
    assert positions(ids.as_array(asked, kind)).dtype == np.int64
