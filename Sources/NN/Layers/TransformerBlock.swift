import Tensors

/// Pre-LN transformer block (GPT-2 / nanoGPT):
///   x1 = x + attn(ln1(x));  y = x1 + mlp(ln2(x1)),  mlp = c_proj(gelu(c_fc(.)))  with 4x expansion.
/// Caches x1 and fc out (GELU input), [N, C] and [N, 4C]. Backward recomputes what one cheap vector pass
/// gives back: the GELU output (4NC floats, as llm.c's recompute option) and both LayerNorm outputs from
/// the block's inputs and the cached mean and 1/std (2NC; a mixture's experts keep pointing at theirs, so
/// a mixture block keeps ln2 out). The MLP's backward runs in one [N, 4C] buffer: the GELU output, then
/// its gradient over it, then the GELU input's gradient over that.
///
/// Tensor parallelism (Megatron-LM): attention is split by heads and the MLP's hidden units across the
/// group: QKV and c_fc are column-parallel, the two c_proj row-parallel. Per block: forward sums the
/// two partial outputs over the group (g), backward sums the two partial LayerNorm-output gradients
/// (f backward). With sequence parallelism the LayerNorm/residual region holds rows/size rows: g is a
/// reduce-scatter, f an all-gather (and the gathered LayerNorm outputs are gathered again in backward
/// instead of being kept, which is where the activation memory goes down).
///
/// With a MixtureOfExperts the MLP is a mixture of expert MLPs (MixtureOfExperts.swift); such a block
/// runs without a split backward. Under tensor parallelism its experts are split over the group: the
/// mixture takes the gathered LayerNorm output (kept: the router's backward reads it) and its partial
/// output and input gradient are summed over the group where the dense MLP's are.
public final class TransformerBlock {
    public let ln1: LayerNormLayer, attention: CausalSelfAttention
    public let ln2: LayerNormLayer
    /// The dense MLP (nil in a mixture-of-experts block) or the mixture.
    let dense: (fc: Linear, projection: Linear)?
    public let experts: MixtureOfExperts?
    public var fc: Linear { dense!.fc }
    public var projection: Linear { dense!.projection }
    let channels: Int
    /// This rank's MLP hidden units (4C / tensor-parallel size).
    let hidden: Int
    let parallel: TensorParallelism?
    /// The tanh approximation or exact (nanoGPT's nn.GELU()).
    let gelu: GELUForm
    /// ln2Out: kept in a mixture-of-experts block only (empty otherwise); all rows under sequence
    /// parallelism (the mixture's input).
    var x1 = Tensor(zeros: [0]), ln2Out = Tensor(zeros: [0])
    var fcOut = Tensor(zeros: [0])
    let workspace: Workspace

    /// `heads`: the model's heads (a tensor-parallel rank keeps heads / size of them).
    public init(_ parameters: ParameterSet, _ name: String, heads: Int, hasBias: Bool, workspace: Workspace = Workspace(),
                parallel: TensorParallelism? = nil, gelu: GELUForm = .exact, experts moe: MoEConfiguration? = nil,
                exchange: ExpertExchange? = nil) {
        self.workspace = workspace
        self.gelu = gelu
        self.parallel = parallel
        ln1 = LayerNormLayer(parameters, name + ".ln_1", hasBias: hasBias)
        attention = CausalSelfAttention(parameters, name + ".attn", heads: heads / (parallel?.size ?? 1), hasBias: hasBias,
                                        workspace: workspace)
        ln2 = LayerNormLayer(parameters, name + ".ln_2", hasBias: hasBias)
        if let moe {
            dense = nil
            experts = MixtureOfExperts(parameters, name + ".mlp", configuration: moe, hasBias: hasBias, exchange: exchange,
                                       split: parallel, gelu: gelu, workspace: workspace)
        } else {
            dense = (Linear(parameters, name + ".mlp.c_fc", hasBias: hasBias), Linear(parameters, name + ".mlp.c_proj", hasBias: hasBias))
            experts = nil
        }
        channels = ln1.features
        hidden = dense?.fc.outFeatures ?? 0
    }

