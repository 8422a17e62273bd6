"""The recsys HTTP API: events in, recommendations out (FastAPI on uvicorn, OpenAPI docs at ``/docs``).

- :mod:`recsys.api.app`: the app (``create_app(settings)``; routes, auth, errors);
- :mod:`recsys.api.models`: the request and response bodies;
- :mod:`recsys.api.metrics`: the Prometheus metrics (``GET /metrics``);
- :mod:`recsys.api.token`: the bearer token (``RECSYS_API_TOKEN`` or generated into a 0600 file);
- :mod:`recsys.api.server`: uvicorn in the foreground (``recsys api serve``; the stack's ``api`` service,
  :mod:`recsys.stack.api`);
- :mod:`recsys.api.cli`: ``recsys api serve | token | send-event``.

The API owns no domain logic: events are checked by :mod:`recsys.events.validation` and accepted by the
online store (:meth:`~recsys.online.store.OnlineStore.accept_events`), recommendations come from Triton
through :class:`recsys.serving.client.RecommendClient`, freshness from :mod:`recsys.events.freshness`.
"""
