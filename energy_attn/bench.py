"""`energy-attn bench attention`: is attention-as-a-gradient fast enough?

Everything is measured in ONE process run, side by side, so the ratios mean
something even on a noisy laptop:

  a. machine matmul throughput, so "GFLOP/s" below has a yardstick;
  b. the causal softmax energy vs jax.nn.dot_product_attention (XLA), forward
     and forward+backward;
  c. every other registered energy, forward, relative to the softmax energy;
  d. a long sequence (T = 32768) forward+backward in a child process, so its peak
     RSS is its own; plain autodiff of the reference energy at a smaller T shows
     what the fast rule saves.

Targets are reported with PASS/FAIL, never asserted: a benchmark informs, it
does not gate. Python use:  `print(format_report(attention(seq=512)))`.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from typing import Callable

import jax
import jax.numpy as jnp

import energy_attn as ea
from energy_attn.timing import summary, take_turns, time_call

# Targets (reported, not asserted).
FWD_RATIO_TARGET = 0.6        # softmax energy / dot_product_attention, forward
FWD_BWD_RATIO_TARGET = 0.6    # same, forward + backward
ENERGY_RATIO_TARGET = 3.0     # any other energy / softmax energy, forward
LONG_RSS_TARGET_GIB = 1.5     # peak RSS of the T=32768 child

# FLOP convention, printed with the report. Forward: QKᵀ and PV, 2·T²·D flops each,
# halved by the causal mask. Backward: 5 such matmuls (dV, dP, dQ, dK + the
# recomputed/forward P) ≈ 2.5 × forward, so forward+backward = 3.5 × forward.
# Recomputation and softmax exponentials are not counted: "useful" flops only.
FWD_BWD_FLOP_FACTOR = 3.5
FLOP_CONVENTION = ("useful flops: forward = 4·B·H·T²·D / 2 (QKᵀ and PV, causal half); "
                   "forward+backward = 3.5 × forward (backward ≈ 2.5 × forward); "
                   "recomputation not counted")


def causal_flops(b, h, t, d):
    return 4 * b * h * t * t * d / 2


def _stderr(msg: str):
    print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------ timing


def measure(fn: Callable, *args, repeats: int) -> dict:
    """First call compiles (and runs once); then `repeats` timed calls."""
    compile_s = time_call(lambda: fn(*args))[0]
    times = take_turns({"fn": lambda: fn(*args)}, repeats)["fn"]
    return {**summary(times), "compile_s": compile_s}


def measure_pair(fn_a: Callable, fn_b: Callable, *args, repeats: int) -> tuple[dict, dict]:
    """Like `measure`, the two functions taking turns call by call, so that a change in
    machine load (other processes on a shared 2-core box) hits both alike."""
    compile_s = [time_call(lambda fn=fn: fn(*args))[0] for fn in (fn_a, fn_b)]
    times = take_turns({"a": lambda: fn_a(*args), "b": lambda: fn_b(*args)}, repeats)
    return tuple({**summary(ts), "compile_s": c} for ts, c in zip(times.values(), compile_s))


def _inputs(b, t, h, d, seed=0):
    # w is the upstream cotangent for forward+backward: loss = sum(out * w).
    # It is an argument, not a closure constant, so it is not baked into the HLO.
    keys = jax.random.split(jax.random.key(seed), 4)
    return tuple(jax.random.normal(key, (b, t, h, d), jnp.float32) for key in keys)


def _fwd_bwd(attn: Callable) -> Callable:
    loss = lambda q, k, v, w: jnp.sum(attn(q, k, v) * w)
    return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))


def _ours(energy, **params):
    return lambda q, k, v: ea.attend(energy, q, k, v, mask=ea.causal(), **params)


def _dpa(q, k, v):
    return jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="xla")


def _softmax_impl(q, k) -> str:
    """Which kernel impl="auto" picks for this shape (for the report only)."""
    try:
        from energy_attn.kernels import choose_implementation
        return choose_implementation("auto", q, k, ea.causal())
    except Exception:  # the core may change; the label is cosmetic
        return "auto"


def _short_error(e: BaseException, limit: int = 110) -> str:
    lines = str(e).strip().splitlines()
    msg = f"{type(e).__name__}: {lines[0] if lines else ''}"
    return msg if len(msg) <= limit else msg[:limit - 1] + "…"


# ------------------------------------------------------------------ child process (d)


def _run_child(spec: dict) -> dict:
    """Run `_child(spec)` in a fresh interpreter; return its JSON result (with peak RSS)."""
    cmd = [sys.executable, "-c", "from energy_attn.bench import _child; _child()", json.dumps(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode < 0:   # e.g. SIGKILL from the kernel's OOM killer
        return {"error": f"child killed by signal {-proc.returncode} (out of memory?)"}
    if proc.returncode != 0:
        last = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        return {"error": f"child failed: {(last or [f'exit code {proc.returncode}'])[-1][:110]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def peak_rss_bytes():
    """Peak RSS of this process since it exec'd.

    Not getrusage: on Linux ru_maxrss (RUSAGE_SELF in the child, or the parent's
    RUSAGE_CHILDREN / wait4) starts from the *parent's* peak at fork, so a child
    of a 1.3 GiB benchmark process reports >= 1.3 GiB however little it uses.
    /proc/self/status VmHWM is the high-water mark of the post-exec address space.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024          # kB
    except OSError:
        pass
    try:  # elsewhere: an upper bound (may include the parent's peak, see above)
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    except ImportError:
        return None


