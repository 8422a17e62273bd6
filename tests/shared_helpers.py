"""Helpers several test folders use (a module with its own name: `import conftest` is ambiguous).

- ``TOY_RECSYS`` / ``toy_config`` / ``toy_expected``: a tiny python-backend ``recsys`` model with the served
  model's contract (``user_id`` BYTES, ``k`` -> ``item_ids`` BYTES, ``scores``; integer ids as text),
  whose answer is a known function of the user, and which refuses the users in ``{refused}`` (format
  the source with ``refused=...``). ``legacy=True``: the contract of versions published before ids
  were text (INT64 ``user_id`` and ``item_ids``), which a rollback can bring back.
- ``patched_environ``: point ``os.environ`` (and ``get_settings()``) at a test's services, then restore.
- ``merlin_cli``: run a ``recsys`` command in the Merlin runtime with a test's settings (ingest, ETL, training).
"""

from __future__ import annotations

import contextlib
import os
import textwrap
from typing import Iterator

TOY_RECSYS = textwrap.dedent(
    """
    import numpy as np
    import triton_python_backend_utils as pb_utils

    REFUSED = {refused}
    LEGACY = {legacy}


    class TritonPythonModel:
        def execute(self, requests):
            out = []
            for request in requests:
                user = int(pb_utils.get_input_tensor_by_name(request, "user_id").as_numpy().reshape(-1)[0])  # b"1042"
                k_tensor = pb_utils.get_input_tensor_by_name(request, "k")
                k = int(k_tensor.as_numpy()[0]) if k_tensor is not None else 10
                if user in REFUSED:
                    out.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"user {{user}} refused")))
                    continue
                items = 5000 + (user + np.arange(k)) % 50
                scores = (1.0 - np.arange(k) / 100.0).astype(np.float32)
                item_text = np.array([b"%d" % i for i in items.tolist()], dtype=object)
                item_tensor = items.astype(np.int64) if LEGACY else item_text
                out.append(pb_utils.InferenceResponse([
                    pb_utils.Tensor("item_ids", item_tensor), pb_utils.Tensor("scores", scores)]))
            return out
    """
)


def toy_source(refused: tuple[int, ...] = (), legacy: bool = False) -> str:
    return TOY_RECSYS.format(refused=set(refused) or "set()", legacy=legacy)


def toy_config(instances: int = 1, legacy: bool = False) -> str:
    ids = "TYPE_INT64" if legacy else "TYPE_STRING"
    parameters = "" if legacy else (
        'parameters: { key: "user_id_kind" value: { string_value: "int" } }\n'
        'parameters: { key: "item_id_kind" value: { string_value: "int" } }'
    )
    return textwrap.dedent(
        f"""
        name: "recsys"
        backend: "python"
        max_batch_size: 0
        input [ {{ name: "user_id" data_type: {ids} dims: [ 1 ] }},
                {{ name: "k" data_type: TYPE_INT32 dims: [ 1 ] optional: true }} ]
        output [ {{ name: "item_ids" data_type: {ids} dims: [ -1 ] }},
                 {{ name: "scores" data_type: TYPE_FP32 dims: [ -1 ] }} ]
        instance_group [ {{ kind: KIND_CPU count: {instances} }} ]
        """
    ) + parameters + "\n"


def toy_expected(user: int, k: int) -> list[int]:
    return [5000 + (user + j) % 50 for j in range(k)]


@contextlib.contextmanager
def patched_environ(env: dict[str, str]) -> Iterator[None]:
    """Set ``env`` in ``os.environ`` (settings are re-read), and put everything back afterwards."""
    from recsys.settings import get_settings

    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    get_settings.cache_clear()
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        get_settings.cache_clear()


def merlin_cli(settings, *argv: str) -> None:
    """``recsys <argv>`` in the Merlin interpreter, with ``settings`` as its environment; asserts success."""
    import subprocess

    env = {**os.environ, **settings.as_env()}
    done = subprocess.run([str(settings.merlin_python), "-m", "recsys.cli", *argv], env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"recsys {' '.join(argv)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
