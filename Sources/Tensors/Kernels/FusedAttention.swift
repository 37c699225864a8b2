// Causal attention fused per head, for head sizes that are multiples of 16 (the GPTs here: 16, 32, 64).
// Every product is a tile of the GEMM's 6 x 16 micro-kernel (GemmMicroKernels.swift) on operands read
// where they lie; only Kᵀ and Vᵀ are packed, once per head (hs × T floats each):
//   forward:  query rows in blocks of 6 (the T mod 6 left over first): their scores against the keys
//             up to the block's last row, 16 keys a tile, the causal softmax in place in a 6-row
//             scratch, then out = P V; each row's softmax shift and inverse sum are kept (2 floats a row);
//   backward: every row block's scores again, by the same instructions on the same inputs, and P from
//             them and the kept statistics in one pass (so the same bits as forward's), dP = dO Vᵀ and
//             dS = P (dP − rowsum(dP P)) / √hs kept for the whole head (2·T rows: 32 KiB at T 64),
//             dQ = dS K block by block; then dK = dSᵀ Q and dV = Pᵀ dO key block by key block, each
//             over the queries at or after its first key. Each block of dQ, dK and dV is one tile's
//             whole sum, so they are stored, not added (no zeroing pass before).
// Nothing T×T is kept from forward to backward (the recipe's 4 layers kept 3.1 MB of probabilities,
// 1/18 of the trainer's peak RSS) for a third more score work in backward, and nothing is transposed.
// The causal half above the diagonal is skipped (whole 16-key tiles; queries before a key block).
// With 4-row blocks of hand-written loops, dK and dV were rank-4 updates that loaded and stored their
// rows for every block: the recipe's attention ran at 41 % (forward) and 44 % (backward) of the peak.

/// Whether the fused kernels take a head size (else the GEMM formulation runs).
public func fusedAttentionApplies(headSize: Int) -> Bool { headSize > 0 && headSize % 16 == 0 }

/// Keys padded to whole groups of 64: rows of the scratch, and of packed Kᵀ and Vᵀ (zero past T).
@inline(__always) func paddedKeys(_ T: Int) -> Int { (T + 63) / 64 * 64 }

/// Scratch floats the fused kernels need for sequences of T and heads of hs: Kᵀ and Vᵀ, then P and dS
/// for T rows (forward uses 6 rows of P).
public func fusedAttentionScratchCount(time T: Int, headSize hs: Int) -> Int { (2 * hs + 2 * T) * paddedKeys(T) }

/// Rows of a block of queries (or keys): the micro-kernel's tile height.
private let blockRows = 6

/// c[r][0..<16] = Σ_{k < kc} A[r][k] · b[k * bStride ..< +16] for r < rows ≤ 6, A's element (r, k) at
/// a[r * rowStride + k * colStride]: one tile of the GEMM's micro-kernel. Called only by the two
/// functions below, each with one stride written in as a constant, so the kernel is compiled for it (a
/// tile function taking both strides, left to be inlined into the attention, was outlined once for
/// every call, its kernel computing each address from two run-time strides).
@inline(__always)
private func tile(rows: Int, kc: Int, _ a: UnsafePointer<Float>, rowStride: Int, colStride: Int, _ b: UnsafePointer<Float>,
                  bStride: Int, into c: UnsafeMutablePointer<Float>, ldc: Int) {
    if rows == blockRows {
        microKernel6x16(kc: kc, a: a, rowStride: rowStride, colStride: colStride, b: b, bStride: bStride, c: c, ldc: ldc,
                        alpha: 1, beta: 0)
    } else {
        microKernelRows(.simd8x6x16, rows: rows, kc: kc, a: a, rowStride: rowStride, colStride: colStride, b: b, bStride: bStride,
                        c: c, ldc: ldc, alpha: 1, beta: 0)
    }
}

/// A tile with A's rows in place: element (r, k) at a[r * lda + k].
@inline(never)
private func tileOfRows(rows: Int, kc: Int, _ a: UnsafePointer<Float>, lda: Int, _ b: UnsafePointer<Float>, bStride: Int,
                        into c: UnsafeMutablePointer<Float>, ldc: Int) {
    tile(rows: rows, kc: kc, a, rowStride: lda, colStride: 1, b, bStride: bStride, into: c, ldc: ldc)
}

/// A tile with A the transpose of what lies in memory: element (r, k) at a[r + k * lda], 6 floats of one
/// row per step.
@inline(never)
private func tileOfColumns(rows: Int, kc: Int, _ a: UnsafePointer<Float>, lda: Int, _ b: UnsafePointer<Float>, bStride: Int,
                           into c: UnsafeMutablePointer<Float>, ldc: Int) {
    tile(rows: rows, kc: kc, a, rowStride: 1, colStride: lda, b, bStride: bStride, into: c, ldc: ldc)
}

