// Causal attention fused per head, for head sizes that are multiples of 16 (the GPTs here: 16, 32, 64).
// Instead of three GEMMs per (batch, head) over the whole T×T square, query rows go in blocks of 4:
//   forward:  scores of the block's rows against the keys up to its last row (K packed transposed once
//             per head, 4 rows × 64 keys of accumulators in registers), the causal softmax in place in
//             a 4-row scratch, then out = P V over the same keys;
//   backward: the block's rows of P again, by the same instructions on the same inputs (so the same
//             bits as forward's), dP = dO Vᵀ, dS = P (dP − rowsum(dP P)) / √hs in a 4-row scratch,
//             then dQ += dS K, dK += dSᵀ Q and dV += Pᵀ dO accumulated row block by row block.
// Nothing T×T is kept from forward to backward (the recipe's 4 layers kept 3.1 MB of probabilities,
// 1/18 of the trainer's peak RSS) for a third more score work in backward, and nothing is transposed.
// The causal half above the diagonal is skipped (whole 16-key chunks), and no operand is packed except
// Kᵀ / Vᵀ (hs × T floats per head).

/// Whether the fused kernels take a head size (else the GEMM formulation runs).
public func fusedAttentionApplies(headSize: Int) -> Bool { headSize > 0 && headSize % 16 == 0 }

/// Keys padded to whole groups of 64 (4 vectors): the score block always computes a whole group.
@inline(__always) func paddedKeys(_ T: Int) -> Int { (T + 63) / 64 * 64 }

/// Scratch floats the fused kernels need for sequences of T and heads of hs: Kᵀ and Vᵀ, then 4 rows of
/// probabilities and 4 of their gradients.
public func fusedAttentionScratchCount(time T: Int, headSize hs: Int) -> Int { (2 * hs + 8) * paddedKeys(T) }

/// Whether scoreBlock goes 64 keys at a time (AVX-512's register file holds that block).
let wideScoreGroups = CPUFeatures.current.avx512f

/// s[r][k] = Σ_d a[r][d] bt[d][k] for rows r < R (≤ 4) and keys k < `keys` rounded up to 16; `bt` is
/// [hs][ldb], zero past the real keys. Rows past R repeat row 0 and are not stored. Keys go 64 at a time
/// (16 accumulators), the rest 16 at a time: the causal block of rows r0..<r0+4 needs r0 + 4 keys, so
/// rounding to 64 computed the whole square for T = 64 (1.6x the scores a 16-key rounding needs).
@inline(__always)
func scoreBlock(_ a: UnsafePointer<Float>, lda: Int, rows R: Int, _ bt: UnsafePointer<Float>, ldb: Int, depth hs: Int, keys: Int,
                into s: UnsafeMutablePointer<Float>, lds: Int) {
    typealias V = SIMD16<Float>
    let a0 = a, a1 = a + (R > 1 ? lda : 0), a2 = a + (R > 2 ? 2 * lda : 0), a3 = a + (R > 3 ? 3 * lda : 0)
    let needed = (keys + 15) / 16 * 16
    var g = 0
    // 64 keys hold 16 SIMD16 accumulators: 16 zmm on AVX-512, but 32 ymm on AVX2, which has 16, so
    // there they spilled to the stack at every step; 16 keys at a time need 8.
    while wideScoreGroups && g + 64 <= needed {
        var s00 = V(), s01 = V(), s02 = V(), s03 = V(), s10 = V(), s11 = V(), s12 = V(), s13 = V()
        var s20 = V(), s21 = V(), s22 = V(), s23 = V(), s30 = V(), s31 = V(), s32 = V(), s33 = V()
        var b = bt + g
        for d in 0..<hs {
            let k0 = load16(b), k1 = load16(b + 16), k2 = load16(b + 32), k3 = load16(b + 48)
            let q0 = V(repeating: a0[d]), q1 = V(repeating: a1[d]), q2 = V(repeating: a2[d]), q3 = V(repeating: a3[d])
            s00 = s00.addingProduct(q0, k0); s01 = s01.addingProduct(q0, k1); s02 = s02.addingProduct(q0, k2); s03 = s03.addingProduct(q0, k3)
            s10 = s10.addingProduct(q1, k0); s11 = s11.addingProduct(q1, k1); s12 = s12.addingProduct(q1, k2); s13 = s13.addingProduct(q1, k3)
            s20 = s20.addingProduct(q2, k0); s21 = s21.addingProduct(q2, k1); s22 = s22.addingProduct(q2, k2); s23 = s23.addingProduct(q2, k3)
            s30 = s30.addingProduct(q3, k0); s31 = s31.addingProduct(q3, k1); s32 = s32.addingProduct(q3, k2); s33 = s33.addingProduct(q3, k3)
            b += ldb
        }
        let out = s + g
        store16(out, s00); store16(out + 16, s01); store16(out + 32, s02); store16(out + 48, s03)
        if R > 1 { store16(out + lds, s10); store16(out + lds + 16, s11); store16(out + lds + 32, s12); store16(out + lds + 48, s13) }
        if R > 2 { let o = out + 2 * lds; store16(o, s20); store16(o + 16, s21); store16(o + 32, s22); store16(o + 48, s23) }
        if R > 3 { let o = out + 3 * lds; store16(o, s30); store16(o + 16, s31); store16(o + 32, s32); store16(o + 48, s33) }
        g += 64
    }
    // The rest, 16 keys at a time: the same product as mixBlock's, with the depth as its sum.
    if g < needed {
        mixBlock(a, ldp: lda, rows: R, bt + g, ldv: ldb, depth: needed - g, keys: hs, into: s + g, ldo: lds, accumulate: false)
    }
}

