"""``python -m bidsapp.models list | install TASK... [--release R] [--from URL|ZIP|FOLDER] |
verify [TASK...] | path TASK``.

Exit codes: 0 success, 1 a model error (download, layout, verification), 2 bad arguments.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ..errors import CordlesionError
from .install import install
from .lookup import installed_root, locate, reinstall_hint
from .registry import MODELS_DIR_ENV, default_models_dir, load_manifest, search_dirs
from .verify import check_folder

log = logging.getLogger("bidsapp.models")


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--models-dir", type=Path, default=None,
                        help=f"models folder (default: ${MODELS_DIR_ENV}, else the per-user data folder when "
                             f"writable, else <sys.prefix>/share/cordlesion/models)")
    common.add_argument("-v", "--verbose", action="store_true", help="debug messages")
    p = argparse.ArgumentParser(prog="python -m bidsapp.models", description="Install, verify and locate the "
                                "official Spinal Cord Toolbox lesion models.")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("list", parents=[common], help="tasks, release, status (installed, missing, CHANGED since "
                   "install, selected: a selectable release chosen with --release, other-rel: a release the "
                   "manifest does not list), size; then the selectable releases")
    ins = sub.add_parser("install", parents=[common], help="download, check and install releases")
    ins.add_argument("tasks", nargs="+", metavar="TASK",
                     help="task, SCT alias or release name (e.g. lesion_ms)")
    ins.add_argument("--from", dest="origin", action="append", metavar="URL|ZIP|FOLDER",
                     help="install from this URL, local zip or folder instead of the official URL; repeat "
                          "once per archive for releases split per fold (only with one TASK)")
    ins.add_argument("--release", default=None, metavar="R",
                     help="install this selectable release instead of the default one (see `list`; only with "
                          "one TASK); it replaces the installed release of that model")
    ver = sub.add_parser("verify", parents=[common], help="re-hash installed files against source.json")
    ver.add_argument("tasks", nargs="*", metavar="TASK", help="default: every installed release")
    pth = sub.add_parser("path", parents=[common], help="print the model folder (or .onnx file) of a task")
    pth.add_argument("task", metavar="TASK")
    pth.add_argument("--demo", action="store_true", help="the embedded demo model instead")
    return p


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _cmd_list(args: argparse.Namespace) -> int:
    m = load_manifest()
    print(f"models folder(s) searched: {', '.join(str(d) for d in search_dirs(args.models_dir))}")
    print(f"{'task':<18} {'release':<10} {'status':<10} {'size':>10}  aliases / path")
    for model in m.models.values():
        root = installed_root(model, args.models_dir)
        status, size, release, where = "missing", "-", model.release, ""
        if root is not None:
            try:
                src = check_folder(root).source
                size = _human(sum(f["size"] for f in src["files"].values()))
                release = src.get("release", release)
                # a selectable release chosen with --release, or one the manifest does not list
                status = ("installed" if release == model.release else
                          "selected" if release in m.releases.get(model.name, {}) else "other-rel")
            except CordlesionError:
                status = "CHANGED"
            where = str(root)
        for task in model.tasks:
            print(f"{task.name:<18} {release:<10} {status:<10} {size:>10}  "
                  f"{', '.join(task.aliases) or '-'}{'  ' + where if where else ''}")
    for name, releases in m.releases.items():
        for spec in releases.values():
            if not spec.default:
                print(f"selectable: {name} --release {spec.release}: {spec.description} ({spec.status})")
    return 0


def _cmd_install(args: argparse.Namespace) -> int:
    if (args.origin or args.release) and len(args.tasks) > 1:
        print("--from and --release apply to one TASK at a time", file=sys.stderr)
        return 2
    m = load_manifest()
    names = list(dict.fromkeys(m.model_for(t, args.release).name for t in args.tasks))  # validate all first
    print(f"installing into {default_models_dir(args.models_dir)}", file=sys.stderr)
    for name in names:
        done = install(name, models_dir=args.models_dir, origin=args.origin, release=args.release)
        print(f"{done.model} {done.release}: {done.files} files, {_human(done.bytes)} -> {done.path}")
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    m = load_manifest()
    models = [m.model_for(t) for t in args.tasks] if args.tasks else list(m.models.values())
    failed = 0
    checked = 0
    for model in dict.fromkeys(models):
        root = installed_root(model, args.models_dir)
        if root is None:
            if args.tasks:
                print(f"{model.name}: not installed", file=sys.stderr)
                failed += 1
            continue
        checked += 1
        try:
            res = check_folder(root, full=True, reinstall_hint=reinstall_hint(model, args.models_dir))
            print(f"{model.name}: OK ({len(res.sha256)} files re-hashed) {root}")
        except CordlesionError as exc:
            print(f"{model.name}: FAILED: {exc}", file=sys.stderr)
            failed += 1
    if not checked and not failed:
        print("no installed models found", file=sys.stderr)
    return 1 if failed else 0


def _cmd_path(args: argparse.Namespace) -> int:
    print(locate(args.task, models_dir=args.models_dir, demo=args.demo).path)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s",
                        stream=sys.stderr)
    commands = {"list": _cmd_list, "install": _cmd_install, "verify": _cmd_verify, "path": _cmd_path}
    try:
        return commands[args.command](args)
    except CordlesionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: nothing was changed in the models folder", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
