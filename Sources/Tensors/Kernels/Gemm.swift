import CShims

// SGEMM: C[M,N] = alpha * op(A)[M,K] * op(B)[K,N] + beta * C, all row-major with leading dimensions.
//
// Shape of the algorithm (Goto/BLIS): the K dimension is cut into slabs of `kc`, N into blocks of
// `nc`, M into blocks of `mc`. For each (K slab, N block) the slab of op(B) is packed once into
// column panels `nr` wide, stored k-major so the micro-kernel streams it linearly; for each M block
// the slab of op(A) is packed into row panels `mr` tall, also k-major. The micro-kernel then keeps an
// mr x nr tile of C in registers across the whole slab. Packing absorbs the transposes, so one
// micro-kernel serves all four transpose combinations; zero padding in the panels absorbs the edges,
// tiles short of rows multiply and store only the rows they have, and tiles short of columns go through
// a small scratch tile so that C is never written out of bounds.
// beta is applied by the first K slab's micro-kernel as it stores its tile (beta 0 never reads C, so no
// separate pass zeroes or scales C); later slabs accumulate. Slabs and blocks are cut evenly (K = 784 is
// 4 slabs of 196, not 3 of 256 and one of 16, whose tile stores would cost as much as its multiply).
// Pack buffers are kept per thread (GemmScratch.swift), not allocated per call.

public enum Transpose: Sendable {
    case none, transposed
}

public struct GemmBlocking: Sendable, Equatable {
    public var mc: Int
    public var kc: Int
    public var nc: Int
    public init(mc: Int, kc: Int, nc: Int) { self.mc = mc; self.kc = kc; self.nc = nc }
}

/// A register-blocked micro-kernel; its tile must fit the vector register file of the CPU.
public enum GemmMicroKernel: Sendable, CaseIterable, CustomStringConvertible {
    /// 6x16 tile in 12 SIMD8 accumulators: fits the 16 ymm registers of AVX2.
    case simd8x6x16
    /// 6x32 tile in 12 SIMD16 accumulators: fits the 32 zmm registers of AVX-512.
    case simd16x6x32

    public var mr: Int { 6 }
    public var nr: Int { self == .simd8x6x16 ? 16 : 32 }

    /// The kernel that suits the CPU we are running on and the one this build was compiled for, chosen
    /// once: it is every GEMM call's default.
    public static let native: GemmMicroKernel = CPUFeatures.current.avx512f && CPUFeatures.builtWithAVX512F ? .simd16x6x32 : .simd8x6x16

    public var blocking: GemmBlocking {
        // The A block (mc x kc, 192 KiB) stays in L2 while B's panels stream past it; a long K slab
        // halves the C tile loads and stores of kc 256. Measured on Zen 4 (1 MiB L2), alternating
        // runs against kc 256 / nc 2048: 1024^3 +2-10 %, 768x512x2048 NT +10-14 %, 512^3 +3-8 %, the
        // rest within noise, for both kernels.
        GemmBlocking(mc: 96, kc: 512, nc: 1024)
    }

    /// The longest K slab for an A `rows` tall, over a B packed (nil) or read in place with its rows
    /// `bRowsApart` floats apart. When A is one M block, its packed slab is used once per B panel and is
    /// never evicted by another block, so it may be twice as long: every slab after the first re-reads
    /// each C tile, and the tiles' loads, stores and prefetches were a few percent of a short-M product
    /// (64x784x256 NN, one slab of 784 against two of 392, five alternating pairs on an AVX2 EPYC with a
    /// 512 KiB L2: 85.5-86.4 -> 87.0-87.8 GFLOP/s; NT 91-92 -> 94).
    /// A B read in place keeps each slab's rows in L2 (inPlaceSlab), in slabs of at least 128 rows, also
    /// when one or two tiles read it: against slabs up to 1024, 10x1024x256 NN 62-64 -> 70-72 GFLOP/s,
    /// 12x2048x512 NN 72-74 -> 81-82, 8x1536x768 NN 54-56 -> 61-63, 10x2048x1024 NN 47-50 -> 51-52.
    func kcLimit(rows: Int, bRowsApart: Int?) -> Int {
        let limit = rows <= blocking.mc ? 2 * blocking.kc : blocking.kc
        guard let ldb = bRowsApart else { return limit }
        return min(limit, max(128, Self.inPlaceSlab(ldb: ldb)))
    }

    public var description: String { self == .simd8x6x16 ? "avx2 6x16" : "avx512 6x32" }

