// Innermost CPU kernels of the score engine.
//
// Every entry point dispatches at run time to the widest instruction set the CPU offers
// (AVX-512F, AVX2+FMA, or portable C), chosen once with __builtin_cpu_supports. Each variant is
// compiled with a per-function `__attribute__((target(...)))`, so the package needs no ISA build
// flags and a binary built on one x86-64 machine runs correctly on any other.
//
// The environment variable SCORE_ISA=portable|avx2|avx512 caps the choice (tests use it to
// cover the portable path on machines that have AVX-512).
//
// All functions are single-threaded and keep no shared mutable state apart from the ISA choice
// and per-thread packing buffers, so callers may run them on many threads at once.
#ifndef SCORE_CKERNELS_H
#define SCORE_CKERNELS_H

#include <stdint.h>
#include "score_memory.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    SCORE_ISA_PORTABLE = 0,
    SCORE_ISA_AVX2 = 1,
    SCORE_ISA_AVX512 = 2,
} score_isa;

/// The instruction set the kernels use (after SCORE_ISA capping).
score_isa score_active_isa(void);
/// Override the choice for this process (used by tests); clamps to what the CPU supports.
/// It is not capped by SCORE_ISA: an explicit call wins over the environment.
void score_set_isa(score_isa isa);
/// Human-readable name of the active variant: "portable", "avx2", "avx512", or
/// "avx512-layout-on-avx2" (see score_set_isa_avx512_layout_on_avx2).
const char *score_active_isa_name(void);
/// Test hook. Selects the AVX-512 variant's code (the same C template with the same
/// parameters: 16-lane vectors, 14×32 micro-tiles, AVX-512 blocking sizes) compiled for
/// AVX2+FMA instead of AVX-512F, so machines without AVX-512 still execute and test the
/// AVX-512 variant's tiling, packing, edge and tail logic. Returns 1 on success, 0 if the CPU
/// lacks AVX2+FMA (the choice is then unchanged). score_active_isa() reports SCORE_ISA_AVX2
/// while it is active; score_set_isa() leaves it.
int score_set_isa_avx512_layout_on_avx2(void);

/// Micro-tile size of the active GEMM variant (rows of C per panel of A, columns of C per
/// panel of B). Callers that split C across threads align block edges to these.
int64_t score_sgemm_mr(void);
int64_t score_sgemm_nr(void);

/// Single-threaded row-major SGEMM on a block:
///   C[m,n] = alpha * sum_k op(A)[m,k] * op(B)[k,n] + beta * C[m,n]
/// op(A) is A (M×K, row stride lda) or, with transA, Aᵀ where A is K×M (row stride lda).
/// op(B) is B (K×N, row stride ldb) or, with transB, Bᵀ where B is N×K (row stride ldb).
/// beta == 0 overwrites C without reading it (NaNs in C do not propagate).
/// alpha == 0 or K == 0 only scales C by beta (A and B are not read), as in BLAS.
/// Each element's result depends only on its own row of op(A), column of op(B) and K, never on
/// M, N or where the block sits, so splitting C across threads gives bitwise identical results.
/// Threading is done by the caller over disjoint blocks of C.
void score_sgemm(int transA, int transB, int64_t M, int64_t N, int64_t K,
                 float alpha, const float *A, int64_t lda,
                 const float *B, int64_t ldb,
                 float beta, float *C, int64_t ldc);

/// One image of a 2-D convolution (NCHW, symmetric zero padding): the column matrix ("im2col")
/// has a row per (channel c, kernel row ky, kernel column kx), channel-major, and a column per
/// output position (oy, ox), row-major; entry image[c, oy·stride − padding + ky,
/// ox·stride − padding + kx], 0 outside the image.
typedef struct {
    const float *image;  ///< [channels, height, width]
    int64_t channels, height, width;
    int64_t kernel_h, kernel_w, stride, padding;
    int64_t out_h, out_w;  ///< (height + 2·padding − kernel_h) / stride + 1, likewise for width
} score_conv_geometry;

/// score_sgemm with op(B) the column matrix of `conv`, never materialised: transB = 0 takes
/// op(B) = columns[0..<K, b_col0..<b_col0+N] (K = channels·kernel_h·kernel_w; a convolution's
/// forward pass), transB = 1 takes op(B)[k, j] = columns[b_col0 + j, k] (K = out_h·out_w; its
/// weight gradient). Bitwise the same as score_sgemm on the materialised matrix.
void score_sgemm_im2col(int transA, int transB, int64_t M, int64_t N, int64_t K,
                        float alpha, const float *A, int64_t lda,
                        const score_conv_geometry *conv, int64_t b_col0,
                        float beta, float *C, int64_t ldc);

