"""The FAISS item index of retrieval: built from ``retrieval/item_embeddings.parquet``, searched per request.

Files written into a folder (a model version directory):

- ``items.faiss``: inner-product index over the item embeddings; **flat** (exact) for small
  catalogues, **IVF** (approximate: ``nlist`` clusters, ``nprobe`` of them searched) for large ones;
- ``item_ids.npy``: the RAW item id of each index position: int64, or fixed-width unicode (``<U``n)
  for text ids (:mod:`recsys.data.ids`), so the file loads without pickle;
- ``item_codes.npy``: the encoded item id of each index position (int64; the ranker's input);
- ``index.json``: kind, items, dim, nlist, nprobe, id_kind (of the raw item ids; absent: int),
  prior_slot (absent: false).

**The prior slot.** When the training run chose a popularity prior (``retrieval_prior_weight`` > 0,
:func:`prior_slot_of`), every exported item vector is ``[v, w * log(1 + positives)]`` and the query
tower outputs ``[q, 1]``: the retrieval search ranks by ``q . v + w * prior`` unchanged. The last
dimension is then not part of what an item *is*: item-to-item similarity must ignore it. Whether
the slot exists is recorded here, in ``index.json``, at index build (publishing passes it from the
champion's run metrics): the vectors and the description of their layout travel in one folder, so
whoever loads an index (the ``recsys`` model, ``recsys_item_index``, a benchmark) reads its vectors
right without being told; a folder written before the key existed means no slot.

**Neighbours** (:meth:`ItemIndex.neighbours`): cosine similarity between items, i.e. inner
product over the vectors without the prior slot, L2-normalised; an exact ``IndexFlatIP`` over those
unit vectors, built on first use from the stored vectors (an IVF index's are reconstructed through
its direct map), one FAISS search for a whole batch of queries.

Building needs faiss (Merlin runtime). From the control plane, :func:`build_index` runs itself in the
Merlin interpreter (``python -m recsys.serving.index``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import math
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from recsys.data import ids
from recsys.errors import ConfigError, RecsysError

log = logging.getLogger(__name__)

IVF_FROM_ITEMS = 50_000
"""``faiss_index = auto``: IVF from this many items (exact search costs ~1 ms per 100k x 64 items here)."""
IVF_NPROBE = 16
INDEX_FILE, IDS_FILE, CODES_FILE, META_FILE = "items.faiss", "item_ids.npy", "item_codes.npy", "index.json"
PRIOR_WEIGHT_METRIC = "retrieval_prior_weight"
"""The training run's metric: the popularity prior weight folded into the exports (0: none)."""


def prior_slot_of(metrics) -> bool:
    """Whether a training run's exported vectors carry the popularity prior slot, from its metrics
    (``{name: value}``): the export adds the slot exactly when the chosen weight is not 0
    (:func:`recsys.training.retrieval.export_retrieval`)."""
    try:
        return float((metrics or {}).get(PRIOR_WEIGHT_METRIC, 0.0) or 0.0) != 0.0
    except (TypeError, ValueError):
        return False


class ItemIndexError(RecsysError):
    """The item embeddings cannot be turned into an index."""


def choose_kind(kind: str, n_items: int) -> str:
    """``flat`` or ``ivf`` for a setting value (``flat``, ``ivf``, ``auto``) and a catalogue size."""
    if kind not in ("flat", "ivf", "auto"):
        raise ConfigError(f"faiss_index must be 'flat', 'ivf' or 'auto', got {kind!r} (RECSYS_FAISS_INDEX)")
    if kind == "auto":
        return "ivf" if n_items >= IVF_FROM_ITEMS else "flat"
    return kind


def build_index(embeddings_path: Path, out_dir: Path, kind: str = "auto", python: Optional[Path] = None,
                prior_slot: bool = False) -> dict:
    """Write the index files of ``embeddings_path`` into ``out_dir`` (which must exist); return index.json's content.

    ``prior_slot``: the vectors' last dimension is the popularity prior (:func:`prior_slot_of` of the
    training run's metrics), recorded in ``index.json``. Without faiss in this interpreter, the work
    runs in ``python`` (default: ``settings.merlin_python``).
    """
    if importlib.util.find_spec("faiss") is None:
        from recsys.settings import get_settings

        python = python or get_settings().merlin_python
        command = [str(python), "-m", "recsys.serving.index", str(embeddings_path), str(out_dir), "--kind", kind]
        if prior_slot:
            command.append("--prior-slot")
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise ItemIndexError(f"building the FAISS index with {python} failed:\n{done.stderr[-2000:]}")
        return json.loads((Path(out_dir) / META_FILE).read_text())
    return _build_here(Path(embeddings_path), Path(out_dir), kind, prior_slot)


