"""``recsys``: the four-stage recommender as a Triton python-backend model.

Request: ``user_id`` INT64 [1]; optional ``k`` INT32 [1] (default and maximum from pipeline.json);
optional ``context`` BYTES [1], a JSON object (``{"exclude_items": [raw ids]}``).
Response: ``item_ids`` INT64 [<=k], ``scores`` FP32 [<=k]; ``timings_ms`` FP32 [4] (retrieval,
filtering, scoring, ordering) only when the client asks for that output.

The work is :class:`recsys.serving.engine.FourStageRecommender`, loaded once per instance from this
version folder (query tower, ranker, FAISS index, pipeline.json). Redis comes from the server's
environment (``recsys.settings``). A bad request gets an error response; the instance keeps serving.
"""

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        from recsys.serving.engine import BadRequest, FourStageRecommender, configure_tensorflow_threads

        # One instance per core; TensorFlow single-threaded inside each (see docs/serving.md).
        configure_tensorflow_threads(1, 1)
        version_dir = Path(args["model_repository"]) / args["model_version"]
        self.engine = FourStageRecommender.load(version_dir)
        self.engine.warm_up()
        self.bad_request = BadRequest
        self.logger = pb_utils.Logger
        self.logger.log_info(
            f"recsys: version {args['model_version']} loaded from {version_dir} "
            f"({self.engine.index.meta['kind']} index of {self.engine.index.meta['items']} items)"
        )

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                responses.append(self._answer(request))
            except self.bad_request as exc:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"bad request: {exc}")))
            except Exception as exc:  # an error for this request, never a dead instance
                self.logger.log_error(f"recsys: request failed: {type(exc).__name__}: {exc}")
                responses.append(
                    pb_utils.InferenceResponse(error=pb_utils.TritonError(f"recommendation failed: {type(exc).__name__}: {exc}"))
                )
        return responses

    def _answer(self, request):
        user = pb_utils.get_input_tensor_by_name(request, "user_id")
        if user is None:
            raise self.bad_request("input 'user_id' (INT64, shape [1]) is missing")
        user_ids = user.as_numpy().reshape(-1)
        if user_ids.size != 1:
            raise self.bad_request(f"user_id must hold exactly one id, got {user_ids.size}")
        k_tensor = pb_utils.get_input_tensor_by_name(request, "k")
        k = None
        if k_tensor is not None:
            values = k_tensor.as_numpy().reshape(-1)
            if values.size != 1:
                raise self.bad_request(f"k must hold exactly one number, got {values.size}")
            k = int(values[0])
        context = None
        context_tensor = pb_utils.get_input_tensor_by_name(request, "context")
        if context_tensor is not None:
            raw = context_tensor.as_numpy().reshape(-1)
            if raw.size:
                text = raw[0].decode("utf-8", errors="replace") if isinstance(raw[0], bytes) else str(raw[0])
                if text.strip():
                    try:
                        context = json.loads(text)
                    except json.JSONDecodeError as exc:
                        raise self.bad_request(f"context is not valid JSON ({exc.msg} at character {exc.pos}): {text[:80]!r}")
        result = self.engine.recommend(int(user_ids[0]), k, context)
        outputs = [
            pb_utils.Tensor("item_ids", result.item_ids.astype(np.int64)),
            pb_utils.Tensor("scores", result.scores.astype(np.float32)),
        ]
        if "timings_ms" in request.requested_output_names():
            timings = np.array([result.timings_ms[s] for s in ("retrieval", "filtering", "scoring", "ordering")], np.float32)
            outputs.append(pb_utils.Tensor("timings_ms", timings))
        return pb_utils.InferenceResponse(output_tensors=outputs)
