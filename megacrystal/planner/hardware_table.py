"""The per-GPU performance table the planner reads, one entry per `--gpu` name, each figure with its
source. Units as written: TFLOP/s, GB/s (1e9 bytes), GB, microseconds. `hardware.py` turns an entry
into a `Hardware`; a user's `--hardware FILE` uses the same keys.

Kinds of figure, named in each entry's `sources`:
- datasheet: the vendor's published peak rates, memory size and bandwidth, NVLink and network.
- measured: this project's own records in benchmarks/results (the H200's matmul, copy, attention,
  norm kernels; the CPU probe `benchmarks/planner_cpu_probe.py`).
- calibrated: fitted on the validation rows named "calibration" in benchmarks/planner_validation.json
  (docs/planner.md); only the A100 has such rows.
- assumed: no published or measured figure was found; the value and its reason are stated.
"""

from __future__ import annotations

_HOST_NOTE = (
    "assumed: ~2 us device-side gap between queued kernels; ~15 us host dispatch per eager op (queued ahead "
    "of a GPU); 2 ms of host work per step that the device waits for (batch checks and copies before the "
    "first kernel, the gradient-norm and loss synchronisations)"
)
_GPU_HOST = dict(launch_us=2.0, host_us_per_op=15.0, async_launch=True, step_overhead_us=2000.0, memory_reserve_gb=3.0)

_NCCL_NOTE = (
    "assumed: NCCL ring bus bandwidth reaches ~80% of the per-direction NVLink rate inside a node and "
    "~90% of the NIC line rate across nodes (nccl-tests all_reduce_perf busbw on DGX systems); "
    "latency per ring step 1 us (NVLink) / 5 us (InfiniBand)"
)

