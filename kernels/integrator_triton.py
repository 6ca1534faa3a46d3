"""The K integrator iterations of one INL layer in one Triton kernel, controller MLP included.

Per iteration k (the reference is `integrator_iterations_reference` in kernels/integrator.py):

    pre_k = ctx + z_k Wz^T + v_k Wv^T                   [N, r]   (v_0 = 0)
    raw_k = (relu(pre_k) Wout^T + b_out) * scale + shift  [N, 4, D]
    z_{k+1}, v_{k+1} = integrator step(z_k, v_k, mu, raw_k, dt)

One program owns BLOCK_N tokens and runs all K iterations. Per iteration it makes two passes
over D: the first accumulates pre_k [BLOCK_N, r] (kept in registers), the second computes raw_k
and updates (z, v). Where D fits one tile (D <= ON_CHIP_MAX_D, the tiny INL's 128), the state
(z, v) [BLOCK_N, D] stays in registers across the K iterations (`ON_CHIP`): the only memory
traffic per iteration is the weights (shared by all programs, so L2-resident) and training's
stores of the saved iterates. Wider D (the 1.1B's 1728) goes in tiles of TILE_D, and the
program's own rows of z, v are written between passes, so they stay in L2. Training's forward
writes every iterate z_k, v_k (the saved states) and pre_k; backward walks the iterations in
reverse, streaming them in, with the gradient state (dz, dv) on chip in the same way, and writes
the gradients of raw_k and pre_k, from which PyTorch forms the weight gradients as large matmuls.
The inference variant applies adaptive stopping's per-token masks: after `min_iterations`, a
token whose last update has norm below the threshold keeps its z and counts no more iterations,
and a block of tokens that all stopped skips the remaining iterations' work.
Everything computes in fp32 (tl.dot with IEEE fp32 inputs, so results match the reference).
"""
from __future__ import annotations

import torch

from .triton_runtime import check_triton_device, next_power_of_2, triton

BLOCK_N = 16
ON_CHIP_MAX_D = 256  # widest D whose state tile [BLOCK_N, D] stays in registers; wider D streams tiles through L2
TILE_D = 32  # the D tile of the streamed form


