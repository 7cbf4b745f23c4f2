import Tensor

/// Text states of a fixed caption list, encoded once in one batch (so every caption has the
/// same token length) while the text encoder is frozen; training loops then gather batches of
/// states by caption index instead of running the encoder each step.
public struct CaptionTable {
    public let captions: [String]
    public let states: Tensor   // [captions, T, D]
    public let masks: Tensor    // [captions, T]

    public init(captions: [String], encoder: any TextEncoder) {
        self.captions = captions
        (states, masks) = noGrad { encoder.encode(prompts: captions) }
    }

    /// The index of `caption` in the table.
    public func index(of caption: String) -> Int? { captions.firstIndex(of: caption) }

    /// States and masks of the captions at `indices`, for one batch.
    public func batch(_ indices: [Int]) -> (states: Tensor, mask: Tensor) {
        let (t, d) = (states.shape[1], states.shape[2])
        let s = Tensor(shape: [indices.count, t, d]) { out in
            for (i, c) in indices.enumerated() { (out + i * t * d).update(from: states.pointer + c * t * d, count: t * d) }
        }
        let m = Tensor(shape: [indices.count, t]) { out in
            for (i, c) in indices.enumerated() { (out + i * t).update(from: masks.pointer + c * t, count: t) }
        }
        return (s, m)
    }
}
