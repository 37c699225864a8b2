import Foundation
import NN
import TestSupport
import Training
import XCTest

/// Mixture of experts and expert parallelism with real processes through the launcher: every expert
/// layout trains as ep 1 does (the same tokens dropped), checkpoints move between expert-parallel
/// sizes, the load-balancing loss evens the load, and a rank killed inside an all-to-all stops the job.
final class ExpertParallelTests: XCTestCase {
    static var buildDirectory: String { URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().path }

    func launch(_ n: Int, _ args: [String]) throws -> (status: Int32, output: String, pid: Int32) {
        try launchTinyGPT(n, args)
    }

    /// The tiny GPT with 4 experts in both blocks, at learning rate 1e-3 (as the tensor-parallel
    /// equivalence: the tiny config's 3e-3 has loss spikes that amplify float noise in any layout).
    let common = ["--set", "n_experts=4", "--set", "max_iters=20", "--set", "log_interval=1", "--set", "eval_interval=1000",
                  "--set", "learning_rate=1e-3", "--set", "min_lr=1e-4", "--set", "verify_replicas=true", "--set", "checkpoint_interval=0"]

    func run(_ name: String, _ n: Int, _ extra: [String]) throws -> (dir: String, output: String) {
        let dir = scratchDirectory("moe-\(name)")
        let result = try launch(n, common + extra + ["--out-dir", dir])
        XCTAssertEqual(result.status, 0, "\(name):\n\(result.output)")
        return (dir, result.output)
    }

    /// Dropped choices summed over the run's routing lines.
    func droppedChoices(_ output: String) -> Int {
        output.split(separator: "\n").filter { $0.contains("moe block") }.reduce(0) { sum, line in
            guard let range = line.range(of: "dropped ") else { return sum }
            return sum + (Int(line[range.upperBound...].prefix { $0.isNumber }) ?? 0)
        }
    }

    /// On 4 ranks, ep 2 and ep 4 equal ep 1 step by step over 20 steps: top-2 with capacity factor 1.0
    /// (about a fifth of the choices dropped: the same ones in every layout, since each rank routes and
    /// drops its own tokens before any exchange), and top-1 dropless in every other block with gradient
    /// accumulation 2 and ZeRO-1. Only summation order differs (an expert's gradient sums the rows of several ranks in
    /// another order; measured 6e-8 relative per step), so 1e-5 is the bound, as for tensor
    /// parallelism; final parameters in the one-rank checkpoint layout within 2e-6. verify_replicas checks
    /// after every step that dense tensors are bitwise equal over the data-parallel group and experts
    /// over their expert-data-parallel group.
    func testExpertParallelMatchesOneExpertGroup() throws {
        // Small buckets: several per step, all sent after backward (its all-to-alls share the
        // data-parallel group's connections).
        let topTwo = ["--set", "moe_top_k=2", "--set", "capacity_factor=1.0", "--set", "bucket_mb=0.01"]
        let reference = try run("ep1-top2", 4, topTwo)
        XCTAssertGreaterThan(droppedChoices(reference.output), 0, "capacity 1.0 should drop choices:\n\(reference.output)")
        for ep in [2, 4] {
            let layout = try run("ep\(ep)-top2", 4, topTwo + ["--set", "expert_parallel=\(ep)"])
            XCTAssertEqual(droppedChoices(layout.output), droppedChoices(reference.output), "ep \(ep) dropped other choices")
            XCTAssertTrue(layout.output.contains("each rank holds \(4 / ep) of 4 experts per mixture"), layout.output)
            // ep 2: the experts' gradients are averaged over pairs, through an arena of their own.
            XCTAssertEqual(layout.output.contains("expert-data-parallel group (2 ranks, through its shared arena)"), ep == 2, layout.output)
            // The launcher's start-up table: rank 3's placement, then its coordinates and groups.
            let row = layout.output.split(separator: "\n").first { $0.hasPrefix("[launcher] placement: 3 |") }.map(String.init) ?? ""
            XCTAssertTrue(row.hasSuffix(ep == 2 ? "| 0 | 3 | 0 | 1 | 3 | 0,1,2,3 | 3 | 2,3" : "| 0 | 3 | 0 | 3 | 3 | 0,1,2,3 | 3 | 0,1,2,3"),
                          "launcher row: \(row)")
            try assertSameTraining(reference.dir, layout.dir, "ep \(ep) top-2 with drops", steps: 20)
        }
        let topOne = ["--set", "moe_top_k=1", "--set", "grad_accum=2", "--set", "moe_every=2", "--set", "zero_stage=1"]
        let accumulated = try run("ep1-top1", 4, topOne)
        XCTAssertEqual(droppedChoices(accumulated.output), 0)
        for ep in [2, 4] {
            let layout = try run("ep\(ep)-top1-zero1", 4, topOne + ["--set", "expert_parallel=\(ep)"])
            try assertSameTraining(accumulated.dir, layout.dir, "ep \(ep) top-1 dropless, grad_accum 2, ZeRO-1", steps: 20)
        }
    }

