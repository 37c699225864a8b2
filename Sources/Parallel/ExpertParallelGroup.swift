import Collectives
import NN
import Rendezvous
import Tensors

/// Expert parallelism's all-to-alls on the expert group, counted (CountingGroup): the floats this rank
/// sends to other ranks.
public final class ExpertParallelGroup: CountingGroup, ExpertExchange {
    public func allToAll(_ send: UnsafeMutableBufferPointer<Float>, sendCounts: [Int], into receive: UnsafeMutableBufferPointer<Float>,
                         receiveCounts: [Int]) throws {
        try counted(sendCounts.reduce(0, +) - sendCounts[group.rank]) {
            try Collectives.allToAll(send, sendCounts: sendCounts, into: receive, receiveCounts: receiveCounts, group: group)
        }
    }
}
