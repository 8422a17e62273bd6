"""``recsys demo``: the whole loop on embedded defaults, driven through Airflow and the HTTP API like a user would.

1. start the local stack (Redis, MLflow, Airflow, Triton, the HTTP API, the event worker);
2. put synthetic data in the landing folder (unless data is already there);
3. run ``recsys_etl`` through Airflow's REST API; its features Asset starts ``recsys_train`` by itself;
4-5. wait for training and the champion gate, then for publishing;
6. recommendations served by Triton;
7. live events through the HTTP API: a purchase leaves the buyer's next answer, similar items, a user the
   batch data never saw gets recommendations from a few views;
8-10. a drifted batch arrives, drift checks trigger retraining (its data version takes in the live events
   too), the new champion serves; the models' metrics beside the popularity baseline and where to look.

Running it again is safe: the same data gives the same data and feature versions, so nothing is retrained
unless there is no champion yet. The stack keeps running (``make down`` stops it).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timedelta, timezone
from typing import Any, Optional

from recsys.settings import Settings, get_settings

ETL_DAG, TRAIN_DAG = "recsys_etl", "recsys_train"
REFRESH_DAG, PUBLISH_DAG, DRIFT_DAG = "recsys_feature_refresh", "recsys_publish", "recsys_drift"
STEPS = 10


def _step(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def _landing_has_data(settings: Settings) -> bool:
    from recsys.data.contract import table_files

    return bool(table_files(settings.landing, "interactions"))


def _newest_run(
    client, dag_id: str, run_type: Optional[str] = None, after: Optional[str] = None, logical_date: Optional[str] = None
) -> Optional[dict]:
    """The newest run of ``dag_id`` (of ``run_type``, queued after the ISO time ``after``, for ``logical_date``)."""
    runs = client.request(
        "GET", f"/api/v2/dags/{dag_id}/dagRuns", params={"order_by": "-id", "limit": 20}
    ).json()["dag_runs"]
    for run in runs:
        if run_type and run["run_type"] != run_type:
            continue
        if after and (run.get("queued_at") or "") < after:
            continue
        if logical_date and (run.get("logical_date") or "")[:19] != logical_date[:19]:
            continue
        return run
    return None


def _wait_for_new_run(
    client, dag_id: str, run_type: str, after: Optional[str], timeout: float, logical_date: Optional[str] = None
) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = _newest_run(client, dag_id, run_type, after, logical_date)
        if run:
            return run
        time.sleep(2)
    from recsys.errors import ServiceError

    raise ServiceError(f"no {run_type} run of {dag_id} appeared within {timeout:.0f} s")


def _run_and_wait(client, dag_id: str, run_id: str, timeout: float, settings: Settings) -> None:
    from recsys.errors import ServiceError

    state = client.wait(dag_id, run_id, timeout=timeout)
    if state != "success":
        raise ServiceError(
            f"{dag_id} run {run_id} ended {state}; task logs: {settings.airflow}/dags/{dag_id}/runs/{run_id} "
            f"(files under {settings.services_root / 'airflow' / 'logs'})"
        )


def _print_metrics(settings: Settings) -> None:
    from recsys.tracking.registry import champions

    print()
    for name, champion in champions(settings).items():
        if champion is None:
            print(f"  {name}: no champion")
            continue
        m = champion["metrics"]
        print(f"  {name} v{champion['version']} (champion, run {champion['run_id']})")
        if name == settings.retrieval_model_name:
            print(f"    {'validation metric':<18}{'served':>10}{'two-tower':>11}{'popularity':>12}")
            for key in ("recall_at_10", "ndcg_at_10", "recall_at_50", "recall_at_100"):
                print(f"    {key:<18}{_fmt(m.get('pipeline_' + key)):>10}{_fmt(m.get(key)):>11}"
                      f"{_fmt(m.get('popularity_' + key)):>12}")
            print(f"    (served: retrieval's candidates ordered the way Triton orders them; two-tower train - "
                  f"validation recall@10 gap {_fmt(m.get('gap_recall_at_10'))})")
        else:
            print(f"    auc {_fmt(m.get('auc'))}   logloss {_fmt(m.get('logloss'))}   "
                  f"train - validation auc gap {_fmt(m.get('gap_auc'))}")


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def _show_recommendations(settings: Settings, users: Optional[list] = None, k: int = 5) -> list:
    """Top k for ``users`` (default: the three most active and an unknown one, for cold start); returns them."""
    import pandas as pd

    from recsys.data import ids
    from recsys.data.contract import read_table
    from recsys.serving.client import RecommendClient

    interactions = read_table(settings.landing, "interactions")
    items = read_table(settings.landing, "items").set_index("item_id")
    if users is None:
        active = interactions["user_id"].value_counts().index[:3].tolist()
        text_ids = ids.kind_of(interactions["user_id"]) == ids.STRING
        users = [*active, "u-unknown" if text_ids else int(interactions["user_id"].max()) + 1]
    with RecommendClient.from_settings(settings) as client:
        for user in users:
            rows = interactions[interactions["user_id"] == user]
            engaged = rows.loc[rows["label"] == 1, "item_id"] if "label" in rows else rows["item_id"]
            label = f"user {user}"
            if len(engaged) and "category" in items.columns:
                top = items.loc[engaged, "category"].value_counts().index[:3].tolist()
                label += f" ({len(engaged)} engagements, mostly with categories {', '.join(map(str, top))})"
            elif not len(rows):
                label += " (unknown: cold start, popularity filtered the same way)"
            print(f"\n  {label}")
            recs = client.recommend_with_attributes(user, k)
            table = pd.DataFrame(recs)
            print("    " + table.to_string(index=False, float_format=lambda x: f"{x:.3f}").replace("\n", "\n    "))
    return users


def _items_table(items: list[dict], columns: tuple[str, ...] = ("title", "category", "brand")) -> str:
    """An API answer's items as an indented table (item id, score, a few display attributes)."""
    import pandas as pd

    rows = [{"item_id": i["item_id"], "score": i["score"],
             **{c: (i.get("attributes") or {}).get(c) for c in columns if c in (i.get("attributes") or {})}} for i in items]
    return "    " + pd.DataFrame(rows).to_string(index=False, float_format=lambda x: f"{x:.3f}").replace("\n", "\n    ")


