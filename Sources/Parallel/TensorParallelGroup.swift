import Collectives
import NN
import Rendezvous
import Tensors

/// Tensor-parallel collectives on a process group, counting what they move and how long they take
/// (every call is on the critical path: forward and backward wait for it).
public final class GroupCommunicator: TensorParallelCommunicator {
    public let group: ProcessGroup
    /// Floats passed to collectives and seconds spent in them since the last `resetCounters`.
    public private(set) var floats = 0
    public private(set) var seconds = 0.0
    public private(set) var calls = 0

    public init(group: ProcessGroup) { self.group = group }

    public var rank: Int { group.rank }
    public var size: Int { group.worldSize }

    public func resetCounters() { floats = 0; seconds = 0; calls = 0 }

    func counted(_ count: Int, _ body: () throws -> Void) throws {
        let start = monotonicSeconds()
        defer { floats += count; calls += 1; seconds += monotonicSeconds() - start }
        try body()
    }

    public func allreduceSum(_ buffer: UnsafeMutableBufferPointer<Float>) throws {
        try counted(buffer.count) { try allreduce(buffer, op: .sum, group: group) }
    }

    public func allreduceMax(_ buffer: UnsafeMutableBufferPointer<Float>) throws {
        try counted(buffer.count) { try allreduce(buffer, op: .max, group: group) }
    }

    public func reduceScatter(_ full: UnsafeMutableBufferPointer<Float>) throws {
        try counted(full.count) { try Collectives.reduceScatter(full, op: .sum, group: group) }
    }

    public func allgather(_ full: UnsafeMutableBufferPointer<Float>) throws {
        try counted(full.count) { try Collectives.allgather(full, group: group) }
    }
}
