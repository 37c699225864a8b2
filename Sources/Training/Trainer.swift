import Collectives
import FoundationEssentials
import Glibc
import Support
import NN
import Parallel
import Rendezvous
import Tensors

/// What a finished run reports.
public struct TrainSummary: Sendable {
    public var iterations: Int
    public var seconds: Double
    public var losses: [Float]
    public var evaluations: [(iteration: Int, figures: [(name: String, value: Double)])]
    public var peakRSSMiB: Double
}

/// The single-rank training loop: gradient accumulation, clipping, LR schedule, optimizer step,
/// periodic evaluation and atomic checkpoints; with `resume` it continues bitwise where a checkpoint
/// left off. `log` receives every line (the executable prints them).
public final class Trainer {
    public let config: TrainConfig
    public let task: TrainingTask
    public let optimizer: Optimizer
    public let schedule: CosineSchedule
    public let maxIterations: Int
    public private(set) var iteration = 0
    /// Written into checkpoints; a restarted rank resumes only from a checkpoint of its own job.
    public var jobID: String?
    /// Whether this host's ranks outnumber its cores (ddp-train sets it from LOCAL_WORLD_SIZE). Then,
    /// without ZeRO-2/3 (which free each bucket's other pieces as it goes, so their memory needs the
    /// buckets during backward), the gradient buckets are averaged after backward instead of during it:
    /// the communication thread's copies would compete with the other ranks' compute for the same cores
    /// and caches. On 2 cores, dp 4 of the wide model (ZeRO 0 and 1) ran 2.0-3.8 % faster after backward
    /// in 4 of 4 alternating pairs, tp 2 x dp 2 0.5 % faster on average over 10 (-3.7 to +4.4 %), the
    /// recipe's dp 4 within 1.5 % (docs/benchmarks.md).
    public var hostOversubscribed = false
    /// Buckets go to the communication thread while backward runs (see `hostOversubscribed`); expert
    /// parallelism's all-to-alls share the data-parallel group's connections, so its buckets wait too.
    var overlapsBuckets: Bool { groups.expert == nil && !(hostOversubscribed && config.zeroStage <= 1) }
    /// Steps skipped for a non-finite gradient norm (on_nonfinite: skip).
    public private(set) var skippedSteps = 0
    /// Full-model parameters and optimizer state read by `resume` on rank 0, handed out to every rank
    /// (its shard, its owned pieces) in `run`.
    var resumedParameters: FloatBuffer?
    var resumedState: [String: FloatBuffer]?
    /// Present when the data-parallel group has more than one rank.
    public let dataParallel: DataParallel?
    public let groups: TrainingGroups
    /// World rank and size; `dataSize` ranks see different batches.
    let rank: Int, worldSize: Int, dataSize: Int
    var tensor: GroupCommunicator? { groups.tensor }
    /// How this rank's parameter buffer relates to whole tensors across its tensor-parallel group (a
    /// pipeline rank's: its stages' tensors only; `task.sharding` names the whole model's).
    var localSharding: ParameterSharding { (task as? PipelineGPTTask)?.runner.sharding ?? task.sharding }
    let log: (String) -> Void

    public var checkpointPath: String { config.outDir + (config.checkpointFormat == .sharded ? "/ckpt.sharded" : "/ckpt.safetensors") }
    /// The checkpoint with the lowest validation loss so far (nanoGPT keeps only that one; we keep both).
    public var bestCheckpointPath: String { config.outDir + (config.checkpointFormat == .sharded ? "/ckpt-best.sharded" : "/ckpt-best.safetensors") }
    /// Sharded saves so far: with the job id, names each save's subdirectory the same on every rank.
    var shardedSaves = 0
    /// Held (flock) while this run writes out_dir, so a second run on the same directory is refused.
    var outputLock: Int32 = -1
    var bestValidation = Double.infinity
    /// Pipeline passes since the last progress line: this rank's compute seconds and pass seconds.
    var pipelineWindow = (busy: 0.0, seconds: 0.0)
    var lastPipelineReport: PipelineRunner.StepReport?
    /// ZeRO-3: CRC-32C of the whole model as this rank drew it (it keeps only its pieces).
    var initialChecksum: (replicated: UInt32, experts: UInt32)?

    /// With a group of more than one rank the trainer runs data-parallel: rank 0's initial parameters
    /// are broadcast, gradients are averaged in buckets during backward, and only rank 0 evaluates,
    /// logs and writes checkpoints.
    public convenience init(config: TrainConfig, task: TrainingTask, group: ProcessGroup = .single(),
                            log: @escaping (String) -> Void = { emitLine($0) }) {
        self.init(config: config, task: task, groups: TrainingGroups(world: group), log: log)
    }

    /// Under tensor parallelism `task` holds this rank's shard (made with `groups.tensorParallelism`):
    /// gradients are averaged over the data-parallel group, the global norm summed over both, and
    /// checkpoints gather the full model.
    public init(config: TrainConfig, task: TrainingTask, groups: TrainingGroups,
                log: @escaping (String) -> Void = { emitLine($0) }) {
        self.config = config
        self.task = task
        self.groups = groups
        rank = groups.world.rank
        worldSize = groups.world.worldSize
        dataSize = groups.data.worldSize
        self.log = rank == 0 ? log : { _ in }
        dataParallel = groups.data.worldSize > 1
            ? DataParallel(group: groups.data, parameters: task.parameters, bucketBytes: Int(config.bucketMb * 1048576),
                           options: CollectiveOptions(algorithm: config.allreduceAlgorithm, wire: config.gradientCompression),
                           shardOptimizer: config.zeroStage >= 1, shardGradients: config.zeroStage >= 2,
                           units: config.zeroStage >= 3 ? task.units : nil, reshardAfterForward: config.reshardAfterForward,
                           experts: groups.expertData.map { group in
                               DataParallel.ExpertGradients(range: 0..<task.expertCount, group: group,
                                                            expertParallel: config.expertParallel)
                           }, readyOffsets: task.gradientReadyOffsets)
            : nil
        if let dataParallel, dataParallel.shardParameters { task.units?.unitHooks = dataParallel }
        let parameters = task.parameters
        let owned = dataParallel?.ownedRanges(of: groups.data.rank)
        switch config.optimizer {
        case .adamw:
            optimizer = AdamW(parameters, ranges: owned, .init(beta1: Float(config.beta1), beta2: Float(config.beta2),
                                                                weightDecay: Float(config.weightDecay)))
        case .sgd:
            optimizer = SGD(parameters, ranges: owned, momentum: Float(config.momentum))
        }
        schedule = CosineSchedule(peak: Float(config.learningRate), minimum: Float(config.minLr),
                                  warmup: config.warmupIters, decaySteps: config.lrDecayIters, enabled: config.decayLr)
        if let epochs = config.epochs, let mlp = task as? MLPTask {
            maxIterations = epochs * mlp.batchesPerEpoch / config.gradAccum
        } else {
            maxIterations = config.maxIters
        }
        if let dataParallel, dataParallel.shardParameters, let units = task.units {
            initialChecksum = dataParallel.initializeSharded(units, seed: config.seed)
        } else {
            task.initialize(seed: config.seed)
        }
    }

