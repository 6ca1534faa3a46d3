"""The K integrator iterations of one INL layer in one Triton kernel, controller MLP included.

Per iteration k (the reference is `integrator_iterations_reference` in reference.py):

    pre_k = ctx + z_k Wz^T + v_k Wv^T                   [N, r]   (v_0 = 0)
    raw_k = (relu(pre_k) Wout^T + b_out) * scale + shift  [N, 4, D]
    z_{k+1}, v_{k+1} = integrator step(z_k, v_k, mu, raw_k, dt)

One program owns BLOCK_N tokens and runs all K iterations, in two passes over D per iteration:

1. the input projection, one GEMM over D: pre_k [BLOCK_N, r] accumulates tl.dot(z tile, Wz^T tile)
   and tl.dot(v tile, Wv^T tile), D tile by D tile, in registers;
2. the output projection, tile by tile: the four dots relu(pre_k) Wout_j^T (j = alpha, beta, gate,
   v_target) start from the bias as their accumulator, and the whole update runs in their epilogue
   (activations, scale and shift, excitation, the step), writing the tile's z_(k+1), v_(k+1).

The dots run on tensor cores. Their operands follow the model's dtype (the constexpr DOT): bf16/fp16
models multiply in that dtype (weights converted once per call, the state and relu(pre) rounded to
it per tile) with fp32 accumulation; fp32 models use tf32x3 (three tf32 products per dot: about fp32
accuracy on tensor cores; plain IEEE fp32 dots run on the FMA units and needed more registers than
the tiles allow). Everything else (the state, the update, every accumulator) is fp32.

The state is not kept in registers across iterations: a program's rows of z, v (training: the saved
iterates z_k, v_k; adaptive inference: updated in place) are written and read back per tile, so they
stay in L2. Holding a [BLOCK_N, D] state tile on chip across iterations (as the previous form of this
kernel did for D <= 128) spilled registers in the backward at every shape tried (4 and 8 warps, fp32
and bf16) and in fp32's forward (bench/gpu_resources.py). The weight tiles are read per tile and
iteration from L2 (they are shared by every program).

Training's forward writes every iterate z_k, v_k and pre_k [K, N, r]. Backward walks the iterations
in reverse with the gradient state (dz, dv) per tile in L2 the same way: pass 1 recomputes the output
projection's tile, forms dLoss/draw_j and writes it (graw [K, N, 4D], in the dots' dtype: the only
tensor of that size), accumulates dLoss/drelu(pre) = sum_j (dLoss/draw_j scale_j) Wout_j on tensor
cores, and adds the program's sum over its tokens of mu's gradient to a [programs, D] buffer; pass 2
adds the controller's path back to z_k, v_k (tl.dot(dLoss/dpre, Wz tile), and for v). On the host,
one matmul graw^T relu(pre) and one column sum of graw give the gradients of Wout, b_out, scale and
shift (see TritonIntegratorIterations.backward), and Wz's and Wv's are matmuls over the saved
[K, N, r] and [K, N, D] tensors.
The inference variant applies adaptive stopping's per-token masks: after `min_iterations`, a
token whose last update has norm below the threshold keeps its z and counts no more iterations,
and a block of tokens that all stopped skips the remaining iterations' work.
"""
from __future__ import annotations

import torch

from ..triton_runtime import check_triton_device, next_power_of_2, triton

BLOCK_N = 16  # tokens per program (the dots' M)
TILE_D = {False: 32, True: 16}  # the D tile of the forward and of the backward (32 spilled there in fp32)


def _launch_options(backward: bool) -> dict:
    """BLOCK_N, BLOCK_D, warps and stages of the forward or backward kernel, chosen with
    bench/gpu_resources.py so that neither spills registers on sm_80 or sm_90 at any shipped width,
    fp32 or bf16 (see BENCHMARKS.md, "Static resources"). One stage: the D loops' loads are not
    software-pipelined (a second stage's in-flight tiles spilled)."""
    return dict(BLOCK_N=BLOCK_N, BLOCK_D=TILE_D[backward], num_warps=4, num_stages=1)


