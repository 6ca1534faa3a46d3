// Dropout with a counter-based mask on CPU, JIT-built by kernels/dropout/cpu.py.
// Element i of a call with seed s is kept when hash(s, i) >= p * 2^32, so the mask is a pure
// function of (seed, index): nothing is stored for backward (the same call on the gradient applies
// the same mask), any thread can produce any element, and the loop vectorises (32-bit integer
// hash: Wellons' lowbias32, applied twice to mix in both halves of the seed and of the index).
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <algorithm>
#include <cmath>
#include <cstdint>

namespace {
inline uint32_t lowbias32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7feb352dU;
  x ^= x >> 15;
  x *= 0x846ca68bU;
  x ^= x >> 16;
  return x;
}

// One run of elements: o = x * scale where hash(base + k, high) clears the threshold, else 0.
// A function of plain arguments (not inside parallel_for's lambda) so that GCC vectorises it.
template <typename T>
void apply_run(const T* __restrict__ x, T* __restrict__ o, uint32_t len, uint32_t base, uint32_t high,
               uint32_t threshold, T scale) {
  for (uint32_t k = 0; k < len; ++k) o[k] = lowbias32(lowbias32(base + k) ^ high) >= threshold ? x[k] * scale : T(0);
}

template <typename T>
void apply_kernel(const T* x, T* out, int64_t n, uint64_t seed, double p) {
  const uint32_t lo = static_cast<uint32_t>(seed), hi = static_cast<uint32_t>(seed >> 32);
  const uint32_t threshold = static_cast<uint32_t>(std::min(std::ldexp(p, 32), 4294967295.0));
  const T scale = T(1) / T(1 - p);
  at::parallel_for(0, n, 1 << 16, [&](int64_t i0, int64_t i1) {
    // Runs of 4096 elements never cross a multiple of 2^32, so the index's high half is fixed in
    // each and the inner loop is 32-bit arithmetic only.
    for (int64_t r0 = i0, r1; r0 < i1; r0 = r1) {
      r1 = std::min(i1, (r0 / 4096 + 1) * 4096);
      apply_run(x + r0, out + r0, static_cast<uint32_t>(r1 - r0), static_cast<uint32_t>(r0) + lo,
                hi + static_cast<uint32_t>(r0 >> 32), threshold, scale);
    }
  });
}
}  // namespace

// out = x * keep(seed, i) / (1 - p), x contiguous.
torch::Tensor dropout_apply(torch::Tensor x, int64_t seed, double p) {
  TORCH_CHECK(x.is_contiguous(), "dropout: x must be contiguous");
  TORCH_CHECK(p >= 0 && p < 1, "dropout: p must be in [0, 1)");
  auto out = torch::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "dropout_cpu", [&] {
    apply_kernel<scalar_t>(x.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), x.numel(), static_cast<uint64_t>(seed), p);
  });
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("apply", &dropout_apply, "x * mask(seed) / (1 - p), the mask a hash of (seed, index) (CPU)");
}
