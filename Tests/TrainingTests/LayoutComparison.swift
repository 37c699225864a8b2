import Foundation
import NN
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