    /// Runs from the current iteration to the end.
    public func run() throws -> TrainSummary {
        let units = task.unitsPerMicroBatch * config.gradAccum * dataSize
        defer { dataParallel?.stop(); releaseOutputDirectory() }
        if rank == 0 { try checkOutputDirectory() }
        try synchronize()
        log("config: \(config.jsonString())")
        log("model: \(config.architecture), \(task.parameters.count) parameters")
        logOptimizerMemory()
        logTensorParallelism()
        logExperts()
        if let reason = groups.arenaDeclined { log("no shared arena for a group of this host's ranks (\(reason)): its collectives run over the lanes") }
        if let pipeline = task as? PipelineGPTTask {
            let runner = pipeline.runner, schedule = runner.schedule
            log("pipeline parallel: \(schedule.pipelineParallel) stages x \(schedule.virtualStages) chunk(s) per rank, schedule \(schedule.kind.rawValue), \(schedule.microbatches) micro-batches of \(config.batchSize) sequences per pass; bubble \(format("%.3f", schedule.formulaBubble)) of the step by the formula (ddp-train schedule simulates it); rank 0 holds layers \(runner.stages.values.map { "\($0.layers.lowerBound)..<\($0.layers.upperBound)" }.sorted().joined(separator: ", "))")
        }
        log("batch: \(task.unitsPerMicroBatch) \(task.unitName) per micro-batch x \(config.gradAccum) accumulation steps x \(dataSize) \(tensor == nil ? "rank(s)" : "data-parallel rank(s)") = \(units) \(task.unitName) per step (global batch)")
        if let dataParallel {
            let how = dataParallel.shardParameters ? "ZeRO-3 (parameters, gradients and optimizer state sharded by unit: \(dataParallel.units.count) units, each gathered before use\(dataParallel.prefetchDepth > 0 ? " with the next one prefetched" : " (not ahead: the all-to-alls share the connections)"), released after\(config.reshardAfterForward ? " forward and after backward" : " backward"); gradients reduce-scattered per unit)"
                    : dataParallel.shardGradients ? "ZeRO-2 (reduce-scatter gradients and keep only own pieces, update own shard, allgather parameters)"
                    : dataParallel.shardOptimizer ? "ZeRO-1 (reduce-scatter gradients, update own shard, allgather parameters)"
                                                  : "allreduce \(config.allreduceAlgorithm.rawValue)" + (config.allreduceAlgorithm == .twoShot
                                                      ? (dataParallel.group.arena != nil ? " through the host's shared arena"
                                                                                         : " (no shared arena for this group: auto's choice runs)")
                                                      : config.allreduceAlgorithm == .auto && dataParallel.group.arena != nil && config.gradientCompression == .float32
                                                      ? " (the group has a shared arena: two-shot unless a tuning table says otherwise)" : "")
            let last = format("%.0f", Double(4 * (dataParallel.buckets.last?.count ?? 0)) / 1024)
            let buckets = dataParallel.shardParameters ? "buckets (one per unit\(dataParallel.buckets.count > dataParallel.units.count ? ", a mixture's experts apart" : ""))"
                : "buckets of up to \(config.bucketMb) MiB cut where backward finishes gradients (the last \(last) KiB)"
            log("data parallel: \(dataSize) ranks, \(how), \(dataParallel.buckets.count) \(buckets), gradients averaged"
                + (overlapsBuckets ? " while backward runs" : groups.expert == nil ? " after backward (more ranks on this host than cores)" : " after backward (expert parallelism)")
                + (config.gradientCompression == .bfloat16 ? ", bf16 on the wire" : "") + "; step times logged are means over ranks")
        }
        log("training \(maxIterations) iterations from iteration \(iteration), optimizer \(config.optimizer.rawValue)")
        // MFU's denominator: this core's FMA peak, measured (every rank runs on one core). Only rank 0
        // logs and records, so only rank 0 spends the ~20 ms measuring.
        let peak = rank == 0 ? measuredPeakGFLOPS() : .nan
        let stepFlops = task.flopsPerMicroBatch * Double(config.gradAccum)
        log(format("model FLOPs: %.3f GFLOP per step per rank; core peak measured %.1f GFLOP/s", stepFlops / 1e9, peak))
        let record = rank == 0 ? RunRecord(directory: config.outDir, fresh: iteration == 0) : nil
        let firstIteration = iteration
        var losses: [Float] = []
        var evaluations: [(Int, [(String, Double)])] = []
        let start = monotonicSeconds()
        var trainingSeconds = 0.0, windowSeconds = 0.0, windowIterations = 0, windowExposed = 0.0, totalExposed = 0.0
        var windowTensor = (seconds: 0.0, floats: 0, calls: 0), windowExperts = (seconds: 0.0, floats: 0, calls: 0)
        while true {
            if iteration % config.evalInterval == 0 || iteration == maxIterations {
                // Every data-parallel rank (with its tensor-parallel group or pipeline) evaluates its
                // share and the sums are added up; then every rank learns whether validation improved
                // and, if so, takes part in writing the best checkpoint (ZeRO gathers the optimizer state).
                var improved: Int64 = 0
                let figures = try evaluate()
                if rank == 0 {
                    evaluations.append((iteration, figures))
                    log("eval \(iteration): " + figures.map { "\($0.name) \(format("%.4f", $0.value))" }.joined(separator: ", "))
                    record?.evaluation(iteration: iteration, elapsed: monotonicSeconds() - start, figures: figures)
                    if let validation = figures.first(where: { $0.name.hasPrefix("val") || $0.name.hasPrefix("held-out loss") })?.value,
                       validation < bestValidation {
                        bestValidation = validation
                        improved = iteration > 0 ? 1 : 0
                    }
                }
                if worldSize > 1 { improved = try broadcast([improved], root: 0, group: groups.world)[0] }
                if improved == 1 { try saveCheckpoint(to: bestCheckpointPath, reason: format("best validation so far, %.4f", bestValidation)) }
            }
            if iteration >= maxIterations { break }
            let lr = schedule.learningRate(at: iteration)
            let stepStart = monotonicSeconds()
            tensor?.resetCounters()
            groups.expert?.resetCounters()
            let (localLoss, exposed) = try trainStep(learningRate: lr)
            if let expert = groups.expert { windowExperts = (windowExperts.seconds + expert.seconds, windowExperts.floats + expert.floats, windowExperts.calls + expert.calls) }
            let stepSeconds = monotonicSeconds() - stepStart
            if let tensor { windowTensor = (windowTensor.seconds + tensor.seconds, windowTensor.floats + tensor.floats, windowTensor.calls + tensor.calls) }
            let loss = try dataParallel.map { Float(try $0.average([Double(localLoss)])[0]) } ?? localLoss
            if config.verifyReplicas { try verifyReplicas() }
            if losses.isEmpty, let gpt = task as? GPTTask { logActivationMemory(gpt) }
            if losses.isEmpty, let dataParallel, dataParallel.shardGradients {
                let own = 4 * dataParallel.ownedRanges(of: groups.data.rank).reduce(0) { $0 + $1.count }
                log("gradient memory after step 1: \(task.parameters.gradients.residentBytes) bytes resident of the \(4 * task.parameters.count)-byte gradient buffer (own pieces \(own) bytes; the rest went back to the kernel)")
                if dataParallel.shardParameters {
                    let largest = dataParallel.unitSizes.max() ?? 0
                    log("parameter memory after step 1: \(task.parameters.values.residentBytes) bytes resident of the \(4 * task.parameters.count)-byte parameter buffer (own pieces \(own) bytes); at most \(dataParallel.peakGatheredUnits) of \(dataParallel.units.count) units were gathered at once (largest unit \(4 * largest) bytes)")
                }
            }
            trainingSeconds += stepSeconds
            windowSeconds += stepSeconds
            windowExposed += exposed
            totalExposed += exposed
            losses.append(loss)
            iteration += 1
            windowIterations += 1
            if iteration % config.logInterval == 0 || iteration == maxIterations {
                // Step time only: evaluations and checkpoints are not training throughput. Data-parallel:
                // means over ranks (every rank logs at the same iterations, so all take part).
                var perIteration = windowSeconds / Double(windowIterations)
                var exposedPerIteration = windowExposed / Double(windowIterations)
                if let dataParallel {
                    let means = try dataParallel.average([perIteration, exposedPerIteration])
                    perIteration = means[0]; exposedPerIteration = means[1]
                }
                let elapsed = monotonicSeconds() - start
                let mfu = stepFlops / perIteration / (peak * 1e9)
                // ETA from the steps so far (evaluations and checkpoints included, as a user waits for them).
                let eta = elapsed / Double(iteration - firstIteration) * Double(maxIterations - iteration)
                var line = format("iter %d/%d | loss %.4f | lr %.3e | %.1f ms/iter | %.0f %@/s | MFU %.1f%% | elapsed %@, ETA %@",
                                  iteration, maxIterations, loss, lr, perIteration * 1000, Double(units) / perIteration, task.unitName,
                                  100 * mfu, formatDuration(elapsed), formatDuration(eta))
                if dataParallel != nil {
                    line += format(" | compute %.1f ms, exposed comm %.2f ms (%.1f%%)", (perIteration - exposedPerIteration) * 1000,
                                   exposedPerIteration * 1000, 100 * exposedPerIteration / perIteration)
                }
                if tensor != nil {
                    let n = Double(windowIterations)
                    line += format(" | tensor-parallel comm %.1f ms/iter (%d collectives, %.2f MB)", windowTensor.seconds / n * 1000,
                                   Int((Double(windowTensor.calls) / n).rounded()), Double(windowTensor.floats) * 4 / n / 1e6)
                }
                if groups.expert != nil {
                    let n = Double(windowIterations)
                    line += format(" | all-to-all %.1f ms/iter (%d calls, %.2f MB sent per rank)", windowExperts.seconds / n * 1000,
                                   Int((Double(windowExperts.calls) / n).rounded()), Double(windowExperts.floats) * 4 / n / 1e6)
                }
                if let pipeline = task as? PipelineGPTTask { line += try pipelineBubbleText(pipeline) }
                log(line)
                try logRouting()
                record?.step(iteration: iteration, elapsed: elapsed, loss: Double(loss), learningRate: Double(lr),
                             unitsPerSecond: Double(units) / perIteration, unitName: task.unitName, millisecondsPerIteration: perIteration * 1000,
                             exposedMilliseconds: dataParallel == nil ? nil : exposedPerIteration * 1000, mfu: mfu)
                windowSeconds = 0
                windowIterations = 0
                windowTensor = (0, 0, 0)
                windowExperts = (0, 0, 0)
                windowExposed = 0
            }
            if config.checkpointInterval > 0 && iteration % config.checkpointInterval == 0 && iteration < maxIterations {
                try saveCheckpoint(reason: "checkpoint_interval")
            }
        }
        let seconds = monotonicSeconds() - start
        if let pipeline = task as? PipelineGPTTask, !config.pipelineTimeline.isEmpty, let report = lastPipelineReport {
            try writePipelineTimeline(pipeline, report)
        }
        try saveCheckpoint(reason: "end of training")
        record?.writeLossCurve()
        if let dataParallel {
            let means = try dataParallel.average([trainingSeconds, totalExposed])
            trainingSeconds = means[0]; totalExposed = means[1]
        }
        if worldSize > 1 {
            let peaks = try allgather([Int64(peakResidentMiB() * 1024)], group: groups.world).map { Int(($0[0] + 512) / 1024) }
            log("peak RSS per rank, MiB: \(peaks)")
        }
        let summary = TrainSummary(iterations: losses.count, seconds: seconds, losses: losses,
                                   evaluations: evaluations.map { ($0.0, $0.1.map { (name: $0.0, value: $0.1) }) },
                                   peakRSSMiB: peakResidentMiB())
        let last = evaluations.last.map { $0.1.map { "\($0.0) \(format("%.4f", $0.1))" }.joined(separator: ", ") } ?? ""
        let perIteration = losses.isEmpty ? 0 : trainingSeconds / Double(losses.count)
        log(format("done: %d iterations in %.1f s wall (%.2f ms/iter training%@, %.0f %@/s%@); %@; peak RSS %.0f MiB; checkpoint %@",
                   losses.count, seconds, perIteration * 1000, dataParallel == nil ? "" : " (mean over ranks)", perIteration > 0 ? Double(units) / perIteration : 0, task.unitName,
                   dataParallel == nil || losses.isEmpty ? "" : format(", exposed comm %.1f%% of step time", 100 * totalExposed / trainingSeconds),
                   last, summary.peakRSSMiB, checkpointPath))
        return summary
    }