if triton is not None:
    import triton.language as tl

    _INTERPRETED = tl.constexpr(bool(triton.knobs.runtime.interpret))

    @triton.jit
    def _mma(a, b, acc, DOT: tl.constexpr):
        """acc + a @ b on tensor cores, a fp32. DOT "bf16"/"fp16": b is in that dtype, a is rounded to it,
        fp32 accumulation; else b is fp32 too and DOT is the dot's input precision ("tf32x3": about fp32
        accuracy on tensor cores). The interpreter has no bf16 matmul (numpy multiplies the raw bits)
        and truncates in its fp32 -> bf16 conversion, so there a is rounded to nearest even by hand and
        the operands multiply in fp32: the same products as the GPU's, each exact in fp32."""
        if DOT == "bf16" and _INTERPRETED:
            bits = a.to(tl.uint32, bitcast=True)
            bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
            out = tl.dot(bits.to(tl.float32, bitcast=True), b.to(tl.float32), acc, input_precision="ieee")
        elif DOT == "bf16" or DOT == "fp16":
            out = tl.dot(a.to(b.dtype), b, acc)
        else:
            out = tl.dot(a, b, acc, input_precision=DOT)
        return out

    @triton.jit
    def _tile(d0, cols0, rows, mn, D):
        """The D tile starting at d0: its columns, their mask, and the [BLOCK_N, BLOCK_D] mask and offsets in [N, D]."""
        cols = d0 + cols0
        mc = cols < D
        return cols, mc, mn[:, None] & mc[None, :], rows[:, None] * D + cols[None, :]

    @triton.jit
    def _controller_out(hid, wout_ptr, bout_ptr, rr, cols, mr, mc, D, R, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                        DOT: tl.constexpr):
        """One D tile of the rank-r output projection lin_j = hid Wout_j^T + b_j, j = 0..3, each [BLOCK_N, BLOCK_D]:
        the bias is the accumulator the dot starts from; Wout_j^T's tile [BLOCK_R, BLOCK_D] lies at j*D*R."""
        wo = wout_ptr + cols[None, :] * R + rr[:, None]
        wm = mr[:, None] & mc[None, :]
        zero = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
        l0 = _mma(hid, tl.load(wo, mask=wm, other=0.0), zero + tl.load(bout_ptr + cols, mask=mc, other=0.0)[None, :], DOT)
        l1 = _mma(hid, tl.load(wo + D * R, mask=wm, other=0.0),
                  zero + tl.load(bout_ptr + D + cols, mask=mc, other=0.0)[None, :], DOT)
        l2 = _mma(hid, tl.load(wo + 2 * D * R, mask=wm, other=0.0),
                  zero + tl.load(bout_ptr + 2 * D + cols, mask=mc, other=0.0)[None, :], DOT)
        l3 = _mma(hid, tl.load(wo + 3 * D * R, mask=wm, other=0.0),
                  zero + tl.load(bout_ptr + 3 * D + cols, mask=mc, other=0.0)[None, :], DOT)
        return l0, l1, l2, l3

    @triton.jit
    def _coefficients(hid, wout_ptr, bout_ptr, rr, cols, mr, mc, D, R, s0, s1, s2, s3, h0, h1, h2, h3,
                      BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, DOT: tl.constexpr):
        """One D tile's coefficients from the controller: raw_j = lin_j * scale_j + shift_j, then alpha, beta, gate,
        v_target [BLOCK_N, BLOCK_D] in their ranges, and raw_beta (backward's softplus slope is sigmoid(raw_beta)).
        In this order: computing beta before alpha and gate made the D 1728 backward spill on sm_90."""
        l0, l1, l2, l3 = _controller_out(hid, wout_ptr, bout_ptr, rr, cols, mr, mc, D, R, BLOCK_N, BLOCK_D, DOT)
        alpha, gate = tl.sigmoid(l0 * s0 + h0), tl.sigmoid(l2 * s2 + h2)
        raw1 = l1 * s1 + h1
        beta = tl.maximum(raw1, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(raw1)))  # softplus
        return alpha, beta, gate, l3 * s3 + h3, raw1

    @triton.jit
    def _integrator_fwd_kernel(zs_ptr, vs_ptr, ctx_ptr, pre_ptr, wz_ptr, wv_ptr, wout_ptr, bout_ptr,
                               scale_ptr, shift_ptr, mu_ptr, mask_ptr, wave_ptr, iters_ptr,
                               N, D, R, K, dt, min_iterations, threshold_sq,
                               ADAPTIVE: tl.constexpr, EXCITE: tl.constexpr, MASKED: tl.constexpr,
                               DOT: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_R: tl.constexpr):
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        rr, cols0 = tl.arange(0, BLOCK_R), tl.arange(0, BLOCK_D)
        mn, mr = rows < N, rr < R
        ctx = tl.load(ctx_ptr + rows[:, None] * R + rr[None, :], mask=mn[:, None] & mr[None, :], other=0.0)
        s0, s1, s2, s3 = tl.load(scale_ptr), tl.load(scale_ptr + 1), tl.load(scale_ptr + 2), tl.load(scale_ptr + 3)
        h0, h1, h2, h3 = tl.load(shift_ptr), tl.load(shift_ptr + 1), tl.load(shift_ptr + 2), tl.load(shift_ptr + 3)
        active = mn
        iters = tl.zeros([BLOCK_N], tl.int32)
        update_sq = tl.zeros([BLOCK_N], tl.float32)  # ||z_k - z_(k-1)||^2 of the last iteration
        for k in range(K):
            if ADAPTIVE:  # inference: the state is updated in place
                active = active & ((k < min_iterations) | (update_sq >= threshold_sq))
                cur, nxt, vcur, vnxt = zs_ptr, zs_ptr, vs_ptr, vs_ptr
            else:  # training: every iterate is written for backward
                cur, nxt = zs_ptr + k * N * D, zs_ptr + (k + 1) * N * D
                vcur, vnxt = vs_ptr + k * N * D, vs_ptr + (k + 1) * N * D
            if tl.max(active.to(tl.int32), 0) > 0:  # a block whose tokens all stopped skips the iteration
                pre = ctx
                for d0 in range(0, D, BLOCK_D):  # the input projection: pre = ctx + z Wz^T + v Wv^T, one GEMM over D
                    cols = d0 + cols0
                    mc = cols < D
                    wm = mc[:, None] & mr[None, :]
                    wz = tl.load(wz_ptr + rr[None, :] * D + cols[:, None], mask=wm, other=0.0)  # [BD, BR]
                    wv = tl.load(wv_ptr + rr[None, :] * D + cols[:, None], mask=wm, other=0.0)
                    m = mn[:, None] & mc[None, :]
                    off = rows[:, None] * D + cols[None, :]
                    z, v = tl.load(cur + off, mask=m, other=0.0), tl.load(vcur + off, mask=m, other=0.0)
                    pre = _mma(z, wz, pre, DOT)
                    pre = _mma(v, wv, pre, DOT)
                if not ADAPTIVE:
                    tl.store(pre_ptr + k * N * R + rows[:, None] * R + rr[None, :], pre, mask=mn[:, None] & mr[None, :])
                hid = tl.maximum(pre, 0.0)
                if ADAPTIVE:
                    tl.debug_barrier()  # the update overwrites the z, v that the projection read
                new_update_sq = tl.zeros([BLOCK_N], tl.float32)
                for d0 in range(0, D, BLOCK_D):  # the output projection tile by tile, the update in its epilogue
                    cols, mc, m, off = _tile(d0, cols0, rows, mn, D)
                    alpha, beta, gate, v_target, _ = _coefficients(hid, wout_ptr, bout_ptr, rr, cols, mr, mc, D, R, s0, s1,
                                                                   s2, s3, h0, h1, h2, h3, BLOCK_N, BLOCK_D, DOT)
                    z, v = tl.load(cur + off, mask=m, other=0.0), tl.load(vcur + off, mask=m, other=0.0)
                    mu = tl.load(mu_ptr + cols, mask=mc, other=0.0)
                    v_new = alpha * v + (1.0 - alpha) * v_target - beta * (z - mu[None, :])
                    if EXCITE:  # + mask * wave_k (training) or wave_k (its expectation, evaluation)
                        wave = tl.load(wave_ptr + k * D + cols, mask=mc, other=0.0)[None, :]
                        v_new += tl.load(mask_ptr + off, mask=m, other=0.0) * wave if MASKED else wave
                    z_new = z + dt * gate * v_new
                    if ADAPTIVE:
                        z_new = tl.where(active[:, None], z_new, z)
                        v_new = tl.where(active[:, None], v_new, v)
                        new_update_sq += tl.sum(tl.where(m, (z_new - z) * (z_new - z), 0.0), 1)
                    tl.store(nxt + off, z_new, mask=m)  # training's saved iterate, or the in-place state
                    tl.store(vnxt + off, v_new, mask=m)
                update_sq = new_update_sq
            iters += active.to(tl.int32)
            tl.debug_barrier()  # the next iteration reads this one's z, v
        if ADAPTIVE:
            tl.store(iters_ptr + rows, iters, mask=mn)

    @triton.jit
    def _integrator_bwd_kernel(zs_ptr, vs_ptr, pre_ptr, wz_ptr, wv_ptr, wout_ptr, bout_ptr, scale_ptr, shift_ptr,
                               mu_ptr, mask_ptr, wave_ptr, gz_ptr, gv_ptr, graw_ptr, gpre_ptr, gmu_ptr, gwave_ptr,
                               N, D, R, K, dt, EXCITE: tl.constexpr, MASKED: tl.constexpr,
                               DOT: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_R: tl.constexpr):
        pid = tl.program_id(0)
        rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
        rr, cols0 = tl.arange(0, BLOCK_R), tl.arange(0, BLOCK_D)
        mn, mr = rows < N, rr < R
        m_pre = mn[:, None] & mr[None, :]
        s0, s1, s2, s3 = tl.load(scale_ptr), tl.load(scale_ptr + 1), tl.load(scale_ptr + 2), tl.load(scale_ptr + 3)
        h0, h1, h2, h3 = tl.load(shift_ptr), tl.load(shift_ptr + 1), tl.load(shift_ptr + 2), tl.load(shift_ptr + 3)
        for i in range(K):
            k = K - 1 - i
            cur, vcur = zs_ptr + k * N * D, vs_ptr + k * N * D  # the saved iterate z_k, v_k, streamed in
            pre = tl.load(pre_ptr + k * N * R + rows[:, None] * R + rr[None, :], mask=m_pre, other=0.0)
            hid = tl.maximum(pre, 0.0)
            ghid = tl.zeros([BLOCK_N, BLOCK_R], tl.float32)
            for d0 in range(0, D, BLOCK_D):  # the step's gradients, tile by tile, on the recomputed output projection
                cols, mc, m, off = _tile(d0, cols0, rows, mn, D)
                alpha, beta, gate, v_target, raw1 = _coefficients(hid, wout_ptr, bout_ptr, rr, cols, mr, mc, D, R, s0, s1,
                                                                  s2, s3, h0, h1, h2, h3, BLOCK_N, BLOCK_D, DOT)
                z = tl.load(cur + off, mask=m, other=0.0)
                v = tl.load(vcur + off, mask=m, other=0.0)
                mu = tl.load(mu_ptr + cols, mask=mc, other=0.0)
                err = z - mu[None, :]
                v_new = alpha * v + (1.0 - alpha) * v_target - beta * err
                gz, gv = tl.load(gz_ptr + off, mask=m, other=0.0), tl.load(gv_ptr + off, mask=m, other=0.0)  # of z, v_(k+1)
                gv_new = gv + gz * dt * gate
                if EXCITE:
                    wave = tl.load(wave_ptr + k * D + cols, mask=mc, other=0.0)[None, :]
                    if MASKED:
                        excited = tl.load(mask_ptr + off, mask=m, other=0.0)
                        v_new += excited * wave
                        tl.store(gwave_ptr + (pid * K + k) * D + cols, tl.sum(gv_new * excited, 0), mask=mc)
                    else:
                        v_new += wave
                        tl.store(gwave_ptr + (pid * K + k) * D + cols, tl.sum(gv_new, 0), mask=mc)
                # dLoss/draw_j: stored (the weight gradients' operand), and times scale through the projection
                g0 = gv_new * (v - v_target) * alpha * (1.0 - alpha)
                g1 = -gv_new * err * tl.sigmoid(raw1)
                g2 = gz * dt * v_new * gate * (1.0 - gate)
                g3 = gv_new * (1.0 - alpha)
                graw = graw_ptr + (k * N + rows[:, None]) * 4 * D + cols[None, :]
                tl.store(graw, g0.to(graw_ptr.dtype.element_ty), mask=m)
                tl.store(graw + D, g1.to(graw_ptr.dtype.element_ty), mask=m)
                tl.store(graw + 2 * D, g2.to(graw_ptr.dtype.element_ty), mask=m)
                tl.store(graw + 3 * D, g3.to(graw_ptr.dtype.element_ty), mask=m)
                # dLoss/drelu(pre) = sum_j (dLoss/draw_j * scale_j) Wout_j, Wout_j's tile [BLOCK_D, BLOCK_R] read
                # again (from cache) rather than kept live in registers across the epilogue
                wo = wout_ptr + cols[:, None] * R + rr[None, :]
                wm = mc[:, None] & mr[None, :]
                ghid = _mma(g0 * s0, tl.load(wo, mask=wm, other=0.0), ghid, DOT)
                ghid = _mma(g1 * s1, tl.load(wo + D * R, mask=wm, other=0.0), ghid, DOT)
                ghid = _mma(g2 * s2, tl.load(wo + 2 * D * R, mask=wm, other=0.0), ghid, DOT)
                ghid = _mma(g3 * s3, tl.load(wo + 3 * D * R, mask=wm, other=0.0), ghid, DOT)
                gmu = gmu_ptr + pid * D + cols  # this program's sum over its tokens
                tl.store(gmu, tl.load(gmu, mask=mc, other=0.0) + tl.sum(gv_new * beta, 0), mask=mc)
                tl.store(gz_ptr + off, gz - gv_new * beta, mask=m)
                tl.store(gv_ptr + off, gv_new * alpha, mask=m)
            gpre = tl.where(pre > 0.0, ghid, 0.0)
            tl.store(gpre_ptr + k * N * R + rows[:, None] * R + rr[None, :], gpre, mask=m_pre)
            tl.debug_barrier()
            for d0 in range(0, D, BLOCK_D):  # the controller's path back to z_k and v_k
                cols = d0 + cols0
                mc = cols < D
                wm = mr[:, None] & mc[None, :]
                wz = tl.load(wz_ptr + rr[:, None] * D + cols[None, :], mask=wm, other=0.0)  # [BR, BD]
                wv = tl.load(wv_ptr + rr[:, None] * D + cols[None, :], mask=wm, other=0.0)
                m = mn[:, None] & mc[None, :]
                off = rows[:, None] * D + cols[None, :]
                tl.store(gz_ptr + off, _mma(gpre, wz, tl.load(gz_ptr + off, mask=m, other=0.0), DOT), mask=m)
                tl.store(gv_ptr + off, _mma(gpre, wv, tl.load(gv_ptr + off, mask=m, other=0.0), DOT), mask=m)
            tl.debug_barrier()


