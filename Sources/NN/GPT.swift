import Tensors

public struct GPTConfiguration: Codable, Sendable, Equatable {
    public var vocabularySize: Int
    public var blockSize: Int
    public var layers: Int
    public var heads: Int
    public var embedding: Int
    public var bias: Bool
    /// The MLP's GELU: exact (nanoGPT's nn.GELU()) by default, or GPT-2's tanh approximation.
    public var gelu: GELUForm
    /// Mixture-of-experts MLPs in some blocks (nil: all dense).
    public var experts: MoEConfiguration?
    public init(vocabularySize: Int, blockSize: Int, layers: Int, heads: Int, embedding: Int, bias: Bool = false, gelu: GELUForm = .exact,
                experts: MoEConfiguration? = nil) {
        self.vocabularySize = vocabularySize; self.blockSize = blockSize; self.layers = layers
        self.heads = heads; self.embedding = embedding; self.bias = bias; self.gelu = gelu; self.experts = experts
    }

    /// The mixture for block `layer`, when it has one.
    public func experts(inLayer layer: Int) -> MoEConfiguration? {
        experts.flatMap { $0.isExpertLayer(layer) ? $0 : nil }
    }
}

extension GPTConfiguration {
    /// Model FLOPs of one forward and backward over `batch` sequences of `time` tokens: 6 x (matmul
    /// parameters) x tokens for the linear layers and the tied head, plus the attention's scores and
    /// mixing, 4 B T^2 C per layer forward and twice that backward (the causal half computed whole).
    /// A mixture-of-experts MLP counts top_k experts per token (its active parameters) and its router.
    public func trainingFLOPs(batch: Int, time: Int) -> Double {
        let c = Double(embedding), t = Double(time), b = Double(batch), l = Double(layers)
        var mlp = 0.0
        for layer in 0..<layers {
            if let moe = experts(inLayer: layer) { mlp += Double(moe.topK) * 8 * c * c + Double(moe.experts) * c } else { mlp += 8 * c * c }
        }
        return 6 * (l * 4 * c * c + mlp + Double(vocabularySize) * c) * b * t + l * 3 * 4 * b * t * t * c
    }
}

extension GPTConfiguration {
    /// Activation bytes per transformer layer from Korthikanti et al. 2022 (16-bit activations, with
    /// dropout masks): sbh(34 + 5as/h) without model parallelism, sbh(10 + 24/t + 5as/(ht)) with tensor
    /// parallelism t, and sbh/t (34 + 5as/h) with sequence parallelism too.
    public func korthikantiActivationBytes(batch: Int, time: Int, tensorParallel t: Int, sequenceParallel: Bool) -> Double {
        let s = Double(time), b = Double(batch), h = Double(embedding), a = Double(heads), tp = Double(t)
        if t == 1 { return s * b * h * (34 + 5 * a * s / h) }
        if sequenceParallel { return s * b * h / tp * (34 + 5 * a * s / h) }
        return s * b * h * (10 + 24 / tp + 5 * a * s / (h * tp))
    }
}

extension GPTConfiguration {
    /// Bytes block `layer` keeps from forward to backward in this implementation (fp32), the tensors
    /// TransformerBlock.activationBytes counts after a forward: the residual x1, the GELU input (its
    /// output and the LayerNorm outputs are recomputed), QKV, the heads' output, the attention
    /// probabilities (or, where the fused kernels recompute them, their rows' softmax statistics), and
    /// each LayerNorm's mean and 1/std; a mixture keeps its LayerNorm output, its router probabilities and
    /// its experts' rows, hidden units and outputs for top_k choices per token (dropless).
    public func keptActivationBytes(layer: Int, batch: Int, time: Int, tensorParallel t: Int = 1, sequenceParallel: Bool = false) -> Int {
        let n = batch * time, c = embedding, local = sequenceParallel ? n / t : n
        var floats = local * c + 4 * local + n * 3 * c / t + n * c / t
            + attentionProbabilityCount(batch: batch, time: time, channels: c / t, heads: heads / t)
        if let moe = experts(inLayer: layer) { floats += local * c + n * moe.experts + moe.topK * n * 6 * c }
        else { floats += n * 4 * c / t }
        return 4 * floats
    }
}

