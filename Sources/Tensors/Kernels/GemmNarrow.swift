// Narrow GEMM: op(B) only a few columns wide (the MLP's output layer, x[64, 256] W^T with W [10, 256]).
// The panel kernels vectorize along N, so 10 columns fill 10 of 16 lanes and every tile is an edge
// tile. Here each C element is a dot product along K instead, 8 lanes of K at a time, which fills every
// lane whatever N is: a 2-row x 5-column tile keeps 10 accumulators, and each k step loads 2 vectors
// of A and 5 of op(B)^T for 10 FMAs (10 columns are two whole tiles). It needs both operands contiguous
// along K: A untransposed (rows read in place) and op(B)^T, which is B itself when B is stored
// transposed and otherwise a small packed copy (N x K). A last tile of one row repeats it and drops the
// duplicate results; a tile of fewer columns skips the rest.

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
        let rows = min(2, m - i)
        let a0 = a + i * lda, a1 = a + (i + rows - 1) * lda
        var j = 0
        while j < n {
            let cols = min(5, n - j)
            let bj = bt + j * ldbt
            // A literal column count per call lets the inlined kernel drop the unused accumulators.
            let sums: DotSums
            switch cols {
            case 5: sums = dotTile(k: k, columns: 5, a0, a1, bj, ldbt)
            case 4: sums = dotTile(k: k, columns: 4, a0, a1, bj, ldbt)
            case 3: sums = dotTile(k: k, columns: 3, a0, a1, bj, ldbt)
            case 2: sums = dotTile(k: k, columns: 2, a0, a1, bj, ldbt)
            default: sums = dotTile(k: k, columns: 1, a0, a1, bj, ldbt)
            }
            for r in 0..<rows {
                let row = c + (i + r) * ldc + j
                let firstFour = r == 0 ? sums.row0 : sums.row1
                if cols >= 4 {
                    // The row's first 4 results side by side: one vector store, not 4 lane extractions.
                    let raw = UnsafeMutableRawPointer(row)
                    raw.storeBytes(of: combine(raw.loadUnaligned(as: SIMD4<Float>.self), alpha * firstFour, beta: beta), as: SIMD4<Float>.self)
                    if cols == 5 { row[4] = combine(row[4], alpha * sums.column4[r], beta: beta) }
                } else {
                    for q in 0..<cols { row[q] = combine(row[q], alpha * firstFour[q], beta: beta) }
                }
            }
            j += 5
        }
        i += 2
    }
}

/// The 2 x 5 sums of a tile: each row's first 4 columns side by side (stored into C's row as they are;
/// sums with the two rows interleaved, extracted lane by lane, were a quarter of 64x256x10 NT's time on
/// a Zen 4: 64x256x10 NT 64-70 -> 80-85 GFLOP/s), column 4's two rows in lanes 0-1.
struct DotSums {
    var row0: SIMD4<Float>, row1: SIMD4<Float>, column4: SIMD4<Float>
}

/// Dot products of 2 rows of A with the first `columns` (1...5) rows of op(B)^T (rows ldb apart) over k.
/// Both rows of A stay in registers and each row of op(B)^T is loaded once and used at once: 10
/// accumulators, 2 vectors of A and 1 of B, well inside AVX2's 16 registers (a 4 x 3 tile needed 17
/// live vectors, and the compiler spilled two accumulators to the stack every step).
@inline(__always)
private func dotTile(k: Int, columns: Int, _ a0: UnsafePointer<Float>, _ a1: UnsafePointer<Float>,
                     _ b: UnsafePointer<Float>, _ ldb: Int) -> DotSums {
    typealias V = SIMD8<Float>
    @inline(__always) func load(_ p: UnsafePointer<Float>) -> V { UnsafeRawPointer(p).loadUnaligned(as: V.self) }
    var c00 = V(), c10 = V(), c01 = V(), c11 = V(), c02 = V(), c12 = V(), c03 = V(), c13 = V(), c04 = V(), c14 = V()
    let b0 = b, b1 = b + min(1, columns - 1) * ldb, b2 = b + min(2, columns - 1) * ldb
    let b3 = b + min(3, columns - 1) * ldb, b4 = b + min(4, columns - 1) * ldb
    var p = 0
    while p + 8 <= k {
        let x0 = load(a0 + p), x1 = load(a1 + p)
        var y = load(b0 + p); c00 = c00.addingProduct(x0, y); c10 = c10.addingProduct(x1, y)
        if columns > 1 { y = load(b1 + p); c01 = c01.addingProduct(x0, y); c11 = c11.addingProduct(x1, y) }
        if columns > 2 { y = load(b2 + p); c02 = c02.addingProduct(x0, y); c12 = c12.addingProduct(x1, y) }
        if columns > 3 { y = load(b3 + p); c03 = c03.addingProduct(x0, y); c13 = c13.addingProduct(x1, y) }
        if columns > 4 { y = load(b4 + p); c04 = c04.addingProduct(x0, y); c14 = c14.addingProduct(x1, y) }
        p += 8
    }
    var sums = DotSums(row0: laneSums(c00, c01, c02, c03), row1: laneSums(c10, c11, c12, c13), column4: laneSums(c04, c14, V(), V()))
    while p < k {
        let y = SIMD4(b0[p], b1[p], b2[p], b3[p])
        sums.row0 = sums.row0.addingProduct(a0[p], y)
        sums.row1 = sums.row1.addingProduct(a1[p], y)
        sums.column4 = sums.column4.addingProduct(SIMD4(a0[p], a1[p], 0, 0), b4[p])
        p += 1
    }
    return sums
}

/// [sum of a, sum of b, sum of c, sum of d] in three halving steps shared by the four vectors.
@inline(__always)
private func laneSums(_ a: SIMD8<Float>, _ b: SIMD8<Float>, _ c: SIMD8<Float>, _ d: SIMD8<Float>) -> SIMD4<Float> {
    let ab = SIMD8(lowHalf: a.lowHalf + a.highHalf, highHalf: b.lowHalf + b.highHalf)
    let cd = SIMD8(lowHalf: c.lowHalf + c.highHalf, highHalf: d.lowHalf + d.highHalf)
    let abcd = SIMD8(lowHalf: ab.evenHalf + ab.oddHalf, highHalf: cd.evenHalf + cd.oddHalf)
    return abcd.evenHalf + abcd.oddHalf
}
