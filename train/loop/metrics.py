"""Metrics of a run: metrics.jsonl (always), Weights & Biases (when it works), a progress bar.

(Named `metrics`, not `logging`: a `train/loop/logging.py` would shadow the standard library
for every module in this package that does `import logging`.)

    <run_dir>/metrics.jsonl     one JSON object a line: {"step", "split", <metrics>..., "time"}
    <run_dir>/config.yaml       the resolved config, when one is given
    <run_dir>/wandb_id.txt      the W&B run id: a resumed run continues the same W&B run
    <run_dir>/wandb_run.json    id, mode, project, url (online) or the offline run folder
    <run_dir>/wandb/            W&B's own files (offline runs: `wandb sync <folder>` later)

Logging never stops training: any W&B failure prints one warning line and logging
carries on with what still works (online -> offline -> disabled; the jsonl file always).
"""
from __future__ import annotations

import json
import math
import netrc
import os
import secrets
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit


WANDB_MODES = ("online", "offline", "disabled", "auto")


class LoggingWarning(UserWarning):
    """W&B (or another optional sink) failed and was turned down or off."""


def _warn(msg: str) -> None:
    warnings.warn(msg, LoggingWarning, stacklevel=3)


def _reason(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0][:200]}" if lines else type(e).__name__


def _scalar(v: Any) -> Any:
    """Python scalars for JSON/W&B (jax/numpy 0-d arrays and numpy scalars included)."""
    if hasattr(v, "item") and getattr(v, "size", 2) == 1:
        try:
            return v.item()
        except Exception:
            return v
    return v


def _plain(x: Any) -> Any:
    """Nested dicts/lists/scalars that yaml.safe_dump and JSON accept."""
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    x = _scalar(x)
    if x is None or isinstance(x, (bool, int, float, str)):
        return x
    return str(x)


# ------------------------------------------------------------------ W&B mode


