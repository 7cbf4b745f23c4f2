// ISA-generic kernel bodies, written once and instantiated per instruction set by kernels.c.
//
// This file is a "C template": kernels.c includes it several times, each time inside a
// `#pragma clang attribute push(__attribute__((target(...))))` region and with these macros set:
//   SK(name)      appends the variant suffix (name_avx2, name_avx512, ...)
//   SK_V          float vector type of SK_LANES lanes (GCC/clang vector extension)
//   SK_VI         int32 vector type with the same lane count (comparison results, bit tricks)
//   SK_VD         double vector type with the same lane count (softmax sums)
//   SK_LANES      lanes per vector: 4 (portable), 8 (AVX2), 16 (AVX-512)
//   SK_MR, SK_NR  micro-tile: SK_MR rows × SK_NR columns of C held in registers (SK_NR = 2 vectors)
//   SK_MC, SK_KC, SK_NC  cache blocking (rows of A per packed block, depth, columns of B)
//   SK_FMA(a,b,c) a*b+c, fused where the ISA has FMA
// Because every variant is the same source, the AVX-512 variant's logic (tiles, packing, edges,
// tails) can be tested on an AVX2-only machine by instantiating it once more with the AVX-512
// parameters but an AVX2 target (see score_set_isa_avx512_layout_on_avx2).
//
// No header guard on purpose.

#define SK_INLINE static inline __attribute__((always_inline))

// ---------------------------------------------------------------------------------------------
// Vector helpers. memcpy keeps loads/stores free of alignment and aliasing assumptions; clang
// turns each into a single (unaligned) vector move.

SK_INLINE SK_V SK(vload)(const float *p) {
    SK_V v;
    memcpy(&v, p, sizeof v);
    return v;
}

SK_INLINE void SK(vstore)(float *p, SK_V v) { memcpy(p, &v, sizeof v); }

SK_INLINE SK_V SK(vsplat)(float s) {
    SK_V v;
    for (int i = 0; i < SK_LANES; i++) v[i] = s;  // becomes one broadcast
    return v;
}

SK_INLINE SK_VI SK(vsplati)(int32_t s) {
    SK_VI v;
    for (int i = 0; i < SK_LANES; i++) v[i] = s;
    return v;
}

// mask lanes are all-ones or all-zeros (results of vector comparisons).
SK_INLINE SK_V SK(vselect)(SK_VI mask, SK_V ifTrue, SK_V ifFalse) {
    return (SK_V)((mask & (SK_VI)ifTrue) | (~mask & (SK_VI)ifFalse));
}

// ---------------------------------------------------------------------------------------------
// GEMM micro-kernel: C[0:MR, 0:NR] = alpha * Apanel·Bpanel + beta * C (beta == 0: no read of C).
// a: packed MR-row panel (for each k, MR consecutive values of one column of op(A)).
// b: packed NR-column panel (for each k, NR consecutive values of one row of op(B)).
// Each C element is a sequential FMA chain over k in its own lane, so its value does not depend
// on which tile or thread computed it.
// a_row, a_step: element (i, p) of the A panel is a[i·a_row + p·a_step]: (1, MR) for a packed
// panel, or the strides of op(A) itself when A is read in place (see gemm_driver). Where the
// values come from does not change the arithmetic.
// rows (≤ MR, a constant wherever this is inlined) limits the tile to its first rows: a panel's
// last rows when M is not a multiple of MR, computed in place instead of on a padded scratch tile.
SK_INLINE void SK(micro_kernel_strided)(const int rows, int64_t kc, const float *restrict a, int64_t a_row, int64_t a_step,
                                        const float *restrict b, float *restrict c, int64_t ldc,
                                        float alpha, float beta) {
    // Fully unrolled loops over SK_MR let clang keep every accumulator in a register.
    SK_V acc0[SK_MR], acc1[SK_MR];
    #pragma unroll
    for (int i = 0; i < SK_MR; i++) {
        acc0[i] = (SK_V){0};
        acc1[i] = (SK_V){0};
    }
    // Pull the C tile toward L1 while the k loop runs; it is needed only at the end.
    #pragma unroll
    for (int i = 0; i < rows; i++) {
        __builtin_prefetch(c + i * ldc, 1, 3);
        __builtin_prefetch(c + i * ldc + SK_NR - 1, 1, 3);
    }
    for (int64_t p = 0; p < kc; p++) {
        const SK_V b0 = SK(vload)(b);
        const SK_V b1 = SK(vload)(b + SK_LANES);
        // Stream the A panel ahead; B's panel was just brought into L1 by the previous tile.
        __builtin_prefetch(a + 8 * a_step, 0, 3);
        #pragma unroll
        for (int i = 0; i < rows; i++) {
            const SK_V ai = SK(vsplat)(a[i * a_row]);
            acc0[i] = SK_FMA(ai, b0, acc0[i]);
            acc1[i] = SK_FMA(ai, b1, acc1[i]);
        }
        a += a_step;
        b += SK_NR;
    }
    const SK_V va = SK(vsplat)(alpha);
    if (beta == 0.0f) {
        #pragma unroll
        for (int i = 0; i < rows; i++) {
            SK(vstore)(c + i * ldc, va * acc0[i]);
            SK(vstore)(c + i * ldc + SK_LANES, va * acc1[i]);
        }
    } else {
        const SK_V vb = SK(vsplat)(beta);
        #pragma unroll
        for (int i = 0; i < rows; i++) {
            float *row = c + i * ldc;
            SK(vstore)(row, SK_FMA(va, acc0[i], vb * SK(vload)(row)));
            SK(vstore)(row + SK_LANES, SK_FMA(va, acc1[i], vb * SK(vload)(row + SK_LANES)));
        }
    }
}

