"""MovieLens import, both layouts, on small fixtures in exactly the original formats.

tests/fixtures/movielens/ is MovieLens-100K's format; tests/fixtures/movielens-latest/ is ml-latest's
(written by hand, a few dozen lines, with the tricky cases of the real files: quoted titles with
commas, escaped quotes, non-ASCII, parentheses inside titles, a trailing space after the year, no
year, a year range, ``(no genres listed)``, tags differing only in case and spaces, a blank tag).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recsys.data.importing import OutputExistsError
from recsys.data.movielens import (
    MovieLensFormatError,
    detect_layout,
    import_movielens,
    read_movielens,
    split_title,
)
from recsys.data.validation import validate_input

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
FIXTURE = FIXTURES / "movielens"
LATEST = FIXTURES / "movielens-latest"
ITEM_COLUMNS = ["item_id", "title", "year", "main_genre", "genres"]


# ---------------------------------------------------------------------------------------------
# MovieLens-100K


def test_fixture_imports_and_passes_validation(tmp_path):
    out = tmp_path / "ml"
    result = import_movielens(FIXTURE, out)
    assert result.rows == {"interactions": 200, "users": 20, "items": 30}
    assert json.loads((out / "import.json").read_text())["layout"] == "100k"
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
    assert list(items.columns) == ITEM_COLUMNS  # the same item columns as ml-latest
    assert items["year"].dtype == np.float64
    by_id = items.set_index("item_id")
    assert by_id.loc[29, "title"] == "Misérables, Les"  # latin-1 decoded, the year moved out of the title
    assert by_id.loc[29, "year"] == 1995.0
    # u.item line 27: "Bad Boys (1995)", no release date, only the "unknown" genre flag
    assert by_id.loc[27, "year"] == 1995.0 and by_id.loc[27, "main_genre"] == "unknown"
    assert by_id.loc[1, "year"] == 1995.0 and by_id.loc[1, "main_genre"] == "Drama"


def test_min_rating_keeps_only_good_ratings():
    all_ratings = read_movielens(FIXTURE)["interactions"]
    good = read_movielens(FIXTURE, min_rating=4)["interactions"]
    stars = pd.read_csv(FIXTURE / "u.data", sep="\t", header=None)[2]
    assert len(all_ratings) == 200 and len(good) == int((stars >= 4).sum()) and len(good) < 200


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


def test_existing_output_is_refused_unless_forced(tmp_path):
    out = tmp_path / "ml"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(OutputExistsError, match="not empty"):
        import_movielens(FIXTURE, out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    import_movielens(FIXTURE, out, force=True)
    assert sorted(p.name for p in out.iterdir()) == ["import.json", "interactions.parquet", "items.parquet", "users.parquet"]


# ---------------------------------------------------------------------------------------------
# ml-latest / ml-latest-small


def test_latest_fixture_imports_and_passes_validation(tmp_path, caplog):
    out = tmp_path / "ml"
    with caplog.at_level(logging.INFO, logger="recsys.data.movielens"):
        result = import_movielens(LATEST, out)
    assert "found the ml-latest layout (ratings.csv, movies.csv, tags.csv)" in caplog.text
    assert result.rows == {"interactions": 37, "users": 6, "items": 16}  # every movie, rated or not
    assert result.metadata["layout"] == "latest"
    tables = validate_input(out)
    inter, users, items = tables.interactions, tables.users, tables.items
    assert not tables.has_labels
    assert list(inter.columns) == ["user_id", "item_id", "timestamp", "event_type"]
    assert (inter.iloc[0]["user_id"], inter.iloc[0]["item_id"]) == (1, 1)  # ratings.csv line 2: 1,1,4.0,964982703
    assert inter.iloc[0]["timestamp"] == pd.Timestamp(964982703, unit="s")
    assert set(inter["event_type"]) == {"rating"}
    assert list(users.columns) == ["user_id"] and users["user_id"].tolist() == [1, 2, 3, 4, 5, 6]
    assert list(items.columns) == ITEM_COLUMNS + ["top_tag", "tag_count"]
    assert items["year"].dtype == np.float64 and items["tag_count"].dtype == np.float64
    assert items["top_tag"].dtype == object  # categorical for the ETL


def test_latest_titles_years_and_genres():
    items = read_movielens(LATEST)["items"].set_index("item_id")
    expected = {
        11: ("American President, The", 1995.0),  # quoted, a comma inside
        29: ("City of Lost Children, The (Cité des enfants perdus, La)", 1995.0),  # non-ASCII, parentheses
        293: ("Léon: The Professional (a.k.a. The Professional) (Léon)", 1994.0),
        7789: ("11'09\"01 - September 11", 2002.0),  # escaped quotes ("" in the file)
        27008: ("From Dusk Till Dawn 2: Texas Blood Money", 1999.0),  # a space after the year
        69757: ("(500) Days of Summer", 2009.0),  # parentheses at the start
        171749: ("Death Note: Desu nôto", 2006.0),  # a range (2006–2007): its first year
    }
    for item, (title, year) in expected.items():
        assert (items.loc[item, "title"], items.loc[item, "year"]) == (title, year), item
    assert items.loc[40697, "title"] == "Babylon 5" and np.isnan(items.loc[40697, "year"])  # no year
    assert items.loc[1, "main_genre"] == "Adventure"
    assert items.loc[1, "genres"] == "Adventure|Animation|Children|Comedy|Fantasy"
    assert (items.loc[143410, "main_genre"], items.loc[143410, "genres"]) == ("unknown", "unknown")  # (no genres listed)


def test_latest_tag_features():
    items = read_movielens(LATEST)["items"].set_index("item_id")
    # 260: "Sci-Fi" and "sci-fi " are one tag (lowercased, trimmed), the most frequent of 4
    assert (items.loc[260, "top_tag"], items.loc[260, "tag_count"]) == ("sci-fi", 4.0)
    assert (items.loc[4973, "top_tag"], items.loc[4973, "tag_count"]) == ("paris", 5.0)
    assert (items.loc[6016, "top_tag"], items.loc[6016, "tag_count"]) == ("brazil", 2.0)  # a tie: alphabetical
    assert (items.loc[171749, "top_tag"], items.loc[171749, "tag_count"]) == ("anime", 1.0)  # the blank tag skipped
    assert items.loc[40697, "top_tag"] == "space station"  # a movie nobody rated keeps its tags
    assert items.loc[1, "top_tag"] is None and items.loc[1, "tag_count"] == 0.0  # untagged


def test_latest_min_rating_takes_half_stars():
    ratings = pd.read_csv(LATEST / "ratings.csv")
    good = read_movielens(LATEST, min_rating=3.5)["interactions"]
    assert len(good) == int((ratings["rating"] >= 3.5).sum()) and 0 < len(good) < len(ratings)
    users = read_movielens(LATEST, min_rating=3.5)["users"]
    assert len(users) == 6  # every user who rated, whatever the threshold


def test_latest_without_tags_has_no_tag_columns(tmp_path):
    copy = tmp_path / "src"
    shutil.copytree(LATEST, copy)
    (copy / "tags.csv").unlink()
    assert "top_tag" not in read_movielens(copy)["items"].columns


@pytest.fixture
def latest_copy(tmp_path) -> Path:
    copy = tmp_path / "ml-latest-src"
    shutil.copytree(LATEST, copy)
    return copy


def _edit(path: Path, line: int, text: str) -> None:
    """Replace line ``line`` (1-based) of a file."""
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[line - 1] = text
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_latest_bad_rating_values_name_file_line_and_value(latest_copy):
    _edit(latest_copy / "ratings.csv", 6, "1,5952,four,964984002")
    with pytest.raises(MovieLensFormatError, match=r"ratings\.csv line 6: rating is not a number: 'four'"):
        read_movielens(latest_copy)
    _edit(latest_copy / "ratings.csv", 6, "1,5952,,964984002")  # an empty rating reads as NaN: caught too
    with pytest.raises(MovieLensFormatError, match=r"ratings\.csv line 6: rating is empty: ''"):
        read_movielens(latest_copy)
    _edit(latest_copy / "ratings.csv", 6, "1,59x2,4.5,964984002")
    with pytest.raises(MovieLensFormatError, match=r"ratings\.csv line 6: movieId is not an integer: '59x2'"):
        read_movielens(latest_copy)


def test_latest_blank_lines_keep_line_numbers_right(latest_copy):
    text = (latest_copy / "ratings.csv").read_text().splitlines()
    text.insert(3, "")  # a blank line 4: the ratings after it move one line down
    text[9] = "2,424242,3.0,1445714835"  # line 10: a movie missing from movies.csv
    (latest_copy / "ratings.csv").write_text("\n".join(text) + "\n")
    with pytest.raises(MovieLensFormatError, match=r"ratings\.csv line 10: movieId 424242 is not in movies\.csv \(1 ratings"):
        read_movielens(latest_copy)


def test_latest_movies_errors(latest_copy):
    movies = latest_copy / "movies.csv"
    original = movies.read_text(encoding="utf-8")
    _edit(movies, 4, "1,Toy Story again (1995),Comedy")  # movieId 1 again
    with pytest.raises(MovieLensFormatError, match=r"movies\.csv line 4: movieId 1 appears twice \(first at line 2\)"):
        read_movielens(latest_copy)
    movies.write_text(original.replace("movieId,title,genres", "movieId,name,genres"), encoding="utf-8")
    with pytest.raises(MovieLensFormatError, match=r"movies\.csv line 1: missing column\(s\) title \(header: movieId, name, genres\)"):
        read_movielens(latest_copy)
    movies.write_bytes(original.replace("–", "-").encode("latin-1"))  # not UTF-8: é is one byte
    with pytest.raises(MovieLensFormatError, match=r"movies\.csv: not utf-8 text"):
        read_movielens(latest_copy)
    movies.unlink()
    with pytest.raises(MovieLensFormatError, match=r"movies\.csv: file not found \(the ml-latest layout needs ratings\.csv and movies\.csv"):
        read_movielens(latest_copy)


def test_layout_detection(tmp_path):
    assert detect_layout(FIXTURE) == "100k" and detect_layout(LATEST) == "latest"
    both = tmp_path / "both"
    shutil.copytree(LATEST, both)
    shutil.copy(FIXTURE / "u.data", both / "u.data")
    with pytest.raises(MovieLensFormatError, match="holds both MovieLens-100K"):
        detect_layout(both)
    other = tmp_path / "ml-1m"
    other.mkdir()
    (other / "ratings.dat").write_text("1::1193::5::978300760\n")
    with pytest.raises(MovieLensFormatError, match=r"no MovieLens files found \(ratings\.dat is MovieLens-1M.*found: ratings\.dat"):
        detect_layout(other)


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("Toy Story (1995)", ("Toy Story", 1995.0)),
        ("Runaway Brain (1995) ", ("Runaway Brain", 1995.0)),
        ("Assembly (Ji jie hao) (2007) ", ("Assembly (Ji jie hao)", 2007.0)),
        ("Death Note: Desu nôto (2006–2007)", ("Death Note: Desu nôto", 2006.0)),
        ("Some Series (2016- )", ("Some Series", 2016.0)),
        ("Babylon 5", ("Babylon 5", float("nan"))),
        ("1984 (1984)", ("1984", 1984.0)),
        ("(1995)", ("(1995)", float("nan"))),  # nothing but a year: keep the text
    ],
)
def test_split_title(raw, expected):
    title, year = split_title(raw)
    assert title == expected[0]
    assert (np.isnan(year) and np.isnan(expected[1])) or year == expected[1]