    /// One optimizer step: K micro-batches of forward+backward (loss scaled by 1/K), clip, update.
    /// Data-parallel: only the last micro-batch's backward communicates (buckets start as they fill);
    /// the first K-1 accumulate locally. Returns this rank's mean micro-batch loss and the seconds the
    /// step waited for communication after backward.
    func trainStep(learningRate: Float) throws -> (loss: Float, exposedSeconds: Double) {
        if let pipeline = task as? PipelineGPTTask { return try pipelineStep(pipeline, learningRate: learningRate) }
        let parameters = task.parameters
        if let dataParallel { dataParallel.zeroGradients() } else { parameters.zeroGradients() }
        // ZeRO-3: gathers waited for outside the step (evaluation) are not this step's.
        if let dataParallel, dataParallel.shardParameters { _ = dataParallel.takeGatherCounters() }
        var total: Float = 0
        for micro in 0..<config.gradAccum {
            total += try task.trainingLoss(iteration: iteration, microStep: micro)
            if let dataParallel, micro == config.gradAccum - 1 {
                dataParallel.beginStep()
                // Expert parallelism: running the all-to-alls in turn with the buckets on the
                // communication thread measured 0.93x (each then waits for the buckets queued before it).
                let overlap = overlapsBuckets
                try task.backward(lossScale: 1 / Float(config.gradAccum), gradientsReady: { if overlap { dataParallel.gradientsReady(from: $0) } })
            } else {
                try task.backward(lossScale: 1 / Float(config.gradAccum), gradientsReady: { _ in })
            }
        }
        var exposed = try dataParallel?.finishStep() ?? 0
        if let dataParallel, dataParallel.shardParameters { exposed += dataParallel.takeGatherCounters().seconds }
        // The global gradient norm is the same number on every rank (gradients are averaged first, and
        // sharded pieces are summed over the groups that split them), so every rank takes the same decision.
        // Under plain data parallelism the norm is arithmetic on this rank's copy, as in one rank's step:
        // compute, not exposed communication (it was ~0.1 ms of the recipe's 1-1.5 ms "exposed").
        let normCommunicates = tensor != nil || (dataParallel?.shardOptimizer ?? false) || groups.expert != nil
        let start = monotonicSeconds()
        try sumSequenceParallelPartials()
        let norm = try globalGradientNorm()
        if normCommunicates { exposed += monotonicSeconds() - start }
        guard try acceptStep(gradientNorm: norm, learningRate: learningRate) else { return (total / Float(config.gradAccum), exposed) }
        if config.gradClip > 0 { parameters.clipGradients(in: optimizer.ranges, norm: norm, maxNorm: Float(config.gradClip)) }
        optimizer.step(learningRate: learningRate)
        if let dataParallel, dataParallel.shardOptimizer {
            // ZeRO-1: every rank updated its pieces; gather the rest.
            let gatherStart = monotonicSeconds()
            try dataParallel.gatherParameters()
            exposed += monotonicSeconds() - gatherStart
        }
        return (total / Float(config.gradAccum), exposed)
    }

