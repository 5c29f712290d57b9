"""The brainlife entry point `main`: it runs the installed package, never the bidsapp/ folder of the clone
it is started in, and gives the image the GPU (--nv) on a node that has one."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
VERSION = (ROOT / "version").read_text().strip()


def test_main_runs_the_installed_package_not_the_clone_it_starts_in(tmp_path):
    """brainlife starts `main` in the clone of the repository: its bidsapp/ is in the current folder.
    A shadowing bidsapp/ there must not be imported (python -P)."""
    shadow = tmp_path / "bidsapp"
    shadow.mkdir()
    (shadow / "__init__.py").write_text("import sys\nprint('SHADOWED')\nsys.exit(99)\n")
    (shadow / "brainlife.py").write_text("")
    (tmp_path / "config.json").write_text(json.dumps({"t2w": "missing.nii.gz", "_inputs": []}))
    env = {**os.environ, "CORDLESION_PYTHON": sys.executable}
    env.pop("PYTHONPATH", None)
    proc = subprocess.run([str(ROOT / "main")], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert "SHADOWED" not in proc.stdout + proc.stderr
    # the real app answered: a bad input is a data error (65), explained in product.json
    assert proc.returncode == 65, proc.stderr[-2000:]
    product = json.loads((tmp_path / "product.json").read_text())
    assert "missing.nii.gz" in json.dumps(product)


@pytest.mark.parametrize(("nvidia_smi", "force", "gpu"), [(0, None, True), (1, None, False), (1, "1", True),
                                                          (0, "0", False)])
def test_main_gives_the_image_the_gpu_where_there_is_one(tmp_path, nvidia_smi, force, gpu):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "singularity").write_text('#!/bin/bash\nprintf "%s\\n" "$@" > args.txt\n')
    (fake / "nvidia-smi").write_text(f"#!/bin/bash\nexit {nvidia_smi}\n")
    for tool in ("singularity", "nvidia-smi"):
        (fake / tool).chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("CORDLESION_PYTHON", "CORDLESION_NV")}
    env["PATH"] = f"{fake}:{env['PATH']}"
    if force is not None:
        env["CORDLESION_NV"] = force
    proc = subprocess.run([str(ROOT / "main")], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "args.txt").read_text().split() == [
        "exec", "-e", *(["--nv"] if gpu else []), f"docker://cordlesion/cordlesion:{VERSION}", "python", "-P",
        "-m", "bidsapp.brainlife", "config.json"]
