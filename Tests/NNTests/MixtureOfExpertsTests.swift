import NN
import Tensors
import XCTest

/// The mixture of experts on one rank: finite differences through the router (softmax, top-k, the
/// renormalised top-2 gates), the experts, the combine and the load-balancing loss, with and without
/// capacity drops; routing rules checked on hand-made probabilities.
final class MixtureOfExpertsTests: XCTestCase {
    /// A layer whose input is a parameter, so one check covers every parameter and the input gradient.
    /// The loss is Σ w·y + aux: backward gets dy = w and lossScale 1.
    func check(topK: Int, capacityFactor: Double, auxiliary: Double, bias: Bool, seed: UInt64, expectDrops: Bool,
               file: StaticString = #filePath, line: UInt = #line) throws {
        let rows = 10, c = 6, experts = 4
        let moe = MoEConfiguration(experts: experts, topK: topK, capacityFactor: capacityFactor, auxiliaryLossCoefficient: auxiliary)
        var layout = ParameterSet.Layout()
        layout.add("input", [rows, c])
        layout.add("moe.router.weight", [experts, c])
        MixtureOfExperts.registerExperts(&layout, "moe", channels: c, configuration: moe, bias: bias)
        let parameters = ParameterSet(layout: layout)
        var rng = SeededRandom(seed: seed)
        for p in parameters.parameters { p.value.fillNormal(std: 0.5, using: &rng) }
        let layer = MixtureOfExperts(parameters, "moe", configuration: moe, hasBias: bias, exchange: nil, gelu: .tanh, workspace: Workspace())
        let w = Tensor(zeros: [rows * c]); w.fillNormal(std: 1, using: &rng)
        let y = Tensor(zeros: [rows * c])
        let input = parameters["input"]
        try layer.forward(input.value.data, rows: rows, into: y.data)
        let dropped = layer.statistics.dropped
        XCTAssertEqual(dropped > 0, expectDrops, "dropped \(dropped) choices", file: file, line: line)
        if auxiliary > 0 { XCTAssertGreaterThan(layer.auxiliaryLoss, 0, file: file, line: line) }
        try checkGradients(parameters, loss: {
            try layer.forward(input.value.data, rows: rows, into: y.data)
            return weightedSum(y.data, w) + Double(layer.auxiliaryLoss)
        }, backward: {
            try layer.backward(dy: w.data, lossScale: 1, dx: input.gradient.data)
        }, file: file, line: line)
    }

    func testTopOneDroplessWithAuxiliaryLoss() throws {
        try check(topK: 1, capacityFactor: 0, auxiliary: 0.5, bias: true, seed: 1, expectDrops: false)
    }

    func testTopTwoDroplessWithAuxiliaryLoss() throws {
        try check(topK: 2, capacityFactor: 0, auxiliary: 0.5, bias: false, seed: 2, expectDrops: false)
    }

    /// Capacity 0.5: ceil(k·10/4·0.5) places per expert, fewer than the choices, so some are dropped;
    /// the gradient flows through the kept ones only.
    func testTopOneAndTopTwoWithDrops() throws {
        try check(topK: 1, capacityFactor: 0.5, auxiliary: 0.1, bias: true, seed: 3, expectDrops: true)
        try check(topK: 2, capacityFactor: 0.5, auxiliary: 0.1, bias: true, seed: 4, expectDrops: true)
    }