    /// The kernel for a B `columns` wide: one panel or less runs on 16-wide panels, where the 32-wide
    /// AVX-512 tile would multiply mostly padding (64x256x10: 10 of 32 columns) and two ymm FMAs issue
    /// where one zmm FMA does.
    func forColumns(_ columns: Int) -> GemmMicroKernel { self == .simd16x6x32 && columns <= 16 ? .simd8x6x16 : self }

    /// Whether A is packed for a B `columns` wide: with B only a few panels wide, each A panel feeds few
    /// micro-kernel calls and packing A (O(MK)) costs as much as the multiply (O(MNK)), so whole A
    /// panels are read in place, unless A is transposed: in place, each k of a panel is then 24 bytes
    /// of its own line, kc lines that no longer fit L1 beside the B panel (64x784x256 NN, which runs as
    /// C^T = B^T A^T, 79-80 -> 86 GFLOP/s packed).
    func packsA(_ transA: Transpose, columns: Int) -> Bool { transA == .transposed || columns > 4 * nr }

    /// Whether the first column of tiles packs A as it multiplies (microKernelColumnPackingA) instead of
    /// a pass of its own before it. Always for a transposed A, whose pass waited on each of its lines.
    /// For an untransposed A only on the AVX-512 kernel: on a Zen 4, alternating runs against the pass,
    /// 768x2048x512 NN 103.6-107.6 -> 106.1-109.7 GFLOP/s, 512^3 NN and 768x512x2048 NT +1-2 %, the rest
    /// within noise; the AVX2 kernel there within ±1 %, and on an AVX2-only Zen 2 (one store port, 12
    /// FMAs in 6 cycles beside 6 more stores) not measured, so it keeps the pass.
    func packsAInFirstColumn(_ transA: Transpose) -> Bool { transA == .transposed || self == .simd16x6x32 }

    /// Whether op(B) is read in place for an A `rows` tall, B's rows `ldb` floats apart and K `k` long:
    /// B untransposed already holds each k's nr floats side by side, one row apart. With A at most two
    /// tiles tall, each B panel feeds one or two micro-kernel calls and packing it costs a third of the
    /// multiply (10x64x256 TN). Up to 11 tiles too (the packed copy of a short A's B is read by few
    /// tiles, and copying it from L3 was a tenth of 64x784x256 NN's time) when a panel's rows stay in L2
    /// while its tiles re-read them (inPlaceSlab): 64x784x256 NN 81-86 -> 89-91 GFLOP/s, 64x256x784 NN
    /// 82-87 -> 94-97, 66x2048x128 NN 82-86 -> 89-93, 30x1000x200 NN 72-75 -> 83-87 (alternating runs).
    func readsBInPlace(_ transB: Transpose, rows: Int, ldb: Int, k: Int) -> Bool {
        guard transB == .none else { return false }
        return rows <= 2 * mr || (rows <= 11 * mr && Self.inPlaceSlab(ldb: ldb) >= min(k, 256))
    }

    /// The most rows of a B panel read in place that put at most 4 lines in any set of a 512 KiB, 8-way
    /// L2 (ways of 64 KiB), the other half of each set left to A and C: rows s bytes apart come back to
    /// the same sets every 64 KiB / gcd(64 KiB, s) rows. B's rows 1 KiB apart allow 256 (64x784x256 NN in
    /// place: slabs of 392 rows 75-78 GFLOP/s, of 256 89-91); 2 and 4 KiB apart, 128 and 64, too short to
    /// pay (in place with slabs of 256: 48x512x512 NN 74 against 83-86 packed, 64x1024x1024 54-57 against
    /// 76-85). A larger L2 only has more sets.
    static func inPlaceSlab(ldb: Int) -> Int {
        var (a, b) = (65536, 4 * ldb)
        while b != 0 { (a, b) = (b, a % b) }
        return 4 * (65536 / a)
    }
}

/// C = alpha * op(A) * op(B) + beta * C. With beta == 0, C is overwritten (NaNs in it do not leak).
public func gemm(_ transA: Transpose, _ transB: Transpose, m: Int, n: Int, k: Int,
                 alpha: Float = 1, a: UnsafePointer<Float>, lda: Int,
                 b: UnsafePointer<Float>, ldb: Int,
                 beta: Float = 0, c: UnsafeMutablePointer<Float>, ldc: Int,
                 kernel: GemmMicroKernel = .native, epilogue: GemmEpilogue? = nil) {
    gemm(transA, transB, m: m, n: n, k: k, alpha: alpha, a: a, lda: lda, b: b, ldb: ldb, beta: beta, c: c, ldc: ldc,
         kernel: kernel, mayTranspose: true, epilogue: epilogue)
}

