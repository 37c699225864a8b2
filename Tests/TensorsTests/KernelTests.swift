import Foundation
import Tensors
import XCTest

/// Every non-GEMM kernel against Double references. Lengths include 1, 3, 17, 33, 65 and 257 so that
/// both the SIMD16 body and the scalar tail run. Backward passes are checked against central finite
/// differences of the Double forward (an oracle independent of the analytic formula).
final class KernelTests: XCTestCase {
    let lengths = [1, 3, 7, 17, 33, 65, 257]

    /// A paged buffer hands whole pages of a zeroed range back to the kernel unless told to keep them
    /// (ZeRO-2 keeps a rank's own pieces resident); either way the range reads as zero and the rest is kept.
    func testPagedBufferZeroReleasesOrKeepsPages() {
        let page = Int(sysconf(Int32(_SC_PAGESIZE))) / 4, buffer = FloatBuffer(pagedCount: 8 * page + 10)
        buffer.buffer.update(repeating: 3)
        let all = buffer.residentBytes
        XCTAssertEqual(all, 9 * 4 * page)
        buffer.zero(page / 2..<(3 * page + 5), releasing: false)
        XCTAssertEqual(buffer.residentBytes, all)
        buffer.zero(page / 2..<(3 * page + 5))
        XCTAssertEqual(buffer.residentBytes, all - 2 * 4 * page, "pages 1 and 2 lie wholly inside the range")
        XCTAssertTrue(buffer.buffer[(page / 2)..<(3 * page + 5)].allSatisfy { $0 == 0 })
        XCTAssertEqual(buffer.buffer[page / 2 - 1], 3); XCTAssertEqual(buffer.buffer[3 * page + 5], 3)
    }

    func testElementwiseKernels() {
        var rng = TestRandom(seed: 11)
        for n in lengths {
            let a = rng.tensor([n]), b = rng.tensor([n]), out = Tensor(zeros: [n])
            add(a.data, b.data, into: out.data, count: n)
            assertClose(out.data, (0..<n).map { Double(a[$0]) + Double(b[$0]) }, relative: 1e-6, "add n=\(n)")
            multiply(a.data, b.data, into: out.data, count: n)
            assertClose(out.data, (0..<n).map { Double(a[$0]) * Double(b[$0]) }, relative: 1e-6, "mul n=\(n)")
            let y = b.toArray()
            axpy(-1.5, a.data, b.data, count: n)
            assertClose(b.data, (0..<n).map { Double(y[$0]) - 1.5 * Double(a[$0]) }, relative: 1e-6, "axpy n=\(n)")
            let x = a.toArray()
            scale(a.data, by: 3, count: n)
            assertClose(a.data, x.map { 3 * Double($0) }, relative: 1e-6, "scale n=\(n)")
            reluForward(a.data, into: out.data, count: n)
            assertClose(out.data, a.toArray().map { max(Double($0), 0) }, relative: 0, absolute: 0, "relu n=\(n)")
            let dx = Tensor(zeros: [n])
            reluBackward(a.data, b.data, accumulatingInto: dx.data, count: n)
            assertClose(dx.data, (0..<n).map { a[$0] > 0 ? Double(b[$0]) : 0 }, relative: 0, absolute: 0, "relu' n=\(n)")
        }
    }

    func testBiasAndReductions() {
        var rng = TestRandom(seed: 12)
        for cols in lengths {
            let rows = 5
            let x = rng.tensor([rows, cols]), bias = rng.tensor([cols])
            let before = x.toArray()
            addBias(bias.data, to: x.data, rows: rows, cols: cols)
            assertClose(x.data, (0..<rows * cols).map { Double(before[$0]) + Double(bias[$0 % cols]) },
                        relative: 1e-6, "bias cols=\(cols)")
            let colSums = Tensor(zeros: [cols])
            colSums.fill(1)
            addColumnSums(of: x.data, rows: rows, cols: cols, into: colSums.data)
            assertClose(colSums.data, (0..<cols).map { j in 1 + (0..<rows).reduce(0.0) { $0 + Double(x[$1 * cols + j]) } },
                        relative: 1e-5, "column sums cols=\(cols)")
            let rs = Tensor(zeros: [rows])
            rowSums(of: x.data, rows: rows, cols: cols, into: rs.data)
            assertClose(rs.data, (0..<rows).map { r in (0..<cols).reduce(0.0) { $0 + Double(x[r * cols + $1]) } },
                        relative: 1e-5, absolute: 1e-5, "row sums cols=\(cols)")
            XCTAssertEqual(sumOfSquares(x.data, count: x.count), x.toArray().reduce(0.0) { $0 + Double($1 * $1) },
                           accuracy: 1e-4)
        }
    }

