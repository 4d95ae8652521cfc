"""Helpers shared by the command-line tools."""
from __future__ import annotations

import argparse

from autosam.utils.precision import default_device, parse_device  # noqa: F401 - re-exported for the CLIs


def parse_method_overrides(extra: list[str]) -> dict[str, str | list[str]]:
    """Method option flags left over by ``argparse.parse_known_args`` -> ``{option: value}``.

    ``--backbone litemedsam --lr 3e-4 --use-lora --patch 64 64 64 --no-mirror=1`` gives
    ``{"backbone": "litemedsam", "lr": "3e-4", "use_lora": "true", "patch": ["64", "64", "64"],
    "no_mirror": "1"}``: a flag without a value means ``true``; several values give a list. The
    values stay strings; :func:`autosam.training.method.build_options` converts them to the option
    types and rejects unknown names with the list of the method's options.
    """
    out: dict[str, str | list[str]] = {}
    i = 0
    while i < len(extra):
        token = extra[i]
        if not token.startswith("--") or len(token) <= 2:
            raise argparse.ArgumentTypeError(f"unexpected argument {token!r}; method options look like --name value")
        name, eq, value = token[2:].partition("=")
        key = name.replace("-", "_")
        if eq:
            out[key] = value
            i += 1
            continue
        values = []
        i += 1
        while i < len(extra) and not (extra[i].startswith("--") and len(extra[i]) > 2 and not _is_number(extra[i])):
            values.append(extra[i])
            i += 1
        out[key] = "true" if not values else values[0] if len(values) == 1 else values
    return out


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def error_text(exc: BaseException) -> str:
    """The message of an error for the command line; out-of-memory errors get a hint."""
    from autosam.utils.precision import OOM_HINT, is_oom

    return f"{exc}\nhint: {OOM_HINT}" if is_oom(exc) else str(exc)
