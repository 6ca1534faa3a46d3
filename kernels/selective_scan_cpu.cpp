// Fused CPU selective scan (forward and backward), JIT-built by kernels/selective_scan_cpp.py.
//
// Layout (time-major, contiguous): u, delta [Bz, T, d]; A [d, S]; B, C [Bz, T, S].
// Per channel: h_t = exp(delta_t A) h_{t-1} + delta_t u_t B_t;  y_t = <h_t, C_t>.
// The state of a block of channels lives in a small local array for the whole sequence;
// forward stores it only at chunk starts ([Bz, nc, d, S]); backward recomputes each chunk's
// states from there into a cache-sized buffer and runs the reverse recurrence over it.
// Sequences (the Bz axis) are split across threads, so the sums over channels (dB, dC) need
// no synchronisation; dA is summed per thread.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <cmath>
#include <vector>

namespace {
constexpr int64_t DB = 16;  // channels processed together

template <typename T>
void forward_kernel(const T* u, const T* delta, const T* A, const T* B, const T* C, T* y, T* states, T* last,
                    int64_t Bz, int64_t L, int64_t d, int64_t S, int64_t K) {
  const int64_t nc = (L + K - 1) / K;
  at::parallel_for(0, Bz, 1, [&](int64_t b0, int64_t b1) {
    std::vector<T> h(DB * S), dec(S);
    for (int64_t b = b0; b < b1; ++b) {
      for (int64_t c0 = 0; c0 < d; c0 += DB) {
        const int64_t nb = std::min(DB, d - c0);
        std::fill(h.begin(), h.end(), T(0));
        for (int64_t t = 0; t < L; ++t) {
          if (t % K == 0) {
            T* st = states + ((b * nc + t / K) * d + c0) * S;
            std::copy(h.begin(), h.begin() + nb * S, st);
          }
          const T* Bt = B + (b * L + t) * S;
          const T* Ct = C + (b * L + t) * S;
          for (int64_t j = 0; j < nb; ++j) {
            const int64_t idx = (b * L + t) * d + c0 + j;
            const T dl = delta[idx], x = dl * u[idx];
            const T* Aj = A + (c0 + j) * S;
            T* hj = h.data() + j * S;
            T acc = 0;
            for (int64_t s = 0; s < S; ++s) dec[s] = std::exp(dl * Aj[s]);
            for (int64_t s = 0; s < S; ++s) {
              hj[s] = dec[s] * hj[s] + x * Bt[s];
              acc += hj[s] * Ct[s];
            }
            y[idx] = acc;
          }
        }
        std::copy(h.begin(), h.begin() + nb * S, last + (b * d + c0) * S);
      }
    }
  });
}

template <typename T>
void backward_kernel(const T* u, const T* delta, const T* A, const T* B, const T* C, const T* states,
                     const T* gy, const T* glast, T* gu, T* gdelta, T* gA_part, T* gB, T* gC,
                     int64_t Bz, int64_t L, int64_t d, int64_t S, int64_t K) {
  const int64_t nc = (L + K - 1) / K;
  at::parallel_for(0, Bz, 1, [&](int64_t b0, int64_t b1) {
    T* gA = gA_part + at::get_thread_num() * d * S;
    std::vector<T> hs((K + 1) * DB * S), decs(K * DB * S), r(DB * S);
    for (int64_t b = b0; b < b1; ++b) {
      for (int64_t c0 = 0; c0 < d; c0 += DB) {
        const int64_t nb = std::min(DB, d - c0);
        if (glast) std::copy(glast + (b * d + c0) * S, glast + (b * d + c0 + nb) * S, r.begin());
        else std::fill(r.begin(), r.end(), T(0));
        for (int64_t c = nc - 1; c >= 0; --c) {
          const int64_t t0 = c * K, t1 = std::min(L, t0 + K);
          // Recompute the states of this chunk (hs[k] = h_{t0 + k - 1}, hs[0] = chunk start)
          // and keep the decays exp(delta A) for the reverse pass.
          const T* st = states + ((b * nc + c) * d + c0) * S;
          std::copy(st, st + nb * S, hs.begin());
          for (int64_t t = t0; t < t1; ++t) {
            const T* Bt = B + (b * L + t) * S;
            const T* hp = hs.data() + (t - t0) * DB * S;
            T* hn = hs.data() + (t - t0 + 1) * DB * S;
            T* dec = decs.data() + (t - t0) * DB * S;
            for (int64_t j = 0; j < nb; ++j) {
              const int64_t idx = (b * L + t) * d + c0 + j;
              const T dl = delta[idx], x = dl * u[idx];
              const T* Aj = A + (c0 + j) * S;
              for (int64_t s = 0; s < S; ++s) dec[j * S + s] = std::exp(dl * Aj[s]);
              for (int64_t s = 0; s < S; ++s) hn[j * S + s] = dec[j * S + s] * hp[j * S + s] + x * Bt[s];
            }
          }
          // Reverse recurrence over the chunk.
          for (int64_t t = t1 - 1; t >= t0; --t) {
            const T* Bt = B + (b * L + t) * S;
            const T* Ct = C + (b * L + t) * S;
            T* gBt = gB + (b * L + t) * S;
            T* gCt = gC + (b * L + t) * S;
            const T* hp = hs.data() + (t - t0) * DB * S;
            const T* hn = hs.data() + (t - t0 + 1) * DB * S;
            const T* dec = decs.data() + (t - t0) * DB * S;
            for (int64_t j = 0; j < nb; ++j) {
              const int64_t idx = (b * L + t) * d + c0 + j;
              const T dl = delta[idx], uu = u[idx], x = dl * uu, g = gy[idx];
              const T* Aj = A + (c0 + j) * S;
              T* gAj = gA + (c0 + j) * S;
              T* rj = r.data() + j * S;
              const T* decj = dec + j * S;
              T gx = 0, gdl = 0;
              for (int64_t s = 0; s < S; ++s) {
                const T rs = rj[s] + Ct[s] * g;          // dLoss/dh_t
                const T q = rs * decj[s] * hp[j * S + s];  // dLoss/d(delta_t A)
                gx += rs * Bt[s];
                gdl += q * Aj[s];
                gAj[s] += q * dl;
                gBt[s] += rs * x;
                gCt[s] += g * hn[j * S + s];
                rj[s] = decj[s] * rs;
              }
              gu[idx] = dl * gx;
              gdelta[idx] = gdl + uu * gx;
            }
          }
        }
      }
    }
  });
}
}  // namespace

