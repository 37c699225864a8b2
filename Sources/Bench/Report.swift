import Foundation

/// nccl-tests-style table: one row per size and algorithm.
/// In-place columns first (the trainer's use); out-of-place columns after them when measured, so the
/// in-place columns keep their positions for readers that parse the table.
public func formatTable(_ results: [BenchResult], ranks: Int,
                        title: String = "allreduce, float32 sum, in place", redop: String = "sum",
                        timeNote: String = "the slowest rank's mean") -> String {
    let outOfPlace = results.contains { $0.outOfPlaceMicroseconds != nil }
    let extraHeader = outOfPlace ? " " + ["oop time", "algbw", "busbw", "#wrong"].enumerated().map { pad($1, [10, 7, 7, 7][$0]) }.joined(separator: " ") : ""
    let extraUnits = outOfPlace ? " " + [pad("(us)", 10), pad("(GB/s)", 7), pad("(GB/s)", 7), pad("", 7)].joined(separator: " ") : ""
    var lines = ["# \(title), \(ranks) ranks; time is \(timeNote)" + (outOfPlace ? "; then out of place (oop)" : ""),
                 "#" + [pad("size", 11), pad("count", 11), pad("type", 6), pad("redop", 6), pad("algorithm", 17),
                        pad("time(us)", 10), pad("algbw", 7), pad("busbw", 7), pad("#wrong", 7)].joined(separator: " ") + extraHeader,
                 "#" + [pad("(B)", 11), pad("(elements)", 11), pad("", 6), pad("", 6), pad("", 17), pad("", 10),
                        pad("(GB/s)", 7), pad("(GB/s)", 7), pad("", 7)].joined(separator: " ") + extraUnits]
    for r in results {
        var row = " " + [pad(String(r.bytes), 11), pad(String(r.count), 11), pad("float", 6), pad(redop, 6), pad(r.algorithm, 17),
                         pad(String(format: "%.1f", r.microseconds), 10), pad(String(format: "%.2f", r.algbwGBps), 7),
                         pad(String(format: "%.2f", r.busbwGBps), 7), pad(String(r.wrong), 7)].joined(separator: " ")
        if let us = r.outOfPlaceMicroseconds {
            let algbw = Double(r.bytes) / (us * 1e-6) / 1e9, factor = r.algbwGBps > 0 ? r.busbwGBps / r.algbwGBps : 1
            row += " " + [pad(String(format: "%.1f", us), 10), pad(String(format: "%.2f", algbw), 7),
                          pad(String(format: "%.2f", algbw * factor), 7), pad(String(r.outOfPlaceWrong ?? 0), 7)].joined(separator: " ")
        }
        lines.append(row)
    }
    return lines.joined(separator: "\n")
}

func pad(_ s: String, _ width: Int) -> String { String(repeating: " ", count: max(0, width - s.count)) + s }

/// A benchmark run as JSON: its metadata (machine, ranks, date, commit, parameters) and its results.
public struct BenchRun: Codable, Sendable {
    public var metadata: [String: String]
    public var results: [BenchResult]
    public init(metadata: [String: String], results: [BenchResult]) { self.metadata = metadata; self.results = results }
}

public func writeJSON(_ results: [BenchResult], metadata: [String: String] = [:], to path: String) throws {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
    try encoder.encode(BenchRun(metadata: metadata, results: results)).write(to: URL(fileURLWithPath: path))
}
