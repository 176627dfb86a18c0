"""papers/tree_attention/cost_model.py: the decode cost model's formulas and the
HLO readings it is fed by. Compiles happen in this process (conftest gives 8
simulated devices), at small shapes, nothing allocated."""
import dataclasses
import importlib.util
import math
import sys
from pathlib import Path

import pytest

PATH = Path(__file__).resolve().parents[1] / "papers" / "tree_attention" / "cost_model.py"
_spec = importlib.util.spec_from_file_location("tree_cost_model", PATH)
cm = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = cm          # dataclasses look their module up while the file runs
_spec.loader.exec_module(cm)

B, H, D = 2, 2, 8          # small program shapes: b·d = 32 values, b·n_h = 4 values
T1, T2 = 64, 256           # tokens per device


@pytest.fixture(scope="module")
def readings():
    import jax
    if len(jax.devices()) < 8:
        pytest.skip("needs 8 simulated devices (tests/conftest.py sets them)")
    return [cm.compile_collectives(4, T1, heads=H, head_dim=D, batch=B),
            cm.compile_collectives(4, T2, heads=H, head_dim=D, batch=B),
            cm.compile_collectives(8, T1, heads=H, head_dim=D, batch=B),
            cm.compile_collectives(8, T1, heads=H, head_dim=D, batch=B, mesh_shape=(2, 4))]


@pytest.fixture(scope="module")
def laws(readings):
    return cm.hlo_laws(readings)


# ------------------------------------------------------------------ what the HLO says


def test_tree_is_three_allreduces_of_bd_plus_2bnh_at_two_device_counts(readings, laws):
    """The paper's count: one max and two sums, b·n_h + b·n_h + b·d float32 values,
    read from the programs compiled for 4 and for 8 devices."""
    for r in (readings[0], readings[2]):
        ops = r["methods"]["tree"]
        assert {op["kind"] for op in ops} == {"all-reduce"}
        assert sorted(op["operand_bytes"] for op in ops for _ in range(op["count"])) == \
            [4 * B * H, 4 * B * H, 4 * B * H * D]
        assert all(op["group_size"] == r["devices"] for op in ops)
    assert laws["all_hold"]
    assert laws["tree_same_at_two_lengths"] and laws["tree_same_at_two_device_counts"]


def test_tree_on_a_2d_mesh_reduces_inside_nodes_then_across(laws):
    levels = [(level, g) for level, g, _ in laws["tree_2d_allreduces"]]
    assert sorted(levels) == [("local", 4)] * 3 + [("node", 2)] * 3


def test_ring_sends_p_minus_1_blocks_of_its_shard(readings, laws):
    assert laws["ring_permute_count_is_p_minus_1"] and laws["ring_permute_bytes_proportional_to_t"]
    # K and V each: b·t·h·d float32 per hop
    assert laws["ring_permute_bytes_per_token"] == [4.0 * B * H * D] * 2
    assert laws["ring_permutes_per_tensor"] == [[3], [3], [7]]


def test_allgather_bytes_grow_with_p_not_t(laws):
    assert laws["allgather_proportional_to_p"] and laws["allgather_same_at_two_lengths"]
    assert sorted(laws["allgather_bytes_per_device"]) == [4.0 * B * H, 4.0 * B * H * D]


def test_scaling_refuses_readings_that_break_its_laws(readings):
    broken = [dict(r, methods=dict(r["methods"])) for r in readings]
    broken[1]["methods"]["tree"] = [dict(op, operand_bytes=op["operand_bytes"] * 2)
                                    for op in readings[1]["methods"]["tree"]]
    laws = cm.hlo_laws(broken)
    assert not laws["tree_same_at_two_lengths"] and not laws["all_hold"]
    with pytest.raises(ValueError, match="laws"):
        cm.programs_at_scale(laws, cm.Workload(batch=B, heads=H, head_dim=D), cm.Cluster())


def test_programs_at_scale_ring_block_is_kv_shard(laws):
    w = cm.Workload(tokens=1_024_000, batch=B, heads=H, head_dim=D, kv_itemsize=2)
    c = cm.Cluster(gpus=64)
    prog = cm.programs_at_scale(laws, w, c)
    perm = [op for op in prog["ring"] if op.kind == "collective-permute"]
    assert [op.count for op in perm] == [63, 63]
    assert sum(op.bytes for op in perm) == w.shard_bytes(64)      # K and V of one shard per hop
    assert sorted(op.bytes for op in prog["tree"]) == [4 * B * H, 4 * B * H, 4 * B * H * D]
    assert sorted(op.bytes for op in prog["allgather"]) == [64 * 4 * B * H, 64 * 4 * B * H * D]


# ------------------------------------------------------------------ the model's behaviour


