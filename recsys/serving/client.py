"""Ask the ``recsys`` Triton model for recommendations (gRPC or HTTP; tritonclient 2.51, both runtimes).

    from recsys.serving.client import RecommendClient
    with RecommendClient.from_settings() as client:
        client.recommend(1042, k=10)                       # [(item_id, score), ...] best first
        client.recommend("u-7f3a", k=10)                   # text ids: [("SKU-85123A", 0.93), ...]
        client.recommend_with_attributes(1042, k=10)       # [{"item_id", "score", **display attributes}, ...]
        client.similar(12, k=10)                           # the item's nearest items: [(item_id, cosine), ...]
        client.similar_with_attributes(12, k=10)

Ids travel as text (BYTES tensors) for both kinds; the served config's ``parameters`` name the
deployment's id kinds, so item ids come back as ints for an integer deployment and as str for a
text one (:mod:`recsys.data.ids`). A user id may be given as an int or a str.

Errors (a bad request, a model that is not loaded, a server that does not answer) raise
:class:`~recsys.serving.control.ServingError` with Triton's message.

The tensors are those :mod:`recsys.serving.schema` declares (the served config is generated from
it). Callers that drive a tritonclient of their own (publishing's smoke test, the offline batch;
:mod:`recsys.serving.triton_client` makes it) build their requests with the same helpers, so every
caller agrees with the served config:

    contract = served_contract(triton, "recsys")             # batching ([1, 1] tensors), id kinds
    result = triton.infer("recsys", recommend_inputs(tritonclient.http, user_id, k, contract=contract))
    item_ids, scores = recommendation_arrays(result, contract)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Mapping, Optional

import numpy as np

from recsys.data import ids
from recsys.serving import schema, triton_client
from recsys.serving.control import ServingError
from recsys.serving.schema import MODEL, STAGES  # noqa: F401  (MODEL: callers name the model from here)
from recsys.settings import Settings, get_settings


def config_uses_batching(config: Mapping[str, Any]) -> bool:
    """True if a Triton model config (its JSON form) has dynamic batching: ``max_batch_size`` > 0."""
    return int(config.get("max_batch_size", 0) or 0) > 0


@dataclass(frozen=True)
class ServedContract:
    """What a caller must know of the served ``recsys`` config to build requests and read answers."""

    batched: bool
    """Dynamic batching: every tensor carries a leading batch dimension ([1, 1] instead of [1])."""
    id_kinds: ids.IdKinds = ids.IdKinds()
    """The deployment's id kinds (the config's ``user_id_kind`` / ``item_id_kind`` parameters)."""
    user_id_type: str = "BYTES"
    """The ``user_id`` tensor's type: BYTES, or INT64 for a version published before ids were text
    (a rollback may serve one): requests follow the served config."""
    similar: bool = False
    """The config has the ``item_id`` input (similar items); versions published before it do not."""


def contract_of_config(config: Mapping[str, Any]) -> ServedContract:
    """:class:`ServedContract` of a Triton model config in its JSON form (gRPC or HTTP)."""
    parameters = config.get("parameters") or {}

    def parameter(name: str) -> Optional[str]:
        value = parameters.get(name) or {}
        return value.get("string_value", value.get("stringValue"))

    user = {t.get("name"): t for t in config.get("input", [])}.get(schema.USER_ID.name, {})
    data_type = str(user.get("data_type", user.get("dataType", schema.USER_ID.data_type)))
    kinds = ids.IdKinds.from_dict({"user_id": parameter(schema.USER_ID_KIND), "item_id": parameter(schema.ITEM_ID_KIND)})
    similar = any(t.get("name") == schema.ITEM_ID.name for t in config.get("input", []))
    return ServedContract(config_uses_batching(config), kinds, "INT64" if data_type == "TYPE_INT64" else "BYTES", similar)


def _model_config(triton: Any, model: str) -> dict:
    from tritonclient.utils import InferenceServerException

    grpc = type(triton).__module__.startswith("tritonclient.grpc")
    try:
        if grpc:
            return triton.get_model_config(model, as_json=True).get("config", {})
        return triton.get_model_config(model)
    except InferenceServerException as exc:
        raise ServingError(f"Triton ({'grpc' if grpc else 'http'}) {model!r}: {exc.message()}") from None


def served_contract(triton: Any, model: str = MODEL) -> ServedContract:
    """Ask Triton (a ``tritonclient.grpc`` or ``tritonclient.http`` client) for ``model``'s contract."""
    return contract_of_config(_model_config(triton, model))


def model_uses_batching(triton: Any, model: str = MODEL) -> bool:
    """Ask Triton (a ``tritonclient.grpc`` or ``tritonclient.http`` client) whether ``model`` is batched."""
    return config_uses_batching(_model_config(triton, model))


