import Foundation
import NN
import TestSupport
import XCTest

/// Every parallel layout of 4 ranks (oversubscribed on 2 cores: correctness only) trains a 4-layer GPT
/// exactly as one rank with the same global batch: 16 windows per micro-step, 2 micro-steps per step.
/// Data-parallel ranks take their slice of each micro-step's windows, pipelines take the micro-steps
/// as micro-batches, tensor-parallel ranks see their group's windows. Mixture-of-experts models train
/// under expert parallelism and on pipeline stages.
final class HybridLayoutTests: XCTestCase {
    static var buildDirectory: String { URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().path }
    let common = ["--set", "n_layer=4", "--set", "max_iters=10", "--set", "log_interval=1", "--set", "eval_interval=5",
                  "--set", "checkpoint_interval=0", "--set", "verify_replicas=true"]

    func run(_ name: String, _ n: Int, _ extra: [String]) throws -> String {
        let dir = scratchDirectory("hybrid-\(name)")
        let result = try launchTinyGPT(n, common + extra + ["--out-dir", dir])
        XCTAssertEqual(result.status, 0, "\(name):\n\(result.output)")
        return dir
    }

    /// Bound as in the tensor- and pipeline-parallel tests: the layouts differ from one rank only in
    /// the order of float sums (~1e-7 relative per step), so per-step losses agree within 1e-5 relative
    /// over 10 steps and final parameters within 2e-6; a lost micro-batch, a wrong shard or a gradient
    /// summed twice moves the loss by 1e-3 or more.
    func testEveryFourRankLayoutMatchesOneRank() throws {
        let dense = try run("one", 1, ["--set", "batch_size=16", "--set", "grad_accum=2"])
        let layouts: [(String, [String])] = [
            ("dp4", ["--set", "batch_size=4", "--set", "grad_accum=2"]),
            ("dp4-zero1", ["--set", "batch_size=4", "--set", "grad_accum=2", "--set", "zero_stage=1"]),
            ("dp4-zero2", ["--set", "batch_size=4", "--set", "grad_accum=2", "--set", "zero_stage=2"]),
            ("dp4-zero3", ["--set", "batch_size=4", "--set", "grad_accum=2", "--set", "zero_stage=3"]),
            ("tp2-dp2", ["--set", "batch_size=8", "--set", "grad_accum=2", "--set", "tensor_parallel=2"]),
            ("tp2-dp2-zero2", ["--set", "batch_size=8", "--set", "grad_accum=2", "--set", "tensor_parallel=2", "--set", "zero_stage=2"]),
            ("pp2-dp2-zero1", ["--set", "batch_size=8", "--set", "pipeline_parallel=2", "--set", "microbatches=2", "--set", "zero_stage=1"]),
            ("tp2-pp2", ["--set", "batch_size=16", "--set", "tensor_parallel=2", "--set", "pipeline_parallel=2", "--set", "microbatches=2"]),
            ("tp2-pp2-sp-interleaved", ["--set", "batch_size=16", "--set", "tensor_parallel=2", "--set", "pipeline_parallel=2",
                                        "--set", "microbatches=2", "--set", "sequence_parallel=true", "--set", "pipeline_schedule=interleaved",
                                        "--set", "virtual_stages=2"]),
        ]
        for (name, settings) in layouts {
            try assertSameTraining(dense, try run(name, 4, settings), name, steps: 10)
        }
        // The mixture of experts: top-2, dropless (capacity counts a rank's own tokens) and without the
        // load-balancing loss (Switch's f·P is taken over each rank's micro-batch, and a mean of products
        // is not the product of means), the two terms that depend on how the batch is split.
        let moe = ["--set", "n_experts=4", "--set", "moe_top_k=2", "--set", "capacity_factor=0", "--set", "moe_aux_loss_coef=0"]
        let moeOne = try run("moe-one", 1, moe + ["--set", "batch_size=16", "--set", "grad_accum=2"])
        try assertSameTraining(moeOne, try run("ep2-dp2", 4, moe + ["--set", "batch_size=4", "--set", "grad_accum=2", "--set", "expert_parallel=2"]),
                               "ep2-dp2", steps: 10)
        try assertSameTraining(moeOne, try run("moe-pp2-dp2", 4, moe + ["--set", "batch_size=8", "--set", "pipeline_parallel=2", "--set", "microbatches=2"]),
                               "moe pp2-dp2", steps: 10)
        // A pipeline's micro-batch is one rank's micro-step, so with one replica the load-balancing loss
        // and capacity drops see the same tokens: pp 2 (interleaved) equals one rank with both on.
        let routed = ["--set", "n_experts=4", "--set", "moe_top_k=2", "--set", "capacity_factor=1.0", "--set", "moe_every=2"]
        try assertSameTraining(try run("moe-routed-one", 1, routed + ["--set", "batch_size=16", "--set", "grad_accum=2"]),
                               try run("moe-routed-pp2", 2, routed + ["--set", "batch_size=16", "--set", "pipeline_parallel=2", "--set", "microbatches=2",
                                                                      "--set", "pipeline_schedule=interleaved", "--set", "virtual_stages=2"]),
                               "moe pp2 interleaved with aux loss and drops", steps: 10)
    }

