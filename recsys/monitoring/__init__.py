"""Feature drift monitoring: the champion's training window against the newest data (Evidently).

- :mod:`recsys.monitoring.check`: ``run_drift_check`` (one check, recorded and logged to MLflow)
- :mod:`recsys.monitoring.decision`: ``decide`` (hysteresis and cooldown, a pure function)
- :mod:`recsys.monitoring.store`: where checks are kept and the read API
  (``list_checks``, ``get_check``, ``history_frame``, ``report_path``)
- :mod:`recsys.monitoring.windows` / :mod:`recsys.monitoring.drift`: the windows, and Evidently
"""
