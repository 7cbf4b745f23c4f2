// CKernels: the innermost CPU kernels of the score engine (SGEMM, softmax, exp, SiLU).
//
// Why C, and why per-function target attributes
// ----------------------------------------------
// The engine must be one build that runs on any x86-64 machine and uses AVX-512 or AVX2+FMA
// where the CPU has them. Swift has no per-function target attribute: without ISA flags it
// turns each FMA into a libm call (<1 GFLOP/s), and ISA flags need `unsafeFlags`, which SwiftPM
// refuses in a package used as a versioned dependency (and would build a binary that only runs
// on CPUs like the build machine's). Clang's `__attribute__((target("...")))` lets one C file hold
// an AVX-512, an AVX2+FMA and a portable copy of each kernel, all compiled without flags; here it
// is applied to whole regions with `#pragma clang attribute push`. At run time the widest
// variant the CPU supports is chosen once (`__builtin_cpu_init` + `__builtin_cpu_supports`, the
// simdjson/xxhash pattern), capped by the environment variable SCORE_ISA=portable|avx2|avx512,
// and switchable by tests with score_set_isa. On non-x86 targets only the portable variant is
// built (clang's vector extensions become NEON on arm64).
//
// One source, several ISAs
// ------------------------
// The kernel bodies live once in kernel_template.h, written with clang/GCC vector extensions
// (`float __attribute__((vector_size(...)))`), and are instantiated per ISA with different
// lane counts, micro-tile and blocking sizes. The AVX-512 variant is also instantiated a second
// time for an AVX2 target (score_set_isa_avx512_layout_on_avx2), so its tile/packing/edge logic is
// tested even on machines without AVX-512; only the instruction selection differs.
//
// SGEMM design (BLIS/GotoBLAS)
// ----------------------------
// C is computed in NC-column × KC-deep × MC-row blocks. For each (NC, KC) block op(B) is packed
// into NR-column panels (k-major, zero-padded), for each MC block op(A) into MR-row panels; the
// micro-kernel keeps an MR×NR tile of C in registers (AVX2: 6×16 = 12 ymm accumulators; AVX-512:
// 14×32 = 28 zmm accumulators; portable: 6×8 with 4-lane vectors) and performs one broadcast-FMA
// per row and vector per k. Packing makes all four transpose combinations and any lda/ldb run the
// same kernel with unit-stride loads. Edge tiles run the same kernel on a scratch tile, so each
// element's value is one FMA chain over k that does not depend on its position: splitting C over
// threads (done by the Swift layer, over M/N only) gives bitwise identical results.
// beta == 0 never reads C; alpha == 0 or K == 0 only scales C (BLAS semantics).
// Packing buffers are per thread (pthread key, freed at thread exit) and reused across calls.
//
// Measured (2026-11, AMD EPYC Zen 3, AVX2+FMA, no AVX-512, 2 vCPUs at ~3.1 GHz: AVX2 FMA peak
// ≈ 99 GFLOP/s per core, measured with a register-only FMA loop). The machine is shared with
// other builds, so ours and torch 2.13 CPU (MKL, OMP_WAIT_POLICY=PASSIVE, set_num_threads) ran
// interleaved call by call in one process, 120-200 rounds, best wall-clock time each, GFLOP/s:
//                          1 thread                  2 threads
//                     portable  avx2  torch       portable  avx2  torch
//   1024³        NN     30.2    92.7   92.1         ~60    182.5  179.6
//   256×4096×512 NN     29.3    88.6   86.7         ~59    170.2  154.4
//   256×4096×512 NT     29.2    83.7   84.2         ~58    166.5  149.9
// Through the Swift layer (Kernels.sgemm, Dispatch threads) in a quiet window: 90.1 / 182.1
// (1024³, 1 / 2 threads), 86.6 / 159.0 (256×4096×512 NN), 81.2 / 160.6 (NT).
// The single-thread AVX2 kernel runs at ~93-95% of FMA peak; packing costs ~2% at 1024³ and
// ~5-8% at M = 256 (each packed B element serves few rows). Varying MC (72-192), KC (192-512),
// NC (512-4080) and unrolling k by 4 moved results less than the run-to-run noise (±3%), so the
// BLIS Zen defaults (MC 144, KC 256, NC 4080) stay. Reproduce with
// tools/bench_sgemm_interleaved.py (the table above) and, through the Swift layer,
// `SCORE_BENCH=1 swift test -c release --filter ThroughputReport`; both also print a rate by
// CPU time per thread, which stays stable under load.
// Row kernels (AVX2, 1M floats, one thread): exp 1.6 G/s, SiLU 1.2 G/s, softmax 1.0 G/s
// (a libm expf loop: 0.27 G/s); largest error against double-precision libm over [-87, 88]:
// exp 0.99 ulp (8.3e-8 relative), SiLU 1.7e-7 relative.
#include "CKernels.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#define SCORE_X86 1
#endif

