// GELU in two forms. Exact (PyTorch's nn.GELU(), which nanoGPT's MLP uses; the default; 0.75x the
// tanh form's time forward and backward, kernels-bench):
//   y = 0.5 x (1 + erf(x / sqrt 2)),  dy/dx = 0.5 (1 + erf(x / sqrt 2)) + x exp(-x^2 / 2) / sqrt(2 pi)
// with erf(z) = z P(z^2) / Q(z^2) on z clamped to +-3.92 (where erf is 1 to float32), P and Q of degree
// 5, fitted here (bench/references/fit_erf.py): within 3e-7 of erf in float32 arithmetic, where
// Abramowitz & Stegun 7.1.26, used before, was within 4e-7 and needed an exponential (11 fused
// multiply-adds, a division and two clamps instead of about 30 operations).
// Tanh (GPT-2's original, nn.GELU(approximate='tanh'); `gelu: "tanh"`):
//   y = 0.5 x (1 + tanh(s (x + 0.044715 x^3))),  s = sqrt(2/pi)
//   dy/dx = 0.5 (1 + t) + 0.5 x (1 - t^2) s (1 + 3 * 0.044715 x^2)
// Forward caches nothing beyond its input x; backward recomputes from x. The exact form's polynomial,
// value and slope are fused multiply-adds (Swift writes a * b + c as two instructions): in the recipe's
// step its forward went 1.48 -> 1.38 ms and the recomputed forward with slope 1.98 -> 1.61 (3 pairs).

/// Which GELU a model uses.
public enum GELUForm: String, Codable, Sendable, CaseIterable {
    case exact, tanh
}

/// y = f(x) for `form`.
public func geluForward(_ x: UnsafePointer<Float>, into out: UnsafeMutablePointer<Float>, count n: Int, form: GELUForm) {
    switch form {
    case .tanh: geluForward(x, into: out, count: n)
    case .exact: geluExactForward(x, into: out, count: n)
    }
}

/// dx += dout * f'(x) for `form`; dx = dout * f'(x) with `accumulate: false` (no zeroing pass first).
public func geluBackward(_ x: UnsafePointer<Float>, _ dout: UnsafePointer<Float>, accumulatingInto dx: UnsafeMutablePointer<Float>,
                         count n: Int, form: GELUForm, accumulate: Bool = true) {
    switch form {
    case .tanh: geluBackward(x, dout, accumulatingInto: dx, count: n, accumulate: accumulate)
    case .exact: geluExactBackward(x, dout, accumulatingInto: dx, count: n, accumulate: accumulate)
    }
}

/// out = f(x) and x = f'(x) in one pass, for a backward that recomputes the GELU output anyway (the
/// MLP's c_proj weight gradient needs it): its GELU gradient is then dout * x, a multiply, instead of a
/// second pass of erf and exp (the recipe's step spent 2 % of its time there). The exact form gives
/// geluForward's and geluBackward's (accumulate: false) bits; the tanh form's slope is within 1e-6 of
/// its backward's (which rounds the cubic term in another order).
public func geluForwardAndSlope(_ x: UnsafeMutablePointer<Float>, into out: UnsafeMutablePointer<Float>, count n: Int, form: GELUForm) {
    switch form {
    case .exact:
        valueAndSlopeInPlace(x, into: out, count: n) { v in
            let (e, gaussian) = erfHalfAndGaussian(v)
            return (exactValue(v, erf: e), exactSlope(v, erf: e, gaussian: gaussian))
        }
    case .tanh:
        valueAndSlopeInPlace(x, into: out, count: n) { v in
            let t = vectorTanh(geluScale * v.addingProduct(geluCubic * v * v, v))
            return (0.5 * v * (1 + t), tanhSlope(v, tanh: t))
        }
    }
}

@inline(__always)
private func valueAndSlopeInPlace(_ x: UnsafeMutablePointer<Float>, into out: UnsafeMutablePointer<Float>, count n: Int,
                                  _ f: (SIMD16<Float>) -> (value: SIMD16<Float>, slope: SIMD16<Float>)) {
    var i = 0
    while i + 16 <= n {
        let (value, slope) = f(load16(x + i))
        store16(out + i, value); store16(x + i, slope)
        i += 16
    }
    guard i < n else { return }
    var v = SIMD16<Float>()
    for l in 0..<(n - i) { v[l] = x[i + l] }
    let (value, slope) = f(v)
    for l in 0..<(n - i) { out[i + l] = value[l]; x[i + l] = slope[l] }
}

/// The exact GELU's value from erf(x / sqrt 2): 0.5 x + 0.5 x erf, one multiply and one fused multiply-add.
@inline(__always) func exactValue(_ v: SIMD16<Float>, erf e: SIMD16<Float>) -> SIMD16<Float> {
    let half = 0.5 * v
    return half.addingProduct(half, e)
}

/// The exact GELU's slope from erfHalfAndGaussian's pair: 0.5 (1 + erf(x / sqrt 2)) + x exp(-x^2 / 2) / sqrt(2 pi).
@inline(__always) func exactSlope(_ v: SIMD16<Float>, erf e: SIMD16<Float>, gaussian: SIMD16<Float>) -> SIMD16<Float> {
    let half = SIMD16<Float>(repeating: 0.5)
    return half.addingProduct(half, e).addingProduct(v * gaussian, SIMD16<Float>(repeating: 0.3989422804014327))
}

