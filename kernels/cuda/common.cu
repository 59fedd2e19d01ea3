// Version, build id and the last error message of the library.
#include <cstdio>
#include <cstring>

#include "common.cuh"

#ifndef MC_BUILD_ID
#define MC_BUILD_ID "unknown"
#endif

static thread_local char g_error[512] = "";

void mc_set_error(const char* where, const char* what) { std::snprintf(g_error, sizeof(g_error), "%s: %s", where, what); }

int mc_check_cuda(const char* where, cudaError_t err) {
  if (err == cudaSuccess) return 0;
  mc_set_error(where, cudaGetErrorString(err));
  return 1;
}

extern "C" int mc_abi_version(void) { return MC_ABI_VERSION; }
extern "C" const char* mc_build_id(void) { return MC_BUILD_ID; }
extern "C" const char* mc_last_error(void) { return g_error; }
