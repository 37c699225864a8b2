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
