"""``autosam_plot_overlay_pngs``: one PNG per case with the label map over the image, at the slice
with the most foreground (nnU-Net's ``nnUNetv2_plot_overlay_pngs``), and the same for predictions
next to their reference."""
from __future__ import annotations

import logging
import sys
from pathlib import Path

from autosam.cli.common import Parser, command, normalize_configuration


def build_parser() -> Parser:
    p = Parser(
        prog="autosam_plot_overlay_pngs",
        description="Write one PNG per case: the axial slice with the most foreground (each label's share of its "
                    "voxels in the slice, averaged over the labels, as nnU-Net chooses it), image in grey windowed to "
                    "its 0.5-99.5 percentiles, labels in colour over it. By default the preprocessed training cases of "
                    "-c (what the network sees); --use_raw for the raw imagesTr/labelsTr; --pred DIR for predictions: "
                    "reference and prediction side by side on the same slice (the prediction alone where no "
                    "reference exists in labelsTr, labelsTs or gt_segmentations).",
        epilog="examples: autosam_plot_overlay_pngs -d 4 -c 3d; autosam_plot_overlay_pngs -d 4 --pred predictions")
    p.add_argument("-d", required=True, help="dataset id (4) or name (Dataset004_Hippocampus)")
    p.add_argument("-o", type=Path, default=None,
                   help="output folder (default: PRED/overlays with --pred, else "
                        "AUTOSAM_RESULTS/<dataset>/overlays/<configuration or raw>)")
    p.add_argument("-c", default="3d", type=normalize_configuration,
                   help="configuration of the preprocessed data (default 3d; nnU-Net's 3d_fullres is 3d)")
    p.add_argument("-p", "--plans", default="autosamPlans", help="plans name (default autosamPlans)")
    p.add_argument("--use_raw", action="store_true", help="draw the raw images and labels instead of the preprocessed data")
    p.add_argument("--pred", type=Path, default=None, help="folder of predicted label maps to draw against the reference")
    p.add_argument("-channel_idx", type=int, default=0, help="image channel to draw (0 = _0000; default 0)")
    p.add_argument("-overlay_intensity", type=float, default=0.5,
                   help="weight of the label colours over the image, 0-1 (default 0.5)")
    p.add_argument("-np", "--num_processes", type=int, default=1, help="worker processes (default 1)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


@command("autosam_plot_overlay_pngs", errors=(ValueError, KeyError))
def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from autosam import paths
    from autosam.io.dataset import dataset_name_from_id
    from autosam.utils import overlay

    configuration = a.c
    if not 0 <= a.overlay_intensity <= 1:
        raise ValueError(f"-overlay_intensity {a.overlay_intensity}: give a value between 0 and 1")
    name = dataset_name_from_id(a.d)
    if a.pred is not None:
        out = a.o or a.pred / "overlays"
        jobs = overlay.prediction_jobs(name, a.pred, out, a.channel_idx)
    elif a.use_raw:
        out = a.o or paths.results_dir() / name / "overlays" / "raw"
        jobs = overlay.raw_jobs(name, out, a.channel_idx)
    else:
        out = a.o or paths.results_dir() / name / "overlays" / configuration
        jobs = overlay.preprocessed_jobs(name, configuration, a.plans, out, a.channel_idx)
    _render_all(jobs, a.overlay_intensity, a.num_processes, a.quiet)
    print(f"{len(jobs)} overlay(s) written to {out}")
    return 0


def _render_all(jobs, alpha: float, num_processes: int, quiet: bool) -> None:
    import functools
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from autosam.utils.progress import progress_bar as tqdm

    from autosam.utils.overlay import render
    from autosam.utils.processes import pool_initializer

    draw = functools.partial(render, alpha=alpha)
    with tqdm(total=len(jobs), desc="overlays", unit="case", disable=quiet) as bar:
        if num_processes > 1 and len(jobs) > 1:
            with ProcessPoolExecutor(min(num_processes, len(jobs)), mp_context=multiprocessing.get_context("spawn"),
                                     **pool_initializer()) as pool:
                for _ in pool.map(draw, jobs):
                    bar.update()
        else:
            for job in jobs:
                draw(job)
                bar.update()


if __name__ == "__main__":
    sys.exit(main())
