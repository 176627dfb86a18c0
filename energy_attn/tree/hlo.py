"""How much does a compiled program communicate? Read it off the HLO.

    compiled = jax.jit(step).lower(*args).compile()
    stats = collective_stats(compiled)          # or collective_stats(compiled.as_text())
    stats["total_bytes"], stats["total_wire_bytes"], stats["by_kind"]["all-reduce"]["count"]

Counts every all-reduce, all-gather, reduce-scatter, collective-permute and
all-to-all of the per-device (SPMD-partitioned) program, including the async
`-start`/`-done` pairs (counted once) and collectives inside while loops
(times the loop's `known_trip_count`; a loop without one counts once and is
flagged). For each op:

  result_bytes / operand_bytes  sizes of its output / input buffers on one device,
                                from the shapes: f32[2,16,128] -> 2·16·128·4 bytes
  bytes        the data it moves, one device's view: max(result, operand)
  wire_bytes   what one device sends with the bandwidth-optimal algorithm for a
               group of g devices (ring all-reduce etc.):
                 all-reduce 2(g−1)/g·S, all-gather (g−1)/g·S_result,
                 reduce-scatter (g−1)/g·S_operand, all-to-all (g−1)/g·S,
                 collective-permute S (each source sends its buffer once).

The paper's communication formulas (tree: 2(p−1)/p·(b·d + 2·b·n_h) values) are
wire-byte counts. Note that XLA:CPU widens bf16 collectives to f32, so on CPU
a bf16 program's collectives show up at 4 bytes per value.
"""
from __future__ import annotations

import re

import numpy as np

KINDS = ("all-reduce", "all-gather", "reduce-scatter", "collective-permute", "all-to-all")

_BITS = {"pred": 8, "s2": 2, "u2": 2, "s4": 4, "u4": 4, "s8": 8, "u8": 8, "s16": 16, "u16": 16,
         "f16": 16, "bf16": 16, "s32": 32, "u32": 32, "f32": 32, "s64": 64, "u64": 64,
         "f64": 64, "c64": 64, "c128": 128}