    /// Tensor parallelism splits a mixture's experts over its group (no all-to-all: every rank routes
    /// the same gathered rows and runs its experts; partial outputs summed as the dense MLP's) and
    /// trains as without it, step by step (top-2, capacity 1.0; bounds as above): tp 2 and tp 2 with
    /// sequence parallelism against one rank, dp 2 x tp 2 with ZeRO-1 against dp 2, and pp 2 x tp 2 with
    /// sequence parallelism against pp 2; verify_replicas holds the router and LayerNorms bitwise equal
    /// over each tensor-parallel group.
    func testTensorParallelSplitsTheExperts() throws {
        let topTwo = ["--set", "moe_top_k=2", "--set", "capacity_factor=1.0"]
        let pipeline = ["--set", "pipeline_parallel=2", "--set", "microbatches=2"]
        for (name, ranks, base, layouts) in [("one", 1, [String](), [(2, ["--set", "tensor_parallel=2"]),
                                                                      (2, ["--set", "tensor_parallel=2", "--set", "sequence_parallel=true"])]),
                                             ("dp2", 2, [], [(4, ["--set", "tensor_parallel=2", "--set", "zero_stage=1"])]),
                                             ("pp2", 2, pipeline, [(4, ["--set", "tensor_parallel=2", "--set", "sequence_parallel=true"])])] {
            let reference = try run("tp-\(name)", ranks, topTwo + base)
            for (n, settings) in layouts {
                let layout = try run("tp-\(name)-\(n)-\(settings.joined())", n, topTwo + base + settings)
                try assertSameTraining(reference.dir, layout.dir, "\(name) with \(settings)", steps: 20)
            }
        }
    }

    /// Expert parallelism on pipeline stages equals ep 1 on the same pipeline step by step (top-2,
    /// capacity 1.0; bounds as above): pp 2 x dp 2 at ep 2 with ZeRO-1 (4 ranks), the interleaved
    /// schedule with two stages per rank at ep 2 (4 layers, 4 ranks: a rank's experts of both stages
    /// first in its buffer), and pp 2 x dp 4 at ep 2 with ZeRO-1 (8 ranks: the experts averaged and
    /// sharded over pairs of each stage) and at ep 4. Evaluation figures are equal too (each rank of an
    /// expert group runs as many evaluation forwards).
    func testExpertParallelOnPipelineStagesMatchesEpOne() throws {
        let pipeline = ["--set", "moe_top_k=2", "--set", "capacity_factor=1.0", "--set", "pipeline_parallel=2", "--set", "microbatches=2",
                        "--set", "eval_interval=10", "--set", "eval_iters=3"]
        func evals(_ output: String) -> [String] { output.split(separator: "\n").filter { $0.contains("] eval ") }.map(String.init) }
        let interleaved = ["--set", "n_layer=4", "--set", "pipeline_schedule=interleaved", "--set", "virtual_stages=2"]
        for (name, ranks, extra, layouts) in [("pp2", 4, [String](), [["--set", "expert_parallel=2", "--set", "zero_stage=1"]]),
                                              ("interleaved", 4, interleaved, [["--set", "expert_parallel=2"]]),
                                              ("pp2-dp4", 8, [], [["--set", "expert_parallel=2", "--set", "zero_stage=1"], ["--set", "expert_parallel=4"]])] {
            let reference = try run("\(name)-ep1", ranks, pipeline + extra)
            XCTAssertEqual(evals(reference.output).count, 3, reference.output)
            for settings in layouts {
                let layout = try run("\(name)-\(settings.joined())", ranks, pipeline + extra + settings)
                XCTAssertTrue(layout.output.contains("its stages' experts"), layout.output)
                XCTAssertEqual(evals(layout.output), evals(reference.output), "\(name) \(settings)")
                try assertSameTraining(reference.dir, layout.dir, "\(name) \(settings)", steps: 20)
            }
        }
    }

