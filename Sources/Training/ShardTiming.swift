import FoundationEssentials
import Dispatch
import Glibc
import NN
import Parallel
import Tensors

// The planner's compute, measured: for a layout, the model shard one rank really holds (its tensor-
// parallel slice, with or without sequence parallelism; its pipeline stages) is built here and timed on
// one micro-batch, forward + backward, and the step's update over its parameters (norm, clip, AdamW,
// zeroing). Collectives return at once (LocalOnly), so the time is the rank's own work: what a FLOP
// share cannot see (LayerNorms and residuals every tensor-parallel rank repeats without sequence
// parallelism, the head on the last stage, small GEMMs running below peak) is in it. As many shards as
// the ranks that share this host's cores run at the same time, so memory bandwidth and clocks are
// shared as in training.

/// A group of one for timing and counting: tensor-parallel collectives leave the buffers as they are.
final class LocalOnly: TensorParallelCommunicator, ExpertExchange {
    let rank: Int, size: Int
    init(rank: Int, size: Int) { self.rank = rank; self.size = size }
    func allreduceSum(_ buffer: UnsafeMutableBufferPointer<Float>) throws {}
    func allreduceMax(_ buffer: UnsafeMutableBufferPointer<Float>) throws {}
    func reduceScatter(_ full: UnsafeMutableBufferPointer<Float>) throws {}
    func allgather(_ full: UnsafeMutableBufferPointer<Float>) throws {}
    func allToAll(_ send: UnsafeMutableBufferPointer<Float>, sendCounts: [Int], into receive: UnsafeMutableBufferPointer<Float>,
                  receiveCounts: [Int]) throws { throw TrainingError("the planner does not exchange tokens") }
}

/// One rank's measured work per step: `forwardBackward` seconds per micro-batch, `update` per step.
public struct ShardTime: Sendable, Equatable {
    public var forwardBackward: Double
    public var update: Double
    public init(forwardBackward: Double, update: Double) { self.forwardBackward = forwardBackward; self.update = update }
    public func step(microbatches: Int) -> Double { Double(microbatches) * forwardBackward + update }
}

extension LayoutPlanner {
    /// Each pipeline rank's shard of `layout` (one entry without pipeline parallelism), tensor-parallel
    /// rank 0's, timed with `copies` shards at once. Expert parallelism is timed as ep 1: a rank runs its
    /// experts over the tokens of ep ranks, as much expert work as ep 1 at a balanced load.
    public func timeShards(_ layout: TrainConfig, copies: Int) throws -> [ShardTime] {
        let parallel = layout.tensorParallel > 1
            ? TensorParallelism(communicator: LocalOnly(rank: 0, size: layout.tensorParallel), sequenceParallel: layout.sequenceParallel) : nil
        let rows = layout.batchSize * layout.blockSize
        var rng = SeededRandom(seed: 3)
        let tokens = (0..<rows).map { _ in Int32(rng.nextInt(below: vocabularySize)) }
        let batch = TokenBatch(tokens: tokens, targets: tokens.reversed(), batchSize: layout.batchSize, time: layout.blockSize)
        guard layout.pipelineParallel > 1 else {
            return [try timeConcurrently(copies: copies) {
                let gpt = GPT(configuration, parallel: parallel)
                gpt.initialize(seed: 1)
                return (gpt.parameters, {
                    _ = try gpt.forward(batch)
                    try gpt.backward(lossScale: 1, gradientsReady: { _ in })
                })
            }]
        }
        return try (0..<layout.pipelineParallel).map { rank in
            try timeConcurrently(copies: copies) {
                let shard = try pipelineShard(layout, rank: rank, parallel: parallel, batch: batch)
                return (shard.parameters, shard.pass)
            }
        }
    }

