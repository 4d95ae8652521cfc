"""LoRA on fused-qkv attention projections, and parameter counting.

``apply_lora(module)`` finds every attention block whose ``qkv`` is one ``nn.Linear`` producing
q, k and v (segment-anything's ViT ``attn.qkv``, TinyViT's attention ``qkv`` and our 3D ViT's
``attn.qkv``) and replaces that Linear by :class:`LoRAQKVLinear`: the frozen base projection plus
low-rank updates ``(alpha / r) * B A x`` on the selected parts (q and v by default). ``A`` is
Kaiming-uniform, ``B`` zero, so at initialisation the output equals the base model's. The base
weight and bias keep their state-dict keys (``...qkv.weight``/``...qkv.bias``), so pretrained
checkpoints still load into a LoRA model (``strict=False`` ignores only the LoRA tensors).
"""
from __future__ import annotations

import logging
import math

import torch
from torch import nn

logger = logging.getLogger(__name__)


class LoRAQKVLinear(nn.Linear):
    """A fused qkv Linear with LoRA updates on some of its q/k/v output rows."""

    def __init__(self, base: nn.Linear, parts: dict[str, torch.Tensor], rank: int, alpha: float) -> None:
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.bias = base.bias
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        self.rank, self.alpha = int(rank), float(alpha)
        self.scaling = self.alpha / self.rank
        self.parts = sorted(parts)
        self.lora_A = nn.ParameterDict()
        self.lora_B = nn.ParameterDict()
        for name, idx in parts.items():
            self.register_buffer(f"index_{name}", idx.long(), persistent=False)
            a = torch.empty(self.rank, self.in_features, device=base.weight.device, dtype=base.weight.dtype)
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))
            self.lora_A[name] = nn.Parameter(a)
            self.lora_B[name] = nn.Parameter(torch.zeros(len(idx), self.rank, device=a.device, dtype=a.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        for name in self.parts:
            delta = (x @ self.lora_A[name].t().to(x.dtype)) @ self.lora_B[name].t().to(x.dtype)
            out = out.index_add(-1, getattr(self, f"index_{name}"), (delta * self.scaling).to(out.dtype))
        return out

    def merged_weight(self) -> torch.Tensor:
        """The equivalent plain weight (base + scaled LoRA updates)."""
        w = self.weight.detach().clone()
        for name in self.parts:
            w.index_add_(0, getattr(self, f"index_{name}"),
                         (self.lora_B[name] @ self.lora_A[name]).detach() * self.scaling)
        return w

    def extra_repr(self) -> str:
        return f"{self.in_features} -> {self.out_features}, LoRA rank={self.rank} alpha={self.alpha} on {','.join(self.parts)}"


def _qkv_indices(attn: nn.Module, qkv: nn.Linear) -> dict[str, torch.Tensor] | None:
    """Output-row indices of q, k and v in ``attn.qkv`` for the layouts we know, else None."""
    out = qkv.out_features
    if hasattr(attn, "key_dim") and hasattr(attn, "d") and hasattr(attn, "num_heads"):
        # TinyViT: per head [q (key_dim), k (key_dim), v (d)] interleaved
        kd, d, h = attn.key_dim, attn.d, attn.num_heads
        per = 2 * kd + d
        if per * h != out:
            return None
        base = torch.arange(h)[:, None] * per
        return {"q": (base + torch.arange(kd)).reshape(-1), "k": (base + kd + torch.arange(kd)).reshape(-1),
                "v": (base + 2 * kd + torch.arange(d)).reshape(-1)}
    if out % 3 == 0:
        # segment-anything / ViTDet / our 3D ViT: [q | k | v] blocks
        c = out // 3
        return {"q": torch.arange(c), "k": torch.arange(c, 2 * c), "v": torch.arange(2 * c, 3 * c)}
    return None


def apply_lora(
    module: nn.Module,
    rank: int = 4,
    alpha: float | None = None,
    targets: tuple[str, ...] = ("q", "v"),
    freeze_base: bool = True,
) -> list[str]:
    """Add LoRA to every fused ``qkv`` Linear under ``module`` (in place).

    :param rank: LoRA rank ``r``.
    :param alpha: scaling numerator (update scaled by ``alpha / r``); default ``alpha = r`` (scale 1).
    :param targets: which of ``"q"``, ``"k"``, ``"v"`` get an update.
    :param freeze_base: set ``requires_grad=False`` on every other parameter of ``module``
        (the usual "encoder frozen except LoRA" setting).
    :returns: the qualified names of the adapted Linear layers. Raises ``ValueError`` if none.
    """
    if rank < 1:
        raise ValueError(f"LoRA rank must be >= 1, got {rank}")
    bad = set(targets) - {"q", "k", "v"}
    if bad or not targets:
        raise ValueError(f"LoRA targets must be a non-empty subset of q, k, v; got {targets}")
    alpha = float(rank if alpha is None else alpha)
    if freeze_base:
        for p in module.parameters():
            p.requires_grad_(False)
    adapted = []
    for name, attn in list(module.named_modules()):
        qkv = getattr(attn, "qkv", None)
        if not isinstance(qkv, nn.Linear) or isinstance(qkv, LoRAQKVLinear):
            continue
        idx = _qkv_indices(attn, qkv)
        if idx is None:
            logger.warning("LoRA: %s.qkv has an unknown layout (%d outputs), skipped", name, qkv.out_features)
            continue
        attn.qkv = LoRAQKVLinear(qkv, {t: idx[t] for t in targets}, rank, alpha)
        adapted.append(f"{name}.qkv" if name else "qkv")
    if not adapted:
        raise ValueError(f"apply_lora: no fused qkv Linear found in {type(module).__name__}")
    logger.info("LoRA rank %d on %s of %d attention blocks", rank, "/".join(targets), len(adapted))
    return adapted


def lora_parameters(module: nn.Module) -> list[nn.Parameter]:
    """The LoRA A/B parameters under ``module``."""
    return [p for m in module.modules() if isinstance(m, LoRAQKVLinear)
            for p in list(m.lora_A.values()) + list(m.lora_B.values())]


def count_parameters(module: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts (shared parameters counted once)."""
    seen: dict[int, nn.Parameter] = {id(p): p for p in module.parameters()}
    total = sum(p.numel() for p in seen.values())
    trainable = sum(p.numel() for p in seen.values() if p.requires_grad)
    return trainable, total


def parameter_report(module: nn.Module, depth: int = 1) -> str:
    """A small table of trainable/total parameters per child module (to ``depth``) and overall."""
    rows = []

    def walk(m: nn.Module, prefix: str, level: int) -> None:
        for name, child in m.named_children():
            full = f"{prefix}{name}"
            t, n = count_parameters(child)
            if n:
                rows.append((full, t, n))
            if level < depth:
                walk(child, full + ".", level + 1)

    walk(module, "", 1)
    t, n = count_parameters(module)
    rows.append(("total", t, n))
    width = max(len(r[0]) for r in rows)
    lines = [f"{'module':<{width}}  {'trainable':>12}  {'total':>12}  {'%':>6}"]
    for name, t, n in rows:
        lines.append(f"{name:<{width}}  {t:>12,}  {n:>12,}  {100.0 * t / max(n, 1):>6.2f}")
    return "\n".join(lines)
