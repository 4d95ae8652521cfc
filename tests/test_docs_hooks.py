"""Meta-test: every hook in autosam/hookspecs.py is documented in documentation/plugins.md with a
section headed by its name, its exact signature, and a runnable example; and every ``python``
example in that document runs."""
from __future__ import annotations

import inspect
import re
import sys
import types
import warnings
from pathlib import Path

import pytest

from autosam import hookspecs
from autosam.plugins import build_plugin_system, hook_names
from plugin_test_data import DATASET_JSON, synthetic_configuration, synthetic_fingerprint

DOC = Path(__file__).resolve().parents[1] / "documentation" / "plugins.md"
HEADING = re.compile(r"^(#+)\s+(.*?)\s*$")
PY_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def spec_signature(name: str) -> str:
    """``name(arg: type, ...) -> ret`` as written in hookspecs.py."""
    sig = inspect.signature(getattr(hookspecs, name))
    params = ", ".join(f"{p.name}: {p.annotation}" for p in sig.parameters.values())
    return f"{name}({params}) -> {sig.return_annotation}"


def sections(text: str) -> dict[str, str]:
    """Heading text (backticks removed) -> the section's body up to the next heading of the same or higher level."""
    lines = text.splitlines(keepends=True)
    heads = []
    in_code = False
    for i, line in enumerate(lines):
        if line.startswith("```"):
            in_code = not in_code
        m = None if in_code else HEADING.match(line)
        if m:
            heads.append((i, len(m.group(1)), m.group(2).replace("`", "")))
    out = {}
    for k, (i, level, title) in enumerate(heads):
        end = next((j for j, lv, _ in heads[k + 1:] if lv <= level), len(lines))
        out[title] = "".join(lines[i + 1:end])
    return out


def _section_of(hook: str) -> str:
    found = [body for title, body in sections(DOC.read_text()).items() if re.search(rf"\b{hook}\b", title)]
    assert found, f"documentation/plugins.md has no section headed {hook!r} (every hook in autosam/hookspecs.py needs one)"
    return found[0]


def _run_example(code: str, name: str, monkeypatch) -> types.ModuleType:
    """Execute ``code`` as the module ``name`` (in sys.modules while the test runs, as dataclasses need)."""
    module = types.ModuleType(name)
    monkeypatch.setitem(sys.modules, name, module)
    exec(compile(code, f"<{DOC.name}: {name}>", "exec"), module.__dict__)
    return module


REGISTRY_OF = {"register_methods": "methods", "register_planners": "planners", "register_backbones": "backbones"}


def test_every_hookspec_is_known():
    # the meta-test below is parametrised from this list; it must not silently be empty
    assert {"register_methods", "plan_method_section", "method_suitability"} <= set(hook_names())


@pytest.mark.parametrize("hook", hook_names())
def test_hook_is_documented_with_signature_and_runnable_example(hook, monkeypatch):
    body = _section_of(hook)
    signature = spec_signature(hook)
    assert signature in body, f"section {hook!r} of documentation/plugins.md must show the exact signature:\n    {signature}"
    examples = PY_BLOCK.findall(body)
    assert examples, f"section {hook!r} of documentation/plugins.md has no ```python example"
    module = _run_example("\n".join(examples), f"doc_example_{hook}", monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a typo'd hook name or a failing registration is an error here
        system = build_plugin_system([(f"doc_{hook}", module)], load_entry_points=False)
    assert system.failed == {}
    assert hook in system.plugins[0].hooks, f"the example of section {hook!r} does not implement {hook}"

    if hook in REGISTRY_OF:
        assert len(getattr(system, REGISTRY_OF[hook])) >= 1, f"the {hook} example registers nothing"
    elif hook == "plan_method_section":
        results = [r for r in system.hook.plan_method_section(
            method_name="doc_pixel", configuration_name="3d", configuration=synthetic_configuration(),
            fingerprint=synthetic_fingerprint(), dataset_json=DATASET_JSON) if r is not None]
        assert results and all(isinstance(r, dict) for r in results)
    elif hook == "method_suitability":
        votes = [v for vs in system.hook.method_suitability(fingerprint=synthetic_fingerprint(), dataset_json=DATASET_JSON) if vs for v in vs]
        assert votes and all(isinstance(n, str) and 0 <= s <= 1 and isinstance(r, str) for n, s, r in votes)
    else:
        pytest.fail(f"hook {hook!r} is new: teach this test how to call its documented example")


def test_every_python_block_in_the_document_runs(monkeypatch):
    blocks = PY_BLOCK.findall(DOC.read_text())
    assert len(blocks) >= len(hook_names())
    for i, code in enumerate(blocks):
        _run_example(code, f"doc_block_{i}", monkeypatch)


def test_sections_helper_finds_nested_headings():
    text = "# A\nx\n## B `b`\ny\n```python\n# not a heading\n```\n### C\nz\n## D\nw\n"
    s = sections(text)
    assert s["B b"] == "y\n```python\n# not a heading\n```\n### C\nz\n"
    assert s["D"] == "w\n" and "not a heading" not in s
