"""Fixtures of the UI tests (helpers are in ui_helpers.py)."""

from __future__ import annotations

import pytest
from ui_helpers import REPORT_TITLE


@pytest.fixture(scope="session")
def evidently_report_html() -> str:
    """A real (small) Evidently data drift report page, as the monitoring package saves it."""
    import numpy as np
    import pandas as pd
    from evidently import Report
    from evidently.presets import DataDriftPreset

    rng = np.random.default_rng(0)
    reference = pd.DataFrame({"age": rng.normal(30, 5, 200), "price": rng.normal(10, 2, 200)})
    current = pd.DataFrame({"age": rng.normal(40, 5, 200), "price": rng.normal(10, 2, 200)})
    snapshot = Report([DataDriftPreset()]).run(current, reference)
    html = snapshot.get_html_str(as_iframe=False)
    # A marker the browser test can find inside the report page.
    return html.replace("<head>", f"<head><title>{REPORT_TITLE}</title>", 1)