/// What a caller does to each block of C once it is final (all of K summed), while the block is still in
/// cache: the MLP's backward multiplies c_proj's input gradient by the GELU's slope there instead of
/// reading the gradient back from memory.
public typealias GemmEpilogue = (GemmBlock) -> Void

/// Rows and columns of C.
public struct GemmBlock: Sendable, Equatable {
    public let rows: Range<Int>
    public let columns: Range<Int>
    public init(rows: Range<Int>, columns: Range<Int>) { self.rows = rows; self.columns = columns }

    /// body(offset, count) over the block's elements in a matrix whose rows are `ld` apart: one run per
    /// row, or a single run when the block spans whole rows.
    @inline(__always)
    public func forEachRun(ld: Int, _ body: (_ offset: Int, _ count: Int) -> Void) {
        if columns.count == ld { return body(rows.lowerBound * ld, rows.count * ld) }
        for r in rows { body(r * ld + columns.lowerBound, columns.count) }
    }
}

private func gemm(_ transA: Transpose, _ transB: Transpose, m: Int, n: Int, k: Int,
                  alpha: Float, a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
                  beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int, kernel: GemmMicroKernel, mayTranspose: Bool,
                  epilogue: GemmEpilogue?) {
    precondition(m >= 0 && n >= 0 && k >= 0, "gemm: negative size m=\(m) n=\(n) k=\(k)")
    precondition(lda >= (transA == .none ? k : m) && ldb >= (transB == .none ? n : k) && ldc >= n,
                 "gemm: leading dimension too small")
    if m == 0 || n == 0 { return }
    let whole = GemmBlock(rows: 0..<m, columns: 0..<n)
    if k == 0 || alpha == 0 {
        scaleMatrix(c, rows: m, cols: n, ld: ldc, by: beta)
        epilogue?(whole)
        return
    }
    if takesNarrowPath(transA, n: n, k: k) {
        gemmNarrow(transB, m: m, n: n, k: k, alpha: alpha, a: a, lda: lda, b: b, ldb: ldb, beta: beta, c: c, ldc: ldc)
        epilogue?(whole)
        return
    }
    if mayTranspose && cheaperTransposed(transA, transB, m: m, n: n, k: k, lda: lda, ldb: ldb, kernel: kernel) {
        // C^T = op(B)^T op(A)^T into scratch, then added into C transposed.
        let t = GemmScratch.forThisThread(floats: m * n, slot: 1)
        gemm(transB == .none ? .transposed : .none, transA == .none ? .transposed : .none, m: n, n: m, k: k, alpha: alpha,
             a: b, lda: ldb, b: a, ldb: lda, beta: 0, c: t, ldc: m, kernel: kernel, mayTranspose: false, epilogue: nil)
        // beta 0 copies without testing beta per element.
        for i in 0..<m {
            let row = c + i * ldc
            var column = t + i
            if beta == 0 {
                for j in 0..<n { row[j] = column.pointee; column += m }
            } else {
                for j in 0..<n { row[j] = combine(row[j], column.pointee, beta: beta); column += m }
            }
        }
        // C was written row by row above, not block by block: the epilogue sees it whole.
        epilogue?(whole)
        return
    }

    let kernel = kernel.forColumns(n)
    let mr = kernel.mr, nr = kernel.nr
    let blocking = kernel.blocking
    let ncMax = evenBlock(n, max: blocking.nc, multiple: nr)
    let mcMax = evenBlock(m, max: blocking.mc, multiple: mr)
    let readsBInPlace = kernel.readsBInPlace(transB, rows: m, ldb: ldb, k: k)
    let kcMax = evenBlock(k, max: kernel.kcLimit(rows: m, bRowsApart: readsBInPlace ? ldb : nil), multiple: 1)
    let scratch = GemmScratch.forThisThread(floats: mcMax * kcMax + ncMax * kcMax + mr * nr)
    let packA = scratch, packB = scratch + mcMax * kcMax, edgeTile = packB + ncMax * kcMax

    let packsA = kernel.packsA(transA, columns: n)
    var jc = 0
    while jc < n {
        let nc = min(ncMax, n - jc)
        // A is packed by the first column of tiles as it computes (below), all but a last panel of
        // fewer rows.
        let packsInFirstColumn = packsA && kernel.packsAInFirstColumn(transA) && mr == 6 && nc >= nr
        var pc = 0
        while pc < k {
            let kc = min(kcMax, k - pc)
            let slabBeta = pc == 0 ? beta : 1
            if !readsBInPlace {
                packPanelsOfB(transB, b, ldb, rowStart: pc, kc: kc, colStart: jc, nc: nc, nr: nr, into: packB)
            }
            var ic = 0
            while ic < m {
                let mc = min(mcMax, m - ic)
                let wholeTileRows = mc / mr * mr
                if packsInFirstColumn {
                    if wholeTileRows < mc {
                        packPanelsOfA(transA, a, lda, rowStart: ic + wholeTileRows, mc: mc - wholeTileRows, colStart: pc, kc: kc, mr: mr,
                                      into: packA + wholeTileRows * kc)
                    }
                } else if packsA {
                    packPanelsOfA(transA, a, lda, rowStart: ic, mc: mc, colStart: pc, kc: kc, mr: mr, into: packA)
                }
                var jr = 0
                while jr < nc {
                    let cols = min(nr, nc - jr)
                    var bPanel = UnsafePointer(packB + jr * kc), bStride = nr
                    if readsBInPlace {
                        if cols == nr {
                            (bPanel, bStride) = (b + pc * ldb + jc + jr, ldb)
                        } else {
                            // The last, partial panel is packed so that its zero padding fills the tile.
                            packPanelsOfB(transB, b, ldb, rowStart: pc, kc: kc, colStart: jc + jr, nc: cols, nr: nr, into: packB)
                            bPanel = UnsafePointer(packB)
                        }
                    }
                    // The tile whose C the last tile of this column prefetches.
                    let nextColumn = jr + nr < nc ? TileAhead(c: c + ic * ldc + jc + jr + nr, rows: min(mr, mc), cols: min(nr, nc - jr - nr)) : nil
                    var ir = 0
                    if packsInFirstColumn && jr == 0 {
                        microKernelColumnPackingA(kernel, rows: mc, kc: kc, source: PackingSource(a, lda: lda, transA, rowStart: ic, colStart: pc),
                                                  packed: packA, b: bPanel, bStride: bStride, c: c + ic * ldc + jc + jr, ldc: ldc,
                                                  alpha: alpha, beta: slabBeta, after: nextColumn)
                        ir = wholeTileRows
                    } else if packsA && cols == nr {
                        microKernelColumn(kernel, rows: mc, kc: kc, a: packA, b: bPanel, bStride: bStride, c: c + ic * ldc + jc + jr,
                                          ldc: ldc, alpha: alpha, beta: slabBeta, after: nextColumn)
                        ir = mc
                    }
                    while ir < mc {
                        let rows = min(mr, mc - ir)
                        let panel: PanelOfA
                        if packsA {
                            panel = packedPanel(packA + ir * kc, mr: mr)
                        } else if rows == mr || cols == nr {
                            let i0 = ic + ir
                            panel = transA == .none ? PanelOfA(base: a + i0 * lda + pc, rowStride: lda, colStride: 1)
                                                    : PanelOfA(base: a + pc * lda + i0, rowStride: 1, colStride: lda)
                        } else {
                            packPanelsOfA(transA, a, lda, rowStart: ic + ir, mc: rows, colStart: pc, kc: kc, mr: mr, into: packA)
                            panel = packedPanel(packA, mr: mr)
                        }
                        let cTile = c + (ic + ir) * ldc + jc + jr
                        if ir + mr < mc {
                            TileAhead(c: cTile + mr * ldc, rows: min(mr, mc - ir - mr), cols: cols).prefetch(ldc: ldc)
                        } else {
                            nextColumn?.prefetch(ldc: ldc)
                        }
                        if rows == mr && cols == nr {
                            runMicroKernel(kernel, kc: kc, a: panel, b: bPanel, bStride: bStride, c: cTile, ldc: ldc, alpha: alpha, beta: slabBeta)
                        } else if cols == nr {
                            runMicroKernel(kernel, rows: rows, kc: kc, a: panel, b: bPanel, bStride: bStride, c: cTile, ldc: ldc, alpha: alpha, beta: slabBeta)
                        } else {
                            runMicroKernel(kernel, kc: kc, a: panel, b: bPanel, bStride: bStride, c: edgeTile, ldc: nr, alpha: alpha, beta: 0)
                            for r in 0..<rows {
                                let row = cTile + r * ldc, tile = edgeTile + r * nr
                                if slabBeta == 0 { row.update(from: tile, count: cols); continue }
                                for j in 0..<cols { row[j] = combine(row[j], tile[j], beta: slabBeta) }
                            }
                        }
                        ir += mr
                    }
                    jr += nr
                }
                if pc + kc == k { epilogue?(GemmBlock(rows: ic..<ic + mc, columns: jc..<jc + nc)) }
                ic += mc
            }
            pc += kc
        }
        jc += nc
    }
}