    /// Pipeline parallelism: grad_accum pipeline passes (each runs the schedule over `microbatches`
    /// micro-batches), the tied embedding's two gradients summed, then the replicas' gradients averaged
    /// over the data-parallel group, clipped by the whole model's norm, and the update.
    func pipelineStep(_ pipeline: PipelineGPTTask, learningRate: Float) throws -> (loss: Float, exposedSeconds: Double) {
        let parameters = task.parameters
        parameters.zeroGradients()
        var total: Float = 0
        for pass in 0..<config.gradAccum {
            let (loss, report) = try pipeline.runPass(iteration: iteration, pass: pass, lossScale: 1 / Float(config.gradAccum))
            total += loss
            pipelineWindow = (pipelineWindow.busy + report.busySeconds, pipelineWindow.seconds + report.seconds)
            lastPipelineReport = report
        }
        let start = monotonicSeconds()
        try pipeline.runner.sumTiedEmbeddingGradients()
        if let dataParallel {
            dataParallel.beginStep()
            dataParallel.gradientsReady(from: 0)
            _ = try dataParallel.finishStep()
        }
        try sumSequenceParallelPartials()
        // ZeRO-1: each replica holds the averaged gradient of its own pieces only; their squares add up
        // over the data-parallel group, then over the tensor-parallel shards and the stages. Under expert
        // parallelism without ZeRO the experts' squares add up over the expert group (the dense tensors
        // counted on its rank 0); with ZeRO the data-parallel pieces hold every expert shard once.
        let sharded = dataParallel?.shardOptimizer ?? false
        var squares = [Float(pipeline.gradientSquares(in: optimizer.ranges, replicatedEverywhere: sharded && groups.expert != nil))]
        try squares.withUnsafeMutableBufferPointer { buffer in
            if sharded, let dataParallel { try allreduce(buffer, op: .sum, algorithm: .halvingDoubling, group: dataParallel.group) }
            else if let expert = groups.expert { try allreduce(buffer, op: .sum, algorithm: .halvingDoubling, group: expert.group) }
            if let tensor { try tensor.allreduceSum(buffer) }
            try allreduce(buffer, options: CollectiveOptions(), group: pipeline.runner.group)
        }
        let norm = squares[0].squareRoot()
        var exposed = monotonicSeconds() - start
        let loss = total / Float(config.gradAccum)
        guard try acceptStep(gradientNorm: norm, learningRate: learningRate) else { return (loss, exposed) }
        if config.gradClip > 0 { parameters.clipGradients(in: optimizer.ranges, norm: norm, maxNorm: Float(config.gradClip)) }
        optimizer.step(learningRate: learningRate)
        if sharded, let dataParallel {
            let gatherStart = monotonicSeconds()
            try dataParallel.gatherParameters()
            exposed += monotonicSeconds() - gatherStart
        }
        return (loss, exposed)
    }

    /// The evaluation at this iteration, split across the data-parallel ranks: each evaluates its
    /// share, one allreduce adds the sums and counts (float32: ~1e-7 relative, far below the 4 decimals
    /// logged; rank 0 alone decides what "improved" means, so ranks never disagree).
    func evaluate() throws -> [(name: String, value: Double)] {
        let shares = try task.evaluate(iteration: iteration, part: groups.data.rank, parts: dataSize)
        var totals = shares.flatMap { [$0.sum, $0.count] }
        if let dataParallel, dataSize > 1 { totals = try dataParallel.sum(totals) }
        return shares.indices.map { (shares[$0].name, totals[2 * $0 + 1] > 0 ? totals[2 * $0] / totals[2 * $0 + 1] : .nan) }
    }

    /// " | pipeline bubble measured B (formula F)" over the passes since the last progress line: the idle
    /// share of the pipeline group's ranks, 1 − Σ busy / (p · slowest rank's time). Collective over
    /// the pipeline group.
    func pipelineBubbleText(_ pipeline: PipelineGPTTask) throws -> String {
        let group = pipeline.runner.group
        let all = try allgather([Int64(pipelineWindow.busy * 1e9), Int64(pipelineWindow.seconds * 1e9)], group: group)
        pipelineWindow = (0, 0)
        let slowest = Double(all.map { $0[1] }.max() ?? 0)
        let bubble = slowest > 0 ? 1 - Double(all.map { $0[0] }.reduce(0, +)) / (Double(group.worldSize) * slowest) : 0
        return format(" | pipeline bubble measured %.3f (formula %.3f)", bubble, pipeline.runner.schedule.formulaBubble)
    }

    /// pipeline_timeline: the last pass's measured intervals of every stage, drawn by rank 0 (the ranks
    /// of the first data-parallel replica's pipeline). Collective over the pipeline group.
    func writePipelineTimeline(_ pipeline: PipelineGPTTask, _ report: PipelineRunner.StepReport) throws {
        let intervals = try pipeline.runner.gatherIntervals(report)
        guard rank == 0 else { return }
        let schedule = pipeline.runner.schedule
        let span = (intervals.flatMap { $0.map(\.end) }.max() ?? 0) - (intervals.flatMap { $0.map(\.start) }.min() ?? 0)
        let busy = intervals.reduce(0) { $0 + $1.busySeconds }
        let bubble = span > 0 ? 1 - busy / (Double(intervals.count) * span) : 0
        let title = format("%@, p %d, m %d, v %d: last pass of step %d, measured (bubble %.3f, formula %.3f)",
                           schedule.kind.rawValue, schedule.pipelineParallel, schedule.microbatches, schedule.virtualStages,
                           iteration, bubble, schedule.formulaBubble)
        do {
            let parent = parentDirectory(config.pipelineTimeline)
            if !parent.isEmpty { try FileManager.default.createDirectory(atPath: parent, withIntermediateDirectories: true) }
            try pipelineTimelineSVG(intervals, title: title).write(toFile: config.pipelineTimeline, atomically: true, encoding: .utf8)
        } catch {
            throw ConfigError(key: "pipeline_timeline", "cannot write \(config.pipelineTimeline): \(error)")
        }
        log(format("pipeline timeline: %@ (%.2f ms pass, bubble measured %.3f, formula %.3f)", config.pipelineTimeline, span * 1000,
                   bubble, schedule.formulaBubble))
    }

    /// The L2 norm of the whole model's averaged gradient. Plain data parallelism: every rank holds all
    /// of it. ZeRO-1: each rank sums the squares of its pieces, then the data-parallel group adds them up.
    /// Tensor parallelism: each rank adds its shards, and the replicated tensors on tensor rank 0 only.
    func globalGradientNorm() throws -> Float {
        let parameters = task.parameters
        let sharded = dataParallel?.shardOptimizer ?? false
        if let expert = groups.expert, !sharded, let experts = dataParallel?.experts {
            // The dense gradients are the same on every rank; the experts' differ across the expert group.
            var squares = [Float(sumOfSquares(parameters.gradients.base, count: experts.range.count))]
            try squares.withUnsafeMutableBufferPointer { try allreduce($0, op: .sum, algorithm: .halvingDoubling, group: expert.group) }
            let dense = sumOfSquares(parameters.gradients.base + experts.range.upperBound, count: parameters.count - experts.range.upperBound)
            return Float(Double(squares[0]) + dense).squareRoot()
        }
        guard tensor != nil || sharded else { return parameters.gradientNorm() }
        let counted = (tensor?.rank ?? 0) == 0 ? [0..<parameters.count] : localSharding.shardedRanges
        var sum = 0.0
        for owned in optimizer.ranges {
            for range in counted {
                let r = owned.clamped(to: range)
                if !r.isEmpty { sum += sumOfSquares(parameters.gradients.base + r.lowerBound, count: r.count) }
            }
        }
        let buffer = UnsafeMutableBufferPointer<Float>.allocate(capacity: 1)
        defer { buffer.deallocate() }
        buffer[0] = Float(sum)
        if sharded { try allreduce(buffer, op: .sum, algorithm: .halvingDoubling, group: groups.data) }
        if let tensor { try tensor.allreduceSum(buffer) }
        return buffer[0].squareRoot()
    }

    /// Sequence parallelism: the LayerNorm and position-embedding gradients were computed over this
    /// rank's rows only; the tensor-parallel group adds them up.
    func sumSequenceParallelPartials() throws {
        guard let tensor, groups.sequenceParallel else { return }
        try sumOverTensorGroup(localSharding.sequenceParallelPartialRanges, of: task.parameters.gradients, tensor)
    }

    /// Sums `ranges` of `buffer` over the tensor-parallel group in one collective.
    func sumOverTensorGroup(_ ranges: [Range<Int>], of buffer: FloatBuffer, _ tensor: GroupCommunicator) throws {
        let packed = FloatBuffer(count: ranges.reduce(0) { $0 + $1.count })
        pack(buffer, into: packed, ranges: ranges)
        try tensor.allreduceSum(packed.buffer)
        unpack(packed, into: buffer, ranges: ranges)
    }

