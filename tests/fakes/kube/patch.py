"""PATCH bodies: JSON merge patch (RFC 7386) and the strategic merge patch kubectl sends.

Strategic merge differs from a merge patch in lists: a list of objects that all carry ``name``
(containers, env, ports with names, volumes) is merged element by element on that key, as the
API server does for the fields whose ``patchMergeKey`` is ``name``; other lists are replaced.
``$patch`` directives and JSON patch (``application/json-patch+json``) are not served.
"""

from __future__ import annotations

import copy
import json
from typing import Any

__all__ = ["PatchError", "apply_patch"]

STRATEGIC = "application/strategic-merge-patch+json"
MERGE = "application/merge-patch+json"


class PatchError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def _merge(target: Any, patch: Any, *, strategic: bool) -> Any:
    if isinstance(patch, dict):
        result = dict(target) if isinstance(target, dict) else {}
        for key, value in patch.items():
            if value is None:
                result.pop(key, None)
            else:
                result[key] = _merge(result.get(key), value, strategic=strategic)
        return result
    if (
        strategic
        and isinstance(patch, list)
        and isinstance(target, list)
        and _keyed(patch)
        and _keyed(target)
    ):
        merged = [copy.deepcopy(item) for item in target]
        index = {item["name"]: i for i, item in enumerate(merged)}
        for item in patch:
            if item["name"] in index:
                merged[index[item["name"]]] = _merge(merged[index[item["name"]]], item, strategic=True)
            else:
                merged.append(item)
        return merged
    return copy.deepcopy(patch)


def _keyed(items: list[Any]) -> bool:
    return bool(items) and all(isinstance(item, dict) and "name" in item for item in items)


def apply_patch(obj: dict[str, Any], content_type: str, body: bytes) -> dict[str, Any]:
    """``obj`` with the patch applied (a new dict).

    Raises:
        PatchError: 415 for a patch type not served, 400 for a body that is not a JSON object.
    """
    media = content_type.split(";")[0].strip()
    if media not in (STRATEGIC, MERGE):
        raise PatchError(
            415, f"the stand-in serves no {media or 'unnamed'} patches, only {STRATEGIC} and {MERGE}"
        )
    try:
        patch = json.loads(body)
    except ValueError as exc:
        raise PatchError(400, f"error decoding patch: {exc}") from exc
    if not isinstance(patch, dict) or any(k.startswith("$") for k in _keys(patch)):
        raise PatchError(400, "the patch must be a JSON object without $patch directives")
    merged: dict[str, Any] = _merge(copy.deepcopy(obj), patch, strategic=media == STRATEGIC)
    return merged


def _keys(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [k for k, v in value.items() for k in (k, *_keys(v))]
    if isinstance(value, list):
        return [k for item in value for k in _keys(item)]
    return []