/// Rows of the block of queries starting at row r0: the T mod 6 rows left over come first, where they
/// see the fewest keys (the short block runs the slower short tile; last, it covered all T keys: at T 64
/// 32 score tiles a head, 28 with it first).
@inline(__always) private func queryBlockRows(from r0: Int, time T: Int) -> Int {
    r0 == 0 && T % blockRows != 0 ? T % blockRows : blockRows
}

/// Keys a block of queries ending before row `end` has scores for: whole 16-key tiles.
@inline(__always) private func keyTiles(upTo end: Int) -> Int { (end + 15) / 16 * 16 }

/// Row t of a causal block in vectors: its last vector starts at `last`, and its first `valid` lanes are
/// at or before the diagonal.
@inline(__always) func causalRowEnd(_ t: Int) -> (last: Int, valid: Int) {
    let last = t / 16 * 16
    return (last, t + 1 - last)
}

/// P's numerators e^(score·scale − shift) for 16 scores of a row. causalSoftmaxBlock and its replay in
/// backward (causalProbabilitiesBlock) both compute them here and in tailExponentials, so the same bits.
@inline(__always) func exponentials(_ scores: UnsafePointer<Float>, factor: SIMD16<Float>, shift: SIMD16<Float>) -> SIMD16<Float> {
    vectorExp(load16(scores) * factor - shift)
}

/// exponentials for a row's last vector: the lanes past the diagonal (from `valid` on) masked, −∞
/// before exp and 0 after.
@inline(__always) func tailExponentials(_ scores: UnsafePointer<Float>, valid: Int, factor: SIMD16<Float>,
                                        shift: SIMD16<Float>) -> SIMD16<Float> {
    firstLanes(vectorExp(firstLanes(load16(scores) * factor, valid, fill: -.infinity) - shift), valid, fill: 0)
}

/// Rows r0..<r0 + rows of P in place over their raw scores (row r at p + r * ldp): softmax over s ≤ t of
/// scores·scale for row t, zeros from t + 1 to `width` (a multiple of 16); row t's shift (its largest
/// scaled score) and inverse sum go to statistics[2t] and [2t + 1]. In whole vectors, the
/// lanes past t masked (−∞ before exp, 0 after): a row of 1–64 keys costs 1–4 vectors, where a
/// lane-by-lane tail (most of a causal row) cost as much again as the exponentials. The block's rows go
/// through each step together (maxima, then exponentials and sums, then the scaling): one row at a
/// time, each row's chain of horizontal maximum, exponentials, horizontal sum and reciprocal ran
/// alone, and the softmax took half the forward's time.
@inline(__always)
func causalSoftmaxBlock(_ p: UnsafeMutablePointer<Float>, ldp: Int, rows: Int, from r0: Int, scale: Float, width: Int,
                        keeping statistics: UnsafeMutablePointer<Float>) {
    typealias V = SIMD16<Float>
    @inline(__always) func last(_ r: Int) -> Int { causalRowEnd(r0 + r).last }
    @inline(__always) func valid(_ r: Int) -> Int { causalRowEnd(r0 + r).valid }
    let factor = V(repeating: scale)
    // The rows' shifts and inverse sums go straight to `statistics` (row r at 2r, 2r + 1): kept in SIMD8
    // lanes picked at run time, each was a compare, a blend and a round trip through the stack.
    let shifts = statistics + 2 * r0, inverses = shifts + 1
    for r in 0..<rows {
        let row = p + r * ldp
        assert(last(r) + 16 <= width, "row \(r0 + r) does not fit a width of \(width)")
        var top = firstLanes(load16(row + last(r)) * factor, valid(r), fill: -.infinity)
        for v in stride(from: 0, to: last(r), by: 16) { top = vectorMax(top, load16(row + v) * factor) }
        shifts[2 * r] = horizontalMax(top)
    }
    for r in 0..<rows {
        let row = p + r * ldp, shift = V(repeating: shifts[2 * r])
        var sums = tailExponentials(row + last(r), valid: valid(r), factor: factor, shift: shift)
        store16(row + last(r), sums)
        for v in stride(from: 0, to: last(r), by: 16) {
            let e = exponentials(row + v, factor: factor, shift: shift)
            store16(row + v, e); sums += e
        }
        inverses[2 * r] = 1 / horizontalSum(sums)
    }
    for r in 0..<rows {
        let row = p + r * ldp, inverse = V(repeating: inverses[2 * r])
        for v in stride(from: 0, through: last(r), by: 16) { store16(row + v, load16(row + v) * inverse) }
        zeroVectors(row + last(r) + 16, count: width - last(r) - 16)
    }
}

