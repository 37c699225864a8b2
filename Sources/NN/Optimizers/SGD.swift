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
            // 16 lanes at a time: the scalar loop was not vectorized (the three buffers may alias as
            // far as the compiler knows). Same operations per element, so the same results.
            let n = range.count, mu = SIMD16<Float>(repeating: momentum), rate = SIMD16<Float>(repeating: lr)
            var i = 0
            while i + 16 <= n {
                let b = mu * load16(buf + i) + load16(g + i)
                store16(buf + i, b)
                store16(p + i, load16(p + i) - rate * b)
                i += 16
            }
            while i < n {
                let b = momentum * buf[i] + g[i]
                buf[i] = b
                p[i] -= lr * b
                i += 1
            }
            buf += range.count
        }
    }
}
