import Foundation
import NN
import TestSupport
import Training
import XCTest

/// ZeRO stages 2 and 3 with real processes: the same training as one rank (MLP) and as plain data
/// parallelism (GPT), the memory a rank keeps equal to the ZeRO paper's count with the pages of the other
/// ranks' pieces measured back in the kernel, and a rank killed mid-step named, with a restart that ends
/// bitwise where an undisturbed run does.
final class ZeROTests: XCTestCase {
    static var buildDirectory: String { URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().path }

    func launch(_ n: Int, _ config: String, _ args: [String]) throws -> (status: Int32, output: String, pid: Int32) {
        try runToEnd(Self.buildDirectory + "/ddp-launch", ["--nproc-per-node", String(n), "--timeout", "30", "--",
                                                            configsDirectory + "/" + config, "--data-dir", dataDirectory] + args)
    }

    func parameters(_ dir: String) throws -> [String: [Float]] {
        try LoadedCheckpoint(path: dir + "/ckpt.safetensors").tensors.filter { !$0.key.hasPrefix("optimizer.") }.mapValues(\.values)
    }

    /// Stages 2 and 3 move where gradients and parameters live, not what is computed (stage 3 gathers
    /// exact float32 copies; verify_replicas gathers the whole model after every step and compares it
    /// bitwise across ranks): the same bound as ZeRO-1 and plain DDP
    /// against one rank with the whole batch (2e-6 after 6 momentum-SGD steps; DataParallelTests gives
    /// the reasoning), at N = 2, 3 (uneven pieces), 4 and accumulation 1 and 2, with 8 buckets so pieces
    /// are released bucket by bucket while backward still runs.
    func testStagesTwoAndThreeMLPMatchOneRank() throws {
        let common = ["--set", "epochs=null", "--set", "max_iters=6", "--set", "eval_interval=1000", "--set", "log_interval=1000",
                      "--set", "verify_replicas=true", "--set", "bucket_mb=0.1"]
        let reference = scratchDirectory("zero2-reference")
        XCTAssertEqual(try launch(1, "mnist-mlp.json", common + ["--set", "batch_size=48", "--out-dir", reference]).status, 0)
        let expected = try parameters(reference)
        for stage in [2, 3] {
            for n in [2, 3, 4] {
                for accumulation in [1, 2] {
                    let dir = scratchDirectory("zero\(stage)-\(n)-\(accumulation)")
                    let run = try launch(n, "mnist-mlp.json", common + ["--set", "batch_size=\(48 / n / accumulation)", "--set", "grad_accum=\(accumulation)",
                                                                       "--set", "zero_stage=\(stage)", "--out-dir", dir])
                    XCTAssertEqual(run.status, 0, "stage \(stage) n=\(n) accum=\(accumulation):\n\(run.output)")
                    XCTAssertTrue(run.output.contains("ZeRO-\(stage)"), run.output)
                    let got = try parameters(dir)
                    let worst = expected.reduce(0.0) { w, e in zip(e.value, got[e.key]!).reduce(w) { max($0, Double(abs($1.0 - $1.1))) } }
                    XCTAssertLessThan(worst, 2e-6, "ZeRO-\(stage) n=\(n) accum=\(accumulation): max parameter difference \(worst)")
                }
            }
        }
    }

    /// The tiny GPT (AdamW, clipping, the tied embedding) over 20 steps. Stage 2 sends and sums exactly
    /// what stage 1 does (the same reduce-scatter per bucket), so the two end bitwise equal, optimizer
    /// state included. Against stage 0 (which DataParallelTests ties to one rank) only the summation
    /// order differs: losses within 1e-5 relative, and parameters within 2e-5, wider than the MLP's 2e-6
    /// because Adam divides by √v: where a gradient element nearly cancels, reassociation is a larger
    /// share of it and moves its update by up to that share of lr (3e-3); 20 steps measured ≤ 7e-6. A
    /// wrong piece moves parameters by ~lr.
    func testStageTwoGPTMatchesStageOneBitwiseAndPlainDataParallel() throws {
        let common = ["--set", "max_iters=20", "--set", "log_interval=1", "--set", "eval_interval=100", "--set", "checkpoint_interval=0",
                      "--set", "batch_size=2", "--set", "bucket_mb=0.01", "--set", "verify_replicas=true"]
        for n in [2, 3, 4] {
            for accumulation in [1, 2] {
                var dirs: [Int: String] = [:]
                for stage in [0, 1, 2] {
                    let dir = scratchDirectory("zero2-gpt-\(n)-\(accumulation)-\(stage)")
                    let run = try launch(n, "tiny-gpt.json", common + ["--set", "grad_accum=\(accumulation)", "--set", "zero_stage=\(stage)", "--out-dir", dir])
                    XCTAssertEqual(run.status, 0, "n=\(n) accum=\(accumulation) stage \(stage):\n\(run.output)")
                    dirs[stage] = dir
                }
                let one = try LoadedCheckpoint(path: dirs[1]! + "/ckpt.safetensors").tensors, two = try LoadedCheckpoint(path: dirs[2]! + "/ckpt.safetensors").tensors
                XCTAssertEqual(Set(one.keys), Set(two.keys))
                for (key, tensor) in one { XCTAssertEqual(tensor.values, two[key]?.values, "n=\(n) accum=\(accumulation): \(key) differs between stage 1 and 2") }
                try assertSameTraining(dirs[0]!, dirs[2]!, "GPT ZeRO-2 n=\(n) accum=\(accumulation)", steps: 20, parameterBound: 2e-5)
            }
        }
    }