typedef float score_v4f __attribute__((vector_size(16)));
typedef int32_t score_v4i __attribute__((vector_size(16)));
typedef double score_v4d __attribute__((vector_size(32)));
#ifdef SCORE_X86
typedef float score_v8f __attribute__((vector_size(32)));
typedef int32_t score_v8i __attribute__((vector_size(32)));
typedef double score_v8d __attribute__((vector_size(64)));
typedef float score_v16f __attribute__((vector_size(64)));
typedef int32_t score_v16i __attribute__((vector_size(64)));
typedef double score_v16d __attribute__((vector_size(128)));
#endif

// ---------------------------------------------------------------------------------------------
// Per-thread packing buffers, grown on demand and freed when the thread exits. Reusing them
// avoids a multi-megabyte malloc (and its page faults) on every GEMM call.

typedef struct {
    float *a, *b;
    size_t a_cap, b_cap;  // in floats
} score_pack_buffers_t;

// Two sets per thread: the fp32 GEMM's panels, and the bf16 GEMM's (fp32 staging and bf16 pairs).
static pthread_key_t score_pack_key, score_bf16_pack_key;
static pthread_once_t score_pack_once = PTHREAD_ONCE_INIT;

static void score_free_pack_buffers(void *p) {
    score_pack_buffers_t *buf = p;
    free(buf->a);
    free(buf->b);
    free(buf);
}

static void score_make_pack_key(void) {
    pthread_key_create(&score_pack_key, score_free_pack_buffers);
    pthread_key_create(&score_bf16_pack_key, score_free_pack_buffers);
}

static float *score_grow(float *old, size_t *cap, size_t need) {
    if (need <= *cap) return old;
    free(old);
    size_t bytes = (need * sizeof(float) + 63) & ~(size_t)63;
    float *p = aligned_alloc(64, bytes);
    if (!p) {
        fprintf(stderr, "score CKernels: out of memory for a %zu-byte GEMM packing buffer\n", bytes);
        abort();
    }
    *cap = need;
    return p;
}

static void score__thread_buffers(const pthread_key_t *key, size_t a_floats, size_t b_floats, float **a, float **b) {
    pthread_once(&score_pack_once, score_make_pack_key);
    score_pack_buffers_t *buf = pthread_getspecific(*key);
    if (!buf) {
        buf = calloc(1, sizeof *buf);
        if (!buf) abort();
        pthread_setspecific(*key, buf);
    }
    buf->a = score_grow(buf->a, &buf->a_cap, a_floats);
    buf->b = score_grow(buf->b, &buf->b_cap, b_floats);
    *a = buf->a;
    *b = buf->b;
}

static void score__pack_buffers(size_t a_floats, size_t b_floats, float **a, float **b) {
    score__thread_buffers(&score_pack_key, a_floats, b_floats, a, b);
}

// ---------------------------------------------------------------------------------------------
// Instantiations. Blocking: KC·NR·4 bytes (one B panel) fits L1 with room for the A panel
// stream; MC·KC·4 (the packed A block) fits L2; KC·NC·4 (the packed B block) stays in L2/L3.

// Vector-typed helpers are always_inline and file-local, so no value ever crosses a real call
// boundary; the ABI notes clang emits for wide vectors in narrower-target functions do not apply.
#pragma clang diagnostic ignored "-Wpsabi"

#define SK_FMA_PLAIN(a, b, c) ((a) * (b) + (c))
#define SK_FMA_FUSED(a, b, c) __builtin_elementwise_fma((a), (b), (c))

// Portable: 4-lane vectors (SSE2 on x86-64, NEON on arm64), 6×8 tile = 12 accumulators.
#define SK(name) name##_portable
#define SK_V score_v4f
#define SK_VI score_v4i
#define SK_VD score_v4d
#define SK_LANES 4
#define SK_MR 6
#define SK_NR 8
#define SK_MC 96
#define SK_KC 256
#define SK_NC 2048
#define SK_FMA SK_FMA_PLAIN
#include "kernel_template.h"
#undef SK
#undef SK_V
#undef SK_VI
#undef SK_VD
#undef SK_LANES
#undef SK_MR
#undef SK_NR
#undef SK_MC
#undef SK_KC
#undef SK_NC
#undef SK_FMA

#ifdef SCORE_X86

