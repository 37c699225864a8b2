import Foundation
import NN
import Training
import XCTest

/// Data-parallel training with real processes through the launcher.
final class DataParallelTests: XCTestCase {
    static var buildDirectory: String { URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().path }

    struct Run { var status: Int32; var output: String }

    /// Runs `ddp-launch --nproc-per-node n -- ddp-train train <config> <args>` and returns its output.
    func launch(_ n: Int, _ config: String, _ args: [String], timeout: Double = 120) throws -> Run {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: Self.buildDirectory + "/ddp-launch")
        process.arguments = ["--nproc-per-node", String(n), "--timeout", "20", "--", config] + args
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        try process.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return Run(status: process.terminationStatus, output: String(decoding: data, as: UTF8.self))
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
    func testRanksWithSplitBatchMatchOneRankWithTheWholeBatch() throws {
        let config = configsDirectory + "/mnist-mlp.json"
        let common = ["--set", "epochs=null", "--set", "max_iters=6", "--set", "eval_interval=1000", "--set", "log_interval=1000",
                      "--data-dir", dataDirectory]
        let reference = temporaryDirectory("ddp-reference")
        let single = try launch(1, config, common + ["--set", "batch_size=48", "--out-dir", reference])
        XCTAssertEqual(single.status, 0, single.output)
        let expected = try parameters(reference)
        for n in [2, 3, 4] {
            for accumulation in [1, 2] {
                for algorithm in ["ring", "tree"] {
                    let dir = temporaryDirectory("ddp-\(n)-\(accumulation)-\(algorithm)")
                    let run = try launch(n, config, common + ["--set", "batch_size=\(48 / n / accumulation)", "--set", "grad_accum=\(accumulation)",
                                                             "--set", "allreduce_algorithm=\(algorithm)", "--set", "verify_replicas=true",
                                                             "--out-dir", dir])
                    XCTAssertEqual(run.status, 0, "n=\(n) accum=\(accumulation) \(algorithm):\n\(run.output)")
                    XCTAssertTrue(run.output.contains("= 48 samples per step (global batch)"), run.output)
                    let got = try parameters(dir)
                    var worst = 0.0
                    for (name, values) in expected {
                        for (a, b) in zip(values, got[name]!) { worst = max(worst, Double(abs(a - b))) }
                    }
                    XCTAssertLessThan(worst, 2e-6, "n=\(n) accum=\(accumulation) \(algorithm): max parameter difference \(worst)")
                }
            }
        }
    }

    func testKilledRankStopsTheJobWithAClearMessageAndNoOrphans() throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: Self.buildDirectory + "/ddp-launch")
        process.arguments = ["--nproc-per-node", "3", "--timeout", "10", "--", configsDirectory + "/tiny-gpt.json",
                             "--data-dir", dataDirectory, "--out-dir", temporaryDirectory("ddp-kill"),
                             "--set", "max_iters=100000", "--set", "log_interval=1", "--set", "eval_interval=100000"]
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        try process.run()
        var output = ""
        var victim: Int32?
        var pids: [Int32] = []
        let handle = pipe.fileHandleForReading
        while victim == nil || !output.contains("iter 5/") {
            let data = handle.availableData
            if data.isEmpty { break }
            output += String(decoding: data, as: UTF8.self)
            pids = output.split(separator: "\n").compactMap { line -> Int32? in
                guard line.hasPrefix("[launcher] rank "), let r = line.range(of: "pid ") else { return nil }
                return Int32(line[r.upperBound...].prefix { $0.isNumber })
            }
            if pids.count == 3 { victim = pids[1] }
        }
        guard let victim else { return XCTFail("no pids in launcher output:\n\(output)") }
        kill(victim, SIGKILL)
        output += String(decoding: handle.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        XCTAssertNotEqual(process.terminationStatus, 0)
        XCTAssertTrue(output.contains("FAILED: rank 1 (pid \(victim)"), output)
        XCTAssertTrue(output.contains("SIGKILL"), output)
        for pid in pids { XCTAssertNotEqual(kill(pid, 0), 0, "rank pid \(pid) still alive after the launcher exited") }
    }
}
