"""``recsys_item_index``: the FAISS item index of retrieval (query embedding -> top items).

Request: ``query`` FP32 [1, dim]; optional ``k`` INT32 [1] (default 200). Response: ``item_ids``
BYTES (raw ids as text, whatever their kind: the same wire format as ``recsys``) and ``scores``
FP32 (inner products), best first. Files in ``index/`` (:mod:`recsys.serving.index`).
"""

import numpy as np
import triton_python_backend_utils as pb_utils

DEFAULT_K = 200


class TritonPythonModel:
    def initialize(self, args):
        from recsys.data import ids
        from recsys.serving.index import ItemIndex
        from recsys.serving.repository import verified_version_dir

        self.to_triton = ids.to_triton
        self.index = ItemIndex.load(verified_version_dir(args) / "index")

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                query = pb_utils.get_input_tensor_by_name(request, "query").as_numpy()
                k_tensor = pb_utils.get_input_tensor_by_name(request, "k")
                k = int(k_tensor.as_numpy().reshape(-1)[0]) if k_tensor is not None else DEFAULT_K
                if k < 1:
                    raise ValueError(f"k must be >= 1, got {k}")
                raw_ids, _codes, scores = self.index.search(query, k)
                responses.append(
                    pb_utils.InferenceResponse(
                        output_tensors=[
                            pb_utils.Tensor("item_ids", self.to_triton(raw_ids)),
                            pb_utils.Tensor("scores", scores.astype(np.float32)),
                        ]
                    )
                )
            except Exception as exc:  # an error for this request, never a dead instance
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"{type(exc).__name__}: {exc}")))
        return responses