    /// `parts`: the tensor-parallel size (1: the whole block).
    /// A mixture-of-experts block registers its router here and its experts with
    /// `MixtureOfExperts.register` (the GPT keeps all experts together at the start of its buffer).
    public static func register(_ layout: inout ParameterSet.Layout, _ name: String, channels: Int, bias: Bool, parts: Int = 1,
                                experts: MoEConfiguration? = nil) {
        LayerNormLayer.register(&layout, name + ".ln_1", features: channels, bias: bias)
        CausalSelfAttention.register(&layout, name + ".attn", channels: channels, bias: bias, parts: parts)
        LayerNormLayer.register(&layout, name + ".ln_2", features: channels, bias: bias)
        if let experts {
            layout.add(name + ".mlp.router.weight", [experts.experts, channels])
            return
        }
        Linear.register(&layout, name + ".mlp.c_fc", in: channels, out: 4 * channels / parts, bias: bias)
        Linear.register(&layout, name + ".mlp.c_proj", in: 4 * channels / parts, out: channels, bias: bias)
    }

    /// `localRows`: rows of the LayerNorm/residual region on this rank.
    func prepare(rows: Int, localRows: Int) {
        if x1.count == localRows * channels && fcOut.count == rows * hidden { return }
        let c = channels
        x1 = Tensor(zeros: [localRows, c])
        if experts != nil { ln2Out = Tensor(zeros: [rows, c]) }
        fcOut = Tensor(zeros: [rows, hidden])
    }

    /// Bytes of the tensors this block keeps from forward to backward (its attention's included).
    public var activationBytes: Int {
        4 * (x1.count + ln2Out.count + fcOut.count + ln1.cachedCount + ln2.cachedCount
             + attention.qkv.count + attention.probabilities.count + attention.headsOut.count) + (experts?.activationBytes ?? 0)
    }

    /// x and y hold this rank's rows of the residual stream (all B*T rows, or B*T/size with sequence parallelism).
    public func forward(_ x: UnsafePointer<Float>, batch B: Int, time T: Int, into y: UnsafeMutablePointer<Float>) throws {
        if let parallel { return try parallelForward(x, batch: B, time: T, into: y, parallel) }
        let rows = B * T, n = rows * channels
        prepare(rows: rows, localRows: rows)
        let normalized = workspace.floats(.normalized, n)
        ln1.forward(x, rows: rows, into: normalized)
        attention.forward(normalized, batch: B, time: T, into: x1.data)
        add(x1.data, x, into: x1.data, count: n)
        if let experts {
            ln2.forward(x1.data, rows: rows, into: ln2Out.data)
            try experts.forward(ln2Out.data, rows: rows, into: y)
            return add(y, x1.data, into: y, count: n)
        }
        ln2.forward(x1.data, rows: rows, into: normalized)
        fc.forward(normalized, rows: rows, into: fcOut.data)
        let geluOut = workspace.floats(.blockActivation, rows * 4 * channels)
        OperationProfile.measure("gelu forward") { geluForward(fcOut.data, into: geluOut, count: rows * 4 * channels, form: gelu) }
        projection.forward(geluOut, rows: rows, into: y)
        add(y, x1.data, into: y, count: n)
    }

    /// Whether backward calls `mlpDone` (the dense block on one rank; a mixture or a tensor-parallel
    /// block finishes its halves' gradients together).
    public var reportsMLPHalf: Bool { experts == nil && parallel == nil }

