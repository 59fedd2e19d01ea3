// The few cuBLASLt declarations wgrad.cu uses, so that the library builds with nvcc alone (a CUDA
// toolkit without cuBLAS headers, as on the CPU CI machine) and opens libcublasLt at run time.
// Values as in cuBLASLt's public header (cublasLt.h / cublas_api.h / library_types.h, CUDA 11.4+);
// where that header is found at build time, cublaslt_check.cu asserts they agree with it.
#pragma once
#include <cstddef>
#include <cstdint>

namespace mclt {

typedef int status_t;  // cublasStatus_t, 0 = CUBLAS_STATUS_SUCCESS
typedef void* handle_t;
typedef void* matmul_desc_t;
typedef void* layout_t;
typedef void* preference_t;

struct algo_t {
  uint64_t data[8];
};

struct heuristic_t {
  algo_t algo;
  size_t workspace_size;
  status_t state;
  float waves_count;
  int reserved[4];
};

enum : int {
  R_32F = 0,             // cudaDataType CUDA_R_32F
  R_16BF = 14,           // CUDA_R_16BF
  COMPUTE_32F = 68,      // cublasComputeType_t CUBLAS_COMPUTE_32F
  OP_N = 0,              // cublasOperation_t
  OP_T = 1,
  DESC_TRANSA = 3,       // cublasLtMatmulDescAttributes_t
  DESC_TRANSB = 4,
  PREF_MAX_WORKSPACE = 1,  // cublasLtMatmulPreferenceAttributes_t CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES
  PREF_MIN_ALIGN_A = 5,    // CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_{A,B,C,D}_BYTES (uint32_t, default 256)
  PREF_MIN_ALIGN_B = 6,
  PREF_MIN_ALIGN_C = 7,
  PREF_MIN_ALIGN_D = 8,
};

typedef status_t (*create_fn)(handle_t*);
typedef status_t (*desc_create_fn)(matmul_desc_t*, int compute, int scale);
typedef status_t (*desc_set_fn)(matmul_desc_t, int attr, const void* buf, size_t size);
typedef status_t (*desc_destroy_fn)(matmul_desc_t);
typedef status_t (*layout_create_fn)(layout_t*, int type, uint64_t rows, uint64_t cols, int64_t ld);
typedef status_t (*layout_destroy_fn)(layout_t);
typedef status_t (*pref_create_fn)(preference_t*);
typedef status_t (*pref_set_fn)(preference_t, int attr, const void* buf, size_t size);
typedef status_t (*pref_destroy_fn)(preference_t);
typedef status_t (*heuristic_fn)(handle_t, matmul_desc_t, layout_t a, layout_t b, layout_t c, layout_t d,
                                 preference_t, int requested, heuristic_t* results, int* returned);
typedef status_t (*matmul_fn)(handle_t, matmul_desc_t, const void* alpha, const void* a, layout_t, const void* b,
                              layout_t, const void* beta, const void* c, layout_t, void* d, layout_t,
                              const algo_t* algo, void* workspace, size_t workspace_bytes, void* stream);

}  // namespace mclt