    /// Pipeline rank `rank`'s stages of `layout` and one micro-batch's forward and backward through them,
    /// as the planner times them: the first stage reads `batch`'s tokens, a later one an input that
    /// varies from row to row as a block's output does (with one value in every row a mixture's router
    /// sent all tokens to two experts, whose capacity then dropped 3/8 of the choices: the MoE recipe's
    /// pp 4 was timed at 12.7 ms of compute a step, 17.6 with varying inputs).
    public func pipelineShard(_ layout: TrainConfig, rank: Int, parallel: TensorParallelism?, batch: TokenBatch) throws
        -> (parameters: ParameterSet, stages: [GPTStage], pass: () throws -> Void) {
        let schedule = try PipelineSchedule(layout.pipelineSchedule, pipelineParallel: layout.pipelineParallel,
                                            microbatches: layout.microbatches, virtualStages: layout.virtualStages)
        let ranges = try schedule.layerRanges(layers: config.nLayer)
        let rows = batch.batchSize * batch.time
        let last = schedule.stageCount - 1, width = (parallel?.localRows(rows) ?? rows) * config.nEmbd
        let parameters = ParameterSet(layout: try PipelineRunner.layout(schedule: schedule, configuration: configuration, rank: rank,
                                                                         parts: layout.tensorParallel))
        let stages = schedule.stages(ofRank: rank).map {
            GPTStage(configuration, layers: ranges[$0], isFirst: $0 == 0, isLast: $0 == last, slots: 1, parameters: parameters, parallel: parallel)
        }
        GPTStage.initialize(parameters, configuration, parallel: parallel, seed: 1)
        var inputs = SeededRandom(seed: 5)
        let activation = (0..<width).map { _ in inputs.nextNormal() }
        return (parameters, stages, {
            var loss: Float = 0
            for stage in stages {
                _ = try activation.withUnsafeBufferPointer {
                    try stage.forward(slot: 0, tokens: stage.isFirst ? batch.tokens : nil, input: stage.isFirst ? nil : $0.baseAddress,
                                      targets: stage.isLast ? batch.targets : nil, batch: batch.batchSize, time: batch.time, loss: &loss)
                }
            }
            for stage in stages.reversed() {
                _ = try activation.withUnsafeBufferPointer { try stage.backward(slot: 0, outputGradient: stage.isLast ? nil : $0.baseAddress) }
            }
        })
    }

    /// `copies` shards made by `make` (their parameters and one micro-batch's forward + backward), each
    /// on its own thread at the same time; the mean over copies of each one's median.
    func timeConcurrently(copies: Int, _ make: () throws -> (ParameterSet, () throws -> Void)) throws -> ShardTime {
        let shards = try (0..<max(copies, 1)).map { _ in
            let (parameters, pass) = try make()
            return TimedShard(parameters: parameters, optimizer: AdamW(parameters, .init(weightDecay: 0.1)), pass: pass)
        }
        DispatchQueue.concurrentPerform(iterations: shards.count) { shards[$0].time() }
        if let error = shards.compactMap(\.error).first { throw TrainingError("a model shard failed while the planner timed it: \(error)") }
        let n = Double(shards.count)
        return ShardTime(forwardBackward: shards.reduce(0) { $0 + $1.measured.forwardBackward } / n,
                         update: shards.reduce(0) { $0 + $1.measured.update } / n)
    }
}

/// One shard timed on its own thread: nothing else touches it until `time` returns.
private final class TimedShard: @unchecked Sendable {
    let parameters: ParameterSet
    let optimizer: AdamW
    let pass: () throws -> Void
    var measured = ShardTime(forwardBackward: 0, update: 0)
    var error: Error?
    init(parameters: ParameterSet, optimizer: AdamW, pass: @escaping () throws -> Void) {
        self.parameters = parameters; self.optimizer = optimizer; self.pass = pass
    }

    func time() {
        // Short: the planner times every shard in several rounds (LayoutPlanner.timingRounds).
        measured.forwardBackward = measure(trials: 3, target: 0.05) { do { try pass() } catch { self.error = error } }.median
        // The step's passes over the gradients besides AdamW's, as Trainer.trainStep makes them: the
        // global norm, the clipping scale (early steps clip) and the zeroing for the next step. With
        // AdamW alone the planner put dp 4 of the wide model 47 ms per step from its ZeRO-1 twin, which
        // ran 119-164 ms apart (4 ranks on 2 cores).
        measured.update = measure(trials: 3, target: 0.02) {
            _ = parameters.gradientNorm()
            parameters.clipGradients(in: [0..<parameters.count], norm: 2, maxNorm: 1)
            optimizer.step(learningRate: 1e-4)
            parameters.zeroGradients()
        }.median
    }
}
