"""Run independent jobs (bench cells, scene fits) one after another or as Ray tasks.

`run_tasks(tasks, ray_address=None)` runs each Task's function in this process, in order. With
`ray_address` it runs them as Ray tasks instead:

- "local" starts a Ray instance on this machine (no cluster needed; `num_cpus` = the machine's cores
  unless `local_cpus` says otherwise) and shuts it down at the end;
- any other value ("auto", "ray://host:10001", "host:6379") connects to that cluster. Every node must
  see the repository at the same path (it is put on the workers' PYTHONPATH) and the output folders
  (a shared file system), because tasks read and write the same files as the sequential path.

Each task declares its resources (CPUs, and a GPU where the job's settings ask for CUDA); Ray places
it where they are free; a task marked `gpu_if_any` (train.device=auto) asks for one GPU only where the
cluster has GPUs. A task function returns a record dict with "status" "done" or "failed" and
never raises for a failure of the job itself; a failed record, or a task whose worker died, is
retried once (`retries`), then reported, and the others go on. The sequential path does not retry
(a deterministic failure would only fail twice). Progress: one line per finished task with the
overall ETA: sequentially, wall time so far / tasks finished x tasks left; on Ray, the tasks left
scheduled onto the parallel slots (cluster CPUs / CPUs per task) at the mean duration of the finished
ones, the running ones counted with the time they have run (`schedule_eta`).

Ray is used, not written here: its scheduler, resource accounting and cluster client are what a
batch of fits on many machines needs; this module only maps our jobs onto it.
"""
from __future__ import annotations

import os
import time
import traceback
from dataclasses import dataclass, replace
from typing import Callable, Iterator

from app import ROOT

LOCAL = "local"


@dataclass
class Task:
    key: str                                # unique name (cell id, scene name)
    fn: Callable[..., dict]                 # a module-level function (Ray pickles it by reference)
    args: tuple = ()
    cpus: float = 1.0
    gpus: float = 0.0
    gpu_if_any: bool = False                # ask for one GPU where the cluster has GPUs (train.device=auto)


def _call(fn, *args) -> dict:
    try:
        return fn(*args)
    except Exception as exc:  # noqa: BLE001 - the record says what failed; the batch goes on
        return {"status": "failed", "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}


def format_eta(seconds: float) -> str:
    """'1 h 02 min', '3 min 05 s', '42 s'."""
    s = int(round(max(seconds, 0.0)))
    if s >= 3600:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    if s >= 60:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s} s"


def eta_seconds(elapsed_s: float, finished: int, total: int) -> float | None:
    """Time left at the rate so far: elapsed / finished x (total - finished); None before the first finishes."""
    if finished <= 0:
        return None
    return elapsed_s / finished * (total - finished)


def schedule_eta(mean_s: float, running_elapsed_s: list[float], queued: int, slots: int) -> float:
    """Time until the last task ends when every task takes mean_s: the running ones (each on its own slot,
    running_elapsed_s [R] seconds in) end at max(mean_s - elapsed, 0); the `queued` ones then take the slot
    that frees first, one after another, on `slots` slots (>= R)."""
    assert slots >= 1 and len(running_elapsed_s) <= slots, (slots, running_elapsed_s)
    free = sorted([max(mean_s - e, 0.0) for e in running_elapsed_s] + [0.0] * (slots - len(running_elapsed_s)))
    for _ in range(queued):
        free[0] += mean_s
        free.sort()
    return max(free) if (queued or running_elapsed_s) else 0.0


def default_describe(task: Task, rec: dict) -> str:
    took = rec.get("wall_seconds")
    what = "done" if rec.get("status") == "done" else "FAILED"
    return what + (f" in {float(took):.0f} s" if took is not None else "") + (
        f": {rec.get('error')}" if what == "FAILED" else "")


def progress_line(k: int, n: int, task: Task, text: str, elapsed_s: float, eta_s: float | None = None) -> str:
    """'[2/5] room__ours: done in 40 s (elapsed 1 min 20 s; about 2 min 00 s left)'. eta_s: the time left
    (default: eta_seconds, the sequential rate)."""
    eta = eta_seconds(elapsed_s, k, n) if eta_s is None else eta_s
    tail = "" if k == n or eta is None else f"; about {format_eta(eta)} left"
    return f"[{k}/{n}] {task.key}: {text} (elapsed {format_eta(elapsed_s)}{tail})"


