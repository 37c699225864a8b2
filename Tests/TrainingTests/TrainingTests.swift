import Datasets
import Foundation
import NN
import Tensors
import TestSupport
import Training
import XCTest

final class TrainingTests: XCTestCase {
    func run(_ config: TrainConfig, resumeFrom: String? = nil) throws -> (Trainer, TrainSummary) {
        let trainer = Trainer(config: config, task: try makeTask(config), log: { _ in })
        if let resumeFrom { try trainer.resume(from: resumeFrom) }
        return (trainer, try trainer.run())
    }

    func testShortRealRunLowersTheLoss() throws {
        let (_, summary) = try run(try tinyGPTConfig(["max_iters=60"], outDir: scratchDirectory("short")))
        let first = summary.evaluations.first!.figures.first { $0.name == "val loss" }!.value
        let last = summary.evaluations.last!.figures.first { $0.name == "val loss" }!.value
        XCTAssertGreaterThan(first, 4.0, "untrained loss should be near ln(65) = 4.17")
        XCTAssertLessThan(last, first - 0.6, "val loss \(first) -> \(last) after 60 steps")
    }

    /// A learning rate of 1e30 drives the weights to NaN: training stops with an error naming the
    /// iteration, and the good checkpoint already in out_dir is left as it was. With on_nonfinite: skip
    /// such steps are skipped and the parameters stay finite.
    func testNonFiniteStepsStopOrAreSkippedAndNeverReachACheckpoint() throws {
        let dir = scratchDirectory("nonfinite")
        _ = try run(try tinyGPTConfig(["max_iters=2"], outDir: dir))
        let good = try Data(contentsOf: URL(fileURLWithPath: dir + "/ckpt.safetensors"))
        let wild = ["max_iters=30", "learning_rate=1e30", "min_lr=1e30", "warmup_iters=0", "grad_clip=0"]
        XCTAssertThrowsError(try run(try tinyGPTConfig(wild, outDir: dir))) { error in
            XCTAssertTrue("\(error)".contains("the gradient norm is") || "\(error)".contains("NaN or infinite"), "\(error)")
        }
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: dir + "/ckpt.safetensors")), good, "a good checkpoint was overwritten")
        // A NaN loss from the first step: skip keeps the parameters finite and counts the steps.
        let (trainer, summary) = try run(try tinyGPTConfig(["max_iters=4", "on_nonfinite=\"skip\"", "learning_rate=1e30", "min_lr=1e30",
                                                            "warmup_iters=0", "grad_clip=0", "weight_decay=0"],
                                                           outDir: scratchDirectory("nonfinite-skip")))
        XCTAssertEqual(summary.iterations, 4)
        XCTAssertGreaterThan(trainer.skippedSteps, 0, "no step was skipped")
        XCTAssertTrue(allFinite(trainer.task.parameters.values.base, count: trainer.task.parameters.count))
        XCTAssertNoThrow(try LoadedCheckpoint(path: trainer.checkpointPath))
    }

    /// An out_dir that cannot be written is found before training, named, as a config error.
    func testUnwritableOutDirIsFoundAtTheStart() throws {
        let blocker = scratchDirectory("outdir") + "/file"
        _ = FileManager.default.createFile(atPath: blocker, contents: Data())
        var log: [String] = []
        let config = try tinyGPTConfig(["max_iters=1000000"], outDir: blocker + "/runs")
        let trainer = Trainer(config: config, task: try makeTask(config), log: { log.append($0) })
        XCTAssertThrowsError(try trainer.run()) { error in
            XCTAssertEqual("\(error)", "config key 'out_dir': cannot create '\(blocker)/runs': '\(blocker)' is a file, not a directory")
        }
        XCTAssertFalse(log.contains { $0.hasPrefix("iter ") }, "trained before checking out_dir")
    }

    /// Ranks draw their own batches (else N ranks would average N copies of one batch): the same
    /// parameters give different losses on ranks 0 and 1 at one iteration, and the same loss when a
    /// rank draws again.
    func testRanksDrawDistinctGPTBatches() throws {
        let config = try tinyGPTConfig([], outDir: scratchDirectory("rank-batches"))
        let tasks = try (0..<2).map { rank -> TrainingTask in
            let task = try makeTask(config, rank: rank, worldSize: 2)
            task.initialize(seed: config.seed)
            return task
        }
        let zero = try tasks[0].trainingLoss(iteration: 3, microStep: 0), one = try tasks[1].trainingLoss(iteration: 3, microStep: 0)
        XCTAssertNotEqual(zero, one, "ranks 0 and 1 drew the same batch")
        XCTAssertEqual(try tasks[0].trainingLoss(iteration: 3, microStep: 0), zero, "a rank's batch is a function of the iteration")
        XCTAssertNotEqual(try tasks[0].trainingLoss(iteration: 3, microStep: 1), zero, "micro-steps draw different batches")
    }

    /// After a restart, rank 0 resumes only from a checkpoint this job wrote; with none yet, or one
    /// from another job, it starts over, and says which.
    func testRestartResumesOnlyFromThisJobsCheckpoint() throws {
        let dir = scratchDirectory("restart-branches")
        func trainer(_ job: String, _ log: @escaping (String) -> Void) throws -> Trainer {
            let config = try tinyGPTConfig(["max_iters=4"], outDir: dir)
            let t = Trainer(config: config, task: try makeTask(config), log: log)
            t.jobID = job
            return t
        }
        var lines: [String] = []
        let fresh = try trainer("job-a") { lines.append($0) }
        try fresh.resumeAfterRestart(restartCount: 1)
        XCTAssertEqual(fresh.iteration, 0)
        XCTAssertTrue(lines.contains { $0.contains("no checkpoint at \(dir)/ckpt.safetensors yet; starting from iteration 0") }, "\(lines)")
        _ = try fresh.run()
        lines.removeAll()
        let other = try trainer("job-b") { lines.append($0) }
        try other.resumeAfterRestart(restartCount: 1)
        XCTAssertEqual(other.iteration, 0)
        XCTAssertTrue(lines.contains { $0.contains("belongs to another job (job-a)") }, "\(lines)")
        lines.removeAll()
        let same = try trainer("job-a") { lines.append($0) }
        try same.resumeAfterRestart(restartCount: 1)
        XCTAssertEqual(same.iteration, 4)
        XCTAssertTrue(lines.contains { $0.contains("resuming from the last checkpoint") }, "\(lines)")
    }

    /// A second run on the same out_dir is refused while the first holds it; the best-validation
    /// checkpoint is kept beside the last one and every save is logged.
    func testOutDirIsLockedAndTheBestCheckpointIsKept() throws {
        let dir = scratchDirectory("outdir-lock")
        let lock = open(dir + "/.lock", O_RDWR | O_CREAT, 0o644)
        XCTAssertEqual(flock(lock, LOCK_EX | LOCK_NB), 0)
        _ = "4242\n".withCString { write(lock, $0, 5) }
        XCTAssertThrowsError(try run(try tinyGPTConfig(["max_iters=2"], outDir: dir))) { error in
            XCTAssertTrue("\(error)".contains("is in use by another run (pid 4242)"), "\(error)")
        }
        close(lock)
        var lines: [String] = []
        let config = try tinyGPTConfig(["max_iters=30", "eval_interval=10", "eval_iters=2"], outDir: dir)
        let trainer = Trainer(config: config, task: try makeTask(config), log: { lines.append($0) })
        _ = try trainer.run()
        let best = try LoadedCheckpoint(path: trainer.bestCheckpointPath)
        let vals = lines.compactMap { line -> (Int, Double)? in
            guard line.hasPrefix("eval "), let it = Int(line.dropFirst(5).prefix { $0.isNumber }),
                  let r = line.range(of: "val loss ") else { return nil }
            return (it, Double(line[r.upperBound...].prefix { $0 != "," }) ?? .nan)
        }
        let bestEval = vals.filter { $0.0 > 0 }.min { $0.1 < $1.1 }!
        XCTAssertEqual(best.metadata["iteration"], String(bestEval.0), "\(vals)")
        XCTAssertTrue(lines.contains { $0.hasPrefix("checkpoint: wrote \(trainer.bestCheckpointPath) at iteration \(bestEval.0)") }, "\(lines)")
        XCTAssertTrue(lines.contains { $0.hasPrefix("checkpoint: wrote \(trainer.checkpointPath) at iteration 30 (end of training)") }, "\(lines)")
    }

    /// A run records itself: metrics.jsonl (a line per logged step and per evaluation, with the logged
    /// figures), loss-curve.svg, and log lines with MFU, elapsed time and ETA.
    func testRunWritesMetricsAndALossCurve() throws {
        let dir = scratchDirectory("metrics")
        var lines: [String] = []
        let config = try tinyGPTConfig(["max_iters=12", "log_interval=4", "eval_interval=6", "eval_iters=2"], outDir: dir)
        let trainer = Trainer(config: config, task: try makeTask(config), log: { lines.append($0) })
        let summary = try trainer.run()
        let records = try String(contentsOfFile: dir + "/metrics.jsonl", encoding: .utf8).split(separator: "\n")
            .map { try JSONSerialization.jsonObject(with: Data($0.utf8)) as! [String: Any] }
        let steps = records.filter { $0["loss"] != nil }, evals = records.filter { $0["eval"] != nil }
        XCTAssertEqual(steps.map { $0["iteration"] as? Int }, [4, 8, 12])
        XCTAssertEqual(evals.map { $0["iteration"] as? Int }, [0, 6, 12])
        for step in steps {
            for key in ["elapsed_s", "lr", "tokens_per_s", "ms_per_iter", "mfu"] { XCTAssertNotNil(step[key], "\(key) missing in \(step)") }
            XCTAssertEqual(step["loss"] as? Double ?? .nan, Double(summary.losses[(step["iteration"] as! Int) - 1]), accuracy: 1e-6)
            let mfu = step["mfu"] as? Double ?? -1
            XCTAssertTrue(mfu > 0 && mfu < 1, "MFU \(mfu) outside (0, 1)")
        }
        XCTAssertNotNil((evals.last?["eval"] as? [String: Any])?["val loss"])
        let svg = try String(contentsOfFile: dir + "/loss-curve.svg", encoding: .utf8)
        XCTAssertTrue(svg.contains("data-series=\"training loss (logged steps)\"") && svg.contains("data-series=\"val loss\""), svg)
        XCTAssertTrue(lines.contains { $0.hasPrefix("iter 12/12") && $0.contains("MFU ") && $0.contains("elapsed ") && $0.contains("ETA ") }, "\(lines)")
    }

    func testSameSeedGivesTheSameLossesAndDifferentSeedDoesNot() throws {
        let a = try run(try tinyGPTConfig(["max_iters=15"], outDir: scratchDirectory("seed-a"))).1.losses
        let b = try run(try tinyGPTConfig(["max_iters=15"], outDir: scratchDirectory("seed-b"))).1.losses
        let c = try run(try tinyGPTConfig(["max_iters=15", "seed=8"], outDir: scratchDirectory("seed-c"))).1.losses
        XCTAssertEqual(a, b)
        XCTAssertNotEqual(a, c)
    }

    func testResumeEqualsUninterruptedRunBitwise() throws {
        for model in ["gpt", "mlp"] {
            let full = scratchDirectory("full-\(model)"), split = scratchDirectory("split-\(model)")
            func config(_ iters: Int, _ dir: String) throws -> TrainConfig {
                if model == "gpt" { return try tinyGPTConfig(["max_iters=\(iters)", "eval_interval=7"], outDir: dir) }
                return try TrainConfig.load(path: configsDirectory + "/mnist-mlp.json",
                                            overrides: ["data_dir=\"\(dataDirectory)\"", "out_dir=\"\(dir)\"",
                                                        "max_iters=\(iters)", "epochs=null", "eval_interval=1000", "log_interval=1000"])
            }
            let (uninterrupted, fullSummary) = try run(try config(24, full))
            _ = try run(try config(10, split))
            let (resumed, resumedSummary) = try run(try config(24, split), resumeFrom: split + "/ckpt.safetensors")
            XCTAssertEqual(Array(resumed.task.parameters.values.buffer), Array(uninterrupted.task.parameters.values.buffer),
                           "\(model): parameters after resume differ from the uninterrupted run")
            XCTAssertEqual(resumedSummary.losses, Array(fullSummary.losses[10...]), "\(model): losses after resume differ")
        }
    }

    func testOverfitsOneSmallBatch() throws {
        let gpt = GPT(GPTConfiguration(vocabularySize: 20, blockSize: 16, layers: 2, heads: 2, embedding: 32))
        gpt.initialize(seed: 1)
        var rng = SeededRandom(seed: 2)
        let tokens = (0..<32).map { _ in Int32(rng.nextInt(below: 20)) }, targets = (0..<32).map { _ in Int32(rng.nextInt(below: 20)) }
        let batch = TokenBatch(tokens: tokens, targets: targets, batchSize: 2, time: 16)
        let optimizer = AdamW(gpt.parameters, .init(beta1: 0.9, beta2: 0.99, weightDecay: 0))
        var loss: Float = 0
        for _ in 0..<150 {
            gpt.parameters.zeroGradients()
            loss = try gpt.forward(batch)
            try gpt.backward(lossScale: 1)
            optimizer.step(learningRate: 3e-3)
        }
        XCTAssertLessThan(loss, 0.05, "GPT did not memorize one batch of random targets")

        let mlp = MLP(inputs: 10, hidden: 32, classes: 5, activation: .gelu)
        mlp.initialize(seed: 3)
        let features = (0..<80).map { _ in rng.nextNormal() }, labels = (0..<8).map { _ in Int32(rng.nextInt(below: 5)) }
        let sgd = SGD(mlp.parameters, momentum: 0.9)
        for _ in 0..<300 {
            mlp.parameters.zeroGradients()
            loss = try mlp.forward(ClassificationBatch(features: features, labels: labels))
            try mlp.backward(lossScale: 1)
            sgd.step(learningRate: 0.05)
        }
        XCTAssertLessThan(loss, 0.05, "MLP did not memorize one batch")
    }

    func testGradientAccumulationMatchesOneLargeBatchForTheMLP() throws {
        // K micro-batches of B/K with loss scaled by 1/K give the gradient of one batch of B.
        let mlp = MLP(inputs: 6, hidden: 8, classes: 3, activation: .relu)
        mlp.initialize(seed: 5)
        var rng = SeededRandom(seed: 6)
        let features = (0..<48).map { _ in rng.nextNormal() }, labels = (0..<8).map { _ in Int32(rng.nextInt(below: 3)) }
        mlp.parameters.zeroGradients()
        _ = try mlp.forward(ClassificationBatch(features: features, labels: labels))
        try mlp.backward(lossScale: 1)
        let whole = Array(mlp.parameters.gradients.buffer)
        mlp.parameters.zeroGradients()
        for half in 0..<2 {
            _ = try mlp.forward(ClassificationBatch(features: Array(features[(half * 24)..<(half * 24 + 24)]),
                                                labels: Array(labels[(half * 4)..<(half * 4 + 4)])))
            try mlp.backward(lossScale: 0.5)
        }
        for (a, b) in zip(whole, Array(mlp.parameters.gradients.buffer)) { XCTAssertEqual(a, b, accuracy: 1e-6) }
    }

    func testGenerationIsSeededAndTopOneIsGreedy() throws {
        let gpt = GPT(GPTConfiguration(vocabularySize: 7, blockSize: 4, layers: 1, heads: 1, embedding: 8))
        gpt.initialize(seed: 1)
        var r1 = SeededRandom(seed: 5), r2 = SeededRandom(seed: 5)
        let a = try gpt.generate(prompt: [1, 2], count: 10, temperature: 1, topK: nil, using: &r1)
        let b = try gpt.generate(prompt: [1, 2], count: 10, temperature: 1, topK: nil, using: &r2)
        XCTAssertEqual(a, b)
        XCTAssertEqual(a.count, 12)
        var r3 = SeededRandom(seed: 9)
        let greedy = try gpt.generate(prompt: [3], count: 5, temperature: 1, topK: 1, using: &r3)
        var context: [Int32] = [3]
        for _ in 0..<5 {
            let window = Array(context.suffix(4))
            let logits = try gpt.logits(tokens: window, batch: 1, time: window.count)
            let last = Array(logits.toArray()[((window.count - 1) * 7)...])
            context.append(Int32(last.indices.max { last[$0] < last[$1] }!))
        }
        XCTAssertEqual(greedy, context)
    }
}