    /// ZeRO-2 and ZeRO-3 with a mixture, on 4 ranks, equal ep 1 without ZeRO step by step (top-2, capacity
    /// 1.0, as above; bounds as above): ZeRO-2 at ep 2 and ZeRO-3 at ep 2 and ep 1. Under ep 2 the
    /// experts are sharded over their expert-data-parallel pairs, the rest over all four ranks, and each
    /// rank's held bytes equal the ZeRO paper's count summed over both; ZeRO-3 gathers each block's
    /// experts with it (not ahead under ep 2: the all-to-alls share the connections). A ZeRO-3 ep 2 run
    /// resumes the reference's checkpoint to the same losses as the reference continuing.
    func testZeROShardsExpertsOverTheirGroup() throws {
        let topTwo = ["--set", "moe_top_k=2", "--set", "capacity_factor=1.0", "--set", "bucket_mb=0.01"]
        let reference = try run("zero-reference", 4, topTwo)
        for (stage, ep) in [(2, 2), (3, 2), (3, 1)] {
            let layout = try run("zero\(stage)-ep\(ep)", 4, topTwo + ["--set", "zero_stage=\(stage)", "--set", "expert_parallel=\(ep)"])
            try assertSameTraining(reference.dir, layout.dir, "ZeRO-\(stage) ep \(ep)", steps: 20)
            let held = layout.output.split(separator: "\n").filter { $0.contains("] memory: rank ") }
            XCTAssertEqual(held.count, 4, layout.output)
            // Buckets of uneven length give some ranks a float more of a piece, others one less: each
            // rank within 0.1 % of the count, their sum exactly 4 counts (the pieces partition).
            var sum = 0.0, count = 0.0
            for line in held {
                // The tiny GPT with 4 experts in both blocks: 77,248 parameters, 65,536 of them experts.
                let counts = ep == 2 ? /= (\d+) bytes; ZeRO paper, stage (\d): .* with Ψ = 11712 \(dense, N = 4\) \+ 32768 \(experts, N = 2\): ([\d.]+) bytes/
                                     : /= (\d+) bytes; ZeRO paper, stage (\d): .* with Ψ = 77248, N = 4: ([\d.]+) bytes/
                guard let m = line.firstMatch(of: counts) else { XCTFail("ZeRO-\(stage) ep \(ep): no memory figures in \(line)"); continue }
                XCTAssertEqual(Int(m.2), stage)
                XCTAssertEqual(Double(m.1)!, Double(m.3)!, accuracy: 1e-3 * Double(m.3)!, "ZeRO-\(stage) ep \(ep): \(line)")
                sum += Double(m.1)!; count = Double(m.3)!
            }
            XCTAssertEqual(sum, 4 * count, "ZeRO-\(stage) ep \(ep): the ranks' held bytes do not add up to the count")
            if stage == 3 {
                XCTAssertTrue(layout.output.contains("4 units, each gathered before use" + (ep == 2 ? " (not ahead" : " with the next one prefetched")), layout.output)
                XCTAssertTrue(layout.output.contains("6 buckets (one per unit, a mixture's experts apart)"), layout.output)
            }
        }
        var continued: [[Double]] = []
        for (stage, ep) in [(0, 1), (3, 2)] {
            let dir = scratchDirectory("moe-zero-resume-\(stage)-\(ep)")
            try FileManager.default.copyItem(atPath: reference.dir + "/ckpt.safetensors", toPath: dir + "/ckpt.safetensors")
            let result = try launch(4, common + topTwo + ["--set", "zero_stage=\(stage)", "--set", "expert_parallel=\(ep)", "--set", "max_iters=25",
                                                          "--out-dir", dir, "--resume"])
            XCTAssertEqual(result.status, 0, result.output)
            continued.append(try metricsLosses(dir))
        }
        XCTAssertEqual(continued[0].count, 5)
        let worst = zip(continued[0], continued[1]).map { abs($0 - $1) / $0 }.max() ?? 1
        XCTAssertLessThan(worst, 1e-5, "ZeRO-3 ep 2 continues the checkpoint differently: \(worst) relative")
    }