    func testVectorExpAndTanhAccuracy() {
        // Relative error of exp stays within a few ulp over the whole normal range; tanh saturates.
        var worst = 0.0
        var x: Float = -87
        while x < 88 {
            let got = vectorExp(SIMD16(repeating: x))[0]
            worst = max(worst, abs(Double(got) - Foundation.exp(Double(x))) / Foundation.exp(Double(x)))
            x += 0.0137
        }
        XCTAssertLessThan(worst, 5e-7, "vectorExp max relative error")
        for u: Float in [-1e4, -50, -3, -0.1, 0, 1e-3, 0.7, 5, 50, 1e4] {
            XCTAssertEqual(Double(vectorTanh(SIMD16(repeating: u))[0]), tanh(Double(u)), accuracy: 2e-7, "tanh(\(u))")
        }
        XCTAssertEqual(vectorExp(SIMD16(repeating: -1e4))[0], Float(Foundation.exp(-87.33654)), accuracy: 8 * Float.leastNonzeroMagnitude)
        XCTAssertTrue(vectorExp(SIMD16(repeating: 1e4))[0].isFinite)
    }

    /// vectorSquareRoot (one vsqrtps through CShims) gives the scalar square root's bits in every lane,
    /// special values included; vectorMin/vectorMax keep NaN from the first operand, as exp's clamp needs.
    func testVectorSquareRootAndMinMaxAgreeWithScalars() {
        var rng = SeededRandom(seed: 9)
        var values: [Float] = [0, -0.0, 1, 2, .infinity, -1, -.infinity, .nan, .leastNonzeroMagnitude, .leastNormalMagnitude,
                               .greatestFiniteMagnitude, 1e-30, 3e38, 0.25, 1e-8, 4]
        values += (0..<48).map { _ in abs(rng.nextNormal()) * 1e3 }
        for start in stride(from: 0, to: values.count, by: 16) {
            var v = SIMD16<Float>()
            for lane in 0..<16 { v[lane] = values[start + lane] }
            let root = vectorSquareRoot(v)
            for lane in 0..<16 {
                let expected = values[start + lane].squareRoot()
                XCTAssertTrue(root[lane].bitPattern == expected.bitPattern || (root[lane].isNaN && expected.isNaN),
                              "sqrt(\(values[start + lane])): \(root[lane]) against \(expected)")
            }
        }
        let a = SIMD16<Float>(repeating: .nan), b = SIMD16<Float>(repeating: 2)
        XCTAssertTrue(vectorMax(a, b)[0].isNaN && vectorMin(a, b)[0].isNaN)
        XCTAssertEqual(vectorMax(b, SIMD16(repeating: 3))[5], 3); XCTAssertEqual(vectorMin(b, SIMD16(repeating: 3))[5], 2)
    }

