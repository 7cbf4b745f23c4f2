import Kernels

// Convolution as a GEMM over the image's column matrix (im2col, packed straight from the image
// by Kernels.sgemmIm2col, never materialised), nearest upsampling and average pooling, all NCHW.

/// Geometry of a 2-D convolution over one image.
struct ConvGeometry {
    let channels: Int, height: Int, width: Int
    let kernelH: Int, kernelW: Int, stride: Int, padding: Int
    var outH: Int { (height + 2 * padding - kernelH) / stride + 1 }
    var outW: Int { (width + 2 * padding - kernelW) / stride + 1 }
    /// Rows of the column matrix: one per (channel, kernel row, kernel column).
    var patchSize: Int { channels * kernelH * kernelW }
    /// Whether the column matrix is the image itself (1×1, stride 1, no padding).
    var isPointwise: Bool { kernelH == 1 && kernelW == 1 && stride == 1 && padding == 0 }

    /// Output columns ox whose input column ox·stride − padding + kx lies inside the image.
    @inline(__always)
    func validColumns(kx: Int) -> Range<Int> {
        let shift = kx - padding
        // smallest ox with ox·stride + shift ≥ 0, and first ox with ox·stride + shift ≥ width
        let lo = shift >= 0 ? 0 : (-shift + stride - 1) / stride
        let hi = width - shift <= 0 ? 0 : min(outW, (width - shift + stride - 1) / stride)
        return lo..<max(lo, hi)
    }

    /// Image n of a batch as the source of an implicit column matrix (Kernels.sgemmIm2col).
    func columns(of image: UnsafePointer<Float>) -> Kernels.ConvolutionImage {
        Kernels.ConvolutionImage(image: image, channels: channels, height: height, width: width,
                                 kernelH: kernelH, kernelW: kernelW, stride: stride, padding: padding)
    }

