"""``recsys settings``: every setting with its environment variable, current value and meaning."""

from __future__ import annotations

import ast
import inspect
import json
from dataclasses import fields


def setting_docs() -> dict[str, str]:
    """The docstring under each field of :class:`recsys.settings.Settings` (read from the source)."""
    from recsys import settings as module

    tree = ast.parse(inspect.getsource(module.Settings))
    body = tree.body[0].body
    docs = {}
    for node, following in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            if isinstance(following, ast.Expr) and isinstance(getattr(following, "value", None), ast.Constant):
                docs[node.target.id] = " ".join(str(following.value.value).split())
    return docs


def register(subparsers) -> None:
    p = subparsers.add_parser("settings", help="show every setting, its environment variable and current value")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_show)


def _show(args) -> int:
    from recsys.settings import Settings, env_name, get_settings

    values = get_settings().public_dict()
    docs = setting_docs()
    rows = [(env_name(f.name), values[f.name], docs.get(f.name, "")) for f in fields(Settings)]
    if args.json:
        print(json.dumps([{"variable": v, "value": val, "meaning": d} for v, val, d in rows], indent=2, default=str))
        return 0
    width = max(len(v) for v, _, _ in rows)
    for variable, value, doc in rows:
        print(f"{variable:<{width}}  {value!s}" + (f"\n{'':<{width}}  # {doc}" if doc else ""))
    return 0