    /// dy is the gradient of the block output; accumulates into dx. With `saved` (a split backward's
    /// input pass) the weight gradients are left out and the output gradients they need are kept in
    /// `saved` for `weightBackward`.
    /// `mlpDone` runs once the MLP half's gradients (ln2 and the MLP's weights) are final, before the
    /// attention half's backward, so data parallelism can send them while that runs.
    public func backward(_ x: UnsafePointer<Float>, dy: UnsafePointer<Float>, batch B: Int, time T: Int,
                         dx: UnsafeMutablePointer<Float>, deferring saved: BlockWeightInputs? = nil, lossScale: Float = 1,
                         mlpDone: () -> Void = {}) throws {
        if let parallel {
            precondition(saved == nil, "a split backward is not available with tensor parallelism")
            return try parallelBackward(x, dy: dy, batch: B, time: T, dx: dx, lossScale: lossScale, parallel)
        }
        if let experts {
            precondition(saved == nil, "a split backward is not available in a mixture-of-experts block")
            return try expertBackward(experts, x, dy: dy, batch: B, time: T, dx: dx, lossScale: lossScale)
        }
        let rows = B * T, n = rows * channels
        saved?.prepare(rows: rows, channels: channels)
        let weights = saved == nil
        let hidden = rows * 4 * channels
        // A split backward's input pass writes the output gradients its weight pass needs straight
        // into `saved` instead of the shared workspace, so W costs no copies.
        let dx1 = saved?.attentionProjection.data ?? workspace.floats(.blockResidualGradient, n)
        let dMlpNorm = saved?.ln2.data ?? workspace.floats(.blockNormGradient, n)
        let dAttentionNorm = saved?.ln1.data ?? dMlpNorm
        // The GELU output, then its gradient, then (without `saved`) the GELU input's gradient: each
        // overwrites the one before once it is used (no zeroing passes either).
        let mlpHidden = workspace.floats(.blockActivation, hidden)
        let dFc = saved?.fc.data ?? mlpHidden
        let normalized = workspace.floats(.normalized, n)
        // Residual: dx1 = dy + d(mlp branch)/dx1.
        dx1.update(from: dy, count: n)
        if let saved {
            // The input pass needs no GELU output (only c_proj's weight gradient does): W recomputes it.
            saved.projection.data.update(from: dy, count: n)
            projection.inputBackward(dy: dy, rows: rows, dx: mlpHidden, accumulate: false)
            OperationProfile.measure("gelu backward") {
                geluBackward(fcOut.data, mlpHidden, accumulatingInto: dFc, count: hidden, form: gelu, accumulate: false)
            }
        } else {
            // The GELU input is not needed past this block's backward: it becomes the GELU's slope.
            OperationProfile.measure("gelu forward + slope (recomputed)") {
                geluForwardAndSlope(fcOut.data, into: mlpHidden, count: hidden, form: gelu)
            }
            projection.weightBackward(mlpHidden, dy: dy, rows: rows)
            // The GELU's gradient: each block of the GELU output's gradient times the slope as the GEMM
            // finishes it, in cache (a pass of its own read both back from memory: 0.14 ms a step more).
            let slope = fcOut.data, ld = 4 * channels
            projection.inputBackward(dy: dy, rows: rows, dx: mlpHidden, accumulate: false, then: ("gelu backward", { block in
                block.forEachRun(ld: ld) { offset, count in multiply(mlpHidden + offset, slope + offset, into: dFc + offset, count: count) }
            }))
        }
        if weights { ln2.recompute(x1.data, rows: rows, into: normalized) }
        fc.backward(normalized, dy: dFc, rows: rows, dx: dMlpNorm, weights: weights, accumulate: false)
        ln2.backward(x1.data, dy: dMlpNorm, rows: rows, dx: dx1, weights: weights)
        if weights { mlpDone() }
        // dx = dx1 + d(attn branch)/dx.
        add(dx, dx1, into: dx, count: n)
        if weights { ln1.recompute(x, rows: rows, into: normalized) }
        attention.backward(normalized, dy: dx1, batch: B, time: T, dx: dAttentionNorm, deferring: saved, accumulate: false)
        ln1.backward(x, dy: dAttentionNorm, rows: rows, dx: dx, weights: weights)
    }

    /// The dense backward with the mixture in place of the MLP; `lossScale` reaches its auxiliary loss.
    func expertBackward(_ experts: MixtureOfExperts, _ x: UnsafePointer<Float>, dy: UnsafePointer<Float>, batch B: Int, time T: Int,
                        dx: UnsafeMutablePointer<Float>, lossScale: Float) throws {
        let rows = B * T, n = rows * channels
        let dx1 = workspace.floats(.blockResidualGradient, n), dNorm = workspace.floats(.blockNormGradient, n)
        dx1.update(from: dy, count: n)
        dNorm.update(repeating: 0, count: n)
        try experts.backward(dy: dy, lossScale: lossScale, dx: dNorm)
        ln2.backward(x1.data, dy: dNorm, rows: rows, dx: dx1)
        add(dx, dx1, into: dx, count: n)
        dNorm.update(repeating: 0, count: n)
        let normalized = workspace.floats(.normalized, n)
        ln1.recompute(x, rows: rows, into: normalized)
        attention.backward(normalized, dy: dx1, batch: B, time: T, dx: dNorm)
        ln1.backward(x, dy: dNorm, rows: rows, dx: dx)
    }