/// mr rows of op(A) over one K slab: element (r, p) is at base[r * rowStride + p * colStride].
struct PanelOfA {
    var base: UnsafePointer<Float>
    var rowStride: Int
    var colStride: Int
}

/// Convenience for contiguous matrices: lda/ldb/ldc are the row lengths of op's stored layout.
public func gemm(_ transA: Transpose, _ transB: Transpose, m: Int, n: Int, k: Int,
                 alpha: Float = 1, a: UnsafePointer<Float>, b: UnsafePointer<Float>,
                 beta: Float = 0, c: UnsafeMutablePointer<Float>, kernel: GemmMicroKernel = .native,
                 epilogue: GemmEpilogue? = nil) {
    gemm(transA, transB, m: m, n: n, k: k, alpha: alpha,
         a: a, lda: transA == .none ? k : m, b: b, ldb: transB == .none ? n : k,
         beta: beta, c: c, ldc: n, kernel: kernel, epilogue: epilogue)
}

/// Whether computing C^T = op(B)^T op(A)^T costs less than C = op(A) op(B), in cycles roughly: the
/// micro-kernel's FMAs over whole tiles (mr rows, nr columns; 16 lanes a cycle either kernel) plus
/// packing (an untransposed B's row copy 1/4 a float, register transposes and A's k-major runs 1/2),
/// op(A) packed when transposed or when B is wider than 4 panels, op(B) read in place when A is short;
/// the transposed way adds 2 a float to add C^T into C. A layer's forward with few rows, x[64, 784] W^T
/// with W [256, 784], then reads W in place instead of packing it transposed (0.95M against 0.87M); a
/// 10-row product keeps its orientation, whose tiles are fuller.
func cheaperTransposed(_ transA: Transpose, _ transB: Transpose, m: Int, n: Int, k: Int, lda: Int, ldb: Int,
                       kernel: GemmMicroKernel) -> Bool {
    func cost(_ transA: Transpose, _ transB: Transpose, m: Int, n: Int, ldb: Int) -> Double {
        let kernel = kernel.forColumns(n)
        let fma = Double(roundUp(m, kernel.mr) * roundUp(n, kernel.nr) * k) / 16
        let packB = kernel.readsBInPlace(transB, rows: m, ldb: ldb, k: k) ? 0 : Double(n * k) * (transB == .transposed ? 0.5 : 0.25)
        let packA = kernel.packsA(transA, columns: n) ? Double(m * k) * 0.5 : 0
        return fma + packB + packA
    }
    let flipA: Transpose = transA == .none ? .transposed : .none, flipB: Transpose = transB == .none ? .transposed : .none
    return cost(flipB, flipA, m: n, n: m, ldb: lda) + 2 * Double(m * n) < cost(transA, transB, m: m, n: n, ldb: ldb)
}

