import Dispatch
import Support
import Tensors
import XCTest

final class GemmTests: XCTestCase {
    /// Runs one gemm through `kernel` and compares with the Double reference. The tolerance is
    /// 1e-5 of sum_k |a b| per element: float32 accumulation of up to ~2000 terms stays well inside it,
    /// while a wrong index, a missed edge or a lost panel is off by the size of the terms themselves.
    func check(_ ta: Transpose, _ tb: Transpose, m: Int, n: Int, k: Int, alpha: Float = 1, beta: Float = 0,
               padA: Int = 0, padB: Int = 0, padC: Int = 0, kernel: GemmMicroKernel, seed: UInt64,
               file: StaticString = #filePath, line: UInt = #line) {
        var rng = TestRandom(seed: seed)
        let lda = (ta == .none ? k : m) + padA, ldb = (tb == .none ? n : k) + padB, ldc = n + padC
        let a = rng.tensor([(ta == .none ? m : k) * lda])
        let b = rng.tensor([(tb == .none ? k : n) * ldb])
        let c = rng.tensor([max(m * ldc, 1)])
        if beta == 0 { c.fill(.nan) } // beta == 0 must overwrite, not scale, what C held
        let before = c.toArray()
        let expected = Reference.gemm(ta, tb, m: m, n: n, k: k, alpha: Double(alpha), a: a, lda: lda, b: b, ldb: ldb,
                                      beta: Double(beta), c: before, ldc: ldc)
        gemm(ta, tb, m: m, n: n, k: k, alpha: alpha, a: a.data, lda: lda, b: b.data, ldb: ldb,
             beta: beta, c: c.data, ldc: ldc, kernel: kernel)
        var packed = [Float](repeating: 0, count: m * n)
        for i in 0..<m { for j in 0..<n { packed[i * n + j] = c[i * ldc + j] } }
        packed.withUnsafeBufferPointer { got in
            assertClose(got.baseAddress!, expected.values, tolerance: { 1e-5 * expected.magnitude[$0] + 1e-7 },
                        "gemm \(ta) \(tb) m=\(m) n=\(n) k=\(k) alpha=\(alpha) beta=\(beta) \(kernel)",
                        file: file, line: line)
        }
        // Padding columns of C beyond n are not part of the matrix and must be left alone.
        for i in 0..<m { for j in n..<ldc where !(c[i * ldc + j].isNaN && before[i * ldc + j].isNaN) {
            XCTAssertEqual(c[i * ldc + j], before[i * ldc + j], "gemm wrote outside C at row \(i) col \(j)",
                           file: file, line: line)
        } }
    }

    let transposes: [(Transpose, Transpose)] = [(.none, .none), (.none, .transposed), (.transposed, .none), (.transposed, .transposed)]

    func testSmallAwkwardShapesAllTransposesBothKernels() {
        let sizes = [1, 3, 7, 17, 33]
        var seed: UInt64 = 1
        for kernel in GemmMicroKernel.allCases {
            for (ta, tb) in transposes {
                for m in sizes { for n in sizes { for k in sizes {
                    seed += 1
                    check(ta, tb, m: m, n: n, k: k, kernel: kernel, seed: seed)
                } } }
            }
        }
    }

    /// The narrow path (op(B) at most 12 columns, K at least 32, A untransposed) in tiles of 2 rows and
    /// up to 5 columns: every width 1-12 (so every column count of a last tile), an odd M (a last tile
    /// of one row), K with and without a scalar tail, both layouts of B, beta 0, 1 and 0.5 (each its own
    /// branch where a row's first 4 results are stored as one vector).
    func testNarrowPathEveryWidth() {
        var seed: UInt64 = 9000
        for tb in [Transpose.none, .transposed] {
            for n in 1...12 {
                for (m, k) in [(5, 37), (4, 40)] {
                    for beta: Float in [0, 1, 0.5] {
                        seed += 1
                        check(.none, tb, m: m, n: n, k: k, alpha: 0.5, beta: beta, padB: 1, padC: 2, kernel: .native, seed: seed)
                    }
                }
            }
        }
    }