/// causalSoftmaxBlock's result from the row statistics it kept (each row's shift, the maximum of its
/// scaled scores, and the inverse of its sum of exponentials): one pass of the same instructions on the
/// same scores (exponentials, tailExponentials), so the same bits, without the maxima's pass, the sums
/// and the scaling pass.
@inline(__always)
func causalProbabilitiesBlock(_ p: UnsafeMutablePointer<Float>, ldp: Int, rows: Int, from r0: Int, scale: Float, width: Int,
                              kept statistics: UnsafePointer<Float>) {
    typealias V = SIMD16<Float>
    let factor = V(repeating: scale)
    for r in 0..<rows {
        let row = p + r * ldp, (last, valid) = causalRowEnd(r0 + r)
        let shift = V(repeating: statistics[2 * (r0 + r)]), inverse = V(repeating: statistics[2 * (r0 + r) + 1])
        store16(row + last, tailExponentials(row + last, valid: valid, factor: factor, shift: shift) * inverse)
        for v in stride(from: 0, to: last, by: 16) { store16(row + v, exponentials(row + v, factor: factor, shift: shift) * inverse) }
        zeroVectors(row + last + 16, count: width - last - 16)
    }
}

/// Rows r0..<r0 + rows (≤ 8) of dS in place in d (dP on entry, finite; row r at d + r * ld): row t is
/// P (dP − ⟨dP, P⟩) / √hs over s ≤ t, zero up to `width`. In whole vectors: P is zero past t, so those
/// lanes give zero. All the block's dot products first, as in causalSoftmaxBlock.
@inline(__always)
func causalScoreGradientBlock(_ p: UnsafePointer<Float>, _ d: UnsafeMutablePointer<Float>, ld: Int, rows: Int, from r0: Int,
                              scale: Float, width: Int) {
    typealias V = SIMD16<Float>
    @inline(__always) func span(_ r: Int) -> Int { (r0 + r + 16) / 16 * 16 }
    // Scalars, not SIMD8 lanes picked at run time (see causalSoftmaxBlock).
    withUnsafeTemporaryAllocation(of: Float.self, capacity: 8) { dots in
        for r in 0..<rows {
            var sums = V()
            for v in stride(from: 0, to: span(r), by: 16) { sums = sums.addingProduct(load16(p + r * ld + v), load16(d + r * ld + v)) }
            dots[r] = horizontalSum(sums)
        }
        let factor = V(repeating: scale)
        for r in 0..<rows {
            let pr = p + r * ld, dr = d + r * ld, dot = V(repeating: dots[r])
            for v in stride(from: 0, to: span(r), by: 16) { store16(dr + v, load16(pr + v) * (load16(dr + v) - dot) * factor) }
            zeroVectors(dr + span(r), count: width - span(r))
        }
    }
}

/// Zeroes `count` floats (a multiple of 16) in whole vectors: a row's tail is at most a few of them,
/// for which a call to memset cost more than the stores.
@inline(__always) func zeroVectors(_ p: UnsafeMutablePointer<Float>, count: Int) {
    for v in stride(from: 0, to: count, by: 16) { store16(p + v, SIMD16<Float>()) }
}

/// Packs columns [0, hs) of T rows (stride ld) transposed into [hs][paddedKeys(T)], zero past T: 8 x 8
/// blocks through registers (element by element, the two packs of a head's backward cost a sixth of
/// its time).
func packTransposed(_ x: UnsafePointer<Float>, ld: Int, rows T: Int, depth hs: Int, into t: UnsafeMutablePointer<Float>) {
    let ldt = paddedKeys(T), whole = T / 8 * 8
    for d in stride(from: 0, to: hs, by: 8) {
        for s in stride(from: 0, to: whole, by: 8) { transpose8x8(from: x + s * ld + d, stride: ld, to: t + d * ldt + s, stride: ldt) }
    }
    for d in 0..<hs {
        var source = x + whole * ld + d, column = t + d * ldt + whole
        for _ in whole..<T { column.pointee = source.pointee; column += 1; source += ld }
        for s in T..<ldt { t[d * ldt + s] = 0 }
    }
}