    /// Routing on known probabilities (identity router weights, inputs = logits): top-1 gates are the
    /// probability, top-2 gates renormalise, first choices take places before second ones, a token
    /// with every choice dropped comes out as zero, and the auxiliary loss is α·E·Σ f_i·P_i.
    func testRoutingRulesOnKnownProbabilities() throws {
        let c = 3, experts = 3
        // Logits (rows): token 0 prefers expert 0 then 1; token 1 prefers 0 then 2; token 2 prefers 2 then 0.
        let logits: [Float] = [2, 1, 0, 3, 0, 1, 1, 0, 2]
        for (topK, factor) in [(1, 0.0), (2, 0.0), (2, 0.5)] {
            let moe = MoEConfiguration(experts: experts, topK: topK, capacityFactor: factor, auxiliaryLossCoefficient: 0.01)
            var layout = ParameterSet.Layout()
            layout.add("moe.router.weight", [experts, c])
            MixtureOfExperts.registerExperts(&layout, "moe", channels: c, configuration: moe, bias: true)
            let parameters = ParameterSet(layout: layout)
            let router = parameters["moe.router.weight"]
            for i in 0..<experts { router.value[i * c + i] = 1 }
            // Experts output their bias only (zero weights): expert e adds e + 1 to every channel.
            let projectionBias = parameters["moe.experts.c_proj.bias"]
            for e in 0..<experts { for j in 0..<c { projectionBias.value[e * c + j] = Float(e + 1) } }
            let layer = MixtureOfExperts(parameters, "moe", configuration: moe, hasBias: true, exchange: nil, gelu: .tanh, workspace: Workspace())
            var y = [Float](repeating: 0, count: 9)
            try logits.withUnsafeBufferPointer { x in try layer.forward(x.baseAddress!, rows: 3, into: &y) }
            func softmax(_ row: ArraySlice<Float>) -> [Double] {
                let m = Double(row.max()!), e = row.map { exp(Double($0) - m) }, s = e.reduce(0, +)
                return e.map { $0 / s }
            }
            let p = (0..<3).map { softmax(logits[($0 * 3)..<($0 * 3 + 3)]) }
            var expected: [Double]
            switch (topK, factor) {
            case (1, _): expected = [p[0][0] * 1, p[1][0] * 1, p[2][2] * 3]
            case (2, 0.0):
                expected = [(p[0][0] * 1 + p[0][1] * 2) / (p[0][0] + p[0][1]), (p[1][0] * 1 + p[1][2] * 3) / (p[1][0] + p[1][2]),
                            (p[2][2] * 3 + p[2][0] * 1) / (p[2][2] + p[2][0])]
            default:
                // ceil(2·3/3·0.5) = 1 place per expert. First choices: 0 -> e0, 1 -> e0 (dropped), 2 -> e2.
                // Second choices: 0 -> e1 (kept), 1 -> e2 (full), 2 -> e0 (full). Token 1 keeps nothing.
                XCTAssertEqual(layer.capacity(rows: 3), 1)
                expected = [(p[0][0] * 1 + p[0][1] * 2) / (p[0][0] + p[0][1]), 0, p[2][2] * 3 / (p[2][2] + p[2][0])]
                XCTAssertEqual(layer.statistics.dropped, 3)
            }
            for t in 0..<3 { for j in 0..<c { XCTAssertEqual(Double(y[t * c + j]), expected[t], accuracy: 1e-6, "top-\(topK) factor \(factor) token \(t)") } }
            XCTAssertEqual(layer.statistics.routed, topK == 1 ? [2, 0, 1] : [3, 1, 2])
            // f = (2/3, 0, 1/3) (first choices), P = mean probabilities.
            let f = [2.0 / 3, 0, 1.0 / 3]
            var aux = 0.0
            for i in 0..<3 {
                let meanProbability: Double = (p[0][i] + p[1][i] + p[2][i]) / 3
                aux += 0.01 * 3 * f[i] * meanProbability
            }
            XCTAssertEqual(Double(layer.auxiliaryLoss), aux, accuracy: 1e-7)
        }
    }

    /// A MoE GPT end to end (every other block a mixture, top-2): finite differences through the whole
    /// model, and its checkpoint names: stacked experts [E, 4C, C] and [E, C, 4C] and a router per mixture.
    func testWholeMoEGPT() throws {
        let configuration = GPTConfiguration(vocabularySize: 11, blockSize: 6, layers: 2, heads: 2, embedding: 8,
                                             experts: MoEConfiguration(experts: 3, topK: 2, auxiliaryLossCoefficient: 0.1, every: 2))
        let gpt = GPT(configuration)
        gpt.initialize(seed: 7)
        XCTAssertEqual(gpt.mixtures.count, 1)
        XCTAssertEqual(gpt.parameters["transformer.h.1.mlp.experts.c_fc.weight"].shape, [3, 32, 8])
        XCTAssertEqual(gpt.parameters["transformer.h.1.mlp.experts.c_proj.weight"].shape, [3, 8, 32])
        XCTAssertEqual(gpt.parameters["transformer.h.1.mlp.router.weight"].shape, [3, 8])
        XCTAssertEqual(gpt.parameters["transformer.h.0.mlp.c_fc.weight"].shape, [32, 8])
        XCTAssertEqual(gpt.expertCount, 2 * 3 * 32 * 8)
        var rng = SeededRandom(seed: 8)
        for p in gpt.parameters.parameters where !p.name.contains(".ln_") { p.value.fillNormal(std: 0.3, using: &rng) }
        let tokens = (0..<12).map { _ in Int32(rng.nextInt(below: 11)) }
        let targets = (0..<12).map { _ in Int32(rng.nextInt(below: 11)) }
        let batch = TokenBatch(tokens: tokens, targets: targets, batchSize: 2, time: 6)
        // The experts' gradients here are ~1e-3 (each sees a few of the 12 tokens, scaled by a gate), so
        // float32 noise in the loss (~1e-7 · 2.4 / h) dominates at h = 1e-3; h = 5e-3 keeps it 5x smaller.
        try checkGradients(gpt.parameters, step: 5e-3, loss: { Double(try gpt.forward(batch)) + Double(gpt.auxiliaryLoss) },
                           backward: { try gpt.backward(lossScale: 1) })
        // The planner's count of what a dense block and a mixture block keep is theirs.
        for layer in 0..<2 {
            XCTAssertEqual(gpt.keptActivationBytes(layer: layer), configuration.keptActivationBytes(layer: layer, batch: 2, time: 6))
        }
    }
}
