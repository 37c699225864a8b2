import FoundationEssentials
import Glibc
import Support

/// What a run leaves in out_dir beside its checkpoints (rank 0): metrics.jsonl, one JSON object per
/// logged step or evaluation, and at the end loss-curve.svg. A run that starts at iteration 0 begins
/// a fresh file; a resumed run appends to it.
final class RunRecord {
    let directory: String
    private var fd: Int32 = -1
    private var steps: [(Int, Double)] = []
    private var evaluations: [(Int, [(String, Double)])] = []

    init(directory: String, fresh: Bool) {
        self.directory = directory
        let path = directory + "/metrics.jsonl"
        fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | (fresh ? O_TRUNC : 0), 0o644)
    }

    deinit { if fd >= 0 { close(fd) } }

    /// One line per record; a record that cannot be written (the disk is full) is lost, not the run.
    private func write(_ object: [String: JSONValue]) {
        if fd >= 0 { emitLine(JSONValue.object(object).serialized(), to: fd) }
    }

    func step(iteration: Int, elapsed: Double, loss: Double, learningRate: Double, unitsPerSecond: Double, unitName: String,
              millisecondsPerIteration: Double, exposedMilliseconds: Double?, mfu: Double) {
        // A non-finite loss is written as null (JSON has no NaN).
        var record: [String: JSONValue] = ["iteration": JSONValue(iteration), "elapsed_s": JSONValue(elapsed), "loss": JSONValue(loss),
                                           "lr": JSONValue(learningRate), "\(unitName)_per_s": JSONValue(unitsPerSecond),
                                           "ms_per_iter": JSONValue(millisecondsPerIteration), "mfu": JSONValue(mfu)]
        if let exposedMilliseconds { record["exposed_comm_ms"] = JSONValue(exposedMilliseconds) }
        write(record)
        if loss.isFinite { steps.append((iteration, loss)) }
    }

    func evaluation(iteration: Int, elapsed: Double, figures: [(name: String, value: Double)]) {
        write(["iteration": JSONValue(iteration), "elapsed_s": JSONValue(elapsed),
               "eval": .object(Dictionary(figures.map { ($0.name, JSONValue($0.value)) }, uniquingKeysWith: { a, _ in a }))])
        evaluations.append((iteration, figures.map { ($0.name, $0.value) }))
    }

    /// The training loss (logged steps) and every evaluated loss against the iteration, as SVG.
    func writeLossCurve() {
        let evaluated = evaluations.flatMap { e in e.1.filter { $0.0.contains("loss") }.map { (name: $0.0, x: e.0, y: $0.1) } }
        let xs = steps.map(\.0) + evaluated.map(\.x), ys = steps.map(\.1) + evaluated.map(\.y)
        guard let xMax = xs.max(), let yMin = ys.min(), let yMax = ys.max() else { return }
        let (width, height, left, top, plotWidth, plotHeight) = (640.0, 400.0, 60.0, 30.0, 540.0, 300.0)
        func px(_ x: Int) -> Double { left + plotWidth * Double(x) / Double(max(xMax, 1)) }
        func py(_ y: Double) -> Double { top + plotHeight * (1 - (y - yMin) / max(yMax - yMin, 1e-9)) }
        var svg = "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"\(Int(width))\" height=\"\(Int(height))\" font-family=\"sans-serif\" font-size=\"12\">\n"
        svg += "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
        svg += "<text x=\"\(left)\" y=\"18\">loss against iteration (\(directory))</text>\n"
        svg += "<line x1=\"\(left)\" y1=\"\(top + plotHeight)\" x2=\"\(left + plotWidth)\" y2=\"\(top + plotHeight)\" stroke=\"black\"/>\n"
        svg += "<line x1=\"\(left)\" y1=\"\(top)\" x2=\"\(left)\" y2=\"\(top + plotHeight)\" stroke=\"black\"/>\n"
        for (value, y) in [(yMax, top), (yMin, top + plotHeight)] {
            svg += "<text x=\"5\" y=\"\(y + 4)\">\(format("%.3f", value))</text>\n"
        }
        svg += "<text x=\"\(left + plotWidth - 20)\" y=\"\(top + plotHeight + 18)\">\(xMax)</text>\n"
        func polyline(_ points: [(Int, Double)], _ color: String, _ name: String, _ row: Int) {
            guard !points.isEmpty else { return }
            let coordinates = points.map { format("%.1f,%.1f", px($0.0), py($0.1)) }.joined(separator: " ")
            svg += "<polyline data-series=\"\(name)\" fill=\"none\" stroke=\"\(color)\" stroke-width=\"1.5\" points=\"\(coordinates)\"/>\n"
            svg += "<text x=\"\(left + 10)\" y=\"\(top + plotHeight + 36 + Double(row) * 16)\" fill=\"\(color)\">\(name)</text>\n"
        }
        polyline(steps, "#1f77b4", "training loss (logged steps)", 0)
        let names = evaluated.map(\.name).reduce(into: [String]()) { if !$0.contains($1) { $0.append($1) } }
        for (i, name) in names.enumerated() {
            polyline(evaluated.filter { $0.name == name }.map { ($0.x, $0.y) }, ["#d62728", "#2ca02c", "#9467bd"][i % 3], name, i + 1)
        }
        svg += "</svg>\n"
        try? svg.write(toFile: directory + "/loss-curve.svg", atomically: true, encoding: .utf8)
    }
}