def _child():
    """Child entry point: one forward+backward measurement, result as JSON on stdout."""
    spec = json.loads(sys.argv[-1])
    t, d = spec["seq"], spec["head_dim"]
    q, k, v, w = _inputs(1, t, 1, d)
    result = {}
    try:
        if spec["energy"] is None:       # baseline: interpreter + jax + inputs + a trivial jit
            jax.block_until_ready(jax.jit(lambda *xs: sum(x.sum() for x in xs))(q, k, v, w))
        else:
            if spec["energy"] == "reference":
                from energy_attn.energies.softmax import softmax_reference
                energy = softmax_reference        # plain autodiff: T×T scores are materialised
            else:
                energy = spec["energy"]
                result["impl"] = _softmax_impl(q, k)
            result.update(measure(_fwd_bwd(_ours(energy)), q, k, v, w, repeats=spec["repeats"]))
    except Exception as e:
        result["error"] = _short_error(e)
    rss = peak_rss_bytes()
    result["peak_rss_gib"] = None if rss is None else rss / 2 ** 30
    print(json.dumps(result), flush=True)


# ------------------------------------------------------------------ the benchmark


def attention(*, batch=4, heads=8, seq=1024, head_dim=64, repeats=5, energies=None,
              long_seq=32768, ref_seq=4096, long_repeats=2, skip_long=False,
              log: Callable = _stderr) -> dict:
    """Run sections a-d; return every number as a JSON-able dict (see `format_report`).

    `energies`: names for section c (default: all registered). Softmax is always
    measured in b, since it is the baseline for c.
    """
    b, h, t, d = batch, heads, seq, head_dim
    others = [e for e in (energies or ea.available_energies()) if e != "softmax"]
    res = {
        "config": dict(batch=b, heads=h, seq=t, head_dim=d, repeats=repeats, dtype="float32",
                       mask="causal", long_seq=None if skip_long else long_seq,
                       ref_seq=None if skip_long else ref_seq, long_repeats=long_repeats),
        "environment": dict(jax=jax.__version__, backend=jax.default_backend(),
                            devices=[str(x) for x in jax.devices()], cpu_count=os.cpu_count(),
                            platform=platform.platform()),
        "flop_convention": FLOP_CONVENTION,
        "rows": [], "ratios": [],
    }
    rows, ratios = res["rows"], res["ratios"]

    def timed(section, name, fn, args, flops=None, note="", reps=repeats):
        log(f"  [{section}] {name}: compiling, then {reps} timed runs …")
        try:
            m = measure(fn, *args, repeats=reps)
        except Exception as e:  # one broken energy must not hide the others
            log(f"  [{section}] {name}: FAILED ({_short_error(e)})")
            rows.append(dict(section=section, name=name, error=_short_error(e)))
            return None
        m["gflops"] = None if flops is None else flops / m["min_s"] / 1e9
        log(f"  [{section}] {name}: {m['min_s'] * 1e3:.1f} ms (compile+first run {m['compile_s']:.1f} s)")
        rows.append(dict(section=section, name=name, note=note, **m))
        return m

    def ratio(name, num, den, target, op="<="):
        if num is None or den is None:
            ratios.append(dict(name=name, value=None, target=target, op=op, status="n/a"))
            return
        value = num["min_s"] / den["min_s"]
        ratios.append(dict(name=name, value=value, target=target, op=op,
                           status="PASS" if value <= target else "FAIL"))

    log(f"energy-attn bench attention: B={b} H={h} T={t} D={d} f32 causal, {repeats} repeats")

    # a. What the machine can do: one big matmul (2·n³ flops).
    n = 2048
    x = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    timed("a", f"matmul {n}x{n} @ {n}x{n} f32", jax.jit(jnp.matmul), (x, x), flops=2 * n ** 3)

    # b. The softmax energy (custom-derivative fast path) against XLA's own attention.
    q, k, v, w = _inputs(b, t, h, d)
    fwd_flops = causal_flops(b, h, t, d)
    impl = _softmax_impl(q, k)
    def timed_pair(name_a, fn_a, name_b, fn_b, args, flops, note_a, note_b):
        log(f"  [b] {name_a} vs {name_b}: compiling, then {repeats} alternating timed runs …")
        a, b_ = measure_pair(fn_a, fn_b, *args, repeats=repeats)
        for name, m, note in ((name_a, a, note_a), (name_b, b_, note_b)):
            m["gflops"] = flops / m["min_s"] / 1e9
            log(f"  [b] {name}: {m['min_s'] * 1e3:.1f} ms")
            rows.append(dict(section="b", name=name, note=note, **m))
        return a, b_

    ours_f, dpa_f = timed_pair("softmax energy  fwd", jax.jit(_ours("softmax")),
                               "dot_product_attention fwd", jax.jit(_dpa), (q, k, v), fwd_flops,
                               f"impl={impl}", "implementation=xla")
    ours_fb, dpa_fb = timed_pair("softmax energy  fwd+bwd", _fwd_bwd(_ours("softmax")),
                                 "dot_product_attention fwd+bwd", _fwd_bwd(_dpa), (q, k, v, w),
                                 FWD_BWD_FLOP_FACTOR * fwd_flops, f"impl={impl}", "implementation=xla")
    ratio("softmax energy / dpa, fwd", ours_f, dpa_f, FWD_RATIO_TARGET)
    ratio("softmax energy / dpa, fwd+bwd", ours_fb, dpa_fb, FWD_BWD_RATIO_TARGET)

    # c. Every other energy, forward only, at the same shape. No GFLOP/s: several
    # are O(T), so a T² flop count would flatter them.
    for name in others:
        m = timed("c", f"{name} fwd", jax.jit(_ours(name)), (q, k, v))
        if m is not None:
            ratio(f"{name} / softmax, fwd", m, ours_f, ENERGY_RATIO_TARGET)
        else:
            ratios.append(dict(name=f"{name} / softmax, fwd", value=None,
                               target=ENERGY_RATIO_TARGET, op="<=", status="error"))

    # d. Long sequence, each in its own interpreter so peak RSS is that run's alone.
    if not skip_long:
        long_flops = FWD_BWD_FLOP_FACTOR * causal_flops(1, 1, long_seq, d)
        ref_flops = FWD_BWD_FLOP_FACTOR * causal_flops(1, 1, ref_seq, d)
        runs = [
            ("child baseline (jax + inputs, T={})".format(long_seq),
             dict(energy=None, seq=long_seq), None),
            (f"softmax energy fwd+bwd T={long_seq}", dict(energy="softmax", seq=long_seq), long_flops),
            # Same small T both ways: what the custom rule saves over plain autodiff.
            (f"softmax energy fwd+bwd T={ref_seq}", dict(energy="softmax", seq=ref_seq), ref_flops),
            (f"reference autodiff fwd+bwd T={ref_seq}", dict(energy="reference", seq=ref_seq), ref_flops),
        ]
        long_row = None
        for name, spec, flops in runs:
            log(f"  [d] {name}: child process, compiling, then {long_repeats} timed runs …")
            r = _run_child(dict(spec, head_dim=d, repeats=long_repeats))
            row = dict(section="d", name=name, peak_rss_gib=r.get("peak_rss_gib"))
            if "error" in r:
                row["error"] = r["error"]
                log(f"  [d] {name}: FAILED ({r['error']})")
            else:
                if "min_s" in r:
                    row.update(min_s=r["min_s"], median_s=r["median_s"], compile_s=r["compile_s"],
                               gflops=flops / r["min_s"] / 1e9)
                row["note"] = f"impl={r['impl']}" if "impl" in r else ""
                log(f"  [d] {name}: peak RSS {_fmt(row['peak_rss_gib'], '.2f') or '?'} GiB")
            rows.append(row)
            if spec["energy"] == "softmax" and spec["seq"] == long_seq:
                long_row = row
        rss = None if long_row is None or "error" in long_row else long_row.get("peak_rss_gib")
        ratios.append(dict(name=f"peak RSS GiB, softmax fwd+bwd T={long_seq}", value=rss,
                           target=LONG_RSS_TARGET_GIB, op="<",
                           status="n/a" if rss is None else ("PASS" if rss < LONG_RSS_TARGET_GIB else "FAIL")))
    return res


