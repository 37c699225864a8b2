import Tensors

/// A two-layer perceptron for classification: inputs -> hidden (ReLU or GELU) -> classes.
/// Initialized as PyTorch's nn.Linear (U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and biases), so it
/// can be compared with the PyTorch reference run for run.
public final class MLP: Model, ParameterUnits {
    public enum Activation: String, Codable, Sendable { case relu, gelu }

    public let parameters: ParameterSet
    public private(set) lazy var sharding = ParameterSharding.unsharded(parameters)
    public let inputs: Int, hidden: Int, classes: Int
    public let activation: Activation
    let fc1: Linear, fc2: Linear
    let head = CrossEntropyHead()
    /// The batch's features [rows, inputs], kept from forward to backward (fc1's weight gradient).
    var input = Tensor(zeros: [0])
    var preActivation = Tensor(zeros: [0]), activated = Tensor(zeros: [0]), logits = Tensor(zeros: [0])
    var dActivated = Tensor(zeros: [0]), dPre = Tensor(zeros: [0]), dLogits = Tensor(zeros: [0])

    /// ZeRO-3's engine, when parameters are sharded: unit 0 is fc1, unit 1 fc2.
    public weak var unitHooks: ParameterUnitHooks?
    public var parameterUnits: [[Range<Int>]] { [[0..<fc2.weight.offset], [fc2.weight.offset..<parameters.count]] }
    /// fc2 ends forward and opens backward.
    public var rootUnits: Set<Int> { [1] }
    public func backwardUses(unit: Int) -> Bool { unit != 0 }

    /// Logits of the last forward, [rows, classes].
    public var lastLogits: Tensor { logits }

    public init(inputs: Int, hidden: Int, classes: Int, activation: Activation) {
        var layout = ParameterSet.Layout()
        Linear.register(&layout, "fc1", in: inputs, out: hidden, bias: true)
        Linear.register(&layout, "fc2", in: hidden, out: classes, bias: true)
        parameters = ParameterSet(layout: layout)
        fc1 = Linear(parameters, "fc1", hasBias: true)
        fc2 = Linear(parameters, "fc2", hasBias: true)
        self.inputs = inputs; self.hidden = hidden; self.classes = classes; self.activation = activation
    }

    public func initialize(seed: UInt64) { initialize(seed: seed, written: { _ in }) }

    public func initialize(seed: UInt64, written: (Int) -> Void) {
        var rng = SeededRandom(seed: seed)
        for layer in [fc1, fc2] {
            let bound = 1 / Float(layer.inFeatures).squareRoot()
            layer.weight.value.fillUniform(bound: bound, using: &rng)
            layer.bias!.value.fillUniform(bound: bound, using: &rng)
            written(layer.bias!.offset + layer.bias!.value.count)
        }
    }

    /// Logits [rows, classes] for a batch (kept until the next forward).
    public func logits(_ batch: ClassificationBatch) throws -> Tensor {
        let rows = batch.rows
        precondition(batch.features.count == rows * inputs, "batch has \(batch.features.count) features, expected \(rows * inputs)")
        return try logits(rows: rows) { input in input.update(from: batch.features, count: batch.features.count) }
    }

    /// Logits for `rows` samples that `fill` writes into the model's kept input ([rows, inputs]): a
    /// training step gathers its batch there directly instead of into a fresh array.
    public func logits(rows: Int, fill: (UnsafeMutablePointer<Float>) -> Void) throws -> Tensor {
        if logits.count != rows * classes {
            input = Tensor(zeros: [rows, inputs])
            preActivation = Tensor(zeros: [rows, hidden]); activated = Tensor(zeros: [rows, hidden])
            logits = Tensor(zeros: [rows, classes])
            dActivated = Tensor(zeros: [rows, hidden]); dPre = Tensor(zeros: [rows, hidden])
            dLogits = Tensor(zeros: [rows, classes])
        }
        fill(input.data)
        try unitHooks?.willUse(unit: 0, backward: false)
        fc1.forward(input.data, rows: rows, into: preActivation.data)
        unitHooks?.doneUsing(unit: 0, backward: false)
        switch activation {
        case .relu: reluForward(preActivation.data, into: activated.data, count: rows * hidden)
        case .gelu: geluForward(preActivation.data, into: activated.data, count: rows * hidden, form: .tanh)
        }
        try unitHooks?.willUse(unit: 1, backward: false)
        fc2.forward(activated.data, rows: rows, into: logits.data)
        unitHooks?.doneUsing(unit: 1, backward: false)
        return logits
    }

    public func forward(_ batch: ClassificationBatch) throws -> Float {
        let out = try logits(batch)
        return head.forward(logits: out.data, targets: batch.labels, classes: classes)
    }

    /// The mean loss of `labels.count` samples whose features `fill` writes (see logits(rows:fill:)).
    public func forward(labels: [Int32], fill: (UnsafeMutablePointer<Float>) -> Void) throws -> Float {
        let out = try logits(rows: labels.count, fill: fill)
        return head.forward(logits: out.data, targets: labels, classes: classes)
    }

    /// As backward reports them: the output layer, then everything.
    public var gradientReadyOffsets: [Int] { [fc2.weight.offset, 0] }

    public func backward(lossScale: Float, gradientsReady: (Int) -> Void) throws {
        let rows = head.targets.count
        try unitHooks?.willUse(unit: 1, backward: true)
        dLogits.fill(0)
        head.backward(lossScale: lossScale, into: dLogits.data)
        dPre.fill(0)
        fc2.backward(activated.data, dy: dLogits.data, rows: rows, dx: dActivated.data, accumulate: false)
        unitHooks?.doneUsing(unit: 1, backward: true)
        gradientsReady(fc2.weight.offset)
        switch activation {
        case .relu: reluBackward(preActivation.data, dActivated.data, accumulatingInto: dPre.data, count: rows * hidden)
        case .gelu: geluBackward(preActivation.data, dActivated.data, accumulatingInto: dPre.data, count: rows * hidden, form: .tanh)
        }
        // fc1's input needs no gradient, so its weights are not needed here: no gather.
        fc1.backward(input.data, dy: dPre.data, rows: rows, dx: nil)
        gradientsReady(0)
    }
}