    /// Data-parallel replicas hold bitwise-identical parameters, and so do the replicated tensors
    /// (LayerNorms, position embedding, row-parallel biases) of a tensor-parallel group.
    func verifyReplicas() throws {
        // ZeRO-3: the gathered whole model must be the same on every rank.
        try dataParallel?.pinParameters()
        defer { dataParallel?.unpinParameters() }
        try dataParallel?.verifyReplicas(iteration: iteration)
        guard let tensor else { return }
        let replicated = localSharding.replicatedRanges
        let copy = FloatBuffer(count: replicated.reduce(0) { $0 + $1.count })
        pack(task.parameters.values, into: copy, ranges: replicated)
        if let r = try firstRankDiffering(checksum(of: copy.buffer), group: tensor.group) {
            throw TrainingError("after iteration \(iteration) tensor-parallel rank \(r) (world rank \(tensor.group.members[r]))'s replicated tensors (LayerNorms, position embedding, biases) differ bitwise from tensor-parallel rank 0's")
        }
    }

    // MARK: start, checkpoints, resume

    /// Start: when rank 0 resumed, every rank takes its shard of the full parameters and its pieces of
    /// the optimizer state, and the iteration; rank 0's (data-parallel) parameters go to every replica;
    /// then every rank is checked to run the same model and config.
    func synchronize() throws {
        if worldSize > 1 {
            var tuningText = ""
            if !config.allreduceTuning.isEmpty {
                let table: TuningTable
                do { table = try TuningTable.load(path: config.allreduceTuning) } catch {
                    throw ConfigError(key: "allreduce_tuning", "\(error)")
                }
                dataParallel?.setTuning(table)
                let encoder = JSONEncoder()
                encoder.outputFormatting = .sortedKeys // dictionary order differs between processes
                tuningText = String(decoding: (try? encoder.encode(table)) ?? Data(), as: UTF8.self)
                if table.worldSize != dataSize {
                    log("allreduce_tuning: \(config.allreduceTuning) was measured at \(table.worldSize) ranks, this run has \(dataSize): auto keeps its fixed rule")
                }
            }
            // Ranks must agree on the model and config, and on the tuning table auto consults.
            try requireSameConfig("\(task.sharding.fullCount)|\(config.jsonString())\(tuningText)", group: groups.world)
        }
        var resumed = resumedParameters != nil
        if worldSize > 1 {
            let counters = try broadcast([resumed ? 1 : 0, Int64(iteration), Int64(optimizer.stepCount)], root: 0, group: groups.world)
            resumed = counters[0] == 1
            iteration = Int(counters[1])
            optimizer.stepCount = Int(counters[2])
        }
        if resumed, let pipeline = task as? PipelineGPTTask {
            // Every rank takes its stages' tensors out of rank 0's full model and state.
            let count = task.sharding.fullCount
            func share(_ full: FloatBuffer?, into local: FloatBuffer) throws {
                let full = full ?? FloatBuffer(count: count)
                try broadcast(full.buffer, root: 0, group: groups.world)
                pipeline.localize(full, into: local)
            }
            try share(resumedParameters, into: task.parameters.values)
            for (name, packed) in optimizer.state {
                // ZeRO-1 keeps only its pieces of the stage's state.
                let local = FloatBuffer(count: task.parameters.count)
                try share(resumedState?[name], into: local)
                pack(local, into: packed, ranges: optimizer.ranges)
            }
            resumedParameters = nil; resumedState = nil
        } else if resumed {
            let sharding = task.sharding
            let local = FloatBuffer(count: sharding.localCount)
            func share(_ full: FloatBuffer?) throws -> FloatBuffer {
                let full = full ?? FloatBuffer(count: sharding.fullCount)
                if worldSize > 1 { try broadcast(full.buffer, root: 0, group: groups.world) }
                sharding.scatter(full: full.base, into: local.base)
                return local
            }
            task.parameters.values.base.update(from: try share(resumedParameters).base, count: sharding.localCount)
            for (name, packed) in optimizer.state { pack(try share(resumedState?[name]), into: packed, ranges: optimizer.ranges) }
            resumedParameters = nil; resumedState = nil
        }
        guard worldSize > 1 else { return }
        if let dataParallel {
            if let initialChecksum, !resumed {
                // ZeRO-3: every rank drew the model from the seed and kept its pieces; broadcasting it
                // would put the whole model in every rank's memory, so the ranks compare what they drew.
                if let r = try firstRankDiffering(initialChecksum.replicated, group: dataParallel.group) {
                    throw TrainingError("data-parallel rank \(r) drew a different initial model than rank 0 (CRC-32C mismatch)")
                }
                if let experts = dataParallel.experts, experts.group.worldSize > 1,
                   let r = try firstRankDiffering(initialChecksum.experts, group: experts.group) {
                    throw TrainingError("expert-data-parallel rank \(r) (world rank \(experts.group.members[r])) drew other experts than its group's rank 0 (CRC-32C mismatch)")
                }
                return
            }
            try dataParallel.broadcastParameters()
            dataParallel.shardParametersNow()
        }
    }

    /// One line per data-parallel rank: optimizer state floats and MiB (ZeRO-1 divides it by the
    /// data-parallel size; tensor parallelism by the tensor-parallel size).
    func logOptimizerMemory() {
        let buffers = optimizer.state.count
        let full = Double(buffers * task.sharding.fullCount * 4) / 1048576
        for r in 0..<dataSize {
            let owned = dataParallel?.ownedRanges(of: r).reduce(0) { $0 + $1.count } ?? task.parameters.count
            log(format("optimizer memory: %@ %d holds %d x %d floats = %.2f MiB of state (%.0f%% of the unsharded %.2f MiB)",
                       tensor == nil ? "rank" : "data-parallel rank", r, buffers, owned, Double(buffers * owned * 4) / 1048576,
                       100 * Double(owned) / Double(max(task.sharding.fullCount, 1)), full))
        }
        for r in 0..<dataSize {
            let held = memoryHeld(dataRank: r)
            log("memory: \(tensor == nil ? "rank" : "data-parallel rank") \(r) holds parameters \(held.parameters) + gradients \(held.gradients) + optimizer state \(held.optimizer) = \(held.total) bytes; ZeRO paper, stage \(config.zeroStage): \(held.formulaText)")
        }
        if let dataParallel, dataParallel.shardParameters {
            // Gathered at once: the roots, the unit in use and the one prefetched, values and gradients.
            let sizes = dataParallel.unitSizes
            let roots = dataParallel.rootUnits.reduce(0) { $0 + sizes[$1] }
            let others = sizes.enumerated().filter { !dataParallel.rootUnits.contains($0.offset) }.map(\.element).sorted(by: >).prefix(1 + dataParallel.prefetchDepth)
            log("memory working set: ZeRO-3 gathers at most \(8 * (roots + others.reduce(0, +))) bytes at once (values and gradients of the root units and of \(others.count) others)")
        }
    }

