"""The 3D-SAutoMed network: LoRA-tuned SAM encoder, local 3D awareness, Box Prompt Generator,
HIS and a multi-class two-way decoder, applied slice after slice.

One *step* segments slice t of every sequence in the batch from the encoder features of slices
t-1, t, t+1 and the state the previous step left (history tokens, boxes of the previous
prediction). :meth:`SAutoMedNet.run_sequence` runs steps along the slice axis;
:meth:`SAutoMedNet.segment` orders them middle-out (both directions in one batch) or top-down.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .box_generator import BoxPromptGenerator
from .boxes import boxes_from_labels, cxcywh_to_xyxy, xyxy_to_cxcywh
from .decoder import SAutoMedDecoder
from .local3d import LocalAwareness3D


@dataclass
class SequenceState:
    """What one slice hands to the next: HIS tokens and the previous prediction's boxes."""

    history: torch.Tensor | None = None  # B x K_his x C
    boxes: torch.Tensor | None = None  # B x F x 4, cxcywh, normalised (None: no previous slice)
    present: torch.Tensor | None = None  # B x F bool: class present in the previous prediction


@dataclass
class StepOutput:
    logits: torch.Tensor  # B x K x h' x w' (decoder resolution)
    anchors: torch.Tensor | None = None  # B x F x 4 cxcywh anchors the generator started from
    boxes: list[torch.Tensor] = field(default_factory=list)  # refined boxes of every generator layer
    slice_index: int = -1


@dataclass
class BoxGuide:
    """User boxes for one step (``B`` rows x ``F`` foreground classes), normalised ``xyxy`` in the
    slice frame. ``given``: the class has a user box on this row's slice; ``exact``: the box is the
    prompt itself (the challenge's 2D box on its own slice); otherwise it bounds the class (a 3D box):
    the anchor is the previous slice's box clipped to it (the box itself where the class was absent),
    and the generator's refined box is clipped to it."""

    given: torch.Tensor  # B x F bool
    boxes: torch.Tensor  # B x F x 4 xyxy in [0, 1]
    exact: torch.Tensor  # B x F bool

    def anchors(self, anchors: torch.Tensor, present: torch.Tensor | None) -> torch.Tensor:
        own = cxcywh_to_xyxy(anchors)
        lo, hi = self.boxes[..., :2], self.boxes[..., 2:]
        clipped = torch.cat([torch.maximum(own[..., :2], lo), torch.minimum(own[..., 2:], hi)], -1)
        valid = (clipped[..., 2:] > clipped[..., :2]).all(-1)
        if present is not None:
            valid = valid & present.to(valid.device)
        use = torch.where((valid & ~self.exact).unsqueeze(-1), clipped, self.boxes)
        return torch.where(self.given.unsqueeze(-1), xyxy_to_cxcywh(use).to(anchors.dtype), anchors)

    def prompt_boxes(self, refined: torch.Tensor) -> torch.Tensor:
        own = cxcywh_to_xyxy(refined)
        clipped = torch.cat([torch.maximum(own[..., :2], self.boxes[..., :2]), torch.minimum(own[..., 2:], self.boxes[..., 2:])], -1)
        clipped = torch.cat([clipped[..., :2], torch.maximum(clipped[..., 2:], clipped[..., :2])], -1)
        use = torch.where(self.exact.unsqueeze(-1), self.boxes, clipped)
        return torch.where(self.given.unsqueeze(-1), xyxy_to_cxcywh(use).to(refined.dtype), refined)

    @staticmethod
    def cat(parts: "list[BoxGuide | None]", rows: int, classes: int) -> "BoxGuide":
        """Stack the guides of several row groups (None: no user box in that group)."""
        def empty() -> BoxGuide:
            return BoxGuide(torch.zeros(rows, classes, dtype=torch.bool), torch.zeros(rows, classes, 4),
                            torch.zeros(rows, classes, dtype=torch.bool))

        parts = [p if p is not None else empty() for p in parts]
        device = next(p.boxes.device for p in parts)
        return BoxGuide(*(torch.cat([getattr(p, k).to(device) for p in parts]) for k in ("given", "boxes", "exact")))


