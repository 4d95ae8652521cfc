"""What the planner's default method rests on: measured comparisons against ``unet``.

The method plugins vote from the dataset fingerprint (``method_suitability``): a prior about
where each paper's mechanism should help. This module holds what autosam measured on real data
(``documentation/benchmarks.md``, "Real MR" and "Where each SAM method wins"), by regime:

- **small structures** (no class both large and spanning many slices: hippocampus-like);
- **large organs** (most classes are large, compact structures spanning many slices).

Each entry says whether the method beat ``unet`` at equal iterations and at equal CPU time. The
planner uses it in :func:`autosam.experiment_planning.method_sections.choose_default_method`:

- on a **CPU target** the default is the vote's winner only when it is ``unet`` or measured ahead of
  ``unet`` at equal CPU time in the dataset's regime; otherwise ``unet``, and the rationale says why;
- on a **GPU target** the vote's winner stays, unless it measured below ``unet`` in the regime at
  equal iterations; the rationale names the evidence (or says there is none).

The quick empirical answer for one's own data and budget is
``autosam_compare_methods -d ID --time-budget-minutes N`` (documentation/choosing_methods.md).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

SMALL, LARGE = "small structures", "large organs"

#: A class is a large structure when it fills at least this fraction of the cropped image...
LARGE_FRACTION = 0.002
#: ...spans at least this many slices...
LARGE_SLICES = 8
#: ...and has at most this many connected components per case.
LARGE_COMPONENTS = 2


def is_large_structure(stats: Any) -> bool:
    """A class's fingerprint statistics describe a large, compact structure spanning many slices."""
    return (stats.volume_fraction >= LARGE_FRACTION and stats.slices_spanned >= LARGE_SLICES
            and stats.components_per_case <= LARGE_COMPONENTS)


def regime(fingerprint: Any) -> str | None:
    """``large organs`` when at least 60 % of the classes are large structures, ``small structures``
    when none is, else None (mixed: no measurement covers it)."""
    stats = list((getattr(fingerprint, "class_statistics", None) or {}).values())
    if not stats:
        return None
    large = sum(is_large_structure(s) for s in stats)
    if large == 0:
        return SMALL
    if large / len(stats) >= 0.6:
        return LARGE
    return None


@dataclass(frozen=True)
class Evidence:
    method: str
    regime: str
    equal_iterations: str  # what was measured at equal (or fewer) iterations
    equal_cpu_time: str  # what is known at equal CPU time
    beats_unet_at_equal_iterations: bool
    beats_unet_at_equal_cpu_time: bool | None  # None: not measured
    source: str = "documentation/benchmarks.md"


_HIPPO = ("real hippocampus MR, fold 0, 40 validation cases, CPU budgets: unet 0.866 in 12 min; "
          "msam 0.749 (random-init tiny3d), sautomed 0.626, masksam 0.558, medlsam 0.353 (8 cases)")

EVIDENCE: tuple[Evidence, ...] = (
    Evidence("sautomed", SMALL, _HIPPO,
             "below unet at every CPU budget measured (8 validation cases, one thread: 0.51 after 202 s of "
             "training CPU against unet's 0.83 after 204 s)", False, False),
    Evidence("msam", SMALL, _HIPPO, "below unet at every CPU budget measured", False, False),
    Evidence("masksam", SMALL, _HIPPO,
             "below unet at every CPU budget measured (8 validation cases, one thread: 0.35 after 164 s of "
             "training CPU against unet's 0.78 after 135 s)", False, False),
    Evidence("medlsam", SMALL, _HIPPO, "below unet at every CPU budget measured", False, False),
    Evidence("sautomed", LARGE,
             "held-out abdominal MR (liver, kidneys, spleen; 15 training / 5 test cases): test Dice 0.559 after "
             "100 iterations against unet's 0.239 after 300; real CT organ slabs (3 validation slabs, no "
             "mirroring): 0.397 after 100 iterations and 0.379 after 200 against unet's 0.218 and 0.333",
             "below unet: real CT organ slabs, 10 min of training on one core each, validation Dice 0.564 "
             "(190 iterations) against unet's 0.751 (960 iterations)", True, False),
    Evidence("masksam", LARGE,
             "real CT organ slabs (3 validation slabs, no mirroring): 0.284 after 100 iterations against "
             "unet's 0.218 (one iteration costs about 10x unet's on the CPU)",
             "below unet: real CT organ slabs, 10 min on one core each, 0.345 (100 iterations) against "
             "unet's 0.751 (960)", True, False),
    Evidence("msam", LARGE,
             "real CT organ slabs, random-init tiny3d (no SAM-Med3D weights ship): below unet",
             "below unet: real CT organ slabs, 10 min on one core each, 0.176 (910 iterations) against "
             "unet's 0.751 (960)", False, False),
    Evidence("medlsam", LARGE,
             "real CT organ slabs (3 validation slabs, no mirroring): localiser after 200 iterations 0.009 "
             "(the SAM stage with the reference boxes 0.906) against unet's 0.333",
             "below unet: real CT organ slabs, 10 min on one core each, 0.341 (5160 localiser iterations) "
             "against unet's 0.751 (960)", False, False),
)


def evidence_for(method: str, fingerprint: Any) -> Evidence | None:
    """The measurement of ``method`` in the dataset's regime, if any."""
    r = regime(fingerprint)
    for e in EVIDENCE:
        if e.method == method and e.regime == r:
            return e
    return None
