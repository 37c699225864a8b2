import Foundation
import NN
import TestSupport
import Training
import XCTest

/// Evaluation is split across the data-parallel ranks (each evaluates its share, the sums are added):
/// at iteration 0 every layout holds the same model, so every layout must print one rank's figures.
final class EvaluationTests: XCTestCase {
    static var buildDirectory: String { URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().path }

    func evaluation(_ n: Int, _ config: String, _ settings: [String]) throws -> [String: Double] {
        let dir = scratchDirectory("eval-\(n)")
        let run = try runToEnd(Self.buildDirectory + "/ddp-launch", ["--nproc-per-node", String(n), "--timeout", "30", "--",
                                                                     configsDirectory + "/" + config, "--data-dir", dataDirectory,
                                                                     "--set", "max_iters=0", "--out-dir", dir] + settings)
        XCTAssertEqual(run.status, 0, run.output)
        let lines = try String(contentsOfFile: dir + "/metrics.jsonl", encoding: .utf8).split(separator: "\n")
        for line in lines {
            if let object = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any], let eval = object["eval"] as? [String: Double] {
                return eval
            }
        }
        XCTFail("no evaluation in \(dir)/metrics.jsonl")
        return [:]
    }

    /// The GPT's eval_iters batches (5: uneven over 2 and 3 ranks) dealt out round robin; ZeRO-3 pads the
    /// short ranks with forwards it drops (its gathers are collective); dp 2 x pp 2 and dp 2 x tp 2 split
    /// over the replicas. The MLP's 2,000 held-out images in contiguous parts. Only the float32 order of
    /// the sums differs: 1e-6 relative.
    func testEverySplitPrintsOneRanksFigures() throws {
        let gpt = ["--set", "eval_iters=5", "--set", "n_layer=2"]
        let reference = try evaluation(1, "tiny-gpt.json", gpt)
        XCTAssertEqual(Set(reference.keys), ["train loss", "val loss"])
        for (n, extra) in [(2, [String]()), (3, []), (3, ["--set", "zero_stage=3"]), (4, ["--set", "pipeline_parallel=2"]),
                           (4, ["--set", "tensor_parallel=2"])] {
            let got = try evaluation(n, "tiny-gpt.json", gpt + extra)
            for (name, value) in reference {
                XCTAssertEqual(got[name] ?? .nan, value, accuracy: 1e-6 * abs(value), "\(n) ranks \(extra): \(name)")
            }
        }
        let mlp = ["--set", "epochs=null"]
        let one = try evaluation(1, "mnist-mlp.json", mlp)
        let three = try evaluation(3, "mnist-mlp.json", mlp)
        XCTAssertEqual(three["held-out accuracy %"], one["held-out accuracy %"])
        XCTAssertEqual(three["held-out loss"] ?? .nan, one["held-out loss"] ?? 0, accuracy: 1e-6 * (one["held-out loss"] ?? 1))
    }

    /// Exact GELU is the default (nanoGPT's); checkpoints written before it was, which name no GELU in
    /// their architecture and config, are read as the tanh form they trained with.
    func testExactIsTheDefaultAndOlderCheckpointsReadAsTanh() throws {
        XCTAssertEqual(TrainConfig().gelu, .exact)
        XCTAssertTrue(TrainConfig().architecture.hasSuffix("bias=false gelu=exact"), TrainConfig().architecture)
        XCTAssertEqual(TrainConfig.architecture(of: "gpt n_layer=2 n_head=2 n_embd=32 block_size=32 bias=false"),
                       "gpt n_layer=2 n_head=2 n_embd=32 block_size=32 bias=false gelu=tanh")
        XCTAssertEqual(TrainConfig.architecture(of: "gpt n_layer=2 n_head=2 n_embd=32 block_size=32 bias=true gelu=exact"),
                       "gpt n_layer=2 n_head=2 n_embd=32 block_size=32 bias=true gelu=exact")
        XCTAssertEqual(TrainConfig.architecture(of: "mlp hidden=256 activation=relu"), "mlp hidden=256 activation=relu")
        XCTAssertEqual(try TrainConfig.config(of: #"{"model": "gpt", "n_layer": 2}"#).gelu, .tanh)
        XCTAssertEqual(try TrainConfig.config(of: #"{"model": "gpt", "gelu": "exact"}"#).gelu, .exact)
    }

    /// `gelu: exact` reaches the model: 10 steps end with other parameters than tanh (at initialization
    /// the activations are too small for the forms to differ in float32), close ones; an unknown form
    /// is refused naming the key.
    func testGELUFormIsAModelSetting() throws {
        var finals: [[Float]] = []
        for form in ["tanh", "exact"] {
            let dir = scratchDirectory("gelu-\(form)")
            let run = try runToEnd(Self.buildDirectory + "/ddp-launch", ["--nproc-per-node", "1", "--", configsDirectory + "/tiny-gpt.json",
                                                                         "--data-dir", dataDirectory, "--set", "max_iters=10", "--set", "gelu=\(form)",
                                                                         "--out-dir", dir])
            XCTAssertEqual(run.status, 0, run.output)
            finals.append(try LoadedCheckpoint(path: dir + "/ckpt.safetensors").tensors["transformer.h.0.mlp.c_fc.weight"]!.values)
        }
        let difference = zip(finals[0], finals[1]).map { abs($0 - $1) }.max() ?? 0
        XCTAssertGreaterThan(difference, 0, "gelu=exact trained the same model as tanh")
        XCTAssertLessThan(difference, 1e-2)
        let bad = try runToEnd(Self.buildDirectory + "/ddp-launch", ["--nproc-per-node", "1", "--", configsDirectory + "/tiny-gpt.json",
                                                                     "--data-dir", dataDirectory, "--set", "gelu=erf", "--out-dir", scratchDirectory("gelu-bad")])
        XCTAssertNotEqual(bad.status, 0)
        XCTAssertTrue(bad.output.contains("'gelu'"), bad.output)
    }
}
