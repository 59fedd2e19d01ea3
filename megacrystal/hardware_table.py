"""The one hardware table of the project: one entry per device kind, each figure with its source.

Read by the planner (`megacrystal plan --gpu KEY`: planner/hardware.py turns an entry into a
`Hardware`; a user's `--hardware FILE` uses the same keys), by the rehearsal (`megacrystal rehearse
--gpu KEY`: the memory a rank must fit) and by the training loop's MFU (the dense peak of the GPU a run
finds, matched by its CUDA device name). It sits below every package (it imports nothing of the
project), so model, parallel, engine and train code can read it without importing the planner.
Units as written: TFLOP/s, GB/s (1e9 bytes), GB (1e9) or GiB (as `torch.cuda.get_device_properties()
.total_memory` reports it, where known), microseconds.

Kinds of figure, named in each entry's `sources`:
- datasheet: the vendor's published peak rates, memory size and bandwidth, NVLink and network.
- measured: this project's own records in benchmarks/results (the H200's matmul, copy, attention,
  norm kernels; the CPU probe `benchmarks/planner_probe.py`).
- calibrated: fitted on the validation rows named "calibration" in benchmarks/planner_validation.json
  (docs/planner.md); only the A100 has such rows.
- assumed: no published or measured figure was found; the value and its reason are stated.

Memory a run can use (`usable_bytes`, the planner's "fits" and the rehearsal's check alike): the
capacity less `memory_reserve_gb` (the CUDA context and cuBLAS workspaces, about 0.5-1 GiB, and NCCL's
buffers, about 1 GiB at these scales: 2 GiB) and less `memory_fragmentation` of the rest (the caching
allocator's rounding and fragmentation: 5%).
"""

from __future__ import annotations

_HOST_NOTE = (
    "assumed: ~2 us device-side gap between queued kernels; ~15 us host dispatch per eager op (queued ahead "
    "of a GPU); 2 ms of host work per step that the device waits for (batch checks and copies before the "
    "first kernel, the gradient-norm and loss synchronisations)"
)
_GPU_HOST = dict(launch_us=2.0, host_us_per_op=15.0, async_launch=True, step_overhead_us=2000.0, memory_reserve_gib=2.0)
_CUDA_MEMORY = (
    "memory_gib: as torch.cuda.get_device_properties().total_memory reports it (H200: this project's runs; "
    "the others as torch reports those boards), a little under the marketed size"
)

_NCCL_NOTE = (
    "assumed: NCCL ring bus bandwidth reaches ~80% of the per-direction NVLink rate inside a node and "
    "~90% of the NIC line rate across nodes (nccl-tests all_reduce_perf busbw on DGX systems); "
    "latency per ring step 1 us (NVLink) / 5 us (InfiniBand)"
)

TABLE: dict[str, dict] = {
    "a100": dict(
        name="NVIDIA A100 SXM4 80GB (DGX A100 / Selene node)",
        device_names=["A100"],
        memory_gib=79.1,
        peak_tflops=dict(bf16=312, fp16=312, tf32=156, fp32=19.5, fp64=19.5),
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
            memory=_CUDA_MEMORY,
        ),
        **_GPU_HOST,
    ),
    "h100": dict(
        name="NVIDIA H100 SXM5 80GB (DGX/HGX H100)",
        device_names=["H100"],
        memory_gib=79.1,
        peak_tflops=dict(bf16=989, fp16=989, tf32=494.5, fp32=67, fp64=67),
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
            memory=_CUDA_MEMORY,
        ),
        **_GPU_HOST,
    ),
    "h200": dict(
        name="NVIDIA H200 SXM 141GB (HGX H200)",
        device_names=["H200"],
        memory_gib=139.8,
        peak_tflops=dict(bf16=989, fp16=989, tf32=494.5, fp32=67, fp64=67),
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
            memory=_CUDA_MEMORY,
        ),
        **_GPU_HOST,
    ),
    "b200": dict(
        name="NVIDIA B200 (HGX/DGX B200, 1000 W)",
        device_names=["B200"],
        memory_gib=178.4,
        peak_tflops=dict(bf16=2250, fp16=2250, tf32=1100, fp32=80, fp64=40),
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
            memory=_CUDA_MEMORY,
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
        nvlink_latency_us=453.6,
        network_latency_us=453.6,
        network_gb_s=1.002,
        gpus_per_node=2,
        launch_us=0.0,
        host_us_per_op=21.24,
        async_launch=False,
        step_overhead_us=676.8,
        memory_reserve_gb=0.5,
        memory_fragmentation=0.0,
        sources=dict(
            calibrated="host_us_per_op (per op the host dispatches, counted by rehearsing the torch kernels) and "
            "the gloo latency per ring step inside a run (nvlink/network_latency_us): fitted on two runs that are "
            "not reported as predictions, the demo on one rank and tp2 at seq 64 / micro-batch 8 "
            "(benchmarks/results/planner-cpu-calibration-20261207-053750.json, benchmarks/planner_cpu_demo.py "
            "--calibrate); the probe measured 146.8 us in isolation, the ranks of a run arrive apart",
            all="measured: benchmarks/results/planner-probe-cpu-20261207-041209.json (benchmarks/planner_probe.py; "
            "compute figures in thread CPU time, so the machine's other load (average 3.8-4.0 then) does not "
            "count; gloo all-reduce the larger of its best wall time and its CPU time; host time per op from the engine's own train_step on a degenerate model (hidden 16, 16 tokens) per layer and micro-batch, over the planner's op count of a layer; step overhead: that step's fixed part)",
        ),
    ),
}