    /// Sharded checkpoints under expert parallelism (4 ranks, ep 2, 6 steps): written without ZeRO and at
    /// ZeRO-3, each consolidates to exactly the single file the same layout writes (every tensor bitwise:
    /// each rank's experts go where they lie in the one-rank layout, split over the ranks holding the same
    /// ones); loaded by ep 1 on 2 ranks and by ep 4 at ZeRO-2 and saved again at once, the same bytes.
    func testShardedCheckpointUnderExpertParallelism() throws {
        func tensors(_ path: String) throws -> [String: [UInt32]] {
            try LoadedCheckpoint(path: path).tensors.mapValues { $0.values.map(\.bitPattern) }
        }
        let settings = ["--set", "moe_top_k=2", "--set", "max_iters=6", "--set", "expert_parallel=2"]
        var sharded = ""
        for stage in [0, 3] {
            let one = try run("sharded-ep2-zero\(stage)", 4, settings + ["--set", "zero_stage=\(stage)", "--set", "checkpoint_format=sharded"]).dir
            let single = try run("single-ep2-zero\(stage)", 4, settings + ["--set", "zero_stage=\(stage)"]).dir
            let consolidated = one + "/consolidated.safetensors"
            let tool = try runToEnd(Self.buildDirectory + "/ddp-train", ["consolidate", one + "/ckpt.sharded", consolidated])
            XCTAssertEqual(tool.status, 0, tool.output)
            let expected = try tensors(single + "/ckpt.safetensors")
            XCTAssertTrue(expected.keys.contains("optimizer.adamw.m"), "\(expected.keys.sorted())")
            XCTAssertEqual(try tensors(consolidated), expected, "ZeRO-\(stage): the consolidated sharded checkpoint differs from the single file")
            sharded = one
        }
        let gathered = try tensors(sharded + "/consolidated.safetensors")
        for (n, ep, stage) in [(2, 1, 0), (4, 4, 2)] {
            let dir = scratchDirectory("moe-sharded-resume-\(n)-\(ep)")
            try FileManager.default.copyItem(atPath: sharded + "/ckpt.sharded", toPath: dir + "/ckpt.sharded")
            let result = try launch(n, common + ["--set", "moe_top_k=2", "--set", "max_iters=6", "--set", "expert_parallel=\(ep)",
                                                 "--set", "zero_stage=\(stage)", "--set", "checkpoint_format=sharded", "--out-dir", dir, "--resume"])
            XCTAssertEqual(result.status, 0, result.output)
            XCTAssertEqual(try tensors(dir + "/ckpt.sharded"), gathered, "resaved at ep \(ep), N \(n), ZeRO-\(stage): not the same bytes")
        }
    }

