import NN
import Tensors
import XCTest

/// Finite-difference gradient checks. Forward runs in float32, so each numeric derivative carries an
/// error of roughly eps * |loss| / h; with h = 1e-3 that is ~1e-4. The check is on the whole gradient of
/// each parameter: ||numeric - analytic|| <= 3e-3 ||numeric|| (+ a small floor), which a wrong sign,
/// index or missing term (errors of order 1) fails by far. Large parameters are checked on maxEntries
/// distinct entries spread over the whole tensor (a fixed stride from a seeded start), never the same twice.
func checkGradients(_ parameters: ParameterSet, maxEntries: Int = 64, step: Float = 1e-3,
                    loss: () throws -> Double, backward: () throws -> Void, file: StaticString = #filePath, line: UInt = #line) rethrows {
    parameters.zeroGradients()
    _ = try loss()
    try backward()
    let analytic = Array(parameters.gradients.buffer)
    var rng = SeededRandom(seed: 99)
    for p in parameters.parameters {
        let n = p.value.count
        let start = rng.nextInt(below: n)
        let indices = n <= maxEntries ? Array(0..<n) : (0..<maxEntries).map { (start + $0 * n / maxEntries) % n }
        var diff = 0.0, norm = 0.0
        var worst = (index: -1, numeric: 0.0, analytic: 0.0)
        for i in indices {
            let saved = p.value[i]
            p.value[i] = saved + step
            let up = try loss()
            p.value[i] = saved - step
            let down = try loss()
            p.value[i] = saved
            let numeric = (up - down) / Double(2 * step)
            let a = Double(analytic[p.offset + i])
            if abs(numeric - a) > abs(worst.numeric - worst.analytic) || worst.index < 0 { worst = (i, numeric, a) }
            diff += (numeric - a) * (numeric - a)
            norm += numeric * numeric
        }
        XCTAssertLessThanOrEqual(diff.squareRoot(), 3e-3 * norm.squareRoot() + 1e-4,
                                 "\(p.name): relative gradient error \(diff.squareRoot() / max(norm.squareRoot(), 1e-30)); " +
                                 "worst at \(worst.index): numeric \(worst.numeric) analytic \(worst.analytic)",
                                 file: file, line: line)
    }
}

/// sum_i w_i y_i in Double: a loss whose gradient with respect to y is w.
func weightedSum(_ y: UnsafePointer<Float>, _ w: Tensor) -> Double {
    (0..<w.count).reduce(0.0) { $0 + Double(y[$1]) * Double(w[$1]) }
}

final class GradientCheckTests: XCTestCase {
    /// A tiny wrapper model: the layer's input is itself a parameter ("input"), so one check covers
    /// both the parameter gradients and the input gradient.
    func layerCheck(layout build: (inout ParameterSet.Layout) -> Void, inputShape: [Int], outputCount: Int,
                    seed: UInt64, prepare: (ParameterSet) -> Void = { _ in },
                    forward: (ParameterSet, UnsafePointer<Float>, UnsafeMutablePointer<Float>) throws -> Void,
                    backward: (ParameterSet, UnsafePointer<Float>, UnsafePointer<Float>, UnsafeMutablePointer<Float>) throws -> Void,
                    file: StaticString = #filePath, line: UInt = #line) rethrows {
        var layout = ParameterSet.Layout()
        layout.add("input", inputShape)
        build(&layout)
        let parameters = ParameterSet(layout: layout)
        var rng = SeededRandom(seed: seed)
        for p in parameters.parameters { p.value.fillNormal(std: 0.5, using: &rng) }
        prepare(parameters)
        let w = Tensor(zeros: [outputCount]); w.fillNormal(std: 1, using: &rng)
        let y = Tensor(zeros: [outputCount])
        let input = parameters["input"]
        try checkGradients(parameters, loss: {
            try forward(parameters, input.value.data, y.data)
            return weightedSum(y.data, w)
        }, backward: {
            try backward(parameters, input.value.data, w.data, input.gradient.data)
        }, file: file, line: line)
    }

    func testLinearWithAndWithoutBias() {
        for bias in [true, false] {
            layerCheck(layout: { Linear.register(&$0, "fc", in: 7, out: 5, bias: bias) }, inputShape: [3, 7],
                       outputCount: 15, seed: 1,
                       forward: { ps, x, y in Linear(ps, "fc", hasBias: bias).forward(x, rows: 3, into: y) },
                       backward: { ps, x, dy, dx in Linear(ps, "fc", hasBias: bias).backward(x, dy: dy, rows: 3, dx: dx) })
        }
    }