static void SK(micro_kernel)(int64_t kc, const float *restrict a, const float *restrict b,
                             float *restrict c, int64_t ldc, float alpha, float beta) {
    SK(micro_kernel_strided)(SK_MR, kc, a, 1, SK_MR, b, c, ldc, alpha, beta);
}

// The same tile with A read in place: op(A)[i, p] = a[i·a_row + p·a_step].
static void SK(micro_kernel_direct_a)(int64_t kc, const float *restrict a, int64_t a_row, int64_t a_step,
                                      const float *restrict b, float *restrict c, int64_t ldc,
                                      float alpha, float beta) {
    SK(micro_kernel_strided)(SK_MR, kc, a, a_row, a_step, b, c, ldc, alpha, beta);
}

// The first `rows` rows (0 < rows < MR) of a packed panel's tile.
static void SK(micro_kernel_rows)(int rows, int64_t kc, const float *restrict a, const float *restrict b,
                                  float *restrict c, int64_t ldc, float alpha, float beta) {
    switch (rows) {
#define SK_ROWS_CASE(r) case r: SK(micro_kernel_strided)(r, kc, a, 1, SK_MR, b, c, ldc, alpha, beta); return;
    SK_ROWS_CASE(1) SK_ROWS_CASE(2) SK_ROWS_CASE(3) SK_ROWS_CASE(4) SK_ROWS_CASE(5)
#if SK_MR > 6
    SK_ROWS_CASE(6) SK_ROWS_CASE(7) SK_ROWS_CASE(8) SK_ROWS_CASE(9)
    SK_ROWS_CASE(10) SK_ROWS_CASE(11) SK_ROWS_CASE(12) SK_ROWS_CASE(13)
#endif
#undef SK_ROWS_CASE
    default: break;
    }
}

// ---------------------------------------------------------------------------------------------
// Packing. op(A)[row0:row0+mc, k0:k0+kc] becomes ceil(mc/MR) panels of MR×kc, each stored
// k-major (MR values per k), zero-padded to MR rows. op(B)[k0:k0+kc, col0:col0+nc] becomes
// ceil(nc/NR) panels of kc×NR, each stored k-major (NR values per k), zero-padded to NR columns.
// The micro-kernel then reads both with unit stride.

// Transposes a 4×4 block: dst[c*ld_dst + r] = src[r*ld_src + c]. Packing the "gather" cases
// (rows of A into k-major panels, rows of Bᵀ likewise) this way moves 16 floats with 4 loads,
// 8 shuffles and 4 stores instead of 16 scalar load/store pairs.
SK_INLINE void SK(transpose4)(const float *src, int64_t ld_src, float *dst, int64_t ld_dst) {
    score_v4f r0, r1, r2, r3;
    memcpy(&r0, src, 16);
    memcpy(&r1, src + ld_src, 16);
    memcpy(&r2, src + 2 * ld_src, 16);
    memcpy(&r3, src + 3 * ld_src, 16);
    const score_v4f t0 = __builtin_shufflevector(r0, r1, 0, 4, 1, 5);
    const score_v4f t1 = __builtin_shufflevector(r0, r1, 2, 6, 3, 7);
    const score_v4f t2 = __builtin_shufflevector(r2, r3, 0, 4, 1, 5);
    const score_v4f t3 = __builtin_shufflevector(r2, r3, 2, 6, 3, 7);
    const score_v4f c0 = __builtin_shufflevector(t0, t2, 0, 1, 4, 5);
    const score_v4f c1 = __builtin_shufflevector(t0, t2, 2, 3, 6, 7);
    const score_v4f c2 = __builtin_shufflevector(t1, t3, 0, 1, 4, 5);
    const score_v4f c3 = __builtin_shufflevector(t1, t3, 2, 3, 6, 7);
    memcpy(dst, &c0, 16);
    memcpy(dst + ld_dst, &c1, 16);
    memcpy(dst + 2 * ld_dst, &c2, 16);
    memcpy(dst + 3 * ld_dst, &c3, 16);
}

// Packs `rows` source rows (each contiguous in k, row stride ld) into a k-major panel of width
// `width`: dst[p*width + i] = src[i*ld + p] for i < rows, p < kc; rows..width-1 are zeroed.
// Rows go in groups of 4 through transpose4; a last partial group is shifted back to overlap
// the previous one (rewriting a few identical values) so no row takes the scalar path when
// rows >= 4.
SK_INLINE void SK(pack_gather)(const float *src, int64_t ld, int64_t rows, int64_t kc,
                               int width, float *restrict dst) {
    const int64_t k4 = kc & ~(int64_t)3;
    if (rows >= 4) {
        for (int64_t i0 = 0; i0 < rows; i0 += 4) {
            const int64_t i = i0 + 4 <= rows ? i0 : rows - 4;
            const float *s = src + i * ld;
            for (int64_t p = 0; p < k4; p += 4) SK(transpose4)(s + p, ld, dst + p * width + i, width);
        }
    } else {
        for (int64_t i = 0; i < rows; i++)
            for (int64_t p = 0; p < k4; p++) dst[p * width + i] = src[i * ld + p];
    }
    for (int64_t i = 0; i < rows; i++)
        for (int64_t p = k4; p < kc; p++) dst[p * width + i] = src[i * ld + p];
    for (int64_t p = 0; p < kc; p++)
        for (int64_t i = rows; i < width; i++) dst[p * width + i] = 0.0f;
}

