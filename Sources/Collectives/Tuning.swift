import FoundationEssentials
import Glibc

// The alpha-beta cost model `auto` chooses by: per algorithm, time(bytes) = alpha + beta * bytes, fitted
// by allreduce-bench from measurements at one world size (beta folds in the reduction cost; the bench
// measures that separately and prints it). Stored as JSON so trainers and benchmarks load the same table.

/// time(bytes) = alpha + beta * bytes, in seconds.
public struct LinearCost: Codable, Sendable, Equatable {
    public var alpha: Double
    public var beta: Double
    public init(alpha: Double, beta: Double) { self.alpha = alpha; self.beta = beta }
    public func seconds(bytes: Int) -> Double { alpha + beta * Double(bytes) }
}

/// Fitted models for one world size (and the setting they were measured in, for the reader).
public struct TuningTable: Codable, Sendable, Equatable {
    public var worldSize: Int
    public var models: [String: LinearCost]
    /// Seconds per byte of the local reduction (float32 sum), measured alone.
    public var reductionSecondsPerByte: Double
    public var measuredOn: String

    public init(worldSize: Int, models: [String: LinearCost], reductionSecondsPerByte: Double = 0, measuredOn: String = "") {
        self.worldSize = worldSize; self.models = models
        self.reductionSecondsPerByte = reductionSecondsPerByte; self.measuredOn = measuredOn
    }

    /// The algorithm the model predicts fastest for `bytes` (ties: name order, so every rank agrees).
    public func best(bytes: Int) -> AllreduceAlgorithm? { Self.fastest(candidates, bytes: bytes) }

    /// The models of real algorithms (auto excluded), in name order.
    public var candidates: [(algorithm: AllreduceAlgorithm, cost: LinearCost)] {
        models.sorted { $0.key < $1.key }.compactMap { name, cost in
            AllreduceAlgorithm(rawValue: name).flatMap { $0 == .auto ? nil : ($0, cost) }
        }
    }

    /// The first candidate with the smallest predicted time.
    static func fastest(_ candidates: [(algorithm: AllreduceAlgorithm, cost: LinearCost)], bytes: Int) -> AllreduceAlgorithm? {
        var best: (algorithm: AllreduceAlgorithm, seconds: Double)?
        for (algorithm, cost) in candidates {
            let t = cost.seconds(bytes: bytes)
            if best == nil || t < best!.seconds { best = (algorithm, t) }
        }
        return best?.algorithm
    }

    /// Sizes where the predicted times of two algorithms cross (a over b below, b over a above).
    public func crossovers() -> [(faster: String, slower: String, bytes: Double)] {
        let names = models.keys.sorted()
        var out: [(String, String, Double)] = []
        for (i, a) in names.enumerated() {
            for b in names[(i + 1)...] {
                let ca = models[a]!, cb = models[b]!
                guard ca.beta != cb.beta else { continue }
                let x = (cb.alpha - ca.alpha) / (ca.beta - cb.beta)
                guard x > 0 && x.isFinite else { continue }
                // Below x the one with the smaller alpha wins.
                out.append(ca.alpha < cb.alpha ? (a, b, x) : (b, a, x))
            }
        }
        return out.sorted { $0.2 < $1.2 }
    }

    public static func load(path: String) throws -> TuningTable {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw TuningError("cannot read allreduce tuning file \(path)")
        }
        do { return try JSONDecoder().decode(TuningTable.self, from: data) } catch {
            throw TuningError("\(path) is not an allreduce tuning table: \(error)")
        }
    }

    public func write(to path: String) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        try encoder.encode(self).write(to: URL(fileURLWithPath: path))
    }
}

public struct TuningError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// How a program's collectives run: the allreduce algorithm (auto picks per message size, from the
/// tuning table when one measured at this world size is given, else a fixed rule) and the wire format.
/// A value passed to each call: no process-wide state, so two groups may run with different options.
public struct CollectiveOptions: Sendable {
    public var algorithm: AllreduceAlgorithm
    public var wire: WireFormat
    /// The alpha-beta table auto consults (allreduce-bench --tuning writes one).
    public var tuning: TuningTable? { didSet { candidates = tuning?.candidates ?? [] } }
    /// The table's models, decoded once: a choice runs per allreduce.
    private var candidates: [(algorithm: AllreduceAlgorithm, cost: LinearCost)]

    public init(algorithm: AllreduceAlgorithm = .auto, wire: WireFormat = .float32, tuning: TuningTable? = nil) {
        self.algorithm = algorithm; self.wire = wire; self.tuning = tuning
        candidates = tuning?.candidates ?? []
    }

    /// The algorithm an allreduce of `bytes` runs on a group of `worldSize`. Without a shared arena (ranks
    /// on several hosts, lanes off, a sub-group) two-shot cannot run: auto then picks the table's best of
    /// the others, or the fixed rule's, and two-shot asked for by name runs what auto would.
    public func algorithm(bytes: Int, worldSize: Int, sharedArena: Bool = false) -> AllreduceAlgorithm {
        guard algorithm == .auto || (algorithm == .twoShot && !sharedArena) else { return algorithm }
        if tuning?.worldSize == worldSize,
           let best = TuningTable.fastest(sharedArena ? candidates : candidates.filter { $0.algorithm != .twoShot }, bytes: bytes) {
            return best
        }
        return fixedRule(bytes: bytes, sharedArena: sharedArena)
    }

    /// The table SWIFT_DDP_TUNING names (WorkerEnvironment.tuningPath), for programs that take their
    /// options from the environment (a path that cannot be read is an error naming the variable).
    public static func tuning(fromEnvironmentPath path: String?) throws -> TuningTable? {
        guard let path else { return nil }
        do { return try TuningTable.load(path: path) } catch { throw TuningError("SWIFT_DDP_TUNING: \(error)") }
    }
}