    /// Stage 3 on the tiny GPT (units: embeddings, 2 blocks, final LayerNorm; the tied embedding/head in
    /// the root unit) over 20 steps against stage 0, with the bound argued above, at N = 2, 3, 4 and
    /// accumulation 1 and 2, every rank's gathered model compared bitwise after every step; keeping the
    /// gathered units from forward to backward (reshard_after_forward false) computes the same floats, so
    /// it ends bitwise equal to resharding.
    func testStageThreeGPTMatchesPlainDataParallel() throws {
        let common = ["--set", "max_iters=20", "--set", "log_interval=1", "--set", "eval_interval=10", "--set", "checkpoint_interval=0",
                      "--set", "batch_size=2", "--set", "verify_replicas=true"]
        for n in [2, 3, 4] {
            for accumulation in [1, 2] {
                var dirs: [String] = []
                for stage in [0, 3] {
                    let dir = scratchDirectory("zero3-gpt-\(n)-\(accumulation)-\(stage)")
                    let run = try launch(n, "tiny-gpt.json", common + ["--set", "grad_accum=\(accumulation)", "--set", "zero_stage=\(stage)", "--out-dir", dir])
                    XCTAssertEqual(run.status, 0, "n=\(n) accum=\(accumulation) stage \(stage):\n\(run.output)")
                    if stage == 3 { XCTAssertTrue(run.output.contains("ZeRO-3 (parameters, gradients and optimizer state sharded by unit: 4 units"), run.output) }
                    dirs.append(dir)
                }
                try assertSameTraining(dirs[0], dirs[1], "GPT ZeRO-3 n=\(n) accum=\(accumulation)", steps: 20, parameterBound: 2e-5)
                guard n == 2 && accumulation == 1 else { continue }
                let kept = scratchDirectory("zero3-gpt-kept")
                let run = try launch(n, "tiny-gpt.json", common + ["--set", "zero_stage=3", "--set", "reshard_after_forward=false", "--out-dir", kept])
                XCTAssertEqual(run.status, 0, run.output)
                let a = try LoadedCheckpoint(path: dirs[1] + "/ckpt.safetensors").tensors, b = try LoadedCheckpoint(path: kept + "/ckpt.safetensors").tensors
                for (key, tensor) in a { XCTAssertEqual(tensor.values, b[key]?.values, "reshard_after_forward false: \(key) differs") }
            }
        }
    }

    /// The bytes a rank keeps equal the paper's count exactly, for stages 0–3 at N = 1, 2, 4: the tiny
    /// GPT (AdamW, K = 8 bytes of state per parameter) has Ψ = 27,840 and units of 3,104, 12,416, 12,416
    /// and 32 parameters, all divisible by 4, so every piece is exactly Ψ/N (a bucket or unit of uneven
    /// length gives some ranks one float more, which the formula cannot say).
    func testHeldBytesEqualThePaperCount() throws {
        let common = ["--set", "max_iters=1", "--set", "eval_interval=1000", "--set", "log_interval=1000", "--set", "checkpoint_interval=0"]
        for n in [1, 2, 4] {
            for stage in [0, 1, 2, 3] {
                let run = try launch(n, "tiny-gpt.json", common + ["--set", "zero_stage=\(stage)", "--out-dir", scratchDirectory("zero-memory-\(n)-\(stage)")])
                XCTAssertEqual(run.status, 0, run.output)
                let lines = run.output.split(separator: "\n").filter { $0.contains("] memory: ") }
                XCTAssertEqual(lines.count, n, run.output)
                for line in lines {
                    guard let m = line.firstMatch(of: /= (\d+) bytes; ZeRO paper, stage (\d): .* with Ψ = 27840, N = (\d+): ([\d.]+) bytes/) else {
                        XCTFail("no memory figures in: \(line)"); continue
                    }
                    XCTAssertEqual(Int(m.2), stage); XCTAssertEqual(Int(m.3), n)
                    XCTAssertEqual(Double(m.1)!, Double(m.4)!, "stage \(stage), N \(n): \(line)")
                }
            }
        }
    }