    /// What a data-parallel rank keeps between steps, in bytes, beside the ZeRO paper's count for this
    /// stage (Ψ this rank's parameters, N the data-parallel size, 4 bytes per float, Adam's two moments:
    /// K = 8 bytes per parameter): DDP 16Ψ, stage 1 8Ψ + 8Ψ/N, stage 2 4Ψ + 12Ψ/N. Both count the
    /// optimizer state the optimizer really has (SGD with momentum 4Ψ, without 0).
    public func memoryHeld(dataRank r: Int) -> (parameters: Int, gradients: Int, optimizer: Int, total: Int, formula: Double, formulaText: String) {
        let psi = task.parameters.count, n = dataSize
        let owned = dataParallel?.ownedRanges(of: r).reduce(0) { $0 + $1.count } ?? psi
        let stateBytesPerParameter = 4 * optimizer.state.count
        let parameters = 4 * (config.zeroStage >= 3 && n > 1 ? owned : psi)
        let gradients = 4 * (config.zeroStage >= 2 && n > 1 ? owned : psi)
        let state = stateBytesPerParameter * owned
        let k = Double(stateBytesPerParameter)
        let formula: (Double, Double) -> Double, text: String
        switch config.zeroStage {
        case 0: formula = { p, _ in (8 + k) * p }; text = "(4 + 4 + \(Int(k)))Ψ"
        case 1: formula = { p, nn in 8 * p + k * p / nn }; text = "8Ψ + \(Int(k))Ψ/N"
        case 2: formula = { p, nn in 4 * p + (4 + k) * p / nn }; text = "4Ψ + \(4 + Int(k))Ψ/N"
        default: formula = { p, nn in (8 + k) * p / nn }; text = "\(8 + Int(k))Ψ/N"
        }
        // Under expert parallelism this rank's experts are sharded over the ranks holding the same ones.
        if let experts = dataParallel?.experts {
            let e = experts.range.count, ne = experts.group.worldSize
            let total = formula(Double(psi - e), Double(n)) + formula(Double(e), Double(ne))
            return (parameters, gradients, state, parameters + gradients + state, total,
                    format("%@ with Ψ = %d (dense, N = %d) + %d (experts, N = %d): %.1f bytes", text, psi - e, n, e, ne, total))
        }
        let total = formula(Double(psi), Double(n))
        return (parameters, gradients, state, parameters + gradients + state, total,
                format("%@ with Ψ = %d, N = %d: %.1f bytes", text, psi, n, total))
    }

    /// The layout, and what one rank holds of the block weights (about 1/tensor_parallel of them).
    func logTensorParallelism() {
        guard let tensor, let layout = groups.layout else { return }
        log("tensor parallel: \(layout), sequence parallel \(groups.sequenceParallel ? "on" : "off"); per block 2 summed outputs forward, 2 summed input gradients backward on the tensor-parallel group"
            + (tensor.group.arena != nil ? ", through its shared arena" : ""))
        for line in layout.table() { log("layout: " + line) }
        let blocks = localSharding.shards.filter { $0.local.name.hasPrefix("transformer.h.") }
        let local = blocks.reduce(0) { $0 + $1.local.value.count }, full = blocks.reduce(0) { $0 + $1.fullShape.reduce(1, *) }
        log(format("parameter memory: %d of the model's %d parameters on each rank; block weights %.2f MiB of %.2f MiB (%.1f%%, 1/%d = %.1f%%)",
                   task.parameters.count, task.sharding.fullCount, Double(local * 4) / 1048576, Double(full * 4) / 1048576,
                   100 * Double(local) / Double(max(full, 1)), tensor.size, 100 / Double(tensor.size)))
    }

    /// This rank's mixture objects of block `layer`.
    func mixtures(ofLayer layer: Int) -> [MixtureOfExperts] {
        if let pipeline = task as? PipelineGPTTask { return pipeline.mixtures(ofLayer: layer) }
        guard let gpt = task as? GPTTask, let moe = config.experts,
              let index = moe.expertLayers(of: config.nLayer).firstIndex(of: layer) else { return [] }
        return [gpt.model.mixtures[index]]
    }

    /// The mixtures, and under expert parallelism the layout and what each rank holds.
    func logExperts() {
        guard let moe = config.experts else { return }
        let layers = moe.expertLayers(of: config.nLayer), tokens = config.batchSize * config.blockSize
        log("mixture of experts: \(moe.experts) experts, top-\(moe.topK)\(moe.topK == 2 ? " (gates renormalised)" : ""), capacity "
            + (moe.capacityFactor > 0 ? "factor \(moe.capacityFactor) (ceil(\(moe.topK) x \(tokens) tokens / \(moe.experts) x \(moe.capacityFactor)) = \(moe.capacity(rows: tokens)) places per expert per micro-batch)" : "unlimited (dropless)")
            + ", load-balancing loss coefficient \(moe.auxiliaryLossCoefficient), in blocks \(layers)")
        guard let expert = groups.expert, let layout = groups.layout else { return }
        let local = task.expertCount
        log("expert parallel: \(layout); each rank holds \(moe.experts / expert.size) of \(moe.experts) experts per mixture; per mixture 2 all-to-all-v forward (dispatch, combine) and 2 backward on the expert group, plus one of counts; expert gradients averaged over the expert-data-parallel group (\(layout.expertDataParallel) ranks\(groups.expertData?.arena != nil ? ", through its shared arena" : "")), dense ones over all \(dataSize)")
        for line in layout.table() { log("layout: " + line) }
        guard task is GPTTask else {
            // A pipeline: rank 0's stages, whose experts the expert group splits.
            return log(format("parameter memory: rank 0 holds %d of the model's %d parameters; its stages' experts %.2f MiB of %.2f MiB (1/%d)",
                              task.parameters.count, task.sharding.fullCount, Double(local * 4) / 1048576, Double(local * expert.size * 4) / 1048576,
                              expert.size))
        }
        let full = task.sharding.fullCount - (task.parameters.count - local)
        log(format("parameter memory: %d of the model's %d parameters on each rank; experts %.2f MiB of %.2f MiB (1/%d)",
                   task.parameters.count, task.sharding.fullCount, Double(local * 4) / 1048576, Double(full * 4) / 1048576, expert.size))
    }

    /// One line per mixture since the last progress line: choices per expert over the whole global batch
    /// (min / mean / max, and max over mean), dropped choices and the mean auxiliary loss. Collective
    /// over the data-parallel group.
    func logRouting() throws {
        guard let moe = config.experts else { return }
        let e = moe.experts
        for layer in moe.expertLayers(of: config.nLayer) {
            // One mixture object per pipeline activation slot, none for a layer on another stage.
            var figures = [Double](repeating: 0, count: e + 3)
            for mixture in mixtures(ofLayer: layer) {
                let local = mixture.statistics
                mixture.statistics = MoEStatistics(experts: e)
                for (i, v) in (local.routed + [local.dropped, local.auxiliaryLoss, Double(local.forwards)]).enumerated() { figures[i] += v }
            }
            if let dataParallel { figures = try dataParallel.sum(figures) }
            if let pipeline = task as? PipelineGPTTask {
                var buffer = figures.map { Float($0) }
                try buffer.withUnsafeMutableBufferPointer { try allreduce($0, options: CollectiveOptions(), group: pipeline.runner.group) }
                figures = buffer.map { Double($0) }
            }
            let routed = Array(figures[0..<e])
            let dropped = figures[routed.count], aux = figures[routed.count + 1] / max(figures[routed.count + 2], 1)
            let mean = routed.reduce(0, +) / Double(max(routed.count, 1)), total = routed.reduce(0, +)
            log(format("moe block %d: tokens per expert min %.0f / mean %.1f / max %.0f (max/mean %.3f), dropped %.0f of %.0f choices (%.2f%%), aux loss %.5f",
                       layer, routed.min() ?? 0, mean, routed.max() ?? 0, mean > 0 ? (routed.max() ?? 0) / mean : 0, dropped, total,
                       total > 0 ? 100 * dropped / total : 0, aux))
        }
    }

    /// Measured after the first step (buffers are sized by the first forward), beside the paper's count.
    func logActivationMemory(_ gpt: GPTTask) {
        let formula = gpt.model.configuration.korthikantiActivationBytes(batch: config.batchSize, time: config.blockSize,
                                                                         tensorParallel: config.tensorParallel, sequenceParallel: config.sequenceParallel)
        log(format("activation memory: %d bytes per layer on this rank kept from forward to backward (fp32); Korthikanti et al. for this layout %.0f bytes at 16 bits, %.0f as fp32 (theirs counts dropout masks, the GELU output and the attention probabilities; this model has no dropout and recomputes the GELU and LayerNorm outputs and, for head sizes that are multiples of 16, the attention probabilities)",
                   gpt.model.activationBytesPerLayer, formula, 2 * formula))
    }