/// GPT as in nanoGPT: token + position embeddings, `layers` pre-LN blocks, final LayerNorm, and an LM head
/// tied to the token embedding. Parameter names follow nanoGPT's state_dict. Weights N(0, 0.02), residual
/// projections (c_proj) N(0, 0.02 / sqrt(2 * layers)), LayerNorm weight 1.
///
/// With `parallel` (Megatron-LM tensor parallelism) this rank holds a shard of every block (see
/// TransformerBlock) and the vocabulary rows [first, first + vocabulary.rows) of the tied embedding/head
/// (the vocabulary padded to a multiple of the group size); the logits stay split by vocabulary
/// (vocabulary-parallel cross-entropy). `sharding` maps the shard to the full model.
public final class GPT: Model, ParameterUnits {
    public let configuration: GPTConfiguration
    /// ZeRO-3's engine, when parameters are sharded (unit 0 the embeddings, 1...layers the blocks, then
    /// the final LayerNorm).
    public weak var unitHooks: ParameterUnitHooks?
    public let parameters: ParameterSet
    public let parallel: TensorParallelism?
    public let sharding: ParameterSharding
    let tokenEmbedding: Parameter, positionEmbedding: Parameter
    let blocks: [TransformerBlock]
    let finalNorm: LayerNormLayer
    let head = CrossEntropyHead()
    let parallelHead = VocabParallelCrossEntropy()
    /// Token rows of the embedding on this rank (the whole vocabulary without tensor parallelism).
    public let vocabulary: VocabularyShard
    var firstToken: Int { vocabulary.first }
    /// Rows of this rank's embedding that are real tokens (the rest is padding).
    var ownedTokens: Int { vocabulary.owned }
    var batchSize = 0, time = 0
    var tokens: [Int32] = []
    /// residual[l] is the input of block l; residual[layers] feeds the final LayerNorm (this rank's rows).
    var residual: [Tensor] = []
    var normOut = Tensor(zeros: [0]), logits = Tensor(zeros: [0])
    var dResidual: [Tensor] = [], dNormOut = Tensor(zeros: [0]), dLogits = Tensor(zeros: [0])
    /// Tensor parallelism: the final LayerNorm's output over all rows (gathered under sequence parallelism)
    /// and the partial sums of the embedding lookup and of the head's input gradient.
    var normGathered = Tensor(zeros: [0]), partialRows = Tensor(zeros: [0])

