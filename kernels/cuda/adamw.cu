// Fused AdamW over a flat fp32 buffer: one launch per buffer, one block per chunk of a parameter
// segment. Reads grad, master, exp_avg, exp_avg_sq; writes master, exp_avg, exp_avg_sq and the model
// copy (bf16 or fp32). The arithmetic is torch.optim.AdamW's, written in the order megacrystal's
// foreach implementation (megacrystal/optim/adamw.py) applies it, one rounding per foreach op:
//   g = g * clip;  p = p * decay;  m = lerp(m, g, 1 - b1);  v = v * b2;  v = v + (1 - b2) * g * g
//   d = sqrt(v);  d = d / sqrt(bc2);  d = d + eps;  p = p + step_size * (m / d)
#include <cuda_bf16.h>

#include <cstdint>

#include "common.cuh"

namespace {

constexpr int kThreads = 512;

struct Out {
  float p, m, v;
};

__device__ __forceinline__ float lerp_torch(float self, float end, float w) {
  // torch's lerp: the small-weight form for |w| < 0.5, else the one anchored at `end`
  return fabsf(w) < 0.5f ? self + w * (end - self) : end - (end - self) * (1.0f - w);
}

__device__ __forceinline__ Out update(float p, float g, float m, float v, const mc_adamw_args& a,
                                      const mc_adamw_group& grp) {
  p = p * grp.decay;
  m = lerp_torch(m, g, a.one_minus_beta1);
  v = v * a.beta2;
  v = v + a.one_minus_beta2 * g * g;
  float d = sqrtf(v);
  d = d / grp.bc2_sqrt;
  d = d + grp.eps;
  p = p + grp.step_size * (m / d);
  return {p, m, v};
}

__device__ __forceinline__ void store_copy(void* copy, int kind, int64_t i, float p) {
  if (kind == MC_COPY_BF16) {
    static_cast<__nv_bfloat16*>(copy)[i] = __float2bfloat16_rn(p);
  } else if (kind == MC_COPY_FP32) {
    static_cast<float*>(copy)[i] = p;
  }
}

// One element, scalar loads and stores (unaligned heads and tails); false when its gradient is not finite.
__device__ __forceinline__ bool step_one(int64_t i, float* __restrict__ master, const float* __restrict__ grad,
                                         float* __restrict__ exp_avg, float* __restrict__ exp_avg_sq,
                                         void* __restrict__ copy, int kind, const mc_adamw_args& a,
                                         const mc_adamw_group& grp) {
  const float g = grad[i] * a.clip_coef;
  const Out o = update(master[i], g, exp_avg[i], exp_avg_sq[i], a, grp);
  master[i] = o.p;
  exp_avg[i] = o.m;
  exp_avg_sq[i] = o.v;
  store_copy(copy, kind, i, o.p);
  return isfinite(g);
}

__global__ void __launch_bounds__(kThreads)
    adamw_kernel(float* __restrict__ master, const float* __restrict__ grad, float* __restrict__ exp_avg,
                 float* __restrict__ exp_avg_sq, void* __restrict__ copy, int kind, const int64_t* __restrict__ chunks,
                 const mc_adamw_args a, int vector_ok, int* __restrict__ nonfinite) {
  const int64_t off = chunks[3 * blockIdx.x], len = chunks[3 * blockIdx.x + 1];
  const mc_adamw_group grp = a.groups[chunks[3 * blockIdx.x + 2]];
  bool bad = false;
  const int64_t align = (4 - (off & 3)) & 3;
  const int64_t head = vector_ok ? (len < align ? len : align) : len;
  for (int64_t j = threadIdx.x; j < head; j += blockDim.x) {  // scalar: unaligned start (or everything)
    bad |= !step_one(off + j, master, grad, exp_avg, exp_avg_sq, copy, kind, a, grp);
  }
  if (vector_ok) {
    const int64_t base = off + head, nvec = (len - head) / 4;
    for (int64_t q = threadIdx.x; q < nvec; q += blockDim.x) {  // 16-byte loads and stores
      const int64_t i = base + 4 * q;
      const float4 g4 = *reinterpret_cast<const float4*>(grad + i);
      const float4 p4 = *reinterpret_cast<const float4*>(master + i);
      const float4 m4 = *reinterpret_cast<const float4*>(exp_avg + i);
      const float4 v4 = *reinterpret_cast<const float4*>(exp_avg_sq + i);
      const float gs[4] = {g4.x * a.clip_coef, g4.y * a.clip_coef, g4.z * a.clip_coef, g4.w * a.clip_coef};
      const float ps[4] = {p4.x, p4.y, p4.z, p4.w}, ms[4] = {m4.x, m4.y, m4.z, m4.w}, vs[4] = {v4.x, v4.y, v4.z, v4.w};
      float po[4], mo[4], vo[4];
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        bad |= !isfinite(gs[k]);
        const Out o = update(ps[k], gs[k], ms[k], vs[k], a, grp);
        po[k] = o.p;
        mo[k] = o.m;
        vo[k] = o.v;
      }
      *reinterpret_cast<float4*>(master + i) = make_float4(po[0], po[1], po[2], po[3]);
      *reinterpret_cast<float4*>(exp_avg + i) = make_float4(mo[0], mo[1], mo[2], mo[3]);
      *reinterpret_cast<float4*>(exp_avg_sq + i) = make_float4(vo[0], vo[1], vo[2], vo[3]);
      if (kind == MC_COPY_BF16) {
        __nv_bfloat162 lo = __floats2bfloat162_rn(po[0], po[1]), hi = __floats2bfloat162_rn(po[2], po[3]);
        __nv_bfloat162* dst = reinterpret_cast<__nv_bfloat162*>(static_cast<__nv_bfloat16*>(copy) + i);
        dst[0] = lo;
        dst[1] = hi;
      } else if (kind == MC_COPY_FP32) {
        *reinterpret_cast<float4*>(static_cast<float*>(copy) + i) = make_float4(po[0], po[1], po[2], po[3]);
      }
    }
    for (int64_t j = head + 4 * nvec + threadIdx.x; j < len; j += blockDim.x) {  // scalar tail
      bad |= !step_one(off + j, master, grad, exp_avg, exp_avg_sq, copy, kind, a, grp);
    }
  }
  if (__syncthreads_or(bad) && threadIdx.x == 0) *nonfinite = 1;
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

}  // namespace

