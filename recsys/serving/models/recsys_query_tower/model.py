"""``recsys_query_tower``: the query tower (user features -> query embedding), python-backend flavour.

The code is shared with ``recsys_ranker``: :mod:`recsys.serving.savedmodel_backend`.
"""

from recsys.serving.savedmodel_backend import SavedModelPythonModel as TritonPythonModel  # noqa: F401