TABLE: dict[str, dict] = {
    "a100": dict(
        name="NVIDIA A100 SXM4 80GB (DGX A100 / Selene node)",
        memory_gb=80,
        peak_tflops=dict(bf16=312, fp16=312, fp32=19.5, fp64=19.5),
        hbm_gb_s=2039,
        sms=108,
        gemm_tile=[256, 128],
        gemm_efficiency=0.75,
        memory_efficiency=0.65,
        attention_efficiency=dict(flash=0.40, sdpa=0.40),
        nvlink_gb_s=300,
        network_gb_s=25,
        gpus_per_node=8,
        sources=dict(
            peak="datasheet: NVIDIA A100 Tensor Core GPU datasheet (312 TFLOP/s dense BF16/FP16, 80 GB HBM2e, "
            "2,039 GB/s, NVLink 600 GB/s total = 300 GB/s per direction), nvidia.com/en-us/data-center/a100",
            network="datasheet: DGX A100 - eight 200 Gb/s HDR InfiniBand ports for compute, one per GPU "
            "(25 GB/s per GPU per direction); Selene as described in Narayanan et al. SC21 §5",
            gemm_efficiency="calibrated on the A100 calibration rows (docs/planner.md)",
            memory_efficiency="calibrated on the A100 calibration rows (docs/planner.md)",
            attention_efficiency="assumed: FlashAttention-2 fwd+bwd on A100 ~ 40% of peak (Dao 2023, Fig. 4); "
            "the validation rows ran Megatron's unfused attention, which the planner models from GEMMs and "
            "memory traffic instead",
            communication=_NCCL_NOTE,
            host=_HOST_NOTE,
        ),
        **_GPU_HOST,
    ),
    "h100": dict(
        name="NVIDIA H100 SXM5 80GB (DGX/HGX H100)",
        memory_gb=80,
        peak_tflops=dict(bf16=989, fp16=989, fp32=67, fp64=67),
        hbm_gb_s=3350,
        sms=132,
        gemm_tile=[256, 128],
        gemm_efficiency=0.80,
        memory_efficiency=0.78,
        attention_efficiency=dict(flash=0.45, sdpa=0.45),
        nvlink_gb_s=450,
        network_gb_s=50,
        gpus_per_node=8,
        sources=dict(
            peak="datasheet: NVIDIA H100 Tensor Core GPU datasheet, SXM5 (989 TFLOP/s dense BF16, 80 GB HBM3, "
            "3.35 TB/s, NVLink 900 GB/s total = 450 GB/s per direction), nvidia.com/en-us/data-center/h100",
            network="datasheet: DGX H100 - eight ConnectX-7 400 Gb/s NDR ports for compute, one per GPU "
            "(50 GB/s per GPU per direction)",
            gemm_efficiency="measured (same GH100 die as the H200 entry): bf16 matmul 769-790 TFLOP/s, "
            "benchmarks/results/train-throughput-NVIDIA_H200-20261126-052010.json and the project's H100 anchor; "
            "0.80 is that rate over 989 with the tile/wave/K losses of an 8192^3 GEMM taken out",
            memory_efficiency="measured on the H100: device copy ~3.0 TB/s (0.90 of 3.35); norm kernels reach "
            "~87% of copy on the same die (H200 records) -> 0.78",
            attention_efficiency="measured on the same die (H200): cuDNN SDPA causal fwd+bwd 443 TFLOP/s "
            "(kernels-NVIDIA_H200-20261126-035914.json) = 0.45 of 989",
            communication=_NCCL_NOTE,
            host=_HOST_NOTE,
        ),
        **_GPU_HOST,
    ),
    "h200": dict(
        name="NVIDIA H200 SXM 141GB (HGX H200)",
        memory_gb=141,
        peak_tflops=dict(bf16=989, fp16=989, fp32=67, fp64=67),
        hbm_gb_s=4800,
        sms=132,
        gemm_tile=[256, 128],
        gemm_efficiency=0.80,
        memory_efficiency=0.77,
        attention_efficiency=dict(flash=0.45, sdpa=0.45),
        nvlink_gb_s=450,
        network_gb_s=50,
        gpus_per_node=8,
        sources=dict(
            peak="datasheet: NVIDIA H200 Tensor Core GPU datasheet (989 TFLOP/s dense BF16, 141 GB HBM3e, "
            "4.8 TB/s, NVLink 900 GB/s total), nvidia.com/en-us/data-center/h200",
            network="datasheet: HGX H200 reference - one 400 Gb/s NDR port per GPU (50 GB/s per direction)",
            gemm_efficiency="measured: bf16 matmul 768.6 TFLOP/s in the machine block of "
            "train-throughput-NVIDIA_H200-20261126-052010.json (769-773 in the kernel runs) = 0.777 of 989; "
            "0.80 after the tile/wave/K losses the planner applies to that 8192^3 GEMM",
            memory_efficiency="measured: copy 4.15-4.25 TB/s (0.875 of 4.8), LayerNorm/RMSNorm fwd 92% and "
            "fwd+bwd 87-89% of copy (kernels-*, sweep-*) -> 0.77",
            attention_efficiency="measured: cuDNN SDPA, b4 s2048 h32 d128 causal, fwd+bwd 443 TFLOP/s "
            "(kernels-NVIDIA_H200-20261126-035914.json) = 0.45 of 989",
            communication=_NCCL_NOTE,
            host=_HOST_NOTE,
        ),
        **_GPU_HOST,
    ),
    "b200": dict(
        name="NVIDIA B200 (HGX/DGX B200, 1000 W)",
        memory_gb=180,
        peak_tflops=dict(bf16=2250, fp16=2250, fp32=80, fp64=40),
        hbm_gb_s=8000,
        sms=148,
        gemm_tile=[256, 128],
        gemm_efficiency=0.80,
        memory_efficiency=0.78,
        attention_efficiency=dict(flash=0.45, sdpa=0.45),
        nvlink_gb_s=900,
        network_gb_s=50,
        gpus_per_node=8,
        sources=dict(
            peak="datasheet: NVIDIA DGX B200 / HGX B200 (2.25 PFLOP/s dense BF16 per GPU at 1000 W, 1,440 GB "
            "HBM3e per 8 GPUs = 180 GB, 8 TB/s, NVLink 5 1.8 TB/s total = 900 GB/s per direction), "
            "nvidia.com/en-us/data-center/dgx-b200",
            network="datasheet: DGX B200 - eight ConnectX-7 400 Gb/s ports for compute (50 GB/s per GPU)",
            gemm_efficiency="assumed: the Hopper fraction (no B200 measurement here yet)",
            memory_efficiency="assumed: the Hopper fraction",
            attention_efficiency="assumed: the Hopper fraction",
            communication=_NCCL_NOTE,
            host=_HOST_NOTE,
        ),
        **_GPU_HOST,
    ),
    "cpu": dict(
        # one training rank of a 2-rank gloo run on this project's 2-core machines (torchrun: one thread each)
        name="CPU rank, one thread, gloo between two local processes",
        memory_gb=12.6,
        peak_tflops=dict(bf16=0.0953, fp32=0.0953, fp64=0.0476),
        hbm_gb_s=19.49,
        memory_efficiency=1.0,
        sms=1,
        gemm_tile=[1, 1],
        gemm_efficiency=1.0,
        gemm_k_half=4.0,
        gemm_n_half=0.0,
        special_gelem_s=1.1891,
        attention_efficiency=dict(flash=0.24, sdpa=0.24),
        nvlink_gb_s=1.002,
        nvlink_efficiency=1.0,
        nvlink_latency_us=146.8,
        network_gb_s=1.002,
        gpus_per_node=2,
        launch_us=0.0,
        host_us_per_op=27.88,
        async_launch=False,
        step_overhead_us=676.8,
        memory_reserve_gb=0.5,
        sources=dict(
            all="measured: benchmarks/results/planner-probe-cpu-20261207-041209.json (benchmarks/planner_probe.py; "
            "compute figures in thread CPU time, so the machine's other load (average 3.8-4.0 then) does not "
            "count; gloo all-reduce the larger of its best wall time and its CPU time; host time per op from the engine's own train_step on a degenerate model (hidden 16, 16 tokens) per layer and micro-batch, over the planner's op count of a layer; step overhead: that step's fixed part)"
        ),
    ),
}
