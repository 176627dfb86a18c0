"""Checkpoints of a run directory, with Orbax.

    <run_dir>/checkpoints/<step>/state   the array pytree: model state, optimizer state, RNG keys
                                 /meta    JSON: step, data-iterator position, tokenizer vocab, ...
                                 /info    JSON: {"step", "val_loss"} (read by the keep policy)
                                 /manifest JSON: every array's path, shape, dtype and checksum,
                                           and the checksum of meta

The pattern is the Flax NNX + Orbax one: save `nnx.state(...)` with `StandardSave`,
restore into an *abstract* target that carries the current shardings with
`StandardRestore`, then `nnx.update` the live objects.

    ckpt = Checkpointer(run_dir, keep=3, keep_best=True)
    restored = ckpt.restore_latest({"model": nnx.state(model), "optimizer": nnx.state(opt)})
    if restored is not None:
        step, state, meta = restored
        nnx.update(model, state["model"]); nnx.update(opt, state["optimizer"])
    ...
    ckpt.save(step, state={...}, meta={...}, val_loss=val_loss)    # async: returns at once
    ...
    ckpt.close()        # waits for the last save: never exit with a half-written checkpoint

Keep policy: the `keep` newest checkpoints, plus (keep_best) the one with the lowest
val_loss, which is never deleted however old. Orbax can say "N latest OR best"
(`AnyPreservationPolicy([LatestN, BestN])`), but its metrics live in a `metrics` item
that `CheckpointManager.__init__` parses for every step: one truncated file there and
the manager cannot even be built, so no fallback is possible. The policy below is
handed to Orbax as its `preservation_policy` (Orbax still does the deleting, after the
new save is finalised) but reads val_loss from our own `info` item and treats damage
there as "no val_loss".

Verified arrays: Orbax notices damage to its own format, not a flipped bit inside an
array (those restore silently as other numbers). So every save also writes a manifest of
checksums (BLAKE2b of each array's bytes, and of `meta`), computed from the arrays being
saved, and every restore recomputes them from what it read. A mismatch is damage like any
other: the checkpoint is skipped with a one-line warning naming the array. The manifest's
shapes are also checked against the restore target *before* Orbax reads anything, so a
checkpoint that does not fit the current model (the config changed) fails at once with
one line naming the first differing array and both shapes (`CheckpointMismatch`), instead
of Orbax's pages of errors for every array. Checkpoints written before manifests existed
restore unverified, with a warning.

Damaged checkpoints: `restore_latest` tries the newest first and falls back to older
ones with a warning naming the step and the reason. A checkpoint that failed while an
older one restored into the same target is damaged, not mismatched; it is moved aside
to `<step>.unreadable` at this Checkpointer's next save (never by a process that only
reads), so the resumed run can save that step number again. Half-written saves of a
killed process (`<step>.orbax-checkpoint-tmp*`) are never listed as steps, and are
deleted at the next save.
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import json
import math
import re
import shutil
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

_TMP_GLOB = "*.orbax-checkpoint-tmp*"
_TMP_STEP = re.compile(r"^(\d+)\.orbax-checkpoint-tmp")


class CheckpointError(RuntimeError):
    """Checkpoints exist but none could be restored, or a save would overwrite one."""


class CheckpointMismatch(CheckpointError):
    """The checkpoint's arrays do not fit the restore target (the model or optimizer changed)."""


class ChecksumMismatch(ValueError):
    """An array read back from a checkpoint is not the array that was saved."""


class DiskFull(CheckpointError):
    """A save ran out of disk space (the message says which checkpoint survives)."""