/// out[r] (+)= Σ_{k < keys} p[r][k] v[k] for rows r < R (≤ 4), hs in chunks of 16.
@inline(__always)
func mixBlock(_ p: UnsafePointer<Float>, ldp: Int, rows R: Int, _ v: UnsafePointer<Float>, ldv: Int, depth hs: Int, keys: Int,
              into out: UnsafeMutablePointer<Float>, ldo: Int, accumulate: Bool) {
    typealias V = SIMD16<Float>
    let p0 = p, p1 = p + (R > 1 ? ldp : 0), p2 = p + (R > 2 ? 2 * ldp : 0), p3 = p + (R > 3 ? 3 * ldp : 0)
    var h = 0
    while h < hs {
        var o0 = V(), o1 = V(), o2 = V(), o3 = V()
        var row = v + h
        for k in 0..<keys {
            let x = load16(row)
            o0 = o0.addingProduct(V(repeating: p0[k]), x); o1 = o1.addingProduct(V(repeating: p1[k]), x)
            o2 = o2.addingProduct(V(repeating: p2[k]), x); o3 = o3.addingProduct(V(repeating: p3[k]), x)
            row += ldv
        }
        let target = out + h
        store16(target, accumulate ? load16(target) + o0 : o0)
        if R > 1 { store16(target + ldo, accumulate ? load16(target + ldo) + o1 : o1) }
        if R > 2 { store16(target + 2 * ldo, accumulate ? load16(target + 2 * ldo) + o2 : o2) }
        if R > 3 { store16(target + 3 * ldo, accumulate ? load16(target + 3 * ldo) + o3 : o3) }
        h += 16
    }
}

/// y[k] += Σ_{r < R} p[r][k] x[r] for keys k < `keys`, hs in chunks of 16 (the transposed product,
/// accumulated without transposing p).
@inline(__always)
func scatterBlock(_ p: UnsafePointer<Float>, ldp: Int, rows R: Int, _ x: UnsafePointer<Float>, ldx: Int, depth hs: Int, keys: Int,
                  into y: UnsafeMutablePointer<Float>, ldy: Int) {
    typealias V = SIMD16<Float>
    // Rows past R count with weight zero: their p is never read (the weights below are 0 for them).
    let p0 = p, p1 = p + (R > 1 ? ldp : 0), p2 = p + (R > 2 ? 2 * ldp : 0), p3 = p + (R > 3 ? 3 * ldp : 0)
    let w1: Float = R > 1 ? 1 : 0, w2: Float = R > 2 ? 1 : 0, w3: Float = R > 3 ? 1 : 0
    var h = 0
    while h < hs {
        let x0 = load16(x + h), x1 = load16(x + (R > 1 ? ldx : 0) + h) * w1
        let x2 = load16(x + (R > 2 ? 2 * ldx : 0) + h) * w2, x3 = load16(x + (R > 3 ? 3 * ldx : 0) + h) * w3
        var row = y + h
        for k in 0..<keys {
            var acc = load16(row)
            acc = acc.addingProduct(V(repeating: p0[k]), x0); acc = acc.addingProduct(V(repeating: p1[k]), x1)
            acc = acc.addingProduct(V(repeating: p2[k]), x2); acc = acc.addingProduct(V(repeating: p3[k]), x3)
            store16(row, acc)
            row += ldy
        }
        h += 16
    }
}

