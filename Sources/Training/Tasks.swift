import Collectives
import Datasets
import FoundationEssentials
import Glibc
import NN
import Rendezvous
import Tensors

/// A model together with its data: what the Trainer needs to draw batches, step and evaluate.
public protocol TrainingTask: AnyObject {
    var parameters: ParameterSet { get }
    /// Tokens or samples in one micro-batch of this rank.
    var unitsPerMicroBatch: Int { get }
    var unitName: String { get }
    /// Model FLOPs of forward and backward over one micro-batch of this rank (for MFU).
    var flopsPerMicroBatch: Double { get }
    /// How this rank's parameters relate to the full model (identity without tensor parallelism).
    var sharding: ParameterSharding { get }
    func initialize(seed: UInt64)
    /// Forward on the next training micro-batch; returns its mean loss. Throws when a tensor-parallel
    /// collective fails.
    func trainingLoss(iteration: Int, microStep: Int) throws -> Float
    func backward(lossScale: Float, gradientsReady: (Int) -> Void) throws
    /// This rank's share `part` of `parts` of the evaluation at `iteration`: for each figure a sum and a
    /// count, which the data-parallel ranks add up (figure = Σ sum / Σ count), so every rank evaluates
    /// 1/parts of it and none idles. Collective under tensor and pipeline parallelism and ZeRO-3.
    func evaluate(iteration: Int, part: Int, parts: Int) throws -> [EvaluationShare]
    /// The model's parameter units, when it can be fully sharded (ZeRO-3).
    var units: ParameterUnits? { get }
    /// Where backward reports gradients final, in its order (Model.gradientReadyOffsets); [0] when
    /// it reports only the end.
    var gradientReadyOffsets: [Int] { get }
    /// Floats at the start of the parameter buffer that are expert tensors (0 without a mixture).
    var expertCount: Int { get }
}

extension TrainingTask {
    public var units: ParameterUnits? { nil }
    public var gradientReadyOffsets: [Int] { [0] }
    public var expertCount: Int { 0 }
}

/// One figure's share of an evaluation: the figure is the sum over ranks of `sum` over that of `count`.
public struct EvaluationShare: Sendable, Equatable {
    public var name: String
    public var sum: Double
    public var count: Double
    public init(_ name: String, sum: Double, count: Double) { self.name = name; self.sum = sum; self.count = count }
}

/// The eval batches rank `part` of `parts` evaluates: k ≡ part (mod parts). With `evenly` (ZeRO-3 and
/// expert parallelism, where every forward is collective) every rank runs as many forwards: a rank short of one repeats
/// its last batch (or the first overall) and drops the result (nil).
func evaluationBatches(_ total: Int, part: Int, parts: Int, evenly: Bool) -> [Int?] {
    let mine = stride(from: part, to: total, by: parts).map { Optional($0) }
    guard evenly else { return mine }
    let rounds = (total + parts - 1) / parts
    return mine + Array(repeating: nil, count: rounds - mine.count)
}

/// Micro-batch `microStep` of `iteration` for data-parallel rank `rank` of `ranks`: the rank's slice of
/// one global batch of ranks × batch_size windows drawn from (seed, iteration, micro-step) alone. Any
/// data-parallel size thus trains on exactly the batches one rank with ranks × batch_size sequences
/// would (the mean of the ranks' mean losses is the global mean: the slices are equal), and a resumed
/// run draws what the original would have, with nothing to save.
func trainingWindows(_ text: CharText, _ config: TrainConfig, rank: Int, ranks: Int, iteration: Int, microStep: Int) -> TokenBatch {
    var rng = SeededRandom(seed: config.seed ^ 0xBA7C4).derived(UInt64(iteration) << 8 | UInt64(microStep & 0xFF))
    let (x, y) = CharText.sampleBatch(from: text.train, batchSize: config.batchSize * ranks, time: config.blockSize, using: &rng)
    let slice = (rank * config.batchSize * config.blockSize)..<((rank + 1) * config.batchSize * config.blockSize)
    return TokenBatch(tokens: Array(x[slice]), targets: Array(y[slice]), batchSize: config.batchSize, time: config.blockSize)
}

/// nanoGPT's character-level Shakespeare: random windows from the train split, eval on both splits.
public final class GPTTask: TrainingTask {
    public let model: GPT
    public let text: CharText
    let config: TrainConfig
    /// The data-parallel rank and size: the ranks of one tensor-parallel group draw the same batches.
    let rank: Int, ranks: Int