    /// `exchange` splits the experts of mixture-of-experts blocks over an expert group (not together
    /// with tensor parallelism).
    public init(_ configuration: GPTConfiguration, parallel: TensorParallelism? = nil, exchange: ExpertExchange? = nil) {
        self.configuration = configuration
        let c = configuration.embedding, parts = parallel?.size ?? 1, expertParts = exchange?.size ?? 1
        precondition(c % configuration.heads == 0, "n_embd \(c) not divisible by n_head \(configuration.heads)")
        precondition(configuration.heads % parts == 0, "n_head \(configuration.heads) not divisible by the tensor-parallel size \(parts)")
        precondition(configuration.experts == nil || parts == 1 || expertParts == 1, "experts split over tensor-parallel and expert groups at once")
        self.parallel = parts > 1 ? parallel : nil
        vocabulary = VocabularyShard(vocabulary: configuration.vocabularySize, rank: parts > 1 ? parallel!.rank : 0, size: parts)
        var layout = ParameterSet.Layout()
        // Experts first: backward finishes the buffer from its end, and the experts' gradients are the
        // last a mixture-of-experts model completes (gradientsReady(0)); under expert parallelism they
        // are also the part averaged over another group.
        for l in 0..<configuration.layers {
            if let moe = configuration.experts(inLayer: l) {
                MixtureOfExperts.registerExperts(&layout, "transformer.h.\(l).mlp", channels: c, configuration: moe, bias: configuration.bias,
                                                 parts: expertParts * parts)
            }
        }
        expertCount = layout.totalCount
        layout.add("transformer.wte.weight", [vocabulary.rows, c])
        layout.add("transformer.wpe.weight", [configuration.blockSize, c])
        for l in 0..<configuration.layers {
            TransformerBlock.register(&layout, "transformer.h.\(l)", channels: c, bias: configuration.bias, parts: parts,
                                      experts: configuration.experts(inLayer: l))
        }
        LayerNormLayer.register(&layout, "transformer.ln_f", features: c, bias: configuration.bias)
        let parameters = ParameterSet(layout: layout)
        self.parameters = parameters
        sharding = expertParts > 1
            ? GPT.expertSharding(parameters, configuration: configuration, rank: exchange!.rank, size: expertParts)
            : GPT.sharding(parameters, configuration: configuration, rank: parallel?.rank ?? 0, size: parts)
        tokenEmbedding = parameters["transformer.wte.weight"]
        positionEmbedding = parameters["transformer.wpe.weight"]
        let workspace = Workspace()
        blocks = (0..<configuration.layers).map {
            TransformerBlock(parameters, "transformer.h.\($0)", heads: configuration.heads, hasBias: configuration.bias,
                             workspace: workspace, parallel: parts > 1 ? parallel : nil, gelu: configuration.gelu,
                             experts: configuration.experts(inLayer: $0), exchange: exchange)
        }
        finalNorm = LayerNormLayer(parameters, "transformer.ln_f", hasBias: configuration.bias)
    }

    /// Floats at the start of the buffer that are expert tensors (0 for a dense model).
    public let expertCount: Int
    /// The model's mixtures, in block order.
    public var mixtures: [MixtureOfExperts] { blocks.compactMap(\.experts) }
    /// Whether every rank of a group must run each forward with the others (ZeRO-3 gathers, expert
    /// parallelism's all-to-alls): evaluation then gives every rank as many forwards.
    public var forwardIsCollective: Bool { unitHooks != nil || mixtures.contains { $0.exchange != nil } }
    /// The sum of the mixtures' auxiliary losses in the last forward.
    public var auxiliaryLoss: Float { mixtures.reduce(0) { $0 + $1.auxiliaryLoss } }

    /// Expert parallelism: the stacked expert tensors are split by expert (rows of dim 0) across the
    /// expert group; everything else is replicated.
    static func expertSharding(_ parameters: ParameterSet, configuration: GPTConfiguration, rank: Int, size: Int) -> ParameterSharding {
        ParameterSharding(rank: rank, size: size, parameters: parameters) { p in
            let stacked = p.name.contains(".mlp.experts.")
            var full = p.shape
            if stacked { full[0] *= size }
            return (stacked ? .rows(blocks: 1) : .replicated, full, false)
        }
    }

    /// Embeddings (wte, wpe), each block, the final LayerNorm: the layout's order. A mixture-of-experts
    /// block's unit holds its experts' tensors too (at the start of the buffer, `expertCount` floats).
    public var parameterUnits: [[Range<Int>]] {
        let starts = [expertCount] + blocks.map { $0.ln1.weight.offset } + [finalNorm.weight.offset]
        let dense = (0..<starts.count).map { starts[$0]..<($0 + 1 < starts.count ? starts[$0 + 1] : parameters.count) }
        return dense.enumerated().map { u, range in
            guard u >= 1 && u <= blocks.count, let experts = blocks[u - 1].experts else { return [range] }
            return [range, experts.parameterRange]
        }
    }

    /// The tied embedding/head and the final LayerNorm open backward and close forward.
    public var rootUnits: Set<Int> { [0, configuration.layers + 1] }

