"""Running jobs: up-to-date checks, a pool of worker processes, progress, per-image failure isolation.

Each job (one task on one image) runs in a worker; any exception is caught there, its traceback goes to
the image's log file (``logs/sub-*/...log``) and the run goes on. One predictor per model is built once
per worker (the pipelines cache them), so a worker reuses its models across images.
"""
from __future__ import annotations

import dataclasses
import functools
import io
import logging
import os
import sys
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from . import __version__, derivatives, memory, outcome, pipelines, pool, tasks
from .corrections import Candidates
from .errors import CordlesionError, InputImageError, failure_reason
from .plan import Job
from .settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkItem:
    """A job with what the worker needs: its located models and the up-to-date state to record."""

    job: Job
    models: Mapping[str, Any]
    state: Mapping[str, Any] | None
    up_to_date: bool = False
    budget: memory.MemoryBudget | None = None
    """The memory one worker may use (set by ``run_jobs``: the run's budget over the workers at once)."""
    found: Candidates = outcome.NO_CANDIDATES
    """The corrected files of the image in ``--corrections`` (hashed: its figures' up-to-date state)."""
    refresh: bool = False
    """The model's outputs are up to date but not the figures (a corrected file is new or changed): only
    the figures are redone, on the written masks."""


@dataclass(frozen=True)
class JobResult:
    """Outcome of one job."""

    name: str
    source: str
    task: str
    status: str  # "done", "refreshed" (figures only), "failed" or "skipped"
    seconds: float = 0.0
    message: str = ""
    log: str = ""


@dataclass
class RunSummary:
    """All job outcomes of a run."""

    results: list[JobResult] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.results)

    @property
    def failed(self) -> list[JobResult]:
        return [r for r in self.results if r.status == "failed"]

    @property
    def exit_code(self) -> int:
        """0 when every job succeeded or was up to date, 1 when any failed."""
        return 1 if self.failed else 0


# --------------------------------------------------------------------------------------- preparation
def locate_models(task_names: Sequence[str], settings: Settings) -> dict[str, Any]:
    """``model -> LocatedModel`` for every model the tasks need, each located once (raises NoModelsError /
    ModelError: the run stops before any image)."""
    options, located = run_options(settings), {}
    for task in task_names:
        located.update(pipelines.locate(task, options, located))
    return located


def model_identity(located: Any) -> dict[str, Any]:
    """What identifies a model in provenance and up-to-date checks: release and weight checksums."""
    return {"release": located.release, "demo": bool(located.demo), "sha256": dict(located.sha256)}


def job_state(job: Job, settings: Settings, models: Mapping[str, Any]) -> dict[str, Any]:
    """What a job's outputs depend on: input checksum, task, models, parameters (recorded in the sidecar)."""
    return {"InputSha256": derivatives.sha256_file(job.source.path), "Task": job.task,
            "Models": {name: model_identity(m) for name, m in models.items()},
            "Parameters": settings.parameters(job.task)}


def prepare(jobs: Sequence[Job], settings: Settings, located: Mapping[str, Any]) -> list[WorkItem]:
    """Attach models to each job and mark the up-to-date ones.

    Inputs are hashed here only when a previous mask sidecar exists (otherwise the job runs anyway and
    its worker hashes the input), so a first run over a big dataset does not read every image twice.
    """
    items, options = [], run_options(settings)
    for job in jobs:
        models = {name: located[name] for name in pipelines.models_for(job.task, options).names}
        state = None
        if not settings.overwrite and (settings.output_dir / job.outputs["mask_json"]).is_file():
            try:
                state = job_state(job, settings, models)
            except OSError:  # broken git-annex link, unreadable: the worker reports it with a hint
                state = None
        done = (state is not None
                and derivatives.is_up_to_date(settings.output_dir, job.outputs["mask_json"], state)
                and _has_qc_record(settings.output_dir, job))
        found = outcome.candidates(job, settings)
        figures = done and outcome.figures_fresh(settings.output_dir, job, found)
        items.append(WorkItem(job, models, state, up_to_date=figures, found=found,
                              refresh=done and not figures))
    return items


# ------------------------------------------------------------------------------------------- workers
def init_worker(omp_nthreads: int) -> None:
    """Per-process setup: torch threads (the CLI owns global thread settings, workers inherit them)."""
    import torch

    torch.set_num_threads(max(1, omp_nthreads))
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set in this process (in-process runs)
        pass


