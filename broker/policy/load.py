"""Reading a policy: YAML composed into nodes (so every value keeps its line), validated by the
models of ``model.py``, and pydantic's errors turned into one ``PolicyError`` whose lines read
``policy.yaml: rules[0].max_ttl: bad duration 'forever': ... (line 12)``.

The file name and field path come first, as they always have (operators grep for them), and the
line follows. Every problem pydantic finds is listed, the first ``_MAX_SHOWN`` of them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, get_args

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from access.broker.policy.fields import Located, type_name
from access.broker.policy.model import Policy, PolicyError, PolicyFile, Problem

__all__ = ["load_policy", "policy_from_data"]

_MAX_SHOWN = 20
# libyaml's parser where PyYAML has it (a 44,000-line file: 1.1 s instead of 6.4 s); the
# constructor is the safe one either way, and both keep every node's line.
_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
Loc = tuple[str | int, ...]


def load_policy(path: Path | str) -> Policy:
    """Load and validate the YAML policy at ``path``.

    Raises:
        PolicyError: the file cannot be read, is not YAML, or is not a valid policy; the
            message names the file, the field path and the line.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError(f"cannot read policy file {path}: {exc}") from exc
    # SafeLoader: tags such as !!python/object are refused, nothing is constructed but plain data.
    loader = _LOADER(text)
    try:
        root = loader.get_single_node()
        data = loader.construct_document(root) if root is not None else None
    except yaml.YAMLError as exc:
        raise PolicyError(f"{path}: not valid YAML: {exc}") from exc
    finally:
        loader.dispose()
    return policy_from_data(data if data is not None else {}, source=str(path), root=root)


def policy_from_data(data: Any, *, source: str | None = None, root: yaml.Node | None = None) -> Policy:
    """Validate parsed YAML (or a dict built in code) into a ``Policy``.

    ``source`` (the file name) prefixes every message; ``root`` (the composed YAML) gives lines.

    Raises:
        PolicyError: the data is not a valid policy; the message names the offending path.
    """
    try:
        document = PolicyFile.model_validate(data)
    except ValidationError as exc:
        problems = [_problem(error, root) for error in exc.errors(include_url=False)]
        prefix = "" if source is None else f"{source}: "
        lines = [prefix + str(problem) for problem in problems[:_MAX_SHOWN]]
        if len(problems) > _MAX_SHOWN:
            lines.append(f"{prefix}and {len(problems) - _MAX_SHOWN} more problem(s)")
        raise PolicyError("\n".join(lines), problems) from None
    return Policy.from_file(document)


# ---------------------------------------------------------------- pydantic errors, in our words


def _problem(error: ErrorDetails, root: yaml.Node | None) -> Problem:
    loc: Loc = tuple(error["loc"])
    # The line of the key itself for an unknown key, of the mapping that lacks it for a missing one.
    line = _line(root, loc)
    kind = error["type"]
    value = error.get("input")
    cause = error.get("ctx", {}).get("error")
    if isinstance(cause, Located):
        loc, message = (*loc, *cause.loc), cause.message
        line = _line(root, loc)
    elif kind in ("value_error", "assertion_error") and cause is not None:
        message = str(cause)
    elif kind == "missing":
        loc, message = loc[:-1], f"missing {loc[-1]!r}"
    elif kind == "extra_forbidden":
        allowed = list(getattr(_model_at(loc[:-1]), "model_fields", ()))
        loc, message = loc[:-1], f"unknown key {str(loc[-1])!r} (allowed: {', '.join(allowed)})"
    elif kind in ("model_type", "model_attributes_type", "dict_type"):
        message = f"expected a mapping, got {type_name(value)}"
    elif kind in ("tuple_type", "list_type", "set_type", "frozen_set_type"):
        message = f"expected a list, got {type_name(value)}"
    elif kind == "string_type":
        message = f"expected a string, got {type_name(value)}"
    elif kind == "too_long":
        message = f"at most {error.get('ctx', {}).get('max_length')} items"
    else:
        message = error["msg"]
    return Problem(_where(loc), message, line)


def _where(loc: Loc) -> str:
    """``("rules", 0, "max_ttl")`` as ``rules[0].max_ttl``; the root is ``policy``."""
    text = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc)
    return text.removeprefix(".") or "policy"


def _line(root: yaml.Node | None, loc: Loc) -> int | None:
    """The line of the deepest node on ``loc`` (the parent, for a key that is missing)."""
    if root is None:
        return None
    node = root
    for part in loc:
        child: yaml.Node | None = None
        if isinstance(node, yaml.MappingNode):
            child = next(
                (
                    value
                    for key, value in node.value
                    if isinstance(key, yaml.ScalarNode) and key.value == part
                ),
                None,
            )
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
            child = node.value[part]
        if child is None:
            break
        node = child
    return int(node.start_mark.line) + 1


def _model_at(loc: Loc) -> type[BaseModel] | None:
    """The model that validates the mapping at ``loc``, to list the keys it allows."""
    model: type[BaseModel] | None = PolicyFile
    for part in loc:
        if model is None:
            return None
        if isinstance(part, int):
            continue  # an item of a list of models: the list's annotation named the model
        info = model.model_fields.get(part)
        model = None if info is None else _inner_model(info.annotation)
    return model


def _inner_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _inner_model(arg)
        if found is not None:
            return found
    return None
