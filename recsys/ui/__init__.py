"""The recsys page in the Airflow 3 UI (registered by ``plugins/recsys_ui.py``).

- :mod:`recsys.ui.app`: the FastAPI app and its endpoints;
- :mod:`recsys.ui.auth`: Airflow's JWT validation applied to every endpoint;
- :mod:`recsys.ui.overview`: the sections' data (MLflow, Triton publish history, Redis, drift);
- :mod:`recsys.ui.drift`: drift checks from ``recsys.monitoring`` and the drift-over-time plot.
"""
