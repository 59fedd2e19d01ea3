// Gradient-accumulation fusion: the weight gradient of a linear layer as one cuBLASLt GEMM with bf16
// inputs whose fp32 output is the parameter's main_grad, accumulated (beta = 1). No bf16 weight
// gradient is allocated and no separate add runs.
//
// Row-major main_grad[out, in] += dy[T, out]^T x[T, in]. In cuBLAS's column-major terms the same
// memory is D[in, out] = X[in, T] * DY[out, T]^T + D: A = x (no transpose, ld in), B = dy (transposed,
// ld out), C = D = main_grad (ld in). One plan (layouts + heuristic algorithm) is kept per shape and
// per pointer alignment: a main_grad view sits at any parameter offset of the gradient buffer, so the
// heuristic is told each pointer's real alignment (cuBLASLt otherwise assumes 256 bytes).
#include <dlfcn.h>

#include <cstdio>
#include <map>
#include <mutex>
#include <tuple>

#include "common.cuh"
#include "cublaslt_api.h"

namespace {

struct Api {
  void* lib = nullptr;
  mclt::handle_t handle = nullptr;
  mclt::create_fn create;
  mclt::desc_create_fn desc_create;
  mclt::desc_set_fn desc_set;
  mclt::desc_destroy_fn desc_destroy;
  mclt::layout_create_fn layout_create;
  mclt::layout_destroy_fn layout_destroy;
  mclt::pref_create_fn pref_create;
  mclt::pref_set_fn pref_set;
  mclt::pref_destroy_fn pref_destroy;
  mclt::heuristic_fn heuristic;
  mclt::matmul_fn matmul;
};

struct Plan {
  mclt::matmul_desc_t desc = nullptr;
  mclt::layout_t a = nullptr, b = nullptr, c = nullptr;
  mclt::algo_t algo;
  size_t workspace = 0;
};

Api g_api;
std::mutex g_mutex;
std::map<std::tuple<int64_t, int64_t, int64_t, uint64_t, uint32_t, uint32_t, uint32_t>, Plan> g_plans;

uint32_t alignment(const void* p) {  // the largest power of two <= 256 dividing the address
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  uint32_t r = 256;
  while (r > 1 && (a % r) != 0) r >>= 1;
  return r;
}

template <typename F>
bool load(F& fn, const char* name) {
  fn = reinterpret_cast<F>(dlsym(g_api.lib, name));
  if (fn == nullptr) mc_set_error("mc_wgrad_init", name);
  return fn != nullptr;
}

int status(const char* where, mclt::status_t s) {
  if (s == 0) return 0;
  char msg[64];
  std::snprintf(msg, sizeof(msg), "cuBLASLt status %d", s);
  mc_set_error(where, msg);
  return 3;
}

int make_plan(int64_t T, int64_t out, int64_t in, uint64_t ws_bytes, uint32_t al_x, uint32_t al_dy, uint32_t al_g,
              Plan& p) {
  const int n = mclt::OP_N, t = mclt::OP_T;
  if (status("matmul desc", g_api.desc_create(&p.desc, mclt::COMPUTE_32F, mclt::R_32F)) ||
      status("transa", g_api.desc_set(p.desc, mclt::DESC_TRANSA, &n, sizeof(n))) ||
      status("transb", g_api.desc_set(p.desc, mclt::DESC_TRANSB, &t, sizeof(t))) ||
      status("layout x", g_api.layout_create(&p.a, mclt::R_16BF, in, T, in)) ||
      status("layout dy", g_api.layout_create(&p.b, mclt::R_16BF, out, T, out)) ||
      status("layout main_grad", g_api.layout_create(&p.c, mclt::R_32F, in, out, in)))
    return 3;
  mclt::preference_t pref = nullptr;
  if (status("preference", g_api.pref_create(&pref))) return 3;
  if (status("preference workspace", g_api.pref_set(pref, mclt::PREF_MAX_WORKSPACE, &ws_bytes, sizeof(ws_bytes))) ||
      status("alignment x", g_api.pref_set(pref, mclt::PREF_MIN_ALIGN_A, &al_x, sizeof(al_x))) ||
      status("alignment dy", g_api.pref_set(pref, mclt::PREF_MIN_ALIGN_B, &al_dy, sizeof(al_dy))) ||
      status("alignment main_grad", g_api.pref_set(pref, mclt::PREF_MIN_ALIGN_C, &al_g, sizeof(al_g))) ||
      status("alignment main_grad", g_api.pref_set(pref, mclt::PREF_MIN_ALIGN_D, &al_g, sizeof(al_g)))) {
    g_api.pref_destroy(pref);
    return 3;
  }
  mclt::heuristic_t h;
  int found = 0;
  const int rc = status("heuristic", g_api.heuristic(g_api.handle, p.desc, p.a, p.b, p.c, p.c, pref, 1, &h, &found));
  g_api.pref_destroy(pref);
  if (rc) return rc;
  if (found < 1) {
    mc_set_error("mc_wgrad_accum_bf16", "cuBLASLt found no algorithm for this shape");
    return 3;
  }
  p.algo = h.algo;
  p.workspace = h.workspace_size;
  return 0;
}

}  // namespace