// AVX2+FMA: 8-lane ymm, 6×16 tile = 12 accumulators + 2 B vectors + 1 broadcast of 16 ymm.
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#define SK(name) name##_avx2
#define SK_V score_v8f
#define SK_VI score_v8i
#define SK_VD score_v8d
#define SK_LANES 8
#define SK_MR 6
#define SK_NR 16
#define SK_MC 144
#define SK_KC 256
#define SK_NC 4080
#define SK_FMA SK_FMA_FUSED
#include "kernel_template.h"
#undef SK
#undef SK_V
#undef SK_VI
#undef SK_VD
#undef SK_LANES
#undef SK_MR
#undef SK_NR
#undef SK_MC
#undef SK_KC
#undef SK_NC
#undef SK_FMA
#pragma clang attribute pop

// AVX-512F: 16-lane zmm, 14×32 tile = 28 accumulators + 2 B vectors (+ broadcasts folded into
// the FMAs' memory operands) of 32 zmm; the generated loop was checked for spills (none).
// KC = 256 keeps the B panel (32 KB) inside a 48 KB L1D. Not tuned on AVX-512 hardware (none
// was available): tune with the SCORE_BENCH=1 throughput report on such a machine.
// Shared by the real and the AVX2-hosted instantiation.
#define SCORE_AVX512_MR 14
#define SCORE_AVX512_NR 32
#define SCORE_AVX512_MC 140
#define SCORE_AVX512_KC 256
#define SCORE_AVX512_NC 4096

#define SK_V score_v16f
#define SK_VI score_v16i
#define SK_VD score_v16d
#define SK_LANES 16
#define SK_MR SCORE_AVX512_MR
#define SK_NR SCORE_AVX512_NR
#define SK_MC SCORE_AVX512_MC
#define SK_KC SCORE_AVX512_KC
#define SK_NC SCORE_AVX512_NC
#define SK_FMA SK_FMA_FUSED

#pragma clang attribute push(__attribute__((target("avx512f,avx2,fma"))), apply_to = function)
#define SK(name) name##_avx512
#include "kernel_template.h"
#undef SK
#pragma clang attribute pop

// The same AVX-512 code, compiled for AVX2 (each 16-lane op becomes two ymm ops): a test vehicle
// for machines without AVX-512, never chosen by dispatch.
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#define SK(name) name##_avx512_on_avx2
#include "kernel_template.h"
#undef SK
#pragma clang attribute pop

#undef SK_V
#undef SK_VI
#undef SK_VD
#undef SK_LANES
#undef SK_MR
#undef SK_NR
#undef SK_MC
#undef SK_KC
#undef SK_NC
#undef SK_FMA

#endif  // SCORE_X86

#ifdef SCORE_X86
// ---------------------------------------------------------------------------------------------
// bf16 GEMM (AVX512-BF16): the same loop nest and contract as the fp32 GEMM, with both packed
// operands rounded to bf16 (round to nearest even, by vcvtne2ps2bf16) and multiplied by
// vdpbf16ps, which adds two bf16·bf16 products per fp32 lane into fp32 accumulators. Each packed
// 32-bit word holds a pair of consecutive k, (k = 2p in the low half, 2p + 1 in the high half),
// the layout vdpbf16ps reads: A panels hold, per pair, MR words (one per row, broadcast by the
// micro-kernel), B panels NR words (one per column, two zmm loads).
// Packing reuses the AVX-512 fp32 routines (so every transpose, the implicit im2col and the
// zero padding behave exactly as in the fp32 path): a few panels at a time go to an fp32
// staging buffer in L2, then are converted into the bf16 block. The tile (14×32), the blocking
// across threads (by M and N only) and the depth split (by K only, into an even number per
// block so that no pair straddles two blocks) keep each element's arithmetic independent of
// where its tile lies: results do not depend on the thread count.
// The instructions flush denormal inputs to zero and ignore MXCSR (documented behaviour).
// Measured (2026-12, AMD EPYC Zen 5, one thread, beside the fp32 kernel): 1024³ 258 → 475
// GFLOP/s, 256×4096×512 240 → 405; vdpbf16ps (32 multiply-adds) issues about as often as an
// fp32 FMA (16). docs/BENCHMARKS.md ("bf16 inference") has the rest.

#include <cpuid.h>
#include <immintrin.h>

#define SCORE_BF16_MR SCORE_AVX512_MR
#define SCORE_BF16_NR SCORE_AVX512_NR
#define SCORE_BF16_MC SCORE_AVX512_MC
// The fp32 depth block: pack_b_im2col's L1 tile holds NR × KC floats (512 measured no faster).
#define SCORE_BF16_KC SCORE_AVX512_KC
#define SCORE_BF16_NC SCORE_AVX512_NC
#define SCORE_BF16_STAGE_PANELS 4  // B panels staged in fp32 per conversion pass

