import Collectives
import Foundation
import Rendezvous
import Transport

public struct SweepPlan: Sendable {
    public var sizes: [Int]
    public var algorithms: [AllreduceAlgorithm]
    public var iterations: Int
    public var warmup: Int
    public var check: Bool
    /// Timed trials per size and algorithm, interleaved across algorithms; the median is reported.
    public var trials: Int
    /// The table `auto` consults.
    public var tuning: TuningTable?
    /// nccl-tests' -o and -d: the reduction and the wire format (bf16 runs the ring).
    public var op: ReduceOp = .sum
    public var wire: WireFormat = .float32
    /// nccl-tests' -a: how one trial's time is taken over the ranks.
    public var aggregation: TimeAggregation = .slowest
    /// Also time the allreduce out of place (nccl-tests' other column): the input copied into the
    /// result buffer, then reduced there, the input left untouched.
    public var outOfPlace = false
    /// Busy work before every timed call, not timed (0: back to back): a step's collectives follow
    /// compute, and on shared cores a receive that slept through its bytes' wire time then waits for a
    /// core (two 2-host allreduces at once on 4 namespace hosts, 2 cores: 1.6-1.7 ms more per call).
    public var gapSeconds = 0.0
    public init(sizes: [Int], algorithms: [AllreduceAlgorithm], iterations: Int, warmup: Int, check: Bool, trials: Int = 5,
                tuning: TuningTable? = nil) {
        self.sizes = sizes; self.algorithms = algorithms; self.iterations = iterations; self.warmup = warmup; self.check = check
        self.trials = max(1, trials); self.tuning = tuning
    }
}

/// Runs the sweep on this rank; every rank gets the same results (times are the slowest rank's).
/// Per size: untimed warm-up of every algorithm, then `trials` rounds in which each algorithm in turn
/// runs its timed allreduces after a barrier (interleaving spreads a busy machine's noise over all
/// algorithms alike); the median trial is reported. The timed buffer holds zeros, so repeated sums stay
/// finite, and it is checked after every trial (a stray byte would show as non-zero). When checking,
/// one more allreduce of small integers is compared exactly with sums computed here; mismatches are
/// counted over ranks through the rendezvous store, not through a collective under test (#wrong).
/// Iteration counts shrink for big messages so a sweep stays short.
public func runSweep(_ plan: SweepPlan, group: ProcessGroup) throws -> [BenchResult] {
    let n = group.worldSize
    var results: [BenchResult] = []
    let capacity = (plan.sizes.max() ?? 4) / 4
    let buffer = UnsafeMutableBufferPointer<Float>.allocate(capacity: max(capacity, 1))
    let source = UnsafeMutableBufferPointer<Float>.allocate(capacity: max(capacity, 1))
    defer { buffer.deallocate(); source.deallocate() }
    source.initialize(repeating: 0)
    buffer.initialize(repeating: 0)
    let scalar = UnsafeMutableBufferPointer<Float>.allocate(capacity: 2)
    defer { scalar.deallocate() }
    /// Whether a checked result is wrong: the expected value is computed here from the inputs' formula,
    /// in Double. Sums and maxima of these small integers are exact in float32 and bf16; an average is
    /// held to one rounding.
    func isWrong(_ value: Float, index i: Int) -> Bool {
        let inputs = (0..<n).map { Double(($0 * 7 + i * 13) % 17) - 8 }
        let expected = plan.op == .max ? inputs.max()! : inputs.reduce(0, +) / (plan.op == .average ? Double(n) : 1)
        let tolerance = plan.op == .average ? (plan.wire == .bfloat16 ? 0x1p-8 : 0x1p-22) * max(1, abs(expected)) : 0
        return abs(Double(value) - expected) > tolerance
    }
    for bytes in plan.sizes {
        let count = bytes / 4
        let data = UnsafeMutableBufferPointer(rebasing: buffer[0..<count])
        let iterations = iterationsPerTrial(iterations: plan.iterations, trials: plan.trials, bytes: bytes)
        let options = plan.algorithms.map { CollectiveOptions(algorithm: $0, wire: plan.wire, tuning: plan.tuning) }
        for option in options {
            for _ in 0..<plan.warmup { try allreduce(data, op: plan.op, options: option, group: group) }
        }
        var trialTimes = [[Double]](repeating: [], count: plan.algorithms.count)
        var outOfPlaceTimes = [[Double]](repeating: [], count: plan.algorithms.count)
        let input = UnsafeMutableBufferPointer(rebasing: source[0..<count])
        var stray = [Int](repeating: 0, count: plan.algorithms.count)
        for _ in 0..<plan.trials {
            for (a, option) in options.enumerated() {
                try barrier(group: group)
                var mine = 0.0
                if plan.gapSeconds > 0 {
                    for _ in 0..<iterations {
                        spin(seconds: plan.gapSeconds)
                        let start = Deadline.now()
                        try allreduce(data, op: plan.op, options: option, group: group)
                        mine += (Deadline.now() - start) / Double(iterations)
                    }
                } else {
                    let start = Deadline.now()
                    for _ in 0..<iterations { try allreduce(data, op: plan.op, options: option, group: group) }
                    mine = (Deadline.now() - start) / Double(iterations)
                }
                stray[a] += data.reduce(0) { $0 + ($1 == 0 ? 0 : 1) }
                trialTimes[a].append(try aggregate(mine, plan.aggregation, group: group, scalar: scalar))
                if plan.outOfPlace {
                    try barrier(group: group)
                    let begin = Deadline.now()
                    for _ in 0..<iterations {
                        _ = data.update(fromContentsOf: input)
                        try allreduce(data, op: plan.op, options: option, group: group)
                    }
                    let each = (Deadline.now() - begin) / Double(iterations)
                    stray[a] += data.reduce(0) { $0 + ($1 == 0 ? 0 : 1) }
                    outOfPlaceTimes[a].append(try aggregate(each, plan.aggregation, group: group, scalar: scalar))
                }
            }
        }
        for (a, algorithm) in plan.algorithms.enumerated() {
            var wrong = 0
            if plan.check {
                for i in 0..<count { data[i] = Float((group.rank * 7 + i * 13) % 17) - 8 }
                try allreduce(data, op: plan.op, options: options[a], group: group)
                for i in 0..<count where isWrong(data[i], index: i) { wrong += 1 }
                data.update(repeating: 0)
            }
            var outOfPlaceWrong = 0
            if plan.outOfPlace && plan.check {
                // The input must come through unchanged and the result must match, as in place.
                for i in 0..<count { input[i] = Float((group.rank * 7 + i * 13) % 17) - 8 }
                _ = data.update(fromContentsOf: input)
                try allreduce(data, op: plan.op, options: options[a], group: group)
                for i in 0..<count {
                    if input[i] != Float((group.rank * 7 + i * 13) % 17) - 8 { outOfPlaceWrong += 1 }
                    if isWrong(data[i], index: i) { outOfPlaceWrong += 1 }
                }
                input.update(repeating: 0)
                data.update(repeating: 0)
            }
            wrong = try countOverRanks(wrong + stray[a], key: "wrong/\(bytes)/\(algorithm.rawValue)", group: group)
            let sorted = trialTimes[a].sorted()
            var result = BenchResult(algorithm: algorithm.rawValue, bytes: count * 4, ranks: n, seconds: sorted[sorted.count / 2], wrong: wrong)
            if plan.outOfPlace {
                let oop = outOfPlaceTimes[a].sorted()
                result.outOfPlaceMicroseconds = oop[oop.count / 2] * 1e6
                result.outOfPlaceWrong = try countOverRanks(outOfPlaceWrong, key: "oop-wrong/\(bytes)/\(algorithm.rawValue)", group: group)
            }
            results.append(result)
        }
    }
    // Table order: by algorithm, then size.
    let order = Dictionary(uniqueKeysWithValues: plan.algorithms.enumerated().map { ($1.rawValue, $0) })
    return results.sorted { (order[$0.algorithm]!, $0.bytes) < (order[$1.algorithm]!, $1.bytes) }
}