    func testLargerAndNonSquareShapesCrossingBlockBoundaries() {
        // 515 crosses kc = 512, 257 mc = 96, 2050 nc = 1024 (twice); K = 1 and long thin shapes; 130 x 200 x 77
        // packs A for either kernel with full and partial panels and K not a multiple of 8.
        let shapes: [(Int, Int, Int)] = [(65, 65, 65), (257, 33, 515), (17, 257, 65), (1, 257, 1),
                                         (257, 1, 33), (100, 70, 1), (7, 2050, 3), (97, 49, 300), (130, 200, 77)]
        var seed: UInt64 = 1000
        for kernel in GemmMicroKernel.allCases {
            for (ta, tb) in transposes {
                for (m, n, k) in shapes {
                    seed += 1
                    check(ta, tb, m: m, n: n, k: k, kernel: kernel, seed: seed)
                }
            }
        }
    }

    func testAlphaBetaAndLeadingDimensions() {
        var seed: UInt64 = 5000
        for kernel in GemmMicroKernel.allCases {
            for (ta, tb) in transposes {
                seed += 1
                check(ta, tb, m: 19, n: 37, k: 23, alpha: -0.5, beta: 1, kernel: kernel, seed: seed)
                check(ta, tb, m: 19, n: 37, k: 23, alpha: 2, beta: 0.25, padA: 3, padB: 5, padC: 2,
                      kernel: kernel, seed: seed + 100)
                // beta is applied by the first of several K slabs only (1100 = 2 slabs for an A of one M
                // block), on full and edge tiles; n <= 12 takes the narrow path, m <= 12 reads an untransposed B in place (padded
                // rows here); beta 0 over NaNs must not read C.
                for beta: Float in [0, 0.25, 1] {
                    check(ta, tb, m: 13, n: 70, k: 1100, alpha: 1.5, beta: beta, padC: 1, kernel: kernel, seed: seed + 200)
                    check(ta, tb, m: 10, n: 70, k: 1100, alpha: 1.5, beta: beta, padA: 1, padB: 3, padC: 1, kernel: kernel, seed: seed + 400)
                    check(ta, tb, m: 64, n: 10, k: 300, alpha: 1, beta: beta, padA: 2, kernel: kernel, seed: seed + 300)
                    // A short A reads an untransposed B in place in slabs that keep B's rows in L2: rows 256
                    // floats apart give slabs of 256 (3 here), a last panel of 10 columns packed.
                    check(ta, tb, m: 40, n: 250, k: 600, alpha: 1, beta: beta, padB: 6, padC: 1, kernel: kernel, seed: seed + 600)
                    // ... and an A of one tile over rows 512 floats apart in slabs of 128 (3 here).
                    check(ta, tb, m: 7, n: 40, k: 300, alpha: 1, beta: beta, padB: 472, kernel: kernel, seed: seed + 700)
                    // The narrow path's 8 x 8 transposes of B, with columns and k left over and padded rows.
                    check(ta, tb, m: 7, n: 12, k: 45, alpha: 1, beta: beta, padB: 3, kernel: kernel, seed: seed + 500)
                }
            }
        }
    }

