"""The ``recsys`` Triton model's request/response contract, declared once (docs/serving.md).

Every side of the wire reads it from here: :mod:`recsys.serving.repository` generates the model's
``config.pbtxt`` from these tensors, the python-backend model (``models/recsys/model.py``, running
in Triton's stub with the Merlin interpreter) parses its inputs and writes its outputs by these
names, and :mod:`recsys.serving.client` builds its requests from them.

Request: exactly one of ``user_id`` BYTES [1] (recommendations for that user) and ``item_id``
BYTES [1] (the items most similar to that one), each the raw id's text whatever its kind; optional
``k`` INT32 [1]; optional ``context`` BYTES [1] (a JSON object). Both ids are declared optional in
the config (Triton then accepts either); the model answers a request with both or neither with a
clear error. Response: ``item_ids`` BYTES [<=k], ``scores`` FP32 [<=k] (for ``item_id``: cosine
similarities), ``timings_ms`` FP32 [len(STAGES)] (only when asked). With dynamic batching every tensor
carries a leading batch dimension (the config's ``max_batch_size`` > 0; the dims here exclude it).
The config's ``parameters`` :data:`USER_ID_KIND` / :data:`ITEM_ID_KIND` name the deployment's id
kinds (:mod:`recsys.data.ids`), so clients read integers back from an integer deployment.

Plain data, no imports beyond the standard library: the Triton stub imports it too.
"""

from __future__ import annotations

from dataclasses import dataclass

MODEL = "recsys"
STAGES = ("retrieval", "filtering", "scoring", "ordering")
"""The four stages, in order: the keys of the engine's timings and the order of ``timings_ms``."""


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of a Triton model config: ``data_type`` as the config spells it (``TYPE_STRING``),
    ``dims`` without the batch dimension; ``optional``: the request may leave it out."""

    name: str
    data_type: str
    dims: tuple[int, ...]
    optional: bool = False

    @property
    def wire_type(self) -> str:
        """The type as clients spell it (``BYTES``, ``INT32``, ``FP32``)."""
        return "BYTES" if self.data_type == "TYPE_STRING" else self.data_type.removeprefix("TYPE_")


USER_ID = TensorSpec("user_id", "TYPE_STRING", (1,), optional=True)
ITEM_ID = TensorSpec("item_id", "TYPE_STRING", (1,), optional=True)
"""Similar items: the raw id of the item whose neighbours are asked (instead of ``user_id``)."""
K = TensorSpec("k", "TYPE_INT32", (1,), optional=True)
CONTEXT = TensorSpec("context", "TYPE_STRING", (1,), optional=True)
INPUTS = (USER_ID, ITEM_ID, K, CONTEXT)

ITEM_IDS = TensorSpec("item_ids", "TYPE_STRING", (-1,))
SCORES = TensorSpec("scores", "TYPE_FP32", (-1,))
TIMINGS_MS = TensorSpec("timings_ms", "TYPE_FP32", (len(STAGES),))
OUTPUTS = (ITEM_IDS, SCORES, TIMINGS_MS)

USER_ID_KIND, ITEM_ID_KIND = "user_id_kind", "item_id_kind"
"""The config's ``parameters`` that name the deployment's id kinds."""