// The widest C, in NR panels, for which gemm_driver reads A in place instead of packing it.
#ifndef SK_DIRECT_A_MAX_PANELS
#define SK_DIRECT_A_MAX_PANELS 4
#endif

static void SK(pack_a)(int transA, const float *A, int64_t lda, int64_t row0, int64_t k0,
                       int64_t mc, int64_t kc, float *restrict dst) {
    if (transA) {
        // op(A)[i,k] = A[k*lda + i]: for each k the mc values of the block are contiguous; one
        // pass over k fills every panel. (Panel by panel, each panel's k loop walked the rows
        // lda apart, often a multiple of 4 KiB: one L1 set, missed again for the next panel.)
        // A full panel copies a constant MR floats, which clang expands into a few moves.
        const int64_t full = mc / SK_MR, tail = mc - full * SK_MR;
        const float *src = A + k0 * lda + row0;
        for (int64_t p = 0; p < kc; p++, src += lda) {
            float *d = dst + p * SK_MR;
            for (int64_t panel = 0; panel < full; panel++, d += SK_MR * kc)
                for (int i = 0; i < SK_MR; i++) d[i] = src[panel * SK_MR + i];
            if (tail)
                for (int i = 0; i < SK_MR; i++) d[i] = i < tail ? src[full * SK_MR + i] : 0.0f;
        }
        return;
    }
    for (int64_t ir = 0; ir < mc; ir += SK_MR) {
        const int64_t mr = mc - ir < SK_MR ? mc - ir : SK_MR;
        // op(A)[i,k] = A[i*lda + k]: rows contiguous in k, transposed into the panel.
        SK(pack_gather)(A + (row0 + ir) * lda + k0, lda, mr, kc, SK_MR, dst);
        dst += SK_MR * kc;
    }
}

// Panels of B packed together per pass over k when B is not transposed: reading SK_PACK_B_GROUP
// panels' worth of each row (256+ contiguous bytes) lets the hardware prefetcher stream B; one
// 64-byte piece per row at a stride of ldb (often several KB, a new page per row) left packing
// latency-bound at ~1.3 cycles per float, 10% of a 256×2048×512 GEMM.
#ifndef SK_PACK_B_GROUP
#define SK_PACK_B_GROUP 4
#endif

static void SK(pack_b)(int transB, const float *B, int64_t ldb, int64_t k0, int64_t col0,
                       int64_t kc, int64_t nc, float *restrict dst) {
    if (!transB) {
        // op(B)[k,j] = B[k*ldb + j]: for each k the NR values of a panel are contiguous.
        const int64_t full_panels = nc / SK_NR;
        int64_t panel = 0;
        for (; panel < full_panels; panel += SK_PACK_B_GROUP) {
            const int64_t group = full_panels - panel < SK_PACK_B_GROUP ? full_panels - panel : SK_PACK_B_GROUP;
            const float *src = B + k0 * ldb + col0 + panel * SK_NR;
            float *d = dst + panel * SK_NR * kc;
            for (int64_t p = 0; p < kc; p++, src += ldb) {
                for (int64_t g = 0; g < group; g++) {
                    SK(vstore)(d + g * SK_NR * kc + p * SK_NR, SK(vload)(src + g * SK_NR));
                    SK(vstore)(d + g * SK_NR * kc + p * SK_NR + SK_LANES, SK(vload)(src + g * SK_NR + SK_LANES));
                }
            }
        }
        const int64_t nr = nc - full_panels * SK_NR;
        if (nr > 0) {  // last, partial panel: zero-padded to NR columns
            const float *src = B + k0 * ldb + col0 + full_panels * SK_NR;
            float *d = dst + full_panels * SK_NR * kc;
            for (int64_t p = 0; p < kc; p++, src += ldb, d += SK_NR) {
                for (int64_t j = 0; j < nr; j++) d[j] = src[j];
                for (int64_t j = nr; j < SK_NR; j++) d[j] = 0.0f;
            }
        }
        return;
    }
    for (int64_t jr = 0; jr < nc; jr += SK_NR) {
        const int64_t nr = nc - jr < SK_NR ? nc - jr : SK_NR;
        // op(B)[k,j] = B[j*ldb + k]: each column of op(B) is a row of B, contiguous in k.
        SK(pack_gather)(B + (col0 + jr) * ldb + k0, ldb, nr, kc, SK_NR, dst);
        dst += SK_NR * kc;
    }
}

// ---------------------------------------------------------------------------------------------
// Implicit im2col. A convolution is a GEMM whose B is the image's column matrix
// [C·kh·kw, outH·outW] (row (c, ky, kx), column (oy, ox) holds image[c, oy·s − p + ky,
// ox·s − p + kx], 0 outside). Materialising it writes and reads back 9× the image for a 3×3
// kernel, far more than L2 holds; instead the packing routines below build each block's
// panels straight from the image, a row segment at a time through an L1 buffer. The packed
// panels hold exactly the values packing the materialised matrix would, so the results keep
// their bits.

#define SK_MIN(x, y) ((x) < (y) ? (x) : (y))
#define SK_MAX(x, y) ((x) > (y) ? (x) : (y))

