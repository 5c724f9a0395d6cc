"""A fixed sample of the onnx node tests through the cleanup pipeline (benchmarks/node_suite.py).

The sample mixes cases every cleanup pass rewrites (the ``*_expanded`` function bodies are full
of Identity, Shape, CastLike and constant arithmetic) with plain single-op cases that must stay
unchanged. Goal, as for the whole suite: no changed outputs, no crashes.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import node_suite

SAMPLE = [
    # rewritten by several passes
    "test_layer_normalization_default_axis_expanded",
    "test_layer_normalization_4d_axis3_expanded_ver18",
    "test_affine_grid_2d_expanded",
    "test_attention_4d_expanded",
    "test_attention_4d_fp16_expanded",
    "test_attention_3d_gqa_causal_expanded",
    "test_attention_4d_gqa_scaled_expanded",
    "test_attention_local_window_ext_cache_rank3_head_mask_expanded",
    "test_attention_4d_diff_heads_mask4d_padded_kv_expanded",
    "test_rms_normalization_4d_axis3_expanded",
    "test_rotary_embedding_3d_input_expanded",
    "test_causal_conv_with_state_basic_expanded",
    "test_causal_conv_with_state_decode_step_expanded",
    "test_center_crop_pad_crop_and_pad_expanded",
    "test_blackmanwindow_expanded",
    "test_hammingwindow_expanded",
    "test_dynamicquantizelinear_expanded",
    "test_leakyrelu_example_expanded",
    "test_prelu_broadcast_expanded",
    "test_nllloss_NCd1d2_with_weight_reduction_sum_expanded",
    "test_sce_none_weights_log_prob_expanded",
    "test_linear_attention_gated_expanded",
    # the ops the passes target, with graph inputs (mostly left alone)
    "test_identity",
    "test_dropout_default",
    "test_dropout_default_mask",
    "test_training_dropout",
    "test_cast_FLOAT_to_DOUBLE",
    "test_reshape_reordered_all_dims",
    "test_expand_dim_unchanged",
    "test_slice_default_axes",
    "test_constant_pad",
    "test_shape",
    "test_shape_start_1_end_negative_1",
    "test_size_example",
    "test_concat_1d_axis_0",
    "test_transpose_default",
    "test_constantofshape_int_zeros",
    "test_range_float_type_positive_delta_expanded",
    "test_if",
    "test_loop11",
]


@pytest.fixture(scope="module")
def node_dir() -> Path:
    return node_suite.generate(node_suite.DEFAULT_DIR, names=SAMPLE)


def test_sample_no_changed_outputs_no_crashes(node_dir: Path) -> None:
    cases = [node_dir / n for n in SAMPLE]
    missing = [c.name for c in cases if not (c / "model.onnx").exists()]
    assert not missing, f"node tests not in this onnx wheel: {missing}"
    summary = node_suite.run_suite(cases, ["cleanup"])
    bad = [
        (r["name"], r["status"], r["detail"])
        for r in summary["results"]
        if r["status"] in ("changed", "crashed")
    ]
    assert not bad
    counts = summary["counts"]
    assert counts["optimized"] >= 20, counts  # the expanded cases really are rewritten
    assert counts["unchanged"] >= 10, counts
    assert summary["rolled_back"] == 0


def test_classifies_a_broken_pipeline_as_crashed(node_dir: Path, monkeypatch) -> None:
    """The harness itself: an exception escaping the manager is counted, not raised."""
    import onnxopt.pipeline as pipeline

    def boom(self, model, feeds=None, calibration=None):
        raise RuntimeError("boom")

    monkeypatch.setattr(pipeline.PassManager, "run", boom)
    res = node_suite.run_case(node_dir / "test_identity", ["cleanup"])
    assert res.status == "crashed" and "boom" in res.detail
