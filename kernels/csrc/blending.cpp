// Greedy blending: for t = 0, 1, ... pick the source i maximising w[i] * max(t, 1) - count[i]
// (first maximum wins), record (i, count[i]), count[i] += 1. Same floating-point expression and
// tie rule as megatron-core's build_blending_indices, so the arrays are identical.
// Built with -ffp-contract=off (CMakeLists.txt): a fused multiply-add would change ties.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <vector>

#include "native.h"

namespace py = pybind11;

namespace {

inline double max2(double a, double b) { return b > a ? b : a; }

// Up to 8 sources, padded to 8 lanes with weight -inf (error -inf, never the maximum).
// Branch-free: the maximum error by a depth-3 tree, then the first source attaining it -- the
// same source the strict '>' scan picks. Counts are doubles (exact below 2**53), so the only
// loop-carried dependency is the short subtract -> max tree -> pick -> increment chain.
void blend8(const double* w, int k, int16_t* src, int64_t* idx, int64_t begin, int64_t end, int64_t* counts) {
  constexpr double NEG_INF = -std::numeric_limits<double>::infinity();
  double wk[8], c[8], e[8];
  for (int i = 0; i < 8; ++i) wk[i] = i < k ? w[i] : NEG_INF, c[i] = i < k ? static_cast<double>(counts[i]) : 0.0;
  for (int64_t t = begin; t < end; ++t) {
    const double x = t > 1 ? static_cast<double>(t) : 1.0;
    for (int i = 0; i < 8; ++i) e[i] = wk[i] * x - c[i];
    const double m = max2(max2(max2(e[0], e[1]), max2(e[2], e[3])), max2(max2(e[4], e[5]), max2(e[6], e[7])));
    unsigned hit = 0;
    for (int i = 0; i < 8; ++i) hit |= static_cast<unsigned>(e[i] == m) << i;
    const int best = __builtin_ctz(hit);
    src[t - begin] = static_cast<int16_t>(best);
    idx[t - begin] = static_cast<int64_t>(c[best]);
    c[best] += 1.0;
  }
  for (int i = 0; i < k; ++i) counts[i] = static_cast<int64_t>(c[i]);
}

void blend_any(const double* w, int k, int16_t* src, int64_t* idx, int64_t begin, int64_t end, int64_t* c) {
  for (int64_t t = begin; t < end; ++t) {
    const double x = std::max(static_cast<double>(t), 1.0);
    int best = 0;
    double best_err = w[0] * x - static_cast<double>(c[0]);
    for (int i = 1; i < k; ++i) {
      const double err = w[i] * x - static_cast<double>(c[i]);
      if (err > best_err) best_err = err, best = i;
    }
    src[t - begin] = static_cast<int16_t>(best);
    idx[t - begin] = c[best]++;
  }
}

// build_blend(weights float64[k], size) -> (source int16[size], sample int64[size]).
// `start` continues a stream: positions start..start+size-1, `counts` (int64[k]) the counts so far.
py::tuple build_blend(py::array_t<double, py::array::c_style> weights, int64_t size, int64_t start,
                      py::object counts_in) {
  const int k = static_cast<int>(weights.shape(0));
  if (weights.ndim() != 1 || k < 1) throw std::invalid_argument("build_blend: expected a non-empty 1-D weights array");
  if (k > 32767) throw std::invalid_argument("build_blend: at most 32767 sources (int16 source index)");
  if (size < 0 || start < 0) throw std::invalid_argument("build_blend: size and start must be >= 0");
  std::vector<int64_t> counts(k, 0);
  if (!counts_in.is_none()) {
    auto c = counts_in.cast<py::array_t<int64_t, py::array::c_style | py::array::forcecast>>();
    if (c.ndim() != 1 || c.shape(0) != k) throw std::invalid_argument("build_blend: counts must be int64[k]");
    std::copy(c.data(), c.data() + k, counts.begin());
  }
  py::array_t<int16_t> src(size);
  py::array_t<int64_t> idx(size);
  const double* w = weights.data();
  int16_t* s = src.mutable_data();
  int64_t* d = idx.mutable_data();
  {
    py::gil_scoped_release nogil;
    const int64_t b = start, e = start + size;
    if (k <= 8) blend8(w, k, s, d, b, e, counts.data());
    else blend_any(w, k, s, d, b, e, counts.data());
  }
  return py::make_tuple(src, idx);
}

}  // namespace

void register_blending(py::module_& m) {
  m.def("build_blend", &build_blend, py::arg("weights"), py::arg("size"), py::arg("start") = 0,
        py::arg("counts") = py::none(),
        "Greedy blending indices (source int16, sample-within-source int64) as megatron-core builds them.");
}