    /// What the kernel really holds (mincore after step 1), on the MLP (0.78 MiB, 2 units): at stage 2
    /// the gradient buffer keeps this rank's pieces plus at most the partial pages at the ends of the
    /// ranges it zeroed (2 per bucket or unit and the buffer's last), at stage 3 the parameter buffer
    /// too; the whole buffer is N times more. At most the roots and one unit are gathered at once.
    func testResidentPagesAreOwnPieces() throws {
        let common = ["--set", "epochs=null", "--set", "max_iters=1", "--set", "eval_interval=1000", "--set", "log_interval=1000", "--set", "batch_size=8"]
        for n in [2, 4] {
            for stage in [2, 3] {
                let run = try launch(n, "mnist-mlp.json", common + ["--set", "zero_stage=\(stage)", "--out-dir", scratchDirectory("zero-resident-\(n)-\(stage)")])
                XCTAssertEqual(run.status, 0, run.output)
                let slack = 4096 * (2 * 2 + 1)
                guard let g = run.output.firstMatch(of: /gradient memory after step 1: (\d+) bytes resident of the (\d+)-byte gradient buffer \(own pieces (\d+) bytes/) else {
                    XCTFail("no measured gradient memory:\n\(run.output)"); continue
                }
                let resident = Int(g.1)!, whole = Int(g.2)!, own = Int(g.3)!
                XCTAssertEqual(Double(own), Double(whole) / Double(n), accuracy: 8)
                XCTAssertGreaterThanOrEqual(resident, own, "the rank's own pieces must be resident")
                XCTAssertLessThanOrEqual(resident, own + slack, "stage \(stage), N \(n): \(resident) gradient bytes resident, own pieces \(own)")
                guard stage == 3 else { continue }
                guard let v = run.output.firstMatch(of: /parameter memory after step 1: (\d+) bytes resident of the (\d+)-byte parameter buffer \(own pieces (\d+) bytes\); at most (\d+) of 2 units/) else {
                    XCTFail("no measured parameter memory:\n\(run.output)"); continue
                }
                let values = Int(v.1)!
                XCTAssertGreaterThanOrEqual(values, own)
                XCTAssertLessThanOrEqual(values, own + slack, "N \(n): \(values) parameter bytes resident, own pieces \(own)")
                XCTAssertLessThanOrEqual(Int(v.4)!, 2)
            }
        }
    }

    /// A rank killed while stage 3 trains (forward and backward are most of a step, each unit's gather
    /// waits on every rank): every rank stops, the launcher names the rank, nothing is left behind.
    func testKilledRankUnderStageThreeIsNamedWithNoOrphans() throws {
        try assertKilledRankStopsTheJob(launcher: Self.buildDirectory + "/ddp-launch", ranks: 3, victim: 1,
                                        settings: ["--set", "zero_stage=3"], outDir: scratchDirectory("zero3-kill"))
    }

    /// --max-restarts 1 under stage 3: the checkpoint gathers the whole model and optimizer state, the
    /// restarted group shards it again, and training ends bitwise equal to a run never interrupted.
    func testStageThreeRestartEndsBitwiseEqual() throws {
        let common = ["--data-dir", dataDirectory, "--set", "zero_stage=3", "--set", "max_iters=600", "--set", "checkpoint_interval=20",
                      "--set", "eval_interval=100000", "--set", "log_interval=1"]
        let config = configsDirectory + "/tiny-gpt.json"
        let reference = scratchDirectory("zero3-restart-reference")
        let undisturbed = try runToEnd(Self.buildDirectory + "/ddp-launch", ["--nproc-per-node", "2", "--timeout", "20", "--", config] + common + ["--out-dir", reference])
        XCTAssertEqual(undisturbed.status, 0, undisturbed.output)
        try assertRestartEndsBitwiseEqual(launcher: Self.buildDirectory + "/ddp-launch", [config] + common,
                                          dir: scratchDirectory("zero3-restart"), reference: reference, until: "iter 50/")
    }

    /// A sharded checkpoint written by 3 ranks at stage 3 holds exactly the gathered single file of the
    /// same run (consolidated, every tensor bitwise); loaded by 2 ranks at stage 2 and by 1 rank without
    /// ZeRO with no steps left and saved again, it holds the same bytes; training on from each gives the
    /// same losses (the MLP: DistributedSampler order makes N ranks with B/N equal one rank with B; the
    /// bound is DataParallelTests').
    func testShardedCheckpointMovesBetweenWorldSizesAndStages() throws {
        let common = ["--set", "epochs=null", "--set", "eval_interval=1000", "--set", "log_interval=1"]
        func tensors(_ path: String) throws -> [String: [UInt32]] {
            try LoadedCheckpoint(path: path).tensors.mapValues { $0.values.map(\.bitPattern) }
        }
        func run(_ n: Int, _ stage: Int, _ format: String, _ iterations: Int, _ dir: String, resume: Bool = false) throws {
            let result = try launch(n, "mnist-mlp.json", common + ["--set", "batch_size=\(48 / n)", "--set", "zero_stage=\(stage)",
                                                                   "--set", "checkpoint_format=\(format)", "--set", "max_iters=\(iterations)",
                                                                   "--out-dir", dir] + (resume ? ["--resume"] : []))
            XCTAssertEqual(result.status, 0, "n \(n) stage \(stage) \(format):\n\(result.output)")
        }
        let sharded = scratchDirectory("sharded-3"), single = scratchDirectory("single-3")
        try run(3, 3, "sharded", 6, sharded)
        try run(3, 3, "single", 6, single)
        let gathered = try tensors(single + "/ckpt.safetensors")
        let consolidated = scratchDirectory("consolidated") + ".safetensors"
        let tool = try runToEnd(Self.buildDirectory + "/ddp-train", ["consolidate", sharded + "/ckpt.sharded", consolidated])
        XCTAssertEqual(tool.status, 0, tool.output)
        XCTAssertEqual(try tensors(consolidated), gathered, "the consolidated sharded checkpoint differs from the gathered one")
        XCTAssertEqual(try LoadedCheckpoint(path: consolidated).metadata["iteration"], "6")
        var continued: [[Double]] = []
        for (n, stage) in [(2, 2), (1, 0)] {
            let dir = scratchDirectory("sharded-resume-\(n)")
            try FileManager.default.copyItem(atPath: sharded + "/ckpt.sharded", toPath: dir + "/ckpt.sharded")
            try run(n, stage, "sharded", 6, dir, resume: true)
            XCTAssertEqual(try tensors(dir + "/ckpt.sharded"), gathered, "resaved at N \(n) stage \(stage): not the same bytes")
            try run(n, stage, "sharded", 10, dir, resume: true)
            continued.append(try metricsLosses(dir).suffix(4))
        }
        XCTAssertEqual(continued.map(\.count), [4, 4])
        let worst = zip(continued[0], continued[1]).map { abs($0 - $1) / $0 }.max() ?? 1
        XCTAssertLessThan(worst, 1e-5, "N 2 stage 2 and N 1 continue the sharded checkpoint differently: \(worst) relative")
        // A missing shard is named, not read as zeros.
        let save = try FileManager.default.contentsOfDirectory(atPath: sharded + "/ckpt.sharded").first { $0.hasPrefix("step-") }!
        try FileManager.default.removeItem(atPath: sharded + "/ckpt.sharded/" + save + "/shard-00001-of-00003.safetensors")
        XCTAssertThrowsError(try LoadedCheckpoint(path: sharded + "/ckpt.sharded")) {
            XCTAssertTrue("\($0)".contains("shard 1 of 3 is missing"), "\($0)")
        }
    }

    /// bf16 gradients under stage 3 (the reduce-scatter rounds each hop to 8 significant bits): within the
    /// bf16 bound DataParallelTests argues (1e-3 after 6 momentum-SGD steps) and not bitwise float32. And
    /// what does not combine is refused with one line naming the key.
    func testStageThreeWithBF16AndRefusals() throws {
        let common = ["--set", "epochs=null", "--set", "max_iters=6", "--set", "eval_interval=1000", "--set", "log_interval=1000"]
        let reference = scratchDirectory("zero3-bf16-reference"), dir = scratchDirectory("zero3-bf16")
        XCTAssertEqual(try launch(1, "mnist-mlp.json", common + ["--set", "batch_size=48", "--out-dir", reference]).status, 0)
        let run = try launch(2, "mnist-mlp.json", common + ["--set", "batch_size=24", "--set", "zero_stage=3", "--set", "gradient_compression=bf16",
                                                           "--set", "verify_replicas=true", "--out-dir", dir])
        XCTAssertEqual(run.status, 0, run.output)
        let expected = try parameters(reference), got = try parameters(dir)
        let worst = expected.reduce(0.0) { w, e in zip(e.value, got[e.key]!).reduce(w) { max($0, Double(abs($1.0 - $1.1))) } }
        XCTAssertLessThan(worst, 1e-3)
        XCTAssertGreaterThan(worst, 0, "bitwise equal to float32: compression was not applied")
        for (n, settings, key) in [(1, ["--set", "zero_stage=4"], "zero_stage"),
                                   (2, ["--set", "zero_stage=3", "--set", "tensor_parallel=2"], "zero_stage"),
                                   (2, ["--set", "checkpoint_format=sharded", "--set", "pipeline_parallel=2"], "checkpoint_format"),
                                   (1, ["--set", "checkpoint_format=zip"], "checkpoint_format")] {
            let bad = try launch(n, "tiny-gpt.json", settings + ["--out-dir", scratchDirectory("zero-refused")])
            XCTAssertNotEqual(bad.status, 0)
            XCTAssertTrue(bad.output.contains("error: config key '\(key)'") || bad.output.contains(key), "\(settings): \(bad.output)")
        }
    }

    /// The consolidated file is a plain safetensors file: Python's `safetensors` reads every tensor with
    /// the values we wrote (scripts/test.sh installs it beside PyTorch).
    func testConsolidatedCheckpointLoadsInPythonSafetensors() throws {
        let candidates = [ProcessInfo.processInfo.environment["SWIFT_DDP_TORCH_PYTHON"], "/tmp/swift-ddp-ref-venv/bin/python"].compactMap { $0 }
        guard let python = candidates.first(where: { (try? runToEnd($0, ["-c", "import safetensors.torch"]).status) == 0 }) else {
            throw XCTSkip("no Python with safetensors and PyTorch (scripts/test.sh installs them into /tmp/swift-ddp-ref-venv)")
        }
        let dir = scratchDirectory("sharded-python")
        let run = try launch(2, "tiny-gpt.json", ["--set", "max_iters=2", "--set", "zero_stage=3", "--set", "checkpoint_format=sharded",
                                                  "--set", "eval_interval=100", "--out-dir", dir])
        XCTAssertEqual(run.status, 0, run.output)
        let file = dir + "/consolidated.safetensors"
        XCTAssertEqual(try runToEnd(Self.buildDirectory + "/ddp-train", ["consolidate", dir + "/ckpt.sharded", file]).status, 0)
        let ours = try LoadedCheckpoint(path: file).tensors
        // Each tensor's line starts with "tensor ": PyTorch may warn on the same output (without numpy:
        // "Failed to initialize NumPy"), and a warning is not a tensor.
        let script = "import sys\nfrom safetensors.torch import load_file\nt = load_file(sys.argv[1])\nfor k in sorted(t): print('tensor', k, list(t[k].shape), repr(float(t[k].double().sum())))"
        let read = try runToEnd(python, ["-c", script, file])
        XCTAssertEqual(read.status, 0, read.output)
        let lines = read.output.split(separator: "\n").filter { $0.hasPrefix("tensor ") }.map { $0.dropFirst("tensor ".count) }
        XCTAssertEqual(lines.count, ours.count, read.output)
        for line in lines {
            let parts = line.split(separator: " ", maxSplits: 1)
            guard let tensor = ours[String(parts[0])] else { XCTFail("python read \(parts[0]), which we did not write"); continue }
            let sum = tensor.values.reduce(0.0) { $0 + Double($1) }
            let pythonSum = Double(String(parts[1].split(separator: " ").last!))!
            XCTAssertEqual(pythonSum, sum, accuracy: 1e-9 * max(1, abs(sum)), "\(parts[0])")
            XCTAssertTrue(parts[1].hasPrefix("\(tensor.shape)"), "\(line) vs shape \(tensor.shape)")
        }
    }
}
