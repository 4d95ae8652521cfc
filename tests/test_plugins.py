"""The plugin system: registries, unknown names, broken plugins, and the ``autosam_plugins`` command."""
from __future__ import annotations

import json
import textwrap
import types
import warnings

import pluggy
import pytest

from autosam import hookimpl, plugins
from autosam.cli import plugins_cmd
from autosam.plugins import Registry, UnknownNameError, build_plugin_system


class _Named:
    def __init__(self, name):
        self.name = name


def _plugin(**hooks):
    """A plugin object whose attributes are the given hook implementations."""
    return types.SimpleNamespace(**{k: hookimpl(v) for k, v in hooks.items()})


def _local_system(*named_plugins):
    return build_plugin_system(list(named_plugins), load_entry_points=False)


# ------------------------------------------------------------------------------------- registries
def test_registry_lookup_by_name_and_owner():
    p = _plugin(
        register_methods=lambda register: (register(_Named("m_one")), register(_Named("m_two"))),
        register_planners=lambda register: register(_Named("pl")),
        register_backbones=lambda register: register(_Named("bb")),
    )
    system = _local_system(("mine", p))
    assert system.methods.names() == ["m_one", "m_two"]
    assert system.methods.get("m_two").name == "m_two"
    assert "pl" in system.planners and system.backbones.get("bb").name == "bb"
    entry = system.methods.entry("m_one")
    assert (entry.plugin, entry.distribution) == ("mine", "local")
    assert system.registered_by("mine") == {"methods": ["m_one", "m_two"], "planners": ["pl"], "backbones": ["bb"]}
    assert system.plugins[0].hooks == ["register_backbones", "register_methods", "register_planners"]
    assert system.failed == {}


def test_unknown_name_lists_names_and_packages():
    p = _plugin(register_methods=lambda register: (register(_Named("medsam_lesion")), register(_Named("unet"))))
    system = _local_system(("mine", p))
    with pytest.raises(UnknownNameError) as info:
        system.methods.get("medsam_lesoin")
    msg = str(info.value)
    assert "unknown method 'medsam_lesoin'" in msg
    assert "medsam_lesion (from local)" in msg and "unet (from local)" in msg
    assert "Did you mean 'medsam_lesion'?" in msg
    assert isinstance(info.value, KeyError)  # callers may catch KeyError


def test_unknown_name_mentions_plugins_that_failed():
    registry = Registry("method", failed={"broken": "ImportError: needs foo"})
    with pytest.raises(UnknownNameError, match=r"available methods: none.*broken: ImportError: needs foo"):
        registry.get("x")


def test_registering_an_existing_name_warns_and_last_wins():
    a = _plugin(register_methods=lambda register: register(_Named("same")))
    b = _plugin(register_methods=lambda register: register(_Named("same")))
    with pytest.warns(UserWarning, match="method 'same' .* replaces"):
        system = _local_system(("a", a), ("b", b))
    assert system.methods.entry("same").plugin == "b"


def test_registered_object_needs_a_name():
    p = _plugin(register_methods=lambda register: register(object()))
    with pytest.warns(UserWarning, match="failed in register_methods"):
        system = _local_system(("noname", p))
    assert "no string 'name'" in system.failed["noname"]


def test_hook_implementations_may_take_fewer_arguments():
    p = _plugin(
        register_methods=lambda: None,  # takes no ``register`` at all
        method_suitability=lambda: [("m", 0.7, "because")],
        plan_method_section=lambda method_name: {"size": 3} if method_name == "m" else None,
    )
    system = _local_system(("few", p))
    assert system.failed == {}
    assert system.hook.method_suitability(fingerprint=None, dataset_json={}) == [[("m", 0.7, "because")]]
    sections = system.hook.plan_method_section(
        method_name="m", configuration_name="3d", configuration=None, fingerprint=None, dataset_json={}
    )
    assert sections == [{"size": 3}]


def test_hook_with_argument_not_in_spec_fails_only_that_plugin():
    bad = _plugin(register_methods=lambda register, surprise: None)
    good = _plugin(register_methods=lambda register: register(_Named("ok")))
    with pytest.warns(UserWarning, match="'bad' .* failed to load"):
        system = _local_system(("bad", bad), ("good", good))
    assert "surprise" in system.failed["bad"]
    assert system.methods.names() == ["ok"]
    assert [p.name for p in system.plugins] == ["good"]


def test_same_plugin_name_from_two_sources_keeps_both():
    a = _plugin(register_methods=lambda register: register(_Named("from_a")))
    b = _plugin(register_methods=lambda register: register(_Named("from_b")))
    system = _local_system(("same", a), ("same", b))
    assert [p.name for p in system.plugins] == ["same", "local:same"]
    assert system.methods.names() == ["from_a", "from_b"]


def test_misspelt_hook_is_reported():
    p = _plugin(register_method=lambda register: None)
    with pytest.warns(UserWarning, match="'register_method', which is not an autosam hook"):
        _local_system(("typo", p))


# ------------------------------------------------------------------ entry points (temporary dists)
def _write_dist(root, dist, version, entry_points: dict[str, str], modules: dict[str, str]):
    """A minimal installed distribution (``*.dist-info``) plus its modules, under ``root``."""
    info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    lines = "".join(f"{k} = {v}\n" for k, v in entry_points.items())
    (info / "entry_points.txt").write_text(f"[autosam]\n{lines}")
    for name, source in modules.items():
        (root / f"{name}.py").write_text(textwrap.dedent(source))