def is_disk_full(e: BaseException | None) -> bool:
    """Orbax and TensorStore wrap the OSError, or keep only its text."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if (isinstance(e, OSError) and e.errno == errno.ENOSPC) or "No space left on device" in str(e):
            return True
        e = e.__cause__ or e.__context__
    return False


class CheckpointWarning(UserWarning):
    """A checkpoint was skipped (damaged, unfinished) or moved aside."""


def _warn(msg: str, depth: int = 0) -> None:
    """Warn at the line that called the public method (`depth` helper frames below it)."""
    warnings.warn(msg, CheckpointWarning, stacklevel=3 + depth)


def _reason(e: BaseException) -> str:
    """One short line: TensorStore errors run to pages."""
    first = (str(e).strip().splitlines() or [""])[0]
    if len(first) > 240:
        first = first[:240] + "..."
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


# ------------------------------------------------------------------ keep policy


@dataclasses.dataclass
class _KeepLatestAndBest:
    """Orbax PreservationPolicy: the `keep` newest steps, plus the lowest val_loss."""

    keep: int | None
    keep_best: bool
    val_loss: Callable[[int], float | None]

    def should_preserve(self, checkpoints: Sequence[Any], *, context: Any) -> list[bool]:
        steps = [c.step for c in checkpoints]
        kept = set(sorted(steps)[-self.keep:]) if self.keep else set(steps)
        if self.keep_best and (best := _best(steps, self.val_loss)) is not None:
            kept.add(best)
        return [s in kept for s in steps]


def _best(steps: Sequence[int], val_loss: Callable[[int], float | None]) -> int | None:
    scored = [(v, -s) for s in steps if (v := val_loss(s)) is not None]
    return -min(scored)[1] if scored else None     # ties: the later step


# ------------------------------------------------------------------ abstract targets


def _default_sharding():
    return jax.sharding.SingleDeviceSharding(jax.local_devices()[0])


def _abstract_leaf(x):
    """ShapeDtypeStruct with a sharding, so Orbax restores a jax.Array placed where the
    live one is (not a host numpy array, and not the sharding it was saved with)."""
    if isinstance(x, jax.ShapeDtypeStruct):
        if x.sharding is None:
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=_default_sharding())
        return x
    if isinstance(x, jax.Array):
        # Keeps typed PRNG key dtypes (key<fry>): Orbax re-wraps the saved key data.
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
    arr = np.asarray(x)
    return jax.ShapeDtypeStruct(arr.shape, arr.dtype, sharding=_default_sharding())


def abstract_like(state):
    """The restore target for `state`: its structure, shapes, dtypes and shardings.
    `state` may hold live arrays (nnx.state(model)) or ShapeDtypeStructs
    (nnx.eval_shape(...)); leaves without a sharding go to the first local device."""
    return jax.tree.map(_abstract_leaf, state)


# ------------------------------------------------------------------ checksums


MANIFEST_FORMAT = 1


def path_str(path) -> str:
    """model/blocks/0/attn/q/kernel (nnx Variables flatten to a trailing /value: dropped)."""
    return jax.tree_util.keystr(tuple(path), simple=True, separator="/").removesuffix("/value")


def _host_bytes(x) -> np.ndarray:
    """The array's value on this host: typed PRNG keys as their raw bits; a replicated
    global array from its local copy (every process then hashes the same bytes)."""
    if isinstance(x, jax.Array):
        if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            x = jax.random.key_data(x)
        if not x.is_fully_addressable:
            if x.is_fully_replicated:
                x = x.addressable_data(0)
            else:
                from jax.experimental import multihost_utils
                x = multihost_utils.process_allgather(x, tiled=True)
    return np.ascontiguousarray(np.asarray(x))


def _digest(arr: np.ndarray) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{arr.dtype.str}{arr.shape}".encode())
    h.update(arr.tobytes())
    return h.hexdigest()


def _meta_digest(meta: dict) -> str:
    return hashlib.blake2b(json.dumps(meta, sort_keys=True).encode(), digest_size=16).hexdigest()


def array_manifest(state: Any, meta: dict | None = None) -> dict:
    """{"format", "arrays": {path: {"shape", "dtype", "blake2b"}}, "meta": digest}."""
    arrays = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
        host = _host_bytes(leaf)
        arrays[path_str(path)] = {"shape": list(np.shape(leaf)), "dtype": str(leaf.dtype),
                                   "blake2b": _digest(host)}
    out = {"format": MANIFEST_FORMAT, "arrays": arrays}
    if meta is not None:
        out["meta"] = _meta_digest(meta)
    return out


def check_fits(manifest: dict, target: Any, *, partial: bool, where: str) -> None:
    """Raise CheckpointMismatch naming the first array whose presence or shape differs
    between the checkpoint (its manifest) and the restore target."""
    saved = manifest["arrays"]
    wanted = {path_str(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(target)[0]}
    hint = "the config changed since this checkpoint was written"
    for path, leaf in wanted.items():
        if path not in saved:
            raise CheckpointMismatch(f"{where} does not fit the current model: it has no array "
                                     f"{path} ({hint})")
        if list(leaf.shape) != list(saved[path]["shape"]):
            raise CheckpointMismatch(
                f"{where} does not fit the current model: {path} has shape "
                f"{tuple(saved[path]['shape'])} there and {tuple(leaf.shape)} here ({hint})")
        if str(leaf.dtype) != saved[path]["dtype"]:
            raise CheckpointMismatch(
                f"{where} does not fit the current model: {path} has dtype "
                f"{saved[path]['dtype']} there and {leaf.dtype} here ({hint})")
    if not partial:
        extra = [p for p in saved if p not in wanted]
        if extra:
            raise CheckpointMismatch(f"{where} does not fit the current model: it has an array "
                                     f"{extra[0]} that the current model lacks ({hint})")


def verify(manifest: dict, state: Any, meta: dict | None, *, where: str) -> None:
    """Raise ChecksumMismatch if a restored array (or meta) differs from what was saved."""
    saved = manifest["arrays"]
    for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
        name = path_str(path)
        if _digest(_host_bytes(leaf)) != saved[name]["blake2b"]:
            raise ChecksumMismatch(f"array {name} of {where} does not match its checksum")
    if meta is not None and "meta" in manifest and _meta_digest(meta) != manifest["meta"]:
        raise ChecksumMismatch(f"the meta (step, data position) of {where} does not match its checksum")


# ------------------------------------------------------------------ the checkpointer


class Checkpointer:
    """Orbax CheckpointManager for `<run_dir>/checkpoints` (see the module docstring)."""

    def __init__(self, run_dir: str | Path, *, keep: int | None = 3, keep_best: bool = True,
                 async_save: bool = True):
        if keep is not None and keep < 1:
            raise ValueError(f"keep must be >= 1 (or None to keep every checkpoint), got {keep}")
        self.directory = Path(run_dir).absolute() / "checkpoints"   # Orbax wants absolute paths
        self.keep, self.keep_best = keep, keep_best
        self._val_losses: dict[int, float | None] = {}
        # Steps a restore found damaged; moved aside at the next save.
        self._unreadable: set[int] = set()
        self._tmp_cleaned = False
        self._closed = False
        self._saving: int | None = None
        options = ocp.CheckpointManagerOptions(
            preservation_policy=_KeepLatestAndBest(keep, keep_best, self._val_loss),
            enable_async_checkpointing=async_save,
            # Do not create or clean anything just by opening: `energy-attn eval` may open
            # the directory of a run that is still training (and saving) in another process.
            create=False,
            cleanup_tmp_directories=False,
        )
        self._mngr = ocp.CheckpointManager(self.directory, options=options)

    # ---------------------------------------------------------------- queries

    def all_steps(self) -> list[int]:
        """Finalised checkpoints, oldest first (without ones found unreadable)."""
        return sorted(s for s in self._mngr.all_steps() if s not in self._unreadable)

    def latest_step(self) -> int | None:
        steps = self.all_steps()
        return steps[-1] if steps else None

    def best_step(self) -> int | None:
        """The step with the lowest saved val_loss; None if no checkpoint has one."""
        return _best(self.all_steps(), self._val_loss)

    def val_loss(self, step: int) -> float | None:
        return self._val_loss(step)

    def _val_loss(self, step: int) -> float | None:
        if step not in self._val_losses:
            try:
                info = ocp.JsonCheckpointHandler().restore(self._step_dir(step) / "info")
                v = info.get("val_loss")
                self._val_losses[step] = float(v) if v is not None and math.isfinite(v) else None
            except Exception:  # missing or damaged info: no val_loss, eligible for deletion
                self._val_losses[step] = None
        return self._val_losses[step]

    def _step_dir(self, step: int) -> Path:
        return self.directory / str(step)   # default Orbax step names: no prefix, no padding

    # ---------------------------------------------------------------- save

    def save(self, step: int, *, state: Any, meta: dict, val_loss: float | None = None) -> None:
        """Start an async save of `state` (pytree of arrays: nnx.State, optax states, PRNG
        keys) and `meta` (JSON-able dict) as checkpoint `step`. Returns once the arrays are
        copied off the device; `wait()` or `close()` for the write to finish."""
        step = int(step)
        try:   # fail here, not later in Orbax's background thread
            json.dumps(meta)
        except (TypeError, ValueError) as e:
            raise TypeError(f"checkpoint meta must be JSON-serialisable: {e}") from None
        val = None
        if val_loss is not None and math.isfinite(float(val_loss)):
            val = float(val_loss)
        self.wait()                  # the previous save finalises before we touch the directory
        self.directory.mkdir(parents=True, exist_ok=True)
        if not self._tmp_cleaned:
            self._remove_unfinished()
        if self._unreadable:
            self._set_aside_unreadable()
        if step in self._mngr.all_steps():
            raise CheckpointError(
                f"{self.directory} already has a checkpoint at step {step}; resume from it "
                "(checkpoint.resume) or train into a fresh run directory")
        self._val_losses[step] = val
        manifest = array_manifest(state, meta)     # from the arrays in memory, before the write
        # force=True: the caller decides when to save, not Orbax's save-interval policy.
        self._saving = step
        with self._disk_full_says_what_is_kept():
            self._mngr.save(step, force=True, args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                meta=ocp.args.JsonSave(meta),
                info=ocp.args.JsonSave({"step": step, "val_loss": val}),
                manifest=ocp.args.JsonSave(manifest),
            ))

    @contextlib.contextmanager
    def _disk_full_says_what_is_kept(self):
        """A full disk surfaces in whichever call meets Orbax's failed write (this save, or
        the wait for an async one): turn it into one sentence naming what survived."""
        try:
            yield
        except Exception as e:
            if not is_disk_full(e):
                raise
            try:
                self._mngr.reload()
                kept = [s for s in self._mngr.all_steps() if s != self._saving]
            except Exception:  # noqa: BLE001 -- the message matters more than the listing
                kept = []
            last = f"the newest complete checkpoint, step {max(kept)}, is kept" if kept else \
                "no complete checkpoint exists yet"
            raise DiskFull(f"disk full while saving checkpoint step {self._saving} in "
                           f"{self.directory}; {last}. Free space and rerun to resume") from None

    def _remove_unfinished(self) -> None:
        """Half-written saves of a killed process: Orbax never lists them; delete them."""
        for p in self.directory.glob(_TMP_GLOB):
            shutil.rmtree(p, ignore_errors=True)
        self._tmp_cleaned = True

    def _set_aside_unreadable(self) -> None:
        for step in sorted(self._unreadable):
            src = self._step_dir(step)
            if not src.exists():
                continue
            dst, i = self.directory / f"{step}.unreadable", 1
            while dst.exists():
                dst, i = self.directory / f"{step}.unreadable.{i}", i + 1
            src.rename(dst)
            _warn(f"moved the unreadable checkpoint at step {step} aside to {dst}", depth=1)
        self._unreadable.clear()
        self._mngr.reload()

    def wait(self) -> None:
        """Block until pending async saves (and the deletions they trigger) are done."""
        if not self._closed:
            with self._disk_full_says_what_is_kept():
                self._mngr.wait_until_finished()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            with self._disk_full_says_what_is_kept():
                self._mngr.close()      # waits for the last save

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---------------------------------------------------------------- restore

    def restore(self, step: int, abstract_state: Any, *, partial: bool = False) -> tuple[Any, dict]:
        """(state, meta) of checkpoint `step`, restored into the structure, dtypes and
        shardings of `abstract_state` (live arrays or ShapeDtypeStructs). Raises on failure.

        partial=True restores only the top-level entries `abstract_state` names (e.g. just
        {"model": ...} for evaluation, leaving the optimizer state on disk)."""
        target = abstract_like(abstract_state)
        where = f"checkpoint step {step} in {self.directory}"
        manifest = self._manifest(step)
        if manifest is not None:
            check_fits(manifest, target, partial=partial, where=where)
        else:
            _warn(f"{where} has no checksums (written before energy-attn verified checkpoints); "
                  "restoring it unverified", depth=1)
        state, meta = self._read(step, target, partial=partial)
        if manifest is not None:
            verify(manifest, state, meta, where=where)
        return state, meta

    def _manifest(self, step: int) -> dict | None:
        path = self._step_dir(step) / "manifest"
        if not path.is_dir():
            return None
        manifest = ocp.JsonCheckpointHandler().restore(path)
        if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
            raise ValueError(f"unreadable checksum manifest in {path}")
        return manifest

    def _read(self, step: int, target: Any, *, partial: bool) -> tuple[Any, dict]:
        if not partial:
            r = self._mngr.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
            return r.state, r.meta
        # StandardRestore has no partial mode; PyTreeRestore(partial_restore=True) reads the
        # same files. Its own Checkpointer: a manager that already saved `state` with
        # StandardSave refuses PyTreeRestore args for that item.
        restore_args = ocp.checkpoint_utils.construct_restore_args(target)
        with ocp.Checkpointer(ocp.PyTreeCheckpointHandler()) as ckptr:
            state = ckptr.restore(self._step_dir(step) / "state", args=ocp.args.PyTreeRestore(
                target, restore_args=restore_args, partial_restore=True))
        meta = self._mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
        return state, meta

    def restore_latest(self, abstract_state: Any, *, which: str = "latest",
                       partial: bool = False) -> tuple[int, Any, dict] | None:
        """(step, state, meta) from the newest checkpoint that restores (which="best": the
        lowest val_loss first, then newest first). Damaged ones are skipped with a warning.

        None when there is no finished checkpoint. Raises CheckpointError when checkpoints
        exist but none restores: that is almost always a model/optimizer that no longer
        matches the run's config, and starting over silently would be worse."""
        if which not in ("latest", "best"):
            raise ValueError(f'which must be "latest" or "best", got {which!r}')
        self.wait()            # our own in-flight save is not "damaged"
        self._mngr.reload()    # see saves made by other processes (a run still training)
        self._warn_unfinished()
        steps = self.all_steps()
        order = steps[::-1]
        if which == "best" and (best := self.best_step()) is not None:
            order = [best] + [s for s in order if s != best]
        failed: list[tuple[int, BaseException]] = []
        for step in order:
            try:
                state, meta = self.restore(step, abstract_state, partial=partial)
            except CheckpointMismatch:
                raise              # the config changed: older checkpoints do not fit either
            except Exception as e:  # damage shows as ValueError, KeyError, OSError, ...
                failed.append((step, e))
                reason = str(e) if isinstance(e, ChecksumMismatch) else (
                    f"checkpoint step {step} in {self.directory} could not be restored ({_reason(e)})")
                _warn(f"{reason}; skipping it" + (", falling back to an older checkpoint"
                                                  if step != order[-1] else ""))
                continue
            # An older checkpoint fits the same target, so the failed ones are damaged.
            self._unreadable.update(s for s, _ in failed)
            return step, state, meta
        if failed:
            detail = "; ".join(f"step {s}: {_reason(e)}" for s, e in failed)
            raise CheckpointError(
                f"none of the {len(failed)} checkpoints in {self.directory} could be restored "
                f"into the current model/optimizer (did the config change?): {detail}"
            ) from failed[0][1]
        return None

    def _warn_unfinished(self) -> None:
        if not self.directory.is_dir():
            return
        latest = self.latest_step()
        for p in sorted(self.directory.glob(_TMP_GLOB)):
            m = _TMP_STEP.match(p.name)
            if m and (latest is None or int(m.group(1)) > latest):
                _warn(f"checkpoint step {m.group(1)} is unfinished (a save in progress, or "
                      f"killed mid-write); ignoring {p.name}", depth=1)
