// The GPT sample index: where each packed sample of (seq_length + extra) tokens starts, as
// (position in the document index, token offset in that document). Consecutive samples share
// one token (the last label of one is the first input of the next) when extra == 1.
// Row count and walk follow megatron-core 0.16.1's build_sample_idx exactly.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cmath>
#include <cstdint>
#include <stdexcept>

#include "native.h"

namespace py = pybind11;

namespace {

template <typename T>
py::array_t<T> build_impl(const int32_t* sizes, int64_t num_sizes, const int32_t* doc_idx, int64_t num_docs,
                          int32_t seq_length, int64_t num_samples, int extra) {
  py::array_t<T> out({num_samples + 1, static_cast<int64_t>(2)});
  T* s = out.mutable_data();
  {
    py::gil_scoped_release nogil;
    constexpr int64_t AHEAD = 16;
    int64_t d = 0;       // position in the document index
    int64_t offset = 0;  // token offset inside document d
    s[0] = 0;
    s[1] = 0;
    for (int64_t row = 1; row <= num_samples; ++row) {
      int64_t remaining = static_cast<int64_t>(seq_length) + extra;
      while (remaining != 0) {
        if (d + AHEAD < num_docs) __builtin_prefetch(sizes + doc_idx[d + AHEAD], 0, 0);
        const int64_t doc_len = static_cast<int64_t>(sizes[doc_idx[d]]) - offset;
        remaining -= doc_len;
        if (remaining <= 0) {
          offset += remaining + doc_len - extra;
          remaining = 0;
        } else if (d == num_docs - 1) {  // ran out of documents: a partial last sample
          offset = static_cast<int64_t>(sizes[doc_idx[d]]) - extra;
          break;
        } else {
          ++d;
          offset = 0;
        }
      }
      s[2 * row] = static_cast<T>(d);
      s[2 * row + 1] = static_cast<T>(offset);
    }
  }
  (void)num_sizes;
  return out;
}

// build_sample_index(sizes int32[], doc_idx int32[], seq_length, num_epochs, tokens_per_epoch,
//                    drop_last_partial, extra, wide) -> int32 or int64 [num_samples + 1, 2]
py::array build_sample_index(py::array_t<int32_t, py::array::c_style> sizes,
                             py::array_t<int32_t, py::array::c_style> doc_idx, int32_t seq_length,
                             int32_t num_epochs, int64_t tokens_per_epoch, bool drop_last_partial, int extra,
                             bool wide) {
  if (seq_length < 2) throw std::invalid_argument("build_sample_index: seq_length must be > 1");
  if (num_epochs < 1) throw std::invalid_argument("build_sample_index: num_epochs must be >= 1");
  if (tokens_per_epoch < 2) throw std::invalid_argument("build_sample_index: tokens_per_epoch must be > 1");
  if (extra != 0 && extra != 1) throw std::invalid_argument("build_sample_index: extra must be 0 or 1");
  const int64_t total = static_cast<int64_t>(num_epochs) * tokens_per_epoch - extra;
  int64_t num_samples = drop_last_partial ? total / seq_length
                                          : static_cast<int64_t>(std::ceil(float(total) / seq_length));
  const int32_t* sz = sizes.data();
  const int32_t* di = doc_idx.data();
  const int64_t nd = doc_idx.shape(0), ns = sizes.shape(0);
  for (int64_t k = 0; k < nd; ++k)  // cheap next to the walk; guards the unchecked reads below
    if (di[k] < 0 || di[k] >= ns) throw std::out_of_range("build_sample_index: document index entry out of range");
  if (wide) return build_impl<int64_t>(sz, ns, di, nd, seq_length, num_samples, extra);
  return build_impl<int32_t>(sz, ns, di, nd, seq_length, num_samples, extra);
}

}  // namespace

void register_sample_index(py::module_& m) {
  m.def("build_sample_index", &build_sample_index, py::arg("sizes"), py::arg("doc_idx"), py::arg("seq_length"),
        py::arg("num_epochs"), py::arg("tokens_per_epoch"), py::arg("drop_last_partial") = true,
        py::arg("extra") = 1, py::arg("wide") = false,
        "GPT sample index [num_samples + 1, 2] (document-index position, offset), as megatron-core builds it.");
}
