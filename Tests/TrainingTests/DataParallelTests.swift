import Foundation
import Collectives
import NN
import TestSupport
import Training
import XCTest

/// Data-parallel training with real processes through the launcher.
final class DataParallelTests: XCTestCase {
    static var buildDirectory: String { URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().path }

    /// Runs `ddp-launch --nproc-per-node n -- ddp-train train <config> <args>` and returns its output.
    func launch(_ n: Int, _ config: String, _ args: [String]) throws -> (status: Int32, output: String, pid: Int32) {
        try runToEnd(Self.buildDirectory + "/ddp-launch", ["--nproc-per-node", String(n), "--timeout", "20", "--", config] + args)
    }

    func parameters(_ dir: String) throws -> [String: [Float]] {
        let checkpoint = try LoadedCheckpoint(path: dir + "/ckpt.safetensors")
        return checkpoint.tensors.filter { !$0.key.hasPrefix("optimizer.") }.mapValues(\.values)
    }

    /// N ranks with per-rank batch B/(N K) and K accumulation steps must match one rank with batch B: the
    /// same examples are averaged each step (DistributedSampler order), only the summation order differs.
    /// Float32 reassociation over 48 examples changes a gradient by ~1e-7 relative; after 6 SGD steps
    /// (lr 0.05, momentum 0.9) parameters agree to ~1e-7 absolute, so 2e-6 catches any real mismatch
    /// (a wrong shard or a missing average is off by 1e-3 or more). Every run also checks, after every
    /// step, that all ranks hold bitwise-identical parameters (verify_replicas).
    /// Buckets are cut where backward reports gradients final: the recipe's are whole blocks (the final
    /// norm's 128 floats with the last block), then block 0's MLP half, and last block 0's attention
    /// half with the embeddings, alone, so the step waits only for what backward finished last. With
    /// only the end reported they are bucketRanges' fixed slices.
    func testBucketsAreCutWhereBackwardReportsGradientsFinal() throws {
        for (count, elements) in [(804_224, 262_144), (1000, 300), (5, 262_144), (1000, 1000)] {
            XCTAssertEqual(DataParallel.buckets(count: count, bucketElements: elements, units: nil, expertEnd: 0),
                           bucketRanges(count: count, bucketElements: elements))
        }
        let gpt = GPT(GPTConfiguration(vocabularySize: 65, blockSize: 64, layers: 4, heads: 4, embedding: 128))
        let count = gpt.parameters.count
        func offset(_ name: String) -> Int { gpt.parameters[name].offset }
        func ln1(_ l: Int) -> Int { offset("transformer.h.\(l).ln_1.weight") }
        func ln2(_ l: Int) -> Int { offset("transformer.h.\(l).ln_2.weight") }
        XCTAssertEqual(gpt.gradientReadyOffsets, [offset("transformer.ln_f.weight"), ln2(3), ln1(3), ln2(2), ln1(2), ln2(1), ln1(1), ln2(0), ln1(0), 0])
        let buckets = DataParallel.buckets(count: count, bucketElements: 262_144, units: nil, expertEnd: 0, readyOffsets: gpt.gradientReadyOffsets)
        XCTAssertEqual(buckets, [ln1(3)..<count, ln1(2)..<ln1(3), ln1(1)..<ln1(2), ln2(0)..<ln1(1), 0..<ln2(0)])
        // A piece larger than a bucket is sliced from its end, the remainder at its start.
        let sliced = DataParallel.buckets(count: count, bucketElements: 50_000, units: nil, expertEnd: 0, readyOffsets: gpt.gradientReadyOffsets)
        XCTAssertEqual(Array(sliced.prefix(3)), [(count - 50_000)..<count, (count - 100_000)..<(count - 50_000), ln2(3)..<(count - 100_000)])
        // Block 0's attention half (65,664 floats) in two slices; the embeddings (16,512) are no longer
        // under an eighth of a bucket, so they are a bucket of their own.
        XCTAssertEqual(Array(sliced.suffix(3)), [(ln2(0) - 50_000)..<ln2(0), ln1(0)..<(ln2(0) - 50_000), 0..<ln1(0)])
        for b in [buckets, sliced] {
            XCTAssertEqual(b.first?.upperBound, count)
            XCTAssertTrue(zip(b, b.dropFirst()).allSatisfy { $0.lowerBound == $1.upperBound && !$1.isEmpty }, "buckets must tile the buffer downwards")
        }
        // Expert tensors [0, expertEnd) keep their fixed slices below the dense buckets.
        let withExperts = DataParallel.buckets(count: count, bucketElements: 262_144, units: nil, expertEnd: 10_000, readyOffsets: gpt.gradientReadyOffsets)
        XCTAssertEqual(withExperts.last, 0..<10_000)
        XCTAssertEqual(withExperts.dropLast().last, 10_000..<ln2(0))
    }

