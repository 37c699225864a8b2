import Foundation
import NN
import TestSupport
import XCTest

/// Universal checkpoints: the single safetensors file is the interchange format between layouts. A
/// checkpoint written by one layout, loaded by another and written again at once (no step between)
/// holds byte-identical parameters and optimizer state: every layout scatters the full tensors into its
/// shards and pieces and gathers them back exactly.
final class UniversalCheckpointTests: XCTestCase {
    let common = ["--set", "log_interval=1", "--set", "eval_interval=1000", "--set", "checkpoint_interval=0", "--set", "max_iters=6"]

    func launch(_ n: Int, _ args: [String]) throws -> (status: Int32, output: String, pid: Int32) {
        try launchTinyGPT(n, common + args)
    }

    /// Every tensor of two checkpoints, bit for bit, and the same optimizer step count.
    func assertSameState(_ a: String, _ b: String, _ name: String, file: StaticString = #filePath, line: UInt = #line) throws {
        let x = try LoadedCheckpoint(path: a), y = try LoadedCheckpoint(path: b)
        XCTAssertEqual(Set(x.tensors.keys), Set(y.tensors.keys), name, file: file, line: line)
        XCTAssertTrue(x.tensors.keys.contains { $0.hasPrefix("optimizer.") }, "\(name): no optimizer state", file: file, line: line)
        for (key, tensor) in x.tensors {
            XCTAssertEqual(tensor.shape, y.tensors[key]?.shape, "\(name): \(key)", file: file, line: line)
            XCTAssertTrue(tensor.values.map(\.bitPattern) == y.tensors[key]?.values.map(\.bitPattern), "\(name): \(key) changed", file: file, line: line)
        }
        XCTAssertEqual(x.metadata["optimizer_steps"], y.metadata["optimizer_steps"], name, file: file, line: line)
        XCTAssertEqual(x.metadata["iteration"], "6", name, file: file, line: line)
    }

    /// A chain through eight layouts of the dense GPT, each loading the previous one's checkpoint at
    /// iteration 6 and writing its own: dp 2 → tp 2 → pp 2 (1F1B) → dp 2 × pp 2 ZeRO-1 → dp 2 ZeRO-1 → dp 4 ZeRO-3 →
    /// dp 2 × tp 2 with sequence parallelism → tp 2 × pp 2 → the same with sequence parallelism → one rank; then a MoE chain ep 2 → ep 1 with ZeRO-1 → ep 4 → pp 2 × ep 2 with ZeRO-1 → tp 2 × pp 2 with sequence parallelism → one rank.
    func testCheckpointsMoveBetweenLayoutsByteIdentical() throws {
        func chain(_ steps: [(name: String, ranks: Int, settings: [String])], extra: [String] = []) throws {
            var previous: String?
            for step in steps {
                let dir = scratchDirectory("universal-\(step.name)")
                var args = extra + step.settings + ["--out-dir", dir]
                if let previous {
                    try FileManager.default.copyItem(atPath: previous, toPath: dir + "/ckpt.safetensors")
                    args.append("--resume")
                }
                let result = try launch(step.ranks, args)
                XCTAssertEqual(result.status, 0, "\(step.name):\n\(result.output)")
                if let previous {
                    XCTAssertTrue(result.output.contains("resumed from \(dir)/ckpt.safetensors at iteration 6"), result.output)
                    try assertSameState(previous, dir + "/ckpt.safetensors", "\(step.name) after \(previous)")
                }
                previous = dir + "/ckpt.safetensors"
            }
        }
        try chain([("dp2", 2, []),
                   ("tp2", 2, ["--set", "tensor_parallel=2"]),
                   ("pp2", 2, ["--set", "pipeline_parallel=2", "--set", "microbatches=2"]),
                   ("dp2-pp2-zero1", 4, ["--set", "pipeline_parallel=2", "--set", "microbatches=2", "--set", "zero_stage=1"]),
                   ("dp2-zero1", 2, ["--set", "zero_stage=1"]),
                   ("dp4-zero3", 4, ["--set", "zero_stage=3"]),
                   ("dp2-tp2-sp", 4, ["--set", "tensor_parallel=2", "--set", "sequence_parallel=true"]),
                   ("tp2-pp2", 4, ["--set", "tensor_parallel=2", "--set", "pipeline_parallel=2", "--set", "microbatches=2"]),
                   ("tp2-pp2-sp", 4, ["--set", "tensor_parallel=2", "--set", "pipeline_parallel=2", "--set", "microbatches=2",
                                      "--set", "sequence_parallel=true"]),
                   ("one", 1, [])])
        try chain([("moe-ep2", 2, ["--set", "expert_parallel=2"]),
                   ("moe-ep1-zero1", 2, ["--set", "zero_stage=1"]),
                   ("moe-ep4", 4, ["--set", "expert_parallel=4"]),
                   ("moe-pp2-ep2-zero1", 4, ["--set", "pipeline_parallel=2", "--set", "microbatches=2", "--set", "expert_parallel=2",
                                             "--set", "zero_stage=1"]),
                   ("moe-tp2-pp2-sp", 4, ["--set", "tensor_parallel=2", "--set", "pipeline_parallel=2", "--set", "microbatches=2",
                                          "--set", "sequence_parallel=true"]),
                   ("moe-one", 1, [])],
                  extra: ["--set", "n_experts=4", "--set", "moe_top_k=2"])
    }
}
