// GEMM micro-kernels: C[mr x nr] = alpha * Apanel[mr x kc] * Bpanel[kc x nr] + beta * C.
// Element (r, k) of the A panel is at a[r * rowStride + k * colStride] (packed: 1 and mr; read in place
// when B is narrow); the B panel's nr floats of step k start at b[k * bStride] (packed: nr, 64-byte
// aligned; read in place when A is short, see Gemm.swift).
// Each k step broadcasts the mr values of A and does mr x (nr / width) fused multiply-adds on
// accumulators that live in registers for the whole slab. The accumulators are spelled out one by
// one because an array would live in memory; with -target-cpu native, addingProduct lowers to vfmadd.

import CShims

@inline(__always)
private func loadVector<V: SIMD>(_ p: UnsafePointer<Float>, as: V.Type) -> V where V.Scalar == Float {
    UnsafeRawPointer(p).loadUnaligned(as: V.self)
}

@inline(__always)
private func accumulate<V: SIMD>(_ c: UnsafeMutablePointer<Float>, _ value: V, alpha: Float, beta: Float) where V.Scalar == Float {
    let raw = UnsafeMutableRawPointer(c)
    if beta == 0 { return raw.storeBytes(of: value * alpha, as: V.self) }
    let old = raw.loadUnaligned(as: V.self)
    raw.storeBytes(of: (beta == 1 ? old : old * beta).addingProduct(alpha, value), as: V.self)
}

/// The 12 accumulators of a 6 x (2 vectors) tile, spelled out one by one because an array would live in
/// memory; inlined, they live in registers.
struct TileAccumulators<V: SIMD> where V.Scalar == Float {
    var c00 = V(), c01 = V(), c10 = V(), c11 = V(), c20 = V(), c21 = V()
    var c30 = V(), c31 = V(), c40 = V(), c41 = V(), c50 = V(), c51 = V()

    /// One k: the first `rows` rows' broadcasts of A (element r at a[r * rowStride]) times B's two vectors.
    @inline(__always)
    mutating func add(rows: Int, a pa: UnsafePointer<Float>, rowStride rs: Int, b pb: UnsafePointer<Float>) {
        let b0 = loadVector(pb, as: V.self), b1 = loadVector(pb + V.scalarCount, as: V.self)
        var av = V(repeating: pa[0 * rs]); c00 = c00.addingProduct(av, b0); c01 = c01.addingProduct(av, b1)
        if rows > 1 { av = V(repeating: pa[1 * rs]); c10 = c10.addingProduct(av, b0); c11 = c11.addingProduct(av, b1) }
        if rows > 2 { av = V(repeating: pa[2 * rs]); c20 = c20.addingProduct(av, b0); c21 = c21.addingProduct(av, b1) }
        if rows > 3 { av = V(repeating: pa[3 * rs]); c30 = c30.addingProduct(av, b0); c31 = c31.addingProduct(av, b1) }
        if rows > 4 { av = V(repeating: pa[4 * rs]); c40 = c40.addingProduct(av, b0); c41 = c41.addingProduct(av, b1) }
        if rows > 5 { av = V(repeating: pa[5 * rs]); c50 = c50.addingProduct(av, b0); c51 = c51.addingProduct(av, b1) }
    }

    /// C = alpha * tile + beta * C for the first `rows` rows. Transparent, not just always-inline: marked
    /// so, the compiler still called it out of line from the column of tiles, the 12 accumulators passed
    /// through memory.
    @_transparent
    func store(rows: Int, c: UnsafeMutablePointer<Float>, ldc: Int, alpha: Float, beta: Float) {
        let w = V.scalarCount
        accumulate(c, c00, alpha: alpha, beta: beta); accumulate(c + w, c01, alpha: alpha, beta: beta)
        if rows > 1 { accumulate(c + ldc, c10, alpha: alpha, beta: beta); accumulate(c + ldc + w, c11, alpha: alpha, beta: beta) }
        if rows > 2 { accumulate(c + 2 * ldc, c20, alpha: alpha, beta: beta); accumulate(c + 2 * ldc + w, c21, alpha: alpha, beta: beta) }
        if rows > 3 { accumulate(c + 3 * ldc, c30, alpha: alpha, beta: beta); accumulate(c + 3 * ldc + w, c31, alpha: alpha, beta: beta) }
        if rows > 4 { accumulate(c + 4 * ldc, c40, alpha: alpha, beta: beta); accumulate(c + 4 * ldc + w, c41, alpha: alpha, beta: beta) }
        if rows > 5 { accumulate(c + 5 * ldc, c50, alpha: alpha, beta: beta); accumulate(c + 5 * ldc + w, c51, alpha: alpha, beta: beta) }
    }