@dataclass
class ArchitectureConfig:
    """The parts of the options that shape the network (ablation switches included)."""

    num_classes: int
    history_tokens: int = 8
    use_history: bool = True
    use_inter_slice: bool = True
    use_intra_slice: bool = True
    use_box_generator: bool = True
    order: str = "mid_to_ends"  # or "top_to_bottom"
    local_heads: int = 8
    generator_layers: int = 3
    encode_batch: int = 16


class SAutoMedNet(nn.Module):
    """:param backbone: an :class:`autosam.sam.backbone.SamBackbone` (2D), LoRA already applied."""

    def __init__(self, backbone: nn.Module, cfg: ArchitectureConfig):
        super().__init__()
        if cfg.order not in ("mid_to_ends", "top_to_bottom"):
            raise ValueError(f"order must be 'mid_to_ends' or 'top_to_bottom', got {cfg.order!r}")
        if cfg.num_classes < 2:
            raise ValueError("3D-SAutoMed needs at least one foreground class")
        self.cfg = cfg
        dim = backbone.embed_dim
        self.num_classes = cfg.num_classes
        self.decoder = SAutoMedDecoder(backbone.mask_decoder, cfg.num_classes,
                                       cfg.history_tokens if cfg.use_history else 0)
        backbone.mask_decoder = None  # its transformer and upscaling now live in self.decoder
        self.backbone = backbone
        self.local3d = (LocalAwareness3D(dim, cfg.local_heads, use_inter=cfg.use_inter_slice,
                                         use_intra=cfg.use_intra_slice)
                        if (cfg.use_inter_slice or cfg.use_intra_slice) else None)
        self.box_generator = (BoxPromptGenerator(dim, cfg.num_classes - 1, cfg.generator_layers,
                                                 num_heads=cfg.local_heads, ffn_dim=4 * dim)
                              if cfg.use_box_generator else None)

    # ------------------------------------------------------------------ pieces
    @property
    def uses_neighbours(self) -> bool:
        return self.cfg.use_inter_slice

    def train(self, mode: bool = True):
        super().train(mode)
        # frozen pretrained encoder parts (BatchNorm statistics of LiteMedSAM's TinyViT, dropout)
        # stay in inference mode; LoRA weights still receive gradients
        self.backbone.image_encoder.eval()
        self.backbone.prompt_encoder.eval()
        return self

    def encode(self, slices: torch.Tensor) -> torch.Tensor:
        """``N x C x H x W`` normalised slices -> ``N x E x h x w`` SAM image embeddings."""
        x = self.backbone.prepare_slices(slices)
        return self.backbone.encode(x, batch_size=self.cfg.encode_batch)

    def image_pe(self) -> torch.Tensor:
        return self.backbone.prompt_encoder.get_dense_pe()

    def initial_state(self, batch: int) -> SequenceState:
        return SequenceState(history=self.decoder.initial_history(batch))

    def box_prompt_tokens(self, boxes_cxcywh: torch.Tensor, prompt_embedding: torch.Tensor) -> torch.Tensor:
        """Per class: the generator's prompt embedding followed by SAM's two box-corner tokens of
        its refined box (pretrained prompt encoder) -> ``B x 3F x C``."""
        b, f, _ = boxes_cxcywh.shape
        s = float(self.backbone.input_size)
        xyxy = cxcywh_to_xyxy(boxes_cxcywh).clamp(0, 1) * s
        corners, _ = self.backbone.prompt_encoder(points=None, boxes=xyxy.reshape(b * f, 4), masks=None)
        corners = corners.view(b, f, 2, -1)
        return torch.cat([prompt_embedding.unsqueeze(2), corners], dim=2).flatten(1, 2)

    # ------------------------------------------------------------------ one slice
    def step(self, f_prev: torch.Tensor | None, f_cur: torch.Tensor, f_next: torch.Tensor | None,
             state: SequenceState, guide: "BoxGuide | None" = None) -> tuple[StepOutput, SequenceState]:
        """One slice. ``guide``: user boxes for some classes of some rows (prompted prediction)."""
        b = f_cur.shape[0]
        pe = self.image_pe()
        z = self.local3d(f_prev, f_cur, f_next, pos=pe) if self.local3d is not None else f_cur
        anchors, boxes, prompts = None, [], None
        if self.box_generator is not None:
            anchors = self.box_generator.anchors(state.boxes, state.present, b)
            if guide is not None:
                anchors = guide.anchors(anchors, state.present)
            prompt_embedding, boxes = self.box_generator(z, pe, anchors)
            final = boxes[-1] if guide is None else guide.prompt_boxes(boxes[-1])
            prompts = self.box_prompt_tokens(final, prompt_embedding)
        dense = self.backbone.prompt_encoder.no_mask_embed.weight.view(1, -1, 1, 1)
        logits, history = self.decoder(z + dense, pe, prompts, state.history)
        with torch.no_grad():
            prev_xyxy, present = boxes_from_labels(logits.argmax(1), self.num_classes)
        new_state = SequenceState(history=history, boxes=xyxy_to_cxcywh(prev_xyxy), present=present)
        return StepOutput(logits=logits, anchors=anchors, boxes=boxes), new_state

    # ------------------------------------------------------------------ sequences
    def run_sequence(self, volume: torch.Tensor, first: int = 0, stop: int | None = None,
                     state: SequenceState | None = None,
                     on_step: Callable[[StepOutput], None] | None = None,
                     encoder_grad_from: int = 0, features: torch.Tensor | None = None,
                     guide_at: "Callable[[int], BoxGuide | None] | None" = None) -> list[StepOutput]:
        """Segment slices ``first .. stop-1`` of ``volume`` (``B x C x Z x H x W``) in increasing
        order, each step handing its state to the next. Neighbours outside the volume repeat the
        border slice. With ``on_step`` the outputs are handed over one by one and not kept.

        With gradients enabled all slices needed are encoded in one batch (slices before
        ``encoder_grad_from`` without encoder gradients: they still feed history and boxes, but
        back-propagation through the encoder is spared); without, they are encoded lazily as the
        sequence advances (memory stays bounded on long volumes). ``features``: the encoder
        features of every slice (``B x Z x E x h x w``, an interactive cache): nothing is encoded.
        ``guide_at(t)``: user boxes for step ``t`` (:class:`BoxGuide`)."""
        b, c, z_len, h, w = volume.shape
        stop = z_len if stop is None else stop
        if not 0 <= first < stop <= z_len:
            raise ValueError(f"run_sequence: need 0 <= first < stop <= {z_len}, got {first}, {stop}")
        lo = max(first - 1, 0) if self.uses_neighbours else first
        hi = min(stop + 1, z_len) if self.uses_neighbours else stop
        cache: dict[int, torch.Tensor] = {}

        def encode_range(a: int, e: int) -> None:
            if features is not None:
                for i in range(a, e):
                    cache[i] = features[:, i]
                return
            sl = volume[:, :, a:e].permute(0, 2, 1, 3, 4).reshape(b * (e - a), c, h, w)
            feats = self.encode(sl)
            feats = feats.view(b, e - a, *feats.shape[1:])
            for i in range(a, e):
                cache[i] = feats[:, i - a]

        if torch.is_grad_enabled():
            split = min(max(encoder_grad_from, lo), hi)
            if split > lo:
                with torch.no_grad():
                    encode_range(lo, split)
            if hi > split:
                encode_range(split, hi)
        state = state if state is not None else self.initial_state(b)
        outputs: list[StepOutput] = []
        chunk = max(1, self.cfg.encode_batch // max(b, 1))
        for t in range(first, stop):
            wanted = [max(t - 1, 0), t, min(t + 1, z_len - 1)] if self.uses_neighbours else [t]
            missing = [i for i in wanted if i not in cache]
            if missing:
                encode_range(min(missing), min(max(missing) + chunk, hi))
            for i in [k for k in cache if k < wanted[0]]:
                del cache[i]
            f_prev, f_cur, f_next = (cache[wanted[0]], cache[t], cache[wanted[2]]) if self.uses_neighbours else (
                None, cache[t], None)
            out, state = self.step(f_prev, f_cur, f_next, state, guide_at(t) if guide_at is not None else None)
            out.slice_index = t
            if on_step is not None:
                on_step(out)
            else:
                outputs.append(out)
        return outputs

    def visiting_plan(self, z_len: int) -> list[tuple[str, list[int]]]:
        """Slice visiting order: ``[(direction, slice indices)]``, middle slice outward to both ends
        (two sequences that both start at the middle slice) or top to bottom (one sequence)."""
        if self.cfg.order == "top_to_bottom":
            return [("down", list(range(z_len)))]
        mid = z_len // 2
        return [("down", list(range(mid, z_len))), ("up", list(range(mid, -1, -1)))]

    def segment(self, volume: torch.Tensor, on_slice: Callable[[int, torch.Tensor, float], None],
                features: torch.Tensor | None = None,
                guide_for: "Callable[[int], BoxGuide | None] | None" = None) -> None:
        """Segment every slice of ``volume`` (``B x C x Z x H x W``) in the configured order.

        Both directions run as one batch (the shorter one padded with its last slice).
        ``on_slice(z, logits, weight)`` receives decoder-resolution logits ``B x K x h' x w'`` of
        slice ``z``; the middle slice is delivered once per direction with weight 0.5.
        ``features`` (``B x Z x E x h x w``): cached encoder features of ``volume``; ``guide_for(z)``:
        user boxes of slice ``z`` for the ``B`` rows."""
        b, _, z_len = volume.shape[:3]
        plan = self.visiting_plan(z_len)
        seqs, lengths = [], []
        for _direction, idx in plan:
            # one context slice in front (the neighbour the first visited slice looks back to)
            before = idx[0] - (idx[1] - idx[0] if len(idx) > 1 else 1)
            front = min(max(before, 0), z_len - 1)
            seqs.append([front] + idx)
            lengths.append(len(idx))
        longest = max(len(s) for s in seqs)
        seqs = [s + [s[-1]] * (longest - len(s)) for s in seqs]
        batch = torch.cat([volume[:, :, s] for s in seqs], dim=0)
        counts: dict[int, int] = {}
        for _direction, idx in plan:
            for i in idx:
                counts[i] = counts.get(i, 0) + 1

        def deliver(out: StepOutput) -> None:
            pos = out.slice_index - 1
            for d, (_direction, idx) in enumerate(plan):
                if pos < lengths[d]:
                    z = idx[pos]
                    on_slice(z, out.logits[d * b:(d + 1) * b], 1.0 / counts[z])

        feats = torch.cat([features[:, s] for s in seqs], dim=0) if features is not None else None
        guide_at = None
        if guide_for is not None:
            def guide_at(t: int) -> "BoxGuide | None":
                parts = [guide_for(s[t]) for s in seqs]
                return None if all(g is None for g in parts) else BoxGuide.cat(parts, b, self.num_classes - 1)

        self.run_sequence(batch, first=1, on_step=deliver, features=feats, guide_at=guide_at)

    def forward(self, volume: torch.Tensor) -> torch.Tensor:
        """Logits ``B x K x Z x H x W`` of every slice of ``volume`` (``B x C x Z x H x W``),
        segmented in the configured order and resized to ``H x W``."""
        b, _, z_len, h, w = volume.shape
        out = volume.new_zeros((b, self.num_classes, z_len, h, w))

        def on_slice(z: int, logits: torch.Tensor, weight: float) -> None:
            out[:, :, z] += weight * F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)

        self.segment(volume, on_slice)
        return out
