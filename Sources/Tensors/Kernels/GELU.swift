// GELU in two forms. Exact (PyTorch's nn.GELU(), which nanoGPT's MLP uses; the default; ~1.06x the
// tanh form's time, kernels-bench):
//   y = 0.5 x (1 + erf(x / sqrt 2)),  dy/dx = 0.5 (1 + erf(x / sqrt 2)) + x exp(-x^2 / 2) / sqrt(2 pi)
// with erf from Abramowitz & Stegun 7.1.26 (absolute error <= 1.5e-7, below float32's step near 1).
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

/// erf(x / sqrt 2) and exp(-x^2 / 2), which the exact GELU's value and slope share.
@inline(__always) func erfHalfAndGaussian(_ v: SIMD16<Float>) -> (erf: SIMD16<Float>, gaussian: SIMD16<Float>) {
    typealias V = SIMD16<Float>
    let z = v * V(repeating: 0.7071067811865476)
    let minusOne = V(repeating: -1) // prefix minus on SIMD is scalarized by the compiler
    // |z| by clearing the sign bit: pointwiseMax(z, -z) of two computed vectors is compiled to a lane
    // loop, which made this kernel ~10x slower than the tanh form.
    let a = unsafeBitCast(unsafeBitCast(z, to: SIMD16<UInt32>.self) & SIMD16<UInt32>(repeating: 0x7FFF_FFFF), to: V.self)
    let t = 1 / V(repeating: 1).addingProduct(a, V(repeating: 0.3275911))
    // Horner steps as fused multiply-adds (a * b + c written out is two instructions and two roundings).
    var poly = V(repeating: -1.453152027).addingProduct(V(repeating: 1.061405429), t)
    poly = V(repeating: 1.421413741).addingProduct(poly, t)
    poly = V(repeating: -0.284496736).addingProduct(poly, t)
    poly = V(repeating: 0.254829592).addingProduct(poly, t)
    poly = poly * t
    let gaussian = vectorExp(z * z * minusOne)
    let magnitude = 1 - poly * gaussian
    // erf is odd: the magnitude takes v's sign bit (a mask select would be scalarized).
    let sign = unsafeBitCast(v, to: SIMD16<UInt32>.self) & SIMD16<UInt32>(repeating: 0x8000_0000)
    return (unsafeBitCast(unsafeBitCast(magnitude, to: SIMD16<UInt32>.self) | sign, to: SIMD16<Float>.self), gaussian)
}

func geluExactForward(_ x: UnsafePointer<Float>, into out: UnsafeMutablePointer<Float>, count n: Int) {
    var i = 0
    while i + 16 <= n {
        let v = load16(x + i)
        store16(out + i, exactValue(v, erf: erfHalfAndGaussian(v).erf))
        i += 16
    }
    guard i < n else { return }
    var v = SIMD16<Float>()
    for l in 0..<(n - i) { v[l] = x[i + l] }
    let y = exactValue(v, erf: erfHalfAndGaussian(v).erf)
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
