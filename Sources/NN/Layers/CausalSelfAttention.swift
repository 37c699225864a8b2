import Tensors

/// Multi-head causal self-attention: fused QKV projection, scaled dot-product with a causal mask,
/// output projection. Caches qkv [N, 3C], the heads' output [N, C] and what attentionForward keeps (the
/// attention probabilities [B, NH, T, T] for head sizes the fused kernels do not take; for the others,
/// which recompute them, each row's softmax statistics [B, NH, T, 2]); backward's
/// temporaries come from the model's shared Workspace. Under tensor parallelism a rank holds `heads` of
/// the model's heads: QKV is column-parallel (its heads' rows of q, k and v), the output projection
/// row-parallel (its partial sum is reduced by the caller, then the bias added).
public final class CausalSelfAttention {
    public let qkvProjection: Linear
    public let outputProjection: Linear
    /// Heads on this rank.
    public let heads: Int
    /// This rank's heads x head size (the model's width without tensor parallelism).
    let channels: Int
    var qkv = Tensor(zeros: [0]), probabilities = Tensor(zeros: [0]), headsOut = Tensor(zeros: [0])
    let workspace: Workspace

    public init(_ parameters: ParameterSet, _ name: String, heads: Int, hasBias: Bool, workspace: Workspace = Workspace()) {
        self.workspace = workspace
        qkvProjection = Linear(parameters, name + ".c_attn", hasBias: hasBias)
        outputProjection = Linear(parameters, name + ".c_proj", hasBias: hasBias)
        self.heads = heads
        channels = qkvProjection.outFeatures / 3
    }

    /// `parts`: the tensor-parallel size (1: the whole layer).
    public static func register(_ layout: inout ParameterSet.Layout, _ name: String, channels: Int, bias: Bool, parts: Int = 1) {
        Linear.register(&layout, name + ".c_attn", in: channels, out: 3 * channels / parts, bias: bias)
        Linear.register(&layout, name + ".c_proj", in: channels / parts, out: channels, bias: bias)
    }

    func prepare(batch B: Int, time T: Int) {
        let rows = B * T
        let kept = attentionProbabilityCount(batch: B, time: T, channels: channels, heads: heads)
        if qkv.count == rows * 3 * channels && probabilities.count == kept { return }
        qkv = Tensor(zeros: [rows, 3 * channels])
        probabilities = Tensor(zeros: [kept])
        headsOut = Tensor(zeros: [rows, channels])
    }

    public func forward(_ x: UnsafePointer<Float>, batch B: Int, time T: Int, into y: UnsafeMutablePointer<Float>,
                        addingOutputBias: Bool = true) {
        prepare(batch: B, time: T)
        qkvProjection.forward(x, rows: B * T, into: qkv.data)
        // QK^T and PV: 2 · 2·B·T·T·C (the causal half is computed too).
        OperationProfile.measure("attention core forward", flops: 4 * Double(B * T * T * channels)) {
            attentionForward(qkv: qkv.data, out: headsOut.data, att: probabilities.data,
                             scratch: workspace.floats(.attentionScores, attentionScratchCount(time: T, channels: channels, heads: heads)),
                             batch: B, time: T, channels: channels, heads: heads)
        }
        outputProjection.forward(headsOut.data, rows: B * T, into: y, addingBias: addingOutputBias)
    }

    /// Accumulates into dx (overwrites it with `accumulate: false`).
    public func backward(_ x: UnsafePointer<Float>, dy: UnsafePointer<Float>, batch B: Int, time T: Int,
                         dx: UnsafeMutablePointer<Float>, deferring saved: BlockWeightInputs? = nil, accumulate: Bool = true) {
        let rows = B * T
        // The heads' and QKV gradients, [N, C] and [N, 3C], in the block's MLP buffer, whose backward
        // is over by now. A split backward keeps dqkv for its weight pass: written there directly. dy
        // (the output projection's output gradient) is the caller's, already in `saved`.
        let gradients = workspace.floats(.blockActivation, rows * 4 * channels)
        let dHeadsOut = gradients, dqkv = saved?.qkv.data ?? gradients + rows * channels
        outputProjection.backward(headsOut.data, dy: dy, rows: rows, dx: dHeadsOut, weights: saved == nil, accumulate: false)
        OperationProfile.measure("attention core backward", flops: 8 * Double(B * T * T * channels)) {
            attentionBackward(dout: dHeadsOut, qkv: qkv.data, att: probabilities.data, dqkv: dqkv,
                              scratch: workspace.floats(.attentionScores, attentionScratchCount(time: T, channels: channels, heads: heads)),
                              batch: B, time: T, channels: channels, heads: heads)
        }
        qkvProjection.backward(x, dy: dqkv, rows: rows, dx: dx, weights: saved == nil, accumulate: accumulate)
    }
}