    /// A later K slab reads the tile the slab before stored long ago (768x2048x512's C is 1.5 MiB, past
    /// L2): without a hint, each call's 12 loads missed to L3 at its very end, after its FMAs.
    @inline(__always)
    static func prefetchOldTile(rows: Int, c: UnsafeMutablePointer<Float>, ldc: Int, beta: Float) {
        guard beta != 0 else { return }
        let w = V.scalarCount
        var row = UnsafeRawPointer(c)
        for _ in 0..<rows {
            ddp_prefetch_l2(row); ddp_prefetch_l2(row + 4 * w); ddp_prefetch_l2(row + 4 * (2 * w - 1))
            row += 4 * ldc
        }
    }
}

/// 6 x (2 vectors) tile: 12 accumulators + 2 B vectors + 1 broadcast. Specialized for each vector type
/// at its call site (always inlined), so the accumulators stay in registers. Only the first `rows` rows
/// are multiplied and stored: a literal count at the call site drops the other rows' FMAs, so an edge
/// of fewer rows writes C directly instead of computing 6 rows into a scratch tile.
@inline(__always)
private func microKernel6xTwoVectors<V: SIMD>(_: V.Type, rows: Int, kc: Int, a: UnsafePointer<Float>, rowStride rs: Int, colStride cs: Int,
                                              b: UnsafePointer<Float>, bStride: Int, c: UnsafeMutablePointer<Float>, ldc: Int,
                                              alpha: Float, beta: Float)
    where V.Scalar == Float {
    TileAccumulators<V>.prefetchOldTile(rows: rows, c: c, ldc: ldc, beta: beta)
    var t = TileAccumulators<V>()
    var pa = a, pb = b, left = kc
    if rows == 6 && rs == 1 && cs == 6 {
        // Whole tiles of a packed A take 4 k a trip (a loop's adds and branch per 4 k, not per k): 256^3
        // NN and 768x128x512 NN +1-2 %. Tiles of fewer rows keep one k a trip (unrolled, they lost up to
        // a tenth: 64x784x256 NN, whose last tile has 4 rows, 88 -> 79 GFLOP/s), and so does an A read
        // in place (64x784x256 NT, W's rows 784 floats apart, 92 -> 90.5).
        while left >= 4 {
            t.add(rows: 6, a: pa, rowStride: rs, b: pb)
            t.add(rows: 6, a: pa + cs, rowStride: rs, b: pb + bStride)
            t.add(rows: 6, a: pa + 2 * cs, rowStride: rs, b: pb + 2 * bStride)
            t.add(rows: 6, a: pa + 3 * cs, rowStride: rs, b: pb + 3 * bStride)
            pa += 4 * cs; pb += 4 * bStride; left -= 4
        }
    }
    while left > 0 {
        t.add(rows: rows, a: pa, rowStride: rs, b: pb)
        pa += cs; pb += bStride; left -= 1
    }
    t.store(rows: rows, c: c, ldc: ldc, alpha: alpha, beta: beta)
}