    /// Whether to apply this step: a non-finite gradient norm (a NaN or infinite loss, a too-large
    /// learning rate, a NaN weight) stops training with an error, or with `on_nonfinite: skip` leaves the
    /// parameters as they are and goes on (counted and logged).
    func acceptStep(gradientNorm norm: Float, learningRate: Float) throws -> Bool {
        if norm.isFinite { return true }
        switch config.onNonfinite {
        case .stop:
            throw TrainingError("iteration \(iteration): the gradient norm is \(norm) (learning rate \(learningRate)); stopped without updating the parameters or overwriting the last checkpoint (on_nonfinite: skip would skip such steps)")
        case .skip:
            skippedSteps += 1
            log("iteration \(iteration): the gradient norm is \(norm): step skipped (\(skippedSteps) so far; on_nonfinite: skip)")
            return false
        }
    }

    /// Writes the full model and state (ZeRO-1: gathered from the owners; tensor parallelism: assembled
    /// from the shards, so every rank must call this); only rank 0 writes the file, in the one-rank
    /// layout. Any layout can resume it. Non-finite parameters are refused: a good checkpoint is never
    /// overwritten by a broken one.
    public func saveCheckpoint(to path: String? = nil, reason: String = "requested") throws {
        let path = path ?? checkpointPath
        if config.checkpointFormat == .sharded { return try saveShardedCheckpoint(to: path, reason: reason) }
        try dataParallel?.pinParameters()
        defer { dataParallel?.unpinParameters() }
        var state: [(name: String, buffer: FloatBuffer)] = optimizer.state
        if let dataParallel, dataParallel.shardOptimizer {
            state = try state.map { ($0.name, try dataParallel.gatherState($0.buffer)) }
        }
        // Only rank 0's tensor-parallel (or expert) group assembles: the other replicas hold the same.
        guard (groups.expertData?.rank ?? groups.data.rank) == 0 else { return }
        guard rank == 0 else {
            // The other ranks take part in assembling each buffer and keep none of them (a pipeline
            // rank's assembly is the whole model: one at a time, not all at once).
            _ = try fullModel(task.parameters.values)
            for (_, buffer) in state { _ = try fullModel(buffer) }
            return
        }
        let parameters = try fullModel(task.parameters.values)
        state = try state.map { ($0.name, try fullModel($0.buffer)) }
        guard allFinite(parameters.base, count: parameters.count) else {
            throw TrainingError("iteration \(iteration): the parameters hold NaN or infinite values; \(path) was not overwritten")
        }
        try FileManager.default.createDirectory(atPath: config.outDir, withIntermediateDirectories: true)
        var tensors: [(name: String, shape: [Int], values: UnsafeBufferPointer<Float>)] = task.sharding.fullParameters.map {
            ($0.name, $0.shape, UnsafeBufferPointer(rebasing: parameters.buffer[$0.offset..<($0.offset + $0.shape.reduce(1, *))]))
        }
        for (name, buffer) in state {
            tensors.append(("optimizer." + name, [buffer.count], UnsafeBufferPointer(buffer.buffer)))
        }
        let metadata = checkpointMetadata()
        try Checkpoint(tensors: tensors, metadata: metadata).write(to: path)
        log("checkpoint: wrote \(path) at iteration \(iteration) (\(reason))")
    }

    /// What every checkpoint carries besides tensors: where training stands, what wrote it, and how to
    /// rebuild the model (the config; the GPT's vocabulary, so sampling needs no data file).
    func checkpointMetadata() -> [String: String] {
        var metadata = [
            "format": "swift-ddp-checkpoint", "version": "2",
            "iteration": String(iteration), "optimizer_steps": String(optimizer.stepCount),
            "optimizer": config.optimizer.rawValue, "world_size": String(worldSize), "zero_stage": String(config.zeroStage),
            "architecture": config.architecture, "config": config.jsonString(),
        ]
        if let jobID { metadata["job_id"] = jobID }
        if let gpt = task as? GPTTask { metadata["vocabulary"] = String(String.UnicodeScalarView(gpt.text.vocabulary)) }
        if let gpt = task as? PipelineGPTTask { metadata["vocabulary"] = String(String.UnicodeScalarView(gpt.text.vocabulary)) }
        return metadata
    }

    /// checkpoint_format sharded: every data-parallel rank writes the pieces it owns (ZeRO-1/2/3: its
    /// pieces of every bucket or unit, with its optimizer state; without ZeRO: 1/N of the buffer), with no
    /// gather, then rank 0 writes the index. Under expert parallelism the experts are split over the ranks
    /// holding the same ones and each piece goes where it lies in the one-rank layout. Collective over the
    /// data-parallel group.
    func saveShardedCheckpoint(to path: String, reason: String) throws {
        let parameters = task.parameters
        let n = dataSize, r = groups.data.rank
        let sharded = dataParallel?.shardOptimizer ?? false
        var ranges = [segmentRange(count: parameters.count, parts: n, index: r)]
        if sharded { ranges = dataParallel!.ownedRanges(of: r) }
        else if let experts = dataParallel?.experts {
            let dense = experts.range.upperBound..<parameters.count, segment = segmentRange(count: dense.count, parts: n, index: r)
            ranges = [segmentRange(count: experts.range.count, parts: experts.group.worldSize, index: experts.group.rank),
                      (dense.lowerBound + segment.lowerBound)..<(dense.lowerBound + segment.upperBound)]
        }
        var pieces: [(buffer: String, start: Int, values: UnsafeBufferPointer<Float>)] = []
        var finite = true
        var packedAt = 0
        for range in ranges where !range.isEmpty {
            guard let places = localSharding.fullPieces(ofLocal: range) else {
                throw TrainingError("a sharded checkpoint cannot place this layout's tensors in the one-rank layout")
            }
            for (piece, fullStart) in places {
                let values = UnsafeBufferPointer(rebasing: parameters.values.buffer[piece])
                finite = finite && allFinite(values.baseAddress!, count: values.count)
                pieces.append(("values", fullStart, values))
                for (name, buffer) in optimizer.state {
                    let at = packedAt + piece.lowerBound - range.lowerBound
                    let slice = sharded ? at..<(at + piece.count) : piece
                    pieces.append(("optimizer." + name, fullStart, UnsafeBufferPointer(rebasing: buffer.buffer[slice])))
                }
            }
            packedAt += range.count
        }
        if let dataParallel {
            let flags = try allgather([finite ? 0 : 1], group: dataParallel.group)
            if let bad = flags.firstIndex(where: { $0[0] != 0 }) {
                throw TrainingError("iteration \(iteration): data-parallel rank \(bad)'s parameters hold NaN or infinite values; \(path) was not overwritten")
            }
        } else if !finite {
            throw TrainingError("iteration \(iteration): the parameters hold NaN or infinite values; \(path) was not overwritten")
        }
        shardedSaves += 1
        let save = format("step-%08d-%@-%d", iteration, (jobID ?? "job").filter { $0.isLetter || $0.isNumber }, shardedSaves)
        try ShardedCheckpoint.writeShard(to: path, save: save, rank: r, world: n, pieces: pieces)
        if let dataParallel { try barrier(group: dataParallel.group) }
        guard r == 0 else { return }
        try ShardedCheckpoint.writeIndex(to: path, save: save, world: n, metadata: checkpointMetadata(),
                                         parameters: task.sharding.fullParameters.map { ($0.name, $0.shape, $0.offset) },
                                         flatCount: task.sharding.fullCount, state: optimizer.state.map(\.name))
        log("checkpoint: wrote \(path) at iteration \(iteration) (\(reason)), \(n) shard(s)")
    }

