import Collectives
import Foundation
import NN
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
    /// Present when the world has more than one rank.
    public let dataParallel: DataParallel?
    let rank: Int, worldSize: Int
    let log: (String) -> Void

    public var checkpointPath: String { config.outDir + "/ckpt.safetensors" }

    /// With a group of more than one rank the trainer runs data-parallel: rank 0's initial parameters
    /// are broadcast, gradients are averaged in buckets during backward, and only rank 0 evaluates,
    /// logs and writes checkpoints.
    public init(config: TrainConfig, task: TrainingTask, group: ProcessGroup = .single(),
                log: @escaping (String) -> Void = { emitLine($0) }) {
        self.config = config
        self.task = task
        rank = group.rank
        worldSize = group.worldSize
        self.log = group.rank == 0 ? log : { _ in }
        dataParallel = group.worldSize > 1
            ? DataParallel(group: group, parameters: task.parameters, bucketBytes: Int(config.bucketMb * 1048576),
                           algorithm: AllreduceAlgorithm(rawValue: config.allreduceAlgorithm) ?? .auto)
            : nil
        let parameters = task.parameters
        switch config.optimizer {
        case .adamw:
            optimizer = AdamW(parameters, .init(beta1: Float(config.beta1), beta2: Float(config.beta2),
                                                 weightDecay: Float(config.weightDecay)))
        case .sgd:
            optimizer = SGD(parameters, momentum: Float(config.momentum))
        }
        schedule = CosineSchedule(peak: Float(config.learningRate), minimum: Float(config.minLr),
                                  warmup: config.warmupIters, decaySteps: config.lrDecayIters, enabled: config.decayLr)
        if let epochs = config.epochs, let mlp = task as? MLPTask {
            maxIterations = epochs * mlp.batchesPerEpoch / config.gradAccum
        } else {
            maxIterations = config.maxIters
        }
        task.initialize(seed: config.seed)
    }

    /// Runs from the current iteration to the end.
    public func run() throws -> TrainSummary {
        let units = task.unitsPerMicroBatch * config.gradAccum * worldSize
        defer { dataParallel?.stop() }
        if let dataParallel { try dataParallel.synchronizeInitialState(configText: config.jsonString()) }
        log("model: \(config.architecture), \(task.parameters.count) parameters")
        log("batch: \(task.unitsPerMicroBatch) \(task.unitName) per micro-batch x \(config.gradAccum) accumulation steps x \(worldSize) rank(s) = \(units) \(task.unitName) per step (global batch)")
        if dataParallel != nil {
            log("data parallel: \(worldSize) ranks, allreduce \(config.allreduceAlgorithm), buckets of \(config.bucketMb) MiB, gradients averaged")
        }
        log("training \(maxIterations) iterations from iteration \(iteration), optimizer \(config.optimizer.rawValue)")
        var losses: [Float] = []
        var evaluations: [(Int, [(String, Double)])] = []
        let start = monotonicSeconds()
        var trainingSeconds = 0.0, windowSeconds = 0.0, windowIterations = 0, windowExposed = 0.0, totalExposed = 0.0
        while true {
            if rank == 0 && (iteration % config.evalInterval == 0 || iteration == maxIterations) {
                let figures = task.evaluate(iteration: iteration)
                evaluations.append((iteration, figures))
                log("eval \(iteration): " + figures.map { "\($0.name) \(String(format: "%.4f", $0.value))" }.joined(separator: ", "))
            }
            if iteration == maxIterations { break }
            let lr = schedule.learningRate(at: iteration)
            let stepStart = monotonicSeconds()
            let (localLoss, exposed) = try trainStep(learningRate: lr)
            let stepSeconds = monotonicSeconds() - stepStart
            let loss = try dataParallel.map { Float(try $0.average(Double(localLoss))) } ?? localLoss
            if config.verifyReplicas { try dataParallel?.verifyReplicas(iteration: iteration) }
            trainingSeconds += stepSeconds
            windowSeconds += stepSeconds
            windowExposed += exposed
            totalExposed += exposed
            losses.append(loss)
            iteration += 1
            windowIterations += 1
            if iteration % config.logInterval == 0 || iteration == maxIterations {
                // Step time only: evaluations and checkpoints are not training throughput.
                let perIteration = windowSeconds / Double(windowIterations)
                var line = String(format: "iter %d/%d | loss %.4f | lr %.3e | %.1f ms/iter | %.0f %@/s",
                                  iteration, maxIterations, loss, lr, perIteration * 1000, Double(units) / perIteration, task.unitName)
                if dataParallel != nil {
                    let exposedPerIteration = windowExposed / Double(windowIterations)
                    line += String(format: " | compute %.1f ms, exposed comm %.2f ms (%.1f%%)", (perIteration - exposedPerIteration) * 1000,
                                   exposedPerIteration * 1000, 100 * exposedPerIteration / perIteration)
                }
                log(line)
                windowSeconds = 0
                windowIterations = 0
                windowExposed = 0
            }
            if rank == 0 && config.checkpointInterval > 0 && iteration % config.checkpointInterval == 0 && iteration < maxIterations {
                try saveCheckpoint()
            }
        }
        let seconds = monotonicSeconds() - start
        if rank == 0 { try saveCheckpoint() }
        let summary = TrainSummary(iterations: losses.count, seconds: seconds, losses: losses,
                                   evaluations: evaluations.map { ($0.0, $0.1.map { (name: $0.0, value: $0.1) }) },
                                   peakRSSMiB: peakResidentMiB())
        let last = evaluations.last.map { $0.1.map { "\($0.0) \(String(format: "%.4f", $0.1))" }.joined(separator: ", ") } ?? ""
        let perIteration = losses.isEmpty ? 0 : trainingSeconds / Double(losses.count)
        log(String(format: "done: %d iterations in %.1f s wall (%.2f ms/iter training, %.0f %@/s%@); %@; peak RSS %.0f MiB; checkpoint %@",
                   losses.count, seconds, perIteration * 1000, perIteration > 0 ? Double(units) / perIteration : 0, task.unitName,
                   dataParallel == nil || losses.isEmpty ? "" : String(format: ", exposed comm %.1f%% of step time", 100 * totalExposed / trainingSeconds),
                   last, summary.peakRSSMiB, checkpointPath))
        return summary
    }

    /// One optimizer step: K micro-batches of forward+backward (loss scaled by 1/K), clip, update.
    /// Data-parallel: only the last micro-batch's backward communicates (buckets start as they fill);
    /// the first K-1 accumulate locally. Returns this rank's mean micro-batch loss and the seconds the
    /// step waited for communication after backward.
    func trainStep(learningRate: Float) throws -> (loss: Float, exposedSeconds: Double) {
        let parameters = task.parameters
        parameters.zeroGradients()
        var total: Float = 0
        for micro in 0..<config.gradAccum {
            total += task.trainingLoss(iteration: iteration, microStep: micro)
            if let dataParallel, micro == config.gradAccum - 1 {
                dataParallel.beginStep()
                task.backward(lossScale: 1 / Float(config.gradAccum), gradientsReady: { dataParallel.gradientsReady(from: $0) })
            } else {
                task.backward(lossScale: 1 / Float(config.gradAccum), gradientsReady: { _ in })
            }
        }
        let exposed = try dataParallel?.finishStep() ?? 0
        if config.gradClip > 0 { parameters.clipGradients(maxNorm: Float(config.gradClip)) }
        optimizer.step(learningRate: learningRate)
        return (total / Float(config.gradAccum), exposed)
    }

    // MARK: checkpoints

    public func saveCheckpoint() throws {
        try FileManager.default.createDirectory(atPath: config.outDir, withIntermediateDirectories: true)
        var tensors: [(name: String, shape: [Int], values: UnsafeBufferPointer<Float>)] = task.parameters.parameters.map {
            ($0.name, $0.shape, UnsafeBufferPointer($0.value.buffer))
        }
        for (name, buffer) in optimizer.state {
            tensors.append(("optimizer." + name, [buffer.count], UnsafeBufferPointer(buffer.buffer)))
        }
        let metadata = [
            "format": "swift-ddp-checkpoint", "version": "1",
            "iteration": String(iteration), "optimizer_steps": String(optimizer.stepCount),
            "optimizer": config.optimizer.rawValue, "world_size": String(worldSize),
            "architecture": config.architecture, "config": config.jsonString(),
        ]
        try Checkpoint(tensors: tensors, metadata: metadata).write(to: checkpointPath)
    }

    /// Restores parameters, optimizer state and iteration from `path` (batches are a function of the
    /// iteration, so nothing else is needed; any world size can resume a non-ZeRO checkpoint).
    public func resume(from path: String) throws {
        let checkpoint = try LoadedCheckpoint(path: path)
        guard try checkpoint.require("format") == "swift-ddp-checkpoint" else {
            throw CheckpointError(path, "not a swift-ddp checkpoint")
        }
        let architecture = try checkpoint.require("architecture")
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
        for p in task.parameters.parameters { try checkpoint.restore(p.name, shape: p.shape, into: p.value.data) }
        for (name, buffer) in optimizer.state {
            try checkpoint.restore("optimizer." + name, shape: [buffer.count], into: buffer.base)
        }
        optimizer.stepCount = steps
        iteration = savedIteration
        log("resumed from \(path) at iteration \(savedIteration)")
    }
}

/// Peak resident set size of this process (getrusage ru_maxrss, KiB on Linux).
public func peakResidentMiB() -> Double {
    var usage = rusage()
    getrusage(RUSAGE_SELF.rawValue, &usage)
    return Double(usage.ru_maxrss) / 1024
}
