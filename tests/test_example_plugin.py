"""Issue 2: the example third-party plugin, pip-installed into a fresh venv beside mbp."""

from __future__ import annotations

import json
import site
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_third_party_plugin_installs_and_works(tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    # mbp's heavy dependencies (torch...) come from this interpreter's site-packages; mbp itself and the
    # plugin are installed fresh, non-editable, into the new venv.
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    Path(purelib, "deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    for source in (ROOT, ROOT / "examples" / "mbp-rot13"):
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "--no-deps", str(source)],
            check=True,
            capture_output=True,
            text=True,
            cwd=tmp_path,
        )
    mbp = [str(python), "-m", "mbp.cli"]
    where = subprocess.run(
        [*mbp[:1], "-c", "import mbp; print(mbp.__file__)"], capture_output=True, text=True, cwd=tmp_path
    )
    assert str(env_dir) in where.stdout, "mbp must come from the fresh venv, not the checkout"
    listed = subprocess.run([*mbp, "plugins", "--json"], capture_output=True, text=True, cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    rows = {row["name"]: row for row in json.loads(listed.stdout)}
    assert rows["rot13"] == {
        "name": "rot13",
        "dist": "mbp-rot13",
        "version": "0.2.0",
        "codecs": ["rot13"],
        "backbones": [],
        "heads": [],
        "sinks": [],
    }
    valid = subprocess.run(
        [*mbp, "validate", str(ROOT / "examples" / "mbp-rot13" / "registry.yaml")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert valid.returncode == 0, valid.stderr
    # the installed package carries its default registry and bundled data
    default = subprocess.run([*mbp, "validate"], capture_output=True, text=True, cwd=tmp_path)
    assert default.returncode == 0 and "vqa-mixed" in default.stderr
    assert sys.executable != str(python)
