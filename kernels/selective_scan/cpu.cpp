// Fused CPU selective scan (forward and backward), JIT-built by kernels/selective_scan/cpu.py.
//
// Layout (time-major, channels contiguous): u, delta, z [Bz, T, d] with any batch and time
// strides; A [d, S]; B, C [Bz, T, S] contiguous; D, delta_bias [d].
// Per channel:  dt = softplus(delta + delta_bias) (or delta + delta_bias)
//               h_t = exp(dt A) h_{t-1} + dt u_t B_t
//               y_t = (<h_t, C_t> + D u_t) * silu(z_t)
// everything in one pass, so none of these elementwise steps costs a trip through memory.
// A block of DB channels is processed together with its state held as h[S][DB]: the
// channels are the vector lanes, so the update and <h_t, C_t> = sum_s h[s][:] C_t[s] are
// plain vector FMAs with no horizontal sums. Forward stores the state at chunk starts only
// (states [Bz, nc, S, d]); backward recomputes each chunk's states from there into a
// cache-sized buffer and runs the reverse recurrence over it. Sequences (the Bz axis) are
// split across threads, so the sums over channels (dB, dC) need no synchronisation; the sums
// over sequences (dA, dD, d delta_bias) are kept per thread.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <algorithm>
#include <cstdint>
#include <vector>

#include "cpu_math.h"

