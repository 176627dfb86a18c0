"""Sweeps: one config, a grid of overrides, one run directory per grid point.

    energy-attn sweep configs/default.yaml --over model.attention.energy=softmax,linear,sigmoid \\
        --over train.seed=0,1,2 --set train.steps=200 --out runs/sweep_energy [--processes 2]
    energy-attn compare runs/sweep_energy          # table, curves, report.html

    points = plan("configs/default.yaml", [parse_over("train.seed=0,1")], out="runs/s")
    run_sweep(points, processes=1)                 # or from Python

The grid is the cartesian product of the --over lists, each point a list of dotted
overrides applied after --set. Every point's config is loaded and validated before any
run starts, so a typo fails in a second, not after the first run. Run directories are
named from the grid values (`energy-softmax__seed-0`), so the same sweep always maps to the
same folders: re-running a sweep skips finished runs (their `done.json` marker, written
after train() returns) and resumes unfinished ones from their checkpoints (the trainer's
auto-resume). `sweep.json` in the sweep folder records the grid and each run's status.

One run at a time runs in this process; `--processes N` runs N at a time, each in a
`python -m train.workflows.sweep RUN_DIR` subprocess that logs to RUN_DIR/train.log.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from train.checkpoints import run_lock

POINT_FILE, DONE_FILE, MANIFEST = "sweep_point.json", "done.json", "sweep.json"
EVALS_PER_RUN = 5          # the sweep's default: evaluations per run (unless train.eval_every is given)


@dataclass
class Point:
    name: str                   # folder name, from the grid values
    overrides: list[str]        # this point's grid values, "key=value"
    run_dir: Path
    status: str = "pending"     # pending | done | failed | skipped
    result: dict = field(default_factory=dict)


# =========================================================================== the grid


def split_values(text: str) -> list[str]:
    """'a,b,[1, 2],{x: 1, y: 2}' -> ['a', 'b', '[1, 2]', '{x: 1, y: 2}']: commas inside
    brackets or quotes belong to the value (YAML lists and mappings)."""
    out, depth, quote, cur = [], 0, None, ""
    for ch in text:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
            continue
        cur += ch
    out.append(cur.strip())
    return out


def resolve_key(key: str) -> str:
    """The canonical dotted key; a unique suffix such as `attention.energy` stands for
    `model.attention.energy`. Unknown keys come back unchanged (loading names the fix)."""
    from train.config import all_keys
    keys = all_keys()
    if key in keys:
        return key
    matches = [k for k in keys if k.endswith("." + key)]
    return matches[0] if len(matches) == 1 else key


def parse_over(text: str) -> tuple[str, list[str]]:
    """'model.attention.energy=softmax,linear' -> ('model.attention.energy', ['softmax', 'linear'])."""
    key, sep, values = text.partition("=")
    vals = [v for v in split_values(values)] if sep else []
    if not key.strip() or not vals or any(v == "" for v in vals):
        raise ValueError(f"--over {text!r} is not KEY=V1,V2,...; write e.g. "
                         "--over model.attention.energy=softmax,sigmoid")
    return resolve_key(key.strip()), vals


def point_names(keys: Sequence[str], combos: Sequence[Sequence[str]]) -> list[str]:
    """Stable, filesystem-safe folder names: `energy-softmax__seed-0` (train.config.run_name);
    names that would collide get a short hash."""
    from train.config import run_name
    names = [run_name(keys, combo) or "run" for combo in combos]
    for i, name in enumerate(names):
        if names.count(name) > 1:
            raw = "\n".join(f"{k}={v}" for k, v in zip(keys, combos[i]))
            names[i] = f"{name[:100]}__{hashlib.blake2b(raw.encode(), digest_size=3).hexdigest()}"
    return names


def plan(config: str | None, over: Sequence[tuple[str, list[str]]], sets: Sequence[str] = (), *,
         out: str | Path | None = None) -> list[Point]:
    """The grid points of a sweep, every one's config loaded and validated first.
    Raises one ValueError naming every problem (deduplicated over points)."""
    from train.config import load_config
    keys = [k for k, _ in over]
    dup = sorted({k for k in keys if keys.count(k) > 1})
    if dup:
        raise ValueError(f"--over {dup[0]} is given twice; list all its values in one --over")
    if "train.run_dir" in keys or any(s.split("=", 1)[0].strip() == "train.run_dir" for s in sets):
        raise ValueError("train.run_dir is set by the sweep (one folder per grid point under --out); "
                         "remove it from --over/--set")
    out = Path(out) if out is not None else Path("runs") / f"sweep_{Path(config).stem if config else 'default'}"
    combos = list(itertools.product(*[vals for _, vals in over]))
    names = point_names(keys, combos)
    points, errors = [], []
    user_keys = set(keys) | {s.split("=", 1)[0].strip() for s in sets}
    for name, combo in zip(names, combos):
        overrides = [f"{k}={v}" for k, v in zip(keys, combo)]
        p = Point(name, overrides, out / name)
        try:
            cfg = load_config(config, [*sets, *overrides, f"train.run_dir={p.run_dir}"])
            if "train.eval_every" not in user_keys and cfg.train.eval_every * EVALS_PER_RUN > cfg.train.steps:
                # A sweep is for comparing curves: evaluate several times per run, not once at the end.
                p.overrides.append(f"train.eval_every={max(1, cfg.train.steps // EVALS_PER_RUN)}")
        except (ValueError, FileNotFoundError) as e:
            msg = str(e).removeprefix("invalid config: ")
            errors.append(msg if len(combos) == 1 else f"{msg} [at {', '.join(overrides)}]")
        points.append(p)
    if errors:
        first = {}                          # the same mistake at many points: say it once
        for e in errors:
            first.setdefault(e.split(" [at ")[0], e)
        lines = list(first.values())
        raise ValueError(lines[0] if len(lines) == 1 else
                         f"{len(lines)} problems in the sweep:\n  - " + "\n  - ".join(lines))
    return points


# =========================================================================== running


def run_point(run_dir: str | Path, *, log=print, own_process: bool = False) -> dict:
    """Train the point whose `sweep_point.json` is in `run_dir`; write `done.json` after
    train() returns and return its contents (the RunResult, and peak memory when the run
    had a process of its own: in a reused process the peak includes what earlier runs
    left behind, so it would grow with run order)."""
    from dataclasses import asdict

    from train.config import load_config
    from train.loop.trainer import train
    run_dir = Path(run_dir)
    spec = json.loads((run_dir / POINT_FILE).read_text())
    cfg = load_config(spec["config"], spec["overrides"])
    result = asdict(train(cfg, log=log))
    return write_done(run_dir, result, own_process=own_process)


def write_done(run_dir: str | Path, result: dict, *, own_process: bool) -> dict:
    """done.json: the RunResult, when it finished, and (own_process) the peak memory."""
    result = dict(result, finished=time.strftime("%Y-%m-%d %H:%M:%S"))
    if own_process:
        result.update(_peak_memory())
    (Path(run_dir) / DONE_FILE).write_text(json.dumps(result, indent=1) + "\n")
    return result


def _peak_memory() -> dict:
    from energy_attn.bench import peak_rss_bytes
    rss = peak_rss_bytes()
    out = {} if rss is None else {"peak_rss_mb": round(rss / 2**20, 1)}
    try:
        import jax
        stats = jax.devices()[0].memory_stats() or {}
        if "peak_bytes_in_use" in stats:
            out["peak_device_mb"] = round(stats["peak_bytes_in_use"] / 2**20, 1)
    except Exception:  # noqa: BLE001 -- CPU backends have no memory stats
        pass
    return out


def _write_manifest(out: Path, config, over, sets, points: list[Point]) -> None:
    data = {"config": str(config) if config else None, "over": {k: v for k, v in over},
            "set": list(sets),
            "runs": [{"name": p.name, "run_dir": str(p.run_dir), "overrides": p.overrides,
                      "status": p.status, "result": p.result} for p in points]}
    tmp = out / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(out / MANIFEST)


def _check_same_sweep(out: Path, config, sets) -> None:
    path = out / MANIFEST
    if not path.is_file():
        return
    try:
        old = json.loads(path.read_text())
    except ValueError:
        return
    same_config = old.get("config") == (str(config) if config else None)
    if not same_config or list(old.get("set", [])) != list(sets):
        raise ValueError(f"{out} holds a sweep with a different config or --set "
                         f"(config {old.get('config')}, --set {' '.join(old.get('set', [])) or '-'}); "
                         "pass another --out, or repeat those to continue it")


def run_sweep(points: list[Point], *, config: str | None = None, over=(), sets: Sequence[str] = (),
              processes: int = 1, log=print, train_log=print) -> list[Point]:
    """Run every point not finished yet; return the points with status and result.
    A failed run is reported and the sweep goes on (exit status is the caller's business)."""
    if not points:
        return points
    out = points[0].run_dir.parent
    _check_same_sweep(out, config, sets)
    out.mkdir(parents=True, exist_ok=True)
    for p in points:
        p.run_dir.mkdir(parents=True, exist_ok=True)
        (p.run_dir / POINT_FILE).write_text(json.dumps(
            {"config": str(Path(config).resolve()) if config else None,
             "overrides": [*sets, *p.overrides, f"train.run_dir={p.run_dir}"]}, indent=1) + "\n")
    n, t0 = len(points), time.perf_counter()
    todo = []
    for i, p in enumerate(points, 1):
        done = p.run_dir / DONE_FILE
        if done.is_file():
            p.status, p.result = "skipped", _read_json(done)
            log(f"[{i}/{n}] {p.name}: finished earlier{_summary(p.result)}")
        else:
            todo.append((i, p))
    _write_manifest(out, config, over, sets, points)

    def finish(i, p, ok, result_or_error, started):
        p.status = "done" if ok else "failed"
        p.result = result_or_error if ok else {"error": result_or_error}
        took = f", {time.perf_counter() - started:.0f} s"
        log(f"[{i}/{n}] {p.name}: " + (f"done{_summary(p.result)}{took}" if ok
                                       else f"FAILED{took}: {result_or_error}"))
        _write_manifest(out, config, over, sets, points)

    if processes <= 1:
        for i, p in todo:
            if (busy := run_lock.holder(p.run_dir)) is not None:
                finish(i, p, False, f"{p.run_dir} is being written by {run_lock.describe(busy)}",
                       time.perf_counter())
                continue
            log(f"[{i}/{n}] {p.name}: {'resuming' if _has_checkpoint(p.run_dir) else 'starting'} "
                f"({', '.join(p.overrides) or 'no overrides'})")
            started = time.perf_counter()
            try:
                finish(i, p, True, run_point(p.run_dir, log=train_log), started)
            except Exception as e:  # noqa: BLE001 -- one bad run must not stop the sweep
                finish(i, p, False, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                       started)
    else:
        running: dict = {}
        queue = list(todo)
        while queue or running:
            while queue and len(running) < processes:
                i, p = queue.pop(0)
                if (busy := run_lock.holder(p.run_dir)) is not None:
                    finish(i, p, False, f"{p.run_dir} is being written by {run_lock.describe(busy)}",
                           time.perf_counter())
                    continue
                logf = open(p.run_dir / "train.log", "a")
                proc = subprocess.Popen([sys.executable, "-m", "train.workflows.sweep", str(p.run_dir),
                                         str(os.getpid())], stdout=logf, stderr=subprocess.STDOUT)
                running[proc] = (i, p, logf, time.perf_counter())
                log(f"[{i}/{n}] {p.name}: {'resuming' if _has_checkpoint(p.run_dir) else 'starting'} "
                    f"in process {proc.pid} (log: {p.run_dir / 'train.log'})")
            time.sleep(0.2)
            for proc in [q for q in running if q.poll() is not None]:
                i, p, logf, started = running.pop(proc)
                logf.close()
                done = p.run_dir / DONE_FILE
                if proc.returncode == 0 and done.is_file():
                    finish(i, p, True, _read_json(done), started)
                else:
                    finish(i, p, False, f"exit code {proc.returncode}: "
                           f"{_last_line(p.run_dir / 'train.log')}", started)
    failed = sum(p.status == "failed" for p in points)
    log(f"sweep {out}: {n - failed}/{n} runs finished"
        + (f", {failed} failed" if failed else "") + f" in {time.perf_counter() - t0:.0f} s; "
        f"compare them with: energy-attn compare {out}")
    return points


def die_with_parent(parent_pid: int) -> None:
    """In a sweep's child: the kernel sends it SIGTERM when the sweep process dies, however
    it dies (kill -9 included), so no trainer outlives its sweep (Linux). Set here rather
    than between fork and exec: the parent runs JAX threads, and forking them is unsafe.
    A parent that died before this ran is noticed by the parent-pid check."""
    try:
        import ctypes
        import signal
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent_pid:
        sys.exit("the sweep that started this run has exited")


def _has_checkpoint(run_dir: Path) -> bool:
    ck = run_dir / "checkpoints"
    return ck.is_dir() and any(ck.iterdir())


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _summary(result: dict) -> str:
    v = result.get("val_loss")
    return f" (val loss {v:.4f})" if isinstance(v, (int, float)) else ""


def _last_line(path: Path) -> str:
    try:
        lines = [l for l in path.read_text(errors="replace").splitlines() if l.strip()]
    except OSError:
        return "(no log)"
    return lines[-1][:300] if lines else "(empty log)"


if __name__ == "__main__":     # the subprocess entry of `--processes N`: RUN_DIR PARENT_PID
    if len(sys.argv) > 2:
        die_with_parent(int(sys.argv[2]))
    try:
        run_point(sys.argv[1], own_process=True)
    except Exception as e:  # noqa: BLE001 -- one line for the parent's report
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