class _Capture(logging.Handler):
    """Collects this job's log lines for its per-image log file."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.buffer = io.StringIO()
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.buffer.write(self.format(record) + "\n")


def check_source(path: Path, relpath: str) -> None:
    """Fail early, with a fix, on a DataLad/git-annex file whose content is not here."""
    if path.is_symlink() and not path.exists():
        target = os.readlink(path)
        hint = "run `datalad get` on it" if ".git/annex" in target else "fix or fetch its target"
        raise InputImageError(f"{path}: broken symbolic link to {target} (content not present: {hint}, "
                              f"e.g. `datalad get {relpath}` in the dataset)")


def run_one(item: WorkItem, settings: Settings) -> JobResult:
    """Run one job; never raises for a bad image: the failure is returned and logged to the image's log."""
    job = item.job
    capture = _Capture()
    root = logging.getLogger()
    root.addHandler(capture)
    previous_level = root.level
    root.setLevel(min(previous_level, logging.INFO) if previous_level else logging.INFO)
    start = time.perf_counter()
    status, message = ("refreshed" if item.refresh else "done"), ""
    try:
        log.info("%s: task %s%s", job.source.path, job.task, " (figures only)" if item.refresh else "")
        if item.refresh:
            check_source(job.source.path, job.source.relpath)
            outcome.refresh(job, settings, item.models, item.found)
        else:
            _process(item, settings, start)
    except Exception as exc:  # isolation: one bad image must not stop the others
        status = "failed"
        # a sentence, never a foreign exception's text: the console gets the one FAILED line of the
        # progress report; the traceback goes to this image's log only
        message = failure_reason(exc, job.source.path)
        capture.handle(log.makeRecord(log.name, logging.ERROR, __file__, 0, "%s failed: %s\n%s",
                                      (job.name, message, traceback.format_exc()), None))
        outcome.write_qc(settings, job, item.models, time.perf_counter() - start, error=message)
    finally:
        root.removeHandler(capture)
        root.setLevel(previous_level)
        _write_log(settings, job, capture.buffer.getvalue())
    return JobResult(job.name, job.source.relpath, job.task, status, time.perf_counter() - start,
                     message, job.log)


def run_options(settings: Settings) -> pipelines.RunOptions:
    """The pipeline options of every job of the run (the tasks' own rules apply beside them)."""
    return pipelines.RunOptions(device=settings.device, tta=settings.tta, folds=settings.folds,
                                crop=settings.crop, ensemble=settings.ensemble,
                                models_dir=settings.models_dir, demo=settings.demo,
                                precision=settings.precision, backend=settings.backend, cord=settings.cord)


def _process(item: WorkItem, settings: Settings, start: float) -> None:
    from .imaging import load_image

    job = item.job
    spec = tasks.get(job.task)
    check_source(job.source.path, job.source.relpath)
    _guard(item, settings)
    img = load_image(job.source.path)
    state = item.state if item.state is not None else job_state(job, settings, item.models)
    result = pipelines.segment(img, task=spec, models=item.models, options=run_options(settings))
    model = outcome.model_masks(job, settings, result.mask, result.cord)
    figures = outcome.measure_job(img, job, settings, model, item.found)  # the corrected masks', or these
    provenance = _provenance(result, figures, state, time.perf_counter() - start)
    if model.table is not None:  # what the written mask is (its drop); the table: before the mask sidecar
        provenance.update(model.table.provenance)
    provenance.update(outcome.figure_provenance(figures, item.found))
    outcome.write_table(settings, job, figures)
    images = {"mask": model.mask, "probseg": result.probseg, "cord": model.cord}
    derivatives.write_segmentation(settings.output_dir, job.outputs, images, derivatives.SidecarInfo(
        source_uri=f"bids:raw:{job.source.relpath}", description=spec.description, mask_type=spec.mask_type,
        provenance=provenance))
    outcome.write_qc(settings, job, item.models, time.perf_counter() - start, shown=(img, figures))
    log.info("%s: %d lesion(s), %.1f mm3%s", job.name, figures.stats.count, figures.stats.total_mm3,
             " (corrected mask)" if figures.manual else "")


def _guard(item: WorkItem, settings: Settings) -> None:
    """Before any voxel is read: a plausible header, a grid on every model, memory within the budget."""
    path = item.job.source.path
    _, estimate = pipelines.locate_and_guard(path, item.job.task, run_options(settings),
                                             models=item.models, budget=item.budget,
                                             allow_unusual=settings.allow_unusual_geometry)
    log.info("%s: memory estimate %s (peak at the %s model's grid %s)", path,
             memory.format_bytes(estimate.total_bytes), estimate.model, "x".join(map(str, estimate.grid)))


def _provenance(result: pipelines.SegmentationResult, figures: outcome.Figures, state: Mapping[str, Any],
                seconds: float) -> dict[str, Any]:
    """The sidecar's ``Provenance``: run-level facts, the pipeline's own (``Pipeline``) and what the
    outputs depend on (``State``: input, task, models, parameters); each fact once."""
    stats = figures.stats
    return {
        "Software": derivatives.APP_NAME,
        "Version": __version__,
        "RunTimeSeconds": round(seconds, 3),
        "LesionCount": int(stats.count),
        "LesionVolumeMm3": round(float(stats.total_mm3), 3),
        "Date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "Pipeline": result.provenance.to_dict(),
        "State": dict(state),
    }