namespace {
constexpr int64_t DB = 64;  // channels per block: the vector lanes of every inner loop
constexpr int64_t AHEAD = 2;  // steps ahead that a block's rows are prefetched

// A [Bz, T, d] input read through its strides (channel stride 1).
template <typename T>
struct Seq {
  const T* p;
  int64_t sb, st;
  const T* row(int64_t b, int64_t t, int64_t c0) const { return p + b * sb + t * st + c0; }
};

template <typename T>
Seq<T> seq(const torch::Tensor& x) {
  return {x.data_ptr<T>(), x.stride(0), x.stride(1)};
}

struct Options {
  int64_t Bz, L, d, S, K;  // sequences, length, channels, state size, chunk length
  bool softplus;
};

template <typename T>
struct Inputs {
  Seq<T> u, delta, z;      // z.p == nullptr: no gate
  const T *A, *B, *C, *D, *bias;  // D, bias may be nullptr
};

using cpu_math::sigmoid;

// Software prefetch of n values at p, for reading (Write 0) or writing (1). A block's rows of the
// [Bz, T, d] tensors are 256 bytes every d values, a pattern the hardware prefetchers do not follow:
// without this every step waits on memory (forward ~20%, backward ~28% slower at the INN's shape).
template <int Write = 0, typename T>
inline void prefetch(const T* p, int64_t n) {
  for (int64_t i = 0; i < n; i += 64 / static_cast<int64_t>(sizeof(T))) __builtin_prefetch(p + i, Write);
}

template <typename T>
void prefetch_inputs(const Inputs<T>& in, int64_t b, int64_t t, int64_t c0, int64_t n) {
  prefetch(in.u.row(b, t, c0), n);
  prefetch(in.delta.row(b, t, c0), n);
  if (in.z.p) prefetch(in.z.row(b, t, c0), n);
}

// n values, then zeros up to DB.
template <typename T>
void gather(const T* src, T* dst, int64_t n) {
  std::copy(src, src + n, dst);
  std::fill(dst + n, dst + DB, T(0));
}

// What stays fixed for one block of channels: A as [S][DB], delta_bias and D (padded lanes
// zero, so they keep zero state and contribute nothing to the sums).
template <typename T>
struct Block {
  int64_t c0, nb;
  std::vector<T> At;
  T bias[DB], D[DB];
  Block(const Inputs<T>& in, int64_t S, int64_t c0_, int64_t nb_) : c0(c0_), nb(nb_), At(S * DB) {
    for (int64_t s = 0; s < S; ++s)
      for (int64_t j = 0; j < DB; ++j) At[s * DB + j] = j < nb ? in.A[(c0 + j) * S + s] : T(0);
    for (int64_t j = 0; j < DB; ++j) {
      bias[j] = (in.bias && j < nb) ? in.bias[c0 + j] : T(0);
      D[j] = (in.D && j < nb) ? in.D[c0 + j] : T(0);
    }
  }
};

// One block's inputs at one step: dt, its derivative d dt / d delta, u, x = dt u and z.
template <typename T>
struct Step {
  T dt[DB], ddt[DB], u[DB], x[DB], z[DB];  // ddt only with `derivative` (backward)
  void load(const Inputs<T>& in, const Options& o, const Block<T>& blk, int64_t b, int64_t t, bool derivative) {
    T v[DB];
    gather(in.delta.row(b, t, blk.c0), v, blk.nb);
    gather(in.u.row(b, t, blk.c0), u, blk.nb);
    if (in.z.p) gather(in.z.row(b, t, blk.c0), z, blk.nb);
    for (int64_t j = 0; j < DB; ++j) v[j] += blk.bias[j];
    if (o.softplus) {
      for (int64_t j = 0; j < DB; ++j) dt[j] = cpu_math::softplus(v[j]);
      if (derivative)
        for (int64_t j = 0; j < DB; ++j) ddt[j] = sigmoid(v[j]);
    } else {
      std::copy(v, v + DB, dt);
      std::fill(ddt, ddt + DB, T(1));
    }
    for (int64_t j = 0; j < DB; ++j) x[j] = dt[j] * u[j];
  }
};

// y[j] = <h[:, j], C> + D[j] u[j] for one block. Kept out of the state update's loop: there
// its running sum would chain every state index through memory behind the exp calls.
// Two partial sums (even and odd state indices) halve the rounding chain of the float sum.
template <typename T>
void output(const T* __restrict__ h, const T* __restrict__ C, const T* D, const T* u, T* __restrict__ y, int64_t S) {
  T odd[DB];
  for (int64_t j = 0; j < DB; ++j) y[j] = odd[j] = T(0);
  int64_t s = 0;
  for (; s + 1 < S; s += 2)
    for (int64_t j = 0; j < DB; ++j) {
      y[j] += h[s * DB + j] * C[s];
      odd[j] += h[(s + 1) * DB + j] * C[s + 1];
    }
  if (s < S)
    for (int64_t j = 0; j < DB; ++j) y[j] += h[s * DB + j] * C[s];
  for (int64_t j = 0; j < DB; ++j) y[j] += odd[j] + D[j] * u[j];
}

template <typename T>
void forward_kernel(const Inputs<T>& in, const Options& o, T* y, T* states, T* last) {
  const int64_t L = o.L, d = o.d, S = o.S, K = o.K, nc = (L + K - 1) / K;
  at::parallel_for(0, o.Bz, 1, [&](int64_t b0, int64_t b1) {
    std::vector<T> hbuf(S * DB);
    T* __restrict__ h = hbuf.data();
    Step<T> st;
    T acc[DB];
    for (int64_t b = b0; b < b1; ++b) {
      for (int64_t c0 = 0; c0 < d; c0 += DB) {
        const Block<T> blk(in, S, c0, std::min(DB, d - c0));
        const T* __restrict__ At = blk.At.data();
        std::fill(hbuf.begin(), hbuf.end(), T(0));
        for (int64_t t = 0; t < L; ++t) {
          if (t % K == 0) {
            T* saved = states + (b * nc + t / K) * S * d + c0;
            for (int64_t s = 0; s < S; ++s) std::copy(h + s * DB, h + s * DB + blk.nb, saved + s * d);
          }
          if (t + AHEAD < L) {
            prefetch_inputs(in, b, t + AHEAD, c0, blk.nb);
            prefetch<1>(y + (b * L + t + AHEAD) * d + c0, blk.nb);
          }
          st.load(in, o, blk, b, t, false);
          const T* __restrict__ Bt = in.B + (b * L + t) * S;
          const T* __restrict__ Ct = in.C + (b * L + t) * S;
          for (int64_t s = 0; s < S; ++s) {
            const T bs = Bt[s];
            T* __restrict__ hs = h + s * DB;
            const T* __restrict__ as = At + s * DB;
            for (int64_t j = 0; j < DB; ++j) hs[j] = cpu_math::exp(st.dt[j] * as[j]) * hs[j] + st.x[j] * bs;
          }
          output(h, Ct, blk.D, st.u, acc, S);
          if (in.z.p)
            for (int64_t j = 0; j < DB; ++j) acc[j] *= st.z[j] * sigmoid(st.z[j]);
          std::copy(acc, acc + blk.nb, y + (b * L + t) * d + c0);
        }
        for (int64_t j = 0; j < blk.nb; ++j)
          for (int64_t s = 0; s < S; ++s) last[(b * d + c0 + j) * S + s] = h[s * DB + j];
      }
    }
  });
}

// Gradients; `part` holds per-thread sums over sequences: [threads, d, S + 2] = (dA, dD, d bias).
// With `y` (not null) also the forward's output, from the states it recomputes anyway (a caller
// that recomputes its layer in backward need not run the forward scan again for it).
template <typename T>
void backward_kernel(const Inputs<T>& in, const Options& o, const T* states, const T* gy, const T* glast,
                     T* gu, T* gdelta, T* gz, T* part, T* gB, T* gC, T* y) {
  const int64_t L = o.L, d = o.d, S = o.S, K = o.K, nc = (L + K - 1) / K;
  const int64_t SB = S * DB;  // one state block
  at::parallel_for(0, o.Bz, 1, [&](int64_t b0, int64_t b1) {
    T* mine = part + at::get_thread_num() * d * (S + 2);
    // For the current chunk: hs[k] = state after step t0 + k - 1 (hs[0]: chunk start);
    // decs[k] = exp(dt A), ys[k] = <h, C> + D u and steps[k] = inputs, all of step t0 + k.
    // r = dLoss/dh carried backwards.
    std::vector<T> hsbuf((K + 1) * SB), decbuf(K * SB), ysbuf(K * DB), rbuf(SB), gAbuf(SB);
    std::vector<Step<T>> steps(K);
    T* __restrict__ r = rbuf.data();
    T* __restrict__ gAt = gAbuf.data();
    T g[DB], gyv[DB], gx[DB], gdl[DB], gD[DB], gbias[DB], out[DB];
    for (int64_t b = b0; b < b1; ++b) {
      for (int64_t c0 = 0; c0 < d; c0 += DB) {
        const Block<T> blk(in, S, c0, std::min(DB, d - c0));
        const int64_t nb = blk.nb;
        const T* __restrict__ At = blk.At.data();
        std::fill(gAbuf.begin(), gAbuf.end(), T(0));
        std::fill(rbuf.begin(), rbuf.end(), T(0));
        std::fill(gD, gD + DB, T(0));
        std::fill(gbias, gbias + DB, T(0));
        if (glast)
          for (int64_t j = 0; j < nb; ++j)
            for (int64_t s = 0; s < S; ++s) r[s * DB + j] = glast[(b * d + c0 + j) * S + s];
        for (int64_t c = nc - 1; c >= 0; --c) {
          const int64_t t0 = c * K, t1 = std::min(L, t0 + K);
          T* __restrict__ h0 = hsbuf.data();
          std::fill(h0, h0 + SB, T(0));
          const T* saved = states + (b * nc + c) * S * d + c0;
          for (int64_t s = 0; s < S; ++s) std::copy(saved + s * d, saved + s * d + nb, h0 + s * DB);
          for (int64_t t = t0; t < t1; ++t) {
            Step<T>& st = steps[t - t0];
            if (t + AHEAD < t1) {
              prefetch_inputs(in, b, t + AHEAD, c0, nb);
              if (y) prefetch<1>(y + (b * L + t + AHEAD) * d + c0, nb);
            }
            st.load(in, o, blk, b, t, true);
            const T* __restrict__ Bt = in.B + (b * L + t) * S;
            const T* __restrict__ Ct = in.C + (b * L + t) * S;
            const T* __restrict__ hp = hsbuf.data() + (t - t0) * SB;
            T* __restrict__ hn = hsbuf.data() + (t - t0 + 1) * SB;
            T* __restrict__ dec = decbuf.data() + (t - t0) * SB;
            T* __restrict__ ys = ysbuf.data() + (t - t0) * DB;
            for (int64_t s = 0; s < S; ++s) {
              const T bs = Bt[s];
              for (int64_t j = 0; j < DB; ++j) {
                const int64_t k = s * DB + j;
                dec[k] = cpu_math::exp(st.dt[j] * At[k]);
                hn[k] = dec[k] * hp[k] + st.x[j] * bs;
              }
            }
            if (!in.z.p && !y) continue;
            output(hn, Ct, blk.D, st.u, ys, S);  // the gate's input, for dz
            if (y) {
              T* __restrict__ yt = y + (b * L + t) * d + c0;
              for (int64_t j = 0; j < nb; ++j) yt[j] = in.z.p ? ys[j] * st.z[j] * sigmoid(st.z[j]) : ys[j];
            }
          }
          for (int64_t t = t1 - 1; t >= t0; --t) {
            const Step<T> st = steps[t - t0];  // a local copy: visibly unaliased with the outputs
            const int64_t row = (b * L + t) * d + c0;
            if (t - AHEAD >= t0) {
              const int64_t ahead = row - AHEAD * d;
              prefetch(gy + ahead, nb);
              prefetch<1>(gu + ahead, nb);
              prefetch<1>(gdelta + ahead, nb);
              if (in.z.p) prefetch<1>(gz + ahead, nb);
            }
            gather(gy + row, gyv, nb);
            if (in.z.p) {  // y = pre * silu(z): g = dLoss/d pre
              const T* __restrict__ ys = ysbuf.data() + (t - t0) * DB;
              for (int64_t j = 0; j < DB; ++j) {
                const T sz = sigmoid(st.z[j]);
                out[j] = gyv[j] * ys[j] * sz * (T(1) + st.z[j] * (T(1) - sz));
                g[j] = gyv[j] * st.z[j] * sz;
              }
              std::copy(out, out + nb, gz + row);
            } else {
              std::copy(gyv, gyv + DB, g);
            }
            for (int64_t j = 0; j < DB; ++j) {
              gD[j] += g[j] * st.u[j];
              gx[j] = gdl[j] = 0;
            }
            const T* __restrict__ Bt = in.B + (b * L + t) * S;
            const T* __restrict__ Ct = in.C + (b * L + t) * S;
            T* __restrict__ gBt = gB + (b * L + t) * S;
            T* __restrict__ gCt = gC + (b * L + t) * S;
            const T* __restrict__ hp = hsbuf.data() + (t - t0) * SB;
            const T* __restrict__ hn = hsbuf.data() + (t - t0 + 1) * SB;
            const T* __restrict__ dec = decbuf.data() + (t - t0) * SB;
            for (int64_t s = 0; s < S; ++s) {
              const T bs = Bt[s], cs = Ct[s];
              T sb = 0, sc = 0;
              for (int64_t j = 0; j < DB; ++j) {
                const int64_t k = s * DB + j;
                const T rs = r[k] + cs * g[j];    // dLoss/dh_t
                const T q = rs * dec[k] * hp[k];  // dLoss/d(dt_t A)
                gx[j] += rs * bs;
                gdl[j] += q * At[k];
                gAt[k] += q * st.dt[j];
                sb += rs * st.x[j];
                sc += g[j] * hn[k];
                r[k] = dec[k] * rs;
              }
              gBt[s] += sb;
              gCt[s] += sc;
            }
            for (int64_t j = 0; j < DB; ++j) {
              const T gd = (gdl[j] + st.u[j] * gx[j]) * st.ddt[j];  // d delta
              gbias[j] += gd;
              gdl[j] = gd;
              out[j] = st.dt[j] * gx[j] + g[j] * blk.D[j];  // d u
            }
            std::copy(out, out + nb, gu + row);
            std::copy(gdl, gdl + nb, gdelta + row);
          }
        }
        for (int64_t j = 0; j < nb; ++j) {
          T* pj = mine + (c0 + j) * (S + 2);
          for (int64_t s = 0; s < S; ++s) pj[s] += gAt[s * DB + j];
          pj[S] += gD[j];
          pj[S + 1] += gbias[j];
        }
      }
    }
  });
}

template <typename T>
Inputs<T> inputs(const torch::Tensor& u, const torch::Tensor& delta, const torch::Tensor& A, const torch::Tensor& B,
                 const torch::Tensor& C, const c10::optional<torch::Tensor>& D, const c10::optional<torch::Tensor>& z,
                 const c10::optional<torch::Tensor>& bias) {
  return {seq<T>(u), seq<T>(delta), z ? seq<T>(*z) : Seq<T>{nullptr, 0, 0}, A.data_ptr<T>(), B.data_ptr<T>(),
          C.data_ptr<T>(), D ? D->data_ptr<T>() : nullptr, bias ? bias->data_ptr<T>() : nullptr};
}

void check_rows(const torch::Tensor& x, const char* name) {
  TORCH_CHECK(x.dim() == 3 && x.stride(2) == 1, name, " must be [Bz, T, d] with contiguous channels");
}
}  // namespace

