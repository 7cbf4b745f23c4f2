// Innermost CPU kernels of the score engine.
//
// Every entry point dispatches at run time to the widest instruction set the CPU offers
// (AVX-512F, AVX2+FMA, or portable C), chosen once with __builtin_cpu_supports. Each variant is
// compiled with a per-function `__attribute__((target(...)))`, so the package needs no ISA build
// flags and a binary built on one x86-64 machine runs correctly on any other.
//
// The environment variable SCORE_ISA=portable|avx2|avx512 caps the choice (tests use it to
// cover the portable path on machines that have AVX-512).
#ifndef SCORE_CKERNELS_H
#define SCORE_CKERNELS_H

#include <stdint.h>

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
void score_set_isa(score_isa isa);

/// Single-threaded row-major SGEMM on a block:
///   C[m,n] = alpha * sum_k op(A)[m,k] * op(B)[k,n] + beta * C[m,n]
/// op(A) is A (M×K, row stride lda) or, with transA, Aᵀ where A is K×M (row stride lda).
/// op(B) is B (K×N, row stride ldb) or, with transB, Bᵀ where B is N×K (row stride ldb).
/// beta == 0 overwrites C without reading it (NaNs in C do not propagate).
/// Threading is done by the caller over disjoint blocks of C.
void score_sgemm(int transA, int transB, int64_t M, int64_t N, int64_t K,
                 float alpha, const float *A, int64_t lda,
                 const float *B, int64_t ldb,
                 float beta, float *C, int64_t ldc);

#ifdef __cplusplus
}
#endif

#endif
