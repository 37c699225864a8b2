import Tensors

/// A model trained by the Trainer: forward computes the mean loss of a batch and caches what backward
/// needs; backward accumulates lossScale * d(mean loss)/d(parameters) into the gradient buffer.
public protocol Model: AnyObject {
    associatedtype Batch
    var parameters: ParameterSet { get }
    /// Draws the initial parameters from `seed`.
    func initialize(seed: UInt64)
    /// Mean loss over the batch. Throws only when a model-parallel collective fails.
    func forward(_ batch: Batch) throws -> Float
    /// `gradientsReady(offset)` is called as backward finishes parameters: every gradient from `offset`
    /// to the end of the flat buffer is final (offsets only decrease; the last call passes 0). Data
    /// parallelism uses it to start allreducing buckets while backward continues.
    func backward(lossScale: Float, gradientsReady: (Int) -> Void) throws
    /// The offsets backward passes to `gradientsReady`, in the order it passes them (data parallelism
    /// cuts its buckets there, so none waits for a gradient finished later than its own).
    var gradientReadyOffsets: [Int] { get }
}

public extension Model {
    func backward(lossScale: Float) throws { try backward(lossScale: lossScale, gradientsReady: { _ in }) }
}

/// Labels with class indices and a flat feature matrix [rows, features].
public struct ClassificationBatch: Sendable {
    public var features: [Float]
    public var labels: [Int32]
    public init(features: [Float], labels: [Int32]) { self.features = features; self.labels = labels }
    public var rows: Int { labels.count }
}

/// Token windows [batch, time] and their next-token targets.
public struct TokenBatch: Sendable {
    public var tokens: [Int32]
    public var targets: [Int32]
    public var batchSize: Int
    public var time: Int
    public init(tokens: [Int32], targets: [Int32], batchSize: Int, time: Int) {
        precondition(tokens.count == batchSize * time && targets.count == tokens.count, "token batch shape")
        self.tokens = tokens; self.targets = targets; self.batchSize = batchSize; self.time = time
    }
}

/// Softmax cross-entropy head shared by both models: caches probabilities for backward.
final class CrossEntropyHead {
    var probabilities = Tensor(zeros: [0]), losses = Tensor(zeros: [0])
    var targets: [Int32] = []
    var classes = 0

    func forward(logits: UnsafePointer<Float>, targets: [Int32], classes: Int) -> Float {
        let rows = targets.count
        if probabilities.count != rows * classes { probabilities = Tensor(zeros: [rows, classes]) }
        if losses.count != rows { losses = Tensor(zeros: [rows]) }
        self.targets = targets
        self.classes = classes
        return crossEntropyForward(logits, targets: targets, probs: probabilities.data, losses: losses.data,
                                   rows: rows, classes: classes)
    }

    /// dlogits += lossScale * d(mean loss)/d(logits)
    func backward(lossScale: Float, into dlogits: UnsafeMutablePointer<Float>) {
        crossEntropyBackward(probs: probabilities.data, targets: targets, lossScale: lossScale / Float(targets.count),
                             accumulatingInto: dlogits, rows: targets.count, classes: classes)
    }
}

/// Fully sharded data parallelism (ZeRO-3, FSDP's `fully_shard` units): a model's parameters come in
/// units, contiguous ranges of the flat buffer (a transformer block, the embeddings, a layer). The model
/// announces each unit before it computes with its parameters and after; the engine behind the hooks
/// gathers a unit's values before use (or has prefetched them) and may release them after.
public protocol ParameterUnitHooks: AnyObject {
    /// Returns once the unit's values are whole in the parameter buffer.
    func willUse(unit: Int, backward: Bool) throws
    /// The model is done with the unit's values for this pass.
    func doneUsing(unit: Int, backward: Bool)
}

/// A model cut into parameter units for ZeRO-3.
public protocol ParameterUnits: AnyObject {
    /// Each unit's ranges of the flat parameter buffer, units in forward order; together they cover it.
    /// A unit is one range, or several where the layout keeps its tensors apart (a mixture-of-experts
    /// block and its experts, which sit at the start of the buffer).
    var parameterUnits: [[Range<Int>]] { get }
    /// Units used at both ends of a step (FSDP's root: the tied embedding and head, the last layer),
    /// which stay gathered from their forward to their backward.
    var rootUnits: Set<Int> { get }
    var unitHooks: ParameterUnitHooks? { get set }
    /// Whether backward reads the unit's values (a first layer whose input needs no gradient does not),
    /// so that prefetch in backward does not gather what nobody reads.
    func backwardUses(unit: Int) -> Bool
    /// Draws the initial parameters from `seed` as `initialize(seed:)` does, calling `written(offset)`
    /// whenever every value below `offset` is final, so ZeRO-3 can keep only its pieces unit by unit
    /// instead of holding the whole model at once.
    func initialize(seed: UInt64, written: (Int) -> Void)
}

public extension ParameterUnits {
    func backwardUses(unit: Int) -> Bool { true }
}
