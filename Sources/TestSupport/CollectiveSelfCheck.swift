import Collectives
import Foundation
import Rendezvous
import Transport

/// What one rank of a multi-process collective check runs (the collective-check executable is a thin
/// wrapper). Inputs are small integers, so sums are exact in float32 and checks need no tolerance;
/// averages are compared with a tolerance and, like everything else, checked to be bitwise identical
/// on every rank by allgathering a checksum of the result.
public struct CollectiveCheckPlan: Sendable {
    public var algorithms: [AllreduceAlgorithm] = [.ring, .tree, .doubleTree, .halvingDoubling, .twoShot]
    public var counts: [Int] = [0, 1, 7, 1000, (1 << 20) + 3]
    public var ops: [ReduceOp] = [.sum, .max, .average]
    public var alsoOtherCollectives = true
    /// bf16 on the wire: the inputs' sums stay small integers, exact in bf16, so only averages round.
    public var wire: WireFormat = .float32
    /// Repeat forever (until killed) one allreduce of the first count: for fault tests.
    public var loop = false
    public init() {}
}

/// Integer-valued input of `rank` at element i: exact under float32 sums for any world size we test.
@inline(__always) public func checkInput(rank: Int, index i: Int) -> Float { Float((rank * 7 + i * 13) % 17) - 8 }

public enum CheckFailure: Error, CustomStringConvertible {
    case wrong(String)
    public var description: String { switch self { case .wrong(let s): return s } }
}

/// Runs the plan on this rank; returns the number of checks passed or throws the first failure.
public func runCollectiveCheck(_ plan: CollectiveCheckPlan, group: ProcessGroup, log: (String) -> Void) throws -> Int {
    let n = group.worldSize, rank = group.rank
    var checks = 0
    if plan.loop {
        let count = plan.counts.first ?? 1 << 20
        let buffer = UnsafeMutableBufferPointer<Float>.allocate(capacity: max(count, 1))
        log("rank \(rank): looping allreduce of \(count) floats")
        var iteration = 0
        while true {
            for i in 0..<count { buffer[i] = checkInput(rank: rank, index: i) }
            try allreduce(UnsafeMutableBufferPointer(rebasing: buffer[0..<count]), op: .sum,
                          algorithm: plan.algorithms.first ?? .ring, group: group)
            iteration += 1
            if iteration == 1 { log("rank \(rank): READY") }
        }
    }
    for algorithm in plan.algorithms {
        for count in plan.counts {
            for op in plan.ops {
                let buffer = UnsafeMutableBufferPointer<Float>.allocate(capacity: max(count, 1))
                defer { buffer.deallocate() }
                for i in 0..<count { buffer[i] = checkInput(rank: rank, index: i) }
                try allreduce(UnsafeMutableBufferPointer(rebasing: buffer[0..<count]), op: op, algorithm: algorithm,
                              wire: plan.wire, group: group)
                let what = "\(plan.wire == .bfloat16 ? "bf16 " : "")\(algorithm.rawValue) allreduce \(op.rawValue) of \(count) floats on \(n) ranks"
                for i in 0..<count {
                    var expected = 0.0
                    switch op {
                    case .sum: expected = (0..<n).reduce(0.0) { $0 + Double(checkInput(rank: $1, index: i)) }
                    case .average: expected = (0..<n).reduce(0.0) { $0 + Double(checkInput(rank: $1, index: i)) } / Double(n)
                    case .max: expected = (0..<n).map { Double(checkInput(rank: $0, index: i)) }.max()!
                    }
                    let relative = plan.wire == .bfloat16 ? 1.0 / 256 : 1e-5
                    let tolerance = op == .average ? relative * max(1, abs(expected)) : 0
                    if abs(Double(buffer[i]) - expected) > tolerance {
                        throw CheckFailure.wrong("\(what): element \(i) is \(buffer[i]), expected \(expected) (rank \(rank))")
                    }
                }
                try checkIdentical(UnsafeMutableBufferPointer(rebasing: buffer[0..<count]), group: group, what: what)
                checks += 1
            }
        }
    }
    if plan.alsoOtherCollectives {
        for count in plan.counts {
            let buffer = UnsafeMutableBufferPointer<Float>.allocate(capacity: max(count, 1))
            defer { buffer.deallocate() }
            let whole = UnsafeMutableBufferPointer(rebasing: buffer[0..<count])
            // Broadcast from the last rank.
            for i in 0..<count { whole[i] = rank == n - 1 ? checkInput(rank: n - 1, index: i) : -99 }
            try broadcast(whole, root: n - 1, group: group)
            for i in 0..<count where whole[i] != checkInput(rank: n - 1, index: i) {
                throw CheckFailure.wrong("broadcast of \(count) floats: element \(i) is \(whole[i]) on rank \(rank)")
            }
            // Allgather: segment r comes from rank r.
            for i in 0..<count { whole[i] = segmentRange(count: count, parts: n, index: rank).contains(i) ? checkInput(rank: rank, index: i) : -99 }
            try allgather(whole, group: group)
            for r in 0..<n { for i in segmentRange(count: count, parts: n, index: r) where whole[i] != checkInput(rank: r, index: i) {
                throw CheckFailure.wrong("allgather of \(count) floats: element \(i) (from rank \(r)) is \(whole[i]) on rank \(rank)")
            } }
            // Reduce-scatter: our segment holds the sum.
            for i in 0..<count { whole[i] = checkInput(rank: rank, index: i) }
            try reduceScatter(whole, op: .sum, wire: plan.wire, group: group)
            for i in segmentRange(count: count, parts: n, index: rank) {
                let expected = (0..<n).reduce(Float(0)) { $0 + checkInput(rank: $1, index: i) }
                if whole[i] != expected { throw CheckFailure.wrong("reduce-scatter of \(count) floats: element \(i) is \(whole[i]), expected \(expected) on rank \(rank)") }
            }
            if plan.wire == .bfloat16 && n > 1 {
                // Accumulation must be in float32, not bf16. For each element the owner of its segment gives
                // 0.125 + 2^-12 (not bf16-exact) and the next rank 32: in float32 the sum 32.1252 rounds (the
                // owner's final rounding) to 32.25; had the owner's value been rounded to bf16 first (0.125),
                // 32.125 would be a tie and round to even, 32.0.
                let own = segmentRange(count: count, parts: n, index: rank)
                for i in 0..<count {
                    let owner = (0..<n).first { segmentRange(count: count, parts: n, index: $0).contains(i) }!
                    whole[i] = rank == owner ? 0.125 + 0x1p-12 : rank == (owner + 1) % n ? 32 : 0
                }
                try reduceScatter(whole, op: .sum, wire: plan.wire, group: group)
                for i in own where whole[i] != 32.25 {
                    throw CheckFailure.wrong("bf16 reduce-scatter of \(count) floats: element \(i) is \(whole[i]), expected 32.25 on rank \(rank) (accumulated in bf16?)")
                }
                checks += 1
            }
            try barrier(group: group)
            checks += 4
        }
    }
    return checks
}

/// Requires every rank's result to be bitwise identical to rank 0's.
func checkIdentical(_ result: UnsafeMutableBufferPointer<Float>, group: ProcessGroup, what: String) throws {
    if let r = try firstRankDiffering(checksum(of: result), group: group) {
        throw CheckFailure.wrong("\(what): rank \(r)'s result differs bitwise from rank 0's")
    }
}
