"""Ask the ``recsys`` Triton model for recommendations (gRPC or HTTP; tritonclient 2.51, both runtimes).

    from recsys.serving.client import RecommendClient
    with RecommendClient.from_settings() as client:
        client.recommend(1042, k=10)                       # [(item_id, score), ...] best first
        client.recommend_with_attributes(1042, k=10)       # [{"item_id", "score", **display attributes}, ...]

Errors (a bad request, a model that is not loaded, a server that does not answer) raise
:class:`~recsys.serving.control.ServingError` with Triton's message.

Callers that drive a tritonclient of their own (publishing's smoke test, the offline batch) build
their requests with the same helpers, so every caller agrees with the served config:

    batched = model_uses_batching(triton, "recsys")           # dynamic batching: tensors are [1, 1]
    result = triton.infer("recsys", recommend_inputs(tritonclient.http, user_id, k, batched=batched))
    item_ids, scores = recommendation_arrays(result)
"""

from __future__ import annotations

import json
from typing import Any, Mapping, Optional

import numpy as np

from recsys.serving.control import ServingError
from recsys.settings import Settings, get_settings

MODEL = "recsys"
STAGES = ("retrieval", "filtering", "scoring", "ordering")


def config_uses_batching(config: Mapping[str, Any]) -> bool:
    """True if a Triton model config (its JSON form) has dynamic batching: ``max_batch_size`` > 0."""
    return int(config.get("max_batch_size", 0) or 0) > 0


def model_uses_batching(triton: Any, model: str = MODEL) -> bool:
    """Ask Triton (a ``tritonclient.grpc`` or ``tritonclient.http`` client) whether ``model`` is batched."""
    from tritonclient.utils import InferenceServerException

    grpc = type(triton).__module__.startswith("tritonclient.grpc")
    try:
        if grpc:
            config = triton.get_model_config(model, as_json=True).get("config", {})
        else:
            config = triton.get_model_config(model)
    except InferenceServerException as exc:
        raise ServingError(f"Triton ({'grpc' if grpc else 'http'}) {model!r}: {exc.message()}") from None
    return config_uses_batching(config)


def recommend_inputs(
    module: Any,
    user_id: int,
    k: Optional[int] = None,
    context: Optional[dict[str, Any]] = None,
    *,
    batched: bool,
) -> list:
    """The input tensors of one ``recsys`` request; ``module``: ``tritonclient.grpc`` or ``tritonclient.http``.

    ``batched`` (:func:`model_uses_batching`): the served config has dynamic batching, so every
    tensor carries a leading batch dimension: shape [1, 1] instead of [1].
    """
    shape = [1, 1] if batched else [1]
    inputs = [module.InferInput("user_id", shape, "INT64")]
    inputs[0].set_data_from_numpy(np.array([user_id], dtype=np.int64).reshape(shape))
    if k is not None:
        inputs.append(module.InferInput("k", shape, "INT32"))
        inputs[-1].set_data_from_numpy(np.array([k], dtype=np.int32).reshape(shape))
    if context is not None:
        inputs.append(module.InferInput("context", shape, "BYTES"))
        inputs[-1].set_data_from_numpy(np.array([json.dumps(context).encode()], dtype=object).reshape(shape))
    return inputs


def recommendation_arrays(result: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(item_ids, scores)`` of one ``recsys`` answer, flat (without the batch dimension, if any)."""
    return result.as_numpy("item_ids").reshape(-1), result.as_numpy("scores").reshape(-1)


class RecommendClient:
    """A connection to Triton for the ``recsys`` model. ``protocol``: ``grpc`` (default) or ``http``."""

    def __init__(self, settings: Settings, protocol: str = "grpc", model: str = MODEL, timeout: float = 30.0):
        if protocol not in ("grpc", "http"):
            raise ValueError(f"protocol must be 'grpc' or 'http', got {protocol!r}")
        self.settings = settings
        self.protocol = protocol
        self.model = model
        self.timeout = timeout
        if protocol == "grpc":
            import tritonclient.grpc as module

            self._client = module.InferenceServerClient(settings.triton_grpc)
        else:
            import tritonclient.http as module

            url = settings.triton_http
            self._client = module.InferenceServerClient(
                url.split("://", 1)[-1], ssl=url.startswith("https://"), network_timeout=timeout
            )
        self._module = module
        self._store = None
        self._batched: Optional[bool] = None  # the model's dynamic batching, asked at the first request
        self.last_timings_ms: dict[str, float] = {}

    @classmethod
    def from_settings(cls, settings: Optional[Settings] = None, protocol: str = "grpc") -> "RecommendClient":
        return cls(settings or get_settings(), protocol)

    def __enter__(self) -> "RecommendClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()
        if self._store is not None:
            self._store.client.close()

    def recommend(
        self,
        user_id: int,
        k: Optional[int] = None,
        context: Optional[dict[str, Any]] = None,
        timings: bool = False,
    ) -> list[tuple[int, float]]:
        """``(item_id, score)`` pairs, best first. ``k`` None: the model's default.

        ``timings``: also fetch the per-stage milliseconds into :attr:`last_timings_ms`.
        """
        from tritonclient.utils import InferenceServerException

        for attempt in range(2):
            try:
                result = self._infer(user_id, k, context, timings)
                break
            except InferenceServerException as exc:
                # The model was reloaded with(out) dynamic batching since we looked: ask again, once.
                if attempt == 0 and "unexpected shape" in exc.message():
                    self._batched = None
                    continue
                raise ServingError(f"Triton ({self.protocol}) {self.model!r}: {exc.message()}") from None
        item_ids, scores = recommendation_arrays(result)
        if timings:
            self.last_timings_ms = dict(zip(STAGES, result.as_numpy("timings_ms").reshape(-1).tolist()))
        return [(int(i), float(s)) for i, s in zip(item_ids, scores)]

    def _infer(self, user_id: int, k: Optional[int], context: Optional[dict[str, Any]], timings: bool):
        m = self._module
        inputs = recommend_inputs(m, user_id, k, context, batched=self._uses_batching())
        names = ["item_ids", "scores"] + (["timings_ms"] if timings else [])
        outputs = [m.InferRequestedOutput(n) for n in names]
        if self.protocol == "grpc":
            return self._client.infer(self.model, inputs, outputs=outputs, client_timeout=self.timeout)
        return self._client.infer(self.model, inputs, outputs=outputs)

    def _uses_batching(self) -> bool:
        """True if the served model has dynamic batching (``max_batch_size`` > 0); asked once."""
        if self._batched is None:
            self._batched = model_uses_batching(self._client, self.model)
        return self._batched

    def recommend_with_attributes(
        self, user_id: int, k: Optional[int] = None, context: Optional[dict[str, Any]] = None
    ) -> list[dict[str, Any]]:
        """:meth:`recommend` plus each item's display attributes from the online store."""
        pairs = self.recommend(user_id, k, context)
        if self._store is None:
            from recsys.online.redis_store import RedisOnlineStore

            self._store = RedisOnlineStore.from_settings(self.settings)
        attributes = self._store.display([item for item, _ in pairs]) if pairs else []
        return [{"item_id": item, "score": score, **(attrs or {})} for (item, score), attrs in zip(pairs, attributes)]


def recommend(
    user_id: int, k: Optional[int] = None, context: Optional[dict[str, Any]] = None, settings: Optional[Settings] = None
) -> list[tuple[int, float]]:
    """One-off :meth:`RecommendClient.recommend` over gRPC (opens and closes a connection)."""
    with RecommendClient.from_settings(settings) as client:
        return client.recommend(user_id, k, context)