#pragma clang attribute push(__attribute__((target("avx512bf16,avx512bw,avx512f,avx2,fma"))), apply_to = function)

// dst (ceil(kc/2) rows of `width` words) from an fp32 panel (kc rows of `width` floats,
// k-major): word j of pair row p = (bf16(src[2p][j]), bf16(src[2p+1][j])); an odd kc's last
// pair takes 0 as its second value.
static inline __attribute__((always_inline))
void score_bf16_pairs(const float *lo, const float *hi, int width, uint32_t *restrict dst) {
    // Interleaves the two halves of vcvtne2ps2bf16's result: word j = (low[j], high[j]).
    const __m512i interleave = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8,
                                                23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    for (int j = 0; j < width; j += 16) {
        const __mmask16 lanes = width - j >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (width - j)) - 1);
        const __m512 l = _mm512_maskz_loadu_ps(lanes, lo + j);
        const __m512 h = hi ? _mm512_maskz_loadu_ps(lanes, hi + j) : _mm512_setzero_ps();
        const __m512i pairs = _mm512_permutexvar_epi16(interleave, (__m512i)_mm512_cvtne2ps_pbh(h, l));
        _mm512_mask_storeu_epi32(dst + j, lanes, pairs);
    }
}

static inline __attribute__((always_inline))
void score_bf16_pair_panel(const float *src, int64_t kc, int width, uint32_t *restrict dst) {
    for (int64_t p = 0; p < kc; p += 2)
        score_bf16_pairs(src + p * width, p + 1 < kc ? src + (p + 1) * width : NULL, width, dst + (p / 2) * width);
}

// A convolution's forward operand, op(B) = columns[k0 + p, col0 + j] (transB = 0), straight
// into the bf16 B block: two rows of the column matrix at a time into L1 buffers (the fp32
// path's im2col_row), converted pair by pair into every panel. Saves the staging pass.
static void score_bf16_pack_b_im2col(const score_conv_geometry *g, int64_t k0, int64_t col0, int64_t kc,
                                     int64_t nc, uint32_t *restrict dst) {
    _Alignas(64) float lo[SCORE_BF16_NC], hi[SCORE_BF16_NC];
    const int64_t kp = (kc + 1) / 2, padded = (nc + SCORE_BF16_NR - 1) / SCORE_BF16_NR * SCORE_BF16_NR;
    for (int64_t j = nc; j < padded; j++) lo[j] = hi[j] = 0.0f;
    for (int64_t p = 0; p < kc; p += 2) {
        im2col_row_avx512(g, k0 + p, col0, nc, lo);
        if (p + 1 < kc) im2col_row_avx512(g, k0 + p + 1, col0, nc, hi);
        for (int64_t jr = 0; jr < padded; jr += SCORE_BF16_NR)
            score_bf16_pairs(lo + jr, p + 1 < kc ? hi + jr : NULL, SCORE_BF16_NR, dst + jr * kp + (p / 2) * SCORE_BF16_NR);
    }
}

// C[0:MR, 0:NR] = alpha · Σ_p a-pairs · b-pairs + beta · C (beta == 0: C is not read), over kp
// pairs of k. Each accumulator lane is one chain of vdpbf16ps over p, as in the fp32 kernel.
static void score_bf16_micro_kernel(int64_t kp, const uint32_t *restrict a, const uint32_t *restrict b,
                                    float *restrict c, int64_t ldc, float alpha, float beta) {
    __m512 acc0[SCORE_BF16_MR], acc1[SCORE_BF16_MR];
    #pragma unroll
    for (int i = 0; i < SCORE_BF16_MR; i++) {
        acc0[i] = _mm512_setzero_ps();
        acc1[i] = _mm512_setzero_ps();
    }
    for (int64_t p = 0; p < kp; p++) {
        const __m512bh b0 = (__m512bh)_mm512_loadu_si512(b);
        const __m512bh b1 = (__m512bh)_mm512_loadu_si512(b + 16);
        __builtin_prefetch(a + 8 * SCORE_BF16_MR, 0, 3);
        #pragma unroll
        for (int i = 0; i < SCORE_BF16_MR; i++) {
            const __m512bh ai = (__m512bh)_mm512_set1_epi32((int)a[i]);
            acc0[i] = _mm512_dpbf16_ps(acc0[i], ai, b0);
            acc1[i] = _mm512_dpbf16_ps(acc1[i], ai, b1);
        }
        a += SCORE_BF16_MR;
        b += SCORE_BF16_NR;
    }
    const __m512 va = _mm512_set1_ps(alpha);
    #pragma unroll
    for (int i = 0; i < SCORE_BF16_MR; i++) {
        float *row = c + i * ldc;
        if (beta == 0.0f) {
            _mm512_storeu_ps(row, _mm512_mul_ps(va, acc0[i]));
            _mm512_storeu_ps(row + 16, _mm512_mul_ps(va, acc1[i]));
        } else {
            const __m512 vb = _mm512_set1_ps(beta);
            _mm512_storeu_ps(row, _mm512_fmadd_ps(va, acc0[i], _mm512_mul_ps(vb, _mm512_loadu_ps(row))));
            _mm512_storeu_ps(row + 16, _mm512_fmadd_ps(va, acc1[i], _mm512_mul_ps(vb, _mm512_loadu_ps(row + 16))));
        }
    }
}

