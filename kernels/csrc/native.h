#pragma once
#include <pybind11/pybind11.h>

// Each helper file defines one register_* function; add yours here and to register_all.
void register_tokens(pybind11::module_& m);
void register_shuffle(pybind11::module_& m);
void register_sample_index(pybind11::module_& m);
void register_blending(pybind11::module_& m);

inline void register_all(pybind11::module_& m) {
  register_tokens(m);
  register_shuffle(m);
  register_sample_index(m);
  register_blending(m);
}
