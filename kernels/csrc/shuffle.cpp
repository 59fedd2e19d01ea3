// numpy's legacy `RandomState.shuffle` for 1-D arrays, reproduced exactly and made faster.
//
// The permutation is the one numpy draws: Fisher-Yates from the last element down,
// j = random_interval(i) with MT19937 and its masked rejection draw (32-bit draws while
// i fits in 32 bits, 64-bit draws built from two 32-bit outputs otherwise). The generator
// state comes in as RandomState.get_state()'s key/pos and goes back out, so the caller's
// RandomState continues exactly where numpy's own shuffle would have left it.
//
// Speed: the draws do not depend on the data, so they are computed a few dozen steps ahead
// and the cache line of each future x[j] is prefetched; the swaps themselves stay in order.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>

#include "native.h"

namespace py = pybind11;

namespace {

struct MT19937 {
  static constexpr int N = 624, M = 397;
  uint32_t key[N];
  int pos;

  void reload() {
    constexpr uint32_t UPPER = 0x80000000u, LOWER = 0x7fffffffu, MATRIX_A = 0x9908b0dfu;
    int k = 0;
    for (; k < N - M; ++k) {
      uint32_t y = (key[k] & UPPER) | (key[k + 1] & LOWER);
      key[k] = key[k + M] ^ (y >> 1) ^ (-(y & 1u) & MATRIX_A);
    }
    for (; k < N - 1; ++k) {
      uint32_t y = (key[k] & UPPER) | (key[k + 1] & LOWER);
      key[k] = key[k + (M - N)] ^ (y >> 1) ^ (-(y & 1u) & MATRIX_A);
    }
    uint32_t y = (key[N - 1] & UPPER) | (key[0] & LOWER);
    key[N - 1] = key[M - 1] ^ (y >> 1) ^ (-(y & 1u) & MATRIX_A);
    pos = 0;
  }

  inline uint32_t next32() {
    if (pos >= N) reload();
    uint32_t y = key[pos++];
    y ^= (y >> 11);
    y ^= (y << 7) & 0x9d2c5680u;
    y ^= (y << 15) & 0xefc60000u;
    y ^= (y >> 18);
    return y;
  }

  inline uint64_t next64() {
    uint64_t hi = next32();
    return (hi << 32) | next32();
  }

  // numpy's random_interval: a uniform integer in [0, max] by masked rejection.
  inline uint64_t interval(uint64_t max) {
    if (max == 0) return 0;
    uint64_t mask = max;
    mask |= mask >> 1;
    mask |= mask >> 2;
    mask |= mask >> 4;
    mask |= mask >> 8;
    mask |= mask >> 16;
    mask |= mask >> 32;
    uint64_t v;
    if (max <= 0xffffffffull) {
      while ((v = (next32() & mask)) > max) {
      }
    } else {
      while ((v = (next64() & mask)) > max) {
      }
    }
    return v;
  }
};

template <typename T>
void shuffle_impl(T* x, int64_t n, MT19937& mt) {
  if (n < 2) return;
  constexpr int64_t AHEAD = 64;  // power of two: ring buffer of precomputed draws
  uint64_t ring[AHEAD];
  // i runs n-1 .. 1; draw for i is made `AHEAD` iterations before its swap.
  int64_t next_draw = n - 1;  // the next i whose j is drawn
  auto draw = [&]() {
    uint64_t j = mt.interval(static_cast<uint64_t>(next_draw));
    ring[next_draw & (AHEAD - 1)] = j;
    __builtin_prefetch(x + j, 1, 0);
    --next_draw;
  };
  for (int64_t k = 0; k < AHEAD && next_draw >= 1; ++k) draw();
  for (int64_t i = n - 1; i >= 1; --i) {
    uint64_t j = ring[i & (AHEAD - 1)];
    if (next_draw >= 1) draw();  // refills the slot of an i already consumed (i - AHEAD)
    T t = x[i];
    x[i] = x[j];
    x[j] = t;
  }
}

// legacy_shuffle(x, key, pos) -> new pos; x (1-D, contiguous) and key (uint32[624]) in place.
int legacy_shuffle(py::array x, py::array_t<uint32_t, py::array::c_style> key, int pos) {
  if (x.ndim() != 1) throw std::invalid_argument("legacy_shuffle: expected a 1-D array");
  if (!(x.flags() & py::array::c_style)) throw std::invalid_argument("legacy_shuffle: expected a contiguous array");
  if (!x.writeable()) throw std::invalid_argument("legacy_shuffle: array is read-only");
  if (key.ndim() != 1 || key.shape(0) != MT19937::N)
    throw std::invalid_argument("legacy_shuffle: key must be uint32[624] (RandomState.get_state()[1])");
  if (pos < 0 || pos > MT19937::N) throw std::invalid_argument("legacy_shuffle: pos out of range");
  MT19937 mt;
  uint32_t* k = key.mutable_data();
  for (int i = 0; i < MT19937::N; ++i) mt.key[i] = k[i];
  mt.pos = pos;
  const int64_t n = x.shape(0);
  void* data = x.mutable_data();
  const auto itemsize = x.itemsize();
  if (itemsize != 1 && itemsize != 2 && itemsize != 4 && itemsize != 8)
    throw std::invalid_argument("legacy_shuffle: itemsize must be 1, 2, 4 or 8");
  {
    py::gil_scoped_release nogil;
    switch (itemsize) {
      case 1: shuffle_impl(static_cast<uint8_t*>(data), n, mt); break;
      case 2: shuffle_impl(static_cast<uint16_t*>(data), n, mt); break;
      case 4: shuffle_impl(static_cast<uint32_t*>(data), n, mt); break;
      case 8: shuffle_impl(static_cast<uint64_t*>(data), n, mt); break;
    }
  }
  for (int i = 0; i < MT19937::N; ++i) k[i] = mt.key[i];
  return mt.pos;
}

}  // namespace

void register_shuffle(py::module_& m) {
  m.def("legacy_shuffle", &legacy_shuffle, py::arg("x"), py::arg("key"), py::arg("pos"),
        "Shuffle a 1-D array in place exactly as numpy.random.RandomState.shuffle would, from the "
        "state (key, pos); updates key in place and returns the new pos.");
}