    /// A checkpoint written at ep 2 holds every expert in the one-rank shapes; it resumes at ep 1 (2
    /// ranks) and at ep 4 (4 ranks) to the same losses as ep 2 itself continuing, and sampling reads it.
    func testCheckpointMovesBetweenExpertParallelSizes() throws {
        let settings = ["--set", "moe_top_k=2", "--set", "moe_every=2"]
        let source = try run("ckpt-ep2", 2, settings + ["--set", "expert_parallel=2", "--set", "max_iters=10"]).dir
        let tensors = try LoadedCheckpoint(path: source + "/ckpt.safetensors").tensors
        XCTAssertEqual(tensors["transformer.h.1.mlp.experts.c_fc.weight"]?.shape, [4, 128, 32])
        XCTAssertEqual(tensors["transformer.h.1.mlp.experts.c_proj.weight"]?.shape, [4, 32, 128])
        var continued: [[Double]] = []
        for (n, ep) in [(2, 2), (2, 1), (4, 4)] {
            let dir = scratchDirectory("moe-resume-\(n)-\(ep)")
            try FileManager.default.copyItem(atPath: source + "/ckpt.safetensors", toPath: dir + "/ckpt.safetensors")
            let result = try launch(n, common + settings + ["--set", "expert_parallel=\(ep)", "--set", "max_iters=15", "--out-dir", dir, "--resume"])
            XCTAssertEqual(result.status, 0, result.output)
            XCTAssertTrue(result.output.contains("resumed from \(dir)/ckpt.safetensors at iteration 10"), result.output)
            continued.append(try metricsLosses(dir))
        }
        // Losses are means over the data-parallel ranks: ep 2 and ep 1 on 2 ranks see the same batches.
        XCTAssertEqual(continued[0].count, 5)
        let worst = zip(continued[0], continued[1]).map { abs($0 - $1) / $0 }.max() ?? 1
        XCTAssertLessThan(worst, 1e-5, "ep 1 continues an ep 2 checkpoint differently from ep 2: \(worst) relative")
        XCTAssertEqual(continued[2].count, 5, "ep 4 on 4 ranks resumed and trained")
        let sample = try runToEnd(Self.buildDirectory + "/ddp-train", ["sample", source + "/ckpt.safetensors", "--tokens", "20"])
        XCTAssertEqual(sample.status, 0, sample.output)
    }

    /// Evaluation under expert parallelism: every forward exchanges tokens, so ranks short of an eval
    /// batch run a dropped forward (one eval batch over 2 ranks here); the figures equal ep 1's.
    func testEvaluationWithUnevenBatchesMatchesEpOne() throws {
        let settings = ["--set", "eval_iters=1", "--set", "eval_interval=5", "--set", "max_iters=5"]
        let one = try run("eval-ep1", 2, settings).output, two = try run("eval-ep2", 2, settings + ["--set", "expert_parallel=2"]).output
        func evals(_ output: String) -> [String] { output.split(separator: "\n").filter { $0.contains("] eval ") }.map { String($0) } }
        XCTAssertEqual(evals(one).count, 2, one)
        XCTAssertEqual(evals(one), evals(two))
    }

    /// Switch's load-balancing loss evens the load: one rank, 200 steps, top-1, 4 experts; the busiest
    /// expert's share over the last 50 steps against the mean, with α = 0.01 and without. Measured:
    /// without, max/mean 3.8 and 3.5 in the two blocks (the router collapses onto one or two experts);
    /// with, 1.7 and 1.3. The test asks for at least a quarter less in each block.
    func testAuxiliaryLossEvensTheLoad() throws {
        func maxOverMean(_ coefficient: String) throws -> [Double] {
            let dir = scratchDirectory("moe-aux-\(coefficient)")
            let result = try runToEnd(Self.buildDirectory + "/ddp-train", [
                configsDirectory + "/tiny-gpt.json", "--data-dir", dataDirectory, "--out-dir", dir, "--set", "n_experts=4",
                "--set", "max_iters=200", "--set", "log_interval=50", "--set", "eval_interval=1000", "--set", "moe_aux_loss_coef=\(coefficient)"])
            XCTAssertEqual(result.status, 0, result.output)
            let lines = result.output.split(separator: "\n").filter { $0.contains("moe block") }.suffix(2)
            return lines.compactMap { line in
                line.range(of: "(max/mean ").flatMap { Double(line[$0.upperBound...].prefix { $0 != ")" }) }
            }
        }
        let without = try maxOverMean("0"), with = try maxOverMean("0.01")
        XCTAssertEqual(without.count, 2); XCTAssertEqual(with.count, 2)
        print("max/mean tokens per expert over steps 151-200, blocks 0 and 1: without the auxiliary loss \(without), with α = 0.01 \(with)")
        for (a, b) in zip(with, without) { XCTAssertLessThan(a, 0.75 * b, "with \(with), without \(without)") }
    }

