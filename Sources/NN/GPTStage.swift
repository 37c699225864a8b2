import Tensors

// One pipeline stage of the GPT: a contiguous range of transformer blocks, with the token and position
// embeddings on the first stage and the final LayerNorm, the (tied) head and the loss on the last. A
// stage keeps several micro-batches' activations at once (a schedule's "live" micro-batches): each
// activation slot has its own layer objects over the one parameter set, so slots share the weights
// and the gradient buffer but not the values cached for backward. Backward passes run one at a time
// and share one workspace. Parameter names are the full model's (nanoGPT's), so the stages of a
// pipeline together hold exactly one GPT's tensors, except that the first and the last stage both
// hold `transformer.wte.weight` (lookup and tied head), whose gradients the two must sum.
//
// With tensor parallelism (Megatron's tensor × pipeline layout) a stage holds its tensor-parallel
// shard of every block and the vocabulary rows of the tied embedding/head that GPT's sharding gives
// its tensor rank: the lookup and the head are vocabulary-parallel, and with sequence parallelism the
// residual stream, hence the activation passed between stages, is this rank's 1/size of the rows.
// The split backward (zero-bubble schedules) is not available then: the tensor-parallel blocks
// compute input and weight gradients together.

public final class GPTStage {
    public let configuration: GPTConfiguration
    public let layers: Range<Int>
    public let isFirst: Bool, isLast: Bool
    public let parameters: ParameterSet
    public let parallel: TensorParallelism?
    /// Under expert parallelism: the group its mixtures exchange tokens with.
    public let exchange: ExpertExchange?
    /// This tensor rank's rows of the tied embedding/head (all of them without tensor parallelism).
    public let vocabulary: VocabularyShard
    let workspace = Workspace()
    let slots: [Slot]

    final class Slot {
        let blocks: [TransformerBlock]
        let finalNorm: LayerNormLayer?
        let head = CrossEntropyHead()
        let parallelHead = VocabParallelCrossEntropy()
        var residual: [Tensor] = [], dResidual: [Tensor] = []
        /// Sequence parallelism: the final LayerNorm's output over all rows, the head's input.
        var normGathered = Tensor(zeros: [0])
        var normOut = Tensor(zeros: [0]), logits = Tensor(zeros: [0]), dNormOut = Tensor(zeros: [0]), dLogits = Tensor(zeros: [0])
        var tokens: [Int32] = []
        var batch = 0, time = 0
        var holdsActivations = false
        /// A split backward's input pass ran; its weight pass has not.
        var awaitingWeights = false
        var inputGradientIndex = 0
        var saved: [BlockWeightInputs] = []

        init(blocks: [TransformerBlock], finalNorm: LayerNormLayer?) { self.blocks = blocks; self.finalNorm = finalNorm }
    }

    /// Blocks `layers` of the model; `isFirst`/`isLast` say whether the embeddings and the head are
    /// here; `slots` micro-batches may be alive (forward done, backward not yet) at once.
    /// `parameters` may be a set shared with the rank's other stages (one optimizer, one gradient
    /// buffer), registered with `register`; by default the stage makes its own. `parallel` splits the
    /// stage over a tensor-parallel group.
    /// `exchange` splits its mixtures' experts over an expert group (whose ranks run the same stage).
    public init(_ configuration: GPTConfiguration, layers: Range<Int>, isFirst: Bool, isLast: Bool, slots: Int,
                parameters shared: ParameterSet? = nil, parallel: TensorParallelism? = nil, exchange: ExpertExchange? = nil) {
        precondition(slots >= 1 && layers.lowerBound >= 0 && layers.upperBound <= configuration.layers)
        let parallel = (parallel?.size ?? 1) > 1 ? parallel : nil
        precondition(configuration.heads % (parallel?.size ?? 1) == 0, "n_head \(configuration.heads) not divisible by the tensor-parallel size")
        self.configuration = configuration; self.layers = layers; self.isFirst = isFirst; self.isLast = isLast
        self.parallel = parallel
        let exchange = (exchange?.size ?? 1) > 1 ? exchange : nil
        self.exchange = exchange
        vocabulary = VocabularyShard(vocabulary: configuration.vocabularySize, rank: parallel?.rank ?? 0, size: parallel?.size ?? 1)
        let parameters = shared ?? {
            var layout = ParameterSet.Layout()
            GPTStage.register(&layout, configuration, layers: layers, isFirst: isFirst, isLast: isLast, parts: parallel?.size ?? 1,
                              expertParts: exchange?.size ?? 1)
            return ParameterSet(layout: layout)
        }()
        self.parameters = parameters
        let workspace = self.workspace
        self.slots = (0..<slots).map { _ in
            Slot(blocks: layers.map { TransformerBlock(parameters, "transformer.h.\($0)", heads: configuration.heads, hasBias: configuration.bias,
                                                       workspace: workspace, parallel: parallel, gelu: configuration.gelu,
                                                       experts: configuration.experts(inLayer: $0), exchange: exchange) },
                 finalNorm: isLast ? LayerNormLayer(parameters, "transformer.ln_f", hasBias: configuration.bias) : nil)
        }
    }

