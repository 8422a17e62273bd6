"""The jobs pass identities along instead of re-deriving them (real folders, no services)."""

from recsys import jobs
from recsys.data.versioning import write_json_atomic
from recsys.layout import FeatureVersion
from recsys.settings import get_settings
from shared_helpers import patched_environ


def _feature_version(root, version: str, created_at: str) -> None:
    folder = FeatureVersion.of(root, version).path
    folder.mkdir(parents=True)
    write_json_atomic(folder / "manifest.json", {"feature_version": version, "data_version": "dv", "created_at": created_at})


def test_training_trains_the_feature_version_the_event_names_not_the_newest(tmp_path):
    with patched_environ({"RECSYS_HOME": str(tmp_path)}):
        root = get_settings().features_root
        _feature_version(root, "announced", "2026-01-01T00:00:00Z")
        _feature_version(root, "newer", "2026-01-02T00:00:00Z")  # written after the event was emitted

        plan = jobs.training_plan("recsys_train/asset", feature_events=[{"feature_version": "announced"}])
        assert plan["features"]["feature_version"] == "announced"
        assert plan["tags"] == {"recsys.trigger": "features:announced"}  # the tag names what is trained

        manual = jobs.training_plan("recsys_train/manual")
        assert manual["features"]["feature_version"] == "newer" and manual["tags"] == {"recsys.trigger": "manual"}
        asked = jobs.training_plan("recsys_train/asked", feature_version="announced",
                                   feature_events=[{"feature_version": "newer"}])
        assert asked["features"]["feature_version"] == "announced"
