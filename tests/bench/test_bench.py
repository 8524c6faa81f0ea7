"""Smoke test of the benchmark runner: the smallest P1 case end to end, so `dc.bench` cannot rot.

Numbers from the tiny shape mean nothing; only the output structure and that ratios are positive and finite
are checked. Outputs go to `tmp_path`, never to `docs/`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from dc.bench.__main__ import main

from dc_testing import ROOT


@pytest.fixture(autouse=True)
def _restore_threads():
    """`main` sets torch's thread count; give the rest of the test session its own back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _positive_finite(x: object) -> bool:
    return isinstance(x, float) and math.isfinite(x) and x > 0


def test_quick_tiny_p1_writes_markdown_and_json(tmp_path: Path) -> None:
    out = tmp_path / "bench.md"
    assert (
        main(
            [
                "--mode",
                "quick",
                "--tiny",
                "--only",
                "P1,P2,P5,P6",
                "--warmup",
                "0",
                "--repeats",
                "1",
                "--threads",
                "1",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    data = json.loads(out.with_suffix(".json").read_text())
    for key in ("command", "date", "platform", "cpu_count", "device", "torch"):
        assert data["meta"][key] not in (None, "")
    figures = {f["figure"]: f for f in data["figures"]}
    assert set(figures) == {"P1", "P2", "P5", "P6"}

    p1 = figures["P1"]
    assert p1["status"] == "measured"
    assert set(p1["ratios"]) == {"sci", "dci", "sti"}
    for r in p1["ratios"].values():
        assert _positive_finite(r["median"]) and _positive_finite(r["min"])
    for side in ("mlp", "sci", "dci", "sti"):
        s = p1["times_s"][side]
        assert s["min"] <= s["median"] <= s["max"] and len(s["samples"]) == 1
    p5 = figures["P5"]  # measured on CPU (tokens/s, TFLOP/s); MFU only with a GPU and an explicit peak
    assert p5["status"] == "measured" and p5["rates"]["mfu"] is None
    rates = p5["rates"]
    tokens = 48  # the tiny P5 shape: batch 1, seq 48, no padding
    assert rates["tokens_per_s"] == pytest.approx(tokens / p5["times_s"]["dci"]["median"])
    assert rates["model_tflops_per_s"] == pytest.approx(rates["flops_per_step"] / p5["times_s"]["dci"]["median"] / 1e12)
    assert figures["P2"]["status"] in ("recorded", "missing")
    assert figures["P6"]["status"] in ("recorded", "missing")

    md = out.read_text()
    assert md.startswith("# Benchmarks")
    for needle in ("### P1:", "| sci |", "| dci |", "| sti |", "### P5:", "platform", "cpu_count", "Not yet measured"):
        assert needle in md


def test_full_mode_without_cuda_marks_figures_not_measured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "full.md"
    assert main(["--mode", "full", "--only", "P1,P3,P4", "--out", str(out)]) == 0
    data = json.loads(out.with_suffix(".json").read_text())
    assert [f["status"] for f in data["figures"]] == ["not yet measured"] * 3
    assert "measured above" not in out.read_text()


def test_verdict_flags_rounds_that_straddle_the_goal() -> None:
    from dc.bench.report import verdict

    assert "every round agrees" in verdict("<= 1.03", {"median": 1.0, "paired": [0.99, 1.01]})
    assert "inconclusive" in verdict("<= 1.03", {"median": 1.0, "paired": [0.9, 1.1, 1.0]})
    assert "missed" in verdict(">= 3.0", {"median": 2.0, "paired": [2.0]})
    assert verdict(">= 3.0 at 7B on GPU", {"median": 1.5}) == ">= 3.0 at 7B on GPU"


def test_memory_and_padding_figures_tiny(tmp_path: Path) -> None:
    out = tmp_path / "bench.md"
    gpu_part = json.loads(
        (ROOT / "docs" / "gpu" / "gpu_part1.json").read_text()
    )  # a recorded GPU run must survive a CPU rerun
    out.with_suffix(".json").write_text(json.dumps({"meta": {}, "figures": [], "gpu": [gpu_part]}))
    assert main(["--mode", "quick", "--tiny", "--only", "P2,P8,P9,P10", "--threads", "1", "--out", str(out)]) == 0
    figures = {f["figure"]: f for f in json.loads(out.with_suffix(".json").read_text())["figures"]}
    p8 = figures["P8"]["values"]
    assert p8["dense"] >= 12 and p8["chunked"] <= 3  # HF's dense loss vs ours, bytes per token·vocab element
    p9 = figures["P9"]["values"]
    assert p9["full"] < p9["selective"] < p9["none"]
    assert [row[0] for row in figures["P10"]["rows"]][1].startswith("length-grouped")
    p2 = figures["P2"]
    if p2["status"] == "recorded":  # like for like, from the README table: 613/1406 and 261/460 MiB
        assert p2["like_for_like"]["no_micro_batching"]["tensor_peak"] == pytest.approx(613 / 1406)
        assert p2["like_for_like"]["micro_batch_4"]["tensor_peak"] == pytest.approx(261 / 460)
    assert json.loads(out.with_suffix(".json").read_text())["gpu"] == [gpu_part]
    md = out.read_text()
    for needle in ("### P8:", "### P9:", "### P10:", "like for like", "bytes / (T·V)", "### GPU part 1: NVIDIA H100"):
        assert needle in md


@pytest.mark.slow
def test_gpu_mode_runs_tiny_on_cpu(tmp_path: Path) -> None:
    """`--mode gpu --tiny`: the GPU benchmark's code paths at toy shapes, JSON written per section."""
    sections = "calibration,mfu_1b/packed_selective,loss_variants,attention_variants,memory_7b"
    assert main(["--mode", "gpu", "--tiny", "--out-dir", str(tmp_path), "--sections", sections]) == 0
    part1 = json.loads((tmp_path / "gpu_part1.json").read_text())
    part2 = json.loads((tmp_path / "gpu_part2.json").read_text())
    assert {k: v["status"] for k, v in part1["sections"].items()} == {
        "calibration": "ok",
        "mfu_1b/packed_selective": "ok",
    }
    mfu = part1["sections"]["mfu_1b/packed_selective"]
    assert mfu["mfu"] > mfu["mfu_no_attention"] > 0 and mfu["hfu"] == mfu["mfu"]  # selective recomputes no matmul
    assert {k: v["status"] for k, v in part2["sections"].items()} == dict.fromkeys(
        ["loss_variants", "attention_variants", "memory_7b"], "ok"
    )
    out = tmp_path / "bench.md"
    base = tmp_path / "base.json"
    base.write_text(json.dumps({"meta": {"command": "x"}, "figures": []}))
    assert (
        main(
            [
                "--from-json",
                str(base),
                "--gpu-json",
                str(tmp_path / "gpu_part1.json"),
                str(tmp_path / "gpu_part2.json"),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert "### GPU part 1" in out.read_text() and "Loss variants" in out.read_text()


def test_kernel_categories() -> None:
    from dc.bench.gpu import kernel_category

    cases = {
        "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64": "gemm",
        "nvjet_tst_128x256_64x4_1x2_h_bz_coopA_TNT": "gemm",
        "flash_fwd_kernel": "attention",
        "pytorch_flash::flash_bwd_dq_dk_dv_loop_seqk_parallel_kernel": "attention",
        "void at::native::(anonymous namespace)::fused_adamw_kernel": "optimizer",
        "void at::native::multi_tensor_apply_kernel<at::native::FusedAdamMathFunctor<float, 4>>": "optimizer",
        "void at::native::multi_tensor_apply_kernel<at::native::CopyFunctor<c10::BFloat16, float>>": "multi_tensor",
        "void at::native::elementwise_kernel<128, 4, at::native::gpu_kernel_impl_nocast<MulFunctor>>": "elementwise",
        "void at::native::direct_copy_kernel_cuda": "copy",
        "ncclDevKernel_ReduceScatter_Sum_f32_RING_LL": "communication",
        "Memcpy DtoD (Device -> Device)": "copy",
        "triton_tem_fused_mm_0": "gemm",
        "triton_per_fused__to_copy_add_mean_mul_pow_rsqrt_0": "triton",
        "void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<float>>": "elementwise",
    }
    assert {name: kernel_category(name) for name in cases} == cases


def test_device_time_counts_kernels_once_and_skips_annotations() -> None:
    """CUDA: kernel durations per category; annotation ranges (FSDP::*, Optimizer.step) span kernels counted
    already and are left out; CPU-side events are ignored. CPU mode: operator self time."""
    from types import SimpleNamespace

    from torch.autograd import DeviceType

    from dc.bench.gpu import device_time

    def event(name, device, us, annotation=False, self_cpu=0.0):
        span = SimpleNamespace(elapsed_us=lambda: us)
        return SimpleNamespace(
            name=name, device_type=device, time_range=span, is_user_annotation=annotation, self_cpu_time_total=self_cpu
        )

    events = [
        event("sm90_xmma_gemm_bf16", DeviceType.CUDA, 300.0),
        event("nvjet_tst_128x256", DeviceType.CUDA, 100.0),
        event("flash_fwd_kernel", DeviceType.CUDA, 50.0),
        event("fused_adamw_kernel", DeviceType.CUDA, 40.0),
        event("Optimizer.step#AdamW.step", DeviceType.CUDA, 45.0, annotation=True),
        event("FSDP::all_gather_copy_in", DeviceType.CUDA, 12.0, annotation=True),
        event("aten::mm", DeviceType.CPU, 999.0, self_cpu=7.0),
        event("aten::add", DeviceType.CPU, 999.0, self_cpu=3.0),
    ]
    by_category, top = device_time(events, cuda=True)
    assert by_category == {"gemm": 400.0, "attention": 50.0, "optimizer": 40.0}
    assert top == {
        "sm90_xmma_gemm_bf16": 300.0,
        "nvjet_tst_128x256": 100.0,
        "flash_fwd_kernel": 50.0,
        "fused_adamw_kernel": 40.0,
    }
    by_category, _ = device_time(events, cuda=False)
    assert by_category == {"gemm": 7.0, "elementwise": 3.0}


@pytest.mark.slow
def test_gpu_mode_new_mfu_levers_and_profile_run_tiny_on_cpu(tmp_path: Path) -> None:
    """Fused AdamW, a compiled encoder, accumulation to ~128 samples per step (reduced once per step) and the
    profile section run end to end at toy shapes (Inductor on CPU, FSDP2 on a one-process gloo group)."""
    sections = "mfu_1b/packed_none_compiled_fused_enc_acc128,profile_1b"
    assert main(["--mode", "gpu", "--tiny", "--part", "1", "--out-dir", str(tmp_path), "--sections", sections]) == 0
    part1 = json.loads((tmp_path / "gpu_part1.json").read_text())
    assert {k: v["status"] for k, v in part1["sections"].items()} == {
        "mfu_1b/packed_none_compiled_fused_enc_acc128": "ok",
        "profile_1b": "ok",
    }, part1
    acc = part1["sections"]["mfu_1b/packed_none_compiled_fused_enc_acc128"]
    assert acc["optimizer_impl"] == "fused" and acc["micro_batches_per_step"] > 1
    assert acc["graphs_compiled_while_timed"] == 0  # the warm-up saw every distinct step
    assert acc["samples_per_step"] > 4  # more than one micro-batch's at most 4 samples
    assert acc["tokens_per_step"] <= acc["micro_batches_per_step"] * 256  # each micro-batch within its budget
    prof = part1["sections"]["profile_1b"]
    assert prof["timed"] == "cpu operators (self)" and 0 < prof["busy_fraction"] <= 1.0
    assert sum(prof["ms_per_step"].values()) <= prof["wall_ms_per_step"]
    assert "gemm" in prof["ms_per_step"]  # aten::mm / addmm on CPU
    out, base = tmp_path / "bench.md", tmp_path / "base.json"
    base.write_text(json.dumps({"meta": {"command": "x"}, "figures": []}))
    assert main(["--from-json", str(base), "--gpu-json", str(tmp_path / "gpu_part1.json"), "--out", str(out)]) == 0
    md = out.read_text()
    assert "| packed_none_compiled_fused_enc_acc128 | fused |" in md and "Where a step goes" in md


@pytest.mark.parametrize(
    ("argv", "why"),
    [
        (["--only", "P10"], "--only P10 measures part of the report"),
        (["--tiny"], "--tiny numbers are meaningless"),
        (["--mode", "full", "--only", ",".join(f"P{k}" for k in range(1, 11))], "--mode full without a CUDA device"),
    ],
)
def test_the_recorded_report_is_replaced_only_by_a_complete_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, argv: list[str], why: str
) -> None:
    """A partial, tiny or unmeasurable run without `--out` would have replaced docs/benchmarks.md (and its JSON)
    with a report missing the recorded figures: it is refused before anything is measured or written."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    report = tmp_path / "docs" / "benchmarks.md"
    report.parent.mkdir()
    report.write_text("recorded")
    with pytest.raises(SystemExit, match=f"error: not replacing docs/benchmarks.md: {why}.*give --out"):
        main(argv)
    assert report.read_text() == "recorded" and not report.with_suffix(".json").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--only", ""], "error: --only names no figure"),
        (["--only", "P1", "--repeats", "0", "--out", "x.md"], "error: --repeats must be >= 1"),
        (["--from-json", "missing.json"], "error: --from-json missing.json: no such file"),
        (["--from-json", "notes.txt"], "error: --from-json notes.txt: not a JSON file written by dc.bench"),
        (["--from-json", "list.json"], "error: --from-json list.json: not a report JSON"),
        (["--mode", "gpu", "--part", "1"], "error: --mode gpu needs a CUDA device"),
        (["--from-json", "list.json", "--replace-gpu"], "error: --replace-gpu needs --gpu-json"),
        (["--gpu-json", "list.json"], "error: --gpu-json and --replace-gpu go with --from-json"),
    ],
)
def test_bad_arguments_are_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, argv, message) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    (tmp_path / "notes.txt").write_text("# not json\n")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(SystemExit, match=message):
        main(argv)
    assert not (tmp_path / "docs").exists() and not (tmp_path / "gpu_results").exists()


def test_gpu_results_are_added_to_the_recorded_ones(tmp_path: Path) -> None:
    """`--from-json ... --gpu-json` adds parts (one already recorded is not repeated); `--replace-gpu` keeps only
    the given ones."""
    recorded_parts = ROOT / "docs" / "gpu"
    first = json.loads((recorded_parts / "gpu_part2.json").read_text())
    second = json.loads((recorded_parts / "eval_throughput.json").read_text())
    base = tmp_path / "base.json"
    base.write_text(json.dumps({"meta": {"command": "x"}, "figures": [], "gpu": [first]}))
    part = recorded_parts / "eval_throughput.json"
    out = tmp_path / "report.md"

    def recorded() -> list:
        return json.loads(out.with_suffix(".json").read_text()).get("gpu", [])

    assert main(["--from-json", str(base), "--gpu-json", str(part), "--out", str(out)]) == 0
    assert recorded() == [first, second]
    again = tmp_path / "again.json"
    again.write_text(out.with_suffix(".json").read_text())
    assert main(["--from-json", str(again), "--gpu-json", str(part), "--out", str(out)]) == 0
    assert recorded() == [first, second]
    assert main(["--from-json", str(again), "--out", str(out)]) == 0
    assert recorded() == [first, second]
    assert main(["--from-json", str(again), "--gpu-json", str(part), "--replace-gpu", "--out", str(out)]) == 0
    assert recorded() == [second]
