// Elementwise kernels over n contiguous floats: out may alias an input.
// SIMD16 body + scalar tail; no allocation.

/// out = a + b
public func add(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, into out: UnsafeMutablePointer<Float>, count n: Int) {
    var i = 0
    while i + 16 <= n { store16(out + i, load16(a + i) + load16(b + i)); i += 16 }
    while i < n { out[i] = a[i] + b[i]; i += 1 }
}

/// out = a * b
public func multiply(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, into out: UnsafeMutablePointer<Float>, count n: Int) {
    var i = 0
    while i + 16 <= n { store16(out + i, load16(a + i) * load16(b + i)); i += 16 }
    while i < n { out[i] = a[i] * b[i]; i += 1 }
}

/// x *= alpha
public func scale(_ x: UnsafeMutablePointer<Float>, by alpha: Float, count n: Int) {
    var i = 0
    while i + 16 <= n { store16(x + i, load16(x + i) * alpha); i += 16 }
    while i < n { x[i] *= alpha; i += 1 }
}

/// y += alpha * x
public func axpy(_ alpha: Float, _ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, count n: Int) {
    var i = 0
    let a = SIMD16<Float>(repeating: alpha)
    while i + 16 <= n { store16(y + i, load16(y + i).addingProduct(a, load16(x + i))); i += 16 }
    while i < n { y[i] += alpha * x[i]; i += 1 }
}

/// x[r, :] += bias for each of `rows` rows of length `cols`.
public func addBias(_ bias: UnsafePointer<Float>, to x: UnsafeMutablePointer<Float>, rows: Int, cols: Int) {
    for r in 0..<rows { add(x + r * cols, bias, into: x + r * cols, count: cols) }
}

/// out = max(x, 0)
public func reluForward(_ x: UnsafePointer<Float>, into out: UnsafeMutablePointer<Float>, count n: Int) {
    var i = 0
    let zero = SIMD16<Float>()
    while i + 16 <= n { store16(out + i, vectorMax(load16(x + i), zero)); i += 16 }
    while i < n { out[i] = max(x[i], 0); i += 1 }
}

/// dx += dout where x > 0 (x is the forward input).
public func reluBackward(_ x: UnsafePointer<Float>, _ dout: UnsafePointer<Float>,
                         accumulatingInto dx: UnsafeMutablePointer<Float>, count n: Int) {
    for i in 0..<n where x[i] > 0 { dx[i] += dout[i] }
}