    /// Both forms against double references (the exact one against libm's erf; the rational erf is within
    /// 3e-7 absolute of erf, so 1e-6 absolute holds), every length (vector body and tails), and
    /// backward against central differences of the same reference.
    func testGELUForwardAndBackward() {
        var rng = TestRandom(seed: 13)
        for (form, reference) in [(GELUForm.tanh, Reference.gelu), (.exact, Reference.geluExact)] {
            for n in lengths {
                let x = rng.tensor([n], scale: 4), y = Tensor(zeros: [n]), dy = rng.tensor([n]), dx = rng.tensor([n])
                let dx0 = dx.toArray()
                geluForward(x.data, into: y.data, count: n, form: form)
                assertClose(y.data, x.toArray().map { reference(Double($0)) }, relative: 1e-5, absolute: 1e-6, "gelu \(form) n=\(n)")
                geluBackward(x.data, dy.data, accumulatingInto: dx.data, count: n, form: form)
                let numeric = (0..<n).map { i -> Double in
                    let v = Double(x[i]), h = 1e-5
                    return Double(dx0[i]) + Double(dy[i]) * (reference(v + h) - reference(v - h)) / (2 * h)
                }
                assertClose(dx.data, numeric, relative: 1e-4, absolute: 1e-5, "gelu \(form) backward n=\(n)")
            }
        }
        // The fused recompute (value out, slope in place) gives geluForward's bits and, times dout,
        // geluBackward's (accumulate: false) for the exact form, bodies and tails; the tanh form's
        // backward rounds its cubic term in another order (and its tails are scalar): within 1e-6.
        for form in GELUForm.allCases {
            for n in lengths {
                let x = rng.tensor([n], scale: 4), dy = rng.tensor([n])
                let y = Tensor(zeros: [n]), dx = Tensor(zeros: [n]), fusedY = Tensor(zeros: [n]), slope = Tensor(zeros: [n])
                geluForward(x.data, into: y.data, count: n, form: form)
                geluBackward(x.data, dy.data, accumulatingInto: dx.data, count: n, form: form, accumulate: false)
                slope.data.update(from: x.data, count: n)
                geluForwardAndSlope(slope.data, into: fusedY.data, count: n, form: form)
                multiply(dy.data, slope.data, into: slope.data, count: n)
                for i in 0..<n {
                    XCTAssertEqual(fusedY[i].bitPattern, y[i].bitPattern, "gelu \(form) fused value n=\(n) i=\(i)")
                    if form == .exact {
                        XCTAssertEqual(slope[i].bitPattern, dx[i].bitPattern, "gelu exact fused slope n=\(n) i=\(i)")
                    } else {
                        XCTAssertEqual(slope[i], dx[i], accuracy: 1e-6 * max(1, abs(dx[i])), "gelu tanh fused slope n=\(n) i=\(i)")
                    }
                }
            }
        }
        // The two forms differ (by up to ~1e-3 around |x| ~ 2): the option must change the model.
        let x = Tensor(zeros: [16]), a = Tensor(zeros: [16]), b = Tensor(zeros: [16])
        for i in 0..<16 { x[i] = Float(i) / 4 - 2 }
        geluForward(x.data, into: a.data, count: 16, form: .exact)
        geluForward(x.data, into: b.data, count: 16, form: .tanh)
        XCTAssertGreaterThan((0..<16).map { abs(a[$0] - b[$0]) }.max()!, 1e-5)
    }

    func testSoftmaxForwardBackwardAndLargeLogits() {
        var rng = TestRandom(seed: 14)
        for cols in lengths {
            let rows = 3
            let x = rng.tensor([rows, cols], scale: 5), y = Tensor(zeros: [rows, cols])
            softmaxForward(x.data, into: y.data, rows: rows, cols: cols)
            var expected: [Double] = []
            for r in 0..<rows { expected += Reference.softmax((0..<cols).map { Double(x[r * cols + $0]) }) }
            assertClose(y.data, expected, relative: 1e-5, absolute: 1e-7, "softmax cols=\(cols)")

            let dy = rng.tensor([rows, cols]), dx = Tensor(zeros: [rows, cols])
            softmaxBackward(y.data, dy.data, accumulatingInto: dx.data, rows: rows, cols: cols)
            var numeric: [Double] = []
            for r in 0..<rows {
                let row = (0..<cols).map { Double(x[r * cols + $0]) }
                let g = (0..<cols).map { Double(dy[r * cols + $0]) }
                numeric += finiteDifference(row) { v in zip(Reference.softmax(v), g).reduce(0) { $0 + $1.0 * $1.1 } }
            }
            assertClose(dx.data, numeric, relative: 1e-4, absolute: 1e-6, "softmax backward cols=\(cols)")
        }
        let big = Tensor(shape: [2, 3], values: [1e4, -1e4, 0, -1e4, -1e4, -1e4]), y = Tensor(zeros: [2, 3])
        softmaxForward(big.data, into: y.data, rows: 2, cols: 3)
        XCTAssertTrue(y.toArray().allSatisfy { $0.isFinite }, "softmax with logits of ±1e4: \(y.toArray())")
        XCTAssertEqual(y[0], 1, accuracy: 1e-6)
        XCTAssertEqual(y[4], 1.0 / 3, accuracy: 1e-6)
    }

