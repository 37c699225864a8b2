// GELU, tanh form (as GPT-2 and nanoGPT's nn.GELU(approximate='tanh')):
//   y = 0.5 x (1 + tanh(s (x + 0.044715 x^3))),  s = sqrt(2/pi)
// Forward caches nothing beyond its input x; backward recomputes tanh from x:
//   dy/dx = 0.5 (1 + t) + 0.5 x (1 - t^2) s (1 + 3 * 0.044715 x^2)

private let geluScale: Float = 0.7978845608028654 // sqrt(2/pi)
private let geluCubic: Float = 0.044715

public func geluForward(_ x: UnsafePointer<Float>, into out: UnsafeMutablePointer<Float>, count n: Int) {
    var i = 0
    while i + 16 <= n {
        let v = load16(x + i)
        let t = vectorTanh(geluScale * v.addingProduct(geluCubic * v * v, v))
        store16(out + i, 0.5 * v * (1 + t))
        i += 16
    }
    while i < n {
        let v = x[i]
        let t = tanhScalar(geluScale * (v + geluCubic * v * v * v))
        out[i] = 0.5 * v * (1 + t)
        i += 1
    }
}

/// dx += dout * gelu'(x)
public func geluBackward(_ x: UnsafePointer<Float>, _ dout: UnsafePointer<Float>,
                         accumulatingInto dx: UnsafeMutablePointer<Float>, count n: Int) {
    var i = 0
    while i + 16 <= n {
        let v = load16(x + i)
        let v2 = v * v
        let t = vectorTanh(geluScale * v.addingProduct(geluCubic * v2, v))
        let half = SIMD16<Float>(repeating: 0.5)
        let slope: SIMD16<Float> = (1 - t * t) * (geluScale * (3 * geluCubic * v2 + 1))
        let local: SIMD16<Float> = half * (1 + t) + half * v * slope
        store16(dx + i, load16(dx + i).addingProduct(local, load16(dout + i)))
        i += 16
    }
    while i < n {
        let v = x[i]
        let t = tanhScalar(geluScale * (v + geluCubic * v * v * v))
        let local = 0.5 * (1 + t) + 0.5 * v * (1 - t * t) * geluScale * (1 + 3 * geluCubic * v * v)
        dx[i] += local * dout[i]
        i += 1
    }
}

/// The same formula as vectorTanh, one lane: tails agree with the vector body.
@inline(__always) func tanhScalar(_ u: Float) -> Float { vectorTanh(SIMD16(repeating: u))[0] }
