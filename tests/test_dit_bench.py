"""`python -m vdemo.bench dit-step`: Wan 2.1 1.3B from its config with random weights, one CFG step per attention
mode. On CPU at a tiny size (diffusers' own Wan test config, tests/pipelines/wan/test_wan.py); the real size is a GPU
measurement, and its one test here is skipped without CUDA."""

from __future__ import annotations

import json

import pytest
import torch

from vdemo.backends.hub.wan_attention import install_grid_attention
from vdemo.bench import (
    WAN_T2V_1_3B_CONFIG,
    bench_dit_step,
    build_wan_transformer,
    dit_step,
    dit_step_inputs,
    main,
)
from vdemo.config import ATTENTION_MODES

TINY = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16, out_channels=16,
            text_dim=32, freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True,
            qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=32)
SIZE = dict(frames=9, height=64, width=96)  # latent (1, 16, 3, 8, 12) -> tokens 3 × 4 × 6 = 72; H != W


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return bench_dit_step(**SIZE, layers=1, repeats=1, config=TINY, text_tokens=8)


def test_every_mode_is_timed_against_full(rows):
    by_mode = {r["mode"]: r for r in rows}
    assert set(by_mode) == set(ATTENTION_MODES) and rows[0]["mode"] == "full"
    assert by_mode["full"]["time_ratio_vs_full"] == 1.0 and by_mode["full"]["pairs_ratio_vs_full"] == 1.0
    for r in rows:
        assert r["ms_per_step"] > 0 and 0 < r["blocks_ms_per_step"] <= r["ms_per_step"]
        assert r["ms_per_step"] < r["projected_ms_per_step"]  # 1 layer built of TINY's 2
        assert r["time_ratio_vs_full"] == pytest.approx(r["ms_per_step"] / by_mode["full"]["ms_per_step"])
        assert r["finite"] and r["peak_mib"] is None and r["device"] == "cpu"  # peak memory is CUDA only


def test_rows_report_the_real_token_count_of_the_requested_size(rows):
    for r in rows:
        assert r["grid"] == [3, 4, 6] and r["tokens"] == 72
        assert r["latent"] == [1, 16, 3, 8, 12] and r["text_tokens"] == 8 and r["layers"] == 1


def test_each_mode_changes_the_output_and_full_does_not(rows):
    by_mode = {r["mode"]: r for r in rows}
    assert by_mode["full"]["max_abs_diff_vs_full"] == 0
    assert all(r["max_abs_diff_vs_full"] > 0 for r in rows if r["mode"] != "full")


def test_full_is_the_stock_model_exactly():
    stock = build_wan_transformer(TINY, seed=0)
    grid = build_wan_transformer(TINY, seed=0)
    install_grid_attention(grid).mode = "full"
    inputs = dit_step_inputs(TINY, **SIZE, text_tokens=8)
    with torch.no_grad():
        assert torch.equal(dit_step(grid, inputs), dit_step(stock, inputs))


def test_the_default_config_is_wan_2_1_t2v_1_3b():
    cfg = WAN_T2V_1_3B_CONFIG
    assert cfg["num_attention_heads"] * cfg["attention_head_dim"] == 1536
    assert (cfg["ffn_dim"], cfg["num_layers"], cfg["text_dim"], cfg["in_channels"]) == (8960, 30, 4096, 16)
    model = build_wan_transformer(device="meta", dtype=torch.bfloat16)  # no memory, no init
    assert 1.40e9 < sum(p.numel() for p in model.parameters()) < 1.44e9  # "1.3B": 1.42e9 parameters
    assert model.blocks[0].ffn.net[0].proj.weight.dtype == torch.bfloat16
    assert model.scale_shift_table.dtype == torch.float32  # _keep_in_fp32_modules, as from_pretrained keeps it


def test_the_cli_refuses_what_a_cpu_cannot_do(capsys):
    if not torch.cuda.is_available():
        assert main(["dit-step", "--device", "cuda"]) == 2
        assert "no CUDA" in capsys.readouterr().err
        assert main(["dit-step"]) == 2  # the real size, 30 layers: a GPU measurement
        assert "--layers 1" in capsys.readouterr().err
    assert main(["dit-step", "--frames", "10", "--layers", "1"]) == 2
    assert "4k+1" in capsys.readouterr().err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_reports_peak_memory_per_mode(capsys):
    assert main(["dit-step", "--layers", "1", "--frames", "9", "--height", "128", "--width", "128", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert all(r["device"] == "cuda" and r["dtype"] == "bfloat16" and r["peak_mib"] > r["weights_mib"] for r in rows)