    /// kill -9 of a rank while ep 4 trains (10 all-to-alls per step on the expert group, plus the
    /// data-parallel averages): every rank stops, the killed one is named, nothing is left running.
    func testKilledRankInsideAnAllToAllStopsTheJob() throws {
        try assertKilledRankStopsTheJob(launcher: Self.buildDirectory + "/ddp-launch", ranks: 4, victim: 2,
                                        settings: ["--set", "n_experts=4", "--set", "expert_parallel=4"], outDir: scratchDirectory("moe-kill"))
    }

    /// The same for the other mixture layouts: kill -9 of a rank while pp 2 x dp 2 at ep 2 trains
    /// (all-to-alls inside the stage's passes, hand-offs between stages), while dp 2 x tp 2 trains with
    /// ZeRO-1 (the tensor-parallel group splitting the experts), and while ZeRO-3 at ep 2 gathers
    /// without prefetch: every rank stops, the killed one is named, nothing is left running.
    func testKilledRankInsideTheNewMixtureLayoutsStopsTheJob() throws {
        for (name, settings) in [("pp-ep", ["--set", "pipeline_parallel=2", "--set", "microbatches=2", "--set", "expert_parallel=2"]),
                                 ("tp", ["--set", "tensor_parallel=2", "--set", "zero_stage=1"]),
                                 ("zero3-ep", ["--set", "zero_stage=3", "--set", "expert_parallel=2"])] {
            try assertKilledRankStopsTheJob(launcher: Self.buildDirectory + "/ddp-launch", ranks: 4, victim: 3,
                                            settings: ["--set", "n_experts=4"] + settings, outDir: scratchDirectory("moe-kill-\(name)"))
        }
    }

    /// What the mixture does not combine with yet is refused at the start, naming the key.
    func testUnsupportedCombinationsAreRefused() throws {
        for (settings, key) in [(["n_experts=4", "expert_parallel=3"], "expert_parallel"),
                                (["n_experts=4", "tensor_parallel=2", "expert_parallel=2"], "expert_parallel"),
                                (["n_experts=3", "tensor_parallel=2"], "tensor_parallel"),
                                (["n_experts=4", "pipeline_parallel=2", "pipeline_schedule=zb-h1"], "pipeline_schedule"),
                                (["n_experts=4", "moe_top_k=3"], "moe_top_k"),
                                (["n_experts=1"], "n_experts"),
                                (["expert_parallel=2"], "expert_parallel"),
                                (["n_experts=4", "moe_every=5"], "moe_every"),
                                (["n_experts=4", "capacity_factor=-1"], "capacity_factor")] {
            XCTAssertThrowsError(try tinyGPTConfig(settings, outDir: scratchDirectory("moe-refused")), "\(settings)") { error in
                XCTAssertEqual((error as? ConfigError)?.key, key, "\(settings): \(error)")
            }
        }
        // A world the expert group cannot divide: 3 ranks, ep 2.
        let bad = try launch(3, ["--set", "n_experts=4", "--set", "expert_parallel=2", "--set", "max_iters=1", "--out-dir", scratchDirectory("moe-3")])
        XCTAssertNotEqual(bad.status, 0)
        XCTAssertTrue(bad.output.contains("expert_parallel") && bad.output.contains("does not divide the data-parallel size 3"), bad.output)
    }
}
