import Collectives
import NN
import Parallel
import Rendezvous
import Tensors
import Foundation

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
        // The rank's stages share one parameter set.
        for parameter in runner.parameters.parameters {
            let want = reference.parameters[parameter.name].gradient
            let scale = (0..<want.count).reduce(Float(0)) { max($0, abs(want.data[$1])) }
            for i in 0..<want.count where !close(parameter.gradient.data[i], want.data[i], scale) {
                throw fail("step \(step): gradient of \(parameter.name)[\(i)] \(parameter.gradient.data[i]), one rank \(want.data[i])")
            }
            checks += 1
        }
        // SGD on both, then the parameters must still agree.
        let lr: Float = 0.5
        for p in reference.parameters.parameters { for i in 0..<p.value.count { p.value.data[i] -= lr * p.gradient.data[i] } }
        for parameter in runner.parameters.parameters {
            let want = reference.parameters[parameter.name].value
            for i in 0..<parameter.value.count {
                parameter.value.data[i] -= lr * parameter.gradient.data[i]
                guard close(parameter.value.data[i], want.data[i], 1) else {
                    throw fail("step \(step): \(parameter.name)[\(i)] \(parameter.value.data[i]) after the update, one rank \(want.data[i])")
                }
            }
            checks += 1
        }
        // Evaluation (forward only, one batch at a time) gives every rank one rank's mean loss.
        let evaluated = try runner.evaluate(batches)
        var expectedEval: Float = 0
        for b in batches { expectedEval += try reference.forward(b) / Float(m) }
        guard close(evaluated, expectedEval, abs(expectedEval)) else { throw fail("step \(step): evaluation loss \(evaluated), one rank \(expectedEval)") }
        checks += 1
        log("pipeline rank \(world.rank): step \(step) \(kind.rawValue) p \(p) m \(m) v \(v): \(report.loss.map { "loss \($0), " } ?? "")peak live \(report.peakLive), \(String(format: "%.1f", report.seconds * 1000)) ms")
    }
    return checks
}

/// What one pipeline benchmark run measured (on rank 0, over every rank of the pipeline).
public struct PipelineBenchResult {
    public var stepSeconds: Double
    public var predictedSeconds: Double
    public var measuredBubble: Double
    public var simulatedBubble: Double
    public var formulaBubble: Double
    public var intervals: [[PipelineInterval]]
    public var peakLive: [Int]
    /// Peak resident set of each rank's process, MiB.
    public var peakRSSMiB: [Double]
    /// The mean cost of each pass per stage and of one message, as the simulator got them.
    public var costs: PipelineCosts

    /// Per stage, the mean pass times in ms: "F 1.20 B 2.40" or "F 1.20 I 1.30 W 1.10".
    public var passSummary: String {
        (0..<costs.forward.count).map { s in
            let f = String(format: "F %.2f", costs.forward[s] * 1000)
            return costs.backward[s] > 0 ? f + String(format: " B %.2f", costs.backward[s] * 1000)
                                         : f + String(format: " I %.2f W %.2f", costs.backwardInput[s] * 1000, costs.backwardWeight[s] * 1000)
        }.joined(separator: " | ")
    }
}

