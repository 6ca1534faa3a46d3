// Fused causal depthwise conv1d + bias + SiLU on CPU (forward and backward), JIT-built by
// kernels/causal_conv1d/cpu.py. The Mamba block's conv: the CUDA counterpart is the causal-conv1d
// package's `causal_conv1d_fn(x, w, b, activation="silu")`.
//
// x [M, T, d] with channel stride 1 (any sequence and time strides): M independent sequences.
// weight [G, K, d] and bias [G, d]: sequence m uses group m % G (G = 1: one kernel for all; the
// INN's per-neuron kernels pass x as [B * N, T, d] with G = N).
//   pre[m, t, c] = bias[g, c] + sum_k weight[g, k, c] x[m, t - K + 1 + k, c]   (x = 0 before t = 0)
//   out = silu(pre)
// Channels are the vector lanes of every inner loop (blocks of DB); sequences are split across
// threads; both passes run time outer. Backward recomputes `pre` instead of keeping it, and sums
// the weight and bias gradients per thread.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <algorithm>
#include <vector>

#include "cpu_math.h"

namespace {
constexpr int64_t DB = 64;

struct Shape {
  int64_t M, T, d, K, G, sm, st;  // sequences, length, channels, taps, groups, x strides
};

using cpu_math::sigmoid;

// pre for one block of nb channels at time t: acc[j] = bias + sum_k w[k][j] x[t - K + 1 + k][j].
// Full: nb == DB, a loop length the compiler knows (unrolled; forward ~10% faster at the INN shape).
template <bool Full, typename T>
inline void preactivation(const T* x, const T* w, const T* bias, const Shape& s, int64_t t, int64_t nb, T* acc) {
  const int64_t n = Full ? DB : nb;
  for (int64_t j = 0; j < n; ++j) acc[j] = bias ? bias[j] : T(0);
  for (int64_t k = std::max<int64_t>(0, s.K - 1 - t); k < s.K; ++k) {
    const T* __restrict__ xr = x + (t - s.K + 1 + k) * s.st;
    const T* __restrict__ wk = w + k * s.d;
    for (int64_t j = 0; j < n; ++j) acc[j] += wk[j] * xr[j];
  }
}

template <typename T>
inline void preactivation(const T* x, const T* w, const T* bias, const Shape& s, int64_t t, int64_t nb, T* acc) {
  if (nb == DB) preactivation<true>(x, w, bias, s, t, nb, acc);
  else preactivation<false>(x, w, bias, s, t, nb, acc);
}

template <typename T>
void forward_kernel(const T* x, const T* w, const T* bias, const Shape& s, T* out) {
  at::parallel_for(0, s.M, 1, [&](int64_t m0, int64_t m1) {
    T acc[DB];
    for (int64_t m = m0; m < m1; ++m) {
      const int64_t g = m % s.G;
      for (int64_t t = 0; t < s.T; ++t)  // time outer: rows are read in order, each while it is cached
        for (int64_t c0 = 0; c0 < s.d; c0 += DB) {
          const int64_t nb = std::min(DB, s.d - c0);
          preactivation(x + m * s.sm + c0, w + g * s.K * s.d + c0, bias ? bias + g * s.d + c0 : nullptr, s, t, nb, acc);
          T* __restrict__ o = out + (m * s.T + t) * s.d + c0;
          for (int64_t j = 0; j < nb; ++j) o[j] = acc[j] * sigmoid(acc[j]);
        }
    }
  });
}

// part [threads, G, K + 1, d]: per-thread sums of (d weight, d bias). Time outer, as in forward: at
// step t, d pre[t] is formed and scattered into gx rows t - K + 1 .. t (row t starts there, rows
// before it were started at most K - 1 steps ago, so they are still cached).
template <typename T>
void backward_kernel(const T* x, const T* w, const T* bias, const Shape& s, const T* gout, T* gx, T* part) {
  at::parallel_for(0, s.M, 1, [&](int64_t m0, int64_t m1) {
    T* mine = part + at::get_thread_num() * s.G * (s.K + 1) * s.d;
    T acc[DB], gp[DB];
    for (int64_t m = m0; m < m1; ++m) {
      const int64_t g = m % s.G;
      T* gxm = gx + m * s.T * s.d;
      for (int64_t t = 0; t < s.T; ++t)
        for (int64_t c0 = 0; c0 < s.d; c0 += DB) {
          const int64_t nb = std::min(DB, s.d - c0), k0 = std::max<int64_t>(0, s.K - 1 - t);
          const T* xm = x + m * s.sm + c0;
          const T* wg = w + g * s.K * s.d + c0;
          T* gw = mine + g * (s.K + 1) * s.d + c0;  // rows k < K: weight; row K: bias
          preactivation(xm, wg, bias ? bias + g * s.d + c0 : nullptr, s, t, nb, acc);
          const T* __restrict__ go = gout + (m * s.T + t) * s.d + c0;
          T* __restrict__ gb = gw + s.K * s.d;
          for (int64_t j = 0; j < nb; ++j) {
            const T sg = sigmoid(acc[j]);
            gp[j] = go[j] * sg * (T(1) + acc[j] * (T(1) - sg));
            gb[j] += gp[j];
          }
          for (int64_t k = k0; k < s.K; ++k) {  // weight: gw[k] += gp[t] x[t - K + 1 + k]
            const T* __restrict__ xr = xm + (t - s.K + 1 + k) * s.st;
            T* __restrict__ gwk = gw + k * s.d;
            for (int64_t j = 0; j < nb; ++j) gwk[j] += gp[j] * xr[j];
          }
          const T* __restrict__ wl = wg + (s.K - 1) * s.d;  // input: gx[t - K + 1 + k] += w[k] gp[t]
          T* __restrict__ o = gxm + t * s.d + c0;
          for (int64_t j = 0; j < nb; ++j) o[j] = wl[j] * gp[j];
          for (int64_t k = k0; k < s.K - 1; ++k) {
            const T* __restrict__ wk = wg + k * s.d;
            T* __restrict__ r = gxm + (t - s.K + 1 + k) * s.d + c0;
            for (int64_t j = 0; j < nb; ++j) r[j] += wk[j] * gp[j];
          }
        }
    }
  });
}

Shape shape(const torch::Tensor& x, const torch::Tensor& w) {
  TORCH_CHECK(x.dim() == 3 && x.stride(2) == 1, "x must be [M, T, d] with contiguous channels");
  TORCH_CHECK(w.dim() == 3 && w.is_contiguous() && w.size(2) == x.size(2), "weight must be contiguous [G, K, d]");
  TORCH_CHECK(x.size(0) % w.size(0) == 0, "sequences must be a multiple of the weight groups");
  return {x.size(0), x.size(1), x.size(2), w.size(1), w.size(0), x.stride(0), x.stride(1)};
}
}  // namespace

