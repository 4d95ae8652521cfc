"""What method plugins add to the plans: their per-configuration sections and the default method.

Both steps go through hooks, so every planner (built-in or third-party) can call them:

- :func:`add_method_sections` calls ``plan_method_section`` once per (registered method,
  configuration) and stores the non-``None`` results in ``configuration.methods[method]``;
- :func:`choose_default_method` collects ``method_suitability`` votes and picks the highest score
  (``unet`` with the rationale "baseline" when nobody votes).
"""
from __future__ import annotations

import json
import logging
import math
from typing import Any

from autosam.experiment_planning.plans import Plans

logger = logging.getLogger(__name__)

BASELINE_METHOD = "unet"
BASELINE_RATIONALE = "baseline"


def add_method_sections(plans: Plans, fingerprint: Any, dataset_json: dict, plugin_system) -> None:
    """Fill ``configuration.methods`` of every configuration of ``plans`` through the hook."""
    hook = plugin_system.hook.plan_method_section
    for method_name in plugin_system.methods.names():
        for cname, conf in plans.configurations.items():
            results = hook(method_name=method_name, configuration_name=cname, configuration=conf,
                           fingerprint=fingerprint, dataset_json=dataset_json)
            section: dict = {}
            # pluggy returns the last-registered implementation first; apply in registration order
            for r in reversed([r for r in results if r is not None]):
                if not isinstance(r, dict):
                    raise TypeError(f"plan_method_section for method {method_name!r}, configuration {cname!r} returned "
                                    f"{type(r).__name__}; expected a dict or None")
                section.update(r)
            if section:
                try:
                    json.dumps(section)
                except TypeError as exc:
                    raise TypeError(f"plans section of method {method_name!r} ({cname}) is not JSON-serialisable: {exc}") from None
                conf.methods[method_name] = section
                logger.debug("method %s, configuration %s: %s", method_name, cname, section)


def collect_votes(fingerprint: Any, dataset_json: dict, plugin_system) -> list[list]:
    """All ``[method, score, rationale]`` votes, best first (ties: alphabetical)."""
    votes = []
    for result in plugin_system.hook.method_suitability(fingerprint=fingerprint, dataset_json=dataset_json):
        for vote in result or []:
            try:
                name, score, rationale = vote
                score = float(score)
            except (TypeError, ValueError):
                raise TypeError(f"method_suitability returned {vote!r}; expected (method_name, score, rationale)") from None
            if not math.isfinite(score):
                raise ValueError(f"method_suitability vote for {name!r} has a non-finite score {score}")
            votes.append([str(name), score, str(rationale)])
    votes.sort(key=lambda v: (-v[1], v[0]))
    return votes


def choose_default_method(fingerprint: Any, dataset_json: dict, plugin_system,
                          target: str = "gpu") -> tuple[str, str, list[list]]:
    """``(method, rationale, votes)``: the best-scoring vote for a registered method, checked
    against what was measured (:mod:`autosam.experiment_planning.evidence`) for the compute
    ``target`` (``"gpu"`` or ``"cpu"``).

    Votes for methods that are not installed are recorded but cannot win (unless no method is
    registered at all, e.g. in a bare plugin system).
    """
    from autosam.io.labels import LabelManager
    from autosam.method import label_support_problem

    votes = collect_votes(fingerprint, dataset_json, plugin_system)
    registered = set(plugin_system.methods.names())
    eligible = [v for v in votes if not registered or v[0] in registered]
    # a method that cannot train these labels (regions, ignore label) cannot be the default
    labels = LabelManager.from_dataset_json(dataset_json)
    eligible = [v for v in eligible if v[0] not in registered
                or label_support_problem(plugin_system.methods.get(v[0]), labels, plugin_system.methods) is None]
    if not eligible:
        return BASELINE_METHOD, BASELINE_RATIONALE, votes
    name, score, rationale = eligible[0]
    if name == BASELINE_METHOD or (registered and BASELINE_METHOD not in registered):
        return name, rationale, votes
    return (*_check_against_evidence(name, score, rationale, fingerprint, target), votes)


def _check_against_evidence(name: str, score: float, rationale: str, fingerprint: Any, target: str) -> tuple[str, str]:
    """The vote's winner ``name`` (not unet) and its rationale, or unet where the measurements say
    so (see :mod:`autosam.experiment_planning.evidence`)."""
    from autosam.experiment_planning.evidence import evidence_for, regime

    e = evidence_for(name, fingerprint)
    where = regime(fingerprint) or "this mix of structures"
    vote = f"{name}'s vote ({score:g}: {rationale})"
    quick = "for the empirical choice run autosam_compare_methods at your budget"
    if e is not None and not e.beats_unet_at_equal_iterations:
        return BASELINE_METHOD, (f"{vote} is overruled: on {where} it measured below unet ({e.equal_iterations}; "
                                 f"{e.source}); {quick}")
    if target == "cpu":
        if e is not None and e.beats_unet_at_equal_cpu_time:
            return name, f"{rationale}; measured ahead of unet at equal CPU time on {where} ({e.equal_cpu_time})"
        known = (f"it wins on {where} only at equal iterations ({e.equal_iterations}); at equal CPU time: "
                 f"{e.equal_cpu_time}" if e is not None else f"no measurement on {where} shows it ahead of unet")
        return BASELINE_METHOD, (f"CPU target: {vote} is not the default because {known}; unet is the default at "
                                 f"equal CPU time; {quick}")
    if e is not None:
        return name, f"{rationale}; measured on {where}: {e.equal_iterations} ({e.source}); at equal time: {e.equal_cpu_time}"
    return name, f"{rationale} (a prior from the fingerprint: no measurement on {where} yet; {quick})"