std::vector<torch::Tensor> scan_forward(torch::Tensor u, torch::Tensor delta, torch::Tensor A, torch::Tensor B,
                                        torch::Tensor C, c10::optional<torch::Tensor> D,
                                        c10::optional<torch::Tensor> z, c10::optional<torch::Tensor> delta_bias,
                                        bool softplus, int64_t chunk) {
  check_rows(u, "u");
  check_rows(delta, "delta");
  if (z) check_rows(*z, "z");
  const Options o{u.size(0), u.size(1), u.size(2), A.size(1), chunk, softplus};
  const int64_t nc = (o.L + chunk - 1) / chunk;
  auto y = torch::empty({o.Bz, o.L, o.d}, u.options());
  auto states = torch::empty({o.Bz, nc, o.S, o.d}, u.options());
  auto last = torch::empty({o.Bz, o.d, o.S}, u.options());
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "selective_scan_cpu_fwd", [&] {
    forward_kernel<scalar_t>(inputs<scalar_t>(u, delta, A, B, C, D, z, delta_bias), o, y.data_ptr<scalar_t>(),
                             states.data_ptr<scalar_t>(), last.data_ptr<scalar_t>());
  });
  return {y, states, last};
}

std::vector<torch::Tensor> scan_backward(torch::Tensor u, torch::Tensor delta, torch::Tensor A, torch::Tensor B,
                                         torch::Tensor C, c10::optional<torch::Tensor> D,
                                         c10::optional<torch::Tensor> z, c10::optional<torch::Tensor> delta_bias,
                                         bool softplus, int64_t chunk, torch::Tensor states, torch::Tensor gy,
                                         c10::optional<torch::Tensor> glast, bool with_output) {
  const Options o{u.size(0), u.size(1), u.size(2), A.size(1), chunk, softplus};
  auto gu = torch::empty({o.Bz, o.L, o.d}, u.options());
  auto gdelta = torch::empty({o.Bz, o.L, o.d}, u.options());
  auto gz = z ? torch::empty({o.Bz, o.L, o.d}, u.options()) : torch::Tensor();
  auto part = torch::zeros({at::get_num_threads(), o.d, o.S + 2}, u.options());
  auto gB = torch::zeros_like(B);
  auto gC = torch::zeros_like(C);
  auto y = with_output ? torch::empty({o.Bz, o.L, o.d}, u.options()) : torch::Tensor();
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "selective_scan_cpu_bwd", [&] {
    backward_kernel<scalar_t>(inputs<scalar_t>(u, delta, A, B, C, D, z, delta_bias), o,
                              states.data_ptr<scalar_t>(), gy.data_ptr<scalar_t>(),
                              glast ? glast->data_ptr<scalar_t>() : nullptr, gu.data_ptr<scalar_t>(),
                              gdelta.data_ptr<scalar_t>(), z ? gz.data_ptr<scalar_t>() : nullptr,
                              part.data_ptr<scalar_t>(), gB.data_ptr<scalar_t>(), gC.data_ptr<scalar_t>(),
                              with_output ? y.data_ptr<scalar_t>() : nullptr);
  });
  auto sums = part.sum(0);  // [d, S + 2]
  return {gu, gdelta, gz, sums.narrow(1, 0, o.S).contiguous(), sums.select(1, o.S).contiguous(),
          sums.select(1, o.S + 1).contiguous(), gB, gC, y};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &scan_forward, "fused selective scan forward (CPU)");
  m.def("backward", &scan_backward, "fused selective scan backward (CPU)");
}