// Copies and zero fills without memcpy/memset calls: the segments are 8-64 floats, where a
// call costs as much as the copy. The tails use a lane-predicated loop, which clang does not
// turn back into a call.
SK_INLINE void SK(copy_short)(const float *restrict src, float *restrict dst, int64_t n) {
    int64_t i = 0;
    for (; i + SK_LANES <= n; i += SK_LANES) SK(vstore)(dst + i, SK(vload)(src + i));
    for (int l = 0; l < SK_LANES; l++)
        if (l < n - i) dst[i + l] = src[i + l];
}

SK_INLINE void SK(zero_short)(float *restrict dst, int64_t n) {
    int64_t i = 0;
    for (; i + SK_LANES <= n; i += SK_LANES) SK(vstore)(dst + i, (SK_V){0});
    for (int l = 0; l < SK_LANES; l++)
        if (l < n - i) dst[i + l] = 0.0f;
}

// out[0..<len] = columns[row, s0..<s0+len] of the convolution's column matrix.
static void SK(im2col_row)(const score_conv_geometry *g, int64_t row, int64_t s0, int64_t len,
                           float *restrict out) {
    const int64_t kx = row % g->kernel_w, ky = (row / g->kernel_w) % g->kernel_h;
    const int64_t c = row / (g->kernel_w * g->kernel_h);
    const int64_t W = g->width, stride = g->stride, out_w = g->out_w;
    const float *plane = g->image + c * g->height * W;
    // Output columns ox whose input column ox·stride + shift lies inside the image: [lo, hi).
    const int64_t shift = kx - g->padding;
    if (stride == 1 && out_w == W) {
        // The output as wide as the input: the row is the plane shifted by dy rows and `shift`
        // columns, so the rows inside are one contiguous copy, after which the |shift| edge
        // columns that wrapped around are zeroed.
        const int64_t dy = ky - g->padding, offset = dy * W + shift, end = s0 + len;
        // [a, b): the part of [s0, end) in output rows whose input row is inside the image
        int64_t a = SK_MAX(s0, SK_MAX(0, -dy) * W), b = SK_MIN(end, SK_MIN(g->out_h, g->height - dy) * W);
        if (b < a) a = b = s0;
        // [c_lo, c_hi): where the source index s + offset lies inside the plane; the elements
        // of [a, b) cut off this way are edge columns, zeroed below
        const int64_t c_lo = SK_MAX(a, SK_MIN(-offset, b));
        const int64_t c_hi = SK_MAX(c_lo, SK_MIN(b, g->height * W - offset));
        SK(zero_short)(out, c_lo - s0);
        SK(copy_short)(plane + c_lo + offset, out + (c_lo - s0), c_hi - c_lo);
        SK(zero_short)(out + (c_hi - s0), end - c_hi);
        if (shift != 0 && b > a) {
            const int64_t e_lo = shift < 0 ? 0 : W - shift, e_hi = shift < 0 ? -shift : W;
            for (int64_t oy = a / W; oy * W < b; oy++)
                for (int64_t ox = e_lo; ox < e_hi; ox++) {
                    const int64_t idx = oy * W + ox;
                    if (idx >= a && idx < b) out[idx - s0] = 0.0f;
                }
        }
        return;
    }
    const int64_t lo = shift >= 0 ? 0 : (-shift + stride - 1) / stride;
    int64_t hi = W - shift <= 0 ? 0 : (W - shift + stride - 1) / stride;
    if (hi > out_w) hi = out_w;
    for (int64_t s = s0, end = s0 + len; s < end;) {
        const int64_t oy = s / out_w, ox0 = s - oy * out_w;
        const int64_t ox1 = end - s < out_w - ox0 ? ox0 + (end - s) : out_w;
        float *o = out + (s - s0);  // o[ox − ox0] is output column ox of this row
        const int64_t iy = oy * stride - g->padding + ky;
        if (iy < 0 || iy >= g->height) {
            SK(zero_short)(o, ox1 - ox0);
        } else {
            const int64_t a = lo < ox0 ? ox0 : (lo > ox1 ? ox1 : lo);
            const int64_t b = hi < a ? a : (hi > ox1 ? ox1 : hi);
            const float *line = plane + iy * W;
            SK(zero_short)(o, a - ox0);
            if (stride == 1) SK(copy_short)(line + a + shift, o + (a - ox0), b - a);
            else for (int64_t ox = a; ox < b; ox++) o[ox - ox0] = line[ox * stride + shift];
            SK(zero_short)(o + (b - ox0), ox1 - b);
        }
        s += ox1 - ox0;
    }
}