// The loop nest of gemm_driver (see kernel_template.h) over bf16 panels. Preconditions (checked
// by the entry points): M, N, K > 0, alpha != 0. With conv != NULL op(B) is its column matrix.
static void score_bf16_gemm_driver(int transA, int transB, int64_t M, int64_t N, int64_t K, float alpha,
                                   const float *A, int64_t lda, const float *B, int64_t ldb,
                                   const score_conv_geometry *conv, int64_t b_col0, float beta,
                                   float *C, int64_t ldc) {
    enum { MR = SCORE_BF16_MR, NR = SCORE_BF16_NR, MC = SCORE_BF16_MC, NC = SCORE_BF16_NC };
    const int64_t k_blocks = (K + SCORE_BF16_KC - 1) / SCORE_BF16_KC;
    const int64_t kc_even = ((K + k_blocks - 1) / k_blocks + 1) & ~(int64_t)1;
    const int64_t kp_max = kc_even / 2;
    const int64_t mc_max = M < MC ? ((M + MR - 1) / MR) * MR : MC;
    const int64_t nc_max = N < NC ? ((N + NR - 1) / NR) * NR : NC;
    const int64_t stage_cols = SCORE_BF16_STAGE_PANELS * NR;
    // fp32 staging (an A block, then a few B panels) and the bf16 blocks, as floats' worth of words.
    float *stage, *packed;
    score__thread_buffers(&score_bf16_pack_key, (size_t)(kc_even * (mc_max + stage_cols)),
                          (size_t)(kp_max * (mc_max + nc_max)), &stage, &packed);
    float *a_stage = stage, *b_stage = stage + mc_max * kc_even;
    uint32_t *a_pairs = (uint32_t *)packed, *b_pairs = (uint32_t *)packed + mc_max * kp_max;
    _Alignas(64) float edge[MR * NR];

    for (int64_t jc = 0; jc < N; jc += NC) {
        const int64_t nc = N - jc < NC ? N - jc : NC;
        for (int64_t pc = 0; pc < K; pc += kc_even) {
            const int64_t kc = K - pc < kc_even ? K - pc : kc_even, kp = (kc + 1) / 2;
            const float beta_block = pc == 0 ? beta : 1.0f;
            if (conv && !transB) {
                score_bf16_pack_b_im2col(conv, pc, b_col0 + jc, kc, nc, b_pairs);
            } else for (int64_t j0 = 0; j0 < nc; j0 += stage_cols) {
                const int64_t cols = nc - j0 < stage_cols ? nc - j0 : stage_cols;
                if (conv) pack_b_im2col_avx512(transB, conv, pc, b_col0 + jc + j0, kc, cols, b_stage);
                else pack_b_avx512(transB, B, ldb, pc, jc + j0, kc, cols, b_stage);
                for (int64_t q = 0; q * NR < cols; q++)
                    score_bf16_pair_panel(b_stage + q * NR * kc, kc, NR, b_pairs + (j0 / NR + q) * NR * kp);
            }
            for (int64_t ic = 0; ic < M; ic += MC) {
                const int64_t mc = M - ic < MC ? M - ic : MC;
                pack_a_avx512(transA, A, lda, ic, pc, mc, kc, a_stage);
                for (int64_t r = 0; r * MR < mc; r++)
                    score_bf16_pair_panel(a_stage + r * MR * kc, kc, MR, a_pairs + r * MR * kp);
                for (int64_t jr = 0; jr < nc; jr += NR) {
                    const int64_t nr = nc - jr < NR ? nc - jr : NR;
                    for (int64_t ir = 0; ir < mc; ir += MR) {
                        const int64_t mr = mc - ir < MR ? mc - ir : MR;
                        float *ct = C + (ic + ir) * ldc + jc + jr;
                        const uint32_t *ap = a_pairs + ir * kp, *bp = b_pairs + jr * kp;
                        if (mr == MR && nr == NR) {
                            score_bf16_micro_kernel(kp, ap, bp, ct, ldc, alpha, beta_block);
                            continue;
                        }
                        // Edge tile: the same kernel on a full-size scratch tile.
                        if (beta_block != 0.0f)
                            for (int64_t i = 0; i < mr; i++) memcpy(edge + i * NR, ct + i * ldc, (size_t)nr * sizeof(float));
                        score_bf16_micro_kernel(kp, ap, bp, edge, NR, alpha, beta_block);
                        for (int64_t i = 0; i < mr; i++) memcpy(ct + i * ldc, edge + i * NR, (size_t)nr * sizeof(float));
                    }
                }
            }
        }
    }
}

