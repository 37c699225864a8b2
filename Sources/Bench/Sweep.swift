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
    public init(sizes: [Int], algorithms: [AllreduceAlgorithm], iterations: Int, warmup: Int, check: Bool) {
        self.sizes = sizes; self.algorithms = algorithms; self.iterations = iterations; self.warmup = warmup; self.check = check
    }
}

/// Runs the sweep on this rank; every rank gets the same results (times are the slowest rank's).
/// Per size: untimed warm-up, a barrier, `iterations` timed in-place allreduces; then, when checking, one
/// more allreduce of small integers compared exactly with the expected sums (#wrong counts mismatches,
/// summed over ranks). Iteration counts shrink for big messages so a sweep stays short.
public func runSweep(_ plan: SweepPlan, group: ProcessGroup) throws -> [BenchResult] {
    let n = group.worldSize
    var results: [BenchResult] = []
    let capacity = (plan.sizes.max() ?? 4) / 4
    let buffer = UnsafeMutableBufferPointer<Float>.allocate(capacity: max(capacity, 1))
    defer { buffer.deallocate() }
    buffer.initialize(repeating: 1)
    let scalar = UnsafeMutableBufferPointer<Float>.allocate(capacity: 2)
    defer { scalar.deallocate() }
    for algorithm in plan.algorithms {
        for bytes in plan.sizes {
            let count = bytes / 4
            let data = UnsafeMutableBufferPointer(rebasing: buffer[0..<count])
            let iterations = max(5, min(plan.iterations, Int(Double(plan.iterations) * Double(1 << 20) / Double(max(bytes, 1)))))
            for _ in 0..<plan.warmup { try allreduce(data, op: .sum, algorithm: algorithm, group: group) }
            try barrier(group: group)
            let start = Deadline.now()
            for _ in 0..<iterations { try allreduce(data, op: .sum, algorithm: algorithm, group: group) }
            let mean = (Deadline.now() - start) / Double(iterations)
            var wrong = 0
            if plan.check {
                for i in 0..<count { data[i] = Float((group.rank * 7 + i * 13) % 17) - 8 }
                try allreduce(data, op: .sum, algorithm: algorithm, group: group)
                for i in 0..<count {
                    let expected = (0..<n).reduce(Float(0)) { $0 + Float(($1 * 7 + i * 13) % 17) - 8 }
                    if data[i] != expected { wrong += 1 }
                }
            }
            scalar[0] = Float(mean); scalar[1] = Float(wrong)
            try allreduce(scalar, op: .max, algorithm: .halvingDoubling, group: group)
            results.append(BenchResult(algorithm: algorithm.rawValue, bytes: count * 4, ranks: n, seconds: Double(scalar[0]),
                                       wrong: Int(scalar[1])))
        }
    }
    return results
}