def test_tree_comm_constant_in_tokens_ring_comm_linear(laws):
    c = cm.Cluster()
    out = {}
    for tokens in (1_280_000, 2_560_000, 5_120_000):
        w = cm.Workload(tokens=tokens, batch=B, heads=H, head_dim=D)
        out[tokens] = cm.predict(w, c, cm.programs_at_scale(laws, w, c), cm.roofline_compute_time(w, c))
    tree = [out[t]["tree"]["comm"] for t in sorted(out)]
    assert tree[0] == tree[1] == tree[2] > 0
    ring = [out[t]["ring"]["comm"] for t in sorted(out)]
    # affine in T with a positive slope: doubling T twice adds twice as much the second time
    assert ring[2] - ring[1] == pytest.approx(2 * (ring[1] - ring[0]), rel=1e-9) and ring[1] > ring[0]


def test_scaling_refuses_other_head_shapes(laws):
    """The tree's bytes depend on b, n_h, d: the programs must be compiled at the shapes
    being predicted."""
    with pytest.raises(ValueError, match="compiled"):
        cm.programs_at_scale(laws, cm.Workload(heads=16, head_dim=128), cm.Cluster())


def test_free_network_leaves_local_compute(laws):
    """Zero latencies and infinite bandwidth: tree and all-gather both cost one shard's
    compute; the ring costs p shards (it attends to every block)."""
    c = cm.Cluster(gpus=32, intra_latency_s=0, inter_latency_s=0, inter_latency_ring_s=0,
                   collective_launch_s=0, kernel_launch_s=0, intra_bytes_per_s=math.inf,
                   inter_bytes_per_s=math.inf, hbm_bytes_per_s=math.inf)
    w = cm.Workload(batch=B, heads=H, head_dim=D)
    pred = cm.predict(w, c, cm.programs_at_scale(laws, w, c), compute_s=1e-3)
    assert pred["tree"]["total"] == pytest.approx(1e-3)
    assert pred["allgather"]["total"] == pytest.approx(1e-3)
    assert pred["allgather"]["over_tree"] == pytest.approx(1.0)
    assert pred["ring"]["total"] == pytest.approx(32e-3)
    assert pred["ring_reference_overlap"]["total"] == pytest.approx(32e-3)


def test_hierarchical_allreduce_closed_form():
    c = cm.Cluster(intra_latency_s=1e-6, intra_bytes_per_s=1e9, inter_latency_s=1e-5,
                   inter_bytes_per_s=1e8, collective_launch_s=2e-6)
    s = 1000.0
    # 8 per node: 3 NVLink steps of 1 us + 1 us; 16 nodes: 4 network steps of 10 us + 10 us; up and down
    assert cm.tree_allreduce_time(s, c, local=8, nodes=16) == pytest.approx(2e-6 + 2 * (3 * 2e-6 + 4 * 2e-5))
    assert cm.tree_allreduce_time(s, c, local=8, nodes=1) == pytest.approx(2e-6 + 2 * 3 * 2e-6)
    assert cm.tree_allreduce_time(s, c, local=1, nodes=3) == pytest.approx(2e-6 + 2 * 2 * 2e-5)  # ceil(log2 3)
    assert cm.tree_allreduce_time(s, c, local=1, nodes=1) == 0.0
    # the flat program's all-reduce over 128 GPUs = the 2-D program's local + node all-reduces,
    # less one collective launch
    big = dataclasses.replace(c, gpus=128)
    flat = cm.collective_time(cm.Collective("all-reduce", 1, s), big)
    two = sum(cm.collective_time(cm.Collective("all-reduce", 1, s, lv), big) for lv in ("local", "node"))
    assert two - flat == pytest.approx(c.collective_launch_s)


def test_ring_allgather_and_hop_closed_form():
    c = cm.Cluster(gpus=16, intra_latency_s=1e-6, inter_latency_ring_s=3e-6, inter_bytes_per_s=1e9,
                   intra_bytes_per_s=1e10, collective_launch_s=5e-6)
    # 16 GPUs in 2 nodes: 15 ring steps, 1 of them across the network; 15/16 of 1600 B at 1 GB/s
    assert cm.ring_allgather_time(1600.0, c, gpus=16) == pytest.approx(5e-6 + 14e-6 + 3e-6 + 1.5e-6)
    assert cm.ring_hop_time(1e6, c, gpus=16) == pytest.approx(3e-6 + 1e-3)        # slowest hop: network
    assert cm.ring_hop_time(1e6, c, gpus=8) == pytest.approx(1e-6 + 1e-4)         # one node: NVLink


def test_ring_overlap_hides_the_smaller_of_compute_and_send():
    c = cm.Cluster(gpus=4, gpus_per_node=4, intra_latency_s=0, intra_bytes_per_s=1e6, kernel_launch_s=0)
    # send 2 ms per hop, compute 3 ms per block
    serial = cm.ring_time(c, hop_bytes=2000, compute_s=3e-3, rounds=4, sends=3, overlap=False)
    hidden = cm.ring_time(c, hop_bytes=2000, compute_s=3e-3, rounds=4, sends=4, overlap=True)
    assert serial["total"] == pytest.approx(4 * 3e-3 + 3 * 2e-3)
    assert hidden["total"] == pytest.approx(4 * 3e-3)