_ARRAY = re.compile(r"\b([a-z][a-z0-9]*)\[([^\]]*)\]")
_COMP = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s*\(.*\)\s*->\s*.*\{\s*$")
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.+?)\s+([a-z][a-z0-9\-]*)\((.*)$")


def shape_bytes(shape: str) -> int:
    """Bytes of an HLO shape string; tuples are summed. 'f32[2,16,128]{2,1,0}' -> 16384."""
    total = 0
    for dtype, dims in _ARRAY.findall(shape):
        if dtype.startswith("f8") or dtype.startswith("f4") or dtype.startswith("f6"):
            bits = int(re.sub(r"\D.*", "", dtype[1:]) or 8)
        elif dtype in _BITS:
            bits = _BITS[dtype]
        else:
            continue                      # token[], opaque: no data
        n = 1
        for d in dims.split(","):
            d = d.strip().lstrip("<=")
            if d:
                n *= int(d)
        total += n * bits // 8
    return total


def _split_operands(rest: str) -> tuple[str, str]:
    """'a, b), attrs...' -> ('a, b', 'attrs...'): split at the closing parenthesis."""
    depth = 1
    for i, ch in enumerate(rest):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth == 0:
            return rest[:i], rest[i + 1:]
    return rest, ""


def _operand_names(text: str) -> list[str]:
    return re.findall(r"%([\w.\-]+)", text)


def _group_sizes(attrs: str, num_devices: int) -> tuple[list[list[int]] | None, int]:
    """Parse replica_groups (explicit {{0,1},{2,3}} or iota [2,4]<=[8]T(1,0) form)."""
    m = re.search(r"replica_groups=(\{[\{\}\d,\s]*\}|\[[\d,]+\]<=\[[\d,]+\](?:T\([\d,]+\))?)", attrs)
    if not m or m.group(1).replace(" ", "") in ("{}", "{{}}"):
        return None, num_devices
    text = m.group(1)
    if text.startswith("{"):
        groups = [[int(x) for x in g.split(",") if x.strip()]
                  for g in re.findall(r"\{([\d,\s]*)\}", text[1:-1])]
    else:
        out_dims, iota_dims, perm = re.match(r"\[([\d,]+)\]<=\[([\d,]+)\](?:T\(([\d,]+)\))?", text).groups()
        ids = np.arange(np.prod([int(x) for x in iota_dims.split(",")]))
        ids = ids.reshape([int(x) for x in iota_dims.split(",")])
        if perm:
            ids = ids.transpose([int(x) for x in perm.split(",")])
        shape = [int(x) for x in out_dims.split(",")]
        groups = ids.reshape(-1, shape[-1]).tolist()
    return groups, len(groups[0]) if groups else num_devices


def _wire(kind: str, g: int, result: int, operand: int) -> float:
    frac = (g - 1) / g if g else 0.0
    return {"all-reduce": 2 * frac * result, "all-gather": frac * result,
            "reduce-scatter": frac * operand, "all-to-all": frac * max(result, operand),
            "collective-permute": operand}[kind]


def _computations(text: str):
    """{name: [instruction lines]} in text order, and the ENTRY computation's name."""
    comps, entry, current = {}, None, None
    for line in text.splitlines():
        m = _COMP.match(line)
        if m:
            current = m.group(2)
            comps[current] = []
            if m.group(1):
                entry = current
        elif line.strip() == "}":
            current = None
        elif current is not None:
            comps[current].append(line)
    return comps, entry


def collective_stats(compiled_or_text) -> dict:
    """Collective ops of a compiled program (or its `as_text()`), with byte counts.

    Returns {"ops": [per-op dicts], "by_kind": {kind: {"count", "bytes", "wire_bytes"}},
    "total_count", "total_bytes", "total_wire_bytes", "num_devices", "notes"}.
    `count` already includes loop trip counts; totals are per device, per call.
    """
    text = compiled_or_text if isinstance(compiled_or_text, str) else compiled_or_text.as_text()
    m = re.search(r"num_partitions=(\d+)", text)
    num_devices = int(m.group(1)) if m else 1
    m = re.search(r"replica_count=(\d+)", text)
    num_devices *= int(m.group(1)) if m else 1
    comps, entry = _computations(text)
    if entry is None:
        raise ValueError("no ENTRY computation found: pass compiled HLO text "
                         "(jax.jit(f).lower(...).compile().as_text())")

    parsed = {}                                  # computation -> [(name, shape, opcode, operands, attrs)]
    shapes, done_shape = {}, {}
    for comp, lines in comps.items():
        parsed[comp] = []
        for line in lines:
            im = _INSTR.match(line)
            if not im:
                continue
            name, shape, opcode, rest = im.groups()
            operands, attrs = _split_operands(rest)
            shapes[name] = shape
            parsed[comp].append((name, shape, opcode, operands, attrs))
            if opcode.endswith("-done"):
                for src in _operand_names(operands)[:1]:
                    done_shape[src] = shape

    # How often each computation runs per call: callers come after callees in the text.
    runs, notes = {c: 0 for c in comps}, []
    runs[entry] = 1
    for comp in reversed(list(comps)):
        for name, shape, opcode, operands, attrs in parsed[comp]:
            mult = runs[comp]
            if opcode == "while":
                tm = re.search(r'"known_trip_count":\{"n":"(\d+)"', attrs)
                if tm:
                    mult *= int(tm.group(1))
                else:
                    notes.append(f"while loop {name} has no known trip count; its body is counted once")
            for callee in re.findall(r"(?:body|condition|calls|to_apply|true_computation|"
                                     r"false_computation)=%?([\w.\-]+)", attrs):
                if callee in runs:
                    runs[callee] += mult
            bm = re.search(r"branch_computations=\{([^}]*)\}", attrs)
            if bm:
                notes.append(f"conditional {name}: every branch counted (an upper bound)")
                for callee in _operand_names(bm.group(1)):
                    if callee in runs:
                        runs[callee] += mult

    ops = []
    for comp, instrs in parsed.items():
        for name, shape, opcode, operands, attrs in instrs:
            kind = opcode[:-len("-start")] if opcode.endswith("-start") else opcode
            if kind not in KINDS or runs[comp] == 0:
                continue
            inline = _ARRAY.findall(operands)
            operand_bytes = (shape_bytes(operands) if inline else
                             sum(shape_bytes(shapes.get(o, "")) for o in _operand_names(operands)))
            result_shape = done_shape.get(name, shape) if opcode.endswith("-start") else shape
            result_bytes = shape_bytes(result_shape)
            groups, g = _group_sizes(attrs, num_devices)
            pairs = re.search(r"source_target_pairs=\{(.*?)\}\}", attrs)
            ops.append(dict(
                kind=kind, name=name, computation=comp, count=runs[comp],
                result_shape=result_shape.strip(), result_bytes=result_bytes,
                operand_bytes=operand_bytes, bytes=max(result_bytes, operand_bytes),
                group_size=None if kind == "collective-permute" else g,
                replica_groups=groups,
                source_target_pairs=None if not pairs else
                [tuple(int(x) for x in p.split(",")) for p in re.findall(r"(\d+,\d+)", pairs.group(1))],
                wire_bytes=_wire(kind, g, result_bytes, operand_bytes)))

    by_kind = {k: {"count": 0, "bytes": 0, "wire_bytes": 0.0} for k in KINDS}
    for op in ops:
        agg = by_kind[op["kind"]]
        agg["count"] += op["count"]
        agg["bytes"] += op["count"] * op["bytes"]
        agg["wire_bytes"] += op["count"] * op["wire_bytes"]
    return dict(ops=ops, by_kind=by_kind, num_devices=num_devices, notes=notes,
                total_count=sum(a["count"] for a in by_kind.values()),
                total_bytes=sum(a["bytes"] for a in by_kind.values()),
                total_wire_bytes=sum(a["wire_bytes"] for a in by_kind.values()))


def memory_stats(compiled) -> dict:
    """Per-device buffer sizes XLA assigned for one call of a compiled program.

    `compiled.memory_analysis()` reports the static buffer assignment of the
    per-device program: arguments (this device's shards of the inputs), outputs,
    temporaries (the scratch arena, live ranges already packed) and aliases
    (outputs that reuse an argument buffer). peak_bytes = argument + output +
    temp − alias is the most this program can need at once on one device; it is
    computed, not measured (no allocator slack, no runtime buffers).
    """
    m = compiled.memory_analysis()
    out = dict(argument_bytes=m.argument_size_in_bytes, output_bytes=m.output_size_in_bytes,
               temp_bytes=m.temp_size_in_bytes, alias_bytes=m.alias_size_in_bytes)
    out["peak_bytes"] = (out["argument_bytes"] + out["output_bytes"] + out["temp_bytes"]
                         - out["alias_bytes"])
    return out
