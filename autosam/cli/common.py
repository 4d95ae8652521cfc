"""Helpers shared by the command-line tools."""
from __future__ import annotations

import argparse


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


def default_device() -> str:
    """``cuda`` when available, else ``mps`` when available, else ``cpu``."""
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


class CaseProgress:
    """A per-case progress bar for prediction commands, created on the first update (so that
    nothing is drawn when an error comes first); ``quiet`` draws nothing. Call it as
    ``progress(case, done, total)`` and ``close()`` it at the end."""

    def __init__(self, quiet: bool = False, desc: str = "cases"):
        self.quiet = quiet
        self.desc = desc
        self.bar = None

    def __call__(self, case: str, done: int, total: int) -> None:
        if self.quiet:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=self.desc, unit="case")
        self.bar.update(done - self.bar.n)
        if case:
            self.bar.set_postfix_str(case)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def fold_value(text: str) -> int | str:
    """A fold on the command line: ``0``, ``1``, ... or ``all``."""
    if text == "all":
        return text
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"fold {text!r}: give a fold number or 'all'") from None


def parse_with_method_overrides(parser: argparse.ArgumentParser, argv: list[str] | None):
    """``parser.parse_known_args`` for prediction commands: returns ``(args, method overrides,
    folds)`` with the leftover ``--name value`` flags as method options (:func:`parse_method_overrides`)
    and ``args.f`` read by :func:`fold_value` (``None`` when not given); argparse's error otherwise."""
    args, extra = parser.parse_known_args(argv)
    try:
        overrides = parse_method_overrides(extra)
        folds = [fold_value(f) for f in args.f] if args.f else None
    except (argparse.ArgumentTypeError, ValueError) as exc:
        parser.error(str(exc))
    return args, overrides, folds
