"""What enters each SAM method's image encoder on a real preprocessed case.

For every method a forward pre-hook on the backbone's image encoder records the first input it
gets while the method predicts one case the way validation does (no mirroring): shape, min,
1st/50th/99th percentiles, max, mean, std. Next to it, the range the backbone was trained on:

- LiteMedSAM (``litemedsam``): 256 x 256, RGB in [0, 1] (MedSAM's min-max scaled image);
- SAM ViT (``sam_vit_*``): 1024 x 1024, (x255 - pixel mean) / pixel std, about [-2.1, 2.6];
- SAM-Med3D (``sam_med3d``): 128^3, one channel z-scored per volume (mean 0, std 1).

usage: python benchmarks/sam_probes/encoder_inputs.py -d 4 [--case hippocampus_024] [--out FILE.json]
       [--methods sautomed masksam msam medlsam]  (env: AUTOSAM_PREPROCESSED as for autosam_train)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load_setup, stats, write_json  # noqa: E402

TRAINED_ON = {
    "litemedsam": "256 x 256, 3 x [0, 1]",
    "sam_vit_b": "1024 x 1024, 3 x SAM pixel mean/std of 0-255",
    "sam_med3d": "128^3, 1 x per-volume z-score",
    "tiny3d": "random init (sam_med3d interfaces)",
}


def capture(module) -> tuple[list, object]:
    """Record the first input of ``module``'s forward."""
    seen: list = []
    hook = module.register_forward_pre_hook(lambda m, a: seen.append(stats(a[0])) if not seen else None)
    return seen, hook


def probe_method(dataset_id, name: str, case: str | None, overrides: dict) -> dict:
    method, ctx, ds, _, val = load_setup(dataset_id, name, overrides)
    key = case or val[0]
    data, seg, props = ds.load(key)
    x = torch.from_numpy(np.array(data, dtype=np.float32))
    out = {"method": name, "case": key, "preprocessed": stats(x[0]),
           "options": {k: getattr(ctx.options, k) for k in ("backbone", "input_size", "sam_input_size", "slice_size",
                                                            "patch_size", "window") if hasattr(ctx.options, k)}}
    torch.manual_seed(0)
    if name == "medlsam":  # its SAM stage: the slices of the case through SliceFrame (what box prompts see)
        from autosam.sam.backbones import build_backbone
        from autosam.sam.box_segment import SliceFrame, resolve_window

        o = ctx.options
        bb = build_backbone(o.backbone, input_size=o.sam_input_size, checkpoint=o.sam_checkpoint)
        vol = x[0].numpy()
        window = resolve_window(tuple(o.window) if o.window is not None else "auto", vol)
        frame = SliceFrame(bb, vol.shape[1:], ctx.configuration.spacing[1:], window)
        seen, hook = capture(bb.image_encoder)
        with torch.no_grad():
            frame.encode(vol[vol.shape[0] // 2: vol.shape[0] // 2 + 1])
        hook.remove()
        out.update(backbone=bb.name, window=window, fitted_hw=[frame.h, frame.w])
    else:
        network = method.build_network(ctx)
        if hasattr(network, "backbone"):  # sautomed, msam
            bb, target = network.backbone, network.backbone.image_encoder
        else:  # masksam runs its encoder block by block (adapters): the runner gets the encoder input
            bb, target = None, network.encoder.runner
        seen, hook = capture(target)
        network.eval()
        with torch.no_grad():
            method.predict_volume(network, x, ctx, use_mirroring=False)
        hook.remove()
        out["backbone"] = bb.name if bb is not None else ctx.options.backbone
    out["encoder_input"] = seen[0] if seen else None
    out["backbone_input_size"] = int(bb.input_size if bb is not None else seen[0]["shape"][-1])
    out["trained_on"] = TRAINED_ON.get(out["backbone"], "?")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-d", "--dataset", required=True)
    p.add_argument("--case", default=None, help="preprocessed case (default: the first validation case of fold 0)")
    p.add_argument("--methods", nargs="+", default=["sautomed", "masksam", "msam", "medlsam"])
    p.add_argument("--set", nargs="*", default=[], metavar="METHOD:NAME=VALUE", help="option overrides")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    results = []
    for m in a.methods:
        ov = {kv.split(":", 1)[1].split("=")[0]: kv.split("=", 1)[1] for kv in a.set if kv.startswith(m + ":")}
        if m == "msam" and "backbone" not in ov:
            ov.update(backbone="tiny3d", allow_random_init="true")
        r = probe_method(a.dataset, m, a.case, ov)
        results.append(r)
        print(f"{m:9s} {r['backbone']:11s} input {r['backbone_input_size']:4d}  preprocessed {r['preprocessed']['shape']} "
              f"[{r['preprocessed']['min']}, {r['preprocessed']['max']}]  encoder {r['encoder_input']}  "
              f"trained on: {r['trained_on']}", flush=True)
    if a.out:
        write_json(a.out, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