// pack_b for op(B) = columns[k0.., col0..] (transB = 0) or columnsᵀ (transB = 1: op(B)[k, j] =
// columns[col0 + j, k0 + k]), the same panel layout as pack_b.
static void SK(pack_b_im2col)(int transB, const score_conv_geometry *g, int64_t k0, int64_t col0,
                              int64_t kc, int64_t nc, float *restrict dst) {
    if (!transB && g->stride == 1 && g->out_w % SK_NR == 0 && col0 % SK_NR == 0) {
        // Every panel's NR columns lie in one output row, so a panel of a row of the matrix
        // is NR consecutive input values of one image row: loaded straight from the image
        // with the lanes outside it zeroed (a load may run past the row, never past the image).
        const int64_t W = g->width, plane_size = g->height * W;
        const float *image_end = g->image + g->channels * plane_size;
        SK_VI iota;
        for (int l = 0; l < SK_LANES; l++) iota[l] = l;
        for (int64_t p = 0; p < kc; p++) {
            const int64_t row = k0 + p;
            const int64_t kx = row % g->kernel_w, ky = (row / g->kernel_w) % g->kernel_h;
            const float *plane = g->image + (row / (g->kernel_w * g->kernel_h)) * plane_size;
            const int64_t shift = kx - g->padding;
            float *d = dst + p * SK_NR;
            for (int64_t jr = 0; jr < nc; jr += SK_NR, d += SK_NR * kc) {
                const int64_t oy = (col0 + jr) / g->out_w, ox = (col0 + jr) - oy * g->out_w;
                const int64_t iy = oy - g->padding + ky;
                const float *src = plane + iy * W + ox + shift;
                if (iy < 0 || iy >= g->height) {
                    SK(vstore)(d, (SK_V){0});
                    SK(vstore)(d + SK_LANES, (SK_V){0});
                } else if (ox + shift >= 0 && ox + shift + SK_NR <= W) {
                    SK(vstore)(d, SK(vload)(src));
                    SK(vstore)(d + SK_LANES, SK(vload)(src + SK_LANES));
                } else if (src >= g->image && src + SK_NR <= image_end) {
                    // input column of lane l: ox + shift + l, inside when in [0, W)
                    const SK_VI first = SK(vsplati)((int32_t)(ox + shift)) + iota;
                    const SK_VI second = first + SK(vsplati)(SK_LANES);
                    const SK_VI zero = SK(vsplati)(0), width = SK(vsplati)((int32_t)W);
                    SK(vstore)(d, SK(vselect)((first >= zero) & (first < width), SK(vload)(src), (SK_V){0}));
                    SK(vstore)(d + SK_LANES, SK(vselect)((second >= zero) & (second < width),
                                                         SK(vload)(src + SK_LANES), (SK_V){0}));
                } else {
                    for (int l = 0; l < SK_NR; l++) {
                        const int64_t ix = ox + shift + l;
                        d[l] = ix >= 0 && ix < W ? src[l] : 0.0f;
                    }
                }
            }
        }
        return;
    }
    if (!transB) {
        _Alignas(64) float row[SK_NC];
        const int64_t full_panels = nc / SK_NR, nr = nc - full_panels * SK_NR;
        for (int64_t p = 0; p < kc; p++) {
            SK(im2col_row)(g, k0 + p, col0, nc, row);
            float *d = dst + p * SK_NR;
            for (int64_t panel = 0; panel < full_panels; panel++, d += SK_NR * kc) {
                SK(vstore)(d, SK(vload)(row + panel * SK_NR));
                SK(vstore)(d + SK_LANES, SK(vload)(row + panel * SK_NR + SK_LANES));
            }
            if (nr > 0) {
                for (int64_t j = 0; j < nr; j++) d[j] = row[full_panels * SK_NR + j];
                for (int64_t j = nr; j < SK_NR; j++) d[j] = 0.0f;
            }
        }
        return;
    }
    // Each panel's NR rows of the column matrix into an L1 tile, then the transposing pack.
    _Alignas(64) float tile[SK_NR * SK_KC];
    for (int64_t jr = 0; jr < nc; jr += SK_NR) {
        const int64_t nr = nc - jr < SK_NR ? nc - jr : SK_NR;
        for (int64_t i = 0; i < nr; i++) SK(im2col_row)(g, col0 + jr + i, k0, kc, tile + i * kc);
        SK(pack_gather)(tile, kc, nr, kc, SK_NR, dst);
        dst += SK_NR * kc;
    }
}