    func testLayerNormLayer() {
        for bias in [true, false] {
            var layer: LayerNormLayer!
            layerCheck(layout: { LayerNormLayer.register(&$0, "ln", features: 9, bias: bias) }, inputShape: [4, 9],
                       outputCount: 36, seed: 2,
                       prepare: { layer = LayerNormLayer($0, "ln", hasBias: bias) },
                       forward: { _, x, y in layer.forward(x, rows: 4, into: y) },
                       backward: { _, x, dy, dx in layer.backward(x, dy: dy, rows: 4, dx: dx) })
        }
    }

    func testCausalSelfAttention() {
        var layer: CausalSelfAttention!
        let (B, T, C) = (2, 5, 8)
        layerCheck(layout: { CausalSelfAttention.register(&$0, "attn", channels: C, bias: true) },
                   inputShape: [B * T, C], outputCount: B * T * C, seed: 3,
                   prepare: { layer = CausalSelfAttention($0, "attn", heads: 2, hasBias: true) },
                   forward: { _, x, y in layer.forward(x, batch: B, time: T, into: y) },
                   backward: { _, x, dy, dx in layer.backward(x, dy: dy, batch: B, time: T, dx: dx) })
    }

    /// Head size 16 runs the fused kernels (FusedAttention.swift); 17 rows end in a partial 6-row block.
    func testCausalSelfAttentionFused() {
        var layer: CausalSelfAttention!
        let (B, T, C) = (1, 17, 32)
        layerCheck(layout: { CausalSelfAttention.register(&$0, "attn", channels: C, bias: false) },
                   inputShape: [B * T, C], outputCount: B * T * C, seed: 4,
                   prepare: { layer = CausalSelfAttention($0, "attn", heads: 2, hasBias: false) },
                   forward: { _, x, y in layer.forward(x, batch: B, time: T, into: y) },
                   backward: { _, x, dy, dx in layer.backward(x, dy: dy, batch: B, time: T, dx: dx) })
    }

    func testAttentionIsCausal() {
        // Changing the last token's input must not change any earlier position's output.
        var layout = ParameterSet.Layout()
        CausalSelfAttention.register(&layout, "attn", channels: 8, bias: false)
        let ps = ParameterSet(layout: layout)
        var rng = SeededRandom(seed: 4)
        for p in ps.parameters { p.value.fillNormal(std: 0.5, using: &rng) }
        let layer = CausalSelfAttention(ps, "attn", heads: 2, hasBias: false)
        let x = Tensor(zeros: [6, 8]); x.fillNormal(std: 1, using: &rng)
        let y1 = Tensor(zeros: [6, 8]), y2 = Tensor(zeros: [6, 8])
        layer.forward(x.data, batch: 1, time: 6, into: y1.data)
        for j in 0..<8 { x[5 * 8 + j] += 1 }
        layer.forward(x.data, batch: 1, time: 6, into: y2.data)
        XCTAssertEqual(Array(y1.toArray()[0..<40]), Array(y2.toArray()[0..<40]))
        XCTAssertNotEqual(Array(y1.toArray()[40..<48]), Array(y2.toArray()[40..<48]))
    }

    func testTransformerBlock() throws {
        var block: TransformerBlock!
        let (B, T, C) = (2, 4, 8)
        try layerCheck(layout: { TransformerBlock.register(&$0, "h", channels: C, bias: false) },
                   inputShape: [B * T, C], outputCount: B * T * C, seed: 5,
                   prepare: { block = TransformerBlock($0, "h", heads: 2, hasBias: false) },
                   forward: { _, x, y in try block.forward(x, batch: B, time: T, into: y) },
                   backward: { _, x, dy, dx in try block.backward(x, dy: dy, batch: B, time: T, dx: dx) })
    }

    func testWholeGPT() throws {
        let gpt = GPT(GPTConfiguration(vocabularySize: 11, blockSize: 6, layers: 2, heads: 2, embedding: 8))
        gpt.initialize(seed: 7)
        // Larger than nanoGPT's 0.02 init so that every path carries a gradient well above float noise.
        var rng = SeededRandom(seed: 8)
        for p in gpt.parameters.parameters where !p.name.contains(".ln_") { p.value.fillNormal(std: 0.3, using: &rng) }
        let tokens = (0..<12).map { _ in Int32(rng.nextInt(below: 11)) }
        let targets = (0..<12).map { _ in Int32(rng.nextInt(below: 11)) }
        let batch = TokenBatch(tokens: tokens, targets: targets, batchSize: 2, time: 6)
        try checkGradients(gpt.parameters, loss: { Double(try gpt.forward(batch)) }, backward: { try gpt.backward(lossScale: 1) })
        // What the planner counts per block is what the blocks keep (LayerNorm outputs recomputed).
        for layer in 0..<2 {
            XCTAssertEqual(gpt.keptActivationBytes(layer: layer), gpt.configuration.keptActivationBytes(layer: layer, batch: 2, time: 6))
        }
    }

