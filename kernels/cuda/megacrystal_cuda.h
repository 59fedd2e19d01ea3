/* megacrystal's CUDA kernels: a plain C ABI (pointers, sizes, a cudaStream_t passed as void*),
 * loaded from Python with ctypes (megacrystal/compiled/cuda_kernels.py). No torch headers are needed to build it.
 *
 * Every function returns 0 on success or a non-zero code; mc_last_error() then says what failed. */
#ifndef MEGACRYSTAL_CUDA_H
#define MEGACRYSTAL_CUDA_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define MC_API __attribute__((visibility("default")))
#define MC_ABI_VERSION 1
#define MC_ADAMW_MAX_GROUPS 16

/* Per optimizer group scalars, computed on the host in double exactly as torch.optim.AdamW does
 * and rounded to float (the kernel uses them as torch's foreach ops use their Python scalars). */
typedef struct {
  float decay;     /* 1 - lr*weight_decay (1 when weight_decay == 0) */
  float step_size; /* -lr / (1 - beta1^step) */
  float bc2_sqrt;  /* sqrt(1 - beta2^step) */
  float eps;
} mc_adamw_group;

typedef struct {
  float one_minus_beta1; /* the lerp weight of the first moment */
  float beta2;
  float one_minus_beta2;
  float clip_coef; /* gradients are multiplied by it first (1: no clipping) */
  int n_groups;
  mc_adamw_group groups[MC_ADAMW_MAX_GROUPS];
} mc_adamw_args;

/* Model copy written after the update: none (fp32 parameters are their own masters), bf16 or fp32. */
enum { MC_COPY_NONE = 0, MC_COPY_BF16 = 1, MC_COPY_FP32 = 2 };

MC_API int mc_abi_version(void);
MC_API const char* mc_build_id(void);   /* hash of the CUDA sources this library was built from */
MC_API const char* mc_last_error(void); /* the last failure's message ("" if none) */

/* One AdamW step over one flat fp32 buffer (a ZeRO-1 shard or a whole replicated bucket).
 * chunks: device int64 [n_chunks][3] = (offset, length, group) into the buffers, length <= 65536,
 * chunks never straddle two optimizer groups. nonfinite: device int32, set to 1 when a gradient
 * (after clipping) is inf or nan; never cleared by the kernel. */
MC_API int mc_adamw_flat(float* master, const float* grad, float* exp_avg, float* exp_avg_sq, void* model_copy,
                  int copy_kind, const int64_t* chunks, int n_chunks, const mc_adamw_args* args, int* nonfinite,
                  void* stream);

/* Gradient-accumulation fusion: main_grad[out, in] (fp32, row-major) += dy[tokens, out]^T @ x[tokens, in]
 * (both bf16, row-major), one cuBLASLt GEMM with beta = 1. cuBLASLt is opened at run time from the path
 * given once to mc_wgrad_init (the libcublasLt that torch already loaded). */
MC_API int mc_wgrad_init(const char* cublaslt_path);
MC_API int mc_wgrad_accum_bf16(float* main_grad, const void* dy, const void* x, int64_t tokens, int64_t out_features,
                        int64_t in_features, void* workspace, uint64_t workspace_bytes, void* stream);

#ifdef __cplusplus
}
#endif
#endif
