// Shared by the library's sources: error reporting.
#pragma once
#include <cuda_runtime.h>

#include "megacrystal_cuda.h"

void mc_set_error(const char* where, const char* what);
int mc_check_cuda(const char* where, cudaError_t err);  // 0 when err is cudaSuccess