def recommend_inputs(
    module: Any,
    user_id: Any,
    k: Optional[int] = None,
    context: Optional[dict[str, Any]] = None,
    *,
    batched: Optional[bool] = None,
    contract: Optional[ServedContract] = None,
) -> list:
    """The input tensors of one ``recsys`` request; ``module``: ``tritonclient.grpc`` or ``tritonclient.http``.

    ``contract`` (:func:`served_contract`), or just ``batched`` (:func:`model_uses_batching`) for a
    text-id config: with dynamic batching every tensor carries a leading batch dimension, shape
    [1, 1] instead of [1]. ``user_id`` (int or str) travels as its text (BYTES).
    """
    if contract is None:
        if batched is None:
            raise ValueError("recommend_inputs needs the served contract (or batched=)")
        contract = ServedContract(bool(batched))
    if contract.user_id_type == "INT64":  # a version published before ids were text
        user = ids.as_array([ids.parse(user_id, ids.INT, "user_id")], ids.INT)
    else:
        user = ids.to_triton([user_id])
    return _inputs(module, contract, (schema.USER_ID, user, contract.user_id_type), k, context)


def similar_inputs(
    module: Any, item_id: Any, k: Optional[int] = None, context: Optional[dict[str, Any]] = None, *,
    contract: ServedContract,
) -> list:
    """The input tensors of one similar-items request (``item_id`` instead of ``user_id``) to ``recsys``;
    :class:`ServingError` when the served version has no ``item_id`` input (published before similar
    items existed)."""
    if not contract.similar:
        raise ServingError(
            f"the served {MODEL!r} version has no '{schema.ITEM_ID.name}' input: it was published before similar "
            "items existed; publish again (recsys serving publish --force) to serve them"
        )
    return _inputs(module, contract, (schema.ITEM_ID, ids.to_triton([item_id]), None), k, context)


def _inputs(module: Any, contract: ServedContract, identity: tuple, k: Optional[int], context: Optional[dict[str, Any]]) -> list:
    """The id tensor ``identity`` (spec, value, wire type or None) plus the optional ``k`` and ``context``."""

    def tensor(spec: schema.TensorSpec, value: np.ndarray, wire_type: Optional[str] = None):
        shape = [1, *spec.dims] if contract.batched else list(spec.dims)
        tensor = module.InferInput(spec.name, shape, wire_type or spec.wire_type)
        tensor.set_data_from_numpy(value.reshape(shape))
        return tensor

    inputs = [tensor(*identity)]
    if k is not None:
        inputs.append(tensor(schema.K, np.array([k], dtype=np.int32)))
    if context is not None:
        inputs.append(tensor(schema.CONTEXT, np.array([json.dumps(context).encode()], dtype=object)))
    return inputs


def recommendation_arrays(result: Any, contract: ServedContract) -> tuple[np.ndarray, np.ndarray]:
    """``(item_ids, scores)`` of one ``recsys`` answer, flat (without the batch dimension, if any);
    item ids in the deployment's kind (int64, or an object array of str)."""
    item_ids = ids.from_triton(result.as_numpy(schema.ITEM_IDS.name), contract.id_kinds.item_id)
    return item_ids, result.as_numpy(schema.SCORES.name).reshape(-1)


