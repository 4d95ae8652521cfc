"""Helpers shared by the command-line tools."""
from __future__ import annotations

import argparse
import difflib
import errno
import functools
import os
import sys
import traceback
from pathlib import Path
from typing import Callable, Iterable, NoReturn

from autosam.experiment_planning.plans import normalize_configuration  # noqa: F401  (for the commands)
from autosam.utils.precision import default_device, parse_device  # noqa: F401 - re-exported for the CLIs


def parse_method_overrides(extra: list[str]) -> dict[str, str | list[str]]:
    """Method option flags left over by ``argparse.parse_known_args`` -> ``{option: value}``.

    ``--backbone litemedsam --lr 3e-4 --use-lora --patch 64 64 64 --no-mirror=1`` gives
    ``{"backbone": "litemedsam", "lr": "3e-4", "use_lora": "true", "patch": ["64", "64", "64"],
    "no_mirror": "1"}``: a flag without a value means ``true``; several values give a list. The
    values stay strings; :func:`autosam.method.build_options` converts them to the option
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


def _first_file_in_path(path: Path) -> Path | None:
    """The first component of ``path`` that exists and is not a folder (for ENOTDIR)."""
    for parent in [*reversed(path.parents), path]:
        if parent.exists() and not parent.is_dir():
            return parent
    return None


def describe_os_error(exc: OSError) -> str:
    """One line for an :class:`OSError`: the path and the problem in words.

    ``disk full while writing X``, ``no permission to write in Y``, ``X exists and is a file, not a
    folder``, ``X is not a folder (the file F is in its path)``, ``read-only file system: cannot
    write X``, ... An error raised by autosam with its own message (no ``errno``) keeps it."""
    if exc.errno is None or not exc.strerror:
        return str(exc)
    name = exc.filename2 if exc.errno == errno.EXDEV and exc.filename2 else exc.filename
    path = Path(os.fsdecode(name)) if name is not None else None
    code, where = exc.errno, f" {path}" if path is not None else ""
    if code == errno.ENOSPC:
        return f"disk full while writing{where} (no space left on the device)"
    if code == getattr(errno, "EDQUOT", -1):
        return f"disk quota exceeded while writing{where}"
    if code == errno.EFBIG:
        return f"file too large while writing{where} (the file system's or the process's file size limit)"
    if code == errno.EROFS:
        return f"read-only file system: cannot write{where}"
    if path is None:
        return f"{exc.strerror} (errno {errno.errorcode.get(code, code)})"
    if code in (errno.EACCES, errno.EPERM):
        if path.is_dir():
            return f"no permission to write in {path}"
        if path.exists():
            return f"no permission to {'read' if not os.access(path, os.R_OK) else 'write'} {path}"
        return f"no permission to write in {path.parent}"
    if code == errno.EEXIST:
        return f"{path} exists and is a file, not a folder" if path.is_file() else f"{path} already exists"
    if code == errno.ENOTDIR:
        blocker = _first_file_in_path(path)
        if blocker == path:
            return f"{path} is a file, not a folder"
        return f"{path} is not a folder (a file is in the path: {blocker})" if blocker else f"{path} is not a folder"
    if code == errno.ENOENT:
        return f"{path}: no such file or folder"
    if code == errno.EISDIR:
        return f"{path} is a folder, not a file"
    if code == errno.ENAMETOOLONG:
        return f"{path}: file name too long"
    if code == errno.EIO:
        return f"input/output error on {path} (a failing disk or network file system)"
    return f"{path}: {exc.strerror}"


#: Commands whose torch thread count follows the free cores (:mod:`autosam.utils.threads`).
THREADED_COMMANDS = frozenset({"autosam_train", "autosam_predict", "autosam_predict_from_modelfolder",
                               "autosam_segment_box", "autosam_evaluate_interactive"})


def command(prog: str, status: int = 2, errors: tuple[type[BaseException], ...] = ()):
    """Decorator for the ``main`` function of a console script ``prog``.

    Errors become one line on stderr, ``<prog>: error: <message>``, and exit status ``status``:

    - every :class:`OSError` (a missing, unwritable or full output, a file where a folder should
      be, ...), in words by :func:`describe_os_error`;
    - a folder owned by another run (:class:`autosam.utils.locks.FolderLockedError`);
    - the user errors ``errors`` the command lists (``ValueError``, ...), by :func:`error_text`.

    ``--verbose`` (every command's :class:`Parser` has it) adds the Python traceback. Anything
    else is a bug and keeps its traceback. The commands in :data:`THREADED_COMMANDS` first set their
    torch thread count to their share of the free cores (:func:`autosam.utils.threads.configure_threads`)."""
    def wrap(fn: Callable[..., int]) -> Callable[..., int]:
        @functools.wraps(fn)
        def main(argv: list[str] | None = None) -> int:
            tokens = list(sys.argv[1:] if argv is None else argv)
            verbose = "--verbose" in (tokens[:tokens.index("--")] if "--" in tokens else tokens)
            from autosam.utils.locks import FolderLockedError

            try:
                if prog in THREADED_COMMANDS and not {"-h", "--help"} & set(tokens):
                    from autosam.utils.threads import configure_threads

                    configure_threads(prog)
                return fn(argv)
            except OSError as exc:  # one line by design: a newline in it comes from a path, shown escaped
                error, message = exc, "".join(c if c.isprintable() else repr(c)[1:-1] for c in describe_os_error(exc))
            except (FolderLockedError, *errors) as exc:
                error, message = exc, error_text(exc)
            if verbose:
                traceback.print_exception(error)
            print(f"{prog}: error: {message}", file=sys.stderr)
            return status

        main.autosam_command = prog
        return main

    return wrap


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
            from autosam.utils.progress import progress_bar

            self.bar = progress_bar(total=total, desc=self.desc, unit="case")
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


def parse_with_method_overrides(parser: "Parser", argv: list[str] | None, option_names=lambda args: None):
    """``parser.parse_known_args`` for prediction commands: returns ``(args, method overrides,
    folds)``. The leftover ``--name value`` flags are method options, checked by
    :func:`method_overrides_from` against ``option_names(args)`` (the method's option names, or
    None when unknown here); ``args.f`` is read by :func:`fold_value` (``None`` when not given)."""
    args, extra = parser.parse_known_args(argv)
    overrides = method_overrides_from(parser, extra, option_names(args)) if extra else {}
    try:
        folds = [fold_value(f) for f in args.f] if args.f else None
    except ValueError as exc:
        parser.error(f"argument -f: {exc}")
    return args, overrides, folds


# ---------------------------------------------------------------------------------------------- parsing
class Parser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` for autosam's commands, strict about flag spellings.

    - No prefix abbreviations (``allow_abbrev=False``): ``--dev`` is not ``--device``.
    - A single-dash token is never split into a one-letter flag and a word: ``-device cuda`` is not
      ``-d evice`` (argparse's default), it is ``-device`` or an unknown flag. A one-letter flag with
      an attached value that does not start with a letter still works (``-f0``, ``-np4`` is a flag).
    - An unknown flag stops the command (exit 2) with ``did you mean ...?`` naming the closest
      spelling this command knows (difflib, ignoring dashes, ``_`` vs ``-`` and case).
    """

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)
        self._argv: list[str] = []
        self.add_argument("--verbose", action="store_true",
                          help="on an error, also print the Python traceback (without it: one line naming the file "
                               "and the problem)")

    def parse_known_args(self, args=None, namespace=None):
        self._argv = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args(self._argv, namespace)

    def error(self, message: str) -> NoReturn:
        # argparse reports a missing required argument before unknown flags; a misspelt flag is
        # often the reason the argument is missing (-djfil x), so name it with its suggestion too
        if "unrecognized arguments" not in message:
            hints = [f"{t} (did you mean {h}?)" for t in self._unknown_flags()
                     if (h := suggest_flag(t, self.flag_spellings()))]
            if hints:
                message += "; unrecognized arguments: " + " ".join(hints)
        super().error(message)

    def _unknown_flags(self) -> list[str]:
        out = []
        for token in self._argv:
            if token == "--":
                break
            if token.startswith("-") and len(token) > 1 and not _is_number(token):
                parsed = self._parse_optional(token)
                if parsed is not None and not isinstance(parsed, list) and parsed[0] is None:
                    out.append(token)
        return out

    def _get_option_tuples(self, option_string):
        tuples = super()._get_option_tuples(option_string)
        if len(option_string) > 2 and option_string[0] in self.prefix_chars and option_string[1] not in self.prefix_chars:
            attached = option_string[2:]
            return [t for t in tuples if t[1] == option_string[:2] and not attached[0].isalpha()]
        return tuples

    def flag_spellings(self) -> list[str]:
        return [s for action in self._actions for s in action.option_strings]

    def parse_args(self, args=None, namespace=None):
        parsed, extra = self.parse_known_args(args, namespace)
        if extra:
            self.fail_unknown(extra)
        return parsed

    def fail_unknown(self, tokens: Iterable[str], extra_known: Iterable[str] = ()) -> NoReturn:
        """Exit 2 with argparse's ``unrecognized arguments`` plus a suggestion per unknown flag."""
        known = self.flag_spellings() + list(extra_known)
        shown = []
        for token in tokens:
            hint = suggest_flag(token, known) if token.startswith("-") else None
            shown.append(f"{token} (did you mean {hint}?)" if hint else token)
        self.error("unrecognized arguments: " + " ".join(shown))


