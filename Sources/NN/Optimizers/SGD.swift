import Tensors

/// SGD with momentum as PyTorch: buf = momentum * buf + g;  p -= lr * buf  (no dampening, no Nesterov).
public final class SGD: Optimizer {
    public let momentum: Float
    let parameters: ParameterSet
    public let ranges: [Range<Int>]
    let velocity: FloatBuffer
    public var stepCount = 0
    public var state: [(name: String, buffer: FloatBuffer)] { [("sgd.momentum", velocity)] }

    public init(_ parameters: ParameterSet, ranges: [Range<Int>]? = nil, momentum: Float) {
        self.parameters = parameters
        self.ranges = ownedRanges(ranges, count: parameters.count)
        self.momentum = momentum
        velocity = FloatBuffer(count: self.ranges.reduce(0) { $0 + $1.count })
    }

    public func step(learningRate lr: Float) {
        stepCount += 1
        var buf = velocity.base
        for range in ranges {
            let p = parameters.values.base + range.lowerBound, g = parameters.gradients.base + range.lowerBound
            for i in 0..<range.count {
                let b = momentum * buf[i] + g[i]
                buf[i] = b
                p[i] -= lr * b
            }
            buf += range.count
        }
    }
}