    func testRanksWithSplitBatchMatchOneRankWithTheWholeBatch() throws {
        let config = configsDirectory + "/mnist-mlp.json"
        let common = ["--set", "epochs=null", "--set", "max_iters=6", "--set", "eval_interval=1000", "--set", "log_interval=1000",
                      "--data-dir", dataDirectory]
        let reference = scratchDirectory("ddp-reference")
        let single = try launch(1, config, common + ["--set", "batch_size=48", "--out-dir", reference])
        XCTAssertEqual(single.status, 0, single.output)
        let expected = try parameters(reference)
        for n in [2, 3, 4] {
            for accumulation in [1, 2] {
                for algorithm in ["ring", "tree", "two-shot"] {
                    let dir = scratchDirectory("ddp-\(n)-\(accumulation)-\(algorithm)")
                    let run = try launch(n, config, common + ["--set", "batch_size=\(48 / n / accumulation)", "--set", "grad_accum=\(accumulation)",
                                                             "--set", "allreduce_algorithm=\(algorithm)", "--set", "verify_replicas=true",
                                                             "--out-dir", dir])
                    XCTAssertEqual(run.status, 0, "n=\(n) accum=\(accumulation) \(algorithm):\n\(run.output)")
                    XCTAssertTrue(run.output.contains("= 48 samples per step (global batch)"), run.output)
                    if algorithm == "two-shot" {
                        // The layout's data-parallel group holds every rank, so it shares the world's arena.
                        XCTAssertTrue(run.output.contains("allreduce two-shot through the host's shared arena"), run.output)
                    }
                    let got = try parameters(dir)
                    var worst = 0.0
                    for (name, values) in expected {
                        for (a, b) in zip(values, got[name]!) { worst = max(worst, Double(abs(a - b))) }
                    }
                    XCTAssertLessThan(worst, 2e-6, "n=\(n) accum=\(accumulation) \(algorithm): max parameter difference \(worst)")
                }
            }
        }
        // Several buckets (0.1 MiB: 8 buckets of the 0.78 MiB MLP, the last one shorter): bucket-by-bucket
        // overlap, plain and with ZeRO-1's per-bucket reduce-scatter, must give the same parameters.
        for (n, zero) in [(2, 0), (3, 0), (3, 1), (4, 1)] {
            let dir = scratchDirectory("ddp-buckets-\(n)-\(zero)")
            let run = try launch(n, config, common + ["--set", "batch_size=\(48 / n)", "--set", "bucket_mb=0.1", "--set", "zero_stage=\(zero)",
                                                     "--set", "verify_replicas=true", "--out-dir", dir])
            XCTAssertEqual(run.status, 0, "buckets n=\(n) zero=\(zero):\n\(run.output)")
            XCTAssertTrue(run.output.contains("8 buckets of up to 0.1 MiB cut where backward finishes gradients (the last 78 KiB)"), run.output)
            // More ranks than cores: the buckets wait for the end of backward (Trainer.hostOversubscribed).
            let oversubscribed = n > ProcessInfo.processInfo.activeProcessorCount
            XCTAssertTrue(run.output.contains(oversubscribed ? "averaged after backward (more ranks on this host than cores)" : "averaged while backward runs"),
                          "n=\(n) on \(ProcessInfo.processInfo.activeProcessorCount) cores: \(run.output)")
            let got = try parameters(dir)
            let worst = expected.reduce(0.0) { w, e in zip(e.value, got[e.key]!).reduce(w) { max($0, Double(abs($1.0 - $1.1))) } }
            XCTAssertLessThan(worst, 2e-6, "buckets n=\(n) zero=\(zero): max parameter difference \(worst)")
        }
    }