/// bf16 GEMM (AVX512-BF16, inference only): score_sgemm's contract (C = alpha·op(A)·op(B) +
/// beta·C, transposes, strides, beta == 0 not reading C, BLAS semantics for K == 0 or
/// alpha == 0, per-element results independent of the block split) with op(A) and op(B) rounded
/// to bf16 (round to nearest even; denormals flushed to zero) and products accumulated in fp32.
/// Error against the exact product: at most (2⁻⁷ + 2⁻¹⁶)·Σ|a·b| per element from rounding the
/// operands (2⁻⁸ each), plus fp32 accumulation; random signs make it about 2⁻⁸·√Σ(a·b)².
/// Uses the AVX-512 variant's micro-tile (score_sgemm_mr/nr), so it needs the avx512 variant
/// active: available only when score_bf16_available() says so; otherwise it aborts with the reason.
void score_sgemm_bf16(int transA, int transB, int64_t M, int64_t N, int64_t K,
                      float alpha, const float *A, int64_t lda,
                      const float *B, int64_t ldb,
                      float beta, float *C, int64_t ldc);
/// score_sgemm_im2col with the arithmetic of score_sgemm_bf16.
void score_sgemm_im2col_bf16(int transA, int transB, int64_t M, int64_t N, int64_t K,
                             float alpha, const float *A, int64_t lda,
                             const score_conv_geometry *conv, int64_t b_col0,
                             float beta, float *C, int64_t ldc);
/// 1 when the bf16 GEMM can run: the CPU has AVX512-BF16 with AVX-512F/BW (cpuid leaf 7), the
/// OS saves the AVX-512 state (XCR0), and the active variant is avx512 (SCORE_ISA or
/// score_set_isa capping below it makes bf16 unavailable).
int score_bf16_available(void);
/// Why score_bf16_available() is 0, as a sentence fragment ("this CPU lacks AVX512-BF16 …");
/// NULL when it is 1.
const char *score_bf16_unavailable_reason(void);

/// Row-wise softmax of a rows×cols row-major matrix (rows contiguous, stride cols):
/// y[r,c] = exp(x[r,c] - max_r) / sum_c exp(x[r,c] - max_r). The sum is accumulated in double.
/// x and y may be the same buffer.
void score_softmax_rows(const float *x, float *y, int64_t rows, int64_t cols);

/// y[i] = exp(x[i]). Polynomial (Cephes-style) exp: relative error below 1e-6 (about 1-2 ulp)
/// over [-87, 88]; +inf above ~88.72, denormals then 0 below -87.3, NaN stays NaN.
/// x and y may be the same buffer.
void score_vexp(const float *x, float *y, int64_t n);

/// y[i] = x[i] * sigmoid(x[i]) = x[i] / (1 + exp(-x[i])); silu(-inf) = 0 (the limit), NaN stays
/// NaN. Relative error below 1e-6. x and y may be the same buffer.
void score_silu(const float *x, float *y, int64_t n);

/// y[i] = gelu(x[i]) = x[i] * Phi(x[i]) with erf by Abramowitz & Stegun 7.1.26 (absolute error
/// of erf below 1.5e-7). x and y may be the same buffer.
void score_gelu(const float *x, float *y, int64_t n);

/// Mean and biased variance of x[0..<n], accumulated in double (two passes). n = 0 gives 0, 0.
void score_moments(const float *x, int64_t n, double *mean, double *variance);

/// sum_g = Σ g[i], sum_gx = Σ g[i] * (x[i] - mean) * rstd, accumulated in double: the sums a
/// normalisation's backward needs per channel.
void score_norm_grad_sums(const float *g, const float *x, int64_t n, float mean, float rstd,
                          double *sum_g, double *sum_gx);

/// dx[i] = g[i] * silu'(x[i]). dx may be x or g.
void score_silu_grad(const float *x, const float *g, float *dx, int64_t n);

/// dx[i] = g[i] * gelu'(x[i]) = g[i] * (Phi(x[i]) + x[i] * phi(x[i])). dx may be x or g.
void score_gelu_grad(const float *x, const float *g, float *dx, int64_t n);

/// Per-thread flag the Swift layer sets while a thread runs a parallel region's body, so that
/// kernels called from inside one run inline instead of nesting thread pools.
int score_thread_in_parallel(void);
void score_thread_set_in_parallel(int on);

#ifdef __cplusplus
}
#endif

#endif
