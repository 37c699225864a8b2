import Collectives
import NN
import Parallel
import Rendezvous
import Tensors

// Checks the pipelined GPT on real ranks (the pipeline group is the whole world) against the same
// model on one rank, computed on every rank from the same seed, over a few SGD steps: the loss on the
// last stage's rank, every stage's gradients (the tied embedding summed over the first and last
// stage) and the parameters after each step equal one rank's with the whole batch; each rank's peak
// of live micro-batches equals what the simulator says for its list.

public func runPipelineCheck(world: ProcessGroup, schedule kind: PipelineScheduleKind, microbatches m: Int, virtualStages v: Int,
                             steps: Int = 3, log: (String) -> Void) throws -> Int {
    let p = world.worldSize
    let schedule = try PipelineSchedule(kind, pipelineParallel: p, microbatches: m, virtualStages: v)
    let layers = p * v >= 4 ? p * v : 4
    let configuration = GPTConfiguration(vocabularySize: 11, blockSize: 8, layers: layers, heads: 2, embedding: 16, bias: true)
    let (micro, time) = (2, 8)
    let reference = GPT(configuration)
    reference.initialize(seed: 5)
    let runner = try PipelineRunner(schedule: schedule, group: world, configuration: configuration)
    runner.initialize(seed: 5)
    let expectedPeak = try PipelineSimulator.run(schedule, costs: .uniform(stages: schedule.stageCount)).peakLiveActivations[world.rank]
    var rng = SeededRandom(seed: 9)
    var checks = 0
    func fail(_ text: String) -> PipelineError { PipelineError(message: "pipeline rank \(world.rank): \(text)") }
    func close(_ a: Float, _ b: Float, _ scale: Float) -> Bool { abs(a - b) <= 1e-5 * max(scale, 1e-3) }
    for step in 0..<steps {
        let rows = m * micro * time
        let tokens = (0..<rows).map { _ in Int32(rng.nextInt(below: configuration.vocabularySize)) }
        let targets = (0..<rows).map { _ in Int32(rng.nextInt(below: configuration.vocabularySize)) }
        reference.parameters.zeroGradients()
        let expectedLoss = try reference.forward(TokenBatch(tokens: tokens, targets: targets, batchSize: m * micro, time: time))
        try reference.backward(lossScale: 1)
        let batches = (0..<m).map { k in
            let range = k * micro * time..<(k + 1) * micro * time
            return TokenBatch(tokens: Array(tokens[range]), targets: Array(targets[range]), batchSize: micro, time: time)
        }
        runner.zeroGradients()
        let report = try runner.run(batches)
        try runner.sumTiedEmbeddingGradients()
        if let loss = report.loss {
            guard close(loss, expectedLoss, abs(expectedLoss)) else { throw fail("step \(step): loss \(loss), one rank \(expectedLoss)") }
            checks += 1
        }
        guard report.peakLive == expectedPeak else { throw fail("step \(step): \(report.peakLive) micro-batches alive at once, the schedule says \(expectedPeak)") }
        checks += 1
        for stage in runner.stages.values {
            for parameter in stage.parameters.parameters {
                let want = reference.parameters[parameter.name].gradient
                let scale = (0..<want.count).reduce(Float(0)) { max($0, abs(want.data[$1])) }
                for i in 0..<want.count where !close(parameter.gradient.data[i], want.data[i], scale) {
                    throw fail("step \(step): gradient of \(parameter.name)[\(i)] \(parameter.gradient.data[i]), one rank \(want.data[i])")
                }
                checks += 1
            }
        }
        // SGD on both, then the parameters must still agree.
        let lr: Float = 0.5
        for p in reference.parameters.parameters { for i in 0..<p.value.count { p.value.data[i] -= lr * p.gradient.data[i] } }
        for stage in runner.stages.values {
            for parameter in stage.parameters.parameters {
                let want = reference.parameters[parameter.name].value
                for i in 0..<parameter.value.count {
                    parameter.value.data[i] -= lr * parameter.gradient.data[i]
                    guard close(parameter.value.data[i], want.data[i], 1) else {
                        throw fail("step \(step): \(parameter.name)[\(i)] \(parameter.value.data[i]) after the update, one rank \(want.data[i])")
                    }
                }
                checks += 1
            }
        }
        log("pipeline rank \(world.rank): step \(step) \(kind.rawValue) p \(p) m \(m) v \(v): \(report.loss.map { "loss \($0), " } ?? "")peak live \(report.peakLive), \(String(format: "%.1f", report.seconds * 1000)) ms")
    }
    return checks
}