def _build_here(embeddings_path: Path, out_dir: Path, kind: str, prior_slot: bool = False) -> dict:
    import faiss
    import numpy as np
    import pyarrow.parquet as pq

    table = pq.read_table(embeddings_path)
    for column in ("item_id", "item_id_raw", "embedding"):
        if column not in table.column_names:
            raise ItemIndexError(f"{embeddings_path}: column {column!r} missing (found {table.column_names})")
    if table.num_rows == 0:
        raise ItemIndexError(f"{embeddings_path}: no rows")
    raw_column = table.column("item_id_raw").to_pandas()
    id_kind = ids.kind_of(raw_column)
    raw_ids = ids.as_array(raw_column, id_kind)
    codes = table.column("item_id").to_numpy().astype(np.int64)
    duplicated = raw_column.duplicated().to_numpy()
    if duplicated.any():
        raise ItemIndexError(
            f"{embeddings_path}: column 'item_id_raw' has duplicates, e.g. item_id_raw={ids.show(raw_ids[duplicated][0])}"
        )
    lists = table.column("embedding").combine_chunks()
    dims = set(np.diff(lists.offsets.to_numpy()).tolist())
    if len(dims) != 1:
        raise ItemIndexError(f"{embeddings_path}: column 'embedding' holds vectors of different sizes {sorted(dims)[:5]}")
    dim = dims.pop()
    vectors = np.ascontiguousarray(lists.values.to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, dim))
    if not np.isfinite(vectors).all():
        row = int(np.flatnonzero(~np.isfinite(vectors).all(axis=1))[0])
        raise ItemIndexError(
            f"{embeddings_path}: column 'embedding' has a non-finite value, e.g. row {row} (item_id_raw={ids.show(raw_ids[row])})"
        )

    if prior_slot and dim < 2:
        raise ItemIndexError(f"{embeddings_path}: a prior slot needs vectors of 2 or more dimensions, found {dim}")
    chosen = choose_kind(kind, len(vectors))
    meta = {"kind": chosen, "items": int(len(vectors)), "dim": int(dim), "metric": "inner_product", "id_kind": id_kind,
            "prior_slot": bool(prior_slot)}
    if chosen == "flat":
        index = faiss.IndexFlatIP(dim)
    else:
        # ~4 sqrt(n) clusters, each trained with >= 39 points as faiss recommends
        nlist = max(1, min(int(4 * math.sqrt(len(vectors))), len(vectors) // 39))
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(vectors)
        index.nprobe = min(IVF_NPROBE, nlist)
        meta.update(nlist=nlist, nprobe=int(index.nprobe))
    index.add(vectors)
    faiss.write_index(index, str(out_dir / INDEX_FILE))
    # text ids as fixed-width unicode: a plain array numpy loads without pickle (object arrays need it)
    np.save(out_dir / IDS_FILE, raw_ids if id_kind == ids.INT else raw_ids.astype(str))
    np.save(out_dir / CODES_FILE, codes)
    (out_dir / META_FILE).write_text(json.dumps(meta, indent=2))
    log.info("FAISS %s index of %d items (dim %d) written to %s", chosen, len(vectors), dim, out_dir)
    return meta


@dataclass
class ItemIndex:
    """A loaded index: ``search(query, n)`` -> (raw ids, encoded ids, scores), best first; item-to-item
    ``neighbours`` by cosine over the vectors without the prior slot.

    ``raw_ids``: int64, or an object array of str for text ids (as every reader returns them)."""

    index: object
    raw_ids: "object"
    codes: "object"
    meta: dict
    _position_of: Optional[object] = field(default=None, repr=False, compare=False)
    _unit: Optional[object] = field(default=None, repr=False, compare=False)
    _cosine: Optional[object] = field(default=None, repr=False, compare=False)

    @property
    def id_kind(self) -> str:
        return str(self.meta.get("id_kind", ids.INT))

    @property
    def prior_slot(self) -> bool:
        """The stored vectors' last dimension is the popularity prior (``index.json``; absent: no)."""
        return bool(self.meta.get("prior_slot", False))

    def __len__(self) -> int:
        return int(self.index.ntotal)

    @classmethod
    def load(cls, folder: Path, threads: Optional[int] = None) -> "ItemIndex":
        """Load the index files of ``folder``. ``threads``: FAISS's OpenMP threads for this process
        (1 in a serving instance: one instance per core beats threads inside a 0.1 ms search)."""
        import faiss
        import numpy as np

        if threads is not None:
            faiss.omp_set_num_threads(int(threads))
        folder = Path(folder)
        index = faiss.read_index(str(folder / INDEX_FILE))
        meta = json.loads((folder / META_FILE).read_text())
        if "nprobe" in meta:
            index.nprobe = int(meta["nprobe"])
        raw_ids = np.load(folder / IDS_FILE, allow_pickle=False)
        raw_ids = ids.as_array(raw_ids, ids.kind_of(raw_ids))
        return cls(index, raw_ids, np.load(folder / CODES_FILE), meta)

    def search_positions(self, queries, n: int):
        """``queries``: float32 [m, dim]. Index positions [m, n] of the best items, best first (-1: none).

        One FAISS call for all ``m`` queries (a batch of requests); map positions with ``raw_ids``/``codes``.
        """
        import numpy as np

        queries = np.ascontiguousarray(np.asarray(queries, dtype=np.float32).reshape(-1, self.index.d))
        _scores, positions = self.index.search(queries, int(n))
        return positions

    def search(self, query, n: int):
        """``query``: float32 [1, dim] (or [dim]). Returns (raw ids, encoded ids, scores), at most ``n`` each."""
        import numpy as np

        query = np.ascontiguousarray(np.asarray(query, dtype=np.float32).reshape(1, -1))
        scores, positions = self.index.search(query, int(n))
        positions, scores = positions[0], scores[0]
        valid = positions >= 0  # IVF can return fewer than n hits (-1 padding)
        positions, scores = positions[valid], scores[valid]
        return self.raw_ids[positions], self.codes[positions], scores

    # --- item-to-item: cosine over the vectors without the prior slot ----------------------------
    def positions_of(self, raw_ids) -> "object":
        """Index position of each raw item id (int64), -1 for ids the index does not hold."""
        if self._position_of is None:
            self._position_of = ids.Positions(self.raw_ids, self.id_kind)
        return self._position_of(raw_ids)

    @property
    def unit_vectors(self) -> "object":
        """float32 [items, d]: every item's vector without the prior slot, L2-normalised (a zero
        vector stays zero); row = index position. Computed once."""
        if self._unit is None:
            self.prepare_neighbours()
        return self._unit

    def prepare_neighbours(self) -> None:
        """Build the cosine index (once; a serving instance calls it at warm-up)."""
        import faiss
        import numpy as np

        if self._cosine is not None:
            return
        vectors = _stored_vectors(self.index)
        if self.prior_slot:
            vectors = vectors[:, :-1]
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        unit = np.ascontiguousarray(np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0), dtype=np.float32)
        cosine = faiss.IndexFlatIP(unit.shape[1])
        cosine.add(unit)
        self._unit, self._cosine = unit, cosine

    def neighbours(self, queries, n: int):
        """``queries``: float32 [m, d] in the space of :attr:`unit_vectors` (any length: each is
        normalised here). Returns (positions [m, n], cosine similarities [m, n]), most similar first,
        -1 / -inf where there are fewer than ``n`` items. One FAISS search for all ``m`` queries."""
        import numpy as np

        self.prepare_neighbours()
        queries = np.asarray(queries, dtype=np.float32).reshape(-1, self._unit.shape[1])
        norms = np.linalg.norm(queries, axis=1, keepdims=True)
        queries = np.ascontiguousarray(np.divide(queries, norms, out=np.zeros_like(queries), where=norms > 0))
        n = int(n)
        width = max(0, min(n, len(self)))
        positions = np.full((len(queries), n), -1, dtype=np.int64)
        scores = np.full((len(queries), n), -np.inf, dtype=np.float32)
        if width and len(queries):
            found_scores, found = self._cosine.search(queries, width)
            positions[:, :width], scores[:, :width] = found, np.where(found >= 0, found_scores, -np.inf)
        return positions, scores


def _stored_vectors(index) -> "object":
    """float32 [ntotal, d]: the vectors a FAISS index holds (an IVF index gets a direct map first)."""
    import faiss
    import numpy as np

    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:  # not an IVF index: a flat one reconstructs as it is
        ivf = None
    if ivf is not None:
        ivf.make_direct_map()
    if index.ntotal == 0:
        return np.zeros((0, index.d), np.float32)
    return np.asarray(index.reconstruct_n(0, index.ntotal), dtype=np.float32)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recsys.serving.index", description="build a FAISS item index")
    parser.add_argument("embeddings", type=Path)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--kind", default="auto", choices=["flat", "ivf", "auto"])
    parser.add_argument("--prior-slot", action="store_true", help="the vectors' last dimension is the popularity prior")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        _build_here(args.embeddings, args.out_dir, args.kind, args.prior_slot)
    except RecsysError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