// ---------------------------------------------------------------------------------------------
// GEMM driver (GotoBLAS/BLIS loop nest). Preconditions (checked by score_sgemm): M, N, K > 0,
// alpha != 0.
//   jc: NC columns of C   — packed B block (kc×nc) lives in L2/L3
//   pc: KC depth          — first block applies beta, later ones accumulate (beta = 1)
//   ic: MC rows of C      — packed A block (mc×kc) lives in L2
//   jr: NR columns        — one B panel (kc×NR) stays in L1 across the ir loop
//   ir: MR rows           — micro-kernel
// The depth split depends on K alone, never on M or N, so per-element results are independent
// of how the caller splits C.
// With conv != NULL, op(B) is that convolution's column matrix (or its transpose) from column
// b_col0 on, packed by pack_b_im2col; B and ldb are unused.
SK_INLINE void SK(gemm_driver)(int transA, int transB, int64_t M, int64_t N, int64_t K, float alpha,
                               const float *A, int64_t lda, const float *B, int64_t ldb,
                               const score_conv_geometry *conv, int64_t b_col0, float beta,
                               float *C, int64_t ldc) {
    // Equal depth blocks (K = 300 gives 150 + 150, not 256 + 44): a thin last block would run
    // the micro-kernel's fixed load/store cost over too little work.
    const int64_t k_blocks = (K + SK_KC - 1) / SK_KC;
    const int64_t kc_max = (K + k_blocks - 1) / k_blocks;
    const int64_t mc_max = M < SK_MC ? ((M + SK_MR - 1) / SK_MR) * SK_MR : SK_MC;
    const int64_t nc_max = N < SK_NC ? ((N + SK_NR - 1) / SK_NR) * SK_NR : SK_NC;
    float *apack, *bpack;
    score__pack_buffers((size_t)(mc_max * kc_max), (size_t)(nc_max * kc_max), &apack, &bpack);

    _Alignas(64) float edge[SK_MR * SK_NR];

    // When C is only a few panels wide, each value of A serves few multiply-adds and packing A
    // costs a sizeable share of the product (attention's p·v and ds·k, 64 columns). A is then
    // read where it lies: the micro-kernel only broadcasts
    // single values of it, and the rows of one tile stay in L1 across the tile's k loop.
    // Only untransposed A: the k-major rows of a transposed A lie lda apart, often a multiple
    // of 4 KiB, so a tile's k loop would walk one L1 set (measured 30% slower than packing).
    const int direct_a = !transA && N <= SK_DIRECT_A_MAX_PANELS * SK_NR;
    const int64_t a_row = transA ? 1 : lda, a_step = transA ? lda : 1;

    for (int64_t jc = 0; jc < N; jc += SK_NC) {
        const int64_t nc = N - jc < SK_NC ? N - jc : SK_NC;
        for (int64_t pc = 0; pc < K; pc += kc_max) {
            const int64_t kc = K - pc < kc_max ? K - pc : kc_max;
            const float beta_block = pc == 0 ? beta : 1.0f;
            if (conv) SK(pack_b_im2col)(transB, conv, pc, b_col0 + jc, kc, nc, bpack);
            else SK(pack_b)(transB, B, ldb, pc, jc, kc, nc, bpack);
            for (int64_t ic = 0; ic < M; ic += SK_MC) {
                const int64_t mc = M - ic < SK_MC ? M - ic : SK_MC;
                const int64_t tail = mc % SK_MR;  // rows of a last, partial panel
                // Read in place, A needs packing only for a partial panel (padded with zeros).
                if (!direct_a) SK(pack_a)(transA, A, lda, ic, pc, mc, kc, apack);
                else if (tail) SK(pack_a)(transA, A, lda, ic + mc - tail, pc, tail, kc, apack);
                for (int64_t jr = 0; jr < nc; jr += SK_NR) {
                    const int64_t nr = nc - jr < SK_NR ? nc - jr : SK_NR;
                    const float *bp = bpack + jr * kc;
                    for (int64_t ir = 0; ir < mc; ir += SK_MR) {
                        const int64_t mr = mc - ir < SK_MR ? mc - ir : SK_MR;
                        const int in_place = direct_a && mr == SK_MR;
                        const float *ap = in_place ? A + (transA ? pc * lda + ic + ir : (ic + ir) * lda + pc)
                                                   : apack + (direct_a ? 0 : ir * kc);
                        float *ct = C + (ic + ir) * ldc + jc + jr;
                        if (mr < SK_MR && nr == SK_NR) {
                            // the last rows of a full-width tile: in place, no padded rows
                            SK(micro_kernel_rows)((int)mr, kc, ap, bp, ct, ldc, alpha, beta_block);
                            continue;
                        }
                        float *ctile = ct;
                        int64_t ldt = ldc;
                        if (mr < SK_MR || nr < SK_NR) {
                            // Edge tile: run the same kernel on a full-size scratch tile so
                            // edge elements get exactly the arithmetic interior ones get.
                            ctile = edge;
                            ldt = SK_NR;
                            if (beta_block != 0.0f)
                                for (int64_t i = 0; i < mr; i++) SK(copy_short)(ct + i * ldc, edge + i * SK_NR, nr);
                        }
                        if (in_place) SK(micro_kernel_direct_a)(kc, ap, a_row, a_step, bp, ctile, ldt, alpha, beta_block);
                        else SK(micro_kernel)(kc, ap, bp, ctile, ldt, alpha, beta_block);
                        if (ctile == edge)
                            for (int64_t i = 0; i < mr; i++) SK(copy_short)(edge + i * SK_NR, ct + i * ldc, nr);
                    }
                }
            }
        }
    }
}

static void SK(sgemm)(int transA, int transB, int64_t M, int64_t N, int64_t K, float alpha,
                      const float *A, int64_t lda, const float *B, int64_t ldb, float beta,
                      float *C, int64_t ldc) {
    SK(gemm_driver)(transA, transB, M, N, K, alpha, A, lda, B, ldb, NULL, 0, beta, C, ldc);
}

static void SK(sgemm_im2col)(int transA, int transB, int64_t M, int64_t N, int64_t K, float alpha,
                             const float *A, int64_t lda, const score_conv_geometry *conv,
                             int64_t b_col0, float beta, float *C, int64_t ldc) {
    SK(gemm_driver)(transA, transB, M, N, K, alpha, A, lda, NULL, 0, conv, b_col0, beta, C, ldc);
}

