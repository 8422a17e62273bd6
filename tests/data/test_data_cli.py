"""`recsys data ...` end to end through recsys.cli.main."""

from __future__ import annotations

from pathlib import Path

import pytest

from recsys.cli import main
from recsys.errors import RecsysError
from recsys.data.versioning import list_versions

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "movielens"


def test_generate_validate_ingest(tmp_path, capsys):
    out, root = tmp_path / "gen", tmp_path / "data"
    args = ["--users", "60", "--items", "40", "--interactions", "3000", "--days", "10", "--seed", "3"]
    assert main(["data", "generate", "--out", str(out), *args, "--start", "2024-03-01"]) == 0
    assert "interactions" in capsys.readouterr().out
    assert sorted(p.name for p in out.glob("*.parquet")) == ["interactions.parquet", "items.parquet", "users.parquet"]

    assert main(["data", "validate", str(out)]) == 0
    assert "is valid" in capsys.readouterr().out

    assert main(["data", "ingest", str(out), "--data-root", str(root)]) == 0
    printed = capsys.readouterr().out
    (version,) = list_versions(root)
    assert version.version in printed and "written" in printed
    assert version.manifest["time_range"]["min"].startswith("2024-03-01")

    assert main(["data", "ingest", str(out), "--data-root", str(root)]) == 0
    assert "no-op" in capsys.readouterr().out
    assert len(list_versions(root)) == 1


def test_drifted_batch_differs(tmp_path, capsys):
    base = ["--users", "60", "--items", "40", "--interactions", "2000"]
    assert main(["data", "generate", "--out", str(tmp_path / "a"), *base]) == 0
    assert main(["data", "generate", "--out", str(tmp_path / "b"), *base, "--drift", "1"]) == 0
    assert (tmp_path / "a" / "users.parquet").read_bytes() != (tmp_path / "b" / "users.parquet").read_bytes()


def test_import_movielens_then_validate(tmp_path, capsys):
    out = tmp_path / "ml"
    assert main(["data", "import-movielens", str(FIXTURE), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "interactions 200 rows" in printed and "found the MovieLens-100K layout (u.data, u.user, u.item)" in printed
    assert main(["data", "validate", str(out)]) == 0
    assert "without labels" in capsys.readouterr().out


def test_invalid_input_is_a_clear_error(tmp_path, capsys, monkeypatch):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "interactions.csv").write_text("user_id,item_id,timestamp\n1,2,2024-01-01\n-3,2,2024-01-01\n")
    (bad / "users.csv").write_text("user_id\n1\n")
    (bad / "items.csv").write_text("item_id\n2\n")
    monkeypatch.delenv("RECSYS_DEBUG", raising=False)
    assert main(["data", "ingest", str(bad), "--data-root", str(tmp_path / "data")]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "interactions.csv: column 'user_id' has 1 negative values, e.g. line 3: user_id=-3" in err
    assert "Traceback" not in err
    assert not (tmp_path / "data").exists() or not any((tmp_path / "data").iterdir())
    # RECSYS_DEBUG=1: the error itself, raised with its traceback (the interpreter prints it)
    monkeypatch.setenv("RECSYS_DEBUG", "1")
    with pytest.raises(RecsysError, match="column 'user_id' has 1 negative values"):
        main(["data", "ingest", str(bad), "--data-root", str(tmp_path / "data")])
    assert not capsys.readouterr().err.startswith("error:")


def test_generate_with_string_ids(tmp_path, capsys):
    out, root = tmp_path / "gen", tmp_path / "data"
    args = ["--users", "60", "--items", "40", "--interactions", "2000", "--days", "10", "--string-ids"]
    assert main(["data", "generate", "--out", str(out), *args]) == 0
    assert main(["data", "ingest", str(out), "--data-root", str(root)]) == 0
    (version,) = list_versions(root)
    assert version.manifest["ids"] == {"user_id": "string", "item_id": "string"}
    capsys.readouterr()
    assert main(["data", "validate", str(out)]) == 0
    assert "user ids: string, item ids: string" in capsys.readouterr().out