    func testLayerNormForwardBackwardAndConstantRow() {
        var rng = TestRandom(seed: 15)
        for cols in lengths where cols > 1 {
            for withBias in [false, true] {
                let rows = 4
                let x = rng.tensor([rows, cols], scale: 3), w = rng.tensor([cols]), b = rng.tensor([cols])
                let y = Tensor(zeros: [rows, cols]), mean = Tensor(zeros: [rows]), rstd = Tensor(zeros: [rows])
                layerNormForward(x.data, weight: w.data, bias: withBias ? b.data : nil, into: y.data,
                                 mean: mean.data, rstd: rstd.data, rows: rows, cols: cols)
                let wd = w.toArray().map(Double.init), bd = withBias ? b.toArray().map(Double.init) : nil
                var expected: [Double] = [], means: [Double] = [], rstds: [Double] = []
                for r in 0..<rows {
                    let (yr, m, s) = Reference.layerNorm((0..<cols).map { Double(x[r * cols + $0]) }, weight: wd, bias: bd)
                    expected += yr; means.append(m); rstds.append(s)
                }
                assertClose(y.data, expected, relative: 1e-4, absolute: 1e-5, "layernorm cols=\(cols)")
                assertClose(mean.data, means, relative: 1e-5, absolute: 1e-6, "layernorm mean")
                assertClose(rstd.data, rstds, relative: 1e-4, "layernorm rstd")

                let dy = rng.tensor([rows, cols])
                let dx = Tensor(zeros: [rows, cols]), dw = Tensor(zeros: [cols]), db = Tensor(zeros: [cols])
                layerNormBackward(x.data, weight: w.data, mean: mean.data, rstd: rstd.data, dy: dy.data, dx: dx.data,
                                  dweight: dw.data, dbias: withBias ? db.data : nil, rows: rows, cols: cols)
                var numericX: [Double] = [], numericW = [Double](repeating: 0, count: cols), numericB = numericW
                for r in 0..<rows {
                    let row = (0..<cols).map { Double(x[r * cols + $0]) }
                    let g = (0..<cols).map { Double(dy[r * cols + $0]) }
                    numericX += finiteDifference(row) { v in
                        zip(Reference.layerNorm(v, weight: wd, bias: bd).0, g).reduce(0) { $0 + $1.0 * $1.1 }
                    }
                    let (yr, m, s) = Reference.layerNorm(row, weight: wd, bias: bd)
                    _ = yr
                    for j in 0..<cols { numericW[j] += g[j] * (row[j] - m) * s; numericB[j] += g[j] }
                }
                assertClose(dx.data, numericX, relative: 2e-4, absolute: 2e-5, "layernorm dx cols=\(cols)")
                assertClose(dw.data, numericW, relative: 1e-4, absolute: 1e-5, "layernorm dweight cols=\(cols)")
                if withBias { assertClose(db.data, numericB, relative: 1e-5, absolute: 1e-6, "layernorm dbias") }
            }
        }
        // A constant row has zero variance: output is finite and equals the bias.
        let x = Tensor(shape: [1, 5], values: [3, 3, 3, 3, 3]), w = Tensor(shape: [5], values: [1, 2, 3, 4, 5])
        let b = Tensor(shape: [5], values: [0.5, 0.5, 0.5, 0.5, 0.5])
        let y = Tensor(zeros: [1, 5]), mean = Tensor(zeros: [1]), rstd = Tensor(zeros: [1])
        layerNormForward(x.data, weight: w.data, bias: b.data, into: y.data, mean: mean.data, rstd: rstd.data, rows: 1, cols: 5)
        XCTAssertEqual(y.toArray(), [0.5, 0.5, 0.5, 0.5, 0.5])
        XCTAssertTrue(rstd[0].isFinite)
    }