// ---------------------------------------------------------------------------------------------
// exp: Cephes expf. x = n·ln2 + r with |r| <= ln2/2 (ln2 split in two so n·C1 is exact), a
// degree-7 polynomial for e^r, then scaling by 2^n in two halves so that n down to -150 (the
// denormal range) needs no special case. About 1-2 ulp.
SK_INLINE SK_V SK(vexp_core)(SK_V x) {
    const SK_VI is_nan = x != x;
    const SK_VI underflow = x < SK(vsplat)(-103.972077f);  // below ln(2^-150): rounds to 0
    const SK_V x_in = x;
    // Clamp keeps n in [-150, 128]; 88.8 still overflows to +inf as it must (> ln FLT_MAX).
    x = SK(vselect)(x > SK(vsplat)(88.8f), SK(vsplat)(88.8f), x);
    x = SK(vselect)(x < SK(vsplat)(-104.0f), SK(vsplat)(-104.0f), x);

    // n = round(x / ln2) by the 1.5·2^23 trick: adding it leaves n in the low mantissa bits.
    const SK_V magic = SK(vsplat)(12582912.0f);
    const SK_V t = SK_FMA(x, SK(vsplat)(1.44269504088896341f), magic);
    const SK_V n = t - magic;
    const SK_VI ni = (SK_VI)t - (SK_VI)magic;

    SK_V r = SK_FMA(n, SK(vsplat)(-0.693359375f), x);
    r = SK_FMA(n, SK(vsplat)(2.12194440e-4f), r);

    SK_V p = SK(vsplat)(1.9875691500e-4f);
    p = SK_FMA(p, r, SK(vsplat)(1.3981999507e-3f));
    p = SK_FMA(p, r, SK(vsplat)(8.3334519073e-3f));
    p = SK_FMA(p, r, SK(vsplat)(4.1665795894e-2f));
    p = SK_FMA(p, r, SK(vsplat)(1.6666665459e-1f));
    p = SK_FMA(p, r, SK(vsplat)(5.0000001201e-1f));
    SK_V y = SK_FMA(p, r * r, r) + SK(vsplat)(1.0f);

    // y · 2^n as y · 2^n1 · 2^n2 with n1 = floor(n/2): each factor is a normal float.
    const SK_VI n1 = ni >> 1;
    const SK_VI n2 = ni - n1;
    const SK_V s1 = (SK_V)((n1 + SK(vsplati)(127)) << 23);
    const SK_V s2 = (SK_V)((n2 + SK(vsplati)(127)) << 23);
    y = y * s1 * s2;

    y = SK(vselect)(underflow, (SK_V){0}, y);
    return SK(vselect)(is_nan, x_in, y);
}

// Applies f to n values; the tail goes through a padded vector so every element gets the same
// arithmetic whatever its position (results do not depend on how callers chunk the array).
#define SK_MAP(f)                                                        \
    int64_t i = 0;                                                       \
    for (; i + SK_LANES <= n; i += SK_LANES)                             \
        SK(vstore)(y + i, f(SK(vload)(x + i)));                          \
    if (i < n) {                                                         \
        _Alignas(64) float buf[SK_LANES] = {0};                          \
        memcpy(buf, x + i, (size_t)(n - i) * sizeof(float));             \
        SK(vstore)(buf, f(SK(vload)(buf)));                              \
        memcpy(y + i, buf, (size_t)(n - i) * sizeof(float));             \
    }

static void SK(vexp)(const float *x, float *y, int64_t n) { SK_MAP(SK(vexp_core)) }

SK_INLINE SK_V SK(silu_core)(SK_V x) {
    const SK_V y = x / (SK(vsplat)(1.0f) + SK(vexp_core)(-x));
    // -inf / (1 + inf) would be NaN; the limit is 0 (finite x below -88 already give -0).
    return SK(vselect)(x == SK(vsplat)(-__builtin_inff()), (SK_V){0}, y);
}

static void SK(silu)(const float *x, float *y, int64_t n) { SK_MAP(SK(silu_core)) }

// erf by Abramowitz & Stegun 7.1.26: |error| below 1.5e-7, about one float ulp of 1.
SK_INLINE SK_V SK(erf_core)(SK_V x) {
    const SK_VI negative = x < SK(vsplat)(0.0f);
    const SK_V a = SK(vselect)(negative, -x, x);
    const SK_V t = SK(vsplat)(1.0f) / SK_FMA(SK(vsplat)(0.3275911f), a, SK(vsplat)(1.0f));
    SK_V p = SK(vsplat)(1.061405429f);
    p = SK_FMA(p, t, SK(vsplat)(-1.453152027f));
    p = SK_FMA(p, t, SK(vsplat)(1.421413741f));
    p = SK_FMA(p, t, SK(vsplat)(-0.284496736f));
    p = SK_FMA(p, t, SK(vsplat)(0.254829592f));
    const SK_V y = SK(vsplat)(1.0f) - p * t * SK(vexp_core)(-(a * a));
    return SK(vselect)(negative, -y, y);
}

// GELU (erf form): x · Φ(x) = ½ x (1 + erf(x / √2)).
SK_INLINE SK_V SK(gelu_core)(SK_V x) {
    return SK(vsplat)(0.5f) * x * (SK(vsplat)(1.0f) + SK(erf_core)(x * SK(vsplat)(0.70710678118654752f)));
}

static void SK(gelu)(const float *x, float *y, int64_t n) { SK_MAP(SK(gelu_core)) }

// Two-input form of SK_MAP: y = f(x, g), same tail rule.
#define SK_MAP2(f)                                                       \
    int64_t i = 0;                                                       \
    for (; i + SK_LANES <= n; i += SK_LANES)                             \
        SK(vstore)(y + i, f(SK(vload)(x + i), SK(vload)(g + i)));        \
    if (i < n) {                                                         \
        _Alignas(64) float bx[SK_LANES] = {0}, bg[SK_LANES] = {0};       \
        memcpy(bx, x + i, (size_t)(n - i) * sizeof(float));              \
        memcpy(bg, g + i, (size_t)(n - i) * sizeof(float));              \
        SK(vstore)(bx, f(SK(vload)(bx), SK(vload)(bg)));                 \
        memcpy(y + i, bx, (size_t)(n - i) * sizeof(float));              \
    }

// d silu / dx = σ(x) (1 + x (1 − σ(x))), times the incoming gradient g.
SK_INLINE SK_V SK(silu_grad_core)(SK_V x, SK_V g) {
    const SK_V one = SK(vsplat)(1.0f);
    const SK_V s = one / (one + SK(vexp_core)(-x));
    return g * s * SK_FMA(x, one - s, one);
}