def wandb_logged_in() -> bool:
    """Cheap check for W&B credentials (API key in the environment or in .netrc);
    nothing is imported and nothing touches the network."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    path = os.environ.get("NETRC")
    if path:
        candidates = [Path(path).expanduser()]
    else:
        candidates = [Path("~/.netrc").expanduser(), Path("~/_netrc").expanduser()]
    host = urlsplit(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).netloc
    for p in candidates:
        if p.is_file():
            try:
                creds = netrc.netrc(str(p)).authenticators(host)
            except (netrc.NetrcParseError, OSError):
                return False
            return bool(creds and creds[2])
    return False


def resolve_wandb_mode(mode: str) -> str:
    """"auto": WANDB_MODE if set, else online with credentials, else offline."""
    if mode not in WANDB_MODES:
        raise ValueError(f"wandb mode must be one of {', '.join(WANDB_MODES)}; got {mode!r}")
    if mode != "auto":
        return mode
    env = os.environ.get("WANDB_MODE", "").strip().lower()
    env = {"dryrun": "offline", "run": "online"}.get(env, env)
    if env in ("online", "offline", "disabled"):
        return env
    return "online" if wandb_logged_in() else "offline"


# ------------------------------------------------------------------ the logger


class MetricsLogger:
    """Append metrics to <run_dir>/metrics.jsonl and, if possible, to W&B.

    wandb_mode: "online" | "offline" | "disabled" | "auto" (see resolve_wandb_mode).
    After construction, `wandb_mode` is the mode actually in effect. With `background`,
    W&B starts in a thread (the trainer's start-up goes on meanwhile); `wandb_mode` and
    `run` are final once a row has been sent to W&B or the logger is closed."""

    def __init__(self, run_dir: str | Path, *, wandb_mode: str = "auto",
                 project: str = "energy-attn", config: dict | None = None,
                 run_name: str | None = None, background: bool = False):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / "metrics.jsonl"
        # Append, never truncate: a resumed run keeps its history.
        self._file = open(self.path, "a", encoding="utf-8")
        if self._file.tell() > 0 and not _ends_with_newline(self.path):
            self._file.write("\n")   # a killed writer left half a line; keep ours on its own line
            self._file.flush()
        self.run = None
        self.wandb_mode = "disabled"
        mode = resolve_wandb_mode(wandb_mode)     # a bad mode name is a config error: raise
        self._starter: threading.Thread | None = None
        self._waiting: list[dict] = []           # W&B rows logged before its start finished
        args = (mode, project, config, run_name)
        if background and mode != "disabled":
            # W&B's start (its import and service process, ~2-3 s) overlaps the caller's
            # own start-up; rows logged meanwhile wait in _waiting, in order.
            self._starter = threading.Thread(target=self._start_or_warn, args=args,
                                             name="wandb-start", daemon=True)
            self._starter.start()
        else:
            self._start_or_warn(*args)

    def _start_or_warn(self, mode, project, config, run_name) -> None:
        try:
            self._start_wandb(mode, project, config, run_name)
        except Exception as e:   # e.g. wandb_id.txt not writable
            self._finish_wandb()
            _warn(f"wandb setup failed ({_reason(e)}); wandb disabled, "
                  f"metrics go to {self.path} only")

    def _started(self, wait: bool) -> bool:
        """Whether W&B's start is over (then the rows that waited for it are sent)."""
        if self._starter is None:
            return True
        if self._starter.is_alive() and not wait:
            return False
        self._starter.join()
        self._starter = None
        waiting, self._waiting = self._waiting, []
        for row in waiting:
            self._wandb_log(row)
        return True

    # ---------------------------------------------------------------- wandb

    def _start_wandb(self, mode: str, project: str, config: dict | None,
                     run_name: str | None) -> None:
        if mode == "disabled":
            return
        try:
            import wandb
        except Exception as e:  # not installed / broken install
            _warn(f"wandb unavailable ({_reason(e)}); metrics go to {self.path} only")
            return
        run_id = self._wandb_id()
        tried = []
        for m in ([mode, "offline"] if mode == "online" else [mode]):
            run = None
            try:
                run = wandb.init(
                    dir=str(self.run_dir), mode=m, project=project, id=run_id,
                    name=run_name or self.run_dir.name, resume="allow",
                    allow_val_change=True,  # a resumed run may change e.g. train.steps
                    config=_plain(config) if config is not None else None,
                    reinit="create_new",    # our own Run object; no global run to clash with
                    # console="off": W&B does not wrap stdout (the progress bar owns it).
                    settings=wandb.Settings(console="off", silent=True))
                run.define_metric("step")
                run.define_metric("*", step_metric="step")   # resumed runs may repeat steps
            except Exception as e:
                tried.append(f"{m}: {_reason(e)}")
                if run is not None:
                    try:
                        run.finish()
                    except Exception:
                        pass
                continue
            self.run, self.wandb_mode = run, m
            break
        if self.run is None:
            _warn(f"wandb init failed ({'; '.join(tried)}); wandb disabled, "
                  f"metrics go to {self.path} only")
        elif tried:
            _warn(f"wandb init failed ({tried[0]}); logging offline to {self.run_dir / 'wandb'} "
                  f"instead (upload later with `wandb sync`)")
        self._record_run(project)

    def _wandb_id(self) -> str:
        path = self.run_dir / "wandb_id.txt"
        try:
            run_id = path.read_text().strip()
            if run_id:
                return run_id
        except OSError:
            pass
        run_id = secrets.token_hex(4)    # W&B ids: lowercase letters and digits
        path.write_text(run_id + "\n")
        return run_id

    def _record_run(self, project: str) -> None:
        if self.run is None:
            return
        info = {"id": self.run.id, "mode": self.wandb_mode, "project": project}
        try:
            if self.wandb_mode == "online":
                info["url"] = self.run.url
            elif self.wandb_mode == "offline":
                info["offline_dir"] = str(Path(self.run.dir).parent)   # what `wandb sync` takes
        except Exception:
            pass
        (self.run_dir / "wandb_run.json").write_text(json.dumps(info, indent=1) + "\n")
        where = info.get("url") or ""
        if "offline_dir" in info:
            where = f"in {info['offline_dir']} (upload later: wandb sync {info['offline_dir']})"
        print(f"wandb: {self.wandb_mode} run {self.run.id} {where}".rstrip(), file=sys.stderr)

    # ---------------------------------------------------------------- logging

    def log(self, step: int, metrics: dict, split: str = "train") -> None:
        row = {"step": int(step), "split": split}
        row.update((k, _scalar(v)) for k, v in metrics.items() if k not in row)
        row["time"] = round(time.time(), 3)
        # NaN/inf are written as NaN/Infinity: Python's json (and pandas) read them back.
        self._file.write(json.dumps(row, default=str) + "\n")
        self._file.flush()
        wandb_row = {"step": int(step), **{f"{split}/{k}": _scalar(v) for k, v in metrics.items()}}
        if not self._started(wait=False):
            self._waiting.append(wandb_row)
            return
        self._wandb_log(wandb_row)

    def _wandb_log(self, row: dict) -> None:
        if self.run is not None:
            try:
                self.run.log(row)
            except Exception as e:
                _warn(f"wandb log failed ({_reason(e)}); wandb disabled for this run")
                self._finish_wandb()

    def _finish_wandb(self) -> None:
        run, self.run = self.run, None
        if run is not None:
            try:
                run.finish()
            except Exception as e:
                _warn(f"wandb finish failed ({_reason(e)})")

    def close(self) -> None:
        self._started(wait=True)
        self._finish_wandb()
        if not self._file.closed:
            self._file.close()

    def __enter__(self) -> "MetricsLogger":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def read_metrics(run_dir: str | Path, split: str | None = None) -> list[dict]:
    """The rows of <run_dir>/metrics.jsonl (optionally one split), skipping any line a
    killed process left half-written. A resumed run may repeat steps; rows stay in
    file order, so the last row for a step is the one that led to the final state."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and (split is None or row.get("split") == split):
            rows.append(row)
    return rows


# ------------------------------------------------------------------ progress


class ProgressBar:
    """tqdm bar (step, loss, tokens/s, ETA) on a terminal; plain lines every `every`
    steps otherwise, so CI logs stay readable."""

    def __init__(self, total_steps: int, initial_step: int = 0, enabled: bool = True, *,
                 every: int | None = None, file: TextIO | None = None):
        self.total = int(total_steps)
        self.initial = self.step = int(initial_step)
        self.enabled = enabled
        self.file = file if file is not None else sys.stdout
        self.every = every or max(1, min(100, self.total // 20))
        self._t0 = time.perf_counter()
        self._bar = None
        if enabled and _isatty(self.file):
            from tqdm.auto import tqdm
            self._bar = tqdm(total=self.total, initial=self.initial, file=self.file,
                             unit="step", dynamic_ncols=True, smoothing=0.1)

    def update(self, step: int, loss: float, tokens_per_s: float) -> None:
        self.step = int(step)
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.set_postfix_str(f"loss {loss:.4f}, {tokens_per_s:,.0f} tok/s", refresh=False)
            self._bar.update(self.step - self._bar.n)
        elif self.step % self.every == 0 or self.step >= self.total:
            self._print_line(loss, tokens_per_s)

    def _print_line(self, loss: float, tokens_per_s: float) -> None:
        elapsed = time.perf_counter() - self._t0
        done = self.step - self.initial
        eta = elapsed / done * (self.total - self.step) if done > 0 else math.nan
        pct = 100.0 * self.step / self.total if self.total else 100.0
        self.file.write(f"step {self.step}/{self.total} ({pct:.0f}%) | loss {loss:.4f} | "
                        f"{tokens_per_s:,.0f} tok/s | elapsed {_hms(elapsed)} | ETA {_hms(eta)}\n")
        self.file.flush()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _isatty(f: TextIO) -> bool:
    try:
        return f.isatty()
    except (AttributeError, ValueError):
        return False


def _hms(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    s = int(round(seconds))
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"