    /// Which tensors are split and how (see ShardKind); with one rank everything is "replicated".
    public static func sharding(_ parameters: ParameterSet, configuration: GPTConfiguration, rank: Int, size: Int) -> ParameterSharding {
        guard size > 1 else { return .unsharded(parameters) }
        return ParameterSharding(rank: rank, size: size, parameters: parameters) { p in
            var kind = ShardKind.replicated
            // A mixture's stacked experts are split by expert (MixtureOfExperts' `split`).
            if p.name.contains(".mlp.experts.") { var full = p.shape; full[0] *= size; return (.rows(blocks: 1), full, false) }
            if p.name == "transformer.wte.weight" || p.name.contains(".mlp.c_fc.") { kind = .rows(blocks: 1) }
            else if p.name.contains(".attn.c_attn.") { kind = .rows(blocks: 3) }
            else if p.name.hasSuffix(".c_proj.weight") { kind = .columns }
            var full = p.shape
            switch kind {
            case .replicated: break
            case .rows: full[0] = p.name == "transformer.wte.weight" ? configuration.vocabularySize : full[0] * size
            case .columns: full[1] *= size
            }
            return (kind, full, p.name.contains(".ln_") || p.name == "transformer.wpe.weight")
        }
    }

    /// Tensor parallelism draws the full model and keeps this rank's shard (Megatron's CPU
    /// initialization), so every tensor-parallel size starts from the same model as one rank.
    public func initialize(seed: UInt64) {
        guard sharding.size > 1 else { return GPT.initialize(parameters, layers: configuration.layers, seed: seed) }
        var layout = ParameterSet.Layout()
        for (name, shape, _) in sharding.fullParameters { layout.add(name, shape) }
        let full = ParameterSet(layout: layout)
        GPT.initialize(full, layers: configuration.layers, seed: seed)
        sharding.scatter(full: full.values.base, into: parameters.values.base)
    }

    /// Without tensor parallelism (the only layout ZeRO-3 takes). Under expert parallelism the whole
    /// model is drawn first (as `initialize(seed:)` does), so every value is final at once.
    public func initialize(seed: UInt64, written: (Int) -> Void) {
        precondition(parallel == nil, "unit-by-unit initialization is for the model without tensor parallelism")
        guard sharding.size == 1 else { initialize(seed: seed); return written(parameters.count) }
        GPT.initialize(parameters, layers: configuration.layers, seed: seed, written: written)
    }

    static func initialize(_ parameters: ParameterSet, layers: Int, seed: UInt64, written: (Int) -> Void = { _ in }) {
        var rng = SeededRandom(seed: seed)
        let residualStd = 0.02 / Float(2 * layers).squareRoot()
        for p in parameters.parameters {
            if p.name.hasSuffix("c_proj.weight") {
                p.value.fillNormal(std: residualStd, using: &rng)
            } else if p.name.contains(".ln_") {
                p.value.fill(p.name.hasSuffix(".weight") ? 1 : 0)
            } else if p.name.hasSuffix(".bias") {
                p.value.fill(0)
            } else {
                p.value.fillNormal(std: 0.02, using: &rng)
            }
            written(p.offset + p.value.count)
        }
    }

    func prepare(batch B: Int, time T: Int) {
        precondition(T >= 1 && T <= configuration.blockSize, "sequence length \(T) outside 1...\(configuration.blockSize)")
        if B == batchSize && T == time { return }
        batchSize = B; time = T
        let rows = B * T, c = configuration.embedding, v = ownedTokens
        if let parallel {
            precondition(!parallel.sequenceParallel || rows % parallel.size == 0,
                         "sequence parallelism needs batch x time (\(rows)) divisible by the tensor-parallel size \(parallel.size)")
        }
        let local = parallel?.localRows(rows) ?? rows
        residual = (0...configuration.layers).map { _ in Tensor(zeros: [local, c]) }
        dResidual = (0..<2).map { _ in Tensor(zeros: [local, c]) }
        normOut = Tensor(zeros: [local, c]); dNormOut = Tensor(zeros: [local, c])
        logits = Tensor(zeros: [rows, v]); dLogits = Tensor(zeros: [rows, v])
        if parallel != nil { normGathered = Tensor(zeros: [rows, c]); partialRows = Tensor(zeros: [rows, c]) }
    }