/// Cuts `size` into the fewest blocks of at most `max`, evenly, rounded up to `multiple`.
@inline(__always) func evenBlock(_ size: Int, max: Int, multiple: Int) -> Int {
    let blocks = (size + max - 1) / max
    return Swift.min(max, roundUp((size + blocks - 1) / blocks, multiple))
}

/// What a tile stores into C: beta 0 never reads C (NaNs there do not leak), 1 accumulates.
@inline(__always) func combine(_ old: Float, _ value: Float, beta: Float) -> Float {
    beta == 0 ? value : beta == 1 ? old + value : old * beta + value
}

/// The same for a vector of C's results side by side (the narrow path's row of 4).
@inline(__always) func combine<V: SIMD>(_ old: V, _ value: V, beta: Float) -> V where V.Scalar == Float {
    beta == 0 ? value : beta == 1 ? old + value : old * beta + value
}

@inline(__always)
private func runMicroKernel(_ kernel: GemmMicroKernel, kc: Int, a: PanelOfA, b: UnsafePointer<Float>, bStride: Int,
                            c: UnsafeMutablePointer<Float>, ldc: Int, alpha: Float, beta: Float) {
    // Literal strides for the packed layout let the inlined kernel fold its address arithmetic.
    let packed = a.rowStride == 1 && a.colStride == kernel.mr
    switch kernel {
    case .simd8x6x16:
        if packed {
            microKernel6x16(kc: kc, a: a.base, rowStride: 1, colStride: 6, b: b, bStride: bStride, c: c, ldc: ldc, alpha: alpha, beta: beta)
        } else {
            microKernel6x16(kc: kc, a: a.base, rowStride: a.rowStride, colStride: a.colStride, b: b, bStride: bStride, c: c, ldc: ldc, alpha: alpha, beta: beta)
        }
    case .simd16x6x32:
        if packed {
            microKernel6x32(kc: kc, a: a.base, rowStride: 1, colStride: 6, b: b, bStride: bStride, c: c, ldc: ldc, alpha: alpha, beta: beta)
        } else {
            microKernel6x32(kc: kc, a: a.base, rowStride: a.rowStride, colStride: a.colStride, b: b, bStride: bStride, c: c, ldc: ldc, alpha: alpha, beta: beta)
        }
    }
}

