import Foundation
import NN
import TestSupport
import XCTest

/// Per-step losses from a run's metrics.jsonl (full precision; the log prints 4 decimals).
func metricsLosses(_ dir: String) throws -> [Double] {
    try String(contentsOfFile: dir + "/metrics.jsonl", encoding: .utf8).split(separator: "\n").compactMap { line in
        let object = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any]
        return object?["loss"] as? Double
    }
}

/// A parallel layout's run against its reference: `steps` per-step losses within `lossBound` relative,
/// and the final checkpoints holding the same tensors, in the one-rank shapes, within `parameterBound`.
func assertSameTraining(_ reference: String, _ dir: String, _ name: String, steps: Int, lossBound: Double = 1e-5,
                        parameterBound: Float = 2e-6, file: StaticString = #filePath, line: UInt = #line) throws {
    let expected = try metricsLosses(reference), got = try metricsLosses(dir)
    XCTAssertEqual(got.count, steps, name, file: file, line: line)
    let worst = zip(expected, got).map { abs($0 - $1) / $0 }.max() ?? 1
    XCTAssertLessThan(worst, lossBound, "\(name): per-step loss differs from the reference by \(worst) relative", file: file, line: line)
    let a = try LoadedCheckpoint(path: reference + "/ckpt.safetensors").tensors, b = try LoadedCheckpoint(path: dir + "/ckpt.safetensors").tensors
    XCTAssertEqual(Set(a.keys), Set(b.keys), name, file: file, line: line)
    var difference: Float = 0
    for (key, tensor) in a {
        XCTAssertEqual(tensor.shape, b[key]?.shape, "\(name): \(key) is stored in the one-rank shape", file: file, line: line)
        for (x, y) in zip(tensor.values, b[key]?.values ?? []) { difference = max(difference, abs(x - y)) }
    }
    XCTAssertLessThan(difference, parameterBound, "\(name): final parameters differ by \(difference)", file: file, line: line)
}

/// `--max-restarts 1` on 2 ranks of `command` (config and settings, writing `dir`), rank 1 SIGKILLed once
/// `until` is printed: the launcher names it and restarts the group, rank 0 resumes from the last
/// checkpoint, the job ends with exactly the tensors of `reference`'s uninterrupted run (bitwise), and
/// nothing is left running.
func assertRestartEndsBitwiseEqual(launcher: String, _ command: [String], dir: String, reference: String, until: String,
                                   file: StaticString = #filePath, line: UInt = #line) throws {
    let (process, handle, head) = try startLauncher(launcher, ["--nproc-per-node", "2", "--timeout", "20", "--max-restarts", "1", "--"]
                                                    + command + ["--out-dir", dir], until: until)
    let pids = launcherRankPIDs(head)
    XCTAssertEqual(pids.count, 2, head, file: file, line: line)
    if pids.count == 2 { kill(pids[1], SIGKILL) }
    let output = head + String(decoding: handle.readDataToEndOfFile(), as: UTF8.self)
    process.waitUntilExit()
    XCTAssertEqual(process.terminationStatus, 0, output, file: file, line: line)
    for expected in ["FAILED: rank 1", "restarting the group (1 of 1)", "restart 1: resuming from the last checkpoint",
                     "all 2 rank(s) finished after 1 restart(s)"] {
        XCTAssertTrue(output.contains(expected), "missing '\(expected)':\n\(output)", file: file, line: line)
    }
    let expected = try LoadedCheckpoint(path: reference + "/ckpt.safetensors").tensors
    let got = try LoadedCheckpoint(path: dir + "/ckpt.safetensors").tensors
    XCTAssertEqual(Set(expected.keys), Set(got.keys), file: file, line: line)
    for (name, tensor) in expected {
        XCTAssertEqual(tensor.values.map(\.bitPattern), got[name]?.values.map(\.bitPattern), "\(name) differs from the uninterrupted run",
                       file: file, line: line)
    }
    XCTAssertEqual(survivors(ofLauncher: process.processIdentifier), [], file: file, line: line)
}

/// `ranks` ranks of the tiny GPT with `settings` under the launcher at `launcher`; once "iter 5/" is
/// printed, rank `victim` is SIGKILLed mid-training: the launcher exits non-zero naming that rank, its
/// pid and the signal, every rank is gone and nothing the launcher started is left running.
func assertKilledRankStopsTheJob(launcher: String, ranks: Int, victim: Int, settings: [String], outDir: String,
                                 file: StaticString = #filePath, line: UInt = #line) throws {
    let (process, handle, head) = try startLauncher(launcher, [
        "--nproc-per-node", String(ranks), "--timeout", "10", "--", configsDirectory + "/tiny-gpt.json", "--data-dir", dataDirectory,
        "--out-dir", outDir, "--set", "max_iters=100000", "--set", "log_interval=1", "--set", "eval_interval=100000"] + settings, until: "iter 5/")
    let pids = launcherRankPIDs(head)
    guard pids.count == ranks else { process.terminate(); return XCTFail("no pids in launcher output:\n\(head)", file: file, line: line) }
    kill(pids[victim], SIGKILL)
    let output = head + String(decoding: handle.readDataToEndOfFile(), as: UTF8.self)
    process.waitUntilExit()
    XCTAssertNotEqual(process.terminationStatus, 0, file: file, line: line)
    XCTAssertTrue(output.contains("FAILED: rank \(victim) (pid \(pids[victim])"), output, file: file, line: line)
    XCTAssertTrue(output.contains("SIGKILL"), output, file: file, line: line)
    for pid in pids { XCTAssertNotEqual(kill(pid, 0), 0, "rank pid \(pid) still alive after the launcher exited", file: file, line: line) }
    XCTAssertEqual(survivors(ofLauncher: process.processIdentifier), [], file: file, line: line)
}