    /// The GPT too: every data-parallel rank trains on its slice of one global batch drawn from the seed,
    /// iteration and micro-step alone, so N ranks of batch_size 8/N (with or without accumulation and
    /// ZeRO-1) train the model one rank trains with batch_size 8. Same bound as the layout tests:
    /// per-step losses within 1e-5 relative over 20 steps, final parameters within 2e-6.
    func testGPTRanksWithSplitBatchMatchOneRankWithTheWholeBatch() throws {
        let config = configsDirectory + "/tiny-gpt.json"
        let common = ["--data-dir", dataDirectory, "--set", "max_iters=20", "--set", "log_interval=1", "--set", "eval_interval=1000",
                      "--set", "learning_rate=1e-3", "--set", "min_lr=1e-4", "--set", "checkpoint_interval=0"]
        let reference = scratchDirectory("gpt-one-8")
        XCTAssertEqual(try launch(1, config, common + ["--set", "batch_size=8", "--out-dir", reference]).status, 0)
        func run(_ n: Int, batch: Int, accumulation: Int, zero: Int) throws -> String {
            let dir = scratchDirectory("gpt-\(n)-\(batch)-\(accumulation)-\(zero)")
            let run = try launch(n, config, common + ["--set", "batch_size=\(batch)", "--set", "grad_accum=\(accumulation)",
                                                     "--set", "zero_stage=\(zero)", "--set", "verify_replicas=true", "--out-dir", dir])
            XCTAssertEqual(run.status, 0, run.output)
            return dir
        }
        try assertSameTraining(reference, try run(2, batch: 4, accumulation: 1, zero: 0), "dp 2 x batch 4", steps: 20)
        try assertSameTraining(reference, try run(4, batch: 2, accumulation: 1, zero: 1), "dp 4 x batch 2, ZeRO-1", steps: 20)
        // Accumulation splits a step into micro-steps, each its own global draw: 2 ranks x 2 micro-steps
        // of 2 sequences equal one rank accumulating 2 micro-steps of 4.
        let accumulated = scratchDirectory("gpt-one-4x2")
        XCTAssertEqual(try launch(1, config, common + ["--set", "batch_size=4", "--set", "grad_accum=2", "--out-dir", accumulated]).status, 0)
        try assertSameTraining(accumulated, try run(2, batch: 2, accumulation: 2, zero: 0), "dp 2 x batch 2 x accumulation 2", steps: 20)
    }

