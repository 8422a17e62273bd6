"""``recsys_floor``: the cheapest python-backend model (echoes ``user_id`` as ``item_ids``).

It measures the floor of a request through Triton's python backend on this machine (the gRPC/HTTP
front end, the shared-memory hop to the stub, one numpy copy): what the four-stage model's cost is
compared with. It imports nothing but numpy.
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
            out = pb_utils.Tensor("item_ids", np.ascontiguousarray(user_id.as_numpy(), dtype=np.int64))
            responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
        return responses