#pragma clang attribute pop

#undef SCORE_BF16_MR
#undef SCORE_BF16_NR
#undef SCORE_BF16_MC
#undef SCORE_BF16_KC
#undef SCORE_BF16_NC
#undef SCORE_BF16_STAGE_PANELS

// Whether the CPU has AVX512-BF16 (with AVX-512F/BW, which its packing uses) and the OS saves
// the AVX-512 registers: cpuid leaf 7 subleaf 0 EBX bits 16 and 30, subleaf 1 EAX bit 5, and
// XCR0's SSE, AVX, opmask and ZMM state bits (1, 2, 5, 6, 7; OSXSAVE first, cpuid 1 ECX 27).
static const char *score_bf16_cpu_missing(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & (1u << 27))) return "the OS does not enable AVX register state (no OSXSAVE)";
    unsigned xcr0_lo, xcr0_hi;
    __asm__ volatile("xgetbv" : "=a"(xcr0_lo), "=d"(xcr0_hi) : "c"(0));
    if (__get_cpuid_max(0, NULL) < 7) return "this CPU lacks AVX512-BF16 (no cpuid leaf 7)";
    __cpuid_count(7, 0, a, b, c, d);
    if (!(b & (1u << 16)) || !(b & (1u << 30))) return "this CPU lacks AVX-512F/BW (and AVX512-BF16)";
    __cpuid_count(7, 1, a, b, c, d);
    if (!(a & (1u << 5))) return "this CPU lacks AVX512-BF16 (cpuid leaf 7 subleaf 1 EAX bit 5)";
    if ((xcr0_lo & 0xE6u) != 0xE6u) return "the OS does not enable the AVX-512 register state (XCR0)";
    return NULL;
}
#endif  // SCORE_X86

// ---------------------------------------------------------------------------------------------
// Dispatch.

typedef void (*score_sgemm_fn)(int, int, int64_t, int64_t, int64_t, float, const float *,
                               int64_t, const float *, int64_t, float, float *, int64_t);
typedef void (*score_sgemm_im2col_fn)(int, int, int64_t, int64_t, int64_t, float, const float *,
                                      int64_t, const score_conv_geometry *, int64_t, float, float *,
                                      int64_t);
typedef void (*score_map_fn)(const float *, float *, int64_t);
typedef void (*score_zip_fn)(const float *, const float *, float *, int64_t);
typedef void (*score_rows_fn)(const float *, float *, int64_t, int64_t);
typedef void (*score_moments_fn)(const float *, int64_t, double *, double *);
typedef void (*score_norm_sums_fn)(const float *, const float *, int64_t, float, float, double *, double *);

typedef struct {
    const char *name;
    score_isa isa;
    int64_t mr, nr;
    score_sgemm_fn sgemm;
    score_sgemm_im2col_fn sgemm_im2col;
    score_rows_fn softmax_rows;
    score_map_fn vexp, silu, gelu;
    score_zip_fn silu_grad, gelu_grad;
    score_moments_fn moments;
    score_norm_sums_fn norm_grad_sums;
} score_impl_t;

static const score_impl_t score_impl_portable = {
    "portable", SCORE_ISA_PORTABLE, 6, 8,
    sgemm_portable, sgemm_im2col_portable, softmax_rows_portable, vexp_portable, silu_portable, gelu_portable,
    silu_grad_portable, gelu_grad_portable, moments_portable, norm_grad_sums_portable};
#ifdef SCORE_X86
static const score_impl_t score_impl_avx2 = {
    "avx2", SCORE_ISA_AVX2, 6, 16, sgemm_avx2, sgemm_im2col_avx2, softmax_rows_avx2, vexp_avx2, silu_avx2, gelu_avx2,
    silu_grad_avx2, gelu_grad_avx2, moments_avx2, norm_grad_sums_avx2};
static const score_impl_t score_impl_avx512 = {
    "avx512", SCORE_ISA_AVX512, SCORE_AVX512_MR, SCORE_AVX512_NR,
    sgemm_avx512, sgemm_im2col_avx512, softmax_rows_avx512, vexp_avx512, silu_avx512, gelu_avx512,
    silu_grad_avx512, gelu_grad_avx512, moments_avx512, norm_grad_sums_avx512};