def _wait_until(condition, timeout: float = 10.0) -> float:
    """Seconds until ``condition()`` held (polled every 10 ms), or raise after ``timeout``."""
    began = time.perf_counter()
    while not condition():
        if time.perf_counter() - began > timeout:
            from recsys.errors import ServiceError

            raise ServiceError(f"not visible after {timeout:.0f} s: is the event worker running? "
                               "(`recsys stack status`, `recsys events status`)")
        time.sleep(0.01)
    return time.perf_counter() - began


def _live_events(settings: Settings, users: list) -> Optional[Any]:
    """Live events through the HTTP API while the models serve: a purchase leaves the buyer's next
    recommendations, similar items, and a user the batch data has never seen; returns that user."""
    from recsys.api.client import ApiClient, ApiError

    _step(f"7/{STEPS} live events through the HTTP API ({settings.api}/docs): each takes effect within milliseconds")
    buyer, unknown = users[0], users[-1]
    with ApiClient.from_settings(settings) as api:
        before = api.recommendations(buyer, k=5)
        bought = before["items"][0]["item_id"]
        print(f"  GET /v1/recommendations/{buyer}?k=5 (request {before['request_id']}):")
        print(_items_table(before["items"]))
        sent = api.send_events([{"user_id": buyer, "item_id": bought, "event_type": "purchase", "timestamp": time.time(),
                                 "request_id": before["request_id"]}])
        after: dict = {}

        def gone() -> bool:
            after.update(api.recommendations(buyer, k=5))
            return bought not in [i["item_id"] for i in after["items"]]

        seconds = _wait_until(gone)
        print(f"\n  POST /v1/events: user {buyer} bought item {bought} (202, log entry {sent['first_id']}); "
              f"{1000 * seconds:.0f} ms later it is gone from their recommendations:")
        print(_items_table(after["items"]))
        try:
            similar = api.similar(bought, k=5)["items"]
        except ApiError as exc:  # popularity mode: no model, no embeddings
            print(f"\n  GET /v1/items/{bought}/similar: {exc}")
            return None
        print(f"\n  GET /v1/items/{bought}/similar?k=5 (neighbours in the published item embeddings):")
        print(_items_table(similar))
        popular = [i["item_id"] for i in api.recommendations(unknown, k=5)["items"]]
        viewed = [i["item_id"] for i in similar[:3]]
        api.send_events([{"user_id": unknown, "item_id": item, "event_type": "view", "timestamp": time.time()}
                         for item in viewed])
        fresh: dict = {}

        def personal() -> bool:
            fresh.update(api.recommendations(unknown, k=5))
            return [i["item_id"] for i in fresh["items"]] != popular

        seconds = _wait_until(personal)
        print(f"\n  user {unknown}, unknown to the batch data, viewed items {viewed}; {1000 * seconds:.0f} ms later "
              f"their recommendations come from those views (the models read them as their history), not the popularity list {popular}:")
        print(_items_table(fresh["items"]))
        counts = api.activity("items", bought)["counts"]
        print(f"\n  GET /v1/items/{bought}/activity: {json.dumps(counts)}")
    print(f"\n  the event worker writes them into {settings.landing / 'interactions'} as parquet parts (at least every "
          f"{settings.events_flush_seconds:.0f} s, and when an ETL or a drift check is about to ingest); "
          "`recsys events status` shows the figures, so does the Airflow view")
    return unknown