/// A whole tile over an A panel read where op(A) is stored transposed (each k's 6 values side by side, k
/// rows `lda` apart), copying each k's 6 values into the packed panel `packed` as it goes: the first
/// column of tiles packs A while its FMAs run, instead of a pass of its own before them that waited on
/// each line of A (a tenth of 512x768x128 TN's time). The line 8 k ahead is asked for: rows 2-3 KiB
/// apart were not followed by the prefetchers (512x768x128 TN 89 -> 92-95 GFLOP/s with it, 4 or 12 k
/// ahead a little less, 32 none). One k a trip: four (the pointers of four rows) spilled and lost a tenth.
@inline(__always)
private func tilePackingTransposedA<V: SIMD>(_: V.Type, kc: Int, source: UnsafePointer<Float>, lda: Int,
                                             packed: UnsafeMutablePointer<Float>, b: UnsafePointer<Float>, bStride: Int,
                                             c: UnsafeMutablePointer<Float>, ldc: Int, alpha: Float, beta: Float)
    where V.Scalar == Float {
    TileAccumulators<V>.prefetchOldTile(rows: 6, c: c, ldc: ldc, beta: beta)
    var t = TileAccumulators<V>()
    var pa = source, pd = UnsafeMutableRawPointer(packed), pb = b
    for _ in 0..<kc {
        ddp_prefetch_l1(pa + 8 * lda) // a hint: past A's last row it does nothing
        pd.storeBytes(of: UnsafeRawPointer(pa).loadUnaligned(as: SIMD4<Float>.self), as: SIMD4<Float>.self)
        (pd + 16).storeBytes(of: UnsafeRawPointer(pa + 4).loadUnaligned(as: SIMD2<Float>.self), as: SIMD2<Float>.self)
        t.add(rows: 6, a: pa, rowStride: 1, b: pb)
        pa += lda; pd += 24; pb += bStride
    }
    t.store(rows: 6, c: c, ldc: ldc, alpha: alpha, beta: beta)
}

/// A whole tile over an A panel read where op(A) is stored untransposed (each k's 6 values in 6 rows `lda`
/// apart, each row's k side by side), copying each k's 6 values into the packed panel `packed` as it
/// goes: packing such a panel alone transposes 6 rows in registers, a pass before the FMAs that was 3.5 %
/// of 512^3 NN on a Zen 4. The copies' 6 loads and 6 stores a k go to the load and store ports beside
/// the AVX-512 kernel's 12 zmm FMAs (12 cycles on Zen 4's 256-bit units). The column still runs ~1.6x
/// a plain one there (as the transposed one does; why is not settled: prefetching the 6 rows 32 or 64
/// floats ahead once per 8 k changed nothing), so the gain is the pass's transposes, 1-2 %
/// (GemmMicroKernel.packsAInFirstColumn). It repeats tilePackingTransposedA's frame around its own
/// copy: the k step written as a nested function (the frame's loop calling it) kept the accumulators in
/// memory, -15 %.
@inline(__always)
private func tilePackingUntransposedA<V: SIMD>(_: V.Type, kc: Int, source: UnsafePointer<Float>, lda: Int,
                                               packed: UnsafeMutablePointer<Float>, b: UnsafePointer<Float>, bStride: Int,
                                               c: UnsafeMutablePointer<Float>, ldc: Int, alpha: Float, beta: Float)
    where V.Scalar == Float {
    TileAccumulators<V>.prefetchOldTile(rows: 6, c: c, ldc: ldc, beta: beta)
    var t = TileAccumulators<V>()
    var pa = source, pd = packed, pb = b
    for _ in 0..<kc {
        pd[0] = pa[0]; pd[1] = pa[lda]; pd[2] = pa[2 * lda]; pd[3] = pa[3 * lda]; pd[4] = pa[4 * lda]; pd[5] = pa[5 * lda]
        t.add(rows: 6, a: pa, rowStride: lda, b: pb)
        pa += 1; pd += 6; pb += bStride
    }
    t.store(rows: 6, c: c, ldc: ldc, alpha: alpha, beta: beta)
}

/// 6 x 16 tile in SIMD8 accumulators: 15 of AVX2's 16 ymm registers.
@inline(__always)
func microKernel6x16(kc: Int, a: UnsafePointer<Float>, rowStride rs: Int, colStride cs: Int, b: UnsafePointer<Float>,
                     bStride: Int, c: UnsafeMutablePointer<Float>, ldc: Int, alpha: Float, beta: Float) {
    microKernel6xTwoVectors(SIMD8<Float>.self, rows: 6, kc: kc, a: a, rowStride: rs, colStride: cs, b: b, bStride: bStride, c: c, ldc: ldc, alpha: alpha, beta: beta)
}

