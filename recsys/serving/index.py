"""The FAISS item index of retrieval: built from ``retrieval/item_embeddings.parquet``, searched per request.

Files written into a folder (a model version directory):

- ``items.faiss``: inner-product index over the item embeddings; **flat** (exact) for small
  catalogues, **IVF** (approximate: ``nlist`` clusters, ``nprobe`` of them searched) for large ones;
- ``item_ids.npy``: the RAW item id of each index position: int64, or fixed-width unicode (``<U``n)
  for text ids (:mod:`recsys.data.ids`), so the file loads without pickle;
- ``item_codes.npy``: the encoded item id of each index position (int64; the ranker's input);
- ``index.json``: kind, items, dim, nlist, nprobe, id_kind (of the raw item ids; absent: int).

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
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from recsys.data import ids
from recsys.errors import ConfigError, RecsysError

log = logging.getLogger(__name__)

IVF_FROM_ITEMS = 50_000
"""``faiss_index = auto``: IVF from this many items (exact search costs ~1 ms per 100k x 64 items here)."""
IVF_NPROBE = 16
INDEX_FILE, IDS_FILE, CODES_FILE, META_FILE = "items.faiss", "item_ids.npy", "item_codes.npy", "index.json"


class ItemIndexError(RecsysError):
    """The item embeddings cannot be turned into an index."""


def choose_kind(kind: str, n_items: int) -> str:
    """``flat`` or ``ivf`` for a setting value (``flat``, ``ivf``, ``auto``) and a catalogue size."""
    if kind not in ("flat", "ivf", "auto"):
        raise ConfigError(f"faiss_index must be 'flat', 'ivf' or 'auto', got {kind!r} (RECSYS_FAISS_INDEX)")
    if kind == "auto":
        return "ivf" if n_items >= IVF_FROM_ITEMS else "flat"
    return kind


def build_index(embeddings_path: Path, out_dir: Path, kind: str = "auto", python: Optional[Path] = None) -> dict:
    """Write the index files of ``embeddings_path`` into ``out_dir`` (which must exist); return index.json's content.

    Without faiss in this interpreter, the work runs in ``python`` (default: ``settings.merlin_python``).
    """
    if importlib.util.find_spec("faiss") is None:
        from recsys.settings import get_settings

        python = python or get_settings().merlin_python
        command = [str(python), "-m", "recsys.serving.index", str(embeddings_path), str(out_dir), "--kind", kind]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise ItemIndexError(f"building the FAISS index with {python} failed:\n{done.stderr[-2000:]}")
        return json.loads((Path(out_dir) / META_FILE).read_text())
    return _build_here(Path(embeddings_path), Path(out_dir), kind)


def _build_here(embeddings_path: Path, out_dir: Path, kind: str) -> dict:
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

    chosen = choose_kind(kind, len(vectors))
    meta = {"kind": chosen, "items": int(len(vectors)), "dim": int(dim), "metric": "inner_product", "id_kind": id_kind}
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
    """A loaded index: ``search(query, n)`` -> (raw ids, encoded ids, scores), best first.

    ``raw_ids``: int64, or an object array of str for text ids (as every reader returns them)."""

    index: object
    raw_ids: "object"
    codes: "object"
    meta: dict

    @property
    def id_kind(self) -> str:
        return str(self.meta.get("id_kind", ids.INT))

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


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recsys.serving.index", description="build a FAISS item index")
    parser.add_argument("embeddings", type=Path)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--kind", default="auto", choices=["flat", "ivf", "auto"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        _build_here(args.embeddings, args.out_dir, args.kind)
    except RecsysError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
