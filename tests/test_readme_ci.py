"""The README's install and test commands are the ones CI runs."""
from __future__ import annotations

import configparser
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
CI_RUN = ROOT / ".ci" / "run"
INSTALL = ROOT / "scripts" / "install.sh"


def _lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines()]


def _block_after(marker: str) -> list[str]:
    m = re.search(re.escape(marker) + r".*?\n```\w*\n(.*?)```", README, re.S)
    assert m, f"README.md has no code block after {marker!r}"
    return [line.strip() for line in m.group(1).splitlines() if line.strip() and not line.strip().startswith("#")]


def test_ci_runs_the_readme_test_command_verbatim():
    commands = _block_after("<!-- test-command")
    assert commands == ["python -m pytest -q"]
    ci = _lines(CI_RUN)
    assert commands[0] in ci, ".ci/run must run the README's test command exactly"
    assert "set -euo pipefail" in ci
    # pytest's "no tests collected" (exit 5) must fail CI, not pass silently
    assert any(re.fullmatch(r'if \[ "\$status" -eq 5 \]; then', line) for line in ci)


def test_ci_installs_with_the_readme_install_command_in_a_fresh_venv():
    install = _lines(INSTALL)
    readme_install = _block_after("## Install")
    assert 'pip install -e ".[test]" -c constraints.txt' in readme_install
    assert any(line.startswith("pip install") and '-e ".[test]" -c constraints.txt' in line for line in install)
    assert any('"$python" -m venv' in line for line in install)
    assert any(line.startswith("pip install") and "./tests/example_plugin --no-deps" in line for line in install)
    ci = _lines(CI_RUN)
    assert 'rm -rf "$venv"' in ci and 'bash scripts/install.sh "$venv"' in ci
    assert ci.index('rm -rf "$venv"') < ci.index('bash scripts/install.sh "$venv"') < ci.index("python -m pytest -q")


def test_torch_cap_and_constraints_agree():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    requires = cfg["options"]["install_requires"]
    pins = dict(re.findall(r"^(torch|torchvision)==(\S+)$", (ROOT / "constraints.txt").read_text(), re.M))
    assert set(pins) == {"torch", "torchvision"}
    for name, version in pins.items():
        assert re.search(rf"^{name}>=[^,\n]+,<={re.escape(version)}$", requires, re.M), f"setup.cfg must cap {name} at {version}"
        assert f"{name}<={version}" in README.replace("`", "")


@pytest.mark.parametrize("script", [".ci/run", "scripts/install.sh", "scripts/quickstart.sh"])
def test_shell_scripts_parse(script):
    bash = shutil.which("bash") or pytest.skip("bash not available")
    subprocess.run([bash, "-n", str(ROOT / script)], check=True)


def test_quickstart_runs_the_main_job_commands():
    text = (ROOT / "scripts" / "quickstart.sh").read_text()
    for command in ("autosam_example_dataset", "autosam_plan_and_preprocess", "autosam_train", "autosam_predict",
                    "autosam_evaluate_folder"):
        assert re.search(rf"^{command} ", text, re.M), f"quickstart.sh does not run {command}"
    assert "bash scripts/quickstart.sh" in README and "bash .ci/run" in README


def test_readme_links_point_to_existing_files():
    targets = re.findall(r"\]\(((?:documentation|tests|autosam)/[^)#]+)\)", README)
    assert "documentation/plugins.md" in targets and "documentation/method_contract.md" in targets
    missing = [t for t in targets if not (ROOT / t).exists()]
    assert not missing, f"README links to missing files: {missing}"
