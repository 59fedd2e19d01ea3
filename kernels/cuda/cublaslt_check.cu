// Built only when cuBLASLt's own header is found: the declarations in cublaslt_api.h must match it.
#include <cublasLt.h>

#include "cublaslt_api.h"

static_assert(mclt::R_32F == CUDA_R_32F, "CUDA_R_32F");
static_assert(mclt::R_16BF == CUDA_R_16BF, "CUDA_R_16BF");
static_assert(mclt::COMPUTE_32F == CUBLAS_COMPUTE_32F, "CUBLAS_COMPUTE_32F");
static_assert(mclt::OP_N == CUBLAS_OP_N && mclt::OP_T == CUBLAS_OP_T, "cublasOperation_t");
static_assert(mclt::DESC_TRANSA == CUBLASLT_MATMUL_DESC_TRANSA, "TRANSA");
static_assert(mclt::DESC_TRANSB == CUBLASLT_MATMUL_DESC_TRANSB, "TRANSB");
static_assert(mclt::PREF_MAX_WORKSPACE == CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, "MAX_WORKSPACE_BYTES");
static_assert(mclt::PREF_MIN_ALIGN_A == CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, "MIN_ALIGNMENT_A");
static_assert(mclt::PREF_MIN_ALIGN_B == CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, "MIN_ALIGNMENT_B");
static_assert(mclt::PREF_MIN_ALIGN_C == CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, "MIN_ALIGNMENT_C");
static_assert(mclt::PREF_MIN_ALIGN_D == CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, "MIN_ALIGNMENT_D");
static_assert(sizeof(mclt::algo_t) == sizeof(cublasLtMatmulAlgo_t), "cublasLtMatmulAlgo_t");
static_assert(sizeof(mclt::heuristic_t) == sizeof(cublasLtMatmulHeuristicResult_t), "heuristic result");