def _tiling(d: int) -> dict:
    """Launch options for D channels: one register tile spanning D (ON_CHIP), else tiles of TILE_D.
    On chip the D loop runs once, so its loads are not pipelined (num_stages 1): with Triton's default
    stages, D 128 and r 64 asked an H200 for 272 KiB of shared memory (it has 227)."""
    block = max(16, next_power_of_2(d))  # tl.dot needs every dimension >= 16
    on_chip = block <= ON_CHIP_MAX_D
    block = block if on_chip else TILE_D
    stages = {"num_stages": 1} if on_chip else {}
    return dict(ON_CHIP=on_chip, BLOCK_D=block, num_warps=max(4, BLOCK_N * block // 512), **stages)

if triton is not None:
    import triton.language as tl

    @triton.jit
    def _integrator_fwd_kernel(zs_ptr, vs_ptr, ctx_ptr, pre_ptr, wz_ptr, wv_ptr, wout_ptr, bout_ptr,
                               scale_ptr, shift_ptr, mu_ptr, mask_ptr, wave_ptr, iters_ptr,
                               N, D, R, K, dt, min_iterations, threshold_sq,
                               ADAPTIVE: tl.constexpr, EXCITE: tl.constexpr, MASKED: tl.constexpr, ON_CHIP: tl.constexpr,
                               BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_R: tl.constexpr):
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        rr, cols0 = tl.arange(0, BLOCK_R), tl.arange(0, BLOCK_D)
        mn, mr = rows < N, rr < R
        ctx = tl.load(ctx_ptr + rows[:, None] * R + rr[None, :], mask=mn[:, None] & mr[None, :], other=0.0)
        s0, s1, s2, s3 = tl.load(scale_ptr), tl.load(scale_ptr + 1), tl.load(scale_ptr + 2), tl.load(scale_ptr + 3)
        h0, h1, h2, h3 = tl.load(shift_ptr), tl.load(shift_ptr + 1), tl.load(shift_ptr + 2), tl.load(shift_ptr + 3)
        # ON_CHIP (one tile spans D): the state (z, v) [BLOCK_N, BLOCK_D] stays in registers across the K iterations
        off0 = rows[:, None] * D + cols0[None, :]
        m0 = mn[:, None] & (cols0 < D)[None, :]
        z_reg = tl.load(zs_ptr + off0, mask=m0, other=0.0)  # z_0
        v_reg = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)  # v_0 = 0
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
                for d0 in range(0, D, BLOCK_D):  # pass 1: pre = ctx + z Wz^T + v Wv^T
                    cols = d0 + cols0
                    mc = cols < D
                    m = mn[:, None] & mc[None, :]
                    off = rows[:, None] * D + cols[None, :]
                    wm = mc[:, None] & mr[None, :]
                    wz = tl.load(wz_ptr + rr[None, :] * D + cols[:, None], mask=wm, other=0.0)  # [BD, BR]
                    wv = tl.load(wv_ptr + rr[None, :] * D + cols[:, None], mask=wm, other=0.0)
                    if ON_CHIP:
                        z, v = z_reg, v_reg
                    else:
                        z, v = tl.load(cur + off, mask=m, other=0.0), tl.load(vcur + off, mask=m, other=0.0)
                    pre += tl.dot(z, wz, input_precision="ieee")
                    pre += tl.dot(v, wv, input_precision="ieee")
                if not ADAPTIVE:
                    tl.store(pre_ptr + k * N * R + rows[:, None] * R + rr[None, :], pre, mask=mn[:, None] & mr[None, :])
                hid = tl.maximum(pre, 0.0)
                if ADAPTIVE and not ON_CHIP:
                    tl.debug_barrier()  # pass 2 overwrites the z, v that pass 1 read
                new_update_sq = tl.zeros([BLOCK_N], tl.float32)
                for d0 in range(0, D, BLOCK_D):  # pass 2: raw tile by tile, then the state update
                    cols = d0 + cols0
                    mc = cols < D
                    m = mn[:, None] & mc[None, :]
                    off = rows[:, None] * D + cols[None, :]
                    wm = mr[:, None] & mc[None, :]
                    wo = wout_ptr + cols[None, :] * R + rr[:, None]  # [BR, BD] tile of Wout^T, output j at + j*D*R
                    raw0 = (tl.dot(hid, tl.load(wo, mask=wm, other=0.0), input_precision="ieee")
                            + tl.load(bout_ptr + cols, mask=mc, other=0.0)[None, :]) * s0 + h0
                    raw1 = (tl.dot(hid, tl.load(wo + D * R, mask=wm, other=0.0), input_precision="ieee")
                            + tl.load(bout_ptr + D + cols, mask=mc, other=0.0)[None, :]) * s1 + h1
                    raw2 = (tl.dot(hid, tl.load(wo + 2 * D * R, mask=wm, other=0.0), input_precision="ieee")
                            + tl.load(bout_ptr + 2 * D + cols, mask=mc, other=0.0)[None, :]) * s2 + h2
                    v_target = (tl.dot(hid, tl.load(wo + 3 * D * R, mask=wm, other=0.0), input_precision="ieee")
                                + tl.load(bout_ptr + 3 * D + cols, mask=mc, other=0.0)[None, :]) * s3 + h3
                    alpha, gate = tl.sigmoid(raw0), tl.sigmoid(raw2)
                    beta = tl.maximum(raw1, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(raw1)))  # softplus
                    if ON_CHIP:
                        z, v = z_reg, v_reg
                    else:
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
                    if ON_CHIP:  # padding kept at 0 (its raw is the shift: K updates could overflow it)
                        z_reg, v_reg = tl.where(m, z_new, 0.0), tl.where(m, v_new, 0.0)
                    if not (ADAPTIVE and ON_CHIP):  # training's saved iterate, or the in-place state in L2
                        tl.store(nxt + off, z_new, mask=m)
                        tl.store(vnxt + off, v_new, mask=m)
                update_sq = new_update_sq
            iters += active.to(tl.int32)
            if not ON_CHIP:
                tl.debug_barrier()  # the next iteration reads this one's z, v
        if ADAPTIVE:
            if ON_CHIP:
                tl.store(zs_ptr + off0, z_reg, mask=m0)
            tl.store(iters_ptr + rows, iters, mask=mn)

    @triton.jit
    def _integrator_bwd_kernel(zs_ptr, vs_ptr, pre_ptr, wz_ptr, wv_ptr, wout_ptr, bout_ptr, scale_ptr, shift_ptr,
                               mu_ptr, mask_ptr, wave_ptr, gz_ptr, gv_ptr, graw_ptr, gpre_ptr, gmu_ptr, gwave_ptr,
                               N, D, R, K, dt, EXCITE: tl.constexpr, MASKED: tl.constexpr, ON_CHIP: tl.constexpr,
                               BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_R: tl.constexpr):
        pid = tl.program_id(0)
        rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
        rr, cols0 = tl.arange(0, BLOCK_R), tl.arange(0, BLOCK_D)
        mn, mr = rows < N, rr < R
        m_pre = mn[:, None] & mr[None, :]
        s0, s1, s2, s3 = tl.load(scale_ptr), tl.load(scale_ptr + 1), tl.load(scale_ptr + 2), tl.load(scale_ptr + 3)
        h0, h1, h2, h3 = tl.load(shift_ptr), tl.load(shift_ptr + 1), tl.load(shift_ptr + 2), tl.load(shift_ptr + 3)
        # ON_CHIP: the gradient state (dLoss/dz_k, dLoss/dv_k) [BLOCK_N, BLOCK_D] stays in registers across iterations
        off0 = rows[:, None] * D + cols0[None, :]
        m0 = mn[:, None] & (cols0 < D)[None, :]
        gz_reg = tl.load(gz_ptr + off0, mask=m0, other=0.0)
        gv_reg = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)  # the loss reads z_K only
        for i in range(K):
            k = K - 1 - i
            cur, vcur = zs_ptr + k * N * D, vs_ptr + k * N * D  # the saved iterate z_k, v_k, streamed in
            pre = tl.load(pre_ptr + k * N * R + rows[:, None] * R + rr[None, :], mask=m_pre, other=0.0)
            hid = tl.maximum(pre, 0.0)
            ghid = tl.zeros([BLOCK_N, BLOCK_R], tl.float32)
            for d0 in range(0, D, BLOCK_D):  # the step's gradients, tile by tile
                cols = d0 + cols0
                mc = cols < D
                m = mn[:, None] & mc[None, :]
                off = rows[:, None] * D + cols[None, :]
                wm = mr[:, None] & mc[None, :]
                wo = wout_ptr + cols[None, :] * R + rr[:, None]
                w0 = tl.load(wo, mask=wm, other=0.0)
                w1 = tl.load(wo + D * R, mask=wm, other=0.0)
                w2 = tl.load(wo + 2 * D * R, mask=wm, other=0.0)
                w3 = tl.load(wo + 3 * D * R, mask=wm, other=0.0)
                raw0 = (tl.dot(hid, w0, input_precision="ieee") + tl.load(bout_ptr + cols, mask=mc, other=0.0)[None, :]) * s0 + h0
                raw1 = (tl.dot(hid, w1, input_precision="ieee") + tl.load(bout_ptr + D + cols, mask=mc, other=0.0)[None, :]) * s1 + h1
                raw2 = (tl.dot(hid, w2, input_precision="ieee") + tl.load(bout_ptr + 2 * D + cols, mask=mc, other=0.0)[None, :]) * s2 + h2
                v_target = (tl.dot(hid, w3, input_precision="ieee")
                            + tl.load(bout_ptr + 3 * D + cols, mask=mc, other=0.0)[None, :]) * s3 + h3
                alpha, gate = tl.sigmoid(raw0), tl.sigmoid(raw2)
                beta = tl.maximum(raw1, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(raw1)))
                z = tl.load(cur + off, mask=m, other=0.0)
                v = tl.load(vcur + off, mask=m, other=0.0)
                mu = tl.load(mu_ptr + cols, mask=mc, other=0.0)
                err = z - mu[None, :]
                v_new = alpha * v + (1.0 - alpha) * v_target - beta * err
                if ON_CHIP:  # dLoss/dz_(k+1), dLoss/dv_(k+1)
                    gz, gv = gz_reg, gv_reg
                else:
                    gz, gv = tl.load(gz_ptr + off, mask=m, other=0.0), tl.load(gv_ptr + off, mask=m, other=0.0)
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
                graw = graw_ptr + ((k * N + rows[:, None]) * 4) * D + cols[None, :]  # [K, N, 4, D]
                g0 = gv_new * (v - v_target) * alpha * (1.0 - alpha)
                g1 = -gv_new * err * tl.sigmoid(raw1)
                g2 = gz * dt * v_new * gate * (1.0 - gate)
                g3 = gv_new * (1.0 - alpha)
                tl.store(graw, g0, mask=m)
                tl.store(graw + D, g1, mask=m)
                tl.store(graw + 2 * D, g2, mask=m)
                tl.store(graw + 3 * D, g3, mask=m)
                ghid += tl.dot(g0 * s0, tl.trans(w0), input_precision="ieee")
                ghid += tl.dot(g1 * s1, tl.trans(w1), input_precision="ieee")
                ghid += tl.dot(g2 * s2, tl.trans(w2), input_precision="ieee")
                ghid += tl.dot(g3 * s3, tl.trans(w3), input_precision="ieee")
                gmu = gmu_ptr + pid * D + cols
                tl.store(gmu, tl.load(gmu, mask=mc, other=0.0) + tl.sum(gv_new * beta, 0), mask=mc)
                if ON_CHIP:
                    gz_reg, gv_reg = gz - gv_new * beta, gv_new * alpha
                else:
                    tl.store(gz_ptr + off, gz - gv_new * beta, mask=m)
                    tl.store(gv_ptr + off, gv_new * alpha, mask=m)
            gpre = tl.where(pre > 0.0, ghid, 0.0)
            tl.store(gpre_ptr + k * N * R + rows[:, None] * R + rr[None, :], gpre, mask=m_pre)
            if not ON_CHIP:
                tl.debug_barrier()
            for d0 in range(0, D, BLOCK_D):  # the controller's path back to z_k and v_k
                cols = d0 + cols0
                mc = cols < D
                m = mn[:, None] & mc[None, :]
                off = rows[:, None] * D + cols[None, :]
                wm = mr[:, None] & mc[None, :]
                wz = tl.load(wz_ptr + rr[:, None] * D + cols[None, :], mask=wm, other=0.0)  # [BR, BD]
                wv = tl.load(wv_ptr + rr[:, None] * D + cols[None, :], mask=wm, other=0.0)
                gz_pre, gv_pre = tl.dot(gpre, wz, input_precision="ieee"), tl.dot(gpre, wv, input_precision="ieee")
                if ON_CHIP:
                    gz_reg += gz_pre
                    gv_reg += gv_pre
                else:
                    tl.store(gz_ptr + off, tl.load(gz_ptr + off, mask=m, other=0.0) + gz_pre, mask=m)
                    tl.store(gv_ptr + off, tl.load(gv_ptr + off, mask=m, other=0.0) + gv_pre, mask=m)
            if not ON_CHIP:
                tl.debug_barrier()
        if ON_CHIP:
            tl.store(gz_ptr + off0, gz_reg, mask=m0)


