import NN
import Tensors
import XCTest

/// Stages chained by hand in one process, micro-batch by micro-batch in a pipeline's orders, give the
/// whole GPT's loss and gradients: the decomposition a pipeline runs, checked without sockets.
final class GPTStageTests: XCTestCase {
    func testStagesChainedInAnyOrderEqualTheWholeModel() throws {
        let config = GPTConfiguration(vocabularySize: 11, blockSize: 6, layers: 4, heads: 2, embedding: 8, bias: true)
        let B = 4, T = 6, m = 2, micro = B / m
        var rng = SeededRandom(seed: 7)
        let tokens = (0..<(B * T)).map { _ in Int32(rng.next() % 11) }, targets = (0..<(B * T)).map { _ in Int32(rng.next() % 11) }
        let whole = GPT(config)
        whole.initialize(seed: 3)
        let expectedLoss = try whole.forward(TokenBatch(tokens: tokens, targets: targets, batchSize: B, time: T))
        try whole.backward(lossScale: 1)

        for split in [[0..<4], [0..<2, 2..<4], [0..<1, 1..<3, 3..<4]] {
            // Orders: GPipe (every forward first), 1F1B-like (forward then backward per micro-batch), and
            // zero-bubble-like: input passes (I) of every micro-batch, then the weight passes (W) in reverse.
            for order in ["gpipe", "1f1b", "split"] {
                let allForwardsFirst = order != "1f1b"
                let stages = split.enumerated().map { i, range in
                    GPTStage(config, layers: range, isFirst: i == 0, isLast: i == split.count - 1, slots: m)
                }
                for s in stages { s.initialize(seed: 3); s.parameters.zeroGradients() }
                var losses = [Float](repeating: 0, count: m)
                var activations: [[[Float]]] = Array(repeating: Array(repeating: [], count: m), count: stages.count)
                func forward(_ k: Int) throws {
                    let rows = micro * T, range = k * rows..<(k + 1) * rows
                    var input: [Float] = []
                    for (i, stage) in stages.enumerated() {
                        let out = try input.withUnsafeBufferPointer { buffer in
                            try stage.forward(slot: k, tokens: i == 0 ? Array(tokens[range]) : nil, input: i == 0 ? nil : buffer.baseAddress,
                                              targets: i == stages.count - 1 ? Array(targets[range]) : nil, batch: micro, time: T, loss: &losses[k])
                        }
                        if let out { input = Array(UnsafeBufferPointer(start: out, count: rows * config.embedding)) }
                        activations[i][k] = input
                    }
                }
                func backward(_ k: Int) throws {
                    var gradient: [Float] = []
                    for stage in stages.reversed() {
                        let out = try gradient.withUnsafeBufferPointer {
                            order == "split"
                                ? try stage.backwardInput(slot: k, outputGradient: stage.isLast ? nil : $0.baseAddress, lossScale: 1 / Float(m))
                                : try stage.backward(slot: k, outputGradient: stage.isLast ? nil : $0.baseAddress, lossScale: 1 / Float(m))
                        }
                        if let out { gradient = Array(UnsafeBufferPointer(start: out, count: micro * T * config.embedding)) }
                    }
                }
                if allForwardsFirst {
                    for k in 0..<m { try forward(k) }
                    XCTAssertEqual(stages.map(\.liveSlots), Array(repeating: m, count: stages.count))
                    for k in 0..<m { try backward(k) }
                    if order == "split" {
                        XCTAssertEqual(stages.map(\.liveSlots), Array(repeating: m, count: stages.count), "slots stay taken until W")
                        for k in (0..<m).reversed() { for stage in stages { try stage.backwardWeight(slot: k) } }
                    }
                } else {
                    for k in 0..<m { try forward(k); try backward(k) }
                }
                XCTAssertEqual(stages.map(\.liveSlots), Array(repeating: 0, count: stages.count))
                let what = "stages \(split), \(order) order"
                XCTAssertEqual(losses.reduce(0, +) / Float(m), expectedLoss, accuracy: 1e-5, what)
                // Every tensor once (wte: lookup and head gradients summed over the first and last stage).
                for p in whole.parameters.parameters {
                    var gradient = [Float](repeating: 0, count: p.gradient.count)
                    for stage in stages where stage.parameters.parameters.contains(where: { $0.name == p.name }) {
                        let g = stage.parameters[p.name].gradient
                        for i in 0..<g.count { gradient[i] += g.data[i] }
                    }
                    let want = Array(UnsafeBufferPointer(start: p.gradient.data, count: p.gradient.count))
                    let scale = want.map { abs($0) }.max() ?? 1
                    for (a, b) in zip(gradient, want) { XCTAssertEqual(a, b, accuracy: 1e-5 * max(scale, 1e-3), "\(what): \(p.name)") }
                }
                // The stages hold every tensor of the model, wte twice when first and last differ.
                let names = stages.flatMap { $0.parameters.parameters.map(\.name) }
                XCTAssertEqual(Set(names), Set(whole.parameters.parameters.map(\.name)))
                XCTAssertEqual(names.count, whole.parameters.parameters.count + (stages.count > 1 ? 1 : 0))
            }
        }
    }
}