static const score_impl_t score_impl_avx512_on_avx2 = {
    "avx512-layout-on-avx2", SCORE_ISA_AVX2, SCORE_AVX512_MR, SCORE_AVX512_NR,
    sgemm_avx512_on_avx2, sgemm_im2col_avx512_on_avx2, softmax_rows_avx512_on_avx2, vexp_avx512_on_avx2, silu_avx512_on_avx2, gelu_avx512_on_avx2,
    silu_grad_avx512_on_avx2, gelu_grad_avx512_on_avx2, moments_avx512_on_avx2, norm_grad_sums_avx512_on_avx2};
#endif

static _Atomic(const score_impl_t *) score_impl = NULL;

// The widest ISA this CPU (and OS: __builtin_cpu_supports checks XCR0 state) can run.
static score_isa score_cpu_isa(void) {
#ifdef SCORE_X86
    __builtin_cpu_init();
    const int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    if (avx2 && __builtin_cpu_supports("avx512f")) return SCORE_ISA_AVX512;
    if (avx2) return SCORE_ISA_AVX2;
#endif
    return SCORE_ISA_PORTABLE;
}

static const score_impl_t *score_impl_for(score_isa isa) {
    const score_isa cpu = score_cpu_isa();
    if (isa > cpu) isa = cpu;
#ifdef SCORE_X86
    if (isa == SCORE_ISA_AVX512) return &score_impl_avx512;
    if (isa == SCORE_ISA_AVX2) return &score_impl_avx2;
#endif
    return &score_impl_portable;
}

static const score_impl_t *score_current(void) {
    const score_impl_t *impl = atomic_load_explicit(&score_impl, memory_order_acquire);
    if (impl) return impl;
    score_isa cap = SCORE_ISA_AVX512;
    const char *env = getenv("SCORE_ISA");
    if (env) {
        if (strcmp(env, "portable") == 0) cap = SCORE_ISA_PORTABLE;
        else if (strcmp(env, "avx2") == 0) cap = SCORE_ISA_AVX2;
    }
    const score_impl_t *chosen = score_impl_for(cap);
    const score_impl_t *expected = NULL;
    // Two threads racing here compute the same answer; the first store wins.
    if (!atomic_compare_exchange_strong(&score_impl, &expected, chosen)) return expected;
    return chosen;
}

score_isa score_active_isa(void) { return score_current()->isa; }
const char *score_active_isa_name(void) { return score_current()->name; }
int64_t score_sgemm_mr(void) { return score_current()->mr; }
int64_t score_sgemm_nr(void) { return score_current()->nr; }

void score_set_isa(score_isa isa) {
    atomic_store_explicit(&score_impl, score_impl_for(isa), memory_order_release);
}

int score_set_isa_avx512_layout_on_avx2(void) {
#ifdef SCORE_X86
    if (score_cpu_isa() >= SCORE_ISA_AVX2) {
        atomic_store_explicit(&score_impl, &score_impl_avx512_on_avx2, memory_order_release);
        return 1;
    }
#endif
    return 0;
}

// ---------------------------------------------------------------------------------------------
// Entry points.