// d gelu / dx = Φ(x) + x φ(x), times g.
SK_INLINE SK_V SK(gelu_grad_core)(SK_V x, SK_V g) {
    const SK_V cdf = SK(vsplat)(0.5f) * (SK(vsplat)(1.0f) + SK(erf_core)(x * SK(vsplat)(0.70710678118654752f)));
    const SK_V pdf = SK(vexp_core)(SK(vsplat)(-0.5f) * x * x) * SK(vsplat)(0.39894228040143268f);
    return g * SK_FMA(x, pdf, cdf);
}

static void SK(silu_grad)(const float *x, const float *g, float *y, int64_t n) { SK_MAP2(SK(silu_grad_core)) }
static void SK(gelu_grad)(const float *x, const float *g, float *y, int64_t n) { SK_MAP2(SK(gelu_grad_core)) }

#undef SK_MAP2

#undef SK_MAP

// Mean and (biased) variance of n floats, both passes accumulated in double lanes.
static void SK(moments)(const float *x, int64_t n, double *mean_out, double *var_out) {
    const int64_t full = n - n % SK_LANES;
    SK_VD sum = (SK_VD){0};
    for (int64_t i = 0; i < full; i += SK_LANES) sum += __builtin_convertvector(SK(vload)(x + i), SK_VD);
    double s = 0;
    for (int i = 0; i < SK_LANES; i++) s += sum[i];
    for (int64_t i = full; i < n; i++) s += (double)x[i];
    const double mu = s / (double)n;
    SK_VD sq = (SK_VD){0};
    const SK_VD vmu = (SK_VD){0} + mu;
    for (int64_t i = 0; i < full; i += SK_LANES) {
        const SK_VD d = __builtin_convertvector(SK(vload)(x + i), SK_VD) - vmu;
        sq += d * d;
    }
    double q = 0;
    for (int i = 0; i < SK_LANES; i++) q += sq[i];
    for (int64_t i = full; i < n; i++) { const double d = (double)x[i] - mu; q += d * d; }
    *mean_out = mu;
    *var_out = q / (double)n;
}

// Σ g and Σ g·x̂ with x̂ = (x − mean)·rstd over n values (a norm's backward), in double lanes.
static void SK(norm_grad_sums)(const float *g, const float *x, int64_t n, float mean, float rstd,
                               double *sum_g, double *sum_gx) {
    const int64_t full = n - n % SK_LANES;
    SK_VD a = (SK_VD){0}, b = (SK_VD){0};
    const SK_V vm = SK(vsplat)(mean), vs = SK(vsplat)(rstd);
    for (int64_t i = 0; i < full; i += SK_LANES) {
        const SK_V gv = SK(vload)(g + i);
        const SK_V xhat = (SK(vload)(x + i) - vm) * vs;
        a += __builtin_convertvector(gv, SK_VD);
        b += __builtin_convertvector(gv * xhat, SK_VD);
    }
    double sa = 0, sb = 0;
    for (int i = 0; i < SK_LANES; i++) { sa += a[i]; sb += b[i]; }
    for (int64_t i = full; i < n; i++) {
        const float xhat = (x[i] - mean) * rstd;
        sa += (double)g[i];
        sb += (double)(g[i] * xhat);
    }
    *sum_g = sa;
    *sum_gx = sb;
}

static void SK(softmax_rows)(const float *x, float *y, int64_t rows, int64_t cols) {
    if (cols <= 0) return;
    const int64_t full = cols - cols % SK_LANES;
    const int64_t tail = cols - full;
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * cols;
        float *yr = y + r * cols;
        // Tail lanes padded with -inf: ignored by the max, exp(-inf) = 0 adds nothing.
        _Alignas(64) float pad[SK_LANES];
        for (int i = 0; i < SK_LANES; i++) pad[i] = -__builtin_inff();
        memcpy(pad, xr + full, (size_t)tail * sizeof(float));

        SK_V vmax = SK(vload)(pad);
        for (int64_t c = 0; c < full; c += SK_LANES) {
            const SK_V v = SK(vload)(xr + c);
            vmax = SK(vselect)(v > vmax, v, vmax);
        }
        float m = vmax[0];
        for (int i = 1; i < SK_LANES; i++) m = vmax[i] > m ? vmax[i] : m;
        const SK_V vm = SK(vsplat)(m);

        // Sum in double: with thousands of columns a float sum would cost ~1e-6 relative.
        SK_VD sum = (SK_VD){0};
        for (int64_t c = 0; c < full; c += SK_LANES) {
            const SK_V e = SK(vexp_core)(SK(vload)(xr + c) - vm);
            SK(vstore)(yr + c, e);
            sum += __builtin_convertvector(e, SK_VD);
        }
        if (tail) {
            const SK_V e = SK(vexp_core)(SK(vload)(pad) - vm);
            SK(vstore)(pad, e);
            memcpy(yr + full, pad, (size_t)tail * sizeof(float));
            sum += __builtin_convertvector(e, SK_VD);
        }
        double total = 0;
        for (int i = 0; i < SK_LANES; i++) total += sum[i];
        const SK_V scale = SK(vsplat)((float)(1.0 / total));
        for (int64_t c = 0; c < full; c += SK_LANES)
            SK(vstore)(yr + c, SK(vload)(yr + c) * scale);
        for (int64_t c = full; c < cols; c++) yr[c] = yr[c] * scale[0];
    }
}

#undef SK_MIN
#undef SK_MAX
#undef SK_INLINE
