"""The champion resolver against a real MLflow server: one set, its lineage, refusals, and moved aliases."""

import uuid

import pytest

from recsys.settings import replace
from recsys.tracking.champions import (
    Champion,
    ChampionError,
    ChampionMovedError,
    NoChampionError,
    resolve_champion,
)
from shared_helpers import log_training


@pytest.fixture()
def settings(stack_settings, request):
    suffix = f"{request.node.name.replace('_', '-')[:40]}-{uuid.uuid4().hex[:6]}"
    return replace(stack_settings, retrieval_model_name=f"retrieval-{suffix}", ranking_model_name=f"ranking-{suffix}",
                   experiment_name=f"exp-{suffix}")


def _train(settings, quality: float, feature_version: str = "fv1", **extra) -> str:
    metrics = {"recall_at_10": quality, "pipeline_recall_at_10": quality, "auc": quality,
               "popularity_recall_at_10": 0.01, "pipeline_ranker_weight": 0.25, **extra}
    return log_training(settings, metrics, feature_version=feature_version, data_version="dv-" + feature_version)


def test_no_champion_before_the_first_promotion(settings):
    with pytest.raises(NoChampionError, match="none has beaten the popularity baseline"):
        resolve_champion(settings)


def test_the_champion_holds_what_every_caller_needs_and_travels_as_a_dict(settings):
    run_id = _train(settings, 0.3)
    champion = resolve_champion(settings)
    assert champion.run_id == run_id
    assert set(champion.models) == {"retrieval", "ranking"}
    assert champion.versions == {settings.retrieval_model_name: "1", settings.ranking_model_name: "1"}
    assert (champion.feature_version, champion.data_version) == ("fv1", "dv-fv1")
    assert champion.ranker_weight == pytest.approx(0.25)
    assert champion.models["ranking"].source.endswith("/ranking")
    assert champion.metrics[settings.retrieval_model_name]["pipeline_recall_at_10"] == pytest.approx(0.3)
    assert Champion.from_dict(champion.to_dict()) == champion
    champion.check_still_current(settings)  # nothing moved: no error


def test_a_plan_is_refused_once_the_alias_moved(settings):
    _train(settings, 0.3)
    planned = resolve_champion(settings)
    # A better run on the same feature version takes the champion alias.
    _train(settings, 0.4)
    assert resolve_champion(settings).versions != planned.versions
    with pytest.raises(ChampionMovedError, match=r"the champion moved since it was planned.*nothing was changed"):
        planned.check_still_current(settings)


def test_champions_of_two_feature_versions_are_refused(settings):
    from recsys.tracking.registry import CHAMPION
    from recsys.tracking.runs import client

    _train(settings, 0.3, feature_version="fv1")
    second = _train(settings, 0.2, feature_version="fv2")  # below the champion: not promoted
    c = client(settings.mlflow_uri)
    mine = c.search_model_versions(f"name = '{settings.ranking_model_name}' and run_id = '{second}'")[0]
    c.set_registered_model_alias(settings.ranking_model_name, CHAMPION, mine.version)  # by hand, as a user might
    with pytest.raises(ChampionError, match=r"not trained on one feature version .*fv1.*fv2"):
        resolve_champion(settings)