def _live_events_landed(settings: Settings, new_user: Any) -> None:
    """Where the live events went offline: the newest data version's ``live_events``, the new user in it."""
    from recsys.data.versioning import latest_version

    version = latest_version(settings.data_root)
    if version is None:
        return
    live = version.manifest.get("live_events") or {}
    print(f"\n  data version {version.version} (the retrain's) holds {live.get('rows', 0)} live events from "
          f"{live.get('parts', 0)} landed part(s), {live.get('new_users', 0)} user(s) first seen live"
          + (f" (user {new_user} among them: now a batch user, with an embedding of their own)" if new_user is not None
             and live.get("new_users") else ""))


def _publish_after(client, settings: Settings, train_run: dict, timeout: float) -> None:
    """Wait for what a finished training run set off: publishing when it made a new champion."""
    gate = {t["task_id"]: t for t in client.task_instances(TRAIN_DAG, train_run["dag_run_id"])}
    if gate["announce_champion"]["state"] != "success":
        print("  the retrained models did not beat the champions: nothing new is published (see the gate in MLflow)")
        return
    print("  a new champion: Airflow publishes it from the champion Asset")
    publish_run = _wait_for_new_run(client, PUBLISH_DAG, "asset_triggered", train_run["queued_at"], timeout=120)
    _run_and_wait(client, PUBLISH_DAG, publish_run["dag_run_id"], timeout, settings)


