import Tensors

/// SGD with momentum as PyTorch: buf = momentum * buf + g;  p -= lr * buf  (no dampening, no Nesterov).
public final class SGD: Optimizer {
    public let momentum: Float
    let parameters: ParameterSet
    let range: Range<Int>
    let velocity: FloatBuffer
    public var stepCount = 0
    public var state: [(name: String, buffer: FloatBuffer)] { [("sgd.momentum", velocity)] }

    public init(_ parameters: ParameterSet, range: Range<Int>? = nil, momentum: Float) {
        self.parameters = parameters
        self.range = range ?? 0..<parameters.count
        self.momentum = momentum
        velocity = FloatBuffer(count: self.range.count)
    }

    public func step(learningRate lr: Float) {
        stepCount += 1
        let n = range.count
        let p = parameters.values.base + range.lowerBound, g = parameters.gradients.base + range.lowerBound
        let buf = velocity.base
        for i in 0..<n {
            let b = momentum * buf[i] + g[i]
            buf[i] = b
            p[i] -= lr * b
        }
    }
}