extern "C" int mc_adamw_flat(float* master, const float* grad, float* exp_avg, float* exp_avg_sq, void* model_copy,
                             int copy_kind, const int64_t* chunks, int n_chunks, const mc_adamw_args* args,
                             int* nonfinite, void* stream) {
  if (args == nullptr || args->n_groups < 1 || args->n_groups > MC_ADAMW_MAX_GROUPS) {
    mc_set_error("mc_adamw_flat", "n_groups must be in [1, MC_ADAMW_MAX_GROUPS]");
    return 2;
  }
  if (copy_kind != MC_COPY_NONE && copy_kind != MC_COPY_BF16 && copy_kind != MC_COPY_FP32) {
    mc_set_error("mc_adamw_flat", "copy_kind must be MC_COPY_NONE, MC_COPY_BF16 or MC_COPY_FP32");
    return 2;
  }
  if (copy_kind != MC_COPY_NONE && model_copy == nullptr) {
    mc_set_error("mc_adamw_flat", "model_copy is null but a copy was asked for");
    return 2;
  }
  if (n_chunks <= 0) return 0;
  // the vector path needs every buffer's element 0 on a 16-byte boundary (then element 4k is too);
  // the bf16 copy needs 8 bytes at element 4k, which its 16-byte base gives
  const int vector_ok = aligned16(master) && aligned16(grad) && aligned16(exp_avg) && aligned16(exp_avg_sq) &&
                        (copy_kind == MC_COPY_NONE || aligned16(model_copy));
  adamw_kernel<<<n_chunks, kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      master, grad, exp_avg, exp_avg_sq, model_copy, copy_kind, chunks, *args, vector_ok, nonfinite);
  return mc_check_cuda("mc_adamw_flat launch", cudaGetLastError());
}