/// 6 x 32 tile in SIMD16 accumulators: fits AVX-512's 32 zmm registers (spills on AVX2, still correct).
@inline(__always)
func microKernel6x32(kc: Int, a: UnsafePointer<Float>, rowStride rs: Int, colStride cs: Int, b: UnsafePointer<Float>,
                     bStride: Int, c: UnsafeMutablePointer<Float>, ldc: Int, alpha: Float, beta: Float) {
    microKernel6xTwoVectors(SIMD16<Float>.self, rows: 6, kc: kc, a: a, rowStride: rs, colStride: cs, b: b, bStride: bStride, c: c, ldc: ldc, alpha: alpha, beta: beta)
}

/// A tile of `rows` (1...5) rows of either width. Each case passes its row count as a literal, so each
/// is compiled without the other rows' FMAs; the full tiles above pass 6 the same way (a row count
/// passed through as a variable had left five compares in the hot loop wherever the compiler outlined
/// the kernel, as it did for row-major A panels).
func microKernelRows(_ kernel: GemmMicroKernel, rows: Int, kc: Int, a: UnsafePointer<Float>, rowStride rs: Int, colStride cs: Int,
                     b: UnsafePointer<Float>, bStride: Int, c: UnsafeMutablePointer<Float>, ldc: Int, alpha: Float, beta: Float) {
    @inline(__always) func run<V: SIMD>(_ type: V.Type, _ rows: Int) where V.Scalar == Float {
        microKernel6xTwoVectors(type, rows: rows, kc: kc, a: a, rowStride: rs, colStride: cs, b: b, bStride: bStride, c: c, ldc: ldc,
                                alpha: alpha, beta: beta)
    }
    switch (kernel, rows) {
    case (.simd8x6x16, 1): run(SIMD8<Float>.self, 1)
    case (.simd8x6x16, 2): run(SIMD8<Float>.self, 2)
    case (.simd8x6x16, 3): run(SIMD8<Float>.self, 3)
    case (.simd8x6x16, 4): run(SIMD8<Float>.self, 4)
    case (.simd8x6x16, _): run(SIMD8<Float>.self, 5)
    case (.simd16x6x32, 1): run(SIMD16<Float>.self, 1)
    case (.simd16x6x32, 2): run(SIMD16<Float>.self, 2)
    case (.simd16x6x32, 3): run(SIMD16<Float>.self, 3)
    case (.simd16x6x32, 4): run(SIMD16<Float>.self, 4)
    case (.simd16x6x32, _): run(SIMD16<Float>.self, 5)
    }
}

/// Lines of C asked for ahead of a tile's store (`prefetchw`): the micro-kernel stores its tile at
/// the end, and a tile of a C that is not in cache (a layer's fresh activations) otherwise waits there
/// for each of its lines in turn.
struct TileAhead {
    var c: UnsafeMutablePointer<Float>
    var rows: Int
    var cols: Int

    @inline(__always)
    func prefetch(ldc: Int) {
        var row = UnsafeRawPointer(c)
        for _ in 0..<rows {
            ddp_prefetch_write(row); ddp_prefetch_write(row + 4 * (cols - 1))
            row += 4 * ldc
        }
    }
}

/// A column of tiles down a block of `rows` rows of packed A panels (k-major, panel t at a + t * 6 * kc)
/// against one B panel, the micro-kernel inlined into the loop: a tile costs no call and no stride
/// arithmetic (768x128x512 NN spent 5 % of its time between calls), and a last tile of fewer rows runs
/// only its rows' FMAs with the same constant strides. Each tile prefetches the next one's C; the last
/// prefetches `after` (the next column's first tile).
@inline(__always)
private func microKernelColumn<V: SIMD>(_ type: V.Type, rows: Int, kc: Int, a: UnsafePointer<Float>, b: UnsafePointer<Float>,
                                        bStride: Int, c: UnsafeMutablePointer<Float>, ldc: Int, alpha: Float, beta: Float,
                                        after: TileAhead?) where V.Scalar == Float {
    @inline(__always) func tile(_ n: Int, _ t: Int) {
        microKernel6xTwoVectors(type, rows: n, kc: kc, a: a + t * 6 * kc, rowStride: 1, colStride: 6, b: b, bStride: bStride,
                                c: c + t * 6 * ldc, ldc: ldc, alpha: alpha, beta: beta)
    }
    let whole = rows / 6, extra = rows % 6
    for t in 0..<whole {
        if t + 1 < whole || extra > 0 {
            TileAhead(c: c + (t + 1) * 6 * ldc, rows: min(6, rows - (t + 1) * 6), cols: 2 * V.scalarCount).prefetch(ldc: ldc)
        } else {
            after?.prefetch(ldc: ldc)
        }
        tile(6, t)
    }
    guard extra > 0 else { return }
    after?.prefetch(ldc: ldc)
    switch extra {
    case 1: tile(1, whole)
    case 2: tile(2, whole)
    case 3: tile(3, whole)
    case 4: tile(4, whole)
    default: tile(5, whole)
    }
}

