import Tensors

public struct GPTConfiguration: Codable, Sendable, Equatable {
    public var vocabularySize: Int
    public var blockSize: Int
    public var layers: Int
    public var heads: Int
    public var embedding: Int
    public var bias: Bool
    public init(vocabularySize: Int, blockSize: Int, layers: Int, heads: Int, embedding: Int, bias: Bool = false) {
        self.vocabularySize = vocabularySize; self.blockSize = blockSize; self.layers = layers
        self.heads = heads; self.embedding = embedding; self.bias = bias
    }
}

extension GPTConfiguration {
    /// Model FLOPs of one forward and backward over `batch` sequences of `time` tokens: 6 x (matmul
    /// parameters) x tokens for the linear layers and the tied head, plus the attention's scores and
    /// mixing, 4 B T^2 C per layer forward and twice that backward (the causal half computed whole).
    public func trainingFLOPs(batch: Int, time: Int) -> Double {
        let c = Double(embedding), t = Double(time), b = Double(batch), l = Double(layers)
        return 6 * (l * 12 * c * c + Double(vocabularySize) * c) * b * t + l * 3 * 4 * b * t * t * c
    }
}

/// GPT as in nanoGPT: token + position embeddings, `layers` pre-LN blocks, final LayerNorm, and an LM head
/// tied to the token embedding. Parameter names follow nanoGPT's state_dict. Weights N(0, 0.02), residual
/// projections (c_proj) N(0, 0.02 / sqrt(2 * layers)), LayerNorm weight 1.
public final class GPT: Model {
    public let configuration: GPTConfiguration
    public let parameters: ParameterSet
    let tokenEmbedding: Parameter, positionEmbedding: Parameter
    let blocks: [TransformerBlock]
    let finalNorm: LayerNormLayer
    let head = CrossEntropyHead()
    var batchSize = 0, time = 0
    var tokens: [Int32] = []
    /// residual[l] is the input of block l; residual[layers] feeds the final LayerNorm.
    var residual: [Tensor] = []
    var normOut = Tensor(zeros: [0]), logits = Tensor(zeros: [0])
    var dResidual: [Tensor] = [], dNormOut = Tensor(zeros: [0]), dLogits = Tensor(zeros: [0])

    public init(_ configuration: GPTConfiguration) {
        self.configuration = configuration
        let c = configuration.embedding
        precondition(c % configuration.heads == 0, "n_embd \(c) not divisible by n_head \(configuration.heads)")
        var layout = ParameterSet.Layout()
        layout.add("transformer.wte.weight", [configuration.vocabularySize, c])
        layout.add("transformer.wpe.weight", [configuration.blockSize, c])
        for l in 0..<configuration.layers {
            TransformerBlock.register(&layout, "transformer.h.\(l)", channels: c, bias: configuration.bias)
        }
        LayerNormLayer.register(&layout, "transformer.ln_f", features: c, bias: configuration.bias)
        let parameters = ParameterSet(layout: layout)
        self.parameters = parameters
        tokenEmbedding = parameters["transformer.wte.weight"]
        positionEmbedding = parameters["transformer.wpe.weight"]
        let workspace = Workspace()
        blocks = (0..<configuration.layers).map {
            TransformerBlock(parameters, "transformer.h.\($0)", heads: configuration.heads, hasBias: configuration.bias,
                             workspace: workspace)
        }
        finalNorm = LayerNormLayer(parameters, "transformer.ln_f", hasBias: configuration.bias)
    }

    public func initialize(seed: UInt64) {
        var rng = SeededRandom(seed: seed)
        let residualStd = 0.02 / Float(2 * configuration.layers).squareRoot()
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
        }
    }

    func prepare(batch B: Int, time T: Int) {
        precondition(T >= 1 && T <= configuration.blockSize, "sequence length \(T) outside 1...\(configuration.blockSize)")
        if B == batchSize && T == time { return }
        batchSize = B; time = T
        let rows = B * T, c = configuration.embedding, v = configuration.vocabularySize
        residual = (0...configuration.layers).map { _ in Tensor(zeros: [rows, c]) }
        dResidual = (0..<2).map { _ in Tensor(zeros: [rows, c]) }
        normOut = Tensor(zeros: [rows, c]); dNormOut = Tensor(zeros: [rows, c])
        logits = Tensor(zeros: [rows, v]); dLogits = Tensor(zeros: [rows, v])
    }

    /// Logits [B*T, vocab] for token windows; kept until the next call.
    public func logits(tokens: [Int32], batch B: Int, time T: Int) -> Tensor {
        prepare(batch: B, time: T)
        self.tokens = tokens
        let c = configuration.embedding, rows = B * T
        embeddingForward(tokenEmbedding.value.data, ids: tokens, count: rows, dim: c,
                         vocabulary: configuration.vocabularySize, into: residual[0].data)
        for b in 0..<B {
            let row = residual[0].data + b * T * c
            add(row, positionEmbedding.value.data, into: row, count: T * c)
        }
        for (l, block) in blocks.enumerated() {
            block.forward(residual[l].data, batch: B, time: T, into: residual[l + 1].data)
        }
        finalNorm.forward(residual[configuration.layers].data, rows: rows, into: normOut.data)
        gemm(.none, .transposed, m: rows, n: configuration.vocabularySize, k: c,
             a: normOut.data, b: tokenEmbedding.value.data, c: logits.data)
        return logits
    }

    public func forward(_ batch: TokenBatch) -> Float {
        let out = logits(tokens: batch.tokens, batch: batch.batchSize, time: batch.time)
        return head.forward(logits: out.data, targets: batch.targets, classes: configuration.vocabularySize)
    }

    public func backward(lossScale: Float, gradientsReady: (Int) -> Void) {
        let B = batchSize, T = time, rows = B * T, c = configuration.embedding, v = configuration.vocabularySize
        dLogits.fill(0); dNormOut.fill(0)
        head.backward(lossScale: lossScale, into: dLogits.data)
        // Tied head: logits = normOut wte^T, so dwte += dlogits^T normOut and dNormOut = dlogits wte.
        gemm(.transposed, .none, m: v, n: c, k: rows, a: dLogits.data, b: normOut.data, beta: 1,
             c: tokenEmbedding.gradient.data)
        gemm(.none, .none, m: rows, n: c, k: v, a: dLogits.data, b: tokenEmbedding.value.data, beta: 0, c: dNormOut.data)
        var current = 0
        dResidual[current].fill(0)
        finalNorm.backward(residual[configuration.layers].data, dy: dNormOut.data, rows: rows, dx: dResidual[current].data)
        gradientsReady(finalNorm.weight.offset)
        for l in stride(from: configuration.layers - 1, through: 0, by: -1) {
            let next = 1 - current
            dResidual[next].fill(0)
            blocks[l].backward(residual[l].data, dy: dResidual[current].data, batch: B, time: T, dx: dResidual[next].data)
            gradientsReady(blocks[l].ln1.weight.offset)
            current = next
        }
        let dEmbedded = dResidual[current].data
        embeddingBackward(dEmbedded, ids: tokens, count: rows, dim: c, accumulatingInto: tokenEmbedding.gradient.data)
        for b in 0..<B {
            let row = dEmbedded + b * T * c
            add(positionEmbedding.gradient.data, row, into: positionEmbedding.gradient.data, count: T * c)
        }
        gradientsReady(0)
    }
}