/// The tanh GELU's slope from t = tanh(s (x + 0.044715 x^3)).
@inline(__always) func tanhSlope(_ v: SIMD16<Float>, tanh t: SIMD16<Float>) -> SIMD16<Float> {
    let half = SIMD16<Float>(repeating: 0.5)
    let slope: SIMD16<Float> = (1 - t * t) * (geluScale * (3 * geluCubic * (v * v) + 1))
    return half * (1 + t) + half * v * slope
}

/// erf(z), as the header says.
@inline(__always) func rationalErf(_ z: SIMD16<Float>) -> SIMD16<Float> {
    typealias V = SIMD16<Float>
    let z = vectorMin(vectorMax(z, V(repeating: -3.92)), V(repeating: 3.92))
    let t = z * z
    var p = V(repeating: 2.8745105373673141e-04).addingProduct(V(repeating: 2.0344070890132570e-06), t)
    p = V(repeating: 3.8681931328028440e-03).addingProduct(p, t)
    p = V(repeating: 5.3060013800859451e-02).addingProduct(p, t)
    p = V(repeating: 1.9276435673236847e-01).addingProduct(p, t)
    p = V(repeating: 1.1283789873123169e+00).addingProduct(p, t)
    var q = V(repeating: 1.1880345409736037e-03).addingProduct(V(repeating: 3.8065743865445256e-05), t)
    q = V(repeating: 1.5172059647738934e-02).addingProduct(q, t)
    q = V(repeating: 1.1508427560329437e-01).addingProduct(q, t)
    q = V(repeating: 5.0416463613510132e-01).addingProduct(q, t)
    q = V(repeating: 1).addingProduct(q, t)
    return z * p / q
}

/// erf(x / sqrt 2), the exact GELU's value's.
@inline(__always) func erfOfHalf(_ v: SIMD16<Float>) -> SIMD16<Float> { rationalErf(v * SIMD16<Float>(repeating: 0.7071067811865476)) }

/// erf(x / sqrt 2) and exp(-x^2 / 2), which the exact GELU's slope needs.
@inline(__always) func erfHalfAndGaussian(_ v: SIMD16<Float>) -> (erf: SIMD16<Float>, gaussian: SIMD16<Float>) {
    let z = v * SIMD16<Float>(repeating: 0.7071067811865476)
    let minusOne = SIMD16<Float>(repeating: -1) // prefix minus on SIMD is scalarized by the compiler
    return (rationalErf(z), vectorExp(z * z * minusOne))
}

func geluExactForward(_ x: UnsafePointer<Float>, into out: UnsafeMutablePointer<Float>, count n: Int) {
    var i = 0
    while i + 16 <= n {
        let v = load16(x + i)
        store16(out + i, exactValue(v, erf: erfOfHalf(v)))
        i += 16
    }
    guard i < n else { return }
    var v = SIMD16<Float>()
    for l in 0..<(n - i) { v[l] = x[i + l] }
    let y = exactValue(v, erf: erfOfHalf(v))
    for l in 0..<(n - i) { out[i + l] = y[l] }
}

func geluExactBackward(_ x: UnsafePointer<Float>, _ dout: UnsafePointer<Float>, accumulatingInto dx: UnsafeMutablePointer<Float>, count n: Int,
                       accumulate: Bool = true) {
    @inline(__always) func slope(_ v: SIMD16<Float>) -> SIMD16<Float> {
        let (e, gaussian) = erfHalfAndGaussian(v)
        return exactSlope(v, erf: e, gaussian: gaussian)
    }
    var i = 0
    while i + 16 <= n {
        store16(dx + i, (accumulate ? load16(dx + i) : SIMD16<Float>()).addingProduct(slope(load16(x + i)), load16(dout + i)))
        i += 16
    }
    guard i < n else { return }
    var v = SIMD16<Float>()
    for l in 0..<(n - i) { v[l] = x[i + l] }
    let local = slope(v)
    for l in 0..<(n - i) { dx[i + l] = (accumulate ? dx[i + l] : 0) + local[l] * dout[i + l] }
}

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
                         accumulatingInto dx: UnsafeMutablePointer<Float>, count n: Int, accumulate: Bool = true) {
    var i = 0
    while i + 16 <= n {
        let v = load16(x + i)
        let t = vectorTanh(geluScale * v.addingProduct(geluCubic * (v * v), v))
        store16(dx + i, (accumulate ? load16(dx + i) : SIMD16<Float>()).addingProduct(tanhSlope(v, tanh: t), load16(dout + i)))
        i += 16
    }
    while i < n {
        let v = x[i]
        let t = tanhScalar(geluScale * (v + geluCubic * v * v * v))
        let local = 0.5 * (1 + t) + 0.5 * v * (1 - t * t) * geluScale * (1 + 3 * geluCubic * v * v)
        dx[i] = (accumulate ? dx[i] : 0) + local * dout[i]
        i += 1
    }
}

/// The same formula as vectorTanh, one lane: tails agree with the vector body.
@inline(__always) func tanhScalar(_ u: Float) -> Float { vectorTanh(SIMD16(repeating: u))[0] }
