import Foundation
import NN
import TestSupport
import Training
import XCTest

/// The layout planner: it lists what the trainer accepts and refuses the rest with the trainer's
/// reason, marks layouts over a memory budget, and its count of each rank's training state (parameters,
/// gradients, optimizer state) is the trainer's own, for every kind of layout.
final class PlannerTests: XCTestCase {
    static var buildDirectory: String { URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().path }

    func planner(_ overrides: [String] = [], world: Int) throws -> LayoutPlanner {
        LayoutPlanner(config: try tinyGPTConfig(overrides, outDir: temporaryDirectory("plan")), worldSize: world, vocabularySize: 65)
    }

    func testRefusesWhatTheTrainerRefusesAndMarksTheBudget() throws {
        let plan = try planner(world: 4)
        let (accepted, refused) = plan.candidates()
        XCTAssertFalse(accepted.contains { $0.tensorParallel == 4 }, "tp 4 does not divide the tiny model's 2 heads")
        XCTAssertTrue(refused.contains { $0.name.hasPrefix("tp4") && $0.reason.contains("does not divide n_head 2") }, "\(refused)")
        XCTAssertTrue(refused.contains { $0.name.contains("pp2") && $0.name.hasSuffix("ZeRO-2") && $0.reason.contains("zero_stage") })
        XCTAssertTrue(accepted.contains { $0.tensorParallel == 2 && $0.sequenceParallel && $0.zeroStage == 1 })
        XCTAssertTrue(accepted.contains { $0.pipelineParallel == 2 && $0.zeroStage == 1 })
        XCTAssertTrue(accepted.contains { $0.pipelineParallel == 2 && $0.tensorParallel == 2 && $0.sequenceParallel })
        // Every layout trains the config's global batch (8 sequences): batch x micro-batches x replicas.
        for c in accepted {
            let dp = 4 / (c.tensorParallel * c.pipelineParallel)
            XCTAssertEqual(c.batchSize * (c.pipelineParallel > 1 ? c.microbatches : 1) * c.gradAccum * dp, 8, "\(c.architecture)")
        }
        let tight = try plan.plan(stepSeconds: 0.01, memoryPerRank: 1048576)
        XCTAssertFalse(tight.isEmpty)
        XCTAssertTrue(tight.allSatisfy { !$0.fits }, "nothing fits in 1 MiB per rank")
        let roomy = try plan.plan(stepSeconds: 0.01, memoryPerRank: 1073741824)
        XCTAssertTrue(roomy.allSatisfy(\.fits))
        XCTAssertEqual(roomy.map(\.predictedSeconds), roomy.map(\.predictedSeconds).sorted(), "ranked by predicted step time")
        // The MoE model adds expert layouts: ep 2 and ep 4 over the 4 data-parallel ranks.
        let moe = try planner(["n_experts=4", "moe_top_k=2"], world: 4).candidates().accepted
        XCTAssertEqual(Set(moe.map(\.expertParallel)), [1, 2, 4])
    }

    /// For layouts of every kind, the planner's bytes for world rank 0 equal the trainer's "memory:" line
    /// for it (4 real ranks each, no step taken).
    func testStateBytesEqualTheTrainersCount() throws {
        let cases: [(settings: [String], overrides: [String])] = [
            ([], []), (["zero_stage=1"], []), (["zero_stage=2"], []), (["zero_stage=3"], []),
            (["tensor_parallel=2", "zero_stage=1"], []), (["tensor_parallel=2", "sequence_parallel=true"], []),
            (["pipeline_parallel=2", "zero_stage=1"], []), (["pipeline_parallel=4"], ["n_layer=4"]),
            (["tensor_parallel=2", "pipeline_parallel=2", "sequence_parallel=true"], []),
            (["expert_parallel=2", "zero_stage=1"], ["n_experts=4"]), (["expert_parallel=4"], ["n_experts=4", "moe_every=2"]),
        ]
        for (settings, overrides) in cases {
            let plan = try planner(overrides, world: 4)
            let planned = try plan.plan(stepSeconds: 0.01, memoryPerRank: nil)
            let wanted = Dictionary(settings.map { ($0.split(separator: "=")[0], $0.split(separator: "=")[1]) }, uniquingKeysWith: { a, _ in a })
            guard let layout = planned.first(where: { p in
                let c = p.config
                return c.tensorParallel == Int(wanted["tensor_parallel"] ?? "1") && c.pipelineParallel == Int(wanted["pipeline_parallel"] ?? "1")
                    && c.expertParallel == Int(wanted["expert_parallel"] ?? "1") && c.zeroStage == Int(wanted["zero_stage"] ?? "0")
                    && c.sequenceParallel == (wanted["sequence_parallel"] == "true")
            }) else { XCTFail("\(settings) not planned"); continue }
            var args = ["--nproc-per-node", "4", "--timeout", "30", "--", configsDirectory + "/tiny-gpt.json", "--data-dir", dataDirectory,
                        "--out-dir", temporaryDirectory("plan-check"), "--set", "max_iters=0", "--set", "batch_size=\(layout.config.batchSize)",
                        "--set", "microbatches=\(layout.config.microbatches)"]
            for s in overrides + settings { args += ["--set", s] }
            let run = try runToEnd(Self.buildDirectory + "/ddp-launch", args)
            XCTAssertEqual(run.status, 0, "\(settings):\n\(run.output)")
            let line = run.output.split(separator: "\n").first { $0.contains("] memory: ") && $0.contains("rank 0 holds") }.map(String.init) ?? ""
            let trainer = line.range(of: #"= (\d+) bytes"#, options: .regularExpression).map { Int(line[$0].dropFirst(2).dropLast(6))! }
            XCTAssertEqual(trainer, layout.stateBytes, "\(layout.name): trainer says \(line)")
        }
    }

    func testPlanCommandPrintsARankedTable() throws {
        let run = try runToEnd(Self.buildDirectory + "/ddp-train", ["plan", configsDirectory + "/tiny-gpt.json", "--data-dir", dataDirectory,
                                                                   "--world", "2", "--memory-per-rank", "2G"])
        XCTAssertEqual(run.status, 0, run.output)
        XCTAssertTrue(run.output.contains("| 1 | "), run.output)
        XCTAssertTrue(run.output.contains("plan: fastest predicted: "), run.output)
        let bad = try runToEnd(Self.buildDirectory + "/ddp-train", ["plan", configsDirectory + "/tiny-gpt.json", "--world", "2", "--memory-per-rank", "lots"])
        XCTAssertNotEqual(bad.status, 0)
        XCTAssertTrue(bad.output.contains("--memory-per-rank"), bad.output)
    }
}