std::vector<torch::Tensor> scan_forward(torch::Tensor u, torch::Tensor delta, torch::Tensor A, torch::Tensor B,
                                        torch::Tensor C, int64_t chunk) {
  const int64_t Bz = u.size(0), L = u.size(1), d = u.size(2), S = A.size(1);
  const int64_t nc = (L + chunk - 1) / chunk;
  auto y = torch::empty_like(u);
  auto states = torch::empty({Bz, nc, d, S}, u.options());
  auto last = torch::empty({Bz, d, S}, u.options());
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "selective_scan_cpu_fwd", [&] {
    forward_kernel<scalar_t>(u.data_ptr<scalar_t>(), delta.data_ptr<scalar_t>(), A.data_ptr<scalar_t>(),
                             B.data_ptr<scalar_t>(), C.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(),
                             states.data_ptr<scalar_t>(), last.data_ptr<scalar_t>(), Bz, L, d, S, chunk);
  });
  return {y, states, last};
}

std::vector<torch::Tensor> scan_backward(torch::Tensor u, torch::Tensor delta, torch::Tensor A, torch::Tensor B,
                                         torch::Tensor C, torch::Tensor states, torch::Tensor gy,
                                         c10::optional<torch::Tensor> glast, int64_t chunk) {
  const int64_t Bz = u.size(0), L = u.size(1), d = u.size(2), S = A.size(1);
  auto gu = torch::empty_like(u);
  auto gdelta = torch::empty_like(u);
  auto gA_part = torch::zeros({at::get_num_threads(), d, S}, u.options());
  auto gB = torch::zeros_like(B);
  auto gC = torch::zeros_like(C);
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "selective_scan_cpu_bwd", [&] {
    backward_kernel<scalar_t>(u.data_ptr<scalar_t>(), delta.data_ptr<scalar_t>(), A.data_ptr<scalar_t>(),
                              B.data_ptr<scalar_t>(), C.data_ptr<scalar_t>(), states.data_ptr<scalar_t>(),
                              gy.data_ptr<scalar_t>(), glast.has_value() ? glast->data_ptr<scalar_t>() : nullptr,
                              gu.data_ptr<scalar_t>(), gdelta.data_ptr<scalar_t>(), gA_part.data_ptr<scalar_t>(),
                              gB.data_ptr<scalar_t>(), gC.data_ptr<scalar_t>(), Bz, L, d, S, chunk);
  });
  return {gu, gdelta, gA_part.sum(0), gB, gC};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &scan_forward, "selective scan forward (CPU)");
  m.def("backward", &scan_backward, "selective scan backward (CPU)");
}