    public init(config: TrainConfig, text: CharText, rank: Int = 0, ranks: Int = 1, parallel: TensorParallelism? = nil,
                exchange: ExpertExchange? = nil) {
        self.config = config
        self.text = text
        self.rank = rank
        self.ranks = ranks
        model = GPT(GPTConfiguration(vocabularySize: text.vocabulary.count, blockSize: config.blockSize,
                                     layers: config.nLayer, heads: config.nHead, embedding: config.nEmbd, bias: config.bias,
                                     gelu: config.gelu, experts: config.experts),
                    parallel: parallel, exchange: exchange)
    }

    public var parameters: ParameterSet { model.parameters }
    public var sharding: ParameterSharding { model.sharding }
    public var unitsPerMicroBatch: Int { config.batchSize * config.blockSize }
    /// This rank's share: tensor parallelism splits the matmuls (not the small LayerNorm/softmax work).
    public var flopsPerMicroBatch: Double {
        model.configuration.trainingFLOPs(batch: config.batchSize, time: config.blockSize) / Double(model.parallel?.size ?? 1)
    }
    public var unitName: String { "tokens" }
    public var units: ParameterUnits? { model.parallel == nil ? model : nil }
    public var expertCount: Int { model.expertCount }
    public var gradientReadyOffsets: [Int] { model.gradientReadyOffsets }
    public func initialize(seed: UInt64) { model.initialize(seed: seed) }

    /// This rank's slice of the global batch (`trainingWindows`).
    public func trainingLoss(iteration: Int, microStep: Int) throws -> Float {
        let batch = trainingWindows(text, config, rank: rank, ranks: ranks, iteration: iteration, microStep: microStep)
        // The objective: cross-entropy plus the mixtures' load-balancing losses (backward adds their gradients).
        return try model.forward(batch) + model.auxiliaryLoss
    }

    public func backward(lossScale: Float, gradientsReady: (Int) -> Void) throws {
        try model.backward(lossScale: lossScale, gradientsReady: gradientsReady)
    }

    /// Mean loss over eval_iters random batches per split, as nanoGPT's estimate_loss; the batches come
    /// from a generator derived from the seed and iteration, so evaluation never shifts the training
    /// stream. Every rank draws all of them and runs forward on its share.
    public func evaluate(iteration: Int, part: Int, parts: Int) throws -> [EvaluationShare] {
        var results: [EvaluationShare] = []
        // Routing figures are the training's: evaluation forwards leave them as they were.
        let statistics = model.mixtures.map(\.statistics)
        defer { for (mixture, kept) in zip(model.mixtures, statistics) { mixture.statistics = kept } }
        for (name, split) in [("train", text.train), ("val", text.validation)] {
            var evalRng = SeededRandom(seed: config.seed).derived(0xE7A1 &+ UInt64(iteration) &* 2 &+ (name == "val" ? 1 : 0))
            let batches = (0..<config.evalIters).map { _ in
                CharText.sampleBatch(from: split, batchSize: config.batchSize, time: config.blockSize, using: &evalRng)
            }
            var total = 0.0, count = 0.0
            for k in evaluationBatches(batches.count, part: part, parts: parts, evenly: model.forwardIsCollective) {
                let (x, y) = batches[k ?? min(part, batches.count - 1)]
                let loss = Double(try model.forward(TokenBatch(tokens: x, targets: y, batchSize: config.batchSize, time: config.blockSize)))
                if k != nil { total += loss; count += 1 }
            }
            results.append(EvaluationShare("\(name) loss", sum: total, count: count))
        }
        return results
    }
}

/// The MLP on MNIST: per-epoch seeded shuffles sharded across ranks (DistributedSampler semantics),
/// held-out loss and accuracy on the last 2,000 images.
public final class MLPTask: TrainingTask {
    public let model: MLP
    let train: MNIST
    /// The whole held-out set as one batch, gathered once.
    let heldOutBatch: ClassificationBatch
    let config: TrainConfig
    let rank: Int, worldSize: Int
    var shardEpoch = -1
    var shard: [Int] = []

    public init(config: TrainConfig, train: MNIST, heldOut: MNIST, rank: Int = 0, worldSize: Int = 1) {
        self.config = config
        self.train = train
        let (features, labels) = heldOut.gather(Array(0..<heldOut.count)[...])
        heldOutBatch = ClassificationBatch(features: features, labels: labels)
        self.rank = rank
        self.worldSize = worldSize
        model = MLP(inputs: train.pixelsPerImage, hidden: config.hidden, classes: 10,
                    activation: config.activation == .relu ? .relu : .gelu)
    }