    /// The weight pass of a split backward: the weight gradients from the output gradients the input
    /// pass kept in `saved` and the activations this block cached in forward (x is the block input).
    public func weightBackward(_ x: UnsafePointer<Float>, saved: BlockWeightInputs, batch B: Int, time T: Int) {
        let rows = B * T, hidden = rows * 4 * channels
        let geluOut = workspace.floats(.blockActivation, hidden), normalized = workspace.floats(.normalized, rows * channels)
        geluForward(fcOut.data, into: geluOut, count: hidden, form: gelu)
        projection.weightBackward(geluOut, dy: saved.projection.data, rows: rows)
        ln2.recompute(x1.data, rows: rows, into: normalized)
        fc.weightBackward(normalized, dy: saved.fc.data, rows: rows)
        ln2.weightBackward(x1.data, dy: saved.ln2.data, rows: rows)
        attention.outputProjection.weightBackward(attention.headsOut.data, dy: saved.attentionProjection.data, rows: rows)
        ln1.recompute(x, rows: rows, into: normalized)
        attention.qkvProjection.weightBackward(normalized, dy: saved.qkv.data, rows: rows)
        ln1.weightBackward(x, dy: saved.ln1.data, rows: rows)
    }

    func parallelForward(_ x: UnsafePointer<Float>, batch B: Int, time T: Int, into y: UnsafeMutablePointer<Float>,
                         _ parallel: TensorParallelism) throws {
        let rows = B * T, local = parallel.localRows(rows), c = channels, n = local * c
        prepare(rows: rows, localRows: local)
        let gathered = workspace.floats(.sequenceGathered, rows * c), partial = workspace.floats(.tensorParallelPartial, rows * c)
        let normalized = workspace.floats(.normalized, n)
        ln1.forward(x, rows: local, into: normalized)
        attention.forward(try parallel.gatherRows(normalized, rows: rows, width: c, full: gathered), batch: B, time: T,
                          into: partial, addingOutputBias: false)
        let attentionOut = try parallel.reduceRows(partial, rows: rows, width: c)
        if let bias = attention.outputProjection.bias { addBias(bias.value.data, to: attentionOut, rows: local, cols: c) }
        add(attentionOut, x, into: x1.data, count: n)
        if let experts {
            // This rank's rows normalized at the place they hold among all rows, then the others' gathered.
            let mine = ln2Out.data + (parallel.sequenceParallel ? parallel.rank * n : 0)
            ln2.forward(x1.data, rows: local, into: mine)
            _ = try parallel.gatherRows(mine, rows: rows, width: c, full: ln2Out.data)
            try experts.forward(ln2Out.data, rows: rows, into: partial)
            return add(try parallel.reduceRows(partial, rows: rows, width: c), x1.data, into: y, count: n)
        }
        ln2.forward(x1.data, rows: local, into: normalized)
        fc.forward(try parallel.gatherRows(normalized, rows: rows, width: c, full: gathered), rows: rows, into: fcOut.data)
        let geluOut = workspace.floats(.blockActivation, rows * hidden)
        geluForward(fcOut.data, into: geluOut, count: rows * hidden, form: gelu)
        projection.forward(geluOut, rows: rows, into: partial, addingBias: false)
        let mlpOut = try parallel.reduceRows(partial, rows: rows, width: c)
        if let bias = projection.bias { addBias(bias.value.data, to: mlpOut, rows: local, cols: c) }
        add(mlpOut, x1.data, into: y, count: n)
    }