/// Keeps the core busy for `seconds`, as a step's compute does between its collectives.
func spin(seconds: Double) {
    let end = Deadline.now() + seconds
    var x: Float = 1
    while Deadline.now() < end {
        for _ in 0..<1000 { x = x * 1.0000001 + 1e-7 }
    }
    if x == 0 { print("") }  // keeps the work from being optimized away
}

/// Timed calls per trial: `iterations` in all, fewer for messages over 1 MiB (so a sweep stays short),
/// spread over the trials, at least 3.
func iterationsPerTrial(iterations: Int, trials: Int, bytes: Int) -> Int {
    let scaled = Int(Double(iterations) * Double(1 << 20) / Double(max(bytes, 1)))
    return max(3, min(iterations, scaled) / trials)
}

/// nccl-tests' -a: which rank's time a trial reports (0 rank 0, 1 the mean, 2 the fastest, 3 the slowest).
public enum TimeAggregation: Int, Sendable, CaseIterable {
    case rank0 = 0, mean = 1, fastest = 2, slowest = 3
}

/// One trial's per-call time as `aggregation` takes it over the ranks (every rank returns the same).
func aggregate(_ seconds: Double, _ aggregation: TimeAggregation, group: ProcessGroup, scalar: UnsafeMutableBufferPointer<Float>) throws -> Double {
    let one = UnsafeMutableBufferPointer(rebasing: scalar[0..<1])
    switch aggregation {
    case .rank0:
        one[0] = Float(seconds)
        try broadcast(one, root: 0, group: group)
    case .mean:
        one[0] = Float(seconds)
        try allreduce(one, op: .average, algorithm: .halvingDoubling, group: group)
    case .fastest:
        one[0] = Float(-seconds)
        try allreduce(one, op: .max, algorithm: .halvingDoubling, group: group)
        one[0] = -one[0]
    case .slowest:
        one[0] = Float(seconds)
        try allreduce(one, op: .max, algorithm: .halvingDoubling, group: group)
    }
    return Double(one[0])
}

/// The sum of `count` over every rank, through the rendezvous store (so a wrong collective cannot hide
/// its own errors); every rank returns it. A group without a store (one rank) returns `count`.
func countOverRanks(_ count: Int, key: String, group: ProcessGroup) throws -> Int {
    guard let store = group.store, group.worldSize > 1 else { return count }
    // A fresh tag per call (every rank calls in the same order), so repeated sweeps never share a key.
    let name = "bench/\(group.nextTag())/\(key)"
    try store.add(name, Int64(count))
    try store.add(name + "/reported", 1)
    let deadline = Deadline(seconds: group.policy.timeoutSeconds)
    while try store.add(name + "/reported", 0) < Int64(group.worldSize) {
        if deadline.hasPassed { throw TransportError(.rendezvous("ranks did not report their check of \(key)"), operation: "bench check") }
        usleep(200)
    }
    return Int(try store.add(name, 0))
}