    /// ZeRO-1 changes where the update happens, not what it computes: same bound as plain DDP. bf16 on the
    /// wire rounds each gradient to 8 significant bits (2^-9 relative per hop); over 6 momentum-SGD steps
    /// (lr 0.05, gradients below ~0.1) that moves a parameter by at most ~3e-4, so 1e-3 is the bound, and
    /// a difference must show (else compression was not on).
    func testZeROAndBF16CompressionMatchOneRank() throws {
        let config = configsDirectory + "/mnist-mlp.json"
        let common = ["--set", "epochs=null", "--set", "max_iters=6", "--set", "eval_interval=1000", "--set", "log_interval=1000",
                      "--set", "verify_replicas=true", "--data-dir", dataDirectory]
        let reference = scratchDirectory("zero-reference")
        XCTAssertEqual(try launch(1, config, common + ["--set", "batch_size=48", "--out-dir", reference]).status, 0)
        let expected = try parameters(reference)
        func worstDifference(_ dir: String) throws -> Double {
            let got = try parameters(dir)
            return expected.reduce(0.0) { worst, entry in
                zip(entry.value, got[entry.key]!).reduce(worst) { max($0, Double(abs($1.0 - $1.1))) }
            }
        }
        for n in [2, 3, 4] {
            for accumulation in [1, 2] {
                let dir = scratchDirectory("zero-\(n)-\(accumulation)")
                let run = try launch(n, config, common + ["--set", "batch_size=\(48 / n / accumulation)", "--set", "grad_accum=\(accumulation)",
                                                         "--set", "zero_stage=1", "--out-dir", dir])
                XCTAssertEqual(run.status, 0, "ZeRO n=\(n) accum=\(accumulation):\n\(run.output)")
                XCTAssertTrue(run.output.contains("ZeRO-1"), run.output)
                // Each rank holds 1/N of the optimizer state (the printed share is 100/N %, within one element).
                for r in 0..<n {
                    let line = run.output.split(separator: "\n").first { $0.contains("optimizer memory: rank \(r) holds") }.map(String.init) ?? ""
                    let share = line.range(of: "(").flatMap { Double(line[$0.upperBound...].prefix { $0 != "%" }) } ?? -1
                    XCTAssertEqual(share, 100 / Double(n), accuracy: 1, "rank \(r) of \(n): \(line)")
                }
                XCTAssertLessThan(try worstDifference(dir), 2e-6, "ZeRO n=\(n) accum=\(accumulation)")
            }
        }
        // Global-norm clipping with ZeRO-1 (the norm summed over every rank's pieces) equals clipping on one rank.
        let clipped = scratchDirectory("zero-clip-reference")
        XCTAssertEqual(try launch(1, config, common + ["--set", "batch_size=48", "--set", "grad_clip=0.05", "--out-dir", clipped]).status, 0)
        let clippedExpected = try parameters(clipped)
        for n in [2, 3] {
            let dir = scratchDirectory("zero-clip-\(n)")
            let run = try launch(n, config, common + ["--set", "batch_size=\(48 / n)", "--set", "zero_stage=1", "--set", "grad_clip=0.05",
                                                     "--out-dir", dir])
            XCTAssertEqual(run.status, 0, run.output)
            let got = try parameters(dir)
            let worst = clippedExpected.reduce(0.0) { w, e in zip(e.value, got[e.key]!).reduce(w) { max($0, Double(abs($1.0 - $1.1))) } }
            XCTAssertLessThan(worst, 2e-6, "ZeRO n=\(n) with clipping: max parameter difference \(worst)")
            XCTAssertGreaterThan(clippedExpected.reduce(0.0) { w, e in zip(e.value, expected[e.key]!).reduce(w) { max($0, Double(abs($1.0 - $1.1))) } },
                                 1e-5, "grad_clip=0.05 did not clip: the test would not see a wrong norm")
        }
        // bf16: each element is held to its own movement over the 6 steps: bf16 rounds a gradient by at most
        // 2^-9 relative per hop, so a parameter's path stays within a few % of how far it moved, plus a floor
        // of 1e-4 for elements whose steps nearly cancel (10x tighter than a flat 1e-3); a wrong average on a
        // segment moves its elements by a multiple of their movement.
        let initial = scratchDirectory("bf16-initial")
        XCTAssertEqual(try launch(1, config, common + ["--set", "batch_size=48", "--set", "max_iters=0", "--out-dir", initial]).status, 0)
        let start = try parameters(initial)
        for (n, zero) in [(2, 0), (4, 1)] {
            let dir = scratchDirectory("bf16-\(n)")
            let run = try launch(n, config, common + ["--set", "batch_size=\(48 / n)", "--set", "gradient_compression=bf16",
                                                     "--set", "zero_stage=\(zero)", "--out-dir", dir])
            XCTAssertEqual(run.status, 0, "bf16 n=\(n):\n\(run.output)")
            let got = try parameters(dir)
            var outside = 0, checked = 0
            for (name, reference) in expected {
                for i in reference.indices {
                    let moved = abs(Double(reference[i]) - Double(start[name]![i]))
                    if abs(Double(got[name]![i]) - Double(reference[i])) > 0.05 * moved + 1e-4 { outside += 1 }
                    checked += 1
                }
            }
            XCTAssertEqual(outside, 0, "bf16 n=\(n): \(outside) of \(checked) parameters differ from one rank by more than 5 % of their movement + 1e-4")
            XCTAssertGreaterThan(try worstDifference(dir), 0, "bf16 n=\(n): bitwise equal to float32, so compression was not applied")
        }
    }

