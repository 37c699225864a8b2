import Tensors

/// AdamW as PyTorch computes it (decoupled weight decay, bias-corrected moments):
///   p *= 1 - lr*wd (only parameters with >= 2 dimensions);  m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2
///   p -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps)
public final class AdamW: Optimizer {
    public struct Hyperparameters: Codable, Sendable, Equatable {
        public var beta1: Float = 0.9
        public var beta2: Float = 0.999
        public var epsilon: Float = 1e-8
        public var weightDecay: Float = 0.01
        public init(beta1: Float = 0.9, beta2: Float = 0.999, epsilon: Float = 1e-8, weightDecay: Float = 0.01) {
            self.beta1 = beta1; self.beta2 = beta2; self.epsilon = epsilon; self.weightDecay = weightDecay
        }
    }

    public let hyperparameters: Hyperparameters
    let parameters: ParameterSet
    public let ranges: [Range<Int>]
    let firstMoment: FloatBuffer, secondMoment: FloatBuffer
    public var stepCount = 0
    public var state: [(name: String, buffer: FloatBuffer)] { [("adamw.m", firstMoment), ("adamw.v", secondMoment)] }

    public init(_ parameters: ParameterSet, ranges: [Range<Int>]? = nil, _ hyperparameters: Hyperparameters) {
        self.parameters = parameters
        self.ranges = ownedRanges(ranges, count: parameters.count)
        self.hyperparameters = hyperparameters
        let owned = self.ranges.reduce(0) { $0 + $1.count }
        firstMoment = FloatBuffer(count: owned)
        secondMoment = FloatBuffer(count: owned)
    }

    public func step(learningRate lr: Float) {
        stepCount += 1
        let h = hyperparameters
        let t = Float(stepCount)
        let stepSize = lr / (1 - pow(h.beta1, t))
        let correction2 = (1 - pow(h.beta2, t)).squareRoot()
        let values = parameters.values.base, grads = parameters.gradients.base
        var packed = 0 // where this range's state starts
        for range in ranges {
            for (segment, decays) in segments(of: parameters, in: range) {
                let shrink = decays ? 1 - lr * h.weightDecay : 1
                let p = values + segment.lowerBound, g = grads + segment.lowerBound
                let local = packed + segment.lowerBound - range.lowerBound
                let m = firstMoment.base + local, v = secondMoment.base + local
                update(p, g, m, v, count: segment.count, shrink: shrink, stepSize: stepSize, correction2: correction2)
            }
            packed += range.count
        }
    }

    @inline(__always)
    private func update(_ p: UnsafeMutablePointer<Float>, _ g: UnsafePointer<Float>, _ m: UnsafeMutablePointer<Float>,
                        _ v: UnsafeMutablePointer<Float>, count n: Int, shrink: Float, stepSize: Float, correction2: Float) {
        let h = hyperparameters
        typealias V = SIMD16<Float>
        let b1 = V(repeating: h.beta1), b2 = V(repeating: h.beta2)
        let c1 = V(repeating: 1 - h.beta1), c2 = V(repeating: 1 - h.beta2)
        let shrinkV = V(repeating: shrink), stepV = V(repeating: stepSize)
        let correctionV = V(repeating: 1 / correction2), epsV = V(repeating: h.epsilon)
        var i = 0
        while i + 16 <= n {
            let gi = load16(g + i)
            let mi = b1 * load16(m + i) + c1 * gi
            let vi = b2 * load16(v + i) + c2 * gi * gi
            store16(m + i, mi)
            store16(v + i, vi)
            let denominator = vectorSquareRoot(vi) * correctionV + epsV
            store16(p + i, load16(p + i) * shrinkV - stepV * mi / denominator)
            i += 16
        }
        while i < n {
            let gi = g[i]
            let mi = h.beta1 * m[i] + (1 - h.beta1) * gi
            let vi = h.beta2 * v[i] + (1 - h.beta2) * gi * gi
            m[i] = mi
            v[i] = vi
            p[i] = p[i] * shrink - stepSize * mi / (vi.squareRoot() * (1 / correction2) + h.epsilon)
            i += 1
        }
    }
}

#if canImport(Glibc)
import Glibc
#endif