class RecommendClient:
    """Connections to Triton for the ``recsys`` model. ``protocol``: ``grpc`` (default) or ``http``. With several
    Triton replicas, each request goes to the next one in turn, skipping one that refuses connections
    (:class:`recsys.serving.triton_client.Replicas`)."""

    def __init__(self, settings: Settings, protocol: str = "grpc", model: str = MODEL):
        self._replicas = triton_client.Replicas(settings, protocol)  # refuses an unknown protocol
        self.settings = settings
        self.protocol = protocol
        self.model = model
        if protocol == "grpc":
            import tritonclient.grpc as module
        else:
            import tritonclient.http as module
        self._module = module
        self._store = None
        self._contract: Optional[ServedContract] = None  # the served config's, asked at the first request
        self.last_timings_ms: dict[str, float] = {}

    @classmethod
    def from_settings(cls, settings: Optional[Settings] = None, protocol: str = "grpc") -> "RecommendClient":
        return cls(settings or get_settings(), protocol)

    def __enter__(self) -> "RecommendClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._replicas.close()
        if self._store is not None:
            self._store.client.close()

    def recommend(
        self,
        user_id: ids.IdValue,
        k: Optional[int] = None,
        context: Optional[dict[str, Any]] = None,
        timings: bool = False,
    ) -> list[tuple[ids.IdValue, float]]:
        """``(item_id, score)`` pairs, best first; item ids are ints for an integer deployment and
        str for a text one. ``user_id``: the raw id (int or str). ``k`` None: the model's default.

        ``timings``: also fetch the per-stage milliseconds of this request into :attr:`last_timings_ms`.
        """
        return self._ask(lambda: self._infer(user_id, k, context, timings), timings)

    def similar(
        self, item_id: ids.IdValue, k: Optional[int] = None, context: Optional[dict[str, Any]] = None, timings: bool = False,
    ) -> list[tuple[ids.IdValue, float]]:
        """The ``k`` items most similar to ``item_id`` (raw id, int or str): ``(item_id, cosine similarity)``
        pairs, most similar first, without the item itself, unavailable items and items the online
        version does not hold. ``k`` None: the model's default; ``context``: ``{"exclude_items": [...]}``.
        An unknown item, or a version serving the popularity list, is a :class:`ServingError`."""
        return self._ask(lambda: self._infer_similar(item_id, k, context, timings), timings)

    def _ask(self, infer, timings: bool) -> list[tuple[ids.IdValue, float]]:
        from tritonclient.utils import InferenceServerException

        for attempt in range(2):
            try:
                result = infer()
                break
            except InferenceServerException as exc:
                # The model was reloaded with another contract (batching, id tensors) since we
                # looked: ask again, once.
                message = exc.message() or ""
                if attempt == 0 and ("unexpected shape" in message or "data-type is" in message
                                     or "unexpected inference input" in message):
                    self._contract = None
                    continue
                raise ServingError(f"Triton ({self.protocol}) {self.model!r}: {exc.message()}") from None
        item_ids, scores = recommendation_arrays(result, self._served())
        if timings:
            self.last_timings_ms = dict(zip(STAGES, result.as_numpy(schema.TIMINGS_MS.name).reshape(-1).tolist()))
        return list(zip(item_ids.tolist(), scores.tolist()))

    @property
    def id_kinds(self) -> ids.IdKinds:
        """The served deployment's id kinds."""
        return self._served().id_kinds

    def _infer(self, user_id: ids.IdValue, k: Optional[int], context: Optional[dict[str, Any]], timings: bool):
        return self._send(recommend_inputs(self._module, user_id, k, context, contract=self._served()), timings)

    def _infer_similar(self, item_id: ids.IdValue, k: Optional[int], context: Optional[dict[str, Any]], timings: bool):
        contract = self._served()
        if not contract.similar:  # maybe reloaded since we looked: ask the served config once more
            self._contract = None
            contract = self._served()
        return self._send(similar_inputs(self._module, item_id, k, context, contract=contract), timings)

    def _send(self, inputs: list, timings: bool):
        m = self._module
        names = [schema.ITEM_IDS.name, schema.SCORES.name] + ([schema.TIMINGS_MS.name] if timings else [])
        outputs = [m.InferRequestedOutput(n) for n in names]
        deadline = {"client_timeout": triton_client.REQUEST_TIMEOUT_S} if self.protocol == "grpc" else {}
        return self._replicas.call(lambda client: client.infer(self.model, inputs, outputs=outputs, **deadline))

    def _served(self) -> ServedContract:
        """The served model's contract (batching, id kinds); asked once."""
        if self._contract is None:
            self._contract = self._replicas.call(lambda client: served_contract(client, self.model))
        return self._contract

    def recommend_with_attributes(
        self, user_id: ids.IdValue, k: Optional[int] = None, context: Optional[dict[str, Any]] = None,
        timings: bool = False,
    ) -> list[dict[str, Any]]:
        """:meth:`recommend` plus each item's display attributes from the online store (``timings``: as
        :meth:`recommend`, the same request's)."""
        return self._with_attributes(self.recommend(user_id, k, context, timings))

    def similar_with_attributes(
        self, item_id: ids.IdValue, k: Optional[int] = None, context: Optional[dict[str, Any]] = None,
        timings: bool = False,
    ) -> list[dict[str, Any]]:
        """:meth:`similar` plus each item's display attributes from the online store."""
        return self._with_attributes(self.similar(item_id, k, context, timings))

    def _with_attributes(self, pairs: list[tuple[ids.IdValue, float]]) -> list[dict[str, Any]]:
        if self._store is None:
            from recsys.online.redis_store import RedisOnlineStore

            self._store = RedisOnlineStore.from_settings(self.settings)
        attributes = self._store.display([item for item, _ in pairs]) if pairs else []
        return [{"item_id": item, "score": score, **(attrs or {})} for (item, score), attrs in zip(pairs, attributes)]


def recommend(
    user_id: ids.IdValue, k: Optional[int] = None, context: Optional[dict[str, Any]] = None,
    settings: Optional[Settings] = None,
) -> list[tuple[ids.IdValue, float]]:
    """One-off :meth:`RecommendClient.recommend` over gRPC (opens and closes a connection)."""
    with RecommendClient.from_settings(settings) as client:
        return client.recommend(user_id, k, context)