    /// A is packed by the first column of tiles while it multiplies (a transposed A on either kernel, an
    /// untransposed one on the AVX-512 kernel; the 6 x 16 kernel packs the latter in a pass, checked on
    /// the same shapes); the later columns read that copy. M 200 is three M blocks whose last ends in a
    /// panel of 2 rows (packed ahead), K 700 two slabs (the second adds to what the first stored), A's
    /// rows padded; a panel copied to the wrong place or a k skipped spoils every later column. N: for a
    /// transposed A 110, six whole 16-wide columns and one of 14 (a narrower product runs as C^T = B^T A);
    /// for an untransposed A 170, five whole 32-wide columns and one of 10 (more than 4 panels, so A is
    /// packed at all). Then a short A (one M block, 4 whole tiles and 2 rows) over a B read in place when
    /// untransposed.
    func testAPackedByTheFirstColumnOfTiles() {
        for (ta, n, shortN, firstSeed) in [(Transpose.transposed, 110, 40, UInt64(9500)), (.none, 170, 140, 9700)] {
            var seed = firstSeed
            for kernel in GemmMicroKernel.allCases {
                for tb in [Transpose.none, .transposed] {
                    for beta: Float in [0, 0.5, 1] {
                        seed += 1
                        check(ta, tb, m: 200, n: n, k: 700, alpha: 1.5, beta: beta, padA: 5, padC: 3, kernel: kernel, seed: seed)
                    }
                    check(ta, tb, m: 26, n: shortN, k: 90, padA: 3, padB: 1, kernel: kernel, seed: seed + 50)
                }
            }
        }
    }

    /// Pack buffers are kept per thread: threads multiplying at once (a rank timing layout shards on
    /// several threads does) must each get the result one thread alone gets, bit for bit, including a
    /// transposed-C product whose scratch is held while the inner call packs.
    func testThreadsMultiplyingAtOnceGetTheSameBitsAsOneThread() {
        /// The shared inputs and one result slot per job; each job writes only its own slot.
        final class Jobs: @unchecked Sendable {
            let shapes: [(Transpose, Transpose, Int, Int, Int)] = [(.none, .transposed, 64, 256, 784), (.transposed, .none, 256, 784, 64),
                                                                   (.none, .none, 97, 49, 300), (.none, .transposed, 17, 257, 65)]
            var inputs: [(Tensor, Tensor)] = []
            var results: [[UInt32]]
            init() {
                var rng = TestRandom(seed: 77)
                results = Array(repeating: [], count: 4 * shapes.count)
                inputs = shapes.map { (_, _, m, n, k) in (rng.tensor([m * k]), rng.tensor([k * n])) }
            }
            func multiply(_ i: Int) -> [UInt32] {
                let (ta, tb, m, n, k) = shapes[i]
                let c = Tensor(zeros: [m * n])
                gemm(ta, tb, m: m, n: n, k: k, a: inputs[i].0.data, b: inputs[i].1.data, c: c.data)
                return c.toArray().map(\.bitPattern)
            }
        }
        let jobs = Jobs()
        let alone = jobs.shapes.indices.map(jobs.multiply)
        jobs.results.withUnsafeMutableBufferPointer { slots in
            nonisolated(unsafe) let slots = slots
            DispatchQueue.concurrentPerform(iterations: slots.count) { j in
                for _ in 0..<3 { slots[j] = jobs.multiply(j % jobs.shapes.count) }
            }
        }
        for (j, result) in jobs.results.enumerated() {
            XCTAssertEqual(result, alone[j % jobs.shapes.count], "shape \(jobs.shapes[j % jobs.shapes.count]) in job \(j)")
        }
    }

    func testZeroSizesAreNoOpsAndKZeroScalesC() {
        let c = Tensor(shape: [2, 3], values: [1, 2, 3, 4, 5, 6])
        let a = Tensor(zeros: [1]), b = Tensor(zeros: [1])
        gemm(.none, .none, m: 2, n: 3, k: 0, a: a.data, lda: 1, b: b.data, ldb: 3, beta: 2, c: c.data, ldc: 3)
        XCTAssertEqual(c.toArray(), [2, 4, 6, 8, 10, 12])
        gemm(.none, .none, m: 0, n: 3, k: 4, a: a.data, lda: 4, b: b.data, ldb: 3, beta: 0, c: c.data, ldc: 3)
        XCTAssertEqual(c.toArray(), [2, 4, 6, 8, 10, 12])
    }

