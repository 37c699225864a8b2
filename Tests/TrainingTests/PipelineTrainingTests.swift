import Foundation
import NN
import TestSupport
import Training
import XCTest

/// Pipeline parallelism through the launcher and the trainer, with real processes.
final class PipelineTrainingTests: XCTestCase {
    static var buildDirectory: String { URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().path }
    let common = ["--set", "n_layer=4", "--set", "batch_size=2", "--set", "max_iters=20", "--set", "log_interval=1",
                  "--set", "eval_interval=10", "--set", "learning_rate=1e-3", "--set", "min_lr=1e-4", "--set", "checkpoint_interval=0"]

    func launch(_ n: Int, _ args: [String]) throws -> (status: Int32, output: String, pid: Int32) {
        try launchTinyGPT(n, args)
    }

    func run(_ name: String, _ n: Int, _ extra: [String]) throws -> String {
        let dir = scratchDirectory("pp-\(name)")
        let result = try launch(n, common + extra + ["--out-dir", dir])
        XCTAssertEqual(result.status, 0, "\(name):\n\(result.output)")
        return dir
    }

    /// Same bound and reasoning as the tensor-parallel tests: only the order of float sums differs
    /// (gradients accumulated per micro-batch in schedule order, the tied embedding summed over two
    /// ranks), ~1e-7 relative per step, so per-step losses within 1e-5 over 20 steps and final
    /// parameters within 2e-6; a wrong stage boundary or a lost micro-batch is off by 1e-3 or more.
    func compare(_ reference: String, _ dir: String, _ name: String) throws {
        try assertSameTraining(reference, dir, name, steps: 20)
    }

    /// Every schedule at pp 2 and pp 4 (oversubscribed: correctness only), m = p and 2p, equals one rank
    /// accumulating the same micro-batches, and so do two accumulated passes; dp 2 x pp 2 equals dp 2. Interleaved at pp 4 needs 8 layers
    /// (4 ranks x 2 chunks), so its reference has 8 too.
    func testEverySchedulesTrainingMatchesOneRank() throws {
        var references: [String: String] = [:]
        func reference(_ m: Int, layers: Int) throws -> String {
            let key = "\(m)-\(layers)"
            if let dir = references[key] { return dir }
            let dir = try run("one-m\(m)-l\(layers)", 1, ["--set", "grad_accum=\(m)", "--set", "n_layer=\(layers)"])
            references[key] = dir
            return dir
        }
        for p in [2, 4] {
            for (schedule, chunks) in [("gpipe", 1), ("1f1b", 1), ("interleaved", 2), ("zb-h1", 1)] {
                let layers = p * chunks > 4 ? p * chunks : 4
                for m in [p, 2 * p] {
                    let name = "\(schedule)-p\(p)-m\(m)"
                    try compare(try reference(m, layers: layers), try run(name, p, ["--set", "pipeline_parallel=\(p)", "--set", "pipeline_schedule=\(schedule)",
                                                                                   "--set", "microbatches=\(m)", "--set", "virtual_stages=\(chunks)",
                                                                                   "--set", "n_layer=\(layers)"]), name)
                }
            }
        }
        // Gradient accumulation: two pipeline passes of 2 micro-batches per step are one rank's 4.
        try compare(try reference(4, layers: 4), try run("1f1b-p2-m2-accum2", 2, ["--set", "pipeline_parallel=2", "--set", "microbatches=2",
                                                                                 "--set", "grad_accum=2"]), "pp 2, m 2, grad_accum 2")
        let dp2 = try run("dp2", 2, ["--set", "grad_accum=2"])
        try compare(dp2, try run("dp2-pp2", 4, ["--set", "pipeline_parallel=2", "--set", "microbatches=2", "--set", "verify_replicas=true"]), "dp 2 x pp 2")
        // ZeRO-1 across the replicas of each stage (DeepSpeed's pipeline + ZeRO-1): the same model.
        try compare(dp2, try run("dp2-pp2-zero1", 4, ["--set", "pipeline_parallel=2", "--set", "microbatches=2", "--set", "zero_stage=1",
                                                      "--set", "verify_replicas=true"]), "dp 2 x pp 2 with ZeRO-1")
    }

    /// A pp 2 checkpoint holds the full model: it resumes at pp 1 and at pp 2 with another schedule to
    /// the same losses, and sampling reads it.
    func testPipelineCheckpointResumesAtAnyLayout() throws {
        let source = try run("ckpt", 2, ["--set", "pipeline_parallel=2", "--set", "microbatches=2", "--set", "max_iters=10"])
        var continued: [[Double]] = []
        for (n, extra) in [(1, ["--set", "grad_accum=2"]), (2, ["--set", "pipeline_parallel=2", "--set", "microbatches=2", "--set", "pipeline_schedule=zb-h1"])] {
            let dir = scratchDirectory("pp-resume-\(n)")
            try FileManager.default.copyItem(atPath: source + "/ckpt.safetensors", toPath: dir + "/ckpt.safetensors")
            let result = try launch(n, common + extra + ["--set", "max_iters=15", "--out-dir", dir, "--resume"])
            XCTAssertEqual(result.status, 0, result.output)
            XCTAssertTrue(result.output.contains("resumed from \(dir)/ckpt.safetensors at iteration 10"), result.output)
            continued.append(try metricsLosses(dir))
        }
        XCTAssertEqual(continued.map(\.count), [5, 5])
        let worst = zip(continued[0], continued[1]).map { abs($0 - $1) / $0 }.max() ?? 1
        XCTAssertLessThan(worst, 1e-5, "pp 1 and pp 2 continue a pp 2 checkpoint differently: \(worst) relative")
        let sample = try runToEnd(Self.buildDirectory + "/ddp-train", ["sample", source + "/ckpt.safetensors", "--tokens", "20"])
        XCTAssertEqual(sample.status, 0, sample.output)
    }

