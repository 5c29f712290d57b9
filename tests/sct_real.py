"""The real SCT 7.3 as the oracle: ``../shared/peers/sct`` installed once per machine, run as a user runs it.

``make test-sct`` runs the tests marked ``sct_oracle`` (``make test`` leaves them out: minutes). The peer
folder is ``$CORDLESION_SCT_PEER``, else ``<repo>/../shared/peers/sct`` (a git worktree: the main checkout's);
SCT is installed into ``$SCT_ORACLE_ROOT`` (default ``/tmp/sct-oracle``; the peer's ``install.sh`` is
idempotent, ~3 min the first time). Where the peer is absent (a user's machine) the tests skip, saying how
to get SCT 7.3 instead; under CI or ``make test-sct`` they fail (``tests/components.py``).

    def test_something(sct, tmp_path):
        zip_path = model_zip(folder, tmp_path / "model.zip")
        ref = sct.deepseg("lesion_ms", zip_path, save(img, tmp_path / "in.nii.gz"), tmp_path / "out.nii.gz")
        sct.run("sct_analyze_lesion", "-m", mask, "-s", cord, "-ofolder", tmp_path / "an")
"""
from __future__ import annotations

import io
import os
import subprocess
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import nibabel as nib
import pytest

from tests.components import beside_the_clone, missing

__all__ = ["ASKED_ENV", "Sct", "install", "model_zip", "peer_folder", "save", "sct"]

ASKED_ENV = "CORDLESION_TEST_SCT"
REPO = Path(__file__).resolve().parents[1]
HOW_TO_GET = ("get SCT 7.3 itself: git clone --branch 7.3 "
              "https://github.com/spinalcordtoolbox/spinalcordtoolbox, then its install_sct; or point "
              "CORDLESION_SCT_PEER at a folder with install.sh and run_sct.sh")
#: what SCT imports and runs from a release folder whose trainer nnunetv2 does not know (the real lesion_ms
#: release ships one): the release's trainer only changes training (epochs, loss), never the network
TRAINER_CLASS_PY = ("def get_trainer_class():\n"
                    "    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer\n"
                    "    return nnUNetTrainer\n")


def peer_folder() -> Path | None:
    """The SCT 7.3 peer folder (``install.sh``, ``run_sct.sh``), or None where there is none.
    ``$CORDLESION_SCT_PEER``, where set, is the only place looked at (an empty folder hides the peer)."""
    chosen = os.environ.get("CORDLESION_SCT_PEER")
    candidates = [chosen] if chosen else [beside_the_clone("peers", "sct")]
    for c in candidates:
        if c and (Path(c) / "run_sct.sh").is_file() and (Path(c) / "install.sh").is_file():
            return Path(c)
    return None


@dataclass(frozen=True)
class Sct:
    """An installed SCT 7.3: ``root`` (its venv and source), ``peer`` (the scripts that run it)."""

    root: Path
    peer: Path

    def _env(self) -> dict[str, str]:
        return {**os.environ, "SCT_ORACLE_ROOT": str(self.root)}

    def tool(self, name: str) -> Path:
        """The path of an SCT command (``sct_analyze_lesion``, ``sct_crop_image``, ...)."""
        return self.root / "venv" / "bin" / name

    def run(self, tool: str, *args: object, timeout: float = 900) -> subprocess.CompletedProcess:
        """Run SCT's ``tool`` with ``args``; an AssertionError with SCT's own last words if it fails."""
        return _checked([str(self.tool(tool)), *map(str, args)], self._env(), timeout)

    def deepseg(self, task: str, zip_path: Path, image: Path, out: Path, *options: object,
                timeout: float = 1800) -> nib.Nifti1Image:
        """``sct_deepseg TASK -i IMAGE -o OUT [options]`` on the model ``zip_path`` (``run_sct.sh``);
        returns the image SCT wrote at ``out``, loaded into memory."""
        _checked(["bash", str(self.peer / "run_sct.sh"), task, str(zip_path), str(image), str(out),
                  *map(str, options)], self._env(), timeout)
        return _loaded(out)


def _checked(cmd: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        tail = (proc.stdout[-1500:] + "\n" + proc.stderr[-3000:]).strip()
        raise AssertionError(f"SCT 7.3 failed (exit {proc.returncode}): {' '.join(cmd)}\n{tail}")
    return proc


def _loaded(path: Path) -> nib.Nifti1Image:
    img = nib.load(str(path))
    return nib.Nifti1Image(img.get_fdata(dtype="float32") if img.get_data_dtype().kind == "f"
                           else img.dataobj[...], img.affine, img.header)


@lru_cache(maxsize=1)
def install() -> Sct:
    """SCT 7.3 installed from the peer folder (once per machine); skips or fails (``components.missing``)
    where there is no peer or the install does not work."""
    peer = peer_folder()
    if peer is None:
        missing("the real SCT 7.3 (../shared/peers/sct)", f"peer folder not found; {HOW_TO_GET}",
                asked_env=ASKED_ENV)
    root = Path(os.environ.get("SCT_ORACLE_ROOT", "/tmp/sct-oracle"))
    env = {**os.environ, "SCT_ORACLE_ROOT": str(root)}
    proc = subprocess.run(["bash", str(peer / "install.sh")], env=env, capture_output=True, text=True,
                          timeout=1800)
    if proc.returncode != 0 or not (root / "venv" / "bin" / "sct_deepseg").exists():
        missing("the real SCT 7.3", f"{peer / 'install.sh'} failed (exit {proc.returncode}): "
                f"{proc.stderr.strip()[-600:]}", asked_env=ASKED_ENV)
    return Sct(root=root, peer=peer)


@pytest.fixture(scope="session")
def sct() -> Sct:
    """The installed SCT 7.3 (see :func:`install`)."""
    return install()


def model_zip(folder: Path, dest: Path, *, folds: list[str] | None = None) -> Path:
    """``folder`` (an nnU-Net trainer folder) as SCT 7.3 installs a model: one zip, one top folder whose
    name starts with ``nnUNetTrainer`` holding ``dataset.json``, ``plans.json`` and ``fold_*/`` (``folds``:
    only those fold folders, e.g. ``["fold_0"]``); a ``trainer_class.py`` (:data:`TRAINER_CLASS_PY`) is
    added where the folder's trainer is not nnunetv2's own. Returns ``dest``."""
    top = folder.name
    if not top.startswith("nnUNetTrainer"):
        raise ValueError(f"{folder}: SCT needs a top folder named nnUNetTrainer*")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(folder.rglob("*")):
            rel = p.relative_to(folder).as_posix()
            fold = rel.split("/")[0] if rel.startswith("fold_") else None
            if p.is_file() and (fold is None or folds is None or fold in folds):
                zf.write(p, f"{top}/{rel}")
        if top.split("__")[0] != "nnUNetTrainer" and not (folder / "trainer_class.py").exists():
            zf.writestr(f"{top}/trainer_class.py", TRAINER_CLASS_PY)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(buf.getvalue())
    return dest


def save(img: nib.Nifti1Image, path: Path) -> Path:
    """``img`` written at ``path`` (SCT reads files); returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))
    return path
