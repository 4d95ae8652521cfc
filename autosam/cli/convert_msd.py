"""``autosam_convert_MSD_dataset``: a Medical Segmentation Decathlon task folder -> the raw format."""
from __future__ import annotations

import logging
import sys
from pathlib import Path

from autosam.cli.common import Parser, command
from autosam.dataset_conversion.msd import convert_msd_dataset


def build_parser() -> Parser:
    p = Parser(
        prog="autosam_convert_MSD_dataset",
        description="Convert a Medical Segmentation Decathlon task folder (TaskNN_Name with dataset.json, "
        "imagesTr, labelsTr, optional imagesTs) into nnU-Net v2's raw format in $AUTOSAM_RAW, as "
        "nnUNetv2_convert_MSD_dataset does: TaskNN_Name becomes DatasetNNN_Name, case files get the _0000 "
        "channel suffix, 4D multi-modal images are split into one 3D file per channel (geometry kept), "
        "float label files with whole-number values are cast to integers, and dataset.json is rewritten "
        "(channel_names, labels name -> id, numTraining, file_ending). Prints the new dataset folder.",
    )
    p.add_argument("-i", "--input", required=True, type=Path,
                   help="the downloaded (and extracted) task folder, e.g. Task04_Hippocampus")
    p.add_argument("-overwrite_id", "--overwrite_id", type=int, default=None,
                   help="dataset id to use instead of the task number (Task04 -> 4 by default)")
    p.add_argument("-np", "--num_processes", type=int, default=2, help="worker processes (default 2)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing dataset folder of the same name (default: refuse); the old folder "
                   "is removed only once the new one is complete")
    p.add_argument("--raw", type=Path, default=None, help="raw folder to write into (default: $AUTOSAM_RAW)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


@command("autosam_convert_MSD_dataset", errors=(ValueError,))  # DatasetError is a ValueError
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.num_processes < 1:
        print("autosam_convert_MSD_dataset: error: -np must be at least 1", file=sys.stderr)
        return 2
    folder = convert_msd_dataset(args.input, args.overwrite_id, args.num_processes, args.raw,
                                 overwrite=args.overwrite, progress=not args.quiet)
    print(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