    func testCrossEntropyForwardBackwardAndLargeLogits() {
        var rng = TestRandom(seed: 16)
        for classes in lengths {
            let rows = 6
            let logits = rng.tensor([rows, classes], scale: 4)
            let targets = (0..<rows).map { _ in Int32(Int(rng.next() % UInt64(classes))) }
            let probs = Tensor(zeros: [rows, classes]), losses = Tensor(zeros: [rows])
            let mean = targets.withUnsafeBufferPointer {
                crossEntropyForward(logits.data, targets: $0.baseAddress!, probs: probs.data, losses: losses.data,
                                    rows: rows, classes: classes)
            }
            func loss(_ row: [Double], _ t: Int) -> Double {
                let m = row.max()!
                return Foundation.log(row.reduce(0) { $0 + Foundation.exp($1 - m) }) + m - row[t]
            }
            let rowsD = (0..<rows).map { r in (0..<classes).map { Double(logits[r * classes + $0]) } }
            let expected = (0..<rows).map { loss(rowsD[$0], Int(targets[$0])) }
            assertClose(losses.data, expected, relative: 1e-5, absolute: 1e-6, "cross-entropy classes=\(classes)")
            XCTAssertEqual(Double(mean), expected.reduce(0, +) / Double(rows), accuracy: 1e-5)

            let dlogits = Tensor(zeros: [rows, classes])
            targets.withUnsafeBufferPointer {
                crossEntropyBackward(probs: probs.data, targets: $0.baseAddress!, lossScale: 1 / Float(rows),
                                     accumulatingInto: dlogits.data, rows: rows, classes: classes)
            }
            var numeric: [Double] = []
            for r in 0..<rows { numeric += finiteDifference(rowsD[r]) { loss($0, Int(targets[r])) / Double(rows) } }
            assertClose(dlogits.data, numeric, relative: 1e-4, absolute: 1e-6, "cross-entropy backward classes=\(classes)")
        }
        let logits = Tensor(shape: [2, 3], values: [1e4, -1e4, 0, -1e4, 1e4, 1e4])
        let probs = Tensor(zeros: [2, 3]), losses = Tensor(zeros: [2])
        let targets: [Int32] = [1, 2]
        let mean = crossEntropyForward(logits.data, targets: targets, probs: probs.data, losses: losses.data, rows: 2, classes: 3)
        XCTAssertTrue(mean.isFinite && probs.toArray().allSatisfy { $0.isFinite }, "loss \(mean), probs \(probs.toArray())")
        XCTAssertEqual(losses[0], 2e4, accuracy: 1)
        XCTAssertEqual(losses[1], Float(Foundation.log(2.0)), accuracy: 1e-5)
    }

    func testEmbeddingGatherAndScatterAdd() {
        var rng = TestRandom(seed: 17)
        let vocabulary = 11
        for dim in lengths {
            let table = rng.tensor([vocabulary, dim])
            let ids: [Int32] = [3, 0, 10, 3, 7]
            let out = Tensor(zeros: [ids.count, dim])
            embeddingForward(table.data, ids: ids, count: ids.count, dim: dim, vocabulary: vocabulary, into: out.data)
            let expected = ids.flatMap { id in (0..<dim).map { Double(table[Int(id) * dim + $0]) } }
            assertClose(out.data, expected, relative: 0, absolute: 0, "embedding gather dim=\(dim)")
            let dout = rng.tensor([ids.count, dim]), dtable = Tensor(zeros: [vocabulary, dim])
            embeddingBackward(dout.data, ids: ids, count: ids.count, dim: dim, accumulatingInto: dtable.data)
            var grad = [Double](repeating: 0, count: vocabulary * dim)
            for (i, id) in ids.enumerated() { for j in 0..<dim { grad[Int(id) * dim + j] += Double(dout[i * dim + j]) } }
            assertClose(dtable.data, grad, relative: 1e-6, absolute: 1e-7, "embedding scatter-add dim=\(dim)")
        }
    }
}

/// d f / d x_i by central differences in Double.
func finiteDifference(_ x: [Double], step: Double = 1e-6, _ f: ([Double]) -> Double) -> [Double] {
    x.indices.map { i in
        var plus = x, minus = x
        plus[i] += step
        minus[i] -= step
        return (f(plus) - f(minus)) / (2 * step)
    }
}