def method_plugin_source(method_name: str) -> str:
    """Source of a plugin module that registers a bare method object named ``method_name``."""
    return f"""
    from autosam import hookimpl

    class Registered:
        name = {method_name!r}

    @hookimpl
    def register_methods(register):
        register(Registered())
"""


GOOD_PLUGIN = method_plugin_source("tmp_tiny")


@pytest.fixture
def temp_dists(tmp_path, monkeypatch):
    """One working and one broken plugin distribution on sys.path; the global system is rebuilt."""
    _write_dist(tmp_path, "tmp-good-plugin", "1.2.3", {"tmp_good": "tmp_good_plugin"}, {"tmp_good_plugin": GOOD_PLUGIN})
    _write_dist(
        tmp_path, "tmp-broken-plugin", "0.0.1", {"tmp_broken": "tmp_broken_plugin"},
        {"tmp_broken_plugin": "raise ImportError('tmp_broken_plugin needs the package foo')\n"},
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    plugins.reset_plugin_system()
    yield tmp_path
    plugins.reset_plugin_system()


def test_broken_entry_point_warns_and_others_still_load(temp_dists):
    with pytest.warns(UserWarning, match=r"'tmp_broken' \(tmp-broken-plugin 0.0.1, tmp_broken_plugin\) failed to load"):
        system = build_plugin_system()
    assert "needs the package foo" in system.failed["tmp_broken"]
    good = next(p for p in system.plugins if p.name == "tmp_good")
    assert (good.distribution, good.version, good.hooks) == ("tmp-good-plugin", "1.2.3", ["register_methods"])
    entry = system.methods.entry("tmp_tiny")
    assert (entry.distribution, entry.version) == ("tmp-good-plugin", "1.2.3")
    with pytest.raises(UnknownNameError, match=r"tmp_tiny \(from tmp-good-plugin\).*tmp_broken"):
        system.methods.get("nope")


def test_get_method_uses_the_installed_entry_points(temp_dists):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert plugins.get_method("tmp_tiny").name == "tmp_tiny"
        assert plugins.get_plugin_system() is plugins.get_plugin_system()  # built once


def test_plugins_command_json(temp_dists, capsys):
    assert plugins_cmd.main(["--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["hooks"] == sorted(["register_methods", "register_planners", "register_backbones",
                                   "plan_method_section", "method_suitability"])
    rows = {r["name"]: r for r in out["plugins"]}
    good = rows["tmp_good"]
    assert good["distribution"] == "tmp-good-plugin" and good["version"] == "1.2.3"
    assert good["status"] == "loaded" and good["error"] is None
    assert good["hooks"] == ["register_methods"] and good["methods"] == ["tmp_tiny"]
    broken = rows["tmp_broken"]
    assert broken["status"] == "failed" and "needs the package foo" in broken["error"]
    assert broken["distribution"] == "tmp-broken-plugin"
    assert out["plugins"][-1]["status"] == "failed"  # failures are listed last


def test_plugins_command_text_and_strict(temp_dists, capsys):
    assert plugins_cmd.main(["--strict"]) == 1  # a plugin failed
    text = capsys.readouterr().out
    assert "tmp_good  (tmp-good-plugin 1.2.3, tmp_good_plugin)" in text
    assert "methods:   tmp_tiny" in text
    assert "tmp_broken  (tmp-broken-plugin 0.0.1, tmp_broken_plugin)  [FAILED TO LOAD]" in text
    assert "error:     ImportError: tmp_broken_plugin needs the package foo" in text


REPLACING_PLUGIN = method_plugin_source("unet")


def test_plugins_command_reports_a_plugin_replacing_a_builtin_method(tmp_path, monkeypatch, capsys):
    plugins.reset_plugin_system()
    assert plugins_cmd.main(["--strict"]) == 0  # the installed plugins alone replace nothing
    assert "replaces" not in capsys.readouterr().err
    _write_dist(tmp_path, "tmp-replacing-plugin", "2.0.0", {"tmp_replacing": "tmp_replacing_plugin"},
                {"tmp_replacing_plugin": REPLACING_PLUGIN})
    monkeypatch.syspath_prepend(str(tmp_path))
    plugins.reset_plugin_system()
    try:
        message = ("method 'unet' from tmp-replacing-plugin (plugin 'tmp_replacing') replaces the one from autosam "
                   "(plugin 'unet')")
        assert plugins_cmd.main([]) == 0  # reported, not fatal without --strict
        out, err = capsys.readouterr()
        assert f"warning: {message}" in out and f"warning: {message}" in err
        assert "1 replacement(s) of an already registered name" in out
        assert plugins_cmd.main(["--strict"]) == 1
        capsys.readouterr()
        assert plugins_cmd.main(["--strict", "--json"]) == 1
        assert json.loads(capsys.readouterr().out)["replacements"] == [message]
        assert plugins.get_plugin_system().methods.entry("unet").distribution == "tmp-replacing-plugin"
    finally:
        plugins.reset_plugin_system()


def test_pluggy_marker_is_the_one_the_manager_uses():
    assert isinstance(hookimpl, pluggy.HookimplMarker) and hookimpl.project_name == plugins.ENTRY_POINT_GROUP