    /// pipeline_timeline draws the last pass as measured on every rank: each stage's F, I and W of every
    /// micro-batch exactly once, on its own rank's row, passes of a row not overlapping; the progress
    /// lines carry the measured bubble beside the formula.
    func testTimelineDrawsTheMeasuredPass() throws {
        let dir = scratchDirectory("pp-timeline")
        let svg = dir + "/timeline/zb.svg"
        let result = try launch(2, common + ["--set", "max_iters=3", "--set", "pipeline_parallel=2", "--set", "pipeline_schedule=zb-h1",
                                             "--set", "microbatches=4", "--set", "pipeline_timeline=\(svg)", "--out-dir", dir])
        XCTAssertEqual(result.status, 0, result.output)
        XCTAssertTrue(result.output.contains("pipeline bubble measured"), result.output)
        XCTAssertTrue(result.output.contains("pipeline timeline: \(svg)"), result.output)
        let text = try String(contentsOfFile: svg, encoding: .utf8)
        // Rows: rank labels, then each interval's box with its action in a <title>.
        var row = -1, passes: [String: Int] = [:], rowOf: [String: Int] = [:]
        var lastEnd: [Int: Double] = [:]
        for line in text.split(separator: "\n") {
            if let r = line.firstMatch(of: /<text x="8" y="[\d.]+">rank (\d+)<\/text>/) { row = Int(r.1)!; continue }
            guard let m = line.firstMatch(of: /<rect x="([\d.]+)" y="[\d.]+" width="([\d.]+)"[^>]*><title>(\d+)([FIWB])(\d+)<\/title>/) else { continue }
            let name = "\(m.3)\(m.4)\(m.5)"
            passes[name, default: 0] += 1
            rowOf[name] = row
            let start = Double(m.1)!, end = start + Double(m.2)!
            XCTAssertGreaterThanOrEqual(start + 0.15, lastEnd[row] ?? 0, "\(name) overlaps the previous pass on rank \(row)")
            lastEnd[row] = end
        }
        let expected = (0..<2).flatMap { s in (0..<4).flatMap { k in ["F", "I", "W"].map { "\(s)\($0)\(k)" } } }
        XCTAssertEqual(Set(passes.keys), Set(expected), text)
        XCTAssertTrue(passes.values.allSatisfy { $0 == 1 }, "\(passes)")
        XCTAssertTrue(expected.allSatisfy { rowOf[$0] == Int(String($0.first!)) }, "\(rowOf)")
        let configError = try launch(1, common + ["--set", "pipeline_timeline=x.svg", "--out-dir", scratchDirectory("pp-timeline-bad")])
        XCTAssertNotEqual(configError.status, 0)
        XCTAssertTrue(configError.output.contains("pipeline_timeline"), configError.output)
    }

    /// kill -9 of a stage mid-training: every rank stops (the neighbour's blocked receive does not
    /// hang), the killed rank is named, no orphans.
    func testKilledStageStopsTheJob() throws {
        try assertKilledRankStopsTheJob(launcher: Self.buildDirectory + "/ddp-launch", ranks: 2, victim: 1,
                                        settings: ["--set", "n_layer=4", "--set", "pipeline_parallel=2"], outDir: scratchDirectory("pp-kill"))
    }

    /// Combinations that cannot work are refused at the start, naming the key.
    func testBadPipelineSettingsNameTheKey() throws {
        for (extra, text) in [(["--set", "pipeline_parallel=2", "--set", "n_layer=3"], "n_layer"),
                              (["--set", "pipeline_parallel=2", "--set", "microbatches=1"], "microbatches"),
                              (["--set", "pipeline_parallel=2", "--set", "virtual_stages=2"], "virtual_stages"),
                              (["--set", "pipeline_parallel=2", "--set", "zero_stage=2"], "zero_stage"),
                              (["--set", "pipeline_parallel=2", "--set", "zero_stage=3"], "zero_stage")] {
            let result = try launch(2, extra + ["--set", "max_iters=1", "--out-dir", scratchDirectory("pp-bad")])
            XCTAssertNotEqual(result.status, 0, "\(extra)")
            XCTAssertTrue(result.output.contains(text), "\(extra):\n\(result.output)")
        }
        let result = try launch(3, ["--set", "n_layer=4", "--set", "pipeline_parallel=2", "--set", "max_iters=1", "--out-dir", scratchDirectory("pp-3")])
        XCTAssertNotEqual(result.status, 0)
        XCTAssertTrue(result.output.contains("pipeline_parallel"), result.output)
    }
}