/// A tile of fewer than mr rows (1...mr-1), stored straight into C: only its rows' FMAs run
/// (10 x 64 x 256 TN is a 6-row and a 4-row tile).
private func runMicroKernel(_ kernel: GemmMicroKernel, rows: Int, kc: Int, a: PanelOfA, b: UnsafePointer<Float>,
                            bStride: Int, c: UnsafeMutablePointer<Float>, ldc: Int, alpha: Float, beta: Float) {
    microKernelRows(kernel, rows: rows, kc: kc, a: a.base, rowStride: a.rowStride, colStride: a.colStride, b: b, bStride: bStride,
                    c: c, ldc: ldc, alpha: alpha, beta: beta)
}

/// Where packPanelsOfA put a panel's element (r, k): k-major, mr consecutive floats per k, so the
/// broadcasts of one k step read one run and the micro-kernel's addresses fold into constants.
@inline(__always)
private func packedPanel(_ base: UnsafePointer<Float>, mr: Int) -> PanelOfA {
    PanelOfA(base: base, rowStride: 1, colStride: mr)
}

/// Packs rows [rowStart, rowStart+mc) x cols [colStart, colStart+kc) of op(A) into mr-tall panels of
/// mr x kc floats each, laid out as packedPanel says, zero-padded to a whole panel.
private func packPanelsOfA(_ trans: Transpose, _ a: UnsafePointer<Float>, _ lda: Int,
                           rowStart: Int, mc: Int, colStart: Int, kc: Int, mr: Int,
                           into dest: UnsafeMutablePointer<Float>) {
    var panelRow = 0
    var out = dest
    if trans == .transposed && mr == 6 {
        // (Used when op(B) is narrower than one panel; otherwise the first column of tiles packs these
        // whole panels as it multiplies, tilePackingTransposedA.)
        // op(A)[i][p] = a[p * lda + i]: the mr values of one k are contiguous, moved as 4 + 2 floats (not
        // 6 scalar copies: 768x2048x512 TN +1-3 %). A chunk of k rows goes to every whole panel before
        // the next chunk is read: panel by panel, each panel's walk down kc rows of A pushed the lines
        // the next panel reads out of L1 (a tenth of 768x512x128 TN's time went to packing). Chunks of
        // 32 k (12 KiB of A at mc 96), alternating runs: 768x512x128 TN 81-82 -> 87-88 % of the peak,
        // 768x2048x512 TN unchanged (85-87 %); 16 and 64 gained less.
        let panels = mc / 6
        var p = 0
        while p < kc {
            let chunk = min(32, kc - p)
            for q in 0..<panels {
                var src = a + (colStart + p) * lda + rowStart + 6 * q, o = dest + q * kc * 6 + p * 6
                for _ in 0..<chunk {
                    UnsafeMutableRawPointer(o).storeBytes(of: UnsafeRawPointer(src).loadUnaligned(as: SIMD4<Float>.self), as: SIMD4<Float>.self)
                    UnsafeMutableRawPointer(o + 4).storeBytes(of: UnsafeRawPointer(src + 4).loadUnaligned(as: SIMD2<Float>.self), as: SIMD2<Float>.self)
                    src += lda; o += 6
                }
            }
            p += chunk
        }
        panelRow = panels * 6
        out = dest + panels * kc * 6
    }
    while panelRow < mc {
        let rows = min(mr, mc - panelRow)
        let i0 = rowStart + panelRow
        if trans == .transposed {
            var src = a + colStart * lda + i0
            for _ in 0..<kc {
                for r in 0..<rows { out[r] = src[r] }
                for r in rows..<mr { out[r] = 0 }
                src += lda; out += mr
            }
        } else {
            // op(A)[i][p] = a[i * lda + p]: the panel's rows, 8 k at a time, transposed in registers (a
            // scalar scatter with stride mr had compiled to vscatterdps, a tenth of 768x2048x512's time on
            // Zen 4; rows kept as they are left the micro-kernel five address adds per k, 3 % slower).
            let first = a + i0 * lda + colStart
            var p = 0
            if rows == 6 && mr == 6 {
                while p + 8 <= kc {
                    transposeSixRows(from: first + p, stride: lda, to: out + p * 6)
                    p += 8
                }
            }
            while p < kc {
                for r in 0..<rows { out[p * mr + r] = first[r * lda + p] }
                for r in rows..<mr { out[p * mr + r] = 0 }
                p += 1
            }
            out += kc * mr
        }
        panelRow += mr
    }
}