/// Where a column of tiles reads its whole A panels while packing them: op(A)'s element (i, k) of the
/// block at base[k * lda + i] when `transposed`, else at base[i * lda + k].
struct PackingSource {
    var base: UnsafePointer<Float>
    var lda: Int
    var transposed: Bool

    /// The block of op(A) that starts at row `rowStart`, k `colStart`, of an A stored as `transA` says.
    init(_ a: UnsafePointer<Float>, lda: Int, _ transA: Transpose, rowStart: Int, colStart: Int) {
        transposed = transA == .transposed
        base = transposed ? a + colStart * lda + rowStart : a + rowStart * lda + colStart
        self.lda = lda
    }
}

func microKernelColumn(_ kernel: GemmMicroKernel, rows: Int, kc: Int, a: UnsafePointer<Float>, b: UnsafePointer<Float>, bStride: Int,
                       c: UnsafeMutablePointer<Float>, ldc: Int, alpha: Float, beta: Float, after: TileAhead?) {
    switch kernel {
    case .simd8x6x16:
        microKernelColumn(SIMD8<Float>.self, rows: rows, kc: kc, a: a, b: b, bStride: bStride, c: c, ldc: ldc, alpha: alpha, beta: beta, after: after)
    case .simd16x6x32:
        microKernelColumn(SIMD16<Float>.self, rows: rows, kc: kc, a: a, b: b, bStride: bStride, c: c, ldc: ldc, alpha: alpha, beta: beta, after: after)
    }
}

/// The whole tiles of a column (`rows / 6` of them) reading A where it is stored and writing its packed
/// panels at `packed` as they go (tilePackingTransposedA, tilePackingUntransposedA); the caller runs a last
/// tile of fewer rows on its packed panel. A function of its own, not an optional source threaded
/// through microKernelColumn: so threaded, the common column's loop compiled differently and 256^3 NN
/// ran 2 % slower.
func microKernelColumnPackingA(_ kernel: GemmMicroKernel, rows: Int, kc: Int, source: PackingSource, packed: UnsafeMutablePointer<Float>,
                               b: UnsafePointer<Float>, bStride: Int, c: UnsafeMutablePointer<Float>, ldc: Int, alpha: Float, beta: Float,
                               after: TileAhead?) {
    @inline(__always) func column<V: SIMD>(_ type: V.Type) where V.Scalar == Float {
        let whole = rows / 6
        for t in 0..<whole {
            if t + 1 < whole || rows % 6 > 0 {
                TileAhead(c: c + (t + 1) * 6 * ldc, rows: min(6, rows - (t + 1) * 6), cols: 2 * V.scalarCount).prefetch(ldc: ldc)
            } else {
                after?.prefetch(ldc: ldc)
            }
            if source.transposed {
                tilePackingTransposedA(type, kc: kc, source: source.base + t * 6, lda: source.lda, packed: packed + t * 6 * kc,
                                       b: b, bStride: bStride, c: c + t * 6 * ldc, ldc: ldc, alpha: alpha, beta: beta)
            } else {
                tilePackingUntransposedA(type, kc: kc, source: source.base + t * 6 * source.lda, lda: source.lda, packed: packed + t * 6 * kc,
                                         b: b, bStride: bStride, c: c + t * 6 * ldc, ldc: ldc, alpha: alpha, beta: beta)
            }
        }
    }
    switch kernel {
    case .simd8x6x16: column(SIMD8<Float>.self)
    case .simd16x6x32: column(SIMD16<Float>.self)
    }
}