def _dot(dtype: torch.dtype) -> str:
    """The DOT constexpr for a model computing in `dtype`: its operands' dtype where that is bf16/fp16,
    else fp32 operands at tf32x3 precision (three tf32 products: fp32 accuracy on tensor cores)."""
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "tf32x3")


def _dot_weights(dot: str, *weights):
    """The controller's weights in the dots' operand dtype (fp32 unchanged)."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(dot, torch.float32)
    return tuple(w.to(dtype).contiguous() for w in weights)


def _launch_forward(z0, ctx, wz, wv, wout, bout, scale, shift, mu, mask, waves, dt, K, dot, adaptive=None):
    """Runs the forward kernel (wz, wv, wout in the dots' dtype); returns (states zs, vs [K+1, N, D]
    (adaptive: [1, N, D], the last state), pre [K, N, r], iterations [N] or None)."""
    check_triton_device("integrator_iterations", _integrator_fwd_kernel, z0)
    n, d = z0.shape
    r = ctx.shape[1]
    if 4 * K * n * d >= 2**31:  # the kernels index with int32 (backward's graw [K, N, 4D])
        raise ValueError(f"integrator kernel: {n} tokens x {d} channels x {K} iterations is too large for one call; "
                         "split the batch")
    slots = 1 if adaptive else K + 1
    zs = z0.new_empty(slots, n, d)
    zs[0] = z0
    vs = z0.new_empty(slots, n, d)
    vs[0] = 0.0
    pre = z0.new_empty(0 if adaptive else K, n, r)
    iters = torch.empty(n if adaptive else 0, dtype=torch.int32, device=z0.device)
    min_iterations, threshold = adaptive or (0, 0.0)
    _integrator_fwd_kernel[(-(-n // BLOCK_N),)](
        zs, vs, ctx, pre, wz, wv, wout, bout, scale, shift, mu, _or(mask, mu), _or(waves, mu), iters, n, d, r, K, dt,
        min_iterations, threshold * threshold, ADAPTIVE=adaptive is not None, EXCITE=waves is not None,
        MASKED=mask is not None, DOT=dot, BLOCK_R=max(16, next_power_of_2(r)), **_launch_options(False))
    return zs, vs, pre, iters if adaptive else None


def _or(x, dummy):
    """x, or a placeholder pointer for an argument the kernel does not read."""
    return dummy if x is None else x


class TritonIntegratorIterations(torch.autograd.Function):
    """z_K of K iterations (see the module docstring). Inputs, all fp32 and contiguous: z0 [N, D],
    ctx [N, r], wz, wv [r, D], wout [4D, r], bout [4D], scale, shift [4], mu [D]; optional
    excitation: mask [N, D] (0/1, not differentiated) and waves [K, D] (v gains mask * waves[k], or
    waves[k] without a mask); `dot`, the DOT constexpr (the model's dtype). Saves every iterate z_k,
    v_k and pre_k, as autograd would for the reference loop."""

    @staticmethod
    def forward(ctx_, z0, ctx, wz, wv, wout, bout, scale, shift, mu, mask, waves, dt: float, K: int, dot: str):
        wz, wv, wout = _dot_weights(dot, wz, wv, wout)
        zs, vs, pre, _ = _launch_forward(z0, ctx, wz, wv, wout, bout, scale, shift, mu, mask, waves, dt, K, dot)
        ctx_.save_for_backward(zs, vs, pre, wz, wv, wout, bout, scale, shift, mu, mask, waves)
        ctx_.options = (dt, K, dot)
        return zs[K]

    @staticmethod
    def backward(ctx_, gout):
        zs, vs, pre, wz, wv, wout, bout, scale, shift, mu, mask, waves = ctx_.saved_tensors
        dt, K, dot = ctx_.options
        _, n, d = zs.shape
        r = pre.shape[2]
        n_prog = -(-n // BLOCK_N)
        gz = gout.float().contiguous().clone()
        gv = torch.zeros_like(gz)
        graw = zs.new_empty(K, n, 4 * d, dtype=wout.dtype)  # dLoss/draw_k, in the dots' dtype: the one [K, N, 4D] tensor
        gpre = zs.new_empty(K, n, r)
        gmu = zs.new_zeros(n_prog, d)
        gwaves = zs.new_empty(n_prog, K, d) if waves is not None else None
        _integrator_bwd_kernel[(n_prog,)](
            zs, vs, pre, wz, wv, wout, bout, scale, shift, mu, _or(mask, mu), _or(waves, mu), gz, gv, graw, gpre, gmu,
            _or(gwaves, mu), n, d, r, K, dt, EXCITE=waves is not None, MASKED=mask is not None, DOT=dot,
            BLOCK_R=max(16, next_power_of_2(r)), **_launch_options(True))
        # the weight gradients as matmuls over all K * N rows. With raw_j = lin_j * scale_j + shift_j and
        # lin_j = relu(pre) Wout_j^T + b_j, per output j: M_j = sum over (k, n) of dLoss/draw_j relu(pre)
        # [D, r] and G_j = sum of dLoss/draw_j [D] give Wout's gradient M_j scale_j, b_out's G_j scale_j,
        # shift's sum(G_j) and scale's sum(dLoss/draw_j lin_j) = sum(M_j Wout_j) + sum(G_j b_j).
        hid = pre.clamp_min(0.0).reshape(K * n, r)
        graw = graw.view(K * n, 4 * d)
        m = (graw.T @ hid.to(graw.dtype)).float().view(4, d, r)
        g = torch.sum(graw, 0, dtype=torch.float32).view(4, d)
        gpre2 = gpre.reshape(K * n, r)
        return (gz, gpre.sum(0), gpre2.T @ zs[:K].reshape(K * n, d), gpre2.T @ vs[:K].reshape(K * n, d),
                (m * scale[:, None, None]).view(4 * d, r), (g * scale[:, None]).view(4 * d),
                (m * wout.float().view(4, d, r)).sum((1, 2)) + (g * bout.view(4, d)).sum(1), g.sum(1), gmu.sum(0), None,
                None if gwaves is None else gwaves.sum(0), None, None, None)


def _fp32(x):
    return None if x is None else x.float().contiguous()


def integrator_iterations_triton(z0, ctx, wz, wv, wout, bout, scale, shift, mu, dt: float, K: int, mask=None, waves=None):
    """z_K [N, D] of K fused iterations, differentiable; inputs as for the reference (any float dtype:
    z0's picks the dots' operand dtype)."""
    args = (z0, ctx, wz, wv, wout, bout, scale, shift, mu, mask, waves)
    return TritonIntegratorIterations.apply(*map(_fp32, args), dt, K, _dot(z0.dtype)).to(z0.dtype)


@torch.no_grad()
def integrator_adaptive_triton(z0, ctx, wz, wv, wout, bout, scale, shift, mu, dt: float, K: int,
                               min_iterations: int, threshold: float, waves=None):
    """Inference with per-token adaptive stopping: (z [N, D], iterations used per token [N] int32)."""
    dtype, dot = z0.dtype, _dot(z0.dtype)
    z0, ctx, bout, scale, shift, mu, waves = map(_fp32, (z0, ctx, bout, scale, shift, mu, waves))
    wz, wv, wout = _dot_weights(dot, wz, wv, wout)
    zs, _, _, iters = _launch_forward(z0, ctx, wz, wv, wout, bout, scale, shift, mu, None, waves, dt, K, dot,
                                      adaptive=(min_iterations, threshold))
    return zs[0].to(dtype), iters