void score_sgemm(int transA, int transB, int64_t M, int64_t N, int64_t K, float alpha,
                 const float *A, int64_t lda, const float *B, int64_t ldb, float beta, float *C,
                 int64_t ldc) {
    if (M <= 0 || N <= 0) return;
    if (K <= 0 || alpha == 0.0f) {
        // BLAS semantics: C = beta·C without touching A or B; beta == 0 clears NaNs too.
        for (int64_t i = 0; i < M; i++) {
            float *row = C + i * ldc;
            if (beta == 0.0f) memset(row, 0, (size_t)N * sizeof(float));
            else if (beta != 1.0f)
                for (int64_t j = 0; j < N; j++) row[j] *= beta;
        }
        return;
    }
    score_current()->sgemm(transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

void score_sgemm_im2col(int transA, int transB, int64_t M, int64_t N, int64_t K, float alpha,
                        const float *A, int64_t lda, const score_conv_geometry *conv,
                        int64_t b_col0, float beta, float *C, int64_t ldc) {
    if (M <= 0 || N <= 0) return;
    if (K <= 0 || alpha == 0.0f) {
        score_sgemm(transA, transB, M, N, 0, 0.0f, A, lda, NULL, 1, beta, C, ldc);
        return;
    }
    score_current()->sgemm_im2col(transA, transB, M, N, K, alpha, A, lda, conv, b_col0, beta, C, ldc);
}

#ifdef SCORE_X86
// cpuid traps to the hypervisor in a VM (tens of microseconds): asked once per process.
static const char *score_bf16_cpu_reason;
static pthread_once_t score_bf16_cpu_once = PTHREAD_ONCE_INIT;
static void score_bf16_check_cpu(void) { score_bf16_cpu_reason = score_bf16_cpu_missing(); }
#endif

const char *score_bf16_unavailable_reason(void) {
#ifdef SCORE_X86
    pthread_once(&score_bf16_cpu_once, score_bf16_check_cpu);
    if (score_bf16_cpu_reason) return score_bf16_cpu_reason;
    if (score_current() != &score_impl_avx512) {
        const char *env = getenv("SCORE_ISA");
        return env && strcmp(env, "avx512") != 0
            ? "SCORE_ISA caps the kernels below avx512, which AVX512-BF16 needs"
            : "the kernels are set below avx512 (score_set_isa), which AVX512-BF16 needs";
    }
    return NULL;
#else
    return "this CPU is not x86-64 (AVX512-BF16 is an x86 extension)";
#endif
}

int score_bf16_available(void) { return score_bf16_unavailable_reason() == NULL; }

// Both bf16 entry points: the BLAS edge cases as score_sgemm, then the driver. Called without
// the instructions they stop the process with the reason: a caller that did not check
// score_bf16_available would otherwise die of an illegal instruction with no message.
static void score_bf16_gemm(const char *entry, int transA, int transB, int64_t M, int64_t N, int64_t K, float alpha,
                            const float *A, int64_t lda, const float *B, int64_t ldb,
                            const score_conv_geometry *conv, int64_t b_col0, float beta, float *C, int64_t ldc) {
    if (M <= 0 || N <= 0) return;
    if (K <= 0 || alpha == 0.0f) {
        score_sgemm(transA, transB, M, N, 0, 0.0f, A, lda, NULL, 1, beta, C, ldc);
        return;
    }
    const char *reason = score_bf16_unavailable_reason();
    if (reason) {
        fprintf(stderr, "score CKernels: %s called but bf16 is unavailable: %s\n", entry, reason);
        abort();
    }
#ifdef SCORE_X86
    score_bf16_gemm_driver(transA, transB, M, N, K, alpha, A, lda, B, ldb, conv, b_col0, beta, C, ldc);
#endif
}

void score_sgemm_bf16(int transA, int transB, int64_t M, int64_t N, int64_t K, float alpha,
                      const float *A, int64_t lda, const float *B, int64_t ldb, float beta, float *C,
                      int64_t ldc) {
    score_bf16_gemm("score_sgemm_bf16", transA, transB, M, N, K, alpha, A, lda, B, ldb, NULL, 0, beta, C, ldc);
}

void score_sgemm_im2col_bf16(int transA, int transB, int64_t M, int64_t N, int64_t K, float alpha,
                             const float *A, int64_t lda, const score_conv_geometry *conv,
                             int64_t b_col0, float beta, float *C, int64_t ldc) {
    score_bf16_gemm("score_sgemm_im2col_bf16", transA, transB, M, N, K, alpha, A, lda, NULL, 0, conv, b_col0, beta, C, ldc);
}

void score_softmax_rows(const float *x, float *y, int64_t rows, int64_t cols) {
    if (rows > 0 && cols > 0) score_current()->softmax_rows(x, y, rows, cols);
}

void score_vexp(const float *x, float *y, int64_t n) {
    if (n > 0) score_current()->vexp(x, y, n);
}

void score_silu(const float *x, float *y, int64_t n) {
    if (n > 0) score_current()->silu(x, y, n);
}

void score_moments(const float *x, int64_t n, double *mean, double *variance) {
    if (n > 0) score_current()->moments(x, n, mean, variance);
    else { *mean = 0; *variance = 0; }
}

void score_norm_grad_sums(const float *g, const float *x, int64_t n, float mean, float rstd,
                          double *sum_g, double *sum_gx) {
    if (n > 0) score_current()->norm_grad_sums(g, x, n, mean, rstd, sum_g, sum_gx);
    else { *sum_g = 0; *sum_gx = 0; }
}

void score_gelu(const float *x, float *y, int64_t n) {
    if (n > 0) score_current()->gelu(x, y, n);
}

void score_silu_grad(const float *x, const float *g, float *dx, int64_t n) {
    if (n > 0) score_current()->silu_grad(x, g, dx, n);
}

void score_gelu_grad(const float *x, const float *g, float *dx, int64_t n) {
    if (n > 0) score_current()->gelu_grad(x, g, dx, n);
}

static _Thread_local int score_parallel_flag;
int score_thread_in_parallel(void) { return score_parallel_flag; }
void score_thread_set_in_parallel(int on) { score_parallel_flag = on; }