    public var slotCount: Int { slots.count }

    /// The stage's tensors, under the full model's names: the tied embedding on the first and the last
    /// stage, the position embedding on the first, the final LayerNorm on the last. `parts`: the
    /// tensor-parallel size (each rank registers its shard), `expertParts` the expert-parallel size.
    /// `experts: false` leaves the experts out (a rank of several stages registers all of theirs first).
    public static func register(_ layout: inout ParameterSet.Layout, _ configuration: GPTConfiguration, layers: Range<Int>,
                                isFirst: Bool, isLast: Bool, parts: Int = 1, expertParts: Int = 1, experts: Bool = true) {
        let c = configuration.embedding
        // Experts first among the stage's tensors, as GPT orders them.
        if experts { registerExperts(&layout, configuration, layers: layers, parts: parts, expertParts: expertParts) }
        let vocabularyRows = VocabularyShard(vocabulary: configuration.vocabularySize, rank: 0, size: parts).rows
        if isFirst || isLast { layout.add(tiedEmbedding, [vocabularyRows, c]) }
        if isFirst { layout.add("transformer.wpe.weight", [configuration.blockSize, c]) }
        for l in layers {
            TransformerBlock.register(&layout, "transformer.h.\(l)", channels: c, bias: configuration.bias, parts: parts,
                                      experts: configuration.experts(inLayer: l))
        }
        if isLast { LayerNormLayer.register(&layout, "transformer.ln_f", features: c, bias: configuration.bias) }
    }

    /// The stacked experts of the mixtures in `layers`: this rank's share of each, split over the
    /// tensor-parallel (`parts`) and the expert-parallel (`expertParts`) group, as the GPT's.
    public static func registerExperts(_ layout: inout ParameterSet.Layout, _ configuration: GPTConfiguration, layers: Range<Int>,
                                       parts: Int = 1, expertParts: Int = 1) {
        for l in layers {
            if let moe = configuration.experts(inLayer: l) {
                MixtureOfExperts.registerExperts(&layout, "transformer.h.\(l).mlp", channels: configuration.embedding, configuration: moe,
                                                 bias: configuration.bias, parts: parts * expertParts)
            }
        }
    }

    /// Drops the micro-batch a forward-only pass (evaluation) left in `slot`.
    public func release(slot index: Int) {
        slots[index].holdsActivations = false
        slots[index].awaitingWeights = false
    }

    /// Draws the whole model from `seed` as one rank would and keeps this stage's tensors, so any
    /// pipeline starts from the same model as one rank.
    public func initialize(seed: UInt64) {
        GPTStage.initialize(parameters, configuration, parallel: parallel, exchange: exchange, seed: seed)
    }

    /// `parameters` (one or more stages' tensors, this tensor or expert rank's shards) drawn as one rank
    /// draws the whole model.
    public static func initialize(_ parameters: ParameterSet, _ configuration: GPTConfiguration, parallel: TensorParallelism?,
                                  exchange: ExpertExchange? = nil, seed: UInt64) {
        let full = GPT(configuration)
        full.initialize(seed: seed)
        sharding(parameters, configuration, parallel: parallel, exchange: exchange)
            .scatter(whole: full.parameters.values.base, layout: full.parameters, into: parameters.values.base)
    }