def _flag_key(flag: str) -> str:
    return flag.split("=", 1)[0].lstrip("-").replace("-", "_").lower()


def suggest_flag(token: str, known: Iterable[str]) -> str | None:
    """The spelling in ``known`` closest to ``token`` (``-devcie`` -> ``-device``), or None."""
    by_key: dict[str, list[str]] = {}
    for flag in known:
        by_key.setdefault(_flag_key(flag), []).append(flag)
    key = _flag_key(token)
    if not key:
        return None
    match = difflib.get_close_matches(key, list(by_key), n=1, cutoff=0.6)
    if not match:
        return None
    spellings = by_key[match[0]]
    dashes = len(token) - len(token.lstrip("-"))
    same = [s for s in spellings if len(s) - len(s.lstrip("-")) == dashes]
    return " / ".join(same or spellings)


def method_overrides_from(parser: Parser, extra: list[str], option_names: Iterable[str] | None) -> dict:
    """Method option flags (``--name value``) among the tokens ``parse_known_args`` left over.

    A token that is not a method option exits with argparse's error (code 2) and the closest
    spelling among the command's flags and the method's options: a single-dash token is never a
    method option (``-devcie`` -> did you mean ``-device``), nor is a misspelt command flag
    (``--epoch`` -> ``--epochs``). ``option_names`` None (the method could not be looked up here)
    keeps the ``--name`` tokens that resemble no command flag; the method then rejects unknown
    names itself.
    """
    options = None if option_names is None else {n.replace("-", "_") for n in option_names}
    option_flags = [f"--{n.replace('_', '-')}" for n in (options or ())]
    unknown = []
    for i, token in enumerate(extra):
        if not token.startswith("-") or _is_number(token):
            continue
        if not token.startswith("--") or len(token) <= 2:
            unknown.append(token)
        elif options is not None and _flag_key(token) not in options:
            unknown.append(token)
        elif options is None and suggest_flag(token, parser.flag_spellings()):
            unknown.append(token)
    if unknown:
        parser.fail_unknown(unknown, option_flags)
    try:
        return parse_method_overrides(extra)
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))