    /// Groups of 3 ranks on one host reduce through shared arenas of their own: tp 2 × dp 3 (the data
    /// groups' two-shot allreduces; with ZeRO-1 their reduce-scatters and allgathers) and tp 3 × dp 2
    /// with sequence parallelism (the tensor groups' allreduces, reduce-scatters and all-gathers), each
    /// as one rank with the same global batch, within the bound above. 6 ranks on 2 cores: few steps.
    func testGroupsOfThreeTrainThroughTheirOwnArenasLikeOneRank() throws {
        let short = ["--set", "max_iters=6"]
        let dense = try run("arena-one", 1, short + ["--set", "batch_size=24", "--set", "grad_accum=2"])
        for (name, zero) in [("tp2-dp3", "0"), ("tp2-dp3-zero1", "1")] {
            let dir = scratchDirectory("hybrid-\(name)")
            let result = try launchTinyGPT(6, common + short + ["--set", "batch_size=8", "--set", "grad_accum=2", "--set", "tensor_parallel=2",
                                                               "--set", "zero_stage=\(zero)", "--out-dir", dir])
            XCTAssertEqual(result.status, 0, "\(name):\n\(result.output)")
            if zero == "0" { XCTAssertTrue(result.output.contains("(the group has a shared arena: two-shot"), result.output) }
            try assertSameTraining(dense, dir, name, steps: 6)
        }
        let heads = ["--set", "n_head=3", "--set", "n_embd=48"]
        let denseThree = try run("arena-one-heads3", 1, short + heads + ["--set", "batch_size=24", "--set", "grad_accum=2"])
        let dir = scratchDirectory("hybrid-tp3-dp2-sp")
        let result = try launchTinyGPT(6, common + short + heads + ["--set", "batch_size=12", "--set", "grad_accum=2", "--set", "tensor_parallel=3",
                                                                    "--set", "sequence_parallel=true", "--out-dir", dir])
        XCTAssertEqual(result.status, 0, result.output)
        XCTAssertTrue(result.output.contains("tensor-parallel group, through its shared arena"), result.output)
        try assertSameTraining(denseThree, dir, "tp3-dp2-sp", steps: 6)
    }

    /// Tensor × pipeline: the start-up table shows each rank's coordinates and groups, a stage's
    /// tensor-parallel rank SIGKILLed mid-training stops every rank (named, no orphans), and zb-h1 is
    /// refused with the key.
    func testTensorTimesPipelineLayoutIsShownAndFailsCleanly() throws {
        let result = try launchTinyGPT(4, common + ["--set", "tensor_parallel=2", "--set", "pipeline_parallel=2", "--set", "max_iters=1",
                                                    "--out-dir", scratchDirectory("hybrid-table")])
        XCTAssertEqual(result.status, 0, result.output)
        // rank 3 = tensor 1 + 2 · (data 0 + 1 · pipeline 1): TP group 2,3, DP group itself, PP group 1,3.
        XCTAssertTrue(result.output.contains("| 1 | 0 | 1 | 0 | 2,3 | 3 | 1,3"), result.output)
        try assertKilledRankStopsTheJob(launcher: Self.buildDirectory + "/ddp-launch", ranks: 4, victim: 3,
                                        settings: ["--set", "n_layer=4", "--set", "tensor_parallel=2", "--set", "pipeline_parallel=2",
                                                   "--set", "sequence_parallel=true"],
                                        outDir: scratchDirectory("hybrid-kill"))
        let refused = try launchTinyGPT(4, common + ["--set", "tensor_parallel=2", "--set", "pipeline_parallel=2", "--set", "pipeline_schedule=zb-h1",
                                                     "--out-dir", scratchDirectory("hybrid-zb")])
        XCTAssertNotEqual(refused.status, 0)
        XCTAssertTrue(refused.output.contains("pipeline_schedule") && refused.output.contains("zb-h1"), refused.output)
    }
}