    /// How stage tensors in `parameters` relate to the whole tensors (GPT's tensor-parallel sharding, or
    /// its expert sharding under expert parallelism).
    public static func sharding(_ parameters: ParameterSet, _ configuration: GPTConfiguration, parallel: TensorParallelism?,
                                exchange: ExpertExchange? = nil) -> ParameterSharding {
        if let exchange, exchange.size > 1 {
            return GPT.expertSharding(parameters, configuration: configuration, rank: exchange.rank, size: exchange.size)
        }
        return GPT.sharding(parameters, configuration: configuration, rank: parallel?.rank ?? 0, size: parallel?.size ?? 1)
    }

    /// The mixture of block `layer` in every slot (its statistics are per slot); empty for a dense block
    /// or one on another stage.
    public func mixtures(ofLayer layer: Int) -> [MixtureOfExperts] {
        guard layers.contains(layer) else { return [] }
        return slots.compactMap { $0.blocks[layer - layers.lowerBound].experts }
    }

    /// The auxiliary losses of the mixtures in `slot`'s last forward (already times α).
    public func auxiliaryLoss(slot index: Int) -> Float { slots[index].blocks.reduce(0) { $0 + ($1.experts?.auxiliaryLoss ?? 0) } }

    /// Slots holding a micro-batch's activations right now.
    public var liveSlots: Int { slots.filter(\.holdsActivations).count }

    /// With sequence parallelism, the first of the batch's rows this rank holds.
    func firstRow(rows: Int) -> Int {
        guard let parallel, parallel.sequenceParallel else { return 0 }
        return parallel.rank * parallel.localRows(rows)
    }

    func prepare(_ slot: Slot, batch B: Int, time T: Int) {
        precondition(T >= 1 && T <= configuration.blockSize, "sequence length \(T) outside 1...\(configuration.blockSize)")
        guard slot.batch != B || slot.time != T else { return }
        slot.batch = B; slot.time = T
        let rows = B * T, c = configuration.embedding, local = parallel?.localRows(rows) ?? rows, v = vocabulary.owned
        precondition(local * (parallel?.size ?? 1) == rows || parallel?.sequenceParallel != true,
                     "sequence parallelism needs batch x time (\(rows)) divisible by the tensor-parallel size")
        slot.residual = (0...layers.count).map { _ in Tensor(zeros: [local, c]) }
        slot.dResidual = (0..<2).map { _ in Tensor(zeros: [local, c]) }
        if isLast {
            slot.normOut = Tensor(zeros: [local, c]); slot.dNormOut = Tensor(zeros: [local, c])
            slot.logits = Tensor(zeros: [rows, v]); slot.dLogits = Tensor(zeros: [rows, v])
            if parallel?.sequenceParallel == true { slot.normGathered = Tensor(zeros: [rows, c]) }
        }
    }

    /// Adds the position embedding to this rank's `count` rows of the residual stream, which start at
    /// row `firstRow` of the [B, T] batch.
    func addPositions(into x: UnsafeMutablePointer<Float>, count: Int, firstRow: Int, time T: Int) {
        let c = configuration.embedding, wpe = parameters["transformer.wpe.weight"].value.data
        for i in 0..<count { add(x + i * c, wpe + ((firstRow + i) % T) * c, into: x + i * c, count: c) }
    }