extern "C" int mc_wgrad_init(const char* path) {
  std::lock_guard<std::mutex> lock(g_mutex);
  if (g_api.handle != nullptr) return 0;
  g_api.lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (g_api.lib == nullptr) {
    mc_set_error("mc_wgrad_init: dlopen", dlerror());
    return 4;
  }
  if (!(load(g_api.create, "cublasLtCreate") && load(g_api.desc_create, "cublasLtMatmulDescCreate") &&
        load(g_api.desc_set, "cublasLtMatmulDescSetAttribute") &&
        load(g_api.desc_destroy, "cublasLtMatmulDescDestroy") &&
        load(g_api.layout_create, "cublasLtMatrixLayoutCreate") &&
        load(g_api.layout_destroy, "cublasLtMatrixLayoutDestroy") &&
        load(g_api.pref_create, "cublasLtMatmulPreferenceCreate") &&
        load(g_api.pref_set, "cublasLtMatmulPreferenceSetAttribute") &&
        load(g_api.pref_destroy, "cublasLtMatmulPreferenceDestroy") &&
        load(g_api.heuristic, "cublasLtMatmulAlgoGetHeuristic") && load(g_api.matmul, "cublasLtMatmul")))
    return 4;
  return status("cublasLtCreate", g_api.create(&g_api.handle));
}

extern "C" int mc_wgrad_accum_bf16(float* main_grad, const void* dy, const void* x, int64_t tokens,
                                   int64_t out_features, int64_t in_features, void* workspace,
                                   uint64_t workspace_bytes, void* stream) {
  if (g_api.handle == nullptr) {
    mc_set_error("mc_wgrad_accum_bf16", "mc_wgrad_init was not called (or failed)");
    return 4;
  }
  if (tokens <= 0 || out_features <= 0 || in_features <= 0) return 0;
  Plan* plan;
  {
    std::lock_guard<std::mutex> lock(g_mutex);
    const uint32_t al_x = alignment(x), al_dy = alignment(dy), al_g = alignment(main_grad);
    auto key = std::make_tuple(tokens, out_features, in_features, workspace_bytes, al_x, al_dy, al_g);
    auto it = g_plans.find(key);
    if (it == g_plans.end()) {
      Plan p;
      if (const int rc = make_plan(tokens, out_features, in_features, workspace_bytes, al_x, al_dy, al_g, p)) return rc;
      it = g_plans.emplace(key, p).first;
    }
    plan = &it->second;
  }
  const float alpha = 1.0f, beta = 1.0f;
  return status("cublasLtMatmul",
                g_api.matmul(g_api.handle, plan->desc, &alpha, x, plan->a, dy, plan->b, &beta, main_grad, plan->c,
                             main_grad, plan->c, &plan->algo, workspace, plan->workspace, stream));
}