    /// Adds columns [C·kh·kw, outH·outW] back into an image [C, H, W] (the adjoint of im2col).
    func col2imAdd(_ columns: UnsafePointer<Float>, into image: UnsafeMutablePointer<Float>) {
        let outH = outH, outW = outW
        // Parallel over channels: each channel's plane is written by its own rows only.
        parallelChunks(channels, grain: 1) { chans in
            for c in chans {
                let plane = image + c * height * width
                for ky in 0..<kernelH {
                    for kx in 0..<kernelW {
                        let src = columns + ((c * kernelH + ky) * kernelW + kx) * outH * outW
                        let valid = validColumns(kx: kx)
                        let shift = kx - padding
                        for oy in 0..<outH {
                            let iy = oy * stride - padding + ky
                            if iy < 0 || iy >= height { continue }
                            let line = plane + iy * width + shift
                            let s = src + oy * outW
                            if stride == 1 {
                                for ox in valid { line[ox] += s[ox] }
                            } else {
                                for ox in valid { line[ox * stride] += s[ox] }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// 2-D convolution (cross-correlation, as PyTorch) of x [N, C, H, W] with weight
/// [O, C, kh, kw] and optional bias [O]; symmetric zero padding.
public func conv2d(_ x: Tensor, weight: Tensor, bias: Tensor? = nil, stride: Int = 1, padding: Int = 0) -> Tensor {
    precondition(x.rank == 4 && weight.rank == 4, "conv2d: input \(x.shape), weight \(weight.shape) must be rank 4")
    precondition(x.shape[1] == weight.shape[1], "conv2d: input has \(x.shape[1]) channels, weight expects \(weight.shape[1])")
    let batch = x.shape[0], outChannels = weight.shape[0]
    let geo = ConvGeometry(channels: x.shape[1], height: x.shape[2], width: x.shape[3],
                           kernelH: weight.shape[2], kernelW: weight.shape[3], stride: stride, padding: padding)
    precondition(geo.outH > 0 && geo.outW > 0, "conv2d: kernel larger than padded input \(x.shape)")
    let spatial = geo.outH * geo.outW, imageSize = geo.channels * geo.height * geo.width
    let px = x.pointer, pw = weight.pointer

    let pb = bias?.pointer
    let inputs = bias.map { [x, weight, $0] } ?? [x, weight]
    let precision = InferencePrecision.forward(inputs)
    let y = Tensor(shape: [batch, outChannels, geo.outH, geo.outW]) { out in
        forEachImage(batch) { n in
            let image = px + n * imageSize, c = out + n * outChannels * spatial
            if geo.isPointwise {  // the column matrix is the image itself
                Kernels.sgemm(transA: false, transB: false, m: outChannels, n: spatial, k: geo.patchSize,
                              a: pw, lda: geo.patchSize, b: image, ldb: spatial, c: c, ldc: spatial, precision: precision)
            } else {
                Kernels.sgemmIm2col(transB: false, m: outChannels, n: spatial, k: geo.patchSize,
                                    a: pw, lda: geo.patchSize, columnsOf: geo.columns(of: image), c: c, ldc: spatial,
                                    precision: precision)
            }
            // The bias right after the image's product, while it is still in cache.
            if let pb {
                parallelChunks(outChannels, grain: max(1, 8192 / spatial)) { r in
                    for channel in r {
                        let b = pb[channel], o = c + channel * spatial
                        for i in 0..<spatial { o[i] += b }
                    }
                }
            }
        }
    }
    return y.recording(inputs) { g in
        let pg = g.pointer
        var dw: Tensor? = nil
        if weight.isTracked {
            // dW = Σₙ gₙ · colsₙᵀ: the products of a few images at a time side by side, each
            // added to the sum in image order, so the bits do not depend on the thread count.
            let count = weight.count, slots = max(1, min(batch, Kernels.threadCount))
            let products = TensorStorage(uninitializedCount: slots * count)
            let sum = Tensor.zeros(weight.shape)
            let total = sum.pointer, parts = UnsafePointer(products.pointer)
            for first in Swift.stride(from: 0, to: batch, by: slots) {
                let images = min(slots, batch - first)
                forEachImage(images) { i in
                    let n = first + i, image = px + n * imageSize
                    let gn = pg + n * outChannels * spatial, c = products.pointer + i * count
                    if geo.isPointwise {
                        Kernels.sgemm(transA: false, transB: true, m: outChannels, n: geo.patchSize, k: spatial,
                                      a: gn, lda: spatial, b: image, ldb: spatial, c: c, ldc: geo.patchSize)
                    } else {
                        Kernels.sgemmIm2col(transB: true, m: outChannels, n: geo.patchSize, k: spatial,
                                            a: gn, lda: spatial, columnsOf: geo.columns(of: image), c: c, ldc: geo.patchSize)
                    }
                }
                parallelChunks(count, grain: 8192) { r in
                    for e in r {
                        var acc = total[e]
                        for i in 0..<images { acc += parts[i * count + e] }
                        total[e] = acc
                    }
                }
            }
            dw = sum
        }
        let dx = x.isTracked ? convolutionInputGradient(g, weight: weight, geometry: geo) : nil
        let db = bias.map { _ in g.sum(axes: [0, 2, 3]) }
        return [dx, dw, db]
    }
}

/// dx of a convolution. With stride 1 it is itself a convolution of g with the flipped,
/// channel-transposed kernel and padding k − 1 − p: a GEMM over g's column matrix with a long inner
/// dimension (C_out·k²), much faster than the GEMM with inner dimension C_out plus col2im
/// used for strided convolutions.
private func convolutionInputGradient(_ g: Tensor, weight: Tensor, geometry geo: ConvGeometry) -> Tensor {
    let (batch, outChannels) = (g.shape[0], g.shape[1])
    let inputShape = [batch, geo.channels, geo.height, geo.width]
    let spatial = geo.outH * geo.outW, imageSize = geo.channels * geo.height * geo.width
    let pg = g.pointer, pw = weight.pointer
    // The first two ways write every element of dx (GEMMs with beta 0): no zeroing first.
    if geo.isPointwise {
        return Tensor(shape: inputShape) { dx in
            forEachImage(batch) { n in
                Kernels.sgemm(transA: true, transB: false, m: geo.patchSize, n: spatial, k: outChannels,
                              a: pw, lda: geo.patchSize, b: pg + n * outChannels * spatial, ldb: spatial,
                              c: dx + n * imageSize, ldc: spatial)
            }
        }
    }
    if geo.stride == 1 && geo.padding <= min(geo.kernelH, geo.kernelW) - 1 && geo.kernelH == geo.kernelW {
        let k = geo.kernelH
        let transposedGeometry = ConvGeometry(channels: outChannels, height: geo.outH, width: geo.outW,
                                              kernelH: k, kernelW: k, stride: 1, padding: k - 1 - geo.padding)
        // w'[c, o, i, j] = w[o, c, k−1−i, k−1−j]
        let flipped = Tensor(shape: [geo.channels, outChannels, k, k]) { wt in
            for o in 0..<outChannels { for c in 0..<geo.channels { for i in 0..<k { for j in 0..<k {
                wt[((c * outChannels + o) * k + i) * k + j] = pw[((o * geo.channels + c) * k + (k - 1 - i)) * k + (k - 1 - j)]
            } } } }
        }
        return Tensor(shape: inputShape) { dx in
            forEachImage(batch) { n in
                Kernels.sgemmIm2col(transB: false, m: geo.channels, n: geo.height * geo.width,
                                    k: transposedGeometry.patchSize, a: flipped.pointer, lda: transposedGeometry.patchSize,
                                    columnsOf: transposedGeometry.columns(of: pg + n * outChannels * spatial),
                                    c: dx + n * imageSize, ldc: geo.height * geo.width)
            }
        }
    }
    let dx = Tensor.zeros(inputShape)
    forEachImageWithScratch(batch, scratch: geo.patchSize * spatial) { n, dcols in
        // dcols = Wᵀ · g_n, folded back into the image.
        Kernels.sgemm(transA: true, transB: false, m: geo.patchSize, n: spatial, k: outChannels,
                      a: pw, lda: geo.patchSize, b: pg + n * outChannels * spatial, ldb: spatial,
                      c: dcols, ldc: spatial)
        geo.col2imAdd(dcols, into: dx.pointer + n * imageSize)
    }
    return dx
}

/// Runs `body(n)` for every image n < batch, as forEachImageWithScratch.
func forEachImage(_ batch: Int, _ body: (Int) -> Void) {
    forEachImageWithScratch(batch, scratch: 0) { n, _ in body(n) }
}

/// Runs `body(n, scratch)` for every image n < batch. When the batch splits evenly over the
/// workers (or is large), images run side by side, each worker with its own scratch buffer and
/// single-threaded kernels inside: small images make GEMMs too small to share well. Otherwise
/// one image at a time, with threaded kernels. GEMMs split only along M and N and the other
/// per-image work is copying, so the bits are the same either way.
func forEachImageWithScratch(_ batch: Int, scratch count: Int, _ body: (Int, UnsafeMutablePointer<Float>) -> Void) {
    let workers = min(batch, Kernels.threadCount)
    guard workers > 1, batch % workers == 0 || batch >= 4 * workers else {
        let scratch = TensorStorage(uninitializedCount: max(count, 1))
        for n in 0..<batch { body(n, scratch.pointer) }
        return
    }
    Kernels.parallelFor(workers) { worker in
        let scratch = TensorStorage(uninitializedCount: max(count, 1))
        var n = worker
        while n < batch {
            body(n, scratch.pointer)
            n += workers
        }
    }
}

extension Tensor {
    /// Nearest-neighbour ×2 upsampling of [N, C, H, W].
    public func upsampleNearest2x() -> Tensor {
        precondition(rank == 4, "upsampleNearest2x needs NCHW, got \(shape)")
        let (planes, h, w) = (shape[0] * shape[1], shape[2], shape[3])
        let src = pointer
        let y = Tensor(shape: [shape[0], shape[1], 2 * h, 2 * w]) { dst in
            parallelChunks(planes * h, grain: max(1, 4096 / w)) { r in
                for row in r {
                    let s = src + row * w
                    let d0 = dst + row * 4 * w, d1 = d0 + 2 * w
                    for j in 0..<w { let v = s[j]; d0[2 * j] = v; d0[2 * j + 1] = v }
                    d1.update(from: d0, count: 2 * w)
                }
            }
        }
        let inputShape = shape
        return y.recording([self]) { g in
            let pg = g.pointer
            return [Tensor(shape: inputShape) { dst in
                parallelChunks(planes * h, grain: max(1, 4096 / w)) { r in
                    for row in r {
                        let g0 = pg + row * 4 * w, g1 = g0 + 2 * w
                        for j in 0..<w { dst[row * w + j] = g0[2 * j] + g0[2 * j + 1] + g1[2 * j] + g1[2 * j + 1] }
                    }
                }
            }]
        }
    }

    /// Average pooling of [N, C, H, W] with a square window, no padding.
    public func avgPool2d(kernel: Int, stride: Int? = nil) -> Tensor {
        precondition(rank == 4, "avgPool2d needs NCHW, got \(shape)")
        let s = stride ?? kernel
        let (planes, h, w) = (shape[0] * shape[1], shape[2], shape[3])
        let oh = (h - kernel) / s + 1, ow = (w - kernel) / s + 1
        let scale = 1 / Float(kernel * kernel)
        let src = pointer
        let y = Tensor(shape: [shape[0], shape[1], oh, ow]) { dst in
            parallelChunks(planes, grain: max(1, 4096 / (h * w))) { r in
                for p in r {
                    let plane = src + p * h * w
                    if kernel == 2 && s == 2 {
                        // The common 2×2 pool unrolled; the same additions in the same order.
                        for i in 0..<oh {
                            let top = plane + 2 * i * w, bottom = top + w, out = dst + (p * oh + i) * ow
                            for j in 0..<ow { out[j] = (top[2 * j] + top[2 * j + 1] + bottom[2 * j] + bottom[2 * j + 1]) * scale }
                        }
                        continue
                    }
                    for i in 0..<oh { for j in 0..<ow {
                        var acc: Float = 0
                        for ki in 0..<kernel { for kj in 0..<kernel { acc += plane[(i * s + ki) * w + j * s + kj] } }
                        dst[(p * oh + i) * ow + j] = acc * scale
                    } }
                }
            }
        }
        let inputShape = shape
        return y.recording([self]) { g in
            let pg = g.pointer
            let dx = Tensor.zeros(inputShape)
            let pd = dx.pointer
            parallelChunks(planes, grain: max(1, 4096 / (h * w))) { r in
                for p in r {
                    if kernel == 2 && s == 2 {
                        // Windows do not overlap: each input gets its window's value (+= onto 0).
                        for i in 0..<oh {
                            let top = pd + p * h * w + 2 * i * w, bottom = top + w, grad = pg + (p * oh + i) * ow
                            for j in 0..<ow {
                                let v = grad[j] * scale
                                top[2 * j] += v; top[2 * j + 1] += v; bottom[2 * j] += v; bottom[2 * j + 1] += v
                            }
                        }
                        continue
                    }
                    for i in 0..<oh { for j in 0..<ow {
                        let v = pg[(p * oh + i) * ow + j] * scale
                        for ki in 0..<kernel { for kj in 0..<kernel { pd[p * h * w + (i * s + ki) * w + j * s + kj] += v } }
                    } }
                }
            }
            return [dx]
        }
    }
}