def method_option_names(method_name: str, dataset=None, configuration: str | None = None,
                        plans_name: str | None = None, auto: str = "best") -> list[str] | None:
    """Option names of ``method_name``, or None when it cannot be resolved here (the command then
    reports the problem itself). ``auto`` is resolved as prediction does (``auto="best"``: the
    winner of find_best_configuration, else the plans' default) or as training does
    (``auto="plans"``: the plans' default method)."""
    import dataclasses

    try:
        from autosam.plugins import get_method

        if method_name == "auto":
            from autosam.inference.predictor import default_method_of, resolve_auto_method

            plans_name = plans_name or "autosamPlans"
            method_name = (default_method_of(dataset, plans_name, configuration) if auto == "plans"
                           else resolve_auto_method(dataset, plans_name, configuration))
        return [f.name for f in dataclasses.fields(get_method(method_name).Options)]
    except Exception:
        return None


# ---------------------------------------------------------------------------------------------- values
def step_size(text: str) -> float:
    """``-step_size``: the sliding-window step as a fraction of the patch, in (0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1] (fraction of the patch size), got {value}")
    return value


def add_device(p: argparse.ArgumentParser, what: str) -> None:
    """``-device``/``--device`` with the default order this code uses (:func:`default_device`)."""
    p.add_argument("-device", "--device", dest="device", type=parse_device, default=None, metavar="DEVICE",
                   help=f"device for {what}: cpu, cuda, cuda:N (the N-th visible GPU) or mps (default: cuda when "
                        "available, else mps when available, else cpu). On CUDA the network runs under autocast in "
                        "bf16 where the card computes it natively, else in fp16 (training: with gradient scaling)")


def add_prediction_options(p: argparse.ArgumentParser) -> None:
    """The options shared by the prediction commands: ``-step_size``, ``--disable_tta``,
    ``--save_probabilities``, ``-device``, ``-npp`` and ``-nps`` (nnU-Net's spellings)."""
    p.add_argument("-step_size", "--step_size", dest="step_size", type=step_size, default=0.5,
                   help="sliding-window step as a fraction of the patch size, in (0, 1]; larger is faster and less "
                        "accurate (default 0.5, as nnU-Net)")
    p.add_argument("--disable_tta", action="store_true", help="no mirroring test-time augmentation (about 8x faster in 3D)")
    p.add_argument("--save_probabilities", action="store_true", help="also write <case>.npz (probabilities) and <case>.json")
    add_device(p, "prediction")
    p.add_argument("-npp", "--num_processes", dest="num_processes", type=int, default=2,
                   help="1 = everything in sequence; more = preprocess the next case and export previous ones in "
                        "background threads while one case is predicted (default 2)")
    p.add_argument("-nps", "--num_export_workers", dest="num_export_workers", type=int, default=1,
                   help="exports (resampling to the input geometry, writing) allowed in flight in background threads; "
                        "each holds one case's probabilities in memory (default 1; used when -npp > 1)")
    add_max_voxels(p)
    p.add_argument("--overwrite_output", action="store_true",
                   help="write into -o even when it is a non-empty folder that is not a prediction folder (without "
                        "predict_args.json), replacing its dataset.json and same-named files (default: refuse)")


def add_max_voxels(p: argparse.ArgumentParser) -> None:
    """``--max_voxels``: the per-image voxel limit (:mod:`autosam.io.limits`), applied by :func:`apply_limits`."""
    p.add_argument("--max_voxels", type=positive_int, default=None, metavar="N",
                   help="refuse an input image of more than N voxels before reading it (default 400000000, or "
                        "AUTOSAM_MAX_VOXELS): a small compressed file may declare a volume that needs tens of GB")


def apply_limits(args) -> None:
    """Put the limits given on the command line (``--max_voxels``) into the environment."""
    from autosam.io.limits import set_limits

    set_limits(max_voxels=getattr(args, "max_voxels", None))


# ---------------------------------------------------------------------------------------------- sharding
def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_sharding_options(p: argparse.ArgumentParser) -> None:
    """``-num_parts``/``-part_id`` and ``--continue_prediction`` (nnU-Net's spellings) and
    ``--num-gpus`` of the prediction commands."""
    p.add_argument("-num_parts", "--num_parts", dest="num_parts", type=positive_int, default=1, metavar="N",
                   help="split the cases into N parts for N independent jobs (e.g. a job array): job -part_id K takes "
                        "every N-th case of the sorted list, starting at the K-th (default 1: all cases)")
    p.add_argument("-part_id", "--part_id", dest="part_id", type=int, default=0, metavar="K",
                   help="which part this job predicts, 0 .. N-1 (default 0)")
    p.add_argument("--continue_prediction", "-continue_prediction", dest="continue_prediction", action="store_true",
                   help="skip cases whose output is complete (the label file, which is written last and atomically; "
                        "with --save_probabilities also its .npz and .json), e.g. after an interrupted job")
    p.add_argument("--num-gpus", "-num_gpus", "--num_gpus", dest="num_gpus", type=positive_int, default=None,
                   metavar="N", help="predict with N processes on this node, one GPU each (cuda:0 .. cuda:N-1; with "
                                     "--device cpu, N CPU processes), each taking every N-th case of this job's part")


def check_sharding(parser: argparse.ArgumentParser, args) -> None:
    if not 0 <= args.part_id < args.num_parts:
        parser.error(f"argument -part_id: must be in 0 .. {args.num_parts - 1} (-num_parts {args.num_parts}), "
                     f"got {args.part_id}")


def launch_prediction_processes(prog: str, module: str, argv: list[str], args) -> int | None:
    """``--num-gpus N`` (N > 1) outside a launcher: run ``module`` in N processes through torch's
    elastic launcher and return the exit status; None when this process predicts itself."""
    from autosam.training import distributed

    if distributed.launcher_env() is not None or not args.num_gpus or args.num_gpus < 2:
        return None
    try:
        distributed.check_local_launch(args.num_gpus, args.device)
    except RuntimeError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    return 2 if distributed.launch_local(module, argv, args.num_gpus) else 0


def prediction_share(args) -> tuple[str, int, int]:
    """``(device, num_parts, part_id)`` of this process: the command line's, or within a launched
    job (``--num-gpus``, torchrun) this rank's GPU and its share of the job's part."""
    from autosam.training import distributed

    device = args.device or default_device()
    env = distributed.launcher_env()
    if env is None:
        return device, args.num_parts, args.part_id
    distributed.check_joined(args.num_gpus, env)
    device = str(distributed.rank_device(device, env))
    # the part's cases, every world_size-th one per rank: a part of num_parts * world_size
    return device, args.num_parts * env.world_size, args.part_id + args.num_parts * env.rank
