import Tensors

/// Buffers that live only while one layer runs its backward pass. Layers of one model run backward one
/// at a time, so they share these instead of each keeping its own (for the Shakespeare GPT that is
/// 16 MiB less resident memory). Contents are unspecified on return: callers initialize what they use.
public final class Workspace {
    public enum Slot: Int, CaseIterable {
        case blockNormGradient, blockResidualGradient, blockHiddenGradient, blockActivationGradient
        case attentionScores
        /// The MLP's hidden units: the GELU output (recomputed from the cached GELU input in backward
        /// rather than kept per block) and its gradients; then, the MLP's backward being over, the
        /// attention's heads and QKV gradients.
        case blockActivation
        /// A LayerNorm's output: written in forward, recomputed in backward.
        case normalized
        /// Tensor parallelism: all-gathered rows (sequence parallelism) and partial sums before reduction.
        case sequenceGathered, sequenceGatheredGradient, tensorParallelPartial
        /// Mixture of experts: rows in send order, the experts' outputs, rows as received, input gradients
        /// of the experts' rows, and the router's gradients.
        case expertSend, expertOutput, expertStaging, expertInputGradient, routerGradient, routerLogitsGradient
    }

    var buffers: [FloatBuffer?] = Array(repeating: nil, count: Slot.allCases.count)

    public init() {}

    public func floats(_ slot: Slot, _ count: Int) -> UnsafeMutablePointer<Float> {
        if let b = buffers[slot.rawValue], b.count >= count { return b.base }
        let b = FloatBuffer(count: count)
        buffers[slot.rawValue] = b
        return b.base
    }
}