# Boards the training loop meets, with datasheet figures only: the MFU peak, memory and bandwidth are the
# vendor's; the planner costs them with the roofline defaults of planner/hardware.py (no efficiency
# measured or calibrated on them).
_PEAK_ONLY = "datasheet: the vendor's product page / datasheet (dense rates, i.e. half the sparse ones)"
_ROOFLINE = "assumed: the planner's roofline defaults (planner/hardware.py DEFAULTS); nothing measured on it"
for _key, _name, _names, _mem, _peaks, _hbm in (
    ("h100_pcie", "NVIDIA H100 PCIe 80GB", ["H100 PCIe"], 80, (756, 378, 51, 51), 2000),
    ("h100_nvl", "NVIDIA H100 NVL 94GB", ["H100 NVL"], 94, (835, 417.5, 60, 60), 3900),
    ("l40s", "NVIDIA L40S 48GB", ["L40S"], 48, (362, 183, 91.6, None), 864),
    ("a10", "NVIDIA A10 24GB", ["A10"], 24, (125, 62.5, 31.2, None), 600),
    ("l4", "NVIDIA L4 24GB", ["L4"], 24, (121, 60, 30.3, None), 300),
):
    _bf16, _tf32, _fp32, _fp64 = _peaks
    TABLE[_key] = dict(
        name=_name,
        device_names=_names,
        memory_gb=_mem,
        peak_tflops={
            k: v for k, v in dict(bf16=_bf16, fp16=_bf16, tf32=_tf32, fp32=_fp32, fp64=_fp64).items() if v is not None
        },
        hbm_gb_s=_hbm,
        sources=dict(peak=_PEAK_ONLY, efficiencies=_ROOFLINE),
        memory_reserve_gib=2.0,
    )

GiB = 2**30
FRAGMENTATION = 0.05  # the caching allocator's rounding and fragmentation (GPU entries)
GPU_KEYS = tuple(k for k in TABLE if k != "cpu")


def capacity_bytes(entry: dict) -> int:
    """Device memory of an entry: `memory_gib` (as CUDA reports it) where given, else `memory_gb`."""
    if entry.get("memory_gib") is not None:
        return int(float(entry["memory_gib"]) * GiB)
    return int(float(entry["memory_gb"]) * 1e9)


def reserve_bytes(entry: dict) -> int:
    if entry.get("memory_reserve_gib") is not None:
        return int(float(entry["memory_reserve_gib"]) * GiB)
    return int(float(entry.get("memory_reserve_gb", 2 * GiB / 1e9)) * 1e9)


def usable_bytes(entry: dict) -> int:
    """What tensors can use: (capacity - reserve) x (1 - fragmentation)."""
    frag = float(entry.get("memory_fragmentation", FRAGMENTATION))
    return int((capacity_bytes(entry) - reserve_bytes(entry)) * (1 - frag))


def match_device(device_name: str) -> str | None:
    """The entry of a CUDA device name (`torch.cuda.get_device_name()`): the longest `device_names`
    substring it contains wins ("NVIDIA A100-SXM4-80GB" is the a100, not the a10), None if none."""
    best, key = 0, None
    for k, e in TABLE.items():
        for n in e.get("device_names", ()):
            if n in device_name and len(n) > best:
                best, key = len(n), k
    return key


def peak_flops(key: str, precision: str) -> float | None:
    """Dense peak FLOP/s of entry `key` in `precision` (bf16, fp16, tf32, fp32, fp64); None if unstated."""
    v = TABLE[key]["peak_tflops"].get(precision)
    return None if v is None else float(v) * 1e12
