"""The smoke test a new Triton version must pass before it serves: every model READY at that version,
and one real ``recsys`` request answered with usable items, on every Triton replica."""

from __future__ import annotations

from typing import Any, Callable

from recsys.errors import RecsysError
from recsys.layout import FeatureVersion
from recsys.settings import Settings

SmokeTest = Callable[[Settings, dict[str, int], dict[str, Any]], dict[str, Any]]
"""``(settings, {model: version}, lineage) -> details``; raises if the served models misbehave."""


class SmokeTestError(RecsysError):
    """A freshly loaded version is not READY or answers nothing usable."""


def is_ready(s: Settings, model: str, version: "int | None" = None, at=None) -> bool:
    """True if ``model`` (at ``version``) is READY on ``at`` (an Endpoint; default: on every Triton replica); False
    also when Triton does not answer at all."""
    from recsys.serving.control import model_ready

    try:
        return model_ready(s, model, version, at)
    except Exception:
        return False


def default_smoke_test(s: Settings, versions: dict[str, int], lineage: dict[str, Any]) -> dict[str, Any]:
    """Every model READY at its new version, and one real ``recsys`` request answers with items."""
    not_ready = [f"{m} v{v}" for m, v in versions.items() if not is_ready(s, m, v)]
    if not_ready:
        raise SmokeTestError(f"not READY after loading: {', '.join(not_ready)}")
    details: dict[str, Any] = {"ready": sorted(versions)}
    if "recsys" in versions:
        import numpy as np
        import tritonclient.http as httpclient

        from recsys.serving.client import recommend_inputs, recommendation_arrays, served_contract
        from recsys.serving.triton_client import endpoints, http_client

        user_id = lineage.get("smoke_user_id", 0)  # a raw id: int or str
        for at in endpoints(s):  # every replica answers, not just the one a client would pick
            triton = http_client(s, at=at)
            try:
                # The request follows the config just loaded (dynamic batching: [1, 1]; its id kinds).
                contract = served_contract(triton, "recsys")
                inputs = recommend_inputs(httpclient, user_id, 5, contract=contract)
                result = triton.infer("recsys", inputs, model_version=str(versions["recsys"]))
            finally:
                triton.close()
            items, scores = recommendation_arrays(result, contract)
            if items is None or len(items) == 0 or scores is None or not np.isfinite(scores).all():
                raise SmokeTestError(f"smoke request to recsys v{versions['recsys']} (user {user_id!r}) on {at} answered "
                                     f"no usable items: {items}, {scores}")
        details["recsys"] = {"user_id": user_id, "item_ids": items.tolist()}
    return details


def smoke_user(s: Settings, feature_version: str) -> "int | str":
    """A real user of the feature version (its first raw user id, int or str), else 0 (an unknown user,
    answered from popularity)."""
    try:
        import pyarrow.parquet as pq

        column = pq.read_table(FeatureVersion.of(s, feature_version).id_map("user"), columns=["user_id_raw"]).column(0)
        return column[0].as_py() if len(column) else 0
    except Exception:  # the features folder is on another machine: popularity path
        return 0
