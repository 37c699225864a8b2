import Collectives
import NN
import Rendezvous
import Tensors

/// Tensor-parallel collectives on a process group, counted (CountingGroup).
public final class GroupCommunicator: CountingGroup, TensorParallelCommunicator {
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
