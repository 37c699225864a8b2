// Row softmax over a [rows, cols] matrix, numerically stable (subtract the row max before exp).
// Forward writes the probabilities, which backward needs:
//   dx = y * (dy - sum_j dy_j y_j)

public func softmaxForward(_ x: UnsafePointer<Float>, into y: UnsafeMutablePointer<Float>, rows: Int, cols: Int) {
    for r in 0..<rows { softmaxRow(x + r * cols, into: y + r * cols, count: cols) }
}

/// One row; shared with cross-entropy and attention. Returns the row's sum of exponentials
/// (after subtracting `max`) and the max, so callers can form a log-sum-exp.
@discardableResult
@inline(__always)
public func softmaxRow(_ x: UnsafePointer<Float>, into y: UnsafeMutablePointer<Float>, count n: Int) -> (max: Float, sum: Float) {
    let rowMax = maximum(x, count: n)
    let sum = exponentials(x, minus: rowMax, into: y, count: n)
    scale(y, by: 1 / sum, count: n)
    return (rowMax, sum)
}

/// The largest of n values (-infinity for none).
@inline(__always)
public func maximum(_ x: UnsafePointer<Float>, count n: Int) -> Float {
    var maxima = SIMD16<Float>(repeating: -.infinity)
    var k = 0
    while k + 16 <= n { maxima = vectorMax(maxima, load16(x + k)); k += 16 }
    var result = -Float.infinity
    for lane in 0..<16 { result = max(result, maxima[lane]) }
    while k < n { result = max(result, x[k]); k += 1 }
    return result
}

/// y = exp(x - shift); returns the sum of y. A vocabulary-parallel softmax shifts every rank's slice
/// of a row by the row's global max.
@inline(__always)
public func exponentials(_ x: UnsafePointer<Float>, minus shift: Float, into y: UnsafeMutablePointer<Float>, count n: Int) -> Float {
    let m = SIMD16<Float>(repeating: shift)
    var sums = SIMD16<Float>()
    var j = 0
    while j + 16 <= n {
        let e = vectorExp(load16(x + j) - m)
        store16(y + j, e)
        sums += e
        j += 16
    }
    if j < n {
        // The tail in one vector, padded with -infinity (exp gives 0): one vector exp instead of one
        // per element (attention's causal rows are mostly tails: lengths 1...T).
        var tail = SIMD16<Float>(repeating: -.infinity)
        for lane in 0..<(n - j) { tail[lane] = x[j + lane] }
        let e = vectorExp(tail - m)
        var sum = horizontalSum(sums)
        for lane in 0..<(n - j) { y[j + lane] = e[lane]; sum += e[lane] }
        return sum
    }
    return horizontalSum(sums)
}

/// dx += y * (dy - <dy, y>) per row.
public func softmaxBackward(_ y: UnsafePointer<Float>, _ dy: UnsafePointer<Float>,
                            accumulatingInto dx: UnsafeMutablePointer<Float>, rows: Int, cols: Int) {
    for r in 0..<rows {
        let yr = y + r * cols, dyr = dy + r * cols, dxr = dx + r * cols
        let dot = dotProduct(yr, dyr, count: cols)
        for j in 0..<cols { dxr[j] += yr[j] * (dyr[j] - dot) }
    }
}
