// Vector exp, tanh and square root on SIMD16<Float>, plus unaligned load/store helpers used by every kernel.
// The stdlib has no vector transcendental functions and scalar expf/tanhf cost ~10-20 ns each, which
// would dominate GELU and softmax. exp uses the Cephes range reduction x = n ln2 + r with a degree-6
// polynomial for e^r (about 2 ulp), builds 2^n from the exponent bits, and rounds with the
// 1.5 * 2^23 trick so no float-to-int conversion instruction is needed.

import CShims

/// Lane-wise square root, one vsqrtps: SIMD.squareRoot() compiles to 16 scalar square roots, each with
/// a call to sqrtf on its NaN path (AdamW's update took 3.5x the time of streaming its bytes).
@inline(__always) public func vectorSquareRoot(_ v: SIMD16<Float>) -> SIMD16<Float> { ddp_sqrt16(v) }

@inline(__always) public func load16(_ p: UnsafePointer<Float>) -> SIMD16<Float> {
    UnsafeRawPointer(p).loadUnaligned(as: SIMD16<Float>.self)
}

@inline(__always) public func store16(_ p: UnsafeMutablePointer<Float>, _ v: SIMD16<Float>) {
    UnsafeMutableRawPointer(p).storeBytes(of: v, as: SIMD16<Float>.self)
}

/// Lane-wise maximum of two computed vectors, a < b ? b : a: one vmaxps a register (CShims). Swift's
/// pointwiseMax of two computed operands is a lane loop (measured ~17x slower), and its compare and
/// blend, out of line, ran 4 lanes at a time.
@inline(__always) public func vectorMax(_ a: SIMD16<Float>, _ b: SIMD16<Float>) -> SIMD16<Float> { ddp_max16(a, b) }

/// Lane-wise minimum, b < a ? b : a, as vectorMax.
@inline(__always) public func vectorMin(_ a: SIMD16<Float>, _ b: SIMD16<Float>) -> SIMD16<Float> { ddp_min16(a, b) }

/// v's first `count` lanes, the rest `fill`.
@inline(__always) public func firstLanes(_ v: SIMD16<Float>, _ count: Int, fill: Float) -> SIMD16<Float> {
    ddp_first_lanes16(v, Int32(count), fill)
}

/// The sum of v's lanes by halving (16 -> 8 -> 4 -> 2 -> 1): SIMD.sum() is an out-of-line call that
/// adds the 16 lanes one after another (16 dependent adds), once per softmax and LayerNorm row.
@inline(__always) public func horizontalSum(_ v: SIMD16<Float>) -> Float {
    let eight = v.lowHalf + v.highHalf, four = eight.lowHalf + eight.highHalf, two = four.lowHalf + four.highHalf
    return two[0] + two[1]
}

/// The largest of v's lanes by halving, as horizontalSum (SIMD.max() walks the lanes one by one).
@inline(__always) public func horizontalMax(_ v: SIMD16<Float>) -> Float {
    let eight = v.lowHalf.replacing(with: v.highHalf, where: v.lowHalf .< v.highHalf)
    let four = eight.lowHalf.replacing(with: eight.highHalf, where: eight.lowHalf .< eight.highHalf)
    let two = four.lowHalf.replacing(with: four.highHalf, where: four.lowHalf .< four.highHalf)
    return two[0] < two[1] ? two[1] : two[0]
}

@inline(__always) public func vectorExp(_ input: SIMD16<Float>) -> SIMD16<Float> {
    typealias V = SIMD16<Float>
    // Compare and blend: SIMD.clamped, and pointwiseMin/Max where not inlined into a caller that folds
    // the constant, are compiled to lane loops (seen out of line in softmaxRow: 4 % of a GPT step).
    let x = vectorMax(vectorMin(input, V(repeating: 88.0)), V(repeating: -87.33654))
    let shifter = V(repeating: 12582912.0) // 1.5 * 2^23: adding it rounds to an integer in the low bits
    let shifted = shifter.addingProduct(x, V(repeating: 1.44269504088896341))
    let n = shifted - shifter
    let r = x.addingProduct(n, V(repeating: -0.693359375)).addingProduct(n, V(repeating: 2.12194440e-4))
    var p = V(repeating: 1.3981999507e-3).addingProduct(r, V(repeating: 1.9875691500e-4))
    p = V(repeating: 8.3334519073e-3).addingProduct(p, r)
    p = V(repeating: 4.1665795894e-2).addingProduct(p, r)
    p = V(repeating: 1.6666665459e-1).addingProduct(p, r)
    p = V(repeating: 5.0000001201e-1).addingProduct(p, r)
    p = (r + 1).addingProduct(p, r * r)
    let bits = unsafeBitCast(shifted, to: SIMD16<UInt32>.self)
    let scale = unsafeBitCast((bits &- 0x4B40_0000 &+ 127) &<< 23, to: V.self)
    return p * scale
}

/// tanh(u) = 1 - 2 / (e^{2u} + 1): saturates cleanly to +-1 because vectorExp clamps its input
/// (to [-87.3, 88], where 2^n stays a normal float).
@inline(__always) public func vectorTanh(_ u: SIMD16<Float>) -> SIMD16<Float> {
    1 - 2 / (vectorExp(u + u) + 1)
}
