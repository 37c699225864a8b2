// Naive Double-precision references: the oracles the SIMD kernels are tested against.
import Tensors
import XCTest

/// Deterministic pseudo-random floats in [-scale, scale] (SplitMix64), so failures reproduce.
struct TestRandom {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    mutating func uniform(_ scale: Float = 1) -> Float {
        Float(Double(next() >> 11) / Double(1 << 53) * 2 - 1) * scale
    }
    mutating func tensor(_ shape: [Int], scale: Float = 1) -> Tensor {
        let t = Tensor(zeros: shape)
        for i in 0..<t.count { t[i] = uniform(scale) }
        return t
    }
}

/// Asserts |actual - expected| <= tolerance[i] everywhere; on failure names the first bad index and max error.
func assertClose(_ actual: UnsafePointer<Float>, _ expected: [Double], tolerance: (Int) -> Double,
                 _ what: String, file: StaticString = #filePath, line: UInt = #line) {
    var maxError = 0.0, firstBad = -1
    for i in expected.indices {
        let err = abs(Double(actual[i]) - expected[i])
        maxError = max(maxError, err)
        if firstBad < 0 && !(err <= tolerance(i)) { firstBad = i }
    }
    if firstBad >= 0 {
        XCTFail("\(what): first bad index \(firstBad): got \(actual[firstBad]) expected \(expected[firstBad]) " +
                "(tolerance \(tolerance(firstBad))); max error \(maxError)", file: file, line: line)
    }
}

func assertClose(_ actual: UnsafePointer<Float>, _ expected: [Double], relative: Double, absolute: Double = 1e-6,
                 _ what: String, file: StaticString = #filePath, line: UInt = #line) {
    assertClose(actual, expected, tolerance: { relative * abs(expected[$0]) + absolute }, what, file: file, line: line)
}

enum Reference {
    /// C = alpha op(A) op(B) + beta C in Double; also returns sum_k |op(A)_ik op(B)_kj| per element,
    /// the scale a float32 summation error is proportional to.
    static func gemm(_ ta: Transpose, _ tb: Transpose, m: Int, n: Int, k: Int, alpha: Double,
                     a: Tensor, lda: Int, b: Tensor, ldb: Int, beta: Double, c: [Float], ldc: Int)
        -> (values: [Double], magnitude: [Double]) {
        var out = [Double](repeating: 0, count: m * n), mag = out
        for i in 0..<m {
            for j in 0..<n {
                var s = 0.0, sa = 0.0
                for p in 0..<k {
                    let av = Double(ta == .none ? a[i * lda + p] : a[p * lda + i])
                    let bv = Double(tb == .none ? b[p * ldb + j] : b[j * ldb + p])
                    s += av * bv
                    sa += abs(av * bv)
                }
                let old = beta == 0 ? 0 : beta * Double(c[i * ldc + j])
                out[i * n + j] = alpha * s + old
                mag[i * n + j] = abs(alpha) * sa + abs(old)
            }
        }
        return (out, mag)
    }

    static func gelu(_ x: Double) -> Double {
        0.5 * x * (1 + tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)))
    }

    /// PyTorch's nn.GELU(): 0.5 x (1 + erf(x / sqrt 2)), with the C library's double erf.
    static func geluExact(_ x: Double) -> Double {
        0.5 * x * (1 + Foundation.erf(x / 2.0.squareRoot()))
    }

    static func geluDerivative(_ x: Double) -> Double {
        let s = 0.7978845608028654, u = s * (x + 0.044715 * x * x * x), t = tanh(u)
        return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * s * (1 + 3 * 0.044715 * x * x)
    }

    static func softmax(_ row: [Double]) -> [Double] {
        let m = row.max() ?? 0
        let e = row.map { Foundation.exp($0 - m) }
        let s = e.reduce(0, +)
        return e.map { $0 / s }
    }

    /// (y, mean, rstd) for one row.
    static func layerNorm(_ row: [Double], weight: [Double], bias: [Double]?) -> ([Double], Double, Double) {
        let n = Double(row.count)
        let mean = row.reduce(0, +) / n
        let variance = row.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / n
        let rstd = 1 / (variance + 1e-5).squareRoot()
        let y = row.indices.map { (row[$0] - mean) * rstd * weight[$0] + (bias?[$0] ?? 0) }
        return (y, mean, rstd)
    }
}

import Foundation