    /// Data parallelism sends a bucket once backward reports every gradient from its start on final
    /// (`gradientsReady`): each report must keep that promise. Every report's gradients are copied
    /// when it is made and compared with the finished buffer; the reports must not go back up, must end
    /// at 0, a dense block reports its MLP half (from ln_2 on) before its attention half runs, and
    /// they are the offsets the model declares (gradientReadyOffsets).
    func testGradientsReadyReportsOnlyFinalGradients() throws {
        func check(_ name: String, _ parameters: ParameterSet, declared: [Int], forward: () throws -> Void,
                   backward: ((Int) -> Void) throws -> Void) throws -> [Int] {
            try forward()
            parameters.zeroGradients()
            var reports: [(offset: Int, copy: [Float])] = []
            let g = parameters.gradients.base
            try backward { offset in reports.append((offset, Array(UnsafeBufferPointer(start: g + offset, count: parameters.count - offset)))) }
            let offsets = reports.map(\.offset)
            XCTAssertEqual(offsets.last, 0, name)
            XCTAssertEqual(offsets, declared, "\(name): gradientReadyOffsets (where data parallelism cuts its buckets) is not what backward reports")
            XCTAssertEqual(offsets, offsets.sorted(by: >), "\(name): reports go back up")
            for (offset, copy) in reports {
                let changed = copy.indices.first { copy[$0].bitPattern != g[offset + $0].bitPattern }.map { offset + $0 }
                XCTAssertNil(changed, "\(name): gradient \(changed ?? 0) changed after the report that everything from \(offset) on was final")
            }
            return offsets
        }
        var rng = SeededRandom(seed: 8)
        let tokens = (0..<12).map { _ in Int32(rng.nextInt(below: 11)) }
        let targets = (0..<12).map { _ in Int32(rng.nextInt(below: 11)) }
        let batch = TokenBatch(tokens: tokens, targets: targets, batchSize: 2, time: 6)
        for bias in [false, true] {
            let gpt = GPT(GPTConfiguration(vocabularySize: 11, blockSize: 6, layers: 2, heads: 2, embedding: 8, bias: bias))
            gpt.initialize(seed: 7)
            let offsets = try check("dense GPT, bias \(bias)", gpt.parameters, declared: gpt.gradientReadyOffsets, forward: { _ = try gpt.forward(batch) },
                                backward: { try gpt.backward(lossScale: 1, gradientsReady: $0) })
            for l in 0..<2 {
                XCTAssertTrue(offsets.contains(gpt.parameters["transformer.h.\(l).ln_2.weight"].offset), "block \(l)'s MLP half is not reported on its own")
                XCTAssertTrue(offsets.contains(gpt.parameters["transformer.h.\(l).ln_1.weight"].offset), "block \(l) is not reported")
            }
        }
        let moe = GPT(GPTConfiguration(vocabularySize: 11, blockSize: 6, layers: 2, heads: 2, embedding: 8,
                                       experts: MoEConfiguration(experts: 3, topK: 2, auxiliaryLossCoefficient: 0.1, every: 2)))
        moe.initialize(seed: 7)
        _ = try check("mixture-of-experts GPT", moe.parameters, declared: moe.gradientReadyOffsets, forward: { _ = try moe.forward(batch) },
                  backward: { try moe.backward(lossScale: 1, gradientsReady: $0) })
        let mlp = MLP(inputs: 12, hidden: 9, classes: 4, activation: .relu)
        mlp.initialize(seed: 3)
        let examples = ClassificationBatch(features: (0..<36).map { _ in rng.nextNormal() }, labels: [0, 3, 2])
        _ = try check("MLP", mlp.parameters, declared: mlp.gradientReadyOffsets, forward: { _ = try mlp.forward(examples) }, backward: { try mlp.backward(lossScale: 1, gradientsReady: $0) })
    }

    func testWholeMLPBothActivations() throws {
        for activation in [MLP.Activation.relu, .gelu] {
            let mlp = MLP(inputs: 12, hidden: 9, classes: 4, activation: activation)
            mlp.initialize(seed: 3)
            var rng = SeededRandom(seed: 4)
            let batch = ClassificationBatch(features: (0..<36).map { _ in rng.nextNormal() },
                                            labels: [0, 3, 2])
            try checkGradients(mlp.parameters, loss: { Double(try mlp.forward(batch)) }, backward: { try mlp.backward(lossScale: 1) })
        }
    }
}