    /// Forward of one micro-batch in `slot`: from `tokens` on the first stage, else from the previous
    /// stage's activation `input` (this rank's rows, [B·T, C] or 1/tp of them with sequence parallelism). Returns the activation for the next stage, or nil on the last
    /// stage, whose mean loss over `targets` goes to `loss`.
    public func forward(slot index: Int, tokens: [Int32]? = nil, input: UnsafePointer<Float>? = nil, targets: [Int32]? = nil,
                        batch B: Int, time T: Int, loss: inout Float) throws -> UnsafePointer<Float>? {
        let slot = slots[index]
        precondition(!slot.holdsActivations, "stage slot \(index) still holds a micro-batch")
        prepare(slot, batch: B, time: T)
        let rows = B * T, c = configuration.embedding, local = slot.residual[0].shape[0]
        if isFirst {
            let wte = parameters[GPTStage.tiedEmbedding]
            guard let tokens, tokens.count == rows else { preconditionFailure("the first stage needs \(rows) tokens") }
            slot.tokens = tokens
            if let parallel {
                let partial = workspace.floats(.tensorParallelPartial, rows * c)
                vocabParallelEmbeddingForward(wte.value.data, ids: tokens, dim: c, first: vocabulary.first, localRows: vocabulary.owned, into: partial)
                slot.residual[0].data.update(from: try parallel.reduceRows(partial, rows: rows, width: c), count: local * c)
            } else {
                embeddingForward(wte.value.data, ids: tokens, count: rows, dim: c, vocabulary: configuration.vocabularySize, into: slot.residual[0].data)
            }
            addPositions(into: slot.residual[0].data, count: local, firstRow: firstRow(rows: rows), time: T)
        } else {
            guard let input else { preconditionFailure("a stage after the first needs its input activation") }
            slot.residual[0].data.update(from: input, count: local * c)
        }
        for (i, block) in slot.blocks.enumerated() {
            try block.forward(slot.residual[i].data, batch: B, time: T, into: slot.residual[i + 1].data)
        }
        slot.holdsActivations = true
        guard isLast else { return UnsafePointer(slot.residual[layers.count].data) }
        guard let targets, targets.count == rows else { preconditionFailure("the last stage needs \(rows) targets") }
        let wte = parameters[GPTStage.tiedEmbedding]
        slot.finalNorm!.forward(slot.residual[layers.count].data, rows: local, into: slot.normOut.data)
        let headInput = try parallel?.gatherRows(slot.normOut.data, rows: rows, width: c, full: slot.normGathered.data) ?? UnsafePointer(slot.normOut.data)
        gemm(.none, .transposed, m: rows, n: vocabulary.owned, k: c, a: headInput, b: wte.value.data, c: slot.logits.data)
        if let parallel {
            loss = try slot.parallelHead.forward(logits: slot.logits.data, targets: targets, first: vocabulary.first, classes: vocabulary.owned,
                                                 communicator: parallel.communicator)
        } else {
            loss = slot.head.forward(logits: slot.logits.data, targets: targets, classes: configuration.vocabularySize)
        }
        return nil
    }

    /// Backward of the micro-batch in `slot`: from the next stage's gradient `outputGradient` (or, on the
    /// last stage, from the loss scaled by `lossScale`). Accumulates parameter gradients; returns the
    /// gradient of the stage's input for the previous stage (nil on the first stage), valid until the
    /// slot's next backward. Frees the slot.
    public func backward(slot index: Int, outputGradient: UnsafePointer<Float>? = nil, lossScale: Float = 1) throws -> UnsafePointer<Float>? {
        try backwardPasses(slots[index], outputGradient: outputGradient, lossScale: lossScale, split: false)
    }

    /// The input pass of a split backward (a zero-bubble schedule's I): what `backward` returns, without
    /// the weight gradients, which `backwardWeight` adds later. The slot stays taken until then.
    public func backwardInput(slot index: Int, outputGradient: UnsafePointer<Float>? = nil, lossScale: Float = 1) throws -> UnsafePointer<Float>? {
        precondition(parallel == nil, "a split backward is not available with tensor parallelism")
        return try backwardPasses(slots[index], outputGradient: outputGradient, lossScale: lossScale, split: true)
    }

    /// The weight pass (W): every weight gradient of the micro-batch whose input pass ran; frees the slot.
    public func backwardWeight(slot index: Int) throws {
        let slot = slots[index]
        precondition(slot.awaitingWeights, "stage slot \(index) has no input pass waiting for its weight pass")
        let B = slot.batch, T = slot.time, rows = B * T, c = configuration.embedding, n = layers.count
        if isLast {
            gemm(.transposed, .none, m: configuration.vocabularySize, n: c, k: rows, a: slot.dLogits.data, b: slot.normOut.data, beta: 1,
                 c: parameters[GPTStage.tiedEmbedding].gradient.data)
            slot.finalNorm!.weightBackward(slot.residual[n].data, dy: slot.dNormOut.data, rows: rows)
        }
        for l in stride(from: n - 1, through: 0, by: -1) {
            slot.blocks[l].weightBackward(slot.residual[l].data, saved: slot.saved[l], batch: B, time: T)
        }
        if isFirst { try embeddingWeightBackward(slot, dInput: slot.dResidual[slot.inputGradientIndex].data) }
        slot.awaitingWeights = false
        slot.holdsActivations = false
    }