    public var parameters: ParameterSet { model.parameters }
    public var sharding: ParameterSharding { model.sharding }
    public var unitsPerMicroBatch: Int { config.batchSize }
    /// 6 x parameters x samples (forward 2, backward 4 per weight and sample).
    public var flopsPerMicroBatch: Double { 6 * Double(parameters.count) * Double(config.batchSize) }
    public var unitName: String { "samples" }
    public var units: ParameterUnits? { model }
    public var gradientReadyOffsets: [Int] { model.gradientReadyOffsets }
    /// Micro-batches per epoch on this rank (the last one may be short).
    public var batchesPerEpoch: Int { (train.count / worldSize + config.batchSize - 1) / config.batchSize }

    public func initialize(seed: UInt64) { model.initialize(seed: seed) }

    public func trainingLoss(iteration: Int, microStep: Int) throws -> Float {
        let global = iteration * config.gradAccum + microStep
        let epoch = global / batchesPerEpoch, position = global % batchesPerEpoch
        if epoch != shardEpoch {
            shard = epochShard(count: train.count, epoch: epoch, seed: config.seed, rank: rank, worldSize: worldSize)
            shardEpoch = epoch
        }
        let start = position * config.batchSize
        let indices = shard[start..<min(start + config.batchSize, shard.count)]
        let labels = indices.map { train.labels[$0] }
        return try model.forward(labels: labels) { features in train.writeImages(indices, into: features) }
    }

    public func backward(lossScale: Float, gradientsReady: (Int) -> Void) throws {
        try model.backward(lossScale: lossScale, gradientsReady: gradientsReady)
    }

    /// Rank `part` takes a contiguous 1/parts of the held-out images: one forward each.
    public func evaluate(iteration: Int, part: Int, parts: Int) throws -> [EvaluationShare] {
        let all = heldOutBatch.labels.count, rows = segmentRange(count: all, parts: parts, index: part)
        let features = heldOutBatch.features.count / max(all, 1)
        let labels = Array(heldOutBatch.labels[rows])
        let batch = rows.count == all ? heldOutBatch
            : ClassificationBatch(features: Array(heldOutBatch.features[(rows.lowerBound * features)..<(rows.upperBound * features)]), labels: labels)
        guard !labels.isEmpty else { return [EvaluationShare("held-out loss", sum: 0, count: 0), EvaluationShare("held-out accuracy %", sum: 0, count: 0)] }
        let loss = try model.forward(batch)
        let logits = model.lastLogits
        var correct = 0
        for r in 0..<labels.count {
            var best = 0
            for c in 1..<10 where logits[r * 10 + c] > logits[r * 10 + best] { best = c }
            if best == Int(labels[r]) { correct += 1 }
        }
        let n = Double(labels.count)
        return [EvaluationShare("held-out loss", sum: Double(loss) * n, count: n), EvaluationShare("held-out accuracy %", sum: 100 * Double(correct), count: n)]
    }
}

/// Builds the task a config names, loading its data from `config.dataDir`. `rank` and `worldSize` are
/// the data-parallel ones; `parallel` splits the GPT across a tensor-parallel group.
public func makeTask(_ config: TrainConfig, rank: Int = 0, worldSize: Int = 1, parallel: TensorParallelism? = nil,
                     pipeline: ProcessGroup? = nil, exchange: ExpertExchange? = nil) throws -> TrainingTask {
    let dir = config.dataDir
    switch config.model {
    case .gpt:
        let text = try CharText(path: config.dataset == .text ? config.dataPath : dir + "/tinyshakespeare.txt")
        // Every batch draws block_size + 1 characters from a split: both splits must be longer.
        let shortest = min(text.train.count, text.validation.count)
        guard config.blockSize < shortest else {
            throw ConfigError(key: "block_size", "\(config.blockSize) is not shorter than the smallest data split (\(shortest) characters)")
        }
        if let pipeline, config.pipelineParallel > 1 {
            return try PipelineGPTTask(config: config, text: text, rank: rank, ranks: worldSize, pipeline: pipeline, parallel: parallel,
                                       exchange: exchange)
        }
        return GPTTask(config: config, text: text, rank: rank, ranks: worldSize, parallel: parallel, exchange: exchange)
    case .mlp:
        let all = try MNIST(imagesPath: dir + "/mnist-t10k-images-idx3-ubyte.gz", labelsPath: dir + "/mnist-t10k-labels-idx1-ubyte.gz")
        guard all.count > 2000 else { throw DatasetError(dir, "MNIST has \(all.count) images; need more than the 2,000 held out") }
        let (train, heldOut) = all.split(at: all.count - 2000)
        return MLPTask(config: config, train: train, heldOut: heldOut, rank: rank, worldSize: worldSize)
    }
}