/// Packs rows [rowStart, rowStart+kc) x cols [colStart, colStart+nc) of op(B) into nr-wide panels,
/// each stored k-major (nr consecutive floats per k), zero-padded to a whole panel.
private func packPanelsOfB(_ trans: Transpose, _ b: UnsafePointer<Float>, _ ldb: Int,
                           rowStart: Int, kc: Int, colStart: Int, nc: Int, nr: Int,
                           into dest: UnsafeMutablePointer<Float>) {
    var panelCol = 0
    var out = dest
    if trans == .none && nc >= nr {
        // Whole panels, 8 k rows at a time across all of them: each stored row is read front to back
        // (8 streams), each panel gets 8 rows of nr floats in a row. Panel by panel, every k row began a
        // new 4 KiB page when ldb is 1024 floats, which the prefetchers do not follow.
        let panels = nc / nr
        var p = 0
        while p < kc {
            let rows = min(8, kc - p)
            for q in 0..<panels {
                var src = b + (rowStart + p) * ldb + colStart + q * nr, o = dest + q * kc * nr + p * nr
                for _ in 0..<rows {
                    var offset = 0
                    while offset < nr {
                        UnsafeMutableRawPointer(o + offset).storeBytes(
                            of: UnsafeRawPointer(src + offset).loadUnaligned(as: SIMD16<Float>.self), as: SIMD16<Float>.self)
                        offset += 16
                    }
                    src += ldb; o += nr
                }
            }
            p += rows
        }
        panelCol = panels * nr
        out = dest + panels * kc * nr
    }
    while panelCol < nc {
        let cols = min(nr, nc - panelCol)
        let j0 = colStart + panelCol
        if trans == .transposed {
            // op(B)[p][j] = b[j * ldb + p]: 8 x 8 blocks transposed in registers, 8 stored rows read side
            // by side. Walking each stored row scattered with stride nr across the whole slab (1 MiB at
            // 512 x 512); walking k across all nr rows at once read nr lines of one L1 set when ldb is a
            // multiple of 1024 floats (768x2048x512 NT spent a tenth of its time packing either way).
            if cols < nr { out.initialize(repeating: 0, count: kc * nr) }
            let first = b + j0 * ldb + rowStart
            var j = 0
            while j + 8 <= cols {
                let rows = first + j * ldb
                var p = 0
                while p + 8 <= kc {
                    transpose8x8(from: rows + p, stride: ldb, to: out + p * nr + j, stride: nr)
                    p += 8
                }
                while p < kc {
                    for q in 0..<8 { out[p * nr + j + q] = rows[q * ldb + p] }
                    p += 1
                }
                j += 8
            }
            while j < cols {
                for p in 0..<kc { out[p * nr + j] = first[j * ldb + p] }
                j += 1
            }
            out += kc * nr
        } else {
            for p in 0..<kc {
                let src = b + (rowStart + p) * ldb + j0
                out.update(from: src, count: cols)
                if cols < nr { (out + cols).initialize(repeating: 0, count: nr - cols) }
                out += nr
            }
        }
        panelCol += nr
    }
}

typealias EightVectors = (SIMD8<Float>, SIMD8<Float>, SIMD8<Float>, SIMD8<Float>,
                           SIMD8<Float>, SIMD8<Float>, SIMD8<Float>, SIMD8<Float>)

/// Columns q and q + 4 of four rows, as one vector each (lanes 0-3 column q, 4-7 column q + 4), q < 4:
/// a 4 x 4 transpose within each 128-bit half (interleaves, then pair picks), 8 single-instruction
/// shuffles (CShims).
@inline(__always)
func transposedInHalves(_ r0: SIMD8<Float>, _ r1: SIMD8<Float>, _ r2: SIMD8<Float>, _ r3: SIMD8<Float>)
    -> (SIMD8<Float>, SIMD8<Float>, SIMD8<Float>, SIMD8<Float>) {
    let t0 = ddp_interleave_low8(r0, r1), t1 = ddp_interleave_high8(r0, r1)
    let t2 = ddp_interleave_low8(r2, r3), t3 = ddp_interleave_high8(r2, r3)
    return (ddp_pairs_front8(t0, t2), ddp_pairs_back8(t0, t2), ddp_pairs_front8(t1, t3), ddp_pairs_back8(t1, t3))
}

