"""A Python client of the recsys HTTP API (what the CLI's ``send-event`` and the demo use).

    with ApiClient.from_settings() as api:
        api.send_events([{"user_id": 7, "item_id": 12, "event_type": "purchase", "timestamp": time.time()}])
        api.recommendations(7, k=10)          # {"request_id", "user_id", "items": [{"item_id", "score", "attributes"}], ...}
        api.similar(12, k=5)                  # {"item_id", "items": [...]}
        api.activity("items", 12)             # {"id", "counts": {"purchase": {"1h": 3, "24h": 9}}, "windows"}

Errors raise :class:`ApiError` with the status and the API's own explanation (for a refused batch, every
problem with its event's index). Applications in other languages speak the same HTTP (``/docs``).
"""

from __future__ import annotations

from typing import Any, Iterable, Optional

from recsys.errors import RecsysError, ServiceError
from recsys.settings import Settings, get_settings


class ApiError(RecsysError):
    """The API answered with an error: ``status`` and ``body`` (its JSON)."""

    def __init__(self, status: int, body: Any, what: str):
        self.status, self.body = status, body
        detail = body.get("detail", body) if isinstance(body, dict) else body
        problems = body.get("problems") if isinstance(body, dict) else None
        if problems:
            detail = "; ".join(f"event {p['index']}: {p['field']}: {p['reason']}" for p in problems)
        super().__init__(f"{what}: the API answered {status}: {detail}")


class ApiClient:
    """One keep-alive connection to the API at ``settings.api`` with its bearer token."""

    def __init__(self, settings: Settings, timeout: float = 30.0):
        import httpx

        from recsys.api.token import api_token

        self.url = settings.api
        self._http = httpx.Client(base_url=self.url, timeout=timeout,
                                  headers={"Authorization": f"Bearer {api_token(settings)}"})

    @classmethod
    def from_settings(cls, settings: Optional[Settings] = None) -> "ApiClient":
        return cls(settings or get_settings())

    def __enter__(self) -> "ApiClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _call(self, what: str, method: str, path: str, **kwargs: Any) -> dict:
        import httpx

        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ServiceError(f"{what}: the recsys API at {self.url} is not answering ({exc}); "
                               "start it with `recsys stack up`") from None
        try:
            body = response.json()
        except ValueError:
            body = {"detail": response.text}
        if response.status_code >= 400:
            raise ApiError(response.status_code, body, what)
        return body

    def send_events(self, events: list[dict[str, Any]]) -> dict:
        """``POST /v1/events``: ``{"accepted", "first_id", "last_id"}`` (visible to serving milliseconds later)."""
        return self._call("sending events", "POST", "/v1/events", json={"events": events})

    def recommendations(self, user_id: Any, k: Optional[int] = None, exclude: Iterable[Any] = ()) -> dict:
        params: dict[str, Any] = {"exclude": [str(i) for i in exclude]}
        if k is not None:
            params["k"] = k
        return self._call(f"recommendations for user {user_id}", "GET", f"/v1/recommendations/{user_id}", params=params)

    def similar(self, item_id: Any, k: Optional[int] = None) -> dict:
        params = {"k": k} if k is not None else {}
        return self._call(f"items similar to {item_id}", "GET", f"/v1/items/{item_id}/similar", params=params)

    def activity(self, entity: str, entity_id: Any) -> dict:
        """Live counters of ``entity`` (``"items"`` or ``"users"``) ``entity_id``."""
        return self._call(f"activity of {entity} {entity_id}", "GET", f"/v1/{entity}/{entity_id}/activity")
