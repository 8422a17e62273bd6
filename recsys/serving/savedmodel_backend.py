"""A Triton python-backend model that runs one SavedModel signature: shared by ``recsys_query_tower`` and
``recsys_ranker`` (their ``model.py`` files only name it).

Runs ``model.savedmodel/`` (its ``serving_default`` signature) with TensorFlow single-threaded; inputs and
outputs are the signature's, one tensor per feature column (config.pbtxt, written from the SavedModel's
merlin schema). On hosts with Triton's TensorFlow backend the same folder is served natively instead
(flavour ``tensorflow``). Imported only inside Triton's python-backend stub (``triton_python_backend_utils``).
"""


class SavedModelPythonModel:
    def initialize(self, args):
        from recsys.serving.engine import SavedModelFunction, configure_tensorflow_threads
        from recsys.serving.repository import verified_version_dir

        configure_tensorflow_threads(1, 1)
        self.model = SavedModelFunction(verified_version_dir(args) / "model.savedmodel")

    def execute(self, requests):
        import triton_python_backend_utils as pb_utils

        responses = []
        for request in requests:
            try:
                columns = {}
                for name in self.model.inputs:
                    tensor = pb_utils.get_input_tensor_by_name(request, name)
                    if tensor is None:
                        raise ValueError(f"input {name!r} is missing")
                    columns[name] = tensor.as_numpy().reshape(-1)
                output = self.model(columns)
                responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(self.model.output, output)]))
            except Exception as exc:  # an error for this request, never a dead instance
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"{type(exc).__name__}: {exc}")))
        return responses