    /// Logits [B*T, vocab] for token windows; kept until the next call. Under tensor parallelism, this
    /// rank's vocabulary columns [B*T, ownedTokens] (collective: every rank of the group calls it).
    public func logits(tokens: [Int32], batch B: Int, time T: Int) throws -> Tensor {
        prepare(batch: B, time: T)
        self.tokens = tokens
        let c = configuration.embedding, rows = B * T
        var firstRow = 0
        try unitHooks?.willUse(unit: 0, backward: false)
        if let parallel {
            vocabParallelEmbeddingForward(tokenEmbedding.value.data, ids: tokens, dim: c, first: firstToken, localRows: ownedTokens,
                                          into: partialRows.data)
            let local = parallel.localRows(rows)
            residual[0].data.update(from: try parallel.reduceRows(partialRows.data, rows: rows, width: c), count: local * c)
            if parallel.sequenceParallel { firstRow = parallel.rank * local }
        } else {
            OperationProfile.measure("embedding forward") {
                embeddingForward(tokenEmbedding.value.data, ids: tokens, count: rows, dim: c,
                                 vocabulary: configuration.vocabularySize, into: residual[0].data)
            }
        }
        OperationProfile.measure("embedding forward") { addPositions(into: residual[0].data, firstRow: firstRow, time: T) }
        for (l, block) in blocks.enumerated() {
            try unitHooks?.willUse(unit: l + 1, backward: false)
            try block.forward(residual[l].data, batch: B, time: T, into: residual[l + 1].data)
            unitHooks?.doneUsing(unit: l + 1, backward: false)
        }
        try unitHooks?.willUse(unit: configuration.layers + 1, backward: false)
        finalNorm.forward(residual[configuration.layers].data, rows: residual[0].shape[0], into: normOut.data)
        let headInput = try parallel?.gatherRows(normOut.data, rows: rows, width: c, full: normGathered.data) ?? UnsafePointer(normOut.data)
        OperationProfile.measure("lm head forward", flops: 2 * Double(rows * ownedTokens * c)) {
            gemm(.none, .transposed, m: rows, n: ownedTokens, k: c, a: headInput, b: tokenEmbedding.value.data, c: logits.data)
        }
        unitHooks?.doneUsing(unit: configuration.layers + 1, backward: false)
        unitHooks?.doneUsing(unit: 0, backward: false)
        return logits
    }

    /// Adds the position embedding to this rank's rows of the residual stream, which start at global row
    /// `firstRow` of the [B, T] batch (row i is position i mod T).
    func addPositions(into x: UnsafeMutablePointer<Float>, firstRow: Int, time T: Int) {
        let c = configuration.embedding
        for i in 0..<residual[0].shape[0] {
            let row = x + i * c
            add(row, positionEmbedding.value.data + ((firstRow + i) % T) * c, into: row, count: c)
        }
    }

    public func forward(_ batch: TokenBatch) throws -> Float {
        let out = try logits(tokens: batch.tokens, batch: batch.batchSize, time: batch.time)
        if let parallel {
            return try parallelHead.forward(logits: out.data, targets: batch.targets, first: firstToken, classes: ownedTokens,
                                            communicator: parallel.communicator)
        }
        return OperationProfile.measure("cross-entropy forward") {
            head.forward(logits: out.data, targets: batch.targets, classes: configuration.vocabularySize)
        }
    }

    /// As backward reports them: the final norm, then per block from the last its MLP half (from ln_2
    /// on) and the whole block (from ln_1 on), then everything (the tied embedding is final last).
    public var gradientReadyOffsets: [Int] {
        var offsets = [finalNorm.weight.offset]
        for block in blocks.reversed() {
            if block.reportsMLPHalf { offsets.append(block.ln2.weight.offset) }
            offsets.append(block.ln1.weight.offset)
        }
        return offsets + [0]
    }