    func backwardPasses(_ slot: Slot, outputGradient: UnsafePointer<Float>?, lossScale: Float, split: Bool) throws -> UnsafePointer<Float>? {
        precondition(slot.holdsActivations && !slot.awaitingWeights, "stage slot holds no micro-batch waiting for backward")
        let B = slot.batch, T = slot.time, rows = B * T, c = configuration.embedding, n = layers.count, local = slot.residual[0].shape[0]
        if split && slot.saved.count != n { slot.saved = (0..<n).map { _ in BlockWeightInputs() } }
        var current = 0
        slot.dResidual[current].fill(0)
        if isLast {
            let wte = parameters[GPTStage.tiedEmbedding], v = vocabulary.owned
            slot.dLogits.fill(0)
            if parallel != nil { slot.parallelHead.backward(lossScale: lossScale, into: slot.dLogits.data) }
            else { slot.head.backward(lossScale: lossScale, into: slot.dLogits.data) }
            if !split {
                let headInput = parallel?.sequenceParallel == true ? slot.normGathered : slot.normOut
                gemm(.transposed, .none, m: v, n: c, k: rows, a: slot.dLogits.data, b: headInput.data, beta: 1, c: wte.gradient.data)
            }
            if let parallel {
                // Each rank's vocabulary rows give a partial input gradient of the head: summed (or reduce-scattered).
                let partial = workspace.floats(.tensorParallelPartial, rows * c)
                gemm(.none, .none, m: rows, n: c, k: v, a: slot.dLogits.data, b: wte.value.data, beta: 0, c: partial)
                slot.dNormOut.data.update(from: try parallel.reduceRows(partial, rows: rows, width: c), count: local * c)
            } else {
                gemm(.none, .none, m: rows, n: c, k: v, a: slot.dLogits.data, b: wte.value.data, beta: 0, c: slot.dNormOut.data)
            }
            slot.finalNorm!.backward(slot.residual[n].data, dy: slot.dNormOut.data, rows: local, dx: slot.dResidual[current].data, weights: !split)
        } else {
            guard let outputGradient else { preconditionFailure("a stage before the last needs the next stage's gradient") }
            slot.dResidual[current].data.update(from: outputGradient, count: local * c)
        }
        for l in stride(from: n - 1, through: 0, by: -1) {
            let next = 1 - current
            slot.dResidual[next].fill(0)
            try slot.blocks[l].backward(slot.residual[l].data, dy: slot.dResidual[current].data, batch: B, time: T, dx: slot.dResidual[next].data,
                                        deferring: split ? slot.saved[l] : nil, lossScale: lossScale)
            current = next
        }
        let dInput = slot.dResidual[current].data
        if split {
            slot.awaitingWeights = true
            slot.inputGradientIndex = current
        } else {
            if isFirst { try embeddingWeightBackward(slot, dInput: dInput) }
            slot.holdsActivations = false
        }
        return isFirst ? nil : UnsafePointer(dInput)
    }

    /// Token and position embedding gradients from the gradient of the first block's input.
    /// Under tensor parallelism every rank's vocabulary rows need the gradient of all rows (gathered
    /// under sequence parallelism); the position embedding's is this rank's rows' share.
    func embeddingWeightBackward(_ slot: Slot, dInput: UnsafePointer<Float>) throws {
        let T = slot.time, rows = slot.batch * T, c = configuration.embedding, local = slot.residual[0].shape[0]
        let dwte = parameters[GPTStage.tiedEmbedding].gradient.data
        if let parallel {
            let all = try parallel.gatherRows(dInput, rows: rows, width: c, full: workspace.floats(.tensorParallelPartial, rows * c))
            vocabParallelEmbeddingBackward(all, ids: slot.tokens, dim: c, first: vocabulary.first, localRows: vocabulary.owned, accumulatingInto: dwte)
        } else {
            embeddingBackward(dInput, ids: slot.tokens, count: rows, dim: c, accumulatingInto: dwte)
        }
        let dwpe = parameters["transformer.wpe.weight"].gradient.data, first = firstRow(rows: rows)
        for i in 0..<local { add(dwpe + ((first + i) % T) * c, dInput + i * c, into: dwpe + ((first + i) % T) * c, count: c) }
    }

    /// The token embedding, which the first and the last stage both hold (lookup and tied head).
    public static let tiedEmbedding = "transformer.wte.weight"
}