def _has_qc_record(output_dir: Path, job: Job) -> bool:
    """The QC record is written after the mask sidecar: a run killed in between left the image without
    one, so it is not up to date (its re-run rewrites identical outputs and adds the record)."""
    return (Path(output_dir) / job.names.qc_record).is_file()


def _write_log(settings: Settings, job: Job, text: str) -> None:
    """The image's log and, beside it, the run's settings."""
    try:
        derivatives.atomic_write_bytes(settings.output_dir / job.names.log, text.encode())
        derivatives.atomic_write_bytes(settings.output_dir / job.names.settings, settings.dumps().encode())
    except CordlesionError as exc:  # the image's outcome matters more than its log
        log.warning("%s", exc)


# ---------------------------------------------------------------------------------------------- pool
def run_jobs(items: Sequence[WorkItem], settings: Settings) -> RunSummary:
    """Run every item that is not up to date; progress on a terminal, log lines otherwise.

    In worker processes when ``--nprocs`` > 1 or ``--image-timeout`` is set (a worker can be killed),
    else in this process. On SIGTERM / SIGINT (``pool.stop_on_signals``) the :class:`pool.Interrupted`
    raised here carries the summary of what was done."""
    summary = RunSummary([JobResult(i.job.name, i.job.source.relpath, i.job.task, "skipped",
                                    message="up to date", log=i.job.log) for i in items if i.up_to_date])
    todo = [i for i in items if not i.up_to_date]
    if summary.results:
        log.info("%d job(s) up to date, skipped (use --overwrite to recompute)", len(summary.results))
    if not todo:
        return summary
    workers = min(settings.nprocs, len(todo))
    budget = memory.memory_budget(settings.mem, workers)
    if budget is not None:
        log.info("memory: %s", budget.describe())
    todo = [dataclasses.replace(i, budget=budget) for i in todo]
    report = _progress(len(todo))
    try:
        if workers <= 1 and not settings.image_timeout:
            init_worker(settings.omp_nthreads)
            for item in todo:
                summary.results.append(report(run_one(item, settings)))
        else:
            _run_pool(todo, settings, lambda r: summary.results.append(report(r)))
    except pool.Interrupted as exc:
        exc.summary, exc.not_done = summary, len(items) - len(summary.results)
        raise
    finally:
        report(None)
    return summary


def _run_pool(todo: Sequence[WorkItem], settings: Settings, collect: Callable[[JobResult], None]) -> None:
    options = pool.PoolOptions(workers=min(settings.nprocs, len(todo)), timeout_s=settings.image_timeout,
                               initializer=init_worker, initargs=(settings.omp_nthreads,))
    pool.run_pool(functools.partial(run_one, settings=settings), todo, options,
                  on_done=lambda item, result: collect(result),
                  on_lost=lambda item, why: collect(_lost(item, why, settings)))


def _lost(item: WorkItem, why: str, settings: Settings) -> JobResult:
    """An image whose worker died or ran out of time: a sentence, its log and QC record."""
    path = item.job.source.path
    if why == "timeout":
        limit = f"{settings.image_timeout:g}"
        message = (f"{path}: stopped after {limit} s (--image-timeout {limit}): its worker was killed, the "
                   f"other images went on")
    else:
        message = (f"{path}: the worker process {why} while segmenting it (killed by the system: out of "
                   f"memory?); the other images went on; refuse such images up front with --mem, or use "
                   f"fewer --nprocs")
    _write_log(settings, item.job, f"FAILED {message}\n")
    outcome.write_qc(settings, item.job, item.models, 0.0, error=message)
    return JobResult(item.job.name, item.job.source.relpath, item.job.task, "failed", message=message,
                     log=item.job.log)


def _progress(total: int) -> Callable[[JobResult | None], JobResult | None]:
    """A reporter: tqdm bar with ETA on a terminal, one log line per job otherwise. ``None`` closes it."""
    done = 0
    bar = None
    if sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=total, unit="image", dynamic_ncols=True, file=sys.stderr)

    def report(result: JobResult | None) -> JobResult | None:
        nonlocal done
        if result is None:
            if bar is not None:
                bar.close()
            return None
        done += 1
        if bar is not None:
            bar.set_postfix_str(f"{result.name} {result.status}", refresh=False)
            bar.update(1)
            if result.status == "failed":
                bar.write(f"FAILED {result.message} (log: {result.log})", file=sys.stderr)
        elif result.status == "failed":
            log.error("[%d/%d] FAILED %s: %s (log: %s)", done, total, result.name, result.message, result.log)
        else:
            log.info("[%d/%d] %s %s in %.1f s", done, total, result.name, result.status, result.seconds)
        return result

    return report