    /// A checkpoint holds the full state whatever wrote it: one written by 2 ZeRO ranks, resumed by 3
    /// ZeRO ranks with no steps left and saved again, holds the same bytes (parameters and gathered
    /// optimizer state); 1 plain rank resumes it and trains on.
    func testResumeAtAnotherWorldSize() throws {
        let config = configsDirectory + "/tiny-gpt.json"
        let dir = scratchDirectory("resume-world")
        let common = ["--data-dir", dataDirectory, "--out-dir", dir, "--set", "eval_interval=1000"]
        let first = try launch(2, config, common + ["--set", "max_iters=10", "--set", "zero_stage=1"])
        XCTAssertEqual(first.status, 0, first.output)
        let written = try LoadedCheckpoint(path: dir + "/ckpt.safetensors").tensors
        let again = try launch(3, config, common + ["--set", "max_iters=10", "--set", "zero_stage=1", "--resume"])
        XCTAssertEqual(again.status, 0, again.output)
        XCTAssertTrue(again.output.contains("at iteration 10 (written by 2 rank(s))"), again.output)
        let rewritten = try LoadedCheckpoint(path: dir + "/ckpt.safetensors").tensors
        XCTAssertEqual(Set(written.keys), Set(rewritten.keys))
        XCTAssertTrue(written.keys.contains("optimizer.adamw.v"))
        for (name, tensor) in written {
            XCTAssertEqual(tensor.values.map(\.bitPattern), rewritten[name]!.values.map(\.bitPattern), "\(name) changed through 2 -> 3 ranks")
        }
        // Back at 2 ranks, trained on to 14: bitwise the parameters of a 2-rank run that never stopped
        // (the detour through 3 ranks lost nothing).
        let resumed = try launch(2, config, common + ["--set", "max_iters=14", "--set", "zero_stage=1", "--resume"])
        XCTAssertEqual(resumed.status, 0, resumed.output)
        let straight = scratchDirectory("resume-world-straight")
        let uninterrupted = try launch(2, config, ["--data-dir", dataDirectory, "--out-dir", straight, "--set", "eval_interval=1000",
                                                   "--set", "max_iters=14", "--set", "zero_stage=1"])
        XCTAssertEqual(uninterrupted.status, 0, uninterrupted.output)
        let a = try parameters(dir), b = try parameters(straight)
        XCTAssertEqual(Set(a.keys), Set(b.keys))
        for (name, values) in a { XCTAssertEqual(values.map(\.bitPattern), b[name]!.map(\.bitPattern), "\(name) differs from the uninterrupted run") }
        let single = try launch(1, config, common + ["--set", "max_iters=18", "--resume"])
        XCTAssertEqual(single.status, 0, single.output)
        XCTAssertTrue(single.output.contains("training 18 iterations from iteration 14"), single.output)
    }

    /// Ranks started with different configs (here the seed differs per rank) stop at once, naming the rank.
    func testConfigMismatchNamesTheRank() throws {
        let train = Self.buildDirectory + "/ddp-train"
        let script = "exec '\(train)' train '\(configsDirectory)/tiny-gpt.json' --data-dir '\(dataDirectory)' --out-dir '\(scratchDirectory("mismatch"))' --set seed=$((7 + RANK / 2))"
        let (status, output, pid) = try runToEnd(Self.buildDirectory + "/ddp-launch",
                                                 ["--nproc-per-node", "3", "--timeout", "20", "--", "/bin/sh", "-c", script])
        XCTAssertNotEqual(status, 0, output)
        XCTAssertTrue(output.contains("rank 2 runs a different model or config than rank 0"), output)
        XCTAssertEqual(survivors(ofLauncher: pid), [])
    }

    func testKilledRankStopsTheJobWithAClearMessageAndNoOrphans() throws {
        // Every rank's pid is printed before any rank can train, so "iter 5/" means all three are known.
        try assertKilledRankStopsTheJob(launcher: Self.buildDirectory + "/ddp-launch", ranks: 3, victim: 1, settings: [],
                                        outDir: scratchDirectory("ddp-kill"))
    }

    func startLauncher(_ arguments: [String], until marker: String) throws -> (Process, FileHandle, String) {
        try TestSupport.startLauncher(Self.buildDirectory + "/ddp-launch", arguments, until: marker)
    }

    /// --max-restarts: rank 1 is killed mid-training, the launcher restarts the group, rank 0 resumes
    /// from the last checkpoint and hands it to rank 1, and training ends with exactly the parameters
    /// and optimizer state of a run that was never interrupted (every step is a pure function of the
    /// state and the iteration).
    func testRestartAfterAKilledRankEndsWithTheUninterruptedParameters() throws {
        let config = configsDirectory + "/tiny-gpt.json"
        let common = ["--data-dir", dataDirectory, "--set", "max_iters=1500", "--set", "checkpoint_interval=20",
                      "--set", "eval_interval=100000", "--set", "log_interval=1"]
        let reference = scratchDirectory("restart-reference")
        XCTAssertEqual(try launch(2, config, common + ["--out-dir", reference]).status, 0)
        try assertRestartEndsBitwiseEqual(launcher: Self.buildDirectory + "/ddp-launch", [config] + common,
                                          dir: scratchDirectory("restart"), reference: reference, until: "iter 50/")
    }

