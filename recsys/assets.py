"""The Airflow Assets that connect the DAGs (shared by the DAG files and the tests).

An Asset event means "a new complete version exists": the producer emits it only after the version has
been switched into place, so a consumer never starts on half-written output.
"""

from airflow.sdk import Asset

FEATURES = Asset(name="recsys_features", uri="recsys://features")
"""A new feature version (NVTabular output) exists. Emitted by ``recsys_etl``; starts ``recsys_train``."""

CHAMPION = Asset(name="recsys_champion", uri="recsys://models/champion")
"""A model took the ``champion`` alias in MLflow. Emitted by ``recsys_train``; publishing listens to it."""

SERVING = Asset(name="recsys_serving", uri="recsys://serving/triton")
"""A new Triton model version serves (loaded and smoke-tested). Emitted by ``recsys_publish``."""

PRECOMPUTED = Asset(name="recsys_precomputed", uri="recsys://serving/precomputed")
"""A new batch of precomputed top-N lists is current in Redis. Emitted by ``recsys_batch_recommendations``."""

DRIFT = Asset(name="recsys_drift", uri="recsys://monitoring/drift")
"""A drift check decided to retrain (drift, hysteresis and cooldown passed). Emitted by ``recsys_drift``
with ``extra={"check_id", "data_version"}``; starts ``recsys_train`` on that data version."""
