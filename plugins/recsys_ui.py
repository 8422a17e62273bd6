"""Airflow plugin: the recsys page in Airflow's navigation (the app itself lives in recsys.ui).

Airflow loads this file from its plugins folder (``<repo>/plugins``, see recsys.stack.airflow),
mounts the FastAPI app at ``/recsys`` and adds "Recsys" to the navigation; the Airflow UI shows the
page in an iframe at ``/plugin/recsys``. The app checks the caller's Airflow token on every request.
"""

from airflow.plugins_manager import AirflowPlugin

from recsys.ui.app import URL_PREFIX, app


class RecsysUIPlugin(AirflowPlugin):
    name = "recsys_ui"
    fastapi_apps = [{"app": app, "url_prefix": URL_PREFIX, "name": "recsys"}]
    external_views = [
        {
            "name": "Recsys",
            "href": f"{URL_PREFIX}/",
            "destination": "nav",
            "url_route": "recsys",
        }
    ]
