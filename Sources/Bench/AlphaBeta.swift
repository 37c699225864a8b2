import Collectives

/// Least-squares fit of time = alpha + beta * bytes minimizing the relative error (weights 1/t^2):
/// sizes span decades, and an absolute fit would ignore every small message. Both constants are kept
/// non-negative (a negative latency or bandwidth cost is noise, not physics).
public func fitAlphaBeta(_ points: [(bytes: Int, seconds: Double)]) -> LinearCost {
    let usable = points.filter { $0.seconds > 0 }
    guard !usable.isEmpty else { return LinearCost(alpha: 0, beta: 0) }
    var sw = 0.0, swx = 0.0, swxx = 0.0, swt = 0.0, swxt = 0.0
    for p in usable {
        let w = 1 / (p.seconds * p.seconds), x = Double(p.bytes)
        sw += w; swx += w * x; swxx += w * x * x; swt += w * p.seconds; swxt += w * x * p.seconds
    }
    let determinant = sw * swxx - swx * swx
    var alpha = 0.0, beta = 0.0
    if abs(determinant) > 1e-300 * max(1, sw * swxx) {
        alpha = (swt * swxx - swx * swxt) / determinant
        beta = (sw * swxt - swx * swt) / determinant
    }
    if usable.count < 2 || abs(determinant) <= 1e-300 * max(1, sw * swxx) || alpha < 0 || beta < 0 {
        // One constant only: whichever alone explains the data better.
        let alphaOnly = swt / sw
        let betaOnly = swxx > 0 ? swxt / swxx : 0
        func error(_ a: Double, _ b: Double) -> Double {
            usable.reduce(0) { let r = (a + b * Double($1.bytes) - $1.seconds) / $1.seconds; return $0 + r * r }
        }
        return error(alphaOnly, 0) <= error(0, betaOnly) ? LinearCost(alpha: alphaOnly, beta: 0) : LinearCost(alpha: 0, beta: betaOnly)
    }
    return LinearCost(alpha: alpha, beta: beta)
}

/// Fits every algorithm's results (auto's excluded: it is what the table is for).
public func fitTuningTable(_ results: [BenchResult], worldSize: Int, reductionSecondsPerByte: Double, measuredOn: String) -> TuningTable {
    var models: [String: LinearCost] = [:]
    for name in Set(results.map(\.algorithm)) where name != AllreduceAlgorithm.auto.rawValue {
        models[name] = fitAlphaBeta(results.filter { $0.algorithm == name }.map { ($0.bytes, $0.microseconds * 1e-6) })
    }
    return TuningTable(worldSize: worldSize, models: models, reductionSecondsPerByte: reductionSecondsPerByte, measuredOn: measuredOn)
}

/// Human-readable model: constants per algorithm, then the crossover sizes.
public func describeModel(_ table: TuningTable) -> [String] {
    var lines = ["# alpha-beta model, \(table.worldSize) ranks: time = alpha + beta * bytes (beta includes the reduction)"]
    for (name, cost) in table.models.sorted(by: { $0.key < $1.key }) {
        let rate = cost.beta > 0 ? String(format: "%.2f GB/s", 1 / cost.beta / 1e9) : "unbounded"
        lines.append("#   " + name.padding(toLength: 17, withPad: " ", startingAt: 0) + String(format: " alpha %8.1f us   1/beta ", cost.alpha * 1e6) + rate)
    }
    if table.reductionSecondsPerByte > 0 {
        lines.append(String(format: "#   local float32 sum alone: %.2f GB/s (reduction cost %.3f ns/byte)",
                            1 / table.reductionSecondsPerByte / 1e9, table.reductionSecondsPerByte * 1e9))
    }
    let crossings = table.crossovers()
    if crossings.isEmpty { lines.append("#   no crossovers: one algorithm is predicted fastest at every size") }
    for c in crossings {
        lines.append("#   \(c.faster) beats \(c.slower) below \(formatBytes(Int(c.bytes.rounded())))")
    }
    return lines
}

/// 4096 -> "4K", 1048576 -> "1M", 1500 -> "1500".
public func formatBytes(_ bytes: Int) -> String {
    for (unit, scale) in [("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)] where bytes >= scale {
        let value = Double(bytes) / Double(scale)
        return value == value.rounded() ? "\(Int(value))\(unit)" : String(format: "%.1f%@", value, unit)
    }
    return String(bytes)
}

/// What auto picked at one size, its time and the best measured algorithm's, re-measured side by side.
public struct AutoCheck: Sendable {
    public var bytes: Int
    public var picked: String
    public var autoMicroseconds: Double
    public var best: String
    public var bestMicroseconds: Double
    public var ratio: Double { autoMicroseconds / bestMicroseconds }
    public init(bytes: Int, picked: String, autoMicroseconds: Double, best: String, bestMicroseconds: Double) {
        self.bytes = bytes; self.picked = picked; self.autoMicroseconds = autoMicroseconds; self.best = best; self.bestMicroseconds = bestMicroseconds
    }
}

public func describeAutoChecks(_ checks: [AutoCheck]) -> [String] {
    ["# auto (model above) against the best measured algorithm, re-measured side by side (goal: within 5%):"]
        + checks.map { c in
            "#   " + pad(formatBytes(c.bytes), 6) + "  auto -> " + c.picked.padding(toLength: 17, withPad: " ", startingAt: 0)
                + String(format: "%9.1f us; best ", c.autoMicroseconds) + c.best.padding(toLength: 17, withPad: " ", startingAt: 0)
                + String(format: "%9.1f us: %.3fx", c.bestMicroseconds, c.ratio)
                + (c.ratio <= 1.05 ? "" : c.picked == c.best ? "  (same algorithm: the difference is noise)" : "  (more than 5% slower)")
        }
}