torch::Tensor conv_forward(torch::Tensor x, torch::Tensor w, c10::optional<torch::Tensor> bias) {
  const Shape s = shape(x, w);
  auto out = torch::empty({s.M, s.T, s.d}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "causal_conv1d_cpu_fwd", [&] {
    forward_kernel<scalar_t>(x.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(), bias ? bias->data_ptr<scalar_t>() : nullptr,
                             s, out.data_ptr<scalar_t>());
  });
  return out;
}

std::vector<torch::Tensor> conv_backward(torch::Tensor x, torch::Tensor w, c10::optional<torch::Tensor> bias,
                                         torch::Tensor gout) {
  const Shape s = shape(x, w);
  auto gx = torch::empty({s.M, s.T, s.d}, x.options());
  auto part = torch::zeros({at::get_num_threads(), s.G, s.K + 1, s.d}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "causal_conv1d_cpu_bwd", [&] {
    backward_kernel<scalar_t>(x.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(), bias ? bias->data_ptr<scalar_t>() : nullptr,
                              s, gout.data_ptr<scalar_t>(), gx.data_ptr<scalar_t>(), part.data_ptr<scalar_t>());
  });
  auto sums = part.sum(0);  // [G, K + 1, d]
  return {gx, sums.narrow(1, 0, s.K).contiguous(), sums.select(1, s.K).contiguous()};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &conv_forward, "fused causal depthwise conv1d + SiLU forward (CPU)");
  m.def("backward", &conv_backward, "fused causal depthwise conv1d + SiLU backward (CPU)");
}