def _launch_forward(z0, ctx, wz, wv, wout, bout, scale, shift, mu, mask, waves, dt, K, adaptive=None):
    """Runs the forward kernel; returns (states zs, vs [K+1, N, D] (adaptive: [1, N, D], the last state),
    pre [K, N, r], iterations [N] or None)."""
    check_triton_device("integrator_iterations", _integrator_fwd_kernel, z0)
    n, d = z0.shape
    r = ctx.shape[1]
    if 4 * K * n * d >= 2**31:  # the kernels index with int32 (backward's raw gradients [K, N, 4, D])
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
        MASKED=mask is not None, BLOCK_N=BLOCK_N, BLOCK_R=max(16, next_power_of_2(r)), **_tiling(d))
    return zs, vs, pre, iters if adaptive else None


def _or(x, dummy):
    """x, or a placeholder pointer for an argument the kernel does not read."""
    return dummy if x is None else x


class TritonIntegratorIterations(torch.autograd.Function):
    """z_K of K iterations (see the module docstring). Inputs, all fp32 and contiguous: z0 [N, D],
    ctx [N, r], wz, wv [r, D], wout [4D, r], bout [4D], scale, shift [4], mu [D]; optional
    excitation: mask [N, D] (0/1, not differentiated) and waves [K, D] (v gains mask * waves[k], or
    waves[k] without a mask). Saves every iterate z_k, v_k and pre_k, as autograd would for the
    reference loop."""

    @staticmethod
    def forward(ctx_, z0, ctx, wz, wv, wout, bout, scale, shift, mu, mask, waves, dt: float, K: int):
        zs, vs, pre, _ = _launch_forward(z0, ctx, wz, wv, wout, bout, scale, shift, mu, mask, waves, dt, K)
        ctx_.save_for_backward(zs, vs, pre, wz, wv, wout, bout, scale, shift, mu, mask, waves)
        ctx_.options = (dt, K)
        return zs[K]

    @staticmethod
    def backward(ctx_, gout):
        zs, vs, pre, wz, wv, wout, bout, scale, shift, mu, mask, waves = ctx_.saved_tensors
        dt, K = ctx_.options
        _, n, d = zs.shape
        r = pre.shape[2]
        n_prog = -(-n // BLOCK_N)
        gz = gout.float().contiguous().clone()
        gv = torch.zeros_like(gz)
        graw = zs.new_empty(K, n, 4, d)
        gpre = zs.new_empty(K, n, r)
        gmu = zs.new_zeros(n_prog, d)
        gwaves = zs.new_empty(n_prog, K, d) if waves is not None else None
        _integrator_bwd_kernel[(n_prog,)](
            zs, vs, pre, wz, wv, wout, bout, scale, shift, mu, _or(mask, mu), _or(waves, mu), gz, gv, graw, gpre, gmu,
            _or(gwaves, mu), n, d, r, K, dt, EXCITE=waves is not None, MASKED=mask is not None,
            BLOCK_N=BLOCK_N, BLOCK_R=max(16, next_power_of_2(r)), **_tiling(d))
        # weight gradients as matmuls over all K * N rows
        hid = pre.clamp_min(0.0).reshape(K * n, r)
        raw_lin = torch.addmm(bout, hid, wout.T).view(K, n, 4, d)
        glin = (graw * scale[:, None]).view(K * n, 4 * d)
        gpre2 = gpre.reshape(K * n, r)
        return (gz, gpre.sum(0), gpre2.T @ zs[:K].reshape(K * n, d), gpre2.T @ vs[:K].reshape(K * n, d),
                glin.T @ hid, glin.sum(0), (graw * raw_lin).sum((0, 1, 3)), graw.sum((0, 1, 3)), gmu.sum(0), None,
                None if gwaves is None else gwaves.sum(0), None, None)


def _fp32(x):
    return None if x is None else x.float().contiguous()


def integrator_iterations_triton(z0, ctx, wz, wv, wout, bout, scale, shift, mu, dt: float, K: int, mask=None, waves=None):
    """z_K [N, D] of K fused iterations, differentiable; inputs as for the reference (any float dtype)."""
    args = (z0, ctx, wz, wv, wout, bout, scale, shift, mu, mask, waves)
    return TritonIntegratorIterations.apply(*map(_fp32, args), dt, K).to(z0.dtype)


@torch.no_grad()
def integrator_adaptive_triton(z0, ctx, wz, wv, wout, bout, scale, shift, mu, dt: float, K: int,
                               min_iterations: int, threshold: float, waves=None):
    """Inference with per-token adaptive stopping: (z [N, D], iterations used per token [N] int32)."""
    args = map(_fp32, (z0, ctx, wz, wv, wout, bout, scale, shift, mu, None, waves))
    zs, _, _, iters = _launch_forward(*args, dt, K, adaptive=(min_iterations, threshold))
    return zs[0].to(z0.dtype), iters
