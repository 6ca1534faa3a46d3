// Elementwise math for the C++ CPU kernels (selective scan, causal conv), written so the compiler
// vectorises it inline in the kernels' channel loops: libm / libmvec calls (exp, log1p) are
// opaque calls there, several times the cost of these polynomials. float has the fast forms,
// double keeps libm (the fp64 paths are for tests, not speed). Included by kernels/*/cpu.cpp.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

namespace cpu_math {

// exp(x): x = n ln2 + r with |r| <= ln2/2 (Cody-Waite, two fused steps), a degree-7 Taylor
// polynomial for exp(r) (relative error < 1e-8, under half a float ulp) and 2^n built in the
// exponent bits. x is clamped to [-87, 88]: below, exp is ~1e-38 instead of 0 (a decay or a
// sigmoid tail that leaves no trace either way).
template <typename T>
inline T exp(T x) { return std::exp(x); }

template <>
inline float exp(float x) {
  x = std::min(std::max(x, -87.0f), 88.0f);
  const float n = std::floor(x * 1.44269504088896f + 0.5f);
  const float r = std::fma(n, 2.12194440e-4f, std::fma(n, -0.693359375f, x));
  float p = 1.0f / 5040;
  p = std::fma(p, r, 1.0f / 720);
  p = std::fma(p, r, 1.0f / 120);
  p = std::fma(p, r, 1.0f / 24);
  p = std::fma(p, r, 1.0f / 6);
  p = std::fma(p, r, 0.5f);
  p = std::fma(p, r, 1.0f);
  p = std::fma(p, r, 1.0f);
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

// log1p(w) for w in [0, 1]: 2 atanh(s) with s = w / (2 + w) in [0, 1/3], its odd series to s^15
// (truncation < 2e-9 relative).
inline float log1p_unit(float w) {
  const float s = w / (2.0f + w), s2 = s * s;
  float p = 1.0f / 15;
  p = std::fma(p, s2, 1.0f / 13);
  p = std::fma(p, s2, 1.0f / 11);
  p = std::fma(p, s2, 1.0f / 9);
  p = std::fma(p, s2, 1.0f / 7);
  p = std::fma(p, s2, 1.0f / 5);
  p = std::fma(p, s2, 1.0f / 3);
  p = std::fma(p, s2, 1.0f);
  return 2.0f * s * p;
}

template <typename T>
inline T sigmoid(T v) { return T(1) / (T(1) + exp(-v)); }

// softplus(v) = log(1 + e^v) = max(v, 0) + log1p(e^-|v|) (no overflow for large v).
template <typename T>
inline T softplus(T v) { return v > T(20) ? v : std::log1p(std::exp(v)); }

template <>
inline float softplus(float v) { return std::max(v, 0.0f) + log1p_unit(exp(-std::fabs(v))); }

}  // namespace cpu_math
