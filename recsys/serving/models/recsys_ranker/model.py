"""``recsys_ranker``: the DLRM ranker (user x item features -> click probability), python-backend flavour.

The code is shared with ``recsys_query_tower``: :mod:`recsys.serving.savedmodel_backend`.
"""

from recsys.serving.savedmodel_backend import SavedModelPythonModel as TritonPythonModel  # noqa: F401
