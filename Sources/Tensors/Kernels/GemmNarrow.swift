// Narrow GEMM: op(B) only a few columns wide (the MLP's output layer, x[64, 256] W^T with W [10, 256]).
// The panel kernels vectorize along N, so 10 columns fill 10 of 16 lanes and every tile is an edge
// tile. Here each C element is a dot product along K instead, 8 lanes of K at a time, which fills every
// lane whatever N is: a 4-row x 3-column tile keeps 12 accumulators, and each k step loads 4 vectors
// of A and 3 of op(B)^T for 12 FMAs. It needs both operands contiguous along K: A untransposed (rows
// read in place) and op(B)^T, which is B itself when B is stored transposed and otherwise a small
// packed copy (N x K). Edge tiles repeat the last row and drop its duplicate results; a tile
// of 1 or 2 columns skips the rest.

/// Whether C = op(A) op(B) goes through the dot-product kernel: op(B) narrow enough that the panel
/// kernels would leave a third of their lanes idle, K long enough to amortize the horizontal sums.
func takesNarrowPath(_ transA: Transpose, n: Int, k: Int) -> Bool { transA == .none && n <= 12 && k >= 32 }

func gemmNarrow(_ transB: Transpose, m: Int, n: Int, k: Int, alpha: Float, a: UnsafePointer<Float>, lda: Int,
                b: UnsafePointer<Float>, ldb: Int, beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int) {
    var bt = b, ldbt = ldb
    if transB == .none {
        // op(B)^T rows are B's columns: gathered once (N x K floats, a tenth of A's size here), 8 x 8
        // blocks transposed in registers (element by element, 64x256x10 NN ran at 32.4 GFLOP/s, now 35.5).
        let packed = GemmScratch.forThisThread(floats: n * k)
        var j = 0
        while j + 8 <= n {
            var p = 0
            while p + 8 <= k {
                transpose8x8(from: b + p * ldb + j, stride: ldb, to: packed + j * k + p, stride: k)
                p += 8
            }
            for q in p..<k { for c in 0..<8 { packed[(j + c) * k + q] = b[q * ldb + j + c] } }
            j += 8
        }
        for p in 0..<k where j < n {
            let row = b + p * ldb
            for c in j..<n { packed[c * k + p] = row[c] }
        }
        bt = UnsafePointer(packed); ldbt = k
    }
    var i = 0
    while i < m {
        let rows = min(4, m - i)
        let a0 = a + i * lda
        let a1 = a + (i + min(1, rows - 1)) * lda, a2 = a + (i + min(2, rows - 1)) * lda, a3 = a + (i + min(3, rows - 1)) * lda
        var j = 0
        while j < n {
            let cols = min(3, n - j)
            let b0 = bt + j * ldbt, b1 = bt + (j + min(1, cols - 1)) * ldbt, b2 = bt + (j + min(2, cols - 1)) * ldbt
            // A literal column count per call lets the inlined kernel drop the unused accumulators.
            let (s0, s1, s2) = cols == 3 ? dotTile(k: k, columns: 3, a0, a1, a2, a3, b0, b1, b2)
                : cols == 2 ? dotTile(k: k, columns: 2, a0, a1, a2, a3, b0, b1, b2)
                : dotTile(k: k, columns: 1, a0, a1, a2, a3, b0, b1, b2)
            for r in 0..<rows {
                let row = c + (i + r) * ldc + j
                row[0] = combine(row[0], alpha * s0[r], beta: beta)
                if cols > 1 { row[1] = combine(row[1], alpha * s1[r], beta: beta) }
                if cols > 2 { row[2] = combine(row[2], alpha * s2[r], beta: beta) }
            }
            j += 3
        }
        i += 4
    }
}

/// Dot products of 4 rows of A with the first `columns` (1...3) rows of op(B)^T over k: one SIMD4 per
/// column, lane r = row r; the columns past `columns` are left zero.
@inline(__always)
private func dotTile(k: Int, columns: Int, _ a0: UnsafePointer<Float>, _ a1: UnsafePointer<Float>, _ a2: UnsafePointer<Float>,
                        _ a3: UnsafePointer<Float>, _ b0: UnsafePointer<Float>, _ b1: UnsafePointer<Float>,
                        _ b2: UnsafePointer<Float>) -> (SIMD4<Float>, SIMD4<Float>, SIMD4<Float>) {
    typealias V = SIMD8<Float>
    @inline(__always) func load(_ p: UnsafePointer<Float>) -> V { UnsafeRawPointer(p).loadUnaligned(as: V.self) }
    var c00 = V(), c01 = V(), c02 = V(), c10 = V(), c11 = V(), c12 = V()
    var c20 = V(), c21 = V(), c22 = V(), c30 = V(), c31 = V(), c32 = V()
    var p = 0
    while p + 8 <= k {
        let x0 = load(a0 + p), x1 = load(a1 + p), x2 = load(a2 + p), x3 = load(a3 + p)
        let y0 = load(b0 + p)
        c00 = c00.addingProduct(x0, y0); c10 = c10.addingProduct(x1, y0); c20 = c20.addingProduct(x2, y0); c30 = c30.addingProduct(x3, y0)
        if columns > 1 {
            let y1 = load(b1 + p)
            c01 = c01.addingProduct(x0, y1); c11 = c11.addingProduct(x1, y1); c21 = c21.addingProduct(x2, y1); c31 = c31.addingProduct(x3, y1)
        }
        if columns > 2 {
            let y2 = load(b2 + p)
            c02 = c02.addingProduct(x0, y2); c12 = c12.addingProduct(x1, y2); c22 = c22.addingProduct(x2, y2); c32 = c32.addingProduct(x3, y2)
        }
        p += 8
    }
    var s0 = laneSums(c00, c10, c20, c30), s1 = laneSums(c01, c11, c21, c31), s2 = laneSums(c02, c12, c22, c32)
    while p < k {
        let x = SIMD4(a0[p], a1[p], a2[p], a3[p])
        s0 = s0.addingProduct(x, b0[p])
        if columns > 1 { s1 = s1.addingProduct(x, b1[p]) }
        if columns > 2 { s2 = s2.addingProduct(x, b2[p]) }
        p += 1
    }
    return (s0, s1, s2)
}

/// [sum of a, sum of b, sum of c, sum of d] in three halving steps shared by the four vectors.
@inline(__always)
private func laneSums(_ a: SIMD8<Float>, _ b: SIMD8<Float>, _ c: SIMD8<Float>, _ d: SIMD8<Float>) -> SIMD4<Float> {
    let ab = SIMD8(lowHalf: a.lowHalf + a.highHalf, highHalf: b.lowHalf + b.highHalf)
    let cd = SIMD8(lowHalf: c.lowHalf + c.highHalf, highHalf: d.lowHalf + d.highHalf)
    let abcd = SIMD8(lowHalf: ab.evenHalf + ab.oddHalf, highHalf: cd.evenHalf + cd.oddHalf)
    return abcd.evenHalf + abcd.oddHalf
}
