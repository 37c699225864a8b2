import Collectives
import NN
import Rendezvous
import Tensors

/// Expert parallelism's all-to-alls on the expert group, counting what they move and how long they
/// take (every call is on the critical path: the experts wait for their rows, the tokens for their outputs).
public final class ExpertParallelGroup: ExpertExchange {
    public let group: ProcessGroup
    /// Floats this rank sent to other ranks, seconds spent and calls since the last `resetCounters`.
    public private(set) var floats = 0
    public private(set) var seconds = 0.0
    public private(set) var calls = 0

    public init(group: ProcessGroup) { self.group = group }

    public var rank: Int { group.rank }
    public var size: Int { group.worldSize }

    public func resetCounters() { floats = 0; seconds = 0; calls = 0 }

    public func allToAll(_ send: UnsafeMutableBufferPointer<Float>, sendCounts: [Int], into receive: UnsafeMutableBufferPointer<Float>,
                         receiveCounts: [Int]) throws {
        let start = monotonicSeconds()
        defer {
            floats += sendCounts.reduce(0, +) - sendCounts[group.rank]
            calls += 1
            seconds += monotonicSeconds() - start
        }
        try Collectives.allToAll(send, sendCounts: sendCounts, into: receive, receiveCounts: receiveCounts, group: group)
    }
}