# ------------------------------------------------------------------ report


def _fmt(x, spec):
    return "" if x is None else format(x, spec)


def text_table(header, body, left=(0,)):
    """Plain-text table; columns in `left` are left-aligned (text), the rest right (numbers)."""
    widths = [max(len(str(r[i])) for r in [header] + body) for i in range(len(header))]

    def line(r):
        cells = [str(c).ljust(wd) if i in left else str(c).rjust(wd)
                 for i, (c, wd) in enumerate(zip(r, widths))]
        return "  ".join(cells).rstrip()
    return [line(header), line(["-" * wd for wd in widths])] + [line(r) for r in body]


def format_report(res: dict) -> str:
    c, env = res["config"], res["environment"]
    out = [f"energy-attn bench attention  (jax {env['jax']}, {env['backend']}, "
           f"{env['cpu_count']} CPU cores, {c['dtype']}, {c['mask']} mask)",
           f"shape B={c['batch']} H={c['heads']} T={c['seq']} D={c['head_dim']}; "
           f"times: min and median of {c['repeats']} runs after a compile run"
           + ("" if c["long_seq"] is None else f" (section d: {c['long_repeats']})"),
           res["flop_convention"], ""]
    body = []
    for r in res["rows"]:
        note = f"error: {r['error']}" if "error" in r else r.get("note", "")
        body.append([r["section"], r["name"],
                     _fmt(r.get("min_s") and r["min_s"] * 1e3, ".1f"),
                     _fmt(r.get("median_s") and r["median_s"] * 1e3, ".1f"),
                     _fmt(r.get("gflops"), ".1f"),
                     _fmt(r.get("peak_rss_gib"), ".2f"), note])
    out += text_table(["", "measurement", "min ms", "median ms", "GFLOP/s", "peak RSS GiB", "note"], body,
                  left={0, 1, 6})
    out += ["", "ratios (of min times) and targets, reported not asserted:"]
    body = [[r["name"], _fmt(r["value"], ".2f") or "-", f"{r['op']} {r['target']:g}", r["status"]]
            for r in res["ratios"]]
    if body:
        out += ["  " + ln for ln in text_table(["ratio", "value", "target", "status"], body,
                                         left={0, 2, 3})]
    return "\n".join(out)