    /// An epilogue is handed every element of C once, after its last K slab: what it sees equals what C
    /// holds at the end. Shapes reach each way through gemm: several K slabs, M and N blocks (257 x 33 x 515,
    /// 7 x 2050 x 3), the narrow path (40 x 5 x 64), the transposed orientation (64 x 256 x 784 NT), K 0.
    func testEpilogueSeesEachElementOnceWhenFinal() {
        let shapes: [(Transpose, Transpose, Int, Int, Int)] = [(.none, .none, 257, 33, 515), (.transposed, .none, 257, 33, 515),
                                                               (.none, .none, 7, 2050, 3), (.none, .none, 40, 5, 64),
                                                               (.none, .transposed, 64, 256, 784), (.none, .none, 9, 20, 0)]
        var seed: UInt64 = 7000
        for kernel in GemmMicroKernel.allCases {
            for (ta, tb, m, n, k) in shapes {
                seed += 1
                var rng = TestRandom(seed: seed)
                let pad = 3, ldc = n + pad
                let a = rng.tensor([max(m * k, 1)]), b = rng.tensor([max(k * n, 1)]), c = rng.tensor([m * ldc])
                var seen = [Float](repeating: .nan, count: m * n), visits = [Int](repeating: 0, count: m * n)
                gemm(ta, tb, m: m, n: n, k: k, a: a.data, lda: ta == .none ? k : m, b: b.data, ldb: tb == .none ? n : k,
                     beta: 0.5, c: c.data, ldc: ldc, kernel: kernel) { block in
                    XCTAssertTrue(block.rows.lowerBound >= 0 && block.rows.upperBound <= m, "rows \(block.rows)")
                    XCTAssertTrue(block.columns.lowerBound >= 0 && block.columns.upperBound <= n, "columns \(block.columns)")
                    for i in block.rows { for j in block.columns { seen[i * n + j] = c[i * ldc + j]; visits[i * n + j] += 1 } }
                }
                let label = "\(ta) \(tb) \(m) x \(n) x \(k) \(kernel)"
                XCTAssertEqual(visits, [Int](repeating: 1, count: m * n), label)
                XCTAssertTrue((0..<m * n).allSatisfy { seen[$0].bitPattern == c[$0 / n * ldc + $0 % n].bitPattern }, label)
            }
        }
    }

    /// GemmBlock.forEachRun: one run for whole rows, one run per row otherwise.
    func testBlockRunsCoverTheBlock() {
        var runs: [[Int]] = []
        GemmBlock(rows: 2..<4, columns: 0..<5).forEachRun(ld: 5) { runs.append([$0, $1]) }
        XCTAssertEqual(runs, [[10, 10]])
        runs = []
        GemmBlock(rows: 2..<4, columns: 1..<3).forEachRun(ld: 5) { runs.append([$0, $1]) }
        XCTAssertEqual(runs, [[11, 2], [16, 2]])
    }

    /// The run-time choice follows the CPU, read here from /proc/cpuinfo's flags on our own (not through
    /// the CPUFeatures parser under test), and the build: AVX-512F on both gets the 6x32 block of SIMD16,
    /// anything else 6x16. A native build (the default) is compiled with AVX-512 exactly when the CPU
    /// has it; a build for another CPU (SWIFT_DDP_TARGET_CPU) says which it was built for.
    func testNativeKernelMatchesCPU() throws {
        let cpuinfo = try String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8)
        guard let flags = cpuinfo.split(separator: "\n").first(where: { $0.hasPrefix("flags") }) else { return XCTFail("no flags line") }
        let hasAVX512F = flags.split(separator: " ").contains("avx512f")
        let target = BuildCPU.target
        XCTAssertFalse(target.isEmpty)
        if target == "native" { XCTAssertEqual(CPUFeatures.builtWithAVX512F, hasAVX512F) }
        XCTAssertEqual(GemmMicroKernel.native, hasAVX512F && CPUFeatures.builtWithAVX512F ? .simd16x6x32 : .simd8x6x16)
        XCTAssertEqual(CPUFeatures.current.avx512f, hasAVX512F)
    }
}