/// Times `steps` pipeline steps (after `warmup`) of a GPT of the given size: the median step, its
/// bubble (idle share over ranks), and the simulator's prediction from this run's own mean cost of
/// each pass per stage and of one message. Collective over the pipeline group; the result is complete
/// on rank 0 (others get their own view).
public func runPipelineBench(world: ProcessGroup, schedule kind: PipelineScheduleKind, microbatches m: Int, virtualStages v: Int,
                             configuration: GPTConfiguration, microBatchSize: Int, steps: Int, warmup: Int) throws -> PipelineBenchResult {
    let schedule = try PipelineSchedule(kind, pipelineParallel: world.worldSize, microbatches: m, virtualStages: v)
    let runner = try PipelineRunner(schedule: schedule, group: world, configuration: configuration)
    runner.initialize(seed: 1)
    let time = configuration.blockSize
    var rng = SeededRandom(seed: 2)
    let batches = (0..<m).map { _ in
        TokenBatch(tokens: (0..<(microBatchSize * time)).map { _ in Int32(rng.nextInt(below: configuration.vocabularySize)) },
                   targets: (0..<(microBatchSize * time)).map { _ in Int32(rng.nextInt(below: configuration.vocabularySize)) },
                   batchSize: microBatchSize, time: time)
    }
    // One message's time: a ping-pong of an activation between ranks 0 and 1, halved.
    var transfer = 0.0
    if world.worldSize > 1 {
        var message = [Float](repeating: 1, count: microBatchSize * time * configuration.embedding)
        var samples: [Double] = []
        for _ in 0..<20 {
            try barrier(group: world)
            let t0 = DispatchTimeStamp.now()
            try message.withUnsafeMutableBytes { bytes in
                if world.rank == 0 {
                    try send(UnsafeRawBufferPointer(bytes), to: 1, group: world); try receive(bytes, from: 1, group: world)
                } else if world.rank == 1 {
                    try receive(bytes, from: 0, group: world); try send(UnsafeRawBufferPointer(bytes), to: 0, group: world)
                }
            }
            samples.append(DispatchTimeStamp.now() - t0)
        }
        transfer = samples.sorted()[samples.count / 2] / 2
    }
    var reports: [PipelineRunner.StepReport] = []
    for step in 0..<(warmup + steps) {
        try barrier(group: world)
        runner.zeroGradients()
        let report = try runner.run(batches)
        try runner.sumTiedEmbeddingGradients()
        if step >= warmup { reports.append(report) }
    }
    // Per rank: step seconds of each measured step, then mean cost of each kind of pass per stage.
    let kinds: [PipelineAction.Kind] = [.forward, .backward, .backwardInput, .backwardWeight]
    var mine: [Int64] = reports.map { Int64($0.seconds * 1e9) }
    let busy: [Int64] = reports.map { Int64($0.busySeconds * 1e9) }
    mine += busy
    for stage in 0..<schedule.stageCount {
        for kind in kinds {
            let samples = reports.flatMap { $0.intervals.filter { $0.action.stage == stage && $0.action.kind == kind }.map { $0.end - $0.start } }
            mine.append(samples.isEmpty ? -1 : Int64(samples.reduce(0, +) / Double(samples.count) * 1e9))
        }
    }
    // The median step (by rank 0's clock: every rank must pick the same one), for the timeline.
    let local = reports.map { Int64($0.seconds * 1e9) }
    let rankZero = try broadcast(local, root: 0, group: world)
    let medianIndex = rankZero.indices.sorted { rankZero[$0] < rankZero[$1] }[rankZero.count / 2]
    let intervals = try runner.gatherIntervals(reports[medianIndex])
    var usage = rusage()
    getrusage(RUSAGE_SELF.rawValue, &usage)
    mine += [Int64(usage.ru_maxrss), Int64(reports.map(\.peakLive).max() ?? 0)]
    let all = try allgather(mine, group: world)
    let n = reports.count, stages = schedule.stageCount
    // A step lasts as long as its slowest rank.
    let stepTimes = (0..<n).map { s in all.map { Double($0[s]) / 1e9 }.max()! }
    let median = stepTimes.sorted()[n / 2]
    let busyMean = (0..<world.worldSize).map { r in (0..<n).map { Double(all[r][n + $0]) / 1e9 }.reduce(0, +) / Double(n) }
    let meanStep = stepTimes.reduce(0, +) / Double(n)
    var costs = PipelineCosts.uniform(stages: stages, forward: 0, backwardInput: 0, backwardWeight: 0, transfer: transfer)
    for stage in 0..<stages {
        let owner = all[schedule.rank(ofStage: stage)]
        func cost(_ k: Int) -> Double { max(Double(owner[2 * n + stage * kinds.count + k]) / 1e9, 0) }
        costs.forward[stage] = cost(0); costs.backward[stage] = cost(1); costs.backwardInput[stage] = cost(2); costs.backwardWeight[stage] = cost(3)
    }
    let simulated = try PipelineSimulator.run(schedule, costs: costs)
    return PipelineBenchResult(stepSeconds: median, predictedSeconds: simulated.stepTime,
                               measuredBubble: 1 - busyMean.reduce(0, +) / (Double(world.worldSize) * meanStep),
                               simulatedBubble: simulated.bubble, formulaBubble: schedule.formulaBubble,
                               intervals: intervals, peakLive: all.map { Int($0.last!) },
                               peakRSSMiB: all.map { Double($0[$0.count - 2]) / 1024 }, costs: costs)
}

/// Monotonic seconds, for timing inside the benchmark.
enum DispatchTimeStamp {
    static func now() -> Double { Double(DispatchTime.now().uptimeNanoseconds) / 1e9 }
}