    /// Every way a job can end badly leaves no process behind: restarts exhausted, the launcher
    /// stopped with SIGTERM (forwarded), and the launcher SIGKILLed (ranks die by PR_SET_PDEATHSIG).
    func testNoOrphansAfterRestartsRunOutOrTheLauncherIsStoppedOrKilled() throws {
        let config = configsDirectory + "/tiny-gpt.json"
        let endless = ["--data-dir", dataDirectory, "--set", "max_iters=100000000", "--set", "eval_interval=100000000",
                       "--set", "log_interval=1"]
        // A rank that always fails: restarts run out, the launcher gives up with the rank's status.
        let (failing, _, failingText) = try startLauncher(["--nproc-per-node", "2", "--max-restarts", "2", "--", "/bin/sh", "-c",
                                                          "if [ \"$RANK\" = 1 ]; then echo broken >&2; exit 7; fi; sleep 30"], until: "\u{0}")
        failing.waitUntilExit()
        XCTAssertEqual(failing.terminationStatus, 7)
        XCTAssertTrue(failingText.contains("giving up: the group failed 3 times"), failingText)
        XCTAssertEqual(survivors(ofLauncher: failing.processIdentifier), [])

        for signal in [SIGTERM, SIGKILL] {
            let dir = scratchDirectory("orphans-\(signal)")
            let (process, handle, head) = try startLauncher(["--nproc-per-node", "3", "--", config] + endless + ["--out-dir", dir], until: "iter 3/")
            let pids = launcherRankPIDs(head)
            XCTAssertEqual(pids.count, 3, head)
            kill(process.processIdentifier, signal)
            _ = handle.readDataToEndOfFile()
            process.waitUntilExit()
            XCTAssertEqual(survivors(ofLauncher: process.processIdentifier), [], "after \(signal == SIGTERM ? "SIGTERM" : "SIGKILL") to the launcher")
        }
    }

    /// allreduce_tuning and SWIFT_DDP_TUNING: an unreadable table is an error naming the key, a table
    /// measured at another world size is logged and auto keeps its fixed rule.
    func testTuningTablesAreCheckedNotIgnored() throws {
        let config = configsDirectory + "/tiny-gpt.json"
        let common = ["--data-dir", dataDirectory, "--set", "max_iters=2", "--set", "eval_interval=1000"]
        let missing = try launch(2, config, common + ["--out-dir", scratchDirectory("tuning-missing"), "--set", "allreduce_tuning=\"/nonexistent/t.json\""])
        XCTAssertNotEqual(missing.status, 0, missing.output)
        XCTAssertTrue(missing.output.contains("allreduce_tuning"), missing.output)
        let fromEnvironment = try runToEnd(Self.buildDirectory + "/ddp-launch", ["--nproc-per-node", "2", "--", config] + common
                                           + ["--out-dir", scratchDirectory("tuning-env")], environment: ["SWIFT_DDP_TUNING": "/nonexistent/t.json"])
        XCTAssertNotEqual(fromEnvironment.status, 0, fromEnvironment.output)
        XCTAssertTrue(fromEnvironment.output.contains("allreduce_tuning") && fromEnvironment.output.contains("/nonexistent/t.json"), fromEnvironment.output)
        let table = scratchDirectory("tuning-table") + "/t4.json"
        try TuningTable(worldSize: 4, models: ["ring": LinearCost(alpha: 1e-5, beta: 1e-9)]).write(to: table)
        let mismatch = try launch(2, config, common + ["--out-dir", scratchDirectory("tuning-mismatch"), "--set", "allreduce_tuning=\"\(table)\""])
        XCTAssertEqual(mismatch.status, 0, mismatch.output)
        XCTAssertTrue(mismatch.output.contains("was measured at 4 ranks, this run has 2: auto keeps its fixed rule"), mismatch.output)
    }
}
