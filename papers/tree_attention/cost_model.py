"""Decode at the paper's scale, on paper: a latency model of tree vs ring vs
all-gather-of-partials decoding (Shyam et al., "Tree Attention", arXiv 2408.04093).

    python papers/tree_attention/cost_model.py               # ~30 s on 2 shared CPU cores
    python papers/tree_attention/cost_model.py --no-measure  # skip timing one shard on this CPU (~12 s)

This is a model, not a measurement. Its inputs are:

  * what each method communicates: the collective kinds, counts and operand sizes
    read from the compiled HLO of this project's own decode programs
    (energy_attn.tree.decode_attention, baselines.ring_decode_attention,
    baselines.allgather_partials_decode_attention), compiled for 4 and 8
    simulated CPU devices at two cache lengths and extrapolated only along the
    laws those compiles confirm (see `hlo_laws`);
  * how long one device's local attention takes: the H100 HBM roofline (decode
    reads each K/V byte once), or this CPU's measured time for one shard;
  * the hardware: `Cluster`, every default with its source.

Per-step latency of each method = its local compute + its collectives, each
collective costed with the usual latency (α) + size/bandwidth (β) terms:

  tree        local shard + each all-reduce as a hierarchical tree
              (log2(GPUs per node) NVLink steps, then log2(nodes) network steps,
              up and back down);
  all-gather  local shard + one ring all-gather of the p partials (NCCL's
              algorithm for all-gather) + a local merge of p partials;
  ring        p (reference code) or p−1 (this project's program) hops of the
              K/V block over the slowest link of the ring, each with a block of
              local compute, overlapped with the send or not.

Writes cost_model.md (tables), cost_model.json (every number), cost_model.png.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
T0 = time.perf_counter()

# The paper's headline: "up to 8x faster than ring", the figure quoted for 5.12M
# tokens on 128 H100s (abstract; ../shared/DESIGN.md §7). Its shapes for that run
# could not be retrieved (see README); the head shapes below are the defaults of the
# authors' public scripts (github.com/Zyphra/tree_attention, tree_shard_test.py and
# ring_shard_test.py: 16 heads x 128, batch 1, one query token, float16).
PAPER_RING_OVER_TREE = 8.0


# ------------------------------------------------------------------ parameters


@dataclass(frozen=True)
class Cluster:
    """Hardware. Bandwidths in bytes/s per GPU per direction, latencies in seconds."""
    gpus: int = 128                       # paper: 128 H100s for the 5.12M-token run
    gpus_per_node: int = 8                # DGX H100 / HGX H100: 8 GPUs per node
    hbm_bytes_per_s: float = 3.35e12      # NVIDIA H100 SXM5 datasheet: HBM3, 3.35 TB/s (seen quoted, see README)
    intra_bytes_per_s: float = 450e9      # H100 SXM5 datasheet: NVLink 4, 900 GB/s bidirectional -> 450 GB/s each way
    inter_bytes_per_s: float = 50e9       # 8x H100 SXM nodes: one 400 Gb/s NDR InfiniBand NIC per GPU = 50 GB/s
                                          # (MLCommons system descriptions; DGX H100 guide not read, see README)
    intra_latency_s: float = 0.6e-6       # NCCL src/graph/tuning.cc, hwLatencies[NVLINK][Tree][LL] = 0.6 us per hop
    inter_latency_s: float = 5.0e-6       # NCCL src/graph/tuning.cc, hwLatencies[NET][Tree][LL] = 5.0 us per hop
    inter_latency_ring_s: float = 2.7e-6  # NCCL src/graph/tuning.cc, hwLatencies[NET][Ring][LL] = 2.7 us per ring step
    collective_launch_s: float = 6.8e-6   # NCCL src/graph/tuning.cc, baseLatencies[Tree][LL] = 6.8 us per collective
    kernel_launch_s: float = 5e-6         # ASSUMPTION (not sourced): fixed cost of one local kernel call / merge

    @property
    def nodes(self) -> int:
        return math.ceil(self.gpus / self.gpus_per_node)


@dataclass(frozen=True)
class Workload:
    """One decode step: one query token against a KV cache sharded along its length."""
    tokens: int = 5_120_000               # paper: 5.12M tokens
    batch: int = 1                        # Zyphra reference scripts: B = 1
    heads: int = 16                       # Zyphra reference scripts: num_heads = 16
    head_dim: int = 128                   # Zyphra reference scripts: head_dim = 128
    kv_itemsize: int = 2                  # Zyphra reference scripts: K, V in float16

    def tokens_per_gpu(self, gpus: int) -> int:
        return self.tokens // gpus

    def shard_bytes(self, gpus: int) -> float:
        """K and V bytes one GPU holds (and reads once per decode step)."""
        return 2 * self.batch * self.tokens_per_gpu(gpus) * self.heads * self.head_dim * self.kv_itemsize


@dataclass(frozen=True)
class Collective:
    """One collective of a compiled program, at the target scale. `level` says which
    devices take part: "all" (every GPU), "local" (the GPUs of one node) or "node"
    (one GPU per node), as the mesh axes of the program say."""
    kind: str            # all-reduce | all-gather | collective-permute
    count: int           # times it runs per decode step (loop trip counts included)
    bytes: float         # all-reduce / permute: operand bytes; all-gather: result bytes
    level: str = "all"


# ------------------------------------------------------------------ collective costs


def _log2(n: int) -> int:
    return math.ceil(math.log2(n)) if n > 1 else 0


def tree_allreduce_time(nbytes: float, c: Cluster, *, local: int, nodes: int) -> float:
    """All-reduce over `local` GPUs in each of `nodes` nodes, as a tree: reduce up
    log2(local) NVLink steps then log2(nodes) network steps, and broadcast back
    down the same way (hence the 2). Each step moves the whole message: decode's
    messages are KBs, so the α terms dominate and pipelining would not help."""
    if local * nodes <= 1:
        return 0.0
    intra = _log2(local) * (c.intra_latency_s + nbytes / c.intra_bytes_per_s)
    inter = _log2(nodes) * (c.inter_latency_s + nbytes / c.inter_bytes_per_s)
    return c.collective_launch_s + 2 * (intra + inter)


def ring_allgather_time(result_bytes: float, c: Cluster, *, gpus: int) -> float:
    """Ring all-gather over `gpus` GPUs (NCCL's all-gather algorithm): p−1 steps, of
    which nodes−1 cross the network (NCCL's ring latency model), and every GPU
    receives (p−1)/p of the result through its slowest link."""
    if gpus <= 1:
        return 0.0
    nodes = math.ceil(gpus / c.gpus_per_node)
    net_steps = nodes - 1
    latency = (gpus - 1 - net_steps) * c.intra_latency_s + net_steps * c.inter_latency_ring_s
    bandwidth = c.inter_bytes_per_s if nodes > 1 else c.intra_bytes_per_s
    return c.collective_launch_s + latency + (gpus - 1) / gpus * result_bytes / bandwidth


def ring_hop_time(nbytes: float, c: Cluster, *, gpus: int) -> float:
    """One ring step: every GPU sends `nbytes` to its neighbour at once, so the step
    lasts as long as the slowest hop, a network hop once the ring spans nodes."""
    if gpus <= c.gpus_per_node:
        return c.intra_latency_s + nbytes / c.intra_bytes_per_s
    return c.inter_latency_ring_s + nbytes / c.inter_bytes_per_s


def collective_time(op: Collective, c: Cluster) -> float:
    """Time of one run of `op` on the cluster (all-reduces and all-gathers only)."""
    p, g = c.gpus, min(c.gpus_per_node, c.gpus)
    if op.kind == "all-reduce":
        local, nodes = {"all": (g, c.nodes), "local": (g, 1), "node": (1, c.nodes)}[op.level]
        return tree_allreduce_time(op.bytes, c, local=local, nodes=nodes)
    if op.kind == "all-gather":
        return ring_allgather_time(op.bytes, c, gpus=p)
    raise ValueError(f"collective_time: {op.kind} is costed by ring_time, not here")


# ------------------------------------------------------------------ the three methods


def roofline_compute_time(w: Workload, c: Cluster) -> float:
    """Local attention of one query token over one GPU's shard: memory-bound, so
    the HBM roofline is its K/V bytes over HBM bandwidth (a lower bound)."""
    return w.shard_bytes(c.gpus) / c.hbm_bytes_per_s


def tree_time(c: Cluster, ops: list[Collective], compute_s: float) -> dict:
    comm = sum(op.count * collective_time(op, c) for op in ops)
    local = compute_s + c.kernel_launch_s
    return dict(total=local + comm, compute=local, comm=comm)


def allgather_time(c: Cluster, ops: list[Collective], compute_s: float) -> dict:
    comm = sum(op.count * collective_time(op, c) for op in ops)
    gathered = sum(op.count * op.bytes for op in ops)           # p partials, read once
    merge = c.kernel_launch_s + gathered / c.hbm_bytes_per_s
    local = compute_s + c.kernel_launch_s
    return dict(total=local + comm + merge, compute=local + merge, comm=comm)


def ring_time(c: Cluster, *, hop_bytes: float, compute_s: float, rounds: int, sends: int,
              overlap: bool, extra_s: float = 0.0) -> dict:
    """`rounds` blocks of local attention (one shard each: the ring does p shards of
    work per device) and `sends` passes of the K/V block round the ring. With
    `overlap` a pass runs during a round's attention (possible when the pass does not
    wait for it); otherwise they add up. `extra_s`: any other collectives."""
    send = ring_hop_time(hop_bytes, c, gpus=c.gpus)
    block = compute_s + c.kernel_launch_s
    paired = min(rounds, sends) if overlap else 0
    loop = paired * max(block, send) + (rounds - paired) * block + (sends - paired) * send
    return dict(total=loop + extra_s, compute=rounds * block, comm=loop - rounds * block + extra_s)


def predict(w: Workload, c: Cluster, programs: dict[str, list[Collective]], compute_s: float) -> dict:
    """Per-step latency of each method, in seconds, with its compute/comm split."""
    p = c.gpus
    permutes = [op for op in programs["ring"] if op.kind == "collective-permute"]
    others = [op for op in programs["ring"] if op.kind != "collective-permute"]
    hop_bytes = sum(op.bytes for op in permutes)            # K and V pass in the same hop
    out = {
        "tree": tree_time(c, programs["tree"], compute_s),
        "allgather": allgather_time(c, programs["allgather"], compute_s),
        # This project's ring, as its HLO says: attend to the own block, then p−1 times
        # receive K/V and attend (the attend waits for the receive: no overlap), then
        # one small all-reduce to replicate the result.
        "ring": ring_time(c, hop_bytes=hop_bytes, compute_s=compute_s, rounds=p,
                          sends=max(op.count for op in permutes), overlap=False,
                          extra_s=sum(op.count * collective_time(op, c) for op in others)),
        # The authors' reference ring (Zyphra/tree_attention ring_shard_test.py, which
        # calls flash_attn_jax's ring_fwd): p rounds of attend-then-pass; the pass does
        # not depend on the attend, so XLA may overlap them (taken as overlapped here).
        # Read from that code, not from an HLO.
        "ring_reference_overlap": ring_time(c, hop_bytes=hop_bytes, compute_s=compute_s, rounds=p,
                                            sends=p, overlap=True),
    }
    for name in ("ring", "ring_reference_overlap", "allgather"):
        out[name]["over_tree"] = out[name]["total"] / out["tree"]["total"]
    return out


# ------------------------------------------------------------------ reading the programs (JAX)


def compile_collectives(p: int, tokens_per_device: int, *, heads: int, head_dim: int, batch: int,
                        mesh_shape: tuple[int, ...] = ()) -> dict:
    """Compile the three decode programs for `p` devices (this process must have
    them) at shapes only (nothing allocated) and return their collectives as read
    from the per-device HLO. mesh_shape (nodes, local) compiles the tree on a 2-D
    ("node", "local") mesh instead, the explicit two-level tree."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from energy_attn.tree import decode_attention
    from energy_attn.tree.baselines import allgather_partials_decode_attention, ring_decode_attention
    from energy_attn.tree.hlo import collective_stats

    axes = ("node", "local") if mesh_shape else ("seq",)
    mesh = jax.make_mesh(mesh_shape or (p,), axes, devices=jax.devices()[:p])
    seq = axes if mesh_shape else axes[0]
    rep, kv = NamedSharding(mesh, P()), NamedSharding(mesh, P(None, seq))
    tokens = tokens_per_device * p
    args = (jax.ShapeDtypeStruct((batch, 1, heads, head_dim), jnp.float32, sharding=rep),
            jax.ShapeDtypeStruct((batch, tokens, heads, head_dim), jnp.float32, sharding=kv),
            jax.ShapeDtypeStruct((batch, tokens, heads, head_dim), jnp.float32, sharding=kv))
    fns = {"tree": decode_attention}
    if not mesh_shape:
        fns |= {"ring": ring_decode_attention, "allgather": allgather_partials_decode_attention}
    out = {}
    for name, fn in fns.items():
        step = jax.jit(lambda q, k, v, fn=fn: fn(q, k, v, mesh=mesh, seq_axes=axes))
        stats = collective_stats(step.lower(*args).compile())
        out[name] = [dict(kind=op["kind"], count=op["count"], operand_bytes=op["operand_bytes"],
                          result_bytes=op["result_bytes"], group_size=op["group_size"],
                          replica_groups=op["replica_groups"], shape=op["result_shape"])
                     for op in stats["ops"]]
    return dict(devices=p, tokens_per_device=tokens_per_device, mesh_shape=list(mesh_shape),
                heads=heads, head_dim=head_dim, batch=batch, methods=out)


def read_programs(*, heads: int, head_dim: int, batch: int, t1: int = 1024, t2: int = 4096) -> list[dict]:
    """The readings the model is fed by, compiled in a child interpreter with 8
    simulated devices: p = 4 at t1 and t2 tokens per device, p = 8 at t1, and the
    tree on a 2 x 4 (node, local) mesh."""
    specs = [dict(p=4, tokens_per_device=t1), dict(p=4, tokens_per_device=t2),
             dict(p=8, tokens_per_device=t1), dict(p=8, tokens_per_device=t1, mesh_shape=[2, 4])]
    spec = dict(specs=specs, heads=heads, head_dim=head_dim, batch=batch)
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_force_host_platform_device_count=8")
    proc = subprocess.run([sys.executable, __file__, "--hlo-child", json.dumps(spec)], env=env,
                          capture_output=True, text=True, timeout=600)
    if proc.returncode:
        raise SystemExit("HLO child failed:\n" + proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _hlo_child(spec: dict) -> None:
    readings = [compile_collectives(s["p"], s["tokens_per_device"], heads=spec["heads"],
                                    head_dim=spec["head_dim"], batch=spec["batch"],
                                    mesh_shape=tuple(s.get("mesh_shape", ())))
                for s in spec["specs"]]
    print(json.dumps(readings), flush=True)


def _sizes(ops: list[dict], kind: str) -> list[int]:
    return sorted(op["operand_bytes"] if kind != "all-gather" else op["result_bytes"]
                  for op in ops for _ in range(op["count"]) if op["kind"] == kind)


def hlo_laws(readings: list[dict]) -> dict:
    """What the compiles establish, checked rather than assumed. readings[0..2]:
    (p=4, t1), (p=4, t2), (p=8, t1) on a 1-D mesh; readings[3]: tree on 2 x 4.

      tree       the same all-reduces (kind, count, bytes) at both cache lengths and
                 both device counts: O(b·d), independent of T and p;
      ring       p−1 K and p−1 V permutes, each of bytes ∝ tokens per device,
                 plus one all-reduce of fixed size;
      all-gather its gathered bytes ∝ p and independent of T.
    """
    a, b, c = (r["methods"] for r in readings[:3])
    t1, t2 = readings[0]["tokens_per_device"], readings[1]["tokens_per_device"]
    p1, p2 = readings[0]["devices"], readings[2]["devices"]
    tree_sig = [sorted((op["kind"], op["count"], op["operand_bytes"]) for op in m["tree"]) for m in (a, b, c)]
    perm = [[op for op in m["ring"] if op["kind"] == "collective-permute"] for m in (a, b, c)]
    laws = dict(
        compiled_shapes=dict(batch=readings[0]["batch"], heads=readings[0]["heads"],
                             head_dim=readings[0]["head_dim"]),
        tree_same_at_two_lengths=tree_sig[0] == tree_sig[1],
        tree_same_at_two_device_counts=tree_sig[0] == tree_sig[2],
        tree_allreduce_bytes=_sizes(a["tree"], "all-reduce"),
        tree_other_collectives=sum(op["count"] for op in a["tree"] if op["kind"] != "all-reduce"),
        ring_permutes_per_tensor=[sorted({op["count"] for op in ops}) for ops in perm],
        ring_permute_count_is_p_minus_1=all(op["count"] == p - 1 for ops, p in zip(perm, (p1, p1, p2))
                                             for op in ops),
        ring_permute_bytes_per_token=[op["operand_bytes"] / t1 for op in perm[0]],
        ring_permute_bytes_proportional_to_t=all(
            y["operand_bytes"] * t1 == x["operand_bytes"] * t2 for x, y in zip(perm[0], perm[1])),
        ring_other=sorted((op["kind"], op["count"], op["operand_bytes"]) for op in a["ring"]
                          if op["kind"] != "collective-permute"),
        ring_other_same_at_two_lengths=(
            sorted((o["kind"], o["operand_bytes"]) for o in a["ring"] if o["kind"] != "collective-permute")
            == sorted((o["kind"], o["operand_bytes"]) for o in b["ring"] if o["kind"] != "collective-permute")),
        allgather_bytes_per_device=[x / p1 for x in _sizes(a["allgather"], "all-gather")],
        allgather_proportional_to_p=[x / p1 for x in _sizes(a["allgather"], "all-gather")]
        == [x / p2 for x in _sizes(c["allgather"], "all-gather")],
        allgather_same_at_two_lengths=_sizes(a["allgather"], "all-gather") == _sizes(b["allgather"], "all-gather"),
    )
    if len(readings) > 3:      # the (node, local) mesh: which all-reduce runs at which level
        local = readings[3]["mesh_shape"][1]
        laws["tree_2d_allreduces"] = sorted(
            ("local" if op["group_size"] == local else "node", op["group_size"], op["operand_bytes"])
            for op in readings[3]["methods"]["tree"] if op["kind"] == "all-reduce" for _ in range(op["count"]))
    laws["all_hold"] = all(laws[k] for k in (
        "tree_same_at_two_lengths", "tree_same_at_two_device_counts", "ring_permute_count_is_p_minus_1",
        "ring_permute_bytes_proportional_to_t", "ring_other_same_at_two_lengths",
        "allgather_proportional_to_p", "allgather_same_at_two_lengths")) and laws["tree_other_collectives"] == 0
    return laws


def programs_at_scale(laws: dict, w: Workload, c: Cluster, *, two_level: bool = False) -> dict[str, list[Collective]]:
    """The compiled programs' collectives extrapolated to `c.gpus` GPUs and `w.tokens`
    tokens along the laws `hlo_laws` checked. The programs were compiled in float32:
    partials stay float32 (the tree computes them in float32, as does the reference),
    K/V blocks are rescaled to the cache's itemsize."""
    if not laws["all_hold"]:
        raise ValueError(f"the compiled programs do not follow the laws the model extrapolates by: {laws}")
    shapes = dict(batch=w.batch, heads=w.heads, head_dim=w.head_dim)
    if shapes != laws["compiled_shapes"]:
        raise ValueError(f"programs compiled at {laws['compiled_shapes']}, asked to predict {shapes}: "
                         "compile them at the shapes being predicted")
    p, t = c.gpus, w.tokens_per_gpu(c.gpus)
    if two_level:    # the 2-D program: each reduction inside the nodes, then across them
        tree = [Collective("all-reduce", 1, size, level) for level, _, size in laws["tree_2d_allreduces"]]
    else:
        tree = [Collective("all-reduce", 1, s) for s in laws["tree_allreduce_bytes"]]
    ring = [Collective("collective-permute", p - 1, per_token * t * w.kv_itemsize / 4)
            for per_token in laws["ring_permute_bytes_per_token"]]
    ring += [Collective(kind, n, size) for kind, n, size in laws["ring_other"]]
    allgather = [Collective("all-gather", 1, per_dev * p) for per_dev in laws["allgather_bytes_per_device"]]
    return dict(tree=tree, ring=ring, allgather=allgather)


# ------------------------------------------------------------------ measured local compute (JAX)


def measure_local_compute(w: Workload, gpus: int, *, repeats: int = 5, log=print) -> dict:
    """Time the tree's whole decode program on ONE device for one shard of the
    target size (float32 on this CPU): its local partial (o, lse) with the
    few-query kernel, and collectives over a group of one (no-ops). Median of
    `repeats` calls after one warm-up."""
    import jax
    import jax.numpy as jnp

    from energy_attn.tree import decode_attention

    t = w.tokens_per_gpu(gpus)
    mesh = jax.make_mesh((1,), ("seq",), devices=jax.devices()[:1])
    shape = (w.batch, t, w.heads, w.head_dim)
    kq, kk, kv = jax.random.split(jax.random.key(0), 3)
    q = jax.random.normal(kq, (w.batch, 1, w.heads, w.head_dim), jnp.float32)
    k = jax.random.normal(kk, shape, jnp.float32)
    v = jax.random.normal(kv, shape, jnp.float32)
    step = jax.jit(lambda q, k, v: decode_attention(q, k, v, mesh=mesh))
    jax.block_until_ready(step(q, k, v))
    times = []
    for i in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(step(q, k, v))
        times.append(time.perf_counter() - t0)
        log(f"  local shard on CPU, call {i + 1}/{repeats}: {times[-1] * 1e3:.0f} ms")
    nbytes = 2 * w.batch * t * w.heads * w.head_dim * 4
    return dict(tokens_per_device=t, dtype="float32", times_s=times, median_s=statistics.median(times),
                kv_bytes=nbytes, bytes_per_s=nbytes / statistics.median(times),
                device=str(jax.devices()[0].device_kind), jax=jax.__version__)


# ------------------------------------------------------------------ report


def _ms(x: float) -> str:
    return f"{x * 1e3:,.3f}" if x < 1e-2 else f"{x * 1e3:,.1f}"


def grid_rows(laws: dict, base_w: Workload, base_c: Cluster, compute_fn) -> list[dict]:
    """Predictions over GPU counts (at the paper's tokens) and token counts (at its GPUs)."""
    cases = [(g, base_w.tokens) for g in (8, 16, 32, 64, 128)]
    cases += [(base_c.gpus, tk) for tk in (160_000, 640_000, 1_280_000, 2_560_000) if tk != base_w.tokens]
    rows = []
    for g, tk in cases:
        c = dataclasses.replace(base_c, gpus=g)
        w = dataclasses.replace(base_w, tokens=tk)
        pred = predict(w, c, programs_at_scale(laws, w, c), compute_fn(w, c))
        rows.append(dict(gpus=g, tokens=tk, nodes=c.nodes, **{k: v for k, v in pred.items()}))
    return rows


def markdown(res: dict) -> str:
    w, c = res["workload"], res["cluster"]
    laws = res["hlo_laws"]
    L = ["# Decode at the paper's scale: a cost model (generated by cost_model.py)", "",
         "A formula applied to this project's own accounting, not a measurement.", "",
         "## Inputs read from the compiled HLO", "",
         f"Programs compiled for {w['heads']} heads x {w['head_dim']}, batch {w['batch']}, one query token, "
         "float32, on 4 and 8 simulated CPU devices at 1,024 and 4,096 tokens per device:", "",
         "| law | holds | value |", "|---|---|---|",
         f"| tree: same all-reduces at two cache lengths | {laws['tree_same_at_two_lengths']} | "
         f"{len(laws['tree_allreduce_bytes'])} all-reduces of {laws['tree_allreduce_bytes']} bytes |",
         f"| tree: same all-reduces at p = 4 and p = 8 | {laws['tree_same_at_two_device_counts']} | "
         f"no other collectives: {laws['tree_other_collectives'] == 0} |",
         f"| tree on a 2 x 4 (node, local) mesh | — | all-reduces (group size, bytes): "
         f"{laws.get('tree_2d_allreduces')} |",
         f"| ring: p − 1 permutes of K and of V | {laws['ring_permute_count_is_p_minus_1']} | "
         f"counts {laws['ring_permutes_per_tensor']} at p = 4, 4, 8 |",
         f"| ring: permute bytes ∝ tokens per device | {laws['ring_permute_bytes_proportional_to_t']} | "
         f"{laws['ring_permute_bytes_per_token']} bytes per token (float32) |",
         f"| ring: other collectives fixed | {laws['ring_other_same_at_two_lengths']} | {laws['ring_other']} |",
         f"| all-gather: bytes ∝ p, not T | "
         f"{laws['allgather_proportional_to_p'] and laws['allgather_same_at_two_lengths']} | "
         f"{laws['allgather_bytes_per_device']} bytes per device |", "",
         "## Hardware and workload (defaults; sources in cost_model.py)", "",
         f"{c['gpus']} GPUs, {c['gpus_per_node']} per node; HBM {c['hbm_bytes_per_s'] / 1e12:.2f} TB/s; "
         f"NVLink {c['intra_bytes_per_s'] / 1e9:.0f} GB/s, {c['intra_latency_s'] * 1e6:.1f} us per hop; "
         f"network {c['inter_bytes_per_s'] / 1e9:.0f} GB/s, {c['inter_latency_s'] * 1e6:.1f} us per tree hop, "
         f"{c['inter_latency_ring_s'] * 1e6:.1f} us per ring step; "
         f"{c['collective_launch_s'] * 1e6:.1f} us per collective; {c['kernel_launch_s'] * 1e6:.1f} us per "
         f"local kernel (assumption). Workload: {w['tokens']:,} tokens, batch {w['batch']}, {w['heads']} x "
         f"{w['head_dim']}, K/V itemsize {w['kv_itemsize']} B "
         f"({res['shard_mib']:.0f} MiB of K/V per GPU at {c['gpus']} GPUs).", "",
         "## Prediction at the paper's scale, compute at the H100 HBM roofline", "",
         "| GPUs | nodes | tokens | tree ms | all-gather ms | ring ms (this repo, serial) | ring ms (reference, "
         "overlapped) | ring / tree | ring (ref.) / tree | all-gather / tree | paper ring / tree |",
         "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["grid_roofline"]:
        paper = f"up to {PAPER_RING_OVER_TREE:g}" if (r["gpus"], r["tokens"]) == (128, 5_120_000) else ""
        L.append(f"| {r['gpus']} | {r['nodes']} | {r['tokens']:,} | {_ms(r['tree']['total'])} | "
                 f"{_ms(r['allgather']['total'])} | {_ms(r['ring']['total'])} | "
                 f"{_ms(r['ring_reference_overlap']['total'])} | {r['ring']['over_tree']:,.0f} | "
                 f"{r['ring_reference_overlap']['over_tree']:,.0f} | {r['allgather']['over_tree']:.2f} | {paper} |")
    head = res["paper_point"]
    L += ["", "Split at 128 GPUs, 5.12M tokens (roofline compute): "
          + "; ".join(f"{label} compute {_ms(head[n]['compute'])} ms + communication {_ms(head[n]['comm'])} ms"
                      for n, label in (("tree", "tree"), ("allgather", "all-gather (incl. merge)"),
                                       ("ring", "ring (serial)"),
                                       ("ring_reference_overlap", "ring (reference; compute hidden)")))
          + ".", ""]
    L += ["## Sensitivity to local compute speed (128 GPUs, 5.12M tokens)", "",
          "Local compute per shard = multiplier x the H100 HBM roofline "
          f"({res['roofline_compute_s'] * 1e6:.0f} us). The CPU row uses this machine's measured time for "
          "one shard (float32, 2 shared cores): a CPU is not an H100, it shows what the ratios do when "
          "compute is slow.", "",
          "| compute per shard | multiplier | tree ms | all-gather ms | ring ms (serial) | ring / tree | "
          "ring (ref.) / tree | all-gather / tree |", "|---|---|---|---|---|---|---|---|"]
    for r in res["sensitivity_compute"]:
        L.append(f"| {r['label']} | {r['multiplier']:,.1f} | {_ms(r['tree'])} | {_ms(r['allgather'])} | "
                 f"{_ms(r['ring'])} | {r['ring_over_tree']:,.1f} | {r['ring_ref_over_tree']:,.1f} | "
                 f"{r['allgather_over_tree']:.2f} |")
    L += ["", "## Sensitivity to the network (128 GPUs, 5.12M tokens, roofline compute)", "",
          "| change | tree ms | all-gather ms | ring ms (serial) | ring / tree | all-gather / tree |",
          "|---|---|---|---|---|---|"]
    for r in res["sensitivity_network"]:
        L.append(f"| {r['label']} | {_ms(r['tree'])} | {_ms(r['allgather'])} | {_ms(r['ring'])} | "
                 f"{r['ring_over_tree']:,.0f} | {r['allgather_over_tree']:.2f} |")
    two = res["two_level"]
    L += ["", f"Tree compiled on a 2-D (node, local) mesh (two all-reduces per reduction, explicit "
          f"intra- then inter-node): {_ms(two['total'])} ms vs {_ms(head['tree']['total'])} ms for the "
          "flat program costed as a hierarchical all-reduce (same steps, twice the collective launches).",
          "", f"What tree time would make ring (serial) / tree = {PAPER_RING_OVER_TREE:g}: "
          f"{_ms(res['implied_tree_for_paper_ratio'])} ms per step, "
          f"{res['implied_tree_for_paper_ratio'] / head['tree']['total']:,.0f}x the predicted tree time.", ""]
    m = res.get("measured_local")
    if m:
        L += [f"Measured on this CPU ({m['device']}, jax {m['jax']}): one shard of {m['tokens_per_device']:,} "
              f"tokens, float32, {m['kv_bytes'] / 2 ** 20:.0f} MiB of K/V: median {m['median_s'] * 1e3:.0f} ms "
              f"over {len(m['times_s'])} calls ({m['bytes_per_s'] / 1e9:.1f} GB/s effective; the H100 roofline "
              f"for the float16 shard is {res['roofline_compute_s'] * 1e6:.0f} us).", ""]
    L += [f"Wall time {res['wall_s']:.0f} s.", ""]
    return "\n".join(L)


def _tokens_label(t: int) -> str:
    return f"{t / 1e6:g}M" if t >= 1_000_000 else f"{t // 1000}k"


def figure(res: dict, out: Path) -> None:
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullLocator
    fig = Figure(figsize=(15, 4.4), layout="constrained")
    ax1, ax2, ax3 = fig.subplots(1, 3)
    p_max = res["cluster"]["gpus"]
    styles = (("tree", "tree", "tab:green", "o-"), ("allgather", "all-gather partials", "tab:blue", "o-"),
              ("ring", "ring (this repo, serial)", "tab:red", "o-"),
              ("ring_reference_overlap", "ring (reference, overlapped)", "tab:orange", "s--"))
    rows = sorted((r for r in res["grid_roofline"] if r["gpus"] == p_max), key=lambda r: r["tokens"])
    x = [r["tokens"] for r in rows]
    for key, label, color, fmt in styles:
        ax1.loglog(x, [r[key]["total"] * 1e3 for r in rows], fmt, color=color, label=label)
    ax1.set_xticks(x, [_tokens_label(t) for t in x])
    ax1.xaxis.set_minor_locator(NullLocator())
    ax1.set(xlabel="KV-cache tokens", ylabel="predicted ms per decode step",
            title=f"{p_max} H100s: latency vs cache length")
    ax1.legend(fontsize=8)

    rows = sorted((r for r in res["grid_roofline"] if r["tokens"] == res["workload"]["tokens"]),
                  key=lambda r: r["gpus"])
    g = [r["gpus"] for r in rows]
    for key, label, color, fmt in styles[1:]:
        ax2.loglog(g, [r[key]["over_tree"] for r in rows], fmt, color=color, label=f"{label} / tree")
    ax2.axhline(PAPER_RING_OVER_TREE, color="gray", ls=":", label="paper: ring / tree up to 8 (128 GPUs)")
    ax2.axhline(1, color="gray", lw=0.5)
    ax2.set_xticks(g, [str(v) for v in g])
    ax2.xaxis.set_minor_locator(NullLocator())
    ax2.set(xlabel="GPUs (8 per node)", ylabel="predicted time ratio (> 1: tree faster)",
            title=f"{_tokens_label(res['workload']['tokens'])} tokens: ratio vs GPUs (roofline compute)")
    ax2.legend(fontsize=8)

    s = res["sensitivity_compute"]
    mult = [r["multiplier"] for r in s]
    ax3.loglog(mult, [r["ring_over_tree"] for r in s], "o-", color="tab:red", label="ring (serial) / tree")
    ax3.loglog(mult, [r["ring_ref_over_tree"] for r in s], "s--", color="tab:orange",
               label="ring (reference) / tree")
    ax3.loglog(mult, [r["allgather_over_tree"] for r in s], "o-", color="tab:blue", label="all-gather / tree")
    ax3.axhline(PAPER_RING_OVER_TREE, color="gray", ls=":", label="paper: up to 8")
    ax3.axhline(1, color="gray", lw=0.5)
    for r in s:
        if r["label"].startswith("this CPU"):
            ax3.annotate("this CPU's measured\nshard time", (r["multiplier"], r["ring_over_tree"]), fontsize=8,
                         xytext=(0.45, 0.55), textcoords="axes fraction", arrowprops=dict(arrowstyle="->"))
    ax3.set(xlabel="local compute per shard / H100 HBM roofline", ylabel="predicted time ratio",
            title=f"{p_max} GPUs, {_tokens_label(res['workload']['tokens'])} tokens: sensitivity to compute")
    ax3.legend(fontsize=8, loc="upper right")
    fig.suptitle("Cost model of one decode step (a model fed by compiled-HLO collectives, not a measurement)")
    fig.savefig(out / "cost_model.png", dpi=100)


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:6.1f}s] {msg}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-measure", action="store_true", help="skip timing one shard on this CPU")
    ap.add_argument("--out", type=Path, default=HERE)
    ap.add_argument("--hlo-child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.hlo_child:
        _hlo_child(json.loads(args.hlo_child))
        return
    w, c = Workload(), Cluster()
    log(f"compiling the tree, ring and all-gather decode programs ({w.heads} x {w.head_dim}) for 4 and 8 "
        "simulated devices, reading their collectives from the HLO ...")
    readings = read_programs(heads=w.heads, head_dim=w.head_dim, batch=w.batch)
    laws = hlo_laws(readings)
    log(f"HLO laws hold: {laws['all_hold']}; tree all-reduces {laws['tree_allreduce_bytes']} bytes")
    programs = programs_at_scale(laws, w, c)
    roof = roofline_compute_time(w, c)
    head = predict(w, c, programs, roof)
    res = dict(workload=dataclasses.asdict(w), cluster=dataclasses.asdict(c), hlo_readings=readings,
               hlo_laws=laws, programs_at_paper_scale={k: [dataclasses.asdict(o) for o in v]
                                                       for k, v in programs.items()},
               roofline_compute_s=roof, shard_mib=w.shard_bytes(c.gpus) / 2 ** 20, paper_point=head,
               paper_ring_over_tree=PAPER_RING_OVER_TREE)
    log(f"128 GPUs, 5.12M tokens, roofline: tree {head['tree']['total'] * 1e3:.3f} ms, all-gather "
        f"{head['allgather']['total'] * 1e3:.3f} ms, ring {head['ring']['total'] * 1e3:.1f} ms")
    res["grid_roofline"] = grid_rows(laws, w, c, roofline_compute_time)
    two = programs_at_scale(laws, w, c, two_level=True)
    res["two_level"] = tree_time(c, two["tree"], roof)
    # Tree time that would make the serial ring exactly PAPER_RING_OVER_TREE times slower.
    res["implied_tree_for_paper_ratio"] = head["ring"]["total"] / PAPER_RING_OVER_TREE

    points = [(f"H100 roofline x {k:g}", float(k)) for k in (1, 2, 5, 10, 30, 100, 300, 1000)]
    if not args.no_measure:
        log(f"timing the tree's local program on this CPU for one shard ({w.tokens_per_gpu(c.gpus):,} tokens, "
            f"{w.heads} x {w.head_dim}, float32) ...")
        res["measured_local"] = measure_local_compute(w, c.gpus, log=log)
        points.append(("this CPU, measured (float32)", res["measured_local"]["median_s"] / roof))
    sens = []
    for label, k in sorted(points, key=lambda x: x[1]):
        pr = predict(w, c, programs, k * roof)
        sens.append(dict(label=label, multiplier=k, tree=pr["tree"]["total"], allgather=pr["allgather"]["total"],
                         ring=pr["ring"]["total"], ring_over_tree=pr["ring"]["over_tree"],
                         ring_ref_over_tree=pr["ring_reference_overlap"]["over_tree"],
                         allgather_over_tree=pr["allgather"]["over_tree"]))
    res["sensitivity_compute"] = sens
    net = []
    for label, change in (("defaults", {}), ("network latency x 0.5", dict(inter_latency_s=c.inter_latency_s / 2,
                                                                  inter_latency_ring_s=c.inter_latency_ring_s / 2)),
                          ("network latency x 2", dict(inter_latency_s=c.inter_latency_s * 2,
                                                       inter_latency_ring_s=c.inter_latency_ring_s * 2)),
                          ("network bandwidth x 0.5", dict(inter_bytes_per_s=c.inter_bytes_per_s / 2)),
                          ("network bandwidth x 2", dict(inter_bytes_per_s=c.inter_bytes_per_s * 2)),
                          ("collective launch x 0 (no fixed cost)", dict(collective_launch_s=0.0)),
                          ("kernel launch x 0", dict(kernel_launch_s=0.0))):
        cc = dataclasses.replace(c, **change)
        pr = predict(w, cc, programs_at_scale(laws, w, cc), roof)
        net.append(dict(label=label, tree=pr["tree"]["total"], allgather=pr["allgather"]["total"],
                        ring=pr["ring"]["total"], ring_over_tree=pr["ring"]["over_tree"],
                        allgather_over_tree=pr["allgather"]["over_tree"]))
    res["sensitivity_network"] = net
    import jax
    res["environment"] = dict(jax=jax.__version__, python=platform.python_version(), cpu_count=os.cpu_count(),
                              platform=platform.platform())
    res["wall_s"] = time.perf_counter() - T0
    md = markdown(res)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cost_model.md").write_text(md)
    (args.out / "cost_model.json").write_text(json.dumps(res, indent=1, default=str))
    import matplotlib
    matplotlib.use("Agg")
    figure(res, args.out)
    print(md)
    log(f"wrote {args.out}/cost_model.md, cost_model.json, cost_model.png")


if __name__ == "__main__":
    main()