/// Lanes of a row's last vector that lie at or before the diagonal (column t of row t).
@inline(__always) func lanesUpTo(_ count: Int) -> SIMDMask<SIMD16<Int32>> {
    SIMD16<Int32>(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15) .< SIMD16<Int32>(repeating: Int32(count))
}

/// Row t of P in place over its raw scores: softmax over s ≤ t of scores·scale, zeros from t + 1 to
/// `width` (a multiple of 16: the rows live in the [4][paddedKeys] scratch). In whole vectors, the
/// lanes past t masked (−∞ before exp, 0 after): a row of 1–64 keys costs 1–4 vectors, where a
/// lane-by-lane tail (most of a causal row) cost as much again as the exponentials.
@inline(__always)
func causalSoftmaxRow(_ p: UnsafeMutablePointer<Float>, scale: Float, row t: Int, width: Int) {
    typealias V = SIMD16<Float>
    let vectors = (t + 16) / 16, last = 16 * (vectors - 1)
    assert(16 * vectors <= width, "row \(t) does not fit a width of \(width)")
    let factor = V(repeating: scale), valid = lanesUpTo(t + 1 - last)
    let tail = (load16(p + last) * factor).replacing(with: -.infinity, where: .!valid)
    var top = tail
    for v in stride(from: 0, to: last, by: 16) { top = vectorMax(top, load16(p + v) * factor) }
    let shift = V(repeating: horizontalMax(top))
    var sums = vectorExp(tail - shift).replacing(with: 0, where: .!valid)
    store16(p + last, sums)
    for v in stride(from: 0, to: last, by: 16) {
        let e = vectorExp(load16(p + v) * factor - shift)
        store16(p + v, e); sums += e
    }
    let inverse = V(repeating: 1 / horizontalSum(sums))
    for v in stride(from: 0, through: last, by: 16) { store16(p + v, load16(p + v) * inverse) }
    (p + last + 16).update(repeating: 0, count: width - last - 16)
}

/// Row t of dS in place in d (dP on entry, finite): P (dP − ⟨dP, P⟩) / √hs over s ≤ t, zero up to
/// `width`. In whole vectors: p and d are rows of the [4][paddedKeys] scratch, and P is zero past t,
/// so those lanes give zero.
@inline(__always)
func causalScoreGradientRow(_ p: UnsafePointer<Float>, _ d: UnsafeMutablePointer<Float>, row t: Int, scale: Float, width: Int) {
    typealias V = SIMD16<Float>
    let span = (t + 16) / 16 * 16
    var dots = V()
    for v in stride(from: 0, to: span, by: 16) { dots = dots.addingProduct(load16(p + v), load16(d + v)) }
    let dot = V(repeating: horizontalSum(dots)), factor = V(repeating: scale)
    for v in stride(from: 0, to: span, by: 16) { store16(d + v, load16(p + v) * (load16(d + v) - dot) * factor) }
    if width > span { (d + span).update(repeating: 0, count: width - span) }
}

/// Packs columns [0, hs) of T rows (stride ld) transposed into [hs][paddedKeys(T)], zero past T.
func packTransposed(_ x: UnsafePointer<Float>, ld: Int, rows T: Int, depth hs: Int, into t: UnsafeMutablePointer<Float>) {
    let ldt = paddedKeys(T)
    for d in 0..<hs {
        // Pointer steps: an overflow-checked s * ld per element made this a fifth of the forward.
        var source = x + d, column = t + d * ldt
        for _ in 0..<T { column.pointee = source.pointee; column += 1; source += ld }
        column.update(repeating: 0, count: ldt - T)
    }
}

