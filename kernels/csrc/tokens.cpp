// Packing tokenized documents: Python lists of ids -> one flat array + lengths, in one pass,
// without a Python-level loop per token. Used by the preprocessing writer.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "native.h"

namespace py = pybind11;

template <typename T>
static py::tuple pack_impl(const py::list& docs, int64_t eod, int64_t max_id) {
  const size_t n = docs.size();
  size_t total = 0;
  for (size_t i = 0; i < n; ++i) total += PyList_GET_SIZE(docs[i].ptr()) + (eod >= 0 ? 1 : 0);
  py::array_t<T> flat(total);
  py::array_t<int32_t> lengths(n);
  T* out = flat.mutable_data();
  int32_t* len = lengths.mutable_data();
  size_t pos = 0;
  for (size_t i = 0; i < n; ++i) {
    PyObject* doc = PyList_GET_ITEM(docs.ptr(), i);
    if (!PyList_Check(doc)) throw std::invalid_argument("pack_ids: document " + std::to_string(i) + " is not a list");
    const Py_ssize_t m = PyList_GET_SIZE(doc);
    for (Py_ssize_t j = 0; j < m; ++j) {
      long long v = PyLong_AsLongLong(PyList_GET_ITEM(doc, j));
      if (v == -1 && PyErr_Occurred()) throw py::error_already_set();
      if (v < 0 || v > max_id)
        throw std::out_of_range("pack_ids: token id " + std::to_string(v) + " in document " + std::to_string(i) +
                                " does not fit the output dtype");
      out[pos++] = static_cast<T>(v);
    }
    len[i] = static_cast<int32_t>(m + (eod >= 0 ? 1 : 0));
    if (eod >= 0) out[pos++] = static_cast<T>(eod);
  }
  return py::make_tuple(flat, lengths);
}

// pack_ids(docs: list[list[int]], itemsize: int (2 -> uint16, 4 -> int32), eod: int (-1: none))
static py::tuple pack_ids(py::list docs, int itemsize, int64_t eod) {
  if (!PyList_Check(docs.ptr())) throw std::invalid_argument("pack_ids: expected a list of lists");
  if (itemsize == 2) return pack_impl<uint16_t>(docs, eod, 65535);
  if (itemsize == 4) return pack_impl<int32_t>(docs, eod, 2147483647LL);
  throw std::invalid_argument("pack_ids: itemsize must be 2 or 4");
}

void register_tokens(py::module_& m) {
  m.def("pack_ids", &pack_ids, py::arg("docs"), py::arg("itemsize"), py::arg("eod") = -1,
        "Concatenate lists of token ids (+ optional EOD each) into (flat array, int32 lengths).");
}