    /// The row-parallel layers see the whole output gradient (all-gathered under sequence parallelism),
    /// so their bias gradients are complete on every rank; the LayerNorms' are partial under sequence
    /// parallelism (their rows only) and are summed over the group after backward.
    func parallelBackward(_ x: UnsafePointer<Float>, dy: UnsafePointer<Float>, batch B: Int, time T: Int,
                          dx: UnsafeMutablePointer<Float>, lossScale: Float, _ parallel: TensorParallelism) throws {
        let rows = B * T, local = parallel.localRows(rows), c = channels, n = local * c, hiddenCount = rows * hidden
        let dx1 = workspace.floats(.blockResidualGradient, n)
        let gathered = workspace.floats(.sequenceGathered, rows * c), gatheredGradient = workspace.floats(.sequenceGatheredGradient, rows * c)
        let partial = workspace.floats(.tensorParallelPartial, rows * c)
        dx1.update(from: dy, count: n)
        let normalized = workspace.floats(.normalized, n)
        if let experts {
            partial.update(repeating: 0, count: rows * c)
            try experts.backward(dy: try parallel.gatherRows(dy, rows: rows, width: c, full: gatheredGradient), lossScale: lossScale, dx: partial)
            ln2.backward(x1.data, dy: try parallel.reduceRows(partial, rows: rows, width: c), rows: local, dx: dx1)
            add(dx, dx1, into: dx, count: n)
            return try attentionBackward(x, dx1: dx1, batch: B, time: T, dx: dx, parallel)
        }
        // As the dense backward: one [N, 4C/size] buffer for the GELU output and both gradients, and
        // producers that overwrite (no zeroing passes).
        let mlpHidden = workspace.floats(.blockActivation, hiddenCount)
        geluForwardAndSlope(fcOut.data, into: mlpHidden, count: hiddenCount, form: gelu)
        let dOut = try parallel.gatherRows(dy, rows: rows, width: c, full: gatheredGradient)
        projection.weightBackward(mlpHidden, dy: dOut, rows: rows)
        projection.inputBackward(dy: dOut, rows: rows, dx: mlpHidden, accumulate: false)
        multiply(mlpHidden, fcOut.data, into: mlpHidden, count: hiddenCount)
        ln2.recompute(x1.data, rows: local, into: normalized)
        fc.backward(try parallel.gatherRows(normalized, rows: rows, width: c, full: gathered), dy: mlpHidden, rows: rows, dx: partial,
                    accumulate: false)
        ln2.backward(x1.data, dy: try parallel.reduceRows(partial, rows: rows, width: c), rows: local, dx: dx1)
        add(dx, dx1, into: dx, count: n)
        try attentionBackward(x, dx1: dx1, batch: B, time: T, dx: dx, parallel)
    }

    /// The attention half of a tensor-parallel backward: dx1 is the gradient at the attention residual.
    func attentionBackward(_ x: UnsafePointer<Float>, dx1: UnsafeMutablePointer<Float>, batch B: Int, time T: Int,
                           dx: UnsafeMutablePointer<Float>, _ parallel: TensorParallelism) throws {
        let rows = B * T, local = parallel.localRows(rows), c = channels, n = local * c
        let gathered = workspace.floats(.sequenceGathered, rows * c), gatheredGradient = workspace.floats(.sequenceGatheredGradient, rows * c)
        let partial = workspace.floats(.tensorParallelPartial, rows * c), normalized = workspace.floats(.normalized, n)
        ln1.recompute(x, rows: local, into: normalized)
        attention.backward(try parallel.gatherRows(normalized, rows: rows, width: c, full: gathered),
                           dy: try parallel.gatherRows(dx1, rows: rows, width: c, full: gatheredGradient), batch: B, time: T, dx: partial,
                           accumulate: false)
        ln1.backward(x, dy: try parallel.reduceRows(partial, rows: rows, width: c), rows: local, dx: dx)
    }
}

/// The output gradients of a block's weighted layers, kept from a split backward's input pass (B) to
/// its weight pass (W), as zero-bubble schedules run them: 11·C floats per row.
public final class BlockWeightInputs {
    var projection = Tensor(zeros: [0]), fc = Tensor(zeros: [0]), ln2 = Tensor(zeros: [0])
    var attentionProjection = Tensor(zeros: [0]), qkv = Tensor(zeros: [0]), ln1 = Tensor(zeros: [0])

    public init() {}

    func prepare(rows: Int, channels c: Int) {
        guard projection.count != rows * c else { return }
        projection = Tensor(zeros: [rows, c]); fc = Tensor(zeros: [rows, 4 * c]); ln2 = Tensor(zeros: [rows, c])
        attentionProjection = Tensor(zeros: [rows, c]); qkv = Tensor(zeros: [rows, 3 * c]); ln1 = Tensor(zeros: [rows, c])
    }
}