/// Rows r0..<r0 + rows of one head's P, in place in `p` ([4][ldk], zero past each row's diagonal), from
/// its queries (stride ld) and its packed Kᵀ. Forward and backward both call this: the same bits.
@inline(__always)
func probabilityBlock(_ q: UnsafePointer<Float>, ld: Int, rows: Int, from r0: Int, _ kt: UnsafePointer<Float>, ldk: Int,
                      depth hs: Int, scale: Float, into p: UnsafeMutablePointer<Float>) {
    scoreBlock(q + r0 * ld, lda: ld, rows: rows, kt, ldb: ldk, depth: hs, keys: r0 + rows, into: p, lds: ldk)
    for r in 0..<rows { causalSoftmaxRow(p + r * ldk, scale: scale, row: r0 + r, width: ldk) }
}

func fusedAttentionForward(qkv: UnsafePointer<Float>, out: UnsafeMutablePointer<Float>,
                           scratch: UnsafeMutablePointer<Float>, batch B: Int, time T: Int, channels C: Int, heads NH: Int) {
    let hs = C / NH, ld = 3 * C, ldk = paddedKeys(T)
    let scale = 1 / Float(hs).squareRoot()
    let kt = scratch, p = scratch + hs * ldk
    for b in 0..<B {
        for h in 0..<NH {
            let head = AttentionHead(sequence: b, head: h, time: T, channels: C, heads: NH)
            let q = qkv + head.qkv, k = q + C, v = q + 2 * C
            packTransposed(k, ld: ld, rows: T, depth: hs, into: kt)
            var r0 = 0
            while r0 < T {
                let rows = min(4, T - r0), keys = r0 + rows
                probabilityBlock(q, ld: ld, rows: rows, from: r0, kt, ldk: ldk, depth: hs, scale: scale, into: p)
                mixBlock(p, ldp: ldk, rows: rows, v, ldv: ld, depth: hs, keys: keys, into: out + head.out + r0 * C,
                         ldo: C, accumulate: false)
                r0 += 4
            }
        }
    }
}

func fusedAttentionBackward(dout: UnsafePointer<Float>, qkv: UnsafePointer<Float>,
                            dqkv: UnsafeMutablePointer<Float>, scratch: UnsafeMutablePointer<Float>,
                            batch B: Int, time T: Int, channels C: Int, heads NH: Int) {
    let hs = C / NH, ld = 3 * C, ldk = paddedKeys(T)
    let scale = 1 / Float(hs).squareRoot()
    let kt = scratch, vt = kt + hs * ldk, p = vt + hs * ldk, gradients = p + 4 * ldk
    for b in 0..<B {
        for h in 0..<NH {
            let head = AttentionHead(sequence: b, head: h, time: T, channels: C, heads: NH)
            let q = qkv + head.qkv, k = q + C, v = q + 2 * C
            let dq = dqkv + head.qkv, dk = dq + C, dv = dq + 2 * C
            let dO = dout + head.out
            packTransposed(k, ld: ld, rows: T, depth: hs, into: kt)
            packTransposed(v, ld: ld, rows: T, depth: hs, into: vt)
            var r0 = 0
            while r0 < T {
                let rows = min(4, T - r0), keys = r0 + rows
                probabilityBlock(q, ld: ld, rows: rows, from: r0, kt, ldk: ldk, depth: hs, scale: scale, into: p)
                // dP = dO Vᵀ, then dS in place (zero past each row's diagonal).
                scoreBlock(dO + r0 * C, lda: C, rows: rows, vt, ldb: ldk, depth: hs, keys: keys, into: gradients, lds: ldk)
                for r in 0..<rows { causalScoreGradientRow(p + r * ldk, gradients + r * ldk, row: r0 + r, scale: scale, width: keys) }
                mixBlock(gradients, ldp: ldk, rows: rows, k, ldv: ld, depth: hs, keys: keys, into: dq + r0 * ld, ldo: ld, accumulate: true)
                scatterBlock(gradients, ldp: ldk, rows: rows, q + r0 * ld, ldx: ld, depth: hs, keys: keys, into: dk, ldy: ld)
                scatterBlock(p, ldp: ldk, rows: rows, dO + r0 * C, ldx: C, depth: hs, keys: keys, into: dv, ldy: ld)
                r0 += 4
            }
        }
    }
}
