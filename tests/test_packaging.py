"""Every Python package of the source tree is listed in setup.cfg (an editable install finds an
unlisted one; a wheel or a regular install would leave it out)."""
from __future__ import annotations

import configparser
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_is_listed_in_setup_cfg():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    listed = {line.strip() for line in cfg["options"]["packages"].splitlines() if line.strip()}
    dirs = {line.split("=")[0].strip(): line.split("=")[1].strip()
            for line in cfg["options"]["package_dir"].splitlines() if line.strip()}
    found = set()
    for name, folder in dirs.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            found.add(".".join([name, *rel.parts]))
    assert found - listed == set(), f"packages missing from setup.cfg: {sorted(found - listed)}"
