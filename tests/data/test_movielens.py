"""MovieLens-100K import, on a small fixture in exactly the original format."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recsys.data.movielens import MovieLensFormatError, import_movielens, read_movielens
from recsys.data.validation import validate_input

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "movielens"


def test_fixture_imports_and_passes_validation(tmp_path):
    out = tmp_path / "ml"
    rows = import_movielens(FIXTURE, out)
    assert rows == {"interactions": 200, "users": 20, "items": 30}
    tables = validate_input(out)
    assert not tables.has_labels  # implicit feedback
    inter, users, items = tables.interactions, tables.users, tables.items
    assert list(inter.columns) == ["user_id", "item_id", "timestamp", "event_type"]
    assert set(inter["event_type"]) == {"rating"}
    first = inter.iloc[0]  # u.data line 1: 4 28 4 890360721
    assert (first["user_id"], first["item_id"]) == (4, 28)
    assert first["timestamp"] == pd.Timestamp(890360721, unit="s")
    assert list(users.columns) == ["user_id", "age_bucket", "gender", "occupation", "zip_prefix"]
    assert users.set_index("user_id").loc[1, "age_bucket"] == "25-34"  # u.user: 1|32|M|other|85711
    assert users.set_index("user_id").loc[10, "zip_prefix"] == "T"  # a Canadian postal code
    assert list(items.columns) == ["item_id", "title", "release_year", "main_genre", "genres"]
    assert items["release_year"].dtype == np.float64
    by_id = items.set_index("item_id")
    assert by_id.loc[29, "title"] == "Misérables, Les (1995)"  # latin-1 decoded
    assert np.isnan(by_id.loc[27, "release_year"]) and by_id.loc[27, "main_genre"] == "unknown"
    assert by_id.loc[1, "release_year"] == 1995.0 and by_id.loc[1, "main_genre"] == "Drama"


def test_min_rating_keeps_only_good_ratings():
    all_ratings = read_movielens(FIXTURE)["interactions"]
    good = read_movielens(FIXTURE, min_rating=4)["interactions"]
    stars = pd.read_csv(FIXTURE / "u.data", sep="\t", header=None)[2]
    assert len(all_ratings) == 200 and len(good) == int((stars >= 4).sum())


@pytest.fixture
def broken_copy(tmp_path) -> Path:
    copy = tmp_path / "ml-src"
    shutil.copytree(FIXTURE, copy)
    return copy


def test_missing_file_is_named(broken_copy):
    (broken_copy / "u.user").unlink()
    with pytest.raises(MovieLensFormatError, match=r"u\.user: file not found"):
        read_movielens(broken_copy)


def test_wrong_field_count_names_file_and_line(broken_copy):
    lines = (broken_copy / "u.data").read_text().splitlines()
    lines[4] = lines[4].replace("\t", ",")
    (broken_copy / "u.data").write_text("\n".join(lines) + "\n")
    with pytest.raises(MovieLensFormatError, match=r"u\.data line 5: expected 4 fields"):
        read_movielens(broken_copy)


def test_bad_value_names_file_and_line(broken_copy):
    lines = (broken_copy / "u.user").read_text().splitlines()
    fields = lines[2].split("|")
    fields[1] = "old"  # the age field
    lines[2] = "|".join(fields)
    (broken_copy / "u.user").write_text("\n".join(lines) + "\n")
    with pytest.raises(MovieLensFormatError, match=r"u\.user line 3: age is not an integer: 'old'"):
        read_movielens(broken_copy)


def test_existing_output_is_refused(tmp_path):
    out = tmp_path / "ml"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(MovieLensFormatError, match="not empty"):
        import_movielens(FIXTURE, out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
