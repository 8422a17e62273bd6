"""``recsys``: the four-stage recommender as a Triton python-backend model.

The request/response tensors are declared in :mod:`recsys.serving.schema` (the config and the
clients use the same declaration; the stub imports it through the Merlin interpreter's ``recsys``).
Request: ``user_id`` BYTES [1], the raw id's UTF-8 text (``b"1042"``, ``b"u-7f3a"``), parsed into
the deployment's user id kind (pipeline.json ``ids``; a text id sent to an integer deployment is a
bad request), or instead ``item_id`` BYTES [1] (similar items: that item's nearest items, scores
are cosine similarities); exactly one of the two; optional ``k`` INT32 [1] (default and maximum
from pipeline.json); optional ``context`` BYTES [1], a JSON object (``{"exclude_items": [raw ids]}``). With dynamic batching
(``max_batch_size`` > 0) the same tensors carry the batch dimension: [1, 1].
Response: ``item_ids`` BYTES [<=k] (raw ids as text, for both kinds: the config's ``parameters``
``user_id_kind`` / ``item_id_kind`` tell clients to read integers back), ``scores`` FP32 [<=k];
``timings_ms`` FP32 [4] (retrieval, filtering, scoring, ordering, of the batch the request was part
of) only when the client asks.

The work is :class:`recsys.serving.engine.FourStageRecommender`, loaded once per instance from this
version folder (query tower, ranker, FAISS index, pipeline.json). Every request Triton hands to one
``execute`` call is answered in one pass of the stages (``recommend_many``). Redis comes from the
server's environment (``recsys.settings``). A bad request gets an error response; the others in
its batch are answered and the instance keeps serving.
"""

import json

import numpy as np
import triton_python_backend_utils as pb_utils

from recsys.serving.schema import CONTEXT, ITEM_ID, ITEM_IDS, K, SCORES, STAGES, TIMINGS_MS, USER_ID


class TritonPythonModel:
    def initialize(self, args):
        from recsys.data import ids
        from recsys.serving.engine import BadRequest, FourStageRecommender, Query, configure_tensorflow_threads
        from recsys.serving.repository import verified_version_dir

        # One instance per core; TensorFlow single-threaded inside each (see docs/serving.md).
        configure_tensorflow_threads(1, 1)
        version_dir = verified_version_dir(args)
        self.engine = FourStageRecommender.load(version_dir)
        self.engine.warm_up()
        self.bad_request = BadRequest
        self.query = Query
        self.to_triton = ids.to_triton
        self.logger = pb_utils.Logger
        self.logger.log_info(
            f"recsys: version {args['model_version']} loaded from {version_dir} "
            + (f"({self.engine.index.meta['kind']} index of {self.engine.index.meta['items']} items)"
               if self.engine.index is not None else "(popularity mode: no model beats the popularity baseline yet)")
        )

    def execute(self, requests):
        responses = [None] * len(requests)
        queries, slots, batched = [], [], []
        for i, request in enumerate(requests):
            try:
                query, with_batch_dim = self._parse(request)
                queries.append(query)
                slots.append(i)
                batched.append(with_batch_dim)
            except self.bad_request as exc:
                responses[i] = _error(f"bad request: {exc}")
        if queries:
            try:
                results = self.engine.recommend_many(queries)
            except Exception as exc:  # an error for these requests, never a dead instance
                self.logger.log_error(f"recsys: batch of {len(queries)} failed: {type(exc).__name__}: {exc}")
                results = [exc] * len(queries)
            for i, result, with_batch_dim in zip(slots, results, batched):
                responses[i] = self._respond(requests[i], result, with_batch_dim)
        return responses

    def _parse(self, request):
        user = pb_utils.get_input_tensor_by_name(request, USER_ID.name)
        item = pb_utils.get_input_tensor_by_name(request, ITEM_ID.name)
        if (user is None) == (item is None):
            raise self.bad_request(
                f"give exactly one of '{USER_ID.name}' (recommendations for a user) and '{ITEM_ID.name}' (similar "
                f"items), each {USER_ID.wire_type} shape {list(USER_ID.dims)}: the raw id's text; got "
                + ("both" if user is not None else "neither")
            )
        spec, tensor = (USER_ID, user) if user is not None else (ITEM_ID, item)
        id_array = tensor.as_numpy()  # BYTES: an object array of bytes
        id_values = id_array.reshape(-1)
        if id_values.size != 1:
            raise self.bad_request(f"{spec.name} must hold exactly one id, got {id_values.size}")
        k_tensor = pb_utils.get_input_tensor_by_name(request, K.name)
        k = None
        if k_tensor is not None:
            values = k_tensor.as_numpy().reshape(-1)
            if values.size != 1:
                raise self.bad_request(f"{K.name} must hold exactly one number, got {values.size}")
            k = int(values[0])
        context = None
        context_tensor = pb_utils.get_input_tensor_by_name(request, CONTEXT.name)
        if context_tensor is not None:
            raw = context_tensor.as_numpy().reshape(-1)
            if raw.size:
                text = raw[0].decode("utf-8", errors="replace") if isinstance(raw[0], bytes) else str(raw[0])
                if text.strip():
                    try:
                        context = json.loads(text)
                    except json.JSONDecodeError as exc:
                        raise self.bad_request(f"{CONTEXT.name} is not valid JSON ({exc.msg} at character {exc.pos}): {text[:80]!r}")
        # [1, 1]: the request came through the dynamic batcher; its outputs get the batch dimension too.
        # The engine parses the id into the deployment's kind (a bad one is this request's error).
        if spec is USER_ID:
            return self.query(id_values[0], k, context), id_array.ndim == 2
        return self.query(None, k, context, item_id=id_values[0]), id_array.ndim == 2

    def _respond(self, request, result, with_batch_dim):
        if isinstance(result, self.bad_request):
            return _error(f"bad request: {result}")
        if isinstance(result, Exception):
            return _error(f"recommendation failed: {type(result).__name__}: {result}")
        shape = (1, -1) if with_batch_dim else (-1,)
        outputs = [
            pb_utils.Tensor(ITEM_IDS.name, self.to_triton(result.item_ids).reshape(shape)),
            pb_utils.Tensor(SCORES.name, result.scores.astype(np.float32).reshape(shape)),
        ]
        if TIMINGS_MS.name in request.requested_output_names():
            timings = np.array([result.timings_ms[s] for s in STAGES], np.float32)
            outputs.append(pb_utils.Tensor(TIMINGS_MS.name, timings.reshape(shape)))
        return pb_utils.InferenceResponse(output_tensors=outputs)


def _error(message):
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message))
