"""``recsys_floor``: the cheapest python-backend model (echoes ``user_id`` as ``item_ids``).

It measures the floor of a request through Triton's python backend on this machine (the gRPC/HTTP
front end, the shared-memory hop to the stub, one numpy copy): what the four-stage model's cost is
compared with. Its tensors are those of ``recsys`` (``user_id`` BYTES [1] in, ``item_ids`` BYTES
out), so a benchmark's request is the same for both. It imports nothing but numpy.
"""

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            user_id = pb_utils.get_input_tensor_by_name(request, "user_id")
            if user_id is None:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError("input 'user_id' is missing")))
                continue
            out = pb_utils.Tensor("item_ids", np.ascontiguousarray(user_id.as_numpy(), dtype=object))
            responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
        return responses