    /// A full-layout buffer from a local-layout one (parameters or unpacked optimizer state), on rank 0
    /// of the tensor-parallel (or expert) group (`assembleOnRankZero`: the others send their shards and
    /// hold nothing more; an allgather gave every rank the whole group's shards and a full buffer it
    /// threw away: 6.5 MB per call on the recipe at tp 4). The others get `local` back, to discard.
    /// `local` itself when it already is the full layout (no copy: a checkpoint would hold a second
    /// model for nothing). Collective on that group.
    func fullModel(_ local: FloatBuffer) throws -> FloatBuffer {
        if let pipeline = task as? PipelineGPTTask { return try pipeline.fullModel(local, tensor: tensor?.group ?? groups.expert?.group) }
        let sharding = task.sharding
        guard let group = tensor?.group ?? groups.expert?.group else { return local }
        return try Self.assembleOnRankZero(local, localCount: sharding.localCount, fullCount: sharding.fullCount, group: group) {
            sharding.assemble(piece: $0, rank: $1, into: $2)
        } ?? local
    }

    /// A group's shards assembled on its rank 0, one at a time, so it holds the full buffer and one
    /// shard of room: it places its own `local` (`localCount` floats) and then each other rank's, as
    /// received, with `place(piece, rank, full)` into a new buffer of `fullCount` floats, which it
    /// returns. The other ranks send `local` and get nil. No group (or a group of one): rank 0's part
    /// alone. Collective on `group`.
    static func assembleOnRankZero(_ local: FloatBuffer, localCount: Int, fullCount: Int, group: ProcessGroup?,
                                   place: (UnsafePointer<Float>, Int, UnsafeMutablePointer<Float>) -> Void) throws -> FloatBuffer? {
        let bytes = 4 * localCount, others = (group?.worldSize ?? 1) - 1
        if let group, others > 0, group.rank != 0 {
            try send(UnsafeRawBufferPointer(start: local.base, count: bytes), to: 0, tag: assemblyTag, group: group)
            return nil
        }
        let full = FloatBuffer(count: fullCount)
        place(local.base, 0, full.base)
        if let group, others > 0 {
            let piece = FloatBuffer(count: localCount)
            for q in 1...others {
                try receive(UnsafeMutableRawBufferPointer(start: piece.base, count: bytes), from: q, tag: assemblyTag, group: group)
                place(piece.base, q, full.base)
            }
        }
        return full
    }

    /// The point-to-point tag of a checkpoint's shards on their way to the assembling rank.
    static let assemblyTag = 0xA55E

    /// Found at the start, not after training: out_dir must be a directory this process can write.
    func checkOutputDirectory() throws {
        let dir = config.outDir
        do { try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true) } catch {
            throw ConfigError(key: "out_dir", "cannot create '\(dir)': \(whyNotCreatable(dir))")
        }
        // One run per out_dir: a lock held for the whole run (released by the kernel if the process dies).
        let lockPath = dir + "/.lock"
        let fd = open(lockPath, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw ConfigError(key: "out_dir", "cannot write in '\(dir)': \(String(cString: strerror(errno)))") }
        guard flock(fd, LOCK_EX | LOCK_NB) == 0 else {
            var holder = [UInt8](repeating: 0, count: 32)
            let n = read(fd, &holder, holder.count)
            close(fd)
            let pid = n > 0 ? String(decoding: holder[0..<n], as: UTF8.self).trimmed : "?"
            throw ConfigError(key: "out_dir", "'\(dir)' is in use by another run (pid \(pid)): wait for it, stop it, or choose another out_dir")
        }
        _ = ftruncate(fd, 0)
        let pid = Array("\(getpid())\n".utf8)
        _ = pid.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, 0) }
        outputLock = fd
    }

    func releaseOutputDirectory() {
        if outputLock >= 0 { close(outputLock); outputLock = -1 }
    }

    /// Restores parameters, optimizer state and iteration from `path` (batches are a function of the
    /// iteration, so nothing else is needed), into `run`. Call it on rank 0 only: `run` hands every rank
    /// its part, at any world size and layout.
    public func resume(from path: String) throws {
        let checkpoint = try LoadedCheckpoint(path: path)
        guard try checkpoint.require("format") == "swift-ddp-checkpoint" else {
            throw CheckpointError(path, "not a swift-ddp checkpoint")
        }
        let architecture = TrainConfig.architecture(of: try checkpoint.require("architecture"))
        guard architecture == config.architecture else {
            throw CheckpointError(path, "was written for '\(architecture)' but this run is '\(config.architecture)'")
        }
        let optimizerName = try checkpoint.require("optimizer")
        guard optimizerName == config.optimizer.rawValue else {
            throw CheckpointError(path, "holds \(optimizerName) state but this run uses \(config.optimizer.rawValue)")
        }
        guard let savedIteration = Int(try checkpoint.require("iteration")),
              let steps = Int(try checkpoint.require("optimizer_steps")) else {
            throw CheckpointError(path, "metadata iteration/optimizer_steps are not integers")
        }
        guard savedIteration >= 0, (0...savedIteration).contains(steps) else {
            throw CheckpointError(path, "metadata iteration \(savedIteration) / optimizer_steps \(steps) are out of range (need 0 <= optimizer_steps <= iteration)")
        }
        guard savedIteration <= maxIterations else {
            throw CheckpointError(path, "was written at iteration \(savedIteration), past this run's \(maxIterations) iterations (max_iters): nothing to train; raise max_iters to continue it")
        }
        // `synchronize` hands every rank (this one too) its shard and its pieces.
        let sharding = task.sharding
        let parameters = FloatBuffer(count: sharding.fullCount)
        for (name, shape, offset) in sharding.fullParameters { try checkpoint.restore(name, shape: shape, into: parameters.base + offset) }
        var state: [String: FloatBuffer] = [:]
        for (name, _) in optimizer.state {
            let full = FloatBuffer(count: sharding.fullCount)
            try checkpoint.restore("optimizer." + name, shape: [full.count], into: full.base)
            state[name] = full
        }
        resumedParameters = parameters
        resumedState = state
        optimizer.stepCount = steps
        iteration = savedIteration
        log("resumed from \(path) at iteration \(savedIteration) (written by \(checkpoint.metadata["world_size"] ?? "?") rank(s))")
    }

    /// After the launcher restarted the group (restartCount > 0): rank 0 resumes from out_dir's
    /// checkpoint if this job wrote it, else training starts over (logged either way).
    public func resumeAfterRestart(restartCount: Int) throws {
        guard restartCount > 0, rank == 0 else { return }
        guard FileManager.default.fileExists(atPath: checkpointPath) else {
            return log("restart \(restartCount): no checkpoint at \(checkpointPath) yet; starting from iteration 0")
        }
        let writer = try LoadedCheckpoint(path: checkpointPath).metadata["job_id"]
        guard writer == jobID else {
            return log("restart \(restartCount): \(checkpointPath) belongs to another job (\(writer ?? "no job id")); starting from iteration 0")
        }
        log("restart \(restartCount): resuming from the last checkpoint")
        try resume(from: checkpointPath)
    }
}

/// "42 s", "3 min 05 s", "1 h 02 min".
func formatDuration(_ seconds: Double) -> String {
    guard seconds.isFinite, seconds >= 0 else { return "?" }
    let s = Int(seconds.rounded())
    if s < 60 { return "\(s) s" }
    if s < 3600 { return format("%d min %02d s", s / 60, s % 60) }
    return format("%d h %02d min", s / 3600, (s % 3600) / 60)
}

/// Why a directory cannot be made, in words: the nearest existing ancestor is a file, or not writable.
func whyNotCreatable(_ path: String) -> String {
    var ancestor = parentDirectory(path)
    var info = stat()
    while !ancestor.isEmpty && stat(ancestor, &info) != 0 {
        ancestor = parentDirectory(ancestor)
    }
    if ancestor.isEmpty { return "no existing parent directory" }
    if (info.st_mode & S_IFMT) != S_IFDIR { return "'\(ancestor)' is a file, not a directory" }
    if access(ancestor, W_OK) != 0 { return "'\(ancestor)' is not writable (\(String(cString: strerror(errno))))" }
    return "mkdir failed"
}

/// Peak resident set size of this process (getrusage ru_maxrss, KiB on Linux).
public func peakResidentMiB() -> Double {
    var usage = rusage()
    getrusage(RUSAGE_SELF.rawValue, &usage)
    return Double(usage.ru_maxrss) / 1024
}