/// The raw scores of rows r0..<r0 + rows of one head, in `p` ([rows][ldk]), from its queries (stride ld)
/// and its packed Kᵀ: whole 16-key tiles up to the block's last row.
@inline(__always)
func scoreBlock(_ q: UnsafePointer<Float>, ld: Int, rows: Int, from r0: Int, _ kt: UnsafePointer<Float>, ldk: Int,
                depth hs: Int, into p: UnsafeMutablePointer<Float>) {
    for g in stride(from: 0, to: keyTiles(upTo: r0 + rows), by: 16) {
        tileOfRows(rows: rows, kc: hs, q + r0 * ld, lda: ld, kt + g, bStride: ldk, into: p + g, ldc: ldk)
    }
}

/// `statistics` receives each row's softmax shift and inverse sum, 2·T floats per head, for the backward.
func fusedAttentionForward(qkv: UnsafePointer<Float>, out: UnsafeMutablePointer<Float>, statistics: UnsafeMutablePointer<Float>,
                           scratch: UnsafeMutablePointer<Float>, batch B: Int, time T: Int, channels C: Int, heads NH: Int) {
    let hs = C / NH, ld = 3 * C, ldk = paddedKeys(T)
    let scale = 1 / Float(hs).squareRoot()
    let kt = scratch, p = scratch + hs * ldk
    for b in 0..<B {
        for h in 0..<NH {
            let head = AttentionHead(sequence: b, head: h, time: T, channels: C, heads: NH)
            let q = qkv + head.qkv, v = q + 2 * C
            packTransposed(q + C, ld: ld, rows: T, depth: hs, into: kt)
            var r0 = 0
            while r0 < T {
                let rows = queryBlockRows(from: r0, time: T)
                scoreBlock(q, ld: ld, rows: rows, from: r0, kt, ldk: ldk, depth: hs, into: p)
                causalSoftmaxBlock(p, ldp: ldk, rows: rows, from: r0, scale: scale, width: ldk, keeping: statistics + head.statistics)
                for d in stride(from: 0, to: hs, by: 16) {
                    tileOfRows(rows: rows, kc: r0 + rows, p, lda: ldk, v + d, bStride: ld,
                         into: out + head.out + r0 * C + d, ldc: C)
                }
                r0 += rows
            }
        }
    }
}

/// Overwrites dqkv (every element of it is written once).
func fusedAttentionBackward(dout: UnsafePointer<Float>, qkv: UnsafePointer<Float>, statistics: UnsafePointer<Float>,
                            dqkv: UnsafeMutablePointer<Float>, scratch: UnsafeMutablePointer<Float>,
                            batch B: Int, time T: Int, channels C: Int, heads NH: Int) {
    let hs = C / NH, ld = 3 * C, ldk = paddedKeys(T)
    let scale = 1 / Float(hs).squareRoot()
    let kt = scratch, vt = kt + hs * ldk, probabilities = vt + hs * ldk, gradients = probabilities + T * ldk
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
                let rows = queryBlockRows(from: r0, time: T)
                let p = probabilities + r0 * ldk, ds = gradients + r0 * ldk
                scoreBlock(q, ld: ld, rows: rows, from: r0, kt, ldk: ldk, depth: hs, into: p)
                causalProbabilitiesBlock(p, ldp: ldk, rows: rows, from: r0, scale: scale, width: ldk, kept: statistics + head.statistics)
                // dP = dO Vᵀ, then dS in place (zero past each row's diagonal, to the row's end).
                for g in stride(from: 0, to: keyTiles(upTo: r0 + rows), by: 16) {
                    tileOfRows(rows: rows, kc: hs, dO + r0 * C, lda: C, vt + g, bStride: ldk, into: ds + g, ldc: ldk)
                }
                causalScoreGradientBlock(p, ds, ld: ldk, rows: rows, from: r0, scale: scale, width: ldk)
                for d in stride(from: 0, to: hs, by: 16) {
                    tileOfRows(rows: rows, kc: r0 + rows, ds, lda: ldk, k + d, bStride: ld, into: dq + r0 * ld + d, ldc: ld)
                }
                r0 += rows
            }
            // Keys j0..<j0 + keys: dSᵀ and Pᵀ read in place (6 floats of a row per query), over the queries
            // from j0 on (the earlier ones are zero there).
            for j0 in stride(from: 0, to: T, by: blockRows) {
                let keys = min(blockRows, T - j0)
                for d in stride(from: 0, to: hs, by: 16) {
                    tileOfColumns(rows: keys, kc: T - j0, gradients + j0 * ldk + j0, lda: ldk, q + j0 * ld + d, bStride: ld,
                         into: dk + j0 * ld + d, ldc: ld)
                    tileOfColumns(rows: keys, kc: T - j0, probabilities + j0 * ldk + j0, lda: ldk, dO + j0 * C + d, bStride: C,
                         into: dv + j0 * ld + d, ldc: ld)
                }
            }
        }
    }
}