def _drift_loop(client, settings: Settings, args: argparse.Namespace, users: list[int], new_user: Any = None) -> None:
    """A drifted batch arrives; drift checks notice it; retraining and publishing follow by themselves."""
    from recsys.data.synthetic import SyntheticConfig, append_batch
    from recsys.monitoring.store import list_checks

    _step(f"8/{STEPS} a drifted batch arrives in {settings.landing}: users' features and tastes shift")
    generator = settings.landing / "generator.json"
    if generator.exists() and "appended_batch" in generator.read_text():
        print("  it already arrived in an earlier run; the drift history is in the Airflow view (below)")
        return
    # Three weeks: longer than the validation window, so a retrain also *learns* from the new world
    # (a batch shorter than the validation window would all be held out for validation). It arrives in
    # as many parts as the hysteresis needs drifted checks: a check of data it already judged is no new
    # evidence, so each check judges a new data version.
    days = 3 * settings.validation_days
    parts = max(1, settings.drift_consecutive_checks)
    part_days = [days // parts + (1 if i < days % parts else 0) for i in range(parts)]
    print(f"  {days} days of drifted data arrive in {parts} part(s) of {', '.join(map(str, part_days))} days")

    _step(
        f"9/{STEPS} {DRIFT_DAG}: after each arrival, Evidently checks the newest week against the champion's "
        f"training window (retrain after {settings.drift_consecutive_checks} drifted checks of new data in a row)"
    )
    triggered = None
    for i, n_days in enumerate(part_days):
        rows = append_batch(
            settings.landing,
            SyntheticConfig(
                n_users=args.users, n_items=args.items, n_interactions=args.interactions * n_days // args.days,
                days=n_days, seed=args.seed + 1 + i, drift=1.0,
            ),
        )
        print(f"  part {i + 1}/{parts}: the landing folder now holds {rows['interactions']:,} interactions")
        run = client.dag_run(DRIFT_DAG, client.trigger(DRIFT_DAG))
        _run_and_wait(client, DRIFT_DAG, run["dag_run_id"], args.timeout, settings)
        check = list_checks(1, settings)[0]
        print(f"  check {check['check_id']}: {check['reason']}")
        if check["trigger"]:
            triggered = run
            break
    if triggered is None:
        print("  no retrain was triggered")
        return
    train_run = _wait_for_new_run(client, TRAIN_DAG, "asset_triggered", triggered["queued_at"], timeout=120)
    print(f"  the drift Asset started {TRAIN_DAG} ({train_run['dag_run_id']}): ETL of the new data, training, gate")
    _run_and_wait(client, TRAIN_DAG, train_run["dag_run_id"], args.timeout, settings)
    _publish_after(client, settings, train_run, args.timeout)

    _step(f"10/{STEPS} the same users' recommendations after the drift-triggered retrain")
    _show_recommendations(settings, users)
    _live_events_landed(settings, new_user)
    print(
        f"\n  drift reports: Airflow view {settings.airflow}/plugin/recsys, MLflow experiment "
        f"{settings.monitoring_experiment_name!r}, files under {settings.monitoring_root}/checks/"
    )


def run_demo(args: argparse.Namespace) -> int:
    from recsys import stack
    from recsys.stack.airflow_client import AirflowClient

    settings = get_settings()
    began = time.monotonic()

    _step(f"1/{STEPS} starting the local stack, {settings.topology} topology ({', '.join(stack.topology_services(settings))}); "
          f"logs under {settings.services_root}")
    timings = stack.up(settings)
    for name, seconds in timings.items():
        print(f"  {name} answering after {seconds:.1f} s")

    _step(f"2/{STEPS} input data in {settings.landing}")
    if _landing_has_data(settings):
        print("  data already there; keeping it (delete the folder to generate new data)")
    else:
        from recsys.data.synthetic import SyntheticConfig, write_synthetic

        # the history ends three weeks ago: the drifted batch (step 8) fills those weeks, and the live
        # events of step 7 are stamped now, after both
        start = (datetime.now(timezone.utc) - timedelta(days=args.days + 3 * settings.validation_days)).strftime("%Y-%m-%d")
        config = SyntheticConfig(
            n_users=args.users, n_items=args.items, n_interactions=args.interactions, days=args.days, seed=args.seed,
            start=start,
        )
        rows = write_synthetic(settings.landing, config, overwrite=True)
        print("  generated " + ", ".join(f"{n:,} {table}" for table, n in rows.items()))

    client = AirflowClient.from_settings(settings)
    etl_dag = client.wait_for_dag(ETL_DAG, timeout=180)
    for dag_id in (TRAIN_DAG, REFRESH_DAG, PUBLISH_DAG, DRIFT_DAG):
        client.wait_for_dag(dag_id, timeout=180)
    for dag_id in (ETL_DAG, TRAIN_DAG, REFRESH_DAG, PUBLISH_DAG, DRIFT_DAG):
        client.unpause(dag_id)

    _step(f"3/{STEPS} {ETL_DAG}: validate, snapshot, NVTabular ETL (Airflow run)")
    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    due = etl_dag.get("next_dagrun_run_after")
    if due and due[:19] <= now:
        # The daily run is due: once unpaused, the scheduler starts it by itself. Follow that one.
        print(f"  the scheduler starts the daily run due at {due}")
        etl_run = _wait_for_new_run(client, ETL_DAG, "scheduled", None, timeout=120, logical_date=due)
    else:
        etl_run = client.dag_run(ETL_DAG, client.trigger(ETL_DAG))
    _run_and_wait(client, ETL_DAG, etl_run["dag_run_id"], args.timeout, settings)
    announce = {t["task_id"]: t for t in client.task_instances(ETL_DAG, etl_run["dag_run_id"])}["announce_features"]
    new_features = announce["state"] == "success"

    _step(f"4/{STEPS} {TRAIN_DAG}: two-tower + DLRM training, MLflow run, champion gate")
    from recsys.tracking.registry import champions

    if new_features:
        print("  a new feature version exists: Airflow starts training from the features Asset")
        train_run = _wait_for_new_run(client, TRAIN_DAG, "asset_triggered", etl_run["queued_at"], timeout=120)
    elif any(c is None for c in champions(settings).values()):
        print("  features unchanged but no champion yet: triggering training by hand")
        train_run = client.dag_run(TRAIN_DAG, client.trigger(TRAIN_DAG))
    else:
        print("  features unchanged since the last run: nothing to retrain")
        train_run = None
    new_champion = False
    if train_run is not None:
        _run_and_wait(client, TRAIN_DAG, train_run["dag_run_id"], args.timeout, settings)
        gate = {t["task_id"]: t for t in client.task_instances(TRAIN_DAG, train_run["dag_run_id"])}
        new_champion = gate["announce_champion"]["state"] == "success"

    _step(f"5/{STEPS} {PUBLISH_DAG}: champions -> Redis online features + Triton model repository version N+1")
    from recsys.serving import publish as publishing

    if new_champion:
        print("  a new champion exists: Airflow starts publishing from the champion Asset")
        publish_run = _wait_for_new_run(client, PUBLISH_DAG, "asset_triggered", train_run["queued_at"], timeout=120)
    elif not publishing.read_history(settings.triton_repo):
        print("  nothing published yet: triggering publishing by hand")
        publish_run = client.dag_run(PUBLISH_DAG, client.trigger(PUBLISH_DAG))
    else:
        print("  the champions are already published")
        publish_run = None
    if publish_run is not None:
        _run_and_wait(client, PUBLISH_DAG, publish_run["dag_run_id"], args.timeout, settings)

    _step(f"6/{STEPS} recommendations served by Triton (retrieval, filtering, scoring, ordering)")
    shown = _show_recommendations(settings)

    new_user = _live_events(settings, shown)

    _drift_loop(client, settings, args, shown, new_user)

    _step(f"done in {time.monotonic() - began:.0f} s. Champion models (validation window, whole catalogue):")
    _print_metrics(settings)
    print(
        f"\n  MLflow:  {settings.mlflow_uri}  (experiment {settings.experiment_name!r}, models "
        f"{settings.retrieval_model_name!r} and {settings.ranking_model_name!r})"
        f"\n  Airflow: {settings.airflow}  (user {settings.airflow_user!r}; password: `recsys stack status`)"
        f"\n  Triton:  {settings.triton_http}  (`recsys recommend --user <id>`; repository {settings.triton_repo})"
        f"\n  API:     {settings.api}/docs  (bearer token: `recsys api token`; events: `recsys events status`)"
        f"\n  Logs:    {settings.services_root}/<service>/"
        "\n  The stack keeps running; `make down` stops it."
    )
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help="run the whole offline loop through Airflow on embedded defaults")
    # Sized so that the whole loop, two trainings with early stopping and refits included, stays well
    # inside 10 minutes on 2 cores (500k rows took ~7 min per training, 160k ~3.5 min).
    p.add_argument("--users", type=int, default=5_000)
    p.add_argument("--items", type=int, default=1_200)
    p.add_argument("--interactions", type=int, default=100_000)
    p.add_argument("--days", type=int, default=35)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--timeout", type=float, default=3600, help="seconds to wait for each DAG run")
    p.set_defaults(func=run_demo)


if __name__ == "__main__":
    from recsys.cli import main

    sys.exit(main(["demo", *sys.argv[1:]]))
