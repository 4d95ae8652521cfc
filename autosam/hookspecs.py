"""Hook specifications of autosam.

Every hook is called with keyword arguments only, and an implementation may accept fewer
arguments than its spec, so specs can grow without breaking plugins. Registration hooks
receive a ``register`` callback; a plugin calls it once per object it contributes.

Each hook is documented in ``documentation/plugins.md`` (a test fails otherwise).
"""
from __future__ import annotations

from typing import Any, Callable

import pluggy

hookspec = pluggy.HookspecMarker("autosam")


# ----------------------------------------------------------------------------------- registration
@hookspec
def register_methods(register: Callable[[Any], None]) -> None:
    """Register segmentation methods (trainer plugins).

    :param register: call ``register(method)`` with an instance of a
        :class:`autosam.method.Method` subclass; ``method.name`` is the name users
        type (``autosam_train 17 3d NAME 0``).
    """


@hookspec
def register_planners(register: Callable[[Any], None]) -> None:
    """Register experiment planners.

    :param register: call ``register(planner)`` with an object that has a ``name`` attribute and a
        ``plan(fingerprint, dataset_json, gpu_memory_gb, plans_name, configurations)`` method
        returning :class:`autosam.experiment_planning.plans.Plans` (see ``autosam_planners.default``).
    """


@hookspec
def register_backbones(register: Callable[[Any], None]) -> None:
    """Register SAM backbones.

    :param register: call ``register(spec)`` with an :class:`autosam.sam.registry.BackboneSpec`.
    """


# ----------------------------------------------------------------------------------- planning
@hookspec
def plan_method_section(
    method_name: str, configuration_name: str, configuration: Any, fingerprint: Any, dataset_json: dict
) -> dict | None:
    """Contribute the plans section of one method for one configuration.

    Called once per (registered method, configuration). The implementation for ``method_name``
    returns a JSON-serialisable dict of option values (field names of the method's options
    dataclass, e.g. the SAM input size) to store under
    ``plans.configurations[configuration_name].methods[method_name]``; other implementations
    return ``None``. Returning ``None`` for a configuration the method does not support is fine.

    :param method_name: the method whose section is being planned.
    :param configuration_name: ``"2d"``, ``"3d"`` or ``"3d_lowres"``.
    :param configuration: the :class:`~autosam.experiment_planning.plans.ConfigurationPlan` so far
        (spacing, patch size, batch size, normalisation, ...).
    :param fingerprint: the :class:`~autosam.experiment_planning.fingerprint.DatasetFingerprint`.
    :param dataset_json: the raw dataset's ``dataset.json`` as a dict.
    """


@hookspec
def method_suitability(fingerprint: Any, dataset_json: dict) -> list[tuple[str, float, str]] | None:
    """Vote for the default method of a dataset.

    Return a list of ``(method_name, score, rationale)``; the planner records the method with the
    highest score as the plans' default method, with its one-line rationale. Scores are in
    ``[0, 1]``; the ``unet`` baseline votes 0.5.

    :param fingerprint: the :class:`~autosam.experiment_planning.fingerprint.DatasetFingerprint`.
    :param dataset_json: the raw dataset's ``dataset.json`` as a dict.
    """
