// megacrystal._native: the C++ helpers of the data layer. Each concept is its own source
// file with a `register_<concept>(py::module_&)` function; this file only binds them.
#include <pybind11/pybind11.h>

#include "native.h"

namespace py = pybind11;

PYBIND11_MODULE(_native, m) {
  m.doc() = "megacrystal native helpers (index building, preprocessing hot loops)";
  m.attr("ABI_VERSION") = 1;
  register_all(m);
}
