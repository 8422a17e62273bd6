"""A full disk while a data version and a feature version are written: a real file-size limit
(RLIMIT_FSIZE) on the writing process, so every write past the limit fails as on a full disk. Each
ends with a one-line error that names the version folder and says nothing changed, no half-written
folder (hidden or not), and the earlier version intact.
"""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

from recsys.data.synthetic import SyntheticConfig, append_batch, write_synthetic
from recsys.data.versioning import list_versions

LIMIT = 40_000  # bytes: the validated tables are read (no limit on reading), their copies cannot be written


def _limited() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, LIMIT))


def _recsys(python: Path, *argv: str, limited: bool) -> subprocess.CompletedProcess:
    return subprocess.run([str(python), "-m", "recsys.cli", *argv], capture_output=True, text=True, timeout=600,
                          preexec_fn=_limited if limited else None)


def _all_entries(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


def test_a_full_disk_while_writing_a_data_and_a_feature_version(stack_settings, tmp_path):
    landing, data_root, features_root = tmp_path / "landing", tmp_path / "data", tmp_path / "features"
    write_synthetic(landing, SyntheticConfig(n_users=300, n_items=100, n_interactions=20_000, days=10, seed=2))

    first = _recsys(Path(sys.executable), "data", "ingest", str(landing), "--data-root", str(data_root), limited=False)
    assert first.returncode == 0, first.stderr[-2000:]
    (v1,) = list_versions(data_root)

    # new data arrives; its data version cannot be written
    append_batch(landing, SyntheticConfig(n_users=300, n_items=100, n_interactions=5_000, days=3, seed=3))
    full = _recsys(Path(sys.executable), "data", "ingest", str(landing), "--data-root", str(data_root), limited=True)
    assert full.returncode == 2
    message = full.stderr.strip().splitlines()[-1]
    assert message.startswith(f"error: could not write {data_root}/") and "File too large" in message
    assert "nothing was changed" in message and "Traceback" not in full.stderr
    assert _all_entries(data_root) == [v1.version]  # no new folder, no hidden half-written one
    assert list_versions(data_root)[0].manifest == v1.manifest

    # the ETL (Merlin runtime) of the first data version: its feature version cannot be written
    merlin = stack_settings.merlin_python
    etl = ["etl", "--data", str(v1.path), "--features-root", str(features_root), "--validation-days", "3"]
    full = _recsys(merlin, *etl, limited=True)
    assert full.returncode == 2, full.stderr[-2000:]
    # (pyarrow's writer complains again when it is collected at exit: "Exception ignored in ... __del__")
    (message,) = [line for line in full.stderr.splitlines() if line.startswith("error:")]
    assert message.startswith(f"error: could not write {features_root}/") and "File too large" in message
    assert _all_entries(features_root) in ([], ["workflows"])  # fitted workflows may be cached; no version
    assert not [p for p in features_root.rglob("*") if ".tmp-" in p.name]
    # with room again, the same command writes it
    ok = _recsys(merlin, *etl, limited=False)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert len(list_versions(features_root)) == 1
