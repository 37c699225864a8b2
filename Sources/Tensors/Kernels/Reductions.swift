// Reductions over contiguous rows.

/// sum_i a[i] * b[i]
@inline(__always)
public func dotProduct(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, count n: Int) -> Float {
    var acc = SIMD16<Float>()
    var i = 0
    while i + 16 <= n { acc = acc.addingProduct(load16(a + i), load16(b + i)); i += 16 }
    var s = horizontalSum(acc)
    while i < n { s += a[i] * b[i]; i += 1 }
    return s
}

/// out[j] += sum over rows of x[r, j]   (bias gradient: column sums of a [rows, cols] matrix)
public func addColumnSums(of x: UnsafePointer<Float>, rows: Int, cols: Int, into out: UnsafeMutablePointer<Float>) {
    for r in 0..<rows { add(out, x + r * cols, into: out, count: cols) }
}

/// out[r] = sum over j of x[r, j]
public func rowSums(of x: UnsafePointer<Float>, rows: Int, cols: Int, into out: UnsafeMutablePointer<Float>) {
    let ones = [Float](repeating: 1, count: cols)
    ones.withUnsafeBufferPointer { o in
        for r in 0..<rows { out[r] = dotProduct(x + r * cols, o.baseAddress!, count: cols) }
    }
}

/// sum of squares of n floats, accumulated in Double across SIMD partial sums (for gradient norms).
public func sumOfSquares(_ x: UnsafePointer<Float>, count n: Int) -> Double {
    var total = 0.0
    var i = 0
    while i < n {
        let len = min(4096, n - i)
        total += Double(dotProduct(x + i, x + i, count: len))
        i += len
    }
    return total
}

/// True when none of the n floats is NaN or infinite (x·0 is 0 for every finite x and NaN otherwise,
/// so one vector pass decides; sumOfSquares would overflow on huge finite values).
public func allFinite(_ x: UnsafePointer<Float>, count n: Int) -> Bool {
    var acc = SIMD8<Float>(repeating: 0)
    var i = 0
    while i + 8 <= n {
        acc += UnsafeRawPointer(x + i).loadUnaligned(as: SIMD8<Float>.self) * 0
        i += 8
    }
    var tail: Float = 0
    while i < n { tail += x[i] * 0; i += 1 }
    return acc.sum() == 0 && tail == 0
}