/// Vector q of the result = lane q of every input: rows 0-3 and 4-7 transposed within their halves,
/// then the halves exchanged: 24 single-instruction shuffles.
@inline(__always)
func transposed(_ x: EightVectors) -> EightVectors {
    let a = transposedInHalves(x.0, x.1, x.2, x.3), b = transposedInHalves(x.4, x.5, x.6, x.7)
    return (ddp_low_halves8(a.0, b.0), ddp_low_halves8(a.1, b.1), ddp_low_halves8(a.2, b.2), ddp_low_halves8(a.3, b.3),
            ddp_high_halves8(a.0, b.0), ddp_high_halves8(a.1, b.1), ddp_high_halves8(a.2, b.2), ddp_high_halves8(a.3, b.3))
}

/// dest row q = column q of the 8 x 8 block at src.
@inline(__always)
func transpose8x8(from src: UnsafePointer<Float>, stride ls: Int, to dest: UnsafeMutablePointer<Float>, stride ld: Int) {
    typealias V = SIMD8<Float>
    @inline(__always) func load(_ r: Int) -> V { UnsafeRawPointer(src + r * ls).loadUnaligned(as: V.self) }
    let t = transposed((load(0), load(1), load(2), load(3), load(4), load(5), load(6), load(7)))
    @inline(__always) func store(_ r: Int, _ v: V) { UnsafeMutableRawPointer(dest + r * ld).storeBytes(of: v, as: V.self) }
    store(0, t.0); store(1, t.1); store(2, t.2); store(3, t.3); store(4, t.4); store(5, t.5); store(6, t.6); store(7, t.7)
}

/// 8 k of a 6-row panel made k-major: dest[6q + r] = src[r * stride + q] for q < 8, r < 6. Rows 0-3
/// go through 4 x 4 transposes within each 128-bit half (k 0-3 low, 4-7 high), rows 4-5 through one
/// interleave each way, and pair picks join each k's rows 4-5 to its neighbour's rows 0-1 and 2-3, so
/// every 4 floats stored are one run of the output: 12 stores of 4 (each k stored as 4 + 2 floats was
/// 16 stores; an 8 x 8 transpose with row 5 standing in for rows 6 and 7 compiled to a mix of inserts
/// and blends).
@inline(__always)
func transposeSixRows(from src: UnsafePointer<Float>, stride ls: Int, to dest: UnsafeMutablePointer<Float>) {
    typealias V = SIMD8<Float>
    @inline(__always) func load(_ r: Int) -> V { UnsafeRawPointer(src + r * ls).loadUnaligned(as: V.self) }
    let (k04, k15, k26, k37) = transposedInHalves(load(0), load(1), load(2), load(3))
    let r4 = load(4), r5 = load(5)
    // Rows 4-5 of k 0, 1 | 4, 5 and of k 2, 3 | 6, 7.
    let tails01 = ddp_interleave_low8(r4, r5), tails23 = ddp_interleave_high8(r4, r5)
    // Within each half: k0 rows 4-5 then k1 rows 0-1; k1 rows 2-3 then rows 4-5; the same for k2 and k3.
    let runs = (k04, ddp_pairs_front8(tails01, k15), ddp_pairs_back8(k15, tails01),
                k26, ddp_pairs_front8(tails23, k37), ddp_pairs_back8(k37, tails23))
    @inline(__always) func store(_ i: Int, _ v: V) {
        UnsafeMutableRawPointer(dest + 4 * i).storeBytes(of: v.lowHalf, as: SIMD4<Float>.self)
        UnsafeMutableRawPointer(dest + 24 + 4 * i).storeBytes(of: v.highHalf, as: SIMD4<Float>.self)
    }
    store(0, runs.0); store(1, runs.1); store(2, runs.2); store(3, runs.3); store(4, runs.4); store(5, runs.5)
}

private func scaleMatrix(_ c: UnsafeMutablePointer<Float>, rows: Int, cols: Int, ld: Int, by beta: Float) {
    if beta == 1 { return }
    for i in 0..<rows {
        let row = c + i * ld
        if beta == 0 {
            row.update(repeating: 0, count: cols)
        } else {
            for j in 0..<cols { row[j] *= beta }
        }
    }
}

@inline(__always) func roundUp(_ x: Int, _ multiple: Int) -> Int { (x + multiple - 1) / multiple * multiple }