def run_tasks(tasks: list[Task], ray_address: str | None = None, *, retries: int = 1, local_cpus: int | None = None,
              log: Callable[[str], None] = print, describe: Callable[[Task, dict], str] = default_describe
              ) -> Iterator[tuple[Task, dict]]:
    """Yield (task, record) as each task finishes (module docstring); `describe` words a record for the
    progress line."""
    keys = [t.key for t in tasks]
    assert len(set(keys)) == len(keys), f"task keys must be unique, got {keys}"
    t0 = time.perf_counter()
    if ray_address is None:
        for k, t in enumerate(tasks, 1):
            rec = _call(t.fn, *t.args)
            log(progress_line(k, len(tasks), t, describe(t, rec), time.perf_counter() - t0))
            yield t, rec
        return
    yield from _run_ray(tasks, ray_address, retries, local_cpus, log, describe, t0)


def _run_ray(tasks, address, retries, local_cpus, log, describe, t0):
    try:
        import ray
    except ImportError as exc:       # pragma: no cover - ray is a pinned dependency
        raise RuntimeError("--ray needs the 'ray' package (pip install ray)") from exc
    if not tasks:
        return
    env = {"env_vars": {"PYTHONPATH": str(ROOT) + (os.pathsep + os.environ["PYTHONPATH"]
                                                   if os.environ.get("PYTHONPATH") else "")}}
    started_here = not ray.is_initialized()
    if started_here:
        if address == LOCAL:
            ray.init(num_cpus=local_cpus or os.cpu_count(), include_dashboard=False, logging_level="WARNING",
                     object_store_memory=100 * 1024 ** 2, runtime_env=env)
        else:
            ray.init(address=address, logging_level="WARNING", runtime_env=env)
    cpus = ray.cluster_resources().get("CPU", 0)
    gpus = ray.cluster_resources().get("GPU", 0)
    tasks = [replace(t, gpus=max(t.gpus, 1.0)) if t.gpu_if_any and gpus > 0 else t for t in tasks]
    too_big = [t.key for t in tasks if t.cpus > cpus or t.gpus > gpus]
    if too_big:
        if started_here:
            ray.shutdown()
        raise RuntimeError(f"Ray cluster has {cpus:g} CPU(s) and {gpus:g} GPU(s); task(s) {', '.join(too_big[:3])} "
                           f"ask for more (e.g. {tasks[0].cpus:g} CPU, {tasks[0].gpus:g} GPU): lower train.threads "
                           "or use train.device=cpu")
    log(f"ray: {len(tasks)} task(s) on {address} ({cpus:g} CPU, {gpus:g} GPU)")
    remote = ray.remote(_call)
    tries: dict[str, int] = {}
    pending: dict = {}
    # for the ETA: tasks start in submission order as slots free up (Ray's queue for equal resources)
    slots = max(1, int(cpus // max(max(t.cpus for t in tasks), 1e-9)))
    queue: list[str] = []
    started: dict[str, float] = {}
    durations: list[float] = []

    def submit(t: Task) -> None:
        tries[t.key] = tries.get(t.key, 0) + 1
        ref = remote.options(num_cpus=t.cpus, num_gpus=t.gpus, max_retries=0).remote(t.fn, *t.args)
        pending[ref] = t
        queue.append(t.key)
        start_queued(time.perf_counter())

    def start_queued(now: float) -> None:
        while queue and len(started) < slots:
            started[queue.pop(0)] = now

    try:
        for t in tasks:
            submit(t)
        finished = 0
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            ref = done[0]
            t = pending.pop(ref)
            now = time.perf_counter()
            began = started.pop(t.key, None)
            if began is None and t.key in queue:     # Ray ran it before our model of its queue did
                queue.remove(t.key)
            start_queued(now)
            try:
                rec = ray.get(ref)
            except Exception as exc:  # noqa: BLE001 - a worker that died (killed, out of memory)
                rec = {"status": "failed", "error": f"Ray task failed: {type(exc).__name__}: {str(exc)[:500]}"}
            if rec.get("status") != "done" and tries[t.key] <= retries:
                log(f"{t.key}: failed ({rec.get('error')}); retrying once")
                submit(t)
                continue
            finished += 1
            if began is not None:
                durations.append(now - began)
            eta = (schedule_eta(sum(durations) / len(durations), [now - s for s in started.values()], len(queue), slots)
                   if durations else None)
            log(progress_line(finished, len(tasks), t, describe(t, rec), now - t0, eta))
            yield t, rec
    finally:
        for ref in pending:
            ray.cancel(ref, force=True)
        if started_here:
            ray.shutdown()
