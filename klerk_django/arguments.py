"""Check and encode the JSON arguments of jobs and actions.

Arguments are checked at enqueue time, in every mode, so that a value the
database would refuse (or silently change) is reported to the caller with
the argument that holds it, before any SQL runs.
"""

from __future__ import annotations

import json
import math
from typing import Any

from .conf import settings
from .exceptions import ArgumentError

_SCALARS = (str, bool, int, float, type(None))


def pack(args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """Return the stored form of call arguments, or raise ArgumentError."""
    for index, value in enumerate(args):
        check(value, f"args[{index}]")
    for key, value in kwargs.items():
        check(value, key)

    packed = {"args": list(args), "kwargs": dict(kwargs)}
    check_size(packed)
    return packed


def unpack(stored: Any) -> tuple[list[Any], dict[str, Any]]:
    """Return positional and keyword arguments from their stored form."""
    if isinstance(stored, str):
        stored = json.loads(stored)
    if not isinstance(stored, dict):
        raise ArgumentError(
            f"Stored arguments must be an object, found {type(stored).__name__}.",
            value=stored,
        )
    return list(stored.get("args", [])), dict(stored.get("kwargs", {}))


def check(value: Any, path: str) -> None:
    """Raise ArgumentError unless ``value`` round-trips through JSON."""
    if isinstance(value, str):
        _check_text(value, path)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ArgumentError(
                f"Argument {path!r} is {value!r}; JSON has no NaN or infinity.",
                path,
                value,
            )
    elif isinstance(value, _SCALARS):
        return
    elif isinstance(value, list):
        for index, item in enumerate(value):
            check(item, f"{path}[{index}]")
    elif isinstance(value, dict):
        _check_object(value, path)
    else:
        raise ArgumentError(
            f"Argument {path!r} has type {type(value).__name__!r}, which is not "
            "JSON; pass str, int, float, bool, None, list or dict (convert "
            "dates, UUIDs and decimals to strings yourself).",
            path,
            value,
        )


def _check_object(value: dict[Any, Any], path: str) -> None:
    for key, item in value.items():
        if not isinstance(key, str):
            raise ArgumentError(
                f"Argument {path!r} has the key {key!r} of type "
                f"{type(key).__name__!r}; JSON object keys must be strings.",
                path,
                value,
            )
        _check_text(key, f"{path} key")
        check(item, f"{path}[{key!r}]")


def _check_text(value: str, path: str) -> None:
    if "\x00" in value:
        raise ArgumentError(
            f"Argument {path!r} contains a NUL character (\\u0000), which "
            "databases refuse in text and JSON.",
            path,
            value,
        )


def check_size(packed: dict[str, Any]) -> None:
    """Raise ArgumentError when the encoded arguments pass the size limit."""
    limit = settings.MAX_ARGUMENTS_BYTES
    if limit is None:
        return

    size = len(json.dumps(packed, separators=(",", ":")).encode())
    if size > limit:
        raise ArgumentError(
            f"Arguments take {size} bytes as JSON, more than "
            f"KLERK_MAX_ARGUMENTS_BYTES = {limit}; store large data elsewhere "
            "and pass its key.",
            value=size,
        )


def scrub(value: Any) -> Any:
    """Return ``value`` as JSON that any database accepts, or None.

    Results and error texts come from user code after the fact; refusing them
    would leave the job unfinished, so NUL characters are escaped instead and
    values that are not JSON are replaced by their ``repr``.
    """
    try:
        text = json.dumps(value, allow_nan=False, default=repr)
    except (TypeError, ValueError):
        text = json.dumps(repr(value))
    return json.loads(text.replace("\\u0000", "\\\\u0000"))


def scrub_text(text: str) -> str:
    """Return ``text`` with NUL characters escaped as ``\\x00``."""
    return text.replace("\x00", "\\x00")