    public func backward(lossScale: Float, gradientsReady: (Int) -> Void) throws {
        let B = batchSize, T = time, rows = B * T, c = configuration.embedding, v = ownedTokens
        let local = residual[0].shape[0]
        try unitHooks?.willUse(unit: configuration.layers + 1, backward: true)
        try unitHooks?.willUse(unit: 0, backward: true)
        dLogits.fill(0)
        if parallel != nil { parallelHead.backward(lossScale: lossScale, into: dLogits.data) }
        else { OperationProfile.measure("cross-entropy backward") { head.backward(lossScale: lossScale, into: dLogits.data) } }
        let headInput = parallel?.sequenceParallel == true ? normGathered : normOut
        // Tied head: logits = normOut wte^T, so dwte += dlogits^T normOut and dNormOut = dlogits wte.
        OperationProfile.measure("lm head backward dW", flops: 2 * Double(rows * v * c)) {
            gemm(.transposed, .none, m: v, n: c, k: rows, a: dLogits.data, b: headInput.data, beta: 1,
                 c: tokenEmbedding.gradient.data)
        }
        if let parallel {
            gemm(.none, .none, m: rows, n: c, k: v, a: dLogits.data, b: tokenEmbedding.value.data, beta: 0, c: partialRows.data)
            dNormOut.data.update(from: try parallel.reduceRows(partialRows.data, rows: rows, width: c), count: local * c)
        } else {
            OperationProfile.measure("lm head backward dx", flops: 2 * Double(rows * v * c)) {
                gemm(.none, .none, m: rows, n: c, k: v, a: dLogits.data, b: tokenEmbedding.value.data, beta: 0, c: dNormOut.data)
            }
        }
        var current = 0
        dResidual[current].fill(0)
        finalNorm.backward(residual[configuration.layers].data, dy: dNormOut.data, rows: local, dx: dResidual[current].data)
        unitHooks?.doneUsing(unit: configuration.layers + 1, backward: true)
        gradientsReady(finalNorm.weight.offset)
        for l in stride(from: configuration.layers - 1, through: 0, by: -1) {
            let next = 1 - current
            dResidual[next].fill(0)
            try unitHooks?.willUse(unit: l + 1, backward: true)
            try blocks[l].backward(residual[l].data, dy: dResidual[current].data, batch: B, time: T, dx: dResidual[next].data,
                                   lossScale: lossScale, mlpDone: { gradientsReady(blocks[l].ln2.weight.offset) })
            unitHooks?.doneUsing(unit: l + 1, backward: true)
            gradientsReady(blocks[l].ln1.weight.offset)
            current = next
        }
        let dEmbedded = dResidual[current].data
        var firstRow = 0
        if let parallel {
            // g backward for the vocabulary-parallel lookup: every rank needs the gradient of all rows.
            let all = try parallel.gatherRows(dEmbedded, rows: rows, width: c, full: partialRows.data)
            vocabParallelEmbeddingBackward(all, ids: tokens, dim: c, first: firstToken, localRows: ownedTokens,
                                           accumulatingInto: tokenEmbedding.gradient.data)
            if parallel.sequenceParallel { firstRow = parallel.rank * local }
        } else {
            OperationProfile.measure("embedding backward") {
                embeddingBackward(dEmbedded, ids: tokens, count: rows, dim: c, accumulatingInto: tokenEmbedding.gradient.data)
            }
        }
        for i in 0..<local {
            let position = positionEmbedding.gradient.data + ((firstRow + i) % T) * c
            add(position, dEmbedded + i * c, into: position, count: c)
        }
        unitHooks?.doneUsing(unit: 0, backward: true)
        gradientsReady(0)
    }

    /// Bytes kept from forward to backward per block on this rank (after a forward).
    public var activationBytesPerLayer: Int { blocks.isEmpty ? 0 : keptActivationBytes(layer: 0) }

    /// Bytes block `layer` keeps from forward to backward (after a forward).
    public func keptActivationBytes(layer: Int) -> Int { blocks[layer].activationBytes }
}
