"""``autosam_example_dataset``: write the built-in synthetic CT-like example dataset."""
from __future__ import annotations

import logging
import sys
from pathlib import Path

from autosam import paths
from autosam.cli.common import Parser, command
from autosam.data.example import KINDS, make_example_dataset


def build_parser() -> Parser:
    p = Parser(
        prog="autosam_example_dataset",
        description="Write a synthetic CT-like dataset (nnU-Net v2 raw format) into $AUTOSAM_RAW: "
        "'organs' = liver, spleen, kidney, aorta; 'lesions' = many small liver lesions. "
        "Deterministic for a seed. Small volumes, so the quick start runs on a CPU.",
    )
    p.add_argument("-d", "--dataset_id", type=int, default=999, help="dataset id (default 999 -> Dataset999_Example)")
    p.add_argument("--cases", type=int, default=8, help="number of training cases (default 8); 2 test cases are added in imagesTs")
    p.add_argument("--kind", choices=KINDS, default="organs", help="organs (4 labels) or lesions (1 label, many small components)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0); the same seed gives the same dataset")
    p.add_argument("--raw", type=Path, default=None, help="raw folder to write into (default: $AUTOSAM_RAW)")
    return p


@command("autosam_example_dataset", errors=(ValueError,))  # DatasetError is a ValueError
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    raw = args.raw if args.raw is not None else paths.raw_dir()
    folder = make_example_dataset(raw, args.dataset_id, args.cases, args.kind, args.seed)
    print(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
